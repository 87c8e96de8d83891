//! Keys, objects and certificates on a [`Token`]: generation with read-back checks, public
//! keys, reconciliation listing, destruction, certificate installation.
//!
//! Templates follow DESIGN.md: private keys are `CKA_TOKEN, CKA_PRIVATE, CKA_SENSITIVE,
//! !CKA_EXTRACTABLE` with `CKA_SIGN`, and for the encryption key also `CKA_DECRYPT` (RSA) or
//! `CKA_DERIVE` (EC): a PKCS#10 CSR must be signed by its own key (proof of possession), so
//! the encryption key signs too; its certificate's key usage is what limits it to encryption.
//! Seal keys never get `CKA_DECRYPT`/`CKA_DERIVE`; key and certificate share `CKA_LABEL` and `CKA_ID = label.key_id()`. After
//! generation `CKA_LOCAL, CKA_ALWAYS_SENSITIVE, CKA_NEVER_EXTRACTABLE, CKA_SENSITIVE,
//! CKA_EXTRACTABLE` are read back; a wrong or missing one fails (cryptoki's `get_attributes`
//! silently drops unreadable attributes, so results are matched by type).
//!
//! Fewer calls per token: the handles of key objects found or created in a session are
//! remembered (see `handles.rs` for when they are forgotten) and reused, but values never are:
//! each public key is read from the token when it is used, in one `C_GetAttributeValue`
//! round that also reads the object's class, label and id, so a remembered handle that names
//! another object by now is noticed, forgotten and searched for again. Certificates are listed
//! once per operation ([`Token::install_certificates`], the self-test), not once per label.

use cryptoki::error::RvError;
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{
    Attribute, AttributeType, CertificateType, KeyType, ObjectClass, ObjectHandle,
};
use der::asn1::{ObjectIdentifier, OctetString, UintRef};
use der::{Decode, Encode};
use ukey_protocol::{KeyAlgorithm, KeyLabel};
use x509_cert::Certificate;
use x509_cert::spki::{EncodePublicKey, SubjectPublicKeyInfoOwned};

use super::error::{PinOwner, TokenError};
use super::handles::Remembered;
use super::session::Token;
use crate::certs::{OID_P256, VerifiedCertificate, key_algorithm};

/// DER of the P-256 curve OID, the value of `CKA_EC_PARAMS`.
fn p256_params() -> Vec<u8> {
    OID_P256.to_der().unwrap_or_default()
}

/// The class of a token object, as far as a Ukey cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ObjectKind {
    /// `CKO_PRIVATE_KEY`.
    PrivateKey,
    /// `CKO_PUBLIC_KEY`.
    PublicKey,
    /// `CKO_CERTIFICATE`.
    Certificate,
    /// Anything else (data objects, secret keys, …).
    Other,
}

impl ObjectKind {
    fn of(class: ObjectClass) -> ObjectKind {
        if class == ObjectClass::PRIVATE_KEY {
            ObjectKind::PrivateKey
        } else if class == ObjectClass::PUBLIC_KEY {
            ObjectKind::PublicKey
        } else if class == ObjectClass::CERTIFICATE {
            ObjectKind::Certificate
        } else {
            ObjectKind::Other
        }
    }

    fn class(self) -> Option<ObjectClass> {
        match self {
            ObjectKind::PrivateKey => Some(ObjectClass::PRIVATE_KEY),
            ObjectKind::PublicKey => Some(ObjectClass::PUBLIC_KEY),
            ObjectKind::Certificate => Some(ObjectClass::CERTIFICATE),
            ObjectKind::Other => None,
        }
    }

    /// Words for messages.
    pub fn as_str(self) -> &'static str {
        match self {
            ObjectKind::PrivateKey => "private key",
            ObjectKind::PublicKey => "public key",
            ObjectKind::Certificate => "certificate",
            ObjectKind::Other => "object",
        }
    }
}

/// One object on the token, for reconciling the journal with the token after a crash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    /// Its class.
    pub kind: ObjectKind,
    /// `CKA_LABEL` (lossy UTF-8).
    pub label: String,
    /// `CKA_ID`.
    pub id: Vec<u8>,
}

impl ObjectInfo {
    /// The Ukey label, if the object carries one of the three.
    pub fn key_label(&self) -> Option<KeyLabel> {
        KeyLabel::parse(&self.label)
    }
}

fn bool_attr(attrs: &[Attribute], ty: AttributeType) -> Option<bool> {
    attrs.iter().find_map(|a| match (a, ty) {
        (Attribute::Local(v), AttributeType::Local)
        | (Attribute::AlwaysSensitive(v), AttributeType::AlwaysSensitive)
        | (Attribute::NeverExtractable(v), AttributeType::NeverExtractable)
        | (Attribute::Sensitive(v), AttributeType::Sensitive)
        | (Attribute::Extractable(v), AttributeType::Extractable)
        | (Attribute::Token(v), AttributeType::Token)
        | (Attribute::Private(v), AttributeType::Private)
        | (Attribute::Sign(v), AttributeType::Sign)
        | (Attribute::Decrypt(v), AttributeType::Decrypt)
        | (Attribute::Derive(v), AttributeType::Derive) => Some(*v),
        _ => None,
    })
}

fn bytes_attr(attrs: &[Attribute], ty: AttributeType) -> Option<&[u8]> {
    attrs.iter().find_map(|a| match (a, ty) {
        (Attribute::EcParams(v), AttributeType::EcParams)
        | (Attribute::EcPoint(v), AttributeType::EcPoint)
        | (Attribute::Modulus(v), AttributeType::Modulus)
        | (Attribute::PublicExponent(v), AttributeType::PublicExponent)
        | (Attribute::Label(v), AttributeType::Label)
        | (Attribute::Id(v), AttributeType::Id)
        | (Attribute::Value(v), AttributeType::Value) => Some(v.as_slice()),
        _ => None,
    })
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
        (false, KeyAlgorithm::Rsa2048 | KeyAlgorithm::Rsa3072) => (true, false),
    }
}

/// Whether a call failed because an object handle is not (or no longer) valid.
fn is_stale_handle(e: &TokenError) -> bool {
    matches!(
        e.rv(),
        Some(RvError::ObjectHandleInvalid | RvError::KeyHandleInvalid)
    )
}

/// The `CKA_KEY_TYPE` of a key algorithm.
fn key_type_of(algorithm: KeyAlgorithm) -> KeyType {
    match algorithm {
        KeyAlgorithm::P256 => KeyType::EC,
        KeyAlgorithm::Rsa2048 | KeyAlgorithm::Rsa3072 => KeyType::RSA,
    }
}

impl Token {
    /// Object handles of `kind` with `label` (and the label's `CKA_ID`).
    pub(super) fn find(
        &self,
        kind: ObjectKind,
        label: KeyLabel,
    ) -> Result<Vec<ObjectHandle>, TokenError> {
        let mut template = vec![
            Attribute::Label(label.as_str().as_bytes().to_vec()),
            Attribute::Id(vec![label.key_id()]),
        ];
        if let Some(class) = kind.class() {
            template.push(Attribute::Class(class));
        }
        self.with_session(|s| s.find_objects(&template))
    }

    /// The one object of `kind` with `label`, searched for on the token (and remembered for
    /// this session); missing is an error.
    pub(super) fn find_one(
        &self,
        kind: ObjectKind,
        label: KeyLabel,
    ) -> Result<Remembered, TokenError> {
        let handle = self.find(kind, label)?.into_iter().next().ok_or_else(|| {
            TokenError::ObjectMissing {
                serial: self.serial.clone(),
                label,
                class: kind.as_str(),
            }
        })?;
        let found = Remembered {
            handle,
            key_type: None,
        };
        self.remember(kind, label, found);
        Ok(found)
    }

    /// `label`'s key object of `kind`: the handle remembered in this session, else searched.
    pub(super) fn key_handle(
        &self,
        kind: ObjectKind,
        label: KeyLabel,
    ) -> Result<Remembered, TokenError> {
        match self.remembered(kind, label) {
            Some(known) => Ok(known),
            None => self.find_one(kind, label),
        }
    }

    /// Runs `f` on `label`'s key object of `kind`, through the handle remembered in this
    /// session if there is one. When the module says that handle is invalid, or `f` finds
    /// that it names another object by now (`Ok(None)`), every remembered handle is
    /// forgotten and `f` runs once more on the object a fresh search finds.
    pub(super) fn with_key<T>(
        &self,
        kind: ObjectKind,
        label: KeyLabel,
        f: impl Fn(Remembered) -> Result<Option<T>, TokenError>,
    ) -> Result<T, TokenError> {
        if let Some(known) = self.remembered(kind, label) {
            match f(known) {
                Ok(Some(value)) => return Ok(value),
                Ok(None) => {}
                Err(e) if is_stale_handle(&e) => {}
                Err(e) => return Err(e),
            }
            tracing::debug!(serial = self.logged_serial(), %label, class = kind.as_str(), "a remembered handle is stale: searching again");
            self.forget_handles();
        }
        let found = self.find_one(kind, label)?;
        f(found)?.ok_or_else(|| TokenError::ObjectMissing {
            serial: self.serial.clone(),
            label,
            class: kind.as_str(),
        })
    }

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

    /// Every object visible in the current login state (private ones only when logged in).
    pub fn objects(&self) -> Result<Vec<ObjectInfo>, TokenError> {
        let handles = self.with_session(|s| s.find_objects(&[]))?;
        let mut out = Vec::with_capacity(handles.len());
        for handle in handles {
            let attrs = self.with_session(|s| {
                s.get_attributes(
                    handle,
                    &[
                        AttributeType::Class,
                        AttributeType::Label,
                        AttributeType::Id,
                    ],
                )
            })?;
            let kind = attrs
                .iter()
                .find_map(|a| match a {
                    Attribute::Class(c) => Some(ObjectKind::of(*c)),
                    _ => None,
                })
                .unwrap_or(ObjectKind::Other);
            out.push(ObjectInfo {
                kind,
                label: String::from_utf8_lossy(
                    bytes_attr(&attrs, AttributeType::Label).unwrap_or_default(),
                )
                .into_owned(),
                id: bytes_attr(&attrs, AttributeType::Id)
                    .unwrap_or_default()
                    .to_vec(),
            });
        }
        Ok(out)
    }

    /// Destroys every object labelled `label` (key pair and certificates; user logged in to
    /// reach the private key). Returns how many were destroyed.
    pub fn destroy_objects(&self, label: KeyLabel) -> Result<usize, TokenError> {
        let template = [Attribute::Label(label.as_str().as_bytes().to_vec())];
        let handles = self.with_session(|s| s.find_objects(&template))?;
        if !handles.is_empty() {
            // Handles of destroyed objects are stale: forget them all before the first goes.
            self.forget_handles();
        }
        for handle in &handles {
            self.with_session(|s| s.destroy_object(*handle))?;
        }
        if handles.is_empty() {
            tracing::debug!(serial = self.logged_serial(), %label, "no objects to destroy");
        } else {
            tracing::info!(serial = self.logged_serial(), %label, count = handles.len(), "objects destroyed");
        }
        Ok(handles.len())
    }

    /// Writes a verified certificate as a public `CKO_CERTIFICATE` (`CKC_X_509`) object with
    /// its key's `CKA_LABEL` and `CKA_ID`, `CKA_SUBJECT`, `CKA_ISSUER`, `CKA_SERIAL_NUMBER`
    /// and `CKA_VALUE`. Only a [`VerifiedCertificate`] is accepted (invariant 3).
    ///
    /// Idempotent: if the very same certificate is already there, nothing is written and
    /// `false` is returned (a resumed job never duplicates it).
    pub fn install_certificate(&self, cert: &VerifiedCertificate) -> Result<bool, TokenError> {
        Ok(self.install_certificates(std::slice::from_ref(cert))? > 0)
    }

    /// [`Token::install_certificate`] for several certificates, with one listing of the
    /// token's certificates for all of them. Returns how many were written; one that is
    /// already on the token (or earlier in `certs`) is not written again.
    pub fn install_certificates(&self, certs: &[VerifiedCertificate]) -> Result<usize, TokenError> {
        let mut on_token = self.certificate_listing()?;
        let mut written = 0;
        for cert in certs {
            let label = cert.label();
            if on_token
                .iter()
                .any(|(l, der)| *l == label && der.as_slice() == cert.der())
            {
                continue;
            }
            self.write_certificate(cert)?;
            on_token.push((label, cert.der().to_vec()));
            written += 1;
        }
        Ok(written)
    }

    fn write_certificate(&self, cert: &VerifiedCertificate) -> Result<(), TokenError> {
        let label = cert.label();
        let bad = |e: der::Error| TokenError::Certificate {
            label,
            reason: e.to_string(),
        };
        let tbs = cert.certificate().tbs_certificate();
        let template = vec![
            Attribute::Class(ObjectClass::CERTIFICATE),
            Attribute::CertificateType(CertificateType::X_509),
            Attribute::Token(true),
            Attribute::Private(false),
            Attribute::Label(label.as_str().as_bytes().to_vec()),
            Attribute::Id(vec![label.key_id()]),
            Attribute::Subject(tbs.subject().to_der().map_err(bad)?),
            Attribute::Issuer(tbs.issuer().to_der().map_err(bad)?),
            Attribute::SerialNumber(tbs.serial_number().to_der().map_err(bad)?),
            Attribute::Value(cert.der().to_vec()),
        ];
        self.with_session(|s| s.create_object(&template))?;
        tracing::debug!(serial = self.logged_serial(), %label, "certificate installed");
        Ok(())
    }

    /// Every certificate (DER) on the token that carries one of the three labels with its
    /// `CKA_ID`, by label: one search for the whole token, then one read per certificate.
    /// The same certificates as [`Token::certificates`] finds label by label.
    pub(super) fn certificate_listing(&self) -> Result<Vec<(KeyLabel, Vec<u8>)>, TokenError> {
        let handles =
            self.with_session(|s| s.find_objects(&[Attribute::Class(ObjectClass::CERTIFICATE)]))?;
        let mut out = Vec::with_capacity(handles.len());
        for handle in handles {
            let attrs = self.with_session(|s| {
                s.get_attributes(
                    handle,
                    &[
                        AttributeType::Label,
                        AttributeType::Id,
                        AttributeType::Value,
                    ],
                )
            })?;
            let Some(label) = bytes_attr(&attrs, AttributeType::Label)
                .and_then(|l| std::str::from_utf8(l).ok())
                .and_then(KeyLabel::parse)
            else {
                continue;
            };
            if bytes_attr(&attrs, AttributeType::Id) != Some(&[label.key_id()][..]) {
                continue;
            }
            match bytes_attr(&attrs, AttributeType::Value) {
                Some(v) => out.push((label, v.to_vec())),
                None => {
                    return Err(TokenError::Certificate {
                        label,
                        reason: "CKA_VALUE unreadable".into(),
                    });
                }
            }
        }
        Ok(out)
    }

    /// Every certificate (DER) labelled `label`: usually one; two between writing a renewed
    /// certificate and deleting the old one.
    pub fn certificates(&self, label: KeyLabel) -> Result<Vec<Vec<u8>>, TokenError> {
        let handles = self.find(ObjectKind::Certificate, label)?;
        let mut out = Vec::with_capacity(handles.len());
        for handle in handles {
            let attrs = self.with_session(|s| s.get_attributes(handle, &[AttributeType::Value]))?;
            match bytes_attr(&attrs, AttributeType::Value) {
                Some(v) => out.push(v.to_vec()),
                None => {
                    return Err(TokenError::Certificate {
                        label,
                        reason: "CKA_VALUE unreadable".into(),
                    });
                }
            }
        }
        Ok(out)
    }

    /// `label`'s certificate (DER); of several, the one that expires last.
    pub fn certificate(&self, label: KeyLabel) -> Result<Option<Vec<u8>>, TokenError> {
        Ok(latest(self.certificates(label)?))
    }

    /// Each label's certificate (DER; of several, the one that expires last), in label
    /// order, labels without one left out: [`Token::certificate`] for all three labels with
    /// one search.
    pub fn installed_certificates(&self) -> Result<Vec<(KeyLabel, Vec<u8>)>, TokenError> {
        let listing = self.certificate_listing()?;
        Ok(KeyLabel::ALL
            .into_iter()
            .filter_map(|label| {
                latest(
                    listing
                        .iter()
                        .filter(|(l, _)| *l == label)
                        .map(|(_, der)| der.clone()),
                )
                .map(|der| (label, der))
            })
            .collect())
    }

    /// Removes the certificate object labelled `label` whose value is `der` (e.g. the old
    /// certificate after a renewal). Returns whether one was found.
    pub fn remove_certificate(&self, label: KeyLabel, der: &[u8]) -> Result<bool, TokenError> {
        let template = [
            Attribute::Class(ObjectClass::CERTIFICATE),
            Attribute::Label(label.as_str().as_bytes().to_vec()),
            Attribute::Value(der.to_vec()),
        ];
        let handles = self.with_session(|s| s.find_objects(&template))?;
        for handle in &handles {
            self.with_session(|s| s.destroy_object(*handle))?;
        }
        Ok(!handles.is_empty())
    }

    /// `CKM_*` mechanisms the token offers.
    pub(super) fn has_mechanism(
        &self,
        mechanism: cryptoki::mechanism::MechanismType,
    ) -> Result<bool, TokenError> {
        Ok(self
            .module
            .mechanisms(self.slot, &self.site())?
            .contains(&mechanism))
    }
}

/// Of several certificates (DER), the one that expires last.
pub(super) fn latest(certs: impl IntoIterator<Item = Vec<u8>>) -> Option<Vec<u8>> {
    let mut certs: Vec<Vec<u8>> = certs.into_iter().collect();
    if certs.len() <= 1 {
        // The usual case: nothing to compare, nothing to parse.
        return certs.pop();
    }
    certs.into_iter().max_by_key(|der| {
        Certificate::from_der(der)
            .map(|c| c.tbs_certificate().validity().not_after.to_unix_duration())
            .unwrap_or_default()
    })
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
