//! A platform outage after the last step never turns a finished token into a failed job.
//!
//! The platform stays silent on acknowledgements for longer than `timeouts.bind_ack_secs`:
//! the finished token is released (its panel light says done, the staff may pull it), the
//! retained inventory carries a `platform-unconfirmed` alert naming the job and the token,
//! the bind event keeps being sent again, and when the platform answers — however late,
//! after the token was pulled and the agent restarted — the job succeeds; the platform never
//! receives a `timed-out` event.
//!
//! Real Mosquitto, the simulated platform, an hsm-sim rack, the real `ukey-agent` binary and
//! (first test) the emulated indicator panel. Every wait is on the platform's records, the
//! board's lights, or the agent's status file, with a deadline.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use ukey_agent::panel::Light;
use ukey_platform_sim::{JobRecord, Misbehaviour, Times};
use ukey_protocol::event::{ExecutionState, Step};
use ukey_protocol::ids::{EventId, JobId};
use ukey_protocol::inventory::{DeskAlert, Inventory, TokenInfo, TokenState};
use ukey_protocol::keys::KeyAlgorithm;
use ukey_tests::station::{PRODUCTION_TIMEOUT, Station, light_until};

const ALERT: &str = "platform-unconfirmed";

/// Short enough to pass within the test, long enough that the bind event is sent before.
const BIND_ACK_SECS: u64 = 2;

/// A desk whose platform does not acknowledge anything, with short bind-ack and resend times.
async fn silent_desk(station: &mut Station) {
    station.timeouts.bind_ack_secs = BIND_ACK_SECS;
    station.timeouts.resend_secs = 1;
    station.start_agent().await;
    station
        .platform
        .misbehave(Misbehaviour::SilenceAcks, Times::Always);
}

/// Waits until the platform has `job`'s bind event; returns it with the record.
async fn bound(station: &Station, job: &JobId) -> (JobRecord, EventId) {
    let record = station
        .platform
        .wait_for(job, |r| r.has_step(Step::Bind), PRODUCTION_TIMEOUT)
        .await
        .unwrap_or_else(|e| station.fail_with_log(e));
    let bind = record
        .events()
        .iter()
        .find(|e| e.step == Step::Bind)
        .unwrap();
    assert_eq!(bind.state, ExecutionState::InProgress, "{bind:#?}");
    let id = bind.event_id.clone();
    (record, id)
}

/// Waits until the station's newest inventory satisfies `f`; fails at once if `job` ends in
/// any state but `succeeded`.
async fn inventory_until<T>(
    station: &Station,
    job: &JobId,
    what: &str,
    mut f: impl FnMut(&Inventory) -> Option<T>,
) -> T {
    let station_id = station.station_id.clone();
    let found = station
        .platform
        .wait_until(what, PRODUCTION_TIMEOUT, |r| {
            if let Some(last) = r.job(job).and_then(JobRecord::last_event)
                && last.state.is_terminal()
                && last.state != ExecutionState::Succeeded
            {
                return Some(Err(format!("job {job} ended {}: {last:#?}", last.state)));
            }
            f(r.current_inventory(&station_id)?).map(Ok)
        })
        .await
        .unwrap_or_else(|e| station.fail_with_log(e));
    found.unwrap_or_else(|e| station.fail_with_log(e))
}

fn unconfirmed_alert<'a>(inventory: &'a Inventory, job: &JobId) -> Option<&'a DeskAlert> {
    inventory
        .alerts
        .iter()
        .find(|a| a.code.as_str() == ALERT && a.message.contains(job.as_str()))
}

fn token<'a>(inventory: &'a Inventory, serial: &str) -> Option<&'a TokenInfo> {
    inventory
        .slots
        .iter()
        .filter_map(|s| s.token.as_ref())
        .find(|t| t.serial.as_ref().is_some_and(|s| s.as_str() == serial))
}

/// The job never timed out or failed on the platform's side, and its events are whole.
fn never_timed_out(record: &JobRecord) {
    for e in record.events() {
        assert!(
            matches!(
                e.state,
                ExecutionState::Queued | ExecutionState::InProgress | ExecutionState::Succeeded
            ),
            "the platform received {} {}: {e:#?}",
            e.step,
            e.state
        );
        assert!(e.error.is_none(), "{e:#?}");
    }
    let seqs: Vec<u64> = record.events().iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());
    assert!(record.problems().is_empty(), "{:?}", record.problems());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_platform_raises_an_alert_and_the_job_succeeds_when_it_answers() {
    let mut station = Station::sim(1).await;
    let (board, lights) = station.attach_emulated_panel(1);
    silent_desk(&mut station).await;
    let job = station.dispatch_new(KeyAlgorithm::P256).await;
    let serial = station.insert_blank(0);
    let (_, bind) = bound(&station, &job).await;

    // Longer than bind_ack_secs without an ack: the alert names the job and the token, and
    // the finished token shows as active, still naming its unconfirmed job.
    let alert = inventory_until(&station, &job, "the platform-unconfirmed alert", |inv| {
        let t = token(inv, &serial)?;
        (t.state == TokenState::Active && t.job_id.as_ref() == Some(&job))
            .then(|| unconfirmed_alert(inv, &job).cloned())
            .flatten()
    })
    .await;
    assert!(alert.message.contains(&serial), "{alert:?}");
    assert!(alert.port.is_none(), "{alert:?}");
    let log = station.agent_log();
    assert!(
        log.contains("the platform has not acknowledged the job's last event"),
        "a log warning: {log}"
    );
    // The staff may take the token out: its light says done.
    light_until(&board, &lights, 0, Light::Done);
    let text = station.status_with("acknowledgement is overdue").await;
    assert!(text.contains(job.as_str()), "{text}");

    // Still silent: the bind event keeps coming, the job does not end.
    let before = station
        .platform
        .job_record(&job)
        .unwrap()
        .duplicates_of(&bind);
    let record = station
        .platform
        .wait_for(
            &job,
            |r| r.duplicates_of(&bind) >= before + 2,
            PRODUCTION_TIMEOUT,
        )
        .await
        .unwrap_or_else(|e| station.fail_with_log(e));
    assert_eq!(record.state(), Some(ExecutionState::InProgress));
    assert_eq!(station.platform.snapshot().acks_sent(), 0);
    never_timed_out(&record);

    // The platform answers: the job succeeds, the alert and the job's name leave the inventory.
    station.platform.behave();
    let record = station
        .platform
        .wait_for_state(&job, ExecutionState::Succeeded, PRODUCTION_TIMEOUT)
        .await
        .unwrap_or_else(|e| station.fail_with_log(e));
    never_timed_out(&record);
    let last = record.last_event().unwrap();
    assert_eq!(
        (last.step, last.state),
        (Step::Bind, ExecutionState::Succeeded)
    );
    assert!(record.bound_certificates().is_some_and(|c| c.len() == 3));
    inventory_until(&station, &job, "the alert cleared", |inv| {
        let t = token(inv, &serial)?;
        (inv.alerts.iter().all(|a| a.code.as_str() != ALERT)
            && t.job_id.is_none()
            && t.state == TokenState::Active)
            .then_some(())
    })
    .await;
    light_until(&board, &lights, 0, Light::Done);
    assert!(station.agent_running());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pulled_token_and_a_restart_while_unconfirmed_still_end_in_success() {
    let mut station = Station::sim(1).await;
    silent_desk(&mut station).await;
    let job = station.dispatch_new(KeyAlgorithm::P256).await;
    let serial = station.insert_blank(0);
    bound(&station, &job).await;
    inventory_until(&station, &job, "the platform-unconfirmed alert", |inv| {
        unconfirmed_alert(inv, &job).map(|_| ())
    })
    .await;

    // The staff take the finished token out; the inventory no longer shows it, the alert
    // stays.
    assert_eq!(station.rack().remove(0).unwrap(), serial);
    inventory_until(&station, &job, "the token gone, the alert kept", |inv| {
        (token(inv, &serial).is_none() && unconfirmed_alert(inv, &job).is_some()).then_some(())
    })
    .await;

    // The agent dies and comes back, the platform still silent: the journal keeps the job
    // waiting, and the overdue wait, so the new agent's inventory carries the alert again.
    station.kill_agent();
    let last_seq = station
        .platform
        .snapshot()
        .current_inventory(&station.station_id)
        .map(|i| i.seq)
        .unwrap();
    station.start_agent().await;
    inventory_until(&station, &job, "the alert after the restart", |inv| {
        (inv.seq > last_seq && unconfirmed_alert(inv, &job).is_some()).then_some(())
    })
    .await;
    never_timed_out(&station.platform.job_record(&job).unwrap());

    // The platform answers; the token is not there: the job succeeds all the same.
    station.platform.behave();
    let record = station
        .platform
        .wait_for_state(&job, ExecutionState::Succeeded, PRODUCTION_TIMEOUT)
        .await
        .unwrap_or_else(|e| station.fail_with_log(e));
    never_timed_out(&record);
    assert_eq!(
        record.token_serial().map(|s| s.as_str()),
        Some(serial.as_str())
    );
    assert!(
        record.duplicate_events() > 0,
        "the outbox sent events again"
    );
    inventory_until(&station, &job, "the alert cleared", |inv| {
        inv.alerts
            .iter()
            .all(|a| a.code.as_str() != ALERT)
            .then_some(())
    })
    .await;
    assert!(station.agent_running());
}
