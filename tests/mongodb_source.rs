//! The `mongodb_change_stream` source against a real `mongod` replica set,
//! through the `mongo-adls` binary with the `console` sink (whose stdout
//! shows exactly what was delivered).

mod support;

use support::SpawnTracked as _;

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, ChildStdout, Stdio},
    sync::{Arc, Mutex},
    time::Duration,
};

use mongodb::bson::{doc, Document};
use serde_json::Value;
use support::{eventually, Mongod, PipelineConfig};

/// An agent whose `console` sink output is collected line by line.
struct ConsoleAgent {
    /// `None` once stopped; a running agent is killed on drop, so a failing
    /// test never leaves one behind (it would hold the test runner's output).
    child: Option<Child>,
    lines: Arc<Mutex<Vec<Value>>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl ConsoleAgent {
    fn start(config: &Path) -> Self {
        Self::spawn(config, Stdio::inherit())
    }

    /// With its log (stderr) appended to `log`.
    fn start_logged(config: &Path, log: &Path) -> Self {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        Self::spawn(config, file.into())
    }

    fn spawn(config: &Path, stderr: Stdio) -> Self {
        let mut child = support::mongo_adls()
            .arg("--config")
            .arg(config)
            .env("MONGO_ADLS_LOG", "info,mongo_adls=debug")
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn_tracked();
        let stdout: ChildStdout = child.stdout.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&lines);
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                // After SIGKILL the last line can be cut short; it was never
                // acknowledged, so it is replayed and can be ignored here.
                if let Ok(value) = serde_json::from_str(&line) {
                    sink.lock().unwrap().push(value);
                }
            }
        });
        Self {
            child: Some(child),
            lines,
            reader: Some(reader),
        }
    }

    fn events(&self) -> Vec<Value> {
        self.lines.lock().unwrap().clone()
    }

    async fn wait_for(&self, n: usize) -> Vec<Value> {
        eventually(Duration::from_secs(60), async || {
            let e = self.events();
            (e.len() >= n).then_some(e)
        })
        .await
    }

    fn stop(mut self, signal: i32) -> (Option<i32>, Vec<Value>) {
        let mut child = self.child.take().expect("running");
        unsafe { libc::kill(child.id() as i32, signal) };
        let status = child.wait().unwrap();
        self.reader.take().unwrap().join().unwrap();
        (status.code(), self.events())
    }
}

impl Drop for ConsoleAgent {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn config(dir: &Path, uri: &str, scope: &str) -> PathBuf {
    config_with_sink(dir, uri, scope, "")
}

/// As [`config`], with more options for the console sink.
fn config_with_sink(dir: &Path, uri: &str, scope: &str, sink_options: &str) -> PathBuf {
    PipelineConfig::mongo(uri)
        .data_dir(&dir.join("data"))
        .source(scope)
        .sink(&format!(
            "[sinks.out]\ntype = \"console\"\ninputs = [\"mongo\"]\nencoding.extended_json = \"canonical\"\n{sink_options}"
        ))
        .write(&dir.join("agent.toml"))
}

fn checkpoint(dir: &Path) -> Option<String> {
    let text = std::fs::read_to_string(dir.join("data/mongo/checkpoint.json")).ok()?;
    serde_json::from_str::<Value>(&text).unwrap()["resume_token"]
        .as_str()
        .map(str::to_string)
}

fn token(event: &Value) -> String {
    event["_id"]["_data"].as_str().unwrap().to_string()
}

fn summary(event: &Value) -> String {
    format!(
        "{} {}.{}",
        event["operationType"].as_str().unwrap(),
        event["ns"]["db"].as_str().unwrap_or("-"),
        event["ns"]["coll"].as_str().unwrap_or("-"),
    )
}

/// Waits until the source has opened its stream (its first idle
/// checkpoint), so writes made afterwards are seen.
async fn wait_started(dir: &Path) {
    eventually(Duration::from_secs(60), async || checkpoint(dir)).await;
}

#[tokio::test]
async fn each_scope_delivers_exactly_its_changes() {
    let mongo = Mongod::start().await;
    let client = mongo.client().await;
    // Pre-images need the collection option.
    client
        .database("shop")
        .run_command(
            doc! { "create": "orders", "changeStreamPreAndPostImages": { "enabled": true } },
        )
        .await
        .unwrap();

    let scopes = [
        ("", vec!["shop.orders", "shop.users", "crm.leads"]),
        ("database = \"shop\"", vec!["shop.orders", "shop.users"]),
        (
            "database = \"shop\"\ncollection = \"orders\"",
            vec!["shop.orders"],
        ),
        (
            "database = \"shop\"\ncollections = [\"users\"]",
            vec!["shop.users"],
        ),
    ];
    let mut agents = Vec::new();
    for (i, (scope, _)) in scopes.iter().enumerate() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path(), &mongo.uri(), scope);
        let agent = ConsoleAgent::start(&cfg);
        wait_started(dir.path()).await;
        agents.push((i, dir, agent));
    }

    let orders = client.database("shop").collection::<Document>("orders");
    orders
        .insert_one(doc! { "_id": 1, "total": 10 })
        .await
        .unwrap();
    orders
        .update_one(doc! { "_id": 1 }, doc! { "$set": { "total": 11 } })
        .await
        .unwrap();
    // `updateLookup` reads the document when the event is read: wait until
    // every agent has read the update before changing the document again,
    // or the lookup may find the replacement or nothing.
    for (i, _, agent) in &agents {
        if scopes[*i].1.contains(&"shop.orders") {
            eventually(Duration::from_secs(30), async || {
                agent
                    .events()
                    .iter()
                    .any(|e| e["operationType"] == "update")
                    .then_some(())
            })
            .await;
        }
    }
    orders
        .replace_one(doc! { "_id": 1 }, doc! { "total": 12, "replaced": true })
        .await
        .unwrap();
    orders.delete_one(doc! { "_id": 1 }).await.unwrap();
    client
        .database("shop")
        .collection::<Document>("users")
        .insert_one(doc! { "_id": "u1" })
        .await
        .unwrap();
    client
        .database("crm")
        .collection::<Document>("leads")
        .insert_one(doc! { "_id": "l1" })
        .await
        .unwrap();

    // End markers, one per namespace, after every change above.
    for (db, coll) in [("shop", "orders"), ("shop", "users"), ("crm", "leads")] {
        client
            .database(db)
            .collection::<Document>(coll)
            .insert_one(doc! { "_id": "end-marker" })
            .await
            .unwrap();
    }
    let is_marker = |e: &Value| e["documentKey"]["_id"] == "end-marker";

    for (i, _dir, agent) in agents {
        let ns = scopes[i].1.as_slice();
        let mut wanted: Vec<String> = Vec::new();
        if ns.contains(&"shop.orders") {
            for op in ["insert", "update", "replace", "delete"] {
                wanted.push(format!("{op} shop.orders"));
            }
        }
        if ns.contains(&"shop.users") {
            wanted.push("insert shop.users".into());
        }
        if ns.contains(&"crm.leads") {
            wanted.push("insert crm.leads".into());
        }
        // Wait for the end markers of this scope's namespaces rather than
        // for a fixed time: a stray event (made before the markers) would
        // be delivered before them.
        let markers = ["shop.orders", "shop.users", "crm.leads"]
            .iter()
            .filter(|n| ns.contains(n))
            .count();
        eventually(Duration::from_secs(60), async || {
            let n = agent.events().iter().filter(|e| is_marker(e)).count();
            (n >= markers).then_some(())
        })
        .await;
        let (code, events) = agent.stop(libc::SIGTERM);
        assert_eq!(code, Some(0));
        let got: Vec<String> = events
            .iter()
            .filter(|e| e["operationType"] != "create" && !is_marker(e))
            .map(summary)
            .collect();
        assert_eq!(got, wanted, "scope {:?}", scopes[i].0);
        if scopes[i].1.contains(&"shop.orders") {
            let update = events
                .iter()
                .find(|e| e["operationType"] == "update")
                .unwrap();
            assert_eq!(
                update["fullDocument"]["total"],
                serde_json::json!({"$numberInt": "11"}),
                "updateLookup"
            );
            assert_eq!(
                update["fullDocumentBeforeChange"]["total"],
                serde_json::json!({"$numberInt": "10"}),
                "pre-image"
            );
            assert_eq!(
                update["updateDescription"]["updatedFields"]["total"],
                serde_json::json!({"$numberInt": "11"})
            );
        }
        let _ = events;
    }
}

async fn insert_range(client: &mongodb::Client, from: i64, to: i64) {
    let coll = client.database("app").collection::<Document>("items");
    let docs: Vec<Document> = (from..to).map(|i| doc! { "_id": i, "seq": i }).collect();
    for chunk in docs.chunks(500) {
        coll.insert_many(chunk.to_vec()).await.unwrap();
    }
}

/// Inserts `from..to` in chunks of 100 with a pause between them, so a
/// stream is still busy while the test stops and restarts the agent.
async fn insert_paced(client: &mongodb::Client, from: i64, to: i64, pause: Duration) {
    let mut start = from;
    while start < to {
        let end = (start + 100).min(to);
        insert_range(client, start, end).await;
        start = end;
        tokio::time::sleep(pause).await;
    }
}

fn seqs(events: &[Value]) -> Vec<i64> {
    events
        .iter()
        .filter(|e| e["operationType"] == "insert")
        .map(|e| {
            e["documentKey"]["_id"]["$numberLong"]
                .as_str()
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect()
}

/// SIGTERM while the source forwards a server batch (a backlog of 50,000
/// changes read 5,000 a batch, into a sink buffer of 10 events, so the
/// source waits for room nearly all the time): the source acknowledges a
/// batch as one, and what it sent of the batch is committed, nothing more,
/// so a clean stop replays nothing.
#[tokio::test]
async fn sigterm_in_the_middle_of_a_server_batch_commits_what_was_printed() {
    let mongo = Mongod::start().await;
    let client = mongo.client().await;
    let dir = tempfile::tempdir().unwrap();
    let scope = "database = \"app\"";
    let cfg = config_with_sink(dir.path(), &mongo.uri(), scope, "buffer.max_events = 10");
    // A checkpoint first, then the backlog while no agent runs.
    let agent = ConsoleAgent::start(&cfg);
    wait_started(dir.path()).await;
    assert_eq!(agent.stop(libc::SIGTERM).0, Some(0));
    let total = 50_000;
    insert_range(&client, 0, total).await;

    let agent = ConsoleAgent::start(&cfg);
    agent.wait_for(1_000).await;
    let (code, printed) = agent.stop(libc::SIGTERM);
    assert_eq!(code, Some(0));
    assert!(
        printed.len() < total as usize,
        "stopped before the backlog was drained"
    );
    assert_eq!(
        token(printed.last().unwrap()),
        checkpoint(dir.path()).unwrap(),
        "SIGTERM commits every printed event and no other"
    );
    let agent = ConsoleAgent::start(&cfg);
    agent.wait_for(total as usize - printed.len()).await;
    let (code, rest) = agent.stop(libc::SIGTERM);
    assert_eq!(code, Some(0));
    let all: Vec<Value> = printed.into_iter().chain(rest).collect();
    assert_eq!(seqs(&all), (0..total).collect::<Vec<_>>());
}

#[tokio::test]
async fn restarts_replay_only_unacknowledged_events() {
    let mut mongo = Mongod::start().await;
    let client = mongo.client().await;
    let dir = tempfile::tempdir().unwrap();
    // A short server selection: during run 3's mongod restart the driver's
    // own resume gives up at once, so the source's retry path (pause,
    // reopen from the last emitted event) is what must ride it out.
    let uri = format!("{}&serverSelectionTimeoutMS=500", mongo.uri());
    let cfg = config(dir.path(), &uri, "database = \"app\"");
    let mut all: Vec<Value> = Vec::new();

    // Run 1, stopped by SIGTERM mid-stream.
    let agent = ConsoleAgent::start(&cfg);
    wait_started(dir.path()).await;
    let writer = {
        let client = client.clone();
        // About 6 s of writes: runs 1 and 2 each stop in the middle.
        tokio::spawn(
            async move { insert_paced(&client, 0, 3000, Duration::from_millis(200)).await },
        )
    };
    agent.wait_for(500).await;
    let (code, events) = agent.stop(libc::SIGTERM);
    assert_eq!(code, Some(0));
    let committed = checkpoint(dir.path()).unwrap();
    assert_eq!(
        token(events.last().unwrap()),
        committed,
        "SIGTERM drains and commits all printed events"
    );
    all.extend(events);

    // Run 2, killed with SIGKILL mid-stream; the checkpoint may trail.
    let agent = ConsoleAgent::start(&cfg);
    let events = agent.wait_for(200).await;
    assert!(
        token(&events[0]) > committed,
        "nothing acknowledged is delivered again"
    );
    let (_, events) = agent.stop(libc::SIGKILL);
    let before = committed;
    let committed = checkpoint(dir.path()).unwrap();
    // The checkpoint is the old one, a delivered event, or an idle token
    // past everything delivered: never a position with undelivered events
    // before it.
    assert!(
        committed == before
            || events.iter().any(|e| token(e) == committed)
            || committed > token(events.last().unwrap()),
        "checkpoint {committed} is not a delivered position"
    );
    all.extend(events.into_iter().filter(|e| token(e) <= committed));
    writer.await.unwrap();

    // Run 3 with a mongod restart in the middle of more writes, while the
    // stream waits for changes (so the restart breaks a pending getMore).
    let log = dir.path().join("run3.log");
    let agent = ConsoleAgent::start_logged(&cfg, &log);
    // One change at least, whether or not run 2 left any undelivered.
    insert_range(&client, 3000, 3001).await;
    let first = agent.wait_for(1).await;
    assert!(token(&first[0]) > committed);
    // Down for longer than the agent's 500 ms server selection timeout,
    // so the driver's own resume attempt fails and the source's retry
    // path must ride the restart out (a quick restart was sometimes
    // ridden out by the driver alone).
    mongo.restart_after(Duration::from_secs(2)).await;
    let client = mongo.client().await;
    insert_range(&client, 3001, 4000).await;
    let seen = agent.wait_for(1).await.len();
    let expected_more = 4000 - seqs(&all).len();
    let _ = seen;
    agent.wait_for(expected_more).await;
    let (code, events) = agent.stop(libc::SIGTERM);
    assert_eq!(code, Some(0));
    all.extend(events);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("Reopening from the last emitted event"),
        "the restart reached the source's retry path: {text}"
    );

    let got = seqs(&all);
    assert_eq!(
        got,
        (0..4000).collect::<Vec<_>>(),
        "every insert exactly once, in order"
    );
}

#[tokio::test]
async fn failing_sink_keeps_the_checkpoint() {
    let mongo = Mongod::start().await;
    let client = mongo.client().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &mongo.uri(), "database = \"app\"");
    let log = dir.path().join("failing.log");
    // Stdout whose reader is gone: every write fails with EPIPE.
    let mut child = support::mongo_adls()
        .arg("--config")
        .arg(&cfg)
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn_tracked();
    let pid = child.id() as i32;
    drop(child.stdout.take());
    let child = KillOnDrop(Some(child));
    wait_started(dir.path()).await;
    insert_range(&client, 0, 10).await;
    // Wait until the source has heard of the failed delivery (it says so
    // once), rather than for a fixed time: from then on its checkpoint
    // must never move, idle streams included.
    let logged = || std::fs::read_to_string(&log).unwrap_or_default();
    eventually(Duration::from_secs(60), async || {
        logged().contains("was not delivered").then_some(())
    })
    .await;
    assert!(logged().contains("Could not write"), "{}", logged());
    // Several idle checkpoint intervals (100 ms) of a stream at rest.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let status = child.into_inner().wait().unwrap();
    assert_eq!(status.code(), Some(0), "{}", logged());
    // Idle checkpoints may have moved it up to the inserts, never to or
    // past the undelivered batch (whose last token the error names; the
    // checkpoint moves by whole batches).
    let undelivered = logged()
        .split("last resume token: ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .map(str::to_string)
        .unwrap_or_else(|| panic!("no token in {}", logged()));
    let committed = checkpoint(dir.path()).unwrap();
    assert!(
        committed < undelivered,
        "undelivered events are not committed: checkpoint {committed}, end of the undelivered batch {undelivered}"
    );

    // A working sink then gets all of them.
    let agent = ConsoleAgent::start(&cfg);
    agent.wait_for(10).await;
    let (code, events) = agent.stop(libc::SIGTERM);
    assert_eq!(code, Some(0));
    assert_eq!(seqs(&events), (0..10).collect::<Vec<_>>());
}

/// Kills the child when dropped (a failing assertion must not leave it
/// running); `into_inner` takes it back.
struct KillOnDrop(Option<std::process::Child>);

impl KillOnDrop {
    fn into_inner(mut self) -> std::process::Child {
        self.0.take().unwrap()
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[tokio::test]
async fn lost_history_follows_the_policy() {
    let mut mongo = Mongod::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &mongo.uri(), "database = \"app\"");
    let agent = ConsoleAgent::start(&cfg);
    wait_started(dir.path()).await;
    insert_range(&mongo.client().await, 0, 5).await;
    agent.wait_for(5).await;
    agent.stop(libc::SIGTERM);

    // A new deployment on the same address: the checkpoint is not in its oplog.
    mongo.recreate().await;
    // The server notices the missing resume point when the stream reaches
    // an event after it.
    insert_range(&mongo.client().await, 50, 51).await;
    let out = support::mongo_adls()
        .arg("--config")
        .arg(&cfg)
        .output()
        .unwrap();
    assert_ne!(out.status.code(), Some(0));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no longer in the oplog"), "{stderr}");
    assert!(
        stderr.contains("reset_to_now"),
        "the message says how to recover: {stderr}"
    );

    // reset_to_now with no recovery left (max_consecutive_recoveries = 0)
    // gives up instead of skipping the gap, and names the limit.
    let text = std::fs::read_to_string(&cfg).unwrap().replace(
        "checkpoint_interval_ms = 100",
        "checkpoint_interval_ms = 100\non_history_lost = \"reset_to_now\"\nmax_consecutive_recoveries = 0",
    );
    std::fs::write(&cfg, &text).unwrap();
    let log = dir.path().join("limited.log");
    let mut agent = support::Agent::start_logged(&cfg, &log);
    let code = agent.exit_within(Duration::from_secs(60));
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(
        code.is_some_and(|c| c != 0),
        "no recovery left: the agent fails ({code:?}): {logged}"
    );
    assert!(
        logged.contains("giving up (max_consecutive_recoveries)") && !logged.contains("DATA GAP"),
        "{logged}"
    );

    // reset_to_now (one recovery allowed) continues from now and logs the
    // gap: a DATA GAP line with the lost resume token and what it did.
    std::fs::write(
        &cfg,
        text.replace(
            "max_consecutive_recoveries = 0",
            "max_consecutive_recoveries = 1",
        ),
    )
    .unwrap();
    let log = dir.path().join("reset.log");
    let agent = ConsoleAgent::start_logged(&cfg, &log);
    let logged = || std::fs::read_to_string(&log).unwrap_or_default();
    eventually(Duration::from_secs(60), async || {
        logged().contains("DATA GAP").then_some(())
    })
    .await;
    let gap = logged();
    let gap = gap.lines().find(|l| l.contains("DATA GAP")).unwrap();
    assert!(
        gap.contains("DATA GAP: resume token ")
            && !gap.contains("(start position)")
            && gap.contains("continuing from now (on_history_lost = \"reset_to_now\")"),
        "{gap}"
    );
    // The stream is open once a marker inserted now comes through; the
    // changes after it come through in full.
    let client = mongo.client().await;
    let mut marker = 1000;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while agent.events().is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "no change after the reset came through in 60 s"
        );
        insert_range(&client, marker, marker + 1).await;
        marker += 1;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let markers = agent.events().len();
    insert_range(&client, 100, 103).await;
    agent.wait_for(markers + 3).await;
    let (code, events) = agent.stop(libc::SIGTERM);
    assert_eq!(code, Some(0));
    let after: Vec<i64> = seqs(&events)
        .into_iter()
        .filter(|s| (100..1000).contains(s))
        .collect();
    assert_eq!(after, vec![100, 101, 102]);
    assert!(
        seqs(&events)
            .iter()
            .all(|s| (1000..marker).contains(s) || (100..103).contains(s)),
        "only changes made after the reset: {:?}",
        seqs(&events)
    );
    assert_eq!(logged().matches("DATA GAP").count(), 1, "{}", logged());

    // resnapshot copies what the new deployment holds, then streams.
    mongo.recreate().await;
    insert_range(&mongo.client().await, 200, 205).await;
    let text = std::fs::read_to_string(&cfg).unwrap().replace(
        "on_history_lost = \"reset_to_now\"",
        "on_history_lost = \"resnapshot\"\nsnapshot = \"initial\"",
    );
    std::fs::write(&cfg, text).unwrap();
    let agent = ConsoleAgent::start(&cfg);
    let copied = agent.wait_for(5).await;
    assert!(copied.iter().all(|e| e["operationType"] == "snapshot"));
    insert_range(&mongo.client().await, 300, 301).await;
    agent.wait_for(6).await;
    let (code, events) = agent.stop(libc::SIGTERM);
    assert_eq!(code, Some(0));
    let ids: Vec<String> = events.iter().map(key_of).collect();
    assert_eq!(
        ids,
        ["200", "201", "202", "203", "204", "300"].map(|i| format!("{{\"$numberLong\":\"{i}\"}}"))
    );
    assert_eq!(events[5]["operationType"], "insert");
}

#[tokio::test]
async fn collection_stream_survives_drop_and_recreate() {
    let mongo = Mongod::start().await;
    let client = mongo.client().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        dir.path(),
        &mongo.uri(),
        "database = \"app\"\ncollection = \"items\"",
    );
    let agent = ConsoleAgent::start(&cfg);
    wait_started(dir.path()).await;
    insert_range(&client, 0, 3).await;
    agent.wait_for(3).await;

    // Dropping the collection invalidates a collection-level stream; the
    // source passes the events on and reopens after the invalidate.
    client
        .database("app")
        .collection::<Document>("items")
        .drop()
        .await
        .unwrap();
    let events = agent.wait_for(5).await;
    let ops: Vec<&str> = events[3..5]
        .iter()
        .map(|e| e["operationType"].as_str().unwrap())
        .collect();
    assert_eq!(ops, ["drop", "invalidate"]);
    insert_range(&client, 10, 12).await;
    agent.wait_for(7).await;
    let (code, events) = agent.stop(libc::SIGTERM);
    assert_eq!(code, Some(0));
    assert_eq!(seqs(&events), vec![0, 1, 2, 10, 11]);
}

/// `_id` of a canonical-JSON event's documentKey, as a comparable string.
fn key_of(event: &Value) -> String {
    event["documentKey"]["_id"].to_string()
}

/// Documents with `_id`s of three types (ints, strings, ObjectIds): `min`
/// bounds must cross types where a `$gt` filter would not.
async fn seed_mixed(client: &mongodb::Client, n: i64) -> Vec<String> {
    let coll = client.database("shop").collection::<Document>("orders");
    let mut docs = Vec::new();
    for i in 0..n {
        let id = match i % 3 {
            0 => mongodb::bson::Bson::Int64(i),
            1 => mongodb::bson::Bson::String(format!("s{i:05}")),
            _ => mongodb::bson::Bson::ObjectId(mongodb::bson::oid::ObjectId::new()),
        };
        docs.push(doc! { "_id": id, "seq": i, "secret": "hunter2" });
    }
    for chunk in docs.chunks(500) {
        coll.insert_many(chunk.to_vec()).await.unwrap();
    }
    let canonical: Vec<String> = docs
        .iter()
        .map(|d| {
            mongodb::bson::Bson::Document(doc! { "_id": d.get("_id").unwrap().clone() })
                .into_canonical_extjson()["_id"]
                .to_string()
        })
        .collect();
    canonical
}

#[tokio::test]
async fn snapshot_copies_existing_documents_then_streams_and_resumes() {
    let mongo = Mongod::start().await;
    let client = mongo.client().await;
    let ids = seed_mixed(&client, 20_000).await;
    client
        .database("shop")
        .collection::<Document>("users")
        .insert_one(doc! { "_id": "u1" })
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        dir.path(),
        &mongo.uri(),
        "database = \"shop\"\nsnapshot = \"initial\"\nsnapshot_chunk_size = 100\npipeline = '[{\"$unset\": \"fullDocument.secret\"}]'",
    );

    // First run: stopped with kill -9 part-way through the copy, once its
    // progress has been saved.
    let agent = ConsoleAgent::start(&cfg);
    let saved = eventually(Duration::from_secs(60), async || {
        let text = std::fs::read_to_string(dir.path().join("data/mongo/checkpoint.json")).ok()?;
        let saved: Value = serde_json::from_str(&text).ok()?;
        if saved["snapshot"]["last_id"].is_null() {
            tokio::time::sleep(Duration::from_millis(10)).await;
            return None;
        }
        Some(saved)
    })
    .await;
    let (_, first) = agent.stop(libc::SIGKILL);
    assert_eq!(saved["snapshot"]["done"], false, "killed mid-copy: {saved}");

    // Changes made while the copy is unfinished reach the output either as
    // snapshot records or as change events: nothing is missed.
    let orders = client.database("shop").collection::<Document>("orders");
    orders
        .insert_one(doc! { "_id": "late", "seq": -1 })
        .await
        .unwrap();
    orders
        .update_one(doc! { "_id": 0_i64 }, doc! { "$set": { "seq": 99999 } })
        .await
        .unwrap();

    let agent = ConsoleAgent::start(&cfg);
    eventually(Duration::from_secs(120), async || {
        let events = agent.events();
        events
            .iter()
            .any(|e| e["operationType"] == "update")
            .then_some(())
    })
    .await;
    let (code, second) = agent.stop(libc::SIGTERM);
    assert_eq!(code, Some(0));

    let snapshot_records = |events: &[Value]| -> Vec<Value> {
        events
            .iter()
            .filter(|e| e["operationType"] == "snapshot")
            .cloned()
            .collect()
    };
    let (s1, s2) = (snapshot_records(&first), snapshot_records(&second));
    assert!(
        s2.len() < ids.len(),
        "the second run continues the copy instead of starting over ({} records)",
        s2.len()
    );
    let seen: std::collections::HashSet<String> = s1.iter().chain(&s2).map(key_of).collect();
    for id in &ids {
        assert!(seen.contains(id), "document {id} was not copied");
    }
    assert!(
        seen.contains("\"u1\""),
        "every collection of the database is copied"
    );
    for r in s1.iter().chain(&s2) {
        assert!(
            r["fullDocument"]["secret"].is_null(),
            "pipeline redacts snapshot records: {r}"
        );
        assert!(r["fullDocument"]["_id"] == r["documentKey"]["_id"], "{r}");
    }
    // Positions grow in copy order within a collection, and sort before
    // the change events that follow the snapshot.
    let orders_tokens: Vec<String> = s2
        .iter()
        .filter(|r| r["ns"]["coll"] == "orders")
        .map(token)
        .collect();
    let mut sorted = orders_tokens.clone();
    sorted.sort();
    assert_eq!(orders_tokens, sorted);
    let streamed: Vec<&Value> = second
        .iter()
        .filter(|e| e["operationType"] != "snapshot")
        .collect();
    assert!(
        streamed.iter().any(|e| e["operationType"] == "update"),
        "the update made during the copy is streamed afterwards"
    );
    let late = s1
        .iter()
        .chain(&s2)
        .chain(streamed.iter().copied())
        .any(|e| e["documentKey"]["_id"] == "late");
    assert!(late, "a document inserted during the copy is delivered");
    let last_snapshot = s2.iter().map(token).max().unwrap();
    for e in &streamed {
        assert!(token(e) > last_snapshot, "{}", summary(e));
    }
}

#[tokio::test]
async fn snapshot_initial_only_copies_and_exits() {
    let mongo = Mongod::start().await;
    let client = mongo.client().await;
    insert_range(&client, 0, 250).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        dir.path(),
        &mongo.uri(),
        "database = \"app\"\ncollection = \"items\"\nsnapshot = \"initial_only\"",
    );
    let run = || {
        support::mongo_adls()
            .arg("--config")
            .arg(&cfg)
            .output()
            .unwrap()
    };
    let out = run();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 250);
    assert!(lines.iter().all(|l| l["operationType"] == "snapshot"));
    // Done is remembered: a second run copies nothing.
    let out = run();
    assert_eq!(out.status.code(), Some(0));
    assert!(out.stdout.is_empty());
    assert!(String::from_utf8_lossy(&out.stderr).contains("snapshot is complete"));
}

#[tokio::test]
async fn oversized_events_fail_or_are_skipped() {
    let mongo = Mongod::start().await;
    let client = mongo.client().await;
    let db = client.database("big");
    db.run_command(doc! { "create": "blobs", "changeStreamPreAndPostImages": { "enabled": true } })
        .await
        .unwrap();
    let blobs = db.collection::<Document>("blobs");
    let nine_mb = "x".repeat(9 * 1024 * 1024);
    blobs
        .insert_one(doc! { "_id": 1, "payload": &nine_mb })
        .await
        .unwrap();

    let skip_dir = tempfile::tempdir().unwrap();
    let skip_cfg = config(
        skip_dir.path(),
        &mongo.uri(),
        "database = \"big\"\non_oversized_event = \"skip\"",
    );
    let fail_dir = tempfile::tempdir().unwrap();
    let fail_cfg = config(fail_dir.path(), &mongo.uri(), "database = \"big\"");
    let skipping = ConsoleAgent::start(&skip_cfg);
    wait_started(skip_dir.path()).await;
    let mut failing = support::mongo_adls()
        .arg("--config")
        .arg(&fail_cfg)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn_tracked();
    wait_started(fail_dir.path()).await;

    // Replace: fullDocument (9 MB) + fullDocumentBeforeChange (9 MB) > 16 MB.
    blobs
        .replace_one(doc! { "_id": 1 }, doc! { "payload": &nine_mb, "v": 2 })
        .await
        .unwrap();
    blobs
        .insert_one(doc! { "_id": 2, "small": true })
        .await
        .unwrap();

    let events = eventually(Duration::from_secs(60), async || {
        let e = skipping.events();
        e.iter()
            .any(|e| e["documentKey"]["_id"]["$numberInt"] == "2")
            .then_some(e)
    })
    .await;
    let ops: Vec<&str> = events
        .iter()
        .map(|e| e["operationType"].as_str().unwrap())
        .collect();
    assert_eq!(
        ops,
        ["insert"],
        "only the small insert; the oversized replace is skipped"
    );
    let (code, _) = skipping.stop(libc::SIGTERM);
    assert_eq!(code, Some(0));

    // `fail` stops the source and the agent, naming the cause and the option.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while failing.try_wait().unwrap().is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "the failing agent kept running"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let out = failing.wait_with_output().unwrap();
    assert_ne!(out.status.code(), Some(0));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("16 MB") && stderr.contains("on_oversized_event"),
        "{stderr}"
    );
}
