//! What the desk staff and the operator see: the indicator panel's lights follow the slot
//! table, and `ukey-agent status` shows the desk at a glance.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use ukey_agent::config::ModelConfig;
use ukey_agent::panel::{ButtonAction, Light};
use ukey_platform_sim::JobDraft;
use ukey_protocol::event::ExecutionState;
use ukey_protocol::job::JobKind;
use ukey_protocol::keys::KeyAlgorithm;
use ukey_tests::station::{PRODUCTION_TIMEOUT, Station, light_until};

const WAIT: Duration = Duration::from_secs(60);

/// A `[[models]]` entry: USB `vendor_id:product_id` served by `module`, default PIN policy.
fn model(name: &str, vendor_id: u16, product_id: u16, module: &std::path::Path) -> ModelConfig {
    ModelConfig {
        name: name.into(),
        vendor_id,
        product_id,
        module: module.to_path_buf(),
        interface: ukey_agent::device::Interface::Pkcs11,
        pin_min: 6,
        pin_max: 16,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panel_lights_and_status_follow_the_desk() {
    let mut station = Station::sim(2).await;
    let (board, events) = station.attach_emulated_panel(2);
    station.start_agent().await;

    let _ = station.produce_new(1, KeyAlgorithm::P256).await;
    // A finished token: "take it out".
    light_until(&board, &events, 1, Light::Done);
    assert_eq!(board.lights()[0], Light::Off, "the empty slot stays dark");

    // The operator acknowledges: the light goes out.
    board.press(1, ButtonAction::Ack).unwrap();
    light_until(&board, &events, 1, Light::Off);

    // `status` shows the station, the broker, the token and its state.
    let deadline = Instant::now() + WAIT;
    let (code, text) = loop {
        let (code, text) = station.agent_status();
        if code == Some(0) && text.contains("active") || Instant::now() > deadline {
            break (code, text);
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("station desk-test"), "{text}");
    assert!(text.contains("broker:  connected"), "{text}");
    assert!(text.contains("active"), "{text}");
    assert!(text.contains("panel:   connected"), "{text}");

    // Stopped: `status` says so and exits 1.
    assert_eq!(station.stop_agent().and_then(|s| s.code()), Some(0));
    let (code, text) = station.agent_status();
    assert!(
        code == Some(1) || text.contains("NOT RUNNING"),
        "{code:?} {text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_model_module_is_reported_and_the_desk_keeps_working() {
    let mut station = Station::sim(1).await;
    let broken = station.dir().join("broken-ukey.so");
    std::fs::write(&broken, "not a shared library").unwrap();
    station.configure(move |c| c.models.push(model("Broken K9", 0x1234, 0x5678, &broken)));
    station.start_agent().await;
    let _ = station.produce_new(0, KeyAlgorithm::P256).await;
    let station_id = station.station_id.clone();
    let alert = station
        .platform
        .wait_until("a module-missing alert in the inventory", WAIT, |r| {
            r.current_inventory(&station_id)?
                .alerts
                .iter()
                .find(|a| a.code.as_str() == "module-missing")
                .cloned()
        })
        .await
        .unwrap();
    assert!(alert.message.contains("broken-ukey.so"), "{alert:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ukey_without_usb_access_is_reported_apart_from_absence() {
    let mut station = Station::sim(2).await;
    station.usb_sim = true;
    // The sim's tokens are USB 5553:4b01: a configured model, served by the sim's module.
    let module = ukey_tests::hsm_sim_module();
    station.configure(move |c| c.models.push(model("Ukey-Sim", 0x5553, 0x4b01, &module)));
    station.start_agent().await;
    station.insert_blank(1);
    station.rack().set_usb_access(1, false).unwrap();
    let port = hsm_sim::rack::port_path(1);
    let station_id = station.station_id.clone();
    let alert = station
        .platform
        .wait_until("a usb-not-accessible alert", WAIT, |r| {
            r.current_inventory(&station_id)?
                .alerts
                .iter()
                .find(|a| a.code.as_str() == "usb-not-accessible")
                .cloned()
        })
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", station.agent_log()));
    assert_eq!(alert.port.as_deref(), Some(port.as_str()));
    assert!(alert.message.contains("udev rules"), "{alert:?}");

    // Access restored (the operator fixed the rules and re-plugged): the alert goes away.
    station.rack().set_usb_access(1, true).unwrap();
    station
        .platform
        .wait_until("the alert to clear", WAIT, |r| {
            r.current_inventory(&station_id)
                .filter(|i| i.alerts.is_empty())
                .map(|_| ())
        })
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", station.agent_log()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_targeted_job_meeting_the_wrong_token_says_so_and_touches_nothing() {
    let mut station = Station::sim(2).await;
    station.start_agent().await;
    // A finished Ukey.
    let (_, serial, _) = station.produce_new(0, KeyAlgorithm::P256).await;
    let station_id = station.station_id.clone();
    // The inventory shows it finished (so that its leaving below is news, not an older table).
    station
        .platform
        .wait_until("the finished token in the inventory", WAIT, |r| {
            r.current_inventory(&station_id)?
                .slots
                .iter()
                .any(|s| {
                    s.token.as_ref().is_some_and(|t| {
                        t.serial.as_ref().is_some_and(|s| s.as_str() == serial)
                            && t.state == ukey_protocol::inventory::TokenState::Active
                    })
                })
                .then_some(())
        })
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", station.agent_log()));
    // The staff pull it out; the platform then asks to renew another token.
    station.rack().remove(0).unwrap();
    station
        .platform
        .wait_until("the token to leave the inventory", WAIT, |r| {
            let inv = r.current_inventory(&station_id)?;
            (!inv.slots.iter().any(|s| {
                s.token
                    .as_ref()
                    .is_some_and(|t| t.serial.as_ref().is_some_and(|s| s.as_str() == serial))
            }))
            .then_some(())
        })
        .await
        .unwrap();
    let other = ukey_protocol::ids::TokenSerial::new("0123456789ABCDEF").unwrap();
    let renew = station
        .platform
        .dispatch_draft(
            &JobDraft::new(JobKind::Renew, &station.station_id)
                .unwrap()
                .with_target(other.clone()),
        )
        .await
        .unwrap();
    // They plug the finished Ukey in again: the desk says it is the wrong one.
    station.reinsert(0, &serial);
    let alert = station
        .platform
        .wait_until("a wrong-token alert", WAIT, |r| {
            r.current_inventory(&station_id)?
                .alerts
                .iter()
                .find(|a| a.code.as_str() == "wrong-token")
                .cloned()
        })
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", station.agent_log()));
    assert!(alert.message.contains(&serial), "{alert:?}");
    assert!(alert.message.contains(other.as_str()), "{alert:?}");
    // Untouched: classified active, no job on it, and the renew job still waits.
    let token = station
        .platform
        .wait_until("the token to show as active", WAIT, |r| {
            r.current_inventory(&station_id)?
                .slots
                .iter()
                .find_map(|s| {
                    s.token
                        .as_ref()
                        .filter(|t| t.serial.as_ref().is_some_and(|s| s.as_str() == serial))
                })
                .filter(|t| t.state == ukey_protocol::inventory::TokenState::Active)
                .cloned()
        })
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", station.agent_log()));
    assert!(token.job_id.is_none(), "{token:?}");
    let record = station.platform.job_record(&renew).unwrap();
    assert!(
        record
            .events()
            .iter()
            .all(|e| e.step != ukey_protocol::event::Step::Claim)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_models_pin_policy_shapes_the_pins() {
    use secrecy::ExposeSecret;
    let mut station = Station::sim(1).await;
    station.usb_sim = true;
    let module = ukey_tests::hsm_sim_module();
    station.configure(move |c| {
        c.models.push(ModelConfig {
            pin_min: 12,
            pin_max: 12,
            ..model("Ukey-Sim", 0x5553, 0x4b01, &module)
        })
    });
    station.start_agent().await;
    let serial = station.insert_blank(0);
    // The USB arrival (which tells the model) is seen before the job arrives.
    station.wait_for_log("Ukey plugged in", 1, WAIT).await;
    let job = station.dispatch_new(KeyAlgorithm::P256).await;
    station
        .platform
        .wait_for_state(&job, ExecutionState::Succeeded, PRODUCTION_TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", station.agent_log()));
    let serial = ukey_protocol::ids::TokenSerial::new(serial).unwrap();
    let pin = station.platform.user_pin(&serial).unwrap();
    assert_eq!(
        pin.expose_secret().len(),
        12,
        "the model asks for 12-character PINs"
    );
}
