//! Unit tests of building step requests from what a job holds in its phase: what each step
//! carries, and the error naming what is missing and the phase found.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use ukey_protocol::V1;
use ukey_protocol::bundle::{CertBundle, CsrBundle};
use ukey_protocol::codes;
use ukey_protocol::event::Step;
use ukey_protocol::ids::{JobId, TokenSerial};

use super::{Certificates, Holding, Login, Missing, Requests, StepRequest, Verified};
use crate::daemon::job_data::{JobData, Phase};
use crate::steps::{Pins, StepFailure};

struct Held {
    pins: Arc<Pins>,
    serial: TokenSerial,
    csr: CsrBundle,
    certs: CertBundle,
    verified: Verified,
}

fn held() -> Held {
    Held {
        pins: Arc::new(Pins::generate(6, 16).unwrap()),
        serial: TokenSerial::new("T1").unwrap(),
        csr: CsrBundle {
            v: V1,
            job_id: JobId::new("j-1").unwrap(),
            token_serial: TokenSerial::new("T1").unwrap(),
            requests: Vec::new(),
        },
        certs: CertBundle {
            certificates: Vec::new(),
            ca_chain: Vec::new(),
        },
        verified: Arc::new(Vec::new()),
    }
}

/// The job's data in `phase`, with its PINs or without.
fn data(h: &Held, phase: Phase, with_pins: bool) -> JobData {
    let pins = with_pins.then(|| Arc::clone(&h.pins));
    let csr = h.csr.clone();
    let certs = h.certs.clone();
    match phase {
        Phase::Queued => JobData::Queued,
        Phase::Claimed => JobData::Claimed { pins },
        Phase::Requested => JobData::Requested { pins, csr },
        Phase::Issued => JobData::Issued { pins, csr, certs },
        Phase::Verified => JobData::Verified {
            pins,
            csr,
            certs,
            verified: Arc::clone(&h.verified),
        },
    }
}

/// Everything a job can hold.
fn everything(h: &Held) -> JobData {
    data(h, Phase::Verified, true)
}

fn holding<'a>(h: &'a Held, data: &'a JobData) -> Holding<'a> {
    Holding {
        data,
        serial: Some(&h.serial),
        keeps_keys: false,
    }
}

fn missing(step: Step, job: Holding<'_>) -> &'static str {
    match StepRequest::build(step, job) {
        Err(Missing {
            step: s,
            what,
            found,
        }) => {
            assert_eq!(s, step);
            assert_eq!(found, job.data.phase());
            what
        }
        Ok(r) => panic!("{step} built without its data: {r:?}"),
    }
}

#[test]
fn every_step_is_built_for_the_step_it_names() {
    let h = held();
    let all = everything(&h);
    for step in [
        Step::Initialize,
        Step::GenerateKeys,
        Step::RequestCertificates,
        Step::VerifyCertificates,
        Step::Install,
        Step::Activate,
        Step::Bind,
        Step::ResetPin,
        Step::ReadKeys,
        Step::RemoveOldCertificates,
    ] {
        let request = StepRequest::build(step, holding(&h, &all)).unwrap();
        assert_eq!(request.step(), step);
        assert!(!matches!(request, StepRequest::Unsupported(_)), "{step}");
    }
}

#[test]
fn steps_that_use_the_pins_carry_them_and_fail_without() {
    let h = held();
    let all = everything(&h);
    let queued = JobData::Queued;
    let claimed_without = data(&h, Phase::Claimed, false);
    for step in [Step::Initialize, Step::GenerateKeys, Step::Activate] {
        match StepRequest::build(step, holding(&h, &all)).unwrap() {
            StepRequest::Initialize { pins }
            | StepRequest::GenerateKeys { pins }
            | StepRequest::Activate { pins } => assert!(Arc::ptr_eq(&pins, &h.pins)),
            other => panic!("{step} built as {other:?}"),
        }
        // The claim gives them: the phase before has none.
        assert_eq!(missing(step, holding(&h, &queued)), "PINs");
        assert_eq!(missing(step, holding(&h, &claimed_without)), "PINs");
        // Keeping the keys never stands in for PINs a step writes with.
        let kept = Holding {
            keeps_keys: true,
            ..holding(&h, &claimed_without)
        };
        assert_eq!(missing(step, kept), "PINs");
    }
    // Steps that read with the station's keys need nothing of the job.
    assert!(matches!(
        StepRequest::build(Step::ResetPin, holding(&h, &queued)),
        Ok(StepRequest::ResetPin)
    ));
    assert!(matches!(
        StepRequest::build(Step::ReadKeys, holding(&h, &queued)),
        Ok(StepRequest::ReadKeys)
    ));
}

#[test]
fn certificate_requests_are_new_with_pins_and_renewals_when_the_keys_stay() {
    let h = held();
    let claimed = data(&h, Phase::Claimed, true);
    match StepRequest::build(Step::RequestCertificates, holding(&h, &claimed)).unwrap() {
        StepRequest::RequestCertificates {
            serial,
            requests: Requests::New(pins),
        } => {
            assert_eq!(serial, h.serial);
            assert!(Arc::ptr_eq(&pins, &h.pins));
        }
        other => panic!("{other:?}"),
    }
    // Keeping the keys asks for renewals even if the job held PINs.
    let kept = Holding {
        keeps_keys: true,
        ..holding(&h, &claimed)
    };
    assert!(matches!(
        StepRequest::build(Step::RequestCertificates, kept),
        Ok(StepRequest::RequestCertificates {
            requests: Requests::Renewal,
            ..
        })
    ));
    let claimed_without = data(&h, Phase::Claimed, false);
    let kept_no_pins = Holding {
        keeps_keys: true,
        ..holding(&h, &claimed_without)
    };
    assert!(StepRequest::build(Step::RequestCertificates, kept_no_pins).is_ok());
    let no_serial = Holding {
        serial: None,
        ..holding(&h, &claimed)
    };
    assert_eq!(
        missing(Step::RequestCertificates, no_serial),
        "PINs or token serial"
    );
    assert_eq!(
        missing(Step::RequestCertificates, holding(&h, &claimed_without)),
        "PINs or token serial"
    );
}

#[test]
fn certificates_verified_earlier_are_used_and_a_bundle_alone_is_verified_again() {
    let h = held();
    let all = everything(&h);
    let issued = data(&h, Phase::Issued, true);
    for step in [Step::VerifyCertificates, Step::Install, Step::Bind] {
        let certificates_of = |job| match StepRequest::build(step, job).unwrap() {
            StepRequest::VerifyCertificates { certificates }
            | StepRequest::Install { certificates, .. }
            | StepRequest::Bind { certificates, .. } => certificates,
            other => panic!("{step} built as {other:?}"),
        };
        let certificates = certificates_of(holding(&h, &all));
        assert!(matches!(certificates, Certificates::Verified(v) if Arc::ptr_eq(&v, &h.verified)));
        // After a restart the job is issued again: its bundle is verified first.
        let certificates = certificates_of(holding(&h, &issued));
        assert!(matches!(certificates, Certificates::ToVerify(b) if b == h.certs));
        // Before the platform issued, there is nothing to verify (a queued job has no PINs
        // either, which install and bind ask for first).
        for phase in [Phase::Claimed, Phase::Requested] {
            let before = data(&h, phase, true);
            assert_eq!(missing(step, holding(&h, &before)), "certificates");
        }
    }
    assert_eq!(
        missing(Step::VerifyCertificates, holding(&h, &JobData::Queued)),
        "certificates"
    );
    let requested = data(&h, Phase::Requested, true);
    assert_eq!(
        missing(Step::RemoveOldCertificates, holding(&h, &requested)),
        "certificates"
    );
    for job in [&issued, &all] {
        assert!(matches!(
            StepRequest::build(Step::RemoveOldCertificates, holding(&h, job)),
            Ok(StepRequest::RemoveOldCertificates { certs }) if certs == h.certs
        ));
    }
}

#[test]
fn install_and_bind_log_in_with_the_pins_or_not_at_all_when_the_keys_stay() {
    let h = held();
    let all = everything(&h);
    let without = data(&h, Phase::Verified, false);
    for step in [Step::Install, Step::Bind] {
        let login = |job| match StepRequest::build(step, job).unwrap() {
            StepRequest::Install { login, .. } | StepRequest::Bind { login, .. } => login,
            other => panic!("{step} built as {other:?}"),
        };
        assert!(matches!(login(holding(&h, &all)), Login::Pins(p) if Arc::ptr_eq(&p, &h.pins)));
        let kept = Holding {
            keeps_keys: true,
            ..holding(&h, &without)
        };
        let kept_login = login(kept);
        assert!(matches!(kept_login, Login::KeptKeys));
        assert!(kept_login.pins().is_none());
        assert_eq!(missing(step, holding(&h, &without)), "PINs");
    }
}

#[test]
fn a_missing_piece_fails_the_step_as_a_retryable_internal_error_naming_it_and_the_phase() {
    let failure = StepFailure::from(Missing {
        step: Step::Install,
        what: "certificates",
        found: Phase::Requested,
    });
    let StepFailure::Failed(error) = failure else {
        panic!("a missing piece is a failure, not a removal")
    };
    assert_eq!(error.code, codes::INTERNAL);
    assert_eq!(
        error.message,
        "certificates missing for step install (job data requested)"
    );
    assert!(error.retryable);
}
