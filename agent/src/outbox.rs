//! The durable outbox of step events: what the platform has not acknowledged yet.
//!
//! Invariant 4 (no step event lost) rests here. An event enters with [`Outbox::push`], which
//! returns only after the event is on disk (the record fsync'd; the folder is fsync'd when the
//! log file is created or replaced, the only times its entry changes), and leaves only through
//! [`Outbox::acknowledge`] — called when the platform's application-level acknowledgement of
//! its event id arrives. A broker's PUBACK never removes anything: brokers acknowledge
//! publishes that nobody receives.
//!
//! Storage is a [`Journal`] of `push` and `ack` records in `outbox.log` inside the outbox's
//! folder; the pending set is rebuilt from it on open. When acknowledged records make up most
//! of the log, it is compacted to the pending pushes alone. A crash at any point leaves either
//! the record or nothing (a torn tail is dropped), so an event pushed and not yet confirmed by
//! `push` returning may be absent after a crash, and an acknowledgement being written may be
//! lost (the event is then sent again; the platform de-duplicates by event id).
//!
//! Acknowledgements are therefore written without an fsync of their own: the agent's crash
//! keeps them (the kernel has them), a power loss may lose the last few, which only makes
//! their events be sent once more. The next fsync makes them durable too.
//!
//! An event that its owner can make again after a crash may be pushed with
//! [`Outbox::push_unsynced`]: written at once (an agent crash keeps it), made durable by the
//! next fsync. The agent's step events are such events: the journal re-makes the events of
//! a job's last journaled record on start-up, so an event only has to be durable before a
//! later record of its job is journaled — and only while it is still pending.
//! [`Outbox::make_durable`] does that fsync when, and only when, one of the named events is
//! pending and not yet durable; on a healthy link the platform has usually acknowledged it
//! by then, and no fsync is needed at all.
//!
//! This module does no networking and knows nothing about MQTT; [`crate::link`] publishes
//! what is pending. Event ids are opaque strings chosen by the caller and must be unique:
//! pushing an id that is still pending is a no-op, but an id acknowledged earlier is treated
//! as a new event.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::journal::{Journal, StoreError, sync_dir};

/// Name of the log file inside the outbox folder.
pub const OUTBOX_FILE: &str = "outbox.log";

/// Dead records (acknowledged pushes and the acks) tolerated beyond twice the pending events
/// before [`Outbox::wants_compaction`] says yes. A rewrite costs three fsyncs and a chunk of
/// zeros; a token leaves about twenty dead records, so the log is rewritten about every fifty
/// tokens and stays under a megabyte.
pub const COMPACTION_SLACK: usize = 1024;

/// One event waiting for the platform's acknowledgement.
#[derive(Clone, PartialEq, Eq)]
pub struct OutboxEntry {
    /// The event's id, by which the platform acknowledges and de-duplicates it.
    pub event_id: String,
    /// The MQTT topic it is published to.
    pub topic: String,
    /// The message as published (opaque bytes to this module).
    pub payload: Vec<u8>,
}

impl std::fmt::Debug for OutboxEntry {
    // The payload is left out: it may carry data that has no place in a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutboxEntry")
            .field("event_id", &self.event_id)
            .field("topic", &self.topic)
            .field("payload_len", &self.payload.len())
            .finish()
    }
}

/// What the outbox's log holds.
#[derive(Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
enum Record {
    Push {
        event_id: String,
        topic: String,
        #[serde(with = "hex_bytes")]
        payload: Vec<u8>,
        /// Milliseconds since the Unix epoch when the event was first pushed.
        queued_at_ms: u64,
    },
    Ack {
        event_ids: Vec<String>,
    },
}

mod hex_bytes {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&crate::journal::to_hex(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        hex::decode(text).map_err(serde::de::Error::custom)
    }
}

struct Pending {
    entry: OutboxEntry,
    queued_at: SystemTime,
}

/// The on-disk outbox (see the module docs). One process opens a folder's outbox at a time.
pub struct Outbox {
    dir: PathBuf,
    log: Journal<Record>,
    /// Pending events by push sequence (push order).
    pending: BTreeMap<u64, Pending>,
    /// Event id → push sequence.
    index: HashMap<String, u64>,
    next_seq: u64,
    /// Every push with a smaller sequence is durable.
    durable_below: u64,
    /// Something was written since the last fsync.
    dirty: bool,
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox")
            .field("dir", &self.dir)
            .field("depth", &self.pending.len())
            .finish()
    }
}

fn millis(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

impl Outbox {
    /// Opens the outbox in folder `dir` (created if missing) and rebuilds the pending set.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self, StoreError> {
        let dir = dir.as_ref().to_path_buf();
        if !dir.exists() {
            crate::private_files::create_dir(&dir).map_err(|source| StoreError::Io {
                action: "create folder",
                path: dir.clone(),
                source,
            })?;
            if let Some(parent) = dir.parent() {
                sync_dir(parent)?;
            }
        }
        let log = Journal::<Record>::open(dir.join(OUTBOX_FILE))?;
        let mut outbox = Outbox {
            dir,
            log,
            pending: BTreeMap::new(),
            index: HashMap::new(),
            next_seq: 0,
            durable_below: 0,
            dirty: true,
        };
        for record in outbox.log.replay()? {
            match record {
                Record::Push {
                    event_id,
                    topic,
                    payload,
                    queued_at_ms,
                } => {
                    let queued_at = UNIX_EPOCH + Duration::from_millis(queued_at_ms);
                    outbox.insert(
                        OutboxEntry {
                            event_id,
                            topic,
                            payload,
                        },
                        queued_at,
                    );
                }
                Record::Ack { event_ids } => {
                    for id in event_ids {
                        outbox.remove(&id);
                    }
                }
            }
        }
        // What a crashed run wrote without an fsync is in the kernel's cache: make it durable
        // before anything relies on it.
        outbox.sync()?;
        Ok(outbox)
    }

    fn insert(&mut self, entry: OutboxEntry, queued_at: SystemTime) -> bool {
        if self.index.contains_key(&entry.event_id) {
            return false;
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.index.insert(entry.event_id.clone(), seq);
        self.pending.insert(seq, Pending { entry, queued_at });
        true
    }

    fn remove(&mut self, event_id: &str) -> bool {
        match self.index.remove(event_id) {
            Some(seq) => self.pending.remove(&seq).is_some(),
            None => false,
        }
    }

    /// Adds an event; returns once it is on disk (with everything written before it).
    /// Returns `false` (and writes nothing) when an event with this id is already pending.
    pub fn push(&mut self, entry: OutboxEntry) -> Result<bool, StoreError> {
        let added = self.push_record(entry, true)?;
        if added {
            self.durable_below = self.next_seq;
            self.dirty = false;
        }
        Ok(added)
    }

    /// Adds an event its owner can make again after a crash (see the module docs): written
    /// at once, durable after the next fsync ([`Outbox::make_durable`], [`Outbox::sync`],
    /// [`Outbox::push`] or a compaction). Returns `false` when the id is already pending.
    pub fn push_unsynced(&mut self, entry: OutboxEntry) -> Result<bool, StoreError> {
        let added = self.push_record(entry, false)?;
        if added {
            self.dirty = true;
        }
        Ok(added)
    }

    fn push_record(&mut self, entry: OutboxEntry, sync: bool) -> Result<bool, StoreError> {
        if self.index.contains_key(&entry.event_id) {
            return Ok(false);
        }
        let queued_at = SystemTime::now();
        let record = Record::Push {
            event_id: entry.event_id.clone(),
            topic: entry.topic.clone(),
            payload: entry.payload.clone(),
            queued_at_ms: millis(queued_at),
        };
        if sync {
            self.log.append(&record)?;
        } else {
            self.log.append_unsynced(&record)?;
        }
        // Milliseconds are what survives a restart: keep the same precision in memory.
        let queued_at = UNIX_EPOCH + Duration::from_millis(millis(queued_at));
        Ok(self.insert(entry, queued_at))
    }

    /// Whether the event is pending and was pushed without an fsync that has not happened yet.
    pub fn awaits_fsync(&self, event_id: &str) -> bool {
        self.index
            .get(event_id)
            .is_some_and(|seq| *seq >= self.durable_below)
    }

    /// Makes the named events durable: one fsync when at least one of them is still pending
    /// and not yet on disk, none otherwise (acknowledged events need none). Returns whether
    /// it fsync'd.
    pub fn make_durable<S: AsRef<str>>(&mut self, event_ids: &[S]) -> Result<bool, StoreError> {
        if event_ids.iter().any(|id| self.awaits_fsync(id.as_ref())) {
            self.sync()?;
            return Ok(true);
        }
        Ok(false)
    }

    /// Makes everything written so far durable (one fsync, none when nothing was written).
    pub fn sync(&mut self) -> Result<(), StoreError> {
        if self.dirty {
            self.log.sync()?;
            self.dirty = false;
        }
        self.durable_below = self.next_seq;
        Ok(())
    }

    /// Removes the events the platform acknowledged; unknown and repeated ids are ignored.
    /// Returns how many pending events were removed. Written, not fsync'd (see the module
    /// docs): a power loss may undo it, which re-sends the events.
    pub fn acknowledge<I, S>(&mut self, event_ids: I) -> Result<usize, StoreError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut known: Vec<String> = Vec::new();
        for id in event_ids {
            let id = id.as_ref();
            if self.index.contains_key(id) && !known.iter().any(|k| k == id) {
                known.push(id.to_string());
            }
        }
        if known.is_empty() {
            return Ok(0);
        }
        self.log.append_unsynced(&Record::Ack {
            event_ids: known.clone(),
        })?;
        self.dirty = true;
        for id in &known {
            self.remove(id);
        }
        Ok(known.len())
    }

    /// Whether dead records dominate the log, so that [`Outbox::compact`] is worth its fsyncs.
    pub fn wants_compaction(&self) -> bool {
        self.log.record_count() > 2 * self.pending.len() + COMPACTION_SLACK
    }

    /// Rewrites the log to the pending pushes alone (atomically, fsync'd).
    pub fn compact(&mut self) -> Result<(), StoreError> {
        let records: Vec<Record> = self
            .pending
            .values()
            .map(|p| Record::Push {
                event_id: p.entry.event_id.clone(),
                topic: p.entry.topic.clone(),
                payload: p.entry.payload.clone(),
                queued_at_ms: millis(p.queued_at),
            })
            .collect();
        self.log.rewrite(&records)?;
        self.durable_below = self.next_seq;
        self.dirty = false;
        Ok(())
    }

    /// The pending events, oldest first (push order).
    pub fn pending(&self) -> Vec<OutboxEntry> {
        self.pending.values().map(|p| p.entry.clone()).collect()
    }

    /// Whether an event with this id is pending.
    pub fn contains(&self, event_id: &str) -> bool {
        self.index.contains_key(event_id)
    }

    /// Number of pending events (for status).
    pub fn depth(&self) -> usize {
        self.pending.len()
    }

    /// When the oldest pending event was first pushed (kept across restarts).
    pub fn oldest_queued_at(&self) -> Option<SystemTime> {
        self.pending.values().next().map(|p| p.queued_at)
    }

    /// How long the oldest pending event has waited (zero if the clock went backwards).
    pub fn oldest_age(&self) -> Option<Duration> {
        self.oldest_queued_at()
            .map(|t| SystemTime::now().duration_since(t).unwrap_or_default())
    }

    /// The outbox's folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::journal::content_of;

    fn entry(i: u32) -> OutboxEntry {
        OutboxEntry {
            event_id: format!("ev-{i}"),
            topic: format!("ukey/v1/stations/s1/jobs/j{i}/events"),
            payload: vec![0, 1, 2, 0xff, i as u8],
        }
    }

    fn ids(outbox: &Outbox) -> Vec<String> {
        outbox.pending().into_iter().map(|e| e.event_id).collect()
    }

    /// One operation on the outbox, for the property test below.
    #[derive(Debug, Clone)]
    enum Op {
        Push {
            unsynced: bool,
        },
        /// Acknowledge the pushed event at this fraction of those pushed so far.
        Ack {
            at: f64,
        },
    }

    fn op() -> impl proptest::strategy::Strategy<Value = Op> {
        use proptest::prelude::*;
        prop_oneof![
            3 => any::<bool>().prop_map(|unsynced| Op::Push { unsynced }),
            1 => (0.0..1.0f64).prop_map(|at| Op::Ack { at }),
        ]
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

        /// Whatever the damage to the log (a flipped bit, a cut, a zeroed page, a page written
        /// twice), reopening gives the pending events after some prefix of the operations —
        /// never an event that was not pushed, one already acknowledged come back out of
        /// order, or a panic — or a clear `Corrupt`/`Damaged` error.
        #[test]
        fn a_damaged_outbox_gives_the_state_after_a_prefix_or_an_error(
            ops in proptest::collection::vec(op(), 1..60),
            kind in 0..4u8,
            at in 0.0..1.0f64,
            bit in 0..8u8,
        ) {
            let dir = tempfile::tempdir().unwrap();
            let mut states: Vec<Vec<OutboxEntry>> = vec![Vec::new()];
            {
                let mut ob = Outbox::open(dir.path()).unwrap();
                let mut pushed = 0u32;
                for op in &ops {
                    match op {
                        Op::Push { unsynced: false } => { ob.push(entry(pushed)).unwrap(); pushed += 1; }
                        Op::Push { unsynced: true } => { ob.push_unsynced(entry(pushed)).unwrap(); pushed += 1; }
                        Op::Ack { at } if pushed > 0 => {
                            let i = ((f64::from(pushed) * at) as u32).min(pushed - 1);
                            ob.acknowledge([format!("ev-{i}")]).unwrap();
                        }
                        Op::Ack { .. } => {}
                    }
                    states.push(ob.pending());
                }
            }
            let path = dir.path().join(OUTBOX_FILE);
            let content_len = content_of(&path).len().max(1);
            let mut bytes = std::fs::read(&path).unwrap();
            let pick = ((content_len as f64 * at) as usize).min(content_len - 1);
            const PAGE: usize = 4096;
            let page = pick / PAGE * PAGE..((pick / PAGE + 1) * PAGE).min(bytes.len());
            match kind {
                0 => bytes[pick] ^= 1 << bit,
                1 => bytes.truncate(pick),
                2 => bytes[page].fill(0),
                _ => {
                    let first = bytes[..page.len()].to_vec();
                    bytes[page].copy_from_slice(&first);
                }
            }
            std::fs::write(&path, &bytes).unwrap();
            match Outbox::open(dir.path()) {
                Ok(ob) => {
                    let got = ob.pending();
                    proptest::prop_assert!(states.contains(&got), "not a state after a prefix: {got:?}");
                }
                Err(StoreError::Corrupt { .. } | StoreError::Damaged { .. }) => {}
                Err(other) => proptest::prop_assert!(false, "not a Corrupt error: {other:?}"),
            }
        }
    }

    #[test]
    fn pushed_events_survive_reopen_in_push_order() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut ob = Outbox::open(dir.path().join("outbox")).unwrap();
            for i in [3, 1, 2] {
                assert!(ob.push(entry(i)).unwrap());
            }
        }
        let ob = Outbox::open(dir.path().join("outbox")).unwrap();
        assert_eq!(ob.pending(), vec![entry(3), entry(1), entry(2)]);
        assert_eq!(ob.depth(), 3);
    }

    #[test]
    fn unsynced_pushes_survive_reopen_and_count_as_awaiting_an_fsync() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut ob = Outbox::open(dir.path()).unwrap();
            assert!(ob.push_unsynced(entry(0)).unwrap());
            assert!(
                !ob.push_unsynced(entry(0)).unwrap(),
                "pending id pushed twice"
            );
            assert!(ob.push_unsynced(entry(1)).unwrap());
            assert!(ob.awaits_fsync("ev-0") && ob.awaits_fsync("ev-1"));
            assert!(!ob.awaits_fsync("ev-9"), "an unknown id needs no fsync");
        }
        // An agent crash keeps what was written (the kernel has it).
        let ob = Outbox::open(dir.path()).unwrap();
        assert_eq!(ids(&ob), ["ev-0", "ev-1"]);
        assert!(!ob.awaits_fsync("ev-0"), "open makes what it read durable");
    }

    #[test]
    fn make_durable_fsyncs_only_for_pending_events_not_yet_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let mut ob = Outbox::open(dir.path()).unwrap();
        ob.push_unsynced(entry(0)).unwrap();
        ob.push_unsynced(entry(1)).unwrap();
        // Acknowledged: nothing to make durable.
        ob.acknowledge(["ev-0"]).unwrap();
        assert!(!ob.make_durable(&["ev-0"]).unwrap());
        // Pending and unsynced: one fsync, after which both are durable.
        assert!(ob.make_durable(&["ev-0", "ev-1"]).unwrap());
        assert!(!ob.make_durable(&["ev-1"]).unwrap());
        // A synced push makes every earlier write durable with it.
        ob.push_unsynced(entry(2)).unwrap();
        ob.push(entry(3)).unwrap();
        assert!(!ob.awaits_fsync("ev-2") && !ob.awaits_fsync("ev-3"));
        assert!(!ob.make_durable(&["ev-2", "ev-3"]).unwrap());
        // So do a plain sync and a compaction.
        ob.push_unsynced(entry(4)).unwrap();
        ob.sync().unwrap();
        assert!(!ob.awaits_fsync("ev-4"));
        ob.push_unsynced(entry(5)).unwrap();
        ob.compact().unwrap();
        assert!(!ob.awaits_fsync("ev-5"));
        assert_eq!(ids(&ob), ["ev-1", "ev-2", "ev-3", "ev-4", "ev-5"]);
    }

    #[test]
    fn pushing_a_pending_id_again_is_a_no_op() {
        let dir = tempfile::tempdir().unwrap();
        let mut ob = Outbox::open(dir.path()).unwrap();
        assert!(ob.push(entry(1)).unwrap());
        let mut changed = entry(1);
        changed.payload = b"other".to_vec();
        assert!(!ob.push(changed).unwrap());
        assert_eq!(ob.pending(), vec![entry(1)]);
        drop(ob);
        let ob = Outbox::open(dir.path()).unwrap();
        assert_eq!(ob.pending(), vec![entry(1)]);
    }

    #[test]
    fn acknowledge_survives_reopen_and_is_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let mut ob = Outbox::open(dir.path()).unwrap();
        for i in 0..4 {
            ob.push(entry(i)).unwrap();
        }
        assert_eq!(
            ob.acknowledge(["ev-1", "ev-3", "ev-3", "unknown"]).unwrap(),
            2
        );
        assert_eq!(ob.acknowledge(["ev-1"]).unwrap(), 0);
        assert_eq!(ob.acknowledge(Vec::<String>::new()).unwrap(), 0);
        assert_eq!(ids(&ob), ["ev-0", "ev-2"]);
        drop(ob);
        let ob = Outbox::open(dir.path()).unwrap();
        assert_eq!(ids(&ob), ["ev-0", "ev-2"]);
        assert!(ob.contains("ev-2") && !ob.contains("ev-1"));
    }

    #[test]
    fn a_torn_push_is_ignored_and_earlier_events_kept() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut ob = Outbox::open(dir.path()).unwrap();
            ob.push(entry(0)).unwrap();
            ob.push(entry(1)).unwrap();
        }
        let path = dir.path().join(OUTBOX_FILE);
        let full = content_of(&path);
        {
            let mut ob = Outbox::open(dir.path()).unwrap();
            ob.push(entry(2)).unwrap();
        }
        let with_third = content_of(&path);
        // Simulate a crash in the middle of writing the third record.
        let torn = &with_third[..full.len() + (with_third.len() - full.len()) / 2];
        std::fs::write(&path, torn).unwrap();
        let mut ob = Outbox::open(dir.path()).unwrap();
        assert_eq!(ids(&ob), ["ev-0", "ev-1"]);
        // The outbox keeps working after the torn record was cut off.
        ob.push(entry(4)).unwrap();
        drop(ob);
        let ob = Outbox::open(dir.path()).unwrap();
        assert_eq!(ids(&ob), ["ev-0", "ev-1", "ev-4"]);
    }

    #[test]
    fn a_torn_acknowledgement_leaves_the_events_pending() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(OUTBOX_FILE);
        {
            let mut ob = Outbox::open(dir.path()).unwrap();
            ob.push(entry(0)).unwrap();
        }
        let before = content_of(&path);
        {
            let mut ob = Outbox::open(dir.path()).unwrap();
            ob.acknowledge(["ev-0"]).unwrap();
        }
        let after = content_of(&path);
        std::fs::write(&path, &after[..after.len() - 3]).unwrap();
        let ob = Outbox::open(dir.path()).unwrap();
        assert_eq!(
            ids(&ob),
            ["ev-0"],
            "a lost ack means a re-send, never a lost event"
        );
        assert!(after.len() > before.len());
    }

    #[test]
    fn compaction_keeps_exactly_the_pending_events() {
        let dir = tempfile::tempdir().unwrap();
        let mut ob = Outbox::open(dir.path()).unwrap();
        let mut compactions = 0;
        for i in 0..3000 {
            ob.push_unsynced(entry(i)).unwrap();
            if i % 3 != 0 {
                ob.acknowledge([format!("ev-{i}")]).unwrap();
                if ob.wants_compaction() {
                    ob.compact().unwrap();
                    compactions += 1;
                    assert!(!ob.wants_compaction());
                }
            }
        }
        assert!(compactions > 0);
        let expected: Vec<String> = (0..3000).step_by(3).map(|i| format!("ev-{i}")).collect();
        assert_eq!(ids(&ob), expected);
        let len = ob.log.content_len();
        drop(ob);
        let ob = Outbox::open(dir.path()).unwrap();
        assert_eq!(ids(&ob), expected);
        // 1000 pending pushes plus at most a compaction threshold of dead records.
        let one_push = 120;
        assert!(
            len < (1000 + 2 * 1000 + COMPACTION_SLACK) as u64 * one_push,
            "log not compacted: {len} bytes"
        );
    }

    #[test]
    fn oldest_age_tracks_the_first_pending_event_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let mut ob = Outbox::open(dir.path()).unwrap();
        assert_eq!(ob.oldest_age(), None);
        ob.push(entry(0)).unwrap();
        let first = ob.oldest_queued_at().unwrap();
        ob.push(entry(1)).unwrap();
        assert_eq!(ob.oldest_queued_at(), Some(first));
        drop(ob);
        let mut ob = Outbox::open(dir.path()).unwrap();
        assert_eq!(ob.oldest_queued_at(), Some(first));
        ob.acknowledge(["ev-0"]).unwrap();
        assert!(ob.oldest_queued_at().unwrap() >= first);
        assert!(ob.oldest_age().is_some());
        ob.acknowledge(["ev-1"]).unwrap();
        assert_eq!(ob.oldest_age(), None);
        assert_eq!(ob.depth(), 0);
    }

    #[test]
    fn two_outboxes_on_one_folder_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let _a = Outbox::open(dir.path()).unwrap();
        assert!(matches!(
            Outbox::open(dir.path()),
            Err(StoreError::Locked { .. })
        ));
    }
}
