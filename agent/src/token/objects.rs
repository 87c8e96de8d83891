//! Token objects in general: finding them by class and label (through the handles the
//! session remembers, see `handles.rs`), listing them for reconciliation, destroying them.
//!
//! Key pairs are in `keys.rs`, certificates in `certificates.rs`.
//!
//! Fewer calls per token: the handles of key objects found or created in a session are
//! remembered (see `handles.rs` for when they are forgotten) and reused, but values never are:
//! a remembered handle that names another object by now is noticed by the read through it
//! ([`Token::with_key`]), forgotten and searched for again.

use cryptoki::error::RvError;
use cryptoki::object::{Attribute, AttributeType, ObjectClass, ObjectHandle};
use ukey_protocol::KeyLabel;

use super::error::TokenError;
use super::handles::Remembered;
use super::session::Token;
use crate::device::LabelObjects;

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

pub(super) fn bool_attr(attrs: &[Attribute], ty: AttributeType) -> Option<bool> {
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

pub(super) fn bytes_attr(attrs: &[Attribute], ty: AttributeType) -> Option<&[u8]> {
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

/// Whether a call failed because an object handle is not (or no longer) valid.
fn is_stale_handle(e: &TokenError) -> bool {
    matches!(
        e.rv(),
        Some(RvError::ObjectHandleInvalid | RvError::KeyHandleInvalid)
    )
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

    /// How many private keys, public keys and certificates carry `label` and its `CKA_ID`,
    /// as visible in the current login state (private keys only when logged in). One search
    /// per class, so a planted object is counted whatever it holds.
    pub fn label_objects(&self, label: KeyLabel) -> Result<LabelObjects, TokenError> {
        Ok(LabelObjects {
            public_keys: self.find(ObjectKind::PublicKey, label)?.len(),
            private_keys: self.find(ObjectKind::PrivateKey, label)?.len(),
            certificates: self.find(ObjectKind::Certificate, label)?.len(),
        })
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
