//! Identifiers: jobs, events, stations, tokens, nonces, error codes.
//!
//! Each is a string newtype whose rules keep it safe as an MQTT topic level and as a file
//! name (no `/`, `+`, `#`, no leading `.`). Decoding a message checks them through the
//! message's validation, with the field path; [`JobId::new`] and friends check on construction.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::{Problem, ProtocolError};

fn check_chars(
    path: &str,
    s: &str,
    min: usize,
    max: usize,
    allowed: impl Fn(usize, char) -> bool,
) -> Result<(), ProtocolError> {
    let len = s.chars().count();
    if len == 0 {
        return Err(ProtocolError::invalid(path, Problem::Empty));
    }
    if len < min {
        return Err(ProtocolError::invalid(path, Problem::TooShort { min }));
    }
    if len > max {
        return Err(ProtocolError::invalid(path, Problem::TooLong { max }));
    }
    if let Some(position) = s.chars().enumerate().position(|(i, c)| !allowed(i, c)) {
        return Err(ProtocolError::invalid(
            path,
            Problem::BadCharacter { position },
        ));
    }
    Ok(())
}

/// `[A-Za-z0-9]` first, then `[A-Za-z0-9._-]`.
fn id_char(i: usize, c: char) -> bool {
    c.is_ascii_alphanumeric() || (i > 0 && matches!(c, '.' | '_' | '-'))
}

macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident, $what:literal, $min:expr, $max:expr, $allowed:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// Shortest allowed length in characters.
            pub const MIN_LEN: usize = $min;
            /// Longest allowed length in characters.
            pub const MAX_LEN: usize = $max;

            /// Checks and wraps `s`.
            pub fn new(s: impl Into<String>) -> Result<$name, ProtocolError> {
                let id = $name(s.into());
                id.check($what)?;
                Ok(id)
            }

            /// Checks the rules, reporting a violation at `path`.
            pub fn check(&self, path: &str) -> Result<(), ProtocolError> {
                check_chars(path, &self.0, $min, $max, $allowed)
            }

            /// The identifier as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}

string_id!(
    /// A job's id, chosen by the platform: 1-64 of `[A-Za-z0-9._-]`, starting alphanumeric.
    JobId, "job_id", 1, 64, id_char
);
string_id!(
    /// A step event's id, chosen by the station, unique across all its events (a UUID is
    /// fine): 1-64 of `[A-Za-z0-9._-]`, starting alphanumeric. The platform de-duplicates by it.
    EventId, "event_id", 1, 64, id_char
);
string_id!(
    /// A production desk's station id: 1-64 of `[A-Za-z0-9._-]`, starting alphanumeric.
    StationId, "station_id", 1, 64, id_char
);
string_id!(
    /// A token's serial number as in `CK_TOKEN_INFO.serialNumber` (padding removed):
    /// 1-16 of `[A-Za-z0-9._:-]`.
    TokenSerial, "token_serial", 1, 16,
    |_, c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-')
);
string_id!(
    /// A signed job's single-use nonce: 16-128 of `[A-Za-z0-9_-]` (hex or base64url).
    Nonce, "nonce", 16, 128,
    |_, c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '-')
);
string_id!(
    /// A machine-readable error code in a step event or rejection, e.g. `token-removed`:
    /// 1-64 of `[a-z0-9._-]`, starting with a letter or digit.
    ErrorCode, "code", 1, 64,
    |i, c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || (i > 0 && matches!(c, '.' | '_' | '-'))
);

impl ErrorCode {
    /// A code checked when it was compiled (see [`crate::codes`]).
    pub(crate) fn from_code(code: crate::codes::Code) -> ErrorCode {
        ErrorCode(code.as_str().to_owned())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn ids_refuse_topic_and_path_characters() {
        for bad in ["", "a/b", "a+b", "a#", ".hidden", "-x", "a b", "é"] {
            assert!(JobId::new(bad).is_err(), "{bad:?} accepted");
        }
        assert!(JobId::new("J-2025.0001_a").is_ok());
        assert_eq!(
            JobId::new("x".repeat(65))
                .unwrap_err()
                .as_invalid()
                .unwrap()
                .1,
            &Problem::TooLong { max: 64 }
        );
    }

    #[test]
    fn nonce_has_a_minimum_length() {
        assert_eq!(
            Nonce::new("short").unwrap_err(),
            ProtocolError::invalid("nonce", Problem::TooShort { min: 16 })
        );
        assert!(Nonce::new("0123456789abcdef").is_ok());
    }

    #[test]
    fn token_serial_fits_pkcs11() {
        assert!(TokenSerial::new("0123456789ABCDEF").is_ok());
        assert!(TokenSerial::new("0123456789ABCDEF0").is_err());
    }

    #[test]
    fn error_code_is_lowercase() {
        assert!(ErrorCode::new("token-removed").is_ok());
        assert!(ErrorCode::new("Token").is_err());
    }
}
