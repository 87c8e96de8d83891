//! Building objects from templates: defaults, token-set attributes, key material (secret
//! keys and unwrapped private keys included); key-pair generation (`C_GenerateKeyPair`) and
//! ECDH derivation (`C_DeriveKey`).

use std::collections::BTreeMap;
use std::time::Instant;

use cryptoki_sys::*;
use zeroize::Zeroizing;

use super::{Ctx, Engine};
use crate::rack::Rv;
use crate::rack::crypto;
use crate::rack::latency::Op;
use crate::rack::object::{KeyMaterial, Object, Template, enc_bool, enc_ulong};

type Attrs = BTreeMap<CK_ATTRIBUTE_TYPE, Vec<u8>>;

/// Attributes every storage object has, with their defaults.
fn storage_defaults(class: CK_OBJECT_CLASS, private: bool) -> Attrs {
    let mut a = Attrs::new();
    a.insert(CKA_CLASS, enc_ulong(class));
    a.insert(CKA_TOKEN, enc_bool(false));
    a.insert(CKA_PRIVATE, enc_bool(private));
    a.insert(CKA_MODIFIABLE, enc_bool(true));
    a.insert(CKA_COPYABLE, enc_bool(true));
    a.insert(CKA_DESTROYABLE, enc_bool(true));
    a.insert(CKA_LABEL, Vec::new());
    a
}

fn key_defaults(class: CK_OBJECT_CLASS, key_type: CK_KEY_TYPE, private: bool) -> Attrs {
    let mut a = storage_defaults(class, private);
    a.insert(CKA_KEY_TYPE, enc_ulong(key_type));
    a.insert(CKA_ID, Vec::new());
    a.insert(CKA_START_DATE, Vec::new());
    a.insert(CKA_END_DATE, Vec::new());
    a.insert(CKA_DERIVE, enc_bool(false));
    a.insert(CKA_LOCAL, enc_bool(false));
    a.insert(CKA_KEY_GEN_MECHANISM, enc_ulong(CK_UNAVAILABLE_INFORMATION));
    a
}

fn public_defaults(key_type: CK_KEY_TYPE) -> Attrs {
    let mut a = key_defaults(CKO_PUBLIC_KEY, key_type, false);
    a.insert(CKA_SUBJECT, Vec::new());
    a.insert(CKA_ENCRYPT, enc_bool(key_type == CKK_RSA));
    a.insert(CKA_VERIFY, enc_bool(true));
    a.insert(CKA_VERIFY_RECOVER, enc_bool(false));
    a.insert(CKA_WRAP, enc_bool(false));
    a.insert(CKA_TRUSTED, enc_bool(false));
    a
}

fn private_defaults(key_type: CK_KEY_TYPE) -> Attrs {
    let mut a = key_defaults(CKO_PRIVATE_KEY, key_type, true);
    a.insert(CKA_SUBJECT, Vec::new());
    // Safer than SoftHSM2's default (sensitive false): a Ukey never reveals its keys unless
    // asked not to.
    a.insert(CKA_SENSITIVE, enc_bool(true));
    a.insert(CKA_DECRYPT, enc_bool(key_type == CKK_RSA));
    a.insert(CKA_SIGN, enc_bool(true));
    a.insert(CKA_SIGN_RECOVER, enc_bool(false));
    a.insert(CKA_UNWRAP, enc_bool(false));
    a.insert(CKA_EXTRACTABLE, enc_bool(false));
    a.insert(CKA_WRAP_WITH_TRUSTED, enc_bool(false));
    a.insert(CKA_ALWAYS_AUTHENTICATE, enc_bool(false));
    a
}

fn secret_defaults() -> Attrs {
    secret_defaults_of(CKK_GENERIC_SECRET, false)
}

/// Defaults of a secret key of `key_type`. Keys the token makes itself (`C_GenerateKey`,
/// `C_UnwrapKey`) are `sensitive` by default: their value leaves the token only wrapped.
fn secret_defaults_of(key_type: CK_KEY_TYPE, sensitive: bool) -> Attrs {
    let mut a = key_defaults(CKO_SECRET_KEY, key_type, true);
    a.insert(CKA_SENSITIVE, enc_bool(sensitive));
    a.insert(CKA_EXTRACTABLE, enc_bool(true));
    for t in [
        CKA_ENCRYPT,
        CKA_DECRYPT,
        CKA_SIGN,
        CKA_VERIFY,
        CKA_WRAP,
        CKA_UNWRAP,
        CKA_TRUSTED,
        CKA_WRAP_WITH_TRUSTED,
    ] {
        a.insert(t, enc_bool(false));
    }
    a
}

/// Applies the caller's template over defaults, leaving out `skip` (material kept apart).
fn apply(mut a: Attrs, template: &Template, skip: &[CK_ATTRIBUTE_TYPE]) -> Attrs {
    for (t, v) in template.entries() {
        if !skip.contains(t) {
            a.insert(*t, v.clone());
        }
    }
    a
}

/// Sets what only the token decides about a private or secret key, truthfully.
fn seal_key_flags(a: &mut Attrs, local: bool, always_sensitive: bool, never_extractable: bool) {
    let o = Object::new(a.clone(), None);
    let sensitive = o.bool(CKA_SENSITIVE, true);
    let extractable = o.bool(CKA_EXTRACTABLE, false);
    a.insert(CKA_LOCAL, enc_bool(local));
    a.insert(
        CKA_ALWAYS_SENSITIVE,
        enc_bool(always_sensitive && sensitive),
    );
    a.insert(
        CKA_NEVER_EXTRACTABLE,
        enc_bool(never_extractable && !extractable),
    );
}

fn required(t: &Template, ty: CK_ATTRIBUTE_TYPE) -> Result<&[u8], Rv> {
    t.get(ty).ok_or(CKR_TEMPLATE_INCOMPLETE)
}

/// Builds the object `C_CreateObject` makes from a template.
pub(super) fn object_from_template(t: &Template) -> Result<Object, Rv> {
    t.reject_token_set()?;
    let class = t.get_ulong(CKA_CLASS).ok_or(CKR_TEMPLATE_INCOMPLETE)?;
    match class {
        CKO_DATA => {
            let mut a = storage_defaults(CKO_DATA, false);
            a.insert(CKA_APPLICATION, Vec::new());
            a.insert(CKA_OBJECT_ID, Vec::new());
            a.insert(CKA_VALUE, Vec::new());
            Ok(Object::new(apply(a, t, &[]), None))
        }
        CKO_CERTIFICATE => {
            let ctype = t
                .get_ulong(CKA_CERTIFICATE_TYPE)
                .ok_or(CKR_TEMPLATE_INCOMPLETE)?;
            if ctype != CKC_X_509 {
                return Err(CKR_ATTRIBUTE_VALUE_INVALID);
            }
            required(t, CKA_VALUE)?;
            required(t, CKA_SUBJECT)?;
            let mut a = storage_defaults(CKO_CERTIFICATE, false);
            for (ty, v) in [
                (CKA_TRUSTED, enc_bool(false)),
                (CKA_CERTIFICATE_CATEGORY, enc_ulong(0)),
                (CKA_START_DATE, Vec::new()),
                (CKA_END_DATE, Vec::new()),
                (CKA_ID, Vec::new()),
                (CKA_ISSUER, Vec::new()),
                (CKA_SERIAL_NUMBER, Vec::new()),
                (CKA_URL, Vec::new()),
                (CKA_HASH_OF_SUBJECT_PUBLIC_KEY, Vec::new()),
                (CKA_HASH_OF_ISSUER_PUBLIC_KEY, Vec::new()),
                (CKA_JAVA_MIDP_SECURITY_DOMAIN, enc_ulong(0)),
            ] {
                a.insert(ty, v);
            }
            Ok(Object::new(apply(a, t, &[]), None))
        }
        CKO_PUBLIC_KEY => {
            let kt = t.get_ulong(CKA_KEY_TYPE).ok_or(CKR_TEMPLATE_INCOMPLETE)?;
            match kt {
                CKK_EC => {
                    if required(t, CKA_EC_PARAMS)? != crypto::P256_PARAMS {
                        return Err(CKR_CURVE_NOT_SUPPORTED);
                    }
                    let point = crypto::unwrap_ec_point(required(t, CKA_EC_POINT)?);
                    p256::PublicKey::from_sec1_bytes(point)
                        .map_err(|_| CKR_ATTRIBUTE_VALUE_INVALID)?;
                    let mut a = apply(public_defaults(CKK_EC), t, &[]);
                    a.insert(CKA_EC_POINT, crypto::ec_point_der(point));
                    Ok(Object::new(a, None))
                }
                CKK_RSA => {
                    let n = required(t, CKA_MODULUS)?;
                    required(t, CKA_PUBLIC_EXPONENT)?;
                    let bits = n.iter().skip_while(|b| **b == 0).count() * 8;
                    let mut a = apply(public_defaults(CKK_RSA), t, &[]);
                    a.insert(CKA_MODULUS_BITS, enc_ulong(bits as CK_ULONG));
                    Ok(Object::new(a, None))
                }
                _ => Err(CKR_ATTRIBUTE_VALUE_INVALID),
            }
        }
        CKO_PRIVATE_KEY => {
            let kt = t.get_ulong(CKA_KEY_TYPE).ok_or(CKR_TEMPLATE_INCOMPLETE)?;
            let (material, extra): (KeyMaterial, Vec<(CK_ATTRIBUTE_TYPE, Vec<u8>)>) = match kt {
                CKK_EC => {
                    if required(t, CKA_EC_PARAMS)? != crypto::P256_PARAMS {
                        return Err(CKR_CURVE_NOT_SUPPORTED);
                    }
                    let (m, _) = crypto::import_p256(required(t, CKA_VALUE)?)?;
                    (m, vec![])
                }
                CKK_RSA => {
                    let (m, n) = crypto::import_rsa(
                        required(t, CKA_PRIME_1)?,
                        required(t, CKA_PRIME_2)?,
                        required(t, CKA_PUBLIC_EXPONENT)?,
                    )?;
                    let given = required(t, CKA_MODULUS)?;
                    let trimmed: Vec<u8> = given.iter().copied().skip_while(|b| *b == 0).collect();
                    if trimmed != n {
                        return Err(CKR_TEMPLATE_INCONSISTENT);
                    }
                    (m, vec![(CKA_MODULUS, n)])
                }
                _ => return Err(CKR_ATTRIBUTE_VALUE_INVALID),
            };
            let mut a = apply(
                private_defaults(kt),
                t,
                crate::rack::object::SENSITIVE_ATTRIBUTES,
            );
            a.extend(extra);
            seal_key_flags(&mut a, false, false, false);
            Ok(Object::new(a, Some(material)))
        }
        CKO_SECRET_KEY => {
            let kt = t.get_ulong(CKA_KEY_TYPE).ok_or(CKR_TEMPLATE_INCOMPLETE)?;
            let value = Zeroizing::new(required(t, CKA_VALUE)?.to_vec());
            secret_key(kt, t, value, false, KeyOrigin::Imported)
        }
        _ => Err(CKR_ATTRIBUTE_VALUE_INVALID),
    }
}

/// Where a secret key came from: what its `CKA_LOCAL`, `CKA_ALWAYS_SENSITIVE`,
/// `CKA_NEVER_EXTRACTABLE` and `CKA_KEY_GEN_MECHANISM` say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum KeyOrigin {
    /// Generated on the token by this mechanism.
    Generated(CK_MECHANISM_TYPE),
    /// Brought in (`C_CreateObject`, `C_UnwrapKey`).
    Imported,
}

/// A secret key object of `key_type` holding `value`, the template applied over the
/// defaults. AES keys are 16, 24 or 32 bytes, generic secrets 1 to 512
/// (`CKR_ATTRIBUTE_VALUE_INVALID` otherwise); a `CKA_VALUE_LEN` in the template must match.
pub(super) fn secret_key(
    key_type: CK_KEY_TYPE,
    t: &Template,
    value: Zeroizing<Vec<u8>>,
    sensitive_default: bool,
    origin: KeyOrigin,
) -> Result<Object, Rv> {
    t.require_ulong_if_present(CKA_CLASS, CKO_SECRET_KEY)?;
    let ok = match key_type {
        CKK_AES => crate::rack::symmetric::aes_key_len_ok(value.len()),
        CKK_GENERIC_SECRET => (1..=512).contains(&value.len()),
        _ => return Err(CKR_ATTRIBUTE_VALUE_INVALID),
    };
    if !ok {
        return Err(CKR_ATTRIBUTE_VALUE_INVALID);
    }
    t.require_ulong_if_present(CKA_VALUE_LEN, value.len() as CK_ULONG)?;
    let mut a = apply(
        secret_defaults_of(key_type, sensitive_default),
        t,
        &[CKA_VALUE],
    );
    a.insert(CKA_VALUE_LEN, enc_ulong(value.len() as CK_ULONG));
    match origin {
        KeyOrigin::Generated(m) => {
            a.insert(CKA_LOCAL, enc_bool(true));
            a.insert(CKA_KEY_GEN_MECHANISM, enc_ulong(m));
            seal_key_flags(&mut a, true, true, true);
        }
        KeyOrigin::Imported => seal_key_flags(&mut a, false, false, false),
    }
    Ok(Object::new(a, Some(KeyMaterial::Secret(value))))
}

/// A private key object from an unwrapped PKCS#8 key, the template applied over the
/// defaults (sensitive, not extractable); its `CKA_KEY_TYPE` must match the key
/// (`CKR_TEMPLATE_INCONSISTENT`).
pub(super) fn unwrapped_private_key(t: &Template, der: &[u8]) -> Result<Object, Rv> {
    let (kt, material, public) = crypto::private_key_from_pkcs8(der)?;
    t.require_ulong_if_present(CKA_KEY_TYPE, kt)?;
    let mut a = apply(
        private_defaults(kt),
        t,
        crate::rack::object::SENSITIVE_ATTRIBUTES,
    );
    for (ty, v) in public {
        if t.get(ty).is_some_and(|given| given != v.as_slice()) {
            return Err(CKR_TEMPLATE_INCONSISTENT);
        }
        a.insert(ty, v);
    }
    seal_key_flags(&mut a, false, false, false);
    Ok(Object::new(a, Some(material)))
}

/// A key-pair generation mechanism.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyGen {
    /// `CKM_EC_KEY_PAIR_GEN`.
    Ec,
    /// `CKM_RSA_PKCS_KEY_PAIR_GEN`.
    Rsa,
}

/// `CKM_ECDH1_DERIVE` parameters.
#[derive(Debug, Clone)]
pub struct EcdhParams {
    /// `CKD_…` key derivation function (only `CKD_NULL`).
    pub kdf: CK_EC_KDF_TYPE,
    /// Shared data (must be empty with `CKD_NULL`).
    pub shared_data: Vec<u8>,
    /// The other party's public point.
    pub public_data: Vec<u8>,
}

fn reject_computed(t: &Template, computed: &[CK_ATTRIBUTE_TYPE]) -> Result<(), Rv> {
    if computed.iter().any(|c| t.get(*c).is_some()) {
        return Err(CKR_TEMPLATE_INCONSISTENT);
    }
    Ok(())
}

impl Engine {
    /// `CKA_TRUSTED` may be set to true by the SO only (PKCS#11 v2.40, 4.8):
    /// `CKR_ATTRIBUTE_READ_ONLY` for anyone else.
    pub(super) fn check_trusted(ctx: &Ctx, t: &Template) -> Result<(), Rv> {
        if t.get_bool(CKA_TRUSTED) == Some(true) && ctx.who != Some(crate::rack::token::Who::So) {
            return Err(CKR_ATTRIBUTE_READ_ONLY);
        }
        Ok(())
    }

    /// The token's key policy applied to a new or changed key.
    pub(super) fn check_policy(&self, ctx: &Ctx, obj: &Object) -> Result<(), Rv> {
        self.token(&ctx.serial)?.policy().check(obj)
    }

    pub(super) fn check_storage_rights(ctx: &Ctx, token: bool, private: bool) -> Result<(), Rv> {
        if token && !ctx.rw {
            return Err(CKR_SESSION_READ_ONLY);
        }
        if private && !ctx.user() {
            return Err(CKR_USER_NOT_LOGGED_IN);
        }
        Ok(())
    }

    /// `C_GenerateKeyPair`: returns (public key, private key) handles.
    pub fn generate_key_pair(
        &self,
        h: CK_SESSION_HANDLE,
        mech: KeyGen,
        public: Template,
        private: Template,
    ) -> Result<(CK_OBJECT_HANDLE, CK_OBJECT_HANDLE), Rv> {
        let ctx = self.enter(h, "C_GenerateKeyPair")?;
        public.reject_token_set()?;
        private.reject_token_set()?;
        public.require_ulong_if_present(CKA_CLASS, CKO_PUBLIC_KEY)?;
        private.require_ulong_if_present(CKA_CLASS, CKO_PRIVATE_KEY)?;
        let (kt, mech_type) = match mech {
            KeyGen::Ec => (CKK_EC, CKM_EC_KEY_PAIR_GEN),
            KeyGen::Rsa => (CKK_RSA, CKM_RSA_PKCS_KEY_PAIR_GEN),
        };
        public.require_ulong_if_present(CKA_KEY_TYPE, kt)?;
        private.require_ulong_if_present(CKA_KEY_TYPE, kt)?;
        reject_computed(
            &public,
            &[CKA_EC_POINT, CKA_MODULUS, CKA_VALUE, CKA_PRIVATE_EXPONENT],
        )?;
        reject_computed(
            &private,
            &[
                CKA_EC_POINT,
                CKA_MODULUS,
                CKA_VALUE,
                CKA_PRIVATE_EXPONENT,
                CKA_PRIME_1,
                CKA_PRIME_2,
                CKA_EXPONENT_1,
                CKA_EXPONENT_2,
                CKA_COEFFICIENT,
            ],
        )?;
        let pub_token = public.get_bool(CKA_TOKEN).unwrap_or(false);
        let priv_token = private.get_bool(CKA_TOKEN).unwrap_or(false);
        Self::check_storage_rights(
            &ctx,
            pub_token,
            public.get_bool(CKA_PRIVATE).unwrap_or(false),
        )?;
        Self::check_storage_rights(
            &ctx,
            priv_token,
            private.get_bool(CKA_PRIVATE).unwrap_or(true),
        )?;

        let started = Instant::now();
        let (material, mut pub_attrs, mut priv_attrs, op) = match mech {
            KeyGen::Ec => {
                let params = public
                    .get(CKA_EC_PARAMS)
                    .or_else(|| private.get(CKA_EC_PARAMS))
                    .ok_or(CKR_TEMPLATE_INCOMPLETE)?;
                if params != crypto::P256_PARAMS {
                    return Err(CKR_CURVE_NOT_SUPPORTED);
                }
                let (m, point) = crypto::generate_p256();
                let mut pa = apply(public_defaults(CKK_EC), &public, &[]);
                pa.insert(CKA_EC_PARAMS, crypto::P256_PARAMS.to_vec());
                pa.insert(CKA_EC_POINT, crypto::ec_point_der(&point));
                let mut sa = apply(private_defaults(CKK_EC), &private, &[]);
                sa.insert(CKA_EC_PARAMS, crypto::P256_PARAMS.to_vec());
                (m, pa, sa, Op::KeygenP256)
            }
            KeyGen::Rsa => {
                let bits = public
                    .get_ulong(CKA_MODULUS_BITS)
                    .ok_or(CKR_TEMPLATE_INCOMPLETE)?;
                if !matches!(bits, 1024 | 2048 | 3072 | 4096) {
                    return Err(CKR_KEY_SIZE_RANGE);
                }
                if let Some(e) = public.get(CKA_PUBLIC_EXPONENT) {
                    let trimmed: Vec<u8> = e.iter().copied().skip_while(|b| *b == 0).collect();
                    if trimmed != [1, 0, 1] {
                        return Err(CKR_TEMPLATE_INCONSISTENT);
                    }
                }
                let (m, n, e) = crypto::generate_rsa(bits as usize)?;
                let mut pa = apply(public_defaults(CKK_RSA), &public, &[]);
                pa.insert(CKA_MODULUS, n.clone());
                pa.insert(CKA_PUBLIC_EXPONENT, e.clone());
                pa.insert(CKA_MODULUS_BITS, enc_ulong(bits));
                let mut sa = apply(private_defaults(CKK_RSA), &private, &[]);
                sa.insert(CKA_MODULUS, n);
                sa.insert(CKA_PUBLIC_EXPONENT, e);
                let op = match bits {
                    2048 => Op::KeygenRsa2048,
                    3072 => Op::KeygenRsa3072,
                    _ => Op::KeygenRsaOther,
                };
                (m, pa, sa, op)
            }
        };
        for a in [&mut pub_attrs, &mut priv_attrs] {
            a.insert(CKA_LOCAL, enc_bool(true));
            a.insert(CKA_KEY_GEN_MECHANISM, enc_ulong(mech_type));
        }
        seal_key_flags(&mut priv_attrs, true, true, true);
        let pub_obj = Object::new(pub_attrs, None);
        let priv_obj = Object::new(priv_attrs, Some(material));
        // A real token takes its time; the token may be pulled meanwhile.
        self.delay(&ctx, op, started.elapsed())?;
        let token_bytes = [(&pub_obj, pub_token), (&priv_obj, priv_token)]
            .iter()
            .filter(|(_, t)| *t)
            .map(|(o, _)| o.size())
            .sum();
        self.write_delay(&ctx, token_bytes)?;
        self.store_objects(&ctx, vec![pub_obj, priv_obj])
            .map(|v| (v[0], v[1]))
    }

    /// Stores new objects (token ones in one commit, all or none), returning their handles.
    pub(super) fn store_objects(
        &self,
        ctx: &Ctx,
        objects: Vec<Object>,
    ) -> Result<Vec<CK_OBJECT_HANDLE>, Rv> {
        let token_objs: Vec<&Object> = objects.iter().filter(|o| o.is_token()).collect();
        let token_handles = if token_objs.is_empty() {
            if !self.is_current(ctx.slot, ctx.insertion)? {
                return Err(self.on_removed(ctx, CKR_DEVICE_REMOVED));
            }
            Vec::new()
        } else {
            self.commit(ctx, |t| {
                t.check_room(&token_objs, 0)?;
                token_objs
                    .iter()
                    .map(|o| t.add_object((*o).clone()))
                    .collect::<Result<Vec<_>, Rv>>()
            })?
        };
        let mut st = self.lock()?;
        let mut token_iter = token_handles.into_iter();
        let mut out = Vec::new();
        for o in objects {
            if o.is_token() {
                out.push(token_iter.next().ok_or(CKR_GENERAL_ERROR)?);
            } else {
                let h = st.next_object;
                st.next_object += 1;
                st.objects.insert(
                    h,
                    super::SessionObject {
                        slot: ctx.slot,
                        insertion: ctx.insertion,
                        session: ctx.handle,
                        object: o,
                    },
                );
                out.push(h);
            }
        }
        Ok(out)
    }

    /// `C_DeriveKey` with `CKM_ECDH1_DERIVE`: a `CKK_GENERIC_SECRET` holding the shared x
    /// coordinate (cut to `CKA_VALUE_LEN` if given).
    pub fn derive_ecdh(
        &self,
        h: CK_SESSION_HANDLE,
        params: EcdhParams,
        base: CK_OBJECT_HANDLE,
        template: Template,
    ) -> Result<CK_OBJECT_HANDLE, Rv> {
        let ctx = self.enter(h, "C_DeriveKey")?;
        if params.kdf != CKD_NULL || !params.shared_data.is_empty() {
            return Err(CKR_MECHANISM_PARAM_INVALID);
        }
        template.reject_token_set()?;
        template.require_ulong_if_present(CKA_CLASS, CKO_SECRET_KEY)?;
        template.require_ulong_if_present(CKA_KEY_TYPE, CKK_GENERIC_SECRET)?;
        reject_computed(&template, &[CKA_VALUE])?;
        let key = self.key_object(&ctx, base)?;
        if key.class() != CKO_PRIVATE_KEY || key.ulong(CKA_KEY_TYPE) != Some(CKK_EC) {
            return Err(CKR_KEY_TYPE_INCONSISTENT);
        }
        if !key.bool(CKA_DERIVE, false) {
            return Err(CKR_KEY_FUNCTION_NOT_PERMITTED);
        }
        let material = key.key().ok_or(CKR_KEY_HANDLE_INVALID)?;
        let started = Instant::now();
        let mut value = crypto::ecdh(material, &params.public_data)?;
        if let Some(len) = template.get_ulong(CKA_VALUE_LEN) {
            let len = len as usize;
            if len == 0 || len > value.len() {
                return Err(CKR_TEMPLATE_INCONSISTENT);
            }
            value.truncate(len);
        }
        let token = template.get_bool(CKA_TOKEN).unwrap_or(false);
        Self::check_storage_rights(&ctx, token, template.get_bool(CKA_PRIVATE).unwrap_or(true))?;
        let mut a = apply(secret_defaults(), &template, &[CKA_VALUE]);
        a.insert(CKA_VALUE_LEN, enc_ulong(value.len() as CK_ULONG));
        a.insert(CKA_KEY_GEN_MECHANISM, enc_ulong(CK_UNAVAILABLE_INFORMATION));
        seal_key_flags(
            &mut a,
            false,
            key.bool(CKA_ALWAYS_SENSITIVE, false),
            key.bool(CKA_NEVER_EXTRACTABLE, false),
        );
        let obj = Object::new(a, Some(KeyMaterial::Secret(value)));
        self.delay(&ctx, Op::Derive, started.elapsed())?;
        if token {
            self.write_delay(&ctx, obj.size())?;
        }
        self.store_objects(&ctx, vec![obj]).map(|v| v[0])
    }
}
