//! High availability: one active agent per pipeline `id`, elected through a
//! Blob lease on `<container>/<id>/leader` in the state store (issue 12).
//!
//! [`lease`] holds the leader blob and its lease requests, [`elector`] the
//! standby/active/lost state machine, and [`agent`] the agent's life in its
//! group: stand by, take the state over, run the components while active,
//! stop them when the term ends, stand by again; release on SIGTERM.
//! `/health` reports the role; `mongo-adls state show` prints
//! [`LeaderBlob::describe`].
//!
//! Public, like the crate's other modules, so that `tests/ha.rs` drives it
//! against a real Azurite.
//!
//! The lease alone fences only the leader blob: correctness of the other
//! writes rests on the protocol in DESIGN.md ("State in the lake and
//! failover"). The elector's deadline (an active that cannot renew stops
//! before the service could hand the lease to a peer) narrows the window
//! in which a stale active even tries to write; it does not replace those
//! checks.

pub mod agent;
mod campaign;
pub mod elector;
mod leadership;
pub mod lease;

use snafu::Snafu;

pub use elector::Elector;
pub use leadership::{ElectionSettings, Leadership, LostReason};
pub use lease::{Holder, LeaderBlob, LeaderInfo, LeaseDuration, LeaseError, LeaseState};

/// Settings that cannot work, found before any request is sent.
#[derive(Debug, Snafu, PartialEq, Eq)]
pub enum HaError {
    #[snafu(display(
        "`lease_secs` = {lease_secs} is out of range: Azure Blob leases last 15 to 60 seconds; failover takes about `lease_secs` after an agent dies, so 15-30 suits most pipelines"
    ))]
    LeaseSecs { lease_secs: u32 },
    #[snafu(display(
        "the renew margin of {margin:?} does not fit a {lease_secs} s lease: it must be above zero and below two thirds of the lease, so a renew is tried before the active gives up"
    ))]
    Margin {
        margin: std::time::Duration,
        lease_secs: u32,
    },
    #[snafu(display(
        "pipeline `id` {id:?} {problem}: use 1 to 128 letters, digits, `-`, `_` or `.` (it names the folder of the pipeline's state)"
    ))]
    PipelineId { id: String, problem: &'static str },
    #[snafu(display("state store: {message}"))]
    Client { message: String },
}

/// A pipeline id is one path segment of blob names: short and plain.
pub fn check_id(id: &str) -> Result<(), HaError> {
    let problem = if id.is_empty() {
        "is empty"
    } else if id.len() > 128 {
        "is longer than 128 characters"
    } else if id == "." || id == ".." {
        "is a relative path segment"
    } else if !id
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        "has characters that are not safe in a blob path"
    } else {
        return Ok(());
    };
    Err(HaError::PipelineId {
        id: id.to_string(),
        problem,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pipeline_ids() {
        assert_eq!(check_id("orders-to-lake_2.b"), Ok(()));
        for bad in ["", ".", "..", "a/b", "a b", "ü", &"x".repeat(129)] {
            let e = check_id(bad).unwrap_err();
            assert!(e.to_string().contains("letters, digits"), "{e}");
        }
    }
}
