//! Users, found by their normalised email.
//!
//! `emails` holds `{_id: <email>, userId, password_hash}`: everything signin needs, under the one key
//! FerretDB's SQLite backend looks up by index (any other filter decodes the whole collection), and
//! its insert is the claim of the address (CONSISTENCY.md: exclusivity from a unique key at insert),
//! so two simultaneous signups for one address cannot both succeed.
//!
//! `users` (`{_id: <user id>, email, password_hash}`, unique on `email`) is still written, after the
//! claim, so that the previous version of this service keeps working beside this one during a
//! rolling update and after a rollback. Nothing here reads it but the one-time backfill.

use common::store::{Bounded as _, IndexKind, ensure_index, is_duplicate_key};
use mongodb::bson::doc;
use mongodb::bson::oid::ObjectId;
use mongodb::{Collection, Database};
use serde::{Deserialize, Serialize};

pub const USERS_COLLECTION: &str = "users";
pub const EMAILS_COLLECTION: &str = "emails";
/// One document per one-time data migration this service has finished.
pub const MIGRATIONS_COLLECTION: &str = "migrations";
/// The migration that copies users written before `emails` existed into it.
const EMAILS_BACKFILL: &str = "emails-from-users";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct User {
    #[serde(rename = "_id")]
    pub id: ObjectId,
    /// Trimmed and lower-cased.
    pub email: String,
    pub password_hash: String,
}

/// A user under its normalised email: the claim of the address and what signin reads.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct EmailClaim {
    #[serde(rename = "_id")]
    email: String,
    #[serde(rename = "userId")]
    user_id: ObjectId,
    password_hash: String,
}

impl From<&User> for EmailClaim {
    fn from(user: &User) -> Self {
        Self {
            email: user.email.clone(),
            user_id: user.id,
            password_hash: user.password_hash.clone(),
        }
    }
}

impl From<EmailClaim> for User {
    fn from(claim: EmailClaim) -> Self {
        Self {
            id: claim.user_id,
            email: claim.email,
            password_hash: claim.password_hash,
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Migration {
    #[serde(rename = "_id")]
    name: String,
    at: mongodb::bson::DateTime,
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
    emails: Collection<EmailClaim>,
    migrations: Collection<Migration>,
}

impl UserStore {
    pub fn new(db: &Database) -> Self {
        Self {
            users: db.collection(USERS_COLLECTION),
            emails: db.collection(EMAILS_COLLECTION),
            migrations: db.collection(MIGRATIONS_COLLECTION),
        }
    }

    /// The unique email index of `users` (what the previous version relies on); `emails` needs
    /// none, being keyed by the email.
    pub async fn ensure_indexes(&self) -> mongodb::error::Result<()> {
        ensure_index(
            &self.users,
            "email_unique",
            doc! { "email": 1 },
            IndexKind::Unique,
        )
        .await
    }

    /// Copies every user that has no `emails` claim yet into `emails`, once per database: users
    /// signed up before `emails` existed. Reads all users (run at start, never per request);
    /// idempotent, so a start cut short simply runs it again, and marked done only once complete.
    /// Returns how many users it copied.
    pub async fn backfill_emails(&self) -> mongodb::error::Result<usize> {
        if self
            .migrations
            .find_one(doc! { "_id": EMAILS_BACKFILL })
            .bounded()
            .await?
            .is_some()
        {
            return Ok(0);
        }
        // Without `.bounded()`: a large collection may take longer than one operation timeout.
        let mut users = self.users.find(doc! {}).await?;
        let mut copied = 0;
        while users.advance().await? {
            let user = users.deserialize_current()?;
            match self
                .emails
                .insert_one(EmailClaim::from(&user))
                .bounded()
                .await
            {
                Ok(_) => copied += 1,
                // Claimed already: by an earlier, interrupted backfill or by a signup.
                Err(e) if is_duplicate_key(&e) => {}
                Err(e) => return Err(e),
            }
        }
        let done = Migration {
            name: EMAILS_BACKFILL.to_owned(),
            at: mongodb::bson::DateTime::now(),
        };
        match self.migrations.insert_one(&done).bounded().await {
            Ok(_) => {}
            // Another replica finished it at the same moment.
            Err(e) if is_duplicate_key(&e) => {}
            Err(e) => return Err(e),
        }
        Ok(copied)
    }

    /// Claims the user's email, then writes the user record. The claim alone decides: once it is in,
    /// the account exists and can sign in, so a crash before the second write loses nothing.
    pub async fn insert(&self, user: &User) -> Result<(), InsertUserError> {
        match self
            .emails
            .insert_one(EmailClaim::from(user))
            .bounded()
            .await
        {
            Ok(_) => {}
            Err(e) if is_duplicate_key(&e) => return Err(InsertUserError::EmailTaken),
            Err(e) => return Err(e.into()),
        }
        match self.users.insert_one(user).bounded().await {
            Ok(_) => {}
            // Only a replica of the previous version, during a rolling update, can have registered
            // this address in `users` without a claim; the claim, made first, stands.
            Err(e) if is_duplicate_key(&e) => {
                tracing::warn!(user_id = %user.id, "the users record of a claimed email is taken by another id");
            }
            // Not read by this version: the signup stands without it.
            Err(e) => {
                tracing::warn!(user_id = %user.id, error = %e, "could not write the users record of a new account");
            }
        }
        Ok(())
    }

    /// The user who claimed `email` (normalised), looked up by `_id`.
    pub async fn find_by_email(&self, email: &str) -> mongodb::error::Result<Option<User>> {
        Ok(self
            .emails
            .find_one(doc! { "_id": email })
            .bounded()
            .await?
            .map(User::from))
    }
}
