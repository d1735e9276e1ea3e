//! `mongo-adls snowflake-sql`: the Snowflake objects that load what one
//! `adls_partitioned_jsonl` sink writes, generated from that sink's own
//! options so the stage, file pattern, partition columns and compression
//! always match the files; or, for an `adls_delta` sink, the objects that
//! read its tables in place.
//!
//! - `file_pattern.rs`: regexes for sealed file names and partition fields.
//! - `delta.rs`: Delta Direct tables and current-state views.
//! - this file: the SQL text for JSONL files.

pub mod delta;
pub mod file_pattern;
mod options;

use std::fmt::Write;

use crate::{
    codecs::json::ExtendedJsonMode,
    config::Config,
    sinks::adls_delta::AdlsDeltaConfig,
    sinks::adls_partitioned_jsonl::{
        config::AdlsPartitionedJsonlConfig,
        layout::{Compression, Layout, Mode, PART_SEPARATOR, PER_EVENT_PREFIX},
        partition::{Piece, Template},
        roll::Commit,
    },
    sinks::util::storage::azure::service_url,
};
pub use file_pattern::{FilePattern, PartitionColumn};
pub use options::Options;

/// Finds the sink to generate for and renders the SQL.
pub fn generate(config: &Config, options: &Options) -> Result<String, String> {
    let lakes: Vec<(&str, &dyn std::any::Any)> = config
        .sinks
        .iter()
        .map(|(id, entry)| {
            let any: &dyn std::any::Any = &*entry.outer.inner;
            (id.as_str(), any)
        })
        .filter(|(_, any)| any.is::<AdlsPartitionedJsonlConfig>() || any.is::<AdlsDeltaConfig>())
        .collect();
    let ids = || {
        lakes
            .iter()
            .map(|(id, _)| *id)
            .collect::<Vec<_>>()
            .join(", ")
    };
    let (id, sink) = match (options.sink.as_deref(), lakes.as_slice()) {
        (Some(want), _) => *lakes.iter().find(|(id, _)| *id == want).ok_or_else(|| {
            format!(
                "no `adls_partitioned_jsonl` or `adls_delta` sink `{want}` in the config (found: {})",
                ids()
            )
        })?,
        (None, [one]) => *one,
        (None, []) => {
            return Err("the config has no `adls_partitioned_jsonl` or `adls_delta` sink".into())
        }
        (None, _) => {
            return Err(format!(
                "the config has several lake sinks ({}); choose one with --sink",
                ids()
            ))
        }
    };
    match sink.downcast_ref::<AdlsDeltaConfig>() {
        Some(delta) => delta::render(config, id, delta, options),
        None => render(
            id,
            sink.downcast_ref::<AdlsPartitionedJsonlConfig>()
                .expect("a lake sink"),
            options,
        ),
    }
}

/// The `adls_partitioned_jsonl` sink `id`, or the only one.
pub fn find_sink<'a>(
    config: &'a Config,
    id: Option<&str>,
) -> Result<(&'a str, &'a AdlsPartitionedJsonlConfig), String> {
    let adls: Vec<(&str, &AdlsPartitionedJsonlConfig)> = config
        .sinks
        .iter()
        .filter_map(|(id, entry)| {
            let any: &dyn std::any::Any = &*entry.outer.inner;
            any.downcast_ref::<AdlsPartitionedJsonlConfig>()
                .map(|c| (id.as_str(), c))
        })
        .collect();
    let ids = || {
        adls.iter()
            .map(|(id, _)| *id)
            .collect::<Vec<_>>()
            .join(", ")
    };
    match (id, adls.as_slice()) {
        (Some(want), _) => adls
            .iter()
            .find(|(id, _)| *id == want)
            .copied()
            .ok_or_else(|| {
                format!(
                    "no `adls_partitioned_jsonl` sink `{want}` in the config (found: {})",
                    ids()
                )
            }),
        (None, [one]) => Ok(*one),
        (None, []) => Err("the config has no `adls_partitioned_jsonl` sink".into()),
        (None, _) => Err(format!(
            "the config has several `adls_partitioned_jsonl` sinks ({}); choose one with --sink",
            ids()
        )),
    }
}

/// A Snowflake identifier as given (`name` or `db.schema.name`), checked so
/// nothing but a name reaches the SQL.
fn identifier(what: &str, name: &str) -> Result<String, String> {
    let ok = |part: &str| {
        let mut chars = part.chars();
        chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$')
    };
    let parts: Vec<&str> = name.split('.').collect();
    if parts.len() > 3 || !parts.iter().all(|p| ok(p)) {
        return Err(format!(
            "{what} {name:?} is not a plain Snowflake identifier (letters, digits, `_`, `$`; optionally db.schema.name)"
        ));
    }
    Ok(name.to_string())
}

/// A single-quoted Snowflake string literal (backslash and quote escaped).
fn string(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"))
}

fn check_cron(schedule: &str) -> Result<(), String> {
    let fields: Vec<&str> = schedule.split_whitespace().collect();
    let allowed = |f: &str| {
        f.chars()
            .all(|c| c.is_ascii_alphanumeric() || "*/,-?LW#".contains(c))
    };
    if fields.len() != 5 || !fields.iter().all(|f| allowed(f)) {
        return Err(format!(
            "--schedule {schedule:?} must be a five-field cron expression, e.g. \"*/15 * * * *\""
        ));
    }
    Ok(())
}

/// The storage URL Snowflake needs, and whether it is a placeholder.
fn stage_url(sink: &AdlsPartitionedJsonlConfig) -> (String, Option<&'static str>) {
    let azure = service_url(&sink.account_url)
        .ok()
        .filter(|(url, _)| {
            url.host_str()
                .is_some_and(|h| h.ends_with(".blob.core.windows.net"))
        })
        .map(|(_, account)| account);
    match azure {
        Some(account) => (
            format!(
                "azure://{account}.blob.core.windows.net/{}/",
                sink.filesystem
            ),
            None,
        ),
        None => (
            format!(
                "azure://<STORAGE_ACCOUNT>.blob.core.windows.net/{}/",
                sink.filesystem
            ),
            Some("account_url is not an Azure account (emulator or file://); name the account the lake is copied to"),
        ),
    }
}

/// The folder of one hour, with placeholders: the prefix for
/// `ALTER PIPE ... REFRESH PREFIX`.
fn example_prefix(template: &Template) -> String {
    use chrono::format::{Item, Numeric, StrftimeItems};
    let mut out = String::new();
    for piece in template.pieces() {
        match piece {
            Piece::Db => out.push_str("<DB>"),
            Piece::Coll => out.push_str("<COLL>"),
            Piece::Time(format) => {
                for item in StrftimeItems::new(format) {
                    match item {
                        Item::Literal(s) | Item::Space(s) => out.push_str(s),
                        Item::OwnedLiteral(s) | Item::OwnedSpace(s) => out.push_str(&s),
                        Item::Numeric(Numeric::Year, _) => out.push_str("<YYYY>"),
                        Item::Numeric(Numeric::Month, _) => out.push_str("<MM>"),
                        Item::Numeric(Numeric::Day, _) => out.push_str("<DD>"),
                        Item::Numeric(Numeric::Hour, _) => out.push_str("<HH>"),
                        _ => out.push_str("<..>"),
                    }
                }
            }
        }
    }
    out
}

/// `--refresh-hour YYYY-MM-DDTHH` as a time in the sink's zone.
fn refresh_time(hour: &str, timezone: &str) -> Result<chrono::DateTime<chrono_tz::Tz>, String> {
    use chrono::TimeZone;
    let tz: chrono_tz::Tz = timezone
        .parse()
        .map_err(|_| format!("`timezone` {timezone:?} is not an IANA time zone name"))?;
    chrono::NaiveDateTime::parse_from_str(&format!("{hour}:00"), "%Y-%m-%dT%H:%M")
        .ok()
        .and_then(|t| tz.from_local_datetime(&t).earliest())
        .ok_or_else(|| format!("--refresh-hour {hour:?} must look like 2025-08-10T19"))
}

fn column_type(name: &str) -> &'static str {
    match name {
        "year" => "NUMBER(4,0)",
        "day_of_year" => "NUMBER(3,0)",
        _ => "NUMBER(2,0)",
    }
}

/// The COPY statement shared by the ad-hoc load, the task and the pipe.
fn copy_into(
    table: &str,
    stage: &str,
    file_format: &str,
    pattern: &FilePattern,
    on_error: &str,
) -> String {
    let mut columns = vec!["v", "db", "coll", "operation_type"];
    let mut values = vec![
        "$1".to_string(),
        "$1:_meta:ns:db::STRING".to_string(),
        "$1:_meta:ns:coll::STRING".to_string(),
        "$1:_meta:operationType::STRING".to_string(),
    ];
    let extract = string(&pattern.extract_regex());
    for c in &pattern.columns {
        columns.push(c.name);
        values.push(format!(
            "REGEXP_SUBSTR(METADATA$FILENAME, {extract}, 1, 1, 'e', {})::{}",
            c.group,
            column_type(c.name)
        ));
    }
    columns.extend(["filename", "file_row_number"]);
    values.extend([
        "METADATA$FILENAME".to_string(),
        "METADATA$FILE_ROW_NUMBER".to_string(),
    ]);
    format!(
        "COPY INTO {table} ({columns})\nFROM (\n  SELECT\n    {values}\n  FROM @{stage}\n)\nPATTERN = {pattern}\nFILE_FORMAT = (FORMAT_NAME = {format})\nON_ERROR = {on_error};\n",
        columns = columns.join(", "),
        values = values.join(",\n    "),
        pattern = string(&pattern.copy_pattern()),
        format = string(file_format),
    )
}

/// A silver-layer example: the current state of one collection, deletes
/// applied. Printed commented out, since its columns are the user's.
pub fn silver_example(table: &str) -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS orders_current (
  doc_key STRING NOT NULL,
  doc VARIANT,
  status STRING,
  amount NUMBER(12,2),
  resume_token STRING NOT NULL
);
MERGE INTO orders_current t
USING (
  SELECT TO_JSON(v:documentKey) AS doc_key,
         v:_meta:operationType::STRING AS op,
         v:fullDocument AS doc,
         v:_meta:resumeToken::STRING AS resume_token
  FROM {table}
  WHERE db = 'shop' AND coll = 'orders' AND v:documentKey IS NOT NULL
  QUALIFY ROW_NUMBER() OVER (PARTITION BY doc_key ORDER BY resume_token DESC) = 1
) s
ON t.doc_key = s.doc_key
WHEN MATCHED AND s.op = 'delete' AND s.resume_token > t.resume_token THEN DELETE
WHEN MATCHED AND s.doc IS NOT NULL AND s.resume_token > t.resume_token THEN UPDATE SET
  doc = s.doc, status = s.doc:status::STRING, amount = s.doc:amount::NUMBER(12,2),
  resume_token = s.resume_token
WHEN NOT MATCHED AND s.op <> 'delete' AND s.doc IS NOT NULL THEN INSERT
  (doc_key, doc, status, amount, resume_token)
  VALUES (s.doc_key, s.doc, s.doc:status::STRING, s.doc:amount::NUMBER(12,2), s.resume_token);
"
    )
}

/// Renders every statement for one sink.
pub fn render(
    sink_id: &str,
    sink: &AdlsPartitionedJsonlConfig,
    options: &Options,
) -> Result<String, String> {
    if sink.commit == Commit::EveryBatch {
        return Err(format!(
            "sink `{sink_id}` uses commit = \"every_batch\": its files are visible while they grow, and Snowflake would load a changed file again (duplicating rows). Use commit = \"on_seal\" (the default) for a lake that Snowflake loads"
        ));
    }
    let objects = Objects::new(sink, options)?;
    let refresh = objects.refresh_prefix(sink, options)?;
    let mut out = String::new();
    objects.header(&mut out, sink_id, sink);
    objects.integration(&mut out);
    objects.format_and_stage(&mut out);
    objects.table(&mut out);
    objects.load(&mut out);
    objects.task(&mut out, &options.schedule);
    objects.pipe(&mut out, &refresh);
    objects.silver(&mut out);
    Ok(out)
}

/// The objects' names and what the statements share.
struct Objects {
    table: String,
    stage: String,
    integration: String,
    file_format: String,
    warehouse: Option<String>,
    task: String,
    pipe: String,
    notification: String,
    url: String,
    url_note: Option<&'static str>,
    layout: Layout,
    pattern: FilePattern,
}

impl Objects {
    fn new(sink: &AdlsPartitionedJsonlConfig, options: &Options) -> Result<Self, String> {
        let table = identifier("--table", &options.table)?;
        let warehouse = options
            .warehouse
            .as_deref()
            .map(|w| identifier("--warehouse", w))
            .transpose()?;
        check_cron(&options.schedule)?;
        let layout = sink
            .check()
            .map_err(|errors| crate::config::join_option_errors(&errors))?;
        let (url, url_note) = stage_url(sink);
        let base = table.rsplit('.').next().unwrap_or(&table).to_string();
        Ok(Self {
            stage: identifier("--stage", &options.stage)?,
            integration: identifier("--integration", &options.integration)?,
            file_format: identifier("--file-format", &options.file_format)?,
            warehouse,
            task: format!("{table}_load"),
            pipe: format!("{table}_pipe"),
            notification: format!("{base}_notifications"),
            url,
            url_note,
            pattern: FilePattern::from_layout(&layout),
            layout,
            table,
        })
    }

    /// The folder `ALTER PIPE ... REFRESH PREFIX` re-scans.
    fn refresh_prefix(
        &self,
        sink: &AdlsPartitionedJsonlConfig,
        options: &Options,
    ) -> Result<String, String> {
        let prefix = self.layout.prefix();
        Ok(match &options.refresh_hour {
            Some(hour) => prefix.render("<DB>", "<COLL>", &refresh_time(hour, &sink.timezone)?),
            None => example_prefix(prefix),
        })
    }

    fn copy(&self, on_error: &str) -> String {
        copy_into(
            &self.table,
            &self.stage,
            &self.file_format,
            &self.pattern,
            on_error,
        )
    }

    fn header(&self, w: &mut String, sink_id: &str, sink: &AdlsPartitionedJsonlConfig) {
        let layout = &self.layout;
        let files = match layout.mode() {
            Mode::Rolling => format!(
                "{}{}[{PART_SEPARATOR}NNNN]{}",
                sink.path_prefix,
                sink.file_name,
                layout.extension()
            ),
            Mode::PerEvent => format!(
                "{}{PER_EVENT_PREFIX}<position>-<operation>-<key hash>.jsonl",
                sink.path_prefix
            ),
        };
        let json_mode = match sink.encoding.extended_json {
            ExtendedJsonMode::Relaxed => "relaxed",
            ExtendedJsonMode::Canonical => "canonical",
            ExtendedJsonMode::Simplified => "simplified",
        };
        let _ = writeln!(w, "-- Snowflake objects for sink `{sink_id}` (adls_partitioned_jsonl), generated by mongo-adls.");
        let _ = writeln!(w, "-- Files: {files}");
        let _ = writeln!(
            w,
            "-- Extended JSON: {json_mode}; partition fields are in time zone {}.",
            sink.timezone
        );
        w.push_str(concat!(
            "-- commit = \"on_seal\": a file appears under its final name only when complete and never\n",
            "-- changes, so Snowflake's load history loads each file exactly once.\n",
            "-- Placeholders look like <THIS> and their lines say FILL IN. Nothing secret is printed:\n",
            "-- Snowflake reads the lake through the storage integration's own identity.\n",
        ));
        if let Some(note) = self.url_note {
            let _ = writeln!(w, "-- Note: {note}.");
        }
    }

    fn integration(&self, w: &mut String) {
        let integration = &self.integration;
        let _ = writeln!(w, "\n-- 1. Storage integration (ACCOUNTADMIN). Then run DESC STORAGE INTEGRATION {integration};");
        w.push_str(concat!(
            "--    open AZURE_CONSENT_URL, and grant the AZURE_MULTI_TENANT_APP_NAME application the\n",
            "--    \"Storage Blob Data Reader\" role on the filesystem.\n",
        ));
        let _ = writeln!(w, "CREATE STORAGE INTEGRATION IF NOT EXISTS {integration}");
        w.push_str(concat!(
            "  TYPE = EXTERNAL_STAGE\n",
            "  STORAGE_PROVIDER = 'AZURE'\n",
            "  ENABLED = TRUE\n",
            "  AZURE_TENANT_ID = '<AZURE_TENANT_ID>' -- FILL IN: the storage account's tenant\n",
        ));
        let _ = writeln!(w, "  STORAGE_ALLOWED_LOCATIONS = ({});", string(&self.url));
    }

    fn format_and_stage(&self, w: &mut String) {
        let compression = match self.layout.compression() {
            Compression::None => "NONE",
            Compression::Gzip => "GZIP",
        };
        let _ = writeln!(w, "\n-- 2. File format: one JSON document per line.");
        let _ = writeln!(w, "CREATE FILE FORMAT IF NOT EXISTS {}", self.file_format);
        let _ = writeln!(w, "  TYPE = JSON");
        let _ = writeln!(w, "  COMPRESSION = {compression}");
        let _ = writeln!(w, "  STRIP_OUTER_ARRAY = FALSE;");

        let _ = writeln!(
            w,
            "\n-- 3. Stage on the filesystem, with a directory table."
        );
        let _ = writeln!(w, "CREATE STAGE IF NOT EXISTS {}", self.stage);
        let _ = writeln!(w, "  URL = {}", string(&self.url));
        let _ = writeln!(w, "  STORAGE_INTEGRATION = {}", self.integration);
        // Snowflake's documented order: directory table, then file format.
        let _ = writeln!(w, "  DIRECTORY = (ENABLE = TRUE)");
        let _ = writeln!(
            w,
            "  FILE_FORMAT = (FORMAT_NAME = {});",
            string(&self.file_format)
        );
    }

    fn table(&self, w: &mut String) {
        let _ = writeln!(
            w,
            "\n-- 4. Bronze table: each change event as loaded, with its partition fields."
        );
        let _ = writeln!(w, "CREATE TABLE IF NOT EXISTS {} (", self.table);
        w.push_str(
            "  v VARIANT NOT NULL,\n  db STRING,\n  coll STRING,\n  operation_type STRING,\n",
        );
        for c in &self.pattern.columns {
            let _ = writeln!(w, "  {} {},", c.name, column_type(c.name));
        }
        w.push_str(concat!(
            "  filename STRING NOT NULL,\n",
            "  file_row_number NUMBER,\n",
            "  loaded_at TIMESTAMP_LTZ DEFAULT CURRENT_TIMESTAMP()\n",
            ");\n",
        ));
    }

    fn load(&self, w: &mut String) {
        w.push_str(concat!(
            "\n-- 5. Load. PATTERN matches sealed files only; partition columns come from the\n",
            "--    path. COPY skips files already loaded (64 days of load history per table).\n",
            "--    ON_ERROR = ABORT_STATEMENT: a bad line stops the load and nothing of that file is\n",
            "--    marked loaded, so it is retried after the fix; SKIP_FILE would move on without it.\n",
        ));
        w.push_str(&self.copy("ABORT_STATEMENT"));
    }

    fn task(&self, w: &mut String, schedule: &str) {
        let task = &self.task;
        let _ = writeln!(
            w,
            "\n-- 6. The same load on a schedule ({schedule} in UTC)."
        );
        let _ = writeln!(w, "CREATE TASK IF NOT EXISTS {task}");
        match &self.warehouse {
            Some(wh) => {
                let _ = writeln!(w, "  WAREHOUSE = {wh}");
            }
            None => {
                let _ = writeln!(
                    w,
                    "  -- No WAREHOUSE: a serverless task. Add WAREHOUSE = <name> to use your own."
                );
            }
        }
        let _ = writeln!(
            w,
            "  SCHEDULE = {}",
            string(&format!("USING CRON {schedule} UTC"))
        );
        let _ = writeln!(w, "AS");
        w.push_str(&self.copy("ABORT_STATEMENT"));
        let _ = writeln!(w, "ALTER TASK {task} RESUME;");
    }

    fn pipe(&self, w: &mut String, refresh: &str) {
        let (pipe, notification) = (&self.pipe, &self.notification);
        w.push_str(concat!(
            "\n-- 7. Or Snowpipe instead of the task: loads each file within a minute of its seal,\n",
            "--    from Event Grid BlobCreated events (one per sealed file) on a storage queue.\n",
            "--    Snowpipe keeps 14 days of load history per pipe; do not run both the task and the pipe.\n",
        ));
        let _ = writeln!(
            w,
            "CREATE NOTIFICATION INTEGRATION IF NOT EXISTS {notification}"
        );
        w.push_str(concat!(
            "  ENABLED = TRUE\n",
            "  TYPE = QUEUE\n",
            "  NOTIFICATION_PROVIDER = AZURE_STORAGE_QUEUE\n",
            "  AZURE_STORAGE_QUEUE_PRIMARY_URI = '<QUEUE_URL>' -- FILL IN: https://<account>.queue.core.windows.net/<queue>\n",
            "  AZURE_TENANT_ID = '<AZURE_TENANT_ID>'; -- FILL IN\n",
        ));
        let _ = writeln!(w, "CREATE PIPE IF NOT EXISTS {pipe}");
        let _ = writeln!(w, "  AUTO_INGEST = TRUE");
        let _ = writeln!(
            w,
            "  INTEGRATION = {}",
            string(&notification.to_uppercase())
        );
        let _ = writeln!(w, "AS");
        w.push_str(&self.copy("SKIP_FILE"));
        let _ = writeln!(
            w,
            "-- Backfill or re-scan one hour (files staged in the last 7 days):"
        );
        let _ = writeln!(
            w,
            "ALTER PIPE {pipe} REFRESH PREFIX = {}; -- FILL IN the placeholders",
            string(refresh)
        );
    }

    fn silver(&self, w: &mut String) {
        let _ = writeln!(
            w,
            "\n-- 8. Silver layer, an example to adapt (not run as generated): the current state of"
        );
        let _ = writeln!(w, "--    shop.orders with deletes applied. Run it after each load, or from a stream on {}.", self.table);
        for line in silver_example(&self.table).lines() {
            let _ = writeln!(w, "-- {line}");
        }
    }
}
