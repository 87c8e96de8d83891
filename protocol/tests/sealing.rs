//! Sealed secrets: round trip (EC and RSA), wrong key, wrong context, tampering, key-type
//! mismatch, and the serde form.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use ukey_protocol::*;

fn ctx(job: &str, purpose: SealPurpose) -> SealContext {
    SealContext::for_job(&JobId::new(job).unwrap(), purpose)
}

fn ec_key() -> UnsealKey {
    let bytes: [u8; 32] = rand_bytes();
    UnsealKey::P256(p256::SecretKey::from_slice(&bytes).unwrap())
}

fn rand_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    getrandom::fill(&mut b).unwrap();
    b
}

fn rsa_key() -> UnsealKey {
    UnsealKey::Rsa(Box::new(
        rsa::PrivateKey::new(&mut getrandom::SysRng, 2048).unwrap(),
    ))
}

fn flip(b: &Base64Bytes, i: usize) -> Base64Bytes {
    let mut v = b.as_bytes().to_vec();
    v[i] ^= 0x01;
    Base64Bytes::new(v)
}

#[test]
fn ec_seal_round_trip_wrong_key_wrong_context_tampered() {
    let key = ec_key();
    let c = ctx("J-1", SealPurpose::SoPin);
    let sealed = seal(&key.recipient(), &c, b"84913027").unwrap();
    assert_eq!(sealed.unseal(&key, &c).unwrap().as_slice(), b"84913027");

    assert_eq!(sealed.unseal(&ec_key(), &c), Err(ProtocolError::Unseal));
    assert_eq!(
        sealed.unseal(&key, &ctx("J-2", SealPurpose::SoPin)),
        Err(ProtocolError::Unseal)
    );
    assert_eq!(
        sealed.unseal(&key, &ctx("J-1", SealPurpose::UserPin)),
        Err(ProtocolError::Unseal)
    );

    let SealedSecret::Hpke { enc, ct } = &sealed else {
        panic!("not HPKE")
    };
    assert_eq!(sealed.alg(), "HPKE-P256-SHA256-A256GCM");
    assert_eq!(enc.len(), 65);
    assert_eq!(ct.len(), 8 + 16);
    for tampered in [
        SealedSecret::Hpke {
            enc: enc.clone(),
            ct: flip(ct, 0),
        },
        SealedSecret::Hpke {
            enc: enc.clone(),
            ct: flip(ct, 20),
        },
        SealedSecret::Hpke {
            enc: flip(enc, 64),
            ct: ct.clone(),
        },
    ] {
        assert_eq!(tampered.unseal(&key, &c), Err(ProtocolError::Unseal));
    }
}

#[test]
fn rsa_seal_round_trip_wrong_key_wrong_context_tampered() {
    let key = rsa_key();
    let c = ctx("J-1", SealPurpose::UserPin);
    let sealed = seal(&key.recipient(), &c, b"275103").unwrap();
    assert_eq!(sealed.alg(), "RSA-OAEP-SHA256");
    assert_eq!(sealed.unseal(&key, &c).unwrap().as_slice(), b"275103");
    assert_eq!(
        sealed.unseal(&key, &ctx("J-9", SealPurpose::UserPin)),
        Err(ProtocolError::Unseal)
    );
    let SealedSecret::RsaOaep { ct } = &sealed else {
        panic!("not OAEP")
    };
    assert_eq!(ct.len(), 256);
    let tampered = SealedSecret::RsaOaep { ct: flip(ct, 100) };
    assert_eq!(tampered.unseal(&key, &c), Err(ProtocolError::Unseal));
    // A secret sealed to RSA cannot be opened with an EC key, and says so.
    assert_eq!(
        sealed.unseal(&ec_key(), &c),
        Err(ProtocolError::SealKeyMismatch {
            sealed_with: "RSA-OAEP-SHA256",
            key_type: "EC P-256"
        })
    );
    // Another RSA key fails like any wrong key.
    assert_eq!(sealed.unseal(&rsa_key(), &c), Err(ProtocolError::Unseal));
}

#[test]
fn sealed_secret_serde_and_debug() {
    let key = ec_key();
    let c = ctx("J-1", SealPurpose::SoPin);
    let sealed = seal(&key.recipient(), &c, b"84913027").unwrap();
    let json = serde_json::to_string(&sealed).unwrap();
    assert!(json.starts_with(r#"{"alg":"HPKE-P256-SHA256-A256GCM","enc":""#));
    let back: SealedSecret = serde_json::from_str(&json).unwrap();
    assert_eq!(back, sealed);
    assert_eq!(back.unseal(&key, &c).unwrap().as_slice(), b"84913027");
    let debug = format!("{sealed:?}");
    assert!(!debug.contains("84913027"));
    assert!(!debug.contains(&json[60..80]), "Debug prints ciphertext");
    let unknown: Result<SealedSecret, _> = serde_json::from_str(r#"{"alg":"ROT13","ct":"AA=="}"#);
    assert!(unknown.is_err());
}

#[test]
fn keys_load_from_pkcs8_and_spki() {
    use p256::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};
    let UnsealKey::P256(sk) = ec_key() else {
        unreachable!()
    };
    let pem = sk.to_pkcs8_pem(LineEnding::LF).unwrap();
    let key = UnsealKey::from_pkcs8_pem(&pem).unwrap();
    let public_pem = sk.public_key().to_public_key_pem(LineEnding::LF).unwrap();
    let recipient = SealRecipient::from_public_key_pem(&public_pem).unwrap();
    assert_eq!(recipient, key.recipient());
    let c = ctx("J-1", SealPurpose::SoPin);
    let sealed = seal(&recipient, &c, b"1234").unwrap();
    assert_eq!(sealed.unseal(&key, &c).unwrap().as_slice(), b"1234");
    assert!(matches!(
        UnsealKey::from_pkcs8_der(b"nope"),
        Err(ProtocolError::Key { .. })
    ));
    assert!(format!("{key:?}").contains("<secret>"));
}
