//! Routing and batching: each event goes to its file (namespace and time
//! window) and is encoded into that file's pending batch; a batch is taken
//! out when it is due. Batch buffers are pooled. Past the memory budget,
//! the largest batches move to the local spill (`spill.rs`) and are read
//! back when taken.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
    time::Instant,
};

use chrono::{DateTime, Utc};

use super::{
    encode::EventFields,
    partition::Windows,
    spill::{Spill, Spilled},
    state::{FileKey, StagedBlock},
};
use crate::{
    codecs::json::ExtendedJsonMode,
    event::{EventFinalizers, LogEvent, Position},
};

/// The first allocation of a batch buffer that does not come from the pool.
const INITIAL_BATCH_CAPACITY: usize = 64 * 1024;

/// Makes room for one more line of an event of `bson_bytes`, growing the
/// buffer by doubling, as `Vec` does, but never far past `max_bytes` plus
/// that line: left to `Vec`, a 4.5 MB batch ends in an 8 MB buffer, and the
/// batches pending, in flight and pooled add up to tens of MB of slack
/// (heaptrack, 16 KB documents into Azurite).
fn reserve_for_line(data: &mut Vec<u8>, bson_bytes: usize, max_bytes: usize) {
    // Generous for a JSON line of that BSON; a longer one still fits, by
    // `Vec`'s own growth.
    let line = bson_bytes * 2 + 1024;
    let needed = data.len() + line;
    if needed <= data.capacity() {
        return;
    }
    if data.capacity() >= max_bytes + line {
        // Past the batch size already (the sink checks fullness between
        // chunks of events): steps of an eighth of a batch, not a copy per
        // line, and not `Vec`'s doubling to twice the batch size.
        data.reserve_exact(line.max(max_bytes / 8));
    } else {
        let target = (data.capacity() * 2).min(max_bytes + line).max(needed);
        data.reserve_exact(target - data.len());
    }
}

/// Events waiting to be written to one file: the bytes in `spilled` (on
/// local disk), then those in `data`.
pub(super) struct PendingBatch {
    pub data: Vec<u8>,
    pub spilled: Spilled,
    pub events: usize,
    pub finalizers: EventFinalizers,
    pub first: Option<Position>,
    pub high_water: Option<Position>,
    /// The source of the positions.
    pub source: Option<Arc<str>>,
    pub since: Instant,
}

impl PendingBatch {
    /// Encoded bytes of the batch, spilled or in memory.
    pub fn len(&self) -> usize {
        self.spilled.bytes() + self.data.len()
    }
}

/// A Put Block that finished before an earlier one of its file: kept
/// until those are recorded.
pub(super) struct Arrived {
    pub staged: StagedBlock,
    pub finalizers: EventFinalizers,
}

/// What the sink is doing with one window's file right now (not persisted).
/// Changed only through its methods, which keep the counts consistent.
#[derive(Default)]
pub(super) struct FileActivity {
    batch: Option<PendingBatch>,
    /// A seal or an `every_batch` commit is in flight: nothing else starts
    /// for this file until it ends.
    busy: bool,
    /// Put Blocks taken and not yet recorded: in flight, held after a
    /// failure, or arrived ahead of an earlier one. Several may be in
    /// flight at once; they are recorded, and their events acknowledged,
    /// in the order they were taken (`next_seq`, `next_record`).
    staging: usize,
    next_seq: u64,
    next_record: u64,
    arrived: BTreeMap<u64, Arrived>,
    /// Seal as soon as the window is idle (size roll).
    seal_wanted: bool,
    /// A write failed: hold back every later event of this window so a
    /// replay after restart cannot be skipped past the lost ones.
    poisoned: bool,
    /// After a failed seal, when to try again.
    seal_retry_at: Option<Instant>,
}

impl FileActivity {
    /// Whether another Put Block may start: nothing exclusive in flight
    /// and fewer than `limit` staging.
    pub fn can_stage(&self, limit: usize) -> bool {
        !self.busy && self.staging < limit
    }

    /// Nothing in flight or waiting to be recorded.
    pub fn idle(&self) -> bool {
        !self.busy && self.staging == 0
    }

    pub fn batch(&self) -> Option<&PendingBatch> {
        self.batch.as_ref()
    }

    /// A seal or an `every_batch` commit is in flight.
    pub fn busy(&self) -> bool {
        self.busy
    }

    /// Put Blocks taken and not yet recorded.
    pub fn staging(&self) -> usize {
        self.staging
    }

    /// A size roll asked for a seal.
    pub fn seal_wanted(&self) -> bool {
        self.seal_wanted
    }

    /// Whether a failed seal's pause is over at `now` (or none failed).
    pub fn seal_may_retry(&self, now: Instant) -> bool {
        self.seal_retry_at.is_none_or(|t| now >= t)
    }

    /// A seal or an `every_batch` commit starts.
    pub fn exclusive_started(&mut self) {
        self.busy = true;
    }

    /// An `every_batch` commit ended.
    pub fn exclusive_ended(&mut self) {
        self.busy = false;
    }

    /// A size roll (`roll`) asks for a seal once the file is idle.
    pub fn want_seal(&mut self, roll: bool) {
        self.seal_wanted |= roll;
    }

    /// The file was sealed.
    pub fn sealed(&mut self) {
        self.busy = false;
        self.seal_wanted = false;
        self.seal_retry_at = None;
    }

    /// The seal failed: tried again from `retry_at`.
    pub fn seal_failed(&mut self, retry_at: Instant) {
        self.busy = false;
        self.seal_retry_at = Some(retry_at);
    }

    /// Put Block `seq` arrived: kept until the earlier ones are recorded,
    /// or, once the file is poisoned, dropped (no longer staging) with its
    /// events' finalizers handed back.
    pub fn arrive(&mut self, seq: u64, arrived: Arrived) -> Result<(), EventFinalizers> {
        if self.poisoned {
            self.staging -= 1;
            return Err(arrived.finalizers);
        }
        self.arrived.insert(seq, arrived);
        Ok(())
    }

    /// A write of the file (a Put Block when `stage`, else a seal or
    /// commit) failed for good: later events of the window are held back,
    /// and the Put Blocks that arrived after it are handed back to fail.
    pub fn poison(&mut self, stage: bool) -> Vec<Arrived> {
        if stage {
            self.staging -= 1;
        } else {
            self.busy = false;
        }
        self.poisoned = true;
        let arrived = std::mem::take(&mut self.arrived);
        self.staging -= arrived.len();
        arrived.into_values().collect()
    }

    /// The next recordable arrival, in the order taken.
    pub fn next_arrived(&mut self) -> Option<Arrived> {
        let arrived = self.arrived.remove(&self.next_record)?;
        self.next_record += 1;
        self.staging -= 1;
        Some(arrived)
    }
}

/// Batch limits, from `batch.*`.
#[derive(Clone, Copy, Debug)]
pub(super) struct BatchLimits {
    pub max_bytes: usize,
    pub max_events: usize,
    /// Bytes in all pending batches together.
    pub max_total_bytes: usize,
}

impl BatchLimits {
    pub fn reached(&self, batch: &PendingBatch) -> bool {
        batch.len() >= self.max_bytes || batch.events >= self.max_events
    }
}

/// A batch whose spilled bytes could not be read back.
pub(super) struct SpillLost {
    pub batch: PendingBatch,
    pub error: std::io::Error,
}

/// Why an event was not added to a batch.
pub(super) enum NotAdded {
    /// Its window had a failed write; the event is held back.
    HeldBack(EventFinalizers),
    /// It could not be encoded.
    Malformed(EventFinalizers, String),
}

pub(super) struct Batcher {
    files: HashMap<FileKey, FileActivity>,
    limits: BatchLimits,
    /// Put Blocks of one file in flight at once.
    stage_limit: usize,
    json_mode: ExtendedJsonMode,
    /// Batch buffers back from finished writes, reused: a fresh 4.5 MB
    /// allocation per batch costs a page fault per 4 KB as it fills.
    spare: Vec<Vec<u8>>,
    /// The last window computed: `[start, end)` in UTC seconds.
    last_window: (i64, i64),
    /// The file key of the last event.
    last_key: Option<FileKey>,
    /// Encoded bytes in all pending batches, in memory.
    pending_bytes: usize,
    /// Where batches go past the budget; `None` when off or after a disk
    /// error.
    spill: Option<Spill>,
    /// Pending batches that reached a limit (each stops intake until taken).
    full_batches: usize,
}

impl Batcher {
    pub fn new(limits: BatchLimits, stage_limit: usize, json_mode: ExtendedJsonMode) -> Self {
        Self {
            files: HashMap::new(),
            limits,
            stage_limit: stage_limit.max(1),
            json_mode,
            spare: Vec::new(),
            last_window: (0, 0),
            last_key: None,
            pending_bytes: 0,
            full_batches: 0,
            spill: None,
        }
    }

    /// Moves batches to `spill` past the memory budget, instead of
    /// writing them early as small blocks.
    pub fn with_spill(mut self, spill: Option<Spill>) -> Self {
        self.spill = spill;
        self
    }

    pub fn limits(&self) -> BatchLimits {
        self.limits
    }

    pub fn stage_limit(&self) -> usize {
        self.stage_limit
    }

    /// The file key of an event. Consecutive events almost always share
    /// one, so the last window and key are reused instead of converting
    /// through the time zone and allocating names for every event.
    pub fn route(
        &mut self,
        windows: &Windows,
        (db, coll): (&str, &str),
        time: DateTime<Utc>,
    ) -> FileKey {
        let window_start = self.window_of(windows, time);
        match &self.last_key {
            Some(k) if k.window_start == window_start && &*k.db == db && &*k.coll == coll => {
                k.clone()
            }
            _ => {
                let key = FileKey {
                    db: Arc::from(db),
                    coll: Arc::from(coll),
                    window_start,
                };
                self.last_key = Some(key.clone());
                key
            }
        }
    }

    fn window_of(&mut self, windows: &Windows, time: DateTime<Utc>) -> i64 {
        let t = time.timestamp();
        let (start, end) = self.last_window;
        if (start..end).contains(&t) {
            return start;
        }
        let start = windows.start_of(time);
        let end = windows.end_of(&start).timestamp();
        let start = start.with_timezone(&Utc).timestamp();
        self.last_window = (start, end);
        start
    }

    /// Encodes `log` into its file's pending batch.
    pub fn add(
        &mut self,
        key: FileKey,
        log: &LogEvent,
        fields: &EventFields<'_>,
        time: DateTime<Utc>,
        position: Option<Position>,
        finalizers: EventFinalizers,
    ) -> Result<(), NotAdded> {
        let activity = self.files.entry(key).or_default();
        if activity.poisoned {
            return Err(NotAdded::HeldBack(finalizers));
        }
        // A hot file reuses a full-size buffer from the pool; other files
        // start small and grow, so a thousand quiet collections do not
        // each hold a batch-sized buffer (glibc grows a buffer past the
        // mmap threshold with mremap, without copying).
        let spare = &mut self.spare;
        let batch = activity.batch.get_or_insert_with(|| PendingBatch {
            data: spare
                .pop()
                .unwrap_or_else(|| Vec::with_capacity(INITIAL_BATCH_CAPACITY)),
            spilled: Spilled::default(),
            events: 0,
            finalizers: EventFinalizers::default(),
            first: None,
            high_water: None,
            source: None,
            since: Instant::now(),
        });
        let was_full = self.limits.reached(batch);
        reserve_for_line(
            &mut batch.data,
            log.payload.as_bytes().len(),
            self.limits.max_bytes,
        );
        let before = batch.data.len();
        if let Err(e) = fields.encode(self.json_mode, time, &mut batch.data) {
            return Err(NotAdded::Malformed(finalizers, e.to_string()));
        }
        self.pending_bytes += batch.data.len() - before;
        batch.events += 1;
        if !was_full && self.limits.reached(batch) {
            self.full_batches += 1;
        }
        batch.finalizers.merge_deduplicated(finalizers);
        if position.is_some() {
            if batch.first.is_none() {
                batch.first.clone_from(&position);
                batch.source = Some(Arc::clone(&log.metadata.source_id));
            }
            batch.high_water = position;
        }
        Ok(())
    }

    /// A full batch waiting for its file's earlier writes, or pending
    /// batches over `batch.max_total_bytes`, stop intake until batches are
    /// taken.
    pub fn is_full(&self) -> bool {
        self.full_batches > 0 || self.pending_bytes >= self.limits.max_total_bytes
    }

    /// Batches that reached their size (`batch.max_bytes` or
    /// `max_events`) and are not yet taken.
    pub fn full_batches(&self) -> usize {
        self.full_batches
    }

    #[cfg(test)]
    pub fn pending_bytes(&self) -> usize {
        self.pending_bytes
    }

    /// Bytes pending past `batch.max_total_bytes` (0 within it).
    pub fn over_budget(&self) -> usize {
        self.pending_bytes.saturating_sub(
            self.limits
                .max_total_bytes
                .saturating_sub(self.limits.max_bytes),
        )
    }

    /// Removes a pending batch, keeping the totals.
    fn detach(&mut self, batch: &PendingBatch) {
        self.detach_without(batch, batch.data.len());
    }

    /// Drops the pending batch of `key` (its window failed).
    pub fn drop_batch(&mut self, key: &FileKey) -> Option<PendingBatch> {
        let mut batch = self.files.get_mut(key)?.batch.take()?;
        self.detach(&batch);
        if let Some(spill) = &mut self.spill {
            spill.discard(std::mem::take(&mut batch.spilled));
        }
        Some(batch)
    }

    /// Past the memory budget, moves the largest batches to the spill
    /// until half the budget is left in memory (so spilling comes in
    /// rounds, not after every event). Batches due anyway stay. A disk
    /// error turns the spill off (returned, to be logged): batches are
    /// then written early, as without a spill. The bytes moved.
    pub fn spill_over_budget(&mut self) -> std::io::Result<usize> {
        let Some(spill) = self.spill.as_ref().filter(|_| self.over_budget() > 0) else {
            return Ok(0);
        };
        let keep = self.limits.max_total_bytes / 2;
        let mut largest: Vec<(usize, &FileKey)> = self
            .files
            .iter()
            .filter(|(_, f)| !f.poisoned)
            .filter_map(|(k, f)| Some((f.batch.as_ref()?, k)))
            .filter(|(b, _)| !self.limits.reached(b) && !b.data.is_empty())
            .map(|(b, k)| (b.data.len(), k))
            .collect();
        largest.sort_unstable_by_key(|(len, _)| std::cmp::Reverse(*len));
        let mut moving = 0;
        let mut chosen = Vec::new();
        for (len, key) in largest {
            if self.pending_bytes - moving <= keep || !spill.has_room(moving + len) {
                break;
            }
            moving += len;
            chosen.push(key.clone());
        }
        let spill = self.spill.as_mut().expect("checked above");
        let mut moved = 0;
        for key in chosen {
            let batch = self
                .files
                .get_mut(&key)
                .and_then(|f| f.batch.as_mut())
                .expect("chosen from pending batches");
            if let Err(e) = spill.write(&mut batch.spilled, &batch.data) {
                // Batches stay in memory from now on; those spilled are
                // still read back when taken.
                spill.stop_spilling();
                return Err(e);
            }
            moved += batch.data.len();
            self.pending_bytes -= batch.data.len();
            // The buffer goes too: a thousand spilled batches each keeping
            // its capacity would hold the memory the spill is for.
            batch.data = Vec::new();
        }
        Ok(moved)
    }

    /// The spill's folder and bytes on disk, if it is on.
    pub fn spill_usage(&self) -> Option<(&std::path::Path, u64)> {
        self.spill.as_ref().map(|s| (s.dir(), s.on_disk()))
    }

    pub fn is_empty(&self) -> bool {
        self.files.values().all(|f| f.batch.is_none())
    }

    /// The pending batch of `key` and its sequence number in the file, if
    /// another Put Block of the file may start; its spilled bytes are read
    /// back in front of those in memory. If they cannot be read, the batch
    /// is dropped and the window held back, as after a failed write: the
    /// batch is returned as the error, for its events to fail.
    pub fn take(&mut self, key: &FileKey) -> Option<Result<(PendingBatch, u64), SpillLost>> {
        let activity = self.files.get_mut(key)?;
        if !activity.can_stage(self.stage_limit) {
            return None;
        }
        let mut batch = activity.batch.take()?;
        if batch.spilled.bytes() > 0 {
            let spilled = std::mem::take(&mut batch.spilled);
            let spill = self.spill.as_mut().expect("spilled batches keep the spill");
            let mut data = Vec::with_capacity(spilled.bytes() + batch.data.len());
            let read = spill.read(spilled, &mut data);
            data.extend_from_slice(&batch.data);
            let memory = std::mem::replace(&mut batch.data, data);
            if let Err(error) = read {
                spill.stop_spilling();
                activity.poisoned = true;
                self.detach_without(&batch, memory.len());
                return Some(Err(SpillLost { batch, error }));
            }
            self.detach_without(&batch, memory.len());
            self.recycle(memory);
        } else {
            self.detach(&batch);
        }
        let activity = self.files.get_mut(key).expect("taken above");
        activity.staging += 1;
        activity.next_seq += 1;
        Some(Ok((batch, activity.next_seq - 1)))
    }

    /// `detach` of a batch whose bytes in memory were `memory`.
    fn detach_without(&mut self, batch: &PendingBatch, memory: usize) {
        self.pending_bytes -= memory;
        if self.limits.reached(batch) {
            self.full_batches -= 1;
        }
    }

    pub fn get(&self, key: &FileKey) -> Option<&FileActivity> {
        self.files.get(key)
    }

    pub fn activity(&mut self, key: FileKey) -> &mut FileActivity {
        self.files.entry(key).or_default()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&FileKey, &FileActivity)> {
        self.files.iter()
    }

    /// Forgets a window after its file was sealed, unless it still has
    /// events or holds them back.
    pub fn forget_if_idle(&mut self, key: &FileKey) {
        if self
            .files
            .get(key)
            .is_some_and(|f| f.batch.is_none() && !f.poisoned && f.idle())
        {
            self.files.remove(key);
        }
    }

    /// Keeps a batch buffer for the next batch (two at most: one being
    /// filled while one is written is the steady state).
    pub fn recycle(&mut self, mut data: Vec<u8>) {
        if self.spare.len() < 2 && data.capacity() >= self.limits.max_bytes.min(16 << 20) {
            data.clear();
            self.spare.push(data);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use chrono::DateTime;

    use super::{reserve_for_line, BatchLimits, Batcher};
    use crate::{
        codecs::json::ExtendedJsonMode,
        event::{BatchNotifier, BatchStatus, EventMetadata, EventStatus, LogEvent},
        sinks::adls_partitioned_jsonl::{encode::EventFields, partition::Windows},
    };

    /// A batch keeps one finalizer per source batch (the events of one
    /// read of the source share a notifier), not one per event: 300 events
    /// from 3 reads hold 3. Each read is acknowledged only when the block's
    /// finalizers are, with their status.
    #[tokio::test]
    async fn a_batch_holds_one_finalizer_per_source_read() {
        let mut batcher = Batcher::new(
            BatchLimits {
                max_bytes: 1 << 20,
                max_events: 10_000,
                max_total_bytes: 64 << 20,
            },
            1,
            ExtendedJsonMode::Relaxed,
        );
        let windows = Windows {
            window_secs: 60,
            tz: chrono_tz::Tz::UTC,
        };
        let t = DateTime::from_timestamp(30, 0).unwrap();
        let key = batcher.route(&windows, ("d", "c"), t);
        let mut reads = Vec::new();
        for _ in 0..3 {
            let (notifier, receiver) = BatchNotifier::new_with_receiver();
            for _ in 0..100 {
                let payload =
                    bson::rawdoc! { "operationType": "insert", "ns": { "db": "d", "coll": "c" } };
                let metadata = EventMetadata {
                    source_id: Arc::from("src"),
                    position: None,
                    event_time: None,
                };
                let mut log = LogEvent::new(payload, metadata).with_batch_notifier(&notifier);
                let finalizers = log.take_finalizers();
                let fields = EventFields::read(&log.payload).unwrap();
                assert!(batcher
                    .add(key.clone(), &log, &fields, t, None, finalizers)
                    .is_ok());
            }
            reads.push(receiver);
        }
        let Some(Ok((batch, _))) = batcher.take(&key) else {
            panic!("the batch is taken");
        };
        assert_eq!(batch.events, 300);
        assert_eq!(batch.finalizers.len(), 3);
        for read in &mut reads {
            assert!(futures::poll!(read).is_pending(), "held until written");
        }
        batch.finalizers.finalize(EventStatus::Delivered);
        for read in reads {
            assert_eq!(read.await, BatchStatus::Delivered);
        }
    }

    #[test]
    fn a_batch_buffer_ends_near_the_batch_size_not_at_the_next_power_of_two() {
        let (max, bson) = (4_500_000, 16_000);
        let mut data = Vec::with_capacity(64 * 1024);
        let mut grew = 0;
        while data.len() < max {
            let cap = data.capacity();
            reserve_for_line(&mut data, bson, max);
            grew += usize::from(data.capacity() != cap);
            data.resize(data.len() + bson + 400, b'x');
        }
        let line = bson * 2 + 1024;
        assert!(data.capacity() <= max + line, "{}", data.capacity());
        // Still amortised: doubling from 64 KB, not a step per line.
        assert!(grew <= 8, "grew {grew} times");
        // Lines past the batch size (a chunk of events that overshoots)
        // grow it by an eighth of a batch at a time: neither one line
        // each nor doubling to twice the batch.
        let mut grew = 0;
        for _ in 0..256 {
            let cap = data.capacity();
            reserve_for_line(&mut data, bson, max);
            grew += usize::from(data.capacity() != cap);
            data.resize(data.len() + bson + 400, b'x');
        }
        let overshoot = 256 * (bson + 400);
        assert!(
            grew <= overshoot / (max / 8) + 1,
            "grew {grew} times past the batch size"
        );
        assert!(
            data.capacity() <= data.len() + max / 8 + line,
            "{}",
            data.capacity()
        );
    }
}
