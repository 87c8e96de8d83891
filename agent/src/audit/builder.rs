//! Collects what a job did to its token while it runs, and makes its production receipt at
//! the end. Pure: the caller passes the times; signing takes the station's key.
//!
//! The daemon makes one [`ReceiptBuilder`] when a job claims a token, calls
//! [`ReceiptBuilder::step_started`] / [`ReceiptBuilder::step_ended`] around each step,
//! [`ReceiptBuilder::key`] after reading a key's attributes back, [`ReceiptBuilder::certificate`]
//! after installing a certificate and [`ReceiptBuilder::self_test`] after activation, then
//! [`ReceiptBuilder::finish`] when the job succeeds or fails, and records the signed receipt
//! as [`super::AuditEvent::Receipt`].

use time::OffsetDateTime;
use ukey_protocol::{
    CertFingerprint, ErrorCode, EventId, JobId, JobKind, KeyAttributes, KeyOrigin, ProtocolError,
    Receipt, ReceiptCertificate, ReceiptKey, ReceiptOutcome, ReceiptSigner, ReceiptStep,
    SelfTestResult, SignedReceipt, StationId, Step, TokenSerial, V1,
};
use ukey_protocol::{KeyAlgorithm, KeyLabel};

use crate::certs::VerifiedCertificate;

/// A receipt in the making (see the module documentation).
#[derive(Debug, Clone)]
pub struct ReceiptBuilder {
    receipt: Receipt,
    open: Option<(Step, OffsetDateTime)>,
}

impl ReceiptBuilder {
    /// Starts the receipt of `job_id` on the token `token_serial` of model `token_model` at
    /// rack `position`, with `operator` signed in (if anyone).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        station_id: StationId,
        job_id: JobId,
        kind: JobKind,
        token_serial: TokenSerial,
        token_model: &str,
        position: Option<u32>,
        operator: Option<&str>,
    ) -> ReceiptBuilder {
        ReceiptBuilder {
            receipt: Receipt {
                v: V1,
                // A fresh UUID: unique across the station's events and receipts.
                receipt_id: EventId::new(uuid::Uuid::new_v4().simple().to_string())
                    .unwrap_or_else(|_| unreachable!("a UUID is a valid event id")),
                station_id,
                job_id,
                kind,
                outcome: ReceiptOutcome::Succeeded,
                token_serial,
                token_model: ukey_protocol::fit_text(
                    token_model,
                    ukey_protocol::receipt::MAX_TEXT_CHARS,
                ),
                position,
                operator: operator
                    .map(|o| ukey_protocol::fit_text(o, ukey_protocol::receipt::MAX_TEXT_CHARS)),
                steps: Vec::new(),
                keys: Vec::new(),
                certificates: Vec::new(),
                self_test: None,
                agent_version: env!("CARGO_PKG_VERSION").to_owned(),
                made_at: OffsetDateTime::UNIX_EPOCH,
            },
            open: None,
        }
    }

    /// The job.
    pub fn job_id(&self) -> &JobId {
        &self.receipt.job_id
    }

    /// The receipt's id (the platform acknowledges it by this id).
    pub fn receipt_id(&self) -> &EventId {
        &self.receipt.receipt_id
    }

    /// The token's serial, once known (a blank token may get it only with initialization).
    pub fn set_token_serial(&mut self, serial: TokenSerial) {
        self.receipt.token_serial = serial;
    }

    /// The step running or last ended, if any.
    pub fn last_step(&self) -> Option<Step> {
        self.open
            .as_ref()
            .map(|(step, _)| *step)
            .or_else(|| self.receipt.steps.last().map(|s| s.step))
    }

    /// A step started at `at`. A step still open ends, failed, at the same time.
    pub fn step_started(&mut self, step: Step, at: OffsetDateTime) {
        if self.open.is_some() {
            self.step_ended(false, at);
        }
        self.open = Some((step, at));
    }

    /// The open step ended at `at`; nothing happens when no step is open.
    pub fn step_ended(&mut self, ok: bool, at: OffsetDateTime) {
        if let Some((step, started_at)) = self.open.take()
            && self.receipt.steps.len() < ukey_protocol::receipt::MAX_STEPS
        {
            self.receipt.steps.push(ReceiptStep {
                step,
                started_at,
                ended_at: at.max(started_at),
                ok,
            });
        }
    }

    /// A key pair's attributes as read back from the token (a later call for the same label
    /// replaces an earlier one).
    pub fn key(
        &mut self,
        label: KeyLabel,
        algorithm: KeyAlgorithm,
        origin: KeyOrigin,
        attributes: KeyAttributes,
    ) {
        self.receipt.keys.retain(|k| k.label != label);
        self.receipt.keys.push(ReceiptKey {
            label,
            algorithm,
            origin,
            attributes,
        });
    }

    /// A certificate installed on the token.
    pub fn certificate(&mut self, cert: &VerifiedCertificate) {
        let serial = cert
            .certificate()
            .tbs_certificate()
            .serial_number()
            .as_bytes()
            .to_vec();
        self.push_certificate(ReceiptCertificate {
            label: cert.label(),
            serial: hex::encode(serial),
            sha256: hex::encode(cert.fingerprint_sha256()),
        });
    }

    /// A certificate as the bind step reports it.
    pub fn certificate_fingerprint(&mut self, cert: &CertFingerprint) {
        self.push_certificate(ReceiptCertificate {
            label: cert.label,
            serial: cert.serial.clone(),
            sha256: cert.sha256.clone(),
        });
    }

    fn push_certificate(&mut self, cert: ReceiptCertificate) {
        self.receipt.certificates.retain(|c| c.label != cert.label);
        self.receipt.certificates.push(cert);
    }

    /// The self-test's result; `detail` says what failed.
    pub fn self_test(&mut self, passed: bool, detail: Option<&str>) {
        self.receipt.self_test = Some(SelfTestResult {
            passed,
            detail: detail.map(|d| {
                super::redact(&ukey_protocol::fit_text(
                    d,
                    ukey_protocol::receipt::MAX_TEXT_CHARS,
                ))
                .chars()
                .take(ukey_protocol::receipt::MAX_TEXT_CHARS)
                .collect()
            }),
        });
    }

    /// The receipt of a job that ended at `at`: succeeded when `failure` is `None`, else
    /// failed at that step with that code. An open step ends with the job.
    pub fn finish(mut self, failure: Option<(Step, ErrorCode)>, at: OffsetDateTime) -> Receipt {
        self.step_ended(failure.is_none(), at);
        self.receipt.outcome = match failure {
            None => ReceiptOutcome::Succeeded,
            Some((step, code)) => ReceiptOutcome::Failed { step, code },
        };
        self.receipt.made_at = at.to_offset(time::UtcOffset::UTC);
        self.receipt
    }

    /// [`ReceiptBuilder::finish`], then signs the receipt with the station's key.
    pub fn finish_signed(
        self,
        failure: Option<(Step, ErrorCode)>,
        at: OffsetDateTime,
        signer: &ReceiptSigner,
    ) -> Result<SignedReceipt, ProtocolError> {
        SignedReceipt::sign(&self.finish(failure, at), signer)
    }
}
