//! Exponential backoff with jitter, shared by everything that retries.

use std::time::Duration;

use rand::Rng;

/// Doubles from `initial` up to `max`; each delay is then jittered down to
/// between half and all of it, so components that failed together do not
/// retry in lockstep.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
}

impl Backoff {
    pub const fn new(initial: Duration, max: Duration) -> Self {
        Self { initial, max }
    }

    /// The delay before retry `attempt`, counted from 0 (the first retry
    /// waits up to `initial`).
    pub fn delay(&self, attempt: u32) -> Duration {
        self.ceiling(attempt)
            .mul_f64(rand::rng().random_range(0.5..1.0))
    }

    /// `initial * 2^attempt`, capped at `max`; saturates rather than
    /// overflowing however many attempts fail.
    fn ceiling(&self, attempt: u32) -> Duration {
        self.initial
            .checked_mul(1 << attempt.min(31))
            .map_or(self.max, |d| d.min(self.max))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BACKOFF: Backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));

    #[test]
    fn doubles_up_to_max() {
        let ceilings: Vec<f64> = (0..8).map(|a| BACKOFF.ceiling(a).as_secs_f64()).collect();
        assert_eq!(ceilings, [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]);
        assert_eq!(BACKOFF.ceiling(u32::MAX), BACKOFF.max);
        let huge = Backoff::new(Duration::MAX / 2, Duration::MAX);
        assert_eq!(huge.ceiling(3), Duration::MAX);
    }

    #[test]
    fn jitter_stays_within_half_to_all() {
        for attempt in 0..10 {
            let ceiling = BACKOFF.ceiling(attempt);
            for _ in 0..100 {
                let delay = BACKOFF.delay(attempt);
                assert!(
                    delay >= ceiling / 2 && delay <= ceiling,
                    "{delay:?} vs {ceiling:?}"
                );
            }
        }
    }
}
