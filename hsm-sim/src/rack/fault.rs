//! Injected faults: a token's k-th call of a PKCS#11 function fails, pulls the token, or
//! stalls.
//!
//! Faults are stored with the token (so the CLI in one process arms them and the module in
//! another obeys). Each fault counts the calls of its function on its token made after it was
//! armed, from any process, and fires once, on the k-th; then it is gone.

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
        })
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

    /// Counts one call; `true` when this call is the one the fault fires on.
    pub(crate) fn count(&mut self) -> bool {
        self.seen += 1;
        self.seen == self.nth
    }

    /// Human description (`C_Sign #2 → CKR_DEVICE_ERROR`).
    pub fn describe(&self) -> String {
        let what = match self.action {
            FaultAction::Fail { rv } => names::rv_name(rv),
            FaultAction::Pull => "pull the token".to_string(),
            FaultAction::Delay { ms } => format!("delay {ms} ms"),
        };
        format!(
            "{} call #{} -> {what} ({} seen)",
            self.function, self.nth, self.seen
        )
    }
}
