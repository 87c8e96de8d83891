//! Unit tests of a job's data phases: each transition from the phases it starts from, and
//! the error naming the expected and the found phase from the others.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use ukey_protocol::V1;
use ukey_protocol::bundle::{CertBundle, CsrBundle};
use ukey_protocol::ids::{JobId, TokenSerial};

use super::{JobData, Phase, PhaseError, Transition, advance};
use crate::steps::Pins;

fn csr(serial: &str) -> CsrBundle {
    CsrBundle {
        v: V1,
        job_id: JobId::new("j-1").unwrap(),
        token_serial: TokenSerial::new(serial).unwrap(),
        requests: Vec::new(),
    }
}

fn certs() -> CertBundle {
    CertBundle {
        certificates: Vec::new(),
        ca_chain: Vec::new(),
    }
}

fn ok(t: Transition) -> JobData {
    match t {
        Ok(data) => data,
        Err(r) => panic!("{}", r.error),
    }
}

/// The error of a refused transition, and that the phase came back unchanged.
fn refused(t: Transition, phase: Phase) -> PhaseError {
    match t {
        Ok(data) => panic!("went to {} from {phase}", data.phase()),
        Err(r) => {
            assert_eq!(r.unchanged.phase(), phase);
            assert_eq!(r.error.found, phase);
            r.error
        }
    }
}

#[test]
fn a_job_goes_from_queued_to_verified_carrying_what_it_got() {
    let pins = Arc::new(Pins::generate(6, 16).unwrap());
    let data = ok(JobData::Queued.claim(Some(Arc::clone(&pins))));
    assert_eq!(data.phase(), Phase::Claimed);
    assert!(Arc::ptr_eq(data.pins().unwrap(), &pins));
    assert!(data.csr().is_none());
    let data = ok(data.request(csr("T1")));
    assert_eq!(data.phase(), Phase::Requested);
    assert_eq!(data.csr(), Some(&csr("T1")));
    let data = ok(data.issue(certs()));
    assert_eq!(data.phase(), Phase::Issued);
    let verified = Arc::new(Vec::new());
    let data = ok(data.verify(Arc::clone(&verified)));
    match &data {
        JobData::Verified {
            pins: Some(p),
            csr: c,
            certs: b,
            verified: v,
        } => {
            assert!(Arc::ptr_eq(p, &pins));
            assert_eq!(c, &csr("T1"));
            assert_eq!(b, &certs());
            assert!(Arc::ptr_eq(v, &verified));
        }
        _ => panic!("not verified with everything: {}", data.phase()),
    }
    // A later step verifies again.
    assert_eq!(
        ok(data.verify(Arc::new(Vec::new()))).phase(),
        Phase::Verified
    );
}

#[test]
fn a_job_that_sets_no_pins_is_claimed_without() {
    let data = ok(JobData::Queued.claim(None));
    assert!(data.pins().is_none());
    let data = ok(ok(data.request(csr("T1"))).issue(certs()));
    assert_eq!(data.phase(), Phase::Issued);
    assert!(data.pins().is_none());
}

#[test]
fn a_claim_made_again_and_requests_made_again_replace_the_old_ones() {
    let first = Arc::new(Pins::generate(6, 16).unwrap());
    let second = Arc::new(Pins::generate(6, 16).unwrap());
    let data = ok(ok(JobData::Queued.claim(Some(first))).claim(Some(Arc::clone(&second))));
    assert!(Arc::ptr_eq(data.pins().unwrap(), &second));
    let data = ok(ok(data.request(csr("T1"))).request(csr("T2")));
    assert_eq!(data.csr(), Some(&csr("T2")));
    assert!(Arc::ptr_eq(data.pins().unwrap(), &second));
}

#[test]
fn a_transition_from_another_phase_names_both_and_keeps_the_data() {
    let e = refused(JobData::Queued.request(csr("T1")), Phase::Queued);
    assert_eq!(
        e.to_string(),
        "job data: request expects the claimed or requested phase, found queued"
    );
    refused(JobData::Queued.issue(certs()), Phase::Queued);
    refused(JobData::Queued.verify(Arc::new(Vec::new())), Phase::Queued);
    let claimed = ok(JobData::Queued.claim(None));
    let e = refused(claimed.issue(certs()), Phase::Claimed);
    assert_eq!(e.transition, "issue");
    assert_eq!(e.expected, "requested");
    let requested = ok(ok(JobData::Queued.claim(None)).request(csr("T1")));
    refused(requested.verify(Arc::new(Vec::new())), Phase::Requested);
    let issued = ok(ok(ok(JobData::Queued.claim(None)).request(csr("T1"))).issue(certs()));
    // Certificates are issued once; a claim never comes after the requests.
    refused(issued.clone().issue(certs()), Phase::Issued);
    refused(issued.clone().claim(None), Phase::Issued);
    refused(issued.request(csr("T2")), Phase::Issued);
}

#[test]
fn advance_replaces_the_data_or_leaves_it_as_it_was() {
    let mut data = JobData::Queued;
    let e = advance(&mut data, |d| d.issue(certs())).unwrap_err();
    assert_eq!(e.found, Phase::Queued);
    assert_eq!(data.phase(), Phase::Queued);
    advance(&mut data, |d| d.claim(None)).unwrap();
    advance(&mut data, |d| d.request(csr("T1"))).unwrap();
    assert_eq!(data.phase(), Phase::Requested);
    // A refused transition keeps the CSR bundle the job had.
    advance(&mut data, |d| d.verify(Arc::new(Vec::new()))).unwrap_err();
    assert_eq!(data.csr(), Some(&csr("T1")));
}
