//! The signed and sealed golden vectors checked by implementations that share no code with
//! this crate: `tests/independent/check_vectors.py` verifies one JWS vector of each algorithm
//! family (ES256, RS256, PS256) with Python's `jwcrypto` and opens an HPKE-sealed PIN with
//! Python `cryptography`'s HPKE; then this test opens a PIN that `cryptography` sealed.
//!
//! Needs `python3` with `jwcrypto` and `cryptography` (48 or later, for HPKE); `scripts/test`
//! installs them. Without them this test fails: it never skips.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::*;
use secrecy::ExposeSecret;
use ukey_protocol::*;

#[test]
fn vectors_verify_and_open_with_independent_implementations() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests");
    let output = Command::new("python3")
        .arg(dir.join("independent/check_vectors.py"))
        .arg(vectors_dir())
        .arg(dir.join("independent"))
        .output()
        .unwrap_or_else(|e| panic!("python3 is needed for the independent check: {e}"));
    let stdout = String::from_utf8(output.stdout).unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "independent check failed (needs python3 with jwcrypto and cryptography >= 48; \
         scripts/test installs them):\n{stdout}\n{stderr}"
    );
    for expected in [
        "ok: job-new.json: ES256 JWS verified by jwcrypto",
        "ok: cancel.json: RS256 JWS verified by jwcrypto",
        "ok: certs-rejected.json: PS256 JWS verified by jwcrypto",
        "ok: job-unlock.json: HPKE so_pin opened by cryptography",
    ] {
        assert!(
            stdout.contains(expected),
            "missing {expected:?} in:\n{stdout}"
        );
    }

    // The other direction: what `cryptography` sealed to the platform's key opens here.
    let sealed = stdout
        .lines()
        .find_map(|l| l.strip_prefix("sealed: "))
        .expect("no sealed PIN printed");
    let sealed: SealedSecret = serde_json::from_str(sealed).unwrap();
    let context = SealContext::for_job(&JobId::new("J-py").unwrap(), SealPurpose::UserPin);
    let pin = sealed.unseal_pin(&platform_unseal_key(), &context).unwrap();
    assert_eq!(pin.expose_secret(), "275103");
}
