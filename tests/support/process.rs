//! Processes the suite starts: free ports, recorded spawns, the binaries.

use super::*;

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
pub(super) fn listening(child: &mut Child, port: u16, timeout: Duration) -> bool {
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

/// The `mongo-adls` binary (`MONGO_ADLS_TEST_BINARY`, else the one cargo
/// built), without any MONGO_ADLS_CONFIG of the caller. The override lets a
/// long run use a copy while the target directory is rebuilt.
pub fn mongo_adls() -> Command {
    let binary = std::env::var_os("MONGO_ADLS_TEST_BINARY")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_mongo-adls")));
    let mut cmd = Command::new(binary);
    cmd.env_remove("MONGO_ADLS_CONFIG");
    cmd
}

pub(super) fn tool(env: &str, default: &str) -> PathBuf {
    std::env::var_os(env).map(PathBuf::from).unwrap_or_else(|| {
        let services = std::env::var_os("MONGO_ADLS_SERVICES_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(".services"));
        services.join(default)
    })
}
