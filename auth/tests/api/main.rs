//! Integration tests of the auth service over real HTTP against a real FerretDB.

// A test crate: a failed step is a failed test, with the step named.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod emails;
mod helpers;
mod users;
