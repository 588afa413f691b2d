//! JWT access and refresh tokens (RFC 8725 practice): one pinned algorithm (HS256 with a
//! secret kept in the store, or EdDSA/Ed25519 with the public key at
//! `/.well-known/jwks.json`), `typ` claims that keep access and refresh tokens apart,
//! and `iss`/`aud`/`exp`/`nbf` checked with a small clock skew.

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use ed25519_dalek::pkcs8::EncodePrivateKey;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use keygate_core::{Role, UnixMillis};
use keygate_store::{Store, StoreError};
use serde::{Deserialize, Serialize};
use std::time::Duration;
use uuid::Uuid;

/// Which signature scheme tokens use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum JwtAlgorithm {
    HS256,
    EdDSA,
}

#[derive(Debug, Clone)]
pub struct TokenConfig {
    pub algorithm: JwtAlgorithm,
    pub issuer: String,
    pub audience: String,
    pub access_ttl: Duration,
    pub refresh_ttl: Duration,
    /// Clock skew tolerated on `exp` and `nbf`.
    pub leeway: Duration,
}

impl Default for TokenConfig {
    fn default() -> Self {
        Self {
            algorithm: JwtAlgorithm::HS256,
            issuer: "keygate".into(),
            audience: "keygate".into(),
            access_ttl: Duration::from_secs(5 * 60),
            refresh_ttl: Duration::from_secs(24 * 3600),
            leeway: Duration::from_secs(30),
        }
    }
}

pub const ACCESS: &str = "access";
pub const REFRESH: &str = "refresh";

/// The claims of both token kinds; `typ` tells them apart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<Role>,
    pub iat: u64,
    pub nbf: u64,
    pub exp: u64,
    pub jti: String,
    pub iss: String,
    pub aud: String,
    pub typ: String,
    /// The sign-in (token family) this token belongs to.
    pub sid: String,
}

/// Why a token was refused. Messages are safe to return: they never contain the token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenError {
    Expired,
    Invalid(&'static str),
}

pub struct TokenKeys {
    config: TokenConfig,
    algorithm: Algorithm,
    encoding: EncodingKey,
    decoding: DecodingKey,
    /// For EdDSA: (kid, base64url public key) published in the JWKS.
    public_jwk: Option<(String, String)>,
}

const HS256_SECRET: &str = "jwt.hs256";
const ED25519_SEED: &str = "jwt.ed25519";

fn random<const N: usize>() -> Result<[u8; N], StoreError> {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes)
        .map_err(|e| StoreError::Corrupt(format!("random number generator: {e}")))?;
    Ok(bytes)
}

impl TokenKeys {
    /// Loads the signing key from the store, creating it on first start.
    pub async fn load(store: &dyn Store, config: TokenConfig) -> Result<Self, StoreError> {
        match config.algorithm {
            JwtAlgorithm::HS256 => {
                let fresh = STANDARD.encode(random::<32>()?);
                let secret = store.secret_or_insert(HS256_SECRET, &fresh).await?;
                let secret = STANDARD
                    .decode(secret)
                    .map_err(|_| StoreError::Corrupt("stored JWT secret is not base64".into()))?;
                Ok(Self {
                    config,
                    algorithm: Algorithm::HS256,
                    encoding: EncodingKey::from_secret(&secret),
                    decoding: DecodingKey::from_secret(&secret),
                    public_jwk: None,
                })
            }
            JwtAlgorithm::EdDSA => {
                let fresh = STANDARD.encode(random::<32>()?);
                let seed = store.secret_or_insert(ED25519_SEED, &fresh).await?;
                let seed: [u8; 32] = STANDARD
                    .decode(seed)
                    .ok()
                    .and_then(|bytes| bytes.try_into().ok())
                    .ok_or_else(|| {
                        StoreError::Corrupt("stored Ed25519 seed is not 32 bytes of base64".into())
                    })?;
                let signing = ed25519_dalek::SigningKey::from_bytes(&seed);
                let der = signing
                    .to_pkcs8_der()
                    .map_err(|e| StoreError::Corrupt(format!("Ed25519 key encoding: {e}")))?;
                let public = signing.verifying_key().to_bytes();
                let x = URL_SAFE_NO_PAD.encode(public);
                // The key id is derived from the key, so it changes exactly when the key does.
                let kid = URL_SAFE_NO_PAD.encode(&keygate_core::key_format::hash_key(&x)[..12]);
                Ok(Self {
                    config,
                    algorithm: Algorithm::EdDSA,
                    encoding: EncodingKey::from_ed_der(der.as_bytes()),
                    decoding: DecodingKey::from_ed_der(&public),
                    public_jwk: Some((kid, x)),
                })
            }
        }
    }

    pub fn config(&self) -> &TokenConfig {
        &self.config
    }

    /// The JSON Web Key Set: the Ed25519 public key, or no keys for HS256 (a shared
    /// secret cannot be published).
    pub fn jwks(&self) -> serde_json::Value {
        let keys: Vec<serde_json::Value> = self
            .public_jwk
            .iter()
            .map(|(kid, x)| {
                serde_json::json!({"kty": "OKP", "crv": "Ed25519", "alg": "EdDSA", "use": "sig", "kid": kid, "x": x})
            })
            .collect();
        serde_json::json!({ "keys": keys })
    }

    fn header(&self) -> Header {
        let mut header = Header::new(self.algorithm);
        header.typ = Some("JWT".into());
        header.kid = self.public_jwk.as_ref().map(|(kid, _)| kid.clone());
        header
    }

    /// Signs a token of kind `typ` for a user.
    pub fn issue(
        &self,
        typ: &str,
        user: (Uuid, &str, Role),
        family: &str,
        now: UnixMillis,
    ) -> Result<(String, Claims), jsonwebtoken::errors::Error> {
        let ttl = if typ == ACCESS {
            self.config.access_ttl
        } else {
            self.config.refresh_ttl
        };
        let iat = u64::try_from(now / 1000).unwrap_or(0);
        let claims = Claims {
            sub: user.0.to_string(),
            // Refresh tokens carry no name or role: they are read back from the store.
            name: (typ != REFRESH).then(|| user.1.to_string()),
            role: (typ != REFRESH).then_some(user.2),
            iat,
            nbf: iat,
            exp: iat + ttl.as_secs(),
            jti: Uuid::now_v7().simple().to_string(),
            iss: self.config.issuer.clone(),
            aud: self.config.audience.clone(),
            typ: typ.to_string(),
            sid: family.to_string(),
        };
        Ok((
            jsonwebtoken::encode(&self.header(), &claims, &self.encoding)?,
            claims,
        ))
    }

    /// Verifies signature, algorithm, `exp`, `nbf`, `iss`, `aud` and `typ`.
    pub fn verify(&self, token: &str, typ: &str) -> Result<Claims, TokenError> {
        self.verify_with(token, typ, true)
    }

    /// As [`TokenKeys::verify`] but accepting an expired token (for logout).
    pub fn verify_allowing_expired(&self, token: &str, typ: &str) -> Result<Claims, TokenError> {
        self.verify_with(token, typ, false)
    }

    fn verify_with(
        &self,
        token: &str,
        typ: &str,
        check_expiry: bool,
    ) -> Result<Claims, TokenError> {
        let mut validation = Validation::new(self.algorithm);
        validation.validate_exp = check_expiry;
        validation.leeway = self.config.leeway.as_secs();
        validation.validate_nbf = true;
        validation.set_issuer(&[&self.config.issuer]);
        validation.set_audience(&[&self.config.audience]);
        validation.set_required_spec_claims(&["exp", "nbf", "iat", "iss", "aud", "sub"]);
        let data =
            jsonwebtoken::decode::<Claims>(token, &self.decoding, &validation).map_err(|err| {
                use jsonwebtoken::errors::ErrorKind;
                match err.kind() {
                    ErrorKind::ExpiredSignature => TokenError::Expired,
                    ErrorKind::InvalidSignature => {
                        TokenError::Invalid("the token's signature does not verify")
                    }
                    ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
                        TokenError::Invalid(
                            "the token is signed with an algorithm this instance does not accept",
                        )
                    }
                    ErrorKind::InvalidIssuer => {
                        TokenError::Invalid("the token was issued by someone else")
                    }
                    ErrorKind::InvalidAudience => {
                        TokenError::Invalid("the token is meant for another audience")
                    }
                    ErrorKind::ImmatureSignature => {
                        TokenError::Invalid("the token is not valid yet")
                    }
                    ErrorKind::MissingRequiredClaim(_) => {
                        TokenError::Invalid("the token lacks a required claim")
                    }
                    _ => TokenError::Invalid("the token is malformed"),
                }
            })?;
        if data.claims.typ != typ {
            return Err(TokenError::Invalid(if typ == ACCESS {
                "this is a refresh token; send an access token"
            } else {
                "this is not a refresh token"
            }));
        }
        Ok(data.claims)
    }
}
