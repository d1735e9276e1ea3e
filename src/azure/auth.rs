//! The credential options every Azure client of the agent accepts (the
//! sinks, `[state]`), and the checks of them that need no network.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::shared_key::SharedKeyPolicy;
use crate::config::OptionError;

/// Credentials. Exactly one kind must be chosen; secrets are never logged.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// A SAS token (with or without the leading `?`). A container SAS
    /// needs read, write and list (`sp=rwl`) for `adls_partitioned_jsonl`,
    /// plus delete (`sp=rwdl`) for `adls_delta` (vacuum) and for the
    /// `[state]` container; `create_filesystem` needs an account SAS that
    /// may create containers.
    #[serde(default)]
    pub sas_token: Option<String>,
    /// The storage account key (Shared Key authorization).
    #[serde(default)]
    pub shared_key: Option<String>,
    /// Service principal: application (client) id, with `client_secret` and
    /// `tenant_id`.
    #[serde(default)]
    pub client_id: Option<String>,
    /// Service principal secret.
    #[serde(default)]
    pub client_secret: Option<String>,
    /// Microsoft Entra tenant id of the service principal.
    #[serde(default)]
    pub tenant_id: Option<String>,
    /// Use the managed identity of the VM, container or App Service. With
    /// `client_id` set, that user-assigned identity.
    #[serde(default)]
    pub managed_identity: bool,
    /// Use Kubernetes workload identity (AZURE_TENANT_ID, AZURE_CLIENT_ID,
    /// AZURE_FEDERATED_TOKEN_FILE).
    #[serde(default)]
    pub workload_identity: bool,
    /// Use the signed-in Azure CLI account (`az login`), for development.
    #[serde(default)]
    pub azure_cli: bool,
}

impl AuthConfig {
    /// The credential kinds chosen, by option name.
    pub fn chosen(&self) -> Vec<&'static str> {
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
    pub fn check(&self, https: bool, errors: &mut Vec<OptionError>) {
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
            "sas_token" => {
                if let Some(problem) = self.sas_token.as_deref().and_then(sas_problem) {
                    errors.push(OptionError::new("auth.sas_token", problem));
                }
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

/// What is wrong with a SAS token, if anything: a token without its
/// signature (`sig`) is refused by every request, and one without
/// permissions (`sp`) or expiry (`se`) too, unless a stored access policy
/// (`si`) gives them.
fn sas_problem(token: &str) -> Option<String> {
    let token = token.trim().trim_start_matches('?');
    if token.is_empty() {
        return Some("is empty".into());
    }
    let fields: Vec<&str> = token
        .split('&')
        .filter_map(|p| p.split('=').next())
        .collect();
    let policy = fields.contains(&"si");
    let missing: Vec<&str> = ["sig", "sp", "se"]
        .into_iter()
        .filter(|f| !fields.contains(f) && (*f == "sig" || !policy))
        .collect();
    (!missing.is_empty()).then(|| {
        format!(
            "is not a whole SAS token: it has no {} (copy the whole query string the portal or `az storage container generate-sas` gives, from `sv=` to the signature)",
            missing
                .iter()
                .map(|f| format!("`{f}`"))
                .collect::<Vec<_>>()
                .join(", ")
        )
    })
}

/// Azure container naming rules.
pub fn valid_container_name(name: &str) -> bool {
    (3..=63).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
        && !name.contains("--")
}
