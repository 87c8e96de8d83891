//! The USB seam: which Ukeys are plugged into the desk's ports, as a stream of [`UsbEvent`]s.
//!
//! Two sources stand behind one interface ([`UsbWatcher`]):
//! - [`RusbWatcher`]: real USB through libusb. With hot-plug support it registers with
//!   `enumerate` so devices present at start are reported, and keeps a dedicated thread in
//!   `handle_events`; the callback only queues the device, and descriptors and serial strings
//!   are read afterwards on that thread (no synchronous USB I/O inside a callback). Without
//!   hot-plug (some containers) it falls back to polling the device list.
//! - [`SnapshotWatcher`]: anything that can list the attached devices on demand, polled and
//!   diffed — used for hsm-sim's virtual bus and for the rusb polling fallback.
//!
//! Only devices of a configured model ([`ModelFilter`]) are reported. A configured device that
//! cannot be opened is reported as [`UsbEvent::Inaccessible`] ("present but not accessible"),
//! which is not the same as absent. This module does not talk PKCS#11: matching a USB arrival
//! to its slot is the desk's job.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// A USB device as the desk sees it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UsbDevice {
    /// Where it is plugged in, e.g. `1-1.3` (bus, then port numbers): stable per physical port.
    pub port_path: String,
    /// USB vendor id.
    pub vendor_id: u16,
    /// USB product id.
    pub product_id: u16,
    /// The iSerialNumber string, when it could be read. Ukeys report their token serial here.
    pub serial: Option<String>,
    /// Whether the agent may open the device; a device it may not open is reported as
    /// [`UsbEvent::Inaccessible`], not as an arrival.
    pub accessible: bool,
}

impl UsbDevice {
    /// `vvvv:pppp` in hex, as `lsusb` prints it.
    pub fn id(&self) -> String {
        format!("{:04x}:{:04x}", self.vendor_id, self.product_id)
    }
}

/// What happened on the bus.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UsbEvent {
    /// A device of a configured model was plugged in (or was present at start).
    Arrived(UsbDevice),
    /// A device of a configured model was pulled out.
    Left(UsbDevice),
    /// A device of a configured model is present but cannot be opened: almost always missing
    /// udev rules or group membership.
    Inaccessible {
        /// The device, as far as its descriptor tells.
        device: UsbDevice,
        /// What libusb said.
        reason: String,
    },
}

/// Errors of the USB layer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UsbError {
    /// libusb could not be initialized (no USB on this machine, or no access to it at all).
    #[error("USB is not available: {0}")]
    Unavailable(String),
    /// The snapshot source failed.
    #[error("cannot list USB devices from {source_name}: {reason}")]
    Snapshot {
        /// Which source.
        source_name: String,
        /// Why.
        reason: String,
    },
}

/// Which (vendor, product) pairs the desk cares about.
#[derive(Debug, Clone, Default)]
pub struct ModelFilter {
    ids: BTreeSet<(u16, u16)>,
}

impl ModelFilter {
    /// A filter that passes exactly these ids.
    pub fn new(ids: impl IntoIterator<Item = (u16, u16)>) -> ModelFilter {
        ModelFilter {
            ids: ids.into_iter().collect(),
        }
    }

    /// Whether a device with these ids is a configured model.
    pub fn matches(&self, vendor_id: u16, product_id: u16) -> bool {
        self.ids.contains(&(vendor_id, product_id))
    }
}

/// A source of [`UsbEvent`]s, running on its own thread until `stop` is cancelled.
pub trait UsbWatcher: Send + 'static {
    /// Runs until `stop` is cancelled or `events` is closed. Blocking: call it on a dedicated
    /// thread (see [`spawn`]).
    fn run(
        self: Box<Self>,
        events: mpsc::Sender<UsbEvent>,
        stop: CancellationToken,
    ) -> Result<(), UsbError>;
}

/// Runs a watcher on a dedicated, named thread. A watcher that stops with an error (no USB,
/// hot-plug registration refused) logs it: the desk then relies on slot scans alone.
pub fn spawn(
    watcher: Box<dyn UsbWatcher>,
    events: mpsc::Sender<UsbEvent>,
    stop: CancellationToken,
) -> std::io::Result<std::thread::JoinHandle<Result<(), UsbError>>> {
    std::thread::Builder::new()
        .name("usb-watcher".into())
        .spawn(move || {
            let result = watcher.run(events, stop);
            if let Err(e) = &result {
                tracing::error!(error = %e, "USB watcher stopped: tokens are found by slot scans only");
            }
            result
        })
}

/// The events that turn the attached set `before` into `after` (pure).
///
/// Devices are keyed by port path; a device whose ids or serial changed at the same port is a
/// departure followed by an arrival.
pub fn diff(before: &[UsbDevice], after: &[UsbDevice]) -> Vec<UsbEvent> {
    let old: BTreeMap<&str, &UsbDevice> =
        before.iter().map(|d| (d.port_path.as_str(), d)).collect();
    let new: BTreeMap<&str, &UsbDevice> = after.iter().map(|d| (d.port_path.as_str(), d)).collect();
    let mut events = Vec::new();
    for (port, dev) in &old {
        if new.get(port) != Some(dev) {
            events.push(UsbEvent::Left((*dev).clone()));
        }
    }
    for (port, dev) in &new {
        if old.get(port) != Some(dev) {
            events.push(UsbEvent::Arrived((*dev).clone()));
        }
    }
    events
}

/// A watcher that polls a function listing the attached devices and reports the differences.
pub struct SnapshotWatcher<F> {
    name: String,
    list: F,
    filter: ModelFilter,
    interval: Duration,
}

impl<F> SnapshotWatcher<F>
where
    F: FnMut() -> Result<Vec<UsbDevice>, String> + Send + 'static,
{
    /// `list` is called every `interval`; `name` appears in errors.
    pub fn new(name: impl Into<String>, list: F, filter: ModelFilter, interval: Duration) -> Self {
        SnapshotWatcher {
            name: name.into(),
            list,
            filter,
            interval,
        }
    }
}

impl<F> UsbWatcher for SnapshotWatcher<F>
where
    F: FnMut() -> Result<Vec<UsbDevice>, String> + Send + 'static,
{
    fn run(
        mut self: Box<Self>,
        events: mpsc::Sender<UsbEvent>,
        stop: CancellationToken,
    ) -> Result<(), UsbError> {
        let mut attached: Vec<UsbDevice> = Vec::new();
        let mut last_error: Option<String> = None;
        while !stop.is_cancelled() {
            match (self.list)() {
                Ok(mut now) => {
                    last_error = None;
                    now.retain(|d| self.filter.matches(d.vendor_id, d.product_id));
                    now.sort();
                    for event in diff(&attached, &now).into_iter().map(access_checked) {
                        if events.blocking_send(event).is_err() {
                            return Ok(());
                        }
                    }
                    attached = now;
                }
                Err(reason) => {
                    // Log a failing source once per change of reason, not every poll.
                    if last_error.as_deref() != Some(reason.as_str()) {
                        tracing::warn!(source = %self.name, %reason, "cannot list USB devices");
                        last_error = Some(reason);
                    }
                }
            }
            // Waiting on the cancellation token (not a plain sleep) makes shutdown prompt.
            wait_cancelled(&stop, self.interval);
        }
        Ok(())
    }
}

/// What the desk is told when a device it may not open arrives.
const NOT_ACCESSIBLE: &str =
    "present but not accessible (check the udev rules and the agent's group)";

/// An arrival of a device the agent may not open becomes [`UsbEvent::Inaccessible`].
fn access_checked(event: UsbEvent) -> UsbEvent {
    match event {
        UsbEvent::Arrived(device) if !device.accessible => UsbEvent::Inaccessible {
            device,
            reason: NOT_ACCESSIBLE.into(),
        },
        other => other,
    }
}

/// Blocks up to `timeout`, returning early (within 20 ms) when `stop` is cancelled.
fn wait_cancelled(stop: &CancellationToken, timeout: Duration) {
    let deadline = std::time::Instant::now() + timeout;
    while !stop.is_cancelled() {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            break;
        }
        std::thread::sleep(left.min(Duration::from_millis(20)));
    }
}

/// Reads hsm-sim's virtual USB bus: `usb.json` in the simulator's state folder, a JSON object
/// with a `devices` list of `{port_path, vendor_id, product_id, serial}` (other fields are
/// ignored). A missing file is an empty bus.
pub fn read_sim_bus(dir: &std::path::Path) -> Result<Vec<UsbDevice>, String> {
    #[derive(serde::Deserialize)]
    struct Bus {
        #[serde(default)]
        devices: Vec<Device>,
    }
    #[derive(serde::Deserialize)]
    struct Device {
        port_path: String,
        vendor_id: u16,
        product_id: u16,
        #[serde(default)]
        serial: Option<String>,
        #[serde(default = "yes")]
        accessible: bool,
    }
    fn yes() -> bool {
        true
    }
    let path = dir.join("usb.json");
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    let bus: Bus = serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(bus
        .devices
        .into_iter()
        .map(|d| UsbDevice {
            port_path: d.port_path,
            vendor_id: d.vendor_id,
            product_id: d.product_id,
            serial: d.serial,
            accessible: d.accessible,
        })
        .collect())
}

/// Real USB through libusb (rusb).
pub struct RusbWatcher {
    filter: ModelFilter,
    poll_interval: Duration,
}

impl RusbWatcher {
    /// Watches for the models in `filter`; `poll_interval` is used only where libusb has no
    /// hot-plug support.
    pub fn new(filter: ModelFilter, poll_interval: Duration) -> RusbWatcher {
        RusbWatcher {
            filter,
            poll_interval,
        }
    }
}

/// `bus-port.port.port`, the kernel's naming of a physical USB port.
fn port_path(bus: u8, ports: &[u8]) -> String {
    let mut s = bus.to_string();
    for (i, p) in ports.iter().enumerate() {
        s.push(if i == 0 { '-' } else { '.' });
        s.push_str(&p.to_string());
    }
    s
}

/// Reads what the desk needs of a device; `Err` carries the device and why it cannot be opened.
fn describe<T: rusb::UsbContext>(
    device: &rusb::Device<T>,
    filter: &ModelFilter,
) -> Option<Result<UsbDevice, (UsbDevice, String)>> {
    let desc = device.device_descriptor().ok()?;
    if !filter.matches(desc.vendor_id(), desc.product_id()) {
        return None;
    }
    let ports = device.port_numbers().unwrap_or_default();
    let mut dev = UsbDevice {
        port_path: port_path(device.bus_number(), &ports),
        vendor_id: desc.vendor_id(),
        product_id: desc.product_id(),
        serial: None,
        accessible: true,
    };
    match device.open() {
        Ok(handle) => {
            dev.serial = handle
                .read_serial_number_string_ascii(&desc)
                .ok()
                .map(|s| s.trim().to_owned());
            Some(Ok(dev))
        }
        Err(rusb::Error::Access) => {
            dev.accessible = false;
            Some(Err((dev, NOT_ACCESSIBLE.into())))
        }
        Err(e) => {
            dev.accessible = false;
            Some(Err((dev, format!("cannot open: {e}"))))
        }
    }
}

fn list_rusb(context: &rusb::Context, filter: &ModelFilter) -> Result<Vec<UsbDevice>, String> {
    let devices = rusb::UsbContext::devices(context).map_err(|e| e.to_string())?;
    Ok(devices
        .iter()
        .filter_map(|d| describe(&d, filter))
        .map(|r| match r {
            Ok(d) => d,
            Err((d, _)) => d,
        })
        .collect())
}

struct HotplugQueue(std::sync::mpsc::Sender<(bool, rusb::Device<rusb::Context>)>);

impl rusb::Hotplug<rusb::Context> for HotplugQueue {
    fn device_arrived(&mut self, device: rusb::Device<rusb::Context>) {
        let _ = self.0.send((true, device));
    }
    fn device_left(&mut self, device: rusb::Device<rusb::Context>) {
        let _ = self.0.send((false, device));
    }
}

impl UsbWatcher for RusbWatcher {
    fn run(
        self: Box<Self>,
        events: mpsc::Sender<UsbEvent>,
        stop: CancellationToken,
    ) -> Result<(), UsbError> {
        let context = rusb::Context::new().map_err(|e| UsbError::Unavailable(e.to_string()))?;
        if !rusb::has_hotplug() {
            tracing::info!("libusb has no hot-plug support here: polling the USB device list");
            let filter = self.filter.clone();
            let list_filter = self.filter.clone();
            let watcher = SnapshotWatcher::new(
                "libusb",
                move || list_rusb(&context, &list_filter),
                filter,
                self.poll_interval,
            );
            return Box::new(watcher).run(events, stop);
        }
        let (tx, rx) = std::sync::mpsc::channel();
        let _registration = rusb::HotplugBuilder::new()
            .enumerate(true)
            .register(&context, Box::new(HotplugQueue(tx)))
            .map_err(|e| UsbError::Unavailable(format!("hot-plug registration failed: {e}")))?;
        // Devices that left are described from what we saw on arrival (a departed device
        // can no longer be opened).
        let mut known: BTreeMap<(u8, u8), UsbDevice> = BTreeMap::new();
        while !stop.is_cancelled() {
            if let Err(e) =
                rusb::UsbContext::handle_events(&context, Some(Duration::from_millis(200)))
            {
                tracing::warn!(error = %e, "libusb event handling failed");
            }
            while let Ok((arrived, device)) = rx.try_recv() {
                let key = (device.bus_number(), device.address());
                let event = if arrived {
                    match describe(&device, &self.filter) {
                        None => continue,
                        Some(Ok(dev)) => {
                            known.insert(key, dev.clone());
                            UsbEvent::Arrived(dev)
                        }
                        Some(Err((dev, reason))) => {
                            known.insert(key, dev.clone());
                            UsbEvent::Inaccessible {
                                device: dev,
                                reason,
                            }
                        }
                    }
                } else {
                    match known.remove(&key) {
                        Some(dev) => UsbEvent::Left(dev),
                        None => continue,
                    }
                };
                if events.blocking_send(event).is_err() {
                    return Ok(());
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn dev(port: &str, serial: &str) -> UsbDevice {
        UsbDevice {
            accessible: true,
            port_path: port.into(),
            vendor_id: 0x096e,
            product_id: 0x0702,
            serial: Some(serial.into()),
        }
    }

    #[test]
    fn diff_reports_arrivals_departures_and_swaps() {
        let a = dev("1-1", "A");
        let b = dev("1-2", "B");
        let c = dev("1-2", "C");
        assert_eq!(
            diff(&[], std::slice::from_ref(&a)),
            vec![UsbEvent::Arrived(a.clone())]
        );
        assert_eq!(
            diff(std::slice::from_ref(&a), &[]),
            vec![UsbEvent::Left(a.clone())]
        );
        assert!(diff(&[a.clone(), b.clone()], &[a.clone(), b.clone()]).is_empty());
        assert_eq!(
            diff(&[a.clone(), b.clone()], &[a.clone(), c.clone()]),
            vec![UsbEvent::Left(b), UsbEvent::Arrived(c)]
        );
    }

    #[test]
    fn sim_bus_file_is_read_and_a_missing_one_is_empty() {
        let dir = tempfile::tempdir().unwrap();
        assert!(read_sim_bus(dir.path()).unwrap().is_empty());
        std::fs::write(
            dir.path().join("usb.json"),
            r#"{"version":1,"generation":3,"devices":[{"bus":1,"port_path":"1-1.2","slot":1,
               "vendor_id":21843,"product_id":19201,"serial":"3F2A9C0B7D1E4A56","product":"x"}]}"#,
        )
        .unwrap();
        let devices = read_sim_bus(dir.path()).unwrap();
        assert_eq!(devices.len(), 1);
        assert_eq!(devices[0].port_path, "1-1.2");
        assert_eq!(devices[0].id(), "5553:4b01");
        assert_eq!(devices[0].serial.as_deref(), Some("3F2A9C0B7D1E4A56"));
        assert!(
            devices[0].accessible,
            "accessible unless the bus says otherwise"
        );
        std::fs::write(
            dir.path().join("usb.json"),
            r#"{"devices":[{"port_path":"1-1.2","vendor_id":1,"product_id":2,"accessible":false}]}"#,
        )
        .unwrap();
        assert!(!read_sim_bus(dir.path()).unwrap()[0].accessible);
        std::fs::write(dir.path().join("usb.json"), "{").unwrap();
        assert!(read_sim_bus(dir.path()).is_err());
    }

    #[test]
    fn a_device_without_access_is_reported_as_such() {
        let mut d = dev("1-2", "B");
        d.accessible = false;
        match access_checked(UsbEvent::Arrived(d.clone())) {
            UsbEvent::Inaccessible { device, reason } => {
                assert_eq!(device, d);
                assert!(reason.contains("udev rules"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        let ok = dev("1-1", "A");
        assert_eq!(
            access_checked(UsbEvent::Arrived(ok.clone())),
            UsbEvent::Arrived(ok)
        );
    }

    #[test]
    fn port_paths_follow_kernel_naming() {
        assert_eq!(port_path(1, &[1, 3]), "1-1.3");
        assert_eq!(port_path(2, &[4]), "2-4");
        assert_eq!(port_path(3, &[]), "3");
    }

    #[test]
    fn filter_passes_only_configured_models() {
        let f = ModelFilter::new([(0x096e, 0x0702)]);
        assert!(f.matches(0x096e, 0x0702));
        assert!(!f.matches(0x096e, 0x0703));
    }

    #[tokio::test]
    async fn snapshot_watcher_reports_changes_and_stops() {
        let (tx, mut rx) = mpsc::channel(16);
        let stop = CancellationToken::new();
        let script = std::sync::Arc::new(std::sync::Mutex::new(vec![
            vec![dev("1-1", "A")],
            vec![
                dev("1-1", "A"),
                dev("1-2", "B"),
                UsbDevice {
                    accessible: true,
                    port_path: "1-3".into(),
                    vendor_id: 0x1234,
                    product_id: 1,
                    serial: None,
                },
            ],
            vec![dev("1-2", "B")],
        ]));
        let s = script.clone();
        let watcher = SnapshotWatcher::new(
            "test",
            move || {
                let mut s = s.lock().unwrap();
                Ok(if s.len() > 1 {
                    s.remove(0)
                } else {
                    s[0].clone()
                })
            },
            ModelFilter::new([(0x096e, 0x0702)]),
            Duration::from_millis(5),
        );
        let handle = spawn(Box::new(watcher), tx, stop.clone()).unwrap();
        let mut got = Vec::new();
        for _ in 0..3 {
            got.push(
                tokio::time::timeout(Duration::from_secs(5), rx.recv())
                    .await
                    .unwrap()
                    .unwrap(),
            );
        }
        assert_eq!(
            got,
            vec![
                UsbEvent::Arrived(dev("1-1", "A")),
                UsbEvent::Arrived(dev("1-2", "B")),
                UsbEvent::Left(dev("1-1", "A")),
            ],
            "the unconfigured 1234:0001 device is never reported"
        );
        stop.cancel();
        handle.join().unwrap().unwrap();
    }
}
