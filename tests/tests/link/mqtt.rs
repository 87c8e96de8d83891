//! The agent's MQTT link against a real Mosquitto: event delivery through the outbox,
//! re-sends after reconnects and restarts, broker crashes, manual acknowledgements, presence
//! (birth and will) and oversized messages.
//!
//! The "platform" here is a second rumqttc client. Tests wait on channels and watch values
//! with timeouts, never on sleeps.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::path::Path;
use std::time::Duration;

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use ukey_agent::link::{
    CancellationToken, Incoming, Link, LinkConfig, LinkError, LinkHandle, LinkState,
};
use ukey_agent::outbox::{Outbox, OutboxEntry};
use ukey_tests::Mosquitto;

const PREFIX: &str = "ukey/v1/stations/s1";
const WAIT: Duration = Duration::from_secs(20);

fn events_topic(job: &str) -> String {
    format!("{PREFIX}/jobs/{job}/events")
}

fn jobs_topic() -> String {
    format!("{PREFIX}/jobs")
}

fn acks_topic() -> String {
    format!("{PREFIX}/acks")
}

fn presence_topic() -> String {
    format!("{PREFIX}/presence")
}

fn event(i: usize) -> OutboxEntry {
    OutboxEntry {
        event_id: format!("ev-{i:04}"),
        topic: events_topic("j1"),
        payload: format!("{{\"event_id\":\"ev-{i:04}\",\"seq\":{i}}}").into_bytes(),
    }
}

/// The event id in a test event's payload.
fn event_id_of(payload: &[u8]) -> String {
    let text = std::str::from_utf8(payload).unwrap();
    let start = text.find("ev-").unwrap();
    text[start..start + 7].to_string()
}

fn link_config(broker: &Mosquitto) -> LinkConfig {
    let mut config = LinkConfig::new("127.0.0.1", broker.port(), "station-s1");
    config.subscriptions = vec![jobs_topic(), acks_topic()];
    config.presence_topic = presence_topic();
    config.birth_payload = b"{\"state\":\"online\"}".to_vec();
    config.death_payload = b"{\"state\":\"offline\"}".to_vec();
    config.keep_alive = Duration::from_secs(5);
    config.backoff_max = Duration::from_millis(500);
    config.resend_after = None;
    config
}

async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, fut)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

/// Waits until the link reports `Connected` and subscribed, with at least `connects`
/// connects so far.
async fn wait_connected(handle: &LinkHandle, connects: u64) {
    let mut state = handle.state();
    within("the link to connect", async {
        loop {
            if matches!(
                *state.borrow_and_update(),
                LinkState::Connected {
                    subscribed: true,
                    ..
                }
            ) && handle.stats().connects >= connects
            {
                return;
            }
            state.changed().await.unwrap();
        }
    })
    .await;
}

/// A message the platform received.
#[derive(Debug, Clone)]
struct Received {
    topic: String,
    payload: Vec<u8>,
    retain: bool,
}

/// A test platform: a plain MQTT client that records what it receives.
struct Platform {
    client: AsyncClient,
    rx: mpsc::UnboundedReceiver<Received>,
    task: JoinHandle<()>,
}

impl Platform {
    /// Connects (persistent session under `id`), subscribes to `filters` on every connect,
    /// and returns once the first subscription is acknowledged.
    async fn start(broker: &Mosquitto, id: &str, filters: &[String]) -> Platform {
        let mut options = MqttOptions::new(id, "127.0.0.1", broker.port());
        options
            .set_clean_session(false)
            .set_keep_alive(Duration::from_secs(5))
            .set_max_packet_size(1 << 20, 1 << 20);
        let (client, mut eventloop) = AsyncClient::new(options, 256);
        let (tx, rx) = mpsc::unbounded_channel();
        let (subscribed_tx, subscribed_rx) = oneshot::channel();
        let mut subscribed_tx = Some(subscribed_tx);
        let filters = filters.to_vec();
        let sub_client = client.clone();
        let task = tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        for f in &filters {
                            sub_client
                                .subscribe(f.clone(), QoS::AtLeastOnce)
                                .await
                                .unwrap();
                        }
                        if filters.is_empty()
                            && let Some(tx) = subscribed_tx.take()
                        {
                            let _ = tx.send(());
                        }
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        if let Some(tx) = subscribed_tx.take() {
                            let _ = tx.send(());
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let _ = tx.send(Received {
                            topic: p.topic.clone(),
                            payload: p.payload.to_vec(),
                            retain: p.retain,
                        });
                    }
                    Ok(_) => {}
                    // Reconnect pacing for the test client, not synchronisation.
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        });
        within("the platform to subscribe", subscribed_rx)
            .await
            .unwrap();
        Platform { client, rx, task }
    }

    async fn next(&mut self) -> Received {
        within("a message at the platform", self.rx.recv())
            .await
            .expect("platform task ended")
    }

    /// Receives until `pred` holds for a message, returning the ones before it and it.
    async fn until(&mut self, mut pred: impl FnMut(&Received) -> bool) -> Vec<Received> {
        let mut seen = Vec::new();
        loop {
            let m = self.next().await;
            let done = pred(&m);
            seen.push(m);
            if done {
                return seen;
            }
        }
    }

    async fn publish(&self, topic: &str, payload: Vec<u8>) {
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload)
            .await
            .unwrap();
    }

    async fn ack_events(&self, ids: &[String]) {
        self.publish(&acks_topic(), ids.join(",").into_bytes())
            .await;
    }
}

impl Drop for Platform {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The lead's side of the link, reduced to what the tests need: platform acknowledgements
/// go to [`LinkHandle::acknowledge`] and are then acked to the broker; everything else is
/// forwarded (unacknowledged) to the test.
struct Consumer {
    messages: mpsc::UnboundedReceiver<Incoming>,
    /// Total number of events removed from the outbox so far, after each acknowledgement.
    removed: mpsc::UnboundedReceiver<usize>,
    task: JoinHandle<()>,
}

impl Consumer {
    fn start(handle: LinkHandle, mut incoming: mpsc::Receiver<Incoming>) -> Consumer {
        let (msg_tx, messages) = mpsc::unbounded_channel();
        let (removed_tx, removed) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            let mut total = 0;
            while let Some(message) = incoming.recv().await {
                if message.topic() == acks_topic() {
                    let ids: Vec<String> = std::str::from_utf8(message.payload())
                        .unwrap()
                        .split(',')
                        .map(str::to_string)
                        .collect();
                    total += handle.acknowledge(ids).await.unwrap();
                    // Fails only when the link is stopping; the broker then redelivers.
                    let _ = message.ack().await;
                    let _ = removed_tx.send(total);
                } else {
                    let _ = msg_tx.send(message);
                }
            }
        });
        Consumer {
            messages,
            removed,
            task,
        }
    }

    async fn next_message(&mut self) -> Incoming {
        within("an incoming message at the agent", self.messages.recv())
            .await
            .expect("link ended")
    }

    /// Waits until the outbox has had `n` events removed in total.
    async fn wait_removed(&mut self, n: usize) {
        within("the platform's acknowledgements", async {
            loop {
                let total = self.removed.recv().await.expect("consumer ended");
                if total >= n {
                    return;
                }
            }
        })
        .await;
    }
}

/// A running link with its consumer.
struct Agent {
    handle: LinkHandle,
    consumer: Consumer,
    shutdown: CancellationToken,
}

impl Agent {
    fn start(config: LinkConfig, dir: &Path) -> Agent {
        let outbox = Outbox::open(dir).unwrap();
        let shutdown = CancellationToken::new();
        let (handle, incoming) = Link::start(config, outbox, shutdown.clone()).unwrap();
        let consumer = Consumer::start(handle.clone(), incoming);
        Agent {
            handle,
            consumer,
            shutdown,
        }
    }

    /// Graceful stop; returns once the outbox is closed and may be reopened.
    async fn stop(self) {
        let stopped = self.handle.stopped();
        self.shutdown.cancel();
        within("the link to stop", stopped).await;
        assert_eq!(*self.handle.state().borrow(), LinkState::Stopped);
        drop(self.handle);
        let Consumer { messages, task, .. } = self.consumer;
        drop(messages);
        within("the consumer to end", task).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_reach_the_platform_and_leave_the_outbox_only_on_its_acknowledgement() {
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let mut platform = Platform::start(&broker, "platform", &[events_topic("+")]).await;
    let mut agent = Agent::start(link_config(&broker), dir.path());
    wait_connected(&agent.handle, 1).await;

    for i in 0..5 {
        agent.handle.publish_event(event(i)).await.unwrap();
    }
    let mut got = BTreeSet::new();
    while got.len() < 5 {
        let m = platform.next().await;
        assert_eq!(m.topic, events_topic("j1"));
        got.insert(event_id_of(&m.payload));
    }
    assert_eq!(got, (0..5).map(|i| event(i).event_id).collect());
    // PUBACKs have come and gone: the events are still waiting for the platform.
    assert_eq!(agent.handle.outbox_depth(), 5);
    assert!(agent.handle.outbox_oldest_age().is_some());

    platform
        .ack_events(&["ev-0001".into(), "ev-0003".into(), "unknown".into()])
        .await;
    agent.consumer.wait_removed(2).await;
    assert_eq!(
        agent.handle.outbox_pending_ids(),
        ["ev-0000", "ev-0002", "ev-0004"]
    );
    platform
        .ack_events(&["ev-0000".into(), "ev-0002".into(), "ev-0004".into()])
        .await;
    agent.consumer.wait_removed(5).await;
    assert_eq!(agent.handle.outbox_depth(), 0);
    assert_eq!(agent.handle.outbox_oldest_age(), None);

    // A message too large for the packet limit is refused before it reaches the outbox.
    let mut big = event(9);
    big.payload = vec![b'x'; 300 * 1024];
    assert!(matches!(
        agent.handle.publish_event(big).await,
        Err(LinkError::PayloadTooLarge { .. })
    ));
    assert_eq!(agent.handle.outbox_depth(), 0);
    agent.stop().await;
}

/// Makes the broker drop the link's connection (without touching the platform's): a client
/// with the same id takes the session over and is then dropped without reconnecting.
async fn take_over_session(broker: &Mosquitto, client_id: &str) {
    let mut options = MqttOptions::new(client_id, "127.0.0.1", broker.port());
    options.set_clean_session(false).set_manual_acks(true);
    let (_client, mut eventloop) = AsyncClient::new(options, 10);
    within("the session takeover", async {
        loop {
            if let Ok(Event::Incoming(Packet::ConnAck(_))) = eventloop.poll().await {
                return;
            }
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_is_resent_after_each_reconnect_until_acknowledged_and_not_after() {
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let mut platform = Platform::start(&broker, "platform", &[events_topic("+")]).await;
    // No timed re-sends: only a reconnect can make the event go out again.
    let mut agent = Agent::start(link_config(&broker), dir.path());
    wait_connected(&agent.handle, 1).await;

    agent.handle.publish_event(event(1)).await.unwrap();
    assert_eq!(event_id_of(&platform.next().await.payload), "ev-0001");

    take_over_session(&broker, "station-s1").await;
    wait_connected(&agent.handle, 2).await;
    assert_eq!(
        event_id_of(&platform.next().await.payload),
        "ev-0001",
        "re-sent after the reconnect"
    );

    platform.ack_events(&["ev-0001".into()]).await;
    agent.consumer.wait_removed(1).await;

    take_over_session(&broker, "station-s1").await;
    wait_connected(&agent.handle, 3).await;
    agent.handle.publish_event(event(2)).await.unwrap();
    // Whatever the link re-sent on connect arrives before the new event.
    let seen = platform
        .until(|m| event_id_of(&m.payload) == "ev-0002")
        .await;
    let ids: Vec<String> = seen.iter().map(|m| event_id_of(&m.payload)).collect();
    assert_eq!(ids, ["ev-0002"], "an acknowledged event was sent again");
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_killed_and_restarted_mid_stream_loses_no_event() {
    let mut broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let mut platform = Platform::start(&broker, "platform", &[events_topic("+")]).await;
    let mut config = link_config(&broker);
    // Liveness when the broker lost the platform's subscription or its acknowledgements.
    config.resend_after = Some(Duration::from_millis(300));
    let mut agent = Agent::start(config, dir.path());
    wait_connected(&agent.handle, 1).await;

    let total = 60;
    let all: BTreeSet<String> = (0..total).map(|i| event(i).event_id).collect();
    let mut received: Vec<String> = Vec::new();
    let mut acked: BTreeSet<String> = BTreeSet::new();
    // The platform acknowledges what it receives, as it goes.
    let drain = async |platform: &mut Platform,
                       received: &mut Vec<String>,
                       acked: &mut BTreeSet<String>| {
        while let Ok(m) = platform.rx.try_recv() {
            let id = event_id_of(&m.payload);
            received.push(id.clone());
            acked.insert(id.clone());
            platform.ack_events(&[id]).await;
        }
    };

    for i in 0..20 {
        agent.handle.publish_event(event(i)).await.unwrap();
    }
    drain(&mut platform, &mut received, &mut acked).await;
    broker.kill();
    // Publishing while the broker is down neither blocks nor fails: the events are durable.
    for i in 20..40 {
        within(
            "publish_event while the broker is down",
            agent.handle.publish_event(event(i)),
        )
        .await
        .unwrap();
    }
    let mut state = agent.handle.state();
    within("the link to notice the broker is gone", async {
        while !matches!(*state.borrow_and_update(), LinkState::Down { .. }) {
            state.changed().await.unwrap();
        }
    })
    .await;
    broker.restart();
    wait_connected(&agent.handle, 2).await;
    for i in 40..total {
        agent.handle.publish_event(event(i)).await.unwrap();
    }

    within("every event at the platform and acknowledged", async {
        loop {
            let m = platform.rx.recv().await.unwrap();
            let id = event_id_of(&m.payload);
            received.push(id.clone());
            acked.insert(id.clone());
            platform.ack_events(&[id]).await;
            drain(&mut platform, &mut received, &mut acked).await;
            if acked == all {
                return;
            }
        }
    })
    .await;
    let distinct: BTreeSet<String> = received.iter().cloned().collect();
    assert_eq!(
        distinct, all,
        "de-duplicated by event id, exactly the set sent"
    );
    // The outbox may still be taking the last acknowledgements: wait for them.
    within("the outbox to empty", async {
        while agent.handle.outbox_depth() > 0 {
            agent.consumer.removed.recv().await.unwrap();
        }
    })
    .await;
    agent.stop().await;
    let reopened = Outbox::open(dir.path()).unwrap();
    assert_eq!(reopened.depth(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_events_are_resent_after_the_agent_restarts() {
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let mut platform = Platform::start(&broker, "platform", &[events_topic("+")]).await;

    let agent = Agent::start(link_config(&broker), dir.path());
    wait_connected(&agent.handle, 1).await;
    for i in 0..3 {
        agent.handle.publish_event(event(i)).await.unwrap();
    }
    let first: BTreeSet<String> = [
        platform.next().await,
        platform.next().await,
        platform.next().await,
    ]
    .iter()
    .map(|m| event_id_of(&m.payload))
    .collect();
    assert_eq!(first.len(), 3);
    agent.stop().await;

    assert_eq!(Outbox::open(dir.path()).unwrap().depth(), 3);
    let mut agent = Agent::start(link_config(&broker), dir.path());
    let mut again = BTreeSet::new();
    while again.len() < 3 {
        again.insert(event_id_of(&platform.next().await.payload));
    }
    assert_eq!(again, first);
    platform
        .ack_events(&first.iter().cloned().collect::<Vec<_>>())
        .await;
    agent.consumer.wait_removed(3).await;
    agent.stop().await;
    assert_eq!(Outbox::open(dir.path()).unwrap().depth(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_incoming_message_not_acknowledged_is_redelivered_after_a_reconnect() {
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let platform = Platform::start(&broker, "platform", &[]).await;

    let mut agent = Agent::start(link_config(&broker), dir.path());
    wait_connected(&agent.handle, 1).await;
    platform.publish(&jobs_topic(), b"job-1".to_vec()).await;
    let first = agent.consumer.next_message().await;
    assert_eq!(first.payload(), b"job-1");
    // Not persisted, so not acknowledged: the agent stops (or crashes) here.
    drop(first);
    agent.stop().await;

    let mut agent = Agent::start(link_config(&broker), dir.path());
    let again = agent.consumer.next_message().await;
    assert_eq!(again.payload(), b"job-1", "redelivered after the reconnect");
    again.ack().await.unwrap();
    // The PUBACK goes out before the DISCONNECT of a graceful stop.
    agent.stop().await;

    let mut agent = Agent::start(link_config(&broker), dir.path());
    wait_connected(&agent.handle, 1).await;
    platform.publish(&jobs_topic(), b"job-2".to_vec()).await;
    let next = agent.consumer.next_message().await;
    assert_eq!(
        next.payload(),
        b"job-2",
        "an acknowledged message came back: dup {} stats {:?} log {}",
        next.is_duplicate(),
        agent.handle.stats(),
        broker.log()
    );
    next.ack().await.unwrap();
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_on_an_at_most_once_filter_is_never_redelivered() {
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let platform = Platform::start(&broker, "platform", &[]).await;
    // (The test consumer takes `acks` for itself: another topic stands in for it.)
    let hints = format!("{PREFIX}/jobs/j1/cancel");
    let mut config = link_config(&broker);
    config.subscriptions = vec![jobs_topic()];
    config.subscriptions_at_most_once = vec![hints.clone()];

    let mut agent = Agent::start(config.clone(), dir.path());
    wait_connected(&agent.handle, 1).await;
    platform.publish(&hints, b"hint-1".to_vec()).await;
    let first = agent.consumer.next_message().await;
    assert_eq!(first.payload(), b"hint-1");
    // Never acknowledged, as a crash would leave it; at QoS 0 there is nothing to owe.
    drop(first);
    agent.stop().await;

    let mut agent = Agent::start(config, dir.path());
    wait_connected(&agent.handle, 1).await;
    platform.publish(&jobs_topic(), b"job-1".to_vec()).await;
    let next = agent.consumer.next_message().await;
    assert_eq!(
        next.payload(),
        b"job-1",
        "the message on the at-most-once filter came back: log {}",
        broker.log()
    );
    next.ack().await.unwrap();
    agent.stop().await;
}

/// Starts a link on a runtime of its own, so that dropping that runtime kills the link's
/// connection without an MQTT DISCONNECT, as a crash of the agent would.
async fn start_on_own_runtime(
    config: LinkConfig,
    dir: &Path,
) -> (tokio::runtime::Runtime, LinkHandle) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let outbox = Outbox::open(dir).unwrap();
    let (handle, incoming) = runtime
        .spawn(async move { Link::start(config, outbox, CancellationToken::new()) })
        .await
        .unwrap()
        .unwrap();
    // Keep the incoming channel open for the life of that runtime.
    runtime.spawn(async move {
        let mut incoming = incoming;
        while incoming.recv().await.is_some() {}
    });
    (runtime, handle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn birth_is_retained_on_connect_and_the_will_announces_a_dead_connection() {
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let config = link_config(&broker);
    let birth = config.birth_payload.clone();
    let death = config.death_payload.clone();

    let (runtime, handle) = start_on_own_runtime(config.clone(), dir.path()).await;
    wait_connected(&handle, 1).await;
    let mut watcher = Platform::start(&broker, "watcher", &[presence_topic()]).await;
    // Live or retained, depending on who was first at the broker.
    watcher.until(|m| m.payload == birth).await;
    // Once it is at the broker, later subscribers get the birth as a retained message.
    let mut early = Platform::start(&broker, "early-watcher", &[presence_topic()]).await;
    let m = early.next().await;
    assert_eq!(
        (&m.payload, m.retain),
        (&birth, true),
        "birth must be retained"
    );

    // The agent dies: its TCP connection closes without DISCONNECT.
    drop(handle);
    runtime.shutdown_background();
    let m = watcher.next().await;
    assert_eq!(m.payload, death, "the will announces the death");

    let mut late = Platform::start(&broker, "late-watcher", &[presence_topic()]).await;
    let m = late.next().await;
    assert_eq!(
        (m.payload, m.retain),
        (death.clone(), true),
        "death is retained"
    );

    // A new connection publishes a new retained birth.
    let (runtime, handle) = start_on_own_runtime(config, dir.path()).await;
    wait_connected(&handle, 1).await;
    assert_eq!(late.next().await.payload, birth);
    let mut later = Platform::start(&broker, "later-watcher", &[presence_topic()]).await;
    let m = later.next().await;
    assert_eq!((m.payload, m.retain), (birth, true));
    drop(handle);
    runtime.shutdown_background();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_incoming_message_is_dropped_once_without_a_reconnect_loop() {
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let platform = Platform::start(&broker, "platform", &[]).await;
    let mut config = link_config(&broker);
    config.max_packet_size = 64 * 1024;

    let mut agent = Agent::start(config.clone(), dir.path());
    wait_connected(&agent.handle, 1).await;
    platform
        .publish(&jobs_topic(), vec![b'J'; 100 * 1024])
        .await;
    platform.publish(&jobs_topic(), b"small-1".to_vec()).await;

    let m = agent.consumer.next_message().await;
    assert_eq!(
        m.payload(),
        b"small-1",
        "the oversized message is not delivered"
    );
    m.ack().await.unwrap();
    let stats = agent.handle.stats();
    assert_eq!(stats.oversized_discarded, 1);
    assert_eq!(stats.connects, 2, "one reconnect to drop it: {stats:?}");

    platform.publish(&jobs_topic(), b"small-2".to_vec()).await;
    let m = agent.consumer.next_message().await;
    assert_eq!(m.payload(), b"small-2");
    m.ack().await.unwrap();
    assert_eq!(agent.handle.stats().connects, 2, "no reconnect loop");
    agent.stop().await;

    // It was acknowledged to the broker, so a new session start does not bring it back.
    let mut agent = Agent::start(config, dir.path());
    wait_connected(&agent.handle, 1).await;
    platform.publish(&jobs_topic(), b"small-3".to_vec()).await;
    let m = agent.consumer.next_message().await;
    assert_eq!(m.payload(), b"small-3");
    assert_eq!(agent.handle.stats().oversized_discarded, 0);
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inventory_and_csr_publishes_reach_the_platform() {
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let inventory = format!("{PREFIX}/inventory");
    let csr = format!("{PREFIX}/jobs/j1/csr");
    let mut platform =
        Platform::start(&broker, "platform", &[inventory.clone(), csr.clone()]).await;
    let agent = Agent::start(link_config(&broker), dir.path());
    wait_connected(&agent.handle, 1).await;

    agent
        .handle
        .publish_retained(inventory.clone(), b"slots-v1".to_vec())
        .unwrap();
    agent
        .handle
        .publish(csr.clone(), b"csr-bundle".to_vec())
        .unwrap();
    let mut got: HashMap<String, Received> = HashMap::new();
    while got.len() < 2 {
        let m = platform.next().await;
        got.insert(m.topic.clone(), m);
    }
    assert_eq!(got[&inventory].payload, b"slots-v1");
    assert_eq!(got[&csr].payload, b"csr-bundle");
    assert!(matches!(
        agent.handle.publish("bad/+/topic", Vec::new()),
        Err(LinkError::InvalidTopic { .. })
    ));
    agent.stop().await;

    let mut late = Platform::start(&broker, "late", std::slice::from_ref(&inventory)).await;
    let m = late.next().await;
    assert_eq!((m.payload, m.retain), (b"slots-v1".to_vec(), true));
}
