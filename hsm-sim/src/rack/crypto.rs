//! The token's cryptography, done by the RustCrypto crates: key generation, signing,
//! decryption and ECDH for P-256 and RSA, on [`KeyMaterial`].
//!
//! Mechanisms arrive here already parsed ([`SignMechanism`], [`DecryptMechanism`]); errors are
//! the `CKR_` codes an application should see. No IO, no sessions, no latency.

use cryptoki_sys::*;
use p256::ecdsa::signature::hazmat::PrehashSigner;
use rsa::traits::{PrivateKeyParts, PublicKeyParts};
use rsa::{BoxedUint, Oaep, Pkcs1v15Encrypt, Pkcs1v15Sign, Pss};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use super::Rv;
use super::object::KeyMaterial;
use super::symmetric::{self, AesMode};

/// DER of the prime256v1 (P-256) object identifier, as `CKA_EC_PARAMS` holds it.
pub const P256_PARAMS: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];

/// The DigestInfo prefix of SHA-256 (RFC 8017, section 9.2, note 1).
const SHA256_DIGEST_INFO: &[u8] = &[
    0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01, 0x05,
    0x00, 0x04, 0x20,
];

/// A hash function named by a mechanism parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HashAlg {
    /// SHA-1 (OAEP only).
    Sha1,
    /// SHA-256.
    Sha256,
}

impl HashAlg {
    /// Output length in bytes.
    pub fn output_len(self) -> usize {
        match self {
            HashAlg::Sha1 => 20,
            HashAlg::Sha256 => 32,
        }
    }

    /// From `CKM_SHA_1` / `CKM_SHA256`.
    pub fn from_mechanism(m: CK_MECHANISM_TYPE) -> Result<Self, Rv> {
        match m {
            CKM_SHA_1 => Ok(HashAlg::Sha1),
            CKM_SHA256 => Ok(HashAlg::Sha256),
            _ => Err(CKR_MECHANISM_PARAM_INVALID),
        }
    }

    /// From `CKG_MGF1_SHA1` / `CKG_MGF1_SHA256`.
    pub fn from_mgf(m: CK_RSA_PKCS_MGF_TYPE) -> Result<Self, Rv> {
        match m {
            CKG_MGF1_SHA1 => Ok(HashAlg::Sha1),
            CKG_MGF1_SHA256 => Ok(HashAlg::Sha256),
            _ => Err(CKR_MECHANISM_PARAM_INVALID),
        }
    }
}

/// A signing mechanism with its parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignMechanism {
    /// `CKM_ECDSA`: the caller's hash in, raw `r||s` out.
    Ecdsa,
    /// `CKM_ECDSA_SHA256`: data hashed on the token, raw `r||s` out.
    EcdsaSha256,
    /// `CKM_RSA_PKCS`: the caller's DigestInfo, PKCS#1 v1.5 padded.
    RsaPkcs,
    /// `CKM_SHA256_RSA_PKCS`.
    Sha256RsaPkcs,
    /// `CKM_RSA_PKCS_PSS` (the caller's hash) or `CKM_SHA256_RSA_PKCS_PSS` (`hash_data`).
    RsaPss {
        /// The hash of the parameters.
        hash: HashAlg,
        /// Salt length.
        salt: usize,
        /// Whether the token hashes the data first.
        hash_data: bool,
    },
}

impl SignMechanism {
    /// The mechanism type this came from.
    pub fn mechanism_type(&self) -> CK_MECHANISM_TYPE {
        match self {
            SignMechanism::Ecdsa => CKM_ECDSA,
            SignMechanism::EcdsaSha256 => CKM_ECDSA_SHA256,
            SignMechanism::RsaPkcs => CKM_RSA_PKCS,
            SignMechanism::Sha256RsaPkcs => CKM_SHA256_RSA_PKCS,
            SignMechanism::RsaPss {
                hash_data: false, ..
            } => CKM_RSA_PKCS_PSS,
            SignMechanism::RsaPss {
                hash_data: true, ..
            } => CKM_SHA256_RSA_PKCS_PSS,
        }
    }

    /// The key type the mechanism needs.
    pub fn key_type(&self) -> CK_KEY_TYPE {
        match self {
            SignMechanism::Ecdsa | SignMechanism::EcdsaSha256 => CKK_EC,
            _ => CKK_RSA,
        }
    }
}

/// An encryption or decryption mechanism with its parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CipherMechanism {
    /// `CKM_RSA_PKCS`.
    RsaPkcs,
    /// `CKM_RSA_PKCS_OAEP`.
    RsaOaep {
        /// Hash of the label.
        hash: HashAlg,
        /// Hash of MGF1.
        mgf: HashAlg,
        /// The label (`pSourceData`), possibly empty.
        label: Vec<u8>,
    },
    /// AES in one of its modes (`CKM_AES_ECB`, `…_CBC`, `…_CBC_PAD`, `…_GCM`).
    Aes(AesMode),
}

impl CipherMechanism {
    /// The key type the mechanism needs.
    pub fn key_type(&self) -> CK_KEY_TYPE {
        match self {
            CipherMechanism::Aes(_) => CKK_AES,
            _ => CKK_RSA,
        }
    }

    /// The mechanism type this came from.
    pub fn mechanism_type(&self) -> CK_MECHANISM_TYPE {
        match self {
            CipherMechanism::RsaPkcs => CKM_RSA_PKCS,
            CipherMechanism::RsaOaep { .. } => CKM_RSA_PKCS_OAEP,
            CipherMechanism::Aes(m) => m.mechanism_type(),
        }
    }
}

fn random_rng() -> rand::rngs::ThreadRng {
    rand::rng()
}

/// Generates a P-256 key pair: the private scalar and the uncompressed public point (65 bytes).
pub fn generate_p256() -> (KeyMaterial, Vec<u8>) {
    let sk = <p256::ecdsa::SigningKey as rsa::Generate>::generate_from_rng(&mut random_rng());
    let point = sk.verifying_key().to_sec1_point(false).as_bytes().to_vec();
    let scalar = Zeroizing::new(sk.to_bytes().to_vec());
    (KeyMaterial::EcP256(scalar), point)
}

/// Generates an RSA key pair of `bits` with exponent 65537: key material, modulus, exponent.
pub fn generate_rsa(bits: usize) -> Result<(KeyMaterial, Vec<u8>, Vec<u8>), Rv> {
    let key = rsa::PrivateKey::new(&mut random_rng(), bits).map_err(|_| CKR_FUNCTION_FAILED)?;
    let primes = key.primes();
    if primes.len() != 2 {
        return Err(CKR_FUNCTION_FAILED);
    }
    let material = KeyMaterial::Rsa {
        p: Zeroizing::new(primes[0].as_ref().to_be_bytes_trimmed_vartime().to_vec()),
        q: Zeroizing::new(primes[1].as_ref().to_be_bytes_trimmed_vartime().to_vec()),
        e: key.e_bytes().to_vec(),
    };
    Ok((material, key.n_bytes().to_vec(), key.e_bytes().to_vec()))
}

/// Wraps an uncompressed point as the DER OCTET STRING `CKA_EC_POINT` holds (`04 41 04 …`).
pub fn ec_point_der(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len() + 2);
    out.push(0x04);
    out.push(raw.len() as u8);
    out.extend_from_slice(raw);
    out
}

/// Accepts a peer's public point as raw SEC1 bytes or wrapped in a DER OCTET STRING.
///
/// Told apart by length: a wrapped P-256 point holds exactly a compressed (33 bytes,
/// `02`/`03`) or uncompressed (65 bytes, `04`) point. A raw uncompressed point whose x
/// coordinate happens to start with `3f` also begins `04 3f` and must stay raw.
pub fn unwrap_ec_point(bytes: &[u8]) -> &[u8] {
    match bytes {
        [0x04, len, rest @ ..]
            if usize::from(*len) == rest.len()
                && matches!(
                    (rest.len(), rest.first()),
                    (33, Some(0x02 | 0x03)) | (65, Some(0x04))
                ) =>
        {
            rest
        }
        _ => bytes,
    }
}

fn uint(bytes: &[u8]) -> BoxedUint {
    BoxedUint::from_be_slice_vartime(bytes)
}

fn rsa_key(m: &KeyMaterial) -> Result<rsa::PrivateKey, Rv> {
    match m {
        KeyMaterial::Rsa { p, q, e } => {
            rsa::PrivateKey::from_p_q(uint(p), uint(q), uint(e)).map_err(|_| CKR_DEVICE_ERROR)
        }
        _ => Err(CKR_KEY_TYPE_INCONSISTENT),
    }
}

fn ec_key(m: &KeyMaterial) -> Result<p256::ecdsa::SigningKey, Rv> {
    match m {
        KeyMaterial::EcP256(s) => {
            p256::ecdsa::SigningKey::from_slice(s.as_slice()).map_err(|_| CKR_DEVICE_ERROR)
        }
        _ => Err(CKR_KEY_TYPE_INCONSISTENT),
    }
}

/// The public parts of an RSA key pair stored as material: modulus and exponent.
pub fn rsa_public(m: &KeyMaterial) -> Result<(Vec<u8>, Vec<u8>), Rv> {
    let k = rsa_key(m)?;
    Ok((k.n_bytes().to_vec(), k.e_bytes().to_vec()))
}

/// The uncompressed public point of a P-256 key stored as material.
pub fn ec_public(m: &KeyMaterial) -> Result<Vec<u8>, Rv> {
    let k = ec_key(m)?;
    Ok(k.verifying_key().to_sec1_point(false).as_bytes().to_vec())
}

/// Length of the signature `mech` makes with this key.
pub fn signature_len(m: &KeyMaterial, mech: &SignMechanism) -> Result<usize, Rv> {
    match (m, mech.key_type()) {
        (KeyMaterial::EcP256(_), CKK_EC) => Ok(64),
        (KeyMaterial::Rsa { .. }, CKK_RSA) => Ok(rsa_key(m)?.size()),
        _ => Err(CKR_KEY_TYPE_INCONSISTENT),
    }
}

/// Length in bytes of an RSA key's modulus (the output bound of a decryption).
pub fn rsa_modulus_len(m: &KeyMaterial) -> Result<usize, Rv> {
    Ok(rsa_key(m)?.size())
}

/// Signs `data` with `mech`.
pub fn sign(m: &KeyMaterial, mech: &SignMechanism, data: &[u8]) -> Result<Vec<u8>, Rv> {
    match mech {
        SignMechanism::Ecdsa | SignMechanism::EcdsaSha256 => {
            let key = ec_key(m)?;
            let hash: Vec<u8> = if *mech == SignMechanism::EcdsaSha256 {
                Sha256::digest(data).to_vec()
            } else {
                data.to_vec()
            };
            if hash.len() < 16 {
                return Err(CKR_DATA_LEN_RANGE);
            }
            let sig: p256::ecdsa::Signature =
                key.sign_prehash(&hash).map_err(|_| CKR_DATA_LEN_RANGE)?;
            Ok(sig.to_bytes().to_vec())
        }
        SignMechanism::RsaPkcs | SignMechanism::Sha256RsaPkcs => {
            let key = rsa_key(m)?;
            let input = if *mech == SignMechanism::Sha256RsaPkcs {
                let mut v = SHA256_DIGEST_INFO.to_vec();
                v.extend_from_slice(&Sha256::digest(data));
                v
            } else {
                data.to_vec()
            };
            if input.len() + 11 > key.size() {
                return Err(CKR_DATA_LEN_RANGE);
            }
            key.sign(Pkcs1v15Sign::new_unprefixed(), &input)
                .map_err(|_| CKR_FUNCTION_FAILED)
        }
        SignMechanism::RsaPss {
            hash,
            salt,
            hash_data,
        } => {
            let key = rsa_key(m)?;
            if *hash != HashAlg::Sha256 {
                return Err(CKR_MECHANISM_PARAM_INVALID);
            }
            let digest = if *hash_data {
                Sha256::digest(data).to_vec()
            } else {
                data.to_vec()
            };
            if digest.len() != hash.output_len() {
                return Err(CKR_DATA_LEN_RANGE);
            }
            key.sign(Pss::<Sha256>::new_with_salt(*salt), &digest)
                .map_err(|_| CKR_FUNCTION_FAILED)
        }
    }
}

/// An upper bound of the plaintext `mech` gives for `n` bytes of ciphertext.
pub fn plaintext_bound(m: &KeyMaterial, mech: &CipherMechanism, n: usize) -> Result<usize, Rv> {
    match (mech, m) {
        (CipherMechanism::Aes(mode), KeyMaterial::Secret(_)) => mode.plaintext_bound(n),
        (CipherMechanism::Aes(_), _) => Err(CKR_KEY_TYPE_INCONSISTENT),
        _ => rsa_modulus_len(m),
    }
}

/// Decrypts `data` with `mech`.
///
/// PKCS#1 v1.5 decryption uses implicit rejection (the rsa crate returns synthetic plaintext
/// for bad padding, against Bleichenbacher-style attacks) rather than an error.
pub fn decrypt(
    m: &KeyMaterial,
    mech: &CipherMechanism,
    data: &[u8],
) -> Result<Zeroizing<Vec<u8>>, Rv> {
    if let CipherMechanism::Aes(mode) = mech {
        return match m {
            KeyMaterial::Secret(k) => symmetric::aes_decrypt(k, mode, data),
            _ => Err(CKR_KEY_TYPE_INCONSISTENT),
        };
    }
    let key = rsa_key(m)?;
    if data.len() != key.size() {
        return Err(CKR_ENCRYPTED_DATA_LEN_RANGE);
    }
    let out = match mech {
        CipherMechanism::RsaPkcs => key.decrypt(Pkcs1v15Encrypt, data),
        CipherMechanism::RsaOaep { hash, mgf, label } => {
            let label = label.clone().into_boxed_slice();
            match (hash, mgf) {
                (HashAlg::Sha256, HashAlg::Sha256) => key.decrypt(
                    Oaep::<Sha256, Sha256>::new_with_mgf_hash_and_label(label),
                    data,
                ),
                (HashAlg::Sha1, HashAlg::Sha1) => key.decrypt(
                    Oaep::<sha1::Sha1, sha1::Sha1>::new_with_mgf_hash_and_label(label),
                    data,
                ),
                (HashAlg::Sha256, HashAlg::Sha1) => key.decrypt(
                    Oaep::<Sha256, sha1::Sha1>::new_with_mgf_hash_and_label(label),
                    data,
                ),
                (HashAlg::Sha1, HashAlg::Sha256) => key.decrypt(
                    Oaep::<sha1::Sha1, Sha256>::new_with_mgf_hash_and_label(label),
                    data,
                ),
            }
        }
        CipherMechanism::Aes(_) => return Err(CKR_MECHANISM_INVALID),
    };
    out.map(Zeroizing::new)
        .map_err(|_| CKR_ENCRYPTED_DATA_INVALID)
}

/// The key an encryption uses: an RSA public key (modulus, exponent) or a secret value.
#[derive(Debug, Clone, Copy)]
pub enum EncryptKey<'a> {
    /// An RSA public key.
    RsaPublic {
        /// Modulus, big-endian.
        n: &'a [u8],
        /// Public exponent, big-endian.
        e: &'a [u8],
    },
    /// A secret key's value.
    Secret(&'a [u8]),
}

fn rsa_public_key(n: &[u8], e: &[u8]) -> Result<rsa::PublicKey, Rv> {
    rsa::PublicKey::new(uint(n), uint(e)).map_err(|_| CKR_KEY_SIZE_RANGE)
}

/// Length of the ciphertext `mech` makes of `n` bytes.
pub fn ciphertext_len(key: EncryptKey<'_>, mech: &CipherMechanism, n: usize) -> Result<usize, Rv> {
    match (key, mech) {
        (EncryptKey::Secret(_), CipherMechanism::Aes(mode)) => mode.ciphertext_len(n),
        (EncryptKey::RsaPublic { n: modulus, e }, CipherMechanism::RsaPkcs)
        | (EncryptKey::RsaPublic { n: modulus, e }, CipherMechanism::RsaOaep { .. }) => {
            Ok(rsa_public_key(modulus, e)?.size())
        }
        _ => Err(CKR_KEY_TYPE_INCONSISTENT),
    }
}

/// Encrypts `data` with `mech`. Too much data for an RSA key: `CKR_DATA_LEN_RANGE`.
pub fn encrypt(key: EncryptKey<'_>, mech: &CipherMechanism, data: &[u8]) -> Result<Vec<u8>, Rv> {
    let (n, e) = match (key, mech) {
        (EncryptKey::Secret(k), CipherMechanism::Aes(mode)) => {
            return symmetric::aes_encrypt(k, mode, data);
        }
        (EncryptKey::RsaPublic { n, e }, CipherMechanism::RsaPkcs)
        | (EncryptKey::RsaPublic { n, e }, CipherMechanism::RsaOaep { .. }) => (n, e),
        _ => return Err(CKR_KEY_TYPE_INCONSISTENT),
    };
    let pk = rsa_public_key(n, e)?;
    let mut rng = random_rng();
    let out = match mech {
        CipherMechanism::RsaOaep { hash, mgf, label } => {
            let label = label.clone().into_boxed_slice();
            match (hash, mgf) {
                (HashAlg::Sha256, HashAlg::Sha256) => pk.encrypt(
                    &mut rng,
                    Oaep::<Sha256, Sha256>::new_with_mgf_hash_and_label(label),
                    data,
                ),
                (HashAlg::Sha1, HashAlg::Sha1) => pk.encrypt(
                    &mut rng,
                    Oaep::<sha1::Sha1, sha1::Sha1>::new_with_mgf_hash_and_label(label),
                    data,
                ),
                (HashAlg::Sha256, HashAlg::Sha1) => pk.encrypt(
                    &mut rng,
                    Oaep::<Sha256, sha1::Sha1>::new_with_mgf_hash_and_label(label),
                    data,
                ),
                (HashAlg::Sha1, HashAlg::Sha256) => pk.encrypt(
                    &mut rng,
                    Oaep::<sha1::Sha1, Sha256>::new_with_mgf_hash_and_label(label),
                    data,
                ),
            }
        }
        _ => pk.encrypt(&mut rng, Pkcs1v15Encrypt, data),
    };
    out.map_err(|_| CKR_DATA_LEN_RANGE)
}

/// ECDH on P-256 with `CKD_NULL`: the x coordinate of the shared point.
pub fn ecdh(m: &KeyMaterial, peer: &[u8]) -> Result<Zeroizing<Vec<u8>>, Rv> {
    let key = ec_key(m)?;
    let peer = p256::PublicKey::from_sec1_bytes(unwrap_ec_point(peer))
        .map_err(|_| CKR_MECHANISM_PARAM_INVALID)?;
    let shared = p256::ecdh::diffie_hellman(key.as_nonzero_scalar(), peer.as_affine());
    Ok(Zeroizing::new(shared.raw_secret_bytes().to_vec()))
}

/// Imports a P-256 private key from `CKA_VALUE`.
pub fn import_p256(value: &[u8]) -> Result<(KeyMaterial, Vec<u8>), Rv> {
    let sk = p256::ecdsa::SigningKey::from_slice(value).map_err(|_| CKR_ATTRIBUTE_VALUE_INVALID)?;
    let point = sk.verifying_key().to_sec1_point(false).as_bytes().to_vec();
    Ok((KeyMaterial::EcP256(Zeroizing::new(value.to_vec())), point))
}

/// Imports an RSA private key from its primes and public exponent; returns the modulus too.
pub fn import_rsa(p: &[u8], q: &[u8], e: &[u8]) -> Result<(KeyMaterial, Vec<u8>), Rv> {
    let m = KeyMaterial::Rsa {
        p: Zeroizing::new(p.to_vec()),
        q: Zeroizing::new(q.to_vec()),
        e: e.to_vec(),
    };
    let k = rsa_key(&m).map_err(|_| CKR_ATTRIBUTE_VALUE_INVALID)?;
    Ok((m, k.n_bytes().to_vec()))
}

/// A private key as PKCS#8 `PrivateKeyInfo` DER (what `C_WrapKey` wraps).
pub fn private_key_to_pkcs8(m: &KeyMaterial) -> Result<Zeroizing<Vec<u8>>, Rv> {
    use rsa::pkcs8::EncodePrivateKey;
    let doc = match m {
        KeyMaterial::Rsa { .. } => rsa_key(m)?.to_pkcs8_der(),
        KeyMaterial::EcP256(_) => {
            p256::SecretKey::from(ec_key(m)?.as_nonzero_scalar()).to_pkcs8_der()
        }
        KeyMaterial::Secret(_) => return Err(CKR_KEY_NOT_WRAPPABLE),
    }
    .map_err(|_| CKR_FUNCTION_FAILED)?;
    Ok(Zeroizing::new(doc.as_bytes().to_vec()))
}

/// Attributes with their values.
pub type AttrList = Vec<(CK_ATTRIBUTE_TYPE, Vec<u8>)>;

/// A private key read from PKCS#8 DER (what `C_UnwrapKey` unwraps): its key type, its
/// material and its public attributes (modulus and exponent, or the P-256 parameters).
/// Anything else: `CKR_WRAPPED_KEY_INVALID`.
pub fn private_key_from_pkcs8(der: &[u8]) -> Result<(CK_KEY_TYPE, KeyMaterial, AttrList), Rv> {
    use rsa::pkcs8::DecodePrivateKey;
    if let Ok(k) = rsa::PrivateKey::from_pkcs8_der(der) {
        let primes = k.primes();
        if primes.len() != 2 {
            return Err(CKR_WRAPPED_KEY_INVALID);
        }
        let m = KeyMaterial::Rsa {
            p: Zeroizing::new(primes[0].as_ref().to_be_bytes_trimmed_vartime().to_vec()),
            q: Zeroizing::new(primes[1].as_ref().to_be_bytes_trimmed_vartime().to_vec()),
            e: k.e_bytes().to_vec(),
        };
        let public = vec![
            (CKA_MODULUS, k.n_bytes().to_vec()),
            (CKA_PUBLIC_EXPONENT, k.e_bytes().to_vec()),
        ];
        return Ok((CKK_RSA, m, public));
    }
    let k = p256::SecretKey::from_pkcs8_der(der).map_err(|_| CKR_WRAPPED_KEY_INVALID)?;
    let m = KeyMaterial::EcP256(Zeroizing::new(k.to_bytes().to_vec()));
    Ok((CKK_EC, m, vec![(CKA_EC_PARAMS, P256_PARAMS.to_vec())]))
}

/// A secret attribute computed from key material (only called for keys that may reveal it).
pub fn secret_attribute(m: &KeyMaterial, t: CK_ATTRIBUTE_TYPE) -> Option<Vec<u8>> {
    match (m, t) {
        (KeyMaterial::EcP256(s), CKA_VALUE) | (KeyMaterial::Secret(s), CKA_VALUE) => {
            Some(s.to_vec())
        }
        (KeyMaterial::Rsa { p, q, .. }, _) => {
            let k = rsa_key(m).ok()?;
            match t {
                CKA_PRIVATE_EXPONENT => Some(k.d().to_be_bytes_trimmed_vartime().to_vec()),
                CKA_PRIME_1 => Some(p.to_vec()),
                CKA_PRIME_2 => Some(q.to_vec()),
                CKA_EXPONENT_1 => k.dp().map(|v| v.to_be_bytes_trimmed_vartime().to_vec()),
                CKA_EXPONENT_2 => k.dq().map(|v| v.to_be_bytes_trimmed_vartime().to_vec()),
                CKA_COEFFICIENT => k
                    .crt_coefficient()
                    .map(|v| v.to_be_bytes_trimmed_vartime().to_vec()),
                _ => None,
            }
        }
        _ => None,
    }
}

/// Fills `buf` from the operating system's CSPRNG (through rand's thread generator).
pub fn random_bytes(buf: &mut [u8]) {
    use rand::Rng;
    random_rng().fill_bytes(buf);
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use p256::ecdsa::signature::hazmat::PrehashVerifier;

    #[test]
    fn ecdsa_raw_signature_verifies() {
        let (m, point) = generate_p256();
        assert_eq!(point.len(), 65);
        assert_eq!(&ec_point_der(&point)[..3], &[0x04, 0x41, 0x04]);
        let hash = Sha256::digest(b"challenge");
        let sig = sign(&m, &SignMechanism::Ecdsa, &hash).unwrap();
        assert_eq!(sig.len(), 64);
        let vk = p256::ecdsa::VerifyingKey::from_sec1_bytes(&point).unwrap();
        let sig = p256::ecdsa::Signature::from_slice(&sig).unwrap();
        vk.verify_prehash(&hash, &sig).unwrap();
        let sig2 = sign(&m, &SignMechanism::EcdsaSha256, b"challenge").unwrap();
        let sig2 = p256::ecdsa::Signature::from_slice(&sig2).unwrap();
        vk.verify_prehash(&hash, &sig2).unwrap();
    }

    #[test]
    fn rsa_sign_and_decrypt_round_trip() {
        let (m, n, e) = generate_rsa(1024).unwrap();
        let public = rsa::PublicKey::new(uint(&n), uint(&e)).unwrap();
        let sig = sign(&m, &SignMechanism::Sha256RsaPkcs, b"data").unwrap();
        public.pkcs1v15_verify::<Sha256>(b"data", &sig).unwrap();
        let pss = SignMechanism::RsaPss {
            hash: HashAlg::Sha256,
            salt: 32,
            hash_data: true,
        };
        let sig = sign(&m, &pss, b"data").unwrap();
        public.pss_verify::<Sha256>(b"data", &sig).unwrap();
        let ct = public.oaep_encrypt::<Sha256>(b"secret").unwrap();
        let oaep = CipherMechanism::RsaOaep {
            hash: HashAlg::Sha256,
            mgf: HashAlg::Sha256,
            label: vec![],
        };
        assert_eq!(decrypt(&m, &oaep, &ct).unwrap().as_slice(), b"secret");
        let ct = public.pkcs1v15_encrypt(b"secret").unwrap();
        assert_eq!(
            decrypt(&m, &CipherMechanism::RsaPkcs, &ct)
                .unwrap()
                .as_slice(),
            b"secret"
        );
        let (n2, _) = rsa_public(&m).unwrap();
        assert_eq!(n2, n);
    }

    #[test]
    fn ecdh_agrees_both_ways() {
        let (a, pa) = generate_p256();
        let (b, pb) = generate_p256();
        let ab = ecdh(&a, &ec_point_der(&pb)).unwrap();
        let ba = ecdh(&b, &pa).unwrap();
        assert_eq!(ab.as_slice(), ba.as_slice());
        assert_eq!(ab.len(), 32);
    }

    #[test]
    fn raw_point_that_looks_wrapped_stays_raw() {
        // 1 in 256 raw points is `04 3f …`: a length byte that fits the rest (63 bytes).
        let (a, pa) = generate_p256();
        let (b, pb) = std::iter::repeat_with(generate_p256)
            .take(20_000)
            .find(|(_, p)| p[1] == 0x3f)
            .expect("a point whose x starts with 3f");
        assert_eq!(unwrap_ec_point(&pb), pb.as_slice());
        let ab = ecdh(&a, &pb).unwrap();
        assert_eq!(ab.as_slice(), ecdh(&b, &pa).unwrap().as_slice());
        assert_eq!(unwrap_ec_point(&ec_point_der(&pb)), pb.as_slice());
    }
}
