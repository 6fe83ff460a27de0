//! A signed-in user without the auth service: a fresh id and the session cookie auth would issue.

use super::{new_user_id, session_cookie};

/// A signed-in user: id, email and `Cookie` header (`express:sess=...`).
#[derive(Debug, Clone)]
pub struct User {
    pub id: String,
    pub email: String,
    pub cookie: String,
}

impl User {
    /// A fresh user signed with the test JWT key.
    pub fn new() -> Self {
        let id = new_user_id();
        let email = format!("{id}@test.com");
        let cookie = session_cookie(&id, &email);
        Self { id, email, cookie }
    }
}

impl Default for User {
    fn default() -> Self {
        Self::new()
    }
}
