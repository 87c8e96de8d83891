//! The C ABI: `C_GetFunctionList` and the PKCS#11 v2.40 functions behind it.
//!
//! This is the only place with `unsafe` in the crate. Each `extern "C"` function is a thin
//! shell: it turns raw pointers into Rust values, calls the engine's safe inner function,
//! and maps its `Result<_, Rv>` to a `CK_RV` through `shell`, which also stops any panic at
//! the C boundary (`CKR_GENERAL_ERROR`).
//!
//! Every pointer and length is checked here, before memory is touched, by the helpers below:
//! NULL with a length is `CKR_ARGUMENTS_BAD`; a count or length that no buffer can have
//! (above `isize::MAX` bytes, `CK_UNAVAILABLE_INFORMATION` included) is `CKR_ARGUMENTS_BAD`;
//! inputs above the `MAX_…` limits (templates, attribute values, data, mechanism parameters,
//! random lengths) and PINs longer than the token's longest get the specification's code for
//! "too long" without being read. A length within them that is not the buffer's true size
//! cannot be detected by any C library: that stays the caller's contract. Files follow the chapters of
//! the specification (section 5 of PKCS#11 v2.40 Base): general purpose, slot and token
//! management, session management, object management, encryption, decryption, message
//! digesting, signing, key management, random number generation; functions the simulator
//! does not implement return `CKR_FUNCTION_NOT_SUPPORTED`. Before `C_Initialize` every
//! function returns `CKR_CRYPTOKI_NOT_INITIALIZED`, whatever its arguments.
//!
//! Only `C_GetFunctionList` is exported by name. The list points at functions that are not
//! exported, so another loaded library exporting `C_…` symbols can never interpose on them.
#![allow(unsafe_code)]
#![allow(non_snake_case)]

mod decryption;
mod digest;
mod encryption;
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
    C_CopyObject: Some(objects::C_CopyObject),
    C_DestroyObject: Some(objects::C_DestroyObject),
    C_GetObjectSize: Some(unsupported::C_GetObjectSize),
    C_GetAttributeValue: Some(objects::C_GetAttributeValue),
    C_SetAttributeValue: Some(objects::C_SetAttributeValue),
    C_FindObjectsInit: Some(objects::C_FindObjectsInit),
    C_FindObjects: Some(objects::C_FindObjects),
    C_FindObjectsFinal: Some(objects::C_FindObjectsFinal),
    C_EncryptInit: Some(encryption::C_EncryptInit),
    C_Encrypt: Some(encryption::C_Encrypt),
    C_EncryptUpdate: Some(encryption::C_EncryptUpdate),
    C_EncryptFinal: Some(encryption::C_EncryptFinal),
    C_DecryptInit: Some(decryption::C_DecryptInit),
    C_Decrypt: Some(decryption::C_Decrypt),
    C_DecryptUpdate: Some(decryption::C_DecryptUpdate),
    C_DecryptFinal: Some(decryption::C_DecryptFinal),
    C_DigestInit: Some(digest::C_DigestInit),
    C_Digest: Some(digest::C_Digest),
    C_DigestUpdate: Some(digest::C_DigestUpdate),
    C_DigestKey: Some(digest::C_DigestKey),
    C_DigestFinal: Some(digest::C_DigestFinal),
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
    C_GenerateKey: Some(keys::C_GenerateKey),
    C_GenerateKeyPair: Some(keys::C_GenerateKeyPair),
    C_WrapKey: Some(keys::C_WrapKey),
    C_UnwrapKey: Some(keys::C_UnwrapKey),
    C_DeriveKey: Some(keys::C_DeriveKey),
    C_SeedRandom: Some(random::C_SeedRandom),
    C_GenerateRandom: Some(random::C_GenerateRandom),
    C_GetFunctionStatus: Some(unsupported::C_GetFunctionStatus),
    C_CancelFunction: Some(unsupported::C_CancelFunction),
    C_WaitForSlotEvent: Some(slots::C_WaitForSlotEvent),
};

/// Most attributes in one template (`C_CreateObject`, `C_GetAttributeValue`, …): far above
/// the few dozen attribute types an object has, far below a count no array can hold.
pub const MAX_TEMPLATE_ATTRIBUTES: usize = 256;
/// Longest attribute value a template may carry (the default token's whole storage).
pub const MAX_ATTRIBUTE_LEN: usize = 64 * 1024;
/// Longest input to `C_Sign`, `C_Encrypt`, `C_Decrypt`, `C_Digest` or one `…Update`, and
/// longest wrapped key for `C_UnwrapKey`.
pub const MAX_DATA_LEN: usize = 1024 * 1024;
/// Longest byte string inside a mechanism parameter (an OAEP label, ECDH public or shared
/// data).
pub const MAX_PARAMETER_LEN: usize = 64 * 1024;
/// Most bytes one `C_GenerateRandom` call fills.
pub const MAX_RANDOM_LEN: usize = 1024 * 1024;

/// The shell around every exported function: runs its inner function, maps its `Result` to
/// the code the application sees, and stops a panic at the C boundary (unwinding into C is
/// undefined; Rust would abort the application) as `CKR_GENERAL_ERROR`.
///
/// A panic that held the engine's state lock poisons it, so later calls return
/// `CKR_GENERAL_ERROR` too until `C_Finalize` and a new `C_Initialize`: nothing half-changed is
/// ever used. Token state on disk is only replaced whole, so it stays the last committed one.
fn shell(f: impl FnOnce() -> Result<(), Rv>) -> CK_RV {
    // AssertUnwindSafe: see above; no state that a panic may have broken is used afterwards.
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(Ok(())) => CKR_OK,
        Ok(Err(rv)) => rv,
        Err(_) => CKR_GENERAL_ERROR,
    }
}

/// The running engine.
fn eng() -> Result<Arc<Engine>, Rv> {
    engine::get()
}

/// A count of `T`s a caller says its buffer holds, checked before the buffer is touched: a
/// count of more bytes than any object can have (`isize::MAX`, so `CK_UNAVAILABLE_INFORMATION`
/// too) is `CKR_ARGUMENTS_BAD`, above `max` (a limit of ours) `too_many`.
fn count<T>(n: CK_ULONG, max: usize, too_many: Rv) -> Result<usize, Rv> {
    let n = usize::try_from(n).map_err(|_| CKR_ARGUMENTS_BAD)?;
    let addressable = isize::MAX as usize / std::mem::size_of::<T>().max(1);
    if n > addressable {
        return Err(CKR_ARGUMENTS_BAD);
    }
    if n > max {
        return Err(too_many);
    }
    Ok(n)
}

/// The capacity of an output buffer of `T`s (a `*pulSignatureLen`, a `ulMaxObjectCount`):
/// any size a real buffer can have.
fn capacity<T>(n: CK_ULONG) -> Result<usize, Rv> {
    count::<T>(n, usize::MAX, CKR_ARGUMENTS_BAD)
}

/// Borrows `n` items at `p`: NULL only for none (else `CKR_ARGUMENTS_BAD`); `n` checked by
/// [`count`] before anything is read.
///
/// # Safety
/// `p` must be null or point to `n` readable items that stay valid for the call, whenever
/// `n` passes the checks.
unsafe fn items<'a, T>(p: *const T, n: CK_ULONG, max: usize, too_many: Rv) -> Result<&'a [T], Rv> {
    if p.is_null() {
        return if n == 0 {
            Ok(&[])
        } else {
            Err(CKR_ARGUMENTS_BAD)
        };
    }
    let n = count::<T>(n, max, too_many)?;
    // SAFETY: non-null, `n * size_of::<T>() <= isize::MAX`, and the caller guarantees `n`
    // readable items.
    Ok(unsafe { std::slice::from_raw_parts(p, n) })
}

/// [`items`] for writing.
///
/// # Safety
/// `p` must be null or point to `n` writable items that stay valid and unaliased for the
/// call, whenever `n` passes the checks.
unsafe fn items_mut<'a, T>(
    p: *mut T,
    n: CK_ULONG,
    max: usize,
    too_many: Rv,
) -> Result<&'a mut [T], Rv> {
    if p.is_null() {
        return if n == 0 {
            Ok(&mut [])
        } else {
            Err(CKR_ARGUMENTS_BAD)
        };
    }
    let n = count::<T>(n, max, too_many)?;
    // SAFETY: as in `items`, for writing.
    Ok(unsafe { std::slice::from_raw_parts_mut(p, n) })
}

/// Borrows `len` bytes at `p`, at most `max` (else `too_long`, nothing read).
///
/// # Safety
/// As [`items`].
unsafe fn bytes<'a>(
    p: *const CK_BYTE,
    len: CK_ULONG,
    max: usize,
    too_long: Rv,
) -> Result<&'a [u8], Rv> {
    // SAFETY: forwarded with the same contract.
    unsafe { items(p, len, max, too_long) }
}

/// Borrows a PIN: a NULL pointer is `CKR_ARGUMENTS_BAD` (a simulated token has no protected
/// authentication path); a PIN longer than the token's longest (`max`, at most 255) is never
/// read: `too_long`.
///
/// # Safety
/// As [`items`].
unsafe fn pin_bytes<'a>(
    p: *const CK_UTF8CHAR,
    len: CK_ULONG,
    max: usize,
    too_long: Rv,
) -> Result<&'a [u8], Rv> {
    if p.is_null() {
        return Err(CKR_ARGUMENTS_BAD);
    }
    // SAFETY: forwarded with the same contract.
    unsafe { bytes(p, len, max, too_long) }
}

/// Borrows a byte string inside a mechanism parameter; anything wrong with it is
/// `CKR_MECHANISM_PARAM_INVALID`.
///
/// # Safety
/// As [`items`].
unsafe fn param_bytes<'a>(p: *const CK_BYTE, len: CK_ULONG) -> Result<&'a [u8], Rv> {
    // SAFETY: forwarded with the same contract.
    unsafe { bytes(p, len, MAX_PARAMETER_LEN, CKR_MECHANISM_PARAM_INVALID) }
        .map_err(|_| CKR_MECHANISM_PARAM_INVALID)
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
    let cap = capacity::<CK_ULONG>(unsafe { *count })?;
    // SAFETY: as above.
    unsafe { *count = items.len() as CK_ULONG };
    if out.is_null() {
        return Ok(());
    }
    if cap < items.len() {
        return Err(CKR_BUFFER_TOO_SMALL);
    }
    // SAFETY: `out` holds at least `cap >= items.len()` writable items.
    unsafe { std::ptr::copy_nonoverlapping(items.as_ptr(), out, items.len()) };
    Ok(())
}

/// Copies a template in (types and values): at most [`MAX_TEMPLATE_ATTRIBUTES`] attributes
/// (else `CKR_ARGUMENTS_BAD`), each value at most [`MAX_ATTRIBUTE_LEN`] bytes (else
/// `CKR_ATTRIBUTE_VALUE_INVALID`), all checked before a value is read.
///
/// # Safety
/// `p` must be null (with `n == 0`) or point to `n` attributes whose `pValue` point to
/// `ulValueLen` readable bytes.
unsafe fn template(p: *const CK_ATTRIBUTE, n: CK_ULONG) -> Result<Template, Rv> {
    // SAFETY: the caller guarantees `n` attributes at `p`.
    let attrs = unsafe { items(p, n, MAX_TEMPLATE_ATTRIBUTES, CKR_ARGUMENTS_BAD) }?;
    let mut entries = Vec::with_capacity(attrs.len());
    for a in attrs {
        // SAFETY: the caller guarantees each value holds `ulValueLen` bytes.
        let v = unsafe {
            bytes(
                a.pValue as *const CK_BYTE,
                a.ulValueLen,
                MAX_ATTRIBUTE_LEN,
                CKR_ATTRIBUTE_VALUE_INVALID,
            )
        }?;
        entries.push((a.type_, v.to_vec()));
    }
    Template::new(entries)
}

/// Reads a mechanism's parameter as a `T`, checking its length.
///
/// # Safety
/// `m.pParameter` must be null or point to `m.ulParameterLen` readable bytes.
unsafe fn param<T: Copy>(m: &CK_MECHANISM) -> Result<T, Rv> {
    if m.pParameter.is_null() || m.ulParameterLen != std::mem::size_of::<T>() as CK_ULONG {
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

/// `CKR_MECHANISM_INVALID` unless the token of `session` offers the mechanism `p` names
/// (its vendor profile may offer fewer than the simulator has).
///
/// # Safety
/// `p` must be null or point to a valid `CK_MECHANISM`.
unsafe fn offered(
    e: &Engine,
    session: CK_SESSION_HANDLE,
    p: *const CK_MECHANISM,
) -> Result<(), Rv> {
    // SAFETY: as the caller guarantees.
    let m = unsafe { mechanism(p) }?;
    e.offers(session, m.mechanism)
}

/// Hands an output to the caller with the length-query convention: `out_len` must not be
/// NULL; a NULL `out` asks for the length; a buffer smaller than the output gets
/// `CKR_BUFFER_TOO_SMALL` and the length. `f` gets the buffer's capacity (`None` for a length
/// query) and produces the output.
///
/// # Safety
/// `out_len` must be null or valid for reading and writing; `out` null or valid for writing
/// `*out_len` bytes.
unsafe fn write_output(
    out: *mut CK_BYTE,
    out_len: *mut CK_ULONG,
    f: impl FnOnce(Option<usize>) -> Result<engine::Output, Rv>,
) -> Result<(), Rv> {
    if out_len.is_null() {
        return Err(CKR_ARGUMENTS_BAD);
    }
    let cap = if out.is_null() {
        None
    } else {
        // SAFETY: checked non-null; the caller guarantees it is readable.
        Some(capacity::<u8>(unsafe { *out_len })?)
    };
    match f(cap)? {
        engine::Output::Length(n) => {
            // SAFETY: checked non-null above.
            unsafe { *out_len = n as CK_ULONG };
            Ok(())
        }
        engine::Output::TooSmall(n) => {
            // SAFETY: checked non-null above.
            unsafe { *out_len = n as CK_ULONG };
            Err(CKR_BUFFER_TOO_SMALL)
        }
        engine::Output::Done(p) => {
            if cap.is_none_or(|c| c < p.len()) {
                // The engine checks the capacity first; this never happens.
                return Err(CKR_GENERAL_ERROR);
            }
            // SAFETY: `out` holds at least `cap >= p.len()` writable bytes; `out_len` is
            // non-null.
            unsafe {
                std::ptr::copy_nonoverlapping(p.as_ptr(), out, p.len());
                *out_len = p.len() as CK_ULONG;
            }
            Ok(())
        }
    }
}

/// Blank-padded fixed-size text field.
fn pad<const N: usize>(s: &str) -> [CK_UTF8CHAR; N] {
    crate::rack::token::padded::<N>(s)
}

#[cfg(test)]
mod tests;
