//! The `ukey-demo` command line: the options ([`DemoArgs`]) and their value types.
//!
//! What it does not do: check combinations of options beyond what clap expresses (`run`
//! refuses `--scenario lifecycle` with `--module` or `--faults`).

use std::path::PathBuf;

use clap::{Parser, ValueEnum};
use hsm_sim::rack::latency::Profile;
use ukey_protocol::KeyAlgorithm;

/// Key algorithm of the demo's jobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Alg {
    /// ECDSA/ECDH on P-256.
    P256,
    /// RSA-2048.
    Rsa2048,
    /// RSA-3072.
    Rsa3072,
}

impl Alg {
    pub(crate) fn algorithm(self) -> KeyAlgorithm {
        match self {
            Alg::P256 => KeyAlgorithm::P256,
            Alg::Rsa2048 => KeyAlgorithm::Rsa2048,
            Alg::Rsa3072 => KeyAlgorithm::Rsa3072,
        }
    }
}

/// Latency of the virtual tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Latency {
    /// No added latency: as fast as the computer.
    Instant,
    /// Timings of a real USB token (e.g. 3 s per RSA-2048 key pair; see `hsm-sim latency`).
    Realistic,
}

impl Latency {
    pub(crate) fn profile(self) -> Profile {
        match self {
            Latency::Instant => Profile::Instant,
            Latency::Realistic => Profile::Realistic,
        }
    }
}

/// What the demo plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Scenario {
    /// Blank tokens become finished ones, one `new` job each.
    Production,
    /// One token's life: new, renew, change, a user PIN typed wrong until it locks, unlock,
    /// then loss and a replacement; on a rack of 2 slots (--tokens and --slots do not apply).
    Lifecycle,
}

/// An external broker's address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerAddr {
    /// Host name or address.
    pub host: String,
    /// TCP port.
    pub port: u16,
}

fn parse_broker(s: &str) -> Result<BrokerAddr, String> {
    let (host, port) = s
        .rsplit_once(':')
        .ok_or_else(|| format!("{s:?} is not HOST:PORT"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(format!("{s:?} has no host (expected HOST:PORT)"));
    }
    let port: u16 = port
        .parse()
        .map_err(|_| format!("{port:?} is not a TCP port (1-65535)"))?;
    if port == 0 {
        return Err("port 0 is not a TCP port (1-65535)".to_owned());
    }
    Ok(BrokerAddr {
        host: host.to_owned(),
        port,
    })
}

/// `ukey-demo`: run a whole production desk and watch blank Ukeys become finished ones.
///
/// Starts an embedded MQTT broker, the simulated platform (test CA), a virtual rack and the
/// agent in this process; plugs in blank tokens as slots free up, one `new` job per token;
/// shows live progress; then checks every produced token again through PKCS#11 and prints a
/// summary. Exit status 0 only if every token was produced and verified. With --dir D the
/// tokens stay in D (HSM_SIM_DIR=D pkcs11-tool --module …/libhsm_sim.so -L). Ctrl-C (or
/// SIGTERM) stops the agent cleanly and prints a partial summary: exit status 130 (143); a
/// second Ctrl-C quits at once.
#[derive(Debug, Parser)]
#[command(name = "ukey-demo", version)]
pub struct DemoArgs {
    /// Keep the rack and the demo's files in this folder (the rack in DIR, the agent's
    /// configuration, state and log in DIR/demo) instead of a temporary folder.
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// What to play.
    #[arg(long, value_enum, default_value_t = Scenario::Production)]
    pub scenario: Scenario,
    /// Tokens to make.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub tokens: u32,
    /// Slots of the virtual rack (tokens are plugged in as slots free up).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub slots: u32,
    /// Key algorithm of the three key pairs.
    #[arg(long, value_enum, default_value_t = Alg::P256)]
    pub alg: Alg,
    /// Latency of the virtual tokens.
    #[arg(long, value_enum, default_value_t = Latency::Instant)]
    pub latency: Latency,
    /// Another PKCS#11 module (e.g. /usr/lib/softhsm/libsofthsm2.so): its blank tokens take
    /// the jobs and no rack is driven.
    #[arg(long, value_name = "PATH")]
    pub module: Option<PathBuf>,
    /// An external MQTT broker (e.g. Mosquitto) instead of the embedded one.
    #[arg(long, value_name = "HOST:PORT", value_parser = parse_broker)]
    pub broker: Option<BrokerAddr>,
    /// Print the summary as JSON on stdout (with each token's user PIN), no progress.
    #[arg(long)]
    pub json: bool,
    /// Scripted faults: one token is pulled out mid-job and plugged back in, and the platform
    /// once certifies a wrong key; both are caught and recovered.
    #[arg(long, conflicts_with = "module")]
    pub faults: bool,
}
