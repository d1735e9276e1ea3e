//! Durable small state files (source checkpoints, sink state), written so a
//! crash at any instant leaves either the old or the new content: write a
//! temporary file, fsync it, rename it over the old one, fsync the directory.

use std::{
    fs,
    io::Write,
    path::{Path, PathBuf},
};

use serde::{de::DeserializeOwned, Serialize};
use snafu::{ResultExt, Snafu};

#[derive(Debug, Snafu)]
pub enum StateFileError {
    #[snafu(display("could not create state directory {}: {source}", path.display()))]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[snafu(display("could not write state file {}: {source}", path.display()))]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[snafu(display("could not read state file {}: {source}", path.display()))]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[snafu(display(
        "state file {} is corrupt ({source}); restore it from a backup. Without it the start check refuses to start and says what is lost; `--accept-data-gap` then starts anyway and logs the gap",
        path.display()
    ))]
    Corrupt {
        path: PathBuf,
        source: serde_json::Error,
    },
}

/// One JSON state file.
#[derive(Clone, Debug)]
pub struct StateFile {
    path: PathBuf,
}

impl StateFile {
    /// A state file at `dir/name`; creates `dir` if needed.
    pub fn new(dir: &Path, name: &str) -> Result<Self, StateFileError> {
        fs::create_dir_all(dir).context(CreateDirSnafu { path: dir })?;
        Ok(Self {
            path: dir.join(name),
        })
    }

    /// A state file at `dir/name`, creating nothing (for reading).
    pub fn existing(dir: &Path, name: &str) -> Self {
        Self {
            path: dir.join(name),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the state, or `None` when the file does not exist yet.
    pub fn load<T: DeserializeOwned>(&self) -> Result<Option<T>, StateFileError> {
        match fs::read(&self.path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .context(CorruptSnafu { path: &self.path }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(StateFileError::Read {
                path: self.path.clone(),
                source,
            }),
        }
    }

    /// Replaces the state atomically and durably.
    pub fn save<T: Serialize>(&self, value: &T) -> Result<(), StateFileError> {
        let bytes = serde_json::to_vec_pretty(value).expect("state serializes");
        write_atomic(&self.path, &bytes).context(WriteSnafu { path: &self.path })
    }
}

/// Writes `bytes` to `path` via a fsynced temporary file and a rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        // Make the rename itself durable.
        fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_missing() {
        let dir = tempfile::tempdir().unwrap();
        let f = StateFile::new(&dir.path().join("a/b"), "state.json").unwrap();
        assert_eq!(f.load::<u32>().unwrap(), None);
        f.save(&42u32).unwrap();
        assert_eq!(f.load::<u32>().unwrap(), Some(42));
        std::fs::write(f.path(), b"{not json").unwrap();
        assert!(f.load::<u32>().unwrap_err().to_string().contains("corrupt"));
    }
}
