//! The writes in flight and the limit on them: bytes, not requests.
//!
//! A limit of `request.concurrency` requests caps throughput at
//! `concurrency` × block size per round trip. With one hot collection the
//! blocks are full (`batch.max_bytes`), but with a thousand active files
//! the pending budget leaves each only tens of KB, and eight such blocks
//! per round trip to a distant account drain at a few MB/s. What the
//! concurrency bounds is memory: `concurrency` × `batch.max_bytes` bytes
//! in flight. So that is the budget, whatever the block size: small blocks
//! go many at a time, up to [`MAX_REQUESTS_PER_CONCURRENCY`] ×
//! `concurrency` requests. Held writes count in (bytes and requests), so
//! while storage is down intake still stops once they fill the budget.

use futures::{future::BoxFuture, stream::FuturesUnordered, FutureExt, StreamExt};

use super::super::{held::HeldWrites, requests::WriteRequest};
use crate::sinks::adls_partitioned_jsonl::requests::WriteOutcome;

/// Requests in flight at most, per unit of `request.concurrency`, however
/// small they are (16: 128 at the default concurrency of 8).
pub const MAX_REQUESTS_PER_CONCURRENCY: usize = 16;

/// The writes in flight, each with the bytes it carries.
#[derive(Default)]
pub struct Inflight {
    requests: FuturesUnordered<BoxFuture<'static, (usize, WriteOutcome)>>,
    bytes: usize,
}

impl Inflight {
    /// Starts `request`, which carries `bytes` of data.
    pub fn push(&mut self, bytes: usize, request: WriteRequest) {
        self.bytes += bytes;
        self.requests
            .push(async move { (bytes, request.await) }.boxed());
    }

    /// The next finished request's outcome (pending while none is in
    /// flight).
    pub async fn next(&mut self) -> Option<WriteOutcome> {
        let (bytes, outcome) = self.requests.next().await?;
        self.bytes -= bytes;
        Some(outcome)
    }

    pub fn len(&self) -> usize {
        self.requests.len()
    }

    pub fn is_empty(&self) -> bool {
        self.requests.is_empty()
    }
}

/// How much may be in flight: `request.concurrency` × `batch.max_bytes`
/// bytes, in at most [`MAX_REQUESTS_PER_CONCURRENCY`] × `concurrency`
/// requests.
#[derive(Clone, Copy, Debug)]
pub struct RequestLimit {
    bytes: usize,
    requests: usize,
}

impl RequestLimit {
    pub fn new(concurrency: usize, max_bytes: usize) -> Self {
        Self {
            bytes: concurrency.saturating_mul(max_bytes),
            requests: concurrency.saturating_mul(MAX_REQUESTS_PER_CONCURRENCY),
        }
    }

    /// Whether a write of `bytes` may start now. The first one always
    /// may (a write can be as large as the budget).
    pub fn room_for(&self, bytes: usize, inflight: &Inflight, held: &HeldWrites) -> bool {
        let requests = inflight.len() + held.len();
        let carried = inflight.bytes + held.bytes();
        requests == 0 || (requests < self.requests && carried + bytes <= self.bytes)
    }

    /// How many held writes may be made again now. Their bytes and
    /// requests are counted in already, so only the request cap applies.
    pub fn room_for_held(&self, inflight: &Inflight) -> usize {
        self.requests.saturating_sub(inflight.len())
    }

    /// Whether more events may come in: a write of a full batch could
    /// start (or nothing is in flight).
    pub fn accepts(&self, max_bytes: usize, inflight: &Inflight, held: &HeldWrites) -> bool {
        self.room_for(max_bytes, inflight, held)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit() -> RequestLimit {
        RequestLimit::new(2, 100)
    }

    fn held() -> HeldWrites {
        let second = std::time::Duration::from_secs(1);
        HeldWrites::new(
            crate::backoff::Backoff::new(second, second),
            crate::health::component("inflight-test"),
        )
    }

    fn pending() -> WriteRequest {
        Box::pin(futures::future::pending())
    }

    #[test]
    fn small_writes_go_many_at_a_time_within_the_byte_budget() {
        let (limit, held) = (limit(), held());
        let mut inflight = Inflight::default();
        // Two full-size writes: the budget (2 × 100 bytes) is used up.
        assert!(limit.room_for(100, &inflight, &held));
        inflight.push(100, pending());
        assert!(limit.room_for(100, &inflight, &held));
        inflight.push(100, pending());
        assert!(!limit.room_for(1, &inflight, &held));

        // Small writes: up to 16 × 2 requests while bytes remain.
        let mut inflight = Inflight::default();
        for _ in 0..32 {
            assert!(limit.room_for(5, &inflight, &held));
            inflight.push(5, pending());
        }
        assert!(!limit.room_for(5, &inflight, &held), "the request cap");
        // A write larger than the budget still goes alone.
        assert!(limit.room_for(1_000, &Inflight::default(), &held));
    }
}
