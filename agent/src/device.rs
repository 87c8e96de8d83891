//! The device seam: how the daemon and the job steps reach tokens, whatever interface the
//! vendor's library speaks.
//!
//! Two traits, in the words of the domain (DESIGN.md), not of any one interface:
//!
//! - [`DeviceLibrary`]: one vendor library loaded by path. It enumerates the tokens present
//!   ([`DeviceLibrary::survey`]), opens one ([`DeviceLibrary::open`], or by serial,
//!   [`DeviceLibrary::open_serial`]) and observes it for the desk's classification
//!   ([`DeviceLibrary::observe`] → [`crate::desk::classify`]).
//! - [`Device`]: one open token, owned by one worker thread ([`crate::worker`]): describe it,
//!   initialize it with new SO and user PINs, verify the user PIN, make and discard the three
//!   key pairs, read public keys, count the objects under a label, sign a CSR on the token, read, install and remove
//!   certificates, run the activation self-test, reset (unlock) the user PIN with the SO PIN.
//!
//! [`load`] picks the implementation that the configuration's [`Interface`] names; after that
//! nothing outside this seam knows which interface is behind it. Today there is one
//! implementation, PKCS#11 ([`crate::token`]: [`crate::token::Module`] is a
//! [`DeviceLibrary`], [`crate::token::Token`] a [`Device`]). Slot ids, sessions, object
//! handles and `CKA_*` attributes stay inside it.
//!
//! Everything here blocks. Errors are [`TokenError`]s: interface-neutral variants (wrong or
//! locked PIN, token removed, not blank, key attribute check, missing object, …) plus one
//! variant per interface for a call that failed with a code that has no neutral meaning.
//!
//! ## The words of the seam
//!
//! - A token's **position** ([`PresentToken::slot`]) is where the library sees it now: a
//!   PKCS#11 slot id, for SKF the index of the device in `SKF_EnumDev`'s list. It changes on
//!   re-plug and is never an identity (invariant 1): tokens are named by **serial**.
//! - The **token label** (at most [`crate::token::MAX_TOKEN_LABEL`] bytes) marks a token made
//!   by this desk ([`crate::steps::LABEL_PREFIX`]).
//! - Each of the three [`KeyLabel`]s names one **key pair** and its **certificates**.
//!
//! ## How a GM/T 0016 (SKF) implementation maps each operation
//!
//! Not implemented yet ([`Interface::Skf`] is refused by [`load`] and by `check-config`);
//! this is the plan it must fit, so that the daemon stays untouched. One SKF device holds one
//! application (named by the desk, e.g. `UKEY`) with the admin (SO) and user PINs, and in it
//! one container per [`KeyLabel`] (`seal-official`, `seal-legal`, `encryption`). The seal keys
//! are their container's signing key pair; the encryption key is the `encryption`
//! container's encryption key pair (a KMC key imported as an `ENVELOPEDKEYBLOB`, TRAPS.md).
//!
//! | operation | SKF |
//! |---|---|
//! | [`DeviceLibrary::survey`] | `SKF_EnumDev(TRUE)` (a multi-string), per name `SKF_ConnectDev` + `SKF_GetDevInfo`: serial, label, manufacturer, model; flags from `SKF_EnumApplication` (no desk application: blank) and `SKF_GetPINInfo` (retries left: locked, count low, final try). A device that cannot be read goes to [`SlotSurvey::unreadable`] |
//! | [`DeviceLibrary::open`] | `SKF_ConnectDev` on the device whose serial matches (names change on re-plug), then `SKF_OpenApplication` when it exists |
//! | [`Device::describe`] | `SKF_GetDevInfo` + `SKF_GetPINInfo` (admin and user) |
//! | [`Device::initialize`] | guarded as for PKCS#11 (blank, or named by a job): `SKF_DevAuth` with the model's device authentication key, `SKF_DeleteApplication` of a desk application left by this job, `SKF_CreateApplication` with the new admin and user PINs and their retry counts, `SKF_SetLabel` with the token label |
//! | [`Device::login_user`] / [`Device::logout`] | `SKF_VerifyPIN(USER_TYPE)` (`SAR_PIN_INCORRECT` with retries left → [`TokenError::WrongPin`], `SAR_PIN_LOCKED` → [`TokenError::PinLocked`]) / `SKF_ClearSecureState` |
//! | [`Device::reset_user_pin`] | `SKF_UnblockPIN(admin PIN, new user PIN)`, which also resets the retry counter |
//! | [`Device::key_pairs`] | `SKF_EnumContainer`, per container `SKF_ExportPublicKey` (signing, or encryption for `encryption`) succeeding |
//! | [`Device::replace_key_pair`] | `SKF_DeleteContainer` of what an interrupted attempt left, `SKF_CreateContainer`, `SKF_GenECCKeyPair(SGD_SM2_1)` (or `SKF_GenRSAKeyPair`); an imported encryption key: `SKF_ImportECCKeyPair` into the container. SKF keys never leave the device by construction: the read-back of `CKA_*` attributes has no counterpart, `SKF_GetContainerProperty`/the container type are checked instead |
//! | [`Device::discard_key_pair`] | `SKF_DeleteContainer` (key pairs and certificates go together) |
//! | [`Device::public_key`] | `SKF_ExportPublicKey` → `ECCPUBLICKEYBLOB` (64-byte right-aligned coordinates) → SubjectPublicKeyInfo with the SM2 curve OID |
//! | [`Device::label_objects`] | the `label` container's key pairs and certificates: at most one of each per usage by construction, so the counts are 0 or 1 (the private key counted only after `SKF_VerifyPIN`, as for PKCS#11) |
//! | [`Device::sign_csr`] | the same `x509-cert` builder over a signer whose digest is SM3(Z_A ‖ M) (computed with `SKF_DigestInit(SGD_SM3, public key, ID)` or on the host), signed by `SKF_ECCSignData`, the `ECCSIGNATUREBLOB` turned into DER `SEQUENCE { r, s }` |
//! | [`Device::certificates`] / [`Device::installed_certificates`] | `SKF_ExportCertificate(container, signing?)`: one certificate per container and usage, so a label never has two |
//! | [`Device::install_certificates`] | `SKF_ImportCertificate(container, signing = label is a seal, DER)`, skipped when the same certificate is there |
//! | [`Device::remove_certificate`] | nothing to remove: importing the renewed certificate replaced the old one (returns `false`) |
//! | [`Device::self_test`] | seal keys: `SKF_ECCSignData` over a fresh challenge, verified on the host; encryption key: `SKF_ECCExportSessionKey`/`SKF_ECCDecrypt` of a secret encrypted on the host to its public key |
//! | wipe | [`Device::initialize`] with an authorization naming the token (`SKF_DeleteApplication`, then a new one) |
use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use secrecy::SecretString;
use ukey_protocol::{KeyAlgorithm, KeyLabel};
use x509_cert::Certificate;
use x509_cert::name::Name;
use x509_cert::spki::SubjectPublicKeyInfoOwned;

use crate::certs::VerifiedCertificate;

pub use crate::desk::Observation;
pub use crate::token::{Authorization, KeySelfTest, PresentToken, SlotSurvey, TokenError};

/// The interface a vendor library speaks (the `interface` of a `[[models]]` entry).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Interface {
    /// PKCS#11 (Cryptoki): SoftHSM2, hsm-sim, most tokens' vendor modules.
    #[default]
    Pkcs11,
    /// GM/T 0016 SKF, the interface of most 国密 tokens. Not supported yet.
    Skf,
}

impl Interface {
    /// The name used in configuration files.
    pub fn as_str(self) -> &'static str {
        match self {
            Interface::Pkcs11 => "pkcs11",
            Interface::Skf => "skf",
        }
    }
}

impl fmt::Display for Interface {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Loads the vendor library at `path` that speaks `interface`. Loading the same library
/// again in one process returns the same one (each is initialized once per process).
///
/// [`Interface::Skf`] is refused with [`TokenError::InterfaceUnsupported`] for now.
pub fn load(interface: Interface, path: &Path) -> Result<Arc<dyn DeviceLibrary>, TokenError> {
    match interface {
        Interface::Pkcs11 => Ok(Arc::new(crate::token::Module::load(path)?)),
        Interface::Skf => Err(TokenError::InterfaceUnsupported {
            interface: interface.as_str(),
            path: path.to_path_buf(),
        }),
    }
}

/// One vendor library, loaded and initialized: the tokens it reaches. `Send + Sync`; each
/// call blocks.
pub trait DeviceLibrary: Send + Sync + fmt::Debug {
    /// The path the library was loaded from (for logs and status).
    fn path(&self) -> &Path;

    /// Every token present now, in position order, and apart from them the positions whose
    /// token cannot be read (with the library's error). Fails only when the list of positions
    /// itself cannot be read.
    fn survey(&self) -> Result<SlotSurvey, TokenError>;

    /// Opens the token a survey found (e.g. a blank SoftHSM2 slot that has no serial yet),
    /// after checking that its position still holds it.
    fn open(&self, present: &PresentToken) -> Result<Box<dyn Device>, TokenError>;

    /// Opens the present token with this serial ([`TokenError::NotFound`] when none has it).
    fn open_serial(&self, serial: &str) -> Result<Box<dyn Device>, TokenError> {
        let present = self
            .find_serial(serial)?
            .ok_or_else(|| TokenError::NotFound {
                serial: serial.trim().to_string(),
                waited: Duration::ZERO,
            })?;
        self.open(&present)
    }

    /// The present token with this serial, if any.
    fn find_serial(&self, serial: &str) -> Result<Option<PresentToken>, TokenError> {
        let serial = serial.trim();
        Ok(self
            .survey()?
            .tokens
            .into_iter()
            .find(|t| t.serial == serial))
    }

    /// Reads what the desk needs to classify the token `present` describes (public facts, no
    /// PIN): its state read afresh, which key pairs it holds and its certificates' expiry.
    /// `revoked` is the desk's knowledge that the platform revoked this serial.
    ///
    /// What the last survey saw may be stale (a token just initialized still looks blank in
    /// it), so the token's state is read again first: a finished token is never taken for a
    /// blank one. A blank token is not opened.
    fn observe(&self, present: PresentToken, revoked: bool) -> Result<Observation, TokenError> {
        let present = if present.serial.is_empty() {
            present
        } else {
            self.find_serial(&present.serial)?
                .ok_or_else(|| TokenError::Removed {
                    serial: Some(present.serial.clone()),
                    slot: present.slot,
                    function: "survey".into(),
                })?
        };
        if present.is_blank() {
            return Ok(Observation {
                present,
                keys: Vec::new(),
                certificates: Vec::new(),
                revoked,
            });
        }
        let device = self.open(&present)?;
        let keys = device.key_pairs()?;
        let certificates = device
            .installed_certificates()?
            .into_iter()
            .filter_map(|(label, der)| {
                crate::certs::not_after(&der)
                    .ok()
                    .map(|not_after| (label, not_after))
            })
            .collect();
        Ok(Observation {
            present,
            keys,
            certificates,
            revoked,
        })
    }
}

/// One open token. All calls block; the token belongs to one thread (its worker): `Send`,
/// not `Sync`. Keep one `Device` per physical token per process: the login state may be
/// shared by every handle a process has on the token.
///
/// Operations that need the user PIN verified say so; [`Device::login_user`] verifies it
/// once for several of them.
pub trait Device: Send + fmt::Debug {
    /// The token serial (`None` only for a blank token that gets its serial when it is
    /// initialized, as SoftHSM2's spare slot does).
    fn serial(&self) -> Option<&str>;

    /// Reads the token's state now, checking that its position still holds this token
    /// ([`TokenError::Removed`] when another token took its place).
    fn describe(&self) -> Result<PresentToken, TokenError>;

    /// Initializes the token with a new SO PIN, user PIN and token label. A token that had
    /// no serial gets it now ([`Device::serial`]; SoftHSM2's spare slot). On an initialized
    /// token this wipes it (every key pair and certificate).
    ///
    /// `seen` is the state the caller has *just* read with [`Device::describe`] (read again
    /// when it describes another position or serial). Refused ([`TokenError::NotBlank`])
    /// unless the token is blank or `authorization` names its serial (invariant 2); a token
    /// with another serial than the one named is refused ([`TokenError::WrongToken`]).
    fn initialize(
        &mut self,
        seen: &PresentToken,
        label: &str,
        so_pin: &SecretString,
        user_pin: &SecretString,
        authorization: &Authorization,
    ) -> Result<(), TokenError>;

    /// Verifies the user PIN; the operations that need it may follow. A wrong PIN is
    /// [`TokenError::WrongPin`] with what the token says of the tries left, a locked one
    /// [`TokenError::PinLocked`].
    fn login_user(&self, pin: &SecretString) -> Result<(), TokenError>;

    /// Ends the login (nothing to do when nobody is logged in).
    fn logout(&self) -> Result<(), TokenError>;

    /// Unlock: with the SO PIN, sets a new user PIN and resets its retry counter.
    fn reset_user_pin(
        &self,
        so_pin: &SecretString,
        new_user_pin: &SecretString,
    ) -> Result<(), TokenError>;

    /// The labels whose key pair is on the token, read without a PIN (public keys).
    fn key_pairs(&self) -> Result<Vec<KeyLabel>, TokenError>;

    /// Makes `label`'s key pair anew on the token (user logged in): removes what an
    /// interrupted attempt left under `label` (key pair, certificates), generates the pair,
    /// checks that the private key can never leave the token, and returns how many objects
    /// were removed and the public key. A key that fails its check is left in place
    /// ([`TokenError::AttributeCheck`]) for the caller to discard.
    fn replace_key_pair(
        &self,
        label: KeyLabel,
        algorithm: KeyAlgorithm,
    ) -> Result<(usize, SubjectPublicKeyInfoOwned), TokenError>;

    /// Removes everything under `label` (key pair and certificates; user logged in to reach
    /// the private key). Returns how many objects went.
    fn discard_key_pair(&self, label: KeyLabel) -> Result<usize, TokenError>;

    /// `label`'s public key (no PIN needed).
    fn public_key(&self, label: KeyLabel) -> Result<SubjectPublicKeyInfoOwned, TokenError>;

    /// How many objects of each kind carry `label` (with its key id) in the current login
    /// state: private keys are counted only while the user is logged in. A label that holds
    /// more than one public key, private key or certificate is ambiguous: anyone with the
    /// token in hand can write public objects without a PIN.
    fn label_objects(&self, label: KeyLabel) -> Result<LabelObjects, TokenError>;

    /// A PKCS#10 CSR (DER) for `label`'s key with `subject`, signed on the token (user
    /// logged in).
    fn sign_csr(&self, label: KeyLabel, subject: &Name) -> Result<Vec<u8>, TokenError>;

    /// Every certificate (DER) under `label`: usually one; two between installing a renewed
    /// certificate and removing the old one.
    fn certificates(&self, label: KeyLabel) -> Result<Vec<Vec<u8>>, TokenError>;

    /// `label`'s certificate (DER); of several, the one that expires last.
    fn certificate(&self, label: KeyLabel) -> Result<Option<Vec<u8>>, TokenError> {
        Ok(latest(self.certificates(label)?))
    }

    /// Each label's certificate (DER; of several, the one that expires last), in label
    /// order, labels without one left out.
    fn installed_certificates(&self) -> Result<Vec<(KeyLabel, Vec<u8>)>, TokenError> {
        let mut out = Vec::with_capacity(KeyLabel::ALL.len());
        for label in KeyLabel::ALL {
            if let Some(der) = self.certificate(label)? {
                out.push((label, der));
            }
        }
        Ok(out)
    }

    /// Writes the verified certificates (invariant 3: nothing else can be written) that are
    /// not on the token yet, each with its key. Returns how many were written.
    fn install_certificates(&self, certs: &[VerifiedCertificate]) -> Result<usize, TokenError>;

    /// Removes the certificate under `label` whose value is `der` (the old one after a
    /// renewal). Returns whether one was found.
    fn remove_certificate(&self, label: KeyLabel, der: &[u8]) -> Result<bool, TokenError>;

    /// The activation self-test (user logged in): each key of `labels` proves on the token
    /// that it does its job (signs, or decrypts / agrees), checked on the host against its
    /// certificate's public key. Stops at the first failure.
    fn self_test(&self, labels: &[KeyLabel]) -> Result<Vec<KeySelfTest>, TokenError>;
}

/// What [`Device::label_objects`] counted under one label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LabelObjects {
    /// Public key objects.
    pub public_keys: usize,
    /// Private key objects (0 unless the user is logged in: they are private objects).
    pub private_keys: usize,
    /// Certificate objects.
    pub certificates: usize,
}

/// Of several certificates (DER), the one that expires last.
pub fn latest(certs: impl IntoIterator<Item = Vec<u8>>) -> Option<Vec<u8>> {
    use der::Decode;
    let mut certs: Vec<Vec<u8>> = certs.into_iter().collect();
    if certs.len() <= 1 {
        // The usual case: nothing to compare, nothing to parse.
        return certs.pop();
    }
    certs.into_iter().max_by_key(|der| {
        Certificate::from_der(der)
            .map(|c| c.tbs_certificate().validity().not_after.to_unix_duration())
            .unwrap_or_default()
    })
}

/// A boxed device is a device: what a worker holds when it does not know the interface.
impl<D: Device + ?Sized> Device for Box<D> {
    fn serial(&self) -> Option<&str> {
        (**self).serial()
    }
    fn describe(&self) -> Result<PresentToken, TokenError> {
        (**self).describe()
    }
    fn initialize(
        &mut self,
        seen: &PresentToken,
        label: &str,
        so_pin: &SecretString,
        user_pin: &SecretString,
        authorization: &Authorization,
    ) -> Result<(), TokenError> {
        (**self).initialize(seen, label, so_pin, user_pin, authorization)
    }
    fn login_user(&self, pin: &SecretString) -> Result<(), TokenError> {
        (**self).login_user(pin)
    }
    fn logout(&self) -> Result<(), TokenError> {
        (**self).logout()
    }
    fn reset_user_pin(
        &self,
        so_pin: &SecretString,
        new_user_pin: &SecretString,
    ) -> Result<(), TokenError> {
        (**self).reset_user_pin(so_pin, new_user_pin)
    }
    fn key_pairs(&self) -> Result<Vec<KeyLabel>, TokenError> {
        (**self).key_pairs()
    }
    fn replace_key_pair(
        &self,
        label: KeyLabel,
        algorithm: KeyAlgorithm,
    ) -> Result<(usize, SubjectPublicKeyInfoOwned), TokenError> {
        (**self).replace_key_pair(label, algorithm)
    }
    fn discard_key_pair(&self, label: KeyLabel) -> Result<usize, TokenError> {
        (**self).discard_key_pair(label)
    }
    fn public_key(&self, label: KeyLabel) -> Result<SubjectPublicKeyInfoOwned, TokenError> {
        (**self).public_key(label)
    }
    fn label_objects(&self, label: KeyLabel) -> Result<LabelObjects, TokenError> {
        (**self).label_objects(label)
    }
    fn sign_csr(&self, label: KeyLabel, subject: &Name) -> Result<Vec<u8>, TokenError> {
        (**self).sign_csr(label, subject)
    }
    fn certificates(&self, label: KeyLabel) -> Result<Vec<Vec<u8>>, TokenError> {
        (**self).certificates(label)
    }
    fn certificate(&self, label: KeyLabel) -> Result<Option<Vec<u8>>, TokenError> {
        (**self).certificate(label)
    }
    fn installed_certificates(&self) -> Result<Vec<(KeyLabel, Vec<u8>)>, TokenError> {
        (**self).installed_certificates()
    }
    fn install_certificates(&self, certs: &[VerifiedCertificate]) -> Result<usize, TokenError> {
        (**self).install_certificates(certs)
    }
    fn remove_certificate(&self, label: KeyLabel, der: &[u8]) -> Result<bool, TokenError> {
        (**self).remove_certificate(label, der)
    }
    fn self_test(&self, labels: &[KeyLabel]) -> Result<Vec<KeySelfTest>, TokenError> {
        (**self).self_test(labels)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn interface_names_are_the_configuration_words() {
        #[derive(serde::Deserialize)]
        struct Model {
            #[serde(default)]
            interface: Interface,
        }
        let parse = |text: &str| toml::from_str::<Model>(text).map(|m| m.interface);
        assert_eq!(parse("").unwrap(), Interface::Pkcs11, "the default");
        assert_eq!(parse("interface = \"pkcs11\"").unwrap(), Interface::Pkcs11);
        assert_eq!(parse("interface = \"skf\"").unwrap(), Interface::Skf);
        assert!(parse("interface = \"PKCS11\"").is_err());
        assert_eq!(Interface::Skf.to_string(), "skf");
    }

    #[test]
    fn skf_libraries_are_refused_with_a_clear_error() {
        let err = load(Interface::Skf, Path::new("/opt/vendor/libskf.so")).unwrap_err();
        assert!(
            matches!(
                err,
                TokenError::InterfaceUnsupported {
                    interface: "skf",
                    ..
                }
            ),
            "{err}"
        );
        let text = err.to_string();
        assert!(
            text.contains("skf") && text.contains("/opt/vendor/libskf.so"),
            "{text}"
        );
        assert!(text.contains("not supported yet"), "{text}");
    }
}
