//! The agent's token layer (`ukey_agent::token`, `ukey_agent::worker`) against real PKCS#11
//! modules: the same suite on SoftHSM2 and on hsm-sim, then what only hsm-sim can do.
//!
//! - [`suite`]: the module-independent checks. Each takes a [`suite::Store`] (the module path
//!   and the environment outside tools need) and finds its one blank token by scanning, so it
//!   does not care that a blank hsm-sim token already has a serial and a blank SoftHSM2 slot
//!   has none. [`on_both!`] makes one `#[test]` per check and module: `softhsm::…`, `sim::…`.
//! - [`sim_only`]: PIN lockout (user and SO), a token pulled in the middle of a slow key
//!   generation, a token plugged in while [`Module::wait_for_serial`] waits, and workers on
//!   four tokens at once.
//!
//! Each test gets a fresh store (SoftHSM2 folder or hsm-sim rack) that is selected through
//! the environment before the module loads; nextest runs one test per process.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::sim_common;

use std::path::Path;

use sim_common::SimRack;
use ukey_tests::SoftHsm;

/// A fresh SoftHSM2 store with one blank slot, selected for this process.
fn softhsm() -> (SoftHsm, suite::Store) {
    let hsm = SoftHsm::new();
    hsm.activate();
    let (key, value) = hsm.env();
    let store = suite::Store {
        module: hsm.module(),
        env: vec![(key.to_string(), value.into_os_string())],
    };
    (hsm, store)
}

/// Points hsm-sim's module, when this process loads it, at the rack in `dir`.
#[allow(unsafe_code)]
fn select_rack(dir: &Path) {
    // SAFETY: called at the start of a test, before the module is loaded and before the test
    // starts any thread; nextest runs each test in its own process, so no other thread reads
    // the environment meanwhile.
    unsafe { std::env::set_var("HSM_SIM_DIR", dir) };
}

/// A fresh hsm-sim rack of `slots` empty slots, selected for this process.
fn sim_rack(slots: usize) -> (SimRack, suite::Store) {
    let sim = SimRack::new(slots);
    select_rack(sim.dir.path());
    let store = suite::Store {
        module: ukey_tests::hsm_sim_module(),
        env: vec![("HSM_SIM_DIR".to_string(), sim.dir.path().into())],
    };
    (sim, store)
}

/// A fresh hsm-sim rack with one blank token in slot 0 (the suite's counterpart of
/// [`softhsm`]).
fn sim() -> (SimRack, suite::Store) {
    let (sim, store) = sim_rack(1);
    sim.insert(0);
    (sim, store)
}

/// One `#[test]` per suite check on each module: `softhsm::<check>` and `sim::<check>`.
macro_rules! on_both {
    ($($check:ident),* $(,)?) => {
        mod softhsm {
            $(
                #[test]
                fn $check() {
                    let (_hsm, store) = super::softhsm();
                    super::suite::$check(&store);
                }
            )*
        }
        mod sim {
            $(
                #[test]
                fn $check() {
                    let (_sim, store) = super::sim();
                    super::suite::$check(&store);
                }
            )*
        }
    };
}

on_both!(
    blank_token_is_detected_initialized_and_guarded,
    p256_keys_csrs_certificates_and_self_test,
    rsa2048_keys_sign_decrypt_and_csr,
    sm2_is_refused_by_name_and_destroys_nothing,
    token_found_by_serial_after_a_new_initialize,
    wrong_pin_is_typed,
    worker_serves_calls_and_survives_a_panic,
    remembered_handles_never_outlive_what_they_name,
    self_test_fails_a_key_that_does_not_match_its_public_key,
    renewal_of_an_untouched_token_checks_and_proves_its_keys,
    renewal_refuses_a_planted_public_key,
    renewal_refuses_a_public_key_its_certificate_does_not_certify,
    renewal_refuses_a_second_or_missing_certificate,
    renewal_proof_refuses_a_private_key_that_is_not_the_pair,
);

/// The module-independent checks.
mod suite {
    use std::ffi::OsString;
    use std::path::{Path, PathBuf};
    use std::process::Command;
    use std::time::{Duration, SystemTime};

    use der::{Decode, Encode};
    use p256::ecdsa::{DerSignature, SigningKey};
    use p256::elliptic_curve::Generate;
    use ukey_agent::certs::{self, Expected, TrustAnchors, ValidityPolicy, VerifiedCertificate};
    use ukey_agent::token::{
        Authorization, Module, ObjectKind, PinOwner, SecretString, Token, TokenError, TriesLeft,
    };
    use ukey_agent::worker::TokenWorker;
    use ukey_protocol::profile::{SubjectData, UkeyProfile};
    use ukey_protocol::{KeyAlgorithm, KeyLabel};
    use x509_cert::Certificate;
    use x509_cert::builder::profile::cabf::Root;
    use x509_cert::builder::{Builder, CertificateBuilder};
    use x509_cert::name::Name;
    use x509_cert::serial_number::SerialNumber;
    use x509_cert::spki::{EncodePublicKey, SubjectPublicKeyInfoOwned};
    use x509_cert::time::Validity;

    /// How to reach the token store: the module, and the environment outside tools need.
    pub struct Store {
        /// The PKCS#11 module.
        pub module: PathBuf,
        /// Environment for child processes (`SOFTHSM2_CONF`, `HSM_SIM_DIR`, …).
        pub env: Vec<(String, OsString)>,
    }

    pub const SO_PIN: &str = "so-pin-8812";
    pub const USER_PIN: &str = "user-pin-4471";

    pub fn pin(s: &str) -> SecretString {
        SecretString::from(s.to_string())
    }

    pub fn subject_data() -> SubjectData {
        SubjectData {
            company_name: "杭州示例招标科技有限公司".into(),
            credit_code: "91330106MA2B3C4D5E".into(),
            legal_representative: "李四".into(),
        }
    }

    /// Loads the module and initializes the one blank token, with the user PIN set.
    pub fn blank_to_ready(store: &Store) -> (Module, Token) {
        let module = Module::load(&store.module).unwrap();
        let blank = module
            .scan()
            .unwrap()
            .into_iter()
            .find(|t| t.is_blank())
            .expect("a blank token");
        let mut token = Token::at(&module, &blank).unwrap();
        token
            .init_token(&pin(SO_PIN), "ukey-test", &Authorization::BlankOnly)
            .unwrap();
        token.init_user_pin(&pin(SO_PIN), &pin(USER_PIN)).unwrap();
        (module, token)
    }

    fn run(store: &Store, program: &str, args: &[&str], stdin_file: Option<&Path>) -> String {
        ukey_tests::require_tool(program);
        let mut cmd = Command::new(program);
        cmd.args(args);
        for (k, v) in &store.env {
            cmd.env(k, v);
        }
        if let Some(f) = stdin_file {
            cmd.stdin(std::fs::File::open(f).unwrap());
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
    pub struct TestCa {
        key: SigningKey,
        cert: Certificate,
    }

    impl TestCa {
        pub fn new() -> TestCa {
            let key = SigningKey::generate();
            let subject: Name = "CN=Test Entity CA,O=Test CA,C=CN".parse().unwrap();
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

        pub fn der(&self) -> Vec<u8> {
            self.cert.to_der().unwrap()
        }

        /// Issues `label`'s certificate for `spki` to the profile.
        pub fn issue(
            &self,
            label: KeyLabel,
            spki: &SubjectPublicKeyInfoOwned,
            serial: u32,
        ) -> Vec<u8> {
            let algorithm = certs::key_algorithm(spki).unwrap();
            let profile = UkeyProfile::new(
                label,
                algorithm,
                &subject_data(),
                self.cert.tbs_certificate().subject().clone(),
            )
            .unwrap();
            let builder = CertificateBuilder::new(
                profile,
                SerialNumber::from(serial),
                Validity::from_now(Duration::from_secs(365 * 86_400)).unwrap(),
                spki.clone(),
            )
            .unwrap();
            builder
                .build::<_, DerSignature>(&self.key)
                .unwrap()
                .to_der()
                .unwrap()
        }

        pub fn verify(
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

    /// `openssl req -verify` accepts the CSR; returns openssl's subject line (UTF-8).
    fn openssl_verify_csr(store: &Store, csr_der: &[u8]) -> String {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("req.der");
        std::fs::write(&path, csr_der).unwrap();
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
                "-subject",
                "-nameopt",
                "utf8,sep_comma_plus,sname,-esc_msb",
            ],
            None,
        );
        assert!(
            out.contains("verify OK"),
            "openssl did not verify the CSR: {out}"
        );
        out
    }

    pub fn blank_token_is_detected_initialized_and_guarded(store: &Store) {
        let module = Module::load(&store.module).unwrap();
        let tokens = module.scan().unwrap();
        let blank: Vec<_> = tokens.iter().filter(|t| t.is_blank()).collect();
        assert_eq!(blank.len(), 1, "one blank token expected: {tokens:?}");
        assert!(!blank[0].flags.user_pin_initialized);

        // A blank hsm-sim token (like a real Ukey) has its serial already; a blank SoftHSM2
        // slot gets one from C_InitToken. Either way the serial is the token's identity.
        let blank_serial = Some(blank[0].serial.clone()).filter(|s| !s.is_empty());
        let mut token = Token::at(&module, blank[0]).unwrap();
        assert_eq!(token.serial(), blank_serial.as_deref());
        if let Some(serial) = &blank_serial {
            let found = module
                .find_by_serial(serial)
                .unwrap()
                .expect("blank by serial");
            assert!(found.is_blank());
            let err = Token::open(&module, serial)
                .unwrap()
                .login_user(&pin(USER_PIN))
                .unwrap_err();
            assert!(matches!(err, TokenError::Blank { .. }), "{err}");
        }
        token
            .init_token(&pin(SO_PIN), "ukey-test", &Authorization::BlankOnly)
            .unwrap();
        let serial = token.serial().expect("serial after init").to_string();
        if let Some(before) = &blank_serial {
            assert_eq!(&serial, before, "initialization changed the serial");
        }
        let info = token.info().unwrap();
        assert!(info.flags.initialized && !info.flags.user_pin_initialized);
        assert_eq!(info.label, "ukey-test");
        assert_eq!(info.serial, serial);
        assert_eq!(info.serial, info.serial.trim());

        token.init_user_pin(&pin(SO_PIN), &pin(USER_PIN)).unwrap();
        assert!(token.info().unwrap().flags.user_pin_initialized);
        // A second "first" user PIN is refused: unlocking is another call.
        assert!(matches!(
            token.init_user_pin(&pin(SO_PIN), &pin(USER_PIN)),
            Err(TokenError::InvalidArgument { .. })
        ));

        token.login_user(&pin(USER_PIN)).unwrap();
        token
            .generate_key_pair(KeyLabel::SealOfficial, KeyAlgorithm::P256)
            .unwrap();
        token.logout().unwrap();

        // Invariant 2: no C_InitToken on an initialized token without a job naming it.
        let err = token
            .init_token(&pin(SO_PIN), "wipe", &Authorization::BlankOnly)
            .unwrap_err();
        assert!(matches!(err, TokenError::NotBlank { .. }), "{err}");
        let err = token
            .init_token(
                &pin(SO_PIN),
                "wipe",
                &Authorization::NamedByJob {
                    serial: "0000000000000000".into(),
                },
            )
            .unwrap_err();
        assert!(matches!(err, TokenError::WrongToken { .. }), "{err}");
        // Nothing was wiped.
        token.login_user(&pin(USER_PIN)).unwrap();
        assert_eq!(
            token
                .objects()
                .unwrap()
                .iter()
                .filter(|o| o.key_label() == Some(KeyLabel::SealOfficial))
                .count(),
            2
        );
        token.logout().unwrap();

        // A job naming this serial may re-initialize it (wiping it).
        token
            .init_token(
                &pin(SO_PIN),
                "rekeyed",
                &Authorization::NamedByJob {
                    serial: serial.clone(),
                },
            )
            .unwrap();
        assert_eq!(token.info().unwrap().label, "rekeyed");
        assert_eq!(token.serial(), Some(serial.as_str()));
        drop(token);
        module.finalize().unwrap();
    }

    pub fn p256_keys_csrs_certificates_and_self_test(store: &Store) {
        let (_module, token) = blank_to_ready(store);
        token.login_user(&pin(USER_PIN)).unwrap();
        assert_eq!(token.logged_in(), Some(PinOwner::User));

        let mut keys = Vec::new();
        for label in KeyLabel::ALL {
            let spki = token.generate_key_pair(label, KeyAlgorithm::P256).unwrap();
            assert_eq!(certs::key_algorithm(&spki), Some(KeyAlgorithm::P256));
            assert_eq!(token.public_key(label).unwrap(), spki);
            token.check_key_attributes(label).unwrap();
            keys.push((label, spki));
        }
        // Never two keys with one label.
        let err = token
            .generate_key_pair(KeyLabel::SealLegal, KeyAlgorithm::P256)
            .unwrap_err();
        assert!(matches!(err, TokenError::ObjectExists { .. }), "{err}");

        let objects = token.objects().unwrap();
        assert_eq!(objects.len(), 6, "{objects:?}");
        for label in KeyLabel::ALL {
            for kind in [ObjectKind::PrivateKey, ObjectKind::PublicKey] {
                assert!(
                    objects.iter().any(|o| o.kind == kind
                        && o.key_label() == Some(label)
                        && o.id == vec![label.key_id()]),
                    "{kind:?} {label} missing: {objects:?}"
                );
            }
        }

        // One CSR per label, signed on the token, checked by openssl.
        let data = subject_data();
        for (label, spki) in &keys {
            let subject = data.subject(*label).unwrap();
            let csr = token.build_csr(*label, &subject).unwrap();
            let parsed = x509_cert::request::CertReq::from_der(&csr).unwrap();
            assert_eq!(&parsed.info.public_key, spki);
            let out = openssl_verify_csr(store, &csr);
            let cn = match label {
                KeyLabel::SealLegal => "李四",
                _ => "杭州示例招标科技有限公司",
            };
            assert!(out.contains(&format!("CN={cn}")), "{label}: {out}");
            assert!(out.contains("O=杭州示例招标科技有限公司"), "{out}");
            assert!(out.contains("C=CN"), "{out}");
            assert!(out.contains("91330106MA2B3C4D5E"), "{out}");
        }

        // Certificates: issued, verified, installed, read back; a re-install writes nothing.
        let ca = TestCa::new();
        for (i, (label, spki)) in keys.iter().enumerate() {
            let der = ca.issue(*label, spki, 100 + i as u32);
            let verified = ca.verify(*label, &der, spki).unwrap();
            assert!(token.install_certificate(&verified).unwrap());
            assert!(!token.install_certificate(&verified).unwrap());
            assert_eq!(token.certificate(*label).unwrap().unwrap(), der);
            assert_eq!(token.certificates(*label).unwrap().len(), 1);
        }
        // All three with one search: the same as label by label.
        let installed = token.installed_certificates().unwrap();
        assert_eq!(
            installed.iter().map(|(l, _)| *l).collect::<Vec<_>>(),
            KeyLabel::ALL.to_vec()
        );
        for (label, der) in &installed {
            assert_eq!(token.certificate(*label).unwrap().as_ref(), Some(der));
        }
        // A certificate for another label's key is refused before anything is written.
        let wrong = ca.issue(KeyLabel::SealOfficial, &keys[1].1, 999);
        let err = ca
            .verify(KeyLabel::SealOfficial, &wrong, &keys[0].1)
            .unwrap_err();
        assert!(
            matches!(err, certs::CertError::PublicKeyMismatch { .. }),
            "{err}"
        );

        let report = token.self_test(&KeyLabel::ALL).unwrap();
        assert_eq!(report.len(), 3);
        assert!(report.iter().all(|r| r.used_certificate));
        assert_eq!(report[0].mechanism, "CKM_ECDSA");
        assert_eq!(report[2].mechanism, "CKM_ECDH1_DERIVE");
        token.logout().unwrap();

        // Public keys and certificates read without a login.
        assert_eq!(token.public_key(KeyLabel::Encryption).unwrap(), keys[2].1);
        assert!(token.certificate(KeyLabel::SealLegal).unwrap().is_some());

        // From outside: three private keys, sensitive and never extractable; three certificates.
        drop(token);
        let out = run(
            store,
            "pkcs11-tool",
            &[
                "--module",
                store.module.to_str().unwrap(),
                "--login",
                "--pin",
                USER_PIN,
                "--list-objects",
            ],
            None,
        );
        let privates: Vec<&str> = out
            .split("Private Key Object")
            .skip(1)
            .map(|s| s.split("Object;").next().unwrap_or(s))
            .collect();
        assert_eq!(privates.len(), 3, "{out}");
        let line = |block: &str, key: &str| -> Vec<String> {
            block
                .lines()
                .find_map(|l| l.trim().strip_prefix(key))
                .unwrap_or_else(|| panic!("no {key} line in {block}"))
                .split(',')
                .map(|s| s.trim().to_string())
                .collect()
        };
        for block in privates {
            let access = line(block, "Access:");
            for required in [
                "sensitive",
                "always sensitive",
                "never extractable",
                "local",
            ] {
                assert!(access.iter().any(|a| a == required), "{required}: {block}");
            }
            assert!(!access.iter().any(|a| a == "extractable"), "{block}");
            let usage = line(block, "Usage:");
            if block.contains("label:      seal-") {
                assert_eq!(usage, vec!["sign".to_string()], "{block}");
            } else {
                assert!(usage.iter().any(|u| u == "derive"), "{block}");
                assert!(!usage.iter().any(|u| u == "decrypt"), "{block}");
            }
        }
        assert_eq!(out.matches("Certificate Object").count(), 3, "{out}");
        for label in KeyLabel::ALL {
            assert!(out.contains(&format!("label:      {label}")), "{out}");
        }
    }

    pub fn rsa2048_keys_sign_decrypt_and_csr(store: &Store) {
        let (_module, token) = blank_to_ready(store);
        token.login_user(&pin(USER_PIN)).unwrap();
        let seal = token
            .generate_key_pair(KeyLabel::SealOfficial, KeyAlgorithm::Rsa2048)
            .unwrap();
        let enc = token
            .generate_key_pair(KeyLabel::Encryption, KeyAlgorithm::Rsa2048)
            .unwrap();
        assert_eq!(certs::key_algorithm(&seal), Some(KeyAlgorithm::Rsa2048));
        assert_eq!(certs::key_algorithm(&enc), Some(KeyAlgorithm::Rsa2048));
        token.check_key_attributes(KeyLabel::Encryption).unwrap();

        let subject = subject_data().subject(KeyLabel::SealOfficial).unwrap();
        let csr = token.build_csr(KeyLabel::SealOfficial, &subject).unwrap();
        let out = openssl_verify_csr(store, &csr);
        assert!(out.contains("CN=杭州示例招标科技有限公司"), "{out}");

        let report = token
            .self_test(&[KeyLabel::SealOfficial, KeyLabel::Encryption])
            .unwrap();
        assert_eq!(report[0].mechanism, "CKM_RSA_PKCS");
        assert!(
            report[1].mechanism.starts_with("CKM_RSA_PKCS"),
            "{:?}",
            report[1]
        );
        assert!(!report[1].used_certificate);
        eprintln!("encryption self-test used {}", report[1].mechanism);

        // The self-test of a key that is not there names it.
        let err = token.self_test(&[KeyLabel::SealLegal]).unwrap_err();
        assert!(matches!(err, TokenError::ObjectMissing { .. }), "{err}");

        assert_eq!(token.destroy_objects(KeyLabel::Encryption).unwrap(), 2);
        assert!(matches!(
            token.public_key(KeyLabel::Encryption),
            Err(TokenError::ObjectMissing { .. })
        ));
    }

    /// PKCS#11 has no standard SM2 mechanism: an SM2 key pair is refused with a typed error
    /// that names SM2, before anything is generated or (when replacing) destroyed.
    pub fn sm2_is_refused_by_name_and_destroys_nothing(store: &Store) {
        let (_module, token) = blank_to_ready(store);
        token.login_user(&pin(USER_PIN)).unwrap();
        let err = token
            .generate_key_pair(KeyLabel::SealOfficial, KeyAlgorithm::Sm2)
            .unwrap_err();
        assert!(
            matches!(err, TokenError::MechanismUnsupported { mechanism, .. } if mechanism.contains("SM2")),
            "{err}"
        );
        assert!(matches!(
            token.public_key(KeyLabel::SealOfficial),
            Err(TokenError::ObjectMissing { .. })
        ));
        let p256 = token
            .generate_key_pair(KeyLabel::SealLegal, KeyAlgorithm::P256)
            .unwrap();
        let err = token
            .replace_key_pair(KeyLabel::SealLegal, KeyAlgorithm::Sm2)
            .unwrap_err();
        assert!(
            matches!(err, TokenError::MechanismUnsupported { .. }),
            "{err}"
        );
        assert_eq!(token.public_key(KeyLabel::SealLegal).unwrap(), p256);
    }

    pub fn token_found_by_serial_after_a_new_initialize(store: &Store) {
        let (module, token) = blank_to_ready(store);
        token.login_user(&pin(USER_PIN)).unwrap();
        let spki = token
            .generate_key_pair(KeyLabel::SealLegal, KeyAlgorithm::P256)
            .unwrap();
        let serial = token.serial().unwrap().to_string();
        drop(token);
        module.finalize().unwrap();

        let module = Module::load(&store.module).unwrap();
        let found = module
            .find_by_serial(&serial)
            .unwrap()
            .expect("found again");
        assert!(found.flags.initialized);
        let waited = module
            .wait_for_serial(&serial, Duration::from_secs(1), Duration::from_millis(10))
            .unwrap();
        assert_eq!(waited, found);
        let token = Token::open(&module, &serial).unwrap();
        assert_eq!(token.public_key(KeyLabel::SealLegal).unwrap(), spki);
        // Loading the same path again is the same, initialized module.
        let again = Module::load(&store.module).unwrap();
        assert!(again.find_by_serial(&serial).unwrap().is_some());
        // A serial nobody has is not found, and waiting for it times out.
        assert!(module.find_by_serial("NO-SUCH-SERIAL").unwrap().is_none());
        let err = module
            .wait_for_serial(
                "NO-SUCH-SERIAL",
                Duration::from_millis(50),
                Duration::from_millis(10),
            )
            .unwrap_err();
        assert!(matches!(err, TokenError::NotFound { .. }), "{err}");
    }

    pub fn wrong_pin_is_typed(store: &Store) {
        let (_module, token) = blank_to_ready(store);
        let err = token.login_user(&pin("not-the-pin")).unwrap_err();
        match err {
            TokenError::WrongPin {
                owner: PinOwner::User,
                tries_left,
                ref serial,
            } => {
                assert_eq!(serial.as_deref(), token.serial());
                // SoftHSM2 gives no hint; a real token says Low or FinalTry.
                assert!(matches!(
                    tries_left,
                    TriesLeft::Unknown | TriesLeft::Low | TriesLeft::FinalTry
                ));
            }
            other => panic!("expected WrongPin, got {other}"),
        }
        assert!(!err.to_string().contains("not-the-pin"));
        let err = token.login_so(&pin("wrong-so-pin")).unwrap_err();
        assert!(
            matches!(
                err,
                TokenError::WrongPin {
                    owner: PinOwner::SecurityOfficer,
                    ..
                }
            ),
            "{err}"
        );
        // Unlock path: the SO sets a new user PIN; the old one stops working.
        token
            .set_user_pin_as_so(&pin(SO_PIN), &pin("new-user-pin-1"))
            .unwrap();
        assert!(token.login_user(&pin(USER_PIN)).is_err());
        token.login_user(&pin("new-user-pin-1")).unwrap();
    }

    /// The CSR `token` builds for `label` carries `spki` and its signature verifies (so it
    /// was signed by the private key of that very pair).
    fn csr_is_for(store: &Store, token: &Token, label: KeyLabel, spki: &SubjectPublicKeyInfoOwned) {
        let subject = subject_data().subject(label).unwrap();
        let csr = token.build_csr(label, &subject).unwrap();
        let parsed = x509_cert::request::CertReq::from_der(&csr).unwrap();
        assert_eq!(
            &parsed.info.public_key, spki,
            "{label}: CSR for another key"
        );
        openssl_verify_csr(store, &csr);
    }

    /// A read/write session of its own on the token `serial`, as another application on the
    /// machine would open one (the library is already initialized by this process's `Module`).
    fn session_elsewhere(store: &Store, serial: &str) -> cryptoki::session::Session {
        use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
        let p = Pkcs11::new(&store.module).unwrap();
        let _ = p.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK));
        let slot = p
            .get_slots_with_token()
            .unwrap()
            .into_iter()
            .find(|s| p.get_token_info(*s).unwrap().serial_number().trim() == serial)
            .expect("the token's slot");
        p.open_rw_session(slot).unwrap()
    }

    /// Renames `label`'s key pair to another label and id through a session of its own, as
    /// another application on the machine could: the objects, and so their handles, stay.
    fn rename_key_pair_elsewhere(store: &Store, serial: &str, label: KeyLabel) {
        use cryptoki::object::Attribute;
        use cryptoki::session::UserType;
        let s = session_elsewhere(store, serial);
        // Login state is per application: already logged in through the `Token`.
        let _ = s.login(UserType::User, Some(&USER_PIN.into()));
        let found = s
            .find_objects(&[
                Attribute::Label(label.as_str().as_bytes().to_vec()),
                Attribute::Id(vec![label.key_id()]),
            ])
            .unwrap();
        assert_eq!(found.len(), 2, "{label}: a key pair expected");
        for handle in found {
            s.update_attributes(
                handle,
                &[
                    Attribute::Label(b"retired".to_vec()),
                    Attribute::Id(vec![0x7f]),
                ],
            )
            .unwrap();
        }
    }

    /// Gives the public key object named `from` the label and id of `to` (or of nothing,
    /// `None`), through a session of its own, as another application could.
    fn relabel_public_key_elsewhere(
        store: &Store,
        serial: &str,
        from: KeyLabel,
        to: Option<KeyLabel>,
    ) {
        use cryptoki::object::{Attribute, ObjectClass};
        let s = session_elsewhere(store, serial);
        let found = s
            .find_objects(&[
                Attribute::Class(ObjectClass::PUBLIC_KEY),
                Attribute::Label(from.as_str().as_bytes().to_vec()),
            ])
            .unwrap();
        assert_eq!(found.len(), 1, "{from}: one public key expected");
        let (label, id) = match to {
            Some(to) => (to.as_str().as_bytes().to_vec(), vec![to.key_id()]),
            None => (b"retired".to_vec(), vec![0x7f]),
        };
        s.update_attributes(found[0], &[Attribute::Label(label), Attribute::Id(id)])
            .unwrap();
    }

    /// The self-test's software checks catch a private key that is not its public key's
    /// pair: a signature that does not verify, an ECDH that agrees another secret.
    pub fn self_test_fails_a_key_that_does_not_match_its_public_key(store: &Store) {
        let (_module, token) = blank_to_ready(store);
        let serial = token.serial().unwrap().to_string();
        token.login_user(&pin(USER_PIN)).unwrap();
        for label in KeyLabel::ALL {
            token.generate_key_pair(label, KeyAlgorithm::P256).unwrap();
        }
        token.self_test(&KeyLabel::ALL).unwrap();
        // seal-official's private key now meets seal-legal's public key.
        relabel_public_key_elsewhere(store, &serial, KeyLabel::SealOfficial, None);
        relabel_public_key_elsewhere(
            store,
            &serial,
            KeyLabel::SealLegal,
            Some(KeyLabel::SealOfficial),
        );
        let err = token.self_test(&[KeyLabel::SealOfficial]).unwrap_err();
        assert!(
            matches!(&err, TokenError::SelfTest { label: KeyLabel::SealOfficial, reason, .. }
                if reason.contains("does not verify")),
            "{err}"
        );
        // The encryption key's private half meets that same foreign public key.
        relabel_public_key_elsewhere(store, &serial, KeyLabel::Encryption, None);
        relabel_public_key_elsewhere(
            store,
            &serial,
            KeyLabel::SealOfficial,
            Some(KeyLabel::Encryption),
        );
        let err = token.self_test(&[KeyLabel::Encryption]).unwrap_err();
        assert!(
            matches!(&err, TokenError::SelfTest { label: KeyLabel::Encryption, reason, .. }
                if reason.contains("agreed another secret")),
            "{err}"
        );
    }

    /// A `renew` job for the token `serial`, keys of `alg`.
    fn renew_job(serial: &str, alg: KeyAlgorithm) -> ukey_protocol::job::JobDocument {
        use ukey_platform_sim::{JobDraft, build_job};
        use ukey_protocol::ids::{StationId, TokenSerial};
        let draft = JobDraft::new(
            ukey_protocol::job::JobKind::Renew,
            &StationId::new("desk-1").unwrap(),
        )
        .unwrap()
        .with_algorithm(alg)
        .with_target(TokenSerial::new(serial).unwrap());
        build_job(&draft, time::OffsetDateTime::now_utc(), None).unwrap()
    }

    /// The code of a failed step.
    fn failure_code<T: std::fmt::Debug>(
        result: Result<T, ukey_agent::steps::StepFailure>,
    ) -> String {
        match result {
            Err(ukey_agent::steps::StepFailure::Failed(e)) => e.code.as_str().to_owned(),
            other => panic!("a failed step expected, got {other:?}"),
        }
    }

    /// Writes a public P-256 key object with `label`'s label and id through `s` (no login:
    /// anyone holding the token can), as an attacker would plant one.
    fn plant_public_key(
        s: &cryptoki::session::Session,
        label: KeyLabel,
        spki: &SubjectPublicKeyInfoOwned,
    ) -> cryptoki::object::ObjectHandle {
        use cryptoki::object::{Attribute, KeyType, ObjectClass};
        let point = spki.subject_public_key.raw_bytes();
        s.create_object(&[
            Attribute::Class(ObjectClass::PUBLIC_KEY),
            Attribute::KeyType(KeyType::EC),
            Attribute::Token(true),
            Attribute::Private(false),
            Attribute::Label(label.as_str().as_bytes().to_vec()),
            Attribute::Id(vec![label.key_id()]),
            Attribute::EcParams(certs::OID_P256.to_der().unwrap()),
            Attribute::EcPoint(
                der::asn1::OctetString::new(point)
                    .unwrap()
                    .to_der()
                    .unwrap(),
            ),
            Attribute::Verify(true),
        ])
        .unwrap()
    }

    /// Writes a certificate object with `label`'s label and id through `s` (no login).
    fn plant_certificate(
        s: &cryptoki::session::Session,
        label: KeyLabel,
        der: &[u8],
    ) -> cryptoki::object::ObjectHandle {
        use cryptoki::object::{Attribute, CertificateType, ObjectClass};
        let cert = Certificate::from_der(der).unwrap();
        let tbs = cert.tbs_certificate();
        s.create_object(&[
            Attribute::Class(ObjectClass::CERTIFICATE),
            Attribute::CertificateType(CertificateType::X_509),
            Attribute::Token(true),
            Attribute::Private(false),
            Attribute::Label(label.as_str().as_bytes().to_vec()),
            Attribute::Id(vec![label.key_id()]),
            Attribute::Subject(tbs.subject().to_der().unwrap()),
            Attribute::Issuer(tbs.issuer().to_der().unwrap()),
            Attribute::SerialNumber(tbs.serial_number().to_der().unwrap()),
            Attribute::Value(der.to_vec()),
        ])
        .unwrap()
    }

    /// The one object of `class` under `label` (label and id), seen through `s`.
    fn one_object(
        s: &cryptoki::session::Session,
        class: cryptoki::object::ObjectClass,
        label: KeyLabel,
    ) -> cryptoki::object::ObjectHandle {
        use cryptoki::object::Attribute;
        let found = s
            .find_objects(&[
                Attribute::Class(class),
                Attribute::Label(label.as_str().as_bytes().to_vec()),
                Attribute::Id(vec![label.key_id()]),
            ])
            .unwrap();
        assert_eq!(found.len(), 1, "{label}: one {class} expected");
        found[0]
    }

    /// Gives the object `handle` the label and id of `to`, through `s`.
    fn relabel(
        s: &cryptoki::session::Session,
        handle: cryptoki::object::ObjectHandle,
        to: KeyLabel,
    ) {
        use cryptoki::object::Attribute;
        s.update_attributes(
            handle,
            &[
                Attribute::Label(to.as_str().as_bytes().to_vec()),
                Attribute::Id(vec![to.key_id()]),
            ],
        )
        .unwrap();
    }

    /// A made token for the renewal checks: three P-256 key pairs with their certificates,
    /// nobody logged in, and a `renew` job for it.
    struct Renewable {
        _module: Module,
        token: Token,
        ca: TestCa,
        /// Per label: the public key and the installed certificate (DER).
        keys: Vec<(KeyLabel, SubjectPublicKeyInfoOwned, Vec<u8>)>,
        job: ukey_protocol::job::JobDocument,
        /// Another application's session on the token, not logged in.
        elsewhere: cryptoki::session::Session,
    }

    impl Renewable {
        fn new(store: &Store) -> Renewable {
            let (module, token) = blank_to_ready(store);
            let serial = token.serial().unwrap().to_string();
            let ca = TestCa::new();
            token.login_user(&pin(USER_PIN)).unwrap();
            let mut keys = Vec::new();
            let mut issued = Vec::new();
            for (n, label) in KeyLabel::ALL.into_iter().enumerate() {
                let spki = token.generate_key_pair(label, KeyAlgorithm::P256).unwrap();
                let der = ca.issue(label, &spki, 10 + n as u32);
                issued.push(ca.verify(label, &der, &spki).unwrap());
                keys.push((label, spki, der));
            }
            assert_eq!(token.install_certificates(&issued).unwrap(), 3);
            token.logout().unwrap();
            let job = renew_job(&serial, KeyAlgorithm::P256);
            // Untouched, the token passes every check.
            ukey_agent::steps::read_keys(&token, &job).unwrap();
            let elsewhere = session_elsewhere(store, &serial);
            Renewable {
                _module: module,
                token,
                ca,
                keys,
                job,
                elsewhere,
            }
        }

        /// The PIN-less checks refuse the token with `code`, and no renewal request is made.
        fn refused(&self, code: &str) {
            use ukey_agent::steps;
            let target = self.job.target_token_serial.clone().unwrap();
            assert_eq!(failure_code(steps::read_keys(&self.token, &self.job)), code);
            assert_eq!(
                failure_code(steps::request_renewal(&self.token, &self.job, &target)),
                code,
                "a renewal request was made"
            );
        }

        /// The checks with the user PIN refuse the token with `code` and log out.
        fn refused_with_pin(&mut self, code: &str) {
            let result =
                ukey_agent::steps::read_keys_with_pin(&mut self.token, &self.job, &pin(USER_PIN));
            assert_eq!(failure_code(result), code);
            assert_eq!(self.token.logged_in(), None, "a failed proof logs out too");
        }

        /// Logs in the user elsewhere (login state is per application: the `Token` too).
        fn login_elsewhere(&self) {
            let _ = self
                .elsewhere
                .login(cryptoki::session::UserType::User, Some(&USER_PIN.into()));
        }
    }

    /// A P-256 key nobody certified.
    fn attacker_key() -> SubjectPublicKeyInfoOwned {
        SubjectPublicKeyInfoOwned::from_der(
            SigningKey::generate()
                .verifying_key()
                .to_public_key_der()
                .unwrap()
                .as_bytes(),
        )
        .unwrap()
    }

    /// The untouched token renews: the request carries each label's public key and current
    /// certificate, and with the user PIN every key proves itself against its certificate.
    pub fn renewal_of_an_untouched_token_checks_and_proves_its_keys(store: &Store) {
        use ukey_agent::steps;
        let mut r = Renewable::new(store);
        let target = r.job.target_token_serial.clone().unwrap();
        let bundle = steps::request_renewal(&r.token, &r.job, &target).unwrap();
        assert_eq!(bundle.requests.len(), 3);
        for ((label, spki, der), request) in r.keys.iter().zip(&bundle.requests) {
            assert_eq!(request.label, *label);
            assert!(request.csr.is_none());
            assert_eq!(
                request.public_key.as_ref().unwrap().as_bytes(),
                spki.to_der().unwrap()
            );
            assert_eq!(
                request.current_certificate.as_ref().unwrap().as_bytes(),
                der.as_slice()
            );
        }
        let proven = steps::read_keys_with_pin(&mut r.token, &r.job, &pin(USER_PIN)).unwrap();
        assert_eq!(proven.len(), 3);
        assert!(proven.iter().all(|t| t.used_certificate), "{proven:?}");
        assert_eq!(r.token.logged_in(), None, "the proof logs out");
    }

    /// A second public key planted (no PIN needed) under a seal label is refused, whichever
    /// of the two the module lists first; removed again, the token renews.
    pub fn renewal_refuses_a_planted_public_key(store: &Store) {
        let r = Renewable::new(store);
        let planted = plant_public_key(&r.elsewhere, KeyLabel::SealOfficial, &attacker_key());
        r.refused("token-objects-unexpected");
        r.elsewhere.destroy_object(planted).unwrap();
        ukey_agent::steps::read_keys(&r.token, &r.job).unwrap();
    }

    /// The one public key swapped for another (no PIN needed) is not the key the current
    /// certificate certifies: refused.
    pub fn renewal_refuses_a_public_key_its_certificate_does_not_certify(store: &Store) {
        use cryptoki::object::ObjectClass;
        let r = Renewable::new(store);
        let s = &r.elsewhere;
        s.destroy_object(one_object(s, ObjectClass::PUBLIC_KEY, KeyLabel::SealLegal))
            .unwrap();
        plant_public_key(s, KeyLabel::SealLegal, &attacker_key());
        r.refused("token-key-not-certified");
    }

    /// A second certificate under a label (even one for the very key) is refused, and so is
    /// a label without one.
    pub fn renewal_refuses_a_second_or_missing_certificate(store: &Store) {
        use cryptoki::object::ObjectClass;
        let r = Renewable::new(store);
        let s = &r.elsewhere;
        let (_, spki, _) = &r.keys[2];
        let second = plant_certificate(
            s,
            KeyLabel::Encryption,
            &r.ca.issue(KeyLabel::Encryption, spki, 99),
        );
        r.refused("token-objects-unexpected");
        s.destroy_object(second).unwrap();
        s.destroy_object(one_object(
            s,
            ObjectClass::CERTIFICATE,
            KeyLabel::Encryption,
        ))
        .unwrap();
        r.refused("certificate-missing-on-token");
    }

    /// With the user PIN the keys prove themselves: the seal keys' private halves swapped
    /// (every public object still agrees) fail the self-test, and a second private key under
    /// a label is refused. Without the PIN neither can be seen.
    pub fn renewal_proof_refuses_a_private_key_that_is_not_the_pair(store: &Store) {
        use cryptoki::object::ObjectClass;
        let mut r = Renewable::new(store);
        r.login_elsewhere();
        let s = &r.elsewhere;
        let official = one_object(s, ObjectClass::PRIVATE_KEY, KeyLabel::SealOfficial);
        let legal = one_object(s, ObjectClass::PRIVATE_KEY, KeyLabel::SealLegal);
        relabel(s, official, KeyLabel::SealLegal);
        relabel(s, legal, KeyLabel::SealOfficial);
        ukey_agent::steps::read_keys(&r.token, &r.job).unwrap();
        r.refused_with_pin("self-test-failed");

        // Put back (handles of private objects die with the logout: search again), then the
        // encryption key's private half goes under seal-official too.
        r.login_elsewhere();
        let s = &r.elsewhere;
        let official = one_object(s, ObjectClass::PRIVATE_KEY, KeyLabel::SealLegal);
        let legal = one_object(s, ObjectClass::PRIVATE_KEY, KeyLabel::SealOfficial);
        relabel(s, official, KeyLabel::SealOfficial);
        relabel(s, legal, KeyLabel::SealLegal);
        let encryption = one_object(s, ObjectClass::PRIVATE_KEY, KeyLabel::Encryption);
        relabel(s, encryption, KeyLabel::SealOfficial);
        ukey_agent::steps::read_keys(&r.token, &r.job).unwrap();
        r.refused_with_pin("token-objects-unexpected");
    }

    /// Handles a `Token` remembers within its session are used only while they name what
    /// they were remembered for: a key pair destroyed, renamed or wiped by a re-initialization
    /// is searched for again, and a logout forgets the private keys.
    pub fn remembered_handles_never_outlive_what_they_name(store: &Store) {
        let (module, mut token) = blank_to_ready(store);
        let serial = token.serial().unwrap().to_string();
        token.login_user(&pin(USER_PIN)).unwrap();
        let official = token
            .generate_key_pair(KeyLabel::SealOfficial, KeyAlgorithm::P256)
            .unwrap();
        let legal = token
            .generate_key_pair(KeyLabel::SealLegal, KeyAlgorithm::P256)
            .unwrap();
        csr_is_for(store, &token, KeyLabel::SealOfficial, &official);

        // Destroyed and made again elsewhere: the remembered handles are invalid now.
        let other = Token::open(&module, &serial).unwrap();
        assert_eq!(other.destroy_objects(KeyLabel::SealOfficial).unwrap(), 2);
        let official = other
            .generate_key_pair(KeyLabel::SealOfficial, KeyAlgorithm::P256)
            .unwrap();
        assert_eq!(token.public_key(KeyLabel::SealOfficial).unwrap(), official);
        csr_is_for(store, &token, KeyLabel::SealOfficial, &official);
        token.check_key_attributes(KeyLabel::SealOfficial).unwrap();

        // Renamed elsewhere and a new pair made under the label: the remembered handles are
        // still valid, but name the old pair. Its public key must not be taken for the label's.
        csr_is_for(store, &token, KeyLabel::SealLegal, &legal);
        rename_key_pair_elsewhere(store, &serial, KeyLabel::SealLegal);
        let new_legal = other
            .generate_key_pair(KeyLabel::SealLegal, KeyAlgorithm::P256)
            .unwrap();
        assert_ne!(new_legal, legal);
        drop(other);
        assert_eq!(token.public_key(KeyLabel::SealLegal).unwrap(), new_legal);
        csr_is_for(store, &token, KeyLabel::SealLegal, &new_legal);

        // A logout forgets the private keys' handles: they are out of sight.
        token.logout().unwrap();
        for label in [KeyLabel::SealOfficial, KeyLabel::SealLegal] {
            let err = token.signer(label).unwrap_err();
            assert!(matches!(err, TokenError::ObjectMissing { .. }), "{err}");
        }
        assert_eq!(token.public_key(KeyLabel::SealOfficial).unwrap(), official);
        token.login_user(&pin(USER_PIN)).unwrap();
        csr_is_for(store, &token, KeyLabel::SealOfficial, &official);

        // Re-initialized (by the job that names it): nothing of before is reachable.
        let after = token
            .init_token(
                &pin(SO_PIN),
                "rekeyed",
                &Authorization::NamedByJob {
                    serial: serial.clone(),
                },
            )
            .unwrap();
        assert!(after.flags.initialized && !after.flags.user_pin_initialized);
        assert_eq!(after.label, "rekeyed");
        assert_eq!(after.serial, serial);
        token.init_user_pin(&pin(SO_PIN), &pin(USER_PIN)).unwrap();
        token.login_user(&pin(USER_PIN)).unwrap();
        for label in [KeyLabel::SealOfficial, KeyLabel::SealLegal] {
            let err = token.public_key(label).unwrap_err();
            assert!(matches!(err, TokenError::ObjectMissing { .. }), "{err}");
            let err = token.signer(label).unwrap_err();
            assert!(matches!(err, TokenError::ObjectMissing { .. }), "{err}");
        }
        let (destroyed, fresh) = token
            .replace_key_pair(KeyLabel::SealOfficial, KeyAlgorithm::P256)
            .unwrap();
        assert_eq!(destroyed, 0);
        assert_ne!(fresh, official);
        assert_eq!(token.public_key(KeyLabel::SealOfficial).unwrap(), fresh);
        csr_is_for(store, &token, KeyLabel::SealOfficial, &fresh);
        assert_eq!(token.objects().unwrap().len(), 2);

        // Replacing a pair destroys what is there first (its handles go with it): one pair.
        let (destroyed, again) = token
            .replace_key_pair(KeyLabel::SealOfficial, KeyAlgorithm::P256)
            .unwrap();
        assert_eq!(destroyed, 2);
        assert_ne!(again, fresh);
        assert_eq!(token.public_key(KeyLabel::SealOfficial).unwrap(), again);
        csr_is_for(store, &token, KeyLabel::SealOfficial, &again);
        assert_eq!(token.objects().unwrap().len(), 2);
        // Without the user logged in, private keys are out of sight: no replacing then.
        token.logout().unwrap();
        let err = token
            .replace_key_pair(KeyLabel::SealOfficial, KeyAlgorithm::P256)
            .unwrap_err();
        assert!(matches!(err, TokenError::InvalidArgument { .. }), "{err}");
    }

    pub fn worker_serves_calls_and_survives_a_panic(store: &Store) {
        let (_module, token) = blank_to_ready(store);
        let serial = token.serial().unwrap().to_string();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let worker = TokenWorker::spawn(token).unwrap();
            assert_eq!(worker.serial().as_deref(), Some(serial.as_str()));
            let caller = std::thread::current().id();
            let (thread, spki) = worker
                .call(move |t| {
                    t.login_user(&SecretString::from(USER_PIN.to_string()))?;
                    let spki = t.generate_key_pair(KeyLabel::SealOfficial, KeyAlgorithm::P256)?;
                    Ok((std::thread::current().id(), spki))
                })
                .await
                .unwrap();
            assert_ne!(thread, caller, "the call ran on the runtime's thread");
            // The worker times the PKCS#11 call now running (a stalled one: agent::stuck_call),
            // not the closure: between calls there is nothing to time, even mid-closure.
            assert_eq!(worker.running_for(), None);
            let (entered_tx, entered_rx) = tokio::sync::oneshot::channel::<()>();
            let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
            let held = worker.call(move |_t| {
                let _ = entered_tx.send(());
                let _ = go_rx.recv();
                Ok(())
            });
            let watch = async {
                entered_rx.await.unwrap();
                assert_eq!(worker.running_for(), None, "host code is not a token call");
                go_tx.send(()).unwrap();
            };
            let (held, ()) = tokio::join!(held, watch);
            held.unwrap();
            assert_eq!(worker.running_for(), None, "idle once the call returned");
            let err = worker
                .call(|_t| -> Result<(), TokenError> { panic!("boom in a token call") })
                .await
                .unwrap_err();
            assert!(
                matches!(err, TokenError::WorkerPanicked { ref message, .. } if message.contains("boom")),
                "{err}"
            );
            // Still serving, with the login kept.
            let again = worker
                .call(|t| t.public_key(KeyLabel::SealOfficial))
                .await
                .unwrap();
            assert_eq!(again, spki);
            worker.close().await;
        });
    }
}

/// What only hsm-sim can do: PIN lockout, pulled tokens, hot-plug, several tokens at once.
mod sim_only {
    use std::sync::{Arc, Condvar, Mutex};
    use std::time::{Duration, Instant};

    use hsm_sim::rack::fault::{Fault, FaultAction};
    use hsm_sim::rack::latency::{Op, Profile};
    use hsm_sim::rack::token::TokenSettings;
    use hsm_sim::rack::{InsertOptions, LatencyChange, Rack};
    use ukey_agent::token::{
        Authorization, Module, ObjectKind, PinOwner, Token, TokenError, TriesLeft,
    };
    use ukey_agent::worker::TokenWorker;
    use ukey_protocol::{KeyAlgorithm, KeyLabel};

    use super::suite::{SO_PIN, USER_PIN, blank_to_ready, pin};

    /// `CKR_DEVICE_ERROR`, for faults armed only to count calls (they never fire).
    const CKR_DEVICE_ERROR: u64 = 0x30;
    /// An `nth` no test reaches: the fault only counts.
    const NEVER: u32 = 1_000_000;

    /// Calls of `function` on the token `serial` since a counting fault was armed on it.
    fn calls_seen(rack: &Rack, serial: &str) -> u32 {
        rack.token(serial).unwrap().faults()[0].seen()
    }

    /// Waits (yielding, bounded) until the token `serial` has seen a call of its counted
    /// function: the synchronization point of the tests below, instead of a sleep.
    fn until_called(rack: &Rack, serial: &str, at_least: u32) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while calls_seen(rack, serial) < at_least {
            assert!(Instant::now() < deadline, "the counted call never came");
            std::thread::yield_now();
        }
    }

    /// What a PIN error says, in a form tests compare.
    #[derive(Debug, PartialEq)]
    enum PinSays {
        Wrong(PinOwner, TriesLeft),
        Locked(PinOwner),
        Other(String),
    }

    fn pin_says(e: &TokenError) -> PinSays {
        match e {
            TokenError::WrongPin {
                owner, tries_left, ..
            } => PinSays::Wrong(*owner, *tries_left),
            TokenError::PinLocked { owner, .. } => PinSays::Locked(*owner),
            other => PinSays::Other(other.to_string()),
        }
    }

    #[test]
    fn wrong_user_pin_counts_down_to_locked_and_so_unlocks() {
        let (sim, store) = super::sim();
        let (_module, token) = blank_to_ready(&store);
        let serial = token.serial().unwrap().to_string();
        // hsm-sim's default: six tries. Flags say "low" after the first wrong one and "final
        // try" when one is left; the sixth wrong PIN locks.
        for attempt in 1..=6 {
            let err = token.login_user(&pin("000000")).unwrap_err();
            let expected = match attempt {
                1..=4 => PinSays::Wrong(PinOwner::User, TriesLeft::Low),
                5 => PinSays::Wrong(PinOwner::User, TriesLeft::FinalTry),
                _ => PinSays::Locked(PinOwner::User),
            };
            assert_eq!(pin_says(&err), expected, "attempt {attempt}");
            assert_eq!(err.serial(), Some(serial.as_str()));
            assert!(token.logged_in().is_none());
        }
        let flags = token.info().unwrap().flags;
        assert!(flags.user_pin_locked, "{flags:?}");
        assert!(!flags.so_pin_locked && !flags.so_pin_count_low, "{flags:?}");
        // Locked means locked: the right PIN is refused too.
        let err = token.login_user(&pin(USER_PIN)).unwrap_err();
        assert_eq!(pin_says(&err), PinSays::Locked(PinOwner::User));

        // Unlock: the SO sets a new user PIN, which resets the counter.
        token
            .set_user_pin_as_so(&pin(SO_PIN), &pin("fresh-user-pin"))
            .unwrap();
        assert!(token.logged_in().is_none(), "SO still logged in");
        let flags = token.info().unwrap().flags;
        assert!(
            !flags.user_pin_locked && !flags.user_pin_count_low && !flags.user_pin_final_try,
            "{flags:?}"
        );
        let summary = sim.rack.list().unwrap()[0].token.clone().unwrap();
        assert_eq!(summary.user_retries, (6, 6));
        assert!(token.login_user(&pin(USER_PIN)).is_err(), "old PIN works");
        token.login_user(&pin("fresh-user-pin")).unwrap();
        assert_eq!(token.logged_in(), Some(PinOwner::User));
        token
            .generate_key_pair(KeyLabel::SealOfficial, KeyAlgorithm::P256)
            .unwrap();
        token.logout().unwrap();
        // Counting starts afresh: one wrong PIN is "low", not "final try".
        let err = token.login_user(&pin("000000")).unwrap_err();
        assert_eq!(
            pin_says(&err),
            PinSays::Wrong(PinOwner::User, TriesLeft::Low)
        );
        // A successful login clears the hint (PKCS#11: "since the last successful
        // authentication").
        token.login_user(&pin("fresh-user-pin")).unwrap();
        assert!(!token.info().unwrap().flags.user_pin_count_low);
    }

    #[test]
    fn locked_so_pin_is_reported_as_locked() {
        let (sim, store) = super::sim_rack(1);
        let serial = sim
            .rack
            .insert(
                0,
                InsertOptions {
                    settings: Some(TokenSettings {
                        so_retries: 3,
                        ..TokenSettings::default()
                    }),
                    ..Default::default()
                },
            )
            .unwrap();
        let (_module, mut token) = blank_to_ready(&store);
        // Three tries: "low" after the first wrong SO PIN, "final try" after the second, and
        // the third locks it.
        const SO: PinOwner = PinOwner::SecurityOfficer;
        let wrong = pin("wrong-so-pin");
        let says = [1, 2, 3].map(|_| pin_says(&token.login_so(&wrong).unwrap_err()));
        assert_eq!(
            says,
            [
                PinSays::Wrong(SO, TriesLeft::Low),
                PinSays::Wrong(SO, TriesLeft::FinalTry),
                PinSays::Locked(SO),
            ]
        );
        let flags = token.info().unwrap().flags;
        assert!(flags.so_pin_locked && !flags.user_pin_locked, "{flags:?}");
        // Every SO path says "locked", even with the right SO PIN.
        let err = token.login_so(&pin(SO_PIN)).unwrap_err();
        assert_eq!(pin_says(&err), PinSays::Locked(SO));
        let err = token
            .set_user_pin_as_so(&pin(SO_PIN), &pin("another-pin"))
            .unwrap_err();
        assert_eq!(pin_says(&err), PinSays::Locked(SO));
        let err = token
            .init_token(
                &pin(SO_PIN),
                "rekey",
                &Authorization::NamedByJob {
                    serial: serial.clone(),
                },
            )
            .unwrap_err();
        assert_eq!(pin_says(&err), PinSays::Locked(SO));
        assert_eq!(err.serial(), Some(serial.as_str()));
        // The user PIN is untouched.
        token.login_user(&pin(USER_PIN)).unwrap();
        assert!(!token.info().unwrap().flags.user_pin_locked);
    }

    #[test]
    fn token_pulled_during_slow_keygen_is_removed_and_comes_back_clean() {
        let (sim, store) = super::sim_rack(2);
        let serial = sim.insert(0);
        let (_module, token) = blank_to_ready(&store);
        token.login_user(&pin(USER_PIN)).unwrap();
        // Real hardware takes seconds for an RSA-2048 key pair; a fault that never fires
        // counts the calls, so the test knows when C_GenerateKeyPair has begun.
        sim.rack
            .set_latency(Some(0), LatencyChange::Profile(Profile::Realistic))
            .unwrap();
        sim.rack
            .set_fault(
                0,
                Fault::new(
                    "C_GenerateKeyPair",
                    NEVER,
                    FaultAction::Fail {
                        rv: CKR_DEVICE_ERROR,
                    },
                )
                .unwrap(),
            )
            .unwrap();
        let started = Instant::now();
        let (result, mut token) = std::thread::scope(|scope| {
            let job = scope.spawn(move || {
                let r = token.generate_key_pair(KeyLabel::SealOfficial, KeyAlgorithm::Rsa2048);
                (r, token)
            });
            until_called(&sim.rack, &serial, 1);
            assert_eq!(sim.rack.remove(0).unwrap(), serial);
            job.join().unwrap()
        });
        let err = result.unwrap_err();
        assert!(err.is_removed(), "{err}");
        assert_eq!(err.serial(), Some(serial.as_str()));
        assert!(
            err.to_string().contains("C_GenerateKeyPair"),
            "names the call: {err}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the pull did not end the wait"
        );
        // While it is out, the token says so.
        let err = token.info().unwrap_err();
        assert!(err.is_removed(), "{err}");

        // Plugged back into another port: found by serial, fresh session, no login.
        sim.reinsert(1, &serial);
        token.reconnect(Duration::from_secs(10)).unwrap();
        assert_eq!(token.slot_id(), 1);
        assert_eq!(token.serial(), Some(serial.as_str()));
        assert!(token.logged_in().is_none());
        sim.rack.clear_faults(1).unwrap();
        sim.rack
            .set_latency(Some(1), LatencyChange::Op(Op::KeygenRsa2048, 0))
            .unwrap();
        token.login_user(&pin(USER_PIN)).unwrap();
        // No half-made key pair: nothing at all on the token.
        assert_eq!(token.objects().unwrap(), vec![]);
        assert_eq!(sim.rack.token(&serial).unwrap().objects().count(), 0);
        // And the job can simply generate again.
        let spki = token
            .generate_key_pair(KeyLabel::SealOfficial, KeyAlgorithm::P256)
            .unwrap();
        assert_eq!(token.public_key(KeyLabel::SealOfficial).unwrap(), spki);
        assert_eq!(token.objects().unwrap().len(), 2);
    }

    #[test]
    fn token_pulled_between_calls_is_removed_once_and_never_mistaken() {
        let (sim, store) = super::sim_rack(1);
        let serial = sim.insert(0);
        let (module, mut token) = blank_to_ready(&store);
        token.login_user(&pin(USER_PIN)).unwrap();
        let spki = token
            .generate_key_pair(KeyLabel::SealLegal, KeyAlgorithm::P256)
            .unwrap();

        // Pulled and plugged back into the same port while idle: the session and its login
        // died with the pull. The next call says so; the one after works on a new session.
        sim.rack.remove(0).unwrap();
        sim.reinsert(0, &serial);
        let err = token.public_key(KeyLabel::SealLegal).unwrap_err();
        assert!(err.is_removed(), "{err}");
        assert!(
            token.logged_in().is_none(),
            "the login died with the session"
        );
        assert_eq!(token.public_key(KeyLabel::SealLegal).unwrap(), spki);
        let err = token.check_key_attributes(KeyLabel::SealLegal).unwrap_err();
        assert!(
            matches!(err, TokenError::ObjectMissing { .. }),
            "the private key needs a new login: {err}"
        );
        token.login_user(&pin(USER_PIN)).unwrap();
        token.check_key_attributes(KeyLabel::SealLegal).unwrap();

        // Pulled, and another (initialized) token takes its port: every call is "removed",
        // none reaches the other token, not even after the session was closed.
        sim.rack.remove(0).unwrap();
        let other = sim.insert(0);
        let mut intruder = Token::open(&module, &other).unwrap();
        intruder
            .init_token(&pin(SO_PIN), "other", &Authorization::BlankOnly)
            .unwrap();
        intruder
            .init_user_pin(&pin(SO_PIN), &pin(USER_PIN))
            .unwrap();
        drop(intruder);
        for _ in 0..2 {
            let err = token.objects().unwrap_err();
            assert!(err.is_removed(), "{err}");
            assert_eq!(err.serial(), Some(serial.as_str()));
        }
        token.close_session();
        let err = token.login_user(&pin(USER_PIN)).unwrap_err();
        assert!(err.is_removed(), "{err}");
        let err = token.public_key(KeyLabel::SealLegal).unwrap_err();
        assert!(err.is_removed(), "{err}");
        assert!(sim.rack.token(&other).unwrap().objects().next().is_none());

        // Back where it was: reconnect finds it by serial.
        sim.rack.remove(0).unwrap();
        sim.reinsert(0, &serial);
        token.reconnect(Duration::from_secs(10)).unwrap();
        assert_eq!(token.public_key(KeyLabel::SealLegal).unwrap(), spki);
    }

    #[test]
    fn an_unreadable_slot_is_reported_apart_and_hides_no_other_token() {
        let (sim, store) = super::sim_rack(3);
        let first = sim.insert(0);
        let bad = sim.insert(1);
        let last = sim.insert(2);
        sim.rack
            .set_fault(
                1,
                Fault::new(
                    "C_GetTokenInfo",
                    1,
                    FaultAction::Fail {
                        rv: CKR_DEVICE_ERROR,
                    },
                )
                .unwrap()
                .sticky(),
            )
            .unwrap();
        let module = Module::load(&store.module).unwrap();
        let survey = module.survey().unwrap();
        let serials: Vec<&str> = survey.tokens.iter().map(|t| t.serial.as_str()).collect();
        assert_eq!(serials, [first.as_str(), last.as_str()]);
        assert_eq!(survey.unreadable.len(), 1);
        let unreadable = &survey.unreadable[0];
        assert_eq!(unreadable.slot, 1);
        assert_eq!(
            unreadable.error.function().as_deref(),
            Some("C_GetTokenInfo")
        );
        assert_eq!(
            unreadable.error.rv(),
            Some(cryptoki::error::RvError::DeviceError)
        );
        assert!(!unreadable.error.is_removed());
        // The other tokens are found and opened as usual; the unreadable one is not found.
        assert_eq!(module.scan().unwrap().len(), 2);
        assert!(module.find_by_serial(&bad).unwrap().is_none());
        let token = Token::open(&module, &last).unwrap();
        assert_eq!(token.slot_id(), 2);
        // Readable again: the next survey reads it.
        sim.rack.clear_faults(1).unwrap();
        let survey = module.survey().unwrap();
        assert!(survey.unreadable.is_empty());
        assert_eq!(survey.tokens[1].serial, bad);
    }

    #[test]
    fn wait_for_serial_sees_a_token_plugged_in_while_it_waits() {
        const LATE: &str = "LATEARRIVAL00001";
        let (sim, store) = super::sim_rack(2);
        // A witness token whose C_GetTokenInfo calls show the scans of the waiting call.
        let witness = sim.insert(0);
        let module = Module::load(&store.module).unwrap();
        assert!(module.find_by_serial(LATE).unwrap().is_none());
        sim.rack
            .set_fault(
                0,
                Fault::new(
                    "C_GetTokenInfo",
                    NEVER,
                    FaultAction::Fail {
                        rv: CKR_DEVICE_ERROR,
                    },
                )
                .unwrap(),
            )
            .unwrap();
        let found = std::thread::scope(|scope| {
            let plug = scope.spawn(|| {
                // Another handle on the rack, as a desk's USB side would have.
                let rack = Rack::open(sim.dir.path()).unwrap();
                // Only once the waiting call has scanned (and not found the token).
                until_called(&rack, &witness, 1);
                rack.insert(
                    1,
                    InsertOptions {
                        serial: Some(LATE.to_string()),
                        ..Default::default()
                    },
                )
                .unwrap();
            });
            let found = module
                .wait_for_serial(LATE, Duration::from_secs(20), Duration::from_millis(5))
                .unwrap();
            plug.join().unwrap();
            found
        });
        assert_eq!(found.serial, LATE);
        assert_eq!(found.slot, 1);
        assert!(found.is_blank(), "a new blank token: {found:?}");
        // The first scan ran before the insertion, so it was found by a later one.
        assert!(calls_seen(&sim.rack, &witness) >= 2);
        let token = Token::open(&module, LATE).unwrap();
        assert_eq!(token.slot_id(), 1);
    }

    /// A meeting point: `arrive` returns true once `n` parties are inside at the same time
    /// (false if they are not within `timeout`).
    struct Rendezvous {
        arrived: Mutex<usize>,
        all: Condvar,
        n: usize,
    }

    impl Rendezvous {
        fn arrive(&self, timeout: Duration) -> bool {
            let mut arrived = self.arrived.lock().unwrap();
            *arrived += 1;
            self.all.notify_all();
            let (arrived, _) = self
                .all
                .wait_timeout_while(arrived, timeout, |a| *a < self.n)
                .unwrap();
            *arrived >= self.n
        }
    }

    #[test]
    fn workers_on_four_tokens_run_side_by_side() {
        const TOKENS: usize = 4;
        let (sim, store) = super::sim_rack(TOKENS);
        let serials: Vec<String> = (0..TOKENS).map(|slot| sim.insert(slot)).collect();
        // Key generation takes as long as on hardware, so the calls overlap in the module.
        sim.rack
            .set_latency(None, LatencyChange::Op(Op::KeygenP256, 300))
            .unwrap();
        let module = Module::load(&store.module).unwrap();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let results = rt.block_on(async {
            let workers: Vec<TokenWorker<Token>> = serials
                .iter()
                .map(|s| TokenWorker::spawn(Token::open(&module, s).unwrap()).unwrap())
                .collect();
            let meet = Arc::new(Rendezvous {
                arrived: Mutex::new(0),
                all: Condvar::new(),
                n: TOKENS,
            });
            let results = {
                let calls: [_; TOKENS] = std::array::from_fn(|i| {
                    let meet = Arc::clone(&meet);
                    workers[i].call(move |t| {
                        // All four calls are inside their workers at once, or this is false.
                        let together = meet.arrive(Duration::from_secs(20));
                        t.init_token(
                            &pin(SO_PIN),
                            &format!("desk-{i}"),
                            &Authorization::BlankOnly,
                        )?;
                        t.init_user_pin(&pin(SO_PIN), &pin(USER_PIN))?;
                        t.login_user(&pin(USER_PIN))?;
                        let spki =
                            t.generate_key_pair(KeyLabel::SealOfficial, KeyAlgorithm::P256)?;
                        let report = t.self_test(&[KeyLabel::SealOfficial])?;
                        let objects = t.objects()?;
                        let label = t.info()?.label;
                        Ok((
                            together,
                            std::thread::current().id(),
                            t.serial().map(str::to_string),
                            label,
                            spki,
                            report.len(),
                            objects,
                        ))
                    })
                });
                let [a, b, c, d] = calls;
                let (a, b, c, d) = tokio::join!(a, b, c, d);
                [a, b, c, d]
            };
            for w in workers {
                w.close().await;
            }
            results.map(Result::unwrap)
        });
        let mut threads = Vec::new();
        let mut keys = Vec::new();
        for (i, (together, thread, serial, label, spki, tested, objects)) in
            results.into_iter().enumerate()
        {
            assert!(together, "token {i}: the four calls did not run at once");
            assert_eq!(serial.as_deref(), Some(serials[i].as_str()));
            assert_eq!(label, format!("desk-{i}"));
            assert_eq!(tested, 1);
            // Each token holds exactly its own pair.
            assert_eq!(objects.len(), 2, "token {i}: {objects:?}");
            assert!(
                objects
                    .iter()
                    .all(|o| o.key_label() == Some(KeyLabel::SealOfficial)
                        && matches!(o.kind, ObjectKind::PrivateKey | ObjectKind::PublicKey))
            );
            assert_eq!(sim.rack.token(&serials[i]).unwrap().objects().count(), 2);
            threads.push(thread);
            keys.push(spki);
        }
        threads.sort_by_key(|t| format!("{t:?}"));
        threads.dedup();
        assert_eq!(threads.len(), TOKENS, "one thread per token");
        keys.dedup();
        assert_eq!(keys.len(), TOKENS, "every token made its own key");
    }
}
