//! The change log (`state.<generation>.log`): one JSON line per staged
//! block or sealed file, fsynced per line, replayed over the snapshot on
//! load. A torn last line is a write cut short by a crash, never
//! acknowledged, so it is ignored.

use std::{
    fs,
    io::Write as _,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use super::{FileKey, SinkState, StagedBlock};
use crate::checkpoint::StateFileError;

/// One line of the log.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(super) enum Change {
    Staged {
        staged: StagedBlock,
        at: i64,
    },
    /// A file was sealed.
    Sealed {
        key: FileKey,
        at: i64,
    },
}

impl Change {
    /// When the change happened.
    pub(super) fn at(&self) -> i64 {
        match self {
            Change::Staged { at, .. } | Change::Sealed { at, .. } => *at,
        }
    }
}

impl SinkState {
    pub(super) fn log_path(&self, generation: u64) -> PathBuf {
        self.file
            .path()
            .with_file_name(format!("state.{generation}.log"))
    }

    /// Applies the current generation's log. Loading only reads (`validate`
    /// loads the state of a running agent): logs of other generations (left
    /// by a crash during compaction; the snapshot holds them) and a torn
    /// last line (never acknowledged) are left for the next snapshot to
    /// clear, which comes before the next append.
    pub(super) fn replay_log(&mut self) -> Result<(), StateFileError> {
        let path = self.log_path(self.generation);
        self.stale = log_files(&path).iter().any(|other| *other != path);
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(source) => return Err(StateFileError::Read { path, source }),
        };
        let complete = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
        for line in bytes[..complete]
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
        {
            let change =
                serde_json::from_slice(line).map_err(|source| StateFileError::Corrupt {
                    path: path.clone(),
                    source,
                })?;
            self.apply(change);
        }
        if complete < bytes.len() {
            tracing::warn!(path = %path.display(), "Ignoring a torn last line of the sink state log (a write interrupted by a crash; it was never acknowledged).");
            self.stale = true;
        }
        self.log_bytes = complete as u64;
        Ok(())
    }

    /// Appends `change` to the current generation's log as one fsynced
    /// line; the log is created (and its directory synced) on first use.
    pub(super) fn append(&mut self, change: &Change) -> Result<(), StateFileError> {
        let path = self.log_path(self.generation);
        let write = |log: &mut Option<fs::File>, line: &[u8]| -> std::io::Result<()> {
            if log.is_none() {
                let f = fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&path)?;
                // The new file's name must survive a crash too.
                if let Some(dir) = path.parent() {
                    fs::File::open(dir)?.sync_all()?;
                }
                *log = Some(f);
            }
            let f = log.as_mut().expect("opened above");
            f.write_all(line)?;
            f.sync_data()
        };
        let mut line = serde_json::to_vec(change).expect("state serializes");
        line.push(b'\n');
        write(&mut self.log, &line).map_err(|source| StateFileError::Write {
            path: path.clone(),
            source,
        })?;
        self.log_bytes += line.len() as u64;
        Ok(())
    }
}

/// The state logs (`state.<n>.log`) next to `log`.
pub(super) fn log_files(log: &Path) -> Vec<PathBuf> {
    let dir = log.parent().map(Path::to_path_buf).unwrap_or_default();
    fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            let generation = name.strip_prefix("state.")?.strip_suffix(".log")?;
            generation.parse::<u64>().ok().map(|_| entry.path())
        })
        .collect()
}
