//! Builds the component graph from a [`Config`] and runs it: one task per
//! component, a bounded buffer on every edge into a sink, healthchecks at
//! start, and an orderly shutdown (sources stop, sinks drain, sources flush
//! their checkpoints) within the graceful shutdown limit.

pub mod buffer;
mod source_sender;

use std::{collections::HashMap, ops::ControlFlow, time::Duration};

use futures::{future::BoxFuture, FutureExt, StreamExt};
use snafu::Snafu;
use tokio::task::JoinSet;

pub use source_sender::{Sent, SourceSender};

use crate::{
    config::Config,
    internal_events::{healthcheck_result, ComponentTags, EventsReceived},
    lineage::{Pipelines, SinkStateReport},
    shutdown::ShutdownSignal,
    sinks::{Healthcheck, SinkContext, StreamSink},
    sources::{Source, SourceContext},
    state_store::StateHandle,
};

#[derive(Debug, Snafu)]
pub enum TopologyError {
    #[snafu(display("{kind} `{id}` could not be built: {message}"))]
    Build {
        kind: &'static str,
        id: String,
        message: String,
    },
    #[snafu(display("healthchecks failed: {}", failed.join("; ")))]
    Unhealthy { failed: Vec<String> },
}

/// A built topology, not yet running.
pub struct Topology {
    sources: Vec<(String, Source)>,
    sinks: Vec<BuiltSink>,
    healthchecks: Vec<(String, Healthcheck)>,
    source_shutdown: ShutdownSignal,
}

/// A sink with its input buffer and tags, not yet running.
type BuiltSink = (
    String,
    Box<dyn StreamSink>,
    buffer::BufferReceiver,
    ComponentTags,
);

/// How a run ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Every component stopped cleanly.
    Clean,
    /// A component failed or the shutdown limit ran out.
    Failed,
    /// A component stopped on an error only new configuration or
    /// credentials fix (see [`refused_by_configuration`]): exit 78.
    Refused,
}

/// Set when a component meets an error that only a change of configuration
/// or credentials can fix (MongoDB authentication or authorization, storage
/// refusing the credentials at the healthcheck): at start it ends the start
/// whatever `require_healthy` says; while running, a component that stops
/// on it makes the run end as [`Outcome::Refused`]. Both exit 78, which the
/// shipped systemd unit does not restart. Process-wide, as one topology
/// runs at a time; cleared when a start or run begins.
static REFUSED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Marks the running topology as stopped by its configuration.
pub fn refused_by_configuration() {
    REFUSED.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// The sinks, built before the sources so each source gets a sender for
/// every sink that reads it.
struct BuiltSinks {
    sinks: Vec<BuiltSink>,
    healthchecks: Vec<(String, Healthcheck)>,
    /// Each sink's input buffer.
    senders: HashMap<String, buffer::BufferSender>,
    /// What each sink's state said, for its sources' start check.
    reports: HashMap<String, SinkStateReport>,
}

async fn build_sinks(
    config: &Config,
    state: Option<&StateHandle>,
    pipelines: &Pipelines,
    stopping: &ShutdownSignal,
) -> Result<BuiltSinks, TopologyError> {
    let mut built = BuiltSinks {
        sinks: Vec::new(),
        healthchecks: Vec::new(),
        senders: HashMap::new(),
        reports: HashMap::new(),
    };
    for (id, entry) in &config.sinks {
        let tags = ComponentTags::new(id, "sink", entry.outer.inner.component_type());
        let (tx, rx) = buffer::memory(&entry.outer.buffer, &tags);
        let cx = SinkContext {
            key: id.clone(),
            globals: config.global.clone(),
            state: state.map(|s| s.component(id)),
            tags: tags.clone(),
            stopping: stopping.clone(),
            inputs: entry.outer.inputs.clone(),
            pipelines: pipelines.clone(),
        };
        let (sink, healthcheck) =
            entry
                .outer
                .inner
                .build(cx)
                .await
                .map_err(|e| TopologyError::Build {
                    kind: "sink",
                    id: id.clone(),
                    message: crate::redact::error(&e),
                })?;
        if config.global.healthchecks.enabled && entry.outer.healthcheck.enabled {
            built.healthchecks.push((id.clone(), healthcheck));
        }
        if let Some(report) = sink.state_report() {
            built.reports.insert(id.clone(), report);
        }
        built.senders.insert(id.clone(), tx);
        built.sinks.push((id.clone(), sink, rx, tags));
    }
    Ok(built)
}

impl Topology {
    /// Builds every component, each with its folder of `state` (the
    /// store of this term; `None` without a `data_dir` or `[state]`
    /// store). Buffers are created first so each source gets a sender for
    /// every sink that reads it.
    pub async fn build(config: &Config, state: Option<StateHandle>) -> Result<Self, TopologyError> {
        let source_shutdown = ShutdownSignal::new();
        let pipelines = Pipelines::default();
        let built = build_sinks(config, state.as_ref(), &pipelines, &source_shutdown).await?;
        let mut sources = Vec::new();
        for (id, source) in &config.sources {
            let outputs: Vec<_> = config
                .sinks_of(id)
                .map(|sink| built.senders[sink].clone())
                .collect();
            if outputs.is_empty() {
                continue;
            }
            let tags = ComponentTags::new(id, "source", source.inner.component_type());
            let cx = SourceContext {
                key: id.clone(),
                globals: config.global.clone(),
                state: state.as_ref().map(|s| s.component(id)),
                shutdown: source_shutdown.clone(),
                out: SourceSender::new(outputs, &tags),
                sink_states: config
                    .sinks_of(id)
                    .filter_map(|sink| built.reports.get(sink).cloned())
                    .collect(),
                pipelines: pipelines.clone(),
                acknowledgements: config.global.acknowledgements.enabled,
                tags,
            };
            let running = source
                .inner
                .build(cx)
                .await
                .map_err(|e| TopologyError::Build {
                    kind: "source",
                    id: id.clone(),
                    message: crate::redact::error(&e),
                })?;
            sources.push((id.clone(), running));
        }

        Ok(Self {
            sources,
            sinks: built.sinks,
            healthchecks: built.healthchecks,
            source_shutdown,
        })
    }

    /// Builds the topology and runs its healthchecks. The error is the
    /// lines to report: a component that could not be built, or, with
    /// `require_healthy` (or `healthchecks.require_healthy`), the failed
    /// healthchecks.
    pub async fn start(
        config: &Config,
        state: Option<StateHandle>,
        require_healthy: bool,
    ) -> Result<Self, Vec<String>> {
        REFUSED.store(false, std::sync::atomic::Ordering::Relaxed);
        let mut topology = Self::build(config, state)
            .await
            .map_err(|e| vec![format!("Configuration error: {e}")])?;
        let failed = topology.healthchecks().await;
        let refused = REFUSED.load(std::sync::atomic::Ordering::Relaxed);
        if !failed.is_empty()
            && (refused || require_healthy || config.global.healthchecks.require_healthy)
        {
            let mut lines: Vec<String> = failed
                .iter()
                .map(|f| format!("Healthcheck failed: {f}"))
                .collect();
            if refused {
                lines.push("Exiting: credentials are read at start, so only a start with working ones can help (exit 78).".into());
            }
            return Err(lines);
        }
        Ok(topology)
    }

    /// Runs every healthcheck concurrently (10 s each) and returns the
    /// failures as `"<id>: <reason>"`.
    pub async fn healthchecks(&mut self) -> Vec<String> {
        let checks = std::mem::take(&mut self.healthchecks);
        run_healthchecks(checks).await
    }

    /// Runs until every source has finished or `shutdown` resolves, then
    /// drains. `force` resolving during the drain (a second signal) abandons
    /// it at once.
    pub async fn run(
        self,
        shutdown: BoxFuture<'static, ()>,
        force: BoxFuture<'static, ()>,
        graceful_limit: Duration,
    ) -> Outcome {
        let Topology {
            sources,
            sinks,
            source_shutdown,
            ..
        } = self;
        REFUSED.store(false, std::sync::atomic::Ordering::Relaxed);
        let sources_running = sources.len();
        let mut tasks = spawn_components(sources, sinks);
        let outcome = match run_until_stopping(&mut tasks, sources_running, shutdown).await {
            ControlFlow::Continue(failed) => {
                source_shutdown.cancel();
                drain(tasks, failed, force, graceful_limit).await
            }
            ControlFlow::Break(outcome) => outcome,
        };
        match outcome {
            Outcome::Failed if REFUSED.load(std::sync::atomic::Ordering::Relaxed) => {
                Outcome::Refused
            }
            outcome => outcome,
        }
    }
}

/// The running components: each task ends with its id, kind and result.
type Tasks = JoinSet<(String, &'static str, Result<(), ()>)>;

/// Starts one task per component, sinks first, each sink counting what it
/// receives.
fn spawn_components(sources: Vec<(String, Source)>, sinks: Vec<BuiltSink>) -> Tasks {
    let mut tasks = Tasks::new();
    for (id, sink, rx, tags) in sinks {
        let received = EventsReceived::register(&tags);
        let input = rx
            .inspect(move |e| {
                if matches!(e, crate::event::Event::Log(_)) {
                    received.emit(1, e.size_of());
                }
            })
            .boxed();
        tasks.spawn(async move { (id, "sink", sink.run(input).await) });
    }
    for (id, source) in sources {
        tasks.spawn(async move { (id, "source", source.await) });
    }
    tasks
}

/// Phase 1: normal running, until a signal, all sources done, or a
/// component failing. Continues to the drain with whether a component
/// failed; breaks with the outcome when every component ended on its own.
async fn run_until_stopping(
    tasks: &mut Tasks,
    mut sources_running: usize,
    shutdown: BoxFuture<'static, ()>,
) -> ControlFlow<Outcome, bool> {
    let mut shutdown = shutdown.fuse();
    loop {
        tokio::select! {
            _ = &mut shutdown => {
                tracing::info!("Shutting down: sources stop, in-flight events drain into sinks.");
                return ControlFlow::Continue(false);
            }
            done = tasks.join_next() => match done {
                None => return ControlFlow::Break(Outcome::Clean),
                Some(Ok((id, kind, result))) => {
                    if result.is_err() {
                        tracing::error!("{kind} `{id}` failed; shutting down.");
                        return ControlFlow::Continue(true);
                    }
                    if kind == "source" {
                        sources_running -= 1;
                        tracing::info!("Source `{id}` finished.");
                        if sources_running == 0 {
                            return ControlFlow::Continue(false);
                        }
                    } else {
                        // A sink's input ends only when its sources ended.
                        tracing::debug!("Sink `{id}` finished.");
                    }
                }
                Some(Err(join)) => {
                    tracing::error!("A component panicked: {join}; shutting down.");
                    return ControlFlow::Continue(true);
                }
            },
        }
    }
}

/// Phase 2: waits for every component to stop, within `graceful_limit`;
/// `force` abandons the wait.
async fn drain(
    mut tasks: Tasks,
    mut failed: bool,
    force: BoxFuture<'static, ()>,
    graceful_limit: Duration,
) -> Outcome {
    let drain = async {
        while let Some(done) = tasks.join_next().await {
            match done {
                Ok((id, kind, Ok(()))) => tracing::debug!("{kind} `{id}` stopped."),
                Ok((id, kind, Err(()))) => {
                    tracing::error!("{kind} `{id}` failed while stopping.");
                    failed = true;
                }
                Err(join) => {
                    tracing::error!("A component panicked while stopping: {join}");
                    failed = true;
                }
            }
        }
    };
    tokio::select! {
        _ = drain => {
            if failed { Outcome::Failed } else {
                tracing::info!("Shutdown complete.");
                Outcome::Clean
            }
        }
        _ = tokio::time::sleep(graceful_limit) => {
            tracing::error!(
                "Components did not stop within the graceful shutdown limit of {}s; exiting. Unacknowledged events will be replayed on the next start.",
                graceful_limit.as_secs()
            );
            Outcome::Failed
        }
        _ = force => {
            tracing::warn!("Stopping without waiting (a second signal, or this agent is no longer the active one). Unacknowledged events will be replayed on the next start.");
            Outcome::Failed
        }
    }
}

/// How long one healthcheck may take.
pub const HEALTHCHECK_TIMEOUT: Duration = Duration::from_secs(10);

async fn run_healthchecks(checks: Vec<(String, Healthcheck)>) -> Vec<String> {
    let results = futures::future::join_all(checks.into_iter().map(|(id, check)| async move {
        let result = match tokio::time::timeout(HEALTHCHECK_TIMEOUT, check).await {
            Ok(r) => r,
            Err(_) => Err(format!(
                "timed out after {}s",
                HEALTHCHECK_TIMEOUT.as_secs()
            )),
        };
        healthcheck_result(&id, &result);
        result.err().map(|e| format!("{id}: {e}"))
    }))
    .await;
    results.into_iter().flatten().collect()
}
