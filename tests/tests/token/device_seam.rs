//! A whole token's production through the device seam (`ukey_agent::device`), as the daemon
//! drives it: the library loaded by interface as an `Arc<dyn DeviceLibrary>`, the token
//! opened as a `Box<dyn Device>` on its worker thread, nothing PKCS#11 in sight. The same test
//! on SoftHSM2 and on hsm-sim; the result is checked from outside (pkcs11-tool, openssl) and
//! by the desk's classification of what the seam observes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::sim_common;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use der::{Decode, Encode};
use p256::ecdsa::{DerSignature, SigningKey};
use p256::elliptic_curve::Generate;
use sim_common::SimRack;
use ukey_agent::certs::{self, Expected, TrustAnchors, ValidityPolicy, VerifiedCertificate};
use ukey_agent::desk::classify;
use ukey_agent::device::{self, Authorization, Device, DeviceLibrary, Interface, TokenError};
use ukey_agent::token::SecretString;
use ukey_agent::worker::TokenWorker;
use ukey_protocol::inventory::TokenState;
use ukey_protocol::profile::{SubjectData, UkeyProfile};
use ukey_protocol::{KeyAlgorithm, KeyLabel};
use ukey_tests::{SoftHsm, require_tool};
use x509_cert::Certificate;
use x509_cert::builder::profile::cabf::Root;
use x509_cert::builder::{Builder, CertificateBuilder};
use x509_cert::name::Name;
use x509_cert::serial_number::SerialNumber;
use x509_cert::spki::{EncodePublicKey, SubjectPublicKeyInfoOwned};
use x509_cert::time::Validity;

const SO_PIN: &str = "so-pin-5521";
const USER_PIN: &str = "user-pin-9034";
const LABEL: &str = "UKEY seam-0001";

/// The library's path and the environment outside tools need to reach the same tokens.
struct Store {
    module: PathBuf,
    env: Vec<(String, OsString)>,
}

#[test]
fn softhsm_token_is_produced_through_the_seam() {
    let hsm = SoftHsm::new();
    hsm.activate();
    let (key, value) = hsm.env();
    produce_and_check(&Store {
        module: hsm.module(),
        env: vec![(key.to_string(), value.into_os_string())],
    });
}

#[test]
fn sim_token_is_produced_through_the_seam() {
    let sim = SimRack::new(1);
    sim.insert(0);
    select_rack(sim.dir.path());
    produce_and_check(&Store {
        module: ukey_tests::hsm_sim_module(),
        env: vec![("HSM_SIM_DIR".to_string(), sim.dir.path().into())],
    });
}

/// Points hsm-sim's module, when this process loads it, at the rack in `dir`.
#[allow(unsafe_code)]
fn select_rack(dir: &Path) {
    // SAFETY: called at the start of a test, before the module is loaded and before the test
    // starts any thread; nextest runs each test in its own process.
    unsafe { std::env::set_var("HSM_SIM_DIR", dir) };
}

fn pin(s: &str) -> SecretString {
    SecretString::from(s.to_string())
}

fn subject_data() -> SubjectData {
    SubjectData {
        company_name: "宁波示例招标科技有限公司".into(),
        credit_code: "91330106MA2B3C4D5E".into(),
        legal_representative: "王五".into(),
    }
}

fn produce_and_check(store: &Store) {
    let library: Arc<dyn DeviceLibrary> = device::load(Interface::Pkcs11, &store.module).unwrap();
    let blank = library
        .survey()
        .unwrap()
        .tokens
        .into_iter()
        .find(|t| t.is_blank())
        .expect("a blank token");
    // The desk classifies a blank token as blank without opening it.
    let seen = library.observe(blank.clone(), false).unwrap();
    assert_eq!(
        classify(&seen, SystemTime::now(), Duration::ZERO),
        TokenState::Blank
    );

    let device: Box<dyn Device> = library.open(&blank).unwrap();
    let ca = TestCa::new();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (serial, csrs) = rt.block_on(async {
        let worker: TokenWorker = TokenWorker::spawn(device).unwrap();
        // initialize → generate-keys → request-certificates, as the steps do.
        let (serial, keys, csrs) = worker
            .call(|device| {
                let present = device.describe()?;
                device.initialize(
                    &present,
                    LABEL,
                    &pin(SO_PIN),
                    &pin(USER_PIN),
                    &Authorization::BlankOnly,
                )?;
                let after = device.describe()?;
                assert!(!after.is_blank() && after.flags.user_pin_initialized);
                assert_eq!(after.label, LABEL);
                // Invariant 2 holds through the seam: an initialized token is not blank.
                let again = device
                    .initialize(
                        &after,
                        "other",
                        &pin(SO_PIN),
                        &pin(USER_PIN),
                        &Authorization::BlankOnly,
                    )
                    .unwrap_err();
                assert!(matches!(again, TokenError::NotBlank { .. }), "{again}");
                device.login_user(&pin(USER_PIN))?;
                let mut keys = Vec::new();
                let mut csrs = Vec::new();
                for label in KeyLabel::ALL {
                    let (leftovers, key) = device.replace_key_pair(label, KeyAlgorithm::P256)?;
                    assert_eq!(leftovers, 0);
                    assert_eq!(device.public_key(label)?, key);
                    let subject = subject_data().subject(label).unwrap();
                    csrs.push((label, device.sign_csr(label, &subject)?));
                    keys.push((label, key));
                }
                assert_eq!(device.key_pairs()?, KeyLabel::ALL.to_vec());
                Ok((device.serial().map(str::to_string), keys, csrs))
            })
            .await
            .unwrap();
        let serial = serial.expect("a serial after initialization");
        assert_eq!(worker.serial().as_deref(), Some(serial.as_str()));

        // The platform's part: certificates for the keys, checked as the agent checks them.
        let verified: Vec<VerifiedCertificate> = keys
            .iter()
            .enumerate()
            .map(|(i, (label, key))| {
                let der = ca.issue(*label, key, 10 + i as u32);
                ca.verify(*label, &der, key).unwrap()
            })
            .collect();

        // install → activate.
        let tests = worker
            .call(move |device| {
                assert_eq!(device.install_certificates(&verified)?, 3);
                assert_eq!(device.install_certificates(&verified)?, 0, "idempotent");
                let tests = device.self_test(&KeyLabel::ALL)?;
                device.logout()?;
                for cert in &verified {
                    assert_eq!(
                        device.certificate(cert.label())?.as_deref(),
                        Some(cert.der())
                    );
                }
                Ok(tests)
            })
            .await
            .unwrap();
        assert_eq!(tests.len(), 3);
        assert!(tests.iter().all(|t| t.used_certificate), "{tests:?}");
        worker.close().await;
        (serial, csrs)
    });

    // What the desk sees now: an active token of ours.
    let present = library
        .find_serial(&serial)
        .unwrap()
        .expect("still present");
    let seen = library.observe(present, false).unwrap();
    assert_eq!(seen.keys, KeyLabel::ALL.to_vec());
    assert_eq!(seen.certificates.len(), 3);
    assert_eq!(
        classify(&seen, SystemTime::now(), Duration::from_secs(86_400)),
        TokenState::Active
    );

    // From outside: every CSR verifies, the token holds three protected private keys and
    // three certificates that chain to the CA.
    let dir = tempfile::tempdir().unwrap();
    for (label, csr) in &csrs {
        let path = dir.path().join(format!("{label}.csr"));
        std::fs::write(&path, csr).unwrap();
        let out = run(
            store,
            "openssl",
            &[
                "req",
                "-inform",
                "DER",
                "-in",
                path.to_str().unwrap(),
                "-verify",
                "-noout",
            ],
        );
        assert!(out.contains("verify OK"), "{label}: {out}");
    }
    let module = store.module.to_str().unwrap();
    let listing = run(
        store,
        "pkcs11-tool",
        &[
            "--module",
            module,
            "--token-label",
            LABEL,
            "--login",
            "--pin",
            USER_PIN,
            "--list-objects",
        ],
    );
    assert_eq!(
        listing.matches("Private Key Object").count(),
        3,
        "{listing}"
    );
    assert_eq!(
        listing.matches("Certificate Object").count(),
        3,
        "{listing}"
    );
    for block in listing.split("Private Key Object").skip(1) {
        let access = block
            .lines()
            .find(|l| l.trim_start().starts_with("Access:"))
            .unwrap_or("");
        for flag in [
            "sensitive",
            "always sensitive",
            "never extractable",
            "local",
        ] {
            assert!(access.contains(flag), "private key lacks {flag}: {access}");
        }
    }
    let ca_der = dir.path().join("ca.der");
    std::fs::write(&ca_der, ca.der()).unwrap();
    let ca_pem = dir.path().join("ca.pem");
    run(
        store,
        "openssl",
        &[
            "x509",
            "-inform",
            "DER",
            "-in",
            ca_der.to_str().unwrap(),
            "-out",
            ca_pem.to_str().unwrap(),
        ],
    );
    for label in KeyLabel::ALL {
        let der = dir.path().join(format!("{label}.der"));
        run(
            store,
            "pkcs11-tool",
            &[
                "--module",
                module,
                "--token-label",
                LABEL,
                "--read-object",
                "--type",
                "cert",
                "--label",
                label.as_str(),
                "--output-file",
                der.to_str().unwrap(),
            ],
        );
        let pem = dir.path().join(format!("{label}.pem"));
        run(
            store,
            "openssl",
            &[
                "x509",
                "-inform",
                "DER",
                "-in",
                der.to_str().unwrap(),
                "-out",
                pem.to_str().unwrap(),
            ],
        );
        let out = run(
            store,
            "openssl",
            &[
                "verify",
                "-CAfile",
                ca_pem.to_str().unwrap(),
                pem.to_str().unwrap(),
            ],
        );
        assert!(out.contains(": OK"), "{label}: {out}");
    }
}

/// Runs an outside tool with the store's environment; it must succeed. Its output (stdout and
/// stderr).
fn run(store: &Store, program: &str, args: &[&str]) -> String {
    let mut cmd = Command::new(require_tool(program));
    cmd.args(args);
    for (k, v) in &store.env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{program} {args:?} failed: {text}");
    text
}

/// A throwaway P-256 CA.
struct TestCa {
    key: SigningKey,
    cert: Certificate,
}

impl TestCa {
    fn new() -> TestCa {
        let key = SigningKey::generate();
        let subject: Name = "CN=Seam Test CA,O=Test CA,C=CN".parse().unwrap();
        let spki = SubjectPublicKeyInfoOwned::from_der(
            key.verifying_key().to_public_key_der().unwrap().as_bytes(),
        )
        .unwrap();
        let builder = CertificateBuilder::new(
            Root::new(false, subject).unwrap(),
            SerialNumber::from(1u32),
            Validity::from_now(Duration::from_secs(3650 * 86_400)).unwrap(),
            spki,
        )
        .unwrap();
        let cert = builder.build::<_, DerSignature>(&key).unwrap();
        TestCa { key, cert }
    }

    fn der(&self) -> Vec<u8> {
        self.cert.to_der().unwrap()
    }

    fn issue(&self, label: KeyLabel, spki: &SubjectPublicKeyInfoOwned, serial: u32) -> Vec<u8> {
        let algorithm = certs::key_algorithm(spki).unwrap();
        let profile = UkeyProfile::new(
            label,
            algorithm,
            &subject_data(),
            self.cert.tbs_certificate().subject().clone(),
        )
        .unwrap();
        CertificateBuilder::new(
            profile,
            SerialNumber::from(serial),
            Validity::from_now(Duration::from_secs(365 * 86_400)).unwrap(),
            spki.clone(),
        )
        .unwrap()
        .build::<_, DerSignature>(&self.key)
        .unwrap()
        .to_der()
        .unwrap()
    }

    fn verify(
        &self,
        label: KeyLabel,
        der: &[u8],
        token_key: &SubjectPublicKeyInfoOwned,
    ) -> Result<VerifiedCertificate, certs::CertError> {
        let data = subject_data();
        let anchors = TrustAnchors::from_der([self.der()]).unwrap();
        certs::verify_certificate(
            der,
            &[],
            &Expected {
                label,
                token_key,
                subject: &data,
                validity_days: 365,
            },
            &anchors,
            &ValidityPolicy::default(),
            SystemTime::now(),
        )
    }
}
