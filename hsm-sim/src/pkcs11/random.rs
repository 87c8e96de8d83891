//! Random number generation (PKCS#11 v2.40 Base, section 5.15).

use cryptoki_sys::*;

use super::{MAX_RANDOM_LEN, bytes, eng, items_mut, shell};

/// `C_SeedRandom` (5.15): the seed (at most [`MAX_RANDOM_LEN`] bytes, else
/// `CKR_ARGUMENTS_BAD`) is accepted and checked, then set aside: the token draws from the
/// operating system's generator, which seeds itself and takes no seed from applications.
pub(super) unsafe extern "C" fn C_SeedRandom(
    session: CK_SESSION_HANDLE,
    seed: *mut CK_BYTE,
    len: CK_ULONG,
) -> CK_RV {
    shell(|| {
        let e = eng()?;
        // SAFETY: the caller passes `len` readable bytes (checked against the limit first).
        let seed = unsafe { bytes(seed, len, MAX_RANDOM_LEN, CKR_ARGUMENTS_BAD) }?;
        e.seed_random(session, seed)
    })
}

/// `C_GenerateRandom` (5.15): at most [`MAX_RANDOM_LEN`] bytes a call (more →
/// `CKR_ARGUMENTS_BAD`).
pub(super) unsafe extern "C" fn C_GenerateRandom(
    session: CK_SESSION_HANDLE,
    out: *mut CK_BYTE,
    len: CK_ULONG,
) -> CK_RV {
    shell(|| {
        let e = eng()?;
        // SAFETY: the caller passes `len` writable bytes (checked against the limit first).
        let buf = unsafe { items_mut(out, len, MAX_RANDOM_LEN, CKR_ARGUMENTS_BAD) }?;
        e.generate_random(session, buf)
    })
}
