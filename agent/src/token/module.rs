//! A loaded PKCS#11 module and the tokens present in its slots.
//!
//! A module is loaded by path and `C_Initialize`d (with OS locking) once per process: loading
//! the same path again returns the same [`Module`]. cryptoki's `Pkcs11` has no `Drop` that
//! finalizes, so [`Module::finalize`] is explicit; a later [`Module::load`] initializes the
//! library again without unloading it.
//!
//! Tokens are found by serial number, never by slot id (invariant 1): slot ids change on
//! re-plug and, on SoftHSM2, after a new `C_Initialize`. Modules without slot events (SoftHSM2)
//! are polled: [`Module::wait_for_serial`] covers "USB arrival first, PKCS#11 slot later".
//!
//! One slot whose token cannot be read (`C_GetTokenInfo` fails with anything but "no token" or
//! "removed") does not hide the others: [`Module::survey`] reports it apart, with its error,
//! and every other slot is read as usual.
//!
//! This module does not open sessions; see [`crate::token::Token`].

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::MechanismType;
use cryptoki::slot::{Slot, TokenInfo};

use super::error::{Site, TokenError};
use super::meter::metered;

/// A PKCS#11 module loaded and initialized in this process. Cheap to clone; `Send + Sync`.
#[derive(Clone, Debug)]
pub struct Module {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    path: PathBuf,
    pkcs11: Pkcs11,
    /// Whether `C_Initialize` is in effect (false after [`Module::finalize`]).
    initialized: Mutex<bool>,
}

/// Modules loaded in this process, by canonical path: `C_Initialize` happens once per process.
fn registry() -> &'static Mutex<HashMap<PathBuf, Module>> {
    static MODULES: OnceLock<Mutex<HashMap<PathBuf, Module>>> = OnceLock::new();
    MODULES.get_or_init(|| Mutex::new(HashMap::new()))
}

/// The flags of a token that matter at the desk (from `CK_TOKEN_INFO.flags`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TokenFlags {
    /// `CKF_TOKEN_INITIALIZED`: not blank.
    pub initialized: bool,
    /// `CKF_USER_PIN_INITIALIZED`.
    pub user_pin_initialized: bool,
    /// `CKF_USER_PIN_LOCKED`.
    pub user_pin_locked: bool,
    /// `CKF_USER_PIN_COUNT_LOW`.
    pub user_pin_count_low: bool,
    /// `CKF_USER_PIN_FINAL_TRY`.
    pub user_pin_final_try: bool,
    /// `CKF_SO_PIN_LOCKED`.
    pub so_pin_locked: bool,
    /// `CKF_SO_PIN_COUNT_LOW`.
    pub so_pin_count_low: bool,
    /// `CKF_SO_PIN_FINAL_TRY`.
    pub so_pin_final_try: bool,
}

impl TokenFlags {
    pub(crate) fn from_info(info: &TokenInfo) -> TokenFlags {
        TokenFlags {
            initialized: info.token_initialized(),
            user_pin_initialized: info.user_pin_initialized(),
            user_pin_locked: info.user_pin_locked(),
            user_pin_count_low: info.user_pin_count_low(),
            user_pin_final_try: info.user_pin_final_try(),
            so_pin_locked: info.so_pin_locked(),
            so_pin_count_low: info.so_pin_count_low(),
            so_pin_final_try: info.so_pin_final_try(),
        }
    }
}

/// A token present in a slot, as `C_GetTokenInfo` describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresentToken {
    /// The slot id now; it can change on re-plug (invariant 1), so never keep it as identity.
    pub slot: u64,
    /// The token serial, trimmed. Empty for a blank SoftHSM2 slot (real Ukeys and hsm-sim
    /// have a serial before initialization).
    pub serial: String,
    /// The token label, trimmed.
    pub label: String,
    /// The model, trimmed.
    pub model: String,
    /// The manufacturer id, trimmed.
    pub manufacturer: String,
    /// The PIN and initialization flags.
    pub flags: TokenFlags,
    /// Minimum PIN length the token accepts.
    pub min_pin_len: usize,
    /// Maximum PIN length the token accepts.
    pub max_pin_len: usize,
    /// The module's `CK_SLOT_INFO.slotDescription`, trimmed (empty when it could not be
    /// read): some modules name the USB port there.
    pub slot_description: String,
}

impl PresentToken {
    pub(crate) fn from_info(slot: Slot, info: &TokenInfo) -> PresentToken {
        PresentToken {
            slot: slot.id(),
            serial: info.serial_number().trim().to_string(),
            label: info.label().trim().to_string(),
            model: info.model().trim().to_string(),
            manufacturer: info.manufacturer_id().trim().to_string(),
            flags: TokenFlags::from_info(info),
            min_pin_len: info.min_pin_length(),
            max_pin_len: info.max_pin_length(),
            slot_description: String::new(),
        }
    }

    /// Whether the token is blank (`CKF_TOKEN_INITIALIZED` clear).
    pub fn is_blank(&self) -> bool {
        !self.flags.initialized
    }
}

/// A slot that holds a token the module cannot read: `C_GetTokenInfo` failed with an error
/// other than "no token" or "removed".
#[derive(Debug)]
pub struct UnreadableSlot {
    /// The slot id now.
    pub slot: u64,
    /// What the module answered (a [`TokenError::Pkcs11`] naming the call and its code).
    pub error: TokenError,
}

/// What one pass over a module's slots found.
#[derive(Debug, Default)]
pub struct SlotSurvey {
    /// The tokens read, in slot order.
    pub tokens: Vec<PresentToken>,
    /// The slots whose token could not be read, in slot order.
    pub unreadable: Vec<UnreadableSlot>,
}

impl Module {
    /// Loads the module at `path` and calls `C_Initialize` with OS locking, once per process:
    /// a module already loaded from the same path is returned as it is (re-initialized if it
    /// was finalized).
    pub fn load(path: impl AsRef<Path>) -> Result<Module, TokenError> {
        let path = path.as_ref();
        let key = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        let mut modules = registry()
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(module) = modules.get(&key) {
            module.ensure_initialized()?;
            return Ok(module.clone());
        }
        let pkcs11 = Pkcs11::new(&key).map_err(|source| TokenError::Load {
            path: key.clone(),
            source,
        })?;
        let module = Module {
            inner: Arc::new(Inner {
                path: key.clone(),
                pkcs11,
                initialized: Mutex::new(false),
            }),
        };
        module.ensure_initialized()?;
        modules.insert(key, module.clone());
        Ok(module)
    }

    fn ensure_initialized(&self) -> Result<(), TokenError> {
        let mut initialized = self
            .inner
            .initialized
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if *initialized {
            return Ok(());
        }
        let args = CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK);
        match metered(|| self.inner.pkcs11.initialize(args)) {
            // Someone else in this process initialized the library: it is usable.
            Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {
                *initialized = true;
                Ok(())
            }
            Err(source) => Err(TokenError::Load {
                path: self.inner.path.clone(),
                source,
            }),
        }
    }

    /// Calls `C_Finalize`. Sessions of this module become invalid; the library stays loaded,
    /// and the next [`Module::load`] of the same path initializes it again.
    pub fn finalize(self) -> Result<(), TokenError> {
        let mut initialized = self
            .inner
            .initialized
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if !*initialized {
            return Ok(());
        }
        *initialized = false;
        // `Pkcs11::finalize` consumes a handle; the registry keeps another, so the library is
        // not unloaded (unloading and reloading some modules crashes them).
        metered(|| self.inner.pkcs11.clone().finalize()).map_err(|e| Site::none().err(e))
    }

    /// The path the module was loaded from.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    pub(crate) fn pkcs11(&self) -> &Pkcs11 {
        &self.inner.pkcs11
    }

    /// Every token present now, in slot order, and apart from them the slots whose token
    /// cannot be read. A slot whose token vanishes while it is being read is left out: it is
    /// no longer present. Fails only when the slot list itself cannot be read.
    pub fn survey(&self) -> Result<SlotSurvey, TokenError> {
        let slots = metered(|| self.inner.pkcs11.get_slots_with_token())
            .map_err(|e| Site::none().err(e))?;
        let mut survey = SlotSurvey {
            tokens: Vec::with_capacity(slots.len()),
            unreadable: Vec::new(),
        };
        for slot in slots {
            match metered(|| self.inner.pkcs11.get_token_info(slot)) {
                Ok(info) => {
                    let mut present = PresentToken::from_info(slot, &info);
                    // Only a hint for matching USB ports: a module that cannot say is no error.
                    if let Ok(slot_info) = metered(|| self.inner.pkcs11.get_slot_info(slot)) {
                        present.slot_description = slot_info.slot_description().trim().to_string();
                    }
                    survey.tokens.push(present);
                }
                Err(CkError::Pkcs11(
                    RvError::TokenNotPresent | RvError::DeviceRemoved | RvError::SlotIdInvalid,
                    _,
                )) => {
                    tracing::debug!(slot = slot.id(), "token left its slot during a scan");
                }
                Err(e) => survey.unreadable.push(UnreadableSlot {
                    slot: slot.id(),
                    error: Site {
                        slot: Some(slot.id()),
                        serial: None,
                    }
                    .err(e),
                }),
            }
        }
        Ok(survey)
    }

    /// Every token that can be read now, in slot order (see [`Module::survey`] for the slots
    /// whose token cannot be).
    pub fn scan(&self) -> Result<Vec<PresentToken>, TokenError> {
        Ok(self.survey()?.tokens)
    }

    /// The present token with this serial, if any. A slot whose token cannot be read is
    /// passed over: nothing shows that it holds this serial.
    pub fn find_by_serial(&self, serial: &str) -> Result<Option<PresentToken>, TokenError> {
        let serial = serial.trim();
        Ok(self.scan()?.into_iter().find(|t| t.serial == serial))
    }

    /// Polls the slot list until a token with this serial is present, or `timeout` passes.
    ///
    /// For "USB arrival first, PKCS#11 slot later": the slot appears after the USB event, and
    /// SoftHSM2-like modules offer no slot events, so this polls every `interval`.
    pub fn wait_for_serial(
        &self,
        serial: &str,
        timeout: Duration,
        interval: Duration,
    ) -> Result<PresentToken, TokenError> {
        let start = Instant::now();
        loop {
            if let Some(token) = self.find_by_serial(serial)? {
                return Ok(token);
            }
            let waited = start.elapsed();
            if waited >= timeout {
                return Err(TokenError::NotFound {
                    serial: serial.trim().to_string(),
                    waited,
                });
            }
            std::thread::sleep(interval.min(timeout - waited));
        }
    }

    /// The mechanisms the token in `slot` offers.
    pub(crate) fn mechanisms(
        &self,
        slot: Slot,
        site: &Site,
    ) -> Result<Vec<MechanismType>, TokenError> {
        metered(|| self.inner.pkcs11.get_mechanism_list(slot)).map_err(|e| site.err(e))
    }

    /// The slot handle for a slot id from [`PresentToken::slot`], if it still has a token.
    pub(crate) fn slot(&self, id: u64) -> Result<Option<Slot>, TokenError> {
        let slots = metered(|| self.inner.pkcs11.get_slots_with_token())
            .map_err(|e| Site::none().err(e))?;
        Ok(slots.into_iter().find(|s| s.id() == id))
    }
}
