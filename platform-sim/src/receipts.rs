//! The platform's own check of a station's production receipt: the JWS envelope read and its
//! signature verified here, on p256's and rsa's verifiers, with the station public key the
//! platform registered — not with the protocol's receipt verifier, which the station's own
//! `audit verify` uses, so that a flaw in one shows up as a disagreement with the other.
//!
//! Rules checked (docs/PROTOCOL.md, "Production receipt"): the flattened JSON serialization
//! with exactly `protected`, `payload`, `signature`; a protected header of exactly `alg`,
//! `kid`, `typ`, with `typ` `ukey-receipt+jws` and `kid` the first 16 bytes of SHA-256 over
//! the station key's SubjectPublicKeyInfo (hex); `ES256` (raw `r ‖ s`) for a P-256 key,
//! `PS256` or `RS256` for an RSA key; the signature over the received `protected.payload`.
//! The payload is then read as the protocol's `Receipt` (its validation included).

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use signature::Verifier;
use spki::EncodePublicKey;
use ukey_protocol::{Message, Receipt, SealRecipient};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Envelope {
    protected: String,
    payload: String,
    signature: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Header {
    alg: String,
    kid: String,
    typ: String,
}

/// The `kid` a station key signs receipts under.
pub fn station_kid(key: &SealRecipient) -> Result<String, String> {
    let der = match key {
        SealRecipient::P256(k) => k.to_public_key_der(),
        SealRecipient::Rsa(k) => k.to_public_key_der(),
    }
    .map_err(|e| format!("station key: {e}"))?;
    Ok(hex::encode(&Sha256::digest(der.as_bytes())[..16]))
}

fn b64(field: &str, text: &str) -> Result<Vec<u8>, String> {
    URL_SAFE_NO_PAD
        .decode(text)
        .map_err(|e| format!("{field}: not base64url without padding ({e})"))
}

/// Verifies a signed receipt as received against `station_key` and returns the receipt; the
/// error says what is wrong.
pub fn verify_receipt(bytes: &[u8], station_key: &SealRecipient) -> Result<Receipt, String> {
    let envelope: Envelope =
        serde_json::from_slice(bytes).map_err(|e| format!("not a signed receipt: {e}"))?;
    let header: Header = serde_json::from_slice(&b64("protected", &envelope.protected)?)
        .map_err(|e| format!("protected header: {e}"))?;
    if header.typ != "ukey-receipt+jws" {
        return Err(format!("typ {:?} is not ukey-receipt+jws", header.typ));
    }
    let kid = station_kid(station_key)?;
    if header.kid != kid {
        return Err(format!(
            "kid {} is not the station key's ({kid})",
            header.kid
        ));
    }
    let input = format!("{}.{}", envelope.protected, envelope.payload);
    let sig = b64("signature", &envelope.signature)?;
    let bad = |e: signature::Error| format!("{} signature does not verify: {e}", header.alg);
    match (header.alg.as_str(), station_key) {
        ("ES256", SealRecipient::P256(key)) => {
            let sig = p256::ecdsa::Signature::from_slice(&sig).map_err(bad)?;
            p256::ecdsa::VerifyingKey::from(key)
                .verify(input.as_bytes(), &sig)
                .map_err(bad)?;
        }
        ("PS256", SealRecipient::Rsa(key)) => {
            let sig = rsa::pss::Signature::try_from(sig.as_slice()).map_err(bad)?;
            rsa::pss::VerifyingKey::<Sha256>::new(key.clone())
                .verify(input.as_bytes(), &sig)
                .map_err(bad)?;
        }
        ("RS256", SealRecipient::Rsa(key)) => {
            let sig = rsa::pkcs1v15::Signature::try_from(sig.as_slice()).map_err(bad)?;
            rsa::pkcs1v15::VerifyingKey::<Sha256>::new(key.clone())
                .verify(input.as_bytes(), &sig)
                .map_err(bad)?;
        }
        (alg, _) => return Err(format!("alg {alg} does not fit the station's key")),
    }
    Receipt::decode(&b64("payload", &envelope.payload)?).map_err(|e| format!("receipt: {e}"))
}
