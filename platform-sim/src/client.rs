//! The simulated platform's MQTT client: it dispatches signed jobs, acknowledges and records
//! step events, answers CSR bundles with certificates from its test CA, cancels jobs on
//! request, unseals the PINs of bind reports, and records presence and inventory. Everything
//! it sends a station (jobs, acks, certificate responses, cancels) is signed with its job key
//! ([`ukey_protocol::sign_platform_message`]), unless a misbehaviour says otherwise.
//!
//! Two tasks: one polls rumqttc's event loop without pause and forwards what arrives over an
//! unbounded channel (so the loop never waits for the platform's work); one handles those
//! messages and publishes the answers (QoS 1). Tests wait on the records with
//! [`Platform::wait_until`] and friends, which wake on every change (a `watch` channel), never
//! on a timer.
//!
//! What a station may not have received is published again ([`crate::redeliver`]): jobs it
//! has not reported on, certificate responses it has not gone past, cancels of jobs that
//! have not ended, on every presence birth of the station, every
//! [`PlatformConfig::redeliver_every`], and after the broker lost the platform's own session.
//!
//! Not a real platform: no database (everything is in memory and lost at drop), no ACLs, no
//! revocation.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use crate::verify::key_algorithm;
use p256::elliptic_curve::Generate;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, SubscribeFilter, SubscribeReasonCode};
use secrecy::SecretString;
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use ukey_protocol::codec::Message;
use ukey_protocol::profile::SubjectData;
use ukey_protocol::topic::parse_any_station;
use ukey_protocol::{
    Ack, Base64Bytes, Cancel, CertBundle, CertOutcome, CertResponse, CsrBundle, ExecutionState,
    Inventory, IssuedCertificate, JobDocument, JobEnvelope, JobId, JobKind, KeyAlgorithm, KeyLabel,
    Presence, PresenceStatus, SealContext, SealPurpose, SealedSecret, StationId, Step, StepData,
    StepEvent, Topic, Topics, V1, sign_platform_message,
};
use x509_cert::spki::SubjectPublicKeyInfoOwned;

use super::ca::{Issue, RejectionCode, TestCa, rejection, subject_data};
use super::error::PlatformError;
use super::jobs::{JobDraft, build_job, sign};
use super::keys::{KeyOptions, PlatformKeys, StationTrust};
use super::misbehave::{Armed, Misbehaviour, Times};
use super::records::{JobRecord, Records, TokenRecord};
use super::redeliver::Owed;

/// The largest MQTT packet the platform sends or accepts (both ways): the protocol's 64 KiB
/// bound plus room for the topic, with margin.
pub const MAX_PACKET_BYTES: usize = 256 * 1024;

/// Where the platform's keys come from.
#[derive(Debug, Clone)]
pub enum KeySource {
    /// Fresh keys in memory.
    Generate(KeyOptions),
    /// Keys loaded from a folder, generated and written there when missing
    /// ([`PlatformKeys::load_or_generate`]).
    Folder(PathBuf, KeyOptions),
    /// Keys made by the caller (e.g. shared by two platform instances).
    Given(Arc<PlatformKeys>),
}

/// How to start the simulated platform.
#[derive(Debug, Clone)]
pub struct PlatformConfig {
    /// Broker host.
    pub host: String,
    /// Broker port.
    pub port: u16,
    /// Topic prefix (default `ukey/v1`).
    pub prefix: String,
    /// The stations served: their presence, events, CSR bundles and inventory are subscribed
    /// to; messages of other stations are ignored.
    pub stations: Vec<StationId>,
    /// The keys.
    pub keys: KeySource,
    /// MQTT client id (default: `sim-platform-` and a random suffix).
    pub client_id: Option<String>,
    /// How long [`Platform::start`] waits for the broker to accept the subscriptions.
    pub connect_timeout: Duration,
    /// TLS with a client certificate (a broker that tells the platform from stations by
    /// certificate, as `deploy/mosquitto/` does). Default: plain TCP.
    pub tls: Option<PlatformTls>,
    /// How often the platform publishes again what its stations have not shown they
    /// received (besides on every presence birth); `None` only on births and reconnects.
    /// Default 30 s.
    pub redeliver_every: Option<Duration>,
}

/// The default of [`PlatformConfig::redeliver_every`].
pub const REDELIVER_EVERY: Duration = Duration::from_secs(30);

/// The files for a TLS connection with a client certificate (PEM).
#[derive(Debug, Clone)]
pub struct PlatformTls {
    /// CA certificate(s) the broker's certificate must chain to.
    pub ca_file: PathBuf,
    /// The platform's client certificate.
    pub client_cert: PathBuf,
    /// Its private key.
    pub client_key: PathBuf,
}

impl PlatformConfig {
    /// A configuration for one station on `host:port`, default prefix, fresh P-256 keys.
    pub fn new(host: impl Into<String>, port: u16, station: StationId) -> PlatformConfig {
        PlatformConfig {
            host: host.into(),
            port,
            prefix: ukey_protocol::DEFAULT_PREFIX.to_owned(),
            stations: vec![station],
            keys: KeySource::Generate(KeyOptions::default()),
            client_id: None,
            connect_timeout: Duration::from_secs(10),
            tls: None,
            redeliver_every: Some(REDELIVER_EVERY),
        }
    }
}

/// A job ready to dispatch: the document and its signed envelope.
#[derive(Debug, Clone)]
pub struct SignedJob {
    /// The job.
    pub document: JobDocument,
    /// The envelope as published.
    pub envelope: JobEnvelope,
}

impl SignedJob {
    /// The job id.
    pub fn job_id(&self) -> &JobId {
        &self.document.job_id
    }
}

/// What the event-loop task hands to the handler task.
enum Inbound {
    Connected { session_present: bool },
    Subscribed { ok: bool },
    Publish { topic: String, payload: Vec<u8> },
    Disconnected { error: String },
}

struct Shared {
    keys: Arc<PlatformKeys>,
    prefix: String,
    stations: Vec<StationId>,
    records: Mutex<Records>,
    changed: watch::Sender<u64>,
    armed: Armed,
    /// Certificate responses by SHA-256 of the CSR bundle payload: a re-sent bundle gets the
    /// same answer again, not new certificates.
    answered: Mutex<HashMap<[u8; 32], CertResponse>>,
    /// Connection state for `start`: `Some(true)` subscribed, `Some(false)` refused.
    subscribed: watch::Sender<Option<bool>>,
    last_error: Mutex<Option<String>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The data behind these locks stays consistent across a panic (plain inserts).
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Shared {
    fn records(&self) -> MutexGuard<'_, Records> {
        lock(&self.records)
    }

    fn update<T>(&self, f: impl FnOnce(&mut Records) -> T) -> T {
        let out = f(&mut self.records());
        self.changed.send_modify(|v| *v = v.wrapping_add(1));
        out
    }

    fn topics(&self, station: &StationId) -> Result<Topics, PlatformError> {
        Topics::new(&self.prefix, station).map_err(|e| PlatformError::protocol("topics", e))
    }

    fn serves(&self, station: &StationId) -> bool {
        self.stations.is_empty() || self.stations.contains(station)
    }
}

/// The simulated platform, connected to a broker. Dropping it stops its tasks.
pub struct Platform {
    shared: Arc<Shared>,
    client: AsyncClient,
    cancel: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Platform")
            .field("prefix", &self.shared.prefix)
            .field("stations", &self.shared.stations)
            .finish_non_exhaustive()
    }
}

impl Drop for Platform {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

impl Platform {
    /// Makes or loads the keys, connects to the broker, subscribes to the stations' topics
    /// and returns once the broker has confirmed the subscriptions.
    pub async fn start(config: PlatformConfig) -> Result<Platform, PlatformError> {
        let keys = match config.keys {
            KeySource::Generate(options) => {
                let keys =
                    tokio::task::spawn_blocking(move || PlatformKeys::generate(&options)).await;
                Arc::new(keys.map_err(|e| PlatformError::key("key generation task", e))??)
            }
            KeySource::Folder(dir, options) => {
                let keys = tokio::task::spawn_blocking(move || {
                    PlatformKeys::load_or_generate(&dir, &options)
                })
                .await;
                Arc::new(keys.map_err(|e| PlatformError::key("key generation task", e))??)
            }
            KeySource::Given(keys) => keys,
        };
        for station in &config.stations {
            Topics::new(&config.prefix, station)
                .map_err(|e| PlatformError::protocol("topic prefix", e))?;
        }
        let client_id = match config.client_id {
            Some(id) => id,
            None => format!(
                "sim-platform-{}",
                &uuid::Uuid::new_v4().simple().to_string()[..12]
            ),
        };
        let mut options = MqttOptions::new(client_id, config.host, config.port);
        options
            .set_keep_alive(Duration::from_secs(10))
            .set_clean_session(false)
            .set_max_packet_size(MAX_PACKET_BYTES, MAX_PACKET_BYTES);
        if let Some(tls) = &config.tls {
            // rumqttc builds its rustls configuration with the process-wide provider; an
            // error here means one is installed already, which is all that is needed.
            let _ = rustls::crypto::ring::default_provider().install_default();
            let read = |path: &PathBuf| std::fs::read(path).map_err(|e| PlatformError::io(path, e));
            options.set_transport(rumqttc::Transport::tls_with_config(
                rumqttc::TlsConfiguration::Simple {
                    ca: read(&tls.ca_file)?,
                    alpn: None,
                    client_auth: Some((read(&tls.client_cert)?, read(&tls.client_key)?)),
                },
            ));
        }
        let (client, mut eventloop) = AsyncClient::new(options, 64);
        // No Nagle delay on small request/answer packets (see the agent's link).
        let mut network = eventloop.network_options();
        network.set_tcp_nodelay(true);
        eventloop.set_network_options(network);
        let (subscribed, mut subscribed_rx) = watch::channel(None);
        let shared = Arc::new(Shared {
            keys,
            prefix: config.prefix,
            stations: config.stations,
            records: Mutex::new(Records::default()),
            changed: watch::channel(0).0,
            armed: Armed::default(),
            answered: Mutex::new(HashMap::new()),
            subscribed,
            last_error: Mutex::new(None),
        });
        let cancel = CancellationToken::new();
        let (tx, rx) = mpsc::unbounded_channel();
        let tasks = vec![
            tokio::spawn(poll(eventloop, tx, cancel.clone())),
            tokio::spawn(handle(
                shared.clone(),
                client.clone(),
                rx,
                config.redeliver_every,
                cancel.clone(),
            )),
        ];
        let platform = Platform {
            shared,
            client,
            cancel,
            tasks,
        };
        let waited = tokio::time::timeout(
            config.connect_timeout,
            subscribed_rx.wait_for(Option::is_some),
        )
        .await;
        match waited {
            Ok(Ok(state)) if *state == Some(true) => Ok(platform),
            Ok(_) => Err(PlatformError::Mqtt {
                detail: "the broker refused the platform's subscriptions".to_owned(),
            }),
            Err(_) => Err(PlatformError::Mqtt {
                detail: format!(
                    "not connected and subscribed within {:?}: {}",
                    config.connect_timeout,
                    lock(&platform.shared.last_error)
                        .clone()
                        .unwrap_or_else(|| "no answer".to_owned())
                ),
            }),
        }
    }

    /// Disconnects from the broker and stops the tasks.
    pub async fn shutdown(mut self) {
        // The disconnect request is best effort: the broker may be gone already.
        let _ = self.client.disconnect().await;
        self.cancel.cancel();
        for task in self.tasks.drain(..) {
            let _ = task.await;
        }
    }

    /// The platform's keys (CA, job signing, sealing, stations).
    pub fn keys(&self) -> &Arc<PlatformKeys> {
        &self.shared.keys
    }

    /// The test CA.
    pub fn ca(&self) -> &TestCa {
        self.shared.keys.ca()
    }

    /// Writes `station`'s trust files into `dir` (see [`PlatformKeys::write_station_trust`]).
    pub fn write_station_trust(
        &self,
        station: &StationId,
        dir: &Path,
    ) -> Result<StationTrust, PlatformError> {
        self.shared.keys.write_station_trust(station, dir)
    }

    /// Arms a misbehaviour.
    pub fn misbehave(&self, misbehaviour: Misbehaviour, times: Times) {
        self.shared.armed.arm(misbehaviour, times);
    }

    /// Disarms every misbehaviour.
    pub fn behave(&self) {
        self.shared.armed.clear();
    }

    /// Makes the signed job of `draft`. For `unlock` and `change` with rekey, the SO PIN of
    /// the target token (from its bind report) is sealed to the station.
    pub fn job(&self, draft: &JobDraft) -> Result<SignedJob, PlatformError> {
        let keys = &self.shared.keys;
        let pin: Option<(ukey_protocol::SealRecipient, SecretString)> = if draft.needs_so_pin() {
            let serial = draft.target_token_serial.clone().ok_or_else(|| {
                PlatformError::protocol(
                    "job draft",
                    ukey_protocol::ProtocolError::invalid(
                        "target_token_serial",
                        ukey_protocol::Problem::RequiredFor { kind: draft.kind },
                    ),
                )
            })?;
            let so_pin = self
                .shared
                .records()
                .token(&serial)
                .and_then(|t| t.so_pin().cloned())
                .ok_or(PlatformError::UnknownToken { serial })?;
            let recipient = keys.station_recipient(&draft.station_id).ok_or_else(|| {
                PlatformError::UnknownStation {
                    station: draft.station_id.clone(),
                }
            })?;
            Some((recipient, so_pin))
        } else {
            None
        };
        let document = build_job(
            draft,
            OffsetDateTime::now_utc(),
            pin.as_ref().map(|(r, p)| (r, p)),
        )?;
        let envelope = sign(&document, keys.job_key(), keys.job_key_id())?;
        Ok(SignedJob { document, envelope })
    }

    /// Publishes `job` (QoS 1) on its station's jobs topic and records it. Misbehaviours
    /// [`Misbehaviour::ForgedSignature`] and [`Misbehaviour::DuplicateJob`] apply here.
    pub async fn dispatch(&self, job: &SignedJob) -> Result<JobId, PlatformError> {
        let keys = &self.shared.keys;
        let mut applied = Vec::new();
        let forged = self.shared.armed.take(Misbehaviour::ForgedSignature);
        let envelope = if forged {
            applied.push(Misbehaviour::ForgedSignature);
            sign(&job.document, keys.forger_key()?, keys.job_key_id())?
        } else {
            job.envelope.clone()
        };
        let copies = if self.shared.armed.take(Misbehaviour::DuplicateJob) {
            applied.push(Misbehaviour::DuplicateJob);
            2
        } else {
            1
        };
        let payload = envelope
            .encode()
            .map_err(|e| PlatformError::protocol("job envelope", e))?;
        let topic = self.shared.topics(&job.document.station_id)?.jobs();
        let job_id = job.job_id().clone();
        self.shared.update(|r| {
            if !r.dispatch_order.contains(&job_id) {
                r.dispatch_order.push(job_id.clone());
            }
            let record = r.job_mut(&job_id);
            record.station_id = Some(job.document.station_id.clone());
            record.document = Some(job.document.clone());
            for _ in 0..copies {
                record.envelopes_sent.push(envelope.clone());
            }
            record.misbehaviours.extend(applied);
            if !forged {
                record.job_payload = Some(payload.clone());
            }
        });
        for _ in 0..copies {
            self.client
                .publish(topic.clone(), QoS::AtLeastOnce, false, payload.clone())
                .await
                .map_err(|e| PlatformError::Mqtt {
                    detail: e.to_string(),
                })?;
        }
        Ok(job_id)
    }

    /// [`Platform::job`] then [`Platform::dispatch`].
    pub async fn dispatch_draft(&self, draft: &JobDraft) -> Result<JobId, PlatformError> {
        let job = self.job(draft)?;
        self.dispatch(&job).await
    }

    /// Publishes a signed cancel of `job_id` (QoS 1) on its station's cancel topic, saying
    /// `reason`. [`Misbehaviour::UnsignedCancel`] applies here. A signed cancel is published
    /// again until the job ends (see [`crate::redeliver`]).
    pub async fn cancel(&self, job_id: &JobId, reason: &str) -> Result<(), PlatformError> {
        let station = self
            .shared
            .records()
            .job(job_id)
            .and_then(|r| r.station_id().cloned())
            .ok_or_else(|| PlatformError::UnknownJob {
                job_id: job_id.clone(),
            })?;
        let cancel = Cancel {
            v: V1,
            station_id: station.clone(),
            job_id: job_id.clone(),
            reason: reason.to_owned(),
            at: OffsetDateTime::now_utc(),
        };
        let unsigned = self.shared.armed.take(Misbehaviour::UnsignedCancel);
        let payload = if unsigned {
            self.shared.update(|r| {
                r.job_mut(job_id)
                    .misbehaviours
                    .push(Misbehaviour::UnsignedCancel)
            });
            cancel.encode()
        } else {
            let keys = &self.shared.keys;
            sign_platform_message(&cancel, keys.job_key(), keys.job_key_id())
        }
        .map_err(|e| PlatformError::protocol("cancel", e))?;
        if !unsigned {
            self.shared
                .update(|r| r.job_mut(job_id).cancel_payload = Some(payload.clone()));
        }
        let topic = self.shared.topics(&station)?.job_cancel(job_id);
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload)
            .await
            .map_err(|e| PlatformError::Mqtt {
                detail: e.to_string(),
            })
    }

    /// A copy of everything recorded so far.
    pub fn snapshot(&self) -> Records {
        self.shared.records().clone()
    }

    /// One job's record.
    pub fn job_record(&self, job_id: &JobId) -> Option<JobRecord> {
        self.shared.records().job(job_id).cloned()
    }

    /// One token's record (PINs included).
    pub fn token(&self, serial: &ukey_protocol::TokenSerial) -> Option<TokenRecord> {
        self.shared.records().token(serial).cloned()
    }

    /// The user PIN of `serial` as the platform unsealed it.
    pub fn user_pin(&self, serial: &ukey_protocol::TokenSerial) -> Option<SecretString> {
        self.shared
            .records()
            .token(serial)
            .and_then(|t| t.user_pin().cloned())
    }

    /// Waits until `f` returns `Some` on the records (checked now and after every change),
    /// at most `timeout`. `what` names the wait in the timeout error.
    pub async fn wait_until<T>(
        &self,
        what: &str,
        timeout: Duration,
        mut f: impl FnMut(&Records) -> Option<T>,
    ) -> Result<T, PlatformError> {
        let mut changes = self.shared.changed.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(found) = f(&self.shared.records()) {
                return Ok(found);
            }
            match tokio::time::timeout_at(deadline, changes.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(PlatformError::Stopped),
                Err(_) => {
                    return Err(PlatformError::Timeout {
                        what: what.to_owned(),
                        after: timeout,
                    });
                }
            }
        }
    }

    /// Waits until `job_id`'s record satisfies `pred`.
    pub async fn wait_for(
        &self,
        job_id: &JobId,
        mut pred: impl FnMut(&JobRecord) -> bool,
        timeout: Duration,
    ) -> Result<JobRecord, PlatformError> {
        self.wait_until(&format!("job {job_id}"), timeout, |r| {
            r.job(job_id).filter(|j| pred(j)).cloned()
        })
        .await
    }

    /// Waits until an event of `job_id` in `state` arrived. Fails at once when the job ended
    /// in another terminal state ([`PlatformError::JobEnded`]).
    pub async fn wait_for_state(
        &self,
        job_id: &JobId,
        state: ExecutionState,
        timeout: Duration,
    ) -> Result<JobRecord, PlatformError> {
        self.wait_until(&format!("job {job_id} to be {state}"), timeout, |r| {
            let job = r.job(job_id)?;
            if job.reached(state) {
                return Some(Ok(job.clone()));
            }
            let last = job.last_event()?;
            (last.state.is_terminal() && last.state != state).then(|| {
                Err(PlatformError::JobEnded {
                    job_id: job_id.clone(),
                    state: last.state,
                    step: last.step,
                    error: last
                        .error
                        .as_ref()
                        .map(|e| format!("{}: {}", e.code, e.message)),
                })
            })
        })
        .await?
    }
}

/// Polls the event loop until canceled; never waits for the handler.
async fn poll(
    mut eventloop: rumqttc::EventLoop,
    tx: mpsc::UnboundedSender<Inbound>,
    cancel: CancellationToken,
) {
    let mut backoff = Duration::from_millis(50);
    loop {
        let event = tokio::select! {
            () = cancel.cancelled() => return,
            event = eventloop.poll() => event,
        };
        let inbound = match event {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                backoff = Duration::from_millis(50);
                Inbound::Connected {
                    session_present: ack.session_present,
                }
            }
            Ok(Event::Incoming(Packet::SubAck(ack))) => Inbound::Subscribed {
                ok: ack
                    .return_codes
                    .iter()
                    .all(|c| matches!(c, SubscribeReasonCode::Success(_))),
            },
            Ok(Event::Incoming(Packet::Publish(p))) => Inbound::Publish {
                topic: p.topic,
                payload: p.payload.to_vec(),
            },
            Ok(_) => continue,
            Err(e) => {
                if tx
                    .send(Inbound::Disconnected {
                        error: e.to_string(),
                    })
                    .is_err()
                {
                    return;
                }
                // rumqttc has no reconnect backoff of its own: wait a little, growing.
                tokio::select! {
                    () = cancel.cancelled() => return,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(2));
                continue;
            }
        };
        if tx.send(inbound).is_err() {
            return;
        }
    }
}

/// Handles what the event loop received, one message at a time.
async fn handle(
    shared: Arc<Shared>,
    client: AsyncClient,
    mut rx: mpsc::UnboundedReceiver<Inbound>,
    redeliver_every: Option<Duration>,
    cancel: CancellationToken,
) {
    let mut connections = 0u64;
    // Without a timer the branch below never fires (an hour, disabled by its guard).
    let every = redeliver_every.unwrap_or(Duration::from_secs(3600));
    let mut redeliver_tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    redeliver_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let inbound = tokio::select! {
            () = cancel.cancelled() => return,
            _ = redeliver_tick.tick(), if redeliver_every.is_some() => {
                redeliver(&shared, &client, None).await;
                continue;
            }
            inbound = rx.recv() => match inbound {
                Some(inbound) => inbound,
                None => return,
            },
        };
        match inbound {
            Inbound::Connected { session_present } => {
                connections += 1;
                shared.update(|r| r.connections += 1);
                subscribe(&shared, &client).await;
                if connections > 1 && !session_present {
                    // rumqttc dropped its unacknowledged publishes with the session.
                    redeliver(&shared, &client, None).await;
                }
            }
            Inbound::Subscribed { ok } => {
                if ok {
                    shared.update(|r| r.subscriptions += 1);
                }
                shared.subscribed.send_replace(Some(ok));
            }
            Inbound::Disconnected { error } => {
                *lock(&shared.last_error) = Some(error);
            }
            Inbound::Publish { topic, payload } => {
                on_publish(&shared, &client, &topic, &payload).await;
            }
        }
    }
}

fn filters(shared: &Shared) -> Vec<String> {
    if shared.stations.is_empty() {
        return ukey_protocol::topic::platform_subscriptions(&shared.prefix);
    }
    let mut out = Vec::new();
    for station in &shared.stations {
        let base = format!("{}/stations/{station}", shared.prefix);
        out.push(format!("{base}/presence"));
        out.push(format!("{base}/jobs/+/events"));
        out.push(format!("{base}/jobs/+/csr"));
        out.push(format!("{base}/inventory"));
        out.push(format!("{base}/receipts"));
    }
    out
}

async fn subscribe(shared: &Shared, client: &AsyncClient) {
    let filters = filters(shared)
        .into_iter()
        .map(|f| SubscribeFilter::new(f, QoS::AtLeastOnce));
    if let Err(e) = client.subscribe_many(filters).await {
        *lock(&shared.last_error) = Some(format!("subscribe: {e}"));
    }
}

async fn publish(shared: &Shared, client: &AsyncClient, topic: String, payload: Vec<u8>) {
    if let Err(e) = client
        .publish(topic, QoS::AtLeastOnce, false, payload)
        .await
    {
        *lock(&shared.last_error) = Some(format!("publish: {e}"));
    }
}

/// Publishes again what `station` (every station when `None`) has not shown it received.
async fn redeliver(shared: &Shared, client: &AsyncClient, station: Option<&StationId>) {
    let owed = {
        let records = shared.records();
        crate::redeliver::owed(&records, station)
    };
    let mut sent = Vec::new();
    for owed in owed {
        let job_id = owed.job_id().clone();
        let (station, topic, payload) = match owed {
            Owed::Job {
                station, payload, ..
            } => {
                let Ok(topics) = shared.topics(&station) else {
                    continue;
                };
                (station, topics.jobs(), payload)
            }
            Owed::Certs {
                station,
                job_id,
                payload,
            } => {
                let Ok(topics) = shared.topics(&station) else {
                    continue;
                };
                (station, topics.job_certs(&job_id), payload)
            }
            Owed::Cancel {
                station,
                job_id,
                payload,
            } => {
                let Ok(topics) = shared.topics(&station) else {
                    continue;
                };
                (station, topics.job_cancel(&job_id), payload)
            }
        };
        if !shared.serves(&station) {
            continue;
        }
        publish(shared, client, topic, payload).await;
        sent.push(job_id);
    }
    shared.update(|r| {
        r.redelivery_rounds += 1;
        for job_id in &sent {
            r.job_mut(job_id).redelivered += 1;
        }
    });
}

async fn on_publish(shared: &Shared, client: &AsyncClient, topic: &str, payload: &[u8]) {
    let (station, parsed) = match parse_any_station(&shared.prefix, topic) {
        Ok(parsed) => parsed,
        Err(e) => {
            shared.update(|r| r.unreadable.push(format!("{topic}: {e}")));
            return;
        }
    };
    if !shared.serves(&station) {
        return;
    }
    let unreadable = |e: ukey_protocol::ProtocolError| {
        shared.update(|r| r.unreadable.push(format!("{topic}: {e}")));
    };
    match parsed {
        Topic::JobEvents(job_id) => match StepEvent::decode(payload) {
            Ok(event) => on_event(shared, client, &station, &job_id, event).await,
            Err(e) => unreadable(e),
        },
        Topic::JobCsr(job_id) => match CsrBundle::decode(payload) {
            Ok(bundle) => on_csr(shared, client, &station, &job_id, bundle, payload).await,
            Err(e) => unreadable(e),
        },
        Topic::Presence => match Presence::decode(payload) {
            Ok(p) => {
                let born = p.status == PresenceStatus::Online;
                shared.update(|r| r.presence.push(p));
                // A birth comes after the station's subscriptions on the same connection:
                // what it missed while away can be sent now.
                if born {
                    redeliver(shared, client, Some(&station)).await;
                }
            }
            Err(e) => unreadable(e),
        },
        Topic::Inventory => match Inventory::decode(payload) {
            Ok(i) => shared.update(|r| r.inventory.push(i)),
            Err(e) => unreadable(e),
        },
        Topic::Receipts => on_receipt(shared, client, &station, payload).await,
        // The platform's own directions: not subscribed to, ignored if they arrive.
        Topic::Jobs | Topic::JobCerts(_) | Topic::JobCancel(_) | Topic::Acks => {}
    }
}

/// A production receipt: verified with the platform's own code against the station key it
/// registered, kept, and acknowledged by its receipt id like an event. One that does not
/// verify is kept aside with the reason and not acknowledged (the station sends it again).
async fn on_receipt(shared: &Shared, client: &AsyncClient, station: &StationId, payload: &[u8]) {
    let Some(key) = shared.keys.station_recipient(station) else {
        shared.update(|r| {
            r.refused_receipts
                .push(format!("{station}: no station key registered"))
        });
        return;
    };
    let receipt = match crate::receipts::verify_receipt(payload, &key) {
        Ok(receipt) => receipt,
        Err(e) => {
            shared.update(|r| r.refused_receipts.push(format!("{station}: {e}")));
            return;
        }
    };
    let receipt_id = receipt.receipt_id.clone();
    shared.update(|r| {
        // Sent again until acknowledged: kept once.
        if !r.receipts.iter().any(|k| k.receipt_id == receipt_id) {
            r.receipts.push(receipt);
        }
    });
    if shared.armed.take(Misbehaviour::SilenceAcks) {
        return;
    }
    let ack = Ack {
        v: V1,
        station_id: station.clone(),
        event_ids: vec![receipt_id],
    };
    let payload = sign_platform_message(&ack, shared.keys.job_key(), shared.keys.job_key_id());
    let (Ok(topics), Ok(payload)) = (shared.topics(station), payload) else {
        return;
    };
    publish(shared, client, topics.acks(), payload).await;
    shared.update(|r| r.acks_sent += 1);
}

fn unseal(
    shared: &Shared,
    sealed: Option<&SealedSecret>,
    job_id: &JobId,
    purpose: SealPurpose,
) -> Result<Option<SecretString>, String> {
    let Some(sealed) = sealed else {
        return Ok(None);
    };
    sealed
        .unseal_pin(
            shared.keys.sealing_key(),
            &SealContext::for_job(job_id, purpose),
        )
        .map(Some)
        .map_err(|e| format!("{} did not unseal: {e}", purpose.as_str()))
}

async fn on_event(
    shared: &Shared,
    client: &AsyncClient,
    station: &StationId,
    topic_job: &JobId,
    event: StepEvent,
) {
    // PINs are opened before the lock is taken (ECDH or RSA work).
    let (so_pin, user_pin) = match &event.data {
        Some(StepData::Bind(report)) => (
            unseal(
                shared,
                report.so_pin.as_ref(),
                &event.job_id,
                SealPurpose::SoPin,
            ),
            unseal(
                shared,
                report.user_pin.as_ref(),
                &event.job_id,
                SealPurpose::UserPin,
            ),
        ),
        Some(StepData::PinReset { user_pin }) => (
            Ok(None),
            unseal(shared, Some(user_pin), &event.job_id, SealPurpose::UserPin),
        ),
        _ => (Ok(None), Ok(None)),
    };
    let event_id = event.event_id.clone();
    let is_bind = event.step == Step::Bind;
    shared.update(|r| record_event(r, station, topic_job, event, so_pin, user_pin));
    // An unsigned ack stands in for the silence: a test can keep the true acks back and
    // still see the forged one arrive.
    let unsigned = is_bind && shared.armed.take(Misbehaviour::UnsignedBindAck);
    if !unsigned && shared.armed.take(Misbehaviour::SilenceAcks) {
        shared.update(|r| {
            r.job_mut(topic_job)
                .misbehaviours
                .push(Misbehaviour::SilenceAcks)
        });
        return;
    }
    let ack = Ack {
        v: V1,
        station_id: station.clone(),
        event_ids: vec![event_id],
    };
    let payload = if unsigned {
        shared.update(|r| {
            r.job_mut(topic_job)
                .misbehaviours
                .push(Misbehaviour::UnsignedBindAck)
        });
        ack.encode()
    } else {
        sign_platform_message(&ack, shared.keys.job_key(), shared.keys.job_key_id())
    };
    let (Ok(topics), Ok(payload)) = (shared.topics(station), payload) else {
        return;
    };
    publish(shared, client, topics.acks(), payload).await;
    if !unsigned {
        shared.update(|r| r.acks_sent += 1);
    }
}

fn record_event(
    records: &mut Records,
    station: &StationId,
    topic_job: &JobId,
    event: StepEvent,
    so_pin: Result<Option<SecretString>, String>,
    user_pin: Result<Option<SecretString>, String>,
) {
    let job = records.job_mut(topic_job);
    if job.station_id.is_none() {
        job.station_id = Some(station.clone());
    }
    if job.events.iter().any(|e| e.event_id == event.event_id) {
        job.duplicate_events += 1;
        *job.duplicates_by_id.entry(event.event_id).or_default() += 1;
        return;
    }
    if &event.job_id != topic_job {
        job.problems.push(format!(
            "event {} names job {} on the topic of job {topic_job}",
            event.event_id, event.job_id
        ));
    }
    if job.events.iter().any(|e| e.seq == event.seq) {
        job.problems.push(format!(
            "event {} repeats seq {} under another event id",
            event.event_id, event.seq
        ));
    }
    let at = job.events.partition_point(|e| e.seq < event.seq);
    let previous = at.checked_sub(1).and_then(|i| job.events.get(i));
    match previous {
        None if event.seq == 1 && !event.state.is_initial() => job.problems.push(format!(
            "first event {} is {}, not queued or rejected",
            event.event_id, event.state
        )),
        Some(prev) if prev.seq + 1 == event.seq && !prev.state.can_move_to(event.state) => {
            job.problems.push(format!(
                "event {} moves the job from {} to {}",
                event.event_id, prev.state, event.state
            ));
        }
        _ => {}
    }
    let mut problems = Vec::new();
    let (so_pin, user_pin) = (
        so_pin.unwrap_or_else(|p| {
            problems.push(p);
            None
        }),
        user_pin.unwrap_or_else(|p| {
            problems.push(p);
            None
        }),
    );
    job.problems.extend(problems);
    // A bind report without a serial belongs to the token the job's earlier events named.
    let serial = event
        .token_serial
        .clone()
        .or_else(|| job.token_serial().cloned());
    let bound = match &event.data {
        Some(StepData::Bind(report)) => Some(report.certificates.clone()),
        _ => None,
    };
    let job_id = event.job_id.clone();
    job.arrivals.push(event.seq);
    job.events.insert(at, event);
    let Some(serial) = serial else {
        return;
    };
    if bound.is_none() && so_pin.is_none() && user_pin.is_none() {
        return;
    }
    let token = records
        .tokens
        .entry(serial.clone())
        .or_insert_with(|| TokenRecord {
            serial,
            job_id: job_id.clone(),
            so_pin: None,
            user_pin: None,
            certificates: Vec::new(),
        });
    token.job_id = job_id;
    if let Some(pin) = so_pin {
        token.so_pin = Some(pin);
    }
    if let Some(pin) = user_pin {
        token.user_pin = Some(pin);
    }
    if let Some(certificates) = bound {
        token.certificates = certificates;
    }
}

async fn on_csr(
    shared: &Shared,
    client: &AsyncClient,
    station: &StationId,
    topic_job: &JobId,
    bundle: CsrBundle,
    payload: &[u8],
) {
    let digest: [u8; 32] = Sha256::digest(payload).into();
    let document = shared.update(|r| {
        let job = r.job_mut(topic_job);
        if job.station_id.is_none() {
            job.station_id = Some(station.clone());
        }
        if &bundle.job_id != topic_job {
            job.problems.push(format!(
                "CSR bundle names job {} on the topic of job {topic_job}",
                bundle.job_id
            ));
        }
        job.csr_bundles.push(bundle.clone());
        job.document.clone()
    });
    if shared.armed.take(Misbehaviour::SilenceCertificates) {
        shared.update(|r| {
            r.job_mut(topic_job)
                .misbehaviours
                .push(Misbehaviour::SilenceCertificates)
        });
        return;
    }
    if shared.armed.take(Misbehaviour::ForgedRejection) {
        shared.update(|r| {
            r.job_mut(topic_job)
                .misbehaviours
                .push(Misbehaviour::ForgedRejection)
        });
        let forged = CertResponse {
            v: V1,
            station_id: station.clone(),
            job_id: topic_job.clone(),
            outcome: CertOutcome::Rejected(rejection(
                RejectionCode::IssuanceRefused,
                "forged: signed by a key no station trusts".to_owned(),
            )),
        };
        // Not recorded as a response: the platform never sent it, as far as its ledger goes.
        if let (Ok(topics), Ok(key)) = (shared.topics(station), shared.keys.forger_key())
            && let Ok(bytes) = sign_platform_message(&forged, key, shared.keys.job_key_id())
        {
            publish(shared, client, topics.job_certs(topic_job), bytes).await;
        }
        return;
    }
    let cached = lock(&shared.answered).get(&digest).cloned();
    let (response, honest) = match cached {
        Some(response) => (response, true),
        None => {
            let mut applied = Vec::new();
            let outcome = match &document {
                None => CertOutcome::Rejected(rejection(
                    RejectionCode::UnknownJob,
                    format!("job {topic_job} was not dispatched by this platform"),
                )),
                Some(doc) => answer(shared, doc, &bundle, &mut applied),
            };
            let response = CertResponse {
                v: V1,
                station_id: station.clone(),
                job_id: topic_job.clone(),
                outcome,
            };
            // Only honest answers are repeated for a re-sent bundle: after a misbehaviour
            // "once", the same request gets a good answer.
            let honest = applied.is_empty();
            if honest {
                lock(&shared.answered).insert(digest, response.clone());
            } else {
                shared.update(|r| r.job_mut(topic_job).misbehaviours.extend(applied));
            }
            (response, honest)
        }
    };
    let signed = sign_platform_message(&response, shared.keys.job_key(), shared.keys.job_key_id());
    let (Ok(topics), Ok(bytes)) = (shared.topics(station), signed) else {
        shared.update(|r| {
            r.job_mut(topic_job)
                .problems
                .push("the certificate response could not be signed".to_owned())
        });
        return;
    };
    shared.update(|r| {
        let job = r.job_mut(topic_job);
        job.cert_responses.push(response);
        // Only an honest answer is owed again (`crate::redeliver`).
        job.cert_payload = honest.then(|| bytes.clone());
    });
    publish(shared, client, topics.job_certs(topic_job), bytes).await;
}

/// The answer to a CSR bundle for `doc`, misbehaviours applied.
/// `applied` collects the misbehaviours used.
fn answer(
    shared: &Shared,
    doc: &JobDocument,
    bundle: &CsrBundle,
    applied: &mut Vec<Misbehaviour>,
) -> CertOutcome {
    match issue_bundle(shared, doc, bundle, applied) {
        Ok(bundle) => CertOutcome::Issued(bundle),
        Err(rejected) => CertOutcome::Rejected(rejected),
    }
}

fn issue_bundle(
    shared: &Shared,
    doc: &JobDocument,
    bundle: &CsrBundle,
    applied: &mut Vec<Misbehaviour>,
) -> Result<CertBundle, ukey_protocol::CertRejection> {
    if shared.armed.take(Misbehaviour::RejectIssuance) {
        applied.push(Misbehaviour::RejectIssuance);
        return Err(rejection(
            RejectionCode::IssuanceRefused,
            "the platform refuses to issue (simulated)".to_owned(),
        ));
    }
    if let Some(target) = &doc.target_token_serial
        && &bundle.token_serial != target
    {
        return Err(rejection(
            RejectionCode::WrongToken,
            format!(
                "the bundle comes from token {}, the job names {target}",
                bundle.token_serial
            ),
        ));
    }
    let renewal_allowed =
        matches!(doc.kind, JobKind::Renew) || (doc.kind == JobKind::Change && !doc.rekey);
    let ca = shared.keys.ca();
    let mut keys: Vec<(KeyLabel, SubjectPublicKeyInfoOwned)> = Vec::new();
    for label in KeyLabel::ALL {
        let Some(request) = bundle.requests.iter().find(|r| r.label == label) else {
            return Err(rejection(
                RejectionCode::CsrMalformed,
                format!("no request for {label}"),
            ));
        };
        let key = match (
            &request.csr,
            &request.current_certificate,
            &request.public_key,
        ) {
            (Some(csr), _, _) => ca.check_csr(doc, label, csr.as_bytes())?,
            (None, Some(current), Some(public)) if renewal_allowed => {
                ca.check_renewal(doc, label, current.as_bytes(), public.as_bytes())?
            }
            _ => {
                return Err(rejection(
                    RejectionCode::WrongRequestKind,
                    format!("{label}: a {} job needs a CSR", doc.kind),
                ));
            }
        };
        keys.push((label, key));
    }

    let mut take = |m: Misbehaviour| {
        let taken = shared.armed.take(m);
        if taken {
            applied.push(m);
        }
        taken
    };
    let another_key = take(Misbehaviour::CertificateForAnotherKey);
    let wrong_subject = take(Misbehaviour::WrongSubject);
    let expired = take(Misbehaviour::ExpiredCertificate);
    let unknown_issuer = take(Misbehaviour::UnknownIssuer);
    let failed = |e: PlatformError| rejection(RejectionCode::IssuanceFailed, e.to_string());
    let issuer = if unknown_issuer {
        shared.keys.stranger_ca().map_err(failed)?
    } else {
        ca
    };
    let data = subject_data(doc);
    let now = SystemTime::now();
    let (not_before, not_after) = if expired {
        let day = Duration::from_secs(86_400);
        (now - day * 366, now - day)
    } else {
        Issue::window(now, doc.validity_days)
    };
    let mut certificates = Vec::new();
    for (label, key) in &keys {
        let other_key;
        let public_key = if another_key && *label == KeyLabel::SealOfficial {
            other_key = fresh_key_like(key).map_err(failed)?;
            &other_key
        } else {
            key
        };
        let subject_override = if wrong_subject && *label == KeyLabel::SealLegal {
            Some(impostor_subject(&data).map_err(failed)?)
        } else {
            None
        };
        let der = issuer
            .issue(&Issue {
                label: *label,
                subject: &data,
                subject_override,
                public_key,
                not_before,
                not_after,
            })
            .map_err(failed)?;
        certificates.push(IssuedCertificate {
            label: *label,
            certificate: Base64Bytes::new(der),
        });
    }
    Ok(CertBundle {
        certificates,
        ca_chain: vec![Base64Bytes::new(issuer.certificate_der().to_vec())],
    })
}

/// A fresh public key of the same algorithm as `key` (misbehaviour "another key").
fn fresh_key_like(
    key: &SubjectPublicKeyInfoOwned,
) -> Result<SubjectPublicKeyInfoOwned, PlatformError> {
    let spki = match key_algorithm(key) {
        Some(KeyAlgorithm::P256) | None => {
            let k = p256::ecdsa::SigningKey::generate_from_rng(&mut rand::rng());
            SubjectPublicKeyInfoOwned::from_key(k.verifying_key())
        }
        Some(KeyAlgorithm::Sm2) => {
            use p256::elliptic_curve::Generate as _;
            let k = sm2::SecretKey::generate_from_rng(&mut rand::rng());
            SubjectPublicKeyInfoOwned::from_key(&k.public_key())
        }
        Some(alg @ (KeyAlgorithm::Rsa2048 | KeyAlgorithm::Rsa3072)) => {
            let bits = alg.rsa_bits().unwrap_or(2048);
            let k = rsa::PrivateKey::new(&mut rand::rng(), bits)
                .map_err(|e| PlatformError::key("another key", e))?;
            SubjectPublicKeyInfoOwned::from_key(&k.to_public_key())
        }
    };
    spki.map_err(|e| PlatformError::key("another key", e))
}

/// The `seal-legal` subject with another legal representative (misbehaviour "wrong subject").
fn impostor_subject(data: &SubjectData) -> Result<x509_cert::name::Name, PlatformError> {
    let mut other = data.clone();
    other.legal_representative = if data.legal_representative.starts_with('赵') {
        "钱六".to_owned()
    } else {
        "赵六".to_owned()
    };
    other
        .subject(KeyLabel::SealLegal)
        .map_err(|e| PlatformError::key("impostor subject", e))
}
