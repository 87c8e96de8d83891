//! Objects on a simulated token: attributes as PKCS#11 encodes them, plus hidden key material.
//!
//! Attribute values are kept byte for byte as an application passes them (`CK_BBOOL` is one
//! byte, `CK_ULONG` is the platform's native `unsigned long`). The private part of a key never
//! sits among the attributes: it is [`KeyMaterial`], and a sensitive attribute (`CKA_VALUE`,
//! `CKA_PRIVATE_EXPONENT`, …) is computed from it only when the key may reveal it.
//! This module does no IO and knows nothing of sessions.

use std::collections::BTreeMap;

use cryptoki_sys::*;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::Rv;

/// How an attribute's value is encoded, for validation and display.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttrKind {
    /// `CK_BBOOL`: one byte, 0 or 1.
    Bool,
    /// `CK_ULONG`: a native unsigned long.
    Ulong,
    /// Text (labels, URLs): shown as text.
    Text,
    /// A `CK_DATE` (8 digits) or empty.
    Date,
    /// Anything else: bytes.
    Bytes,
    /// An array of `CK_MECHANISM_TYPE`.
    Mechanisms,
}

/// The attributes this token understands: name, type, encoding.
pub const ATTRIBUTES: &[(&str, CK_ATTRIBUTE_TYPE, AttrKind)] = &[
    ("CKA_CLASS", CKA_CLASS, AttrKind::Ulong),
    ("CKA_TOKEN", CKA_TOKEN, AttrKind::Bool),
    ("CKA_PRIVATE", CKA_PRIVATE, AttrKind::Bool),
    ("CKA_LABEL", CKA_LABEL, AttrKind::Text),
    ("CKA_APPLICATION", CKA_APPLICATION, AttrKind::Text),
    ("CKA_VALUE", CKA_VALUE, AttrKind::Bytes),
    ("CKA_OBJECT_ID", CKA_OBJECT_ID, AttrKind::Bytes),
    (
        "CKA_CERTIFICATE_TYPE",
        CKA_CERTIFICATE_TYPE,
        AttrKind::Ulong,
    ),
    ("CKA_ISSUER", CKA_ISSUER, AttrKind::Bytes),
    ("CKA_SERIAL_NUMBER", CKA_SERIAL_NUMBER, AttrKind::Bytes),
    ("CKA_TRUSTED", CKA_TRUSTED, AttrKind::Bool),
    (
        "CKA_CERTIFICATE_CATEGORY",
        CKA_CERTIFICATE_CATEGORY,
        AttrKind::Ulong,
    ),
    (
        "CKA_JAVA_MIDP_SECURITY_DOMAIN",
        CKA_JAVA_MIDP_SECURITY_DOMAIN,
        AttrKind::Ulong,
    ),
    ("CKA_URL", CKA_URL, AttrKind::Text),
    (
        "CKA_HASH_OF_SUBJECT_PUBLIC_KEY",
        CKA_HASH_OF_SUBJECT_PUBLIC_KEY,
        AttrKind::Bytes,
    ),
    (
        "CKA_HASH_OF_ISSUER_PUBLIC_KEY",
        CKA_HASH_OF_ISSUER_PUBLIC_KEY,
        AttrKind::Bytes,
    ),
    (
        "CKA_NAME_HASH_ALGORITHM",
        CKA_NAME_HASH_ALGORITHM,
        AttrKind::Ulong,
    ),
    ("CKA_CHECK_VALUE", CKA_CHECK_VALUE, AttrKind::Bytes),
    ("CKA_KEY_TYPE", CKA_KEY_TYPE, AttrKind::Ulong),
    ("CKA_SUBJECT", CKA_SUBJECT, AttrKind::Bytes),
    ("CKA_ID", CKA_ID, AttrKind::Bytes),
    ("CKA_SENSITIVE", CKA_SENSITIVE, AttrKind::Bool),
    ("CKA_ENCRYPT", CKA_ENCRYPT, AttrKind::Bool),
    ("CKA_DECRYPT", CKA_DECRYPT, AttrKind::Bool),
    ("CKA_WRAP", CKA_WRAP, AttrKind::Bool),
    ("CKA_UNWRAP", CKA_UNWRAP, AttrKind::Bool),
    ("CKA_SIGN", CKA_SIGN, AttrKind::Bool),
    ("CKA_SIGN_RECOVER", CKA_SIGN_RECOVER, AttrKind::Bool),
    ("CKA_VERIFY", CKA_VERIFY, AttrKind::Bool),
    ("CKA_VERIFY_RECOVER", CKA_VERIFY_RECOVER, AttrKind::Bool),
    ("CKA_DERIVE", CKA_DERIVE, AttrKind::Bool),
    ("CKA_START_DATE", CKA_START_DATE, AttrKind::Date),
    ("CKA_END_DATE", CKA_END_DATE, AttrKind::Date),
    ("CKA_MODULUS", CKA_MODULUS, AttrKind::Bytes),
    ("CKA_MODULUS_BITS", CKA_MODULUS_BITS, AttrKind::Ulong),
    ("CKA_PUBLIC_EXPONENT", CKA_PUBLIC_EXPONENT, AttrKind::Bytes),
    (
        "CKA_PRIVATE_EXPONENT",
        CKA_PRIVATE_EXPONENT,
        AttrKind::Bytes,
    ),
    ("CKA_PRIME_1", CKA_PRIME_1, AttrKind::Bytes),
    ("CKA_PRIME_2", CKA_PRIME_2, AttrKind::Bytes),
    ("CKA_EXPONENT_1", CKA_EXPONENT_1, AttrKind::Bytes),
    ("CKA_EXPONENT_2", CKA_EXPONENT_2, AttrKind::Bytes),
    ("CKA_COEFFICIENT", CKA_COEFFICIENT, AttrKind::Bytes),
    ("CKA_PUBLIC_KEY_INFO", CKA_PUBLIC_KEY_INFO, AttrKind::Bytes),
    ("CKA_VALUE_LEN", CKA_VALUE_LEN, AttrKind::Ulong),
    ("CKA_EXTRACTABLE", CKA_EXTRACTABLE, AttrKind::Bool),
    ("CKA_LOCAL", CKA_LOCAL, AttrKind::Bool),
    (
        "CKA_NEVER_EXTRACTABLE",
        CKA_NEVER_EXTRACTABLE,
        AttrKind::Bool,
    ),
    ("CKA_ALWAYS_SENSITIVE", CKA_ALWAYS_SENSITIVE, AttrKind::Bool),
    (
        "CKA_KEY_GEN_MECHANISM",
        CKA_KEY_GEN_MECHANISM,
        AttrKind::Ulong,
    ),
    ("CKA_MODIFIABLE", CKA_MODIFIABLE, AttrKind::Bool),
    ("CKA_COPYABLE", CKA_COPYABLE, AttrKind::Bool),
    ("CKA_DESTROYABLE", CKA_DESTROYABLE, AttrKind::Bool),
    ("CKA_EC_PARAMS", CKA_EC_PARAMS, AttrKind::Bytes),
    ("CKA_EC_POINT", CKA_EC_POINT, AttrKind::Bytes),
    (
        "CKA_ALWAYS_AUTHENTICATE",
        CKA_ALWAYS_AUTHENTICATE,
        AttrKind::Bool,
    ),
    (
        "CKA_WRAP_WITH_TRUSTED",
        CKA_WRAP_WITH_TRUSTED,
        AttrKind::Bool,
    ),
    (
        "CKA_ALLOWED_MECHANISMS",
        CKA_ALLOWED_MECHANISMS,
        AttrKind::Mechanisms,
    ),
];

/// Attributes that hold secret key material: never readable from a sensitive or
/// non-extractable key.
pub const SENSITIVE_ATTRIBUTES: &[CK_ATTRIBUTE_TYPE] = &[
    CKA_VALUE,
    CKA_PRIVATE_EXPONENT,
    CKA_PRIME_1,
    CKA_PRIME_2,
    CKA_EXPONENT_1,
    CKA_EXPONENT_2,
    CKA_COEFFICIENT,
];

/// Attributes an application may never set, only read (the token sets them truthfully).
pub const TOKEN_SET_ATTRIBUTES: &[CK_ATTRIBUTE_TYPE] = &[
    CKA_LOCAL,
    CKA_ALWAYS_SENSITIVE,
    CKA_NEVER_EXTRACTABLE,
    CKA_KEY_GEN_MECHANISM,
];

/// Attributes a `C_SetAttributeValue` may change on a modifiable object.
pub const MODIFIABLE_ATTRIBUTES: &[CK_ATTRIBUTE_TYPE] = &[
    CKA_LABEL,
    CKA_ID,
    CKA_SUBJECT,
    CKA_START_DATE,
    CKA_END_DATE,
    CKA_ENCRYPT,
    CKA_DECRYPT,
    CKA_WRAP,
    CKA_UNWRAP,
    CKA_SIGN,
    CKA_SIGN_RECOVER,
    CKA_VERIFY,
    CKA_VERIFY_RECOVER,
    CKA_DERIVE,
    CKA_SENSITIVE,
    CKA_EXTRACTABLE,
    CKA_APPLICATION,
    CKA_OBJECT_ID,
    CKA_URL,
    CKA_TRUSTED,
    CKA_WRAP_WITH_TRUSTED,
    CKA_ALLOWED_MECHANISMS,
];

/// Name and encoding of an attribute type, if this token knows it.
pub fn attr_info(t: CK_ATTRIBUTE_TYPE) -> Option<(&'static str, AttrKind)> {
    ATTRIBUTES
        .iter()
        .find(|(_, ty, _)| *ty == t)
        .map(|(n, _, k)| (*n, *k))
}

/// An attribute's name for display (`CKA_LABEL`, or hex for unknown/vendor types).
pub fn attr_name(t: CK_ATTRIBUTE_TYPE) -> String {
    attr_info(t)
        .map(|(n, _)| n.to_string())
        .unwrap_or_else(|| format!("0x{t:08X}"))
}

fn attr_type_by_name(name: &str) -> Option<CK_ATTRIBUTE_TYPE> {
    if let Some((_, t, _)) = ATTRIBUTES.iter().find(|(n, _, _)| *n == name) {
        return Some(*t);
    }
    name.strip_prefix("0x")
        .and_then(|h| CK_ATTRIBUTE_TYPE::from_str_radix(h, 16).ok())
}

/// Encodes a `CK_BBOOL`.
pub fn enc_bool(v: bool) -> Vec<u8> {
    vec![u8::from(v)]
}

/// Encodes a `CK_ULONG` natively.
pub fn enc_ulong(v: CK_ULONG) -> Vec<u8> {
    v.to_ne_bytes().to_vec()
}

/// Decodes a `CK_ULONG` (native byte order); `None` when the length is wrong.
pub fn dec_ulong(b: &[u8]) -> Option<CK_ULONG> {
    let arr: [u8; std::mem::size_of::<CK_ULONG>()] = b.try_into().ok()?;
    Some(CK_ULONG::from_ne_bytes(arr))
}

/// Decodes a `CK_BBOOL`; `None` when the length is wrong.
pub fn dec_bool(b: &[u8]) -> Option<bool> {
    match b {
        [v] => Some(*v != 0),
        _ => None,
    }
}

/// A template as an application passed it: attribute types with their values.
#[derive(Debug, Clone, Default)]
pub struct Template {
    entries: Vec<(CK_ATTRIBUTE_TYPE, Vec<u8>)>,
}

impl Template {
    /// Builds a template, checking every type is known and every value well formed
    /// (`CKR_ATTRIBUTE_TYPE_INVALID`, `CKR_ATTRIBUTE_VALUE_INVALID`) and that no type appears
    /// twice with different values (`CKR_TEMPLATE_INCONSISTENT`).
    pub fn new(entries: Vec<(CK_ATTRIBUTE_TYPE, Vec<u8>)>) -> Result<Template, Rv> {
        for (i, (t, v)) in entries.iter().enumerate() {
            let kind = match attr_info(*t) {
                Some((_, k)) => k,
                None if *t >= CKA_VENDOR_DEFINED => AttrKind::Bytes,
                None => return Err(CKR_ATTRIBUTE_TYPE_INVALID),
            };
            let ok = match kind {
                AttrKind::Bool => dec_bool(v).is_some(),
                AttrKind::Ulong => dec_ulong(v).is_some(),
                AttrKind::Date => v.is_empty() || v.len() == 8,
                AttrKind::Mechanisms => v.len() % std::mem::size_of::<CK_ULONG>() == 0,
                AttrKind::Text | AttrKind::Bytes => true,
            };
            if !ok {
                return Err(CKR_ATTRIBUTE_VALUE_INVALID);
            }
            if entries[..i].iter().any(|(t2, v2)| t2 == t && v2 != v) {
                return Err(CKR_TEMPLATE_INCONSISTENT);
            }
        }
        Ok(Template { entries })
    }

    /// The value given for `t`, if any.
    pub fn get(&self, t: CK_ATTRIBUTE_TYPE) -> Option<&[u8]> {
        self.entries
            .iter()
            .find(|(ty, _)| *ty == t)
            .map(|(_, v)| v.as_slice())
    }

    /// A boolean given for `t`, if any.
    pub fn get_bool(&self, t: CK_ATTRIBUTE_TYPE) -> Option<bool> {
        self.get(t).and_then(dec_bool)
    }

    /// An unsigned long given for `t`, if any.
    pub fn get_ulong(&self, t: CK_ATTRIBUTE_TYPE) -> Option<CK_ULONG> {
        self.get(t).and_then(dec_ulong)
    }

    /// All entries.
    pub fn entries(&self) -> &[(CK_ATTRIBUTE_TYPE, Vec<u8>)] {
        &self.entries
    }

    /// `CKR_TEMPLATE_INCONSISTENT` when `t` is given with another value than `want`.
    pub fn require_ulong_if_present(&self, t: CK_ATTRIBUTE_TYPE, want: CK_ULONG) -> Result<(), Rv> {
        match self.get_ulong(t) {
            Some(v) if v != want => Err(CKR_TEMPLATE_INCONSISTENT),
            _ => Ok(()),
        }
    }

    /// `CKR_ATTRIBUTE_READ_ONLY` when the template tries to set an attribute only the token sets.
    pub fn reject_token_set(&self) -> Result<(), Rv> {
        if self
            .entries
            .iter()
            .any(|(t, _)| TOKEN_SET_ATTRIBUTES.contains(t))
        {
            return Err(CKR_ATTRIBUTE_READ_ONLY);
        }
        Ok(())
    }
}

/// The private part of a key, kept apart from the attributes.
#[derive(Clone)]
pub enum KeyMaterial {
    /// A P-256 private scalar (32 bytes, big-endian).
    EcP256(Zeroizing<Vec<u8>>),
    /// An RSA private key as its two primes and public exponent (big-endian).
    Rsa {
        /// First prime.
        p: Zeroizing<Vec<u8>>,
        /// Second prime.
        q: Zeroizing<Vec<u8>>,
        /// Public exponent.
        e: Vec<u8>,
    },
    /// A generic secret's value.
    Secret(Zeroizing<Vec<u8>>),
}

impl std::fmt::Debug for KeyMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self {
            KeyMaterial::EcP256(_) => "EcP256",
            KeyMaterial::Rsa { .. } => "Rsa",
            KeyMaterial::Secret(_) => "Secret",
        };
        write!(f, "KeyMaterial::{kind}(..)")
    }
}

impl KeyMaterial {
    fn len(&self) -> usize {
        match self {
            KeyMaterial::EcP256(s) | KeyMaterial::Secret(s) => s.len(),
            KeyMaterial::Rsa { p, q, e } => p.len() + q.len() + e.len(),
        }
    }
}

/// One object: its attributes and, for private and secret keys, its key material.
#[derive(Debug, Clone, Default)]
pub struct Object {
    attrs: BTreeMap<CK_ATTRIBUTE_TYPE, Vec<u8>>,
    key: Option<KeyMaterial>,
}

/// What reading one attribute gives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttrRead {
    /// The value.
    Value(Vec<u8>),
    /// The attribute holds secret material the object may not reveal.
    Sensitive,
    /// The object has no such attribute.
    Invalid,
}

impl Object {
    /// An object with the given attributes and key material.
    pub fn new(attrs: BTreeMap<CK_ATTRIBUTE_TYPE, Vec<u8>>, key: Option<KeyMaterial>) -> Self {
        Object { attrs, key }
    }

    /// The raw value of an attribute, if set.
    pub fn get(&self, t: CK_ATTRIBUTE_TYPE) -> Option<&[u8]> {
        self.attrs.get(&t).map(Vec::as_slice)
    }

    /// A boolean attribute (`default` when absent).
    pub fn bool(&self, t: CK_ATTRIBUTE_TYPE, default: bool) -> bool {
        self.get(t).and_then(dec_bool).unwrap_or(default)
    }

    /// An unsigned-long attribute, if set and well formed.
    pub fn ulong(&self, t: CK_ATTRIBUTE_TYPE) -> Option<CK_ULONG> {
        self.get(t).and_then(dec_ulong)
    }

    /// The object's class (`CKO_…`).
    pub fn class(&self) -> CK_OBJECT_CLASS {
        self.ulong(CKA_CLASS).unwrap_or(CK_UNAVAILABLE_INFORMATION)
    }

    /// Whether this is a token object (persists) rather than a session object.
    pub fn is_token(&self) -> bool {
        self.bool(CKA_TOKEN, false)
    }

    /// Whether only a logged-in user may see this object.
    pub fn is_private(&self) -> bool {
        self.bool(CKA_PRIVATE, false)
    }

    /// The key material, for private and secret keys.
    pub fn key(&self) -> Option<&KeyMaterial> {
        self.key.as_ref()
    }

    /// Sets an attribute.
    pub fn set(&mut self, t: CK_ATTRIBUTE_TYPE, v: Vec<u8>) {
        self.attrs.insert(t, v);
    }

    /// All attributes (for display and for matching).
    pub fn attrs(&self) -> &BTreeMap<CK_ATTRIBUTE_TYPE, Vec<u8>> {
        &self.attrs
    }

    /// Whether the object may reveal secret attributes: not sensitive and extractable.
    pub fn reveals_secrets(&self) -> bool {
        !self.bool(CKA_SENSITIVE, true) && self.bool(CKA_EXTRACTABLE, false)
    }

    /// Reads one attribute as `C_GetAttributeValue` would.
    pub fn read(&self, t: CK_ATTRIBUTE_TYPE) -> AttrRead {
        if let Some(key) = &self.key
            && SENSITIVE_ATTRIBUTES.contains(&t)
        {
            if !self.reveals_secrets() {
                return AttrRead::Sensitive;
            }
            return match super::crypto::secret_attribute(key, t) {
                Some(v) => AttrRead::Value(v),
                None => AttrRead::Invalid,
            };
        }
        match self.attrs.get(&t) {
            Some(v) => AttrRead::Value(v.clone()),
            None => AttrRead::Invalid,
        }
    }

    /// Whether every attribute of `template` is present here with the same value
    /// (`C_FindObjects` matching). Secret attributes never match.
    pub fn matches(&self, template: &Template) -> bool {
        template.entries().iter().all(|(t, v)| match self.read(*t) {
            AttrRead::Value(mine) => &mine == v,
            _ => false,
        })
    }

    /// Bytes this object takes in the token's storage.
    pub fn size(&self) -> usize {
        64 + self.attrs.values().map(|v| v.len() + 16).sum::<usize>()
            + self.key.as_ref().map(KeyMaterial::len).unwrap_or(0)
    }
}

/// An object as stored in a token file: attribute names with hex values, key material in hex.
#[derive(Serialize, Deserialize)]
pub(crate) struct StoredObject {
    attrs: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    key: Option<StoredKey>,
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
enum StoredKey {
    EcP256 { scalar: String },
    Rsa { p: String, q: String, e: String },
    Secret { value: String },
}

impl From<&Object> for StoredObject {
    fn from(o: &Object) -> Self {
        let attrs = o
            .attrs
            .iter()
            .map(|(t, v)| (attr_name(*t), hex::encode(v)))
            .collect();
        let key = o.key.as_ref().map(|k| match k {
            KeyMaterial::EcP256(s) => StoredKey::EcP256 {
                scalar: hex::encode(s.as_slice()),
            },
            KeyMaterial::Rsa { p, q, e } => StoredKey::Rsa {
                p: hex::encode(p.as_slice()),
                q: hex::encode(q.as_slice()),
                e: hex::encode(e),
            },
            KeyMaterial::Secret(v) => StoredKey::Secret {
                value: hex::encode(v.as_slice()),
            },
        });
        StoredObject { attrs, key }
    }
}

impl TryFrom<StoredObject> for Object {
    type Error = String;
    fn try_from(s: StoredObject) -> Result<Self, String> {
        let mut attrs = BTreeMap::new();
        for (name, value) in s.attrs {
            let t = attr_type_by_name(&name).ok_or_else(|| format!("unknown attribute {name}"))?;
            let v = hex::decode(&value).map_err(|e| format!("{name}: {e}"))?;
            attrs.insert(t, v);
        }
        let unhex = |h: &str| -> Result<Zeroizing<Vec<u8>>, String> {
            hex::decode(h)
                .map(Zeroizing::new)
                .map_err(|e| format!("key material: {e}"))
        };
        let key = match s.key {
            None => None,
            Some(StoredKey::EcP256 { scalar }) => Some(KeyMaterial::EcP256(unhex(&scalar)?)),
            Some(StoredKey::Rsa { p, q, e }) => Some(KeyMaterial::Rsa {
                p: unhex(&p)?,
                q: unhex(&q)?,
                e: unhex(&e)?.to_vec(),
            }),
            Some(StoredKey::Secret { value }) => Some(KeyMaterial::Secret(unhex(&value)?)),
        };
        Ok(Object { attrs, key })
    }
}

/// Formats an attribute value for people (`hsm-sim show`).
pub fn display_value(t: CK_ATTRIBUTE_TYPE, v: &[u8]) -> String {
    match attr_info(t).map(|(_, k)| k) {
        Some(AttrKind::Bool) => dec_bool(v)
            .map(|b| b.to_string())
            .unwrap_or_else(|| hex::encode(v)),
        Some(AttrKind::Ulong) => dec_ulong(v)
            .map(|u| match t {
                CKA_CLASS => class_name(u).to_string(),
                CKA_KEY_TYPE => key_type_name(u).to_string(),
                _ => u.to_string(),
            })
            .unwrap_or_else(|| hex::encode(v)),
        Some(AttrKind::Text) | Some(AttrKind::Date) => match std::str::from_utf8(v) {
            Ok(s) => format!("{s:?}"),
            Err(_) => hex::encode(v),
        },
        _ => hex::encode(v),
    }
}

/// The name of an object class.
pub fn class_name(c: CK_OBJECT_CLASS) -> &'static str {
    match c {
        CKO_DATA => "CKO_DATA",
        CKO_CERTIFICATE => "CKO_CERTIFICATE",
        CKO_PUBLIC_KEY => "CKO_PUBLIC_KEY",
        CKO_PRIVATE_KEY => "CKO_PRIVATE_KEY",
        CKO_SECRET_KEY => "CKO_SECRET_KEY",
        _ => "other",
    }
}

/// The name of a key type.
pub fn key_type_name(k: CK_KEY_TYPE) -> &'static str {
    match k {
        CKK_RSA => "CKK_RSA",
        CKK_EC => "CKK_EC",
        CKK_GENERIC_SECRET => "CKK_GENERIC_SECRET",
        CKK_AES => "CKK_AES",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn template_checks_types_values_and_conflicts() {
        assert!(Template::new(vec![(CKA_TOKEN, enc_bool(true))]).is_ok());
        assert_eq!(
            Template::new(vec![(CKA_TOKEN, vec![1, 2])]).unwrap_err(),
            CKR_ATTRIBUTE_VALUE_INVALID
        );
        assert_eq!(
            Template::new(vec![(0x7777, vec![])]).unwrap_err(),
            CKR_ATTRIBUTE_TYPE_INVALID
        );
        assert_eq!(
            Template::new(vec![
                (CKA_TOKEN, enc_bool(true)),
                (CKA_TOKEN, enc_bool(false))
            ])
            .unwrap_err(),
            CKR_TEMPLATE_INCONSISTENT
        );
    }

    #[test]
    fn sensitive_values_stay_hidden() {
        let mut attrs = BTreeMap::new();
        attrs.insert(CKA_CLASS, enc_ulong(CKO_SECRET_KEY));
        attrs.insert(CKA_SENSITIVE, enc_bool(true));
        attrs.insert(CKA_EXTRACTABLE, enc_bool(true));
        let mut o = Object::new(
            attrs,
            Some(KeyMaterial::Secret(Zeroizing::new(vec![7; 16]))),
        );
        assert_eq!(o.read(CKA_VALUE), AttrRead::Sensitive);
        o.set(CKA_SENSITIVE, enc_bool(false));
        assert_eq!(o.read(CKA_VALUE), AttrRead::Value(vec![7; 16]));
        o.set(CKA_EXTRACTABLE, enc_bool(false));
        assert_eq!(o.read(CKA_VALUE), AttrRead::Sensitive);
        assert_eq!(o.read(CKA_MODULUS), AttrRead::Invalid);
    }

    #[test]
    fn aes_keys_are_shown_by_type() {
        assert_eq!(display_value(CKA_KEY_TYPE, &enc_ulong(CKK_AES)), "CKK_AES");
    }

    #[test]
    fn objects_survive_storage_round_trip() {
        let mut attrs = BTreeMap::new();
        attrs.insert(CKA_CLASS, enc_ulong(CKO_PRIVATE_KEY));
        attrs.insert(CKA_LABEL, b"seal".to_vec());
        attrs.insert(CKA_VENDOR_DEFINED + 5, vec![1, 2]);
        let o = Object::new(
            attrs,
            Some(KeyMaterial::EcP256(Zeroizing::new(vec![9; 32]))),
        );
        let s = StoredObject::from(&o);
        let text = serde_json::to_string(&s).unwrap();
        let back: Object = serde_json::from_str::<StoredObject>(&text)
            .unwrap()
            .try_into()
            .unwrap();
        assert_eq!(back.attrs(), o.attrs());
        assert!(matches!(back.key(), Some(KeyMaterial::EcP256(s)) if s.as_slice() == [9; 32]));
    }
}
