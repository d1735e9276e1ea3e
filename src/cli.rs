//! The command line: `mongo-adls --config FILE...` runs a pipeline,
//! `validate` checks configuration (and, unless `--no-environment`, builds
//! components and runs healthchecks), `list` prints component types,
//! `snowflake-sql` prints the SQL that loads a sink's lake into Snowflake.

use std::{path::PathBuf, time::Duration};

use clap::{ArgAction, Parser, Subcommand, ValueEnum};
use futures::FutureExt;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::{
    config::{self, ComponentConfig, EXIT_CONFIG},
    shutdown::ShutdownSignal,
    topology::{Outcome, Topology},
};

#[derive(Parser, Debug)]
#[command(
    name = "mongo-adls",
    version,
    about = "Streams MongoDB change events into Azure Data Lake Storage Gen2 as partitioned JSON Lines."
)]
pub struct Opts {
    #[command(subcommand)]
    command: Option<Command>,

    /// Configuration files (TOML); several are merged. Also
    /// MONGO_ADLS_CONFIG, comma-separated.
    #[arg(
        short,
        long = "config",
        env = "MONGO_ADLS_CONFIG",
        value_delimiter = ',',
        global = true
    )]
    config: Vec<PathBuf>,

    /// Log line format, written to stderr.
    #[arg(
        long,
        value_enum,
        default_value = "text",
        env = "MONGO_ADLS_LOG_FORMAT",
        global = true
    )]
    log_format: LogFormat,

    /// More logging (-v debug, -vv trace).
    #[arg(short, long, action = ArgAction::Count, global = true)]
    verbose: u8,

    /// Less logging (-q warnings, -qq errors).
    #[arg(short, long, action = ArgAction::Count, global = true)]
    quiet: u8,

    /// Seconds to let in-flight events drain into sinks after SIGINT or
    /// SIGTERM before exiting anyway.
    #[arg(
        long,
        default_value_t = 60,
        env = "MONGO_ADLS_GRACEFUL_SHUTDOWN_LIMIT_SECS"
    )]
    graceful_shutdown_limit_secs: u64,

    /// Exit when a healthcheck fails at start instead of running on.
    #[arg(long, env = "MONGO_ADLS_REQUIRE_HEALTHY")]
    require_healthy: bool,

    /// Start although a checkpoint or sink state was lost (the agent
    /// refuses with exit 78 otherwise): each loss is logged as a `DATA GAP`
    /// line with its range, and the agent starts as the message describes.
    /// For one start only: do not set it permanently.
    #[arg(long)]
    accept_data_gap: bool,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Check configuration files; exit 78 on errors.
    Validate {
        /// Only parse and check the files: build no components and run no
        /// healthchecks (nothing outside the files is touched).
        #[arg(long)]
        no_environment: bool,
    },
    /// Inspect the pipeline's state without changing it.
    State {
        #[command(subcommand)]
        command: StateCommand,
    },
    /// List the available component types.
    List,
    /// Print the configuration's JSON Schema (for editors: taplo, Even
    /// Better TOML), or the option reference in Markdown.
    GenerateSchema {
        #[arg(long, value_enum, default_value = "json")]
        format: SchemaFormat,
    },
    /// Print the Snowflake SQL (integration, file format, stage, table,
    /// COPY INTO, task, pipe) that loads an `adls_partitioned_jsonl` sink's
    /// files, derived from its options; for an `adls_delta` sink, the
    /// external volume, catalog integration, one table per collection
    /// (Delta Direct) and current-state views.
    SnowflakeSql(Box<crate::snowflake::Options>),
}

#[derive(Subcommand, Debug)]
enum StateCommand {
    /// Print whether an agent runs on `data_dir`, each source's checkpoint
    /// (resume token, cluster time, pipeline id) and each sink's open files
    /// and how far it has written; reads only, takes no lock.
    Show,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum SchemaFormat {
    /// JSON Schema (draft 2020-12).
    Json,
    /// The option reference (docs/configuration.md).
    Markdown,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// Runs the command line and returns the process exit code.
pub fn main() -> i32 {
    limit_malloc_arenas();
    let opts = Opts::parse();
    init_logging(&opts);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("mongo-adls")
        .build()
        .expect("tokio runtime starts");
    let code = runtime.block_on(async move {
        match &opts.command {
            Some(Command::List) => list(),
            Some(Command::State {
                command: StateCommand::Show,
            }) => state_show(&opts).await,
            Some(Command::GenerateSchema { format }) => generate_schema(*format),
            Some(Command::SnowflakeSql(options)) => snowflake_sql(&opts, options),
            Some(Command::Validate { no_environment }) => validate(&opts, *no_environment).await,
            None => run(&opts).await,
        }
    });
    // Do not wait for blocking tasks (stdin readers, DNS) at exit.
    runtime.shutdown_timeout(Duration::from_secs(1));
    code
}

/// glibc gives each thread that allocates its own malloc arena, and batches
/// of megabytes are allocated on one tokio worker and freed on another; two
/// arenas keep freed memory reusable (file:// lake, 16 KB documents: peak
/// RSS 162 MB before, 135 MB after, in `e2e/bench.sh`). glibc also raises
/// its mmap threshold once an 8 MB batch buffer is freed, after which such
/// buffers come from the arenas and stay there; a fixed 1 MB threshold
/// keeps them in their own mappings, returned to the system when freed
/// (200,000 × 1 KB into Azurite, one run each way: peak RSS 154 MB
/// without it, 111 MB with it; over 1,000 collections 417 MB and 189 MB).
///
/// A setting of the user's own in `GLIBC_TUNABLES` wins: `mallopt` would
/// override it silently. The trade-off it offers is in docs/benchmarks.md
/// ("Memory or CPU").
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let tunables = std::env::var("GLIBC_TUNABLES").unwrap_or_default();
        // SAFETY: mallopt only changes allocator tuning; called before any
        // other thread exists.
        unsafe {
            if !tunable_set(&tunables, "arena_max") {
                libc::mallopt(libc::M_ARENA_MAX, 2);
            }
            if !tunable_set(&tunables, "mmap_threshold") {
                libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
            }
        }
    }
}

/// Whether `GLIBC_TUNABLES` (`name=value` pairs separated by `:`) sets
/// `glibc.malloc.<name>`.
fn tunable_set(tunables: &str, name: &str) -> bool {
    tunables.split(':').any(|pair| {
        pair.split_once('=')
            .is_some_and(|(key, _)| key.strip_prefix("glibc.malloc.") == Some(name))
    })
}

fn init_logging(opts: &Opts) {
    let level = match (opts.verbose as i8) - (opts.quiet as i8) {
        i8::MIN..=-2 => "error",
        -1 => "warn",
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    // The SDKs log request URLs at info (a SAS query among them): keep them
    // at warn unless asked.
    let default = format!(
        "{level},mongodb=warn,azure_core=warn,azure_storage_blob=warn,azure_identity=warn,typespec_client_core=warn,hyper=warn,reqwest=warn"
    );
    let filter = tracing_subscriber::EnvFilter::try_from_env("MONGO_ADLS_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match opts.log_format {
        LogFormat::Text => builder.with_ansi(false).init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn list() -> i32 {
    let (sources, sinks) = config::schema::component_names();
    println!("Sources:");
    for name in sources {
        println!("  {name}");
    }
    println!("Sinks:");
    for name in sinks {
        println!("  {name}");
    }
    0
}

fn generate_schema(format: SchemaFormat) -> i32 {
    match format {
        SchemaFormat::Json => {
            let schema = config::schema::schema();
            println!(
                "{}",
                serde_json::to_string_pretty(&schema).expect("a JSON value serializes")
            );
        }
        SchemaFormat::Markdown => print!("{}", config::schema::reference()),
    }
    0
}

/// A line that ends the run: plain on stderr, or one JSON log line with
/// `--log-format json` (so log collectors parse the last line too).
fn fail(opts: &Opts, line: &str) {
    match opts.log_format {
        LogFormat::Text => eprintln!("{line}"),
        LogFormat::Json => tracing::error!("{line}"),
    }
}

fn load(opts: &Opts, interpolate_env: bool) -> Result<config::Config, i32> {
    config::load_from_paths(&opts.config, interpolate_env).map_err(|errors| {
        for e in &errors.0 {
            fail(
                opts,
                &format!(
                    "Configuration error: {}",
                    crate::redact::text(&e.to_string())
                ),
            );
        }
        EXIT_CONFIG
    })
}

fn snowflake_sql(opts: &Opts, options: &crate::snowflake::Options) -> i32 {
    let config = match load(opts, true) {
        Ok(c) => c,
        Err(code) => return code,
    };
    match crate::snowflake::generate(&config, options) {
        Ok(sql) => {
            print!("{sql}");
            0
        }
        Err(e) => {
            eprintln!("Error: {e}");
            EXIT_CONFIG
        }
    }
}

/// `state show`: where the state is (and, for a group, who is active),
/// then each component describes its own state. Reads only: a running
/// agent's state can be shown, and no lease is taken.
async fn state_show(opts: &Opts) -> i32 {
    let config = match load(opts, true) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let mut code = 0;
    let state = if let Some(azure) = config.global.state.azure() {
        match group_state(&azure).await {
            Ok((state, ok)) => {
                code |= i32::from(!ok);
                state
            }
            Err(e) => {
                eprintln!("Error: `[state]`: {e}");
                return EXIT_CONFIG;
            }
        }
    } else {
        let Some(data_dir) = config.data_dir() else {
            println!("No `data_dir`: no state is kept.");
            return 0;
        };
        println!("data_dir {}", data_dir.display());
        println!("  agent: {}", crate::lock::holder(data_dir));
        crate::state_store::StateHandle::local(data_dir)
    };
    let components = config
        .sources
        .iter()
        .map(|(id, s)| ("source", id, s.inner.as_ref() as &dyn ComponentConfig))
        .chain(
            config
                .sinks
                .iter()
                .map(|(id, s)| ("sink", id, s.outer.inner.as_ref() as &dyn ComponentConfig)),
        );
    for (kind, id, component) in components {
        match component.describe_state(&state.component(id)).await {
            None => {}
            Some(Ok(lines)) => {
                println!("{kind} `{id}` ({})", component.component_type());
                for line in lines {
                    println!("  {line}");
                }
            }
            Some(Err(e)) => {
                println!("{kind} `{id}`: {e}");
                code = 1;
            }
        }
    }
    code
}

/// Prints the group's leader lease and returns a read-only handle on the
/// group's state, and whether the leader could be read.
async fn group_state(
    azure: &crate::config::state::AzureState<'_>,
) -> Result<(crate::state_store::StateHandle, bool), String> {
    use crate::{
        ha::{LeaderBlob, LeaseState},
        state_store::{AzureStateStore, Fence, StateHandle, StateStore},
    };
    let store = AzureStateStore::new(
        azure.account_url,
        azure.container,
        azure.auth,
        azure.id,
        azure.lease_secs,
    )
    .map_err(|e| e.to_string())?;
    let leader = LeaderBlob::new(azure.account_url, azure.container, azure.auth, azure.id)
        .map_err(|e| e.to_string())?;
    println!("pipeline {:?}: state in {}", azure.id, store.location());
    let ok = match leader.describe().await {
        Ok(None) => {
            println!("  active agent: none (no agent of this pipeline has started here)");
            true
        }
        Ok(Some(info)) => {
            let holder = info
                .holder
                .map_or_else(|| "(unknown)".to_string(), |h| h.to_string());
            match info.lease_state {
                LeaseState::Leased => println!("  active agent: {holder}; lease held"),
                other => println!(
                    "  active agent: none; the lease is {other} (last holder {holder}); a standby takes over within a second"
                ),
            }
            true
        }
        Err(e) => {
            println!("  active agent: unknown ({e})");
            false
        }
    };
    Ok((
        StateHandle::new(std::sync::Arc::new(store), Fence::None),
        ok,
    ))
}

async fn validate(opts: &Opts, no_environment: bool) -> i32 {
    let config = match load(opts, true) {
        Ok(c) => c,
        Err(code) => return code,
    };
    if no_environment {
        println!("Configuration is valid ({} file(s)).", opts.config.len());
        return 0;
    }
    if crate::validate::run(&config).await {
        println!("Configuration is valid and healthchecks passed.");
        0
    } else {
        EXIT_CONFIG
    }
}

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

async fn run(opts: &Opts) -> i32 {
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

#[cfg(test)]
mod tests {
    use super::tunable_set;

    #[test]
    fn a_malloc_tunable_of_the_users_own_is_recognised() {
        let tunables = "glibc.malloc.mmap_threshold=8388608:glibc.malloc.trim_threshold=16777216";
        assert!(tunable_set(tunables, "mmap_threshold"));
        assert!(tunable_set(tunables, "trim_threshold"));
        assert!(!tunable_set(tunables, "arena_max"));
        assert!(!tunable_set("", "mmap_threshold"));
        assert!(!tunable_set(
            "glibc.malloc.mmap_threshold_x=1",
            "mmap_threshold"
        ));
    }
}
