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
    // Saturating: a hostile timestamp near i64::MIN or MAX must not overflow.
    let age = now.saturating_sub(timestamp);
    if age > tolerance_secs {
        return Err(VerifyError::TooOld { age_secs: age });
    }
    let ahead = timestamp.saturating_sub(now);
    if ahead > tolerance_secs {
        return Err(VerifyError::TooNew { ahead_secs: ahead });
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

/// A Stripe-style single header value, `t=<ts>,v1=<hex>[,v1=<hex>…]`: HMAC-SHA256 of
/// `"{ts}.{body}"` with each secret's key bytes (several during a secret overlap).
pub fn sign_stripe_style(
    secrets: &[&str],
    timestamp: i64,
    body: &[u8],
) -> Result<String, VerifyError> {
    let mut value = format!("t={timestamp}");
    for secret in secrets {
        let key = secret_bytes(secret)?;
        let mut mac = HmacSha256::new_from_slice(&key)
            .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        value.push_str(",v1=");
        for byte in mac.finalize().into_bytes() {
            value.push_str(&format!("{byte:02x}"));
        }
    }
    Ok(value)
}

/// The Standard Webhooks retry schedule, in seconds after the previous attempt: the first
/// attempt at once, then 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 14 h, 20 h and 24 h.
pub const DEFAULT_RETRY_SCHEDULE: [u64; 10] =
    [0, 5, 300, 1800, 7200, 18000, 36000, 50400, 72000, 86400];

/// Milliseconds until the next attempt after `attempts` failed ones, or `None` when the
/// schedule is used up. `jitter` (0 to 1, random) spreads retries ±10 % so endpoints that
/// failed together do not get hit together; a `Retry-After` of the receiver is honoured
/// (up to a day).
pub fn retry_delay_ms(
    schedule_secs: &[u64],
    attempts: u32,
    jitter: f64,
    retry_after_secs: Option<u64>,
) -> Option<u64> {
    let base = *schedule_secs.get(usize::try_from(attempts).ok()?)?;
    let factor = 0.9 + 0.2 * jitter.clamp(0.0, 1.0);
    let jittered = (base as f64 * 1000.0 * factor) as u64;
    let floor = retry_after_secs.map_or(0, |s| s.min(86_400) * 1000);
    Some(jittered.max(floor))
}

/// Whether keygate may send a webhook to `ip`. Link-local addresses (cloud metadata at
/// 169.254.169.254), unspecified, multicast and broadcast ones never; loopback, private
/// and shared (CGNAT) ranges only when `allow_private` (local development, tests).
pub fn address_allowed(ip: std::net::IpAddr, allow_private: bool) -> bool {
    use std::net::IpAddr;
    match ip.to_canonical() {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            if v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_multicast()
                || v4.is_broadcast()
                || a == 0
            {
                return false;
            }
            let private =
                v4.is_loopback() || v4.is_private() || (a == 100 && (64..128).contains(&b));
            !private || allow_private
        }
        IpAddr::V6(v6) => {
            let segments = v6.segments();
            let first = segments[0];
            // Addresses that carry an IPv4 address a gateway may translate to: NAT64
            // (64:ff9b::/96, 64:ff9b:1::/48), 6to4 (2002::/16), IPv4-compatible (::/96).
            // Whatever IPv4 address they hide could be internal, so none is allowed.
            let embeds_ipv4 = (segments[..6] == [0x64, 0xff9b, 0, 0, 0, 0])
                || (segments[0] == 0x64 && segments[1] == 0xff9b && segments[2] == 1)
                || first == 0x2002
                || (segments[..6] == [0; 6] && !v6.is_loopback());
            if v6.is_unspecified() || v6.is_multicast() || (first & 0xffc0) == 0xfe80 || embeds_ipv4
            {
                return false;
            }
            let private = v6.is_loopback() || (first & 0xfe00) == 0xfc00;
            !private || allow_private
        }
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

    #[test]
    fn hostile_timestamps_do_not_overflow() {
        let secret = format_secret(&[1u8; 24]);
        for ts in ["-9223372036854775808", "9223372036854775807"] {
            assert!(verify(&secret, "msg", ts, b"{}", "v1,x", 1_700_000_000, 300).is_err());
        }
    }

    #[test]
    fn stripe_style_header() {
        let secret = format_secret(&[7u8; 24]);
        let one = sign_stripe_style(&[&secret], 1_700_000_000, b"{}").expect("sign");
        assert!(one.starts_with("t=1700000000,v1="), "{one}");
        assert_eq!(one.len(), "t=1700000000,v1=".len() + 64);
        let other = format_secret(&[8u8; 24]);
        let two = sign_stripe_style(&[&secret, &other], 1_700_000_000, b"{}").expect("sign");
        assert!(two.starts_with(&one) && two.matches(",v1=").count() == 2);
        assert_ne!(
            sign_stripe_style(&[&secret], 1_700_000_000, b"{ }").expect("sign"),
            one
        );
    }

    #[test]
    fn retry_schedule_with_jitter_and_retry_after() {
        let s = &DEFAULT_RETRY_SCHEDULE;
        assert_eq!(retry_delay_ms(s, 0, 0.5, None), Some(0));
        assert_eq!(retry_delay_ms(s, 1, 0.5, None), Some(5_000));
        assert_eq!(retry_delay_ms(s, 1, 0.0, None), Some(4_500));
        assert_eq!(retry_delay_ms(s, 1, 1.0, None), Some(5_500));
        assert_eq!(retry_delay_ms(s, 2, 0.5, Some(600)), Some(600_000));
        assert_eq!(retry_delay_ms(s, 2, 0.5, Some(10)), Some(300_000));
        assert_eq!(retry_delay_ms(s, 1, 0.5, Some(999_999)), Some(86_400_000));
        assert_eq!(retry_delay_ms(s, 10, 0.5, None), None);
    }

    #[test]
    fn outbound_addresses() {
        let ip = |s: &str| s.parse::<std::net::IpAddr>().expect("ip");
        for never in [
            "169.254.169.254",
            "0.0.0.0",
            "fe80::1",
            "::",
            "224.0.0.1",
            "::ffff:169.254.169.254",
            "64:ff9b::a00:1",
            "64:ff9b:1::a9fe:a9fe",
            "2002:a00:1::1",
            "::a00:1",
        ] {
            assert!(!address_allowed(ip(never), true), "{never}");
        }
        for private in [
            "127.0.0.1",
            "10.1.2.3",
            "192.168.0.1",
            "172.16.5.4",
            "100.64.0.1",
            "::1",
            "fd00::1",
            "::ffff:127.0.0.1",
        ] {
            assert!(!address_allowed(ip(private), false), "{private}");
            assert!(address_allowed(ip(private), true), "{private}");
        }
        for public in ["93.184.216.34", "2606:2800:220:1::1"] {
            assert!(address_allowed(ip(public), false), "{public}");
        }
    }
}
