//! The sink's durable state (`data_dir/<id>/state.json`): for every open
//! file its object name and staged blocks, and for every namespace window
//! the highest source position already written and the next part number.
//!
//! This is what makes writes exactly-once. Events are acknowledged only
//! after their block is staged *and* this state is saved; after a crash the
//! source replays from its checkpoint, and any replayed event at or below
//! its window's high-water position is skipped. Events of a window reach its
//! files in stream order, so "at or below" means "already written".

use std::{collections::HashMap, sync::Arc};

use serde::{Deserialize, Serialize};

use crate::{
    checkpoint::{StateFile, StateFileError},
    event::Position,
};

/// How long sealed windows are remembered for replay skipping. Replays only
/// start from the source's checkpoint, which trails the sink by seconds to
/// minutes, so a day is ample.
const SEALED_RETENTION_SECS: i64 = 24 * 3600;

/// A namespace and time window: the unit that owns a sequence of files.
/// Cloned per event, hence shared names.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct FileKey {
    pub db: Arc<str>,
    pub coll: Arc<str>,
    /// Window start, seconds since the epoch (UTC).
    pub window_start: i64,
}

/// One staged (uncommitted or committed) block of an open file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Block {
    pub id: String,
    pub bytes: u64,
    pub events: u64,
}

/// A file being written.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct OpenFile {
    pub key: FileKey,
    /// 0 for the first file of a window, then 1, 2... after size rolls.
    pub part: u32,
    /// The final object name.
    pub object: String,
    pub blocks: Vec<Block>,
    /// With `commit = "every_batch"`: how many of `blocks` are committed.
    #[serde(default)]
    pub committed: usize,
    pub bytes: u64,
    pub events: u64,
    /// Lowest source position in the file.
    #[serde(default)]
    pub first_position: Option<Position>,
    /// Highest source position in the file.
    pub high_water: Option<Position>,
    /// Wall-clock seconds when the file was opened (for `roll.max_age_secs`).
    pub opened_at: i64,
}

impl OpenFile {
    pub fn block_ids(&self) -> Vec<String> {
        self.blocks.iter().map(|b| b.id.clone()).collect()
    }
}

/// What is remembered of a window whose files were all sealed.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SealedWindow {
    pub key: FileKey,
    pub next_part: u32,
    pub high_water: Option<Position>,
    pub sealed_at: i64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Persisted {
    open: Vec<OpenFile>,
    sealed: Vec<SealedWindow>,
}

/// The state in memory, and where it is saved.
pub struct SinkState {
    file: StateFile,
    pub open: HashMap<FileKey, OpenFile>,
    pub sealed: HashMap<FileKey, SealedWindow>,
}

impl SinkState {
    pub fn load(file: StateFile) -> Result<Self, StateFileError> {
        let persisted: Persisted = file.load()?.unwrap_or_default();
        Ok(Self {
            file,
            open: persisted
                .open
                .into_iter()
                .map(|f| (f.key.clone(), f))
                .collect(),
            sealed: persisted
                .sealed
                .into_iter()
                .map(|s| (s.key.clone(), s))
                .collect(),
        })
    }

    pub fn save(&mut self, now: i64) -> Result<(), StateFileError> {
        self.sealed
            .retain(|_, s| now - s.sealed_at < SEALED_RETENTION_SECS);
        let mut open: Vec<OpenFile> = self.open.values().cloned().collect();
        open.sort_by(|a, b| a.key.cmp(&b.key));
        let mut sealed: Vec<SealedWindow> = self.sealed.values().cloned().collect();
        sealed.sort_by(|a, b| a.key.cmp(&b.key));
        self.file.save(&Persisted { open, sealed })
    }

    /// The highest position written for a window, open or sealed.
    pub fn high_water(&self, key: &FileKey) -> Option<&Position> {
        let open = self.open.get(key).and_then(|f| f.high_water.as_ref());
        let sealed = self.sealed.get(key).and_then(|s| s.high_water.as_ref());
        open.max(sealed)
    }

    /// The part number the next file of a window gets.
    pub fn next_part(&self, key: &FileKey) -> u32 {
        self.sealed.get(key).map_or(0, |s| s.next_part)
    }

    /// Records that an open file was sealed.
    pub fn sealed(&mut self, key: &FileKey, now: i64) -> Option<OpenFile> {
        let file = self.open.remove(key)?;
        let high_water = file
            .high_water
            .clone()
            .max(self.sealed.get(key).and_then(|s| s.high_water.clone()));
        self.sealed.insert(
            key.clone(),
            SealedWindow {
                key: key.clone(),
                next_part: file.part + 1,
                high_water,
                sealed_at: now,
            },
        );
        Some(file)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn high_water_spans_open_and_sealed_parts() {
        let dir = tempfile::tempdir().unwrap();
        let mut state = SinkState::load(StateFile::new(dir.path(), "state.json").unwrap()).unwrap();
        let key = FileKey {
            db: "d".into(),
            coll: "c".into(),
            window_start: 0,
        };
        state.open.insert(
            key.clone(),
            OpenFile {
                key: key.clone(),
                part: 0,
                object: "o".into(),
                blocks: vec![],
                committed: 0,
                bytes: 0,
                events: 1,
                first_position: None,
                high_water: Some(Position("05".into())),
                opened_at: 0,
            },
        );
        state.sealed(&key, 100).unwrap();
        assert_eq!(state.next_part(&key), 1);
        assert_eq!(state.high_water(&key), Some(&Position("05".into())));
        state.save(100).unwrap();

        let state = SinkState::load(StateFile::new(dir.path(), "state.json").unwrap()).unwrap();
        assert_eq!(state.high_water(&key), Some(&Position("05".into())));
        let mut state = state;
        state.save(100 + SEALED_RETENTION_SECS).unwrap();
        assert_eq!(
            state.high_water(&key),
            None,
            "old sealed windows are forgotten"
        );
    }
}
