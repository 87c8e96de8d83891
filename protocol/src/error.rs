//! The crate's one error type, [`ProtocolError`], and the reasons it carries.
//!
//! Every decoding, validation, signature, sealing and topic failure ends up here, with enough
//! context to report it to the platform (the field path, the message kind, the job id).
//! It never carries a PIN, an ID-card number or a mobile number.

use time::OffsetDateTime;

use crate::job::JobKind;
use crate::keys::{KeyAlgorithm, KeyLabel};

/// Everything that can go wrong in `ukey-protocol`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProtocolError {
    /// The payload is larger than its message's bound; it was not parsed.
    #[error("{message}: payload of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// Which message was being decoded.
        message: &'static str,
        /// The payload's size.
        size: usize,
        /// The bound for this message.
        limit: usize,
    },
    /// The payload is not JSON of the expected shape (syntax, types, missing fields).
    #[error("{message}: malformed: {detail}")]
    Malformed {
        /// Which message was being decoded.
        message: &'static str,
        /// What the JSON parser said (it never quotes field values).
        detail: String,
    },
    /// The payload has no `v` field.
    #[error("{message}: missing protocol version `v`")]
    MissingVersion {
        /// Which message was being decoded.
        message: &'static str,
    },
    /// The payload's `v` is not a version this build understands.
    #[error("{message}: unsupported protocol version {got} (this build supports {supported})")]
    UnsupportedVersion {
        /// Which message was being decoded.
        message: &'static str,
        /// The `v` that arrived, as text.
        got: String,
        /// The highest version this build supports.
        supported: u32,
    },
    /// A field failed validation.
    #[error("{path}: {problem}")]
    Invalid {
        /// Dotted path of the field, e.g. `enterprise.credit_code` or `keys[2].alg`.
        path: String,
        /// What is wrong with it.
        problem: Problem,
    },
    /// A platform message arrived without a signature (not a JWS at all).
    #[error("{message}: unsigned (every platform message must be a JWS)")]
    Unsigned {
        /// Which message was being decoded.
        message: &'static str,
    },
    /// A correctly signed message of another kind (its JWS `typ`) than the one expected.
    #[error("signed message of type {got:?} where {expected:?} was expected")]
    WrongMessageType {
        /// The `typ` expected here.
        expected: &'static str,
        /// The `typ` the message carries.
        got: String,
    },
    /// A signed platform message (other than a job) is addressed to another station.
    #[error("{message}: addressed to station {got:?}, this is {expected:?}")]
    OtherStation {
        /// Which message.
        message: &'static str,
        /// This station.
        expected: String,
        /// The station the message names.
        got: String,
    },
    /// A signed message names a key id this station does not trust.
    #[error("signature: unknown key id {key_id:?}")]
    UnknownKeyId {
        /// The `sig.key_id` of the envelope.
        key_id: String,
    },
    /// The signature algorithm does not fit the trusted key's type (e.g. ES256 with an RSA key).
    #[error("signature: algorithm {alg} cannot be used with the {key_type} key {key_id:?}")]
    SignatureAlgorithmMismatch {
        /// The `sig.alg` of the envelope.
        alg: &'static str,
        /// `"EC P-256"` or `"RSA"`.
        key_type: &'static str,
        /// The key id.
        key_id: String,
    },
    /// The signature does not verify over the signed bytes (forged, tampered or wrong key).
    #[error("signature: verification failed for key {key_id:?}")]
    BadSignature {
        /// The key id the signature claimed.
        key_id: String,
    },
    /// The job's `expires_at` has passed.
    #[error("job {job_id}: expired at {expires_at}")]
    Expired {
        /// The job.
        job_id: String,
        /// When it expired.
        expires_at: OffsetDateTime,
    },
    /// The job's `issued_at` lies further in the future than the allowed clock skew.
    #[error("job {job_id}: issued at {issued_at}, which is in the future")]
    NotYetValid {
        /// The job.
        job_id: String,
        /// Its claimed issue time.
        issued_at: OffsetDateTime,
    },
    /// The job is addressed to another station.
    #[error("job {job_id}: addressed to station {got:?}, this is {expected:?}")]
    WrongStation {
        /// The job.
        job_id: String,
        /// This station.
        expected: String,
        /// The station the job names.
        got: String,
    },
    /// The job's nonce has been seen before.
    #[error("job {job_id}: nonce already used (replay)")]
    Replay {
        /// The job.
        job_id: String,
    },
    /// Sealing a secret failed (e.g. too long for the recipient's RSA key).
    #[error("seal: {detail}")]
    Seal {
        /// What failed.
        detail: String,
    },
    /// The sealed secret was made for another kind of key than the one given.
    #[error("unseal: secret sealed with {sealed_with}, but the key is {key_type}")]
    SealKeyMismatch {
        /// The sealed secret's `alg`.
        sealed_with: &'static str,
        /// `"EC P-256"` or `"RSA"`.
        key_type: &'static str,
    },
    /// Unsealing failed: wrong key, wrong context, or tampered. Deliberately not more specific.
    #[error("unseal: authentication failed (wrong key, wrong context or tampered)")]
    Unseal,
    /// A key could not be parsed or is of an unsupported type.
    #[error("{what}: {detail}")]
    Key {
        /// Which key, e.g. `"job verifying key"`.
        what: &'static str,
        /// Why it was refused.
        detail: String,
    },
    /// An MQTT topic was refused.
    #[error("topic {topic:?}: {problem}")]
    Topic {
        /// The topic as given (truncated to 256 characters).
        topic: String,
        /// What is wrong with it.
        problem: TopicProblem,
    },
    /// The operating system's random number generator failed.
    #[error("random number generator failed: {detail}")]
    Random {
        /// The OS error.
        detail: String,
    },
}

impl ProtocolError {
    /// Builds an [`ProtocolError::Invalid`] for `path`.
    pub fn invalid(path: impl Into<String>, problem: Problem) -> ProtocolError {
        ProtocolError::Invalid {
            path: path.into(),
            problem,
        }
    }

    /// The field path and problem, when this is a validation error.
    pub fn as_invalid(&self) -> Option<(&str, &Problem)> {
        match self {
            ProtocolError::Invalid { path, problem } => Some((path, problem)),
            _ => None,
        }
    }
}

/// Why a field is invalid. The `Display` text is the reason part of `path: reason`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Problem {
    /// Empty or only whitespace.
    #[error("must not be empty")]
    Empty,
    /// Longer than allowed (characters for text, bytes for binary, entries for lists).
    #[error("longer than {max}")]
    TooLong {
        /// The bound.
        max: usize,
    },
    /// Shorter than allowed.
    #[error("shorter than {min}")]
    TooShort {
        /// The bound.
        min: usize,
    },
    /// Has leading or trailing whitespace.
    #[error("leading or trailing whitespace")]
    Untrimmed,
    /// Contains a control character.
    #[error("contains a control character")]
    ControlCharacter,
    /// Contains a character outside the allowed set (the character is not echoed: it may be
    /// part of personal data).
    #[error("character at position {position} is not allowed")]
    BadCharacter {
        /// Zero-based character position.
        position: usize,
    },
    /// Has the wrong length.
    #[error("must be {expected} characters, got {got}")]
    WrongLength {
        /// Required length.
        expected: usize,
        /// Actual length.
        got: usize,
    },
    /// The check character (credit code, ID-card number) does not match the others.
    #[error("check character mismatch")]
    CheckCharacterMismatch,
    /// An ID-card number's birth date is not a plausible date.
    #[error("birth date is not a valid date")]
    BadBirthDate,
    /// Not an 11-digit mainland mobile number starting 13–19.
    #[error("not a mainland mobile number (11 digits, 13x-19x)")]
    BadMobile,
    /// Not a landline number (digits with optional `-` separators, 7-18 digits).
    #[error("not a landline number")]
    BadLandline,
    /// Not an e-mail address.
    #[error("not an e-mail address")]
    BadEmail,
    /// A number outside its range.
    #[error("must be between {min} and {max}, got {got}")]
    OutOfRange {
        /// Lower bound (inclusive).
        min: u64,
        /// Upper bound (inclusive).
        max: u64,
        /// Actual value.
        got: u64,
    },
    /// A timestamp not in UTC.
    #[error("timestamp must be in UTC (`Z`)")]
    NotUtc,
    /// A timestamp that must come after another does not.
    #[error("must be after {other}")]
    NotAfter {
        /// The field it must follow.
        other: &'static str,
    },
    /// A field the job kind needs is missing.
    #[error("required for kind {kind}")]
    RequiredFor {
        /// The job kind.
        kind: JobKind,
    },
    /// A field the job kind does not use is present.
    #[error("not allowed for kind {kind}")]
    NotAllowedFor {
        /// The job kind.
        kind: JobKind,
    },
    /// A `rekey`-dependent field: required when `rekey` is true.
    #[error("required when rekey is true")]
    RequiredForRekey,
    /// A per-label list lacks a label.
    #[error("no entry for label {label}")]
    MissingLabel {
        /// The label.
        label: KeyLabel,
    },
    /// A per-label list names a label twice.
    #[error("label {label} appears more than once")]
    DuplicateLabel {
        /// The label.
        label: KeyLabel,
    },
    /// The key algorithm is not allowed for this label.
    #[error("algorithm {alg} not allowed for label {label}")]
    AlgorithmNotAllowed {
        /// The label.
        label: KeyLabel,
        /// The algorithm.
        alg: KeyAlgorithm,
    },
    /// A field that belongs to keys of one algorithm only (an SM2 `signer_id`).
    #[error("allowed only for algorithm {alg}")]
    OnlyForAlgorithm {
        /// The algorithm it belongs to.
        alg: KeyAlgorithm,
    },
    /// A value that must be unique appears twice (slot index, event id).
    #[error("duplicate value")]
    Duplicate,
    /// A list that must not be empty is empty.
    #[error("must have at least one entry")]
    NoEntries,
    /// Exactly one of several alternative fields must be given.
    #[error("exactly one of {alternatives} must be given")]
    ExactlyOneOf {
        /// The alternatives, e.g. `"csr" or "current_certificate + public_key"`.
        alternatives: &'static str,
    },
    /// Step-specific data that does not belong to the event's step.
    #[error("data {data} does not belong to step {step}")]
    DataNotForStep {
        /// The data kind.
        data: &'static str,
        /// The event's step.
        step: &'static str,
    },
    /// An error object where the state needs none, or none where it needs one.
    #[error("{state} {needs}")]
    ErrorPresence {
        /// The execution state.
        state: &'static str,
        /// `"requires an error"` or `"must not carry an error"`.
        needs: &'static str,
    },
    /// A field that may be left out only in one state (e.g. a token's serial: only when the
    /// token is `damaged` and could not be read).
    #[error("required unless the state is {state}")]
    RequiredUnlessState {
        /// The state that allows leaving it out.
        state: &'static str,
    },
    /// A field that belongs to one state only (e.g. a token's `damage`).
    #[error("allowed only when the state is {state}")]
    OnlyWithState {
        /// The state it belongs to.
        state: &'static str,
    },
    /// Binary content of the wrong size or shape (e.g. a P-256 point that is not 65 bytes).
    #[error("malformed binary content: {detail}")]
    BadBinary {
        /// What is wrong.
        detail: &'static str,
    },
}

/// Why a topic was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TopicProblem {
    /// Contains `+` or `#`.
    #[error("contains a wildcard")]
    Wildcard,
    /// Has an empty level (`a//b`, leading or trailing `/`).
    #[error("has an empty level")]
    EmptyLevel,
    /// Contains a NUL character or starts with `$`.
    #[error("contains a forbidden character")]
    ForbiddenCharacter,
    /// Does not start with the configured prefix and `stations`.
    #[error("not under the configured prefix")]
    WrongPrefix,
    /// Names another station.
    #[error("belongs to another station ({station:?})")]
    ForeignStation {
        /// The station the topic names.
        station: String,
    },
    /// A level that must be an id is not a valid id.
    #[error("level {level} is not a valid id")]
    BadId {
        /// Which id: `"station id"` or `"job id"`.
        level: &'static str,
    },
    /// The levels after the station do not form a known topic.
    #[error("not a topic of this protocol")]
    Unknown,
}
