//! `mode = "per_event"`: one object per event, named by its position,
//! operation and a hash of its document key, written only if absent, so a
//! replay after a crash is a no-op.

use bytes::Bytes;
use chrono::{DateTime, Utc};

use super::{
    encode::EventFields,
    layout::Layout,
    requests::{self, RetryingStorage, WriteRequest},
};
use crate::{
    codecs::json::ExtendedJsonMode,
    event::{EventFinalizers, LogEvent, Position},
};

/// The request that writes `log`'s object and the bytes it carries, or
/// the encoding error (the finalizers come back with it).
pub(super) fn put_request(
    storage: RetryingStorage,
    layout: &Layout,
    json_mode: ExtendedJsonMode,
    (log, fields, time, position): (
        &LogEvent,
        &EventFields<'_>,
        DateTime<Utc>,
        Option<&Position>,
    ),
    finalizers: EventFinalizers,
    compress: impl FnOnce(Vec<u8>) -> Bytes,
) -> Result<(usize, WriteRequest), (EventFinalizers, String)> {
    let mut data = Vec::with_capacity(log.payload.as_bytes().len() + 256);
    if let Err(e) = fields.encode(json_mode, time, &mut data) {
        return Err((finalizers, e.to_string()));
    }
    let name = object_name(layout, fields, time, position);
    let body = compress(data);
    Ok((
        body.len(),
        requests::put_event(storage, name, body, finalizers),
    ))
}

/// The event's object: its position (or time), operation and a hash of
/// its document key.
fn object_name(
    layout: &Layout,
    fields: &EventFields<'_>,
    time: DateTime<Utc>,
    position: Option<&Position>,
) -> String {
    let operation = fields.operation_type().unwrap_or("unknown");
    let key_hash = fields.document_key().map_or(0, |d| fnv1a(d.as_bytes()));
    let position =
        position.map_or_else(|| format!("t{}", time.timestamp_millis()), |p| p.0.clone());
    layout.per_event_name(fields.namespace(), time, &position, operation, key_hash)
}

/// FNV-1a, for short stable names from document keys.
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_hashes_are_stable() {
        // Names written by earlier versions must stay the same.
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
    }

    /// An event's object name, with and without an operation and a key:
    /// a replay must find the object an earlier version wrote. The hash is
    /// FNV-1a of the key's BSON, `0e000000 10 5f696400 07000000 00`,
    /// worked out apart from this code.
    #[test]
    fn object_names_are_stable() {
        let config: super::super::config::AdlsPartitionedJsonlConfig = toml::from_str(
            "account_url = \"file:///tmp/x\"\nfilesystem = \"lake\"\nmode = \"per_event\"",
        )
        .unwrap();
        let layout = config.check().unwrap();
        let time = DateTime::from_timestamp(1_754_852_410, 0).unwrap();
        let event = bson::rawdoc! {
            "operationType": "update",
            "ns": { "db": "shop", "coll": "orders" },
            "documentKey": { "_id": 7 },
        };
        let fields = EventFields::read(&event).unwrap();
        let position = Position("82ABC".into());
        assert_eq!(
            object_name(&layout, &fields, time, Some(&position)),
            "shop/orders/year=2025/month=08/day=10/hour=19/event-82ABC-update-c2e1333f9ac2c986.jsonl"
        );
        let event = bson::rawdoc! { "ns": { "db": "shop", "coll": "orders" } };
        let fields = EventFields::read(&event).unwrap();
        assert_eq!(
            object_name(&layout, &fields, time, None),
            "shop/orders/year=2025/month=08/day=10/hour=19/event-t1754852410000-unknown-0000000000000000.jsonl"
        );
    }
}
