//! The retained inventory: the desk's slot table and its alerts, built from the daemon's
//! state (pure builders) and published when it changed, at most every `INVENTORY_EVERY`.
//!
//! What this module does not do: decide a token's state (the desk's classification) or
//! notice a problem (the seats, the USB watcher, the stuck-call check do).

use std::collections::BTreeMap;
use std::path::PathBuf;

use ukey_protocol::codes::{self, Code};
use ukey_protocol::ids::{JobId, TokenSerial};
use ukey_protocol::inventory::{DeskAlert, Inventory, SlotInfo, SlotPort, TokenInfo, TokenState};
use ukey_protocol::{Message, V1};

use crate::config::RackConfig;
use crate::desk::TokenKey;
use crate::job::code;
use crate::rack::PortTable;

use super::claims::wrong_token;
use super::seats::Seat;
use super::{Daemon, now_utc};

/// What the retained inventory says, without its number and time: published when it
/// changed since the last one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct DeskReport {
    /// The slot table.
    pub(super) slots: Vec<SlotInfo>,
    /// Desk problems that are not a token's state.
    pub(super) alerts: Vec<DeskAlert>,
}

/// Where tokens are on the rack: the configured positions of USB ports and the port each
/// token was matched to.
#[derive(Clone, Copy)]
pub(super) struct RackView<'a> {
    pub(super) config: &'a RackConfig,
    pub(super) ports: &'a PortTable,
}

impl RackView<'_> {
    /// A token's slot as the inventory numbers it: its port's configured position. A token
    /// on a port outside the configured rack (or not matched to a port) gets
    /// `1000 × (module + 1) + slot id`, so it still shows; with no rack configured,
    /// `module × 1000 + slot id` (the slot ids are the positions of hsm-sim's default tokens).
    pub(super) fn slot(&self, key: &TokenKey, seat: &Seat) -> u32 {
        let slot_id = usize::try_from(seat.present.slot % 1000).unwrap_or(0);
        let number = if self.config.positions.is_empty() {
            seat.module * 1000 + slot_id
        } else if let Some(position) = self.position(key) {
            return position;
        } else {
            (seat.module + 1) * 1000 + slot_id
        };
        u32::try_from(number).unwrap_or(u32::MAX)
    }

    /// The configured position of a token's port.
    pub(super) fn position(&self, key: &TokenKey) -> Option<u32> {
        self.config.position_of(&self.ports.port_of(key)?.path)
    }

    /// A token's light on the panel: its position; with no rack configured, its PKCS#11
    /// slot id. A token off the configured rack has none.
    pub(super) fn panel(&self, key: &TokenKey, seat: &Seat) -> Option<usize> {
        let n = if self.config.positions.is_empty() {
            usize::try_from(seat.present.slot).ok()?
        } else {
            usize::try_from(self.position(key)?).ok()?
        };
        (n < crate::panel::MAX_SLOTS).then_some(n)
    }

    /// The port the inventory shows for a token.
    pub(super) fn port(&self, key: &TokenKey) -> Option<SlotPort> {
        let port = self.ports.port_of(key)?;
        Some(SlotPort {
            path: ukey_protocol::fit_text(&port.path, 64),
            guessed: port.mapping.is_guess(),
        })
    }
}

/// The slot table (pure): one slot per seat (the first seat of a slot number wins), a
/// token without a serial only when damaged (a blank SoftHSM2 slot shows none), a finished
/// token still naming its job while `unconfirmed_job` says the platform has not confirmed it.
pub(super) fn inventory_slots<'a>(
    seats: &BTreeMap<TokenKey, Seat>,
    rack: RackView<'_>,
    unconfirmed_job: impl Fn(&str) -> Option<&'a JobId>,
) -> Vec<SlotInfo> {
    let mut slots: Vec<SlotInfo> = Vec::new();
    for (key, seat) in seats {
        let slot = rack.slot(key, seat);
        if slots.iter().any(|s| s.slot == slot) {
            continue;
        }
        let serial = key.serial().and_then(|s| TokenSerial::new(s).ok());
        let damaged = seat.state == TokenState::Damaged;
        let token = (serial.is_some() || damaged).then(|| TokenInfo {
            serial,
            model: if seat.present.model.is_empty() {
                "unknown".into()
            } else {
                seat.present.model.chars().take(64).collect()
            },
            state: seat.state,
            job_id: seat
                .job
                .clone()
                .or_else(|| unconfirmed_job(&seat.present.serial).cloned()),
            certificates: seat.certificates.clone(),
            damage: seat.damage.clone().filter(|_| damaged),
        });
        slots.push(SlotInfo {
            slot,
            token,
            port: rack.port(key),
        });
    }
    slots.truncate(ukey_protocol::inventory::MAX_SLOTS);
    slots
}

/// A job whose token is finished while the platform's acknowledgement of its last event is
/// overdue.
pub(super) struct Overdue<'a> {
    pub(super) job: &'a JobId,
    pub(super) serial: Option<&'a str>,
    pub(super) step: Option<&'a str>,
}

/// Where the desk's alerts come from (see [`desk_alerts`]).
pub(super) struct AlertSources<'a> {
    /// PKCS#11 modules that could not be loaded (path, reason).
    pub(super) module_problems: &'a [(PathBuf, String)],
    /// Wrong tokens: the token, the job waiting for another one, and that one's serial.
    pub(super) wrong_tokens: Vec<(&'a TokenKey, JobId, TokenSerial)>,
    /// USB devices present but not usable (port → code, message).
    pub(super) usb_problems: &'a BTreeMap<String, (Code, String)>,
    /// Token calls running past the limit.
    pub(super) stuck_calls: Vec<DeskAlert>,
    /// Jobs whose final acknowledgement is overdue.
    pub(super) overdue: Vec<Overdue<'a>>,
    /// `timeouts.bind_ack_secs` and `timeouts.resend_secs`, for the messages.
    pub(super) bind_ack_secs: u64,
    pub(super) resend_secs: u64,
}

/// The desk's alerts (pure), in this order: modules, wrong tokens, USB problems, stuck calls,
/// then overdue acknowledgements — last, so that an outage with a full rack cannot crowd out
/// the problems above; what does not fit is summed up in the last alert.
pub(super) fn desk_alerts(sources: AlertSources<'_>) -> Vec<DeskAlert> {
    let mut alerts = Vec::new();
    for (path, reason) in sources.module_problems {
        alerts.push(DeskAlert {
            code: code(codes::MODULE_MISSING),
            port: None,
            message: ukey_protocol::fit_text(
                &format!(
                    "PKCS#11 module {} cannot be loaded: {reason}",
                    path.display()
                ),
                512,
            ),
        });
    }
    for (key, job, wanted) in &sources.wrong_tokens {
        alerts.push(DeskAlert {
            code: code(codes::WRONG_TOKEN),
            port: None,
            message: ukey_protocol::fit_text(
                &format!(
                    "token {key} is not the one job {job} waits for ({wanted}); it is left untouched"
                ),
                512,
            ),
        });
    }
    for (port, (code_str, message)) in sources.usb_problems {
        alerts.push(DeskAlert {
            code: code(*code_str),
            port: Some(ukey_protocol::fit_text(port, 64)),
            message: ukey_protocol::fit_text(message, 512),
        });
    }
    alerts.extend(sources.stuck_calls);
    let overdue = &sources.overdue;
    let room = ukey_protocol::inventory::MAX_ALERTS.saturating_sub(alerts.len());
    let shown = if overdue.len() > room {
        room.saturating_sub(1)
    } else {
        overdue.len()
    };
    for o in &overdue[..shown] {
        alerts.push(DeskAlert {
            code: code(codes::PLATFORM_UNCONFIRMED),
            port: None,
            message: ukey_protocol::fit_text(
                &format!(
                    "job {}: token {} is finished (it may be taken out), but the platform has not acknowledged the {} event for over {} s; the event is sent again every {} s and the job succeeds when the platform acknowledges it",
                    o.job,
                    o.serial.unwrap_or("-"),
                    o.step.unwrap_or("last"),
                    sources.bind_ack_secs,
                    sources.resend_secs,
                ),
                512,
            ),
        });
    }
    if shown < overdue.len() && room > 0 {
        let rest: Vec<String> = overdue[shown..]
            .iter()
            .map(|o| format!("{} ({})", o.job, o.serial.unwrap_or("-")))
            .collect();
        alerts.push(DeskAlert {
            code: code(codes::PLATFORM_UNCONFIRMED),
            port: None,
            message: ukey_protocol::fit_text(
                &format!(
                    "{} more jobs with finished tokens whose last event the platform has not acknowledged for over {} s: {}",
                    rest.len(),
                    sources.bind_ack_secs,
                    rest.join(", ")
                ),
                512,
            ),
        });
    }
    alerts.truncate(ukey_protocol::inventory::MAX_ALERTS);
    alerts
}

impl Daemon {
    /// The inventory as the daemon's state says now.
    pub(super) fn desk_report(&self) -> DeskReport {
        let slots = inventory_slots(&self.seats, self.rack_view(), |serial| {
            self.unconfirmed_job(serial)
        });
        let view = self.desk_view();
        let wrong_tokens = self
            .seats
            .iter()
            .filter_map(|(key, seat)| {
                wrong_token(seat, &view).map(|(job, wanted)| (key, job, wanted))
            })
            .collect();
        let overdue = self
            .jobs
            .iter()
            .filter(|(_, e)| e.machine.unconfirmed() == Some(true))
            .map(|(job, e)| Overdue {
                job,
                serial: e.machine.serial().map(|s| s.as_str()),
                step: e.machine.current_step().map(|s| s.as_str()),
            })
            .collect();
        let mut alerts = desk_alerts(AlertSources {
            module_problems: &self.module_problems,
            wrong_tokens,
            usb_problems: &self.usb_problems,
            stuck_calls: self.stuck_calls.alerts(),
            overdue,
            bind_ack_secs: self.config.timeouts.bind_ack_secs,
            resend_secs: self.config.timeouts.resend_secs,
        });
        // The desk's own problems come first: they concern every slot.
        alerts.splice(0..0, self.desk_policy_alerts());
        alerts.truncate(ukey_protocol::inventory::MAX_ALERTS);
        DeskReport { slots, alerts }
    }

    /// Where the tokens are on the rack.
    pub(super) fn rack_view(&self) -> RackView<'_> {
        RackView {
            config: &self.config.rack,
            ports: &self.ports,
        }
    }

    /// Whether the inventory differs from the one published last.
    pub(super) fn inventory_changed(&self, report: &DeskReport) -> bool {
        self.inventory_published.as_ref() != Some(report)
    }

    /// Publishes `report` as the retained inventory, numbered after the last one.
    pub(super) fn publish_inventory(&mut self, report: DeskReport) {
        let inventory = Inventory {
            alerts: report.alerts.clone(),
            v: V1,
            station_id: self.station.clone(),
            seq: self.inventory_seq.next(),
            at: now_utc(),
            slots: report.slots.clone(),
        };
        self.inventory_published = Some(report);
        match inventory.encode() {
            Ok(payload) => {
                if let Err(e) = self.link.publish_retained(self.topics.inventory(), payload) {
                    tracing::warn!(error = %e, "inventory not published");
                }
            }
            Err(e) => tracing::warn!(error = %e, "inventory cannot be encoded"),
        }
    }
}

#[cfg(test)]
mod tests;
