//! Cryptographic services (GM/T 0016-2012, 7.6): SM2 key pairs, signatures, encryption to
//! an outside key, and SM3 with the signer-ID preprocessing.

use hsm_sim::skf::consts::*;
use hsm_sim::skf::engine::{Envelope, MAX_BUFFER, MAX_ECC_PLAIN};
use hsm_sim::skf::gm::{self, MAX_ID_LEN};

use super::*;

/// `SKF_GenECCKeyPair` (`SGD_SM2_1`, user PIN verified): a new signing key pair in the
/// container; its public key goes to `*pBlob`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn SKF_GenECCKeyPair(
    hContainer: HCONTAINER,
    ulAlgId: ULONG,
    pBlob: *mut ECCPUBLICKEYBLOB,
) -> ULONG {
    shell(|| {
        let h = handle(hContainer)?;
        if pBlob.is_null() {
            return Err(SAR_INVALIDPARAMERR);
        }
        let public = eng().gen_ecc_keypair(h, ulAlgId)?;
        // SAFETY: checked non-null; the caller passes a writable blob.
        unsafe { put(pBlob, public_blob(&public)) }
    })
}

/// Reads an `ECCCIPHERBLOB` whose C2 is at most `max` bytes (else `SAR_INDATALENERR`).
///
/// # Safety
/// `p` must be null or point to a blob followed by its `CipherLen` bytes of C2.
pub(crate) unsafe fn read_cipher(p: *const u8, max: usize) -> Result<gm::Cipher, Sar> {
    // SAFETY: the blob's head is readable by the contract.
    let head = unsafe { get(p as *const ECCCIPHERBLOB_HEAD) }?;
    let len = head.CipherLen as usize;
    if len == 0 || len > max {
        return Err(SAR_INDATALENERR);
    }
    // SAFETY: C2 follows the head: `len` readable bytes by the contract.
    let c2 = unsafe { std::slice::from_raw_parts(p.add(CIPHER_OFFSET), len) };
    Ok(gm::Cipher {
        x: from_field(&head.XCoordinate)?,
        y: from_field(&head.YCoordinate)?,
        hash: head.HASH,
        c2: c2.to_vec(),
    })
}

/// `SKF_ImportECCKeyPair` (user PIN verified): an encryption key pair enveloped to the
/// container's signing key (see the engine for the envelope's format).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn SKF_ImportECCKeyPair(
    hContainer: HCONTAINER,
    pEnvelopedKeyBlob: *mut ENVELOPEDKEYBLOB_HEAD,
) -> ULONG {
    shell(|| {
        let h = handle(hContainer)?;
        // SAFETY: the caller passes a whole ENVELOPEDKEYBLOB.
        let head = unsafe { get(pEnvelopedKeyBlob as *const ENVELOPEDKEYBLOB_HEAD) }?;
        // SAFETY: its ECCCipherBlob follows the head; the wrapped key is at most 64 bytes.
        let cipher = unsafe {
            read_cipher(
                (pEnvelopedKeyBlob as *const u8).add(ENVELOPE_CIPHER_OFFSET),
                64,
            )
        }?;
        let env = Envelope {
            version: head.Version,
            sym_alg: head.ulSymmAlgID,
            bits: head.ulBits,
            encrypted_private: head.cbEncryptedPriKey,
            public: blob_public(&head.PubKey)?,
            cipher,
        };
        eng().import_ecc_keypair(h, &env)
    })
}

/// `SKF_ECCSignData` (user PIN verified): signs the 32-byte hash (SM3 with Z, from
/// `SKF_DigestInit` with the public key and ID) with the container's signing key.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn SKF_ECCSignData(
    hContainer: HCONTAINER,
    pbData: *mut BYTE,
    ulDataLen: ULONG,
    pSignature: *mut ECCSIGNATUREBLOB,
) -> ULONG {
    shell(|| {
        let h = handle(hContainer)?;
        // SAFETY: `ulDataLen` readable bytes, at most 32 (else refused unread).
        let data = unsafe { bytes(pbData, ulDataLen, 32, SAR_INDATALENERR) }?;
        if pSignature.is_null() {
            return Err(SAR_INVALIDPARAMERR);
        }
        let (r, s) = eng().ecc_sign(h, data)?;
        let sig = ECCSIGNATUREBLOB {
            r: to_field(&r),
            s: to_field(&s),
        };
        // SAFETY: checked non-null.
        unsafe { put(pSignature, sig) }
    })
}

/// `SKF_ECCVerify`: `SAR_OK` when the signature verifies, else `SAR_FAIL`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn SKF_ECCVerify(
    hDev: DEVHANDLE,
    pECCPubKeyBlob: *mut ECCPUBLICKEYBLOB,
    pbData: *mut BYTE,
    ulDataLen: ULONG,
    pSignature: *mut ECCSIGNATUREBLOB,
) -> ULONG {
    shell(|| {
        let h = handle(hDev)?;
        // SAFETY: a readable blob.
        let public = blob_public(&unsafe { get(pECCPubKeyBlob as *const ECCPUBLICKEYBLOB) }?)?;
        // SAFETY: `ulDataLen` readable bytes, at most 32.
        let data = unsafe { bytes(pbData, ulDataLen, 32, SAR_INDATALENERR) }?;
        // SAFETY: a readable blob.
        let sig = unsafe { get(pSignature as *const ECCSIGNATUREBLOB) }?;
        let (r, s) = (from_field(&sig.r)?, from_field(&sig.s)?);
        eng().ecc_verify(h, &public, data, &r, &s)
    })
}

/// `SKF_ExtECCEncrypt`: SM2 encryption of 1 to 256 bytes to an outside public key. The
/// caller's `pCipherText` must hold an `ECCCIPHERBLOB` with `ulPlainTextLen` bytes of
/// `Cipher` (the standard's contract: there is no capacity argument).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn SKF_ExtECCEncrypt(
    hDev: DEVHANDLE,
    pECCPubKeyBlob: *mut ECCPUBLICKEYBLOB,
    pbPlainText: *mut BYTE,
    ulPlainTextLen: ULONG,
    pCipherText: *mut ECCCIPHERBLOB_HEAD,
) -> ULONG {
    shell(|| {
        let h = handle(hDev)?;
        // SAFETY: a readable blob.
        let public = blob_public(&unsafe { get(pECCPubKeyBlob as *const ECCPUBLICKEYBLOB) }?)?;
        // SAFETY: `ulPlainTextLen` readable bytes, checked against the limit first.
        let plain = unsafe { bytes(pbPlainText, ulPlainTextLen, MAX_ECC_PLAIN, SAR_INDATALENERR) }?;
        if pCipherText.is_null() {
            return Err(SAR_INVALIDPARAMERR);
        }
        let c = eng().ext_ecc_encrypt(h, &public, plain)?;
        let head = ECCCIPHERBLOB_HEAD {
            XCoordinate: to_field(&c.x),
            YCoordinate: to_field(&c.y),
            HASH: c.hash,
            CipherLen: c.c2.len() as ULONG,
        };
        // SAFETY: the caller's blob holds the head and `ulPlainTextLen` (= C2's length)
        // bytes after it.
        unsafe {
            put(pCipherText, head)?;
            std::ptr::copy_nonoverlapping(
                c.c2.as_ptr(),
                (pCipherText as *mut u8).add(CIPHER_OFFSET),
                c.c2.len(),
            );
        }
        Ok(())
    })
}

/// `SKF_ExportPublicKey`: an `ECCPUBLICKEYBLOB` (132 bytes) of the signing (`bSignFlag`
/// TRUE) or encryption key; `pbBlob` NULL asks for the length.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn SKF_ExportPublicKey(
    hContainer: HCONTAINER,
    bSignFlag: BOOL,
    pbBlob: *mut BYTE,
    pulBlobLen: *mut ULONG,
) -> ULONG {
    shell(|| {
        let h = handle(hContainer)?;
        if pulBlobLen.is_null() {
            return Err(SAR_INVALIDPARAMERR);
        }
        let public = eng().export_public_key(h, truth(bSignFlag))?;
        let blob = public_blob(&public);
        let mut raw = Vec::with_capacity(132);
        raw.extend_from_slice(&blob.BitLen.to_ne_bytes());
        raw.extend_from_slice(&blob.XCoordinate);
        raw.extend_from_slice(&blob.YCoordinate);
        // SAFETY: the caller passes `*pulBlobLen` writable bytes at `pbBlob`.
        unsafe { write_out(pbBlob, pulBlobLen, &raw) }
    })
}

/// `SKF_DigestInit` (`SGD_SM3`): with `pPubKey`, the hash starts with Z of that key and the
/// ID (`pucID`/`ulIDLen`; the default `1234567812345678` when the ID is empty).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn SKF_DigestInit(
    hDev: DEVHANDLE,
    ulAlgID: ULONG,
    pPubKey: *mut ECCPUBLICKEYBLOB,
    pucID: *mut u8,
    ulIDLen: ULONG,
    phHash: *mut HANDLE,
) -> ULONG {
    shell(|| {
        let h = handle(hDev)?;
        let public = if pPubKey.is_null() {
            None
        } else {
            // SAFETY: a readable blob.
            Some(blob_public(&unsafe {
                get(pPubKey as *const ECCPUBLICKEYBLOB)
            }?)?)
        };
        // SAFETY: `ulIDLen` readable bytes, checked against the limit first.
        let id = unsafe { bytes(pucID, ulIDLen, MAX_ID_LEN, SAR_INDATALENERR) }?;
        if phHash.is_null() {
            return Err(SAR_INVALIDPARAMERR);
        }
        let hash = eng().digest_init(h, ulAlgID, public.as_ref(), id)?;
        // SAFETY: checked non-null.
        unsafe { put(phHash, to_handle(hash)) }
    })
}

/// Hands out a 32-byte hash with the length-query convention, asking the engine for it
/// only when the buffer can take it (a length query does not use the handle up).
///
/// # Safety
/// As `write_out`.
unsafe fn hash_out(
    h: usize,
    out: *mut BYTE,
    len: *mut ULONG,
    f: impl FnOnce() -> Result<[u8; 32], Sar>,
) -> Result<(), Sar> {
    eng().hash_ready(h)?;
    if len.is_null() {
        return Err(SAR_INVALIDPARAMERR);
    }
    // SAFETY: checked non-null; readable by the contract.
    let cap = unsafe { len.read_unaligned() } as usize;
    if out.is_null() || cap < 32 {
        // SAFETY: as above, writable.
        unsafe { len.write_unaligned(32) };
        return if out.is_null() {
            Ok(())
        } else {
            Err(SAR_BUFFER_TOO_SMALL)
        };
    }
    let digest = f()?;
    // SAFETY: `out` holds `cap >= 32` writable bytes.
    unsafe { write_out(out, len, &digest) }
}

/// `SKF_Digest`: hashes the data and gives the hash (32 bytes).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn SKF_Digest(
    hHash: HANDLE,
    pbData: *mut BYTE,
    ulDataLen: ULONG,
    pbHashData: *mut BYTE,
    pulHashLen: *mut ULONG,
) -> ULONG {
    shell(|| {
        let h = handle(hHash)?;
        // SAFETY: `ulDataLen` readable bytes, checked against the limit first.
        let data = unsafe { bytes(pbData, ulDataLen, MAX_BUFFER, SAR_INDATALENERR) }?;
        // SAFETY: the output's contract is the caller's, as `write_out` states.
        unsafe { hash_out(h, pbHashData, pulHashLen, || eng().digest(h, data)) }
    })
}

/// `SKF_DigestUpdate`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn SKF_DigestUpdate(
    hHash: HANDLE,
    pbData: *mut BYTE,
    ulDataLen: ULONG,
) -> ULONG {
    shell(|| {
        let h = handle(hHash)?;
        // SAFETY: `ulDataLen` readable bytes, checked against the limit first.
        let data = unsafe { bytes(pbData, ulDataLen, MAX_BUFFER, SAR_INDATALENERR) }?;
        eng().digest_update(h, data)
    })
}

/// `SKF_DigestFinal`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn SKF_DigestFinal(
    hHash: HANDLE,
    pHashData: *mut BYTE,
    pulHashLen: *mut ULONG,
) -> ULONG {
    shell(|| {
        let h = handle(hHash)?;
        // SAFETY: the output's contract is the caller's, as `write_out` states.
        unsafe { hash_out(h, pHashData, pulHashLen, || eng().digest_final(h)) }
    })
}

/// `SKF_CloseHandle`: a hash handle.
#[unsafe(no_mangle)]
pub extern "C" fn SKF_CloseHandle(hHandle: HANDLE) -> ULONG {
    shell(|| eng().close_handle(handle(hHandle)?))
}
