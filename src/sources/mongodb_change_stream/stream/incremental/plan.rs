//! Planning a round: its chunk bounds (looked up ahead, while the round
//! before is sent) and its entry in the checkpoint.

use std::ops::ControlFlow;

use bson::Bson;

use super::{chunks::bounds, ChangeStreamSource, RunState, Stop};
use crate::sources::mongodb_change_stream::incremental::{Plan, Round};

/// Chunk bounds from `from` on in `ns`, being looked up. Bounds are `_id`s
/// of the index, not documents: finding them before the round's position
/// is taken changes no record, and takes the lookups (a `skip` of
/// `snapshot_chunk_size` index entries each, about a twentieth of a round
/// at P = 4) off the copy's path.
pub(super) struct NextBounds {
    ns: String,
    from: serde_json::Value,
    task: tokio::task::JoinHandle<mongodb::error::Result<Vec<Bson>>>,
}

impl Drop for NextBounds {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl ChangeStreamSource {
    /// Finds the next round's chunk bounds and saves it as planned; with
    /// the bounds inside it, where its chunks split.
    pub(super) async fn plan_round(
        &self,
        run: &mut RunState,
    ) -> ControlFlow<Stop, Option<(Round, Vec<Bson>)>> {
        let (Some(progress), Some(at)) = (
            run.acks.incremental(),
            run.copy
                .as_ref()
                .and_then(|c| c.boundary(&run.at).map(str::to_string)),
        ) else {
            return ControlFlow::Continue(None);
        };
        let Some(ns) = progress.pending.first().cloned() else {
            return ControlFlow::Continue(None);
        };
        let from = progress
            .next_from
            .clone()
            .and_then(|v| Bson::try_from(v).ok());
        let parallelism = self.settings.snapshot_parallelism;
        let prefetched = run
            .copy
            .as_mut()
            .and_then(|c| c.next_bounds.take())
            .filter(|n| n.ns == ns && progress.next_from.as_ref() == Some(&n.from));
        let found = match prefetched {
            Some(mut next) => match (&mut next.task).await {
                Ok(found) => found,
                Err(_) => self.bounds_from(&ns, from.as_ref()).await,
            },
            None => self.bounds_from(&ns, from.as_ref()).await,
        };
        let mut found = match found {
            Ok(found) => found,
            Err(e) => {
                return self
                    .round_failed(run, &ns, &e)
                    .await
                    .map_continue(|()| None)
            }
        };
        let upper = if found.len() == parallelism as usize {
            found.pop().map(Bson::into_canonical_extjson)
        } else {
            None
        };
        let estimated = if progress.begins_collection() {
            self.estimate(&ns).await
        } else {
            None
        };
        let plan = Plan {
            upper,
            chunks: found.len() as u32 + 1,
            estimated,
            chunk_size: u64::from(self.settings.snapshot_chunk_size),
        };
        match run.acks.plan_round(&at, plan).await {
            Ok(round) => {
                if let (Some(r), Some(copy)) = (&round, run.copy.as_mut()) {
                    copy.next_bounds = r.upper.clone().map(|from| self.look_up_bounds(&r.ns, from));
                }
                ControlFlow::Continue(round.map(|r| (r, found)))
            }
            Err(e) => {
                self.error(
                    "checkpoint_failed",
                    &format!("Could not save the next snapshot round, so it is not sent yet: {e}"),
                );
                if e.is_condition_failed() {
                    return ControlFlow::Break(Err(()));
                }
                self.wait(std::time::Duration::from_secs(1)).await;
                ControlFlow::Continue(None)
            }
        }
    }

    /// A round's chunk bounds from `from` on (none: the collection's
    /// start): `snapshot_parallelism` of them, fewer at its end.
    async fn bounds_from(
        &self,
        ns: &str,
        from: Option<&Bson>,
    ) -> mongodb::error::Result<Vec<Bson>> {
        let (chunk, parallelism) = (
            self.settings.snapshot_chunk_size,
            self.settings.snapshot_parallelism,
        );
        bounds(&self.client, ns, (from, None), chunk, parallelism).await
    }

    /// Starts looking up the bounds of the round after one that ends at
    /// `from` ([`NextBounds`]).
    fn look_up_bounds(&self, ns: &str, from: serde_json::Value) -> NextBounds {
        let (client, ns_owned) = (self.client.clone(), ns.to_string());
        let (chunk, parallelism) = (
            self.settings.snapshot_chunk_size,
            self.settings.snapshot_parallelism,
        );
        let start = Bson::try_from(from.clone()).ok();
        let task = tokio::spawn(async move {
            bounds(
                &client,
                &ns_owned,
                (start.as_ref(), None),
                chunk,
                parallelism,
            )
            .await
        });
        NextBounds {
            ns: ns.to_string(),
            from,
            task,
        }
    }
}
