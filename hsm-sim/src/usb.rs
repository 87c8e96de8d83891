//! The virtual USB bus: every token in the rack also shows up as a USB device in `usb.json`
//! of the state directory, so the agent can watch it through the same seam as rusb hot-plug.
//!
//! The format is deliberately small (documented in `hsm-sim/README.md`) so that readers need
//! not depend on this crate:
//!
//! ```json
//! { "version": 1, "generation": 7,
//!   "devices": [ { "bus": 1, "port_path": "1-1.3", "slot": 2, "vendor_id": 21843,
//!                  "product_id": 19201, "serial": "3F2A9C0B7D1E4A56",
//!                  "manufacturer": "ukey-station hsm-sim", "product": "Ukey-Sim" } ] }
//! ```
//!
//! `generation` increases with every change of the rack; the file is replaced atomically.
//! This module reads and writes the file; it does not poll or notify.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The file name of the bus in the state directory.
pub const USB_FILE: &str = "usb.json";

/// One attached device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsbDevice {
    /// USB bus number (always 1: one virtual hub).
    pub bus: u8,
    /// Port path as Linux names it (`1-1.3`: bus 1, hub port 1, downstream port 3).
    pub port_path: String,
    /// The rack slot (= PKCS#11 slot id) behind this port.
    pub slot: usize,
    /// USB vendor id.
    pub vendor_id: u16,
    /// USB product id.
    pub product_id: u16,
    /// The device's serial-number string: the token serial.
    pub serial: String,
    /// Manufacturer string.
    pub manufacturer: String,
    /// Product string.
    pub product: String,
    /// Whether the host may open the device; `false` simulates missing udev rules.
    #[serde(default = "yes")]
    pub accessible: bool,
}

fn yes() -> bool {
    true
}

/// The whole bus.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct UsbBus {
    /// Format version (1).
    pub version: u32,
    /// Increases with every change of the rack.
    pub generation: u64,
    /// Attached devices, by slot.
    pub devices: Vec<UsbDevice>,
}

/// The devices attached now; an empty bus when the directory holds no rack yet.
pub fn attached(dir: &Path) -> Result<UsbBus> {
    let path = dir.join(USB_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => serde_json::from_str(&text).map_err(|e| Error::Corrupt {
            path,
            reason: e.to_string(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(UsbBus::default()),
        Err(e) => Err(Error::io("read", path, e)),
    }
}

pub(crate) fn write(dir: &Path, bus: &UsbBus) -> Result<()> {
    crate::rack::write_usb(&dir.join(USB_FILE), bus)
}
