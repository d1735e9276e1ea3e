//! The command line: `mongo-adls --config FILE...` runs a pipeline,
//! `validate` checks configuration (and, unless `--no-environment`, builds
//! components and runs healthchecks), `list` prints component types,
//! `snowflake-sql` prints the SQL that loads a sink's lake into Snowflake,
//! `snapshot` asks a running pipeline to copy collections.
//!
//! Argument parsing and process setup live here; each command has its own
//! file (`run.rs`, `validate.rs`, `state.rs`, `snapshot.rs`, `list.rs`,
//! `snowflake.rs`).

use std::{path::PathBuf, time::Duration};

use clap::{ArgAction, Parser, Subcommand, ValueEnum};
use futures::FutureExt;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

mod list;
mod run;
mod snapshot;
mod snowflake;
mod state;
mod validate;

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
    /// Ask a running pipeline to copy collections (again) beside its
    /// stream: writes a snapshot request into the source's
    /// `signal_collection`, which the agent acts on in stream order. Also
    /// taken up at the next start when no agent runs.
    Snapshot {
        /// The `mongodb_change_stream` source to ask (needed when the
        /// configuration has several with a `signal_collection`).
        #[arg(long)]
        source: Option<String>,
        /// Collections to copy: names in the source's `database`, or
        /// `db.coll`.
        #[arg(required = true)]
        collections: Vec<String>,
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
            Some(Command::List) => list::list(),
            Some(Command::State {
                command: StateCommand::Show,
            }) => state::state_show(&opts).await,
            Some(Command::Snapshot {
                source,
                collections,
            }) => snapshot::snapshot(&opts, source.as_deref(), collections).await,
            Some(Command::GenerateSchema { format }) => list::generate_schema(*format),
            Some(Command::SnowflakeSql(options)) => snowflake::snowflake_sql(&opts, options),
            Some(Command::Validate { no_environment }) => {
                validate::validate(&opts, *no_environment).await
            }
            None => run::run(&opts).await,
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
/// A fixed mmap threshold also fixes the trim threshold at glibc's
/// 128 KB, so the heap's free top was handed back and faulted in again
/// all the time; 8 MB keeps that much (incremental snapshot of 500,000 ×
/// 1 KB: system CPU 0.37-0.55 s → 0.13-0.15 s, wall 1.8 s → 1.3 s, peak
/// RSS 24 MB either way).
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
            if !tunable_set(&tunables, "trim_threshold") {
                libc::mallopt(libc::M_TRIM_THRESHOLD, 8 << 20);
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
