//! The start check that no state was lost: the source's checkpoint against
//! what each sink it feeds recorded (see [`crate::lineage`]).
//!
//! Each finding stops the agent with exit 78 and a message naming what is
//! missing and what each way out costs; with `--accept-data-gap` it is
//! logged as a `DATA GAP` line instead and the agent starts.

use std::fmt;

use super::settings::Settings;
use super::{
    checkpoint::{token_cluster_time, Checkpoint},
    settings::{SnapshotMode, StartAt},
};
use crate::{
    event::Position, lineage::SinkStateReport, sources::SourceContext, state_store::StateDoc,
};

/// Something lost, found at start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Loss {
    /// No checkpoint, but the sink wrote changes of this source up to
    /// `written_up_to` (unknown for a state of an older version), and the
    /// configured start is later.
    CheckpointMissing {
        sink: String,
        location: String,
        written_up_to: Option<Position>,
    },
    /// No sink state, but its files are in the lake.
    SinkStateMissing {
        sink: String,
        location: String,
        lake_file: String,
    },
    /// The checkpoint and the sink state belong to different pipelines.
    OtherPipeline {
        sink: String,
        location: String,
        ours: String,
        theirs: String,
    },
    /// The checkpoint is older than the windows the sink still remembers:
    /// replays from it would be written again.
    CheckpointTooOld {
        sink: String,
        floor: Position,
        checkpoint: String,
    },
}

/// What the source is configured to do without a checkpoint.
pub(super) struct Start<'a> {
    pub at: &'a StartAt,
    pub snapshot: SnapshotMode,
}

impl Start<'_> {
    /// Whether starting here reads every change after `written` (a start
    /// at or before it; replays of what the sink wrote are skipped).
    fn covers(&self, written: &Position) -> bool {
        if self.snapshot != SnapshotMode::Off {
            return false;
        }
        match self.at {
            StartAt::Token(t) => t.as_str() <= written.0.as_str(),
            StartAt::Time(t) => token_cluster_time(&written.0).is_some_and(|w| t.time <= w.time),
            StartAt::Now | StartAt::CheckpointOrNow => false,
        }
    }

    fn describe(&self) -> String {
        if self.snapshot != SnapshotMode::Off {
            return "copy the collections again (`snapshot`)".into();
        }
        match self.at {
            StartAt::Token(t) => format!("start after resume token {t} (`start_at`)"),
            StartAt::Time(t) => format!("start at {} (`start_at`)", time(i64::from(t.time))),
            StartAt::Now | StartAt::CheckpointOrNow => "start from now".into(),
        }
    }
}

/// Compares the checkpoint with the sinks' records.
pub(super) fn audit(
    source: &str,
    checkpoint: Option<&Checkpoint>,
    start: &Start<'_>,
    sinks: &[SinkStateReport],
) -> Vec<Loss> {
    let mut losses = Vec::new();
    for report in sinks {
        let mark = report.marks.get(source);
        if !report.found {
            if let Some(file) = &report.lake_file {
                losses.push(Loss::SinkStateMissing {
                    sink: report.sink.clone(),
                    location: report.location.clone(),
                    lake_file: file.clone(),
                });
            }
            continue;
        }
        match checkpoint {
            None => {
                // A state of an older version has no marks: any file in it
                // was written by this source or another, so say so.
                let written_up_to = match mark {
                    Some(m) => m.written_up_to.clone(),
                    None if report.marks.is_empty() && report.written => None,
                    None => continue,
                };
                if written_up_to.as_ref().is_some_and(|w| start.covers(w)) {
                    continue;
                }
                if mark.is_some() && written_up_to.is_none() {
                    continue;
                }
                losses.push(Loss::CheckpointMissing {
                    sink: report.sink.clone(),
                    location: report.location.clone(),
                    written_up_to,
                });
            }
            Some(c) => {
                let Some(mark) = mark else { continue };
                if let (Some(ours), Some(theirs)) = (&c.pipeline, &mark.pipeline) {
                    if ours != theirs {
                        losses.push(Loss::OtherPipeline {
                            sink: report.sink.clone(),
                            location: report.location.clone(),
                            ours: ours.clone(),
                            theirs: theirs.clone(),
                        });
                        continue;
                    }
                }
                let snapshotting = c.snapshot.as_ref().is_some_and(|p| !p.done);
                if let Some(floor) = &mark.replay_floor {
                    if !snapshotting && c.resume_token.as_str() < floor.0.as_str() {
                        losses.push(Loss::CheckpointTooOld {
                            sink: report.sink.clone(),
                            floor: floor.clone(),
                            checkpoint: c.resume_token.clone(),
                        });
                    }
                }
            }
        }
    }
    losses
}

fn time(secs: i64) -> String {
    crate::internal_events::rfc3339(secs)
}

/// A position with its cluster time, for people.
fn at(p: &str) -> String {
    match token_cluster_time(p) {
        Some(t) => format!("cluster time {} (position {p})", time(i64::from(t.time))),
        None => format!("position {p}"),
    }
}

/// The error text for `losses`, one paragraph each.
pub(super) fn refusal(
    source: &str,
    checkpoint_path: &str,
    start: &Start<'_>,
    losses: &[Loss],
) -> String {
    let mut text = String::from(
        "state was lost; refusing to start so that nothing is skipped or duplicated silently.",
    );
    for loss in losses {
        text.push('\n');
        text.push_str(
            &Explain {
                source,
                checkpoint_path,
                start,
                loss,
            }
            .to_string(),
        );
    }
    text
}

/// The `DATA GAP` line logged for `loss` under `--accept-data-gap`.
pub(super) fn data_gap(source: &str, start: &Start<'_>, loss: &Loss) -> String {
    match loss {
        Loss::CheckpointMissing { sink, written_up_to, .. } => format!(
            "DATA GAP (source `{source}`, sink `{sink}`): the checkpoint was missing; changes after {} up to the start are not read: the source will {}.",
            written_up_to.as_ref().map_or_else(|| "the sink's last write (position unknown: state of an older version)".into(), |w| at(&w.0)),
            start.describe()
        ),
        Loss::SinkStateMissing { sink, lake_file, .. } => format!(
            "DATA GAP (sink `{sink}`, source `{source}`): the sink's state was missing while the lake held its files (e.g. {lake_file}); events in files that were open are lost, replays after the checkpoint may be written twice, and new files take part numbers after the existing ones."
        ),
        Loss::OtherPipeline { sink, ours, theirs, .. } => format!(
            "DATA GAP (sink `{sink}`, source `{source}`): the sink's state belonged to pipeline {theirs}, the checkpoint to {ours}; the checkpoint wins, the sink keeps its files, and changes at or below positions it recorded for the other pipeline are skipped as replays."
        ),
        Loss::CheckpointTooOld { sink, floor, checkpoint } => format!(
            "DATA GAP (sink `{sink}`, source `{source}`): starting from checkpoint at {}; changes up to {} are in windows the sink no longer remembers and may be written twice.",
            at(checkpoint),
            at(&floor.0)
        ),
    }
}

struct Explain<'a> {
    source: &'a str,
    checkpoint_path: &'a str,
    start: &'a Start<'a>,
    loss: &'a Loss,
}

impl fmt::Display for Explain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Explain {
            source,
            checkpoint_path,
            start,
            loss,
        } = self;
        match loss {
            Loss::CheckpointMissing { sink, location, written_up_to } => {
                write!(f, "- The checkpoint of source `{source}` ({checkpoint_path}) is missing, but sink `{sink}` (state {location}) has written ")?;
                match written_up_to {
                    Some(w) => write!(f, "its changes up to {}", at(&w.0))?,
                    None => write!(f, "files (a state of an older version, which does not say how far)")?,
                }
                write!(f, ". Without the checkpoint the source would {}, and every change in between would be missing from the lake. Ways out: restore {checkpoint_path} from a backup (nothing lost)", start.describe())?;
                if let Some(t) = written_up_to.as_ref().and_then(|w| token_cluster_time(&w.0)) {
                    write!(f, "; or set `start_at = \"{}\"` to read again from that point (nothing lost while the oplog still reaches back there: changes the sink already wrote are skipped as replays)", time(i64::from(t.time)))?;
                }
                write!(f, "; or start once with `--accept-data-gap` to {} and log the gap.", start.describe())
            }
            Loss::SinkStateMissing { sink, location, lake_file } => write!(
                f,
                "- Sink `{sink}` has no state ({location}), but the lake already holds its files (e.g. {lake_file}): its state was lost, or another pipeline writes there. Starting would lose the events in files that were open (they were acknowledged, so the source will not send them again) and could write replayed events twice. Ways out: restore the sink's state from a backup (nothing lost); point the sink at an empty `path_prefix` or filesystem; or start once with `--accept-data-gap` (events in files that were open are lost, replays may be written twice, new files take part numbers after the existing ones)."
            ),
            Loss::OtherPipeline { sink, location, ours, theirs } => write!(
                f,
                "- The state of sink `{sink}` ({location}) belongs to pipeline {theirs}, but the checkpoint of source `{source}` ({checkpoint_path}) belongs to pipeline {ours}: one was copied from another pipeline or restored from another machine. Ways out: restore the checkpoint and sink state that belong together; or start once with `--accept-data-gap` (the checkpoint wins; changes at or below positions the sink recorded for the other pipeline are skipped as replays)."
            ),
            Loss::CheckpointTooOld { sink, floor, checkpoint } => write!(
                f,
                "- The checkpoint of source `{source}` ({checkpoint_path}) is at {}, older than windows sink `{sink}` has already forgotten (up to {}): replaying from it would write changes that are already in the lake a second time (was an old checkpoint restored?). Ways out: restore the newest checkpoint; or start once with `--accept-data-gap` (those changes may be written twice).",
                at(checkpoint),
                at(&floor.0)
            ),
        }
    }
}

/// The start check ([`state_check`]): the pipeline id to keep, or the
/// refusal to start. `start_at = "now"` ignores the checkpoint by choice, so
/// a gap it makes is logged, not refused.
pub(super) async fn check_state(
    settings: &Settings,
    cx: &SourceContext,
    state: &StateDoc,
) -> crate::Result<String> {
    let checkpoint = state.load::<Checkpoint>().await?;
    let start_at = settings.start_at.clone();
    let start = Start {
        at: &start_at,
        snapshot: settings.snapshot,
    };
    let losses = audit(&cx.key, checkpoint.as_ref(), &start, &cx.sink_states);
    let chosen =
        |loss: &Loss| start_at == StartAt::Now && matches!(loss, Loss::CheckpointMissing { .. });
    let refused: Vec<Loss> = if cx.globals.accept_data_gap {
        Vec::new()
    } else {
        losses.iter().filter(|l| !chosen(l)).cloned().collect()
    };
    if !refused.is_empty() {
        return Err(refusal(&cx.key, &state.location(), &start, &refused).into());
    }
    for loss in &losses {
        tracing::error!(source = %cx.key, "{}", data_gap(&cx.key, &start, loss));
    }
    // The checkpoint's pipeline, or (first start, an older version's
    // checkpoint, or a checkpoint lost and accepted) a new one.
    Ok(checkpoint
        .and_then(|c| c.pipeline)
        .unwrap_or_else(crate::lineage::new_pipeline_id))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::lineage::Mark;

    const T1: &str = "8266B7B8B0000000032B";
    const T2: &str = "8266B7B8C0000000012B";

    fn report(found: bool, marks: &[(&str, Mark)], lake_file: Option<&str>) -> SinkStateReport {
        SinkStateReport {
            sink: "lake".into(),
            location: "data/lake/state.json".into(),
            found,
            written: found,
            marks: marks
                .iter()
                .map(|(s, m)| (s.to_string(), m.clone()))
                .collect::<BTreeMap<_, _>>(),
            lake_file: lake_file.map(String::from),
        }
    }

    fn mark(pipeline: &str, written: &str) -> Mark {
        Mark {
            pipeline: Some(pipeline.into()),
            written_up_to: Some(Position(written.into())),
            replay_floor: None,
        }
    }

    fn checkpoint(pipeline: &str, token: &str) -> Checkpoint {
        Checkpoint {
            pipeline: Some(pipeline.into()),
            ..Checkpoint::new(token.into(), None)
        }
    }

    const DEFAULT: Start<'static> = Start {
        at: &StartAt::CheckpointOrNow,
        snapshot: SnapshotMode::Off,
    };

    #[test]
    fn a_first_start_and_a_matching_pair_pass() {
        assert!(audit("src", None, &DEFAULT, &[report(false, &[], None)]).is_empty());
        let c = checkpoint("p", T1);
        assert!(audit(
            "src",
            Some(&c),
            &DEFAULT,
            &[report(true, &[("src", mark("p", T2))], None)]
        )
        .is_empty());
        // A sink added to a running pipeline starts from the checkpoint.
        assert!(audit("src", Some(&c), &DEFAULT, &[report(false, &[], None)]).is_empty());
    }

    #[test]
    fn a_missing_checkpoint_is_a_loss_unless_the_start_covers_it() {
        let sinks = [report(true, &[("src", mark("p", T2))], None)];
        let losses = audit("src", None, &DEFAULT, &sinks);
        assert!(matches!(
            &losses[..],
            [Loss::CheckpointMissing {
                written_up_to: Some(_),
                ..
            }]
        ));
        let text = refusal("src", "cp.json", &DEFAULT, &losses);
        assert!(
            text.contains("start_at = \"2024-08-10T19:00:16+00:00\""),
            "{text}"
        );
        let earlier = StartAt::Time(bson::Timestamp {
            time: 0x66B7_B8B0,
            increment: 0,
        });
        let start = Start {
            at: &earlier,
            snapshot: SnapshotMode::Off,
        };
        assert!(audit("src", None, &start, &sinks).is_empty());
        let token = StartAt::Token(T1.into());
        let start = Start {
            at: &token,
            snapshot: SnapshotMode::Off,
        };
        assert!(audit("src", None, &start, &sinks).is_empty());
        // Another source's mark says nothing about this one.
        assert!(audit("other", None, &DEFAULT, &sinks).is_empty());
        // A state of an older version (no marks) that has written files.
        let old = [report(true, &[], None)];
        assert!(matches!(
            &audit("src", None, &DEFAULT, &old)[..],
            [Loss::CheckpointMissing {
                written_up_to: None,
                ..
            }]
        ));
    }

    #[test]
    fn a_missing_sink_state_with_files_in_the_lake_is_a_loss() {
        let c = checkpoint("p", T1);
        let losses = audit(
            "src",
            Some(&c),
            &DEFAULT,
            &[report(false, &[], Some("db/c/x.jsonl"))],
        );
        assert!(matches!(&losses[..], [Loss::SinkStateMissing { .. }]));
    }

    #[test]
    fn state_of_another_pipeline_is_a_loss() {
        let c = checkpoint("p", T1);
        let losses = audit(
            "src",
            Some(&c),
            &DEFAULT,
            &[report(true, &[("src", mark("q", T2))], None)],
        );
        assert!(matches!(&losses[..], [Loss::OtherPipeline { .. }]));
    }

    #[test]
    fn a_checkpoint_behind_the_replay_floor_is_a_loss() {
        let c = checkpoint("p", T1);
        let m = Mark {
            replay_floor: Some(Position(T2.into())),
            ..mark("p", T2)
        };
        let losses = audit(
            "src",
            Some(&c),
            &DEFAULT,
            &[report(true, &[("src", m)], None)],
        );
        assert!(matches!(&losses[..], [Loss::CheckpointTooOld { .. }]));
        assert!(data_gap("src", &DEFAULT, &losses[0]).starts_with("DATA GAP"));
    }
}
