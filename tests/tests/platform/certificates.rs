//! The simulated platform's test CA over a real Mosquitto: a test station sends CSR bundles
//! built from software keys and checks what comes back with the agent's certificate checks and
//! with `openssl verify`; requests that do not fit the job are refused with a code; each
//! certificate misbehaviour produces exactly the fault it names.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::platform_station;

use std::time::SystemTime;

use platform_station::{
    SoftKey, SoftToken, Station, WAIT, openssl_req_verify, openssl_verify, openssl_verify_chain,
    platform, stranger, subject_of,
};
use ukey_agent::certs::CertError;
use ukey_platform_sim::{CaAlgorithm, JobDraft, KeyOptions, Misbehaviour, RejectionCode, Times};
use ukey_protocol::{
    Base64Bytes, CertOutcome, CertResponse, CertificateRequest, CsrBundle, JobDocument, JobKind,
    KeyAlgorithm, KeyLabel, SignerId, V1,
};

/// Issued certificates by label (DER) and the CA chain (DER).
type Issued = (Vec<(KeyLabel, Vec<u8>)>, Vec<Vec<u8>>);

fn issued(response: &CertResponse) -> Issued {
    match &response.outcome {
        CertOutcome::Issued(bundle) => (
            bundle
                .certificates
                .iter()
                .map(|c| (c.label, c.certificate.as_bytes().to_vec()))
                .collect(),
            bundle
                .ca_chain
                .iter()
                .map(|c| c.as_bytes().to_vec())
                .collect(),
        ),
        CertOutcome::Rejected(r) => panic!("rejected: {} {}", r.code, r.reason),
    }
}

fn rejected_code(response: &CertResponse) -> String {
    match &response.outcome {
        CertOutcome::Rejected(r) => r.code.to_string(),
        CertOutcome::Issued(_) => panic!("issued, expected a rejection"),
    }
}

/// Dispatches a `new` job of `alg`, receives and verifies it at the station.
async fn new_job(
    platform: &ukey_platform_sim::Platform,
    station: &mut Station,
    alg: KeyAlgorithm,
) -> JobDocument {
    let draft = JobDraft::new(JobKind::New, &station.id)
        .unwrap()
        .with_algorithm(alg);
    let job_id = platform.dispatch_draft(&draft).await.unwrap();
    let job = station.next_verified_job().await;
    assert_eq!(job.job_id, job_id);
    job
}

/// The full issuance path for one CA and key algorithm, checked by the agent and by openssl.
async fn issues_verified_certificates(ca: CaAlgorithm, alg: KeyAlgorithm) {
    let broker = ukey_tests::Mosquitto::start();
    let options = KeyOptions {
        ca,
        ..KeyOptions::default()
    };
    let platform = platform(&broker, options).await;
    assert_eq!(platform.ca().algorithm(), ca);
    let mut station = Station::connect(&broker, &platform).await;
    let job = new_job(&platform, &mut station, alg).await;
    let token = SoftToken::for_job("SIM0001", &job);
    let bundle = token.csr_bundle(&job);
    for request in &bundle.requests {
        let csr = request.csr.as_ref().unwrap().as_bytes();
        let (passed, text) =
            openssl_req_verify(csr, &job.signer_id(request.label), station.dir.path());
        assert!(passed, "openssl req -verify {}: {text}", request.label);
    }
    station.send_bundle(&bundle).await;
    let response = station.next_certs().await;
    assert_eq!(response.job_id, job.job_id);
    let (certs, chain) = issued(&response);
    assert_eq!(chain.len(), 1);
    assert_eq!(chain[0], platform.ca().certificate_der());
    assert_eq!(certs.len(), 3);
    for (label, der) in &certs {
        let key = token.key(*label).spki();
        let ok = station.verify(*label, der, &chain, &key, &job).unwrap();
        let days = ok
            .not_after()
            .duration_since(SystemTime::now())
            .unwrap()
            .as_secs()
            / 86_400;
        assert!((363..=365).contains(&days), "{label}: {days} days");
        let (passed, text) = openssl_verify(&station.trust.ca_certs[0], der, station.dir.path());
        assert!(passed, "openssl verify {label}: {text}");
    }
    // The platform recorded the bundle and what it issued.
    let record = platform.job_record(&job.job_id).unwrap();
    assert_eq!(record.csr_bundles(), &[bundle]);
    assert_eq!(record.issued().unwrap().len(), 3);
}

#[tokio::test]
async fn p256_ca_issues_certificates_the_agent_and_openssl_accept() {
    issues_verified_certificates(CaAlgorithm::P256, KeyAlgorithm::P256).await;
}

#[tokio::test]
async fn rsa_ca_issues_rsa_certificates_the_agent_and_openssl_accept() {
    issues_verified_certificates(CaAlgorithm::Rsa2048, KeyAlgorithm::Rsa2048).await;
}

#[tokio::test]
async fn sm2_ca_issues_sm2_certificates_the_agent_and_openssl_accept() {
    // CSRs made by the agent's SM2 code with software keys, issued by the platform's SM2 CA,
    // accepted by the agent's checks and by OpenSSL (`req -verify`, `verify`).
    issues_verified_certificates(CaAlgorithm::Sm2, KeyAlgorithm::Sm2).await;
}

#[tokio::test]
async fn an_sm2_csr_is_checked_with_the_signer_id_its_job_names() {
    let ca = ukey_platform_sim::TestCa::generate(CaAlgorithm::Sm2, "SM2 Unit CA").unwrap();
    let station = ukey_protocol::StationId::new("desk-01").unwrap();
    let draft = JobDraft::new(JobKind::New, &station)
        .unwrap()
        .with_algorithm(KeyAlgorithm::Sm2);
    let mut job =
        ukey_platform_sim::build_job(&draft, time::OffsetDateTime::now_utc(), None).unwrap();
    let label = KeyLabel::SealOfficial;
    let id = SignerId::new("seal@example.cn").unwrap();
    for spec in &mut job.keys {
        if spec.label == label {
            spec.signer_id = Some(id);
        }
    }
    let subject = subject_of(&job).subject(label).unwrap();
    let dir = tempfile::tempdir().unwrap();

    // Signed with the job's ID: the platform and OpenSSL accept it.
    let key = SoftKey::with_signer_id(KeyAlgorithm::Sm2, id);
    let csr = key.csr(&subject);
    assert_eq!(ca.check_csr(&job, label, &csr).unwrap(), key.spki());
    let (passed, text) = openssl_req_verify(&csr, &id, dir.path());
    assert!(passed, "{text}");
    let (passed, _) = openssl_req_verify(&csr, &SignerId::DEFAULT, dir.path());
    assert!(!passed, "OpenSSL accepted the CSR with the default ID");

    // Signed with the default ID while the job names another: refused, the reason names the
    // ID it was checked with.
    let default_key = SoftKey::new(KeyAlgorithm::Sm2);
    let r = ca
        .check_csr(&job, label, &default_key.csr(&subject))
        .unwrap_err();
    assert_eq!(r.code.as_str(), "csr-bad-signature", "{}", r.reason);
    assert!(r.reason.contains("seal@example.cn"), "{}", r.reason);

    // Another label of the same job has no ID named: the default one.
    let legal = KeyLabel::SealLegal;
    let csr = default_key.csr(&subject_of(&job).subject(legal).unwrap());
    assert_eq!(ca.check_csr(&job, legal, &csr).unwrap(), default_key.spki());

    // A P-256 key where the job asks for SM2.
    let p256 = SoftKey::new(KeyAlgorithm::P256);
    let r = ca.check_csr(
        &job,
        legal,
        &p256.csr(&subject_of(&job).subject(legal).unwrap()),
    );
    assert_eq!(r.unwrap_err().code.as_str(), "csr-key-mismatch");
}

#[tokio::test]
async fn an_sm2_chain_through_an_intermediate_is_accepted_by_the_agent_and_openssl() {
    let root = ukey_platform_sim::TestCa::generate(CaAlgorithm::Sm2, "SM2 Root CA").unwrap();
    let issuing = root
        .intermediate(CaAlgorithm::Sm2, "SM2 Issuing CA")
        .unwrap();
    let station = ukey_protocol::StationId::new("desk-01").unwrap();
    let draft = JobDraft::new(JobKind::New, &station)
        .unwrap()
        .with_algorithm(KeyAlgorithm::Sm2);
    let job = ukey_platform_sim::build_job(&draft, time::OffsetDateTime::now_utc(), None).unwrap();
    let data = subject_of(&job);
    let dir = tempfile::tempdir().unwrap();
    let root_pem = dir.path().join("root.pem");
    std::fs::write(&root_pem, root.certificate_pem().unwrap()).unwrap();
    let anchors = ukey_agent::certs::TrustAnchors::from_der([root.certificate_der()]).unwrap();
    let chain = vec![issuing.certificate_der().to_vec()];
    let (not_before, not_after) =
        ukey_platform_sim::Issue::window(SystemTime::now(), job.validity_days);
    for label in KeyLabel::ALL {
        let key = SoftKey::new(KeyAlgorithm::Sm2);
        let csr = key.csr(&data.subject(label).unwrap());
        let spki = issuing.check_csr(&job, label, &csr).unwrap();
        let der = issuing
            .issue(&ukey_platform_sim::Issue {
                label,
                subject: &data,
                subject_override: None,
                public_key: &spki,
                not_before,
                not_after,
            })
            .unwrap();
        let expected = ukey_agent::certs::Expected {
            label,
            token_key: &spki,
            subject: &data,
            validity_days: job.validity_days,
        };
        let policy = ukey_agent::certs::ValidityPolicy::default();
        let verify = |intermediates: &[Vec<u8>]| {
            ukey_agent::certs::verify_certificate(
                &der,
                intermediates,
                &expected,
                &anchors,
                &policy,
                SystemTime::now(),
            )
        };
        verify(&chain).unwrap();
        let (passed, text) = openssl_verify_chain(&root_pem, &chain, &der, dir.path());
        assert!(passed, "openssl verify {label}: {text}");
        // Without the intermediate neither accepts it.
        assert!(matches!(verify(&[]), Err(CertError::UnknownIssuer { .. })));
        let (passed, _) = openssl_verify(&root_pem, &der, dir.path());
        assert!(!passed, "openssl accepted {label} without its intermediate");
    }
}

#[tokio::test]
async fn requests_that_do_not_fit_the_job_are_refused_with_a_code() {
    let ca = ukey_platform_sim::TestCa::generate(CaAlgorithm::P256, "Unit CA").unwrap();
    let station = ukey_protocol::StationId::new("desk-01").unwrap();
    let draft = JobDraft::new(JobKind::New, &station).unwrap();
    let job = ukey_platform_sim::build_job(&draft, time::OffsetDateTime::now_utc(), None).unwrap();
    let data = subject_of(&job);
    let key = SoftKey::new(KeyAlgorithm::P256);
    let label = KeyLabel::SealLegal;

    // The right CSR passes and yields the CSR's key.
    let good = key.csr(&data.subject(label).unwrap());
    assert_eq!(ca.check_csr(&job, label, &good).unwrap(), key.spki());

    // Another label's subject (the company instead of the legal representative).
    let wrong = key.csr(&data.subject(KeyLabel::SealOfficial).unwrap());
    let r = ca.check_csr(&job, label, &wrong).unwrap_err();
    assert_eq!(r.code.as_str(), RejectionCode::CsrSubjectMismatch.as_str());
    assert!(r.reason.contains("seal-legal"), "{}", r.reason);

    // A key of another algorithm than the job asks for.
    let rsa_job = {
        let draft = draft.clone().with_algorithm(KeyAlgorithm::Rsa3072);
        ukey_platform_sim::build_job(&draft, time::OffsetDateTime::now_utc(), None).unwrap()
    };
    let r = ca
        .check_csr(
            &rsa_job,
            label,
            &key.csr(&subject_of(&rsa_job).subject(label).unwrap()),
        )
        .unwrap_err();
    assert_eq!(r.code.as_str(), "csr-key-mismatch");

    // A broken self-signature: flip a bit in the signature's last byte.
    let mut forged = good.clone();
    let last = forged.len() - 1;
    forged[last] ^= 0x01;
    let r = ca.check_csr(&job, label, &forged).unwrap_err();
    assert_eq!(r.code.as_str(), "csr-bad-signature", "{}", r.reason);

    // Garbage.
    let r = ca.check_csr(&job, label, b"not a csr").unwrap_err();
    assert_eq!(r.code.as_str(), "csr-malformed");

    // A renewal with a certificate from another CA, and one for another key.
    let other_ca = stranger();
    let (nb, na) = ukey_platform_sim::Issue::window(SystemTime::now(), 30);
    let issue = |ca: &ukey_platform_sim::TestCa, k: &SoftKey| {
        ca.issue(&ukey_platform_sim::Issue {
            label,
            subject: &data,
            subject_override: None,
            public_key: &k.spki(),
            not_before: nb,
            not_after: na,
        })
        .unwrap()
    };
    use der::Encode;
    let spki = key.spki().to_der().unwrap();
    let foreign = issue(&other_ca, &key);
    let r = ca.check_renewal(&job, label, &foreign, &spki).unwrap_err();
    assert_eq!(r.code.as_str(), "renewal-unknown-certificate");
    let ours = issue(&ca, &key);
    assert_eq!(
        ca.check_renewal(&job, label, &ours, &spki).unwrap(),
        key.spki()
    );
    let other_key = SoftKey::new(KeyAlgorithm::P256).spki().to_der().unwrap();
    let r = ca
        .check_renewal(&job, label, &ours, &other_key)
        .unwrap_err();
    assert_eq!(r.code.as_str(), "renewal-key-mismatch");
}

#[tokio::test]
async fn a_bundle_with_a_wrong_subject_gets_a_rejection_over_mqtt() {
    let broker = ukey_tests::Mosquitto::start();
    let platform = platform(&broker, KeyOptions::default()).await;
    let mut station = Station::connect(&broker, &platform).await;
    let job = new_job(&platform, &mut station, KeyAlgorithm::P256).await;
    let token = SoftToken::for_job("SIM0002", &job);
    let mut bundle = token.csr_bundle(&job);
    // The seal-legal CSR carries the company's subject.
    let subject = subject_of(&job).subject(KeyLabel::SealOfficial).unwrap();
    let csr = token.key(KeyLabel::SealLegal).csr(&subject);
    for r in &mut bundle.requests {
        if r.label == KeyLabel::SealLegal {
            r.csr = Some(Base64Bytes::new(csr.clone()));
        }
    }
    station.send_bundle(&bundle).await;
    let response = station.next_certs().await;
    assert_eq!(rejected_code(&response), "csr-subject-mismatch");
    // A bundle for a job the platform never dispatched.
    let mut unknown = token.csr_bundle(&job);
    unknown.job_id = ukey_protocol::JobId::new("J-not-ours").unwrap();
    station.send_bundle(&unknown).await;
    let response = station.next_certs().await;
    assert_eq!(response.job_id.as_str(), "J-not-ours");
    assert_eq!(rejected_code(&response), "unknown-job");
}

#[tokio::test]
async fn each_certificate_misbehaviour_produces_its_fault() {
    let broker = ukey_tests::Mosquitto::start();
    let platform = platform(&broker, KeyOptions::default()).await;
    let mut station = Station::connect(&broker, &platform).await;

    let cases = [
        Misbehaviour::CertificateForAnotherKey,
        Misbehaviour::WrongSubject,
        Misbehaviour::ExpiredCertificate,
        Misbehaviour::UnknownIssuer,
    ];
    for (i, misbehaviour) in cases.into_iter().enumerate() {
        let job = new_job(&platform, &mut station, KeyAlgorithm::P256).await;
        let token = SoftToken::for_job(&format!("SIM01{i:02}"), &job);
        platform.misbehave(misbehaviour, Times::Once);
        station.send_bundle(&token.csr_bundle(&job)).await;
        let (certs, chain) = issued(&station.next_certs().await);
        let results: Vec<(KeyLabel, Result<_, CertError>)> = certs
            .iter()
            .map(|(label, der)| {
                let key = token.key(*label).spki();
                (*label, station.verify(*label, der, &chain, &key, &job))
            })
            .collect();
        for (label, result) in &results {
            let ok = result.is_ok();
            match (misbehaviour, label) {
                (Misbehaviour::CertificateForAnotherKey, KeyLabel::SealOfficial) => assert!(
                    matches!(result, Err(CertError::PublicKeyMismatch { .. })),
                    "{result:?}"
                ),
                (Misbehaviour::WrongSubject, KeyLabel::SealLegal) => {
                    let Err(CertError::SubjectMismatch { found, .. }) = result else {
                        panic!("{result:?}")
                    };
                    assert!(
                        found.contains("CN=赵六") || found.contains("CN=钱六"),
                        "{found}"
                    );
                }
                (Misbehaviour::ExpiredCertificate, _) => {
                    assert!(
                        matches!(result, Err(CertError::Expired { .. })),
                        "{result:?}"
                    );
                }
                (Misbehaviour::UnknownIssuer, _) => {
                    // The stranger's self-signed root comes along as the chain. The agent's
                    // chain walk currently follows that self-signed certificate until its
                    // length limit (`ChainTooLong`) instead of stopping with `UnknownIssuer`;
                    // either way the certificate is refused.
                    assert!(
                        matches!(
                            result,
                            Err(CertError::UnknownIssuer { .. } | CertError::ChainTooLong { .. })
                        ),
                        "{result:?}"
                    );
                    // Without the chain, the issuer is plainly unknown.
                    let der = &certs.iter().find(|(l, _)| l == label).unwrap().1;
                    let key = token.key(*label).spki();
                    assert!(matches!(
                        station.verify(*label, der, &[], &key, &job),
                        Err(CertError::UnknownIssuer { .. })
                    ));
                }
                _ => assert!(ok, "{misbehaviour:?} {label}: {result:?}"),
            }
        }
        if misbehaviour == Misbehaviour::CertificateForAnotherKey {
            // The certificate is for another key than the CSR's.
            let der = &certs
                .iter()
                .find(|(l, _)| *l == KeyLabel::SealOfficial)
                .unwrap()
                .1;
            let cert = <x509_cert::Certificate as der::Decode>::from_der(der).unwrap();
            assert_ne!(
                cert.tbs_certificate().subject_public_key_info(),
                &token.key(KeyLabel::SealOfficial).spki()
            );
        }
        if misbehaviour == Misbehaviour::UnknownIssuer {
            let (passed, text) =
                openssl_verify(&station.trust.ca_certs[0], &certs[0].1, station.dir.path());
            assert!(!passed, "openssl accepted a stranger's certificate: {text}");
            assert_ne!(chain[0], platform.ca().certificate_der());
        }
        assert_eq!(
            platform.job_record(&job.job_id).unwrap().misbehaviours(),
            &[misbehaviour]
        );
        // Once means once, and a misbehaved answer is not repeated: the same bundle sent
        // again (RFC 6979 makes it the same bytes) gets good certificates.
        station.send_bundle(&token.csr_bundle(&job)).await;
        let (certs, chain) = issued(&station.next_certs().await);
        for (label, der) in &certs {
            station
                .verify(*label, der, &chain, &token.key(*label).spki(), &job)
                .unwrap();
        }
    }
}

#[tokio::test]
async fn reject_and_silence_misbehaviours() {
    let broker = ukey_tests::Mosquitto::start();
    let platform = platform(&broker, KeyOptions::default()).await;
    let mut station = Station::connect(&broker, &platform).await;

    platform.misbehave(Misbehaviour::RejectIssuance, Times::Once);
    let job = new_job(&platform, &mut station, KeyAlgorithm::P256).await;
    let token = SoftToken::for_job("SIM0300", &job);
    station.send_bundle(&token.csr_bundle(&job)).await;
    assert_eq!(
        rejected_code(&station.next_certs().await),
        "issuance-refused"
    );

    // Silence: the first bundle gets no answer; the same request sent again (a new bundle
    // with new CSRs) does. The station sees exactly one response, for the second.
    platform.misbehave(Misbehaviour::SilenceCertificates, Times::Once);
    let job = new_job(&platform, &mut station, KeyAlgorithm::P256).await;
    let token = SoftToken::for_job("SIM0301", &job);
    let first = token.csr_bundle(&job);
    station.send_bundle(&first).await;
    platform
        .wait_for(&job.job_id, |j| j.csr_bundles().len() == 1, WAIT)
        .await
        .unwrap();
    // The station sends its request again (RFC 6979 makes it the same bytes).
    station.send_bundle(&first).await;
    let (certs, _) = issued(&station.next_certs().await);
    assert_eq!(certs.len(), 3);
    let record = platform.job_record(&job.job_id).unwrap();
    assert_eq!(record.csr_bundles().len(), 2);
    assert_eq!(
        record.cert_responses().len(),
        1,
        "the first bundle was answered"
    );

    // The same bundle sent twice gets the same answer, not new certificates.
    let job = new_job(&platform, &mut station, KeyAlgorithm::P256).await;
    let token = SoftToken::for_job("SIM0302", &job);
    let bundle = token.csr_bundle(&job);
    station.send_bundle(&bundle).await;
    let a = station.next_certs().await;
    station.send_bundle(&bundle).await;
    let b = station.next_certs().await;
    assert_eq!(a, b);
}

#[tokio::test]
async fn renewal_requests_get_new_certificates_for_the_same_keys() {
    let broker = ukey_tests::Mosquitto::start();
    let platform = platform(&broker, KeyOptions::default()).await;
    let mut station = Station::connect(&broker, &platform).await;
    let job = new_job(&platform, &mut station, KeyAlgorithm::P256).await;
    let token = SoftToken::for_job("SIM0400", &job);
    station.send_bundle(&token.csr_bundle(&job)).await;
    let (first, _) = issued(&station.next_certs().await);

    // Renew: same order, the token named, current certificates and public keys.
    // (The job names the company and the representative; the platform's order also holds
    // people's numbers, which a job never carries: any will do here.)
    let mut order = ukey_platform_sim::Order::random().unwrap();
    order.order_number = job.order_number.clone();
    order.region = job.region.clone();
    order.enterprise = job.enterprise.clone();
    order.legal_representative.name = job.legal_representative.name.clone();
    let draft = JobDraft::new(JobKind::Renew, &station.id)
        .unwrap()
        .with_order(order)
        .with_target(token.serial.clone());
    platform.dispatch_draft(&draft).await.unwrap();
    let renew = station.next_verified_job().await;
    assert_eq!(renew.kind, JobKind::Renew);
    use der::Encode;
    let bundle = CsrBundle {
        v: V1,
        job_id: renew.job_id.clone(),
        token_serial: token.serial.clone(),
        requests: first
            .iter()
            .map(|(label, der)| CertificateRequest {
                label: *label,
                csr: None,
                current_certificate: Some(Base64Bytes::new(der.clone())),
                public_key: Some(Base64Bytes::new(token.key(*label).spki().to_der().unwrap())),
            })
            .collect(),
    };
    station.send_bundle(&bundle).await;
    let (renewed, chain) = issued(&station.next_certs().await);
    for (label, der) in &renewed {
        let old = &first.iter().find(|(l, _)| l == label).unwrap().1;
        assert_ne!(der, old, "{label}: a new certificate");
        station
            .verify(*label, der, &chain, &token.key(*label).spki(), &renew)
            .unwrap();
    }

    // From another token than the one named: refused.
    let mut wrong = bundle.clone();
    wrong.token_serial = ukey_protocol::TokenSerial::new("OTHER01").unwrap();
    station.send_bundle(&wrong).await;
    assert_eq!(rejected_code(&station.next_certs().await), "wrong-token");
}
