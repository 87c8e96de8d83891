//! Rack positions from the configuration and USB ports matched to tokens without assuming
//! that the USB serial is the token serial: hsm-sim's virtual USB bus and vendor profiles
//! (`--model`), the agent as a process, the inventory as the platform receives it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use hsm_sim::rack::InsertOptions;
use ukey_agent::config::{ModelConfig, RackPosition};
use ukey_protocol::inventory::SlotInfo;
use ukey_tests::station::Station;

const WAIT: Duration = Duration::from_secs(60);

fn model(name: &str, vendor_id: u16, product_id: u16) -> ModelConfig {
    ModelConfig {
        name: name.into(),
        vendor_id,
        product_id,
        module: ukey_tests::hsm_sim_module(),
        interface: ukey_agent::device::Interface::Pkcs11,
        pin_min: 6,
        pin_max: 16,
    }
}

/// The inventory's slot of the token with `serial`, once it shows with a port.
async fn slot_of(station: &Station, serial: &str) -> SlotInfo {
    let station_id = station.station_id.clone();
    station
        .platform
        .wait_until(&format!("token {serial} with its port"), WAIT, |r| {
            r.current_inventory(&station_id)?
                .slots
                .iter()
                .find(|s| {
                    s.port.is_some()
                        && s.token
                            .as_ref()
                            .and_then(|t| t.serial.as_ref())
                            .is_some_and(|t| t.as_str() == serial)
                })
                .cloned()
        })
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", station.agent_log()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_inventory_shows_configured_positions_and_ports() {
    let mut station = Station::sim(4).await;
    station.usb_sim = true;
    station.configure(|c| {
        c.models.push(model("Ukey-Sim", 0x5553, 0x4b01));
        c.models.push(model("Feitian ePass2003", 0x096e, 0x0807));
        // Rack slots 0..=2 carry positions 7, 5, 6; rack slot 3 (1-1.4) is off the rack.
        for (port, position) in [("1-1.1", 7), ("1-1.2", 5), ("1-1.3", 6)] {
            c.rack.positions.push(RackPosition {
                port: port.into(),
                position,
            });
        }
    });
    station.start_agent().await;

    // USB serial = token serial, and the slot description names the port: exact.
    let plain = station.insert_blank(1);
    let s = slot_of(&station, &plain).await;
    assert_eq!(s.slot, 5, "the configured position, not the slot id 1");
    let port = s.port.unwrap();
    assert_eq!(port.path, "1-1.2");
    assert!(!port.guessed);

    // Another USB serial, a slot id from 0x100, no port in the slot description: the one
    // new slot after the arrival, and the inventory says it is a guess.
    let vendor = station
        .rack()
        .insert(
            2,
            InsertOptions {
                model: Some("epass2003".into()),
                ..Default::default()
            },
        )
        .unwrap();
    let bus = hsm_sim::usb::attached(station.rack().dir()).unwrap();
    assert!(bus.devices.iter().all(|d| d.serial != vendor));
    let s = slot_of(&station, &vendor).await;
    assert_eq!(s.slot, 6);
    let port = s.port.unwrap();
    assert_eq!(port.path, "1-1.3");
    assert!(port.guessed);
    assert_eq!(s.token.unwrap().model, "ePass2003 (sim)");

    // A port not on the configured rack: the token still shows, with its port.
    let off = station.insert_blank(3);
    let s = slot_of(&station, &off).await;
    assert!(s.slot >= 1000, "no configured position: {}", s.slot);
    assert_eq!(s.port.unwrap().path, "1-1.4");

    // Pulled and plugged into another port: the position follows the port.
    station.rack().remove(1).unwrap();
    station.reinsert(0, &plain);
    let station_id = station.station_id.clone();
    station
        .platform
        .wait_until("the token at position 7", WAIT, |r| {
            r.current_inventory(&station_id)?
                .slots
                .iter()
                .find(|s| {
                    s.slot == 7
                        && s.port.as_ref().is_some_and(|p| p.path == "1-1.1")
                        && s.token
                            .as_ref()
                            .and_then(|t| t.serial.as_ref())
                            .is_some_and(|t| t.as_str() == plain)
                })
                .cloned()
        })
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", station.agent_log()));
}
