//! The agent's link to the platform: one MQTT connection (rumqttc, MQTT 3.1.1) that never
//! loses a step event and never acknowledges a message before the agent has kept it.
//!
//! What it does:
//! - **Session**: a stable client id with `clean_session = false`, so the broker queues
//!   messages for the station while it is away; subscriptions are made again on every
//!   connect anyway, because a broker may have lost the session (SIGKILL, no persistence).
//! - **Incoming**: messages on the configured filters arrive as [`Incoming`] on a bounded
//!   channel. Acknowledgements are manual: the broker gets its PUBACK only when the consumer
//!   calls [`Incoming::ack`] (after persisting the message), so a crash before that means a
//!   redelivery, not a loss. Expect duplicates.
//! - **Step events** go through the durable [`Outbox`]: [`LinkHandle::publish_event`] writes
//!   the event to disk, then publishes it (QoS 1). On every connect — whatever
//!   `session_present` says, since rumqttc silently drops its own retransmission queue when
//!   the broker lost the session — every pending event is published again, and while
//!   connected, events still unacknowledged after [`LinkConfig::resend_after`] are published
//!   again. Only [`LinkHandle::acknowledge`], called when the platform's acknowledgement
//!   arrives, removes an event. A PUBACK removes nothing. The platform de-duplicates by
//!   event id.
//! - **Other publishes** ([`LinkHandle::publish_retained`] for the inventory,
//!   [`LinkHandle::publish`] for CSR bundles) are QoS 1 and held in memory until the broker
//!   PUBACKs them; whatever is not PUBACKed when a connection ends is published again on the
//!   next connect. A newer retained publish to a topic replaces an older one not yet sent.
//!   They do not survive a restart of the agent: their owners publish them again (the
//!   inventory on start, CSR bundles from the job journal).
//! - **Presence**: the will is the death payload (retained, QoS 1), so the broker announces
//!   the station's death when its connection dies; a retained birth is published on every
//!   connect; a graceful stop publishes the death payload before disconnecting.
//! - **Addresses**: [`LinkConfig::host`]/[`LinkConfig::port`] and then
//!   [`LinkConfig::more_addresses`], tried in turn: after a failed attempt or a dead
//!   connection the link moves on to the next address (at once while the round has
//!   addresses left, with the backoff below once every address failed). Every address gets
//!   the same client id, persistent session, will and credentials: they are one broker
//!   service (a cluster behind several addresses, or a bridged pair).
//! - **Credentials**: an MQTT user name and a password read from a file when the link starts
//!   ([`Credentials`]); the password is kept only for the CONNECT packet and never logged. A
//!   broker that refuses them is reported as such in [`LinkState::Down`].
//! - **Reconnects** use exponential backoff with jitter, from [`LinkConfig::backoff_min`] up
//!   to [`LinkConfig::backoff_max`]; the connection's state is watchable ([`LinkState`]).
//! - **Sizes**: [`LinkConfig::max_packet_size`] (default 256 KiB) bounds packets both ways.
//!   Publishing something larger is refused up front ([`LinkError::PayloadTooLarge`]), since
//!   rumqttc would otherwise drop the connection on it and, with the outbox, again after
//!   every reconnect. An incoming packet above the limit makes rumqttc drop the connection
//!   before reading it; with a persistent session the broker would send it again on every
//!   reconnect, forever. The link breaks that loop: it reconnects once with the limit raised
//!   to that packet's size (up to [`LinkConfig::max_discard_size`], default 16 MiB), then
//!   acknowledges and drops every incoming message above [`LinkConfig::max_packet_size`]
//!   without delivering it (counted in [`LinkStats::oversized_discarded`], logged with its
//!   topic). A packet beyond `max_discard_size` leaves the link down, retrying at the backoff
//!   cap, with the reason in [`LinkState::Down`]. The broker should bound packets too
//!   (Mosquitto: `max_packet_size`), so that an oversized message is refused where it is
//!   published instead of reaching the station at all.
//!
//! The event loop is polled on its own task and never waits for the consumer or for a
//! caller. When the incoming channel is full, a message is dropped *unacknowledged* (counted
//! in [`LinkStats::incoming_dropped`]); the broker sends it again after the next reconnect.
//! With manual acks the broker never has more unacknowledged messages out to the station
//! than its in-flight window (Mosquitto: 20), so a channel larger than that
//! ([`LinkConfig::incoming_capacity`], default 256) fills only when the consumer has stopped.
//!
//! What it does not do: parse or validate messages (the payloads are opaque bytes; the
//! protocol crate and the lead's code do that), persist incoming messages (the consumer's
//! job), or decide which event ids the platform acknowledged.

mod connect;
mod driver;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use tokio::sync::{Notify, mpsc, watch};
/// The shutdown signal [`Link::start`] takes (re-exported for callers and tests).
pub use tokio_util::sync::CancellationToken;

pub use crate::config::BrokerAddress;
use crate::config::BrokerConfig;
use crate::journal::StoreError;
use crate::outbox::{Outbox, OutboxEntry};

/// Default bound for MQTT packets in both directions (256 KiB).
pub const DEFAULT_MAX_PACKET_SIZE: usize = 256 * 1024;

/// Default size up to which an oversized incoming packet is received once to be dropped.
pub const DEFAULT_MAX_DISCARD_SIZE: usize = 16 * 1024 * 1024;

/// TLS files for the broker connection (PEM).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// CA certificate(s) the broker's certificate must chain to.
    pub ca_file: PathBuf,
    /// The station's client certificate, for brokers that require client authentication.
    pub client_cert: Option<PathBuf>,
    /// The key of `client_cert` (PKCS#8, SEC1 or PKCS#1 PEM).
    pub client_key: Option<PathBuf>,
}

/// The station's MQTT user name and where its password is.
///
/// The password itself is not held here, so that a configuration can be printed: the link
/// reads the file when it starts (see `config::BrokerConfig::password_file` for its format).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    /// MQTT user name.
    pub username: String,
    /// File holding the password, if the broker wants one.
    pub password_file: Option<PathBuf>,
}

/// How to reach the broker and what to say there. Build with [`LinkConfig::new`] (or
/// [`LinkConfig::for_broker`]) and adjust.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkConfig {
    /// Broker host name or IP address (the name TLS checks the certificate against).
    pub host: String,
    /// Broker port.
    pub port: u16,
    /// Further addresses of the same broker service, tried in turn after `host:port`.
    pub more_addresses: Vec<BrokerAddress>,
    /// User name and password, or `None` for an anonymous connection.
    pub credentials: Option<Credentials>,
    /// Stable MQTT client id: the broker keeps the station's session under it.
    pub client_id: String,
    /// MQTT keep-alive; at least one second. Default 30 s.
    pub keep_alive: Duration,
    /// TLS, or `None` for plain TCP (tests, loopback).
    pub tls: Option<TlsFiles>,
    /// Topic filters subscribed (QoS 1) on every connect.
    pub subscriptions: Vec<String>,
    /// Topic filters subscribed at most once (QoS 0) on every connect: for messages whose
    /// loss repairs itself and that need no PUBACK from the station (the platform's event
    /// acknowledgements: an event not acknowledged is published again after a reconnect and
    /// after [`LinkConfig::resend_after`], and acknowledged again). Over one TCP connection
    /// nothing is lost; only what arrives while the station is away is not queued for it.
    pub subscriptions_at_most_once: Vec<String>,
    /// Topic of the retained birth and death (will) messages.
    pub presence_topic: String,
    /// Published retained on every connect.
    pub birth_payload: Vec<u8>,
    /// The will (retained, QoS 1), also published on a graceful stop.
    pub death_payload: Vec<u8>,
    /// Largest MQTT packet sent or accepted, in bytes. Default 256 KiB.
    pub max_packet_size: usize,
    /// Largest incoming packet the link receives once in order to drop it (see the module
    /// docs). Default 16 MiB.
    pub max_discard_size: usize,
    /// Capacity of the incoming channel. Default 256.
    pub incoming_capacity: usize,
    /// First reconnect delay. Default 100 ms.
    pub backoff_min: Duration,
    /// Reconnect delay cap. Default 5 s.
    pub backoff_max: Duration,
    /// While connected, publish an event again when the platform has not acknowledged it
    /// this long after it was last published. `None`: only on reconnect. Default 60 s.
    pub resend_after: Option<Duration>,
}

impl LinkConfig {
    /// A configuration with the defaults above, no TLS, no subscriptions, and empty
    /// presence payloads on topic `presence`.
    pub fn new(host: impl Into<String>, port: u16, client_id: impl Into<String>) -> Self {
        LinkConfig {
            host: host.into(),
            port,
            more_addresses: Vec::new(),
            credentials: None,
            client_id: client_id.into(),
            keep_alive: Duration::from_secs(30),
            tls: None,
            subscriptions: Vec::new(),
            subscriptions_at_most_once: Vec::new(),
            presence_topic: "presence".to_string(),
            birth_payload: Vec::new(),
            death_payload: Vec::new(),
            max_packet_size: DEFAULT_MAX_PACKET_SIZE,
            max_discard_size: DEFAULT_MAX_DISCARD_SIZE,
            incoming_capacity: 256,
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
            resend_after: Some(Duration::from_secs(60)),
        }
    }

    /// The configuration `[broker]` describes, for station `station_id`: its addresses,
    /// client id, keep-alive, TLS and credentials. Subscriptions, presence and timings keep
    /// [`LinkConfig::new`]'s defaults.
    pub fn for_broker(broker: &BrokerConfig, station_id: &str) -> LinkConfig {
        let mut addresses = broker.addresses().into_iter();
        let first = addresses.next().unwrap_or(BrokerAddress {
            host: broker.host.clone(),
            port: broker.port(),
        });
        let mut config = LinkConfig::new(first.host, first.port, broker.client_id(station_id));
        config.more_addresses = addresses.collect();
        config.keep_alive = Duration::from_secs(broker.keep_alive_secs);
        config.tls = broker.tls.as_ref().map(|t| TlsFiles {
            ca_file: t.ca_file.clone(),
            client_cert: t.client_cert.clone(),
            client_key: t.client_key.clone(),
        });
        config.credentials = broker.username.as_ref().map(|username| Credentials {
            username: username.clone(),
            password_file: broker.password_file.clone(),
        });
        config
    }

    /// Every address, `host:port` first.
    pub fn addresses(&self) -> Vec<BrokerAddress> {
        let first = BrokerAddress {
            host: self.host.clone(),
            port: self.port,
        };
        std::iter::once(first)
            .chain(self.more_addresses.iter().cloned())
            .collect()
    }

    fn validate(&self) -> Result<(), LinkError> {
        let bad = |field: &'static str, reason: String| Err(LinkError::Config { field, reason });
        if self.addresses().iter().any(|a| a.host.is_empty()) {
            return bad("host", "empty".into());
        }
        if self.addresses().iter().any(|a| a.port == 0) {
            return bad("port", "0 is not a port".into());
        }
        if self
            .credentials
            .as_ref()
            .is_some_and(|c| c.username.is_empty())
        {
            return bad("credentials", "empty user name".into());
        }
        if self.client_id.is_empty() {
            return bad(
                "client_id",
                "empty (a persistent session needs a stable id)".into(),
            );
        }
        if self.keep_alive < Duration::from_secs(1) {
            return bad("keep_alive", "must be at least one second".into());
        }
        for filter in self
            .subscriptions
            .iter()
            .chain(&self.subscriptions_at_most_once)
        {
            if filter.is_empty() || !rumqttc::valid_filter(filter) {
                return bad("subscriptions", format!("invalid topic filter {filter:?}"));
            }
        }
        if !valid_publish_topic(&self.presence_topic) {
            return bad(
                "presence_topic",
                format!("invalid topic {:?}", self.presence_topic),
            );
        }
        if self.max_packet_size < 1024 {
            return bad("max_packet_size", "below 1 KiB".into());
        }
        if self.max_discard_size < self.max_packet_size {
            return bad("max_discard_size", "smaller than max_packet_size".into());
        }
        let will_len = publish_packet_len(&self.presence_topic, self.death_payload.len())
            + self.client_id.len()
            + 16;
        if will_len > self.max_packet_size {
            return bad(
                "death_payload",
                "the CONNECT packet would exceed max_packet_size".into(),
            );
        }
        if publish_packet_len(&self.presence_topic, self.birth_payload.len()) > self.max_packet_size
        {
            return bad("birth_payload", "larger than max_packet_size".into());
        }
        if self.incoming_capacity == 0 {
            return bad("incoming_capacity", "must be at least 1".into());
        }
        if self.backoff_min.is_zero() || self.backoff_max < self.backoff_min {
            return bad(
                "backoff_min",
                "must be non-zero and not above backoff_max".into(),
            );
        }
        if let Some(tls) = &self.tls
            && tls.client_cert.is_some() != tls.client_key.is_some()
        {
            return bad("tls", "client_cert and client_key go together".into());
        }
        Ok(())
    }
}

/// Errors of the link.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LinkError {
    /// A configuration value is unusable.
    #[error("link configuration, {field}: {reason}")]
    Config {
        /// The [`LinkConfig`] field.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// A TLS file could not be read.
    #[error("cannot read TLS file {path}: {source}")]
    TlsFile {
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// The password file gives no password (its content is never part of the message).
    #[error("cannot read the broker password from {path}: {reason}")]
    PasswordFile {
        /// The file.
        path: PathBuf,
        /// Why (the OS's error, or that it is empty).
        reason: String,
    },
    /// The outbox failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A topic that cannot be published to (empty, or with wildcards).
    #[error("cannot publish to topic {topic:?}")]
    InvalidTopic {
        /// The topic.
        topic: String,
    },
    /// A message that would exceed [`LinkConfig::max_packet_size`].
    #[error("a message to {topic} would be a {size}-byte packet, above the limit of {max} bytes")]
    PayloadTooLarge {
        /// The topic.
        topic: String,
        /// The packet's size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// [`Link::start`] was called outside a tokio runtime.
    #[error("the link must be started inside a tokio runtime")]
    NoRuntime,
    /// The link has stopped (shutdown); nothing more is sent or acknowledged.
    #[error("the link has stopped")]
    Stopped,
    /// A blocking outbox task panicked or was cancelled.
    #[error("outbox task failed: {0}")]
    Task(String),
}

/// The connection's state, as reported on [`LinkHandle::state`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum LinkState {
    /// Connecting (TCP, TLS, MQTT CONNECT).
    Connecting,
    /// Connected; `session_present` is what the broker's CONNACK said.
    Connected {
        /// Whether the broker still had the station's session.
        session_present: bool,
        /// Whether the broker has acknowledged this connection's subscriptions (true at once
        /// when there are none). Before that, messages published to a station whose session
        /// the broker does not have are not routed to it.
        subscribed: bool,
    },
    /// Not connected; a new attempt follows after `retry_in`.
    Down {
        /// Why the last connection or attempt ended.
        last_error: String,
        /// Delay before the next attempt.
        retry_in: Duration,
    },
    /// Stopped by the shutdown token.
    Stopped,
}

/// Counters since the link started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkStats {
    /// Successful MQTT connects (CONNACK received).
    pub connects: u64,
    /// Incoming messages above `max_packet_size`, acknowledged and dropped.
    pub oversized_discarded: u64,
    /// Incoming messages dropped unacknowledged because the incoming channel was full or
    /// closed (the broker redelivers them after a reconnect).
    pub incoming_dropped: u64,
    /// Step-event publishes handed to the MQTT client (re-sends included).
    pub events_published: u64,
}

#[derive(Default)]
struct Counters {
    connects: AtomicU64,
    oversized_discarded: AtomicU64,
    incoming_dropped: AtomicU64,
    events_published: AtomicU64,
}

impl Counters {
    fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// A non-event publish waiting for its PUBACK.
struct Misc {
    topic: String,
    payload: Vec<u8>,
    retain: bool,
    /// The connection generation it was last handed to the client in.
    sent_in: Option<u64>,
}

/// Non-event publishes by sequence number (publish order).
#[derive(Default)]
struct MiscTable {
    next: u64,
    entries: std::collections::BTreeMap<u64, Misc>,
}

/// An acknowledgement requested by the consumer.
struct AckRequest {
    generation: u64,
    publish: rumqttc::Publish,
}

/// What handles hand to the driver without waiting for it.
#[derive(Default)]
struct Inbox {
    events: Vec<OutboxEntry>,
    acks: Vec<AckRequest>,
}

/// State shared by the driver task and the handles.
struct Shared {
    outbox: Mutex<Outbox>,
    misc: Mutex<MiscTable>,
    inbox: Mutex<Inbox>,
    /// Wakes the driver when the inbox or the misc table changed.
    notify: Notify,
    counters: Counters,
    state: watch::Sender<LinkState>,
    /// Cancelled when the driver task has ended.
    done: CancellationToken,
    max_packet_size: usize,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks leaves consistent data (every critical section
    // is a single collection update), so a poisoned lock is still usable.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Length of an MQTT 3.1.1 QoS 1 PUBLISH packet (fixed header included).
fn publish_packet_len(topic: &str, payload_len: usize) -> usize {
    let remaining = 2 + topic.len() + 2 + payload_len;
    let len_bytes = match remaining {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    };
    1 + len_bytes + remaining
}

fn valid_publish_topic(topic: &str) -> bool {
    !topic.is_empty() && rumqttc::valid_topic(topic)
}

/// Starts links; see the module docs.
#[derive(Debug)]
pub struct Link;

impl Link {
    /// Starts the link's task on the current tokio runtime and returns a handle plus the
    /// channel of incoming messages.
    ///
    /// The link runs until `shutdown` is cancelled (then it publishes the death payload,
    /// disconnects and ends; [`LinkHandle::stopped`] resolves). Errors: an unusable configuration or TLS file, or no
    /// tokio runtime. Connection failures are not errors here: the link keeps retrying and
    /// reports them in [`LinkState::Down`].
    pub fn start(
        config: LinkConfig,
        outbox: Outbox,
        shutdown: CancellationToken,
    ) -> Result<(LinkHandle, mpsc::Receiver<Incoming>), LinkError> {
        config.validate()?;
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| LinkError::NoRuntime)?;
        let (state, _) = watch::channel(LinkState::Connecting);
        let shared = Arc::new(Shared {
            outbox: Mutex::new(outbox),
            misc: Mutex::new(MiscTable::default()),
            inbox: Mutex::new(Inbox::default()),
            notify: Notify::new(),
            counters: Counters::default(),
            state,
            done: CancellationToken::new(),
            max_packet_size: config.max_packet_size,
        });
        let (incoming_tx, incoming_rx) = mpsc::channel(config.incoming_capacity);
        let driver = driver::Driver::new(config, Arc::clone(&shared), incoming_tx)?;
        let done = shared.done.clone();
        runtime.spawn(async move {
            driver.run(shutdown).await;
            done.cancel();
        });
        Ok((LinkHandle { shared }, incoming_rx))
    }
}

/// A cheap, cloneable handle to a running link.
#[derive(Clone)]
pub struct LinkHandle {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for LinkHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinkHandle")
            .field("state", &*self.shared.state.borrow())
            .finish()
    }
}

impl LinkHandle {
    fn check_size(&self, topic: &str, payload_len: usize) -> Result<(), LinkError> {
        if !valid_publish_topic(topic) {
            return Err(LinkError::InvalidTopic {
                topic: topic.to_string(),
            });
        }
        let size = publish_packet_len(topic, payload_len);
        if size > self.shared.max_packet_size {
            return Err(LinkError::PayloadTooLarge {
                topic: topic.to_string(),
                size,
                max: self.shared.max_packet_size,
            });
        }
        Ok(())
    }

    /// Stores a step event in the outbox (on disk before this returns), then publishes it
    /// QoS 1 as soon as the link is connected. Returns `Ok` once the event is durable, even
    /// when the link is down or stopped: it is then published after the next connect.
    /// An event id already pending is not stored twice.
    pub async fn publish_event(&self, entry: OutboxEntry) -> Result<(), LinkError> {
        self.check_size(&entry.topic, entry.payload.len())?;
        let shared = Arc::clone(&self.shared);
        let stored = entry.clone();
        tokio::task::spawn_blocking(move || lock(&shared.outbox).push(stored))
            .await
            .map_err(|e| LinkError::Task(e.to_string()))??;
        lock(&self.shared.inbox).events.push(entry);
        self.shared.notify.notify_one();
        Ok(())
    }

    /// Stores an event its owner can make again after a crash (the agent's journal re-makes
    /// a job's step events) in the outbox without an fsync of its own, then publishes it like
    /// [`LinkHandle::publish_event`]. The caller makes it durable with
    /// [`LinkHandle::make_durable`] before the record that could re-make it stops being the
    /// one that does (see [`crate::outbox`]). The write is a few hundred bytes to the page
    /// cache, so it runs on the caller's thread.
    pub fn publish_replayable_event(&self, entry: OutboxEntry) -> Result<(), LinkError> {
        self.check_size(&entry.topic, entry.payload.len())?;
        lock(&self.shared.outbox).push_unsynced(entry.clone())?;
        lock(&self.shared.inbox).events.push(entry);
        self.shared.notify.notify_one();
        Ok(())
    }

    /// Makes the named events durable if one of them is still pending and not yet on disk
    /// (one fsync); acknowledged events need nothing. Returns whether it fsync'd.
    pub fn make_durable<S: AsRef<str>>(&self, event_ids: &[S]) -> Result<bool, LinkError> {
        Ok(lock(&self.shared.outbox).make_durable(event_ids)?)
    }

    /// Makes everything the outbox holds durable (one fsync, none when nothing is unsynced).
    pub fn sync_outbox(&self) -> Result<(), LinkError> {
        Ok(lock(&self.shared.outbox).sync()?)
    }

    /// Removes events the platform acknowledged from the outbox; unknown ids are ignored.
    /// Returns how many were removed. The removal is written at once but not fsync'd (a power
    /// loss may undo it, which only sends those events again); once dead records dominate the
    /// outbox's log, it is compacted off the runtime's threads.
    pub async fn acknowledge(&self, event_ids: Vec<String>) -> Result<usize, LinkError> {
        let (removed, compact) = {
            let mut outbox = lock(&self.shared.outbox);
            let removed = outbox.acknowledge(event_ids)?;
            (removed, outbox.wants_compaction())
        };
        if compact {
            let shared = Arc::clone(&self.shared);
            tokio::task::spawn_blocking(move || {
                let mut outbox = lock(&shared.outbox);
                // Another acknowledgement may have compacted it meanwhile.
                if outbox.wants_compaction() {
                    outbox.compact()
                } else {
                    Ok(())
                }
            })
            .await
            .map_err(|e| LinkError::Task(e.to_string()))??;
        }
        Ok(removed)
    }

    fn publish_misc(&self, topic: String, payload: Vec<u8>, retain: bool) -> Result<(), LinkError> {
        self.check_size(&topic, payload.len())?;
        if self.shared.done.is_cancelled() {
            return Err(LinkError::Stopped);
        }
        {
            let mut misc = lock(&self.shared.misc);
            if retain {
                // Retained state: only the newest value per topic matters.
                misc.entries.retain(|_, m| !(m.retain && m.topic == topic));
            }
            let seq = misc.next;
            misc.next += 1;
            misc.entries.insert(
                seq,
                Misc {
                    topic,
                    payload,
                    retain,
                    sent_in: None,
                },
            );
        }
        self.shared.notify.notify_one();
        Ok(())
    }

    /// Publishes retained state (the inventory), QoS 1; re-sent after a reconnect until the
    /// broker PUBACKs it. A newer value for the same topic replaces an unsent older one.
    /// Kept in memory only (see the module docs).
    pub fn publish_retained(
        &self,
        topic: impl Into<String>,
        payload: Vec<u8>,
    ) -> Result<(), LinkError> {
        self.publish_misc(topic.into(), payload, true)
    }

    /// Publishes a message (a CSR bundle), QoS 1, not retained; re-sent after a reconnect
    /// until the broker PUBACKs it. Kept in memory only (see the module docs).
    pub fn publish(&self, topic: impl Into<String>, payload: Vec<u8>) -> Result<(), LinkError> {
        self.publish_misc(topic.into(), payload, false)
    }

    /// The connection's state; `changed().await` on it to follow transitions.
    pub fn state(&self) -> watch::Receiver<LinkState> {
        self.shared.state.subscribe()
    }

    /// Counters since the link started.
    pub fn stats(&self) -> LinkStats {
        let c = &self.shared.counters;
        LinkStats {
            connects: c.connects.load(Ordering::Relaxed),
            oversized_discarded: c.oversized_discarded.load(Ordering::Relaxed),
            incoming_dropped: c.incoming_dropped.load(Ordering::Relaxed),
            events_published: c.events_published.load(Ordering::Relaxed),
        }
    }

    /// Number of events waiting for the platform's acknowledgement.
    pub fn outbox_depth(&self) -> usize {
        lock(&self.shared.outbox).depth()
    }

    /// How long the oldest unacknowledged event has waited.
    pub fn outbox_oldest_age(&self) -> Option<Duration> {
        lock(&self.shared.outbox).oldest_age()
    }

    /// The ids of the events waiting for the platform's acknowledgement, oldest first.
    pub fn outbox_pending_ids(&self) -> Vec<String> {
        lock(&self.shared.outbox)
            .pending()
            .into_iter()
            .map(|e| e.event_id)
            .collect()
    }

    /// Resolves when the link's task has ended (after a shutdown). The outbox is closed once
    /// the task has ended and every handle is dropped.
    pub fn stopped(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let done = self.shared.done.clone();
        async move { done.cancelled().await }
    }
}

/// A message from the broker on one of the subscribed filters.
///
/// Acknowledge it with [`Incoming::ack`] once it is persisted; dropping it unacknowledged
/// means the broker sends it again after the next reconnect.
pub struct Incoming {
    topic: String,
    payload: Vec<u8>,
    duplicate: bool,
    retained: bool,
    generation: u64,
    publish: rumqttc::Publish,
    shared: Weak<Shared>,
}

impl std::fmt::Debug for Incoming {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Incoming")
            .field("topic", &self.topic)
            .field("payload_len", &self.payload.len())
            .field("duplicate", &self.duplicate)
            .field("retained", &self.retained)
            .finish()
    }
}

impl Incoming {
    /// The topic it was published to.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The message.
    pub fn payload(&self) -> &[u8] {
        &self.payload
    }

    /// The broker's DUP flag: it may have been delivered before.
    pub fn is_duplicate(&self) -> bool {
        self.duplicate
    }

    /// Whether it is a retained message (sent because of a new subscription).
    pub fn is_retained(&self) -> bool {
        self.retained
    }

    /// Tells the broker the message is kept (sends its PUBACK). Call only after persisting it.
    ///
    /// An acknowledgement for a message of an earlier connection is dropped: a packet id is
    /// only meaningful on the connection it came from, and the broker redelivers the message
    /// on the new one. Fails only when the link has stopped.
    pub async fn ack(self) -> Result<(), LinkError> {
        let shared = self.shared.upgrade().ok_or(LinkError::Stopped)?;
        if shared.done.is_cancelled() {
            return Err(LinkError::Stopped);
        }
        lock(&shared.inbox).acks.push(AckRequest {
            generation: self.generation,
            publish: self.publish,
        });
        shared.notify.notify_one();
        Ok(())
    }
}

#[cfg(test)]
mod tests;
