//! The chaos run: a load generator makes about 100,000 identifiable changes
//! (inserts, updates, replaces, deletes, transactions) over 4 namespaces
//! while the agent is killed with SIGKILL at least 10 times, Azurite (on
//! disk) and mongod are each restarted twice, once while the agent runs
//! under load and once while it is dead, and a proxy injects 503, 429,
//! resets, lost responses, stalls, and writes applied while the client
//! times out (before or after its timeout). The on_seal run first copies
//! documents that exist before the start (`snapshot = "initial"`) and
//! kills the agent during the copy. An independent Python checker
//! (`e2e/checker.py`: pymongo + azure-storage-blob) watches the listings
//! during the run and verifies the lake against the generator's manifest
//! (each snapshot `_id` exactly once, like each change) and MongoDB's
//! final state. The Delta runs write `adls_delta` tables instead, checked
//! by `e2e/delta_checker.py` (its own log replay with pyarrow, and
//! DuckDB's delta extension).
//!
//! `MONGO_ADLS_CHAOS_BATCHES` overrides the number of load rounds (a short
//! run to see a deliberate break caught quickly).

mod support;

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use rand::Rng;
use support::{
    load::{generate, preload, Manifest},
    log_tail, Agent, Azurite, Fault, FaultProxy, Faults, Lake, Mongod, PipelineConfig,
    SpawnTracked, TestDir, AZURITE_KEY,
};

const NAMESPACES: [(&str, &str); 4] = [
    ("chaos_a", "orders"),
    ("chaos_a", "users"),
    ("chaos_b", "orders"),
    ("chaos_b", "users"),
];

/// What a chaos run writes, and how it is checked.
#[derive(Clone, Copy)]
enum Sink {
    /// `adls_partitioned_jsonl` with these options; its sealed files never
    /// change (`immutable`) or grow; every name matches `names`.
    Jsonl {
        options: &'static str,
        immutable: bool,
        names: &'static str,
    },
    /// `adls_delta`, with short intervals so a run makes hundreds of
    /// versions, checkpoints, compactions and vacuums.
    Delta,
}

/// The Delta runs' vacuum retention (`vacuum.retention_hours`), in seconds.
const DELTA_RETENTION_SECS: f64 = 18.0;

impl Sink {
    fn describe(&self) -> String {
        match self {
            Sink::Jsonl { options, .. } => options.replace('\n', " "),
            Sink::Delta => "adls_delta".into(),
        }
    }

    /// The sink table; retries without end, so only kills lose progress.
    fn config(&self, url: &str) -> String {
        let options = match self {
            // Short windows and size rolls: a run makes many files.
            Sink::Jsonl { options, .. } => format!(
                r#"type = "adls_partitioned_jsonl"
file_name = "events-%Y%m%d-%H%M%S"
roll.window_secs = 4
roll.grace_secs = 1
roll.max_bytes = 400000
batch.timeout_secs = 0.3
{options}"#
            ),
            Sink::Delta => format!(
                r#"type = "adls_delta"
partition_by = "hour"
commit.interval_secs = 1
commit.checkpoint_interval = 5
data_files.target_bytes = 400000
data_files.row_group_bytes = 65536
compaction.min_files = 4
vacuum.retention_hours = {retention}
vacuum.interval_hours = 0.01"#,
                retention = DELTA_RETENTION_SECS / 3600.0
            ),
        };
        format!(
            r#"
[sinks.lake]
inputs = ["mongo"]
account_url = "{url}"
filesystem = "chaos"
auth.shared_key = "{AZURITE_KEY}"
request.timeout_secs = 4
request.retry_attempts = 1000
request.retry_initial_backoff_secs = 0.05
request.retry_max_backoff_secs = 1
{options}
"#
        )
    }

    /// Source options the sink needs: Delta's current-state view reads
    /// each update's whole document.
    fn source_options(&self) -> &'static str {
        match self {
            Sink::Jsonl { .. } => "",
            Sink::Delta => "full_document = \"updateLookup\"",
        }
    }

    fn checker(&self, args: &[&str]) -> Command {
        let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
        let services = std::env::var("MONGO_ADLS_SERVICES_DIR")
            .unwrap_or_else(|_| repo.join(".services").display().to_string());
        let (script, var, lib) = match self {
            Sink::Jsonl { .. } => ("checker.py", "MONGO_ADLS_PYTHONPATH", "pylib"),
            Sink::Delta => ("delta_checker.py", "MONGO_ADLS_DELTA_PYTHONPATH", "pydelta"),
        };
        let pythonpath = std::env::var(var).unwrap_or_else(|_| format!("{services}/{lib}"));
        let mut cmd = Command::new("python3");
        cmd.arg(repo.join("e2e").join(script))
            .args(args)
            .env("PYTHONPATH", pythonpath);
        cmd
    }

    /// How the checker reaches the lake.
    fn lake_args(&self, azurite: &Azurite) -> Vec<String> {
        let mut args = vec![
            "--account-url".into(),
            azurite.account_url(),
            "--account-key".into(),
            AZURITE_KEY.into(),
            "--container".into(),
            "chaos".into(),
        ];
        if let Sink::Jsonl { names, .. } = self {
            args.extend(["--pattern".into(), names.to_string()]);
        }
        args
    }

    fn watch_args(&self) -> Vec<String> {
        match self {
            Sink::Jsonl {
                immutable: true, ..
            } => vec!["--immutable".into()],
            _ => Vec::new(),
        }
    }

    fn verify_args(&self) -> Vec<String> {
        match self {
            // Matches `roll.window_secs` above: each line's file is the
            // one of its 4-second window.
            Sink::Jsonl { immutable, .. } => {
                let mut args = vec!["--window-secs".into(), "4".into()];
                if *immutable {
                    args.push("--immutable".into());
                }
                args
            }
            Sink::Delta => vec!["--retention-secs".into(), DELTA_RETENTION_SECS.to_string()],
        }
    }

    /// Rows the lake holds: lines of JSONL files, or rows appended by the
    /// Delta commits (each commit's `numOutputRows`).
    async fn rows(&self, lake: &Lake, listed: &[(String, u64)]) -> usize {
        let mut rows = 0;
        for (name, _) in listed {
            match self {
                Sink::Jsonl { .. } => rows += lake.lines(name).await.len(),
                Sink::Delta if support::is_delta_commit(name) => {
                    rows += support::delta_rows_appended(lake.lines(name).await);
                }
                Sink::Delta => {}
            }
        }
        rows
    }

    /// The pause between load rounds: Delta tables commit once a second, so
    /// a slower load spans more versions (and checkpoints, compactions and
    /// vacuums) between the kills.
    fn pause(&self) -> Duration {
        match self {
            Sink::Jsonl { .. } => Duration::from_millis(100),
            Sink::Delta => Duration::from_millis(800),
        }
    }

    /// Whether some events are durable and acknowledged (a sealed file, or
    /// a committed table version).
    async fn acknowledged_some(&self, lake: &Lake) -> bool {
        let listed = lake.list().await;
        match self {
            Sink::Jsonl { .. } => !listed.is_empty(),
            Sink::Delta => listed.iter().any(|o| o.name.contains("/_delta_log/")),
        }
    }
}

struct Watcher {
    child: Child,
    stop: PathBuf,
    out: PathBuf,
}

impl Watcher {
    fn start(sink: Sink, dir: &Path, lake_args: &[String]) -> Self {
        let (stop, out) = (dir.join("watch.stop"), dir.join("watch.json"));
        let mut args: Vec<String> = vec!["watch".into()];
        args.extend(lake_args.iter().cloned());
        args.extend([
            "--stop-file".into(),
            stop.display().to_string(),
            "--out".into(),
            out.display().to_string(),
        ]);
        args.extend(sink.watch_args());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let child = sink.checker(&args).spawn_tracked();
        Self { child, stop, out }
    }

    fn finish(mut self) -> PathBuf {
        std::fs::write(&self.stop, "").unwrap();
        let status = self.child.wait().unwrap();
        assert!(status.success(), "watcher failed");
        self.out.clone()
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        let _ = self.child.kill();
    }
}

/// Blob names and sizes, to tell when the lake has stopped changing.
async fn listing(lake: &Lake) -> Vec<(String, u64)> {
    lake.list()
        .await
        .into_iter()
        .map(|o| (o.name, o.size))
        .collect()
}

/// One chaos run at a time: each needs most of a 2-core machine.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// How many times the agents' log (all of them, appended) holds `text`.
fn log_count(log: &Path, text: &str) -> usize {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .matches(text)
        .count()
}

async fn wait_log(log: &Path, text: &str, count: usize, agent: &mut Agent) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while log_count(log, text) < count {
        assert!(
            agent.running(),
            "the agent exited while waiting for {text:?}"
        );
        assert!(Instant::now() < deadline, "no {count}x {text:?} in the log");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `snapshot_docs`: documents per namespace copied by `snapshot =
/// "initial"` before the load starts (0: no snapshot).
async fn chaos_run(sink: Sink, batches: usize, snapshot_docs: usize) {
    let batches = std::env::var("MONGO_ADLS_CHAOS_BATCHES")
        .map(|b| b.parse().unwrap())
        .unwrap_or(batches);
    let _serial = ONE_AT_A_TIME.lock().await;
    let mut mongo = Mongod::start().await;
    let mut azurite = Azurite::start_on_disk();
    let lake = Lake::new(&azurite, "chaos");
    lake.create().await;
    let proxy = fault_proxy(&azurite).await;
    let dir = TestDir::new();
    let cfg = dir.path().join("chaos.toml");
    // A short server selection, so the driver's own resume gives up during
    // the live mongod restart and the source's retry path (pause, reopen
    // from the last emitted event) rides it out. Not asserted here: a
    // source held back by a slow sink has no getMore pending then and
    // reconnects later through the driver alone; `mongodb_source.rs`
    // (`restarts_replay_only_unacknowledged_events`) checks the path on an
    // idle stream.
    let mongo_uri = format!("{}&serverSelectionTimeoutMS=500", mongo.uri());
    let snapshot = if snapshot_docs > 0 {
        "snapshot = \"initial\"\nsnapshot_chunk_size = 500"
    } else {
        ""
    };
    PipelineConfig::mongo(&mongo_uri)
        .data_dir(&dir.path().join("data"))
        .global("healthchecks.enabled = false")
        .source(&format!(
            "checkpoint_interval_ms = 200\n{}\n{snapshot}",
            sink.source_options()
        ))
        .sink(&sink.config(&proxy.account_url()))
        .write(&cfg);
    let lake_args = sink.lake_args(&azurite);
    let watcher = Watcher::start(sink, dir.path(), &lake_args);
    let log = dir.path().join("agent.log");

    let manifest = Arc::new(Mutex::new(Manifest::default()));
    let mut kills = 0;
    if snapshot_docs > 0 {
        preload(&mongo.client().await, &NAMESPACES, snapshot_docs, &manifest).await;
    }
    let mut agent = Agent::start_logged_with(&cfg, &log, &["-vv"]);
    if snapshot_docs > 0 {
        // kill -9 during the copy: once the second collection starts (the
        // first one's records are in flight), then again once a snapshot
        // file is sealed (`roll.max_bytes` seals files mid-copy). The load
        // starts after the copy, so every snapshot record is a preloaded
        // document.
        const NEXT: &str = "Snapshot: copying collection ";
        for kill in 0..2 {
            if kill == 0 {
                wait_log(&log, NEXT, 2, &mut agent).await;
            } else {
                // Once some records are sealed (acknowledged): the restarted
                // copy must continue after them, not write them again.
                let deadline = Instant::now() + Duration::from_secs(120);
                while !sink.acknowledged_some(&lake).await {
                    assert!(Instant::now() < deadline, "no snapshot record acknowledged");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            assert_eq!(
                log_count(&log, "Snapshot complete."),
                0,
                "the kill lands during the copy"
            );
            agent.kill();
            kills += 1;
            agent = Agent::start_logged_with(&cfg, &log, &["-vv"]);
        }
        wait_log(&log, "Snapshot complete.", 1, &mut agent).await;
    } else {
        // Changes made before the stream opens are not in it.
        wait_log(&log, "Change stream open.", 1, &mut agent).await;
    }
    let started = Instant::now();
    let generator = tokio::spawn(generate(
        mongo.client().await,
        &NAMESPACES,
        batches,
        sink.pause(),
        Arc::clone(&manifest),
    ));

    // Disruptions while the load runs: kill -9 at random moments (at least
    // 10 times); Azurite and mongod restarted while the agent runs (in the
    // second and the fifth round, before its kill: the agent must ride out
    // the outage and reconnect) and while it is dead (after the third and
    // the sixth kill).
    // (Counted from the load's start: the snapshot's kills come before.)
    let mut live_restarts = 0;
    let mut round = 0;
    while !generator.is_finished() || round < 10 {
        round += 1;
        let pause = rand::rng().random_range(1500..3500);
        tokio::time::sleep(Duration::from_millis(pause)).await;
        if matches!(round, 2 | 5) {
            if round == 2 {
                azurite.restart();
            } else {
                // Once this agent's stream is open, so the restart breaks
                // it (a restart while the agent is still starting would
                // test nothing of the reconnect).
                let deadline = Instant::now() + Duration::from_secs(60);
                loop {
                    let text = std::fs::read_to_string(&log).unwrap_or_default();
                    let this_agent = text.rsplit("Starting mongo-adls").next().unwrap_or("");
                    if this_agent.contains("Change stream open.") {
                        break;
                    }
                    assert!(agent.running(), "the agent exited before its stream opened");
                    assert!(
                        Instant::now() < deadline,
                        "the stream did not open within 60 s"
                    );
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                mongo.restart().await;
            }
            live_restarts += 1;
            tokio::time::sleep(Duration::from_millis(pause)).await;
            assert!(
                agent.running(),
                "the agent exited after a live restart; its log ends:\n{}",
                log_tail(&log, 60)
            );
        }
        agent.kill();
        kills += 1;
        match round {
            3 => azurite.restart(),
            6 => mongo.restart().await,
            _ => {}
        }
        agent = Agent::start_logged_with(&cfg, &log, &["-vv"]);
    }
    generator.await.unwrap();
    assert_eq!(live_restarts, 2, "Azurite and mongod restarted under load");
    let load_secs = started.elapsed().as_secs_f64();

    catch_up(
        sink,
        &lake,
        Saved::Local(dir.path()),
        &mongo,
        &manifest,
        &[&log],
    )
    .await;
    assert_eq!(agent.stop(), Some(0));
    assert_no_secret_in_log(&log);
    let run = Run {
        sink,
        kills,
        live_restarts,
        load_secs,
    };
    verify(
        &run,
        dir.path(),
        lake_args,
        watcher,
        &manifest,
        &mongo,
        &proxy,
    );
}

/// The proxy of every chaos run: every 9th request gets one of the faults.
async fn fault_proxy(azurite: &Azurite) -> FaultProxy {
    FaultProxy::start(
        azurite.port,
        Faults {
            every: 9,
            kinds: vec![
                Fault::Unavailable,
                Fault::Throttled,
                Fault::Reset,
                Fault::LoseResponse,
                Fault::Stall,
                Fault::ApplyThenStall,
                Fault::StallThenApply,
            ],
            only: None,
        },
    )
    .await
}

/// Where a run's source checkpoint is saved.
enum Saved<'a> {
    /// The agent's data directory.
    Local(&'a Path),
    /// The `[state]` container (`chaos/mongo/checkpoint.json`).
    State(&'a Lake),
}

impl Saved<'_> {
    /// The saved checkpoint's cluster time (seconds, increment).
    async fn cluster_time(&self) -> Option<(u32, u32)> {
        let bytes = match self {
            Saved::Local(dir) => std::fs::read(dir.join("data/mongo/checkpoint.json")).ok()?,
            Saved::State(lake) => lake.read("chaos/mongo/checkpoint.json").await,
        };
        let saved: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
        // A resume token's `_data` starts with its cluster time in hex.
        let token = saved["resume_token"].as_str()?;
        let hex = |range| u32::from_str_radix(token.get(range)?, 16).ok();
        Some((hex(2..10)?, hex(10..18)?))
    }
}

/// Waits (5 minutes, or up to 15 while the checkpoint moves) until the
/// pipeline acknowledged every change and the lake shows them: the saved
/// checkpoint passed MongoDB's last
/// write (an active agent saves it only once the sink made everything
/// before it durable), then the lake stopped changing for 6 s (JSON Lines
/// files become visible when sealed, a few seconds after) and holds at
/// least as many rows as acknowledged changes. The row count alone is not
/// enough: a snapshot's records of documents the load inserted add rows,
/// and a takeover outlasts 6 s of quiet, so a table could still wait for
/// its last commit.
async fn catch_up(
    sink: Sink,
    lake: &Lake,
    saved: Saved<'_>,
    mongo: &Mongod,
    manifest: &Mutex<Manifest>,
    logs: &[&Path],
) {
    let acknowledged = manifest.lock().unwrap().acknowledged();
    let hello = mongo
        .client()
        .await
        .database("admin")
        .run_command(mongodb::bson::doc! { "hello": 1 })
        .await
        .unwrap();
    let last_write = hello
        .get_document("lastWrite")
        .and_then(|w| w.get_document("opTime"))
        .and_then(|o| o.get_timestamp("ts"))
        .unwrap();
    let last_write = (last_write.time, last_write.increment);
    // Five minutes, extended while the checkpoint keeps moving (to 15 at
    // most): through the proxy's faults and the takeovers, a slow machine
    // catches up slowly (seen in CI: 13 s of changes left after 300 s,
    // moving all along), which is not a pipeline that stopped.
    let started = Instant::now();
    let mut deadline = started + Duration::from_secs(300);
    let mut progress = saved.cluster_time().await;
    let mut last = (listing(lake).await, Instant::now());
    loop {
        let at = saved.cluster_time().await;
        if at > progress {
            progress = at;
            deadline = deadline
                .max(Instant::now() + Duration::from_secs(120))
                .min(started + Duration::from_secs(900));
        }
        if Instant::now() > deadline {
            let tails: Vec<String> = logs.iter().map(|l| log_tail(l, 60)).collect();
            panic!(
                "the pipeline did not catch up: the checkpoint is at {at:?}, MongoDB's last write at {last_write:?}, {} objects listed, {acknowledged} changes acknowledged; agent logs end:\n{}",
                last.0.len(),
                tails.join("\n-----\n")
            );
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = listing(lake).await;
        if now != last.0 || at.is_none_or(|at| at < last_write) {
            last = (now, Instant::now());
        } else if last.1.elapsed() > Duration::from_secs(6) {
            if sink.rows(lake, &last.0).await >= acknowledged {
                return;
            }
            last.1 = Instant::now();
        }
    }
}

/// How often each agent stepped down or logged an error, and its distinct
/// ERROR lines (timestamps cut), for the run's report.
fn log_summary(logs: &[&Path]) -> String {
    let mut out = String::new();
    for (i, log) in logs.iter().enumerate() {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let stepped_down = text.matches("Stepped down").count();
        let mut errors: Vec<&str> = text
            .lines()
            .filter(|l| l.contains("ERROR"))
            .map(|l| l.split_once("ERROR").map_or(l, |(_, rest)| rest))
            .collect();
        errors.sort_unstable();
        errors.dedup();
        out.push_str(&format!(
            "agent {i}: stepped down {stepped_down} time(s), {} distinct ERROR line(s)\n",
            errors.len()
        ));
        for e in errors.iter().take(10) {
            out.push_str(&format!("  ERROR{}\n", &e[..e.len().min(300)]));
        }
    }
    out
}

/// What a chaos run did, for its report.
struct Run {
    sink: Sink,
    kills: usize,
    live_restarts: usize,
    load_secs: f64,
}

/// The independent checker's verdict on the lake against the manifest,
/// the watcher's listings and MongoDB; and every fault kind injected.
fn verify(
    run: &Run,
    dir: &Path,
    lake_args: Vec<String>,
    watcher: Watcher,
    manifest: &Mutex<Manifest>,
    mongo: &Mongod,
    proxy: &FaultProxy,
) {
    let watch_out = watcher.finish();
    let manifest_path = dir.join("manifest.jsonl");
    manifest.lock().unwrap().write(&manifest_path);
    let total = manifest.lock().unwrap().changes.len();
    let mut args: Vec<String> = vec!["verify".into()];
    args.extend(lake_args);
    args.extend([
        "--manifest".into(),
        manifest_path.display().to_string(),
        "--watch".into(),
        watch_out.display().to_string(),
        "--mongo-uri".into(),
        mongo.uri(),
    ]);
    args.extend(run.sink.verify_args());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = run
        .sink
        .checker(&args)
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    println!(
        "chaos [{}]: {total} changes in {:.0} s, {} kills, {} live restarts, faults {:?}\n{report}",
        run.sink.describe(),
        run.load_secs,
        run.kills,
        run.live_restarts,
        proxy.stats.lock().unwrap()
    );
    assert!(out.status.success(), "checker found problems:\n{report}");
    let stats = proxy.stats.lock().unwrap().clone();
    for fault in [
        "503",
        "429",
        "reset",
        "lost_response",
        "stall",
        "applied_then_stall",
        "stall_then_applied",
    ] {
        assert!(
            stats.get(fault).copied().unwrap_or(0) > 0,
            "fault {fault} was injected: {stats:?}"
        );
    }
}

/// Every agent of the run logs at `-vv` (trace) through kills, restarts
/// and storage faults; none of it may show the account key, in any
/// encoding, or a request's signature.
fn assert_no_secret_in_log(log: &Path) {
    let text = std::fs::read_to_string(log).unwrap();
    assert!(
        text.contains("TRACE"),
        "the agents logged at -vv ({} bytes)",
        text.len()
    );
    let encoded: String = url::form_urlencoded::byte_serialize(AZURITE_KEY.as_bytes()).collect();
    for secret in [
        AZURITE_KEY,
        &encoded,
        &AZURITE_KEY[..20],
        "SharedKey devstoreaccount1:",
    ] {
        if let Some(at) = text.find(secret) {
            let line = text[..at].rsplit('\n').next().unwrap_or_default();
            panic!("the agent log shows a secret ({secret}) in: {line}...");
        }
    }
}

/// The checker's own proof that it can fail: `e2e/checker_selftest.py`
/// builds small lakes, clean or broken in one way each (a sealed blob that
/// vanishes, is replaced by a `-part` file or rewritten; a name outside the
/// pattern; a blob the watcher's last listing missed; a growing file whose
/// earlier bytes change; a line in another namespace's, hour's or window's
/// file), and checks that `watch` + `verify` pass the clean ones and report
/// each break. Seconds, so every suite run proves the checks still bite.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checker_catches_broken_lakes() {
    let (mongo, azurite) = (Mongod::start().await, Azurite::start());
    let jsonl = Sink::Jsonl {
        options: "",
        immutable: true,
        names: ROLLING_NAMES,
    };
    let cmd = jsonl.checker(&[]);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("e2e/checker_selftest.py");
    let out = Command::new("python3")
        .arg(script)
        .args(["--account-url", &azurite.account_url()])
        .args(["--account-key", AZURITE_KEY])
        .args(["--mongo-uri", &mongo.uri()])
        .envs(
            cmd.get_envs()
                .filter_map(|(k, v)| Some((k.to_owned(), v?.to_owned()))),
        )
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    println!("{report}");
    assert!(out.status.success(), "checker self-test failed:\n{report}");
    assert!(report.contains(" cases, 0 failed"), "{report}");
}

const ROLLING_NAMES: &str = r"[^/]+/[^/]+/year=\d{4}/month=\d\d/day=\d\d/hour=\d\d/events-\d{8}-\d{6}(-part-\d{4})?\.jsonl(\.gz)?";

const ON_SEAL: Sink = Sink::Jsonl {
    options: "commit = \"on_seal\"",
    immutable: true,
    names: ROLLING_NAMES,
};

const EVERY_BATCH: Sink = Sink::Jsonl {
    options: "commit = \"every_batch\"",
    immutable: false,
    names: ROLLING_NAMES,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "long chaos run (minutes): e2e/test.sh runs it, or cargo test --release --test chaos -- --include-ignored"]
async fn chaos_on_seal_100k() {
    chaos_run(ON_SEAL, 105, 6000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "long chaos run (minutes): e2e/test.sh runs it, or cargo test --release --test chaos -- --include-ignored"]
async fn chaos_every_batch_100k() {
    let gzip = Sink::Jsonl {
        options: "commit = \"every_batch\"\ncompression = \"gzip\"",
        immutable: false,
        names: ROLLING_NAMES,
    };
    chaos_run(gzip, 105, 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "long chaos run (minutes): e2e/test.sh runs it, or cargo test --release --test chaos -- --include-ignored"]
async fn chaos_per_event_3k() {
    // One request per event: a smaller load keeps the run to minutes.
    let per_event = Sink::Jsonl {
        options: "mode = \"per_event\"",
        immutable: true,
        names: r"[^/]+/[^/]+/year=\d{4}/month=\d\d/day=\d\d/hour=\d\d/event-[^/]+\.jsonl",
    };
    chaos_run(per_event, 3, 0).await;
}

/// Delta tables through the same disruptions, with a snapshot copied
/// first (two kill -9 during the copy): hundreds of versions, checkpoints,
/// compactions and vacuums.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "long chaos run (minutes): e2e/test.sh runs it, or cargo test --release --test chaos -- --include-ignored"]
async fn chaos_delta_60k() {
    chaos_run(Sink::Delta, 64, 3000).await;
}

/// Node loss: two agents of one pipeline keep every bit of state in the
/// storage account (`[state] store = "azure_blob"`, no `data_dir`, state
/// requests through the fault proxy too). About 60,000 changes while the
/// active agent is killed with SIGKILL at least 10 times, each time
/// replaced by a fresh process (a new machine: nothing survives locally),
/// the standby taking over from the state in the lake; Azurite restarts
/// once under load. The same checker as the other chaos runs.
///
/// `snapshot_docs` > 0: that many documents per namespace exist before the
/// start and are copied by `snapshot = "incremental"` beside the load, and
/// the first kill lands while a copy round is saved in the state, so the
/// standby takes over in the middle of the copy (each snapshot `_id`
/// exactly once, checked like each change).
async fn node_loss_run(sink: Sink, batches: usize, snapshot_docs: usize) {
    let batches = std::env::var("MONGO_ADLS_CHAOS_BATCHES")
        .map(|b| b.parse().unwrap())
        .unwrap_or(batches);
    let _serial = ONE_AT_A_TIME.lock().await;
    let mongo = Mongod::start().await;
    let mut azurite = Azurite::start_on_disk();
    let lake = Lake::new(&azurite, "chaos");
    lake.create().await;
    let proxy = fault_proxy(&azurite).await;
    let dir = TestDir::new();
    let mongo_uri = format!("{}&serverSelectionTimeoutMS=500", mongo.uri());
    let ports = [support::free_port(), support::free_port()];
    let configs: Vec<PathBuf> = ports
        .iter()
        .enumerate()
        .map(|(i, port)| {
            PipelineConfig::mongo(&mongo_uri)
                .global("healthchecks.enabled = false")
                .global(&format!("api.address = \"127.0.0.1:{port}\""))
                .azure_state(&proxy.account_url(), "chaos", 15)
                .source(&format!(
                    "checkpoint_interval_ms = 200\n{}\n{}",
                    sink.source_options(),
                    if snapshot_docs > 0 {
                        "snapshot = \"incremental\"\nsnapshot_chunk_size = 500"
                    } else {
                        ""
                    }
                ))
                .sink(&sink.config(&proxy.account_url()))
                .write(&dir.path().join(format!("agent{i}.toml")))
        })
        .collect();
    let logs: Vec<PathBuf> = (0..2)
        .map(|i| dir.path().join(format!("agent{i}.log")))
        .collect();
    let log_refs: Vec<&Path> = logs.iter().map(PathBuf::as_path).collect();
    let lake_args = sink.lake_args(&azurite);
    let watcher = Watcher::start(sink, dir.path(), &lake_args);
    let manifest = Arc::new(Mutex::new(Manifest::default()));
    if snapshot_docs > 0 {
        preload(&mongo.client().await, &NAMESPACES, snapshot_docs, &manifest).await;
    }
    let mut agents: Vec<Agent> = (0..2)
        .map(|i| Agent::start_logged(&configs[i], &logs[i]))
        .collect();
    support::one_active(&ports, &log_refs, Duration::from_secs(90)).await;
    // The active's stream is open once its idle stream saved a checkpoint
    // (the role turns active before the state is taken over and the
    // stream opened); changes made before that are not in the stream.
    let state = Lake::new(&azurite, "state");
    let deadline = Instant::now() + Duration::from_secs(120);
    while !state
        .list()
        .await
        .iter()
        .any(|o| o.name == "chaos/mongo/checkpoint.json")
    {
        assert!(Instant::now() < deadline, "no checkpoint saved in 120 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let (mut kills, mut live_restarts) = (0, 0);
    let (mut killed_at, mut failovers) = (None::<Instant>, Vec::new());
    if snapshot_docs > 0 {
        // A takeover in the middle of the copy: kill -9 the active once a
        // copy round is saved in the state.
        let active = support::one_active(&ports, &log_refs, Duration::from_secs(90)).await;
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let saved = state.read("chaos/mongo/checkpoint.json").await;
            let round_open = serde_json::from_slice::<serde_json::Value>(&saved)
                .ok()
                .and_then(|c| c["incremental"]["rounds"].as_array().map(|r| !r.is_empty()))
                .unwrap_or(false);
            if round_open {
                break;
            }
            assert!(Instant::now() < deadline, "no copy round saved in 120 s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        agents[active].kill();
        kills += 1;
        killed_at = Some(Instant::now());
        agents[active] = Agent::start_logged(&configs[active], &logs[active]);
    }
    let started = Instant::now();
    // Paced so the load spans the kills (each failover waits out a lease).
    let generator = tokio::spawn(generate(
        mongo.client().await,
        &NAMESPACES,
        batches,
        Duration::from_secs(2),
        Arc::clone(&manifest),
    ));
    while !generator.is_finished() || kills < 10 {
        let active = support::one_active(&ports, &log_refs, Duration::from_secs(90)).await;
        if let Some(at) = killed_at.take() {
            failovers.push(format!("{:.1}", at.elapsed().as_secs_f64()));
        }
        let pause = rand::rng().random_range(1500..3500);
        tokio::time::sleep(Duration::from_millis(pause)).await;
        if kills == 3 {
            azurite.restart();
            live_restarts += 1;
            tokio::time::sleep(Duration::from_millis(pause)).await;
        }
        for (i, agent) in agents.iter_mut().enumerate() {
            assert!(
                agent.running(),
                "agent {i} exited; its log ends:\n{}",
                log_tail(&logs[i], 60)
            );
        }
        agents[active].kill();
        kills += 1;
        killed_at = Some(Instant::now());
        agents[active] = Agent::start_logged(&configs[active], &logs[active]);
    }
    generator.await.unwrap();
    let load_secs = started.elapsed().as_secs_f64();
    catch_up(
        sink,
        &lake,
        Saved::State(&state),
        &mongo,
        &manifest,
        &log_refs,
    )
    .await;
    for (i, agent) in agents.into_iter().enumerate() {
        let code = agent.stop();
        assert_eq!(
            code,
            Some(0),
            "agent {i} exited {code:?} on SIGTERM; its log ends:\n{}",
            log_tail(&logs[i], 80)
        );
    }
    println!(
        "node loss: a standby took over {} s after each kill -9\n{}",
        failovers.join(", "),
        log_summary(&log_refs)
    );
    assert!(
        !dir.path().join("data").exists(),
        "nothing was kept on local disk"
    );
    if snapshot_docs > 0 {
        manifest.lock().unwrap().allow_snapshots_of_inserted();
        let resumed: usize = log_refs
            .iter()
            .map(|l| log_count(l, "Incremental snapshot: continuing beside the stream."))
            .sum();
        assert!(
            resumed >= 2,
            "a later term continued the copy from the state ({resumed} starts with copying to do)"
        );
    }
    let run = Run {
        sink,
        kills,
        live_restarts,
        load_secs,
    };
    verify(
        &run,
        dir.path(),
        lake_args,
        watcher,
        &manifest,
        &mongo,
        &proxy,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "long chaos run (minutes): e2e/test.sh runs it, or cargo test --release --test chaos -- --include-ignored"]
async fn chaos_node_loss_on_seal_60k() {
    node_loss_run(ON_SEAL, 64, 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "long chaos run (minutes): e2e/test.sh runs it, or cargo test --release --test chaos -- --include-ignored"]
async fn chaos_node_loss_every_batch_60k() {
    node_loss_run(EVERY_BATCH, 64, 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "long chaos run (minutes): e2e/test.sh runs it, or cargo test --release --test chaos -- --include-ignored"]
async fn chaos_node_loss_delta_60k() {
    node_loss_run(Sink::Delta, 64, 5_000).await;
}
