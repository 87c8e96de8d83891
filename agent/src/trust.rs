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
use crate::job_keys::{WRAPPED_LEN, WrappedKey};
use crate::steps::Trust;

/// A trust file that could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TrustError {
    /// The file could not be read.
    #[error("{key}: cannot read {path}: {source}")]
    Read {
        /// The configuration key.
        key: String,
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The file does not hold what the key needs.
    #[error("{key}: {path}: {reason}")]
    Parse {
        /// The configuration key.
        key: String,
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
    /// The longest validity a job may have (`trust.max_job_lifetime_days`).
    pub max_job_lifetime: time::Duration,
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

/// The shortest RSA modulus accepted for the platform's signing and sealing keys.
pub const MIN_RSA_BITS: u32 = 2048;

/// What a platform public key is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Use {
    /// Verifies the platform's signed jobs and messages.
    Signing,
    /// Seals PINs to the platform.
    Sealing,
}

fn read(key: &str, path: &Path) -> Result<String, TrustError> {
    std::fs::read_to_string(path).map_err(|source| TrustError::Read {
        key: key.to_owned(),
        path: path.to_owned(),
        source,
    })
}

fn parse_err(key: &str, path: &Path, reason: impl ToString) -> TrustError {
    TrustError::Parse {
        key: key.to_owned(),
        path: path.to_owned(),
        reason: reason.to_string(),
    }
}

/// Refuses an RSA key shorter than [`MIN_RSA_BITS`], naming its size.
fn check_rsa_bits(key: &str, path: &Path, bits: Option<u32>) -> Result<(), TrustError> {
    match bits {
        Some(bits) if bits < MIN_RSA_BITS => Err(parse_err(
            key,
            path,
            format!("RSA key of {bits} bits: at least {MIN_RSA_BITS} bits are required"),
        )),
        _ => Ok(()),
    }
}

fn load_signing_key(key: &str, path: &Path) -> Result<JobVerifyingKey, TrustError> {
    let verifying = JobVerifyingKey::from_public_key_pem(&read(key, path)?)
        .map_err(|e| parse_err(key, path, e))?;
    check_rsa_bits(key, path, verifying.rsa_bits())?;
    Ok(verifying)
}

fn load_sealing_key(key: &str, path: &Path) -> Result<SealRecipient, TrustError> {
    let recipient = SealRecipient::from_public_key_pem(&read(key, path)?)
        .map_err(|e| parse_err(key, path, e))?;
    check_rsa_bits(key, path, recipient.rsa_bits())?;
    Ok(recipient)
}

/// Loads the platform public key of configuration key `key` from `path` as `used` needs it,
/// and refuses what [`TrustMaterial::load`] would refuse (for `check-config`).
pub fn load_public_key(key: &str, path: &Path, used: Use) -> Result<(), TrustError> {
    match used {
        Use::Signing => load_signing_key(key, path).map(drop),
        Use::Sealing => load_sealing_key(key, path).map(drop),
    }
}

impl TrustError {
    /// The message without the configuration key (for a report that names the key apart).
    pub fn detail(&self) -> String {
        match self {
            TrustError::Read { path, source, .. } => {
                format!("cannot read {}: {source}", path.display())
            }
            TrustError::Parse { path, reason, .. } => format!("{}: {reason}", path.display()),
        }
    }
}

impl TrustMaterial {
    /// Loads and parses every file of `[trust]`.
    pub fn load(config: &TrustConfig) -> Result<TrustMaterial, TrustError> {
        let mut keyring = JobKeyring::new();
        for (key, kid, path) in config.signing_keys() {
            if keyring.get(kid).is_some() {
                return Err(parse_err(
                    &key,
                    path,
                    format!("key id \"{kid}\" is listed twice"),
                ));
            }
            keyring.insert(kid, load_signing_key(&key, path)?);
        }
        if keyring.is_empty() {
            return Err(TrustError::Parse {
                key: "trust.platform_signing_key".into(),
                path: PathBuf::new(),
                reason:
                    "no platform signing key: set platform_signing_key or platform_signing_keys"
                        .into(),
            });
        }

        let platform_seal =
            load_sealing_key("trust.platform_sealing_key", &config.platform_sealing_key)?;

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
            key: "trust.ca_certs".into(),
            path: config.ca_certs.first().cloned().unwrap_or_default(),
            reason: e.to_string(),
        })?;
        let journal_key = JournalKey::derive(&station_key);
        Ok(TrustMaterial {
            keyring,
            max_job_lifetime: config.max_job_lifetime(),
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

/// The associated data of a wrapped job key: never the same as a record's context.
fn wrap_aad(context: &str) -> String {
    format!("{context}/job-key")
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

    /// A fresh random key: a job's own key (see [`crate::job_keys`]).
    pub fn generate() -> Result<JournalKey, String> {
        let mut key = Zeroizing::new([0u8; 32]);
        getrandom::fill(key.as_mut()).map_err(|e| format!("no randomness for a job key: {e}"))?;
        Ok(JournalKey(key))
    }

    /// Encrypts `key` with this one, bound to `context` (the job id), for the key file.
    pub fn wrap(&self, context: &str, key: &JournalKey) -> Result<WrappedKey, String> {
        let mut nonce = [0u8; 12];
        getrandom::fill(&mut nonce).map_err(|e| e.to_string())?;
        let ct = self
            .cipher()
            .encrypt(
                (&nonce).into(),
                Payload {
                    msg: key.0.as_slice(),
                    aad: wrap_aad(context).as_bytes(),
                },
            )
            .map_err(|_| "job key encryption failed".to_owned())?;
        let mut out = [0u8; WRAPPED_LEN];
        if ct.len() != WRAPPED_LEN - nonce.len() {
            return Err("job key encryption made an unexpected length".to_owned());
        }
        out[..12].copy_from_slice(&nonce);
        out[12..].copy_from_slice(&ct);
        Ok(out)
    }

    /// Decrypts a key [`JournalKey::wrap`] made under the same `context`.
    pub fn unwrap_key(&self, context: &str, wrapped: &WrappedKey) -> Result<JournalKey, String> {
        let (nonce, ct) = wrapped.split_at(12);
        let nonce: [u8; 12] = nonce
            .try_into()
            .map_err(|_| format!("the key of job {context} is damaged"))?;
        let plain = Zeroizing::new(
            self.cipher()
                .decrypt(
                    (&nonce).into(),
                    Payload {
                        msg: ct,
                        aad: wrap_aad(context).as_bytes(),
                    },
                )
                .map_err(|_| {
                    format!("the key of job {context} cannot be opened with this station key")
                })?,
        );
        let mut key = Zeroizing::new([0u8; 32]);
        if plain.len() != key.len() {
            return Err(format!("the key of job {context} is damaged"));
        }
        key.copy_from_slice(&plain);
        Ok(JournalKey(key))
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
    fn job_keys_wrap_under_the_journal_key_bound_to_their_job() {
        let journal = JournalKey::derive(&UnsealKey::from_pkcs8_pem(&p256_pem()).unwrap());
        let job = JournalKey::generate().unwrap();
        let sealed = job.seal("job-1/pins", b"123456").unwrap();
        let wrapped = journal.wrap("job-1", &job).unwrap();
        let unwrapped = journal.unwrap_key("job-1", &wrapped).unwrap();
        assert_eq!(
            &unwrapped.open("job-1/pins", &sealed).unwrap()[..],
            b"123456"
        );
        assert!(journal.unwrap_key("job-2", &wrapped).is_err());
        // The journal key itself does not open what the job's key sealed.
        assert!(journal.open("job-1/pins", &sealed).is_err());
        let other = JournalKey::derive(&UnsealKey::from_pkcs8_pem(&p256_pem()).unwrap());
        assert!(other.unwrap_key("job-1", &wrapped).is_err());
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

    /// An RSA public key of `bits` made by openssl, in `dir`.
    fn rsa_public_key(dir: &Path, bits: u32) -> PathBuf {
        let private = dir.join(format!("rsa-{bits}.pem"));
        let public = dir.join(format!("rsa-{bits}.pub.pem"));
        let ok = std::process::Command::new("openssl")
            .args(["genpkey", "-algorithm", "RSA", "-pkeyopt"])
            .arg(format!("rsa_keygen_bits:{bits}"))
            .arg("-out")
            .arg(&private)
            .status()
            .unwrap()
            .success()
            && std::process::Command::new("openssl")
                .args(["pkey", "-pubout", "-in"])
                .arg(&private)
                .arg("-out")
                .arg(&public)
                .status()
                .unwrap()
                .success();
        assert!(ok, "openssl failed");
        public
    }

    #[test]
    fn short_rsa_keys_are_refused_for_signing_and_sealing_naming_file_and_size() {
        let dir = tempfile::tempdir().unwrap();
        let short = rsa_public_key(dir.path(), 1024);
        for used in [Use::Signing, Use::Sealing] {
            let err = load_public_key("trust.platform_sealing_key", &short, used).unwrap_err();
            let text = err.to_string();
            assert!(text.contains("1024 bits"), "{text}");
            assert!(text.contains(&short.display().to_string()), "{text}");
            assert!(text.contains("trust.platform_sealing_key"), "{text}");
        }
        let long = rsa_public_key(dir.path(), 2048);
        load_public_key("trust.platform_signing_key", &long, Use::Signing).unwrap();
        load_public_key("trust.platform_sealing_key", &long, Use::Sealing).unwrap();
    }
}
