//! Random number generation (PKCS#11 v2.40 Base, section 5.15).

use cryptoki_sys::*;

use super::{eng, rv};

/// `C_SeedRandom` (5.15): the token's generator takes no seed.
pub(super) unsafe extern "C" fn C_SeedRandom(
    session: CK_SESSION_HANDLE,
    _seed: *mut CK_BYTE,
    _len: CK_ULONG,
) -> CK_RV {
    rv(eng()
        .and_then(|e| e.session_info(session))
        .and(Err(CKR_RANDOM_SEED_NOT_SUPPORTED)))
}

/// `C_GenerateRandom` (5.15).
pub(super) unsafe extern "C" fn C_GenerateRandom(
    session: CK_SESSION_HANDLE,
    out: *mut CK_BYTE,
    len: CK_ULONG,
) -> CK_RV {
    if out.is_null() && len > 0 {
        return CKR_ARGUMENTS_BAD;
    }
    rv(eng().and_then(|e| {
        let buf: &mut [u8] = if len == 0 {
            &mut []
        } else {
            // SAFETY: non-null; the caller passes `len` writable bytes.
            unsafe { std::slice::from_raw_parts_mut(out, len as usize) }
        };
        e.generate_random(session, buf)
    }))
}
