//! The decoding and encoding pipeline shared by every message, and the small serde types it
//! needs: the version marker [`V1`], [`Base64Bytes`] for DER blobs, RFC 3339 timestamps.
//!
//! Decoding is always: size check → JSON syntax and object shape → version → full parse →
//! validation ([`Message::decode`]). Encoding validates and checks the size bound too, so the
//! crate never produces a message its peer would refuse ([`Message::encode`]).
//! This module does no IO.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use time::OffsetDateTime;

use crate::error::{Problem, ProtocolError};

/// The protocol version this build speaks and writes into every message's `v`.
pub const PROTOCOL_VERSION: u32 = 1;

/// The largest payload of any message ([`crate::signed::JobEnvelope`], `CertResponse`,
/// `Inventory`): MQTT clients and the broker must accept at least this plus the topic.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;

/// The `"v": 1` field of every message. Serializes as the number 1; deserializes only from 1
/// (higher versions are refused earlier, by [`Message::decode`], with a typed error).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct V1;

impl Serialize for V1 {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u32(PROTOCOL_VERSION)
    }
}

impl<'de> Deserialize<'de> for V1 {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let v = u64::deserialize(deserializer)?;
        if v == u64::from(PROTOCOL_VERSION) {
            Ok(V1)
        } else {
            Err(serde::de::Error::custom(format_args!(
                "unsupported protocol version {v}"
            )))
        }
    }
}

/// A message of this protocol: one JSON object with a `v` field, a size bound and validation.
pub trait Message: Serialize + DeserializeOwned {
    /// Human name of the message, used in errors (e.g. `"step event"`).
    const NAME: &'static str;
    /// Payload bound in bytes; larger payloads are refused before parsing.
    const MAX_BYTES: usize;

    /// Checks every field; the error names the field path and the reason.
    fn validate(&self) -> Result<(), ProtocolError>;

    /// The one decoding entry point: size check → JSON → version → validation.
    fn decode(bytes: &[u8]) -> Result<Self, ProtocolError> {
        decode_message::<Self>(bytes)
    }

    /// Validates, then encodes canonically: compact JSON, fields in declaration order,
    /// absent optional fields left out. Refuses to produce a payload above [`Self::MAX_BYTES`].
    fn encode(&self) -> Result<Vec<u8>, ProtocolError> {
        self.validate()?;
        let bytes = serde_json::to_vec(self).map_err(|e| ProtocolError::Malformed {
            message: Self::NAME,
            detail: e.to_string(),
        })?;
        check_size::<Self>(bytes.len())?;
        Ok(bytes)
    }
}

fn check_size<M: Message>(size: usize) -> Result<(), ProtocolError> {
    if size > M::MAX_BYTES {
        return Err(ProtocolError::TooLarge {
            message: M::NAME,
            size,
            limit: M::MAX_BYTES,
        });
    }
    Ok(())
}

/// Only the version, to refuse newer versions before their shape confuses the full parser.
/// Other fields are skipped by serde without being kept.
#[derive(Deserialize)]
struct VersionProbe {
    v: Option<serde_json::Value>,
}

fn malformed<M: Message>(e: &serde_json::Error) -> ProtocolError {
    ProtocolError::Malformed {
        message: M::NAME,
        detail: e.to_string(),
    }
}

/// See [`Message::decode`].
fn decode_message<M: Message>(bytes: &[u8]) -> Result<M, ProtocolError> {
    check_size::<M>(bytes.len())?;
    // serde would also accept a JSON array for a struct; the protocol only has objects.
    match bytes.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'{') => {}
        _ => {
            return Err(ProtocolError::Malformed {
                message: M::NAME,
                detail: "not a JSON object".to_owned(),
            });
        }
    }
    let probe: VersionProbe = serde_json::from_slice(bytes).map_err(|e| malformed::<M>(&e))?;
    match probe.v {
        None => return Err(ProtocolError::MissingVersion { message: M::NAME }),
        Some(serde_json::Value::Number(n)) if n.as_u64() == Some(u64::from(PROTOCOL_VERSION)) => {}
        Some(other) => {
            let got = other.to_string().chars().take(32).collect();
            return Err(ProtocolError::UnsupportedVersion {
                message: M::NAME,
                got,
                supported: PROTOCOL_VERSION,
            });
        }
    }
    let message: M = serde_json::from_slice(bytes).map_err(|e| malformed::<M>(&e))?;
    message.validate()?;
    Ok(message)
}

/// Binary content (DER certificates, CSRs, public keys, ciphertexts) carried as standard
/// base64 with padding (RFC 4648 §4). `Debug` prints only the length.
#[derive(Clone, PartialEq, Eq, Hash, Default)]
pub struct Base64Bytes(Vec<u8>);

impl Base64Bytes {
    /// Wraps bytes.
    pub fn new(bytes: Vec<u8>) -> Base64Bytes {
        Base64Bytes(bytes)
    }

    /// The bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Unwraps the bytes.
    pub fn into_vec(self) -> Vec<u8> {
        self.0
    }

    /// Number of bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are no bytes.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Checks that the content is 1..=`max` bytes long.
    pub(crate) fn check(&self, path: impl Into<String>, max: usize) -> Result<(), ProtocolError> {
        if self.0.is_empty() {
            return Err(ProtocolError::invalid(path, Problem::Empty));
        }
        if self.0.len() > max {
            return Err(ProtocolError::invalid(path, Problem::TooLong { max }));
        }
        Ok(())
    }
}

impl From<Vec<u8>> for Base64Bytes {
    fn from(bytes: Vec<u8>) -> Self {
        Base64Bytes(bytes)
    }
}

impl From<&[u8]> for Base64Bytes {
    fn from(bytes: &[u8]) -> Self {
        Base64Bytes(bytes.to_vec())
    }
}

impl fmt::Debug for Base64Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Base64Bytes({} bytes)", self.0.len())
    }
}

impl Serialize for Base64Bytes {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&STANDARD.encode(&self.0))
    }
}

impl<'de> Deserialize<'de> for Base64Bytes {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = std::borrow::Cow::<str>::deserialize(deserializer)?;
        STANDARD
            .decode(text.as_bytes())
            .map(Base64Bytes)
            .map_err(|_| serde::de::Error::custom("invalid base64"))
    }
}

/// RFC 3339 timestamps (serde `with` module), e.g. `2025-03-01T08:00:00Z`.
pub mod rfc3339 {
    pub use time::serde::rfc3339::{deserialize, option, serialize};
}

/// Checks that a timestamp is in UTC.
pub(crate) fn check_utc(path: &str, t: &OffsetDateTime) -> Result<(), ProtocolError> {
    if t.offset().is_utc() {
        Ok(())
    } else {
        Err(ProtocolError::invalid(path, Problem::NotUtc))
    }
}

/// Checks free text: not empty, trimmed, no control characters, at most `max` characters.
pub(crate) fn check_text(path: &str, s: &str, max: usize) -> Result<(), ProtocolError> {
    if s.trim().is_empty() {
        return Err(ProtocolError::invalid(path, Problem::Empty));
    }
    if s.trim() != s {
        return Err(ProtocolError::invalid(path, Problem::Untrimmed));
    }
    if s.chars().any(char::is_control) {
        return Err(ProtocolError::invalid(path, Problem::ControlCharacter));
    }
    if s.chars().count() > max {
        return Err(ProtocolError::invalid(path, Problem::TooLong { max }));
    }
    Ok(())
}

/// Makes `s` acceptable free text for a field of at most `max` characters (see
/// [`check_text`]'s rules): control characters become spaces, the text is cut to `max`
/// characters and trimmed, and an empty result becomes `-`. For texts a station builds from
/// things it does not control (error messages, the platform's own reasons).
pub fn fit_text(s: &str, max: usize) -> String {
    let cleaned: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(max.max(1))
        .collect();
    let trimmed = cleaned.trim();
    if trimmed.is_empty() {
        "-".to_owned()
    } else {
        trimmed.to_owned()
    }
}

/// Checks a list's length: at most `max` entries.
pub(crate) fn check_len<T>(path: &str, list: &[T], max: usize) -> Result<(), ProtocolError> {
    if list.len() > max {
        return Err(ProtocolError::invalid(path, Problem::TooLong { max }));
    }
    Ok(())
}

#[cfg(test)]
mod fit_tests {
    use super::*;

    #[test]
    fn fitted_text_always_passes_the_check() {
        let long = "x".repeat(600);
        for (input, max) in [
            ("", 10),
            ("   ", 10),
            ("a\nb\tc", 10),
            ("word ", 5),
            (long.as_str(), 512),
            (" 前后 ", 3),
            ("reason ending in a space at the cut", 28),
        ] {
            let fitted = fit_text(input, max);
            assert!(
                check_text("f", &fitted, max).is_ok(),
                "{input:?} -> {fitted:?}"
            );
        }
        assert_eq!(fit_text("a\nb", 10), "a b");
    }
}
