//! Real services for integration tests: a single-node `mongod` replica set
//! and Azurite, each started on a free port in its own temporary directory
//! and stopped (by PID) when dropped. Binaries come from
//! `e2e/services.sh install` (env `MONGO_ADLS_MONGOD`, `MONGO_ADLS_AZURITE`,
//! or the default `.services/` paths).

#![allow(dead_code)]

pub mod load;

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use mongodb::{bson::doc, options::ClientOptions, Client};

/// A port free right now. Another process can take it before a service
/// binds it, so services started on one use [`on_free_port`], which tries
/// again on a new port when the service could not bind.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts something on a free port with `start`, which answers `None` when
/// the port turned out to be taken; up to five ports are tried.
pub fn on_free_port<T>(what: &str, mut start: impl FnMut(u16) -> Option<T>) -> T {
    for _ in 0..5 {
        if let Some(started) = start(free_port()) {
            return started;
        }
    }
    panic!("{what} could not bind a free port in five tries");
}

/// Waits until `port` accepts connections while `child` runs: false when
/// the child exited first (it could not bind, say).
fn listening(child: &mut Child, port: u16, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if child.try_wait().unwrap().is_some() {
            return false;
        }
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            // A squatter on the port makes the child exit soon; a child
            // still alive now is very likely the listener.
            return child.try_wait().unwrap().is_none();
        }
        assert!(
            Instant::now() < deadline,
            "port {port} not listening after {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Spawning that leaves a trace: every process the suite starts is
/// recorded, as `<pid> <start time>` (field 22 of `/proc/<pid>/stat`), in
/// the file named by `MONGO_ADLS_TEST_PIDS` when it is set. `e2e/test.sh`
/// sets it to a file of its own and, after the run, kills the processes
/// listed there that are still alive with the same start time (a reused
/// pid is left alone): only what this run started, never by name. The
/// Drop impls below stop everything in a normal run; the file covers a
/// test that aborts or a child a test forgot to stop.
pub trait SpawnTracked {
    fn spawn_tracked(&mut self) -> Child;
}

impl SpawnTracked for Command {
    fn spawn_tracked(&mut self) -> Child {
        let child = self
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {:?}: {e}", self.get_program()));
        if let Some(file) = std::env::var_os("MONGO_ADLS_TEST_PIDS") {
            use std::io::Write;
            let stat =
                std::fs::read_to_string(format!("/proc/{}/stat", child.id())).unwrap_or_default();
            // Fields after the command name, which is in parentheses:
            // state is field 3, so start time (22) is the 20th of these.
            let start = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(19))
                .unwrap_or("?");
            let line = format!("{} {start}\n", child.id());
            // One short O_APPEND write per line: concurrent tests do not
            // interleave.
            let _ = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(file)
                .and_then(|mut f| f.write_all(line.as_bytes()));
        }
        child
    }
}

/// The `mongo-adls` binary, without any MONGO_ADLS_CONFIG of the caller.
pub fn mongo_adls() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mongo-adls"));
    cmd.env_remove("MONGO_ADLS_CONFIG");
    cmd
}

fn tool(env: &str, default: &str) -> PathBuf {
    std::env::var_os(env).map(PathBuf::from).unwrap_or_else(|| {
        let services = std::env::var_os("MONGO_ADLS_SERVICES_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(".services"));
        services.join(default)
    })
}

pub struct Mongod {
    child: Option<Child>,
    /// `--replSet rs0` (false: a standalone, which cannot serve change
    /// streams).
    replica_set: bool,
    pub port: u16,
    dbpath: PathBuf,
    _dir: Option<tempfile::TempDir>,
}

impl Mongod {
    /// Starts a fresh single-node replica set and waits for PRIMARY.
    pub async fn start() -> Self {
        let m = Self::launch(true);
        m.initiate().await;
        m
    }

    /// Starts a standalone mongod (no replica set): change streams refuse
    /// it.
    pub fn start_standalone() -> Self {
        Self::launch(false)
    }

    /// A mongod listening on a free port, in a fresh directory.
    fn launch(replica_set: bool) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let dbpath = dir.path().join("db");
        std::fs::create_dir_all(&dbpath).unwrap();
        let mut m = Self {
            child: None,
            replica_set,
            port: 0,
            dbpath,
            _dir: Some(dir),
        };
        on_free_port("mongod", |port| {
            m.port = port;
            m.spawn();
            let child = m.child.as_mut().unwrap();
            listening(child, port, Duration::from_secs(60)).then_some(())
        });
        m
    }

    fn spawn(&mut self) {
        let mongod = tool("MONGO_ADLS_MONGOD", "py/fiftyone/db/bin/mongod");
        assert!(
            mongod.exists(),
            "mongod not found at {}: run e2e/services.sh install",
            mongod.display()
        );
        let mut command = Command::new(mongod);
        if self.replica_set {
            command.args(["--replSet", "rs0"]);
        }
        let child = command
            .args(["--bind_ip", "127.0.0.1", "--port"])
            .arg(self.port.to_string())
            .arg("--dbpath")
            .arg(&self.dbpath)
            .args([
                "--wiredTigerCacheSizeGB",
                "0.25",
                "--wiredTigerEngineConfigString",
                "log=(prealloc=false,file_max=20MB)",
                "--setParameter",
                "diagnosticDataCollectionEnabled=false",
                // Idle replica sets advance their cluster time with a no-op
                // every 10 s by default; 1 s makes watermarks, and so file
                // sealing, quick in tests.
                "--setParameter",
                "periodicNoopIntervalSecs=1",
                "--oplogSize",
                "990",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn_tracked();
        self.child = Some(child);
    }

    async fn direct(&self) -> Client {
        let mut o = ClientOptions::parse(format!(
            "mongodb://127.0.0.1:{}/?directConnection=true",
            self.port
        ))
        .await
        .unwrap();
        o.server_selection_timeout = Some(Duration::from_secs(2));
        Client::with_options(o).unwrap()
    }

    async fn initiate(&self) {
        let client = self.direct().await;
        let admin = client.database("admin");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match admin
                .run_command(doc! { "replSetInitiate": { "_id": "rs0", "members": [ { "_id": 0, "host": format!("127.0.0.1:{}", self.port) } ] } })
                .await
            {
                Ok(_) => break,
                Err(e) if e.to_string().contains("already initialized") => break,
                Err(_) if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(200)).await,
                Err(e) => panic!("replSetInitiate failed: {e}"),
            }
        }
        self.wait_primary().await;
    }

    async fn wait_primary(&self) {
        let client = self.direct().await;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(h) = client
                .database("admin")
                .run_command(doc! { "hello": 1 })
                .await
            {
                if h.get_bool("isWritablePrimary").unwrap_or(false) {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "mongod did not become PRIMARY");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn uri(&self) -> String {
        format!("mongodb://127.0.0.1:{}/?replicaSet=rs0", self.port)
    }

    pub async fn client(&self) -> Client {
        let mut o = ClientOptions::parse(self.uri()).await.unwrap();
        o.server_selection_timeout = Some(Duration::from_secs(30));
        Client::with_options(o).unwrap()
    }

    /// Kills mongod (SIGKILL) and starts it again on the same port and data.
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn();
        self.wait_primary().await;
    }

    /// Replaces the data directory with an empty one (a new deployment on
    /// the same address): old resume tokens are not in its oplog.
    pub async fn recreate(&mut self) {
        self.kill();
        std::fs::remove_dir_all(&self.dbpath).unwrap();
        std::fs::create_dir_all(&self.dbpath).unwrap();
        self.spawn();
        self.initiate().await;
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Mongod {
    fn drop(&mut self) {
        self.kill();
    }
}

pub struct Azurite {
    child: Child,
    pub port: u16,
    on_disk: bool,
    _dir: tempfile::TempDir,
}

pub const AZURITE_ACCOUNT: &str = "devstoreaccount1";
pub const AZURITE_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

impl Azurite {
    /// In memory: fast, gone when stopped.
    pub fn start() -> Self {
        Self::launch(false)
    }

    /// Persisted in its directory, so [`Azurite::restart`] keeps the data.
    pub fn start_on_disk() -> Self {
        Self::launch(true)
    }

    fn launch(on_disk: bool) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (child, port) = on_free_port("azurite", |port| {
            let mut child = Self::spawn(port, dir.path(), on_disk);
            if listening(&mut child, port, Duration::from_secs(30)) {
                Some((child, port))
            } else {
                let _ = child.wait();
                None
            }
        });
        Self {
            child,
            port,
            on_disk,
            _dir: dir,
        }
    }

    fn spawn(port: u16, dir: &Path, on_disk: bool) -> Child {
        let azurite = tool("MONGO_ADLS_AZURITE", "node/node_modules/.bin/azurite-blob");
        assert!(
            azurite.exists(),
            "azurite not found at {}: run e2e/services.sh install",
            azurite.display()
        );
        let mut cmd = Command::new(azurite);
        cmd.args(["--blobHost", "127.0.0.1", "--blobPort"])
            .arg(port.to_string())
            .args(["--skipApiVersionCheck", "--silent"]);
        if on_disk {
            cmd.arg("--location").arg(dir);
        } else {
            cmd.arg("--inMemoryPersistence");
        }
        cmd.current_dir(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn_tracked()
    }

    /// Stops (SIGINT, so an on-disk Azurite saves its metadata: it keeps
    /// recent writes in memory, and after SIGKILL loses blocks it had
    /// acknowledged, which real storage never does) and restarts on the
    /// same port and data. An in-memory Azurite comes back empty.
    pub fn restart(&mut self) {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.child.try_wait().unwrap().is_none() {
            if Instant::now() > deadline {
                let _ = self.child.kill();
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        self.child = Self::spawn(self.port, self._dir.path(), self.on_disk);
        assert!(
            listening(&mut self.child, self.port, Duration::from_secs(30)),
            "azurite did not come back on port {}",
            self.port
        );
    }

    pub fn account_url(&self) -> String {
        format!("http://127.0.0.1:{}/{AZURITE_ACCOUNT}", self.port)
    }
}

impl Drop for Azurite {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A `mongo-adls` process (stdout discarded), killed when dropped so a
/// failing test never leaves one behind.
pub struct Agent(Child);

impl Agent {
    pub fn start(config: &Path) -> Self {
        Self::start_with(config, &[])
    }

    /// With extra command-line arguments (`-qq` for errors only, say).
    pub fn start_with(config: &Path, args: &[&str]) -> Self {
        Self::spawn(config, args, Stdio::inherit())
    }

    /// With its log appended to `log` instead of the test's output.
    pub fn start_logged(config: &Path, log: &Path) -> Self {
        Self::start_logged_with(config, log, &[])
    }

    /// Both: extra arguments (`-vv`, say) and the log in `log`.
    pub fn start_logged_with(config: &Path, log: &Path, args: &[&str]) -> Self {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        Self::spawn(config, args, file.into())
    }

    /// The exit code, once the agent exits by itself within `timeout`
    /// (`None` if it is still running then).
    pub fn exit_within(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.0.try_wait().unwrap() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// With its log in `log` and extra environment variables.
    pub fn start_logged_env(config: &Path, log: &Path, env: &[(&str, &str)]) -> Self {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        let child = mongo_adls()
            .arg("--config")
            .arg(config)
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::from(file))
            .spawn_tracked();
        Self(child)
    }

    /// The one way tests launch a long-running agent.
    fn spawn(config: &Path, args: &[&str], stderr: Stdio) -> Self {
        let child = mongo_adls()
            .arg("--config")
            .arg(config)
            .args(args)
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn_tracked();
        Self(child)
    }

    /// The process id (for reading `/proc/<pid>/status`).
    pub fn pid(&self) -> u32 {
        self.0.id()
    }

    /// Still running (it has not exited by itself).
    pub fn running(&mut self) -> bool {
        self.0.try_wait().unwrap().is_none()
    }

    /// SIGKILL, and wait for the process to be gone.
    pub fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }

    pub fn stop(mut self) -> Option<i32> {
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        self.0.wait().unwrap().code()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The last `n` lines of a log file, for failure messages.
pub fn log_tail(log: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// `/health`'s `role` (`active` or `standby`) of the agent whose API is on
/// `port`, while it answers.
pub fn role(port: u16) -> Option<String> {
    let response = http_get(port, "/health")?;
    let body: serde_json::Value =
        serde_json::from_str(response.split("\r\n\r\n").nth(1)?.trim()).ok()?;
    body["role"].as_str().map(str::to_string)
}

/// The index of the one agent (by API port) whose `/health` says `active`
/// while every other says `standby`, once that holds within `timeout`;
/// else a panic with the roles and the ends of `logs`.
pub async fn one_active(ports: &[u16], logs: &[&Path], timeout: Duration) -> usize {
    let deadline = Instant::now() + timeout;
    loop {
        let roles: Vec<Option<String>> = ports.iter().map(|p| role(*p)).collect();
        let active: Vec<usize> = (0..roles.len())
            .filter(|i| roles[*i].as_deref() == Some("active"))
            .collect();
        let standby = roles
            .iter()
            .filter(|r| r.as_deref() == Some("standby"))
            .count();
        if active.len() == 1 && standby == ports.len() - 1 {
            return active[0];
        }
        if Instant::now() > deadline {
            let tails: Vec<String> = logs.iter().map(|l| log_tail(l, 40)).collect();
            panic!(
                "not one active agent and the rest standing by within {timeout:?}: roles {roles:?}; logs end:\n{}",
                tails.join("\n-----\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `mongo-adls state show -c <config>`: its output, which must succeed.
pub fn state_show(config: &Path) -> String {
    let out = mongo_adls()
        .args(["state", "show", "-c"])
        .arg(config)
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "state show failed: {shown}");
    shown
}

/// Polls `f` until it returns `Some` or `timeout` passes.
pub async fn eventually<T>(timeout: Duration, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "condition not met within {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Reads a filesystem (container) of an Azurite account through the
/// official SDK, signed with the account key.
pub struct Lake {
    container_url: azure_core::http::Url,
    options: azure_storage_blob::BlobClientOptions,
    container: azure_storage_blob::BlobContainerClient,
}

/// One listed object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listed {
    pub name: String,
    pub etag: String,
    pub size: u64,
}

impl Lake {
    pub fn new(azurite: &Azurite, filesystem: &str) -> Self {
        use std::sync::Arc;
        let policy =
            mongo_adls::azure::shared_key::SharedKeyPolicy::new(AZURITE_ACCOUNT, AZURITE_KEY)
                .unwrap();
        let client_options = azure_core::http::ClientOptions {
            per_try_policies: vec![Arc::new(policy)],
            ..Default::default()
        };
        let container_url =
            azure_core::http::Url::parse(&format!("{}/{filesystem}", azurite.account_url()))
                .unwrap();
        let container = azure_storage_blob::BlobContainerClient::new(
            container_url.clone(),
            None,
            Some(azure_storage_blob::BlobContainerClientOptions {
                client_options: client_options.clone(),
                ..Default::default()
            }),
        )
        .unwrap();
        Self {
            container_url,
            options: azure_storage_blob::BlobClientOptions {
                client_options,
                ..Default::default()
            },
            container,
        }
    }

    pub async fn create(&self) {
        self.container.create(None).await.unwrap();
    }

    /// Every committed object, sorted by name (an empty list when the
    /// container does not exist yet). Any other error fails the test: an
    /// empty answer would pass every "nothing was written" check.
    pub async fn list(&self) -> Vec<Listed> {
        use futures::TryStreamExt;
        let mut out = Vec::new();
        let mut pager = self
            .container
            .list_blobs(None)
            .unwrap_or_else(|e| panic!("listing {}: {e}", self.container_url));
        loop {
            match pager.try_next().await {
                Ok(Some(item)) => {
                    let props = item.properties.unwrap_or_default();
                    out.push(Listed {
                        name: item.name.unwrap_or_default(),
                        etag: props.etag.map(|e| e.to_string()).unwrap_or_default(),
                        size: props.content_length.unwrap_or_default(),
                    });
                }
                Ok(None) => break,
                Err(e) if e.http_status().map(u16::from) == Some(404) && out.is_empty() => {
                    return out;
                }
                Err(e) => panic!("listing {}: {e}", self.container_url),
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    pub async fn read(&self, name: &str) -> Vec<u8> {
        let mut url = self.container_url.clone();
        url.path_segments_mut().unwrap().extend(name.split('/'));
        let blob =
            azure_storage_blob::BlobClient::new(url, None, Some(self.options.clone())).unwrap();
        blob.download(None)
            .await
            .unwrap()
            .body
            .collect()
            .await
            .unwrap()
            .to_vec()
    }

    fn blob(&self, name: &str) -> azure_storage_blob::BlobClient {
        let mut url = self.container_url.clone();
        url.path_segments_mut().unwrap().extend(name.split('/'));
        azure_storage_blob::BlobClient::new(url, None, Some(self.options.clone())).unwrap()
    }

    /// Deletes an object (an operator's mistake, for tests of lost state).
    pub async fn delete(&self, name: &str) {
        self.blob(name).delete(None).await.unwrap();
    }

    /// Writes an object whole, replacing it (for tests of corrupt state).
    pub async fn put(&self, name: &str, bytes: Vec<u8>) {
        let body: bytes::Bytes = bytes.into();
        self.blob(name).upload(body.into(), None).await.unwrap();
    }

    /// The lines of an object, gunzipped when its name ends in `.gz`.
    pub async fn lines(&self, name: &str) -> Vec<serde_json::Value> {
        use std::io::Read;
        let raw = self.read(name).await;
        let text = if name.ends_with(".gz") {
            let mut s = String::new();
            flate2::read::MultiGzDecoder::new(&raw[..])
                .read_to_string(&mut s)
                .unwrap();
            s
        } else {
            String::from_utf8(raw).unwrap()
        };
        text.lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

/// A container (service) SAS for Azurite on `container` with exactly
/// `permissions` (service version 2019-12-12 signing rules), as
/// `az storage container generate-sas` makes.
pub fn container_sas(container: &str, permissions: &str) -> String {
    container_sas_until(container, permissions, "2099-01-01T00:00:00Z")
}

/// [`container_sas`] expiring at `se` (`YYYY-MM-DDTHH:MM:SSZ`).
pub fn container_sas_until(container: &str, permissions: &str, se: &str) -> String {
    let (sv, spr, sr) = ("2019-12-12", "https,http", "c");
    let resource = format!("/blob/{AZURITE_ACCOUNT}/{container}");
    // sp, st, se, resource, si, sip, spr, sv, sr, snapshot time, and the
    // five response headers.
    let to_sign = format!("{permissions}\n\n{se}\n{resource}\n\n\n{spr}\n{sv}\n{sr}\n\n\n\n\n\n");
    let sig = sas_signature(&to_sign);
    format!("sv={sv}&sr={sr}&sp={permissions}&se={se}&spr={spr}&sig={sig}")
}

/// An account SAS for Azurite (service version 2019-12-12 signing rules).
pub fn account_sas(permissions: &str) -> String {
    let (sv, ss, srt, se, spr) = (
        "2019-12-12",
        "b",
        "sco",
        "2099-01-01T00:00:00Z",
        "https,http",
    );
    let to_sign = format!("{AZURITE_ACCOUNT}\n{permissions}\n{ss}\n{srt}\n\n{se}\n\n{spr}\n{sv}\n");
    let sig = sas_signature(&to_sign);
    format!("sv={sv}&ss={ss}&srt={srt}&sp={permissions}&se={se}&spr={spr}&sig={sig}")
}

/// A SAS signature of `to_sign` with Azurite's key, URL-encoded.
fn sas_signature(to_sign: &str) -> String {
    use base64::Engine as _;
    use hmac::Mac;
    let key = base64::engine::general_purpose::STANDARD
        .decode(AZURITE_KEY)
        .unwrap();
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
    mac.update(to_sign.as_bytes());
    let sig = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    url::form_urlencoded::byte_serialize(sig.as_bytes()).collect()
}

/// Which failures [`FaultProxy`] injects: every `every`-th request gets the
/// next fault of `kinds` in turn, so each kind is sure to happen. With
/// `only`, a request whose request line lacks that text gets no fault
/// (e.g. `"comp=blocklist"`: only Put and Get Block List).
#[derive(Clone, Debug)]
pub struct Faults {
    pub every: u64,
    pub kinds: Vec<Fault>,
    pub only: Option<&'static str>,
}

#[derive(Clone, Copy, Debug)]
pub enum Fault {
    /// Answer 503 Server Busy without forwarding.
    Unavailable,
    /// Answer 429 with `Retry-After: 1` without forwarding.
    Throttled,
    /// Reset the connection without forwarding.
    Reset,
    /// Forward, then drop the response: the write happened, the client does
    /// not know.
    LoseResponse,
    /// Hold the request for 5 s (past the client's timeout), then close.
    Stall,
    /// Forward, then hold the response for 5 s (past the client's
    /// timeout) and close without it: the write is applied, the client
    /// times out and thinks it failed.
    ApplyThenStall,
    /// Hold the request for 5 s (past the client's timeout), then forward
    /// it and drop the response: the write is applied after the client
    /// gave up, perhaps after its retry (or a newer agent's write) landed.
    StallThenApply,
    /// Hold the request for this long, then forward it and relay nothing:
    /// counted as `late_applied` (2xx) or `late_refused` (412, a failed
    /// condition), so a test sees whether a late write changed anything.
    LateApply(Duration),
}

/// An HTTP proxy in front of Azurite that injects failures. This is the
/// one fake in the suite: real Azurite cannot be made to fail on demand.
/// It handles one request per connection and answers `Connection: close`.
pub struct FaultProxy {
    pub port: u16,
    pub stats: std::sync::Arc<std::sync::Mutex<HashMap<&'static str, u64>>>,
    /// While set, every request is answered 503 (a storage outage).
    down: std::sync::Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

use std::collections::HashMap;

impl FaultProxy {
    /// A proxy that injects nothing: it counts requests, and can be taken
    /// down ([`FaultProxy::set_down`]).
    pub async fn passthrough(upstream: u16) -> Self {
        Self::start(
            upstream,
            Faults {
                every: u64::MAX,
                kinds: Vec::new(),
                only: None,
            },
        )
        .await
    }

    pub async fn start(upstream: u16, faults: Faults) -> Self {
        use std::sync::{Arc, Mutex};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let stats: Arc<Mutex<HashMap<&'static str, u64>>> = Arc::default();
        let down: Arc<std::sync::atomic::AtomicBool> = Arc::default();
        let task = {
            let stats = Arc::clone(&stats);
            let down = Arc::clone(&down);
            tokio::spawn(async move {
                let mut n: u64 = 0;
                loop {
                    let Ok((conn, _)) = listener.accept().await else {
                        break;
                    };
                    n += 1;
                    let fault = (n.is_multiple_of(faults.every) && !faults.kinds.is_empty())
                        .then(|| faults.kinds[((n / faults.every) as usize) % faults.kinds.len()]);
                    let only = faults.only;
                    let fault = if down.load(std::sync::atomic::Ordering::Relaxed) {
                        Some(Fault::Unavailable)
                    } else {
                        fault
                    };
                    let stats = Arc::clone(&stats);
                    tokio::spawn(async move {
                        let action = proxy_one(conn, upstream, fault, only).await;
                        *stats.lock().unwrap().entry(action).or_default() += 1;
                    });
                }
            })
        };
        Self {
            port,
            stats,
            down,
            task,
        }
    }

    /// Starts (`true`) or ends a storage outage.
    pub fn set_down(&self, down: bool) {
        self.down.store(down, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn account_url(&self) -> String {
        format!("http://127.0.0.1:{}/{AZURITE_ACCOUNT}", self.port)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

// SO_LINGER 0 is exactly what is wanted: a reset instead of a clean close.
#[allow(deprecated)]
async fn proxy_one(
    mut conn: tokio::net::TcpStream,
    upstream: u16,
    fault: Option<Fault>,
    only: Option<&'static str>,
) -> &'static str {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // Read the request head and its Content-Length body.
    let mut buf = Vec::new();
    let head_end = loop {
        let mut chunk = [0u8; 16 * 1024];
        let n = match conn.read(&mut chunk).await {
            Ok(0) | Err(_) => return "client_closed",
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let request_line = head.lines().next().unwrap_or_default();
    let fault = fault.filter(|_| only.is_none_or(|text| request_line.contains(text)));
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    while buf.len() < head_end + length {
        let mut chunk = vec![0u8; 64 * 1024];
        match conn.read(&mut chunk).await {
            Ok(0) | Err(_) => return "client_closed",
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }

    match fault {
        Some(Fault::Unavailable) => {
            let _ = conn
                .write_all(b"HTTP/1.1 503 Server Busy\r\nx-ms-error-code: ServerBusy\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                .await;
            return "503";
        }
        Some(Fault::Throttled) => {
            let _ = conn
                .write_all(b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                .await;
            return "429";
        }
        Some(Fault::Reset) => {
            let _ = conn.set_linger(Some(Duration::ZERO));
            return "reset";
        }
        Some(Fault::Stall) => {
            tokio::time::sleep(Duration::from_secs(5)).await;
            return "stall";
        }
        Some(Fault::StallThenApply) => {
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
        Some(Fault::LateApply(hold)) => {
            tokio::time::sleep(hold).await;
        }
        Some(Fault::LoseResponse | Fault::ApplyThenStall) | None => {}
    }

    // Forward with `Connection: close` and relay the whole response.
    let mut request = String::new();
    for line in head.split("\r\n").filter(|l| !l.is_empty()) {
        if line.to_ascii_lowercase().starts_with("connection:") {
            continue;
        }
        request.push_str(line);
        request.push_str("\r\n");
    }
    request.push_str("Connection: close\r\n\r\n");
    let Ok(mut up) = tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await else {
        return "upstream_down";
    };
    if up.write_all(request.as_bytes()).await.is_err()
        || up.write_all(&buf[head_end..]).await.is_err()
    {
        return "upstream_down";
    }
    let mut response = Vec::new();
    let _ = up.read_to_end(&mut response).await;
    match fault {
        Some(Fault::LoseResponse) => {
            let _ = conn.set_linger(Some(Duration::ZERO));
            return "lost_response";
        }
        // Counted only when storage answered: the write was applied (or
        // refused by its conditions) while the client waited in vain.
        Some(Fault::ApplyThenStall) => {
            tokio::time::sleep(Duration::from_secs(5)).await;
            return if response.is_empty() {
                "upstream_down"
            } else {
                "applied_then_stall"
            };
        }
        Some(Fault::StallThenApply) => {
            return if response.is_empty() {
                "upstream_down"
            } else {
                "stall_then_applied"
            };
        }
        Some(Fault::LateApply(_)) => {
            let status = String::from_utf8_lossy(&response[..response.len().min(12)]).to_string();
            return match status.split(' ').nth(1) {
                Some(s) if s.starts_with('2') => "late_applied",
                Some("412") | Some("409") => "late_refused",
                Some(_) => "late_other",
                None => "upstream_down",
            };
        }
        _ => {}
    }
    let _ = conn.write_all(&response).await;
    let _ = conn.shutdown().await;
    "forwarded"
}

/// `GET path` on 127.0.0.1:`port`: the whole response (status line,
/// headers, body), or `None` while nothing answers.
pub fn http_get(port: u16, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    s.read_to_string(&mut response).ok()?;
    Some(response)
}

/// Rows a Delta commit's actions appended (its `numOutputRows`;
/// compactions add none).
pub fn delta_rows_appended(actions: impl IntoIterator<Item = serde_json::Value>) -> usize {
    actions
        .into_iter()
        .filter(|a| a["commitInfo"]["operation"] == "STREAMING UPDATE")
        .filter_map(|a| {
            a["commitInfo"]["operationMetrics"]["numOutputRows"]
                .as_str()?
                .parse::<usize>()
                .ok()
        })
        .sum()
}

/// Whether an object is a commit of a Delta table.
pub fn is_delta_commit(name: &str) -> bool {
    name.contains("/_delta_log/") && name.ends_with(".json")
}
