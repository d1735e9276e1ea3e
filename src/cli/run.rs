//! Running the pipeline: alone on local state, or as one agent of a
//! group; metrics and signals.

use super::*;

fn install_metrics() -> Option<PrometheusHandle> {
    let buckets = [
        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    ];
    PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &buckets)
        .ok()?
        .install_recorder()
        .map_err(|e| tracing::warn!("Metrics recorder not installed: {e}"))
        .ok()
}

pub(super) async fn run(opts: &Opts) -> i32 {
    // First, so that a SIGTERM during start-up (healthchecks take up to
    // 10 s) stops the agent cleanly instead of killing it.
    let (first, second) = signals();
    let first = first.boxed().shared();
    let mut config = match load(opts, true) {
        Ok(c) => c,
        Err(code) => return code,
    };
    config.global.accept_data_gap = opts.accept_data_gap;
    // With state in a storage account the lease keeps a second writer out;
    // `data_dir` holds nothing then.
    let local_dir = config
        .data_dir()
        .filter(|_| !config.global.state.is_remote());
    let _lock = match local_dir.map(crate::lock::DataDirLock::acquire) {
        Some(Err(e)) => {
            fail(opts, &format!("Error: {e}"));
            return EXIT_CONFIG;
        }
        lock => lock,
    };
    let metrics = install_metrics();
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        sources = config.sources.len(),
        sinks = config.sinks.len(),
        "Starting mongo-adls."
    );

    let api_shutdown = ShutdownSignal::new();
    if let (Some(address), Some(handle)) = (config.global.api.address, metrics) {
        let listener = match crate::api::bind(address).await {
            Ok(l) => l,
            Err(e) => {
                fail(
                    opts,
                    &format!("Error: cannot serve the API on {address} (`api.address`): {e}"),
                );
                return EXIT_CONFIG;
            }
        };
        let shutdown = api_shutdown.clone();
        let unhealthy_after = Duration::from_secs(config.global.api.unhealthy_after_secs);
        tokio::spawn(async move {
            if let Err(e) = crate::api::serve(listener, handle, unhealthy_after, shutdown).await {
                tracing::error!("API server on {address} failed: {e}");
            }
        });
    }

    let code = if config.global.state.is_remote() {
        let options = crate::ha::agent::RunOptions {
            graceful_limit: Duration::from_secs(opts.graceful_shutdown_limit_secs),
            require_healthy: opts.require_healthy,
            first: first.boxed().shared(),
            second: second.boxed().shared(),
        };
        crate::ha::agent::run(&config, options, &|line| fail(opts, line)).await
    } else {
        run_alone(&config, opts, first.boxed(), second.boxed()).await
    };
    api_shutdown.cancel();
    code
}

/// Runs the agent on its own (`[state] store = "local"`): the components
/// on the state under `data_dir`, until a signal or the end of the sources.
async fn run_alone(
    config: &config::Config,
    opts: &Opts,
    first: futures::future::BoxFuture<'static, ()>,
    second: futures::future::BoxFuture<'static, ()>,
) -> i32 {
    let first = first.shared();
    let state = config
        .data_dir()
        .map(crate::state_store::StateHandle::local);
    let starting = Topology::start(config, state, opts.require_healthy);
    let topology = tokio::select! {
        started = starting => match started {
            Ok(topology) => topology,
            Err(lines) => {
                for line in &lines {
                    fail(opts, line);
                }
                return EXIT_CONFIG;
            }
        },
        _ = first.clone() => {
            tracing::info!("Stopped during start-up; nothing was running yet.");
            return 0;
        }
    };
    let outcome = topology
        .run(
            first.boxed(),
            second,
            Duration::from_secs(opts.graceful_shutdown_limit_secs),
        )
        .await;
    match outcome {
        Outcome::Clean => 0,
        Outcome::Failed => 1,
        Outcome::Refused => EXIT_CONFIG,
    }
}

/// Two futures: the first resolves on the first SIGINT/SIGTERM, the second
/// on the one after it.
fn signals() -> (
    impl std::future::Future<Output = ()> + Send + 'static,
    impl std::future::Future<Output = ()> + Send + 'static,
) {
    use tokio::signal::unix::{signal, SignalKind};
    let (first_tx, first_rx) = tokio::sync::oneshot::channel::<()>();
    let (second_tx, second_rx) = tokio::sync::oneshot::channel::<()>();
    // Registered here, not in the task: from this call on a signal is
    // caught, however late the task first runs.
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::spawn(async move {
        tokio::select! { _ = int.recv() => {}, _ = term.recv() => {} }
        let _ = first_tx.send(());
        tokio::select! { _ = int.recv() => {}, _ = term.recv() => {} }
        let _ = second_tx.send(());
    });
    (
        async move {
            let _ = first_rx.await;
        },
        async move {
            if second_rx.await.is_err() {
                futures::future::pending::<()>().await;
            }
        },
    )
}
