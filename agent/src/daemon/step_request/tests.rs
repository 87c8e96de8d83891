//! Unit tests of building step requests from what a job holds: what each step carries, and
//! the error naming what is missing.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use ukey_protocol::bundle::CertBundle;
use ukey_protocol::codes;
use ukey_protocol::event::Step;
use ukey_protocol::ids::TokenSerial;

use super::{Certificates, JobData, Login, Missing, Requests, StepRequest, Verified};
use crate::steps::{Pins, StepFailure};

struct Held {
    pins: Arc<Pins>,
    serial: TokenSerial,
    certs: CertBundle,
    verified: Verified,
}

fn held() -> Held {
    Held {
        pins: Arc::new(Pins::generate(6, 16).unwrap()),
        serial: TokenSerial::new("T1").unwrap(),
        certs: CertBundle {
            certificates: Vec::new(),
            ca_chain: Vec::new(),
        },
        verified: Arc::new(Vec::new()),
    }
}

/// Everything a job can hold.
fn all(h: &Held) -> JobData<'_> {
    JobData {
        pins: Some(&h.pins),
        serial: Some(&h.serial),
        certs: Some(&h.certs),
        verified: Some(&h.verified),
        keeps_keys: false,
    }
}

/// A job just claimed: nothing but (maybe) its PINs.
fn nothing() -> JobData<'static> {
    JobData {
        pins: None,
        serial: None,
        certs: None,
        verified: None,
        keeps_keys: false,
    }
}

fn missing(step: Step, data: JobData<'_>) -> &'static str {
    match StepRequest::build(step, data) {
        Err(Missing { step: s, what }) => {
            assert_eq!(s, step);
            what
        }
        Ok(r) => panic!("{step} built without its data: {r:?}"),
    }
}

#[test]
fn every_step_is_built_for_the_step_it_names() {
    let h = held();
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
        let request = StepRequest::build(step, all(&h)).unwrap();
        assert_eq!(request.step(), step);
        assert!(!matches!(request, StepRequest::Unsupported(_)), "{step}");
    }
}

#[test]
fn steps_that_use_the_pins_carry_them_and_fail_without() {
    let h = held();
    for step in [Step::Initialize, Step::GenerateKeys, Step::Activate] {
        match StepRequest::build(step, all(&h)).unwrap() {
            StepRequest::Initialize { pins }
            | StepRequest::GenerateKeys { pins }
            | StepRequest::Activate { pins } => assert!(Arc::ptr_eq(&pins, &h.pins)),
            other => panic!("{step} built as {other:?}"),
        }
        assert_eq!(missing(step, nothing()), "PINs");
        // Keeping the keys never stands in for PINs a step writes with.
        let kept = JobData {
            keeps_keys: true,
            ..nothing()
        };
        assert_eq!(missing(step, kept), "PINs");
    }
    // Steps that read with the station's keys need nothing of the job.
    assert!(matches!(
        StepRequest::build(Step::ResetPin, nothing()),
        Ok(StepRequest::ResetPin)
    ));
    assert!(matches!(
        StepRequest::build(Step::ReadKeys, nothing()),
        Ok(StepRequest::ReadKeys)
    ));
}

#[test]
fn certificate_requests_are_new_with_pins_and_renewals_when_the_keys_stay() {
    let h = held();
    match StepRequest::build(Step::RequestCertificates, all(&h)).unwrap() {
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
    let kept = JobData {
        keeps_keys: true,
        ..all(&h)
    };
    assert!(matches!(
        StepRequest::build(Step::RequestCertificates, kept),
        Ok(StepRequest::RequestCertificates {
            requests: Requests::Renewal,
            ..
        })
    ));
    let kept_no_pins = JobData {
        pins: None,
        serial: Some(&h.serial),
        keeps_keys: true,
        ..nothing()
    };
    assert!(StepRequest::build(Step::RequestCertificates, kept_no_pins).is_ok());
    let no_serial = JobData {
        serial: None,
        ..all(&h)
    };
    assert_eq!(
        missing(Step::RequestCertificates, no_serial),
        "PINs or token serial"
    );
    let no_pins = JobData {
        pins: None,
        ..all(&h)
    };
    assert_eq!(
        missing(Step::RequestCertificates, no_pins),
        "PINs or token serial"
    );
}

#[test]
fn certificates_verified_earlier_are_used_and_a_bundle_alone_is_verified_again() {
    let h = held();
    for step in [Step::VerifyCertificates, Step::Install, Step::Bind] {
        let certificates = match StepRequest::build(step, all(&h)).unwrap() {
            StepRequest::VerifyCertificates { certificates }
            | StepRequest::Install { certificates, .. }
            | StepRequest::Bind { certificates, .. } => certificates,
            other => panic!("{step} built as {other:?}"),
        };
        assert!(matches!(certificates, Certificates::Verified(v) if Arc::ptr_eq(&v, &h.verified)));
        let after_restart = JobData {
            verified: None,
            ..all(&h)
        };
        let certificates = match StepRequest::build(step, after_restart).unwrap() {
            StepRequest::VerifyCertificates { certificates }
            | StepRequest::Install { certificates, .. }
            | StepRequest::Bind { certificates, .. } => certificates,
            other => panic!("{step} built as {other:?}"),
        };
        assert!(matches!(certificates, Certificates::ToVerify(b) if b == h.certs));
        let no_bundle = JobData {
            certs: None,
            verified: None,
            ..all(&h)
        };
        assert_eq!(missing(step, no_bundle), "certificates");
    }
    assert_eq!(
        missing(Step::RemoveOldCertificates, nothing()),
        "certificates"
    );
    // Verification and installation want the bundle even with verified certificates;
    // the bind report needs only the verified ones.
    let verified_only = JobData {
        certs: None,
        ..all(&h)
    };
    assert_eq!(missing(Step::Install, verified_only), "certificates");
    assert!(StepRequest::build(Step::Bind, verified_only).is_ok());
}

#[test]
fn install_and_bind_log_in_with_the_pins_or_not_at_all_when_the_keys_stay() {
    let h = held();
    for step in [Step::Install, Step::Bind] {
        let login = |data| match StepRequest::build(step, data).unwrap() {
            StepRequest::Install { login, .. } | StepRequest::Bind { login, .. } => login,
            other => panic!("{step} built as {other:?}"),
        };
        assert!(matches!(login(all(&h)), Login::Pins(p) if Arc::ptr_eq(&p, &h.pins)));
        let kept = JobData {
            pins: None,
            keeps_keys: true,
            ..all(&h)
        };
        let kept_login = login(kept);
        assert!(matches!(kept_login, Login::KeptKeys));
        assert!(kept_login.pins().is_none());
        let no_pins = JobData {
            pins: None,
            ..all(&h)
        };
        assert_eq!(missing(step, no_pins), "PINs");
    }
}

#[test]
fn a_missing_piece_fails_the_step_as_a_retryable_internal_error_naming_it() {
    let failure = StepFailure::from(Missing {
        step: Step::Install,
        what: "PINs",
    });
    let StepFailure::Failed(error) = failure else {
        panic!("a missing piece is a failure, not a removal")
    };
    assert_eq!(error.code, codes::INTERNAL);
    assert_eq!(error.message, "PINs missing for step install");
    assert!(error.retryable);
}
