//! The shared key-format test vectors and round-trip properties.

use keygate_core::key_format::{FormatError, find_keys, format_key, parse_key};
use proptest::prelude::*;
use serde_json::Value;

fn vectors() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/vectors/key-format.json"
    );
    let text = std::fs::read_to_string(path).expect("tests/vectors/key-format.json is readable");
    serde_json::from_str(&text).expect("key-format.json is JSON")
}

fn hex(text: &str) -> [u8; 32] {
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).expect("hex digit");
    }
    out
}

/// The copy in `tests/vectors` must match the shared original when it is present.
#[test]
fn vendored_vectors_match_shared_originals() {
    let shared = concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/test-vectors");
    let Ok(entries) = std::fs::read_dir(shared) else {
        println!("SKIPPED: {shared} is not beside this checkout; using the vendored copy");
        return;
    };
    for entry in entries {
        let path = entry.expect("directory entry").path();
        let name = path
            .file_name()
            .expect("file name")
            .to_string_lossy()
            .to_string();
        let vendored = format!("{}/../../tests/vectors/{name}", env!("CARGO_MANIFEST_DIR"));
        assert_eq!(
            std::fs::read(&path).expect("shared vector"),
            std::fs::read(&vendored).unwrap_or_default(),
            "tests/vectors/{name} differs from {}",
            path.display()
        );
    }
}

#[test]
fn valid_vectors_format_and_parse() {
    let v = vectors();
    let valid = v["valid"].as_array().expect("valid array");
    assert!(!valid.is_empty());
    for case in valid {
        let prefix = case["prefix"].as_str().expect("prefix");
        let key = case["key"].as_str().expect("key");
        let bytes = hex(case["secret_bytes_hex"].as_str().expect("hex"));
        assert_eq!(format_key(prefix, &bytes).expect("format"), key);
        let parsed = parse_key(key).expect("parses");
        assert_eq!(parsed.prefix, prefix);
        assert_eq!(find_keys(&format!("leaked: {key}.")).len(), 1);
    }
}

#[test]
fn malformed_vectors_are_rejected() {
    let v = vectors();
    let malformed = v["malformed"].as_array().expect("malformed array");
    assert!(!malformed.is_empty());
    for case in malformed {
        let key = case["key"].as_str().expect("key");
        assert!(parse_key(key).is_err(), "{key} ({})", case["why"]);
        assert!(find_keys(key).is_empty(), "scan must not report {key}");
    }
}

proptest! {
    #[test]
    fn round_trip(bytes in proptest::array::uniform32(any::<u8>()), prefix in "[a-z][a-z0-9_]{0,15}") {
        let key = format_key(&prefix, &bytes).expect("valid prefix");
        prop_assert_eq!(key.len(), prefix.len() + 1 + 43 + 6);
        let parsed = parse_key(&key).expect("parses");
        prop_assert_eq!(parsed.prefix, prefix.as_str());
    }

    #[test]
    fn one_changed_character_is_caught(bytes in proptest::array::uniform32(any::<u8>()), pos in 3usize..52, c in "[0-9A-Za-z]") {
        let key = format_key("kg", &bytes).expect("valid prefix");
        let mut changed = key.clone().into_bytes();
        changed[pos] = c.as_bytes()[0];
        let changed = String::from_utf8(changed).expect("ascii");
        prop_assume!(changed != key);
        prop_assert_eq!(parse_key(&changed), Err(FormatError::Checksum));
    }

    #[test]
    fn parse_never_panics(text in "\\PC{0,80}") {
        let _ = parse_key(&text);
        let _ = find_keys(&text);
    }
}

/// The Standard Webhooks vectors (the first is the specification's own example).
#[test]
fn standard_webhooks_vectors() {
    use keygate_core::webhook::{DEFAULT_TOLERANCE_SECS, sign, verify};
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/vectors/standard-webhooks.json"
    );
    let vectors: Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("readable")).expect("JSON");
    let cases = vectors["valid"].as_array().expect("valid cases");
    assert!(!cases.is_empty());
    for case in cases {
        let (secret, id, body) = (
            case["secret"].as_str().expect("secret"),
            case["webhook_id"].as_str().expect("id"),
            case["body"].as_str().expect("body").as_bytes(),
        );
        let ts = case["webhook_timestamp"].as_i64().expect("timestamp");
        let signature = case["webhook_signature"].as_str().expect("signature");
        assert_eq!(sign(secret, id, ts, body).expect("sign"), signature, "{id}");
        assert_eq!(
            verify(
                secret,
                id,
                &ts.to_string(),
                body,
                signature,
                ts,
                DEFAULT_TOLERANCE_SECS
            ),
            Ok(()),
            "{id}"
        );
    }
}
