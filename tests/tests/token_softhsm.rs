//! The token layer against a real PKCS#11 module: SoftHSM2 now, any module later.
//!
//! Each `#[test]` gets a fresh SoftHSM2 store (`SoftHsm::activate` before the module loads;
//! nextest runs one test per process). The checks live in [`suite`], whose functions take the
//! module path and a [`suite::Store`] describing how outside tools reach the same tokens, so the
//! same suite can later run against hsm-sim's module.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use ukey_tests::SoftHsm;

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

#[test]
fn blank_token_is_detected_initialized_and_guarded() {
    let (_hsm, store) = softhsm();
    suite::blank_token_is_detected_initialized_and_guarded(&store);
}

#[test]
fn p256_keys_csrs_certificates_and_self_test() {
    let (_hsm, store) = softhsm();
    suite::p256_keys_csrs_certificates_and_self_test(&store);
}

#[test]
fn rsa2048_keys_sign_decrypt_and_csr() {
    let (_hsm, store) = softhsm();
    suite::rsa2048_keys_sign_decrypt_and_csr(&store);
}

#[test]
fn token_found_by_serial_after_a_new_initialize() {
    let (_hsm, store) = softhsm();
    suite::token_found_by_serial_after_a_new_initialize(&store);
}

#[test]
fn wrong_pin_is_typed() {
    let (_hsm, store) = softhsm();
    suite::wrong_pin_is_typed(&store);
}

#[test]
fn worker_serves_calls_and_survives_a_panic() {
    let (_hsm, store) = softhsm();
    suite::worker_serves_calls_and_survives_a_panic(&store);
}

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
    use ukey_agent::profile::{SubjectData, UkeyProfile};
    use ukey_agent::token::{
        Authorization, Module, ObjectKind, PinOwner, SecretString, Token, TokenError, TriesLeft,
    };
    use ukey_agent::worker::TokenWorker;
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

    fn pin(s: &str) -> SecretString {
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
    fn blank_to_ready(store: &Store) -> (Module, Token) {
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

        let mut token = Token::at(&module, blank[0]).unwrap();
        token
            .init_token(&pin(SO_PIN), "ukey-test", &Authorization::BlankOnly)
            .unwrap();
        let serial = token.serial().expect("serial after init").to_string();
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
