//! Access control (GM/T 0016-2012, 7.3): PINs of an application and the secure state.

use hsm_sim::skf::consts::*;

use super::*;

/// `SKF_ChangePIN`: `*pulRetryCount` gets the tries left when the old PIN is wrong or locked.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn SKF_ChangePIN(
    hApplication: HAPPLICATION,
    ulPINType: ULONG,
    szOldPin: LPSTR,
    szNewPin: LPSTR,
    pulRetryCount: *mut ULONG,
) -> ULONG {
    shell(|| {
        let h = handle(hApplication)?;
        // SAFETY: NUL-terminated PINs, read up to the limit.
        let old = unsafe { cstr(szOldPin, MAX_PIN, SAR_PIN_LEN_RANGE) }?;
        // SAFETY: as above.
        let new = unsafe { cstr(szNewPin, MAX_PIN, SAR_PIN_LEN_RANGE) }?;
        if pulRetryCount.is_null() {
            return Err(SAR_INVALIDPARAMERR);
        }
        let mut retry = 0;
        let r = eng().change_pin(h, ulPINType, old, new, &mut retry);
        if matches!(r, Err(SAR_PIN_INCORRECT | SAR_PIN_LOCKED)) {
            // SAFETY: checked non-null.
            unsafe { put(pulRetryCount, retry) }?;
        }
        r
    })
}

/// `SKF_GetPINInfo`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn SKF_GetPINInfo(
    hApplication: HAPPLICATION,
    ulPINType: ULONG,
    pulMaxRetryCount: *mut ULONG,
    pulRemainRetryCount: *mut ULONG,
    pbDefaultPin: *mut BOOL,
) -> ULONG {
    shell(|| {
        let h = handle(hApplication)?;
        if pulMaxRetryCount.is_null() || pulRemainRetryCount.is_null() || pbDefaultPin.is_null() {
            return Err(SAR_INVALIDPARAMERR);
        }
        let (max, left, default) = eng().pin_info(h, ulPINType)?;
        // SAFETY: the three were checked non-null.
        unsafe {
            put(pulMaxRetryCount, max)?;
            put(pulRemainRetryCount, left)?;
            put(pbDefaultPin, BOOL::from(default))
        }
    })
}

/// `SKF_VerifyPIN`: `*pulRetryCount` gets the tries left when the PIN is wrong
/// (`SAR_PIN_INCORRECT`) or locked (`SAR_PIN_LOCKED`, 0; also on the wrong try that locks it).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn SKF_VerifyPIN(
    hApplication: HAPPLICATION,
    ulPINType: ULONG,
    szPIN: LPSTR,
    pulRetryCount: *mut ULONG,
) -> ULONG {
    shell(|| {
        let h = handle(hApplication)?;
        // SAFETY: a NUL-terminated PIN, read up to the limit.
        let pin = unsafe { cstr(szPIN, MAX_PIN, SAR_PIN_LEN_RANGE) }?;
        if pulRetryCount.is_null() {
            return Err(SAR_INVALIDPARAMERR);
        }
        let mut retry = 0;
        let r = eng().verify_pin(h, ulPINType, pin, &mut retry);
        if matches!(r, Err(SAR_PIN_INCORRECT | SAR_PIN_LOCKED)) {
            // SAFETY: checked non-null.
            unsafe { put(pulRetryCount, retry) }?;
        }
        r
    })
}

/// `SKF_UnblockPIN`: the administrator PIN sets a new user PIN; `*pulRetryCount` gets the
/// administrator's tries left when that PIN is wrong or locked.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn SKF_UnblockPIN(
    hApplication: HAPPLICATION,
    szAdminPIN: LPSTR,
    szNewUserPIN: LPSTR,
    pulRetryCount: *mut ULONG,
) -> ULONG {
    shell(|| {
        let h = handle(hApplication)?;
        // SAFETY: NUL-terminated PINs, read up to the limit.
        let admin = unsafe { cstr(szAdminPIN, MAX_PIN, SAR_PIN_LEN_RANGE) }?;
        // SAFETY: as above.
        let user = unsafe { cstr(szNewUserPIN, MAX_PIN, SAR_PIN_LEN_RANGE) }?;
        if pulRetryCount.is_null() {
            return Err(SAR_INVALIDPARAMERR);
        }
        let mut retry = 0;
        let r = eng().unblock_pin(h, admin, user, &mut retry);
        if matches!(r, Err(SAR_PIN_INCORRECT | SAR_PIN_LOCKED)) {
            // SAFETY: checked non-null.
            unsafe { put(pulRetryCount, retry) }?;
        }
        r
    })
}

/// `SKF_ClearSecureState`.
#[unsafe(no_mangle)]
pub extern "C" fn SKF_ClearSecureState(hApplication: HAPPLICATION) -> ULONG {
    shell(|| eng().clear_secure_state(handle(hApplication)?))
}
