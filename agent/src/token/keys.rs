//! Key pairs on a [`Token`]: generation with read-back checks, and public keys.
//!
//! Templates follow DESIGN.md: private keys are `CKA_TOKEN, CKA_PRIVATE, CKA_SENSITIVE,
//! !CKA_EXTRACTABLE` with `CKA_SIGN`, and for the encryption key also `CKA_DECRYPT` (RSA) or
//! `CKA_DERIVE` (EC): a PKCS#10 CSR must be signed by its own key (proof of possession), so
//! the encryption key signs too; its certificate's key usage is what limits it to encryption.
//! Seal keys never get `CKA_DECRYPT`/`CKA_DERIVE`; key and certificate share `CKA_LABEL` and
//! `CKA_ID = label.key_id()`. After generation `CKA_LOCAL, CKA_ALWAYS_SENSITIVE,
//! CKA_NEVER_EXTRACTABLE, CKA_SENSITIVE, CKA_EXTRACTABLE` are read back; a wrong or missing
//! one fails (cryptoki's `get_attributes` silently drops unreadable attributes, so results are
//! matched by type).
//!
//! Each public key is read from the token when it is used, in one `C_GetAttributeValue` round
//! that also reads the object's class, label and id, so a remembered handle that names another
//! object by now is noticed, forgotten and searched for again.

use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use der::asn1::{ObjectIdentifier, OctetString, UintRef};
use der::{Decode, Encode};
use ukey_protocol::{KeyAlgorithm, KeyLabel};
use x509_cert::spki::{EncodePublicKey, SubjectPublicKeyInfoOwned};

use super::error::{PinOwner, TokenError};
use super::handles::Remembered;
use super::objects::{ObjectKind, bool_attr, bytes_attr};
use super::session::Token;
use crate::certs::{OID_P256, key_algorithm};

/// DER of the P-256 curve OID, the value of `CKA_EC_PARAMS`.
fn p256_params() -> Vec<u8> {
    OID_P256.to_der().unwrap_or_default()
}

/// The name of a boolean attribute for messages.
fn cka_name(ty: AttributeType) -> &'static str {
    match ty {
        AttributeType::Local => "CKA_LOCAL",
        AttributeType::AlwaysSensitive => "CKA_ALWAYS_SENSITIVE",
        AttributeType::NeverExtractable => "CKA_NEVER_EXTRACTABLE",
        AttributeType::Sensitive => "CKA_SENSITIVE",
        AttributeType::Extractable => "CKA_EXTRACTABLE",
        AttributeType::Token => "CKA_TOKEN",
        AttributeType::Private => "CKA_PRIVATE",
        AttributeType::Sign => "CKA_SIGN",
        AttributeType::Decrypt => "CKA_DECRYPT",
        AttributeType::Derive => "CKA_DERIVE",
        _ => "CKA_?",
    }
}

/// The boolean attributes every Ukey private key must show after generation, with their
/// required values, plus the usage attribute of its label.
pub(crate) fn required_private_attributes(
    label: KeyLabel,
    algorithm: KeyAlgorithm,
) -> Vec<(AttributeType, bool)> {
    let mut required = vec![
        (AttributeType::Token, true),
        (AttributeType::Private, true),
        (AttributeType::Sensitive, true),
        (AttributeType::Extractable, false),
        (AttributeType::Local, true),
        (AttributeType::AlwaysSensitive, true),
        (AttributeType::NeverExtractable, true),
    ];
    // Every key signs at least its own CSR; only the encryption key decrypts or agrees.
    let (decrypts, derives) = usage_of(label, algorithm);
    required.push((AttributeType::Decrypt, decrypts));
    required.push((AttributeType::Derive, derives));
    required.push((AttributeType::Sign, true));
    required
}

/// Compares attributes read back with the required values, by type: the first wrong or
/// missing one is returned as (name, expected, found), `found` being `missing` when the module
/// did not return it.
pub(crate) fn check_attributes(
    required: &[(AttributeType, bool)],
    read: &[Attribute],
) -> Result<(), (&'static str, String, String)> {
    for (ty, want) in required {
        match bool_attr(read, *ty) {
            Some(found) if found == *want => {}
            found => {
                return Err((
                    cka_name(*ty),
                    want.to_string(),
                    found.map_or("missing".to_string(), |f| f.to_string()),
                ));
            }
        }
    }
    Ok(())
}

/// Whether `label`'s private key decrypts (RSA encryption key) and derives (EC encryption key).
fn usage_of(label: KeyLabel, algorithm: KeyAlgorithm) -> (bool, bool) {
    match (label.is_signing(), algorithm) {
        (true, _) => (false, false),
        (false, KeyAlgorithm::P256) => (false, true),
        (false, KeyAlgorithm::Rsa2048 | KeyAlgorithm::Rsa3072 | KeyAlgorithm::Sm2) => (true, false),
    }
}

/// The `CKA_KEY_TYPE` of a key algorithm.
fn key_type_of(algorithm: KeyAlgorithm) -> KeyType {
    match algorithm {
        KeyAlgorithm::P256 | KeyAlgorithm::Sm2 => KeyType::EC,
        KeyAlgorithm::Rsa2048 | KeyAlgorithm::Rsa3072 => KeyType::RSA,
    }
}

impl Token {
    /// Generates `label`'s key pair on the token (user logged in), checks the private key's
    /// attributes, and returns the public key.
    ///
    /// Refused with [`TokenError::ObjectExists`] if a key with this label is already there: a
    /// token never holds two (after a crash, reconcile with [`Token::objects`] and
    /// [`Token::destroy_objects`], or use [`Token::replace_key_pair`]). On a failed read-back
    /// the new pair is left in place for the caller to inspect or destroy.
    pub fn generate_key_pair(
        &self,
        label: KeyLabel,
        algorithm: KeyAlgorithm,
    ) -> Result<SubjectPublicKeyInfoOwned, TokenError> {
        for kind in [ObjectKind::PrivateKey, ObjectKind::PublicKey] {
            if !self.find(kind, label)?.is_empty() {
                return Err(TokenError::ObjectExists {
                    serial: self.serial.clone(),
                    label,
                    class: kind.as_str(),
                });
            }
        }
        self.generate_checked(label, algorithm)
    }

    /// Makes `label`'s key pair anew: destroys every object labelled `label` (what an
    /// interrupted attempt left: key pair, certificates), then generates the pair as
    /// [`Token::generate_key_pair`] does. Returns how many objects were destroyed, and the
    /// public key.
    ///
    /// The user must be logged in, so that the search sees private keys too: then nothing
    /// labelled `label` is left when the pair is generated, and the token never holds two
    /// (one search answers both "what is left over" and "is there one already").
    pub fn replace_key_pair(
        &self,
        label: KeyLabel,
        algorithm: KeyAlgorithm,
    ) -> Result<(usize, SubjectPublicKeyInfoOwned), TokenError> {
        if self.logged_in() != Some(PinOwner::User) {
            return Err(TokenError::InvalidArgument {
                what: "login",
                reason: format!(
                    "replacing the {label} key pair needs the user logged in, to see private keys"
                ),
            });
        }
        if algorithm == KeyAlgorithm::Sm2 {
            // Refused before anything is destroyed.
            return Err(self.sm2_not_over_pkcs11("generate an SM2 key pair"));
        }
        let destroyed = self.destroy_objects(label)?;
        Ok((destroyed, self.generate_checked(label, algorithm)?))
    }

    /// `C_GenerateKeyPair` with the Ukey templates, the private key's read-back and the
    /// public key read; the new handles are remembered. No search for an existing pair.
    fn generate_checked(
        &self,
        label: KeyLabel,
        algorithm: KeyAlgorithm,
    ) -> Result<SubjectPublicKeyInfoOwned, TokenError> {
        let name = label.as_str().as_bytes().to_vec();
        let id = vec![label.key_id()];
        let mut public = vec![
            Attribute::Token(true),
            Attribute::Private(false),
            Attribute::Label(name.clone()),
            Attribute::Id(id.clone()),
        ];
        let mut private = vec![
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::Label(name),
            Attribute::Id(id),
        ];
        let (decrypts, derives) = usage_of(label, algorithm);
        // Every key signs: at least its own CSR (proof of possession). Usages are set
        // explicitly: modules differ in their defaults (SoftHSM2 allows decrypt and derive).
        public.push(Attribute::Verify(true));
        public.push(Attribute::Encrypt(decrypts));
        public.push(Attribute::Wrap(false));
        private.push(Attribute::Sign(true));
        private.push(Attribute::Decrypt(decrypts));
        private.push(Attribute::Derive(derives));
        private.push(Attribute::Unwrap(false));
        let mechanism = match algorithm {
            KeyAlgorithm::Sm2 => {
                return Err(self.sm2_not_over_pkcs11("generate an SM2 key pair"));
            }
            KeyAlgorithm::P256 => {
                public.push(Attribute::EcParams(p256_params()));
                Mechanism::EccKeyPairGen
            }
            KeyAlgorithm::Rsa2048 | KeyAlgorithm::Rsa3072 => {
                let bits = algorithm.rsa_bits().unwrap_or(2048) as u64;
                public.push(Attribute::ModulusBits(bits.into()));
                public.push(Attribute::PublicExponent(vec![0x01, 0x00, 0x01]));
                Mechanism::RsaPkcsKeyPairGen
            }
        };
        let (public_handle, private_handle) =
            self.with_session(|s| s.generate_key_pair(&mechanism, &public, &private))?;
        tracing::debug!(serial = self.logged_serial(), %label, %algorithm, "key pair generated");
        let key_type = Some(key_type_of(algorithm));
        let public_key = Remembered {
            handle: public_handle,
            key_type,
        };
        self.remember(
            ObjectKind::PrivateKey,
            label,
            Remembered {
                handle: private_handle,
                key_type,
            },
        );
        self.remember(ObjectKind::PublicKey, label, public_key);
        self.check_private_key(label, algorithm, private_handle)?;
        self.read_public_key(label, public_key)?
            .ok_or_else(|| TokenError::PublicKey {
                serial: self.serial.clone(),
                label,
                reason: format!(
                    "the new public key object is not a {algorithm} public key with its label and id"
                ),
            })
    }

    /// Reads back the private key's attributes (one `C_GetAttributeValue`); a wrong or
    /// missing one is an error.
    pub(super) fn check_private_key(
        &self,
        label: KeyLabel,
        algorithm: KeyAlgorithm,
        handle: ObjectHandle,
    ) -> Result<(), TokenError> {
        let required = required_private_attributes(label, algorithm);
        let types: Vec<AttributeType> = required.iter().map(|(t, _)| *t).collect();
        let attrs = self.with_session(|s| s.get_attributes(handle, &types))?;
        check_attributes(&required, &attrs).map_err(|(attribute, expected, found)| {
            TokenError::AttributeCheck {
                serial: self.serial.clone(),
                label,
                attribute,
                expected,
                found,
            }
        })
    }

    /// Checks the attributes of `label`'s existing private key (user logged in), e.g. when
    /// reconciling after a crash or from an outside verification pass.
    pub fn check_key_attributes(&self, label: KeyLabel) -> Result<(), TokenError> {
        self.key_handle(ObjectKind::PrivateKey, label)?;
        let algorithm =
            key_algorithm(&self.public_key(label)?).ok_or_else(|| TokenError::PublicKey {
                serial: self.serial.clone(),
                label,
                reason: "not P-256, RSA-2048 or RSA-3072".into(),
            })?;
        self.with_key(ObjectKind::PrivateKey, label, |key| {
            self.check_private_key(label, algorithm, key.handle)
                .map(Some)
        })
    }

    /// `label`'s public key, read from its public key object (no login needed: it is public).
    pub fn public_key(&self, label: KeyLabel) -> Result<SubjectPublicKeyInfoOwned, TokenError> {
        self.with_key(ObjectKind::PublicKey, label, |key| {
            self.read_public_key(label, key)
        })
    }

    /// Reads the public key object `key`: `CKA_KEY_TYPE` first when it is not known yet, then
    /// the key with the object's class, label and id in one round. `None` when the object is
    /// not `label`'s public key (a remembered handle that names another object by now). The
    /// key type read is remembered with the handle.
    fn read_public_key(
        &self,
        label: KeyLabel,
        key: Remembered,
    ) -> Result<Option<SubjectPublicKeyInfoOwned>, TokenError> {
        let bad = |reason: String| TokenError::PublicKey {
            serial: self.serial.clone(),
            label,
            reason,
        };
        let key_type = match key.key_type {
            Some(known) => known,
            None => {
                let attrs =
                    self.with_session(|s| s.get_attributes(key.handle, &[AttributeType::KeyType]))?;
                let read = attrs.iter().find_map(|a| match a {
                    Attribute::KeyType(k) => Some(*k),
                    _ => None,
                });
                match read {
                    Some(k) if k == KeyType::EC || k == KeyType::RSA => k,
                    other => return Err(bad(format!("unsupported key type {other:?}"))),
                }
            }
        };
        let values: &[AttributeType] = if key_type == KeyType::EC {
            &[AttributeType::EcParams, AttributeType::EcPoint]
        } else {
            &[AttributeType::Modulus, AttributeType::PublicExponent]
        };
        let mut types = vec![
            AttributeType::Class,
            AttributeType::KeyType,
            AttributeType::Label,
            AttributeType::Id,
        ];
        types.extend_from_slice(values);
        let attrs = self.with_session(|s| s.get_attributes(key.handle, &types))?;
        let class = attrs.iter().find_map(|a| match a {
            Attribute::Class(c) => Some(*c),
            _ => None,
        });
        let read_type = attrs.iter().find_map(|a| match a {
            Attribute::KeyType(k) => Some(*k),
            _ => None,
        });
        if class != Some(ObjectClass::PUBLIC_KEY)
            || read_type != Some(key_type)
            || bytes_attr(&attrs, AttributeType::Label) != Some(label.as_str().as_bytes())
            || bytes_attr(&attrs, AttributeType::Id) != Some(&[label.key_id()][..])
        {
            return Ok(None);
        }
        self.remember(
            ObjectKind::PublicKey,
            label,
            Remembered {
                handle: key.handle,
                key_type: Some(key_type),
            },
        );
        let spki = if key_type == KeyType::EC {
            let params = bytes_attr(&attrs, AttributeType::EcParams)
                .ok_or_else(|| bad("CKA_EC_PARAMS missing".into()))?;
            let curve = ObjectIdentifier::from_der(params)
                .map_err(|e| bad(format!("CKA_EC_PARAMS: {e}")))?;
            if curve != OID_P256 {
                return Err(bad(format!("curve {curve} is not P-256")));
            }
            let point = bytes_attr(&attrs, AttributeType::EcPoint)
                .ok_or_else(|| bad("CKA_EC_POINT missing".into()))?;
            let point = ec_point(point).map_err(bad)?;
            let key = p256::PublicKey::from_sec1_bytes(&point)
                .map_err(|e| bad(format!("CKA_EC_POINT: {e}")))?;
            spki_of(&key).map_err(bad)?
        } else {
            let n = bytes_attr(&attrs, AttributeType::Modulus)
                .ok_or_else(|| bad("CKA_MODULUS missing".into()))?;
            let e = bytes_attr(&attrs, AttributeType::PublicExponent)
                .ok_or_else(|| bad("CKA_PUBLIC_EXPONENT missing".into()))?;
            rsa_spki(n, e).map_err(bad)?
        };
        Ok(Some(spki))
    }
}

/// The uncompressed SEC1 point from `CKA_EC_POINT`: a DER OCTET STRING (the standard) or
/// the raw 65 bytes (some modules).
pub(crate) fn ec_point(value: &[u8]) -> Result<Vec<u8>, String> {
    if value.len() == 65 && value[0] == 0x04 {
        return Ok(value.to_vec());
    }
    let octets = OctetString::from_der(value).map_err(|e| format!("CKA_EC_POINT: {e}"))?;
    Ok(octets.into_bytes().into_vec())
}

fn spki_of(key: &impl EncodePublicKey) -> Result<SubjectPublicKeyInfoOwned, String> {
    let der = key.to_public_key_der().map_err(|e| e.to_string())?;
    SubjectPublicKeyInfoOwned::from_der(der.as_bytes()).map_err(|e| e.to_string())
}

/// The SPKI of an RSA key from `CKA_MODULUS` and `CKA_PUBLIC_EXPONENT` (big-endian).
pub(crate) fn rsa_spki(n: &[u8], e: &[u8]) -> Result<SubjectPublicKeyInfoOwned, String> {
    let pkcs1 = rsa::pkcs1::RsaPublicKey {
        modulus: UintRef::new(n).map_err(|e| e.to_string())?,
        public_exponent: UintRef::new(e).map_err(|e| e.to_string())?,
    };
    let der = pkcs1.to_der().map_err(|e| e.to_string())?;
    let key = <rsa::PublicKey as rsa::pkcs1::DecodeRsaPublicKey>::from_pkcs1_der(&der)
        .map_err(|e| e.to_string())?;
    spki_of(&key)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn ec_point_accepts_der_and_raw() {
        let mut raw = vec![0x04];
        raw.extend([7u8; 64]);
        let mut der = vec![0x04, 0x41];
        der.extend(&raw);
        assert_eq!(ec_point(&raw).unwrap(), raw);
        assert_eq!(ec_point(&der).unwrap(), raw);
        assert!(ec_point(&[0x01, 0x02]).is_err());
    }

    #[test]
    fn p256_params_are_the_curve_oid() {
        assert_eq!(
            p256_params(),
            [0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07]
        );
    }

    #[test]
    fn read_back_fails_on_wrong_or_missing_attributes() {
        let required = required_private_attributes(KeyLabel::SealOfficial, KeyAlgorithm::P256);
        let good: Vec<Attribute> = required
            .iter()
            .map(|(ty, v)| match ty {
                AttributeType::Token => Attribute::Token(*v),
                AttributeType::Private => Attribute::Private(*v),
                AttributeType::Sensitive => Attribute::Sensitive(*v),
                AttributeType::Extractable => Attribute::Extractable(*v),
                AttributeType::Local => Attribute::Local(*v),
                AttributeType::AlwaysSensitive => Attribute::AlwaysSensitive(*v),
                AttributeType::NeverExtractable => Attribute::NeverExtractable(*v),
                AttributeType::Sign => Attribute::Sign(*v),
                AttributeType::Decrypt => Attribute::Decrypt(*v),
                AttributeType::Derive => Attribute::Derive(*v),
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        assert_eq!(check_attributes(&required, &good), Ok(()));
        // Order does not matter: matched by type.
        let mut reversed = good.clone();
        reversed.reverse();
        assert_eq!(check_attributes(&required, &reversed), Ok(()));
        // Missing (cryptoki silently drops what it could not read).
        let missing: Vec<Attribute> = good
            .iter()
            .filter(|a| !matches!(a, Attribute::NeverExtractable(_)))
            .cloned()
            .collect();
        assert_eq!(
            check_attributes(&required, &missing),
            Err(("CKA_NEVER_EXTRACTABLE", "true".into(), "missing".into()))
        );
        // Wrong.
        let wrong: Vec<Attribute> = good
            .iter()
            .map(|a| match a {
                Attribute::Sensitive(_) => Attribute::Sensitive(false),
                other => other.clone(),
            })
            .collect();
        assert_eq!(
            check_attributes(&required, &wrong),
            Err(("CKA_SENSITIVE", "true".into(), "false".into()))
        );
    }

    #[test]
    fn usage_attribute_follows_label_and_algorithm() {
        let get = |l, a, t| {
            required_private_attributes(l, a)
                .into_iter()
                .find(|(ty, _)| *ty == t)
                .unwrap()
                .1
        };
        let (seal, enc) = (KeyLabel::SealLegal, KeyLabel::Encryption);
        assert!(get(seal, KeyAlgorithm::Rsa2048, AttributeType::Sign));
        assert!(!get(seal, KeyAlgorithm::Rsa2048, AttributeType::Decrypt));
        assert!(!get(seal, KeyAlgorithm::P256, AttributeType::Derive));
        assert!(get(enc, KeyAlgorithm::P256, AttributeType::Derive));
        assert!(!get(enc, KeyAlgorithm::P256, AttributeType::Decrypt));
        assert!(get(enc, KeyAlgorithm::Rsa3072, AttributeType::Decrypt));
        assert!(get(enc, KeyAlgorithm::Rsa3072, AttributeType::Sign));
        assert!(!get(enc, KeyAlgorithm::Rsa3072, AttributeType::Derive));
    }
}
