//! The agent's MQTT link over TLS with a client certificate, against a real Mosquitto whose
//! certificates are made by openssl for the test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ukey_agent::link::{CancellationToken, Link, LinkConfig, LinkHandle, LinkState, TlsFiles};
use ukey_agent::outbox::{Outbox, OutboxEntry};

const WAIT: Duration = Duration::from_secs(20);

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

/// A CA, a server certificate for `localhost`, and a client certificate, all P-256.
fn make_pki(dir: &Path) {
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
        "ca.pem",
        "-subj",
        "/CN=test broker CA",
    ]);
    openssl(dir, &ca);
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    std::fs::write(dir.join("client.ext"), "extendedKeyUsage=clientAuth\n").unwrap();
    for (name, cn) in [("server", "localhost"), ("client", "station-s1")] {
        let subj = format!("/CN={cn}");
        let key = format!("{name}.key");
        let csr = format!("{name}.csr");
        let mut req = vec!["req"];
        req.extend(ec);
        req.extend(["-keyout", &key, "-out", &csr, "-subj", &subj]);
        openssl(dir, &req);
        let pem = format!("{name}.pem");
        let ext = format!("{name}.ext");
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-out",
                &pem,
                "-extfile",
                &ext,
            ],
        );
    }
}

struct TlsBroker {
    child: Child,
    port: u16,
}

impl Drop for TlsBroker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn mosquitto_binary() -> PathBuf {
    let sbin = PathBuf::from("/usr/sbin/mosquitto");
    if sbin.exists() {
        sbin
    } else {
        PathBuf::from(ukey_tests::require_tool("mosquitto"))
    }
}

/// Mosquitto on a free port with TLS that requires a client certificate.
fn start_tls_broker(dir: &Path) -> TlsBroker {
    // Started as root, mosquitto drops to its own user before it reads the key files: let it
    // read these throwaway test files.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let mut last = String::new();
    for _ in 0..5 {
        let port = ukey_tests::free_port();
        let conf = dir.join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\n\
                 cafile {d}/ca.pem\ncertfile {d}/server.pem\nkeyfile {d}/server.key\n\
                 require_certificate true\n",
                d = dir.display()
            ),
        )
        .unwrap();
        let mut child = Command::new(mosquitto_binary())
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return TlsBroker { child, port };
            }
            if let Ok(Some(status)) = child.try_wait() {
                last = format!("mosquitto exited with {status}");
                break;
            }
            // Polling for the listener: the broker gives no other readiness signal.
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
    panic!("TLS mosquitto did not start: {last}");
}

fn config(port: u16, id: &str, dir: &Path, client_cert: bool) -> LinkConfig {
    let mut config = LinkConfig::new("localhost", port, id);
    config.presence_topic = format!("ukey/v1/stations/{id}/presence");
    config.backoff_max = Duration::from_millis(300);
    config.tls = Some(TlsFiles {
        ca_file: dir.join("ca.pem"),
        client_cert: client_cert.then(|| dir.join("client.pem")),
        client_key: client_cert.then(|| dir.join("client.key")),
    });
    config
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
    .expect("timed out waiting for a link state")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_travel_over_tls_with_client_certificates_and_a_missing_one_is_refused() {
    let pki = tempfile::tempdir().unwrap();
    make_pki(pki.path());
    let broker = start_tls_broker(pki.path());
    let store = tempfile::tempdir().unwrap();

    // The platform's side: another link, subscribed to the events.
    let mut platform_config = config(broker.port, "platform", pki.path(), true);
    platform_config.subscriptions = vec!["ukey/v1/stations/+/jobs/+/events".into()];
    let shutdown = CancellationToken::new();
    let (platform, mut received) = Link::start(
        platform_config,
        Outbox::open(store.path().join("platform")).unwrap(),
        shutdown.clone(),
    )
    .unwrap();
    wait_state(&platform, |s| matches!(s, LinkState::Connected { .. })).await;

    let (station, _incoming) = Link::start(
        config(broker.port, "station-s1", pki.path(), true),
        Outbox::open(store.path().join("station")).unwrap(),
        shutdown.clone(),
    )
    .unwrap();
    wait_state(&station, |s| matches!(s, LinkState::Connected { .. })).await;
    station
        .publish_event(OutboxEntry {
            event_id: "ev-1".into(),
            topic: "ukey/v1/stations/station-s1/jobs/j1/events".into(),
            payload: b"{\"event_id\":\"ev-1\"}".to_vec(),
        })
        .await
        .unwrap();
    let message = tokio::time::timeout(WAIT, received.recv())
        .await
        .expect("timed out waiting for the event")
        .unwrap();
    assert_eq!(message.payload(), b"{\"event_id\":\"ev-1\"}");
    message.ack().await.unwrap();

    // Without a client certificate the broker refuses the handshake: the link stays down.
    let (anonymous, _incoming) = Link::start(
        config(broker.port, "anonymous", pki.path(), false),
        Outbox::open(store.path().join("anonymous")).unwrap(),
        shutdown.clone(),
    )
    .unwrap();
    let down = wait_state(&anonymous, |s| matches!(s, LinkState::Down { .. })).await;
    let LinkState::Down { last_error, .. } = &down else {
        unreachable!()
    };
    assert!(last_error.contains("CertificateRequired"), "{down:?}");
    assert_eq!(anonymous.stats().connects, 0);

    shutdown.cancel();
    for handle in [&platform, &station, &anonymous] {
        tokio::time::timeout(WAIT, handle.stopped()).await.unwrap();
    }
}
