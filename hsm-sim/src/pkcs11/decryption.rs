//! Decryption (PKCS#11 v2.40 Base, section 5.9): `C_DecryptInit`, `C_Decrypt`,
//! `C_DecryptUpdate`, `C_DecryptFinal` with `CKM_RSA_PKCS`, `CKM_RSA_PKCS_OAEP` (SHA-1 or
//! SHA-256), `CKM_AES_ECB`, `CKM_AES_CBC`, `CKM_AES_CBC_PAD` and `CKM_AES_GCM` (96-bit IV,
//! 128-bit tag).

use cryptoki_sys::*;

use super::{
    MAX_DATA_LEN, bytes, eng, mechanism, offered, param, param_bytes, shell, write_output,
};
use crate::rack::Rv;
use crate::rack::crypto::{CipherMechanism, HashAlg};
use crate::rack::symmetric::AesMode;

/// Reads an encryption or decryption mechanism (also a wrapping one: RSA).
///
/// # Safety
/// `p` must be null or point to a valid `CK_MECHANISM` whose parameter holds
/// `ulParameterLen` bytes.
pub(super) unsafe fn cipher_mechanism(p: *const CK_MECHANISM) -> Result<CipherMechanism, Rv> {
    // SAFETY: the caller passes a valid mechanism.
    let m = unsafe { mechanism(p) }?;
    let iv16 = |m: &CK_MECHANISM| -> Result<[u8; 16], Rv> {
        // SAFETY: the parameter of the AES CBC mechanisms is the IV, `ulParameterLen` bytes.
        let iv = unsafe { param_bytes(m.pParameter as *const u8, m.ulParameterLen) }?;
        iv.try_into().map_err(|_| CKR_MECHANISM_PARAM_INVALID)
    };
    Ok(match m.mechanism {
        CKM_RSA_PKCS => CipherMechanism::RsaPkcs,
        CKM_RSA_PKCS_OAEP => {
            // SAFETY: OAEP carries a CK_RSA_PKCS_OAEP_PARAMS (size checked).
            let op: CK_RSA_PKCS_OAEP_PARAMS = unsafe { param(m) }?;
            let label = if op.ulSourceDataLen == 0 {
                Vec::new()
            } else {
                if op.source != CKZ_DATA_SPECIFIED {
                    return Err(CKR_MECHANISM_PARAM_INVALID);
                }
                // SAFETY: the parameter's label holds `ulSourceDataLen` bytes (checked first).
                unsafe { param_bytes(op.pSourceData as *const u8, op.ulSourceDataLen) }?.to_vec()
            };
            CipherMechanism::RsaOaep {
                hash: HashAlg::from_mechanism(op.hashAlg)?,
                mgf: HashAlg::from_mgf(op.mgf)?,
                label,
            }
        }
        CKM_AES_ECB => {
            if m.ulParameterLen != 0 {
                return Err(CKR_MECHANISM_PARAM_INVALID);
            }
            CipherMechanism::Aes(AesMode::Ecb)
        }
        CKM_AES_CBC => CipherMechanism::Aes(AesMode::Cbc { iv: iv16(m)? }),
        CKM_AES_CBC_PAD => CipherMechanism::Aes(AesMode::CbcPad { iv: iv16(m)? }),
        CKM_AES_GCM => {
            // SAFETY: GCM carries a CK_GCM_PARAMS (size checked).
            let g: CK_GCM_PARAMS = unsafe { param(m) }?;
            if g.ulTagBits != 128 {
                return Err(CKR_MECHANISM_PARAM_INVALID);
            }
            // SAFETY: the parameter's IV and AAD hold the stated lengths (checked first).
            let (iv, aad) = unsafe {
                (
                    param_bytes(g.pIv, g.ulIvLen)?,
                    param_bytes(g.pAAD, g.ulAADLen)?,
                )
            };
            CipherMechanism::Aes(AesMode::Gcm {
                iv: iv.try_into().map_err(|_| CKR_MECHANISM_PARAM_INVALID)?,
                aad: aad.to_vec(),
            })
        }
        _ => return Err(CKR_MECHANISM_INVALID),
    })
}

/// `C_DecryptInit` (5.9).
pub(super) unsafe extern "C" fn C_DecryptInit(
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
        e.decrypt_init(session, m, key)
    })
}

/// `C_Decrypt` (5.9), with the length-query convention (a NULL buffer gets an upper bound:
/// the modulus length for RSA). Input longer than [`MAX_DATA_LEN`] →
/// `CKR_ENCRYPTED_DATA_LEN_RANGE`, unread.
pub(super) unsafe extern "C" fn C_Decrypt(
    session: CK_SESSION_HANDLE,
    data: *mut CK_BYTE,
    data_len: CK_ULONG,
    out: *mut CK_BYTE,
    out_len: *mut CK_ULONG,
) -> CK_RV {
    shell(|| {
        let e = eng()?;
        // SAFETY: the caller passes `data_len` readable bytes (checked against the limit).
        let data = unsafe { bytes(data, data_len, MAX_DATA_LEN, CKR_ENCRYPTED_DATA_LEN_RANGE) }?;
        // SAFETY: the caller passes an output buffer of `*out_len` bytes, or NULL.
        unsafe { write_output(out, out_len, |cap| e.decrypt(session, data, cap)) }
    })
}

/// `C_DecryptUpdate` (5.9), with the length-query convention: as `C_EncryptUpdate`
/// (CBC-PAD holds its last block back for `C_DecryptFinal`).
pub(super) unsafe extern "C" fn C_DecryptUpdate(
    session: CK_SESSION_HANDLE,
    data: *mut CK_BYTE,
    data_len: CK_ULONG,
    out: *mut CK_BYTE,
    out_len: *mut CK_ULONG,
) -> CK_RV {
    shell(|| {
        let e = eng()?;
        // SAFETY: the caller passes `data_len` readable bytes (checked against the limit).
        let data = unsafe { bytes(data, data_len, MAX_DATA_LEN, CKR_ENCRYPTED_DATA_LEN_RANGE) }?;
        // SAFETY: the caller passes an output buffer of `*out_len` bytes, or NULL (a length
        // query, which takes no input in).
        unsafe { write_output(out, out_len, |cap| e.decrypt_update(session, data, cap)) }
    })
}

/// `C_DecryptFinal` (5.9): decrypts the gathered parts.
pub(super) unsafe extern "C" fn C_DecryptFinal(
    session: CK_SESSION_HANDLE,
    out: *mut CK_BYTE,
    out_len: *mut CK_ULONG,
) -> CK_RV {
    shell(|| {
        let e = eng()?;
        // SAFETY: the caller passes an output buffer of `*out_len` bytes, or NULL.
        unsafe { write_output(out, out_len, |cap| e.decrypt_final(session, cap)) }
    })
}
