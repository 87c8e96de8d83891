//! A token its module cannot read is one damaged token at the desk: it shows in the inventory
//! with the failing call and code, its slot asks for attention, it takes no job, and every
//! other slot of the same module is served as usual; once it reads again it is classified
//! like any other.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use hsm_sim::rack::LatencyChange;
use hsm_sim::rack::fault::{Fault, FaultAction};
use hsm_sim::rack::latency::Op;
use ukey_agent::panel::Light;
use ukey_protocol::event::{ExecutionState, Step};
use ukey_protocol::ids::TokenSerial;
use ukey_protocol::inventory::{TokenInfo, TokenState};
use ukey_protocol::keys::KeyAlgorithm;
use ukey_tests::station::{PRODUCTION_TIMEOUT, Station, light_until};

const WAIT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_token_is_one_damaged_slot_and_the_others_are_served() {
    let mut station = Station::sim(3).await;
    let (board, events) = station.attach_emulated_panel(3);
    let first = TokenSerial::new(station.insert_blank(0)).unwrap();
    let bad = TokenSerial::new(station.insert_blank(1)).unwrap();
    let last = TokenSerial::new(station.insert_blank(2)).unwrap();
    // The token in slot 1 has gone bad: the module lists it but cannot read it.
    let fault = Fault::new(
        "C_GetTokenInfo",
        1,
        // CKR_DEVICE_ERROR
        FaultAction::Fail { rv: 0x30 },
    )
    .unwrap()
    .sticky();
    station.rack().set_fault(1, fault).unwrap();
    // One production takes a second, so the desk scans the damaged slot a score of times
    // (every 50 ms) before the jobs end.
    station
        .rack()
        .set_latency(Some(0), LatencyChange::Op(Op::InitToken, 1000))
        .unwrap();
    station.start_agent().await;

    // The inventory shows it damaged, with the call and the code, beside two blank tokens.
    let station_id = station.station_id.clone();
    let damaged: TokenInfo = station
        .platform
        .wait_until("slot 1 damaged beside two blank tokens", WAIT, |r| {
            let inventory = r.current_inventory(&station_id)?;
            let token = |slot: u32| {
                inventory
                    .slots
                    .iter()
                    .find(|s| s.slot == slot)
                    .and_then(|s| s.token.clone())
            };
            let blank = |slot: u32, serial: &TokenSerial| {
                token(slot).is_some_and(|t| {
                    t.state == TokenState::Blank && t.serial.as_ref() == Some(serial)
                })
            };
            (blank(0, &first) && blank(2, &last))
                .then(|| token(1))
                .flatten()
                .filter(|t| t.state == TokenState::Damaged)
        })
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", station.agent_log()));
    assert_eq!(
        damaged.serial, None,
        "its serial was never read: {damaged:?}"
    );
    assert_eq!(damaged.job_id, None);
    let damage = damaged.damage.clone().expect("a damaged token says why");
    assert_eq!(
        damage.function.as_deref(),
        Some("C_GetTokenInfo"),
        "{damage:?}"
    );
    assert_eq!(
        damage.return_code.as_deref(),
        Some("CKR_DEVICE_ERROR"),
        "{damage:?}"
    );
    assert!(damage.message.contains("CKR_DEVICE_ERROR"), "{damage:?}");
    // Its slot asks for a person; the blank ones stay dark.
    light_until(&board, &events, 1, Light::Attention);
    assert_eq!(board.lights()[0], Light::Off);
    assert_eq!(board.lights()[2], Light::Off);

    // Three jobs: the two readable tokens take one each and finish; the damaged one takes
    // none, so the third waits.
    let jobs = [
        station.dispatch_new(KeyAlgorithm::P256).await,
        station.dispatch_new(KeyAlgorithm::P256).await,
        station.dispatch_new(KeyAlgorithm::P256).await,
    ];
    let mut served = Vec::new();
    let mut waiting = None;
    for _ in 0..2 {
        let finished = station
            .platform
            .wait_until("a job to succeed", PRODUCTION_TIMEOUT, |r| {
                jobs.iter()
                    .find(|j| {
                        !served.contains(*j)
                            && r.job(j)
                                .is_some_and(|rec| rec.reached(ExecutionState::Succeeded))
                    })
                    .cloned()
            })
            .await
            .unwrap_or_else(|e| panic!("{e}\n{}", station.agent_log()));
        served.push(finished);
    }
    for job in &jobs {
        let record = station.platform.job_record(job).unwrap();
        if served.contains(job) {
            let serial = record.token_serial().cloned();
            assert!(
                serial == Some(first.clone()) || serial == Some(last.clone()),
                "job {job} ran on {serial:?}"
            );
        } else {
            assert!(
                !record.has_step(Step::Claim),
                "job {job} was claimed while only the damaged token was free"
            );
            waiting = Some(job.clone());
        }
    }
    let waiting = waiting.unwrap();
    assert_ne!(
        station
            .platform
            .job_record(&served[0])
            .unwrap()
            .token_serial(),
        station
            .platform
            .job_record(&served[1])
            .unwrap()
            .token_serial(),
    );
    assert!(
        !station.rack().token(bad.as_str()).unwrap().is_initialized(),
        "the damaged token was left untouched"
    );
    // Scanned many times meanwhile, it was reported once.
    let log = station.agent_log();
    assert_eq!(
        log.matches("token cannot be read").count(),
        1,
        "the failure is logged once per change\n{log}"
    );

    // It reads again: classified as a blank token, it takes the waiting job and finishes.
    station.rack().clear_faults(1).unwrap();
    station
        .platform
        .wait_for_state(&waiting, ExecutionState::Succeeded, PRODUCTION_TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", station.agent_log()));
    assert_eq!(
        station
            .platform
            .job_record(&waiting)
            .unwrap()
            .token_serial(),
        Some(&bad)
    );
    let healed = station
        .platform
        .wait_until("slot 1 active with its serial", WAIT, |r| {
            r.current_inventory(&station_id)?
                .slots
                .iter()
                .find(|s| s.slot == 1)
                .and_then(|s| s.token.clone())
                .filter(|t| t.state == TokenState::Active)
        })
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", station.agent_log()));
    assert_eq!(healed.serial.as_ref(), Some(&bad));
    assert_eq!(healed.damage, None);
    light_until(&board, &events, 1, Light::Done);

    // A token known to the desk goes bad: it keeps its serial in the inventory.
    let fault = Fault::new("C_GetTokenInfo", 1, FaultAction::Fail { rv: 0x30 })
        .unwrap()
        .sticky();
    station.rack().set_fault(1, fault).unwrap();
    let again = station
        .platform
        .wait_until("slot 1 damaged again", WAIT, |r| {
            r.current_inventory(&station_id)?
                .slots
                .iter()
                .find(|s| s.slot == 1)
                .and_then(|s| s.token.clone())
                .filter(|t| t.state == TokenState::Damaged)
        })
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", station.agent_log()));
    assert_eq!(again.serial.as_ref(), Some(&bad), "{again:?}");
    assert!(again.damage.is_some(), "{again:?}");
    light_until(&board, &events, 1, Light::Attention);
    station.rack().clear_faults(1).unwrap();
    station
        .platform
        .wait_until("slot 1 active again", WAIT, |r| {
            r.current_inventory(&station_id)?
                .slots
                .iter()
                .find(|s| s.slot == 1)
                .and_then(|s| s.token.clone())
                .filter(|t| t.state == TokenState::Active && t.damage.is_none())
        })
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", station.agent_log()));
    let log = station.agent_log();
    assert_eq!(
        log.matches("token cannot be read").count(),
        2,
        "once per change\n{log}"
    );
}

/// The token in slot `slot` of the current inventory (`None`: the slot is empty), once
/// `pred` holds for it.
async fn wait_slot(
    station: &Station,
    slot: u32,
    what: &str,
    pred: impl Fn(Option<&TokenInfo>) -> bool,
) -> Option<TokenInfo> {
    let station_id = station.station_id.clone();
    station
        .platform
        .wait_until(what, WAIT, |r| {
            let token = r
                .current_inventory(&station_id)?
                .slots
                .iter()
                .find(|s| s.slot == slot)
                .and_then(|s| s.token.clone());
            pred(token.as_ref()).then_some(token)
        })
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", station.agent_log()))
}

/// How many calls the token's armed faults have seen.
fn fault_seen(station: &Station, serial: &TokenSerial) -> u32 {
    station
        .rack()
        .modify_token(serial.as_str(), |t| {
            t.faults().first().map_or(0, |f| f.seen())
        })
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_that_keeps_failing_is_read_again_less_and_less_often() {
    let mut station = Station::sim(1).await;
    station.start_agent().await;
    let serial = TokenSerial::new(station.insert_blank(0)).unwrap();
    wait_slot(&station, 0, "the blank token", |t| {
        t.is_some_and(|t| t.serial.as_ref() == Some(&serial))
    })
    .await;
    // Out, initialized elsewhere, and back with a listing of its objects that always fails.
    station.rack().remove(0).unwrap();
    wait_slot(&station, 0, "the slot empty", |t| t.is_none()).await;
    station
        .rack()
        .modify_token(serial.as_str(), |t| {
            t.init_token(b"12345678", "bank token").unwrap();
            // CKR_DEVICE_ERROR on each of the next 500 calls. One-shot faults, not a sticky
            // one: each counts every call, so the first left says how many there were.
            for nth in 1..=500 {
                let fault = Fault::new("C_FindObjectsInit", nth, FaultAction::Fail { rv: 0x30 });
                t.faults_mut().push(fault.unwrap());
            }
        })
        .unwrap();
    station.reinsert(0, serial.as_str());
    let damaged = wait_slot(&station, 0, "the token damaged", |t| {
        t.is_some_and(|t| t.state == TokenState::Damaged)
    })
    .await
    .unwrap();
    assert_eq!(damaged.serial.as_ref(), Some(&serial));

    // The desk scans every 50 ms: read again on every scan, that would be some 60 readings in
    // three seconds; backing off (50, 100, 200 ... ms) it is about seven.
    let before = fault_seen(&station, &serial);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let readings = fault_seen(&station, &serial) - before;
    assert!(
        readings >= 1,
        "never read again (before: {before})\n{}",
        station.agent_log()
    );
    assert!(readings <= 12, "{readings} readings in 3 s");

    // It reads again: the next reading (at most half a minute away) classifies it.
    station.rack().clear_faults(0).unwrap();
    let healed = wait_slot(&station, 0, "the token classified", |t| {
        t.is_some_and(|t| t.state == TokenState::Foreign && t.damage.is_none())
    })
    .await
    .unwrap();
    assert_eq!(healed.serial.as_ref(), Some(&serial));
    assert!(station.agent_running());
}
