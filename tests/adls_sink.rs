//! The `adls_partitioned_jsonl` sink end to end: real `mongod` changes into
//! a real Azurite, read back through the official Blob SDK.

mod support;

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use mongodb::bson::{doc, oid::ObjectId, Decimal128, Document};
use serde_json::Value;
use support::{
    eventually, with_options, Agent, Azurite, Lake, Listed, Mongod, PipelineConfig, AZURITE_KEY,
};

/// A test agent: the shop database into one sink with short windows and
/// quick retries; `sink_options` adds options or overrides those defaults.
fn agent_config(
    dir: &Path,
    name: &str,
    mongo_uri: &str,
    account_url: &str,
    sink_options: &str,
) -> PathBuf {
    let defaults = [
        "create_filesystem = true",
        "file_name = \"events-%Y%m%d-%H%M%S\"",
        "roll.window_secs = 2",
        "roll.grace_secs = 0",
        "batch.timeout_secs = 0.3",
        "request.retry_initial_backoff_secs = 0.05",
        "request.retry_max_backoff_secs = 1",
    ];
    PipelineConfig::mongo(mongo_uri)
        .data_dir(&dir.join(format!("data-{name}")))
        .source("database = \"shop\"")
        .sink(&format!(
            "[sinks.lake]\ntype = \"adls_partitioned_jsonl\"\ninputs = [\"mongo\"]\naccount_url = \"{account_url}\"\nfilesystem = \"{name}\"\n{}",
            with_options(&defaults, sink_options)
        ))
        .write(&dir.join(format!("{name}.toml")))
}

/// The source's saved checkpoint of the agent `name` (see `agent_config`).
fn source_checkpoint(dir: &Path, name: &str) -> Option<String> {
    std::fs::read_to_string(dir.join(format!("data-{name}/mongo/checkpoint.json"))).ok()
}

/// Waits until the agent `name` has opened its change stream, instead of a
/// fixed time: on a quiet stream it then saves an idle checkpoint (a new
/// one, when `before`, left by a previous run, is given), so writes made
/// afterwards are seen.
async fn stream_open(dir: &Path, name: &str, before: Option<String>) {
    eventually(Duration::from_secs(60), async || {
        source_checkpoint(dir, name).filter(|now| Some(now) != before.as_ref())
    })
    .await;
}

/// `mongo-adls validate -c <cfg>`: its exit code and stderr.
fn validate(cfg: &Path) -> (Option<i32>, String) {
    let out = support::mongo_adls()
        .args(["validate", "-c"])
        .arg(cfg)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn shared_key() -> String {
    format!("auth.shared_key = \"{AZURITE_KEY}\"")
}

/// Inserts, updates, replaces and deletes: 480 change events in all.
async fn workload(client: &mongodb::Client) -> usize {
    let orders = client.database("shop").collection::<Document>("orders");
    let users = client.database("shop").collection::<Document>("users");
    let mut ids = Vec::new();
    for i in 0..300 {
        let id = ObjectId::new();
        ids.push(id);
        orders
            .insert_one(doc! {
                "_id": id, "seq": i as i64, "price": "9.99".parse::<Decimal128>().unwrap(),
                "at": mongodb::bson::DateTime::from_millis(1_723_316_400_123), "tags": ["a", { "n": [1, 2] }],
            })
            .await
            .unwrap();
        if i % 60 == 0 {
            tokio::time::sleep(Duration::from_millis(700)).await;
        }
    }
    for id in &ids[..50] {
        orders
            .update_one(doc! { "_id": id }, doc! { "$inc": { "seq": 1000 } })
            .await
            .unwrap();
    }
    for id in &ids[50..60] {
        orders
            .replace_one(doc! { "_id": id }, doc! { "replaced": true })
            .await
            .unwrap();
    }
    for id in &ids[60..80] {
        orders.delete_one(doc! { "_id": id }).await.unwrap();
    }
    for i in 0..100 {
        users
            .insert_one(doc! { "_id": i, "name": format!("user {i}") })
            .await
            .unwrap();
    }
    480
}

fn rolling_name_ok(name: &str, ext: &str) -> bool {
    let re = regex::Regex::new(&format!(
        r"^shop/(orders|users)/year=\d{{4}}/month=\d\d/day=\d\d/hour=\d\d/events-\d{{8}}-\d{{6}}(-part-\d{{4}})?{}$",
        regex::escape(ext)
    ))
    .unwrap();
    re.is_match(name)
}

/// The `snowflake-sql` file pattern, derived from the sink's config, matches
/// every file the sink wrote, and its partition regex extracts the time
/// fields the file name was rendered from (`events-%Y%m%d-%H%M%S`, folders
/// `year=/month=/day=/hour=`).
fn assert_snowflake_patterns_match<'a>(config: &Path, names: impl Iterator<Item = &'a String>) {
    let config = mongo_adls::config::load_from_paths(&[config.to_path_buf()], true).unwrap();
    let (_, sink) = mongo_adls::snowflake::find_sink(&config, None).unwrap();
    let pattern = sink.file_pattern().unwrap();
    let whole = regex::Regex::new(&format!("^(?:{})$", pattern.copy_pattern())).unwrap();
    let extract = regex::Regex::new(&pattern.extract_regex()).unwrap();
    let folders = regex::Regex::new(r"year=(\d{4})/month=(\d\d)/day=(\d\d)/hour=(\d\d)/").unwrap();
    let stamp = regex::Regex::new(r"events-(\d{4})(\d\d)(\d\d)-(\d\d)(\d\d)(\d\d)").unwrap();
    let mut count = 0;
    for name in names {
        count += 1;
        assert!(whole.is_match(name), "PATTERN misses {name}");
        let caps = extract.captures(name).unwrap();
        let got: HashMap<&str, &str> = pattern
            .columns
            .iter()
            .map(|c| (c.name, caps.get(c.group).unwrap().as_str()))
            .collect();
        let f = folders.captures(name).unwrap();
        for (i, field) in ["year", "month", "day", "hour"].iter().enumerate() {
            assert_eq!(got[field], &f[i + 1], "{field} of {name}");
        }
        if let Some(s) = stamp.captures(name) {
            assert_eq!(got["minute"], &s[5], "{name}");
            assert_eq!(got["second"], &s[6], "{name}");
        }
    }
    assert!(count > 0);
    assert!(!whole.is_match("_mongo_adls_healthcheck"));
}

/// Every line of every object, by object name.
async fn read_all(lake: &Lake) -> BTreeMap<String, Vec<Value>> {
    let mut out = BTreeMap::new();
    for o in lake.list().await {
        if o.name.starts_with("_mongo_adls") {
            continue;
        }
        out.insert(o.name.clone(), lake.lines(&o.name).await);
    }
    out
}

fn total_lines(files: &BTreeMap<String, Vec<Value>>) -> usize {
    files.values().map(Vec::len).sum()
}

fn token(v: &Value) -> String {
    v["_meta"]["resumeToken"].as_str().unwrap().to_string()
}

/// `%XX` escapes decoded (the sink percent-encodes unsafe namespace
/// characters in folder names).
fn percent_decode(segment: &str) -> String {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| u8::from_str_radix(std::str::from_utf8(h).ok()?, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).unwrap()
}

/// Every line lies in its own folder: `<db>/<coll>` (percent-decoded) is
/// the line's namespace, `year=/month=/day=/hour=` those of the start of
/// its `window_secs` window (by cluster time, UTC), and a file name with a
/// time (`events-YYYYMMDD-HHMMSS`) names that window's start. Without this,
/// every event could land in one folder and the other checks would pass.
fn assert_in_own_folders(files: &BTreeMap<String, Vec<Value>>, window_secs: i64) {
    let stamp_re = regex::Regex::new(r"^events-(\d{8}-\d{6})(-part-\d+)?\.jsonl").unwrap();
    for (name, lines) in files {
        let segments: Vec<&str> = name.split('/').collect();
        assert_eq!(segments.len(), 7, "{name}");
        for line in lines {
            let meta = &line["_meta"];
            let ns = (
                meta["ns"]["db"].as_str().unwrap_or("_none"),
                meta["ns"]["coll"].as_str().unwrap_or("_none"),
            );
            assert_eq!(
                (percent_decode(segments[0]), percent_decode(segments[1])),
                (ns.0.to_string(), ns.1.to_string()),
                "{name}: a line of another namespace"
            );
            let t = meta["clusterTime"]["$timestamp"]["t"]
                .as_i64()
                .unwrap_or_else(|| panic!("{name}: no cluster time in {meta}"));
            let start = chrono::DateTime::from_timestamp(t - t.rem_euclid(window_secs), 0).unwrap();
            assert_eq!(
                &segments[2..6],
                [
                    start.format("year=%Y").to_string(),
                    start.format("month=%m").to_string(),
                    start.format("day=%d").to_string(),
                    start.format("hour=%H").to_string(),
                ],
                "{name}: a line of time {t} in another hour's folder"
            );
            if let Some(stamp) = stamp_re.captures(segments[6]) {
                assert_eq!(
                    &stamp[1],
                    start.format("%Y%m%d-%H%M%S").to_string(),
                    "{name}: a line of time {t} in another window's file"
                );
            }
        }
    }
}

/// Exactly once and in order: no resume token twice, lines in stream order.
fn assert_exactly_once_in_order(files: &BTreeMap<String, Vec<Value>>, expected: usize) {
    let mut seen = HashSet::new();
    for (name, lines) in files {
        let tokens: Vec<String> = lines.iter().map(token).collect();
        let mut sorted = tokens.clone();
        sorted.sort();
        assert_eq!(tokens, sorted, "{name}: lines out of stream order");
        for t in tokens {
            assert!(seen.insert(t.clone()), "event {t} appears twice");
        }
    }
    assert_eq!(seen.len(), expected, "every change exactly once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn layout_modes_and_immutable_files() {
    let mongo = Mongod::start().await;
    let azurite = Azurite::start();
    let dir = tempfile::tempdir().unwrap();
    let url = azurite.account_url();
    let uri = mongo.uri();
    let variants = [
        ("relaxed", ".jsonl", shared_key()),
        (
            "canonical",
            ".jsonl.gz",
            format!(
                "{}\nencoding.extended_json = \"canonical\"\ncompression = \"gzip\"",
                shared_key()
            ),
        ),
        (
            "simplified",
            ".jsonl",
            format!(
                "{}\nencoding.extended_json = \"simplified\"\nroll.max_bytes = 4000",
                shared_key()
            ),
        ),
        (
            "perevent",
            ".jsonl",
            format!("{}\nmode = \"per_event\"", shared_key()),
        ),
    ];
    let mut agents = Vec::new();
    let mut configs = Vec::new();
    for (name, _, options) in &variants {
        let cfg = agent_config(dir.path(), name, &uri, &url, options);
        agents.push(Agent::start(&cfg));
        configs.push(cfg);
    }
    let lakes: Vec<Lake> = variants
        .iter()
        .map(|(name, ..)| Lake::new(&azurite, name))
        .collect();
    // Wait for the streams to be open (healthchecks create the containers).
    for (name, ..) in &variants {
        stream_open(dir.path(), name, None).await;
    }

    // Watch the on_seal lake while the workload runs: a listed file never
    // changes (same ETag, same size) and is complete when first seen.
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let lake = Lake::new(&azurite, "relaxed");
        let done = std::sync::Arc::clone(&done);
        tokio::spawn(async move {
            let mut first: HashMap<String, Listed> = HashMap::new();
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                for o in lake.list().await {
                    if let Some(prev) = first.get(&o.name) {
                        assert_eq!(prev, &o, "a visible file changed");
                    } else {
                        first.insert(o.name.clone(), o);
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            first
        })
    };

    let client = mongo.client().await;
    let expected = workload(&client).await;
    for ((name, ..), lake) in variants.iter().zip(&lakes) {
        eventually(Duration::from_secs(90), async || {
            let done = if *name == "perevent" {
                lake.list().await.len() >= expected
            } else {
                let names: Vec<String> = lake.list().await.into_iter().map(|o| o.name).collect();
                let mut lines = 0;
                for n in names.iter().filter(|n| !n.starts_with("_mongo_adls")) {
                    lines += lake.lines(n).await.len();
                }
                lines >= expected
            };
            if !done {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            done.then_some(())
        })
        .await;
    }
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    let first_seen = watcher.await.unwrap();
    assert!(!first_seen.is_empty());
    for agent in agents {
        assert_eq!(agent.stop(), Some(0));
    }

    let per_event_name = regex::Regex::new(
        r"^shop/(orders|users)/year=\d{4}/month=\d\d/day=\d\d/hour=\d\d/event-[0-9A-F]+-(insert|update|replace|delete)-[0-9a-f]{16}\.jsonl$",
    )
    .unwrap();
    let stamp_re = regex::Regex::new(r"events-(\d{8})-(\d{6})").unwrap();
    for (((name, ext, _), lake), cfg) in variants.iter().zip(&lakes).zip(&configs) {
        let files = read_all(lake).await;
        assert_exactly_once_in_order(&files, expected);
        assert_in_own_folders(&files, 2);
        assert_snowflake_patterns_match(cfg, files.keys());
        let all: Vec<&Value> = files.values().flatten().collect();
        let ops: HashMap<&str, usize> = all.iter().fold(HashMap::new(), |mut m, v| {
            *m.entry(v["_meta"]["operationType"].as_str().unwrap())
                .or_default() += 1;
            m
        });
        assert_eq!(ops.get("insert"), Some(&400), "{name}");
        assert_eq!(ops.get("update"), Some(&50), "{name}");
        assert_eq!(ops.get("replace"), Some(&10), "{name}");
        assert_eq!(ops.get("delete"), Some(&20), "{name}");
        let insert = all
            .iter()
            .find(|v| {
                v["_meta"]["operationType"] == "insert" && v["_meta"]["ns"]["coll"] == "orders"
            })
            .unwrap();
        let doc = &insert["fullDocument"];
        match *name {
            "relaxed" | "perevent" => {
                assert_eq!(doc["price"], serde_json::json!({"$numberDecimal": "9.99"}));
                assert_eq!(
                    doc["at"],
                    serde_json::json!({"$date": "2024-08-10T19:00:00.123Z"})
                );
                assert!(doc["seq"].is_number());
            }
            "canonical" => {
                assert_eq!(
                    doc["at"],
                    serde_json::json!({"$date": {"$numberLong": "1723316400123"}})
                );
                assert!(doc["seq"]["$numberLong"].is_string());
            }
            "simplified" => {
                assert!(doc["_id"].is_string());
                assert_eq!(doc["price"], "9.99");
                assert_eq!(doc["at"], "2024-08-10T19:00:00.123Z");
                assert_eq!(doc["tags"][1]["n"][1], 2);
            }
            _ => unreachable!(),
        }
        if *name == "perevent" {
            assert_eq!(files.len(), expected, "one object per event");
            for n in files.keys() {
                assert!(per_event_name.is_match(n), "{n}");
            }
            continue;
        }
        for (n, lines) in &files {
            assert!(rolling_name_ok(n, ext), "{name}: unexpected object {n}");
            // Every line belongs to the file's 2-second window.
            let stamp = stamp_re.captures(n).unwrap();
            let start = chrono::NaiveDateTime::parse_from_str(
                &format!("{}{}", &stamp[1], &stamp[2]),
                "%Y%m%d%H%M%S",
            )
            .unwrap()
            .and_utc();
            for l in lines {
                let t: chrono::DateTime<chrono::Utc> =
                    l["_meta"]["eventTime"].as_str().unwrap().parse().unwrap();
                assert!(
                    t >= start && t < start + chrono::Duration::seconds(2),
                    "{n}: event at {t}"
                );
            }
        }
        assert!(files.len() > 2, "{name}: several windows");
        if *name == "simplified" {
            assert!(
                files.keys().any(|n| n.contains("-part-0001")),
                "size rolls add part numbers"
            );
        }
    }
    // The watcher saw complete files only: what it first saw is what is there now.
    let final_relaxed = lakes[0].list().await;
    for o in final_relaxed {
        if let Some(first) = first_seen.get(&o.name) {
            assert_eq!(first, &o);
        }
    }
}

/// Paths of all files under `root`, relative to it.
fn files_under(root: &Path) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            match entry.metadata() {
                Ok(m) if m.is_dir() => stack.push(path),
                Ok(m) => out.push((
                    path.strip_prefix(root)
                        .unwrap()
                        .to_string_lossy()
                        .into_owned(),
                    m.len(),
                )),
                Err(_) => {} // removed while listing
            }
        }
    }
    out
}

struct SetOnDrop(std::sync::Arc<std::sync::atomic::AtomicBool>);

impl Drop for SetOnDrop {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// The `file://` lake end to end, under kill -9 and a storage fault:
/// exactly once, a sealed file never changes (its content hash, checked
/// every 20 ms), and nothing in progress (staged blocks, commit temp files)
/// matches the `snowflake-sql` file pattern, from the lake root or the
/// filesystem folder. The fault: a plain file where the `shop` folder goes,
/// so every commit fails (ENOTDIR; root ignores permissions, so a read-only
/// folder would not do) until it is removed, while staging goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_lake_exactly_once_and_in_progress_files_never_match() {
    let mongo = Mongod::start().await;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("lake-root");
    let url = format!("file://{}", root.display());
    let cfg = agent_config(
        dir.path(),
        "local",
        &mongo.uri(),
        &url,
        "request.retry_attempts = 1000",
    );
    let blocker = root.join("local/shop");
    std::fs::create_dir_all(blocker.parent().unwrap()).unwrap();
    std::fs::write(&blocker, "not a folder").unwrap();
    let log = dir.path().join("agent.log");
    let mut agent = Agent::start_logged(&cfg, &log);
    let config = mongo_adls::config::load_from_paths(std::slice::from_ref(&cfg), true).unwrap();
    let (_, sink) = mongo_adls::snowflake::find_sink(&config, None).unwrap();
    let pattern = sink.file_pattern().unwrap();
    let whole = regex::Regex::new(&format!("^(?:{})$", pattern.copy_pattern())).unwrap();
    stream_open(dir.path(), "local", None).await;

    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // A failing assertion below ends the watcher too (the runtime waits
    // for blocking tasks when it shuts down).
    let _stop_watcher = SetOnDrop(std::sync::Arc::clone(&done));
    let watcher = {
        let (root, done, whole) = (root.clone(), std::sync::Arc::clone(&done), whole.clone());
        tokio::task::spawn_blocking(move || {
            use sha2::Digest as _;
            let mut sealed: HashMap<String, Vec<u8>> = HashMap::new();
            let mut in_progress = HashSet::new();
            // One last look after `done`: files that appeared just before
            // it are seen too.
            loop {
                let finished = done.load(std::sync::atomic::Ordering::SeqCst);
                for (path, len) in files_under(&root) {
                    let in_fs = path.strip_prefix("local/");
                    let visible = in_fs.is_some_and(|p| whole.is_match(p));
                    if visible {
                        let Ok(bytes) = std::fs::read(root.join(&path)) else {
                            panic!("{path} ({len} bytes) vanished after it appeared");
                        };
                        let hash = sha2::Sha256::digest(&bytes).to_vec();
                        let first = sealed.entry(path.clone()).or_insert_with(|| hash.clone());
                        assert!(*first == hash, "{path} changed after it appeared");
                    } else {
                        assert!(!whole.is_match(&path), "in-progress {path} matches");
                        in_progress.insert(path);
                    }
                }
                if finished {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            (sealed, in_progress)
        })
    };
    // The load (480 changes, then 500 in 20 paced rounds) runs while the
    // agent is killed at least 4 times; the fault ends at the first kill
    // after a commit failed on it.
    let client = mongo.client().await;
    let load = tokio::spawn(async move {
        let n = workload(&client).await;
        let paced = client.database("shop").collection::<Document>("paced");
        for round in 0..20 {
            let docs: Vec<Document> = (0..25).map(|i| doc! { "_id": round * 25 + i }).collect();
            paced.insert_many(docs).await.unwrap();
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
        n + 500
    });
    let mut kills = 0;
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let mut blocked = true;
    while !load.is_finished() || kills < 4 || blocked {
        assert!(
            std::time::Instant::now() < deadline,
            "no commit failed on the fault: {}",
            std::fs::read_to_string(&log).unwrap()
        );
        let pause = rand::random_range(300..800);
        tokio::time::sleep(Duration::from_millis(pause)).await;
        if blocked && kills >= 4 && load.is_finished() {
            // On a slow machine the kills may all have come before any
            // commit: this copy runs until one fails on the fault.
            eventually(Duration::from_secs(60), async || {
                std::fs::read_to_string(&log)
                    .unwrap()
                    .contains("Not a directory")
                    .then_some(())
            })
            .await;
        }
        agent.kill();
        kills += 1;
        if blocked
            && std::fs::read_to_string(&log)
                .unwrap()
                .contains("Not a directory")
        {
            std::fs::remove_file(&blocker).unwrap();
            blocked = false;
        }
        agent = Agent::start_logged(&cfg, &log);
    }
    let expected = load.await.unwrap();
    let read = |root: &Path| -> BTreeMap<String, Vec<Value>> {
        let base = root.join("local");
        files_under(&base)
            .into_iter()
            .filter(|(p, _)| whole.is_match(p))
            .map(|(p, _)| {
                let text = std::fs::read_to_string(base.join(&p)).unwrap();
                let lines = text
                    .lines()
                    .map(|l| serde_json::from_str(l).unwrap())
                    .collect();
                (p, lines)
            })
            .collect()
    };
    eventually(Duration::from_secs(60), async || {
        let n = total_lines(&read(&root));
        if n < expected {
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        (n >= expected).then_some(())
    })
    .await;
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    let (sealed, in_progress) = watcher.await.unwrap();
    assert_eq!(agent.stop(), Some(0));
    let files = read(&root);
    assert_exactly_once_in_order(&files, expected);
    assert_snowflake_patterns_match(&cfg, files.keys());
    assert!(sealed.len() > 2, "several windows sealed: {sealed:?}");
    assert!(
        in_progress
            .iter()
            .any(|p| p.starts_with(".mongo-adls-staging/")),
        "the watcher saw staged blocks: {in_progress:?}"
    );
    // Everything visible is complete: nothing else sits in the filesystem folder.
    for (path, _) in files_under(&root.join("local")) {
        assert!(whole.is_match(&path), "stray file {path}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_sas_and_wrong_key_and_hostile_names() {
    let mongo = Mongod::start().await;
    let azurite = Azurite::start();
    let dir = tempfile::tempdir().unwrap();
    Lake::new(&azurite, "sas").create().await;

    // A wrong key fails the healthcheck with a reason, and exits 78.
    let bad = agent_config(
        dir.path(),
        "badkey",
        &mongo.uri(),
        &azurite.account_url(),
        "auth.shared_key = \"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA==\"",
    );
    let (code, stderr) = validate(&bad);
    assert_eq!(code, Some(78));
    assert!(stderr.contains("credentials were rejected"), "{stderr}");
    assert!(
        !stderr.contains("AAAAAAAAAAAAAAAA"),
        "the key is never printed"
    );

    // A host that never resolves (RFC 2606 `.invalid`) and a missing
    // filesystem each fail the healthcheck, naming the cause.
    let missing = azurite.account_url();
    for (name, url, needle) in [
        (
            "dns",
            "http://mongo-adls-test.invalid:10000/devstoreaccount1",
            "cannot reach",
        ),
        ("nofs", missing.as_str(), "does not exist"),
    ] {
        let options = format!("create_filesystem = false\n{}", shared_key());
        let cfg = agent_config(dir.path(), name, &mongo.uri(), url, &options);
        let (code, stderr) = validate(&cfg);
        assert_eq!(code, Some(78), "{name}");
        assert!(stderr.contains(needle), "{name}: {stderr}");
        assert!(!stderr.contains(AZURITE_KEY), "the key is never printed");
    }

    // A container SAS with exactly the permissions the README (and docs/components.md) lists (read,
    // write, list) passes validate and is all the sink uses; without write
    // it fails (so Azurite does enforce them). Then namespaces that try to
    // escape their folder.
    let sas_config = |permissions: &str| {
        let sas = support::container_sas("sas", permissions);
        agent_config(
            dir.path(),
            "sas",
            &mongo.uri(),
            &azurite.account_url(),
            &format!("create_filesystem = false\nauth.sas_token = \"?{sas}\""),
        )
    };
    let (code, stderr) = validate(&sas_config("rl"));
    assert_eq!(code, Some(78), "{stderr}");
    assert!(stderr.contains("403"), "{stderr}");
    let cfg = sas_config("rwl");
    let (code, stderr) = validate(&cfg);
    assert_eq!(code, Some(0), "{stderr}");
    let agent = Agent::start(&cfg);
    stream_open(dir.path(), "sas", None).await;
    let client = mongo.client().await;
    // Collection names may hold `/`, `\`, `%` and control characters (not a
    // leading `.`); each must stay one folder.
    let hostile = ["x/../../escape", "a\\b", "100%", "tab\tname", "x/.."];
    for coll in hostile {
        client
            .database("shop")
            .collection::<Document>(coll)
            .insert_one(doc! { "x": 1 })
            .await
            .unwrap();
    }
    let lake = Lake::new(&azurite, "sas");
    eventually(Duration::from_secs(60), async || {
        (total_lines(&read_all(&lake).await) >= hostile.len()).then_some(())
    })
    .await;
    assert_eq!(agent.stop(), Some(0));
    let files = read_all(&lake).await;
    let mut colls = HashSet::new();
    for (name, lines) in &files {
        let segments: Vec<&str> = name.split('/').collect();
        assert_eq!(segments[0], "shop", "{name}");
        assert!(
            segments
                .iter()
                .all(|s| *s != ".." && *s != "." && !s.contains('\\')),
            "{name}"
        );
        assert_eq!(
            segments.len(),
            7,
            "exactly one folder per namespace level: {name}"
        );
        for l in lines {
            colls.insert(l["_meta"]["ns"]["coll"].as_str().unwrap().to_string());
        }
    }
    assert_eq!(colls, hostile.iter().map(|s| s.to_string()).collect());
    assert_in_own_folders(&files, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_once_through_faults_and_kill_9() {
    chaos("on_seal").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_batch_is_exactly_once_through_faults_and_kill_9() {
    chaos("every_batch").await;
}

/// Writes 3,015 changes (with transactions) while the agent is killed with
/// SIGKILL four times and a proxy injects every kind of storage fault, then
/// checks every change is in the lake exactly once and in order.
async fn chaos(commit: &str) {
    use rand::Rng;
    let mongo = Mongod::start().await;
    let azurite = Azurite::start();
    let lake = Lake::new(&azurite, "chaos");
    lake.create().await;
    let proxy = support::FaultProxy::start(
        azurite.port,
        support::Faults {
            every: 3,
            kinds: vec![
                support::Fault::Unavailable,
                support::Fault::LoseResponse,
                support::Fault::Throttled,
                support::Fault::Reset,
                support::Fault::Stall,
            ],
            only: None,
        },
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = agent_config(
        dir.path(),
        "chaos",
        &mongo.uri(),
        &proxy.account_url(),
        &format!(
            "{}\ncommit = \"{commit}\"\nrequest.timeout_secs = 1\nrequest.retry_attempts = 100\nroll.max_bytes = 30000\nbatch.max_events = 200\nhealthchecks.enabled = false",
            shared_key()
        ),
    );
    // `healthchecks` is global; move it out of the sink table.
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("healthchecks.enabled = false\n", "")
        .replace("data_dir =", "healthchecks.enabled = false\ndata_dir =");
    std::fs::write(&cfg, text).unwrap();

    let mut agent = Agent::start(&cfg);
    stream_open(dir.path(), "chaos", None).await;

    let client = mongo.client().await;
    let writer = tokio::spawn(async move {
        let coll_a = client.database("shop").collection::<Document>("orders");
        let coll_b = client.database("shop").collection::<Document>("users");
        for batch in 0..30 {
            let docs: Vec<Document> = (0..50)
                .map(|i| doc! { "_id": batch * 50 + i, "v": "x".repeat(100) })
                .collect();
            coll_a.insert_many(docs.clone()).await.unwrap();
            coll_b.insert_many(docs).await.unwrap();
            if batch % 10 == 0 {
                // A multi-document transaction: its events share a cluster time.
                let mut session = client.start_session().await.unwrap();
                session.start_transaction().await.unwrap();
                for i in 0..5 {
                    coll_a
                        .update_one(
                            doc! { "_id": batch * 50 + i },
                            doc! { "$set": { "t": true } },
                        )
                        .session(&mut session)
                        .await
                        .unwrap();
                }
                session.commit_transaction().await.unwrap();
            }
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
        30 * 100 + 3 * 5
    });

    for _ in 0..4 {
        let pause = rand::rng().random_range(700..2000);
        tokio::time::sleep(Duration::from_millis(pause)).await;
        agent.kill();
        agent = Agent::start(&cfg);
    }
    let expected = writer.await.unwrap();

    eventually(Duration::from_secs(120), async || {
        let files = read_all(&lake).await;
        let n = total_lines(&files);
        if n < expected {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        (n >= expected).then_some(())
    })
    .await;
    assert_eq!(agent.stop(), Some(0));
    let files = read_all(&lake).await;
    assert_exactly_once_in_order(&files, expected);
    assert_in_own_folders(&files, 2);
    assert!(
        files.keys().any(|n| n.contains("-part-0001")),
        "size rolls happened"
    );
    // A stall is counted when it ends, 5 s after it began.
    let faults = ["503", "429", "reset", "lost_response", "stall"];
    let all_injected = |stats: &HashMap<&'static str, u64>| {
        faults
            .iter()
            .all(|f| stats.get(f).copied().unwrap_or(0) > 0)
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !all_injected(&proxy.stats.lock().unwrap()) && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let stats = proxy.stats.lock().unwrap().clone();
    for fault in faults {
        assert!(
            stats.get(fault).copied().unwrap_or(0) > 0,
            "fault {fault} was injected: {stats:?}"
        );
    }
}

/// DuckDB (the PyPI package, as a user would run it) reads a `file://` lake
/// with Hive partitions in each extended JSON mode: rows per namespace and
/// hour match the files, operation counts match the workload, and a
/// document with an ObjectId, a Date, a Decimal128 and a nested array comes
/// back as each mode documents.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duckdb_reads_the_lake_in_each_extended_json_mode() {
    let mongo = Mongod::start().await;
    let dir = tempfile::tempdir().unwrap();
    let modes = ["relaxed", "canonical", "simplified"];
    let mut config = PipelineConfig::mongo(&mongo.uri())
        .data_dir(&dir.path().join("data"))
        .source("database = \"shop\"");
    for mode in modes {
        config = config.sink(&format!(
            "[sinks.{mode}]\ntype = \"adls_partitioned_jsonl\"\ninputs = [\"mongo\"]\naccount_url = \"file://{}\"\nfilesystem = \"raw\"\ncreate_filesystem = true\nfile_name = \"events-%Y%m%d-%H%M%S\"\nroll.window_secs = 2\nroll.grace_secs = 0\nbatch.timeout_secs = 0.3\nencoding.extended_json = \"{mode}\"\n",
            dir.path().join(mode).display()
        ));
    }
    let cfg = config.write(&dir.path().join("duckdb.toml"));
    let agent = Agent::start(&cfg);
    // The stream is open once the idle stream saved a checkpoint.
    let checkpoint = dir.path().join("data/mongo/checkpoint.json");
    eventually(Duration::from_secs(60), async || {
        checkpoint.exists().then_some(())
    })
    .await;

    let client = mongo.client().await;
    let expected = workload(&client).await + 1;
    let oid = ObjectId::parse_str("65a1b2c3d4e5f60718293a4b").unwrap();
    client
        .database("shop")
        .collection::<Document>("orders")
        .insert_one(doc! {
            "_id": oid, "n": 7_i32, "big": 9_007_199_254_740_993_i64,
            "price": "123.450".parse::<Decimal128>().unwrap(),
            "at": mongodb::bson::DateTime::from_millis(1_723_316_400_123),
            "nested": [1_i32, { "deep": ["x", { "y": true }] }],
        })
        .await
        .unwrap();

    let lines_in = |mode: &str| -> Vec<Value> {
        let base = dir.path().join(mode).join("raw");
        files_under(&base)
            .into_iter()
            .filter(|(p, _)| p.ends_with(".jsonl") && !p.contains("/."))
            .flat_map(|(p, _)| {
                std::fs::read_to_string(base.join(p))
                    .unwrap()
                    .lines()
                    .map(|l| serde_json::from_str::<Value>(l).unwrap())
                    .collect::<Vec<_>>()
            })
            .collect()
    };
    eventually(Duration::from_secs(60), async || {
        let done = modes.iter().all(|m| lines_in(m).len() >= expected);
        if !done {
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        done.then_some(())
    })
    .await;
    assert_eq!(agent.stop(), Some(0));

    let pylib = std::env::var("MONGO_ADLS_PYTHONPATH")
        .unwrap_or_else(|_| format!("{}/.services/pylib", env!("CARGO_MANIFEST_DIR")));
    for mode in modes {
        let glob = format!(
            "{}/raw/*/*/*/*/*/*/events-*.jsonl",
            dir.path().join(mode).display()
        );
        let out = Command::new("python3")
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("e2e/duckdb_readback.py"))
            .arg(&glob)
            .env("PYTHONPATH", &pylib)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{mode}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let seen: Value = serde_json::from_slice(&out.stdout).unwrap();

        // Rows per namespace and hour: DuckDB's partition columns against
        // the event times in the files.
        let mut from_files: BTreeMap<(String, String, i64), i64> = BTreeMap::new();
        for l in lines_in(mode) {
            let t: chrono::DateTime<chrono::Utc> =
                l["_meta"]["eventTime"].as_str().unwrap().parse().unwrap();
            let key = (
                l["_meta"]["ns"]["db"].as_str().unwrap().to_string(),
                l["_meta"]["ns"]["coll"].as_str().unwrap().to_string(),
                t.format("%Y%m%d%H").to_string().parse::<i64>().unwrap(),
            );
            *from_files.entry(key).or_default() += 1;
        }
        let mut from_duckdb = BTreeMap::new();
        for row in seen["by_hour"].as_array().unwrap() {
            let r = row.as_array().unwrap();
            let hour = r[2].as_i64().unwrap() * 1_000_000
                + r[3].as_i64().unwrap() * 10_000
                + r[4].as_i64().unwrap() * 100
                + r[5].as_i64().unwrap();
            from_duckdb.insert(
                (
                    r[0].as_str().unwrap().to_string(),
                    r[1].as_str().unwrap().to_string(),
                    hour,
                ),
                r[6].as_i64().unwrap(),
            );
        }
        assert_eq!(
            from_duckdb, from_files,
            "{mode}: rows per namespace and hour"
        );
        let per_coll = |coll: &str| -> i64 {
            from_duckdb
                .iter()
                .filter(|((_, c, _), _)| c == coll)
                .map(|(_, n)| n)
                .sum()
        };
        assert_eq!(
            (per_coll("orders"), per_coll("users")),
            (381, 100),
            "{mode}"
        );
        assert_eq!(
            seen["ops"],
            serde_json::json!({"insert": 401, "update": 50, "replace": 10, "delete": 20}),
            "{mode}"
        );

        let docs = seen["docs"].as_object().unwrap();
        let doc = docs
            .iter()
            .find(|(k, _)| k.contains("65a1b2c3d4e5f60718293a4b"))
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("{mode}: round-trip document missing"));
        let expected_doc = match mode {
            "relaxed" => serde_json::json!({
                "_id": {"$oid": "65a1b2c3d4e5f60718293a4b"}, "n": 7, "big": 9_007_199_254_740_993_i64,
                "price": {"$numberDecimal": "123.450"}, "at": {"$date": "2024-08-10T19:00:00.123Z"},
                "nested": [1, {"deep": ["x", {"y": true}]}],
            }),
            "canonical" => serde_json::json!({
                "_id": {"$oid": "65a1b2c3d4e5f60718293a4b"}, "n": {"$numberInt": "7"},
                "big": {"$numberLong": "9007199254740993"},
                "price": {"$numberDecimal": "123.450"},
                "at": {"$date": {"$numberLong": "1723316400123"}},
                "nested": [{"$numberInt": "1"}, {"deep": ["x", {"y": true}]}],
            }),
            _ => serde_json::json!({
                "_id": "65a1b2c3d4e5f60718293a4b", "n": 7, "big": 9_007_199_254_740_993_i64,
                "price": "123.450", "at": "2024-08-10T19:00:00.123Z",
                "nested": [1, {"deep": ["x", {"y": true}]}],
            }),
        };
        assert_eq!(
            doc, expected_doc,
            "{mode}: fullDocument round trip through DuckDB"
        );
    }
}

/// Waits for the next hour when less than `needed` is left of this one.
async fn clear_of_the_hour_end(needed: Duration) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let left = 3600 - now % 3600;
    if left < needed.as_secs() {
        eprintln!("waiting {left} s for the next hour (hourly windows)");
        tokio::time::sleep(Duration::from_secs(left + 1)).await;
    }
}

/// Staged blocks that vanish before the seal (Azure discards uncommitted
/// blocks a week after staging, e.g. when the agent was stopped that long)
/// are reported as data loss, with their event count and resume tokens; the
/// blocks still there are committed, and the sink goes on with the next
/// part. Before, the seal was retried every 30 s forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vanished_staged_blocks_are_reported_and_the_rest_is_committed() {
    // Hourly windows with no grace: a run across the end of an hour would
    // seal the first hour's file and put later events in a new one. The
    // test takes well under 90 s here, more on a loaded machine; start it
    // clear of the boundary.
    clear_of_the_hour_end(Duration::from_secs(240)).await;
    let (mongo, mut azurite) = (Mongod::start().await, Azurite::start());
    let dir = tempfile::tempdir().unwrap();
    let config = |max_bytes: u64| {
        let options = format!(
            "roll.window_secs = 3600\nroll.max_bytes = {max_bytes}\n{}",
            shared_key()
        );
        agent_config(
            dir.path(),
            "lost",
            &mongo.uri(),
            &azurite.account_url(),
            &options,
        )
    };
    let client = mongo.client().await;
    let orders = client.database("shop").collection::<Document>("orders");
    let insert = async |ids: std::ops::Range<i32>| {
        let docs: Vec<Document> = ids.map(|id| doc! { "_id": id }).collect();
        orders.insert_many(docs).await.unwrap();
    };

    // Run 1 stages two blocks of an hourly file and stops.
    let agent = Agent::start(&config(1 << 30));
    stream_open(dir.path(), "lost", None).await;
    let state_dir = dir.path().join("data-lost/lake");
    // Staged blocks are recorded in the state's change log.
    let blocks_staged = async |n: usize| {
        eventually(Duration::from_secs(30), async || {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let staged = std::fs::read_dir(&state_dir)
                .ok()?
                .flatten()
                .filter(|e| e.file_name().to_string_lossy().ends_with(".log"))
                .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
                .map(|log| {
                    log.lines()
                        .filter(|l| l.starts_with(r#"{"staged""#))
                        .count()
                })
                .sum::<usize>();
            (staged >= n).then_some(())
        })
        .await
    };
    insert(0..20).await;
    blocks_staged(1).await;
    insert(20..30).await;
    blocks_staged(2).await;
    assert_eq!(agent.stop(), Some(0));
    // Stopping folds the log into the snapshot.
    let state: Value =
        serde_json::from_slice(&std::fs::read(state_dir.join("state.json")).unwrap()).unwrap();
    let file = &state["open"][0];
    assert_eq!(file["events"], 30, "{state}");
    let blocks = file["blocks"].as_array().unwrap().len();
    assert!(blocks >= 2, "{state}");
    let object = file["object"].as_str().unwrap().to_string();

    // The storage forgets them: an in-memory Azurite restarts empty (it
    // does not discard uncommitted blocks when the name is committed by
    // another writer, as Azure does). The agent recreates the container.
    let run2 = config(1);
    azurite.restart();
    let lake = Lake::new(&azurite, "lost");
    assert!(lake.list().await.is_empty());

    // Run 2: `roll.max_bytes = 1` seals the file at its next block.
    let log = dir.path().join("run2.log");
    let before = source_checkpoint(dir.path(), "lost");
    let agent = Agent::start_logged(&run2, &log);
    stream_open(dir.path(), "lost", before).await;
    insert(30..40).await;
    let ids_in = async |name: &str| -> Vec<i64> {
        let lines = lake.lines(name).await;
        lines
            .iter()
            .map(|l| l["fullDocument"]["_id"].as_i64().unwrap())
            .collect()
    };
    eventually(Duration::from_secs(30), async || {
        tokio::time::sleep(Duration::from_millis(200)).await;
        lake.list()
            .await
            .iter()
            .any(|l| l.name == object)
            .then_some(())
    })
    .await;
    assert_eq!(ids_in(&object).await, (30..40).collect::<Vec<_>>());
    // The sink goes on: later events land in the next part.
    insert(40..45).await;
    let next = eventually(Duration::from_secs(30), async || {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let listed = lake.list().await;
        listed
            .iter()
            .find(|l| l.name.contains("-part-0001"))
            .map(|l| l.name.clone())
    })
    .await;
    assert_eq!(ids_in(&next).await, (40..45).collect::<Vec<_>>());
    assert_eq!(agent.stop(), Some(0));

    let log = std::fs::read_to_string(&log).unwrap();
    let loss = log
        .lines()
        .find(|l| l.contains("DATA LOSS"))
        .unwrap_or_else(|| panic!("no data loss reported:\n{log}"));
    assert!(
        loss.contains(&format!("{blocks} of the {} staged blocks", blocks + 1))
            && loss.contains("Their 30 events"),
        "{loss}"
    );
    assert!(
        !loss.contains("(unknown)") && loss.contains("data_lost"),
        "{loss}"
    );
    assert!(!log.contains("retrying in 30s"), "{log}");
}

/// A `file://` lake that refuses writes (its staging folder replaced by a
/// file, so every write fails with "Not a directory"; a read-only folder
/// would not stop root, who runs the tests): `/health` is degraded from
/// the first failed attempt, 503 after `api.unhealthy_after_secs`, and ok
/// again once the folder is back, with no restart. (demo_events source: no
/// mongod needed.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_follows_a_file_lake_that_refuses_writes() {
    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path().join("lake");
    let port = support::free_port();
    let cfg = dir.path().join("refuses.toml");
    std::fs::write(
        &cfg,
        format!(
            "data_dir = \"{data}\"\napi.address = \"127.0.0.1:{port}\"\napi.unhealthy_after_secs = 10\n[sources.demo]\ntype = \"demo_events\"\ninterval_secs = 0.05\n[sinks.lake]\ntype = \"adls_partitioned_jsonl\"\ninputs = [\"demo\"]\naccount_url = \"file://{lake}\"\nfilesystem = \"raw\"\ncreate_filesystem = true\nbatch.timeout_secs = 0.2\n",
            data = dir.path().join("data").display(),
            lake = lake.display(),
        ),
    )
    .unwrap();
    let agent = Agent::start(&cfg);
    let health = || support::http_get(port, "/health").unwrap_or_default();
    let staging = lake.join(".mongo-adls-staging").join("raw");
    eventually(Duration::from_secs(30), async || {
        tokio::time::sleep(Duration::from_millis(100)).await;
        (staging.is_dir() && health().contains(r#""lake":{"status":"ok"}"#)).then_some(())
    })
    .await;

    let away = lake.join("staging-away");
    std::fs::rename(&staging, &away).unwrap();
    std::fs::write(&staging, b"not a folder").unwrap();
    let degraded = eventually(Duration::from_secs(20), async || {
        tokio::time::sleep(Duration::from_millis(100)).await;
        Some(health()).filter(|h| h.contains(r#""status":"degraded""#))
    })
    .await;
    assert!(degraded.contains("retrying"), "{degraded}");
    eventually(Duration::from_secs(40), async || {
        tokio::time::sleep(Duration::from_millis(200)).await;
        health().starts_with("HTTP/1.1 503").then_some(())
    })
    .await;

    std::fs::remove_file(&staging).unwrap();
    std::fs::rename(&away, &staging).unwrap();
    eventually(Duration::from_secs(60), async || {
        tokio::time::sleep(Duration::from_millis(200)).await;
        health().contains(r#""lake":{"status":"ok"}"#).then_some(())
    })
    .await;
    assert_eq!(agent.stop(), Some(0));
}

/// When data appears is said: the first file of a window is announced at
/// INFO once (not once per file or block), with the time the window's files
/// become visible, and `state show` gives each open file's seal time (run
/// beside the agent, whose API holds `api.address`: `state show` never
/// needs it).
/// (demo_events source into `file://`: no mongod needed.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_and_state_show_say_when_files_become_visible() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("visible.toml");
    std::fs::write(
        &cfg,
        format!(
            "data_dir = \"{data}\"\napi.address = \"127.0.0.1:{port}\"\n[sources.demo]\ntype = \"demo_events\"\ninterval_secs = 0.01\n[sinks.lake]\ntype = \"adls_partitioned_jsonl\"\ninputs = [\"demo\"]\naccount_url = \"file://{lake}\"\nfilesystem = \"raw\"\ncreate_filesystem = true\nbatch.timeout_secs = 0.2\n",
            data = dir.path().join("data").display(),
            lake = dir.path().join("lake").display(),
            port = support::free_port(),
        ),
    )
    .unwrap();
    let log = dir.path().join("visible.log");
    let agent = Agent::start_logged(&cfg, &log);
    // Several blocks of the one open file.
    let shown = eventually(Duration::from_secs(30), async || {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let shown = support::state_show(&cfg);
        regex::Regex::new(r" ([2-9]|\d\d+) block\(s\)")
            .unwrap()
            .is_match(&shown)
            .then_some(shown)
    })
    .await;
    assert_eq!(agent.stop(), Some(0));
    // Hourly windows, 60 s of grace by default: sealed once the source
    // passes the next hour plus a minute.
    let seal = regex::Regex::new(
        r"sealed once the source passes \d{4}-\d\d-\d\dT\d\d:01:00\+00:00, or at \S+ at the latest",
    )
    .unwrap();
    assert!(seal.is_match(&shown), "{shown}");
    let text = std::fs::read_to_string(&log).unwrap();
    let announced: Vec<&str> = text
        .lines()
        .filter(|l| {
            l.contains(" INFO ")
                && l.contains(
                    "opened. The window's files are sealed and visible once the source passes",
                )
        })
        .collect();
    // One window, unless the run crossed an hour.
    assert!(
        (1..=2).contains(&announced.len()),
        "once per window: {text}"
    );
}

/// Credentials refused at start end the start with exit 78 (the shipped
/// systemd unit does not restart on it), naming the sink and the reason;
/// credentials that stop working while the agent runs (a SAS that expires)
/// make `/health` answer 503 naming the sink, and the error says a restart
/// with working ones is needed; with the right key it answers 200.
/// (demo_events source: no mongod needed.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_credentials_exit_78_at_start_and_are_503_while_running() {
    let azurite = Azurite::start();
    let dir = tempfile::tempdir().unwrap();
    let config = |name: &str, auth: &str| {
        let port = support::free_port();
        let path = dir.path().join(format!("{name}.toml"));
        std::fs::write(
            &path,
            format!(
                "data_dir = \"{data}\"\napi.address = \"127.0.0.1:{port}\"\n[sources.demo]\ntype = \"demo_events\"\ninterval_secs = 0.01\n[sinks.lake]\ntype = \"adls_partitioned_jsonl\"\ninputs = [\"demo\"]\naccount_url = \"{url}\"\nfilesystem = \"{name}\"\n{auth}\nbatch.timeout_secs = 0.2\nrequest.retry_attempts = 1\n",
                data = dir.path().join(format!("data-{name}")).display(),
                url = azurite.account_url(),
            ),
        )
        .unwrap();
        (path, port)
    };
    let wrong = "A".repeat(86) + "==";
    let (bad_cfg, _) = config(
        "wrongkey",
        &format!("create_filesystem = true\nauth.shared_key = \"{wrong}\""),
    );
    let log = dir.path().join("wrongkey.log");
    let mut bad = Agent::start_logged(&bad_cfg, &log);
    assert_eq!(bad.exit_within(Duration::from_secs(20)), Some(78));
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("Healthcheck failed: lake: credentials were rejected")
            && text.contains("HTTP 403")
            && text.contains("only a start with working ones can help"),
        "{text}"
    );
    assert!(!text.contains(&wrong), "the key is never logged");

    // A container SAS valid for 15 s more.
    Lake::new(&azurite, "expiring").create().await;
    let expiry = (chrono::Utc::now() + chrono::Duration::seconds(15))
        .format("%Y-%m-%dT%H:%M:%SZ")
        .to_string();
    let sas = support::container_sas_until("expiring", "rwl", &expiry);
    let (expiring_cfg, expiring_port) = config(
        "expiring",
        &format!("create_filesystem = false\nauth.sas_token = \"{sas}\""),
    );
    let log = dir.path().join("expiring.log");
    let expiring = Agent::start_logged(&expiring_cfg, &log);
    let (good_cfg, good_port) = config(
        "rightkey",
        &format!("create_filesystem = true\nauth.shared_key = \"{AZURITE_KEY}\""),
    );
    let good = Agent::start(&good_cfg);

    let health = |port: u16| support::http_get(port, "/health");
    eventually(Duration::from_secs(15), async || {
        health(expiring_port).filter(|r| r.contains(r#""lake":{"status":"ok"}"#))
    })
    .await;
    let response = eventually(Duration::from_secs(60), async || {
        health(expiring_port).filter(|r| r.starts_with("HTTP/1.1 503"))
    })
    .await;
    assert!(response.contains("\"lake\""), "{response}");
    eventually(Duration::from_secs(30), async || {
        std::fs::read_to_string(&log)
            .ok()
            .filter(|l| l.contains("HTTP 403") && l.contains("then restart the agent"))
    })
    .await;
    let text = std::fs::read_to_string(&log).unwrap();
    let signature = sas.split("sig=").nth(1).unwrap();
    assert!(!text.contains(signature), "the SAS is never logged");
    let ok = eventually(Duration::from_secs(30), async || {
        health(good_port).filter(|r| r.starts_with("HTTP/1.1 200"))
    })
    .await;
    assert!(ok.contains("\"status\":\"ok\""), "{ok}");
    drop((expiring, good));
}

/// Storage down for longer than all retries (`retry_attempts = 2`), then
/// back: the agent heals by itself. Every change arrives exactly once
/// without a restart, the checkpoint moves again, and `/health` is 503
/// during the outage and 200 after.
/// An agent of the `shop` database writing into Azurite through a proxy
/// that can be taken down, with its API on `api` (`api_options` added to
/// the API table).
struct BehindProxy {
    mongo: Mongod,
    lake: Lake,
    proxy: support::FaultProxy,
    dir: tempfile::TempDir,
    api: u16,
    log: PathBuf,
    _azurite: Azurite,
}

impl BehindProxy {
    async fn start(name: &str, sink_options: &str, api_options: &str) -> (Self, Agent) {
        let mongo = Mongod::start().await;
        let azurite = Azurite::start();
        let lake = Lake::new(&azurite, name);
        lake.create().await;
        let proxy = support::FaultProxy::passthrough(azurite.port).await;
        let dir = tempfile::tempdir().unwrap();
        let api = support::free_port();
        let cfg = agent_config(
            dir.path(),
            name,
            &mongo.uri(),
            &proxy.account_url(),
            &format!("{}\n{sink_options}", shared_key()),
        );
        let text = std::fs::read_to_string(&cfg).unwrap().replace(
            "data_dir =",
            &format!("api.address = \"127.0.0.1:{api}\"\n{api_options}\ndata_dir ="),
        );
        std::fs::write(&cfg, text).unwrap();
        let log = dir.path().join(format!("{name}.log"));
        let agent = Agent::start_logged(&cfg, &log);
        let this = Self {
            mongo,
            lake,
            proxy,
            dir,
            api,
            log,
            _azurite: azurite,
        };
        (this, agent)
    }

    fn health(&self) -> String {
        support::http_get(self.api, "/health").unwrap_or_default()
    }

    async fn insert(&self, range: std::ops::Range<i32>) {
        let docs: Vec<Document> = range
            .map(|i| doc! { "_id": i, "v": "x".repeat(100) })
            .collect();
        self.mongo
            .client()
            .await
            .database("shop")
            .collection::<Document>("orders")
            .insert_many(docs)
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storage_outage_longer_than_the_retries_heals_without_a_restart() {
    let (t, agent) = BehindProxy::start(
        "outage",
        "request.retry_attempts = 2\nrequest.timeout_secs = 2\nrequest.retry_max_backoff_secs = 1",
        "api.unhealthy_after_secs = 3",
    )
    .await;
    let (lake, proxy, log) = (&t.lake, &t.proxy, &t.log);
    let checkpoint = t.dir.path().join("data-outage/mongo/checkpoint.json");
    let read_checkpoint = || std::fs::read_to_string(&checkpoint).unwrap_or_default();
    let health = || t.health();
    let insert = |range| t.insert(range);
    eventually(Duration::from_secs(30), async || {
        health().starts_with("HTTP/1.1 200").then_some(())
    })
    .await;
    // Healthy answers before the stream is open; inserts made before it
    // opens are not in the stream.
    stream_open(t.dir.path(), "outage", None).await;
    insert(0..100).await;
    eventually(Duration::from_secs(60), async || {
        (total_lines(&read_all(lake).await) == 100).then_some(())
    })
    .await;

    proxy.set_down(true);
    insert(100..300).await;
    let unhealthy = eventually(Duration::from_secs(60), async || {
        Some(health()).filter(|h| h.starts_with("HTTP/1.1 503"))
    })
    .await;
    assert!(unhealthy.contains("\"lake\""), "{unhealthy}");
    eventually(Duration::from_secs(60), async || {
        std::fs::read_to_string(log)
            .ok()
            .filter(|l| l.contains("held back, unacknowledged"))
    })
    .await;
    // Longer than every retry of every request.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let during = read_checkpoint();
    assert_eq!(
        total_lines(&read_all(lake).await),
        100,
        "nothing new while storage is down"
    );

    proxy.set_down(false);
    let files = eventually(Duration::from_secs(90), async || {
        let files = read_all(lake).await;
        (total_lines(&files) >= 300).then_some(files)
    })
    .await;
    assert_exactly_once_in_order(&files, 300);
    eventually(Duration::from_secs(30), async || {
        (read_checkpoint() != during).then_some(())
    })
    .await;
    eventually(Duration::from_secs(30), async || {
        health().starts_with("HTTP/1.1 200").then_some(())
    })
    .await;
    let text = std::fs::read_to_string(log).unwrap();
    assert_eq!(text.matches("Starting mongo-adls").count(), 1, "no restart");
    assert!(text.contains("Storage answers again"), "{text}");
    assert!(
        text.contains("The oplog reaches back to"),
        "the held-write error states the oplog window: {text}"
    );
    drop(agent);
}

/// `every_batch` with Put Block Lists that storage applies seconds after
/// the client gave up on them (and retried, and committed newer blocks):
/// each late commit is refused by its condition instead of rolling the
/// growing file back, so every change is in the lake exactly once and no
/// block is reported lost. Without the conditions the late commits apply
/// and drop committed blocks (the bug the chaos run's `StallThenApply`
/// found); this test makes the case happen every few commits, on purpose.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_applied_commits_do_not_roll_growing_files_back() {
    let mongo = Mongod::start().await;
    let azurite = Azurite::start();
    let lake = Lake::new(&azurite, "late");
    lake.create().await;
    let proxy = support::FaultProxy::start(
        azurite.port,
        support::Faults {
            every: 4,
            kinds: vec![support::Fault::LateApply(Duration::from_secs(4))],
            // Put Block List only (Get Block List puts `blocklisttype`
            // first).
            only: Some("?comp=blocklist"),
        },
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = agent_config(
        dir.path(),
        "late",
        &mongo.uri(),
        &proxy.account_url(),
        &format!(
            "{}\ncommit = \"every_batch\"\nroll.window_secs = 3\nrequest.timeout_secs = 1",
            shared_key()
        ),
    );
    let log = dir.path().join("late.log");
    let agent = Agent::start_logged(&cfg, &log);
    let orders = mongo
        .client()
        .await
        .database("shop")
        .collection::<Document>("orders");
    let stream_open = dir.path().join("data-late/mongo/checkpoint.json");
    eventually(Duration::from_secs(30), async || {
        stream_open.exists().then_some(())
    })
    .await;
    // 12 s of steady changes: a commit about every 0.3 s.
    let total = 1_200;
    for chunk in 0..(total / 10) {
        let docs: Vec<Document> = (chunk * 10..chunk * 10 + 10)
            .map(|i| doc! { "_id": i, "v": "x".repeat(200) })
            .collect();
        orders.insert_many(docs).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    let files = loop {
        let files = read_all(&lake).await;
        if total_lines(&files) >= total as usize {
            break files;
        }
        if std::time::Instant::now() > deadline {
            let stats = proxy.stats.lock().unwrap().clone();
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let errors: Vec<&str> = text
                .lines()
                .filter(|l| l.contains("ERROR"))
                .take(5)
                .collect();
            panic!(
                "the lake holds {} of {total} changes after 90 s (a late commit rolled a file back?); proxy: {stats:?}; first errors: {errors:#?}",
                total_lines(&files)
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    // Late commits still held by the proxy have a few seconds to land.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let files_after = read_all(&lake).await;
    assert_eq!(files, files_after, "a late commit changed a file");
    assert_exactly_once_in_order(&files, total as usize);
    let stats = proxy.stats.lock().unwrap().clone();
    eprintln!("late commits: {stats:?}");
    assert!(
        stats.get("late_refused").copied().unwrap_or(0) >= 3,
        "the late commits were made and refused: {stats:?}"
    );
    let text = std::fs::read_to_string(&log).unwrap();
    for bad in ["DATA LOSS", "InvalidBlockList", "ERROR"] {
        assert!(!text.contains(bad), "{bad} in the log: {text}");
    }
    drop(agent);
}

/// A field of `/proc/<pid>/status` in KiB (`VmRSS`, `VmHWM`).
fn proc_status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// The value of the `/metrics` series whose line starts with `series`
/// (the name and its first labels); `None` while it is not there yet.
fn metric(api: u16, series: &str) -> Option<f64> {
    let body = support::http_get(api, "/metrics").expect("the API answers");
    body.lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

/// Guarantee 5, bounded memory, under a backlog many times the sink's
/// budget: while storage is down the source stops reading (backpressure
/// reaches the change stream) far short of the backlog, and the agent's
/// peak RSS stays within the documented bound; once storage is back every
/// change arrives exactly once, without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storage_down_under_a_large_backlog_stops_reading_and_bounds_memory() {
    // 80,000 documents of 1 KB: about 85 MB of BSON, more as JSON.
    const DOCS: i32 = 80_000;
    // Small limits, so the documented bound is tight and far below what
    // the backlog would take if it were read into memory.
    const MAX_TOTAL_BYTES: u64 = 4_000_000;
    const MAX_BYTES: u64 = 2_000_000;
    // The default. One write per file (`concurrency_per_file = 1`), three
    // collections and 10 s windows (the inserts span two at most): at most
    // six files, so six writes of about 1.3 MB are held, half of the
    // 16 MB that may be in flight. What must stop intake is then the
    // sink's own check (the budget: three batches reach 4 MB together
    // before one reaches 2 MB), not a full set of requests, which would
    // hide it.
    const CONCURRENCY: u64 = 8;
    const COLLECTIONS: usize = 3;
    // `buffer.max_events`, the default: the queue in front of the sink.
    const BUFFER_EVENTS: u64 = 500;
    // docs/architecture.md "Bounded memory": `batch.max_total_bytes` +
    // `request.concurrency` × `batch.max_bytes` + the runtime's own (about
    // 50 MB): 4 MB + 8 × 2 MB + 50 MiB = 70,731 KiB, where reading the
    // backlog in would take well over 100 MB (BSON events, then JSON).
    const RUNTIME_MB: u64 = 50;
    let bound_kib = (MAX_TOTAL_BYTES + CONCURRENCY * MAX_BYTES) / 1024 + RUNTIME_MB * 1024;

    let mongo = Mongod::start().await;
    let azurite = Azurite::start();
    let lake = Lake::new(&azurite, "backlog");
    lake.create().await;
    // Storage down rather than stalled: `set_down` answers every request
    // 503 (after reading its body), so each write goes through its retries
    // quickly and is then held; held writes are what must close intake
    // (they count against the bytes in flight, `request.concurrency` ×
    // `batch.max_bytes`), and they last as long as the outage. A stall ends the same way, only after the timeouts.
    let proxy = support::FaultProxy::passthrough(azurite.port).await;
    let dir = tempfile::tempdir().unwrap();
    let api = support::free_port();
    let cfg = agent_config(
        dir.path(),
        "backlog",
        &mongo.uri(),
        &proxy.account_url(),
        &format!(
            "{}\nbatch.max_total_bytes = {MAX_TOTAL_BYTES}\nbatch.max_bytes = {MAX_BYTES}\nrequest.concurrency = {CONCURRENCY}\nrequest.concurrency_per_file = 1\nroll.window_secs = 10\nrequest.retry_attempts = 2\nrequest.timeout_secs = 2\nrequest.retry_max_backoff_secs = 1",
            shared_key()
        ),
    );
    let text = std::fs::read_to_string(&cfg).unwrap().replace(
        "data_dir =",
        &format!("api.address = \"127.0.0.1:{api}\"\ndata_dir ="),
    );
    std::fs::write(&cfg, text).unwrap();
    let log = dir.path().join("backlog.log");
    let agent = Agent::start_logged(&cfg, &log);
    let pid = agent.pid();
    // Healthy (the healthcheck reached storage) and the stream open: the
    // inserts below are all read, from the start.
    eventually(Duration::from_secs(30), async || {
        support::http_get(api, "/health")
            .filter(|h| h.starts_with("HTTP/1.1 200"))
            .map(|_| ())
    })
    .await;
    stream_open(dir.path(), "backlog", None).await;
    let idle_kib = proc_status_kib(pid, "VmRSS");

    proxy.set_down(true);
    // Round robin over the collections, 500 documents at a time: their
    // files fill batches side by side.
    let shop = mongo.client().await.database("shop");
    let started = std::time::Instant::now();
    for (n, chunk) in (0..DOCS).collect::<Vec<_>>().chunks(500).enumerate() {
        let docs: Vec<Document> = chunk
            .iter()
            .map(|&i| doc! { "_id": i, "v": "x".repeat(1_000) })
            .collect();
        shop.collection::<Document>(&format!("c{}", n % COLLECTIONS))
            .insert_many(docs)
            .await
            .unwrap();
    }
    let inserted_in = started.elapsed();

    // Storage stays down for 18 s more; every second, what the source has
    // handed on and the agent's RSS.
    let sent =
        || metric(api, "component_sent_events_total{component_id=\"mongo\",").unwrap_or(0.0) as u64;
    let mut samples = Vec::new();
    for _ in 0..18 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        samples.push((sent(), proc_status_kib(pid, "VmRSS")));
    }
    let hwm_kib = proc_status_kib(pid, "VmHWM");
    eprintln!(
        "backlog of {DOCS} inserted in {inserted_in:?}; idle RSS {idle_kib} KiB; (events sent by the source, VmRSS KiB) each second while down: {samples:?}; VmHWM {hwm_kib} KiB, bound {bound_kib} KiB"
    );
    let (plateau, _) = samples[samples.len() - 1];
    // Progress stops: the same count 6 s apart, with held writes retried
    // about every second in between.
    assert_eq!(
        samples[samples.len() - 7].0,
        plateau,
        "the source keeps reading while storage is down: {samples:?}"
    );
    // What the limits allow into the agent, in events: each is over 1,000
    // bytes of JSON, so pending batches hold at most 4,000,000 / 1,000
    // (intake stops at the budget) + 256 (one chunk taken just before),
    // requests in flight or held 8 × 2,001 (a batch is written once it
    // reaches 2 MB, with the event that crossed it), and the buffer 500:
    // 20,764 of the 80,000.
    let most =
        MAX_TOTAL_BYTES / 1_000 + 256 + CONCURRENCY * (MAX_BYTES / 1_000 + 1) + BUFFER_EVENTS;
    assert!(
        plateau > 0 && plateau <= most,
        "the source handed on {plateau} of {DOCS} events while storage was down, more than the {most} the limits allow: {samples:?}"
    );
    assert!(
        hwm_kib <= bound_kib,
        "peak RSS {hwm_kib} KiB over the bound {bound_kib} KiB (idle {idle_kib} KiB): {samples:?}"
    );
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("held back, unacknowledged"),
        "writes were held: {text}"
    );

    proxy.set_down(false);
    // Drained (every event made durable) and every file sealed, judged
    // from the metrics; then the lake is read once.
    eventually(Duration::from_secs(90), async || {
        let durable = metric(api, "component_sent_events_total{component_id=\"lake\",")?;
        let open = metric(api, "adls_open_files{component_id=\"lake\",")?;
        (durable >= f64::from(DOCS) && open == 0.0).then_some(())
    })
    .await;
    let files = eventually(Duration::from_secs(30), async || {
        let files = read_all(&lake).await;
        (total_lines(&files) >= DOCS as usize).then_some(files)
    })
    .await;
    assert_exactly_once_in_order(&files, DOCS as usize);
    let mut ids: Vec<i64> = files
        .values()
        .flatten()
        .map(|l| l["documentKey"]["_id"].as_i64().unwrap())
        .collect();
    ids.sort_unstable();
    assert_eq!(
        ids,
        (0..i64::from(DOCS)).collect::<Vec<_>>(),
        "every _id exactly once"
    );
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(text.matches("Starting mongo-adls").count(), 1, "no restart");
    drop(agent);
}

/// The `_id`s in the visible files of a `file://` lake's filesystem folder
/// (in-progress files have dot names).
fn local_ids(folder: &Path) -> Vec<i64> {
    let mut ids = Vec::new();
    for (path, _) in files_under(folder) {
        if path.split('/').any(|s| s.starts_with('.')) {
            continue;
        }
        let text = std::fs::read_to_string(folder.join(&path)).unwrap();
        for line in text.lines() {
            let v: Value = serde_json::from_str(line).unwrap();
            ids.push(v["documentKey"]["_id"].as_i64().unwrap());
        }
    }
    ids.sort_unstable();
    ids
}

/// Lost state is never silent: a deleted checkpoint, a deleted sink state
/// and a checkpoint of another pipeline each stop the agent with exit 78
/// and a message naming what is lost, touching nothing; the message's
/// lossless way out (`start_at`) loses nothing, and `--accept-data-gap`
/// starts with a logged DATA GAP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_state_is_refused_unless_accepted() {
    let mongo = Mongod::start().await;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("lake-root");
    let url = format!("file://{}", root.display());
    let folder = root.join("gap");
    let cfg = agent_config(dir.path(), "gap", &mongo.uri(), &url, "");
    let data = dir.path().join("data-gap");
    let checkpoint = data.join("mongo/checkpoint.json");
    let log = dir.path().join("gap.log");
    let orders = mongo
        .client()
        .await
        .database("shop")
        .collection::<Document>("orders");
    let insert = |range: std::ops::Range<i64>| {
        let orders = orders.clone();
        async move {
            let docs: Vec<Document> = range.map(|i| doc! { "_id": i }).collect();
            orders.insert_many(docs).await.unwrap();
        }
    };
    let until_ids = async |n: usize| {
        eventually(Duration::from_secs(60), async || {
            let ids = local_ids(&folder);
            if ids.len() < n {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            (ids.len() >= n).then_some(ids)
        })
        .await
    };
    let started = async |path: &Path| {
        eventually(Duration::from_secs(30), async || {
            tokio::time::sleep(Duration::from_millis(100)).await;
            path.exists().then_some(())
        })
        .await
    };
    // Runs the agent on `config` expecting a refusal: exit 78 and its log.
    let refused = |config: &Path, name: &str| {
        let log = dir.path().join(format!("{name}.log"));
        let mut agent = Agent::start_logged(config, &log);
        assert_eq!(
            agent.exit_within(Duration::from_secs(30)),
            Some(78),
            "{name}"
        );
        std::fs::read_to_string(&log).unwrap()
    };

    // A normal run.
    let agent = Agent::start_logged(&cfg, &log);
    started(&checkpoint).await;
    insert(0..100).await;
    until_ids(100).await;
    assert_eq!(agent.stop(), Some(0));
    // `state show` reads what the start check compares.
    let shown = support::state_show(&cfg);
    let pipeline = regex::Regex::new(r"pipeline ([0-9a-f-]{36})")
        .unwrap()
        .captures(&shown)
        .unwrap_or_else(|| panic!("a pipeline id: {shown}"))[1]
        .to_string();
    assert!(
        shown.contains(&format!(
            "source `mongo`: pipeline {pipeline}, written up to cluster time"
        )),
        "the sink's mark names the checkpoint's pipeline: {shown}"
    );
    assert!(shown.contains("(not running)"), "{shown}");

    // 1. The checkpoint is deleted while changes happen.
    std::fs::remove_file(&checkpoint).unwrap();
    insert(100..150).await;
    let text = refused(&cfg, "no-checkpoint");
    assert!(text.contains("The checkpoint of source `mongo`"), "{text}");
    assert!(text.contains("is missing, but sink `lake`"), "{text}");
    assert_eq!(local_ids(&folder).len(), 100, "nothing written");
    // The message's lossless way out: start where the sink stopped.
    let start_at = regex::Regex::new(r#"`start_at = "([^"]+)"`"#)
        .unwrap()
        .captures(&text)
        .unwrap_or_else(|| panic!("a start_at suggestion: {text}"))[1]
        .to_string();
    let text = std::fs::read_to_string(&cfg).unwrap().replace(
        "checkpoint_interval_ms = 100",
        &format!("checkpoint_interval_ms = 100\nstart_at = \"{start_at}\""),
    );
    std::fs::write(&cfg, text).unwrap();
    let agent = Agent::start_logged(&cfg, &log);
    let ids = until_ids(150).await;
    assert_eq!(agent.stop(), Some(0));
    assert_eq!(
        ids,
        (0..150).collect::<Vec<_>>(),
        "every change exactly once"
    );

    // 2. The sink state is deleted.
    std::fs::remove_dir_all(data.join("lake")).unwrap();
    let text = refused(&cfg, "no-sink-state");
    assert!(text.contains("Sink `lake` has no state"), "{text}");
    assert!(text.contains("the lake already holds its files"), "{text}");
    let gap_log = dir.path().join("accepted.log");
    let agent = Agent::start_logged_with(&cfg, &gap_log, &["--accept-data-gap"]);
    started(&data.join("lake/state.json")).await;
    insert(150..160).await;
    let ids = until_ids(160).await;
    assert_eq!(agent.stop(), Some(0));
    assert_eq!(ids, (0..160).collect::<Vec<_>>());
    let text = std::fs::read_to_string(&gap_log).unwrap();
    assert!(
        text.contains("DATA GAP (sink `lake`, source `mongo`)"),
        "{text}"
    );

    // 3. The checkpoint of another pipeline.
    let other = agent_config(dir.path(), "other", &mongo.uri(), &url, "");
    let other_checkpoint = dir.path().join("data-other/mongo/checkpoint.json");
    let agent = Agent::start_logged(&other, &dir.path().join("other.log"));
    started(&other_checkpoint).await;
    assert_eq!(agent.stop(), Some(0));
    std::fs::copy(&other_checkpoint, &checkpoint).unwrap();
    let text = refused(&cfg, "other-pipeline");
    assert!(text.contains("belongs to pipeline"), "{text}");
    assert_eq!(local_ids(&folder).len(), 160, "nothing written");
}

/// An agent on `burst` changes into a `file://` lake with `max_await_ms`
/// and a `batch.timeout_secs` of 300, reading from two seconds ago, with
/// `sink_options` added; its config path.
fn burst_config(
    dir: &Path,
    mongo_uri: &str,
    root: &Path,
    max_await_ms: u64,
    sink_options: &str,
) -> PathBuf {
    let cfg = agent_config(
        dir,
        "burst",
        mongo_uri,
        &format!("file://{}", root.display()),
        &format!(
            "commit = \"every_batch\"\nbatch.timeout_secs = 300\nroll.window_secs = 3600\n{sink_options}"
        ),
    );
    let start = chrono::Utc::now() - chrono::Duration::seconds(2);
    let text = std::fs::read_to_string(&cfg).unwrap();
    assert!(text.contains("max_await_time_ms = 200"), "{text}");
    let text = text.replace(
        "max_await_time_ms = 200",
        &format!(
            "max_await_time_ms = {max_await_ms}\nstart_at = \"{}\"",
            start.to_rfc3339()
        ),
    );
    std::fs::write(&cfg, text).unwrap();
    cfg
}

/// Inserts `n` documents with `pad` bytes of padding, `seq` 0 to n - 1,
/// into `shop.orders` in one `insertMany`.
async fn insert_padded(mongo: &Mongod, n: i64, pad: usize) {
    let docs: Vec<Document> = (0..n)
        .map(|i| doc! { "seq": i, "pad": "x".repeat(pad) })
        .collect();
    mongo
        .client()
        .await
        .database("shop")
        .collection::<Document>("orders")
        .insert_many(docs)
        .await
        .unwrap();
}

/// The `seq` of every line in the lake's `shop.orders` files, sorted.
fn orders_in_lake(root: &Path) -> Vec<i64> {
    let mut seqs: Vec<i64> = files_under(root)
        .into_iter()
        .filter(|(p, _)| p.starts_with("burst/shop/orders/") && p.ends_with(".jsonl"))
        .flat_map(|(p, _)| {
            std::fs::read_to_string(root.join(p))
                .unwrap_or_default()
                .lines()
                .map(|l| {
                    let v: Value = serde_json::from_str(l).unwrap();
                    v["fullDocument"]["seq"].as_i64().unwrap()
                })
                .collect::<Vec<_>>()
        })
        .collect();
    seqs.sort_unstable();
    seqs
}

/// Waits up to `secs` for `n` changes in the lake; then each `seq` must be
/// there exactly once.
async fn wait_for_orders(root: &Path, n: i64, secs: u64, log: &Path) {
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    while orders_in_lake(root).len() < n as usize {
        assert!(
            std::time::Instant::now() < deadline,
            "{} of {n} changes in the lake after {secs} s; agent log:\n{}",
            orders_in_lake(root).len(),
            support::log_tail(log, 30)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(orders_in_lake(root), (0..n).collect::<Vec<_>>());
}

/// Inserts `n` changes with `pad` bytes of padding, then runs an agent
/// (`burst_config`) until all are in the lake, exactly once, within
/// `secs`; the agent's log.
async fn burst(n: i64, pad: usize, max_await_ms: u64, sink_options: &str, secs: u64) -> String {
    let mongo = Mongod::start().await;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("lake-root");
    let cfg = burst_config(dir.path(), &mongo.uri(), &root, max_await_ms, sink_options);
    insert_padded(&mongo, n, pad).await;
    let log = dir.path().join("agent.log");
    let _agent = Agent::start_logged(&cfg, &log);
    wait_for_orders(&root, n, secs, &log).await;
    std::fs::read_to_string(&log).unwrap()
}

/// A burst is written as soon as the change stream has caught up, not
/// after `max_await_time_ms` (the empty batch that says the stream is idle)
/// or `batch.timeout_secs`: here both are a minute or more, so the burst's
/// one partial batch (over a quarter of `batch.max_bytes`) can only reach
/// the lake within the test's 40 s (process start included, on a slow
/// machine) through the source's caught-up signal (its getMore waiting for
/// events).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_is_written_once_the_stream_has_caught_up() {
    burst(600, 1000, 60_000, "batch.max_bytes = 1048576", 40).await;
}

/// The end of a burst (more than a server reply's worth of events) is
/// written in full once the source caught up, also a remainder under a
/// quarter block: 3,500 changes of 1.3 KB are one full 4.5 MB block and a
/// remainder of about 0.5 MB, which a trickle's caught-up watermark would
/// leave for the idle one a minute later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_end_of_a_burst_is_written_in_full() {
    burst(3500, 1000, 60_000, "", 40).await;
}

/// Large events: after 256 of them the source reopens the stream with
/// batches sized for a 4 MiB reply (it logs so), and every change still
/// arrives exactly once, in order, across the reopening. (The last partial
/// batch, under a quarter block, waits for the idle watermark, so
/// `max_await_time_ms` is short here.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_events_reopen_the_stream_with_smaller_batches_exactly_once() {
    let log = burst(1000, 16_000, 200, "", 60).await;
    assert!(
        log.contains("Reopening the change stream with batches") && log.contains("batch_size=2"),
        "{log}"
    );
}

/// With the default retry settings, a storage outage shows in `/health`
/// from the first failed attempt (degraded), 503 once it lasted
/// `api.unhealthy_after_secs` (60 by default) without progress, and `ok`
/// again after storage answers, with no restart. Before, the sink stayed
/// "ok" until its 12 retries were spent (minutes, with backoff up to 30 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_is_degraded_from_the_first_failed_write() {
    // The defaults, where `agent_config` sets quick retries.
    let (t, agent) = BehindProxy::start(
        "first",
        "request.retry_initial_backoff_secs = 0.5\nrequest.retry_max_backoff_secs = 30\nbatch.timeout_secs = 5",
        "",
    )
    .await;
    let (lake, proxy) = (&t.lake, &t.proxy);
    let health = || t.health();
    let insert = |range| t.insert(range);
    stream_open(t.dir.path(), "first", None).await;
    insert(0..10).await;
    eventually(Duration::from_secs(60), async || {
        (total_lines(&read_all(lake).await) == 10).then_some(())
    })
    .await;
    assert!(
        health().contains(r#""lake":{"status":"ok"}"#),
        "{}",
        health()
    );

    proxy.set_down(true);
    let down = std::time::Instant::now();
    insert(10..20).await;
    let degraded = eventually(Duration::from_secs(20), async || {
        Some(health()).filter(|h| h.contains(r#""status":"degraded""#))
    })
    .await;
    assert!(
        degraded.starts_with("HTTP/1.1 200"),
        "degraded is still ready: {degraded}"
    );
    assert!(
        degraded.contains("failed") && degraded.contains("retrying"),
        "{degraded}"
    );
    eventually(Duration::from_secs(80), async || {
        health().starts_with("HTTP/1.1 503").then_some(())
    })
    .await;
    assert!(down.elapsed() < Duration::from_secs(80));
    // Every failed attempt counts as a component error; the log has one
    // WARN for the outage's first failure and then one ERROR line a minute
    // summing it up, not a line per attempt.
    let metrics = support::http_get(t.api, "/metrics").unwrap_or_default();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("component_errors_total")
                && l.contains("error_type=\"request_failed\"")
                && l.contains("component_id=\"lake\"")),
        "{metrics}"
    );
    let summary = eventually(Duration::from_secs(30), async || {
        std::fs::read_to_string(&t.log).ok().filter(|l| {
            l.lines()
                .any(|l| l.contains(" ERROR ") && l.contains("Storage requests keep failing"))
        })
    })
    .await;
    let warned = summary
        .lines()
        .filter(|l| l.contains(" WARN ") && l.contains("failed"))
        .count();
    assert_eq!(warned, 1, "one WARN for the outage: {summary}");

    proxy.set_down(false);
    eventually(Duration::from_secs(120), async || {
        (total_lines(&read_all(lake).await) == 20).then_some(())
    })
    .await;
    eventually(Duration::from_secs(30), async || {
        health().contains(r#""lake":{"status":"ok"}"#).then_some(())
    })
    .await;
    let log = std::fs::read_to_string(&t.log).unwrap();
    assert!(log.contains("Storage requests succeed again."), "{log}");
    drop(agent);
}

/// Many collections at once into a real Azurite: past
/// `batch.max_total_bytes` the pending batches wait in the local spill, so
/// each file is still written as one block (a storage account bills per
/// request), every change exactly once and in order. With the spill off,
/// the same backlog takes many small blocks (the test fails if the spill
/// does nothing). A `kill -9` while batches are in the spill loses
/// nothing: the spill is a cache, and the restarted agent replays from
/// the checkpoint, exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_active_collections_are_written_in_one_block_a_file_through_the_spill() {
    const COLLECTIONS: usize = 20;
    const PER_COLLECTION: usize = 60;
    let mongo = Mongod::start().await;
    let azurite = Azurite::start();
    let dir = tempfile::tempdir().unwrap();
    let start = chrono::Utc::now() - chrono::Duration::seconds(2);
    // Round-robin over the collections, about 1.7 MB as JSON Lines.
    let client = mongo.client().await;
    for i in 0..PER_COLLECTION {
        for c in 0..COLLECTIONS {
            client
                .database("shop")
                .collection::<Document>(&format!("c{c:02}"))
                .insert_one(doc! { "i": i as i64, "pad": "x".repeat(1000) })
                .await
                .unwrap();
        }
    }
    // Each file's ~85 KB stays under `batch.max_bytes`; the 20 files
    // together pass the 256 KB budget many times over.
    let run = async |name: &str, spill: &str, kill_9: bool| {
        let api = support::free_port();
        let cfg = agent_config(
            dir.path(),
            name,
            &mongo.uri(),
            &azurite.account_url(),
            &format!(
                "{}\ncommit = \"every_batch\"\nroll.window_secs = 3600\nbatch.timeout_secs = 300\nbatch.max_bytes = 131072\nbatch.max_total_bytes = 262144\n{spill}",
                shared_key()
            ),
        );
        let text = std::fs::read_to_string(&cfg).unwrap().replace(
            "data_dir =",
            &format!("api.address = \"127.0.0.1:{api}\"\ndata_dir ="),
        );
        let text = text.replace(
            "max_await_time_ms = 200",
            &format!(
                "max_await_time_ms = 200\nstart_at = \"{}\"",
                start.to_rfc3339()
            ),
        );
        std::fs::write(&cfg, text).unwrap();
        let mut log = dir.path().join(format!("{name}.log"));
        let mut agent = Agent::start_logged(&cfg, &log);
        let lake = Lake::new(&azurite, name);
        if kill_9 {
            // Once the first block is in the lake, the rest are in the
            // spill or on their way.
            eventually(Duration::from_secs(60), async || {
                tokio::time::sleep(Duration::from_millis(50)).await;
                (total_lines(&read_all(&lake).await) > 0).then_some(())
            })
            .await;
            assert!(metric(api, "adls_spilled_bytes_total{").unwrap_or(0.0) > 0.0);
            agent.kill();
            log = dir.path().join(format!("{name}-again.log"));
            agent = Agent::start_logged(&cfg, &log);
        }
        let files = eventually(Duration::from_secs(60), async || {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let files = read_all(&lake).await;
            (total_lines(&files) >= COLLECTIONS * PER_COLLECTION).then_some(files)
        })
        .await;
        let puts = metric(
            api,
            &format!("azure_storage_requests_total{{container=\"{name}\",method=\"PUT\"}}"),
        )
        .unwrap_or(0.0) as usize;
        let spilled = metric(api, "adls_spilled_bytes_total{").unwrap_or(0.0);
        assert_eq!(agent.stop(), Some(0), "{}", support::log_tail(&log, 30));
        assert_exactly_once_in_order(&files, COLLECTIONS * PER_COLLECTION);
        assert_eq!(files.len(), COLLECTIONS, "one file a collection");
        (puts, spilled)
    };
    let spill_dir = dir.path().join("spill");
    std::fs::create_dir(&spill_dir).unwrap();
    let spill_option = format!("batch.spill_dir = \"{}\"", spill_dir.display());
    let (puts, spilled) = run("spilled", &spill_option, false).await;
    // A Put Block and a Put Block List a file, and the container.
    assert!(spilled > 0.0, "the spill was used");
    assert!(puts <= 2 * COLLECTIONS + 3, "{puts} PUTs with the spill");
    // Unlinked files: nothing is left in the folder.
    assert_eq!(std::fs::read_dir(&spill_dir).unwrap().count(), 0);
    let (puts_off, spilled) = run("unspilled", "batch.spill_max_bytes = 0", false).await;
    assert_eq!(spilled, 0.0);
    eprintln!("PUTs: {puts} with the spill, {puts_off} without");
    assert!(
        puts_off >= 3 * puts,
        "{puts_off} PUTs without the spill, {puts} with it"
    );
    run("killed", &spill_option, true).await;
}
