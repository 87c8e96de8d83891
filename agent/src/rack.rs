//! Which USB port each token is plugged into (pure): USB arrivals matched to the tokens the
//! slot scans find, without assuming that the USB serial is the token serial.
//!
//! A token is matched to a pending arrival, in this order:
//! 1. **USB serial**: the device's USB serial string is the token serial (hsm-sim's default
//!    tokens, many Ukeys);
//! 2. **slot description**: the module's `CK_SLOT_INFO.slotDescription` names the port path
//!    (hsm-sim's default tokens; some vendor modules);
//! 3. **elimination**: the arrival is the only one waiting, and exactly one token that was
//!    not present when it arrived is unmatched (of the arrival's model's module). This is a
//!    guess, and the inventory says so.
//!
//! Two tokens of a model that names neither, plugged in within one scan, stay unmatched (no
//! port, no position) until one is re-plugged on its own. This module does no IO and knows
//! nothing of PKCS#11; the daemon feeds it arrivals, departures and scans.

use std::collections::{BTreeMap, BTreeSet};

use tokio::time::Instant;

use crate::desk::TokenKey;
use crate::usb::UsbDevice;

/// How a token's port became known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mapping {
    /// The USB serial string is the token serial.
    UsbSerial,
    /// The module's slot description names the port.
    SlotDescription,
    /// The one new token after the arrival: a guess.
    Elimination,
}

impl Mapping {
    /// Whether the port is a guess.
    pub fn is_guess(self) -> bool {
        self == Mapping::Elimination
    }
}

/// A token's port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Port {
    /// The USB port path.
    pub path: String,
    /// USB vendor and product id of the device there (which model the token is).
    pub ids: (u16, u16),
    /// How it was matched.
    pub mapping: Mapping,
}

/// What the matching needs to know of a token the scan found.
#[derive(Debug, Clone)]
pub struct Seen<'a> {
    /// The desk's key of the token.
    pub key: &'a TokenKey,
    /// The token serial (empty when it has none).
    pub serial: &'a str,
    /// The module's description of its slot.
    pub slot_description: &'a str,
    /// Index of the module serving it.
    pub module: usize,
}

/// A USB arrival waiting for its token.
#[derive(Debug, Clone)]
struct Pending {
    device: UsbDevice,
    /// The module serving the device's model, if the model is configured.
    module: Option<usize>,
    /// Tokens present when the device arrived: none of them is its token.
    before: BTreeSet<TokenKey>,
    deadline: Instant,
}

/// Pending arrivals and the ports of matched tokens.
#[derive(Debug, Default)]
pub struct PortTable {
    pending: BTreeMap<String, Pending>,
    ports: BTreeMap<TokenKey, Port>,
}

impl PortTable {
    /// A device arrived at a port; `present` are the tokens known now, `module` the module
    /// serving its model, `deadline` when to give up waiting for its token.
    pub fn arrived(
        &mut self,
        device: UsbDevice,
        module: Option<usize>,
        present: impl IntoIterator<Item = TokenKey>,
        deadline: Instant,
    ) {
        // A new device at a port replaces whatever was matched there.
        self.ports.retain(|_, p| p.path != device.port_path);
        self.pending.insert(
            device.port_path.clone(),
            Pending {
                device,
                module,
                before: present.into_iter().collect(),
                deadline,
            },
        );
    }

    /// The device at `port` left: its wait ends and its token has no port any more.
    pub fn left(&mut self, port: &str) {
        self.pending.remove(port);
        self.ports.retain(|_, p| p.path != port);
    }

    /// A token is no longer present.
    pub fn token_gone(&mut self, key: &TokenKey) {
        self.ports.remove(key);
    }

    /// A token was renamed (a blank one got its serial at initialization).
    pub fn rekey(&mut self, old: &TokenKey, new: TokenKey) {
        if let Some(p) = self.ports.remove(old) {
            self.ports.insert(new, p);
        }
    }

    /// The port of a token, if known.
    pub fn port_of(&self, key: &TokenKey) -> Option<&Port> {
        self.ports.get(key)
    }

    /// Matches pending arrivals with the tokens a scan found; returns the new matches.
    pub fn match_tokens(&mut self, tokens: &[Seen<'_>]) -> Vec<(TokenKey, Port)> {
        let mut matched = Vec::new();
        let unmatched = |ports: &BTreeMap<TokenKey, Port>, t: &Seen<'_>| !ports.contains_key(t.key);
        // 1 and 2: what the token or its module says.
        let waiting: Vec<String> = self.pending.keys().cloned().collect();
        for port in waiting {
            let Some(p) = self.pending.get(&port) else {
                continue;
            };
            let by_serial = p
                .device
                .serial
                .as_deref()
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .and_then(|usb| {
                    tokens
                        .iter()
                        .find(|t| unmatched(&self.ports, t) && t.serial == usb)
                });
            let found = match by_serial {
                Some(t) => Some((t, Mapping::UsbSerial)),
                None => tokens
                    .iter()
                    .find(|t| unmatched(&self.ports, t) && names_port(t.slot_description, &port))
                    .map(|t| (t, Mapping::SlotDescription)),
            };
            if let Some((t, mapping)) = found {
                self.assign(&port, t.key.clone(), mapping, &mut matched);
            }
        }
        // 3: by elimination, only when it cannot be wrong about which arrival.
        if self.pending.len() == 1
            && let Some((port, p)) = self.pending.iter().next()
        {
            let fresh: Vec<&Seen<'_>> = tokens
                .iter()
                .filter(|t| unmatched(&self.ports, t) && !p.before.contains(t.key))
                .filter(|t| p.module.is_none_or(|m| m == t.module))
                .collect();
            if let [only] = fresh.as_slice() {
                let port = port.clone();
                self.assign(&port, only.key.clone(), Mapping::Elimination, &mut matched);
            }
        }
        matched
    }

    fn assign(
        &mut self,
        port: &str,
        key: TokenKey,
        mapping: Mapping,
        matched: &mut Vec<(TokenKey, Port)>,
    ) {
        let Some(p) = self.pending.remove(port) else {
            return;
        };
        let entry = Port {
            path: p.device.port_path,
            ids: (p.device.vendor_id, p.device.product_id),
            mapping,
        };
        self.ports.insert(key.clone(), entry.clone());
        matched.push((key, entry));
    }

    /// Arrivals whose token did not appear by their deadline (they stop waiting).
    pub fn expired(&mut self, now: Instant) -> Vec<UsbDevice> {
        let late: Vec<String> = self
            .pending
            .iter()
            .filter(|(_, p)| p.deadline <= now)
            .map(|(k, _)| k.clone())
            .collect();
        late.into_iter()
            .filter_map(|k| self.pending.remove(&k))
            .map(|p| p.device)
            .collect()
    }
}

/// Whether a slot description names `port` as a whole (`1-1.1` is not named by a text
/// holding `1-1.10`).
pub fn names_port(description: &str, port: &str) -> bool {
    let bytes = description.as_bytes();
    description.match_indices(port).any(|(at, _)| {
        let before = at.checked_sub(1).map(|i| bytes[i]);
        let after = bytes.get(at + port.len()).copied();
        let part = |b: Option<u8>| b.is_some_and(|b| b.is_ascii_digit() || b == b'.' || b == b'-');
        !part(before) && !part(after)
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use std::time::Duration;

    fn device(port: &str, serial: Option<&str>) -> UsbDevice {
        UsbDevice {
            port_path: port.into(),
            vendor_id: 0x096e,
            product_id: 0x0807,
            serial: serial.map(str::to_string),
            accessible: true,
        }
    }

    fn key(s: &str) -> TokenKey {
        TokenKey::Serial(s.into())
    }

    fn seen<'a>(key: &'a TokenKey, description: &'a str) -> Seen<'a> {
        Seen {
            key,
            serial: key.serial().unwrap_or(""),
            slot_description: description,
            module: 1,
        }
    }

    fn later() -> Instant {
        Instant::now() + Duration::from_secs(60)
    }

    #[test]
    fn ports_in_descriptions_are_whole() {
        assert!(names_port("hsm-sim rack slot 0 (USB 1-1.1)", "1-1.1"));
        assert!(!names_port("hsm-sim rack slot 9 (USB 1-1.10)", "1-1.1"));
        assert!(!names_port("reader 21-1.1", "1-1.1"));
        assert!(!names_port("Feitian ePass2003 256", "1-1.1"));
    }

    #[test]
    fn a_usb_serial_equal_to_the_token_serial_matches_exactly() {
        let mut t = PortTable::default();
        t.arrived(device("1-1.2", Some("AAAA")), Some(1), [], later());
        let (a, b) = (key("AAAA"), key("BBBB"));
        let m = t.match_tokens(&[seen(&b, ""), seen(&a, "")]);
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].0, a);
        assert_eq!(m[0].1.mapping, Mapping::UsbSerial);
        assert!(!m[0].1.mapping.is_guess());
        assert_eq!(t.port_of(&a).unwrap().path, "1-1.2");
        assert!(t.port_of(&b).is_none());
    }

    #[test]
    fn a_slot_description_naming_the_port_matches_exactly() {
        let mut t = PortTable::default();
        t.arrived(device("1-1.3", Some("FT0001")), Some(1), [], later());
        t.arrived(device("1-1.4", None), Some(1), [], later());
        let (a, b) = (key("AAAA"), key("BBBB"));
        let m = t.match_tokens(&[seen(&a, "slot (USB 1-1.4)"), seen(&b, "slot (USB 1-1.3)")]);
        assert_eq!(m.len(), 2);
        assert_eq!(t.port_of(&a).unwrap().path, "1-1.4");
        assert_eq!(t.port_of(&b).unwrap().path, "1-1.3");
        assert_eq!(t.port_of(&b).unwrap().mapping, Mapping::SlotDescription);
    }

    #[test]
    fn elimination_takes_the_one_new_token_and_says_it_is_a_guess() {
        let mut t = PortTable::default();
        let (old, new) = (key("OLD0"), key("NEW0"));
        t.arrived(device("1-1.5", None), Some(1), [old.clone()], later());
        let m = t.match_tokens(&[seen(&old, "reader 1"), seen(&new, "reader 2")]);
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].0, new);
        assert!(m[0].1.mapping.is_guess());
        assert!(t.port_of(&old).is_none());
    }

    #[test]
    fn elimination_refuses_when_it_could_be_wrong() {
        // Two arrivals, two new tokens: which is which cannot be told.
        let mut t = PortTable::default();
        t.arrived(device("1-1.1", None), Some(1), [], later());
        t.arrived(device("1-1.2", None), Some(1), [], later());
        let (a, b) = (key("AAAA"), key("BBBB"));
        assert!(t.match_tokens(&[seen(&a, ""), seen(&b, "")]).is_empty());
        // One arrival, two new tokens: neither.
        let mut t = PortTable::default();
        t.arrived(device("1-1.1", None), Some(1), [], later());
        assert!(t.match_tokens(&[seen(&a, ""), seen(&b, "")]).is_empty());
        // A new token of another model's module is not this arrival's.
        let mut other = seen(&a, "");
        other.module = 2;
        assert!(t.match_tokens(&[other]).is_empty());
        // The second one pulled out: the remaining new token is the arrival's.
        assert_eq!(t.match_tokens(&[seen(&b, "")]).len(), 1);
    }

    #[test]
    fn departures_and_deadlines_end_waits_and_ports() {
        let mut t = PortTable::default();
        let a = key("AAAA");
        t.arrived(device("1-1.1", Some("AAAA")), None, [], later());
        t.match_tokens(&[seen(&a, "")]);
        assert!(t.port_of(&a).is_some());
        t.left("1-1.1");
        assert!(t.port_of(&a).is_none());
        t.arrived(device("1-1.2", Some("ZZZZ")), None, [], Instant::now());
        let late = t.expired(Instant::now());
        assert_eq!(late.len(), 1);
        assert_eq!(late[0].port_path, "1-1.2");
        assert!(t.expired(Instant::now()).is_empty());
        t.arrived(device("1-1.3", Some("AAAA")), None, [], later());
        t.match_tokens(&[seen(&a, "")]);
        t.rekey(&a, key("NEW1"));
        assert!(t.port_of(&a).is_none());
        assert_eq!(t.port_of(&key("NEW1")).unwrap().path, "1-1.3");
        t.token_gone(&key("NEW1"));
        assert!(t.port_of(&key("NEW1")).is_none());
    }
}
