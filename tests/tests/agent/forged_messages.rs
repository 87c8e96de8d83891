//! Forged platform messages end to end: real Mosquitto, the simulated platform, hsm-sim and
//! the real `ukey-agent` binary. Whoever can publish on the station's topics can make an ack,
//! a certificate rejection or a cancel; the agent acts only on those the platform signed, and
//! counts the others in its status (`refused_platform_messages`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use ukey_platform_sim::{JobRecord, Misbehaviour, Times};
use ukey_protocol::event::{ExecutionState, Step};
use ukey_protocol::ids::JobId;
use ukey_protocol::keys::KeyAlgorithm;
use ukey_tests::station::{PRODUCTION_TIMEOUT, Station};

/// The log line of a refusal (one per minute at most).
const REFUSED_LINE: &str = "refused a platform message";

/// A one-slot hsm-sim desk whose agent re-sends unanswered events and CSR bundles after a
/// second, so a refused message's true counterpart follows quickly.
async fn desk() -> Station {
    let mut station = Station::sim(1).await;
    station.timeouts.resend_secs = 1;
    station.start_agent().await;
    station
}

/// `ukey-agent status --json`, parsed.
fn status_json(station: &Station) -> serde_json::Value {
    let out = std::process::Command::new(ukey_tests::agent_binary())
        .args(["status", "--json", "--config"])
        .arg(station.dir().join("agent.toml"))
        .output()
        .unwrap();
    serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null)
}

/// The status snapshot once it satisfies `pred` (at most a minute): the agent rewrites it
/// every few seconds, there is nothing to wait on but the file.
async fn status_until(
    station: &Station,
    what: &str,
    pred: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let status = status_json(station);
        if pred(&status) {
            return status;
        }
        if std::time::Instant::now() >= deadline {
            station.fail_with_log(format!("status never showed {what}: {status:#}"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn refused(status: &serde_json::Value) -> Option<u64> {
    status["refused_platform_messages"].as_u64()
}

/// The job's line among the status' running jobs.
fn running<'a>(status: &'a serde_json::Value, job: &JobId) -> Option<&'a serde_json::Value> {
    status["running_jobs"]
        .as_array()?
        .iter()
        .find(|j| j["job_id"] == job.to_string())
}

async fn wait_job(
    station: &Station,
    job: &JobId,
    what: &str,
    pred: impl Fn(&JobRecord) -> bool,
) -> JobRecord {
    let job = job.clone();
    station
        .platform
        .wait_until(what, PRODUCTION_TIMEOUT, |r| {
            r.job(&job).filter(|j| pred(j)).cloned()
        })
        .await
        .unwrap_or_else(|e| station.fail_with_log(e))
}

/// The refusal's log line names why and nothing of the message's content.
fn assert_one_refusal_line(station: &Station, reason: &str) {
    let log = station.agent_log();
    let lines: Vec<&str> = log.lines().filter(|l| l.contains(REFUSED_LINE)).collect();
    assert_eq!(lines.len(), 1, "one refusal line: {log}");
    assert!(lines[0].contains(reason), "{}", lines[0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsigned_bind_ack_is_refused_and_the_event_stays_in_the_outbox() {
    let mut station = desk().await;
    // No true ack until the test says so; the bind event gets an unsigned one.
    station
        .platform
        .misbehave(Misbehaviour::SilenceAcks, Times::Always);
    station
        .platform
        .misbehave(Misbehaviour::UnsignedBindAck, Times::Once);
    let job = station.dispatch_new(KeyAlgorithm::P256).await;
    station.insert_blank(0);
    let record = wait_job(&station, &job, "the unsigned ack of bind", |r| {
        r.misbehaviours().contains(&Misbehaviour::UnsignedBindAck)
    })
    .await;
    let bind = record
        .events()
        .iter()
        .find(|e| e.step == Step::Bind)
        .expect("the bind event is in the ledger")
        .event_id
        .clone();

    let status = status_until(&station, "one refused message", |s| refused(s) == Some(1)).await;
    // Not acted on: the bind event is still in the outbox, the job still waits for its ack.
    assert!(
        status["outbox_depth"].as_u64().unwrap() >= 1,
        "the bind event left the outbox: {status:#}"
    );
    let line = running(&status, &job).unwrap_or_else(|| panic!("job gone: {status:#}"));
    assert!(
        line["doing"]
            .as_str()
            .unwrap()
            .contains("waiting for the platform's acknowledgement"),
        "{line}"
    );
    assert_one_refusal_line(&station, "unsigned");

    // The platform acknowledges the re-sent event: the job ends, the outbox empties.
    station.platform.behave();
    let status = status_until(&station, "the job finished and the outbox empty", |s| {
        s["outbox_depth"] == 0 && s["running_jobs"].as_array().is_some_and(|j| j.is_empty())
    })
    .await;
    assert_eq!(refused(&status), Some(1), "{status:#}");
    let record = station.platform.job_record(&job).unwrap();
    assert!(
        record.duplicates_of(&bind) >= 1,
        "the bind event was sent again"
    );
    assert!(record.bound_certificates().is_some_and(|c| c.len() == 3));
    assert_eq!(record.state(), Some(ExecutionState::Succeeded));
    ukey_tests::station::assert_events_exactly_once(&record);
    assert!(station.stop_agent().is_some_and(|s| s.success()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_rejection_signed_by_another_key_does_not_fail_the_job() {
    let mut station = desk().await;
    station
        .platform
        .misbehave(Misbehaviour::ForgedRejection, Times::Once);
    let job = station.dispatch_new(KeyAlgorithm::P256).await;
    station.insert_blank(0);
    wait_job(&station, &job, "the forged rejection", |r| {
        r.misbehaviours().contains(&Misbehaviour::ForgedRejection)
    })
    .await;
    // The re-sent CSR bundle gets the true answer and the job goes on.
    let record = station.new_job_succeeded(&job).await;
    assert!(
        !record.reached(ExecutionState::Failed),
        "{:?}",
        record.events()
    );
    assert_eq!(record.csr_bundles().len(), 2, "the bundle was sent again");
    let status = status_until(&station, "one refused message", |s| refused(s) == Some(1)).await;
    assert_eq!(refused(&status), Some(1));
    assert_one_refusal_line(&station, "signature does not verify");
    assert!(station.stop_agent().is_some_and(|s| s.success()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsigned_cancel_does_not_stop_a_job() {
    let mut station = desk().await;
    // The job waits for certificates while the cancel arrives.
    station
        .platform
        .misbehave(Misbehaviour::SilenceCertificates, Times::Always);
    let job = station.dispatch_new(KeyAlgorithm::P256).await;
    station.insert_blank(0);
    wait_job(&station, &job, "the CSR bundle", |r| {
        r.has_step(Step::RequestCertificates) && !r.csr_bundles().is_empty()
    })
    .await;
    station
        .platform
        .misbehave(Misbehaviour::UnsignedCancel, Times::Once);
    station
        .platform
        .cancel(&job, "not the platform")
        .await
        .unwrap();
    status_until(&station, "one refused message", |s| refused(s) == Some(1)).await;
    assert_one_refusal_line(&station, "unsigned");

    station.platform.behave();
    let record = station.new_job_succeeded(&job).await;
    assert!(
        !record.reached(ExecutionState::Canceled),
        "{:?}",
        record.events()
    );
    let status = status_json(&station);
    assert_eq!(refused(&status), Some(1), "{status:#}");
    assert!(station.stop_agent().is_some_and(|s| s.success()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_cancel_stops_a_job() {
    let mut station = desk().await;
    station
        .platform
        .misbehave(Misbehaviour::SilenceCertificates, Times::Always);
    let job = station.dispatch_new(KeyAlgorithm::P256).await;
    station.insert_blank(0);
    wait_job(&station, &job, "the CSR bundle", |r| {
        r.has_step(Step::RequestCertificates) && !r.csr_bundles().is_empty()
    })
    .await;
    station
        .platform
        .cancel(&job, "order withdrawn")
        .await
        .unwrap();
    let record = station
        .platform
        .wait_for_state(&job, ExecutionState::Canceled, PRODUCTION_TIMEOUT)
        .await
        .unwrap_or_else(|e| station.fail_with_log(e));
    assert!(
        record
            .events()
            .iter()
            .any(|e| format!("{e:?}").contains("order withdrawn")),
        "the canceled event carries the platform's reason: {:?}",
        record.events()
    );
    let status = status_until(&station, "the job gone", |s| {
        s["running_jobs"].as_array().is_some_and(|j| j.is_empty())
    })
    .await;
    assert_eq!(refused(&status), Some(0), "{status:#}");
    assert!(!station.agent_log().contains(REFUSED_LINE));
    assert!(station.stop_agent().is_some_and(|s| s.success()));
}
