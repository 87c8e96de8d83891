//! Injected faults: a token's k-th call of a PKCS#11 function fails, pulls the token, or
//! stalls.
//!
//! Faults are stored with the token (so the CLI in one process arms them and the module in
//! another obeys). Each fault counts the calls of its function on its token made after it was
//! armed, from any process, and fires once, on the k-th; then it is gone. A *sticky* fault
//! ([`Fault::sticky`]) fires on the k-th call and on every later one until it is cleared: a
//! token that has gone bad (e.g. `C_GetTokenInfo` always failing with `CKR_DEVICE_ERROR`).

use cryptoki_sys::CK_RV;
use serde::{Deserialize, Serialize};

use super::names;
use crate::error::{Error, Result};

/// What a fault does when it fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum FaultAction {
    /// The call returns this code without doing anything.
    Fail {
        /// The `CKR_` code.
        rv: CK_RV,
    },
    /// The token is pulled from its slot; the call returns `CKR_DEVICE_REMOVED`.
    Pull,
    /// The call is delayed by this many milliseconds, then runs normally.
    Delay {
        /// The delay.
        ms: u64,
    },
}

/// One armed fault.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fault {
    function: String,
    nth: u32,
    action: FaultAction,
    #[serde(default)]
    seen: u32,
    /// Fires on every call from the `nth` on, until cleared.
    #[serde(default)]
    sticky: bool,
}

impl Fault {
    /// A fault on the `nth` (1-based) call of `function` (`C_Sign`, …).
    pub fn new(function: &str, nth: u32, action: FaultAction) -> Result<Fault> {
        let function = names::parse_function(function)?;
        if nth == 0 {
            return Err(Error::InvalidSetting {
                name: "nth",
                reason: "calls are counted from 1".into(),
            });
        }
        if let FaultAction::Fail { rv: 0 } = action {
            return Err(Error::InvalidSetting {
                name: "rv",
                reason: "CKR_OK is not a failure".into(),
            });
        }
        Ok(Fault {
            function: function.to_string(),
            nth,
            action,
            seen: 0,
            sticky: false,
        })
    }

    /// The same fault, made sticky: it fires on the `nth` call and on every later one, and
    /// stays armed until the token's faults are cleared.
    pub fn sticky(mut self) -> Fault {
        self.sticky = true;
        self
    }

    /// Whether it fires on every call from the `nth` on (see [`Fault::sticky`]).
    pub fn is_sticky(&self) -> bool {
        self.sticky
    }

    /// A sticky fault that has fired already: it fires on every call now, without counting.
    pub(crate) fn fires_always(&self) -> bool {
        self.sticky && self.seen >= self.nth
    }

    /// The function this fault watches.
    pub fn function(&self) -> &str {
        &self.function
    }

    /// The call (1-based) on which it fires.
    pub fn nth(&self) -> u32 {
        self.nth
    }

    /// What it does.
    pub fn action(&self) -> FaultAction {
        self.action
    }

    /// Calls counted so far.
    pub fn seen(&self) -> u32 {
        self.seen
    }

    /// Counts one call; `true` when the fault fires on this call.
    pub(crate) fn count(&mut self) -> bool {
        self.seen = self.seen.saturating_add(1);
        if self.sticky {
            self.seen >= self.nth
        } else {
            self.seen == self.nth
        }
    }

    /// Human description (`C_Sign call #2 -> CKR_DEVICE_ERROR (0 seen)`; a sticky fault says
    /// `call #2 on`).
    pub fn describe(&self) -> String {
        let what = match self.action {
            FaultAction::Fail { rv } if self.function.starts_with("SKF_") => {
                crate::skf::consts::sar_name(u32::try_from(rv).unwrap_or(u32::MAX))
            }
            FaultAction::Fail { rv } => names::rv_name(rv),
            FaultAction::Pull => "pull the token".to_string(),
            FaultAction::Delay { ms } => format!("delay {ms} ms"),
        };
        let on = if self.sticky { " on" } else { "" };
        format!(
            "{} call #{}{on} -> {what} ({} seen)",
            self.function, self.nth, self.seen
        )
    }
}
