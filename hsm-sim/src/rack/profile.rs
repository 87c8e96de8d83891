//! Vendor profiles: the built-in kinds of Ukey `hsm-sim insert --model NAME` plugs in.
//!
//! Real Ukeys differ in ways that break a desk built against one simulator: the USB serial
//! string is not the token serial (or is missing), the vendor module numbers its slots its
//! own way, tokens leave the factory initialized with a transport PIN, some modules refuse
//! `C_InitToken`, offer only raw `CKM_ECDSA` or only RSA, have their own PIN bounds and fill
//! up after a few objects. A [`ModelProfile`] names one such combination; `default` is the
//! simulator's original token and stays the default.
//!
//! This module is data and pure functions (which slot id a module gives a new token); the
//! rack stores a token's profile by name and the module's engine looks its behaviour up here.

use cryptoki_sys::*;
use serde::Serialize;

use super::latency::Profile as Latency;
use super::token::TokenSettings;

/// How the USB iSerialNumber string relates to the PKCS#11 token serial.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum UsbSerial {
    /// The USB serial string is the token serial.
    Equal,
    /// The USB serial string is another number (the chip's, the reader's).
    Differs,
    /// The device has no USB serial string.
    Absent,
}

/// How the module numbers its slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SlotNumbering {
    /// The slot id is the port's number: the same port, the same id (0, 1, …).
    ByPort,
    /// Ids from [`INSERTION_ORDER_BASE`] are handed out in order of insertion, each token
    /// the lowest id no present token holds: a token re-plugged after another arrived may
    /// get another id (a slot per reader, readers numbered as they appear).
    InsertionOrder,
    /// Every insertion gets a new id, [`RENUMBERED_BASE`] + the insertion number: the same
    /// token, re-plugged into the same port, never has its old id.
    RenumberedOnReplug,
}

/// First slot id of [`SlotNumbering::InsertionOrder`] (above any port number).
pub const INSERTION_ORDER_BASE: u64 = 0x100;
/// First slot id of [`SlotNumbering::RenumberedOnReplug`] (above the insertion-order ids).
pub const RENUMBERED_BASE: u64 = 0x200;

/// Which mechanisms the module offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mechanisms {
    /// Every mechanism of the simulator.
    All,
    /// No hash-and-sign mechanisms (`CKM_ECDSA_SHA256`, `CKM_SHA256_RSA_PKCS`,
    /// `CKM_SHA256_RSA_PKCS_PSS`): the caller hashes and signs with raw `CKM_ECDSA` or
    /// `CKM_RSA_PKCS` over a DigestInfo.
    RawSignOnly,
    /// RSA only: no EC key generation, ECDSA or ECDH.
    RsaOnly,
}

impl Mechanisms {
    /// Whether the module offers `mech`.
    pub fn offers(self, mech: CK_MECHANISM_TYPE) -> bool {
        match self {
            Mechanisms::All => true,
            Mechanisms::RawSignOnly => !matches!(
                mech,
                CKM_ECDSA_SHA256 | CKM_SHA256_RSA_PKCS | CKM_SHA256_RSA_PKCS_PSS
            ),
            Mechanisms::RsaOnly => !matches!(
                mech,
                CKM_EC_KEY_PAIR_GEN | CKM_ECDSA | CKM_ECDSA_SHA256 | CKM_ECDH1_DERIVE
            ),
        }
    }
}

/// An object the token holds when it leaves the factory (a vendor's demo certificate).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct FactoryObject {
    /// `CKA_LABEL`.
    pub label: &'static str,
    /// `CKA_ID` (hex).
    pub id: &'static str,
}

/// How the token leaves the factory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "state")]
pub enum FactoryState {
    /// Not initialized: `C_InitToken` sets the SO PIN.
    Uninitialized,
    /// Initialized, with a transport SO PIN (printed on the batch sheet).
    Initialized {
        /// The transport SO PIN.
        so_pin: &'static str,
        /// The transport user PIN, if the factory sets one.
        user_pin: Option<&'static str>,
        /// The factory's token label.
        label: &'static str,
        /// Public objects the factory put on it.
        objects: &'static [FactoryObject],
    },
}

/// A kind of Ukey.
#[derive(Debug, Clone, Serialize)]
pub struct ModelProfile {
    /// The name `--model` takes.
    pub name: &'static str,
    /// What it simulates, in a line.
    pub summary: &'static str,
    /// Which real behaviour it stands for, and how that is known.
    pub stands_for: &'static str,
    /// USB vendor id.
    pub vendor_id: u16,
    /// USB product id.
    pub product_id: u16,
    /// USB product string, and `CK_TOKEN_INFO.model`.
    pub product: &'static str,
    /// `CK_TOKEN_INFO.manufacturerID` and the USB manufacturer string.
    pub manufacturer: &'static str,
    /// The USB serial string.
    pub usb_serial: UsbSerial,
    /// Slot numbering of the module.
    pub slots: SlotNumbering,
    /// `CK_SLOT_INFO.slotDescription`: `{port}` is replaced by the USB port path, `{n}` by
    /// the slot id.
    pub slot_description: &'static str,
    /// Factory state.
    pub factory: FactoryState,
    /// Whether the module implements `C_InitToken` (else `CKR_FUNCTION_NOT_SUPPORTED`).
    pub init_token: bool,
    /// PIN bounds, retry counters and storage.
    pub settings: TokenSettings,
    /// Mechanisms offered.
    pub mechanisms: Mechanisms,
    /// Latency profile of new tokens.
    pub latency: Latency,
}

/// The name of the profile of tokens made without `--model`.
pub const DEFAULT: &str = "default";

/// Settings with these bounds and limits, the simulator's USB ids replaced.
const fn settings(
    (pin_min, pin_max): (usize, usize),
    (user_retries, so_retries): (u32, u32),
    (max_objects, max_bytes): (usize, usize),
    (vendor_id, product_id): (u16, u16),
) -> TokenSettings {
    TokenSettings {
        user_retries,
        so_retries,
        pin_min,
        pin_max,
        max_objects,
        max_bytes,
        vendor_id,
        product_id,
        interface: super::token::Interface::Pkcs11,
    }
}

const FACTORY_DEMO: &[FactoryObject] = &[FactoryObject {
    label: "factory-demo",
    id: "f0",
}];

/// Every built-in profile, `default` first.
pub fn all() -> Vec<ModelProfile> {
    vec![
        ModelProfile {
            name: DEFAULT,
            summary: "the simulator's own Ukey: blank, every mechanism, slot id = port",
            stands_for: "no particular product: the token every test used before profiles",
            vendor_id: super::token::DEFAULT_VENDOR_ID,
            product_id: super::token::DEFAULT_PRODUCT_ID,
            product: "Ukey-Sim",
            manufacturer: "ukey-station hsm-sim",
            usb_serial: UsbSerial::Equal,
            slots: SlotNumbering::ByPort,
            slot_description: "hsm-sim rack slot {n} (USB {port})",
            factory: FactoryState::Uninitialized,
            init_token: true,
            settings: settings(
                (4, 32),
                (6, 10),
                (48, 64 * 1024),
                (
                    super::token::DEFAULT_VENDOR_ID,
                    super::token::DEFAULT_PRODUCT_ID,
                ),
            ),
            mechanisms: Mechanisms::All,
            latency: Latency::Instant,
        },
        ModelProfile {
            name: "epass2003",
            summary: "Feitian ePass2003 as OpenSC serves it: USB serial is not the token \
                      serial, slots numbered in order of insertion, raw signing only",
            stands_for: "Feitian ePass2003 (USB 096e:0807 in the public usb.ids list) behind \
                         OpenSC's opensc-pkcs11.so: the USB ids are public; that the module \
                         numbers slots per reader in order of appearance and that the token \
                         serial comes from the card, not the USB descriptor, is OpenSC's \
                         documented reader model; the mechanism list, PIN bounds and retry \
                         counts here are representative, not read from a device",
            vendor_id: 0x096e,
            product_id: 0x0807,
            product: "ePass2003 (sim)",
            manufacturer: "hsm-sim as EnterSafe",
            usb_serial: UsbSerial::Differs,
            slots: SlotNumbering::InsertionOrder,
            slot_description: "Feitian ePass2003 {n}",
            factory: FactoryState::Uninitialized,
            init_token: true,
            settings: settings((4, 16), (10, 10), (32, 64 * 1024), (0x096e, 0x0807)),
            mechanisms: Mechanisms::RawSignOnly,
            latency: Latency::Realistic,
        },
        ModelProfile {
            name: "factory-pin",
            summary: "initialized at the factory with a transport SO PIN (12345678), user PIN \
                      123456, label \"Factory\" and a demo object; no C_InitToken; new slot \
                      id on every plug; no USB serial",
            stands_for: "vendor Ukeys shipped initialized with PINs printed on the batch \
                         sheet, whose modules refuse C_InitToken (known from vendor manuals \
                         and CA desks' practice, not from a device here); the low SO retry \
                         count makes a wrong transport PIN dangerous on purpose",
            vendor_id: super::token::DEFAULT_VENDOR_ID,
            product_id: 0x4b02,
            product: "Ukey-Sim Factory",
            manufacturer: "ukey-station hsm-sim",
            usb_serial: UsbSerial::Absent,
            slots: SlotNumbering::RenumberedOnReplug,
            slot_description: "Ukey-Sim Factory reader {n}",
            factory: FactoryState::Initialized {
                so_pin: "12345678",
                user_pin: Some("123456"),
                label: "Factory",
                objects: FACTORY_DEMO,
            },
            init_token: false,
            settings: settings(
                (6, 16),
                (6, 3),
                (48, 64 * 1024),
                (super::token::DEFAULT_VENDOR_ID, 0x4b02),
            ),
            mechanisms: Mechanisms::All,
            latency: Latency::Instant,
        },
        ModelProfile {
            name: "rsa-only",
            summary: "RSA only (no EC), PINs of exactly 8 characters, slot id = port",
            stands_for: "older card-OS tokens whose applet does RSA alone and whose PIN \
                         policy is narrow (a common class; no product measured)",
            vendor_id: super::token::DEFAULT_VENDOR_ID,
            product_id: 0x4b03,
            product: "Ukey-Sim RSA",
            manufacturer: "ukey-station hsm-sim",
            usb_serial: UsbSerial::Equal,
            slots: SlotNumbering::ByPort,
            slot_description: "Ukey-Sim RSA slot {n} (USB {port})",
            factory: FactoryState::Uninitialized,
            init_token: true,
            settings: settings(
                (8, 8),
                (5, 5),
                (24, 32 * 1024),
                (super::token::DEFAULT_VENDOR_ID, 0x4b03),
            ),
            mechanisms: Mechanisms::RsaOnly,
            latency: Latency::Instant,
        },
        ModelProfile {
            name: "tiny",
            summary: "storage for 4 objects: the third key pair does not fit \
                      (CKR_DEVICE_MEMORY)",
            stands_for: "low-cost tokens with a few KiB of EEPROM (a common class; no \
                         product measured)",
            vendor_id: super::token::DEFAULT_VENDOR_ID,
            product_id: 0x4b04,
            product: "Ukey-Sim Tiny",
            manufacturer: "ukey-station hsm-sim",
            usb_serial: UsbSerial::Equal,
            slots: SlotNumbering::ByPort,
            slot_description: "Ukey-Sim Tiny slot {n} (USB {port})",
            factory: FactoryState::Uninitialized,
            init_token: true,
            settings: settings(
                (4, 32),
                (6, 10),
                (4, 64 * 1024),
                (super::token::DEFAULT_VENDOR_ID, 0x4b04),
            ),
            mechanisms: Mechanisms::All,
            latency: Latency::Instant,
        },
    ]
}

/// The profile named `name` (case-insensitive).
pub fn by_name(name: &str) -> Option<ModelProfile> {
    all()
        .into_iter()
        .find(|p| p.name.eq_ignore_ascii_case(name.trim()))
}

/// The profile a stored token names; `default` for a name this build does not know (a
/// state directory from an older or newer build still works).
pub fn of_token(name: &str) -> ModelProfile {
    by_name(name)
        .or_else(|| by_name(DEFAULT))
        .unwrap_or_else(unreachable_default)
}

fn unreachable_default() -> ModelProfile {
    // `all()` always holds `default`; this keeps the lookup total without a panic.
    all().swap_remove(0)
}

impl ModelProfile {
    /// The USB serial string a token with this serial reports (empty: none).
    pub fn usb_serial_of(&self, serial: &str) -> String {
        match self.usb_serial {
            UsbSerial::Equal => serial.to_string(),
            // Another number, stable per token: what a chip or reader serial looks like.
            UsbSerial::Differs => {
                use sha2::{Digest, Sha256};
                let h = Sha256::digest(serial.as_bytes());
                format!("FT{}", hex::encode_upper(&h[..6]))
            }
            UsbSerial::Absent => String::new(),
        }
    }

    /// `CK_SLOT_INFO.slotDescription` of slot `id` on port `port`.
    pub fn describe_slot(&self, id: u64, port: &str) -> String {
        self.slot_description
            .replace("{n}", &id.to_string())
            .replace("{port}", port)
    }
}

/// The slot id the module gives a token inserted into port `index` as insertion
/// `insertion`, when the present tokens hold the ids `taken` (pure).
pub fn assign_slot_id(
    numbering: SlotNumbering,
    index: usize,
    insertion: u64,
    taken: &[u64],
) -> u64 {
    match numbering {
        SlotNumbering::ByPort => index as u64,
        SlotNumbering::InsertionOrder => (INSERTION_ORDER_BASE..)
            .find(|id| !taken.contains(id))
            .unwrap_or(INSERTION_ORDER_BASE),
        SlotNumbering::RenumberedOnReplug => RENUMBERED_BASE + insertion,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn every_profile_is_valid_and_named_once() {
        let all = all();
        assert_eq!(all[0].name, DEFAULT);
        for p in &all {
            p.settings.validate().unwrap();
            assert_eq!(all.iter().filter(|q| q.name == p.name).count(), 1);
            assert_eq!(
                (p.settings.vendor_id, p.settings.product_id),
                (p.vendor_id, p.product_id)
            );
            if let FactoryState::Initialized {
                so_pin, user_pin, ..
            } = p.factory
            {
                let (min, max) = (p.settings.pin_min, p.settings.pin_max);
                assert!((min..=max).contains(&so_pin.len()), "{}", p.name);
                assert!(user_pin.is_none_or(|u| (min..=max).contains(&u.len())));
            }
        }
        assert_eq!(by_name("EPASS2003").unwrap().product_id, 0x0807);
        assert!(by_name("nope").is_none());
        assert_eq!(of_token("nope").name, DEFAULT);
    }

    #[test]
    fn the_default_profile_is_the_original_token() {
        let d = by_name(DEFAULT).unwrap();
        assert_eq!(d.settings, TokenSettings::default());
        assert_eq!(d.usb_serial_of("0123456789ABCDEF"), "0123456789ABCDEF");
        assert_eq!(d.slots, SlotNumbering::ByPort);
        assert!(d.init_token);
    }

    #[test]
    fn usb_serials_follow_the_relation() {
        let e = by_name("epass2003").unwrap();
        let a = e.usb_serial_of("0123456789ABCDEF");
        assert_ne!(a, "0123456789ABCDEF");
        assert_eq!(a, e.usb_serial_of("0123456789ABCDEF"), "stable per token");
        assert_eq!(by_name("factory-pin").unwrap().usb_serial_of("X"), "");
    }

    #[test]
    fn slot_ids_follow_the_numbering() {
        assert_eq!(assign_slot_id(SlotNumbering::ByPort, 3, 9, &[]), 3);
        let io = SlotNumbering::InsertionOrder;
        assert_eq!(assign_slot_id(io, 3, 9, &[]), INSERTION_ORDER_BASE);
        assert_eq!(
            assign_slot_id(io, 0, 9, &[INSERTION_ORDER_BASE, INSERTION_ORDER_BASE + 2]),
            INSERTION_ORDER_BASE + 1
        );
        let r = SlotNumbering::RenumberedOnReplug;
        assert_ne!(assign_slot_id(r, 1, 4, &[]), assign_slot_id(r, 1, 5, &[]));
    }

    #[test]
    fn mechanism_sets() {
        assert!(Mechanisms::All.offers(CKM_ECDSA_SHA256));
        assert!(!Mechanisms::RawSignOnly.offers(CKM_ECDSA_SHA256));
        assert!(Mechanisms::RawSignOnly.offers(CKM_ECDSA));
        assert!(!Mechanisms::RsaOnly.offers(CKM_EC_KEY_PAIR_GEN));
        assert!(Mechanisms::RsaOnly.offers(CKM_RSA_PKCS_KEY_PAIR_GEN));
    }
}
