//! The positions of snapshot records: an order-preserving key of `_id`,
//! so that within a collection position order is `_id` order.

use bson::{spec::BinarySubtype, RawBsonRef};

/// The order-preserving key of an `_id`, in MongoDB's comparison order
/// (numbers < strings < objects < ... < ObjectId < bool < date <
/// timestamp). `None` for types whose order this key cannot reproduce
/// (embedded documents, arrays, regexes...).
pub(super) fn id_key(id: RawBsonRef<'_>) -> Option<String> {
    fn number(f: f64, exact: i64) -> String {
        // IEEE-754 bits made sortable; the integer breaks ties where an
        // Int64 is beyond f64 precision. NaN sorts below every number.
        let bits = if f.is_nan() {
            0
        } else if f.is_sign_negative() {
            !f.to_bits()
        } else {
            f.to_bits() ^ (1 << 63)
        };
        format!("10{bits:016X}{:016X}", (exact as u64) ^ (1 << 63))
    }
    Some(match id {
        RawBsonRef::MinKey => "00".into(),
        RawBsonRef::Null | RawBsonRef::Undefined => "05".into(),
        RawBsonRef::Int32(i) => number(f64::from(i), i64::from(i)),
        RawBsonRef::Int64(i) => number(i as f64, i),
        RawBsonRef::Double(f) => number(f, f as i64),
        RawBsonRef::Decimal128(d) => {
            let f: f64 = d.to_string().parse().ok()?;
            number(f, f as i64)
        }
        RawBsonRef::String(s) | RawBsonRef::Symbol(s) => format!("20{}", upper_hex(s.as_bytes())),
        RawBsonRef::Binary(b) => {
            let subtype: u8 = match b.subtype {
                BinarySubtype::Generic => 0,
                other => u8::from(other),
            };
            format!("50{:08X}{subtype:02X}{}", b.bytes.len(), upper_hex(b.bytes))
        }
        RawBsonRef::ObjectId(o) => format!("60{}", o.to_hex().to_ascii_uppercase()),
        RawBsonRef::Boolean(b) => format!("70{:02X}", u8::from(b)),
        RawBsonRef::DateTime(d) => format!("80{:016X}", (d.timestamp_millis() as u64) ^ (1 << 63)),
        RawBsonRef::Timestamp(t) => format!("90{:08X}{:08X}", t.time, t.increment),
        RawBsonRef::MaxKey => "FF".into(),
        _ => return None,
    })
}

fn upper_hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02X}");
            s
        })
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
        let doc = doc! { "v": { "a": 1 } };
        let raw = RawDocumentBuf::from_document(&doc).unwrap();
        assert_eq!(id_key(raw.get("v").unwrap().unwrap()), None);
    }
}
