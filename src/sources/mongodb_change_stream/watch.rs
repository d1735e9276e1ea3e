//! Opening the change stream, as the source and `validate` both open it,
//! and reading resume tokens.

use chrono::{DateTime, Utc};

use bson::{doc, Document, RawDocumentBuf};
use mongodb::{
    change_stream::{event::ResumeToken, ChangeStream},
    options::{ClientOptions, FullDocumentBeforeChangeType, FullDocumentType},
    Client,
};

use super::{
    oversized::oversized_stages,
    settings::{FullDocument, FullDocumentBeforeChange, OnOversizedEvent, Scope, Settings},
};

/// Where to open the stream.
#[derive(Clone, Debug)]
pub(super) enum OpenAt {
    Now,
    Time(bson::Timestamp),
    After(String),
    /// Copy the collections first (`snapshot`), then stream after the
    /// snapshot's start token.
    Snapshot,
}

/// What the stream watches, for logs.
pub(super) fn describe_scope(scope: &Scope) -> String {
    match scope {
        Scope::Deployment => "the whole deployment".into(),
        Scope::Database(db) => format!("database {db}"),
        Scope::Collection(db, coll) => format!("collection {db}.{coll}"),
        Scope::Collections(db, colls) => format!("collections {} of {db}", colls.join(", ")),
    }
}

/// The driver's options from `uri`: `app_name` unless the URI names one,
/// and a server selection timeout that reports an unreachable deployment
/// within seconds (unless the URI sets one).
pub(super) async fn client_options(uri: &str, app_name: &str) -> Result<ClientOptions, String> {
    let mut options = ClientOptions::parse(uri).await.map_err(|e| {
        format!(
            "`uri` is not a valid MongoDB connection string: {}",
            super::errors::describe(&e)
        )
    })?;
    options.app_name.get_or_insert_with(|| app_name.to_string());
    options
        .server_selection_timeout
        .get_or_insert(super::errors::SERVER_SELECTION_TIMEOUT);
    Ok(options)
}

/// Opens the change stream of `scope` as configured (pipeline, pre- and
/// post-images, expanded events, batch size) at `at`. The source and
/// `validate`'s healthcheck both open it here, so the check tries exactly
/// what the source will run.
pub(super) async fn watch(
    client: &Client,
    settings: &Settings,
    at: &OpenAt,
    batch_size: Option<u32>,
) -> mongodb::error::Result<ChangeStream<RawDocumentBuf>> {
    let scope = &settings.stream_scope();
    let user_pipeline = &settings.pipeline;
    let mut pipeline = Vec::with_capacity(user_pipeline.len() + 1);
    if let Scope::Collections(_, colls) = scope {
        pipeline.push(doc! { "$match": { "ns.coll": { "$in": colls.clone() } } });
    }
    if let Some((db, coll)) = &settings.signal {
        // Only requests (inserts) of the signal collection: an update or
        // delete of one (a clean-up) needs no pre- or post-image lookup,
        // which `required` would fail on.
        pipeline.push(doc! { "$match": { "$nor": [{
            "ns.db": db, "ns.coll": coll, "operationType": { "$ne": "insert" }
        }] } });
    }
    pipeline.extend(user_pipeline.iter().cloned());
    if settings.on_oversized_event == OnOversizedEvent::Skip {
        pipeline.extend(oversized_stages());
    }

    macro_rules! configure {
        ($watch:expr) => {{
            let mut w = $watch
                .pipeline(pipeline)
                .max_await_time(settings.max_await_time)
                .show_expanded_events(settings.show_expanded_events);
            w = match settings.full_document {
                FullDocument::Default => w,
                FullDocument::UpdateLookup => w.full_document(FullDocumentType::UpdateLookup),
                FullDocument::WhenAvailable => w.full_document(FullDocumentType::WhenAvailable),
                FullDocument::Required => w.full_document(FullDocumentType::Required),
            };
            w = match settings.full_document_before_change {
                FullDocumentBeforeChange::Off => w,
                FullDocumentBeforeChange::WhenAvailable => {
                    w.full_document_before_change(FullDocumentBeforeChangeType::WhenAvailable)
                }
                FullDocumentBeforeChange::Required => {
                    w.full_document_before_change(FullDocumentBeforeChangeType::Required)
                }
            };
            if let Some(n) = batch_size {
                w = w.batch_size(n);
            }
            w = match at {
                OpenAt::Now | OpenAt::Snapshot => w,
                OpenAt::Time(t) => w.start_at_operation_time(*t),
                OpenAt::After(token) => w.start_after(to_resume_token(token)),
            };
            w.await.map(|cs| cs.with_type::<RawDocumentBuf>())
        }};
    }

    match scope {
        Scope::Deployment => configure!(client.watch()),
        Scope::Database(db) | Scope::Collections(db, _) => {
            let db = client.database(db);
            configure!(db.watch())
        }
        Scope::Collection(db, coll) => {
            let coll = client.database(db).collection::<Document>(coll);
            configure!(coll.watch())
        }
    }
}

pub(super) fn to_resume_token(hex: &str) -> ResumeToken {
    bson::from_document(doc! { "_data": hex })
        .expect("a {_data: string} document is a resume token")
}

pub(super) fn token_hex(token: &ResumeToken) -> Option<String> {
    bson::to_document(token)
        .ok()
        .and_then(|d| d.get_str("_data").ok().map(str::to_string))
}

/// `_id._data` of a raw change event.
pub fn event_token(raw: &RawDocumentBuf) -> Option<String> {
    resume_token(raw.get_document("_id").ok()?)
}

/// `_data` of an event's `_id`.
pub(super) fn resume_token(id: &bson::RawDocument) -> Option<String> {
    id.get_str("_data").ok().map(str::to_string)
}

/// What the source reads of a change event's top-level fields, found in
/// one pass: they come first in an event, and a lookup from the start for
/// each cost about 5 % of the agent's CPU at 1 KB (`perf`).
pub(super) struct Stamp {
    /// `_id._data`, the resume token.
    pub token: Option<String>,
    pub cluster_time: Option<bson::Timestamp>,
    pub wall_time: Option<bson::DateTime>,
}

impl Stamp {
    pub fn of(raw: &bson::RawDocument) -> Self {
        let mut stamp = Self {
            token: None,
            cluster_time: None,
            wall_time: None,
        };
        for element in raw {
            let Ok((key, value)) = element else { break };
            match key {
                "_id" => stamp.token = value.as_document().and_then(resume_token),
                "clusterTime" => stamp.cluster_time = value.as_timestamp(),
                "wallTime" => stamp.wall_time = value.as_datetime(),
                _ => {}
            }
            if stamp.token.is_some() && stamp.cluster_time.is_some() {
                break;
            }
        }
        stamp
    }

    /// The event's time: clusterTime, else wallTime.
    pub fn event_time(&self) -> Option<DateTime<Utc>> {
        match self.cluster_time {
            Some(t) => DateTime::from_timestamp(i64::from(t.time), 0),
            None => self.wall_time.map(|d| d.to_chrono()),
        }
    }
}
