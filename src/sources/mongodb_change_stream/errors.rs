//! MongoDB errors as sentences: what failed, in the server's words, with
//! the option to change when one applies, and never the driver's debug
//! dump of the raw server response. Also which errors retrying cannot fix.

use mongodb::error::{Error, ErrorKind};

use crate::redact;

/// How long the driver looks for a usable server before an operation
/// fails, unless `uri` sets `serverSelectionTimeoutMS`: an unreachable
/// host is reported within this, not after the driver's 30 s.
pub const SERVER_SELECTION_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(8);

/// `e` as one sentence.
pub fn describe(e: &Error) -> String {
    match e.kind.as_ref() {
        ErrorKind::Command(c) => {
            let hint = hint(c.code).map(|h| format!(" {h}")).unwrap_or_default();
            format!(
                "{} (code {} {}).{hint}",
                redact::text(c.message.trim_end_matches('.')),
                c.code,
                c.code_name
            )
        }
        ErrorKind::ServerSelection { message, .. } => {
            if not_a_member(message) {
                return format!("cannot use MongoDB: {NOT_A_MEMBER}");
            }
            // The first server's own error says why (refused, TLS...).
            let why = message
                .split_once("Error: ")
                .map(|(_, rest)| rest.split([',', '}']).next().unwrap_or(rest).trim())
                .map(|why| format!(": {}", redact::text(why.trim_start_matches("Kind: "))))
                .unwrap_or_default();
            format!(
                "cannot reach MongoDB within {}s{why} (host down, wrong address or port, firewall, or a TLS setting that does not match the server)",
                SERVER_SELECTION_TIMEOUT.as_secs()
            )
        }
        ErrorKind::Authentication { message, .. } => format!(
            "authentication failed: {}; check the user, password and `authSource` in `uri`",
            redact::text(message)
        ),
        ErrorKind::InvalidArgument { message, .. } => redact::text(message),
        // The kind alone: the error's own Display adds labels and the raw
        // server response.
        other => redact::text(&other.to_string()),
    }
}

const NOT_A_MEMBER: &str = "the servers answered, but none is a member of the replica set named in `uri` (a standalone mongod, or a wrong `replicaSet` name); set `replicaSet` to the set's name, or point `uri` at a replica set";

/// Server selection found servers but dropped every one: they are not
/// members of the named replica set (the driver lists no servers then).
fn not_a_member(message: &str) -> bool {
    message.contains("Type: ReplicaSetNoPrimary") && !message.contains("Servers:")
}

/// What to change for errors whose cause is in the configuration.
fn hint(code: i32) -> Option<&'static str> {
    Some(match code {
        40573 => "Change streams need a replica set or sharded cluster: point `uri` at one (with `replicaSet=`), or start mongod with --replSet and run rs.initiate().",
        18 => "Check the user, password and `authSource` in `uri`.",
        13 => "The user lacks a privilege change streams need (`changeStream` and `find` on the watched scope; `readAnyDatabase` covers it).",
        20 | 40324 | 15 | 9 | 2 => "Check `pipeline`: change streams accept only $match, $project, $addFields, $set, $unset, $replaceRoot, $replaceWith and $redact.",
        10334 => "An event is over MongoDB's 16 MB limit (BSONObjectTooLarge), usually a large document with its pre-image or post-image. Set on_oversized_event = \"skip\" to leave such events out (counted and logged), or drop large fields with `pipeline`.",
        _ => return None,
    })
}

/// Authentication and authorization failures: only new credentials or
/// privileges fix them, so the agent exits 78 (the shipped systemd unit
/// does not restart on it) instead of 1.
pub fn is_refused(e: &Error) -> bool {
    match e.kind.as_ref() {
        ErrorKind::Command(c) => matches!(c.code, 18 | 13),
        ErrorKind::Authentication { .. } => true,
        _ => false,
    }
}

/// Errors that retrying cannot fix: the source stops with one message.
pub fn is_permanent(e: &Error) -> bool {
    match e.kind.as_ref() {
        // Not a replica set, authentication, authorization, invalid
        // pipeline or options, oversized event.
        ErrorKind::Command(c) => {
            matches!(
                c.code,
                40573 | 18 | 13 | 2 | 9 | 14 | 15 | 16 | 20 | 40324 | 280 | 10334
            )
        }
        ErrorKind::ServerSelection { message, .. } => not_a_member(message),
        ErrorKind::Authentication { .. }
        | ErrorKind::InvalidArgument { .. }
        | ErrorKind::BsonDeserialization(_) => true,
        _ => false,
    }
}
