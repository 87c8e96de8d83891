//! Encryption (PKCS#11 v2.40 Base, section 5.8): `C_EncryptInit`, `C_Encrypt`,
//! `C_EncryptUpdate`, `C_EncryptFinal` with the mechanisms of decryption (RSA with a public
//! key, AES with a secret key).

use cryptoki_sys::*;

use super::decryption::cipher_mechanism;
use super::{MAX_DATA_LEN, bytes, eng, offered, shell, write_output};

/// `C_EncryptInit` (5.8).
pub(super) unsafe extern "C" fn C_EncryptInit(
    session: CK_SESSION_HANDLE,
    mech: *mut CK_MECHANISM,
    key: CK_OBJECT_HANDLE,
) -> CK_RV {
    shell(|| {
        let e = eng()?;
        // SAFETY: the caller passes a valid mechanism (or null, refused).
        unsafe { offered(&e, session, mech) }?;
        // SAFETY: the caller passes a valid mechanism.
        let m = unsafe { cipher_mechanism(mech) }?;
        e.encrypt_init(session, m, key)
    })
}

/// `C_Encrypt` (5.8), with the length-query convention. Input longer than
/// [`MAX_DATA_LEN`] → `CKR_DATA_LEN_RANGE`, unread.
pub(super) unsafe extern "C" fn C_Encrypt(
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
        unsafe { write_output(out, out_len, |cap| e.encrypt(session, data, cap)) }
    })
}

/// `C_EncryptUpdate` (5.8), with the length-query convention: AES ECB/CBC/CBC-PAD return
/// the whole blocks so far; GCM and RSA gather the parts (at most [`MAX_DATA_LEN`] in all)
/// for `C_EncryptFinal`.
pub(super) unsafe extern "C" fn C_EncryptUpdate(
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
        // SAFETY: the caller passes an output buffer of `*out_len` bytes, or NULL (a length
        // query, which takes no input in).
        unsafe { write_output(out, out_len, |cap| e.encrypt_update(session, data, cap)) }
    })
}

/// `C_EncryptFinal` (5.8): encrypts the gathered parts.
pub(super) unsafe extern "C" fn C_EncryptFinal(
    session: CK_SESSION_HANDLE,
    out: *mut CK_BYTE,
    out_len: *mut CK_ULONG,
) -> CK_RV {
    shell(|| {
        let e = eng()?;
        // SAFETY: the caller passes an output buffer of `*out_len` bytes, or NULL.
        unsafe { write_output(out, out_len, |cap| e.encrypt_final(session, cap)) }
    })
}
