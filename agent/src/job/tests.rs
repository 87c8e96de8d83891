//! Unit tests of the job machine: every transition, without a token or a broker.

#![allow(clippy::unwrap_used, clippy::expect_used)]
use super::*;

fn job(kind: JobKind) -> JobMachine {
    JobMachine::new(JobId::new("job-1").unwrap(), kind, false)
}

fn serial() -> TokenSerial {
    TokenSerial::new("SIM0000000000001").unwrap()
}

fn ok(step: Step) -> Input {
    Input::StepSucceeded {
        step,
        output: StepOutput::Done,
    }
}

fn reports(actions: &[Action]) -> Vec<(Step, ExecutionState)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Report(r) => Some((r.step, r.state)),
            _ => None,
        })
        .collect()
}

fn executes(actions: &[Action]) -> Vec<Step> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Execute(s) => Some(*s),
            _ => None,
        })
        .collect()
}

#[test]
fn new_job_runs_every_step_and_succeeds_on_the_platforms_ack() {
    let mut m = job(JobKind::New);
    assert_eq!(
        reports(&[m.accepted()]),
        vec![(Step::Receive, ExecutionState::Queued)]
    );
    let a = m
        .on(Input::Claimed {
            serial: Some(serial()),
        })
        .unwrap();
    assert_eq!(reports(&a), vec![(Step::Claim, ExecutionState::InProgress)]);
    assert_eq!(executes(&a), vec![Step::Initialize]);
    let a = m.on(ok(Step::Initialize)).unwrap();
    assert_eq!(executes(&a), vec![Step::GenerateKeys]);
    let a = m.on(ok(Step::GenerateKeys)).unwrap();
    assert_eq!(executes(&a), vec![Step::RequestCertificates]);
    let a = m.on(ok(Step::RequestCertificates)).unwrap();
    assert!(executes(&a).is_empty(), "waits for the platform");
    assert!(a.contains(&Action::Arm(Timer::Certificates)));
    let a = m
        .on(Input::CertificatesArrived {
            bundle: sample_bundle(),
        })
        .unwrap();
    assert_eq!(executes(&a), vec![Step::VerifyCertificates]);
    assert!(a.contains(&Action::Disarm(Timer::Certificates)));
    for (done, next) in [
        (Step::VerifyCertificates, Step::Install),
        (Step::Install, Step::Activate),
        (Step::Activate, Step::Bind),
    ] {
        assert_eq!(executes(&m.on(ok(done)).unwrap()), vec![next]);
    }
    let a = m.on(ok(Step::Bind)).unwrap();
    assert_eq!(reports(&a), vec![(Step::Bind, ExecutionState::InProgress)]);
    assert!(a.contains(&Action::Arm(Timer::FinalAck)));
    assert!(
        a.contains(&Action::Release),
        "the finished token is released"
    );
    assert!(!m.is_finished());
    let a = m.on(Input::FinalAcknowledged).unwrap();
    assert_eq!(reports(&a), vec![(Step::Bind, ExecutionState::Succeeded)]);
    assert!(!a.contains(&Action::Release), "released once, at bind");
    assert_eq!(m.state(), &JobState::Finished(ExecutionState::Succeeded));
}

fn sample_bundle() -> CertBundle {
    CertBundle {
        certificates: Vec::new(),
        ca_chain: Vec::new(),
    }
}

#[test]
fn sequence_numbers_and_event_ids_are_stable_across_replay() {
    let inputs = vec![
        Input::Claimed {
            serial: Some(serial()),
        },
        ok(Step::Initialize),
        Input::TokenRemoved {
            step: Step::GenerateKeys,
        },
        Input::TokenReturned,
        ok(Step::GenerateKeys),
    ];
    let run = || {
        let mut m = job(JobKind::New);
        let mut ids = vec![];
        if let Action::Report(r) = m.accepted() {
            ids.push((r.seq, r.event_id));
        }
        for i in inputs.clone() {
            for a in m.on(i).unwrap() {
                if let Action::Report(r) = a {
                    ids.push((r.seq, r.event_id));
                }
            }
        }
        (ids, m.state().clone())
    };
    let (first, state1) = run();
    let (second, state2) = run();
    assert_eq!(first, second);
    assert_eq!(state1, state2);
    let seqs: Vec<u64> = first.iter().map(|(s, _)| *s).collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());
    let unique: std::collections::BTreeSet<_> = first.iter().map(|(_, id)| id.clone()).collect();
    assert_eq!(
        unique.len(),
        first.len(),
        "event ids are unique within a job"
    );
    let other = JobMachine::event_id(&JobId::new("job-2").unwrap(), 1);
    assert!(!unique.contains(&other), "and across jobs");
}

#[test]
fn pulled_token_parks_then_resumes_the_same_step() {
    let mut m = job(JobKind::New);
    m.on(Input::Claimed {
        serial: Some(serial()),
    })
    .unwrap();
    let a = m
        .on(Input::TokenRemoved {
            step: Step::Initialize,
        })
        .unwrap();
    assert!(a.contains(&Action::Arm(Timer::TokenReturn)));
    assert!(matches!(m.state(), JobState::Parked { .. }));
    let parked = a.iter().find_map(|a| match a {
        Action::Report(r) => r.data.clone(),
        _ => None,
    });
    assert!(matches!(parked, Some(StepData::Parked { .. })));
    let a = m.on(Input::TokenReturned).unwrap();
    assert_eq!(executes(&a), vec![Step::Initialize]);
}

#[test]
fn parked_job_fails_retryable_when_the_token_stays_away() {
    let mut m = job(JobKind::New);
    m.on(Input::Claimed {
        serial: Some(serial()),
    })
    .unwrap();
    m.on(Input::TokenRemoved {
        step: Step::Initialize,
    })
    .unwrap();
    let a = m
        .on(Input::TimedOut {
            timer: Timer::TokenReturn,
        })
        .unwrap();
    let Action::Report(r) = &a[0] else {
        panic!("{a:?}")
    };
    assert_eq!(r.state, ExecutionState::Failed);
    assert!(r.error.as_ref().unwrap().retryable);
    assert!(a.contains(&Action::Release));
}

#[test]
fn failure_ends_the_job_with_the_steps_error() {
    let mut m = job(JobKind::New);
    m.on(Input::Claimed {
        serial: Some(serial()),
    })
    .unwrap();
    m.on(ok(Step::Initialize)).unwrap();
    let error = StepError {
        code: ErrorCode::new("attribute-check").unwrap(),
        message: "CKA_NEVER_EXTRACTABLE is false".into(),
        retryable: false,
    };
    let a = m
        .on(Input::StepFailed {
            step: Step::GenerateKeys,
            error: error.clone(),
        })
        .unwrap();
    let Action::Report(r) = &a[0] else {
        panic!("{a:?}")
    };
    assert_eq!(
        (r.step, r.state),
        (Step::GenerateKeys, ExecutionState::Failed)
    );
    assert_eq!(r.error.as_ref(), Some(&error));
    assert!(
        m.on(ok(Step::RequestCertificates)).is_err(),
        "nothing after the end"
    );
}

#[test]
fn cancel_waits_for_the_running_step() {
    let mut m = job(JobKind::New);
    m.on(Input::Claimed {
        serial: Some(serial()),
    })
    .unwrap();
    let a = m
        .on(Input::Cancel {
            reason: "order withdrawn".into(),
        })
        .unwrap();
    assert!(a.is_empty(), "the token write in progress is not cut off");
    let a = m.on(ok(Step::Initialize)).unwrap();
    assert!(executes(&a).is_empty());
    assert_eq!(
        reports(&a),
        vec![
            (Step::Initialize, ExecutionState::InProgress),
            (Step::Initialize, ExecutionState::Canceled)
        ]
    );
}

/// A `new` job that sent its CSRs and waits for the platform's certificates.
fn waiting_for_certificates() -> JobMachine {
    let mut m = job(JobKind::New);
    m.on(Input::Claimed {
        serial: Some(serial()),
    })
    .unwrap();
    for step in [
        Step::Initialize,
        Step::GenerateKeys,
        Step::RequestCertificates,
    ] {
        m.on(ok(step)).unwrap();
    }
    assert!(matches!(m.state(), JobState::AwaitingCertificates { .. }));
    m
}

#[test]
fn cancel_while_waiting_disarms_and_ends() {
    let mut m = waiting_for_certificates();
    let a = m.on(Input::Cancel { reason: "x".into() }).unwrap();
    assert_eq!(a[0], Action::Disarm(Timer::Certificates));
    assert_eq!(m.state(), &JobState::Finished(ExecutionState::Canceled));
}

#[test]
fn targeted_job_waits_for_its_token_then_times_out() {
    let mut m = job(JobKind::Unlock);
    assert!(m.is_targeted());
    assert!(!job(JobKind::New).is_targeted());
    m.accepted();
    let a = m
        .on(Input::TimedOut {
            timer: Timer::TargetToken,
        })
        .unwrap();
    assert_eq!(reports(&a), vec![(Step::Claim, ExecutionState::TimedOut)]);
    assert!(!a.contains(&Action::Release), "no token was held");
    assert_eq!(m.state(), &JobState::Finished(ExecutionState::TimedOut));

    let mut m = job(JobKind::Unlock);
    m.accepted();
    let a = m
        .on(Input::Claimed {
            serial: Some(serial()),
        })
        .unwrap();
    assert!(a.contains(&Action::Disarm(Timer::TargetToken)));
    assert_eq!(executes(&a), vec![Step::ResetPin]);
    assert!(
        m.on(Input::TimedOut {
            timer: Timer::TargetToken
        })
        .is_err(),
        "a claimed job ignores a late target timer"
    );
    let a = m
        .on(Input::StepSucceeded {
            step: Step::ResetPin,
            output: StepOutput::Done,
        })
        .unwrap();
    assert!(a.contains(&Action::Arm(Timer::FinalAck)));
    let a = m.on(Input::FinalAcknowledged).unwrap();
    assert_eq!(
        reports(&a),
        vec![(Step::ResetPin, ExecutionState::Succeeded)]
    );
}

#[test]
fn rejection_and_timeouts_end_the_wait() {
    let mut m = waiting_for_certificates();
    let mut timed_out = m.clone();
    m.on(Input::CertificatesRejected {
        reason: "order unpaid".into(),
    })
    .unwrap();
    assert_eq!(m.state(), &JobState::Finished(ExecutionState::Failed));
    timed_out
        .on(Input::TimedOut {
            timer: Timer::Certificates,
        })
        .unwrap();
    assert_eq!(
        timed_out.state(),
        &JobState::Finished(ExecutionState::TimedOut)
    );
}

#[test]
fn unexpected_input_names_state_and_expectation_and_changes_nothing() {
    let mut m = job(JobKind::New);
    let err = m.on(ok(Step::Initialize)).unwrap_err();
    assert_eq!(err.state, "queued");
    assert!(err.to_string().contains("expected claimed"), "{err}");
    assert_eq!(m.state(), &JobState::Queued);
    m.on(Input::Claimed {
        serial: Some(serial()),
    })
    .unwrap();
    let err = m.on(ok(Step::Bind)).unwrap_err();
    assert!(
        err.to_string().contains("outcome of step initialize"),
        "{err}"
    );
}

/// A `new` job whose `bind` step is done: the token is finished, the platform's ack is
/// awaited. Returns the bind event's report.
fn bound() -> (JobMachine, Report) {
    let mut m = waiting_for_certificates();
    m.on(Input::CertificatesArrived {
        bundle: sample_bundle(),
    })
    .unwrap();
    for step in [Step::VerifyCertificates, Step::Install, Step::Activate] {
        m.on(ok(step)).unwrap();
    }
    let a = m.on(ok(Step::Bind)).unwrap();
    let report = a
        .iter()
        .find_map(|a| match a {
            Action::Report(r) => Some((**r).clone()),
            _ => None,
        })
        .unwrap();
    (m, report)
}

#[test]
fn a_finished_token_is_released_while_the_platform_has_not_confirmed() {
    let (m, bind) = bound();
    assert_eq!(
        (bind.step, bind.state),
        (Step::Bind, ExecutionState::InProgress)
    );
    assert_eq!(
        m.state(),
        &JobState::AwaitingFinalAck {
            serial: Some(serial()),
            event_id: bind.event_id.clone(),
            overdue: false,
        }
    );
    assert!(!m.holds_token(), "the staff may pull the finished token");
    assert_eq!(m.serial(), Some(&serial()), "the job still names its token");
    assert_eq!(m.unconfirmed(), Some(false));
    assert_eq!(m.current_step(), Some(Step::Bind));
    assert_eq!(waiting_for_certificates().unconfirmed(), None);
}

#[test]
fn a_silent_platform_never_fails_a_finished_token() {
    let (mut m, bind) = bound();
    // The ack is overdue, twice (the timer is armed again after a restart): no new event,
    // no end; the bind event itself is reported again, with its own id and seq.
    for _ in 0..2 {
        let a = m
            .on(Input::TimedOut {
                timer: Timer::FinalAck,
            })
            .unwrap();
        assert_eq!(a, vec![Action::Report(Box::new(bind.clone()))]);
        assert!(!m.is_finished());
        assert_eq!(m.unconfirmed(), Some(true));
        assert!(!m.holds_token());
    }
    // However late, the ack makes the job succeed: the next seq, no timed-out anywhere.
    let a = m.on(Input::FinalAcknowledged).unwrap();
    assert_eq!(a[0], Action::Disarm(Timer::FinalAck));
    let Action::Report(done) = &a[1] else {
        panic!("{a:?}")
    };
    assert_eq!(
        (done.step, done.state, done.seq),
        (Step::Bind, ExecutionState::Succeeded, bind.seq + 1)
    );
    assert_eq!(done.token_serial, Some(serial()));
    assert!(done.error.is_none());
    assert!(
        !a.contains(&Action::Release),
        "the token was released at bind"
    );
    assert_eq!(m.state(), &JobState::Finished(ExecutionState::Succeeded));
    assert_eq!(m.unconfirmed(), None);
    assert!(
        m.on(Input::TimedOut {
            timer: Timer::FinalAck
        })
        .is_err(),
        "a late timer after the end changes nothing"
    );
}

#[test]
fn an_overdue_wait_survives_replay_and_reports_the_final_event_again() {
    // The journal of a job whose ack became overdue, replayed into a fresh machine (as
    // after a restart): same state, and the last record's reports are the bind event,
    // so the restart pushes it to the outbox again.
    let (mut m, bind) = bound();
    let mut inputs = vec![
        Input::Claimed {
            serial: Some(serial()),
        },
        ok(Step::Initialize),
        ok(Step::GenerateKeys),
        ok(Step::RequestCertificates),
        Input::CertificatesArrived {
            bundle: sample_bundle(),
        },
        ok(Step::VerifyCertificates),
        ok(Step::Install),
        ok(Step::Activate),
        ok(Step::Bind),
    ];
    let timeout = Input::TimedOut {
        timer: Timer::FinalAck,
    };
    m.on(timeout.clone()).unwrap();
    inputs.push(timeout);
    let mut replayed = job(JobKind::New);
    let mut last = Vec::new();
    for input in inputs {
        last = replayed.on(input).unwrap();
    }
    assert_eq!(replayed.state(), m.state());
    assert_eq!(replayed.unconfirmed(), Some(true));
    assert_eq!(last, vec![Action::Report(Box::new(bind))]);
    let a = replayed.on(Input::FinalAcknowledged).unwrap();
    assert_eq!(reports(&a), vec![(Step::Bind, ExecutionState::Succeeded)]);
}

#[test]
fn cancel_after_the_token_is_finished_releases_nothing_more() {
    let (mut m, _) = bound();
    m.on(Input::TimedOut {
        timer: Timer::FinalAck,
    })
    .unwrap();
    let a = m
        .on(Input::Cancel {
            reason: "order withdrawn".into(),
        })
        .unwrap();
    assert_eq!(a[0], Action::Disarm(Timer::FinalAck));
    assert_eq!(reports(&a), vec![(Step::Bind, ExecutionState::Canceled)]);
    assert!(!a.contains(&Action::Release));
    assert_eq!(m.state(), &JobState::Finished(ExecutionState::Canceled));
}

#[test]
fn unlock_resets_the_pin_and_waits_for_the_ack() {
    let mut m = job(JobKind::Unlock);
    let a = m
        .on(Input::Claimed {
            serial: Some(serial()),
        })
        .unwrap();
    assert_eq!(executes(&a), vec![Step::ResetPin]);
    let a = m.on(ok(Step::ResetPin)).unwrap();
    assert!(a.contains(&Action::Arm(Timer::FinalAck)));
    assert!(a.contains(&Action::Release));
    // Overdue: the reset-pin event (with the sealed new PIN) goes out again, unchanged.
    let a = m
        .on(Input::TimedOut {
            timer: Timer::FinalAck,
        })
        .unwrap();
    assert_eq!(
        reports(&a),
        vec![(Step::ResetPin, ExecutionState::InProgress)]
    );
    let a = m.on(Input::FinalAcknowledged).unwrap();
    assert_eq!(
        reports(&a),
        vec![(Step::ResetPin, ExecutionState::Succeeded)]
    );
}
