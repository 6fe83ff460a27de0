//! Charges through Stripe (async-stripe 1.0 RC: hyper 1 + rustls, like the rest of the workspace).
//!
//! Every charge carries an `Idempotency-Key` derived from the order id and the card token's hash:
//! repeating a payment with the same token gets the same charge (or the same decline) back from
//! Stripe instead of a second one, while a new token after a decline is a new attempt.

use anyhow::Context as _;
use secrecy::ExposeSecret;
use sha2::{Digest, Sha256};
use stripe::{ApiErrorsType, IdempotencyKey, RequestStrategy, StripeError, StripeRequest};
use stripe_core::charge::CreateCharge;
use stripe_types::Currency;

use crate::settings::StripeSettings;

/// What a customer is told when Stripe refuses a charge without saying why.
pub const GENERIC_DECLINE: &str = "Your payment could not be processed.";

/// Why a charge did not happen.
#[derive(Debug, thiserror::Error)]
pub enum ChargeError {
    /// Stripe refused the charge (card declined, invalid token, amount too small ...). The message
    /// is Stripe's, written for the customer.
    #[error("charge refused: {0}")]
    Refused(String),
    /// Stripe could not be reached, timed out, or failed on its side. Safe to retry: the
    /// idempotency key makes a retry return whatever the first attempt did.
    #[error("Stripe unavailable: {0}")]
    Unavailable(String),
    /// Our own fault (a bad or revoked API key, a request Stripe cannot accept from us).
    #[error("Stripe rejected our request: {0}")]
    Misconfigured(String),
}

/// The Stripe client. Cheap to clone.
#[derive(Clone, Debug)]
pub struct StripeGateway {
    client: stripe::Client,
}

/// One charge to make.
#[derive(Debug, Clone)]
pub struct ChargeRequest<'a> {
    /// Integer cents; Stripe's `amount` is in the currency's smallest unit.
    pub amount_cents: i64,
    /// The card token from Stripe Checkout (`tok_...`).
    pub source: &'a str,
    pub idempotency_key: String,
}

impl StripeGateway {
    pub fn new(settings: &StripeSettings) -> anyhow::Result<Self> {
        let client = stripe::ClientBuilder::new(settings.key.expose_secret())
            .url(settings.api_base.clone())
            .timeout(settings.timeout)
            // One attempt per payment request: the customer's retry is the retry, and the
            // idempotency key makes it safe.
            .request_strategy(RequestStrategy::Once)
            .app_info("ticketing-payments", None, None)
            .build()
            .context("configuring the Stripe client")?;
        Ok(Self { client })
    }

    /// Charges `amount_cents` euro cents to `source`. Returns the charge id.
    pub async fn charge(&self, request: &ChargeRequest<'_>) -> Result<String, ChargeError> {
        let key = IdempotencyKey::new(&request.idempotency_key)
            .map_err(|e| ChargeError::Misconfigured(format!("idempotency key: {e}")))?;
        let charge = CreateCharge::new()
            .amount(request.amount_cents)
            .currency(Currency::EUR)
            .source(request.source)
            .customize()
            .request_strategy(RequestStrategy::Idempotent(key))
            .send(&self.client)
            .await
            .map_err(classify)?;
        Ok(charge.id.as_str().to_owned())
    }
}

/// Sorts a Stripe failure into what the customer can do about it.
fn classify(err: StripeError) -> ChargeError {
    match err {
        StripeError::Stripe(api, status) => {
            let message = api.message.clone().filter(|m| !m.trim().is_empty());
            let detail = || {
                format!(
                    "{status} {}: {}",
                    api.type_.as_str(),
                    message.clone().unwrap_or_default()
                )
            };
            match (&api.type_, status) {
                (ApiErrorsType::CardError, _) => {
                    ChargeError::Refused(message.unwrap_or_else(|| GENERIC_DECLINE.to_owned()))
                }
                // Rate limited, a concurrent request with our key, or a Stripe-side failure: the
                // same request may succeed later.
                (_, 409 | 429) | (_, 500..) => ChargeError::Unavailable(detail()),
                // Our key is wrong or lacks permission, or our key was reused with other
                // parameters: nothing the customer can fix, and the message is about us.
                (ApiErrorsType::IdempotencyError, _) | (_, 401 | 403) => {
                    ChargeError::Misconfigured(detail())
                }
                // Any other refusal (e.g. `No such token`, amount too small): the reason is about
                // the payment the customer attempted.
                (_, 400..=499) => {
                    ChargeError::Refused(message.unwrap_or_else(|| GENERIC_DECLINE.to_owned()))
                }
                _ => ChargeError::Unavailable(format!("unexpected {}", detail())),
            }
        }
        // A 5xx with an HTML body, a success we cannot read, a dropped connection, a timeout.
        StripeError::JSONDeserialize(e) => {
            ChargeError::Unavailable(format!("unreadable answer: {e}"))
        }
        StripeError::ClientError(e) => ChargeError::Unavailable(format!("transport: {e}")),
        StripeError::Timeout => ChargeError::Unavailable("timed out".to_owned()),
        StripeError::ConfigError(e) => ChargeError::Misconfigured(e),
    }
}

/// SHA-256 of a card token, hex. Stored instead of the token and part of the idempotency key.
pub fn token_hash(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The same order paid with the same token is the same Stripe request.
pub fn idempotency_key(order_id: &str, token_hash: &str) -> String {
    format!("payment-{order_id}-{token_hash}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_hashes_are_sha256_hex() {
        assert_eq!(
            token_hash("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(token_hash("tok_visa").len(), 64);
    }

    #[test]
    fn idempotency_keys_differ_by_order_and_by_token_and_fit_stripe_limits() {
        let order = "64b7f0c2a1b2c3d4e5f60718";
        let a = idempotency_key(order, &token_hash("tok_a"));
        assert_eq!(a, idempotency_key(order, &token_hash("tok_a")));
        assert_ne!(a, idempotency_key(order, &token_hash("tok_b")));
        assert_ne!(
            a,
            idempotency_key("64b7f0c2a1b2c3d4e5f60719", &token_hash("tok_a"))
        );
        assert!(IdempotencyKey::new(&a).is_ok());
        assert!(a.len() <= 255);
    }
}
