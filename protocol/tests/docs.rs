//! `docs/PROTOCOL.md` stays in sync with the golden vectors: every example block marked
//! `<!-- vector: NAME -->` holds the same JSON as `tests/vectors/NAME` (pretty-printed), every
//! block marked `<!-- payload: NAME -->` holds the decoded payload of the signed (JWS) vector
//! `NAME`, and every vector is shown in one form or the other. Rewrite the blocks after regenerating the vectors with
//! `cargo test -p ukey-protocol --test docs -- --ignored regenerate_examples`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::PathBuf;

use common::*;
use serde_json::Value;

const MARKER: &str = "<!-- vector: ";
const PAYLOAD_MARKER: &str = "<!-- payload: ";

/// The decoded payload of a signed vector.
fn payload_of(name: &str) -> String {
    let jws: Value = serde_json::from_slice(&read_vector(name)).unwrap();
    let payload = jws["payload"]
        .as_str()
        .unwrap_or_else(|| panic!("{name} is not a JWS"));
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .unwrap();
    String::from_utf8(bytes).unwrap()
}

fn doc_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/PROTOCOL.md")
}

/// Pretty-prints compact JSON keeping the member order (serde_json's `Value` would sort it).
fn pretty(compact: &str) -> String {
    let mut out = String::new();
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    let mut chars = compact.chars().peekable();
    let newline = |out: &mut String, depth: usize| {
        out.push('\n');
        out.push_str(&"  ".repeat(depth));
    };
    while let Some(c) = chars.next() {
        if in_string {
            out.push(c);
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match c {
            '"' => {
                in_string = true;
                out.push(c);
            }
            '{' | '[' => {
                out.push(c);
                if matches!(chars.peek(), Some('}' | ']')) {
                    out.push(chars.next().unwrap());
                } else {
                    depth += 1;
                    newline(&mut out, depth);
                }
            }
            '}' | ']' => {
                depth -= 1;
                newline(&mut out, depth);
                out.push(c);
            }
            ',' => {
                out.push(c);
                newline(&mut out, depth);
            }
            ':' => out.push_str(": "),
            _ => out.push(c),
        }
    }
    out
}

/// (vector name, block content, block start and end byte offsets) for every marked block.
fn blocks(doc: &str, marker: &str) -> Vec<(String, String, usize, usize)> {
    let mut found = Vec::new();
    let mut pos = 0;
    while let Some(i) = doc[pos..].find(marker) {
        let start = pos + i + marker.len();
        let name_end = start + doc[start..].find(" -->").unwrap();
        let name = doc[start..name_end].to_owned();
        let open = name_end + doc[name_end..].find("```json\n").unwrap() + "```json\n".len();
        let close = open + doc[open..].find("```").unwrap();
        found.push((name, doc[open..close].to_owned(), open, close));
        pos = close;
    }
    found
}

#[test]
fn examples_match_the_golden_vectors() {
    let doc = std::fs::read_to_string(doc_path()).unwrap();
    let found = blocks(&doc, MARKER);
    let payloads = blocks(&doc, PAYLOAD_MARKER);
    for (name, block, _, _) in &payloads {
        let payload = payload_of(name);
        let shown: Value = serde_json::from_str(block)
            .unwrap_or_else(|e| panic!("PROTOCOL.md payload of {name} does not parse: {e}"));
        let expected: Value = serde_json::from_str(&payload).unwrap();
        assert_eq!(
            shown, expected,
            "PROTOCOL.md payload of {name} differs from its vector"
        );
        assert_eq!(
            block.trim_end(),
            pretty(&payload),
            "{name}: regenerate the examples"
        );
    }
    for (name, block, _, _) in &found {
        let vector = read_vector(name);
        let shown: Value = serde_json::from_str(block)
            .unwrap_or_else(|e| panic!("PROTOCOL.md example {name} does not parse: {e}"));
        let expected: Value = serde_json::from_slice(&vector).unwrap();
        assert_eq!(
            shown, expected,
            "PROTOCOL.md example {name} differs from its vector"
        );
        assert_eq!(
            block.trim_end(),
            pretty(std::str::from_utf8(&vector).unwrap()),
            "{name}: regenerate the examples"
        );
    }
    for (name, _) in all_vectors() {
        assert!(
            found.iter().chain(&payloads).any(|(n, ..)| n == name),
            "vector {name} is not shown in PROTOCOL.md"
        );
    }
}

#[test]
fn pretty_printing_keeps_the_value() {
    let compact = r#"{"v":1,"a":[],"b":{"c":"x,\"}:{"},"d":[1,{}]}"#;
    let a: Value = serde_json::from_str(compact).unwrap();
    let b: Value = serde_json::from_str(&pretty(compact)).unwrap();
    assert_eq!(a, b);
    assert!(pretty(compact).starts_with("{\n  \"v\": 1,"));
}

#[test]
#[ignore = "rewrites docs/PROTOCOL.md; run on purpose after regenerating the vectors"]
fn regenerate_examples() {
    let mut doc = std::fs::read_to_string(doc_path()).unwrap();
    let mut all: Vec<(String, usize, usize, String)> = Vec::new();
    for (name, _, open, close) in blocks(&doc, MARKER) {
        let vector = read_vector(&name);
        let text = format!("{}\n", pretty(std::str::from_utf8(&vector).unwrap()));
        all.push((name, open, close, text));
    }
    for (name, _, open, close) in blocks(&doc, PAYLOAD_MARKER) {
        let text = format!("{}\n", pretty(&payload_of(&name)));
        all.push((name, open, close, text));
    }
    all.sort_by_key(|(_, open, ..)| *open);
    for (_, open, close, text) in all.into_iter().rev() {
        doc.replace_range(open..close, &text);
    }
    std::fs::write(doc_path(), doc).unwrap();
}
