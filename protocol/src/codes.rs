//! Every error code the desk and the platform put on the wire, as typed constants.
//!
//! A contract both sides implement: the agent reports these codes in step events and desk
//! alerts, the platform sends the `CSR_*`/`RENEWAL_*`/… codes in certificate rejections, and
//! each side matches on the constants rather than on string literals. [`Code::new`] checks the
//! rules of [`ErrorCode`] when the constant is evaluated, so an invalid code does not compile
//! (no test has to scan the sources for literals).
//!
//! Adding a code is a protocol change: document it in `docs/PROTOCOL.md`.

use std::fmt;

use crate::ids::ErrorCode;

/// An error code known when the program is compiled; converts into an [`ErrorCode`] without
/// a check that could fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Code(&'static str);

impl Code {
    /// The code `s`. Used in a `const`, an `s` that breaks the rules of [`ErrorCode`]
    /// (1-64 of `[a-z0-9._-]`, starting with a letter or digit) stops the build.
    pub const fn new(s: &'static str) -> Code {
        assert!(valid(s), "not a valid error code");
        Code(s)
    }

    /// The wire spelling, e.g. `token-removed`.
    pub const fn as_str(self) -> &'static str {
        self.0
    }

    /// The code as the protocol's [`ErrorCode`].
    pub fn to_error_code(self) -> ErrorCode {
        ErrorCode::from_code(self)
    }
}

const fn valid(s: &str) -> bool {
    let bytes = s.as_bytes();
    if bytes.is_empty() || bytes.len() > ErrorCode::MAX_LEN {
        return false;
    }
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        let ok = c.is_ascii_lowercase()
            || c.is_ascii_digit()
            || (i > 0 && matches!(c, b'.' | b'_' | b'-'));
        if !ok {
            return false;
        }
        i += 1;
    }
    true
}

impl From<Code> for ErrorCode {
    fn from(code: Code) -> ErrorCode {
        code.to_error_code()
    }
}

impl PartialEq<Code> for ErrorCode {
    fn eq(&self, other: &Code) -> bool {
        self.as_str() == other.as_str()
    }
}

impl PartialEq<ErrorCode> for Code {
    fn eq(&self, other: &ErrorCode) -> bool {
        self.as_str() == other.as_str()
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

macro_rules! codes {
    ($($(#[$doc:meta])* $name:ident = $text:literal;)*) => {
        $($(#[$doc])* pub const $name: Code = Code::new($text);)*

        /// Every code of this module, in the order of its source.
        pub const ALL: &[Code] = &[$($name),*];
    };
}

codes! {
    // A job refused on arrival (state `rejected`, step `receive`).
    /// The job's signature does not verify, names an unknown key or the wrong algorithm.
    BAD_SIGNATURE = "bad-signature";
    /// The job names another station.
    WRONG_STATION = "wrong-station";
    /// The job expired before it arrived.
    EXPIRED = "expired";
    /// The job is not valid yet.
    NOT_YET_VALID = "not-yet-valid";
    /// The job is valid for longer than the station allows (`expires_at - issued_at` beyond
    /// its maximum job lifetime, 7 days by default).
    LIFETIME_TOO_LONG = "lifetime-too-long";
    /// The job's nonce was seen before.
    REPLAYED_NONCE = "replayed-nonce";
    /// The job document is malformed or breaks a rule.
    INVALID_JOB = "invalid-job";
    /// Another job with the same job id was accepted before.
    DUPLICATE_JOB_ID = "duplicate-job-id";

    // A job that ends without running a step to its end.
    /// The job's token did not come within the configured wait.
    TARGET_TOKEN_TIMEOUT = "target-token-timeout";
    /// The token was pulled out while the job ran (the job parks).
    TOKEN_REMOVED = "token-removed";
    /// A token pulled out mid-job did not come back in time.
    TOKEN_RETURN_TIMEOUT = "token-return-timeout";
    /// The platform refused to certify.
    CERTIFICATES_REJECTED = "certificates-rejected";
    /// The platform sent no certificates in time.
    CERTIFICATES_TIMEOUT = "certificates-timeout";
    /// The platform canceled the job.
    CANCELED = "canceled";
    /// A desk failure that is not the token's nor the platform's.
    INTERNAL = "internal";
    /// The token's serial cannot be read or is not a valid serial.
    TOKEN_SERIAL = "token-serial";
    /// A CSR bundle could not be encoded.
    CSR_ENCODING = "csr-encoding";
    /// The job asks for a step this desk cannot run.
    STEP_UNSUPPORTED = "step-unsupported";

    // A step that failed on the token.
    /// The job's subject data cannot go into a certificate.
    JOB_SUBJECT = "job-subject";
    /// A secret could not be sealed or unsealed.
    SEAL_FAILED = "seal-failed";
    /// The token has locked its SO PIN.
    SO_PIN_LOCKED = "so-pin-locked";
    /// The SO PIN the job carries is wrong.
    WRONG_SO_PIN = "wrong-so-pin";
    /// A message could not be encoded.
    ENCODING = "encoding";
    /// The job's key specification cannot be carried out on this token.
    JOB_KEY_SPEC = "job-key-spec";
    /// The job needs an SO PIN and carries none.
    SO_PIN_MISSING = "so-pin-missing";
    /// The SO PIN the job carries cannot be unsealed.
    SO_PIN_UNSEAL = "so-pin-unseal";
    /// A key on the token is not the certified one.
    TOKEN_KEY_MISMATCH = "token-key-mismatch";
    /// A certificate the step needs is missing (from the platform's answer).
    CERTIFICATE_MISSING = "certificate-missing";
    /// A certificate that should be on the token is not.
    CERTIFICATE_MISSING_ON_TOKEN = "certificate-missing-on-token";
    /// A label of a token that keeps its keys holds no or several public keys, several
    /// certificates, or not exactly one private key: it is not certified again.
    TOKEN_OBJECTS_UNEXPECTED = "token-objects-unexpected";
    /// A public key object on the token is not the key its current certificate certifies.
    TOKEN_KEY_NOT_CERTIFIED = "token-key-not-certified";
    /// A certificate was written but does not read back.
    CERTIFICATE_NOT_INSTALLED = "certificate-not-installed";
    /// A PIN was refused.
    WRONG_PIN = "wrong-pin";
    /// A PIN is locked.
    PIN_LOCKED = "pin-locked";
    /// A PIN's length is outside the token's bounds.
    PIN_LENGTH = "pin-length";
    /// The token is not blank.
    TOKEN_NOT_BLANK = "token-not-blank";
    /// The token is not the one the job names.
    WRONG_TOKEN = "wrong-token";
    /// A generated key's attributes are wrong or missing.
    KEY_ATTRIBUTE_CHECK = "key-attribute-check";
    /// The token holds an object that should not be there, or lacks one that should.
    TOKEN_OBJECTS = "token-objects";
    /// The token does not offer a mechanism the job needs.
    MECHANISM_UNSUPPORTED = "mechanism-unsupported";
    /// The token's storage is full (`CKR_DEVICE_MEMORY`): it cannot hold the job's objects.
    TOKEN_FULL = "token-full";
    /// The token's module does not implement `C_InitToken` (`CKR_FUNCTION_NOT_SUPPORTED`):
    /// such a model is personalized from its factory state with a transport PIN.
    INIT_TOKEN_UNSUPPORTED = "init-token-unsupported";
    /// A key failed its self-test.
    SELF_TEST_FAILED = "self-test-failed";
    /// A CSR could not be built or signed on the token.
    CSR_FAILED = "csr-failed";
    /// The token is not found.
    TOKEN_NOT_FOUND = "token-not-found";
    /// The token is blank where it must not be.
    TOKEN_BLANK = "token-blank";
    /// Any other token failure.
    TOKEN_ERROR = "token-error";

    // An issued certificate that the desk refuses (nothing is written).
    /// The certificate certifies another key than the token's.
    CERTIFICATE_KEY_MISMATCH = "certificate-key-mismatch";
    /// The certificate's subject is not the job's.
    CERTIFICATE_SUBJECT_MISMATCH = "certificate-subject-mismatch";
    /// The certificate's key usage is missing or not the label's.
    CERTIFICATE_KEY_USAGE = "certificate-key-usage";
    /// The certificate is a CA certificate.
    CERTIFICATE_IS_CA = "certificate-is-ca";
    /// The certificate's issuer is not a configured CA.
    CERTIFICATE_UNKNOWN_ISSUER = "certificate-unknown-issuer";
    /// The certificate's signature does not verify.
    CERTIFICATE_BAD_SIGNATURE = "certificate-bad-signature";
    /// The certificate's validity is wrong (expired, not yet valid, too long).
    CERTIFICATE_VALIDITY = "certificate-validity";
    /// The issued certificate's validity is not the job's `validity_days` (within a day).
    CERTIFICATE_VALIDITY_DAYS = "certificate-validity-days";
    /// A certificate of the chain carries a critical extension the station does not know.
    CERTIFICATE_CRITICAL_EXTENSION = "certificate-critical-extension";
    /// An intermediate CA certificate is outside its validity window.
    CERTIFICATE_INTERMEDIATE_VALIDITY = "certificate-intermediate-validity";
    /// An intermediate CA certificate may not sign certificates (no `keyCertSign`).
    CERTIFICATE_INTERMEDIATE_KEY_USAGE = "certificate-intermediate-key-usage";
    /// A CA's `pathLenConstraint` is exceeded by the chain.
    CERTIFICATE_PATH_LENGTH = "certificate-path-length";
    /// The trust anchor is outside its validity window.
    CERTIFICATE_ANCHOR_VALIDITY = "certificate-anchor-validity";
    /// Any other certificate problem.
    CERTIFICATE_INVALID = "certificate-invalid";

    // Desk alerts in the inventory.
    /// A PKCS#11 module that a model names cannot be loaded.
    MODULE_MISSING = "module-missing";
    /// The platform has not confirmed a finished token's binding.
    PLATFORM_UNCONFIRMED = "platform-unconfirmed";
    /// A PKCS#11 call on a token has not returned.
    TOKEN_CALL_STUCK = "token-call-stuck";
    /// A Ukey is on USB but the desk may not open it.
    USB_NOT_ACCESSIBLE = "usb-not-accessible";
    /// A Ukey is on USB but no PKCS#11 slot shows it.
    NO_SLOT_FOR_TOKEN = "no-slot-for-token";
    /// Audit log entries could not be written (disk full, folder gone): the desk's record is
    /// incomplete until someone looks.
    AUDIT_LOG_FAILED = "audit-log-failed";
    /// The desk requires a signed-in operator and nobody is: jobs wait in the queue.
    OPERATOR_REQUIRED = "operator-required";

    // The platform's certificate rejections.
    /// A CSR does not parse.
    CSR_MALFORMED = "csr-malformed";
    /// A CSR's signature does not verify with its own key.
    CSR_BAD_SIGNATURE = "csr-bad-signature";
    /// A CSR's subject is not the order's.
    CSR_SUBJECT_MISMATCH = "csr-subject-mismatch";
    /// A CSR's key is not what the job asked for.
    CSR_KEY_MISMATCH = "csr-key-mismatch";
    /// A renewal request does not parse.
    RENEWAL_MALFORMED = "renewal-malformed";
    /// A renewal request names a certificate the platform did not issue.
    RENEWAL_UNKNOWN_CERTIFICATE = "renewal-unknown-certificate";
    /// A renewal request's key is not the certified one.
    RENEWAL_KEY_MISMATCH = "renewal-key-mismatch";
    /// The request names a job the platform does not know.
    UNKNOWN_JOB = "unknown-job";
    /// The request is of the wrong kind for the job.
    WRONG_REQUEST_KIND = "wrong-request-kind";
    /// Issuing failed on the platform's side.
    ISSUANCE_FAILED = "issuance-failed";
    /// The platform refuses to issue.
    ISSUANCE_REFUSED = "issuance-refused";
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn every_code_is_an_error_code_and_unique() {
        let mut seen = std::collections::BTreeSet::new();
        for code in ALL {
            let checked = ErrorCode::new(code.as_str()).unwrap();
            assert_eq!(checked, code.to_error_code());
            assert_eq!(checked, *code);
            assert!(seen.insert(code.as_str()), "{code} twice");
        }
        assert!(ALL.len() > 50);
    }

    #[test]
    fn the_const_check_follows_the_error_code_rules() {
        for bad in ["", "Token", "-x", "a b", "a/b", "é"] {
            assert!(!valid(bad), "{bad:?} accepted");
            assert!(ErrorCode::new(bad).is_err());
        }
        assert!(!valid(&"a".repeat(65)));
        assert!(valid("token-removed") && valid("a.b_c-1"));
    }
}
