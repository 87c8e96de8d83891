#![allow(clippy::unwrap_used, clippy::expect_used)]

use time::OffsetDateTime;
use ukey_protocol::{EventId, JobKind, StationId, StepError, V1};

use super::*;
use crate::jobs::{JobDraft, build_job};

/// The events of a `new` job that succeeded, seq 1..=10.
fn happy() -> Vec<(Step, ExecutionState)> {
    use ExecutionState::*;
    vec![
        (Step::Receive, Queued),
        (Step::Claim, InProgress),
        (Step::Initialize, InProgress),
        (Step::GenerateKeys, InProgress),
        (Step::RequestCertificates, InProgress),
        (Step::VerifyCertificates, InProgress),
        (Step::Install, InProgress),
        (Step::Activate, InProgress),
        (Step::Bind, InProgress),
        (Step::Bind, Succeeded),
    ]
}

fn event(job: &JobId, id: &str, seq: u64, (step, state): (Step, ExecutionState)) -> StepEvent {
    StepEvent {
        v: V1,
        event_id: EventId::new(id).unwrap(),
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

/// A record of a dispatched `new` job that received `arrivals` (seq, event id suffix) in
/// that order, recorded the way the client records them.
fn record(arrivals: &[(u64, &str)], steps: &[(Step, ExecutionState)]) -> JobRecord {
    let station = StationId::new("desk-01").unwrap();
    let draft = JobDraft::new(JobKind::New, &station).unwrap();
    let doc = build_job(&draft, OffsetDateTime::now_utc(), None).unwrap();
    let mut job = JobRecord::new(doc.job_id.clone());
    job.document = Some(doc);
    for &(seq, suffix) in arrivals {
        let id = format!("e{seq}{suffix}");
        if job.events.iter().any(|e| e.event_id.as_str() == id) {
            job.duplicate_events += 1;
            continue;
        }
        let e = event(&job.job_id, &id, seq, steps[(seq - 1) as usize]);
        let at = job.events.partition_point(|x| x.seq <= e.seq);
        job.arrivals.push(seq);
        job.events.insert(at, e);
    }
    job
}

fn in_order(n: u64) -> Vec<(u64, &'static str)> {
    (1..=n).map(|s| (s, "")).collect()
}

#[test]
fn a_clean_job_is_clean() {
    let l = JobLedger::of(&record(&in_order(10), &happy()));
    assert!(l.is_clean(), "{l}");
    assert_eq!(l.state, Some(ExecutionState::Succeeded));
    assert_eq!((l.events, l.repeats, l.out_of_order), (10, 0, 0));
}

#[test]
fn out_of_order_arrivals_are_counted_and_still_checked() {
    // 1, 2, 5, 3, 4, 6..10: two events overtaken by a re-sent later one.
    let mut arrivals = vec![(1, ""), (2, ""), (5, ""), (3, ""), (4, "")];
    arrivals.extend((6..=10).map(|s| (s, "")));
    let l = JobLedger::of(&record(&arrivals, &happy()));
    assert!(l.is_clean(), "{l}");
    assert_eq!(l.out_of_order, 2);

    // A forbidden transition between two events that arrived out of order is found.
    let mut steps = happy();
    steps[3] = (Step::GenerateKeys, ExecutionState::Queued);
    let l = JobLedger::of(&record(&arrivals, &steps));
    assert!(
        l.bad_transitions
            .iter()
            .any(|t| t.contains("from in-progress to queued")),
        "{l}"
    );
}

#[test]
fn repeats_are_not_duplicates() {
    let mut arrivals = in_order(10);
    arrivals.insert(4, (3, ""));
    arrivals.push((10, ""));
    let l = JobLedger::of(&record(&arrivals, &happy()));
    assert!(l.is_clean(), "{l}");
    assert_eq!(l.repeats, 2);
    assert!(l.duplicated.is_empty());
}

#[test]
fn a_seq_under_two_event_ids_is_a_duplicate() {
    let mut arrivals = in_order(10);
    arrivals.push((6, "again"));
    let l = JobLedger::of(&record(&arrivals, &happy()));
    assert_eq!(l.duplicated, [6]);
    assert!(!l.is_clean());
    assert!(l.lost.is_empty());
}

#[test]
fn gaps_are_lost_events_and_their_pairs_are_not_judged() {
    let arrivals: Vec<_> = [1, 2, 3, 6, 7, 8, 9, 10].map(|s| (s, "")).into();
    let l = JobLedger::of(&record(&arrivals, &happy()));
    assert_eq!(l.lost, [4, 5]);
    assert!(l.duplicated.is_empty());
    assert!(l.bad_transitions.is_empty(), "{l}");
    assert!(!l.is_clean());
}

#[test]
fn forbidden_transitions_are_named() {
    // Starts in progress; goes back in the plan; goes on after the end.
    let mut steps = happy();
    steps[0] = (Step::Receive, ExecutionState::InProgress);
    steps[5] = (Step::Initialize, ExecutionState::InProgress);
    steps.push((Step::Bind, ExecutionState::InProgress));
    let l = JobLedger::of(&record(&in_order(11), &steps));
    let all = l.bad_transitions.join("\n");
    assert!(all.contains("first event"), "{all}");
    assert!(
        all.contains("goes back from step request-certificates to initialize"),
        "{all}"
    );
    assert!(all.contains("after the terminal succeeded event"), "{all}");
    assert_eq!(l.bad_transitions.len(), 3, "{all}");
}

#[test]
fn the_totals_add_up_over_jobs() {
    let mut records = Records::default();
    let good = record(&in_order(10), &happy());
    let mut failed_steps = happy();
    failed_steps[4] = (Step::RequestCertificates, ExecutionState::Failed);
    let mut failed = record(
        &[(1, ""), (2, ""), (5, ""), (4, ""), (3, "")],
        &failed_steps,
    );
    failed.events[4].error = Some(StepError {
        code: ukey_protocol::ErrorCode::new("certificates-rejected").unwrap(),
        message: "no".to_owned(),
        retryable: false,
    });
    let gappy = record(&[(1, ""), (3, ""), (3, "x")], &happy());
    for job in [good, failed, gappy] {
        records.dispatch_order.push(job.job_id.clone());
        records.jobs.insert(job.job_id.clone(), job);
    }
    let ledger = records.ledger();
    assert_eq!(ledger.dispatched, 3);
    assert_eq!(ledger.succeeded(), 1);
    assert_eq!(
        ledger.failed(),
        [("failed certificates-rejected".to_owned(), 1)].into()
    );
    assert_eq!(ledger.lost(), 1);
    assert_eq!(ledger.duplicated(), 1);
    assert_eq!(ledger.out_of_order(), 2);
    assert!(!ledger.is_clean());
    let text = ledger.to_string();
    assert!(text.contains("events lost 1, duplicated 1"), "{text}");
}
