//! Regular expressions for the names the `adls_partitioned_jsonl` sink
//! writes, derived from its own `path_prefix`, `file_name`, `mode` and
//! `compression`, so a loader's file filter and partition columns cannot
//! drift from the layout.
//!
//! The expressions use only what both Snowflake's POSIX-style regexes and
//! Rust's `regex` crate read the same way: capturing groups (Snowflake has
//! no `(?:...)`), bracket classes (`[0-9]`, `[.]`) instead of backslash
//! escapes, and no lazy quantifiers.

use chrono::format::{Fixed, Item, Numeric, Pad, StrftimeItems};

use crate::sinks::adls_partitioned_jsonl::{
    layout::{Layout, Mode, PART_DIGITS, PART_SEPARATOR, PER_EVENT_PREFIX},
    partition::{Piece, Template},
};

/// A partition value taken from a file's path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionColumn {
    /// Column name (`year`, `month`, `day`, `hour`, ...).
    pub name: &'static str,
    /// Its capturing group in [`FilePattern::path_regex`] (1-based).
    pub group: usize,
}

/// Matches the final names of sealed files and extracts their partitions.
#[derive(Clone, Debug)]
pub struct FilePattern {
    /// Matches a whole object name, from the filesystem root, of a file
    /// the sink has sealed (without anchors).
    pub path_regex: String,
    /// Time fields captured from the path, in order of first appearance.
    pub columns: Vec<PartitionColumn>,
}

impl FilePattern {
    /// The pattern of the names `layout` gives.
    pub fn from_layout(layout: &Layout) -> Self {
        let mut builder = Builder::default();
        builder.template(layout.prefix());
        match layout.mode() {
            Mode::Rolling => {
                builder.template(layout.file_name());
                builder.group(&format!("({PART_SEPARATOR}[0-9]{{{PART_DIGITS},}})?"));
            }
            // `event-<position>-<operation>-<key hash>`: one path segment.
            Mode::PerEvent => {
                builder.literal(PER_EVENT_PREFIX).raw("[^/]+");
            }
        }
        builder.literal(layout.extension());
        Self {
            path_regex: builder.regex,
            columns: builder.columns,
        }
    }

    /// A Snowflake `PATTERN`: matched against the whole path (relative to
    /// the stage for Snowpipe, the full path for COPY), hence the `.*`.
    pub fn copy_pattern(&self) -> String {
        format!(".*{}", self.path_regex)
    }

    /// For `REGEXP_SUBSTR(METADATA$FILENAME, ...)`: anchored at the end so
    /// a deeper stage path cannot shift the groups.
    pub fn extract_regex(&self) -> String {
        format!("{}$", self.path_regex)
    }
}

#[derive(Default)]
struct Builder {
    regex: String,
    groups: usize,
    columns: Vec<PartitionColumn>,
}

impl Builder {
    fn raw(&mut self, re: &str) -> &mut Self {
        self.regex.push_str(re);
        self
    }

    fn group(&mut self, re: &str) -> &mut Self {
        self.groups += 1;
        self.raw(re)
    }

    fn literal(&mut self, text: &str) -> &mut Self {
        for c in text.chars() {
            match c {
                '.' | '*' | '+' | '?' | '(' | ')' | '{' | '}' | '|' | '$' | '[' => {
                    self.regex.push('[');
                    self.regex.push(c);
                    self.regex.push(']');
                }
                '\\' | '^' | ']' => {
                    self.regex.push('\\');
                    self.regex.push(c);
                }
                c => self.regex.push(c),
            }
        }
        self
    }

    fn template(&mut self, template: &Template) {
        for piece in template.pieces() {
            match piece {
                // Namespace segments are percent-encoded: never a `/`.
                Piece::Db | Piece::Coll => {
                    self.raw("[^/]+");
                }
                Piece::Time(format) => self.strftime(format),
            }
        }
    }

    fn strftime(&mut self, format: &str) {
        for item in StrftimeItems::new(format) {
            match item {
                Item::Literal(s) | Item::Space(s) => {
                    self.literal(s);
                }
                Item::OwnedLiteral(s) | Item::OwnedSpace(s) => {
                    self.literal(&s);
                }
                Item::Numeric(numeric, pad) => self.numeric(&numeric, pad),
                Item::Fixed(fixed) => {
                    self.raw(fixed_regex(&fixed));
                }
                Item::Error => {}
            }
        }
    }

    fn numeric(&mut self, numeric: &Numeric, pad: Pad) {
        let (name, width) = match numeric {
            Numeric::Year => (Some("year"), 4),
            Numeric::YearMod100 => (Some("year_of_century"), 2),
            Numeric::Month => (Some("month"), 2),
            Numeric::Day => (Some("day"), 2),
            Numeric::Ordinal => (Some("day_of_year"), 3),
            Numeric::Hour => (Some("hour"), 2),
            Numeric::Minute => (Some("minute"), 2),
            Numeric::Second => (Some("second"), 2),
            _ => (None, 0),
        };
        let digits = match (width, pad) {
            (0, _) => "[0-9]+".to_string(),
            (w, Pad::Zero) => format!("[0-9]{{{w}}}"),
            (w, Pad::None) => format!("[0-9]{{1,{w}}}"),
            (w, Pad::Space) => format!(" *[0-9]{{1,{w}}}"),
        };
        match name {
            // The first occurrence of a field becomes its column; a repeat
            // (`%Y` in the folder and the file name) only has to match.
            Some(name) if !self.columns.iter().any(|c| c.name == name) => {
                self.group(&format!("({digits})"));
                let group = self.groups;
                self.columns.push(PartitionColumn { name, group });
            }
            _ => {
                self.raw(&digits);
            }
        }
    }
}

/// Month and day names, AM/PM, offsets and the like: matched loosely
/// within one path segment, never captured.
fn fixed_regex(fixed: &Fixed) -> &'static str {
    match fixed {
        Fixed::TimezoneOffset
        | Fixed::TimezoneOffsetColon
        | Fixed::TimezoneOffsetZ
        | Fixed::TimezoneOffsetColonZ => "[-+Z0-9:]+",
        _ => "[A-Za-z0-9:+-]+",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sinks::adls_partitioned_jsonl::AdlsPartitionedJsonlConfig;
    use regex::Regex;

    fn config(extra: &str) -> AdlsPartitionedJsonlConfig {
        toml::from_str(&format!(
            "account_url = \"https://acct.dfs.core.windows.net\"\nfilesystem = \"lake\"\n{extra}"
        ))
        .unwrap()
    }

    fn whole(p: &FilePattern) -> Regex {
        Regex::new(&format!("^(?:{})$", p.copy_pattern())).unwrap()
    }

    #[test]
    fn default_layout() {
        let p = config("").file_pattern().unwrap();
        let re = whole(&p);
        for name in [
            "shop/orders/year=2025/month=08/day=10/hour=19/events-20250810-19.jsonl",
            "shop/orders/year=2025/month=08/day=10/hour=19/events-20250810-19-part-0002.jsonl",
            "a%2Fb/c d/year=2025/month=08/day=10/hour=19/events-20250810-19.jsonl",
        ] {
            assert!(re.is_match(name), "{name}");
        }
        for name in [
            "_mongo_adls_healthcheck",
            "shop/orders/year=2025/month=08/day=10/hour=19/events-20250810-19.jsonl.gz",
            "shop/orders/year=2025/month=08/day=10/hour=19/events-20250810-19.jsonl/0001.tmp",
            "shop/orders/year=2025/month=08/day=10/hour=19/events-20250810-19.jsonlx",
            "shop/orders/year=2025/month=8/day=10/hour=19/events-20250810-19.jsonl",
        ] {
            assert!(!re.is_match(name), "{name}");
        }
        let names: Vec<&str> = p.columns.iter().map(|c| c.name).collect();
        assert_eq!(names, ["year", "month", "day", "hour"]);
        let caps = Regex::new(&p.extract_regex())
            .unwrap()
            .captures("stage/sub/shop/orders/year=2025/month=08/day=10/hour=19/events-20250810-19-part-0001.jsonl")
            .unwrap();
        let values: Vec<&str> = p.columns.iter().map(|c| &caps[c.group]).collect();
        assert_eq!(values, ["2025", "08", "10", "19"]);
    }

    #[test]
    fn custom_templates_gzip_and_per_event() {
        let p = config(
            "path_prefix = \"raw/{{ ns.db }}.{{ ns.coll }}/dt=%F/\"\nfile_name = \"part(%H%M)-%-d\"\ncompression = \"gzip\"",
        ).file_pattern()
        .unwrap();
        let names: Vec<&str> = p.columns.iter().map(|c| c.name).collect();
        assert_eq!(names, ["year", "month", "day", "hour", "minute"]);
        let name = "raw/shop.orders/dt=2025-08-10/part(1905)-10-part-0003.jsonl.gz";
        let caps = Regex::new(&p.extract_regex())
            .unwrap()
            .captures(name)
            .unwrap();
        let values: Vec<&str> = p.columns.iter().map(|c| &caps[c.group]).collect();
        assert_eq!(values, ["2025", "08", "10", "19", "05"]);
        assert!(!whole(&p).is_match("raw/shop.orders/dt=2025-08-10/partX1905)-10.jsonl.gz"));

        let p = config("mode = \"per_event\"").file_pattern().unwrap();
        assert!(whole(&p).is_match(
            "shop/orders/year=2025/month=08/day=10/hour=19/event-8266B7A2-insert-00ff00ff00ff00ff.jsonl"
        ));
        assert!(!whole(&p)
            .is_match("shop/orders/year=2025/month=08/day=10/hour=19/events-20250810-19.jsonl"));
    }
}
