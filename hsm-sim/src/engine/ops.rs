//! Signing (`C_SignInit`/`C_Sign`) and what every operation of a session shares: the
//! active-operation slots, the input multi-part calls gather, the length-query convention
//! and the rule that any error other than `CKR_BUFFER_TOO_SMALL` ends the operation.

use std::time::Instant;

use cryptoki_sys::*;

use super::{ActiveOp, Ctx, Engine};
use crate::rack::Rv;
use crate::rack::crypto::{self, SignMechanism};
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

/// Most input a multi-part operation gathers before its final call (as `C_Decrypt`'s limit).
pub(super) const MAX_PARTS: usize = 1024 * 1024;

/// Which operation slot of a session.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Sign,
    Decrypt,
    Encrypt,
    Digest,
}

impl Engine {
    pub(super) fn set_op(
        &self,
        h: CK_SESSION_HANDLE,
        kind: Kind,
        op: Option<ActiveOp>,
    ) -> Result<(), Rv> {
        let mut st = self.lock()?;
        let s = st.sessions.get_mut(&h).ok_or(CKR_SESSION_HANDLE_INVALID)?;
        let slot = match kind {
            Kind::Sign => &mut s.sign,
            Kind::Decrypt => &mut s.decrypt,
            Kind::Encrypt => &mut s.encrypt,
            Kind::Digest => &mut s.digest,
        };
        if op.is_some() && slot.is_some() {
            return Err(CKR_OPERATION_ACTIVE);
        }
        *slot = op;
        Ok(())
    }

    pub(super) fn get_op(&self, h: CK_SESSION_HANDLE, kind: Kind) -> Result<ActiveOp, Rv> {
        let st = self.lock()?;
        let s = st.sessions.get(&h).ok_or(CKR_SESSION_HANDLE_INVALID)?;
        match kind {
            Kind::Sign => s.sign.clone(),
            Kind::Decrypt => s.decrypt.clone(),
            Kind::Encrypt => s.encrypt.clone(),
            Kind::Digest => s.digest.clone(),
        }
        .ok_or(CKR_OPERATION_NOT_INITIALIZED)
    }

    /// Appends input of a multi-part operation (at most [`MAX_PARTS`] in all, else
    /// `too_long`).
    pub(super) fn add_parts(
        &self,
        h: CK_SESSION_HANDLE,
        kind: Kind,
        data: &[u8],
        too_long: Rv,
    ) -> Result<(), Rv> {
        let mut st = self.lock()?;
        let s = st.sessions.get_mut(&h).ok_or(CKR_SESSION_HANDLE_INVALID)?;
        let op = match kind {
            Kind::Sign => &mut s.sign,
            Kind::Decrypt => &mut s.decrypt,
            Kind::Encrypt => &mut s.encrypt,
            Kind::Digest => &mut s.digest,
        };
        let parts = match op.as_mut().ok_or(CKR_OPERATION_NOT_INITIALIZED)? {
            ActiveOp::Decrypt { parts, .. }
            | ActiveOp::Encrypt { parts, .. }
            | ActiveOp::Digest { parts, .. } => parts,
            ActiveOp::Sign { .. } => return Err(CKR_OPERATION_NOT_INITIALIZED),
        };
        if parts.len().saturating_add(data.len()) > MAX_PARTS {
            return Err(too_long);
        }
        parts.extend_from_slice(data);
        Ok(())
    }

    /// Ends the operation unless the outcome keeps it going.
    pub(super) fn end_op_unless<T>(
        &self,
        h: CK_SESSION_HANDLE,
        kind: Kind,
        r: &Result<T, Rv>,
        keep: bool,
    ) {
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
        self.usable(ctx, key, CKO_PRIVATE_KEY, key_type, usage)
    }

    /// A key of `class` and `key_type` whose `usage` attribute is true, and which the token's
    /// key policy allows (`CKR_KEY_FUNCTION_NOT_PERMITTED` otherwise).
    pub(super) fn usable(
        &self,
        ctx: &Ctx,
        key: CK_OBJECT_HANDLE,
        class: CK_OBJECT_CLASS,
        key_type: CK_KEY_TYPE,
        usage: CK_ATTRIBUTE_TYPE,
    ) -> Result<Object, Rv> {
        let obj = self.key_object(ctx, key)?;
        if obj.class() != class || obj.ulong(CKA_KEY_TYPE) != Some(key_type) {
            return Err(CKR_KEY_TYPE_INCONSISTENT);
        }
        if !obj.bool(usage, false) {
            return Err(CKR_KEY_FUNCTION_NOT_PERMITTED);
        }
        if self.token(&ctx.serial)?.policy().check(&obj).is_err() {
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
}
