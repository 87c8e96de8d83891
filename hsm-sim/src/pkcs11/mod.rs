//! The C ABI: `C_GetFunctionList` and the PKCS#11 v2.40 functions behind it.
//!
//! This is the only place with `unsafe` in the crate. Each `extern "C"` function is a thin
//! shell: it turns raw pointers into Rust values (checking them), calls the engine's safe
//! inner function, and maps its `Result<_, Rv>` to a `CK_RV`. Files follow the chapters of
//! the specification (section 5 of PKCS#11 v2.40 Base): general purpose, slot and token
//! management, session management, object management, key management, signing, decryption,
//! random number generation; functions the simulator does not implement return
//! `CKR_FUNCTION_NOT_SUPPORTED`.
//!
//! Only `C_GetFunctionList` is exported by name. The list points at functions that are not
//! exported, so another loaded library exporting `C_…` symbols can never interpose on them.
#![allow(unsafe_code)]
#![allow(non_snake_case)]

mod decryption;
mod general;
mod keys;
mod objects;
mod random;
mod sessions;
mod signing;
mod slots;
mod unsupported;

use std::sync::Arc;

use cryptoki_sys::*;

use crate::engine::{self, Engine};
use crate::rack::Rv;
use crate::rack::object::Template;

pub use general::C_GetFunctionList;

/// The function list handed out by `C_GetFunctionList`: every slot filled.
pub(crate) static FUNCTION_LIST: CK_FUNCTION_LIST = CK_FUNCTION_LIST {
    version: CK_VERSION {
        major: 2,
        minor: 40,
    },
    C_Initialize: Some(general::C_Initialize),
    C_Finalize: Some(general::C_Finalize),
    C_GetInfo: Some(general::C_GetInfo),
    C_GetFunctionList: Some(general::get_function_list),
    C_GetSlotList: Some(slots::C_GetSlotList),
    C_GetSlotInfo: Some(slots::C_GetSlotInfo),
    C_GetTokenInfo: Some(slots::C_GetTokenInfo),
    C_GetMechanismList: Some(slots::C_GetMechanismList),
    C_GetMechanismInfo: Some(slots::C_GetMechanismInfo),
    C_InitToken: Some(slots::C_InitToken),
    C_InitPIN: Some(slots::C_InitPIN),
    C_SetPIN: Some(slots::C_SetPIN),
    C_OpenSession: Some(sessions::C_OpenSession),
    C_CloseSession: Some(sessions::C_CloseSession),
    C_CloseAllSessions: Some(sessions::C_CloseAllSessions),
    C_GetSessionInfo: Some(sessions::C_GetSessionInfo),
    C_GetOperationState: Some(unsupported::C_GetOperationState),
    C_SetOperationState: Some(unsupported::C_SetOperationState),
    C_Login: Some(sessions::C_Login),
    C_Logout: Some(sessions::C_Logout),
    C_CreateObject: Some(objects::C_CreateObject),
    C_CopyObject: Some(unsupported::C_CopyObject),
    C_DestroyObject: Some(objects::C_DestroyObject),
    C_GetObjectSize: Some(unsupported::C_GetObjectSize),
    C_GetAttributeValue: Some(objects::C_GetAttributeValue),
    C_SetAttributeValue: Some(objects::C_SetAttributeValue),
    C_FindObjectsInit: Some(objects::C_FindObjectsInit),
    C_FindObjects: Some(objects::C_FindObjects),
    C_FindObjectsFinal: Some(objects::C_FindObjectsFinal),
    C_EncryptInit: Some(unsupported::C_EncryptInit),
    C_Encrypt: Some(unsupported::C_Encrypt),
    C_EncryptUpdate: Some(unsupported::C_EncryptUpdate),
    C_EncryptFinal: Some(unsupported::C_EncryptFinal),
    C_DecryptInit: Some(decryption::C_DecryptInit),
    C_Decrypt: Some(decryption::C_Decrypt),
    C_DecryptUpdate: Some(unsupported::C_DecryptUpdate),
    C_DecryptFinal: Some(unsupported::C_DecryptFinal),
    C_DigestInit: Some(unsupported::C_DigestInit),
    C_Digest: Some(unsupported::C_Digest),
    C_DigestUpdate: Some(unsupported::C_DigestUpdate),
    C_DigestKey: Some(unsupported::C_DigestKey),
    C_DigestFinal: Some(unsupported::C_DigestFinal),
    C_SignInit: Some(signing::C_SignInit),
    C_Sign: Some(signing::C_Sign),
    C_SignUpdate: Some(unsupported::C_SignUpdate),
    C_SignFinal: Some(unsupported::C_SignFinal),
    C_SignRecoverInit: Some(unsupported::C_SignRecoverInit),
    C_SignRecover: Some(unsupported::C_SignRecover),
    C_VerifyInit: Some(unsupported::C_VerifyInit),
    C_Verify: Some(unsupported::C_Verify),
    C_VerifyUpdate: Some(unsupported::C_VerifyUpdate),
    C_VerifyFinal: Some(unsupported::C_VerifyFinal),
    C_VerifyRecoverInit: Some(unsupported::C_VerifyRecoverInit),
    C_VerifyRecover: Some(unsupported::C_VerifyRecover),
    C_DigestEncryptUpdate: Some(unsupported::C_DigestEncryptUpdate),
    C_DecryptDigestUpdate: Some(unsupported::C_DecryptDigestUpdate),
    C_SignEncryptUpdate: Some(unsupported::C_SignEncryptUpdate),
    C_DecryptVerifyUpdate: Some(unsupported::C_DecryptVerifyUpdate),
    C_GenerateKey: Some(unsupported::C_GenerateKey),
    C_GenerateKeyPair: Some(keys::C_GenerateKeyPair),
    C_WrapKey: Some(unsupported::C_WrapKey),
    C_UnwrapKey: Some(unsupported::C_UnwrapKey),
    C_DeriveKey: Some(keys::C_DeriveKey),
    C_SeedRandom: Some(random::C_SeedRandom),
    C_GenerateRandom: Some(random::C_GenerateRandom),
    C_GetFunctionStatus: Some(unsupported::C_GetFunctionStatus),
    C_CancelFunction: Some(unsupported::C_CancelFunction),
    C_WaitForSlotEvent: Some(slots::C_WaitForSlotEvent),
};

/// Maps an inner function's result to the code the application sees.
fn rv(r: Result<(), Rv>) -> CK_RV {
    match r {
        Ok(()) => CKR_OK,
        Err(rv) => rv,
    }
}

/// The running engine.
fn eng() -> Result<Arc<Engine>, Rv> {
    engine::get()
}

/// Borrows `len` bytes at `p`; a null pointer is only valid for zero bytes.
///
/// # Safety
/// `p` must be null or point to `len` readable bytes that stay valid for the call.
unsafe fn bytes<'a>(p: *const CK_BYTE, len: CK_ULONG) -> Result<&'a [u8], Rv> {
    if p.is_null() {
        return if len == 0 {
            Ok(&[])
        } else {
            Err(CKR_ARGUMENTS_BAD)
        };
    }
    let len = usize::try_from(len).map_err(|_| CKR_ARGUMENTS_BAD)?;
    // SAFETY: the caller guarantees `p` points to `len` readable bytes.
    Ok(unsafe { std::slice::from_raw_parts(p, len) })
}

/// Stores `v` at `p`.
///
/// # Safety
/// `p` must be null or valid for writing one `T`.
unsafe fn put<T>(p: *mut T, v: T) -> Result<(), Rv> {
    if p.is_null() {
        return Err(CKR_ARGUMENTS_BAD);
    }
    // SAFETY: non-null, and the caller guarantees it is writable.
    unsafe { p.write(v) };
    Ok(())
}

/// The same convention for an array of `CK_ULONG`s (slot lists, mechanism lists).
///
/// # Safety
/// `count` must be valid for reading and writing; `out` null or valid for `*count` items.
unsafe fn write_ulongs(
    out: *mut CK_ULONG,
    count: *mut CK_ULONG,
    items: &[CK_ULONG],
) -> Result<(), Rv> {
    if count.is_null() {
        return Err(CKR_ARGUMENTS_BAD);
    }
    // SAFETY: checked non-null; the caller guarantees validity.
    let cap = unsafe { *count };
    // SAFETY: as above.
    unsafe { *count = items.len() as CK_ULONG };
    if out.is_null() {
        return Ok(());
    }
    if (cap as usize) < items.len() {
        return Err(CKR_BUFFER_TOO_SMALL);
    }
    // SAFETY: `out` holds at least `cap >= items.len()` writable items.
    unsafe { std::ptr::copy_nonoverlapping(items.as_ptr(), out, items.len()) };
    Ok(())
}

/// Copies a template in (types and values).
///
/// # Safety
/// `p` must be null (with `n == 0`) or point to `n` attributes whose `pValue` point to
/// `ulValueLen` readable bytes.
unsafe fn template(p: *const CK_ATTRIBUTE, n: CK_ULONG) -> Result<Template, Rv> {
    if p.is_null() {
        return if n == 0 {
            Template::new(Vec::new())
        } else {
            Err(CKR_ARGUMENTS_BAD)
        };
    }
    // SAFETY: the caller guarantees `n` attributes at `p`.
    let attrs = unsafe { std::slice::from_raw_parts(p, n as usize) };
    let mut entries = Vec::with_capacity(attrs.len());
    for a in attrs {
        // SAFETY: the caller guarantees each value holds `ulValueLen` bytes.
        let v = unsafe { bytes(a.pValue as *const CK_BYTE, a.ulValueLen) }?;
        entries.push((a.type_, v.to_vec()));
    }
    Template::new(entries)
}

/// Reads a mechanism's parameter as a `T`, checking its length.
///
/// # Safety
/// `m.pParameter` must be null or point to `m.ulParameterLen` readable bytes.
unsafe fn param<T: Copy>(m: &CK_MECHANISM) -> Result<T, Rv> {
    if m.pParameter.is_null() || m.ulParameterLen as usize != std::mem::size_of::<T>() {
        return Err(CKR_MECHANISM_PARAM_INVALID);
    }
    // SAFETY: non-null and exactly the size of `T`; read_unaligned copes with any alignment.
    Ok(unsafe { std::ptr::read_unaligned(m.pParameter as *const T) })
}

/// Reads the mechanism structure.
///
/// # Safety
/// `p` must be null or point to a valid `CK_MECHANISM`.
unsafe fn mechanism<'a>(p: *const CK_MECHANISM) -> Result<&'a CK_MECHANISM, Rv> {
    if p.is_null() {
        return Err(CKR_ARGUMENTS_BAD);
    }
    // SAFETY: non-null; the caller guarantees it is valid for the call.
    Ok(unsafe { &*p })
}

/// Blank-padded fixed-size text field.
fn pad<const N: usize>(s: &str) -> [CK_UTF8CHAR; N] {
    crate::rack::token::padded::<N>(s)
}

#[cfg(test)]
mod tests;
