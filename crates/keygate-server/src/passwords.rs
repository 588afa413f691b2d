//! Password hashing (argon2id) and generated passwords.

use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use argon2::{Algorithm, Argon2, Params, Version};
use std::sync::OnceLock;

/// argon2id cost parameters (OWASP's minimum by default: 19 MiB, 2 passes, 1 lane).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PasswordCost {
    pub memory_kib: u32,
    pub iterations: u32,
    pub parallelism: u32,
}

impl Default for PasswordCost {
    fn default() -> Self {
        Self {
            memory_kib: 19 * 1024,
            iterations: 2,
            parallelism: 1,
        }
    }
}

/// Shortest accepted password.
pub const MIN_PASSWORD_LEN: usize = 10;
/// Longest accepted password (argon2 takes any length; this bounds the work per request).
pub const MAX_PASSWORD_LEN: usize = 1024;

pub fn validate_password(password: &str) -> Result<(), String> {
    let chars = password.chars().count();
    if chars < MIN_PASSWORD_LEN {
        return Err(format!(
            "must be at least {MIN_PASSWORD_LEN} characters long"
        ));
    }
    if password.len() > MAX_PASSWORD_LEN {
        return Err(format!("must be at most {MAX_PASSWORD_LEN} bytes long"));
    }
    Ok(())
}

#[derive(Debug, Clone)]
pub struct Passwords {
    cost: PasswordCost,
}

#[derive(Debug, thiserror::Error)]
#[error("password hashing failed: {0}")]
pub struct HashError(String);

impl Passwords {
    pub fn new(cost: PasswordCost) -> Result<Self, String> {
        Params::new(cost.memory_kib, cost.iterations, cost.parallelism, None)
            .map_err(|e| format!("argon2 parameters: {e}"))?;
        Ok(Self { cost })
    }

    fn argon2(&self) -> Result<Argon2<'static>, HashError> {
        let params = Params::new(
            self.cost.memory_kib,
            self.cost.iterations,
            self.cost.parallelism,
            None,
        )
        .map_err(|e| HashError(e.to_string()))?;
        Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
    }

    /// A PHC string (`$argon2id$v=19$m=…`) with a fresh random salt.
    pub fn hash(&self, password: &str) -> Result<String, HashError> {
        self.argon2()?
            .hash_password(password.as_bytes())
            .map(|hash| hash.to_string())
            .map_err(|e| HashError(e.to_string()))
    }

    /// Checks a password against a stored hash. Parameters come from the hash itself.
    pub fn verify(&self, password: &str, hash: &str) -> bool {
        Argon2::default()
            .verify_password(password.as_bytes(), hash)
            .is_ok()
    }

    /// Spends the same work as [`Passwords::verify`] for a user that does not exist, so
    /// the answer time does not tell which usernames are real.
    pub fn verify_nobody(&self, password: &str) {
        static DUMMY: OnceLock<String> = OnceLock::new();
        let dummy = DUMMY.get_or_init(|| self.hash("keygate-timing-equaliser").unwrap_or_default());
        let _ = self.verify(password, dummy);
    }
}

/// A random password for generated accounts: 24 base62 characters (~143 bits).
pub fn generate_password() -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; 24];
    getrandom::fill(&mut bytes)?;
    Ok(bytes
        .iter()
        .map(|b| char::from(keygate_core::key_format::ALPHABET[usize::from(*b) % 62]))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_and_verify() {
        let passwords = Passwords::new(PasswordCost {
            memory_kib: 256,
            iterations: 1,
            parallelism: 1,
        })
        .expect("params");
        let hash = passwords.hash("correct horse battery").expect("hash");
        assert!(hash.starts_with("$argon2id$"));
        assert!(passwords.verify("correct horse battery", &hash));
        assert!(!passwords.verify("wrong horse battery", &hash));
        assert!(!passwords.verify("x", "not a hash"));
        assert_ne!(
            hash,
            passwords.hash("correct horse battery").expect("hash"),
            "salted"
        );
        assert!(validate_password("short").is_err());
        assert_eq!(generate_password().expect("rng").len(), 24);
    }
}
