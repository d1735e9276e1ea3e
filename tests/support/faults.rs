//! The one fake of the suite: a proxy in front of Azurite that injects failures.

use super::*;

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
pub(super) async fn proxy_one(
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
