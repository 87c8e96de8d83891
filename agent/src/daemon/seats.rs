//! The desk's seats: one per token at the desk, filled by slot scans (on a blocking thread),
//! observations (a token's public objects read to classify it), USB arrivals and the
//! opening of a token's worker.
//!
//! What this module does not do: give tokens to jobs (`claims`) or run steps (`runner`).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use time::OffsetDateTime;
use ukey_protocol::codes;
use ukey_protocol::event::ExecutionState;
use ukey_protocol::ids::{JobId, TokenSerial};
use ukey_protocol::inventory::{CertificateExpiry, TokenDamage, TokenState};

use crate::audit::{AuditEvent, PinKind};
use crate::desk::{Observation, TokenKey, classify};
use crate::job::{Input, JobState};
use crate::token::{PresentToken, SlotSurvey, TokenError, UnreadableSlot};
use crate::usb::UsbEvent;
use crate::worker::TokenWorker;

use super::records::{Record, RecordKind};
use super::seat_state::{Reading, Sessions, WorkerStart};
use super::{Daemon, DaemonError, Event};

/// A token at the desk.
pub(super) struct Seat {
    pub(super) module: usize,
    pub(super) present: PresentToken,
    pub(super) state: TokenState,
    pub(super) certificates: Vec<CertificateExpiry>,
    pub(super) job: Option<JobId>,
    /// The sessions this agent holds on the token: observations, its worker.
    pub(super) sessions: Sessions,
    /// Number of the latest observation started: an older one that ends later (it may have
    /// read the token before a job initialized it) is dropped.
    pub(super) observation: u64,
    /// How the last job on this token ended (for the panel light).
    pub(super) outcome: Option<ExecutionState>,
    /// The operator pressed the slot's acknowledge button since.
    pub(super) acknowledged: bool,
    /// Why the token is `damaged`, as last logged: a failure is logged once per change, not
    /// on every scan.
    pub(super) damage: Option<TokenDamage>,
    /// Whether the desk can read the token: when the slot scan cannot (`C_GetTokenInfo`
    /// fails), `present` is what was known before, if anything.
    pub(super) reading: Reading,
    /// When a scan first found the token: a token found just before a USB arrival may be
    /// that arrival's (the slot scan and the USB watcher race).
    pub(super) found_at: tokio::time::Instant,
}

/// How long before a USB arrival a token may have been found and still be that arrival's.
const ARRIVAL_GRACE: Duration = Duration::from_secs(2);

impl Seat {
    pub(super) fn new(module: usize, present: PresentToken, state: TokenState) -> Seat {
        Seat {
            module,
            present,
            state,
            certificates: Vec::new(),
            job: None,
            sessions: Sessions::Idle,
            observation: 0,
            outcome: None,
            acknowledged: false,
            damage: None,
            reading: Reading::Good,
            found_at: tokio::time::Instant::now(),
        }
    }
}

/// What the audit log keeps of a token seen in a new state: a foreign token, a locked PIN.
fn observed_audit_event(state: TokenState, serial: &str, position: u32) -> Option<AuditEvent> {
    let token = TokenSerial::new(serial.trim().to_owned()).ok();
    match state {
        TokenState::Foreign => Some(AuditEvent::ForeignToken {
            token,
            position: Some(position),
        }),
        TokenState::LockedUser | TokenState::LockedSo => Some(AuditEvent::PinLocked {
            token: token?,
            pin: if state == TokenState::LockedSo {
                PinKind::So
            } else {
                PinKind::User
            },
            job: None,
        }),
        _ => None,
    }
}

impl Daemon {
    /// Scans every module's slot list on a blocking thread.
    pub(super) fn scan(&self) {
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

    /// A USB arrival starts a wait for its PKCS#11 slot; the slot scan that the arrival
    /// triggers, or a later one, matches it to its token (`crate::rack`: by USB serial, by
    /// the module's slot description, or by elimination — never by assuming the USB serial
    /// is the token serial).
    pub(super) fn on_usb(&mut self, event: UsbEvent) {
        match event {
            UsbEvent::Arrived(d) => {
                tracing::info!(port = %d.port_path, id = %d.id(), usb_serial = ?d.serial, position = ?self.config.rack.position_of(&d.port_path), "Ukey plugged in");
                self.usb_problems.remove(&d.port_path);
                let deadline = tokio::time::Instant::now()
                    + Duration::from_secs(self.config.usb.arrival_timeout_secs);
                // Tokens found well before the arrival are not its token.
                let module = self
                    .config
                    .models
                    .iter()
                    .find(|m| (m.vendor_id, m.product_id) == (d.vendor_id, d.product_id))
                    .and_then(|m| self.modules.iter().position(|l| l.path() == m.module));
                let now = tokio::time::Instant::now();
                let present: Vec<TokenKey> = self
                    .seats
                    .iter()
                    .filter(|(_, s)| s.found_at + ARRIVAL_GRACE < now)
                    .map(|(k, _)| k.clone())
                    .collect();
                self.ports.arrived(d, module, present, deadline);
            }
            UsbEvent::Left(d) => {
                tracing::info!(port = %d.port_path, id = %d.id(), "Ukey pulled out");
                self.usb_problems.remove(&d.port_path);
                self.ports.left(&d.port_path);
            }
            UsbEvent::Inaccessible { device, reason } => {
                tracing::error!(port = %device.port_path, id = %device.id(), %reason, "Ukey present but not accessible");
                self.usb_problems.insert(
                    device.port_path.clone(),
                    (
                        codes::USB_NOT_ACCESSIBLE,
                        format!(
                            "Ukey {} at USB port {}: {reason}",
                            device.id(),
                            device.port_path
                        ),
                    ),
                );
            }
        }
    }

    /// Ends the waits of USB arrivals whose slot appeared, and reports those that ran out.
    pub(super) fn check_usb_arrivals(&mut self) {
        let seen: Vec<crate::rack::Seen<'_>> = self
            .seats
            .iter()
            .map(|(key, seat)| crate::rack::Seen {
                key,
                serial: &seat.present.serial,
                slot_description: &seat.present.slot_description,
                module: seat.module,
            })
            .collect();
        for (key, port) in self.ports.match_tokens(&seen) {
            let slot = self.seats.get(&key).map(|s| s.present.slot);
            tracing::info!(token = %key, port = %port.path, ?slot, how = ?port.mapping, position = ?self.config.rack.position_of(&port.path), "USB arrival matched to its PKCS#11 slot");
        }
        for d in self.ports.expired(tokio::time::Instant::now()) {
            let port = d.port_path.clone();
            let id = d.id();
            tracing::error!(
                %port,
                %id,
                "Ukey is on USB but no PKCS#11 slot shows it: is its model's module configured and working?"
            );
            self.usb_problems.insert(
                port.clone(),
                (
                    codes::NO_SLOT_FOR_TOKEN,
                    format!("Ukey {id} at USB port {port} shows no PKCS#11 slot (or none that can be told from the others): check its model's module"),
                ),
            );
        }
    }

    pub(super) async fn on_scan(
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
                            && seat.sessions.observing() == 0
                            && seat.reading.may_reread(Instant::now());
                        let (reading, was_unreadable) = seat.reading.scan_read();
                        seat.reading = reading;
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
            self.ports.token_gone(&key);
            if let Some(seat) = self.seats.remove(&key) {
                tracing::info!(token = %key, job = ?seat.job.as_ref().map(|j| j.as_str()), "token gone");
            }
        }
        // The tokens found now may be the ones USB arrivals wait for.
        self.check_usb_arrivals();
        self.resume_jobs_on_present_tokens().await?;
        self.try_claim_all().await
    }

    /// A slot of `module` holds a token the module cannot read: it stays (or becomes) a seat,
    /// `damaged` with the module's error, and takes no job. The seat is the token last seen
    /// in that slot (not seen elsewhere in this scan), so a token that goes bad keeps its
    /// serial; a token unreadable from the start is named by its slot. Returns the seat's key.
    pub(super) fn on_unreadable(
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
                slot_description: String::new(),
            };
            Seat::new(module, present, TokenState::Damaged)
        });
        seat.reading = seat.reading.scan_failed();
        // What an observation started before this read is stale now.
        seat.observation += 1;
        if seat.job.is_none() && seat.state != TokenState::Damaged {
            seat.state = TokenState::Damaged;
        }
        let damage = crate::desk::damage(&error);
        if seat.damage.as_ref() != Some(&damage) {
            tracing::warn!(token = %key, slot, job = ?seat.job.as_ref().map(|j| j.as_str()), error = %error, "token cannot be read: shown as damaged, no job is taken on it");
            seat.damage = Some(damage);
        }
        key
    }

    /// Reads a token's objects (public ones, no PIN) to classify it.
    pub(super) fn observe(&mut self, key: TokenKey) {
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
        if seat.reading.is_unreadable() {
            // Nothing to read (a serial-less one would pass for blank): the scan that finds
            // it readable again observes it.
            return;
        }
        let module = self.modules[seat.module].clone();
        let present = seat.present.clone();
        seat.observation += 1;
        seat.sessions = std::mem::take(&mut seat.sessions).observation_started();
        let number = seat.observation;
        let tx = self.events.clone();
        tokio::task::spawn_blocking(move || {
            let result = module.observe(present, revoked);
            let _ = tx.blocking_send(Event::Observed(key, number, result));
        });
    }

    pub(super) fn on_observed(
        &mut self,
        key: TokenKey,
        number: u64,
        result: Result<Observation, TokenError>,
    ) {
        let warning =
            Duration::from_secs(u64::from(self.config.inventory.expiry_warning_days) * 86_400);
        let mut start = false;
        if let Some(seat) = self.seats.get_mut(&key) {
            let (sessions, open) = std::mem::take(&mut seat.sessions).observation_ended();
            seat.sessions = sessions;
            start = open;
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
                seat.reading = seat.reading.read_well();
                let before = seat.state;
                seat.state = classify(&obs, SystemTime::now(), warning);
                if seat.state != before {
                    let rack = super::inventory::RackView {
                        config: &self.config.rack,
                        ports: &self.ports,
                    };
                    let position = rack.slot(&key, seat);
                    if let Some(event) =
                        observed_audit_event(seat.state, &obs.present.serial, position)
                    {
                        self.audit.record(event);
                    }
                }
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
                let scan = Duration::from_millis(self.config.pkcs11.scan_interval_ms);
                seat.reading = seat.reading.read_failed(Instant::now(), |failed| {
                    crate::desk::reread_delay(scan, failed)
                });
            }
        }
        if let Some(seat) = self.seats.get(&key)
            && let Some((job, wanted)) = self.wrong_token_now(seat)
        {
            tracing::warn!(token = %key, %job, wanted = %wanted, "not the token the waiting job names: left untouched");
        }
    }

    /// The configured model of a token, if its USB device is known.
    pub(super) fn model_of(&self, key: &TokenKey) -> Option<&crate::config::ModelConfig> {
        let (vendor, product) = self.ports.port_of(key)?.ids;
        self.config
            .models
            .iter()
            .find(|m| m.vendor_id == vendor && m.product_id == product)
    }

    pub(super) fn start_worker(&mut self, key: TokenKey) {
        let Some(seat) = self.seats.get_mut(&key) else {
            return;
        };
        let (sessions, start) = std::mem::take(&mut seat.sessions).want_worker();
        seat.sessions = sessions;
        if start != WorkerStart::Open {
            // Being opened, or opened when the observations' sessions are closed (see
            // `on_observed`).
            return;
        }
        let module = self.modules[seat.module].clone();
        let present = seat.present.clone();
        let tx = self.events.clone();
        tokio::task::spawn_blocking(move || {
            let result = module
                .open(&present)
                .and_then(TokenWorker::spawn)
                .map(Arc::new);
            let _ = tx.blocking_send(Event::WorkerReady(key, result));
        });
    }

    pub(super) async fn on_worker(
        &mut self,
        key: TokenKey,
        result: Result<Arc<TokenWorker>, TokenError>,
    ) -> Result<(), DaemonError> {
        let Some(seat) = self.seats.get_mut(&key) else {
            self.requeue_unclaimed(&key);
            return Ok(());
        };
        let sessions = std::mem::take(&mut seat.sessions);
        match result {
            Ok(worker) => seat.sessions = sessions.worker_opened(Some(worker)),
            Err(e) => {
                seat.sessions = sessions.worker_opened(None);
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
                    if let Some(pins) = entry.data.pins().cloned() {
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

    /// A blank SoftHSM2 slot got its serial at `initialize`: name the seat by it from now on.
    pub(super) fn rekey_seat(&mut self, job_id: &JobId, serial: &TokenSerial) {
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
            self.ports.rekey(&old_key, new_key.clone());
            self.seats.insert(new_key, seat);
        }
    }
}
