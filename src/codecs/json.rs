//! BSON to JSON, written straight from the raw BSON bytes into an output
//! buffer: no `Bson` tree, no `serde_json::Value`, one pass per value.
//!
//! Hand-written because no crate does this: `bson` converts to
//! `serde_json::Value` (an allocation per node, and a second pass to write
//! it), and it has no "simplified" flavour for warehouse loaders. The output
//! follows MongoDB Extended JSON v2 (`relaxed` and `canonical`); the
//! `simplified` flavour writes ObjectId as its hex string, dates as RFC 3339
//! strings, Decimal128 as a string and 64-bit integers as plain numbers, so
//! Snowflake VARIANT, Spark and DuckDB load them as scalars.

use std::io::Write as _;

use base64::Engine as _;
use bson::{
    raw::{RawArray, RawBsonRef, RawDocument},
    spec::BinarySubtype,
};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Which JSON flavour of BSON values to write.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ExtendedJsonMode {
    /// Extended JSON v2 relaxed: numbers as JSON numbers, dates in 1970-9999
    /// as ISO-8601 strings inside `{"$date": ...}`.
    #[default]
    Relaxed,
    /// Extended JSON v2 canonical: every type tagged, round-trips exactly.
    Canonical,
    /// Plain JSON scalars for loaders: ObjectId as hex, dates as RFC 3339,
    /// Decimal128 as a string, Int64 as a number.
    Simplified,
}

/// A document could not be read (the BSON is malformed).
#[derive(Debug)]
pub struct MalformedBson(pub String);

impl std::fmt::Display for MalformedBson {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "malformed BSON: {}", self.0)
    }
}

type Result<T> = std::result::Result<T, MalformedBson>;

fn malformed(e: impl std::fmt::Display) -> MalformedBson {
    MalformedBson(e.to_string())
}

/// Writes `doc` as a JSON object.
pub fn write_document(doc: &RawDocument, mode: ExtendedJsonMode, out: &mut Vec<u8>) -> Result<()> {
    out.push(b'{');
    let mut first = true;
    for element in doc.iter() {
        let (key, value) = element.map_err(malformed)?;
        if !first {
            out.push(b',');
        }
        first = false;
        write_str(key, out);
        out.push(b':');
        write_value(value, mode, out)?;
    }
    out.push(b'}');
    Ok(())
}

fn write_array(arr: &RawArray, mode: ExtendedJsonMode, out: &mut Vec<u8>) -> Result<()> {
    out.push(b'[');
    let mut first = true;
    for value in arr {
        let value = value.map_err(malformed)?;
        if !first {
            out.push(b',');
        }
        first = false;
        write_value(value, mode, out)?;
    }
    out.push(b']');
    Ok(())
}

/// Writes one BSON value.
// Long by design: one flat match arm per BSON type, as in Vector's encoders.
pub fn write_value(value: RawBsonRef<'_>, mode: ExtendedJsonMode, out: &mut Vec<u8>) -> Result<()> {
    use ExtendedJsonMode::*;
    match value {
        RawBsonRef::Double(f) => match mode {
            Canonical => {
                out.extend_from_slice(b"{\"$numberDouble\":\"");
                write_f64_text(f, out);
                out.extend_from_slice(b"\"}");
            }
            Relaxed | Simplified if f.is_finite() => {
                out.extend_from_slice(ryu::Buffer::new().format_finite(f).as_bytes())
            }
            Relaxed => {
                out.extend_from_slice(b"{\"$numberDouble\":\"");
                write_f64_text(f, out);
                out.extend_from_slice(b"\"}");
            }
            Simplified => {
                // JSON has no NaN or Infinity; a string keeps the value visible.
                out.push(b'"');
                write_f64_text(f, out);
                out.push(b'"');
            }
        },
        RawBsonRef::String(s) => write_str(s, out),
        RawBsonRef::Document(d) => write_document(d, mode, out)?,
        RawBsonRef::Array(a) => write_array(a, mode, out)?,
        RawBsonRef::Boolean(b) => out.extend_from_slice(if b { b"true" } else { b"false" }),
        RawBsonRef::Null => out.extend_from_slice(b"null"),
        RawBsonRef::Int32(i) => match mode {
            Canonical => {
                out.extend_from_slice(b"{\"$numberInt\":\"");
                out.extend_from_slice(itoa::Buffer::new().format(i).as_bytes());
                out.extend_from_slice(b"\"}");
            }
            _ => out.extend_from_slice(itoa::Buffer::new().format(i).as_bytes()),
        },
        RawBsonRef::Int64(i) => match mode {
            Canonical => {
                out.extend_from_slice(b"{\"$numberLong\":\"");
                out.extend_from_slice(itoa::Buffer::new().format(i).as_bytes());
                out.extend_from_slice(b"\"}");
            }
            _ => out.extend_from_slice(itoa::Buffer::new().format(i).as_bytes()),
        },
        RawBsonRef::ObjectId(oid) => match mode {
            Simplified => {
                out.push(b'"');
                out.extend_from_slice(oid.to_hex().as_bytes());
                out.push(b'"');
            }
            _ => {
                out.extend_from_slice(b"{\"$oid\":\"");
                out.extend_from_slice(oid.to_hex().as_bytes());
                out.extend_from_slice(b"\"}");
            }
        },
        RawBsonRef::DateTime(dt) => {
            let ms = dt.timestamp_millis();
            match mode {
                Canonical => write_date_canonical(ms, out),
                // Relaxed mode uses ISO-8601 only for years 1970-9999.
                Relaxed if (0..=253_402_300_799_999).contains(&ms) => {
                    out.extend_from_slice(b"{\"$date\":\"");
                    write_rfc3339_millis(ms, out);
                    out.extend_from_slice(b"\"}");
                }
                Relaxed => write_date_canonical(ms, out),
                Simplified => {
                    out.push(b'"');
                    if write_rfc3339_millis(ms, out) {
                        out.push(b'"');
                    } else {
                        out.pop();
                        out.extend_from_slice(itoa::Buffer::new().format(ms).as_bytes());
                    }
                }
            }
        }
        RawBsonRef::Decimal128(d) => match mode {
            Simplified => write_str(&d.to_string(), out),
            _ => {
                out.extend_from_slice(b"{\"$numberDecimal\":\"");
                out.extend_from_slice(d.to_string().as_bytes());
                out.extend_from_slice(b"\"}");
            }
        },
        RawBsonRef::Timestamp(ts) => {
            let _ = write!(
                out,
                "{{\"$timestamp\":{{\"t\":{},\"i\":{}}}}}",
                ts.time, ts.increment
            );
        }
        RawBsonRef::Binary(bin) => {
            let b64 = base64::engine::general_purpose::STANDARD.encode(bin.bytes);
            match mode {
                Simplified if bin.subtype == BinarySubtype::Generic => write_str(&b64, out),
                _ => {
                    out.extend_from_slice(b"{\"$binary\":{\"base64\":\"");
                    out.extend_from_slice(b64.as_bytes());
                    let _ = write!(out, "\",\"subType\":\"{:02x}\"}}}}", u8::from(bin.subtype));
                }
            }
        }
        RawBsonRef::RegularExpression(re) => {
            out.extend_from_slice(b"{\"$regularExpression\":{\"pattern\":");
            write_str(re.pattern, out);
            out.extend_from_slice(b",\"options\":");
            write_str(re.options, out);
            out.extend_from_slice(b"}}");
        }
        RawBsonRef::JavaScriptCode(code) => {
            out.extend_from_slice(b"{\"$code\":");
            write_str(code, out);
            out.push(b'}');
        }
        RawBsonRef::JavaScriptCodeWithScope(cws) => {
            out.extend_from_slice(b"{\"$code\":");
            write_str(cws.code, out);
            out.extend_from_slice(b",\"$scope\":");
            write_document(cws.scope, mode, out)?;
            out.push(b'}');
        }
        RawBsonRef::Symbol(s) => {
            out.extend_from_slice(b"{\"$symbol\":");
            write_str(s, out);
            out.push(b'}');
        }
        RawBsonRef::Undefined => out.extend_from_slice(b"{\"$undefined\":true}"),
        RawBsonRef::MinKey => out.extend_from_slice(b"{\"$minKey\":1}"),
        RawBsonRef::MaxKey => out.extend_from_slice(b"{\"$maxKey\":1}"),
        RawBsonRef::DbPointer(_) => {
            // Deprecated and absent from change events in practice; its
            // fields are private in `bson`, so go through its own converter.
            let bson = bson::Bson::try_from(value.to_raw_bson()).map_err(malformed)?;
            let json = bson.into_canonical_extjson();
            serde_json::to_writer(&mut *out, &json).map_err(malformed)?;
        }
    }
    Ok(())
}

fn write_date_canonical(ms: i64, out: &mut Vec<u8>) {
    out.extend_from_slice(b"{\"$date\":{\"$numberLong\":\"");
    out.extend_from_slice(itoa::Buffer::new().format(ms).as_bytes());
    out.extend_from_slice(b"\"}}");
}

/// `2024-08-10T19:00:00.123Z`, or `None` outside chrono's range.
pub fn rfc3339_millis(ms: i64) -> Option<String> {
    let mut out = Vec::with_capacity(24);
    write_rfc3339_millis(ms, &mut out).then(|| String::from_utf8(out).expect("ASCII"))
}

/// Appends `2024-08-10T19:00:00.123Z` for `ms` since the epoch; false (and
/// nothing written) for years outside 0-9999. Written digit by digit: this
/// runs for every date in every document, where chrono's `format` (which
/// interprets the format string each call) was the encoder's largest cost.
pub fn write_rfc3339_millis(ms: i64, out: &mut Vec<u8>) -> bool {
    use chrono::{Datelike, Timelike};
    let Some(t) = chrono::DateTime::from_timestamp_millis(ms) else {
        return false;
    };
    let year = t.year();
    if !(0..=9999).contains(&year) {
        return false;
    }
    let digits = |v: u32, width: usize, out: &mut Vec<u8>| {
        let mut buf = [b'0'; 4];
        let mut v = v;
        for i in (0..width).rev() {
            buf[i] = b'0' + (v % 10) as u8;
            v /= 10;
        }
        out.extend_from_slice(&buf[..width]);
    };
    digits(year as u32, 4, out);
    out.push(b'-');
    digits(t.month(), 2, out);
    out.push(b'-');
    digits(t.day(), 2, out);
    out.push(b'T');
    digits(t.hour(), 2, out);
    out.push(b':');
    digits(t.minute(), 2, out);
    out.push(b':');
    digits(t.second(), 2, out);
    out.push(b'.');
    digits(t.timestamp_subsec_millis(), 3, out);
    out.push(b'Z');
    true
}

fn write_f64_text(f: f64, out: &mut Vec<u8>) {
    if f.is_nan() {
        out.extend_from_slice(b"NaN");
    } else if f.is_infinite() {
        out.extend_from_slice(if f > 0.0 { b"Infinity" } else { b"-Infinity" });
    } else {
        out.extend_from_slice(ryu::Buffer::new().format_finite(f).as_bytes());
    }
}

/// Which bytes need escaping in a JSON string (RFC 8259).
static ESCAPE: [bool; 256] = {
    let mut table = [false; 256];
    let mut i = 0;
    while i < 0x20 {
        table[i] = true;
        i += 1;
    }
    table[b'"' as usize] = true;
    table[b'\\' as usize] = true;
    table
};

/// Writes a JSON string literal with RFC 8259 escaping, copying unescaped
/// runs whole.
pub fn write_str(s: &str, out: &mut Vec<u8>) {
    out.push(b'"');
    let bytes = s.as_bytes();
    let mut start = 0;
    let mut i = 0;
    while i < bytes.len() {
        i = next_escape(bytes, i);
        if i == bytes.len() {
            break;
        }
        let b = bytes[i];
        out.extend_from_slice(&bytes[start..i]);
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            0x08 => out.extend_from_slice(b"\\b"),
            0x0c => out.extend_from_slice(b"\\f"),
            _ => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.extend_from_slice(b"\\u00");
                out.push(HEX[(b >> 4) as usize]);
                out.push(HEX[(b & 0xf) as usize]);
            }
        }
        i += 1;
        start = i;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

/// The index of the first byte at or after `from` that needs escaping, or
/// `bytes.len()`. Written by hand because string scanning is the encoder's
/// hot loop (~9% of the agent's CPU byte by byte) and no small crate
/// exposes it: eight bytes are tested at a time with the classic SWAR
/// "has a byte less than n / equal to c" tricks, then the table finds
/// which byte it was.
fn next_escape(bytes: &[u8], from: usize) -> usize {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    let mut i = from;
    while i + 8 <= bytes.len() {
        let mut word = [0u8; 8];
        word.copy_from_slice(&bytes[i..i + 8]);
        let w = u64::from_le_bytes(word);
        // A byte < 0x20, or equal to '"' or '\\' (x ^ c has a zero byte).
        // Bytes >= 0x80 set the high bit of `w` and are masked out by `!w`.
        let control = w.wrapping_sub(ONES * 0x20) & !w;
        let quote = {
            let x = w ^ (ONES * u64::from(b'"'));
            x.wrapping_sub(ONES) & !x
        };
        let backslash = {
            let x = w ^ (ONES * u64::from(b'\\'));
            x.wrapping_sub(ONES) & !x
        };
        if (control | quote | backslash) & HIGHS != 0 {
            break;
        }
        i += 8;
    }
    // The flagged word (the tricks may flag a byte after the first hit,
    // never miss one) or the tail: byte by byte.
    while i < bytes.len() && !ESCAPE[bytes[i] as usize] {
        i += 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::{doc, oid::ObjectId, Binary, Bson, Decimal128, RawDocumentBuf, Timestamp};
    use std::str::FromStr;

    fn encode(doc: bson::Document, mode: ExtendedJsonMode) -> String {
        let raw = RawDocumentBuf::from_document(&doc).unwrap();
        let mut out = Vec::new();
        write_document(&raw, mode, &mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    fn sample() -> bson::Document {
        doc! {
            "oid": ObjectId::parse_str("66b7a0f0c2a4e5b1d2c3f4a5").unwrap(),
            "d": bson::DateTime::from_millis(1_723_316_400_123),
            "old": bson::DateTime::from_millis(-1000),
            "dec": Decimal128::from_str("1234.5600").unwrap(),
            "i32": 7_i32, "i64": 9_007_199_254_740_993_i64, "f": 1.5_f64, "nan": f64::NAN,
            "ts": Timestamp { time: 1_723_316_400, increment: 3 },
            "bin": Binary { subtype: bson::spec::BinarySubtype::Generic, bytes: vec![1, 2, 3] },
            "uuid": Binary { subtype: bson::spec::BinarySubtype::Uuid, bytes: vec![0; 16] },
            "arr": [1_i32, "two", { "three": Bson::Null }],
            "s": "quote\" back\\ nl\n ctl\u{1} é",
        }
    }

    /// The `bson` crate's own converter is the reference for both standard
    /// modes: parse both outputs and compare.
    #[test]
    fn matches_bson_crate_canonical_and_relaxed() {
        let doc = sample();
        let ours: serde_json::Value =
            serde_json::from_str(&encode(doc.clone(), ExtendedJsonMode::Canonical)).unwrap();
        let reference = Bson::Document(doc.clone()).into_canonical_extjson();
        assert_eq!(ours, reference);

        let ours: serde_json::Value =
            serde_json::from_str(&encode(doc.clone(), ExtendedJsonMode::Relaxed)).unwrap();
        let reference = Bson::Document(doc).into_relaxed_extjson();
        assert_eq!(ours, reference);
    }

    #[test]
    fn canonical_round_trips_through_bson() {
        let doc = sample();
        let json: serde_json::Value =
            serde_json::from_str(&encode(doc.clone(), ExtendedJsonMode::Canonical)).unwrap();
        let back = Bson::try_from(json).unwrap();
        // NaN != NaN, so compare everything else.
        let mut expected = doc;
        expected.remove("nan");
        let mut back = back.as_document().unwrap().clone();
        assert!(back.remove("nan").unwrap().as_f64().unwrap().is_nan());
        assert_eq!(back, expected);
    }

    #[test]
    fn simplified_scalars() {
        let json: serde_json::Value =
            serde_json::from_str(&encode(sample(), ExtendedJsonMode::Simplified)).unwrap();
        assert_eq!(json["oid"], "66b7a0f0c2a4e5b1d2c3f4a5");
        assert_eq!(json["d"], "2024-08-10T19:00:00.123Z");
        assert_eq!(json["dec"], "1234.5600");
        assert_eq!(json["i64"], serde_json::json!(9_007_199_254_740_993_i64));
        assert_eq!(json["nan"], "NaN");
        assert_eq!(json["bin"], "AQID");
        assert_eq!(json["arr"][2]["three"], serde_json::Value::Null);
    }

    #[test]
    fn escapes_strings() {
        let mut out = Vec::new();
        write_str("a\"b\\c\nd\u{1f}e\u{7f}é", &mut out);
        let back: String = serde_json::from_slice(&out).unwrap();
        assert_eq!(back, "a\"b\\c\nd\u{1f}e\u{7f}é");
    }

    /// The word-at-a-time scan against serde_json, for every ASCII byte at
    /// every offset of a word (and in the tail), next to multi-byte UTF-8.
    #[test]
    fn word_scan_escapes_like_serde_json() {
        for len in [1usize, 7, 8, 9, 17, 40] {
            for pos in 0..len {
                for b in 0u8..0x80 {
                    let mut s: Vec<char> = "aé€😀xyzQ".chars().cycle().take(len).collect();
                    s[pos] = char::from(b);
                    let s: String = s.into_iter().collect();
                    let mut out = Vec::new();
                    write_str(&s, &mut out);
                    assert_eq!(
                        out,
                        serde_json::to_vec(&s).unwrap(),
                        "byte {b:#04x} at {pos} of {len}"
                    );
                }
            }
        }
    }
}
