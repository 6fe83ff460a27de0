//! Integration tests of the payments service over real HTTP against a real FerretDB and NATS, with
//! a wiremock server standing in for Stripe behind the real async-stripe client (and stripe-mock
//! for the shape of Stripe's PaymentIntent requests and answers).

// A test crate: a failed step is a failed test, with the step named.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod helpers;
mod intents;
mod metrics;
mod order_cancelled;
mod order_created;
mod payments;
mod saga;
mod stripe_mock;
mod unsettled;
