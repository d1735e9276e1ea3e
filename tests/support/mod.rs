//! Real services for integration tests: a single-node `mongod` replica set
//! and Azurite, each started on a free port in its own temporary directory
//! and stopped (by PID) when dropped. Binaries come from
//! `e2e/services.sh install` (env `MONGO_ADLS_MONGOD`, `MONGO_ADLS_AZURITE`,
//! or the default `.services/` paths).

#![allow(dead_code)]

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use mongodb::{bson::doc, options::ClientOptions, Client};

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
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
    pub port: u16,
    dbpath: PathBuf,
    _dir: Option<tempfile::TempDir>,
}

impl Mongod {
    /// Starts a fresh single-node replica set and waits for PRIMARY.
    pub async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let dbpath = dir.path().join("db");
        std::fs::create_dir_all(&dbpath).unwrap();
        let mut m = Self {
            child: None,
            port: free_port(),
            dbpath,
            _dir: Some(dir),
        };
        m.spawn();
        m.initiate().await;
        m
    }

    fn spawn(&mut self) {
        let mongod = tool("MONGO_ADLS_MONGOD", "py/fiftyone/db/bin/mongod");
        assert!(
            mongod.exists(),
            "mongod not found at {}: run e2e/services.sh install",
            mongod.display()
        );
        let child = Command::new(mongod)
            .args(["--replSet", "rs0", "--bind_ip", "127.0.0.1", "--port"])
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
                "--oplogSize",
                "990",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
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
    _dir: tempfile::TempDir,
}

pub const AZURITE_ACCOUNT: &str = "devstoreaccount1";
pub const AZURITE_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

impl Azurite {
    pub fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let azurite = tool("MONGO_ADLS_AZURITE", "node/node_modules/.bin/azurite-blob");
        assert!(
            azurite.exists(),
            "azurite not found at {}: run e2e/services.sh install",
            azurite.display()
        );
        let child = Command::new(azurite)
            .args(["--blobHost", "127.0.0.1", "--blobPort"])
            .arg(port.to_string())
            .arg("--location")
            .arg(dir.path())
            .args(["--inMemoryPersistence", "--skipApiVersionCheck", "--silent"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "azurite did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        Self {
            child,
            port,
            _dir: dir,
        }
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
