//! Who is at the desk: the control socket's commands (`ukey-agent operator sign-in` /
//! `sign-out` / `show`), the `[desk] require_operator` rule on claims, and the desk alerts
//! that are about the desk itself (nobody signed in while one is required; audit entries not
//! written).
//!
//! The operator lives in the audit log's writer, which names them in every entry; receipts
//! name the operator signed in when their job started on its token.

use ukey_protocol::codes;
use ukey_protocol::inventory::DeskAlert;

use crate::audit::AuditEvent;
use crate::control::{self, Command, Reply};
use crate::job::code;

use super::{Daemon, DaemonError};

impl Daemon {
    /// Whether the desk may claim jobs as far as staffing goes.
    pub(super) fn staffed(&self) -> bool {
        !self.config.desk.require_operator || self.audit.operator().is_some()
    }

    /// Why claims wait, when they wait for an operator (status and logs).
    pub(super) fn claims_paused(&self) -> Option<String> {
        (!self.staffed()).then(|| {
            "no operator is signed in and [desk] require_operator is set: jobs wait until \
             someone runs `ukey-agent operator sign-in ID`"
                .to_owned()
        })
    }

    /// The desk's own alerts: audit entries lost, nobody signed in where required.
    pub(super) fn desk_policy_alerts(&self) -> Vec<DeskAlert> {
        let mut alerts = Vec::new();
        let health = self.audit.health();
        if health.lost > 0 {
            alerts.push(DeskAlert {
                code: code(codes::AUDIT_LOG_FAILED),
                port: None,
                message: ukey_protocol::fit_text(
                    &format!(
                        "{} audit log entries could not be written since the agent started (last error: {}); the station's record is incomplete",
                        health.lost,
                        health.last_error.as_deref().unwrap_or("-")
                    ),
                    512,
                ),
            });
        }
        if let Some(why) = self.claims_paused() {
            alerts.push(DeskAlert {
                code: code(codes::OPERATOR_REQUIRED),
                port: None,
                message: ukey_protocol::fit_text(&why, 512),
            });
        }
        alerts
    }

    /// Carries out a control command and answers it.
    pub(super) async fn on_control(
        &mut self,
        request: control::Request,
    ) -> Result<(), DaemonError> {
        let current = self.audit.operator();
        let reply = match request.command {
            Command::SignIn { operator } => match control::check_operator(&operator) {
                Err(why) => Reply {
                    ok: false,
                    message: why,
                    operator: current,
                },
                Ok(()) => {
                    if let Some(previous) = current.filter(|p| *p != operator) {
                        self.audit
                            .record(AuditEvent::OperatorSignedOut { operator: previous });
                    }
                    self.audit.set_operator(Some(operator.clone()));
                    self.audit.record(AuditEvent::OperatorSignedIn {
                        operator: operator.clone(),
                    });
                    tracing::info!(operator = %operator, "operator signed in");
                    Reply {
                        ok: true,
                        message: format!("{operator} is signed in at station {}", self.station),
                        operator: Some(operator),
                    }
                }
            },
            Command::SignOut => match current {
                None => Reply {
                    ok: false,
                    message: "nobody is signed in".to_owned(),
                    operator: None,
                },
                Some(operator) => {
                    // The entry still names them; then nobody is signed in.
                    self.audit.record(AuditEvent::OperatorSignedOut {
                        operator: operator.clone(),
                    });
                    self.audit.set_operator(None);
                    tracing::info!(operator = %operator, "operator signed out");
                    let wait = if self.config.desk.require_operator {
                        "; jobs wait until someone signs in"
                    } else {
                        ""
                    };
                    Reply {
                        ok: true,
                        message: format!("{operator} signed out{wait}"),
                        operator: None,
                    }
                }
            },
            Command::Show => Reply {
                ok: true,
                message: match (&current, self.claims_paused()) {
                    (Some(op), _) => format!("{op} is signed in"),
                    (None, Some(why)) => format!("nobody is signed in: {why}"),
                    (None, None) => "nobody is signed in".to_owned(),
                },
                operator: current,
            },
        };
        let _ = request.reply.send(reply);
        self.write_status();
        self.try_claim_all().await
    }
}
