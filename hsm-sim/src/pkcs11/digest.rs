//! Message digesting (PKCS#11 v2.40 Base, section 5.10): `C_DigestInit`, `C_Digest`,
//! `C_DigestUpdate`, `C_DigestKey`, `C_DigestFinal` with `CKM_SHA_1`, `CKM_SHA256`,
//! `CKM_SHA384`, `CKM_SHA512`.

use cryptoki_sys::*;

use super::{MAX_DATA_LEN, bytes, eng, mechanism, shell, write_output};
use crate::rack::symmetric::DigestAlg;

/// `C_DigestInit` (5.10).
pub(super) unsafe extern "C" fn C_DigestInit(
    session: CK_SESSION_HANDLE,
    mech: *mut CK_MECHANISM,
) -> CK_RV {
    shell(|| {
        let e = eng()?;
        // SAFETY: the caller passes a valid mechanism.
        let m = unsafe { mechanism(mech) }?;
        if m.ulParameterLen != 0 {
            return Err(CKR_MECHANISM_PARAM_INVALID);
        }
        e.digest_init(session, DigestAlg::from_mechanism(m.mechanism)?)
    })
}

/// `C_Digest` (5.10), with the length-query convention. Input longer than
/// [`MAX_DATA_LEN`] → `CKR_DATA_LEN_RANGE`, unread.
pub(super) unsafe extern "C" fn C_Digest(
    session: CK_SESSION_HANDLE,
    data: *mut CK_BYTE,
    data_len: CK_ULONG,
    out: *mut CK_BYTE,
    out_len: *mut CK_ULONG,
) -> CK_RV {
    shell(|| {
        let e = eng()?;
        // SAFETY: the caller passes `data_len` readable bytes (checked against the limit).
        let data = unsafe { bytes(data, data_len, MAX_DATA_LEN, CKR_DATA_LEN_RANGE) }?;
        // SAFETY: the caller passes an output buffer of `*out_len` bytes, or NULL.
        unsafe { write_output(out, out_len, |cap| e.digest(session, data, cap)) }
    })
}

/// `C_DigestUpdate` (5.10): at most [`MAX_DATA_LEN`] in all.
pub(super) unsafe extern "C" fn C_DigestUpdate(
    session: CK_SESSION_HANDLE,
    data: *mut CK_BYTE,
    data_len: CK_ULONG,
) -> CK_RV {
    shell(|| {
        let e = eng()?;
        // SAFETY: the caller passes `data_len` readable bytes (checked against the limit).
        let data = unsafe { bytes(data, data_len, MAX_DATA_LEN, CKR_DATA_LEN_RANGE) }?;
        e.digest_update(session, data)
    })
}

/// `C_DigestKey` (5.10): a secret key's value goes into the digest.
pub(super) unsafe extern "C" fn C_DigestKey(
    session: CK_SESSION_HANDLE,
    key: CK_OBJECT_HANDLE,
) -> CK_RV {
    shell(|| eng()?.digest_key(session, key))
}

/// `C_DigestFinal` (5.10).
pub(super) unsafe extern "C" fn C_DigestFinal(
    session: CK_SESSION_HANDLE,
    out: *mut CK_BYTE,
    out_len: *mut CK_ULONG,
) -> CK_RV {
    shell(|| {
        let e = eng()?;
        // SAFETY: the caller passes an output buffer of `*out_len` bytes, or NULL.
        unsafe { write_output(out, out_len, |cap| e.digest_final(session, cap)) }
    })
}
