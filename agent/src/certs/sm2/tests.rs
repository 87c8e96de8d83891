#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Fixed vectors. The key is the one of the GM/T 0003.5 signature example (on the
//! recommended curve); `Z` and `e` were computed with OpenSSL's SM3, and the signature and
//! the two CSRs were made by OpenSSL 3 (`openssl pkeyutl -sign -rawin -digest sm3 -pkeyopt
//! distid:…`, `openssl req -new -sm3 -sigopt distid:…`): an implementation independent of
//! this one.

use super::*;
use sm2::dsa::signature::hazmat::PrehashSigner;
use sm2::elliptic_curve::Generate;

const X: &str = "09f9df311e5421a150dd7d161e4bc5c672179fad1833fc076bb08ff356f35020";
const Y: &str = "ccea490ce26775a52dc6ea718cc1aa600aed05fbf35e084a6632f6072da9ad13";
/// `Z` of that key with the default ID `1234567812345678`.
const Z_DEFAULT: &str = "b2e14c5c79c6df5b85f4fe7ed8db7a262b9da7e07ccb0ea9f4747b8ccda8a4f3";
/// `e = SM3(Z ‖ "message digest")`.
const E_MESSAGE_DIGEST: &str = "f0b43e94ba45accaace692ed534382eb17e6ab5a19ce7b31f4486fdfc0d28640";
/// OpenSSL's signature over "message digest" with the default ID.
const SIG_MESSAGE_DIGEST: &str = "304502203403f55c5d19f10fcab2e9305a1e383061d513fc08f4a5f9a9c688d050f7b67e02210099a87a1dd04970db898dc7c5361bce8e84faf3ccb661c169aee143f28757c214";
/// OpenSSL's SubjectPublicKeyInfo of the key.
const SPKI: &str = "3059301306072a8648ce3d020106082a811ccf5501822d0342000409f9df311e5421a150dd7d161e4bc5c672179fad1833fc076bb08ff356f35020ccea490ce26775a52dc6ea718cc1aa600aed05fbf35e084a6632f6072da9ad13";
/// OpenSSL's CSR for `/C=CN/O=北京示例科技有限公司/CN=张三`, default ID.
const CSR_DEFAULT_ID: &str = "308201023081a90201003047310b300906035504061302434e31273025060355040a0c1ee58c97e4baace7a4bae4be8be7a791e68a80e69c89e99990e585ace58fb8310f300d06035504030c06e5bca0e4b8893059301306072a8648ce3d020106082a811ccf5501822d0342000409f9df311e5421a150dd7d161e4bc5c672179fad1833fc076bb08ff356f35020ccea490ce26775a52dc6ea718cc1aa600aed05fbf35e084a6632f6072da9ad13a000300a06082a811ccf5501837503480030450221009dd44ad15c56d463f81318ad514dd77cacaa510cb0f90f27e77762c99ad96df7022033df17e88179d7a463f0b3da8eeb5a1bcd1bb647a102716ffa1caa51349562bf";
/// OpenSSL's CSR for `/C=CN/CN=seal`, ID `seal@example.cn`.
const CSR_OTHER_ID: &str = "3081d6307e020100301c310b300906035504061302434e310d300b06035504030c047365616c3059301306072a8648ce3d020106082a811ccf5501822d0342000409f9df311e5421a150dd7d161e4bc5c672179fad1833fc076bb08ff356f35020ccea490ce26775a52dc6ea718cc1aa600aed05fbf35e084a6632f6072da9ad13a000300a06082a811ccf5501837503480030450221008472a26fab461ef8457eab079601f5d5e3f064e396af6e7d230b7fb884bcebe702201672bad0db1859f73947c3c7c2ee2ed95f8bcba3915b844630d892053f2f2ff8";

fn unhex(text: &str) -> Vec<u8> {
    hex::decode(text).unwrap()
}

fn example_key() -> Sm2PublicKey {
    Sm2PublicKey::from_coordinates(&hex::decode(X).unwrap(), &hex::decode(Y).unwrap()).unwrap()
}

#[test]
fn z_and_digest_of_the_standard_example() {
    let key = example_key();
    assert_eq!(hex::encode(key.z(&SignerId::DEFAULT)), Z_DEFAULT);
    assert_eq!(
        hex::encode(key.digest(&SignerId::DEFAULT, b"message digest")),
        E_MESSAGE_DIGEST
    );
    // Another ID, another Z.
    let other = SignerId::new("seal@example.cn").unwrap();
    assert_ne!(key.z(&other), key.z(&SignerId::DEFAULT));
}

#[test]
fn an_openssl_signature_verifies_and_only_with_its_id_and_message() {
    let key = example_key();
    let sig = hex::decode(SIG_MESSAGE_DIGEST).unwrap();
    key.verify(&SignerId::DEFAULT, b"message digest", &sig)
        .unwrap();
    assert!(matches!(
        key.verify(&SignerId::DEFAULT, b"message digesT", &sig),
        Err(Sm2Error::BadSignature { .. })
    ));
    let other = SignerId::new("1234567812345679").unwrap();
    assert_eq!(
        key.verify(&other, b"message digest", &sig),
        Err(Sm2Error::BadSignature {
            signer_id: "1234567812345679".into()
        })
    );
    assert!(matches!(
        key.verify(&SignerId::DEFAULT, b"message digest", &sig[..sig.len() - 1]),
        Err(Sm2Error::MalformedSignature(_))
    ));
}

#[test]
fn curve_constants_are_the_crates() {
    // The generator: compared directly.
    let g = sm2::PublicKey::from_affine(sm2::AffinePoint::GENERATOR).unwrap();
    let g = Sm2PublicKey::from_sec1(&g.to_sec1_bytes()).unwrap();
    assert_eq!(g.x(), &GENERATOR_X);
    assert_eq!(g.y(), &GENERATOR_Y);
    // a and b (and the whole Z): a signature the crate makes over M with its own Z verifies
    // over our SM3(Z ‖ M), for the default ID and another one.
    for id in [SignerId::DEFAULT, SignerId::new("A").unwrap()] {
        let secret = sm2::SecretKey::generate_from_rng(&mut rand::rng());
        let signing = sm2::dsa::SigningKey::new(id.as_str(), &secret).unwrap();
        let signature: sm2::dsa::Signature = signature::Signer::sign(&signing, b"tbs");
        let key = Sm2PublicKey::from_sec1(&secret.public_key().to_sec1_bytes()).unwrap();
        key.verify(&id, b"tbs", signature.to_der().as_bytes())
            .unwrap();
    }
}

#[test]
fn spki_is_gmt_0010_and_byte_for_byte_openssls() {
    let key = example_key();
    let spki = key.to_spki().unwrap();
    assert_eq!(hex::encode(spki.to_der().unwrap()), SPKI);
    assert_eq!(Sm2PublicKey::from_spki(&spki).unwrap(), key);
    // The curve OID as the algorithm (old tools) is refused; so is P-256.
    let mut old_style = spki.clone();
    old_style.algorithm = AlgorithmIdentifierOwned {
        oid: OID_SM2_CURVE,
        parameters: None,
    };
    assert!(matches!(
        Sm2PublicKey::from_spki(&old_style),
        Err(Sm2Error::PublicKey(_))
    ));
    let mut p256 = spki.clone();
    p256.algorithm.parameters = Some(Any::encode_from(&super::super::OID_P256).unwrap());
    assert!(Sm2PublicKey::from_spki(&p256).is_err());
    // A point off the curve.
    let mut y = hex::decode(Y).unwrap();
    y[31] ^= 1;
    assert!(Sm2PublicKey::from_coordinates(&hex::decode(X).unwrap(), &y).is_err());
}

#[test]
fn blob_fields_are_right_aligned_64_bytes() {
    let x = hex::decode(X).unwrap();
    let y = hex::decode(Y).unwrap();
    let wide = |v: &[u8]| {
        let mut f = vec![0u8; 32];
        f.extend_from_slice(v);
        f
    };
    assert_eq!(
        Sm2PublicKey::from_coordinates(&wide(&x), &wide(&y)).unwrap(),
        example_key()
    );
    let mut left_aligned = x.clone();
    left_aligned.extend_from_slice(&[0u8; 32]);
    assert!(matches!(
        Sm2PublicKey::from_coordinates(&left_aligned, &wide(&y)),
        Err(Sm2Error::PublicKey(reason)) if reason.contains("right-aligned")
    ));
    // The signature: r and s out of the DER vector, back into DER from either width.
    let der = hex::decode(SIG_MESSAGE_DIGEST).unwrap();
    let parsed = sm2::dsa::Signature::from_der(&der).unwrap();
    let (r, s) = (parsed.r_bytes().to_vec(), parsed.s_bytes().to_vec());
    assert_eq!(signature_der(&r, &s).unwrap(), der);
    assert_eq!(signature_der(&wide(&r), &wide(&s)).unwrap(), der);
    assert!(signature_der(&r[1..], &s).is_err());
    assert!(signature_der(&[0u8; 32], &s).is_err());
    let mut high = wide(&r);
    high[0] = 1;
    assert!(signature_der(&high, &wide(&s)).is_err());
}

#[test]
fn csr_draft_rebuilds_openssls_csr_byte_for_byte() {
    let der = unhex(CSR_DEFAULT_ID);
    let theirs = CertReq::from_der(&der).unwrap();
    let key = Sm2PublicKey::from_spki(&theirs.info.public_key).unwrap();
    let draft = Sm2CsrDraft::new(&theirs.info.subject, &key, SignerId::DEFAULT).unwrap();
    assert_eq!(draft.to_be_signed(), theirs.info.to_der().unwrap());
    assert_eq!(
        draft.digest(),
        key.digest(&SignerId::DEFAULT, &theirs.info.to_der().unwrap())
    );
    let signature = theirs.signature.as_bytes().unwrap();
    assert_eq!(draft.assemble(signature).unwrap(), der);
    assert_eq!(verify_csr(&der, &SignerId::DEFAULT).unwrap(), key);
}

#[test]
fn a_csr_verifies_only_with_the_id_it_was_signed_with() {
    let der = unhex(CSR_OTHER_ID);
    let theirs = CertReq::from_der(&der).unwrap();
    let key = Sm2PublicKey::from_spki(&theirs.info.public_key).unwrap();
    let id = SignerId::new("seal@example.cn").unwrap();
    let signature = theirs.signature.as_bytes().unwrap();
    let with_default = Sm2CsrDraft::new(&theirs.info.subject, &key, SignerId::DEFAULT).unwrap();
    assert!(matches!(
        with_default.assemble(signature),
        Err(Sm2Error::BadSignature { .. })
    ));
    let draft = Sm2CsrDraft::new(&theirs.info.subject, &key, id).unwrap();
    assert_eq!(draft.signer_id(), id);
    assert_eq!(draft.assemble(signature).unwrap(), der);
    assert!(verify_csr(&der, &id).is_ok());
    assert!(verify_csr(&der, &SignerId::DEFAULT).is_err());
}

#[test]
fn a_token_handed_sm3_of_m_without_z_is_caught() {
    // A "token" (a software key) signing the digest it is handed: right with e = SM3(Z ‖ M),
    // refused with SM3(M).
    let secret = sm2::SecretKey::generate_from_rng(&mut rand::rng());
    let signing = sm2::dsa::SigningKey::new(SignerId::DEFAULT.as_str(), &secret).unwrap();
    let key = Sm2PublicKey::from_sec1(&secret.public_key().to_sec1_bytes()).unwrap();
    let subject: Name = "CN=seal,C=CN".parse().unwrap();
    let draft = Sm2CsrDraft::new(&subject, &key, SignerId::DEFAULT).unwrap();
    let sign = |digest: &[u8]| {
        let sig: sm2::dsa::Signature = signing.sign_prehash(digest).unwrap();
        signature_der(&sig.r_bytes(), &sig.s_bytes()).unwrap()
    };
    let without_z: [u8; 32] = Sm3::digest(draft.to_be_signed()).into();
    assert!(matches!(
        draft.clone().assemble(&sign(&without_z)),
        Err(Sm2Error::BadSignature { .. })
    ));
    let csr = draft.clone().assemble(&sign(&draft.digest())).unwrap();
    let parsed = CertReq::from_der(&csr).unwrap();
    assert_eq!(parsed.algorithm, sm2_with_sm3());
    assert_eq!(parsed.info.subject, subject);
    assert!(verify_csr(&csr, &SignerId::DEFAULT).is_ok());
}
