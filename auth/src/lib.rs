//! The auth service: `/api/users` (signup, signin, signout, currentuser).

pub mod app;
pub mod password;
pub mod rate_limit;
pub mod routes;
pub mod settings;
pub mod store;
