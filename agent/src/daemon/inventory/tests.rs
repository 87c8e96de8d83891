//! Unit tests of the inventory's builders: the slot table and the desk's alerts, from seats
//! and problems made by hand.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::PathBuf;

use ukey_protocol::ids::{JobId, TokenSerial};
use ukey_protocol::inventory::{MAX_ALERTS, TokenDamage, TokenState};

use super::{AlertSources, Overdue, RackView, desk_alerts, inventory_slots};
use crate::config::RackConfig;
use crate::rack::PortTable;

static NO_RACK: std::sync::LazyLock<(RackConfig, PortTable)> =
    std::sync::LazyLock::new(|| (RackConfig::default(), PortTable::default()));

/// No rack configured: positions are slot ids, as before racks.
fn unconfigured() -> RackView<'static> {
    RackView {
        config: &NO_RACK.0,
        ports: &NO_RACK.1,
    }
}
use crate::daemon::seats::Seat;
use crate::desk::TokenKey;
use crate::token::{PresentToken, TokenFlags};

fn present(slot: u64, serial: &str, model: &str) -> PresentToken {
    PresentToken {
        slot,
        serial: serial.into(),
        label: String::new(),
        model: model.into(),
        manufacturer: String::new(),
        flags: TokenFlags {
            initialized: true,
            ..TokenFlags::default()
        },
        min_pin_len: 6,
        max_pin_len: 16,
        slot_description: String::new(),
    }
}

fn id(s: &str) -> JobId {
    JobId::new(s).unwrap()
}

#[test]
fn slots_are_numbered_by_module_and_show_serial_less_tokens_only_when_damaged() {
    let mut seats = BTreeMap::new();
    seats.insert(
        TokenKey::Serial("S1".into()),
        Seat::new(1, present(7, "S1", ""), TokenState::Active),
    );
    // A blank SoftHSM2 slot: no serial, not damaged: a slot without a token.
    seats.insert(
        TokenKey::Unnamed { module: 0, slot: 3 },
        Seat::new(0, present(3, "", "SoftHSM"), TokenState::Blank),
    );
    let mut damaged = Seat::new(0, present(4, "", "SoftHSM"), TokenState::Damaged);
    damaged.damage = Some(TokenDamage {
        function: Some("C_GetTokenInfo".into()),
        return_code: Some("CKR_DEVICE_ERROR".into()),
        message: "device error".into(),
    });
    seats.insert(TokenKey::Unnamed { module: 0, slot: 4 }, damaged);

    let slots = inventory_slots(&seats, unconfigured(), |_| None);
    let by_slot: BTreeMap<u32, _> = slots.iter().map(|s| (s.slot, s)).collect();
    assert_eq!(by_slot.len(), 3);
    let s1 = by_slot[&1007].token.as_ref().unwrap();
    assert_eq!(s1.serial, Some(TokenSerial::new("S1").unwrap()));
    assert_eq!(s1.model, "unknown");
    assert_eq!(s1.state, TokenState::Active);
    assert!(s1.damage.is_none());
    assert!(by_slot[&3].token.is_none());
    let broken = by_slot[&4].token.as_ref().unwrap();
    assert_eq!(broken.serial, None);
    assert_eq!(broken.state, TokenState::Damaged);
    assert_eq!(
        broken.damage.as_ref().unwrap().function.as_deref(),
        Some("C_GetTokenInfo")
    );
}

#[test]
fn a_finished_token_names_its_job_until_the_platform_confirms_it() {
    let mut seats = BTreeMap::new();
    seats.insert(
        TokenKey::Serial("S1".into()),
        Seat::new(0, present(1, "S1", "m"), TokenState::Active),
    );
    let mut working = Seat::new(0, present(2, "S2", "m"), TokenState::InProduction);
    working.job = Some(id("j-working"));
    seats.insert(TokenKey::Serial("S2".into()), working);
    let unconfirmed = id("j-done");
    let slots = inventory_slots(&seats, unconfigured(), |serial| {
        (serial == "S1").then_some(&unconfirmed)
    });
    let jobs: Vec<Option<String>> = slots
        .iter()
        .map(|s| {
            s.token
                .as_ref()
                .unwrap()
                .job_id
                .as_ref()
                .map(ToString::to_string)
        })
        .collect();
    assert_eq!(
        jobs,
        vec![Some("j-done".to_owned()), Some("j-working".to_owned())]
    );
    // Confirmed: the token names no job.
    let slots = inventory_slots(&seats, unconfigured(), |_| None);
    assert_eq!(slots[0].token.as_ref().unwrap().job_id, None);
}

#[test]
fn two_seats_in_one_slot_number_show_once() {
    let mut seats = BTreeMap::new();
    // A token that went bad keeps its key; one unreadable from the start is named by slot.
    seats.insert(
        TokenKey::Serial("A".into()),
        Seat::new(0, present(5, "A", "m"), TokenState::Active),
    );
    seats.insert(
        TokenKey::Serial("B".into()),
        Seat::new(0, present(1005, "B", "m"), TokenState::Active),
    );
    let slots = inventory_slots(&seats, unconfigured(), |_| None);
    assert_eq!(slots.len(), 1);
    assert_eq!(
        slots[0].token.as_ref().unwrap().serial,
        Some(TokenSerial::new("A").unwrap())
    );
}

fn sources<'a>(
    usb: &'a BTreeMap<String, (ukey_protocol::codes::Code, String)>,
    modules: &'a [(PathBuf, String)],
    overdue: Vec<Overdue<'a>>,
) -> AlertSources<'a> {
    AlertSources {
        module_problems: modules,
        wrong_tokens: Vec::new(),
        usb_problems: usb,
        stuck_calls: Vec::new(),
        overdue,
        bind_ack_secs: 30,
        resend_secs: 10,
    }
}

#[test]
fn alerts_come_in_order_with_their_codes_and_ports() {
    let modules = vec![(PathBuf::from("/x/vendor.so"), "not found".to_owned())];
    let mut usb = BTreeMap::new();
    usb.insert(
        "1-2".to_owned(),
        (
            ukey_protocol::codes::USB_NOT_ACCESSIBLE,
            "Ukey at USB port 1-2: permission denied".to_owned(),
        ),
    );
    let other = TokenKey::Serial("OTHER".into());
    let waiting = id("j-renew");
    let done = id("j-done");
    let mut s = sources(
        &usb,
        &modules,
        vec![Overdue {
            job: &done,
            serial: Some("S9"),
            step: Some("bind"),
        }],
    );
    s.wrong_tokens = vec![(&other, waiting, TokenSerial::new("WANTED").unwrap())];
    let alerts = desk_alerts(s);
    let codes: Vec<&str> = alerts.iter().map(|a| a.code.as_str()).collect();
    assert_eq!(
        codes,
        vec![
            "module-missing",
            "wrong-token",
            "usb-not-accessible",
            "platform-unconfirmed"
        ]
    );
    assert!(alerts[0].message.contains("/x/vendor.so"));
    assert!(alerts[1].message.contains("OTHER") && alerts[1].message.contains("WANTED"));
    assert_eq!(alerts[2].port.as_deref(), Some("1-2"));
    assert_eq!(alerts[1].port, None);
    assert!(alerts[3].message.contains("j-done") && alerts[3].message.contains("S9"));
    assert!(alerts[3].message.contains("bind event for over 30 s"));
}

#[test]
fn overdue_jobs_that_do_not_fit_are_summed_up_in_the_last_alert() {
    let usb = BTreeMap::new();
    let ids: Vec<JobId> = (0..MAX_ALERTS + 5).map(|i| id(&format!("j{i}"))).collect();
    let overdue = ids
        .iter()
        .map(|job| Overdue {
            job,
            serial: None,
            step: None,
        })
        .collect();
    let modules = vec![(PathBuf::from("m.so"), "gone".to_owned())];
    let alerts = desk_alerts(sources(&usb, &modules, overdue));
    assert_eq!(alerts.len(), MAX_ALERTS);
    // The module problem is never crowded out.
    assert_eq!(alerts[0].code.as_str(), "module-missing");
    let last = alerts.last().unwrap();
    assert_eq!(last.code.as_str(), "platform-unconfirmed");
    // One for the module, MAX_ALERTS - 2 overdue jobs one by one, the rest summed up.
    let summed = MAX_ALERTS + 5 - (MAX_ALERTS - 2);
    assert!(
        last.message.starts_with(&format!("{summed} more jobs")),
        "{}",
        last.message
    );
}

#[test]
fn no_problem_no_alert() {
    let usb = BTreeMap::new();
    assert!(desk_alerts(sources(&usb, &[], Vec::new())).is_empty());
}

#[test]
fn a_configured_rack_numbers_slots_and_lights_by_port() {
    use crate::config::RackPosition;
    use crate::usb::UsbDevice;
    let config = RackConfig {
        positions: vec![RackPosition {
            port: "1-1.2".into(),
            position: 9,
        }],
    };
    let mut ports = PortTable::default();
    let later = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
    for (port, serial) in [("1-1.2", "ONRACK"), ("1-1.7", "OFFRACK")] {
        let device = UsbDevice {
            port_path: port.into(),
            vendor_id: 1,
            product_id: 2,
            serial: Some(serial.into()),
            accessible: true,
        };
        ports.arrived(device, None, [], later);
    }
    let mut seats = BTreeMap::new();
    let (on, off, unknown) = (
        TokenKey::Serial("ONRACK".into()),
        TokenKey::Serial("OFFRACK".into()),
        TokenKey::Serial("NOPORT".into()),
    );
    seats.insert(
        on.clone(),
        Seat::new(0, present(0x100, "ONRACK", "m"), TokenState::Blank),
    );
    seats.insert(
        off.clone(),
        Seat::new(0, present(3, "OFFRACK", "m"), TokenState::Blank),
    );
    seats.insert(
        unknown.clone(),
        Seat::new(1, present(2, "NOPORT", "m"), TokenState::Blank),
    );
    let seen: Vec<crate::rack::Seen<'_>> = seats
        .iter()
        .map(|(key, seat)| crate::rack::Seen {
            key,
            serial: &seat.present.serial,
            slot_description: "",
            module: 0,
        })
        .collect();
    assert_eq!(ports.match_tokens(&seen).len(), 2);
    let rack = RackView {
        config: &config,
        ports: &ports,
    };
    assert_eq!(rack.slot(&on, &seats[&on]), 9);
    assert_eq!(rack.panel(&on, &seats[&on]), Some(9));
    // Off the rack: shown apart, no light.
    assert_eq!(rack.slot(&off, &seats[&off]), 1003);
    assert_eq!(rack.panel(&off, &seats[&off]), None);
    assert_eq!(rack.slot(&unknown, &seats[&unknown]), 2002);
    assert_eq!(rack.panel(&unknown, &seats[&unknown]), None);
    let slots = inventory_slots(&seats, rack, |_| None);
    let port = |n: u32| slots.iter().find(|s| s.slot == n).unwrap().port.clone();
    assert_eq!(port(9).unwrap().path, "1-1.2");
    assert_eq!(port(1003).unwrap().path, "1-1.7");
    assert_eq!(port(2002), None);
    // Without a rack configured, slot ids as before.
    assert_eq!(unconfigured().slot(&on, &seats[&on]), 256);
    assert_eq!(unconfigured().panel(&off, &seats[&off]), Some(3));
}
