//! The activation self-test: each key proves, on the token, that it does its job.
//!
//! - A signing key signs a fresh random challenge (hashed on the host, SHA-256); the
//!   signature is verified in software (ring for P-256, rsa for RSA) with the certificate's
//!   public key (or the public key object when no certificate is installed yet).
//! - An RSA encryption key decrypts, on the token, a random secret encrypted in software to
//!   its public key: `CKM_RSA_PKCS_OAEP` when the module offers it (SHA-256, falling back to
//!   SHA-1 for modules such as SoftHSM 2.6 that only take SHA-1 parameters), else
//!   `CKM_RSA_PKCS`.
//! - An EC encryption key agrees a secret with a fresh software key (`CKM_ECDH1_DERIVE`,
//!   null KDF) and it must equal the software ECDH result (ring).
//!
//! The user must be logged in. A missing mechanism is reported as
//! [`TokenError::MechanismUnsupported`], not as a failed key. The token's certificates are
//! listed once for all the keys tested; each public key is read from the token.

use cryptoki::error::RvError;
use cryptoki::mechanism::elliptic_curve::{EcKdf, Ecdh1DeriveParams};
use cryptoki::mechanism::rsa::{PkcsMgfType, PkcsOaepParams, PkcsOaepSource};
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use der::Decode;
use sha2::{Digest, Sha256};
use signature::Verifier;
use ukey_protocol::{KeyAlgorithm, KeyLabel};
use x509_cert::Certificate;
use x509_cert::spki::SubjectPublicKeyInfoOwned;
use zeroize::Zeroizing;

use super::error::TokenError;
use super::objects::ObjectKind;
use super::session::Token;
use super::signer::is_mechanism_refusal;
use crate::certs::{key_algorithm, rsa_public_key};
use crate::device::latest;

/// What the self-test did for one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeySelfTest {
    /// The key pair.
    pub label: KeyLabel,
    /// Its algorithm.
    pub algorithm: KeyAlgorithm,
    /// The mechanism exercised on the token, e.g. `CKM_ECDSA`, `CKM_RSA_PKCS_OAEP(SHA-1)`.
    pub mechanism: &'static str,
    /// Whether the public key came from the installed certificate.
    pub used_certificate: bool,
}

fn random<const N: usize>() -> Result<Zeroizing<[u8; N]>, TokenError> {
    let mut buf = Zeroizing::new([0u8; N]);
    getrandom::fill(buf.as_mut()).map_err(|e| TokenError::Random(e.to_string()))?;
    Ok(buf)
}

impl Token {
    /// Runs the self-test for each of `labels` (usually [`KeyLabel::ALL`]); stops at the
    /// first failure.
    pub fn self_test(&self, labels: &[KeyLabel]) -> Result<Vec<KeySelfTest>, TokenError> {
        let certificates = self.certificate_listing()?;
        labels
            .iter()
            .map(|label| {
                let installed = latest(
                    certificates
                        .iter()
                        .filter(|(l, _)| l == label)
                        .map(|(_, der)| der.clone()),
                );
                self.self_test_key(*label, installed)
            })
            .collect()
    }

    /// Tests `label`'s key; `installed` is its certificate on the token, if any.
    fn self_test_key(
        &self,
        label: KeyLabel,
        installed: Option<Vec<u8>>,
    ) -> Result<KeySelfTest, TokenError> {
        let fail = |reason: String| TokenError::SelfTest {
            serial: self.serial.clone(),
            label,
            reason,
        };
        self.key_handle(ObjectKind::PrivateKey, label)?;
        let object_key = self.public_key(label)?;
        let (public, used_certificate) = match installed {
            Some(der) => {
                let cert = Certificate::from_der(&der)
                    .map_err(|e| fail(format!("installed certificate unreadable: {e}")))?;
                let spki = cert.tbs_certificate().subject_public_key_info().clone();
                if spki != object_key {
                    return Err(fail(
                        "installed certificate is for another key than the public key object"
                            .into(),
                    ));
                }
                (spki, true)
            }
            None => (object_key, false),
        };
        let algorithm = key_algorithm(&public)
            .ok_or_else(|| fail("public key is not P-256, RSA-2048, RSA-3072 or SM2".into()))?;
        if algorithm == KeyAlgorithm::Sm2 {
            return Err(self.sm2_not_over_pkcs11("self-test an SM2 key"));
        }
        let mechanism = self.with_key(ObjectKind::PrivateKey, label, |key| {
            let key = key.handle;
            if label.is_signing() {
                self.test_signing(label, key, algorithm, &public)
            } else if algorithm == KeyAlgorithm::P256 {
                self.test_ecdh(label, key, &public)
            } else {
                self.test_rsa_decrypt(label, key, &public)
            }
            .map(Some)
        })?;
        tracing::debug!(serial = self.logged_serial(), %label, mechanism, "self-test passed");
        Ok(KeySelfTest {
            label,
            algorithm,
            mechanism,
            used_certificate,
        })
    }

    fn test_signing(
        &self,
        label: KeyLabel,
        key: ObjectHandle,
        algorithm: KeyAlgorithm,
        public: &SubjectPublicKeyInfoOwned,
    ) -> Result<&'static str, TokenError> {
        let fail = |reason: String| TokenError::SelfTest {
            serial: self.serial.clone(),
            label,
            reason,
        };
        let challenge = random::<32>()?;
        let digest: [u8; 32] = Sha256::digest(challenge.as_ref()).into();
        let raw = self.sign_digest_raw(label, key, algorithm, &digest)?;
        match algorithm {
            KeyAlgorithm::P256 => {
                let point = uncompressed_p256(public).map_err(fail)?;
                if raw.len() != 64 {
                    return Err(fail(format!(
                        "CKM_ECDSA returned {} bytes, not r||s (64)",
                        raw.len()
                    )));
                }
                ring::signature::UnparsedPublicKey::new(
                    &ring::signature::ECDSA_P256_SHA256_FIXED,
                    &point,
                )
                .verify(challenge.as_ref(), &raw)
                .map_err(|_| fail("ECDSA signature does not verify".into()))?;
                Ok("CKM_ECDSA")
            }
            KeyAlgorithm::Rsa2048 | KeyAlgorithm::Rsa3072 => {
                let pk = rsa_public_key(public).map_err(fail)?;
                let vk = rsa::pkcs1v15::VerifyingKey::<Sha256>::new(pk);
                let sig = rsa::pkcs1v15::Signature::try_from(raw.as_slice())
                    .map_err(|e| fail(format!("RSA signature: {e}")))?;
                vk.verify(challenge.as_ref(), &sig)
                    .map_err(|_| fail("RSA signature does not verify".into()))?;
                Ok("CKM_RSA_PKCS")
            }
            KeyAlgorithm::Sm2 => Err(self.sm2_not_over_pkcs11("self-test an SM2 key")),
        }
    }

    fn test_rsa_decrypt(
        &self,
        label: KeyLabel,
        key: ObjectHandle,
        public: &SubjectPublicKeyInfoOwned,
    ) -> Result<&'static str, TokenError> {
        let fail = |reason: String| TokenError::SelfTest {
            serial: self.serial.clone(),
            label,
            reason,
        };
        let pk = rsa_public_key(public).map_err(fail)?;
        let secret = random::<32>()?;
        let mut rng = rand::rng();
        let attempt = |ciphertext: Vec<u8>, mechanism: Mechanism<'_>| {
            self.with_session(|s| s.decrypt(&mechanism, key, &ciphertext))
        };
        let outcome: Result<(Vec<u8>, &'static str), TokenError> =
            if self.has_mechanism(MechanismType::RSA_PKCS_OAEP)? {
                let ct = pk
                    .encrypt(&mut rng, rsa::Oaep::<Sha256>::new(), secret.as_ref())
                    .map_err(|e| fail(format!("software encryption: {e}")))?;
                let params = PkcsOaepParams::new(
                    MechanismType::SHA256,
                    PkcsMgfType::MGF1_SHA256,
                    PkcsOaepSource::empty(),
                );
                match attempt(ct, Mechanism::RsaPkcsOaep(params)) {
                    Ok(pt) => Ok((pt, "CKM_RSA_PKCS_OAEP(SHA-256)")),
                    Err(e) if e.rv().is_some_and(is_mechanism_refusal) => {
                        // The module takes only SHA-1 OAEP parameters (SoftHSM 2.6).
                        let ct = pk
                            .encrypt(&mut rng, rsa::Oaep::<sha1::Sha1>::new(), secret.as_ref())
                            .map_err(|e| fail(format!("software encryption: {e}")))?;
                        let params = PkcsOaepParams::new(
                            MechanismType::SHA1,
                            PkcsMgfType::MGF1_SHA1,
                            PkcsOaepSource::empty(),
                        );
                        attempt(ct, Mechanism::RsaPkcsOaep(params))
                            .map(|pt| (pt, "CKM_RSA_PKCS_OAEP(SHA-1)"))
                    }
                    Err(e) => Err(e),
                }
            } else if self.has_mechanism(MechanismType::RSA_PKCS)? {
                let ct = pk
                    .encrypt(&mut rng, rsa::Pkcs1v15Encrypt, secret.as_ref())
                    .map_err(|e| fail(format!("software encryption: {e}")))?;
                attempt(ct, Mechanism::RsaPkcs).map(|pt| (pt, "CKM_RSA_PKCS"))
            } else {
                return Err(TokenError::MechanismUnsupported {
                    serial: self.serial.clone(),
                    mechanism: "CKM_RSA_PKCS_OAEP or CKM_RSA_PKCS",
                    purpose: "decrypt with the encryption key",
                });
            };
        let (plaintext, mechanism) = outcome?;
        let plaintext = Zeroizing::new(plaintext);
        if plaintext.as_slice() != secret.as_ref() {
            return Err(fail(format!(
                "{mechanism} decrypted something else than was encrypted"
            )));
        }
        Ok(mechanism)
    }

    fn test_ecdh(
        &self,
        label: KeyLabel,
        key: ObjectHandle,
        public: &SubjectPublicKeyInfoOwned,
    ) -> Result<&'static str, TokenError> {
        let fail = |reason: String| TokenError::SelfTest {
            serial: self.serial.clone(),
            label,
            reason,
        };
        use ring::agreement;
        let token_public = uncompressed_p256(public).map_err(fail)?;
        let ephemeral = agreement::EphemeralPrivateKey::generate(
            &agreement::ECDH_P256,
            &ring::rand::SystemRandom::new(),
        )
        .map_err(|_| fail("no ephemeral P-256 key from the system's random source".into()))?;
        let peer = ephemeral
            .compute_public_key()
            .map_err(|_| fail("ephemeral P-256 public key".into()))?
            .as_ref()
            .to_vec();
        let template = [
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(KeyType::GENERIC_SECRET),
            Attribute::Token(false),
            Attribute::Sensitive(false),
            Attribute::Extractable(true),
            Attribute::ValueLen(32.into()),
        ];
        let params = Ecdh1DeriveParams::new(EcKdf::null(), &peer);
        // Tried rather than looked up first in the mechanism list (two calls fewer): a module
        // without the mechanism says so with `CKR_MECHANISM_INVALID`.
        let derived = self
            .with_session(|s| s.derive_key(&Mechanism::Ecdh1Derive(params), key, &template))
            .map_err(|e| match e.rv() {
                Some(RvError::MechanismInvalid) => TokenError::MechanismUnsupported {
                    serial: self.serial.clone(),
                    mechanism: "CKM_ECDH1_DERIVE",
                    purpose: "agree a key with the encryption key",
                },
                _ => e,
            })?;
        let value = self.with_session(|s| s.get_attributes(derived, &[AttributeType::Value]));
        // The derived secret is a session object; remove it at once either way.
        if let Err(e) = self.with_session(|s| s.destroy_object(derived)) {
            tracing::debug!(serial = self.logged_serial(), error = %e, "destroying the ECDH secret failed");
        }
        let value = value?;
        let agreed = value.iter().find_map(|a| match a {
            Attribute::Value(v) => Some(Zeroizing::new(v.clone())),
            _ => None,
        });
        let Some(agreed) = agreed else {
            return Err(fail("derived secret unreadable (CKA_VALUE missing)".into()));
        };
        let peer = agreement::UnparsedPublicKey::new(&agreement::ECDH_P256, &token_public);
        let same =
            agreement::agree_ephemeral(ephemeral, &peer, |expected| expected == agreed.as_slice())
                .map_err(|_| fail("software ECDH with the token's public key failed".into()))?;
        if same {
            Ok("CKM_ECDH1_DERIVE")
        } else {
            Err(fail("ECDH on the token agreed another secret".into()))
        }
    }
}

/// The P-256 public key of `public` as an uncompressed SEC1 point (what ring takes), after
/// checking it is a point on the curve.
fn uncompressed_p256(public: &SubjectPublicKeyInfoOwned) -> Result<Vec<u8>, String> {
    p256::PublicKey::from_sec1_bytes(public.subject_public_key.raw_bytes())
        .map(|key| key.to_sec1_bytes().to_vec())
        .map_err(|e| format!("public key: {e}"))
}
