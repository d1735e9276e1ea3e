//! The local state store: objects are files under one directory (a
//! pipeline's `data_dir`), durable as today's state files are. A document
//! is replaced through a fsynced temporary file renamed over it (then the
//! directory is fsynced); a log append is one `write` then `fdatasync`.
//!
//! Versions are the file's identity: modification time (ns), inode and
//! length. Every replace stamps the new file with a modification time
//! strictly above the old one's, so the version of a name never repeats
//! while the name exists, whatever the clock's granularity. Append
//! positions are checked against the file's length.
//!
//! One process writes a `data_dir` (the `data_dir` lock, `crate::lock`), so
//! the conditions are checked and the write done under one mutex; fences
//! are not checked (there is no lease to check them against). Calls do the
//! file I/O inline, as today's state code does.

use std::{
    fs::{self, File, OpenOptions},
    io::{ErrorKind, Read, Write},
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    sync::Mutex,
    time::{Duration, SystemTime},
};

use async_trait::async_trait;
use bytes::Bytes;

use super::{check_name, Fence, StateStore, StateStoreError, Version};

/// Files under one directory.
#[derive(Debug)]
pub struct LocalStateStore {
    dir: PathBuf,
    /// Held across each check-and-write, so two writers of this process
    /// cannot both pass the same condition.
    write: Mutex<()>,
}

impl LocalStateStore {
    /// The store at `dir`; nothing is created until the first write.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            write: Mutex::new(()),
        }
    }

    fn path(&self, what: &'static str, name: &str) -> Result<PathBuf, StateStoreError> {
        check_name(name).map_err(|message| StateStoreError::Failed {
            what,
            blob: self.dir.join(name).display().to_string(),
            message,
        })?;
        Ok(self.dir.join(name))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ()> {
        // A panic while writing leaves nothing half-checked: the files are
        // the truth, so a poisoned lock is still usable.
        self.write.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn version(meta: &fs::Metadata) -> Version {
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
        .unwrap_or_default();
    Version(format!(
        "{}.{}.{}",
        mtime.as_nanos(),
        meta.ino(),
        meta.len()
    ))
}

fn failed(what: &'static str, path: &Path, e: std::io::Error) -> StateStoreError {
    StateStoreError::Failed {
        what,
        blob: path.display().to_string(),
        message: e.to_string(),
    }
}

fn condition(what: &'static str, path: &Path, expected: String, code: &str) -> StateStoreError {
    StateStoreError::ConditionFailed {
        what,
        blob: path.display().to_string(),
        expected,
        code: code.to_string(),
    }
}

/// The metadata of `path`, `None` when it does not exist.
fn stat(path: &Path) -> std::io::Result<Option<fs::Metadata>> {
    match fs::metadata(path) {
        Ok(meta) => Ok(Some(meta)),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Makes a created, renamed or removed name in `path`'s directory durable.
fn sync_parent(path: &Path) -> std::io::Result<()> {
    match path.parent() {
        Some(dir) => File::open(dir)?.sync_all(),
        None => Ok(()),
    }
}

/// Reads a file and the metadata of what was read (one open file, so the
/// two agree even if the name is replaced meanwhile).
fn read_file(path: &Path) -> std::io::Result<Option<(Bytes, fs::Metadata)>> {
    let mut f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let meta = f.metadata()?;
    let mut buf = Vec::with_capacity(meta.len() as usize);
    f.read_to_end(&mut buf)?;
    Ok(Some((buf.into(), meta)))
}

fn list_dir(root: &Path, dir: &Path, out: &mut Vec<String>) -> std::io::Result<()> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let path = entry.path();
        if entry.file_type()?.is_dir() {
            list_dir(root, &path, out)?;
        } else if let Ok(rel) = path.strip_prefix(root) {
            let name = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy())
                .collect::<Vec<_>>()
                .join("/");
            if check_name(&name).is_ok() {
                out.push(name);
            }
        }
    }
    Ok(())
}

#[async_trait]
impl StateStore for LocalStateStore {
    fn location(&self) -> String {
        self.dir.display().to_string()
    }

    async fn take_over(
        &self,
        _fence: &Fence,
        _earlier: &[String],
    ) -> Result<Vec<String>, StateStoreError> {
        self.list("").await
    }

    async fn renew(&self, _fence: &Fence) -> Result<(), StateStoreError> {
        Ok(())
    }

    async fn release(&self, _fence: &Fence) -> Result<(), StateStoreError> {
        Ok(())
    }

    async fn read(&self, name: &str) -> Result<Option<(Bytes, Version)>, StateStoreError> {
        let path = self.path("read", name)?;
        let read = read_file(&path).map_err(|e| failed("read", &path, e))?;
        Ok(read.map(|(bytes, meta)| (bytes, version(&meta))))
    }

    async fn replace(
        &self,
        name: &str,
        bytes: Bytes,
        expected: Option<&Version>,
        _fence: &Fence,
    ) -> Result<Version, StateStoreError> {
        const WHAT: &str = "replace";
        let path = self.path(WHAT, name)?;
        let io = |e| failed(WHAT, &path, e);
        let _guard = self.lock();
        let current = stat(&path).map_err(io)?;
        match (expected, &current) {
            (None, None) => {}
            (Some(v), Some(meta)) if *v == version(meta) => {}
            (None, Some(_)) => return Err(condition(WHAT, &path, "absent".into(), "exists")),
            (Some(v), None) => {
                return Err(condition(WHAT, &path, format!("version {v}"), "missing"))
            }
            (Some(v), Some(meta)) => {
                let code = format!("now version {}", version(meta));
                return Err(condition(WHAT, &path, format!("version {v}"), &code));
            }
        }
        // Strictly after the old file's time, so the version changes even
        // when the clock has not ticked since the last replace.
        let mut stamp = SystemTime::now();
        if let Some(old) = current.as_ref().and_then(|m| m.modified().ok()) {
            stamp = stamp.max(old + Duration::from_nanos(1));
        }
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).map_err(io)?;
        }
        let tmp = PathBuf::from(format!("{}.tmp", path.display()));
        {
            let mut f = File::create(&tmp).map_err(io)?;
            f.write_all(&bytes).map_err(io)?;
            f.set_modified(stamp).map_err(io)?;
            f.sync_all().map_err(io)?;
        }
        fs::rename(&tmp, &path).map_err(io)?;
        sync_parent(&path).map_err(io)?;
        let meta = fs::metadata(&path).map_err(io)?;
        Ok(version(&meta))
    }

    async fn create_log(&self, name: &str, _fence: &Fence) -> Result<(), StateStoreError> {
        const WHAT: &str = "create log";
        let path = self.path(WHAT, name)?;
        let io = |e| failed(WHAT, &path, e);
        let _guard = self.lock();
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).map_err(io)?;
        }
        match OpenOptions::new().write(true).create_new(true).open(&path) {
            Ok(f) => f.sync_all().map_err(io)?,
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                return Err(condition(WHAT, &path, "absent".into(), "exists"))
            }
            Err(e) => return Err(io(e)),
        }
        sync_parent(&path).map_err(io)
    }

    async fn append(
        &self,
        name: &str,
        bytes: Bytes,
        at: u64,
        _fence: &Fence,
    ) -> Result<u64, StateStoreError> {
        const WHAT: &str = "append";
        let path = self.path(WHAT, name)?;
        let io = |e| failed(WHAT, &path, e);
        let _guard = self.lock();
        let mut f = match OpenOptions::new().append(true).open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == ErrorKind::NotFound => {
                return Err(condition(WHAT, &path, format!("length {at}"), "missing"))
            }
            Err(e) => return Err(io(e)),
        };
        let len = f.metadata().map_err(io)?.len();
        if len != at {
            let code = format!("length is {len}");
            return Err(condition(WHAT, &path, format!("length {at}"), &code));
        }
        f.write_all(&bytes).map_err(io)?;
        f.sync_data().map_err(io)?;
        Ok(at + bytes.len() as u64)
    }

    async fn read_log(&self, name: &str) -> Result<Option<Bytes>, StateStoreError> {
        let path = self.path("read log", name)?;
        let read = read_file(&path).map_err(|e| failed("read log", &path, e))?;
        Ok(read.map(|(bytes, _)| bytes))
    }

    async fn delete(&self, name: &str, _fence: &Fence) -> Result<(), StateStoreError> {
        const WHAT: &str = "delete";
        let path = self.path(WHAT, name)?;
        let io = |e| failed(WHAT, &path, e);
        let _guard = self.lock();
        match fs::remove_file(&path) {
            Ok(()) => sync_parent(&path).map_err(io),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io(e)),
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>, StateStoreError> {
        // From the prefix's own folder: a component lists its folder only,
        // never the rest of `data_dir` (a `lost+found` it may not read).
        let start = match prefix.rfind('/') {
            Some(end) => self.dir.join(&prefix[..end]),
            None => self.dir.clone(),
        };
        let mut names = Vec::new();
        list_dir(&self.dir, &start, &mut names).map_err(|e| failed("list", &start, e))?;
        names.retain(|n| n.starts_with(prefix));
        names.sort();
        Ok(names)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, LocalStateStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStateStore::new(dir.path().join("state"));
        (dir, store)
    }

    const F: Fence = Fence::None;

    #[tokio::test]
    async fn documents_are_replaced_only_from_the_version_read() {
        let (_dir, s) = store();
        let name = "sources/orders/checkpoint.json";
        assert_eq!(s.read(name).await.unwrap(), None);
        let v1 = s.replace(name, "one".into(), None, &F).await.unwrap();
        let (bytes, read_v) = s.read(name).await.unwrap().unwrap();
        assert_eq!((&bytes[..], &read_v), (&b"one"[..], &v1));

        // Same length, same second: the version still changes.
        let v2 = s.replace(name, "two".into(), Some(&v1), &F).await.unwrap();
        assert_ne!(v1, v2);
        let stale = s.replace(name, "old".into(), Some(&v1), &F).await;
        assert!(stale.unwrap_err().is_condition_failed());
        let exists = s.replace(name, "new".into(), None, &F).await;
        assert!(exists.unwrap_err().is_condition_failed());
        let missing = s.replace("other.json", "x".into(), Some(&v2), &F).await;
        assert!(missing.unwrap_err().is_condition_failed());
        assert_eq!(s.read(name).await.unwrap().unwrap(), ("two".into(), v2));
        // No temporary file is left, and none is listed.
        assert_eq!(s.list("").await.unwrap(), vec![name.to_string()]);
    }

    #[tokio::test]
    async fn appends_land_only_at_the_expected_length() {
        let (_dir, s) = store();
        let log = "sinks/lake/state.0.log";
        let missing = s.append(log, "a\n".into(), 0, &F).await;
        assert!(missing.unwrap_err().is_condition_failed());
        assert_eq!(s.read_log(log).await.unwrap(), None);

        s.create_log(log, &F).await.unwrap();
        assert!(s
            .create_log(log, &F)
            .await
            .unwrap_err()
            .is_condition_failed());
        assert_eq!(s.read_log(log).await.unwrap().unwrap(), Bytes::new());
        // Two writers both saw length 0: the second one writes nothing.
        let len = s.append(log, "first\n".into(), 0, &F).await.unwrap();
        assert_eq!(len, 6);
        let err = s.append(log, "second\n".into(), 0, &F).await.unwrap_err();
        assert!(err.is_condition_failed(), "{err}");
        assert!(err.to_string().contains("length is 6"), "{err}");
        let len = s.append(log, "third\n".into(), len, &F).await.unwrap();
        assert_eq!(len, 12);
        assert_eq!(
            s.read_log(log).await.unwrap().unwrap(),
            Bytes::from("first\nthird\n")
        );
    }

    #[tokio::test]
    async fn delete_list_and_names() {
        let (_dir, s) = store();
        s.create_log("sinks/lake/state.1.log", &F).await.unwrap();
        s.create_log("sinks/lake/state.2.log", &F).await.unwrap();
        s.replace("sinks/lake/state.json", "{}".into(), None, &F)
            .await
            .unwrap();
        s.replace("checkpoint.json", "{}".into(), None, &F)
            .await
            .unwrap();
        assert_eq!(
            s.list("sinks/lake/state.").await.unwrap(),
            vec![
                "sinks/lake/state.1.log",
                "sinks/lake/state.2.log",
                "sinks/lake/state.json"
            ]
        );
        s.delete("sinks/lake/state.1.log", &F).await.unwrap();
        s.delete("sinks/lake/state.1.log", &F).await.unwrap();
        assert_eq!(s.take_over(&F, &[]).await.unwrap().len(), 3);
        let bad = s.read("../escape").await.unwrap_err();
        assert!(bad.to_string().contains("`..` segment"), "{bad}");
    }
}
