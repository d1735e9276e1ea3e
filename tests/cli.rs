//! The `mongo-adls` binary as a user runs it: configuration errors, the
//! example configs, signals, `kill -9` and restart, and `/metrics`.

mod support;

use support::SpawnTracked as _;

use std::{
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

fn bin() -> Command {
    support::mongo_adls()
}

/// `validate --no-environment` accepts `config`.
fn assert_valid(config: &Path) {
    let out = bin()
        .args(["validate", "--no-environment", "-c"])
        .arg(config)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}: {}",
        config.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The agent on `config` with its output discarded.
fn spawn_quiet(config: &Path) -> std::process::Child {
    bin()
        .arg("-c")
        .arg(config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn_tracked()
}

fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// Runs `validate` on `files` and checks it exits 78 with every `needle`
/// in its error output.
fn assert_config_error(files: &[&Path], needles: &[&str]) {
    let mut cmd = bin();
    cmd.arg("validate");
    for f in files {
        cmd.arg("--config").arg(f);
    }
    let out = cmd.output().unwrap();
    assert_eq!(out.status.code(), Some(78));
    let stderr = String::from_utf8_lossy(&out.stderr);
    for needle in needles {
        assert!(stderr.contains(needle), "missing {needle:?} in: {stderr}");
    }
}

#[test]
fn config_errors_name_key_and_line_and_exit_78() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let sink = "[sinks.out]\ntype = \"console\"\ninputs = [\"demo\"]\n";

    // An unknown key.
    let path = write(
        d,
        "bad.toml",
        &format!("data_dir = \"/tmp/x\"\n\n[sources.demo]\ntype = \"demo_events\"\n\n{sink}buffer.max_evnts = 10\n"),
    );
    assert_config_error(&[&path], &["bad.toml:9", "max_evnts"]);

    // An input that does not exist.
    let path = write(
        d,
        "missing_input.toml",
        "[sources.demo]\ntype = \"demo_events\"\n[sinks.out]\ntype = \"console\"\ninputs = [\"nope\"]\n",
    );
    assert_config_error(&[&path], &["missing_input.toml:5", "`nope`"]);

    // A wrong value inside a component's own options.
    let path = write(
        d,
        "bad_value.toml",
        &format!(
            "[sources.demo]\ntype = \"demo_events\"\n\n{sink}encoding.extended_json = \"loose\"\n"
        ),
    );
    assert_config_error(
        &[&path],
        &["bad_value.toml:7", "sinks.out.encoding.extended_json"],
    );

    // A duplicate id across merged files names both places.
    let a = write(d, "a.toml", "[sources.demo]\ntype = \"demo_events\"\n");
    let b = write(
        d,
        "b.toml",
        &format!("[sources.demo]\ntype = \"demo_events\"\n{sink}"),
    );
    assert_config_error(&[&a, &b], &["b.toml:1", "a.toml:1"]);

    // Messages in the config's words: a duplicate key named, a number's
    // type as "a whole number", an unknown top-level key named once.
    let path = write(
        d,
        "dup.toml",
        &format!("[sources.demo]\ntype = \"demo_events\"\n\n{sink}buffer.max_events = 10\nbuffer.max_events = 20\n"),
    );
    assert_config_error(&[&path], &["dup.toml:8", "duplicate key `", "max_events`"]);
    let path = write(
        d,
        "int.toml",
        &format!("[sources.demo]\ntype = \"demo_events\"\n\n{sink}buffer.max_events = -1\n"),
    );
    assert_config_error(&[&path], &["int.toml:7", "a whole number (0 or more)"]);
    let path = write(
        d,
        "top.toml",
        "data_dri = \"/tmp/x\"\n[sources.demo]\ntype = \"demo_events\"\n",
    );
    assert_config_error(&[&path], &["top.toml:1: `data_dri`: unknown field"]);

    // A required variable that is unset.
    let path = write(
        d,
        "env.toml",
        "data_dir = \"${MONGO_ADLS_TEST_UNSET:?set it}\"\n",
    );
    assert_config_error(&[&path], &["env.toml:1", "set it"]);

    // An unset variable is named where its empty value fails, and the
    // driver's debug dump is not shown.
    let path = write(
        d,
        "unset.toml",
        "data_dir = \"/tmp/x\"\n[sources.mongo]\ntype = \"mongodb_change_stream\"\nuri = \"${MONGO_ADLS_TEST_UNSET}\"\ndatabase = \"shop\"\n[sinks.out]\ntype = \"console\"\ninputs = [\"mongo\"]\n",
    );
    assert_config_error(
        &[&path],
        &[
            "unset.toml:4: `sources.mongo.uri`: is not a MongoDB connection string: connection string contains no scheme (the environment variable `MONGO_ADLS_TEST_UNSET` used on this line is not set",
        ],
    );
    let stderr = String::from_utf8_lossy(
        &bin()
            .args(["validate", "-c"])
            .arg(&path)
            .output()
            .unwrap()
            .stderr,
    )
    .into_owned();
    assert!(
        !stderr.contains("labels:") && !stderr.contains("server response"),
        "{stderr}"
    );

    // A variable inside a default is refused by name, not passed on as a
    // broken value.
    let path = write(
        d,
        "nested.toml",
        "data_dir = \"${MONGO_ADLS_TEST_UNSET:-${HOME}}\"\n",
    );
    assert_config_error(
        &[&path],
        &[
            "nested.toml:1",
            "a variable inside a default is not supported",
        ],
    );
}

#[test]
fn every_example_config_validates() {
    let mut checked = 0;
    for entry in std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/config-examples")).unwrap()
    {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            assert_valid(&path);
            checked += 1;
        }
    }
    assert!(checked > 0);
}

fn demo_config(dir: &Path, extra: &str) -> std::path::PathBuf {
    write(
        dir,
        "demo.toml",
        &format!(
            "data_dir = \"{}/data\"\n{extra}\n[sources.demo]\ntype = \"demo_events\"\ninterval_secs = 0.0005\n[sinks.out]\ntype = \"console\"\ninputs = [\"demo\"]\n",
            dir.display()
        ),
    )
}

fn seqs(stdout: &[u8]) -> Vec<u64> {
    String::from_utf8_lossy(stdout)
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["fullDocument"]["seq"]
                .as_u64()
                .unwrap()
        })
        .collect()
}

fn acknowledged(dir: &Path) -> u64 {
    let text = std::fs::read_to_string(dir.join("data/demo/checkpoint.json")).unwrap();
    serde_json::from_str::<serde_json::Value>(&text).unwrap()["acknowledged"]
        .as_u64()
        .unwrap()
}

fn sigterm(pid: u32) {
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
}

/// The agent on `config` with its output read as it comes, so a test acts
/// once something was printed rather than after a fixed time (which a
/// loaded machine can overrun).
struct Watched {
    /// Taken by `finish`; killed on drop (a failed wait must not leave the
    /// agent running).
    child: Option<std::process::Child>,
    readers: Vec<std::thread::JoinHandle<()>>,
    /// stdout and stderr so far.
    output: [std::sync::Arc<std::sync::Mutex<Vec<u8>>>; 2],
}

impl Watched {
    fn start(config: &Path) -> Self {
        use std::io::Read as _;
        let mut child = bin()
            .arg("-c")
            .arg(config)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn_tracked();
        let output = [Default::default(), Default::default()];
        let pipes: [Box<dyn std::io::Read + Send>; 2] = [
            Box::new(child.stdout.take().unwrap()),
            Box::new(child.stderr.take().unwrap()),
        ];
        let readers = pipes
            .into_iter()
            .zip(&output)
            .map(|(mut pipe, sink)| {
                let sink: std::sync::Arc<std::sync::Mutex<Vec<u8>>> = std::sync::Arc::clone(sink);
                std::thread::spawn(move || {
                    let mut buf = [0u8; 8192];
                    while let Ok(n @ 1..) = pipe.read(&mut buf) {
                        sink.lock().unwrap().extend_from_slice(&buf[..n]);
                    }
                })
            })
            .collect();
        Self {
            child: Some(child),
            readers,
            output,
        }
    }

    fn signal(&self, signal: i32) {
        let pid = self.child.as_ref().expect("running").id();
        unsafe { libc::kill(pid as i32, signal) };
    }

    /// Waits (60 s at most) until `stream` (0: stdout, 1: stderr) holds
    /// `lines` complete lines.
    fn wait_lines(&self, stream: usize, lines: usize) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let n = self.output[stream]
                .lock()
                .unwrap()
                .iter()
                .filter(|b| **b == b'\n')
                .count();
            if n >= lines {
                return;
            }
            assert!(Instant::now() < deadline, "{n} of {lines} lines in 60 s");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits (60 s at most) until stderr holds `text`.
    fn wait_stderr(&self, text: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !String::from_utf8_lossy(&self.output[1].lock().unwrap()).contains(text) {
            assert!(Instant::now() < deadline, "no {text:?} on stderr in 60 s");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for the exit; its code, stdout and stderr.
    fn finish(mut self) -> (Option<i32>, Vec<u8>, String) {
        let status = self.child.take().expect("running").wait().unwrap();
        for reader in std::mem::take(&mut self.readers) {
            reader.join().unwrap();
        }
        let [out, err] =
            std::mem::take(&mut self.output).map(|o| std::mem::take(&mut *o.lock().unwrap()));
        (
            status.code(),
            out,
            String::from_utf8_lossy(&err).into_owned(),
        )
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Runs the agent until it printed `lines` events, stops it with SIGTERM
/// (it must exit 0) and returns the printed sequence numbers.
fn sigterm_after(config: &Path, lines: usize) -> Vec<u64> {
    let child = Watched::start(config);
    child.wait_lines(0, lines);
    child.signal(libc::SIGTERM);
    let (code, stdout, stderr) = child.finish();
    assert_eq!(code, Some(0), "{stderr}");
    seqs(&stdout)
}

#[test]
fn sigterm_drains_and_kill_9_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let config = demo_config(dir.path(), "");

    // Run 1: SIGTERM. Every printed event is acknowledged, and only those.
    let first = sigterm_after(&config, 200);
    assert_eq!(first, (1..=first.len() as u64).collect::<Vec<_>>());
    assert_eq!(acknowledged(dir.path()), first.len() as u64);

    // Run 2: kill -9. It starts right after run 1's last event.
    let child = Watched::start(&config);
    child.wait_lines(0, 1);
    // Killed once a checkpoint of this run is saved: run 3 resumes from it.
    let deadline = Instant::now() + Duration::from_secs(60);
    while acknowledged(dir.path()) <= first.len() as u64 {
        assert!(Instant::now() < deadline, "no checkpoint saved in 60 s");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.signal(libc::SIGKILL);
    let (_, stdout, _) = child.finish();
    let second = seqs(&stdout);
    assert_eq!(
        second.first(),
        Some(&(first.len() as u64 + 1)),
        "nothing acknowledged is sent again"
    );
    let committed = acknowledged(dir.path());
    assert!(
        committed <= *second.last().unwrap(),
        "checkpoint never ahead of output"
    );

    // Run 3: resumes after the checkpoint, so nothing unacknowledged is lost.
    let third = sigterm_after(&config, 1);
    assert_eq!(third.first(), Some(&(committed + 1)));
}

#[test]
fn metrics_endpoint_shows_tagged_component_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let port = support::free_port();
    let config = demo_config(dir.path(), &format!("api.address = \"127.0.0.1:{port}\""));
    let child = spawn_quiet(&config);

    let get = |path: &str| support::http_get(port, path);
    let deadline = Instant::now() + Duration::from_secs(20);
    let metrics = loop {
        if let Some(body) = get("/metrics") {
            if body.contains("component_sent_events_total{component_id=\"out\"") {
                break body;
            }
        }
        assert!(Instant::now() < deadline, "metrics never appeared");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(get("/health").unwrap().contains("200 OK"));
    sigterm(child.id());
    child.wait_with_output().unwrap();

    for needle in [
        r#"component_sent_events_total{component_id="demo",component_kind="source",component_type="demo_events"}"#,
        r#"component_received_events_total{component_id="out",component_kind="sink",component_type="console"}"#,
        r#"component_received_event_bytes_total{component_id="out",component_kind="sink",component_type="console"}"#,
        r#"component_sent_event_bytes_total{component_id="out",component_kind="sink",component_type="console"}"#,
        r#"buffer_events{component_id="out",component_kind="sink",component_type="console"}"#,
        r#"buffer_byte_size{component_id="out",component_kind="sink",component_type="console"}"#,
    ] {
        assert!(metrics.contains(needle), "missing {needle} in:\n{metrics}");
    }
}

/// One data_dir serves one agent: a second agent on it exits 78 at once,
/// naming the holder; after the first stops, a new one starts.
#[test]
fn a_second_agent_on_one_data_dir_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let config = demo_config(dir.path(), "");
    let mut first = spawn_quiet(&config);
    let lock = dir.path().join("data/.lock");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::read_to_string(&lock).unwrap_or_default().trim() != first.id().to_string() {
        assert!(
            Instant::now() < deadline,
            "the first agent never took the lock"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let second = bin().arg("-c").arg(&config).output().unwrap();
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert_eq!(second.status.code(), Some(78), "{stderr}");
    assert!(
        stderr.contains("in use by another mongo-adls")
            && stderr.contains(&format!("pid {}", first.id())),
        "{stderr}"
    );
    // Running (its signal handlers are installed once events flow).
    let checkpoint = dir.path().join("data/demo/checkpoint.json");
    while !checkpoint.exists() {
        assert!(
            Instant::now() < deadline,
            "the first agent never checkpointed"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    sigterm(first.id());
    assert_eq!(first.wait().unwrap().code(), Some(0));
    // kill -9 leaves no stale lock either. Each waits for the observable
    // lock (its pid in the lock file), not a fixed time: the third must
    // hold it when killed, and the fourth must take it after.
    let holds_lock = |child: &mut std::process::Child, what: &str| {
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::fs::read_to_string(&lock).unwrap_or_default().trim() != child.id().to_string() {
            assert!(
                child.try_wait().unwrap().is_none(),
                "{what}: exited without taking the lock"
            );
            assert!(Instant::now() < deadline, "{what}: never took the lock");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    let mut third = spawn_quiet(&config);
    holds_lock(&mut third, "the third agent");
    third.kill().unwrap();
    third.wait().unwrap();
    let mut fourth = spawn_quiet(&config);
    holds_lock(&mut fourth, "refused after kill -9 of the holder");
    fourth.kill().unwrap();
    fourth.wait().unwrap();
}

/// A busy API port stops the agent at start instead of running it
/// without `/health`.
#[test]
fn a_busy_api_port_exits_78() {
    let dir = tempfile::tempdir().unwrap();
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port();
    let config = demo_config(dir.path(), &format!("api.address = \"127.0.0.1:{port}\""));
    let out = bin().arg("-c").arg(&config).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{stderr}");
    assert!(stderr.contains("`api.address`"), "{stderr}");
}

/// Two sinks whose files could be the same ones are a config error naming
/// both; different literal path prefixes are fine.
#[test]
fn two_sinks_on_one_lake_path_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let sink = |id: &str, lake: &str, prefix: &str| {
        format!(
            "[sinks.{id}]\ntype = \"adls_partitioned_jsonl\"\ninputs = [\"demo\"]\naccount_url = \"file://{}\"\nfilesystem = \"raw\"\ncreate_filesystem = true\npath_prefix = \"{prefix}\"\n",
            dir.path().join(lake).display()
        )
    };
    let head = "data_dir = \"/tmp/unused\"\n[sources.demo]\ntype = \"demo_events\"\n";
    let same = write(
        dir.path(),
        "same.toml",
        &format!(
            "{head}{}{}",
            sink("a", "lake", "{{ ns.db }}/"),
            sink("b", "lake/", "{{ ns.coll }}/")
        ),
    );
    assert_config_error(
        &[&same],
        &[
            "same.toml:",
            "sinks `a` and `b` both write to",
            "`a`'s `path_prefix` starts with a template field",
        ],
    );
    let nested = write(
        dir.path(),
        "nested.toml",
        &format!(
            "{head}{}{}",
            sink("a", "lake", "x/"),
            sink("b", "lake", "x/y/{{ ns.db }}/")
        ),
    );
    assert_config_error(
        &[&nested],
        &[
            "sinks `a` and `b`",
            "every name of `a` starts with \"x/\"",
            "every name of `b` starts with \"x/y/\"",
        ],
    );
    let apart = write(
        dir.path(),
        "apart.toml",
        &format!(
            "{head}{}{}",
            sink("a", "lake", "x/"),
            sink("b", "lake", "y/")
        ),
    );
    assert_valid(&apart);
}

/// Two agents with their own data_dirs pointed at one `file://` lake path
/// (a misconfiguration the config check cannot see): they race for the same
/// file names, and still every visible file is one writer's, whole, in
/// order. (Before per-writer temporary names, they shared one temporary
/// file and sealed files with interleaved, unparsable lines.)
#[test]
fn two_agents_on_one_file_lake_never_corrupt_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let agents: Vec<_> = (0..2)
        .map(|i| {
            let config = write(
                dir.path(),
                &format!("writer{i}.toml"),
                &format!(
                    "data_dir = \"{root}/data{i}\"\n[sources.demo]\ntype = \"demo_events\"\ninterval_secs = 0.0005\n[sinks.lake]\ntype = \"adls_partitioned_jsonl\"\ninputs = [\"demo\"]\naccount_url = \"file://{root}/lake\"\nfilesystem = \"raw\"\ncreate_filesystem = true\nfile_name = \"events-%Y%m%d-%H%M%S\"\nroll.window_secs = 1\nroll.grace_secs = 0\nbatch.timeout_secs = 0.1\n",
                    root = dir.path().display()
                ),
            );
            spawn_quiet(&config)
        })
        .collect();
    std::thread::sleep(Duration::from_secs(5));
    for mut agent in agents {
        sigterm(agent.id());
        agent.wait().unwrap();
    }
    let mut files = 0;
    let mut pending = vec![dir.path().join("lake/raw")];
    while let Some(folder) = pending.pop() {
        for entry in std::fs::read_dir(&folder).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if path.is_dir() {
                pending.push(path);
                continue;
            }
            assert!(
                name.starts_with("events-") && name.ends_with(".jsonl"),
                "stray file {}",
                path.display()
            );
            let seqs: Vec<u64> = std::fs::read_to_string(&path)
                .unwrap()
                .lines()
                .map(|line| {
                    let v: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| {
                        panic!("{}: corrupt line {line:?}: {e}", path.display())
                    });
                    v["fullDocument"]["seq"].as_u64().unwrap()
                })
                .collect();
            assert!(!seqs.is_empty(), "{}", path.display());
            assert!(
                seqs.windows(2).all(|w| w[0] < w[1]),
                "{}: not one writer's, in order: {seqs:?}",
                path.display()
            );
            files += 1;
        }
    }
    assert!(files > 2, "the agents sealed {files} files");
}

/// A SIGTERM while the agent is still starting (here: a sink healthcheck
/// waiting on storage that never answers) stops it cleanly with exit 0,
/// instead of the default action killing it.
#[test]
fn sigterm_during_start_up_stops_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    // Accepts connections (the kernel does) and never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let config = write(
        dir.path(),
        "silent.toml",
        &format!(
            "data_dir = \"{}/data\"\n[sources.demo]\ntype = \"demo_events\"\n[sinks.lake]\ntype = \"adls_partitioned_jsonl\"\ninputs = [\"demo\"]\naccount_url = \"http://127.0.0.1:{port}/devstoreaccount1\"\nfilesystem = \"raw\"\nauth.shared_key = \"{}\"\n",
            dir.path().display(),
            support::AZURITE_KEY
        ),
    );
    let child = Watched::start(&config);
    // Logged once signals are caught; the healthcheck then waits on the
    // silent listener.
    child.wait_stderr("Starting mongo-adls.");
    std::thread::sleep(Duration::from_millis(500));
    child.signal(libc::SIGTERM);
    let started = Instant::now();
    let (code, _, stderr) = child.finish();
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("Stopped during start-up"), "{stderr}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "stopped at once"
    );
}

/// `mongo-adls snapshot` without a signal collection exits 78 and says
/// what to set; a `signal_collection` with `snapshot = "initial"` is a
/// configuration error naming the option and its line. (Needs no MongoDB:
/// both are refused before any connection.)
#[test]
fn snapshot_requests_need_a_signal_collection() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let source = "[sources.mongo]\ntype = \"mongodb_change_stream\"\nuri = \"mongodb://127.0.0.1:1/?replicaSet=rs0\"\ndatabase = \"shop\"\n";
    let sink = "[sinks.out]\ntype = \"blackhole\"\ninputs = [\"mongo\"]\n";
    let path = write(
        d,
        "plain.toml",
        &format!("data_dir = \"/tmp/x\"\n{source}{sink}"),
    );
    let out = bin()
        .args(["snapshot", "orders", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{stderr}");
    assert!(stderr.contains("`signal_collection`"), "{stderr}");

    let path = write(
        d,
        "initial.toml",
        &format!("data_dir = \"/tmp/x\"\n{source}snapshot = \"initial\"\nsignal_collection = \"signals\"\n{sink}"),
    );
    assert_config_error(
        &[&path],
        &["initial.toml:", "signal_collection", "incremental"],
    );
}
