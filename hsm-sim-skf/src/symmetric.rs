//! Session keys and SM4 encryption (GM/T 0016-2012, 7.6): how a desk checks that the
//! encryption key pair on a token decrypts (a key wrapped to it with `SKF_ExtECCEncrypt`,
//! unwrapped on the token with `SKF_ImportSessionKey`, then used).

use hsm_sim::skf::consts::*;
use hsm_sim::skf::engine::MAX_BUFFER;

use super::*;
use crate::crypto::read_cipher;

/// Longest wrapped key read: an `ECCCIPHERBLOB` with up to 64 bytes of `Cipher`.
const MAX_WRAPPED: usize = CIPHER_OFFSET + 64;

/// `SKF_ImportSessionKey` (user PIN verified): `pbWrapedData` is an `ECCCIPHERBLOB` of the
/// 16-byte SM4 key encrypted to the container's encryption key; `ulAlgId` `SGD_SM4_ECB` or
/// `SGD_SM4_CBC`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn SKF_ImportSessionKey(
    hContainer: HCONTAINER,
    ulAlgId: ULONG,
    pbWrapedData: *mut BYTE,
    ulWrapedLen: ULONG,
    phKey: *mut HANDLE,
) -> ULONG {
    shell(|| {
        let h = handle(hContainer)?;
        // SAFETY: `ulWrapedLen` readable bytes, checked against the limit first.
        let wrapped = unsafe { bytes(pbWrapedData, ulWrapedLen, MAX_WRAPPED, SAR_INDATALENERR) }?;
        if wrapped.len() < CIPHER_OFFSET {
            return Err(SAR_INDATALENERR);
        }
        // SAFETY: the blob lies in `wrapped`; its C2 must too (at most what is left).
        let cipher = unsafe { read_cipher(wrapped.as_ptr(), wrapped.len() - CIPHER_OFFSET) }?;
        if phKey.is_null() {
            return Err(SAR_INVALIDPARAMERR);
        }
        let key = eng().import_session_key(h, ulAlgId, &cipher)?;
        // SAFETY: checked non-null.
        unsafe { put(phKey, to_handle(key)) }
    })
}

/// `SKF_SetSymmKey`: a 16-byte SM4 key in clear.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn SKF_SetSymmKey(
    hDev: DEVHANDLE,
    pbKey: *mut BYTE,
    ulAlgID: ULONG,
    phKey: *mut HANDLE,
) -> ULONG {
    shell(|| {
        let h = handle(hDev)?;
        // SAFETY: an SM4 key is 16 readable bytes.
        let key = unsafe { bytes(pbKey, 16, 16, SAR_INVALIDPARAMERR) }?;
        if phKey.is_null() {
            return Err(SAR_INVALIDPARAMERR);
        }
        let k = eng().set_symm_key(h, key, ulAlgID)?;
        // SAFETY: checked non-null.
        unsafe { put(phKey, to_handle(k)) }
    })
}

fn init(hKey: HANDLE, encrypt: bool, p: &BLOCKCIPHERPARAM) -> Result<(), Sar> {
    let iv_len = (p.IVLen as usize).min(p.IV.len());
    eng().cipher_init(handle(hKey)?, encrypt, &p.IV[..iv_len], p.PaddingType)
}

/// `SKF_EncryptInit`: `PaddingType` 0 (none) or 1 (PKCS#5); `IV`/`IVLen` 16 bytes for CBC.
#[unsafe(no_mangle)]
pub extern "C" fn SKF_EncryptInit(hKey: HANDLE, EncryptParam: BLOCKCIPHERPARAM) -> ULONG {
    shell(|| init(hKey, true, &EncryptParam))
}

/// `SKF_DecryptInit`.
#[unsafe(no_mangle)]
pub extern "C" fn SKF_DecryptInit(hKey: HANDLE, DecryptParam: BLOCKCIPHERPARAM) -> ULONG {
    shell(|| init(hKey, false, &DecryptParam))
}

/// The whole of `SKF_Encrypt`/`SKF_Decrypt`, with the length query of the standard (a
/// query or a too-small buffer leaves the operation set up).
///
/// # Safety
/// `data` must point to `len` readable bytes; `out_len` as `write_out`.
unsafe fn run(
    hKey: HANDLE,
    encrypt: bool,
    data: *const BYTE,
    len: ULONG,
    out: *mut BYTE,
    out_len: *mut ULONG,
) -> Result<(), Sar> {
    let h = handle(hKey)?;
    // SAFETY: `len` readable bytes, checked against the limit first.
    let data = unsafe { bytes(data, len, MAX_BUFFER, SAR_INDATALENERR) }?;
    if out_len.is_null() {
        return Err(SAR_INVALIDPARAMERR);
    }
    let need = eng().cipher_len(h, encrypt, data.len())?;
    // SAFETY: checked non-null; readable by the contract.
    let cap = unsafe { out_len.read_unaligned() } as usize;
    if out.is_null() || cap < need {
        // SAFETY: as above, writable.
        unsafe { out_len.write_unaligned(need as ULONG) };
        return if out.is_null() {
            Ok(())
        } else {
            Err(SAR_BUFFER_TOO_SMALL)
        };
    }
    let result = eng().cipher(h, encrypt, data)?;
    // SAFETY: `out` holds `cap >= need >= result.len()` writable bytes.
    unsafe { write_out(out, out_len, &result) }
}

/// `SKF_Encrypt`: the whole input in one call (NULL output: the length).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn SKF_Encrypt(
    hKey: HANDLE,
    pbData: *mut BYTE,
    ulDataLen: ULONG,
    pbEncryptedData: *mut BYTE,
    pulEncryptedLen: *mut ULONG,
) -> ULONG {
    // SAFETY: the caller's buffers, as `run` states.
    shell(|| unsafe {
        run(
            hKey,
            true,
            pbData,
            ulDataLen,
            pbEncryptedData,
            pulEncryptedLen,
        )
    })
}

/// `SKF_Decrypt`: the whole input in one call (NULL output: an upper bound of the length).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn SKF_Decrypt(
    hKey: HANDLE,
    pbEncryptedData: *mut BYTE,
    ulEncryptedLen: ULONG,
    pbData: *mut BYTE,
    pulDataLen: *mut ULONG,
) -> ULONG {
    // SAFETY: the caller's buffers, as `run` states.
    shell(|| unsafe {
        run(
            hKey,
            false,
            pbEncryptedData,
            ulEncryptedLen,
            pbData,
            pulDataLen,
        )
    })
}
