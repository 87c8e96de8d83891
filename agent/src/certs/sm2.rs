//! SM2 keys in X.509, the pure parts: GM/T 0010 public keys, the GM/T 0009 signer-ID digest,
//! SM2-with-SM3 signatures, and a CSR built here and signed elsewhere.
//!
//! An SM2 token (reached through SKF, GM/T 0016) signs a 32-byte digest it is given
//! (`SKF_ECCSignData`). What it must be given is `e = SM3(Z ‖ M)` with
//! `Z = SM3(ENTL ‖ ID ‖ a ‖ b ‖ x_G ‖ y_G ‖ x_A ‖ y_A)`: signing `SM3(M)` without `Z` makes
//! signatures every other party rejects. [`Sm2PublicKey::z`] and [`Sm2PublicKey::digest`]
//! compute both on the host (the token's `SKF_DigestInit` with a public key and ID computes
//! the same, and [`Sm2CsrDraft::assemble`] checks whichever was used); the curve and SM3 are
//! the RustCrypto `sm2` and `sm3` crates.
//!
//! A CSR for an SM2 key: [`Sm2CsrDraft::new`] encodes the `CertificationRequestInfo` (the
//! message `M`), [`Sm2CsrDraft::digest`] is what the token signs, and
//! [`Sm2CsrDraft::assemble`] takes the token's `(r, s)` and returns the PKCS#10 DER, signed
//! with SM2-with-SM3 (1.2.156.10197.1.501, parameters absent).
//!
//! Blobs: SKF's `ECCPUBLICKEYBLOB` and `ECCSIGNATUREBLOB` hold 256-bit values right-aligned in
//! 64-byte fields; [`Sm2PublicKey::from_coordinates`] and [`signature_der`] accept those fields
//! as they are (and plain 32-byte values), and refuse a field whose leading bytes are not zero.
//!
//! Pure: no IO, no token. The certificate-chain checks of SM2 certificates are in the parent
//! module ([`super::verify_signature`] verifies SM2-with-SM3 with the default ID).

use der::asn1::{BitString, ObjectIdentifier, SetOfVec};
use der::{Any, Decode, Encode};
use sm2::dsa::signature::hazmat::PrehashVerifier;
use sm2::elliptic_curve::sec1::ToSec1Point;
use sm3::{Digest, Sm3};
use ukey_protocol::SignerId;
use x509_cert::name::Name;
use x509_cert::request::{CertReq, CertReqInfo, Version};
use x509_cert::spki::{AlgorithmIdentifierOwned, SubjectPublicKeyInfoOwned};

use super::OID_EC_PUBLIC_KEY;

/// The SM2 curve (GM/T 0010 `sm2p256v1`, 1.2.156.10197.1.301): the named-curve parameter of
/// an SM2 key's `id-ecPublicKey`.
pub const OID_SM2_CURVE: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.156.10197.1.301");
/// SM2-with-SM3 (1.2.156.10197.1.501): the signature algorithm of SM2 CSRs and certificates,
/// with its parameters absent.
pub const OID_SM2_WITH_SM3: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.156.10197.1.501");

/// The curve's `a`, `b` and base point, as they enter `Z` (GM/T 0003.5's recommended curve).
/// A test checks them against the `sm2` crate's curve.
const CURVE_A: [u8; 32] = hex32("FFFFFFFEFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF00000000FFFFFFFFFFFFFFFC");
const CURVE_B: [u8; 32] = hex32("28E9FA9E9D9F5E344D5A9E4BCF6509A7F39789F515AB8F92DDBCBD414D940E93");
const GENERATOR_X: [u8; 32] =
    hex32("32C4AE2C1F1981195F9904466A39C9948FE30BBFF2660BE1715A4589334C74C7");
const GENERATOR_Y: [u8; 32] =
    hex32("BC3736A2F4F6779C59BDCEE36B692153D0A9877CC62A474002DF32E52139F0A0");

/// 32 bytes from 64 hex digits, at compile time.
const fn hex32(text: &str) -> [u8; 32] {
    const fn digit(c: u8) -> u8 {
        match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            b'A'..=b'F' => c - b'A' + 10,
            _ => panic!("not a hex digit"),
        }
    }
    let bytes = text.as_bytes();
    assert!(bytes.len() == 64);
    let mut out = [0u8; 32];
    let mut i = 0;
    while i < 32 {
        out[i] = digit(bytes[2 * i]) << 4 | digit(bytes[2 * i + 1]);
        i += 1;
    }
    out
}

/// What is wrong with an SM2 key, signature or CSR.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Sm2Error {
    /// The public key is not a point of the SM2 curve, or its SPKI is not GM/T 0010's.
    #[error("not an SM2 public key: {0}")]
    PublicKey(String),
    /// A signature's `r` or `s` does not fit 256 bits, or is zero, or is not DER.
    #[error("malformed SM2 signature: {0}")]
    MalformedSignature(String),
    /// The signature does not verify over `SM3(Z ‖ M)` with the key and signer ID.
    #[error("the SM2 signature does not verify with signer ID \"{signer_id}\"")]
    BadSignature {
        /// The signer ID the digest was computed with.
        signer_id: String,
    },
    /// DER encoding failed.
    #[error("encoding failed: {0}")]
    Encoding(String),
}

/// The SM2-with-SM3 signature algorithm identifier, parameters absent.
pub fn sm2_with_sm3() -> AlgorithmIdentifierOwned {
    AlgorithmIdentifierOwned {
        oid: OID_SM2_WITH_SM3,
        parameters: None,
    }
}

/// A 256-bit value from a field that may be wider (SKF's 64-byte, right-aligned blob fields);
/// the bytes before the last 32 must be zero.
fn field_256(name: &str, field: &[u8]) -> Result<[u8; 32], String> {
    if field.len() < 32 {
        return Err(format!("{name} is {} bytes, not 32 or more", field.len()));
    }
    let (high, low) = field.split_at(field.len() - 32);
    if high.iter().any(|b| *b != 0) {
        return Err(format!(
            "{name} does not fit 256 bits ({} bytes, not right-aligned)",
            field.len()
        ));
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(low);
    Ok(out)
}

/// An SM2 public key: a point of the curve, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sm2PublicKey {
    key: sm2::PublicKey,
    x: [u8; 32],
    y: [u8; 32],
}

impl Sm2PublicKey {
    /// From SEC1 bytes (`04 ‖ x ‖ y`, or compressed).
    pub fn from_sec1(bytes: &[u8]) -> Result<Sm2PublicKey, Sm2Error> {
        let key = sm2::PublicKey::from_sec1_bytes(bytes)
            .map_err(|_| Sm2Error::PublicKey("not a point of the SM2 curve".into()))?;
        let point = key.to_sec1_point(false);
        let (Some(x), Some(y)) = (point.x(), point.y()) else {
            return Err(Sm2Error::PublicKey("the point at infinity".into()));
        };
        let mut out = Sm2PublicKey {
            key,
            x: [0; 32],
            y: [0; 32],
        };
        out.x.copy_from_slice(x);
        out.y.copy_from_slice(y);
        Ok(out)
    }

    /// From its coordinates: 32 bytes each, or wider fields with the value right-aligned (an
    /// SKF `ECCPUBLICKEYBLOB`'s 64-byte `XCoordinate` and `YCoordinate`).
    pub fn from_coordinates(x: &[u8], y: &[u8]) -> Result<Sm2PublicKey, Sm2Error> {
        let x = field_256("x", x).map_err(Sm2Error::PublicKey)?;
        let y = field_256("y", y).map_err(Sm2Error::PublicKey)?;
        let mut sec1 = [0u8; 65];
        sec1[0] = 0x04;
        sec1[1..33].copy_from_slice(&x);
        sec1[33..].copy_from_slice(&y);
        Sm2PublicKey::from_sec1(&sec1)
    }

    /// From a SubjectPublicKeyInfo, which must be GM/T 0010's: `id-ecPublicKey` with the SM2
    /// named curve. (The SM2 curve OID as the algorithm itself, which old tools wrote, is
    /// refused: certificates compare keys byte for byte, and no Ukey of ours holds one.)
    pub fn from_spki(spki: &SubjectPublicKeyInfoOwned) -> Result<Sm2PublicKey, Sm2Error> {
        if spki.algorithm.oid != OID_EC_PUBLIC_KEY {
            return Err(Sm2Error::PublicKey(format!(
                "algorithm {} is not id-ecPublicKey",
                spki.algorithm.oid
            )));
        }
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.decode_as::<ObjectIdentifier>().ok());
        if curve != Some(OID_SM2_CURVE) {
            return Err(Sm2Error::PublicKey(
                "the curve is not 1.2.156.10197.1.301".into(),
            ));
        }
        let bits = spki
            .subject_public_key
            .as_bytes()
            .ok_or_else(|| Sm2Error::PublicKey("public key has unused bits".into()))?;
        Sm2PublicKey::from_sec1(bits)
    }

    /// The GM/T 0010 SubjectPublicKeyInfo (uncompressed point).
    pub fn to_spki(&self) -> Result<SubjectPublicKeyInfoOwned, Sm2Error> {
        let encoding = |e: der::Error| Sm2Error::Encoding(e.to_string());
        let mut point = Vec::with_capacity(65);
        point.push(0x04);
        point.extend_from_slice(&self.x);
        point.extend_from_slice(&self.y);
        Ok(SubjectPublicKeyInfoOwned {
            algorithm: AlgorithmIdentifierOwned {
                oid: OID_EC_PUBLIC_KEY,
                parameters: Some(Any::encode_from(&OID_SM2_CURVE).map_err(encoding)?),
            },
            subject_public_key: BitString::from_bytes(&point).map_err(encoding)?,
        })
    }

    /// The x coordinate (32 bytes, big-endian).
    pub fn x(&self) -> &[u8; 32] {
        &self.x
    }

    /// The y coordinate (32 bytes, big-endian).
    pub fn y(&self) -> &[u8; 32] {
        &self.y
    }

    /// `Z = SM3(ENTL ‖ ID ‖ a ‖ b ‖ x_G ‖ y_G ‖ x_A ‖ y_A)` for this key and `signer_id`
    /// (ENTL: the ID's length in bits, two bytes big-endian).
    pub fn z(&self, signer_id: &SignerId) -> [u8; 32] {
        let id = signer_id.as_bytes();
        // At most 64 bytes (SignerId's bound): 512 bits always fit ENTL's 16 bits.
        let entl = u16::try_from(id.len() * 8).unwrap_or(u16::MAX);
        let mut sm3 = Sm3::new();
        sm3.update(entl.to_be_bytes());
        sm3.update(id);
        sm3.update(CURVE_A);
        sm3.update(CURVE_B);
        sm3.update(GENERATOR_X);
        sm3.update(GENERATOR_Y);
        sm3.update(self.x);
        sm3.update(self.y);
        sm3.finalize().into()
    }

    /// `e = SM3(Z ‖ message)`: the 32 bytes an SM2 signature over `message` signs (what
    /// `SKF_ECCSignData` is given).
    pub fn digest(&self, signer_id: &SignerId, message: &[u8]) -> [u8; 32] {
        let mut sm3 = Sm3::new();
        sm3.update(self.z(signer_id));
        sm3.update(message);
        sm3.finalize().into()
    }

    /// Verifies a DER SM2 signature over `message` made with `signer_id`.
    pub fn verify(
        &self,
        signer_id: &SignerId,
        message: &[u8],
        der_signature: &[u8],
    ) -> Result<(), Sm2Error> {
        let signature = sm2::dsa::Signature::from_der(der_signature)
            .map_err(|_| Sm2Error::MalformedSignature("not a DER SEQUENCE { r, s }".into()))?;
        self.verify_digest(signer_id, &self.digest(signer_id, message), &signature)
    }

    fn verify_digest(
        &self,
        signer_id: &SignerId,
        digest: &[u8; 32],
        signature: &sm2::dsa::Signature,
    ) -> Result<(), Sm2Error> {
        // The crate's verifier is built with an ID too, but only its prehash path is used:
        // the digest (and so Z) is ours, which is what the token is handed.
        let verifier = sm2::dsa::VerifyingKey::new(signer_id.as_str(), self.key)
            .map_err(|_| Sm2Error::PublicKey("the verifier refused the key".into()))?;
        verifier
            .verify_prehash(digest, signature)
            .map_err(|_| Sm2Error::BadSignature {
                signer_id: signer_id.as_str().to_owned(),
            })
    }
}

/// The DER `SEQUENCE { r, s }` X.509 wants, from `r` and `s` as the token returns them (32
/// bytes each, or an `ECCSIGNATUREBLOB`'s 64-byte right-aligned fields).
pub fn signature_der(r: &[u8], s: &[u8]) -> Result<Vec<u8>, Sm2Error> {
    let r = field_256("r", r).map_err(Sm2Error::MalformedSignature)?;
    let s = field_256("s", s).map_err(Sm2Error::MalformedSignature)?;
    let signature = sm2::dsa::Signature::from_scalars(r, s).map_err(|_| {
        Sm2Error::MalformedSignature("r or s is zero or not below the curve order".into())
    })?;
    Ok(signature.to_der().to_vec())
}

/// A PKCS#10 request for an SM2 key, encoded and waiting for its signature.
#[derive(Debug, Clone)]
pub struct Sm2CsrDraft {
    info: CertReqInfo,
    message: Vec<u8>,
    key: Sm2PublicKey,
    signer_id: SignerId,
}

impl Sm2CsrDraft {
    /// The request of `key` for `subject` (no attributes), to be signed with `signer_id`.
    pub fn new(
        subject: &Name,
        key: &Sm2PublicKey,
        signer_id: SignerId,
    ) -> Result<Sm2CsrDraft, Sm2Error> {
        let info = CertReqInfo {
            version: Version::V1,
            subject: subject.clone(),
            public_key: key.to_spki()?,
            attributes: SetOfVec::new(),
        };
        let message = info
            .to_der()
            .map_err(|e| Sm2Error::Encoding(e.to_string()))?;
        Ok(Sm2CsrDraft {
            info,
            message,
            key: key.clone(),
            signer_id,
        })
    }

    /// The message `M`: the DER `CertificationRequestInfo`.
    pub fn to_be_signed(&self) -> &[u8] {
        &self.message
    }

    /// `e = SM3(Z ‖ M)`: the digest the token signs (`SKF_ECCSignData`).
    pub fn digest(&self) -> [u8; 32] {
        self.key.digest(&self.signer_id, &self.message)
    }

    /// The signer ID the request is signed with.
    pub fn signer_id(&self) -> SignerId {
        self.signer_id
    }

    /// The PKCS#10 DER with `signature` (DER `SEQUENCE { r, s }`, see [`signature_der`]).
    ///
    /// The signature is verified first: a token handed `SM3(M)`, or a `Z` made with another
    /// ID, makes a signature the platform would refuse, and this names the cause where it is
    /// made (one SM2 verification, well below a token's signing time).
    pub fn assemble(self, signature: &[u8]) -> Result<Vec<u8>, Sm2Error> {
        self.key.verify(&self.signer_id, &self.message, signature)?;
        let encoding = |e: der::Error| Sm2Error::Encoding(e.to_string());
        CertReq {
            info: self.info,
            algorithm: sm2_with_sm3(),
            signature: BitString::from_bytes(signature).map_err(encoding)?,
        }
        .to_der()
        .map_err(encoding)
    }
}

/// Whether a CSR (DER) is an SM2-with-SM3 request whose self-signature verifies with
/// `signer_id`; the request's SM2 key on success.
pub fn verify_csr(der: &[u8], signer_id: &SignerId) -> Result<Sm2PublicKey, Sm2Error> {
    let malformed = |e: der::Error| Sm2Error::MalformedSignature(e.to_string());
    let csr = CertReq::from_der(der).map_err(malformed)?;
    if csr.algorithm.oid != OID_SM2_WITH_SM3 {
        return Err(Sm2Error::MalformedSignature(format!(
            "signature algorithm {} is not SM2-with-SM3",
            csr.algorithm.oid
        )));
    }
    let key = Sm2PublicKey::from_spki(&csr.info.public_key)?;
    let message = csr.info.to_der().map_err(malformed)?;
    let signature = csr
        .signature
        .as_bytes()
        .ok_or_else(|| Sm2Error::MalformedSignature("unused bits".into()))?;
    key.verify(signer_id, &message, signature)?;
    Ok(key)
}

#[cfg(test)]
mod tests;
