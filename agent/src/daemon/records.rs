//! The job journal's records: their schema, their sealing with the journal key, and the
//! replay that rebuilds every job from them at start-up.
//!
//! Every record that holds job content (the document, PINs, inputs, CSR bundles) is encrypted
//! with its job's own key, bound to its job and kind; ids, serials and times are not. A job's
//! key is random, made when the job is accepted, kept in memory and, wrapped with the journal
//! key, in the key file ([`crate::job_keys`]); when the job ends, a `Done` record is
//! journaled and the key erased, so the job's PINs and personal data cannot be read from the
//! journal from that moment on, though its records stay until the next compaction. (Jobs of
//! journals written before job keys existed have none: their records use the journal key.)
//!
//! What this module does not do: write records (feeding a job does, see `jobs`), or decide
//! what compaction keeps (`compaction`).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use ukey_protocol::Message;
use ukey_protocol::event::StepEvent;
use ukey_protocol::ids::{JobId, Nonce, TokenSerial};
use ukey_protocol::job::{JobDocument, JobKind};
use ukey_protocol::signed::JobEnvelope;

use crate::desk::TokenKey;
use crate::job::Report;
use crate::job::{Action, Input, JobMachine, JobState, Timer};
use crate::job_keys::JobKeys;
use crate::steps::Pins;
use crate::trust::{JournalKey, Sealed};

use super::compaction::{FinishedJob, compacted};
use super::job_data::{Phase, PhaseError, advance};
use super::jobs::{JobEntry, Waiting, reports_of};
use super::sink::step_event;
use super::{Daemon, DaemonError, now_utc};

/// One journal record. Job content is encrypted with the job's key (see the module docs).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "record", rename_all = "snake_case")]
pub(super) enum Record {
    /// A job was accepted, at `seen_at`: its signed envelope, encrypted with the journal key.
    /// (`seen_at` is absent in journals written before it existed.)
    Job {
        job_id: JobId,
        envelope: Sealed,
        #[serde(
            default,
            with = "time::serde::rfc3339::option",
            skip_serializing_if = "Option::is_none"
        )]
        seen_at: Option<OffsetDateTime>,
    },
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
    /// Compaction summary of a finished job: enough to recognise a redelivery, until
    /// `keep_until` (or `expires_at`, in journals written before it existed).
    Done {
        job_id: JobId,
        nonce: Nonce,
        #[serde(with = "time::serde::rfc3339")]
        expires_at: OffsetDateTime,
        #[serde(
            default,
            with = "time::serde::rfc3339::option",
            skip_serializing_if = "Option::is_none"
        )]
        keep_until: Option<OffsetDateTime>,
        /// The document's `issued_at`: forgetting the job raises the replay floor to it
        /// (absent in journals written before it existed: the expiry stands in, later).
        #[serde(
            default,
            with = "time::serde::rfc3339::option",
            skip_serializing_if = "Option::is_none"
        )]
        issued_at: Option<OffsetDateTime>,
    },
}

/// What an encrypted journal record holds: part of the encryption's context, so that one
/// kind of record cannot be passed off as another, nor one job's as another's.
#[derive(Debug, Clone, Copy)]
pub(super) enum RecordKind {
    Pins,
    Input,
    Csr,
}

impl RecordKind {
    pub(super) fn context(self, job_id: &JobId) -> String {
        let kind = match self {
            RecordKind::Pins => "pins",
            RecordKind::Input => "input",
            RecordKind::Csr => "csr",
        };
        format!("{job_id}/{kind}")
    }
}

/// The keys that open the journal's records: the jobs' own keys (unwrapped from the key
/// file), and the journal key for the jobs of older journals, which have none.
pub(super) struct RecordKeys<'a> {
    pub(super) journal: &'a JournalKey,
    pub(super) jobs: &'a BTreeMap<JobId, JournalKey>,
}

impl RecordKeys<'_> {
    fn of(&self, job_id: &JobId) -> &JournalKey {
        self.jobs.get(job_id).unwrap_or(self.journal)
    }
}

/// The jobs' own keys: the key file, and the keys of the jobs that have not finished,
/// unwrapped.
#[derive(Debug)]
pub(super) struct JobKeyStore {
    pub(super) file: JobKeys,
    pub(super) open: BTreeMap<JobId, JournalKey>,
}

impl JobKeyStore {
    pub(super) fn new(file: JobKeys) -> JobKeyStore {
        JobKeyStore {
            file,
            open: BTreeMap::new(),
        }
    }
}

/// What the journal's records rebuild (see [`replayed`]).
#[derive(Default)]
pub(super) struct Replayed {
    /// Every job the records name, as its last record left it.
    pub(super) jobs: BTreeMap<JobId, JobEntry>,
    /// Finished jobs known by their `Done` records.
    pub(super) finished: BTreeMap<JobId, FinishedJob>,
    /// Every nonce accepted.
    pub(super) nonces: BTreeSet<Nonce>,
    /// Lost tokens named by accepted `replace` jobs (trimmed serials).
    pub(super) revoked: BTreeSet<String>,
    /// Jobs in the order they were accepted: the queue keeps it across a restart.
    pub(super) accepted_order: Vec<JobId>,
    /// Per job, the events of its last journaled record: pushed to the outbox again.
    pub(super) last_events: BTreeMap<JobId, Vec<StepEvent>>,
}

/// Rebuilds the jobs from the journal's records (pure but for the decryption): each job's
/// machine is fed its inputs again, which makes the same events (ids included) at the
/// records' times. A record that cannot be opened stops the replay: the journal is not this
/// station's, or it was tampered with.
#[cfg(test)]
pub(super) fn replayed(records: Vec<Record>, key: &JournalKey) -> Result<Replayed, DaemonError> {
    replayed_with(
        records,
        &RecordKeys {
            journal: key,
            jobs: &BTreeMap::new(),
        },
    )
}

/// [`replayed`] with the jobs' own keys. A job whose key was erased (it has a `Done` record
/// and no key) is only remembered as finished: its other records are skipped unread.
pub(super) fn replayed_with(
    records: Vec<Record>,
    keys: &RecordKeys<'_>,
) -> Result<Replayed, DaemonError> {
    let erased: BTreeSet<JobId> = records
        .iter()
        .filter_map(|record| match record {
            Record::Done { job_id, .. } if !keys.jobs.contains_key(job_id) => Some(job_id.clone()),
            _ => None,
        })
        .collect();
    let mut r = Replayed::default();
    for record in records {
        let job = match &record {
            Record::Job { job_id, .. }
            | Record::Pins { job_id, .. }
            | Record::Input { job_id, .. }
            | Record::Csr { job_id, .. } => Some(job_id),
            Record::Done { .. } | Record::Revoked { .. } => None,
        };
        if job.is_some_and(|id| erased.contains(id)) {
            continue;
        }
        let key = job.map(|id| keys.of(id)).unwrap_or(keys.journal);
        match record {
            Record::Job {
                job_id,
                envelope,
                seen_at,
            } => {
                r.accepted_order.push(job_id.clone());
                let doc = open_job(key, &job_id, &envelope)?;
                r.nonces.insert(doc.nonce.clone());
                // The lost token of a replacement stays revoked even if its own record
                // never reached the journal.
                if doc.kind == JobKind::Replace
                    && let Some(old) = &doc.old_token_serial
                {
                    r.revoked.insert(old.as_str().trim().to_owned());
                }
                let machine = JobMachine::new(job_id.clone(), doc.kind, doc.rekey);
                let mut entry = JobEntry::new(Arc::new(doc), machine);
                entry.records = 1;
                // Unknown in older journals: counted from now, which remembers longer, never
                // shorter.
                entry.seen_at = seen_at.unwrap_or_else(now_utc);
                // The `queued` event was made at acceptance; replaying keeps the seq.
                let accepted = entry.machine.accepted();
                r.jobs.insert(job_id.clone(), entry);
                let events = events_of(
                    r.jobs.get(&job_id),
                    &job_id,
                    reports_of(vec![accepted]),
                    now_utc(),
                );
                r.last_events.insert(job_id, events);
            }
            Record::Pins { job_id, pins } => {
                let bytes = open_record(key, &job_id, RecordKind::Pins, &pins)?;
                let opened = Pins::from_bytes(&bytes).map_err(DaemonError::Journal)?;
                if let Some(entry) = r.jobs.get_mut(&job_id) {
                    entry.records += 1;
                    let claimed = advance(&mut entry.data, |d| d.claim(Some(Arc::new(opened))));
                    not_applicable(&job_id, claimed);
                }
            }
            Record::Input { job_id, at, input } => {
                let input: Input = open_json(key, &job_id, RecordKind::Input, &input)?;
                let Some(entry) = r.jobs.get_mut(&job_id) else {
                    continue;
                };
                entry.records += 1;
                replay_data(&job_id, entry, &input);
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
                let events = events_of(
                    r.jobs.get(&job_id),
                    &job_id,
                    reports_of(actions.clone()),
                    at,
                );
                r.last_events.insert(job_id.clone(), events);
                if let Some(entry) = r.jobs.get_mut(&job_id) {
                    for action in &actions {
                        if let Action::Execute(step) = action {
                            entry.step_started = Some((*step, at));
                        }
                    }
                }
            }
            Record::Csr { job_id, bundle } => {
                let bundle = open_json(key, &job_id, RecordKind::Csr, &bundle)?;
                if let Some(entry) = r.jobs.get_mut(&job_id) {
                    entry.records += 1;
                    let requested = advance(&mut entry.data, |d| d.request(bundle));
                    not_applicable(&job_id, requested);
                }
            }
            Record::Done {
                job_id,
                nonce,
                expires_at,
                keep_until,
                issued_at,
            } => {
                r.nonces.insert(nonce.clone());
                r.finished.insert(
                    job_id,
                    FinishedJob {
                        nonce,
                        issued_at: issued_at.unwrap_or(expires_at),
                        expires_at,
                        keep_until: keep_until.unwrap_or(expires_at),
                    },
                );
            }
            Record::Revoked { serial } => {
                r.revoked.insert(serial.as_str().trim().to_owned());
            }
        }
    }
    Ok(r)
}

/// The job data an input brings, as it did when it was journaled: a claim without a `Pins`
/// record before it (a job that sets no PINs) claims without PINs, and issued certificates
/// are kept.
fn replay_data(job_id: &JobId, entry: &mut JobEntry, input: &Input) {
    let result = match input {
        Input::Claimed { .. } if entry.data.phase() == Phase::Queued => {
            advance(&mut entry.data, |d| d.claim(None))
        }
        Input::CertificatesArrived { bundle } => {
            advance(&mut entry.data, |d| d.issue(bundle.clone()))
        }
        _ => Ok(()),
    };
    not_applicable(job_id, result);
}

/// Like an input the machine refuses, data that does not fit the job's phase means a journal
/// of another version: logged, and the replay goes on with the rest.
fn not_applicable(job_id: &JobId, result: Result<(), PhaseError>) {
    if let Err(e) = result {
        tracing::warn!(job = %job_id, error = %e, "journal data not applicable on replay");
    }
}

/// The events of `reports`, made at `at` (a replay re-makes them as they were); a step's
/// end carries the time its start was journaled (`entry`'s).
fn events_of(
    entry: Option<&JobEntry>,
    job_id: &JobId,
    reports: Vec<Report>,
    at: OffsetDateTime,
) -> Vec<StepEvent> {
    let started = entry.and_then(|e| e.step_started);
    reports
        .iter()
        .map(|report| step_event(job_id, report, started, at))
        .collect()
}

/// Opens a record's content sealed for `job_id` and `kind`.
fn open_record(
    key: &JournalKey,
    job_id: &JobId,
    kind: RecordKind,
    sealed: &Sealed,
) -> Result<zeroize::Zeroizing<Vec<u8>>, DaemonError> {
    key.open(&kind.context(job_id), sealed)
        .map_err(DaemonError::Journal)
}

/// Opens a record's JSON content sealed for `job_id` and `kind`.
fn open_json<T: serde::de::DeserializeOwned>(
    key: &JournalKey,
    job_id: &JobId,
    kind: RecordKind,
    sealed: &Sealed,
) -> Result<T, DaemonError> {
    let bytes = open_record(key, job_id, kind, sealed)?;
    serde_json::from_slice(&bytes)
        .map_err(|e| DaemonError::Journal(format!("{}: {e}", kind.context(job_id))))
}

/// Opens a `Job` record: the job's signed envelope, verified when it was accepted.
fn open_job(key: &JournalKey, job_id: &JobId, sealed: &Sealed) -> Result<JobDocument, DaemonError> {
    let bytes = key
        .open(job_id.as_str(), sealed)
        .map_err(DaemonError::Journal)?;
    let envelope = JobEnvelope::decode(&bytes).map_err(|e| DaemonError::Journal(e.to_string()))?;
    JobDocument::decode(envelope.job_bytes()).map_err(|e| DaemonError::Journal(e.to_string()))
}

impl Daemon {
    /// Rebuilds every job from the journal, then compacts it.
    pub(super) async fn replay(&mut self) -> Result<(), DaemonError> {
        let records = self.journal.replay()?;
        self.unwrap_job_keys(&records)?;
        let Replayed {
            jobs,
            finished,
            nonces,
            revoked,
            accepted_order,
            last_events,
        } = replayed_with(
            records,
            &RecordKeys {
                journal: &self.trust.journal_key,
                jobs: &self.job_keys.open,
            },
        )?;
        self.jobs = jobs;
        self.finished = finished;
        self.nonces = nonces;
        self.revoked = revoked;
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
                let finished = self.finished_job(&entry);
                self.finished.insert(id, finished);
            }
        }
        let old = self.journal.replay()?;
        let now = now_utc();
        // Before the rewrite forgets them: a crash in between leaves a floor that is only
        // stricter than needed.
        self.raise_replay_floor(now)?;
        let jobs = &self.jobs;
        let keep = compacted(old, |id| jobs.contains_key(id), &self.finished, now);
        self.journal.rewrite(&keep)?;
        self.dead_records = 0;
        self.forget_expired(now);
        // Keys of jobs that finished before a crash let their erasure happen, and keys
        // stored for jobs whose first record never made it: nothing needs them.
        self.job_keys
            .open
            .retain(|id, _| self.jobs.contains_key(id));
        let erased = self.job_keys.file.erase_all_but(self.jobs.keys())?;
        if erased > 0 {
            tracing::info!(
                count = erased,
                "erased the keys of finished jobs left by a crash"
            );
        }

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

    /// Unwraps the key of every job `records` name that the key file holds one for. A key
    /// that does not open means a key file of another station: the replay stops.
    fn unwrap_job_keys(&mut self, records: &[Record]) -> Result<(), DaemonError> {
        for record in records {
            if let Record::Job { job_id, .. } = record
                && let Some(wrapped) = self.job_keys.file.get(job_id)
            {
                let key = self
                    .trust
                    .journal_key
                    .unwrap_key(job_id.as_str(), wrapped)
                    .map_err(|e| {
                        DaemonError::Journal(format!(
                            "{}: {e}",
                            self.job_keys.file.path().display()
                        ))
                    })?;
                self.job_keys.open.insert(job_id.clone(), key);
            }
        }
        Ok(())
    }

    /// Makes a new job's key and stores it, wrapped, in the key file (fsync'd): before the
    /// job's first record, which it encrypts.
    pub(super) fn new_job_key(&mut self, job_id: &JobId) -> Result<(), DaemonError> {
        let key = JournalKey::generate().map_err(DaemonError::Journal)?;
        let wrapped = self
            .trust
            .journal_key
            .wrap(job_id.as_str(), &key)
            .map_err(DaemonError::Journal)?;
        self.job_keys.file.put(job_id, &wrapped)?;
        self.job_keys.open.insert(job_id.clone(), key);
        Ok(())
    }

    /// Destroys a finished job's secrets in the journal: journals its `Done` record (what a
    /// redelivery is recognised by, since its `Job` record can no longer be read), then
    /// erases its key. Returns the number of records written.
    ///
    /// Order matters. The job's step events went to the outbox without an fsync, and its
    /// last journal record is what re-makes them after a power loss; once the key is gone,
    /// nothing can, so the outbox is made durable first. The `Done` record comes before the
    /// erasure: a crash between the two leaves the key, and the next start erases it.
    pub(super) fn erase_job_secrets(
        &mut self,
        job_id: &JobId,
        finished: &FinishedJob,
    ) -> Result<usize, DaemonError> {
        if self.job_keys.file.get(job_id).is_none() {
            // A job of an older journal, sealed with the journal key: compaction drops it.
            self.job_keys.open.remove(job_id);
            return Ok(0);
        }
        self.link.sync_outbox()?;
        self.replayable.clear();
        self.journal.append(&Record::Done {
            job_id: job_id.clone(),
            nonce: finished.nonce.clone(),
            expires_at: finished.expires_at,
            keep_until: (finished.keep_until != finished.expires_at).then_some(finished.keep_until),
            issued_at: Some(finished.issued_at),
        })?;
        self.job_keys.file.erase(job_id)?;
        self.job_keys.open.remove(job_id);
        Ok(1)
    }

    /// The key a job's records are sealed with: its own, or the journal key for a job of an
    /// older journal.
    fn record_key(&self, job_id: &JobId) -> &JournalKey {
        self.job_keys
            .open
            .get(job_id)
            .unwrap_or(&self.trust.journal_key)
    }

    /// Encrypts a job's signed envelope for its `Job` record, with the job's key.
    pub(super) fn seal_envelope(
        &self,
        job_id: &JobId,
        envelope: &[u8],
    ) -> Result<Sealed, DaemonError> {
        self.record_key(job_id)
            .seal(job_id.as_str(), envelope)
            .map_err(DaemonError::Journal)
    }

    /// Encrypts a record's content with the job's key, bound to its job and kind.
    pub(super) fn seal_record(
        &self,
        job_id: &JobId,
        kind: RecordKind,
        plaintext: &[u8],
    ) -> Result<Sealed, DaemonError> {
        self.record_key(job_id)
            .seal(&kind.context(job_id), plaintext)
            .map_err(DaemonError::Journal)
    }

    pub(super) fn seal_json<T: Serialize>(
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
}

#[cfg(test)]
mod tests;
