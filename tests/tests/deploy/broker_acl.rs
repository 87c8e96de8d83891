//! The broker configuration and ACL of `deploy/mosquitto/`, run by a real Mosquitto as
//! shipped (only the listening address and the folders of its files changed): a station's
//! certificate keeps it to its own topics, only the platform's publishes jobs, certificates,
//! cancellations and acks, and a whole desk produces a token through it.
//!
//! A denied publish is still acknowledged (MQTT 3.1.1), so denial is shown by a subscriber
//! that receives the permitted message sent after it on the same topic, and not the denied
//! one first.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::VecDeque;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use rumqttc::{
    AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS, SubscribeReasonCode, TlsConfiguration,
    Transport,
};
use ukey_tests::Mosquitto;
use ukey_tests::station::{STATION_ID, Station};

const WAIT: Duration = Duration::from_secs(20);
const PLATFORM: &str = "ukey-platform";

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new(ukey_tests::require_tool("openssl"))
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA, the broker's certificate (`localhost`, `127.0.0.1`) and one client certificate per
/// name (CN = the name), all P-256, in `dir`: `NAME.pem` and `NAME.key` (mode 0600).
fn make_pki(dir: &Path, clients: &[&str]) {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    let mut ca = vec!["req", "-x509", "-days", "2"];
    ca.extend(ec);
    ca.extend([
        "-keyout",
        "ca.key",
        "-out",
        "clients-ca.pem",
        "-subj",
        "/CN=test clients CA",
    ]);
    openssl(dir, &ca);
    std::fs::write(
        dir.join("broker.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    std::fs::write(dir.join("client.ext"), "extendedKeyUsage=clientAuth\n").unwrap();
    let mut names = vec![("broker", "localhost", "broker.ext")];
    names.extend(clients.iter().map(|c| (*c, *c, "client.ext")));
    for (name, cn, ext) in names {
        let subj = format!("/CN={cn}");
        let key = format!("{name}.key");
        let csr = format!("{name}.csr");
        let mut req = vec!["req"];
        req.extend(ec);
        req.extend(["-keyout", &key, "-out", &csr, "-subj", &subj]);
        openssl(dir, &req);
        let pem = format!("{name}.pem");
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "clients-ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-out",
                &pem,
                "-extfile",
                ext,
            ],
        );
        std::fs::set_permissions(dir.join(&key), std::fs::Permissions::from_mode(0o600)).unwrap();
    }
}

/// Mosquitto with `deploy/mosquitto/mosquitto.conf` and `acl` as shipped; only the listener's
/// port and address and the folders of the files it names are replaced.
fn acl_broker(pki: &Path) -> Mosquitto {
    let deploy = ukey_tests::workspace_root().join("deploy/mosquitto");
    let template = std::fs::read_to_string(deploy.join("mosquitto.conf")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(deploy.join("acl"), dir.path().join("acl")).unwrap();
    for file in ["clients-ca.pem", "broker.pem", "broker.key"] {
        std::fs::copy(pki.join(file), dir.path().join(file)).unwrap();
    }
    let mut text = template.clone();
    for (from, to) in [
        ("listener 8883\n", "listener @PORT@ 127.0.0.1\n".to_owned()),
        ("/etc/mosquitto/ukey/", format!("{}/", dir.path().display())),
        (
            "/var/lib/mosquitto/",
            format!("{}/db/", dir.path().display()),
        ),
    ] {
        assert!(template.contains(from), "the template has no {from:?}");
        text = text.replace(from, &to);
    }
    for line in [
        "require_certificate true",
        "use_identity_as_username true",
        "allow_anonymous false",
    ] {
        assert!(
            template.lines().any(|l| l.trim() == line),
            "template lacks {line}"
        );
    }
    Mosquitto::start_with_config(dir, &text)
}

/// A bare MQTT client over TLS with a client certificate, driven step by step.
struct Client {
    name: &'static str,
    client: AsyncClient,
    events: EventLoop,
    inbox: VecDeque<(String, Vec<u8>)>,
}

impl Client {
    async fn connect(port: u16, pki: &Path, name: &'static str) -> Client {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut options = MqttOptions::new(format!("acl-test-{name}"), "127.0.0.1", port);
        options.set_keep_alive(Duration::from_secs(10));
        options.set_transport(Transport::tls_with_config(TlsConfiguration::Simple {
            ca: std::fs::read(pki.join("clients-ca.pem")).unwrap(),
            alpn: None,
            client_auth: Some((
                std::fs::read(pki.join(format!("{name}.pem"))).unwrap(),
                std::fs::read(pki.join(format!("{name}.key"))).unwrap(),
            )),
        }));
        let (client, events) = AsyncClient::new(options, 16);
        let mut c = Client {
            name,
            client,
            events,
            inbox: VecDeque::new(),
        };
        c.until(|e| matches!(e, Event::Incoming(Packet::ConnAck(_))))
            .await;
        c
    }

    /// Polls until `done` holds for an event; publishes received meanwhile go to the inbox.
    async fn until(&mut self, done: impl Fn(&Event) -> bool) {
        loop {
            let event = match tokio::time::timeout(WAIT, self.events.poll()).await {
                Ok(Ok(event)) => event,
                Ok(Err(e)) => panic!("{}: connection failed: {e}", self.name),
                Err(_) => panic!("{}: nothing from the broker within {WAIT:?}", self.name),
            };
            if let Event::Incoming(Packet::Publish(p)) = &event {
                self.inbox.push_back((p.topic.clone(), p.payload.to_vec()));
            }
            if done(&event) {
                return;
            }
        }
    }

    /// Subscribes (QoS 1); returns whether the broker granted it.
    async fn subscribe(&mut self, filter: &str) -> bool {
        self.client
            .subscribe(filter, QoS::AtLeastOnce)
            .await
            .unwrap();
        let granted = std::sync::Mutex::new(None);
        self.until(|e| match e {
            Event::Incoming(Packet::SubAck(ack)) => {
                *granted.lock().unwrap() = Some(
                    ack.return_codes
                        .iter()
                        .all(|c| !matches!(c, SubscribeReasonCode::Failure)),
                );
                true
            }
            _ => false,
        })
        .await;
        granted.into_inner().unwrap().unwrap()
    }

    /// Publishes (QoS 1) and waits for the broker's PUBACK (which a denied publish gets too).
    async fn publish(&mut self, topic: &str, payload: &str) {
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload.as_bytes().to_vec())
            .await
            .unwrap();
        self.until(|e| matches!(e, Event::Incoming(Packet::PubAck(_))))
            .await;
    }

    /// The next message this client receives.
    async fn next_message(&mut self) -> (String, String) {
        if self.inbox.is_empty() {
            self.until(|e| matches!(e, Event::Incoming(Packet::Publish(_))))
                .await;
        }
        let (topic, payload) = self.inbox.pop_front().unwrap();
        (topic, String::from_utf8(payload).unwrap())
    }
}

fn topic(station: &str, rest: &str) -> String {
    format!("ukey/v1/stations/{station}/{rest}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_station_is_kept_to_its_own_topics_and_only_the_platform_sends_jobs() {
    let pki = tempfile::tempdir().unwrap();
    make_pki(pki.path(), &[PLATFORM, "desk-a", "desk-b"]);
    let broker = acl_broker(pki.path());
    let port = broker.port();
    let mut platform = Client::connect(port, pki.path(), PLATFORM).await;
    let mut a = Client::connect(port, pki.path(), "desk-a").await;
    let mut b = Client::connect(port, pki.path(), "desk-b").await;

    for filter in ukey_protocol::topic::platform_subscriptions("ukey/v1") {
        assert!(platform.subscribe(&filter).await, "platform: {filter}");
    }
    for rest in ["jobs", "jobs/+/certs", "jobs/+/cancel", "acks"] {
        assert!(a.subscribe(&topic("desk-a", rest)).await, "desk-a: {rest}");
        assert!(b.subscribe(&topic("desk-b", rest)).await, "desk-b: {rest}");
    }

    // desk-b subscribes to desk-a's topics. Mosquitto 2.0 may grant a subscription in its
    // SUBACK and check the read ACL on each message: what counts is that nothing of
    // desk-a's arrives.
    for filter in [
        topic("desk-a", "#"),
        topic("desk-a", "jobs"),
        topic("+", "acks"),
    ] {
        b.subscribe(&filter).await;
    }
    for rest in ["jobs", "acks", "jobs/J1/certs", "jobs/J1/cancel"] {
        platform.publish(&topic("desk-a", rest), "for desk-a").await;
        // Positive control: the platform's message reaches its station.
        assert_eq!(
            a.next_message().await,
            (topic("desk-a", rest), "for desk-a".to_owned())
        );
        // desk-b's first message is the one sent to it afterwards, not desk-a's.
        platform.publish(&topic("desk-b", rest), "for desk-b").await;
        assert_eq!(
            b.next_message().await,
            (topic("desk-b", rest), "for desk-b".to_owned()),
            "desk-b received desk-a's {rest}"
        );
    }

    // desk-b publishes on desk-a's topics: acknowledged but dropped; desk-a's own message on
    // the same topic, sent afterwards, is the first the platform receives.
    for rest in ["presence", "inventory", "jobs/J1/events", "jobs/J1/csr"] {
        let path = topic("desk-a", rest);
        b.publish(&path, "forged by desk-b").await;
        a.publish(&path, "from desk-a").await;
        assert_eq!(
            platform.next_message().await,
            (path.clone(), "from desk-a".to_owned()),
            "desk-b could publish on {path}"
        );
    }

    // A station publishes what only the platform may: a job, certificates, a cancellation,
    // an acknowledgement, even on its own topics. The platform's, sent afterwards on the
    // same topic, is the first the station receives.
    for rest in ["jobs", "jobs/J1/certs", "jobs/J1/cancel", "acks"] {
        let path = topic("desk-a", rest);
        a.publish(&path, "forged by desk-a").await;
        platform.publish(&path, "from the platform").await;
        assert_eq!(
            a.next_message().await,
            (path.clone(), "from the platform".to_owned()),
            "desk-a could publish on {path}"
        );
    }
    assert!(b.inbox.is_empty() && a.inbox.is_empty() && platform.inbox.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_desk_produces_a_token_through_the_acl_broker() {
    let pki = tempfile::tempdir().unwrap();
    make_pki(pki.path(), &[PLATFORM, STATION_ID]);
    let broker = acl_broker(pki.path());
    let p = pki.path().to_owned();
    let mut station = Station::sim_with_broker(1, broker, |config| {
        config.tls = Some(ukey_platform_sim::PlatformTls {
            ca_file: p.join("clients-ca.pem"),
            client_cert: p.join(format!("{PLATFORM}.pem")),
            client_key: p.join(format!("{PLATFORM}.key")),
        });
    })
    .await;
    station.configure(move |c| {
        c.broker.tls = Some(ukey_agent::config::TlsConfig {
            ca_file: p.join("clients-ca.pem"),
            client_cert: Some(p.join(format!("{STATION_ID}.pem"))),
            client_key: Some(p.join(format!("{STATION_ID}.key"))),
        })
    });
    station.start_agent().await;
    station.insert_blank(0);
    let job = station
        .dispatch_new(ukey_protocol::keys::KeyAlgorithm::P256)
        .await;
    station.new_job_succeeded(&job).await;
}
