//! The keys and certificates the agent trusts and uses, loaded from the files the
//! configuration names, plus the key that encrypts personal data in the job journal.
//!
//! This module reads files once at start-up and parses them; it keeps the station's private
//! key in memory (it is needed to open SO PINs sealed to the station and the journal).

use std::path::{Path, PathBuf};

use aes_gcm::aead::{Aead, Payload};
use aes_gcm::{Aes256Gcm, KeyInit};
use hkdf::Hkdf;
use sha2::Sha256;
use ukey_protocol::seal::{SealRecipient, UnsealKey};
use ukey_protocol::signed::{JobKeyring, JobVerifyingKey};
use zeroize::Zeroizing;

use crate::certs::{TrustAnchors, ValidityPolicy};
use crate::config::TrustConfig;
use crate::steps::Trust;

/// A trust file that could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TrustError {
    /// The file could not be read.
    #[error("{key}: cannot read {path}: {source}")]
    Read {
        /// The configuration key.
        key: &'static str,
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The file does not hold what the key needs.
    #[error("{key}: {path}: {reason}")]
    Parse {
        /// The configuration key.
        key: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

/// Everything the agent trusts and the station's own key.
pub struct TrustMaterial {
    /// Verifies signed jobs.
    pub keyring: JobKeyring,
    /// Seals PINs to the platform.
    pub platform_seal: SealRecipient,
    /// Opens secrets sealed to the station.
    pub station_key: UnsealKey,
    /// Checks issued certificates.
    pub certificates: Trust,
    /// Encrypts personal data in the journal.
    pub journal_key: JournalKey,
}

impl std::fmt::Debug for TrustMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrustMaterial")
            .field("ca_certs", &self.certificates.anchors.len())
            .finish_non_exhaustive()
    }
}

fn read(key: &'static str, path: &Path) -> Result<String, TrustError> {
    std::fs::read_to_string(path).map_err(|source| TrustError::Read {
        key,
        path: path.to_owned(),
        source,
    })
}

fn parse_err(key: &'static str, path: &Path, reason: impl ToString) -> TrustError {
    TrustError::Parse {
        key,
        path: path.to_owned(),
        reason: reason.to_string(),
    }
}

impl TrustMaterial {
    /// Loads and parses every file of `[trust]`.
    pub fn load(config: &TrustConfig) -> Result<TrustMaterial, TrustError> {
        let path = &config.platform_signing_key;
        let key = JobVerifyingKey::from_public_key_pem(&read("trust.platform_signing_key", path)?)
            .map_err(|e| parse_err("trust.platform_signing_key", path, e))?;
        let keyring = JobKeyring::single(config.platform_signing_key_id.clone(), key);

        let path = &config.platform_sealing_key;
        let platform_seal =
            SealRecipient::from_public_key_pem(&read("trust.platform_sealing_key", path)?)
                .map_err(|e| parse_err("trust.platform_sealing_key", path, e))?;

        let path = &config.station_key;
        let pem = Zeroizing::new(read("trust.station_key", path)?);
        let station_key =
            UnsealKey::from_pkcs8_pem(&pem).map_err(|e| parse_err("trust.station_key", path, e))?;

        let mut pem_all = String::new();
        for path in &config.ca_certs {
            pem_all.push_str(&read("trust.ca_certs", path)?);
            pem_all.push('\n');
        }
        let anchors = TrustAnchors::from_pem(&pem_all).map_err(|e| TrustError::Parse {
            key: "trust.ca_certs",
            path: config.ca_certs.first().cloned().unwrap_or_default(),
            reason: e.to_string(),
        })?;
        let journal_key = JournalKey::derive(&station_key);
        Ok(TrustMaterial {
            keyring,
            platform_seal,
            station_key,
            certificates: Trust {
                anchors,
                policy: ValidityPolicy::default(),
            },
            journal_key,
        })
    }
}

/// AES-256-GCM key for the journal's PINs and personal data, derived (HKDF-SHA256) from the
/// station's private key, so whoever can read the journal without that key learns nothing
/// personal. It is derived from the key's secret value, not from its file: the same key saved
/// again (other line breaks, another PKCS#8 encoder) still opens the journal.
#[derive(Clone)]
pub struct JournalKey(Zeroizing<[u8; 32]>);

impl std::fmt::Debug for JournalKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JournalKey(<secret>)")
    }
}

/// Encrypted bytes as stored in the journal: a 12-byte nonce and the ciphertext with its tag.
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Sealed {
    /// AES-GCM nonce, hex.
    nonce: String,
    /// Ciphertext and tag, hex.
    ct: String,
}

impl std::fmt::Debug for Sealed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Sealed({} bytes)", self.ct.len() / 2)
    }
}

impl JournalKey {
    /// Derives the key from the station's private key.
    pub fn derive(station_key: &UnsealKey) -> JournalKey {
        let secret = station_key.secret_material();
        let hk = Hkdf::<Sha256>::new(Some(b"ukey-agent journal"), &secret);
        let mut key = Zeroizing::new([0u8; 32]);
        // 32 bytes is far below HKDF-SHA256's output limit, so expand cannot fail.
        let _ = hk.expand(b"ukey-agent journal v2", key.as_mut());
        JournalKey(key)
    }

    fn cipher(&self) -> Aes256Gcm {
        Aes256Gcm::new((&*self.0).into())
    }

    /// Encrypts `plaintext`, bound to `context` (e.g. the job id).
    pub fn seal(&self, context: &str, plaintext: &[u8]) -> Result<Sealed, String> {
        let mut nonce = [0u8; 12];
        getrandom::fill(&mut nonce).map_err(|e| e.to_string())?;
        let ct = self
            .cipher()
            .encrypt(
                (&nonce).into(),
                Payload {
                    msg: plaintext,
                    aad: context.as_bytes(),
                },
            )
            .map_err(|_| "journal encryption failed".to_owned())?;
        Ok(Sealed {
            nonce: crate::journal::to_hex(&nonce),
            ct: crate::journal::to_hex(&ct),
        })
    }

    /// Decrypts what [`JournalKey::seal`] made under the same `context`.
    pub fn open(&self, context: &str, sealed: &Sealed) -> Result<Zeroizing<Vec<u8>>, String> {
        let nonce: [u8; 12] = hex::decode(&sealed.nonce)
            .ok()
            .and_then(|n| n.try_into().ok())
            .ok_or("journal record: bad nonce")?;
        let ct = hex::decode(&sealed.ct).map_err(|_| "journal record: bad ciphertext")?;
        self.cipher()
            .decrypt(
                (&nonce).into(),
                Payload {
                    msg: &ct,
                    aad: context.as_bytes(),
                },
            )
            .map(Zeroizing::new)
            .map_err(|_| "journal record cannot be opened with this station key".to_owned())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn p256_pem() -> String {
        use p256::elliptic_curve::Generate;
        use p256::pkcs8::{EncodePrivateKey, LineEnding};
        let key = p256::SecretKey::generate_from_rng(&mut rand::rng());
        key.to_pkcs8_pem(LineEnding::LF).unwrap().to_string()
    }

    #[test]
    fn journal_key_round_trips_and_binds_context() {
        let k = JournalKey::derive(&UnsealKey::from_pkcs8_pem(&p256_pem()).unwrap());
        let sealed = k.seal("job-1", b"personal data").unwrap();
        assert_eq!(&k.open("job-1", &sealed).unwrap()[..], b"personal data");
        assert!(k.open("job-2", &sealed).is_err());
        let other = JournalKey::derive(&UnsealKey::from_pkcs8_pem(&p256_pem()).unwrap());
        assert!(other.open("job-1", &sealed).is_err());
        assert!(!format!("{sealed:?}").contains("personal"));
    }

    #[test]
    fn the_same_key_saved_differently_opens_the_journal() {
        let pem = p256_pem();
        let k = JournalKey::derive(&UnsealKey::from_pkcs8_pem(&pem).unwrap());
        let sealed = k.seal("job-1", b"personal data").unwrap();
        // Saved again by another editor: Windows line ends and a blank line at the end.
        let resaved = format!("{}\r\n", pem.replace('\n', "\r\n"));
        assert_ne!(resaved, pem);
        let again = JournalKey::derive(&UnsealKey::from_pkcs8_pem(&resaved).unwrap());
        assert_eq!(&again.open("job-1", &sealed).unwrap()[..], b"personal data");
    }
}
