//! Finding the credential in a request (DESIGN.md, "Credential transports").
//!
//! Pure: the caller hands over the raw header and query values; this module decides which
//! one is the credential, or that there is none, or that two disagree.

/// Where a credential was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Transport {
    /// `Authorization: Bearer|ApiKey|Token <value>`.
    Authorization,
    /// The API-key header, `X-API-Key` unless configured otherwise.
    ApiKeyHeader,
    /// The `apikey` query parameter (off unless enabled).
    QueryParam,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Authorization => "authorization",
            Transport::ApiKeyHeader => "api-key-header",
            Transport::QueryParam => "query-param",
        }
    }
}

/// The default order in which transports are consulted.
pub const DEFAULT_ORDER: [Transport; 3] = [
    Transport::Authorization,
    Transport::ApiKeyHeader,
    Transport::QueryParam,
];

/// A credential value and where it came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Presented<'a> {
    pub value: &'a str,
    pub transport: Transport,
    /// Whitespace around the value was removed.
    pub trimmed: bool,
}

/// What a request carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Extraction<'a> {
    Found(Presented<'a>),
    /// No credential; the hint explains near misses (an unsupported scheme, an empty value).
    Missing {
        hint: Option<String>,
    },
    /// Two different credentials: refused rather than guessing which was meant.
    Ambiguous {
        first: Transport,
        second: Transport,
    },
}

/// Removes leading and trailing whitespace (including a trailing newline from a pasted
/// key) and says whether anything was removed.
pub fn trim_credential(value: &str) -> (&str, bool) {
    let trimmed = value.trim_matches(|c: char| c.is_ascii_whitespace());
    (trimmed, trimmed.len() != value.len())
}

/// Splits an `Authorization` value into a supported scheme's credential.
///
/// An error names a scheme keygate does not read (e.g. `Basic`), as a hint.
fn authorization_credential(header: &str) -> Result<&str, String> {
    let header = header.trim_start();
    let (scheme, rest) = header.split_once([' ', '\t']).unwrap_or((header, ""));
    if ["bearer", "apikey", "token"]
        .iter()
        .any(|s| scheme.eq_ignore_ascii_case(s))
    {
        Ok(rest)
    } else {
        Err(format!(
            "the Authorization header uses the `{}` scheme; send `Authorization: Bearer <key>` instead",
            scheme.chars().take(20).collect::<String>()
        ))
    }
}

/// Picks the request's credential from the values of each enabled transport, consulted in
/// `order`. `values(transport)` yields the raw values present for it (a header may repeat).
pub fn extract<'a, F, I>(order: &[Transport], mut values: F) -> Extraction<'a>
where
    F: FnMut(Transport) -> I,
    I: Iterator<Item = &'a str>,
{
    let mut found: Option<Presented<'a>> = None;
    let mut hint: Option<String> = None;
    for &transport in order {
        for raw in values(transport) {
            let candidate = match transport {
                Transport::Authorization => match authorization_credential(raw) {
                    Ok(value) => value,
                    Err(why) => {
                        hint.get_or_insert(why);
                        continue;
                    }
                },
                _ => raw,
            };
            let (value, trimmed) = trim_credential(candidate);
            if value.is_empty() {
                hint.get_or_insert_with(|| {
                    format!("the {} credential is empty", transport.as_str())
                });
                continue;
            }
            match found {
                None => {
                    found = Some(Presented {
                        value,
                        transport,
                        trimmed,
                    })
                }
                Some(first) if first.value == value => {}
                Some(first) => {
                    return Extraction::Ambiguous {
                        first: first.transport,
                        second: transport,
                    };
                }
            }
        }
    }
    match found {
        Some(presented) => Extraction::Found(presented),
        None => Extraction::Missing { hint },
    }
}

/// True for a value shaped like a JWT: three base64url segments, the first two non-empty
/// (an unsigned `alg: none` token has an empty third one and must still be treated, and
/// refused, as a token).
pub fn looks_like_jwt(value: &str) -> bool {
    // Asked of every credential: the segments are looked at where they lie, not collected.
    let mut segments = value.split('.');
    let (Some(header), Some(payload), Some(signature), None) = (
        segments.next(),
        segments.next(),
        segments.next(),
        segments.next(),
    ) else {
        return false;
    };
    !header.is_empty()
        && !payload.is_empty()
        && [header, payload, signature].iter().all(|segment| {
            segment
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run<'a>(
        order: &[Transport],
        auth: &'a [&'a str],
        header: &'a [&'a str],
        query: &'a [&'a str],
    ) -> Extraction<'a> {
        extract(order, |t| {
            match t {
                Transport::Authorization => auth,
                Transport::ApiKeyHeader => header,
                Transport::QueryParam => query,
            }
            .iter()
            .copied()
        })
    }

    fn found(value: &str, transport: Transport, trimmed: bool) -> Extraction<'_> {
        Extraction::Found(Presented {
            value,
            transport,
            trimmed,
        })
    }

    #[test]
    fn transports() {
        use Transport::*;
        let all = &DEFAULT_ORDER;
        let cases: Vec<(Extraction, Extraction)> = vec![
            (
                run(all, &["Bearer abc"], &[], &[]),
                found("abc", Authorization, false),
            ),
            (
                run(all, &["bearer abc"], &[], &[]),
                found("abc", Authorization, false),
            ),
            (
                run(all, &["ApiKey abc"], &[], &[]),
                found("abc", Authorization, false),
            ),
            (
                run(all, &["TOKEN abc"], &[], &[]),
                found("abc", Authorization, false),
            ),
            (
                run(all, &[], &["abc"], &[]),
                found("abc", ApiKeyHeader, false),
            ),
            (
                run(all, &[], &[], &[" abc\n"]),
                found("abc", QueryParam, true),
            ),
            (
                run(all, &["Bearer  abc "], &[], &[]),
                found("abc", Authorization, true),
            ),
            // The same key twice is not ambiguous.
            (
                run(all, &["Bearer abc"], &["abc"], &[]),
                found("abc", Authorization, false),
            ),
            (
                run(all, &["Bearer abc"], &["xyz"], &[]),
                Extraction::Ambiguous {
                    first: Authorization,
                    second: ApiKeyHeader,
                },
            ),
            (
                run(all, &[], &["abc", "xyz"], &[]),
                Extraction::Ambiguous {
                    first: ApiKeyHeader,
                    second: ApiKeyHeader,
                },
            ),
            (run(all, &[], &[], &[]), Extraction::Missing { hint: None }),
            // A transport left out of the order is not consulted.
            (
                run(&[Authorization], &[], &["abc"], &[]),
                Extraction::Missing { hint: None },
            ),
        ];
        for (got, want) in cases {
            assert_eq!(got, want);
        }
    }

    #[test]
    fn near_misses_explain_themselves() {
        let all = &DEFAULT_ORDER;
        let Extraction::Missing { hint: Some(hint) } = run(all, &["Basic dXNlcjpwdw=="], &[], &[])
        else {
            panic!("expected a hint")
        };
        assert!(hint.contains("`Basic`"), "{hint}");
        let Extraction::Missing { hint: Some(hint) } = run(all, &["Bearer "], &[], &[]) else {
            panic!("expected a hint")
        };
        assert!(hint.contains("empty"), "{hint}");
    }

    #[test]
    fn jwt_shape() {
        assert!(looks_like_jwt("eyJh.eyJz.c2ln"));
        assert!(!looks_like_jwt("eyJh.eyJz"));
        assert!(!looks_like_jwt("a..b"));
        assert!(looks_like_jwt("eyJh.eyJz."));
        assert!(!looks_like_jwt(".eyJz.sig"));
        assert!(!looks_like_jwt("kg_abc"));
        assert!(!looks_like_jwt("eyJh.eyJz.c2ln.more"));
    }
}
