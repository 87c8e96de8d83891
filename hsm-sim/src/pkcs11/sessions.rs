//! Session management (PKCS#11 v2.40 Base, section 5.6): open, close, info, login, logout.

use std::ffi::c_void;

use cryptoki_sys::*;

use super::{eng, pin_bytes, put, shell};

/// `C_OpenSession` (5.6). Notification callbacks are accepted and never called.
pub(super) unsafe extern "C" fn C_OpenSession(
    slot: CK_SLOT_ID,
    flags: CK_FLAGS,
    _application: *mut c_void,
    _notify: CK_NOTIFY,
    session: *mut CK_SESSION_HANDLE,
) -> CK_RV {
    shell(|| {
        let e = eng()?;
        if session.is_null() {
            return Err(CKR_ARGUMENTS_BAD);
        }
        let h = e.open_session(slot, flags)?;
        // SAFETY: checked non-null above.
        unsafe { put(session, h) }
    })
}

/// `C_CloseSession` (5.6).
pub(super) unsafe extern "C" fn C_CloseSession(session: CK_SESSION_HANDLE) -> CK_RV {
    shell(|| eng()?.close_session(session))
}

/// `C_CloseAllSessions` (5.6).
pub(super) unsafe extern "C" fn C_CloseAllSessions(slot: CK_SLOT_ID) -> CK_RV {
    shell(|| eng()?.close_all_sessions(slot))
}

/// `C_GetSessionInfo` (5.6).
pub(super) unsafe extern "C" fn C_GetSessionInfo(
    session: CK_SESSION_HANDLE,
    info: *mut CK_SESSION_INFO,
) -> CK_RV {
    shell(|| {
        let s = eng()?.session_info(session)?;
        let i = CK_SESSION_INFO {
            slotID: s.slot,
            state: s.state,
            flags: s.flags,
            ulDeviceError: 0,
        };
        // SAFETY: `info` is null (rejected) or writable.
        unsafe { put(info, i) }
    })
}

/// `C_Login` (5.6). A PIN longer than the token allows cannot be right: `CKR_PIN_INCORRECT`,
/// unread and not counted against the retries.
pub(super) unsafe extern "C" fn C_Login(
    session: CK_SESSION_HANDLE,
    user: CK_USER_TYPE,
    pin: *mut CK_UTF8CHAR,
    pin_len: CK_ULONG,
) -> CK_RV {
    shell(|| {
        let e = eng()?;
        let max = e.session_pin_max(session)?;
        // SAFETY: the caller passes `pin_len` bytes (checked against `max` first).
        let pin = unsafe { pin_bytes(pin, pin_len, max, CKR_PIN_INCORRECT) }?;
        e.login(session, user, pin)
    })
}

/// `C_Logout` (5.6).
pub(super) unsafe extern "C" fn C_Logout(session: CK_SESSION_HANDLE) -> CK_RV {
    shell(|| eng()?.logout(session))
}
