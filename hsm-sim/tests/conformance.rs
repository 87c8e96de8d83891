//! Conformance of `libhsm_sim.so` over every function it exports, each result checked against
//! an independent party: before `C_Initialize` every function of the list says
//! `CKR_CRYPTOKI_NOT_INITIALIZED`; then, through cryptoki, digests are compared with the
//! `sha1`/`sha2` crates and `openssl dgst`, AES results with `openssl enc` (ECB, CBC,
//! CBC-PAD, key wrap with and without padding) and with ring (GCM), RSA encryption with
//! `openssl pkeyutl` in both directions, a private key wrapped by openssl (PKCS#8 under
//! RFC 5649) unwrapped onto the token and wrapped back out, wrap/unwrap round trips with
//! their refusals
//! (untrusted wrapping key, sensitive key, unextractable key, wrong key types, the token's
//! key policy), `C_CopyObject` with `CKA_COPYABLE`, and the one-way latches of
//! `CKA_SENSITIVE`, `CKA_EXTRACTABLE` and `CKA_WRAP_WITH_TRUSTED` on secret keys.
//!
//! The module keeps one engine per process, so the checks run in one test, in order
//! (pkcs11-tool's are in `outside_tools.rs`).
#![allow(unsafe_code, clippy::unwrap_used, clippy::expect_used)]

use std::ffi::CString;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::ptr::null_mut;

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error, RvError};
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::mechanism::rsa::{PkcsMgfType, PkcsOaepParams, PkcsOaepSource};
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::types::AuthPin;
use cryptoki_sys::*;
use hsm_sim::rack::token::KeyPolicy;
use hsm_sim::rack::{InsertOptions, Rack, RackConfig};
use sha2::Digest;

const SO_PIN: &str = "so-secret-1";
const USER_PIN: &str = "123456";

/// The module cargo built with this test (see `abi_sweep.rs`).
fn module_path() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let path = exe.parent().unwrap().join("libhsm_sim.so");
    assert!(path.exists(), "{} is missing", path.display());
    path
}

fn rack(dir: &Path) -> Rack {
    let rack = Rack::init(
        dir,
        RackConfig {
            slots: 1,
            ..Default::default()
        },
        false,
    )
    .unwrap();
    rack.insert(0, InsertOptions::default()).unwrap();
    rack
}

#[track_caller]
fn expect_rv<T: std::fmt::Debug>(r: cryptoki::error::Result<T>, want: RvError) {
    match r {
        Err(Error::Pkcs11(rv, _)) => assert_eq!(rv, want),
        other => panic!("expected {want:?}, got {other:?}"),
    }
}

/// Runs a command, asserts success, returns stdout.
#[track_caller]
fn run(c: &mut Command) -> Vec<u8> {
    let o = c
        .output()
        .unwrap_or_else(|e| panic!("{c:?} did not start: {e}"));
    assert!(
        o.status.success(),
        "{c:?} failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    o.stdout
}

/// Runs `openssl args…` with `input` on stdin; returns stdout.
#[track_caller]
fn openssl(args: &[&str], input: &[u8]) -> Vec<u8> {
    let mut child = Command::new("openssl")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("openssl must be installed");
    child.stdin.take().unwrap().write_all(input).unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(
        o.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    o.stdout
}

fn value(s: &Session, key: ObjectHandle) -> Vec<u8> {
    match &s.get_attributes(key, &[AttributeType::Value]).unwrap()[..] {
        [Attribute::Value(v)] => v.clone(),
        other => panic!("no CKA_VALUE: {other:?}"),
    }
}

fn flag(s: &Session, key: ObjectHandle, t: AttributeType) -> bool {
    let attrs = s.get_attributes(key, &[t]).unwrap();
    match attrs.first() {
        Some(Attribute::Sensitive(b))
        | Some(Attribute::Extractable(b))
        | Some(Attribute::AlwaysSensitive(b))
        | Some(Attribute::NeverExtractable(b))
        | Some(Attribute::Local(b))
        | Some(Attribute::WrapWithTrusted(b)) => *b,
        other => panic!("{t:?}: {other:?}"),
    }
}

/// An AES key of `len` bytes in the session, with `extra` attributes.
fn aes_key(s: &Session, len: u64, extra: &[Attribute]) -> ObjectHandle {
    let mut t = vec![
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::AES),
        Attribute::ValueLen(len.into()),
    ];
    t.extend_from_slice(extra);
    s.generate_key(&Mechanism::AesKeyGen, &t).unwrap()
}

/// A readable AES key usable for encryption and decryption.
fn open_aes(s: &Session, len: u64) -> ObjectHandle {
    aes_key(
        s,
        len,
        &[
            Attribute::Sensitive(false),
            Attribute::Extractable(true),
            Attribute::Encrypt(true),
            Attribute::Decrypt(true),
        ],
    )
}

// ----- before C_Initialize -----

type GetFunctionList = unsafe extern "C" fn(*mut *mut CK_FUNCTION_LIST) -> CK_RV;

fn function_list() -> &'static CK_FUNCTION_LIST {
    let path = CString::new(module_path().as_os_str().as_bytes()).unwrap();
    // SAFETY: a NUL-terminated path; the library stays loaded for the process's life.
    let lib = unsafe { libc::dlopen(path.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
    assert!(!lib.is_null());
    let sym = CString::new("C_GetFunctionList").unwrap();
    // SAFETY: a live handle and a NUL-terminated name.
    let get = unsafe { libc::dlsym(lib, sym.as_ptr()) };
    assert!(!get.is_null());
    // SAFETY: the symbol is PKCS#11's C_GetFunctionList.
    let get: GetFunctionList = unsafe { std::mem::transmute(get) };
    let mut p: *mut CK_FUNCTION_LIST = null_mut();
    // SAFETY: a valid out pointer.
    assert_eq!(unsafe { get(&mut p) }, CKR_OK);
    // SAFETY: a pointer to the module's static list.
    unsafe { &*p }
}

/// Zero: a NULL pointer, a zero handle or length (never a function pointer here).
fn z<T>() -> T {
    // SAFETY: only instantiated with integers, raw pointers and `Option<fn>` (None).
    unsafe { std::mem::zeroed() }
}

/// Calls every entry but `C_Initialize` and `C_GetFunctionList` with zeros.
fn every_function_before_initialize(l: &CK_FUNCTION_LIST) -> Vec<(&'static str, CK_RV)> {
    macro_rules! calls {
        ($($f:ident($($a:expr),*);)*) => {
            // SAFETY: zeros are NULL pointers and zero handles; before C_Initialize the
            // module must refuse every call without touching them.
            vec![$((stringify!($f), unsafe { (l.$f.unwrap())($($a),*) })),*]
        };
    }
    calls! {
        C_Finalize(z());
        C_GetInfo(z());
        C_GetSlotList(z(), z(), z());
        C_GetSlotInfo(z(), z());
        C_GetTokenInfo(z(), z());
        C_GetMechanismList(z(), z(), z());
        C_GetMechanismInfo(z(), z(), z());
        C_InitToken(z(), z(), z(), z());
        C_InitPIN(z(), z(), z());
        C_SetPIN(z(), z(), z(), z(), z());
        C_OpenSession(z(), z(), z(), None, z());
        C_CloseSession(z());
        C_CloseAllSessions(z());
        C_GetSessionInfo(z(), z());
        C_GetOperationState(z(), z(), z());
        C_SetOperationState(z(), z(), z(), z(), z());
        C_Login(z(), z(), z(), z());
        C_Logout(z());
        C_CreateObject(z(), z(), z(), z());
        C_CopyObject(z(), z(), z(), z(), z());
        C_DestroyObject(z(), z());
        C_GetObjectSize(z(), z(), z());
        C_GetAttributeValue(z(), z(), z(), z());
        C_SetAttributeValue(z(), z(), z(), z());
        C_FindObjectsInit(z(), z(), z());
        C_FindObjects(z(), z(), z(), z());
        C_FindObjectsFinal(z());
        C_EncryptInit(z(), z(), z());
        C_Encrypt(z(), z(), z(), z(), z());
        C_EncryptUpdate(z(), z(), z(), z(), z());
        C_EncryptFinal(z(), z(), z());
        C_DecryptInit(z(), z(), z());
        C_Decrypt(z(), z(), z(), z(), z());
        C_DecryptUpdate(z(), z(), z(), z(), z());
        C_DecryptFinal(z(), z(), z());
        C_DigestInit(z(), z());
        C_Digest(z(), z(), z(), z(), z());
        C_DigestUpdate(z(), z(), z());
        C_DigestKey(z(), z());
        C_DigestFinal(z(), z(), z());
        C_SignInit(z(), z(), z());
        C_Sign(z(), z(), z(), z(), z());
        C_SignUpdate(z(), z(), z());
        C_SignFinal(z(), z(), z());
        C_SignRecoverInit(z(), z(), z());
        C_SignRecover(z(), z(), z(), z(), z());
        C_VerifyInit(z(), z(), z());
        C_Verify(z(), z(), z(), z(), z());
        C_VerifyUpdate(z(), z(), z());
        C_VerifyFinal(z(), z(), z());
        C_VerifyRecoverInit(z(), z(), z());
        C_VerifyRecover(z(), z(), z(), z(), z());
        C_DigestEncryptUpdate(z(), z(), z(), z(), z());
        C_DecryptDigestUpdate(z(), z(), z(), z(), z());
        C_SignEncryptUpdate(z(), z(), z(), z(), z());
        C_DecryptVerifyUpdate(z(), z(), z(), z(), z());
        C_GenerateKey(z(), z(), z(), z(), z());
        C_GenerateKeyPair(z(), z(), z(), z(), z(), z(), z(), z());
        C_WrapKey(z(), z(), z(), z(), z(), z());
        C_UnwrapKey(z(), z(), z(), z(), z(), z(), z(), z());
        C_DeriveKey(z(), z(), z(), z(), z(), z());
        C_SeedRandom(z(), z(), z());
        C_GenerateRandom(z(), z(), z());
        C_GetFunctionStatus(z());
        C_CancelFunction(z());
        C_WaitForSlotEvent(z(), z(), z());
    }
}

// ----- the in-process conformance run -----

#[test]
fn every_function_conforms() {
    let dir = tempfile::tempdir().unwrap();
    let rack = rack(dir.path());
    // SAFETY: this binary's only test that touches the environment sets it before the
    // module reads it (at C_Initialize).
    unsafe { std::env::set_var("HSM_SIM_DIR", dir.path()) };

    let list = function_list();
    let before = every_function_before_initialize(list);
    assert_eq!(
        before.len(),
        66,
        "every entry but C_Initialize/C_GetFunctionList"
    );
    let wrong: Vec<_> = before
        .iter()
        .filter(|(_, rv)| *rv != CKR_CRYPTOKI_NOT_INITIALIZED)
        .collect();
    assert!(wrong.is_empty(), "before C_Initialize: {wrong:x?}");

    let p = Pkcs11::new(module_path()).unwrap();
    p.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .unwrap();
    let slot = p.get_slots_with_token().unwrap()[0];
    p.init_token(slot, &AuthPin::from(SO_PIN), "conformance")
        .unwrap();
    let s = p.open_rw_session(slot).unwrap();
    s.login(UserType::So, Some(&AuthPin::from(SO_PIN))).unwrap();
    s.init_pin(&AuthPin::from(USER_PIN)).unwrap();
    // The SO makes the trusted wrapping key: a public session object (the SO sees no
    // private objects), usable by the user after the SO logs out.
    let trusted = aes_key(
        &s,
        32,
        &[
            Attribute::Private(false),
            Attribute::Trusted(true),
            Attribute::Wrap(true),
            Attribute::Unwrap(true),
        ],
    );
    s.logout().unwrap();
    s.login(UserType::User, Some(&AuthPin::from(USER_PIN)))
        .unwrap();

    mechanisms(&p, slot);
    digests(&s);
    aes_modes(&s);
    rsa_encryption(&s);
    wrapping(&s, trusted);
    escrowed_private_key(&s);
    copies_and_latches(&s);
    key_policy(&s, &rack);
    s.seed_random(b"application entropy").unwrap();
    assert_eq!(s.generate_random_vec(32).unwrap().len(), 32);
    drop(s);
    p.finalize().unwrap();
}

fn mechanisms(p: &Pkcs11, slot: cryptoki::slot::Slot) {
    let list = p.get_mechanism_list(slot).unwrap();
    for m in [
        MechanismType::AES_KEY_GEN,
        MechanismType::AES_ECB,
        MechanismType::AES_CBC,
        MechanismType::AES_CBC_PAD,
        MechanismType::AES_GCM,
        MechanismType::AES_KEY_WRAP,
        MechanismType::AES_KEY_WRAP_PAD,
        MechanismType::GENERIC_SECRET_KEY_GEN,
        MechanismType::SHA1,
        MechanismType::SHA256,
        MechanismType::SHA384,
        MechanismType::SHA512,
    ] {
        assert!(list.contains(&m), "{m} missing from the mechanism list");
    }
    let info = p
        .get_mechanism_info(slot, MechanismType::RSA_PKCS_OAEP)
        .unwrap();
    assert!(info.encrypt() && info.decrypt() && info.wrap() && info.unwrap());
}

fn digests(s: &Session) {
    let data: Vec<u8> = (0..1000u32).map(|i| (i * 7) as u8).collect();
    let cases: [(Mechanism, Vec<u8>); 4] = [
        (Mechanism::Sha1, sha1::Sha1::digest(&data).to_vec()),
        (Mechanism::Sha256, sha2::Sha256::digest(&data).to_vec()),
        (Mechanism::Sha384, sha2::Sha384::digest(&data).to_vec()),
        (Mechanism::Sha512, sha2::Sha512::digest(&data).to_vec()),
    ];
    for (m, want) in &cases {
        assert_eq!(&s.digest(m, &data).unwrap(), want, "{m:?}");
        s.digest_init(m).unwrap();
        for part in data.chunks(333) {
            s.digest_update(part).unwrap();
        }
        assert_eq!(&s.digest_final().unwrap(), want, "{m:?} in parts");
    }
    assert_eq!(
        s.digest(&Mechanism::Sha256, &data).unwrap(),
        openssl(&["dgst", "-sha256", "-binary"], &data)
    );
    // C_DigestKey: the digest of a secret key's value, the value never read out.
    let key = s
        .create_object(&[
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(KeyType::GENERIC_SECRET),
            Attribute::Value(b"a secret of twenty-four".to_vec()),
            Attribute::Sensitive(true),
        ])
        .unwrap();
    s.digest_init(&Mechanism::Sha256).unwrap();
    s.digest_update(b"prefix").unwrap();
    s.digest_key(key).unwrap();
    let mut both = b"prefix".to_vec();
    both.extend_from_slice(b"a secret of twenty-four");
    assert_eq!(
        s.digest_final().unwrap(),
        sha2::Sha256::digest(&both).to_vec()
    );
    expect_rv(
        s.digest(&Mechanism::EcdsaSha256, b"x"),
        RvError::MechanismInvalid,
    );
}

fn aes_modes(s: &Session) {
    let key = open_aes(s, 32);
    let k = hex::encode(value(s, key));
    let iv = [0x42u8; 16];
    let ivh = hex::encode(iv);
    let blocks: Vec<u8> = (0..64u8).collect();
    let odd: Vec<u8> = (0..45u8).collect();

    let ecb = s.encrypt(&Mechanism::AesEcb, key, &blocks).unwrap();
    assert_eq!(
        ecb,
        openssl(&["enc", "-aes-256-ecb", "-nopad", "-K", &k], &blocks)
    );
    let cbc = s.encrypt(&Mechanism::AesCbc(iv), key, &blocks).unwrap();
    assert_eq!(
        cbc,
        openssl(
            &["enc", "-aes-256-cbc", "-nopad", "-K", &k, "-iv", &ivh],
            &blocks
        )
    );
    let pad = s.encrypt(&Mechanism::AesCbcPad(iv), key, &odd).unwrap();
    assert_eq!(
        pad,
        openssl(&["enc", "-aes-256-cbc", "-K", &k, "-iv", &ivh], &odd)
    );
    // openssl's ciphertext, decrypted by the token.
    let theirs = openssl(&["enc", "-aes-256-cbc", "-K", &k, "-iv", &ivh], &blocks);
    assert_eq!(
        s.decrypt(&Mechanism::AesCbcPad(iv), key, &theirs).unwrap(),
        blocks
    );
    assert_eq!(s.decrypt(&Mechanism::AesEcb, key, &ecb).unwrap(), blocks);
    // Whole blocks only without padding; bad padding is refused.
    expect_rv(
        s.encrypt(&Mechanism::AesCbc(iv), key, &odd),
        RvError::DataLenRange,
    );
    expect_rv(
        s.decrypt(&Mechanism::AesCbcPad(iv), key, &cbc),
        RvError::EncryptedDataInvalid,
    );
    // Multi-part gives what single-part gives.
    s.encrypt_init(&Mechanism::AesCbcPad(iv), key).unwrap();
    let mut parts = Vec::new();
    for c in odd.chunks(7) {
        parts.extend(s.encrypt_update(c).unwrap());
    }
    parts.extend(s.encrypt_final().unwrap());
    assert_eq!(parts, pad);
    s.decrypt_init(&Mechanism::AesCbcPad(iv), key).unwrap();
    let mut plain = Vec::new();
    for c in pad.chunks(5) {
        plain.extend(s.decrypt_update(c).unwrap());
    }
    plain.extend(s.decrypt_final().unwrap());
    assert_eq!(plain, odd);

    // GCM, checked with ring.
    let mut gcm_iv = [7u8; 12];
    let aad = b"bid 2026-0042";
    let mech = Mechanism::AesGcm(GcmParams::new(&mut gcm_iv, aad, 128.into()).unwrap());
    let sealed = s.encrypt(&mech, key, &odd).unwrap();
    let rk = ring::aead::LessSafeKey::new(
        ring::aead::UnboundKey::new(&ring::aead::AES_256_GCM, &value(s, key)).unwrap(),
    );
    let mut buf = sealed.clone();
    let opened = rk
        .open_in_place(
            ring::aead::Nonce::assume_unique_for_key([7u8; 12]),
            ring::aead::Aad::from(aad),
            &mut buf,
        )
        .unwrap();
    assert_eq!(opened, &odd[..]);
    assert_eq!(s.decrypt(&mech, key, &sealed).unwrap(), odd);
    let mut tampered = sealed.clone();
    tampered[3] ^= 1;
    expect_rv(
        s.decrypt(&mech, key, &tampered),
        RvError::EncryptedDataInvalid,
    );

    // A key without CKA_ENCRYPT may not encrypt.
    let no_use = aes_key(s, 16, &[Attribute::Encrypt(false)]);
    expect_rv(
        s.encrypt(&Mechanism::AesEcb, no_use, &blocks),
        RvError::KeyFunctionNotPermitted,
    );
}

/// An RSA-2048 key pair with readable private parts (for openssl), encrypting, wrapping.
fn rsa_pair(s: &Session) -> (ObjectHandle, ObjectHandle) {
    s.generate_key_pair(
        &Mechanism::RsaPkcsKeyPairGen,
        &[
            Attribute::ModulusBits(2048.into()),
            Attribute::PublicExponent(vec![1, 0, 1]),
            Attribute::Encrypt(true),
            Attribute::Wrap(true),
        ],
        &[
            Attribute::Sensitive(false),
            Attribute::Extractable(true),
            Attribute::Decrypt(true),
            Attribute::Unwrap(true),
        ],
    )
    .unwrap()
}

/// The private key as DER (PKCS#1), built by openssl from the token's components.
fn rsa_der(s: &Session, private: ObjectHandle, work: &Path) -> PathBuf {
    let types = [
        AttributeType::Modulus,
        AttributeType::PublicExponent,
        AttributeType::PrivateExponent,
        AttributeType::Prime1,
        AttributeType::Prime2,
        AttributeType::Exponent1,
        AttributeType::Exponent2,
        AttributeType::Coefficient,
    ];
    let attrs = s.get_attributes(private, &types).unwrap();
    let mut conf = String::from("asn1=SEQUENCE:k\n[k]\nv=INTEGER:0\n");
    for (i, a) in attrs.iter().enumerate() {
        let v = match a {
            Attribute::Modulus(v)
            | Attribute::PublicExponent(v)
            | Attribute::PrivateExponent(v)
            | Attribute::Prime1(v)
            | Attribute::Prime2(v)
            | Attribute::Exponent1(v)
            | Attribute::Exponent2(v)
            | Attribute::Coefficient(v) => v,
            other => panic!("unexpected {other:?}"),
        };
        conf.push_str(&format!("f{i}=INTEGER:0x{}\n", hex::encode_upper(v)));
    }
    assert_eq!(attrs.len(), 8);
    let cnf = work.join("rsa.cnf");
    std::fs::write(&cnf, conf).unwrap();
    let der = work.join("rsa.der");
    run(Command::new("openssl")
        .args(["asn1parse", "-noout", "-genconf"])
        .arg(&cnf)
        .arg("-out")
        .arg(&der));
    der
}

fn oaep_sha256() -> Mechanism<'static> {
    Mechanism::RsaPkcsOaep(PkcsOaepParams::new(
        MechanismType::SHA256,
        PkcsMgfType::MGF1_SHA256,
        PkcsOaepSource::empty(),
    ))
}

fn pkeyutl(der: &Path, op: &str, oaep: bool, input: &[u8]) -> Vec<u8> {
    let der = der.to_str().unwrap();
    let mut args = vec!["pkeyutl", op, "-keyform", "DER", "-inkey", der];
    if oaep {
        args.extend([
            "-pkeyopt",
            "rsa_padding_mode:oaep",
            "-pkeyopt",
            "rsa_oaep_md:sha256",
            "-pkeyopt",
            "rsa_mgf1_md:sha256",
        ]);
    }
    openssl(&args, input)
}

fn rsa_encryption(s: &Session) {
    let work = tempfile::tempdir().unwrap();
    let (public, private) = rsa_pair(s);
    let der = rsa_der(s, private, work.path());
    let msg = b"the bid opens at noon";
    // The token encrypts, openssl decrypts; and back.
    let c = s.encrypt(&Mechanism::RsaPkcs, public, msg).unwrap();
    assert_eq!(c.len(), 256);
    assert_eq!(pkeyutl(&der, "-decrypt", false, &c), msg);
    let c = s.encrypt(&oaep_sha256(), public, msg).unwrap();
    assert_eq!(pkeyutl(&der, "-decrypt", true, &c), msg);
    let theirs = pkeyutl(&der, "-encrypt", true, msg);
    assert_eq!(s.decrypt(&oaep_sha256(), private, &theirs).unwrap(), msg);
    // Encryption with a private key, or too much data, is refused.
    expect_rv(
        s.encrypt(&Mechanism::RsaPkcs, private, msg),
        RvError::KeyTypeInconsistent,
    );
    expect_rv(
        s.encrypt(&Mechanism::RsaPkcs, public, &[0u8; 250]),
        RvError::DataLenRange,
    );
}

fn wrapping(s: &Session, trusted: ObjectHandle) {
    let work = tempfile::tempdir().unwrap();
    // CKA_TRUSTED is the SO's to set.
    expect_rv(
        s.generate_key(
            &Mechanism::AesKeyGen,
            &[Attribute::ValueLen(32.into()), Attribute::Trusted(true)],
        ),
        RvError::AttributeReadOnly,
    );
    let kek = aes_key(
        s,
        32,
        &[
            Attribute::Sensitive(false),
            Attribute::Wrap(true),
            Attribute::Unwrap(true),
        ],
    );
    expect_rv(
        s.update_attributes(kek, &[Attribute::Trusted(true)]),
        RvError::AttributeReadOnly,
    );
    let kek_hex = hex::encode(value(s, kek));
    let plain = open_aes(s, 16);
    let plain_value = value(s, plain);

    // RFC 3394 and RFC 5649, checked with openssl.
    let wrapped = s.wrap_key(&Mechanism::AesKeyWrap, kek, plain).unwrap();
    assert_eq!(
        wrapped,
        openssl(
            &[
                "enc",
                "-id-aes256-wrap",
                "-K",
                &kek_hex,
                "-iv",
                "A6A6A6A6A6A6A6A6"
            ],
            &plain_value
        )
    );
    let padded = s.wrap_key(&Mechanism::AesKeyWrapPad, kek, plain).unwrap();
    assert_eq!(
        padded,
        openssl(
            &[
                "enc",
                "-id-aes256-wrap-pad",
                "-K",
                &kek_hex,
                "-iv",
                "A65959A6"
            ],
            &plain_value
        )
    );
    let template = [
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::AES),
        Attribute::Encrypt(true),
        Attribute::Sensitive(false),
    ];
    let back = s
        .unwrap_key(&Mechanism::AesKeyWrap, kek, &wrapped, &template)
        .unwrap();
    assert_eq!(value(s, back), plain_value);
    assert!(!flag(s, back, AttributeType::Local));
    assert!(!flag(s, back, AttributeType::NeverExtractable));
    let back = s
        .unwrap_key(&Mechanism::AesKeyWrapPad, kek, &padded, &template)
        .unwrap();
    assert_eq!(value(s, back), plain_value);
    let mut bad = wrapped.clone();
    bad[9] ^= 1;
    expect_rv(
        s.unwrap_key(&Mechanism::AesKeyWrap, kek, &bad, &template),
        RvError::WrappedKeyInvalid,
    );

    // RSA-OAEP wrapping, unwrapped by openssl and by the token.
    let (rsa_public, rsa_private) = rsa_pair(s);
    let der = rsa_der(s, rsa_private, work.path());
    let w = s.wrap_key(&oaep_sha256(), rsa_public, plain).unwrap();
    assert_eq!(pkeyutl(&der, "-decrypt", true, &w), plain_value);
    let back = s
        .unwrap_key(&oaep_sha256(), rsa_private, &w, &template)
        .unwrap();
    assert_eq!(value(s, back), plain_value);

    // The refusals.
    let sensitive = aes_key(s, 16, &[Attribute::Extractable(true)]);
    assert!(flag(s, sensitive, AttributeType::Sensitive));
    expect_rv(
        s.wrap_key(&Mechanism::AesKeyWrap, kek, sensitive),
        RvError::KeyNotWrappable,
    );
    let w = s
        .wrap_key(&Mechanism::AesKeyWrap, trusted, sensitive)
        .unwrap();
    assert_eq!(w.len(), 24);
    let with_trusted = aes_key(
        s,
        16,
        &[
            Attribute::Sensitive(false),
            Attribute::WrapWithTrusted(true),
        ],
    );
    expect_rv(
        s.wrap_key(&Mechanism::AesKeyWrap, kek, with_trusted),
        RvError::KeyNotWrappable,
    );
    expect_rv(
        s.wrap_key(&oaep_sha256(), rsa_public, with_trusted),
        RvError::KeyNotWrappable,
    );
    s.wrap_key(&Mechanism::AesKeyWrap, trusted, with_trusted)
        .unwrap();
    let unextractable = aes_key(s, 16, &[Attribute::Extractable(false)]);
    expect_rv(
        s.wrap_key(&Mechanism::AesKeyWrap, trusted, unextractable),
        RvError::KeyUnextractable,
    );
    let not_wrapping = open_aes(s, 32);
    expect_rv(
        s.wrap_key(&Mechanism::AesKeyWrap, not_wrapping, plain),
        RvError::KeyFunctionNotPermitted,
    );
    expect_rv(
        s.wrap_key(&Mechanism::AesKeyWrap, rsa_public, plain),
        RvError::WrappingKeyTypeInconsistent,
    );
    expect_rv(
        s.unwrap_key(&Mechanism::AesKeyWrap, rsa_private, &wrapped, &template),
        RvError::UnwrappingKeyTypeInconsistent,
    );
    // A public key holds nothing to wrap.
    expect_rv(
        s.wrap_key(&Mechanism::AesKeyWrapPad, kek, rsa_public),
        RvError::KeyNotWrappable,
    );
}

/// A private key made outside (openssl), wrapped there under a key the token shares
/// (RFC 5649 over PKCS#8), comes onto the token with `C_UnwrapKey`, decrypts what openssl
/// encrypts to it, and wraps back out to the same key.
fn escrowed_private_key(s: &Session) {
    let work = tempfile::tempdir().unwrap();
    let kek = aes_key(
        s,
        32,
        &[
            Attribute::Sensitive(false),
            Attribute::Wrap(true),
            Attribute::Unwrap(true),
        ],
    );
    let kek_hex = hex::encode(value(s, kek));
    let pem = work.path().join("escrow.pem");
    run(Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
        ])
        .arg(&pem));
    // PKCS#8 (`openssl pkey -outform DER` would write PKCS#1 for RSA).
    let pkcs8 = run(Command::new("openssl")
        .args(["pkcs8", "-topk8", "-nocrypt", "-outform", "DER", "-in"])
        .arg(&pem));
    let wrapped = openssl(
        &[
            "enc",
            "-id-aes256-wrap-pad",
            "-K",
            &kek_hex,
            "-iv",
            "A65959A6",
        ],
        &pkcs8,
    );
    let template = [
        Attribute::Class(ObjectClass::PRIVATE_KEY),
        Attribute::KeyType(KeyType::RSA),
        Attribute::Decrypt(true),
        Attribute::Sensitive(false),
        Attribute::Extractable(true),
    ];
    let key = s
        .unwrap_key(&Mechanism::AesKeyWrapPad, kek, &wrapped, &template)
        .unwrap();
    assert!(!flag(s, key, AttributeType::Local));
    assert!(!flag(s, key, AttributeType::AlwaysSensitive));
    let msg = b"sealed bid";
    let pem_s = pem.to_str().unwrap();
    let sealed = openssl(
        &[
            "pkeyutl",
            "-encrypt",
            "-inkey",
            pem_s,
            "-pkeyopt",
            "rsa_padding_mode:oaep",
            "-pkeyopt",
            "rsa_oaep_md:sha256",
            "-pkeyopt",
            "rsa_mgf1_md:sha256",
        ],
        msg,
    );
    assert_eq!(s.decrypt(&oaep_sha256(), key, &sealed).unwrap(), msg);
    // Back out: openssl unwraps what the token wrapped, and finds the same key.
    let out = s.wrap_key(&Mechanism::AesKeyWrapPad, kek, key).unwrap();
    let der = openssl(
        &[
            "enc",
            "-d",
            "-id-aes256-wrap-pad",
            "-K",
            &kek_hex,
            "-iv",
            "A65959A6",
        ],
        &out,
    );
    let text = |der: &[u8]| openssl(&["pkey", "-inform", "DER", "-noout", "-text"], der);
    assert_eq!(text(&der), text(&pkcs8));
    // A key type that is not the wrapped key's, and RSA wrapping of a private key.
    let mut wrong = template.to_vec();
    wrong[1] = Attribute::KeyType(KeyType::EC);
    expect_rv(
        s.unwrap_key(&Mechanism::AesKeyWrapPad, kek, &wrapped, &wrong),
        RvError::TemplateInconsistent,
    );
    let (rsa_public, _) = rsa_pair(s);
    expect_rv(
        s.wrap_key(&oaep_sha256(), rsa_public, key),
        RvError::KeyNotWrappable,
    );

    // A P-256 key the same way: the token signs, openssl verifies with the original.
    let ec_pem = work.path().join("escrow-ec.pem");
    run(Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
        ])
        .arg(&ec_pem));
    let ec8 = run(Command::new("openssl")
        .args(["pkcs8", "-topk8", "-nocrypt", "-outform", "DER", "-in"])
        .arg(&ec_pem));
    let wrapped = openssl(
        &[
            "enc",
            "-id-aes256-wrap-pad",
            "-K",
            &kek_hex,
            "-iv",
            "A65959A6",
        ],
        &ec8,
    );
    let ec = s
        .unwrap_key(
            &Mechanism::AesKeyWrapPad,
            kek,
            &wrapped,
            &[
                Attribute::Class(ObjectClass::PRIVATE_KEY),
                Attribute::KeyType(KeyType::EC),
                Attribute::Sign(true),
            ],
        )
        .unwrap();
    assert!(flag(s, ec, AttributeType::Sensitive));
    let data = b"seal of the company";
    let raw = s.sign(&Mechanism::EcdsaSha256, ec, data).unwrap();
    let sig = work.path().join("sig.der");
    std::fs::write(&sig, ecdsa_der(&raw)).unwrap();
    let msg = work.path().join("msg");
    std::fs::write(&msg, data).unwrap();
    let said = run(Command::new("openssl")
        .args(["dgst", "-sha256", "-prverify"])
        .arg(&ec_pem)
        .arg("-signature")
        .arg(&sig)
        .arg(&msg));
    assert!(String::from_utf8_lossy(&said).contains("Verified OK"));
}

/// A raw `r||s` ECDSA signature as the DER `Ecdsa-Sig-Value` openssl reads.
fn ecdsa_der(raw: &[u8]) -> Vec<u8> {
    let int = |v: &[u8]| {
        let v: Vec<u8> = v.iter().copied().skip_while(|b| *b == 0).collect();
        let mut out = vec![0x02];
        let pad = v.first().is_none_or(|b| *b & 0x80 != 0);
        out.push((v.len() + usize::from(pad)) as u8);
        if pad {
            out.push(0);
        }
        out.extend(v);
        out
    };
    let (r, s) = raw.split_at(raw.len() / 2);
    let body = [int(r), int(s)].concat();
    let mut out = vec![0x30, body.len() as u8];
    out.extend(body);
    out
}

fn copies_and_latches(s: &Session) {
    let key = open_aes(s, 16);
    let copy = s
        .copy_object(key, &[Attribute::Label(b"copy".to_vec())])
        .unwrap();
    assert_ne!(copy, key);
    assert_eq!(value(s, copy), value(s, key));
    // A copy may be made sensitive, never the other way round.
    let sealed = s.copy_object(key, &[Attribute::Sensitive(true)]).unwrap();
    assert!(flag(s, sealed, AttributeType::Sensitive));
    expect_rv(
        s.update_attributes(sealed, &[Attribute::Sensitive(false)]),
        RvError::AttributeReadOnly,
    );
    let fixed = aes_key(
        s,
        16,
        &[Attribute::Copyable(false), Attribute::Extractable(false)],
    );
    expect_rv(s.copy_object(fixed, &[]), RvError::ActionProhibited);
    expect_rv(
        s.update_attributes(fixed, &[Attribute::Copyable(true)]),
        RvError::AttributeReadOnly,
    );
    let unextractable = aes_key(s, 16, &[Attribute::Extractable(false)]);
    expect_rv(
        s.copy_object(unextractable, &[Attribute::Extractable(true)]),
        RvError::AttributeReadOnly,
    );
    expect_rv(
        s.copy_object(key, &[Attribute::Value(vec![0; 16])]),
        RvError::AttributeReadOnly,
    );

    // The latches, on a secret key.
    s.update_attributes(key, &[Attribute::Sensitive(true)])
        .unwrap();
    expect_rv(
        s.update_attributes(key, &[Attribute::Sensitive(false)]),
        RvError::AttributeReadOnly,
    );
    assert!(!flag(s, key, AttributeType::AlwaysSensitive));
    s.update_attributes(key, &[Attribute::Extractable(false)])
        .unwrap();
    expect_rv(
        s.update_attributes(key, &[Attribute::Extractable(true)]),
        RvError::AttributeReadOnly,
    );
    assert!(!flag(s, key, AttributeType::NeverExtractable));
    s.update_attributes(key, &[Attribute::WrapWithTrusted(true)])
        .unwrap();
    expect_rv(
        s.update_attributes(key, &[Attribute::WrapWithTrusted(false)]),
        RvError::AttributeReadOnly,
    );
    // A generated key that stayed sensitive and unextractable says so.
    let born = aes_key(s, 16, &[Attribute::Extractable(false)]);
    assert!(flag(s, born, AttributeType::AlwaysSensitive));
    assert!(flag(s, born, AttributeType::NeverExtractable));
    assert!(flag(s, born, AttributeType::Local));
}

fn key_policy(s: &Session, rack: &Rack) {
    let both = [
        Attribute::Sensitive(false),
        Attribute::Wrap(true),
        Attribute::Decrypt(true),
    ];
    let before = aes_key(s, 32, &both);
    let target = open_aes(s, 16);
    s.wrap_key(&Mechanism::AesKeyWrap, before, target).unwrap();
    rack.set_key_policy(
        0,
        KeyPolicy {
            separate_wrap_and_decrypt: true,
        },
    )
    .unwrap();
    // No new key may wrap and decrypt, nor unwrap and encrypt; one made before the rule is
    // refused when used.
    expect_rv(
        s.generate_key(
            &Mechanism::AesKeyGen,
            &[
                Attribute::ValueLen(32.into()),
                Attribute::Wrap(true),
                Attribute::Decrypt(true),
            ],
        ),
        RvError::TemplateInconsistent,
    );
    let wrapper = aes_key(s, 32, &[Attribute::Sensitive(false), Attribute::Wrap(true)]);
    expect_rv(
        s.update_attributes(wrapper, &[Attribute::Decrypt(true)]),
        RvError::TemplateInconsistent,
    );
    expect_rv(
        s.wrap_key(&Mechanism::AesKeyWrap, before, target),
        RvError::KeyFunctionNotPermitted,
    );
    expect_rv(
        s.decrypt(&Mechanism::AesEcb, before, &[0u8; 16]),
        RvError::KeyFunctionNotPermitted,
    );
    s.wrap_key(&Mechanism::AesKeyWrap, wrapper, target).unwrap();
    rack.set_key_policy(0, KeyPolicy::default()).unwrap();
}
