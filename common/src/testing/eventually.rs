//! Waiting for eventual states: one deadline for every test, so a slow machine is tuned in one place.

use std::time::Duration;

use tokio::time::Instant;

/// How long an eventual state may take before a test gives up.
pub const DEADLINE: Duration = Duration::from_secs(10);
/// How often a state is looked at again.
pub const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// What a check of [`eventually`] returns: `Some`/`Ok` when the state is reached; `Err` may say
/// what was seen instead, for the failure message.
pub trait Check {
    type Value;
    fn reached(self) -> Result<Self::Value, Option<String>>;
}

impl<T> Check for Option<T> {
    type Value = T;
    fn reached(self) -> Result<T, Option<String>> {
        self.ok_or(None)
    }
}

impl<T> Check for Result<T, String> {
    type Value = T;
    fn reached(self) -> Result<T, Option<String>> {
        self.map_err(Some)
    }
}

/// Polls `check` until it reaches its state and returns that value; fails the test with `what`
/// (and the last state seen, if `check` described it) after [`DEADLINE`].
pub async fn eventually<C: Check>(what: &str, check: impl AsyncFnMut() -> C) -> C::Value {
    eventually_within(what, DEADLINE, check).await
}

/// [`eventually`] with another deadline.
pub async fn eventually_within<C: Check>(
    what: &str,
    deadline: Duration,
    mut check: impl AsyncFnMut() -> C,
) -> C::Value {
    let started = Instant::now();
    loop {
        match check().await.reached() {
            Ok(value) => return value,
            Err(last) => assert!(
                started.elapsed() < deadline,
                "timed out waiting for {what} (not within {deadline:?}); last seen: {}",
                last.as_deref().unwrap_or("-")
            ),
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}
