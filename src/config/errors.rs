//! What loading reports: every problem found, each with where it is.

use std::{fmt, path::PathBuf};

use snafu::Snafu;

use super::Location;

/// One thing wrong with the configuration, with where it is.
#[derive(Debug, Snafu)]
pub enum ConfigError {
    #[snafu(display("{}: could not read the file: {source}", path.display()))]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[snafu(display("{}:{line}: {message}", path.display()))]
    Interpolation {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[snafu(display("{}:{line}: {}{message}", path.display(), key_prefix(key)))]
    Parse {
        path: PathBuf,
        line: usize,
        /// The dotted key path, e.g. `sinks.lake.batch.max_bytes`.
        key: String,
        message: String,
    },
    #[snafu(display("{location}: {message}"))]
    Invalid { location: Location, message: String },
    #[snafu(display("{message}"))]
    Global { message: String },
}

fn key_prefix(key: &str) -> String {
    if key.is_empty() || key == "." {
        String::new()
    } else {
        format!("`{key}`: ")
    }
}

/// Every error found; loading reports them all at once.
#[derive(Debug)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}
