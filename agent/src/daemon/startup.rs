//! Start-up wiring that is not the loop: the PKCS#11 modules, the link's settings, the
//! USB watcher's thread (the presence sequence number is in `sequences`).
//!
//! What this module does not do: load trust material or open the journal (`run` does, in
//! order, because each step can refuse to start the daemon).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use ukey_protocol::ids::StationId;
use ukey_protocol::presence::{Presence, PresenceStatus};
use ukey_protocol::topic::Topics;
use ukey_protocol::{Message, V1};

use crate::config::{Config, UsbWatcherKind};
use crate::device::{self, DeviceLibrary, Interface};
use crate::link::LinkConfig;
use crate::usb::{self, ModelFilter, UsbEvent};

use super::{Daemon, DaemonError, now_utc};

/// Loads the configured PKCS#11 modules (the default one and each model's): one that cannot
/// be loaded is reported (its tokens are not served) as long as another one loads.
pub(super) async fn load_modules(
    config: &Config,
) -> Result<(Vec<Arc<dyn DeviceLibrary>>, Vec<(PathBuf, String)>), DaemonError> {
    let mut modules = Vec::new();
    let mut libraries: Vec<(PathBuf, Interface)> =
        vec![(config.pkcs11.default_module.clone(), Interface::Pkcs11)];
    for model in &config.models {
        if !libraries.iter().any(|(path, _)| *path == model.module) {
            libraries.push((model.module.clone(), model.interface));
        }
    }
    let mut module_problems = Vec::new();
    for (path, interface) in libraries {
        let shown = path.clone();
        match tokio::task::spawn_blocking(move || device::load(interface, &path))
            .await
            .map_err(|e| DaemonError::Config(e.to_string()))?
        {
            Ok(module) => modules.push(module),
            Err(e) => {
                tracing::error!(module = %shown.display(), error = %e, "PKCS#11 module cannot be loaded: its tokens will not be served");
                module_problems.push((shown, e.to_string()));
            }
        }
    }
    if modules.is_empty() {
        return Err(DaemonError::Config(format!(
            "no PKCS#11 module could be loaded: {}",
            module_problems
                .iter()
                .map(|(p, e)| format!("{}: {e}", p.display()))
                .collect::<Vec<_>>()
                .join("; ")
        )));
    }

    Ok((modules, module_problems))
}

/// The link's settings: the broker, the station's subscriptions, and the presence messages
/// (birth and last will) numbered by `presence_seq`.
pub(super) fn link_config(
    config: &Config,
    topics: &Topics,
    station: &StationId,
    presence_seq: u64,
) -> Result<LinkConfig, DaemonError> {
    let presence = |status| Presence {
        v: V1,
        station_id: station.clone(),
        status,
        seq: presence_seq,
        agent_version: env!("CARGO_PKG_VERSION").to_owned(),
        at: now_utc(),
    };
    let encode = |p: Presence| p.encode().map_err(|e| DaemonError::Config(e.to_string()));
    let mut link_config = LinkConfig::for_broker(&config.broker, &config.station_id);
    link_config.resend_after = Some(config.timeouts.resend());
    // The platform's event acknowledgements need no PUBACK: a lost one only makes an event
    // be published again (PROTOCOL.md, "Acknowledgement and de-duplication").
    let acks = topics.acks();
    (
        link_config.subscriptions_at_most_once,
        link_config.subscriptions,
    ) = topics
        .station_subscriptions()
        .into_iter()
        .partition(|filter| *filter == acks);
    link_config.presence_topic = topics.presence();
    link_config.birth_payload = encode(presence(PresenceStatus::Online))?;
    link_config.death_payload = encode(presence(PresenceStatus::Offline))?;
    Ok(link_config)
}

impl Daemon {
    pub(super) fn start_usb_watcher(
        &self,
        tx: mpsc::Sender<UsbEvent>,
        stop: CancellationToken,
    ) -> Option<std::thread::JoinHandle<Result<(), usb::UsbError>>> {
        let filter = ModelFilter::new(
            self.config
                .models
                .iter()
                .map(|m| (m.vendor_id, m.product_id)),
        );
        let poll = Duration::from_millis(self.config.pkcs11.scan_interval_ms.max(100));
        let watcher: Box<dyn usb::UsbWatcher> = match self.config.usb.watcher {
            UsbWatcherKind::None => return None,
            UsbWatcherKind::Rusb => Box::new(usb::RusbWatcher::new(filter, poll)),
            UsbWatcherKind::Sim => {
                let dir = self.config.usb.sim_dir.clone()?;
                Box::new(usb::SnapshotWatcher::new(
                    "hsm-sim virtual bus",
                    move || usb::read_sim_bus(&dir),
                    filter,
                    poll,
                ))
            }
        };
        match usb::spawn(watcher, tx, stop) {
            Ok(handle) => Some(handle),
            Err(e) => {
                tracing::warn!(error = %e, "USB watcher thread could not start; slot scan only");
                None
            }
        }
    }
}
