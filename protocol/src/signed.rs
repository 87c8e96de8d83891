//! Signed platform messages: jobs, acks, cancels and certificate responses, each a JWS
//! ([`crate::jws`]) whose `typ` names its kind and whose payload names the station (and the job,
//! or the event ids) it is meant for.
//!
//! [`JobEnvelope::verify`] checks, in this order: the key id is trusted and fits the algorithm,
//! the signature over the exact received bytes, the message kind (`ukey-job+jws`), the job
//! document (version, validation), the station, the validity window. The other messages go
//! through [`verify_platform_message`] (key, signature, kind, validation, station). The nonce
//! replay check needs the station's memory of nonces, so it is a separate function
//! ([`check_nonce`]) against a set the caller keeps. This module reads no clock: `now` is
//! given. Algorithms: `ES256` (ECDSA P-256 with SHA-256, signature as the fixed 64-byte
//! `r ‖ s`), `RS256` (RSASSA-PKCS1-v1_5 with SHA-256) and `PS256` (RSASSA-PSS with SHA-256,
//! MGF1-SHA-256, 32-byte salt), as RFC 7518 defines them.

use std::collections::{BTreeSet, HashSet};
use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::Sha256;
use signature::{RandomizedSigner, SignatureEncoding, Signer, Verifier};
use spki::DecodePublicKey;
use time::{Duration, OffsetDateTime};

use crate::ack::Ack;
use crate::bundle::CertResponse;
use crate::cancel::Cancel;
use crate::codec::{MAX_MESSAGE_BYTES, Message};
use crate::error::ProtocolError;
use crate::ids::{Nonce, StationId};
use crate::job::JobDocument;
use crate::jws::Jws;
use crate::seal::key_error;

/// How far in the future a job's `issued_at` may lie before it is refused (clock skew).
pub const MAX_CLOCK_SKEW: Duration = Duration::minutes(5);

/// The signature algorithm of a signed job (JOSE names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum SignatureAlgorithm {
    /// ECDSA P-256 / SHA-256, fixed-size `r ‖ s` (64 bytes).
    #[serde(rename = "ES256")]
    Es256,
    /// RSASSA-PSS / SHA-256, MGF1-SHA-256, salt 32 bytes.
    #[serde(rename = "PS256")]
    Ps256,
    /// RSASSA-PKCS1-v1_5 / SHA-256.
    #[serde(rename = "RS256")]
    Rs256,
}

impl SignatureAlgorithm {
    /// The JOSE name.
    pub fn as_str(self) -> &'static str {
        match self {
            SignatureAlgorithm::Es256 => "ES256",
            SignatureAlgorithm::Ps256 => "PS256",
            SignatureAlgorithm::Rs256 => "RS256",
        }
    }
}

/// A message the platform signs: its JWS `typ` and the station it is addressed to.
pub trait PlatformMessage: Message {
    /// The JWS `typ` of this kind of message.
    const TYP: &'static str;

    /// The station the message is meant for.
    fn station_id(&self) -> &StationId;
}

impl PlatformMessage for JobDocument {
    const TYP: &'static str = "ukey-job+jws";

    fn station_id(&self) -> &StationId {
        &self.station_id
    }
}

impl PlatformMessage for Ack {
    const TYP: &'static str = "ukey-ack+jws";

    fn station_id(&self) -> &StationId {
        &self.station_id
    }
}

impl PlatformMessage for Cancel {
    const TYP: &'static str = "ukey-cancel+jws";

    fn station_id(&self) -> &StationId {
        &self.station_id
    }
}

impl PlatformMessage for CertResponse {
    const TYP: &'static str = "ukey-certs+jws";

    fn station_id(&self) -> &StationId {
        &self.station_id
    }
}

/// Signs `message` with `key` under `key_id`: validates and encodes it canonically, signs
/// those bytes and returns the JWS as it is published.
pub fn sign_platform_message<M: PlatformMessage>(
    message: &M,
    key: &JobSigningKey,
    key_id: &str,
) -> Result<Vec<u8>, ProtocolError> {
    let jws = Jws::sign(&message.encode()?, M::TYP, key, key_id)?;
    let wire = jws.encode()?;
    if wire.len() > MAX_MESSAGE_BYTES {
        return Err(ProtocolError::TooLarge {
            message: M::NAME,
            size: wire.len(),
            limit: MAX_MESSAGE_BYTES,
        });
    }
    Ok(wire)
}

/// Verifies a signed platform message as received and returns it, if: it is a JWS; its `kid`
/// is in `keys` with a key that fits its `alg`; the signature verifies over the received
/// bytes; its `typ` is `M`'s; the payload decodes and validates; and it is addressed to
/// `station`. An unsigned message is [`ProtocolError::Unsigned`].
pub fn verify_platform_message<M: PlatformMessage>(
    bytes: &[u8],
    keys: &JobKeyring,
    station: &StationId,
) -> Result<M, ProtocolError> {
    let jws = Jws::decode(bytes, M::NAME, MAX_MESSAGE_BYTES)?;
    let message = M::decode(jws.verify(M::TYP, keys)?)?;
    if message.station_id() != station {
        return Err(ProtocolError::OtherStation {
            message: M::NAME,
            expected: station.to_string(),
            got: message.station_id().to_string(),
        });
    }
    Ok(message)
}

/// A signed job as it arrives on `{p}/stations/{sid}/jobs`: a JWS of `typ` `ukey-job+jws`
/// whose payload is the [`JobDocument`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct JobEnvelope(Jws);

impl Message for JobEnvelope {
    const NAME: &'static str = "job envelope";
    const MAX_BYTES: usize = MAX_MESSAGE_BYTES;

    /// Only the envelope's shape (checked when parsed); the job is checked by
    /// [`JobEnvelope::verify`], after the signature.
    fn validate(&self) -> Result<(), ProtocolError> {
        Ok(())
    }

    /// A JWS has no `v` of its own (the job inside has): parsed by [`Jws::decode`].
    fn decode(bytes: &[u8]) -> Result<JobEnvelope, ProtocolError> {
        Jws::decode(bytes, Self::NAME, Self::MAX_BYTES).map(JobEnvelope)
    }

    fn encode(&self) -> Result<Vec<u8>, ProtocolError> {
        self.0.encode()
    }
}

impl JobEnvelope {
    /// The job document's bytes as carried in the payload (before verification: use them
    /// unverified only to name the job in a refusal).
    pub fn job_bytes(&self) -> &[u8] {
        self.0.payload()
    }

    /// The JWS: header, payload and signature.
    pub fn jws(&self) -> &Jws {
        &self.0
    }

    /// Verifies the envelope and returns the job, if: the `kid` is in `keys` with a key
    /// that fits the `alg`; the signature verifies over the received bytes; the `typ` is a
    /// job's; the job decodes and validates; it is addressed to `station`; and `now` lies
    /// within [`issued_at` - [`MAX_CLOCK_SKEW`], `expires_at`].
    ///
    /// The nonce is not checked here: see [`check_nonce`].
    pub fn verify(
        &self,
        keys: &JobKeyring,
        station: &StationId,
        now: OffsetDateTime,
    ) -> Result<JobDocument, ProtocolError> {
        let job = JobDocument::decode(self.0.verify(JobDocument::TYP, keys)?)?;
        if &job.station_id != station {
            return Err(ProtocolError::WrongStation {
                job_id: job.job_id.to_string(),
                expected: station.to_string(),
                got: job.station_id.to_string(),
            });
        }
        if now > job.expires_at {
            return Err(ProtocolError::Expired {
                job_id: job.job_id.to_string(),
                expires_at: job.expires_at,
            });
        }
        if job.issued_at > now + MAX_CLOCK_SKEW {
            return Err(ProtocolError::NotYetValid {
                job_id: job.job_id.to_string(),
                issued_at: job.issued_at,
            });
        }
        Ok(job)
    }
}

/// A public key the station trusts to sign jobs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobVerifyingKey {
    /// EC P-256: `ES256`.
    P256(p256::ecdsa::VerifyingKey),
    /// RSA: `RS256` or `PS256`.
    Rsa(rsa::PublicKey),
}

impl JobVerifyingKey {
    /// Parses a DER SubjectPublicKeyInfo (P-256 or RSA).
    pub fn from_public_key_der(der: &[u8]) -> Result<JobVerifyingKey, ProtocolError> {
        if let Ok(key) = p256::ecdsa::VerifyingKey::from_public_key_der(der) {
            return Ok(JobVerifyingKey::P256(key));
        }
        rsa::PublicKey::from_public_key_der(der)
            .map(JobVerifyingKey::Rsa)
            .map_err(|e| key_error("job verifying key", &e))
    }

    /// Parses a PEM `PUBLIC KEY` (P-256 or RSA).
    pub fn from_public_key_pem(pem: &str) -> Result<JobVerifyingKey, ProtocolError> {
        JobVerifyingKey::from_public_key_der(&crate::pem::single(
            pem,
            "PUBLIC KEY",
            "job verifying key",
        )?)
    }

    /// The modulus size in bits of an RSA key (`None` for an EC key): the station refuses
    /// short ones at load.
    pub fn rsa_bits(&self) -> Option<u32> {
        use rsa::traits::PublicKeyParts;
        match self {
            JobVerifyingKey::P256(_) => None,
            JobVerifyingKey::Rsa(key) => Some(key.n().bit_width()),
        }
    }

    fn key_type(&self) -> &'static str {
        match self {
            JobVerifyingKey::P256(_) => "EC P-256",
            JobVerifyingKey::Rsa(_) => "RSA",
        }
    }

    pub(crate) fn verify(
        &self,
        alg: SignatureAlgorithm,
        key_id: &str,
        msg: &[u8],
        sig: &[u8],
    ) -> Result<(), ProtocolError> {
        let bad = || ProtocolError::BadSignature {
            key_id: key_id.to_owned(),
        };
        match (alg, self) {
            (SignatureAlgorithm::Es256, JobVerifyingKey::P256(key)) => {
                // ring verifies `r ‖ s` about three times faster than p256 does.
                let point = p256::PublicKey::from(key).to_sec1_bytes();
                ring::signature::UnparsedPublicKey::new(
                    &ring::signature::ECDSA_P256_SHA256_FIXED,
                    &point,
                )
                .verify(msg, sig)
                .map_err(|_| bad())
            }
            (SignatureAlgorithm::Rs256, JobVerifyingKey::Rsa(key)) => {
                let sig = rsa::pkcs1v15::Signature::try_from(sig).map_err(|_| bad())?;
                rsa::pkcs1v15::VerifyingKey::<Sha256>::new(key.clone())
                    .verify(msg, &sig)
                    .map_err(|_| bad())
            }
            (SignatureAlgorithm::Ps256, JobVerifyingKey::Rsa(key)) => {
                let sig = rsa::pss::Signature::try_from(sig).map_err(|_| bad())?;
                rsa::pss::VerifyingKey::<Sha256>::new(key.clone())
                    .verify(msg, &sig)
                    .map_err(|_| bad())
            }
            (alg, key) => Err(ProtocolError::SignatureAlgorithmMismatch {
                alg: alg.as_str(),
                key_type: key.key_type(),
                key_id: key_id.to_owned(),
            }),
        }
    }
}

/// The job-signing keys a station trusts, by key id.
#[derive(Debug, Clone, Default)]
pub struct JobKeyring {
    keys: Vec<(String, JobVerifyingKey)>,
}

impl JobKeyring {
    /// An empty keyring (trusts nothing).
    pub fn new() -> JobKeyring {
        JobKeyring::default()
    }

    /// A keyring with one key.
    pub fn single(key_id: impl Into<String>, key: JobVerifyingKey) -> JobKeyring {
        let mut ring = JobKeyring::new();
        ring.insert(key_id, key);
        ring
    }

    /// Trusts `key` under `key_id`, replacing an earlier key of that id.
    pub fn insert(&mut self, key_id: impl Into<String>, key: JobVerifyingKey) {
        let key_id = key_id.into();
        self.keys.retain(|(id, _)| *id != key_id);
        self.keys.push((key_id, key));
    }

    /// The number of keys trusted.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether no key is trusted.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The key of `key_id`.
    pub fn get(&self, key_id: &str) -> Option<&JobVerifyingKey> {
        self.keys
            .iter()
            .find(|(id, _)| id == key_id)
            .map(|(_, k)| k)
    }
}

/// A private key that signs jobs (the platform's; in this project the simulated platform's and
/// the tests'). `Debug` hides the key.
#[derive(Clone)]
pub enum JobSigningKey {
    /// `ES256`.
    Es256(p256::ecdsa::SigningKey),
    /// `RS256`.
    Rs256(rsa::PrivateKey),
    /// `PS256`.
    Ps256(rsa::PrivateKey),
}

impl fmt::Debug for JobSigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "JobSigningKey::{}(<secret>)", self.alg().as_str())
    }
}

impl JobSigningKey {
    /// The algorithm this key signs with.
    pub fn alg(&self) -> SignatureAlgorithm {
        match self {
            JobSigningKey::Es256(_) => SignatureAlgorithm::Es256,
            JobSigningKey::Rs256(_) => SignatureAlgorithm::Rs256,
            JobSigningKey::Ps256(_) => SignatureAlgorithm::Ps256,
        }
    }

    /// The public key to trust on the station.
    pub fn verifying_key(&self) -> JobVerifyingKey {
        match self {
            JobSigningKey::Es256(k) => JobVerifyingKey::P256(*k.verifying_key()),
            JobSigningKey::Rs256(k) | JobSigningKey::Ps256(k) => {
                JobVerifyingKey::Rsa(k.to_public_key())
            }
        }
    }

    pub(crate) fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, ProtocolError> {
        let failed = |e: signature::Error| ProtocolError::Key {
            what: "job signing key",
            detail: e.to_string(),
        };
        match self {
            JobSigningKey::Es256(k) => {
                let sig: p256::ecdsa::Signature = k.try_sign(msg).map_err(failed)?;
                Ok(sig.to_bytes().to_vec())
            }
            JobSigningKey::Rs256(k) => rsa::pkcs1v15::SigningKey::<Sha256>::new(k.clone())
                .try_sign(msg)
                .map(|s| s.to_vec())
                .map_err(failed),
            JobSigningKey::Ps256(k) => rsa::pss::SigningKey::<Sha256>::new(k.clone())
                .try_sign_with_rng(&mut getrandom::SysRng, msg)
                .map(|s| s.to_vec())
                .map_err(failed),
        }
    }
}

/// Signs `job` with `key` under `key_id`: validates the job, encodes it canonically, signs
/// those bytes and wraps them in a JWS (encode it with [`Message::encode`]).
pub fn sign_job(
    job: &JobDocument,
    key: &JobSigningKey,
    key_id: &str,
) -> Result<JobEnvelope, ProtocolError> {
    let envelope = JobEnvelope(Jws::sign(&job.encode()?, JobDocument::TYP, key, key_id)?);
    let size = envelope.encode()?.len();
    if size > JobEnvelope::MAX_BYTES {
        return Err(ProtocolError::TooLarge {
            message: JobEnvelope::NAME,
            size,
            limit: JobEnvelope::MAX_BYTES,
        });
    }
    Ok(envelope)
}

/// The nonces a station has already accepted. The agent keeps this state (journaled);
/// implementations exist for the standard sets.
pub trait NonceSet {
    /// Whether `nonce` was seen before.
    fn contains_nonce(&self, nonce: &Nonce) -> bool;
}

impl<S: std::hash::BuildHasher> NonceSet for HashSet<Nonce, S> {
    fn contains_nonce(&self, nonce: &Nonce) -> bool {
        self.contains(nonce)
    }
}

impl NonceSet for BTreeSet<Nonce> {
    fn contains_nonce(&self, nonce: &Nonce) -> bool {
        self.contains(nonce)
    }
}

impl<F: Fn(&Nonce) -> bool> NonceSet for F {
    fn contains_nonce(&self, nonce: &Nonce) -> bool {
        self(nonce)
    }
}

/// Refuses a job whose nonce is in `seen` ([`ProtocolError::Replay`]). Call after
/// [`JobEnvelope::verify`]; record the nonce once the job is journaled.
pub fn check_nonce(job: &JobDocument, seen: &impl NonceSet) -> Result<(), ProtocolError> {
    if seen.contains_nonce(&job.nonce) {
        return Err(ProtocolError::Replay {
            job_id: job.job_id.to_string(),
        });
    }
    Ok(())
}
