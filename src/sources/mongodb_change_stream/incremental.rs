//! Progress of an incremental snapshot (`snapshot = "incremental"`), as the
//! checkpoint keeps it.
//!
//! The copy runs beside the stream in *rounds*. A round copies one `_id`
//! range of one collection, read by up to `snapshot_parallelism` chunk
//! readers, and its records are sent between two change events: after
//! every change up to a stream position `at` (the last event sent, or a
//! newer idle post-batch token) and before any change after it. Each
//! record's position is `at` followed by an order-preserving key of its
//! `_id`, so records sort after every change the stream sent before them
//! and before every change after them, in `_id` order within the round.
//!
//! Why replaying the lake per document gives MongoDB's state: a record
//! holds the document as read after the stream reached `at`, that is the
//! state at `at` or a newer one, and every change after `at` follows it in
//! the lake. Change events carry values, not operations (`updateDescription`
//! sets fields to values and removes fields; inserts, replaces and deletes
//! carry the whole document or its absence), so applying the changes after
//! `at` to any state between `at` and now ends at the same document: a field
//! a later change touched ends with that change's value, one none touched
//! was the same all along. This is the watermark rule of DBLog without its
//! dropped rows: instead of dropping a row the stream changed during the
//! read, the row is placed before the change, which replays over it.
//!
//! A round is *planned* (saved in the checkpoint with its `at` and range)
//! before any of its records is sent. A restart that finds an unfinished
//! round sends the rest of it at the same `at`, when the stream reaches
//! `at` again, so its records get the same positions and the sinks skip
//! those they already hold: no record is written twice.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// What `checkpoint.json` holds of an incremental snapshot.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
pub struct IncrementalProgress {
    /// Collections (`db.coll`) whose copy is complete.
    #[serde(default)]
    pub copied: Vec<String>,
    /// Collections still to copy, in copy order; the next round is of the
    /// first.
    #[serde(default)]
    pub pending: Vec<String>,
    /// Where the next round of `pending[0]` starts: an `_id` (canonical
    /// Extended JSON), inclusive; none: at the collection's start.
    #[serde(default)]
    pub next_from: Option<Value>,
    /// Rounds planned and not yet wholly delivered, oldest first.
    #[serde(default)]
    pub rounds: Vec<Round>,
    /// Collections left out of the copy because their documents cannot be
    /// copied exactly once (an `_id` that cannot be ordered); their changes
    /// stream on. Not tried again.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skipped: Vec<String>,
    /// Only requested collections are queued (`snapshot = "off"` with a
    /// signal collection), not an incremental snapshot's own copy.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub requested_only: bool,
    /// What was delivered of each collection begun and not yet copied,
    /// for `state show`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub copying: BTreeMap<String, Copying>,
}

/// The next round as the stream found it.
#[derive(Debug, Default)]
pub struct Plan {
    /// Where the round ends (exclusive); none: at the collection's end.
    pub upper: Option<Value>,
    /// Chunks it is split into.
    pub chunks: u32,
    /// MongoDB's `estimatedDocumentCount` of the collection, looked up
    /// when a collection's first round is planned.
    pub estimated: Option<u64>,
    /// `snapshot_chunk_size`.
    pub chunk_size: u64,
}

impl Plan {
    /// A round of one chunk up to `upper`.
    #[cfg(test)]
    pub fn to(upper: Option<Value>) -> Self {
        Self {
            upper,
            chunks: 1,
            ..Self::default()
        }
    }
}

/// What was delivered of a collection being copied.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
pub struct Copying {
    /// Records delivered.
    #[serde(default)]
    pub documents: u64,
    /// Chunks wholly delivered (a round holds up to `snapshot_parallelism`).
    #[serde(default)]
    pub chunks: u64,
    /// Documents a chunk holds (`snapshot_chunk_size` when the copy began).
    #[serde(default)]
    pub chunk_size: u64,
    /// MongoDB's `estimatedDocumentCount` when the copy began.
    #[serde(default)]
    pub estimated: Option<u64>,
    /// When the copy began, Unix seconds.
    #[serde(default)]
    pub began: i64,
}

impl Copying {
    /// A `state show` line: documents and chunks against the estimate,
    /// and the time to go.
    pub fn describe(&self, now: i64) -> String {
        let of = |n: Option<u64>| n.map_or(String::new(), |n| format!(" of about {n}"));
        let eta = self.eta_secs(now).map_or(String::new(), |s| {
            format!("; about {s} s to go at the average rate since it began")
        });
        format!(
            "{} documents{} delivered, {} chunks{}{eta}",
            self.documents,
            of(self.estimated),
            self.chunks,
            of(self.chunks_total()),
        )
    }

    /// Chunks in all: those delivered and those the estimate leaves.
    pub fn chunks_total(&self) -> Option<u64> {
        chunks_total(self.documents, self.chunks, self.estimated, self.chunk_size)
    }

    /// Seconds to go at the average rate since the copy began, at `now`.
    pub fn eta_secs(&self, now: i64) -> Option<u64> {
        let left = self.estimated?.saturating_sub(self.documents);
        let took = u64::try_from(now - self.began).ok()?.max(1);
        (self.documents > 0).then(|| left * took / self.documents)
    }
}

/// Chunks in all, from `documents` and `chunks` done and the collection's
/// `estimated` size: those done and those the estimate leaves at
/// `chunk_size` each (the checkpoint's count and the live one alike).
pub fn chunks_total(
    documents: u64,
    chunks: u64,
    estimated: Option<u64>,
    chunk_size: u64,
) -> Option<u64> {
    let left = estimated?.saturating_sub(documents);
    Some(chunks + left.div_ceil(chunk_size.max(1)))
}

/// One planned round: the records of `ns` from `from` (inclusive) up to
/// `upper` (exclusive), sent right after stream position `at`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
pub struct Round {
    pub ns: String,
    /// The resume token (`_data` hex) the round's records follow.
    pub at: String,
    #[serde(default)]
    pub from: Option<Value>,
    /// None: to the end of the collection (the collection's last round).
    #[serde(default)]
    pub upper: Option<Value>,
    /// The last `_id` delivered, once some of the round was.
    #[serde(default)]
    pub after: Option<Value>,
    /// Chunks the round was split into, for the progress.
    #[serde(default)]
    pub chunks: u32,
}

impl IncrementalProgress {
    /// A copy of every collection in `collections`.
    pub fn of(collections: Vec<String>) -> Self {
        Self {
            pending: collections,
            ..Self::default()
        }
    }

    /// Adds the collections in scope that were never copied nor planned,
    /// and leaves out pending ones no longer in scope. Returns the added.
    pub fn reconcile(&mut self, in_scope: &[String]) -> Vec<String> {
        let first = self.pending.first().cloned();
        self.pending.retain(|ns| in_scope.contains(ns));
        self.copying.retain(|ns, _| in_scope.contains(ns));
        if self.pending.first() != first.as_ref() {
            // `next_from` was where the collection that left stopped.
            self.next_from = None;
        }
        let known = |ns: &String| {
            self.copied.contains(ns)
                || self.skipped.contains(ns)
                || self.pending.contains(ns)
                || self.rounds.iter().any(|r| &r.ns == ns)
        };
        let added: Vec<String> = in_scope.iter().filter(|ns| !known(ns)).cloned().collect();
        self.pending.extend(added.iter().cloned());
        added
    }

    /// Queues `ns` for a copy (a snapshot request), again if it was copied
    /// or left out before. False when it is already queued or being
    /// copied: a request read again after a restart changes nothing.
    pub fn request(&mut self, ns: &str) -> bool {
        if self.pending.iter().any(|p| p == ns) || self.rounds.iter().any(|r| r.ns == ns) {
            return false;
        }
        self.copied.retain(|c| c != ns);
        self.skipped.retain(|s| s != ns);
        self.pending.push(ns.to_string());
        true
    }

    /// Keeps only requested copies (`snapshot = "off"`): an incremental
    /// snapshot's own unfinished copy, saved before the switch, is
    /// dropped. Returns the collections dropped.
    pub fn requested_only(&mut self) -> Vec<String> {
        if self.requested_only {
            return Vec::new();
        }
        self.requested_only = true;
        self.next_from = None;
        self.copying.clear();
        let mut dropped: Vec<String> = self.pending.drain(..).collect();
        for r in self.rounds.drain(..) {
            if !dropped.contains(&r.ns) {
                dropped.push(r.ns);
            }
        }
        dropped
    }

    /// Nothing left to plan or deliver.
    pub fn is_complete(&self) -> bool {
        self.pending.is_empty() && self.rounds.is_empty()
    }

    /// The next round of `pending[0]` at `at`, as `plan` found it:
    /// recorded as planned and returned. `None` when nothing is pending.
    pub fn plan(&mut self, at: &str, plan: Plan) -> Option<Round> {
        let ns = self.pending.first()?.clone();
        let Plan {
            upper,
            chunks,
            estimated,
            chunk_size,
        } = plan;
        if self.next_from.is_none() || !self.copying.contains_key(&ns) {
            // The collection's first round (or one saved by a version
            // without counts): its count starts here.
            self.copying.insert(
                ns.clone(),
                Copying {
                    chunk_size,
                    estimated,
                    began: chrono::Utc::now().timestamp(),
                    ..Copying::default()
                },
            );
        }
        let round = Round {
            ns,
            at: at.to_string(),
            from: self.next_from.take(),
            upper: upper.clone(),
            after: None,
            chunks,
        };
        match upper {
            Some(u) => self.next_from = Some(u),
            None => {
                self.pending.remove(0);
            }
        }
        self.rounds.push(round.clone());
        Some(round)
    }

    /// The next round is the first of its collection (its estimate is
    /// looked up for the progress).
    pub fn begins_collection(&self) -> bool {
        self.pending
            .first()
            .is_some_and(|ns| self.next_from.is_none() || !self.copying.contains_key(ns))
    }

    /// Leaves `ns` out of the copy: no further round of it is planned, and
    /// its unfinished rounds do not make it copied.
    pub fn skip(&mut self, ns: &str) {
        if self.pending.first().is_some_and(|p| p == ns) {
            self.next_from = None;
        }
        self.pending.retain(|p| p != ns);
        self.copying.remove(ns);
        if !self.skipped.iter().any(|s| s == ns) {
            self.skipped.push(ns.to_string());
        }
    }

    /// The oldest round's records up to `_id` `after` were delivered,
    /// `records` of them since the last call.
    pub fn delivered(&mut self, after: Value, records: u64) {
        if let Some(r) = self.rounds.first_mut() {
            r.after = Some(after);
            if let Some(c) = self.copying.get_mut(&r.ns) {
                c.documents += records;
            }
        }
    }

    /// The oldest round was wholly delivered; returns it.
    pub fn round_done(&mut self) -> Option<Round> {
        if self.rounds.is_empty() {
            return None;
        }
        let round = self.rounds.remove(0);
        let last_of_collection = round.upper.is_none()
            && !self.skipped.contains(&round.ns)
            && !self.rounds.iter().any(|r| r.ns == round.ns)
            && !self.pending.contains(&round.ns);
        if last_of_collection {
            self.copying.remove(&round.ns);
            if !self.copied.contains(&round.ns) {
                self.copied.push(round.ns.clone());
            }
        } else if let Some(c) = self.copying.get_mut(&round.ns) {
            c.chunks += u64::from(round.chunks);
        }
        Some(round)
    }

    /// The position the oldest unfinished round follows.
    pub fn oldest_at(&self) -> Option<&str> {
        self.rounds.first().map(|r| r.at.as_str())
    }

    /// `state show` lines.
    pub fn describe(&self) -> Vec<String> {
        let mut lines: Vec<String> = self
            .skipped
            .iter()
            .map(|ns| format!("  left out of the snapshot (its _ids cannot be ordered): {ns}"))
            .collect();
        if self.is_complete() {
            lines.push(format!(
                "  incremental snapshot complete ({} collections copied)",
                self.copied.len()
            ));
            return lines;
        }
        lines.push(format!(
            "  incremental snapshot in progress: {} collections copied, {} to go",
            self.copied.len(),
            self.pending.len()
                + self
                    .rounds
                    .iter()
                    .filter(|r| r.upper.is_none() && !self.pending.contains(&r.ns))
                    .count()
        ));
        let now = chrono::Utc::now().timestamp();
        for (ns, c) in &self.copying {
            lines.push(format!("    {ns}: {}", c.describe(now)));
        }
        for r in &self.rounds {
            lines.push(format!(
                "    round of {} after position {}: from _id {} to {}, delivered up to {}",
                r.ns,
                r.at,
                r.from.as_ref().map_or("(start)".into(), Value::to_string),
                r.upper.as_ref().map_or("(end)".into(), Value::to_string),
                r.after
                    .as_ref()
                    .map_or("(none yet)".into(), Value::to_string),
            ));
        }
        if let Some(ns) = self.pending.first() {
            lines.push(format!(
                "    next: {ns} from _id {}",
                self.next_from
                    .as_ref()
                    .map_or("(start)".into(), Value::to_string)
            ));
        }
        lines
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn rounds_advance_through_collections_in_order() {
        let mut p = IncrementalProgress::of(vec!["d.a".into(), "d.b".into()]);
        let r1 = p.plan("T1", Plan::to(Some(json!(10)))).unwrap();
        assert_eq!((r1.ns.as_str(), r1.from.clone()), ("d.a", None));
        let r2 = p.plan("T1", Plan::to(None)).unwrap();
        assert_eq!(r2.from, Some(json!(10)));
        assert_eq!(p.pending, vec!["d.b".to_string()]);
        p.delivered(json!(5), 5);
        assert_eq!(p.rounds[0].after, Some(json!(5)));
        assert_eq!(p.oldest_at(), Some("T1"));
        p.round_done();
        assert!(p.copied.is_empty(), "d.a has a round left");
        p.round_done();
        assert_eq!(p.copied, vec!["d.a".to_string()]);
        let r3 = p.plan("T2", Plan::to(None)).unwrap();
        assert_eq!((r3.ns.as_str(), r3.from), ("d.b", None));
        p.round_done();
        assert!(p.is_complete());
        assert_eq!(p.plan("T3", Plan::to(None)), None);
    }

    /// Documents and chunks delivered are counted per collection until it
    /// is copied, against the estimate, for `state show`.
    #[test]
    fn delivered_documents_and_chunks_are_counted() {
        let mut p = IncrementalProgress::of(vec!["d.a".into()]);
        assert!(p.begins_collection());
        let first = Plan {
            upper: Some(json!(100)),
            chunks: 4,
            estimated: Some(1000),
            chunk_size: 25,
        };
        p.plan("T1", first);
        assert!(!p.begins_collection());
        p.delivered(json!(50), 50);
        p.delivered(json!(99), 50);
        p.round_done();
        let c = &p.copying["d.a"];
        assert_eq!(
            (c.documents, c.chunks, c.chunks_total()),
            (100, 4, Some(40))
        );
        assert_eq!(
            c.eta_secs(c.began + 10),
            Some(90),
            "900 left at 10 a second"
        );
        assert!(p
            .describe()
            .iter()
            .any(|l| l.contains("100 documents of about 1000")));
        p.plan("T2", Plan::to(None));
        p.round_done();
        assert!(
            p.copying.is_empty(),
            "a copied collection's count is dropped"
        );
        assert!(
            p.request("d.a") && p.begins_collection(),
            "a new copy counts anew"
        );
    }

    #[test]
    fn reconcile_adds_new_collections_only() {
        let mut p = IncrementalProgress::of(vec!["d.a".into(), "d.gone".into()]);
        p.plan("T", Plan::to(None));
        p.round_done();
        let added = p.reconcile(&["d.a".into(), "d.new".into()]);
        assert_eq!(added, vec!["d.new".to_string()]);
        assert_eq!(p.pending, vec!["d.new".to_string()]);
        assert_eq!(p.copied, vec!["d.a".to_string()]);
    }

    #[test]
    fn a_skipped_collection_is_not_copied_nor_tried_again() {
        let mut p = IncrementalProgress::of(vec!["d.bad".into(), "d.b".into()]);
        p.plan("T", Plan::to(Some(json!(5))));
        p.skip("d.bad");
        assert_eq!(
            (p.pending.clone(), p.next_from.clone()),
            (vec!["d.b".to_string()], None)
        );
        p.round_done();
        assert!(p.copied.is_empty());
        assert!(p.reconcile(&["d.bad".into(), "d.b".into()]).is_empty());
        assert!(p.describe()[0].contains("d.bad"));
    }

    #[test]
    fn switching_to_requests_only_drops_the_automatic_copy() {
        let mut p = IncrementalProgress::of(vec!["d.a".into(), "d.b".into()]);
        p.plan("T", Plan::to(Some(json!(5))));
        assert_eq!(
            p.requested_only(),
            vec!["d.a".to_string(), "d.b".to_string()]
        );
        assert!(p.is_complete() && p.next_from.is_none());
        assert!(p.request("d.a"));
        assert!(p.requested_only().is_empty(), "requests are kept");
        assert_eq!(p.pending, vec!["d.a".to_string()]);
    }

    #[test]
    fn a_request_queues_a_collection_once() {
        let mut p = IncrementalProgress::of(vec!["d.a".into()]);
        p.plan("T", Plan::to(None));
        assert!(!p.request("d.a"), "being copied");
        p.round_done();
        assert!(p.request("d.a"), "copied: again");
        assert_eq!(
            (p.copied.len(), p.pending.clone()),
            (0, vec!["d.a".to_string()])
        );
        assert!(!p.request("d.a"), "queued already");
    }

    /// A partly copied collection that leaves the scope does not leave its
    /// `_id` as the next collection's start.
    #[test]
    fn reconcile_restarts_the_next_collection_at_its_start() {
        let mut p = IncrementalProgress::of(vec!["d.a".into(), "d.b".into()]);
        p.plan("T", Plan::to(Some(json!("m"))));
        p.round_done();
        assert_eq!(p.next_from, Some(json!("m")));
        p.reconcile(&["d.b".into()]);
        assert_eq!(p.pending, vec!["d.b".to_string()]);
        assert_eq!(p.next_from, None);
        let mut kept = IncrementalProgress::of(vec!["d.a".into(), "d.b".into()]);
        kept.plan("T", Plan::to(Some(json!("m"))));
        kept.reconcile(&["d.a".into(), "d.b".into(), "d.c".into()]);
        assert_eq!(
            kept.next_from,
            Some(json!("m")),
            "a collection still in scope goes on"
        );
    }
}
