//! Single-part cryptographic operations: `C_SignInit`/`C_Sign` and
//! `C_DecryptInit`/`C_Decrypt`, with the length-query convention and the rule that any
//! error other than `CKR_BUFFER_TOO_SMALL` ends the operation.

use std::time::Instant;

use cryptoki_sys::*;

use super::{ActiveOp, Ctx, Engine};
use crate::rack::Rv;
use crate::rack::crypto::{self, DecryptMechanism, SignMechanism};
use crate::rack::latency::Op;
use crate::rack::object::Object;

/// What `C_Sign` gives back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignOutcome {
    /// The caller asked for the length only (NULL output buffer); the operation goes on.
    Length(usize),
    /// The caller's buffer is too small; the operation goes on.
    TooSmall(usize),
    /// The signature; the operation is over.
    Done(Vec<u8>),
}

/// What `C_Decrypt` gives back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecryptOutcome {
    /// An upper bound of the plaintext length (NULL output buffer); the operation goes on.
    Length(usize),
    /// The caller's buffer is too small for this plaintext length; the operation goes on.
    TooSmall(usize),
    /// The plaintext; the operation is over.
    Done(zeroize::Zeroizing<Vec<u8>>),
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Sign,
    Decrypt,
}

impl Engine {
    fn set_op(&self, h: CK_SESSION_HANDLE, kind: Kind, op: Option<ActiveOp>) -> Result<(), Rv> {
        let mut st = self.lock()?;
        let s = st.sessions.get_mut(&h).ok_or(CKR_SESSION_HANDLE_INVALID)?;
        let slot = match kind {
            Kind::Sign => &mut s.sign,
            Kind::Decrypt => &mut s.decrypt,
        };
        if op.is_some() && slot.is_some() {
            return Err(CKR_OPERATION_ACTIVE);
        }
        *slot = op;
        Ok(())
    }

    fn get_op(&self, h: CK_SESSION_HANDLE, kind: Kind) -> Result<ActiveOp, Rv> {
        let st = self.lock()?;
        let s = st.sessions.get(&h).ok_or(CKR_SESSION_HANDLE_INVALID)?;
        match kind {
            Kind::Sign => s.sign.clone(),
            Kind::Decrypt => s.decrypt.clone(),
        }
        .ok_or(CKR_OPERATION_NOT_INITIALIZED)
    }

    /// Ends the operation unless the outcome keeps it going.
    fn end_op_unless<T>(&self, h: CK_SESSION_HANDLE, kind: Kind, r: &Result<T, Rv>, keep: bool) {
        let ended = match r {
            Ok(_) => !keep,
            Err(rv) => *rv != CKR_OPERATION_NOT_INITIALIZED,
        };
        if ended {
            let _ = self.set_op(h, kind, None);
        }
    }

    fn usable_key(
        &self,
        ctx: &Ctx,
        key: CK_OBJECT_HANDLE,
        key_type: CK_KEY_TYPE,
        usage: CK_ATTRIBUTE_TYPE,
    ) -> Result<Object, Rv> {
        let obj = self.key_object(ctx, key)?;
        if obj.class() != CKO_PRIVATE_KEY || obj.ulong(CKA_KEY_TYPE) != Some(key_type) {
            return Err(CKR_KEY_TYPE_INCONSISTENT);
        }
        if !obj.bool(usage, false) {
            return Err(CKR_KEY_FUNCTION_NOT_PERMITTED);
        }
        Ok(obj)
    }

    /// `C_SignInit`.
    pub fn sign_init(
        &self,
        h: CK_SESSION_HANDLE,
        mech: SignMechanism,
        key: CK_OBJECT_HANDLE,
    ) -> Result<(), Rv> {
        let ctx = self.enter(h, "C_SignInit")?;
        self.usable_key(&ctx, key, mech.key_type(), CKA_SIGN)?;
        self.set_op(h, Kind::Sign, Some(ActiveOp::Sign { mech, key }))
    }

    /// `C_Sign`; `out_capacity` is `None` for a length query.
    pub fn sign(
        &self,
        h: CK_SESSION_HANDLE,
        data: &[u8],
        out_capacity: Option<usize>,
    ) -> Result<SignOutcome, Rv> {
        let r = self.sign_inner(h, data, out_capacity);
        let keep = matches!(r, Ok(SignOutcome::Length(_)) | Ok(SignOutcome::TooSmall(_)));
        self.end_op_unless(h, Kind::Sign, &r, keep);
        r
    }

    fn sign_inner(
        &self,
        h: CK_SESSION_HANDLE,
        data: &[u8],
        out_capacity: Option<usize>,
    ) -> Result<SignOutcome, Rv> {
        let ctx = self.enter(h, "C_Sign")?;
        let ActiveOp::Sign { mech, key } = self.get_op(h, Kind::Sign)? else {
            return Err(CKR_OPERATION_NOT_INITIALIZED);
        };
        let obj = self.usable_key(&ctx, key, mech.key_type(), CKA_SIGN)?;
        let material = obj.key().ok_or(CKR_KEY_HANDLE_INVALID)?;
        let len = crypto::signature_len(material, &mech)?;
        match out_capacity {
            None => return Ok(SignOutcome::Length(len)),
            Some(cap) if cap < len => return Ok(SignOutcome::TooSmall(len)),
            Some(_) => {}
        }
        let started = Instant::now();
        let sig = crypto::sign(material, &mech, data)?;
        let op = if mech.key_type() == CKK_EC {
            Op::SignEc
        } else {
            Op::SignRsa
        };
        self.delay(&ctx, op, started.elapsed())?;
        Ok(SignOutcome::Done(sig))
    }

    /// `C_DecryptInit`.
    pub fn decrypt_init(
        &self,
        h: CK_SESSION_HANDLE,
        mech: DecryptMechanism,
        key: CK_OBJECT_HANDLE,
    ) -> Result<(), Rv> {
        let ctx = self.enter(h, "C_DecryptInit")?;
        self.usable_key(&ctx, key, CKK_RSA, CKA_DECRYPT)?;
        self.set_op(h, Kind::Decrypt, Some(ActiveOp::Decrypt { mech, key }))
    }

    /// `C_Decrypt`; `out_capacity` is `None` for a length query.
    pub fn decrypt(
        &self,
        h: CK_SESSION_HANDLE,
        data: &[u8],
        out_capacity: Option<usize>,
    ) -> Result<DecryptOutcome, Rv> {
        let r = self.decrypt_inner(h, data, out_capacity);
        let keep = matches!(
            r,
            Ok(DecryptOutcome::Length(_)) | Ok(DecryptOutcome::TooSmall(_))
        );
        self.end_op_unless(h, Kind::Decrypt, &r, keep);
        r
    }

    fn decrypt_inner(
        &self,
        h: CK_SESSION_HANDLE,
        data: &[u8],
        out_capacity: Option<usize>,
    ) -> Result<DecryptOutcome, Rv> {
        let ctx = self.enter(h, "C_Decrypt")?;
        let ActiveOp::Decrypt { mech, key } = self.get_op(h, Kind::Decrypt)? else {
            return Err(CKR_OPERATION_NOT_INITIALIZED);
        };
        let obj = self.usable_key(&ctx, key, CKK_RSA, CKA_DECRYPT)?;
        let material = obj.key().ok_or(CKR_KEY_HANDLE_INVALID)?;
        let Some(cap) = out_capacity else {
            return Ok(DecryptOutcome::Length(crypto::rsa_modulus_len(material)?));
        };
        let started = Instant::now();
        let plain = crypto::decrypt(material, &mech, data)?;
        if cap < plain.len() {
            return Ok(DecryptOutcome::TooSmall(plain.len()));
        }
        self.delay(&ctx, Op::Decrypt, started.elapsed())?;
        Ok(DecryptOutcome::Done(plain))
    }
}
