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
