//! Admission under a hostile network, end to end: real Mosquitto, the simulated platform,
//! hsm-sim and the real `ukey-agent` binary.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Instant;

use ukey_platform_sim::{JobDraft, Misbehaviour, Times};
use ukey_protocol::event::ExecutionState;
use ukey_protocol::job::JobKind;
use ukey_protocol::keys::KeyAlgorithm;
use ukey_tests::station::{PRODUCTION_TIMEOUT, Station};

/// The default limit on rejection events (`trust.rejections_per_minute`).
const LIMIT_PER_MINUTE: u64 = 10;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_forged_jobs_is_counted_not_published_and_a_valid_job_still_runs() {
    let mut station = Station::sim(1).await;
    station.start_agent().await;
    let started = Instant::now();
    station
        .platform
        .misbehave(Misbehaviour::ForgedSignature, Times::Always);
    let mut forged = Vec::new();
    for _ in 0..200 {
        forged.push(station.dispatch_new(KeyAlgorithm::P256).await);
    }
    station.platform.behave();
    let status = station.status_with("rejected: 200 job(s)").await;
    let suppressed: u64 = status
        .split("rejected: 200 job(s), ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no suppressed count in:\n{status}"));

    // A valid job right after the flood is not held up by it.
    let job = station.dispatch_new(KeyAlgorithm::P256).await;
    station.insert_blank(0);
    station.new_job_succeeded(&job).await;
    let elapsed = started.elapsed().as_secs();

    // Every rejection event went out before the valid job's events (one ordered link), so
    // the platform has them all by now.
    let published = forged
        .iter()
        .filter(|id| {
            station.platform.job_record(id).is_some_and(|r| {
                r.events()
                    .iter()
                    .any(|e| e.state == ExecutionState::Rejected)
            })
        })
        .count() as u64;
    // The bucket holds the limit and refills it over a minute.
    let allowed = LIMIT_PER_MINUTE + elapsed * LIMIT_PER_MINUTE / 60 + 1;
    assert!(
        (1..=allowed).contains(&published),
        "{published} rejection events reached the platform; at most {allowed} may in {elapsed} s"
    );
    assert_eq!(
        published + suppressed,
        200,
        "every rejection is published or counted as suppressed:\n{status}"
    );
    let log = station.agent_log();
    let summaries = log.matches("rejected jobs above the rate limit").count() as u64;
    assert!(
        (1..=elapsed / 60 + 1).contains(&summaries),
        "{summaries} summary lines in {elapsed} s"
    );
    assert!(
        log.matches("job rejected").count() as u64 <= allowed,
        "a log line for each rejection above the limit"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_valid_for_longer_than_seven_days_is_rejected_as_too_long_lived() {
    let mut station = Station::sim(1).await;
    station.start_agent().await;
    let draft = JobDraft::new(JobKind::New, &station.station_id)
        .unwrap()
        .with_lifetime(time::Duration::days(8));
    let job = station.platform.dispatch_draft(&draft).await.unwrap();
    let record = station
        .platform
        .wait_for_state(&job, ExecutionState::Rejected, PRODUCTION_TIMEOUT)
        .await
        .unwrap_or_else(|e| station.fail_with_log(e));
    let error = record.last_event().unwrap().error.clone().unwrap();
    assert_eq!(error.code.as_str(), "lifetime-too-long");
    // Seven days, the default cap, is accepted and runs.
    let draft = JobDraft::new(JobKind::New, &station.station_id)
        .unwrap()
        .with_lifetime(time::Duration::days(7));
    let job = station.platform.dispatch_draft(&draft).await.unwrap();
    station.insert_blank(0);
    station.new_job_succeeded(&job).await;
}
