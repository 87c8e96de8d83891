//! Admission: the platform's messages routed by topic, and a job document verified,
//! de-duplicated, journaled and queued, or rejected with an event that says why.
//!
//! What this module does not do: run or claim jobs (`claims`), or feed accepted ones (`jobs`).

use std::sync::Arc;

use sha2::{Digest, Sha256};
use time::{Duration, OffsetDateTime};
use ukey_protocol::ProtocolError;
use ukey_protocol::codes::{self, Code};
use ukey_protocol::event::{ExecutionState, Step, StepError, StepEvent};
use ukey_protocol::ids::{EventId, JobId, Nonce, StationId};
use ukey_protocol::job::JobDocument;
use ukey_protocol::signed::{JobEnvelope, JobKeyring, NonceSet, check_nonce};
use ukey_protocol::topic::Topic;
use ukey_protocol::{Message, V1};

use crate::job::{JobMachine, Timer, code};
use crate::link::Incoming;

use super::jobs::{JobEntry, Waiting};
use super::records::Record;
use super::rejections::Verdict;
use super::{Daemon, DaemonError, now_utc};

/// Acknowledges a message to the broker (after what it asked for is durable).
pub(super) async fn ack(message: Incoming) {
    if let Err(e) = message.ack().await {
        tracing::debug!(error = %e, "broker acknowledgement not sent (link stopping)");
    }
}

/// What admission decided about a job message (see [`admit`]).
#[derive(Debug)]
pub(super) enum Admission {
    /// A verified job, new to this station: journal and queue it.
    Accept(Box<JobDocument>),
    /// A redelivery of a job known here (same job id, same nonce): nothing to do.
    Duplicate(JobId),
    /// An unverifiable message that reuses a known job id: logged, never reported as that
    /// job's event (only the platform may speak on a real job's topic).
    ForgedReuse {
        /// The job id it reuses.
        job_id: JobId,
        /// Why it does not verify.
        error: ProtocolError,
    },
    /// Refused: reported to the platform as the job's `rejected` event.
    Reject {
        /// The job refused.
        job_id: JobId,
        /// The event's error code.
        code: Code,
        /// Why, for the event's message.
        reason: String,
    },
    /// Unverifiable and without a readable job id: there is no job to report on.
    Unreadable(ProtocolError),
}

/// What a job is checked against besides its own content.
pub(super) struct Policy<'a> {
    /// The platform keys trusted, by key id.
    pub(super) keyring: &'a JobKeyring,
    /// This station.
    pub(super) station: &'a StationId,
    /// The longest validity (`expires_at - issued_at`) a job may have: the station's replay
    /// memory lasts that long, so a longer-lived job could outlive it.
    pub(super) max_lifetime: Duration,
    /// Jobs issued at or before this time are refused: the station no longer remembers
    /// every job issued then, so it cannot tell such a job from a replay, whatever its own
    /// clock says (`compaction::raised_floor`).
    pub(super) replay_floor: Option<OffsetDateTime>,
}

/// Decides about a job message (pure): `known` gives the nonce of a job this station knows
/// (running or finished) by its id, `seen` the nonces accepted before.
///
/// A redelivery is recognised by job id first, before the nonce check that would call it a
/// replay. A different job under a known id is rejected only when it verifies. A verified job
/// valid for longer than `policy.max_lifetime` is refused (`lifetime-too-long`).
pub(super) fn admit<'a>(
    envelope: &JobEnvelope,
    known: impl Fn(&JobId) -> Option<&'a Nonce>,
    policy: &Policy<'_>,
    seen: &impl NonceSet,
    now: OffsetDateTime,
) -> Admission {
    let (keyring, station) = (policy.keyring, policy.station);
    let unverified = JobDocument::decode(envelope.job_bytes());
    if let Ok(unverified) = &unverified
        && let Some(nonce) = known(&unverified.job_id)
    {
        let job_id = unverified.job_id.clone();
        if *nonce == unverified.nonce {
            return Admission::Duplicate(job_id);
        }
        return match envelope.verify(keyring, station, now) {
            Err(error) => Admission::ForgedReuse { job_id, error },
            Ok(_) => Admission::Reject {
                job_id,
                code: codes::DUPLICATE_JOB_ID,
                reason: "a different job with this job id was accepted before".into(),
            },
        };
    }
    let verified = envelope
        .verify(keyring, station, now)
        .and_then(|doc| check_nonce(&doc, seen).map(|()| doc));
    match (verified, unverified) {
        (Ok(doc), _) if doc.expires_at - doc.issued_at > policy.max_lifetime => Admission::Reject {
            reason: format!(
                "the job is valid for {} (issued {}, expires {}); this station accepts at most {}",
                doc.expires_at - doc.issued_at,
                doc.issued_at,
                doc.expires_at,
                policy.max_lifetime
            ),
            job_id: doc.job_id,
            code: codes::LIFETIME_TOO_LONG,
        },
        (Ok(doc), _)
            if policy
                .replay_floor
                .is_some_and(|floor| doc.issued_at <= floor) =>
        {
            Admission::Reject {
                reason: format!(
                    "the job was issued at {}, not after {}, the issue time of a job this \
                     station has forgotten: it cannot be told from a replay (check the \
                     station's and the platform's clocks)",
                    doc.issued_at,
                    policy.replay_floor.unwrap_or(doc.issued_at)
                ),
                job_id: doc.job_id,
                code: codes::REPLAYED_NONCE,
            }
        }
        (Ok(doc), _) => Admission::Accept(Box::new(doc)),
        (Err(e), Ok(unverified)) => Admission::Reject {
            job_id: unverified.job_id,
            code: rejection_code(&e),
            reason: e.to_string(),
        },
        (Err(e), Err(_)) => Admission::Unreadable(e),
    }
}

/// The rejection event's code for a job that does not verify.
pub(super) fn rejection_code(e: &ukey_protocol::ProtocolError) -> Code {
    use ukey_protocol::ProtocolError as P;
    match e {
        P::UnknownKeyId { .. } | P::BadSignature { .. } | P::SignatureAlgorithmMismatch { .. } => {
            codes::BAD_SIGNATURE
        }
        P::WrongStation { .. } => codes::WRONG_STATION,
        P::Expired { .. } => codes::EXPIRED,
        P::NotYetValid { .. } => codes::NOT_YET_VALID,
        P::Replay { .. } => codes::REPLAYED_NONCE,
        _ => codes::INVALID_JOB,
    }
}

impl Daemon {
    /// Routes a message from the platform by its topic.
    pub(super) async fn on_message(&mut self, message: Incoming) -> Result<(), DaemonError> {
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
    pub(super) async fn on_job(&mut self, message: Incoming) -> Result<(), DaemonError> {
        let envelope = match JobEnvelope::decode(message.payload()) {
            Ok(envelope) => envelope,
            Err(e) => {
                // Without a readable job id there is no job to report on: log and drop.
                tracing::warn!(error = %e, "malformed job message dropped");
                ack(message).await;
                return Ok(());
            }
        };
        let known = |id: &JobId| {
            self.jobs
                .get(id)
                .map(|e| &e.doc.nonce)
                .or_else(|| self.finished.get(id).map(|f| &f.nonce))
        };
        let policy = Policy {
            keyring: &self.trust.keyring,
            station: &self.station,
            max_lifetime: self.trust.max_job_lifetime,
            replay_floor: self.replay_floor,
        };
        let admission = admit(&envelope, known, &policy, &self.nonces, now_utc());
        let doc = match admission {
            Admission::Accept(doc) => *doc,
            Admission::Duplicate(job_id) => {
                tracing::info!(job = %job_id, "duplicate delivery of a known job ignored");
                ack(message).await;
                return Ok(());
            }
            Admission::ForgedReuse { job_id, error } => {
                // Only the platform may speak on a real job's topic: an unverifiable message
                // that reuses a known job id is logged, never reported as that job's event.
                tracing::warn!(job = %job_id, error = %error, "unverifiable message reusing a known job id ignored");
                ack(message).await;
                return Ok(());
            }
            Admission::Reject {
                job_id,
                code,
                reason,
            } => {
                self.reject(&job_id, &envelope, code, &reason).await?;
                ack(message).await;
                return Ok(());
            }
            Admission::Unreadable(error) => {
                tracing::warn!(error = %error, "unverifiable job without a job id dropped");
                ack(message).await;
                return Ok(());
            }
        };
        let envelope_bytes = envelope
            .encode()
            .map_err(|e| DaemonError::Journal(e.to_string()))?;
        let job_id = doc.job_id.clone();
        self.new_job_key(&job_id)?;
        let sealed = self.seal_envelope(&job_id, &envelope_bytes)?;
        let mut machine = JobMachine::new(job_id.clone(), doc.kind, doc.rekey);
        let first = machine.accepted();
        // Order: the job to the journal, its `queued` event to the outbox (re-made from the
        // journal after a crash), then the broker's ack (a crash before it: the broker
        // delivers the job again, a known duplicate).
        let seen_at = now_utc();
        let mut records = vec![Record::Job {
            job_id: job_id.clone(),
            envelope: sealed,
            seen_at: Some(seen_at),
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
        entry.seen_at = seen_at;
        self.jobs.insert(job_id.clone(), entry);
        if targeted {
            self.arm(&job_id, Timer::TargetToken);
        }
        if let Some(entry) = self.jobs.get(&job_id) {
            self.queue.push_back(Waiting::of(&job_id, entry));
        }
        self.try_claim_all().await
    }

    pub(super) async fn reject(
        &mut self,
        job_id: &JobId,
        envelope: &JobEnvelope,
        code_str: Code,
        reason: &str,
    ) -> Result<(), DaemonError> {
        match self.rejections.on_rejection(std::time::Instant::now()) {
            Verdict::Publish => {}
            Verdict::Suppress { log } => {
                // Above the limit: no journal write, no publish, and one log line a minute.
                if let Some(count) = log {
                    tracing::warn!(
                        suppressed = count,
                        total_suppressed = self.rejections.suppressed(),
                        limit_per_minute = self.config.trust.rejections_per_minute,
                        "rejected jobs above the rate limit: no rejection events published for them"
                    );
                }
                return Ok(());
            }
        }
        tracing::warn!(job = %job_id, code = %code_str, %reason, "job rejected");
        // Rejections above the rate limit are counted, not recorded one by one: a flood of
        // forged jobs must not flood the audit log either.
        self.audit.record(crate::audit::AuditEvent::JobRefused {
            job: Some(job_id.clone()),
            reason: format!("{code_str}: {reason}"),
        });
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
}

#[cfg(test)]
mod tests;
