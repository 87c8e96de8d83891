//! What the simulated platform received and did, kept in memory for tests and the demo to
//! assert on: per job the dispatched document, the ordered unique step events, how many
//! duplicates arrived, CSR bundles and the answers; per token the unsealed PINs; every
//! presence and inventory message.
//!
//! Plain data with read accessors; the platform's client updates it. PINs are
//! [`SecretString`]s and no `Debug` here prints them.

use std::collections::BTreeMap;

use secrecy::SecretString;
use ukey_protocol::{
    CertFingerprint, CertOutcome, CertResponse, CsrBundle, EventId, ExecutionState, Inventory,
    IssuedCertificate, JobDocument, JobEnvelope, JobId, Presence, StationId, Step, StepData,
    StepEvent, TokenSerial,
};

use super::ledger::{JobLedger, Ledger};
use super::misbehave::Misbehaviour;

/// Everything about one job.
#[derive(Debug, Clone)]
pub struct JobRecord {
    pub(crate) job_id: JobId,
    pub(crate) station_id: Option<StationId>,
    pub(crate) document: Option<JobDocument>,
    pub(crate) envelopes_sent: Vec<JobEnvelope>,
    pub(crate) events: Vec<StepEvent>,
    pub(crate) duplicate_events: usize,
    pub(crate) duplicates_by_id: BTreeMap<EventId, usize>,
    pub(crate) problems: Vec<String>,
    pub(crate) csr_bundles: Vec<CsrBundle>,
    pub(crate) cert_responses: Vec<CertResponse>,
    pub(crate) misbehaviours: Vec<Misbehaviour>,
    /// The honest signed envelope as published: owed until the job's first event.
    pub(crate) job_payload: Option<Vec<u8>>,
    /// The last honest signed certificate response as published: owed until the station
    /// is past `request-certificates`.
    pub(crate) cert_payload: Option<Vec<u8>>,
    /// The honest signed cancel as published: owed until the job ends.
    pub(crate) cancel_payload: Option<Vec<u8>>,
    pub(crate) redelivered: usize,
    /// The `seq` of each unique event, in the order the events arrived.
    pub(crate) arrivals: Vec<u64>,
}

impl JobRecord {
    pub(crate) fn new(job_id: JobId) -> JobRecord {
        JobRecord {
            job_id,
            station_id: None,
            document: None,
            envelopes_sent: Vec::new(),
            events: Vec::new(),
            duplicate_events: 0,
            duplicates_by_id: BTreeMap::new(),
            problems: Vec::new(),
            csr_bundles: Vec::new(),
            cert_responses: Vec::new(),
            misbehaviours: Vec::new(),
            job_payload: None,
            cert_payload: None,
            cancel_payload: None,
            redelivered: 0,
            arrivals: Vec::new(),
        }
    }

    /// The job id.
    pub fn job_id(&self) -> &JobId {
        &self.job_id
    }

    /// The station the job was dispatched to or its events came from.
    pub fn station_id(&self) -> Option<&StationId> {
        self.station_id.as_ref()
    }

    /// The job as dispatched (absent for a job this platform never made, e.g. events of a
    /// job published by someone else).
    pub fn document(&self) -> Option<&JobDocument> {
        self.document.as_ref()
    }

    /// Every envelope published for it (two for a duplicated job; a forged one too).
    pub fn envelopes_sent(&self) -> &[JobEnvelope] {
        &self.envelopes_sent
    }

    /// The unique step events, ordered by `seq`.
    pub fn events(&self) -> &[StepEvent] {
        &self.events
    }

    /// The `seq` of each unique event, in the order the events arrived (a re-sent event
    /// may overtake an earlier one).
    pub fn arrivals(&self) -> &[u64] {
        &self.arrivals
    }

    /// What the platform's ledger says about this job ([`JobLedger`]): events lost,
    /// duplicated, out of order, forbidden transitions.
    pub fn ledger(&self) -> JobLedger {
        JobLedger::of(self)
    }

    /// How many events arrived again with an event id already recorded.
    pub fn duplicate_events(&self) -> usize {
        self.duplicate_events
    }

    /// How many times the event `event_id` arrived again after its first arrival.
    pub fn duplicates_of(&self, event_id: &EventId) -> usize {
        self.duplicates_by_id.get(event_id).copied().unwrap_or(0)
    }

    /// Protocol problems seen in this job's messages (e.g. a state change the state machine
    /// forbids, a gap in `seq`, a job id that differs from the topic's, a PIN that did not
    /// unseal). Empty for a well-behaved station.
    pub fn problems(&self) -> &[String] {
        &self.problems
    }

    /// Every CSR bundle received, duplicates included, in arrival order.
    pub fn csr_bundles(&self) -> &[CsrBundle] {
        &self.csr_bundles
    }

    /// Every certificate response published, in order.
    pub fn cert_responses(&self) -> &[CertResponse] {
        &self.cert_responses
    }

    /// The misbehaviours applied to this job, in order (e.g. to show in the demo what the
    /// station had to catch).
    pub fn misbehaviours(&self) -> &[Misbehaviour] {
        &self.misbehaviours
    }

    /// How many times the platform published one of this job's messages again because the
    /// station had not shown it arrived (docs/PROTOCOL.md, "Redelivery").
    pub fn redelivered(&self) -> usize {
        self.redelivered
    }

    /// The certificates of the last issued response.
    pub fn issued(&self) -> Option<&[IssuedCertificate]> {
        self.cert_responses
            .iter()
            .rev()
            .find_map(|r| match &r.outcome {
                CertOutcome::Issued(b) => Some(b.certificates.as_slice()),
                CertOutcome::Rejected(_) => None,
            })
    }

    /// The last event (highest `seq`).
    pub fn last_event(&self) -> Option<&StepEvent> {
        self.events.last()
    }

    /// The job's execution state after its last event.
    pub fn state(&self) -> Option<ExecutionState> {
        self.last_event().map(|e| e.state)
    }

    /// Whether an event of `step` arrived.
    pub fn has_step(&self, step: Step) -> bool {
        self.events.iter().any(|e| e.step == step)
    }

    /// Whether an event in state `state` arrived.
    pub fn reached(&self, state: ExecutionState) -> bool {
        self.events.iter().any(|e| e.state == state)
    }

    /// The token serial the station reported for the job.
    pub fn token_serial(&self) -> Option<&TokenSerial> {
        self.events
            .iter()
            .rev()
            .find_map(|e| e.token_serial.as_ref())
    }

    /// The bind report's certificate fingerprints, once bound.
    pub fn bound_certificates(&self) -> Option<&[CertFingerprint]> {
        self.events.iter().find_map(|e| match &e.data {
            Some(StepData::Bind(report)) => Some(report.certificates.as_slice()),
            _ => None,
        })
    }
}

/// What the platform knows about one token, from bind reports and PIN resets.
#[derive(Clone)]
pub struct TokenRecord {
    pub(crate) serial: TokenSerial,
    pub(crate) job_id: JobId,
    pub(crate) so_pin: Option<SecretString>,
    pub(crate) user_pin: Option<SecretString>,
    pub(crate) certificates: Vec<CertFingerprint>,
}

impl std::fmt::Debug for TokenRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenRecord")
            .field("serial", &self.serial)
            .field("job_id", &self.job_id)
            .field("so_pin", &self.so_pin.as_ref().map(|_| "<secret>"))
            .field("user_pin", &self.user_pin.as_ref().map(|_| "<secret>"))
            .field("certificates", &self.certificates)
            .finish()
    }
}

impl TokenRecord {
    /// The token.
    pub fn serial(&self) -> &TokenSerial {
        &self.serial
    }

    /// The job that last bound it or reset its PIN.
    pub fn job_id(&self) -> &JobId {
        &self.job_id
    }

    /// Its SO PIN, as unsealed from the last bind report that carried one.
    pub fn so_pin(&self) -> Option<&SecretString> {
        self.so_pin.as_ref()
    }

    /// Its user PIN, as unsealed from the last bind report or PIN reset.
    pub fn user_pin(&self) -> Option<&SecretString> {
        self.user_pin.as_ref()
    }

    /// The certificates bound to it.
    pub fn certificates(&self) -> &[CertFingerprint] {
        &self.certificates
    }
}

/// Everything the platform recorded.
#[derive(Debug, Clone, Default)]
pub struct Records {
    pub(crate) jobs: BTreeMap<JobId, JobRecord>,
    pub(crate) dispatch_order: Vec<JobId>,
    pub(crate) tokens: BTreeMap<TokenSerial, TokenRecord>,
    pub(crate) presence: Vec<Presence>,
    pub(crate) inventory: Vec<Inventory>,
    pub(crate) unreadable: Vec<String>,
    pub(crate) acks_sent: usize,
    /// Receipts whose signature verified, in arrival order (each once).
    pub(crate) receipts: Vec<ukey_protocol::Receipt>,
    /// Receipts refused, with the reason.
    pub(crate) refused_receipts: Vec<String>,
    pub(crate) connections: u64,
    pub(crate) subscriptions: u64,
    pub(crate) redelivery_rounds: u64,
}

impl Records {
    /// The ledger of every job ([`Ledger`]).
    pub fn ledger(&self) -> Ledger {
        Ledger::of(self)
    }

    /// One job's record.
    pub fn job(&self, job_id: &JobId) -> Option<&JobRecord> {
        self.jobs.get(job_id)
    }

    /// Every job's record, by job id.
    pub fn jobs(&self) -> impl Iterator<Item = &JobRecord> {
        self.jobs.values()
    }

    /// The ids of the jobs this platform dispatched, in dispatch order.
    pub fn dispatched(&self) -> &[JobId] {
        &self.dispatch_order
    }

    /// The production receipts received whose station signature verified, in arrival
    /// order, each once.
    pub fn receipts(&self) -> &[ukey_protocol::Receipt] {
        &self.receipts
    }

    /// Receipts refused (bad signature, unknown key, malformed), with the reason.
    pub fn refused_receipts(&self) -> &[String] {
        &self.refused_receipts
    }

    /// One token's record.
    pub fn token(&self, serial: &TokenSerial) -> Option<&TokenRecord> {
        self.tokens.get(serial)
    }

    /// Every token's record.
    pub fn tokens(&self) -> impl Iterator<Item = &TokenRecord> {
        self.tokens.values()
    }

    /// Every presence message, in arrival order.
    pub fn presence(&self) -> &[Presence] {
        &self.presence
    }

    /// The presence that counts for `station` (`Presence::supersedes`).
    pub fn current_presence(&self, station: &StationId) -> Option<&Presence> {
        self.presence
            .iter()
            .filter(|p| &p.station_id == station)
            .fold(None, |best: Option<&Presence>, p| match best {
                Some(b) if !p.supersedes(b) => Some(b),
                _ => Some(p),
            })
    }

    /// Every inventory message, in arrival order.
    pub fn inventory(&self) -> &[Inventory] {
        &self.inventory
    }

    /// The newest inventory of `station` (highest `seq`).
    pub fn current_inventory(&self, station: &StationId) -> Option<&Inventory> {
        self.inventory
            .iter()
            .filter(|i| &i.station_id == station)
            .max_by_key(|i| i.seq)
    }

    /// Messages that could not be decoded or did not fit their topic, described (no payload
    /// content).
    pub fn unreadable(&self) -> &[String] {
        &self.unreadable
    }

    /// How many ack messages the platform published.
    pub fn acks_sent(&self) -> usize {
        self.acks_sent
    }

    /// How many times the platform connected to the broker (CONNACKs seen).
    pub fn connections(&self) -> u64 {
        self.connections
    }

    /// How many times the broker confirmed the platform's subscriptions (one per connection
    /// when all is well). Wait for it to grow after a broker restart before expecting the
    /// platform to hear stations again.
    pub fn subscriptions(&self) -> u64 {
        self.subscriptions
    }

    /// How many times the platform went through what it owes the stations (on a presence
    /// birth, on its timer, after it lost its own session), whether or not anything was owed.
    pub fn redelivery_rounds(&self) -> u64 {
        self.redelivery_rounds
    }

    pub(crate) fn job_mut(&mut self, job_id: &JobId) -> &mut JobRecord {
        self.jobs
            .entry(job_id.clone())
            .or_insert_with(|| JobRecord::new(job_id.clone()))
    }
}
