//! Vendor profiles seen from outside, through `libhsm_sim.so` and cryptoki: for each built-in
//! profile the USB serial relation on the virtual bus, the module's slot numbering across
//! re-plugs, the factory state and `C_InitToken`, PIN bounds, the mechanism list and its
//! refusals, and full storage.
//!
//! The module keeps one engine per process, so the checks run in one test, in order.
#![allow(unsafe_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error, RvError};
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, ObjectClass};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use hsm_sim::rack::{InsertOptions, Rack, RackConfig};

fn module_path() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let path = exe.parent().unwrap().join("libhsm_sim.so");
    assert!(path.exists(), "{} is missing", path.display());
    path
}

#[track_caller]
fn expect_rv<T: std::fmt::Debug>(r: cryptoki::error::Result<T>, want: RvError) {
    match r {
        Err(Error::Pkcs11(rv, _)) => assert_eq!(rv, want),
        other => panic!("expected {want:?}, got {other:?}"),
    }
}

fn insert(rack: &Rack, slot: usize, model: &str, serial: Option<&str>) -> String {
    rack.insert(
        slot,
        InsertOptions {
            model: Some(model.into()),
            serial: serial.map(str::to_string),
            ..Default::default()
        },
    )
    .unwrap()
}

/// The module's slot holding the token with `serial`.
fn slot_of(p: &Pkcs11, serial: &str) -> Slot {
    p.get_slots_with_token()
        .unwrap()
        .into_iter()
        .find(|s| p.get_token_info(*s).unwrap().serial_number() == serial)
        .unwrap_or_else(|| panic!("no slot shows {serial}"))
}

fn usb_serial(rack: &Rack, port: usize) -> String {
    hsm_sim::usb::attached(rack.dir())
        .unwrap()
        .devices
        .into_iter()
        .find(|d| d.slot == port)
        .unwrap()
        .serial
}

fn ec_template() -> (Vec<Attribute>, Vec<Attribute>) {
    let public = vec![
        Attribute::Token(true),
        Attribute::EcParams(vec![
            0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07,
        ]),
        Attribute::Verify(true),
    ];
    let private = vec![
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::Sign(true),
    ];
    (public, private)
}

fn user_session(p: &Pkcs11, slot: Slot, so: &str, user: &str) -> Session {
    p.init_token(slot, &AuthPin::from(so), "profile").unwrap();
    let s = p.open_rw_session(slot).unwrap();
    s.login(UserType::So, Some(&AuthPin::from(so))).unwrap();
    s.init_pin(&AuthPin::from(user)).unwrap();
    s.logout().unwrap();
    s.login(UserType::User, Some(&AuthPin::from(user))).unwrap();
    s
}

#[test]
fn every_profile_behaves_as_documented() {
    let dir = tempfile::tempdir().unwrap();
    let rack = Rack::init(
        dir.path(),
        RackConfig {
            slots: 4,
            ..Default::default()
        },
        false,
    )
    .unwrap();
    // SAFETY: this binary's only test sets the variable before the module reads it.
    unsafe { std::env::set_var("HSM_SIM_DIR", dir.path()) };
    let p = Pkcs11::new(module_path()).unwrap();
    p.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .unwrap();

    // default: USB serial = token serial, slot id = port, the port in the slot description.
    let d = insert(&rack, 1, "default", None);
    assert_eq!(usb_serial(&rack, 1), d);
    let slot = slot_of(&p, &d);
    assert_eq!(slot.id(), 1);
    assert!(
        p.get_slot_info(slot)
            .unwrap()
            .slot_description()
            .contains("USB 1-1.2")
    );
    let mechs = p.get_mechanism_list(slot).unwrap();
    assert!(mechs.contains(&MechanismType::ECDSA_SHA256));
    rack.remove(1).unwrap();

    // epass2003: another USB serial, real USB ids, ids in order of insertion, raw sign only.
    let a = insert(&rack, 0, "epass2003", None);
    let b = insert(&rack, 2, "epass2003", None);
    let dev = hsm_sim::usb::attached(rack.dir()).unwrap().devices;
    assert!(
        dev.iter()
            .all(|d| (d.vendor_id, d.product_id) == (0x096e, 0x0807))
    );
    assert!(!usb_serial(&rack, 0).is_empty());
    assert_ne!(usb_serial(&rack, 0), a);
    assert_eq!(slot_of(&p, &a).id(), 0x100);
    assert_eq!(slot_of(&p, &b).id(), 0x101);
    let description = p.get_slot_info(slot_of(&p, &b)).unwrap();
    assert!(!description.slot_description().contains("1-1."), "no port");
    // Pull the first, plug it into another port after the second: it takes the free id.
    rack.remove(0).unwrap();
    insert(&rack, 3, "epass2003", Some(&a));
    assert_eq!(slot_of(&p, &a).id(), 0x100);
    assert_eq!(slot_of(&p, &b).id(), 0x101);
    let slot = slot_of(&p, &b);
    let mechs = p.get_mechanism_list(slot).unwrap();
    assert!(mechs.contains(&MechanismType::ECDSA));
    assert!(!mechs.contains(&MechanismType::ECDSA_SHA256));
    expect_rv(
        p.get_mechanism_info(slot, MechanismType::ECDSA_SHA256),
        RvError::MechanismInvalid,
    );
    let info = p.get_token_info(slot).unwrap();
    assert_eq!((info.min_pin_length(), info.max_pin_length()), (4, 16));
    let s = user_session(&p, slot, "12345678", "1234");
    let (public, private) = ec_template();
    let (_, key) = s
        .generate_key_pair(&Mechanism::EccKeyPairGen, &public, &private)
        .unwrap();
    expect_rv(
        s.sign(&Mechanism::EcdsaSha256, key, b"data"),
        RvError::MechanismInvalid,
    );
    assert_eq!(s.sign(&Mechanism::Ecdsa, key, &[7; 32]).unwrap().len(), 64);
    drop(s);
    rack.remove(2).unwrap();
    rack.remove(3).unwrap();

    // factory-pin: no USB serial, initialized with transport PINs and a demo object,
    // C_InitToken refused, a new slot id on every plug.
    let f = insert(&rack, 0, "factory-pin", None);
    assert_eq!(usb_serial(&rack, 0), "");
    let slot = slot_of(&p, &f);
    let first_id = slot.id();
    assert!(first_id >= 0x200);
    let info = p.get_token_info(slot).unwrap();
    assert!(info.token_initialized() && info.user_pin_initialized());
    assert_eq!(info.label(), "Factory");
    expect_rv(
        p.init_token(slot, &AuthPin::from("12345678"), "x"),
        RvError::FunctionNotSupported,
    );
    let s = p.open_rw_session(slot).unwrap();
    let demo = s
        .find_objects(&[Attribute::Label(b"factory-demo".to_vec())])
        .unwrap();
    assert_eq!(demo.len(), 1, "the factory's object is public");
    s.login(UserType::So, Some(&AuthPin::from("12345678")))
        .unwrap();
    s.set_pin(&AuthPin::from("12345678"), &AuthPin::from("new-so-pin"))
        .unwrap();
    s.init_pin(&AuthPin::from("new-user-pin")).unwrap();
    s.destroy_object(demo[0]).unwrap();
    drop(s);
    rack.remove(0).unwrap();
    insert(&rack, 0, "factory-pin", Some(&f));
    let slot = slot_of(&p, &f);
    assert_ne!(slot.id(), first_id, "renumbered on re-plug");
    let s = p.open_ro_session(slot).unwrap();
    s.login(UserType::User, Some(&AuthPin::from("new-user-pin")))
        .unwrap();
    assert!(
        s.find_objects(&[Attribute::Class(ObjectClass::DATA)])
            .unwrap()
            .is_empty()
    );
    drop(s);
    // Wiping returns it to the factory: the transport PIN opens it again.
    rack.wipe(&f).unwrap();
    let s = p.open_rw_session(slot_of(&p, &f)).unwrap();
    s.login(UserType::So, Some(&AuthPin::from("12345678")))
        .unwrap();
    drop(s);
    rack.remove(0).unwrap();

    // rsa-only: no EC at all, PINs of exactly 8.
    let r = insert(&rack, 0, "rsa-only", None);
    let slot = slot_of(&p, &r);
    assert_eq!(slot.id(), 0);
    let mechs = p.get_mechanism_list(slot).unwrap();
    assert!(mechs.contains(&MechanismType::RSA_PKCS_KEY_PAIR_GEN));
    assert!(!mechs.contains(&MechanismType::ECC_KEY_PAIR_GEN));
    expect_rv(
        p.init_token(slot, &AuthPin::from("1234567"), "x"),
        RvError::PinLenRange,
    );
    let s = user_session(&p, slot, "12345678", "87654321");
    let (public, private) = ec_template();
    expect_rv(
        s.generate_key_pair(&Mechanism::EccKeyPairGen, &public, &private),
        RvError::MechanismInvalid,
    );
    drop(s);
    rack.remove(0).unwrap();

    // tiny: the third key pair does not fit.
    let t = insert(&rack, 0, "tiny", None);
    let s = user_session(&p, slot_of(&p, &t), "12345678", "1234");
    for _ in 0..2 {
        let (public, private) = ec_template();
        s.generate_key_pair(&Mechanism::EccKeyPairGen, &public, &private)
            .unwrap();
    }
    let (public, private) = ec_template();
    expect_rv(
        s.generate_key_pair(&Mechanism::EccKeyPairGen, &public, &private),
        RvError::DeviceMemory,
    );
    drop(s);
    p.finalize().unwrap();
}
