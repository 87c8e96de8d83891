//! Signing (PKCS#11 v2.40 Base, section 5.11): single-part `C_SignInit`/`C_Sign` with
//! `CKM_ECDSA`, `CKM_ECDSA_SHA256`, `CKM_RSA_PKCS`, `CKM_SHA256_RSA_PKCS`,
//! `CKM_RSA_PKCS_PSS` and `CKM_SHA256_RSA_PKCS_PSS`. Multi-part signing is not supported.

use cryptoki_sys::*;

use super::{MAX_DATA_LEN, bytes, capacity, eng, mechanism, offered, param, shell};
use crate::engine::SignOutcome;
use crate::rack::Rv;
use crate::rack::crypto::{HashAlg, SignMechanism};

unsafe fn sign_mechanism(p: *const CK_MECHANISM) -> Result<SignMechanism, Rv> {
    // SAFETY: the caller passes a valid mechanism.
    let m = unsafe { mechanism(p) }?;
    Ok(match m.mechanism {
        CKM_ECDSA => SignMechanism::Ecdsa,
        CKM_ECDSA_SHA256 => SignMechanism::EcdsaSha256,
        CKM_RSA_PKCS => SignMechanism::RsaPkcs,
        CKM_SHA256_RSA_PKCS => SignMechanism::Sha256RsaPkcs,
        CKM_RSA_PKCS_PSS | CKM_SHA256_RSA_PKCS_PSS => {
            // SAFETY: PSS mechanisms carry a CK_RSA_PKCS_PSS_PARAMS (size checked).
            let pp: CK_RSA_PKCS_PSS_PARAMS = unsafe { param(m) }?;
            let hash = HashAlg::from_mechanism(pp.hashAlg)?;
            if HashAlg::from_mgf(pp.mgf)? != hash || hash != HashAlg::Sha256 {
                return Err(CKR_MECHANISM_PARAM_INVALID);
            }
            SignMechanism::RsaPss {
                hash,
                salt: pp.sLen as usize,
                hash_data: m.mechanism == CKM_SHA256_RSA_PKCS_PSS,
            }
        }
        _ => return Err(CKR_MECHANISM_INVALID),
    })
}

/// `C_SignInit` (5.11).
pub(super) unsafe extern "C" fn C_SignInit(
    session: CK_SESSION_HANDLE,
    mech: *mut CK_MECHANISM,
    key: CK_OBJECT_HANDLE,
) -> CK_RV {
    shell(|| {
        let e = eng()?;
        // SAFETY: the caller passes a valid mechanism (or null, refused).
        unsafe { offered(&e, session, mech) }?;
        // SAFETY: the caller passes a valid mechanism.
        let m = unsafe { sign_mechanism(mech) }?;
        e.sign_init(session, m, key)
    })
}

/// `C_Sign` (5.11), with the length-query convention. Data longer than [`MAX_DATA_LEN`] →
/// `CKR_DATA_LEN_RANGE`, unread.
pub(super) unsafe extern "C" fn C_Sign(
    session: CK_SESSION_HANDLE,
    data: *mut CK_BYTE,
    data_len: CK_ULONG,
    sig: *mut CK_BYTE,
    sig_len: *mut CK_ULONG,
) -> CK_RV {
    shell(|| {
        let e = eng()?;
        if sig_len.is_null() {
            return Err(CKR_ARGUMENTS_BAD);
        }
        // SAFETY: the caller passes `data_len` readable bytes (checked against the limit).
        let data = unsafe { bytes(data, data_len, MAX_DATA_LEN, CKR_DATA_LEN_RANGE) }?;
        let capacity = if sig.is_null() {
            None
        } else {
            // SAFETY: checked non-null above.
            Some(capacity::<u8>(unsafe { *sig_len })?)
        };
        match e.sign(session, data, capacity)? {
            SignOutcome::Length(n) => {
                // SAFETY: checked non-null above.
                unsafe { *sig_len = n as CK_ULONG };
                Ok(())
            }
            SignOutcome::TooSmall(n) => {
                // SAFETY: checked non-null above.
                unsafe { *sig_len = n as CK_ULONG };
                Err(CKR_BUFFER_TOO_SMALL)
            }
            SignOutcome::Done(s) => {
                // SAFETY: `sig` holds at least `*sig_len >= s.len()` bytes (checked by the
                // engine against the capacity given); `sig_len` is non-null.
                unsafe {
                    std::ptr::copy_nonoverlapping(s.as_ptr(), sig, s.len());
                    *sig_len = s.len() as CK_ULONG;
                }
                Ok(())
            }
        }
    })
}
