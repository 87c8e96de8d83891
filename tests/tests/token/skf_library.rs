//! The agent's SKF layer (`ukey_agent::skf`) against hsm-sim's SKF library
//! (`libhsm_sim_skf.so`) through its C ABI: devices, device authentication, the application
//! and its PINs, a container with an SM2 key pair made on the token, a signature over SM3
//! with Z checked on the host, certificates in and out, PIN lockout and unblocking, and the
//! device-event wait.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::sim_common::SimRack;

use hsm_sim::rack::InsertOptions;
use hsm_sim::rack::token::TokenSettings;
use ukey_agent::certs::sm2::{Sm2PublicKey, signature_der};
use ukey_agent::skf::ffi::{SAR_FAIL, SAR_PIN_INCORRECT, SAR_PIN_LOCKED};
use ukey_agent::skf::{PinKind, SkfError, SkfLibrary};
use ukey_protocol::SignerId;

const FACTORY_KEY: &[u8; 16] = b"1234567812345678";
const SAR_USER_NOT_LOGGED_IN: u32 = 0x0A00_002D;

fn code(r: Result<impl std::fmt::Debug, SkfError>) -> (u32, Option<u32>) {
    match r.unwrap_err() {
        SkfError::Call { code, retries, .. } => (code, retries),
        other => panic!("not a failed call: {other}"),
    }
}

#[test]
fn an_skf_token_is_driven_through_the_agent_ffi() {
    let Some(sim) = SimRack::in_child(2) else {
        return;
    };
    let serial = sim
        .rack
        .insert(
            1,
            InsertOptions {
                settings: Some(TokenSettings::skf()),
                ..Default::default()
            },
        )
        .unwrap();
    let lib = SkfLibrary::load(&ukey_tests::workspace_binary("libhsm_sim_skf.so")).unwrap();
    assert!(lib.has_device_events());

    // Devices: only the SKF device, named by its USB port.
    assert_eq!(lib.devices().unwrap(), ["hsm-sim 1-1.2"]);
    let dev = lib.connect("hsm-sim 1-1.2").unwrap();
    let info = dev.info().unwrap();
    assert_eq!(info.serial, serial);
    assert!(info.total_space > 0, "{info:?}");
    assert!(dev.applications().unwrap().is_empty(), "a fresh device");

    // Device authentication guards the application; a wrong key is refused.
    let (c, _) = code(dev.create_application("UKEY", "admin-1234", 10, "user-5678", 6));
    assert_eq!(c, SAR_USER_NOT_LOGGED_IN);
    assert_eq!(code(dev.authenticate(b"0000000000000000")).0, SAR_FAIL);
    dev.authenticate(FACTORY_KEY).unwrap();
    let app = dev
        .create_application("UKEY", "admin-1234", 10, "user-5678", 6)
        .unwrap();
    assert_eq!(dev.applications().unwrap(), ["UKEY"]);

    // The user PIN: a wrong one counts down, the right one resets.
    assert_eq!(
        code(app.verify_pin(PinKind::User, "user-0000")),
        (SAR_PIN_INCORRECT, Some(5))
    );
    let info = app.pin_info(PinKind::User).unwrap();
    assert_eq!((info.max_retries, info.remaining), (6, 5));
    app.verify_pin(PinKind::User, "user-5678").unwrap();
    assert_eq!(app.pin_info(PinKind::User).unwrap().remaining, 6);

    // A container with an SM2 signing key pair made on the token.
    let con = app.create_container("seal-official").unwrap();
    assert_eq!(app.containers().unwrap(), ["seal-official"]);
    let key = con.generate_signing_key().unwrap();
    assert_eq!(con.public_key(true).unwrap(), key);
    assert_eq!(con.kind().unwrap(), 2, "an SM2 container");

    // The token signs SM3 with Z computed on the host; the host checks it.
    let public = Sm2PublicKey::from_coordinates(&key.x, &key.y).unwrap();
    let id = SignerId::default();
    let message = b"bid 2026-0042";
    let hash = public.digest(&id, message);
    let sig = con.sign_hash(&hash).unwrap();
    let der = signature_der(&sig.r, &sig.s).unwrap();
    public.verify(&id, message, &der).unwrap();
    public.verify(&id, b"bid 2026-0043", &der).unwrap_err();
    assert!(dev.verify(&key, &hash, &sig).unwrap());
    let mut other = hash;
    other[0] ^= 1;
    assert!(!dev.verify(&key, &other, &sig).unwrap());

    // Certificates per key pair.
    assert_eq!(con.certificate(true).unwrap(), None);
    con.import_certificate(true, b"certificate bytes").unwrap();
    assert_eq!(
        con.certificate(true).unwrap().as_deref(),
        Some(&b"certificate bytes"[..])
    );
    assert_eq!(con.certificate(false).unwrap(), None);

    // Lockout and unblocking with the admin PIN.
    for left in (1..6).rev() {
        assert_eq!(
            code(app.verify_pin(PinKind::User, "user-0000")),
            (SAR_PIN_INCORRECT, Some(left))
        );
    }
    assert_eq!(
        code(app.verify_pin(PinKind::User, "user-0000")).0,
        SAR_PIN_LOCKED
    );
    assert_eq!(
        code(app.verify_pin(PinKind::User, "user-5678")).0,
        SAR_PIN_LOCKED
    );
    assert_eq!(app.pin_info(PinKind::User).unwrap().remaining, 0);
    assert_eq!(
        code(app.unblock_user_pin("admin-0000", "user-9999")),
        (SAR_PIN_INCORRECT, Some(9))
    );
    app.unblock_user_pin("admin-1234", "user-9999").unwrap();
    app.verify_pin(PinKind::User, "user-9999").unwrap();
    app.clear_secure_state().unwrap();
    assert_eq!(
        code(app.delete_container("seal-official")).0,
        SAR_USER_NOT_LOGGED_IN,
        "the secure state was cleared"
    );
    app.verify_pin(PinKind::User, "user-9999").unwrap();
    drop(con);
    app.delete_container("seal-official").unwrap();
    assert!(app.containers().unwrap().is_empty());

    // A cancel sent before the wait is not lost: the wait returns at once.
    lib.cancel_device_wait().unwrap();
    assert_eq!(lib.wait_for_device_event().unwrap(), None);
}
