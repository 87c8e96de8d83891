//! Latency profiles: how long a simulated Ukey takes for each kind of operation.
//!
//! `instant` (the default, for tests) adds nothing; `realistic` follows the durations of a
//! real USB token (RSA-2048 generation takes seconds, P-256 a few hundred milliseconds, writes
//! grow with their size). Single operations can be overridden per rack or per token.
//! This module only computes durations; the module's engine does the waiting.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// A named set of durations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Profile {
    /// No added latency.
    #[default]
    Instant,
    /// The durations of real hardware.
    Realistic,
}

impl Profile {
    /// Parses `instant` / `realistic`.
    pub fn parse(name: &str) -> Result<Profile> {
        match name.trim().to_ascii_lowercase().as_str() {
            "instant" => Ok(Profile::Instant),
            "realistic" => Ok(Profile::Realistic),
            _ => Err(Error::UnknownProfile {
                name: name.to_string(),
            }),
        }
    }

    /// The profile's name.
    pub fn name(self) -> &'static str {
        match self {
            Profile::Instant => "instant",
            Profile::Realistic => "realistic",
        }
    }
}

/// An operation whose duration can be set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Op {
    /// RSA-2048 key-pair generation.
    KeygenRsa2048,
    /// RSA-3072 key-pair generation.
    KeygenRsa3072,
    /// RSA generation of other sizes.
    KeygenRsaOther,
    /// P-256 key-pair generation.
    KeygenP256,
    /// One ECDSA signature.
    SignEc,
    /// One RSA signature.
    SignRsa,
    /// One RSA decryption.
    Decrypt,
    /// One ECDH derivation.
    Derive,
    /// `C_Login` (PIN check).
    Login,
    /// `C_InitToken`.
    InitToken,
    /// `C_InitPIN`.
    InitPin,
    /// `C_SetPIN`.
    SetPin,
    /// Fixed part of any write to token storage.
    Write,
    /// Added per KiB written.
    WritePerKib,
    /// `C_DestroyObject`.
    Destroy,
    /// `C_GenerateRandom`, per call.
    Random,
    /// SM2 key-pair generation (`SKF_GenECCKeyPair`).
    KeygenSm2,
    /// One SM2 signature (`SKF_ECCSignData`).
    SignSm2,
}

/// Every operation with its name, for the CLI and the docs.
pub const OPS: &[(&str, Op)] = &[
    ("keygen-rsa2048", Op::KeygenRsa2048),
    ("keygen-rsa3072", Op::KeygenRsa3072),
    ("keygen-rsa-other", Op::KeygenRsaOther),
    ("keygen-p256", Op::KeygenP256),
    ("sign-ec", Op::SignEc),
    ("sign-rsa", Op::SignRsa),
    ("decrypt", Op::Decrypt),
    ("derive", Op::Derive),
    ("login", Op::Login),
    ("init-token", Op::InitToken),
    ("init-pin", Op::InitPin),
    ("set-pin", Op::SetPin),
    ("write", Op::Write),
    ("write-per-kib", Op::WritePerKib),
    ("destroy", Op::Destroy),
    ("random", Op::Random),
    ("keygen-sm2", Op::KeygenSm2),
    ("sign-sm2", Op::SignSm2),
];

impl Op {
    /// Parses an operation name (`keygen-rsa2048`, …).
    pub fn parse(name: &str) -> Result<Op> {
        let n = name.trim().to_ascii_lowercase();
        OPS.iter()
            .find(|(s, _)| *s == n)
            .map(|(_, op)| *op)
            .ok_or_else(|| Error::UnknownLatencyOp {
                name: name.to_string(),
                known: OPS.iter().map(|(s, _)| *s).collect::<Vec<_>>().join(", "),
            })
    }

    /// The operation's name.
    pub fn name(self) -> &'static str {
        OPS.iter()
            .find(|(_, op)| *op == self)
            .map(|(s, _)| *s)
            .unwrap_or("?")
    }

    /// Duration in milliseconds under a profile.
    pub fn profile_ms(self, profile: Profile) -> u64 {
        match profile {
            Profile::Instant => 0,
            Profile::Realistic => match self {
                Op::KeygenRsa2048 => 3000,
                Op::KeygenRsa3072 => 9000,
                Op::KeygenRsaOther => 6000,
                Op::KeygenP256 => 300,
                Op::SignEc => 60,
                Op::SignRsa => 200,
                Op::Decrypt => 200,
                Op::Derive => 80,
                Op::Login => 40,
                Op::InitToken => 1200,
                Op::InitPin => 150,
                Op::SetPin => 150,
                Op::Write => 30,
                Op::WritePerKib => 25,
                Op::Destroy => 20,
                Op::Random => 5,
                // Estimates, not measurements: a token's secure element does SM2 about as
                // fast as P-256 (the same size of curve), a little slower for key generation.
                Op::KeygenSm2 => 400,
                Op::SignSm2 => 80,
            },
        }
    }
}

/// Latency settings of a rack or a token: a profile and per-operation overrides (ms).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LatencySettings {
    /// The profile, when set here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<Profile>,
    /// Per-operation durations in milliseconds, overriding any profile.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub overrides: BTreeMap<Op, u64>,
}

/// The environment variable that sets the profile for one process (`instant`/`realistic`).
pub const LATENCY_ENV: &str = "HSM_SIM_LATENCY";

/// The profile named by `HSM_SIM_LATENCY`, if set and valid.
pub fn env_profile() -> Option<Profile> {
    std::env::var(LATENCY_ENV)
        .ok()
        .and_then(|v| Profile::parse(&v).ok())
}

/// How long `op` takes. Precedence: the token's override, the rack's override, then the
/// profile: the token's, else `HSM_SIM_LATENCY`, else the rack's, else `instant`.
pub fn duration(
    op: Op,
    token: &LatencySettings,
    rack: &LatencySettings,
    env: Option<Profile>,
) -> Duration {
    let ms = token
        .overrides
        .get(&op)
        .or_else(|| rack.overrides.get(&op))
        .copied()
        .unwrap_or_else(|| {
            let profile = token.profile.or(env).or(rack.profile).unwrap_or_default();
            op.profile_ms(profile)
        });
    Duration::from_millis(ms)
}

/// How long a write of `bytes` takes.
pub fn write_duration(
    bytes: usize,
    token: &LatencySettings,
    rack: &LatencySettings,
    env: Option<Profile>,
) -> Duration {
    let base = duration(Op::Write, token, rack, env);
    let per_kib = duration(Op::WritePerKib, token, rack, env);
    base + per_kib.mul_f64(bytes as f64 / 1024.0)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn precedence_token_then_rack_then_profiles() {
        let mut rack = LatencySettings::default();
        let mut token = LatencySettings::default();
        assert_eq!(
            duration(Op::KeygenP256, &token, &rack, None),
            Duration::ZERO
        );
        rack.profile = Some(Profile::Realistic);
        assert_eq!(
            duration(Op::KeygenP256, &token, &rack, None),
            Duration::from_millis(300)
        );
        assert_eq!(
            duration(Op::KeygenP256, &token, &rack, Some(Profile::Instant)),
            Duration::ZERO
        );
        rack.overrides.insert(Op::KeygenP256, 7);
        assert_eq!(
            duration(Op::KeygenP256, &token, &rack, None),
            Duration::from_millis(7)
        );
        token.overrides.insert(Op::KeygenP256, 9);
        assert_eq!(
            duration(Op::KeygenP256, &token, &rack, None),
            Duration::from_millis(9)
        );
        assert!(Op::parse("keygen-rsa2048").is_ok());
        assert!(Op::parse("keygen-dsa").is_err());
        assert!(
            write_duration(4096, &LatencySettings::default(), &rack, None)
                > Duration::from_millis(100)
        );
    }
}
