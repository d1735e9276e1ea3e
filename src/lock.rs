//! One agent per `data_dir`: two agents on one directory would both write
//! its checkpoints and sink state and lose or duplicate events. The lock is
//! `flock(2)` on `data_dir/.lock`, which the kernel releases when the
//! process dies however it dies (kill -9 included), so no stale lock is
//! ever left behind.

use std::{
    fs,
    io::{Read, Seek, Write},
    os::fd::AsRawFd,
    path::Path,
};

/// Held for the life of the agent.
pub struct DataDirLock {
    _file: fs::File,
}

impl DataDirLock {
    /// Takes the lock, or explains who holds it.
    pub fn acquire(dir: &Path) -> Result<Self, String> {
        let path = dir.join(".lock");
        let io = |what: &str, e: std::io::Error| format!("cannot {what} {}: {e}", path.display());
        fs::create_dir_all(dir).map_err(|e| io("create the folder of", e))?;
        let mut file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| io("open", e))?;
        // SAFETY: flock on a descriptor this function owns.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            return Err(held_by_another(&path, &mut file));
        }
        file.set_len(0).map_err(|e| io("write", e))?;
        file.rewind().map_err(|e| io("write", e))?;
        writeln!(file, "{}", std::process::id()).map_err(|e| io("write", e))?;
        Ok(Self { _file: file })
    }
}

/// For `state show`: the pid recorded in `data_dir/.lock` and whether that
/// process is alive, without taking the lock (a probe could make a starting
/// agent fail).
pub fn holder(dir: &Path) -> String {
    let pid = fs::read_to_string(dir.join(".lock")).unwrap_or_default();
    let pid = pid.trim();
    if pid.is_empty() {
        return "none has run here".into();
    }
    let alive = Path::new("/proc").join(pid).exists();
    format!(
        "pid {pid} ({})",
        if alive { "running" } else { "not running" }
    )
}

fn held_by_another(path: &Path, file: &mut fs::File) -> String {
    let mut pid = String::new();
    let _ = file.read_to_string(&mut pid);
    let dir = path.parent().unwrap_or(path).display();
    format!(
        "data_dir {dir} is in use by another mongo-adls (pid {}): one data_dir serves one agent. Stop that agent, or give this one its own data_dir and its own pipeline",
        pid.trim()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_until_the_first_lets_go() {
        let dir = tempfile::tempdir().unwrap();
        let first = DataDirLock::acquire(dir.path()).unwrap();
        let second = DataDirLock::acquire(dir.path()).err().unwrap();
        assert!(
            second.contains(&format!("pid {}", std::process::id())),
            "{second}"
        );
        drop(first);
        assert!(DataDirLock::acquire(dir.path()).is_ok());
    }
}
