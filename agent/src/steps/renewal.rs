//! The steps of the jobs that keep a token's keys (`renew`, `change` without rekey): the
//! checks before the keys are certified again, the renewal requests, and the removal of the
//! old certificates.

use super::*;

/// What a token that keeps its keys (`renew`, `change` without rekey) holds under one
/// label, once [`check_kept_keys`] found it trustworthy.
struct KeptKey {
    label: KeyLabel,
    /// The one public key object's key, which the current certificate certifies.
    public_key: SubjectPublicKeyInfoOwned,
    /// The one certificate (DER).
    certificate: Vec<u8>,
}

/// The checks before a token's keys are certified again, all without a PIN (the station
/// holds none for these jobs): anyone with the token in hand can write public objects with
/// our labels, so nothing found is taken on trust. Per label:
///
/// - exactly one public key object (`token-objects-unexpected` otherwise: a second one was
///   planted, or the key is gone) and exactly one certificate (none:
///   `certificate-missing-on-token`; several: `token-objects-unexpected`);
/// - the public key is of the algorithm the job describes (`token-key-mismatch`);
/// - the public key is the key the current certificate certifies
///   (`token-key-not-certified`): a planted or swapped public key is never sent for
///   certification.
///
/// What the PIN-less checks cannot see, a private key that is not the public key's pair,
/// the self-test sees ([`prove_kept_keys`]), which needs the user PIN.
fn check_kept_keys(token: &dyn Device, job: &JobDocument) -> Result<Vec<KeptKey>, StepFailure> {
    let serial = token.serial().unwrap_or("(no serial)").to_owned();
    let refuse = |code: Code, message: String| {
        StepFailure::Failed(step_error(
            code,
            format!("token {serial}: {message}"),
            false,
        ))
    };
    let mut kept = Vec::with_capacity(KeyLabel::ALL.len());
    for label in KeyLabel::ALL {
        let objects = token.label_objects(label)?;
        if objects.public_keys != 1 {
            return Err(refuse(
                codes::TOKEN_OBJECTS_UNEXPECTED,
                format!(
                    "{} public key objects under {label}, expected exactly one; \
                     the token is not renewed",
                    objects.public_keys
                ),
            ));
        }
        match objects.certificates {
            0 => {
                return Err(refuse(
                    codes::CERTIFICATE_MISSING_ON_TOKEN,
                    format!("no {label} certificate to renew"),
                ));
            }
            1 => {}
            n => {
                return Err(refuse(
                    codes::TOKEN_OBJECTS_UNEXPECTED,
                    format!(
                        "{n} certificates under {label}, expected exactly one; \
                         the token is not renewed"
                    ),
                ));
            }
        }
        let public_key = token.public_key(label)?;
        let Some(alg) = job.key_spec(label) else {
            return Err(StepFailure::Failed(step_error(
                codes::JOB_KEY_SPEC,
                format!("the job has no key spec for {label}"),
                false,
            )));
        };
        if crate::certs::key_algorithm(&public_key) != Some(alg) {
            return Err(refuse(
                codes::TOKEN_KEY_MISMATCH,
                format!("the {label} key is not the job's {alg}"),
            ));
        }
        let certificate = token.certificate(label)?.ok_or_else(|| {
            refuse(
                codes::CERTIFICATE_MISSING_ON_TOKEN,
                format!("no {label} certificate to renew"),
            )
        })?;
        let certified = x509_cert::Certificate::from_der(&certificate)
            .map_err(|e| {
                refuse(
                    codes::TOKEN_KEY_NOT_CERTIFIED,
                    format!("the {label} certificate on the token is unreadable: {e}"),
                )
            })?
            .tbs_certificate()
            .subject_public_key_info()
            .clone();
        if certified != public_key {
            return Err(refuse(
                codes::TOKEN_KEY_NOT_CERTIFIED,
                format!(
                    "the {label} public key object is not the key its certificate certifies; \
                     the token is not renewed"
                ),
            ));
        }
        kept.push(KeptKey {
            label,
            public_key,
            certificate,
        });
    }
    Ok(kept)
}

/// Step `read-keys` (`renew`, `change` without rekey), as the station runs it without a
/// user PIN: [`check_kept_keys`] — per label exactly one public key and one certificate,
/// the key of the job's algorithm and the one its certificate certifies.
pub fn read_keys(token: &dyn Device, job: &JobDocument) -> Result<(), StepFailure> {
    check_kept_keys(token, job).map(|_| ())
}

/// Step `read-keys` when the station holds the token's user PIN: the PIN-less checks of
/// [`read_keys`], then [`prove_kept_keys`] (exactly one private key per label, and the
/// self-test: each key proves on the token that it is the certified key's pair).
pub fn read_keys_with_pin(
    token: &mut dyn Device,
    job: &JobDocument,
    user_pin: &SecretString,
) -> Result<Vec<KeySelfTest>, StepFailure> {
    check_kept_keys(token, job)?;
    prove_kept_keys(token, user_pin)
}

/// The user logs in; each label holds exactly one private key (`token-objects-unexpected`
/// otherwise), and every key passes the activation self-test against its certificate
/// (`self-test-failed`: e.g. a private key that is not the certified public key's pair).
/// The session logs out whatever the outcome.
pub fn prove_kept_keys(
    token: &mut dyn Device,
    user_pin: &SecretString,
) -> Result<Vec<KeySelfTest>, StepFailure> {
    token.login_user(user_pin)?;
    let result = (|| {
        for label in KeyLabel::ALL {
            let objects = token.label_objects(label)?;
            if objects.private_keys != 1 {
                let serial = token.serial().unwrap_or("(no serial)");
                return Err(StepFailure::Failed(step_error(
                    codes::TOKEN_OBJECTS_UNEXPECTED,
                    format!(
                        "token {serial}: {} private keys under {label}, expected exactly one; \
                         the token is not renewed",
                        objects.private_keys
                    ),
                    false,
                )));
            }
        }
        Ok(token.self_test(&KeyLabel::ALL)?)
    })();
    let logout = token.logout();
    let tests = result?;
    logout?;
    Ok(tests)
}

/// Step `request-certificates` for the jobs that keep the keys: per label the current
/// certificate and the public key, both read without a PIN — and only after the checks of
/// [`read_keys`] pass again (the token may have been handled since that step), so a
/// planted or swapped public key is never sent for certification.
pub fn request_renewal(
    token: &dyn Device,
    job: &JobDocument,
    serial: &TokenSerial,
) -> Result<CsrBundle, StepFailure> {
    let mut requests = Vec::with_capacity(3);
    for kept in check_kept_keys(token, job)? {
        let key = spki_der(&kept.public_key)?;
        requests.push(CertificateRequest {
            label: kept.label,
            csr: None,
            current_certificate: Some(Base64Bytes::new(kept.certificate)),
            public_key: Some(Base64Bytes::new(key)),
        });
    }
    Ok(CsrBundle {
        v: V1,
        job_id: job.job_id.clone(),
        token_serial: serial.clone(),
        requests,
    })
}

/// Step `remove-old-certificates`: per label, every certificate object other than the new
/// one in `bundle` is deleted — but only once the new one is on the token, so a token is
/// never left without a certificate. Run again after a crash, it finishes what is left.
/// Returns how many were removed.
pub fn remove_old_certificates(
    token: &dyn Device,
    bundle: &CertBundle,
) -> Result<usize, StepFailure> {
    let mut removed = 0;
    for label in KeyLabel::ALL {
        let Some(new) = bundle.certificates.iter().find(|c| c.label == label) else {
            return Err(StepFailure::Failed(step_error(
                codes::CERTIFICATE_MISSING,
                format!("the platform sent no certificate for {label}"),
                false,
            )));
        };
        let on_token = token.certificates(label)?;
        if !on_token
            .iter()
            .any(|der| der.as_slice() == new.certificate.as_bytes())
        {
            return Err(StepFailure::Failed(step_error(
                codes::CERTIFICATE_NOT_INSTALLED,
                format!("the new {label} certificate is not on the token; the old one stays"),
                true,
            )));
        }
        for der in on_token
            .iter()
            .filter(|der| der.as_slice() != new.certificate.as_bytes())
        {
            if token.remove_certificate(label, der)? {
                removed += 1;
            }
        }
    }
    Ok(removed)
}
