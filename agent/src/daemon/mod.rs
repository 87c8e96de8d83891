//! The daemon: the thin IO shell that feeds the pure parts.
//!
//! One task owns all state (the desk's token table, the jobs, the journal) and reacts to
//! five sources: messages from the platform (via [`crate::link`]), slot scans (PKCS#11, on a
//! blocking thread), USB events, finished steps (each step runs on its token's
//! [`TokenWorker`]), and timers. Every reaction follows one order, which is what makes a crash
//! harmless at any point:
//!
//! 1. the [`JobMachine`](crate::job::JobMachine) decides (pure);
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
//! encrypted with the job's own key, bound to its job and kind; ids, serials and times are
//! not. A job's key is erased when the job ends, which makes its records unreadable at once
//! (`records`).
//!
//! This module keeps [`run`] and the loop that dispatches; each of its rooms does one job:
//!
//! - `startup`: the PKCS#11 modules, the link's settings, the presence number, the USB watcher;
//! - `records`: the job journal's records, their sealing, and the replay at start-up;
//! - `compaction`: what compaction keeps of the journal, and when;
//! - `admission`: the platform's messages by topic; a job verified, de-duplicated, accepted or
//!   rejected (the decision is the pure `admit`);
//! - `jobs`: the job table and queue, and feeding a job's machine (journal, outbox, actions);
//! - `sink`: step events to the outbox, and CSR bundles sent and re-sent;
//! - `timers`: the jobs' timers, in one queue the loop polls;
//! - `seats`: the desk's seats, slot scans, observations, USB arrivals, opening workers;
//! - `seat_state`: a seat's sessions (observing, opening, working) and reading (good,
//!   failing with its back-off, unreadable) as pure state machines;
//! - `claims`: queued jobs matched to free tokens (the pure `match_claims`), release, resume;
//! - `job_data`: a job's PINs, CSR bundle and certificates as phases, each transition
//!   consuming the last;
//! - `step_request`: a step as a typed request carrying what it needs, built from the job;
//! - `runner`: a step started on its token's worker, and its end fed back;
//! - `inventory`: the retained slot table and alerts, built pure and published on change;
//! - `reports`: the panel's lights and buttons, the status snapshot, stuck token calls.
//!
//! What this module does not do: decide the next step (the job machine), touch token
//! objects itself (the steps module, on a worker), or speak MQTT (the link).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use time::OffsetDateTime;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use ukey_protocol::codes::Code;
use ukey_protocol::ids::{JobId, Nonce, StationId};
use ukey_protocol::topic::Topics;

use crate::audit::{AuditEvent, AuditWriter};
use crate::config::Config;
use crate::control;
use crate::desk::{Observation, TokenKey};
use crate::device::DeviceLibrary;
use crate::job_keys::JobKeys;
use crate::journal::{Journal, StoreError};
use crate::link::{Link, LinkError, LinkHandle};
use crate::outbox::Outbox;
use crate::panel::{Panel, PanelHandle};
use crate::stuck::StuckCalls;
use crate::token::{SlotSurvey, TokenError};
use crate::trust::{TrustError, TrustMaterial};
use crate::usb::UsbEvent;
use crate::worker::TokenWorker;

mod admission;
mod claims;
mod compaction;
mod inventory;
mod job_data;
mod jobs;
mod operator;
mod receipts;
mod records;
mod refusals;
mod rejections;
mod reports;
mod runner;
mod seat_state;
mod seats;
mod sequences;
mod sink;
mod startup;
mod step_request;
mod timers;

use compaction::FinishedJob;
use inventory::DeskReport;
use jobs::{JobEntry, Waiting};
use records::Record;
use runner::StepDone;
use seats::Seat;
use timers::Timers;

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

/// What the daemon's loop reacts to, besides MQTT messages.
enum Event {
    Scanned(Vec<(usize, Result<SlotSurvey, TokenError>)>),
    Observed(TokenKey, u64, Result<Observation, TokenError>),
    StepDone(Box<StepDone>),
    WorkerReady(TokenKey, Result<Arc<TokenWorker>, TokenError>),
}

struct Daemon {
    config: Config,
    trust: Arc<TrustMaterial>,
    topics: Topics,
    station: StationId,
    link: LinkHandle,
    journal: Journal<Record>,
    /// The jobs' own keys, which encrypt their journal records (erased when a job ends).
    job_keys: records::JobKeyStore,
    modules: Vec<Arc<dyn DeviceLibrary>>,
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
    /// Jobs issued at or before this time are refused: the station forgot jobs issued then
    /// (`compaction::raised_floor`). Kept in the state folder.
    replay_floor: Option<OffsetDateTime>,
    seats: BTreeMap<TokenKey, Seat>,
    /// Lost tokens named by accepted `replace` jobs (journaled).
    revoked: BTreeSet<String>,
    events: mpsc::Sender<Event>,
    inventory_seq: sequences::InventorySeq,
    /// The inventory published last: the next goes out when the state differs from it.
    inventory_published: Option<DeskReport>,
    claiming: bool,
    /// The jobs' armed timers.
    timers: Timers,
    /// A slot scan has completed since start: a token missing from `seats` is really away.
    scanned: bool,
    /// The desk's indicator panel (a no-op handle without one).
    panel: PanelHandle,
    /// Panel slots lit last time, to turn the lights of emptied slots off.
    lit: BTreeSet<usize>,
    /// USB arrivals waiting for their token, and each token's USB port (and so its model
    /// and rack position).
    ports: crate::rack::PortTable,
    /// USB devices present but not accessible (port → reason), shown by `status`.
    usb_problems: BTreeMap<String, (Code, String)>,
    /// PKCS#11 modules that could not be loaded (path, reason): reported, not fatal, so the
    /// other models keep working.
    module_problems: Vec<(PathBuf, String)>,
    /// Token calls running past `timeouts.wedged_call_secs` (alerts, lights, status).
    stuck_calls: StuckCalls,
    /// The rate limit on `rejected` events, and the counts of rejections.
    rejections: rejections::RejectionLimiter,
    /// Platform messages refused as unsigned or mis-signed (status, rate-limited warnings).
    refusals: refusals::Refusals,
    /// The audit log's writer; it also knows who is signed in at the desk.
    audit: AuditWriter,
    /// The production receipts of running jobs, and the station key that signs them.
    receipts: receipts::Receipts,
}

fn now_utc() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

/// The shortest time between two inventory publishes (see `run`).
const INVENTORY_EVERY: Duration = Duration::from_millis(100);

/// Starts the daemon and runs it until `shutdown` is cancelled; then stops claiming, lets
/// running steps finish (up to `timeouts.shutdown_grace_secs`), flushes and returns.
///
/// `audit` is the station's audit log (opened by the caller, whose lock keeps a second agent
/// off the state folder): the start and the stop are recorded in it, and everything the
/// daemon does that someone may have to account for in between. The stop is the last entry:
/// the log's writer ends with it.
pub async fn run(
    config: Config,
    audit: AuditWriter,
    shutdown: CancellationToken,
) -> Result<(), DaemonError> {
    audit.record(AuditEvent::Started {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        station_id: config.station_id.clone(),
    });
    let result = serve(config, audit.clone(), shutdown).await;
    let reason = match &result {
        Ok(()) => "signal".to_owned(),
        Err(e) => format!("error: {e}"),
    };
    // Joining the writer waits for its fsyncs: off the runtime's thread.
    let health = tokio::task::spawn_blocking(move || audit.finish(AuditEvent::Stopped { reason }))
        .await
        .unwrap_or_default();
    if health.lost > 0 {
        tracing::error!(
            lost = health.lost,
            last_error = health.last_error.as_deref().unwrap_or("-"),
            "audit log: entries were not written while the agent ran"
        );
    }
    result
}

async fn serve(
    config: Config,
    audit: AuditWriter,
    shutdown: CancellationToken,
) -> Result<(), DaemonError> {
    let trust = Arc::new(TrustMaterial::load(&config.trust)?);
    let station = StationId::new(config.station_id.clone())
        .map_err(|e| DaemonError::Config(format!("station_id: {e}")))?;
    let topics = Topics::new(&config.broker.topic_prefix, &station)
        .map_err(|e| DaemonError::Config(format!("broker.topic_prefix: {e}")))?;
    let state_dir = config.state_dir.clone();
    crate::private_files::secure_state_dir(&state_dir)
        .map(|tightened| {
            if !tightened.is_empty() {
                tracing::warn!(count = tightened.len(), first = %tightened[0].display(),
                    "state folder: made files 0600 and folders 0700 that group or others could read");
            }
        })
        .map_err(|source| DaemonError::StateDir {
            path: state_dir.clone(),
            source,
        })?;
    let journal: Journal<Record> = Journal::open(state_dir.join("journal.log"))?;
    let job_keys = records::JobKeyStore::new(JobKeys::open(state_dir.join("journal.keys"))?);
    let outbox = Outbox::open(state_dir.join("outbox"))?;

    let (modules, module_problems) = startup::load_modules(&config).await?;
    let presence_seq = sequences::next_presence_seq(&state_dir)?;
    let inventory_seq = sequences::InventorySeq::open(&state_dir, now_utc())?;
    let replay_floor = sequences::read_replay_floor(&state_dir)?;
    let link_config = startup::link_config(&config, &topics, &station, presence_seq)?;
    let link_shutdown = CancellationToken::new();
    let (link, mut incoming) = Link::start(link_config, outbox, link_shutdown.clone())?;

    let (events_tx, mut events_rx) = mpsc::channel::<Event>(256);
    let panel_shutdown = CancellationToken::new();
    let (panel, mut presses) = Panel::start(config.panel.as_ref(), panel_shutdown.clone())
        .map_err(|e| DaemonError::Config(format!("panel: {e}")))?;
    let config_wedged_call = config.timeouts.wedged_call();
    let trust_for_receipts = Arc::clone(&trust);
    let (control_tx, mut control_rx) = mpsc::channel::<control::Request>(16);
    let control_shutdown = CancellationToken::new();
    let _control =
        control::listen(&state_dir, control_tx, control_shutdown.clone()).map_err(|source| {
            DaemonError::StateDir {
                path: control::socket_path(&state_dir),
                source,
            }
        })?;
    let config_rejections_per_minute = config.trust.rejections_per_minute;
    let mut daemon = Daemon {
        config,
        trust,
        topics,
        station,
        link,
        journal,
        job_keys,
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
        inventory_seq,
        replay_floor,
        inventory_published: None,
        claiming: true,
        timers: Timers::new(),
        scanned: false,
        panel,
        lit: BTreeSet::new(),
        ports: crate::rack::PortTable::default(),
        usb_problems: BTreeMap::new(),
        module_problems,
        stuck_calls: StuckCalls::new(config_wedged_call),
        rejections: rejections::RejectionLimiter::new(config_rejections_per_minute),
        refusals: refusals::Refusals::default(),
        receipts: receipts::Receipts::new(&trust_for_receipts.station_key),
        audit,
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
    // ... and at once after every (re)connect: a broker that lost the platform's session
    // may have dropped a bundle it acknowledged (docs/PROTOCOL.md, "Redelivery").
    let mut link_state = daemon.link.state();
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
    let mut inventory_checked = now.checked_sub(INVENTORY_EVERY).unwrap_or(now);
    // Something happened since the last check: the next one is due `INVENTORY_EVERY` after it
    // (the inventory is built at most that often, not on every event of a busy desk).
    let mut inventory_waiting = false;
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
            (job_id, timer) = daemon.timers.next() => daemon.on_timer(job_id, timer).await?,
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
            Ok(()) = link_state.changed() => {
                let subscribed = matches!(
                    *link_state.borrow_and_update(),
                    crate::link::LinkState::Connected { subscribed: true, .. }
                );
                if subscribed {
                    daemon.resend_csrs(Duration::ZERO);
                }
            }
            _ = watchdog_tick.tick(), if watchdog.is_some() => {
                crate::systemd::watchdog();
            }
            Some(press) = presses.recv() => daemon.on_press(press),
            Some(request) = control_rx.recv() => daemon.on_control(request).await?,
            _ = status_tick.tick() => {
                daemon.check_usb_arrivals();
                daemon.write_status();
            }
            _ = calls_tick.tick() => daemon.check_token_calls(),
            _ = tokio::time::sleep_until(inventory_checked + INVENTORY_EVERY), if inventory_waiting => {}
        }
        inventory_waiting = inventory_checked.elapsed() < INVENTORY_EVERY;
        if !inventory_waiting {
            inventory_checked = tokio::time::Instant::now();
            let report = daemon.desk_report();
            if daemon.inventory_changed(&report) {
                daemon.publish_inventory(report);
            }
        }
        daemon.update_lights();
    }
    let report = daemon.desk_report();
    if daemon.inventory_changed(&report) {
        daemon.publish_inventory(report);
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
    control_shutdown.cancel();
    daemon.link.stopped().await;
    daemon.panel.stopped().await;
    tracing::info!("agent stopped");
    Ok(())
}

impl Daemon {
    async fn on_event(&mut self, event: Event) -> Result<(), DaemonError> {
        match event {
            Event::Scanned(results) => self.on_scan(results).await,
            Event::Observed(key, number, result) => {
                self.on_observed(key, number, result);
                self.try_claim_all().await
            }
            Event::WorkerReady(key, result) => self.on_worker(key, result).await,
            Event::StepDone(done) => self.on_step_done(*done).await,
        }
    }
}
