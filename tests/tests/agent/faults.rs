//! The agent under faults: a misbehaving platform, SIGKILL at several steps, a broker crash,
//! a token pulled mid-job, a second agent on the same state folder, a redelivered job.
//!
//! Real Mosquitto, the simulated platform, an hsm-sim rack and the real `ukey-agent` binary.
//! Slow steps come from hsm-sim's per-operation latency; every wait is on the platform's
//! records, the rack's committed state or the agent's log, with a timeout.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::time::Duration;

use hsm_sim::rack::LatencyChange;
use hsm_sim::rack::latency::Op;
use ukey_platform_sim::{JobDraft, JobRecord, Misbehaviour, Times};
use ukey_protocol::event::{ExecutionState, Step, StepData, StepEvent};
use ukey_protocol::ids::{JobId, TokenSerial};
use ukey_protocol::job::JobKind;
use ukey_protocol::keys::KeyAlgorithm;
use ukey_tests::station::{ObjectCount, PRODUCTION_TIMEOUT, Station, assert_events_exactly_once};

/// A finished Ukey: three key pairs and three certificates, nothing more.
const FINISHED: ObjectCount = ObjectCount {
    private_keys: 3,
    public_keys: 3,
    certificates: 3,
    other: 0,
};

/// Waits until `job`'s record satisfies `pred`.
async fn wait_job(
    station: &Station,
    job: &JobId,
    pred: impl FnMut(&JobRecord) -> bool,
) -> JobRecord {
    station
        .platform
        .wait_for(job, pred, PRODUCTION_TIMEOUT)
        .await
        .unwrap_or_else(|e| station.fail_with_log(e))
}

/// Waits until the platform has an event of `step` for `job`.
async fn wait_step(station: &Station, job: &JobId, step: Step) -> JobRecord {
    wait_job(station, job, |r| r.has_step(step)).await
}

/// Waits until `job` reached a terminal state.
async fn wait_end(station: &Station, job: &JobId) -> JobRecord {
    wait_job(station, job, |r| r.state().is_some_and(|s| s.is_terminal())).await
}

/// The events that report the end of a step the token ran say when that step started, and a
/// start is never after its end — also the events re-made from the journal after a SIGKILL
/// (the journal keeps when each record was written, and so when each step became due).
fn step_ends_carry_their_start(record: &JobRecord) {
    for e in record.events() {
        if let Some(started) = e.started_at {
            assert!(started <= e.at, "{e:#?}");
        }
        let ran_on_token = !matches!(e.step, Step::Receive | Step::Claim);
        if ran_on_token && e.state == ExecutionState::InProgress && !is_parked(e) {
            assert!(
                e.started_at.is_some(),
                "a step end without its start: {e:#?}\nall events: {:#?}",
                record.events()
            );
        }
    }
}

/// Waits until `job` succeeded and checks its events: every step of the plan reported,
/// each event once. Returns the job's token.
async fn succeeded(station: &Station, job: &JobId) -> (JobRecord, TokenSerial) {
    let record = station.new_job_succeeded(job).await;
    step_ends_carry_their_start(&record);
    assert!(record.bound_certificates().is_some_and(|c| c.len() == 3));
    let serial = record
        .token_serial()
        .cloned()
        .expect("the job names its token");
    (record, serial)
}

/// A job that succeeded and left exactly a finished Ukey on its token.
async fn finished_ukey(station: &Station, job: &JobId) -> TokenSerial {
    let (_, serial) = succeeded(station, job).await;
    assert_eq!(
        station.objects(serial.as_str()),
        FINISHED,
        "no duplicate or missing objects on {serial}"
    );
    serial
}

fn is_parked(e: &StepEvent) -> bool {
    matches!(&e.data, Some(StepData::Parked { reason }) if reason.as_str() == "token-removed")
}

// ----- 1. a misbehaving platform ---------------------------------------------------------

/// Runs a healthy job on slot 1 up to its certificates, then arms `misbehaviour` once and
/// runs a job on slot 0: that one ends in `state` at `step` with `code` and no certificate on
/// its token, while the slot-1 job (slowed down in install) still succeeds.
async fn refused(
    misbehaviour: Misbehaviour,
    state: ExecutionState,
    step: Step,
    code: &str,
    certificates_secs: Option<u64>,
) -> (Station, JobRecord) {
    let mut station = Station::sim(2).await;
    if let Some(secs) = certificates_secs {
        station.timeouts.certificates_secs = secs;
    }
    station.start_agent().await;

    // The healthy job first, so that the armed misbehaviour cannot hit it; its certificate
    // writes are slow, so it is still at work while the other job fails.
    let healthy = station.dispatch_new(KeyAlgorithm::P256).await;
    let healthy_serial = station.insert_blank(1);
    station
        .rack()
        .set_latency(Some(1), LatencyChange::Op(Op::Write, 700))
        .unwrap();
    wait_job(&station, &healthy, |r| !r.cert_responses().is_empty()).await;

    station.platform.misbehave(misbehaviour, Times::Once);
    let job = station.dispatch_new(KeyAlgorithm::P256).await;
    let serial = station.insert_blank(0);
    let record = wait_end(&station, &job).await;
    assert_eq!(record.misbehaviours(), &[misbehaviour]);
    let last = record.last_event().unwrap();
    assert_eq!((last.step, last.state), (step, state), "{last:#?}");
    let error = last.error.as_ref().expect("the failure carries an error");
    assert_eq!(error.code.as_str(), code, "{error:?}");
    assert_eq!(
        record.token_serial().map(|s| s.as_str()),
        Some(serial.as_str())
    );
    assert_events_exactly_once(&record);

    // Nothing written: the keys are there, no certificate is.
    let objects = station.objects(&serial);
    assert_eq!(
        objects.certificates, 0,
        "no certificate was written: {objects:?}"
    );
    assert_eq!((objects.private_keys, objects.public_keys), (3, 3));

    // The other slot was not disturbed.
    let (_, done) = succeeded(&station, &healthy).await;
    assert_eq!(done.as_str(), healthy_serial);
    assert_eq!(station.objects(&healthy_serial), FINISHED);
    assert!(station.agent_running(), "the agent keeps serving");
    (station, record)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_subject_is_refused() {
    let (_, record) = refused(
        Misbehaviour::WrongSubject,
        ExecutionState::Failed,
        Step::VerifyCertificates,
        "certificate-subject-mismatch",
        None,
    )
    .await;
    let message = &record.last_event().unwrap().error.as_ref().unwrap().message;
    assert!(message.contains("seal-legal"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_certificate_is_refused() {
    refused(
        Misbehaviour::ExpiredCertificate,
        ExecutionState::Failed,
        Step::VerifyCertificates,
        "certificate-validity",
        None,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_issuer_is_refused() {
    let (_, record) = refused(
        Misbehaviour::UnknownIssuer,
        ExecutionState::Failed,
        Step::VerifyCertificates,
        "certificate-unknown-issuer",
        None,
    )
    .await;
    // The untrusted root sent along is recognised as such, not walked until "too long".
    let message = &record.last_event().unwrap().error.as_ref().unwrap().message;
    assert!(message.contains("is not a configured CA"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_issuance_fails_the_job() {
    let (_, record) = refused(
        Misbehaviour::RejectIssuance,
        ExecutionState::Failed,
        Step::RequestCertificates,
        "certificates-rejected",
        None,
    )
    .await;
    let error = record.last_event().unwrap().error.clone().unwrap();
    assert!(error.message.contains("issuance-refused"), "{error:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silence_on_certificates_times_the_job_out() {
    let (_, record) = refused(
        Misbehaviour::SilenceCertificates,
        ExecutionState::TimedOut,
        Step::RequestCertificates,
        "certificates-timeout",
        Some(3),
    )
    .await;
    assert!(
        record
            .last_event()
            .unwrap()
            .error
            .as_ref()
            .unwrap()
            .retryable
    );
    assert!(
        record.cert_responses().is_empty(),
        "the platform never answered"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silence_on_acks_resends_and_counts_each_event_once() {
    let mut station = Station::sim(1).await;
    station.timeouts.resend_secs = 1;
    station.start_agent().await;
    station
        .platform
        .misbehave(Misbehaviour::SilenceAcks, Times::Always);
    let job = station.dispatch_new(KeyAlgorithm::P256).await;
    station.insert_blank(0);
    // Bound, and the unacknowledged events were sent again.
    let record = wait_job(&station, &job, |r| {
        r.has_step(Step::Bind) && r.duplicate_events() >= r.events().len()
    })
    .await;
    assert_eq!(
        station.platform.snapshot().acks_sent(),
        0,
        "the platform stayed silent"
    );
    assert_eq!(
        record.state(),
        Some(ExecutionState::InProgress),
        "without the platform's ack the job does not succeed"
    );

    // The platform answers again: the next re-send is acknowledged and the job succeeds.
    station.platform.behave();
    let serial = finished_ukey(&station, &job).await;
    assert!(
        station
            .platform
            .token(&serial)
            .is_some_and(|t| t.user_pin().is_some())
    );
    assert!(station.agent_running());
}

// ----- 2. SIGKILL at several steps -------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_during_initialize_between_init_token_and_init_pin() {
    let mut station = Station::sim(1).await;
    station
        .rack()
        .set_latency(None, LatencyChange::Op(Op::InitPin, 1500))
        .unwrap();
    station.start_agent().await;
    let job = station.dispatch_new(KeyAlgorithm::P256).await;
    let serial = station.insert_blank(0);
    // C_InitToken done (the token carries the job's label), C_InitPIN under way.
    station
        .wait_for_token(&serial, "C_InitToken", PRODUCTION_TIMEOUT, |t| {
            t.is_initialized()
        })
        .await;
    station.kill_agent();
    let token = station.rack().token(&serial).unwrap();
    assert!(!token.user_pin_initialized(), "killed before C_InitPIN");
    assert!(token.label().starts_with("UKEY "), "{}", token.label());

    // The journal names this token: it is initialized again with the journaled SO PIN.
    station.start_agent().await;
    finished_ukey(&station, &job).await;
    assert!(
        station
            .agent_log()
            .contains("re-initializing the token this job had started")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_during_generate_keys() {
    let mut station = Station::sim(1).await;
    station
        .rack()
        .set_latency(None, LatencyChange::Op(Op::KeygenP256, 1500))
        .unwrap();
    station.start_agent().await;
    let job = station.dispatch_new(KeyAlgorithm::P256).await;
    let serial = station.insert_blank(0);
    wait_step(&station, &job, Step::Initialize).await;
    // One key pair made, the next one under way.
    station
        .wait_for_token(&serial, "a first key pair", PRODUCTION_TIMEOUT, |t| {
            ObjectCount::of(t).private_keys >= 1
        })
        .await;
    station.kill_agent();
    let at_kill = station.objects(&serial);
    assert!(
        at_kill.private_keys < 3,
        "killed before all keys were made: {at_kill:?}"
    );
    assert!(
        !station
            .platform
            .job_record(&job)
            .unwrap()
            .has_step(Step::GenerateKeys)
    );

    station.start_agent().await;
    finished_ukey(&station, &job).await;
    assert!(
        station
            .agent_log()
            .contains("removed objects of an interrupted attempt"),
        "the half-made keys were cleaned up"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_while_waiting_for_certificates() {
    let mut station = Station::sim(1).await;
    station.start_agent().await;
    station
        .platform
        .misbehave(Misbehaviour::SilenceCertificates, Times::Once);
    let job = station.dispatch_new(KeyAlgorithm::P256).await;
    station.insert_blank(0);
    let before = wait_job(&station, &job, |r| {
        r.misbehaviours()
            .contains(&Misbehaviour::SilenceCertificates)
            && r.has_step(Step::RequestCertificates)
    })
    .await;
    station.kill_agent();

    station.start_agent().await;
    let (record, _) = succeeded(&station, &job).await;
    let serial = record.token_serial().unwrap();
    assert_eq!(station.objects(serial.as_str()), FINISHED);
    // The CSR bundle came again from the journal, the very same requests.
    assert!(record.csr_bundles().len() >= 2, "the bundle was sent again");
    assert_eq!(record.csr_bundles()[0], before.csr_bundles()[0]);
    assert!(
        record
            .csr_bundles()
            .iter()
            .all(|b| *b == record.csr_bundles()[0]),
        "every copy is the journaled bundle"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_during_install_and_during_activate() {
    let mut station = Station::sim(1).await;
    let rack = station.rack();
    rack.set_latency(None, LatencyChange::Op(Op::Write, 700))
        .unwrap();
    rack.set_latency(None, LatencyChange::Op(Op::SignEc, 1000))
        .unwrap();
    station.start_agent().await;
    let job = station.dispatch_new(KeyAlgorithm::P256).await;
    let serial = station.insert_blank(0);

    // Install: one certificate written, the others not yet.
    wait_step(&station, &job, Step::VerifyCertificates).await;
    station
        .wait_for_token(&serial, "a first certificate", PRODUCTION_TIMEOUT, |t| {
            ObjectCount::of(t).certificates >= 1
        })
        .await;
    station.kill_agent();
    let at_kill = station.objects(&serial);
    assert!(at_kill.certificates < 3, "killed mid-install: {at_kill:?}");
    station.start_agent().await;

    // Activate: install reported, the self-test under way.
    wait_step(&station, &job, Step::Install).await;
    station.kill_agent();
    assert!(
        !station
            .platform
            .job_record(&job)
            .unwrap()
            .has_step(Step::Activate)
    );
    station.start_agent().await;

    finished_ukey(&station, &job).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_after_bind_before_the_final_ack() {
    let mut station = Station::sim(1).await;
    station.start_agent().await;
    station
        .platform
        .misbehave(Misbehaviour::SilenceAcks, Times::Always);
    let job = station.dispatch_new(KeyAlgorithm::P256).await;
    station.insert_blank(0);
    let record = wait_step(&station, &job, Step::Bind).await;
    assert_eq!(record.state(), Some(ExecutionState::InProgress));
    station.kill_agent();

    station.platform.behave();
    station.start_agent().await;
    finished_ukey(&station, &job).await;
    let record = station.platform.job_record(&job).unwrap();
    assert!(
        record.duplicate_events() > 0,
        "the outbox sent its events again"
    );
}

/// Two jobs on two tokens, the agent killed three times while they run: both complete.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_repeatedly_with_two_jobs() {
    let mut station = Station::sim(2).await;
    station
        .rack()
        .set_latency(None, LatencyChange::Op(Op::KeygenP256, 800))
        .unwrap();
    station.start_agent().await;
    let jobs = [
        station.dispatch_new(KeyAlgorithm::P256).await,
        station.dispatch_new(KeyAlgorithm::P256).await,
    ];
    station.insert_blank(0);
    station.insert_blank(1);
    for step in [Step::Claim, Step::Initialize, Step::GenerateKeys] {
        wait_job(&station, &jobs[0], |r| r.has_step(step)).await;
        station.kill_agent();
        station.start_agent().await;
    }
    let mut serials = BTreeSet::new();
    for job in &jobs {
        serials.insert(finished_ukey(&station, job).await);
    }
    assert_eq!(serials.len(), 2, "two tokens");
}

/// Jobs queued when the agent stops are served after its restart in the order the agent
/// accepted them, not in the order of their ids.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_jobs_keep_their_order_across_a_restart() {
    let mut station = Station::sim(1).await;
    station.start_agent().await;
    // Ids in the reverse of the dispatch order; each dispatched only once the previous one
    // was accepted, so the agent's order is the dispatch order.
    let mut jobs = Vec::new();
    for id in [
        "J-ffffffffffff0003",
        "J-8888888888880002",
        "J-0000000000000001",
    ] {
        let draft = JobDraft::new(JobKind::New, &station.station_id)
            .unwrap()
            .with_algorithm(KeyAlgorithm::P256)
            .with_job_id(JobId::new(id).unwrap());
        let job = station.platform.dispatch_draft(&draft).await.unwrap();
        wait_step(&station, &job, Step::Receive).await;
        jobs.push(job);
    }
    station.kill_agent();
    station.start_agent().await;
    for (slot, job) in jobs.iter().enumerate() {
        // One token at a time: each takes the oldest job still queued.
        station.insert_blank(0);
        // Whichever job the token claims first (the platform records every claim event).
        let deadline = tokio::time::Instant::now() + PRODUCTION_TIMEOUT;
        let claimed = loop {
            let claimed: Vec<&JobId> = jobs[slot..]
                .iter()
                .filter(|j| {
                    station
                        .platform
                        .job_record(j)
                        .unwrap()
                        .has_step(Step::Claim)
                })
                .collect();
            if !claimed.is_empty() {
                break claimed;
            }
            assert!(tokio::time::Instant::now() < deadline, "no job claimed");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert_eq!(claimed, [job], "the oldest queued job is claimed first");
        let record = wait_step(&station, job, Step::Claim).await;
        let serial = finished_ukey(&station, job).await;
        assert_eq!(record.token_serial(), Some(&serial));
        assert_eq!(station.rack().remove(0).unwrap(), serial.as_str());
    }
}

// ----- 3. the broker crashes -------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_killed_and_restarted_mid_job() {
    let mut station = Station::sim(1).await;
    // The broker may lose the sessions (it saves them every second): what it then drops
    // without a subscriber is published again by the agent after this long.
    station.timeouts.resend_secs = 2;
    station
        .rack()
        .set_latency(None, LatencyChange::Op(Op::KeygenP256, 700))
        .unwrap();
    station.start_agent().await;
    let job = station.dispatch_new(KeyAlgorithm::P256).await;
    let serial = station.insert_blank(0);
    wait_step(&station, &job, Step::Initialize).await;

    station.broker.kill();
    // The keys are made while the broker is away: their events wait in the outbox.
    station
        .wait_for_token(&serial, "three key pairs", PRODUCTION_TIMEOUT, |t| {
            ObjectCount::of(t).private_keys == 3
        })
        .await;
    let subscriptions = station.platform.snapshot().subscriptions();
    station.broker.restart();
    station
        .platform
        .wait_until("the platform to subscribe again", PRODUCTION_TIMEOUT, |r| {
            (r.subscriptions() > subscriptions).then_some(())
        })
        .await
        .unwrap();

    finished_ukey(&station, &job).await;
    assert!(station.agent_running());
}

// ----- 4. a token pulled mid-job ---------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_pulled_during_keygen_then_reinserted() {
    let mut station = Station::sim(1).await;
    station
        .rack()
        .set_latency(None, LatencyChange::Op(Op::KeygenP256, 1500))
        .unwrap();
    station.start_agent().await;
    let job = station.dispatch_new(KeyAlgorithm::P256).await;
    let serial = station.insert_blank(0);
    wait_step(&station, &job, Step::Initialize).await;
    station
        .wait_for_token(&serial, "a first key pair", PRODUCTION_TIMEOUT, |t| {
            ObjectCount::of(t).private_keys >= 1
        })
        .await;
    station.rack().remove(0).unwrap();
    let record = wait_job(&station, &job, |r| r.events().iter().any(is_parked)).await;
    let parked = record.events().iter().find(|e| is_parked(e)).unwrap();
    assert_eq!(
        (parked.step, parked.state),
        (Step::GenerateKeys, ExecutionState::InProgress)
    );

    station.reinsert(0, &serial);
    let done = finished_ukey(&station, &job).await;
    assert_eq!(done.as_str(), serial);
}

/// Pulled while no step runs (the job waits for its certificates): the step that needs the
/// token next parks when the certificates arrive, and resumes on re-insertion.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_pulled_while_waiting_for_certificates() {
    let mut station = Station::sim(1).await;
    station.timeouts.resend_secs = 1;
    station.start_agent().await;
    station
        .platform
        .misbehave(Misbehaviour::SilenceCertificates, Times::Once);
    let job = station.dispatch_new(KeyAlgorithm::P256).await;
    let serial = station.insert_blank(0);
    wait_job(&station, &job, |r| {
        r.misbehaviours()
            .contains(&Misbehaviour::SilenceCertificates)
    })
    .await;
    station.rack().remove(0).unwrap();
    station
        .wait_for_log("token gone", 1, PRODUCTION_TIMEOUT)
        .await;
    // The CSR bundle is sent again and answered; verification needs the token: parked.
    let record = station
        .platform
        .wait_for(
            &job,
            |r| r.events().iter().any(is_parked),
            Duration::from_secs(30),
        )
        .await
        .unwrap_or_else(|e| station.fail_with_log(e));
    let parked = record.events().iter().find(|e| is_parked(e)).unwrap();
    assert_eq!(parked.step, Step::VerifyCertificates);
    assert_eq!(station.objects(&serial).certificates, 0);

    station.reinsert(0, &serial);
    finished_ukey(&station, &job).await;
}

/// Killed mid-step, and the token pulled while the agent was down: after the restart the job
/// parks (it does not wait silently for ever), then resumes when the token is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_pulled_while_the_agent_was_down() {
    let mut station = Station::sim(1).await;
    station
        .rack()
        .set_latency(None, LatencyChange::Op(Op::KeygenP256, 1500))
        .unwrap();
    station.start_agent().await;
    let job = station.dispatch_new(KeyAlgorithm::P256).await;
    let serial = station.insert_blank(0);
    wait_step(&station, &job, Step::Initialize).await;
    station.kill_agent();
    station.rack().remove(0).unwrap();

    station.start_agent().await;
    let record = station
        .platform
        .wait_for(
            &job,
            |r| r.events().iter().any(is_parked),
            Duration::from_secs(30),
        )
        .await
        .unwrap_or_else(|e| station.fail_with_log(e));
    let parked = record.events().iter().find(|e| is_parked(e)).unwrap();
    assert_eq!(parked.step, Step::GenerateKeys);

    station.reinsert(0, &serial);
    finished_ukey(&station, &job).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_pulled_and_never_returned_fails_retryable() {
    let mut station = Station::sim(1).await;
    station.timeouts.token_removed_secs = 2;
    station
        .rack()
        .set_latency(None, LatencyChange::Op(Op::KeygenP256, 1500))
        .unwrap();
    station.start_agent().await;
    let job = station.dispatch_new(KeyAlgorithm::P256).await;
    let serial = station.insert_blank(0);
    wait_step(&station, &job, Step::Initialize).await;
    station.rack().remove(0).unwrap();
    let record = wait_end(&station, &job).await;
    assert_events_exactly_once(&record);
    assert!(record.events().iter().any(is_parked), "parked first");
    let last = record.last_event().unwrap();
    assert_eq!(
        (last.step, last.state),
        (Step::GenerateKeys, ExecutionState::Failed)
    );
    let error = last.error.as_ref().unwrap();
    assert_eq!(error.code.as_str(), "token-return-timeout");
    assert!(error.retryable);
    assert_eq!(station.objects(&serial).certificates, 0);
    assert!(station.agent_running());
}

// ----- 5. one agent per state folder -----------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_agent_on_the_same_state_folder_refuses_to_start() {
    let mut station = Station::sim(1).await;
    station.start_agent().await;
    let (status, stderr) = station
        .run_second_agent(Duration::from_secs(30))
        .await
        .expect("the second agent exits instead of running");
    assert!(!status.success(), "{status}: {stderr}");
    assert!(
        stderr.contains("in use by another agent"),
        "a clear error: {stderr}"
    );
    assert!(station.agent_running(), "the first agent goes on");
    // ... and still has its broker connection and state: a job runs.
    let job = station.dispatch_new(KeyAlgorithm::P256).await;
    station.insert_blank(0);
    finished_ukey(&station, &job).await;
}

// ----- 6. redelivery ---------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_delivered_again_after_it_finished_is_not_run_again() {
    let mut station = Station::sim(2).await;
    station.start_agent().await;
    let draft = JobDraft::new(JobKind::New, &station.station_id)
        .unwrap()
        .with_algorithm(KeyAlgorithm::P256);
    let signed = station.platform.job(&draft).unwrap();
    let job = station.platform.dispatch(&signed).await.unwrap();
    station.insert_blank(0);
    let (record, _) = succeeded(&station, &job).await;
    let events = record.events().len();

    // A blank token waits in slot 1: a job run again would claim it.
    let spare = station.insert_blank(1);
    const IGNORED: &str = "duplicate delivery of a known job ignored";
    station.platform.dispatch(&signed).await.unwrap();
    station.wait_for_log(IGNORED, 1, PRODUCTION_TIMEOUT).await;
    // After a restart the journal (compacted) still knows the job.
    assert_eq!(station.stop_agent().and_then(|s| s.code()), Some(0));
    station.start_agent().await;
    station.platform.dispatch(&signed).await.unwrap();
    station.wait_for_log(IGNORED, 2, PRODUCTION_TIMEOUT).await;

    let record = station.platform.job_record(&job).unwrap();
    assert_eq!(record.envelopes_sent().len(), 3);
    assert_eq!(record.events().len(), events, "no new event for the job");
    assert!(
        !station.rack().token(&spare).unwrap().is_initialized(),
        "the spare token stayed blank"
    );
}
