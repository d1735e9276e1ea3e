//! `on_oversized_event = "skip"`: events over MongoDB's 16 MB limit are
//! slimmed on the server, marked, and skipped here (counted and logged),
//! instead of failing the whole stream.

use bson::{doc, Bson, Document, RawDocumentBuf};

use super::settings::OnOversizedEvent;
use crate::internal_events::{mongodb::OversizedEventSkipped, ComponentTags};

/// Marks an event whose documents exceed the limit (`on_oversized_event =
/// "skip"`); its large fields are removed on the server so it can be read.
const OVERSIZED_FIELD: &str = "_mongo_adls_oversized_bytes";

/// Stages appended after the user's: measure `fullDocument`,
/// `fullDocumentBeforeChange` and `updateDescription`, and past 16 MB minus
/// room for the rest of the event, drop them and mark the event, which the
/// source then skips. Without this the server fails the whole stream with
/// BSONObjectTooLarge (6.0 has no `$changeStreamSplitLargeEvent`).
pub(super) fn oversized_stages() -> Vec<Document> {
    const LIMIT: i64 = 16 * 1024 * 1024 - 512 * 1024;
    let size = |field: &str| doc! { "$bsonSize": { "$ifNull": [format!("${field}"), {}] } };
    let total = doc! { "$add": [size("fullDocument"), size("fullDocumentBeforeChange"), size("updateDescription")] };
    let drop_if_big = |field: &str| {
        doc! { "$cond": [{ "$gt": [format!("${OVERSIZED_FIELD}"), LIMIT] }, "$$REMOVE", format!("${field}")] }
    };
    vec![
        doc! { "$set": { OVERSIZED_FIELD: { "$toLong": total } } },
        doc! { "$set": {
            "fullDocument": drop_if_big("fullDocument"),
            "fullDocumentBeforeChange": drop_if_big("fullDocumentBeforeChange"),
            "updateDescription": drop_if_big("updateDescription"),
            OVERSIZED_FIELD: { "$cond": [{ "$gt": [format!("${OVERSIZED_FIELD}"), LIMIT] }, format!("${OVERSIZED_FIELD}"), "$$REMOVE"] },
        } },
    ]
}

/// Reports an event the server marked as oversized (under
/// `on_oversized_event = "skip"`); `true` if it is to be skipped.
pub(super) fn skip_if_oversized(
    policy: OnOversizedEvent,
    raw: &RawDocumentBuf,
    token: &str,
    tags: &ComponentTags,
) -> bool {
    if policy != OnOversizedEvent::Skip {
        return false;
    }
    let Ok(bytes) = raw.get_i64(OVERSIZED_FIELD) else {
        return false;
    };
    OversizedEventSkipped {
        namespace: &namespace_of(raw),
        document_key: &raw
            .get_document("documentKey")
            .ok()
            .and_then(|k| bson::Document::try_from(k).ok())
            .map(|k| Bson::Document(k).into_relaxed_extjson().to_string())
            .unwrap_or_else(|| "(none)".into()),
        bytes,
        token,
    }
    .emit(tags);
    true
}

fn namespace_of(raw: &RawDocumentBuf) -> String {
    let ns = raw.get_document("ns").ok();
    let part = |k| ns.and_then(|n| n.get_str(k).ok()).unwrap_or("");
    format!("{}.{}", part("db"), part("coll"))
}
