//! The GM/T algorithms an SKF device computes, over RustCrypto's `sm2`, `sm3` and `sm4`:
//! SM2 key generation, signatures over a caller's 32-byte hash, encryption (the byte order
//! C1‖C3‖C2 of GM/T 0003-2012), SM3 with the signer-ID preprocessing (Z, GM/T 0009) and SM4-ECB
//! for device authentication and enveloped keys.
//!
//! Keys cross this module as plain byte arrays: a private key is the 32-byte scalar `d`, a
//! public key the 64 bytes `x‖y`. No IO.

use sm2::elliptic_curve::sec1::ToSec1Point;
use sm2::pke::{DecryptingKey, EncryptingKey, Mode};
use sm3::{Digest, Sm3};
use sm4::cipher::{BlockCipherDecrypt, BlockCipherEncrypt, KeyInit};
use zeroize::Zeroizing;

use super::consts::*;

/// The default signer ID of GM/T 0009 (`ENTL` = 128 bits).
pub const DEFAULT_ID: &[u8] = b"1234567812345678";

/// Longest signer ID: `ENTL` is a 16-bit count of bits.
pub const MAX_ID_LEN: usize = 0xFFFF / 8;

/// The curve's `a`, `b`, `x_G`, `y_G` (GM/T 0003.5), in the order Z hashes them.
const CURVE: [&str; 4] = [
    "FFFFFFFEFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF00000000FFFFFFFFFFFFFFFC",
    "28E9FA9E9D9F5E344D5A9E4BCF6509A7F39789F515AB8F92DDBCBD414D940E93",
    "32C4AE2C1F1981195F9904466A39C9948FE30BBFF2660BE1715A4589334C74C7",
    "BC3736A2F4F6779C59BDCEE36B692153D0A9877CC62A474002DF32E52139F0A0",
];

/// Z = SM3(ENTL ‖ ID ‖ a ‖ b ‖ x_G ‖ y_G ‖ x_A ‖ y_A) of GM/T 0003.2 / 0009.
pub fn z(id: &[u8], public: &[u8; 64]) -> Result<[u8; 32], Sar> {
    if id.len() > MAX_ID_LEN {
        return Err(SAR_INDATALENERR);
    }
    let entl = u16::try_from(id.len() * 8).map_err(|_| SAR_INDATALENERR)?;
    let mut h = Sm3::new();
    h.update(entl.to_be_bytes());
    h.update(id);
    for c in CURVE {
        h.update(hex::decode(c).map_err(|_| SAR_FAIL)?);
    }
    h.update(public);
    Ok(h.finalize().into())
}

/// An SM3 computation, optionally preceded by Z (what `SKF_DigestInit` with a public key
/// sets up).
#[derive(Clone, Default)]
pub struct Sm3State(Sm3);

impl Sm3State {
    /// Plain SM3, or SM3 starting with `Z(id, public)` when a public key is given.
    pub fn new(with: Option<(&[u8], &[u8; 64])>) -> Result<Sm3State, Sar> {
        let mut h = Sm3::new();
        if let Some((id, public)) = with {
            h.update(z(id, public)?);
        }
        Ok(Sm3State(h))
    }

    /// Adds data.
    pub fn update(&mut self, data: &[u8]) {
        self.0.update(data);
    }

    /// The hash.
    pub fn finish(self) -> [u8; 32] {
        self.0.finalize().into()
    }
}

/// A fresh SM2 key pair: (d, x‖y).
pub fn generate() -> (Zeroizing<[u8; 32]>, [u8; 64]) {
    loop {
        let mut d = Zeroizing::new([0u8; 32]);
        crate::rack::crypto::random_bytes(&mut d[..]);
        if let Ok(public) = public_of(&d) {
            return (d, public);
        }
    }
}

/// The public key of `d`; `SAR_INDATAERR` when `d` is not a valid private key.
pub fn public_of(d: &[u8; 32]) -> Result<[u8; 64], Sar> {
    let sk = sm2::SecretKey::from_slice(d).map_err(|_| SAR_INDATAERR)?;
    let point = sk.public_key().to_sec1_point(false);
    let bytes = point.as_bytes();
    let mut out = [0u8; 64];
    out.copy_from_slice(bytes.get(1..65).ok_or(SAR_FAIL)?);
    Ok(out)
}

fn public_key(public: &[u8; 64]) -> Result<sm2::PublicKey, Sar> {
    let mut sec1 = [0u8; 65];
    sec1[0] = 4;
    sec1[1..].copy_from_slice(public);
    sm2::PublicKey::from_sec1_bytes(&sec1).map_err(|_| SAR_INVALIDPARAMERR)
}

/// Checks that `x‖y` is a point of the curve (`SAR_INVALIDPARAMERR` otherwise).
pub fn check_public(public: &[u8; 64]) -> Result<(), Sar> {
    public_key(public).map(|_| ())
}

/// Signs a 32-byte hash with `d`: (r, s).
pub fn sign(d: &[u8; 32], hash: &[u8]) -> Result<([u8; 32], [u8; 32]), Sar> {
    use signature::hazmat::RandomizedPrehashSigner;
    let key =
        sm2::dsa::SigningKey::from_slice(DEFAULT_ID_STR, d).map_err(|_| SAR_KEYINFOTYPEERR)?;
    let sig: sm2::dsa::Signature = key
        .sign_prehash_with_rng(&mut rand::rng(), hash)
        .map_err(|_| SAR_FAIL)?;
    Ok((sig.r_bytes().into(), sig.s_bytes().into()))
}

/// The default ID as `sm2`'s key constructors take it (for prehash signing it plays no part).
const DEFAULT_ID_STR: &str = "1234567812345678";

/// Verifies (r, s) over a 32-byte hash; `SAR_FAIL` when the signature does not verify.
pub fn verify(public: &[u8; 64], hash: &[u8], r: &[u8; 32], s: &[u8; 32]) -> Result<(), Sar> {
    use signature::hazmat::PrehashVerifier;
    let key = sm2::dsa::VerifyingKey::new(DEFAULT_ID_STR, public_key(public)?)
        .map_err(|_| SAR_INVALIDPARAMERR)?;
    let sig = sm2::dsa::Signature::from_scalars(*r, *s).map_err(|_| SAR_FAIL)?;
    key.verify_prehash(hash, &sig).map_err(|_| SAR_FAIL)
}

/// An SM2 ciphertext in parts: C1 = (x, y), C3 = the SM3 hash, C2 = the masked message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cipher {
    /// C1's x.
    pub x: [u8; 32],
    /// C1's y.
    pub y: [u8; 32],
    /// C3.
    pub hash: [u8; 32],
    /// C2 (as long as the message).
    pub c2: Vec<u8>,
}

/// Encrypts `msg` to `public`.
pub fn encrypt(public: &[u8; 64], msg: &[u8]) -> Result<Cipher, Sar> {
    let key = EncryptingKey::new_with_mode(public_key(public)?, Mode::C1C3C2);
    let out = key.encrypt(&mut rand::rng(), msg).map_err(|_| SAR_FAIL)?;
    // 04 ‖ x ‖ y ‖ C3 ‖ C2
    if out.len() != 1 + 96 + msg.len() {
        return Err(SAR_FAIL);
    }
    let mut c = Cipher {
        x: [0; 32],
        y: [0; 32],
        hash: [0; 32],
        c2: out[97..].to_vec(),
    };
    c.x.copy_from_slice(&out[1..33]);
    c.y.copy_from_slice(&out[33..65]);
    c.hash.copy_from_slice(&out[65..97]);
    Ok(c)
}

/// Decrypts with `d`; `SAR_INDATAERR` when the ciphertext is not for this key or damaged.
pub fn decrypt(d: &[u8; 32], c: &Cipher) -> Result<Zeroizing<Vec<u8>>, Sar> {
    let key = DecryptingKey::from_slice(d).map_err(|_| SAR_KEYINFOTYPEERR)?;
    let key = DecryptingKey::new_with_mode(*key.as_nonzero_scalar(), Mode::C1C3C2);
    let mut bytes = Vec::with_capacity(97 + c.c2.len());
    bytes.push(4);
    bytes.extend_from_slice(&c.x);
    bytes.extend_from_slice(&c.y);
    bytes.extend_from_slice(&c.hash);
    bytes.extend_from_slice(&c.c2);
    key.decrypt(&bytes)
        .map(Zeroizing::new)
        .map_err(|_| SAR_INDATAERR)
}

/// SM4-ECB over whole blocks (no padding): `SAR_INDATALENERR` for a partial block.
pub fn sm4_ecb(key: &[u8; 16], data: &[u8], encrypt: bool) -> Result<Zeroizing<Vec<u8>>, Sar> {
    if !data.len().is_multiple_of(16) {
        return Err(SAR_INDATALENERR);
    }
    let cipher = sm4::Sm4::new_from_slice(key).map_err(|_| SAR_KEYINFOTYPEERR)?;
    let mut out = Zeroizing::new(data.to_vec());
    for chunk in out.chunks_exact_mut(16) {
        let mut block = sm4::cipher::Block::<sm4::Sm4>::try_from(&*chunk).map_err(|_| SAR_FAIL)?;
        if encrypt {
            cipher.encrypt_block(&mut block);
        } else {
            cipher.decrypt_block(&mut block);
        }
        chunk.copy_from_slice(&block);
    }
    Ok(out)
}

/// SM4-CBC over whole blocks (no padding): `SAR_INDATALENERR` for a partial block.
pub fn sm4_cbc(
    key: &[u8; 16],
    iv: &[u8; 16],
    data: &[u8],
    encrypt: bool,
) -> Result<Zeroizing<Vec<u8>>, Sar> {
    if !data.len().is_multiple_of(16) {
        return Err(SAR_INDATALENERR);
    }
    let mut chain = *iv;
    let mut out = Zeroizing::new(Vec::with_capacity(data.len()));
    for block in data.chunks_exact(16) {
        if encrypt {
            let mut x = [0u8; 16];
            for (o, (a, b)) in x.iter_mut().zip(block.iter().zip(chain.iter())) {
                *o = a ^ b;
            }
            let c = sm4_ecb(key, &x, true)?;
            chain.copy_from_slice(&c);
            out.extend_from_slice(&c);
        } else {
            let p = sm4_ecb(key, block, false)?;
            out.extend(p.iter().zip(chain.iter()).map(|(a, b)| a ^ b));
            chain.copy_from_slice(block);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn sign_verify_encrypt_decrypt_round_trip() {
        let (d, public) = generate();
        let hash = Sm3State::new(Some((DEFAULT_ID, &public))).unwrap().finish();
        let (r, s) = sign(&d, &hash).unwrap();
        verify(&public, &hash, &r, &s).unwrap();
        let mut other = hash;
        other[0] ^= 1;
        assert_eq!(verify(&public, &other, &r, &s), Err(SAR_FAIL));
        let c = encrypt(&public, b"bid key").unwrap();
        assert_eq!(&decrypt(&d, &c).unwrap()[..], b"bid key");
        let (d2, _) = generate();
        assert_eq!(decrypt(&d2, &c), Err(SAR_INDATAERR));
    }

    #[test]
    fn sm3_and_sm4_known_answers() {
        // GM/T 0004 example 1: SM3("abc").
        let mut h = Sm3State::new(None).unwrap();
        h.update(b"abc");
        assert_eq!(
            hex::encode(h.finish()),
            "66c7f0f462eeedd9d1f2d46bdc10e4e24167c4875cf2f7a2297da02b8f4ba8e0"
        );
        // GM/T 0002 example 1: key = plaintext = 0123456789abcdeffedcba9876543210.
        let k: [u8; 16] = hex::decode("0123456789abcdeffedcba9876543210")
            .unwrap()
            .try_into()
            .unwrap();
        let c = sm4_ecb(&k, &k, true).unwrap();
        assert_eq!(hex::encode(&c[..]), "681edf34d206965e86b3e94f536e4246");
        assert_eq!(&sm4_ecb(&k, &c, false).unwrap()[..], &k[..]);
        assert_eq!(sm4_ecb(&k, &[0; 5], true), Err(SAR_INDATALENERR));
        // CBC: the first block is ECB of plaintext XOR IV; decryption inverts it.
        let iv = [7u8; 16];
        let data = [0x42u8; 32];
        let c = sm4_cbc(&k, &iv, &data, true).unwrap();
        let mut x = [0u8; 16];
        for i in 0..16 {
            x[i] = data[i] ^ iv[i];
        }
        assert_eq!(&c[..16], &sm4_ecb(&k, &x, true).unwrap()[..]);
        assert_eq!(&sm4_cbc(&k, &iv, &c, false).unwrap()[..], &data[..]);
    }
}
