//! The independent verification pass: after the agent has stopped, every produced token is
//! opened again through PKCS#11 (cryptoki on the same module, after a fresh `C_Initialize`)
//! and checked without any of the agent's code:
//!
//! - three private keys, labelled `seal-official`, `seal-legal`, `encryption`, each
//!   `CKA_SENSITIVE`, `!CKA_EXTRACTABLE`, `CKA_LOCAL`, `CKA_ALWAYS_SENSITIVE`,
//!   `CKA_NEVER_EXTRACTABLE` (a missing attribute is a failure: cryptoki leaves out what it
//!   could not read);
//! - three certificates with the same labels and `CKA_ID`s, each certifying exactly the
//!   public key stored on the token under that `CKA_ID` (EC point or RSA modulus and
//!   exponent), and each the very certificate the platform issued.
//!
//! It logs in with the user PIN the simulated platform unsealed. It does not check chains
//! or subjects (the agent did, and the tests repeat it with openssl).

use std::path::Path;

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::object::{Attribute, AttributeType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use der::Decode;
use der::asn1::UintRef;
use secrecy::{ExposeSecret, SecretString};
use ukey_protocol::KeyLabel;
use x509_cert::Certificate;

use super::error::DemoError;

/// What the pass is given for one token.
pub(crate) struct Expectation {
    /// The token.
    pub(crate) serial: String,
    /// Its user PIN, as the platform unsealed it.
    pub(crate) user_pin: Option<SecretString>,
    /// The certificates the platform issued for it, by label.
    pub(crate) issued: Vec<(KeyLabel, Vec<u8>)>,
}

/// What the pass found on one token.
#[derive(Debug, Clone)]
pub(crate) struct Check {
    /// The token.
    pub(crate) serial: String,
    /// The PKCS#11 slot it was found in.
    pub(crate) slot: Option<u64>,
    /// Private keys found.
    pub(crate) private_keys: usize,
    /// Certificates found, with their label.
    pub(crate) certificates: Vec<(String, Vec<u8>)>,
    /// Every problem, in words; empty when the token is good.
    pub(crate) problems: Vec<String>,
}

impl Check {
    /// Whether the token passed.
    pub(crate) fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// The pass's own PKCS#11 context on the module.
pub(crate) struct Verifier {
    module: std::path::PathBuf,
    pkcs11: Pkcs11,
}

impl Verifier {
    /// Loads `module` and initializes it afresh.
    pub(crate) fn open(module: &Path) -> Result<Verifier, DemoError> {
        let fail = |reason: String| DemoError::Verify {
            module: module.to_path_buf(),
            reason,
        };
        // The agent ran in this process and left the module initialized: finalize its
        // handle so that this pass starts from a fresh C_Initialize, with no session or
        // login of the agent's.
        if let Ok(agent_module) = ukey_agent::token::Module::load(module) {
            let _ = agent_module.finalize();
        }
        let pkcs11 = Pkcs11::new(module).map_err(|e| fail(format!("load: {e}")))?;
        match pkcs11.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
            Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
            Err(e) => return Err(fail(format!("C_Initialize: {e}"))),
        }
        Ok(Verifier {
            module: module.to_path_buf(),
            pkcs11,
        })
    }

    /// Checks `tokens`, which must be present now.
    pub(crate) fn check(&self, tokens: &[Expectation]) -> Result<Vec<Check>, DemoError> {
        let slots = self
            .pkcs11
            .get_slots_with_token()
            .map_err(|e| DemoError::Verify {
                module: self.module.clone(),
                reason: format!("C_GetSlotList: {e}"),
            })?;
        let mut by_serial = Vec::new();
        for slot in slots {
            if let Ok(info) = self.pkcs11.get_token_info(slot) {
                by_serial.push((info.serial_number().trim().to_owned(), slot));
            }
        }
        Ok(tokens
            .iter()
            .map(|t| {
                let slot = by_serial
                    .iter()
                    .find(|(s, _)| *s == t.serial)
                    .map(|(_, slot)| *slot);
                check_token(&self.pkcs11, slot, t)
            })
            .collect())
    }

    /// Calls `C_Finalize`.
    pub(crate) fn close(self) {
        // Tidy-up only: a failure here changes no verdict.
        let _ = self.pkcs11.finalize();
    }
}

fn check_token(pkcs11: &Pkcs11, slot: Option<Slot>, t: &Expectation) -> Check {
    let mut check = Check {
        serial: t.serial.clone(),
        slot: slot.map(|s| s.id()),
        private_keys: 0,
        certificates: Vec::new(),
        problems: Vec::new(),
    };
    let Some(slot) = slot else {
        check
            .problems
            .push("the token is not present in any slot".to_owned());
        return check;
    };
    let session = match pkcs11.open_ro_session(slot) {
        Ok(s) => s,
        Err(e) => {
            check.problems.push(format!("C_OpenSession: {e}"));
            return check;
        }
    };
    match &t.user_pin {
        None => check
            .problems
            .push("no user PIN: the platform did not unseal one".to_owned()),
        Some(pin) => {
            let pin = SecretString::from(pin.expose_secret().to_owned());
            if let Err(e) = session.login(UserType::User, Some(&pin)) {
                check
                    .problems
                    .push(format!("C_Login with the user PIN: {e}"));
            }
        }
    }
    if let Err(e) = check_objects(&session, t, &mut check) {
        check.problems.push(e);
    }
    let _ = session.logout();
    check
}

/// One object's attributes, by type; an attribute the module did not return is absent.
struct Attrs(Vec<Attribute>);

impl Attrs {
    fn read(
        session: &Session,
        handle: ObjectHandle,
        types: &[AttributeType],
    ) -> Result<Attrs, String> {
        session
            .get_attributes(handle, types)
            .map(Attrs)
            .map_err(|e| format!("C_GetAttributeValue: {e}"))
    }

    fn flag(&self, ty: AttributeType) -> Option<bool> {
        self.0.iter().find_map(|a| match (a, ty) {
            (Attribute::Sensitive(v), AttributeType::Sensitive)
            | (Attribute::Extractable(v), AttributeType::Extractable)
            | (Attribute::Local(v), AttributeType::Local)
            | (Attribute::AlwaysSensitive(v), AttributeType::AlwaysSensitive)
            | (Attribute::NeverExtractable(v), AttributeType::NeverExtractable) => Some(*v),
            _ => None,
        })
    }

    fn bytes(&self, ty: AttributeType) -> Option<&[u8]> {
        self.0.iter().find_map(|a| match (a, ty) {
            (Attribute::Label(v), AttributeType::Label)
            | (Attribute::Id(v), AttributeType::Id)
            | (Attribute::Value(v), AttributeType::Value)
            | (Attribute::EcPoint(v), AttributeType::EcPoint)
            | (Attribute::EcParams(v), AttributeType::EcParams)
            | (Attribute::Modulus(v), AttributeType::Modulus)
            | (Attribute::PublicExponent(v), AttributeType::PublicExponent) => Some(v.as_slice()),
            _ => None,
        })
    }

    fn label(&self) -> String {
        self.bytes(AttributeType::Label)
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .unwrap_or_default()
    }
}

fn objects(
    session: &Session,
    class: ObjectClass,
    types: &[AttributeType],
) -> Result<Vec<Attrs>, String> {
    let handles = session
        .find_objects(&[Attribute::Class(class)])
        .map_err(|e| format!("C_FindObjects: {e}"))?;
    handles
        .into_iter()
        .map(|h| Attrs::read(session, h, types))
        .collect()
}

/// The key attributes a finished Ukey's private keys must have, and their required value.
const PRIVATE_FLAGS: [(AttributeType, bool, &str); 5] = [
    (AttributeType::Sensitive, true, "CKA_SENSITIVE"),
    (AttributeType::Extractable, false, "CKA_EXTRACTABLE"),
    (AttributeType::Local, true, "CKA_LOCAL"),
    (AttributeType::AlwaysSensitive, true, "CKA_ALWAYS_SENSITIVE"),
    (
        AttributeType::NeverExtractable,
        true,
        "CKA_NEVER_EXTRACTABLE",
    ),
];

fn check_objects(session: &Session, t: &Expectation, check: &mut Check) -> Result<(), String> {
    let mut private_types = vec![AttributeType::Label, AttributeType::Id];
    private_types.extend(PRIVATE_FLAGS.iter().map(|(ty, _, _)| *ty));
    let private = objects(session, ObjectClass::PRIVATE_KEY, &private_types)?;
    let public = objects(
        session,
        ObjectClass::PUBLIC_KEY,
        &[
            AttributeType::Label,
            AttributeType::Id,
            AttributeType::EcPoint,
            AttributeType::EcParams,
            AttributeType::Modulus,
            AttributeType::PublicExponent,
        ],
    )?;
    let certs = objects(
        session,
        ObjectClass::CERTIFICATE,
        &[
            AttributeType::Label,
            AttributeType::Id,
            AttributeType::Value,
        ],
    )?;
    check.private_keys = private.len();
    check.certificates = certs
        .iter()
        .filter_map(|c| {
            c.bytes(AttributeType::Value)
                .map(|v| (c.label(), v.to_vec()))
        })
        .collect();
    if private.len() != 3 {
        check
            .problems
            .push(format!("{} private keys, expected 3", private.len()));
    }
    if certs.len() != 3 {
        check
            .problems
            .push(format!("{} certificates, expected 3", certs.len()));
    }
    for label in KeyLabel::ALL {
        let name = label.as_str();
        let one = |list: &'_ [Attrs], what: &str| -> Result<usize, String> {
            let found: Vec<usize> = (0..list.len())
                .filter(|i| list[*i].label() == name)
                .collect();
            match found.as_slice() {
                [i] => Ok(*i),
                [] => Err(format!("{name}: no {what}")),
                _ => Err(format!("{name}: {} {what}s", found.len())),
            }
        };
        let (key, cert) = match (one(&private, "private key"), one(&certs, "certificate")) {
            (Ok(k), Ok(c)) => (&private[k], &certs[c]),
            (k, c) => {
                check.problems.extend(k.err());
                check.problems.extend(c.err());
                continue;
            }
        };
        for (ty, want, attr) in PRIVATE_FLAGS {
            match key.flag(ty) {
                Some(v) if v == want => {}
                Some(v) => check
                    .problems
                    .push(format!("{name}: private key has {attr} = {v}")),
                None => check
                    .problems
                    .push(format!("{name}: private key's {attr} could not be read")),
            }
        }
        let id = key.bytes(AttributeType::Id).unwrap_or_default();
        if cert.bytes(AttributeType::Id) != Some(id) {
            check.problems.push(format!(
                "{name}: the certificate's CKA_ID differs from its key's"
            ));
        }
        let Some(pubkey) = public
            .iter()
            .find(|p| p.bytes(AttributeType::Id) == Some(id) && p.label() == name)
        else {
            check
                .problems
                .push(format!("{name}: no public key with the key's CKA_ID"));
            continue;
        };
        let der = cert.bytes(AttributeType::Value).unwrap_or_default();
        if let Err(e) = same_key(der, pubkey) {
            check.problems.push(format!("{name}: {e}"));
        }
        match t.issued.iter().find(|(l, _)| *l == label) {
            Some((_, issued)) if issued.as_slice() == der => {}
            Some(_) => check.problems.push(format!(
                "{name}: the certificate differs from the one the platform issued"
            )),
            None => check
                .problems
                .push(format!("{name}: the platform issued no such certificate")),
        }
    }
    Ok(())
}

/// The DER of the P-256 curve's OID, as `CKA_EC_PARAMS` holds it.
const P256_PARAMS: [u8; 10] = [0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];

/// `RSAPublicKey` of PKCS #1.
#[derive(der::Sequence)]
struct RsaPublicKey<'a> {
    modulus: UintRef<'a>,
    public_exponent: UintRef<'a>,
}

fn strip_zeros(b: &[u8]) -> &[u8] {
    let first = b.iter().position(|x| *x != 0).unwrap_or(b.len());
    &b[first..]
}

/// Whether the certificate `der` certifies the public key object `pubkey`.
fn same_key(der: &[u8], pubkey: &Attrs) -> Result<(), String> {
    let cert =
        Certificate::from_der(der).map_err(|e| format!("certificate does not parse: {e}"))?;
    let spki = cert.tbs_certificate().subject_public_key_info();
    let bits = spki.subject_public_key.raw_bytes();
    match spki.algorithm.oid {
        ukey_agent::certs::OID_EC_PUBLIC_KEY => {
            let point = pubkey
                .bytes(AttributeType::EcPoint)
                .ok_or("the public key has no CKA_EC_POINT")?;
            // A DER OCTET STRING (04 41 04 ...) or the raw point: both are in use.
            let point = match point {
                [0x04, 0x41, rest @ ..] if rest.len() == 0x41 => rest,
                raw => raw,
            };
            if pubkey.bytes(AttributeType::EcParams) != Some(&P256_PARAMS[..]) {
                return Err("the public key is not on P-256".to_owned());
            }
            if point != bits {
                return Err("the certificate certifies another EC key than the token's".to_owned());
            }
        }
        ukey_agent::certs::OID_RSA_ENCRYPTION => {
            let key = RsaPublicKey::from_der(bits)
                .map_err(|e| format!("the certificate's RSA key does not parse: {e}"))?;
            let modulus = pubkey
                .bytes(AttributeType::Modulus)
                .ok_or("the public key has no CKA_MODULUS")?;
            let exponent = pubkey
                .bytes(AttributeType::PublicExponent)
                .ok_or("the public key has no CKA_PUBLIC_EXPONENT")?;
            if strip_zeros(modulus) != strip_zeros(key.modulus.as_bytes())
                || strip_zeros(exponent) != strip_zeros(key.public_exponent.as_bytes())
            {
                return Err("the certificate certifies another RSA key than the token's".to_owned());
            }
        }
        other => {
            return Err(format!(
                "the certificate's key algorithm {other} is unexpected"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use p256::elliptic_curve::Generate;
    use spki::{EncodePublicKey, SubjectPublicKeyInfoOwned};
    use std::time::SystemTime;
    use ukey_platform_sim::{CaAlgorithm, Issue, TestCa};
    use ukey_protocol::profile::SubjectData;

    fn spki(key: &p256::ecdsa::SigningKey) -> SubjectPublicKeyInfoOwned {
        let der = key.verifying_key().to_public_key_der().unwrap();
        SubjectPublicKeyInfoOwned::from_der(der.as_bytes()).unwrap()
    }

    fn certificate_for(key: &p256::ecdsa::SigningKey) -> Vec<u8> {
        let ca = TestCa::generate(CaAlgorithm::P256, "verify test CA").unwrap();
        let subject = SubjectData {
            company_name: "北京示例科技有限公司".into(),
            credit_code: "91110108MA01ABCD2X".into(),
            legal_representative: "张三".into(),
        };
        let (not_before, not_after) = Issue::window(SystemTime::now(), 30);
        ca.issue(&Issue {
            label: KeyLabel::SealOfficial,
            subject: &subject,
            subject_override: None,
            public_key: &spki(key),
            not_before,
            not_after,
        })
        .unwrap()
    }

    fn ec_public_key(key: &p256::ecdsa::SigningKey, wrapped: bool) -> Attrs {
        let point = key.verifying_key().to_sec1_point(false).as_bytes().to_vec();
        let point = if wrapped {
            [vec![0x04, 0x41], point].concat()
        } else {
            point
        };
        Attrs(vec![
            Attribute::EcPoint(point),
            Attribute::EcParams(P256_PARAMS.to_vec()),
        ])
    }

    #[test]
    fn a_certificate_matches_only_its_own_key() {
        let key = p256::ecdsa::SigningKey::generate_from_rng(&mut rand::rng());
        let other = p256::ecdsa::SigningKey::generate_from_rng(&mut rand::rng());
        let der = certificate_for(&key);
        // Both encodings of CKA_EC_POINT are accepted.
        same_key(&der, &ec_public_key(&key, true)).unwrap();
        same_key(&der, &ec_public_key(&key, false)).unwrap();
        let wrong = same_key(&der, &ec_public_key(&other, true)).unwrap_err();
        assert!(wrong.contains("another EC key"), "{wrong}");
        let missing = same_key(&der, &Attrs(Vec::new())).unwrap_err();
        assert!(missing.contains("CKA_EC_POINT"), "{missing}");
        let garbage = same_key(b"not a certificate", &ec_public_key(&key, true)).unwrap_err();
        assert!(garbage.contains("does not parse"), "{garbage}");
    }

    #[test]
    fn unreadable_flags_are_absent_not_false() {
        let attrs = Attrs(vec![
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
        ]);
        assert_eq!(attrs.flag(AttributeType::Sensitive), Some(true));
        assert_eq!(attrs.flag(AttributeType::Extractable), Some(false));
        assert_eq!(attrs.flag(AttributeType::Local), None);
    }
}
