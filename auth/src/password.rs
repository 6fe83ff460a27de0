//! Password hashing with argon2id (PHC string format), run off the async runtime.

use anyhow::Context as _;
use argon2::Argon2;
use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};

/// argon2's default parameters (argon2id, 19 MiB, 2 passes, 1 lane): OWASP's recommendation.
fn hasher() -> Argon2<'static> {
    Argon2::default()
}

pub async fn hash(password: String) -> anyhow::Result<String> {
    tokio::task::spawn_blocking(move || {
        let salt = SaltString::generate(&mut OsRng);
        hasher()
            .hash_password(password.as_bytes(), &salt)
            .map(|hash| hash.to_string())
            .map_err(|e| anyhow::anyhow!("hashing a password: {e}"))
    })
    .await
    .context("the hashing task failed")?
}

/// Whether `password` matches `stored` (a PHC string). A malformed stored hash never matches.
pub async fn verify(password: String, stored: String) -> anyhow::Result<bool> {
    tokio::task::spawn_blocking(move || {
        let Ok(parsed) = PasswordHash::new(&stored) else {
            return false;
        };
        hasher()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok()
    })
    .await
    .context("the verification task failed")
}

/// A hash of a random password, verified against when the email is unknown so that signin takes
/// as long for unknown emails as for known ones.
pub async fn dummy_hash() -> anyhow::Result<String> {
    hash(uuid_like()).await
}

fn uuid_like() -> String {
    SaltString::generate(&mut OsRng).as_str().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_hash_verifies_its_password_only() -> anyhow::Result<()> {
        let stored = hash("secret1".into()).await?;
        assert!(stored.starts_with("$argon2id$"), "{stored}");
        assert!(verify("secret1".into(), stored.clone()).await?);
        assert!(!verify("secret2".into(), stored).await?);
        assert!(!verify("secret1".into(), "not a hash".into()).await?);
        Ok(())
    }
}
