//! PKCS#11 behind the device seam: [`Module`] is a [`DeviceLibrary`], [`Token`] a [`Device`].
//!
//! Each operation of the seam is one or a few of the token layer's own calls; what is
//! PKCS#11 about them (slots, sessions, handles, `CKA_*` templates and read-backs) stays in
//! the files of this layer. Initializing is `C_InitToken` then `C_InitPIN` as the SO, on the
//! state the caller just read, so neither reads the token a second time.

use std::path::Path;

use secrecy::SecretString;
use ukey_protocol::{KeyAlgorithm, KeyLabel};
use x509_cert::name::Name;
use x509_cert::spki::SubjectPublicKeyInfoOwned;

use super::error::TokenError;
use super::module::{Module, PresentToken, SlotSurvey};
use super::objects::ObjectKind;
use super::selftest::KeySelfTest;
use super::session::{Authorization, Token};
use crate::certs::VerifiedCertificate;
use crate::device::{Device, DeviceLibrary, LabelObjects};

impl DeviceLibrary for Module {
    fn path(&self) -> &Path {
        Module::path(self)
    }

    fn survey(&self) -> Result<SlotSurvey, TokenError> {
        Module::survey(self)
    }

    fn open(&self, present: &PresentToken) -> Result<Box<dyn Device>, TokenError> {
        Ok(Box::new(Token::at(self, present)?))
    }

    fn find_serial(&self, serial: &str) -> Result<Option<PresentToken>, TokenError> {
        self.find_by_serial(serial)
    }
}

impl Device for Token {
    fn serial(&self) -> Option<&str> {
        Token::serial(self)
    }

    fn describe(&self) -> Result<PresentToken, TokenError> {
        self.info()
    }

    fn initialize(
        &mut self,
        seen: &PresentToken,
        label: &str,
        so_pin: &SecretString,
        user_pin: &SecretString,
        authorization: &Authorization,
    ) -> Result<(), TokenError> {
        // The state right after `C_InitToken` is what `C_InitPIN` is guarded by.
        let initialized = self.init_token_as_seen(seen, so_pin, label, authorization)?;
        self.init_user_pin_as_seen(&initialized, so_pin, user_pin)
    }

    fn login_user(&self, pin: &SecretString) -> Result<(), TokenError> {
        Token::login_user(self, pin)
    }

    fn logout(&self) -> Result<(), TokenError> {
        Token::logout(self)
    }

    fn reset_user_pin(
        &self,
        so_pin: &SecretString,
        new_user_pin: &SecretString,
    ) -> Result<(), TokenError> {
        self.set_user_pin_as_so(so_pin, new_user_pin)
    }

    fn key_pairs(&self) -> Result<Vec<KeyLabel>, TokenError> {
        let objects = self.objects()?;
        Ok(KeyLabel::ALL
            .into_iter()
            .filter(|label| {
                objects
                    .iter()
                    .any(|o| o.key_label() == Some(*label) && o.kind == ObjectKind::PublicKey)
            })
            .collect())
    }

    fn replace_key_pair(
        &self,
        label: KeyLabel,
        algorithm: KeyAlgorithm,
    ) -> Result<(usize, SubjectPublicKeyInfoOwned), TokenError> {
        Token::replace_key_pair(self, label, algorithm)
    }

    fn discard_key_pair(&self, label: KeyLabel) -> Result<usize, TokenError> {
        self.destroy_objects(label)
    }

    fn public_key(&self, label: KeyLabel) -> Result<SubjectPublicKeyInfoOwned, TokenError> {
        Token::public_key(self, label)
    }

    fn label_objects(&self, label: KeyLabel) -> Result<LabelObjects, TokenError> {
        Token::label_objects(self, label)
    }

    fn sign_csr(&self, label: KeyLabel, subject: &Name) -> Result<Vec<u8>, TokenError> {
        self.build_csr(label, subject)
    }

    fn certificates(&self, label: KeyLabel) -> Result<Vec<Vec<u8>>, TokenError> {
        Token::certificates(self, label)
    }

    fn certificate(&self, label: KeyLabel) -> Result<Option<Vec<u8>>, TokenError> {
        Token::certificate(self, label)
    }

    fn installed_certificates(&self) -> Result<Vec<(KeyLabel, Vec<u8>)>, TokenError> {
        // One search for all three labels.
        Token::installed_certificates(self)
    }

    fn install_certificates(&self, certs: &[VerifiedCertificate]) -> Result<usize, TokenError> {
        Token::install_certificates(self, certs)
    }

    fn remove_certificate(&self, label: KeyLabel, der: &[u8]) -> Result<bool, TokenError> {
        Token::remove_certificate(self, label, der)
    }

    fn self_test(&self, labels: &[KeyLabel]) -> Result<Vec<KeySelfTest>, TokenError> {
        Token::self_test(self, labels)
    }
}
