//! Every check of the sink's options that needs no network, run when the
//! config is loaded (`validate --no-environment`) and again at start: the
//! destination and credentials, numbers in range, and (in `layout.rs`) the
//! templates, time zone and windows. Each error names its option.

use super::{
    config::{AdlsPartitionedJsonlConfig, AuthConfig},
    layout::Layout,
    storage::{azure::service_url, local::LocalStorage},
};
use crate::{config::OptionError, sinks::azure_common::shared_key::SharedKeyPolicy};

impl AuthConfig {
    /// The credential kinds chosen, by option name.
    pub(super) fn chosen(&self) -> Vec<&'static str> {
        [
            ("sas_token", self.sas_token.is_some()),
            ("shared_key", self.shared_key.is_some()),
            ("client_secret", self.client_secret.is_some()),
            ("managed_identity", self.managed_identity),
            ("workload_identity", self.workload_identity),
            ("azure_cli", self.azure_cli),
        ]
        .into_iter()
        .filter_map(|(name, set)| set.then_some(name))
        .collect()
    }

    /// Exactly one complete kind of credential. `https`: whether the
    /// account URL can carry Entra tokens.
    fn check(&self, https: bool, errors: &mut Vec<OptionError>) {
        let chosen = self.chosen();
        if chosen.len() != 1 {
            errors.push(OptionError::new(
                "auth",
                format!(
                    "choose exactly one of `auth.sas_token`, `auth.shared_key`, `auth.client_secret` (with `auth.client_id` and `auth.tenant_id`), `auth.managed_identity`, `auth.workload_identity`, `auth.azure_cli` ({} set{})",
                    chosen.len(),
                    if chosen.is_empty() { String::new() } else { format!(": {}", chosen.join(", ")) }
                ),
            ));
            return;
        }
        match chosen[0] {
            "sas_token"
                if self
                    .sas_token
                    .as_deref()
                    .is_some_and(|t| t.trim().trim_start_matches('?').is_empty()) =>
            {
                errors.push(OptionError::new("auth.sas_token", "is empty"));
            }
            "shared_key" => {
                let key = self.shared_key.as_deref().unwrap_or_default();
                // The same decoding the signing policy does at start.
                if key.trim().is_empty() || SharedKeyPolicy::new("account", key).is_err() {
                    errors.push(OptionError::new(
                        "auth.shared_key",
                        "is not a base64 account key (copy key1 or key2 of the storage account)",
                    ));
                }
            }
            "client_secret" if self.client_id.is_none() || self.tenant_id.is_none() => {
                errors.push(OptionError::new(
                    "auth.client_secret",
                    "needs `auth.client_id` and `auth.tenant_id` as well",
                ));
            }
            _ => {}
        }
        let stray_ids = !matches!(chosen[0], "client_secret" | "managed_identity")
            && (self.client_id.is_some() || self.tenant_id.is_some());
        if stray_ids {
            errors.push(OptionError::new(
                "auth",
                "`auth.client_id` / `auth.tenant_id` are only used with `auth.client_secret` (or `client_id` with `auth.managed_identity`)",
            ));
        }
        let entra = matches!(
            chosen[0],
            "client_secret" | "managed_identity" | "workload_identity" | "azure_cli"
        );
        if entra && !https {
            errors.push(OptionError::new(
                "account_url",
                "Microsoft Entra credentials need an https `account_url`",
            ));
        }
    }
}

impl AdlsPartitionedJsonlConfig {
    /// A `file://` lake on local disk rather than an Azure account.
    pub fn is_local(&self) -> bool {
        self.account_url.starts_with("file:")
    }

    /// Every check that needs no network, with each error naming its
    /// option: what `validate --no-environment` and a start both run.
    pub fn check(&self) -> Result<Layout, Vec<OptionError>> {
        let mut errors = Vec::new();
        self.check_destination(&mut errors);
        self.check_numbers(&mut errors);
        match Layout::new(self) {
            Ok(layout) if errors.is_empty() => Ok(layout),
            Ok(_) => Err(errors),
            Err(more) => {
                errors.extend(more);
                Err(errors)
            }
        }
    }

    fn check_destination(&self, errors: &mut Vec<OptionError>) {
        if self.is_local() {
            if let Err(e) = LocalStorage::new(&self.account_url, &self.filesystem, false) {
                errors.push(OptionError::new(e.key, e.message));
            }
            if !self.auth.chosen().is_empty() {
                errors.push(OptionError::new(
                    "auth",
                    "a `file://` lake takes no credentials; remove the `auth` options",
                ));
            }
            return;
        }
        match service_url(&self.account_url) {
            Ok((url, _)) => self.auth.check(url.scheme() == "https", errors),
            Err(e) => errors.push(OptionError::new("account_url", e)),
        }
        if !valid_container_name(&self.filesystem) {
            errors.push(OptionError::new(
                "filesystem",
                format!(
                    "{:?} is not a valid filesystem (container) name: 3 to 63 lowercase letters, digits and single hyphens, starting with a letter or digit",
                    self.filesystem
                ),
            ));
        }
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

/// Azure container naming rules.
fn valid_container_name(name: &str) -> bool {
    (3..=63).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
        && !name.contains("--")
}
