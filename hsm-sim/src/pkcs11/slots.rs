//! Slot and token management (PKCS#11 v2.40 Base, section 5.5): slot lists and infos,
//! token info, mechanisms, `C_InitToken`, `C_InitPIN`, `C_SetPIN`, `C_WaitForSlotEvent`.

use std::ffi::c_void;

use cryptoki_sys::*;

use super::{bytes, eng, pad, pin_bytes, put, shell, write_ulongs};

/// `C_GetSlotList` (5.5): all rack slots, or only those holding a token.
pub(super) unsafe extern "C" fn C_GetSlotList(
    token_present: CK_BBOOL,
    list: *mut CK_SLOT_ID,
    count: *mut CK_ULONG,
) -> CK_RV {
    shell(|| {
        let slots = eng()?.slot_list(token_present != 0)?;
        // SAFETY: pointers as the caller passed them, checked inside.
        unsafe { write_ulongs(list, count, &slots) }
    })
}

/// `C_GetSlotInfo` (5.5).
pub(super) unsafe extern "C" fn C_GetSlotInfo(slot: CK_SLOT_ID, info: *mut CK_SLOT_INFO) -> CK_RV {
    shell(|| {
        let s = eng()?.slot_info(slot)?;
        let i = CK_SLOT_INFO {
            slotDescription: pad(&s.description),
            manufacturerID: pad(&s.manufacturer),
            flags: s.flags,
            hardwareVersion: CK_VERSION { major: 1, minor: 0 },
            firmwareVersion: CK_VERSION { major: 1, minor: 0 },
        };
        // SAFETY: `info` is null (rejected) or writable.
        unsafe { put(info, i) }
    })
}

/// `C_GetTokenInfo` (5.5).
pub(super) unsafe extern "C" fn C_GetTokenInfo(
    slot: CK_SLOT_ID,
    info: *mut CK_TOKEN_INFO,
) -> CK_RV {
    shell(|| {
        let t = eng()?.token_info(slot)?;
        let i = CK_TOKEN_INFO {
            label: pad(&t.label),
            manufacturerID: pad(&t.manufacturer),
            model: pad(&t.model),
            serialNumber: pad(&t.serial),
            flags: t.flags,
            ulMaxSessionCount: CK_EFFECTIVELY_INFINITE,
            ulSessionCount: t.sessions,
            ulMaxRwSessionCount: CK_EFFECTIVELY_INFINITE,
            ulRwSessionCount: t.rw_sessions,
            ulMaxPinLen: t.pin_max,
            ulMinPinLen: t.pin_min,
            ulTotalPublicMemory: t.total_memory,
            ulFreePublicMemory: t.free_memory,
            ulTotalPrivateMemory: t.total_memory,
            ulFreePrivateMemory: t.free_memory,
            hardwareVersion: CK_VERSION { major: 1, minor: 0 },
            firmwareVersion: CK_VERSION { major: 1, minor: 0 },
            utcTime: [b' '; 16],
        };
        // SAFETY: `info` is null (rejected) or writable.
        unsafe { put(info, i) }
    })
}

/// `C_GetMechanismList` (5.5).
pub(super) unsafe extern "C" fn C_GetMechanismList(
    slot: CK_SLOT_ID,
    list: *mut CK_MECHANISM_TYPE,
    count: *mut CK_ULONG,
) -> CK_RV {
    shell(|| {
        let m = eng()?.mechanism_list(slot)?;
        // SAFETY: pointers as the caller passed them, checked inside.
        unsafe { write_ulongs(list, count, &m) }
    })
}

/// `C_GetMechanismInfo` (5.5).
pub(super) unsafe extern "C" fn C_GetMechanismInfo(
    slot: CK_SLOT_ID,
    mech: CK_MECHANISM_TYPE,
    info: *mut CK_MECHANISM_INFO,
) -> CK_RV {
    shell(|| {
        let (min, max, flags) = eng()?.mechanism_info(slot, mech)?;
        let i = CK_MECHANISM_INFO {
            ulMinKeySize: min,
            ulMaxKeySize: max,
            flags,
        };
        // SAFETY: `info` is null (rejected) or writable.
        unsafe { put(info, i) }
    })
}

/// `C_InitToken` (5.5): a blank token takes the SO PIN; an initialized one needs it. An SO
/// PIN longer than the token allows → `CKR_PIN_LEN_RANGE`, unread and not counted.
pub(super) unsafe extern "C" fn C_InitToken(
    slot: CK_SLOT_ID,
    pin: *mut CK_UTF8CHAR,
    pin_len: CK_ULONG,
    label: *mut CK_UTF8CHAR,
) -> CK_RV {
    shell(|| {
        let e = eng()?;
        if label.is_null() {
            return Err(CKR_ARGUMENTS_BAD);
        }
        let max = e.slot_pin_max(slot)?;
        // SAFETY: the caller passes `pin_len` bytes of PIN (checked against `max` first).
        let pin = unsafe { pin_bytes(pin, pin_len, max, CKR_PIN_LEN_RANGE) }?;
        // SAFETY: non-null; the caller passes a 32-byte label, as the specification says.
        let label = unsafe { bytes(label, 32, 32, CKR_ARGUMENTS_BAD) }?;
        let label = String::from_utf8_lossy(label);
        e.init_token(slot, pin, &label)
    })
}

/// `C_InitPIN` (5.5): the SO sets the user PIN (and unlocks it). A PIN longer than the token
/// allows → `CKR_PIN_LEN_RANGE`, unread.
pub(super) unsafe extern "C" fn C_InitPIN(
    session: CK_SESSION_HANDLE,
    pin: *mut CK_UTF8CHAR,
    pin_len: CK_ULONG,
) -> CK_RV {
    shell(|| {
        let e = eng()?;
        let max = e.session_pin_max(session)?;
        // SAFETY: the caller passes `pin_len` bytes (checked against `max` first).
        let pin = unsafe { pin_bytes(pin, pin_len, max, CKR_PIN_LEN_RANGE) }?;
        e.init_pin(session, pin)
    })
}

/// `C_SetPIN` (5.5). An old PIN longer than the token allows cannot be right:
/// `CKR_PIN_INCORRECT`, unread and not counted; a new one → `CKR_PIN_LEN_RANGE`.
pub(super) unsafe extern "C" fn C_SetPIN(
    session: CK_SESSION_HANDLE,
    old: *mut CK_UTF8CHAR,
    old_len: CK_ULONG,
    new: *mut CK_UTF8CHAR,
    new_len: CK_ULONG,
) -> CK_RV {
    shell(|| {
        let e = eng()?;
        let max = e.session_pin_max(session)?;
        // SAFETY: the caller passes the stated lengths (checked against `max` first).
        let (old, new) = unsafe {
            (
                pin_bytes(old, old_len, max, CKR_PIN_INCORRECT)?,
                pin_bytes(new, new_len, max, CKR_PIN_LEN_RANGE)?,
            )
        };
        e.set_pin(session, old, new)
    })
}

/// `C_WaitForSlotEvent` (5.5): blocks until a token is inserted or removed, or returns
/// `CKR_NO_EVENT` at once with `CKF_DONT_BLOCK`.
pub(super) unsafe extern "C" fn C_WaitForSlotEvent(
    flags: CK_FLAGS,
    slot: *mut CK_SLOT_ID,
    reserved: *mut c_void,
) -> CK_RV {
    shell(|| {
        let e = eng()?;
        if slot.is_null() || !reserved.is_null() {
            return Err(CKR_ARGUMENTS_BAD);
        }
        let s = e.wait_for_slot_event(flags & CKF_DONT_BLOCK != 0)?;
        // SAFETY: checked non-null above.
        unsafe { put(slot, s) }
    })
}
