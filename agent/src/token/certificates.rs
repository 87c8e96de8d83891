//! Certificates on a [`Token`]: installation (only a [`VerifiedCertificate`], invariant 3),
//! listing, removal.
//!
//! Certificates are listed once per operation ([`Token::install_certificates`], the
//! self-test), not once per label, and never remembered between operations.

use cryptoki::object::{Attribute, AttributeType, CertificateType, ObjectClass};
use der::Encode;
use ukey_protocol::KeyLabel;

use super::error::TokenError;
use super::objects::{ObjectKind, bytes_attr};
use super::session::Token;
use crate::certs::VerifiedCertificate;
use crate::device::latest;

impl Token {
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
}
