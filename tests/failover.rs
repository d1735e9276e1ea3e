//! Agents of one pipeline with their state in the storage account
//! (`[state] store = "azure_blob"`, no `data_dir`): one active, the others
//! standing by; a standby takes over when the active is killed, hands over
//! at once on SIGTERM, and an active paused past its lease changes nothing
//! when it wakes and steps down. Real mongod, real Azurite (on disk, so it
//! can be restarted mid-test); every change must reach the lake exactly
//! once, in stream order within each file.

mod support;

use std::{
    collections::{BTreeMap, HashMap},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use mongodb::bson::{doc, Document};
use serde_json::Value;
use support::{eventually, free_port, Agent, Azurite, Lake, Mongod, PipelineConfig, AZURITE_KEY};

const LEASE_SECS: u64 = 15;

/// An agent of pipeline `orders` with its API on `api_port`.
fn config(
    dir: &Path,
    name: &str,
    mongo: &str,
    account_url: &str,
    api_port: u16,
    commit: &str,
) -> PathBuf {
    PipelineConfig::mongo(mongo)
        .global(&format!("api.address = \"127.0.0.1:{api_port}\""))
        .azure_state(account_url, "orders", LEASE_SECS as u32)
        .source("database = \"shop\"")
        .sink(&format!(
            r#"[sinks.lake]
type = "adls_partitioned_jsonl"
inputs = ["mongo"]
account_url = "{account_url}"
filesystem = "lake"
create_filesystem = true
auth.shared_key = "{AZURITE_KEY}"
commit = "{commit}"
file_name = "events-%Y%m%d-%H%M%S"
roll.window_secs = 2
roll.grace_secs = 0
roll.max_bytes = 40000
batch.timeout_secs = 0.3
request.timeout_secs = 2
request.retry_initial_backoff_secs = 0.05
request.retry_max_backoff_secs = 1
request.retry_attempts = 1000"#
        ))
        .write(&dir.join(format!("{name}.toml")))
}

/// One agent under test: its process, API port and log.
struct Member {
    agent: Agent,
    port: u16,
    log: PathBuf,
    config: PathBuf,
}

impl Member {
    fn start(config: PathBuf, port: u16, log: PathBuf) -> Self {
        Self {
            agent: Agent::start_logged(&config, &log),
            port,
            log,
            config,
        }
    }

    /// `/health`'s `role`, while the API answers.
    fn role(&self) -> Option<String> {
        support::role(self.port)
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn signal(&self, signal: i32) {
        unsafe { libc::kill(self.agent.pid() as i32, signal) };
    }
}

/// Waits until exactly one member says `active` and every other
/// `standby`; its index.
async fn one_active(members: &[&Member], timeout: Duration) -> usize {
    let ports: Vec<u16> = members.iter().map(|m| m.port).collect();
    let logs: Vec<&Path> = members.iter().map(|m| m.log.as_path()).collect();
    support::one_active(&ports, &logs, timeout).await
}

/// Waits until `member` has stepped down (40 s at most). Not its role: it
/// stands by only until it wins an election again, which can be at once
/// (callers check the roles with `one_active`).
async fn stepped_down(member: &Member) {
    eventually(Duration::from_secs(40), async || {
        member.log_text().contains("Stepped down").then_some(())
    })
    .await;
}

/// The source's checkpoint in the state container.
const CHECKPOINT: &str = "orders/mongo/checkpoint.json";

/// Waits until the active agent's change stream is open: an open, idle
/// stream saves a checkpoint, so what is written afterwards is read.
/// ("Starting from now" is logged before the stream opens, and a write
/// made before that is not in the stream at all.)
async fn stream_open(azurite: &Azurite) {
    let state = Lake::new(azurite, "state");
    eventually(Duration::from_secs(60), async || {
        state
            .list()
            .await
            .iter()
            .any(|o| o.name == CHECKPOINT)
            .then_some(())
    })
    .await;
}

/// Inserts `batches` x 50 documents with ids from `first`, `pause` apart;
/// the number of change events.
async fn write(client: &mongodb::Client, first: i64, batches: i64, pause: Duration) -> usize {
    let coll = client.database("shop").collection::<Document>("orders");
    for b in 0..batches {
        let docs: Vec<Document> = (0..50)
            .map(|i| doc! { "_id": first + b * 50 + i, "v": "x".repeat(200) })
            .collect();
        coll.insert_many(docs).await.unwrap();
        tokio::time::sleep(pause).await;
    }
    (batches * 50) as usize
}

/// Every line of every file in the lake, by name.
async fn read_lake(lake: &Lake) -> BTreeMap<String, Vec<Value>> {
    let mut out = BTreeMap::new();
    for o in lake.list().await {
        out.insert(o.name.clone(), lake.lines(&o.name).await);
    }
    out
}

/// Each `_id` in `0..expected` exactly once, each file in stream order.
fn assert_exactly_once(files: &BTreeMap<String, Vec<Value>>, expected: usize) {
    let mut seen: HashMap<i64, String> = HashMap::new();
    for (name, lines) in files {
        let tokens: Vec<&str> = lines
            .iter()
            .map(|l| l["_meta"]["resumeToken"].as_str().unwrap())
            .collect();
        let mut sorted = tokens.clone();
        sorted.sort();
        assert_eq!(tokens, sorted, "{name}: lines out of stream order");
        for line in lines {
            let id = line["documentKey"]["_id"].as_i64().unwrap_or_else(|| {
                line["documentKey"]["_id"]["$numberLong"]
                    .as_str()
                    .and_then(|s| s.parse().ok())
                    .or_else(|| {
                        line["documentKey"]["_id"]["$numberInt"]
                            .as_str()
                            .and_then(|s| s.parse().ok())
                    })
                    .unwrap_or_else(|| panic!("{name}: no _id in {line}"))
            });
            if let Some(first) = seen.insert(id, name.clone()) {
                panic!("_id {id} appears twice: in {first} and {name}");
            }
        }
    }
    let missing: Vec<i64> = (0..expected as i64)
        .filter(|i| !seen.contains_key(i))
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {expected} changes missing, first {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    assert_eq!(seen.len(), expected, "only the written changes");
}

/// Waits until the lake holds `expected` lines.
async fn lake_holds(lake: &Lake, expected: usize, members: &[&Member]) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let n: usize = read_lake(lake).await.values().map(Vec::len).sum();
        if n >= expected {
            return;
        }
        if Instant::now() > deadline {
            let logs: Vec<String> = members
                .iter()
                .map(|m| support::log_tail(&m.log, 30))
                .collect();
            panic!(
                "the lake holds {n} of {expected} changes after 120 s; logs:\n{}",
                logs.join("\n-----\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Two agents (`every_batch`): one active; kill -9 of the active, the standby continues
/// from the state in the storage account (nothing on local disk); the
/// killed one comes back as a standby; SIGTERM of the active hands over
/// at once. Every change exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_takes_over_from_a_killed_active_and_on_sigterm() {
    let mongo = Mongod::start().await;
    let azurite = Azurite::start();
    let lake = Lake::new(&azurite, "lake");
    let dir = tempfile::tempdir().unwrap();
    let url = azurite.account_url();
    let ports = [free_port(), free_port()];
    let mut members: Vec<Member> = (0..2)
        .map(|i| {
            let name = format!("agent{i}");
            let cfg = config(
                dir.path(),
                &name,
                &mongo.uri(),
                &url,
                ports[i],
                "every_batch",
            );
            Member::start(cfg, ports[i], dir.path().join(format!("{name}.log")))
        })
        .collect();
    let active = one_active(&members.iter().collect::<Vec<_>>(), Duration::from_secs(60)).await;
    stream_open(&azurite).await;

    let client = mongo.client().await;
    let writer = {
        let client = client.clone();
        tokio::spawn(async move { write(&client, 0, 60, Duration::from_millis(400)).await })
    };
    tokio::time::sleep(Duration::from_secs(6)).await;
    members[active].agent.kill();
    let killed_at = Instant::now();
    let standby = 1 - active;
    // The role turns active when the lease is held; the state is taken over
    // (its blobs' writes fenced to the new lease) a few requests later, so
    // failover counts until the log says the components start from it.
    eventually(Duration::from_secs(LEASE_SECS * 3 + 15), async || {
        (members[standby].role().as_deref() == Some("active")
            && members[standby]
                .log_text()
                .contains("Took over the pipeline's state"))
        .then_some(())
    })
    .await;
    let failover = killed_at.elapsed();
    eprintln!("failover after kill -9: {failover:?}");
    assert!(
        failover < Duration::from_secs(LEASE_SECS + 15),
        "the standby took {failover:?} to take over from a killed active (lease {LEASE_SECS} s)\n{}",
        members[standby].log_text()
    );
    // The killed one comes back, as a standby.
    let cfg = members[active].config.clone();
    let log = members[active].log.clone();
    members[active] = Member::start(cfg, ports[active], log);
    let expected = writer.await.unwrap();
    lake_holds(&lake, expected, &members.iter().collect::<Vec<_>>()).await;
    assert_eq!(
        one_active(&members.iter().collect::<Vec<_>>(), Duration::from_secs(30)).await,
        standby
    );

    // SIGTERM: drained, released, taken over within seconds.
    // Counted from the exit, after the drain: a lease not released would
    // be free only when it expires, 10 s or more after the last renew.
    let old = members.remove(standby);
    assert_eq!(old.agent.stop(), Some(0));
    let stopped_at = Instant::now();
    eventually(Duration::from_secs(20), async || {
        (members[0].role().as_deref() == Some("active")).then_some(())
    })
    .await;
    let handover = stopped_at.elapsed();
    eprintln!("handover after SIGTERM: {handover:?}");
    assert!(
        handover < Duration::from_secs(8),
        "a released lease was taken over after {handover:?}"
    );
    let more = write(&client, expected as i64, 10, Duration::from_millis(100)).await;
    lake_holds(&lake, expected + more, &members.iter().collect::<Vec<_>>()).await;
    let files = read_lake(&lake).await;
    assert_exactly_once(&files, expected + more);
    assert!(
        !dir.path().join("data").exists(),
        "nothing is kept on local disk"
    );
    let member = members.remove(0);
    assert_eq!(member.agent.stop(), Some(0));
}

/// Three agents (`on_seal`, so every visible file is final): the active is
/// paused (SIGSTOP) for longer than its lease; a standby takes over, and
/// Azurite restarts under it; then the paused one wakes (SIGCONT) in the
/// middle of whatever it was doing. Its writes are refused, it changes no
/// visible file, steps down and stands by; every change exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_active_wakes_fenced_and_steps_down() {
    let mongo = Mongod::start().await;
    let mut azurite = Azurite::start_on_disk();
    let lake = Lake::new(&azurite, "lake");
    let dir = tempfile::tempdir().unwrap();
    let url = azurite.account_url();
    let ports = [free_port(), free_port(), free_port()];
    let members: Vec<Member> = (0..3)
        .map(|i| {
            let name = format!("agent{i}");
            let cfg = config(dir.path(), &name, &mongo.uri(), &url, ports[i], "on_seal");
            Member::start(cfg, ports[i], dir.path().join(format!("{name}.log")))
        })
        .collect();
    let all: Vec<&Member> = members.iter().collect();
    let paused = one_active(&all, Duration::from_secs(60)).await;
    stream_open(&azurite).await;

    let client = mongo.client().await;
    let writer = {
        let client = client.clone();
        tokio::spawn(async move { write(&client, 0, 80, Duration::from_millis(300)).await })
    };
    tokio::time::sleep(Duration::from_secs(4)).await;
    members[paused].signal(libc::SIGSTOP);
    let others: Vec<&Member> = (0..3)
        .filter(|i| *i != paused)
        .map(|i| &members[i])
        .collect();
    one_active(&others, Duration::from_secs(LEASE_SECS * 3 + 15)).await;
    // Azurite restarts under the new active.
    tokio::time::sleep(Duration::from_secs(2)).await;
    azurite.restart();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let before: BTreeMap<String, (String, u64)> = lake
        .list()
        .await
        .into_iter()
        .map(|o| (o.name, (o.etag, o.size)))
        .collect();
    members[paused].signal(libc::SIGCONT);
    stepped_down(&members[paused]).await;
    let expected = writer.await.unwrap();
    lake_holds(&lake, expected, &all).await;
    // Files visible before the wake-up are unchanged: sealed files are
    // final, and the woken agent changed none.
    let after: BTreeMap<String, (String, u64)> = lake
        .list()
        .await
        .into_iter()
        .map(|o| (o.name, (o.etag, o.size)))
        .collect();
    for (name, version) in &before {
        assert_eq!(
            after.get(name),
            Some(version),
            "{name} changed after it was visible"
        );
    }
    assert_exactly_once(&read_lake(&lake).await, expected);
    // Who is active now depends on how long Azurite took to come back (a
    // restart forgets its leases, which real storage does not, so an
    // active may find its state taken over); that one is, and the others
    // stand by, none exited.
    one_active(&all, Duration::from_secs(LEASE_SECS * 3 + 15)).await;
    for member in members {
        assert_eq!(member.agent.stop(), Some(0));
    }
}

/// What an idle pipeline costs in storage requests: one active agent alone
/// for 40 s, then with a standby for 40 s, every request counted by a
/// proxy that injects nothing. 40 s holds a whole number of every period
/// at `lease_secs = 20` (leader renew 6.7 s, state renew 20 s, standby
/// poll 4 s), so the counts do not depend on where the window falls. Printed for docs/operations.md; bounded here so a
/// change that makes the idle agent chatty fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_pipeline_costs_few_requests() {
    let mongo = Mongod::start().await;
    let azurite = Azurite::start();
    let proxy = support::FaultProxy::passthrough(azurite.port).await;
    let dir = tempfile::tempdir().unwrap();
    let url = proxy.account_url();
    let ports = [free_port(), free_port()];
    // The source's and the lease's defaults: what a user's idle pipeline
    // costs.
    let member = |i: usize| {
        let name = format!("agent{i}");
        let cfg = config(dir.path(), &name, &mongo.uri(), &url, ports[i], "on_seal");
        let text = std::fs::read_to_string(&cfg)
            .unwrap()
            .replace(
                "max_await_time_ms = 200\ncheckpoint_interval_ms = 100\n",
                "",
            )
            .replace(&format!("lease_secs = {LEASE_SECS}"), "lease_secs = 20");
        std::fs::write(&cfg, text).unwrap();
        Member::start(cfg, ports[i], dir.path().join(format!("{name}.log")))
    };
    let forwarded = || {
        proxy
            .stats
            .lock()
            .unwrap()
            .get("forwarded")
            .copied()
            .unwrap_or(0)
    };
    let active = member(0);
    one_active(&[&active], Duration::from_secs(60)).await;
    stream_open(&azurite).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let window = Duration::from_secs(40);
    let per_minute = |n: u64| n as f64 * 60.0 / window.as_secs_f64();

    let before = forwarded();
    tokio::time::sleep(window).await;
    let alone = per_minute(forwarded() - before);

    let standby = member(1);
    one_active(&[&active, &standby], Duration::from_secs(60)).await;
    let before = forwarded();
    tokio::time::sleep(window).await;
    let both = per_minute(forwarded() - before);
    let standby_cost = both - alone;
    eprintln!(
        "idle pipeline (defaults, lease 20 s): active agent {alone:.0} requests/min, standby {standby_cost:.0} requests/min"
    );
    // 15 a minute expected: 9 leader renews, 3 renews of each of the two
    // state blobs (60 s state leases renewed every 20 s), an idle
    // checkpoint a minute at most (`checkpoint_idle_interval_secs`). 30
    // when the state leases were renewed with every leader renew, 90
    // before idle positions waited for that interval.
    assert!(
        alone <= 20.0,
        "an idle active agent sends {alone:.0} requests a minute"
    );
    // 15 a minute expected (one read of the lease state every L/5, or an
    // Acquire Lease when due); 52-54 when a standby polled every second.
    assert!(
        standby_cost <= 20.0,
        "a standby sends {standby_cost:.0} requests a minute"
    );
    for m in [active, standby] {
        assert_eq!(m.agent.stop(), Some(0));
    }
}

/// Switching a pipeline from `local` to `azure_blob`: the first active
/// agent finds the remote state empty and imports what `data_dir` holds
/// (checkpoint and sink state), so the changes made while no agent ran are
/// written, and none twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_state_is_imported_into_an_empty_remote_state() {
    let mongo = Mongod::start().await;
    let azurite = Azurite::start();
    let lake = Lake::new(&azurite, "lake");
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let port = free_port();
    let remote = config(
        dir.path(),
        "remote",
        &mongo.uri(),
        &azurite.account_url(),
        port,
        "on_seal",
    );
    let text = std::fs::read_to_string(&remote).unwrap();
    let state_table = &text[text.find("[state]").unwrap()..text.find("[sources.mongo]").unwrap()];
    let local = dir.path().join("local.toml");
    std::fs::write(
        &local,
        text.replace(state_table, "").replace(
            "api.address",
            &format!("data_dir = \"{}\"\napi.address", data.display()),
        ),
    )
    .unwrap();
    std::fs::write(
        &remote,
        text.replace(
            "api.address",
            &format!("data_dir = \"{}\"\napi.address", data.display()),
        ),
    )
    .unwrap();

    let client = mongo.client().await;
    let log = dir.path().join("local.log");
    let agent = Agent::start_logged(&local, &log);
    // The stream is open once the idle stream saved a checkpoint.
    eventually(Duration::from_secs(60), async || {
        data.join("mongo/checkpoint.json").exists().then_some(())
    })
    .await;
    let first = write(&client, 0, 4, Duration::from_millis(200)).await;
    let members = [];
    lake_holds(&lake, first, &members).await;
    assert_eq!(agent.stop(), Some(0));
    // Made while no agent runs: only the imported checkpoint finds them.
    let second = write(&client, first as i64, 4, Duration::from_millis(50)).await;

    let member = Member::start(remote, port, dir.path().join("remote.log"));
    lake_holds(&lake, first + second, &[&member]).await;
    let text = member.log_text();
    assert!(text.contains("Imported "), "{text}");
    assert!(text.contains("Resuming after checkpoint"), "{text}");
    assert_exactly_once(&read_lake(&lake).await, first + second);
    assert_eq!(member.agent.stop(), Some(0));
}

/// A term that loses its lease at a chosen step of the commit protocol:
/// the agent is stopped (SIGSTOP) at a test seam, just before a commit
/// (after its intent, the recorded blocks, is in the state) or just after
/// it (before the state records it); a standby takes over and completes
/// what was recorded; the stopped agent is woken and finishes its step.
/// Its late commit is the same as the new term's, or refused; nothing is
/// lost or written twice, and it steps down.
async fn lease_lost_at_a_seam(commit: &str, seam: &str) {
    let mongo = Mongod::start().await;
    let azurite = Azurite::start();
    let lake = Lake::new(&azurite, "lake");
    let dir = tempfile::tempdir().unwrap();
    let url = azurite.account_url();
    let ports = [free_port(), free_port()];
    let cfg = |i: usize| {
        config(
            dir.path(),
            &format!("agent{i}"),
            &mongo.uri(),
            &url,
            ports[i],
            commit,
        )
    };
    let logs = [dir.path().join("agent0.log"), dir.path().join("agent1.log")];
    let first = Member {
        agent: Agent::start_logged_env(&cfg(0), &logs[0], &[("MONGO_ADLS_TEST_SEAM", seam)]),
        port: ports[0],
        log: logs[0].clone(),
        config: cfg(0),
    };
    one_active(&[&first], Duration::from_secs(60)).await;
    stream_open(&azurite).await;
    let client = mongo.client().await;
    let writer = {
        let client = client.clone();
        tokio::spawn(async move { write(&client, 0, 40, Duration::from_millis(300)).await })
    };
    let reached = format!("Test seam {seam} reached");
    eventually(Duration::from_secs(60), async || {
        (first.log_text().contains(&reached)).then_some(())
    })
    .await;
    first.signal(libc::SIGSTOP);
    let second = Member::start(cfg(1), ports[1], logs[1].clone());
    // The second takes the state over while the first is stopped, and
    // (most likely, within 3 s; either order must hold) completes what was
    // recorded before the first wakes.
    eventually(Duration::from_secs(LEASE_SECS * 3 + 15), async || {
        (second.role().as_deref() == Some("active")
            && second.log_text().contains("Took over the pipeline's state"))
        .then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    first.signal(libc::SIGCONT);
    stepped_down(&first).await;
    let expected = writer.await.unwrap();
    lake_holds(&lake, expected, &[&first, &second]).await;
    assert_exactly_once(&read_lake(&lake).await, expected);
    assert_eq!(
        one_active(&[&first, &second], Duration::from_secs(10)).await,
        1
    );
    for m in [first, second] {
        assert_eq!(m.agent.stop(), Some(0));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_seal_lease_lost_between_intent_and_commit_and_after_commit() {
    lease_lost_at_a_seam("on_seal", "before_commit").await;
    lease_lost_at_a_seam("on_seal", "after_commit").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_batch_lease_lost_between_intent_and_commit_and_after_commit() {
    lease_lost_at_a_seam("every_batch", "before_commit").await;
    lease_lost_at_a_seam("every_batch", "after_commit").await;
}

/// The state in the storage account missing or damaged: never a silent
/// restart from "now". A deleted checkpoint is refused by the start check
/// (the lake holds the pipeline's files), a truncated one is an error
/// naming the blob; either way the agent exits 78 and says what to do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_or_damaged_remote_state_is_refused_naming_the_blob() {
    let mongo = Mongod::start().await;
    let azurite = Azurite::start();
    let lake = Lake::new(&azurite, "lake");
    let state = Lake::new(&azurite, "state");
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let cfg = config(
        dir.path(),
        "agent",
        &mongo.uri(),
        &azurite.account_url(),
        port,
        "on_seal",
    );
    let log = dir.path().join("agent.log");
    let member = Member::start(cfg.clone(), port, log.clone());
    eventually(Duration::from_secs(60), async || {
        member
            .log_text()
            .contains("Starting from now")
            .then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let client = mongo.client().await;
    let n = write(&client, 0, 4, Duration::from_millis(100)).await;
    lake_holds(&lake, n, &[&member]).await;
    assert_eq!(member.agent.stop(), Some(0));
    // `state show` reads the group's state without taking the lease.
    let shown = support::state_show(&cfg);
    for expected in [
        "pipeline \"orders\": state in",
        "active agent: none; the lease is available",
        "state/orders/mongo/checkpoint.json",
        "resume token",
        "state/orders/lake/state.json",
    ] {
        assert!(shown.contains(expected), "{expected:?} not in:\n{shown}");
    }
    let checkpoint = CHECKPOINT;
    let saved = state.read(checkpoint).await;

    // Truncated: an error naming the blob.
    state
        .put(checkpoint, saved[..saved.len() / 2].to_vec())
        .await;
    let mut agent = Agent::start_logged(&cfg, &log);
    assert_eq!(agent.exit_within(Duration::from_secs(60)), Some(78));
    let text = std::fs::read_to_string(&log).unwrap();
    let tail = text.rsplit("Starting mongo-adls").next().unwrap();
    assert!(
        tail.contains("corrupt") && tail.contains("state/orders/mongo/checkpoint.json"),
        "{tail}"
    );
    eprintln!(
        "truncated checkpoint: {}",
        tail.lines()
            .filter(|l| l.contains("corrupt"))
            .collect::<Vec<_>>()
            .join("\n")
    );

    // Missing: the start check refuses, naming what was lost.
    state.delete(checkpoint).await;
    let mut agent = Agent::start_logged(&cfg, &log);
    assert_eq!(agent.exit_within(Duration::from_secs(60)), Some(78));
    let text = std::fs::read_to_string(&log).unwrap();
    let tail = text.rsplit("Starting mongo-adls").next().unwrap();
    assert!(
        tail.contains("checkpoint") && tail.contains("state/orders/mongo/checkpoint.json"),
        "{tail}"
    );
    assert!(tail.contains("--accept-data-gap"), "{tail}");
    eprintln!(
        "missing checkpoint: {}",
        tail.lines()
            .filter(|l| l.contains("accept-data-gap"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}
