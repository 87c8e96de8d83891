//! The token layer's one error type, [`TokenError`] (also the error of the device seam,
//! [`crate::device`]), and the mapping of PKCS#11 return codes.
//!
//! Every PKCS#11 failure names the function that failed, the `CKR_` code, the slot and the
//! token serial (when known). PIN failures carry what the token says about tries left.
//! This module does no IO.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use cryptoki::context::Function;
use cryptoki::error::{Error as CkError, RvError};
use ukey_protocol::KeyLabel;

/// Who a PIN belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PinOwner {
    /// The security officer (SO): initializes the token and resets the user PIN.
    SecurityOfficer,
    /// The normal user: signs and decrypts.
    User,
}

impl fmt::Display for PinOwner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PinOwner::SecurityOfficer => "SO",
            PinOwner::User => "user",
        })
    }
}

/// What a token reports about the retries left for a PIN after a wrong attempt.
///
/// PKCS#11 reports no count, only the `*_PIN_COUNT_LOW` and `*_PIN_FINAL_TRY` flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TriesLeft {
    /// The token gives no hint (SoftHSM2 never does).
    Unknown,
    /// `CKF_*_PIN_COUNT_LOW`: at least one wrong attempt was counted.
    Low,
    /// `CKF_*_PIN_FINAL_TRY`: one more wrong PIN locks it.
    FinalTry,
}

impl fmt::Display for TriesLeft {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TriesLeft::Unknown => "tries left unknown",
            TriesLeft::Low => "few tries left",
            TriesLeft::FinalTry => "one try left",
        })
    }
}

/// Formats an optional token serial for messages (`?` when not known, e.g. a blank SoftHSM2 slot).
struct Serial<'a>(&'a Option<String>);

impl fmt::Display for Serial<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(s) if !s.is_empty() => f.write_str(s),
            _ => f.write_str("?"),
        }
    }
}

/// The `CKR_…` name of a PKCS#11 return code, e.g. `CKR_PIN_INCORRECT`.
pub fn ckr_name(rv: RvError) -> String {
    if let RvError::UnknownErrorCode(code) = rv {
        return format!("CKR_0x{code:08x}");
    }
    let camel = format!("{rv:?}");
    let mut out = String::from("CKR");
    for c in camel.chars() {
        if c.is_ascii_uppercase() {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

/// The `C_…` name of a PKCS#11 function, e.g. `C_Login`.
pub fn function_name(function: Function) -> String {
    format!("C_{function:?}")
}

/// Everything that can go wrong in the token layer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// The PKCS#11 module could not be loaded or initialized.
    #[error("cannot load PKCS#11 module {path}: {source}")]
    Load {
        /// The module's path.
        path: PathBuf,
        /// What cryptoki reported.
        #[source]
        source: CkError,
    },
    /// The configuration names a token interface this agent cannot speak yet.
    #[error(
        "token interface {interface:?} (library {path}) is not supported yet: only \"pkcs11\" is"
    )]
    InterfaceUnsupported {
        /// The interface, as the configuration names it (e.g. `skf`).
        interface: &'static str,
        /// The library's path.
        path: PathBuf,
    },
    /// A PKCS#11 call failed with a return code that has no more specific variant.
    #[error("{function} failed with {} on token {} (slot {})", ckr_name(*.rv), Serial(.serial), slot.map_or("?".to_string(), |s| s.to_string()))]
    Pkcs11 {
        /// The function, e.g. `C_GenerateKeyPair`.
        function: String,
        /// The return code.
        rv: RvError,
        /// The slot id at the time of the call.
        slot: Option<u64>,
        /// The token's serial number, when known.
        serial: Option<String>,
    },
    /// cryptoki failed outside a PKCS#11 return code (conversion, missing function, …).
    #[error("cryptoki failed on token {}: {source}", Serial(.serial))]
    Cryptoki {
        /// The token's serial number, when known.
        serial: Option<String>,
        /// What cryptoki reported.
        #[source]
        source: CkError,
    },
    /// The token left its slot (pulled out) before or during the call. Its session and login
    /// are gone, even if it is back by now: find it again with `Token::reconnect` and log in.
    #[error("token {} was removed (slot {slot}, during {function})", Serial(.serial))]
    Removed {
        /// The token's serial number, when known.
        serial: Option<String>,
        /// The slot it was in.
        slot: u64,
        /// The call that noticed.
        function: String,
    },
    /// No present token has this serial (within the time waited, if any).
    #[error("no token with serial {serial} is present (waited {waited:?})")]
    NotFound {
        /// The serial looked for.
        serial: String,
        /// How long it was polled for.
        waited: Duration,
    },
    /// The slot holds a token that is not initialized, and the operation needs one.
    #[error("token in slot {slot} is blank (not initialized)")]
    Blank {
        /// The slot.
        slot: u64,
    },
    /// A PIN was wrong.
    #[error("wrong {owner} PIN for token {} ({tries_left})", Serial(.serial))]
    WrongPin {
        /// The token's serial number.
        serial: Option<String>,
        /// Whose PIN.
        owner: PinOwner,
        /// What the token says about the retries left.
        tries_left: TriesLeft,
    },
    /// A PIN is locked: too many wrong attempts.
    #[error("{owner} PIN of token {} is locked", Serial(.serial))]
    PinLocked {
        /// The token's serial number.
        serial: Option<String>,
        /// Whose PIN.
        owner: PinOwner,
    },
    /// A new PIN is too short or too long for this token.
    #[error("{owner} PIN length outside {min}..={max} for token {}", Serial(.serial))]
    PinLength {
        /// The token's serial number.
        serial: Option<String>,
        /// Whose PIN.
        owner: PinOwner,
        /// The token's minimum PIN length.
        min: usize,
        /// The token's maximum PIN length.
        max: usize,
    },
    /// `C_InitToken` refused: the token is initialized and no job names it (invariant 2).
    #[error("refusing to initialize token {} (label {label:?}): it is not blank and no job names it", Serial(.serial))]
    NotBlank {
        /// The token's serial number.
        serial: Option<String>,
        /// Its current token label.
        label: String,
    },
    /// The authorization names another token than the one present.
    #[error("job names token {expected}, but this token is {}", Serial(.found))]
    WrongToken {
        /// The serial the job names.
        expected: String,
        /// The serial of the token at hand.
        found: Option<String>,
    },
    /// A key attribute read back after generation is wrong or missing.
    #[error("{label} key on token {}: {attribute} is {found}, expected {expected}", Serial(.serial))]
    AttributeCheck {
        /// The token's serial number.
        serial: Option<String>,
        /// Which key pair.
        label: KeyLabel,
        /// The attribute, e.g. `CKA_NEVER_EXTRACTABLE`.
        attribute: &'static str,
        /// The required value.
        expected: String,
        /// The value found, or `missing`.
        found: String,
    },
    /// An object with this label already exists where a new one was to be created.
    #[error("token {} already holds a {class} labelled {label}", Serial(.serial))]
    ObjectExists {
        /// The token's serial number.
        serial: Option<String>,
        /// The label.
        label: KeyLabel,
        /// `private key`, `public key` or `certificate`.
        class: &'static str,
    },
    /// An object needed for the operation is not on the token.
    #[error("token {} holds no {class} labelled {label}", Serial(.serial))]
    ObjectMissing {
        /// The token's serial number.
        serial: Option<String>,
        /// The label.
        label: KeyLabel,
        /// `private key`, `public key` or `certificate`.
        class: &'static str,
    },
    /// The module lacks a mechanism the operation needs.
    #[error("token {} does not offer {mechanism}, needed to {purpose}", Serial(.serial))]
    MechanismUnsupported {
        /// The token's serial number.
        serial: Option<String>,
        /// The mechanism, e.g. `CKM_ECDH1_DERIVE`.
        mechanism: &'static str,
        /// What it was needed for.
        purpose: &'static str,
    },
    /// A public key read from the token cannot be understood.
    #[error("{label} public key on token {}: {reason}", Serial(.serial))]
    PublicKey {
        /// The token's serial number.
        serial: Option<String>,
        /// Which key pair.
        label: KeyLabel,
        /// What is wrong with it.
        reason: String,
    },
    /// A certificate given for installation cannot be parsed.
    #[error("{label} certificate: {reason}")]
    Certificate {
        /// Which key pair.
        label: KeyLabel,
        /// What is wrong with it.
        reason: String,
    },
    /// Building or self-checking a CSR failed.
    #[error("{label} CSR on token {}: {reason}", Serial(.serial))]
    Csr {
        /// The token's serial number.
        serial: Option<String>,
        /// Which key pair.
        label: KeyLabel,
        /// What went wrong.
        reason: String,
    },
    /// A key failed the activation self-test.
    #[error("self-test of {label} key on token {} failed: {reason}", Serial(.serial))]
    SelfTest {
        /// The token's serial number.
        serial: Option<String>,
        /// Which key pair.
        label: KeyLabel,
        /// What did not match.
        reason: String,
    },
    /// An argument is out of range (e.g. a token label longer than 32 bytes).
    #[error("invalid {what}: {reason}")]
    InvalidArgument {
        /// What was invalid.
        what: &'static str,
        /// Why.
        reason: String,
    },
    /// The system random generator failed.
    #[error("random generator failed: {0}")]
    Random(String),
    /// The token's worker thread is gone (it ended or could not be started).
    #[error("worker of token {} is gone", Serial(.serial))]
    WorkerGone {
        /// The token's serial number.
        serial: Option<String>,
    },
    /// A closure run on the token's worker panicked; the worker keeps serving.
    #[error("a call on the worker of token {} panicked: {message}", Serial(.serial))]
    WorkerPanicked {
        /// The token's serial number.
        serial: Option<String>,
        /// The panic message.
        message: String,
    },
}

impl TokenError {
    /// The serial of the token the error concerns, when it is known.
    pub fn serial(&self) -> Option<&str> {
        match self {
            TokenError::Pkcs11 { serial, .. }
            | TokenError::Cryptoki { serial, .. }
            | TokenError::Removed { serial, .. }
            | TokenError::WrongPin { serial, .. }
            | TokenError::PinLocked { serial, .. }
            | TokenError::PinLength { serial, .. }
            | TokenError::NotBlank { serial, .. }
            | TokenError::AttributeCheck { serial, .. }
            | TokenError::ObjectExists { serial, .. }
            | TokenError::ObjectMissing { serial, .. }
            | TokenError::MechanismUnsupported { serial, .. }
            | TokenError::PublicKey { serial, .. }
            | TokenError::Csr { serial, .. }
            | TokenError::SelfTest { serial, .. }
            | TokenError::WorkerGone { serial }
            | TokenError::WorkerPanicked { serial, .. } => serial.as_deref(),
            TokenError::WrongToken { found, .. } => found.as_deref(),
            TokenError::NotFound { serial, .. } => Some(serial),
            _ => None,
        }
    }

    /// Whether the token was pulled out: the job should park and wait for it to come back.
    pub fn is_removed(&self) -> bool {
        matches!(self, TokenError::Removed { .. })
    }

    /// The `C_…` function that failed, when the error is a PKCS#11 call's.
    pub fn function(&self) -> Option<String> {
        match self {
            TokenError::Pkcs11 { function, .. } | TokenError::Removed { function, .. } => {
                Some(function.clone())
            }
            TokenError::Cryptoki {
                source: CkError::Pkcs11(_, function),
                ..
            } => Some(function_name(*function)),
            _ => None,
        }
    }

    /// The PKCS#11 return code, when the error is one.
    pub fn rv(&self) -> Option<RvError> {
        match self {
            TokenError::Pkcs11 { rv, .. } => Some(*rv),
            TokenError::Cryptoki {
                source: CkError::Pkcs11(rv, _),
                ..
            } => Some(*rv),
            _ => None,
        }
    }
}

/// Where a PKCS#11 call happened: enough to turn a cryptoki error into a [`TokenError`].
#[derive(Debug, Clone)]
pub(crate) struct Site {
    pub(crate) slot: Option<u64>,
    pub(crate) serial: Option<String>,
}

impl Site {
    /// A call not tied to a slot (e.g. `C_GetSlotList`).
    pub(crate) fn none() -> Site {
        Site {
            slot: None,
            serial: None,
        }
    }

    /// Maps a cryptoki error to a [`TokenError`], recognizing a removed token.
    pub(crate) fn err(&self, e: CkError) -> TokenError {
        match e {
            CkError::Pkcs11(rv, function) => {
                let function = function_name(function);
                match (rv, self.slot) {
                    (
                        RvError::DeviceRemoved | RvError::TokenNotPresent | RvError::SessionClosed,
                        Some(slot),
                    ) => TokenError::Removed {
                        serial: self.serial.clone(),
                        slot,
                        function,
                    },
                    _ => TokenError::Pkcs11 {
                        function,
                        rv,
                        slot: self.slot,
                        serial: self.serial.clone(),
                    },
                }
            }
            other => TokenError::Cryptoki {
                serial: self.serial.clone(),
                source: other,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn ckr_names_follow_the_specification() {
        assert_eq!(ckr_name(RvError::PinIncorrect), "CKR_PIN_INCORRECT");
        assert_eq!(ckr_name(RvError::SlotIdInvalid), "CKR_SLOT_ID_INVALID");
        assert_eq!(
            ckr_name(RvError::CryptokiNotInitialized),
            "CKR_CRYPTOKI_NOT_INITIALIZED"
        );
        assert_eq!(
            ckr_name(RvError::UnknownErrorCode(0x8000_0001)),
            "CKR_0x80000001"
        );
        assert_eq!(
            function_name(Function::GenerateKeyPair),
            "C_GenerateKeyPair"
        );
    }

    #[test]
    fn removal_codes_become_removed() {
        let site = Site {
            slot: Some(7),
            serial: Some("ABC".into()),
        };
        let e = site.err(CkError::Pkcs11(RvError::DeviceRemoved, Function::Sign));
        assert!(e.is_removed(), "{e}");
        assert_eq!(e.serial(), Some("ABC"));
        let e = site.err(CkError::Pkcs11(RvError::PinLenRange, Function::InitPIN));
        assert_eq!(
            e.to_string(),
            "C_InitPIN failed with CKR_PIN_LEN_RANGE on token ABC (slot 7)"
        );
        assert_eq!(e.function().as_deref(), Some("C_InitPIN"));
        assert_eq!(e.rv(), Some(RvError::PinLenRange));
    }
}
