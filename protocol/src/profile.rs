//! The certificate profile of a Ukey, in one place: subject names and key usages per label.
//!
//! Pure: no IO. This is a contract both sides implement: the agent builds its CSRs and checks
//! issued certificates against it; the simulated platform checks CSRs and issues with it
//! (each with its own checking code, so that they meet as two independent implementations).
//! A certificate carries the company name,
//! its unified social credit code (as `organizationIdentifier`, 2.5.4.97) and, for the legal
//! representative's seal, the representative's name. It NEVER carries an ID-card number or a
//! mobile number: [`SubjectData`] has no such fields, and a name that looks like one is refused.
//!
//! | label | subject | key usage |
//! |---|---|---|
//! | `seal-official` | C=CN, O=company, organizationIdentifier=credit code, CN=company | digitalSignature, nonRepudiation |
//! | `seal-legal` | C=CN, O=company, organizationIdentifier=credit code, CN=legal representative | digitalSignature, nonRepudiation |
//! | `encryption` | as `seal-official` | keyEncipherment, dataEncipherment (RSA, SM2) / keyAgreement (P-256) |
//!
//! SM2 keys (GM/T 0010): the SubjectPublicKeyInfo is `id-ecPublicKey` (1.2.840.10045.2.1) with
//! the named curve `1.2.156.10197.1.301` (never the curve OID as the algorithm, which old tools
//! wrote); CSRs and certificates are signed with SM2-with-SM3 (1.2.156.10197.1.501, parameters
//! absent, the signature a DER `SEQUENCE { r, s }`). A CSR is signed with the key spec's
//! signer ID ([`crate::keys::SignerId`], the GM/T 0009 default unless the job names another);
//! a CA signs certificates with the default ID, which is what certificate verifiers
//! (OpenSSL with `-vfyopt distid:1234567812345678`, GM/T 0015 implementations) assume.
//!
//! Names are UTF8String (Chinese names), the country a PrintableString.

use der::asn1::{Any, ObjectIdentifier, PrintableStringRef, Utf8StringRef};
use der::{Decode, Encode};
use x509_cert::attr::AttributeTypeAndValue;
use x509_cert::builder::profile::BuilderProfile;
use x509_cert::certificate::TbsCertificate;
use x509_cert::ext::pkix::{
    AuthorityKeyIdentifier, BasicConstraints, KeyUsage, KeyUsages, SubjectKeyIdentifier,
};
use x509_cert::ext::{Extension, ToExtension};
use x509_cert::name::{Name, RdnSequence, RelativeDistinguishedName};
use x509_cert::spki::SubjectPublicKeyInfoRef;

use crate::keys::{KeyAlgorithm, KeyLabel};

/// `countryName` (2.5.4.6).
pub const OID_COUNTRY: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.4.6");
/// `organizationName` (2.5.4.10).
pub const OID_ORGANIZATION: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.4.10");
/// `organizationIdentifier` (2.5.4.97): carries the unified social credit code.
pub const OID_ORGANIZATION_IDENTIFIER: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.4.97");
/// `commonName` (2.5.4.3).
pub const OID_COMMON_NAME: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.4.3");

/// Upper bound of `organizationName` and `commonName` (RFC 5280 ub-organization-name,
/// ub-common-name), in characters.
pub const MAX_NAME_CHARS: usize = 64;

/// What a certificate says about its holder, taken from the job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubjectData {
    /// The company's registered name (may be Chinese).
    pub company_name: String,
    /// The unified social credit code (统一社会信用代码), 18 characters.
    pub credit_code: String,
    /// The legal representative's name (may be Chinese). Never an ID-card number.
    pub legal_representative: String,
}

/// Subject data that cannot go into a certificate.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProfileError {
    /// A field is empty or only blanks.
    #[error("{field}: empty")]
    Empty {
        /// The field.
        field: &'static str,
    },
    /// A field is longer than the certificate allows.
    #[error("{field}: longer than {max} characters")]
    TooLong {
        /// The field.
        field: &'static str,
        /// The bound.
        max: usize,
    },
    /// A name field looks like an ID-card or mobile number, which must never be certified.
    #[error("{field}: looks like an ID-card or mobile number, which never goes into a certificate")]
    PersonalNumber {
        /// The field.
        field: &'static str,
    },
    /// The credit code is not 18 characters of digits and capital letters.
    #[error("credit_code: not 18 digits or capital letters")]
    CreditCodeFormat,
    /// DER encoding failed.
    #[error("encoding the subject failed: {0}")]
    Encoding(String),
}

fn check_name(field: &'static str, value: &str) -> Result<(), ProfileError> {
    let value = value.trim();
    if value.is_empty() {
        return Err(ProfileError::Empty { field });
    }
    if value.chars().count() > MAX_NAME_CHARS {
        return Err(ProfileError::TooLong {
            field,
            max: MAX_NAME_CHARS,
        });
    }
    // An ID-card number is 17 digits and a digit or X; a mainland mobile 11 digits. A name is
    // neither: refuse anything made mostly of digits.
    let digits = value.chars().filter(char::is_ascii_digit).count();
    if digits >= 11 && digits * 2 > value.chars().count() {
        return Err(ProfileError::PersonalNumber { field });
    }
    Ok(())
}

impl SubjectData {
    /// Checks every field for a certificate (non-empty, lengths, no personal numbers,
    /// credit-code shape). The check character of the credit code is the protocol crate's job.
    pub fn check(&self) -> Result<(), ProfileError> {
        check_name("company_name", &self.company_name)?;
        check_name("legal_representative", &self.legal_representative)?;
        let code = self.credit_code.trim();
        if code.len() != 18
            || !code
                .chars()
                .all(|c| c.is_ascii_digit() || c.is_ascii_uppercase())
        {
            return Err(ProfileError::CreditCodeFormat);
        }
        Ok(())
    }

    /// The subject `Name` of the certificate for `label` (see the module table).
    pub fn subject(&self, label: KeyLabel) -> Result<Name, ProfileError> {
        self.check()?;
        let company = self.company_name.trim();
        let common_name = match label {
            KeyLabel::SealOfficial | KeyLabel::Encryption => company,
            KeyLabel::SealLegal => self.legal_representative.trim(),
        };
        let enc = |e: der::Error| ProfileError::Encoding(e.to_string());
        let mut rdns = RdnSequence::default();
        let country =
            Any::encode_from(&PrintableStringRef::new("CN").map_err(enc)?).map_err(enc)?;
        rdns.push(single(OID_COUNTRY, country).map_err(enc)?);
        for (oid, value) in [
            (OID_ORGANIZATION, company),
            (OID_ORGANIZATION_IDENTIFIER, self.credit_code.trim()),
            (OID_COMMON_NAME, common_name),
        ] {
            let value = Any::encode_from(&Utf8StringRef::new(value).map_err(enc)?).map_err(enc)?;
            rdns.push(single(oid, value).map_err(enc)?);
        }
        // `Name` has no public constructor from RDNs: go through DER, which it decodes.
        Name::from_der(&rdns.to_der().map_err(enc)?).map_err(enc)
    }
}

fn single(oid: ObjectIdentifier, value: Any) -> der::Result<RelativeDistinguishedName> {
    let mut rdn = RelativeDistinguishedName::default();
    rdn.insert(AttributeTypeAndValue { oid, value })?;
    Ok(rdn)
}

/// The key usage the certificate for `label` must carry, exactly.
pub fn key_usage(label: KeyLabel, algorithm: KeyAlgorithm) -> KeyUsage {
    match (label, algorithm) {
        (KeyLabel::SealOfficial | KeyLabel::SealLegal, _) => {
            KeyUsage(KeyUsages::DigitalSignature | KeyUsages::NonRepudiation)
        }
        (KeyLabel::Encryption, KeyAlgorithm::P256) => KeyUsage(KeyUsages::KeyAgreement.into()),
        (
            KeyLabel::Encryption,
            KeyAlgorithm::Rsa2048 | KeyAlgorithm::Rsa3072 | KeyAlgorithm::Sm2,
        ) => KeyUsage(KeyUsages::KeyEncipherment | KeyUsages::DataEncipherment),
    }
}

/// A key usage as text, e.g. `digitalSignature, nonRepudiation` (for messages).
pub fn key_usage_text(usage: &KeyUsage) -> String {
    let names = [
        (KeyUsages::DigitalSignature, "digitalSignature"),
        (KeyUsages::NonRepudiation, "nonRepudiation"),
        (KeyUsages::KeyEncipherment, "keyEncipherment"),
        (KeyUsages::DataEncipherment, "dataEncipherment"),
        (KeyUsages::KeyAgreement, "keyAgreement"),
        (KeyUsages::KeyCertSign, "keyCertSign"),
        (KeyUsages::CRLSign, "cRLSign"),
        (KeyUsages::EncipherOnly, "encipherOnly"),
        (KeyUsages::DecipherOnly, "decipherOnly"),
    ];
    let text: Vec<&str> = names
        .iter()
        .filter(|(flag, _)| usage.0.contains(*flag))
        .map(|(_, name)| *name)
        .collect();
    if text.is_empty() {
        "none".into()
    } else {
        text.join(", ")
    }
}

/// A `BuilderProfile` for x509-cert's `CertificateBuilder` that issues a Ukey certificate:
/// the subject of [`SubjectData::subject`], an end-entity `basicConstraints`, the label's
/// [`key_usage`] (critical), and subject/authority key identifiers.
#[derive(Debug, Clone)]
pub struct UkeyProfile {
    subject: Name,
    issuer: Name,
    key_usage: KeyUsage,
}

impl UkeyProfile {
    /// The profile for `label`'s certificate of `data`, issued by the CA named `issuer`.
    pub fn new(
        label: KeyLabel,
        algorithm: KeyAlgorithm,
        data: &SubjectData,
        issuer: Name,
    ) -> Result<UkeyProfile, ProfileError> {
        Ok(UkeyProfile {
            subject: data.subject(label)?,
            issuer,
            key_usage: key_usage(label, algorithm),
        })
    }

    /// The same profile with another subject: for a simulated platform that misbehaves on
    /// purpose (a certificate with a wrong subject).
    pub fn with_subject(profile: UkeyProfile, subject: Name) -> UkeyProfile {
        UkeyProfile { subject, ..profile }
    }

    /// The same profile with another key usage (misbehaviour on purpose, as above).
    pub fn with_key_usage(profile: UkeyProfile, key_usage: KeyUsage) -> UkeyProfile {
        UkeyProfile {
            key_usage,
            ..profile
        }
    }
}

impl BuilderProfile for UkeyProfile {
    fn get_issuer(&self, _subject: &Name) -> Name {
        self.issuer.clone()
    }

    fn get_subject(&self) -> Name {
        self.subject.clone()
    }

    fn build_extensions(
        &self,
        spk: SubjectPublicKeyInfoRef<'_>,
        issuer_spk: SubjectPublicKeyInfoRef<'_>,
        tbs: &TbsCertificate,
    ) -> x509_cert::builder::Result<Vec<Extension>> {
        let mut extensions: Vec<Extension> = Vec::new();
        let basic = BasicConstraints {
            ca: false,
            path_len_constraint: None,
        };
        extensions.push(basic.to_extension(tbs.subject(), &extensions)?);
        extensions.push(self.key_usage.to_extension(tbs.subject(), &extensions)?);
        let ski = SubjectKeyIdentifier::try_from(spk)?;
        extensions.push(ski.to_extension(tbs.subject(), &extensions)?);
        let aki = AuthorityKeyIdentifier::try_from(issuer_spk)?;
        extensions.push(aki.to_extension(tbs.subject(), &extensions)?);
        Ok(extensions)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use x509_cert::ext::pkix::name::DirectoryString;

    fn data() -> SubjectData {
        SubjectData {
            company_name: "北京示例科技有限公司".into(),
            credit_code: "91110108MA01ABCD2X".into(),
            legal_representative: "张三".into(),
        }
    }

    fn cn(name: &Name) -> String {
        match name.common_name().unwrap().unwrap() {
            DirectoryString::Utf8String(s) => s,
            other => panic!("CN not UTF8String: {other:?}"),
        }
    }

    #[test]
    fn subjects_per_label() {
        let d = data();
        let official = d.subject(KeyLabel::SealOfficial).unwrap();
        let legal = d.subject(KeyLabel::SealLegal).unwrap();
        let enc = d.subject(KeyLabel::Encryption).unwrap();
        assert_eq!(cn(&official), "北京示例科技有限公司");
        assert_eq!(cn(&legal), "张三");
        assert_eq!(official, enc);
        assert_eq!(official.country().unwrap().unwrap().as_str(), "CN");
        let org_id: Option<Utf8StringRef<'_>> =
            official.by_oid(OID_ORGANIZATION_IDENTIFIER).unwrap();
        assert_eq!(org_id.unwrap().as_str(), "91110108MA01ABCD2X");
        // Four single-valued RDNs, country first.
        assert_eq!(official.iter_rdn().count(), 4);
        assert_eq!(official.iter().next().unwrap().oid, OID_COUNTRY);
    }

    #[test]
    fn personal_numbers_never_reach_a_subject() {
        let mut d = data();
        d.legal_representative = "11010519491231002X".into();
        assert_eq!(
            d.subject(KeyLabel::SealLegal),
            Err(ProfileError::PersonalNumber {
                field: "legal_representative"
            })
        );
        d.legal_representative = "13800138000".into();
        assert!(matches!(
            d.subject(KeyLabel::SealOfficial),
            Err(ProfileError::PersonalNumber { .. })
        ));
        d.legal_representative = " ".into();
        assert!(matches!(d.check(), Err(ProfileError::Empty { .. })));
        let mut d = data();
        d.credit_code = "91110108ma01abcd2x".into();
        assert_eq!(d.check(), Err(ProfileError::CreditCodeFormat));
        let mut d = data();
        d.company_name = "公".repeat(65);
        assert!(matches!(d.check(), Err(ProfileError::TooLong { .. })));
    }

    #[test]
    fn key_usages_per_label() {
        let seal = key_usage(KeyLabel::SealLegal, KeyAlgorithm::P256);
        assert!(seal.digital_signature() && seal.non_repudiation());
        assert!(!seal.key_encipherment() && !seal.key_agreement());
        let enc_ec = key_usage(KeyLabel::Encryption, KeyAlgorithm::P256);
        assert_eq!(key_usage_text(&enc_ec), "keyAgreement");
        let enc_rsa = key_usage(KeyLabel::Encryption, KeyAlgorithm::Rsa2048);
        assert_eq!(
            key_usage_text(&enc_rsa),
            "keyEncipherment, dataEncipherment"
        );
        assert_eq!(key_usage_text(&seal), "digitalSignature, nonRepudiation");
        let enc_sm2 = key_usage(KeyLabel::Encryption, KeyAlgorithm::Sm2);
        assert_eq!(
            key_usage_text(&enc_sm2),
            "keyEncipherment, dataEncipherment"
        );
        let seal_sm2 = key_usage(KeyLabel::SealOfficial, KeyAlgorithm::Sm2);
        assert_eq!(
            key_usage_text(&seal_sm2),
            "digitalSignature, nonRepudiation"
        );
    }
}
