//! The three key pairs of a Ukey: their labels and the algorithms a job may ask for.

use serde::{Deserialize, Serialize};

/// Which of a Ukey's three key pairs (and certificates) something refers to.
///
/// The label is the PKCS#11 `CKA_LABEL` of the private key, the public key and the
/// certificate alike, and the JSON name of the key in jobs and bundles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum KeyLabel {
    /// The company's official seal (公章): signing.
    #[serde(rename = "seal-official")]
    SealOfficial,
    /// The legal representative's seal (法人章): signing.
    #[serde(rename = "seal-legal")]
    SealLegal,
    /// Encryption of bid documents.
    #[serde(rename = "encryption")]
    Encryption,
}

impl KeyLabel {
    /// All three labels, in the order a token is personalized.
    pub const ALL: [KeyLabel; 3] = [
        KeyLabel::SealOfficial,
        KeyLabel::SealLegal,
        KeyLabel::Encryption,
    ];

    /// The label as written to `CKA_LABEL` and in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyLabel::SealOfficial => "seal-official",
            KeyLabel::SealLegal => "seal-legal",
            KeyLabel::Encryption => "encryption",
        }
    }

    /// Parses a `CKA_LABEL` / JSON name.
    pub fn parse(s: &str) -> Option<KeyLabel> {
        KeyLabel::ALL.into_iter().find(|l| l.as_str() == s)
    }

    /// The one-byte `CKA_ID` shared by this label's key pair and certificate.
    pub fn key_id(self) -> u8 {
        match self {
            KeyLabel::SealOfficial => 1,
            KeyLabel::SealLegal => 2,
            KeyLabel::Encryption => 3,
        }
    }

    /// Whether this key signs (the two seals) rather than encrypts.
    pub fn is_signing(self) -> bool {
        !matches!(self, KeyLabel::Encryption)
    }
}

impl std::fmt::Display for KeyLabel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The algorithm and size of a key pair generated on the token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum KeyAlgorithm {
    /// ECDSA / ECDH on NIST P-256 (secp256r1).
    #[serde(rename = "p256")]
    P256,
    /// RSA with a 2048-bit modulus.
    #[serde(rename = "rsa2048")]
    Rsa2048,
    /// RSA with a 3072-bit modulus.
    #[serde(rename = "rsa3072")]
    Rsa3072,
}

impl KeyAlgorithm {
    /// The name used in JSON and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyAlgorithm::P256 => "p256",
            KeyAlgorithm::Rsa2048 => "rsa2048",
            KeyAlgorithm::Rsa3072 => "rsa3072",
        }
    }

    /// RSA modulus size in bits, or `None` for an EC key.
    pub fn rsa_bits(self) -> Option<usize> {
        match self {
            KeyAlgorithm::P256 => None,
            KeyAlgorithm::Rsa2048 => Some(2048),
            KeyAlgorithm::Rsa3072 => Some(3072),
        }
    }
}

impl std::fmt::Display for KeyAlgorithm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl KeyLabel {
    /// Whether a job may ask for `alg` on this label.
    ///
    /// All three algorithms are allowed for all three labels: an EC encryption key is used for
    /// key agreement (ECDH) instead of key encipherment, which the certificate profile
    /// expresses through [`KeyLabel::key_usages`]. The check exists so that a future
    /// restriction has one place to live and is enforced by job validation.
    pub fn allows(self, alg: KeyAlgorithm) -> bool {
        match (self, alg) {
            (_, KeyAlgorithm::P256 | KeyAlgorithm::Rsa2048 | KeyAlgorithm::Rsa3072) => true,
        }
    }

    /// The key usages this label's certificate must carry for a key of algorithm `alg`.
    pub fn key_usages(self, alg: KeyAlgorithm) -> &'static [KeyUsage] {
        match (self, alg) {
            (KeyLabel::SealOfficial | KeyLabel::SealLegal, _) => {
                &[KeyUsage::DigitalSignature, KeyUsage::NonRepudiation]
            }
            (KeyLabel::Encryption, KeyAlgorithm::P256) => &[KeyUsage::KeyAgreement],
            (KeyLabel::Encryption, KeyAlgorithm::Rsa2048 | KeyAlgorithm::Rsa3072) => {
                &[KeyUsage::KeyEncipherment, KeyUsage::DataEncipherment]
            }
        }
    }
}

/// X.509 key usage bits that the certificate profile of DESIGN.md uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyUsage {
    /// `digitalSignature`.
    DigitalSignature,
    /// `nonRepudiation` (a.k.a. `contentCommitment`).
    NonRepudiation,
    /// `keyEncipherment` (RSA encryption keys).
    KeyEncipherment,
    /// `dataEncipherment` (RSA encryption keys).
    DataEncipherment,
    /// `keyAgreement` (EC encryption keys).
    KeyAgreement,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_spellings_are_stable() {
        for label in KeyLabel::ALL {
            let json = serde_json::to_string(&label).unwrap_or_default();
            assert_eq!(json, format!("\"{}\"", label.as_str()));
            assert_eq!(KeyLabel::parse(label.as_str()), Some(label));
        }
        assert_eq!(
            serde_json::to_string(&KeyAlgorithm::Rsa3072).unwrap_or_default(),
            "\"rsa3072\""
        );
    }

    #[test]
    fn ec_encryption_key_is_key_agreement() {
        assert_eq!(
            KeyLabel::Encryption.key_usages(KeyAlgorithm::P256),
            &[KeyUsage::KeyAgreement]
        );
        assert!(KeyLabel::SealLegal.allows(KeyAlgorithm::Rsa3072));
    }
}
