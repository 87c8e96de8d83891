//! Certificate requests and their answers: the CSR bundle a station sends on
//! `jobs/{jid}/csr`, and the platform's [`CertResponse`] on `jobs/{jid}/certs` — either the
//! issued certificates with their CA chain, or a rejection.
//!
//! The platform signs its response ([`crate::signed::verify_platform_message`]); the payload
//! names the station and the job.
//!
//! Binary content is DER in standard base64. This module checks shapes and sizes only; whether
//! a certificate fits the token's key, the job and the CA is the agent's verify step.

use serde::{Deserialize, Serialize};

use crate::codec::{Base64Bytes, Message, V1, check_len, check_text};
use crate::error::{Problem, ProtocolError};
use crate::ids::{ErrorCode, JobId, StationId, TokenSerial};
use crate::job::check_labels;
use crate::keys::KeyLabel;

/// Longest DER object (certificate, CSR, public key) accepted.
pub const MAX_DER_BYTES: usize = 8 * 1024;
/// Longest CA chain.
pub const MAX_CA_CHAIN: usize = 8;

/// The request for one label's certificate: either a PKCS#10 CSR signed on the token (`new`,
/// `replace`, `change` with rekey), or, when the station has no user PIN (`renew`, `change`
/// without rekey), the current certificate and the public key read from the token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertificateRequest {
    /// Which key pair.
    pub label: KeyLabel,
    /// PKCS#10 CertificationRequest, DER.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub csr: Option<Base64Bytes>,
    /// The certificate being renewed or changed, DER.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_certificate: Option<Base64Bytes>,
    /// The key pair's SubjectPublicKeyInfo as read from the token, DER.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key: Option<Base64Bytes>,
}

/// Station → platform on `{p}/stations/{sid}/jobs/{jid}/csr`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CsrBundle {
    /// Protocol version.
    pub v: V1,
    /// The job.
    pub job_id: JobId,
    /// The token the keys live on.
    pub token_serial: TokenSerial,
    /// One request per label, each label exactly once.
    pub requests: Vec<CertificateRequest>,
}

impl Message for CsrBundle {
    const NAME: &'static str = "CSR bundle";
    const MAX_BYTES: usize = 64 * 1024;

    fn validate(&self) -> Result<(), ProtocolError> {
        self.job_id.check("job_id")?;
        self.token_serial.check("token_serial")?;
        check_len("requests", &self.requests, KeyLabel::ALL.len())?;
        check_labels("requests", &self.requests, |r| r.label)?;
        for (i, r) in self.requests.iter().enumerate() {
            let path = format!("requests[{i}]");
            match (&r.csr, &r.current_certificate, &r.public_key) {
                (Some(csr), None, None) => csr.check(format!("{path}.csr"), MAX_DER_BYTES)?,
                (None, Some(cert), Some(key)) => {
                    cert.check(format!("{path}.current_certificate"), MAX_DER_BYTES)?;
                    key.check(format!("{path}.public_key"), MAX_DER_BYTES)?;
                }
                _ => {
                    return Err(ProtocolError::invalid(
                        path,
                        Problem::ExactlyOneOf {
                            alternatives: "csr, or current_certificate with public_key",
                        },
                    ));
                }
            }
        }
        Ok(())
    }
}

/// One issued certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IssuedCertificate {
    /// Which key pair it certifies.
    pub label: KeyLabel,
    /// The certificate, DER.
    pub certificate: Base64Bytes,
}

/// The issued certificates.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertBundle {
    /// One certificate per label, each label exactly once.
    pub certificates: Vec<IssuedCertificate>,
    /// The issuing CA's certificate first, then up to the root (DER each; may be empty when
    /// the station has the whole chain configured).
    pub ca_chain: Vec<Base64Bytes>,
}

/// The platform refused to issue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertRejection {
    /// Machine-readable reason, e.g. `csr-subject-mismatch`.
    pub code: ErrorCode,
    /// Human-readable reason (1-512 characters).
    pub reason: String,
}

/// Certificates or a rejection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CertOutcome {
    /// Issued.
    Issued(CertBundle),
    /// Refused.
    Rejected(CertRejection),
}

/// Platform → station on `{p}/stations/{sid}/jobs/{jid}/certs`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertResponse {
    /// Protocol version.
    pub v: V1,
    /// The station the job runs on.
    pub station_id: StationId,
    /// The job.
    pub job_id: JobId,
    /// Certificates or a rejection.
    pub outcome: CertOutcome,
}

impl Message for CertResponse {
    const NAME: &'static str = "certificate response";
    const MAX_BYTES: usize = crate::jws::max_payload_for(crate::codec::MAX_MESSAGE_BYTES);

    fn validate(&self) -> Result<(), ProtocolError> {
        self.station_id.check("station_id")?;
        self.job_id.check("job_id")?;
        match &self.outcome {
            CertOutcome::Issued(bundle) => {
                let path = "outcome.issued.certificates";
                check_len(path, &bundle.certificates, KeyLabel::ALL.len())?;
                check_labels(path, &bundle.certificates, |c| c.label)?;
                for (i, c) in bundle.certificates.iter().enumerate() {
                    c.certificate
                        .check(format!("{path}[{i}].certificate"), MAX_DER_BYTES)?;
                }
                check_len("outcome.issued.ca_chain", &bundle.ca_chain, MAX_CA_CHAIN)?;
                for (i, c) in bundle.ca_chain.iter().enumerate() {
                    c.check(format!("outcome.issued.ca_chain[{i}]"), MAX_DER_BYTES)?;
                }
                Ok(())
            }
            CertOutcome::Rejected(r) => {
                r.code.check("outcome.rejected.code")?;
                check_text("outcome.rejected.reason", &r.reason, 512)
            }
        }
    }
}
