//! The source's options as the runtime reads them: checked and parsed
//! once by `config.rs` ([`super::MongoDbChangeStreamConfig::settings`]),
//! with the choices the options offer.

use std::{fmt, time::Duration};

use bson::Document;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Databases a deployment-wide stream and snapshot leave out.
pub const SYSTEM_DATABASES: [&str; 3] = ["admin", "config", "local"];

/// What the source runs with.
#[derive(Clone, Debug)]
pub struct Settings {
    /// The connection string (with its password: never logged as is).
    pub uri: String,
    pub scope: Scope,
    /// The user's extra stages.
    pub pipeline: Vec<Document>,
    /// Where to start without a checkpoint.
    pub start_at: StartAt,
    pub full_document: FullDocument,
    pub full_document_before_change: FullDocumentBeforeChange,
    pub show_expanded_events: bool,
    pub batch_size: Option<u32>,
    pub read_ahead_bytes: usize,
    pub max_await_time: Duration,
    pub on_history_lost: OnHistoryLost,
    pub snapshot: SnapshotMode,
    pub snapshot_chunk_size: u32,
    pub snapshot_parallelism: u32,
    /// `signal_collection`, as `(db, coll)`.
    pub signal: Option<(String, String)>,
    pub on_oversized_event: OnOversizedEvent,
    pub max_consecutive_recoveries: u32,
    pub checkpoint_interval: Duration,
    pub checkpoint_idle_interval: Duration,
}

/// `full_document`: what an update event carries in `fullDocument`.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum FullDocument {
    /// Only the delta (`updateDescription`).
    Default,
    /// The current majority-committed document, looked up after the update.
    #[default]
    UpdateLookup,
    /// The post-image if `changeStreamPreAndPostImages` is on, else null.
    WhenAvailable,
    /// The post-image; fails the stream when it is missing.
    Required,
}

/// `full_document_before_change`: the pre-image in `fullDocumentBeforeChange`.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum FullDocumentBeforeChange {
    /// No pre-image.
    Off,
    /// The pre-image when the collection has `changeStreamPreAndPostImages`.
    #[default]
    WhenAvailable,
    /// The pre-image; fails the stream when it is missing.
    Required,
}

/// What to do when the checkpoint is no longer in the oplog.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum OnHistoryLost {
    /// Stop with an error that explains how to recover (default).
    #[default]
    Fail,
    /// Continue from now; the gap is logged as an error and counted in
    /// `mongodb_change_stream_data_gaps_total`.
    ResetToNow,
    /// Copy the watched collections again (needs `snapshot` on), then stream
    /// from the operation time taken before that copy.
    Resnapshot,
}

/// `snapshot`: copy the documents that already exist before streaming.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum SnapshotMode {
    /// Stream changes only (default).
    #[default]
    Off,
    /// On the first start (no checkpoint), copy every watched collection,
    /// then stream from a position taken before the copy began.
    Initial,
    /// Copy every watched collection once, then stop.
    InitialOnly,
    /// Copy the watched collections in chunks while streaming: from the
    /// first start, and for collections that come into scope later
    /// (added to `collections`, or never copied before). Chunks are read
    /// `snapshot_parallelism` at a time between change events, and
    /// progress is saved per chunk, so a restart continues where the copy
    /// stopped.
    Incremental,
}

/// `on_oversized_event`: events over MongoDB's 16 MB limit.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum OnOversizedEvent {
    /// Stop with an error naming the cause (BSONObjectTooLarge) (default).
    #[default]
    Fail,
    /// Leave the event out: counted in `mongodb_change_stream_oversized_events_total`
    /// and logged with its namespace, document key and size.
    Skip,
}

/// Where to start when there is no checkpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StartAt {
    CheckpointOrNow,
    Now,
    Time(bson::Timestamp),
    Token(String),
}

/// What the stream watches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    Deployment,
    Database(String),
    Collection(String, String),
    Collections(String, Vec<String>),
}

impl Settings {
    /// What the change stream opens on: the scope, with the signal
    /// collection added to a collection scope (a database-level stream
    /// filtered to both).
    pub fn stream_scope(&self) -> Scope {
        let Some((_, signal)) = &self.signal else {
            return self.scope.clone();
        };
        match &self.scope {
            Scope::Collection(db, coll) => {
                Scope::Collections(db.clone(), vec![coll.clone(), signal.clone()])
            }
            Scope::Collections(db, colls) => {
                let mut colls = colls.clone();
                colls.push(signal.clone());
                Scope::Collections(db.clone(), colls)
            }
            other => other.clone(),
        }
    }

    /// Whether `ns` (`db.coll`) is the signal collection.
    pub fn is_signal(&self, db: &str, coll: &str) -> bool {
        self.signal
            .as_ref()
            .is_some_and(|(d, c)| d == db && c == coll)
    }

    /// Whether the source watches `ns` (`db.coll`).
    pub fn watches(&self, ns: &str) -> bool {
        ns.split_once('.')
            .is_some_and(|(db, coll)| self.in_scope(db, coll))
    }

    /// Whether the source watches collection `coll` of `db` (the signal
    /// collection aside).
    pub fn in_scope(&self, db: &str, coll: &str) -> bool {
        if self.is_signal(db, coll) || coll.starts_with("system.") {
            return false;
        }
        match &self.scope {
            Scope::Deployment => !SYSTEM_DATABASES.contains(&db),
            Scope::Database(d) => d == db,
            Scope::Collection(d, c) => d == db && c == coll,
            Scope::Collections(d, cs) => d == db && cs.iter().any(|c| c == coll),
        }
    }
}

impl fmt::Display for StartAt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::CheckpointOrNow => f.write_str("checkpoint_or_now"),
            Self::Now => f.write_str("now"),
            Self::Time(t) => match chrono::DateTime::from_timestamp(i64::from(t.time), 0) {
                Some(time) => write!(f, "{}", time.to_rfc3339()),
                None => write!(f, "{}", t.time),
            },
            Self::Token(hex) => f.write_str(hex),
        }
    }
}
