//! The signed envelope of every platform message: a JWS (RFC 7515) in the flattened JSON
//! serialization, `{"protected":"…","payload":"…","signature":"…"}`, each member base64url
//! without padding.
//!
//! The protected header is exactly `{"alg":…,"kid":…,"typ":…}`: `alg` is one of the JWA
//! algorithms of [`SignatureAlgorithm`] (`ES256`, `RS256`, `PS256`), `kid` names the
//! platform's key, and `typ` names the message kind (e.g. `ukey-job+jws`), so a signed
//! message of one kind never passes as another. Anything else in the header (`crit`, `b64`,
//! `jku`, …) and an unprotected `header` member are refused: a verifier that ignored them
//! could be made to check something other than what the platform meant.
//!
//! The signature is checked over the JWS signing input built from the **exact received**
//! `protected` and `payload` strings (`protected ‖ "." ‖ payload`), never over a
//! re-serialization. This module only parses, signs and verifies; which message kinds exist
//! and what their payload must bind is [`crate::signed`]'s.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};

use crate::codec::check_text;
use crate::error::{Problem, ProtocolError};
use crate::signed::{JobKeyring, JobSigningKey, SignatureAlgorithm};

/// Upper bound of what a JWS adds to its payload's base64url text: the protected header (at
/// most ~180 characters encoded), an RSA-4096 signature (683 characters) and the JSON members.
pub const JWS_OVERHEAD_BYTES: usize = 1024;

/// The largest payload that still fits a JWS of `wire_bytes` bytes (base64url grows it by 4/3).
pub const fn max_payload_for(wire_bytes: usize) -> usize {
    (wire_bytes - JWS_OVERHEAD_BYTES) / 4 * 3
}

/// Longest `typ` accepted.
const MAX_TYP_CHARS: usize = 64;
/// Longest `kid` accepted.
const MAX_KID_CHARS: usize = 64;
/// Longest signature accepted (RSA-8192).
const MAX_SIGNATURE_BYTES: usize = 1024;

/// The JWS protected header, exactly these three members.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwsHeader {
    /// The signature algorithm.
    pub alg: SignatureAlgorithm,
    /// Which of the platform's keys signed (1-64 characters); lets the platform rotate keys.
    pub kid: String,
    /// The message kind, e.g. `ukey-job+jws`.
    pub typ: String,
}

/// The JSON members as they travel.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct JwsWire {
    protected: String,
    payload: String,
    signature: String,
}

/// Only whether the object looks signed, to tell "unsigned" apart from "malformed".
#[derive(Deserialize)]
struct SignedProbe {
    protected: Option<serde::de::IgnoredAny>,
    signature: Option<serde::de::IgnoredAny>,
}

/// A parsed JWS: the received strings (what the signature covers) and their decoded contents.
/// Parsing checks the shape only; [`Jws::verify`] checks the signature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "JwsWire", into = "JwsWire")]
pub struct Jws {
    protected: String,
    payload: String,
    signature: String,
    header: JwsHeader,
    payload_bytes: Vec<u8>,
    signature_bytes: Vec<u8>,
}

fn b64_field(field: &'static str, text: &str) -> Result<Vec<u8>, ProtocolError> {
    URL_SAFE_NO_PAD.decode(text).map_err(|_| {
        ProtocolError::invalid(
            field,
            Problem::BadBinary {
                detail: "not base64url without padding",
            },
        )
    })
}

impl TryFrom<JwsWire> for Jws {
    type Error = ProtocolError;

    fn try_from(wire: JwsWire) -> Result<Jws, ProtocolError> {
        let header_bytes = b64_field("protected", &wire.protected)?;
        let header: JwsHeader =
            serde_json::from_slice(&header_bytes).map_err(|e| ProtocolError::Malformed {
                message: "JWS protected header",
                detail: e.to_string(),
            })?;
        check_text("protected.kid", &header.kid, MAX_KID_CHARS)?;
        check_text("protected.typ", &header.typ, MAX_TYP_CHARS)?;
        let payload_bytes = b64_field("payload", &wire.payload)?;
        if payload_bytes.first() != Some(&b'{') {
            return Err(ProtocolError::invalid(
                "payload",
                Problem::BadBinary {
                    detail: "payload must be a JSON object",
                },
            ));
        }
        let signature_bytes = b64_field("signature", &wire.signature)?;
        if signature_bytes.is_empty() || signature_bytes.len() > MAX_SIGNATURE_BYTES {
            return Err(ProtocolError::invalid(
                "signature",
                Problem::BadBinary {
                    detail: "signature must be 1-1024 bytes",
                },
            ));
        }
        Ok(Jws {
            protected: wire.protected,
            payload: wire.payload,
            signature: wire.signature,
            header,
            payload_bytes,
            signature_bytes,
        })
    }
}

impl From<Jws> for JwsWire {
    fn from(jws: Jws) -> JwsWire {
        JwsWire {
            protected: jws.protected,
            payload: jws.payload,
            signature: jws.signature,
        }
    }
}

impl Jws {
    /// Parses a JWS of at most `max_bytes` bytes carrying a `message`: size → JSON object →
    /// signed at all ([`ProtocolError::Unsigned`]) → members and header.
    pub fn decode(
        bytes: &[u8],
        message: &'static str,
        max_bytes: usize,
    ) -> Result<Jws, ProtocolError> {
        if bytes.len() > max_bytes {
            return Err(ProtocolError::TooLarge {
                message,
                size: bytes.len(),
                limit: max_bytes,
            });
        }
        let malformed = |e: serde_json::Error| ProtocolError::Malformed {
            message,
            detail: e.to_string(),
        };
        if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
            return Err(ProtocolError::Malformed {
                message,
                detail: "not a JSON object".to_owned(),
            });
        }
        let probe: SignedProbe = serde_json::from_slice(bytes).map_err(malformed)?;
        if probe.protected.is_none() && probe.signature.is_none() {
            return Err(ProtocolError::Unsigned { message });
        }
        let wire: JwsWire = serde_json::from_slice(bytes).map_err(malformed)?;
        Jws::try_from(wire)
    }

    /// The wire form: compact JSON, members in the order `protected`, `payload`, `signature`.
    pub fn encode(&self) -> Result<Vec<u8>, ProtocolError> {
        serde_json::to_vec(&JwsWire::from(self.clone())).map_err(|e| ProtocolError::Malformed {
            message: "JWS",
            detail: e.to_string(),
        })
    }

    /// Signs `payload` (the encoded message) as a message of kind `typ` with `key` under `kid`.
    pub fn sign(
        payload: &[u8],
        typ: &str,
        key: &JobSigningKey,
        kid: &str,
    ) -> Result<Jws, ProtocolError> {
        let header = JwsHeader {
            alg: key.alg(),
            kid: kid.to_owned(),
            typ: typ.to_owned(),
        };
        let header_json = serde_json::to_vec(&header).map_err(|e| ProtocolError::Malformed {
            message: "JWS protected header",
            detail: e.to_string(),
        })?;
        let protected = URL_SAFE_NO_PAD.encode(header_json);
        let payload_text = URL_SAFE_NO_PAD.encode(payload);
        let signature_bytes = key.sign(signing_input(&protected, &payload_text).as_bytes())?;
        Jws::try_from(JwsWire {
            protected,
            payload: payload_text,
            signature: URL_SAFE_NO_PAD.encode(&signature_bytes),
        })
    }

    /// Checks the signature with the key `kid` names in `keys`, then that the message kind is
    /// `typ`; returns the payload bytes. Verification comes first so that every refusal of a
    /// forged message is a signature error.
    pub fn verify(&self, typ: &'static str, keys: &JobKeyring) -> Result<&[u8], ProtocolError> {
        let kid = &self.header.kid;
        let key = keys.get(kid).ok_or_else(|| ProtocolError::UnknownKeyId {
            key_id: kid.clone(),
        })?;
        key.verify(
            self.header.alg,
            kid,
            signing_input(&self.protected, &self.payload).as_bytes(),
            &self.signature_bytes,
        )?;
        if self.header.typ != typ {
            return Err(ProtocolError::WrongMessageType {
                expected: typ,
                got: self.header.typ.clone(),
            });
        }
        Ok(&self.payload_bytes)
    }

    /// The protected header.
    pub fn header(&self) -> &JwsHeader {
        &self.header
    }

    /// The decoded payload (not yet verified unless [`Jws::verify`] said so).
    pub fn payload(&self) -> &[u8] {
        &self.payload_bytes
    }

    /// The decoded signature.
    pub fn signature(&self) -> &[u8] {
        &self.signature_bytes
    }
}

/// The JWS signing input, `ASCII(protected ‖ "." ‖ payload)` (RFC 7515 §5.1).
fn signing_input(protected: &str, payload: &str) -> String {
    let mut input = String::with_capacity(protected.len() + 1 + payload.len());
    input.push_str(protected);
    input.push('.');
    input.push_str(payload);
    input
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn es256() -> JobSigningKey {
        let sk = crate::seal::random_p256_key().unwrap();
        JobSigningKey::Es256(p256::ecdsa::SigningKey::from(sk))
    }

    #[test]
    fn round_trip_and_type_binding() {
        let key = es256();
        let ring = JobKeyring::single("k", key.verifying_key());
        let jws = Jws::sign(br#"{"v":1}"#, "ukey-ack+jws", &key, "k").unwrap();
        let wire = jws.encode().unwrap();
        let back = Jws::decode(&wire, "ack", 1024).unwrap();
        assert_eq!(back, jws);
        assert_eq!(back.verify("ukey-ack+jws", &ring).unwrap(), br#"{"v":1}"#);
        assert!(matches!(
            back.verify("ukey-job+jws", &ring),
            Err(ProtocolError::WrongMessageType { .. })
        ));
    }

    #[test]
    fn extra_header_members_and_unsigned_objects_are_refused() {
        let crit = URL_SAFE_NO_PAD.encode(br#"{"alg":"ES256","kid":"k","typ":"t","crit":["x"]}"#);
        let wire = format!(r#"{{"protected":"{crit}","payload":"e30","signature":"AAAA"}}"#);
        assert!(matches!(
            Jws::decode(wire.as_bytes(), "ack", 1024),
            Err(ProtocolError::Malformed { .. })
        ));
        assert_eq!(
            Jws::decode(br#"{"v":1,"event_ids":["E-1"]}"#, "ack", 1024),
            Err(ProtocolError::Unsigned { message: "ack" })
        );
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"ES256","kid":"k","typ":"t"}"#);
        let unprotected = format!(
            r#"{{"protected":"{header}","header":{{"kid":"k"}},"payload":"e30","signature":"AAAA"}}"#
        );
        assert!(matches!(
            Jws::decode(unprotected.as_bytes(), "ack", 1024),
            Err(ProtocolError::Malformed { .. })
        ));
    }
}
