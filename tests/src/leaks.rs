//! Finding a secret (a PIN, an ID-card number, a mobile number) in bytes the station leaves
//! behind — logs, state files, the broker's database, MQTT payloads — in clear or in the
//! encodings a careless log line or message would use.
//!
//! Rather than encoding the secret in every form and every alignment, [`find`] decodes what
//! could be an encoding: every run of hex digits (either case, from both nibble alignments)
//! and every run of base64 characters (standard and url-safe alphabets, from all four
//! character alignments, which covers the three byte alignments of a substring), and looks
//! for the secret's plain bytes in the result. A secret made only of digits is looked for in
//! clear text only where no digit touches it on either side: a timestamp's digits must not
//! pass for an eight-digit PIN.

/// Where in `haystack` `secret` was found, and in which form (`"plain"`, `"hex"`,
/// `"base64"`), or `None`.
pub fn find(haystack: &[u8], secret: &str) -> Option<(usize, &'static str)> {
    let needle = secret.as_bytes();
    if needle.is_empty() {
        return None;
    }
    if let Some(at) = find_plain(haystack, needle) {
        return Some((at, "plain"));
    }
    for (start, run) in runs(haystack, |b| b.is_ascii_hexdigit(), needle.len() * 2) {
        for skip in 0..2 {
            if contains(&decode_hex(&run[skip..]), needle) {
                return Some((start, "hex"));
            }
        }
    }
    for (start, run) in runs(
        haystack,
        |b| base64_value(b).is_some(),
        needle.len() * 4 / 3,
    ) {
        for skip in 0..4 {
            if run.len() > skip && contains(&decode_base64(&run[skip..]), needle) {
                return Some((start, "base64"));
            }
        }
    }
    None
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn find_plain(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    let digits_only = needle.iter().all(u8::is_ascii_digit);
    haystack
        .windows(needle.len())
        .enumerate()
        .filter(|(_, w)| *w == needle)
        .map(|(i, _)| i)
        .find(|&i| {
            if !digits_only {
                return true;
            }
            let before = i.checked_sub(1).map(|j| haystack[j]);
            let after = haystack.get(i + needle.len()).copied();
            !before.is_some_and(|b| b.is_ascii_digit())
                && !after.is_some_and(|b| b.is_ascii_digit())
        })
}

/// Maximal runs of bytes that `is_member` accepts, at least `min_len` long.
fn runs(haystack: &[u8], is_member: impl Fn(u8) -> bool, min_len: usize) -> Vec<(usize, &[u8])> {
    let mut out = Vec::new();
    let mut start = None;
    for (i, b) in haystack.iter().enumerate() {
        match (is_member(*b), start) {
            (true, None) => start = Some(i),
            (false, Some(s)) => {
                if i - s >= min_len.max(2) {
                    out.push((s, &haystack[s..i]));
                }
                start = None;
            }
            _ => {}
        }
    }
    if let Some(s) = start
        && haystack.len() - s >= min_len.max(2)
    {
        out.push((s, &haystack[s..]));
    }
    out
}

fn decode_hex(run: &[u8]) -> Vec<u8> {
    let nibble = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    run.chunks_exact(2)
        .filter_map(|pair| Some(nibble(pair[0])? << 4 | nibble(pair[1])?))
        .collect()
}

/// A character's value in either base64 alphabet (standard `+/`, url-safe `-_`).
fn base64_value(b: u8) -> Option<u8> {
    match b {
        b'A'..=b'Z' => Some(b - b'A'),
        b'a'..=b'z' => Some(b - b'a' + 26),
        b'0'..=b'9' => Some(b - b'0' + 52),
        b'+' | b'-' => Some(62),
        b'/' | b'_' => Some(63),
        _ => None,
    }
}

fn decode_base64(run: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(run.len() * 3 / 4);
    let mut bits: u32 = 0;
    let mut count = 0;
    for value in run.iter().filter_map(|b| base64_value(*b)) {
        bits = (bits << 6) | u32::from(value);
        count += 6;
        if count >= 8 {
            count -= 8;
            out.push((bits >> count) as u8);
            bits &= (1 << count) - 1;
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use base64::Engine as _;
    use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};

    use super::find;

    const PIN: &str = "48213977";
    const SO_PIN: &str = "Xq7#kP2m9Lr4Tz8W";
    const ID: &str = "11010519491231002X";

    /// Every form the canary looks for is found, wherever the secret sits in what is encoded.
    #[test]
    fn every_encoding_at_every_alignment_is_found() {
        for secret in [PIN, SO_PIN, ID] {
            let plain = format!("{{\"msg\":\"x\",\"pin\":\"{secret}\"}}");
            assert_eq!(find(plain.as_bytes(), secret).unwrap().1, "plain");
            for upper in [false, true] {
                let mut hex = hex::encode(format!("pin={secret};"));
                if upper {
                    hex = hex.to_uppercase();
                }
                let text = format!("data={hex} end");
                assert_eq!(find(text.as_bytes(), secret).unwrap().1, "hex", "{text}");
            }
            for pad in 0..3 {
                let mut bytes = vec![b'#'; pad + 5];
                bytes.extend_from_slice(secret.as_bytes());
                bytes.extend_from_slice(b" and more");
                for text in [STANDARD.encode(&bytes), URL_SAFE_NO_PAD.encode(&bytes)] {
                    // In the middle of a line, with a base64 character before it.
                    let line = format!("payload: a{text}=\n");
                    assert!(find(line.as_bytes(), secret).is_some(), "{line}");
                }
            }
        }
    }

    #[test]
    fn other_text_is_not_taken_for_a_secret() {
        // A digits-only PIN inside a longer number is not a match; next to letters it is.
        let log = b"2026-12-07T04:50:03.448213977123Z seq=1148213977";
        assert_eq!(find(log, PIN), None);
        assert!(find(b"user_pin=48213977,", PIN).is_some());
        assert_eq!(find(b"nothing to see: deadbeef QUJDRA==", SO_PIN), None);
    }
}
