//! The `adls_delta` sink end to end: real `mongod` changes into Delta
//! tables on a `file://` lake and in Azurite, checked by
//! `e2e/delta_checker.py`, which shares no code with the agent or with
//! delta-rs: its own replay of `_delta_log` (JSON commits, checkpoints
//! read with pyarrow) and DuckDB's delta extension (delta-kernel) over the
//! tables, both against the load's manifest and MongoDB's final state,
//! including the current-state view.

mod support;

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    process::Stdio,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use rand::Rng;
use support::{
    eventually, free_port,
    load::{generate, Manifest},
    with_options, Agent, Azurite, Lake, Mongod, PipelineConfig, SpawnTracked, AZURITE_KEY,
};

const NAMESPACES: [(&str, &str); 3] = [
    ("delta_a", "orders"),
    ("delta_a", "users"),
    ("delta_b", "orders"),
];

/// How the checker reaches a lake.
enum Where<'a> {
    Dir(PathBuf),
    Azurite(&'a Azurite, &'a str),
}

impl Where<'_> {
    fn args(&self) -> Vec<String> {
        match self {
            Where::Dir(dir) => vec!["--lake-dir".into(), dir.display().to_string()],
            Where::Azurite(azurite, container) => vec![
                "--account-url".into(),
                azurite.account_url(),
                "--account-key".into(),
                AZURITE_KEY.into(),
                "--container".into(),
                container.to_string(),
            ],
        }
    }
}

/// The checker's `verify` against the manifest; its report.
fn verify(
    lake: &Where<'_>,
    manifest: &Manifest,
    mongo: &Mongod,
    dir: &Path,
    extra: &[String],
) -> String {
    let path = dir.join("manifest.jsonl");
    manifest.write(&path);
    let mut args = vec!["verify".to_string()];
    args.extend(lake.args());
    args.extend([
        "--manifest".into(),
        path.display().to_string(),
        "--mongo-uri".into(),
        mongo.uri(),
    ]);
    args.extend(extra.iter().cloned());
    let out = support::delta_checker(&args)
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout).into_owned();
    println!("{report}");
    assert!(
        out.status.success(),
        "the Delta checker found problems:\n{report}"
    );
    report
}

/// Runs `delta_checker.py watch` on a lake until `finish`.
struct Watcher {
    child: std::process::Child,
    stop: PathBuf,
    out: PathBuf,
}

impl Watcher {
    fn start(lake: &Where<'_>, dir: &Path) -> Self {
        let (stop, out) = (dir.join("watch.stop"), dir.join("watch.json"));
        let mut args = vec!["watch".to_string()];
        args.extend(lake.args());
        args.extend([
            "--stop-file".into(),
            stop.display().to_string(),
            "--out".into(),
            out.display().to_string(),
        ]);
        let child = support::delta_checker(&args).spawn_tracked();
        Self { child, stop, out }
    }

    fn finish(mut self) -> Vec<String> {
        std::fs::write(&self.stop, "").unwrap();
        assert!(self.child.wait().unwrap().success(), "watcher failed");
        vec!["--watch".into(), self.out.display().to_string()]
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        let _ = self.child.kill();
    }
}

/// An agent of the whole deployment (the load's transactions cross
/// databases) with `sinks` (TOML tables); local state under `dir`.
fn config(dir: &Path, mongo: &Mongod, api_port: u16, sinks: &str) -> PathBuf {
    PipelineConfig::mongo(&mongo.uri())
        .data_dir(&dir.join("data"))
        .global(&format!("api.address = \"127.0.0.1:{api_port}\""))
        .source("full_document = \"updateLookup\"")
        .sink(sinks)
        .write(&dir.join("agent.toml"))
}

/// A Delta sink table with quick commits and retries; `options` add
/// options or override those defaults.
fn delta_sink(id: &str, account_url: &str, filesystem: &str, options: &str) -> String {
    let defaults = [
        "commit.interval_secs = 0.5",
        "request.retry_initial_backoff_secs = 0.05",
        "request.retry_max_backoff_secs = 1",
    ];
    format!(
        r#"
[sinks.{id}]
type = "adls_delta"
inputs = ["mongo"]
account_url = "{account_url}"
filesystem = "{filesystem}"
create_filesystem = true
{}
"#,
        with_options(&defaults, options)
    )
}

/// Waits until the agent's stream is open: an open, idle stream saves a
/// checkpoint, so what is written afterwards is read.
async fn stream_open(dir: &Path) {
    let checkpoint = dir.join("data/mongo/checkpoint.json");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !checkpoint.exists() {
        assert!(
            Instant::now() < deadline,
            "the stream did not open in 60 s; the agent's log ends:\n{}",
            support::log_tail(&dir.join("agent.log"), 40)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Rows the Delta commits under `root` appended.
fn rows_committed(root: &Path) -> usize {
    walk(root)
        .iter()
        .filter(|p| support::is_delta_commit(&p.to_string_lossy()))
        .map(|p| {
            let text = std::fs::read_to_string(p).unwrap_or_default();
            support::delta_rows_appended(text.lines().filter_map(|l| serde_json::from_str(l).ok()))
        })
        .sum()
}

/// Rows the Delta commits in an Azurite filesystem appended.
async fn rows_committed_in(lake: &Lake) -> usize {
    let mut rows = 0;
    for o in lake.list().await {
        if support::is_delta_commit(&o.name) {
            rows += support::delta_rows_appended(lake.lines(&o.name).await);
        }
    }
    rows
}

fn walk(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out
}

async fn load(mongo: &Mongod, batches: usize, pause: Duration) -> Manifest {
    let manifest = Arc::new(Mutex::new(Manifest::default()));
    generate(
        mongo.client().await,
        &NAMESPACES,
        batches,
        pause,
        Arc::clone(&manifest),
    )
    .await;
    Arc::try_unwrap(manifest)
        .ok()
        .unwrap()
        .into_inner()
        .unwrap()
}

/// One table per collection on a `file://` lake (hourly partitions,
/// Snappy) and in Azurite (a SAS, defaults), fed by one source: every
/// change exactly once in each, read alike by the log replay and by
/// DuckDB, and the current-state view equal to MongoDB. `/health` and
/// `state show` name each table's version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tables_on_file_and_azurite_hold_every_change_once() {
    let mongo = Mongod::start().await;
    let azurite = Azurite::start();
    let dir = tempfile::tempdir().unwrap();
    let local = dir.path().join("lake");
    let sas = support::account_sas("racwdl");
    let sinks = format!(
        "{}{}",
        delta_sink(
            "local",
            &format!("file://{}", local.display()),
            "tables",
            "partition_by = \"hour\"\ncompression = \"snappy\"",
        ),
        delta_sink(
            "azure",
            &azurite.account_url(),
            "tables",
            &format!("auth.sas_token = \"{sas}\""),
        )
    );
    let port = free_port();
    let cfg = config(dir.path(), &mongo, port, &sinks);
    let agent = Agent::start_logged(&cfg, &dir.path().join("agent.log"));
    stream_open(dir.path()).await;
    let manifest = load(&mongo, 6, Duration::from_millis(200)).await;
    let expected = manifest.acknowledged();
    eventually(Duration::from_secs(60), async || {
        (rows_committed(&local) >= expected).then_some(())
    })
    .await;
    let response = support::http_get(port, "/health").unwrap();
    let body = response.split("\r\n\r\n").nth(1).unwrap_or_default();
    let health: serde_json::Value = serde_json::from_str(body).unwrap();
    let tables = &health["components"]["local"]["tables"];
    assert!(
        tables["delta_a/orders"]["version"].as_i64().is_some(),
        "{health}"
    );
    assert!(
        tables["delta_a/orders"]["txn_version"].as_i64() >= Some(1),
        "{health}"
    );
    assert_eq!(agent.stop(), Some(0));
    let shown = support::state_show(&cfg);
    assert!(shown.contains("table delta_b/orders: version "), "{shown}");

    verify(
        &Where::Dir(local.join("tables")),
        &manifest,
        &mongo,
        dir.path(),
        &[],
    );
    verify(
        &Where::Azurite(&azurite, "tables"),
        &manifest,
        &mongo,
        dir.path(),
        &[],
    );
    // Hourly partitions are Hive folders of the two columns.
    assert!(walk(&local).iter().any(|p| {
        let p = p.to_string_lossy();
        p.contains("/event_date=") && p.contains("/event_hour=") && p.ends_with(".snappy.parquet")
    }));
}

/// `kill -9` at random moments of a load into a `file://` lake: nothing
/// is lost or written twice, no object ever changes, and the commits of
/// killed runs are found done or completed by the next one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_loses_and_duplicates_nothing() {
    let mongo = Mongod::start().await;
    let dir = tempfile::tempdir().unwrap();
    let local = dir.path().join("lake");
    let sinks = delta_sink(
        "local",
        &format!("file://{}", local.display()),
        "tables",
        "data_files.target_bytes = 100000\ndata_files.row_group_bytes = 16384",
    );
    let cfg = config(dir.path(), &mongo, free_port(), &sinks);
    let log = dir.path().join("agent.log");
    let lake = Where::Dir(local.join("tables"));
    std::fs::create_dir_all(local.join("tables")).unwrap();
    let watcher = Watcher::start(&lake, dir.path());
    let mut agent = Agent::start_logged(&cfg, &log);
    stream_open(dir.path()).await;
    let loader = {
        let client = mongo.client().await;
        let manifest = Arc::new(Mutex::new(Manifest::default()));
        let task = tokio::spawn(generate(
            client,
            &NAMESPACES,
            30,
            Duration::from_millis(300),
            Arc::clone(&manifest),
        ));
        (task, manifest)
    };
    let mut kills = 0;
    while !loader.0.is_finished() || kills < 6 {
        let pause = rand::rng().random_range(700..2500);
        tokio::time::sleep(Duration::from_millis(pause)).await;
        agent.kill();
        kills += 1;
        agent = Agent::start_logged(&cfg, &log);
    }
    loader.0.await.unwrap();
    let manifest = Arc::try_unwrap(loader.1)
        .ok()
        .unwrap()
        .into_inner()
        .unwrap();
    let expected = manifest.acknowledged();
    eventually(Duration::from_secs(60), async || {
        (rows_committed(&local) >= expected).then_some(())
    })
    .await;
    // The last agent has its signal handlers (they come before its first
    // log line): SIGTERM stops it cleanly, not by the default action.
    eventually(Duration::from_secs(30), async || {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        (text.matches("Starting mongo-adls").count() > kills).then_some(())
    })
    .await;
    assert_eq!(agent.stop(), Some(0));
    let text = std::fs::read_to_string(&log).unwrap();
    println!("{kills} kills");
    verify(&lake, &manifest, &mongo, dir.path(), &watcher.finish());
    assert!(!text.contains("ERROR"), "{text}");
}

/// Many small commits: checkpoints every 3 versions, small files of a
/// partition rewritten (`dataChange = false`, the rows unchanged at every
/// version), and vacuum deleting only files the table removed longer ago
/// than the retention (3 s here) or that no commit references; log cleanup
/// deleting only log files before a checkpoint older than the log
/// retention (3.6 s here), so the log stays a contiguous run from a
/// checkpoint that the agent and DuckDB read the table from.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoints_compaction_and_vacuum_keep_every_row() {
    let mongo = Mongod::start().await;
    let dir = tempfile::tempdir().unwrap();
    let local = dir.path().join("lake");
    let sinks = delta_sink(
        "local",
        &format!("file://{}", local.display()),
        "tables",
        r#"commit.interval_secs = 0.3
commit.checkpoint_interval = 3
compaction.min_files = 3
vacuum.retention_hours = 0.000834
vacuum.interval_hours = 0.0005
vacuum.log_retention_hours = 0.001"#,
    );
    let cfg = config(dir.path(), &mongo, free_port(), &sinks);
    let lake = Where::Dir(local.join("tables"));
    std::fs::create_dir_all(local.join("tables")).unwrap();
    let watcher = Watcher::start(&lake, dir.path());
    let agent = Agent::start_logged(&cfg, &dir.path().join("agent.log"));
    stream_open(dir.path()).await;
    // Rows of every commit seen, also after log cleanup deleted it: read
    // every 100 ms from the start, while the load runs.
    let seen: Arc<Mutex<HashMap<PathBuf, usize>>> = Arc::default();
    let poller = tokio::spawn({
        let (seen, local) = (Arc::clone(&seen), local.clone());
        async move {
            loop {
                for p in walk(&local) {
                    if !support::is_delta_commit(&p.to_string_lossy())
                        || seen.lock().unwrap().contains_key(&p)
                    {
                        continue;
                    }
                    let text = std::fs::read_to_string(&p).unwrap_or_default();
                    let rows = support::delta_rows_appended(
                        text.lines().filter_map(|l| serde_json::from_str(l).ok()),
                    );
                    // A commit read while it is being written may show no
                    // rows yet: read again at the next poll.
                    if rows > 0 {
                        seen.lock().unwrap().insert(p, rows);
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    });
    let manifest = load(&mongo, 40, Duration::from_millis(400)).await;
    let expected = manifest.acknowledged();
    eventually(Duration::from_secs(60), async || {
        tokio::time::sleep(Duration::from_millis(200)).await;
        (seen.lock().unwrap().values().sum::<usize>() >= expected).then_some(())
    })
    .await;
    poller.abort();
    // Vacuum waits out the retention of the last files removed.
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(agent.stop(), Some(0));
    let mut extra = watcher.finish();
    extra.extend(["--retention-secs".into(), "3".into()]);
    let report = verify(&lake, &manifest, &mongo, dir.path(), &extra);
    let count = |what: &str| -> usize {
        report
            .split(", ")
            .filter_map(|part| part.strip_suffix(what))
            .filter_map(|n| n.rsplit(' ').next()?.parse::<usize>().ok())
            .sum()
    };
    assert!(count(" checkpoints") >= 3, "{report}");
    assert!(count(" compactions") >= 1, "{report}");
    assert!(count(" files vacuumed") >= 1, "{report}");
    // The log was cleaned up to a checkpoint, which every later upkeep
    // (and DuckDB) read the table from.
    assert!(count(" log files cleaned") >= 1, "{report}");
}

/// The state in the storage account, and an active that loses its term
/// at a step of the commit protocol (stopped at a test seam just after
/// recording its intent, or just after its commit landed): a standby takes
/// over and completes (or finds done) the recorded commit; the woken
/// agent's late commit finds it done, and it steps down. Nothing lost or
/// written twice; txn versions only rise.
async fn term_lost_at_a_seam(seam: &str) {
    let mongo = Mongod::start().await;
    let azurite = Azurite::start();
    let dir = tempfile::tempdir().unwrap();
    let url = azurite.account_url();
    let ports = [free_port(), free_port()];
    let config = |i: usize| {
        PipelineConfig::mongo(&mongo.uri())
            .global(&format!("api.address = \"127.0.0.1:{}\"", ports[i]))
            .azure_state(&url, "orders", 15)
            .source("full_document = \"updateLookup\"")
            .sink(&format!(
                "{}\nauth.shared_key = \"{AZURITE_KEY}\"\nrequest.retry_attempts = 1000",
                delta_sink("lake", &url, "tables", "")
            ))
            .write(&dir.path().join(format!("agent{i}.toml")))
    };
    let logs = [dir.path().join("agent0.log"), dir.path().join("agent1.log")];
    let first = Agent::start_logged_env(&config(0), &logs[0], &[("MONGO_ADLS_TEST_SEAM", seam)]);
    let log_text = |i: usize| std::fs::read_to_string(&logs[i]).unwrap_or_default();
    let state = Lake::new(&azurite, "state");
    eventually(Duration::from_secs(60), async || {
        state
            .list()
            .await
            .iter()
            .any(|o| o.name == "orders/mongo/checkpoint.json")
            .then_some(())
    })
    .await;
    let loader = {
        let manifest = Arc::new(Mutex::new(Manifest::default()));
        let task = tokio::spawn(generate(
            mongo.client().await,
            &NAMESPACES,
            20,
            Duration::from_millis(400),
            Arc::clone(&manifest),
        ));
        (task, manifest)
    };
    let reached = format!("Test seam {seam} reached");
    eventually(Duration::from_secs(60), async || {
        log_text(0).contains(&reached).then_some(())
    })
    .await;
    unsafe { libc::kill(first.pid() as i32, libc::SIGSTOP) };
    let stopped_at = Instant::now();
    let second = Agent::start_logged(&config(1), &logs[1]);
    eventually(Duration::from_secs(60), async || {
        log_text(1)
            .contains("Took over the pipeline's state")
            .then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    unsafe { libc::kill(first.pid() as i32, libc::SIGCONT) };
    eventually(Duration::from_secs(40), async || {
        log_text(0).contains("Stepped down").then_some(())
    })
    .await;
    loader.0.await.unwrap();
    let manifest = Arc::try_unwrap(loader.1)
        .ok()
        .unwrap()
        .into_inner()
        .unwrap();
    let lake = Where::Azurite(&azurite, "tables");
    let tables = Lake::new(&azurite, "tables");
    let expected = manifest.acknowledged();
    eventually(Duration::from_secs(90), async || {
        (rows_committed_in(&tables).await >= expected).then_some(())
    })
    .await;
    println!(
        "{seam}: the first agent was stopped for {:.0} s",
        stopped_at.elapsed().as_secs_f64()
    );
    for agent in [first, second] {
        assert_eq!(agent.stop(), Some(0));
    }
    verify(&lake, &manifest, &mongo, dir.path(), &[]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_term_lost_between_intent_and_commit_or_after_it_changes_nothing() {
    term_lost_at_a_seam("before_commit").await;
    term_lost_at_a_seam("after_commit").await;
}

/// A table another writer created with other partition columns is not
/// written: its events are refused (the checkpoint holds) and `/health`
/// says why, while the other tables go on. A sink whose state is lost
/// while the lake holds its tables refuses to start, naming a table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incompatible_tables_and_lost_state_are_refused() {
    let mongo = Mongod::start().await;
    let dir = tempfile::tempdir().unwrap();
    let local = dir.path().join("lake");
    // delta_a/users exists, unpartitioned.
    let log = local.join("tables/delta_a/users/_delta_log");
    std::fs::create_dir_all(&log).unwrap();
    std::fs::write(
        log.join("00000000000000000000.json"),
        concat!(
            r#"{"protocol":{"minReaderVersion":1,"minWriterVersion":2}}"#,
            "\n",
            r#"{"metaData":{"id":"x","format":{"provider":"parquet","options":{}},"schemaString":"{\"type\":\"struct\",\"fields\":[]}","partitionColumns":[],"configuration":{}}}"#,
            "\n"
        ),
    )
    .unwrap();
    let sinks = delta_sink(
        "local",
        &format!("file://{}", local.display()),
        "tables",
        "",
    );
    let port = free_port();
    let cfg = config(dir.path(), &mongo, port, &sinks);
    let agent_log = dir.path().join("agent.log");
    let agent = Agent::start_logged(&cfg, &agent_log);
    stream_open(dir.path()).await;
    load(&mongo, 2, Duration::from_millis(100)).await;
    let health = eventually(Duration::from_secs(30), async || {
        let body = support::http_get(port, "/health")?;
        body.contains("unhealthy").then_some(body)
    })
    .await;
    assert!(health.contains("delta_a/users"), "{health}");
    assert!(
        health.contains("has no column `operation_type`"),
        "{health}"
    );
    assert!(local.join("tables/delta_a/orders/_delta_log").exists());
    agent.stop();
    assert!(!log.join("00000000000000000001.json").exists());

    std::fs::remove_dir_all(dir.path().join("data/local")).unwrap();
    let mut agent = Agent::start_logged(&cfg, &agent_log);
    assert_eq!(agent.exit_within(Duration::from_secs(30)), Some(78));
    let text = std::fs::read_to_string(&agent_log).unwrap();
    assert!(
        text.contains("_delta_log") || text.contains("delta_a/"),
        "{text}"
    );
}
