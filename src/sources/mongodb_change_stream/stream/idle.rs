//! The stream's positions between events: an idle stream's post-batch
//! token, and the watermarks that tell the sinks no earlier event is
//! coming.

use std::{ops::ControlFlow, sync::Arc};

use chrono::{DateTime, Utc};
use mongodb::change_stream::event::ResumeToken;

use super::{ChangeStreamSource, OpenAt, RunState, Stop};
use crate::{
    event::{Event, Watermark},
    sources::mongodb_change_stream::{checkpoint::token_cluster_time, watch::token_hex},
};

impl ChangeStreamSource {
    /// On an idle stream the post-batch token is the server's promise that
    /// nothing before it is pending: a watermark at its time goes to the
    /// sinks, and the checkpoint may move to it.
    pub(super) async fn on_idle(
        &self,
        run: &mut RunState,
        post_batch_token: Option<ResumeToken>,
    ) -> ControlFlow<Stop> {
        let batch_token = post_batch_token.and_then(|t| token_hex(&t));
        self.watermark(run, batch_token.as_deref(), true).await?;
        if let (Some(c), Some(t)) = (run.copy.as_mut(), &batch_token) {
            c.idle_at(t);
        }
        run.acks.idle(batch_token.clone());
        if let (Some(t), OpenAt::Now | OpenAt::Time(_)) = (&batch_token, &run.at) {
            // Nothing emitted yet: reopen from here, not from "now" again,
            // if the stream breaks.
            run.at = OpenAt::After(t.clone());
        }
        ControlFlow::Continue(())
    }

    /// Sends a watermark at the cluster time of `token`: a post-batch
    /// token, or the last event read once the source caught up. Either way
    /// no later event has an earlier cluster time. `idle`: sinks may write
    /// everything they hold (the stream is idle, or a burst ended).
    pub(super) async fn watermark(
        &self,
        run: &mut RunState,
        token: Option<&str>,
        idle: bool,
    ) -> ControlFlow<Stop> {
        let Some(ts) = token.and_then(token_cluster_time) else {
            return ControlFlow::Continue(());
        };
        run.progress.read_up_to(ts.time);
        let Some(time) = DateTime::<Utc>::from_timestamp(i64::from(ts.time), 0) else {
            return ControlFlow::Continue(());
        };
        let watermark = Event::Watermark(Watermark {
            source_id: Arc::clone(&run.source_id),
            time,
            idle,
        });
        if run
            .out
            .send_until_shutdown(watermark, &self.cx.shutdown)
            .await
        {
            ControlFlow::Continue(())
        } else {
            ControlFlow::Break(Ok(()))
        }
    }
}
