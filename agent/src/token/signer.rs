//! Signing with an on-token private key, and the one CSR path.
//!
//! [`TokenSigner`] implements the `signature` traits x509-cert's builders need
//! (`Signer`, `Keypair`, `DynSignatureAlgorithmIdentifier`), so `RequestBuilder` signs a CSR
//! through PKCS#11. The message is hashed on the host (SHA-256) and signed with `CKM_ECDSA`
//! (raw `r||s`, turned into a DER `Ecdsa-Sig-Value`; SoftHSM 2.6.1 has no `CKM_ECDSA_SHA256`)
//! or `CKM_RSA_PKCS` over a SHA-256 `DigestInfo` (sha256WithRSAEncryption).
//!
//! The user must be logged in. This module does not decide subjects: see [`ukey_protocol::profile`].

use std::cell::RefCell;

use cryptoki::error::RvError;
use cryptoki::mechanism::Mechanism;
use cryptoki::object::ObjectHandle;
use der::asn1::BitString;
use der::{Any, Encode};
use sha2::{Digest, Sha256};
use signature::{Keypair, Signer};
use ukey_protocol::{KeyAlgorithm, KeyLabel};
use x509_cert::builder::{Builder, RequestBuilder};
use x509_cert::name::Name;
use x509_cert::spki::{
    AlgorithmIdentifierOwned, DynSignatureAlgorithmIdentifier, EncodePublicKey,
    SignatureBitStringEncoding, SubjectPublicKeyInfoOwned,
};

use super::error::TokenError;
use super::objects::ObjectKind;
use super::session::Token;
use crate::certs::{OID_ECDSA_SHA256, OID_SHA256_RSA, key_algorithm};

/// The DER prefix of a SHA-256 `DigestInfo` (PKCS#1 v1.5 signatures).
pub const SHA256_DIGEST_INFO_PREFIX: [u8; 19] = [
    0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01, 0x05,
    0x00, 0x04, 0x20,
];

/// A signature as X.509 wants it (DER `Ecdsa-Sig-Value` or PKCS#1 v1.5 bytes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenSignature(pub Vec<u8>);

impl SignatureBitStringEncoding for TokenSignature {
    fn to_bitstring(&self) -> der::Result<BitString> {
        BitString::from_bytes(&self.0)
    }
}

/// An on-token key's public half, as the builders want it (`EncodePublicKey`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenPublicKey(pub SubjectPublicKeyInfoOwned);

impl EncodePublicKey for TokenPublicKey {
    fn to_public_key_der(&self) -> x509_cert::spki::Result<der::Document> {
        Ok(der::Document::try_from(self.0.to_der()?)?)
    }
}

/// The X.509 signature algorithm for a key algorithm.
pub fn signature_algorithm(algorithm: KeyAlgorithm) -> AlgorithmIdentifierOwned {
    match algorithm {
        KeyAlgorithm::P256 => AlgorithmIdentifierOwned {
            oid: OID_ECDSA_SHA256,
            parameters: None,
        },
        KeyAlgorithm::Rsa2048 | KeyAlgorithm::Rsa3072 => AlgorithmIdentifierOwned {
            oid: OID_SHA256_RSA,
            parameters: Some(Any::null()),
        },
        KeyAlgorithm::Sm2 => crate::certs::sm2::sm2_with_sm3(),
    }
}

/// A signer over one on-token private key. Borrowing the [`Token`], it lives on the token's
/// thread. A PKCS#11 failure inside `try_sign` surfaces as a `signature::Error`; the typed
/// [`TokenError`] is kept and returned by [`TokenSigner::take_error`].
pub struct TokenSigner<'t> {
    token: &'t Token,
    label: KeyLabel,
    algorithm: KeyAlgorithm,
    public: TokenPublicKey,
    failure: RefCell<Option<TokenError>>,
}

impl std::fmt::Debug for TokenSigner<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenSigner")
            .field("serial", &self.token.serial())
            .field("label", &self.label)
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

impl Token {
    /// A signer over `label`'s private key (user logged in). The public key is read from the
    /// token now; the private key is reached through the handle this session remembers, if
    /// any (see `handles.rs`).
    pub fn signer(&self, label: KeyLabel) -> Result<TokenSigner<'_>, TokenError> {
        self.key_handle(ObjectKind::PrivateKey, label)?;
        let public = self.public_key(label)?;
        let algorithm = key_algorithm(&public).ok_or_else(|| TokenError::PublicKey {
            serial: self.serial.clone(),
            label,
            reason: "not P-256, RSA-2048, RSA-3072 or SM2".into(),
        })?;
        Ok(TokenSigner {
            token: self,
            label,
            algorithm,
            public: TokenPublicKey(public),
            failure: RefCell::new(None),
        })
    }

    /// Builds a PKCS#10 CSR (DER) for `label`'s key with `subject`, signed on the token.
    pub fn build_csr(&self, label: KeyLabel, subject: &Name) -> Result<Vec<u8>, TokenError> {
        let signer = self.signer(label)?;
        let csr_err = |reason: String| TokenError::Csr {
            serial: self.serial.clone(),
            label,
            reason,
        };
        let builder = RequestBuilder::new(subject.clone()).map_err(|e| csr_err(e.to_string()))?;
        let csr = match builder.build::<_, TokenSignature>(&signer) {
            Ok(csr) => csr,
            Err(e) => {
                return Err(signer
                    .take_error()
                    .unwrap_or_else(|| csr_err(e.to_string())));
            }
        };
        // The signature is not checked here: the platform checks every CSR's self-signature
        // before it issues (a bad one fails the job with its reason), and `activate`'s
        // self-test checks each signing key's signatures in software before the token is
        // bound. A third check per CSR would cost more than the rest of the step.
        csr.to_der().map_err(|e| csr_err(e.to_string()))
    }

    /// The refusal of an SM2 operation on a PKCS#11 token: PKCS#11 has no standard SM2
    /// mechanism, so SM2 keys are made and used through SKF (GM/T 0016) instead.
    pub(super) fn sm2_not_over_pkcs11(&self, purpose: &'static str) -> TokenError {
        TokenError::MechanismUnsupported {
            serial: self.serial.clone(),
            mechanism: "SM2 (no standard PKCS#11 mechanism; SM2 keys need an SKF token)",
            purpose,
        }
    }

    /// Signs a SHA-256 digest with `key`: raw `r||s` for EC, PKCS#1 v1.5 for RSA.
    pub(super) fn sign_digest_raw(
        &self,
        label: KeyLabel,
        key: ObjectHandle,
        algorithm: KeyAlgorithm,
        digest: &[u8; 32],
    ) -> Result<Vec<u8>, TokenError> {
        let (mechanism, data, name) = match algorithm {
            KeyAlgorithm::Sm2 => return Err(self.sm2_not_over_pkcs11("sign")),
            KeyAlgorithm::P256 => (Mechanism::Ecdsa, digest.to_vec(), "CKM_ECDSA"),
            KeyAlgorithm::Rsa2048 | KeyAlgorithm::Rsa3072 => {
                let mut data = SHA256_DIGEST_INFO_PREFIX.to_vec();
                data.extend_from_slice(digest);
                (Mechanism::RsaPkcs, data, "CKM_RSA_PKCS")
            }
        };
        self.with_session(|s| s.sign(&mechanism, key, &data))
            .map_err(|e| match e.rv() {
                Some(RvError::MechanismInvalid) => TokenError::MechanismUnsupported {
                    serial: self.serial.clone(),
                    mechanism: name,
                    purpose: "sign",
                },
                _ => {
                    tracing::debug!(serial = self.logged_serial(), %label, error = %e, "signing failed");
                    e
                }
            })
    }
}

impl TokenSigner<'_> {
    /// The label of the key.
    pub fn label(&self) -> KeyLabel {
        self.label
    }

    /// The key's algorithm.
    pub fn algorithm(&self) -> KeyAlgorithm {
        self.algorithm
    }

    /// The public key.
    pub fn public_key(&self) -> &SubjectPublicKeyInfoOwned {
        &self.public.0
    }

    /// Signs a SHA-256 digest on the token; returns the X.509 form (DER `Ecdsa-Sig-Value`
    /// for EC, PKCS#1 v1.5 for RSA).
    pub fn sign_digest(&self, digest: &[u8; 32]) -> Result<Vec<u8>, TokenError> {
        let raw = self
            .token
            .with_key(ObjectKind::PrivateKey, self.label, |key| {
                self.token
                    .sign_digest_raw(self.label, key.handle, self.algorithm, digest)
                    .map(Some)
            })?;
        match self.algorithm {
            KeyAlgorithm::P256 => {
                let sig =
                    p256::ecdsa::Signature::from_slice(&raw).map_err(|e| TokenError::Csr {
                        serial: self.token.serial.clone(),
                        label: self.label,
                        reason: format!("CKM_ECDSA returned {} bytes, not r||s: {e}", raw.len()),
                    })?;
                Ok(sig.to_der().as_bytes().to_vec())
            }
            KeyAlgorithm::Rsa2048 | KeyAlgorithm::Rsa3072 => Ok(raw),
            KeyAlgorithm::Sm2 => Err(self.token.sm2_not_over_pkcs11("sign")),
        }
    }

    /// The typed error of the last failed `try_sign`, if any.
    pub fn take_error(&self) -> Option<TokenError> {
        self.failure.borrow_mut().take()
    }
}

impl Signer<TokenSignature> for TokenSigner<'_> {
    fn try_sign(&self, msg: &[u8]) -> Result<TokenSignature, signature::Error> {
        let digest: [u8; 32] = Sha256::digest(msg).into();
        match self.sign_digest(&digest) {
            Ok(sig) => Ok(TokenSignature(sig)),
            Err(e) => {
                let text = e.to_string();
                *self.failure.borrow_mut() = Some(e);
                Err(signature::Error::from_source(text))
            }
        }
    }
}

impl Keypair for TokenSigner<'_> {
    type VerifyingKey = TokenPublicKey;

    fn verifying_key(&self) -> TokenPublicKey {
        self.public.clone()
    }
}

impl DynSignatureAlgorithmIdentifier for TokenSigner<'_> {
    fn signature_algorithm_identifier(&self) -> x509_cert::spki::Result<AlgorithmIdentifierOwned> {
        Ok(signature_algorithm(self.algorithm))
    }
}

/// Whether a return code is the module refusing a mechanism or its parameters.
pub(super) fn is_mechanism_refusal(rv: RvError) -> bool {
    matches!(
        rv,
        RvError::MechanismInvalid | RvError::MechanismParamInvalid | RvError::ArgumentsBad
    )
}
