//! Users: `{_id, email, password_hash}` with a unique index on the normalised email, so two
//! simultaneous signups for one address cannot both succeed.

use common::store::{Bounded as _, IndexKind, ensure_index, is_duplicate_key};
use mongodb::bson::doc;
use mongodb::bson::oid::ObjectId;
use mongodb::{Collection, Database};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct User {
    #[serde(rename = "_id")]
    pub id: ObjectId,
    /// Trimmed and lower-cased.
    pub email: String,
    pub password_hash: String,
}

#[derive(Debug, thiserror::Error)]
pub enum InsertUserError {
    #[error("email already registered")]
    EmailTaken,
    #[error(transparent)]
    Db(#[from] mongodb::error::Error),
}

#[derive(Clone)]
pub struct UserStore {
    users: Collection<User>,
}

impl UserStore {
    pub fn new(db: &Database) -> Self {
        Self {
            users: db.collection("users"),
        }
    }

    pub async fn ensure_indexes(&self) -> mongodb::error::Result<()> {
        ensure_index(
            &self.users,
            "email_unique",
            doc! { "email": 1 },
            IndexKind::Unique,
        )
        .await
    }

    pub async fn insert(&self, user: &User) -> Result<(), InsertUserError> {
        match self.users.insert_one(user).bounded().await {
            Ok(_) => Ok(()),
            Err(e) if is_duplicate_key(&e) => Err(InsertUserError::EmailTaken),
            Err(e) => Err(e.into()),
        }
    }

    pub async fn find_by_email(&self, email: &str) -> mongodb::error::Result<Option<User>> {
        self.users.find_one(doc! { "email": email }).bounded().await
    }

    pub async fn count_by_email(&self, email: &str) -> mongodb::error::Result<u64> {
        self.users
            .count_documents(doc! { "email": email })
            .bounded()
            .await
    }
}
