//! The one retry helper (Vector's `sinks/util/retries.rs` plays this
//! part): every request the agent retries goes through [`retry`], with its
//! backoff from [`crate::backoff`]. Callers say which failures are worth
//! another attempt and how long to wait; whether an unanswered attempt
//! landed after all is theirs to recognise, from [`Retried::uncertain`].

use std::{future::Future, time::Duration};

use crate::backoff::Backoff;

/// A failure that may be worth another attempt.
pub trait Retriable {
    /// Whether the same request may succeed later.
    fn retriable(&self) -> bool;
    /// How long the service asked the client to wait, if it did.
    fn retry_after(&self) -> Option<Duration> {
        None
    }
    /// The failure of an attempt that got no answer within `after`.
    fn timed_out(after: Duration) -> Self;
}

/// Retry settings of a component's requests (`request.*` in the sinks).
#[derive(Clone, Debug)]
pub struct RetryPolicy {
    /// Retries after the first attempt.
    pub attempts: u32,
    pub backoff: Backoff,
    /// Each attempt's limit.
    pub timeout: Duration,
}

/// The last result of an operation, and whether an earlier attempt failed
/// without a definite answer (so a write may have landed meanwhile).
pub struct Retried<T, E> {
    pub result: Result<T, E>,
    pub uncertain: bool,
}

/// Runs `op` until it succeeds or `next` declines to try again. `next` is
/// told each failure and the retry count so far, and returns the pause
/// before the next attempt.
pub async fn retry<T, E, F, Fut>(
    mut op: F,
    mut next: impl FnMut(&E, u32) -> Option<Duration>,
) -> Retried<T, E>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut attempt = 0;
    let mut uncertain = false;
    loop {
        let e = match op().await {
            Ok(value) => {
                return Retried {
                    result: Ok(value),
                    uncertain,
                }
            }
            Err(e) => e,
        };
        match next(&e, attempt) {
            Some(delay) => {
                uncertain = true;
                tokio::time::sleep(delay).await;
                attempt += 1;
            }
            None => {
                return Retried {
                    result: Err(e),
                    uncertain,
                }
            }
        }
    }
}

/// [`retry`] under a [`RetryPolicy`]: each attempt bounded by the timeout,
/// retriable failures retried up to `attempts` times after the backoff (or
/// the service's longer `Retry-After`); `on_retry` is told about every
/// failure that will be retried (for logs and metrics).
pub async fn with_retries<T, E, F, Fut>(
    policy: &RetryPolicy,
    mut op: F,
    mut on_retry: impl FnMut(&E, Duration),
) -> Result<T, E>
where
    E: Retriable,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let timed = || {
        let attempt = op();
        async move {
            match tokio::time::timeout(policy.timeout, attempt).await {
                Ok(result) => result,
                Err(_) => Err(E::timed_out(policy.timeout)),
            }
        }
    };
    let next = |e: &E, attempt: u32| {
        if !e.retriable() || attempt >= policy.attempts {
            return None;
        }
        let backoff = policy.backoff.delay(attempt);
        // The server's Retry-After wins when it asks for longer.
        let delay = e.retry_after().map_or(backoff, |ra| ra.max(backoff));
        on_retry(e, delay);
        Some(delay)
    };
    retry(timed, next).await.result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sinks::util::storage::StorageError;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn policy(attempts: u32) -> RetryPolicy {
        RetryPolicy {
            attempts,
            backoff: Backoff::new(Duration::from_millis(1), Duration::from_millis(5)),
            timeout: Duration::from_millis(200),
        }
    }

    #[tokio::test]
    async fn retries_transient_then_succeeds() {
        let calls = AtomicU32::new(0);
        let mut retries = 0;
        let r = with_retries(
            &policy(5),
            || async {
                if calls.fetch_add(1, Ordering::SeqCst) < 2 {
                    Err(StorageError::transient("503"))
                } else {
                    Ok(7)
                }
            },
            |_, _| retries += 1,
        )
        .await;
        assert_eq!(r.unwrap(), 7);
        assert_eq!(retries, 2);
    }

    #[tokio::test]
    async fn permanent_and_exhausted_fail() {
        let r: Result<(), _> = with_retries(
            &policy(5),
            || async { Err(StorageError::permanent("403")) },
            |_, _| {},
        )
        .await;
        assert!(!r.unwrap_err().retriable);
        let calls = AtomicU32::new(0);
        let r: Result<(), _> = with_retries(
            &policy(2),
            || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err(StorageError::transient("503"))
            },
            |_, _| {},
        )
        .await;
        assert!(r.is_err());
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn timeouts_are_retried() {
        let calls = AtomicU32::new(0);
        let mut retried = Vec::new();
        let started = std::time::Instant::now();
        let r = with_retries(
            &policy(3),
            || async {
                if calls.fetch_add(1, Ordering::SeqCst) == 0 {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    return Ok(0); // only without a timeout
                }
                Ok(1)
            },
            |e: &StorageError, _| retried.push(e.message.clone()),
        )
        .await;
        // The first attempt was cut off at the 200 ms timeout and retried.
        assert_eq!(r.unwrap(), 1);
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        assert_eq!(retried.len(), 1, "{retried:?}");
        assert!(retried[0].contains("timed out"), "{retried:?}");
        assert!(started.elapsed() < Duration::from_secs(4));
    }
}
