//! `file:///abs/path`: the lake on local disk with the same guarantees as
//! the Blob endpoint. A staged block is a fsynced file under
//! `<root>/.mongo-adls-staging/`; a commit concatenates blocks into a
//! temporary file, fsyncs it and links it to its final name (a hard link
//! fails if the name exists, which gives `If-None-Match: *`), so a file
//! matching `events-*.jsonl` is complete the moment it appears.
//!
//! Several writers (agents with their own `data_dir`s) may share a lake
//! folder by mistake; nothing one does can corrupt or remove another's
//! files: temporary files carry a per-writer id, block ids are unique per
//! run, a commit's manifest is named by the inode of the file it describes
//! (so a writer never mistakes another's file for its own), and releasing a
//! sealed file removes only its own blocks.

use std::{
    fs,
    io::Write,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
};

use async_trait::async_trait;
use bytes::Bytes;

use super::{BlockList, Committed, Condition, Created, ObjectMeta, Storage, StorageError};
use crate::config::OptionError;

#[derive(Clone)]
pub struct LocalStorage {
    /// `<root>/<filesystem>`: where the files appear.
    base: PathBuf,
    /// `<root>/.mongo-adls-staging/<filesystem>`: blocks and commit manifests.
    staging: PathBuf,
    create_filesystem: bool,
    /// Part of temporary file names, so two writers never share one.
    writer: String,
    /// Numbers temporary files, so two attempts of one commit (a timed-out
    /// one still running, and its retry) never share one either.
    attempts: Arc<AtomicU64>,
    /// Held from checking a commit's condition to replacing the file, so
    /// the check and the rename are one step for this writer (a timed-out
    /// attempt that finishes late sees the retry's version and gives up).
    replacing: Arc<Mutex<()>>,
}

fn io_err(what: &str, path: &Path, e: std::io::Error) -> StorageError {
    // Local I/O errors (disk full, permissions) will not fix themselves on
    // retry in milliseconds, but may after a while: treat them as transient
    // so the batch is retried with backoff rather than rejected.
    StorageError::transient(format!("{what} {}: {e}", path.display()))
}

/// A commit names a staged block that is gone.
fn block_missing(name: &str, block: &Path) -> StorageError {
    StorageError {
        blocks_missing: true,
        ..StorageError::permanent(format!(
            "Put Block List {name}: staged block {} is missing",
            block.display()
        ))
    }
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    fs::File::open(dir)?.sync_all()
}

impl LocalStorage {
    pub fn new(
        account_url: &str,
        filesystem: &str,
        create_filesystem: bool,
    ) -> Result<Self, OptionError> {
        let root = url::Url::parse(account_url)
            .ok()
            .and_then(|url| url.to_file_path().ok())
            .filter(|root| root.is_absolute())
            .ok_or_else(|| {
                OptionError::new(
                    "account_url",
                    format!("{account_url:?} must be file:///absolute/path"),
                )
            })?;
        if filesystem.is_empty() || filesystem.contains(['/', '\\']) || filesystem.starts_with('.')
        {
            return Err(OptionError::new(
                "filesystem",
                format!("{filesystem:?} must be a plain folder name"),
            ));
        }
        Ok(Self {
            base: root.join(filesystem),
            staging: root.join(".mongo-adls-staging").join(filesystem),
            create_filesystem,
            writer: uuid::Uuid::new_v4().simple().to_string()[..12].to_string(),
            attempts: Arc::default(),
            replacing: Arc::default(),
        })
    }

    fn missing_filesystem(&self) -> String {
        format!(
            "filesystem folder {} does not exist; create it or set create_filesystem = true",
            self.base.display()
        )
    }

    /// `validate`: the folders exist or can be created, and are writable,
    /// checked without writing (access(2)).
    fn check_writable(&self) -> Result<String, String> {
        if !self.base.exists() && !self.create_filesystem {
            return Err(self.missing_filesystem());
        }
        for dir in [&self.base, &self.staging] {
            // The folder itself, or the nearest ancestor it is created in.
            let existing = dir.ancestors().find(|d| d.exists()).unwrap_or(dir);
            if !writable(existing) {
                return Err(format!(
                    "{} is not writable by this user",
                    existing.display()
                ));
            }
        }
        Ok(format!(
            "nothing written; {} and its staging folder are writable",
            self.base.display()
        ))
    }

    fn final_path(&self, name: &str) -> PathBuf {
        self.base.join(name)
    }

    fn block_dir(&self, name: &str) -> PathBuf {
        self.staging.join(name)
    }

    /// A temporary name for `target`, in its folder, of this writer and
    /// attempt.
    fn tmp_path(&self, target: &Path) -> PathBuf {
        let name = target.file_name().unwrap_or_default().to_string_lossy();
        let attempt = self.attempts.fetch_add(1, Ordering::Relaxed);
        target.with_file_name(format!(".{name}.{}-{attempt}.mongo-adls-tmp", self.writer))
    }

    /// The manifest of the visible file version with inode `inode`: the
    /// block ids it was made of.
    fn manifest_path(&self, name: &str, inode: u64) -> PathBuf {
        self.block_dir(name).join(format!(".committed.{inode}"))
    }

    /// The block ids the visible file `name` was made of: its manifest, or
    /// the single `.committed` of versions before manifests were per inode.
    fn read_manifest(&self, name: &str) -> std::io::Result<Option<BlockList>> {
        let inode = match fs::metadata(self.final_path(name)) {
            Ok(meta) => meta.ino(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let text = match fs::read_to_string(self.manifest_path(name, inode)) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                fs::read_to_string(self.block_dir(name).join(".committed"))
            }
            other => other,
        };
        let ids = match text {
            Ok(text) => text
                .lines()
                .filter(|l| !l.is_empty())
                .map(str::to_string)
                .collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e),
        };
        Ok(Some(BlockList {
            ids,
            version: inode.to_string(),
        }))
    }

    fn write_file(path: &Path, parts: &[&[u8]]) -> std::io::Result<()> {
        let mut f = fs::File::create(path)?;
        for p in parts {
            f.write_all(p)?;
        }
        f.sync_all()
    }

    /// How many leading `block_ids` the visible file holds already: those
    /// of its manifest, if they start the list and the file's length is
    /// theirs (the manifest is written just before the file is replaced,
    /// so after a crash there it can be ahead of the file).
    fn committed_prefix(&self, name: &str, target: &Path, block_ids: &[String]) -> usize {
        let Ok(Some(BlockList { ids: previous, .. })) = self.read_manifest(name) else {
            return 0;
        };
        let is_prefix = previous.len() <= block_ids.len()
            && previous.iter().zip(block_ids).all(|(a, b)| a == b);
        if !is_prefix {
            return 0;
        }
        let expected: Option<u64> = previous
            .iter()
            .map(|id| {
                fs::metadata(self.block_dir(name).join(id))
                    .ok()
                    .map(|m| m.len())
            })
            .sum();
        match (expected, fs::metadata(target)) {
            (Some(len), Ok(meta)) if meta.len() == len => previous.len(),
            _ => 0,
        }
    }

    fn commit_sync(
        &self,
        name: &str,
        block_ids: &[String],
        condition: &Condition,
    ) -> Result<Committed, StorageError> {
        let target = self.final_path(name);
        let holds = match (condition, fs::metadata(&target)) {
            (Condition::Absent, Err(_)) => true,
            (Condition::Version(v), Ok(meta)) => meta.ino().to_string() == *v,
            _ => false,
        };
        if !holds {
            return Ok(Committed::ConditionFailed);
        }
        let dir = target.parent().unwrap_or(&self.base).to_path_buf();
        fs::create_dir_all(&dir).map_err(|e| io_err("create", &dir, e))?;
        let tmp = self.tmp_path(&target);
        let result = self.commit_through(name, block_ids, condition, &tmp);
        // Whatever happened, no temporary file stays in the lake.
        let _ = fs::remove_file(&tmp);
        if result.is_ok() {
            sync_dir(&dir).map_err(|e| io_err("fsync", &dir, e))?;
        }
        result
    }

    /// Writes the file as `tmp`, records its manifest, and makes it
    /// visible under `name`.
    fn commit_through(
        &self,
        name: &str,
        block_ids: &[String],
        condition: &Condition,
        tmp: &Path,
    ) -> Result<Committed, StorageError> {
        let (target, tmp) = (self.final_path(name), tmp.to_path_buf());
        if let ([id], Condition::Absent) = (block_ids, condition) {
            // A new file of one block is that block: linked into place, not
            // copied (blocks are never changed once staged, and sealing
            // releases only the staging name).
            let block = self.block_dir(name).join(id);
            match fs::metadata(&block) {
                Ok(_) => return self.publish(name, block_ids, condition, &block, &target),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Err(block_missing(name, &block))
                }
                Err(e) => return Err(io_err("stat", &block, e)),
            }
        }
        {
            // `every_batch` commits a growing list: start from the visible
            // file when it holds a prefix of the list, so only new blocks
            // are read. `fs::copy` is copy_file_range: a reflink on XFS and
            // Btrfs, an in-kernel copy elsewhere.
            let reused = match condition {
                Condition::Absent => 0,
                Condition::Version(_) => self.committed_prefix(name, &target, block_ids),
            };
            let out = if reused > 0 {
                fs::copy(&target, &tmp).and_then(|_| fs::OpenOptions::new().append(true).open(&tmp))
            } else {
                fs::File::create(&tmp)
            };
            let mut out = out.map_err(|e| io_err("write", &tmp, e))?;
            for id in &block_ids[reused..] {
                let block = self.block_dir(name).join(id);
                let mut f = match fs::File::open(&block) {
                    Ok(f) => f,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        return Err(block_missing(name, &block));
                    }
                    Err(e) => return Err(io_err("read block", &block, e)),
                };
                std::io::copy(&mut f, &mut out).map_err(|e| io_err("write", &tmp, e))?;
            }
            out.sync_all().map_err(|e| io_err("fsync", &tmp, e))?;
        }
        self.publish(name, block_ids, condition, &tmp, &target)
    }

    /// Makes the complete, fsynced file `source` visible as `target` if
    /// `condition` holds, after recording its manifest.
    fn publish(
        &self,
        name: &str,
        block_ids: &[String],
        condition: &Condition,
        source: &Path,
        target: &Path,
    ) -> Result<Committed, StorageError> {
        let tmp = source;
        // The manifest is written before the file becomes visible, so a
        // crash right after can still be recognised as our own commit. It
        // is named by the inode the visible file will have (a link or
        // rename keeps it), so it describes exactly that file.
        let inode = fs::metadata(tmp).map_err(|e| io_err("stat", tmp, e))?.ino();
        let manifest = self.manifest_path(name, inode);
        fs::create_dir_all(self.block_dir(name)).map_err(|e| io_err("create", &manifest, e))?;
        write_atomic(&manifest, block_ids.join("\n").as_bytes())
            .map_err(|e| io_err("write", &manifest, e))?;
        let done = match condition {
            Condition::Absent => match fs::hard_link(tmp, target) {
                Ok(()) => Committed::Done(inode.to_string()),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    Committed::ConditionFailed
                }
                Err(e) => return Err(io_err("link", target, e)),
            },
            Condition::Version(version) => {
                let _replacing = self.replacing.lock().unwrap_or_else(|e| e.into_inner());
                match fs::metadata(target) {
                    Ok(meta) if meta.ino().to_string() == *version => {
                        fs::rename(tmp, target).map_err(|e| io_err("rename", target, e))?;
                        // The version this one replaced is gone: so is its
                        // manifest.
                        let _ = fs::remove_file(self.manifest_path(name, meta.ino()));
                        Committed::Done(inode.to_string())
                    }
                    _ => Committed::ConditionFailed,
                }
            }
        };
        // A refused commit's manifest goes, unless the visible file is this
        // very inode (a linked block committed by an earlier attempt).
        let ours = fs::metadata(target).is_ok_and(|m| m.ino() == inode);
        if done == Committed::ConditionFailed && !ours {
            let _ = fs::remove_file(&manifest);
        }
        Ok(done)
    }
}

#[async_trait]
impl Storage for LocalStorage {
    async fn stage_block(
        &self,
        name: &str,
        block_id: &str,
        data: Bytes,
    ) -> Result<(), StorageError> {
        let dir = self.block_dir(name);
        let id = block_id.to_string();
        tokio::task::spawn_blocking(move || {
            fs::create_dir_all(&dir).map_err(|e| io_err("create", &dir, e))?;
            let tmp = dir.join(format!("{id}.tmp"));
            Self::write_file(&tmp, &[&data]).map_err(|e| io_err("write", &tmp, e))?;
            let path = dir.join(&id);
            fs::rename(&tmp, &path).map_err(|e| io_err("rename", &path, e))?;
            sync_dir(&dir).map_err(|e| io_err("fsync", &dir, e))
        })
        .await
        .map_err(|e| StorageError::transient(e.to_string()))?
    }

    async fn commit_blocks(
        &self,
        name: &str,
        block_ids: &[String],
        condition: &Condition,
    ) -> Result<Committed, StorageError> {
        let this = self.clone();
        let (name, ids, condition) = (name.to_string(), block_ids.to_vec(), condition.clone());
        tokio::task::spawn_blocking(move || this.commit_sync(&name, &ids, &condition))
            .await
            .map_err(|e| StorageError::transient(e.to_string()))?
    }

    async fn committed_blocks(&self, name: &str) -> Result<Option<BlockList>, StorageError> {
        self.read_manifest(name)
            .map_err(|e| io_err("read the manifest of", &self.final_path(name), e))
    }

    async fn uncommitted_blocks(&self, name: &str) -> Result<Vec<String>, StorageError> {
        let dir = self.block_dir(name);
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err("list", &dir, e)),
        };
        let mut ids = Vec::new();
        for entry in entries {
            let name = entry.map_err(|e| io_err("list", &dir, e))?.file_name();
            let name = name.to_string_lossy();
            // Not blocks: the commit manifest and blocks still being written.
            if !name.starts_with('.') && !name.ends_with(".tmp") {
                ids.push(name.into_owned());
            }
        }
        Ok(ids)
    }

    async fn list_details(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StorageError> {
        // From the deepest folder the prefix names; temporary files (dot
        // names) are not objects.
        let folder = prefix.rsplit_once('/').map_or("", |(dir, _)| dir);
        let mut objects = Vec::new();
        let mut pending = vec![self.base.join(folder)];
        while let Some(dir) = pending.pop() {
            let entries = match fs::read_dir(&dir) {
                Ok(entries) => entries,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_err("list", &dir, e)),
            };
            for entry in entries {
                let entry = entry.map_err(|e| io_err("list", &dir, e))?;
                let path = entry.path();
                if entry.file_name().to_string_lossy().starts_with('.') {
                    continue;
                }
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    pending.push(path);
                } else if let Ok(rel) = path.strip_prefix(&self.base) {
                    let name = rel.to_string_lossy().into_owned();
                    if !name.starts_with(prefix) {
                        continue;
                    }
                    // Gone between the listing and the stat: not listed.
                    let Ok(meta) = entry.metadata() else { continue };
                    objects.push(ObjectMeta {
                        name,
                        size: meta.len(),
                        last_modified_ms: meta.mtime() * 1000 + meta.mtime_nsec() / 1_000_000,
                    });
                }
            }
        }
        Ok(objects)
    }

    async fn put(&self, name: &str, data: Bytes) -> Result<(), StorageError> {
        let target = self.final_path(name);
        let this = self.clone();
        tokio::task::spawn_blocking(move || {
            let dir = target
                .parent()
                .expect("object names have a parent")
                .to_path_buf();
            fs::create_dir_all(&dir).map_err(|e| io_err("create", &dir, e))?;
            let tmp = this.tmp_path(&target);
            Self::write_file(&tmp, &[&data]).map_err(|e| io_err("write", &tmp, e))?;
            fs::rename(&tmp, &target).map_err(|e| io_err("rename", &target, e))?;
            sync_dir(&dir).map_err(|e| io_err("fsync", &dir, e))
        })
        .await
        .map_err(|e| StorageError::transient(e.to_string()))?
    }

    async fn get(&self, name: &str) -> Result<Option<Bytes>, StorageError> {
        let path = self.final_path(name);
        tokio::task::spawn_blocking(move || match fs::read(&path) {
            Ok(bytes) => Ok(Some(Bytes::from(bytes))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err("read", &path, e)),
        })
        .await
        .map_err(|e| StorageError::transient(e.to_string()))?
    }

    async fn delete(&self, name: &str) -> Result<(), StorageError> {
        let path = self.final_path(name);
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err("delete", &path, e)),
        }
    }

    async fn put_if_absent(&self, name: &str, data: Bytes) -> Result<Created, StorageError> {
        let target = self.final_path(name);
        let this = self.clone();
        tokio::task::spawn_blocking(move || {
            if target.exists() {
                return Ok(Created::AlreadyExists);
            }
            let dir = target
                .parent()
                .expect("object names have a parent")
                .to_path_buf();
            fs::create_dir_all(&dir).map_err(|e| io_err("create", &dir, e))?;
            let tmp = this.tmp_path(&target);
            Self::write_file(&tmp, &[&data]).map_err(|e| io_err("write", &tmp, e))?;
            let created = match fs::hard_link(&tmp, &target) {
                Ok(()) => Created::Created,
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Created::AlreadyExists,
                Err(e) => return Err(io_err("link", &target, e)),
            };
            let _ = fs::remove_file(&tmp);
            sync_dir(&dir).map_err(|e| io_err("fsync", &dir, e))?;
            Ok(created)
        })
        .await
        .map_err(|e| StorageError::transient(e.to_string()))?
    }

    /// Removes the sealed file's own blocks and manifest, then the folder
    /// if nothing else is left in it (another writer's blocks stay).
    async fn release(&self, name: &str, block_ids: &[String]) {
        let dir = self.block_dir(name);
        for id in block_ids {
            let _ = fs::remove_file(dir.join(id));
        }
        if let Ok(meta) = fs::metadata(self.final_path(name)) {
            let _ = fs::remove_file(self.manifest_path(name, meta.ino()));
        }
        let _ = fs::remove_file(dir.join(".committed"));
        let _ = fs::remove_dir(&dir);
    }

    async fn healthcheck(&self, dry_run: bool) -> Result<Option<String>, String> {
        if dry_run {
            return self.check_writable().map(Some);
        }
        if !self.base.exists() {
            if self.create_filesystem {
                fs::create_dir_all(&self.base)
                    .map_err(|e| format!("cannot create {}: {e}", self.base.display()))?;
            } else {
                return Err(self.missing_filesystem());
            }
        }
        fs::create_dir_all(&self.staging)
            .map_err(|e| format!("cannot create {}: {e}", self.staging.display()))?;
        let probe = self.staging.join(".healthcheck");
        Self::write_file(&probe, &[b"ok"])
            .map_err(|e| format!("cannot write to {}: {e}", self.staging.display()))?;
        let _ = fs::remove_file(probe);
        Ok(None)
    }

    fn describe(&self) -> String {
        format!("file://{}", self.base.display())
    }
}

fn writable(path: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: `c` is a valid NUL-terminated path for the call's duration.
    unsafe { libc::access(c.as_ptr(), libc::W_OK) == 0 }
}

/// Writes `bytes` to `path` via a fsynced temporary file and a rename, so a
/// crash leaves the old content or the new, never a mix.
fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
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

    fn storage(root: &Path) -> LocalStorage {
        LocalStorage::new(&format!("file://{}", root.display()), "fs", true).unwrap()
    }

    /// Commits `ids` over the visible version, as `every_batch` does.
    async fn commit(s: &LocalStorage, ids: &[&str]) -> String {
        let ids: Vec<String> = ids.iter().map(|i| i.to_string()).collect();
        let condition = match s.committed_blocks("a/f.jsonl").await.unwrap() {
            Some(list) => Condition::Version(list.version),
            None => Condition::Absent,
        };
        let done = s.commit_blocks("a/f.jsonl", &ids, &condition).await;
        assert!(matches!(done, Ok(Committed::Done(_))), "{done:?}");
        fs::read_to_string(s.final_path("a/f.jsonl")).unwrap()
    }

    /// `every_batch` on disk: each commit holds exactly the listed blocks,
    /// whether it starts from the visible file or not; a manifest ahead of
    /// the file (a crash between the two) is not trusted.
    #[tokio::test]
    async fn growing_commits_hold_exactly_their_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let s = storage(dir.path());
        for id in ["b1", "b2", "b3", "b4", "b5"] {
            let line = format!("{id}\n");
            s.stage_block("a/f.jsonl", id, Bytes::from(line))
                .await
                .unwrap();
        }
        assert_eq!(commit(&s, &["b1"]).await, "b1\n");
        assert_eq!(commit(&s, &["b1", "b2"]).await, "b1\nb2\n");
        // The next commit starts from the visible file (which nothing else
        // changes; here it is changed, to see that it was used).
        fs::write(s.final_path("a/f.jsonl"), "B1\nB2\n").unwrap();
        assert_eq!(commit(&s, &["b1", "b2", "b3"]).await, "B1\nB2\nb3\n");
        let inode = fs::metadata(s.final_path("a/f.jsonl")).unwrap().ino();
        let manifest = s.manifest_path("a/f.jsonl", inode);
        fs::write(&manifest, "b1\nb2\nb3\nb4").unwrap();
        assert_eq!(
            commit(&s, &["b1", "b2", "b3", "b4", "b5"]).await,
            "b1\nb2\nb3\nb4\nb5\n"
        );
        // Not a prefix (salvage after lost blocks): built from the blocks.
        assert_eq!(commit(&s, &["b1", "b4"]).await, "b1\nb4\n");
    }

    /// A new file of one block is the block itself, linked into place: no
    /// second copy of its bytes. Committing it again (a retry whose first
    /// attempt went through) is refused and leaves its manifest, and the
    /// seal's release leaves the file.
    #[tokio::test]
    async fn a_single_block_file_is_linked_not_copied() {
        let dir = tempfile::tempdir().unwrap();
        let s = storage(dir.path());
        let name = "a/one.jsonl";
        s.stage_block(name, "b1", Bytes::from_static(b"one\n"))
            .await
            .unwrap();
        let ids = vec!["b1".to_string()];
        let done = s.commit_blocks(name, &ids, &Condition::Absent).await;
        assert!(matches!(done, Ok(Committed::Done(_))), "{done:?}");
        let (file, block) = (s.final_path(name), s.block_dir(name).join("b1"));
        let (file_meta, block_meta) = (fs::metadata(&file).unwrap(), fs::metadata(&block).unwrap());
        assert_eq!(file_meta.ino(), block_meta.ino(), "linked, not copied");
        assert_eq!(
            s.commit_blocks(name, &ids, &Condition::Absent)
                .await
                .unwrap(),
            Committed::ConditionFailed
        );
        assert_eq!(s.committed_blocks(name).await.unwrap().unwrap().ids, ids);
        s.release(name, &ids).await;
        assert!(!block.exists());
        assert_eq!(fs::read_to_string(&file).unwrap(), "one\n");
        // A missing block is reported as such on this path too.
        let err = s
            .commit_blocks("a/two.jsonl", &["gone".to_string()], &Condition::Absent)
            .await
            .unwrap_err();
        assert!(err.blocks_missing, "{err:?}");
    }

    /// A commit that applies late (its attempt timed out, the retry and a
    /// later commit went through) must not roll the file back: it names a
    /// version that is gone, and changes nothing.
    #[tokio::test]
    async fn a_late_commit_does_not_roll_the_file_back() {
        let dir = tempfile::tempdir().unwrap();
        let s = storage(dir.path());
        let name = "a/f.jsonl";
        for id in ["b1", "b2", "b3"] {
            s.stage_block(name, id, Bytes::from(format!("{id}\n")))
                .await
                .unwrap();
        }
        let ids = |n: usize| -> Vec<String> {
            ["b1", "b2", "b3"][..n]
                .iter()
                .map(|i| i.to_string())
                .collect()
        };
        let Ok(Committed::Done(v1)) = s.commit_blocks(name, &ids(1), &Condition::Absent).await
        else {
            panic!("first commit")
        };
        let first_try = Condition::Version(v1);
        let Ok(Committed::Done(v2)) = s.commit_blocks(name, &ids(2), &first_try).await else {
            panic!("second commit")
        };
        s.commit_blocks(name, &ids(3), &Condition::Version(v2))
            .await
            .unwrap();
        // The second commit's first attempt, applied now.
        assert_eq!(
            s.commit_blocks(name, &ids(2), &first_try).await.unwrap(),
            Committed::ConditionFailed
        );
        assert_eq!(
            s.commit_blocks(name, &ids(1), &Condition::Absent)
                .await
                .unwrap(),
            Committed::ConditionFailed
        );
        assert_eq!(
            fs::read_to_string(s.final_path(name)).unwrap(),
            "b1\nb2\nb3\n"
        );
        assert_eq!(s.committed_blocks(name).await.unwrap().unwrap().ids, ids(3));
    }

    #[tokio::test]
    async fn a_missing_block_is_reported_as_missing() {
        let dir = tempfile::tempdir().unwrap();
        let s = storage(dir.path());
        s.stage_block("a/f.jsonl", "b1", Bytes::from_static(b"x\n"))
            .await
            .unwrap();
        let ids = vec!["b1".to_string(), "gone".to_string()];
        let err = s
            .commit_blocks("a/f.jsonl", &ids, &Condition::Absent)
            .await
            .unwrap_err();
        assert!(err.blocks_missing && !err.retriable, "{err:?}");
        assert_eq!(s.uncommitted_blocks("a/f.jsonl").await.unwrap(), vec!["b1"]);
        assert!(!s.final_path("a/f.jsonl").exists());
    }

    /// Two writers (own data_dirs, one lake folder by mistake) sealing the
    /// same name: the first wins whole, the second is told the file exists
    /// with another writer's blocks (never that it is its own), and
    /// releasing the first leaves the second's blocks alone.
    #[tokio::test]
    async fn two_writers_never_mix_their_files() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (storage(dir.path()), storage(dir.path()));
        let name = "a/f.jsonl";
        a.stage_block(name, "a1", Bytes::from_static(b"from a\n"))
            .await
            .unwrap();
        b.stage_block(name, "b1", Bytes::from_static(b"from b\n"))
            .await
            .unwrap();
        let (ids_a, ids_b) = (vec!["a1".to_string()], vec!["b1".to_string()]);
        assert!(matches!(
            a.commit_blocks(name, &ids_a, &Condition::Absent)
                .await
                .unwrap(),
            Committed::Done(_)
        ));
        assert_eq!(
            b.commit_blocks(name, &ids_b, &Condition::Absent)
                .await
                .unwrap(),
            Committed::ConditionFailed
        );
        assert_eq!(
            b.committed_blocks(name).await.unwrap().map(|l| l.ids),
            Some(ids_a.clone())
        );
        assert_eq!(fs::read_to_string(a.final_path(name)).unwrap(), "from a\n");
        a.release(name, &ids_a).await;
        assert_eq!(b.uncommitted_blocks(name).await.unwrap(), ids_b);
        // No temporary file of either is left in the lake.
        let left: Vec<_> = fs::read_dir(a.final_path("a"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, ["f.jsonl"]);
    }
}
