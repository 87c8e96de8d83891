#![allow(clippy::unwrap_used, clippy::expect_used)]
use super::*;

#[test]
fn each_chain_refusal_has_its_own_code_and_is_final() {
    let label = KeyLabel::SealOfficial;
    let subject = || "CN=Issuing CA".to_owned();
    let cases = [
        (
            CertError::IntermediateNotValid {
                label,
                subject: subject(),
                not_before: 0,
                not_after: 1,
            },
            "certificate-intermediate-validity",
        ),
        (
            CertError::IntermediateKeyUsage {
                label,
                subject: subject(),
            },
            "certificate-intermediate-key-usage",
        ),
        (
            CertError::PathLengthExceeded {
                label,
                subject: subject(),
                path_len: 0,
                below: 1,
            },
            "certificate-path-length",
        ),
        (
            CertError::AnchorNotValid {
                label,
                subject: subject(),
                not_before: 0,
                not_after: 1,
            },
            "certificate-anchor-validity",
        ),
        (
            CertError::UnknownCriticalExtension {
                label,
                subject: subject(),
                oid: "1.2.3".into(),
            },
            "certificate-critical-extension",
        ),
        (
            CertError::ValidityDaysMismatch {
                label,
                hours: 24,
                expected_days: 365,
                tolerance_hours: 24,
            },
            "certificate-validity-days",
        ),
    ];
    for (error, code) in cases {
        let StepFailure::Failed(failure) = StepFailure::from(error) else {
            panic!("{code}: not a failure");
        };
        assert_eq!(failure.code.to_string(), code);
        assert!(!failure.retryable, "{code}");
    }
}

#[test]
fn generated_pins_fit_the_policy_and_differ() {
    let a = Pins::generate(6, 16).unwrap();
    let b = Pins::generate(6, 16).unwrap();
    assert_eq!(a.user.expose_secret().len(), 8);
    assert!(a.user.expose_secret().bytes().all(|c| c.is_ascii_digit()));
    assert_eq!(a.so.expose_secret().len(), 16);
    assert_ne!(a.so.expose_secret(), b.so.expose_secret());
    let short = Pins::generate(4, 6).unwrap();
    assert_eq!(short.so.expose_secret().len(), 6);
    let long = Pins::generate(10, 12).unwrap();
    assert_eq!(long.user.expose_secret().len(), 10);
    let nonsense = Pins::generate(0, 0).unwrap();
    assert_eq!(nonsense.user.expose_secret().len(), 8);
    assert_eq!(nonsense.so.expose_secret().len(), 16);
    let huge = Pins::generate(usize::MAX, usize::MAX).unwrap();
    assert_eq!(huge.so.expose_secret().len(), 64);
    assert_eq!(format!("{a:?}"), "Pins(<secret>)");
}

#[test]
fn sealed_pins_open_only_for_their_job() {
    use p256::elliptic_curve::Generate;
    use ukey_protocol::seal::{SealContext, SealPurpose};
    let key = UnsealKey::P256(p256::SecretKey::generate_from_rng(&mut rand::rng()));
    let job = JobId::new("job-1").unwrap();
    let pins = Pins::generate(6, 16).unwrap();
    let sealed = pins.seal(&key.recipient(), &job).unwrap();
    let context = |job: &JobId| SealContext::for_job(job, SealPurpose::UserPin);
    let user = sealed.user.unseal_pin(&key, &context(&job)).unwrap();
    assert_eq!(user.expose_secret(), pins.user.expose_secret());
    let other = JobId::new("job-2").unwrap();
    assert!(sealed.user.unseal_pin(&key, &context(&other)).is_err());
}

#[test]
fn pins_round_trip_through_bytes() {
    let pins = Pins {
        so: SecretString::from("so\nwith newline".to_owned()),
        user: SecretString::from("12345678".to_owned()),
    };
    let back = Pins::from_bytes(&pins.to_bytes().unwrap()).unwrap();
    assert_eq!(back.so.expose_secret(), "so\nwith newline");
    assert_eq!(back.user.expose_secret(), "12345678");
    assert!(Pins::from_bytes(&[0]).is_err());
    assert!(Pins::from_bytes(&[0, 9, b'a']).is_err());
}

#[test]
fn removal_parks_and_errors_carry_codes() {
    let removed = TokenError::Removed {
        serial: Some("S1".into()),
        slot: 1,
        function: "C_Sign".into(),
    };
    assert!(matches!(StepFailure::from(removed), StepFailure::Removed));
    let StepFailure::Failed(e) = StepFailure::from(TokenError::NotBlank {
        serial: Some("S1".into()),
        label: "other".into(),
    }) else {
        panic!()
    };
    assert_eq!(e.code.as_str(), "token-not-blank");
    assert!(!e.retryable);
}

#[test]
fn vendor_limits_fail_with_their_own_codes_and_no_retry() {
    use cryptoki::error::RvError;
    let pkcs11 = |function: &str, rv| TokenError::Pkcs11 {
        function: function.into(),
        rv,
        slot: Some(0x100),
        serial: Some("0123456789ABCDEF".into()),
    };
    let cases = [
        (
            pkcs11("C_GenerateKeyPair", RvError::DeviceMemory),
            "token-full",
        ),
        (
            pkcs11("C_CreateObject", RvError::DeviceMemory),
            "token-full",
        ),
        (
            pkcs11("C_InitToken", RvError::FunctionNotSupported),
            "init-token-unsupported",
        ),
        (
            pkcs11("C_SignInit", RvError::MechanismInvalid),
            "mechanism-unsupported",
        ),
        (pkcs11("C_InitPIN", RvError::PinLenRange), "pin-length"),
    ];
    for (error, code) in cases {
        let message = error.to_string();
        let StepFailure::Failed(failure) = StepFailure::from(error) else {
            panic!("{code}: not a failure");
        };
        assert_eq!(failure.code.to_string(), code, "{message}");
        assert!(!failure.retryable, "{code}: a retry meets the same limit");
        assert!(
            failure.message.contains("0123456789ABCDEF"),
            "{}",
            failure.message
        );
    }
    // Another function that is not supported stays a general token error.
    let StepFailure::Failed(other) =
        StepFailure::from(pkcs11("C_DigestInit", RvError::FunctionNotSupported))
    else {
        panic!("not a failure");
    };
    assert_eq!(other.code.to_string(), "token-error");
}
