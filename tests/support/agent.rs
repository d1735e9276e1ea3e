//! A running `mongo-adls` and what it answers: logs, `/health`, `state show`; polling.

use super::*;

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
