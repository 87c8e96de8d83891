//! A test "station" for the simulated platform's tests: a plain rumqttc client and the agent's
//! pure pieces (job verification from `ukey_protocol::signed`, certificate checks from
//! `ukey_agent::certs`), with software keys instead of a token. It reads its trust exactly from
//! the files the platform wrote, as the agent's `[trust]` configuration would.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime};

use der::{Decode, Encode, EncodePem};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, SubscribeFilter};
use time::OffsetDateTime;
use tokio::sync::mpsc;
use ukey_agent::certs::{CertError, Expected, TrustAnchors, ValidityPolicy, VerifiedCertificate};
use ukey_platform_sim::{KeyOptions, KeySource, Platform, PlatformConfig, StationTrust, TestCa};
use ukey_protocol::codec::Message;
use ukey_protocol::profile::SubjectData;
use ukey_protocol::{
    Base64Bytes, CertResponse, CertificateRequest, CsrBundle, EventId, ExecutionState, JobDocument,
    JobEnvelope, JobId, JobKeyring, JobVerifyingKey, KeyAlgorithm, KeyLabel, SealRecipient,
    SignerId, StationId, Step, StepData, StepEvent, TokenSerial, Topic, Topics, UnsealKey, V1,
    verify_platform_message,
};
use x509_cert::builder::{Builder, RequestBuilder};
use x509_cert::name::Name;
use x509_cert::spki::SubjectPublicKeyInfoOwned;

pub const WAIT: Duration = Duration::from_secs(20);

/// A platform on `broker` for one station `desk-01`, with a CA of `ca`.
pub async fn platform(broker: &ukey_tests::Mosquitto, options: KeyOptions) -> Platform {
    let mut config = PlatformConfig::new("127.0.0.1", broker.port(), station_id());
    config.keys = KeySource::Generate(options);
    Platform::start(config).await.unwrap()
}

pub fn station_id() -> StationId {
    StationId::new("desk-01").unwrap()
}

/// A software key pair standing in for an on-token key.
pub enum SoftKey {
    P256(p256::ecdsa::SigningKey),
    Rsa(Box<rsa::pkcs1v15::SigningKey<sha2::Sha256>>),
    /// An SM2 key and the signer ID its CSRs are signed with.
    Sm2(Box<sm2::dsa::SigningKey>, SignerId),
}

impl SoftKey {
    pub fn new(alg: KeyAlgorithm) -> SoftKey {
        SoftKey::with_signer_id(alg, SignerId::DEFAULT)
    }

    /// A key of `alg`; an SM2 one signs with `signer_id`.
    pub fn with_signer_id(alg: KeyAlgorithm, signer_id: SignerId) -> SoftKey {
        match alg {
            KeyAlgorithm::P256 => {
                use p256::elliptic_curve::Generate;
                SoftKey::P256(p256::ecdsa::SigningKey::generate())
            }
            KeyAlgorithm::Sm2 => {
                use sm2::elliptic_curve::Generate;
                let secret = sm2::SecretKey::generate();
                let key = sm2::dsa::SigningKey::new(signer_id.as_str(), &secret).unwrap();
                SoftKey::Sm2(Box::new(key), signer_id)
            }
            other => {
                let bits = other.rsa_bits().unwrap();
                let key = rsa::PrivateKey::new(&mut rand::rng(), bits).unwrap();
                SoftKey::Rsa(Box::new(rsa::pkcs1v15::SigningKey::new(key)))
            }
        }
    }

    pub fn spki(&self) -> SubjectPublicKeyInfoOwned {
        match self {
            SoftKey::P256(k) => SubjectPublicKeyInfoOwned::from_key(k.verifying_key()).unwrap(),
            SoftKey::Rsa(k) => {
                SubjectPublicKeyInfoOwned::from_key(&signature::Keypair::verifying_key(k.as_ref()))
                    .unwrap()
            }
            SoftKey::Sm2(k, _) => SubjectPublicKeyInfoOwned::from_key(k.verifying_key()).unwrap(),
        }
    }

    /// A PKCS#10 CSR (DER) for this key with `subject`. An SM2 CSR is made the way the agent
    /// makes it for an SKF token: the agent's draft gives the digest `SM3(Z ‖ M)`, the key
    /// signs that digest (as `SKF_ECCSignData` does), the draft assembles the request.
    pub fn csr(&self, subject: &Name) -> Vec<u8> {
        if let SoftKey::Sm2(k, id) = self {
            use sm2::dsa::signature::hazmat::PrehashSigner;
            use ukey_agent::certs::sm2::{Sm2CsrDraft, Sm2PublicKey, signature_der};
            let key = Sm2PublicKey::from_spki(&self.spki()).unwrap();
            let draft = Sm2CsrDraft::new(subject, &key, *id).unwrap();
            let signature: sm2::dsa::Signature = k.sign_prehash(&draft.digest()).unwrap();
            let der = signature_der(&signature.r_bytes(), &signature.s_bytes()).unwrap();
            return draft.assemble(&der).unwrap();
        }
        let builder = RequestBuilder::new(subject.clone()).unwrap();
        let csr = match self {
            SoftKey::P256(k) => builder.build::<_, p256::ecdsa::DerSignature>(k).unwrap(),
            SoftKey::Rsa(k) => builder
                .build::<_, rsa::pkcs1v15::Signature>(k.as_ref())
                .unwrap(),
            SoftKey::Sm2(..) => unreachable!("handled above"),
        };
        csr.to_der().unwrap()
    }
}

/// The subject data of a job, taken from the job as the agent does.
pub fn subject_of(job: &JobDocument) -> SubjectData {
    SubjectData {
        company_name: job.enterprise.name.clone(),
        credit_code: job.enterprise.credit_code.as_str().to_owned(),
        legal_representative: job.legal_representative.name.clone(),
    }
}

/// Three software keys of the job's algorithms, by label.
pub struct SoftToken {
    pub serial: TokenSerial,
    pub keys: Vec<(KeyLabel, SoftKey)>,
}

impl SoftToken {
    pub fn for_job(serial: &str, job: &JobDocument) -> SoftToken {
        SoftToken {
            serial: TokenSerial::new(serial).unwrap(),
            keys: KeyLabel::ALL
                .into_iter()
                .map(|l| {
                    let key = SoftKey::with_signer_id(job.key_spec(l).unwrap(), job.signer_id(l));
                    (l, key)
                })
                .collect(),
        }
    }

    pub fn key(&self, label: KeyLabel) -> &SoftKey {
        &self.keys.iter().find(|(l, _)| *l == label).unwrap().1
    }

    /// The CSR bundle for `job` with the profile subjects.
    pub fn csr_bundle(&self, job: &JobDocument) -> CsrBundle {
        let data = subject_of(job);
        CsrBundle {
            v: V1,
            job_id: job.job_id.clone(),
            token_serial: self.serial.clone(),
            requests: self
                .keys
                .iter()
                .map(|(label, key)| CertificateRequest {
                    label: *label,
                    csr: Some(Base64Bytes::new(key.csr(&data.subject(*label).unwrap()))),
                    current_certificate: None,
                    public_key: None,
                })
                .collect(),
        }
    }
}

/// The test station.
pub struct Station {
    pub id: StationId,
    pub topics: Topics,
    pub client: AsyncClient,
    pub trust: StationTrust,
    pub keyring: JobKeyring,
    pub anchors: TrustAnchors,
    pub station_key: UnsealKey,
    pub platform_recipient: SealRecipient,
    pub dir: tempfile::TempDir,
    incoming: mpsc::UnboundedReceiver<(String, Vec<u8>)>,
    seq: u64,
}

impl Station {
    /// Writes the station's trust files through the platform, reads them back, connects to
    /// the broker and subscribes to the station's topics.
    pub async fn connect(broker: &ukey_tests::Mosquitto, platform: &Platform) -> Station {
        let id = station_id();
        let dir = tempfile::tempdir().unwrap();
        let trust = platform.write_station_trust(&id, dir.path()).unwrap();
        let read = |p: &Path| std::fs::read_to_string(p).unwrap();
        let keyring = JobKeyring::single(
            trust.job_key_id.clone(),
            JobVerifyingKey::from_public_key_pem(&read(&trust.platform_signing_key)).unwrap(),
        );
        let anchors = TrustAnchors::from_pem(&read(&trust.ca_certs[0])).unwrap();
        let station_key = UnsealKey::from_pkcs8_pem(&read(&trust.station_key)).unwrap();
        let platform_recipient =
            SealRecipient::from_public_key_pem(&read(&trust.platform_sealing_key)).unwrap();
        let topics = Topics::new(ukey_protocol::DEFAULT_PREFIX, &id).unwrap();

        let mut options = MqttOptions::new(
            format!("test-station-{}", std::process::id()),
            "127.0.0.1",
            broker.port(),
        );
        options
            .set_keep_alive(Duration::from_secs(10))
            .set_max_packet_size(256 * 1024, 256 * 1024);
        let (client, mut eventloop) = AsyncClient::new(options, 64);
        let (tx, incoming) = mpsc::unbounded_channel();
        let (subscribed_tx, subscribed) = tokio::sync::oneshot::channel();
        let filters: Vec<SubscribeFilter> = topics
            .station_subscriptions()
            .into_iter()
            .map(|f| SubscribeFilter::new(f, QoS::AtLeastOnce))
            .collect();
        client.subscribe_many(filters).await.unwrap();
        tokio::spawn(async move {
            let mut subscribed_tx = Some(subscribed_tx);
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        if let Some(tx) = subscribed_tx.take() {
                            let _ = tx.send(());
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        if tx.send((p.topic, p.payload.to_vec())).is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(e) => panic!("test station lost the broker: {e}"),
                }
            }
        });
        tokio::time::timeout(WAIT, subscribed)
            .await
            .unwrap()
            .unwrap();
        Station {
            id,
            topics,
            client,
            trust,
            keyring,
            anchors,
            station_key,
            platform_recipient,
            dir,
            incoming,
            seq: 0,
        }
    }

    /// The next message on a station topic that `want` accepts; other messages are skipped.
    pub async fn next_where(&mut self, want: impl Fn(&Topic) -> bool) -> (Topic, Vec<u8>) {
        loop {
            let (topic, payload) = tokio::time::timeout(WAIT, self.incoming.recv())
                .await
                .expect("nothing arrived at the station in time")
                .expect("the station's event loop ended");
            let topic = self.topics.parse(&topic).unwrap();
            if want(&topic) {
                return (topic, payload);
            }
        }
    }

    /// The next signed job.
    pub async fn next_job(&mut self) -> JobEnvelope {
        let (_, payload) = self.next_where(|t| *t == Topic::Jobs).await;
        JobEnvelope::decode(&payload).unwrap()
    }

    /// The next job, verified as the agent verifies it.
    pub async fn next_verified_job(&mut self) -> JobDocument {
        let envelope = self.next_job().await;
        envelope
            .verify(&self.keyring, &self.id, OffsetDateTime::now_utc())
            .unwrap()
    }

    /// The next certificate response, verified as the agent verifies it.
    pub async fn next_certs(&mut self) -> CertResponse {
        let (topic, payload) = self.next_where(|t| matches!(t, Topic::JobCerts(_))).await;
        let response =
            verify_platform_message::<CertResponse>(&payload, &self.keyring, &self.id).unwrap();
        assert_eq!(topic.job_id(), Some(&response.job_id));
        response
    }

    /// The next ack's event ids, verified as the agent verifies them.
    pub async fn next_ack(&mut self) -> Vec<EventId> {
        let (_, payload) = self.next_where(|t| *t == Topic::Acks).await;
        verify_platform_message::<ukey_protocol::Ack>(&payload, &self.keyring, &self.id)
            .unwrap()
            .event_ids
    }

    pub async fn publish(&self, topic: String, payload: Vec<u8>) {
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload)
            .await
            .unwrap();
    }

    pub async fn send_bundle(&self, bundle: &CsrBundle) {
        self.publish(
            self.topics.job_csr(&bundle.job_id),
            bundle.encode().unwrap(),
        )
        .await;
    }

    /// A step event of `job` with the next sequence number.
    pub fn event(
        &mut self,
        job: &JobId,
        step: Step,
        state: ExecutionState,
        serial: Option<&TokenSerial>,
        data: Option<StepData>,
    ) -> StepEvent {
        self.seq += 1;
        StepEvent {
            v: V1,
            event_id: EventId::new(format!("E-{}-{}", job, self.seq)).unwrap(),
            job_id: job.clone(),
            seq: self.seq,
            step,
            state,
            token_serial: serial.cloned(),
            error: None,
            data,
            started_at: None,
            at: OffsetDateTime::now_utc(),
        }
    }

    pub async fn send_event(&self, event: &StepEvent) {
        self.publish(
            self.topics.job_events(&event.job_id),
            event.encode().unwrap(),
        )
        .await;
    }

    /// Checks `der` for `label` as the agent does before writing it.
    pub fn verify(
        &self,
        label: KeyLabel,
        der: &[u8],
        chain: &[Vec<u8>],
        key: &SubjectPublicKeyInfoOwned,
        job: &JobDocument,
    ) -> Result<VerifiedCertificate, CertError> {
        let data = subject_of(job);
        ukey_agent::certs::verify_certificate(
            der,
            chain,
            &Expected {
                label,
                token_key: key,
                subject: &data,
                validity_days: job.validity_days,
            },
            &self.anchors,
            &ValidityPolicy::default(),
            SystemTime::now(),
        )
    }
}

/// SM2-with-SM3 (1.2.156.10197.1.501).
const SM2_WITH_SM3: &str = "1.2.156.10197.1.501";

/// `openssl verify -CAfile ca` on a DER certificate; returns (success, output). For an
/// SM2-with-SM3 certificate the GM/T 0009 default signer ID is passed (`-vfyopt distid:`):
/// OpenSSL 3.0 hashes an empty ID otherwise.
pub fn openssl_verify(ca: &Path, der: &[u8], dir: &Path) -> (bool, String) {
    openssl_verify_one(ca, false, der, dir)
}

/// [`openssl_verify`] through `intermediates` (DER, the issuer of `der` first), one link at a
/// time: OpenSSL 3.0 applies `-vfyopt distid:` to the certificate it verifies only, not to
/// `-untrusted` ones, so an SM2 intermediate's signature would be checked with an empty ID.
/// Each certificate is verified against its issuer, an intermediate trusted with
/// `-partial_chain`; all links must pass.
pub fn openssl_verify_chain(
    ca: &Path,
    intermediates: &[Vec<u8>],
    der: &[u8],
    dir: &Path,
) -> (bool, String) {
    let mut text = String::new();
    let mut issuer = ca.to_path_buf();
    // From the top: the last intermediate is issued by the CA.
    for (i, cert) in intermediates.iter().rev().enumerate() {
        let (passed, out) = openssl_verify_one(&issuer, i > 0, cert, dir);
        text.push_str(&out);
        if !passed {
            return (false, text);
        }
        let c = x509_cert::Certificate::from_der(cert).unwrap();
        issuer = dir.join(format!(
            "issuer-{}.pem",
            hex::encode(&cert[cert.len() - 8..])
        ));
        std::fs::write(&issuer, c.to_pem(der::pem::LineEnding::LF).unwrap()).unwrap();
    }
    let (passed, out) = openssl_verify_one(&issuer, !intermediates.is_empty(), der, dir);
    text.push_str(&out);
    (passed, text)
}

/// `openssl verify -CAfile issuer` of one DER certificate (`-partial_chain` when the issuer is
/// not a root), with the GM/T default ID for an SM2-with-SM3 one.
fn openssl_verify_one(issuer: &Path, partial: bool, der: &[u8], dir: &Path) -> (bool, String) {
    let openssl = ukey_tests::require_tool("openssl");
    let cert = x509_cert::Certificate::from_der(der).unwrap();
    let path = dir.join(format!("leaf-{}.pem", hex::encode(&der[der.len() - 8..])));
    std::fs::write(&path, cert.to_pem(der::pem::LineEnding::LF).unwrap()).unwrap();
    let mut command = Command::new(openssl);
    command.arg("verify").arg("-CAfile").arg(issuer);
    if partial {
        command.arg("-partial_chain");
    }
    if cert.signature_algorithm().oid.to_string() == SM2_WITH_SM3 {
        command
            .arg("-vfyopt")
            .arg(format!("distid:{}", SignerId::DEFAULT));
    }
    let out = command.arg(&path).output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success() && text.contains(": OK"), text)
}

/// `openssl req -verify` of a DER CSR, with `-vfyopt distid:` for an SM2 one; returns
/// (success, output).
pub fn openssl_req_verify(der: &[u8], signer_id: &SignerId, dir: &Path) -> (bool, String) {
    let openssl = ukey_tests::require_tool("openssl");
    let path = dir.join(format!("csr-{}.der", hex::encode(&der[der.len() - 8..])));
    std::fs::write(&path, der).unwrap();
    let csr = x509_cert::request::CertReq::from_der(der).unwrap();
    let mut command = Command::new(openssl);
    command
        .args(["req", "-inform", "DER", "-noout", "-verify", "-in"])
        .arg(&path);
    if csr.algorithm.oid.to_string() == SM2_WITH_SM3 {
        command.arg("-vfyopt").arg(format!("distid:{signer_id}"));
    }
    let out = command.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success() && text.contains("verify OK"), text)
}

/// A CA that is not the platform's, for building certificates the platform never issued.
pub fn stranger() -> TestCa {
    TestCa::generate(ukey_platform_sim::CaAlgorithm::P256, "Elsewhere CA").unwrap()
}
