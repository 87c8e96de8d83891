//! `ukey-protocol`: the messages a ukey-station desk and the platform exchange over MQTT.
//!
//! * [`job`]: the job document for the five job kinds, and its validation;
//! * [`jws`]: the JWS envelope (RFC 7515, flattened JSON) every platform message travels in;
//! * [`signed`]: signed jobs, acks, cancels and certificate responses: verification, signing,
//!   nonce replay check;
//! * [`seal`](mod@seal): sealed secrets (PINs in transit), HPKE (RFC 9180) or RSA-OAEP;
//! * [`event`]: step events and the job execution state machine;
//! * [`bundle`]: CSR bundles, issued certificates or a rejection;
//! * [`receipt`]: station-signed production receipts;
//! * [`ack`], [`cancel`], [`presence`], [`inventory`]: the other messages;
//! * [`topic`]: topic builder and parser;
//! * [`ident`]: credit codes, ID-card numbers, phone numbers (checks and generators);
//! * [`codec`]: the decode/encode pipeline every message goes through ([`Message`]).
//!
//! And the contracts that the desk and its counterparts (the platform, the panel board)
//! implement each on their own side:
//!
//! * [`profile`]: the certificate profile (subject layout and key usages per label);
//! * [`panel`]: the indicator panel's line codec;
//! * [`codes`]: every error code on the wire, as typed constants.
//!
//! Pure: no IO, no async runtime, no clock (callers pass `now`). The wire format is described
//! in `docs/PROTOCOL.md`.
#![forbid(unsafe_code)]

pub mod ack;
pub mod bundle;
pub mod cancel;
pub mod codec;
pub mod codes;
pub mod error;
pub mod event;
pub mod ident;
pub mod ids;
pub mod inventory;
pub mod job;
pub mod jws;
pub mod keys;
pub mod panel;
pub mod pem;
pub mod presence;
pub mod profile;
pub mod receipt;
pub mod seal;
pub mod signed;
pub mod topic;

pub use ack::Ack;
pub use bundle::{
    CertBundle, CertOutcome, CertRejection, CertResponse, CertificateRequest, CsrBundle,
    IssuedCertificate,
};
pub use cancel::Cancel;
pub use codec::{Base64Bytes, MAX_MESSAGE_BYTES, Message, PROTOCOL_VERSION, V1, fit_text};
pub use codes::Code;
pub use error::{Problem, ProtocolError, TopicProblem};
pub use event::{
    BindReport, CertFingerprint, ExecutionState, Step, StepData, StepError, StepEvent,
};
pub use ident::{
    CreditCode, Email, IdCardNumber, Landline, Mobile, credit_code_with_check, id_card_with_check,
};
pub use ids::{ErrorCode, EventId, JobId, Nonce, StationId, TokenSerial};
pub use inventory::{
    CertificateExpiry, DeskAlert, Inventory, SlotInfo, TokenDamage, TokenInfo, TokenState,
};
pub use job::{DeliveryMethod, Enterprise, JobDocument, JobKind, KeySpec, LegalRepresentative};
pub use jws::{Jws, JwsHeader};
pub use keys::{KeyAlgorithm, KeyLabel, KeyUsage, SignerId};
pub use presence::{Presence, PresenceStatus};
pub use receipt::{
    KeyAttributes, KeyOrigin, Receipt, ReceiptCertificate, ReceiptKey, ReceiptOutcome,
    ReceiptSigner, ReceiptStep, ReceiptVerifier, SelfTestResult, SignedReceipt,
};
pub use seal::{SealContext, SealPurpose, SealRecipient, SealedSecret, UnsealKey, seal};
pub use signed::{
    JobEnvelope, JobKeyring, JobSigningKey, JobVerifyingKey, NonceSet, PlatformMessage,
    SignatureAlgorithm, check_nonce, sign_job, sign_platform_message, verify_platform_message,
};
pub use topic::{DEFAULT_PREFIX, Direction, Topic, Topics};

// Every message fits the overall bound that brokers and clients are configured for.
const _: () = {
    assert!(JobEnvelope::MAX_BYTES <= MAX_MESSAGE_BYTES);
    assert!(JobEnvelope::MAX_BYTES <= MAX_MESSAGE_BYTES);
    // A signed message's payload grows by 4/3 in base64url, plus the header and signature.
    assert!(JobDocument::MAX_BYTES.div_ceil(3) * 4 + jws::JWS_OVERHEAD_BYTES <= MAX_MESSAGE_BYTES);
    assert!(CertResponse::MAX_BYTES.div_ceil(3) * 4 + jws::JWS_OVERHEAD_BYTES <= MAX_MESSAGE_BYTES);
    assert!(Ack::MAX_BYTES.div_ceil(3) * 4 + jws::JWS_OVERHEAD_BYTES <= MAX_MESSAGE_BYTES);
    assert!(Cancel::MAX_BYTES.div_ceil(3) * 4 + jws::JWS_OVERHEAD_BYTES <= MAX_MESSAGE_BYTES);
    assert!(StepEvent::MAX_BYTES <= MAX_MESSAGE_BYTES);
    assert!(CsrBundle::MAX_BYTES <= MAX_MESSAGE_BYTES);
    assert!(CertResponse::MAX_BYTES <= MAX_MESSAGE_BYTES);
    assert!(Ack::MAX_BYTES <= MAX_MESSAGE_BYTES);
    assert!(Cancel::MAX_BYTES <= MAX_MESSAGE_BYTES);
    assert!(Presence::MAX_BYTES <= MAX_MESSAGE_BYTES);
    assert!(Inventory::MAX_BYTES <= MAX_MESSAGE_BYTES);
    assert!(SignedReceipt::MAX_BYTES <= MAX_MESSAGE_BYTES);
};
