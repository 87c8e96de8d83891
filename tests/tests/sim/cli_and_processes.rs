//! hsm-sim seen from outside and from several processes: the `hsm-sim` CLI builds the rack
//! and injects faults, OpenSC's pkcs11-tool drives the module end to end, OpenSSL (through
//! the libp11 pkcs11 engine) signs with it and verifies the signatures against public keys
//! read from the token, and a process waiting in `C_WaitForSlotEvent` sees a token the CLI
//! plugs in. Outputs are checked, not only exit codes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::sim_common;

use std::path::Path;
use std::process::{Command, Output};

use cryptoki::error::RvError;
use cryptoki::session::UserType;
use cryptoki::slot::Slot;
use sim_common::*;

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Runs a command; asserts success; returns stdout + stderr.
#[track_caller]
fn ok(c: &mut Command) -> String {
    let o = c.output().unwrap();
    let t = text(&o);
    assert!(o.status.success(), "{c:?} failed: {t}");
    t
}

/// Runs a command; asserts failure; returns stdout + stderr.
#[track_caller]
fn fails(c: &mut Command) -> String {
    let o = c.output().unwrap();
    let t = text(&o);
    assert!(!o.status.success(), "{c:?} should fail: {t}");
    t
}

fn tool(dir: &Path) -> Command {
    let mut c = Command::new(ukey_tests::require_tool("pkcs11-tool"));
    c.env("HSM_SIM_DIR", dir)
        .arg("--module")
        .arg(ukey_tests::hsm_sim_module());
    c
}

fn openssl() -> Command {
    Command::new(ukey_tests::require_tool("openssl"))
}

/// Reads a public key from the token with pkcs11-tool and converts it to PEM.
fn public_pem(dir: &Path, work: &Path, id: &str) -> std::path::PathBuf {
    let der = work.join(format!("pub{id}.der"));
    let pem = work.join(format!("pub{id}.pem"));
    ok(tool(dir)
        .args([
            "--slot",
            "0",
            "--read-object",
            "--type",
            "pubkey",
            "--id",
            id,
            "-o",
        ])
        .arg(&der));
    ok(openssl()
        .args(["pkey", "-pubin", "-inform", "DER", "-in"])
        .arg(&der)
        .arg("-out")
        .arg(&pem));
    pem
}

#[test]
fn pkcs11_tool_and_openssl_drive_the_sim_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let d = dir.path();
    ok(cli(d).args(["rack", "init", "--slots", "2"]));
    let inserted = ok(cli(d).args(["insert", "--slot", "0", "--serial", "DESK0000000000A1"]));
    assert!(inserted.contains("DESK0000000000A1"), "{inserted}");

    let slots = ok(tool(d).arg("--list-slots"));
    assert!(slots.contains("hsm-sim rack slot 0"), "{slots}");
    assert!(slots.contains("uninitialized"), "{slots}");
    assert!(slots.contains("(empty)"), "slot 1 is empty: {slots}");

    let out = ok(tool(d).args([
        "--slot",
        "0",
        "--init-token",
        "--label",
        "desk",
        "--so-pin",
        SO_PIN,
    ]));
    assert!(out.contains("Token successfully initialized"), "{out}");
    let out = ok(tool(d).args([
        "--slot",
        "0",
        "--init-pin",
        "--so-pin",
        SO_PIN,
        "--pin",
        USER_PIN,
    ]));
    assert!(out.contains("User PIN successfully initialized"), "{out}");
    let slots = ok(tool(d).arg("--list-slots"));
    assert!(slots.contains("DESK0000000000A1"), "{slots}");
    assert!(slots.contains("PIN initialized"), "{slots}");

    let out = ok(tool(d).args([
        "--slot",
        "0",
        "--login",
        "--pin",
        USER_PIN,
        "--keypairgen",
        "--key-type",
        "EC:prime256v1",
        "--id",
        "01",
        "--label",
        "seal-official",
        "--usage-sign",
    ]));
    assert!(out.contains("Private Key Object; EC"), "{out}");
    assert!(out.contains("never extractable"), "{out}");
    let out = ok(tool(d).args([
        "--slot",
        "0",
        "--login",
        "--pin",
        USER_PIN,
        "--keypairgen",
        "--key-type",
        "rsa:2048",
        "--id",
        "02",
        "--label",
        "encryption",
    ]));
    assert!(out.contains("Private Key Object; RSA"), "{out}");

    // Signatures made on the token verify against the public keys read from it.
    let data = work.path().join("data.txt");
    std::fs::write(&data, b"bid document").unwrap();
    for (id, mech, format) in [
        ("01", "ECDSA-SHA256", Some("openssl")),
        ("02", "SHA256-RSA-PKCS", None),
    ] {
        let sig = work.path().join(format!("sig{id}"));
        let mut c = tool(d);
        c.args([
            "--slot", "0", "--login", "--pin", USER_PIN, "--sign", "--id", id, "-m", mech,
        ])
        .arg("-i")
        .arg(&data)
        .arg("-o")
        .arg(&sig);
        if let Some(f) = format {
            c.args(["--signature-format", f]);
        }
        ok(&mut c);
        let pem = public_pem(d, work.path(), id);
        let out = ok(openssl()
            .args(["dgst", "-sha256", "-verify"])
            .arg(&pem)
            .arg("-signature")
            .arg(&sig)
            .arg(&data));
        assert!(out.contains("Verified OK"), "{mech}: {out}");
    }

    let objects = ok(tool(d).args([
        "--slot",
        "0",
        "--login",
        "--pin",
        USER_PIN,
        "--list-objects",
    ]));
    assert_eq!(
        objects.matches("Private Key Object").count(),
        2,
        "{objects}"
    );
    assert_eq!(objects.matches("Public Key Object").count(), 2, "{objects}");
    assert!(objects.contains("seal-official") && objects.contains("encryption"));
    let public_only = ok(tool(d).args(["--slot", "0", "--list-objects"]));
    assert_eq!(
        public_only.matches("Private Key Object").count(),
        0,
        "{public_only}"
    );

    // The private key stays on the token: pkcs11-tool gets nothing (and may still exit 0).
    let key_out = work.path().join("priv.der");
    let _ = tool(d)
        .args([
            "--slot",
            "0",
            "--login",
            "--pin",
            USER_PIN,
            "--read-object",
            "--type",
            "privkey",
            "--id",
            "01",
            "-o",
        ])
        .arg(&key_out)
        .output()
        .unwrap();
    assert!(
        std::fs::metadata(&key_out).map(|m| m.len()).unwrap_or(0) == 0,
        "private key material left the token"
    );

    // OpenSSL signs through the libp11 engine and verifies the signature.
    let conf = work.path().join("openssl.cnf");
    std::fs::write(
        &conf,
        format!(
            "openssl_conf = openssl_init\n[openssl_init]\nengines = engine_section\n\
             [engine_section]\npkcs11 = pkcs11_section\n[pkcs11_section]\nengine_id = pkcs11\n\
             dynamic_path = /usr/lib/x86_64-linux-gnu/engines-3/pkcs11.so\n\
             MODULE_PATH = {}\ninit = 0\n",
            ukey_tests::hsm_sim_module().display()
        ),
    )
    .unwrap();
    let hash = work.path().join("hash.bin");
    ok(openssl()
        .args(["dgst", "-sha256", "-binary", "-out"])
        .arg(&hash)
        .arg(&data));
    let sig = work.path().join("engine.sig");
    ok(openssl()
        .env("OPENSSL_CONF", &conf)
        .env("HSM_SIM_DIR", d)
        .args([
            "pkeyutl", "-engine", "pkcs11", "-keyform", "engine", "-sign", "-inkey",
        ])
        .arg(format!(
            "pkcs11:token=desk;object=seal-official;type=private;pin-value={USER_PIN}"
        ))
        .arg("-in")
        .arg(&hash)
        .arg("-out")
        .arg(&sig));
    let out = ok(openssl()
        .args(["pkeyutl", "-verify", "-pubin", "-inkey"])
        .arg(public_pem(d, work.path(), "01"))
        .arg("-in")
        .arg(&hash)
        .arg("-sigfile")
        .arg(&sig));
    assert!(out.contains("Signature Verified Successfully"), "{out}");

    let list = ok(cli(d).arg("list"));
    let line = list
        .lines()
        .find(|l| l.contains("DESK0000000000A1"))
        .unwrap_or_else(|| panic!("{list}"));
    assert!(line.contains("ready") && line.contains("desk"), "{line}");
    let show = ok(cli(d).args(["show", "--serial", "DESK0000000000A1"]));
    assert!(
        show.contains("CKA_EC_POINT") && show.contains("not shown"),
        "{show}"
    );
}

#[test]
fn pkcs11_tool_sees_objects_this_process_wrote() {
    let Some(sim) = SimRack::in_child(1) else {
        return;
    };
    sim.insert(0);
    let p = sim.load();
    let slot = Slot::try_from(0u64).unwrap();
    init_token(&p, slot, "shared");
    let s = user_session(&p, slot);
    ec_keypair(&s, "written-by-test", &[7]);
    let out = ok(tool(sim.dir.path()).args([
        "--slot",
        "0",
        "--login",
        "--pin",
        USER_PIN,
        "--list-objects",
    ]));
    assert_eq!(out.matches("written-by-test").count(), 2, "{out}");
    // ...and this process sees what pkcs11-tool writes.
    ok(tool(sim.dir.path()).args([
        "--slot",
        "0",
        "--login",
        "--pin",
        USER_PIN,
        "--keypairgen",
        "--key-type",
        "EC:prime256v1",
        "--id",
        "08",
        "--label",
        "written-by-tool",
    ]));
    assert_eq!(find_label(&s, "written-by-tool").len(), 2);
}

#[test]
fn a_waiting_process_sees_the_cli_plug_a_token() {
    let Some(sim) = SimRack::in_child(2) else {
        return;
    };
    let p = sim.load();
    std::thread::scope(|scope| {
        let waiter = scope.spawn(|| p.wait_for_slot_event().unwrap());
        let out = ok(cli(sim.dir.path()).args(["insert", "--slot", "1"]));
        let slot = waiter.join().unwrap();
        assert_eq!(slot.id(), 1);
        let serial = p.get_token_info(slot).unwrap().serial_number().to_string();
        assert!(out.contains(&serial), "{out} / {serial}");
    });
    ok(cli(sim.dir.path()).args(["remove", "--slot", "1"]));
    assert_eq!(p.get_slot_event().unwrap().map(|s| s.id()), Some(1));
    assert!(p.get_slots_with_token().unwrap().is_empty());
}

#[test]
fn faults_set_by_the_cli_are_obeyed_by_the_module() {
    let Some(sim) = SimRack::in_child(1) else {
        return;
    };
    sim.insert(0);
    let p = sim.load();
    let slot = Slot::try_from(0u64).unwrap();
    init_token(&p, slot, "faults");
    let d = sim.dir.path();
    let armed = ok(cli(d).args([
        "fault",
        "--slot",
        "0",
        "--call",
        "C_Login",
        "--nth",
        "1",
        "--rv",
        "CKR_DEVICE_ERROR",
    ]));
    assert!(armed.contains("C_Login"), "{armed}");
    assert!(ok(cli(d).arg("list")).contains("fault: C_Login"));
    let s = p.open_rw_session(slot).unwrap();
    expect_rv(
        s.login(UserType::User, Some(&pin(USER_PIN))),
        RvError::DeviceError,
    );
    s.login(UserType::User, Some(&pin(USER_PIN))).unwrap();

    ok(cli(d).args([
        "fault",
        "--slot",
        "0",
        "--call",
        "C_GenerateRandom",
        "--pull",
    ]));
    expect_rv(s.generate_random_vec(4), RvError::DeviceRemoved);
    expect_rv(s.generate_random_vec(4), RvError::SessionHandleInvalid);
    assert!(
        ok(cli(d).arg("list"))
            .lines()
            .any(|l| l.starts_with("0 ") && l.trim_end().ends_with('-'))
    );
}

#[test]
fn a_sticky_fault_from_the_cli_holds_until_cleared() {
    let Some(sim) = SimRack::in_child(2) else {
        return;
    };
    sim.insert(1);
    let p = sim.load();
    let slot = Slot::try_from(1u64).unwrap();
    let d = sim.dir.path();
    let armed = ok(cli(d).args([
        "fault",
        "--slot",
        "1",
        "--call",
        "C_GetTokenInfo",
        "--rv",
        "CKR_DEVICE_ERROR",
        "--sticky",
    ]));
    assert!(armed.contains("C_GetTokenInfo call #1 on"), "{armed}");
    for _ in 0..3 {
        expect_rv(p.get_token_info(slot), RvError::DeviceError);
    }
    // The slot still shows its token: only reading it fails.
    assert_eq!(p.get_slots_with_token().unwrap(), vec![slot]);
    assert!(ok(cli(d).arg("list")).contains("fault: C_GetTokenInfo"));
    ok(cli(d).args(["fault", "--slot", "1", "--clear"]));
    assert!(p.get_token_info(slot).is_ok());
}

#[test]
fn the_cli_rejects_bad_arguments_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    assert!(fails(cli(d).arg("list")).contains("no rack"));
    ok(cli(d).args(["rack", "init", "--slots", "2"]));
    assert!(fails(cli(d).args(["rack", "init", "--slots", "2"])).contains("--force"));
    ok(cli(d).args(["insert", "--slot", "0"]));
    assert!(fails(cli(d).args(["insert", "--slot", "0"])).contains("occupied"));
    assert!(fails(cli(d).args(["insert", "--slot", "5"])).contains("out of range"));
    assert!(fails(cli(d).args(["insert", "--slot", "1", "--serial", "short"])).contains("16"));
    assert!(fails(cli(d).args(["remove", "--slot", "1"])).contains("empty"));
    let e = fails(cli(d).args([
        "fault",
        "--slot",
        "0",
        "--call",
        "C_Frob",
        "--rv",
        "CKR_DEVICE_ERROR",
    ]));
    assert!(e.contains("C_Frob"), "{e}");
    let e = fails(cli(d).args([
        "fault", "--slot", "0", "--call", "C_Sign", "--rv", "CKR_NOPE",
    ]));
    assert!(e.contains("CKR_NOPE"), "{e}");
    let e = fails(cli(d).args(["fault", "--slot", "0", "--call", "C_Sign", "--rv", "CKR_OK"]));
    assert!(e.contains("not a failure"), "{e}");
    let e = fails(cli(d).args(["latency", "--op", "keygen-dsa", "--ms", "5"]));
    assert!(
        e.contains("keygen-rsa2048"),
        "lists the known operations: {e}"
    );
    let e = fails(cli(d).args(["latency", "--profile", "sluggish"]));
    assert!(e.contains("realistic"), "{e}");
    ok(cli(d).args([
        "latency",
        "--slot",
        "0",
        "--op",
        "keygen-rsa2048",
        "--ms",
        "3000",
    ]));
    let usb = ok(cli(d).arg("usb"));
    assert!(usb.contains("\"port_path\": \"1-1.1\""), "{usb}");
}

#[test]
fn a_process_killed_mid_operation_leaves_the_last_committed_state() {
    let Some(sim) = SimRack::in_child(1) else {
        return;
    };
    let serial = sim.insert(0);
    let p = sim.load();
    let slot = Slot::try_from(0u64).unwrap();
    init_token(&p, slot, "killed");
    let s = user_session(&p, slot);
    ec_keypair(&s, "before", &[1]);
    let d = sim.dir.path();
    // Key generation takes a minute; a fault that never fires shows when it started.
    ok(cli(d).args([
        "latency",
        "--slot",
        "0",
        "--op",
        "keygen-p256",
        "--ms",
        "60000",
    ]));
    ok(cli(d).args([
        "fault",
        "--slot",
        "0",
        "--call",
        "C_GenerateKeyPair",
        "--nth",
        "1000",
        "--rv",
        "CKR_DEVICE_ERROR",
    ]));
    let mut child = tool(d)
        .args([
            "--slot",
            "0",
            "--login",
            "--pin",
            USER_PIN,
            "--keypairgen",
            "--key-type",
            "EC:prime256v1",
            "--label",
            "never",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while sim.rack.token(&serial).unwrap().faults()[0].seen() == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "pkcs11-tool never started keygen"
        );
        std::thread::yield_now();
    }
    child.kill().unwrap();
    child.wait().unwrap();
    ok(cli(d).args(["latency", "--slot", "0", "--reset"]));
    assert_eq!(
        find_label(&s, "before").len(),
        2,
        "committed objects survive"
    );
    assert!(find_label(&s, "never").is_empty(), "nothing half-written");
    assert!(ok(cli(d).arg("list")).contains("ready"));
}
