//! `[state]`: where the pipeline keeps its state (the source checkpoint,
//! the sink's open files and replay marks), and, with `azure_blob`, the
//! group of agents that share it: one active, the others hot standbys.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::azure::auth::AuthConfig;

/// Where state lives.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum StoreKind {
    /// Files under `data_dir`, one agent per directory (a lock file keeps a
    /// second one out). The state is lost with the machine's disk.
    #[default]
    Local,
    /// Blobs under `<container>/<id>/` of a storage account. Nothing needed
    /// survives on local disk, so a rescheduled pod or a replaced VM goes
    /// on where the last one stopped; agents with the same `id` elect one
    /// active through a blob lease and the others stand by, taking over
    /// when it stops renewing.
    AzureBlob,
}

/// The pipeline's state store.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StateConfig {
    /// `local` (default): files under `data_dir`. `azure_blob`: blobs in a
    /// storage account, with hot standbys and fenced failover.
    #[serde(default)]
    pub store: StoreKind,
    /// `azure_blob`: the account's endpoint, in any form the sink's
    /// `account_url` accepts (`https://<account>.blob.core.windows.net`,
    /// the `dfs` host, or an emulator URL such as
    /// `http://127.0.0.1:10000/devstoreaccount1`).
    #[serde(default)]
    pub account_url: Option<String>,
    /// `azure_blob`: the container holding the state of one or more
    /// pipelines (each under its own `id`). A container of its own, not
    /// the lake's, keeps state out of what readers load.
    #[serde(default)]
    pub container: Option<String>,
    /// `azure_blob`: create the container at start if it does not exist.
    #[serde(default)]
    pub create_container: bool,
    /// `azure_blob`: the credential, in any form the sink's `auth` accepts.
    /// It needs read, write, create, delete and list on the container.
    #[serde(default)]
    pub auth: AuthConfig,
    /// `azure_blob`: the pipeline's identity. Agents with the same `id`
    /// form one group (one active, the others standbys); give pipelines
    /// with different scopes different ids. 1 to 128 letters, digits, `-`,
    /// `_` or `.`.
    #[serde(default)]
    pub id: Option<String>,
    /// `azure_blob`: the lease length in seconds, 15 to 60. A standby takes
    /// over about this long after the active dies (within a fifth of it
    /// after a clean stop: a standby reads the lease every fifth); the
    /// active renews every third of it.
    #[serde(default = "default_lease_secs")]
    pub lease_secs: u32,
}

fn default_lease_secs() -> u32 {
    20
}

impl Default for StateConfig {
    fn default() -> Self {
        Self {
            store: StoreKind::Local,
            account_url: None,
            container: None,
            create_container: false,
            auth: AuthConfig::default(),
            id: None,
            lease_secs: default_lease_secs(),
        }
    }
}

/// The `azure_blob` settings, checked.
#[derive(Clone, Debug)]
pub struct AzureState<'a> {
    pub account_url: &'a str,
    pub container: &'a str,
    pub auth: &'a AuthConfig,
    pub id: &'a str,
    pub lease_secs: u32,
    pub create_container: bool,
}

impl AzureState<'_> {
    /// The state store of this pipeline (no I/O).
    pub fn store(&self) -> Result<crate::state_store::AzureStateStore, String> {
        crate::state_store::AzureStateStore::new(
            self.account_url,
            self.container,
            self.auth,
            self.id,
            self.lease_secs,
        )
        .map_err(|e| e.to_string())
    }
}

impl StateConfig {
    /// Whether state lives in a storage account.
    pub fn is_remote(&self) -> bool {
        self.store == StoreKind::AzureBlob
    }

    /// Problems with the options, as `(option, message)`, each naming what
    /// to change. No request is sent.
    pub fn check(&self) -> Vec<(&'static str, String)> {
        let mut problems = Vec::new();
        if !self.is_remote() {
            for (name, set) in [
                ("account_url", self.account_url.is_some()),
                ("container", self.container.is_some()),
                ("id", self.id.is_some()),
            ] {
                if set {
                    problems.push((
                        name,
                        format!("`state.{name}` is only used with store = \"azure_blob\"; set store = \"azure_blob\" or remove it"),
                    ));
                }
            }
            return problems;
        }
        for (name, value) in [
            ("account_url", &self.account_url),
            ("container", &self.container),
            ("id", &self.id),
        ] {
            if value.as_deref().is_none_or(str::is_empty) {
                problems.push((name, format!("store = \"azure_blob\" needs `state.{name}`")));
            }
        }
        if let Err(e) = crate::ha::ElectionSettings::new(self.lease_secs) {
            problems.push(("lease_secs", e.to_string()));
        }
        if let Some(id) = &self.id {
            if let Err(e) = crate::ha::check_id(id) {
                problems.push(("id", e.to_string()));
            }
        }
        if let (Some(url), Some(container)) = (&self.account_url, &self.container) {
            if let Err(e) = crate::azure::client::ContainerAccess::new(url, container, &self.auth) {
                problems.push(("auth", crate::redact::text(&e)));
            }
        }
        problems
    }

    /// The checked `azure_blob` settings; `None` for the local store.
    pub fn azure(&self) -> Option<AzureState<'_>> {
        if !self.is_remote() {
            return None;
        }
        Some(AzureState {
            account_url: self.account_url.as_deref()?,
            container: self.container.as_deref()?,
            auth: &self.auth,
            id: self.id.as_deref()?,
            lease_secs: self.lease_secs,
            create_container: self.create_container,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(toml_text: &str) -> StateConfig {
        toml::from_str(toml_text).unwrap()
    }

    #[test]
    fn local_is_the_default_and_refuses_remote_options() {
        assert!(StateConfig::default().check().is_empty());
        let c = parse("container = \"x\"");
        assert_eq!(c.check()[0].0, "container");
    }

    #[test]
    fn azure_blob_needs_its_options() {
        let c = parse("store = \"azure_blob\"\nlease_secs = 5");
        let names: Vec<_> = c.check().into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["account_url", "container", "id", "lease_secs"]);
        let c = parse(
            "store = \"azure_blob\"\naccount_url = \"http://127.0.0.1:1/devstoreaccount1\"\ncontainer = \"s\"\nid = \"a/b\"\nauth.shared_key = \"a2V5\"",
        );
        let problems = c.check();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].0, "id");
        let c = parse(
            "store = \"azure_blob\"\naccount_url = \"http://127.0.0.1:1/devstoreaccount1\"\ncontainer = \"s\"\nid = \"p\"",
        );
        assert_eq!(c.check()[0].0, "auth");
    }
}
