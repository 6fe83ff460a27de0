//! Integration tests of the web client over real HTTP, with the APIs faked at the HTTP boundary
//! (wiremock standing in for the ingress).

// A test crate: a failed step is a failed test, with the step named.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod forms;
mod helpers;
mod metrics;
mod pages;
