//! `snapshot = "incremental"` against a real `mongod` replica set, through
//! the binary into a `file://` lake: the copy runs beside a steady stream
//! of changes, survives kill -9, writes each document's snapshot record
//! once, and the lake replayed per document is MongoDB's state.

mod support;

use std::{
    collections::{BTreeMap, HashMap},
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use mongodb::bson::{doc, Bson, Document};
use serde_json::Value;
use support::{eventually, Agent, Mongod, PipelineConfig};

/// The sink under test, writing to the `file://` lake `<dir>/lake`.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Sink {
    /// `adls_partitioned_jsonl`, two-second files.
    Jsonl,
    /// `adls_delta`, a table per collection under `raw/shop/`, committed
    /// every second.
    Delta,
}

impl Sink {
    fn table(self, lake: &Path) -> String {
        let common = format!(
            "[sinks.lake]\ninputs = [\"mongo\"]\naccount_url = \"file://{}\"\nfilesystem = \"raw\"\ncreate_filesystem = true\nencoding.extended_json = \"canonical\"\n",
            lake.display()
        );
        match self {
            Sink::Jsonl => format!("{common}type = \"adls_partitioned_jsonl\"\nfile_name = \"events-%Y%m%d-%H%M%S\"\nroll.window_secs = 2\nroll.grace_secs = 0\nbatch.timeout_secs = 0.3\n"),
            Sink::Delta => format!("{common}type = \"adls_delta\"\ncommit.interval_secs = 1\n"),
        }
    }
}

fn config(dir: &Path, mongo_uri: &str, source: &str) -> PathBuf {
    config_with_api(dir, mongo_uri, source, None)
}

/// [`config`], with the API (and `/metrics`) on `api_port`.
fn config_with_api(dir: &Path, mongo_uri: &str, source: &str, api_port: Option<u16>) -> PathBuf {
    config_into(Sink::Jsonl, dir, mongo_uri, source, api_port)
}

/// [`config_with_api`], into `sink`.
fn config_into(
    sink: Sink,
    dir: &Path,
    mongo_uri: &str,
    source: &str,
    api_port: Option<u16>,
) -> PathBuf {
    let mut config = PipelineConfig::mongo(mongo_uri)
        .data_dir(&dir.join("data"))
        .global("healthchecks.enabled = false");
    if let Some(port) = api_port {
        config = config.global(&format!("api.address = \"127.0.0.1:{port}\""));
    }
    config
        .source(source)
        .sink(&sink.table(&dir.join("lake")))
        .write(&dir.join("agent.toml"))
}

fn checkpoint(dir: &Path) -> Option<Value> {
    let text = std::fs::read_to_string(dir.join("data/mongo/checkpoint.json")).ok()?;
    serde_json::from_str(&text).ok()
}

/// The copy is complete in the saved checkpoint.
fn copy_complete(c: &Value) -> bool {
    let p = &c["incremental"];
    p.is_object()
        && p["pending"].as_array().is_some_and(Vec::is_empty)
        && p["rounds"].as_array().is_some_and(Vec::is_empty)
}

/// Seconds of the cluster time in a resume token's hex.
fn token_seconds(token: &str) -> Option<i64> {
    i64::from_str_radix(token.get(2..10)?, 16).ok()
}

/// Calls `f` with each committed file of the lake (its name and its lines,
/// parsed one at a time), so that a large lake is never held whole.
fn for_each_file(dir: &Path, f: impl FnMut(&str, &mut dyn Iterator<Item = Value>)) {
    for_each_file_of(Sink::Jsonl, dir, f)
}

/// [`for_each_file`] for `sink`: a Delta table's rows come from the data
/// files of its newest version, as `e2e/delta_checker.py` replays its log.
fn for_each_file_of(
    sink: Sink,
    dir: &Path,
    mut f: impl FnMut(&str, &mut dyn Iterator<Item = Value>),
) {
    use std::io::BufRead;
    match sink {
        Sink::Jsonl => {
            for (name, path) in lake_files(dir) {
                let file = std::io::BufReader::new(std::fs::File::open(&path).unwrap());
                let mut lines = file
                    .lines()
                    .map(|l| serde_json::from_str(&l.unwrap()).unwrap());
                f(&name, &mut lines);
            }
        }
        Sink::Delta => {
            let lake = dir.join("lake/raw");
            let mut tables: Vec<String> = std::fs::read_dir(lake.join("shop"))
                .unwrap()
                .flatten()
                .filter(|e| e.path().join("_delta_log").is_dir())
                .map(|e| format!("shop/{}", e.file_name().to_string_lossy()))
                .collect();
            tables.sort();
            for table in tables {
                for path in support::delta_files(&lake, &table) {
                    let name = path.strip_prefix(&lake).unwrap().display().to_string();
                    f(&name, &mut support::delta_events(&path));
                }
            }
        }
    }
}

/// Every committed file of the lake: its name and path.
fn lake_files(dir: &Path) -> Vec<(String, PathBuf)> {
    let root = dir.join("lake/raw");
    let mut out = BTreeMap::new();
    let mut stack = vec![root.clone()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let rel = path
                .strip_prefix(&root)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            if rel.starts_with('.') {
                continue; // staging
            }
            if path.is_dir() {
                stack.push(path);
            } else if rel.ends_with(".jsonl") {
                out.insert(rel, path);
            }
        }
    }
    out.into_iter().collect()
}

/// Every line of every committed file of the lake, by file name.
fn read_lake(dir: &Path) -> BTreeMap<String, Vec<Value>> {
    let mut out = BTreeMap::new();
    for_each_file(dir, |name, lines| {
        out.insert(name.to_string(), lines.collect());
    });
    out
}

fn position(e: &Value) -> String {
    e["_meta"]["resumeToken"].as_str().unwrap().to_string()
}

fn doc_key(e: &Value) -> (String, String) {
    (
        e["_meta"]["ns"]["coll"].as_str().unwrap().to_string(),
        e["documentKey"]["_id"].to_string(),
    )
}

/// Replays the lake per document in position order: a snapshot record,
/// insert or replace sets the document, an update applies its
/// `updateDescription` (not the looked-up `fullDocument`, so the order of
/// records and changes is what is tested), a delete removes it.
fn replay(files: &BTreeMap<String, Vec<Value>>) -> HashMap<(String, String), Value> {
    let mut events: Vec<&Value> = files.values().flatten().collect();
    events.sort_by_key(|e| position(e));
    let mut state: HashMap<(String, String), Value> = HashMap::new();
    for e in events {
        let key = doc_key(e);
        match e["_meta"]["operationType"].as_str().unwrap() {
            "snapshot" | "insert" | "replace" => {
                state.insert(key, e["fullDocument"].clone());
            }
            "update" => {
                let desc = &e["updateDescription"];
                if let Some(doc) = state.get_mut(&key).and_then(Value::as_object_mut) {
                    for (k, v) in desc["updatedFields"].as_object().unwrap() {
                        doc.insert(k.clone(), v.clone());
                    }
                    for k in desc["removedFields"].as_array().unwrap() {
                        doc.remove(k.as_str().unwrap());
                    }
                }
            }
            "delete" => {
                state.remove(&key);
            }
            other => panic!("unexpected {other}"),
        }
    }
    state
}

/// `n` documents of `coll` with `_id`s of three types and ~1 KB each.
async fn seed(client: &mongodb::Client, coll: &str, n: i64) -> Vec<Bson> {
    let c = client.database("shop").collection::<Document>(coll);
    let ids: Vec<Bson> = (0..n)
        .map(|i| match i % 3 {
            0 => Bson::Int64(i),
            1 => Bson::String(format!("s{i:06}")),
            _ => Bson::ObjectId(mongodb::bson::oid::ObjectId::new()),
        })
        .collect();
    // Made a thousand at a time: millions are seeded.
    for (n, chunk) in ids.chunks(1000).enumerate() {
        let docs = chunk.iter().enumerate().map(|(i, id)| {
            doc! { "_id": id.clone(), "seq": (n * 1000 + i) as i64, "pad": "p".repeat(1000) }
        });
        c.insert_many(docs).await.unwrap();
    }
    ids
}

/// A steady stream of changes (about 100 a second) on the seeded
/// documents of `orders` and `users` and on new ones, until `stop`.
/// Returns the seeded `_id`s (canonical JSON, per collection) it deleted.
async fn steady_changes(
    client: mongodb::Client,
    ids: HashMap<&'static str, Vec<Bson>>,
    stop: Arc<AtomicBool>,
) -> Vec<(String, String)> {
    let mut deleted = Vec::new();
    let mut n: i64 = 0;
    while !stop.load(Ordering::SeqCst) {
        for (coll, ids) in &ids {
            let c = client.database("shop").collection::<Document>(coll);
            let id = ids[rand::random_range(0..ids.len())].clone();
            let _ = match n % 7 {
                0 => c
                    .insert_one(doc! { "_id": format!("new{n}"), "seq": n })
                    .await
                    .map(drop),
                1 => c
                    .update_one(doc! { "_id": id.clone() }, doc! { "$unset": { "pad": "" } })
                    .await
                    .map(drop),
                2 if n % 21 == 2 => {
                    let r = c.delete_one(doc! { "_id": id.clone() }).await;
                    if r.as_ref().is_ok_and(|r| r.deleted_count == 1) {
                        let json = Bson::Document(doc! { "_id": id }).into_canonical_extjson();
                        deleted.push((coll.to_string(), json["_id"].to_string()));
                    }
                    r.map(drop)
                }
                _ => c
                    .update_one(
                        doc! { "_id": id },
                        doc! { "$set": { "v": n, "w": format!("x{n}") } },
                    )
                    .await
                    .map(drop),
            };
            n += 1;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    deleted
}

/// MongoDB's documents of `coll`, as the lake writes them.
async fn mongo_state(client: &mongodb::Client, coll: &str) -> HashMap<(String, String), Value> {
    use futures::TryStreamExt;
    let docs: Vec<Document> = client
        .database("shop")
        .collection::<Document>(coll)
        .find(doc! {})
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    docs.into_iter()
        .map(|d| {
            let json = Bson::Document(d).into_canonical_extjson();
            ((coll.to_string(), json["_id"].to_string()), json)
        })
        .collect()
}

/// Issue 25's acceptance run: 2,000,000 documents of 1 KB
/// (`MONGO_ADLS_SNAPSHOT_TEST_DOCS` sets another count) are copied beside
/// a steady stream of changes, through three kill -9s; the checkpoint
/// never falls more than 30 s behind, every document has one snapshot
/// record, and the lake replayed equals MongoDB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incremental_snapshot_beside_a_steady_stream_through_kill_9() {
    beside_a_steady_stream(Sink::Jsonl).await;
}

/// The same run into Delta tables: every document one snapshot row, and
/// the tables (read through `e2e/delta_checker.py`'s own log replay)
/// replayed per document equal MongoDB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incremental_snapshot_into_delta_beside_a_steady_stream_through_kill_9() {
    beside_a_steady_stream(Sink::Delta).await;
}

/// One 2,000,000-document run at a time: each needs most of a 2-core
/// machine, and its checkpoint lag is asserted.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn beside_a_steady_stream(sink: Sink) {
    let _serial = ONE_AT_A_TIME.lock().await;
    let mongo = Mongod::start().await;
    let client = mongo.client().await;
    let docs =
        std::env::var("MONGO_ADLS_SNAPSHOT_TEST_DOCS").map_or(2_000_000, |n| n.parse().unwrap());
    let started = std::time::Instant::now();
    let orders = seed(&client, "orders", docs).await;
    eprintln!("seeded {docs} documents in {:?}", started.elapsed());
    let users = seed(&client, "users", 900).await;
    let dir = support::TestDir::new();
    let cfg = config_into(
        sink,
        dir.path(),
        &mongo.uri(),
        "database = \"shop\"\nsnapshot = \"incremental\"\nsnapshot_chunk_size = 2000\nsnapshot_parallelism = 3",
        None,
    );
    let log = dir.path().join("agent.log");
    let copy_started = std::time::Instant::now();
    let mut agent = Agent::start_logged(&cfg, &log);

    let stop = Arc::new(AtomicBool::new(false));
    let writer = tokio::spawn(steady_changes(
        client.clone(),
        HashMap::from([("orders", orders.clone()), ("users", users.clone())]),
        Arc::clone(&stop),
    ));
    // The checkpoint's cluster time, sampled while the copy runs: the
    // stream must keep up with the changes (the newest is always about
    // now: the writer changes something every 20 ms).
    let max_lag = Arc::new(Mutex::new(0_i64));
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = {
        let (dir, max_lag, sampling) = (
            dir.path().to_path_buf(),
            Arc::clone(&max_lag),
            Arc::clone(&sampling),
        );
        tokio::spawn(async move {
            let mut samples = 0;
            while sampling.load(Ordering::SeqCst) {
                if let Some(t) = checkpoint(&dir)
                    .and_then(|c| c["resume_token"].as_str().and_then(token_seconds))
                {
                    let lag = chrono::Utc::now().timestamp() - t;
                    let mut m = max_lag.lock().unwrap();
                    *m = (*m).max(lag);
                    samples += 1;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            samples
        })
    };

    // kill -9 three times during the copy, each a moment after the agent
    // (re)started and saved a checkpoint of its own, so rounds are in
    // flight.
    let mut before: Option<String> = None;
    for _ in 0..3 {
        let c = eventually(Duration::from_secs(60), async || {
            let c = checkpoint(dir.path()).filter(|c| Some(c.to_string()) != before);
            if c.is_none() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            c
        })
        .await;
        tokio::time::sleep(Duration::from_millis(rand::random_range(100..300))).await;
        let now = checkpoint(dir.path()).unwrap();
        assert!(
            !copy_complete(&c) && !copy_complete(&now),
            "the copy ended before 3 kills (make it longer): {now}\n{}",
            support::log_tail(&log, 60)
        );
        agent.kill();
        before = checkpoint(dir.path()).map(|c| c.to_string());
        agent = Agent::start_logged(&cfg, &log);
    }
    eventually(Duration::from_secs(900), async || {
        let done = checkpoint(dir.path()).is_some_and(|c| copy_complete(&c));
        if !done {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        done.then_some(())
    })
    .await;
    let copied_in = copy_started.elapsed();
    sampling.store(false, Ordering::SeqCst);
    let samples = sampler.await.unwrap();
    stop.store(true, Ordering::SeqCst);
    let deleted = writer.await.unwrap();
    // The last change in the lake: every change before it is too. JSON
    // Lines files are visible once sealed, so the lake is read; a Delta
    // commit is visible once made, and the checkpoint passes a change only
    // after its commit.
    let orders_coll = client.database("shop").collection::<Document>("orders");
    let mut changes = orders_coll.watch().await.unwrap();
    orders_coll
        .insert_one(doc! { "_id": "last" })
        .await
        .unwrap();
    match sink {
        Sink::Jsonl => in_lake(dir.path(), "last").await,
        Sink::Delta => {
            use futures::StreamExt;
            let event = changes.next().await.unwrap().unwrap();
            let token = mongodb::bson::to_document(&event.id).unwrap();
            acknowledged_past(dir.path(), token.get_str("_data").unwrap()).await;
        }
    }
    assert_eq!(agent.stop(), Some(0), "{}", support::log_tail(&log, 40));

    let max_lag = *max_lag.lock().unwrap();
    eprintln!(
        "copied through 3 kills in {copied_in:?}; the checkpoint's largest lag in {samples} samples: {max_lag} s"
    );
    assert!(samples >= 3, "the checkpoint was sampled ({samples})");
    assert!(
        max_lag <= 30,
        "the checkpoint fell {max_lag} s behind the newest change during the copy"
    );

    check_lake(
        sink,
        dir.path(),
        &client,
        &[("orders", &orders), ("users", &users)],
        &deleted,
    )
    .await;
}

/// The checks of [`incremental_snapshot_beside_a_steady_stream_through_kill_9`],
/// in two passes over the lake so that millions of records need not be
/// held: every event once and each file in position order; one snapshot
/// record per seeded document (none for one deleted before its chunk was
/// read); and the lake replayed per document equals MongoDB. Documents the
/// stream changed are replayed from their events; the others, which have
/// only their snapshot record, are compared by a hash of it.
async fn check_lake(
    sink: Sink,
    dir: &Path,
    client: &mongodb::Client,
    seeded: &[(&str, &Vec<Bson>)],
    deleted: &[(String, String)],
) {
    use std::hash::{Hash, Hasher};
    let hash = |v: &Value| {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        v.to_string().hash(&mut h);
        h.finish()
    };
    // Pass 1: positions, snapshot records, and the documents with changes.
    let mut seen = std::collections::HashSet::new();
    let mut records: HashMap<(String, String), usize> = HashMap::new();
    let mut changed = std::collections::HashSet::new();
    let mut updates = 0_u64;
    for_each_file_of(sink, dir, |name, lines| {
        let mut last: Option<String> = None;
        for e in lines {
            let p = position(&e);
            assert!(
                last.as_ref().is_none_or(|l| *l < p),
                "{name}: lines out of position order at {p}"
            );
            assert!(seen.insert(p.clone()), "{p} appears twice");
            last = Some(p);
            let op = e["_meta"]["operationType"].as_str().unwrap();
            updates += u64::from(op == "update");
            if op == "snapshot" {
                *records.entry(doc_key(&e)).or_default() += 1;
            } else {
                changed.insert(doc_key(&e));
            }
        }
    });
    drop(seen);
    assert!(updates > 0, "changes streamed during the copy");
    let deleted: std::collections::HashSet<&(String, String)> = deleted.iter().collect();
    for (coll, ids) in seeded {
        for id in *ids {
            let json = Bson::Document(doc! { "_id": id.clone() }).into_canonical_extjson();
            let key = (coll.to_string(), json["_id"].to_string());
            let n = records.get(&key).copied().unwrap_or(0);
            assert!(n <= 1, "{key:?} has {n} snapshot records");
            assert!(
                n == 1 || deleted.contains(&key),
                "{key:?} has no snapshot record"
            );
        }
    }
    drop(records);
    // Pass 2: the events of changed documents, and a hash of the others.
    let mut events: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    let mut unchanged: HashMap<(String, String), u64> = HashMap::new();
    for_each_file_of(sink, dir, |name, lines| {
        for e in lines {
            let key = doc_key(&e);
            if changed.contains(&key) {
                events.entry(name.to_string()).or_default().push(e);
            } else {
                unchanged.insert(key, hash(&e["fullDocument"]));
            }
        }
    });
    let mut lake = replay(&events);
    // MongoDB's documents, read once.
    let mut in_mongo = 0_usize;
    for (coll, _) in seeded {
        use futures::TryStreamExt;
        let mut cursor = client
            .database("shop")
            .collection::<Document>(coll)
            .find(doc! {})
            .await
            .unwrap();
        while let Some(d) = cursor.try_next().await.unwrap() {
            let json = Bson::Document(d).into_canonical_extjson();
            let key = (coll.to_string(), json["_id"].to_string());
            in_mongo += 1;
            match lake.remove(&key) {
                Some(replayed) => assert_eq!(replayed, json, "{key:?} differs"),
                None => assert_eq!(unchanged.remove(&key), Some(hash(&json)), "{key:?} differs"),
            }
        }
    }
    assert!(
        lake.is_empty() && unchanged.is_empty(),
        "the lake holds {} documents MongoDB does not (of {in_mongo})",
        lake.len() + unchanged.len()
    );
}

/// Waits until the saved checkpoint is at or past the change at `token`
/// (a resume token's `_data`): the sink acknowledged it and what came
/// before.
async fn acknowledged_past(dir: &Path, token: &str) {
    eventually(Duration::from_secs(120), async || {
        let saved = checkpoint(dir)?["resume_token"].as_str()?.to_string();
        let past = saved.as_str() >= token;
        if !past {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        past.then_some(())
    })
    .await;
}

/// Waits until the document `_id` `id` has an event in the lake.
async fn in_lake(dir: &Path, id: &str) {
    use std::io::BufRead;
    let quoted = format!("\"{id}\"");
    eventually(Duration::from_secs(60), async || {
        // Only lines that name `id` are parsed: the lake may be large.
        let found = lake_files(dir).iter().any(|(_, path)| {
            let file = std::io::BufReader::new(std::fs::File::open(path).unwrap());
            file.lines().any(|l| {
                let l = l.unwrap();
                l.contains(&quoted)
                    && serde_json::from_str::<Value>(&l).unwrap()["documentKey"]["_id"] == id
            })
        });
        if !found {
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        found.then_some(())
    })
    .await;
}

/// Snapshot records per document of the lake, by (collection, `_id`).
fn snapshot_records(files: &BTreeMap<String, Vec<Value>>) -> HashMap<(String, String), usize> {
    let mut records = HashMap::new();
    for e in files.values().flatten() {
        if e["_meta"]["operationType"] == "snapshot" {
            *records.entry(doc_key(e)).or_default() += 1;
        }
    }
    records
}

/// Waits until the saved checkpoint's copy is complete with `coll` copied.
async fn copied(dir: &Path, coll: &str) {
    eventually(Duration::from_secs(120), async || {
        let c = checkpoint(dir)?;
        let done = copy_complete(&c)
            && c["incremental"]["copied"]
                .as_array()
                .is_some_and(|a| a.iter().any(|n| n == coll));
        if !done {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        done.then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collection_added_to_the_scope_is_backfilled_alone() {
    let mongo = Mongod::start().await;
    let client = mongo.client().await;
    seed(&client, "a", 2_000).await;
    seed(&client, "b", 1_500).await;
    let dir = tempfile::tempdir().unwrap();
    let options = |colls: &str| {
        format!("database = \"shop\"\ncollections = [{colls}]\nsnapshot = \"incremental\"\nsnapshot_chunk_size = 300\npipeline = '[{{\"$unset\": \"fullDocument.pad\"}}]'")
    };
    let log = dir.path().join("agent.log");
    let cfg = config(dir.path(), &mongo.uri(), &options("\"a\""));
    let agent = Agent::start_logged(&cfg, &log);
    copied(dir.path(), "shop.a").await;
    // A change after the copy moves the checkpoint past the copy's
    // positions, so a second copy of `a` would not be taken for a replay.
    let before = checkpoint(dir.path()).unwrap()["resume_token"].clone();
    client
        .database("shop")
        .collection::<Document>("a")
        .update_one(doc! { "_id": 0_i64 }, doc! { "$set": { "moved": true } })
        .await
        .unwrap();
    eventually(Duration::from_secs(60), async || {
        let moved = checkpoint(dir.path()).is_some_and(|c| c["resume_token"] != before);
        if !moved {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        moved.then_some(())
    })
    .await;
    assert_eq!(agent.stop(), Some(0), "{}", support::log_tail(&log, 40));

    let cfg = config(dir.path(), &mongo.uri(), &options("\"a\", \"b\""));
    let agent = Agent::start_logged(&cfg, &log);
    copied(dir.path(), "shop.b").await;
    client
        .database("shop")
        .collection::<Document>("b")
        .insert_one(doc! { "_id": "last" })
        .await
        .unwrap();
    in_lake(dir.path(), "last").await;
    assert_eq!(agent.stop(), Some(0), "{}", support::log_tail(&log, 40));

    let files = read_lake(dir.path());
    // The user's `pipeline` applies to snapshot records as to changes.
    assert!(
        files
            .values()
            .flatten()
            .all(|e| e["fullDocument"].get("pad").is_none()),
        "`pipeline` redacted every record"
    );
    let records = snapshot_records(&files);
    for (coll, n) in [("a", 2_000), ("b", 1_500)] {
        let of_coll: Vec<usize> = records
            .iter()
            .filter(|((c, _), _)| c == coll)
            .map(|(_, n)| *n)
            .collect();
        assert_eq!(of_coll.len(), n, "every document of {coll} copied");
        assert!(
            of_coll.iter().all(|n| *n == 1),
            "{coll} copied once, not again"
        );
    }
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("1 collection(s) in scope were never copied")
            && text.contains("collections=shop.b"),
        "the second start names the added collection: {}",
        support::log_tail(&log, 40)
    );
}

/// A collection whose `_id`s cannot be ordered (embedded documents) is left
/// out of the copy, logged, and listed by `state show`; the other
/// collections are copied and its changes still stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collection_with_unorderable_ids_is_left_out_and_still_streams() {
    let mongo = Mongod::start().await;
    let client = mongo.client().await;
    seed(&client, "good", 500).await;
    let bad = client.database("shop").collection::<Document>("bad");
    let docs: Vec<Document> = (0..50).map(|i| doc! { "_id": { "k": i } }).collect();
    bad.insert_many(docs).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        dir.path(),
        &mongo.uri(),
        "database = \"shop\"\nsnapshot = \"incremental\"\nsnapshot_chunk_size = 100",
    );
    let log = dir.path().join("agent.log");
    let agent = Agent::start_logged(&cfg, &log);
    copied(dir.path(), "shop.good").await;
    bad.insert_one(doc! { "_id": "last" }).await.unwrap();
    in_lake(dir.path(), "last").await;
    assert_eq!(agent.stop(), Some(0), "{}", support::log_tail(&log, 40));

    let records = snapshot_records(&read_lake(dir.path()));
    assert_eq!(records.keys().filter(|(c, _)| c == "good").count(), 500);
    assert!(
        !records.keys().any(|(c, _)| c == "bad"),
        "nothing of bad is copied"
    );
    let c = checkpoint(dir.path()).unwrap();
    assert_eq!(
        c["incremental"]["skipped"],
        serde_json::json!(["shop.bad"]),
        "{c}"
    );
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("shop.bad is left out of the snapshot") && text.contains("cannot be ordered"),
        "{}",
        support::log_tail(&log, 40)
    );
    let shown = support::state_show(&cfg);
    assert!(
        shown.contains("left out of the snapshot (its _ids cannot be ordered): shop.bad"),
        "{shown}"
    );
}

/// `mongo-adls snapshot <collection>` against a running agent.
fn request_snapshot(cfg: &Path, colls: &[&str]) -> String {
    let out = support::mongo_adls()
        .args(["snapshot", "-c"])
        .arg(cfg)
        .args(colls)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "mongo-adls snapshot failed: {text}");
    text
}

/// `mongodb_change_stream_snapshot_<name>` of `collection` on the agent's
/// `/metrics`.
fn snapshot_gauge(api_port: u16, name: &str, collection: &str) -> Option<f64> {
    let body = support::http_get(api_port, "/metrics")?;
    let metric = format!("mongodb_change_stream_snapshot_{name}{{");
    let label = format!("collection=\"{collection}\"");
    body.lines()
        .find(|l| l.starts_with(&metric) && l.contains(&label))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

/// Waits until `coll`'s documents have `n` snapshot records each in the lake.
async fn records_each(dir: &Path, coll: &str, docs: usize, n: usize) {
    eventually(Duration::from_secs(120), async || {
        let records = snapshot_records(&read_lake(dir));
        let of_coll: Vec<usize> = records
            .iter()
            .filter(|((c, _), _)| c == coll)
            .map(|(_, n)| *n)
            .collect();
        let done = of_coll.len() == docs && of_coll.iter().all(|m| *m >= n);
        if !done {
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        done.then_some(())
    })
    .await;
}

/// A pipeline that streams only (`snapshot = "off"`) is asked, while it
/// runs, to copy one collection: through a kill -9 in the middle of that
/// copy, each of its documents gets exactly one record; a second request
/// copies it once more; the other collection is never copied; the signal
/// collection's events stay out of the lake; and the lake replayed equals
/// MongoDB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_request_copies_one_collection_of_a_running_pipeline() {
    let mongo = Mongod::start().await;
    let client = mongo.client().await;
    seed(&client, "a", 500).await;
    seed(&client, "b", 20_000).await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("agent.log");
    let api = support::free_port();
    let cfg = config_with_api(
        dir.path(),
        &mongo.uri(),
        "database = \"shop\"\ncollections = [\"a\", \"b\"]\nsnapshot = \"off\"\nsignal_collection = \"signals\"\nsnapshot_chunk_size = 500\nsnapshot_parallelism = 2\ncheckpoint_interval_ms = 100",
        Some(api),
    );
    let mut agent = Agent::start_logged(&cfg, &log);
    // The stream is open (from now) once the first checkpoint is written.
    eventually(Duration::from_secs(60), async || {
        let open = checkpoint(dir.path()).is_some();
        if !open {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        open.then_some(())
    })
    .await;
    let b = client.database("shop").collection::<Document>("b");
    b.insert_one(doc! { "_id": "first" }).await.unwrap();
    in_lake(dir.path(), "first").await;
    assert!(
        snapshot_records(&read_lake(dir.path())).is_empty(),
        "snapshot = \"off\" copies nothing unasked"
    );

    // A typo is refused, not "copied" empty.
    let typo = support::mongo_adls()
        .args(["snapshot", "-c"])
        .arg(&cfg)
        .arg("bb")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&typo.stderr);
    assert!(!typo.status.success() && stderr.contains("bb"), "{stderr}");
    let said = request_snapshot(&cfg, &["b"]);
    assert!(said.contains("shop.b"), "{said}");
    // Killed once the copy of b is under way, then restarted.
    eventually(Duration::from_secs(60), async || {
        let started = checkpoint(dir.path()).is_some_and(|c| {
            c["incremental"]["rounds"]
                .as_array()
                .is_some_and(|r| !r.is_empty())
        });
        if !started {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        started.then_some(())
    })
    .await;
    agent.kill();
    // `state show` follows the copy: what was delivered of b, against
    // MongoDB's estimate.
    let shown = support::state_show(&cfg);
    assert!(
        shown.contains("shop.b: ") && shown.contains("of about 20001 delivered"),
        "{shown}"
    );
    let agent = Agent::start_logged(&cfg, &log);
    b.update_one(doc! { "_id": 0_i64 }, doc! { "$set": { "after": 1 } })
        .await
        .unwrap();
    records_each(dir.path(), "b", 20_001, 1).await;
    copied(dir.path(), "shop.b").await;
    // The gauges count what was delivered before the kill and read after
    // it: every document once, in 500-document chunks.
    let gauge = |name: &str| snapshot_gauge(api, name, "shop.b");
    assert_eq!(gauge("documents_read"), Some(20_001.0));
    assert_eq!(gauge("documents_estimated"), Some(20_001.0));
    assert!(
        gauge("chunks_done").is_some_and(|n| n >= 40.0),
        "{:?}",
        gauge("chunks_done")
    );
    assert_eq!(gauge("remaining_seconds"), Some(0.0));

    // Asked again: b is copied once more, a still never.
    request_snapshot(&cfg, &["shop.b"]);
    records_each(dir.path(), "b", 20_001, 2).await;
    b.update_one(doc! { "_id": 3_i64 }, doc! { "$unset": { "pad": "" } })
        .await
        .unwrap();
    b.insert_one(doc! { "_id": "last" }).await.unwrap();
    in_lake(dir.path(), "last").await;
    assert_eq!(agent.stop(), Some(0), "{}", support::log_tail(&log, 40));

    let files = read_lake(dir.path());
    let records = snapshot_records(&files);
    let of = |coll: &str| -> Vec<usize> {
        records
            .iter()
            .filter(|((c, _), _)| c == coll)
            .map(|(_, n)| *n)
            .collect()
    };
    assert!(of("a").is_empty(), "a was not asked for");
    let b_records = of("b");
    assert_eq!(b_records.len(), 20_001);
    assert!(
        b_records.iter().all(|n| *n == 2),
        "each document of b has one record per request: {:?}",
        b_records
            .iter()
            .filter(|n| **n != 2)
            .take(5)
            .collect::<Vec<_>>()
    );
    assert!(
        files
            .values()
            .flatten()
            .all(|e| e["_meta"]["ns"]["coll"] != "signals"),
        "signal events are not written to the lake"
    );
    let replayed = replay(&files);
    let mongo_docs = mongo_state(&client, "b").await;
    for (key, doc) in &mongo_docs {
        assert_eq!(replayed.get(key), Some(doc), "document {key:?}");
    }
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("Snapshot request: copying 1 collection(s)"),
        "{}",
        support::log_tail(&log, 40)
    );
}

/// Under a sustained backlog (a sink slower than the stream, so events
/// are always queued) the copy still goes on: rounds run between
/// hand-overs, not only once the backlog is drained. Checked by where the
/// records land: many before the backlog's last change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_copy_goes_on_under_a_sustained_backlog() {
    let mongo = Mongod::start().await;
    let client = mongo.client().await;
    seed(&client, "b", 5_000).await;
    let start_at = chrono::Utc::now() - chrono::Duration::seconds(1);
    // The backlog: 100,000 small changes, read from `start_at` at a sink
    // rate of 20,000 a second (five seconds of queued events).
    let z = client.database("shop").collection::<Document>("z");
    for chunk in 0..20 {
        let docs: Vec<Document> = (0..5_000)
            .map(|i| doc! { "_id": chunk * 5_000 + i })
            .collect();
        z.insert_many(docs).await.unwrap();
    }
    z.insert_one(doc! { "_id": "last" }).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("agent.log");
    let lake = dir.path().join("lake");
    let cfg = PipelineConfig::mongo(&mongo.uri())
        .data_dir(&dir.path().join("data"))
        .global("healthchecks.enabled = false")
        .source(&format!(
            "database = \"shop\"\ncollections = [\"b\", \"z\"]\nsnapshot = \"incremental\"\nsnapshot_chunk_size = 500\nsnapshot_parallelism = 1\nstart_at = \"{}\"",
            start_at.to_rfc3339()
        ))
        .sink(&format!(
            "{}\n[sinks.slow]\ntype = \"blackhole\"\ninputs = [\"mongo\"]\nrate = 20000\n",
            Sink::Jsonl.table(&lake)
        ))
        .write(&dir.path().join("agent.toml"));
    let agent = Agent::start_logged(&cfg, &log);
    in_lake(dir.path(), "last").await;
    records_each(dir.path(), "b", 5_000, 1).await;
    assert_eq!(agent.stop(), Some(0), "{}", support::log_tail(&log, 40));

    let files = read_lake(dir.path());
    let events = files.values().flatten();
    let last = events
        .clone()
        .find(|e| e["documentKey"]["_id"] == "last")
        .map(position)
        .unwrap();
    let before = events
        .filter(|e| e["_meta"]["operationType"] == "snapshot" && e["_meta"]["ns"]["coll"] == "b")
        .filter(|e| position(e) < last)
        .count();
    assert!(
        before >= 1_000,
        "only {before} records of b were placed before the backlog's last change: the copy waited for the backlog"
    );
}
