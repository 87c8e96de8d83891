//! hsm-sim only: what SoftHSM2 cannot do — hot-plug, PIN lockout and its reset, removal in
//! the middle of a slow operation, injected faults, full memory, latency, concurrency — and
//! spec rules SoftHSM2 is lax about. The module is loaded in this process through cryptoki;
//! the rack is driven through its Rust API. Each test that loads the module runs in a child
//! process of its own with the rack in its environment (`sim_common::SimRack::in_child`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::sim_common;

use std::time::{Duration, Instant};

use cryptoki::error::RvError;
use cryptoki::mechanism::rsa::{PkcsMgfType, PkcsOaepParams, PkcsOaepSource};
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, ObjectClass};
use cryptoki::session::UserType;
use cryptoki::slot::Slot;
use hsm_sim::rack::fault::{Fault, FaultAction};
use hsm_sim::rack::latency::Op;
use hsm_sim::rack::token::TokenSettings;
use hsm_sim::rack::{InsertOptions, LatencyChange};
use p256::ecdsa::signature::hazmat::PrehashVerifier;
use sha2::{Digest, Sha256};
use sim_common::*;

fn slot(id: u64) -> Slot {
    Slot::try_from(id).unwrap()
}

fn data_object(label: &str, size: usize) -> Vec<Attribute> {
    vec![
        Attribute::Class(ObjectClass::DATA),
        Attribute::Token(true),
        Attribute::Private(false),
        Attribute::Label(label.as_bytes().to_vec()),
        Attribute::Value(vec![0x5a; size]),
    ]
}

#[test]
fn hot_plug_changes_slot_list_and_wakes_waiters() {
    let Some(sim) = SimRack::in_child(3) else {
        return;
    };
    let p = sim.load();
    assert_eq!(p.get_all_slots().unwrap().len(), 3);
    assert!(p.get_slots_with_token().unwrap().is_empty());
    assert_eq!(
        p.get_slot_event().unwrap(),
        None,
        "CKF_DONT_BLOCK: no event"
    );

    // A thread blocks in C_WaitForSlotEvent; an insertion wakes it.
    std::thread::scope(|scope| {
        let waiter = scope.spawn(|| p.wait_for_slot_event().unwrap());
        let serial = sim.insert(2);
        assert_eq!(waiter.join().unwrap().id(), 2);
        let info = p.get_token_info(slot(2)).unwrap();
        assert_eq!(info.serial_number(), serial);
    });
    assert_eq!(p.get_slot_event().unwrap(), None);
    let present: Vec<u64> = p
        .get_slots_with_token()
        .unwrap()
        .iter()
        .map(|s| s.id())
        .collect();
    assert_eq!(present, vec![2]);
    let usb = hsm_sim::usb::attached(sim.dir.path()).unwrap();
    assert_eq!(usb.devices.len(), 1);
    assert_eq!(usb.devices[0].port_path, "1-1.3");
    assert_eq!(
        usb.devices[0].serial,
        p.get_token_info(slot(2)).unwrap().serial_number()
    );

    // Removal: the slot stays, the token is gone, an event is reported.
    sim.rack.remove(2).unwrap();
    assert_eq!(p.get_slot_event().unwrap().map(|s| s.id()), Some(2));
    assert!(p.get_slots_with_token().unwrap().is_empty());
    expect_rv(p.get_token_info(slot(2)), RvError::TokenNotPresent);
    expect_rv(p.get_token_info(slot(7)), RvError::SlotIdInvalid);
    assert!(
        hsm_sim::usb::attached(sim.dir.path())
            .unwrap()
            .devices
            .is_empty()
    );
}

#[test]
fn removal_kills_sessions_and_reinsertion_keeps_data() {
    let Some(sim) = SimRack::in_child(2) else {
        return;
    };
    let serial = sim.insert(0);
    let p = sim.load();
    init_token(&p, slot(0), "removable");
    let s = user_session(&p, slot(0));
    let (public, _) = ec_keypair(&s, "seal-official", &[1]);
    let other = p.open_ro_session(slot(0)).unwrap();

    sim.rack.remove(0).unwrap();
    expect_rv(s.get_session_info(), RvError::DeviceRemoved);
    expect_rv(s.get_session_info(), RvError::SessionHandleInvalid);
    expect_rv(other.find_objects(&[]), RvError::DeviceRemoved);
    expect_rv(p.open_rw_session(slot(0)), RvError::TokenNotPresent);

    // Plugged back into another port: same token, same objects, login state gone.
    sim.reinsert(1, &serial);
    let info = p.get_token_info(slot(1)).unwrap();
    assert_eq!(info.serial_number(), serial);
    assert!(info.user_pin_initialized());
    let s2 = p.open_rw_session(slot(1)).unwrap();
    assert!(private_keys(&s2).is_empty(), "not logged in after re-plug");
    s2.login(UserType::User, Some(&pin(USER_PIN))).unwrap();
    assert_eq!(private_keys(&s2).len(), 1);
    assert_eq!(find_label(&s2, "seal-official").len(), 2);
    // Token object handles stay valid across re-plug.
    assert_eq!(ec_point(&s2, public).len(), 65);
}

#[test]
fn removal_during_slow_keygen_commits_nothing() {
    let Some(sim) = SimRack::in_child(1) else {
        return;
    };
    let serial = sim.insert(0);
    let p = sim.load();
    init_token(&p, slot(0), "slow");
    // Key generation takes a minute on this token; a fault that never fires counts the
    // calls, so the test sees when the call has started.
    sim.rack
        .set_latency(Some(0), LatencyChange::Op(Op::KeygenP256, 60_000))
        .unwrap();
    sim.rack
        .set_fault(
            0,
            Fault::new("C_GenerateKeyPair", 1000, FaultAction::Fail { rv: 0x30 }).unwrap(),
        )
        .unwrap();
    let s = user_session(&p, slot(0));
    let started = Instant::now();
    std::thread::scope(|scope| {
        let job = scope.spawn(move || {
            let public = [Attribute::Token(true), Attribute::EcParams(P256.to_vec())];
            let private = [Attribute::Token(true), Attribute::Sign(true)];
            let r = s.generate_key_pair(&Mechanism::EccKeyPairGen, &public, &private);
            (r, s)
        });
        let deadline = Instant::now() + Duration::from_secs(20);
        while sim.rack.token(&serial).unwrap().faults()[0].seen() == 0 {
            assert!(Instant::now() < deadline, "C_GenerateKeyPair never started");
            std::thread::yield_now();
        }
        sim.rack.remove(0).unwrap();
        let (r, s) = job.join().unwrap();
        expect_rv(r, RvError::DeviceRemoved);
        expect_rv(s.get_session_info(), RvError::SessionHandleInvalid);
    });
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "the pulled token ended the wait"
    );
    assert_eq!(sim.rack.token(&serial).unwrap().objects().count(), 0);
    sim.reinsert(0, &serial);
    sim.rack.set_latency(Some(0), LatencyChange::Reset).unwrap();
    let s = user_session(&p, slot(0));
    assert!(s.find_objects(&[]).unwrap().is_empty(), "no half-made key");
}

#[test]
fn user_pin_locks_and_so_resets_it() {
    let Some(sim) = SimRack::in_child(1) else {
        return;
    };
    sim.insert(0);
    let p = sim.load();
    init_token(&p, slot(0), "lockout");
    let s = p.open_rw_session(slot(0)).unwrap();
    let flags = |p: &cryptoki::context::Pkcs11| p.get_token_info(slot(0)).unwrap();
    for attempt in 1..=6 {
        expect_rv(
            s.login(UserType::User, Some(&pin("000000"))),
            RvError::PinIncorrect,
        );
        let info = flags(&p);
        match attempt {
            1..=4 => assert!(info.user_pin_count_low() && !info.user_pin_final_try()),
            5 => assert!(info.user_pin_final_try()),
            _ => assert!(info.user_pin_locked()),
        }
    }
    expect_rv(
        s.login(UserType::User, Some(&pin(USER_PIN))),
        RvError::PinLocked,
    );
    // The SO resets the user PIN, which resets its counter.
    s.login(UserType::So, Some(&pin(SO_PIN))).unwrap();
    s.init_pin(&pin("246810")).unwrap();
    s.logout().unwrap();
    let info = flags(&p);
    assert!(!info.user_pin_locked() && !info.user_pin_count_low());
    s.login(UserType::User, Some(&pin("246810"))).unwrap();
    let summary = &sim.rack.list().unwrap()[0];
    assert_eq!(summary.token.as_ref().unwrap().user_retries, (6, 6));
}

#[test]
fn so_pin_locks_and_only_a_wipe_helps() {
    let Some(sim) = SimRack::in_child(1) else {
        return;
    };
    let settings = TokenSettings {
        so_retries: 3,
        ..TokenSettings::default()
    };
    let serial = sim
        .rack
        .insert(
            0,
            InsertOptions {
                settings: Some(settings),
                ..Default::default()
            },
        )
        .unwrap();
    let p = sim.load();
    init_token(&p, slot(0), "so-lock");
    for _ in 0..3 {
        expect_rv(
            p.init_token(slot(0), &pin("wrong-so"), "x"),
            RvError::PinIncorrect,
        );
    }
    assert!(p.get_token_info(slot(0)).unwrap().so_pin_locked());
    expect_rv(p.init_token(slot(0), &pin(SO_PIN), "x"), RvError::PinLocked);
    let s = p.open_rw_session(slot(0)).unwrap();
    expect_rv(
        s.login(UserType::So, Some(&pin(SO_PIN))),
        RvError::PinLocked,
    );
    drop(s);
    sim.rack.wipe(&serial).unwrap();
    assert!(!p.get_token_info(slot(0)).unwrap().token_initialized());
    init_token(&p, slot(0), "fresh");
}

#[test]
fn full_memory_is_device_memory() {
    let Some(sim) = SimRack::in_child(1) else {
        return;
    };
    let settings = TokenSettings {
        max_objects: 3,
        max_bytes: 3000,
        ..TokenSettings::default()
    };
    sim.rack
        .insert(
            0,
            InsertOptions {
                settings: Some(settings),
                ..Default::default()
            },
        )
        .unwrap();
    let p = sim.load();
    init_token(&p, slot(0), "small");
    let s = user_session(&p, slot(0));
    s.create_object(&data_object("big", 2000)).unwrap();
    expect_rv(
        s.create_object(&data_object("too-big", 1500)),
        RvError::DeviceMemory,
    );
    s.create_object(&data_object("a", 10)).unwrap();
    // Two objects of a key pair do not fit in one slot: neither is stored.
    expect_rv(
        s.generate_key_pair(
            &Mechanism::EccKeyPairGen,
            &[Attribute::Token(true), Attribute::EcParams(P256.to_vec())],
            &[Attribute::Token(true)],
        ),
        RvError::DeviceMemory,
    );
    assert_eq!(s.find_objects(&[]).unwrap().len(), 2);
    s.create_object(&data_object("b", 10)).unwrap();
    expect_rv(
        s.create_object(&data_object("c", 10)),
        RvError::DeviceMemory,
    );
    let info = p.get_token_info(slot(0)).unwrap();
    assert!(info.free_public_memory().unwrap_or(0) < 1000);
}

#[test]
fn faults_fail_pull_and_delay_on_the_nth_call() {
    let Some(sim) = SimRack::in_child(1) else {
        return;
    };
    let serial = sim.insert(0);
    let p = sim.load();
    init_token(&p, slot(0), "faulty");
    let s = user_session(&p, slot(0));
    let (_, private) = ec_keypair(&s, "k", &[1]);
    let hash = Sha256::digest(b"x");

    sim.rack
        .set_fault(
            0,
            // Calls are counted as the module sees them: cryptoki's sign() makes one
            // C_SignInit and two C_Sign calls (length query, then the signature).
            Fault::new("C_SignInit", 2, FaultAction::Fail { rv: 0x30 }).unwrap(),
        )
        .unwrap();
    s.sign(&Mechanism::Ecdsa, private, &hash).unwrap();
    expect_rv(
        s.sign(&Mechanism::Ecdsa, private, &hash),
        RvError::DeviceError,
    );
    s.sign(&Mechanism::Ecdsa, private, &hash).unwrap();

    sim.rack
        .set_fault(
            0,
            Fault::new("C_GenerateRandom", 1, FaultAction::Delay { ms: 300 }).unwrap(),
        )
        .unwrap();
    let t = Instant::now();
    s.generate_random_vec(8).unwrap();
    assert!(t.elapsed() >= Duration::from_millis(300));

    sim.rack
        .set_fault(
            0,
            Fault::new("C_FindObjectsInit", 1, FaultAction::Pull).unwrap(),
        )
        .unwrap();
    expect_rv(s.find_objects(&[]), RvError::DeviceRemoved);
    expect_rv(s.get_session_info(), RvError::SessionHandleInvalid);
    assert_eq!(sim.rack.serial_in(0).unwrap(), None);
    assert!(sim.rack.token(&serial).unwrap().faults().is_empty());
}

#[test]
fn latency_profile_from_environment() {
    let Some(sim) = SimRack::in_child_with(1, &[("HSM_SIM_LATENCY", "realistic")]) else {
        return;
    };
    sim.insert(0);
    let p = sim.load();
    init_token(&p, slot(0), "slow");
    let s = user_session(&p, slot(0));
    let t = Instant::now();
    ec_keypair(&s, "k", &[1]);
    assert!(
        t.elapsed() >= Duration::from_millis(300),
        "{:?}",
        t.elapsed()
    );
    // A per-operation override wins over the profile.
    sim.rack
        .set_latency(None, LatencyChange::Op(Op::KeygenP256, 0))
        .unwrap();
    sim.rack
        .set_latency(None, LatencyChange::Op(Op::Write, 0))
        .unwrap();
    sim.rack
        .set_latency(None, LatencyChange::Op(Op::WritePerKib, 0))
        .unwrap();
    let t = Instant::now();
    ec_keypair(&s, "k2", &[2]);
    assert!(
        t.elapsed() < Duration::from_millis(300),
        "{:?}",
        t.elapsed()
    );
}

#[test]
fn spec_rules_softhsm_is_lax_about() {
    let Some(sim) = SimRack::in_child(1) else {
        return;
    };
    sim.insert(0);
    let p = sim.load();
    init_token(&p, slot(0), "strict");
    let s = p.open_rw_session(slot(0)).unwrap();
    expect_rv(s.logout(), RvError::UserNotLoggedIn);
    s.login(UserType::So, Some(&pin(SO_PIN))).unwrap();
    // The SO works on public objects only.
    let private = [
        Attribute::Class(ObjectClass::DATA),
        Attribute::Private(true),
        Attribute::Value(b"x".to_vec()),
    ];
    expect_rv(s.create_object(&private), RvError::UserNotLoggedIn);
    s.logout().unwrap();
    let s = user_session(&p, slot(0));
    // The token sets CKA_LOCAL & co.; a template may not.
    expect_rv(
        s.generate_key_pair(
            &Mechanism::EccKeyPairGen,
            &[Attribute::EcParams(P256.to_vec())],
            &[Attribute::Local(true)],
        ),
        RvError::AttributeReadOnly,
    );
    // Only P-256.
    let p384 = vec![0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22];
    expect_rv(
        s.generate_key_pair(&Mechanism::EccKeyPairGen, &[Attribute::EcParams(p384)], &[]),
        RvError::CurveNotSupported,
    );
    // Sensitive can be set, never cleared.
    let (_, private) = ec_keypair(&s, "k", &[1]);
    expect_rv(
        s.update_attributes(private, &[Attribute::Sensitive(false)]),
        RvError::AttributeReadOnly,
    );
    // Private keys default to sensitive and non-extractable (SoftHSM2 defaults to not).
    let (_, bare) = s
        .generate_key_pair(
            &Mechanism::EccKeyPairGen,
            &[Attribute::EcParams(P256.to_vec())],
            &[],
        )
        .unwrap();
    let attrs = s
        .get_attributes(
            bare,
            &[
                cryptoki::object::AttributeType::Sensitive,
                cryptoki::object::AttributeType::NeverExtractable,
            ],
        )
        .unwrap();
    assert_eq!(
        attrs,
        vec![
            Attribute::Sensitive(true),
            Attribute::NeverExtractable(true)
        ]
    );
}

#[test]
fn oaep_sha256_and_ecdsa_sha256() {
    let Some(sim) = SimRack::in_child(1) else {
        return;
    };
    sim.insert(0);
    let p = sim.load();
    init_token(&p, slot(0), "mechs");
    let s = user_session(&p, slot(0));
    let (public, private) = ec_keypair(&s, "k", &[1]);
    let sig = s.sign(&Mechanism::EcdsaSha256, private, b"data").unwrap();
    let vk = p256::ecdsa::VerifyingKey::from_sec1_bytes(&ec_point(&s, public)).unwrap();
    vk.verify_prehash(
        &Sha256::digest(b"data"),
        &p256::ecdsa::Signature::from_slice(&sig).unwrap(),
    )
    .unwrap();

    let (rpub, rpriv) = s
        .generate_key_pair(
            &Mechanism::RsaPkcsKeyPairGen,
            &[Attribute::ModulusBits(2048.into())],
            &[Attribute::Decrypt(true)],
        )
        .unwrap();
    let attrs = s
        .get_attributes(
            rpub,
            &[
                cryptoki::object::AttributeType::Modulus,
                cryptoki::object::AttributeType::PublicExponent,
            ],
        )
        .unwrap();
    let [Attribute::Modulus(n), Attribute::PublicExponent(e)] = attrs.as_slice() else {
        panic!("{attrs:?}")
    };
    let key = rsa::PublicKey::new(
        rsa::BoxedUint::from_be_slice_vartime(n),
        rsa::BoxedUint::from_be_slice_vartime(e),
    )
    .unwrap();
    let ct = key.oaep_encrypt::<Sha256>(b"key").unwrap();
    let oaep = PkcsOaepParams::new(
        MechanismType::SHA256,
        PkcsMgfType::MGF1_SHA256,
        PkcsOaepSource::empty(),
    );
    assert_eq!(
        s.decrypt(&Mechanism::RsaPkcsOaep(oaep), rpriv, &ct)
            .unwrap(),
        b"key"
    );
}

#[test]
fn threads_on_several_tokens_do_not_cross_talk() {
    const TOKENS: u64 = 4;
    let Some(sim) = SimRack::in_child(TOKENS as usize + 1) else {
        return;
    };
    for i in 0..TOKENS {
        sim.insert(i as usize);
    }
    let p = sim.load();
    for i in 0..TOKENS {
        init_token(&p, slot(i), &format!("token-{i}"));
    }
    std::thread::scope(|scope| {
        // Meanwhile a token goes in and out of the last slot.
        let plug = scope.spawn(|| {
            let serial = sim.insert(TOKENS as usize);
            for _ in 0..10 {
                sim.rack.remove(TOKENS as usize).unwrap();
                sim.reinsert(TOKENS as usize, &serial);
            }
        });
        let workers: Vec<_> = (0..TOKENS)
            .map(|i| {
                let p = &p;
                scope.spawn(move || {
                    let s = user_session(p, slot(i));
                    let label = format!("key-{i}");
                    let (public, private) = ec_keypair(&s, &label, &[i as u8]);
                    let vk =
                        p256::ecdsa::VerifyingKey::from_sec1_bytes(&ec_point(&s, public)).unwrap();
                    for n in 0..20u32 {
                        let hash = Sha256::digest(n.to_be_bytes());
                        let sig = s.sign(&Mechanism::Ecdsa, private, &hash).unwrap();
                        vk.verify_prehash(
                            &hash,
                            &p256::ecdsa::Signature::from_slice(&sig).unwrap(),
                        )
                        .unwrap();
                        let extra = p.open_ro_session(slot(i)).unwrap();
                        drop(extra);
                    }
                })
            })
            .collect();
        for w in workers {
            w.join().unwrap();
        }
        plug.join().unwrap();
    });
    for i in 0..TOKENS {
        let s = user_session(&p, slot(i));
        let all = s.find_objects(&[]).unwrap();
        assert_eq!(all.len(), 2, "token {i} holds its own pair only");
        assert_eq!(find_label(&s, &format!("key-{i}")).len(), 2);
    }
}
