//! Prices are kept as an integer number of cents; JSON keeps the SPEC's plain number of euros.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The largest price a ticket may have, in cents (one million euros).
pub const MAX_PRICE_CENTS: i64 = 100_000_000;

/// An amount of money in cents. Serialised as a JSON number of euros (`12.5`, `20`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Price(i64);

impl Price {
    pub const fn from_cents(cents: i64) -> Self {
        Self(cents)
    }

    pub const fn cents(self) -> i64 {
        self.0
    }

    /// Converts a number of euros to cents, rounding to the nearest cent. `None` for values that are
    /// not finite or do not fit.
    pub fn from_euros(euros: f64) -> Option<Self> {
        let cents = (euros * 100.0).round();
        if cents.is_finite() && cents.abs() <= 9.0e15 {
            Some(Self(cents as i64))
        } else {
            None
        }
    }

    pub fn euros(self) -> f64 {
        self.0 as f64 / 100.0
    }
}

impl Serialize for Price {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if self.0 % 100 == 0 {
            serializer.serialize_i64(self.0 / 100)
        } else {
            serializer.serialize_f64(self.euros())
        }
    }
}

impl<'de> Deserialize<'de> for Price {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let euros = f64::deserialize(deserializer)?;
        Self::from_euros(euros).ok_or_else(|| serde::de::Error::custom("price out of range"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_euros_serialise_as_integers_and_cents_as_decimals() {
        assert_eq!(
            serde_json::to_string(&Price::from_cents(2000)).ok(),
            Some("20".into())
        );
        assert_eq!(
            serde_json::to_string(&Price::from_cents(1250)).ok(),
            Some("12.5".into())
        );
        assert_eq!(
            serde_json::to_string(&Price::from_cents(1999)).ok(),
            Some("19.99".into())
        );
    }

    #[test]
    fn euros_are_rounded_to_the_nearest_cent() {
        assert_eq!(Price::from_euros(10.005).map(Price::cents), Some(1001));
        assert_eq!(Price::from_euros(0.1 + 0.2).map(Price::cents), Some(30));
        assert_eq!(Price::from_euros(f64::NAN), None);
        assert_eq!(Price::from_euros(f64::INFINITY), None);
        assert_eq!(Price::from_euros(1e300), None);
    }

    #[test]
    fn prices_deserialise_from_json_numbers() {
        let price: Price = serde_json::from_str("19.99").unwrap_or_default();
        assert_eq!(price.cents(), 1999);
    }
}
