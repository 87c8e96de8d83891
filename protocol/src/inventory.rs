//! Inventory: the station's retained slot table on `{p}/stations/{sid}/inventory` — which
//! token sits in which slot, in which state, and when its certificates expire.
//!
//! Published on every change with an increasing `seq`; the platform keeps the highest.
//! A slot is the rack's physical position (the indicator panel's numbering), not a PKCS#11
//! slot id, which changes on re-plug (invariant 1).

use std::fmt;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::codec::{Message, V1, check_len, check_text, check_utc, rfc3339};
use crate::error::{Problem, ProtocolError};
use crate::ids::{ErrorCode, JobId, StationId, TokenSerial};
use crate::keys::KeyLabel;

/// Most slots in one station's rack.
pub const MAX_SLOTS: usize = 64;

/// What a token is, as the platform shows it (处理中 / 已生效 / 已过期 …).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TokenState {
    /// Not initialized: ready for a `new` or `replace` job.
    Blank,
    /// Ours, mid-production (unfinished): a job is working on it or was interrupted.
    InProduction,
    /// Ours, finished, certificates valid.
    Active,
    /// Active, but a certificate expires within the configured window (default 30 days).
    Expiring,
    /// A certificate's notAfter has passed.
    Expired,
    /// The user PIN is locked (an `unlock` job can help).
    LockedUser,
    /// The SO PIN is locked: only a wipe by the platform can help.
    LockedSo,
    /// Replaced (补办) or revoked by the platform: the agent does not produce on it.
    Revoked,
    /// Initialized, but not by this system.
    Foreign,
    /// The token does not answer correctly.
    Damaged,
}

impl TokenState {
    /// The JSON spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            TokenState::Blank => "blank",
            TokenState::InProduction => "in-production",
            TokenState::Active => "active",
            TokenState::Expiring => "expiring",
            TokenState::Expired => "expired",
            TokenState::LockedUser => "locked-user",
            TokenState::LockedSo => "locked-so",
            TokenState::Revoked => "revoked",
            TokenState::Foreign => "foreign",
            TokenState::Damaged => "damaged",
        }
    }
}

impl fmt::Display for TokenState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One certificate on a token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertificateExpiry {
    /// Which certificate.
    pub label: KeyLabel,
    /// Its notAfter (UTC).
    #[serde(with = "rfc3339")]
    pub not_after: OffsetDateTime,
}

/// Why a token is `damaged`: what its PKCS#11 module answered when the station read it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenDamage {
    /// The PKCS#11 function that failed, e.g. `C_GetTokenInfo` (1-64 characters), when the
    /// failure was a call's return code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub function: Option<String>,
    /// Its return code, e.g. `CKR_DEVICE_ERROR` (1-64 characters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub return_code: Option<String>,
    /// What went wrong, for the operators (1-512 characters).
    pub message: String,
}

/// The token in a slot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenInfo {
    /// Its serial (the token's identity, invariant 1). Absent only for a `damaged` token
    /// whose serial could not be read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<TokenSerial>,
    /// Model, e.g. the USB product or `CK_TOKEN_INFO.model` (1-64 characters).
    pub model: String,
    /// Its state.
    pub state: TokenState,
    /// The job working on it, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_id: Option<JobId>,
    /// Certificates found on it (at most one per label).
    #[serde(default)]
    pub certificates: Vec<CertificateExpiry>,
    /// Why it is `damaged` (only with that state; left out otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub damage: Option<TokenDamage>,
}

/// One slot of the rack.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotInfo {
    /// Rack position, 0-based: the station's configured position of the USB port, or (for a
    /// port outside the configured rack) a number of 1000 or more that only orders the table.
    pub slot: u32,
    /// The token in it; absent for an empty slot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<TokenInfo>,
    /// The USB port the token is plugged into, when the station knows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<SlotPort>,
}

/// The USB port of a slot's token, and how the station knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotPort {
    /// USB port path as Linux names it, e.g. `1-1.3` (1-64 characters).
    pub path: String,
    /// The port is a guess: the token was the one new slot after a USB arrival, since
    /// neither its USB serial nor its module's slot description named it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub guessed: bool,
}

/// Station → platform, retained.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inventory {
    /// Protocol version.
    pub v: V1,
    /// The station.
    pub station_id: StationId,
    /// Increases with every publication.
    pub seq: u64,
    /// When the table was taken (UTC).
    #[serde(with = "rfc3339")]
    pub at: OffsetDateTime,
    /// Every slot of the rack, each index once.
    pub slots: Vec<SlotInfo>,
    /// Problems at the desk that are not a token's state: a Ukey present on USB but not
    /// accessible (udev rules), a Ukey whose model's PKCS#11 module is missing or shows no
    /// slot for it, a call on a token that does not return. Empty (and left out of the JSON)
    /// when all is well.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub alerts: Vec<DeskAlert>,
}

/// Most alerts in one inventory.
pub const MAX_ALERTS: usize = 16;

/// A problem at the desk, for the platform's operators.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeskAlert {
    /// Machine-readable, e.g. `usb-not-accessible`, `module-missing`, `no-slot-for-token`,
    /// `token-call-stuck`.
    pub code: ErrorCode,
    /// The USB port (`1-1.3`) or device it concerns, if any (1-64 characters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<String>,
    /// What is wrong and what to check (1-512 characters).
    pub message: String,
}

impl Message for Inventory {
    const NAME: &'static str = "inventory";
    const MAX_BYTES: usize = 64 * 1024;

    fn validate(&self) -> Result<(), ProtocolError> {
        self.station_id.check("station_id")?;
        check_utc("at", &self.at)?;
        check_len("slots", &self.slots, MAX_SLOTS)?;
        check_len("alerts", &self.alerts, MAX_ALERTS)?;
        for (i, a) in self.alerts.iter().enumerate() {
            a.code.check(&format!("alerts[{i}].code"))?;
            if let Some(port) = &a.port {
                check_text(&format!("alerts[{i}].port"), port, 64)?;
            }
            check_text(&format!("alerts[{i}].message"), &a.message, 512)?;
        }
        for (i, s) in self.slots.iter().enumerate() {
            let path = format!("slots[{i}]");
            if self.slots[..i].iter().any(|o| o.slot == s.slot) {
                return Err(ProtocolError::invalid(
                    format!("{path}.slot"),
                    Problem::Duplicate,
                ));
            }
            if let Some(port) = &s.port {
                check_text(&format!("{path}.port.path"), &port.path, 64)?;
            }
            let Some(t) = &s.token else { continue };
            match &t.serial {
                Some(serial) => serial.check(&format!("{path}.token.serial"))?,
                None if t.state == TokenState::Damaged => {}
                None => {
                    return Err(ProtocolError::invalid(
                        format!("{path}.token.serial"),
                        Problem::RequiredUnlessState { state: "damaged" },
                    ));
                }
            }
            if let Some(d) = &t.damage {
                let dpath = format!("{path}.token.damage");
                if t.state != TokenState::Damaged {
                    return Err(ProtocolError::invalid(
                        dpath,
                        Problem::OnlyWithState { state: "damaged" },
                    ));
                }
                if let Some(f) = &d.function {
                    check_text(&format!("{dpath}.function"), f, 64)?;
                }
                if let Some(c) = &d.return_code {
                    check_text(&format!("{dpath}.return_code"), c, 64)?;
                }
                check_text(&format!("{dpath}.message"), &d.message, 512)?;
            }
            check_text(&format!("{path}.token.model"), &t.model, 64)?;
            if let Some(j) = &t.job_id {
                j.check(&format!("{path}.token.job_id"))?;
            }
            check_len(&format!("{path}.token.certificates"), &t.certificates, 3)?;
            for (k, c) in t.certificates.iter().enumerate() {
                let cpath = format!("{path}.token.certificates[{k}]");
                if t.certificates[..k].iter().any(|o| o.label == c.label) {
                    return Err(ProtocolError::invalid(
                        format!("{cpath}.label"),
                        Problem::DuplicateLabel { label: c.label },
                    ));
                }
                check_utc(&format!("{cpath}.not_after"), &c.not_after)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn inventory(alerts: Vec<DeskAlert>) -> Inventory {
        Inventory {
            v: V1,
            station_id: StationId::new("desk-01").unwrap(),
            seq: 1,
            at: time::macros::datetime!(2025-03-01 08:00:00 UTC),
            slots: vec![],
            alerts,
        }
    }

    #[test]
    fn alerts_are_left_out_when_empty_and_checked_when_present() {
        let quiet = inventory(vec![]).encode().unwrap();
        assert!(!String::from_utf8(quiet).unwrap().contains("alerts"));
        let alert = DeskAlert {
            code: ErrorCode::new("usb-not-accessible").unwrap(),
            port: Some("1-1.3".into()),
            message: "Ukey 096e:0702 at USB port 1-1.3: present but not accessible".into(),
        };
        let loud = inventory(vec![alert.clone()]);
        let back = Inventory::decode(&loud.encode().unwrap()).unwrap();
        assert_eq!(back.alerts, vec![alert.clone()]);
        let empty_message = inventory(vec![DeskAlert {
            message: String::new(),
            ..alert
        }]);
        let err = empty_message.encode().unwrap_err().to_string();
        assert!(err.contains("alerts[0].message"), "{err}");
    }

    fn damaged(serial: Option<&str>) -> TokenInfo {
        TokenInfo {
            serial: serial.map(|s| TokenSerial::new(s).unwrap()),
            model: "unknown".into(),
            state: TokenState::Damaged,
            job_id: None,
            certificates: vec![],
            damage: Some(TokenDamage {
                function: Some("C_GetTokenInfo".into()),
                return_code: Some("CKR_DEVICE_ERROR".into()),
                message: "C_GetTokenInfo failed with CKR_DEVICE_ERROR (slot 2)".into(),
            }),
        }
    }

    fn with_token(token: TokenInfo) -> Inventory {
        Inventory {
            slots: vec![SlotInfo {
                port: None,
                slot: 2,
                token: Some(token),
            }],
            ..inventory(vec![])
        }
    }

    #[test]
    fn a_slot_names_its_port_and_whether_that_is_a_guess() {
        let mut inv = with_token(damaged(Some("5C2D8E1F0A3B4C6D")));
        inv.slots[0].port = Some(SlotPort {
            path: "1-1.3".into(),
            guessed: false,
        });
        let json = String::from_utf8(inv.encode().unwrap()).unwrap();
        assert!(json.contains(r#""port":{"path":"1-1.3"}"#), "{json}");
        assert_eq!(Inventory::decode(json.as_bytes()).unwrap(), inv);
        inv.slots[0].port = Some(SlotPort {
            path: "1-1.4".into(),
            guessed: true,
        });
        let json = String::from_utf8(inv.encode().unwrap()).unwrap();
        assert!(
            json.contains(r#""port":{"path":"1-1.4","guessed":true}"#),
            "{json}"
        );
        inv.slots[0].port = Some(SlotPort {
            path: String::new(),
            guessed: false,
        });
        let err = inv.encode().unwrap_err().to_string();
        assert!(err.contains("slots[0].port.path"), "{err}");
    }

    #[test]
    fn a_damaged_token_names_its_failure_and_may_lack_a_serial() {
        let inv = with_token(damaged(None));
        let json = String::from_utf8(inv.encode().unwrap()).unwrap();
        assert!(!json.contains("serial"), "{json}");
        assert!(
            json.contains(
                r#""damage":{"function":"C_GetTokenInfo","return_code":"CKR_DEVICE_ERROR""#
            ),
            "{json}"
        );
        assert_eq!(Inventory::decode(json.as_bytes()).unwrap(), inv);
        let known = with_token(damaged(Some("5C2D8E1F0A3B4C6D")));
        assert_eq!(Inventory::decode(&known.encode().unwrap()).unwrap(), known);
    }

    #[test]
    fn only_a_damaged_token_may_lack_a_serial_or_carry_damage() {
        let mut nameless = damaged(None);
        nameless.state = TokenState::Blank;
        nameless.damage = None;
        let err = with_token(nameless).encode().unwrap_err().to_string();
        assert!(err.contains("slots[0].token.serial"), "{err}");
        let mut healthy = damaged(Some("5C2D8E1F0A3B4C6D"));
        healthy.state = TokenState::Active;
        let err = with_token(healthy).encode().unwrap_err().to_string();
        assert!(err.contains("slots[0].token.damage"), "{err}");
        let mut silent = damaged(None);
        if let Some(d) = silent.damage.as_mut() {
            d.message = String::new();
        }
        let err = with_token(silent).encode().unwrap_err().to_string();
        assert!(err.contains("token.damage.message"), "{err}");
    }
}
