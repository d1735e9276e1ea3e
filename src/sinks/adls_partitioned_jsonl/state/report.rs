//! What the sink's state tells others: the start check, and people
//! (`state show`).

use super::*;

impl SinkState {
    /// What the start check needs to know of this state.
    pub fn report(&self, sink: &str, lake_file: Option<String>) -> SinkStateReport {
        SinkStateReport {
            sink: sink.to_string(),
            location: self.log.location(),
            found: self.found,
            written: !self.files().open.is_empty() || !self.files().sealed.is_empty(),
            marks: self.files().marks.clone(),
            lake_file,
        }
    }

    /// `state show`: the state for people, with when each open file is
    /// sealed (`seal_times`: when its window closes, and its latest time).
    pub(in crate::sinks::adls_partitioned_jsonl) fn describe(
        &self,
        seal_times: impl Fn(&OpenFile) -> (i64, i64),
    ) -> Vec<String> {
        use crate::internal_events::{age, rfc3339};
        if !self.found {
            return vec![format!("no state ({})", self.log.location())];
        }
        let mut lines = vec![format!(
            "state {}: {} open file(s), {} sealed window(s) remembered",
            self.log.location(),
            self.files().open.len(),
            self.files().sealed.len()
        )];
        let mut open: Vec<&OpenFile> = self.files().open.values().collect();
        open.sort_by_key(|f| f.opened_at);
        for f in open {
            let (closes_at, latest) = seal_times(f);
            lines.push(format!(
                "  open {}: {} block(s), {} events, {} bytes, opened {}; sealed once the source passes {}, or at {} at the latest",
                f.object,
                f.blocks.len(),
                f.events,
                f.bytes,
                age(f.opened_at),
                rfc3339(closes_at),
                rfc3339(latest),
            ));
        }
        let time = |p: &Position| {
            crate::sources::mongodb_change_stream::token_cluster_time(&p.0).map_or_else(
                || format!("position {p}"),
                |t| format!("cluster time {}", rfc3339(i64::from(t.time))),
            )
        };
        for (source, mark) in &self.files().marks {
            lines.push(format!(
                "  source `{source}`: pipeline {}, written up to {}{}",
                mark.pipeline.as_deref().unwrap_or("(unknown)"),
                mark.written_up_to
                    .as_ref()
                    .map_or_else(|| "(nothing yet)".into(), time),
                mark.replay_floor
                    .as_ref()
                    .map_or_else(String::new, |f| format!(
                        ", forgotten windows up to {}",
                        time(f)
                    ))
            ));
        }
        lines
    }

    /// Whether a snapshot or log existed at load.
    pub fn found(&self) -> bool {
        self.found
    }

    /// The part number the next file of a window gets.
    pub fn next_part(&self, key: &FileKey) -> u32 {
        self.files().sealed.get(key).map_or(0, |s| s.next_part)
    }
}
