//! `libhsm_sim_skf.so` driven from outside through its C ABI: a C program
//! (`tests/c/harness.c`, built here with gcc against `tests/c/skfapi.h`, the standard's
//! types only) loads the library with dlopen and runs a token's production path — connect,
//! device authentication with the factory key and a new device key, the application, the
//! user PIN, a container, an SM2 key pair generated on the token, SM3 with Z, a signature,
//! a certificate in and out, an encryption key pair enveloped in — then PIN lockout and
//! unblocking and error codes. OpenSSL checks what the token produced: libcrypto inside the
//! harness (SM4 device authentication, SM2 decryption), the `openssl` command here (the SM2
//! signature over the message with the default signer ID, the certificate read back).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use hsm_sim::rack::fault::{Fault, FaultAction};
use hsm_sim::rack::token::TokenSettings;
use hsm_sim::rack::{InsertOptions, Rack, RackConfig};
use hsm_sim::skf::consts::{SAR_DEVICE_REMOVED, SAR_GENRANDERR};

const SERIAL: &str = "SKF0000000000001";

/// The library cargo built with this test: `target/<profile>/deps/libhsm_sim_skf.so`.
fn library() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let path = exe.parent().unwrap().join("libhsm_sim_skf.so");
    assert!(path.exists(), "{} was not built", path.display());
    path
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Builds the harness with gcc (`-Werror`: the header's types must match the calls).
fn harness(dir: &Path) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/c");
    let exe = dir.join("harness");
    run(Command::new("gcc")
        .args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-O1", "-I"])
        .arg(&src)
        .arg("-o")
        .arg(&exe)
        .arg(src.join("harness.c"))
        .args(["-ldl", "-lcrypto"]));
    exe
}

fn values(out: &str) -> HashMap<String, String> {
    out.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// DER INTEGER of a 32-byte big-endian value.
fn der_int(v: &[u8]) -> Vec<u8> {
    let mut v: Vec<u8> = v.iter().copied().skip_while(|b| *b == 0).collect();
    if v.is_empty() || v[0] & 0x80 != 0 {
        v.insert(0, 0);
    }
    let mut out = vec![0x02, v.len() as u8];
    out.extend(v);
    out
}

/// Writes the public key as a PEM SubjectPublicKeyInfo (id-ecPublicKey, curve SM2, GM/T
/// 0010) with the openssl command doing the PEM, and the signature as a DER
/// `SEQUENCE { r, s }`.
fn write_key_and_signature(dir: &Path, v: &HashMap<String, String>) -> (PathBuf, PathBuf) {
    let mut spki = hex::decode("3059301306072a8648ce3d020106082a811ccf5501822d034200").unwrap();
    spki.push(4);
    spki.extend(hex::decode(&v["public_x"]).unwrap());
    spki.extend(hex::decode(&v["public_y"]).unwrap());
    let der = dir.join("public.der");
    std::fs::write(&der, &spki).unwrap();
    let pem = dir.join("public.pem");
    run(Command::new("openssl")
        .args(["pkey", "-pubin", "-inform", "DER", "-in"])
        .arg(&der)
        .arg("-out")
        .arg(&pem));
    let mut body = der_int(&hex::decode(&v["sig_r"]).unwrap());
    body.extend(der_int(&hex::decode(&v["sig_s"]).unwrap()));
    let mut sig = vec![0x30, body.len() as u8];
    sig.extend(body);
    let sig_path = dir.join("signature.der");
    std::fs::write(&sig_path, sig).unwrap();
    (pem, sig_path)
}

fn openssl_verify(pem: &Path, sig: &Path, msg: &Path) -> std::process::Output {
    Command::new("openssl")
        .args(["dgst", "-sm3", "-verify"])
        .arg(pem)
        .arg("-signature")
        .arg(sig)
        .args(["-sigopt", "distid:1234567812345678"])
        .arg(msg)
        .output()
        .unwrap()
}

#[test]
fn a_c_program_makes_a_token_through_skf_and_openssl_checks_it() {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("rack");
    let rack = Rack::init(
        &state,
        RackConfig {
            slots: 2,
            ..Default::default()
        },
        false,
    )
    .unwrap();
    // A PKCS#11 token in slot 0 that the SKF library must not see, the SKF device in slot 1.
    rack.insert(0, InsertOptions::default()).unwrap();
    rack.insert(
        1,
        InsertOptions {
            serial: Some(SERIAL.into()),
            settings: Some(TokenSettings::skf()),
            latency: None,
            model: None,
        },
    )
    .unwrap();
    // A certificate to store: SM2-with-SM3, made by openssl.
    let key = tmp.path().join("ca.pem");
    let cert = tmp.path().join("cert.der");
    run(Command::new("openssl")
        .args(["genpkey", "-algorithm", "SM2", "-out"])
        .arg(&key));
    run(Command::new("openssl")
        .args(["req", "-new", "-x509", "-key"])
        .arg(&key)
        .args(["-sm3", "-sigopt", "distid:1234567812345678"])
        .args([
            "-subj",
            "/CN=seal-official test",
            "-days",
            "1",
            "-outform",
            "DER",
            "-out",
        ])
        .arg(&cert));
    let exe = harness(tmp.path());
    let cert_back = tmp.path().join("cert-back.der");
    let out = run(Command::new(&exe)
        .env("HSM_SIM_DIR", &state)
        .env_remove("HSM_SIM_LATENCY")
        .arg(library())
        .arg(SERIAL)
        .arg(&cert)
        .arg(&cert_back));
    let v = values(&out);
    assert_eq!(v["ok"], "production", "{out}");
    assert_eq!(v["device"], "hsm-sim 1-1.2");

    // The signature made on the token verifies with OpenSSL's SM2 (Z with the default ID)…
    let (pem, sig) = write_key_and_signature(tmp.path(), &v);
    let msg = tmp.path().join("message");
    std::fs::write(&msg, hex::decode(&v["message"]).unwrap()).unwrap();
    let ok = openssl_verify(&pem, &sig, &msg);
    assert!(
        ok.status.success() && String::from_utf8_lossy(&ok.stdout).contains("Verified OK"),
        "{ok:?}"
    );
    // …and not over another message.
    std::fs::write(&msg, b"another message").unwrap();
    assert!(!openssl_verify(&pem, &sig, &msg).status.success());

    // The certificate came back byte for byte, and openssl reads it.
    assert_eq!(
        std::fs::read(&cert_back).unwrap(),
        std::fs::read(&cert).unwrap()
    );
    let subject = run(Command::new("openssl")
        .args(["x509", "-inform", "DER", "-noout", "-subject", "-in"])
        .arg(&cert_back));
    assert!(subject.contains("seal-official test"), "{subject}");

    // The rack shows the SKF device as the CLI lists it; the PKCS#11 side sees only slot 0.
    let list = rack.list().unwrap();
    let t = list[1].token.as_ref().unwrap();
    assert_eq!(
        (t.interface, t.state.as_str(), t.objects),
        ("skf", "ready", 1)
    );
    assert_eq!(t.user_retries, (6, 6));
    assert_eq!(list[0].token.as_ref().unwrap().interface, "pkcs11");
    let pkcs11 = hsm_sim::engine::Engine::new(Rack::open(&state).unwrap());
    assert_eq!(pkcs11.slot_list(true).unwrap(), vec![0]);
    let shown = rack.token(SERIAL).unwrap().skf().unwrap().describe();
    assert!(shown.contains("container \"seal-official\""), "{shown}");
    assert!(shown.contains("device key changed"), "{shown}");
    assert!(!shown.contains("24681357"), "{shown}");

    // Faults name SKF functions: a failing call, then a pull.
    let expect = |sar: u32| {
        run(Command::new(&exe)
            .env("HSM_SIM_DIR", &state)
            .env_remove("HSM_SIM_LATENCY")
            .arg(library())
            .arg("expect-genrandom")
            .arg(format!("{sar:#x}")))
    };
    rack.set_fault(
        1,
        Fault::new(
            "SKF_GenRandom",
            1,
            FaultAction::Fail {
                rv: SAR_GENRANDERR.into(),
            },
        )
        .unwrap(),
    )
    .unwrap();
    expect(SAR_GENRANDERR);
    expect(0);
    rack.set_fault(
        1,
        Fault::new("SKF_GenRandom", 1, FaultAction::Pull).unwrap(),
    )
    .unwrap();
    expect(SAR_DEVICE_REMOVED);
    assert_eq!(rack.serial_in(1).unwrap(), None);
}
