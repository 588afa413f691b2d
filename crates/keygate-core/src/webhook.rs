//! Standard Webhooks signatures (v1): `base64(HMAC-SHA256(secret, "{id}.{timestamp}.{body}"))`,
//! sent as `webhook-signature: v1,<sig>` (several, space-separated, during a secret
//! rotation), with `webhook-id` and `webhook-timestamp`.
//!
//! Pure: the secret's random bytes and the current time are passed in.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// The prefix of a webhook signing secret.
pub const SECRET_PREFIX: &str = "whsec_";
/// How far a timestamp may be from now by default (the spec's 5 minutes).
pub const DEFAULT_TOLERANCE_SECS: i64 = 300;

/// Why a signature does not verify. The messages never contain the secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VerifyError {
    BadSecret,
    BadTimestamp,
    TooOld { age_secs: i64 },
    TooNew { ahead_secs: i64 },
    NoSignature,
    Mismatch,
}

impl std::fmt::Display for VerifyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            VerifyError::BadSecret => {
                f.write_str("the secret is not a whsec_ value with base64 after the prefix")
            }
            VerifyError::BadTimestamp => {
                f.write_str("the timestamp is not a whole number of seconds")
            }
            VerifyError::TooOld { age_secs } => write!(
                f,
                "the timestamp is {age_secs} s old, more than the tolerance (replayed?)"
            ),
            VerifyError::TooNew { ahead_secs } => write!(
                f,
                "the timestamp is {ahead_secs} s in the future, more than the tolerance"
            ),
            VerifyError::NoSignature => f.write_str("no v1 signature in the signature header"),
            VerifyError::Mismatch => f.write_str(
                "no signature matches: wrong secret, or the body, id or timestamp changed",
            ),
        }
    }
}

/// Builds a secret from random bytes (24 or more, from the OS CSPRNG).
pub fn format_secret(random: &[u8]) -> String {
    format!("{SECRET_PREFIX}{}", STANDARD.encode(random))
}

/// The key bytes of a `whsec_` secret.
pub fn secret_bytes(secret: &str) -> Result<Vec<u8>, VerifyError> {
    let encoded = secret
        .trim()
        .strip_prefix(SECRET_PREFIX)
        .unwrap_or(secret.trim());
    STANDARD
        .decode(encoded)
        .map_err(|_| VerifyError::BadSecret)
        .and_then(|bytes| {
            if bytes.is_empty() {
                Err(VerifyError::BadSecret)
            } else {
                Ok(bytes)
            }
        })
}

fn mac(key: &[u8], id: &str, timestamp: i64, body: &[u8]) -> HmacSha256 {
    // HMAC takes keys of any length; new_from_slice cannot fail for it.
    let mut mac = HmacSha256::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// The `v1,<base64>` signature of a message.
pub fn sign(secret: &str, id: &str, timestamp: i64, body: &[u8]) -> Result<String, VerifyError> {
    let key = secret_bytes(secret)?;
    Ok(format!(
        "v1,{}",
        STANDARD.encode(mac(&key, id, timestamp, body).finalize().into_bytes())
    ))
}

/// Verifies a message: the timestamp within `tolerance_secs` of `now` (seconds), and one
/// of the space-separated `v1,` signatures matching, compared in constant time.
pub fn verify(
    secret: &str,
    id: &str,
    timestamp: &str,
    body: &[u8],
    signatures: &str,
    now: i64,
    tolerance_secs: i64,
) -> Result<(), VerifyError> {
    let key = secret_bytes(secret)?;
    let timestamp: i64 = timestamp
        .trim()
        .parse()
        .map_err(|_| VerifyError::BadTimestamp)?;
    if now - timestamp > tolerance_secs {
        return Err(VerifyError::TooOld {
            age_secs: now - timestamp,
        });
    }
    if timestamp - now > tolerance_secs {
        return Err(VerifyError::TooNew {
            ahead_secs: timestamp - now,
        });
    }
    let expected = mac(&key, id, timestamp, body);
    let mut candidates = signatures
        .split_whitespace()
        .filter_map(|entry| entry.strip_prefix("v1,"))
        .filter_map(|b64| STANDARD.decode(b64).ok())
        .peekable();
    if candidates.peek().is_none() {
        return Err(VerifyError::NoSignature);
    }
    // verify_slice compares in constant time.
    if candidates.any(|sig| expected.clone().verify_slice(&sig).is_ok()) {
        Ok(())
    } else {
        Err(VerifyError::Mismatch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const BODY: &[u8] = br#"{"test": 2432232314}"#;
    const TS: i64 = 1614265330;

    #[test]
    fn verification_cases() {
        let good = sign(SECRET, ID, TS, BODY).expect("sign");
        let other = sign("whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", ID, TS, BODY).expect("sign");
        let ts = TS.to_string();
        // (timestamp header, body, signature header, now, expected)
        type Case<'a> = (&'a str, &'a [u8], String, i64, Result<(), VerifyError>);
        let cases: Vec<Case> = vec![
            (ts.as_str(), BODY, good.clone(), TS, Ok(())),
            // Several signatures during a rotation: any one may match.
            (
                ts.as_str(),
                BODY,
                format!("{other} {good}"),
                TS + 10,
                Ok(()),
            ),
            (
                ts.as_str(),
                br#"{"test": 2432232315}"#,
                good.clone(),
                TS,
                Err(VerifyError::Mismatch),
            ),
            (
                ts.as_str(),
                BODY,
                other.clone(),
                TS,
                Err(VerifyError::Mismatch),
            ),
            (
                ts.as_str(),
                BODY,
                "v2,abc".into(),
                TS,
                Err(VerifyError::NoSignature),
            ),
            (
                ts.as_str(),
                BODY,
                good.clone(),
                TS + 301,
                Err(VerifyError::TooOld { age_secs: 301 }),
            ),
            (
                ts.as_str(),
                BODY,
                good.clone(),
                TS - 301,
                Err(VerifyError::TooNew { ahead_secs: 301 }),
            ),
            (
                "soon",
                BODY,
                good.clone(),
                TS,
                Err(VerifyError::BadTimestamp),
            ),
        ];
        for (timestamp, body, signature, now, want) in cases {
            assert_eq!(
                verify(
                    SECRET,
                    ID,
                    timestamp,
                    body,
                    &signature,
                    now,
                    DEFAULT_TOLERANCE_SECS
                ),
                want,
                "{signature} at {now}"
            );
        }
        assert_eq!(
            verify("whsec_!!", ID, &ts, BODY, &good, TS, 300),
            Err(VerifyError::BadSecret)
        );
    }

    #[test]
    fn secrets() {
        let secret = format_secret(&[7; 24]);
        assert!(secret.starts_with("whsec_"));
        assert_eq!(secret_bytes(&secret).expect("bytes"), vec![7; 24]);
    }
}
