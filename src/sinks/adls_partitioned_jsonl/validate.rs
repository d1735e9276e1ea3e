//! Every check of the sink's options that needs no network, run when the
//! config is loaded (`validate --no-environment`) and again at start: the
//! destination and credentials, numbers in range, and (in `layout.rs`) the
//! templates, time zone and windows. Each error names its option.

use super::{
    config::AdlsPartitionedJsonlConfig,
    layout::{Layout, LayoutOptions},
};
use crate::config::OptionError;

impl AdlsPartitionedJsonlConfig {
    /// Every check that needs no network, with each error naming its
    /// option: what `validate --no-environment` and a start both run.
    pub fn check(&self) -> Result<Layout, Vec<OptionError>> {
        let mut errors = Vec::new();
        self.lake().check(&mut errors);
        self.check_numbers(&mut errors);
        match self.layout() {
            Ok(layout) if errors.is_empty() => Ok(layout),
            Ok(_) => Err(errors),
            Err(more) => {
                errors.extend(more);
                Err(errors)
            }
        }
    }

    /// The layout of the names this sink writes, from its options (the
    /// templates, time zone and window length).
    pub fn layout(&self) -> Result<Layout, Vec<OptionError>> {
        Layout::new(LayoutOptions {
            path_prefix: &self.path_prefix,
            file_name: &self.file_name,
            timezone: &self.timezone,
            window_secs: self.roll.window_secs,
            mode: self.mode,
            compression: self.compression,
        })
    }

    fn check_numbers(&self, errors: &mut Vec<OptionError>) {
        let mut at_least_one = |key: &str, value: u64| {
            if value == 0 {
                errors.push(OptionError::new(key, "must be at least 1"));
            }
        };
        at_least_one("batch.max_bytes", self.batch.max_bytes as u64);
        at_least_one("batch.max_events", self.batch.max_events as u64);
        at_least_one("request.concurrency", self.request.concurrency as u64);
        at_least_one(
            "request.concurrency_per_file",
            self.request.concurrency_per_file as u64,
        );
        at_least_one("roll.max_bytes", self.roll.max_bytes);
        at_least_one("roll.max_age_secs", self.roll.max_age_secs);
        if self.batch.max_total_bytes < self.batch.max_bytes {
            errors.push(OptionError::new(
                "batch.max_total_bytes",
                "must be at least `batch.max_bytes` (one full batch)",
            ));
        }
        if self.batch.max_bytes > MAX_BLOCK_BYTES {
            errors.push(OptionError::new(
                "batch.max_bytes",
                format!("must be at most {MAX_BLOCK_BYTES} (Azure's largest block)"),
            ));
        }
        for (key, value, min) in [
            (
                "batch.timeout_secs",
                self.batch.timeout_secs,
                Bound::Above(0.0),
            ),
            (
                "request.timeout_secs",
                self.request.timeout_secs,
                Bound::Above(0.0),
            ),
            (
                "request.retry_initial_backoff_secs",
                self.request.retry_initial_backoff_secs,
                Bound::AtLeast(0.0),
            ),
            (
                "request.retry_max_backoff_secs",
                self.request.retry_max_backoff_secs,
                Bound::AtLeast(self.request.retry_initial_backoff_secs),
            ),
        ] {
            if let Some(message) = min.violated_by(value) {
                errors.push(OptionError::new(key, message));
            }
        }
    }
}

/// Azure's largest block (Put Block), 4000 MiB.
const MAX_BLOCK_BYTES: usize = 4000 * 1024 * 1024;

/// A lower bound on a number of seconds.
enum Bound {
    Above(f64),
    AtLeast(f64),
}

impl Bound {
    fn violated_by(&self, value: f64) -> Option<String> {
        match *self {
            _ if !value.is_finite() => Some("must be a finite number".into()),
            Bound::Above(min) if value <= min => Some(format!("must be more than {min}")),
            Bound::AtLeast(min) if value < min => Some(format!("must be at least {min}")),
            _ => None,
        }
    }
}
