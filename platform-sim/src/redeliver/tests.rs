#![allow(clippy::unwrap_used, clippy::expect_used)]

use time::OffsetDateTime;
use ukey_protocol::{EventId, ExecutionState, JobKind, StepEvent, V1};

use super::*;
use crate::jobs::{JobDraft, build_job};

fn station(s: &str) -> StationId {
    StationId::new(s).unwrap()
}

fn event(job: &JobId, seq: u64, step: Step, state: ExecutionState) -> StepEvent {
    StepEvent {
        v: V1,
        event_id: EventId::new(format!("{job}-{seq}")).unwrap(),
        job_id: job.clone(),
        seq,
        step,
        state,
        token_serial: None,
        error: None,
        data: None,
        started_at: None,
        at: OffsetDateTime::now_utc(),
    }
}

/// A dispatched `new` job of `to` with its envelope owed.
fn dispatched(records: &mut Records, to: &str) -> JobId {
    let draft = JobDraft::new(JobKind::New, &station(to)).unwrap();
    let doc = build_job(&draft, OffsetDateTime::now_utc(), None).unwrap();
    let id = doc.job_id.clone();
    records.dispatch_order.push(id.clone());
    let job = records.job_mut(&id);
    job.station_id = Some(station(to));
    job.document = Some(doc);
    job.job_payload = Some(format!("envelope of {id}").into_bytes());
    id
}

fn kinds(owed: &[Owed]) -> Vec<(&'static str, JobId)> {
    owed.iter()
        .map(|o| {
            let kind = match o {
                Owed::Job { .. } => "job",
                Owed::Certs { .. } => "certs",
                Owed::Cancel { .. } => "cancel",
            };
            (kind, o.job_id().clone())
        })
        .collect()
}

#[test]
fn a_job_is_owed_until_its_first_event_whatever_it_says() {
    let mut r = Records::default();
    let a = dispatched(&mut r, "desk-01");
    let b = dispatched(&mut r, "desk-01");
    assert_eq!(
        kinds(&owed(&r, None)),
        [("job", a.clone()), ("job", b.clone())],
        "in dispatch order"
    );
    // The first event, even out of order or a rejection, shows the station has the job.
    r.job_mut(&a)
        .events
        .push(event(&a, 2, Step::Claim, ExecutionState::InProgress));
    r.job_mut(&b)
        .events
        .push(event(&b, 1, Step::Receive, ExecutionState::Rejected));
    assert!(owed(&r, None).is_empty());
}

#[test]
fn the_payload_owed_is_the_one_published() {
    let mut r = Records::default();
    let a = dispatched(&mut r, "desk-01");
    let owed = owed(&r, None);
    assert_eq!(
        owed,
        [Owed::Job {
            station: station("desk-01"),
            job_id: a.clone(),
            payload: format!("envelope of {a}").into_bytes(),
        }]
    );
}

#[test]
fn only_the_named_station_is_served() {
    let mut r = Records::default();
    let a = dispatched(&mut r, "desk-01");
    let b = dispatched(&mut r, "desk-02");
    assert_eq!(kinds(&owed(&r, Some(&station("desk-01")))), [("job", a)]);
    assert_eq!(kinds(&owed(&r, Some(&station("desk-02")))), [("job", b)]);
    assert!(owed(&r, Some(&station("desk-03"))).is_empty());
}

#[test]
fn a_forged_dispatch_is_never_owed() {
    let mut r = Records::default();
    let a = dispatched(&mut r, "desk-01");
    r.job_mut(&a).job_payload = None;
    assert!(owed(&r, None).is_empty());
}

#[test]
fn certificates_are_owed_until_the_station_is_past_the_request() {
    let mut r = Records::default();
    let a = dispatched(&mut r, "desk-01");
    for (seq, step) in [
        (1, Step::Receive),
        (2, Step::Claim),
        (3, Step::Initialize),
        (4, Step::GenerateKeys),
        (5, Step::RequestCertificates),
    ] {
        let state = if seq == 1 {
            ExecutionState::Queued
        } else {
            ExecutionState::InProgress
        };
        r.job_mut(&a).events.push(event(&a, seq, step, state));
    }
    assert!(owed(&r, None).is_empty(), "nothing answered yet");
    r.job_mut(&a).cert_payload = Some(b"certs".to_vec());
    assert_eq!(kinds(&owed(&r, None)), [("certs", a.clone())]);
    r.job_mut(&a).events.push(event(
        &a,
        6,
        Step::VerifyCertificates,
        ExecutionState::InProgress,
    ));
    assert!(owed(&r, None).is_empty());
}

#[test]
fn certificates_are_not_owed_to_a_job_that_ended() {
    let mut r = Records::default();
    let a = dispatched(&mut r, "desk-01");
    r.job_mut(&a)
        .events
        .push(event(&a, 1, Step::Receive, ExecutionState::Queued));
    r.job_mut(&a).cert_payload = Some(b"certs".to_vec());
    assert_eq!(kinds(&owed(&r, None)), [("certs", a.clone())]);
    r.job_mut(&a).events.push(event(
        &a,
        6,
        Step::RequestCertificates,
        ExecutionState::TimedOut,
    ));
    assert!(owed(&r, None).is_empty());
}

#[test]
fn a_cancel_is_owed_until_the_job_ends() {
    let mut r = Records::default();
    let a = dispatched(&mut r, "desk-01");
    r.job_mut(&a).cancel_payload = Some(b"cancel".to_vec());
    // A job never received is owed with its cancel, job first.
    assert_eq!(
        kinds(&owed(&r, None)),
        [("job", a.clone()), ("cancel", a.clone())]
    );
    r.job_mut(&a)
        .events
        .push(event(&a, 1, Step::Receive, ExecutionState::Queued));
    assert_eq!(kinds(&owed(&r, None)), [("cancel", a.clone())]);
    r.job_mut(&a)
        .events
        .push(event(&a, 2, Step::Receive, ExecutionState::Canceled));
    assert!(owed(&r, None).is_empty());
}
