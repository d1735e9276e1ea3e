//! Test seams: named points in the write path where a test can stop the
//! process (SIGSTOP) at a moment it could not otherwise hit, e.g. between
//! recording a seal's intent and its commit, to prove that a term losing
//! its lease exactly there changes nothing. Off unless the environment
//! variable `MONGO_ADLS_TEST_SEAM` names a seam; then the first time the
//! write path reaches it, it logs `Test seam <name> reached` and waits
//! 10 s (time for a test on a loaded machine to stop the process; a
//! stopped process's sleep is over when it is continued), once per
//! process.

use std::sync::{
    atomic::{AtomicBool, Ordering},
    LazyLock,
};

static CHOSEN: LazyLock<Option<String>> =
    LazyLock::new(|| std::env::var("MONGO_ADLS_TEST_SEAM").ok());
static REACHED: AtomicBool = AtomicBool::new(false);

/// The seam `name`: a no-op unless chosen (see the module comment).
pub async fn seam(name: &str) {
    if CHOSEN.as_deref() != Some(name) || REACHED.swap(true, Ordering::Relaxed) {
        return;
    }
    tracing::warn!("Test seam {name} reached; pausing 10s.");
    tokio::time::sleep(std::time::Duration::from_secs(10)).await;
}
