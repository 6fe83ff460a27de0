//! The whole purchase flow in headless Chromium, through the local proxy, against the real app
//! (`scripts/e2e.sh` starts it with a short expiration window and runs these tests one at a time).

// A test crate: a failed step is a failed test, with the step named.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod accessibility;
mod browser;
mod checkout;
mod one_trace;
mod purchase;
mod security;
mod states;
