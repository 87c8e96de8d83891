//! The link's task: the only owner of the rumqttc event loop and the only sender of its
//! requests.
//!
//! It polls the event loop continuously and talks to the client with `try_*` calls only, so
//! it never waits on rumqttc's request channel (which only it drains). Handles reach it
//! through shared tables and a [`Notify`](tokio::sync::Notify); it hands incoming messages to
//! the consumer with `try_send`.
//!
//! Why one sender matters: rumqttc's `publish` returns no packet id. Because this task alone
//! sends publishes, the `Outgoing::Publish(pkid)` events come back in the order it sent the
//! requests, which maps each packet id to what was published, and a PUBACK to the message it
//! acknowledges. After a connection error the task empties rumqttc's retransmission queue
//! and buffered events: it re-publishes from its own tables on the next connect instead, so
//! nothing is sent that the mapping does not know about.
//!
//! While not connected, the event loop's future is the only one polled besides the timers and
//! the shutdown token, so a connection attempt is never cancelled half-way by new work.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use rumqttc::{
    AsyncClient, ConnectionError, Event, EventLoop, LastWill, Outgoing, Packet, Publish, QoS,
    StateError, Transport,
};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::connect::{REQUEST_CAPACITY, Recipe, describe_error, login, tls_configuration};
use super::{
    AckRequest, BrokerAddress, Counters, Incoming, LinkConfig, LinkError, LinkState, Shared, lock,
};
use crate::outbox::OutboxEntry;

/// How long a graceful stop waits for the death message and DISCONNECT to go out.
const STOP_TIMEOUT: Duration = Duration::from_secs(2);

/// Something to send on the current connection, in order.
enum Send {
    Subscribe,
    Birth,
    Event(OutboxEntry),
}

/// What a packet id stands for, to interpret its PUBACK.
enum Tag {
    Presence,
    Event,
    Misc(u64),
}

/// Exponential backoff with jitter.
struct Backoff {
    min: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    fn next_delay(&mut self) -> Duration {
        let exp = self.min.saturating_mul(1u32 << self.attempt.min(16));
        self.attempt = self.attempt.saturating_add(1);
        let cap = exp.min(self.max);
        // "Equal jitter": half fixed, half random, so retries neither bunch up nor vanish.
        let half = cap / 2;
        half + half.mul_f64(rand::random_range(0.0..=1.0))
    }

    fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// What woke the loop.
enum Wake {
    Shutdown,
    Work,
    RetryNow,
    ResendCheck,
    Polled(Result<Event, ConnectionError>),
}

pub(super) struct Driver {
    shared: Arc<Shared>,
    client: AsyncClient,
    eventloop: EventLoop,
    incoming: mpsc::Sender<Incoming>,
    /// Filters and the QoS each is subscribed at.
    subscriptions: Vec<(String, QoS)>,
    presence_topic: String,
    birth: Vec<u8>,
    death: Vec<u8>,
    max_packet_size: usize,
    max_discard_size: usize,
    resend_after: Option<Duration>,
    backoff: Backoff,
    /// Every broker address, and the one the current or next attempt uses.
    addresses: Vec<BrokerAddress>,
    current: usize,
    /// Attempts that failed (or connections that died) since the last CONNACK: once every
    /// address has had its turn, the backoff applies.
    failed_in_round: usize,
    recipe: Recipe,
    /// Connection generation: incremented on every CONNACK.
    generation: u64,
    connected: bool,
    retry_at: Option<Instant>,
    next_resend_check: Instant,
    /// What to send next on this connection.
    queue: VecDeque<Send>,
    /// Event ids in `queue`.
    queued_events: HashSet<String>,
    /// Tags of publishes handed to the client, awaiting their `Outgoing::Publish` event.
    sent: VecDeque<Tag>,
    /// Packet id → tag, awaiting the PUBACK.
    inflight: HashMap<u16, Tag>,
    /// When each event was last handed to the client.
    last_sent: HashMap<String, Instant>,
    /// Acknowledgements waiting for room in the request channel.
    acks: VecDeque<Publish>,
}

/// The size rumqttc compares with its incoming limit: the packet's remaining length.
fn remaining_len(publish: &Publish) -> usize {
    let pkid = if publish.qos == QoS::AtMostOnce { 0 } else { 2 };
    2 + publish.topic.len() + pkid + publish.payload.len()
}

/// The size of an incoming packet that rumqttc refused, if that is what ended the connection.
fn refused_packet_len(error: &ConnectionError) -> Option<usize> {
    match error {
        ConnectionError::MqttState(StateError::Deserialization(
            rumqttc::Error::PayloadSizeLimitExceeded(len),
        )) => Some(*len),
        _ => None,
    }
}

impl Driver {
    pub(super) fn new(
        config: LinkConfig,
        shared: Arc<Shared>,
        incoming: mpsc::Sender<Incoming>,
    ) -> Result<Self, LinkError> {
        let recipe = Recipe {
            client_id: config.client_id.clone(),
            keep_alive: config.keep_alive,
            max_packet_size: config.max_packet_size,
            will: LastWill::new(
                config.presence_topic.clone(),
                config.death_payload.clone(),
                QoS::AtLeastOnce,
                true,
            ),
            transport: match &config.tls {
                Some(tls) => Some(Transport::tls_with_config(tls_configuration(tls)?)),
                None => None,
            },
            login: config.credentials.as_ref().map(login).transpose()?,
        };
        let addresses = config.addresses();
        let (client, mut eventloop) =
            AsyncClient::new(recipe.options(&addresses[0]), REQUEST_CAPACITY);
        // Small request/answer packets (events, acks) must not wait for Nagle's algorithm to
        // meet the peer's delayed ACK: that alone adds ~40 ms per round trip.
        let mut network = eventloop.network_options();
        network.set_tcp_nodelay(true);
        eventloop.set_network_options(network);
        Ok(Driver {
            shared,
            client,
            eventloop,
            incoming,
            subscriptions: config
                .subscriptions
                .into_iter()
                .map(|f| (f, QoS::AtLeastOnce))
                .chain(
                    config
                        .subscriptions_at_most_once
                        .into_iter()
                        .map(|f| (f, QoS::AtMostOnce)),
                )
                .collect(),
            presence_topic: config.presence_topic,
            birth: config.birth_payload,
            death: config.death_payload,
            max_packet_size: config.max_packet_size,
            max_discard_size: config.max_discard_size,
            resend_after: config.resend_after,
            backoff: Backoff {
                min: config.backoff_min,
                max: config.backoff_max,
                attempt: 0,
            },
            addresses,
            current: 0,
            failed_in_round: 0,
            recipe,
            generation: 0,
            connected: false,
            retry_at: None,
            next_resend_check: Instant::now(),
            queue: VecDeque::new(),
            queued_events: HashSet::new(),
            sent: VecDeque::new(),
            inflight: HashMap::new(),
            last_sent: HashMap::new(),
            acks: VecDeque::new(),
        })
    }

    fn set_state(&self, state: LinkState) {
        self.shared.state.send_replace(state);
    }

    pub(super) async fn run(mut self, shutdown: CancellationToken) {
        self.set_state(LinkState::Connecting);
        loop {
            self.pump();
            let connected = self.connected;
            let retry_at = self.retry_at;
            let resend_at = self.next_resend_check;
            let resend = self.resend_after.is_some();
            let wake = tokio::select! {
                biased;
                () = shutdown.cancelled() => Wake::Shutdown,
                () = self.shared.notify.notified(), if connected => Wake::Work,
                () = sleep_until_opt(retry_at), if retry_at.is_some() => Wake::RetryNow,
                () = tokio::time::sleep_until(resend_at), if connected && resend => Wake::ResendCheck,
                polled = self.eventloop.poll(), if retry_at.is_none() => Wake::Polled(polled),
            };
            match wake {
                Wake::Shutdown => break,
                Wake::Work => {}
                Wake::RetryNow => {
                    self.retry_at = None;
                    self.set_state(LinkState::Connecting);
                }
                Wake::ResendCheck => self.resend_due(),
                Wake::Polled(Ok(event)) => self.on_event(event),
                Wake::Polled(Err(error)) => self.on_error(error),
            }
        }
        self.stop().await;
    }

    /// Hands queued work to the client until its request channel is full.
    fn pump(&mut self) {
        self.take_inbox();
        if !self.connected {
            return;
        }
        while let Some(publish) = self.acks.front() {
            if self.client.try_ack(publish).is_err() {
                return;
            }
            self.acks.pop_front();
        }
        while let Some(item) = self.queue.front() {
            let handed = match item {
                Send::Subscribe => {
                    if self.subscriptions.is_empty() {
                        Ok(())
                    } else {
                        let filters = self
                            .subscriptions
                            .iter()
                            .map(|(f, qos)| rumqttc::SubscribeFilter::new(f.clone(), *qos));
                        self.client.try_subscribe_many(filters)
                    }
                }
                Send::Birth => self
                    .client
                    .try_publish(
                        &self.presence_topic,
                        QoS::AtLeastOnce,
                        true,
                        self.birth.clone(),
                    )
                    .map(|()| self.sent.push_back(Tag::Presence)),
                Send::Event(entry) => self
                    .client
                    .try_publish(&entry.topic, QoS::AtLeastOnce, false, entry.payload.clone())
                    .map(|()| {
                        self.sent.push_back(Tag::Event);
                        self.last_sent
                            .insert(entry.event_id.clone(), Instant::now());
                        Counters::bump(&self.shared.counters.events_published);
                    }),
            };
            if handed.is_err() {
                // Topics were checked when the work was accepted: the channel is full.
                return;
            }
            if let Some(Send::Event(entry)) = self.queue.pop_front() {
                self.queued_events.remove(&entry.event_id);
            }
        }
        let mut misc = lock(&self.shared.misc);
        for (seq, m) in misc.entries.iter_mut() {
            if m.sent_in == Some(self.generation) {
                continue;
            }
            if self
                .client
                .try_publish(&m.topic, QoS::AtLeastOnce, m.retain, m.payload.clone())
                .is_err()
            {
                return;
            }
            m.sent_in = Some(self.generation);
            self.sent.push_back(Tag::Misc(*seq));
        }
    }

    /// Moves new events and acknowledgements from the handles into the driver's queues.
    fn take_inbox(&mut self) {
        let (events, acks) = {
            let mut inbox = lock(&self.shared.inbox);
            (
                std::mem::take(&mut inbox.events),
                std::mem::take(&mut inbox.acks),
            )
        };
        for AckRequest {
            generation,
            publish,
        } in acks
        {
            // A packet id means nothing on another connection; the broker redelivers.
            if self.connected && generation == self.generation {
                self.acks.push_back(publish);
            }
        }
        if self.connected {
            for entry in events {
                self.enqueue_event(entry);
            }
        }
        // While not connected, new events are dropped here: they are in the outbox, and every
        // connect queues the whole outbox.
    }

    fn enqueue_event(&mut self, entry: OutboxEntry) {
        if self.queued_events.insert(entry.event_id.clone()) {
            self.queue.push_back(Send::Event(entry));
        }
    }

    fn on_event(&mut self, event: Event) {
        match event {
            Event::Incoming(Packet::ConnAck(connack)) => self.on_connected(connack.session_present),
            Event::Incoming(Packet::Publish(publish)) => self.on_publish(publish),
            Event::Incoming(Packet::PubAck(puback)) => self.on_puback(puback.pkid),
            Event::Incoming(Packet::SubAck(suback)) => {
                if suback
                    .return_codes
                    .iter()
                    .any(|c| matches!(c, rumqttc::SubscribeReasonCode::Failure))
                {
                    // Typically an ACL: nothing will arrive on that filter. Reported, not fatal.
                    tracing::error!(
                        filters = ?self.subscriptions,
                        "the broker refused a subscription"
                    );
                    return;
                }
                self.shared.state.send_if_modified(|state| match state {
                    LinkState::Connected { subscribed, .. } if !*subscribed => {
                        *subscribed = true;
                        true
                    }
                    _ => false,
                });
            }
            Event::Outgoing(Outgoing::Publish(pkid)) => {
                if let Some(tag) = self.sent.pop_front()
                    && pkid != 0
                {
                    self.inflight.insert(pkid, tag);
                }
            }
            _ => {}
        }
    }

    fn on_connected(&mut self, session_present: bool) {
        self.generation += 1;
        self.connected = true;
        self.backoff.reset();
        self.failed_in_round = 0;
        Counters::bump(&self.shared.counters.connects);
        // A limit raised to receive one oversized packet applies to this connection only.
        self.eventloop
            .mqtt_options
            .set_max_packet_size(self.max_packet_size, self.max_packet_size);
        self.forget_connection();
        // Everything goes out again: rumqttc dropped its own retransmission queue if the broker
        // lost the session, and even a kept session proves nothing about delivery.
        lock(&self.shared.inbox).events.clear();
        self.queue.push_back(Send::Subscribe);
        self.queue.push_back(Send::Birth);
        let pending = lock(&self.shared.outbox).pending();
        self.last_sent
            .retain(|id, _| pending.iter().any(|e| &e.event_id == id));
        for entry in pending {
            self.enqueue_event(entry);
        }
        if let Some(after) = self.resend_after {
            self.next_resend_check = Instant::now() + after;
        }
        tracing::info!(
            broker = %self.addresses[self.current],
            session_present,
            generation = self.generation,
            "connected to the broker"
        );
        self.set_state(LinkState::Connected {
            session_present,
            subscribed: self.subscriptions.is_empty(),
        });
    }

    fn on_publish(&mut self, publish: Publish) {
        let size = remaining_len(&publish);
        if size > self.max_packet_size {
            tracing::warn!(
                topic = %publish.topic,
                size,
                max = self.max_packet_size,
                "dropping an oversized incoming message (acknowledged so it is not redelivered)"
            );
            Counters::bump(&self.shared.counters.oversized_discarded);
            let mut ack = publish;
            ack.payload = Default::default();
            self.acks.push_back(ack);
            return;
        }
        let mut ack = publish.clone();
        ack.payload = Default::default();
        let incoming = Incoming {
            topic: publish.topic,
            payload: publish.payload.to_vec(),
            duplicate: publish.dup,
            retained: publish.retain,
            generation: self.generation,
            publish: ack,
            shared: Arc::downgrade(&self.shared),
        };
        match self.incoming.try_send(incoming) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(dropped)) => {
                Counters::bump(&self.shared.counters.incoming_dropped);
                tracing::warn!(
                    topic = %dropped.topic,
                    "incoming channel full: message left unacknowledged for redelivery"
                );
            }
            Err(mpsc::error::TrySendError::Closed(dropped)) => {
                Counters::bump(&self.shared.counters.incoming_dropped);
                tracing::debug!(topic = %dropped.topic, "no consumer: message left unacknowledged");
            }
        }
    }

    fn on_puback(&mut self, pkid: u16) {
        match self.inflight.remove(&pkid) {
            Some(Tag::Misc(seq)) => {
                let mut misc = lock(&self.shared.misc);
                if misc
                    .entries
                    .get(&seq)
                    .is_some_and(|m| m.sent_in == Some(self.generation))
                {
                    misc.entries.remove(&seq);
                }
            }
            // A PUBACK proves nothing about delivery to the platform: events stay in the
            // outbox until the platform acknowledges them; presence is re-sent per connect.
            Some(Tag::Event) | Some(Tag::Presence) | None => {}
        }
    }

    /// Forgets everything tied to the connection that ended (or to the one before a CONNACK).
    fn forget_connection(&mut self) {
        // rumqttc keeps unacknowledged publishes and queued requests to replay them on a kept
        // session, and buffered events of the dead connection. Both would bypass the packet id
        // mapping; the tables here are the source of truth and are re-sent instead.
        self.eventloop.pending.clear();
        self.eventloop.state.events.clear();
        self.queue.clear();
        self.queued_events.clear();
        self.sent.clear();
        self.inflight.clear();
        self.acks.clear();
    }

    fn on_error(&mut self, error: ConnectionError) {
        let failed = self.addresses[self.current].to_string();
        self.connected = false;
        self.forget_connection();
        let delay = match refused_packet_len(&error) {
            Some(len) if len <= self.max_discard_size => {
                // Receive that packet once, on the next connection, to acknowledge and drop it.
                tracing::warn!(
                    size = len,
                    max = self.max_packet_size,
                    "the broker sent a packet above the size limit; reconnecting to drop it"
                );
                self.eventloop
                    .mqtt_options
                    .set_max_packet_size(len, self.max_packet_size);
                self.backoff.min
            }
            Some(len) => {
                tracing::error!(
                    size = len,
                    max = self.max_discard_size,
                    "the broker keeps sending a packet too large even to drop; \
                     remove it from the broker or raise max_discard_size"
                );
                self.backoff.max
            }
            None => self.next_address(),
        };
        let reason = match refused_packet_len(&error) {
            Some(len) => format!("incoming packet of {len} bytes above the size limit"),
            None => describe_error(&error),
        };
        let last_error = format!("{failed}: {reason}");
        let next = &self.addresses[self.current];
        tracing::warn!(error = %last_error, next = %next, retry_in = ?delay, "broker connection down");
        self.retry_at = Some(Instant::now() + delay);
        self.set_state(LinkState::Down {
            last_error,
            retry_in: delay,
        });
    }

    /// Moves the next attempt to the next address (the same one when there is only one) and
    /// returns how long to wait before it: at once while this round has untried addresses,
    /// the backoff once every address failed.
    fn next_address(&mut self) -> Duration {
        let count = self.addresses.len();
        self.failed_in_round += 1;
        if count > 1 {
            self.current = (self.current + 1) % count;
            self.eventloop.mqtt_options = self.recipe.options(&self.addresses[self.current]);
        }
        if self.failed_in_round < count {
            Duration::ZERO
        } else {
            self.failed_in_round = 0;
            self.backoff.next_delay()
        }
    }

    /// Queues events the platform has not acknowledged within `resend_after`.
    fn resend_due(&mut self) {
        let Some(after) = self.resend_after else {
            return;
        };
        let now = Instant::now();
        let pending = lock(&self.shared.outbox).pending();
        self.last_sent
            .retain(|id, _| pending.iter().any(|e| &e.event_id == id));
        let mut next = now + after;
        for entry in pending {
            match self.last_sent.get(&entry.event_id) {
                Some(at) if now.duration_since(*at) < after => next = next.min(*at + after),
                _ => self.enqueue_event(entry),
            }
        }
        self.next_resend_check = next;
    }

    /// Graceful stop: publish the death message, DISCONNECT (so the broker does not publish
    /// the will as well), and wait briefly for the broker to close the connection.
    async fn stop(mut self) {
        // Acknowledgements and publishes handed over before the shutdown go out first.
        self.pump();
        if self.connected {
            let death = self.client.try_publish(
                &self.presence_topic,
                QoS::AtLeastOnce,
                true,
                self.death.clone(),
            );
            let disconnect = self.client.try_disconnect();
            if death.is_ok() && disconnect.is_ok() {
                // Read on until the broker closes the connection after the DISCONNECT. Closing
                // first, with the broker's latest packets unread, makes the kernel send a TCP
                // reset, and the broker then discards what it had not processed yet: the
                // acknowledgements just sent (redelivered later) and the DISCONNECT itself.
                let closed = tokio::time::timeout(STOP_TIMEOUT, async {
                    while self.eventloop.poll().await.is_ok() {}
                })
                .await;
                if closed.is_err() {
                    tracing::warn!("broker did not close the connection after DISCONNECT in time");
                }
            }
        }
        self.set_state(LinkState::Stopped);
        tracing::info!("link stopped");
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_with_jitter_up_to_the_cap_and_resets() {
        let mut backoff = Backoff {
            min: Duration::from_millis(100),
            max: Duration::from_secs(5),
            attempt: 0,
        };
        let first = backoff.next_delay();
        assert!(first >= Duration::from_millis(50) && first <= Duration::from_millis(100));
        let mut last = first;
        for _ in 0..40 {
            last = backoff.next_delay();
            assert!(last <= Duration::from_secs(5));
        }
        assert!(
            last >= Duration::from_millis(2500),
            "capped, not stuck low: {last:?}"
        );
        backoff.reset();
        assert!(backoff.next_delay() <= Duration::from_millis(100));
    }

    #[test]
    fn remaining_length_matches_what_rumqttc_checks() {
        let publish = Publish::new("a/b", QoS::AtLeastOnce, vec![0u8; 10]);
        assert_eq!(remaining_len(&publish), 2 + 3 + 2 + 10);
        let publish = Publish::new("a/b", QoS::AtMostOnce, vec![0u8; 10]);
        assert_eq!(remaining_len(&publish), 2 + 3 + 10);
    }

    #[test]
    fn only_a_size_refusal_is_recognised_as_one() {
        let refused = ConnectionError::MqttState(StateError::Deserialization(
            rumqttc::Error::PayloadSizeLimitExceeded(300_000),
        ));
        assert_eq!(refused_packet_len(&refused), Some(300_000));
        assert_eq!(refused_packet_len(&ConnectionError::NetworkTimeout), None);
    }
}
