//! The object handles a [`super::Token`] remembers within one session, so that each step of a
//! job does not search the token again for the key pairs it generated or found before.
//!
//! A PKCS#11 object handle is only good in the session that found or created it, while the
//! object exists and the session may see it. So remembered handles live *inside* the open
//! session and go with it: closing the session, losing it (token pulled), re-initializing
//! the token (which closes the session first) and reconnecting forget them. The token layer
//! also forgets them all when the login state changes (private objects appear or vanish), when
//! it destroys objects, and when a call says a remembered handle is invalid or a read through
//! it shows another object; the caller then searches again.
//!
//! Only handles (and a key's immutable `CKA_KEY_TYPE`) are remembered, never values: every
//! public key is still read from the token when it is checked or used, and certificates are
//! always listed afresh. This module does no IO.

use std::collections::HashMap;

use cryptoki::object::{KeyType, ObjectHandle};
use ukey_protocol::KeyLabel;

use super::objects::ObjectKind;

/// A handle remembered for one key object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Remembered<H = ObjectHandle> {
    /// The object handle, valid in the session that holds this record.
    pub(super) handle: H,
    /// The key type, when known (from generation or an earlier read); it cannot change for
    /// the life of an object.
    pub(super) key_type: Option<KeyType>,
}

/// Handles of key objects by class and label, for one session. (Generic over the handle
/// only so that tests need no module to make handles.)
#[derive(Debug)]
pub(super) struct Handles<H = ObjectHandle> {
    keys: HashMap<(ObjectKind, KeyLabel), Remembered<H>>,
}

impl<H> Default for Handles<H> {
    fn default() -> Self {
        Handles {
            keys: HashMap::new(),
        }
    }
}

impl<H: Copy> Handles<H> {
    /// The handle remembered for `label`'s key object of `kind`.
    pub(super) fn get(&self, kind: ObjectKind, label: KeyLabel) -> Option<Remembered<H>> {
        self.keys.get(&(kind, label)).copied()
    }

    /// Remembers a key object's handle. Only private and public keys are remembered: a label
    /// has one of each, while it may have several certificates, which are listed afresh.
    pub(super) fn remember(
        &mut self,
        kind: ObjectKind,
        label: KeyLabel,
        remembered: Remembered<H>,
    ) {
        if matches!(kind, ObjectKind::PrivateKey | ObjectKind::PublicKey) {
            self.keys.insert((kind, label), remembered);
        }
    }

    /// Forgets every handle.
    pub(super) fn forget_all(&mut self) {
        self.keys.clear();
    }

    /// Whether no handle is remembered.
    pub(super) fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn known(handle: u64) -> Remembered<u64> {
        Remembered {
            handle,
            key_type: Some(KeyType::EC),
        }
    }

    #[test]
    fn keys_are_remembered_by_class_and_label_and_forgotten_together() {
        let mut handles = Handles::<u64>::default();
        assert!(handles.is_empty());
        handles.remember(ObjectKind::PrivateKey, KeyLabel::SealOfficial, known(1));
        handles.remember(ObjectKind::PublicKey, KeyLabel::SealOfficial, known(2));
        handles.remember(ObjectKind::PublicKey, KeyLabel::Encryption, known(3));
        assert_eq!(
            handles.get(ObjectKind::PrivateKey, KeyLabel::SealOfficial),
            Some(known(1))
        );
        assert_eq!(
            handles.get(ObjectKind::PublicKey, KeyLabel::SealOfficial),
            Some(known(2))
        );
        assert_eq!(
            handles.get(ObjectKind::PrivateKey, KeyLabel::SealLegal),
            None
        );
        // A newer handle for the same object replaces the old one.
        handles.remember(ObjectKind::PublicKey, KeyLabel::Encryption, known(9));
        assert_eq!(
            handles.get(ObjectKind::PublicKey, KeyLabel::Encryption),
            Some(known(9))
        );
        handles.forget_all();
        assert!(handles.is_empty());
        assert_eq!(
            handles.get(ObjectKind::PrivateKey, KeyLabel::SealOfficial),
            None
        );
    }

    #[test]
    fn certificates_and_other_objects_are_never_remembered() {
        let mut handles = Handles::<u64>::default();
        handles.remember(ObjectKind::Certificate, KeyLabel::SealLegal, known(4));
        handles.remember(ObjectKind::Other, KeyLabel::SealLegal, known(5));
        assert!(handles.is_empty());
        assert_eq!(
            handles.get(ObjectKind::Certificate, KeyLabel::SealLegal),
            None
        );
    }
}
