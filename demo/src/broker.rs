//! The demo's embedded MQTT broker: rumqttd on a free loopback port, in this process.
//!
//! rumqttd takes a fixed listen address and reports no bound port, so a free port is found
//! by binding `127.0.0.1:0` and released for rumqttd to take; a port taken in between makes
//! rumqttd's server thread end, and the next free port is tried. The broker is ready when a
//! TCP connection to it succeeds.
//!
//! What it does not do: persistence, TLS, authentication, or a clean stop — its threads end
//! with the process. It is for the demo only.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rumqttd::{Broker, Config, ConnectionSettings, ServerSettings};

use super::error::DemoError;

/// The largest MQTT packet the broker accepts: above the platform's and the agent's limits.
const MAX_PAYLOAD_BYTES: usize = 512 * 1024;

/// How long one start attempt may take before the broker counts as not started.
const START_TIMEOUT: Duration = Duration::from_secs(5);

/// A running embedded broker.
#[derive(Debug)]
pub(crate) struct EmbeddedBroker {
    addr: SocketAddr,
}

impl EmbeddedBroker {
    /// Starts rumqttd (MQTT 3.1.1) on a free loopback port and waits until it accepts
    /// connections.
    pub(crate) fn start() -> Result<EmbeddedBroker, DemoError> {
        let mut last = String::from("no attempt made");
        for _ in 0..5 {
            let port = free_port()?;
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            match start_on(addr) {
                Ok(()) => return Ok(EmbeddedBroker { addr }),
                Err(e) => last = e,
            }
        }
        Err(DemoError::Broker(last))
    }

    /// The port it listens on (on 127.0.0.1).
    pub(crate) fn port(&self) -> u16 {
        self.addr.port()
    }
}

fn free_port() -> Result<u16, DemoError> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| DemoError::Broker(format!("no free loopback port: {e}")))
}

fn config(addr: SocketAddr) -> Config {
    let server = ServerSettings {
        name: "demo-v4".to_owned(),
        listen: addr,
        tls: None,
        next_connection_delay_ms: 1,
        connections: ConnectionSettings {
            connection_timeout_ms: 60_000,
            max_payload_size: MAX_PAYLOAD_BYTES,
            max_inflight_count: 100,
            auth: None,
            external_auth: None,
            dynamic_filters: true,
        },
    };
    Config {
        id: 0,
        router: rumqttd::RouterConfig {
            max_connections: 64,
            max_outgoing_packet_count: 200,
            max_segment_size: 16 * 1024 * 1024,
            max_segment_count: 10,
            ..Default::default()
        },
        v4: Some(HashMap::from([("1".to_owned(), server)])),
        ..Default::default()
    }
}

/// One attempt on `addr`: `Ok` once a connection succeeds.
fn start_on(addr: SocketAddr) -> Result<(), String> {
    let (ended_tx, ended_rx) = mpsc::channel::<String>();
    let config = config(addr);
    std::thread::Builder::new()
        .name("mqtt-broker".to_owned())
        .spawn(move || {
            let mut broker = Broker::new(config);
            // `start` blocks while the server runs; it returns only when the server ended.
            let why = match broker.start() {
                Ok(()) => format!("the server on {addr} ended (port taken?)"),
                Err(e) => format!("the server on {addr} failed: {e}"),
            };
            let _ = ended_tx.send(why);
        })
        .map_err(|e| format!("cannot start the broker thread: {e}"))?;
    let deadline = Instant::now() + START_TIMEOUT;
    let mut wait = Duration::from_millis(2);
    loop {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        if let Ok(why) = ended_rx.try_recv() {
            return Err(why);
        }
        if Instant::now() >= deadline {
            return Err(format!("no connection to {addr} within {START_TIMEOUT:?}"));
        }
        // Readiness polling: rumqttd has no "listening" notification.
        std::thread::sleep(wait);
        wait = (wait * 2).min(Duration::from_millis(50));
    }
}
