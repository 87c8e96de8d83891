//! [`Token`]: one Ukey, found by serial, with its session and login state.
//!
//! All calls block. A `Token` holds at most one read/write session, opened on first use and
//! closed on `Drop` (cryptoki's `Session` closes itself and logs instead of panicking); the
//! login state lives in that session. A `Token` is `Send` but not `Sync`: it belongs to one
//! thread, the token's worker ([`crate::worker`]).
//!
//! A pulled token kills the session: the call that notices reports [`TokenError::Removed`]
//! (also when the token is already back, since the session and its login are gone either
//! way), the dead session and the login state are forgotten, and a new session is only opened
//! after `C_GetTokenInfo` shows this token's serial in the slot, never on a token that took
//! its place (invariant 1). After a removal, [`Token::reconnect`] finds it again by serial.
//!
//! Initializing a token is guarded by invariant 2: [`Token::init_token`] refuses an initialized
//! token unless an [`Authorization`] from a job names its serial.
//!
//! The open session also carries the object handles found or created through it
//! (`handles.rs`): they are forgotten with the session, and whenever the login changes.
//!
//! Key pairs are in `keys.rs`, objects in `objects.rs`, certificates in `certificates.rs`,
//! CSRs in `signer.rs`, the activation self-test in `selftest.rs`.

use std::cell::{Cell, Ref, RefCell};
use std::time::Duration;

use cryptoki::error::{Error as CkError, RvError};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use secrecy::SecretString;
use ukey_protocol::KeyLabel;

use super::error::{PinOwner, Site, TokenError, TriesLeft};
use super::handles::{Handles, Remembered};
use super::meter::metered;
use super::module::{Module, PresentToken};
use super::objects::ObjectKind;

/// Why `C_InitToken` may run on this token (invariant 2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Authorization {
    /// Only if the token is blank.
    BlankOnly,
    /// The job names this token serial (re-keying a known token with the SO PIN the job
    /// carries). Refused on any token with another serial.
    NamedByJob {
        /// The serial the job names.
        serial: String,
    },
}

/// The longest token label PKCS#11 stores (`CK_TOKEN_INFO.label` is 32 bytes).
pub const MAX_TOKEN_LABEL: usize = 32;

/// An open session with the handles found or created through it, which are good only as long
/// as it is open: dropping it forgets them.
struct Open {
    session: Session,
    handles: RefCell<Handles>,
}

/// One token, by serial. All calls block; see the module documentation.
///
/// Keep one `Token` per physical token per process: PKCS#11 login state is shared by all
/// sessions of an application, so two would log each other in and out.
pub struct Token {
    pub(super) module: Module,
    pub(super) slot: Slot,
    /// `None` or empty only for a blank SoftHSM2 slot, which has no serial until initialized.
    pub(super) serial: Option<String>,
    session: RefCell<Option<Open>>,
    /// Set when a call found the session dead (token pulled): the next use drops it.
    session_lost: Cell<bool>,
    login: Cell<Option<PinOwner>>,
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Token")
            .field("module", &self.module.path())
            .field("slot", &self.slot.id())
            .field("serial", &self.serial)
            .field("login", &self.login.get())
            .finish_non_exhaustive()
    }
}

impl Token {
    /// The serial as a log field: `serial=ABC`, or no field for a token without one yet.
    pub(crate) fn logged_serial(&self) -> Option<tracing::field::DisplayValue<&str>> {
        self.serial.as_deref().map(tracing::field::display)
    }

    /// Opens the present token with this serial.
    pub fn open(module: &Module, serial: &str) -> Result<Token, TokenError> {
        let present = module
            .find_by_serial(serial)?
            .ok_or_else(|| TokenError::NotFound {
                serial: serial.trim().to_string(),
                waited: Duration::ZERO,
            })?;
        Token::at(module, &present)
    }

    /// Opens the token a scan found, e.g. a blank SoftHSM2 slot that has no serial yet.
    pub fn at(module: &Module, present: &PresentToken) -> Result<Token, TokenError> {
        let slot = module
            .slot(present.slot)?
            .ok_or_else(|| TokenError::Removed {
                serial: Some(present.serial.clone()).filter(|s| !s.is_empty()),
                slot: present.slot,
                function: "C_GetSlotList".into(),
            })?;
        let token = Token {
            module: module.clone(),
            slot,
            serial: Some(present.serial.clone()).filter(|s| !s.is_empty()),
            session: RefCell::new(None),
            session_lost: Cell::new(false),
            login: Cell::new(None),
        };
        // The slot may have changed hands since the scan.
        token.info()?;
        Ok(token)
    }

    /// The token serial (`None` for a blank SoftHSM2 slot before initialization).
    pub fn serial(&self) -> Option<&str> {
        self.serial.as_deref()
    }

    /// The slot id now (not an identity: it changes on re-plug).
    pub fn slot_id(&self) -> u64 {
        self.slot.id()
    }

    /// The module this token is reached through.
    pub fn module(&self) -> &Module {
        &self.module
    }

    /// Who is logged in through this `Token`, as far as it knows.
    pub fn logged_in(&self) -> Option<PinOwner> {
        self.login.get()
    }

    pub(super) fn site(&self) -> Site {
        Site {
            slot: Some(self.slot.id()),
            serial: self.serial.clone(),
        }
    }

    /// Reads `C_GetTokenInfo` and checks that the slot still holds this token.
    pub fn info(&self) -> Result<PresentToken, TokenError> {
        let info = metered(|| self.module.pkcs11().get_token_info(self.slot))
            .map_err(|e| self.map_err(e))?;
        let present = PresentToken::from_info(self.slot, &info);
        if let Some(serial) = &self.serial
            && *serial != present.serial
        {
            // Another token sits in the slot now: ours was pulled.
            return Err(TokenError::Removed {
                serial: self.serial.clone(),
                slot: self.slot.id(),
                function: "C_GetTokenInfo".into(),
            });
        }
        Ok(present)
    }

    /// Finds this token again by serial after it was pulled and re-inserted (its slot id may
    /// differ), waiting up to `timeout`. Drops the old session and login state.
    pub fn reconnect(&mut self, timeout: Duration) -> Result<(), TokenError> {
        let serial = self.serial.clone().ok_or_else(|| TokenError::NotFound {
            serial: String::new(),
            waited: Duration::ZERO,
        })?;
        self.close_session();
        let present = self
            .module
            .wait_for_serial(&serial, timeout, Duration::from_millis(50))?;
        self.slot = self
            .module
            .slot(present.slot)?
            .ok_or_else(|| TokenError::NotFound {
                serial: serial.clone(),
                waited: timeout,
            })?;
        Ok(())
    }

    /// Maps a cryptoki error, telling a pulled token from other failures.
    ///
    /// A removal ends the session and its login: both are forgotten here, so that the next
    /// call opens a fresh session (after checking the serial) instead of failing forever
    /// with `CKR_SESSION_HANDLE_INVALID`, and [`Token::logged_in`] tells the truth.
    pub(super) fn map_err(&self, e: CkError) -> TokenError {
        let err = self.site().err(e);
        let removed = match &err {
            TokenError::Removed { .. } => true,
            // Only a removal invalidates the one session a `Token` holds (it never closes it
            // behind its own back), even when the token is back in its slot by now.
            TokenError::Pkcs11 {
                rv: RvError::SessionHandleInvalid,
                ..
            } => true,
            TokenError::Pkcs11 {
                rv: RvError::TokenNotRecognized,
                ..
            } => !self.still_present(),
            _ => false,
        };
        if !removed {
            return err;
        }
        self.session_lost.set(true);
        self.login.set(None);
        match err {
            TokenError::Pkcs11 { function, .. } => TokenError::Removed {
                serial: self.serial.clone(),
                slot: self.slot.id(),
                function,
            },
            other => other,
        }
    }

    fn still_present(&self) -> bool {
        match metered(|| self.module.pkcs11().get_token_info(self.slot)) {
            Ok(info) => match &self.serial {
                Some(serial) => info.serial_number().trim() == serial,
                None => true,
            },
            Err(_) => false,
        }
    }

    /// The open session, opening a read/write one if there is none (or the old one died).
    pub(super) fn session(&self) -> Result<Ref<'_, Session>, TokenError> {
        if self.session_lost.get()
            && let Ok(mut dead) = self.session.try_borrow_mut()
        {
            // Dropping closes it; the module answers "invalid handle", which is only logged.
            drop(dead.take());
            self.session_lost.set(false);
        }
        if self.session.borrow().is_none() {
            // The slot may hold another token by now: never open a session on that one.
            self.info()?;
            let session = metered(|| self.module.pkcs11().open_rw_session(self.slot)).map_err(
                |e| match e {
                    CkError::Pkcs11(RvError::TokenNotRecognized, _) if self.is_blank_now() => {
                        TokenError::Blank {
                            slot: self.slot.id(),
                        }
                    }
                    e => self.map_err(e),
                },
            )?;
            *self.session.borrow_mut() = Some(Open {
                session,
                handles: RefCell::new(Handles::default()),
            });
        }
        Ref::filter_map(self.session.borrow(), |open| {
            open.as_ref().map(|open| &open.session)
        })
        .map_err(|_| TokenError::Blank {
            slot: self.slot.id(),
        })
    }

    /// The handle remembered in the open session for `label`'s key object of `kind`; none
    /// when no session is open or it died.
    pub(super) fn remembered(&self, kind: ObjectKind, label: KeyLabel) -> Option<Remembered> {
        if self.session_lost.get() {
            return None;
        }
        let open = self.session.try_borrow().ok()?;
        let handles = open.as_ref()?.handles.try_borrow().ok()?;
        handles.get(kind, label)
    }

    /// Remembers a handle that a call through the open session has just returned.
    pub(super) fn remember(&self, kind: ObjectKind, label: KeyLabel, remembered: Remembered) {
        if self.session_lost.get() {
            return;
        }
        if let Ok(open) = self.session.try_borrow()
            && let Some(open) = open.as_ref()
            && let Ok(mut handles) = open.handles.try_borrow_mut()
        {
            handles.remember(kind, label, remembered);
        }
    }

    /// Forgets every remembered handle (objects were destroyed, the login changed, or one
    /// of them turned out stale).
    pub(super) fn forget_handles(&self) {
        if let Ok(open) = self.session.try_borrow()
            && let Some(open) = open.as_ref()
            && let Ok(mut handles) = open.handles.try_borrow_mut()
            && !handles.is_empty()
        {
            tracing::debug!(
                serial = self.logged_serial(),
                "forgetting remembered object handles"
            );
            handles.forget_all();
        }
    }

    fn is_blank_now(&self) -> bool {
        metered(|| self.module.pkcs11().get_token_info(self.slot))
            .map(|i| !i.token_initialized())
            .unwrap_or(false)
    }

    /// Runs `f` on the session, mapping errors.
    pub(super) fn with_session<T>(
        &self,
        f: impl FnOnce(&Session) -> Result<T, CkError>,
    ) -> Result<T, TokenError> {
        let session = self.session()?;
        metered(|| f(&session)).map_err(|e| self.map_err(e))
    }

    /// Closes the session (which also ends any login, and forgets the handles found in it).
    pub fn close_session(&self) {
        self.session_lost.set(false);
        if let Some(open) = self.session.borrow_mut().take()
            && let Err(e) = metered(|| open.session.close())
        {
            tracing::debug!(serial = self.logged_serial(), error = %e, "closing a session failed");
        }
        self.login.set(None);
    }

    /// `C_InitToken`: initializes (and on an initialized token: wipes) the token, with a new
    /// SO PIN and token label (at most [`MAX_TOKEN_LABEL`] bytes). Returns the token as
    /// `C_GetTokenInfo` describes it right after (blank SoftHSM2 slots get their serial now).
    ///
    /// Refused ([`TokenError::NotBlank`]) unless the token is blank or `authorization` names
    /// this token's serial (invariant 2); with [`Authorization::NamedByJob`], a token with
    /// another serial is refused ([`TokenError::WrongToken`]) even when blank. Our own session
    /// is closed first (`C_InitToken` fails with `CKR_SESSION_EXISTS` otherwise), and with it
    /// every handle found in it.
    pub fn init_token(
        &mut self,
        so_pin: &SecretString,
        label: &str,
        authorization: &Authorization,
    ) -> Result<PresentToken, TokenError> {
        let present = self.info()?;
        self.init_token_as_seen(&present, so_pin, label, authorization)
    }

    /// [`Token::init_token`] on the state `seen` that the caller has *just* read with
    /// [`Token::info`], with no other call to the token in between: the same guards on the
    /// same fresh state, without a second `C_GetTokenInfo`. A `seen` of another slot or
    /// serial is not trusted: the token is read again.
    pub(crate) fn init_token_as_seen(
        &mut self,
        seen: &PresentToken,
        so_pin: &SecretString,
        label: &str,
        authorization: &Authorization,
    ) -> Result<PresentToken, TokenError> {
        if label.len() > MAX_TOKEN_LABEL {
            return Err(TokenError::InvalidArgument {
                what: "token label",
                reason: format!("{} bytes, at most {MAX_TOKEN_LABEL}", label.len()),
            });
        }
        let present = if self.describes_this_token(seen) {
            seen.clone()
        } else {
            self.info()?
        };
        match authorization {
            Authorization::BlankOnly if present.flags.initialized => {
                return Err(TokenError::NotBlank {
                    serial: self.serial.clone(),
                    label: present.label,
                });
            }
            Authorization::BlankOnly => {}
            Authorization::NamedByJob { serial } => {
                if serial.trim() != present.serial {
                    return Err(TokenError::WrongToken {
                        expected: serial.trim().to_string(),
                        found: self.serial.clone(),
                    });
                }
            }
        }
        self.close_session();
        metered(|| self.module.pkcs11().init_token(self.slot, so_pin, label))
            .map_err(|e| self.pin_err(e, PinOwner::SecurityOfficer, Some(&present)))?;
        // A blank SoftHSM2 slot gets its serial now.
        let info = metered(|| self.module.pkcs11().get_token_info(self.slot))
            .map_err(|e| self.map_err(e))?;
        let after = PresentToken::from_info(self.slot, &info);
        self.serial = Some(after.serial.clone()).filter(|s| !s.is_empty());
        tracing::debug!(
            serial = self.logged_serial(),
            slot = self.slot.id(),
            "token initialized"
        );
        Ok(after)
    }

    /// Whether `seen` describes the token this `Token` is for, in its slot now.
    fn describes_this_token(&self, seen: &PresentToken) -> bool {
        seen.slot == self.slot.id() && self.serial.as_deref().is_none_or(|s| s == seen.serial)
    }

    /// Maps an error of a PIN-taking call: wrong, locked, or bad length. `before` is the
    /// token state read before the call, if it was (else it is read here when needed).
    fn pin_err(&self, e: CkError, owner: PinOwner, before: Option<&PresentToken>) -> TokenError {
        match e {
            CkError::Pkcs11(RvError::PinIncorrect, _) => {
                let flags = self
                    .info()
                    .map(|i| i.flags)
                    .ok()
                    .or(before.map(|b| b.flags))
                    .unwrap_or_default();
                let (locked, final_try, low) = match owner {
                    PinOwner::User => (
                        flags.user_pin_locked,
                        flags.user_pin_final_try,
                        flags.user_pin_count_low,
                    ),
                    PinOwner::SecurityOfficer => (
                        flags.so_pin_locked,
                        flags.so_pin_final_try,
                        flags.so_pin_count_low,
                    ),
                };
                if locked {
                    TokenError::PinLocked {
                        serial: self.serial.clone(),
                        owner,
                    }
                } else {
                    TokenError::WrongPin {
                        serial: self.serial.clone(),
                        owner,
                        tries_left: if final_try {
                            TriesLeft::FinalTry
                        } else if low {
                            TriesLeft::Low
                        } else {
                            TriesLeft::Unknown
                        },
                    }
                }
            }
            CkError::Pkcs11(RvError::PinLocked, _) => TokenError::PinLocked {
                serial: self.serial.clone(),
                owner,
            },
            CkError::Pkcs11(RvError::PinLenRange | RvError::PinInvalid, _) => {
                let bounds = match before {
                    Some(before) => Ok(before.clone()),
                    None => self.info(),
                };
                match bounds {
                    Ok(bounds) => TokenError::PinLength {
                        serial: self.serial.clone(),
                        owner,
                        min: bounds.min_pin_len,
                        max: bounds.max_pin_len,
                    },
                    Err(e) => e,
                }
            }
            e => self.map_err(e),
        }
    }

    fn login(&self, owner: PinOwner, pin: &SecretString) -> Result<(), TokenError> {
        if self.login.get() == Some(owner) {
            return Ok(());
        }
        if self.login.get().is_some() {
            self.logout()?;
        }
        // No `C_GetTokenInfo` first: opening a session checks the serial, and a live session
        // is bound to its token; the state a failed login is reported with is read then.
        let user_type = match owner {
            PinOwner::User => UserType::User,
            PinOwner::SecurityOfficer => UserType::So,
        };
        let session = self.session()?;
        match metered(|| session.login(user_type, Some(pin))) {
            Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {
                drop(session);
                self.login.set(Some(owner));
                // Private objects became visible: handles found before are not trusted.
                self.forget_handles();
                Ok(())
            }
            Err(e) => {
                drop(session);
                Err(self.pin_err(e, owner, None))
            }
        }
    }

    /// `C_Login` as the user. A wrong PIN yields [`TokenError::WrongPin`] with the token's
    /// retry hint, a locked one [`TokenError::PinLocked`].
    pub fn login_user(&self, pin: &SecretString) -> Result<(), TokenError> {
        self.login(PinOwner::User, pin)
    }

    /// `C_Login` as the security officer.
    pub fn login_so(&self, so_pin: &SecretString) -> Result<(), TokenError> {
        self.login(PinOwner::SecurityOfficer, so_pin)
    }

    /// `C_Logout` (nothing to do when nobody is logged in).
    pub fn logout(&self) -> Result<(), TokenError> {
        if self.login.get().is_none() {
            return Ok(());
        }
        let result = match self.session.borrow().as_ref() {
            Some(open) => match metered(|| open.session.logout()) {
                Ok(()) | Err(CkError::Pkcs11(RvError::UserNotLoggedIn, _)) => Ok(()),
                Err(e) => Err(self.map_err(e)),
            },
            None => Ok(()),
        };
        self.login.set(None);
        // Private objects are out of sight now: so are their handles.
        self.forget_handles();
        result
    }

    /// Sets the first user PIN of a freshly initialized token: SO login, `C_InitPIN`, logout.
    /// Refused when the user PIN is already set (use [`Token::set_user_pin_as_so`] to unlock).
    pub fn init_user_pin(
        &self,
        so_pin: &SecretString,
        user_pin: &SecretString,
    ) -> Result<(), TokenError> {
        let present = self.info()?;
        self.init_user_pin_as_seen(&present, so_pin, user_pin)
    }

    /// [`Token::init_user_pin`] on the state `seen` just read by the caller (e.g. what
    /// [`Token::init_token`] returned), with no other call to the token in between. A `seen`
    /// of another slot or serial is not trusted: the token is read again.
    pub(crate) fn init_user_pin_as_seen(
        &self,
        seen: &PresentToken,
        so_pin: &SecretString,
        user_pin: &SecretString,
    ) -> Result<(), TokenError> {
        let present = if self.describes_this_token(seen) {
            seen.clone()
        } else {
            self.info()?
        };
        if present.flags.user_pin_initialized {
            return Err(TokenError::InvalidArgument {
                what: "user PIN",
                reason: "already initialized on this token".into(),
            });
        }
        self.init_pin_as_so(so_pin, user_pin, &present)
    }

    /// Unlock: as SO, sets a new user PIN, which also resets its retry counter (`C_InitPIN`).
    pub fn set_user_pin_as_so(
        &self,
        so_pin: &SecretString,
        new_user_pin: &SecretString,
    ) -> Result<(), TokenError> {
        let present = self.info()?;
        self.init_pin_as_so(so_pin, new_user_pin, &present)
    }

    fn init_pin_as_so(
        &self,
        so_pin: &SecretString,
        user_pin: &SecretString,
        present: &PresentToken,
    ) -> Result<(), TokenError> {
        self.login_so(so_pin)?;
        let result = {
            let session = self.session()?;
            metered(|| session.init_pin(user_pin))
                .map_err(|e| self.pin_err(e, PinOwner::User, Some(present)))
        };
        let logout = self.logout();
        result?;
        logout
    }
}

impl Drop for Token {
    fn drop(&mut self) {
        // Logging out first leaves no logged-in state behind if the module keeps it per token.
        if self.login.get().is_some()
            && let Err(e) = self.logout()
        {
            tracing::debug!(serial = self.logged_serial(), error = %e, "logout on drop failed");
        }
        self.close_session();
    }
}
