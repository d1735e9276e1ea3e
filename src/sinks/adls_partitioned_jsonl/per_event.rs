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
    let operation = log.payload.get_str("operationType").unwrap_or("unknown");
    let key_hash = log
        .payload
        .get_document("documentKey")
        .map(|d| fnv1a(d.as_bytes()))
        .unwrap_or(0);
    let position =
        position.map_or_else(|| format!("t{}", time.timestamp_millis()), |p| p.0.clone());
    let name = layout.per_event_name(fields.namespace(), time, &position, operation, key_hash);
    let body = compress(data);
    Ok((
        body.len(),
        requests::put_event(storage, name, body, finalizers),
    ))
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
}
