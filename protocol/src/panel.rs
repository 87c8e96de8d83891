//! The indicator panel's line protocol, version 1: parsing and formatting of single lines
//! (pure). A contract both sides implement: the agent's panel driver and a panel board (or
//! hsm-sim's panel emulator) speak it.
//!
//! Every message is one line of printable ASCII ended by `\n` (a `\r` before it is
//! tolerated), at most [`MAX_LINE`] bytes without the terminator. Fields are separated by
//! spaces; keywords and words are matched without regard to case and written the way
//! `docs/PANEL.md` shows them (keywords upper case, words lower case). [`HostLine`] is what the
//! agent sends, [`BoardLine`] what the board sends, and [`LineReader`] cuts a byte stream into
//! bounded lines.
//!
//! This module does no IO and keeps no connection state: which line may come when, and what
//! to do about a bad one, is the driver's (and the board's) business. A parse error is an
//! ordinary value, never a panic, whatever the bytes.

use std::fmt;

/// The protocol version this module speaks (the first field of `HELLO` both ways).
pub const PROTOCOL_VERSION: u16 = 1;

/// Longest line in bytes, terminator excluded.
pub const MAX_LINE: usize = 128;

/// Most slots a panel may have (the inventory's limit too).
pub const MAX_SLOTS: usize = 64;

/// Longest model name, firmware version or error code.
pub const MAX_WORD: usize = 32;

/// A slot's light.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Light {
    /// Dark: empty slot, or nothing to say.
    #[default]
    Off,
    /// A job is running on the token in this slot: do not pull it.
    Working,
    /// The token is finished: take it out.
    Done,
    /// The job failed: the operator may retry.
    Failed,
    /// The desk needs the operator here (wrong token, locked PIN, unknown state).
    Attention,
}

impl Light {
    /// Every light, in protocol order.
    pub const ALL: [Light; 5] = [
        Light::Off,
        Light::Working,
        Light::Done,
        Light::Failed,
        Light::Attention,
    ];

    /// The word used in `LIGHT` lines.
    pub fn word(self) -> &'static str {
        match self {
            Light::Off => "off",
            Light::Working => "working",
            Light::Done => "done",
            Light::Failed => "failed",
            Light::Attention => "attention",
        }
    }

    /// The one-letter code used in `STATE` lines.
    pub fn code(self) -> char {
        match self {
            Light::Off => '.',
            Light::Working => 'w',
            Light::Done => 'd',
            Light::Failed => 'f',
            Light::Attention => 'a',
        }
    }

    fn from_word(word: &str) -> Option<Light> {
        Light::ALL
            .into_iter()
            .find(|l| l.word().eq_ignore_ascii_case(word))
    }

    fn from_code(code: u8) -> Option<Light> {
        Light::ALL
            .into_iter()
            .find(|l| l.code() == char::from(code.to_ascii_lowercase()))
    }
}

impl fmt::Display for Light {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.word())
    }
}

/// A buzzer pattern. A beep is an event, not state: it is never repeated after a reconnect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BeepPattern {
    /// One short beep (token finished).
    Short,
    /// Two short beeps (operator needed).
    Double,
    /// One long beep (job failed).
    Long,
}

impl BeepPattern {
    /// Every pattern, in protocol order.
    pub const ALL: [BeepPattern; 3] = [BeepPattern::Short, BeepPattern::Double, BeepPattern::Long];

    /// The word used in `BEEP` lines.
    pub fn word(self) -> &'static str {
        match self {
            BeepPattern::Short => "short",
            BeepPattern::Double => "double",
            BeepPattern::Long => "long",
        }
    }

    fn from_word(word: &str) -> Option<BeepPattern> {
        BeepPattern::ALL
            .into_iter()
            .find(|p| p.word().eq_ignore_ascii_case(word))
    }
}

impl fmt::Display for BeepPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.word())
    }
}

/// What a slot's button asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ButtonAction {
    /// Run the failed job on this slot again.
    Retry,
    /// The operator has seen the attention (or done) light.
    Ack,
}

impl ButtonAction {
    /// Every action, in protocol order.
    pub const ALL: [ButtonAction; 2] = [ButtonAction::Retry, ButtonAction::Ack];

    /// The word used in `PRESS` lines.
    pub fn word(self) -> &'static str {
        match self {
            ButtonAction::Retry => "retry",
            ButtonAction::Ack => "ack",
        }
    }

    fn from_word(word: &str) -> Option<ButtonAction> {
        ButtonAction::ALL
            .into_iter()
            .find(|a| a.word().eq_ignore_ascii_case(word))
    }
}

impl fmt::Display for ButtonAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.word())
    }
}

/// What the board says about itself in `HELLO`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BoardInfo {
    /// Model name (1..=32 of `A-Z a-z 0-9 . _ + -`).
    pub model: String,
    /// Number of slots (1..=[`MAX_SLOTS`]); slots are numbered from 0.
    pub slots: u8,
    /// Firmware version (same alphabet as the model).
    pub firmware: String,
}

/// A line from the agent to the board.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum HostLine {
    /// `HELLO <version>`: the agent's protocol version; the board answers with its `HELLO`.
    Hello {
        /// The agent's protocol version.
        version: u16,
    },
    /// `LIGHT <slot> <light>`: set one slot's light.
    Light {
        /// Slot number, from 0.
        slot: u8,
        /// The light.
        light: Light,
    },
    /// `BEEP <slot> <pattern>`: sound the buzzer for a slot.
    Beep {
        /// Slot number, from 0.
        slot: u8,
        /// The pattern.
        pattern: BeepPattern,
    },
    /// `STATE <codes>`: every slot's light at once, one code per slot from slot 0.
    State(Vec<Light>),
    /// `PING <n>`: the board answers `PONG <n>`.
    Ping(u16),
}

/// A line from the board to the agent.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum BoardLine {
    /// `HELLO <version> <model> <slots> <firmware>`: sent at power-up and in answer to the
    /// agent's `HELLO`.
    Hello(BoardInfo),
    /// `PRESS <slot> <action>`: a slot's button was pressed.
    Press {
        /// Slot number, from 0.
        slot: u8,
        /// What the press asks for.
        action: ButtonAction,
    },
    /// `PONG <n>`: the answer to `PING <n>`.
    Pong(u16),
    /// `ERR <code> [detail]`: the board could not use a line of the agent's.
    Error {
        /// A short code, e.g. `syntax`, `slot`, `version`.
        code: String,
        /// Free text (printable ASCII), possibly empty.
        detail: String,
    },
}

/// Why a line is not a valid message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LineError {
    /// Nothing but spaces.
    #[error("empty line")]
    Empty,
    /// Longer than [`MAX_LINE`] bytes (the rest up to the next `\n` is dropped).
    #[error("line longer than {max} bytes", max = MAX_LINE)]
    TooLong,
    /// A byte outside printable ASCII.
    #[error("byte 0x{byte:02x} at offset {at} is not printable ASCII")]
    NotPrintable {
        /// The offending byte.
        byte: u8,
        /// Its offset in the line.
        at: usize,
    },
    /// A keyword this side does not know.
    #[error("unknown command {0:?}")]
    UnknownCommand(String),
    /// The right command with the wrong number of fields.
    #[error("{command} takes {expected} field(s), got {got}")]
    FieldCount {
        /// The command.
        command: &'static str,
        /// How many fields it takes.
        expected: usize,
        /// How many came.
        got: usize,
    },
    /// A field that does not hold what it should.
    #[error("{command}: bad {field} {value:?}")]
    BadField {
        /// The command.
        command: &'static str,
        /// Which field.
        field: &'static str,
        /// What came (cut to [`MAX_LINE`] bytes at most, since it comes from a line).
        value: String,
    },
    /// A `HELLO` of another protocol version.
    #[error("protocol version {version} is not supported (this side speaks {PROTOCOL_VERSION})")]
    UnsupportedVersion {
        /// The version the other side announced.
        version: u16,
    },
}

/// Checks the line's bytes and splits it into fields.
fn fields(line: &[u8]) -> Result<Vec<&str>, LineError> {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if line.len() > MAX_LINE {
        return Err(LineError::TooLong);
    }
    if let Some(at) = line.iter().position(|b| !(0x20..=0x7e).contains(b)) {
        return Err(LineError::NotPrintable { byte: line[at], at });
    }
    // Printable ASCII is valid UTF-8.
    let text = std::str::from_utf8(line).map_err(|e| LineError::NotPrintable {
        byte: line.get(e.valid_up_to()).copied().unwrap_or(0),
        at: e.valid_up_to(),
    })?;
    let fields: Vec<&str> = text.split(' ').filter(|f| !f.is_empty()).collect();
    if fields.is_empty() {
        return Err(LineError::Empty);
    }
    Ok(fields)
}

fn expect_count(command: &'static str, fields: &[&str], expected: usize) -> Result<(), LineError> {
    if fields.len() == expected {
        Ok(())
    } else {
        Err(LineError::FieldCount {
            command,
            expected,
            got: fields.len(),
        })
    }
}

fn bad(command: &'static str, field: &'static str, value: &str) -> LineError {
    LineError::BadField {
        command,
        field,
        value: value.to_owned(),
    }
}

/// Decimal digits only (no sign, no spaces), as `str::parse` would also accept `+1`.
fn number<T: std::str::FromStr>(
    command: &'static str,
    field: &'static str,
    value: &str,
) -> Result<T, LineError> {
    if value.is_empty() || value.len() > 5 || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad(command, field, value));
    }
    value.parse().map_err(|_| bad(command, field, value))
}

fn slot(command: &'static str, value: &str) -> Result<u8, LineError> {
    let slot: u16 = number(command, "slot", value)?;
    match u8::try_from(slot) {
        Ok(s) if usize::from(s) < MAX_SLOTS => Ok(s),
        _ => Err(bad(command, "slot", value)),
    }
}

fn version(command: &'static str, value: &str) -> Result<u16, LineError> {
    let version: u16 = number(command, "version", value)?;
    if version == PROTOCOL_VERSION {
        Ok(version)
    } else {
        Err(LineError::UnsupportedVersion { version })
    }
}

/// A model name, firmware version or error code.
fn word(command: &'static str, field: &'static str, value: &str) -> Result<String, LineError> {
    if (1..=MAX_WORD).contains(&value.len())
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'+' | b'-'))
    {
        Ok(value.to_owned())
    } else {
        Err(bad(command, field, value))
    }
}

/// Whether `value` may stand as a model name, firmware version or error code.
pub fn is_word(value: &str) -> bool {
    word("", "", value).is_ok()
}

impl HostLine {
    /// Parses one line (with or without its `\n`).
    pub fn parse(line: &[u8]) -> Result<HostLine, LineError> {
        let f = fields(line)?;
        let keyword = f[0];
        let is = |k: &str| keyword.eq_ignore_ascii_case(k);
        if is("HELLO") {
            expect_count("HELLO", &f, 2)?;
            Ok(HostLine::Hello {
                version: version("HELLO", f[1])?,
            })
        } else if is("LIGHT") {
            expect_count("LIGHT", &f, 3)?;
            Ok(HostLine::Light {
                slot: slot("LIGHT", f[1])?,
                light: Light::from_word(f[2]).ok_or_else(|| bad("LIGHT", "light", f[2]))?,
            })
        } else if is("BEEP") {
            expect_count("BEEP", &f, 3)?;
            Ok(HostLine::Beep {
                slot: slot("BEEP", f[1])?,
                pattern: BeepPattern::from_word(f[2])
                    .ok_or_else(|| bad("BEEP", "pattern", f[2]))?,
            })
        } else if is("STATE") {
            expect_count("STATE", &f, 2)?;
            let codes = f[1];
            if codes.len() > MAX_SLOTS {
                return Err(bad("STATE", "codes", codes));
            }
            let lights = codes
                .bytes()
                .map(Light::from_code)
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| bad("STATE", "codes", codes))?;
            Ok(HostLine::State(lights))
        } else if is("PING") {
            expect_count("PING", &f, 2)?;
            Ok(HostLine::Ping(number("PING", "n", f[1])?))
        } else {
            Err(LineError::UnknownCommand(keyword.to_owned()))
        }
    }
}

impl BoardLine {
    /// Parses one line (with or without its `\n`).
    pub fn parse(line: &[u8]) -> Result<BoardLine, LineError> {
        let f = fields(line)?;
        let keyword = f[0];
        let is = |k: &str| keyword.eq_ignore_ascii_case(k);
        if is("HELLO") {
            // The version comes first and is checked first: a later version may change
            // everything after it.
            if f.len() < 2 {
                return Err(LineError::FieldCount {
                    command: "HELLO",
                    expected: 5,
                    got: f.len(),
                });
            }
            version("HELLO", f[1])?;
            expect_count("HELLO", &f, 5)?;
            let slots: u16 = number("HELLO", "slots", f[3])?;
            let slots = match u8::try_from(slots) {
                Ok(s) if (1..=MAX_SLOTS).contains(&usize::from(s)) => s,
                _ => return Err(bad("HELLO", "slots", f[3])),
            };
            Ok(BoardLine::Hello(BoardInfo {
                model: word("HELLO", "model", f[2])?,
                slots,
                firmware: word("HELLO", "firmware", f[4])?,
            }))
        } else if is("PRESS") {
            expect_count("PRESS", &f, 3)?;
            Ok(BoardLine::Press {
                slot: slot("PRESS", f[1])?,
                action: ButtonAction::from_word(f[2])
                    .ok_or_else(|| bad("PRESS", "action", f[2]))?,
            })
        } else if is("PONG") {
            expect_count("PONG", &f, 2)?;
            Ok(BoardLine::Pong(number("PONG", "n", f[1])?))
        } else if is("ERR") {
            if f.len() < 2 {
                return Err(LineError::FieldCount {
                    command: "ERR",
                    expected: 2,
                    got: f.len(),
                });
            }
            Ok(BoardLine::Error {
                code: word("ERR", "code", f[1])?,
                detail: f[2..].join(" "),
            })
        } else {
            Err(LineError::UnknownCommand(keyword.to_owned()))
        }
    }
}

impl fmt::Display for HostLine {
    /// The line without its `\n`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostLine::Hello { version } => write!(f, "HELLO {version}"),
            HostLine::Light { slot, light } => write!(f, "LIGHT {slot} {light}"),
            HostLine::Beep { slot, pattern } => write!(f, "BEEP {slot} {pattern}"),
            HostLine::State(lights) => {
                f.write_str("STATE ")?;
                lights.iter().try_for_each(|l| write!(f, "{}", l.code()))
            }
            HostLine::Ping(n) => write!(f, "PING {n}"),
        }
    }
}

impl fmt::Display for BoardLine {
    /// The line without its `\n`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BoardLine::Hello(info) => write!(
                f,
                "HELLO {PROTOCOL_VERSION} {} {} {}",
                info.model, info.slots, info.firmware
            ),
            BoardLine::Press { slot, action } => write!(f, "PRESS {slot} {action}"),
            BoardLine::Pong(n) => write!(f, "PONG {n}"),
            BoardLine::Error { code, detail } if detail.is_empty() => write!(f, "ERR {code}"),
            BoardLine::Error { code, detail } => write!(f, "ERR {code} {detail}"),
        }
    }
}

impl HostLine {
    /// The line with its `\n`, ready to write.
    pub fn to_line(&self) -> String {
        format!("{self}\n")
    }
}

impl BoardLine {
    /// The line with its `\n`, ready to write.
    pub fn to_line(&self) -> String {
        format!("{self}\n")
    }

    /// An `ERR` line whose detail is cut and cleaned to fit [`MAX_LINE`].
    pub fn error(code: &str, detail: &str) -> BoardLine {
        let code = if is_word(code) { code } else { "error" };
        let room = MAX_LINE.saturating_sub(5 + code.len());
        let cleaned: String = detail
            .chars()
            .map(|c| {
                if c == ' ' || c.is_ascii_graphic() {
                    c
                } else {
                    '?'
                }
            })
            .collect();
        // Spaces collapse on parsing, so they collapse here too: the line reads back as built.
        let mut detail = cleaned
            .split(' ')
            .filter(|w| !w.is_empty())
            .collect::<Vec<_>>()
            .join(" ");
        detail.truncate(room);
        BoardLine::Error {
            code: code.to_owned(),
            detail: detail.trim_end().to_owned(),
        }
    }
}

/// Cuts a byte stream into lines of at most [`MAX_LINE`] bytes.
///
/// Bytes are buffered until `\n`; a line that grows past the limit is reported once as
/// [`LineError::TooLong`] and the rest of it, up to the next `\n`, is dropped. The buffer never
/// holds more than [`MAX_LINE`] + 1 bytes.
#[derive(Debug, Default)]
pub struct LineReader {
    buf: Vec<u8>,
    /// Dropping the rest of a line that was too long.
    skipping: bool,
}

impl LineReader {
    /// An empty reader.
    pub fn new() -> LineReader {
        LineReader::default()
    }

    /// Feeds bytes; returns the complete lines they finish (without `\n`, `\r` still on),
    /// or an error for each line that was too long.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<Result<Vec<u8>, LineError>> {
        let mut out = Vec::new();
        for &b in bytes {
            if b == b'\n' {
                if self.skipping {
                    self.skipping = false;
                } else {
                    out.push(Ok(std::mem::take(&mut self.buf)));
                }
                continue;
            }
            if self.skipping {
                continue;
            }
            // One byte of room for a `\r` before the `\n`.
            if self.buf.len() > MAX_LINE {
                self.buf.clear();
                self.skipping = true;
                out.push(Err(LineError::TooLong));
                continue;
            }
            self.buf.push(b);
        }
        out
    }

    /// Forgets a partial line (after a reconnect, its start was lost).
    pub fn clear(&mut self) {
        self.buf.clear();
        self.skipping = false;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn host_lines_parse_as_documented() {
        assert_eq!(
            HostLine::parse(b"HELLO 1\n").unwrap(),
            HostLine::Hello { version: 1 }
        );
        assert_eq!(
            HostLine::parse(b"LIGHT 3 working\r\n").unwrap(),
            HostLine::Light {
                slot: 3,
                light: Light::Working
            }
        );
        assert_eq!(
            HostLine::parse(b"beep 0 DOUBLE").unwrap(),
            HostLine::Beep {
                slot: 0,
                pattern: BeepPattern::Double
            }
        );
        assert_eq!(
            HostLine::parse(b"STATE .wdfa").unwrap(),
            HostLine::State(vec![
                Light::Off,
                Light::Working,
                Light::Done,
                Light::Failed,
                Light::Attention
            ])
        );
        assert_eq!(
            HostLine::parse(b"PING 65535").unwrap(),
            HostLine::Ping(65535)
        );
    }

    #[test]
    fn board_lines_parse_as_documented() {
        assert_eq!(
            BoardLine::parse(b"HELLO 1 UKP-8 8 1.2.0\n").unwrap(),
            BoardLine::Hello(BoardInfo {
                model: "UKP-8".into(),
                slots: 8,
                firmware: "1.2.0".into()
            })
        );
        assert_eq!(
            BoardLine::parse(b"PRESS 2 retry").unwrap(),
            BoardLine::Press {
                slot: 2,
                action: ButtonAction::Retry
            }
        );
        assert_eq!(BoardLine::parse(b"PONG 7").unwrap(), BoardLine::Pong(7));
        assert_eq!(
            BoardLine::parse(b"ERR slot LIGHT 9 done").unwrap(),
            BoardLine::Error {
                code: "slot".into(),
                detail: "LIGHT 9 done".into()
            }
        );
    }

    #[test]
    fn bad_lines_are_errors_that_say_why() {
        assert_eq!(HostLine::parse(b"   "), Err(LineError::Empty));
        assert_eq!(
            HostLine::parse(b"BLINK 1"),
            Err(LineError::UnknownCommand("BLINK".into()))
        );
        assert!(matches!(
            HostLine::parse(b"LIGHT 64 done"),
            Err(LineError::BadField { field: "slot", .. })
        ));
        assert!(matches!(
            HostLine::parse(b"LIGHT +1 done"),
            Err(LineError::BadField { field: "slot", .. })
        ));
        assert!(matches!(
            HostLine::parse(b"LIGHT 1 purple"),
            Err(LineError::BadField { field: "light", .. })
        ));
        assert!(matches!(
            HostLine::parse(b"LIGHT 1"),
            Err(LineError::FieldCount { got: 2, .. })
        ));
        assert!(matches!(
            HostLine::parse(b"STATE ..x"),
            Err(LineError::BadField { field: "codes", .. })
        ));
        assert!(matches!(
            HostLine::parse(b"PING 70000"),
            Err(LineError::BadField { .. })
        ));
        assert_eq!(
            BoardLine::parse(b"HELLO 2 whatever"),
            Err(LineError::UnsupportedVersion { version: 2 })
        );
        assert!(matches!(
            BoardLine::parse(b"HELLO 1 UKP 0 1.0"),
            Err(LineError::BadField { field: "slots", .. })
        ));
        assert!(matches!(
            BoardLine::parse(b"HELLO 1 UKP 65 1.0"),
            Err(LineError::BadField { field: "slots", .. })
        ));
        assert!(matches!(
            BoardLine::parse(b"PRESS 1\tretry"),
            Err(LineError::NotPrintable { byte: b'\t', at: 7 })
        ));
        assert!(matches!(
            BoardLine::parse("PRESS 1 r\u{e9}try".as_bytes()),
            Err(LineError::NotPrintable { .. })
        ));
        let long = format!("ERR x {}", "y".repeat(MAX_LINE));
        assert_eq!(BoardLine::parse(long.as_bytes()), Err(LineError::TooLong));
    }

    #[test]
    fn error_lines_are_cut_to_fit() {
        let line = BoardLine::error("syntax", &format!("{}\u{7}", "z".repeat(500)));
        let text = line.to_string();
        assert!(text.len() <= MAX_LINE, "{}", text.len());
        assert_eq!(BoardLine::parse(text.as_bytes()).unwrap(), line);
    }

    #[test]
    fn the_reader_cuts_lines_and_drops_overlong_ones() {
        let mut r = LineReader::new();
        assert!(r.push(b"PONG").is_empty());
        let out = r.push(b" 1\nPRESS 0 ack\r\nPAR");
        assert_eq!(
            out,
            vec![Ok(b"PONG 1".to_vec()), Ok(b"PRESS 0 ack\r".to_vec())]
        );
        let mut long = vec![b'x'; MAX_LINE * 3];
        long.extend_from_slice(b"\nPONG 2\n");
        let out = r.push(&long);
        assert_eq!(out, vec![Err(LineError::TooLong), Ok(b"PONG 2".to_vec())]);
        // A line of exactly MAX_LINE bytes plus `\r` passes.
        let mut exact = vec![b'y'; MAX_LINE];
        exact.extend_from_slice(b"\r\n");
        assert_eq!(r.push(&exact).len(), 1);
        assert!(r.push(&exact)[0].is_ok());
    }

    fn light() -> impl Strategy<Value = Light> {
        prop::sample::select(Light::ALL.to_vec())
    }

    fn host_line() -> impl Strategy<Value = HostLine> {
        prop_oneof![
            Just(HostLine::Hello {
                version: PROTOCOL_VERSION
            }),
            (0u8..64, light()).prop_map(|(slot, light)| HostLine::Light { slot, light }),
            (0u8..64, prop::sample::select(BeepPattern::ALL.to_vec()))
                .prop_map(|(slot, pattern)| HostLine::Beep { slot, pattern }),
            prop::collection::vec(light(), 1..=MAX_SLOTS).prop_map(HostLine::State),
            any::<u16>().prop_map(HostLine::Ping),
        ]
    }

    fn board_line() -> impl Strategy<Value = BoardLine> {
        let word = "[A-Za-z0-9._+-]{1,32}";
        prop_oneof![
            (word, 1u8..=64, word).prop_map(|(model, slots, firmware)| BoardLine::Hello(
                BoardInfo {
                    model,
                    slots,
                    firmware
                }
            )),
            (0u8..64, prop::sample::select(ButtonAction::ALL.to_vec()))
                .prop_map(|(slot, action)| BoardLine::Press { slot, action }),
            any::<u16>().prop_map(BoardLine::Pong),
            (word, "[ -~]{0,60}").prop_map(|(c, d)| BoardLine::error(&c, &d)),
        ]
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
            let _ = HostLine::parse(&bytes);
            let _ = BoardLine::parse(&bytes);
            let mut r = LineReader::new();
            for line in r.push(&bytes).into_iter().flatten() {
                prop_assert!(line.len() <= MAX_LINE + 1);
                let _ = HostLine::parse(&line);
                let _ = BoardLine::parse(&line);
            }
        }

        #[test]
        fn near_miss_text_never_panics(text in "(HELLO|LIGHT|BEEP|STATE|PING|PRESS|PONG|ERR)( [ -~]{0,12}){0,6}") {
            let _ = HostLine::parse(text.as_bytes());
            let _ = BoardLine::parse(text.as_bytes());
        }

        #[test]
        fn host_lines_round_trip(line in host_line()) {
            let text = line.to_line();
            prop_assert!(text.len() <= MAX_LINE + 1);
            prop_assert_eq!(HostLine::parse(text.as_bytes()), Ok(line));
        }

        #[test]
        fn board_lines_round_trip(line in board_line()) {
            let text = line.to_line();
            prop_assert!(text.len() <= MAX_LINE + 1);
            prop_assert_eq!(BoardLine::parse(text.as_bytes()), Ok(line));
        }

        #[test]
        fn the_reader_finds_every_line_whatever_the_chunks(
            lines in prop::collection::vec(host_line(), 1..8),
            cut in 1usize..40,
        ) {
            let stream: String = lines.iter().map(HostLine::to_line).collect();
            let mut r = LineReader::new();
            let mut got = Vec::new();
            for chunk in stream.as_bytes().chunks(cut) {
                for l in r.push(chunk) {
                    got.push(HostLine::parse(&l.unwrap()).unwrap());
                }
            }
            prop_assert_eq!(got, lines);
        }
    }
}
