//! Misbehaviour on request: the ways the simulated platform can go wrong on purpose, so tests
//! and the demo can show that the station catches each one.
//!
//! Each is armed [`Times::Once`] (used up by the first message it applies to) or
//! [`Times::Always`] (until [`super::Platform::behave`]). This module only keeps the list;
//! the platform's client applies them.

use std::sync::Mutex;

/// A way for the platform to misbehave.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Misbehaviour {
    /// The `seal-official` certificate certifies a freshly made key of the same algorithm
    /// instead of the CSR's key (the other two are right).
    CertificateForAnotherKey,
    /// The `seal-legal` certificate names another legal representative (the other two are
    /// right).
    WrongSubject,
    /// All three certificates expired yesterday.
    ExpiredCertificate,
    /// All three certificates are issued by a second CA that no station trusts, and the chain
    /// sent along is that CA's.
    UnknownIssuer,
    /// The signed job is published twice (same envelope, same job id and nonce).
    DuplicateJob,
    /// The job is signed by a key no station trusts, under the trusted key's id.
    ForgedSignature,
    /// A CSR bundle gets no answer at all (the station's certificate wait runs out).
    SilenceCertificates,
    /// Step events are recorded but not acknowledged (the station's outbox keeps them and
    /// re-sends).
    SilenceAcks,
    /// The CSR bundle is answered with a rejection (`issuance-refused`).
    RejectIssuance,
    /// The acknowledgement of a `bind` event is published unsigned (the bare JSON), as anyone
    /// who can publish on the station's topics could, even while [`Misbehaviour::SilenceAcks`]
    /// holds the true acks back. It is not repeated: the station's re-sent event gets a
    /// signed one (or none while the acks are silenced).
    UnsignedBindAck,
    /// The CSR bundle is answered with a rejection signed by a key no station trusts, under
    /// the trusted key's id. The station's re-sent bundle gets a true answer.
    ForgedRejection,
    /// [`super::Platform::cancel`] publishes the cancel unsigned (the bare JSON).
    UnsignedCancel,
}

/// How long a misbehaviour stays armed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Times {
    /// For the next message it applies to only.
    Once,
    /// Until cleared.
    Always,
}

/// The armed misbehaviours.
#[derive(Debug, Default)]
pub(crate) struct Armed {
    list: Mutex<Vec<(Misbehaviour, Times)>>,
}

impl Armed {
    fn list(&self) -> std::sync::MutexGuard<'_, Vec<(Misbehaviour, Times)>> {
        // A poisoned list is still a valid list.
        self.list
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(crate) fn arm(&self, m: Misbehaviour, times: Times) {
        let mut list = self.list();
        list.retain(|(other, _)| *other != m);
        list.push((m, times));
    }

    pub(crate) fn clear(&self) {
        self.list().clear();
    }

    /// Whether `m` applies now; a `Once` is used up by this call.
    pub(crate) fn take(&self, m: Misbehaviour) -> bool {
        let mut list = self.list();
        match list.iter().position(|(other, _)| *other == m) {
            Some(i) => {
                if list[i].1 == Times::Once {
                    list.remove(i);
                }
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn once_is_used_up_always_stays() {
        let armed = Armed::default();
        armed.arm(Misbehaviour::WrongSubject, Times::Once);
        armed.arm(Misbehaviour::SilenceAcks, Times::Always);
        assert!(armed.take(Misbehaviour::WrongSubject));
        assert!(!armed.take(Misbehaviour::WrongSubject));
        assert!(armed.take(Misbehaviour::SilenceAcks));
        assert!(armed.take(Misbehaviour::SilenceAcks));
        assert!(!armed.take(Misbehaviour::DuplicateJob));
        armed.clear();
        assert!(!armed.take(Misbehaviour::SilenceAcks));
    }
}
