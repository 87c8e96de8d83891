//! Refused platform messages: acks, certificate responses and cancels that are unsigned, not
//! signed by a trusted key, of the wrong kind, or meant for another station. The daemon never
//! acts on them; this module counts them (for the status snapshot) and decides when a refusal
//! gets a log line, so that whoever can publish on the station's topics cannot flood the log.
//!
//! Pure: the caller gives the time. What this module does not do: verify messages
//! (`ukey_protocol::verify_platform_message`) or write the log line (the daemon does).

use std::time::{Duration, Instant};

use ukey_protocol::ProtocolError;

/// At most one log line per this long after the first refusal.
pub(super) const LOG_EVERY: Duration = Duration::from_secs(60);

/// The refusals so far and the state of their log lines.
#[derive(Debug, Default)]
pub(super) struct Refusals {
    total: u64,
    last_line: Option<Instant>,
    unlogged: u64,
}

/// A log line is due: how many refusals went without one before this one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct LineDue {
    /// Refusals since the last line that had none of their own.
    pub(super) unlogged: u64,
}

impl Refusals {
    /// Counts one refusal at `now`. Returns `Some` when it gets a log line: the first one,
    /// then at most one per [`LOG_EVERY`].
    pub(super) fn refuse(&mut self, now: Instant) -> Option<LineDue> {
        self.total += 1;
        let due = self
            .last_line
            .is_none_or(|last| now.saturating_duration_since(last) >= LOG_EVERY);
        if !due {
            self.unlogged += 1;
            return None;
        }
        self.last_line = Some(now);
        Some(LineDue {
            unlogged: std::mem::take(&mut self.unlogged),
        })
    }

    /// Refusals since the agent started.
    pub(super) fn total(&self) -> u64 {
        self.total
    }
}

/// Why a message was refused, in words that carry nothing of its content (a decoder's
/// message may quote the payload; a key id is whatever the sender wrote).
pub(super) fn reason(e: &ProtocolError) -> &'static str {
    match e {
        ProtocolError::Unsigned { .. } => "unsigned",
        ProtocolError::UnknownKeyId { .. } => "signed with an unknown key id",
        ProtocolError::BadSignature { .. } => "signature does not verify",
        ProtocolError::SignatureAlgorithmMismatch { .. } => "algorithm does not fit the key",
        ProtocolError::WrongMessageType { .. } => "signed as another kind of message",
        ProtocolError::OtherStation { .. } => "addressed to another station",
        ProtocolError::TooLarge { .. } => "too large",
        _ => "malformed or invalid",
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn first_refusal_logged_then_at_most_one_line_a_minute() {
        let start = Instant::now();
        let mut r = Refusals::default();
        assert_eq!(r.refuse(start), Some(LineDue { unlogged: 0 }));
        for i in 1..=1000 {
            assert_eq!(r.refuse(start + Duration::from_millis(i)), None);
        }
        assert_eq!(r.refuse(start + LOG_EVERY - Duration::from_millis(1)), None);
        assert_eq!(
            r.refuse(start + LOG_EVERY),
            Some(LineDue { unlogged: 1001 }),
            "the next line says how many went unlogged"
        );
        assert_eq!(r.refuse(start + LOG_EVERY + Duration::from_secs(1)), None);
        assert_eq!(
            r.refuse(start + LOG_EVERY * 3),
            Some(LineDue { unlogged: 1 })
        );
        assert_eq!(r.total(), 1005);
    }

    #[test]
    fn reasons_name_the_failure_not_the_content() {
        let secret = "payload-content-12345";
        let cases = [
            (ProtocolError::Unsigned { message: "ack" }, "unsigned"),
            (
                ProtocolError::UnknownKeyId {
                    key_id: secret.into(),
                },
                "signed with an unknown key id",
            ),
            (
                ProtocolError::BadSignature {
                    key_id: secret.into(),
                },
                "signature does not verify",
            ),
            (
                ProtocolError::Malformed {
                    message: "ack",
                    detail: secret.into(),
                },
                "malformed or invalid",
            ),
        ];
        for (e, want) in cases {
            assert_eq!(reason(&e), want);
            assert!(!reason(&e).contains(secret));
        }
    }
}
