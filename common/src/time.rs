//! Timestamps on the wire: ISO-8601 UTC with milliseconds and `Z`, as JavaScript's `toISOString()`.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Deserializer, Serializer};

pub fn to_iso_millis(at: &DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// `#[serde(with = "common::time::iso_millis")]` for `DateTime<Utc>` fields.
pub mod iso_millis {
    use super::*;

    pub fn serialize<S: Serializer>(at: &DateTime<Utc>, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&to_iso_millis(at))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<DateTime<Utc>, D::Error> {
        let text = String::deserialize(deserializer)?;
        DateTime::parse_from_rfc3339(&text)
            .map(|at| at.with_timezone(&Utc))
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn timestamps_look_like_javascript_iso_strings() {
        let at = Utc.timestamp_millis_opt(1_700_000_000_123).single();
        assert_eq!(
            at.map(|at| to_iso_millis(&at)),
            Some("2023-11-14T22:13:20.123Z".into())
        );
    }
}
