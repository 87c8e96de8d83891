//! Decryption (PKCS#11 v2.40 Base, section 5.9): single-part `C_DecryptInit`/`C_Decrypt`
//! with `CKM_RSA_PKCS` and `CKM_RSA_PKCS_OAEP` (SHA-1 or SHA-256). Multi-part decryption is
//! not supported.

use cryptoki_sys::*;

use super::{MAX_DATA_LEN, bytes, capacity, eng, mechanism, param, param_bytes, shell};
use crate::engine::DecryptOutcome;
use crate::rack::Rv;
use crate::rack::crypto::{DecryptMechanism, HashAlg};

unsafe fn decrypt_mechanism(p: *const CK_MECHANISM) -> Result<DecryptMechanism, Rv> {
    // SAFETY: the caller passes a valid mechanism.
    let m = unsafe { mechanism(p) }?;
    Ok(match m.mechanism {
        CKM_RSA_PKCS => DecryptMechanism::RsaPkcs,
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
            DecryptMechanism::RsaOaep {
                hash: HashAlg::from_mechanism(op.hashAlg)?,
                mgf: HashAlg::from_mgf(op.mgf)?,
                label,
            }
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
        // SAFETY: the caller passes a valid mechanism.
        let m = unsafe { decrypt_mechanism(mech) }?;
        e.decrypt_init(session, m, key)
    })
}

/// `C_Decrypt` (5.9), with the length-query convention (a NULL buffer gets the modulus
/// length, an upper bound). Input longer than [`MAX_DATA_LEN`] →
/// `CKR_ENCRYPTED_DATA_LEN_RANGE`, unread.
pub(super) unsafe extern "C" fn C_Decrypt(
    session: CK_SESSION_HANDLE,
    data: *mut CK_BYTE,
    data_len: CK_ULONG,
    out: *mut CK_BYTE,
    out_len: *mut CK_ULONG,
) -> CK_RV {
    shell(|| {
        if out_len.is_null() {
            return Err(CKR_ARGUMENTS_BAD);
        }
        let e = eng()?;
        // SAFETY: the caller passes `data_len` readable bytes (checked against the limit).
        let data = unsafe { bytes(data, data_len, MAX_DATA_LEN, CKR_ENCRYPTED_DATA_LEN_RANGE) }?;
        let capacity = if out.is_null() {
            None
        } else {
            // SAFETY: checked non-null above.
            Some(capacity::<u8>(unsafe { *out_len })?)
        };
        match e.decrypt(session, data, capacity)? {
            DecryptOutcome::Length(n) => {
                // SAFETY: checked non-null above.
                unsafe { *out_len = n as CK_ULONG };
                Ok(())
            }
            DecryptOutcome::TooSmall(n) => {
                // SAFETY: checked non-null above.
                unsafe { *out_len = n as CK_ULONG };
                Err(CKR_BUFFER_TOO_SMALL)
            }
            DecryptOutcome::Done(p) => {
                // SAFETY: `out` holds at least `*out_len >= p.len()` bytes (checked by the
                // engine against the capacity given); `out_len` is non-null.
                unsafe {
                    std::ptr::copy_nonoverlapping(p.as_ptr(), out, p.len());
                    *out_len = p.len() as CK_ULONG;
                }
                Ok(())
            }
        }
    })
}
