//! A simulated platform — **a simulation for tests and the demo, not a platform**: it signs
//! and dispatches jobs, acknowledges step events, issues certificates from a throwaway test CA
//! whose keys sit in memory or in plain PEM files, unseals the PINs stations send, and records
//! everything it receives so tests can assert on it. It can misbehave on request.
//!
//! - [`ca`]: the test CA (P-256 or RSA-2048): checks requests against the job, issues to the
//!   Ukey profile of `ukey_protocol::profile`.
//! - [`keys`]: all of the platform's keys and the station trust files
//!   ([`PlatformKeys::write_station_trust`]).
//! - [`jobs`]: made-up but valid companies and people; job drafts, building and signing.
//! - [`client`]: [`Platform`], the MQTT client that does all of the above over a broker.
//! - [`records`]: what the platform recorded ([`Records`], [`JobRecord`], [`TokenRecord`]).
//! - [`ledger`]: what the records say, in any arrival order: events lost, duplicated, out
//!   of order, forbidden transitions ([`Ledger`], [`JobLedger`]).
//! - `redeliver`: what a station has not shown it received, published again.
//! - [`misbehave`]: [`Misbehaviour`]s on request.
//! - [`receipts`]: the station's signed production receipts, verified with the platform's
//!   own code; [`Records::receipts`] keeps those that verify.
//!
//! What it does not do: persistence of its records, revocation, access control, anything a
//! real platform needs to be trusted. Never point a real station at it.
//!
//! An independent oracle: it shares nothing with the agent beyond `ukey-protocol`'s messages
//! and contracts (the certificate profile, the error codes), so that a bug on either side
//! shows up as a disagreement rather than as two sides agreeing on the same mistake.
#![forbid(unsafe_code)]

pub mod ca;
pub mod client;
pub mod error;
pub mod jobs;
pub mod keys;
pub mod ledger;
pub mod misbehave;
pub mod receipts;
pub mod records;
mod redeliver;
pub mod verify;

pub use ca::{CaAlgorithm, Issue, RejectionCode, TestCa, subject_data};
pub use client::{KeySource, MAX_PACKET_BYTES, Platform, PlatformConfig, PlatformTls, SignedJob};
pub use error::PlatformError;
pub use jobs::{JobDraft, Order, Person, build_job, sign};
pub use keys::{DEFAULT_JOB_KEY_ID, KeyOptions, PlatformKeys, StationTrust};
pub use ledger::{JobLedger, Ledger};
pub use misbehave::{Misbehaviour, Times};
pub use records::{JobRecord, Records, TokenRecord};
