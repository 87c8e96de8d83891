//! The daemon: the thin IO shell that feeds the pure parts.
//!
//! One task owns all state (the desk's token table, the jobs, the journal) and reacts to
//! five sources: messages from the platform (via [`crate::link`]), slot scans (PKCS#11, on a
//! blocking thread), USB events, finished steps (each step runs on its token's
//! [`TokenWorker`]), and timers. Every reaction follows one order, which is what makes a crash
//! harmless at any point:
//!
//! 1. the [`JobMachine`] decides (pure);
//! 2. the input is appended to the journal, in one write and one fsync with whatever must be
//!    durable with it (the job document on acceptance, the PINs on a claim, the CSR bundle
//!    when its step ends);
//! 3. the step events it reports go to the outbox (fsync'd);
//! 4. only then are steps started, timers armed, tokens released, CSR bundles published.
//!
//! On start the journal is replayed through fresh machines, which rebuilds every job exactly
//! (event ids included); the events of each job's last journaled record are pushed to the
//! outbox again (a crash between 2 and 3 would lose them; one already there or acknowledged
//! costs the platform a duplicate it drops by event id). Jobs that were running resume when
//! their token is seen again. The journal comes first because an event id derives from the
//! job's sequence number: an event published while its input was not journaled would, after a
//! restart, share its id with a different event (a step run again may end otherwise), and the
//! platform would drop the second as a duplicate. A CSR bundle is published only once its
//! step's end is journaled: a step run again would sign new CSRs and make the platform issue
//! twice.
//!
//! Finished jobs' records are compacted away (each job leaves one `Done` record) at start-up
//! and, while running, right after a job finishes once they dominate the journal; one rule,
//! in the `compaction` submodule, says what is kept. Either way the outbox is fsync'd before
//! the rewrite, since the dropped records are what would re-make their unsynced events.
//!
//! Every journal record that holds job content (the document, PINs, inputs, CSR bundles) is
//! encrypted with the journal key, bound to its job and kind; ids, serials and times are not.
//! What this module does not do: decide the next step (the job machine), touch token
//! objects itself (the steps module, on a worker), or speak MQTT (the link).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use ukey_protocol::ack::Ack;
use ukey_protocol::bundle::{CertBundle, CertOutcome, CertResponse, CsrBundle};
use ukey_protocol::cancel::Cancel;
use ukey_protocol::event::{ExecutionState, Step, StepData, StepError, StepEvent};
use ukey_protocol::ids::{EventId, JobId, Nonce, StationId, TokenSerial};
use ukey_protocol::inventory::{
    CertificateExpiry, DeskAlert, Inventory, SlotInfo, TokenDamage, TokenInfo, TokenState,
};
use ukey_protocol::job::{JobDocument, JobKind};
use ukey_protocol::keys::KeyLabel;
use ukey_protocol::presence::{Presence, PresenceStatus};
use ukey_protocol::signed::{JobEnvelope, check_nonce};
use ukey_protocol::topic::{Topic, Topics};
use ukey_protocol::{Message, V1};

use crate::certs::VerifiedCertificate;
use crate::config::{Config, UsbWatcherKind};
use crate::desk::{Observation, TokenKey, classify};
use crate::job::{Action, Input, JobMachine, JobState, Report, StepOutput, Timer, code};
use crate::journal::{Journal, StoreError};
use crate::link::{Incoming, Link, LinkConfig, LinkError, LinkHandle};
use crate::outbox::{Outbox, OutboxEntry};
use crate::panel::{ButtonAction, ButtonPress, Light, Panel, PanelHandle};
use crate::status::{RunningJob, Snapshot, TokenLine};
use crate::steps::{self, Pins, StepFailure};
use crate::stuck::{RunningCall, StuckCalls};
use crate::token::{Module, PresentToken, SlotSurvey, Token, TokenError, UnreadableSlot};
use crate::trust::{Sealed, TrustError, TrustMaterial};
use crate::usb::{self, ModelFilter, UsbEvent};
use crate::worker::TokenWorker;

mod compaction;

use compaction::{FinishedJob, compacted};

/// Why the daemon could not start or had to stop.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DaemonError {
    /// A trust file is unusable.
    #[error(transparent)]
    Trust(#[from] TrustError),
    /// The journal or the outbox failed (disk full, damaged file, another agent running).
    #[error("state store: {0}")]
    Store(#[from] StoreError),
    /// The link could not start.
    #[error("link: {0}")]
    Link(#[from] LinkError),
    /// A PKCS#11 module could not be loaded.
    #[error("PKCS#11 module: {0}")]
    Module(#[from] TokenError),
    /// A configuration value is unusable here.
    #[error("configuration: {0}")]
    Config(String),
    /// The state folder could not be prepared.
    #[error("state folder {path}: {source}")]
    StateDir {
        /// The folder.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// A journal record could not be made or read.
    #[error("journal: {0}")]
    Journal(String),
}

/// One journal record. Job content is encrypted with the journal key (see the module docs).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "record", rename_all = "snake_case")]
enum Record {
    /// A job was accepted: its signed envelope, encrypted with the journal key.
    Job { job_id: JobId, envelope: Sealed },
    /// The PINs chosen for a job's token.
    Pins { job_id: JobId, pins: Sealed },
    /// Something happened to a job, at `at`: the [`Input`] (which may carry a certificate
    /// bundle, with people's names in it).
    Input {
        job_id: JobId,
        #[serde(with = "time::serde::rfc3339")]
        at: OffsetDateTime,
        input: Sealed,
    },
    /// The CSR bundle sent for a job (re-sent after a restart): a [`CsrBundle`].
    Csr { job_id: JobId, bundle: Sealed },
    /// An accepted `replace` job names this lost token: plugged in here, it shows as
    /// `revoked` and no job runs on it. Kept through compaction.
    Revoked { serial: TokenSerial },
    /// Compaction summary of a finished job: enough to recognise a redelivery.
    Done {
        job_id: JobId,
        nonce: Nonce,
        #[serde(with = "time::serde::rfc3339")]
        expires_at: OffsetDateTime,
    },
}

/// What an encrypted journal record holds: part of the encryption's context, so that one
/// kind of record cannot be passed off as another, nor one job's as another's.
#[derive(Debug, Clone, Copy)]
enum RecordKind {
    Pins,
    Input,
    Csr,
}

impl RecordKind {
    fn context(self, job_id: &JobId) -> String {
        let kind = match self {
            RecordKind::Pins => "pins",
            RecordKind::Input => "input",
            RecordKind::Csr => "csr",
        };
        format!("{job_id}/{kind}")
    }
}

/// A job the daemon knows.
struct JobEntry {
    doc: Arc<JobDocument>,
    machine: JobMachine,
    pins: Option<Arc<Pins>>,
    csr: Option<CsrBundle>,
    /// When the CSR bundle was last published: unanswered, it is published again.
    csr_sent: Option<tokio::time::Instant>,
    certs: Option<CertBundle>,
    verified: Option<Arc<Vec<VerifiedCertificate>>>,
    /// The desk key of the token it works on.
    token: Option<TokenKey>,
    /// A step is running on the token.
    running: bool,
    /// The step last started and when: its end's event carries the start time.
    step_started: Option<(Step, OffsetDateTime)>,
    /// Generation per timer: a fired timer of an older generation is ignored.
    timers: BTreeMap<Timer, u64>,
    /// How many journal records are this job's: dead weight once it finished.
    records: usize,
}

/// A token at the desk.
struct Seat {
    module: usize,
    present: PresentToken,
    state: TokenState,
    certificates: Vec<CertificateExpiry>,
    job: Option<JobId>,
    worker: Option<Arc<TokenWorker>>,
    /// Number of the latest observation started: an older one that ends later (it may have
    /// read the token before a job initialized it) is dropped.
    observation: u64,
    /// How the last job on this token ended (for the panel light).
    outcome: Option<ExecutionState>,
    /// The operator pressed the slot's acknowledge button since.
    acknowledged: bool,
    /// A worker is being opened for this token (one `Token` per physical token).
    opening: bool,
    /// Observations (each with its own session) still running on this token.
    observing: usize,
    /// A worker is wanted once those observations end: `C_InitToken` refuses to run while
    /// another session of this process is open on the token.
    worker_wanted: bool,
    /// Why the token is `damaged`, as last logged: a failure is logged once per change, not
    /// on every scan.
    damage: Option<TokenDamage>,
    /// The slot scan cannot read the token (`C_GetTokenInfo` fails): `present` is what was
    /// known before, if anything.
    unreadable: bool,
    /// Readings of this token that failed in a row (it is `damaged`), and when the scan may
    /// read it again: failed readings back off (see [`crate::desk::reread_delay`]).
    failed_readings: u32,
    reread_at: Option<Instant>,
}

impl Seat {
    fn new(module: usize, present: PresentToken, state: TokenState) -> Seat {
        Seat {
            module,
            present,
            state,
            certificates: Vec::new(),
            job: None,
            worker: None,
            observation: 0,
            outcome: None,
            acknowledged: false,
            opening: false,
            observing: 0,
            worker_wanted: false,
            damage: None,
            unreadable: false,
            failed_readings: 0,
            reread_at: None,
        }
    }
}

/// What the daemon's loop reacts to, besides MQTT messages.
enum Event {
    Scanned(Vec<(usize, Result<SlotSurvey, TokenError>)>),
    Observed(TokenKey, u64, Result<Observation, TokenError>),
    StepDone(Box<StepDone>),
    TimerFired(JobId, Timer, u64),
    WorkerReady(TokenKey, Result<Arc<TokenWorker>, TokenError>),
}

struct StepDone {
    job_id: JobId,
    step: Step,
    outcome: Result<StepOutput, StepFailure>,
    verified: Option<Arc<Vec<VerifiedCertificate>>>,
    csr: Option<CsrBundle>,
}

struct Daemon {
    config: Config,
    trust: Arc<TrustMaterial>,
    topics: Topics,
    station: StationId,
    link: LinkHandle,
    journal: Journal<Record>,
    modules: Vec<Module>,
    jobs: BTreeMap<JobId, JobEntry>,
    /// Accepted jobs waiting for a token, oldest first.
    queue: VecDeque<Waiting>,
    /// Per job, its step events pushed to the outbox without an fsync since the job's last
    /// journal record (that record re-makes them after a crash; the next one would not).
    replayable: BTreeMap<JobId, Vec<String>>,
    /// Finished jobs, for recognising redeliveries (until their documents expire).
    finished: BTreeMap<JobId, FinishedJob>,
    /// Journal records of jobs finished since the last compaction (see `compact_if_due`).
    dead_records: usize,
    nonces: BTreeSet<Nonce>,
    seats: BTreeMap<TokenKey, Seat>,
    /// Lost tokens named by accepted `replace` jobs (journaled).
    revoked: BTreeSet<String>,
    events: mpsc::Sender<Event>,
    inventory_seq: u64,
    inventory_dirty: bool,
    claiming: bool,
    timer_gen: u64,
    /// A slot scan has completed since start: a token missing from `seats` is really away.
    scanned: bool,
    /// The desk's indicator panel (a no-op handle without one).
    panel: PanelHandle,
    /// Panel slots lit last time, to turn the lights of emptied slots off.
    lit: BTreeSet<usize>,
    /// USB arrivals (token serial → port, deadline) whose PKCS#11 slot has not appeared yet.
    usb_pending: BTreeMap<String, (String, tokio::time::Instant)>,
    /// Token serial → USB (vendor, product), from USB arrivals: which model a token is.
    usb_ids: BTreeMap<String, (u16, u16)>,
    /// USB devices present but not accessible (port → reason), shown by `status`.
    usb_problems: BTreeMap<String, (&'static str, String)>,
    /// PKCS#11 modules that could not be loaded (path, reason): reported, not fatal, so the
    /// other models keep working.
    module_problems: Vec<(PathBuf, String)>,
    /// Token calls running past `timeouts.wedged_call_secs` (alerts, lights, status).
    stuck_calls: StuckCalls,
}

fn now_utc() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

/// The shortest time between two inventory publishes (see `run`).
const INVENTORY_EVERY: Duration = Duration::from_millis(100);

/// Starts the daemon and runs it until `shutdown` is cancelled; then stops claiming, lets
/// running steps finish (up to `timeouts.shutdown_grace_secs`), flushes and returns.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), DaemonError> {
    let trust = Arc::new(TrustMaterial::load(&config.trust)?);
    let station = StationId::new(config.station_id.clone())
        .map_err(|e| DaemonError::Config(format!("station_id: {e}")))?;
    let topics = Topics::new(&config.broker.topic_prefix, &station)
        .map_err(|e| DaemonError::Config(format!("broker.topic_prefix: {e}")))?;
    let state_dir = config.state_dir.clone();
    std::fs::create_dir_all(&state_dir).map_err(|source| DaemonError::StateDir {
        path: state_dir.clone(),
        source,
    })?;
    let journal: Journal<Record> = Journal::open(state_dir.join("journal.log"))?;
    let outbox = Outbox::open(state_dir.join("outbox"))?;

    let mut modules = Vec::new();
    let mut paths: Vec<PathBuf> = vec![config.pkcs11.default_module.clone()];
    for model in &config.models {
        if !paths.contains(&model.module) {
            paths.push(model.module.clone());
        }
    }
    let mut module_problems = Vec::new();
    for path in paths {
        let shown = path.clone();
        match tokio::task::spawn_blocking(move || Module::load(&path))
            .await
            .map_err(|e| DaemonError::Config(e.to_string()))?
        {
            Ok(module) => modules.push(module),
            Err(e) => {
                tracing::error!(module = %shown.display(), error = %e, "PKCS#11 module cannot be loaded: its tokens will not be served");
                module_problems.push((shown, e.to_string()));
            }
        }
    }
    if modules.is_empty() {
        return Err(DaemonError::Config(format!(
            "no PKCS#11 module could be loaded: {}",
            module_problems
                .iter()
                .map(|(p, e)| format!("{}: {e}", p.display()))
                .collect::<Vec<_>>()
                .join("; ")
        )));
    }

    let presence_seq = next_presence_seq(&state_dir)?;
    let presence = |status| Presence {
        v: V1,
        station_id: station.clone(),
        status,
        seq: presence_seq,
        agent_version: env!("CARGO_PKG_VERSION").to_owned(),
        at: now_utc(),
    };
    let encode = |p: Presence| p.encode().map_err(|e| DaemonError::Config(e.to_string()));
    let mut link_config = LinkConfig::for_broker(&config.broker, &config.station_id);
    link_config.resend_after = Some(config.timeouts.resend());
    // The platform's event acknowledgements need no PUBACK: a lost one only makes an event
    // be published again (PROTOCOL.md, "Acknowledgement and de-duplication").
    let acks = topics.acks();
    (
        link_config.subscriptions_at_most_once,
        link_config.subscriptions,
    ) = topics
        .station_subscriptions()
        .into_iter()
        .partition(|filter| *filter == acks);
    link_config.presence_topic = topics.presence();
    link_config.birth_payload = encode(presence(PresenceStatus::Online))?;
    link_config.death_payload = encode(presence(PresenceStatus::Offline))?;
    let link_shutdown = CancellationToken::new();
    let (link, mut incoming) = Link::start(link_config, outbox, link_shutdown.clone())?;

    let (events_tx, mut events_rx) = mpsc::channel::<Event>(256);
    let panel_shutdown = CancellationToken::new();
    let (panel, mut presses) = Panel::start(config.panel.as_ref(), panel_shutdown.clone())
        .map_err(|e| DaemonError::Config(format!("panel: {e}")))?;
    let config_wedged_call = config.timeouts.wedged_call();
    let mut daemon = Daemon {
        config,
        trust,
        topics,
        station,
        link,
        journal,
        modules,
        jobs: BTreeMap::new(),
        queue: VecDeque::new(),
        replayable: BTreeMap::new(),
        finished: BTreeMap::new(),
        dead_records: 0,
        nonces: BTreeSet::new(),
        seats: BTreeMap::new(),
        revoked: BTreeSet::new(),
        events: events_tx,
        inventory_seq: u64::try_from(now_utc().unix_timestamp()).unwrap_or(0) * 1000,
        inventory_dirty: true,
        claiming: true,
        timer_gen: 0,
        scanned: false,
        panel,
        lit: BTreeSet::new(),
        usb_pending: BTreeMap::new(),
        usb_problems: BTreeMap::new(),
        usb_ids: BTreeMap::new(),
        module_problems,
        stuck_calls: StuckCalls::new(config_wedged_call),
    };
    daemon.replay().await?;
    crate::systemd::ready();
    tracing::info!(
        station = %daemon.station,
        jobs = daemon.jobs.len(),
        modules = daemon.modules.len(),
        "agent ready"
    );

    // USB arrivals trigger an immediate scan; the periodic scan serves modules without USB.
    let (usb_tx, mut usb_rx) = mpsc::channel::<UsbEvent>(64);
    let usb_stop = CancellationToken::new();
    let _usb_thread = daemon.start_usb_watcher(usb_tx, usb_stop.clone());

    let scan_every = Duration::from_millis(daemon.config.pkcs11.scan_interval_ms);
    let mut scan_tick = tokio::time::interval(scan_every);
    scan_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut scanning = false;
    // CSR bundles are not in the outbox (the journal keeps them): re-sent from here.
    let resend_every = daemon.config.timeouts.resend();
    let mut resend_tick = tokio::time::interval(resend_every);
    resend_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let watchdog = crate::systemd::watchdog_interval();
    let mut watchdog_tick = tokio::time::interval(watchdog.unwrap_or(Duration::from_secs(3600)));
    let grace = daemon.config.timeouts.shutdown_grace();
    let mut stop_deadline: Option<tokio::time::Instant> = None;
    let mut status_tick = tokio::time::interval(crate::status::REFRESH);
    status_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The retained inventory is a state document: a change after a quiet spell goes out at
    // once, changes in a burst (a busy desk) go out together, the newest state at most
    // `INVENTORY_EVERY` later.
    let now = tokio::time::Instant::now();
    let mut inventory_sent = now.checked_sub(INVENTORY_EVERY).unwrap_or(now);
    let mut calls_tick = tokio::time::interval(daemon.stuck_calls.check_every());
    calls_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    loop {
        if stop_deadline.is_some() && !daemon.jobs.values().any(|j| j.running) {
            break;
        }
        let deadline = stop_deadline
            .unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(86_400));
        tokio::select! {
            _ = shutdown.cancelled(), if stop_deadline.is_none() => {
                tracing::info!("stopping: no new claims; waiting for running steps to reach a safe point");
                crate::systemd::stopping();
                daemon.claiming = false;
                stop_deadline = Some(tokio::time::Instant::now() + grace);
            }
            _ = tokio::time::sleep_until(deadline), if stop_deadline.is_some() => {
                tracing::warn!("shutdown grace ran out with steps still running; they resume after restart");
                break;
            }
            Some(message) = incoming.recv() => daemon.on_message(message).await?,
            Some(event) = events_rx.recv() => {
                if let Event::Scanned(_) = &event {
                    scanning = false;
                }
                daemon.on_event(event).await?;
            }
            Some(event) = usb_rx.recv() => {
                daemon.on_usb(event);
                if !scanning {
                    scanning = true;
                    daemon.scan();
                }
            }
            _ = scan_tick.tick() => {
                if !scanning {
                    scanning = true;
                    daemon.scan();
                }
            }
            _ = resend_tick.tick() => daemon.resend_csrs(resend_every),
            _ = watchdog_tick.tick(), if watchdog.is_some() => {
                crate::systemd::watchdog();
            }
            Some(press) = presses.recv() => daemon.on_press(press),
            _ = status_tick.tick() => {
                daemon.check_usb_arrivals();
                daemon.write_status();
            }
            _ = calls_tick.tick() => daemon.check_token_calls(),
            _ = tokio::time::sleep_until(inventory_sent + INVENTORY_EVERY), if daemon.inventory_dirty => {}
        }
        if daemon.inventory_dirty && inventory_sent.elapsed() >= INVENTORY_EVERY {
            daemon.publish_inventory();
            inventory_sent = tokio::time::Instant::now();
        }
        daemon.update_lights();
    }
    if daemon.inventory_dirty {
        daemon.publish_inventory();
    }
    usb_stop.cancel();
    let mut last = daemon.snapshot();
    last.running = false;
    if let Err(e) = crate::status::write(&daemon.config.state_dir, &last) {
        tracing::warn!(error = %e, "status snapshot not written");
    }
    if let Err(e) = daemon.link.sync_outbox() {
        tracing::warn!(error = %e, "outbox not synced at shutdown; the journal re-makes its events");
    }
    link_shutdown.cancel();
    panel_shutdown.cancel();
    daemon.link.stopped().await;
    daemon.panel.stopped().await;
    tracing::info!("agent stopped");
    Ok(())
}

/// A presence sequence number that grows across restarts (kept in the state folder).
fn next_presence_seq(dir: &std::path::Path) -> Result<u64, DaemonError> {
    let path = dir.join("presence.seq");
    let last: u64 = std::fs::read_to_string(&path)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    let next = last + 1;
    let tmp = dir.join("presence.seq.tmp");
    std::fs::write(&tmp, next.to_string())
        .and_then(|()| std::fs::rename(&tmp, &path))
        .map_err(|source| DaemonError::StateDir {
            path: path.clone(),
            source,
        })?;
    Ok(next)
}

impl Daemon {
    // ----- start-up -------------------------------------------------------------------

    /// Rebuilds every job from the journal, then compacts it.
    async fn replay(&mut self) -> Result<(), DaemonError> {
        let records = self.journal.replay()?;
        // Per job, the events of its last journaled record: pushed to the outbox again.
        let mut last_events: BTreeMap<JobId, Vec<StepEvent>> = BTreeMap::new();
        // Jobs in the order they were accepted: the queue keeps it across a restart.
        let mut accepted_order: Vec<JobId> = Vec::new();
        for record in records {
            match record {
                Record::Job { job_id, envelope } => {
                    accepted_order.push(job_id.clone());
                    let doc = self.open_job(&job_id, &envelope)?;
                    self.nonces.insert(doc.nonce.clone());
                    // The lost token of a replacement stays revoked even if its own record
                    // never reached the journal.
                    if doc.kind == JobKind::Replace
                        && let Some(old) = &doc.old_token_serial
                    {
                        self.revoked.insert(old.as_str().trim().to_owned());
                    }
                    let machine = JobMachine::new(job_id.clone(), doc.kind, doc.rekey);
                    let mut entry = JobEntry::new(Arc::new(doc), machine);
                    entry.records = 1;
                    // The `queued` event was made at acceptance; replaying keeps the seq.
                    let accepted = entry.machine.accepted();
                    self.jobs.insert(job_id.clone(), entry);
                    let events = self.events_of(&job_id, reports_of(vec![accepted]), now_utc());
                    last_events.insert(job_id, events);
                }
                Record::Pins { job_id, pins } => {
                    let bytes = self.open_record(&job_id, RecordKind::Pins, &pins)?;
                    let opened = Pins::from_bytes(&bytes).map_err(DaemonError::Journal)?;
                    if let Some(entry) = self.jobs.get_mut(&job_id) {
                        entry.pins = Some(Arc::new(opened));
                        entry.records += 1;
                    }
                }
                Record::Input { job_id, at, input } => {
                    let input: Input = self.open_json(&job_id, RecordKind::Input, &input)?;
                    let Some(entry) = self.jobs.get_mut(&job_id) else {
                        continue;
                    };
                    entry.records += 1;
                    if let Input::CertificatesArrived { bundle } = &input {
                        entry.certs = Some(bundle.clone());
                    }
                    // Inputs were valid when journaled; an error here means the journal
                    // is from another version: log and go on with the rest.
                    let actions = match entry.machine.on(input) {
                        Ok(actions) => actions,
                        Err(e) => {
                            tracing::warn!(error = %e, "journal input not applicable on replay");
                            continue;
                        }
                    };
                    // Events as they were made: at the record's time, a step's end with the
                    // time its start was journaled.
                    let events = self.events_of(&job_id, reports_of(actions.clone()), at);
                    last_events.insert(job_id.clone(), events);
                    if let Some(entry) = self.jobs.get_mut(&job_id) {
                        for action in &actions {
                            if let Action::Execute(step) = action {
                                entry.step_started = Some((*step, at));
                            }
                        }
                    }
                }
                Record::Csr { job_id, bundle } => {
                    let bundle = self.open_json(&job_id, RecordKind::Csr, &bundle)?;
                    if let Some(entry) = self.jobs.get_mut(&job_id) {
                        entry.csr = Some(bundle);
                        entry.records += 1;
                    }
                }
                Record::Done {
                    job_id,
                    nonce,
                    expires_at,
                } => {
                    self.nonces.insert(nonce.clone());
                    self.finished
                        .insert(job_id, FinishedJob { nonce, expires_at });
                }
                Record::Revoked { serial } => {
                    self.revoked.insert(serial.as_str().trim().to_owned());
                }
            }
        }
        for (job_id, events) in last_events {
            for event in events {
                self.publish_replayable_event(&job_id, &event)?;
            }
        }
        // Compaction below drops finished jobs' records, which could re-make their events:
        // the outbox must hold them durably first.
        self.link.sync_outbox()?;
        self.replayable.clear();
        // A step that runs again after the restart reports its own new start.
        for entry in self.jobs.values_mut() {
            entry.step_started = None;
        }
        // Compact: finished jobs shrink to a `Done` record; unfinished ones keep everything.
        let finished: Vec<JobId> = self
            .jobs
            .iter()
            .filter(|(_, e)| e.machine.is_finished())
            .map(|(id, _)| id.clone())
            .collect();
        for id in finished {
            if let Some(entry) = self.jobs.remove(&id) {
                self.finished.insert(id, FinishedJob::of(&entry.doc));
            }
        }
        let old = self.journal.replay()?;
        let jobs = &self.jobs;
        let now = now_utc();
        let keep = compacted(old, |id| jobs.contains_key(id), &self.finished, now);
        self.journal.rewrite(&keep)?;
        self.dead_records = 0;
        self.forget_expired(now);

        // Resume what was waiting, oldest first.
        for id in accepted_order {
            let Some(entry) = self.jobs.get(&id) else {
                continue;
            };
            match entry.machine.state().clone() {
                JobState::Queued => {
                    let waiting = Waiting::of(&id, entry);
                    if entry.machine.is_targeted() {
                        // The wait restarts with the agent: the platform's job expiry bounds it.
                        self.arm(&id, Timer::TargetToken);
                    }
                    self.queue.push_back(waiting);
                }
                JobState::AwaitingCertificates { .. } => {
                    self.send_job_csr(&id);
                    self.arm(&id, Timer::Certificates);
                }
                JobState::Parked { .. } => self.arm(&id, Timer::TokenReturn),
                JobState::AwaitingFinalAck { .. } => self.arm(&id, Timer::FinalAck),
                // A step was running: it runs again once the token is seen (scan).
                JobState::Running { .. } | JobState::Finished(_) => {}
            }
            if let Some(entry) = self.jobs.get_mut(&id) {
                entry.token = entry
                    .machine
                    .serial()
                    .map(|s| TokenKey::Serial(s.to_string()));
            }
        }
        Ok(())
    }

    /// Encrypts a record's content with the journal key, bound to its job and kind.
    fn seal_record(
        &self,
        job_id: &JobId,
        kind: RecordKind,
        plaintext: &[u8],
    ) -> Result<Sealed, DaemonError> {
        self.trust
            .journal_key
            .seal(&kind.context(job_id), plaintext)
            .map_err(DaemonError::Journal)
    }

    fn open_record(
        &self,
        job_id: &JobId,
        kind: RecordKind,
        sealed: &Sealed,
    ) -> Result<zeroize::Zeroizing<Vec<u8>>, DaemonError> {
        self.trust
            .journal_key
            .open(&kind.context(job_id), sealed)
            .map_err(DaemonError::Journal)
    }

    fn seal_json<T: Serialize>(
        &self,
        job_id: &JobId,
        kind: RecordKind,
        value: &T,
    ) -> Result<Sealed, DaemonError> {
        let mut bytes = zeroize::Zeroizing::new(Vec::with_capacity(512));
        serde_json::to_writer(&mut *bytes, value)
            .map_err(|e| DaemonError::Journal(format!("{}: {e}", kind.context(job_id))))?;
        self.seal_record(job_id, kind, &bytes)
    }

    fn open_json<T: serde::de::DeserializeOwned>(
        &self,
        job_id: &JobId,
        kind: RecordKind,
        sealed: &Sealed,
    ) -> Result<T, DaemonError> {
        let bytes = self.open_record(job_id, kind, sealed)?;
        serde_json::from_slice(&bytes)
            .map_err(|e| DaemonError::Journal(format!("{}: {e}", kind.context(job_id))))
    }

    fn open_job(&self, job_id: &JobId, sealed: &Sealed) -> Result<JobDocument, DaemonError> {
        let bytes = self
            .trust
            .journal_key
            .open(job_id.as_str(), sealed)
            .map_err(DaemonError::Journal)?;
        let envelope =
            JobEnvelope::decode(&bytes).map_err(|e| DaemonError::Journal(e.to_string()))?;
        JobDocument::decode(envelope.job_bytes()).map_err(|e| DaemonError::Journal(e.to_string()))
    }

    fn start_usb_watcher(
        &self,
        tx: mpsc::Sender<UsbEvent>,
        stop: CancellationToken,
    ) -> Option<std::thread::JoinHandle<Result<(), usb::UsbError>>> {
        let filter = ModelFilter::new(
            self.config
                .models
                .iter()
                .map(|m| (m.vendor_id, m.product_id)),
        );
        let poll = Duration::from_millis(self.config.pkcs11.scan_interval_ms.max(100));
        let watcher: Box<dyn usb::UsbWatcher> = match self.config.usb.watcher {
            UsbWatcherKind::None => return None,
            UsbWatcherKind::Rusb => Box::new(usb::RusbWatcher::new(filter, poll)),
            UsbWatcherKind::Sim => {
                let dir = self.config.usb.sim_dir.clone()?;
                Box::new(usb::SnapshotWatcher::new(
                    "hsm-sim virtual bus",
                    move || usb::read_sim_bus(&dir),
                    filter,
                    poll,
                ))
            }
        };
        match usb::spawn(watcher, tx, stop) {
            Ok(handle) => Some(handle),
            Err(e) => {
                tracing::warn!(error = %e, "USB watcher thread could not start; slot scan only");
                None
            }
        }
    }

    // ----- the platform's messages ------------------------------------------------------

    async fn on_message(&mut self, message: Incoming) -> Result<(), DaemonError> {
        let topic = match self.topics.parse(message.topic()) {
            Ok(topic) => topic,
            Err(e) => {
                tracing::warn!(topic = message.topic(), error = %e, "message on an unexpected topic ignored");
                ack(message).await;
                return Ok(());
            }
        };
        match topic {
            Topic::Jobs => self.on_job(message).await,
            Topic::JobCerts(job_id) => self.on_certs(job_id, message).await,
            Topic::JobCancel(job_id) => self.on_cancel(job_id, message).await,
            Topic::Acks => self.on_ack(message).await,
            other => {
                tracing::debug!(topic = ?other, "message not for the station ignored");
                ack(message).await;
                Ok(())
            }
        }
    }

    /// A job document: verify, de-duplicate, journal, then acknowledge to the broker.
    async fn on_job(&mut self, message: Incoming) -> Result<(), DaemonError> {
        let envelope = match JobEnvelope::decode(message.payload()) {
            Ok(envelope) => envelope,
            Err(e) => {
                // Without a readable job id there is no job to report on: log and drop.
                tracing::warn!(error = %e, "malformed job message dropped");
                ack(message).await;
                return Ok(());
            }
        };
        // Redelivery first (by job id), before the nonce check that would call it a replay.
        if let Ok(unverified) = JobDocument::decode(envelope.job_bytes())
            && (self.jobs.contains_key(&unverified.job_id)
                || self.finished.contains_key(&unverified.job_id))
        {
            let same = self
                .jobs
                .get(&unverified.job_id)
                .map(|e| e.doc.nonce == unverified.nonce)
                .or_else(|| {
                    self.finished
                        .get(&unverified.job_id)
                        .map(|f| f.nonce == unverified.nonce)
                })
                .unwrap_or(false);
            if same {
                tracing::info!(job = %unverified.job_id, "duplicate delivery of a known job ignored");
            } else if let Err(e) = envelope.verify(&self.trust.keyring, &self.station, now_utc()) {
                // Only the platform may speak on a real job's topic: an unverifiable message
                // that reuses a known job id is logged, never reported as that job's event.
                tracing::warn!(job = %unverified.job_id, error = %e, "unverifiable message reusing a known job id ignored");
            } else {
                self.reject(
                    &unverified.job_id,
                    &envelope,
                    "duplicate-job-id",
                    "a different job with this job id was accepted before",
                )
                .await?;
            }
            ack(message).await;
            return Ok(());
        }
        let verified = envelope
            .verify(&self.trust.keyring, &self.station, now_utc())
            .and_then(|doc| check_nonce(&doc, &self.nonces).map(|()| doc));
        let doc = match verified {
            Ok(doc) => doc,
            Err(e) => {
                let job_id = JobDocument::decode(envelope.job_bytes()).map(|d| d.job_id);
                match job_id {
                    Ok(job_id) => {
                        let reason = e.to_string();
                        let code_str = rejection_code(&e);
                        self.reject(&job_id, &envelope, code_str, &reason).await?;
                    }
                    Err(_) => {
                        tracing::warn!(error = %e, "unverifiable job without a job id dropped")
                    }
                }
                ack(message).await;
                return Ok(());
            }
        };
        let envelope_bytes = envelope
            .encode()
            .map_err(|e| DaemonError::Journal(e.to_string()))?;
        let sealed = self
            .trust
            .journal_key
            .seal(doc.job_id.as_str(), &envelope_bytes)
            .map_err(DaemonError::Journal)?;
        let job_id = doc.job_id.clone();
        let mut machine = JobMachine::new(job_id.clone(), doc.kind, doc.rekey);
        let first = machine.accepted();
        // Order: the job to the journal, its `queued` event to the outbox (re-made from the
        // journal after a crash), then the broker's ack (a crash before it: the broker
        // delivers the job again, a known duplicate).
        let mut records = vec![Record::Job {
            job_id: job_id.clone(),
            envelope: sealed,
        }];
        let newly_revoked = doc
            .old_token_serial
            .as_ref()
            .filter(|old| !self.revoked.contains(old.as_str().trim()));
        if let Some(old) = newly_revoked {
            records.push(Record::Revoked {
                serial: old.clone(),
            });
        }
        self.journal.append_all(&records)?;
        self.perform_reports(&job_id, std::slice::from_ref(&first))
            .await?;
        if let Some(old) = newly_revoked {
            self.revoked.insert(old.as_str().trim().to_owned());
            self.mark_revoked(old.as_str().trim());
        }
        ack(message).await;
        tracing::info!(job = %job_id, kind = %doc.kind, order = %doc.order_number, "job accepted");
        self.nonces.insert(doc.nonce.clone());
        let targeted = machine.is_targeted();
        let mut entry = JobEntry::new(Arc::new(doc), machine);
        // The `Job` record (a `Revoked` one is nobody's: compaction keeps it).
        entry.records = 1;
        self.jobs.insert(job_id.clone(), entry);
        if targeted {
            self.arm(&job_id, Timer::TargetToken);
        }
        if let Some(entry) = self.jobs.get(&job_id) {
            self.queue.push_back(Waiting::of(&job_id, entry));
        }
        // A waiting targeted job may make a token already plugged in the wrong one.
        self.inventory_dirty = true;
        self.try_claim_all().await
    }

    async fn reject(
        &mut self,
        job_id: &JobId,
        envelope: &JobEnvelope,
        code_str: &'static str,
        reason: &str,
    ) -> Result<(), DaemonError> {
        tracing::warn!(job = %job_id, code = code_str, %reason, "job rejected");
        // The id derives from the message, so a redelivered bad job is one event, not many.
        let digest = Sha256::digest(envelope.job_bytes());
        let event_id = EventId::new(format!("r{}", hex::encode(&digest[..16])))
            .map_err(|e| DaemonError::Journal(e.to_string()))?;
        let event = StepEvent {
            v: V1,
            event_id: event_id.clone(),
            job_id: job_id.clone(),
            seq: 1,
            step: Step::Receive,
            state: ExecutionState::Rejected,
            token_serial: None,
            error: Some(StepError {
                code: code(code_str),
                message: ukey_protocol::fit_text(reason, 512),
                retryable: false,
            }),
            data: None,
            started_at: None,
            at: now_utc(),
        };
        self.publish_event(job_id, &event).await
    }

    async fn on_certs(&mut self, job_id: JobId, message: Incoming) -> Result<(), DaemonError> {
        let response = match CertResponse::decode(message.payload()) {
            Ok(r) if r.job_id == job_id => r,
            Ok(_) => {
                tracing::warn!(job = %job_id, "certificate response for another job on this topic ignored");
                ack(message).await;
                return Ok(());
            }
            Err(e) => {
                tracing::warn!(job = %job_id, error = %e, "malformed certificate response ignored");
                ack(message).await;
                return Ok(());
            }
        };
        let waiting = self
            .jobs
            .get(&job_id)
            .is_some_and(|e| matches!(e.machine.state(), JobState::AwaitingCertificates { .. }));
        if !waiting {
            tracing::info!(job = %job_id, "certificate response while not waiting for one ignored");
            ack(message).await;
            return Ok(());
        }
        let input = match response.outcome {
            CertOutcome::Issued(bundle) => {
                if let Some(entry) = self.jobs.get_mut(&job_id) {
                    entry.certs = Some(bundle.clone());
                }
                Input::CertificatesArrived { bundle }
            }
            CertOutcome::Rejected(r) => Input::CertificatesRejected {
                reason: format!("{}: {}", r.code, r.reason),
            },
        };
        self.feed(&job_id, input).await?;
        ack(message).await;
        Ok(())
    }

    async fn on_cancel(&mut self, job_id: JobId, message: Incoming) -> Result<(), DaemonError> {
        match Cancel::decode(message.payload()) {
            Ok(cancel) if cancel.job_id == job_id => {
                if self
                    .jobs
                    .get(&job_id)
                    .is_some_and(|e| !e.machine.is_finished())
                {
                    tracing::info!(job = %job_id, "canceled by the platform");
                    self.queue.retain(|w| w.job != job_id);
                    self.feed(
                        &job_id,
                        Input::Cancel {
                            reason: cancel.reason,
                        },
                    )
                    .await?;
                    // Alerts and tokens that named the job change.
                    self.inventory_dirty = true;
                }
            }
            Ok(_) => tracing::warn!(job = %job_id, "cancel naming another job ignored"),
            Err(e) => tracing::warn!(job = %job_id, error = %e, "malformed cancel ignored"),
        }
        ack(message).await;
        Ok(())
    }

    async fn on_ack(&mut self, message: Incoming) -> Result<(), DaemonError> {
        match Ack::decode(message.payload()) {
            Ok(a) => {
                let ids: Vec<String> = a.event_ids.iter().map(|e| e.to_string()).collect();
                if let Err(e) = self.link.acknowledge(ids).await {
                    tracing::warn!(error = %e, "outbox acknowledgement failed");
                }
                let acked: BTreeSet<&EventId> = a.event_ids.iter().collect();
                let waiting: Vec<JobId> = self
                    .jobs
                    .iter()
                    .filter(|(_, e)| matches!(e.machine.state(), JobState::AwaitingFinalAck { event_id, .. } if acked.contains(event_id)))
                    .map(|(id, _)| id.clone())
                    .collect();
                for job_id in waiting {
                    self.feed(&job_id, Input::FinalAcknowledged).await?;
                    // Its token (released at the last step) and any alert no longer name it.
                    self.inventory_dirty = true;
                }
            }
            Err(e) => tracing::warn!(error = %e, "malformed ack ignored"),
        }
        ack(message).await;
        Ok(())
    }

    // ----- feeding the machines ---------------------------------------------------------

    /// Feeds `input` to a job: journal, outbox, then the other actions.
    async fn feed(&mut self, job_id: &JobId, input: Input) -> Result<(), DaemonError> {
        self.feed_with(job_id, input, Vec::new()).await
    }

    /// [`Daemon::feed`], journaling `records` in the same write and fsync, before the input.
    async fn feed_with(
        &mut self,
        job_id: &JobId,
        input: Input,
        mut records: Vec<Record>,
    ) -> Result<(), DaemonError> {
        let Some(entry) = self.jobs.get_mut(job_id) else {
            return Ok(());
        };
        let actions = match entry.machine.on(input.clone()) {
            Ok(actions) => actions,
            Err(e) => {
                tracing::warn!(error = %e, "input ignored");
                return Ok(());
            }
        };
        records.push(Record::Input {
            job_id: job_id.clone(),
            at: now_utc(),
            input: self.seal_json(job_id, RecordKind::Input, &input)?,
        });
        // This record takes over from the job's last one, which alone re-makes its events
        // after a crash: those events must be on disk first, unless already acknowledged.
        if let Some(ids) = self.replayable.remove(job_id) {
            self.link.make_durable(&ids)?;
        }
        if platform_repeats(&input) {
            self.journal.append_all_unsynced(&records)?;
        } else {
            self.journal.append_all(&records)?;
        }
        // Every record passed to `feed_with` is this job's (PINs, a CSR bundle, the input).
        if let Some(entry) = self.jobs.get_mut(job_id) {
            entry.records += records.len();
        }
        self.perform_reports(job_id, &actions).await?;
        for action in actions {
            match action {
                Action::Report(_) => {}
                Action::Execute(step) => self.execute(job_id, step),
                Action::Arm(timer) => self.arm(job_id, timer),
                Action::Disarm(timer) => self.disarm(job_id, timer),
                Action::Release => self.release(job_id),
            }
        }
        let finished = self
            .jobs
            .get(job_id)
            .is_some_and(|e| e.machine.is_finished());
        if finished && let Some(entry) = self.jobs.remove(job_id) {
            let state = match entry.machine.state() {
                JobState::Finished(s) => *s,
                _ => ExecutionState::Failed,
            };
            let token = entry.token.as_ref().map(tracing::field::display);
            tracing::info!(job = %job_id, token, state = %state, "job finished");
            // No record follows a finished job's last one until a compaction drops them all,
            // which makes the outbox durable first (`compact_if_due`).
            self.replayable.remove(job_id);
            // One that ended while queued (expired, timed out waiting for its token).
            self.queue.retain(|w| w.job != *job_id);
            self.dead_records += entry.records;
            if let Some(seat) = entry.token.as_ref().and_then(|k| self.seats.get_mut(k)) {
                seat.outcome = Some(state);
                seat.acknowledged = false;
            }
            // A job that ended before its claim took effect (canceled, timed out) had no
            // `Release`: free whatever token still names it.
            for seat in self.seats.values_mut() {
                if seat.job.as_ref() == Some(job_id) {
                    seat.job = None;
                    self.inventory_dirty = true;
                }
            }
            self.finished
                .insert(job_id.clone(), FinishedJob::of(&entry.doc));
            self.compact_if_due()?;
        }
        self.try_claim_all().await
    }

    async fn perform_reports(
        &mut self,
        job_id: &JobId,
        actions: &[Action],
    ) -> Result<(), DaemonError> {
        for action in actions {
            if let Action::Report(report) = action {
                let event = self.event_from(job_id, report);
                self.publish_replayable_event(job_id, &event)?;
            }
        }
        Ok(())
    }

    /// The events of `reports`, made at `at` (a replay re-makes them as they were).
    fn events_of(
        &self,
        job_id: &JobId,
        reports: Vec<Report>,
        at: OffsetDateTime,
    ) -> Vec<StepEvent> {
        reports
            .iter()
            .map(|report| StepEvent {
                at,
                ..self.event_from(job_id, report)
            })
            .collect()
    }

    fn event_from(&self, job_id: &JobId, report: &Report) -> StepEvent {
        let started_at = self
            .jobs
            .get(job_id)
            .and_then(|e| e.step_started)
            .filter(|(step, _)| *step == report.step)
            .map(|(_, at)| at);
        StepEvent {
            v: V1,
            event_id: report.event_id.clone(),
            job_id: job_id.clone(),
            seq: report.seq,
            step: report.step,
            state: report.state,
            token_serial: report.token_serial.clone(),
            error: report.error.clone(),
            data: report.data.clone(),
            started_at,
            at: now_utc(),
        }
    }

    /// Publishes an event that nothing in the journal can make again (a rejection): it is
    /// on disk before this returns.
    async fn publish_event(
        &mut self,
        job_id: &JobId,
        event: &StepEvent,
    ) -> Result<(), DaemonError> {
        let entry = self.outbox_entry(job_id, event)?;
        self.link
            .publish_event(entry)
            .await
            .map_err(DaemonError::Link)
    }

    /// Publishes a step event that the job's last journal record makes again after a crash:
    /// written to the outbox without an fsync, made durable before the job's next record
    /// (`feed_with`) if the platform has not acknowledged it by then.
    fn publish_replayable_event(
        &mut self,
        job_id: &JobId,
        event: &StepEvent,
    ) -> Result<(), DaemonError> {
        let entry = self.outbox_entry(job_id, event)?;
        let event_id = entry.event_id.clone();
        self.link
            .publish_replayable_event(entry)
            .map_err(DaemonError::Link)?;
        self.replayable
            .entry(job_id.clone())
            .or_default()
            .push(event_id);
        Ok(())
    }

    fn outbox_entry(&self, job_id: &JobId, event: &StepEvent) -> Result<OutboxEntry, DaemonError> {
        // The platform has every step event; the log keeps the milestones (accepted, claimed,
        // finished) and the errors, not a line per step of every token.
        match &event.error {
            Some(error) => tracing::info!(
                job = %job_id,
                seq = event.seq,
                step = %event.step,
                state = %event.state,
                error = error.code.as_str(),
                "step event"
            ),
            None => tracing::debug!(
                job = %job_id,
                seq = event.seq,
                step = %event.step,
                state = %event.state,
                "step event"
            ),
        }
        let payload = match event.encode() {
            Ok(payload) => payload,
            Err(e) => {
                // An event the protocol refuses must not stop the desk (and, re-made from the
                // journal, stop it again after every restart): send it without its details.
                tracing::error!(job = %job_id, seq = event.seq, error = %e, "step event refused by the protocol; sent without details");
                let mut plain = event.clone();
                plain.data = None;
                if let Some(err) = plain.error.as_mut() {
                    err.message = ukey_protocol::fit_text(&err.message, 512);
                }
                plain
                    .encode()
                    .map_err(|e| DaemonError::Journal(format!("step event: {e}")))?
            }
        };
        Ok(OutboxEntry {
            event_id: event.event_id.to_string(),
            topic: self.topics.job_events(job_id),
            payload,
        })
    }

    /// Publishes `job_id`'s CSR bundle (the platform answers a repeated bundle the same way).
    fn send_job_csr(&mut self, job_id: &JobId) {
        let Some(entry) = self.jobs.get_mut(job_id) else {
            return;
        };
        let Some(bundle) = entry.csr.clone() else {
            return;
        };
        entry.csr_sent = Some(tokio::time::Instant::now());
        self.send_csr(&bundle);
    }

    /// Publishes again the CSR bundles the platform has not answered within `after`: a
    /// broker that lost the platform's session drops a bundle and still says PUBACK.
    fn resend_csrs(&mut self, after: Duration) {
        let due: Vec<JobId> = self
            .jobs
            .iter()
            .filter(|(_, e)| matches!(e.machine.state(), JobState::AwaitingCertificates { .. }))
            .filter(|(_, e)| e.csr_sent.is_none_or(|t| t.elapsed() >= after))
            .map(|(id, _)| id.clone())
            .collect();
        for job_id in due {
            tracing::info!(job = %job_id, "CSR bundle not answered yet: sending it again");
            self.send_job_csr(&job_id);
        }
    }

    fn send_csr(&self, bundle: &CsrBundle) {
        match bundle.encode() {
            Ok(payload) => {
                if let Err(e) = self
                    .link
                    .publish(self.topics.job_csr(&bundle.job_id), payload)
                {
                    tracing::warn!(job = %bundle.job_id, error = %e, "CSR bundle not published");
                }
            }
            Err(e) => {
                tracing::error!(job = %bundle.job_id, error = %e, "CSR bundle cannot be encoded")
            }
        }
    }

    // ----- timers ------------------------------------------------------------------------

    fn timer_duration(&self, timer: Timer) -> Duration {
        let t = &self.config.timeouts;
        match timer {
            Timer::Certificates => t.certificates(),
            Timer::TokenReturn => t.token_removed(),
            Timer::FinalAck => t.bind_ack(),
            Timer::TargetToken => t.target_token(),
        }
    }

    fn arm(&mut self, job_id: &JobId, timer: Timer) {
        self.timer_gen += 1;
        let generation = self.timer_gen;
        let Some(entry) = self.jobs.get_mut(job_id) else {
            return;
        };
        entry.timers.insert(timer, generation);
        let duration = self.timer_duration(timer);
        let tx = self.events.clone();
        let job_id = job_id.clone();
        tokio::spawn(async move {
            tokio::time::sleep(duration).await;
            let _ = tx.send(Event::TimerFired(job_id, timer, generation)).await;
        });
    }

    fn disarm(&mut self, job_id: &JobId, timer: Timer) {
        if let Some(entry) = self.jobs.get_mut(job_id) {
            entry.timers.remove(&timer);
        }
    }

    /// The platform has not acknowledged a job's last event within `timeouts.bind_ack_secs`.
    /// The token is finished and the event stays in the outbox (sent again every
    /// `timeouts.resend_secs`), so the job keeps waiting; the desk says so in a log line and
    /// in the inventory's `platform-unconfirmed` alert, which clears with the acknowledgement.
    fn final_ack_overdue(&mut self, job_id: &JobId) {
        let Some(entry) = self.jobs.get(job_id) else {
            return;
        };
        if entry.machine.unconfirmed() != Some(true) {
            return;
        }
        tracing::warn!(
            job = %job_id,
            token = entry.machine.serial().map(|s| s.as_str()).unwrap_or("-"),
            step = %entry.machine.current_step().map_or("-", |s| s.as_str()),
            waited_secs = self.config.timeouts.bind_ack_secs,
            "the platform has not acknowledged the job's last event: the token is finished and may be taken out; the event is sent again until the platform acknowledges it, and the job succeeds then"
        );
        self.inventory_dirty = true;
    }

    /// The job whose token `serial` is finished while the platform has not acknowledged the
    /// job's last event yet.
    fn unconfirmed_job(&self, serial: &str) -> Option<&JobId> {
        let serial = serial.trim();
        if serial.is_empty() {
            return None;
        }
        self.jobs
            .iter()
            .filter(|(_, e)| e.machine.unconfirmed().is_some())
            .find(|(_, e)| {
                e.machine
                    .serial()
                    .is_some_and(|s| s.as_str().trim() == serial)
            })
            .map(|(id, _)| id)
    }

    // ----- tokens -------------------------------------------------------------------------

    /// Scans every module's slot list on a blocking thread.
    fn scan(&self) {
        let modules = self.modules.clone();
        let tx = self.events.clone();
        tokio::task::spawn_blocking(move || {
            let results = modules
                .iter()
                .enumerate()
                .map(|(i, m)| (i, m.survey()))
                .collect();
            let _ = tx.blocking_send(Event::Scanned(results));
        });
    }

    /// A USB arrival starts a wait for its PKCS#11 slot (matched by serial, invariant 1);
    /// the slot scan that the arrival triggers, or a later one, ends it.
    fn on_usb(&mut self, event: UsbEvent) {
        match event {
            UsbEvent::Arrived(d) => {
                tracing::info!(port = %d.port_path, id = %d.id(), serial = ?d.serial, "Ukey plugged in");
                if self.usb_problems.remove(&d.port_path).is_some() {
                    self.inventory_dirty = true;
                }
                if let Some(serial) = d.serial.as_ref().filter(|s| !s.is_empty()) {
                    self.usb_ids
                        .insert(serial.clone(), (d.vendor_id, d.product_id));
                }
                if let Some(serial) = d.serial.filter(|s| !s.is_empty()) {
                    let deadline = tokio::time::Instant::now()
                        + Duration::from_secs(self.config.usb.arrival_timeout_secs);
                    self.usb_pending.insert(serial, (d.port_path, deadline));
                }
            }
            UsbEvent::Left(d) => {
                tracing::info!(port = %d.port_path, id = %d.id(), "Ukey pulled out");
                if self.usb_problems.remove(&d.port_path).is_some() {
                    self.inventory_dirty = true;
                }
                self.usb_pending.retain(|_, (port, _)| *port != d.port_path);
            }
            UsbEvent::Inaccessible { device, reason } => {
                tracing::error!(port = %device.port_path, id = %device.id(), %reason, "Ukey present but not accessible");
                self.usb_problems.insert(
                    device.port_path.clone(),
                    (
                        "usb-not-accessible",
                        format!(
                            "Ukey {} at USB port {}: {reason}",
                            device.id(),
                            device.port_path
                        ),
                    ),
                );
                self.inventory_dirty = true;
            }
        }
    }

    /// Ends the waits of USB arrivals whose slot appeared, and reports those that ran out.
    fn check_usb_arrivals(&mut self) {
        let now = tokio::time::Instant::now();
        let seats = &self.seats;
        let problems = &mut self.usb_problems;
        let mut changed = false;
        self.usb_pending.retain(|serial, (port, deadline)| {
            if let Some(seat) = seats.get(&TokenKey::Serial(serial.clone())) {
                tracing::info!(%serial, %port, slot = seat.present.slot, "USB arrival matched to its PKCS#11 slot");
                return false;
            }
            if *deadline <= now {
                tracing::error!(
                    %serial,
                    %port,
                    "Ukey is on USB but no PKCS#11 slot shows it: is its model's module configured and working?"
                );
                problems.insert(
                    port.clone(),
                    (
                        "no-slot-for-token",
                        format!("Ukey {serial} at USB port {port} shows no PKCS#11 slot: check its model's module"),
                    ),
                );
                changed = true;
                return false;
            }
            true
        });
        if changed {
            self.inventory_dirty = true;
        }
    }

    // ----- the panel and the status snapshot ------------------------------------------------

    /// The panel position of a token: its PKCS#11 slot id (the rack position for hsm-sim).
    fn panel_slot(seat: &Seat) -> Option<usize> {
        usize::try_from(seat.present.slot)
            .ok()
            .filter(|s| *s < crate::panel::MAX_SLOTS)
    }

    fn update_lights(&mut self) {
        let mut lit = BTreeSet::new();
        let view = self.desk_view();
        for (key, seat) in &self.seats {
            let Some(slot) = Self::panel_slot(seat) else {
                continue;
            };
            // A finished token whose job waits for the platform's acknowledgement: its job is
            // still in progress, but the token's part is over.
            let outcome = if view.unconfirmed.contains(seat.present.serial.trim()) {
                Some(ExecutionState::InProgress)
            } else {
                seat.outcome
            };
            let light = if self.stuck_calls.get(key).is_some()
                || (self.wrong_token_among(seat, &view).is_some() && !seat.acknowledged)
            {
                // A stuck call needs the staff whatever was acknowledged: it is happening now.
                Light::Attention
            } else {
                crate::desk::light(seat.state, seat.job.is_some(), outcome, seat.acknowledged)
            };
            let _ = self.panel.set(slot, light);
            lit.insert(slot);
        }
        drop(view);
        for gone in self.lit.difference(&lit) {
            let _ = self.panel.set(*gone, Light::Off);
        }
        self.lit = lit;
    }

    /// Acknowledge clears a slot's done/failed/attention light; retry reads the token again
    /// (a token whose job failed may be taken by a new job once the platform sends one).
    fn on_press(&mut self, press: ButtonPress) {
        let slot = usize::from(press.slot);
        let key = self
            .seats
            .iter()
            .find(|(_, s)| Self::panel_slot(s) == Some(slot))
            .map(|(k, _)| k.clone());
        let Some(key) = key else {
            tracing::info!(slot, "button pressed on an empty slot");
            return;
        };
        tracing::info!(slot, token = %key, action = ?press.action, "panel button");
        match press.action {
            ButtonAction::Ack => {
                if let Some(seat) = self.seats.get_mut(&key) {
                    seat.acknowledged = true;
                }
            }
            ButtonAction::Retry => {
                if let Some(seat) = self.seats.get_mut(&key) {
                    seat.outcome = None;
                    seat.acknowledged = false;
                }
                self.observe(key);
            }
        }
    }

    fn snapshot(&self) -> Snapshot {
        let broker = match &*self.link.state().borrow() {
            crate::link::LinkState::Connected { .. } => "connected".to_owned(),
            crate::link::LinkState::Connecting => "connecting".to_owned(),
            crate::link::LinkState::Down { last_error, .. } => format!("down: {last_error}"),
            crate::link::LinkState::Stopped => "stopped".to_owned(),
        };
        let panel = self.panel.status();
        let panel = match (&panel.device, panel.connected, &panel.board) {
            (None, _, _) => "none".to_owned(),
            (Some(_), true, Some(board)) => format!(
                "connected ({}, {} slots, firmware {})",
                board.model, board.slots, board.firmware
            ),
            (Some(device), _, _) => format!(
                "disconnected ({}){}",
                device.display(),
                panel
                    .last_error
                    .map(|e| format!(": {e}"))
                    .unwrap_or_default()
            ),
        };
        let mut tokens: Vec<TokenLine> = self
            .seats
            .iter()
            .map(|(key, seat)| TokenLine {
                token: key.to_string(),
                slot: seat.present.slot,
                state: match (&seat.damage, seat.state) {
                    (Some(d), TokenState::Damaged) => format!(
                        "damaged ({})",
                        match (&d.function, &d.return_code) {
                            (Some(f), Some(c)) => format!("{f}: {c}"),
                            _ => d.message.clone(),
                        }
                    ),
                    (_, state) => match self.stuck_calls.get(key) {
                        Some(call) => format!(
                            "{} (a call has not returned for {} s)",
                            state.as_str(),
                            call.running_for(std::time::Instant::now()).as_secs()
                        ),
                        None => state.as_str().to_owned(),
                    },
                },
                job_id: seat.job.as_ref().map(ToString::to_string),
            })
            .collect();
        for (_, problem) in self.usb_problems.values() {
            tokens.push(TokenLine {
                token: problem.clone(),
                slot: u64::MAX,
                state: "not-accessible".into(),
                job_id: None,
            });
        }
        Snapshot {
            at_unix: crate::status::unix_now(),
            pid: std::process::id(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            station_id: self.station.to_string(),
            broker,
            outbox_depth: self.link.outbox_depth(),
            outbox_oldest_secs: self.link.outbox_oldest_age().map(|d| d.as_secs()),
            queued_jobs: self.queue.iter().map(|w| w.job.to_string()).collect(),
            running_jobs: self
                .jobs
                .iter()
                .filter(|(_, e)| e.machine.holds_token() || e.machine.unconfirmed().is_some())
                .map(|(id, e)| RunningJob {
                    job_id: id.to_string(),
                    kind: e.doc.kind.to_string(),
                    token: e.machine.serial().map(ToString::to_string),
                    doing: match e.machine.state() {
                        JobState::AwaitingCertificates { .. } => "waiting for certificates".into(),
                        JobState::Parked { .. } => "parked: token pulled out".into(),
                        JobState::AwaitingFinalAck { overdue: false, .. } => {
                            "token finished; waiting for the platform's acknowledgement".into()
                        }
                        JobState::AwaitingFinalAck { overdue: true, .. } => {
                            "token finished; the platform's acknowledgement is overdue".into()
                        }
                        _ => {
                            let step = e
                                .machine
                                .current_step()
                                .map(|s| s.as_str().to_owned())
                                .unwrap_or_default();
                            match e.token.as_ref().and_then(|k| self.stuck_calls.get(k)) {
                                Some(call) => format!(
                                    "{step}: STUCK, a token call has not returned for {} s",
                                    call.running_for(std::time::Instant::now()).as_secs()
                                ),
                                None => step,
                            }
                        }
                    },
                })
                .collect(),
            tokens,
            panel,
            cpu_us: micros(crate::token::meter::process_cpu()),
            module_cpu_us: micros(crate::token::meter::module_cpu()),
            module_calls: crate::token::meter::module_calls(),
            running: true,
        }
    }

    /// Writes the status snapshot off the runtime's threads.
    fn write_status(&self) {
        let snapshot = self.snapshot();
        let dir = self.config.state_dir.clone();
        tokio::task::spawn_blocking(move || {
            if let Err(e) = crate::status::write(&dir, &snapshot) {
                tracing::warn!(error = %e, "status snapshot not written");
            }
        });
    }

    async fn on_event(&mut self, event: Event) -> Result<(), DaemonError> {
        match event {
            Event::Scanned(results) => self.on_scan(results).await,
            Event::Observed(key, number, result) => {
                self.on_observed(key, number, result);
                self.try_claim_all().await
            }
            Event::WorkerReady(key, result) => self.on_worker(key, result).await,
            Event::StepDone(done) => self.on_step_done(*done).await,
            Event::TimerFired(job_id, timer, generation) => {
                let current = self
                    .jobs
                    .get(&job_id)
                    .and_then(|e| e.timers.get(&timer))
                    .copied();
                if current == Some(generation) {
                    self.disarm(&job_id, timer);
                    self.feed(&job_id, Input::TimedOut { timer }).await?;
                    if timer == Timer::FinalAck {
                        self.final_ack_overdue(&job_id);
                    }
                }
                Ok(())
            }
        }
    }

    async fn on_scan(
        &mut self,
        results: Vec<(usize, Result<SlotSurvey, TokenError>)>,
    ) -> Result<(), DaemonError> {
        self.scanned = true;
        let mut seen = BTreeSet::new();
        let mut scanned_modules = BTreeSet::new();
        for (module, result) in results {
            let survey = match result {
                Ok(survey) => survey,
                Err(e) => {
                    tracing::warn!(module = %self.modules[module].path().display(), error = %e, "slot scan failed");
                    continue;
                }
            };
            scanned_modules.insert(module);
            for present in survey.tokens {
                let key = TokenKey::of(module, &present);
                seen.insert(key.clone());
                match self.seats.get_mut(&key) {
                    Some(seat) => {
                        let changed = seat.present.flags != present.flags
                            || seat.present.label != present.label;
                        // A damaged token is read again until it reads well (one reading at
                        // a time); its failure is logged only when it changes.
                        let retry = seat.state == TokenState::Damaged
                            && seat.observing == 0
                            && seat.reread_at.is_none_or(|at| Instant::now() >= at);
                        let was_unreadable = std::mem::take(&mut seat.unreadable);
                        if was_unreadable {
                            tracing::info!(token = %key, slot = present.slot, "token can be read again");
                            if seat.state != TokenState::Damaged {
                                // A job held it meanwhile; a damaged one keeps its reason until
                                // a reading succeeds.
                                seat.damage = None;
                            }
                        }
                        seat.present = present;
                        if (changed || retry || was_unreadable) && seat.job.is_none() {
                            self.observe(key.clone());
                        }
                    }
                    None => {
                        tracing::info!(token = %key, slot = present.slot, label = %present.label, "token found");
                        let state = if present.is_blank() {
                            TokenState::Blank
                        } else {
                            TokenState::InProduction
                        };
                        self.seats
                            .insert(key.clone(), Seat::new(module, present, state));
                        self.inventory_dirty = true;
                        self.observe(key.clone());
                    }
                }
            }
            for unreadable in survey.unreadable {
                let key = self.on_unreadable(module, unreadable, &seen);
                seen.insert(key);
            }
        }
        // Departures: only for modules that answered.
        let gone: Vec<TokenKey> = self
            .seats
            .iter()
            .filter(|(k, s)| scanned_modules.contains(&s.module) && !seen.contains(*k))
            .map(|(k, _)| k.clone())
            .collect();
        for key in gone {
            if let Some(seat) = self.seats.remove(&key) {
                tracing::info!(token = %key, job = ?seat.job.as_ref().map(|j| j.as_str()), "token gone");
                self.inventory_dirty = true;
            }
        }
        self.resume_jobs_on_present_tokens().await?;
        self.try_claim_all().await
    }

    /// A slot of `module` holds a token the module cannot read: it stays (or becomes) a seat,
    /// `damaged` with the module's error, and takes no job. The seat is the token last seen
    /// in that slot (not seen elsewhere in this scan), so a token that goes bad keeps its
    /// serial; a token unreadable from the start is named by its slot. Returns the seat's key.
    fn on_unreadable(
        &mut self,
        module: usize,
        unreadable: UnreadableSlot,
        seen: &BTreeSet<TokenKey>,
    ) -> TokenKey {
        let UnreadableSlot { slot, error } = unreadable;
        let key = self
            .seats
            .iter()
            .find(|(k, s)| s.module == module && s.present.slot == slot && !seen.contains(*k))
            .map(|(k, _)| k.clone())
            .unwrap_or(TokenKey::Unnamed { module, slot });
        let seat = self.seats.entry(key.clone()).or_insert_with(|| {
            let present = PresentToken {
                slot,
                serial: String::new(),
                label: String::new(),
                model: String::new(),
                manufacturer: String::new(),
                flags: Default::default(),
                min_pin_len: 0,
                max_pin_len: 0,
            };
            Seat::new(module, present, TokenState::Damaged)
        });
        seat.unreadable = true;
        // What an observation started before this read is stale now.
        seat.observation += 1;
        if seat.job.is_none() && seat.state != TokenState::Damaged {
            seat.state = TokenState::Damaged;
            self.inventory_dirty = true;
        }
        let damage = crate::desk::damage(&error);
        if seat.damage.as_ref() != Some(&damage) {
            tracing::warn!(token = %key, slot, job = ?seat.job.as_ref().map(|j| j.as_str()), error = %error, "token cannot be read: shown as damaged, no job is taken on it");
            seat.damage = Some(damage);
            self.inventory_dirty = true;
        }
        key
    }

    /// Reads a token's objects (public ones, no PIN) to classify it.
    fn observe(&mut self, key: TokenKey) {
        let revoked = key
            .serial()
            .is_some_and(|s| self.revoked.contains(s.trim()));
        let Some(seat) = self.seats.get_mut(&key) else {
            return;
        };
        if seat.job.is_some() {
            // A job works on it: its session must be the only one (C_InitToken refuses to
            // run beside another), and the job's end observes it again.
            return;
        }
        if seat.unreadable {
            // Nothing to read (a serial-less one would pass for blank): the scan that finds
            // it readable again observes it.
            return;
        }
        let module = self.modules[seat.module].clone();
        let present = seat.present.clone();
        seat.observation += 1;
        seat.observing += 1;
        let number = seat.observation;
        let tx = self.events.clone();
        tokio::task::spawn_blocking(move || {
            let result = observe_token(&module, present, revoked);
            let _ = tx.blocking_send(Event::Observed(key, number, result));
        });
    }

    fn on_observed(&mut self, key: TokenKey, number: u64, result: Result<Observation, TokenError>) {
        let warning =
            Duration::from_secs(u64::from(self.config.inventory.expiry_warning_days) * 86_400);
        let mut start = false;
        if let Some(seat) = self.seats.get_mut(&key) {
            seat.observing = seat.observing.saturating_sub(1);
            start = seat.observing == 0 && std::mem::take(&mut seat.worker_wanted);
        }
        if start {
            self.start_worker(key.clone());
        }
        let Some(seat) = self.seats.get_mut(&key) else {
            return;
        };
        if number != seat.observation || seat.job.is_some() {
            // Superseded, or the token went to a job meanwhile: what it read may be stale.
            return;
        }
        match result {
            Ok(obs) => {
                if seat.damage.take().is_some() {
                    tracing::info!(token = %key, "token reads well again");
                }
                seat.failed_readings = 0;
                seat.reread_at = None;
                seat.state = classify(&obs, SystemTime::now(), warning);
                seat.present = obs.present.clone();
                seat.certificates = obs
                    .certificates
                    .iter()
                    .map(|(label, t)| CertificateExpiry {
                        label: *label,
                        not_after: OffsetDateTime::from(*t),
                    })
                    .collect();
            }
            Err(e) if e.is_removed() => {}
            Err(e) => {
                let damage = crate::desk::damage(&e);
                if seat.damage.as_ref() != Some(&damage) {
                    tracing::warn!(token = %key, error = %e, "token cannot be read: shown as damaged, no job is taken on it");
                    seat.damage = Some(damage);
                }
                seat.state = TokenState::Damaged;
                seat.failed_readings = seat.failed_readings.saturating_add(1);
                let scan = Duration::from_millis(self.config.pkcs11.scan_interval_ms);
                seat.reread_at =
                    Some(Instant::now() + crate::desk::reread_delay(scan, seat.failed_readings));
            }
        }
        self.inventory_dirty = true;
        if let Some(seat) = self.seats.get(&key)
            && let Some((job, wanted)) = self.wrong_token(seat)
        {
            tracing::warn!(token = %key, %job, wanted = %wanted, "not the token the waiting job names: left untouched");
        }
    }

    /// The configured model of the token with this serial, if USB reported it.
    fn model_of(&self, serial: &str) -> Option<&crate::config::ModelConfig> {
        let (vendor, product) = self.usb_ids.get(serial.trim())?;
        self.config
            .models
            .iter()
            .find(|m| m.vendor_id == *vendor && m.product_id == *product)
    }

    /// When `seat` holds an initialized token that no job works on while a targeted job
    /// waits for another serial, the staff probably plugged in the wrong Ukey: the job and
    /// the serial it waits for. The token is never touched for it.
    fn wrong_token(&self, seat: &Seat) -> Option<(JobId, TokenSerial)> {
        self.wrong_token_among(seat, &self.desk_view())
    }

    /// What [`Daemon::wrong_token`] and the lights need to know of the jobs, gathered once for
    /// all seats (the queue and the job table may be long; the seats are up to a rack's).
    fn desk_view(&self) -> DeskView<'_> {
        let mut waiting = self
            .queue
            .iter()
            .filter_map(|w| Some((&w.job, w.target.as_ref()?)));
        let first_waiting = waiting.next();
        let mut targets: BTreeSet<&str> = waiting.map(|(_, t)| t.as_str().trim()).collect();
        if let Some((_, t)) = first_waiting {
            targets.insert(t.as_str().trim());
        }
        let unconfirmed = self
            .jobs
            .values()
            .filter(|e| e.machine.unconfirmed().is_some())
            .filter_map(|e| e.machine.serial())
            .map(|s| s.as_str().trim())
            .collect();
        DeskView {
            first_waiting,
            targets,
            unconfirmed,
        }
    }

    fn wrong_token_among(&self, seat: &Seat, view: &DeskView<'_>) -> Option<(JobId, TokenSerial)> {
        // A token this agent just finished (or failed) shows that outcome instead.
        let serial = seat.present.serial.trim();
        if seat.job.is_some()
            || seat.outcome.is_some()
            || seat.present.is_blank()
            || serial.is_empty()
            || view.unconfirmed.contains(serial)
        {
            return None;
        }
        let (job, target) = view.first_waiting?;
        if view.targets.contains(serial) {
            return None;
        }
        Some((job.clone(), target.clone()))
    }

    /// Jobs whose token is present again: a parked job resumes; a job whose step was running
    /// when the agent stopped runs it again. A job whose step was running when the agent
    /// stopped and whose token is away now parks (and fails if the token stays away).
    async fn resume_jobs_on_present_tokens(&mut self) -> Result<(), DaemonError> {
        let away: Vec<(JobId, Step)> = self
            .jobs
            .iter()
            .filter(|(_, e)| !e.running)
            .filter(|(_, e)| e.token.as_ref().is_none_or(|k| !self.seats.contains_key(k)))
            .filter_map(|(id, e)| match e.machine.state() {
                JobState::Running { index, .. } => {
                    e.machine.plan().get(*index).map(|step| (id.clone(), *step))
                }
                _ => None,
            })
            .collect();
        for (job_id, step) in away {
            self.execute(&job_id, step);
        }
        let candidates: Vec<(JobId, TokenKey)> = self
            .jobs
            .iter()
            .filter(|(_, e)| !e.running && e.machine.holds_token())
            .filter_map(|(id, e)| e.token.clone().map(|k| (id.clone(), k)))
            // A token that cannot be read is not back for its job (opening it would fail).
            .filter(|(_, k)| self.seats.get(k).is_some_and(|s| !s.unreadable))
            .collect();
        for (job_id, key) in candidates {
            let needs_worker = self.seats.get(&key).is_some_and(|s| s.worker.is_none());
            let Some(entry) = self.jobs.get(&job_id) else {
                continue;
            };
            let state = entry.machine.state().clone();
            if let Some(seat) = self.seats.get_mut(&key) {
                seat.job = Some(job_id.clone());
                seat.state = TokenState::InProduction;
            }
            match state {
                JobState::Parked { .. } | JobState::Running { .. } if needs_worker => {
                    self.start_worker(key);
                }
                JobState::Parked { .. } => self.feed(&job_id, Input::TokenReturned).await?,
                JobState::Running { .. } => self.execute_current(&job_id),
                _ => {}
            }
        }
        Ok(())
    }

    fn start_worker(&mut self, key: TokenKey) {
        let Some(seat) = self.seats.get_mut(&key) else {
            return;
        };
        if seat.opening {
            return;
        }
        if seat.observing > 0 {
            // Opened when the observation's session is closed (see `on_observed`).
            seat.worker_wanted = true;
            return;
        }
        seat.opening = true;
        let module = self.modules[seat.module].clone();
        let present = seat.present.clone();
        let tx = self.events.clone();
        tokio::task::spawn_blocking(move || {
            let result = Token::at(&module, &present)
                .and_then(TokenWorker::spawn)
                .map(Arc::new);
            let _ = tx.blocking_send(Event::WorkerReady(key, result));
        });
    }

    async fn on_worker(
        &mut self,
        key: TokenKey,
        result: Result<Arc<TokenWorker>, TokenError>,
    ) -> Result<(), DaemonError> {
        let Some(seat) = self.seats.get_mut(&key) else {
            self.requeue_unclaimed(&key);
            return Ok(());
        };
        seat.opening = false;
        match result {
            Ok(worker) => seat.worker = Some(worker),
            Err(e) => {
                tracing::warn!(token = %key, error = %e, "cannot open the token");
                self.requeue_unclaimed(&key);
                return Ok(());
            }
        }
        let Some(job_id) = seat.job.clone() else {
            return Ok(());
        };
        let state = self.jobs.get(&job_id).map(|e| e.machine.state().clone());
        match state {
            Some(JobState::Queued) if !self.claiming => {
                // Stopping: the claim is not started; the job is queued again after restart.
                self.requeue_unclaimed(&key);
            }
            Some(JobState::Queued) => {
                let serial = key.serial().and_then(|s| TokenSerial::new(s).ok());
                let mut records = Vec::new();
                if let Some(entry) = self.jobs.get_mut(&job_id) {
                    entry.token = Some(key);
                    if let Some(pins) = entry.pins.clone() {
                        records.push(Record::Pins {
                            job_id: job_id.clone(),
                            pins: self.seal_record(
                                &job_id,
                                RecordKind::Pins,
                                &pins.to_bytes().map_err(DaemonError::Journal)?,
                            )?,
                        });
                    }
                }
                self.feed_with(&job_id, Input::Claimed { serial }, records)
                    .await?;
            }
            Some(JobState::Parked { .. }) => self.feed(&job_id, Input::TokenReturned).await?,
            Some(JobState::Running { .. }) => self.execute_current(&job_id),
            _ => {}
        }
        Ok(())
    }

    /// A job given to `key` whose claim could not start (the token could not be opened or is
    /// gone) goes back to the front of the queue, and the token is free again.
    fn requeue_unclaimed(&mut self, key: &TokenKey) {
        let job_id = self
            .jobs
            .iter()
            .find(|(_, e)| {
                e.token.as_ref() == Some(key) && matches!(e.machine.state(), JobState::Queued)
            })
            .map(|(id, _)| id.clone());
        let Some(job_id) = job_id else { return };
        if let Some(entry) = self.jobs.get_mut(&job_id) {
            entry.token = None;
            if !self.queue.iter().any(|w| w.job == job_id) {
                self.queue.push_front(Waiting::of(&job_id, entry));
            }
        }
        if let Some(seat) = self.seats.get_mut(key)
            && seat.job.as_ref() == Some(&job_id)
        {
            seat.job = None;
        }
        self.inventory_dirty = true;
        tracing::info!(job = %job_id, token = %key, "claim not started; the job waits for a token again");
    }

    /// Blank tokens take the oldest queued `new`/`replace` jobs; a targeted job (`renew`,
    /// `change`, `unlock`) takes only the token whose serial it names, once that is plugged
    /// in and free. A job waiting for its token does not hold up the jobs behind it.
    async fn try_claim_all(&mut self) -> Result<(), DaemonError> {
        if !self.claiming || self.queue.is_empty() {
            return Ok(());
        }
        // What an untargeted job can claim, in seat order: free blank tokens not revoked.
        // Collected once, so a long queue costs a pass without allocations when none is free.
        let mut blanks: VecDeque<TokenKey> = self
            .seats
            .iter()
            .filter(|(k, s)| {
                s.job.is_none()
                    && s.state == TokenState::Blank
                    && s.present.is_blank()
                    && !k.serial().is_some_and(|k| self.revoked.contains(k.trim()))
            })
            .map(|(k, _)| k.clone())
            .collect();
        // A targeted job can only take a free, readable, initialized token. With neither that
        // nor a blank one seated (the usual case: every seat busy), no queued job can claim,
        // and a long queue costs nothing on each turn of the loop.
        if blanks.is_empty()
            && !self
                .seats
                .values()
                .any(|s| s.job.is_none() && s.state != TokenState::Damaged && !s.present.is_blank())
        {
            return Ok(());
        }
        let mut i = 0;
        while i < self.queue.len() {
            if !self.jobs.contains_key(&self.queue[i].job) {
                // Ended while queued (every end removes it; this is a safety net).
                self.queue.remove(i);
                continue;
            }
            let free = match &self.queue[i].target {
                Some(target) => {
                    let key = TokenKey::Serial(target.to_string());
                    self.seats
                        .get(&key)
                        .filter(|s| {
                            s.job.is_none()
                                && s.state != TokenState::Damaged
                                && !s.present.is_blank()
                                && !self.revoked.contains(target.as_str().trim())
                        })
                        .map(|_| key)
                }
                None => blanks.pop_front(),
            };
            let Some(key) = free else {
                i += 1;
                continue;
            };
            if let Some(waiting) = self.queue.remove(i) {
                self.claim(waiting.job, key)?;
            }
        }
        Ok(())
    }

    /// Gives `key`'s token to `job_id`: PINs for jobs that set them (journaled with the
    /// claim, before any token write that uses them); then the token's worker starts.
    fn claim(&mut self, job_id: JobId, key: TokenKey) -> Result<(), DaemonError> {
        let Some(entry) = self.jobs.get(&job_id) else {
            return Ok(());
        };
        let sets_pins = entry.machine.plan().contains(&Step::Initialize);
        let doc = Arc::clone(&entry.doc);
        if sets_pins {
            let (mut min, mut max) = self
                .seats
                .get(&key)
                .map(|s| (s.present.min_pin_len, s.present.max_pin_len))
                .unwrap_or((6, 16));
            // The model's PIN policy (from the configuration), where USB told us the model.
            if let Some(model) = key.serial().and_then(|s| self.model_of(s)) {
                min = min.max(model.pin_min);
                max = if max == 0 {
                    model.pin_max
                } else {
                    max.min(model.pin_max)
                };
            }
            let mut pins = Pins::generate(min, max)?;
            if doc.so_pin.is_some() {
                // Re-keying a named token: C_InitToken needs its current SO PIN, which stays.
                // One that does not open fails the `initialize` step, which reads it again.
                if let Ok(so) = steps::job_so_pin(&doc, &self.trust.station_key) {
                    pins.so = so;
                }
            }
            // Journaled with the claim (`on_worker`), before any token write uses them.
            if let Some(entry) = self.jobs.get_mut(&job_id) {
                entry.pins = Some(Arc::new(pins));
            }
        }
        if let Some(entry) = self.jobs.get_mut(&job_id) {
            entry.token = Some(key.clone());
        }
        if let Some(seat) = self.seats.get_mut(&key) {
            seat.job = Some(job_id.clone());
            seat.state = TokenState::InProduction;
        }
        self.inventory_dirty = true;
        tracing::info!(job = %job_id, kind = %doc.kind, token = %key, "token claims job");
        self.start_worker(key);
        Ok(())
    }

    /// A token just named lost by a `replace` job: if it is at the desk and idle, it is
    /// classified again (and shows as revoked).
    fn mark_revoked(&mut self, serial: &str) {
        let key = TokenKey::Serial(serial.to_owned());
        if self.seats.get(&key).is_some_and(|s| s.job.is_none()) {
            self.observe(key);
        }
    }

    fn release(&mut self, job_id: &JobId) {
        let key = self.jobs.get(job_id).and_then(|e| e.token.clone());
        if let Some(key) = key
            && let Some(seat) = self.seats.get_mut(&key)
        {
            seat.job = None;
            seat.worker = None;
            // What the slot shows now (done) is new to the operator.
            seat.acknowledged = false;
            self.observe(key);
        }
        self.inventory_dirty = true;
    }

    // ----- steps ----------------------------------------------------------------------------

    /// Runs (again) the step a running job is at: after a restart, or once its token is back.
    fn execute_current(&mut self, job_id: &JobId) {
        let step = self.jobs.get(job_id).and_then(|e| match e.machine.state() {
            JobState::Running { index, .. } => e.machine.plan().get(*index).copied(),
            _ => None,
        });
        if let Some(step) = step {
            self.execute(job_id, step);
        }
    }

    fn execute(&mut self, job_id: &JobId, step: Step) {
        let Some(entry) = self.jobs.get_mut(job_id) else {
            return;
        };
        if entry.running {
            return;
        }
        if !self.claiming {
            // Stopping: a step that has not started is not started now (it runs after the
            // restart, from the journal); running steps finish.
            tracing::info!(job = %job_id, step = %step, "not started: the agent is stopping");
            return;
        }
        let worker = entry
            .token
            .as_ref()
            .and_then(|k| self.seats.get(k))
            .and_then(|s| s.worker.clone());
        let doc = Arc::clone(&entry.doc);
        let pins = entry.pins.clone();
        let serial = entry.machine.serial().cloned();
        let certs = entry.certs.clone();
        let verified = entry.verified.clone();
        let trust = Arc::clone(&self.trust);
        let tx = self.events.clone();
        let job_id = job_id.clone();
        let Some(worker) = worker else {
            let away = self.scanned
                && entry
                    .token
                    .as_ref()
                    .is_none_or(|k| !self.seats.contains_key(k));
            if away {
                // Pulled while no step ran (e.g. while the platform issued): the step meets a
                // pulled token, so the job parks, reports it and waits for the token's return.
                tracing::info!(job = %job_id, step = %step, "the token is not plugged in: parking");
                entry.running = true;
                let done = StepDone {
                    job_id,
                    step,
                    outcome: Err(StepFailure::Removed),
                    verified: None,
                    csr: None,
                };
                tokio::spawn(async move {
                    let _ = tx.send(Event::StepDone(Box::new(done))).await;
                });
                return;
            }
            // The token is here but its worker is still opening, or it was not seen yet after
            // a restart: the step runs when the worker is ready.
            tracing::info!(job = %job_id, step = %step, "waiting for the token");
            return;
        };
        entry.running = true;
        entry.step_started = Some((step, now_utc()));
        tracing::debug!(job = %job_id, step = %step, "step started");
        tokio::spawn(async move {
            let done = run_step(
                step, job_id, doc, pins, serial, certs, verified, trust, worker,
            )
            .await;
            let _ = tx.send(Event::StepDone(Box::new(done))).await;
        });
    }

    async fn on_step_done(&mut self, done: StepDone) -> Result<(), DaemonError> {
        let job_id = done.job_id.clone();
        let Some(entry) = self.jobs.get_mut(&job_id) else {
            return Ok(());
        };
        entry.running = false;
        if let Some(v) = done.verified {
            entry.verified = Some(v);
        }
        let mut records = Vec::new();
        if let Some(csr) = &done.csr {
            entry.csr = Some(csr.clone());
            records.push(Record::Csr {
                job_id: job_id.clone(),
                bundle: self.seal_json(&job_id, RecordKind::Csr, csr)?,
            });
        }
        let input = match done.outcome {
            Ok(output) => {
                if let StepOutput::Initialized { serial } = &output {
                    self.rekey_seat(&job_id, serial);
                }
                Input::StepSucceeded {
                    step: done.step,
                    output,
                }
            }
            Err(StepFailure::Removed) => {
                // The worker's session died with the token; a new one is opened on return.
                if let Some(key) = self.jobs.get(&job_id).and_then(|e| e.token.clone())
                    && let Some(seat) = self.seats.get_mut(&key)
                {
                    seat.worker = None;
                }
                Input::TokenRemoved { step: done.step }
            }
            Err(StepFailure::Failed(error)) => {
                tracing::warn!(job = %job_id, step = %done.step, code = %error.code, message = %error.message, "step failed");
                Input::StepFailed {
                    step: done.step,
                    error,
                }
            }
        };
        self.feed_with(&job_id, input, records).await?;
        if done.csr.is_some() {
            // Journaled with the step's end: only now may the platform see it.
            self.send_job_csr(&job_id);
        }
        // The step's end is reported: later events (a timeout, the final ack) are not its end.
        if let Some(entry) = self.jobs.get_mut(&job_id)
            && entry.step_started.is_some_and(|(s, _)| s == done.step)
        {
            entry.step_started = None;
        }
        Ok(())
    }

    /// A blank SoftHSM2 slot got its serial at `initialize`: name the seat by it from now on.
    fn rekey_seat(&mut self, job_id: &JobId, serial: &TokenSerial) {
        let new_key = TokenKey::Serial(serial.to_string());
        let Some(entry) = self.jobs.get_mut(job_id) else {
            return;
        };
        let Some(old_key) = entry.token.replace(new_key.clone()) else {
            return;
        };
        if old_key != new_key
            && let Some(mut seat) = self.seats.remove(&old_key)
        {
            // The last scan may have seen it blank and serial-less (SoftHSM2 gives a serial
            // at initialization): with its serial, the next observation reads the token
            // afresh instead of trusting that stale view, so a finished token is never
            // taken for a blank one even when no scan ran during its whole job.
            seat.present.serial = serial.to_string();
            self.seats.insert(new_key, seat);
        }
    }

    // ----- inventory ----------------------------------------------------------------------------

    /// A token's slot as the inventory numbers it: module × 1000 + PKCS#11 slot id.
    fn inventory_slot(seat: &Seat) -> u32 {
        u32::try_from(seat.module * 1000 + usize::try_from(seat.present.slot % 1000).unwrap_or(0))
            .unwrap_or(u32::MAX)
    }

    /// Looks at the call each token's worker is running: a call past
    /// `timeouts.wedged_call_secs` raises a `token-call-stuck` alert (see [`crate::stuck`]),
    /// which goes when the call returns. The job is left alone.
    fn check_token_calls(&mut self) {
        let running: Vec<RunningCall> = self
            .seats
            .iter()
            .filter_map(|(key, seat)| {
                let started = seat.worker.as_ref()?.call_started()?;
                // Steps are the only calls on a worker: the job running one on this token.
                let job = self
                    .jobs
                    .iter()
                    .find(|(_, e)| e.running && e.token.as_ref() == Some(key));
                Some(RunningCall {
                    key: key.clone(),
                    started,
                    slot: Self::inventory_slot(seat),
                    job: job.map(|(id, _)| id.clone()).or_else(|| seat.job.clone()),
                    step: job.and_then(|(_, e)| e.step_started.map(|(step, _)| step)),
                })
            })
            .collect();
        if running.is_empty() && self.stuck_calls.is_empty() {
            return;
        }
        if self
            .stuck_calls
            .update(std::time::Instant::now(), now_utc(), running)
        {
            self.inventory_dirty = true;
            self.write_status();
        }
    }

    fn publish_inventory(&mut self) {
        self.inventory_dirty = false;
        self.inventory_seq += 1;
        let mut slots: Vec<SlotInfo> = Vec::new();
        for (key, seat) in &self.seats {
            let slot = Self::inventory_slot(seat);
            let serial = key.serial().and_then(|s| TokenSerial::new(s).ok());
            let damaged = seat.state == TokenState::Damaged;
            // A token without a serial shows only when damaged (a blank SoftHSM2 slot does not).
            let token = (serial.is_some() || damaged).then(|| TokenInfo {
                serial,
                model: if seat.present.model.is_empty() {
                    "unknown".into()
                } else {
                    seat.present.model.chars().take(64).collect()
                },
                state: seat.state,
                // A finished token still names its job until the platform confirms it.
                job_id: seat
                    .job
                    .clone()
                    .or_else(|| self.unconfirmed_job(&seat.present.serial).cloned()),
                certificates: seat.certificates.clone(),
                damage: seat.damage.clone().filter(|_| damaged),
            });
            if slots.iter().any(|s| s.slot == slot) {
                continue;
            }
            slots.push(SlotInfo { slot, token });
        }
        slots.truncate(ukey_protocol::inventory::MAX_SLOTS);
        let alerts = self.alerts();
        let inventory = Inventory {
            alerts,
            v: V1,
            station_id: self.station.clone(),
            seq: self.inventory_seq,
            at: now_utc(),
            slots,
        };
        match inventory.encode() {
            Ok(payload) => {
                if let Err(e) = self.link.publish_retained(self.topics.inventory(), payload) {
                    tracing::warn!(error = %e, "inventory not published");
                }
            }
            Err(e) => tracing::warn!(error = %e, "inventory cannot be encoded"),
        }
    }
}

impl Daemon {
    /// Desk problems that are not a token's state, for the inventory.
    fn alerts(&self) -> Vec<DeskAlert> {
        let mut alerts = Vec::new();
        for (path, reason) in &self.module_problems {
            alerts.push(DeskAlert {
                code: code("module-missing"),
                port: None,
                message: ukey_protocol::fit_text(
                    &format!(
                        "PKCS#11 module {} cannot be loaded: {reason}",
                        path.display()
                    ),
                    512,
                ),
            });
        }
        let view = self.desk_view();
        for (key, seat) in &self.seats {
            if let Some((job, wanted)) = self.wrong_token_among(seat, &view) {
                alerts.push(DeskAlert {
                    code: code("wrong-token"),
                    port: None,
                    message: ukey_protocol::fit_text(
                        &format!(
                            "token {key} is not the one job {job} waits for ({wanted}); it is left untouched"
                        ),
                        512,
                    ),
                });
            }
        }
        for (port, (code_str, message)) in &self.usb_problems {
            alerts.push(DeskAlert {
                code: code(code_str),
                port: Some(ukey_protocol::fit_text(port, 64)),
                message: ukey_protocol::fit_text(message, 512),
            });
        }
        alerts.extend(self.stuck_calls.alerts());
        // Last, so that an outage with a full rack cannot crowd out the problems above; what
        // does not fit is summed up in the last alert.
        let overdue: Vec<(&JobId, &JobEntry)> = self
            .jobs
            .iter()
            .filter(|(_, e)| e.machine.unconfirmed() == Some(true))
            .collect();
        let room = ukey_protocol::inventory::MAX_ALERTS.saturating_sub(alerts.len());
        let shown = if overdue.len() > room {
            room.saturating_sub(1)
        } else {
            overdue.len()
        };
        let t = &self.config.timeouts;
        for (job_id, entry) in &overdue[..shown] {
            alerts.push(DeskAlert {
                code: code("platform-unconfirmed"),
                port: None,
                message: ukey_protocol::fit_text(
                    &format!(
                        "job {job_id}: token {} is finished (it may be taken out), but the platform has not acknowledged the {} event for over {} s; the event is sent again every {} s and the job succeeds when the platform acknowledges it",
                        entry.machine.serial().map_or("-", |s| s.as_str()),
                        entry.machine.current_step().map_or("last", |s| s.as_str()),
                        t.bind_ack_secs,
                        t.resend_secs,
                    ),
                    512,
                ),
            });
        }
        if shown < overdue.len() && room > 0 {
            let rest: Vec<String> = overdue[shown..]
                .iter()
                .map(|(id, e)| format!("{id} ({})", e.machine.serial().map_or("-", |s| s.as_str())))
                .collect();
            alerts.push(DeskAlert {
                code: code("platform-unconfirmed"),
                port: None,
                message: ukey_protocol::fit_text(
                    &format!(
                        "{} more jobs with finished tokens whose last event the platform has not acknowledged for over {} s: {}",
                        rest.len(),
                        t.bind_ack_secs,
                        rest.join(", ")
                    ),
                    512,
                ),
            });
        }
        alerts.truncate(ukey_protocol::inventory::MAX_ALERTS);
        alerts
    }
}

impl JobEntry {
    fn new(doc: Arc<JobDocument>, machine: JobMachine) -> JobEntry {
        JobEntry {
            doc,
            machine,
            pins: None,
            csr: None,
            csr_sent: None,
            certs: None,
            verified: None,
            token: None,
            running: false,
            step_started: None,
            timers: BTreeMap::new(),
            records: 0,
        }
    }
}

/// Whether the platform gives `input` again when the agent loses it, so that its journal
/// record needs no fsync of its own (the job's next fsync'd record, or any later fsync,
/// makes it durable). A certificate response lost in a power loss leaves the job waiting
/// for certificates: the agent sends its CSR bundle again and the platform answers it the
/// same way. A lost final acknowledgement leaves the job waiting for it: its `bind` event is
/// sent again (from the outbox, or re-made from the journal) and acknowledged again.
fn platform_repeats(input: &Input) -> bool {
    matches!(
        input,
        Input::CertificatesArrived { .. }
            | Input::CertificatesRejected { .. }
            | Input::FinalAcknowledged
    )
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// A job in the queue, waiting for a token.
#[derive(Debug)]
struct Waiting {
    job: JobId,
    /// The token it names (`renew`, `change`, `unlock`), or `None` for any blank one.
    target: Option<TokenSerial>,
}

impl Waiting {
    fn of(job: &JobId, entry: &JobEntry) -> Waiting {
        Waiting {
            job: job.clone(),
            target: entry.doc.target_token_serial.clone(),
        }
    }
}

/// The jobs as the desk's lights and alerts see them (see `Daemon::desk_view`).
struct DeskView<'a> {
    /// The oldest queued job that names a token, and that token.
    first_waiting: Option<(&'a JobId, &'a TokenSerial)>,
    /// Every token a queued job names (trimmed serials).
    targets: BTreeSet<&'a str>,
    /// Finished tokens whose job waits for the platform's acknowledgement (trimmed serials).
    unconfirmed: BTreeSet<&'a str>,
}

/// The step events among `actions`.
fn reports_of(actions: Vec<Action>) -> Vec<Report> {
    actions
        .into_iter()
        .filter_map(|a| match a {
            Action::Report(report) => Some(*report),
            _ => None,
        })
        .collect()
}

async fn ack(message: Incoming) {
    if let Err(e) = message.ack().await {
        tracing::debug!(error = %e, "broker acknowledgement not sent (link stopping)");
    }
}

fn rejection_code(e: &ukey_protocol::ProtocolError) -> &'static str {
    use ukey_protocol::ProtocolError as P;
    match e {
        P::UnknownKeyId { .. } | P::BadSignature { .. } | P::SignatureAlgorithmMismatch { .. } => {
            "bad-signature"
        }
        P::WrongStation { .. } => "wrong-station",
        P::Expired { .. } => "expired",
        P::NotYetValid { .. } => "not-yet-valid",
        P::Replay { .. } => "replayed-nonce",
        _ => "invalid-job",
    }
}

fn observe_token(
    module: &Module,
    present: PresentToken,
    revoked: bool,
) -> Result<Observation, TokenError> {
    // What the last scan saw may be stale (a token just initialized still looks blank in it):
    // read the token's flags again before classifying, so a finished token is never taken
    // for a blank one.
    let present = if present.serial.is_empty() {
        present
    } else {
        module
            .find_by_serial(&present.serial)?
            .ok_or_else(|| TokenError::Removed {
                serial: Some(present.serial.clone()),
                slot: present.slot,
                function: "C_GetTokenInfo".into(),
            })?
    };
    if present.is_blank() {
        return Ok(Observation {
            present,
            keys: Vec::new(),
            certificates: Vec::new(),
            revoked,
        });
    }
    let token = Token::at(module, &present)?;
    let objects = token.objects()?;
    let keys = KeyLabel::ALL
        .into_iter()
        .filter(|label| {
            objects.iter().any(|o| {
                o.key_label() == Some(*label) && o.kind == crate::token::ObjectKind::PublicKey
            })
        })
        .collect();
    let certificates = token
        .installed_certificates()?
        .into_iter()
        .filter_map(|(label, der)| {
            crate::certs::not_after(&der)
                .ok()
                .map(|not_after| (label, not_after))
        })
        .collect();
    Ok(Observation {
        present,
        keys,
        certificates,
        revoked,
    })
}

/// Whether the job keeps the token's keys and PINs (`renew`, `change` without rekey): its
/// certificates are requested with renewal requests and written without a user login.
fn keeps_keys(doc: &JobDocument) -> bool {
    matches!(doc.kind, JobKind::Renew) || (doc.kind == JobKind::Change && !doc.rekey)
}

#[allow(clippy::too_many_arguments)]
async fn run_step(
    step: Step,
    job_id: JobId,
    doc: Arc<JobDocument>,
    pins: Option<Arc<Pins>>,
    serial: Option<TokenSerial>,
    certs: Option<CertBundle>,
    verified: Option<Arc<Vec<VerifiedCertificate>>>,
    trust: Arc<TrustMaterial>,
    worker: Arc<TokenWorker>,
) -> StepDone {
    let mut done = StepDone {
        job_id: job_id.clone(),
        step,
        outcome: Ok(StepOutput::Done),
        verified: None,
        csr: None,
    };
    let missing = |what: &str| {
        StepFailure::Failed(StepError {
            code: code("internal"),
            message: format!("{what} missing for step {step}"),
            retryable: true,
        })
    };
    let flatten = |r: Result<Result<StepOutput, StepFailure>, TokenError>| match r {
        Ok(inner) => inner,
        Err(e) => Err(StepFailure::from(e)),
    };
    done.outcome = match step {
        Step::Initialize => match pins {
            None => Err(missing("PINs")),
            Some(pins) => flatten(
                worker
                    .call(move |token| {
                        Ok(steps::initialize(token, &doc, &pins, &trust.station_key).and_then(|()| {
                            let serial = token.serial().and_then(|s| TokenSerial::new(s).ok());
                            serial
                                .map(|serial| StepOutput::Initialized { serial })
                                .ok_or_else(|| StepFailure::Failed(StepError {
                                    code: code("token-serial"),
                                    message: "the token has no usable serial number after initialization".into(),
                                    retryable: false,
                                }))
                        }))
                    })
                    .await,
            ),
        },
        Step::GenerateKeys => match pins {
            None => Err(missing("PINs")),
            Some(pins) => flatten(
                worker
                    .call(move |token| Ok(steps::generate_keys(token, &doc, &pins).map(|_| StepOutput::Done)))
                    .await,
            ),
        },
        Step::RequestCertificates => match (pins, serial) {
            (pins, Some(serial)) if pins.is_some() || keeps_keys(&doc) => {
                let result = worker
                    .call(move |token| {
                        Ok(match pins {
                            Some(pins) if !keeps_keys(&doc) => {
                                steps::request_certificates(token, &doc, &pins, &serial)
                            }
                            _ => steps::request_renewal(token, &doc, &serial),
                        })
                    })
                    .await;
                match result {
                    Ok(Ok(bundle)) => match bundle.encode() {
                        Ok(bytes) => {
                            let sha = hex::encode(Sha256::digest(&bytes));
                            done.csr = Some(bundle);
                            Ok(StepOutput::Data(StepData::Requested { bundle_sha256: sha }))
                        }
                        Err(e) => Err(StepFailure::Failed(StepError {
                            code: code("csr-encoding"),
                            message: ukey_protocol::fit_text(&e.to_string(), 512),
                            retryable: false,
                        })),
                    },
                    Ok(Err(f)) => Err(f),
                    Err(e) => Err(StepFailure::from(e)),
                }
            }
            _ => Err(missing("PINs or token serial")),
        },
        Step::VerifyCertificates | Step::Install => match certs {
            None => Err(missing("certificates")),
            Some(bundle) => {
                let install = step == Step::Install;
                let known = verified.clone();
                let result = worker
                    .call(move |token| {
                        let verified = match known {
                            Some(v) => v,
                            None => match steps::verify_certificates(token, &doc, &bundle, &trust.certificates, SystemTime::now()) {
                                Ok(v) => Arc::new(v),
                                Err(f) => return Ok(Err(f)),
                            },
                        };
                        if install {
                            if pins.is_none() && !keeps_keys(&doc) {
                                return Ok(Err(StepFailure::Failed(StepError {
                                    code: code("internal"),
                                    message: "PINs missing for step install".into(),
                                    retryable: true,
                                })));
                            }
                            if let Err(f) = steps::install(token, pins.as_deref(), &verified) {
                                return Ok(Err(f));
                            }
                        }
                        Ok(Ok(verified))
                    })
                    .await;
                match result {
                    Ok(Ok(v)) => {
                        done.verified = Some(v);
                        Ok(StepOutput::Done)
                    }
                    Ok(Err(f)) => Err(f),
                    Err(e) => Err(StepFailure::from(e)),
                }
            }
        },
        Step::Activate => match pins {
            None => Err(missing("PINs")),
            Some(pins) => flatten(
                worker
                    .call(move |token| Ok(steps::activate(token, &pins).map(|_| StepOutput::Done)))
                    .await,
            ),
        },
        Step::Bind => match (pins, verified) {
            (pins, _) if pins.is_none() && !keeps_keys(&doc) => Err(missing("PINs")),
            (pins, Some(verified)) => {
                steps::bind_report(&job_id, &verified, pins.as_deref(), &trust.platform_seal)
                    .map(|report| StepOutput::Data(StepData::Bind(report)))
            }
            (pins, None) => {
                // After a restart: verify again (read-only) to rebuild the fingerprints.
                match certs {
                    None => Err(missing("certificates")),
                    Some(bundle) => {
                        let trust2 = Arc::clone(&trust);
                        let result = worker
                            .call(move |token| Ok(steps::verify_certificates(token, &doc, &bundle, &trust2.certificates, SystemTime::now())))
                            .await;
                        match result {
                            Ok(Ok(v)) => {
                                let report = steps::bind_report(&job_id, &v, pins.as_deref(), &trust.platform_seal);
                                done.verified = Some(Arc::new(v));
                                report.map(|r| StepOutput::Data(StepData::Bind(r)))
                            }
                            Ok(Err(f)) => Err(f),
                            Err(e) => Err(StepFailure::from(e)),
                        }
                    }
                }
            }
        },
        Step::ResetPin => {
            let trust = Arc::clone(&trust);
            flatten(
                worker
                    .call(move |token| {
                        Ok(steps::reset_pin(token, &doc, &trust.station_key, &trust.platform_seal)
                            .map(StepOutput::Data))
                    })
                    .await,
            )
        }
        Step::ReadKeys => flatten(
            worker
                .call(move |token| Ok(steps::read_keys(token, &doc).map(|()| StepOutput::Done)))
                .await,
        ),
        Step::RemoveOldCertificates => match certs {
            None => Err(missing("certificates")),
            Some(bundle) => flatten(
                worker
                    .call(move |token| {
                        Ok(steps::remove_old_certificates(token, &bundle).map(|removed| {
                            tracing::info!(job = %job_id, removed, "old certificates removed");
                            StepOutput::Done
                        }))
                    })
                    .await,
            ),
        },
        other => Err(StepFailure::Failed(StepError {
            code: code("step-unsupported"),
            message: format!("step {other} is not supported by this agent version"),
            retryable: false,
        })),
    };
    done
}
