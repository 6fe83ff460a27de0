//! Password hashing with argon2id (PHC string format), run off the async runtime on a fixed set of
//! hashing threads that each reuse one argon2 memory buffer.
//!
//! Each hash needs 19 MiB of working memory. Allocated per hash on tokio's blocking pool, those
//! buffers ended up in glibc arenas of many threads, which keep freed memory: after a burst of
//! signups the service held 1.1–3.7 GB (README, "Performance"). One thread per core, each with its
//! own buffer, bounds that to cores × 19 MiB and hashes no slower: the work is CPU-bound anyway.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use anyhow::Context as _;
use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{Output, ParamsString, PasswordHash, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use common::error::ApiError;
use tokio::sync::oneshot;

/// The largest argon2 memory a stored hash may ask for (256 MiB); anything larger never matches,
/// so a tampered record cannot make the service allocate without bound.
const MAX_BLOCKS: usize = 256 * 1024;

/// argon2's default parameters (argon2id, 19 MiB, 2 passes, 1 lane): OWASP's recommendation.
fn hasher() -> Argon2<'static> {
    Argon2::default()
}

/// A hashing thread's argon2 memory, allocated on first use and reused by every hash it runs.
#[derive(Default)]
struct Scratch(Vec<Block>);

impl Scratch {
    fn blocks(&mut self, count: usize) -> &mut [Block] {
        if self.0.len() < count {
            self.0.resize(count, Block::default());
        }
        &mut self.0[..count]
    }
}

type Job = Box<dyn FnOnce(&mut Scratch) + Send>;

/// Jobs that may wait per hashing thread (about 1.5 s of work at ~50 ms a hash). Beyond that a
/// request is answered 503 with `Retry-After` at once rather than queued behind work that would
/// outlast its client's patience and hold its password in memory meanwhile.
const QUEUE_PER_THREAD: usize = 32;

/// Why a hashing job did not run.
#[derive(Debug, thiserror::Error)]
pub enum HashingError {
    /// Every hashing thread is busy and the queue is full: try again shortly.
    #[error("the password hashing queue is full")]
    Busy,
    #[error(transparent)]
    Failed(#[from] anyhow::Error),
}

impl From<HashingError> for ApiError {
    fn from(err: HashingError) -> Self {
        match err {
            HashingError::Busy => ApiError::Overloaded {
                retry_after: Duration::from_secs(1),
            },
            HashingError::Failed(cause) => ApiError::Internal(cause),
        }
    }
}

/// A fixed set of threads running hashing jobs in arrival order, from a bounded queue.
struct HashingPool {
    jobs: SyncSender<Job>,
}

impl HashingPool {
    fn start(threads: usize) -> anyhow::Result<Self> {
        Self::with_queue(threads, threads.max(1) * QUEUE_PER_THREAD)
    }

    fn with_queue(threads: usize, capacity: usize) -> anyhow::Result<Self> {
        let (jobs, queue) = mpsc::sync_channel::<Job>(capacity);
        let queue = Arc::new(Mutex::new(queue));
        for n in 0..threads.max(1) {
            let queue = Arc::clone(&queue);
            std::thread::Builder::new()
                .name(format!("argon2-{n}"))
                .spawn(move || work(&queue))
                .context("starting a password hashing thread")?;
        }
        Ok(Self { jobs })
    }

    async fn run<T: Send + 'static>(
        &self,
        job: impl FnOnce(&mut Scratch) -> T + Send + 'static,
    ) -> Result<T, HashingError> {
        let (done, result) = oneshot::channel();
        let queued: Job = Box::new(move |scratch: &mut Scratch| {
            // The caller has gone (its request was cancelled while queued): skip the work.
            if done.is_closed() {
                return;
            }
            let _ = done.send(job(scratch));
        });
        match self.jobs.try_send(queued) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => return Err(HashingError::Busy),
            Err(TrySendError::Disconnected(_)) => {
                return Err(anyhow::anyhow!("the password hashing threads have stopped").into());
            }
        }
        Ok(result.await.context("a password hashing job failed")?)
    }
}

fn work(queue: &Mutex<Receiver<Job>>) {
    let mut scratch = Scratch::default();
    loop {
        // Only the wait for the next job holds the lock; jobs run in parallel.
        let next = queue.lock().unwrap_or_else(PoisonError::into_inner).recv();
        let Ok(job) = next else { return };
        // A panicking job loses its answer (the caller sees an error), not the thread.
        if catch_unwind(AssertUnwindSafe(|| job(&mut scratch))).is_err() {
            tracing::error!("a password hashing job panicked");
        }
    }
}

fn pool() -> anyhow::Result<&'static HashingPool> {
    static POOL: OnceLock<HashingPool> = OnceLock::new();
    if let Some(pool) = POOL.get() {
        return Ok(pool);
    }
    let threads = std::thread::available_parallelism().map_or(1, usize::from);
    let started = HashingPool::start(threads)?;
    // Two first callers may both start a pool; the loser's threads end with its dropped sender.
    Ok(POOL.get_or_init(|| started))
}

/// A new argon2id PHC string for `password`, with a random salt.
fn hash_with(scratch: &mut Scratch, password: &[u8]) -> anyhow::Result<String> {
    let argon2 = hasher();
    let params = argon2.params().clone();
    let salt = SaltString::generate(&mut OsRng);
    let mut salt_bytes = [0u8; 64];
    let salt_raw = salt
        .decode_b64(&mut salt_bytes)
        .map_err(|e| anyhow::anyhow!("decoding a new salt: {e}"))?;
    let mut out = vec![0u8; params.output_len().unwrap_or(Params::DEFAULT_OUTPUT_LEN)];
    argon2
        .hash_password_into_with_memory(
            password,
            salt_raw,
            &mut out,
            scratch.blocks(params.block_count()),
        )
        .map_err(|e| anyhow::anyhow!("hashing a password: {e}"))?;
    let phc = PasswordHash {
        algorithm: Algorithm::Argon2id.ident(),
        version: Some(Version::V0x13.into()),
        params: ParamsString::try_from(&params)
            .map_err(|e| anyhow::anyhow!("encoding argon2 parameters: {e}"))?,
        salt: Some(salt.as_salt()),
        hash: Some(Output::new(&out).map_err(|e| anyhow::anyhow!("encoding a hash: {e}"))?),
    };
    Ok(phc.to_string())
}

/// Whether `password` matches `stored`, computed with the parameters `stored` names. A malformed
/// stored hash, or one asking for more than [`MAX_BLOCKS`] of memory, never matches.
fn verify_with(scratch: &mut Scratch, password: &[u8], stored: &str) -> bool {
    let Ok(parsed) = PasswordHash::new(stored) else {
        return false;
    };
    let (Some(salt), Some(expected)) = (parsed.salt, parsed.hash) else {
        return false;
    };
    let Ok(algorithm) = Algorithm::try_from(parsed.algorithm) else {
        return false;
    };
    let version = match parsed.version.map(Version::try_from).transpose() {
        Ok(version) => version.unwrap_or_default(),
        Err(_) => return false,
    };
    let Ok(params) = Params::try_from(&parsed) else {
        return false;
    };
    if params.block_count() > MAX_BLOCKS {
        return false;
    }
    let mut salt_bytes = [0u8; 64];
    let Ok(salt_raw) = salt.decode_b64(&mut salt_bytes) else {
        return false;
    };
    let blocks = params.block_count();
    let mut out = vec![0u8; expected.len()];
    Argon2::new(algorithm, version, params)
        .hash_password_into_with_memory(password, salt_raw, &mut out, scratch.blocks(blocks))
        .is_ok()
        // `Output`'s equality is constant-time.
        && Output::new(&out).is_ok_and(|computed| computed == expected)
}

pub async fn hash(password: String) -> Result<String, HashingError> {
    Ok(pool()?
        .run(move |scratch| hash_with(scratch, password.as_bytes()))
        .await??)
}

/// Whether `password` matches `stored` (a PHC string). A malformed stored hash never matches.
pub async fn verify(password: String, stored: String) -> Result<bool, HashingError> {
    pool()?
        .run(move |scratch| verify_with(scratch, password.as_bytes(), &stored))
        .await
}

/// A hash of a random password, verified against when the email is unknown so that signin takes
/// as long for unknown emails as for known ones.
pub async fn dummy_hash() -> Result<String, HashingError> {
    hash(uuid_like()).await
}

fn uuid_like() -> String {
    SaltString::generate(&mut OsRng).as_str().to_owned()
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use argon2::password_hash::{PasswordHasher, PasswordVerifier};

    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_burst_of_jobs_runs_at_most_one_per_hashing_thread_at_a_time() -> anyhow::Result<()> {
        let pool = HashingPool::start(3)?;
        let running = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let burst = (0..24).map(|_| {
            let (running, most) = (running.clone(), most.clone());
            pool.run(move |_| {
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                std::thread::sleep(std::time::Duration::from_millis(5));
                running.fetch_sub(1, Ordering::SeqCst);
            })
        });
        for result in futures::future::join_all(burst).await {
            result?;
        }
        assert_eq!(
            most.load(Ordering::SeqCst),
            3,
            "never more than the threads"
        );
        Ok(())
    }

    #[tokio::test]
    async fn a_full_queue_refuses_new_jobs_at_once_and_jobs_of_callers_gone_are_skipped()
    -> anyhow::Result<()> {
        let pool = HashingPool::with_queue(1, 2)?;
        let (release, gate) = std::sync::mpsc::channel::<()>();
        let ran = Arc::new(AtomicUsize::new(0));
        let counted = || {
            let ran = ran.clone();
            move |_: &mut Scratch| {
                ran.fetch_add(1, Ordering::SeqCst);
            }
        };
        // Each job is queued when its future is first polled. The one thread takes the blocker
        // and holds it; then two jobs fill the queue.
        let blocker = pool.run(move |_| gate.recv().is_ok());
        futures::pin_mut!(blocker);
        assert!(futures::poll!(blocker.as_mut()).is_pending());
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        let mut abandoned = Box::pin(pool.run(counted()));
        assert!(futures::poll!(abandoned.as_mut()).is_pending());
        let kept = pool.run(counted());
        futures::pin_mut!(kept);
        assert!(futures::poll!(kept.as_mut()).is_pending());

        let full = pool.run(counted()).await;
        assert!(matches!(full, Err(HashingError::Busy)), "{full:?}");

        // The abandoned job's caller goes away (a request cancelled while queued).
        drop(abandoned);
        release.send(())?;
        assert!(blocker.await?);
        kept.await?;
        assert_eq!(
            ran.load(Ordering::SeqCst),
            1,
            "the abandoned job was skipped"
        );
        Ok(())
    }

    #[tokio::test]
    async fn a_panicking_job_fails_alone_and_the_thread_goes_on() -> anyhow::Result<()> {
        let pool = HashingPool::start(1)?;
        let failed = pool.run(|_| -> u8 { panic!("boom") }).await;
        assert!(failed.is_err());
        assert_eq!(pool.run(|_| 7).await?, 7);
        Ok(())
    }

    #[tokio::test]
    async fn a_hash_verifies_its_password_only() -> anyhow::Result<()> {
        let stored = hash("secret1".into()).await?;
        assert!(
            stored.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
            "{stored}"
        );
        assert!(verify("secret1".into(), stored.clone()).await?);
        assert!(!verify("secret2".into(), stored).await?);
        assert!(!verify("secret1".into(), "not a hash".into()).await?);
        Ok(())
    }

    #[test]
    fn hashes_are_interchangeable_with_the_argon2_crates_own() {
        let mut scratch = Scratch::default();
        let salt = SaltString::generate(&mut OsRng);
        let theirs = hasher()
            .hash_password(b"secret1", &salt)
            .expect("argon2 hash")
            .to_string();
        assert!(verify_with(&mut scratch, b"secret1", &theirs));
        assert!(!verify_with(&mut scratch, b"secret2", &theirs));

        let ours = hash_with(&mut scratch, b"secret1").expect("our hash");
        let parsed = PasswordHash::new(&ours).expect("a PHC string");
        assert!(hasher().verify_password(b"secret1", &parsed).is_ok());
        assert!(hasher().verify_password(b"secret2", &parsed).is_err());
    }

    #[test]
    fn stored_hashes_with_other_parameters_verify_and_oversized_ones_never_match() {
        let mut scratch = Scratch::default();
        let salt = SaltString::generate(&mut OsRng);
        let small = Argon2::new(
            Algorithm::Argon2id,
            Version::V0x13,
            Params::new(8 * 1024, 1, 1, None).expect("params"),
        );
        let stored = small
            .hash_password(b"secret1", &salt)
            .expect("hash")
            .to_string();
        assert!(verify_with(&mut scratch, b"secret1", &stored));

        let oversized = stored.replace("m=8192", &format!("m={}", MAX_BLOCKS + 1));
        assert!(!verify_with(&mut scratch, b"secret1", &oversized));
    }
}
