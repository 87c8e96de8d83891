//! Chinese identifiers and contact data: unified social credit codes (GB 32100-2015),
//! resident ID-card numbers (GB 11643-1999), mainland mobile numbers, landlines, e-mail.
//!
//! Checks return a [`Problem`]; messages wrap it with the field path. The newtypes that carry
//! personal data ([`IdCardNumber`], [`Mobile`], [`Landline`], [`Email`]) never print their
//! content in `Debug` and have no `Display`, so they cannot end up in a log line by accident.
//! The generators ([`credit_code_with_check`], [`id_card_with_check`]) let demos and tests
//! make valid made-up companies and people. Whether a code was really issued is not checked.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::{Problem, ProtocolError};

/// The 31 characters of a unified social credit code (no I, O, S, V, Z).
pub const CREDIT_CODE_ALPHABET: &str = "0123456789ABCDEFGHJKLMNPQRTUWXY";

fn credit_value(c: char) -> Option<u32> {
    CREDIT_CODE_ALPHABET
        .chars()
        .position(|a| a == c)
        .and_then(|p| u32::try_from(p).ok())
}

/// The check character for the first 17 characters of a credit code (weights 3^i mod 31).
fn credit_check(body: &str) -> Result<char, Problem> {
    let mut sum = 0u32;
    let mut weight = 1u32;
    for (position, c) in body.chars().enumerate() {
        let value = credit_value(c).ok_or(Problem::BadCharacter { position })?;
        sum += value * weight;
        weight = weight * 3 % 31;
    }
    let check = (31 - sum % 31) % 31;
    CREDIT_CODE_ALPHABET
        .chars()
        .nth(check as usize)
        .ok_or(Problem::CheckCharacterMismatch)
}

/// Checks a unified social credit code: 18 characters from [`CREDIT_CODE_ALPHABET`], the
/// last one the GB 32100-2015 check character.
pub fn check_credit_code(code: &str) -> Result<(), Problem> {
    let len = code.chars().count();
    if len != 18 {
        return Err(Problem::WrongLength {
            expected: 18,
            got: len,
        });
    }
    let body: String = code.chars().take(17).collect();
    let expected = credit_check(&body)?;
    let got = code.chars().nth(17);
    if got.and_then(credit_value).is_none() {
        return Err(Problem::BadCharacter { position: 17 });
    }
    if got != Some(expected) {
        return Err(Problem::CheckCharacterMismatch);
    }
    Ok(())
}

/// Appends the check character to the first 17 characters of a credit code.
pub fn credit_code_with_check(first17: &str) -> Result<String, ProtocolError> {
    let len = first17.chars().count();
    if len != 17 {
        return Err(ProtocolError::invalid(
            "credit_code",
            Problem::WrongLength {
                expected: 17,
                got: len,
            },
        ));
    }
    let check = credit_check(first17).map_err(|p| ProtocolError::invalid("credit_code", p))?;
    Ok(format!("{first17}{check}"))
}

const ID_WEIGHTS: [u32; 17] = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2];
const ID_CHECKS: &[u8; 11] = b"10X98765432";

fn id_check(body: &str) -> Result<char, Problem> {
    let mut sum = 0u32;
    for (position, (c, w)) in body.chars().zip(ID_WEIGHTS).enumerate() {
        let d = c.to_digit(10).ok_or(Problem::BadCharacter { position })?;
        sum += d * w;
    }
    Ok(char::from(ID_CHECKS[(sum % 11) as usize]))
}

fn check_birth_date(body: &str) -> Result<(), Problem> {
    let digits = |r: std::ops::Range<usize>| body.get(r).and_then(|s| s.parse::<u16>().ok());
    let (Some(year), Some(month), Some(day)) = (digits(6..10), digits(10..12), digits(12..14))
    else {
        return Err(Problem::BadBirthDate);
    };
    if !(1900..=2100).contains(&year) {
        return Err(Problem::BadBirthDate);
    }
    let month = u8::try_from(month)
        .ok()
        .and_then(|m| time::Month::try_from(m).ok())
        .ok_or(Problem::BadBirthDate)?;
    let day = u8::try_from(day).map_err(|_| Problem::BadBirthDate)?;
    time::Date::from_calendar_date(i32::from(year), month, day)
        .map(|_| ())
        .map_err(|_| Problem::BadBirthDate)
}

/// Checks a resident ID-card number: 17 digits (the 7th-14th a real date, year 1900-2100)
/// and the GB 11643-1999 check character (`0`-`9` or upper-case `X`).
pub fn check_id_card(number: &str) -> Result<(), Problem> {
    let len = number.chars().count();
    if len != 18 {
        return Err(Problem::WrongLength {
            expected: 18,
            got: len,
        });
    }
    if !number.is_ascii() {
        let position = number.chars().position(|c| !c.is_ascii()).unwrap_or(0);
        return Err(Problem::BadCharacter { position });
    }
    let (body, last) = number.split_at(17);
    let expected = id_check(body)?;
    if !last.chars().all(|c| c.is_ascii_digit() || c == 'X') {
        return Err(Problem::BadCharacter { position: 17 });
    }
    check_birth_date(body)?;
    if !last.starts_with(expected) {
        return Err(Problem::CheckCharacterMismatch);
    }
    Ok(())
}

/// Appends the check character to the first 17 digits of an ID-card number.
pub fn id_card_with_check(first17: &str) -> Result<String, ProtocolError> {
    let len = first17.chars().count();
    if len != 17 {
        return Err(ProtocolError::invalid(
            "id_number",
            Problem::WrongLength {
                expected: 17,
                got: len,
            },
        ));
    }
    let check = id_check(first17).map_err(|p| ProtocolError::invalid("id_number", p))?;
    Ok(format!("{first17}{check}"))
}

/// Checks a mainland mobile number: 11 digits, `1` then `3`-`9`.
pub fn check_mobile(number: &str) -> Result<(), Problem> {
    let b = number.as_bytes();
    if b.len() == 11
        && b.iter().all(u8::is_ascii_digit)
        && b[0] == b'1'
        && (b'3'..=b'9').contains(&b[1])
    {
        Ok(())
    } else {
        Err(Problem::BadMobile)
    }
}

/// Checks a landline: digits with single `-` separators (e.g. `010-12345678`,
/// `0755-1234567-801`), 7 to 18 digits, starting and ending with a digit.
pub fn check_landline(number: &str) -> Result<(), Problem> {
    let b = number.as_bytes();
    let digits = b.iter().filter(|c| c.is_ascii_digit()).count();
    let ok = b.iter().all(|c| c.is_ascii_digit() || *c == b'-')
        && b.first().is_some_and(u8::is_ascii_digit)
        && b.last().is_some_and(u8::is_ascii_digit)
        && !number.contains("--")
        && (7..=18).contains(&digits);
    if ok {
        Ok(())
    } else {
        Err(Problem::BadLandline)
    }
}

/// Checks an e-mail address, loosely: `local@domain.tld`, at most 254 ASCII characters,
/// no whitespace.
pub fn check_email(address: &str) -> Result<(), Problem> {
    if address.len() > 254 {
        return Err(Problem::TooLong { max: 254 });
    }
    let ok = address.is_ascii()
        && !address
            .chars()
            .any(|c| c.is_ascii_whitespace() || c.is_ascii_control())
        && match address.split_once('@') {
            Some((local, domain)) => {
                !local.is_empty()
                    && !domain.contains('@')
                    && domain.contains('.')
                    && !domain.starts_with('.')
                    && !domain.ends_with('.')
                    && !domain.contains("..")
            }
            None => false,
        };
    if ok { Ok(()) } else { Err(Problem::BadEmail) }
}

fn masked(s: &str, keep_front: usize, keep_back: usize) -> String {
    let n = s.chars().count();
    if n <= keep_front + keep_back {
        return "*".repeat(n);
    }
    s.chars()
        .enumerate()
        .map(|(i, c)| {
            if i < keep_front || i >= n - keep_back {
                c
            } else {
                '*'
            }
        })
        .collect()
}

macro_rules! checked_string {
    ($(#[$doc:meta])* $name:ident, $what:literal, $check:path, redacted) => {
        checked_string!(@common $(#[$doc])* $name, $what, $check);
        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(concat!(stringify!($name), "(<redacted>)"))
            }
        }
    };
    ($(#[$doc:meta])* $name:ident, $what:literal, $check:path, public) => {
        checked_string!(@common $(#[$doc])* $name, $what, $check);
        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "({:?})"), self.0)
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
    (@common $(#[$doc:meta])* $name:ident, $what:literal, $check:path) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// Checks and wraps `s`.
            pub fn new(s: impl Into<String>) -> Result<$name, ProtocolError> {
                let v = $name(s.into());
                v.check($what)?;
                Ok(v)
            }

            /// Checks the rules, reporting a violation at `path`.
            pub fn check(&self, path: &str) -> Result<(), ProtocolError> {
                $check(&self.0).map_err(|p| ProtocolError::invalid(path, p))
            }

            /// The value, for writing into a certificate subject or a form — never into a log.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }
    };
}

checked_string!(
    /// A unified social credit code (统一社会信用代码). Public registry data: prints normally.
    CreditCode, "credit_code", check_credit_code, public
);
checked_string!(
    /// A resident ID-card number (居民身份证号码). Personal data: `Debug` prints `<redacted>`.
    IdCardNumber, "id_number", check_id_card, redacted
);
checked_string!(
    /// A mainland mobile number. Personal data: `Debug` prints `<redacted>`.
    Mobile, "mobile", check_mobile, redacted
);
checked_string!(
    /// A landline number. May be a person's: `Debug` prints `<redacted>`.
    Landline, "landline", check_landline, redacted
);
checked_string!(
    /// An e-mail address. Personal data: `Debug` prints `<redacted>`.
    Email, "email", check_email, redacted
);

impl IdCardNumber {
    /// A display form for operators: first 3 and last 1 characters, e.g. `110**************X`.
    pub fn masked(&self) -> String {
        masked(&self.0, 3, 1)
    }
}

impl Mobile {
    /// A display form for operators: `138****0000`.
    pub fn masked(&self) -> String {
        masked(&self.0, 3, 4)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn credit_code_known_good() {
        // A widely published example code (structure and check character valid).
        check_credit_code("91350100M000100Y43").unwrap();
        assert_eq!(
            credit_code_with_check("91350100M000100Y4").unwrap(),
            "91350100M000100Y43"
        );
    }

    #[test]
    fn credit_code_rules() {
        assert_eq!(
            check_credit_code("91350100M000100Y44"),
            Err(Problem::CheckCharacterMismatch)
        );
        assert_eq!(
            check_credit_code("91350100M000100Y4"),
            Err(Problem::WrongLength {
                expected: 18,
                got: 17
            })
        );
        assert_eq!(
            check_credit_code("9135010OM000100Y43"),
            Err(Problem::BadCharacter { position: 7 })
        );
        assert!(credit_code_with_check("9135010IM000100Y4").is_err());
    }

    #[test]
    fn credit_check_31_maps_to_0() {
        // A body whose weighted sum is divisible by 31 gets check character '0', not '31'.
        let weights: Vec<u32> = (0..17)
            .scan(1u32, |w, _| {
                let cur = *w;
                *w = *w * 3 % 31;
                Some(cur)
            })
            .collect();
        assert_eq!(weights[..4], [1, 3, 9, 27]);
        let body = (0..10_000)
            .map(|n| format!("9111000000000{n:04}"))
            .find(|b| {
                let sum: u32 = b
                    .chars()
                    .zip(&weights)
                    .map(|(c, w)| credit_value(c).unwrap() * w)
                    .sum();
                sum.is_multiple_of(31)
            })
            .unwrap();
        assert!(credit_code_with_check(&body).unwrap().ends_with('0'));
    }

    #[test]
    fn id_card_known_good() {
        // The GB 11643-1999 standard's own worked example.
        check_id_card("11010519491231002X").unwrap();
        assert_eq!(
            id_card_with_check("11010519491231002").unwrap(),
            "11010519491231002X"
        );
    }

    #[test]
    fn id_card_rules() {
        assert_eq!(
            check_id_card("110105194912310021"),
            Err(Problem::CheckCharacterMismatch)
        );
        assert_eq!(
            check_id_card("11010519491231002x"),
            Err(Problem::BadCharacter { position: 17 })
        );
        let feb30 = id_card_with_check("11010519490230002").unwrap();
        assert_eq!(check_id_card(&feb30), Err(Problem::BadBirthDate));
        let y1800 = id_card_with_check("11010518001231002").unwrap();
        assert_eq!(check_id_card(&y1800), Err(Problem::BadBirthDate));
        assert!(matches!(
            check_id_card("1101051949123100"),
            Err(Problem::WrongLength { .. })
        ));
    }

    #[test]
    fn mobile_rules() {
        check_mobile("13800138000").unwrap();
        check_mobile("19912345678").unwrap();
        for bad in [
            "12800138000",
            "1380013800",
            "138001380000",
            "+8613800138000",
            "1380013800a",
        ] {
            assert_eq!(check_mobile(bad), Err(Problem::BadMobile), "{bad}");
        }
    }

    #[test]
    fn landline_and_email_rules() {
        check_landline("010-12345678").unwrap();
        check_landline("0755-1234567-801").unwrap();
        for bad in ["010--12345678", "-01012345678", "123456", "010 1234567"] {
            assert_eq!(check_landline(bad), Err(Problem::BadLandline), "{bad}");
        }
        check_email("legal@example.com.cn").unwrap();
        for bad in ["a@b", "@b.cn", "a b@c.cn", "a@@b.cn", "a@b..cn"] {
            assert_eq!(check_email(bad), Err(Problem::BadEmail), "{bad}");
        }
    }

    #[test]
    fn personal_data_never_prints() {
        let id = IdCardNumber::new("11010519491231002X").unwrap();
        let mobile = Mobile::new("13800138000").unwrap();
        let all = format!("{id:?} {mobile:?} {:?}", Email::new("a@b.cn").unwrap());
        assert!(!all.contains("1949"));
        assert!(!all.contains("0013"));
        assert!(!all.contains("a@b"));
        assert_eq!(id.masked(), "110**************X");
        assert_eq!(mobile.masked(), "138****8000");
    }
}
