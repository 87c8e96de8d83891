//! The running desk of the demo: the broker (embedded or external), the simulated platform
//! and the agent, started with the agent's configuration written to a file and loaded as
//! `ukey-agent run` loads it ([`start_station`]), and stopped as on SIGTERM.
//!
//! What it does not do: plug tokens in or dispatch jobs (the desk and the lifecycle do).

use std::path::Path;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use ukey_agent::config::{Config, TimeoutConfig};
use ukey_protocol::{PresenceStatus, StationId};

use super::broker;
use super::cli::BrokerAddr;
use super::desk_builder::{self, DeskBuilder};
use super::error::DemoError;
use super::interrupt::Interrupt;
use hsm_sim::rack::Rack;
use ukey_platform_sim::Platform;

/// The station id of the demo's desk.
const STATION: &str = "demo-desk";

/// How long the agent may take to connect and announce itself.
const AGENT_START_TIMEOUT: Duration = Duration::from_secs(30);

/// How long the agent may take to stop (its own `shutdown_grace_secs` is 10 s: jobs reach a
/// safe step, the outbox is flushed); after that it is abandoned.
pub(crate) const AGENT_STOP_TIMEOUT: Duration = Duration::from_secs(20);

/// The running parts of the demo's desk: broker, platform and agent.
pub(crate) struct Station {
    /// The simulated platform.
    pub(crate) platform: Platform,
    /// The desk's station id.
    pub(crate) station: StationId,
    /// The agent's task.
    pub(crate) agent: tokio::task::JoinHandle<Result<(), ukey_agent::daemon::DaemonError>>,
    /// Stops the agent as SIGTERM does.
    pub(crate) shutdown: CancellationToken,
    /// `embedded 127.0.0.1:PORT` or the external broker.
    pub(crate) broker: String,
    /// From the start of the command until the agent was online.
    pub(crate) setup: Duration,
    /// The desk's indicator panel, emulated on a pseudo-terminal (with a rack only).
    pub(crate) panel: Option<hsm_sim::panel::EmulatedPanel>,
}

impl Station {
    /// Stops the agent (as `ukey-agent run` does on SIGTERM); returns its error, if any.
    pub(crate) async fn stop_agent(&mut self) -> Option<String> {
        stop_agent(&self.shutdown, &mut self.agent).await
    }
}

/// Stops the agent as `ukey-agent run` does on SIGTERM and waits for it, at most
/// [`AGENT_STOP_TIMEOUT`]; an agent that takes longer is abandoned (its task is aborted;
/// whatever it still runs ends with the process). Returns why it did not stop cleanly.
async fn stop_agent(
    shutdown: &CancellationToken,
    agent: &mut tokio::task::JoinHandle<Result<(), ukey_agent::daemon::DaemonError>>,
) -> Option<String> {
    shutdown.cancel();
    match tokio::time::timeout(AGENT_STOP_TIMEOUT, &mut *agent).await {
        Ok(Ok(Ok(()))) => None,
        Ok(Ok(Err(e))) => Some(e.to_string()),
        Ok(Err(e)) => Some(e.to_string()),
        Err(_) => {
            agent.abort();
            tracing::warn!("the agent did not stop within {AGENT_STOP_TIMEOUT:?}; abandoned");
            Some(format!(
                "it did not stop within {} s and was abandoned",
                AGENT_STOP_TIMEOUT.as_secs()
            ))
        }
    }
}

/// Starts the broker (unless external), the platform and the agent, with the agent's
/// configuration written to a file and loaded as `ukey-agent run` loads it; returns once
/// the agent is online, or `None` when interrupted before (the agent stopped again).
pub(crate) async fn start_station(
    broker_addr: Option<&BrokerAddr>,
    root: &Path,
    files: &Path,
    module: &Path,
    rack: Option<&Rack>,
    started: Instant,
    interrupt: &Interrupt,
) -> Result<Option<Station>, DemoError> {
    let (host, port, broker) = match broker_addr {
        Some(b) => (b.host.clone(), b.port, format!("{}:{}", b.host, b.port)),
        None => {
            let b = tokio::task::spawn_blocking(broker::EmbeddedBroker::start)
                .await
                .map_err(|e| DemoError::Broker(e.to_string()))??;
            let port = b.port();
            (
                "127.0.0.1".to_owned(),
                port,
                format!("embedded 127.0.0.1:{port}"),
            )
        }
    };
    let station = StationId::new(STATION).map_err(|e| DemoError::Agent(e.to_string()))?;
    let builder = DeskBuilder::new(
        station.clone(),
        files.join("agent-state"),
        host.clone(),
        port,
        module,
    )
    .usb_sim(rack.map(|_| root))
    .timeouts(TimeoutConfig {
        certificates_secs: 120,
        token_removed_secs: 120,
        bind_ack_secs: 120,
        shutdown_grace_secs: 10,
        ..TimeoutConfig::default()
    });
    let platform = builder.start_platform(|_| {}).await?;
    let trust = platform.write_station_trust(&station, &files.join("trust"))?;
    let config_path = files.join("agent.toml");
    // The rack's indicator panel, emulated on a pty: the agent drives its lights.
    let panel = match rack {
        Some(r) => {
            let slots = u8::try_from(r.slot_count().unwrap_or(4).clamp(1, 64)).unwrap_or(4);
            let (panel, _events) =
                hsm_sim::panel::EmulatedPanel::start(hsm_sim::panel::PanelOptions {
                    slots,
                    link: Some(files.join("panel")),
                    ..Default::default()
                })
                .map_err(|e| DemoError::Agent(format!("indicator panel: {e}")))?;
            Some(panel)
        }
        None => None,
    };
    let panel_link = panel.as_ref().map(|_| files.join("panel"));
    let config = builder.panel(panel_link.as_deref()).config(&trust);
    desk_builder::write_config(&config, "`ukey-demo`", &config_path)?;
    let config = Config::load_checked(&config_path).map_err(|e| DemoError::Agent(e.to_string()))?;

    // The agent's audit log in its state folder, as `ukey-agent run` keeps it: after the
    // run, `ukey-agent audit verify -c <dir>/demo/agent.toml` checks it.
    let audit =
        ukey_agent::audit::AuditWriter::open(&config.state_dir, config.audit.max_file_bytes)
            .map_err(|e| DemoError::Agent(e.to_string()))?;
    let shutdown = CancellationToken::new();
    let mut agent = tokio::spawn(ukey_agent::daemon::run(config, audit, shutdown.clone()));
    let online = platform.wait_until("the agent's birth message", AGENT_START_TIMEOUT, |r| {
        r.current_presence(&station)
            .filter(|p| p.status == PresenceStatus::Online)
            .map(|_| ())
    });
    let interrupted = tokio::select! {
        waited = online => {
            waited?;
            false
        }
        ended = &mut agent => {
            let why = match ended {
                Ok(Ok(())) => "it stopped before it was online".to_owned(),
                Ok(Err(e)) => e.to_string(),
                Err(e) => e.to_string(),
            };
            return Err(DemoError::Agent(why));
        }
        () = interrupt.cancelled() => true,
    };
    if interrupted {
        if let Some(why) = stop_agent(&shutdown, &mut agent).await {
            tracing::warn!("the agent, stopped while starting: {why}");
        }
        platform.shutdown().await;
        return Ok(None);
    }
    Ok(Some(Station {
        platform,
        station,
        agent,
        shutdown,
        broker,
        setup: started.elapsed(),
        panel,
    }))
}
