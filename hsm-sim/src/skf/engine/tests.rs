//! The SKF engine without the C ABI: hot-plug events, removal, the secure state, latency.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use super::*;
use crate::rack::token::TokenSettings;
use crate::rack::{InsertOptions, LatencyChange, RackConfig};

fn skf() -> InsertOptions {
    InsertOptions {
        settings: Some(TokenSettings::skf()),
        ..Default::default()
    }
}

fn rack(slots: usize) -> (tempfile::TempDir, Rack) {
    let dir = tempfile::tempdir().unwrap();
    let rack = Rack::init(
        dir.path(),
        RackConfig {
            slots,
            ..Default::default()
        },
        false,
    )
    .unwrap();
    (dir, rack)
}

/// Connects, authenticates with the factory key, creates `app` and verifies the user PIN.
fn ready(e: &SkfEngine, slot: usize, app: &str) -> (usize, usize) {
    let dev = e.connect(dev_name(slot).as_bytes()).unwrap();
    let mut challenge = [0u8; 8];
    e.gen_random(dev, &mut challenge).unwrap();
    let mut padded = [0u8; 16];
    padded[..8].copy_from_slice(&challenge);
    let auth = gm::sm4_ecb(super::super::device::FACTORY_DEV_AUTH_KEY, &padded, true).unwrap();
    e.dev_auth(dev, &auth).unwrap();
    let a = e
        .create_app(
            dev,
            app.as_bytes(),
            b"12345678",
            10,
            b"123456",
            6,
            SECURE_USER_ACCOUNT,
        )
        .unwrap();
    e.verify_pin(a, USER_TYPE, b"123456", &mut 0).unwrap();
    (dev, a)
}

#[test]
fn hot_plug_events_and_cancel() {
    let (dir, r) = rack(3);
    r.insert(0, skf()).unwrap();
    let e = std::sync::Arc::new(SkfEngine::new(Rack::open(dir.path()).unwrap()));
    // Present at start: no event. A PKCS#11 token is no SKF event either.
    r.insert(1, InsertOptions::default()).unwrap();
    let serial = r.insert(2, skf()).unwrap();
    let mut needed = 0;
    assert_eq!(
        e.wait_for_dev_event(4, &mut needed),
        Err(SAR_BUFFER_TOO_SMALL)
    );
    assert_eq!(needed, dev_name(2).len() + 1);
    assert_eq!(
        e.wait_for_dev_event(64, &mut needed).unwrap(),
        (dev_name(2), DEV_EVENT_ARRIVAL)
    );
    assert_eq!(e.enum_dev(true).unwrap(), vec![dev_name(0), dev_name(2)]);
    assert_eq!(e.enum_dev(false).unwrap().len(), 3);
    assert_eq!(
        e.dev_state(dev_name(1).as_bytes()).unwrap(),
        DEV_ABSENT_STATE
    );
    assert_eq!(e.dev_state(b"elsewhere"), Err(SAR_INVALIDPARAMERR));
    // Swapped between two looks: a removal, then an arrival.
    r.remove(2).unwrap();
    r.insert(
        2,
        InsertOptions {
            serial: Some(serial),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(
        e.wait_for_dev_event(64, &mut needed).unwrap().1,
        DEV_EVENT_REMOVAL
    );
    assert_eq!(
        e.wait_for_dev_event(64, &mut needed).unwrap().1,
        DEV_EVENT_ARRIVAL
    );
    // A blocked wait ends when cancelled.
    let waiter = {
        let e = std::sync::Arc::clone(&e);
        std::thread::spawn(move || e.wait_for_dev_event(64, &mut 0))
    };
    e.cancel_wait().unwrap();
    assert_eq!(waiter.join().unwrap(), Err(SAR_NOT_EVENTERR));
    // A cancel with no wait in progress ends the next wait, once.
    e.cancel_wait().unwrap();
    assert_eq!(e.wait_for_dev_event(64, &mut needed), Err(SAR_NOT_EVENTERR));
    r.remove(0).unwrap();
    assert_eq!(
        e.wait_for_dev_event(64, &mut needed).unwrap(),
        (dev_name(0), DEV_EVENT_REMOVAL)
    );
}

#[test]
fn a_pulled_device_fails_its_handles_and_a_replug_needs_new_ones() {
    let (dir, r) = rack(1);
    let serial = r.insert(0, skf()).unwrap();
    let e = SkfEngine::new(Rack::open(dir.path()).unwrap());
    let (dev, app) = ready(&e, 0, "ukey");
    let con = e.create_container(app, b"seal-legal").unwrap();
    e.gen_ecc_keypair(con, SGD_SM2_1).unwrap();
    r.remove(0).unwrap();
    assert_eq!(e.ecc_sign(con, &[0; 32]), Err(SAR_DEVICE_REMOVED));
    assert_eq!(e.enum_apps(dev), Err(SAR_DEVICE_REMOVED));
    r.insert(
        0,
        InsertOptions {
            serial: Some(serial),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(e.ecc_sign(con, &[0; 32]), Err(SAR_DEVICE_REMOVED));
    e.disconnect(dev).unwrap();
    assert_eq!(e.ecc_sign(con, &[0; 32]), Err(SAR_INVALIDHANDLEERR));
    // The token kept its keys; the new connection starts without the secure state.
    let dev = e.connect(dev_name(0).as_bytes()).unwrap();
    let app = e.open_app(dev, b"ukey").unwrap();
    let con = e.open_container(app, b"seal-legal").unwrap();
    assert_eq!(e.container_type(con).unwrap(), CONTAINER_ECC);
    assert_eq!(e.ecc_sign(con, &[0; 32]), Err(SAR_USER_NOT_LOGGED_IN));
}

#[test]
fn rights_are_per_application_and_device_auth_per_connection() {
    let (dir, r) = rack(1);
    r.insert(0, skf()).unwrap();
    let e = SkfEngine::new(Rack::open(dir.path()).unwrap());
    let (dev, a) = ready(&e, 0, "first");
    let b = e
        .create_app(
            dev,
            b"second",
            b"12345678",
            3,
            b"123456",
            3,
            SECURE_USER_ACCOUNT,
        )
        .unwrap();
    e.create_container(a, b"c").unwrap();
    assert_eq!(e.create_container(b, b"c"), Err(SAR_USER_NOT_LOGGED_IN));
    // Another connection has not authenticated the device.
    let other = e.connect(dev_name(0).as_bytes()).unwrap();
    assert_eq!(e.delete_app(other, b"second"), Err(SAR_USER_NOT_LOGGED_IN));
    assert_eq!(e.dev_auth(other, &[0; 16]), Err(SAR_FAIL));
    e.delete_app(dev, b"second").unwrap();
    assert_eq!(
        e.verify_pin(b, USER_TYPE, b"123456", &mut 0),
        Err(SAR_INVALIDHANDLEERR)
    );
    assert_eq!(e.enum_apps(other).unwrap(), vec!["first".to_string()]);
    // The last disconnect ends the secure state.
    e.disconnect(dev).unwrap();
    e.disconnect(other).unwrap();
    let dev = e.connect(dev_name(0).as_bytes()).unwrap();
    let a = e.open_app(dev, b"first").unwrap();
    assert_eq!(e.create_container(a, b"d"), Err(SAR_USER_NOT_LOGGED_IN));
}

#[test]
fn wiping_an_skf_token_brings_back_the_factory_device() {
    let (dir, r) = rack(1);
    let serial = r.insert(0, skf()).unwrap();
    let e = SkfEngine::new(Rack::open(dir.path()).unwrap());
    let (dev, _) = ready(&e, 0, "ukey");
    e.change_dev_auth_key(dev, &[7; 16]).unwrap();
    r.wipe(&serial).unwrap();
    let t = r.token(&serial).unwrap();
    let d = t.skf().unwrap();
    assert!(d.apps().is_empty() && d.has_factory_key());
    assert_eq!(d.state(), "blank");
}

#[test]
fn sm2_key_generation_takes_the_token_s_time() {
    let (dir, r) = rack(1);
    r.insert(0, skf()).unwrap();
    r.set_latency(Some(0), LatencyChange::Op(Op::KeygenSm2, 300))
        .unwrap();
    let e = SkfEngine::new(Rack::open(dir.path()).unwrap());
    let (_, app) = ready(&e, 0, "ukey");
    let con = e.create_container(app, b"c").unwrap();
    let start = Instant::now();
    e.gen_ecc_keypair(con, SGD_SM2_1).unwrap();
    assert!(start.elapsed() >= Duration::from_millis(300));
    assert_eq!(Op::parse("keygen-sm2").unwrap(), Op::KeygenSm2);
    assert_eq!(Op::KeygenSm2.profile_ms(Profile::Realistic), 400);
    assert_eq!(Op::SignSm2.profile_ms(Profile::Realistic), 80);
}

#[test]
fn digests_follow_the_length_and_handle_rules() {
    let (dir, r) = rack(1);
    r.insert(0, skf()).unwrap();
    let e = SkfEngine::new(Rack::open(dir.path()).unwrap());
    let dev = e.connect(dev_name(0).as_bytes()).unwrap();
    let h = e.digest_init(dev, SGD_SM3, None, &[]).unwrap();
    e.digest_update(h, b"a").unwrap();
    e.digest_update(h, b"bc").unwrap();
    assert_eq!(
        hex::encode(e.digest_final(h).unwrap()),
        "66c7f0f462eeedd9d1f2d46bdc10e4e24167c4875cf2f7a2297da02b8f4ba8e0"
    );
    assert_eq!(e.digest_final(h), Err(SAR_HASHOBJERR));
    assert_eq!(e.digest_init(dev, 2, None, &[]), Err(SAR_NOTSUPPORTYETERR));
    // With a public key and no ID, Z uses the default ID.
    let (_, public) = gm::generate();
    let with_default = e.digest_init(dev, SGD_SM3, Some(&public), &[]).unwrap();
    let explicit = e
        .digest_init(dev, SGD_SM3, Some(&public), gm::DEFAULT_ID)
        .unwrap();
    assert_eq!(
        e.digest(with_default, b"m").unwrap(),
        e.digest(explicit, b"m").unwrap()
    );
    e.close_handle(explicit).unwrap();
    assert_eq!(e.close_handle(explicit), Err(SAR_INVALIDHANDLEERR));
    assert_eq!(e.close_handle(dev), Err(SAR_INVALIDHANDLEERR));
    let mut bad = public;
    bad[63] ^= 1;
    assert_eq!(
        e.digest_init(dev, SGD_SM3, Some(&bad), &[]),
        Err(SAR_INVALIDPARAMERR)
    );
}

#[test]
fn deleting_an_application_closes_its_handles_on_that_device_only() {
    let (dir, r) = rack(2);
    r.insert(0, skf()).unwrap();
    r.insert(1, skf()).unwrap();
    let e = SkfEngine::new(Rack::open(dir.path()).unwrap());
    let (dev0, a0) = ready(&e, 0, "ukey");
    let (_, a1) = ready(&e, 1, "ukey");
    let second = e.connect(dev_name(0).as_bytes()).unwrap();
    let again = e.open_app(second, b"ukey").unwrap();
    e.delete_app(dev0, b"ukey").unwrap();
    assert_eq!(e.pin_info(a0, USER_TYPE), Err(SAR_INVALIDHANDLEERR));
    assert_eq!(e.pin_info(again, USER_TYPE), Err(SAR_INVALIDHANDLEERR));
    assert_eq!(e.pin_info(a1, USER_TYPE).unwrap(), (6, 6, true));
}
