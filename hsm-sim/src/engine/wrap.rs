//! Secret keys: `C_GenerateKey` (`CKM_AES_KEY_GEN`, `CKM_GENERIC_SECRET_KEY_GEN`), and
//! `C_WrapKey`/`C_UnwrapKey`: secret keys with AES key wrap (RFC 3394, RFC 5649) or RSA
//! (PKCS#1 v1.5, OAEP); private keys (RSA, P-256) as PKCS#8 `PrivateKeyInfo` under AES key
//! wrap (with padding, or without when the DER is a multiple of 8 bytes) — how a key
//! escrowed elsewhere comes onto the token.
//!
//! The protections of PKCS#11 v2.40 (sections 4.8, 4.9, 5.13): the wrapping key needs
//! `CKA_WRAP`, the unwrapping key `CKA_UNWRAP`; a key that is not `CKA_EXTRACTABLE` is never
//! wrapped (`CKR_KEY_UNEXTRACTABLE`); a key with `CKA_WRAP_WITH_TRUSTED` only under a
//! `CKA_TRUSTED` key (`CKR_KEY_NOT_WRAPPABLE`). The token adds one rule of its own: a
//! sensitive key is wrapped only under a trusted key too, so its value never leaves under
//! a key anybody could have made. `CKA_TRUSTED` itself only the SO sets. The token's key
//! policy may forbid keys that both wrap and decrypt (`KeyPolicy`).

use cryptoki_sys::*;
use zeroize::Zeroizing;

use super::cipher::{Output, encrypt_key, sized};
use super::keys::{KeyOrigin, secret_key, unwrapped_private_key};
use super::{Ctx, Engine};
use crate::rack::Rv;
use crate::rack::crypto::{self, CipherMechanism};
use crate::rack::latency::Op;
use crate::rack::object::{KeyMaterial, Object, Template};
use crate::rack::symmetric;

/// A secret-key generation mechanism.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretKeyGen {
    /// `CKM_AES_KEY_GEN`: `CKK_AES`, `CKA_VALUE_LEN` 16, 24 or 32.
    Aes,
    /// `CKM_GENERIC_SECRET_KEY_GEN`: `CKK_GENERIC_SECRET`, `CKA_VALUE_LEN` 1 to 512.
    Generic,
}

/// A key-wrapping mechanism.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WrapMechanism {
    /// `CKM_AES_KEY_WRAP` (RFC 3394) under an AES key: keys of a multiple of 8 bytes.
    AesKeyWrap,
    /// `CKM_AES_KEY_WRAP_PAD` (RFC 5649) under an AES key: keys of any length.
    AesKeyWrapPad,
    /// `CKM_RSA_PKCS` or `CKM_RSA_PKCS_OAEP`: wrapped under an RSA public key, unwrapped
    /// with its private key.
    Rsa(CipherMechanism),
}

impl WrapMechanism {
    /// Class and key type of the wrapping key (the unwrapping key's for `unwrap`).
    fn key_kind(&self, unwrap: bool) -> (CK_OBJECT_CLASS, CK_KEY_TYPE) {
        match self {
            WrapMechanism::AesKeyWrap | WrapMechanism::AesKeyWrapPad => (CKO_SECRET_KEY, CKK_AES),
            WrapMechanism::Rsa(_) if unwrap => (CKO_PRIVATE_KEY, CKK_RSA),
            WrapMechanism::Rsa(_) => (CKO_PUBLIC_KEY, CKK_RSA),
        }
    }
}

impl Engine {
    /// `C_GenerateKey`.
    pub fn generate_key(
        &self,
        h: CK_SESSION_HANDLE,
        kind: SecretKeyGen,
        template: Template,
    ) -> Result<CK_OBJECT_HANDLE, Rv> {
        let ctx = self.enter(h, "C_GenerateKey")?;
        template.reject_token_set()?;
        if template.get(CKA_VALUE).is_some() {
            return Err(CKR_TEMPLATE_INCONSISTENT);
        }
        let (kt, mech) = match kind {
            SecretKeyGen::Aes => (CKK_AES, CKM_AES_KEY_GEN),
            SecretKeyGen::Generic => (CKK_GENERIC_SECRET, CKM_GENERIC_SECRET_KEY_GEN),
        };
        template.require_ulong_if_present(CKA_KEY_TYPE, kt)?;
        let len = template
            .get_ulong(CKA_VALUE_LEN)
            .ok_or(CKR_TEMPLATE_INCOMPLETE)?;
        let len = usize::try_from(len)
            .ok()
            .filter(|n| *n <= 512)
            .ok_or(CKR_ATTRIBUTE_VALUE_INVALID)?;
        Self::check_trusted(&ctx, &template)?;
        let mut value = Zeroizing::new(vec![0u8; len]);
        crypto::random_bytes(&mut value);
        let obj = secret_key(kt, &template, value, true, KeyOrigin::Generated(mech))?;
        self.check_policy(&ctx, &obj)?;
        Self::check_storage_rights(&ctx, obj.is_token(), obj.is_private())?;
        if obj.is_token() {
            self.write_delay(&ctx, obj.size())?;
        }
        self.store_objects(&ctx, vec![obj]).map(|v| v[0])
    }

    /// The wrapping (or unwrapping) key, with its own codes for a bad handle and a wrong
    /// type.
    fn wrapping_key(
        &self,
        ctx: &Ctx,
        h: CK_OBJECT_HANDLE,
        mech: &WrapMechanism,
        unwrap: bool,
    ) -> Result<Object, Rv> {
        let (bad_handle, bad_type, usage) = if unwrap {
            (
                CKR_UNWRAPPING_KEY_HANDLE_INVALID,
                CKR_UNWRAPPING_KEY_TYPE_INCONSISTENT,
                CKA_UNWRAP,
            )
        } else {
            (
                CKR_WRAPPING_KEY_HANDLE_INVALID,
                CKR_WRAPPING_KEY_TYPE_INCONSISTENT,
                CKA_WRAP,
            )
        };
        let obj = self.object(ctx, h).map_err(|rv| {
            if rv == CKR_OBJECT_HANDLE_INVALID {
                bad_handle
            } else {
                rv
            }
        })?;
        let (class, kt) = mech.key_kind(unwrap);
        if obj.class() != class || obj.ulong(CKA_KEY_TYPE) != Some(kt) {
            return Err(bad_type);
        }
        if !obj.bool(usage, false) || self.check_policy(ctx, &obj).is_err() {
            return Err(CKR_KEY_FUNCTION_NOT_PERMITTED);
        }
        Ok(obj)
    }

    /// `C_WrapKey`: the secret key `key` wrapped under `wrapping`; `out_capacity` is `None`
    /// for a length query.
    pub fn wrap_key(
        &self,
        h: CK_SESSION_HANDLE,
        mech: WrapMechanism,
        wrapping: CK_OBJECT_HANDLE,
        key: CK_OBJECT_HANDLE,
        out_capacity: Option<usize>,
    ) -> Result<Output, Rv> {
        let ctx = self.enter(h, "C_WrapKey")?;
        let wk = self.wrapping_key(&ctx, wrapping, &mech, false)?;
        let target = self.key_object(&ctx, key)?;
        let value = match (target.class(), target.key()) {
            (CKO_SECRET_KEY, Some(KeyMaterial::Secret(v))) => v.clone(),
            // A private key travels as PKCS#8, too long for an RSA block.
            (CKO_PRIVATE_KEY, Some(m)) if !matches!(mech, WrapMechanism::Rsa(_)) => {
                crypto::private_key_to_pkcs8(m)?
            }
            _ => return Err(CKR_KEY_NOT_WRAPPABLE),
        };
        if !target.bool(CKA_EXTRACTABLE, false) {
            return Err(CKR_KEY_UNEXTRACTABLE);
        }
        let trusted = wk.bool(CKA_TRUSTED, false);
        if !trusted
            && (target.bool(CKA_WRAP_WITH_TRUSTED, false) || target.bool(CKA_SENSITIVE, true))
        {
            return Err(CKR_KEY_NOT_WRAPPABLE);
        }
        let len = match &mech {
            WrapMechanism::AesKeyWrap if !value.len().is_multiple_of(8) || value.len() < 16 => {
                return Err(CKR_KEY_SIZE_RANGE);
            }
            WrapMechanism::AesKeyWrap => value.len() + 8,
            WrapMechanism::AesKeyWrapPad => value.len().div_ceil(8) * 8 + 8,
            WrapMechanism::Rsa(m) => crypto::ciphertext_len(encrypt_key(&wk)?, m, value.len())?,
        };
        if let Some(o) = sized(len, out_capacity) {
            return Ok(o);
        }
        let wrapped = match &mech {
            WrapMechanism::AesKeyWrap | WrapMechanism::AesKeyWrapPad => {
                let Some(KeyMaterial::Secret(kek)) = wk.key() else {
                    return Err(CKR_WRAPPING_KEY_TYPE_INCONSISTENT);
                };
                if mech == WrapMechanism::AesKeyWrap {
                    symmetric::aes_key_wrap(kek, &value)?
                } else {
                    symmetric::aes_key_wrap_pad(kek, &value)?
                }
            }
            WrapMechanism::Rsa(m) => {
                crypto::encrypt(encrypt_key(&wk)?, m, &value).map_err(|rv| {
                    if rv == CKR_DATA_LEN_RANGE {
                        CKR_KEY_SIZE_RANGE
                    } else {
                        rv
                    }
                })?
            }
        };
        Ok(Output::Done(Zeroizing::new(wrapped)))
    }

    /// `C_UnwrapKey`: a new key from `wrapped`, the template naming its class and key type:
    /// a secret key (`CKK_AES`, `CKK_GENERIC_SECRET`), or a private key (`CKK_RSA`, `CKK_EC`
    /// on P-256, from PKCS#8) under AES key wrap.
    pub fn unwrap_key(
        &self,
        h: CK_SESSION_HANDLE,
        mech: WrapMechanism,
        unwrapping: CK_OBJECT_HANDLE,
        wrapped: &[u8],
        template: Template,
    ) -> Result<CK_OBJECT_HANDLE, Rv> {
        let ctx = self.enter(h, "C_UnwrapKey")?;
        let uk = self.wrapping_key(&ctx, unwrapping, &mech, true)?;
        template.reject_token_set()?;
        let class = template
            .get_ulong(CKA_CLASS)
            .ok_or(CKR_TEMPLATE_INCOMPLETE)?;
        let kt = template
            .get_ulong(CKA_KEY_TYPE)
            .ok_or(CKR_TEMPLATE_INCOMPLETE)?;
        let private = match (class, kt) {
            (CKO_SECRET_KEY, CKK_AES | CKK_GENERIC_SECRET) => false,
            (CKO_PRIVATE_KEY, CKK_RSA | CKK_EC) if !matches!(mech, WrapMechanism::Rsa(_)) => true,
            _ => return Err(CKR_TEMPLATE_INCONSISTENT),
        };
        if template.get(CKA_VALUE).is_some() {
            return Err(CKR_TEMPLATE_INCONSISTENT);
        }
        Self::check_trusted(&ctx, &template)?;
        let material = uk.key().ok_or(CKR_UNWRAPPING_KEY_TYPE_INCONSISTENT)?;
        let value = match (&mech, material) {
            (WrapMechanism::AesKeyWrap, KeyMaterial::Secret(kek)) => {
                symmetric::aes_key_unwrap(kek, wrapped)?
            }
            (WrapMechanism::AesKeyWrapPad, KeyMaterial::Secret(kek)) => {
                symmetric::aes_key_unwrap_pad(kek, wrapped)?
            }
            (WrapMechanism::Rsa(m), KeyMaterial::Rsa { .. }) => {
                let started = std::time::Instant::now();
                let v = crypto::decrypt(material, m, wrapped).map_err(|rv| match rv {
                    CKR_ENCRYPTED_DATA_LEN_RANGE => CKR_WRAPPED_KEY_LEN_RANGE,
                    CKR_ENCRYPTED_DATA_INVALID => CKR_WRAPPED_KEY_INVALID,
                    other => other,
                })?;
                self.delay(&ctx, Op::Decrypt, started.elapsed())?;
                v
            }
            _ => return Err(CKR_UNWRAPPING_KEY_TYPE_INCONSISTENT),
        };
        let obj = if private {
            unwrapped_private_key(&template, &value)
        } else {
            secret_key(kt, &template, value, true, KeyOrigin::Imported)
        }
        .map_err(|rv| {
            // A value of the wrong length for its key type is what the wrapped data held.
            if rv == CKR_ATTRIBUTE_VALUE_INVALID {
                CKR_WRAPPED_KEY_INVALID
            } else {
                rv
            }
        })?;
        self.check_policy(&ctx, &obj)?;
        Self::check_storage_rights(&ctx, obj.is_token(), obj.is_private())?;
        if obj.is_token() {
            self.write_delay(&ctx, obj.size())?;
        }
        self.store_objects(&ctx, vec![obj]).map(|v| v[0])
    }
}
