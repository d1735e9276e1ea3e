//! Which pipeline each piece of state belongs to, so that losing one piece
//! (a deleted checkpoint, a sink state restored from another machine) is a
//! clear error at start instead of silent loss or duplication.
//!
//! A source gives its pipeline a random id the first time it starts and
//! keeps it in its checkpoint. Every sink that keeps state records, per
//! source, that id and the highest source position it has written (a
//! [`Mark`]). At start the source compares its checkpoint with the marks of
//! the sinks it feeds (see the MongoDB source's `state_check`).

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
};

use serde::{Deserialize, Serialize};

use crate::event::Position;

/// What a sink's state says about one source.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mark {
    /// The pipeline id of the source's checkpoint, once known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pipeline: Option<String>,
    /// The highest position of this source the sink has written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub written_up_to: Option<Position>,
    /// The highest position of a window the sink no longer remembers:
    /// replays at or below it can no longer be recognised and skipped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replay_floor: Option<Position>,
}

/// Records in `marks` that a sink's events from `source` belong to
/// `pipeline`; whether that changed anything.
pub fn adopt(marks: &mut BTreeMap<String, Mark>, source: &str, pipeline: &str) -> bool {
    let mark = marks.entry(source.to_string()).or_default();
    if mark.pipeline.as_deref() == Some(pipeline) {
        return false;
    }
    mark.pipeline = Some(pipeline.to_string());
    true
}

/// What a sink found of its state at build, for the start check.
#[derive(Clone, Debug)]
pub struct SinkStateReport {
    pub sink: String,
    /// Where the state is kept, for messages.
    pub location: String,
    /// A state (snapshot or log) existed.
    pub found: bool,
    /// The state holds files or windows (written by some pipeline).
    pub written: bool,
    pub marks: BTreeMap<String, Mark>,
    /// With no state found: a file of this sink's layout already in the
    /// lake, which the lost state would have described.
    pub lake_file: Option<String>,
}

/// The pipeline id of each source, published by sources as they are
/// built and read by sinks as they start. Shared by one topology.
#[derive(Clone, Debug, Default)]
pub struct Pipelines(Arc<Mutex<HashMap<String, String>>>);

impl Pipelines {
    pub fn publish(&self, source: &str, pipeline: &str) {
        self.0
            .lock()
            .expect("not poisoned")
            .insert(source.to_string(), pipeline.to_string());
    }

    pub fn get(&self, source: &str) -> Option<String> {
        self.0.lock().expect("not poisoned").get(source).cloned()
    }
}

/// A fresh pipeline id.
pub fn new_pipeline_id() -> String {
    uuid::Uuid::new_v4().to_string()
}
