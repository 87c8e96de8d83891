//! The keypad of the lifecycle: this process's own PKCS#11 context on the rack's module, to
//! read a token's certificates back (public objects, no login) and to type user PINs —
//! wrong ones until the token locks, and the right one to see that it opens.
//!
//! What it does not do: write to a token, or call PKCS#11 on the runtime's threads (the
//! story runs each call through [`blocking`]).

use std::path::Path;

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::object::{Attribute, AttributeType, ObjectClass};
use cryptoki::session::UserType;
use cryptoki::slot::Slot;
use secrecy::{ExposeSecret, SecretString};
use ukey_protocol::{KeyLabel, TokenSerial};

use super::super::error::DemoError;
use super::MAX_WRONG_PINS;
use super::summary::CertState;

/// This process's own PKCS#11 context on the rack's module, next to the agent's (the module
/// is initialized once per process; this context never finalizes it).
#[derive(Clone)]
pub(super) struct Keypad {
    pkcs11: Pkcs11,
}

/// One wrong PIN and what the token said.
pub(super) struct Attempt {
    pub(super) rv: String,
    pub(super) count_low: bool,
    pub(super) final_try: bool,
    pub(super) locked: bool,
}

impl Keypad {
    pub(super) fn open(module: &Path) -> Result<Keypad, DemoError> {
        let fail = |reason: String| DemoError::Keypad {
            module: module.to_path_buf(),
            reason,
        };
        let pkcs11 = Pkcs11::new(module).map_err(|e| fail(format!("load: {e}")))?;
        match pkcs11.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
            Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
            Err(e) => return Err(fail(format!("C_Initialize: {e}"))),
        }
        Ok(Keypad { pkcs11 })
    }

    pub(super) fn slot_of(&self, serial: &TokenSerial) -> Result<Slot, String> {
        for slot in self
            .pkcs11
            .get_slots_with_token()
            .map_err(|e| format!("C_GetSlotList: {e}"))?
        {
            if let Ok(info) = self.pkcs11.get_token_info(slot)
                && info.serial_number().trim() == serial.as_str()
            {
                return Ok(slot);
            }
        }
        Err(format!("token {serial} is in no slot"))
    }

    /// The certificates on the token, in label order (public objects: no login).
    pub(super) fn certificates(&self, serial: &TokenSerial) -> Result<Vec<CertState>, String> {
        let slot = self.slot_of(serial)?;
        let session = self
            .pkcs11
            .open_ro_session(slot)
            .map_err(|e| format!("C_OpenSession: {e}"))?;
        let handles = session
            .find_objects(&[Attribute::Class(ObjectClass::CERTIFICATE)])
            .map_err(|e| format!("C_FindObjects: {e}"))?;
        let mut found = Vec::new();
        for h in handles {
            let attrs = session
                .get_attributes(h, &[AttributeType::Label, AttributeType::Value])
                .map_err(|e| format!("C_GetAttributeValue: {e}"))?;
            let mut label = None;
            let mut value = None;
            for a in attrs {
                match a {
                    Attribute::Label(l) => label = Some(String::from_utf8_lossy(&l).into_owned()),
                    Attribute::Value(v) => value = Some(v),
                    _ => {}
                }
            }
            if let (Some(l), Some(v)) = (label, value) {
                found.push((l, v));
            }
        }
        let mut out = Vec::new();
        for label in KeyLabel::ALL {
            for (l, der) in &found {
                if l == label.as_str() {
                    out.push(CertState::of(l, der));
                }
            }
        }
        Ok(out)
    }

    /// The user PIN's counter flags: count low, final try, locked.
    pub(super) fn user_pin_flags(
        &self,
        serial: &TokenSerial,
    ) -> Result<(bool, bool, bool), String> {
        let slot = self.slot_of(serial)?;
        let info = self
            .pkcs11
            .get_token_info(slot)
            .map_err(|e| format!("C_GetTokenInfo: {e}"))?;
        Ok((
            info.user_pin_count_low(),
            info.user_pin_final_try(),
            info.user_pin_locked(),
        ))
    }

    /// `C_Login` as the user with `pin`; logs out again when it worked.
    pub(super) fn login(&self, serial: &TokenSerial, pin: &SecretString) -> Result<(), String> {
        let slot = self.slot_of(serial)?;
        let session = self
            .pkcs11
            .open_ro_session(slot)
            .map_err(|e| format!("C_OpenSession: {e}"))?;
        let pin = SecretString::from(pin.expose_secret().to_owned());
        session
            .login(UserType::User, Some(&pin))
            .map_err(|e| rv_name(&e))?;
        session.logout().map_err(|e| format!("C_Logout: {e}"))
    }

    /// Types wrong user PINs until the token answers `CKR_PIN_LOCKED`.
    pub(super) fn type_wrong_pins(
        &self,
        serial: &TokenSerial,
        right: &SecretString,
    ) -> Result<Vec<Attempt>, String> {
        let slot = self.slot_of(serial)?;
        // As long as the right one, so the length is accepted and the try is counted.
        let wrong: String = right
            .expose_secret()
            .chars()
            .map(|c| match c.to_digit(10) {
                Some(d) => char::from(b'0' + ((d as u8 + 1) % 10)),
                None => {
                    if c == 'x' {
                        'y'
                    } else {
                        'x'
                    }
                }
            })
            .collect();
        let wrong = SecretString::from(wrong);
        let mut attempts = Vec::new();
        for _ in 0..MAX_WRONG_PINS {
            let session = self
                .pkcs11
                .open_ro_session(slot)
                .map_err(|e| format!("C_OpenSession: {e}"))?;
            let rv = match session.login(UserType::User, Some(&wrong)) {
                Ok(()) => {
                    let _ = session.logout();
                    return Err("the token accepted a wrong user PIN".to_owned());
                }
                Err(e) => rv_name(&e),
            };
            drop(session);
            let info = self
                .pkcs11
                .get_token_info(slot)
                .map_err(|e| format!("C_GetTokenInfo: {e}"))?;
            let done = rv == "CKR_PIN_LOCKED";
            attempts.push(Attempt {
                rv,
                count_low: info.user_pin_count_low(),
                final_try: info.user_pin_final_try(),
                locked: info.user_pin_locked(),
            });
            if done {
                return Ok(attempts);
            }
        }
        Err(format!(
            "still not locked after {MAX_WRONG_PINS} wrong user PINs"
        ))
    }
}

/// `CKR_PIN_INCORRECT` for a PKCS#11 error, else the error in words.
fn rv_name(e: &CkError) -> String {
    match e {
        CkError::Pkcs11(RvError::PinIncorrect, _) => "CKR_PIN_INCORRECT".to_owned(),
        CkError::Pkcs11(RvError::PinLocked, _) => "CKR_PIN_LOCKED".to_owned(),
        CkError::Pkcs11(RvError::PinLenRange, _) => "CKR_PIN_LEN_RANGE".to_owned(),
        other => other.to_string(),
    }
}

/// Runs `f` on a blocking thread (PKCS#11 calls block; the runtime's threads must not).
pub(super) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> Result<T, String> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| format!("PKCS#11 worker: {e}"))?
}
