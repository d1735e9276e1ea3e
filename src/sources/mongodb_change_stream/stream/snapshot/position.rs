//! The positions of snapshot records: an order-preserving key of `_id`,
//! so that within a collection position order is `_id` order.

use bson::{spec::BinarySubtype, RawBsonRef};

/// The order-preserving key of an `_id`, in MongoDB's comparison order
/// (numbers < strings < objects < ... < ObjectId < bool < date <
/// timestamp). `None` for types whose order this key cannot reproduce
/// (embedded documents, arrays, regexes...). The agent writes keys with
/// [`push_id_key`]; this is for tests.
#[cfg(test)]
fn id_key(id: RawBsonRef<'_>) -> Option<String> {
    let mut key = String::new();
    push_id_key(&mut key, id).then_some(key)
}

/// Appends the key of `id` ([`id_key`]) to `out`; false when `id` has
/// none. Written digit by digit into the record's position, without the
/// formatting machinery or a string of its own: it runs once per
/// snapshot record.
pub(super) fn push_id_key(out: &mut String, id: RawBsonRef<'_>) -> bool {
    fn number(out: &mut String, f: f64, exact: i64) {
        // IEEE-754 bits made sortable; the integer breaks ties where an
        // Int64 is beyond f64 precision. NaN sorts below every number.
        let bits = if f.is_nan() {
            0
        } else if f.is_sign_negative() {
            !f.to_bits()
        } else {
            f.to_bits() ^ (1 << 63)
        };
        out.push_str("10");
        push_hex(out, bits, 16);
        push_hex(out, (exact as u64) ^ (1 << 63), 16);
    }
    match id {
        RawBsonRef::MinKey => out.push_str("00"),
        RawBsonRef::Null | RawBsonRef::Undefined => out.push_str("05"),
        RawBsonRef::Int32(i) => number(out, f64::from(i), i64::from(i)),
        RawBsonRef::Int64(i) => number(out, i as f64, i),
        RawBsonRef::Double(f) => number(out, f, f as i64),
        RawBsonRef::Decimal128(d) => {
            let Ok(f) = d.to_string().parse::<f64>() else {
                return false;
            };
            number(out, f, f as i64);
        }
        RawBsonRef::String(s) | RawBsonRef::Symbol(s) => {
            out.push_str("20");
            push_bytes(out, s.as_bytes());
        }
        RawBsonRef::Binary(b) => {
            let subtype: u8 = match b.subtype {
                BinarySubtype::Generic => 0,
                other => u8::from(other),
            };
            out.push_str("50");
            push_hex(out, b.bytes.len() as u64, 8);
            push_hex(out, u64::from(subtype), 2);
            push_bytes(out, b.bytes);
        }
        RawBsonRef::ObjectId(o) => {
            out.push_str("60");
            push_bytes(out, &o.bytes());
        }
        RawBsonRef::Boolean(b) => {
            out.push_str("70");
            push_hex(out, u64::from(b), 2);
        }
        RawBsonRef::DateTime(d) => {
            out.push_str("80");
            push_hex(out, (d.timestamp_millis() as u64) ^ (1 << 63), 16);
        }
        RawBsonRef::Timestamp(t) => {
            out.push_str("90");
            push_hex(out, u64::from(t.time), 8);
            push_hex(out, u64::from(t.increment), 8);
        }
        RawBsonRef::MaxKey => out.push_str("FF"),
        _ => return false,
    }
    true
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";

/// The low `digits` hex digits of `value`, upper case, zero-padded.
fn push_hex(out: &mut String, value: u64, digits: u32) {
    for i in (0..digits).rev() {
        out.push(char::from(HEX[((value >> (i * 4)) & 0xF) as usize]));
    }
}

/// Each byte as two upper-case hex digits.
fn push_bytes(out: &mut String, bytes: &[u8]) {
    out.reserve(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 0xF)]));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::{doc, oid::ObjectId, Bson, RawDocumentBuf};

    fn key(b: Bson) -> String {
        let doc = doc! { "v": b };
        let raw = RawDocumentBuf::from_document(&doc).unwrap();
        id_key(raw.get("v").unwrap().unwrap()).unwrap()
    }

    #[test]
    fn id_keys_follow_mongodb_order() {
        let ordered = [
            Bson::MinKey,
            Bson::Null,
            Bson::Double(f64::NEG_INFINITY),
            Bson::Int64(-5_000_000_000),
            Bson::Int32(-1),
            Bson::Double(-0.5),
            Bson::Int32(0),
            Bson::Double(0.5),
            Bson::Int64(1),
            Bson::Int32(2),
            Bson::Int64(9_007_199_254_740_992),
            Bson::Int64(9_007_199_254_740_993),
            Bson::String(String::new()),
            Bson::String("a".into()),
            Bson::String("ab".into()),
            Bson::String("b".into()),
            Bson::ObjectId(ObjectId::parse_str("000000000000000000000001").unwrap()),
            Bson::ObjectId(ObjectId::parse_str("65a000000000000000000000").unwrap()),
            Bson::Boolean(false),
            Bson::Boolean(true),
            Bson::DateTime(bson::DateTime::from_millis(-1)),
            Bson::DateTime(bson::DateTime::from_millis(1)),
            Bson::MaxKey,
        ];
        let keys: Vec<String> = ordered.iter().cloned().map(key).collect();
        for pair in keys.windows(2) {
            assert!(pair[0] < pair[1], "{} !< {}", pair[0], pair[1]);
        }
        assert_eq!(id_key(RawBsonRef::Int32(7)), id_key(RawBsonRef::Int64(7)));
        // The keys are positions already in lakes and checkpoints: pinned.
        let pinned = [
            (Bson::Int32(-1), "10400FFFFFFFFFFFFF7FFFFFFFFFFFFFFF"),
            (Bson::String("aZ".into()), "20615A"),
            (
                Bson::ObjectId(ObjectId::parse_str("65a0000000000000000000ff").unwrap()),
                "6065A0000000000000000000FF",
            ),
            (Bson::Boolean(true), "7001"),
            (
                Bson::DateTime(bson::DateTime::from_millis(1)),
                "808000000000000001",
            ),
            (
                Bson::Timestamp(bson::Timestamp {
                    time: 10,
                    increment: 2,
                }),
                "900000000A00000002",
            ),
            (
                Bson::Binary(bson::Binary {
                    subtype: bson::spec::BinarySubtype::Uuid,
                    bytes: vec![0xAB],
                }),
                "500000000104AB",
            ),
            (Bson::MaxKey, "FF"),
        ];
        for (id, expected) in pinned {
            assert_eq!(key(id.clone()), expected, "{id:?}");
        }
        let doc = doc! { "v": { "a": 1 } };
        let raw = RawDocumentBuf::from_document(&doc).unwrap();
        assert_eq!(id_key(raw.get("v").unwrap().unwrap()), None);
    }
}
