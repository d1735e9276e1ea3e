//! `state show`: the pipeline's state, read only.

use super::*;

/// `state show`: where the state is (and, for a group, who is active),
/// then each component describes its own state. Reads only: a running
/// agent's state can be shown, and no lease is taken.
pub(super) async fn state_show(opts: &Opts) -> i32 {
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
        state_store::{Fence, StateHandle, StateStore},
    };
    let store = azure.store()?;
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
