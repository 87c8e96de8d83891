//! The demo's summary: per token the slot, serial, job, company, the three certificates
//! (subject CN, serial, not-after, SHA-256 fingerprint), duration and verification verdict —
//! as a text table for people or as JSON (`--json`) for scripts and tests.
//!
//! Pure formatting: the data comes from the desk run, the platform's records and the
//! verification pass. The JSON carries each token's user PIN (what a tester needs to log in);
//! the text table never does.

use std::time::Duration;

use der::Decode;
use serde::Serialize;
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use x509_cert::Certificate;

use super::progress::pad;

/// One certificate, as the summary shows it.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct CertSummary {
    /// `seal-official`, `seal-legal`, `encryption`.
    pub(crate) label: String,
    /// The subject's common name.
    pub(crate) subject_cn: String,
    /// The serial number, upper-case hex.
    pub(crate) serial: String,
    /// notAfter, RFC 3339.
    pub(crate) not_after: String,
    /// SHA-256 of the DER, lower-case hex.
    pub(crate) sha256: String,
}

impl CertSummary {
    /// Reads what the summary shows from a DER certificate.
    pub(crate) fn of(label: &str, der: &[u8]) -> CertSummary {
        let sha256 = hex::encode(Sha256::digest(der));
        let Ok(cert) = Certificate::from_der(der) else {
            return CertSummary {
                label: label.to_owned(),
                subject_cn: "(unparsable certificate)".to_owned(),
                serial: String::new(),
                not_after: String::new(),
                sha256,
            };
        };
        let tbs = cert.tbs_certificate();
        let subject_cn = tbs
            .subject()
            .common_name()
            .ok()
            .flatten()
            .map(|cn| cn.value().into_owned())
            .unwrap_or_default();
        let not_after = OffsetDateTime::from(tbs.validity().not_after.to_system_time())
            .format(&Rfc3339)
            .unwrap_or_default();
        CertSummary {
            label: label.to_owned(),
            subject_cn,
            serial: hex::encode_upper(tbs.serial_number().as_bytes()),
            not_after,
            sha256,
        }
    }
}

/// One token in the summary.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct TokenSummary {
    /// The rack slot (the PKCS#11 slot id with `--module`).
    pub(crate) slot: Option<u64>,
    /// The token serial.
    pub(crate) serial: Option<String>,
    /// The job that made it.
    pub(crate) job_id: Option<String>,
    /// The company it was made for.
    pub(crate) company: Option<String>,
    /// The company's unified social credit code.
    pub(crate) credit_code: Option<String>,
    /// The order number (the token label is `UKEY ` and this).
    pub(crate) order_number: Option<String>,
    /// `succeeded` or `failed`.
    pub(crate) state: &'static str,
    /// Why it failed.
    pub(crate) error: Option<String>,
    /// From the job's claim to its last event, in milliseconds.
    pub(crate) duration_ms: Option<u64>,
    /// The user PIN as the platform unsealed it (JSON only).
    pub(crate) user_pin: Option<String>,
    /// The three certificates, as read back from the token (else as issued).
    pub(crate) certificates: Vec<CertSummary>,
    /// Whether the verification pass accepted the token.
    pub(crate) verified: bool,
    /// What the verification pass found wrong.
    pub(crate) verification_problems: Vec<String>,
}

/// One scripted fault in the summary.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct FaultSummary {
    /// `token-pulled` or `certificate-for-another-key`.
    pub(crate) fault: &'static str,
    /// The token it hit.
    pub(crate) serial: String,
    /// The job it hit.
    pub(crate) job_id: Option<String>,
    /// Whether the agent caught it (parked the job / refused the certificates).
    pub(crate) caught: bool,
    /// Whether the token was finished in the end.
    pub(crate) recovered: bool,
    /// What happened.
    pub(crate) detail: String,
}

/// The whole summary.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Summary {
    /// Every token produced and verified.
    pub(crate) ok: bool,
    /// Tokens asked for.
    pub(crate) tokens_requested: usize,
    /// Tokens whose job succeeded.
    pub(crate) tokens_produced: usize,
    /// Tokens the verification pass accepted.
    pub(crate) tokens_verified: usize,
    /// Key algorithm.
    pub(crate) algorithm: &'static str,
    /// Latency profile (rack only).
    pub(crate) latency: Option<&'static str>,
    /// Rack slots (rack only).
    pub(crate) slots: Option<usize>,
    /// The PKCS#11 module.
    pub(crate) module: String,
    /// `embedded 127.0.0.1:PORT` or the external broker.
    pub(crate) broker: String,
    /// The demo's folder, when kept.
    pub(crate) dir: Option<String>,
    /// Start-up (broker, platform, agent) in milliseconds.
    pub(crate) setup_ms: u64,
    /// First token plugged in to last token finished, in milliseconds.
    pub(crate) makespan_ms: u64,
    /// The longest single token (claim to last event), in milliseconds.
    pub(crate) slowest_token_ms: Option<u64>,
    /// Why the run stopped early, if it did.
    pub(crate) aborted: Option<String>,
    /// `SIGINT` or `SIGTERM` when the run was interrupted: then the summary is partial (no
    /// verification pass, tokens in progress are `interrupted`).
    pub(crate) interrupted: Option<&'static str>,
    /// Per token.
    pub(crate) tokens: Vec<TokenSummary>,
    /// The scripted faults (`--faults`).
    pub(crate) faults: Vec<FaultSummary>,
    /// The rack's indicator panel at the end of the run (emulated on a pty), if any: taken
    /// once the lights show the final slot table (each token left in a slot lit for how it
    /// ended, empty slots dark), or at the moment of an interruption.
    pub(crate) panel: Option<String>,
    /// Whether the lights had settled on the final slot table when `panel` was taken
    /// (`None`: no waiting, e.g. after an interruption).
    pub(crate) panel_settled: Option<bool>,
}

/// Milliseconds, saturating.
pub(crate) fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn secs(ms: u64) -> String {
    format!("{:.2} s", ms as f64 / 1000.0)
}

impl Summary {
    /// The summary as pretty JSON, with a final newline.
    pub(crate) fn to_json(&self) -> String {
        serde_json::to_string_pretty(self)
            .map(|s| s + "\n")
            .unwrap_or_else(|e| format!("{{\"ok\": false, \"error\": \"{e}\"}}\n"))
    }

    /// The summary as a text table (no PINs); `paint` colours a verdict (`ok`, text).
    pub(crate) fn to_text(&self, paint: &dyn Fn(bool, &str) -> String) -> String {
        let mut out = String::new();
        let slot_width = self
            .tokens
            .iter()
            .filter_map(|t| t.slot.map(|s| s.to_string().len()))
            .max()
            .unwrap_or(0)
            .max(4);
        out += &format!(
            "\n{}  {}  {}  {}  {:>8}  {}\n",
            pad("SLOT", slot_width),
            pad("TOKEN", 16),
            pad("JOB", 18),
            pad("COMPANY", 26),
            "TIME",
            "VERIFIED"
        );
        for t in &self.tokens {
            let verdict = if t.verified {
                paint(true, "yes")
            } else {
                paint(false, "NO")
            };
            out += &format!(
                "{}  {}  {}  {}  {:>8}  {}\n",
                pad(
                    &t.slot.map(|s| s.to_string()).unwrap_or_else(|| "-".into()),
                    slot_width
                ),
                pad(t.serial.as_deref().unwrap_or("-"), 16),
                pad(t.job_id.as_deref().unwrap_or("-"), 18),
                pad(t.company.as_deref().unwrap_or("-"), 26),
                t.duration_ms.map(secs).unwrap_or_else(|| "-".into()),
                verdict
            );
            for c in &t.certificates {
                out += &format!(
                    "      {}  {}  not after {}  serial {}\n      {}  SHA-256 {}\n",
                    pad(&c.label, 13),
                    pad(&format!("CN={}", c.subject_cn), 29),
                    c.not_after.get(..10).unwrap_or(&c.not_after),
                    c.serial,
                    pad("", 13),
                    c.sha256
                );
            }
            if let Some(e) = &t.error {
                let text = if e.starts_with(t.state) {
                    e.clone()
                } else {
                    format!("{}: {e}", t.state)
                };
                out += &format!("      {}\n", paint(false, &text));
            }
            for p in &t.verification_problems {
                out += &format!("      {}\n", paint(false, &format!("verification: {p}")));
            }
        }
        if !self.faults.is_empty() {
            out += "\nFaults (--faults):\n";
            for f in &self.faults {
                let verdict = match (f.caught, f.recovered) {
                    (true, true) => paint(true, "caught, recovered"),
                    (true, false) => paint(false, "caught, NOT recovered"),
                    (false, _) => paint(false, "NOT caught"),
                };
                out += &format!(
                    "  {:<28} token {}  {}\n    {}\n",
                    f.fault, f.serial, verdict, f.detail
                );
            }
        }
        if let Some(signal) = self.interrupted {
            out += &format!(
                "\nVerification: cut short by {signal}; a token not reopened through PKCS#11\n  \
                 counts as not verified.\n"
            );
        } else {
            out += &format!(
                "\nVerification: every token reopened through PKCS#11 ({}),\n  \
                 logged in with the user PIN the platform unsealed: 3 private keys (sensitive, not\n  \
                 extractable, local, always sensitive, never extractable) and 3 certificates, each\n  \
                 certifying the token's own key and equal to the one the platform issued.\n",
                self.module
            );
        }
        if let Some(row) = &self.panel {
            let when = match (self.interrupted, self.panel_settled) {
                (Some(_), _) => " (when interrupted)",
                (None, Some(false)) => " (still changing)",
                _ => "",
            };
            out += &format!(
                "\nIndicator panel (emulated on a pseudo-terminal, driven by the agent){when}: {row}\n"
            );
        }
        let slowest = self
            .slowest_token_ms
            .map(|m| format!(", slowest token {}", secs(m)))
            .unwrap_or_default();
        out += &format!(
            "\n{} of {} tokens produced, {} verified; {} ({}{}); start-up {}.\n",
            self.tokens_produced,
            self.tokens_requested,
            self.tokens_verified,
            format_args!("{} for the tokens", secs(self.makespan_ms)),
            self.algorithm,
            slowest,
            secs(self.setup_ms),
        );
        if let Some(why) = &self.aborted {
            out += &paint(false, &format!("The run stopped early: {why}.\n"));
        }
        out += &paint(
            self.ok,
            if self.ok {
                "All tokens produced and verified.\n"
            } else {
                "Not every token was produced and verified.\n"
            },
        );
        out
    }
}
