use std::time::Duration;

use async_trait::async_trait;
use bson::Document;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use snafu::Snafu;

use super::settings::{
    FullDocument, FullDocumentBeforeChange, OnHistoryLost, OnOversizedEvent, Scope, Settings,
    SnapshotMode, StartAt, SYSTEM_DATABASES,
};
use crate::{
    config::ComponentConfig,
    config::OptionError,
    sources::{Source, SourceConfig, SourceContext},
};

/// Extra aggregation stages: a JSON / Extended JSON string, or a TOML array
/// of tables.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum PipelineConfig {
    Json(String),
    Stages(#[schemars(with = "Vec<serde_json::Map<String, serde_json::Value>>")] Vec<toml::Table>),
}

/// Options of the `mongodb_change_stream` source.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MongoDbChangeStreamConfig {
    /// Connection string, e.g. `mongodb://user:pass@host:27017/?replicaSet=rs0`.
    /// Change streams need a replica set or sharded cluster. The password is
    /// masked in every log line and error.
    pub uri: String,
    /// Watch one database. Unset (and no `collection`): the whole deployment.
    #[serde(default)]
    pub database: Option<String>,
    /// Watch one collection of `database`.
    #[serde(default)]
    pub collection: Option<String>,
    /// Watch several collections of `database` through one database-level
    /// stream, filtered on the server.
    #[serde(default)]
    pub collections: Option<Vec<String>>,
    /// Extra stages appended after the source's own, e.g. `$match` to filter
    /// or `$unset`/`$project` to redact fields. Never remove `_id` (the
    /// resume token), `operationType`, `ns` or `clusterTime`.
    #[serde(default)]
    pub pipeline: Option<PipelineConfig>,
    /// What an update event carries in `fullDocument`.
    #[serde(default)]
    pub full_document: FullDocument,
    /// What an event carries in `fullDocumentBeforeChange` (pre-images
    /// need `changeStreamPreAndPostImages` on the collection).
    #[serde(default)]
    pub full_document_before_change: FullDocumentBeforeChange,
    /// Also emit DDL events such as `create` and `createIndexes` (6.0+).
    #[serde(default)]
    pub show_expanded_events: bool,
    /// Most events per server batch. The server fills a batch up to 16 MB
    /// otherwise, and the driver holds a reply and the batch decoded from
    /// it at once: 5,000 keeps that near 13 MB with 1 KB documents (peak
    /// RSS into Azurite 96 → 68 MB at the same rate, `e2e/bench.sh`). With
    /// larger events the source uses fewer: after 256 events it reopens
    /// the stream once with a batch size that keeps a reply near 4 MiB
    /// (about 256 for 16 KB events).
    #[serde(default = "default_batch_size")]
    pub batch_size: Option<u32>,
    /// Bytes of change events read ahead of the pipeline, so the server
    /// prepares the next batch while the agent forwards the last one
    /// (1 MiB to 1 GiB). The default holds one 5,000-event batch of 1 KB
    /// documents; raise it with larger documents if memory allows. In an
    /// incremental snapshot, each chunk reader reads up to this many bytes
    /// of records ahead of the one being sent.
    #[serde(default = "default_read_ahead_bytes")]
    pub read_ahead_bytes: usize,
    /// How long the server waits for new events before answering an empty
    /// batch; also how often an idle stream advances its checkpoint and
    /// watermark.
    #[serde(default = "default_max_await_time_ms")]
    pub max_await_time_ms: u64,
    /// `checkpoint_or_now` (default), `now`, an RFC 3339 time
    /// (`startAtOperationTime`), or a resume token's `_data` hex. Used only
    /// when there is no checkpoint, except `now`, which ignores it.
    #[serde(default = "default_start_at")]
    pub start_at: String,
    /// What to do when the checkpoint is no longer in the oplog (the agent
    /// was stopped longer than the oplog window).
    #[serde(default)]
    pub on_history_lost: OnHistoryLost,
    /// Copy the documents that already exist before streaming. Snapshot records have
    /// `operationType: "snapshot"`, the document in `fullDocument`, and
    /// pass through `pipeline` like change events (a `$match` on
    /// `operationType` must admit `"snapshot"`).
    #[serde(default)]
    pub snapshot: SnapshotMode,
    /// Documents per snapshot query; progress is saved per acknowledged
    /// document, so a restart continues where the copy stopped. With
    /// `snapshot = "incremental"`, the documents one chunk reader copies
    /// per round (10000 suits large collections: fewer rounds, each with
    /// one checkpoint write).
    #[serde(default = "default_snapshot_chunk_size")]
    pub snapshot_chunk_size: u32,
    /// With `snapshot = "incremental"`: chunk readers (cursors) per round,
    /// 1 to 16. Their records are sent in `_id` order while later chunks
    /// are read ahead, each reader holding at most `read_ahead_bytes`, so
    /// memory stays within `snapshot_parallelism` × `read_ahead_bytes`
    /// whatever the chunk size.
    #[serde(default = "default_snapshot_parallelism")]
    pub snapshot_parallelism: u32,
    /// A collection the source reads snapshot requests from while it runs
    /// (Debezium's signal collection): insert
    /// `{type: "snapshot", collections: ["orders"]}`, or run
    /// `mongo-adls snapshot orders`, and the named collections are copied
    /// (again) beside the stream, as `snapshot = "incremental"` copies.
    /// A collection of `database` (with a deployment scope, `db.coll`);
    /// the stream watches it too (with `collection`, the stream becomes a
    /// database stream filtered to both, which needs the `changeStream`
    /// privilege on the database), its events are not written to the
    /// sinks, and it is never copied itself. Needs `snapshot =
    /// "incremental"` or `"off"` (then only requested collections are
    /// copied). A `pipeline` must let its inserts through.
    pub signal_collection: Option<String>,
    /// What to do with an event over MongoDB's 16 MB limit (a large
    /// document with its pre-image, say).
    #[serde(default)]
    pub on_oversized_event: OnOversizedEvent,
    /// Most consecutive `reset_to_now` / `resnapshot` recoveries before giving up.
    #[serde(default = "default_max_recoveries")]
    pub max_consecutive_recoveries: u32,
    /// Coalesce checkpoint writes to at most one per interval (and one at
    /// shutdown).
    #[serde(default = "default_checkpoint_interval_ms")]
    pub checkpoint_interval_ms: u64,
    /// On an idle stream (no event delivered since the last write), write
    /// the checkpoint at most this often, in seconds (default 60): the
    /// server's idle position moves every second, and writing each one
    /// costs a storage request apiece with `[state] store = "azure_blob"`.
    /// A restart then resumes from up to this far back, which replays
    /// nothing (no event came in between). The first write of a run is
    /// not held back.
    #[serde(default = "default_checkpoint_idle_interval_secs")]
    pub checkpoint_idle_interval_secs: f64,
}

fn default_batch_size() -> Option<u32> {
    Some(5_000)
}
fn default_read_ahead_bytes() -> usize {
    8 << 20
}
fn default_max_await_time_ms() -> u64 {
    1000
}
fn default_start_at() -> String {
    "checkpoint_or_now".into()
}
fn default_max_recoveries() -> u32 {
    3
}
fn default_checkpoint_interval_ms() -> u64 {
    1000
}
fn default_checkpoint_idle_interval_secs() -> f64 {
    60.0
}
fn default_snapshot_chunk_size() -> u32 {
    1000
}
fn default_snapshot_parallelism() -> u32 {
    2
}

#[derive(Debug, Snafu)]
pub enum OptionsError {
    #[snafu(display("`collection` needs `database`"))]
    CollectionWithoutDatabase,
    #[snafu(display("`collections` needs `database`"))]
    CollectionsWithoutDatabase,
    #[snafu(display("set `collection` or `collections`, not both"))]
    CollectionAndCollections,
    #[snafu(display("`pipeline` is not valid: {reason}"))]
    Pipeline { reason: String },
    #[snafu(display(
        "`start_at` = {value:?} is not `checkpoint_or_now`, `now`, an RFC 3339 time or a resume token hex string"
    ))]
    StartAt { value: String },
}

impl MongoDbChangeStreamConfig {
    pub fn scope(&self) -> Result<Scope, OptionsError> {
        match (&self.database, &self.collection, &self.collections) {
            (None, Some(_), _) => Err(OptionsError::CollectionWithoutDatabase),
            (None, _, Some(_)) => Err(OptionsError::CollectionsWithoutDatabase),
            (Some(_), Some(_), Some(_)) => Err(OptionsError::CollectionAndCollections),
            (None, None, None) => Ok(Scope::Deployment),
            (Some(db), None, None) => Ok(Scope::Database(db.clone())),
            (Some(db), Some(c), None) => Ok(Scope::Collection(db.clone(), c.clone())),
            (Some(db), None, Some(cs)) => Ok(Scope::Collections(db.clone(), cs.clone())),
        }
    }

    /// The user's stages as BSON documents.
    pub fn user_pipeline(&self) -> Result<Vec<Document>, OptionsError> {
        let json =
            match &self.pipeline {
                None => return Ok(Vec::new()),
                Some(PipelineConfig::Json(s)) => serde_json::from_str::<serde_json::Value>(s)
                    .map_err(|e| OptionsError::Pipeline {
                        reason: format!("not JSON: {e}"),
                    })?,
                Some(PipelineConfig::Stages(tables)) => {
                    serde_json::to_value(tables).map_err(|e| OptionsError::Pipeline {
                        reason: e.to_string(),
                    })?
                }
            };
        let serde_json::Value::Array(stages) = json else {
            return Err(OptionsError::Pipeline {
                reason: "expected an array of stages".into(),
            });
        };
        stages
            .into_iter()
            .map(|stage| match bson::Bson::try_from(stage) {
                Ok(bson::Bson::Document(d)) => Ok(d),
                Ok(other) => Err(OptionsError::Pipeline {
                    reason: format!("each stage must be a document, got {other}"),
                }),
                Err(e) => Err(OptionsError::Pipeline {
                    reason: e.to_string(),
                }),
            })
            .collect()
    }

    /// `signal_collection` as `(db, coll)`.
    pub fn signal(&self) -> Result<Option<(String, String)>, String> {
        let Some(name) = self.signal_collection.as_deref() else {
            return Ok(None);
        };
        if !matches!(self.snapshot, SnapshotMode::Incremental | SnapshotMode::Off) {
            return Err(format!(
                "needs `snapshot = \"incremental\"` (or \"off\"): requested collections are copied beside the stream, which `snapshot = {:?}` does not do",
                self.snapshot
            ));
        }
        let (db, coll) = match &self.database {
            Some(db) => (db.as_str(), name),
            None => name.split_once('.').ok_or_else(|| {
                format!("{name:?}: the source watches the whole deployment, so name the collection as `db.coll`")
            })?,
        };
        if db.is_empty() || coll.is_empty() || coll.starts_with("system.") {
            return Err(format!("{name:?} is not a collection name"));
        }
        if SYSTEM_DATABASES.contains(&db) {
            return Err(format!(
                "{name:?} is in database {db}, whose changes no change stream reports"
            ));
        }
        let watched = match (&self.collection, &self.collections) {
            (Some(c), _) => c == coll,
            (None, Some(cs)) => cs.iter().any(|c| c == coll),
            (None, None) => false,
        };
        if watched {
            return Err(format!(
                "{name:?} is a watched collection; use a collection of its own"
            ));
        }
        Ok(Some((db.to_string(), coll.to_string())))
    }

    pub fn start(&self) -> Result<StartAt, OptionsError> {
        let v = self.start_at.trim();
        match v {
            "checkpoint_or_now" => Ok(StartAt::CheckpointOrNow),
            "now" => Ok(StartAt::Now),
            _ => {
                if let Ok(t) = chrono::DateTime::parse_from_rfc3339(v) {
                    let secs = u32::try_from(t.timestamp()).map_err(|_| OptionsError::StartAt {
                        value: v.to_string(),
                    })?;
                    Ok(StartAt::Time(bson::Timestamp {
                        time: secs,
                        increment: 0,
                    }))
                } else if !v.is_empty()
                    && v.len().is_multiple_of(2)
                    && v.bytes().all(|b| b.is_ascii_hexdigit())
                {
                    Ok(StartAt::Token(v.to_ascii_uppercase()))
                } else {
                    Err(OptionsError::StartAt {
                        value: v.to_string(),
                    })
                }
            }
        }
    }
}

impl MongoDbChangeStreamConfig {
    /// The options the source runs with, checked and parsed once.
    pub fn settings(&self) -> Result<Settings, Vec<OptionError>> {
        self.check()?;
        // `check` parsed each of these already.
        let checked = "checked by `check`";
        Ok(Settings {
            uri: self.uri.clone(),
            scope: self.scope().expect(checked),
            pipeline: self.user_pipeline().expect(checked),
            start_at: self.start().expect(checked),
            full_document: self.full_document,
            full_document_before_change: self.full_document_before_change,
            show_expanded_events: self.show_expanded_events,
            batch_size: self.batch_size,
            read_ahead_bytes: self.read_ahead_bytes,
            max_await_time: Duration::from_millis(self.max_await_time_ms),
            on_history_lost: self.on_history_lost,
            snapshot: self.snapshot,
            snapshot_chunk_size: self.snapshot_chunk_size,
            snapshot_parallelism: self.snapshot_parallelism,
            signal: self.signal().expect(checked),
            on_oversized_event: self.on_oversized_event,
            max_consecutive_recoveries: self.max_consecutive_recoveries,
            checkpoint_interval: Duration::from_millis(self.checkpoint_interval_ms),
            checkpoint_idle_interval: Duration::from_secs_f64(self.checkpoint_idle_interval_secs),
        })
    }
}

/// The stages MongoDB accepts in a change stream's pipeline (any other
/// fails when the stream opens).
const CHANGE_STREAM_STAGES: [&str; 9] = [
    "$addFields",
    "$match",
    "$project",
    "$replaceRoot",
    "$replaceWith",
    "$redact",
    "$set",
    "$unset",
    "$changeStreamSplitLargeEvent",
];

impl MongoDbChangeStreamConfig {
    /// Every check that needs no network, each error naming its option.
    pub fn check(&self) -> Result<(), Vec<OptionError>> {
        let mut errors = Vec::new();
        if let Err(e) = mongodb::options::ConnectionString::parse(&self.uri) {
            errors.push(OptionError::new(
                "uri",
                format!(
                    "is not a MongoDB connection string: {}",
                    super::errors::describe(&e)
                ),
            ));
        } else if let Some(e) = self.tls_ca_file_missing() {
            errors.push(OptionError::new("uri", e));
        }
        if let Err(e) = self.scope() {
            let key = match e {
                OptionsError::CollectionWithoutDatabase => "collection",
                _ => "collections",
            };
            errors.push(OptionError::new(key, e.to_string()));
        }
        match self.user_pipeline() {
            Ok(stages) => errors.extend(refused_stages(&stages)),
            Err(e) => errors.push(OptionError::new("pipeline", e.to_string())),
        }
        if let Err(e) = self.start() {
            errors.push(OptionError::new("start_at", e.to_string()));
        }
        let idle = self.checkpoint_idle_interval_secs;
        if !(idle.is_finite() && idle >= 0.0) {
            errors.push(OptionError::new(
                "checkpoint_idle_interval_secs",
                "must be a number, 0 or more",
            ));
        }
        if self.on_history_lost == OnHistoryLost::Resnapshot && self.snapshot == SnapshotMode::Off {
            errors.push(OptionError::new(
                "on_history_lost",
                "\"resnapshot\" needs `snapshot = \"initial\"`",
            ));
        }
        if self.on_history_lost == OnHistoryLost::Resnapshot
            && self.snapshot == SnapshotMode::Incremental
        {
            errors.push(OptionError::new(
                "on_history_lost",
                "\"resnapshot\" needs `snapshot = \"initial\"`; an incremental snapshot is not restarted on lost history (use \"fail\" or \"reset_to_now\")",
            ));
        }
        if let Err(e) = self.signal() {
            errors.push(OptionError::new("signal_collection", e));
        }
        if !(1..=16).contains(&self.snapshot_parallelism) {
            errors.push(OptionError::new(
                "snapshot_parallelism",
                "must be between 1 and 16",
            ));
        }
        for (key, value) in [
            ("snapshot_chunk_size", u64::from(self.snapshot_chunk_size)),
            ("batch_size", self.batch_size.map_or(1, u64::from)),
            ("max_await_time_ms", self.max_await_time_ms),
        ] {
            if value == 0 {
                errors.push(OptionError::new(key, "must be at least 1"));
            }
        }
        if !(1 << 20..=1 << 30).contains(&self.read_ahead_bytes) {
            errors.push(OptionError::new(
                "read_ahead_bytes",
                "must be between 1048576 (1 MiB) and 1073741824 (1 GiB)",
            ));
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }

    /// `tlsCAFile` names a file that does not exist.
    fn tls_ca_file_missing(&self) -> Option<String> {
        let cs = mongodb::options::ConnectionString::parse(&self.uri).ok()?;
        let Some(mongodb::options::Tls::Enabled(tls)) = cs.tls else {
            return None;
        };
        let path = tls.ca_file_path?;
        (!path.exists()).then(|| format!("`tlsCAFile` {} does not exist", path.display()))
    }
}

/// Stages a change stream refuses, named.
fn refused_stages(stages: &[Document]) -> Vec<OptionError> {
    stages
        .iter()
        .filter_map(|stage| {
            let name = stage.keys().next().map(String::as_str).unwrap_or("");
            (stage.len() != 1 || !CHANGE_STREAM_STAGES.contains(&name)).then(|| {
                OptionError::new(
                    "pipeline",
                    format!(
                        "stage `{name}` is not allowed in a change stream; allowed: {}",
                        CHANGE_STREAM_STAGES.join(", ")
                    ),
                )
            })
        })
        .collect()
}

#[async_trait]
#[typetag::serde(name = "mongodb_change_stream")]
impl SourceConfig for MongoDbChangeStreamConfig {
    async fn build(&self, cx: SourceContext) -> crate::Result<Source> {
        let settings = self
            .settings()
            .map_err(|errors| crate::config::join_option_errors(&errors))?;
        let source = super::stream::ChangeStreamSource::new(settings, cx).await?;
        Ok(Box::pin(source.run()))
    }
}

#[async_trait]
impl ComponentConfig for MongoDbChangeStreamConfig {
    fn validate(&self) -> Result<(), Vec<OptionError>> {
        self.check()
    }

    async fn dry_healthcheck(&self) -> Result<Option<String>, String> {
        let settings = self
            .settings()
            .map_err(|errors| crate::config::join_option_errors(&errors))?;
        super::healthcheck::healthcheck(&settings).await
    }

    fn needs_data_dir(&self) -> bool {
        true
    }

    async fn describe_state(
        &self,
        state: &crate::state_store::StateHandle,
    ) -> Option<Result<Vec<String>, String>> {
        Some(super::checkpoint::describe(&state.doc("checkpoint.json")).await)
    }

    fn component_type(&self) -> &'static str {
        "mongodb_change_stream"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: &str) -> MongoDbChangeStreamConfig {
        toml::from_str(&format!("uri = \"mongodb://h\"\n{extra}")).unwrap()
    }

    #[test]
    fn scopes() {
        assert_eq!(config("").scope().unwrap(), Scope::Deployment);
        assert_eq!(
            config("database = \"a\"").scope().unwrap(),
            Scope::Database("a".into())
        );
        assert!(config("collection = \"c\"").scope().is_err());
        assert_eq!(
            config("database = \"a\"\ncollections = [\"x\", \"y\"]")
                .scope()
                .unwrap(),
            Scope::Collections("a".into(), vec!["x".into(), "y".into()])
        );
    }

    #[test]
    fn pipeline_forms() {
        let json = config(
            r#"pipeline = '[{"$match": {"operationType": "insert"}}, {"$unset": "fullDocument.ssn"}]'"#,
        );
        assert_eq!(json.user_pipeline().unwrap().len(), 2);
        let tables = config("[[pipeline]]\n\"$match\" = { operationType = \"insert\" }\n");
        assert_eq!(
            tables.user_pipeline().unwrap(),
            vec![bson::doc! { "$match": { "operationType": "insert" } }]
        );
        assert!(config("pipeline = '{\"a\":1}'").user_pipeline().is_err());
        assert!(config("pipeline = '[1]'").user_pipeline().is_err());
    }

    #[test]
    fn start_positions() {
        assert_eq!(config("").start().unwrap(), StartAt::CheckpointOrNow);
        assert_eq!(
            config("start_at = \"2024-08-10T19:00:00Z\"")
                .start()
                .unwrap(),
            StartAt::Time(bson::Timestamp {
                time: 1_723_316_400,
                increment: 0
            })
        );
        assert_eq!(
            config("start_at = \"8266b7\"").start().unwrap(),
            StartAt::Token("8266B7".into())
        );
        assert!(config("start_at = \"yesterday\"").start().is_err());
    }
}
