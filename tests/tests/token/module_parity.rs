//! One token-level suite, run against both hsm-sim and SoftHSM2 (fresh store per test), for
//! what both support: token and PIN initialization, session states and their return codes,
//! EC and RSA keys with the attributes the agent relies on, signatures checked in software,
//! decryption, ECDH, objects, random numbers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::sim_common;

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::RvError;
use cryptoki::mechanism::elliptic_curve::{EcKdf, Ecdh1DeriveParams};
use cryptoki::mechanism::rsa::{PkcsMgfType, PkcsOaepParams, PkcsOaepSource, PkcsPssParams};
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{
    Attribute, AttributeInfo, AttributeType, CertificateType, KeyType, ObjectClass,
};
use cryptoki::session::UserType;
use cryptoki::slot::Slot;
use p256::ecdsa::signature::hazmat::PrehashVerifier;
use sha2::{Digest, Sha256};
use sim_common::*;

/// The module under test and what keeps its store alive (held, never read).
#[allow(dead_code)]
enum Target {
    Sim(SimRack),
    SoftHsm(ukey_tests::SoftHsm),
}

#[derive(Clone, Copy)]
enum Kind {
    Sim,
    SoftHsm,
}

/// Loads the module and returns it with a slot holding a blank token.
fn setup(kind: Kind) -> (Target, Pkcs11, Slot) {
    match kind {
        Kind::Sim => {
            let sim = SimRack::in_child(2).expect("run through SimRack::ran_in_child");
            sim.insert(1);
            let p = sim.load();
            let slot = p.get_slots_with_token().unwrap()[0];
            assert_eq!(slot.id(), 1);
            (Target::Sim(sim), p, slot)
        }
        Kind::SoftHsm => {
            let soft = ukey_tests::SoftHsm::new();
            soft.activate();
            let p = Pkcs11::new(soft.module()).unwrap();
            p.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
                .unwrap();
            let slot = p.get_slots_with_token().unwrap()[0];
            (Target::SoftHsm(soft), p, slot)
        }
    }
}

/// A token initialized with the suite's PINs.
fn ready(kind: Kind) -> (Target, Pkcs11, Slot) {
    let (t, p, slot) = setup(kind);
    init_token(&p, slot, "suite");
    (t, p, slot)
}

macro_rules! both {
    ($($name:ident),* $(,)?) => {
        mod sim {
            // The module finds its rack through `HSM_SIM_DIR`: each test runs in a child
            // process that has it (`SimRack::ran_in_child`).
            $( #[test] fn $name() {
                if !super::SimRack::ran_in_child(2) {
                    super::$name(super::Kind::Sim)
                }
            } )*
        }
        mod softhsm {
            $( #[test] fn $name() { super::$name(super::Kind::SoftHsm) } )*
        }
    };
}

both!(
    blank_token_is_initialized_by_so,
    session_states_follow_the_spec,
    pin_changes_and_length_policy,
    ec_keys_sign_with_raw_ecdsa,
    rsa_keys_sign_and_decrypt,
    ecdh_derives_the_shared_secret,
    objects_are_created_found_changed_destroyed,
    private_objects_need_login,
    random_numbers,
);

fn blank_token_is_initialized_by_so(kind: Kind) {
    let (_t, p, slot) = setup(kind);
    let info = p.get_token_info(slot).unwrap();
    assert!(!info.token_initialized());
    assert!(!info.user_pin_initialized());
    expect_rv(p.open_rw_session(slot), RvError::TokenNotRecognized);

    p.init_token(slot, &pin(SO_PIN), "seal-token").unwrap();
    let info = p.get_token_info(slot).unwrap();
    assert!(info.token_initialized());
    assert!(!info.user_pin_initialized());
    assert_eq!(info.label().trim_end(), "seal-token");

    let s = p.open_rw_session(slot).unwrap();
    expect_rv(
        s.login(UserType::User, Some(&pin(USER_PIN))),
        RvError::UserPinNotInitialized,
    );
    s.login(UserType::So, Some(&pin(SO_PIN))).unwrap();
    s.init_pin(&pin(USER_PIN)).unwrap();
    s.logout().unwrap();
    s.login(UserType::User, Some(&pin(USER_PIN))).unwrap();
    assert!(p.get_token_info(slot).unwrap().user_pin_initialized());
    expect_rv(
        p.init_token(slot, &pin(SO_PIN), "again"),
        RvError::SessionExists,
    );
    drop(s);
    // Re-initializing with the right SO PIN wipes the token.
    p.init_token(slot, &pin(SO_PIN), "again").unwrap();
    assert!(!p.get_token_info(slot).unwrap().user_pin_initialized());
}

fn session_states_follow_the_spec(kind: Kind) {
    let (_t, p, slot) = ready(kind);
    let ro = p.open_ro_session(slot).unwrap();
    expect_rv(
        ro.login(UserType::So, Some(&pin(SO_PIN))),
        RvError::SessionReadOnlyExists,
    );
    ro.login(UserType::User, Some(&pin(USER_PIN))).unwrap();
    expect_rv(
        ro.login(UserType::User, Some(&pin(USER_PIN))),
        RvError::UserAlreadyLoggedIn,
    );
    // Login is per application: a second session is logged in too.
    let rw = p.open_rw_session(slot).unwrap();
    let state = rw.get_session_info().unwrap().session_state();
    assert_eq!(format!("{state:?}"), "RwUser");
    // Token objects cannot be created in a read-only session.
    let data = [
        Attribute::Class(ObjectClass::DATA),
        Attribute::Token(true),
        Attribute::Label(b"note".to_vec()),
        Attribute::Value(b"hello".to_vec()),
    ];
    expect_rv(ro.create_object(&data), RvError::SessionReadOnly);
    rw.create_object(&data).unwrap();
    drop(ro);
    expect_rv(
        rw.login(UserType::So, Some(&pin(SO_PIN))),
        RvError::UserAnotherAlreadyLoggedIn,
    );
    rw.logout().unwrap();
    expect_rv(
        rw.login(UserType::User, Some(&pin("999999"))),
        RvError::PinIncorrect,
    );
    // With the read-only session gone, the SO may log in; then no R/O session can open.
    rw.login(UserType::So, Some(&pin(SO_PIN))).unwrap();
    expect_rv(p.open_ro_session(slot), RvError::SessionReadWriteSoExists);
}

fn pin_changes_and_length_policy(kind: Kind) {
    let (_t, p, slot) = ready(kind);
    let s = p.open_rw_session(slot).unwrap();
    s.login(UserType::User, Some(&pin(USER_PIN))).unwrap();
    expect_rv(s.set_pin(&pin(USER_PIN), &pin("12")), RvError::PinLenRange);
    expect_rv(
        s.set_pin(&pin("000000"), &pin("654321")),
        RvError::PinIncorrect,
    );
    s.set_pin(&pin(USER_PIN), &pin("654321")).unwrap();
    s.logout().unwrap();
    expect_rv(
        s.login(UserType::User, Some(&pin(USER_PIN))),
        RvError::PinIncorrect,
    );
    s.login(UserType::User, Some(&pin("654321"))).unwrap();
    s.logout().unwrap();
    s.login(UserType::So, Some(&pin(SO_PIN))).unwrap();
    expect_rv(s.init_pin(&pin("1")), RvError::PinLenRange);
}

fn ec_keys_sign_with_raw_ecdsa(kind: Kind) {
    let (_t, p, slot) = ready(kind);
    let mechs = p.get_mechanism_list(slot).unwrap();
    assert!(mechs.contains(&MechanismType::ECDSA));
    assert!(mechs.contains(&MechanismType::ECC_KEY_PAIR_GEN));
    let s = user_session(&p, slot);
    let (public, private) = ec_keypair(&s, "seal-official", &[1]);

    // The attributes the agent reads back, set truthfully.
    let attrs = s
        .get_attributes(
            private,
            &[
                AttributeType::Local,
                AttributeType::AlwaysSensitive,
                AttributeType::NeverExtractable,
                AttributeType::Sensitive,
                AttributeType::Extractable,
                AttributeType::Token,
                AttributeType::Private,
            ],
        )
        .unwrap();
    assert_eq!(attrs.len(), 7, "every attribute present: {attrs:?}");
    for a in &attrs {
        match a {
            Attribute::Extractable(v) => assert!(!v),
            Attribute::Local(v)
            | Attribute::AlwaysSensitive(v)
            | Attribute::NeverExtractable(v)
            | Attribute::Sensitive(v)
            | Attribute::Token(v)
            | Attribute::Private(v) => assert!(v, "{a:?}"),
            other => panic!("unexpected {other:?}"),
        }
    }
    // The private value never leaves.
    let info = s
        .get_attribute_info(private, &[AttributeType::Value])
        .unwrap();
    assert!(matches!(info[0], AttributeInfo::Sensitive), "{info:?}");

    // CKA_EC_POINT is a DER OCTET STRING of the uncompressed point.
    let raw = s.get_attributes(public, &[AttributeType::EcPoint]).unwrap();
    match &raw[0] {
        Attribute::EcPoint(v) => assert_eq!(&v[..3], &[0x04, 0x41, 0x04]),
        other => panic!("{other:?}"),
    }
    let point = ec_point(&s, public);
    let vk = p256::ecdsa::VerifyingKey::from_sec1_bytes(&point).unwrap();
    let hash = Sha256::digest(b"challenge");
    let sig = s.sign(&Mechanism::Ecdsa, private, &hash).unwrap();
    assert_eq!(sig.len(), 64, "raw r||s");
    let sig = p256::ecdsa::Signature::from_slice(&sig).unwrap();
    vk.verify_prehash(&hash, &sig).unwrap();
    // A public key cannot sign.
    assert!(s.sign(&Mechanism::Ecdsa, public, &hash).is_err());
}

fn rsa_keys_sign_and_decrypt(kind: Kind) {
    let (_t, p, slot) = ready(kind);
    let s = user_session(&p, slot);
    let public_t = [
        Attribute::Token(true),
        Attribute::ModulusBits(2048.into()),
        Attribute::PublicExponent(vec![1, 0, 1]),
        Attribute::Verify(true),
        Attribute::Encrypt(true),
        Attribute::Label(b"encryption".to_vec()),
    ];
    let private_t = [
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::Sign(true),
        Attribute::Decrypt(true),
        Attribute::Label(b"encryption".to_vec()),
    ];
    let (public, private) = s
        .generate_key_pair(&Mechanism::RsaPkcsKeyPairGen, &public_t, &private_t)
        .unwrap();
    let attrs = s
        .get_attributes(
            public,
            &[AttributeType::Modulus, AttributeType::PublicExponent],
        )
        .unwrap();
    let (mut n, mut e) = (vec![], vec![]);
    for a in attrs {
        match a {
            Attribute::Modulus(v) => n = v,
            Attribute::PublicExponent(v) => e = v,
            _ => {}
        }
    }
    assert_eq!(n.len(), 256);
    let key = rsa::PublicKey::new(
        rsa::BoxedUint::from_be_slice_vartime(&n),
        rsa::BoxedUint::from_be_slice_vartime(&e),
    )
    .unwrap();
    let info = s
        .get_attribute_info(private, &[AttributeType::PrivateExponent])
        .unwrap();
    assert!(matches!(info[0], AttributeInfo::Sensitive), "{info:?}");

    let sig = s
        .sign(&Mechanism::Sha256RsaPkcs, private, b"document")
        .unwrap();
    key.pkcs1v15_verify::<Sha256>(b"document", &sig).unwrap();
    // CKM_RSA_PKCS over a DigestInfo the caller built gives the same signature.
    let mut digest_info = vec![
        0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01,
        0x05, 0x00, 0x04, 0x20,
    ];
    digest_info.extend_from_slice(&Sha256::digest(b"document"));
    let sig2 = s.sign(&Mechanism::RsaPkcs, private, &digest_info).unwrap();
    assert_eq!(sig, sig2);
    let pss = PkcsPssParams {
        hash_alg: MechanismType::SHA256,
        mgf: PkcsMgfType::MGF1_SHA256,
        s_len: 32.into(),
    };
    let sig = s
        .sign(
            &Mechanism::RsaPkcsPss(pss),
            private,
            &Sha256::digest(b"doc"),
        )
        .unwrap();
    key.pss_verify::<Sha256>(b"doc", &sig).unwrap();

    // OAEP with SHA-1: what SoftHSM 2.6 supports (hsm-sim also takes SHA-256, tested in
    // sim::virtual_token).
    let ct = key.oaep_encrypt::<sha1::Sha1>(b"bid document key").unwrap();
    let oaep = PkcsOaepParams::new(
        MechanismType::SHA1,
        PkcsMgfType::MGF1_SHA1,
        PkcsOaepSource::empty(),
    );
    let pt = s
        .decrypt(&Mechanism::RsaPkcsOaep(oaep), private, &ct)
        .unwrap();
    assert_eq!(pt, b"bid document key");
    let ct = key.pkcs1v15_encrypt(b"short").unwrap();
    assert_eq!(
        s.decrypt(&Mechanism::RsaPkcs, private, &ct).unwrap(),
        b"short"
    );
}

fn ecdh_derives_the_shared_secret(kind: Kind) {
    let (_t, p, slot) = ready(kind);
    let s = user_session(&p, slot);
    let (public, private) = ec_keypair(&s, "encryption", &[3]);
    let token_point = ec_point(&s, public);
    let peer = <p256::ecdh::EphemeralSecret as rsa::Generate>::generate();
    let peer_point = peer.public_key().to_sec1_bytes();
    let params = Ecdh1DeriveParams::new(EcKdf::null(), &peer_point);
    let template = [
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::GENERIC_SECRET),
        Attribute::Token(false),
        Attribute::Sensitive(false),
        Attribute::Extractable(true),
        Attribute::ValueLen(32.into()),
    ];
    let secret = s
        .derive_key(&Mechanism::Ecdh1Derive(params), private, &template)
        .unwrap();
    let value = s.get_attributes(secret, &[AttributeType::Value]).unwrap();
    let Some(Attribute::Value(v)) = value.first() else {
        panic!("no value: {value:?}")
    };
    let token_pk = p256::PublicKey::from_sec1_bytes(&token_point).unwrap();
    let expected = peer.diffie_hellman(&token_pk);
    assert_eq!(v.as_slice(), expected.raw_secret_bytes().as_slice());
}

fn objects_are_created_found_changed_destroyed(kind: Kind) {
    let (_t, p, slot) = ready(kind);
    let s = user_session(&p, slot);
    let cert = [
        Attribute::Class(ObjectClass::CERTIFICATE),
        Attribute::CertificateType(CertificateType::X_509),
        Attribute::Token(true),
        Attribute::Private(false),
        Attribute::Label(b"seal-legal".to_vec()),
        Attribute::Id(vec![2]),
        Attribute::Subject(vec![0x30, 0x00]),
        Attribute::Value(vec![0x30, 0x03, 0x02, 0x01, 0x01]),
    ];
    let h = s.create_object(&cert).unwrap();
    assert_eq!(find_label(&s, "seal-legal"), vec![h]);
    let by_id = s
        .find_objects(&[
            Attribute::Class(ObjectClass::CERTIFICATE),
            Attribute::Id(vec![2]),
        ])
        .unwrap();
    assert_eq!(by_id, vec![h]);
    s.update_attributes(h, &[Attribute::Label(b"renamed".to_vec())])
        .unwrap();
    assert!(find_label(&s, "seal-legal").is_empty());
    let value = s.get_attributes(h, &[AttributeType::Value]).unwrap();
    assert_eq!(
        value,
        vec![Attribute::Value(vec![0x30, 0x03, 0x02, 0x01, 0x01])]
    );
    // The class of an object never changes.
    assert!(
        s.update_attributes(h, &[Attribute::Class(ObjectClass::DATA)])
            .is_err()
    );
    // A certificate without its value is incomplete.
    expect_rv(s.create_object(&cert[..7]), RvError::TemplateIncomplete);
    s.destroy_object(h).unwrap();
    assert!(find_label(&s, "renamed").is_empty());
    expect_rv(s.destroy_object(h), RvError::ObjectHandleInvalid);
}

fn private_objects_need_login(kind: Kind) {
    let (_t, p, slot) = ready(kind);
    let s = user_session(&p, slot);
    ec_keypair(&s, "seal-official", &[1]);
    assert_eq!(private_keys(&s).len(), 1);
    s.logout().unwrap();
    assert!(private_keys(&s).is_empty());
    // The public half stays visible without login (renewal reads it without the user PIN).
    assert_eq!(find_label(&s, "seal-official").len(), 1);
    drop(s);
    let ro = p.open_ro_session(slot).unwrap();
    assert!(private_keys(&ro).is_empty());
}

fn random_numbers(kind: Kind) {
    let (_t, p, slot) = ready(kind);
    assert!(p.get_token_info(slot).unwrap().rng());
    let s = p.open_ro_session(slot).unwrap();
    let a = s.generate_random_vec(32).unwrap();
    let b = s.generate_random_vec(32).unwrap();
    assert_eq!(a.len(), 32);
    assert_ne!(a, b);
}
