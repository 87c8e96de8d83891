//! Symmetric cryptography and digests of the token: AES in ECB, CBC, CBC with PKCS#7 padding
//! and GCM; AES key wrap (RFC 3394) and key wrap with padding (RFC 5649); SHA-1 and SHA-2
//! digests. The block cipher, GCM and the hashes are the RustCrypto crates'; the modes and
//! the key-wrap rounds are written out here over the block cipher.
//!
//! Errors are the `CKR_` codes an application should see. No IO, no sessions, no latency.

use aes::cipher::{BlockCipherDecrypt, BlockCipherEncrypt, KeyInit};
use aes_gcm::aead::AeadInOut;
use aes_gcm::aead::consts::U12;
use cryptoki_sys::*;
use sha2::Digest;
use zeroize::Zeroizing;

use super::Rv;

/// The AES block size in bytes.
pub const AES_BLOCK: usize = 16;

/// An AES mode with its parameters, as a mechanism gives them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AesMode {
    /// `CKM_AES_ECB`: whole blocks, no IV.
    Ecb,
    /// `CKM_AES_CBC`: whole blocks.
    Cbc {
        /// The IV.
        iv: [u8; AES_BLOCK],
    },
    /// `CKM_AES_CBC_PAD`: PKCS#7 padding.
    CbcPad {
        /// The IV.
        iv: [u8; AES_BLOCK],
    },
    /// `CKM_AES_GCM`: 96-bit IV, 128-bit tag appended to the ciphertext.
    Gcm {
        /// The IV (12 bytes).
        iv: [u8; 12],
        /// Additional authenticated data.
        aad: Vec<u8>,
    },
}

impl AesMode {
    /// The mechanism type this came from.
    pub fn mechanism_type(&self) -> CK_MECHANISM_TYPE {
        match self {
            AesMode::Ecb => CKM_AES_ECB,
            AesMode::Cbc { .. } => CKM_AES_CBC,
            AesMode::CbcPad { .. } => CKM_AES_CBC_PAD,
            AesMode::Gcm { .. } => CKM_AES_GCM,
        }
    }

    /// Length of the ciphertext of `n` plaintext bytes.
    pub fn ciphertext_len(&self, n: usize) -> Result<usize, Rv> {
        match self {
            AesMode::Ecb | AesMode::Cbc { .. } if !n.is_multiple_of(AES_BLOCK) => {
                Err(CKR_DATA_LEN_RANGE)
            }
            AesMode::Ecb | AesMode::Cbc { .. } => Ok(n),
            AesMode::CbcPad { .. } => Ok((n / AES_BLOCK + 1) * AES_BLOCK),
            AesMode::Gcm { .. } => Ok(n + 16),
        }
    }

    /// An upper bound of the plaintext of `n` ciphertext bytes.
    pub fn plaintext_bound(&self, n: usize) -> Result<usize, Rv> {
        match self {
            AesMode::Ecb | AesMode::Cbc { .. } | AesMode::CbcPad { .. }
                if !n.is_multiple_of(AES_BLOCK)
                    || (n == 0 && matches!(self, AesMode::CbcPad { .. })) =>
            {
                Err(CKR_ENCRYPTED_DATA_LEN_RANGE)
            }
            AesMode::Gcm { .. } if n < 16 => Err(CKR_ENCRYPTED_DATA_LEN_RANGE),
            AesMode::Gcm { .. } => Ok(n - 16),
            _ => Ok(n),
        }
    }
}

/// One multi-part step of a block mode (ECB, CBC, CBC-PAD): how many of the gathered bytes
/// it processes now, and how.
#[derive(Debug, Clone)]
pub struct BlockStep {
    /// Bytes processed now: whole blocks; decryption with padding holds its last block back.
    pub ready: usize,
    /// The mode the blocks go through now (CBC-PAD as plain CBC).
    mode: AesMode,
    /// The operation's own mode, to go on with.
    original: AesMode,
    encrypt: bool,
}

impl BlockStep {
    /// The step for `n` gathered bytes in `mode`; `None` for GCM (it does not stream).
    pub fn of(mode: &AesMode, n: usize, encrypt: bool) -> Option<BlockStep> {
        let whole = n - n % AES_BLOCK;
        let (ready, chained) = match mode {
            AesMode::Ecb => (whole, AesMode::Ecb),
            AesMode::Cbc { iv } => (whole, AesMode::Cbc { iv: *iv }),
            AesMode::CbcPad { iv } if encrypt => (whole, AesMode::Cbc { iv: *iv }),
            AesMode::CbcPad { iv } => (
                n.saturating_sub(1) / AES_BLOCK * AES_BLOCK,
                AesMode::Cbc { iv: *iv },
            ),
            AesMode::Gcm { .. } => return None,
        };
        Some(BlockStep {
            ready,
            mode: chained,
            original: mode.clone(),
            encrypt,
        })
    }

    /// Processes `all[..ready]` (without padding); returns the output and the mode to go
    /// on with: the operation's own (a CBC-PAD operation stays CBC-PAD for its final call),
    /// its IV the last ciphertext block, as the chain continues.
    pub fn run(&self, key: &[u8], all: &[u8]) -> Result<(Zeroizing<Vec<u8>>, AesMode), Rv> {
        let input = &all[..self.ready];
        let out = if self.encrypt {
            Zeroizing::new(aes_encrypt(key, &self.mode, input)?)
        } else {
            aes_decrypt(key, &self.mode, input)?
        };
        let cipher = if self.encrypt { &out[..] } else { input };
        let next = match (&self.mode, cipher.len()) {
            (AesMode::Cbc { iv }, 0) => *iv,
            (AesMode::Cbc { .. }, n) => block(&cipher[n - AES_BLOCK..]),
            _ => [0; AES_BLOCK],
        };
        let mode = match &self.original {
            AesMode::Cbc { .. } => AesMode::Cbc { iv: next },
            AesMode::CbcPad { .. } => AesMode::CbcPad { iv: next },
            other => other.clone(),
        };
        Ok((out, mode))
    }
}

/// An AES key schedule of any of the three sizes.
enum Aes {
    A128(aes::Aes128),
    A192(aes::Aes192),
    A256(aes::Aes256),
}

impl Aes {
    /// A key of 16, 24 or 32 bytes; any other length is `CKR_KEY_SIZE_RANGE`.
    fn new(key: &[u8]) -> Result<Aes, Rv> {
        let bad = |_| CKR_KEY_SIZE_RANGE;
        Ok(match key.len() {
            16 => Aes::A128(aes::Aes128::new_from_slice(key).map_err(bad)?),
            24 => Aes::A192(aes::Aes192::new_from_slice(key).map_err(bad)?),
            32 => Aes::A256(aes::Aes256::new_from_slice(key).map_err(bad)?),
            _ => return Err(CKR_KEY_SIZE_RANGE),
        })
    }

    fn encrypt(&self, b: &mut [u8; AES_BLOCK]) {
        let mut block = aes::Block::from(*b);
        match self {
            Aes::A128(k) => k.encrypt_block(&mut block),
            Aes::A192(k) => k.encrypt_block(&mut block),
            Aes::A256(k) => k.encrypt_block(&mut block),
        }
        b.copy_from_slice(block.as_slice());
    }

    fn decrypt(&self, b: &mut [u8; AES_BLOCK]) {
        let mut block = aes::Block::from(*b);
        match self {
            Aes::A128(k) => k.decrypt_block(&mut block),
            Aes::A192(k) => k.decrypt_block(&mut block),
            Aes::A256(k) => k.decrypt_block(&mut block),
        }
        b.copy_from_slice(block.as_slice());
    }
}

fn block(chunk: &[u8]) -> [u8; AES_BLOCK] {
    let mut b = [0u8; AES_BLOCK];
    b.copy_from_slice(chunk);
    b
}

fn xor(a: &mut [u8; AES_BLOCK], b: &[u8; AES_BLOCK]) {
    for (x, y) in a.iter_mut().zip(b) {
        *x ^= y;
    }
}

/// Whether `n` is a valid AES key length in bytes.
pub fn aes_key_len_ok(n: usize) -> bool {
    matches!(n, 16 | 24 | 32)
}

/// Encrypts `data` with `key` in `mode`.
pub fn aes_encrypt(key: &[u8], mode: &AesMode, data: &[u8]) -> Result<Vec<u8>, Rv> {
    let len = mode.ciphertext_len(data.len())?;
    if let AesMode::Gcm { iv, aad } = mode {
        return gcm(key, iv, aad, data, true).map(|z| z.to_vec());
    }
    let aes = Aes::new(key)?;
    let mut input = data.to_vec();
    if let AesMode::CbcPad { .. } = mode {
        let pad = len - data.len();
        input.resize(len, pad as u8);
    }
    let mut chain = match mode {
        AesMode::Cbc { iv } | AesMode::CbcPad { iv } => Some(*iv),
        _ => None,
    };
    let mut out = Vec::with_capacity(len);
    for chunk in input.chunks(AES_BLOCK) {
        let mut b = block(chunk);
        if let Some(prev) = &chain {
            xor(&mut b, prev);
        }
        aes.encrypt(&mut b);
        if chain.is_some() {
            chain = Some(b);
        }
        out.extend_from_slice(&b);
    }
    Ok(out)
}

/// Decrypts `data` with `key` in `mode`. Bad padding or a GCM tag that does not match:
/// `CKR_ENCRYPTED_DATA_INVALID`.
pub fn aes_decrypt(key: &[u8], mode: &AesMode, data: &[u8]) -> Result<Zeroizing<Vec<u8>>, Rv> {
    mode.plaintext_bound(data.len())?;
    if let AesMode::Gcm { iv, aad } = mode {
        return gcm(key, iv, aad, data, false);
    }
    let aes = Aes::new(key)?;
    let mut chain = match mode {
        AesMode::Cbc { iv } | AesMode::CbcPad { iv } => Some(*iv),
        _ => None,
    };
    let mut out = Zeroizing::new(Vec::with_capacity(data.len()));
    for chunk in data.chunks(AES_BLOCK) {
        let c = block(chunk);
        let mut b = c;
        aes.decrypt(&mut b);
        if let Some(prev) = &chain {
            xor(&mut b, prev);
            chain = Some(c);
        }
        out.extend_from_slice(&b);
    }
    if let AesMode::CbcPad { .. } = mode {
        let pad = usize::from(*out.last().ok_or(CKR_ENCRYPTED_DATA_INVALID)?);
        let body = out
            .len()
            .checked_sub(pad)
            .ok_or(CKR_ENCRYPTED_DATA_INVALID)?;
        if pad == 0 || pad > AES_BLOCK || out[body..].iter().any(|b| usize::from(*b) != pad) {
            return Err(CKR_ENCRYPTED_DATA_INVALID);
        }
        out.truncate(body);
    }
    Ok(out)
}

type Aes192Gcm = aes_gcm::AesGcm<aes::Aes192, U12>;

fn gcm_run<C: AeadInOut + KeyInit>(
    key: &[u8],
    iv: &[u8; 12],
    aad: &[u8],
    data: &[u8],
    encrypt: bool,
) -> Result<Zeroizing<Vec<u8>>, Rv> {
    let cipher = C::new_from_slice(key).map_err(|_| CKR_KEY_SIZE_RANGE)?;
    let nonce = aes_gcm::aead::Nonce::<C>::try_from(iv.as_slice())
        .map_err(|_| CKR_MECHANISM_PARAM_INVALID)?;
    if encrypt {
        let mut buf = Zeroizing::new(data.to_vec());
        let tag = cipher
            .encrypt_inout_detached(&nonce, aad, buf.as_mut_slice().into())
            .map_err(|_| CKR_DATA_LEN_RANGE)?;
        buf.extend_from_slice(tag.as_slice());
        Ok(buf)
    } else {
        let split = data
            .len()
            .checked_sub(16)
            .ok_or(CKR_ENCRYPTED_DATA_LEN_RANGE)?;
        let (body, tag) = data.split_at(split);
        let tag =
            aes_gcm::aead::Tag::<C>::try_from(tag).map_err(|_| CKR_ENCRYPTED_DATA_LEN_RANGE)?;
        let mut buf = Zeroizing::new(body.to_vec());
        cipher
            .decrypt_inout_detached(&nonce, aad, buf.as_mut_slice().into(), &tag)
            .map_err(|_| CKR_ENCRYPTED_DATA_INVALID)?;
        Ok(buf)
    }
}

fn gcm(
    key: &[u8],
    iv: &[u8; 12],
    aad: &[u8],
    data: &[u8],
    encrypt: bool,
) -> Result<Zeroizing<Vec<u8>>, Rv> {
    match key.len() {
        16 => gcm_run::<aes_gcm::Aes128Gcm>(key, iv, aad, data, encrypt),
        24 => gcm_run::<Aes192Gcm>(key, iv, aad, data, encrypt),
        32 => gcm_run::<aes_gcm::Aes256Gcm>(key, iv, aad, data, encrypt),
        _ => Err(CKR_KEY_SIZE_RANGE),
    }
}

/// The default IV of RFC 3394 (section 2.2.3.1).
const KW_IV: [u8; 8] = [0xA6; 8];
/// The first half of RFC 5649's alternative IV; the second half is the length.
const KWP_ICV: [u8; 4] = [0xA6, 0x59, 0x59, 0xA6];

/// RFC 3394's wrapping rounds over 64-bit blocks `r`, from the integrity value `a`.
fn kw_rounds(aes: &Aes, mut a: [u8; 8], r: &mut [[u8; 8]]) -> [u8; 8] {
    let n = r.len() as u64;
    for j in 0..6u64 {
        for (i, ri) in r.iter_mut().enumerate() {
            let mut b = [0u8; AES_BLOCK];
            b[..8].copy_from_slice(&a);
            b[8..].copy_from_slice(ri);
            aes.encrypt(&mut b);
            let t = n * j + i as u64 + 1;
            a.copy_from_slice(&b[..8]);
            for (x, y) in a.iter_mut().zip(t.to_be_bytes()) {
                *x ^= y;
            }
            ri.copy_from_slice(&b[8..]);
        }
    }
    a
}

/// The inverse rounds: returns the integrity value found.
fn kw_unrounds(aes: &Aes, mut a: [u8; 8], r: &mut [[u8; 8]]) -> [u8; 8] {
    let n = r.len() as u64;
    for j in (0..6u64).rev() {
        for (i, ri) in r.iter_mut().enumerate().rev() {
            let t = n * j + i as u64 + 1;
            for (x, y) in a.iter_mut().zip(t.to_be_bytes()) {
                *x ^= y;
            }
            let mut b = [0u8; AES_BLOCK];
            b[..8].copy_from_slice(&a);
            b[8..].copy_from_slice(ri);
            aes.decrypt(&mut b);
            a.copy_from_slice(&b[..8]);
            ri.copy_from_slice(&b[8..]);
        }
    }
    a
}

fn semiblocks(data: &[u8]) -> Zeroizing<Vec<[u8; 8]>> {
    Zeroizing::new(
        data.chunks(8)
            .map(|c| {
                let mut b = [0u8; 8];
                b[..c.len()].copy_from_slice(c);
                b
            })
            .collect(),
    )
}

fn join(a: &[u8; 8], r: &[[u8; 8]]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 * (r.len() + 1));
    out.extend_from_slice(a);
    for b in r {
        out.extend_from_slice(b);
    }
    out
}

/// `CKM_AES_KEY_WRAP` (RFC 3394): `data` a multiple of 8 bytes, at least 16, else
/// `CKR_KEY_SIZE_RANGE` (the key to wrap does not fit the mechanism).
pub fn aes_key_wrap(key: &[u8], data: &[u8]) -> Result<Vec<u8>, Rv> {
    if data.len() < 16 || !data.len().is_multiple_of(8) {
        return Err(CKR_KEY_SIZE_RANGE);
    }
    let aes = Aes::new(key)?;
    let mut r = semiblocks(data);
    let a = kw_rounds(&aes, KW_IV, &mut r);
    Ok(join(&a, &r))
}

/// Unwraps `CKM_AES_KEY_WRAP`; a wrong key or altered data: `CKR_WRAPPED_KEY_INVALID`.
pub fn aes_key_unwrap(key: &[u8], wrapped: &[u8]) -> Result<Zeroizing<Vec<u8>>, Rv> {
    if wrapped.len() < 24 || !wrapped.len().is_multiple_of(8) {
        return Err(CKR_WRAPPED_KEY_LEN_RANGE);
    }
    let aes = Aes::new(key)?;
    let mut r = semiblocks(&wrapped[8..]);
    let a = kw_unrounds(&aes, block8(&wrapped[..8]), &mut r);
    if a != KW_IV {
        return Err(CKR_WRAPPED_KEY_INVALID);
    }
    Ok(Zeroizing::new(r.iter().flatten().copied().collect()))
}

fn block8(b: &[u8]) -> [u8; 8] {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    a
}

/// `CKM_AES_KEY_WRAP_PAD` (RFC 5649): any length from 1 byte.
pub fn aes_key_wrap_pad(key: &[u8], data: &[u8]) -> Result<Vec<u8>, Rv> {
    let mli = u32::try_from(data.len()).map_err(|_| CKR_KEY_SIZE_RANGE)?;
    if data.is_empty() {
        return Err(CKR_KEY_SIZE_RANGE);
    }
    let aes = Aes::new(key)?;
    let mut a = [0u8; 8];
    a[..4].copy_from_slice(&KWP_ICV);
    a[4..].copy_from_slice(&mli.to_be_bytes());
    let mut r = semiblocks(data);
    if r.len() == 1 {
        let mut b = [0u8; AES_BLOCK];
        b[..8].copy_from_slice(&a);
        b[8..].copy_from_slice(&r[0]);
        aes.encrypt(&mut b);
        return Ok(b.to_vec());
    }
    let a = kw_rounds(&aes, a, &mut r);
    Ok(join(&a, &r))
}

/// Unwraps `CKM_AES_KEY_WRAP_PAD`; a wrong key or altered data: `CKR_WRAPPED_KEY_INVALID`.
pub fn aes_key_unwrap_pad(key: &[u8], wrapped: &[u8]) -> Result<Zeroizing<Vec<u8>>, Rv> {
    if wrapped.len() < 16 || !wrapped.len().is_multiple_of(8) {
        return Err(CKR_WRAPPED_KEY_LEN_RANGE);
    }
    let aes = Aes::new(key)?;
    let (a, r) = if wrapped.len() == 16 {
        let mut b = block(wrapped);
        aes.decrypt(&mut b);
        (block8(&b[..8]), semiblocks(&b[8..]))
    } else {
        let mut r = semiblocks(&wrapped[8..]);
        let a = kw_unrounds(&aes, block8(&wrapped[..8]), &mut r);
        (a, r)
    };
    let mli = u32::from_be_bytes([a[4], a[5], a[6], a[7]]) as usize;
    let padded = 8 * r.len();
    if a[..4] != KWP_ICV || mli > padded || mli + 8 <= padded || mli == 0 {
        return Err(CKR_WRAPPED_KEY_INVALID);
    }
    let flat: Zeroizing<Vec<u8>> = Zeroizing::new(r.iter().flatten().copied().collect());
    if flat[mli..].iter().any(|b| *b != 0) {
        return Err(CKR_WRAPPED_KEY_INVALID);
    }
    Ok(Zeroizing::new(flat[..mli].to_vec()))
}

/// A digest mechanism.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DigestAlg {
    /// `CKM_SHA_1`.
    Sha1,
    /// `CKM_SHA256`.
    Sha256,
    /// `CKM_SHA384`.
    Sha384,
    /// `CKM_SHA512`.
    Sha512,
}

impl DigestAlg {
    /// From a `CKM_…` digest mechanism: `CKR_MECHANISM_INVALID` for others.
    pub fn from_mechanism(m: CK_MECHANISM_TYPE) -> Result<Self, Rv> {
        Ok(match m {
            CKM_SHA_1 => DigestAlg::Sha1,
            CKM_SHA256 => DigestAlg::Sha256,
            CKM_SHA384 => DigestAlg::Sha384,
            CKM_SHA512 => DigestAlg::Sha512,
            _ => return Err(CKR_MECHANISM_INVALID),
        })
    }

    /// Output length in bytes.
    pub fn output_len(self) -> usize {
        match self {
            DigestAlg::Sha1 => 20,
            DigestAlg::Sha256 => 32,
            DigestAlg::Sha384 => 48,
            DigestAlg::Sha512 => 64,
        }
    }

    /// The digest of `data`.
    pub fn digest(self, data: &[u8]) -> Vec<u8> {
        match self {
            DigestAlg::Sha1 => sha1::Sha1::digest(data).to_vec(),
            DigestAlg::Sha256 => sha2::Sha256::digest(data).to_vec(),
            DigestAlg::Sha384 => sha2::Sha384::digest(data).to_vec(),
            DigestAlg::Sha512 => sha2::Sha512::digest(data).to_vec(),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn h(s: &str) -> Vec<u8> {
        hex::decode(s).unwrap()
    }

    #[test]
    fn key_wrap_matches_rfc3394_vector() {
        // RFC 3394, 4.1: 128 bits of key data with a 128-bit KEK.
        let kek = h("000102030405060708090A0B0C0D0E0F");
        let data = h("00112233445566778899AABBCCDDEEFF");
        let want = h("1FA68B0A8112B447AEF34BD8FB5A7B829D3E862371D2CFE5");
        assert_eq!(aes_key_wrap(&kek, &data).unwrap(), want);
        assert_eq!(aes_key_unwrap(&kek, &want).unwrap().as_slice(), data);
        let mut bad = want.clone();
        bad[5] ^= 1;
        assert_eq!(aes_key_unwrap(&kek, &bad), Err(CKR_WRAPPED_KEY_INVALID));
    }

    #[test]
    fn key_wrap_pad_matches_rfc5649_vectors() {
        // RFC 5649, section 6.
        let kek = h("5840df6e29b02af1ab493b705bf16ea1ae8338f4dcc176a8");
        let twenty = h("c37b7e6492584340bed12207808941155068f738");
        let want = h("138bdeaa9b8fa7fc61f97742e72248ee5ae6ae5360d1ae6a5f54f373fa543b6a");
        assert_eq!(aes_key_wrap_pad(&kek, &twenty).unwrap(), want);
        assert_eq!(aes_key_unwrap_pad(&kek, &want).unwrap().as_slice(), twenty);
        let seven = h("466f7250617369");
        let want = h("afbeb0f07dfbf5419200f2ccb50bb24f");
        assert_eq!(aes_key_wrap_pad(&kek, &seven).unwrap(), want);
        assert_eq!(aes_key_unwrap_pad(&kek, &want).unwrap().as_slice(), seven);
    }

    #[test]
    fn cbc_pad_round_trips_and_rejects_bad_padding() {
        let key = [7u8; 32];
        let mode = AesMode::CbcPad { iv: [9u8; 16] };
        for n in [0, 1, 15, 16, 17, 100] {
            let data = vec![0x5a; n];
            let c = aes_encrypt(&key, &mode, &data).unwrap();
            assert_eq!(c.len(), mode.ciphertext_len(n).unwrap());
            assert_eq!(aes_decrypt(&key, &mode, &c).unwrap().as_slice(), data);
        }
        let c = aes_encrypt(&key, &AesMode::Cbc { iv: [9u8; 16] }, &[0u8; 16]).unwrap();
        assert_eq!(
            aes_decrypt(&key, &mode, &c),
            Err(CKR_ENCRYPTED_DATA_INVALID)
        );
    }

    #[test]
    fn block_steps_stream_what_single_part_gives() {
        let key = [3u8; 16];
        let data: Vec<u8> = (0..77u8).collect();
        for mode in [
            AesMode::Ecb,
            AesMode::Cbc { iv: [5u8; 16] },
            AesMode::CbcPad { iv: [5u8; 16] },
        ] {
            let input = if mode == AesMode::Ecb || matches!(mode, AesMode::Cbc { .. }) {
                &data[..64]
            } else {
                &data[..]
            };
            let whole = aes_encrypt(&key, &mode, input).unwrap();
            for (encrypt, src, want) in [(true, input, &whole[..]), (false, &whole[..], input)] {
                let (mut m, mut pending, mut out) = (mode.clone(), Vec::new(), Vec::new());
                for part in src.chunks(7) {
                    pending.extend_from_slice(part);
                    let step = BlockStep::of(&m, pending.len(), encrypt).unwrap();
                    let (o, next) = step.run(&key, &pending).unwrap();
                    out.extend_from_slice(&o);
                    pending.drain(..step.ready);
                    m = next;
                }
                let last = if encrypt {
                    aes_encrypt(&key, &m, &pending).unwrap()
                } else {
                    aes_decrypt(&key, &m, &pending).unwrap().to_vec()
                };
                out.extend_from_slice(&last);
                assert_eq!(out, want, "{mode:?} encrypt={encrypt}");
            }
        }
    }

    #[test]
    fn gcm_detects_tampering() {
        let key = [1u8; 16];
        let mode = AesMode::Gcm {
            iv: [2u8; 12],
            aad: b"hdr".to_vec(),
        };
        let mut c = aes_encrypt(&key, &mode, b"bid document").unwrap();
        assert_eq!(c.len(), 12 + 16);
        assert_eq!(
            aes_decrypt(&key, &mode, &c).unwrap().as_slice(),
            b"bid document"
        );
        c[0] ^= 1;
        assert_eq!(
            aes_decrypt(&key, &mode, &c),
            Err(CKR_ENCRYPTED_DATA_INVALID)
        );
    }
}
