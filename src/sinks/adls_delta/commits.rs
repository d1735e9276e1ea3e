//! From written files to table versions, and what each request's outcome
//! changes: a due group is sealed (its files closed), its intent recorded
//! in the fenced state, its commit made (`log/commit.rs`), then recorded
//! done and its events acknowledged. A start first completes the intents a
//! previous run (or the agent this one took over from) left. Upkeep is
//! started from here after commits.

use std::{collections::HashSet, time::Instant};

use chrono::Utc;

use super::{
    log::{
        commit::{self, Operation, Outcome as CommitOutcome, Prepared, TableDefinition},
        Format, LogError, Metadata, Protocol, TableLog,
    },
    schema::{check_compatible, delta_schema, PartitionBy},
    sink::{DeltaSink, Inflight, Outcome},
    state::{Change, Intent},
    table::{Group, Table},
    upkeep::{self, Job},
};
use crate::event::EventStatus;

/// New tables' protocol and metadata, and the check of existing ones.
struct Definition(PartitionBy);

impl TableDefinition for Definition {
    fn create(&self) -> (Protocol, Metadata) {
        let metadata = Metadata {
            id: uuid::Uuid::new_v4().to_string(),
            name: None,
            description: Some("MongoDB change events, written by mongo-adls".into()),
            format: Format {
                provider: "parquet".into(),
                options: Default::default(),
            },
            schema_string: delta_schema(self.0).to_string(),
            partition_columns: self
                .0
                .columns()
                .iter()
                .map(|(n, _)| n.to_string())
                .collect(),
            configuration: Default::default(),
            created_time: Some(Utc::now().timestamp_millis()),
        };
        (Protocol::ours(), metadata)
    }

    fn check(&self, metadata: &Metadata) -> Result<(), String> {
        check_compatible(&metadata.schema_string, &metadata.partition_columns, self.0)
    }
}

impl DeltaSink {
    fn log(&self, root: &str) -> TableLog {
        TableLog::new(self.requests.clone(), root)
    }

    fn app_id(&self, root: &str) -> String {
        format!("mongo-adls:{}:{root}", self.app)
    }

    /// Completes every intent the state holds, before any event arrives.
    pub(super) async fn recover(&mut self) -> Result<(), ()> {
        let pending: Vec<(String, Intent)> = self
            .state
            .tables()
            .filter_map(|t| Some((t.root.clone(), t.intent.clone()?)))
            .collect();
        for (root, intent) in pending {
            let log = self.log(&root);
            let app_id = self.app_id(&root);
            let prepared = prepared(&app_id, &intent, None);
            let definition = Definition(self.settings.partition_by);
            let started = Instant::now();
            let result =
                commit::commit(&log, &prepared, &definition, Utc::now().timestamp_millis()).await;
            let table = self
                .tables
                .entry(root.clone())
                .or_insert_with(|| Table::new(root.clone()));
            table.committing = true;
            self.committed(&root, intent.seq, intent.operation, started, result, true)
                .await?;
        }
        Ok(())
    }

    /// Seals a table's current group: its open files are closed; its
    /// commit starts once every file is written (`start_commits`).
    pub(super) fn seal(&mut self, root: &str, inflight: &mut Inflight) {
        let table = self.tables.get_mut(root).expect("known");
        let Some(mut group) = table.current.take() else {
            return;
        };
        let open: Vec<_> = std::mem::take(&mut group.open).into_values().collect();
        table.sealed = Some(group);
        for id in open {
            self.close_file(id, inflight);
        }
    }

    /// Starts every commit that can start: a sealed group whose files are
    /// all written, else a compaction whose files are. Their intents, and
    /// the commits done since the last write, are recorded in one append
    /// (fenced) before any commit is sent.
    pub(super) async fn start_commits(&mut self, inflight: &mut Inflight) -> Result<(), ()> {
        let mut intents = Vec::new();
        for table in self.tables.values_mut() {
            if table.committing || table.failed.is_some() {
                continue;
            }
            let seq = self.state.next_seq(&table.root);
            let intent = match (&table.sealed, &table.compaction) {
                (Some(group), _) if group.all_written() => Intent {
                    seq,
                    operation: Operation::Append,
                    adds: group.written.clone(),
                    removes: Vec::new(),
                    rows: group.rows,
                    high_water: group.high_water.clone(),
                    source: group.source.clone(),
                    planned_at: None,
                },
                (None, Some(_)) => {
                    let compaction = table.compaction.take().expect("checked");
                    Intent {
                        seq,
                        operation: Operation::Compact,
                        adds: compaction.adds,
                        removes: compaction.removes,
                        rows: 0,
                        high_water: None,
                        source: None,
                        planned_at: Some(compaction.planned_at),
                    }
                }
                _ => continue,
            };
            table.committing = true;
            intents.push((table.root.clone(), intent));
        }
        if intents.is_empty() {
            return Ok(());
        }
        let mut changes = std::mem::take(&mut self.unrecorded);
        changes.extend(intents.iter().map(|(table, intent)| Change::Intent {
            table: table.clone(),
            intent: intent.clone(),
        }));
        let recorded = self.state.record(Change::Batch(changes)).await;
        self.state_result(recorded)?;
        for (root, intent) in intents {
            self.send_commit(root, intent, inflight);
        }
        Ok(())
    }

    /// Writes the commits done since the last state write.
    pub(super) async fn record_unrecorded(&mut self) -> Result<(), ()> {
        if self.unrecorded.is_empty() {
            return Ok(());
        }
        let changes = std::mem::take(&mut self.unrecorded);
        let recorded = self.state.record(Change::Batch(changes)).await;
        self.state_result(recorded)
    }

    /// Sends the commit of a recorded intent.
    fn send_commit(&mut self, root: String, intent: Intent, inflight: &mut Inflight) {
        let table = self.tables.get(&root).expect("known");
        let after = match intent.operation {
            Operation::Append => table.latest,
            Operation::Compact => intent.planned_at,
        };
        let (log, app_id) = (self.log(&root), self.app_id(&root));
        let definition = Definition(self.settings.partition_by);
        inflight.push(Box::pin(async move {
            let started = Instant::now();
            let prepared = prepared(&app_id, &intent, after);
            crate::testing::seam("before_commit").await;
            let result =
                commit::commit(&log, &prepared, &definition, Utc::now().timestamp_millis()).await;
            crate::testing::seam("after_commit").await;
            Outcome::Committed {
                table: root,
                seq: intent.seq,
                operation: intent.operation,
                started,
                result,
            }
        }));
    }

    pub(super) async fn on_outcome(
        &mut self,
        outcome: Outcome,
        inflight: &mut Inflight,
    ) -> Result<(), ()> {
        match outcome {
            Outcome::Staged {
                file,
                bytes,
                result,
            } => {
                self.bytes_in_flight -= bytes;
                let Some(writing) = self.files.get_mut(&file) else {
                    return Ok(());
                };
                writing.in_flight -= 1;
                let done = writing.closed && writing.in_flight == 0;
                let table = writing.table.clone();
                match result {
                    Err(e) => self.fail_table(&table, &e.to_string(), status_of(&e)),
                    Ok(()) if done => self.write_file(file, inflight),
                    Ok(()) => {}
                }
            }
            Outcome::Written {
                file,
                bytes,
                result,
            } => {
                self.bytes_in_flight -= bytes;
                let Some(writing) = self.files.remove(&file) else {
                    return Ok(());
                };
                if let Err(e) = result {
                    self.fail_table(&writing.table, &e.to_string(), status_of(&e));
                    return Ok(());
                }
                let add = writing.file.add_action(Utc::now().timestamp_millis());
                self.metrics.file_written(
                    &writing.file.object,
                    writing.file.num_records,
                    add.size as u64,
                );
                let table = self.tables.get_mut(&writing.table).expect("known");
                let group = [table.sealed.as_mut(), table.current.as_mut()]
                    .into_iter()
                    .flatten()
                    .find(|g| g.files.contains(&file));
                if let Some(group) = group {
                    group.written.push(add);
                }
            }
            Outcome::Committed {
                table,
                seq,
                operation,
                started,
                result,
            } => {
                self.committed(&table, seq, operation, started, result, false)
                    .await?;
            }
            Outcome::Upkept { table, result } => self.upkept(&table, result),
        }
        Ok(())
    }

    /// A commit's result: recorded, and its group's events acknowledged.
    async fn committed(
        &mut self,
        root: &str,
        seq: u64,
        operation: Operation,
        started: Instant,
        result: Result<CommitOutcome, LogError>,
        recovering: bool,
    ) -> Result<(), ()> {
        let table = self.tables.get_mut(root).expect("known");
        table.committing = false;
        let group = match operation {
            Operation::Append => table.sealed.take(),
            Operation::Compact => None,
        };
        let change = match &result {
            Ok(CommitOutcome::Committed { version, .. }) => Change::Committed {
                table: root.to_string(),
                seq,
                version: *version,
            },
            Ok(CommitOutcome::Conflict { version, path }) => {
                tracing::info!(table = root, version, file = %path, "Compaction given up: another writer removed one of its files first.");
                Change::Abandoned {
                    table: root.to_string(),
                    seq,
                }
            }
            Err(e) => {
                let status = if e.retriable() {
                    EventStatus::Errored
                } else {
                    EventStatus::Rejected
                };
                if let Some(group) = group {
                    group.finalizers.finalize(status);
                }
                self.fail_table(root, &format!("commit {seq} failed: {e}"), status);
                return Ok(());
            }
        };
        if recovering {
            let recorded = self.state.record(change).await;
            self.state_result(recorded)?;
        } else {
            self.unrecorded.push(change);
        }
        let Ok(CommitOutcome::Committed { version, found }) = result else {
            return Ok(());
        };
        self.tables.get_mut(root).expect("known").latest = Some(version);
        let rows = group.as_ref().map_or(0, |g| g.rows);
        self.metrics
            .committed(root, version, seq, rows, started.elapsed(), found);
        self.after_commit(root, seq, version, operation, group);
        self.upkeep_due(root, version);
        Ok(())
    }

    /// What follows a committed version: its events acknowledged (an
    /// append) or its removals counted (a compaction), and a new table's
    /// vacuum clock started.
    fn after_commit(
        &mut self,
        root: &str,
        seq: u64,
        version: i64,
        operation: Operation,
        group: Option<Group>,
    ) {
        match group {
            Some(Group {
                finalizers,
                rows,
                written,
                ..
            }) => {
                // Bytes sent are the Parquet bytes committed, as the JSONL
                // sink counts the bytes it writes.
                let bytes: i64 = written.iter().map(|a| a.size).sum();
                self.sent.emit(rows as usize, bytes as usize);
                finalizers.finalize(EventStatus::Delivered);
            }
            None if operation == Operation::Compact => {
                let removed = self
                    .state
                    .table(root)
                    .and_then(|t| t.intent.as_ref())
                    .filter(|i| i.seq == seq)
                    .map_or(0, |i| i.removes.len());
                self.metrics.compacted(root, version, removed)
            }
            None => {}
        }
        if self.state.table(root).is_some_and(|t| t.vacuumed_at == 0) {
            // The vacuum clock of a table starts at its first commit: a
            // new table has nothing to vacuum for a while.
            self.unrecorded.push(Change::Vacuuming {
                table: root.to_string(),
                at: Utc::now().timestamp(),
            });
        }
    }

    /// A table's writes failed for good (or were given up as the agent
    /// stops): its events are not acknowledged until a restart, which
    /// replays them, and `/health` says so.
    pub(super) fn fail_table(&mut self, root: &str, reason: &str, status: EventStatus) {
        let Some(table) = self.tables.get_mut(root) else {
            return;
        };
        for group in [table.current.take(), table.sealed.take()]
            .into_iter()
            .flatten()
        {
            for id in &group.files {
                if let Some(w) = self.files.remove(id) {
                    self.buffered -= w.buffered;
                }
            }
            group.finalizers.finalize(status);
        }
        table.compaction = None;
        // Errored while the agent runs (not given up as it stops) holds the
        // source's checkpoint until a restart too: say so as loudly.
        let stopping = self.requests.stopping.is_cancelled();
        if table.failed.is_none() && (status == EventStatus::Rejected || !stopping) {
            self.error(
                "write_failed",
                &format!("Table {root}: {reason}. Its events are not acknowledged until a restart, which replays them."),
            );
            self.tags
                .health
                .condition(&format!("table {root}"), reason, true);
        }
        self.tables.get_mut(root).expect("known").failed = Some(reason.to_string());
    }

    /// Queues upkeep for a table after its commit of `version`.
    fn upkeep_due(&mut self, root: &str, version: i64) {
        let checkpoint =
            version > 0 && (version as u64).is_multiple_of(self.settings.checkpoint_interval);
        let vacuum = self.vacuum_due(root);
        if (checkpoint || vacuum) && !self.upkeep_queue.iter().any(|t| t == root) {
            self.upkeep_queue.push_back(root.to_string());
            let table = self.tables.get_mut(root).expect("known");
            table.upkeep_at = checkpoint.then_some(version).or(table.upkeep_at);
        }
    }

    fn vacuum_due(&self, root: &str) -> bool {
        let Some(super::upkeep::Vacuum { interval, .. }) = self.settings.vacuum else {
            return false;
        };
        let last = self.state.table(root).map_or(0, |t| t.vacuumed_at);
        let started = self
            .unrecorded
            .iter()
            .any(|c| matches!(c, Change::Vacuuming { table, .. } if table == root));
        last > 0 && !started && Utc::now().timestamp() - last >= interval.as_secs() as i64
    }

    /// Starts the next queued upkeep, one table at a time.
    pub(super) async fn start_upkeep(&mut self, inflight: &mut Inflight) -> Result<(), ()> {
        if self.upkeep_busy {
            return Ok(());
        }
        let Some(root) = self.upkeep_queue.pop_front() else {
            return Ok(());
        };
        let vacuum = self.vacuum_due(&root);
        if vacuum {
            // The fenced write that lets this agent delete anything.
            let mut changes = std::mem::take(&mut self.unrecorded);
            changes.push(Change::Vacuuming {
                table: root.clone(),
                at: Utc::now().timestamp(),
            });
            let recorded = self.state.record(Change::Batch(changes)).await;
            self.state_result(recorded)?;
        }
        let table = self.tables.get_mut(&root).expect("known");
        let checkpoint = table.upkeep_at.take();
        table.upkeep = true;
        self.upkeep_busy = true;
        // What a commit of this sink may still reference: the recorded
        // intent's files, and those of the groups being written.
        let mut keep: HashSet<String> = self
            .state
            .table(&root)
            .and_then(|t| t.intent.as_ref())
            .map(|i| i.adds.iter().map(|a| a.path.clone()).collect())
            .unwrap_or_default();
        let table = self.tables.get(&root).expect("known");
        if let Some(compaction) = &table.compaction {
            keep.extend(compaction.adds.iter().map(|a| a.path.clone()));
        }
        for group in [table.current.as_ref(), table.sealed.as_ref()]
            .into_iter()
            .flatten()
        {
            keep.extend(group.written.iter().map(|a| a.path.clone()));
            keep.extend(
                group
                    .files
                    .iter()
                    .filter_map(|id| self.files.get(id))
                    .map(|w| w.file.path.clone()),
            );
        }
        let job = Job {
            checkpoint,
            compact_min_files: checkpoint.and(self.settings.compaction_min_files),
            vacuum: self.settings.vacuum.filter(|_| vacuum),
            keep,
            target_bytes: self.settings.target_bytes,
            row_group_bytes: self.settings.row_group_bytes,
            compression: self.settings.compression,
        };
        let log = self.log(&root);
        inflight.push(Box::pin(async move {
            let result = upkeep::run(&log, job).await;
            Outcome::Upkept {
                table: root,
                result,
            }
        }));
        Ok(())
    }

    fn upkept(&mut self, root: &str, result: Result<upkeep::Done, LogError>) {
        self.upkeep_busy = false;
        let table = self.tables.get_mut(root).expect("known");
        table.upkeep = false;
        match result {
            Ok(done) => {
                if let Some(compaction) = done.compaction {
                    if table.failed.is_none() {
                        table.compaction = Some(compaction);
                    }
                }
                self.metrics.vacuumed(done.vacuumed, done.log_files_deleted);
            }
            // Upkeep waits for the next checkpoint; the table is readable
            // meanwhile.
            Err(e) => tracing::warn!(table = root, "Table upkeep failed: {e}"),
        }
    }
}

/// How a failed write leaves its events: given up as the agent stops
/// (`Errored`), or refused for good (`Rejected`).
fn status_of(e: &crate::sinks::util::storage::StorageError) -> EventStatus {
    if e.retriable {
        EventStatus::Errored
    } else {
        EventStatus::Rejected
    }
}

/// The commit of an intent.
fn prepared<'a>(app_id: &'a str, intent: &'a Intent, after: Option<i64>) -> Prepared<'a> {
    Prepared {
        app_id,
        seq: intent.seq,
        operation: intent.operation,
        adds: &intent.adds,
        removes: &intent.removes,
        rows: intent.rows,
        after,
    }
}
