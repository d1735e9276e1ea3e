//! The local spill: pending batch bytes moved out of memory to local disk
//! when many files are active at once, so each file still gets one large
//! block instead of many small ones (storage bills per request, whatever
//! its size).
//!
//! It is only a cache. Events are acknowledged once storage holds them,
//! so a spill lost with the process costs a replay, never an event. The
//! spill therefore lives in unlinked temporary files (`O_TMPFILE` where
//! the system has it): the system frees them when the agent exits however
//! it exits, and there is nothing to clean up or recover at start.
//!
//! Bytes are appended to a few segment files, each batch's bytes as a list
//! of extents read back in order when the batch is written. A segment is
//! freed once none of its extents is live. The disk used, live or not, is
//! bounded by `max_bytes`: past it, batches stay in memory and the sink
//! falls back to writing the largest early.

use std::{
    collections::HashMap,
    fs::File,
    io,
    os::unix::fs::FileExt,
    path::{Path, PathBuf},
};

/// Where one batch's spilled bytes are, in order.
#[derive(Debug, Default)]
pub(super) struct Spilled {
    extents: Vec<Extent>,
    bytes: usize,
}

impl Spilled {
    /// Bytes of the batch on disk.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

#[derive(Debug)]
struct Extent {
    segment: u64,
    offset: u64,
    len: usize,
}

struct Segment {
    file: File,
    /// Bytes written (the next write's offset).
    len: u64,
    /// Bytes of extents not yet read back or discarded.
    live: u64,
}

pub(super) struct Spill {
    dir: PathBuf,
    max_bytes: u64,
    segment_bytes: u64,
    segments: HashMap<u64, Segment>,
    /// The segment appended to.
    current: Option<u64>,
    next_segment: u64,
    /// Bytes of every segment on disk, live or not.
    on_disk: u64,
    /// After a disk error: nothing more is written; what was can still be
    /// read back.
    stopped: bool,
}

impl Spill {
    /// A spill of at most `max_bytes` in `dir`, checked by creating (and
    /// at once dropping) one file there.
    pub fn new(dir: &Path, max_bytes: u64) -> io::Result<Self> {
        tempfile::tempfile_in(dir)?;
        Ok(Self {
            dir: dir.to_path_buf(),
            max_bytes,
            // A few segments, so one slow file's bytes pin little disk.
            segment_bytes: (max_bytes / 8).clamp(1 << 20, 64 << 20),
            segments: HashMap::new(),
            current: None,
            next_segment: 0,
            on_disk: 0,
            stopped: false,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether `len` more bytes fit within `max_bytes`.
    pub fn has_room(&self, len: usize) -> bool {
        !self.stopped && self.on_disk + len as u64 <= self.max_bytes
    }

    /// Writes no more (after a disk error): batches stay in memory.
    pub fn stop_spilling(&mut self) {
        self.stopped = true;
    }

    /// Bytes on disk now.
    pub fn on_disk(&self) -> u64 {
        self.on_disk
    }

    /// Appends `data` to `spilled`. On an error nothing of `data` is in
    /// `spilled` (bytes written before the error are left unreferenced).
    pub fn write(&mut self, spilled: &mut Spilled, data: &[u8]) -> io::Result<()> {
        let id = match self.current {
            Some(id) if self.segments[&id].len + data.len() as u64 <= self.segment_bytes => id,
            Some(id) if self.segments[&id].len == 0 => id,
            _ => {
                let id = self.next_segment;
                self.segments.insert(
                    id,
                    Segment {
                        file: tempfile::tempfile_in(&self.dir)?,
                        len: 0,
                        live: 0,
                    },
                );
                self.next_segment += 1;
                let previous = self.current.replace(id);
                if let Some(previous) = previous {
                    self.free_if_dead(previous);
                }
                id
            }
        };
        let segment = self.segments.get_mut(&id).expect("current segment");
        let offset = segment.len;
        let written = segment.file.write_all_at(data, offset);
        // Bytes written before an error take disk too: counted as if all
        // were, and never referenced.
        segment.len = offset + data.len() as u64;
        self.on_disk += data.len() as u64;
        written?;
        segment.live += data.len() as u64;
        spilled.extents.push(Extent {
            segment: id,
            offset,
            len: data.len(),
        });
        spilled.bytes += data.len();
        Ok(())
    }

    /// Appends the bytes of `spilled` to `into`, in the order written, and
    /// frees them (also when reading fails).
    pub fn read(&mut self, spilled: Spilled, into: &mut Vec<u8>) -> io::Result<()> {
        into.reserve(spilled.bytes);
        let mut result = Ok(());
        for extent in &spilled.extents {
            if result.is_ok() {
                let start = into.len();
                into.resize(start + extent.len, 0);
                result = self.segments[&extent.segment]
                    .file
                    .read_exact_at(&mut into[start..], extent.offset);
            }
        }
        self.discard(spilled);
        result
    }

    /// Frees the bytes of `spilled` without reading them.
    pub fn discard(&mut self, spilled: Spilled) {
        for extent in spilled.extents {
            let segment = self
                .segments
                .get_mut(&extent.segment)
                .expect("an extent's segment lives while the extent does");
            segment.live -= extent.len as u64;
            self.free_if_dead(extent.segment);
        }
    }

    /// Frees a segment none of whose bytes are live: dropped (the system
    /// frees an unlinked file once closed), or, the one appended to,
    /// emptied for reuse.
    fn free_if_dead(&mut self, id: u64) {
        let Some(segment) = self.segments.get_mut(&id) else {
            return;
        };
        if segment.live > 0 {
            return;
        }
        if self.current == Some(id) {
            if segment.len > 0 && segment.file.set_len(0).is_ok() {
                self.on_disk -= segment.len;
                segment.len = 0;
            }
        } else {
            self.on_disk -= segment.len;
            self.segments.remove(&id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_read_back_in_order_and_free_their_disk() {
        let dir = tempfile::tempdir().unwrap();
        // Segments of 1 MiB (the smallest), within 4 MiB.
        let mut spill = Spill::new(dir.path(), 4 << 20).unwrap();
        let (mut a, mut b) = (Spilled::default(), Spilled::default());
        let chunk = |c: u8| vec![c; 300 << 10];
        for i in 0..3 {
            spill.write(&mut a, &chunk(b'a' + i)).unwrap();
            spill.write(&mut b, &chunk(b'x')).unwrap();
        }
        assert_eq!(a.bytes(), 900 << 10);
        assert_eq!(spill.on_disk(), 1800 << 10);
        assert!(spill.segments.len() >= 2, "segments roll at 1 MiB");
        assert!(!spill.has_room(3 << 20));

        let mut out = b"head:".to_vec();
        spill.read(a, &mut out).unwrap();
        let mut expected = b"head:".to_vec();
        for i in 0..3 {
            expected.extend(chunk(b'a' + i));
        }
        assert_eq!(out, expected, "a's bytes, in the order written");
        // b still pins the segments a shared with it.
        assert!(spill.on_disk() > 0);
        spill.discard(b);
        assert_eq!(spill.on_disk(), 0, "every byte freed");
        assert!(spill.segments.len() <= 1, "only the current segment kept");
        assert!(spill.has_room(4 << 20));
    }

    #[test]
    fn nothing_is_left_in_the_folder() {
        let dir = tempfile::tempdir().unwrap();
        let mut spill = Spill::new(dir.path(), 8 << 20).unwrap();
        let mut a = Spilled::default();
        spill.write(&mut a, b"line\n").unwrap();
        // Unlinked files: the folder lists nothing, even while they hold
        // bytes, so a killed agent leaves nothing behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        let mut out = Vec::new();
        spill.read(a, &mut out).unwrap();
        assert_eq!(out, b"line\n");
    }
}
