//! `mongo-adls snowflake-sql`: the generated SQL parses as Snowflake SQL,
//! its file pattern and partition regexes agree with the sink's names, and
//! the output for the example configs is pinned (`tests/snapshots/`; run
//! with `UPDATE_SNAPSHOTS=1` to rewrite the ones that differ after an
//! intended change: that run fails, the next one without it passes).

mod support;

use std::path::Path;

use mongo_adls::snowflake::{self, FilePattern};
use regex::Regex;
use sqlparser::{dialect::SnowflakeDialect, parser::Parser};

fn bin(config: &Path, args: &[&str]) -> std::process::Output {
    support::mongo_adls()
        .arg("--config")
        .arg(config)
        .arg("snowflake-sql")
        .args(args)
        // The example configs read these; their defaults make the output fixed.
        .env_remove("ADLS_ACCOUNT")
        .env_remove("ADLS_ACCOUNT_URL")
        .env_remove("ADLS_SAS")
        .env_remove("MONGO_URI")
        .env_remove("MONGO_ADLS_LAKE")
        .output()
        .unwrap()
}

fn sink_config(dir: &Path, name: &str, options: &str) -> std::path::PathBuf {
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(
        &path,
        format!(
            r#"
data_dir = "{}"
[sources.in]
type = "demo_events"
[sinks.lake]
type = "adls_partitioned_jsonl"
inputs = ["in"]
account_url = "https://acct.dfs.core.windows.net"
filesystem = "raw"
auth.sas_token = "sv=2024&sp=racwdl&se=2030-01-01&sig=SECRET-SIG"
{options}
"#,
            dir.display()
        ),
    )
    .unwrap();
    path
}

/// Statements of the script, comments stripped by the parser; each ends
/// with `;` at the end of a line (the generator writes them that way).
fn statements(sql: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in sql.lines() {
        if line.trim_start().starts_with("--") {
            continue;
        }
        current.push_str(line);
        current.push('\n');
        let code = line.split(" --").next().unwrap_or(line).trim_end();
        if code.ends_with(';') {
            out.push(std::mem::take(&mut current).trim_start().to_string());
        }
    }
    assert!(
        current.trim().is_empty(),
        "unterminated statement: {current}"
    );
    out
}

fn parse(sql: &str) {
    Parser::parse_sql(&SnowflakeDialect {}, sql)
        .unwrap_or_else(|e| panic!("does not parse as Snowflake SQL: {e}\n{sql}"));
}

/// Every statement parses with sqlparser's Snowflake dialect. sqlparser
/// 0.64 has no grammar for integrations, tasks and pipes: for those the
/// header is checked against Snowflake's documented shape and the COPY
/// they wrap is parsed.
fn assert_parses(sql: &str) -> usize {
    let header_shapes = [
        (
            "CREATE STORAGE INTEGRATION",
            r"^CREATE STORAGE INTEGRATION IF NOT EXISTS \w+\n  TYPE = EXTERNAL_STAGE\n  STORAGE_PROVIDER = 'AZURE'\n  ENABLED = TRUE\n  AZURE_TENANT_ID = '[^']+'( --[^\n]*)?\n  STORAGE_ALLOWED_LOCATIONS = \('azure://[^']+/'\);\n$",
        ),
        (
            "CREATE NOTIFICATION INTEGRATION",
            r"^CREATE NOTIFICATION INTEGRATION IF NOT EXISTS \w+\n  ENABLED = TRUE\n  TYPE = QUEUE\n  NOTIFICATION_PROVIDER = AZURE_STORAGE_QUEUE\n  AZURE_STORAGE_QUEUE_PRIMARY_URI = '[^']+'( --[^\n]*)?\n  AZURE_TENANT_ID = '[^']+';( --[^\n]*)?\n$",
        ),
        (
            "CREATE TASK",
            r"^CREATE TASK IF NOT EXISTS [\w.]+\n(  WAREHOUSE = \w+\n)?  SCHEDULE = 'USING CRON [^']+ UTC'\nAS\n(?s)(?P<copy>COPY INTO .*)$",
        ),
        (
            "CREATE PIPE",
            r"^CREATE PIPE IF NOT EXISTS [\w.]+\n  AUTO_INGEST = TRUE\n  INTEGRATION = '[A-Z0-9_]+'\nAS\n(?s)(?P<copy>COPY INTO .*)$",
        ),
        ("ALTER TASK", r"^ALTER TASK [\w.]+ RESUME;\n$"),
        (
            "ALTER PIPE",
            r"^ALTER PIPE [\w.]+ REFRESH PREFIX = '[^']*';( --[^\n]*)?\n$",
        ),
    ];
    let statements = statements(sql);
    for statement in &statements {
        match header_shapes
            .iter()
            .find(|(start, _)| statement.starts_with(start))
        {
            Some((start, shape)) => {
                let caps = Regex::new(shape)
                    .unwrap()
                    .captures(statement)
                    .unwrap_or_else(|| panic!("{start} has an unexpected shape:\n{statement}"));
                if let Some(copy) = caps.name("copy") {
                    parse(copy.as_str());
                }
            }
            None => parse(statement),
        }
    }
    statements.len()
}

fn generate(dir: &Path, name: &str, options: &str) -> String {
    let out = bin(&sink_config(dir, name, options), &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn whole_pattern(p: &FilePattern) -> Regex {
    Regex::new(&format!("^(?:{})$", p.copy_pattern())).unwrap()
}

#[test]
fn generated_sql_parses_for_each_layout() {
    let dir = tempfile::tempdir().unwrap();
    let variants = [
        ("default", ""),
        (
            "custom",
            "path_prefix = \"cdc/{{ ns.db }}.{{ ns.coll }}/dt=%Y-%m-%d/\"\nfile_name = \"h%H-m%M\"\nroll.window_secs = 60\ntimezone = \"Europe/Paris\"",
        ),
        ("gzip", "compression = \"gzip\""),
        ("per_event", "mode = \"per_event\""),
    ];
    for (name, options) in variants {
        let sql = generate(dir.path(), name, options);
        assert!(assert_parses(&sql) >= 10, "{name}");
        assert!(!sql.contains("SECRET"), "{name}: a secret was printed");
        match name {
            "gzip" => assert!(sql.contains("COMPRESSION = GZIP") && sql.contains("[.]jsonl[.]gz")),
            "custom" => {
                assert!(sql.contains("  minute NUMBER(2,0),"), "{sql}");
                assert!(!sql.contains("  hour_"), "{sql}");
                assert!(
                    sql.contains("'cdc/<DB>.<COLL>/dt=<YYYY>-<MM>-<DD>/'"),
                    "{sql}"
                );
            }
            "per_event" => assert!(sql.contains("event-[^/]+[.]jsonl"), "{sql}"),
            _ => assert!(sql.contains("COMPRESSION = NONE")),
        }
    }

    // The commented silver-layer example parses too.
    parse(&snowflake::silver_example("mongo_events"));

    let config = sink_config(dir.path(), "options", "commit = \"on_seal\"");
    let out = bin(
        &config,
        &[
            "--table",
            "analytics.raw.events",
            "--warehouse",
            "LOAD_WH",
            "--schedule",
            "5 * * * *",
            "--refresh-hour",
            "2025-08-10T19",
        ],
    );
    let sql = String::from_utf8(out.stdout).unwrap();
    assert_parses(&sql);
    assert!(
        sql.contains("REFRESH PREFIX = '<DB>/<COLL>/year=2025/month=08/day=10/hour=19/'"),
        "{sql}"
    );
    assert!(sql.contains("CREATE TASK IF NOT EXISTS analytics.raw.events_load\n  WAREHOUSE = LOAD_WH\n  SCHEDULE = 'USING CRON 5 * * * * UTC'"), "{sql}");
}

#[test]
fn refuses_what_snowflake_cannot_load_safely() {
    let dir = tempfile::tempdir().unwrap();
    for (options, args, needle) in [
        ("commit = \"every_batch\"", vec![], "every_batch"),
        ("", vec!["--table", "x; DROP TABLE y"], "--table"),
        ("", vec!["--schedule", "hourly"], "--schedule"),
        ("", vec!["--refresh-hour", "yesterday"], "--refresh-hour"),
        (
            "",
            vec!["--sink", "nope"],
            "no `adls_partitioned_jsonl` or `adls_delta` sink `nope`",
        ),
    ] {
        let out = bin(&sink_config(dir.path(), "bad", options), &args);
        assert_eq!(out.status.code(), Some(78), "{options} {args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(needle), "{needle}: {stderr}");
        assert!(out.stdout.is_empty());
    }
}

#[test]
fn patterns_select_sealed_names_and_extract_partitions() {
    let dir = tempfile::tempdir().unwrap();
    let config = mongo_adls::config::load_from_paths(
        &[sink_config(
            dir.path(),
            "p",
            "file_name = \"events-%Y%m%d-%H%M%S\"",
        )],
        true,
    )
    .unwrap();
    let (_, sink) = snowflake::find_sink(&config, None).unwrap();
    let p = sink.file_pattern().unwrap();
    let names: Vec<&str> = p.columns.iter().map(|c| c.name).collect();
    assert_eq!(names, ["year", "month", "day", "hour", "minute", "second"]);
    let re = whole_pattern(&p);
    assert!(
        re.is_match("shop/orders/year=2025/month=08/day=10/hour=19/events-20250810-194205.jsonl")
    );
    assert!(!re.is_match("_mongo_adls_healthcheck"));
    assert!(!re.is_match(".mongo-adls-staging/raw/shop/orders/year=2025/month=08/day=10/hour=19/events-20250810-194205.jsonl/0001-abc"));
}

#[test]
fn snapshots_of_the_example_configs() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut rewritten = Vec::new();
    // The quick start writes JSON Lines and Delta tables: its JSONL sink.
    for (example, args) in [
        ("quickstart", &["--sink", "lake"][..]),
        ("production_adls", &[]),
        ("mongodb_to_local", &[]),
    ] {
        let out = bin(
            &root.join("config-examples").join(format!("{example}.toml")),
            args,
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let sql = String::from_utf8(out.stdout).unwrap();
        assert_parses(&sql);
        let snapshot = root
            .join("tests/snapshots")
            .join(format!("snowflake_{example}.sql"));
        let pinned = std::fs::read_to_string(&snapshot).ok();
        if pinned.as_deref() == Some(sql.as_str()) {
            continue;
        }
        if std::env::var_os("UPDATE_SNAPSHOTS").is_some() {
            // Rewritten, and still a failure: a run that rewrites a
            // snapshot never passes, so UPDATE_SNAPSHOTS left set (in CI,
            // say) cannot hide a change. Run again without it.
            std::fs::create_dir_all(snapshot.parent().unwrap()).unwrap();
            std::fs::write(&snapshot, &sql).unwrap();
            rewritten.push(snapshot.display().to_string());
            continue;
        }
        match pinned {
            None => panic!(
                "{}: missing (run with UPDATE_SNAPSHOTS=1)",
                snapshot.display()
            ),
            Some(pinned) => assert_eq!(
                sql,
                pinned,
                "{example}: output differs from {} (after an intended change, run with UPDATE_SNAPSHOTS=1)",
                snapshot.display()
            ),
        }
    }
    assert!(
        rewritten.is_empty(),
        "rewrote {rewritten:?}: review the diff and run again without UPDATE_SNAPSHOTS"
    );
}

fn delta_config(dir: &Path, source: &str) -> std::path::PathBuf {
    let path = dir.join("delta.toml");
    std::fs::write(
        &path,
        format!(
            r#"
data_dir = "{}"
[sources.in]
type = "mongodb_change_stream"
uri = "mongodb://127.0.0.1:1/?replicaSet=rs0"
{source}
[sinks.tables]
type = "adls_delta"
inputs = ["in"]
account_url = "https://acct.dfs.core.windows.net"
filesystem = "lake"
path_prefix = "delta/{{{{ ns.db }}}}/{{{{ ns.coll }}}}"
auth.sas_token = "sv=2024&sp=racwdl&se=2030-01-01&sig=SECRET-SIG"
"#,
            dir.display()
        ),
    )
    .unwrap();
    path
}

/// For a Delta sink: an external volume and a catalog integration (shapes
/// as Snowflake documents them; sqlparser has no grammar for them), then a
/// table per collection the source names (or `--collection`), each with
/// its current-state view, which parses.
#[test]
fn delta_direct_tables_and_views_for_each_collection() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = delta_config(
        dir.path(),
        "database = \"shop\"\ncollections = [\"orders\", \"line-items\"]",
    );
    let out = bin(&cfg, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let sql = String::from_utf8(out.stdout).unwrap();
    assert!(!sql.contains("SECRET"), "a secret was printed");
    let shapes = [
        r"^CREATE EXTERNAL VOLUME IF NOT EXISTS mongo_adls_volume\n  STORAGE_LOCATIONS = \(\(\n    NAME = 'mongo_adls'\n    STORAGE_PROVIDER = 'AZURE'\n    STORAGE_BASE_URL = 'azure://acct\.blob\.core\.windows\.net/lake/'\n    AZURE_TENANT_ID = '<AZURE_TENANT_ID>' -- FILL IN\n  \)\)\n  ALLOW_WRITES = FALSE;\n$",
        r"^CREATE CATALOG INTEGRATION IF NOT EXISTS mongo_adls_delta\n  CATALOG_SOURCE = OBJECT_STORE\n  TABLE_FORMAT = DELTA\n  ENABLED = TRUE;\n$",
        r"^CREATE ICEBERG TABLE IF NOT EXISTS (shop_orders|shop_line_items)\n  EXTERNAL_VOLUME = 'mongo_adls_volume'\n  CATALOG = 'mongo_adls_delta'\n  BASE_LOCATION = 'delta/shop/(orders|line-items)/'\n  AUTO_REFRESH = TRUE;\n$",
    ];
    let statements = statements(&sql);
    assert_eq!(statements.len(), 6, "{sql}");
    for statement in &statements {
        match shapes
            .iter()
            .find(|s| Regex::new(s).unwrap().is_match(statement))
        {
            Some(_) => {}
            None => {
                assert!(
                    statement.starts_with("CREATE OR REPLACE VIEW shop_"),
                    "{statement}"
                );
                parse(statement);
            }
        }
    }
    assert!(sql.contains("VIEW shop_line_items_current AS"), "{sql}");

    // A scope that names no collections: one block of placeholders, or
    // the collections asked for.
    let cfg = delta_config(dir.path(), "database = \"shop\"");
    let sql = String::from_utf8(bin(&cfg, &[]).stdout).unwrap();
    assert!(
        sql.contains("BASE_LOCATION = '<DB>/<COLL>/'") && sql.contains("--collection"),
        "{sql}"
    );
    let sql = String::from_utf8(bin(&cfg, &["--collection", "crm.leads"]).stdout).unwrap();
    assert!(
        sql.contains("CREATE ICEBERG TABLE IF NOT EXISTS crm_leads"),
        "{sql}"
    );
    assert!(sql.contains("BASE_LOCATION = 'delta/crm/leads/'"), "{sql}");
}
