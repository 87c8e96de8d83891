//! The desk: what a token is when it is plugged in, decided from what the token says (pure).
//!
//! [`classify`] turns a token's flags, label and certificates into the inventory's
//! [`TokenState`]; [`damage`] says why a token that cannot be read is `damaged`;
//! [`TokenKey`] names a token in the desk's table (by serial — invariant 1 — except a blank
//! SoftHSM2 slot, which has no serial until it is initialized, and a token that cannot be
//! read at all, named by its slot). The scanning itself (PKCS#11 calls) lives in the daemon;
//! this module does no IO.

use std::time::{Duration, SystemTime};

use ukey_protocol::inventory::{TokenDamage, TokenState};
use ukey_protocol::keys::KeyLabel;

use ukey_protocol::event::ExecutionState;

use crate::panel::Light;
use crate::steps::LABEL_PREFIX;
use crate::token::{PresentToken, TokenError, ckr_name};

/// How the desk names a token.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TokenKey {
    /// A token with a serial number (every real Ukey, hsm-sim, initialized SoftHSM2 tokens).
    Serial(String),
    /// A token without a serial: a blank one (SoftHSM2's spare slot), valid only until it is
    /// initialized, or one whose serial cannot be read (damaged). Module index and slot id.
    Unnamed {
        /// Index of the module in the desk's module list.
        module: usize,
        /// PKCS#11 slot id.
        slot: u64,
    },
}

impl TokenKey {
    /// The key of a present token found through module `module`.
    pub fn of(module: usize, present: &PresentToken) -> TokenKey {
        if present.serial.is_empty() {
            TokenKey::Unnamed {
                module,
                slot: present.slot,
            }
        } else {
            TokenKey::Serial(present.serial.clone())
        }
    }

    /// The serial, if the token has one.
    pub fn serial(&self) -> Option<&str> {
        match self {
            TokenKey::Serial(s) => Some(s),
            TokenKey::Unnamed { .. } => None,
        }
    }
}

impl std::fmt::Display for TokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TokenKey::Serial(s) => f.write_str(s),
            TokenKey::Unnamed { module, slot } => write!(f, "module {module} slot {slot}"),
        }
    }
}

/// What the desk read from a token to classify it.
#[derive(Debug, Clone)]
pub struct Observation {
    /// The token as the slot scan saw it.
    pub present: PresentToken,
    /// Labels of the key pairs found (public objects, no PIN needed).
    pub keys: Vec<KeyLabel>,
    /// Certificates found: label and notAfter.
    pub certificates: Vec<(KeyLabel, SystemTime)>,
    /// The platform revoked this serial (replaced token).
    pub revoked: bool,
}

/// The inventory state of an observed token at `now`; a certificate expiring within
/// `warning` makes an active token `expiring`.
pub fn classify(obs: &Observation, now: SystemTime, warning: Duration) -> TokenState {
    let flags = &obs.present.flags;
    // A lost token stays revoked even wiped: the desk never produces on it again.
    if obs.revoked && !flags.so_pin_locked {
        return TokenState::Revoked;
    }
    if obs.present.is_blank() {
        return TokenState::Blank;
    }
    if flags.so_pin_locked {
        return TokenState::LockedSo;
    }
    if !obs.present.label.starts_with(LABEL_PREFIX.trim_end()) {
        return TokenState::Foreign;
    }
    if flags.user_pin_locked {
        return TokenState::LockedUser;
    }
    let complete = KeyLabel::ALL.iter().all(|l| obs.keys.contains(l))
        && KeyLabel::ALL
            .iter()
            .all(|l| obs.certificates.iter().any(|(c, _)| c == l));
    if !complete {
        return TokenState::InProduction;
    }
    let earliest = obs.certificates.iter().map(|(_, t)| *t).min();
    match earliest {
        Some(t) if t <= now => TokenState::Expired,
        Some(t) if t <= now + warning => TokenState::Expiring,
        _ => TokenState::Active,
    }
}

/// Why a token whose reading failed with `error` is `damaged`, for the inventory: the
/// PKCS#11 call and its `CKR_` code when the module answered with one, and the whole error.
pub fn damage(error: &TokenError) -> TokenDamage {
    TokenDamage {
        function: error.function(),
        return_code: error.rv().map(ckr_name),
        message: ukey_protocol::fit_text(&error.to_string(), 512),
    }
}

/// The panel light of a token's slot: what the desk staff must do there.
///
/// `working` while a job runs on the token (do not pull); `attention` for a damaged token,
/// even one whose job ended; `done` after a job succeeded, and also while the last job on the
/// token is still `in-progress` without it — its token is finished and the job waits only for
/// the platform's acknowledgement (take it out: the job succeeds without the token); `failed`
/// after a job failed; `attention` for a token the desk will not work on (foreign, locked,
/// revoked, expired, or ours but unfinished with no job); dark otherwise or once the operator
/// acknowledged it with the slot's button.
///
/// `outcome` is the execution state of the last job on the token once that job no longer
/// holds it.
pub fn light(
    state: TokenState,
    has_job: bool,
    outcome: Option<ExecutionState>,
    acknowledged: bool,
) -> Light {
    if has_job {
        return Light::Working;
    }
    if acknowledged {
        return Light::Off;
    }
    if state == TokenState::Damaged {
        // Gone bad since its job ended: "take it out" would hide that.
        return Light::Attention;
    }
    match outcome {
        Some(ExecutionState::Succeeded | ExecutionState::InProgress) => return Light::Done,
        Some(
            ExecutionState::Failed
            | ExecutionState::TimedOut
            | ExecutionState::Canceled
            | ExecutionState::Rejected,
        ) => return Light::Failed,
        _ => {}
    }
    match state {
        TokenState::Blank | TokenState::Active | TokenState::Expiring => Light::Off,
        TokenState::InProduction
        | TokenState::Expired
        | TokenState::LockedUser
        | TokenState::LockedSo
        | TokenState::Revoked
        | TokenState::Foreign
        | TokenState::Damaged => Light::Attention,
    }
}

/// The longest wait between two readings of a damaged token.
pub const REREAD_MAX: Duration = Duration::from_secs(30);

/// How long the scan waits before it reads a damaged token again after `failures` failed
/// readings in a row: one scan interval after the first, doubling up to [`REREAD_MAX`]. A
/// token (or a module) that keeps failing is not asked again on every scan; a change
/// the scan sees (flags, label, the token out and back), a reading that works, or the
/// panel's retry button reads it at once.
pub fn reread_delay(scan_interval: Duration, failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    scan_interval
        .saturating_mul(1 << doublings)
        .min(REREAD_MAX)
        .max(scan_interval)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn a_damaged_token_is_read_again_less_and_less_often() {
        let scan = Duration::from_millis(50);
        let delays: Vec<Duration> = (1..=12).map(|n| reread_delay(scan, n)).collect();
        assert_eq!(delays[0], scan, "the first retry is the next scan");
        assert_eq!(delays[1], 2 * scan);
        assert_eq!(delays[4], 16 * scan);
        assert!(delays.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(*delays.last().unwrap(), REREAD_MAX);
        assert_eq!(reread_delay(scan, u32::MAX), REREAD_MAX);
        // A scan interval longer than the cap is never cut below itself.
        assert_eq!(
            reread_delay(Duration::from_secs(60), 3),
            Duration::from_secs(60)
        );
    }
    use crate::token::TokenFlags;

    fn present(label: &str, initialized: bool) -> PresentToken {
        PresentToken {
            slot: 1,
            serial: "SIM0000000000001".into(),
            label: label.into(),
            model: "sim".into(),
            manufacturer: "sim".into(),
            flags: TokenFlags {
                initialized,
                ..TokenFlags::default()
            },
            min_pin_len: 6,
            max_pin_len: 16,
            slot_description: String::new(),
        }
    }

    fn obs(label: &str, certs_in_days: Option<u64>) -> Observation {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
        Observation {
            present: present(label, true),
            keys: KeyLabel::ALL.to_vec(),
            certificates: certs_in_days
                .map(|d| {
                    KeyLabel::ALL
                        .iter()
                        .map(|l| (*l, now + Duration::from_secs(d * 86_400)))
                        .collect()
                })
                .unwrap_or_default(),
            revoked: false,
        }
    }

    #[test]
    fn states_follow_what_the_token_holds() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
        let month = Duration::from_secs(30 * 86_400);
        let mut blank = obs("", None);
        blank.present.flags.initialized = false;
        assert_eq!(classify(&blank, now, month), TokenState::Blank);
        assert_eq!(
            classify(&obs("UKEY ORD-1", Some(365)), now, month),
            TokenState::Active
        );
        assert_eq!(
            classify(&obs("UKEY ORD-1", Some(10)), now, month),
            TokenState::Expiring
        );
        assert_eq!(
            classify(&obs("UKEY ORD-1", Some(0)), now, month),
            TokenState::Expired
        );
        assert_eq!(
            classify(&obs("UKEY ORD-1", None), now, month),
            TokenState::InProduction
        );
        assert_eq!(
            classify(&obs("bank token", Some(365)), now, month),
            TokenState::Foreign
        );
        let mut locked = obs("UKEY ORD-1", Some(365));
        locked.present.flags.user_pin_locked = true;
        assert_eq!(classify(&locked, now, month), TokenState::LockedUser);
        locked.present.flags.so_pin_locked = true;
        assert_eq!(classify(&locked, now, month), TokenState::LockedSo);
        let mut revoked = obs("UKEY ORD-1", Some(365));
        revoked.revoked = true;
        assert_eq!(classify(&revoked, now, month), TokenState::Revoked);
        revoked.present.flags.initialized = false;
        assert_eq!(
            classify(&revoked, now, month),
            TokenState::Revoked,
            "a wiped lost token stays revoked"
        );
    }

    #[test]
    fn lights_tell_the_staff_what_to_do() {
        assert_eq!(
            light(TokenState::InProduction, true, None, false),
            Light::Working
        );
        assert_eq!(
            light(
                TokenState::Active,
                false,
                Some(ExecutionState::Succeeded),
                false
            ),
            Light::Done
        );
        assert_eq!(
            light(
                TokenState::InProduction,
                false,
                Some(ExecutionState::Failed),
                false
            ),
            Light::Failed
        );
        assert_eq!(
            light(TokenState::Foreign, false, None, false),
            Light::Attention
        );
        assert_eq!(light(TokenState::Foreign, false, None, true), Light::Off);
        assert_eq!(light(TokenState::Blank, false, None, false), Light::Off);
    }

    #[test]
    fn damage_names_the_call_and_its_code() {
        let e = TokenError::Pkcs11 {
            function: "C_GetTokenInfo".into(),
            rv: cryptoki::error::RvError::DeviceError,
            slot: Some(2),
            serial: None,
        };
        let d = damage(&e);
        assert_eq!(d.function.as_deref(), Some("C_GetTokenInfo"));
        assert_eq!(d.return_code.as_deref(), Some("CKR_DEVICE_ERROR"));
        assert_eq!(
            d.message,
            "C_GetTokenInfo failed with CKR_DEVICE_ERROR on token ? (slot 2)"
        );
        let other = damage(&TokenError::Random("no entropy".into()));
        assert_eq!((other.function, other.return_code), (None, None));
        assert!(other.message.contains("no entropy"), "{}", other.message);
        assert_eq!(
            light(TokenState::Damaged, false, None, false),
            Light::Attention
        );
        assert_eq!(
            light(
                TokenState::Damaged,
                false,
                Some(ExecutionState::Succeeded),
                false
            ),
            Light::Attention,
            "gone bad after its job: not 'take it out'"
        );
        assert_eq!(
            light(TokenState::Damaged, true, None, false),
            Light::Working
        );
    }

    #[test]
    fn a_finished_token_waiting_for_the_platform_shows_done() {
        // The job released its finished token and waits for the platform's acknowledgement:
        // the staff may take the token out.
        let unconfirmed = Some(ExecutionState::InProgress);
        assert_eq!(
            light(TokenState::Active, false, unconfirmed, false),
            Light::Done
        );
        // Before the desk re-read the token it still says in-production: done all the same.
        assert_eq!(
            light(TokenState::InProduction, false, unconfirmed, false),
            Light::Done
        );
        assert_eq!(
            light(TokenState::Active, false, unconfirmed, true),
            Light::Off
        );
        assert_eq!(
            light(TokenState::Active, true, unconfirmed, false),
            Light::Working,
            "a new job on the token shows working"
        );
    }

    #[test]
    fn keys_name_tokens_by_serial() {
        let p = present("x", true);
        assert_eq!(
            TokenKey::of(0, &p),
            TokenKey::Serial("SIM0000000000001".into())
        );
        let mut spare = p.clone();
        spare.serial.clear();
        assert_eq!(
            TokenKey::of(2, &spare),
            TokenKey::Unnamed { module: 2, slot: 1 }
        );
        assert_eq!(TokenKey::of(2, &spare).serial(), None);
    }
}
