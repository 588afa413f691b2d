//! The keygate key format: `{prefix}_{secret}{checksum}` (see DESIGN.md, "Key format").
//!
//! The checksum lets anyone (the server, `keygate scan`, a secret scanner) reject a
//! mistyped or truncated key without a lookup. Keys are parsed from the right because a
//! prefix may itself contain `_`.

use sha2::{Digest, Sha256};

/// The base62 alphabet: digits, then upper case, then lower case.
pub const ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
/// Length of the base62 secret (32 bytes need 43 base62 digits).
pub const SECRET_LEN: usize = 43;
/// Length of the base62 CRC-32 checksum.
pub const CHECKSUM_LEN: usize = 6;
/// Longest allowed prefix.
pub const MAX_PREFIX_LEN: usize = 16;
/// Prefix used when none is configured.
pub const DEFAULT_PREFIX: &str = "kg";
/// Number of secret characters kept in a key's display `start`.
pub const START_SECRET_CHARS: usize = 4;
/// Length bounds of an imported key (any visible ASCII).
pub const IMPORTED_MIN_LEN: usize = 16;
pub const IMPORTED_MAX_LEN: usize = 512;

/// SHA-256 of the full key string: the only form in which a key is stored.
pub type KeyHash = [u8; 32];

/// Hashes a full key string for storage and lookup.
pub fn hash_key(key: &str) -> KeyHash {
    Sha256::digest(key.as_bytes()).into()
}

/// Why a string is not a valid keygate key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FormatError {
    /// No `_` separating prefix and body, or the body has the wrong length.
    Shape,
    /// The prefix breaks `[a-z][a-z0-9_]{0,15}`.
    Prefix,
    /// A character outside base62 in the secret or checksum.
    Alphabet,
    /// The checksum does not match: a typo, a truncation or a changed letter case.
    Checksum,
}

impl FormatError {
    /// A sentence telling the holder what is wrong, without repeating the key.
    pub fn hint(self) -> &'static str {
        match self {
            FormatError::Shape => {
                "a keygate key looks like `prefix_` followed by 49 letters and digits; this value has a different shape (was it truncated or pasted with extra characters?)"
            }
            FormatError::Prefix => {
                "the key prefix must be lower-case letters, digits and `_`, starting with a letter"
            }
            FormatError::Alphabet => {
                "the key contains characters that are not letters or digits after its prefix"
            }
            FormatError::Checksum => {
                "the key's checksum does not match: a character was changed, dropped or its letter case altered"
            }
        }
    }
}

/// A syntactically valid keygate key, borrowed from its source string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParsedKey<'a> {
    pub prefix: &'a str,
    pub secret: &'a str,
    pub full: &'a str,
}

impl ParsedKey<'_> {
    /// The display form kept beside the hash: prefix, `_` and the first 4 secret characters.
    pub fn start(&self) -> String {
        let mut start = String::with_capacity(self.prefix.len() + 1 + START_SECRET_CHARS);
        start.push_str(self.prefix);
        start.push('_');
        start.push_str(&self.secret[..START_SECRET_CHARS]);
        start
    }
}

/// Checks a prefix against `[a-z][a-z0-9_]{0,15}`.
pub fn validate_prefix(prefix: &str) -> Result<(), FormatError> {
    let bytes = prefix.as_bytes();
    let first_ok = bytes.first().is_some_and(u8::is_ascii_lowercase);
    let rest_ok = bytes
        .iter()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'_');
    if first_ok && rest_ok && bytes.len() <= MAX_PREFIX_LEN {
        Ok(())
    } else {
        Err(FormatError::Prefix)
    }
}

/// Builds the key for `prefix` and 32 secret bytes (from the OS CSPRNG, passed in).
pub fn format_key(prefix: &str, secret: &[u8; 32]) -> Result<String, FormatError> {
    validate_prefix(prefix)?;
    let mut key = String::with_capacity(prefix.len() + 1 + SECRET_LEN + CHECKSUM_LEN);
    key.push_str(prefix);
    key.push('_');
    push_base62(&mut key, secret, SECRET_LEN);
    let checksum = crc32fast::hash(key.as_bytes());
    push_base62(&mut key, &checksum.to_be_bytes(), CHECKSUM_LEN);
    Ok(key)
}

/// Parses and checksum-verifies a key. Does no lookup.
pub fn parse_key(key: &str) -> Result<ParsedKey<'_>, FormatError> {
    let body_len = SECRET_LEN + CHECKSUM_LEN;
    // Parse from the right: the body is fixed-length, the prefix is what precedes its `_`.
    if !key.is_ascii() || key.len() < body_len + 2 {
        return Err(FormatError::Shape);
    }
    let split = key.len() - body_len;
    if key.as_bytes()[split - 1] != b'_' {
        return Err(FormatError::Shape);
    }
    let prefix = &key[..split - 1];
    let body = &key[split..];
    validate_prefix(prefix)?;
    if !body.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(FormatError::Alphabet);
    }
    let (secret, checksum) = body.split_at(SECRET_LEN);
    let expected = crc32fast::hash(&key.as_bytes()[..key.len() - CHECKSUM_LEN]);
    if decode_base62_u64(checksum) != Some(u64::from(expected)) {
        return Err(FormatError::Checksum);
    }
    Ok(ParsedKey {
        prefix,
        secret,
        full: key,
    })
}

/// True when `key` has the overall shape of a keygate key (prefix, `_`, 49 base62
/// characters), whatever its checksum. Used to tell a mistyped keygate key from an
/// imported key of another format.
pub fn looks_like_keygate_key(key: &str) -> bool {
    matches!(parse_key(key), Ok(_) | Err(FormatError::Checksum))
}

/// Checks an imported key: 16–512 visible ASCII characters.
pub fn validate_imported(key: &str) -> Result<(), &'static str> {
    if key.len() < IMPORTED_MIN_LEN || key.len() > IMPORTED_MAX_LEN {
        return Err("an imported key must be 16 to 512 characters long");
    }
    if !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("an imported key may contain only visible ASCII characters (no spaces)");
    }
    Ok(())
}

/// The display `start` of an imported key: its first 8 characters.
pub fn imported_start(key: &str) -> String {
    key.chars().take(8).collect()
}

/// Appends `bytes` (one big-endian integer) in base62, left-padded with `0` to `width`.
fn push_base62(out: &mut String, bytes: &[u8], width: usize) {
    // Repeated long division of the big-endian number by 62; digits come out least
    // significant first.
    let mut number = bytes.to_vec();
    let mut digits = Vec::with_capacity(width);
    while number.iter().any(|b| *b != 0) {
        let mut remainder = 0u32;
        for byte in number.iter_mut() {
            let acc = (remainder << 8) | u32::from(*byte);
            *byte = (acc / 62) as u8;
            remainder = acc % 62;
        }
        digits.push(ALPHABET[remainder as usize]);
    }
    debug_assert!(digits.len() <= width, "value does not fit the width");
    for _ in digits.len()..width {
        out.push('0');
    }
    out.extend(digits.iter().rev().map(|d| char::from(*d)));
}

fn decode_base62_u64(text: &str) -> Option<u64> {
    text.bytes().try_fold(0u64, |acc, b| {
        let digit = match b {
            b'0'..=b'9' => b - b'0',
            b'A'..=b'Z' => b - b'A' + 10,
            b'a'..=b'z' => b - b'a' + 36,
            _ => return None,
        };
        acc.checked_mul(62)?.checked_add(u64::from(digit))
    })
}

/// Finds every checksum-valid keygate key inside `text`, as byte ranges.
///
/// A candidate is a maximal run of `[A-Za-z0-9_]`; the key is its longest checksum-valid
/// suffix. The checksum makes false positives about one in four billion.
pub fn find_keys(text: &str) -> Vec<std::ops::Range<usize>> {
    let bytes = text.as_bytes();
    let is_word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let mut found = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if !is_word(bytes[i]) {
            i += 1;
            continue;
        }
        let run_start = i;
        while i < bytes.len() && is_word(bytes[i]) {
            i += 1;
        }
        let run = &text[run_start..i];
        let body_len = SECRET_LEN + CHECKSUM_LEN;
        if run.len() < body_len + 2 {
            continue;
        }
        // Try every prefix start that leaves a plausible prefix; keep the longest match.
        let sep = run.len() - body_len - 1;
        let lowest = sep.saturating_sub(MAX_PREFIX_LEN);
        if let Some(offset) = (lowest..sep).find(|&s| parse_key(&run[s..]).is_ok()) {
            found.push(run_start + offset..i);
        }
    }
    found
}

/// Replaces every keygate key inside `text` with `[REDACTED]`, for log lines and error
/// messages that echo input.
pub fn redact_keys(text: &str) -> std::borrow::Cow<'_, str> {
    let ranges = find_keys(text);
    if ranges.is_empty() {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    let mut last = 0;
    for range in ranges {
        out.push_str(&text[last..range.start]);
        out.push_str("[REDACTED]");
        last = range.end;
    }
    out.push_str(&text[last..]);
    std::borrow::Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes() {
        for ok in ["kg", "ctf_sk", "a", "a0_", "abcdefghijklmnop"] {
            assert_eq!(validate_prefix(ok), Ok(()), "{ok}");
        }
        for bad in ["", "Kg", "0kg", "_kg", "kg-x", "abcdefghijklmnopq", "kg!"] {
            assert_eq!(validate_prefix(bad), Err(FormatError::Prefix), "{bad}");
        }
    }

    #[test]
    fn prefix_with_underscore_parses_from_the_right() {
        let key = format_key("ctf_sk", &[7; 32]).expect("valid prefix");
        let parsed = parse_key(&key).expect("round trip");
        assert_eq!(parsed.prefix, "ctf_sk");
        assert_eq!(parsed.start(), format!("ctf_sk_{}", &parsed.secret[..4]));
    }

    #[test]
    fn shapes_that_fail() {
        let good = format_key("kg", &[1; 32]).expect("valid prefix");
        let cases: Vec<(String, FormatError)> = vec![
            (String::new(), FormatError::Shape),
            ("kg_short".into(), FormatError::Shape),
            (good.replacen('_', "-", 1), FormatError::Shape),
            (format!("{good}x"), FormatError::Shape),
            (
                format!(
                    "{}{}",
                    &good[..good.len() - 1],
                    if good.ends_with('0') { '1' } else { '0' }
                ),
                FormatError::Checksum,
            ),
            (good.replacen("kg", "KG", 1), FormatError::Prefix),
            (
                format!("{}!", &good[..good.len() - 1]),
                FormatError::Alphabet,
            ),
            (format!("{}é", &good[..good.len() - 2]), FormatError::Shape),
        ];
        for (input, expected) in cases {
            assert_eq!(parse_key(&input), Err(expected), "{input:?}");
        }
    }

    #[test]
    fn finds_and_redacts_keys_in_text() {
        let key = format_key("ctf_sk", &[9; 32]).expect("valid prefix");
        let text = format!("token={key}&x=1 other kg_notakey");
        assert_eq!(find_keys(&text).len(), 1);
        assert_eq!(redact_keys(&text), "token=[REDACTED]&x=1 other kg_notakey");
        // A word character glued to the front is not part of the prefix of a valid key.
        let glued = format!("Xfoo{key}");
        assert_eq!(redact_keys(&glued), "Xfoo[REDACTED]");
    }

    #[test]
    fn imported_keys() {
        assert!(validate_imported("0123456789abcdef").is_ok());
        assert!(validate_imported("short").is_err());
        assert!(validate_imported("has a space in it!!").is_err());
        assert!(validate_imported(&"x".repeat(513)).is_err());
    }
}
