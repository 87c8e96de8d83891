//! systemd's notification protocol (`sd_notify`): readiness, watchdog pings and status text.
//!
//! The unit in `udev/ukey-agent.service` is `Type=notify` with `WatchdogSec=`. The protocol is
//! one datagram per message on the unix socket named by `NOTIFY_SOCKET`; outside systemd the
//! variable is unset and every call here does nothing. This module does not decide *when* to
//! notify: the daemon calls [`ready`] once its journal is replayed and [`watchdog`] from its
//! main loop, so a wedged loop stops the pings and systemd restarts the agent.

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

/// Sends `state` (e.g. `READY=1`) to systemd if the agent runs under it.
///
/// Returns whether a message was sent. Failures are logged, never fatal: a desk must not stop
/// producing because systemd's socket is gone.
pub fn notify(state: &str) -> bool {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return false;
    };
    match send(&path, state) {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(error = %e, "sd_notify failed");
            false
        }
    }
}

/// Sends one notification datagram to the socket at `path` (`@name` for an abstract socket).
fn send(path: &std::ffi::OsStr, state: &str) -> std::io::Result<()> {
    UnixDatagram::unbound()
        .and_then(|socket| {
            let bytes = path.as_encoded_bytes();
            if let Some(abstract_name) = bytes.strip_prefix(b"@") {
                // Linux abstract socket namespace.
                use std::os::linux::net::SocketAddrExt;
                let addr = std::os::unix::net::SocketAddr::from_abstract_name(abstract_name)?;
                socket.send_to_addr(state.as_bytes(), &addr)
            } else {
                socket.send_to(state.as_bytes(), path)
            }
        })
        .map(|_| ())
}

/// Tells systemd the agent is ready.
pub fn ready() -> bool {
    notify("READY=1")
}

/// Tells systemd the agent is stopping.
pub fn stopping() -> bool {
    notify("STOPPING=1")
}

/// A watchdog ping.
pub fn watchdog() -> bool {
    notify("WATCHDOG=1")
}

/// A one-line status shown by `systemctl status`.
pub fn status(text: &str) -> bool {
    notify(&format!("STATUS={}", text.replace('\n', " ")))
}

/// How often to ping, if systemd asked for a watchdog (`WATCHDOG_USEC`): half the timeout.
pub fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID")
        && pid.parse::<u32>().ok() != Some(std::process::id())
    {
        return None;
    }
    (usec > 0).then(|| Duration::from_micros(usec / 2))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn datagram_reaches_the_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let listener = UnixDatagram::bind(&path).unwrap();
        send(path.as_os_str(), "READY=1").unwrap();
        let mut buf = [0u8; 64];
        let n = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
    }

    #[test]
    fn missing_socket_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        assert!(send(dir.path().join("absent").as_os_str(), "READY=1").is_err());
    }
}
