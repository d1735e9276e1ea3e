//! The election's settings and what it publishes: the lease timing, and
//! each agent's [`Leadership`].

use std::{fmt, sync::Arc, time::Duration};

use tokio::time::Instant;

use super::HaError;

/// The lease timing, checked against Azure's limits.
#[derive(Clone, Debug)]
pub struct ElectionSettings {
    lease_secs: u32,
    margin: Duration,
    poll: Duration,
}

impl ElectionSettings {
    /// Azure's shortest fixed lease.
    pub const MIN_LEASE_SECS: u32 = 15;
    /// Azure's longest fixed lease.
    pub const MAX_LEASE_SECS: u32 = 60;

    /// A lease of `lease_secs` (15..=60), the default margin, L/5, and a
    /// standby reading the lease state every L/5 too. A killed active's
    /// lease is free only L after its last renew, so a failover takes L
    /// plus up to L/5 (L + 1 s when standbys polled every second), and a
    /// released lease is taken over within L/5 (3 to 12 s instead of 1);
    /// in exchange a standby sends 300/L requests a minute (15 at L = 20)
    /// instead of 60.
    pub fn new(lease_secs: u32) -> Result<Self, HaError> {
        if !(Self::MIN_LEASE_SECS..=Self::MAX_LEASE_SECS).contains(&lease_secs) {
            return Err(HaError::LeaseSecs { lease_secs });
        }
        Ok(Self {
            lease_secs,
            margin: Duration::from_secs(u64::from(lease_secs)) / 5,
            poll: Duration::from_secs(u64::from(lease_secs)) / 5,
        })
    }

    /// Another margin: the active stops writing `margin` before its lease
    /// could expire. Above zero and below two thirds of the lease.
    pub fn with_margin(self, margin: Duration) -> Result<Self, HaError> {
        if margin.is_zero() || margin * 3 >= self.lease() * 2 {
            return Err(HaError::Margin {
                margin,
                lease_secs: self.lease_secs,
            });
        }
        Ok(Self { margin, ..self })
    }

    /// How often a standby reads the lease state (default L/5): the
    /// longest delay between a release or expiry and the takeover.
    pub fn with_poll(self, poll: Duration) -> Self {
        Self { poll, ..self }
    }

    pub fn lease_secs(&self) -> u32 {
        self.lease_secs
    }

    pub fn lease(&self) -> Duration {
        Duration::from_secs(u64::from(self.lease_secs))
    }

    /// How often a standby reads the lease state.
    pub fn poll(&self) -> Duration {
        self.poll
    }

    /// L/3: how often the active renews and a standby tries to acquire.
    pub fn renew_every(&self) -> Duration {
        self.lease() / 3
    }

    /// L - M: how long after the start of its last accepted renew the
    /// active stops being active.
    pub fn stop_after(&self) -> Duration {
        self.lease() - self.margin
    }
}

/// Where this agent stands in the election of its pipeline.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Leadership {
    /// Waiting for the lease.
    Standby,
    /// This agent holds the lease.
    Active {
        /// The lease id of this term (a fresh UUID): state writes carry it.
        lease_id: String,
        /// When the Acquire Lease request of this term was sent.
        term_started: Instant,
        /// When the last renew the service accepted was sent (the term's
        /// start until the first renew).
        last_renewed: Instant,
        /// `last_renewed + (L - M)`: start no write at or after this
        /// instant, even if the election task has not yet said `Lost`.
        stop_by: Instant,
        /// The lease ids of the terms before this one, newest first, as
        /// the leader blob recorded them: the state is taken over from
        /// them ([`crate::state_store::StateStore::take_over`]).
        earlier_terms: Arc<[String]>,
    },
    /// The term ended without a release; the owner stops its components
    /// and calls [`Elector::rejoin`] to stand by again.
    Lost { reason: LostReason },
}

impl Leadership {
    /// The lease id, while active and before `stop_by`: checked on the
    /// monotonic clock at the call, so a writer that asks before each
    /// write never writes past the deadline even if the election task is
    /// late to publish `Lost`.
    pub fn lease_id(&self) -> Option<&str> {
        match self {
            Self::Active {
                lease_id, stop_by, ..
            } if Instant::now() < *stop_by => Some(lease_id),
            _ => None,
        }
    }

    /// Whether this agent may write now (see [`Leadership::lease_id`]).
    pub fn is_active(&self) -> bool {
        self.lease_id().is_some()
    }
}

/// Why a term ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LostReason {
    /// The service refused a renew (409/412: the lease was broken, taken
    /// over after expiry, or the blob removed).
    Refused { error: String },
    /// No renew succeeded within L - M of the last accepted one (storage
    /// unreachable, throttled or too slow): the lease may be about to
    /// expire and go to a standby.
    DeadlinePassed { since_last_renew: Duration },
    /// Released on request (shutdown).
    Released,
}

impl fmt::Display for LostReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Refused { error } => write!(f, "the lease was lost ({error})"),
            Self::DeadlinePassed { since_last_renew } => write!(
                f,
                "no renew succeeded for {:.1}s, so the lease may expire and go to a standby before another renew lands",
                since_last_renew.as_secs_f64()
            ),
            Self::Released => f.write_str("released the lease at shutdown"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::sleep;

    #[test]
    fn lease_secs_are_checked_against_azures_limits() {
        for bad in [0, 14, 61, 300] {
            let e = ElectionSettings::new(bad).unwrap_err();
            assert_eq!(e, HaError::LeaseSecs { lease_secs: bad });
            assert!(e.to_string().contains("15 to 60 seconds"), "{e}");
        }
        let s = ElectionSettings::new(15).unwrap();
        assert_eq!(s.renew_every(), Duration::from_secs(5));
        assert_eq!(s.stop_after(), Duration::from_secs(12));
        let s = ElectionSettings::new(60).unwrap();
        assert_eq!(s.renew_every(), Duration::from_secs(20));
        assert_eq!(s.stop_after(), Duration::from_secs(48));
    }

    #[test]
    fn the_margin_leaves_room_for_a_renew() {
        let s = ElectionSettings::new(15).unwrap();
        assert!(s.clone().with_margin(Duration::ZERO).is_err());
        // 10 s of 15: the deadline (5 s) would come with the first renew.
        assert!(s.clone().with_margin(Duration::from_secs(10)).is_err());
        let s = s.with_margin(Duration::from_secs(5)).unwrap();
        assert_eq!(s.stop_after(), Duration::from_secs(10));
    }

    #[tokio::test]
    async fn an_active_state_expires_by_itself_at_stop_by() {
        let now = Instant::now();
        let active = Leadership::Active {
            lease_id: "id".into(),
            term_started: now,
            last_renewed: now,
            stop_by: now + Duration::from_millis(50),
            earlier_terms: Arc::new([]),
        };
        assert_eq!(active.lease_id(), Some("id"));
        sleep(Duration::from_millis(60)).await;
        assert_eq!(active.lease_id(), None);
        assert!(!active.is_active());
        assert!(!Leadership::Standby.is_active());
    }
}
