//! hsm-sim's secret keys, digests and encryption driven from outside by OpenSC's
//! pkcs11-tool (which uses the multi-part calls), its results checked against openssl's.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use hsm_sim::rack::{InsertOptions, Rack, RackConfig};

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

fn tool(dir: &Path) -> Command {
    let mut c = Command::new("pkcs11-tool");
    c.env("HSM_SIM_DIR", dir)
        .arg("--module")
        .arg(module_path())
        .args(["--slot", "0"]);
    c
}

/// pkcs11-tool hashes, makes AES keys, encrypts and decrypts (multi-part calls), wraps and
/// unwraps, and its results agree with openssl's.
#[test]
fn pkcs11_tool_digests_and_encrypts() {
    let dir = tempfile::tempdir().unwrap();
    let _rack = rack(dir.path());
    let d = dir.path();
    run(tool(d).args(["--init-token", "--label", "outside", "--so-pin", "12345678"]));
    run(tool(d).args(["--init-pin", "--so-pin", "12345678", "--pin", "123456"]));
    let input = d.join("in.bin");
    let data: Vec<u8> = (0..3000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(&input, &data).unwrap();

    for (m, md) in [
        ("SHA-1", "-sha1"),
        ("SHA256", "-sha256"),
        ("SHA512", "-sha512"),
    ] {
        let out = d.join(format!("{m}.bin"));
        run(tool(d)
            .args(["--hash", "-m", m, "-i"])
            .arg(&input)
            .arg("-o")
            .arg(&out));
        assert_eq!(
            std::fs::read(&out).unwrap(),
            openssl(&["dgst", md, "-binary"], &data),
            "{m}"
        );
    }

    let login = ["-l", "--pin", "123456"];
    let made = run(tool(d).args(login).args([
        "--keygen",
        "--key-type",
        "AES:32",
        "--id",
        "20",
        "--label",
        "bulk",
        "--extractable",
        "--usage-decrypt",
    ]));
    assert!(String::from_utf8_lossy(&made).contains("AES length 32"));
    let key_hex = value_of(d, "20");
    let iv = "00112233445566778899aabbccddeeff";
    let ct = d.join("ct.bin");
    run(tool(d)
        .args(login)
        .args([
            "--encrypt",
            "--id",
            "20",
            "-m",
            "AES-CBC-PAD",
            "--iv",
            iv,
            "-i",
        ])
        .arg(&input)
        .arg("-o")
        .arg(&ct));
    assert_eq!(
        std::fs::read(&ct).unwrap(),
        openssl(&["enc", "-aes-256-cbc", "-K", &key_hex, "-iv", iv], &data)
    );
    let theirs = d.join("theirs.bin");
    std::fs::write(
        &theirs,
        openssl(&["enc", "-aes-256-cbc", "-K", &key_hex, "-iv", iv], &data),
    )
    .unwrap();
    let back = d.join("back.bin");
    run(tool(d)
        .args(login)
        .args([
            "--decrypt",
            "--id",
            "20",
            "-m",
            "AES-CBC-PAD",
            "--iv",
            iv,
            "-i",
        ])
        .arg(&theirs)
        .arg("-o")
        .arg(&back));
    assert_eq!(std::fs::read(&back).unwrap(), data);

    // Key wrap: pkcs11-tool wraps key 20 under key 21 (RFC 3394), openssl agrees, and the
    // unwrapped copy holds the same value.
    run(tool(d).args(login).args([
        "--keygen",
        "--key-type",
        "AES:32",
        "--id",
        "21",
        "--label",
        "kek",
        "--extractable",
        "--usage-wrap",
    ]));
    let kek_hex = value_of(d, "21");
    let wrapped = d.join("wrapped.bin");
    let said = run(tool(d)
        .args(login)
        .args([
            "--wrap",
            "--id",
            "21",
            "--application-id",
            "20",
            "-m",
            "AES-KEY-WRAP",
            "-o",
        ])
        .arg(&wrapped));
    assert!(String::from_utf8_lossy(&said).contains("Key wrapped"));
    assert_eq!(
        std::fs::read(&wrapped).unwrap(),
        openssl(
            &[
                "enc",
                "-id-aes256-wrap",
                "-K",
                &kek_hex,
                "-iv",
                "A6A6A6A6A6A6A6A6"
            ],
            &hex::decode(&key_hex).unwrap()
        )
    );
    run(tool(d)
        .args(login)
        .args(["--unwrap", "--id", "21", "-m", "AES-KEY-WRAP", "-i"])
        .arg(&wrapped)
        .args([
            "--key-type",
            "AES:32",
            "--application-id",
            "22",
            "--application-label",
            "unwrapped",
            "--extractable",
        ]));
    let unwrapped = value_of(d, "22");
    assert_eq!(unwrapped, key_hex);
}

/// A secret key's value, read by pkcs11-tool, in hex.
#[track_caller]
fn value_of(d: &Path, id: &str) -> String {
    let out = d.join(format!("value-{id}.bin"));
    run(tool(d)
        .args([
            "-l",
            "--pin",
            "123456",
            "--read-object",
            "--type",
            "secrkey",
            "--id",
            id,
            "-o",
        ])
        .arg(&out));
    let v = std::fs::read(&out).unwrap();
    assert!(!v.is_empty(), "no value read for key {id}");
    hex::encode(v)
}
