//! Snapshot requests through the signal collection (`signal_collection`),
//! as Debezium's signal table: a document
//! `{type: "snapshot", collections: ["orders", "shop.users"]}` inserted
//! there asks the running source to copy those collections (again) beside
//! the stream. The request arrives as a change event, in the stream's
//! order, so the copy is placed after it like any incremental round.
//!
//! Here: the document format, reading a request from a change event, and
//! writing one (`mongo-adls snapshot`).

use bson::{doc, RawDocument};

use super::{settings::Settings, watch::client_options, MongoDbChangeStreamConfig};

/// `type` of a snapshot request.
const SNAPSHOT: &str = "snapshot";

/// What a signal collection event asks for.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Signal {
    /// Copy these collections (`db.coll`, in scope); `refused` names the
    /// ones that could not be, with why.
    Snapshot {
        id: String,
        collections: Vec<String>,
        refused: Vec<String>,
    },
    /// Not a request (an update or delete of a signal, say): nothing to do.
    Other { what: String },
    /// A request that cannot be read: logged and counted, nothing copied.
    Invalid { id: String, why: String },
}

/// The signal in `raw` when it is an event of the signal collection.
pub(super) fn read(settings: &Settings, raw: &RawDocument) -> Option<Signal> {
    let ns = raw.get_document("ns").ok()?;
    let (db, coll) = (ns.get_str("db").ok()?, ns.get_str("coll").ok()?);
    if !settings.is_signal(db, coll) {
        return None;
    }
    let op = raw.get_str("operationType").unwrap_or("(none)");
    if op != "insert" {
        return Some(Signal::Other {
            what: format!("a {op} event"),
        });
    }
    let Some(full) = raw.get_document("fullDocument").ok() else {
        return Some(Signal::Invalid {
            id: "(unknown)".into(),
            why: "the insert event has no fullDocument (a `pipeline` stage removed it?)".into(),
        });
    };
    let id = full
        .get("_id")
        .ok()
        .flatten()
        .and_then(|v| bson::Bson::try_from(v).ok())
        .map_or_else(|| "(none)".into(), |v| v.into_relaxed_extjson().to_string());
    let invalid = |why: String| Signal::Invalid {
        id: id.clone(),
        why,
    };
    match full.get_str("type") {
        Ok(SNAPSHOT) => {}
        Ok(other) => {
            return Some(invalid(format!(
                "unknown type {other:?} (the one type is \"{SNAPSHOT}\")"
            )))
        }
        Err(_) => return Some(invalid("no string field `type`".into())),
    }
    let Ok(names) = full.get_array("collections") else {
        return Some(invalid(
            "no array `collections` naming the collections to copy".into(),
        ));
    };
    let (mut collections, mut refused) = (Vec::new(), Vec::new());
    for name in names {
        match name.ok().and_then(|n| n.as_str()) {
            Some(name) => match resolve(settings, db, name) {
                Ok(ns) if !collections.contains(&ns) => collections.push(ns),
                Ok(_) => {}
                Err(why) => refused.push(why),
            },
            None => refused.push("a `collections` entry is not a string".into()),
        }
    }
    Some(Signal::Snapshot {
        id,
        collections,
        refused,
    })
}

/// `name` as `db.coll` when the source watches it: `db.coll` itself, or
/// a collection of `db` (the signal's database).
fn resolve(settings: &Settings, db: &str, name: &str) -> Result<String, String> {
    if name.contains('.') && settings.watches(name) {
        return Ok(name.to_string());
    }
    if settings.in_scope(db, name) {
        return Ok(format!("{db}.{name}"));
    }
    Err(format!("{name:?} is not a collection this source watches"))
}

/// Writes a snapshot request for `collections` into `config`'s signal
/// collection (`mongo-adls snapshot`). Returns the request's `_id` and the
/// collections as `db.coll`.
pub async fn request_snapshot(
    config: &MongoDbChangeStreamConfig,
    collections: &[String],
) -> Result<(String, Vec<String>), String> {
    let settings = config
        .settings()
        .map_err(|errors| crate::config::join_option_errors(&errors))?;
    let Some((db, coll)) = settings.signal.clone() else {
        return Err("it has no `signal_collection`: set one (and `snapshot = \"incremental\"` or \"off\") and restart the agent".into());
    };
    let resolved = collections
        .iter()
        .map(|name| resolve(&settings, &db, name))
        .collect::<Result<Vec<_>, _>>()?;
    let options = client_options(&settings.uri, "mongo-adls snapshot").await?;
    let client = mongodb::Client::with_options(options).map_err(|e| super::errors::describe(&e))?;
    // A name that does not exist would be "copied" at once, empty: most
    // likely a typo, so it is refused here.
    for ns in &resolved {
        let (d, c) = ns.split_once('.').unwrap_or((ns, ""));
        let found = client
            .database(d)
            .list_collection_names()
            .filter(doc! { "name": c })
            .await
            .map_err(|e| super::errors::describe(&e))?;
        if found.is_empty() {
            return Err(format!("there is no collection {ns}"));
        }
    }
    let signals = client.database(&db).collection::<bson::Document>(&coll);
    let inserted = signals
        .insert_one(doc! {
            "type": SNAPSHOT,
            "collections": &resolved,
            "requestedAt": bson::DateTime::now(),
            "requestedBy": "mongo-adls snapshot",
        })
        .write_concern(mongodb::options::WriteConcern::majority())
        .await
        .map_err(|e| {
            format!(
                "could not write to {db}.{coll}: {}",
                super::errors::describe(&e)
            )
        })?;
    client.shutdown().await;
    Ok((
        inserted.inserted_id.into_relaxed_extjson().to_string(),
        resolved,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(extra: &str) -> Settings {
        toml::from_str::<MongoDbChangeStreamConfig>(&format!(
            "uri = \"mongodb://h\"\nsnapshot = \"incremental\"\n{extra}"
        ))
        .unwrap()
        .settings()
        .unwrap()
    }

    fn event(op: &str, coll: &str, full: bson::Document) -> bson::RawDocumentBuf {
        bson::RawDocumentBuf::from_document(&doc! {
            "_id": { "_data": "82" },
            "operationType": op,
            "ns": { "db": "shop", "coll": coll },
            "fullDocument": full,
        })
        .unwrap()
    }

    #[test]
    fn a_request_names_watched_collections_only() {
        let s = settings(
            "database = \"shop\"\ncollections = [\"a\", \"b\"]\nsignal_collection = \"signals\"",
        );
        let database = settings("database = \"shop\"\nsignal_collection = \"signals\"");
        assert_eq!(
            resolve(&database, "shop", "shop.orders"),
            Ok("shop.orders".into())
        );
        assert_eq!(
            resolve(&database, "shop", "orders"),
            Ok("shop.orders".into())
        );
        assert_eq!(
            resolve(&database, "shop", "other.orders"),
            Ok("shop.other.orders".into())
        );
        let deployment = settings("signal_collection = \"ops.signals\"");
        assert_eq!(
            resolve(&deployment, "ops", "shop.orders"),
            Ok("shop.orders".into())
        );
        assert_eq!(
            resolve(&deployment, "ops", "orders"),
            Ok("ops.orders".into())
        );

        let raw = event(
            "insert",
            "signals",
            doc! { "_id": 7, "type": "snapshot", "collections": ["a", "shop.b", "a", "c", 3] },
        );
        let Some(Signal::Snapshot {
            id,
            collections,
            refused,
        }) = read(&s, &raw)
        else {
            panic!("a snapshot request")
        };
        assert_eq!(id, "7");
        assert_eq!(
            collections,
            vec!["shop.a".to_string(), "shop.b".to_string()]
        );
        assert_eq!(refused.len(), 2, "{refused:?}");
        assert_eq!(read(&s, &event("insert", "a", doc! {})), None);
        assert!(matches!(
            read(&s, &event("delete", "signals", doc! {})),
            Some(Signal::Other { .. })
        ));
        assert!(matches!(
            read(&s, &event("insert", "signals", doc! { "type": "stop" })),
            Some(Signal::Invalid { .. })
        ));
    }

    #[test]
    fn the_signal_collection_is_checked_against_the_scope() {
        let c = |extra: &str| {
            toml::from_str::<MongoDbChangeStreamConfig>(&format!("uri = \"mongodb://h\"\n{extra}"))
                .unwrap()
                .signal()
        };
        assert!(c("signal_collection = \"s\"\nsnapshot = \"initial\"").is_err());
        assert!(
            c("signal_collection = \"s\"").is_err(),
            "deployment: db.coll"
        );
        assert!(
            c("signal_collection = \"admin.s\"").is_err(),
            "not seen by streams"
        );
        assert_eq!(
            c("signal_collection = \"d.s\"").unwrap(),
            Some(("d".into(), "s".into()))
        );
        assert!(c("database = \"d\"\ncollection = \"s\"\nsignal_collection = \"s\"").is_err());
        let s = settings("database = \"d\"\ncollection = \"a\"\nsignal_collection = \"s\"");
        assert_eq!(
            s.stream_scope(),
            super::super::settings::Scope::Collections("d".into(), vec!["a".into(), "s".into()])
        );
        assert!(!s.in_scope("d", "s"));
    }
}
