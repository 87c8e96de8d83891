//! Encryption, decryption and digests: `C_EncryptInit`/`C_Encrypt`/`C_EncryptUpdate`/
//! `C_EncryptFinal`, the same four for decryption, and `C_DigestInit`/`C_Digest`/
//! `C_DigestUpdate`/`C_DigestKey`/`C_DigestFinal`.
//!
//! Multi-part AES in ECB, CBC and CBC-PAD streams: each update returns the whole blocks it
//! can, the session keeps the rest and the chaining value. GCM, RSA and digests gather
//! their input in the session (at most 1 MiB) and do the whole operation at the final call
//! (GCM's tag covers everything, RSA takes one block): the single-part code path.

use std::time::Instant;

use cryptoki_sys::*;
use zeroize::Zeroizing;

use super::ops::Kind;
use super::{ActiveOp, Ctx, Engine};
use crate::rack::Rv;
use crate::rack::crypto::{self, CipherMechanism, EncryptKey};
use crate::rack::latency::Op;
use crate::rack::object::{KeyMaterial, Object};
use crate::rack::symmetric::{self, DigestAlg};

/// What a call that returns data gives back (`C_Encrypt`, `C_Decrypt`, `C_Digest`, their
/// `…Final`, `C_WrapKey`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// The caller asked for the length only (NULL output buffer): the exact length, or an
    /// upper bound for decryption; the operation goes on.
    Length(usize),
    /// The caller's buffer is too small for this length; the operation goes on.
    TooSmall(usize),
    /// The output; the operation is over.
    Done(Zeroizing<Vec<u8>>),
}

impl Output {
    /// Whether the operation goes on after this outcome.
    fn keeps_going(r: &Result<Output, Rv>) -> bool {
        matches!(r, Ok(Output::Length(_)) | Ok(Output::TooSmall(_)))
    }
}

/// Answers a length query or a too-small buffer for an output of `len` bytes, else `None`.
pub(super) fn sized(len: usize, capacity: Option<usize>) -> Option<Output> {
    match capacity {
        None => Some(Output::Length(len)),
        Some(cap) if cap < len => Some(Output::TooSmall(len)),
        Some(_) => None,
    }
}

impl Engine {
    /// The key of an encryption or decryption: AES keys are secret keys with `usage`, RSA
    /// keys public (encryption) or private (decryption).
    fn cipher_key(
        &self,
        ctx: &Ctx,
        key: CK_OBJECT_HANDLE,
        mech: &CipherMechanism,
        usage: CK_ATTRIBUTE_TYPE,
    ) -> Result<Object, Rv> {
        let class = match (mech, usage) {
            (CipherMechanism::Aes(_), _) => CKO_SECRET_KEY,
            (_, CKA_ENCRYPT) => CKO_PUBLIC_KEY,
            _ => CKO_PRIVATE_KEY,
        };
        self.usable(ctx, key, class, mech.key_type(), usage)
    }

    /// `C_EncryptInit`.
    pub fn encrypt_init(
        &self,
        h: CK_SESSION_HANDLE,
        mech: CipherMechanism,
        key: CK_OBJECT_HANDLE,
    ) -> Result<(), Rv> {
        let ctx = self.enter(h, "C_EncryptInit")?;
        self.cipher_key(&ctx, key, &mech, CKA_ENCRYPT)?;
        let parts = Zeroizing::new(Vec::new());
        self.set_op(
            h,
            Kind::Encrypt,
            Some(ActiveOp::Encrypt { mech, key, parts }),
        )
    }

    /// `C_Encrypt`; `out_capacity` is `None` for a length query.
    pub fn encrypt(
        &self,
        h: CK_SESSION_HANDLE,
        data: &[u8],
        out_capacity: Option<usize>,
    ) -> Result<Output, Rv> {
        let r = self
            .enter(h, "C_Encrypt")
            .and_then(|ctx| self.encrypt_inner(&ctx, data, out_capacity));
        self.end_op_unless(h, Kind::Encrypt, &r, Output::keeps_going(&r));
        r
    }

    /// `C_EncryptUpdate`: the whole blocks of what came so far, encrypted now (ECB, CBC,
    /// CBC-PAD); GCM and RSA gather their input and give it all at `C_EncryptFinal`.
    /// `out_capacity` is `None` for a length query, which takes nothing in.
    pub fn encrypt_update(
        &self,
        h: CK_SESSION_HANDLE,
        data: &[u8],
        out_capacity: Option<usize>,
    ) -> Result<Output, Rv> {
        let r = self
            .enter(h, "C_EncryptUpdate")
            .and_then(|ctx| self.update(&ctx, Kind::Encrypt, data, out_capacity));
        self.end_op_unless(h, Kind::Encrypt, &r, true);
        r
    }

    /// `C_EncryptFinal`: encrypts everything gathered.
    pub fn encrypt_final(
        &self,
        h: CK_SESSION_HANDLE,
        out_capacity: Option<usize>,
    ) -> Result<Output, Rv> {
        let r = self.enter(h, "C_EncryptFinal").and_then(|ctx| {
            let ActiveOp::Encrypt { parts, .. } = self.get_op(h, Kind::Encrypt)? else {
                return Err(CKR_OPERATION_NOT_INITIALIZED);
            };
            self.encrypt_inner(&ctx, &parts, out_capacity)
        });
        self.end_op_unless(h, Kind::Encrypt, &r, Output::keeps_going(&r));
        r
    }

    fn encrypt_inner(
        &self,
        ctx: &Ctx,
        data: &[u8],
        out_capacity: Option<usize>,
    ) -> Result<Output, Rv> {
        let ActiveOp::Encrypt { mech, key, .. } = self.get_op(ctx.handle, Kind::Encrypt)? else {
            return Err(CKR_OPERATION_NOT_INITIALIZED);
        };
        let obj = self.cipher_key(ctx, key, &mech, CKA_ENCRYPT)?;
        let ek = encrypt_key(&obj)?;
        if let Some(o) = sized(crypto::ciphertext_len(ek, &mech, data.len())?, out_capacity) {
            return Ok(o);
        }
        Ok(Output::Done(Zeroizing::new(crypto::encrypt(
            ek, &mech, data,
        )?)))
    }

    /// `C_DecryptInit`.
    pub fn decrypt_init(
        &self,
        h: CK_SESSION_HANDLE,
        mech: CipherMechanism,
        key: CK_OBJECT_HANDLE,
    ) -> Result<(), Rv> {
        let ctx = self.enter(h, "C_DecryptInit")?;
        self.cipher_key(&ctx, key, &mech, CKA_DECRYPT)?;
        let parts = Zeroizing::new(Vec::new());
        self.set_op(
            h,
            Kind::Decrypt,
            Some(ActiveOp::Decrypt { mech, key, parts }),
        )
    }

    /// `C_Decrypt`; `out_capacity` is `None` for a length query (an upper bound).
    pub fn decrypt(
        &self,
        h: CK_SESSION_HANDLE,
        data: &[u8],
        out_capacity: Option<usize>,
    ) -> Result<Output, Rv> {
        let r = self
            .enter(h, "C_Decrypt")
            .and_then(|ctx| self.decrypt_inner(&ctx, data, out_capacity));
        self.end_op_unless(h, Kind::Decrypt, &r, Output::keeps_going(&r));
        r
    }

    /// `C_DecryptUpdate`: as `C_EncryptUpdate`; CBC-PAD holds its last block back (it
    /// carries the padding) until `C_DecryptFinal`.
    pub fn decrypt_update(
        &self,
        h: CK_SESSION_HANDLE,
        data: &[u8],
        out_capacity: Option<usize>,
    ) -> Result<Output, Rv> {
        let r = self
            .enter(h, "C_DecryptUpdate")
            .and_then(|ctx| self.update(&ctx, Kind::Decrypt, data, out_capacity));
        self.end_op_unless(h, Kind::Decrypt, &r, true);
        r
    }

    /// One multi-part update of an encryption or decryption. Block modes process the whole
    /// blocks they have and keep the rest (and the chaining value) in the session; the
    /// others gather everything for the final call.
    fn update(
        &self,
        ctx: &Ctx,
        kind: Kind,
        data: &[u8],
        out_capacity: Option<usize>,
    ) -> Result<Output, Rv> {
        let encrypt = kind == Kind::Encrypt;
        let (mech, key, parts) = match self.get_op(ctx.handle, kind)? {
            ActiveOp::Encrypt { mech, key, parts } | ActiveOp::Decrypt { mech, key, parts } => {
                (mech, key, parts)
            }
            _ => return Err(CKR_OPERATION_NOT_INITIALIZED),
        };
        let too_long = if encrypt {
            CKR_DATA_LEN_RANGE
        } else {
            CKR_ENCRYPTED_DATA_LEN_RANGE
        };
        let CipherMechanism::Aes(mode) = &mech else {
            if let Some(o) = sized(0, out_capacity) {
                return Ok(o);
            }
            self.add_parts(ctx.handle, kind, data, too_long)?;
            return Ok(Output::Done(Zeroizing::new(Vec::new())));
        };
        let Some(step) = symmetric::BlockStep::of(mode, parts.len() + data.len(), encrypt) else {
            if let Some(o) = sized(0, out_capacity) {
                return Ok(o);
            }
            self.add_parts(ctx.handle, kind, data, too_long)?;
            return Ok(Output::Done(Zeroizing::new(Vec::new())));
        };
        if let Some(o) = sized(step.ready, out_capacity) {
            return Ok(o);
        }
        let usage = if encrypt { CKA_ENCRYPT } else { CKA_DECRYPT };
        let obj = self.cipher_key(ctx, key, &mech, usage)?;
        let Some(KeyMaterial::Secret(k)) = obj.key() else {
            return Err(CKR_KEY_TYPE_INCONSISTENT);
        };
        let mut all = Zeroizing::new(parts.to_vec());
        all.extend_from_slice(data);
        let (out, next) = step.run(k, &all)?;
        let rest = Zeroizing::new(all[step.ready..].to_vec());
        let op = if encrypt {
            ActiveOp::Encrypt {
                mech: CipherMechanism::Aes(next),
                key,
                parts: rest,
            }
        } else {
            ActiveOp::Decrypt {
                mech: CipherMechanism::Aes(next),
                key,
                parts: rest,
            }
        };
        self.set_op(ctx.handle, kind, None)?;
        self.set_op(ctx.handle, kind, Some(op))?;
        Ok(Output::Done(out))
    }

    /// `C_DecryptFinal`: decrypts everything gathered.
    pub fn decrypt_final(
        &self,
        h: CK_SESSION_HANDLE,
        out_capacity: Option<usize>,
    ) -> Result<Output, Rv> {
        let r = self.enter(h, "C_DecryptFinal").and_then(|ctx| {
            let ActiveOp::Decrypt { parts, .. } = self.get_op(h, Kind::Decrypt)? else {
                return Err(CKR_OPERATION_NOT_INITIALIZED);
            };
            self.decrypt_inner(&ctx, &parts, out_capacity)
        });
        self.end_op_unless(h, Kind::Decrypt, &r, Output::keeps_going(&r));
        r
    }

    fn decrypt_inner(
        &self,
        ctx: &Ctx,
        data: &[u8],
        out_capacity: Option<usize>,
    ) -> Result<Output, Rv> {
        let ActiveOp::Decrypt { mech, key, .. } = self.get_op(ctx.handle, Kind::Decrypt)? else {
            return Err(CKR_OPERATION_NOT_INITIALIZED);
        };
        let obj = self.cipher_key(ctx, key, &mech, CKA_DECRYPT)?;
        let material = obj.key().ok_or(CKR_KEY_HANDLE_INVALID)?;
        let Some(cap) = out_capacity else {
            return Ok(Output::Length(crypto::plaintext_bound(
                material,
                &mech,
                data.len(),
            )?));
        };
        let started = Instant::now();
        let plain = crypto::decrypt(material, &mech, data)?;
        if cap < plain.len() {
            return Ok(Output::TooSmall(plain.len()));
        }
        if mech.key_type() == CKK_RSA {
            self.delay(ctx, Op::Decrypt, started.elapsed())?;
        }
        Ok(Output::Done(plain))
    }

    /// `C_DigestInit` (no login needed: a digest uses no key).
    pub fn digest_init(&self, h: CK_SESSION_HANDLE, alg: DigestAlg) -> Result<(), Rv> {
        self.enter(h, "C_DigestInit")?;
        let parts = Zeroizing::new(Vec::new());
        self.set_op(h, Kind::Digest, Some(ActiveOp::Digest { alg, parts }))
    }

    /// `C_Digest`.
    pub fn digest(
        &self,
        h: CK_SESSION_HANDLE,
        data: &[u8],
        out_capacity: Option<usize>,
    ) -> Result<Output, Rv> {
        let r = self
            .enter(h, "C_Digest")
            .and_then(|_| self.digest_inner(h, Some(data), out_capacity));
        self.end_op_unless(h, Kind::Digest, &r, Output::keeps_going(&r));
        r
    }

    /// `C_DigestUpdate`.
    pub fn digest_update(&self, h: CK_SESSION_HANDLE, data: &[u8]) -> Result<(), Rv> {
        let r = self
            .enter(h, "C_DigestUpdate")
            .and_then(|_| self.add_parts(h, Kind::Digest, data, CKR_DATA_LEN_RANGE));
        self.end_op_unless(h, Kind::Digest, &r, true);
        r
    }

    /// `C_DigestKey`: digests a secret key's value (which never leaves the token this way).
    pub fn digest_key(&self, h: CK_SESSION_HANDLE, key: CK_OBJECT_HANDLE) -> Result<(), Rv> {
        let r = self.enter(h, "C_DigestKey").and_then(|ctx| {
            self.get_op(h, Kind::Digest)?;
            let obj = self.key_object(&ctx, key)?;
            match obj.key() {
                Some(KeyMaterial::Secret(v)) if obj.class() == CKO_SECRET_KEY => {
                    self.add_parts(h, Kind::Digest, v, CKR_DATA_LEN_RANGE)
                }
                _ => Err(CKR_KEY_INDIGESTIBLE),
            }
        });
        self.end_op_unless(h, Kind::Digest, &r, true);
        r
    }

    /// `C_DigestFinal`.
    pub fn digest_final(
        &self,
        h: CK_SESSION_HANDLE,
        out_capacity: Option<usize>,
    ) -> Result<Output, Rv> {
        let r = self
            .enter(h, "C_DigestFinal")
            .and_then(|_| self.digest_inner(h, None, out_capacity));
        self.end_op_unless(h, Kind::Digest, &r, Output::keeps_going(&r));
        r
    }

    fn digest_inner(
        &self,
        h: CK_SESSION_HANDLE,
        data: Option<&[u8]>,
        out_capacity: Option<usize>,
    ) -> Result<Output, Rv> {
        let ActiveOp::Digest { alg, parts } = self.get_op(h, Kind::Digest)? else {
            return Err(CKR_OPERATION_NOT_INITIALIZED);
        };
        if let Some(o) = sized(alg.output_len(), out_capacity) {
            return Ok(o);
        }
        let input = data.unwrap_or(&parts);
        Ok(Output::Done(Zeroizing::new(alg.digest(input))))
    }
}

/// What an encryption key object gives `crypto::encrypt`.
pub(super) fn encrypt_key(obj: &Object) -> Result<EncryptKey<'_>, Rv> {
    match (obj.class(), obj.key()) {
        (CKO_SECRET_KEY, Some(KeyMaterial::Secret(v))) => Ok(EncryptKey::Secret(v)),
        (CKO_PUBLIC_KEY, _) => Ok(EncryptKey::RsaPublic {
            n: obj.get(CKA_MODULUS).ok_or(CKR_KEY_TYPE_INCONSISTENT)?,
            e: obj
                .get(CKA_PUBLIC_EXPONENT)
                .ok_or(CKR_KEY_TYPE_INCONSISTENT)?,
        }),
        _ => Err(CKR_KEY_TYPE_INCONSISTENT),
    }
}
