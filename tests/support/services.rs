//! The real services: a single-node `mongod` replica set and Azurite.

use super::*;

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
        self.restart_after(Duration::ZERO).await;
    }

    /// Restarts after `down` without a server: longer than a client's
    /// server selection timeout, the driver's own one resume attempt fails
    /// too and the error reaches the client.
    pub async fn restart_after(&mut self, down: Duration) {
        self.kill();
        tokio::time::sleep(down).await;
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
        keep_if_failing(&mut self._dir, "azurite's data");
    }
}

/// A test's temporary directory, kept (and its path printed) when the test
/// fails, so its logs and the storage it wrote can be read afterwards.
pub struct TestDir(tempfile::TempDir);

impl TestDir {
    pub fn new() -> Self {
        Self(tempfile::tempdir().unwrap())
    }

    pub fn path(&self) -> &Path {
        self.0.path()
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        keep_if_failing(&mut self.0, "the test's directory");
    }
}

fn keep_if_failing(dir: &mut tempfile::TempDir, what: &str) {
    if std::thread::panicking() {
        dir.disable_cleanup(true);
        eprintln!("kept {what} for diagnosis: {}", dir.path().display());
    }
}
