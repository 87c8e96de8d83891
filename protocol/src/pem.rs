//! PEM text as operators keep it: read leniently (RFC 7468 §2, "lax" parsing).
//!
//! Key and certificate files are copied between machines and editors, so line ends may be
//! CRLF, lines may be wrapped at another width, and text may stand before or between the
//! blocks. All of that is accepted here; what is refused gets an error that names the block
//! and the problem (an encrypted key, a SEC1 `EC PRIVATE KEY` where PKCS#8 is expected, bad
//! base64). This module only finds blocks and decodes them; the key types parse the DER.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use zeroize::Zeroizing;

use crate::error::ProtocolError;

/// One `-----BEGIN label-----` … `-----END label-----` block, decoded.
pub struct PemBlock {
    /// The block's label, e.g. `PRIVATE KEY`.
    pub label: String,
    /// The decoded content (zeroized on drop: it may be a private key).
    pub der: Zeroizing<Vec<u8>>,
}

fn err(what: &'static str, detail: String) -> ProtocolError {
    ProtocolError::Key { what, detail }
}

/// Every block in `text`, in order. `what` names the file's purpose in errors.
pub fn blocks(text: &str, what: &'static str) -> Result<Vec<PemBlock>, ProtocolError> {
    let mut out = Vec::new();
    let mut open: Option<(String, usize, Zeroizing<String>)> = None;
    for (number, line) in text.lines().enumerate() {
        let line = line.trim();
        match &mut open {
            None => {
                if let Some(label) = line
                    .strip_prefix("-----BEGIN ")
                    .and_then(|l| l.strip_suffix("-----"))
                {
                    open = Some((label.to_owned(), number + 1, Zeroizing::new(String::new())));
                }
            }
            Some((label, start, body)) => {
                if let Some(end) = line
                    .strip_prefix("-----END ")
                    .and_then(|l| l.strip_suffix("-----"))
                {
                    if end != label.as_str() {
                        return Err(err(
                            what,
                            format!("PEM block \"{label}\" from line {start} ends with \"{end}\""),
                        ));
                    }
                    let der = STANDARD.decode(body.as_bytes()).map_err(|e| {
                        err(
                            what,
                            format!("PEM block \"{label}\" from line {start}: bad base64: {e}"),
                        )
                    })?;
                    out.push(PemBlock {
                        label: std::mem::take(label),
                        der: Zeroizing::new(der),
                    });
                    open = None;
                } else if line.contains(':') {
                    // RFC 1421 headers: only encrypted legacy keys carry them.
                    return Err(err(
                        what,
                        format!(
                            "PEM block \"{label}\" from line {start} has headers (an encrypted \
                             key?); an unencrypted PKCS#8 key is needed"
                        ),
                    ));
                } else {
                    body.push_str(line);
                }
            }
        }
    }
    if let Some((label, start, _)) = open {
        return Err(err(
            what,
            format!("PEM block \"{label}\" from line {start} has no END line"),
        ));
    }
    Ok(out)
}

/// The content of the single block labelled `label` in `text`. A file with none, with
/// several, or with only blocks of other labels is refused, naming what it holds.
pub fn single(
    text: &str,
    label: &str,
    what: &'static str,
) -> Result<Zeroizing<Vec<u8>>, ProtocolError> {
    let all = blocks(text, what)?;
    let found: Vec<String> = all.iter().map(|b| b.label.clone()).collect();
    let mut matching = all.into_iter().filter(|b| b.label == label);
    match (matching.next(), matching.next()) {
        (Some(block), None) => Ok(block.der),
        (Some(_), Some(_)) => Err(err(what, format!("more than one \"{label}\" PEM block"))),
        (None, _) if found.is_empty() => Err(err(what, "no PEM block found".to_owned())),
        (None, _) => {
            let hint = match (label, found.first().map(String::as_str)) {
                ("PRIVATE KEY", Some("EC PRIVATE KEY" | "RSA PRIVATE KEY")) => {
                    " (convert it to PKCS#8: openssl pkcs8 -topk8 -nocrypt -in OLD -out NEW)"
                }
                ("PRIVATE KEY", Some("ENCRYPTED PRIVATE KEY")) => {
                    " (decrypt it: openssl pkcs8 -topk8 -nocrypt -in OLD -out NEW)"
                }
                _ => "",
            };
            Err(err(
                what,
                format!(
                    "expected a \"{label}\" PEM block, found {}{hint}",
                    found
                        .iter()
                        .map(|l| format!("\"{l}\""))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ))
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    const BODY: &str =
        "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8gISIjJCUmJygpKissLS4vMDEyMzQ1Njc4OTo7PD0+Pw==";

    fn expected() -> Vec<u8> {
        (0u8..64).collect()
    }

    #[test]
    fn crlf_rewrapped_and_commented_text_is_read() {
        let wrapped: Vec<&str> = BODY
            .as_bytes()
            .chunks(20)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect();
        let text = format!(
            "station key, made 2026\r\n-----BEGIN PRIVATE KEY-----\r\n{}\r\n-----END PRIVATE KEY-----\r\n\r\n",
            wrapped.join("\r\n")
        );
        assert_eq!(*single(&text, "PRIVATE KEY", "k").unwrap(), expected());
    }

    #[test]
    fn several_blocks_come_back_in_order() {
        let text = format!(
            "-----BEGIN CERTIFICATE-----\n{BODY}\n-----END CERTIFICATE-----\nnote\n-----BEGIN CERTIFICATE-----\nAAE=\n-----END CERTIFICATE-----\n"
        );
        let all = blocks(&text, "c").unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(*all[1].der, vec![0u8, 1]);
    }

    #[test]
    fn refusals_say_what_is_wrong() {
        let sec1 =
            format!("-----BEGIN EC PRIVATE KEY-----\n{BODY}\n-----END EC PRIVATE KEY-----\n");
        let e = single(&sec1, "PRIVATE KEY", "trust.station_key")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("EC PRIVATE KEY") && e.contains("openssl pkcs8"),
            "{e}"
        );
        let encrypted = "-----BEGIN RSA PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\nAAE=\n-----END RSA PRIVATE KEY-----\n";
        assert!(
            single(encrypted, "PRIVATE KEY", "k")
                .unwrap_err()
                .to_string()
                .contains("encrypted")
        );
        let open = format!("-----BEGIN PUBLIC KEY-----\n{BODY}\n");
        assert!(
            single(&open, "PUBLIC KEY", "k")
                .unwrap_err()
                .to_string()
                .contains("no END line")
        );
        let bad = "-----BEGIN PUBLIC KEY-----\n@@@@\n-----END PUBLIC KEY-----\n";
        assert!(
            single(bad, "PUBLIC KEY", "k")
                .unwrap_err()
                .to_string()
                .contains("bad base64")
        );
        assert!(
            single("nothing here", "PUBLIC KEY", "k")
                .unwrap_err()
                .to_string()
                .contains("no PEM block")
        );
        let two = "-----BEGIN PUBLIC KEY-----\nAAE=\n-----END PUBLIC KEY-----\n\
                   -----BEGIN PUBLIC KEY-----\nAAE=\n-----END PUBLIC KEY-----\n";
        assert!(
            single(two, "PUBLIC KEY", "k")
                .unwrap_err()
                .to_string()
                .contains("more than one")
        );
    }
}
