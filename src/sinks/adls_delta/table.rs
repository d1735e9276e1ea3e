//! Tables: where a collection's table is (`path_prefix`), and what the
//! sink holds of each in memory between commits.
//!
//! A table's rows gather in a [`Group`]: its open data files (one per
//! partition), files already written, and the finalizers of their events.
//! Once `commit.interval_secs` has passed since the group's first row the
//! group is sealed (its files closed) and committed as one table version,
//! while the next rows gather in a new group. One commit is in flight per
//! table at a time.

use std::{
    collections::BTreeMap,
    sync::Arc,
    time::{Duration, Instant},
};

use crate::{
    event::{EventFinalizers, Position},
    sinks::{
        adls_partitioned_jsonl::partition::{Piece, Template},
        util::storage::Storage,
    },
};

use super::{
    log::{Add, Remove},
    schema::Partition,
};

/// The data files being written get ids, so outcomes of their requests
/// find them.
pub type FileId = u64;

/// `path_prefix`, checked: where the table of a namespace is.
#[derive(Clone, Debug)]
pub struct TableNames {
    template: Template,
    /// The text before the first field (every table starts with it).
    literal: String,
}

impl TableNames {
    pub fn new(path_prefix: &str) -> Result<Self, String> {
        let template = Template::parse(path_prefix).map_err(|e| e.to_string())?;
        let pieces = template.pieces();
        if !(pieces.contains(&Piece::Db) && pieces.contains(&Piece::Coll)) {
            return Err(format!(
                "{path_prefix:?} must name both `{{{{ ns.db }}}}` and `{{{{ ns.coll }}}}`: each collection is a table of its own"
            ));
        }
        for piece in pieces {
            if let Piece::Time(text) = piece {
                if text.contains('%') {
                    return Err(format!(
                        "{path_prefix:?} has a time field ({text:?}); a table is one folder for all time, partitioned by `partition_by`"
                    ));
                }
                if text.contains('\\') {
                    return Err(format!("{path_prefix:?} has a backslash"));
                }
            }
        }
        let sample = template.render("db", "coll", &chrono::DateTime::<chrono::Utc>::UNIX_EPOCH);
        if sample
            .trim_matches('/')
            .split('/')
            .any(|s| s.is_empty() || s == "." || s == "..")
        {
            return Err(format!(
                "{path_prefix:?} has an empty, `.` or `..` folder: a table must stay inside the filesystem"
            ));
        }
        let literal = match pieces.first() {
            Some(Piece::Time(text)) => text.clone(),
            _ => String::new(),
        };
        Ok(Self { template, literal })
    }

    /// The table folder of a namespace (no leading or trailing `/`).
    pub fn root(&self, db: &str, coll: &str) -> String {
        let rendered = self
            .template
            .render(db, coll, &chrono::DateTime::<chrono::Utc>::UNIX_EPOCH);
        rendered.trim_matches('/').to_string()
    }

    /// With no state: a table this sink type wrote (its first commit
    /// still in the log, version 0 unless log cleanup removed earlier
    /// ones, holds a `txn` of `mongo-adls`), which the lost state would
    /// have described; tables of other writers do not count. A listing
    /// that fails is logged and counted as none.
    pub async fn table_in_lake(&self, storage: &dyn Storage, sink: &str) -> Option<String> {
        const LOG: &str = "/_delta_log/";
        let names = match storage.list(&self.literal).await {
            Ok(names) => names,
            Err(e) => {
                tracing::warn!(
                    sink,
                    "The sink has no state yet and could not list the lake to check that it holds none of its tables: {e}"
                );
                return None;
            }
        };
        // The first commit in each table's log: names of one table sort
        // by version.
        let mut first: BTreeMap<&str, &str> = BTreeMap::new();
        for name in &names {
            let Some((table, file)) = name.rsplit_once(LOG) else {
                continue;
            };
            let commit = file.len() == 25
                && file.ends_with(".json")
                && file[..20].bytes().all(|b| b.is_ascii_digit());
            if commit && first.get(table).is_none_or(|f| name.as_str() < *f) {
                first.insert(table, name);
            }
        }
        for (table, name) in first {
            let commit = storage.get(name).await.ok().flatten().unwrap_or_default();
            if String::from_utf8_lossy(&commit).contains(r#""appId":"mongo-adls:"#) {
                return Some(table.to_string());
            }
        }
        None
    }
}

/// Rows gathering for one commit.
pub struct Group {
    /// Every data file of the group.
    pub files: Vec<FileId>,
    /// Files still taking rows, by partition (empty once sealed).
    pub open: BTreeMap<Partition, FileId>,
    /// `add` actions of the files written whole.
    pub written: Vec<Add>,
    pub finalizers: EventFinalizers,
    pub rows: u64,
    /// BSON bytes of the events.
    pub event_bytes: u64,
    pub high_water: Option<Position>,
    pub source: Option<Arc<str>>,
    pub started: Instant,
}

impl Group {
    pub fn new() -> Self {
        Self {
            files: Vec::new(),
            open: BTreeMap::new(),
            written: Vec::new(),
            finalizers: EventFinalizers::default(),
            rows: 0,
            event_bytes: 0,
            high_water: None,
            source: None,
            started: Instant::now(),
        }
    }

    /// Whether every file of a sealed group is written.
    pub fn all_written(&self) -> bool {
        self.open.is_empty() && self.written.len() == self.files.len()
    }
}

/// A compaction whose files are written, waiting for its commit.
pub struct Compaction {
    pub adds: Vec<Add>,
    pub removes: Vec<Remove>,
    pub planned_at: i64,
}

/// What the sink holds of one table.
pub struct Table {
    pub root: String,
    /// Rows gathering now.
    pub current: Option<Group>,
    /// The group being sealed and committed.
    pub sealed: Option<Group>,
    /// A compaction waiting for its commit (after the sealed group's).
    pub compaction: Option<Compaction>,
    /// A commit's intent is recorded and its log write is in flight.
    pub committing: bool,
    /// The newest table version known in this run (`None`: the commit
    /// looks the table up first).
    pub latest: Option<i64>,
    /// Set when a write failed for good: events of the table are refused
    /// until a restart.
    pub failed: Option<String>,
    /// Checkpoint, compaction or vacuum in flight.
    pub upkeep: bool,
    /// The version whose checkpoint the queued upkeep writes.
    pub upkeep_at: Option<i64>,
}

impl Table {
    pub fn new(root: String) -> Self {
        Self {
            root,
            current: None,
            sealed: None,
            compaction: None,
            committing: false,
            latest: None,
            failed: None,
            upkeep: false,
            upkeep_at: None,
        }
    }

    /// Whether the current group is due for its commit: its interval has
    /// passed, or it holds `burst` bytes or more (after a source's burst
    /// ended), or `all` (the sink is stopping).
    pub fn due(&self, interval: Duration, now: Instant, all: bool, burst: Option<u64>) -> bool {
        self.sealed.is_none()
            && !self.committing
            && self.failed.is_none()
            && self.current.as_ref().is_some_and(|g| {
                all || now.duration_since(g.started) >= interval
                    || burst.is_some_and(|b| g.event_bytes >= b)
            })
    }

    /// Nothing left to commit or waiting on a request.
    pub fn drained(&self) -> bool {
        self.current.is_none() && self.sealed.is_none() && !self.committing
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_folders() {
        let names = TableNames::new("{{ ns.db }}/{{ ns.coll }}").unwrap();
        assert_eq!(names.root("shop", "orders"), "shop/orders");
        assert_eq!(names.root("a/b", ".."), "a%2Fb/%2E%2E");
        let names = TableNames::new("delta/{{ ns.db }}.{{ ns.coll }}/").unwrap();
        assert_eq!(names.root("shop", "orders"), "delta/shop.orders");
        assert_eq!(names.literal, "delta/");
        for bad in [
            "{{ ns.db }}",
            "{{ ns.db }}/{{ ns.coll }}/year=%Y",
            "../{{ ns.db }}/{{ ns.coll }}",
            "{{ ns.db }}/{{ ns.cool }}",
        ] {
            assert!(TableNames::new(bad).is_err(), "{bad}");
        }
    }
}
