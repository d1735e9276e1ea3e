//! `mongo-adls validate`: every check that needs no network runs when the
//! config is loaded (`--no-environment` rejects what a start would, with
//! the option's key and line), and without the flag every component's
//! healthcheck runs, writing nothing but what it says it wrote.

mod support;

use support::SpawnTracked as _;

use std::{
    path::{Path, PathBuf},
    process::Output,
    time::{Duration, Instant},
};

fn validate(args: &[&str], cfg: &Path) -> Output {
    support::mongo_adls()
        .arg("validate")
        .args(args)
        .arg("-c")
        .arg(cfg)
        .output()
        .unwrap()
}

/// Runs `validate` (with healthchecks) and checks it exits 78 within
/// `limit`; returns its error output.
fn fails_within(cfg: &Path, limit: Duration) -> String {
    let started = Instant::now();
    let out = validate(&[], cfg);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(78), "{stderr}");
    assert!(
        started.elapsed() < limit,
        "{:?}: {stderr}",
        started.elapsed()
    );
    stderr
}

/// A config with a source and a sink; `source` and `sink` hold extra
/// lines, and the sink writes to a `file://` lake unless `sink` names an
/// `account_url`.
fn config(dir: &Path, source: &str, sink: &str) -> PathBuf {
    let account_url = if sink.contains("account_url") {
        String::new()
    } else {
        format!("account_url = \"file://{}/lake\"", dir.display())
    };
    let filesystem = if sink.lines().any(|l| l.starts_with("filesystem")) {
        ""
    } else {
        "filesystem = \"raw\""
    };
    let text = format!(
        r#"data_dir = "{data}"

[sources.mongo]
type = "mongodb_change_stream"
uri = "mongodb://127.0.0.1:27017/?replicaSet=rs0"
database = "shop"
{source}

[sinks.lake]
type = "adls_partitioned_jsonl"
inputs = ["mongo"]
{filesystem}
{account_url}
{sink}
"#,
        data = dir.join("data").display()
    );
    let path = dir.join("cfg.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// `validate --no-environment` exits 78 and names `key` at the line that
/// holds `at` (the first line containing it).
fn rejects(source: &str, sink: &str, key: &str, at: &str) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), source, sink);
    let text = std::fs::read_to_string(&cfg).unwrap();
    let line = text
        .lines()
        .position(|l| l.contains(at))
        .unwrap_or_else(|| panic!("{at:?} not in the config"))
        + 1;
    let out = validate(&["--no-environment"], &cfg);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{stderr}");
    let expected = format!("cfg.toml:{line}: `{key}`: ");
    assert!(stderr.contains(&expected), "want {expected:?} in: {stderr}");
    // Nothing outside the files was touched.
    assert!(!dir.path().join("data").exists() && !dir.path().join("lake").exists());
}

const AZURE: &str = "account_url = \"http://127.0.0.1:1/devstoreaccount1\"";
/// A SAS with every field a request needs (not a valid signature).
const SAS: &str = "sv=2024-11-04&sp=racwdl&se=2030-01-01&sig=abc";

macro_rules! rejected {
    ($($name:ident: ($source:expr, $sink:expr) => $key:expr, at $at:expr;)*) => {
        $(
            #[test]
            fn $name() {
                rejects($source, $sink, $key, $at);
            }
        )*
    };
}

rejected! {
    path_prefix_leaving_the_lake: ("", "path_prefix = \"../../etc/\"") => "sinks.lake.path_prefix", at "path_prefix";
    path_prefix_absolute: ("", "path_prefix = \"/{{ ns.db }}/\"") => "sinks.lake.path_prefix", at "path_prefix";
    path_prefix_empty_segment: ("", "path_prefix = \"{{ ns.db }}//x/\"") => "sinks.lake.path_prefix", at "path_prefix";
    template_unknown_field: ("", "path_prefix = \"{{ ns.table }}/\"") => "sinks.lake.path_prefix", at "path_prefix";
    template_stray_brace: ("", "path_prefix = \"{ ns.db }/\"") => "sinks.lake.path_prefix", at "path_prefix";
    template_unclosed: ("", "file_name = \"e-{{ ns.db\"") => "sinks.lake.file_name", at "file_name";
    file_name_leaving_its_folder: ("", "file_name = \"../e-%H\"") => "sinks.lake.file_name", at "file_name";
    file_names_that_collide: ("", "roll.window_secs = 600") => "sinks.lake.file_name", at "[sinks.lake]";
    timezone_unknown: ("", "timezone = \"Mars/Olympus\"") => "sinks.lake.timezone", at "timezone";
    request_timeout_zero: ("", "request.timeout_secs = 0") => "sinks.lake.request.timeout_secs", at "request.timeout_secs";
    request_concurrency_zero: ("", "request.concurrency = 0") => "sinks.lake.request.concurrency", at "request.concurrency";
    backoff_below_initial: ("", "request.retry_initial_backoff_secs = 5\nrequest.retry_max_backoff_secs = 1") => "sinks.lake.request.retry_max_backoff_secs", at "retry_max_backoff_secs";
    roll_max_bytes_zero: ("", "roll.max_bytes = 0") => "sinks.lake.roll.max_bytes", at "roll.max_bytes";
    roll_window_zero: ("", "roll.window_secs = 0") => "sinks.lake.roll.window_secs", at "roll.window_secs";
    roll_max_age_zero: ("", "roll.max_age_secs = 0") => "sinks.lake.roll.max_age_secs", at "roll.max_age_secs";
    batch_timeout_zero: ("", "batch.timeout_secs = 0") => "sinks.lake.batch.timeout_secs", at "batch.timeout_secs";
    batch_bytes_zero: ("", "batch.max_bytes = 0") => "sinks.lake.batch.max_bytes", at "batch.max_bytes";
    auth_missing: ("", AZURE) => "sinks.lake.auth", at "[sinks.lake]";
    auth_two_kinds: ("", &format!("{AZURE}\nauth.sas_token = \"sv=x&sig=y\"\nauth.azure_cli = true")) => "sinks.lake.auth", at "auth.sas_token";
    auth_partial_client_secret: ("", &format!("{AZURE}\nauth.client_secret = \"s\"\nauth.client_id = \"c\"")) => "sinks.lake.auth.client_secret", at "auth.client_secret";
    auth_key_not_base64: ("", &format!("{AZURE}\nauth.shared_key = \"not base64!\"")) => "sinks.lake.auth.shared_key", at "auth.shared_key";
    auth_on_a_file_lake: ("", "auth.sas_token = \"sv=x\"") => "sinks.lake.auth", at "auth.sas_token";
    entra_over_http: ("", &format!("{AZURE}\nauth.azure_cli = true")) => "sinks.lake.account_url", at "account_url";
    filesystem_name: ("", &format!("{AZURE}\nauth.sas_token = \"{SAS}\"\nfilesystem = \"Raw_Data\"")) => "sinks.lake.filesystem", at "Raw_Data";
    account_url_not_azure: ("", &format!("account_url = \"https://example.com\"\nauth.sas_token = \"{SAS}\"")) => "sinks.lake.account_url", at "account_url";
    account_url_scheme_typo: ("", &format!("account_url = \"htps://acct.blob.core.windows.net\"\nauth.sas_token = \"{SAS}\"")) => "sinks.lake.account_url", at "account_url";
    sas_without_signature: ("", &format!("{AZURE}\nauth.sas_token = \"sv=2024-11-04&sp=racwdl&se=2030-01-01\"")) => "sinks.lake.auth.sas_token", at "auth.sas_token";
    sas_without_permissions: ("", &format!("{AZURE}\nauth.sas_token = \"sv=2024-11-04&se=2030-01-01&sig=abc\"")) => "sinks.lake.auth.sas_token", at "auth.sas_token";
    file_lake_relative: ("", "account_url = \"file://lake\"") => "sinks.lake.account_url", at "account_url";
    start_at_unknown: ("start_at = \"yesterday\"", "") => "sources.mongo.start_at", at "start_at";
    collection_and_collections: ("collection = \"a\"\ncollections = [\"b\"]", "") => "sources.mongo.collections", at "collections =";
    pipeline_out: ("pipeline = '[{\"$match\": {}}, {\"$out\": \"x\"}]'", "") => "sources.mongo.pipeline", at "pipeline";
    pipeline_lookup: ("pipeline = '[{\"$lookup\": {\"from\": \"x\"}}]'", "") => "sources.mongo.pipeline", at "pipeline";
    pipeline_merge_as_table: ("[[sources.mongo.pipeline]]\n\"$merge\" = { into = \"x\" }", "") => "sources.mongo.pipeline", at "pipeline";
    resnapshot_without_snapshot: ("on_history_lost = \"resnapshot\"", "") => "sources.mongo.on_history_lost", at "on_history_lost";
    snapshot_chunk_zero: ("snapshot_chunk_size = 0", "") => "sources.mongo.snapshot_chunk_size", at "snapshot_chunk_size";
}

/// The URI cases replace the config's `uri` line.
fn rejects_uri(uri: &str) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "", "");
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("mongodb://127.0.0.1:27017/?replicaSet=rs0", uri);
    std::fs::write(&cfg, text).unwrap();
    let out = validate(&["--no-environment"], &cfg);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{uri}: {stderr}");
    assert!(
        stderr.contains("cfg.toml:5: `sources.mongo.uri`: "),
        "{uri}: {stderr}"
    );
    assert!(
        !stderr.contains("s3cret"),
        "the password is never printed: {stderr}"
    );
}

#[test]
fn uri_with_a_wrong_scheme() {
    rejects_uri("http://127.0.0.1:27017");
}

#[test]
fn uri_with_a_bad_port() {
    rejects_uri("mongodb://user:s3cret@127.0.0.1:99999/");
}

#[test]
fn uri_with_an_unknown_option() {
    rejects_uri("mongodb://user:s3cret@127.0.0.1:27017/?replicaSett=rs0");
}

#[test]
fn uri_with_a_missing_tls_ca_file() {
    rejects_uri("mongodb://127.0.0.1:27017/?tls=true&tlsCAFile=/nonexistent/ca.pem");
}

#[test]
fn allowed_stages_and_defaults_pass() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        dir.path(),
        "pipeline = '[{\"$match\": {\"operationType\": \"insert\"}}, {\"$unset\": \"fullDocument.ssn\"}, {\"$project\": {\"x\": 0}}]'",
        "",
    );
    let out = validate(&["--no-environment"], &cfg);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Without `--no-environment` the source is checked against MongoDB: a
/// standalone mongod cannot serve change streams.
#[tokio::test]
async fn a_standalone_mongod_fails_validate() {
    let mongod = support::Mongod::start_standalone();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "", "create_filesystem = true");
    let text = std::fs::read_to_string(&cfg).unwrap().replace(
        "mongodb://127.0.0.1:27017/?replicaSet=rs0",
        &format!("mongodb://127.0.0.1:{}/?directConnection=true", mongod.port),
    );
    std::fs::write(&cfg, text).unwrap();
    let stderr = fails_within(&cfg, Duration::from_secs(15));
    assert!(
        stderr.contains("source `mongo`") && stderr.contains("standalone"),
        "{stderr}"
    );

    // With `replicaSet` in the URI the driver never selects the standalone.
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("directConnection=true", "replicaSet=rs0");
    std::fs::write(&cfg, text).unwrap();
    let stderr = fails_within(&cfg, Duration::from_secs(15));
    assert!(stderr.contains("source `mongo`"), "{stderr}");
}

#[tokio::test]
async fn an_unreachable_host_fails_validate_within_the_timeout() {
    let dir = tempfile::tempdir().unwrap();
    // A port nothing listens on: bound here and never accepted.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let cfg = config(dir.path(), "", "create_filesystem = true");
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("127.0.0.1:27017", &format!("127.0.0.1:{port}"));
    std::fs::write(&cfg, text).unwrap();
    // The source's 8 s server selection, plus start-up on a loaded
    // machine; the driver's default would take 30 s.
    let stderr = fails_within(&cfg, Duration::from_secs(20));
    assert!(
        stderr.contains("127.0.0.1:")
            && stderr.contains("cannot reach MongoDB")
            && !stderr.contains("RawDocumentBuf"),
        "a sentence, not a dump: {stderr}"
    );
}

/// A healthy pipeline: validate passes, creates neither `data_dir` nor the
/// lake's folders, and says what it wrote (nothing, for `file://`).
#[tokio::test]
async fn validate_writes_nothing() {
    let mongod = support::Mongod::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "", "create_filesystem = true");
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("mongodb://127.0.0.1:27017/?replicaSet=rs0", &mongod.uri());
    std::fs::write(&cfg, text).unwrap();
    let out = validate(&[], &cfg);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("Healthcheck passed: source `mongo`"),
        "{stdout}"
    );
    assert!(
        stdout.contains("Healthcheck passed: sink `lake`; nothing written"),
        "{stdout}"
    );
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, ["cfg.toml"], "validate created files");
}

/// Runs the agent (not `validate`) on `cfg` with its log in a file; returns
/// the child and the log's path.
fn run_agent(cfg: &Path) -> (std::process::Child, PathBuf) {
    run_agent_with(cfg, &[])
}

fn run_agent_with(cfg: &Path, args: &[&str]) -> (std::process::Child, PathBuf) {
    let log = cfg.with_extension("log");
    let file = std::fs::File::create(&log).unwrap();
    let child = support::mongo_adls()
        .arg("-c")
        .arg(cfg)
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(file)
        .spawn_tracked();
    (child, log)
}

/// A running agent meets a deployment that cannot serve change streams:
/// it stops at once, non-zero, with one sentence naming the cause (no
/// retries, no BSON dump).
#[tokio::test]
async fn a_standalone_mongod_stops_the_agent_with_one_message() {
    let mongod = support::Mongod::start_standalone();
    for uri_options in ["directConnection=true", "replicaSet=rs0"] {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path(), "", "create_filesystem = true");
        let text = std::fs::read_to_string(&cfg).unwrap().replace(
            "mongodb://127.0.0.1:27017/?replicaSet=rs0",
            &format!("mongodb://127.0.0.1:{}/?{uri_options}", mongod.port),
        );
        std::fs::write(&cfg, text).unwrap();
        let started = Instant::now();
        let (mut agent, log) = run_agent(&cfg);
        let status = loop {
            if let Some(status) = agent.try_wait().unwrap() {
                break status;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "{uri_options}: still running"
            );
            std::thread::sleep(Duration::from_millis(100));
        };
        let text = std::fs::read_to_string(&log).unwrap();
        assert!(!status.success(), "{uri_options}: {text}");
        let failures: Vec<&str> = text
            .lines()
            .filter(|l| l.contains("stream_failed"))
            .collect();
        assert_eq!(failures.len(), 1, "{uri_options}: {text}");
        assert!(
            failures[0].contains("replica set")
                && !text.contains("RawDocumentBuf")
                && !text.contains("Reopening"),
            "{uri_options}: {text}"
        );
    }
}

/// An unreachable MongoDB is reported after the source's 8 s server
/// selection (not after the driver's 30 s default; 20 s leave room for
/// start-up on a loaded machine), as a sentence, and retried.
#[tokio::test]
async fn an_unreachable_host_is_logged_within_20s() {
    let dir = tempfile::tempdir().unwrap();
    let port = support::free_port();
    let cfg = config(dir.path(), "", "create_filesystem = true");
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("127.0.0.1:27017", &format!("127.0.0.1:{port}"));
    std::fs::write(&cfg, text).unwrap();
    let started = Instant::now();
    let (mut agent, log) = run_agent(&cfg);
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("cannot reach MongoDB") {
            assert!(
                text.contains("Reopening") && !text.contains("RawDocumentBuf"),
                "{text}"
            );
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "not reported in 20 s: {text}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        agent.try_wait().unwrap().is_none(),
        "a transient error is retried"
    );
    agent.kill().unwrap();
    agent.wait().unwrap();
}

/// Bad MongoDB credentials (the test mongod has no users, so
/// authentication fails): `validate` exits 78 naming the cause, and a
/// running agent at `-vv` (trace) exits 78 within the healthcheck timeout
/// (10 s, plus start-up on a loaded machine) instead of 1, which the shipped
/// systemd unit would restart forever. No line shows the password (as
/// written or percent-encoded).
#[tokio::test]
async fn bad_mongodb_credentials_exit_78_and_never_log_the_password() {
    let mongod = support::Mongod::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "", "create_filesystem = true");
    let password = "Pa55/w0rd:s3cret";
    let text = std::fs::read_to_string(&cfg).unwrap().replace(
        "mongodb://127.0.0.1:27017/?replicaSet=rs0",
        &format!(
            "mongodb://reader:Pa55%2Fw0rd%3As3cret@127.0.0.1:{}/?replicaSet=rs0",
            mongod.port
        ),
    );
    std::fs::write(&cfg, text).unwrap();
    let stderr = fails_within(&cfg, Duration::from_secs(20));
    assert!(
        stderr.contains("source `mongo`") && stderr.contains("authentication failed"),
        "{stderr}"
    );

    let started = Instant::now();
    let (mut agent, log) = run_agent_with(&cfg, &["-vv"]);
    let status = loop {
        if let Some(status) = agent.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > Duration::from_secs(20) {
            let _ = agent.kill();
            let _ = agent.wait();
            panic!(
                "still running after 20 s: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(status.code(), Some(78), "{text}");
    assert!(text.contains("authentication failed"), "{text}");
    for secret in [password, "Pa55%2Fw0rd", "s3cret"] {
        assert!(
            !text.contains(secret) && !stderr.contains(secret),
            "the output shows the password ({secret}):\n{stderr}{text}"
        );
    }
}

/// `validate` checks that `api.address` can be bound: a port another
/// process holds fails it with 78, naming the option.
#[tokio::test]
async fn a_busy_api_port_fails_validate() {
    let mongod = support::Mongod::start().await;
    let dir = tempfile::tempdir().unwrap();
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port();
    let cfg = config(dir.path(), "", "create_filesystem = true");
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("mongodb://127.0.0.1:27017/?replicaSet=rs0", &mongod.uri())
        .replacen(
            "data_dir",
            &format!("api.address = \"127.0.0.1:{port}\"\ndata_dir"),
            1,
        );
    std::fs::write(&cfg, text).unwrap();
    let stderr = fails_within(&cfg, Duration::from_secs(20));
    assert!(
        stderr.contains("Healthcheck failed: `api.address`")
            && stderr.contains(&format!("127.0.0.1:{port}")),
        "{stderr}"
    );
    drop(busy);
    let out = validate(&[], &cfg);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("Healthcheck passed: `api.address`"),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `validate` checks the `[state]` store of a group as a standby reads it:
/// a wrong key fails with 78 naming `[state]` and the refusal; the right
/// key passes; a missing container fails unless `create_container` is set.
#[tokio::test]
async fn validate_checks_the_state_store() {
    let mongod = support::Mongod::start().await;
    let azurite = support::Azurite::start();
    let dir = tempfile::tempdir().unwrap();
    let state = |key: &str, create: bool| {
        let cfg = config(dir.path(), "", "create_filesystem = true");
        let text = std::fs::read_to_string(&cfg)
            .unwrap()
            .replace("mongodb://127.0.0.1:27017/?replicaSet=rs0", &mongod.uri())
            .replacen(
                "\n[sources.mongo]",
                &format!(
                    "\n[state]\nstore = \"azure_blob\"\naccount_url = \"{}\"\ncontainer = \"state\"\ncreate_container = {create}\nid = \"p\"\nauth.shared_key = \"{key}\"\n\n[sources.mongo]",
                    azurite.account_url()
                ),
                1,
            );
        std::fs::write(&cfg, text).unwrap();
        cfg
    };
    let wrong = "A".repeat(86) + "==";
    let stderr = fails_within(&state(&wrong, true), Duration::from_secs(20));
    assert!(
        stderr.contains("Healthcheck failed: `[state]`") && stderr.contains("403"),
        "{stderr}"
    );
    assert!(!stderr.contains(&wrong), "the key is never printed");

    let stderr = fails_within(&state(support::AZURITE_KEY, false), Duration::from_secs(20));
    assert!(
        stderr.contains("`[state]`") && stderr.contains("ContainerNotFound"),
        "{stderr}"
    );

    let out = validate(&[], &state(support::AZURITE_KEY, true));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success()
            && stdout.contains("Healthcheck passed: `[state]`")
            && stdout.contains("created at start"),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// An `adls_delta` sink's options are checked at load like the JSON Lines
/// sink's, each error naming its key and line.
#[test]
fn delta_sink_options_are_checked_at_load() {
    for (options, key, at) in [
        (
            "path_prefix = \"{{ ns.db }}/{{ ns.coll }}/year=%Y\"",
            "sinks.tables.path_prefix",
            "path_prefix",
        ),
        (
            "path_prefix = \"{{ ns.coll }}\"",
            "sinks.tables.path_prefix",
            "path_prefix",
        ),
        (
            "partition_by = \"week\"",
            "sinks.tables.partition_by",
            "partition_by",
        ),
        (
            "compaction.min_files = 1",
            "sinks.tables.compaction.min_files",
            "compaction.min_files",
        ),
        (
            "commit.interval_secs = 0",
            "sinks.tables.commit.interval_secs",
            "commit.interval_secs",
        ),
        (
            "timezone = \"Mars/Olympus\"",
            "sinks.tables.timezone",
            "timezone",
        ),
        (
            "data_files.max_total_bytes = 10",
            "sinks.tables.data_files.max_total_bytes",
            "data_files.max_total_bytes",
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("cfg.toml");
        std::fs::write(
            &cfg,
            format!(
                r#"data_dir = "{data}"
[sources.mongo]
type = "mongodb_change_stream"
uri = "mongodb://127.0.0.1:27017/?replicaSet=rs0"

[sinks.tables]
type = "adls_delta"
inputs = ["mongo"]
account_url = "file://{lake}"
filesystem = "tables"
{options}
"#,
                data = dir.path().join("data").display(),
                lake = dir.path().join("lake").display(),
            ),
        )
        .unwrap();
        let text = std::fs::read_to_string(&cfg).unwrap();
        let line = text.lines().position(|l| l.contains(at)).unwrap() + 1;
        let out = validate(&["--no-environment"], &cfg);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(78), "{options}: {stderr}");
        let expected = format!("cfg.toml:{line}: `{key}`: ");
        assert!(stderr.contains(&expected), "want {expected:?} in: {stderr}");
    }
}
