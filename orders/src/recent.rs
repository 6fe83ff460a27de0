//! What this process saw lately of records it reads often: each record's newest version seen, in a
//! bounded memory (least used first out). A remembered copy is never an answer in itself; it is
//! where a read starts (`VersionedStore::newest_from`: "did a change come after it?"), and it says
//! what never changes about a record (an order's buyer and ticket) or what cannot change any more
//! (a paid order).

use mongodb::bson::oid::ObjectId;

/// A record kept by [`Recent`]: under its `_id`, ordered by its version.
pub trait Remembered: Clone + Send + Sync + 'static {
    fn recent_id(&self) -> ObjectId;
    fn recent_version(&self) -> i64;

    /// Whether `self`, of the same version as `kept`, knows more about that version than `kept`
    /// (a version's state never changes, but what this process learned of it can grow).
    fn adds_to(&self, _kept: &Self) -> bool {
        false
    }
}

/// The newest version seen of each of up to `capacity` records. Cheap to clone (shared).
#[derive(Clone)]
pub struct Recent<T: Remembered>(moka::sync::Cache<ObjectId, T>);

impl<T: Remembered> Recent<T> {
    pub fn new(capacity: u64) -> Self {
        Self(moka::sync::Cache::new(capacity))
    }

    pub fn get(&self, id: ObjectId) -> Option<T> {
        self.0.get(&id)
    }

    /// Keeps `seen` unless a later version of it is kept already, or the same version knowing as
    /// much: a slow reader cannot put an older copy back over a newer one.
    pub fn remember(&self, seen: &T) {
        self.0
            .entry(seen.recent_id())
            .and_compute_with(|kept| match kept {
                Some(kept) if !supersedes(seen, kept.value()) => moka::ops::compute::Op::Nop,
                _ => moka::ops::compute::Op::Put(seen.clone()),
            });
    }
}

fn supersedes<T: Remembered>(seen: &T, kept: &T) -> bool {
    let (seen_version, kept_version) = (seen.recent_version(), kept.recent_version());
    seen_version > kept_version || (seen_version == kept_version && seen.adds_to(kept))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, PartialEq)]
    struct Copy {
        id: ObjectId,
        version: i64,
        known: bool,
    }

    impl Remembered for Copy {
        fn recent_id(&self) -> ObjectId {
            self.id
        }
        fn recent_version(&self) -> i64 {
            self.version
        }
        fn adds_to(&self, kept: &Self) -> bool {
            self.known && !kept.known
        }
    }

    #[test]
    fn the_newest_version_seen_is_kept_whatever_the_order_copies_arrive_in() {
        let id = ObjectId::new();
        let copy = |version, known| Copy { id, version, known };
        let recent = Recent::new(10);
        recent.remember(&copy(2, false));
        recent.remember(&copy(1, true));
        assert_eq!(
            recent.get(id),
            Some(copy(2, false)),
            "an older copy never returns"
        );
        recent.remember(&copy(2, true));
        assert_eq!(
            recent.get(id),
            Some(copy(2, true)),
            "what was learned of v2 is kept"
        );
        recent.remember(&copy(2, false));
        assert_eq!(
            recent.get(id),
            Some(copy(2, true)),
            "and not forgotten by a plain read"
        );
        recent.remember(&copy(3, false));
        assert_eq!(recent.get(id), Some(copy(3, false)));
        assert_eq!(recent.get(ObjectId::new()), None);
    }
}
