//! The id of a ticket or an order as events carry it: a MongoDB ObjectId written as 24 hex
//! characters, exactly as before. A payload whose id is anything else fails to deserialise, so the
//! listener moves it to the dead-letter stream in one place instead of each handler checking.

use std::fmt;
use std::str::FromStr;

use mongodb::bson::oid::ObjectId;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::store::parse_object_id;

#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Id(ObjectId);

impl Id {
    /// A new, unique id.
    pub fn new() -> Self {
        Self(ObjectId::new())
    }

    /// `None` unless `text` is 24 hex characters.
    pub fn parse(text: &str) -> Option<Self> {
        parse_object_id(text).map(Self)
    }

    pub fn oid(self) -> ObjectId {
        self.0
    }
}

impl Default for Id {
    fn default() -> Self {
        Self::new()
    }
}

impl From<ObjectId> for Id {
    fn from(id: ObjectId) -> Self {
        Self(id)
    }
}

impl From<Id> for ObjectId {
    fn from(id: Id) -> Self {
        id.0
    }
}

/// Why a text is not an [`Id`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("an id is 24 hexadecimal characters")]
pub struct MalformedId;

impl FromStr for Id {
    type Err = MalformedId;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::parse(text).ok_or(MalformedId)
    }
}

impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.to_hex())
    }
}

impl fmt::Debug for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0.to_hex())
    }
}

impl PartialEq<str> for Id {
    fn eq(&self, other: &str) -> bool {
        Self::parse(other) == Some(*self)
    }
}

impl PartialEq<&str> for Id {
    fn eq(&self, other: &&str) -> bool {
        self == *other
    }
}

impl PartialEq<String> for Id {
    fn eq(&self, other: &String) -> bool {
        self == other.as_str()
    }
}

impl Serialize for Id {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0.to_hex())
    }
}

impl<'de> Deserialize<'de> for Id {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Self::parse(&text).ok_or_else(|| {
            serde::de::Error::custom(format!("{text:?} is not an id: {MalformedId}"))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_id_is_written_and_read_as_its_24_hex_characters() {
        let id: Id = "64b7f0c2a1b2c3d4e5f60718".parse().expect("an id");
        assert_eq!(
            serde_json::to_string(&id).expect("json"),
            "\"64b7f0c2a1b2c3d4e5f60718\""
        );
        assert_eq!(
            serde_json::from_str::<Id>("\"64b7f0c2a1b2c3d4e5f60718\"").expect("an id"),
            id
        );
        assert_eq!(id, "64b7f0c2a1b2c3d4e5f60718");
        assert_eq!(id.to_string(), "64b7f0c2a1b2c3d4e5f60718");
    }

    #[test]
    fn anything_else_is_refused_when_read() {
        for bad in [
            "\"\"",
            "\"abc\"",
            "\"zzzzzzzzzzzzzzzzzzzzzzzz\"",
            "12",
            "null",
        ] {
            assert!(serde_json::from_str::<Id>(bad).is_err(), "{bad}");
        }
        assert_eq!("nope".parse::<Id>(), Err(MalformedId));
    }
}
