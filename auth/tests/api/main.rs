//! Integration tests of the auth service over real HTTP against a real FerretDB.

mod helpers;
mod users;
