//! The lake's layout: which object name an event's file gets. One type,
//! built from the sink's options, that both the sink and `snowflake-sql`
//! use, so loaders' file patterns and partition columns cannot drift from
//! the names written.
//!
//! `<path_prefix><file_name>[-part-NNNN]<extension>` for rolling files,
//! `<path_prefix>event-<position>-<operation>-<key hash><extension>` per
//! event.

use chrono::{DateTime, TimeZone, Utc};
use chrono_tz::Tz;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{
    partition::{Template, Windows},
    state::FileKey,
};
use crate::config::OptionError;

/// Between a file name and its part number after a size roll.
pub const PART_SEPARATOR: &str = "-part-";
/// Digits of a part number (at least; more past part 9999).
pub const PART_DIGITS: usize = 4;
/// Start of every per-event object's file name.
pub const PER_EVENT_PREFIX: &str = "event-";

/// `mode`: how events map to files.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Rolling files per namespace and time window (default).
    #[default]
    Rolling,
    /// One object per event,
    /// `<path_prefix>event-<resume token>-<operation>-<key hash>.jsonl`,
    /// written with `If-None-Match: *`, so a replay is a no-op.
    PerEvent,
}

/// `compression` of the files.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Compression {
    /// `.jsonl`, uncompressed.
    #[default]
    None,
    /// `.jsonl.gz`; each batch is one gzip member (concatenated members
    /// are one valid gzip stream).
    Gzip,
}

/// The sink's options a layout is built from, as written.
pub struct LayoutOptions<'a> {
    pub path_prefix: &'a str,
    pub file_name: &'a str,
    pub timezone: &'a str,
    pub window_secs: u64,
    pub mode: Mode,
    pub compression: Compression,
}

/// Object names of one sink.
#[derive(Clone, Debug)]
pub struct Layout {
    prefix: Template,
    file_name: Template,
    windows: Windows,
    mode: Mode,
    compression: Compression,
}

impl Layout {
    /// Parses and checks the templates, time zone and window length. Every
    /// error names its option.
    pub fn new(config: LayoutOptions<'_>) -> Result<Self, Vec<OptionError>> {
        let mut errors = Vec::new();
        let prefix = Template::parse(config.path_prefix)
            .map_err(|e| errors.push(OptionError::new("path_prefix", e.to_string())))
            .ok();
        let file_name = Template::parse(config.file_name)
            .map_err(|e| errors.push(OptionError::new("file_name", e.to_string())))
            .ok();
        let tz: Option<Tz> = super::partition::parse_timezone(config.timezone)
            .map_err(|e| errors.push(e))
            .ok();
        let window_secs = i64::try_from(config.window_secs).unwrap_or(i64::MAX);
        if !(1..=31 * 86_400).contains(&window_secs) {
            errors.push(OptionError::new(
                "roll.window_secs",
                "must be between 1 and 2678400 (31 days)",
            ));
        }
        let (Some(prefix), Some(file_name), Some(tz), true) =
            (prefix, file_name, tz, errors.is_empty())
        else {
            return Err(errors);
        };
        let layout = Self {
            prefix,
            file_name,
            windows: Windows { window_secs, tz },
            mode: config.mode,
            compression: config.compression,
        };
        layout.check_paths_stay_inside(&mut errors);
        if errors.is_empty() && layout.mode == Mode::Rolling {
            if let Err(e) = layout.check_names_distinguish_windows() {
                errors.push(e);
            }
        }
        if errors.is_empty() {
            Ok(layout)
        } else {
            Err(errors)
        }
    }

    pub fn prefix(&self) -> &Template {
        &self.prefix
    }

    pub fn file_name(&self) -> &Template {
        &self.file_name
    }

    pub fn windows(&self) -> &Windows {
        &self.windows
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    pub fn compression(&self) -> Compression {
        self.compression
    }

    /// `.jsonl` or `.jsonl.gz`.
    pub fn extension(&self) -> &'static str {
        match self.compression {
            Compression::None => ".jsonl",
            Compression::Gzip => ".jsonl.gz",
        }
    }

    /// The start of a file key's window in the configured zone.
    pub fn window_start(&self, key: &FileKey) -> DateTime<Tz> {
        self.windows
            .tz
            .timestamp_opt(key.window_start, 0)
            .earliest()
            .unwrap_or_else(|| Utc::now().with_timezone(&self.windows.tz))
    }

    /// The object name of part `part` of a window's file (part 0 has no
    /// suffix).
    pub fn object_name(&self, key: &FileKey, part: u32) -> String {
        let start = self.window_start(key);
        self.render_name(&key.db, &key.coll, &start, part)
    }

    fn render_name(&self, db: &str, coll: &str, start: &DateTime<Tz>, part: u32) -> String {
        let prefix = self.prefix.render(db, coll, start);
        let name = self.file_name.render(db, coll, start);
        let extension = self.extension();
        if part == 0 {
            format!("{prefix}{name}{extension}")
        } else {
            format!("{prefix}{name}{PART_SEPARATOR}{part:0PART_DIGITS$}{extension}")
        }
    }

    /// The object of one event in `per_event` mode: named by its position,
    /// operation and document key hash, so a replay writes the same name.
    pub fn per_event_name(
        &self,
        (db, coll): (&str, &str),
        time: DateTime<Utc>,
        position: &str,
        operation: &str,
        key_hash: u64,
    ) -> String {
        let start = self.windows.start_of(time);
        format!(
            "{}{PER_EVENT_PREFIX}{position}-{operation}-{key_hash:016x}{}",
            self.prefix.render(db, coll, &start),
            self.extension()
        )
    }

    /// No rendered path may leave the lake or the window's folder: no
    /// leading `/`, no `.` / `..` or empty segment in `path_prefix`, no `/`
    /// in `file_name`. Namespace fields are made safe when rendered; this
    /// checks the literal text around them.
    fn check_paths_stay_inside(&self, errors: &mut Vec<OptionError>) {
        let start = self
            .windows
            .start_of(DateTime::from_timestamp(1_700_000_000, 0).unwrap_or_default());
        let prefix = self.prefix.render("db", "coll", &start);
        let segments: Vec<&str> = prefix.split('/').collect();
        let bad_segment = segments
            .iter()
            .take(segments.len().saturating_sub(1))
            .any(|s| s.is_empty() || *s == "." || *s == "..")
            || segments.last().is_some_and(|s| *s == "." || *s == "..");
        if prefix.contains('\\') || bad_segment {
            errors.push(OptionError::new(
                "path_prefix",
                format!(
                    "renders as {prefix:?}: a path may not start with `/` or hold an empty, `.` or `..` segment or a `\\` (it would write outside the lake or its folder)"
                ),
            ));
        }
        let name = self.file_name.render("db", "coll", &start);
        if name.is_empty() || name.contains(['/', '\\']) || name == "." || name == ".." {
            errors.push(OptionError::new(
                "file_name",
                format!(
                    "renders as {name:?}: a file name must be non-empty and may not hold `/` or `\\` (put folders in `path_prefix`)"
                ),
            ));
        }
    }

    /// Two windows must never map to one file name: with `roll.window_secs`
    /// shorter than an hour, the default hourly name would make every
    /// window of an hour collide. Checked on a day of consecutive windows.
    fn check_names_distinguish_windows(&self) -> Result<(), OptionError> {
        let window_secs = self.windows.window_secs;
        let first = self
            .windows
            .start_of(DateTime::from_timestamp(1_700_000_000, 0).unwrap_or_default());
        let mut seen = std::collections::HashSet::new();
        let count = (86_400 / window_secs).clamp(2, 2000);
        for i in 0..count {
            let time = first.with_timezone(&Utc) + chrono::Duration::seconds(i * window_secs);
            let name = self.render_name("db", "coll", &self.windows.start_of(time), 0);
            if !seen.insert(name.clone()) {
                return Err(OptionError::new(
                    "file_name",
                    format!(
                        "`path_prefix` and `file_name` give two {window_secs}-second windows the same name ({name}); add finer time fields, e.g. file_name = \"events-%Y%m%d-%H%M%S\""
                    ),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sinks::adls_partitioned_jsonl::AdlsPartitionedJsonlConfig;

    fn config(extra: &str) -> AdlsPartitionedJsonlConfig {
        toml::from_str(&format!(
            "account_url = \"file:///tmp/lake\"\nfilesystem = \"lake\"\n{extra}"
        ))
        .unwrap()
    }

    fn errors(extra: &str) -> Vec<String> {
        match config(extra).layout() {
            Ok(_) => Vec::new(),
            Err(e) => e.iter().map(ToString::to_string).collect(),
        }
    }

    fn key(window_start: i64) -> FileKey {
        FileKey {
            db: "shop".into(),
            coll: "orders".into(),
            window_start,
        }
    }

    #[test]
    fn default_layout() {
        let layout = config("").layout().unwrap();
        // 2025-08-10T19:00:00Z
        assert_eq!(
            layout.object_name(&key(1_754_852_400), 0),
            "shop/orders/year=2025/month=08/day=10/hour=19/events-20250810-19.jsonl"
        );
        let gz = config("compression = \"gzip\"").layout().unwrap();
        assert_eq!(
            gz.object_name(&key(1_754_852_400), 2),
            "shop/orders/year=2025/month=08/day=10/hour=19/events-20250810-19-part-0002.jsonl.gz"
        );
        let t = DateTime::parse_from_rfc3339("2025-08-10T19:42:07Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(
            layout.per_event_name(("shop", "orders"), t, "82AB", "insert", 255),
            "shop/orders/year=2025/month=08/day=10/hour=19/event-82AB-insert-00000000000000ff.jsonl"
        );
    }

    #[test]
    fn paths_that_leave_the_lake_or_folder_are_refused() {
        for bad in [
            "path_prefix = \"../../etc/\"",
            "path_prefix = \"/abs/{{ ns.db }}/\"",
            "path_prefix = \"a//b/\"",
            "path_prefix = \"a/./b/\"",
            "path_prefix = \"a/..\"",
            "path_prefix = \"a\\\\b/\"",
            "file_name = \"x/%H\"",
            "file_name = \"\"",
            "file_name = \"..\"",
        ] {
            let errors = errors(bad);
            assert_eq!(errors.len(), 1, "{bad}: {errors:?}");
        }
        assert!(errors("path_prefix = \"\"").is_empty());
        assert!(errors("path_prefix = \"raw/{{ ns.db }}.{{ ns.coll }}/dt=%F/\"").is_empty());
    }

    #[test]
    fn other_errors_name_their_option() {
        assert!(errors("timezone = \"Mars/Olympus\"")[0].starts_with("`timezone`"));
        assert!(errors("roll.window_secs = 0")[0].starts_with("`roll.window_secs`"));
        assert!(errors("path_prefix = \"{{ ns.table }}/\"")[0].starts_with("`path_prefix`"));
        let collide = errors("roll.window_secs = 600");
        assert!(
            collide[0].starts_with("`file_name`") && collide[0].contains("same name"),
            "{collide:?}"
        );
        assert!(errors("roll.window_secs = 600\nfile_name = \"e-%Y%m%d-%H%M\"").is_empty());
        // per_event names carry the position: windows need not differ.
        assert!(errors("roll.window_secs = 600\nmode = \"per_event\"").is_empty());
    }
}
