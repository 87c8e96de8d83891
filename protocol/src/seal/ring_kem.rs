//! DHKEM(P-256, HKDF-SHA256) (RFC 9180 §4.1, KEM `0x0010`) whose encapsulation computes
//! its two curve operations with ring instead of the `p256` crate.
//!
//! Why: the station seals every token's PINs to the platform (two seals per token), and each
//! encapsulation is a fresh ephemeral key pair plus one Diffie-Hellman. With `p256` those two
//! scalar multiplications were about a tenth of the agent's own CPU per token; ring's P-256
//! (the same code that verifies the platform's ES256 signatures) does them several times
//! faster. The output is the standard KEM's: `enc` is the ephemeral key's SEC1 uncompressed
//! point and the shared secret is `ExtractAndExpand(dh, enc ‖ pkRm)` with the KEM's suite id,
//! so any RFC 9180 implementation opens it (the tests open it with `hpke`'s own DHKEM).
//!
//! What it does not do: decapsulate or derive key pairs itself (both are delegated to `hpke`'s
//! DHKEM, off the hot path), or authenticated modes (no sender key: refused).
//!
//! Randomness: the ephemeral key comes from ring's `SystemRandom` (the operating system's
//! generator), not from the `csprng` handed to [`hpke::Kem::encap_with_rng`]: ring takes no
//! outside generator for ephemeral keys. The sealing code passes the system generator anyway.

use hpke::kdf::Kdf;
use hpke::kem::SharedSecret;
use hpke::{Deserializable, HpkeError, Kem, Serializable};
use ring::agreement;
use zeroize::Zeroizing;

/// The `hpke` crate's DHKEM(P-256, HKDF-SHA256): its types, decapsulation and key derivation.
type Standard = hpke::kem::DhP256HkdfSha256;
/// The KEM's KDF (RFC 9180 §7.1: DHKEM(P-256) uses HKDF-SHA256).
type KemKdf = hpke::kdf::HkdfSha256;

/// DHKEM(P-256, HKDF-SHA256) with encapsulation on ring; see the module's documentation.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RingDhP256;

impl Kem for RingDhP256 {
    type PublicKey = <Standard as Kem>::PublicKey;
    type PrivateKey = <Standard as Kem>::PrivateKey;
    type EncappedKey = <Standard as Kem>::EncappedKey;
    type NSecret = <Standard as Kem>::NSecret;
    const KEM_ID: u16 = <Standard as Kem>::KEM_ID;

    fn sk_to_pk(sk: &Self::PrivateKey) -> Self::PublicKey {
        Standard::sk_to_pk(sk)
    }

    fn derive_keypair(ikm: &[u8]) -> (Self::PrivateKey, Self::PublicKey) {
        Standard::derive_keypair(ikm)
    }

    fn decap(
        sk_recip: &Self::PrivateKey,
        pk_sender_id: Option<&Self::PublicKey>,
        encapped_key: &Self::EncappedKey,
    ) -> Result<SharedSecret<Self>, HpkeError> {
        let standard = Standard::decap(sk_recip, pk_sender_id, encapped_key)?;
        Ok(SharedSecret(standard.0))
    }

    fn encap_with_rng(
        pk_recip: &Self::PublicKey,
        sender_id_keypair: Option<(&Self::PrivateKey, &Self::PublicKey)>,
        _csprng: &mut impl hpke::rand_core::CryptoRng,
    ) -> Result<(SharedSecret<Self>, Self::EncappedKey), HpkeError> {
        if sender_id_keypair.is_some() {
            // Auth modes are not used by the station's seals.
            return Err(HpkeError::EncapError);
        }
        let rng = ring::rand::SystemRandom::new();
        let ephemeral = agreement::EphemeralPrivateKey::generate(&agreement::ECDH_P256, &rng)
            .map_err(|_| HpkeError::EncapError)?;
        let enc = ephemeral
            .compute_public_key()
            .map_err(|_| HpkeError::EncapError)?;
        let recipient = pk_recip.to_bytes();
        // DH(skE, pkR): the x-coordinate of the shared point, as ring's ECDH returns it.
        let dh = agreement::agree_ephemeral(
            ephemeral,
            &agreement::UnparsedPublicKey::new(&agreement::ECDH_P256, recipient.as_slice()),
            |secret| Zeroizing::new(secret.to_vec()),
        )
        .map_err(|_| HpkeError::EncapError)?;
        // kem_context = enc ‖ pkRm; suite_id = "KEM" ‖ I2OSP(kem_id, 2) (RFC 9180 §4.1).
        let mut kem_context = Vec::with_capacity(enc.as_ref().len() + recipient.len());
        kem_context.extend_from_slice(enc.as_ref());
        kem_context.extend_from_slice(&recipient);
        let [hi, lo] = Self::KEM_ID.to_be_bytes();
        let suite_id = [b'K', b'E', b'M', hi, lo];
        let mut shared = SharedSecret::<Self>::default();
        KemKdf::extract_and_expand(&dh, &suite_id, &kem_context, &mut shared.0)?;
        let encapped = Self::EncappedKey::from_bytes(enc.as_ref())?;
        Ok((shared, encapped))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use hpke::{OpModeR, OpModeS};

    type Aead = hpke::aead::AesGcm256;

    /// What ring encapsulates, the standard DHKEM decapsulates to the same secret: a seal made
    /// here opens with `hpke`'s own suite (and so with any RFC 9180 implementation).
    #[test]
    fn sealed_with_ring_opens_with_the_standard_kem() {
        let (sk, pk) = Standard::gen_keypair();
        for message in [&b""[..], b"12345678", &[7u8; 200]] {
            let (enc, ct) = hpke::single_shot_seal::<Aead, KemKdf, RingDhP256>(
                &OpModeS::Base,
                &pk,
                b"info",
                message,
                b"",
            )
            .unwrap();
            let opened = hpke::single_shot_open::<Aead, KemKdf, Standard>(
                &OpModeR::Base,
                &sk,
                &enc,
                b"info",
                &ct,
                b"",
            )
            .unwrap();
            assert_eq!(opened, message);
            // Another info string is another key schedule.
            assert!(
                hpke::single_shot_open::<Aead, KemKdf, Standard>(
                    &OpModeR::Base,
                    &sk,
                    &enc,
                    b"other",
                    &ct,
                    b"",
                )
                .is_err()
            );
        }
    }

    /// Each seal has an ephemeral key of its own.
    #[test]
    fn every_encapsulation_is_fresh() {
        let (_, pk) = Standard::gen_keypair();
        let (s1, e1) = RingDhP256::encap(&pk, None).unwrap();
        let (s2, e2) = RingDhP256::encap(&pk, None).unwrap();
        assert_ne!(e1.to_bytes(), e2.to_bytes());
        assert_ne!(s1.0, s2.0);
    }

    /// Encapsulation and decapsulation agree, and the secret is the standard KEM's.
    #[test]
    fn decapsulation_agrees_with_the_standard_kem() {
        let (sk, pk) = Standard::gen_keypair();
        let (shared, enc) = RingDhP256::encap(&pk, None).unwrap();
        assert_eq!(RingDhP256::decap(&sk, None, &enc).unwrap().0, shared.0);
        assert_eq!(Standard::decap(&sk, None, &enc).unwrap().0, shared.0);
    }

    #[test]
    fn authenticated_mode_is_refused() {
        let (sk, pk) = Standard::gen_keypair();
        assert!(RingDhP256::encap(&pk, Some((&sk, &pk))).is_err());
    }
}
