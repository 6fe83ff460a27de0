//! The browser tests (`tests/browser/`, run by `scripts/e2e.sh`) and the Stripe double they run
//! the app with (`src/bin/stripe-double.rs`).
