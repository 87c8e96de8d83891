//! The test CA of the simulated platform: a self-signed root with a P-256, an RSA-2048 or an
//! SM2 key (and, when asked, an intermediate CA under it) that checks certificate requests
//! against a job and issues end-entity certificates to the Ukey profile
//! (`ukey_protocol::profile`). An SM2 CA signs with SM2-with-SM3 and the
//! GM/T 0009 default signer ID; an SM2 CSR is checked with the signer ID its job's key spec
//! names (the default unless it names one).
//!
//! This is a simulation. The CA key lives in memory and, when asked, in a plain PEM file;
//! there is no revocation, no audit, no hardware. It exists so that tests and the demo can
//! exercise the agent's certificate checks against real X.509 from a real (if throwaway) CA.
//!
//! What it checks before issuing (each refusal is a [`CertRejection`] with a code):
//! a CSR must decode, its self-signature must verify, its key must be of the algorithm the
//! job asks for on that label, and its subject must be exactly the profile's subject for the
//! job; a renewal request (current certificate + public key) must carry a certificate this CA
//! issued, for that very public key. It does not check whether the station may ask (that is
//! the broker's ACLs) or whether the token is bound to the order.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use der::pem::LineEnding;
use der::{Decode, DecodePem, Encode, EncodePem};
use p256::elliptic_curve::Generate;
use p256::pkcs8::{DecodePrivateKey, EncodePrivateKey};
use sha2::Sha256;
use ukey_protocol::codes::{self, Code};
use ukey_protocol::profile::{SubjectData, UkeyProfile};
use ukey_protocol::{CertRejection, ErrorCode, JobDocument, KeyAlgorithm, KeyLabel, SignerId};
use x509_cert::Certificate;
use x509_cert::builder::profile::BuilderProfile;
use x509_cert::builder::{Builder, CertificateBuilder};
use x509_cert::certificate::TbsCertificate;
use x509_cert::ext::pkix::{
    AuthorityKeyIdentifier, BasicConstraints, KeyUsage, KeyUsages, SubjectKeyIdentifier,
};
use x509_cert::ext::{Extension, ToExtension};
use x509_cert::name::Name;
use x509_cert::request::CertReq;
use x509_cert::serial_number::SerialNumber;
use x509_cert::spki::{SubjectPublicKeyInfoOwned, SubjectPublicKeyInfoRef};
use x509_cert::time::{Time, Validity};

use crate::error::PlatformError;
use crate::verify::{key_algorithm, verify_signature, verify_signature_with_id};

/// How long a test CA's own certificate is valid.
const CA_VALIDITY: Duration = Duration::from_secs(20 * 365 * 86_400);
/// How far back an issued certificate's notBefore is set, for clocks that differ a little.
const BACKDATE: Duration = Duration::from_secs(60);
const DAY: Duration = Duration::from_secs(86_400);

/// The key type of a test CA.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum CaAlgorithm {
    /// EC P-256, ecdsa-with-SHA256 (the default: fast).
    #[default]
    P256,
    /// RSA-2048, sha256WithRSAEncryption.
    Rsa2048,
    /// SM2, SM2-with-SM3 (GM/T 0003, 0009, 0010): the CA of 国密 certificates.
    Sm2,
}

impl CaAlgorithm {
    /// The name used in file names and on the command line: `p256`, `rsa2048`, `sm2`.
    pub fn as_str(self) -> &'static str {
        match self {
            CaAlgorithm::P256 => "p256",
            CaAlgorithm::Rsa2048 => "rsa2048",
            CaAlgorithm::Sm2 => "sm2",
        }
    }
}

impl std::fmt::Display for CaAlgorithm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for CaAlgorithm {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "p256" => Ok(CaAlgorithm::P256),
            "rsa2048" => Ok(CaAlgorithm::Rsa2048),
            "sm2" => Ok(CaAlgorithm::Sm2),
            other => Err(format!(
                "unknown CA algorithm {other:?} (p256, rsa2048 or sm2)"
            )),
        }
    }
}

/// The CA's private key, with the signer x509-cert's builder wants.
enum CaKey {
    P256(p256::ecdsa::SigningKey),
    /// Made with the default signer ID: certificates are signed with it.
    Sm2(Box<sm2::dsa::SigningKey>),
    Rsa {
        key: Box<rsa::PrivateKey>,
        signer: Box<rsa::pkcs1v15::SigningKey<Sha256>>,
    },
}

impl CaKey {
    fn generate(algorithm: CaAlgorithm) -> Result<CaKey, PlatformError> {
        match algorithm {
            CaAlgorithm::P256 => Ok(CaKey::P256(p256::ecdsa::SigningKey::generate_from_rng(
                &mut rand::rng(),
            ))),
            CaAlgorithm::Rsa2048 => {
                let key = rsa::PrivateKey::new(&mut rand::rng(), 2048)
                    .map_err(|e| PlatformError::key("RSA CA key", e))?;
                Ok(CaKey::rsa(key))
            }
            CaAlgorithm::Sm2 => CaKey::sm2(&sm2::SecretKey::generate_from_rng(&mut rand::rng())),
        }
    }

    fn sm2(secret: &sm2::SecretKey) -> Result<CaKey, PlatformError> {
        sm2::dsa::SigningKey::new(SignerId::DEFAULT.as_str(), secret)
            .map(|k| CaKey::Sm2(Box::new(k)))
            .map_err(|e| PlatformError::key("SM2 CA key", e))
    }

    fn rsa(key: rsa::PrivateKey) -> CaKey {
        let signer = rsa::pkcs1v15::SigningKey::<Sha256>::new(key.clone());
        CaKey::Rsa {
            key: Box::new(key),
            signer: Box::new(signer),
        }
    }

    fn algorithm(&self) -> CaAlgorithm {
        match self {
            CaKey::P256(_) => CaAlgorithm::P256,
            CaKey::Sm2(_) => CaAlgorithm::Sm2,
            CaKey::Rsa { .. } => CaAlgorithm::Rsa2048,
        }
    }

    fn spki(&self) -> Result<SubjectPublicKeyInfoOwned, PlatformError> {
        let spki = match self {
            CaKey::P256(k) => SubjectPublicKeyInfoOwned::from_key(k.verifying_key()),
            CaKey::Sm2(k) => SubjectPublicKeyInfoOwned::from_key(k.verifying_key()),
            CaKey::Rsa { signer, .. } => SubjectPublicKeyInfoOwned::from_key(
                &signature::Keypair::verifying_key(signer.as_ref()),
            ),
        };
        spki.map_err(|e| PlatformError::key("CA public key", e))
    }

    fn to_pkcs8_pem(&self) -> Result<zeroize::Zeroizing<String>, PlatformError> {
        match self {
            CaKey::P256(k) => k.to_pkcs8_pem(LineEnding::LF),
            CaKey::Sm2(k) => sm2::SecretKey::from_bytes(&k.to_bytes())
                .map_err(|e| PlatformError::key("CA private key", e))?
                .to_pkcs8_pem(LineEnding::LF),
            CaKey::Rsa { key, .. } => key.to_pkcs8_pem(LineEnding::LF),
        }
        .map_err(|e| PlatformError::key("CA private key", e))
    }

    fn from_pkcs8_pem(pem: &str) -> Result<CaKey, PlatformError> {
        if let Ok(key) = p256::ecdsa::SigningKey::from_pkcs8_pem(pem) {
            return Ok(CaKey::P256(key));
        }
        if let Ok(secret) = sm2::SecretKey::from_pkcs8_pem(pem) {
            return CaKey::sm2(&secret);
        }
        rsa::PrivateKey::from_pkcs8_pem(pem)
            .map(CaKey::rsa)
            .map_err(|e| PlatformError::key("CA private key", e))
    }

    fn build<P: BuilderProfile>(
        &self,
        profile: P,
        validity: Validity,
        spki: SubjectPublicKeyInfoOwned,
    ) -> Result<Certificate, PlatformError> {
        let serial = SerialNumber::generate(&mut rand::rng());
        let builder = CertificateBuilder::new(profile, serial, validity, spki)
            .map_err(|e| PlatformError::key("certificate builder", e))?;
        match self {
            CaKey::P256(k) => builder.build::<_, p256::ecdsa::DerSignature>(k),
            CaKey::Sm2(k) => sign_sm2(builder, k),
            CaKey::Rsa { signer, .. } => {
                builder.build::<_, rsa::pkcs1v15::Signature>(signer.as_ref())
            }
        }
        .map_err(|e| PlatformError::key("signing a certificate", e))
    }
}

/// Signs a certificate with an SM2 key. Not `build`: the `sm2` signer's own signature type
/// encodes as raw `r ‖ s`, where X.509 wants the DER `SEQUENCE { r, s }`.
fn sign_sm2<P: BuilderProfile>(
    mut builder: CertificateBuilder<P>,
    key: &sm2::dsa::SigningKey,
) -> x509_cert::builder::Result<Certificate> {
    let tbs = builder.finalize(key)?;
    let signature: sm2::dsa::Signature = signature::Signer::try_sign(key, &tbs)?;
    let bits = der::asn1::BitString::from_bytes(signature.to_der().as_bytes())?;
    builder.assemble(bits, key)
}

/// A CA certificate's profile: cA=true with a path length, keyCertSign and cRLSign, a subject
/// key identifier, and for an intermediate an authority key identifier. A root allows one
/// intermediate below it ([`TestCa::intermediate`]), an intermediate none.
struct CaProfile {
    subject: Name,
    issuer: Name,
    path_len: u8,
}

impl BuilderProfile for CaProfile {
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
        let mut ext = Vec::new();
        let basic = BasicConstraints {
            ca: true,
            path_len_constraint: Some(self.path_len),
        };
        ext.push(basic.to_extension(tbs.subject(), &ext)?);
        let usage = KeyUsage(KeyUsages::KeyCertSign | KeyUsages::CRLSign);
        ext.push(usage.to_extension(tbs.subject(), &ext)?);
        ext.push(SubjectKeyIdentifier::try_from(spk)?.to_extension(tbs.subject(), &ext)?);
        if self.subject != self.issuer {
            let aki = AuthorityKeyIdentifier::try_from(issuer_spk)?;
            ext.push(aki.to_extension(tbs.subject(), &ext)?);
        }
        Ok(ext)
    }
}

/// What one end-entity certificate is issued with. The fields a misbehaving platform changes
/// (key, subject, validity) are all here.
#[derive(Debug, Clone)]
pub struct Issue<'a> {
    /// Which of the three certificates.
    pub label: KeyLabel,
    /// The job's subject data.
    pub subject: &'a SubjectData,
    /// A subject to use instead of the profile's (misbehaviour on purpose).
    pub subject_override: Option<Name>,
    /// The key to certify.
    pub public_key: &'a SubjectPublicKeyInfoOwned,
    /// Start of validity.
    pub not_before: SystemTime,
    /// End of validity.
    pub not_after: SystemTime,
}

impl Issue<'_> {
    /// The usual validity window: from a minute ago to `days` days from `now`.
    pub fn window(now: SystemTime, days: u32) -> (SystemTime, SystemTime) {
        (now - BACKDATE, now + DAY * days)
    }
}

/// A test CA: a self-signed root certificate and its private key.
pub struct TestCa {
    key: CaKey,
    certificate: Certificate,
    der: Vec<u8>,
}

impl std::fmt::Debug for TestCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestCa")
            .field("algorithm", &self.algorithm())
            .field("subject", &self.name().to_string())
            .finish_non_exhaustive()
    }
}

impl TestCa {
    /// A fresh root CA named `CN={common_name},O=ukey-station simulation,C=CN`.
    pub fn generate(algorithm: CaAlgorithm, common_name: &str) -> Result<TestCa, PlatformError> {
        let name: Name = format!("CN={common_name},O=ukey-station simulation,C=CN")
            .parse()
            .map_err(|e| PlatformError::key("CA name", e))?;
        let key = CaKey::generate(algorithm)?;
        let now = SystemTime::now();
        let validity = validity(now - DAY, now + CA_VALIDITY)?;
        let profile = CaProfile {
            subject: name.clone(),
            issuer: name,
            path_len: 1,
        };
        let certificate = key.build(profile, validity, key.spki()?)?;
        TestCa::from_parts(key, certificate)
    }

    /// A fresh intermediate CA named `CN={common_name},O=ukey-station simulation,C=CN`,
    /// issued by this CA (pathLenConstraint 0, valid for half the root's span). It issues like
    /// any [`TestCa`]; a station then needs its certificate as an intermediate of the chain.
    pub fn intermediate(
        &self,
        algorithm: CaAlgorithm,
        common_name: &str,
    ) -> Result<TestCa, PlatformError> {
        let name: Name = format!("CN={common_name},O=ukey-station simulation,C=CN")
            .parse()
            .map_err(|e| PlatformError::key("CA name", e))?;
        let key = CaKey::generate(algorithm)?;
        let now = SystemTime::now();
        let validity = validity(now - DAY, now + CA_VALIDITY / 2)?;
        let profile = CaProfile {
            subject: name,
            issuer: self.name().clone(),
            path_len: 0,
        };
        let certificate = self.key.build(profile, validity, key.spki()?)?;
        TestCa::from_parts(key, certificate)
    }

    fn from_parts(key: CaKey, certificate: Certificate) -> Result<TestCa, PlatformError> {
        let der = certificate
            .to_der()
            .map_err(|e| PlatformError::key("CA certificate", e))?;
        let ours = key.spki()?;
        if certificate.tbs_certificate().subject_public_key_info() != &ours {
            return Err(PlatformError::key(
                "CA certificate",
                "its public key is not the CA key's",
            ));
        }
        Ok(TestCa {
            key,
            certificate,
            der,
        })
    }

    /// Loads a CA from its certificate (PEM) and PKCS#8 private key (PEM).
    pub fn load(certificate: &Path, key: &Path) -> Result<TestCa, PlatformError> {
        let cert_pem = read(certificate)?;
        let key_pem = zeroize::Zeroizing::new(read(key)?);
        let certificate = Certificate::from_pem(cert_pem.as_bytes())
            .map_err(|e| PlatformError::key("CA certificate", e))?;
        TestCa::from_parts(CaKey::from_pkcs8_pem(&key_pem)?, certificate)
    }

    /// Writes the certificate and the private key (PEM; the key file readable by its owner
    /// only). The key is in a plain file: this is a test CA.
    pub fn save(&self, certificate: &Path, key: &Path) -> Result<(), PlatformError> {
        write(certificate, self.certificate_pem()?.as_bytes(), false)?;
        write(key, self.key.to_pkcs8_pem()?.as_bytes(), true)
    }

    /// Loads `ca-{alg}.pem` and `ca-{alg}.key.pem` from `dir`, or generates a CA and writes
    /// them there. Returns the CA and the certificate's path.
    pub fn load_or_generate(
        dir: &Path,
        algorithm: CaAlgorithm,
        common_name: &str,
    ) -> Result<(TestCa, PathBuf), PlatformError> {
        let cert = dir.join(format!("ca-{algorithm}.pem"));
        let key = dir.join(format!("ca-{algorithm}.key.pem"));
        if cert.exists() && key.exists() {
            let ca = TestCa::load(&cert, &key)?;
            if ca.algorithm() == algorithm {
                return Ok((ca, cert));
            }
        }
        std::fs::create_dir_all(dir).map_err(|e| PlatformError::io(dir, e))?;
        let ca = TestCa::generate(algorithm, common_name)?;
        ca.save(&cert, &key)?;
        Ok((ca, cert))
    }

    /// The key type.
    pub fn algorithm(&self) -> CaAlgorithm {
        self.key.algorithm()
    }

    /// The CA's name (subject and issuer of its certificate).
    pub fn name(&self) -> &Name {
        self.certificate.tbs_certificate().subject()
    }

    /// The CA certificate.
    pub fn certificate(&self) -> &Certificate {
        &self.certificate
    }

    /// The CA certificate, DER.
    pub fn certificate_der(&self) -> &[u8] {
        &self.der
    }

    /// The CA certificate, PEM.
    pub fn certificate_pem(&self) -> Result<String, PlatformError> {
        self.certificate
            .to_pem(LineEnding::LF)
            .map_err(|e| PlatformError::key("CA certificate", e))
    }

    /// Issues one end-entity certificate (DER) to the Ukey profile for `issue.label`.
    pub fn issue(&self, issue: &Issue<'_>) -> Result<Vec<u8>, PlatformError> {
        let algorithm = key_algorithm(issue.public_key).ok_or_else(|| {
            PlatformError::key(
                "certificate request",
                "key is not P-256, RSA-2048, RSA-3072 or SM2",
            )
        })?;
        let mut profile =
            UkeyProfile::new(issue.label, algorithm, issue.subject, self.name().clone())
                .map_err(|e| PlatformError::key("certificate subject", e))?;
        if let Some(subject) = &issue.subject_override {
            profile = UkeyProfile::with_subject(profile, subject.clone());
        }
        let validity = validity(issue.not_before, issue.not_after)?;
        let certificate = self
            .key
            .build(profile, validity, issue.public_key.clone())?;
        certificate
            .to_der()
            .map_err(|e| PlatformError::key("issued certificate", e))
    }

    /// Checks a PKCS#10 CSR (DER) for `label` against `job`; returns the key to certify.
    pub fn check_csr(
        &self,
        job: &JobDocument,
        label: KeyLabel,
        csr: &[u8],
    ) -> Result<SubjectPublicKeyInfoOwned, CertRejection> {
        let csr = CertReq::from_der(csr)
            .map_err(|e| rejection(RejectionCode::CsrMalformed, format!("{label} CSR: {e}")))?;
        let info = csr
            .info
            .to_der()
            .map_err(|e| rejection(RejectionCode::CsrMalformed, format!("{label} CSR: {e}")))?;
        let signature = csr.signature.as_bytes().ok_or_else(|| {
            rejection(
                RejectionCode::CsrMalformed,
                format!("{label} CSR signature has unused bits"),
            )
        })?;
        // An SM2 CSR is signed with the signer ID of its key spec (ignored by the others).
        verify_signature_with_id(
            &csr.info.public_key,
            &csr.algorithm,
            &info,
            signature,
            &job.signer_id(label),
        )
        .map_err(|e| {
            rejection(
                RejectionCode::CsrBadSignature,
                format!("{label} CSR self-signature: {e}"),
            )
        })?;
        check_key_fits(job, label, &csr.info.public_key)?;
        let expected = subject_data(job).subject(label).map_err(|e| {
            rejection(
                RejectionCode::CsrSubjectMismatch,
                format!("{label}: the job's subject data cannot make a subject: {e}"),
            )
        })?;
        let same = matches!(
            (expected.to_der(), csr.info.subject.to_der()),
            (Ok(a), Ok(b)) if a == b
        );
        if !same {
            return Err(rejection(
                RejectionCode::CsrSubjectMismatch,
                format!(
                    "{label} CSR subject is \"{}\", the job's is \"{expected}\"",
                    csr.info.subject
                ),
            ));
        }
        Ok(csr.info.public_key)
    }

    /// Checks a renewal request for `label` against `job`: `current` (DER) must be a
    /// certificate this CA issued, for `public_key` (SPKI DER), of the job's algorithm.
    /// Returns the key to certify.
    pub fn check_renewal(
        &self,
        job: &JobDocument,
        label: KeyLabel,
        current: &[u8],
        public_key: &[u8],
    ) -> Result<SubjectPublicKeyInfoOwned, CertRejection> {
        let current = Certificate::from_der(current).map_err(|e| {
            rejection(
                RejectionCode::RenewalMalformed,
                format!("{label} current certificate: {e}"),
            )
        })?;
        let key = SubjectPublicKeyInfoOwned::from_der(public_key).map_err(|e| {
            rejection(
                RejectionCode::RenewalMalformed,
                format!("{label} public key: {e}"),
            )
        })?;
        let tbs = current.tbs_certificate();
        let issued_here = tbs.issuer() == self.name()
            && match (tbs.to_der(), current.signature().as_bytes()) {
                (Ok(tbs_der), Some(sig)) => verify_signature(
                    self.certificate.tbs_certificate().subject_public_key_info(),
                    current.signature_algorithm(),
                    &tbs_der,
                    sig,
                )
                .is_ok(),
                _ => false,
            };
        if !issued_here {
            return Err(rejection(
                RejectionCode::RenewalUnknownCertificate,
                format!(
                    "{label} current certificate was not issued by this CA (issuer \"{}\")",
                    tbs.issuer()
                ),
            ));
        }
        if tbs.subject_public_key_info() != &key {
            return Err(rejection(
                RejectionCode::RenewalKeyMismatch,
                format!("{label} public key is not the current certificate's key"),
            ));
        }
        check_key_fits(job, label, &key)?;
        Ok(key)
    }
}

/// The certificate subject data of a job: company name, credit code, legal representative.
pub fn subject_data(job: &JobDocument) -> SubjectData {
    SubjectData {
        company_name: job.enterprise.name.clone(),
        credit_code: job.enterprise.credit_code.as_str().to_owned(),
        legal_representative: job.legal_representative.name.clone(),
    }
}

fn check_key_fits(
    job: &JobDocument,
    label: KeyLabel,
    key: &SubjectPublicKeyInfoOwned,
) -> Result<(), CertRejection> {
    let found = key_algorithm(key);
    let wanted = job.key_spec(label);
    if found.is_none() || found != wanted {
        let found = found.map_or_else(|| key.algorithm.oid.to_string(), |a| a.to_string());
        let wanted = wanted.map_or("none".to_owned(), |a: KeyAlgorithm| a.to_string());
        return Err(rejection(
            RejectionCode::CsrKeyMismatch,
            format!("{label} key is {found}, the job asks for {wanted}"),
        ));
    }
    Ok(())
}

/// The codes of the platform's refusals to issue (`CertRejection::code`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RejectionCode {
    /// A CSR does not decode.
    CsrMalformed,
    /// A CSR's self-signature does not verify.
    CsrBadSignature,
    /// A CSR's subject is not the profile's subject for the job.
    CsrSubjectMismatch,
    /// A request's key is not of the algorithm the job asks for on that label.
    CsrKeyMismatch,
    /// A renewal request does not decode.
    RenewalMalformed,
    /// A renewal request's certificate was not issued by this CA.
    RenewalUnknownCertificate,
    /// A renewal request's public key is not its certificate's.
    RenewalKeyMismatch,
    /// The job is not one this platform dispatched.
    UnknownJob,
    /// The bundle comes from another token than the one the job names.
    WrongToken,
    /// A request kind that does not fit the job kind (a CSR for a renewal or the reverse).
    WrongRequestKind,
    /// Issuing failed inside the CA.
    IssuanceFailed,
    /// The platform refuses on purpose ([`super::Misbehaviour::RejectIssuance`]).
    IssuanceRefused,
}

impl RejectionCode {
    /// Every code.
    pub const ALL: [RejectionCode; 12] = [
        RejectionCode::CsrMalformed,
        RejectionCode::CsrBadSignature,
        RejectionCode::CsrSubjectMismatch,
        RejectionCode::CsrKeyMismatch,
        RejectionCode::RenewalMalformed,
        RejectionCode::RenewalUnknownCertificate,
        RejectionCode::RenewalKeyMismatch,
        RejectionCode::UnknownJob,
        RejectionCode::WrongToken,
        RejectionCode::WrongRequestKind,
        RejectionCode::IssuanceFailed,
        RejectionCode::IssuanceRefused,
    ];

    /// The protocol's code for this refusal.
    pub const fn constant(self) -> Code {
        match self {
            RejectionCode::CsrMalformed => codes::CSR_MALFORMED,
            RejectionCode::CsrBadSignature => codes::CSR_BAD_SIGNATURE,
            RejectionCode::CsrSubjectMismatch => codes::CSR_SUBJECT_MISMATCH,
            RejectionCode::CsrKeyMismatch => codes::CSR_KEY_MISMATCH,
            RejectionCode::RenewalMalformed => codes::RENEWAL_MALFORMED,
            RejectionCode::RenewalUnknownCertificate => codes::RENEWAL_UNKNOWN_CERTIFICATE,
            RejectionCode::RenewalKeyMismatch => codes::RENEWAL_KEY_MISMATCH,
            RejectionCode::UnknownJob => codes::UNKNOWN_JOB,
            RejectionCode::WrongToken => codes::WRONG_TOKEN,
            RejectionCode::WrongRequestKind => codes::WRONG_REQUEST_KIND,
            RejectionCode::IssuanceFailed => codes::ISSUANCE_FAILED,
            RejectionCode::IssuanceRefused => codes::ISSUANCE_REFUSED,
        }
    }

    /// The wire spelling, e.g. `csr-subject-mismatch`.
    pub fn as_str(self) -> &'static str {
        self.constant().as_str()
    }

    /// The code as the protocol's [`ErrorCode`].
    pub fn code(self) -> ErrorCode {
        self.constant().into()
    }
}

/// A rejection with `code` and `reason` (cut to the protocol's 512 characters).
pub fn rejection(code: RejectionCode, reason: String) -> CertRejection {
    let reason: String = reason.chars().take(512).collect();
    CertRejection {
        code: code.code(),
        reason,
    }
}

fn validity(from: SystemTime, to: SystemTime) -> Result<Validity, PlatformError> {
    let time = |t: SystemTime| Time::try_from(t).map_err(|e| PlatformError::key("validity", e));
    Ok(Validity::new(time(from)?, time(to)?))
}

fn read(path: &Path) -> Result<String, PlatformError> {
    std::fs::read_to_string(path).map_err(|e| PlatformError::io(path, e))
}

/// Writes `bytes` to `path`; `private` files are created readable by their owner only.
pub(crate) fn write(path: &Path, bytes: &[u8], private: bool) -> Result<(), PlatformError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| PlatformError::io(parent, e))?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    if private {
        options.mode(0o600);
    }
    let mut file = options.open(path).map_err(|e| PlatformError::io(path, e))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|e| PlatformError::io(path, e))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn codes_are_distinct() {
        let spellings: std::collections::BTreeSet<_> =
            RejectionCode::ALL.iter().map(|c| c.as_str()).collect();
        assert_eq!(spellings.len(), RejectionCode::ALL.len());
        assert_eq!(
            RejectionCode::CsrKeyMismatch.code(),
            codes::CSR_KEY_MISMATCH
        );
    }

    #[test]
    fn sm2_ca_round_trips_through_files_and_signs_with_sm2_with_sm3() {
        let dir = tempfile::tempdir().unwrap();
        let (ca, path) = TestCa::load_or_generate(dir.path(), CaAlgorithm::Sm2, "T").unwrap();
        assert_eq!(path, dir.path().join("ca-sm2.pem"));
        let (again, _) = TestCa::load_or_generate(dir.path(), CaAlgorithm::Sm2, "T").unwrap();
        assert_eq!(ca.certificate_der(), again.certificate_der());
        assert_eq!(again.algorithm(), CaAlgorithm::Sm2);
        let cert = again.certificate();
        assert_eq!(cert.signature_algorithm().oid, crate::verify::SM2_WITH_SM3);
        assert!(cert.signature_algorithm().parameters.is_none());
        // Self-signed with the default ID: its own key verifies it (DER signature).
        let tbs = cert.tbs_certificate().to_der().unwrap();
        verify_signature(
            cert.tbs_certificate().subject_public_key_info(),
            cert.signature_algorithm(),
            &tbs,
            cert.signature().as_bytes().unwrap(),
        )
        .unwrap();
        assert_eq!(
            key_algorithm(cert.tbs_certificate().subject_public_key_info()),
            Some(KeyAlgorithm::Sm2)
        );
        assert_eq!("sm2".parse::<CaAlgorithm>(), Ok(CaAlgorithm::Sm2));
    }

    #[test]
    fn p256_ca_round_trips_through_files() {
        let dir = tempfile::tempdir().unwrap();
        let (ca, path) = TestCa::load_or_generate(dir.path(), CaAlgorithm::P256, "T").unwrap();
        let (again, path2) = TestCa::load_or_generate(dir.path(), CaAlgorithm::P256, "T").unwrap();
        assert_eq!(path, path2);
        assert_eq!(ca.certificate_der(), again.certificate_der());
        assert_eq!(again.algorithm(), CaAlgorithm::P256);
        let key = std::fs::metadata(dir.path().join("ca-p256.key.pem")).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(key.permissions().mode() & 0o777, 0o600);
    }
}
