//! The agent's links: MQTT to the broker (outbox, TLS, addresses and passwords) and the serial
//! line to the indicator panel.
//!
//! One module per group of tests; nextest runs each test in its own process.

mod broker_access;
mod mqtt;
mod panel_serial;
mod tls;
