//! Sealed secrets: how PINs travel (invariant 6 — PINs never travel in clear).
//!
//! A secret is sealed to the recipient's public key and bound to a *context* (job id and
//! purpose, e.g. `job/J-1/so-pin`), so a sealed PIN cannot be replayed into another job or
//! another field. Two constructions, chosen by the recipient's key type:
//!
//! * **EC P-256 (HPKE)**: RFC 9180 base mode with DHKEM(P-256, HKDF-SHA256) (KEM `0x0010`),
//!   HKDF-SHA256 (KDF `0x0001`) and AES-256-GCM (AEAD `0x0002`), single shot; `info` =
//!   [`SEAL_LABEL`] ‖ `0x00` ‖ context, `aad` empty (the context is bound through the key
//!   schedule, and single-shot APIs such as Python `cryptography`'s take no `aad`). The
//!   sealed secret carries `enc` (the encapsulated key, a 65-byte SEC1 uncompressed point) and
//!   `ct` (ciphertext ‖ 16-byte tag).
//! * **RSA (OAEP)**: RSAES-OAEP with SHA-256 and MGF1-SHA-256, the OAEP label being
//!   [`SEAL_LABEL`] ‖ `0x00` ‖ context.
//!
//! [`SealedSecret`] is the serde type; its `Debug` never prints content. Unsealing returns
//! `Zeroizing` bytes and fails with one opaque error for wrong key, wrong context and
//! tampering alike. Randomness comes from the operating system (`getrandom`).
//!
//! Sealing encapsulates with [`ring_kem`] (the same DHKEM on ring's faster P-256); opening
//! uses the `hpke` crate's DHKEM. Both are the one KEM of RFC 9180, so either side can be
//! any implementation of it.

mod ring_kem;

use std::fmt;

use hpke::{Deserializable, OpModeR, OpModeS, Serializable};
use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use spki::DecodePublicKey;
use zeroize::Zeroizing;

use crate::codec::Base64Bytes;
use crate::error::{Problem, ProtocolError};
use crate::ids::JobId;

/// Domain-separation label of the sealing construction, version 1.
pub const SEAL_LABEL: &[u8] = b"ukey-station seal v1";

/// Longest secret that can be sealed (PINs are far shorter).
pub const MAX_SECRET_BYTES: usize = 256;

/// AES-GCM tag length.
const TAG_BYTES: usize = 16;
/// SEC1 uncompressed P-256 point length (HPKE's `enc` for DHKEM(P-256)).
const POINT_BYTES: usize = 65;

/// The HPKE suite of [`SealedSecret::Hpke`].
type HpkeKem = hpke::kem::DhP256HkdfSha256;
type HpkeKdf = hpke::kdf::HkdfSha256;
type HpkeAead = hpke::aead::AesGcm256;

/// The `alg` of [`SealedSecret::Hpke`].
const HPKE_ALG: &str = "HPKE-P256-SHA256-A256GCM";

/// What a sealed secret is for; part of its [`SealContext`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SealPurpose {
    /// The token's security officer PIN.
    SoPin,
    /// The token's user PIN.
    UserPin,
}

impl SealPurpose {
    /// The purpose's spelling in the context string.
    pub fn as_str(self) -> &'static str {
        match self {
            SealPurpose::SoPin => "so-pin",
            SealPurpose::UserPin => "user-pin",
        }
    }
}

/// The context a secret is bound to: `job/{job_id}/{purpose}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SealContext(String);

impl SealContext {
    /// The context of a job's secret of the given purpose.
    pub fn for_job(job_id: &JobId, purpose: SealPurpose) -> SealContext {
        SealContext(format!("job/{job_id}/{}", purpose.as_str()))
    }

    /// The context as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// [`SEAL_LABEL`] ‖ `0x00` ‖ context: HPKE `info` and OAEP label.
    fn info(&self) -> Vec<u8> {
        let mut info = Vec::with_capacity(SEAL_LABEL.len() + 1 + self.0.len());
        info.extend_from_slice(SEAL_LABEL);
        info.push(0);
        info.extend_from_slice(self.0.as_bytes());
        info
    }
}

/// A secret sealed to a recipient's public key. Serialized with its `alg` first.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "alg")]
pub enum SealedSecret {
    /// HPKE base mode to a P-256 key (see the module docs).
    #[serde(rename = "HPKE-P256-SHA256-A256GCM")]
    Hpke {
        /// The encapsulated key, SEC1 uncompressed (65 bytes).
        enc: Base64Bytes,
        /// Ciphertext followed by the 16-byte tag.
        ct: Base64Bytes,
    },
    /// RSAES-OAEP-SHA256 (see the module docs).
    #[serde(rename = "RSA-OAEP-SHA256")]
    RsaOaep {
        /// The RSA ciphertext (the modulus size).
        ct: Base64Bytes,
    },
}

impl fmt::Debug for SealedSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SealedSecret({}, <sealed>)", self.alg())
    }
}

/// Whom a secret is sealed to: a P-256 or RSA public key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SealRecipient {
    /// An EC P-256 public key (HPKE).
    P256(p256::PublicKey),
    /// An RSA public key (OAEP; 2048 bits or more).
    Rsa(rsa::PublicKey),
}

impl SealRecipient {
    /// The modulus size in bits of an RSA key (`None` for an EC key): the station refuses
    /// short ones at load.
    pub fn rsa_bits(&self) -> Option<u32> {
        use rsa::traits::PublicKeyParts;
        match self {
            SealRecipient::P256(_) => None,
            SealRecipient::Rsa(key) => Some(key.n().bit_width()),
        }
    }

    /// Parses a DER SubjectPublicKeyInfo (P-256 or RSA).
    pub fn from_public_key_der(der: &[u8]) -> Result<SealRecipient, ProtocolError> {
        if let Ok(key) = p256::PublicKey::from_public_key_der(der) {
            return Ok(SealRecipient::P256(key));
        }
        rsa::PublicKey::from_public_key_der(der)
            .map(SealRecipient::Rsa)
            .map_err(|e| key_error("sealing public key", &e))
    }

    /// Parses a PEM `PUBLIC KEY` (P-256 or RSA).
    pub fn from_public_key_pem(pem: &str) -> Result<SealRecipient, ProtocolError> {
        SealRecipient::from_public_key_der(&crate::pem::single(
            pem,
            "PUBLIC KEY",
            "sealing public key",
        )?)
    }
}

/// The private key that unseals secrets sealed to its [`SealRecipient`]. `Debug` hides it.
#[derive(Clone)]
pub enum UnsealKey {
    /// An EC P-256 private key.
    P256(p256::SecretKey),
    /// An RSA private key (boxed: it is much larger than an EC key).
    Rsa(Box<rsa::PrivateKey>),
}

impl fmt::Debug for UnsealKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UnsealKey::P256(_) => f.write_str("UnsealKey::P256(<secret>)"),
            UnsealKey::Rsa(_) => f.write_str("UnsealKey::Rsa(<secret>)"),
        }
    }
}

impl UnsealKey {
    /// Parses a DER PKCS#8 private key (P-256 or RSA).
    pub fn from_pkcs8_der(der: &[u8]) -> Result<UnsealKey, ProtocolError> {
        use p256::pkcs8::DecodePrivateKey;
        if let Ok(key) = p256::SecretKey::from_pkcs8_der(der) {
            return Ok(UnsealKey::P256(key));
        }
        rsa::PrivateKey::from_pkcs8_der(der)
            .map(|k| UnsealKey::Rsa(Box::new(k)))
            .map_err(|e| key_error("unsealing private key", &e))
    }

    /// Parses a PEM `PRIVATE KEY` (PKCS#8, P-256 or RSA).
    pub fn from_pkcs8_pem(pem: &str) -> Result<UnsealKey, ProtocolError> {
        UnsealKey::from_pkcs8_der(&crate::pem::single(
            pem,
            "PRIVATE KEY",
            "unsealing private key",
        )?)
    }

    /// The public half, to seal to.
    pub fn recipient(&self) -> SealRecipient {
        match self {
            UnsealKey::P256(k) => SealRecipient::P256(k.public_key()),
            UnsealKey::Rsa(k) => SealRecipient::Rsa(k.to_public_key()),
        }
    }

    /// The key's secret value in one canonical encoding, whatever file it was read from:
    /// the P-256 scalar (32 bytes, big-endian), or the RSA private exponent (big-endian,
    /// the modulus's length). Input for deriving other keys from this one; never store it.
    pub fn secret_material(&self) -> Zeroizing<Vec<u8>> {
        match self {
            UnsealKey::P256(k) => Zeroizing::new(k.to_bytes().to_vec()),
            UnsealKey::Rsa(k) => {
                use rsa::traits::PrivateKeyParts;
                Zeroizing::new(k.d().to_be_bytes().into_vec())
            }
        }
    }

    fn key_type(&self) -> &'static str {
        match self {
            UnsealKey::P256(_) => "EC P-256",
            UnsealKey::Rsa(_) => "RSA",
        }
    }
}

pub(crate) fn key_error(what: &'static str, e: &dyn fmt::Display) -> ProtocolError {
    ProtocolError::Key {
        what,
        detail: e.to_string(),
    }
}

/// Fills `N` bytes from the operating system's CSPRNG.
#[cfg(test)]
pub(crate) fn random_bytes<const N: usize>() -> Result<Zeroizing<[u8; N]>, ProtocolError> {
    let mut buf = Zeroizing::new([0u8; N]);
    getrandom::fill(buf.as_mut()).map_err(|e| ProtocolError::Random {
        detail: e.to_string(),
    })?;
    Ok(buf)
}

/// A fresh random P-256 secret key (rejection sampling on the 32 random bytes).
#[cfg(test)]
pub(crate) fn random_p256_key() -> Result<p256::SecretKey, ProtocolError> {
    for _ in 0..16 {
        let bytes = random_bytes::<32>()?;
        if let Ok(key) = p256::SecretKey::from_slice(bytes.as_ref()) {
            return Ok(key);
        }
    }
    Err(ProtocolError::Random {
        detail: "no valid P-256 scalar in 16 draws".to_owned(),
    })
}

/// Seals `plaintext` to `recipient`, bound to `context`.
pub fn seal(
    recipient: &SealRecipient,
    context: &SealContext,
    plaintext: &[u8],
) -> Result<SealedSecret, ProtocolError> {
    if plaintext.len() > MAX_SECRET_BYTES {
        return Err(ProtocolError::Seal {
            detail: format!("secret longer than {MAX_SECRET_BYTES} bytes"),
        });
    }
    let info = context.info();
    match recipient {
        SealRecipient::P256(rpk) => {
            let failed = |e: hpke::HpkeError| ProtocolError::Seal {
                detail: format!("HPKE: {e}"),
            };
            let rpk = <HpkeKem as hpke::Kem>::PublicKey::from_bytes(&rpk.to_sec1_bytes())
                .map_err(failed)?;
            let (enc, ct) = hpke::single_shot_seal::<HpkeAead, HpkeKdf, ring_kem::RingDhP256>(
                &OpModeS::Base,
                &rpk,
                &info,
                plaintext,
                &[],
            )
            .map_err(failed)?;
            Ok(SealedSecret::Hpke {
                enc: Base64Bytes::new(enc.to_bytes().to_vec()),
                ct: Base64Bytes::new(ct),
            })
        }
        SealRecipient::Rsa(pk) => {
            let padding = rsa::Oaep::<Sha256>::new_with_label(info);
            let ct = pk
                .encrypt(&mut getrandom::SysRng, padding, plaintext)
                .map_err(|e| ProtocolError::Seal {
                    detail: format!("RSA-OAEP: {e}"),
                })?;
            Ok(SealedSecret::RsaOaep {
                ct: Base64Bytes::new(ct),
            })
        }
    }
}

impl SealedSecret {
    /// The construction's name, as in the `alg` field.
    pub fn alg(&self) -> &'static str {
        match self {
            SealedSecret::Hpke { .. } => HPKE_ALG,
            SealedSecret::RsaOaep { .. } => "RSA-OAEP-SHA256",
        }
    }

    /// Opens the secret with `key`, which must be the recipient's, under the same `context`.
    pub fn unseal(
        &self,
        key: &UnsealKey,
        context: &SealContext,
    ) -> Result<Zeroizing<Vec<u8>>, ProtocolError> {
        let info = context.info();
        match (self, key) {
            (SealedSecret::Hpke { enc, ct }, UnsealKey::P256(sk)) => {
                let sk = <HpkeKem as hpke::Kem>::PrivateKey::from_bytes(&sk.to_bytes())
                    .map_err(|_| ProtocolError::Unseal)?;
                let enc = <HpkeKem as hpke::Kem>::EncappedKey::from_bytes(enc.as_bytes())
                    .map_err(|_| ProtocolError::Unseal)?;
                hpke::single_shot_open::<HpkeAead, HpkeKdf, HpkeKem>(
                    &OpModeR::Base,
                    &sk,
                    &enc,
                    &info,
                    ct.as_bytes(),
                    &[],
                )
                .map(Zeroizing::new)
                .map_err(|_| ProtocolError::Unseal)
            }
            (SealedSecret::RsaOaep { ct }, UnsealKey::Rsa(sk)) => {
                let padding = rsa::Oaep::<Sha256>::new_with_label(info);
                sk.decrypt_blinded(&mut getrandom::SysRng, padding, ct.as_bytes())
                    .map(Zeroizing::new)
                    .map_err(|_| ProtocolError::Unseal)
            }
            (sealed, key) => Err(ProtocolError::SealKeyMismatch {
                sealed_with: sealed.alg(),
                key_type: key.key_type(),
            }),
        }
    }

    /// Opens a sealed PIN (UTF-8 text).
    pub fn unseal_pin(
        &self,
        key: &UnsealKey,
        context: &SealContext,
    ) -> Result<SecretString, ProtocolError> {
        let bytes = self.unseal(key, context)?;
        let text = std::str::from_utf8(&bytes).map_err(|_| ProtocolError::Unseal)?;
        Ok(SecretString::from(text.to_owned()))
    }

    /// Checks the shape (lengths) without opening it.
    pub(crate) fn check(&self, path: &str) -> Result<(), ProtocolError> {
        match self {
            SealedSecret::Hpke { enc, ct } => {
                if enc.len() != POINT_BYTES || enc.as_bytes().first() != Some(&4) {
                    return Err(ProtocolError::invalid(
                        format!("{path}.enc"),
                        Problem::BadBinary {
                            detail: "not an uncompressed P-256 point (65 bytes, 0x04 first)",
                        },
                    ));
                }
                if ct.len() < TAG_BYTES || ct.len() > MAX_SECRET_BYTES + TAG_BYTES {
                    return Err(ProtocolError::invalid(
                        format!("{path}.ct"),
                        Problem::BadBinary {
                            detail: "ciphertext length out of range",
                        },
                    ));
                }
                Ok(())
            }
            SealedSecret::RsaOaep { ct } => {
                if !(256..=1024).contains(&ct.len()) {
                    return Err(ProtocolError::invalid(
                        format!("{path}.ct"),
                        Problem::BadBinary {
                            detail: "RSA ciphertext must be 256-1024 bytes",
                        },
                    ));
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use secrecy::ExposeSecret;

    fn job(id: &str) -> JobId {
        JobId::new(id).unwrap()
    }

    #[test]
    fn ec_round_trip_and_context_binding() {
        let key = UnsealKey::P256(random_p256_key().unwrap());
        let ctx = SealContext::for_job(&job("J1"), SealPurpose::SoPin);
        let sealed = seal(&key.recipient(), &ctx, b"12345678").unwrap();
        sealed.check("so_pin").unwrap();
        assert_eq!(sealed.unseal(&key, &ctx).unwrap().as_slice(), b"12345678");
        assert_eq!(
            sealed.unseal_pin(&key, &ctx).unwrap().expose_secret(),
            "12345678"
        );
        let other_job = SealContext::for_job(&job("J2"), SealPurpose::SoPin);
        let other_field = SealContext::for_job(&job("J1"), SealPurpose::UserPin);
        assert_eq!(sealed.unseal(&key, &other_job), Err(ProtocolError::Unseal));
        assert_eq!(
            sealed.unseal(&key, &other_field),
            Err(ProtocolError::Unseal)
        );
        let debug = format!("{sealed:?} {key:?}");
        assert!(!debug.contains("12345678"));
    }

    #[test]
    fn ciphertexts_differ_each_time() {
        let key = UnsealKey::P256(random_p256_key().unwrap());
        let ctx = SealContext::for_job(&job("J1"), SealPurpose::UserPin);
        let a = seal(&key.recipient(), &ctx, b"pin").unwrap();
        let b = seal(&key.recipient(), &ctx, b"pin").unwrap();
        assert_ne!(a, b);
    }

    #[test]
    fn oversized_secret_is_refused() {
        let key = UnsealKey::P256(random_p256_key().unwrap());
        let ctx = SealContext::for_job(&job("J1"), SealPurpose::UserPin);
        assert!(matches!(
            seal(&key.recipient(), &ctx, &[0u8; MAX_SECRET_BYTES + 1]),
            Err(ProtocolError::Seal { .. })
        ));
    }
}
