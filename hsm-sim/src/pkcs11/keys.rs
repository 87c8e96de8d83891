//! Key management (PKCS#11 v2.40 Base, section 5.13): `C_GenerateKey` (`CKM_AES_KEY_GEN`,
//! `CKM_GENERIC_SECRET_KEY_GEN`), `C_GenerateKeyPair` (`CKM_EC_KEY_PAIR_GEN` on P-256,
//! `CKM_RSA_PKCS_KEY_PAIR_GEN`), `C_WrapKey`/`C_UnwrapKey` of secret keys
//! (`CKM_AES_KEY_WRAP`, `CKM_AES_KEY_WRAP_PAD`, `CKM_RSA_PKCS`, `CKM_RSA_PKCS_OAEP`) and
//! `C_DeriveKey` (`CKM_ECDH1_DERIVE`).

use cryptoki_sys::*;

use super::decryption::cipher_mechanism;
use super::{
    MAX_DATA_LEN, bytes, eng, mechanism, offered, param, param_bytes, put, shell, template,
    write_output,
};
use crate::engine::keys::{EcdhParams, KeyGen};
use crate::engine::{SecretKeyGen, WrapMechanism};
use crate::rack::Rv;

/// `C_GenerateKey` (5.13).
pub(super) unsafe extern "C" fn C_GenerateKey(
    session: CK_SESSION_HANDLE,
    mech: *mut CK_MECHANISM,
    attrs: *mut CK_ATTRIBUTE,
    count: CK_ULONG,
    key: *mut CK_OBJECT_HANDLE,
) -> CK_RV {
    shell(|| {
        let e = eng()?;
        // SAFETY: the caller passes a valid mechanism (or null, refused).
        unsafe { offered(&e, session, mech) }?;
        if key.is_null() {
            return Err(CKR_ARGUMENTS_BAD);
        }
        // SAFETY: the caller passes a valid mechanism and a template of `count` attributes.
        let (m, t) = unsafe { (mechanism(mech)?, template(attrs, count)?) };
        let kind = match m.mechanism {
            CKM_AES_KEY_GEN => SecretKeyGen::Aes,
            CKM_GENERIC_SECRET_KEY_GEN => SecretKeyGen::Generic,
            _ => return Err(CKR_MECHANISM_INVALID),
        };
        let h = e.generate_key(session, kind, t)?;
        // SAFETY: checked non-null above.
        unsafe { put(key, h) }
    })
}

/// Reads a key-wrapping mechanism.
///
/// # Safety
/// As [`cipher_mechanism`].
unsafe fn wrap_mechanism(p: *const CK_MECHANISM) -> Result<WrapMechanism, Rv> {
    // SAFETY: the caller passes a valid mechanism.
    let m = unsafe { mechanism(p) }?;
    Ok(match m.mechanism {
        CKM_AES_KEY_WRAP | CKM_AES_KEY_WRAP_PAD => {
            // Only the default IV of RFC 3394 / RFC 5649 (an empty parameter).
            if m.ulParameterLen != 0 {
                return Err(CKR_MECHANISM_PARAM_INVALID);
            }
            if m.mechanism == CKM_AES_KEY_WRAP {
                WrapMechanism::AesKeyWrap
            } else {
                WrapMechanism::AesKeyWrapPad
            }
        }
        // SAFETY: as above.
        CKM_RSA_PKCS | CKM_RSA_PKCS_OAEP => WrapMechanism::Rsa(unsafe { cipher_mechanism(p) }?),
        _ => return Err(CKR_MECHANISM_INVALID),
    })
}

/// `C_WrapKey` (5.13), with the length-query convention.
pub(super) unsafe extern "C" fn C_WrapKey(
    session: CK_SESSION_HANDLE,
    mech: *mut CK_MECHANISM,
    wrapping: CK_OBJECT_HANDLE,
    key: CK_OBJECT_HANDLE,
    out: *mut CK_BYTE,
    out_len: *mut CK_ULONG,
) -> CK_RV {
    shell(|| {
        let e = eng()?;
        // SAFETY: the caller passes a valid mechanism (or null, refused).
        unsafe { offered(&e, session, mech) }?;
        // SAFETY: the caller passes a valid mechanism.
        let m = unsafe { wrap_mechanism(mech) }?;
        // SAFETY: the caller passes an output buffer of `*out_len` bytes, or NULL.
        unsafe {
            write_output(out, out_len, |cap| {
                e.wrap_key(session, m, wrapping, key, cap)
            })
        }
    })
}

/// `C_UnwrapKey` (5.13): a wrapped key longer than [`MAX_DATA_LEN`] →
/// `CKR_WRAPPED_KEY_LEN_RANGE`, unread.
#[allow(clippy::too_many_arguments)]
pub(super) unsafe extern "C" fn C_UnwrapKey(
    session: CK_SESSION_HANDLE,
    mech: *mut CK_MECHANISM,
    unwrapping: CK_OBJECT_HANDLE,
    wrapped: *mut CK_BYTE,
    wrapped_len: CK_ULONG,
    attrs: *mut CK_ATTRIBUTE,
    count: CK_ULONG,
    key: *mut CK_OBJECT_HANDLE,
) -> CK_RV {
    shell(|| {
        let e = eng()?;
        // SAFETY: the caller passes a valid mechanism (or null, refused).
        unsafe { offered(&e, session, mech) }?;
        if key.is_null() {
            return Err(CKR_ARGUMENTS_BAD);
        }
        // SAFETY: the caller passes a valid mechanism, `wrapped_len` readable bytes (checked
        // against the limit) and a template of `count` attributes.
        let (m, w, t) = unsafe {
            (
                wrap_mechanism(mech)?,
                bytes(
                    wrapped,
                    wrapped_len,
                    MAX_DATA_LEN,
                    CKR_WRAPPED_KEY_LEN_RANGE,
                )?,
                template(attrs, count)?,
            )
        };
        let h = e.unwrap_key(session, m, unwrapping, w, t)?;
        // SAFETY: checked non-null above.
        unsafe { put(key, h) }
    })
}

/// `C_GenerateKeyPair` (5.13).
pub(super) unsafe extern "C" fn C_GenerateKeyPair(
    session: CK_SESSION_HANDLE,
    mech: *mut CK_MECHANISM,
    pub_attrs: *mut CK_ATTRIBUTE,
    pub_count: CK_ULONG,
    priv_attrs: *mut CK_ATTRIBUTE,
    priv_count: CK_ULONG,
    pub_key: *mut CK_OBJECT_HANDLE,
    priv_key: *mut CK_OBJECT_HANDLE,
) -> CK_RV {
    shell(|| {
        let e = eng()?;
        // SAFETY: the caller passes a valid mechanism (or null, refused).
        unsafe { offered(&e, session, mech) }?;
        if pub_key.is_null() || priv_key.is_null() {
            return Err(CKR_ARGUMENTS_BAD);
        }
        // SAFETY: the caller passes a valid mechanism and templates of the stated sizes.
        let (m, public, private) = unsafe {
            (
                mechanism(mech)?,
                template(pub_attrs, pub_count)?,
                template(priv_attrs, priv_count)?,
            )
        };
        let kind = match m.mechanism {
            CKM_EC_KEY_PAIR_GEN => KeyGen::Ec,
            CKM_RSA_PKCS_KEY_PAIR_GEN => KeyGen::Rsa,
            _ => return Err(CKR_MECHANISM_INVALID),
        };
        let (p, s) = e.generate_key_pair(session, kind, public, private)?;
        // SAFETY: both checked non-null above.
        unsafe {
            put(pub_key, p)?;
            put(priv_key, s)
        }
    })
}

/// `C_DeriveKey` (5.13): ECDH with `CKD_NULL`.
pub(super) unsafe extern "C" fn C_DeriveKey(
    session: CK_SESSION_HANDLE,
    mech: *mut CK_MECHANISM,
    base: CK_OBJECT_HANDLE,
    attrs: *mut CK_ATTRIBUTE,
    count: CK_ULONG,
    key: *mut CK_OBJECT_HANDLE,
) -> CK_RV {
    shell(|| {
        let e = eng()?;
        // SAFETY: the caller passes a valid mechanism (or null, refused).
        unsafe { offered(&e, session, mech) }?;
        if key.is_null() {
            return Err(CKR_ARGUMENTS_BAD);
        }
        // SAFETY: the caller passes a valid mechanism and a template of `count` attributes.
        let (m, t) = unsafe { (mechanism(mech)?, template(attrs, count)?) };
        if m.mechanism != CKM_ECDH1_DERIVE {
            return Err(CKR_MECHANISM_INVALID);
        }
        // SAFETY: the parameter of CKM_ECDH1_DERIVE is a CK_ECDH1_DERIVE_PARAMS (size checked).
        let p: CK_ECDH1_DERIVE_PARAMS = unsafe { param(m) }?;
        // SAFETY: the parameter's pointers hold the stated lengths (checked first).
        let (shared, public) = unsafe {
            (
                param_bytes(p.pSharedData, p.ulSharedDataLen)?,
                param_bytes(p.pPublicData, p.ulPublicDataLen)?,
            )
        };
        let params = EcdhParams {
            kdf: p.kdf,
            shared_data: shared.to_vec(),
            public_data: public.to_vec(),
        };
        let h = e.derive_ecdh(session, params, base, t)?;
        // SAFETY: checked non-null above.
        unsafe { put(key, h) }
    })
}
