//! Password hashing with argon2id (PHC string format), run off the async runtime.

use anyhow::Context as _;
use argon2::Argon2;
use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use std::sync::OnceLock;
use tokio::sync::Semaphore;

/// argon2's default parameters (argon2id, 19 MiB, 2 passes, 1 lane): OWASP's recommendation.
fn hasher() -> Argon2<'static> {
    Argon2::default()
}

/// Each hash holds 19 MiB while it runs and keeps a core busy. Without a bound, a burst of signups
/// fills tokio's blocking pool (512 threads): gigabytes of memory and no faster answers. Hashes wait
/// here for one of two per core instead.
fn hashing_slots() -> &'static Semaphore {
    static SLOTS: OnceLock<Semaphore> = OnceLock::new();
    SLOTS.get_or_init(|| {
        let cores = std::thread::available_parallelism().map_or(2, usize::from);
        Semaphore::new(cores * 2)
    })
}

/// Runs `work` on the blocking pool once a hashing slot is free.
async fn run_hashing<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> anyhow::Result<T> {
    run_bounded(hashing_slots(), work).await
}

async fn run_bounded<T: Send + 'static>(
    slots: &Semaphore,
    work: impl FnOnce() -> T + Send + 'static,
) -> anyhow::Result<T> {
    let _slot = slots
        .acquire()
        .await
        .context("the hashing slots are closed")?;
    tokio::task::spawn_blocking(work)
        .await
        .context("the hashing task failed")
}

pub async fn hash(password: String) -> anyhow::Result<String> {
    run_hashing(move || {
        let salt = SaltString::generate(&mut OsRng);
        hasher()
            .hash_password(password.as_bytes(), &salt)
            .map(|hash| hash.to_string())
            .map_err(|e| anyhow::anyhow!("hashing a password: {e}"))
    })
    .await?
}

/// Whether `password` matches `stored` (a PHC string). A malformed stored hash never matches.
pub async fn verify(password: String, stored: String) -> anyhow::Result<bool> {
    run_hashing(move || {
        let Ok(parsed) = PasswordHash::new(&stored) else {
            return false;
        };
        hasher()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok()
    })
    .await
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

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_burst_of_hashes_runs_a_bounded_number_at_a_time() -> anyhow::Result<()> {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicUsize, Ordering};
        let slots = Arc::new(Semaphore::new(3));
        let running = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let burst: Vec<_> = (0..24)
            .map(|_| {
                let (slots, running, most) = (slots.clone(), running.clone(), most.clone());
                tokio::spawn(async move {
                    run_bounded(&slots, move || {
                        let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                        most.fetch_max(now, Ordering::SeqCst);
                        std::thread::sleep(std::time::Duration::from_millis(5));
                        running.fetch_sub(1, Ordering::SeqCst);
                    })
                    .await
                })
            })
            .collect();
        for task in burst {
            task.await??;
        }
        assert_eq!(
            most.load(Ordering::SeqCst),
            3,
            "never more than the slots at once"
        );
        Ok(())
    }

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
