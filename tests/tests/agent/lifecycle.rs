//! The rest of a Ukey's life, end to end: `unlock`, `renew`, `change` and what a token says
//! when it is plugged in. Real Mosquitto, the simulated platform, hsm-sim and the real
//! `ukey-agent` binary; tokens are checked again from outside (pkcs11-tool, openssl).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

use hsm_sim::rack::LatencyChange;
use hsm_sim::rack::latency::Op;
use hsm_sim::rack::token::Who;
use secrecy::{ExposeSecret, SecretString};
use ukey_platform_sim::JobDraft;
use ukey_protocol::event::{ExecutionState, Step};
use ukey_protocol::ids::{JobId, TokenSerial};
use ukey_protocol::inventory::TokenState;
use ukey_protocol::job::JobKind;
use ukey_protocol::keys::KeyAlgorithm;
use ukey_protocol::keys::KeyLabel;
use ukey_tests::require_tool;
use ukey_tests::station::{ObjectCount, PRODUCTION_TIMEOUT, Station};

/// Runs a `new` job on a blank token plugged into `slot`; returns the job's draft (its
/// order is the order of later jobs on the token) and the token's serial.
async fn produce(station: &Station, slot: usize, alg: KeyAlgorithm) -> (JobDraft, TokenSerial) {
    let draft = JobDraft::new(JobKind::New, &station.station_id)
        .unwrap()
        .with_algorithm(alg);
    let (_, inserted, record) = station.produce(slot, &draft).await;
    let serial = record.token_serial().cloned().unwrap();
    assert_eq!(serial.as_str(), inserted);
    (draft, serial)
}

/// Dispatches a job of `kind` naming `serial`, for the order of `made`.
async fn dispatch_targeted(
    station: &Station,
    kind: JobKind,
    made: &JobDraft,
    serial: &TokenSerial,
) -> JobId {
    let draft = JobDraft::new(kind, &station.station_id)
        .unwrap()
        .with_algorithm(made.algorithm)
        .with_order(made.order.clone())
        .with_target(serial.clone());
    station.platform.dispatch_draft(&draft).await.unwrap()
}

/// Waits for a job's terminal event; returns it.
async fn finished(station: &Station, job: &JobId) -> ukey_protocol::event::StepEvent {
    let record = station
        .platform
        .wait_for(
            job,
            |r| r.state().is_some_and(|s| s.is_terminal()),
            PRODUCTION_TIMEOUT,
        )
        .await
        .unwrap_or_else(|e| panic!("{e}\n--- agent log ---\n{}", station.agent_log()));
    assert!(
        record.problems().is_empty(),
        "platform saw problems: {:?}",
        record.problems()
    );
    record.last_event().cloned().unwrap()
}

/// Pulls the token in `slot`, changes it as the customer would elsewhere, and plugs it in
/// again once the desk has seen it leave (a re-plug between two scans goes unnoticed).
async fn away_and_back(
    station: &Station,
    slot: usize,
    serial: &TokenSerial,
    f: impl FnOnce(&mut hsm_sim::rack::token::Token),
) {
    let station_id = station.station_id.clone();
    // First the inventory shows it (so that its leaving below is news, not an older table).
    station
        .platform
        .wait_until("the token in the inventory", PRODUCTION_TIMEOUT, |r| {
            r.current_inventory(&station_id)?
                .slots
                .iter()
                .filter_map(|s| s.token.as_ref())
                .any(|t| t.serial.as_ref() == Some(serial))
                .then_some(())
        })
        .await
        .unwrap();
    station.rack().remove(slot).unwrap();
    station
        .platform
        .wait_until(
            "the token to leave the inventory",
            PRODUCTION_TIMEOUT,
            |r| {
                let inventory = r.current_inventory(&station_id)?;
                (!inventory
                    .slots
                    .iter()
                    .filter_map(|s| s.token.as_ref())
                    .any(|t| t.serial.as_ref() == Some(serial)))
                .then_some(())
            },
        )
        .await
        .unwrap();
    station.rack().modify_token(serial.as_str(), f).unwrap();
    station.reinsert(slot, serial.as_str());
}

/// Wrong PINs until `who`'s PIN is locked.
fn lock(token: &mut hsm_sim::rack::token::Token, who: Who) {
    while token.retries(who).0 > 0 {
        let _ = token.verify_pin(who, b"not-the-pin-0");
    }
}

fn pkcs11_tool(station: &Station, args: &[&str]) -> (bool, String) {
    let (env_key, env_value) = station.module_env();
    let out = Command::new(require_tool("pkcs11-tool"))
        .arg("--module")
        .arg(station.module())
        .args(args)
        .env(env_key, &env_value)
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// The token's label as the rack holds it.
fn label_of(station: &Station, serial: &TokenSerial) -> String {
    station
        .rack()
        .token(serial.as_str())
        .unwrap()
        .label()
        .trim_end()
        .to_owned()
}

/// Logs in with `pin` through pkcs11-tool and counts the private keys it then sees.
fn private_keys_seen_with(station: &Station, serial: &TokenSerial, pin: &SecretString) -> usize {
    let label = label_of(station, serial);
    let (ok, out) = pkcs11_tool(
        station,
        &[
            "--token-label",
            &label,
            "--login",
            "--pin",
            pin.expose_secret(),
            "--list-objects",
            "--type",
            "privkey",
        ],
    );
    assert!(ok, "pkcs11-tool login: {out}");
    out.matches("Private Key Object").count()
}

fn no_pin_in_log(station: &Station, pin: &SecretString) {
    assert!(
        !station.agent_log().contains(pin.expose_secret()),
        "a PIN appears in the agent's log"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unlock_resets_a_locked_user_pin() {
    let mut station = Station::sim(2).await;
    station.start_agent().await;
    let (made, serial) = produce(&station, 0, KeyAlgorithm::P256).await;
    let old_pin = station.platform.user_pin(&serial).unwrap();

    away_and_back(&station, 0, &serial, |t| lock(t, Who::User)).await;
    let (ok, out) = pkcs11_tool(
        &station,
        &[
            "--token-label",
            &label_of(&station, &serial),
            "--login",
            "--pin",
            old_pin.expose_secret(),
            "--list-objects",
        ],
    );
    assert!(
        !ok || !out.contains("Private Key Object"),
        "the user PIN is locked: {out}"
    );

    let job = dispatch_targeted(&station, JobKind::Unlock, &made, &serial).await;
    let last = finished(&station, &job).await;
    assert_eq!(
        last.state,
        ExecutionState::Succeeded,
        "{last:?}\n{}",
        station.agent_log()
    );
    assert_eq!(last.step, Step::ResetPin);
    let record = station.platform.job_record(&job).unwrap();
    assert!(record.has_step(Step::Claim));
    assert_eq!(record.token_serial(), Some(&serial));

    let new_pin = station.platform.user_pin(&serial).unwrap();
    assert_ne!(new_pin.expose_secret(), old_pin.expose_secret());
    let token = station.rack().token(serial.as_str()).unwrap();
    let (left, max) = token.retries(Who::User);
    assert_eq!(left, max, "the retry counter is full again");
    assert_eq!(private_keys_seen_with(&station, &serial, &new_pin), 3);
    no_pin_in_log(&station, &new_pin);
    if let Some(so) = station
        .platform
        .token(&serial)
        .and_then(|t| t.so_pin().cloned())
    {
        no_pin_in_log(&station, &so);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unlock_with_a_locked_so_pin_touches_nothing_and_a_missing_token_times_out() {
    let mut station = Station::sim(3).await;
    station.configure(|c| c.timeouts.target_token_secs = 4);
    station.start_agent().await;
    let (made, serial) = produce(&station, 0, KeyAlgorithm::P256).await;

    away_and_back(&station, 0, &serial, |t| {
        lock(t, Who::User);
        lock(t, Who::So);
    })
    .await;
    let before = station.objects(serial.as_str());
    let job = dispatch_targeted(&station, JobKind::Unlock, &made, &serial).await;
    let last = finished(&station, &job).await;
    assert_eq!(last.state, ExecutionState::Failed, "{last:?}");
    assert_eq!(last.step, Step::ResetPin);
    let error = last.error.unwrap();
    assert_eq!(error.code.as_str(), "so-pin-locked");
    assert!(!error.retryable);
    let token = station.rack().token(serial.as_str()).unwrap();
    assert_eq!(token.retries(Who::User).0, 0, "the user PIN stays locked");
    assert_eq!(token.retries(Who::So).0, 0);
    assert_eq!(
        station.objects(serial.as_str()),
        before,
        "no object touched"
    );

    // The named token is away; a blank token plugged in meanwhile is not taken for it.
    station.rack().remove(0).unwrap();
    let blank = station.insert_blank(1);
    let job = dispatch_targeted(&station, JobKind::Unlock, &made, &serial).await;
    let last = finished(&station, &job).await;
    assert_eq!(last.state, ExecutionState::TimedOut, "{last:?}");
    assert_eq!(last.error.unwrap().code.as_str(), "target-token-timeout");
    let record = station.platform.job_record(&job).unwrap();
    assert!(!record.has_step(Step::ResetPin));
    let other = station.rack().token(&blank).unwrap();
    assert!(!other.is_initialized(), "the blank token was left alone");
}

/// Reads `label`'s certificate(s) from the token into `dir` as PEM (pkcs11-tool, openssl);
/// with several, the one pkcs11-tool finds first.
fn read_certificate(
    station: &Station,
    serial: &TokenSerial,
    label: &str,
    dir: &std::path::Path,
    name: &str,
) -> std::path::PathBuf {
    let der = dir.join(format!("{name}.der"));
    let (ok, out) = pkcs11_tool(
        station,
        &[
            "--token-label",
            &label_of(station, serial),
            "--read-object",
            "--type",
            "cert",
            "--label",
            label,
            "--output-file",
            der.to_str().unwrap(),
        ],
    );
    assert!(ok && der.exists(), "read {label} certificate: {out}");
    let pem = dir.join(format!("{name}.pem"));
    openssl(&[
        "x509",
        "-inform",
        "DER",
        "-in",
        der.to_str().unwrap(),
        "-out",
        pem.to_str().unwrap(),
    ]);
    pem
}

fn openssl(args: &[&str]) -> String {
    let out = Command::new(require_tool("openssl"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The SHA-256 of a certificate's public key (DER SPKI), via openssl.
fn key_fingerprint(pem: &std::path::Path) -> String {
    let dir = pem.parent().unwrap();
    let key = dir.join("key.pem");
    openssl(&[
        "x509",
        "-in",
        pem.to_str().unwrap(),
        "-pubkey",
        "-noout",
        "-out",
        key.to_str().unwrap(),
    ]);
    openssl(&[
        "pkey",
        "-pubin",
        "-in",
        key.to_str().unwrap(),
        "-outform",
        "DER",
        "-out",
        dir.join("key.der").to_str().unwrap(),
    ]);
    openssl(&[
        "dgst",
        "-sha256",
        "-r",
        dir.join("key.der").to_str().unwrap(),
    ])
    .split_whitespace()
    .next()
    .unwrap()
    .to_owned()
}

fn serial_of(pem: &std::path::Path) -> String {
    openssl(&["x509", "-in", pem.to_str().unwrap(), "-serial", "-noout"])
        .trim()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renew_keeps_the_keys_and_survives_a_crash_between_write_and_delete() {
    let mut station = Station::sim(1).await;
    station.start_agent().await;
    let (made, serial) = produce(&station, 0, KeyAlgorithm::Rsa2048).await;
    let pin = station.platform.user_pin(&serial).unwrap();
    let bound_before = station
        .platform
        .token(&serial)
        .unwrap()
        .certificates()
        .to_vec();

    // A bid document encrypted to the encryption certificate before the renewal.
    let dir = tempfile::tempdir().unwrap();
    let old = read_certificate(&station, &serial, "encryption", dir.path(), "old");
    let old_fingerprint = key_fingerprint(&old);
    let old_serial = serial_of(&old);
    let document = dir.path().join("bid.txt");
    std::fs::write(&document, b"sealed bid: 1,234,567.89 CNY").unwrap();
    let encrypted = dir.path().join("bid.enc");
    openssl(&[
        "pkeyutl",
        "-encrypt",
        "-certin",
        "-inkey",
        old.to_str().unwrap(),
        "-in",
        document.to_str().unwrap(),
        "-out",
        encrypted.to_str().unwrap(),
    ]);

    // Deleting is slow on this token: the agent dies after writing the new certificates and
    // before the old ones are gone.
    station
        .rack()
        .set_latency(Some(0), LatencyChange::Op(Op::Destroy, 3000))
        .unwrap();
    let job = dispatch_targeted(&station, JobKind::Renew, &made, &serial).await;
    station
        .wait_for_token(
            serial.as_str(),
            "new certificates written",
            PRODUCTION_TIMEOUT,
            |t| ObjectCount::of(t).certificates == 6,
        )
        .await;
    station.kill_agent();
    assert_eq!(station.objects(serial.as_str()).certificates, 6);
    station
        .rack()
        .set_latency(Some(0), LatencyChange::ClearOp(Op::Destroy))
        .unwrap();
    station.start_agent().await;
    let last = finished(&station, &job).await;
    assert_eq!(
        last.state,
        ExecutionState::Succeeded,
        "{last:?}\n{}",
        station.agent_log()
    );
    let record = station.platform.job_record(&job).unwrap();
    for step in JobKind::Renew.plan(false) {
        assert!(record.has_step(*step), "no {step} event");
    }
    assert!(!record.has_step(Step::Initialize) && !record.has_step(Step::GenerateKeys));

    let count = station.objects(serial.as_str());
    assert_eq!(
        count.certificates, 3,
        "one certificate per label after the restart"
    );
    assert_eq!((count.private_keys, count.public_keys), (3, 3));

    let new = read_certificate(&station, &serial, "encryption", dir.path(), "new");
    assert_ne!(serial_of(&new), old_serial, "a new certificate");
    assert_eq!(key_fingerprint(&new), old_fingerprint, "for the same key");
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, station.platform.ca().certificate_pem().unwrap()).unwrap();
    assert!(
        openssl(&[
            "verify",
            "-CAfile",
            ca.to_str().unwrap(),
            new.to_str().unwrap()
        ])
        .contains(": OK")
    );

    // The document encrypted before decrypts on the token after.
    let decrypted = dir.path().join("bid.dec");
    let (ok, out) = pkcs11_tool(
        &station,
        &[
            "--token-label",
            &label_of(&station, &serial),
            "--login",
            "--pin",
            pin.expose_secret(),
            "--decrypt",
            "--mechanism",
            "RSA-PKCS",
            // pkcs11-tool picks the decryption key by CKA_ID (the encryption pair's is 03).
            "--id",
            "03",
            "--input-file",
            encrypted.to_str().unwrap(),
            "--output-file",
            decrypted.to_str().unwrap(),
        ],
    );
    assert!(ok, "decrypt: {out}");
    assert_eq!(
        std::fs::read(&decrypted).unwrap(),
        std::fs::read(&document).unwrap()
    );

    // The platform bound the new certificates; the PINs stay what they were.
    let bound_after = station
        .platform
        .token(&serial)
        .unwrap()
        .certificates()
        .to_vec();
    assert_eq!(bound_after.len(), 3);
    for fp in &bound_after {
        assert!(!bound_before.contains(fp), "{fp:?} was re-bound unchanged");
    }
    assert_eq!(
        station.platform.user_pin(&serial).unwrap().expose_secret(),
        pin.expose_secret()
    );
    no_pin_in_log(&station, &pin);
}

/// A public key planted under `seal-official` while the token was out of the desk's hands
/// (pkcs11-tool, no PIN): the renewal fails at `read-keys` with `token-objects-unexpected`,
/// sends no renewal request and leaves the certificates as they were.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renew_refuses_a_token_with_a_planted_public_key() {
    let mut station = Station::sim(1).await;
    station.start_agent().await;
    let (made, serial) = produce(&station, 0, KeyAlgorithm::P256).await;
    let before = station.objects(serial.as_str());

    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("attacker.pem");
    let public = dir.path().join("attacker.der");
    openssl(&[
        "ecparam",
        "-name",
        "prime256v1",
        "-genkey",
        "-noout",
        "-out",
        key.to_str().unwrap(),
    ]);
    openssl(&[
        "pkey",
        "-in",
        key.to_str().unwrap(),
        "-pubout",
        "-outform",
        "DER",
        "-out",
        public.to_str().unwrap(),
    ]);
    let (ok, out) = pkcs11_tool(
        &station,
        &[
            "--token-label",
            &label_of(&station, &serial),
            "--write-object",
            public.to_str().unwrap(),
            "--type",
            "pubkey",
            "--label",
            "seal-official",
            "--id",
            "01",
        ],
    );
    assert!(ok, "planting a public key: {out}");
    assert_eq!(
        station.objects(serial.as_str()).public_keys,
        before.public_keys + 1
    );

    let job = dispatch_targeted(&station, JobKind::Renew, &made, &serial).await;
    let last = finished(&station, &job).await;
    assert_eq!(last.state, ExecutionState::Failed, "{last:?}");
    assert_eq!(last.step, Step::ReadKeys);
    let error = last.error.unwrap();
    assert_eq!(error.code.as_str(), "token-objects-unexpected", "{error:?}");
    assert!(!error.retryable);
    assert!(error.message.contains("seal-official"), "{}", error.message);
    let record = station.platform.job_record(&job).unwrap();
    assert!(
        record.csr_bundles().is_empty(),
        "a renewal request was sent: {:?}",
        record.csr_bundles()
    );
    assert!(!record.has_step(Step::RequestCertificates));
    assert_eq!(
        station.objects(serial.as_str()).certificates,
        before.certificates,
        "the certificates stay"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn change_without_rekey_puts_the_new_name_on_the_same_keys() {
    let mut station = Station::sim(1).await;
    station.start_agent().await;
    let (made, serial) = produce(&station, 0, KeyAlgorithm::P256).await;
    let dir = tempfile::tempdir().unwrap();
    let mut before = Vec::new();
    for label in ["seal-official", "seal-legal", "encryption"] {
        let pem = read_certificate(
            &station,
            &serial,
            label,
            dir.path(),
            &format!("old-{label}"),
        );
        before.push((key_fingerprint(&pem), serial_of(&pem)));
    }

    let renamed = made.order.renamed().unwrap();
    let new_name = renamed.enterprise.name.clone();
    assert_ne!(new_name, made.order.enterprise.name);
    let draft = JobDraft::new(JobKind::Change, &station.station_id)
        .unwrap()
        .with_order(renamed)
        .with_target(serial.clone());
    let job = station.platform.dispatch_draft(&draft).await.unwrap();
    let last = finished(&station, &job).await;
    assert_eq!(
        last.state,
        ExecutionState::Succeeded,
        "{last:?}\n{}",
        station.agent_log()
    );
    assert_eq!(station.objects(serial.as_str()).certificates, 3);
    for (i, label) in ["seal-official", "seal-legal", "encryption"]
        .iter()
        .enumerate()
    {
        let pem = read_certificate(
            &station,
            &serial,
            label,
            dir.path(),
            &format!("new-{label}"),
        );
        assert_eq!(key_fingerprint(&pem), before[i].0, "{label}: same key");
        assert_ne!(serial_of(&pem), before[i].1, "{label}: new certificate");
        let subject = openssl(&[
            "x509",
            "-in",
            pem.to_str().unwrap(),
            "-noout",
            "-subject",
            "-nameopt",
            "utf8,sep_comma_plus",
        ]);
        assert!(
            subject.contains(&new_name),
            "{label}: {subject} lacks {new_name}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn change_with_rekey_makes_new_keys_on_the_same_token() {
    let mut station = Station::sim(1).await;
    station.start_agent().await;
    let (made, serial) = produce(&station, 0, KeyAlgorithm::P256).await;
    let old_pin = station.platform.user_pin(&serial).unwrap();
    let so = station
        .platform
        .token(&serial)
        .unwrap()
        .so_pin()
        .cloned()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let old = read_certificate(&station, &serial, "encryption", dir.path(), "old");
    let old_fingerprint = key_fingerprint(&old);

    let draft = JobDraft::new(JobKind::Change, &station.station_id)
        .unwrap()
        .with_order(made.order.renamed().unwrap())
        .with_target(serial.clone())
        .with_rekey();
    let job = station.platform.dispatch_draft(&draft).await.unwrap();
    let last = finished(&station, &job).await;
    assert_eq!(
        last.state,
        ExecutionState::Succeeded,
        "{last:?}\n{}",
        station.agent_log()
    );
    let record = station.platform.job_record(&job).unwrap();
    for step in JobKind::Change.plan(true) {
        assert!(record.has_step(*step), "no {step} event");
    }
    assert_eq!(record.token_serial(), Some(&serial), "the serial is kept");

    let count = station.objects(serial.as_str());
    assert_eq!(
        (count.private_keys, count.public_keys, count.certificates),
        (3, 3, 3)
    );
    let new = read_certificate(&station, &serial, "encryption", dir.path(), "new");
    assert_ne!(key_fingerprint(&new), old_fingerprint, "new keys");
    let new_pin = station.platform.user_pin(&serial).unwrap();
    assert_ne!(new_pin.expose_secret(), old_pin.expose_secret());
    assert_eq!(private_keys_seen_with(&station, &serial, &new_pin), 3);
    let token = station.platform.token(&serial).unwrap();
    assert_eq!(token.job_id(), &job, "the token is bound to the change job");
    assert_eq!(
        token.so_pin().unwrap().expose_secret(),
        so.expose_secret(),
        "the SO PIN stays"
    );
    no_pin_in_log(&station, &new_pin);
    no_pin_in_log(&station, &so);
}

/// Re-issues every certificate on `token` with a validity that ended yesterday (same key,
/// same subject, same CA), as time would.
fn expire_certificates(
    token: &mut hsm_sim::rack::token::Token,
    ca: &ukey_platform_sim::TestCa,
    subject: &ukey_protocol::profile::SubjectData,
) {
    use der::{Decode, Encode};
    use hsm_sim::rack::object::class_name;
    // CKA_LABEL and CKA_VALUE (PKCS#11 attribute type numbers).
    const CKA_LABEL: u64 = 0x03;
    const CKA_VALUE: u64 = 0x11;
    let handles: Vec<u64> = token
        .objects()
        .filter(|(_, o)| class_name(o.class()) == "CKO_CERTIFICATE")
        .map(|(h, _)| h)
        .collect();
    let now = std::time::SystemTime::now();
    let day = std::time::Duration::from_secs(86_400);
    for h in handles {
        let object = token.object_mut(h).unwrap();
        let label = std::str::from_utf8(object.get(CKA_LABEL).unwrap()).unwrap();
        let label: KeyLabel =
            serde_json::from_value(serde_json::Value::String(label.to_owned())).unwrap();
        let old = x509_cert::Certificate::from_der(object.get(CKA_VALUE).unwrap()).unwrap();
        let issued = ca
            .issue(&ukey_platform_sim::Issue {
                label,
                subject,
                subject_override: Some(old.tbs_certificate().subject().clone()),
                public_key: old.tbs_certificate().subject_public_key_info(),
                not_before: now - day * 30,
                not_after: now - day,
            })
            .unwrap();
        assert!(old.to_der().unwrap() != issued);
        object.set(CKA_VALUE, issued);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inventory_tells_each_tokens_state_on_insertion() {
    let mut station = Station::sim(10).await;
    station.start_agent().await;
    let (_, active) = produce(&station, 0, KeyAlgorithm::P256).await;

    let draft = JobDraft::new(JobKind::New, &station.station_id)
        .unwrap()
        .with_validity_days(10);
    let job = station.platform.dispatch_draft(&draft).await.unwrap();
    let expiring = TokenSerial::new(station.insert_blank(1)).unwrap();
    station
        .platform
        .wait_for_state(&job, ExecutionState::Succeeded, PRODUCTION_TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("{e}\n--- agent log ---\n{}", station.agent_log()));

    let (made, expired) = produce(&station, 2, KeyAlgorithm::P256).await;
    let subject = ukey_agent::steps::subject_data(&build_document(&station, &made));
    let ca = station.platform.ca();
    away_and_back(&station, 2, &expired, |t| {
        expire_certificates(t, ca, &subject)
    })
    .await;

    let (_, locked_user) = produce(&station, 3, KeyAlgorithm::P256).await;
    away_and_back(&station, 3, &locked_user, |t| lock(t, Who::User)).await;
    let (_, locked_so) = produce(&station, 4, KeyAlgorithm::P256).await;
    away_and_back(&station, 4, &locked_so, |t| lock(t, Who::So)).await;

    // A lost token, replaced by a new one in the same slot, comes back to the desk.
    let (_, lost) = produce(&station, 5, KeyAlgorithm::P256).await;
    station.rack().remove(5).unwrap();
    let draft = JobDraft::new(JobKind::Replace, &station.station_id)
        .unwrap()
        .with_old_token(lost.clone());
    station.produce(5, &draft).await;
    let lost_objects = station.objects(lost.as_str());
    station.reinsert(6, lost.as_str());

    let unfinished = TokenSerial::new(station.insert_blank(7)).unwrap();
    away_and_back(&station, 7, &unfinished, |t| {
        t.init_token(b"12345678", "UKEY ORD-UNFINISHED").unwrap()
    })
    .await;
    let foreign = TokenSerial::new(station.insert_blank(8)).unwrap();
    away_and_back(&station, 8, &foreign, |t| {
        t.init_token(b"12345678", "bank token").unwrap()
    })
    .await;
    let blank = TokenSerial::new(station.insert_blank(9)).unwrap();

    let expected = [
        (&active, TokenState::Active),
        (&expiring, TokenState::Expiring),
        (&expired, TokenState::Expired),
        (&locked_user, TokenState::LockedUser),
        (&locked_so, TokenState::LockedSo),
        (&lost, TokenState::Revoked),
        (&unfinished, TokenState::InProduction),
        (&foreign, TokenState::Foreign),
        (&blank, TokenState::Blank),
    ];
    let station_id = station.station_id.clone();
    let inventory = station
        .platform
        .wait_until(
            "every token's state in the inventory",
            PRODUCTION_TIMEOUT,
            |r| {
                let inventory = r.current_inventory(&station_id)?;
                let state = |serial: &TokenSerial| {
                    inventory
                        .slots
                        .iter()
                        .filter_map(|s| s.token.as_ref())
                        .find(|t| t.serial.as_ref() == Some(serial))
                        .map(|t| t.state)
                };
                expected
                    .iter()
                    .all(|(serial, want)| state(serial) == Some(*want))
                    .then(|| inventory.clone())
            },
        )
        .await
        .unwrap_or_else(|e| {
            panic!(
                "{e}\nlast inventory: {:#?}\n--- agent log ---\n{}",
                station.platform.snapshot().current_inventory(&station_id),
                station.agent_log()
            )
        });
    let info = |serial: &TokenSerial| {
        inventory
            .slots
            .iter()
            .filter_map(|s| s.token.as_ref())
            .find(|t| t.serial.as_ref() == Some(serial))
            .unwrap()
            .clone()
    };
    let now = time::OffsetDateTime::now_utc();
    let active = info(&active);
    assert_eq!(active.certificates.len(), 3, "each certificate's not-after");
    for c in &active.certificates {
        assert!(c.not_after > now + time::Duration::days(300), "{c:?}");
    }
    assert!(
        info(&expiring)
            .certificates
            .iter()
            .all(|c| c.not_after < now + time::Duration::days(11))
    );
    assert!(
        info(&expired)
            .certificates
            .iter()
            .all(|c| c.not_after < now)
    );
    assert!(
        info(&lost).job_id.is_none(),
        "no job runs on the revoked token"
    );
    assert_eq!(
        station.objects(lost.as_str()),
        lost_objects,
        "the revoked token is untouched"
    );
}

/// The job document the platform made for `draft`'s order (subject data for re-issuing).
fn build_document(station: &Station, draft: &JobDraft) -> ukey_protocol::job::JobDocument {
    let job = station.platform.job(draft).unwrap();
    job.document
}

/// The token label the agent writes for an order: `UKEY ` and the order number, 32 bytes at
/// most.
fn label_for(draft: &JobDraft) -> String {
    let mut label = String::from("UKEY ");
    for c in draft.order.order_number.chars() {
        if label.len() + c.len_utf8() > 32 {
            break;
        }
        label.push(c);
    }
    label
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renew_and_unlock_on_softhsm() {
    let mut station = Station::softhsm().await;
    station.start_agent().await;
    let made = JobDraft::new(JobKind::New, &station.station_id).unwrap();
    let job = station.platform.dispatch_draft(&made).await.unwrap();
    let record = station
        .platform
        .wait_for_state(&job, ExecutionState::Succeeded, PRODUCTION_TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("{e}\n--- agent log ---\n{}", station.agent_log()));
    let serial = record.token_serial().cloned().unwrap();
    let label = label_for(&made);
    let certificates = |station: &Station| {
        let (ok, out) = pkcs11_tool(
            station,
            &["--token-label", &label, "--list-objects", "--type", "cert"],
        );
        assert!(ok, "{out}");
        out
    };
    let before = certificates(&station);
    assert_eq!(before.matches("Certificate Object").count(), 3, "{before}");

    // SoftHSM2 writes the renewed certificates (public objects) without a user login.
    let renew = dispatch_targeted(&station, JobKind::Renew, &made, &serial).await;
    let last = finished(&station, &renew).await;
    assert_eq!(
        last.state,
        ExecutionState::Succeeded,
        "{last:?}\n{}",
        station.agent_log()
    );
    let after = certificates(&station);
    assert_eq!(after.matches("Certificate Object").count(), 3, "{after}");
    assert_ne!(before, after, "new certificate objects");

    // SoftHSM2 never locks a PIN, but the SO still sets a new one.
    let old_pin = station.platform.user_pin(&serial).unwrap();
    let unlock = dispatch_targeted(&station, JobKind::Unlock, &made, &serial).await;
    let last = finished(&station, &unlock).await;
    assert_eq!(
        last.state,
        ExecutionState::Succeeded,
        "{last:?}\n{}",
        station.agent_log()
    );
    let new_pin = station.platform.user_pin(&serial).unwrap();
    assert_ne!(new_pin.expose_secret(), old_pin.expose_secret());
    let (ok, out) = pkcs11_tool(
        &station,
        &[
            "--token-label",
            &label,
            "--login",
            "--pin",
            new_pin.expose_secret(),
            "--list-objects",
            "--type",
            "privkey",
        ],
    );
    assert!(ok, "{out}");
    assert_eq!(out.matches("Private Key Object").count(), 3, "{out}");
    no_pin_in_log(&station, &new_pin);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn change_with_rekey_survives_a_crash_after_the_token_was_wiped() {
    let mut station = Station::sim(1).await;
    station.start_agent().await;
    let (made, serial) = produce(&station, 0, KeyAlgorithm::P256).await;
    let dir = tempfile::tempdir().unwrap();
    let old = read_certificate(&station, &serial, "seal-official", dir.path(), "old");
    let old_fingerprint = key_fingerprint(&old);

    // Key generation is slow: the agent dies after `initialize` wiped the token.
    station
        .rack()
        .set_latency(Some(0), LatencyChange::Op(Op::KeygenP256, 3000))
        .unwrap();
    let draft = JobDraft::new(JobKind::Change, &station.station_id)
        .unwrap()
        .with_order(made.order.renamed().unwrap())
        .with_target(serial.clone())
        .with_rekey();
    let job = station.platform.dispatch_draft(&draft).await.unwrap();
    station
        .platform
        .wait_for(&job, |r| r.has_step(Step::Initialize), PRODUCTION_TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("{e}\n--- agent log ---\n{}", station.agent_log()));
    station.kill_agent();
    assert_eq!(station.objects(serial.as_str()).certificates, 0, "wiped");
    station
        .rack()
        .set_latency(Some(0), LatencyChange::ClearOp(Op::KeygenP256))
        .unwrap();
    station.start_agent().await;
    let last = finished(&station, &job).await;
    assert_eq!(
        last.state,
        ExecutionState::Succeeded,
        "{last:?}\n{}",
        station.agent_log()
    );
    let count = station.objects(serial.as_str());
    assert_eq!(
        (count.private_keys, count.public_keys, count.certificates),
        (3, 3, 3)
    );
    let new = read_certificate(&station, &serial, "seal-official", dir.path(), "new");
    assert_ne!(key_fingerprint(&new), old_fingerprint);
    let pin = station.platform.user_pin(&serial).unwrap();
    assert_eq!(private_keys_seen_with(&station, &serial, &pin), 3);
}
