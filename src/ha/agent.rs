//! One agent of a group (`[state] store = "azure_blob"`): it stands by
//! until it wins the leader lease, takes the pipeline's state blobs over
//! with that term's lease id, runs the components on them, and ends the
//! term in one of three ways:
//! - a signal (SIGTERM, SIGINT): the components drain as usual, then the
//!   state leases and the leader lease are released, so a standby takes
//!   over within its poll interval, and the agent exits;
//! - the term is lost (a renew refused, or none accepted before the
//!   deadline): the components are stopped at once, without draining
//!   (their writes would be refused anyway), and the agent stands by
//!   again. Unacknowledged events are replayed by whoever is active next;
//! - a state write is refused by the lease (another term took the state
//!   over, e.g. after storage forgot this term's leases) before the
//!   election noticed: the components have stopped on the error; the
//!   agent gives its leader lease up and stands by again with a new
//!   election;
//! - the components end by themselves (a component failed): both leases
//!   are released and the agent exits non-zero, for its supervisor to
//!   restart it while a standby takes over.

use std::{ops::ControlFlow, sync::Arc, time::Duration};

use futures::{
    future::{BoxFuture, Shared},
    FutureExt,
};
use tokio::sync::watch;

use super::{ElectionSettings, Elector, LeaderBlob, Leadership};
use crate::{
    config::{state::AzureState, Config},
    state_store::{AzureStateStore, Fence, StateError, StateHandle, StateStore, StateStoreError},
    topology::{Outcome, Topology},
};

/// A signal future that every stage of the run can wait on.
pub type Signal = Shared<BoxFuture<'static, ()>>;

/// What [`run`] needs besides the configuration.
pub struct RunOptions {
    pub graceful_limit: Duration,
    pub require_healthy: bool,
    /// The first SIGTERM/SIGINT, and the one after it.
    pub first: Signal,
    pub second: Signal,
}

/// Exit codes, as the CLI's.
const EXIT_FAILED: i32 = 1;
const EXIT_CONFIG: i32 = 78;

/// How a term ended.
enum TermEnd {
    /// A signal: drained; exit with this code.
    Signal(i32),
    /// The lease was lost: stand by again.
    Lost,
    /// A state write was refused by the lease: give the leader lease up
    /// and stand by again.
    Fenced,
    /// The components ended by themselves, or the term could not start:
    /// exit with this code.
    Finished(i32),
}

/// Runs the agent as a member of its group until a signal or a failure;
/// returns the exit code. `fail` reports a startup error (stderr and log).
pub async fn run(config: &Config, options: RunOptions, fail: &(dyn Fn(&str) + Sync)) -> i32 {
    let Some(azure) = config.global.state.azure() else {
        fail("Error: `[state]` is not an azure_blob store");
        return EXIT_CONFIG;
    };
    let (store, mut elector) = match start(&azure).await {
        Ok(started) => started,
        Err(message) => {
            fail(&format!("Error: {message}"));
            return EXIT_CONFIG;
        }
    };
    crate::health::set_role("standby");
    tracing::info!(
        pipeline = azure.id,
        "Standing by for pipeline {:?}: state in {}; this agent becomes active when it holds the leader lease.",
        azure.id,
        store.location()
    );
    let mut leadership = elector.subscribe();
    loop {
        let (lease_id, earlier) = match await_term(&mut leadership, &options).await {
            ControlFlow::Continue(term) => term,
            ControlFlow::Break(Some(code)) => return code,
            ControlFlow::Break(None) => {
                tracing::info!("Stopped while standing by; nothing was running.");
                if let Err(e) = elector.release().await {
                    tracing::warn!("Could not release the leader lease: {e}");
                }
                return 0;
            }
        };
        crate::health::set_role("active");
        let fence = Fence::Lease(lease_id.clone());
        let end = term(
            config, &options, &store, &elector, &fence, &lease_id, &earlier,
        )
        .await;
        match end {
            TermEnd::Lost => {
                let reason = match elector.leadership() {
                    Leadership::Lost { reason } => reason.to_string(),
                    other => format!("{other:?}"),
                };
                tracing::warn!(
                    pipeline = azure.id,
                    "Stepped down: {reason}. The components stopped without draining; what they had not made durable is replayed by the next active agent. Standing by again."
                );
                crate::health::forget_components();
                crate::health::set_role("standby");
                elector.rejoin();
            }
            TermEnd::Fenced => {
                tracing::warn!(
                    pipeline = azure.id,
                    "Stepped down: a state write was refused by the lease (another term took the state over, or storage no longer knows this term's lease). Standing by again with a new election."
                );
                crate::health::forget_components();
                crate::health::set_role("standby");
                // Whatever this term still holds of the leader lease goes
                // back; a new election stands by for the next term.
                let _ = elector.release().await;
                elector = match elect(&azure) {
                    Ok(elector) => elector,
                    Err(message) => {
                        tracing::error!("{message}");
                        return EXIT_FAILED;
                    }
                };
                leadership = elector.subscribe();
            }
            TermEnd::Signal(code) | TermEnd::Finished(code) => {
                release(&store, elector, &fence).await;
                return code;
            }
        }
    }
}

/// Stands by until this agent holds the leader lease (its lease id, and
/// the earlier terms' ids), or until a signal (`None`) or the election's
/// end (an exit code).
async fn await_term(
    leadership: &mut watch::Receiver<Leadership>,
    options: &RunOptions,
) -> ControlFlow<Option<i32>, (String, Arc<[String]>)> {
    tokio::select! {
        active = leadership.wait_for(|l| matches!(l, Leadership::Active { .. })) => match active {
            Ok(l) => match &*l {
                Leadership::Active { lease_id, earlier_terms, .. } => {
                    ControlFlow::Continue((lease_id.clone(), Arc::clone(earlier_terms)))
                }
                _ => unreachable!("waited for Active"),
            },
            Err(_) => ControlFlow::Break(Some(EXIT_FAILED)),
        },
        _ = options.first.clone() => ControlFlow::Break(None),
    }
}

/// Gives both leases back at the end of the agent's last term: the state
/// leases first, so a standby that takes over finds the state free too.
async fn release(store: &AzureStateStore, elector: Elector, fence: &Fence) {
    if let Err(e) = store.release(fence).await {
        tracing::warn!("Could not release the state leases (they expire by themselves within `lease_secs`): {e}");
    }
    if let Err(e) = elector.release().await {
        tracing::warn!(
            "Could not release the leader lease (it expires by itself within `lease_secs`): {e}"
        );
    }
}

/// Builds the store and the leader blob (creating the container if asked)
/// and starts the election.
async fn start(azure: &AzureState<'_>) -> Result<(Arc<AzureStateStore>, Elector), String> {
    let store = azure.store().map_err(|e| format!("`[state]`: {e}"))?;
    if azure.create_container {
        create_container(azure).await?;
    }
    Ok((Arc::new(store), elect(azure)?))
}

/// Starts standing by in a new election of the pipeline.
fn elect(azure: &AzureState<'_>) -> Result<Elector, String> {
    let leader = LeaderBlob::new(azure.account_url, azure.container, azure.auth, azure.id)
        .map_err(|e| format!("`[state]`: {e}"))?;
    let settings = ElectionSettings::new(azure.lease_secs).map_err(|e| e.to_string())?;
    Ok(Elector::start(azure.id, leader, settings))
}

/// Creates the state container unless it exists; retried for up to two
/// minutes while storage is unavailable (an agent started with its storage
/// should not exit over a blip).
async fn create_container(azure: &AzureState<'_>) -> Result<(), String> {
    use crate::azure::{classify, client::ContainerAccess, AzureFailure};
    let access = ContainerAccess::new(azure.account_url, azure.container, azure.auth)?;
    let client = access
        .container_client()
        .map_err(|e| crate::redact::text(&e.to_string()))?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    let again = |e: &azure_core::Error, _| {
        let unavailable = matches!(classify(e), AzureFailure::Unavailable(_));
        (unavailable && tokio::time::Instant::now() < deadline).then(|| {
            tracing::warn!(
                "Creating the state container {}: {}; retrying in 1s.",
                access.describe(),
                crate::redact::text(&e.to_string())
            );
            Duration::from_secs(1)
        })
    };
    let e = match crate::retry::retry(|| client.create(None), again)
        .await
        .result
    {
        Ok(_) => {
            tracing::info!("Created the state container {}.", access.describe());
            return Ok(());
        }
        Err(e) => e,
    };
    match classify(&e) {
        AzureFailure::Answered { code, .. } if code == "ContainerAlreadyExists" => Ok(()),
        _ => Err(format!(
            "could not create the state container {} (`state.create_container`): {}",
            access.describe(),
            crate::redact::text(&e.to_string())
        )),
    }
}

/// Resolves once `lease_id`'s term is over (the election says so).
fn when_term_ends(mut leadership: watch::Receiver<Leadership>, lease_id: String) -> Signal {
    async move {
        let _ = leadership
            .wait_for(|l| !matches!(l, Leadership::Active { lease_id: id, .. } if *id == lease_id))
            .await;
    }
    .boxed()
    .shared()
}

/// One term: take the state over (from the `earlier` terms' leases), run
/// the components, end.
async fn term(
    config: &Config,
    options: &RunOptions,
    store: &Arc<AzureStateStore>,
    elector: &Elector,
    fence: &Fence,
    lease_id: &str,
    earlier: &[String],
) -> TermEnd {
    let lost = when_term_ends(elector.subscribe(), lease_id.to_string());
    let taken = tokio::select! {
        taken = take_over(store, fence, earlier) => taken,
        _ = lost.clone() => return TermEnd::Lost,
        _ = options.first.clone() => return TermEnd::Signal(0),
    };
    let names = match taken {
        Ok(names) => names,
        Err(e) if e.is_fenced() => return TermEnd::Fenced,
        Err(e) => {
            tracing::error!("Could not take over the pipeline's state: {e}");
            return TermEnd::Finished(EXIT_FAILED);
        }
    };
    tracing::info!(
        state_objects = names.len(),
        "Took over the pipeline's state ({} object(s) in {}); starting the components from it.",
        names.len(),
        store.location()
    );
    let state = StateHandle::new(Arc::clone(store) as Arc<dyn StateStore>, fence.clone())
        .with_leadership(elector.subscribe());
    // An empty remote state, or an import that did not finish (its marker
    // says so): copy what data_dir holds. Every step is idempotent.
    if names.is_empty() || names.iter().any(|n| n == IMPORTING) {
        if let Err(end) = import_data_dir(config, store, &state).await {
            return end;
        }
    }
    let started = tokio::select! {
        started = Topology::start(config, Some(state.clone()), options.require_healthy) => started,
        _ = lost.clone() => return TermEnd::Lost,
        _ = options.first.clone() => return TermEnd::Signal(0),
    };
    let topology = match started {
        Ok(topology) => topology,
        Err(_) if state.write_was_fenced() => return TermEnd::Fenced,
        // The term ended while the components were being built (a read
        // retried past the deadline, say): not a configuration error.
        Err(_) if state.term_over() => return TermEnd::Lost,
        Err(lines) => {
            for line in lines {
                tracing::error!("{line}");
            }
            return TermEnd::Finished(EXIT_CONFIG);
        }
    };
    run_term(topology, options, store, elector, fence, &state, lost).await
}

/// Imports the state a `local` store left in `data_dir`, if any, into the
/// empty remote state; `Err` ends the term.
async fn import_data_dir(
    config: &Config,
    store: &AzureStateStore,
    state: &StateHandle,
) -> Result<(), TermEnd> {
    let Some(dir) = config.data_dir() else {
        return Ok(());
    };
    match import_local(dir, state).await {
        Ok(0) => Ok(()),
        Ok(n) => {
            tracing::warn!(
                "Imported {n} state file(s) from data_dir {} into {}: the pipeline's remote state was empty. data_dir is not read again; remove it once the pipeline runs.",
                dir.display(),
                store.location()
            );
            Ok(())
        }
        Err(e) if e.is_fenced() => Err(TermEnd::Fenced),
        Err(e) => {
            tracing::error!(
                "Could not import the state in data_dir {} into the empty remote state: {e}",
                dir.display()
            );
            Err(TermEnd::Finished(EXIT_FAILED))
        }
    }
}

/// Runs the started components, renewing the state leases, until a
/// signal, the end of the term (lost, or a fenced write) or their end.
async fn run_term(
    topology: Topology,
    options: &RunOptions,
    store: &Arc<AzureStateStore>,
    elector: &Elector,
    fence: &Fence,
    state: &StateHandle,
    lost: Signal,
) -> TermEnd {
    let renewer = tokio::spawn(renew_state(
        Arc::clone(store),
        fence.clone(),
        elector.subscribe(),
    ));
    // A fenced write ends the term too: a component may only log it.
    let fenced = {
        let state = state.clone();
        async move { state.until_write_fenced().await }
            .boxed()
            .shared()
    };
    let over = futures::future::select(lost.clone(), fenced)
        .map(|_| ())
        .shared();
    let shutdown = futures::future::select(options.first.clone(), over.clone()).map(|_| ());
    let force = futures::future::select(options.second.clone(), over).map(|_| ());
    let outcome = topology
        .run(shutdown.boxed(), force.boxed(), options.graceful_limit)
        .await;
    renewer.abort();
    let code = match outcome {
        Outcome::Clean => 0,
        Outcome::Failed => EXIT_FAILED,
        Outcome::Refused => EXIT_CONFIG,
    };
    // A term that ended under a signal ends as it would have without one
    // (the agent then stops as a standby would, exit 0): its components
    // were stopped without draining, and the next term replays.
    if lost.peek().is_some() {
        TermEnd::Lost
    } else if state.write_was_fenced() {
        TermEnd::Fenced
    } else if options.first.peek().is_some() {
        TermEnd::Signal(code)
    } else {
        TermEnd::Finished(code)
    }
}

/// Present while an import of `data_dir` is under way (a term that ends
/// in the middle leaves it, and the next one finishes the import).
const IMPORTING: &str = "importing-data-dir";

/// Copies the state a `local` store left in `dir` (`<component>/` folders
/// of `checkpoint.json`, `state.json` and `state.<n>.log`) into the empty
/// remote state, so switching a pipeline to `azure_blob` loses nothing;
/// the number of files copied. Other files (the lock) are left alone.
async fn import_local(dir: &std::path::Path, state: &StateHandle) -> Result<usize, StateError> {
    let mut copied = 0;
    let Ok(components) = std::fs::read_dir(dir) else {
        return Ok(0);
    };
    let marker = bytes::Bytes::from(format!("{{\"from\":{:?}}}\n", dir.display().to_string()));
    state.put_new(IMPORTING, marker).await?;
    for component in components.flatten() {
        let id = component.file_name().to_string_lossy().into_owned();
        if !component.path().is_dir() || crate::state_store::check_name(&id).is_err() {
            continue;
        }
        let folder = state.component(&id);
        for file in std::fs::read_dir(component.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            let name = file.file_name().to_string_lossy().into_owned();
            let is_log = name.starts_with("state.") && name.ends_with(".log");
            if !(is_log || name == "checkpoint.json" || name == "state.json") {
                continue;
            }
            let bytes = std::fs::read(file.path()).map_err(|e| StateStoreError::Failed {
                what: "import",
                blob: file.path().display().to_string(),
                message: e.to_string(),
            })?;
            if is_log {
                // An empty log (a crash between its creation and the
                // first line) holds nothing; Azure takes no empty append.
                if bytes.is_empty() || folder.read_log(&name).await?.is_some_and(|l| l == bytes) {
                    continue;
                }
                folder.create_log(&name).await?;
                folder.append(&name, bytes.into(), 0).await?;
            } else {
                folder.put_new(&name, bytes.into()).await?;
            }
            copied += 1;
        }
    }
    state.delete(IMPORTING).await?;
    Ok(copied)
}

/// Takes the state over, retrying while storage is unavailable (the term
/// ends by itself if that lasts past its deadline).
async fn take_over(
    store: &AzureStateStore,
    fence: &Fence,
    earlier: &[String],
) -> Result<Vec<String>, StateStoreError> {
    loop {
        match store.take_over(fence, earlier).await {
            Err(e @ StateStoreError::Unavailable { .. }) => {
                tracing::warn!("Taking over the state: {e}; retrying in 1s.");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            other => return other,
        }
    }
}

/// Renews the state leases once [`AzureStateStore::RENEW_EVERY`] has
/// passed, checked at each accepted renew of the leader lease (so they are
/// renewed only while the term's leader lease is), for as long as the
/// term lasts. A failed renew is tried again at the next leader renew.
async fn renew_state(
    store: Arc<AzureStateStore>,
    fence: Fence,
    mut leadership: watch::Receiver<Leadership>,
) {
    let Fence::Lease(ours) = &fence else { return };
    let mut last = None;
    // The takeover (or the blob's creation) has just leased them.
    let mut state_renewed = tokio::time::Instant::now();
    loop {
        let renewed = match &*leadership.borrow_and_update() {
            Leadership::Active {
                lease_id,
                last_renewed,
                ..
            } if lease_id == ours => Some(*last_renewed),
            _ => None,
        };
        let Some(renewed) = renewed else { return };
        if last != Some(renewed) {
            last = Some(renewed);
            if state_renewed.elapsed() >= AzureStateStore::RENEW_EVERY {
                let start = tokio::time::Instant::now();
                match store.renew(&fence).await {
                    Ok(()) => state_renewed = start,
                    Err(e) => tracing::warn!("Could not renew the state leases: {e}"),
                }
            }
        }
        if leadership.changed().await.is_err() {
            return;
        }
    }
}
