//! Delivery from the platform to the station across a broker that loses sessions
//! (Mosquitto without persistence, killed and restarted): a job, a certificate response or a
//! cancel published while the broker has forgotten the station's session is dropped by the
//! broker, and reaches the station only because the platform publishes it again on the
//! station's presence birth and on a timer (docs/PROTOCOL.md, "Redelivery"), and because the
//! agent sends its CSR bundle again after a reconnect.
//!
//! Each test checks the result on the platform's ledger: every job produced exactly once,
//! no event lost or duplicated, and the tokens finished as they should be.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::time::Duration;

use hsm_sim::rack::LatencyChange;
use hsm_sim::rack::latency::Op;
use ukey_platform_sim::{Misbehaviour, Times};
use ukey_protocol::event::ExecutionState;
use ukey_protocol::ids::JobId;
use ukey_protocol::keys::KeyAlgorithm;
use ukey_tests::mosquitto::Mosquitto;
use ukey_tests::station::{ObjectCount, PRODUCTION_TIMEOUT, Station, assert_events_exactly_once};

/// A finished Ukey: three key pairs and three certificates, nothing more.
const FINISHED: ObjectCount = ObjectCount {
    private_keys: 3,
    public_keys: 3,
    certificates: 3,
    other: 0,
};

/// Restarts the broker and waits until the platform has subscribed again: from then on a
/// message published to the station goes nowhere until the station subscribes again.
async fn restart_broker(station: &mut Station) {
    let subscriptions = station.platform.snapshot().subscriptions();
    station.broker.restart();
    station
        .platform
        .wait_until("the platform to subscribe again", PRODUCTION_TIMEOUT, |r| {
            (r.subscriptions() > subscriptions).then_some(())
        })
        .await
        .unwrap();
}

/// Waits until `job` succeeded, checks its events on the ledger and its token.
async fn produced_once(station: &Station, job: &JobId) {
    if let Err(e) = station
        .platform
        .wait_for_state(job, ExecutionState::Succeeded, PRODUCTION_TIMEOUT)
        .await
    {
        station.fail_with_log(e);
    }
    // Events the broker dropped with the platform's session come again from the agent's
    // outbox, possibly after the last one: wait until nothing is missing.
    let record = match station
        .platform
        .wait_for(job, |j| j.ledger().lost.is_empty(), PRODUCTION_TIMEOUT)
        .await
    {
        Ok(r) => r,
        Err(e) => {
            let ledger = station
                .platform
                .job_record(job)
                .map(|j| j.ledger().to_string());
            station.fail_with_log(format!("{e}: {ledger:?}"))
        }
    };
    assert_events_exactly_once(&record);
    let serial = record.token_serial().expect("the job names its token");
    assert_eq!(station.objects(serial.as_str()), FINISHED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_published_while_the_broker_forgot_the_station_arrives_on_its_birth() {
    // No timer: only the birth can bring the job.
    let mut station = Station::sim_with_broker(1, Mosquitto::start_forgetful(), |p| {
        p.redeliver_every = None;
    })
    .await;
    station.start_agent().await;
    station.kill_agent();
    restart_broker(&mut station).await;

    // The broker has no session of the station: the job is dropped, and acknowledged.
    let job = station.dispatch_new(KeyAlgorithm::P256).await;
    assert_eq!(station.platform.job_record(&job).unwrap().redelivered(), 0);

    station.start_agent().await;
    station.insert_blank(0);
    produced_once(&station, &job).await;
    let record = station.platform.job_record(&job).unwrap();
    assert!(
        record.redelivered() >= 1,
        "the job arrived only because the platform sent it again"
    );
    assert_eq!(record.envelopes_sent().len(), 1, "one job, one envelope");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_published_while_the_broker_forgot_the_station_arrives_on_its_birth() {
    let mut station = Station::sim_with_broker(1, Mosquitto::start_forgetful(), |p| {
        p.redeliver_every = None;
    })
    .await;
    station.start_agent().await;
    // No token: the job waits in the queue.
    let job = station.dispatch_new(KeyAlgorithm::P256).await;
    station
        .platform
        .wait_for_state(&job, ExecutionState::Queued, PRODUCTION_TIMEOUT)
        .await
        .unwrap();
    station.kill_agent();
    restart_broker(&mut station).await;
    station
        .platform
        .cancel(&job, "order withdrawn")
        .await
        .unwrap();

    station.start_agent().await;
    let record = match station
        .platform
        .wait_for_state(&job, ExecutionState::Canceled, PRODUCTION_TIMEOUT)
        .await
    {
        Ok(r) => r,
        Err(e) => station.fail_with_log(e),
    };
    assert_events_exactly_once(&record);
    assert!(record.redelivered() >= 1, "the cancel was sent again");
    // A job that ended is owed nothing: a later birth sends nothing more.
    let rounds = station.platform.snapshot().redelivery_rounds();
    station.stop_agent();
    station.start_agent().await;
    station
        .platform
        .wait_until("a redelivery round", PRODUCTION_TIMEOUT, |r| {
            (r.redelivery_rounds() > rounds).then_some(())
        })
        .await
        .unwrap();
    assert_eq!(
        station.platform.job_record(&job).unwrap().redelivered(),
        record.redelivered()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_published_across_broker_restarts_that_lose_sessions_are_each_produced_once() {
    const JOBS: usize = 4;
    let mut station = Station::sim_with_broker(JOBS, Mosquitto::start_forgetful(), |p| {
        p.redeliver_every = Some(Duration::from_secs(2));
    })
    .await;
    // Events dropped by the broker are re-sent by the agent after this long.
    station.timeouts.resend_secs = 2;
    station
        .rack()
        .set_latency(None, LatencyChange::Op(Op::KeygenP256, 300))
        .unwrap();
    station.start_agent().await;
    let mut jobs = Vec::new();
    for slot in 0..JOBS {
        // Published while the broker restarts: to a broker about to forget everything, to
        // none, or to one that has not heard from the station again yet.
        jobs.push(station.dispatch_new(KeyAlgorithm::P256).await);
        station.broker.restart();
        station.insert_blank(slot);
    }
    for job in &jobs {
        produced_once(&station, job).await;
    }
    let snapshot = station.platform.snapshot();
    let ledger = snapshot.ledger();
    assert!(ledger.is_clean(), "{ledger}");
    assert_eq!(ledger.succeeded(), JOBS, "{ledger}");
    assert_eq!(ledger.dispatched, JOBS);
    let tokens: BTreeSet<_> = jobs
        .iter()
        .map(|j| snapshot.job(j).unwrap().token_serial().unwrap().clone())
        .collect();
    assert_eq!(tokens.len(), JOBS, "one token per job");
    assert!(station.agent_running());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_sends_its_csr_bundle_again_after_a_reconnect() {
    let mut station = Station::sim(1).await;
    // Without the re-send on reconnect the bundle would go again only after this long.
    station.timeouts.resend_secs = 3600;
    station
        .platform
        .misbehave(Misbehaviour::SilenceCertificates, Times::Once);
    station.start_agent().await;
    let job = station.dispatch_new(KeyAlgorithm::P256).await;
    station.insert_blank(0);
    station
        .platform
        .wait_for(
            &job,
            |j| {
                j.misbehaviours()
                    .contains(&Misbehaviour::SilenceCertificates)
            },
            PRODUCTION_TIMEOUT,
        )
        .await
        .unwrap();
    let record = station.platform.job_record(&job).unwrap();
    assert_eq!(record.csr_bundles().len(), 1, "sent once so far");
    restart_broker(&mut station).await;
    produced_once(&station, &job).await;
    let record = station.platform.job_record(&job).unwrap();
    assert!(record.csr_bundles().len() >= 2, "the bundle was sent again");
}
