//! A token call that does not return in time (a hung module or USB device) is reported to
//! the desk and the platform, and the job is left to finish.
//!
//! hsm-sim stalls one `C_GenerateKeyPair` for several seconds while the agent's
//! `timeouts.wedged_call_secs` is 1: the retained inventory carries a `token-call-stuck`
//! alert naming the token, its slot, the job and the step, the slot's panel light asks for
//! attention, `ukey-agent status` shows the stuck call, and the log has one warning; when the
//! call returns the alert goes (one info line) and the job succeeds. With nothing slow, no
//! alert is ever raised, and neither with a step longer than the limit whose calls each
//! return in time (the limit is per PKCS#11 call, not per step).
//!
//! Real Mosquitto, the simulated platform, an hsm-sim rack, the real `ukey-agent` binary and
//! the emulated indicator panel. Every wait is on the platform's records, the board's events
//! or the agent's status file, with a deadline.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use hsm_sim::panel::BoardEvent;
use hsm_sim::rack::LatencyChange;
use hsm_sim::rack::fault::{Fault, FaultAction};
use hsm_sim::rack::latency::Op;
use ukey_agent::panel::Light;
use ukey_protocol::event::{ExecutionState, Step};
use ukey_protocol::inventory::{DeskAlert, Inventory};
use ukey_protocol::keys::KeyAlgorithm;
use ukey_protocol::panel::HostLine;
use ukey_tests::station::{PRODUCTION_TIMEOUT, Station};

const ALERT: &str = "token-call-stuck";

/// Long enough past the 1 s limit for the alert, the status and the light to be seen while
/// the call still runs.
const STALL_MS: u64 = 5000;

fn stuck_alert(inventory: &Inventory) -> Option<&DeskAlert> {
    inventory.alerts.iter().find(|a| a.code.as_str() == ALERT)
}

/// Reads the board's events until the host set `slot` to `light` (by `LIGHT` or `STATE`);
/// a light shown only briefly is still seen.
fn light_was_set(events: &std::sync::mpsc::Receiver<BoardEvent>, slot: u8, light: Light) -> bool {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match events.recv_timeout(left) {
            Ok(BoardEvent::Host(HostLine::Light { slot: s, light: l }))
                if s == slot && l == light =>
            {
                return true;
            }
            Ok(BoardEvent::Host(HostLine::State(lights)))
                if lights.get(usize::from(slot)) == Some(&light) =>
            {
                return true;
            }
            Ok(_) => {}
            Err(_) => return false,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_call_raises_an_alert_that_clears_when_it_returns() {
    let mut station = Station::sim(1).await;
    station.configure(|c| c.timeouts.wedged_call_secs = 1);
    let (_board, events) = station.attach_emulated_panel(1);
    station.start_agent().await;
    let serial = station.insert_blank(0);
    // The first key generation hangs for a while, then completes normally.
    station
        .rack()
        .set_fault(
            0,
            Fault::new("C_GenerateKeyPair", 1, FaultAction::Delay { ms: STALL_MS }).unwrap(),
        )
        .unwrap();
    let job = station.dispatch_new(KeyAlgorithm::P256).await;

    // The inventory names the token, its slot, the job and the step.
    let station_id = station.station_id.clone();
    let alert = station
        .platform
        .wait_until("a token-call-stuck alert", PRODUCTION_TIMEOUT, |r| {
            stuck_alert(r.current_inventory(&station_id)?).cloned()
        })
        .await
        .unwrap_or_else(|e| station.fail_with_log(e));
    for needle in [
        serial.as_str(),
        "slot 0",
        job.as_str(),
        Step::GenerateKeys.as_str(),
        "over 1 s",
    ] {
        assert!(alert.message.contains(needle), "{needle}: {alert:?}");
    }
    assert!(alert.port.is_none(), "{alert:?}");
    // The step has not ended: the alert came while the call ran.
    let record = station.platform.job_record(&job).unwrap();
    assert!(
        !record.has_step(Step::GenerateKeys),
        "{:#?}",
        record.events()
    );

    // The operator sees it in `status`, and the slot asks for attention.
    let text = station.status_with("STUCK").await;
    assert!(text.contains(job.as_str()), "{text}");
    assert!(text.contains("a call has not returned"), "{text}");
    assert!(
        light_was_set(&events, 0, Light::Attention),
        "slot 0 never asked for attention"
    );

    // The call returns: the job goes on and succeeds, the alert goes.
    let record = station
        .platform
        .wait_for_state(&job, ExecutionState::Succeeded, PRODUCTION_TIMEOUT)
        .await
        .unwrap_or_else(|e| station.fail_with_log(e));
    assert!(
        record.events().iter().all(|e| e.error.is_none()),
        "{:#?}",
        record.events()
    );
    assert_eq!(
        record.token_serial().map(|s| s.as_str()),
        Some(serial.as_str())
    );
    station
        .platform
        .wait_until("the alert cleared", PRODUCTION_TIMEOUT, |r| {
            let inventory = r.current_inventory(&station_id)?;
            stuck_alert(inventory).is_none().then_some(())
        })
        .await
        .unwrap_or_else(|e| station.fail_with_log(e));
    assert!(
        light_was_set(&events, 0, Light::Done),
        "slot 0 never showed done"
    );
    let log = station.agent_log();
    assert_eq!(
        log.matches("a call on the token has not returned within the limit")
            .count(),
        1,
        "one warning when it starts:\n{log}"
    );
    assert_eq!(
        log.matches("the stuck call on the token has ended").count(),
        1,
        "one line when it ends:\n{log}"
    );
    assert!(station.agent_running());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_alert_when_nothing_is_slow() {
    let mut station = Station::sim(1).await;
    // Short, but well above any step of a P-256 job on an instant simulated token.
    station.configure(|c| c.timeouts.wedged_call_secs = 5);
    station.start_agent().await;
    let _ = station.produce_new(0, KeyAlgorithm::P256).await;
    let records = station.platform.snapshot();
    let inventories = records.inventory();
    assert!(!inventories.is_empty());
    for inventory in inventories {
        assert!(stuck_alert(inventory).is_none(), "{inventory:#?}");
    }
    let log = station.agent_log();
    assert!(!log.contains("has not returned"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_longer_than_the_limit_made_of_short_calls_raises_no_alert() {
    let mut station = Station::sim(1).await;
    station.configure(|c| c.timeouts.wedged_call_secs = 1);
    station.start_agent().await;
    station.insert_blank(0);
    // Three key generations of 600 ms each: the step takes about 1.8 s, no call 1 s.
    station
        .rack()
        .set_latency(Some(0), LatencyChange::Op(Op::KeygenP256, 600))
        .unwrap();
    let job = station.dispatch_new(KeyAlgorithm::P256).await;
    let record = station
        .platform
        .wait_for_state(&job, ExecutionState::Succeeded, PRODUCTION_TIMEOUT)
        .await
        .unwrap_or_else(|e| station.fail_with_log(e));
    let keys = record
        .events()
        .iter()
        .find(|e| e.step == Step::GenerateKeys && e.started_at.is_some())
        .cloned()
        .unwrap_or_else(|| panic!("no timed generate-keys event: {:#?}", record.events()));
    let took = keys.at - keys.started_at.unwrap();
    assert!(
        took > time::Duration::milliseconds(1500),
        "the step must outlast the limit for this test to mean anything: {took}"
    );
    for inventory in station.platform.snapshot().inventory() {
        assert!(stuck_alert(inventory).is_none(), "{inventory:#?}");
    }
    let log = station.agent_log();
    assert!(!log.contains("has not returned"), "{log}");
}
