//! How the agent reaches its broker: a list of addresses tried in turn (one client id and
//! session on all), a user name with a password from a file, and the rule that a broker off
//! loopback needs TLS unless the configuration accepts clear text out loud.
//!
//! Link tests run against real Mosquitto brokers (one with a password file); the
//! configuration tests run the real `ukey-agent` binary. A second MQTT client plays the
//! platform. Tests wait on channels and watch values with timeouts, never on sleeps.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::sync::mpsc;
use ukey_agent::link::{
    BrokerAddress, CancellationToken, Credentials, Link, LinkConfig, LinkHandle, LinkState,
};
use ukey_agent::outbox::{Outbox, OutboxEntry};
use ukey_tests::Mosquitto;
use ukey_tests::station::Station;

const WAIT: Duration = Duration::from_secs(20);
const PRESENCE: &str = "ukey/v1/stations/s1/presence";
const EVENTS: &str = "ukey/v1/stations/s1/jobs/j1/events";
const JOBS: &str = "ukey/v1/stations/s1/jobs";
const PASSWORD: &str = "Wq7-correct-horse";

fn link_config(host_port: (&str, u16)) -> LinkConfig {
    let mut config = LinkConfig::new(host_port.0, host_port.1, "station-s1");
    config.presence_topic = PRESENCE.into();
    config.birth_payload = b"online".to_vec();
    config.death_payload = b"offline".to_vec();
    config.backoff_min = Duration::from_millis(50);
    config.backoff_max = Duration::from_millis(300);
    config
}

fn address(broker: &Mosquitto) -> BrokerAddress {
    BrokerAddress {
        host: "127.0.0.1".into(),
        port: broker.port(),
    }
}

async fn wait_state(handle: &LinkHandle, pred: impl Fn(&LinkState) -> bool) -> LinkState {
    let mut state = handle.state();
    tokio::time::timeout(WAIT, async {
        loop {
            let now = state.borrow_and_update().clone();
            if pred(&now) {
                return now;
            }
            state.changed().await.unwrap();
        }
    })
    .await
    .unwrap_or_else(|_| panic!("timed out; last state {:?}", *handle.state().borrow()))
}

fn connected(state: &LinkState) -> bool {
    matches!(state, LinkState::Connected { .. })
}

/// A platform-side client on `port` subscribed to `filter`: returns once the broker has
/// acknowledged the subscription, with the channel of `(topic, payload)` it receives.
async fn watch(
    port: u16,
    login: Option<(&str, &str)>,
    filter: &str,
) -> mpsc::UnboundedReceiver<(String, Vec<u8>)> {
    let id = format!("watcher-{}", ukey_tests::free_port());
    let mut options = MqttOptions::new(id, "127.0.0.1", port);
    options.set_keep_alive(Duration::from_secs(5));
    if let Some((user, password)) = login {
        options.set_credentials(user, password);
    }
    let (client, mut eventloop) = AsyncClient::new(options, 16);
    client.subscribe(filter, QoS::AtLeastOnce).await.unwrap();
    let (subscribed_tx, subscribed_rx) = tokio::sync::oneshot::channel();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let _client = client;
        let mut subscribed = Some(subscribed_tx);
        while let Ok(event) = eventloop.poll().await {
            match event {
                Event::Incoming(Packet::SubAck(_)) => {
                    if let Some(tx) = subscribed.take() {
                        let _ = tx.send(());
                    }
                }
                Event::Incoming(Packet::Publish(p)) => {
                    let _ = tx.send((p.topic.clone(), p.payload.to_vec()));
                }
                _ => {}
            }
        }
    });
    tokio::time::timeout(WAIT, subscribed_rx)
        .await
        .expect("the watcher's subscription was not acknowledged")
        .unwrap();
    rx
}

/// Leaves a persistent session for client id `station-s1` on the broker at `port`,
/// subscribed to [`JOBS`], with one job queued in it.
async fn prime_session(port: u16) {
    async fn until(eventloop: &mut rumqttc::EventLoop, pred: impl Fn(&Packet) -> bool) {
        tokio::time::timeout(WAIT, async {
            loop {
                if let Event::Incoming(packet) = eventloop.poll().await.unwrap()
                    && pred(&packet)
                {
                    return;
                }
            }
        })
        .await
        .unwrap();
    }
    let mut options = MqttOptions::new("station-s1", "127.0.0.1", port);
    options.set_clean_session(false);
    let (client, mut eventloop) = AsyncClient::new(options, 16);
    client.subscribe(JOBS, QoS::AtLeastOnce).await.unwrap();
    until(&mut eventloop, |p| matches!(p, Packet::SubAck(_))).await;
    client.disconnect().await.unwrap();
    while eventloop.poll().await.is_ok() {}

    let (client, mut eventloop) =
        AsyncClient::new(MqttOptions::new("platform-p1", "127.0.0.1", port), 16);
    client
        .publish(JOBS, QoS::AtLeastOnce, false, b"queued-job".to_vec())
        .await
        .unwrap();
    until(&mut eventloop, |p| matches!(p, Packet::PubAck(_))).await;
}

/// The next message on `rx` whose payload is `payload`.
async fn expect(rx: &mut mpsc::UnboundedReceiver<(String, Vec<u8>)>, payload: &[u8]) {
    tokio::time::timeout(WAIT, async {
        while let Some((_, got)) = rx.recv().await {
            if got == payload {
                return;
            }
        }
        panic!("watcher stopped");
    })
    .await
    .unwrap_or_else(|_| panic!("never received {:?}", String::from_utf8_lossy(payload)));
}

fn event(id: &str) -> OutboxEntry {
    OutboxEntry {
        event_id: id.into(),
        topic: EVENTS.into(),
        payload: format!("{{\"event_id\":\"{id}\"}}").into_bytes(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_link_skips_a_dead_address_and_moves_on_when_its_broker_dies() {
    let store = tempfile::tempdir().unwrap();
    let shutdown = CancellationToken::new();

    // First address: nothing listens there. Second: a broker.
    let second = Mosquitto::start();
    let dead = ukey_tests::free_port();
    let mut config = link_config(("127.0.0.1", dead));
    config.more_addresses = vec![address(&second)];
    let mut births = watch(second.port(), None, PRESENCE).await;
    let (link, _incoming) = Link::start(
        config,
        Outbox::open(store.path().join("a")).unwrap(),
        shutdown.clone(),
    )
    .unwrap();
    wait_state(&link, connected).await;
    expect(&mut births, b"online").await;
    shutdown.cancel();
    tokio::time::timeout(WAIT, link.stopped()).await.unwrap();

    // Two live addresses: the first is used until its broker dies, then the second, with
    // the same client id and a persistent session, and nothing pending is lost.
    let mut first = Mosquitto::start();
    let second = Mosquitto::start();
    prime_session(second.port()).await;
    let mut config = link_config(("127.0.0.1", first.port()));
    config.more_addresses = vec![address(&second)];
    config.subscriptions = vec![JOBS.into()];
    let mut on_first = watch(first.port(), None, "ukey/v1/stations/s1/#").await;
    let mut on_second = watch(second.port(), None, "ukey/v1/stations/s1/#").await;
    let shutdown = CancellationToken::new();
    let (link, mut incoming) = Link::start(
        config,
        Outbox::open(store.path().join("b")).unwrap(),
        shutdown.clone(),
    )
    .unwrap();
    wait_state(&link, connected).await;
    expect(&mut on_first, b"online").await;
    link.publish_event(event("ev-1")).await.unwrap();
    expect(&mut on_first, b"{\"event_id\":\"ev-1\"}").await;
    assert_eq!(link.stats().connects, 1);

    first.kill();
    // Down and up again quickly: wait for the second connection, not for the gap between.
    wait_state(&link, |s| connected(s) && link.stats().connects >= 2).await;
    expect(&mut on_second, b"online").await;
    // Not acknowledged by the platform: published again on the new broker.
    expect(&mut on_second, b"{\"event_id\":\"ev-1\"}").await;
    link.publish_event(event("ev-2")).await.unwrap();
    expect(&mut on_second, b"{\"event_id\":\"ev-2\"}").await;
    assert_eq!(link.stats().connects, 2);
    // The second broker had kept a session for the station's client id, with a job queued
    // in it: the link resumed that very session there.
    let LinkState::Connected {
        session_present, ..
    } = *link.state().borrow()
    else {
        panic!("not connected")
    };
    assert!(
        session_present,
        "the second broker had no session for the client id"
    );
    let queued = tokio::time::timeout(WAIT, incoming.recv())
        .await
        .expect("the job queued in the session never arrived")
        .unwrap();
    assert_eq!(queued.payload(), b"queued-job");
    shutdown.cancel();
    tokio::time::timeout(WAIT, link.stopped()).await.unwrap();
}

fn password_file(dir: &Path, password: &str) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join("broker.password");
    std::fs::write(&path, format!("{password}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_link_logs_in_with_a_password_from_a_file_and_a_wrong_one_is_named() {
    let broker = Mosquitto::start_with_users(&[("desk-01", PASSWORD), ("platform", "pf")]);
    let dir = tempfile::tempdir().unwrap();
    let shutdown = CancellationToken::new();
    let mut events = watch(broker.port(), Some(("platform", "pf")), EVENTS).await;

    let mut config = link_config(("127.0.0.1", broker.port()));
    config.credentials = Some(Credentials {
        username: "desk-01".into(),
        password_file: Some(password_file(dir.path(), PASSWORD)),
    });
    let (link, _incoming) = Link::start(
        config,
        Outbox::open(dir.path().join("good")).unwrap(),
        shutdown.clone(),
    )
    .unwrap();
    wait_state(&link, connected).await;
    link.publish_event(event("ev-1")).await.unwrap();
    expect(&mut events, b"{\"event_id\":\"ev-1\"}").await;

    // A wrong password: refused, and the link says which keys to look at.
    let wrong = tempfile::tempdir().unwrap();
    let mut config = link_config(("127.0.0.1", broker.port()));
    config.credentials = Some(Credentials {
        username: "desk-01".into(),
        password_file: Some(password_file(wrong.path(), "not-the-password")),
    });
    let (refused, _incoming) = Link::start(
        config,
        Outbox::open(dir.path().join("wrong")).unwrap(),
        shutdown.clone(),
    )
    .unwrap();
    let down = wait_state(&refused, |s| matches!(s, LinkState::Down { .. })).await;
    let LinkState::Down { last_error, .. } = &down else {
        unreachable!()
    };
    assert!(
        last_error.contains("refused the station's login")
            && last_error.contains("broker.password_file"),
        "{last_error}"
    );
    assert!(!last_error.contains("not-the-password"), "{last_error}");
    assert_eq!(refused.stats().connects, 0);

    // Anonymous: refused as well (the broker has a password file).
    let (anonymous, _incoming) = Link::start(
        link_config(("127.0.0.1", broker.port())),
        Outbox::open(dir.path().join("anonymous")).unwrap(),
        shutdown.clone(),
    )
    .unwrap();
    wait_state(&anonymous, |s| matches!(s, LinkState::Down { .. })).await;
    assert_eq!(anonymous.stats().connects, 0);

    // An unreadable password file stops the link from starting, naming the file.
    let mut config = link_config(("127.0.0.1", broker.port()));
    config.credentials = Some(Credentials {
        username: "desk-01".into(),
        password_file: Some(dir.path().join("missing.password")),
    });
    let err = Link::start(
        config,
        Outbox::open(dir.path().join("missing")).unwrap(),
        shutdown.clone(),
    )
    .map(|_| ())
    .unwrap_err();
    assert!(err.to_string().contains("missing.password"), "{err}");

    shutdown.cancel();
    for handle in [&link, &refused, &anonymous] {
        tokio::time::timeout(WAIT, handle.stopped()).await.unwrap();
    }
}

/// `ukey-agent check-config` on `config`: exit code, standard output, standard error.
fn check_config(config: &Path) -> (Option<i32>, String, String) {
    let out = Command::new(ukey_tests::agent_binary())
        .args(["check-config", "--config"])
        .arg(config)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Waits for the agent process to end and returns its exit code.
async fn agent_exit(station: &mut Station) -> Option<i32> {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        if !station.agent_running() {
            return station.stop_agent().and_then(|status| status.code());
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the agent kept running:\n{}",
            station.agent_log()
        );
        // The process gives no signal to wait on but its exit.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plaintext_broker_off_loopback_is_refused_unless_allowed_and_then_warned_about() {
    let mut station = Station::sim(1).await;
    let port = station.broker.port();
    // The station's broker, and a second address on the network (TEST-NET-1) in clear.
    station.configure(move |c| {
        c.broker.host = String::new();
        c.broker.port = None;
        c.broker.hosts = vec![format!("127.0.0.1:{port}"), format!("192.0.2.10:{port}")];
    });
    let config = station.write_config();
    let (code, _, stderr) = check_config(&config);
    assert_eq!(code, Some(3), "{stderr}");
    assert!(
        stderr.contains("broker.tls:")
            && stderr.contains("192.0.2.10")
            && stderr.contains("broker.allow_plaintext = true"),
        "{stderr}"
    );
    // `run` refuses it the same way, before connecting anywhere.
    station.spawn_agent();
    assert_eq!(agent_exit(&mut station).await, Some(3));
    let log = station.agent_log();
    assert!(
        log.contains("broker.tls:") && log.contains("192.0.2.10"),
        "{log}"
    );

    // Accepted out loud: valid, with one warning in check-config, at start and in status.
    station.configure(|c| c.broker.allow_plaintext = true);
    let config = station.write_config();
    let (code, stdout, stderr) = check_config(&config);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    let warnings: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("warning:"))
        .collect();
    assert_eq!(warnings.len(), 1, "{stdout}");
    assert!(
        warnings[0].contains("broker.allow_plaintext") && warnings[0].contains("192.0.2.10"),
        "{stdout}"
    );
    station.start_agent().await;
    let log = station.agent_log();
    let after_refusal = log.rsplit("--- restart ---").next().unwrap();
    assert_eq!(
        after_refusal.matches("is not encrypted").count(),
        1,
        "{after_refusal}"
    );
    let status = station.status_with("warning:").await;
    assert!(
        status.contains("broker.allow_plaintext") && status.contains("is not encrypted"),
        "{status}"
    );
    station.stop_agent();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_names_a_refused_password_and_never_logs_it() {
    let mut station = Station::sim(1).await;
    let secured = Mosquitto::start_with_users(&[("desk-01", PASSWORD)]);
    let wrong = "Zx9-wrong-battery-staple";
    let file = password_file(station.dir(), wrong);
    let port = secured.port();
    station.configure(move |c| {
        c.broker.port = Some(port);
        c.broker.username = Some("desk-01".into());
        c.broker.password_file = Some(file.clone());
    });
    station.spawn_agent();
    station
        .wait_for_log("refused the station's login", 1, WAIT)
        .await;
    station.stop_agent();
    let log = station.agent_log();
    assert!(log.contains("broker.password_file"), "{log}");
    assert!(!log.contains(wrong), "the password reached the log:\n{log}");
}
