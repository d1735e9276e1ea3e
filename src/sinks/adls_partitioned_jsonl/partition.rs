//! Where an event goes: `<path_prefix><file_name>[-part-NNNN].jsonl[.gz]`.
//!
//! `path_prefix` and `file_name` are templates: `{{ ns.db }}` and
//! `{{ ns.coll }}` are replaced by the event's namespace, made safe for a
//! blob path, and strftime fields (`%Y`, `%m`, ...) by the start of the
//! event's time window. Rendering uses the window start, not the event's
//! own time, so every event of a window lands in the same file.

use chrono::{DateTime, NaiveDateTime, TimeZone, Utc};
use chrono_tz::Tz;
use snafu::Snafu;

#[derive(Debug, Snafu, PartialEq, Eq)]
pub enum TemplateError {
    #[snafu(display("template {template:?}: unknown field `{{{{ {field} }}}}`; use `{{{{ ns.db }}}}` or `{{{{ ns.coll }}}}`"))]
    UnknownField { template: String, field: String },
    #[snafu(display("template {template:?}: an opening `{{{{` has no closing `}}}}`"))]
    Unclosed { template: String },
    #[snafu(display("template {template:?}: invalid strftime field in {text:?}"))]
    Strftime { template: String, text: String },
    #[snafu(display("template {template:?}: a stray `{brace}` outside a `{{{{ ... }}}}` field"))]
    StrayBrace { template: String, brace: char },
}

/// One piece of a template.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Piece {
    /// Literal text with strftime fields.
    Time(String),
    Db,
    Coll,
}

/// A parsed `path_prefix` or `file_name`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Template {
    pieces: Vec<Piece>,
}

impl Template {
    pub fn parse(template: &str) -> Result<Self, TemplateError> {
        let mut pieces = Vec::new();
        let mut rest = template;
        while let Some(start) = rest.find("{{") {
            if start > 0 {
                pieces.push(Piece::Time(check_strftime(template, &rest[..start])?));
            }
            let after = &rest[start + 2..];
            let end = after.find("}}").ok_or_else(|| TemplateError::Unclosed {
                template: template.to_string(),
            })?;
            match after[..end].trim() {
                "ns.db" => pieces.push(Piece::Db),
                "ns.coll" => pieces.push(Piece::Coll),
                other => {
                    return Err(TemplateError::UnknownField {
                        template: template.to_string(),
                        field: other.to_string(),
                    })
                }
            }
            rest = &after[end + 2..];
        }
        if !rest.is_empty() {
            pieces.push(Piece::Time(check_strftime(template, rest)?));
        }
        Ok(Self { pieces })
    }

    /// The pieces in order (for deriving file-name patterns).
    pub fn pieces(&self) -> &[Piece] {
        &self.pieces
    }

    /// Renders for a namespace and a window start (already in the
    /// configured time zone).
    pub fn render<T: TimeZone>(&self, db: &str, coll: &str, window_start: &DateTime<T>) -> String
    where
        T::Offset: std::fmt::Display,
    {
        let mut out = String::new();
        for piece in &self.pieces {
            match piece {
                Piece::Time(fmt) => out.push_str(&window_start.format(fmt).to_string()),
                Piece::Db => out.push_str(&safe_segment(db)),
                Piece::Coll => out.push_str(&safe_segment(coll)),
            }
        }
        out
    }
}

/// Literal text between fields: strftime fields are allowed, braces are
/// not (a `{ ns.db }` or `{{ ns.db }` typo would otherwise become a folder
/// name).
fn check_strftime(template: &str, text: &str) -> Result<String, TemplateError> {
    use chrono::format::{Item, StrftimeItems};
    if let Some(brace) = text.chars().find(|c| matches!(c, '{' | '}')) {
        return Err(TemplateError::StrayBrace {
            template: template.to_string(),
            brace,
        });
    }
    if StrftimeItems::new(text).any(|i| matches!(i, Item::Error)) {
        return Err(TemplateError::Strftime {
            template: template.to_string(),
            text: text.to_string(),
        });
    }
    Ok(text.to_string())
}

/// Makes a database or collection name safe as one path segment:
/// percent-encodes `/`, `\`, `%`, control characters, and a segment that is
/// `.` or `..`, so no namespace can write outside its own folder. Other
/// characters (including non-ASCII) are kept, as blob names allow them.
pub fn safe_segment(name: &str) -> String {
    if name.is_empty() {
        return "%00".to_string();
    }
    if name == "." || name == ".." {
        return name.replace('.', "%2E");
    }
    let mut out = String::with_capacity(name.len());
    for c in name.chars() {
        match c {
            '/' | '\\' | '%' => out.push_str(&format!("%{:02X}", c as u32)),
            c if c.is_control() => {
                let mut buf = [0u8; 4];
                for b in c.encode_utf8(&mut buf).bytes() {
                    out.push_str(&format!("%{b:02X}"));
                }
            }
            c => out.push(c),
        }
    }
    out
}

/// `timezone`, parsed; the error names the option.
pub fn parse_timezone(timezone: &str) -> Result<Tz, crate::config::OptionError> {
    timezone.parse().map_err(|_| {
        crate::config::OptionError::new(
            "timezone",
            format!("{timezone:?} is not an IANA time zone name (e.g. \"UTC\", \"Europe/Paris\")"),
        )
    })
}

/// Fixed-length time windows, aligned in the configured time zone's wall
/// clock (so hourly windows match local hours even with 30-minute offsets).
#[derive(Clone, Copy, Debug)]
pub struct Windows {
    pub window_secs: i64,
    pub tz: Tz,
}

impl Windows {
    /// The start of the window holding `time`, in the configured zone.
    pub fn start_of(&self, time: DateTime<Utc>) -> DateTime<Tz> {
        let local = time.with_timezone(&self.tz).naive_local();
        let secs = local.and_utc().timestamp();
        let start = secs - secs.rem_euclid(self.window_secs);
        let naive: NaiveDateTime = DateTime::from_timestamp(start, 0)
            .unwrap_or_default()
            .naive_utc();
        // An ambiguous or skipped local time (DST change) maps to the
        // earliest valid instant.
        self.tz
            .from_local_datetime(&naive)
            .earliest()
            .unwrap_or_else(|| time.with_timezone(&self.tz))
    }

    /// The UTC instant at which the window starting at `start` ends.
    pub fn end_of(&self, start: &DateTime<Tz>) -> DateTime<Utc> {
        start.with_timezone(&Utc) + chrono::Duration::seconds(self.window_secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn hourly_windows() {
        let prefix =
            Template::parse("{{ ns.db }}/{{ ns.coll }}/year=%Y/month=%m/day=%d/hour=%H/").unwrap();
        let w = Windows {
            window_secs: 3600,
            tz: Tz::UTC,
        };
        let start = w.start_of(at("2025-08-10T19:42:07Z"));
        assert_eq!(
            prefix.render("shop", "orders", &start),
            "shop/orders/year=2025/month=08/day=10/hour=19/"
        );
        assert_eq!(w.end_of(&start), at("2025-08-10T20:00:00Z"));
    }

    #[test]
    fn short_windows_and_time_zones() {
        let w = Windows {
            window_secs: 5,
            tz: Tz::UTC,
        };
        assert_eq!(
            w.start_of(at("2025-08-10T19:42:07Z")),
            at("2025-08-10T19:42:05Z")
        );
        let kolkata = Windows {
            window_secs: 3600,
            tz: chrono_tz::Asia::Kolkata,
        };
        let start = kolkata.start_of(at("2025-08-10T19:42:07Z")); // 01:12 local next day
        assert_eq!(
            start.format("%Y-%m-%d %H:%M").to_string(),
            "2025-08-11 01:00"
        );
    }

    #[test]
    fn hostile_names_stay_in_their_folder() {
        for (name, safe) in [
            ("../etc", "..%2Fetc"),
            ("..", "%2E%2E"),
            (".", "%2E"),
            ("a/b\\c", "a%2Fb%5Cc"),
            ("100%", "100%25"),
            ("tab\there", "tab%09here"),
            ("ünïcode €", "ünïcode €"),
        ] {
            assert_eq!(safe_segment(name), safe, "{name:?}");
            assert!(!safe_segment(name).contains('/'));
        }
        let prefix = Template::parse("{{ ns.db }}/{{ ns.coll }}/").unwrap();
        let w = Windows {
            window_secs: 3600,
            tz: Tz::UTC,
        };
        let path = prefix.render("..", "../../x", &w.start_of(at("2025-01-01T00:00:00Z")));
        assert_eq!(path, "%2E%2E/..%2F..%2Fx/");
        assert!(path.split('/').all(|seg| seg != ".." && seg != "."));
    }

    #[test]
    fn template_errors() {
        assert!(matches!(
            Template::parse("{{ ns.table }}"),
            Err(TemplateError::UnknownField { .. })
        ));
        assert!(matches!(
            Template::parse("{{ ns.db"),
            Err(TemplateError::Unclosed { .. })
        ));
        assert!(matches!(
            Template::parse("%Q"),
            Err(TemplateError::Strftime { .. })
        ));
        for stray in ["{ ns.db }/", "a}}/", "{{ ns.db }}}/", "x{y"] {
            assert!(
                matches!(
                    Template::parse(stray),
                    Err(TemplateError::StrayBrace { .. })
                ),
                "{stray}"
            );
        }
    }
}
