//! One audit entry and its line: what is hashed, how a line is written and read back.
//!
//! A line is the entry's JSON body with the member `"hash"` appended last:
//! `{"seq":…,"at":…,"prev":…,"event":{…},"hash":"<64 hex>"}`. The hash is SHA-256 over the
//! body exactly as written, `{"seq":…,"at":…,"prev":…,"event":{…}}` (the line without its
//! `,"hash":"…"` member): the reader hashes the bytes it finds, never a re-serialization, so
//! any change of a byte shows. `prev` is the previous entry's hash (64 zeros for the very
//! first entry); `seq` counts entries from 0 across every file of the log. Pure: no IO.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use super::AuditEvent;

/// `prev` of the log's first entry.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// What follows the body on every line, before the 64 hex digits and the closing `"}`.
const HASH_MEMBER: &str = ",\"hash\":\"";
/// Length of the appended `,"hash":"<64 hex>"}` (the body's own `}` is replaced by it).
const SUFFIX_LEN: usize = HASH_MEMBER.len() + 64 + 2;

/// An audit entry (the hashed part of a line).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    /// Position in the whole log, from 0.
    pub seq: u64,
    /// When the agent recorded it (UTC).
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    /// The previous entry's hash, lower-case hex.
    pub prev: String,
    /// The operator signed in at the desk when the entry was recorded, if anyone (absent
    /// when nobody was).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operator: Option<String>,
    /// What happened.
    pub event: AuditEvent,
}

/// A line as read back: the entry, its stored hash and the hash of the bytes found.
#[derive(Debug, Clone, PartialEq)]
pub struct ReadLine {
    /// The entry.
    pub entry: Entry,
    /// The hash the line carries.
    pub stored_hash: String,
    /// SHA-256 of the body as found.
    pub computed_hash: String,
}

/// Lower-case hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Encodes `entry` as one line (with the trailing `\n`) and returns it with its hash.
pub fn encode_line(entry: &Entry) -> Result<(Vec<u8>, String), serde_json::Error> {
    let mut body = serde_json::to_vec(entry)?;
    let hash = sha256_hex(&body);
    // The body is a JSON object: replace its closing brace by the hash member.
    body.pop();
    body.extend_from_slice(HASH_MEMBER.as_bytes());
    body.extend_from_slice(hash.as_bytes());
    body.extend_from_slice(b"\"}\n");
    Ok((body, hash))
}

/// Reads one line (without its `\n`). The error says why it is not an entry at all.
pub fn decode_line(line: &[u8]) -> Result<ReadLine, String> {
    if line.len() < SUFFIX_LEN + 2 || !line.ends_with(b"\"}") {
        return Err("not an audit entry (no hash member at its end)".to_owned());
    }
    let split = line.len() - SUFFIX_LEN;
    let (head, suffix) = line.split_at(split);
    let hash = suffix
        .strip_prefix(HASH_MEMBER.as_bytes())
        .and_then(|s| s.strip_suffix(b"\"}"))
        .filter(|h| {
            h.iter()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b))
        })
        .ok_or_else(|| "not an audit entry (malformed hash member)".to_owned())?;
    let mut body = head.to_vec();
    body.push(b'}');
    let entry: Entry =
        serde_json::from_slice(&body).map_err(|e| format!("not an audit entry ({e})"))?;
    Ok(ReadLine {
        entry,
        stored_hash: String::from_utf8_lossy(hash).into_owned(),
        computed_hash: sha256_hex(&body),
    })
}
