//! The three key pairs of a Ukey: their labels, the algorithms a job may ask for, and the
//! SM2 signer ID (GM/T 0009) an SM2 key signs with.

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
    /// SM2 (GM/T 0003) on its recommended 256-bit curve: SM2-with-SM3 signatures (GM/T 0009)
    /// and SM2 public-key encryption. Its SubjectPublicKeyInfo is `id-ecPublicKey` with the
    /// curve `1.2.156.10197.1.301` (GM/T 0010).
    #[serde(rename = "sm2")]
    Sm2,
}

impl KeyAlgorithm {
    /// The name used in JSON and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyAlgorithm::P256 => "p256",
            KeyAlgorithm::Rsa2048 => "rsa2048",
            KeyAlgorithm::Rsa3072 => "rsa3072",
            KeyAlgorithm::Sm2 => "sm2",
        }
    }

    /// RSA modulus size in bits, or `None` for an EC key.
    pub fn rsa_bits(self) -> Option<usize> {
        match self {
            KeyAlgorithm::P256 | KeyAlgorithm::Sm2 => None,
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
    /// Every algorithm is allowed for all three labels: a P-256 encryption key is used for
    /// key agreement (ECDH) instead of key encipherment, which the certificate profile
    /// expresses through [`KeyLabel::key_usages`]; an SM2 encryption key enciphers (SM2
    /// public-key encryption, GM/T 0003.4, is how 国密 digital envelopes carry their session
    /// keys). The check exists so that a future restriction has one place to live and is
    /// enforced by job validation.
    pub fn allows(self, alg: KeyAlgorithm) -> bool {
        match (self, alg) {
            (
                _,
                KeyAlgorithm::P256
                | KeyAlgorithm::Rsa2048
                | KeyAlgorithm::Rsa3072
                | KeyAlgorithm::Sm2,
            ) => true,
        }
    }

    /// The key usages this label's certificate must carry for a key of algorithm `alg`.
    pub fn key_usages(self, alg: KeyAlgorithm) -> &'static [KeyUsage] {
        match (self, alg) {
            (KeyLabel::SealOfficial | KeyLabel::SealLegal, _) => {
                &[KeyUsage::DigitalSignature, KeyUsage::NonRepudiation]
            }
            (KeyLabel::Encryption, KeyAlgorithm::P256) => &[KeyUsage::KeyAgreement],
            (
                KeyLabel::Encryption,
                KeyAlgorithm::Rsa2048 | KeyAlgorithm::Rsa3072 | KeyAlgorithm::Sm2,
            ) => &[KeyUsage::KeyEncipherment, KeyUsage::DataEncipherment],
        }
    }
}

/// An SM2 signer's distinguishing identifier (`ID_A` of GM/T 0003.2 / GM/T 0009): the bytes
/// that go into `Z_A = SM3(ENTL_A ‖ ID_A ‖ a ‖ b ‖ x_G ‖ y_G ‖ x_A ‖ y_A)`, so a signature made
/// with one ID verifies only with that ID.
///
/// In a job it is the optional `signer_id` of an `sm2` key spec: 1 to
/// [`SignerId::MAX_LEN`] printable ASCII characters (`0x20`–`0x7E`), used as their bytes.
/// Without it the key signs with [`SignerId::DEFAULT`], the GM/T 0009 default
/// `1234567812345678`. The bound keeps the ID a short name (real IDs are the default or an
/// e-mail-like string), far below the 8191 bytes `ENTL`'s 16 bits could express, and keeps
/// this type `Copy`.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SignerId {
    len: u8,
    bytes: [u8; SignerId::MAX_LEN],
}

impl SignerId {
    /// The longest ID a job may name, in bytes.
    pub const MAX_LEN: usize = 64;

    /// The GM/T 0009 default ID, `1234567812345678` (ENTL = 128 bits).
    pub const DEFAULT: SignerId = {
        let text = *b"1234567812345678";
        let mut bytes = [0u8; SignerId::MAX_LEN];
        let mut i = 0;
        while i < text.len() {
            bytes[i] = text[i];
            i += 1;
        }
        SignerId {
            len: text.len() as u8,
            bytes,
        }
    };

    /// An ID from its text: 1 to [`SignerId::MAX_LEN`] printable ASCII characters.
    pub fn new(text: &str) -> Result<SignerId, crate::Problem> {
        if text.is_empty() {
            return Err(crate::Problem::Empty);
        }
        if text.len() > SignerId::MAX_LEN {
            return Err(crate::Problem::TooLong {
                max: SignerId::MAX_LEN,
            });
        }
        if let Some(position) = text.bytes().position(|b| !(0x20..=0x7e).contains(&b)) {
            return Err(crate::Problem::BadCharacter { position });
        }
        let mut bytes = [0u8; SignerId::MAX_LEN];
        bytes[..text.len()].copy_from_slice(text.as_bytes());
        Ok(SignerId {
            len: text.len() as u8,
            bytes,
        })
    }

    /// The ID's bytes, as they enter `Z_A`.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }

    /// The ID as text (always printable ASCII).
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(self.as_bytes()).unwrap_or_default()
    }

    /// Whether this is the GM/T 0009 default ID.
    pub fn is_default(&self) -> bool {
        *self == SignerId::DEFAULT
    }
}

impl Default for SignerId {
    fn default() -> Self {
        SignerId::DEFAULT
    }
}

impl std::fmt::Debug for SignerId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SignerId({:?})", self.as_str())
    }
}

impl std::fmt::Display for SignerId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for SignerId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for SignerId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        SignerId::new(&text).map_err(|problem| {
            serde::de::Error::custom(format_args!(
                "signer_id: {problem} (1-{} printable ASCII characters)",
                SignerId::MAX_LEN
            ))
        })
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
    fn sm2_is_spelled_sm2_and_its_encryption_key_enciphers() {
        assert_eq!(
            serde_json::to_string(&KeyAlgorithm::Sm2).unwrap_or_default(),
            "\"sm2\""
        );
        assert_eq!(KeyAlgorithm::Sm2.rsa_bits(), None);
        assert!(KeyLabel::Encryption.allows(KeyAlgorithm::Sm2));
        assert_eq!(
            KeyLabel::Encryption.key_usages(KeyAlgorithm::Sm2),
            &[KeyUsage::KeyEncipherment, KeyUsage::DataEncipherment]
        );
        assert_eq!(
            KeyLabel::SealOfficial.key_usages(KeyAlgorithm::Sm2),
            &[KeyUsage::DigitalSignature, KeyUsage::NonRepudiation]
        );
    }

    #[test]
    fn signer_ids_are_bounded_printable_ascii() {
        assert_eq!(SignerId::DEFAULT.as_bytes(), b"1234567812345678");
        assert!(SignerId::default().is_default());
        let id = SignerId::new("seal@example.cn").unwrap_or_default();
        assert_eq!(id.as_str(), "seal@example.cn");
        assert!(!id.is_default());
        assert_eq!(SignerId::new(""), Err(crate::Problem::Empty));
        assert_eq!(
            SignerId::new(&"1".repeat(65)),
            Err(crate::Problem::TooLong { max: 64 })
        );
        assert!(SignerId::new(&"1".repeat(64)).is_ok());
        assert_eq!(
            SignerId::new("ab\u{7f}"),
            Err(crate::Problem::BadCharacter { position: 2 })
        );
        assert_eq!(
            SignerId::new("公章"),
            Err(crate::Problem::BadCharacter { position: 0 })
        );
        let json = serde_json::to_string(&id).unwrap_or_default();
        assert_eq!(json, "\"seal@example.cn\"");
        assert_eq!(serde_json::from_str::<SignerId>(&json).ok(), Some(id));
        let err = serde_json::from_str::<SignerId>("\"\"")
            .err()
            .map(|e| e.to_string());
        assert!(
            err.as_deref().is_some_and(|e| e.contains("signer_id")),
            "{err:?}"
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
