//! What compaction keeps of the job journal, and when the running daemon compacts.
//!
//! One rule serves both compactions: the one at start-up (after the replay) and the one while
//! running (after a job finished, once dead records dominate the journal). [`compacted`]
//! keeps
//!
//! - every record of a job that has not finished, in its order (the replay rebuilds the job
//!   from them, event ids included);
//! - for a finished job whose records are still there, one `Done` record in the place of its
//!   `Job` record: enough to recognise a redelivery by job id and nonce;
//! - `Done` records until their job's document expires and at least the maximum job lifetime
//!   plus the clock skew have passed since the station accepted it (an expired job is refused
//!   on its expiry; the longer memory covers a station clock set back meanwhile);
//! - `Revoked` records, always (a lost token stays revoked);
//!
//! and drops everything else (the other records of finished jobs, records of jobs nobody
//! knows). [`compaction_due`] says when the running daemon compacts; see its docs for the
//! bound on the rewrite's cost.
//!
//! The daemon's memory follows the same rule ([`Daemon::forget_expired`]): after a
//! compaction it forgets the finished jobs whose memory ran out and their nonces, so a
//! daemon that runs for months holds what its journal holds, not every job it ever saw.
//!
//! What this module does not do: read or write the journal, or make the outbox durable
//! before a rewrite (the daemon does both, in that order).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use time::OffsetDateTime;
use ukey_protocol::ids::{JobId, Nonce};
use ukey_protocol::job::JobDocument;
use ukey_protocol::signed::MAX_CLOCK_SKEW;

use super::records::Record;
use super::{Daemon, DaemonError, now_utc};

/// A finished job, as far as a redelivery of it needs to be recognised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct FinishedJob {
    /// The job document's nonce: a redelivery carries the same one.
    pub(super) nonce: Nonce,
    /// The job document's `issued_at` (its expiry for a summary written before it was
    /// kept): forgetting the job raises the replay floor to it ([`raised_floor`]).
    pub(super) issued_at: OffsetDateTime,
    /// The job document's expiry: after it, the job is refused anyway.
    pub(super) expires_at: OffsetDateTime,
    /// Until when the station remembers it ([`FinishedJob::of`]).
    pub(super) keep_until: OffsetDateTime,
}

impl FinishedJob {
    /// The summary of a finished job's document, accepted at `seen_at`: remembered until
    /// the document expires, and at least `max_lifetime` + [`MAX_CLOCK_SKEW`] after
    /// `seen_at`, so its nonce outlives every window in which the job could still verify.
    pub(super) fn of(
        doc: &JobDocument,
        seen_at: OffsetDateTime,
        max_lifetime: time::Duration,
    ) -> FinishedJob {
        FinishedJob {
            nonce: doc.nonce.clone(),
            issued_at: doc.issued_at,
            expires_at: doc.expires_at,
            keep_until: doc.expires_at.max(seen_at + max_lifetime + MAX_CLOCK_SKEW),
        }
    }
}

impl Daemon {
    /// [`FinishedJob::of`] with this station's maximum job lifetime.
    pub(super) fn finished_job(&self, entry: &super::jobs::JobEntry) -> FinishedJob {
        FinishedJob::of(&entry.doc, entry.seen_at, self.trust.max_job_lifetime)
    }
}

/// What compaction keeps of `records` (see the module docs): `is_live` says which jobs have
/// not finished, `finished` holds the jobs that did, `now` decides which `Done` records have
/// expired. Order is kept.
pub(super) fn compacted(
    records: Vec<Record>,
    is_live: impl Fn(&JobId) -> bool,
    finished: &BTreeMap<JobId, FinishedJob>,
    now: OffsetDateTime,
) -> Vec<Record> {
    // A job has one `Done` record at most, whether it was written by an earlier compaction
    // or is made now from its `Job` record.
    let mut done: BTreeSet<JobId> = BTreeSet::new();
    let mut keep = Vec::new();
    for record in records {
        match record {
            Record::Revoked { .. } => keep.push(record),
            Record::Done {
                ref job_id,
                expires_at,
                keep_until,
                ..
            } => {
                // A summary written before `keep_until` existed lasts until the expiry.
                if keep_until.unwrap_or(expires_at) > now && done.insert(job_id.clone()) {
                    keep.push(record);
                }
            }
            Record::Job { ref job_id, .. } if !is_live(job_id) => {
                if let Some(f) = finished.get(job_id)
                    && f.keep_until > now
                    && done.insert(job_id.clone())
                {
                    keep.push(Record::Done {
                        job_id: job_id.clone(),
                        nonce: f.nonce.clone(),
                        expires_at: f.expires_at,
                        // Only when it says more than the expiry.
                        keep_until: (f.keep_until != f.expires_at).then_some(f.keep_until),
                        issued_at: Some(f.issued_at),
                    });
                }
            }
            Record::Job { ref job_id, .. }
            | Record::Pins { ref job_id, .. }
            | Record::Input { ref job_id, .. }
            | Record::Csr { ref job_id, .. } => {
                if is_live(job_id) {
                    keep.push(record);
                }
            }
        }
    }
    keep
}

/// Whether the running daemon compacts a journal of `total` records of which `dead` belong
/// to finished jobs: when `dead >= max(min_dead, 2 × live)`, live being `total - dead`.
///
/// The bound this gives: after a compaction no dead record is left, so the next one comes
/// only after at least `max(min_dead, 2 × live)` records were appended and died. A rewrite
/// writes `live + dead ≤ 1.5 × dead` records (plus one `Done` record per finished job), so
/// each appended record costs at most about one and a half record writes later, and the
/// rewrite's three fsyncs (outbox, file, folder) are shared by at least `min_dead` records
/// (about 23 tokens' worth with the default). The journal never holds more than about
/// three times its live records, plus `min_dead`.
pub(super) fn compaction_due(total: usize, dead: usize, min_dead: usize) -> bool {
    let live = total.saturating_sub(dead);
    dead > 0 && dead >= min_dead.max(live.saturating_mul(2))
}

impl Daemon {
    /// Compacts the journal while running, when [`compaction_due`] says dead records dominate
    /// it: called right after a job finished (the only time records die).
    ///
    /// The rewrite runs on the daemon's task, so the desk waits for it; it is rare (see
    /// [`compaction_due`]) and short (one read, one write, three fsyncs; its time is logged).
    pub(super) fn compact_if_due(&mut self) -> Result<(), DaemonError> {
        let before = self.journal.record_count();
        if !compaction_due(
            before,
            self.dead_records,
            self.config.journal.compact_after_records,
        ) {
            return Ok(());
        }
        let started = Instant::now();
        let bytes_before = self.journal.content_len();
        // Order matters. A finished job's step events went to the outbox without an fsync:
        // its last journal record is what re-makes them after a power loss. The rewrite
        // drops that record, so every event must be on disk in the outbox first; a crash
        // between the two leaves the old journal, which still re-makes them. Afterwards
        // nothing in the outbox waits for an fsync, so no job has replayable events left.
        self.link.sync_outbox()?;
        self.replayable.clear();
        let records = self.journal.replay()?;
        let now = now_utc();
        // Before the rewrite forgets them (see `raise_replay_floor`).
        self.raise_replay_floor(now)?;
        let jobs = &self.jobs;
        let keep = compacted(records, |id| jobs.contains_key(id), &self.finished, now);
        self.journal.rewrite(&keep)?;
        self.dead_records = 0;
        self.forget_expired(now);
        // Counts and sizes only: records hold job content.
        tracing::info!(
            records_before = before,
            records_after = keep.len(),
            bytes_before,
            bytes_after = self.journal.content_len(),
            elapsed_ms = started.elapsed().as_secs_f64() * 1000.0,
            "journal compacted while running"
        );
        Ok(())
    }
}

/// Forgets the finished jobs whose memory ran out (`keep_until`) before `now`, then every nonce that
/// neither a live job (`live`) nor a remembered finished job carries: [`compacted`]'s rule
/// for `Done` records, applied to the daemon's memory. A redelivery of a forgotten job is
/// refused as expired, and so is a replay of its nonce (signed into that expired document).
pub(super) fn forget_expired<'a>(
    finished: &mut BTreeMap<JobId, FinishedJob>,
    nonces: &mut BTreeSet<Nonce>,
    live: impl Iterator<Item = &'a Nonce>,
    now: OffsetDateTime,
) {
    finished.retain(|_, f| f.keep_until > now);
    // Owned: compaction is rare, and the nonces are short.
    let known: BTreeSet<Nonce> = live
        .cloned()
        .chain(finished.values().map(|f| f.nonce.clone()))
        .collect();
    nonces.retain(|n| known.contains(n));
}

/// The replay floor once the finished jobs whose memory ran out before `now` are forgotten:
/// the latest `issued_at` among them, or `floor` if that is later. A job issued at or before
/// the floor is refused ([`super::admission::admit`]): the station can no longer tell it from
/// a replay of a job it forgot, and a clock set back past that job's expiry would otherwise
/// let such a replay verify again. Issue times are the platform's, so the floor does not move
/// with the station's clock; a legitimate job is issued after every job the station forgot
/// (those were forgotten only after their whole lifetime).
pub(super) fn raised_floor(
    floor: Option<OffsetDateTime>,
    finished: &BTreeMap<JobId, FinishedJob>,
    now: OffsetDateTime,
) -> Option<OffsetDateTime> {
    finished
        .values()
        .filter(|f| f.keep_until <= now)
        .map(|f| f.issued_at)
        .chain(floor)
        .max()
}

impl Daemon {
    /// Raises the replay floor ([`raised_floor`]) durably, before the jobs it covers are
    /// forgotten.
    pub(super) fn raise_replay_floor(&mut self, now: OffsetDateTime) -> Result<(), DaemonError> {
        let floor = raised_floor(self.replay_floor, &self.finished, now);
        if floor != self.replay_floor
            && let Some(floor) = floor
        {
            super::sequences::write_replay_floor(&self.config.state_dir, floor)?;
            self.replay_floor = Some(floor);
        }
        Ok(())
    }

    /// [`forget_expired`] on the daemon's finished jobs and nonces.
    pub(super) fn forget_expired(&mut self, now: OffsetDateTime) {
        forget_expired(
            &mut self.finished,
            &mut self.nonces,
            self.jobs.values().map(|e| &e.doc.nonce),
            now,
        );
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::trust::Sealed;

    fn sealed() -> Sealed {
        serde_json::from_value(serde_json::json!({"nonce": "00", "ct": "00"})).unwrap()
    }

    fn id(s: &str) -> JobId {
        JobId::new(s).unwrap()
    }

    fn nonce(s: &str) -> Nonce {
        Nonce::new(format!("{s}-0123456789abcdef")).unwrap()
    }

    fn now() -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(1_750_000_000).unwrap()
    }

    fn job(j: &str) -> Record {
        Record::Job {
            job_id: id(j),
            envelope: sealed(),
            seen_at: None,
        }
    }

    fn pins(j: &str) -> Record {
        Record::Pins {
            job_id: id(j),
            pins: sealed(),
        }
    }

    fn input(j: &str) -> Record {
        Record::Input {
            job_id: id(j),
            at: now(),
            input: sealed(),
        }
    }

    fn csr(j: &str) -> Record {
        Record::Csr {
            job_id: id(j),
            bundle: sealed(),
        }
    }

    fn done(j: &str, expires_in: i64) -> Record {
        Record::Done {
            job_id: id(j),
            nonce: nonce(j),
            expires_at: now() + time::Duration::seconds(expires_in),
            keep_until: None,
            // As in `finished` below.
            issued_at: Some(now() - time::Duration::hours(1)),
        }
    }

    fn revoked(serial: &str) -> Record {
        Record::Revoked {
            serial: ukey_protocol::ids::TokenSerial::new(serial).unwrap(),
        }
    }

    fn finished(j: &str, expires_in: i64) -> (JobId, FinishedJob) {
        (
            id(j),
            FinishedJob {
                nonce: nonce(j),
                issued_at: now() - time::Duration::hours(1),
                expires_at: now() + time::Duration::seconds(expires_in),
                keep_until: now() + time::Duration::seconds(expires_in),
            },
        )
    }

    /// Records as JSON, to compare them (records hold no `PartialEq`).
    fn json(records: &[Record]) -> Vec<serde_json::Value> {
        records
            .iter()
            .map(|r| serde_json::to_value(r).unwrap())
            .collect()
    }

    #[test]
    fn keeps_live_jobs_revocations_and_unexpired_summaries_in_order() {
        let records = vec![
            done("old-live", 60),
            done("old-expired", -1),
            job("fin"),
            revoked("LOST0001"),
            job("live"),
            pins("fin"),
            input("fin"),
            pins("live"),
            input("live"),
            csr("fin"),
            csr("live"),
            input("fin"),
            input("stranger"),
            job("fin-expired"),
            input("fin-expired"),
            input("live"),
        ];
        let finished_jobs: BTreeMap<JobId, FinishedJob> = [
            finished("old-live", 60),
            finished("old-expired", -1),
            finished("fin", 3600),
            finished("fin-expired", 0),
        ]
        .into_iter()
        .collect();
        let keep = compacted(records, |j| j.as_str() == "live", &finished_jobs, now());
        let expected = vec![
            done("old-live", 60),
            // The finished job's summary takes its `Job` record's place.
            done("fin", 3600),
            revoked("LOST0001"),
            job("live"),
            pins("live"),
            input("live"),
            csr("live"),
            input("live"),
        ];
        assert_eq!(json(&keep), json(&expected));
    }

    #[test]
    fn memory_forgets_expired_finished_jobs_and_nonces_nobody_carries() {
        let mut remembered: BTreeMap<JobId, FinishedJob> =
            [finished("old", -1), finished("fresh", 3600)].into();
        let mut nonces: BTreeSet<Nonce> = ["old", "fresh", "live", "stray"]
            .into_iter()
            .map(nonce)
            .collect();
        let live = [nonce("live")];
        forget_expired(&mut remembered, &mut nonces, live.iter(), now());
        assert_eq!(
            remembered.keys().cloned().collect::<Vec<_>>(),
            [id("fresh")]
        );
        assert_eq!(nonces, [nonce("fresh"), nonce("live")].into());
        // Nothing left to forget: a second pass keeps everything.
        forget_expired(&mut remembered, &mut nonces, live.iter(), now());
        assert_eq!(nonces.len(), 2);
    }

    #[test]
    fn forgetting_jobs_raises_the_replay_floor_to_their_latest_issue_and_never_lowers_it() {
        let at = |h: i64| now() + time::Duration::hours(h);
        let summary = |issued: i64, keep: i64| FinishedJob {
            nonce: nonce("n"),
            issued_at: at(issued),
            expires_at: at(keep),
            keep_until: at(keep),
        };
        let finished: BTreeMap<JobId, FinishedJob> = [
            (id("a"), summary(-30, -2)),
            (id("b"), summary(-20, -1)),
            // Still remembered: it does not move the floor.
            (id("c"), summary(-10, 5)),
        ]
        .into();
        assert_eq!(raised_floor(None, &finished, now()), Some(at(-20)));
        // A floor raised before stays where it is when nothing newer is forgotten.
        assert_eq!(raised_floor(Some(at(-15)), &finished, now()), Some(at(-15)));
        assert_eq!(
            raised_floor(None, &BTreeMap::new(), now()),
            None,
            "nothing forgotten, no floor"
        );
        // The clock set back: nothing is forgotten, the floor stays.
        assert_eq!(
            raised_floor(Some(at(-20)), &finished, at(-48)),
            Some(at(-20))
        );
    }

    #[test]
    fn compacting_a_compacted_journal_changes_nothing() {
        let records = vec![
            job("a"),
            job("b"),
            input("a"),
            revoked("LOST0002"),
            input("b"),
            done("c", 10),
        ];
        let finished_jobs: BTreeMap<JobId, FinishedJob> = [finished("a", 100), finished("c", 10)]
            .into_iter()
            .collect();
        let is_live = |j: &JobId| j.as_str() == "b";
        let once = compacted(records, is_live, &finished_jobs, now());
        let again = compacted(once.clone(), is_live, &finished_jobs, now());
        assert_eq!(json(&once), json(&again));
        assert_eq!(
            json(&once),
            json(&[
                done("a", 100),
                job("b"),
                revoked("LOST0002"),
                input("b"),
                done("c", 10)
            ])
        );
        // Later, every summary has expired; the running job and the revocation stay.
        let later = compacted(
            once,
            is_live,
            &finished_jobs,
            now() + time::Duration::seconds(100),
        );
        assert_eq!(
            json(&later),
            json(&[job("b"), revoked("LOST0002"), input("b")])
        );
    }

    #[test]
    fn a_job_gets_one_summary_only() {
        // A summary written by an earlier compaction and the job's own records (a journal
        // from a crash in an odd place): one `Done` record survives.
        let records = vec![done("a", 60), job("a"), input("a")];
        let finished_jobs: BTreeMap<JobId, FinishedJob> = [finished("a", 60)].into_iter().collect();
        let keep = compacted(records, |_| false, &finished_jobs, now());
        assert_eq!(json(&keep), json(&[done("a", 60)]));
    }

    #[test]
    fn a_finished_job_nobody_summarised_is_dropped_entirely() {
        let records = vec![job("a"), input("a")];
        let keep = compacted(records, |_| false, &BTreeMap::new(), now());
        assert!(keep.is_empty());
    }

    #[test]
    fn compaction_is_due_when_dead_records_dominate() {
        // (total, dead, min_dead) → due
        let cases = [
            (0, 0, 1, false),
            (10, 0, 1, false),
            (11, 11, 1, true),
            (11, 11, 256, false),
            (256, 256, 256, true),
            (300, 255, 256, false),
            // 100 live records: 200 dead ones are needed.
            (299, 199, 10, false),
            (300, 200, 10, true),
            (1000, 200, 256, false),
        ];
        for (total, dead, min_dead, due) in cases {
            assert_eq!(
                compaction_due(total, dead, min_dead),
                due,
                "total {total}, dead {dead}, min {min_dead}"
            );
        }
    }

    #[test]
    fn a_finished_job_is_remembered_for_the_lifetime_plus_skew_after_it_was_seen() {
        // A job valid for one hour, accepted at `now()`: its document expires long before
        // the 7 days + 5 minutes the station keeps its nonce.
        let seen = now();
        let mut doc: JobDocument = {
            use ukey_protocol::Message;
            let text = include_str!("../../../protocol/tests/vectors/job-new.json");
            let envelope = ukey_protocol::signed::JobEnvelope::decode(text.as_bytes()).unwrap();
            JobDocument::decode(envelope.job_bytes()).unwrap()
        };
        doc.issued_at = seen;
        doc.nonce = nonce("j");
        doc.expires_at = seen + time::Duration::hours(1);
        let f = FinishedJob::of(&doc, seen, time::Duration::days(7));
        let until = seen + time::Duration::days(7) + MAX_CLOCK_SKEW;
        assert_eq!(f.keep_until, until);
        // A document valid for longer than that is remembered until it expires.
        let mut long = doc.clone();
        long.expires_at = seen + time::Duration::days(30);
        assert_eq!(
            FinishedJob::of(&long, seen, time::Duration::days(7)).keep_until,
            long.expires_at
        );

        let finished: BTreeMap<JobId, FinishedJob> = [(id("j"), f)].into();
        let after_expiry = doc.expires_at + time::Duration::days(1);
        // Compaction keeps its summary, with the date, past the document's expiry...
        let keep = compacted(vec![job("j")], |_| false, &finished, after_expiry);
        let summary = json(&keep);
        assert_eq!(summary.len(), 1, "{summary:?}");
        let again = compacted(keep, |_| false, &finished, after_expiry);
        assert_eq!(json(&again), summary);
        // ... and so does the memory, nonce included.
        let mut remembered = finished.clone();
        let mut nonces: BTreeSet<Nonce> = [nonce("j")].into();
        forget_expired(
            &mut remembered,
            &mut nonces,
            std::iter::empty(),
            after_expiry,
        );
        assert!(remembered.contains_key(&id("j")) && nonces.contains(&nonce("j")));
        // Both forget it once the time is up.
        assert!(compacted(again, |_| false, &finished, until).is_empty());
        forget_expired(&mut remembered, &mut nonces, std::iter::empty(), until);
        assert!(remembered.is_empty() && nonces.is_empty());
    }
}
