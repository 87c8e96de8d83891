//! The platform's own reading of what a station sends: which key algorithm a public key is,
//! and whether a signature (a CSR's self-signature, a certificate's issuer signature)
//! verifies.
//!
//! Written for the platform alone, on p256's ECDSA verifier, rsa's PKCS#1 v1.5 verifier and
//! sm2's SM2 verifier (which computes `Z` from the signer ID itself): the agent checks
//! certificates with its own code (ring for ECDSA, its own `Z` for SM2), so the two sides meet
//! as independent implementations of the profile contract (`ukey_protocol::profile`), and a
//! bug on one side shows up as a disagreement. It reads keys through their PKCS#8
//! `SubjectPublicKeyInfo` decoders, which check the algorithm and curve identifiers (SM2:
//! `id-ecPublicKey` with the curve 1.2.156.10197.1.301, GM/T 0010).
//!
//! It does not decide what to accept: [`crate::ca`] does, with these answers.

use der::Encode;
use p256::pkcs8::DecodePublicKey;
use rsa::traits::PublicKeyParts;
use sha2::Sha256;
use signature::Verifier;
use ukey_protocol::{KeyAlgorithm, SignerId};
use x509_cert::spki::{AlgorithmIdentifierOwned, ObjectIdentifier, SubjectPublicKeyInfoOwned};

/// `ecdsa-with-SHA256` (1.2.840.10045.4.3.2).
const ECDSA_WITH_SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.2");
/// `sha256WithRSAEncryption` (1.2.840.113549.1.1.11).
const SHA256_WITH_RSA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.11");
/// SM2-with-SM3 (1.2.156.10197.1.501), parameters absent.
pub const SM2_WITH_SM3: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.156.10197.1.501");

/// Which of the Ukey key algorithms `key` holds: P-256, RSA-2048, RSA-3072 or SM2; `None`
/// for any other key (another curve, another RSA size, another algorithm, a key that does not
/// decode).
pub fn key_algorithm(key: &SubjectPublicKeyInfoOwned) -> Option<KeyAlgorithm> {
    let der = key.to_der().ok()?;
    if p256::PublicKey::from_public_key_der(&der).is_ok() {
        return Some(KeyAlgorithm::P256);
    }
    if sm2::PublicKey::from_public_key_der(&der).is_ok() {
        return Some(KeyAlgorithm::Sm2);
    }
    let rsa = rsa::PublicKey::from_public_key_der(&der).ok()?;
    match rsa.n().bit_width() {
        2048 => Some(KeyAlgorithm::Rsa2048),
        3072 => Some(KeyAlgorithm::Rsa3072),
        _ => None,
    }
}

/// Verifies `signature` over `message` with `key`, for the signature algorithm `algorithm`
/// (ecdsa-with-SHA256 with a P-256 key, sha256WithRSAEncryption with an RSA key, SM2-with-SM3
/// with an SM2 key and the GM/T 0009 default signer ID, as certificates are signed). The
/// error says why, for a rejection's reason.
pub fn verify_signature(
    key: &SubjectPublicKeyInfoOwned,
    algorithm: &AlgorithmIdentifierOwned,
    message: &[u8],
    signature: &[u8],
) -> Result<(), String> {
    verify_signature_with_id(key, algorithm, message, signature, &SignerId::DEFAULT)
}

/// [`verify_signature`] with the SM2 signer ID `signer_id` (a CSR signed with the ID its job
/// names); the ID plays no part for the other algorithms.
pub fn verify_signature_with_id(
    key: &SubjectPublicKeyInfoOwned,
    algorithm: &AlgorithmIdentifierOwned,
    message: &[u8],
    signature: &[u8],
    signer_id: &SignerId,
) -> Result<(), String> {
    let der = key
        .to_der()
        .map_err(|e| format!("the public key does not encode: {e}"))?;
    if algorithm.oid == ECDSA_WITH_SHA256 {
        let key = p256::ecdsa::VerifyingKey::from_public_key_der(&der)
            .map_err(|e| format!("ecdsa-with-SHA256 needs a P-256 key: {e}"))?;
        let signature = p256::ecdsa::DerSignature::try_from(signature)
            .map_err(|e| format!("not a DER ECDSA signature: {e}"))?;
        key.verify(message, &signature)
            .map_err(|_| "the ECDSA signature does not verify".to_owned())
    } else if algorithm.oid == SHA256_WITH_RSA {
        let key = rsa::PublicKey::from_public_key_der(&der)
            .map_err(|e| format!("sha256WithRSAEncryption needs an RSA key: {e}"))?;
        let signature = rsa::pkcs1v15::Signature::try_from(signature)
            .map_err(|e| format!("not an RSA signature: {e}"))?;
        rsa::pkcs1v15::VerifyingKey::<Sha256>::new(key)
            .verify(message, &signature)
            .map_err(|_| "the RSA signature does not verify".to_owned())
    } else if algorithm.oid == SM2_WITH_SM3 {
        if algorithm.parameters.is_some() {
            return Err("SM2-with-SM3 must have no parameters".to_owned());
        }
        let key = sm2::PublicKey::from_public_key_der(&der)
            .map_err(|e| format!("SM2-with-SM3 needs an SM2 key: {e}"))?;
        let key = sm2::dsa::VerifyingKey::new(signer_id.as_str(), key)
            .map_err(|e| format!("SM2 key with signer ID \"{signer_id}\": {e}"))?;
        let signature = sm2::dsa::Signature::from_der(signature)
            .map_err(|e| format!("not a DER SM2 signature: {e}"))?;
        key.verify(message, &signature).map_err(|_| {
            format!("the SM2 signature does not verify with signer ID \"{signer_id}\"")
        })
    } else {
        Err(format!(
            "signature algorithm {} is not accepted",
            algorithm.oid
        ))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use p256::elliptic_curve::Generate;
    use signature::Signer;

    fn ecdsa_sha256() -> AlgorithmIdentifierOwned {
        AlgorithmIdentifierOwned {
            oid: ECDSA_WITH_SHA256,
            parameters: None,
        }
    }

    #[test]
    fn p256_signatures_verify_and_tampering_is_caught() {
        let key = p256::ecdsa::SigningKey::generate_from_rng(&mut rand::rng());
        let spki = SubjectPublicKeyInfoOwned::from_key(key.verifying_key()).unwrap();
        assert_eq!(key_algorithm(&spki), Some(KeyAlgorithm::P256));
        let signature: p256::ecdsa::DerSignature = key.sign(b"tbs");
        let bytes = signature.to_bytes();
        verify_signature(&spki, &ecdsa_sha256(), b"tbs", &bytes).unwrap();
        let err = verify_signature(&spki, &ecdsa_sha256(), b"tbS", &bytes).unwrap_err();
        assert!(err.contains("does not verify"), "{err}");
        let rsa_alg = AlgorithmIdentifierOwned {
            oid: SHA256_WITH_RSA,
            parameters: None,
        };
        let err = verify_signature(&spki, &rsa_alg, b"tbs", &bytes).unwrap_err();
        assert!(err.contains("needs an RSA key"), "{err}");
        let other = AlgorithmIdentifierOwned {
            oid: ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.3"),
            parameters: None,
        };
        assert!(
            verify_signature(&spki, &other, b"tbs", &bytes)
                .unwrap_err()
                .contains("not accepted")
        );
    }

    #[test]
    fn sm2_signatures_verify_with_their_signer_id_only() {
        use sm2::elliptic_curve::Generate as _;
        let secret = sm2::SecretKey::generate_from_rng(&mut rand::rng());
        let id = SignerId::new("seal@example.cn").unwrap();
        let key = sm2::dsa::SigningKey::new(id.as_str(), &secret).unwrap();
        let spki = SubjectPublicKeyInfoOwned::from_key(key.verifying_key()).unwrap();
        assert_eq!(key_algorithm(&spki), Some(KeyAlgorithm::Sm2));
        let signature: sm2::dsa::Signature = key.sign(b"tbs");
        let der = signature.to_der().to_vec();
        let sm2_sm3 = AlgorithmIdentifierOwned {
            oid: SM2_WITH_SM3,
            parameters: None,
        };
        verify_signature_with_id(&spki, &sm2_sm3, b"tbs", &der, &id).unwrap();
        // The default ID is another Z: refused, and the reason names the ID.
        let err = verify_signature(&spki, &sm2_sm3, b"tbs", &der).unwrap_err();
        assert!(err.contains("1234567812345678"), "{err}");
        let err = verify_signature_with_id(&spki, &sm2_sm3, b"tbS", &der, &id).unwrap_err();
        assert!(err.contains("does not verify"), "{err}");
        // Raw r||s is not X.509's DER.
        let err = verify_signature_with_id(&spki, &sm2_sm3, b"tbs", &signature.to_vec(), &id)
            .unwrap_err();
        assert!(err.contains("not a DER"), "{err}");
        let err = verify_signature_with_id(&spki, &ecdsa_sha256(), b"tbs", &der, &id).unwrap_err();
        assert!(err.contains("needs a P-256 key"), "{err}");
    }

    #[test]
    fn rsa_sizes_are_told_apart() {
        let key = rsa::PrivateKey::new(&mut rand::rng(), 2048).unwrap();
        let spki = SubjectPublicKeyInfoOwned::from_key(&key.to_public_key()).unwrap();
        assert_eq!(key_algorithm(&spki), Some(KeyAlgorithm::Rsa2048));
        let small = rsa::PrivateKey::new(&mut rand::rng(), 1024).unwrap();
        let spki = SubjectPublicKeyInfoOwned::from_key(&small.to_public_key()).unwrap();
        assert_eq!(key_algorithm(&spki), None);
    }
}
