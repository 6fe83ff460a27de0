//! Charges, PaymentIntents and refunds through Stripe (async-stripe 1.0 RC: hyper 1 + rustls, like
//! the rest of the workspace).
//!
//! Every request carries an `Idempotency-Key` derived from what it is about, never from what the
//! buyer sends: a charge or a PaymentIntent from its payment attempt's id, a refund from the id of
//! what it refunds. Repeating a
//! request with its key gets Stripe's saved answer (for 24 h) instead of a second charge or refund,
//! which is how an answer that was late, lost or unreadable is resolved (see `crate::saga`).

use std::collections::HashMap;

use anyhow::Context as _;
use secrecy::ExposeSecret;
use sha2::{Digest, Sha256};
use stripe::{ApiErrorsType, IdempotencyKey, RequestStrategy, StripeError, StripeRequest};
use stripe_core::charge::CreateCharge;
use stripe_core::payment_intent::{
    CancelPaymentIntent, CreatePaymentIntent, CreatePaymentIntentAutomaticPaymentMethods,
    CreatePaymentIntentAutomaticPaymentMethodsAllowRedirects, RetrievePaymentIntent,
};
use stripe_core::refund::CreateRefund;
use stripe_core::{PaymentIntent, PaymentIntentStatus};
use stripe_types::Currency;

use crate::settings::StripeSettings;

/// What a customer is told when Stripe refuses a charge without saying why.
pub const GENERIC_DECLINE: &str = "Your payment could not be processed.";

/// What Stripe did with a charge or refund request, as far as we can tell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StripeOutcome {
    /// Done; the id of the charge or refund.
    Done(String),
    /// Definitely not done, for a reason about the buyer's payment (card declined, invalid token,
    /// amount too small).
    Refused {
        /// What the buyer is told: Stripe's own message for card errors only (it is written for
        /// cardholders); any other refusal's message may describe our account or request, so the
        /// buyer gets [`GENERIC_DECLINE`].
        customer: String,
        /// Stripe's status, type and message, for the logs and the attempt's record.
        detail: String,
    },
    /// Definitely not done, for a reason that is not the buyer's: rate limited, or a request Stripe
    /// will not accept from us (a bad key). The cause is for the logs only.
    NotDone(Unprocessed),
    /// Maybe done: a timeout, a dropped connection after sending, a 5xx, a concurrent request with
    /// the same key, a success we could not read. Only repeating the keyed request can tell.
    Uncertain(String),
}

/// Why Stripe definitely did not process a request that was not the buyer's fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unprocessed {
    /// Stripe could not be reached at all, or asked us to slow down: retrying later may work.
    Unavailable(String),
    /// Our own fault (a bad or revoked API key, an idempotency key reused with other parameters).
    Misconfigured(String),
}

/// The Stripe client. Cheap to clone.
#[derive(Clone, Debug)]
pub struct StripeGateway {
    client: stripe::Client,
}

/// One charge to make (or to repeat, with the same key and parameters).
#[derive(Debug, Clone)]
pub struct ChargeRequest<'a> {
    /// Integer cents; Stripe's `amount` is in the currency's smallest unit.
    pub amount_cents: i64,
    /// The card token from the card form (`tok_...`).
    pub source: &'a str,
    /// The order paid for, in the charge's metadata so the charge can be found at Stripe.
    pub order_id: String,
    /// The payment attempt: the idempotency key and the metadata derive from it.
    pub attempt_id: &'a str,
}

/// One PaymentIntent to create and confirm (or to repeat, with the same key and parameters).
#[derive(Debug, Clone)]
pub struct IntentRequest<'a> {
    /// Integer cents, as for a charge.
    pub amount_cents: i64,
    /// The PaymentMethod Stripe.js made from the card form (`pm_...`).
    pub payment_method: &'a str,
    /// The order paid for, in the intent's metadata.
    pub order_id: String,
    /// The payment attempt: the idempotency key and the metadata derive from it.
    pub attempt_id: &'a str,
}

/// Where a PaymentIntent stands, as Stripe answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IntentState {
    /// Paid.
    Succeeded,
    /// The buyer must act (3-D Secure) in the page, through Stripe.js with this secret.
    RequiresAction { client_secret: String },
    /// Stripe is still working on it (or it waits for something we never ask for, such as a
    /// capture): only asking again later can tell.
    Processing,
    /// Definitely not paid (cancelled, or the card failed after confirmation, e.g. 3-D Secure
    /// refused); for the buyer, and for the logs, as in [`StripeOutcome::Refused`].
    Failed { customer: String, detail: String },
}

/// What Stripe said about a PaymentIntent request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IntentOutcome {
    /// The intent (its id) and where it stands.
    Intent { id: String, state: IntentState },
    /// No intent to speak of: refused, not processed or uncertain, as for a charge.
    Other(StripeOutcome),
}

/// What a refund takes back.
#[derive(Debug, Clone, Copy)]
pub enum Refundable<'a> {
    Charge(&'a str),
    PaymentIntent(&'a str),
}

impl Refundable<'_> {
    fn id(&self) -> &str {
        match self {
            Refundable::Charge(id) | Refundable::PaymentIntent(id) => id,
        }
    }
}

impl StripeGateway {
    pub fn new(settings: &StripeSettings) -> anyhow::Result<Self> {
        let client = stripe::ClientBuilder::new(settings.key.expose_secret())
            .url(settings.api_base.clone())
            .timeout(settings.timeout)
            // One try per call: the reconciler repeats uncertain calls with the same key.
            .request_strategy(RequestStrategy::Once)
            .app_info("ticketing-payments", None, None)
            .build()
            .context("configuring the Stripe client")?;
        Ok(Self { client })
    }

    /// Charges `amount_cents` euro cents to `source`, keyed by the attempt.
    pub async fn charge(&self, request: &ChargeRequest<'_>) -> StripeOutcome {
        let key = match idempotency(charge_idempotency_key(request.attempt_id)) {
            Ok(key) => key,
            Err(refused) => return refused,
        };
        let metadata = HashMap::from([
            ("order_id".to_owned(), request.order_id.clone()),
            ("attempt_id".to_owned(), request.attempt_id.to_owned()),
        ]);
        let sent = CreateCharge::new()
            .amount(request.amount_cents)
            .currency(Currency::EUR)
            .source(request.source)
            .metadata(metadata)
            .customize()
            .request_strategy(RequestStrategy::Idempotent(key))
            .send(&self.client)
            .await;
        match sent {
            Ok(charge) => StripeOutcome::Done(charge.id.as_str().to_owned()),
            Err(err) => classify(err),
        }
    }

    /// Refunds the whole charge or PaymentIntent, keyed by it: asking twice refunds once.
    pub async fn refund(&self, of: Refundable<'_>, order_id: &str) -> StripeOutcome {
        let key = match idempotency(refund_idempotency_key(of.id())) {
            Ok(key) => key,
            Err(refused) => return refused,
        };
        let metadata = HashMap::from([("order_id".to_owned(), order_id.to_owned())]);
        let refund = match of {
            Refundable::Charge(id) => CreateRefund::new().charge(id),
            Refundable::PaymentIntent(id) => CreateRefund::new().payment_intent(id),
        };
        let sent = refund
            .metadata(metadata)
            .customize()
            .request_strategy(RequestStrategy::Idempotent(key))
            .send(&self.client)
            .await;
        match sent {
            Ok(refund) => StripeOutcome::Done(refund.id.as_str().to_owned()),
            Err(StripeError::Stripe(api, _))
                if api.code.as_ref().map(|c| c.as_str()) == Some("charge_already_refunded") =>
            {
                // Refunded before, by us under another key or by a person in the dashboard.
                StripeOutcome::Done(String::new())
            }
            Err(err) => classify(err),
        }
    }

    /// Creates and confirms a PaymentIntent of `amount_cents` euro cents with the buyer's
    /// PaymentMethod, keyed by the attempt. Cards only, without redirects: 3-D Secure is done in
    /// the page by Stripe.js (`handleNextAction`), so no `return_url` is needed.
    pub async fn create_intent(&self, request: &IntentRequest<'_>) -> IntentOutcome {
        let key = match idempotency(intent_idempotency_key(request.attempt_id)) {
            Ok(key) => key,
            Err(refused) => return IntentOutcome::Other(refused),
        };
        let metadata = HashMap::from([
            ("order_id".to_owned(), request.order_id.clone()),
            ("attempt_id".to_owned(), request.attempt_id.to_owned()),
        ]);
        let mut methods = CreatePaymentIntentAutomaticPaymentMethods::new(true);
        methods.allow_redirects =
            Some(CreatePaymentIntentAutomaticPaymentMethodsAllowRedirects::Never);
        let sent = CreatePaymentIntent::new(request.amount_cents, Currency::EUR)
            .payment_method(request.payment_method)
            .confirm(true)
            .automatic_payment_methods(methods)
            .metadata(metadata)
            .customize()
            .request_strategy(RequestStrategy::Idempotent(key))
            .send(&self.client)
            .await;
        intent_outcome(sent)
    }

    /// Where an intent stands now (after the buyer's 3-D Secure, or for the reconciler).
    pub async fn retrieve_intent(&self, intent_id: &str) -> IntentOutcome {
        let sent = RetrievePaymentIntent::new(intent_id)
            .customize()
            // A read: repeating it is harmless, so no key.
            .send(&self.client)
            .await;
        intent_outcome(sent)
    }

    /// Cancels an intent still waiting for the buyer (its order's window closed). Stripe refuses
    /// to cancel one that succeeded meanwhile: that answer is a refusal, and the next retrieval
    /// finds the payment.
    pub async fn cancel_intent(&self, intent_id: &str) -> IntentOutcome {
        let key = match idempotency(format!("cancel-{intent_id}")) {
            Ok(key) => key,
            Err(refused) => return IntentOutcome::Other(refused),
        };
        let sent = CancelPaymentIntent::new(intent_id)
            .customize()
            .request_strategy(RequestStrategy::Idempotent(key))
            .send(&self.client)
            .await;
        intent_outcome(sent)
    }
}

/// Reads Stripe's answer about an intent.
fn intent_outcome(sent: Result<PaymentIntent, StripeError>) -> IntentOutcome {
    match sent {
        Ok(intent) => IntentOutcome::Intent {
            id: intent.id.as_str().to_owned(),
            state: intent_state(&intent),
        },
        Err(err) => IntentOutcome::Other(classify(err)),
    }
}

/// Sorts an intent's status by what the saga does with it.
fn intent_state(intent: &PaymentIntent) -> IntentState {
    match &intent.status {
        PaymentIntentStatus::Succeeded => IntentState::Succeeded,
        PaymentIntentStatus::RequiresAction => match &intent.client_secret {
            Some(secret) => IntentState::RequiresAction {
                client_secret: secret.clone(),
            },
            // Stripe always sends it to the secret key; without it the page cannot act.
            None => IntentState::Processing,
        },
        PaymentIntentStatus::RequiresPaymentMethod | PaymentIntentStatus::Canceled => {
            let error = intent.last_payment_error.as_deref();
            let message = error
                .and_then(|e| e.message.clone())
                .filter(|m| !m.trim().is_empty());
            let card_error = error.is_some_and(|e| e.type_ == ApiErrorsType::CardError);
            IntentState::Failed {
                customer: match (card_error, &message) {
                    (true, Some(message)) => message.clone(),
                    _ => GENERIC_DECLINE.to_owned(),
                },
                detail: format!(
                    "payment intent {} is {}: {}",
                    intent.id.as_str(),
                    intent.status.as_str(),
                    message.unwrap_or_default()
                ),
            }
        }
        _ => IntentState::Processing,
    }
}

/// A key Stripe accepts, or the outcome of a request that could not be sent with it.
fn idempotency(key: String) -> Result<IdempotencyKey, StripeOutcome> {
    IdempotencyKey::new(key).map_err(|e| {
        StripeOutcome::NotDone(Unprocessed::Misconfigured(format!("idempotency key: {e}")))
    })
}

/// Sorts a Stripe failure by what it says about the request having been processed.
fn classify(err: StripeError) -> StripeOutcome {
    match err {
        StripeError::Stripe(api, status) => {
            let message = api.message.clone().filter(|m| !m.trim().is_empty());
            let detail = format!(
                "{status} {}: {}",
                api.type_.as_str(),
                message.clone().unwrap_or_default()
            );
            match (&api.type_, status) {
                (ApiErrorsType::CardError, _) => StripeOutcome::Refused {
                    customer: message.unwrap_or_else(|| GENERIC_DECLINE.to_owned()),
                    detail,
                },
                // Rate limited: Stripe did not process the request.
                (_, 429) => StripeOutcome::NotDone(Unprocessed::Unavailable(detail)),
                // A concurrent request with our key is still running, or Stripe failed on its side
                // after perhaps processing it: only a repeat of the keyed request can tell.
                (_, 409) | (_, 500..) => StripeOutcome::Uncertain(detail),
                // Our key is wrong or lacks permission, or our idempotency key was reused with
                // other parameters: nothing the customer can fix, and the message is about us.
                (ApiErrorsType::IdempotencyError, _) | (_, 401 | 403) => {
                    StripeOutcome::NotDone(Unprocessed::Misconfigured(detail))
                }
                // Any other refusal (`No such token`, amount too small): about the payment the
                // customer attempted, but in words meant for developers, so not shown to them.
                (_, 400..=499) => StripeOutcome::Refused {
                    customer: GENERIC_DECLINE.to_owned(),
                    detail,
                },
                _ => StripeOutcome::Uncertain(format!("unexpected {detail}")),
            }
        }
        // A success whose body we cannot read: the charge may exist.
        StripeError::JSONDeserialize(e) => {
            StripeOutcome::Uncertain(format!("unreadable answer: {e}"))
        }
        // hyper's connect errors read "client error (Connect)": no connection, so nothing was sent.
        StripeError::ClientError(e) if e.contains("(Connect)") => {
            StripeOutcome::NotDone(Unprocessed::Unavailable(format!("cannot connect: {e}")))
        }
        StripeError::ClientError(e) => StripeOutcome::Uncertain(format!("transport: {e}")),
        StripeError::Timeout => StripeOutcome::Uncertain("timed out".to_owned()),
        StripeError::ConfigError(e) => StripeOutcome::NotDone(Unprocessed::Misconfigured(e)),
    }
}

/// SHA-256 of a card token, hex: kept on a finished attempt instead of the token.
pub fn token_hash(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// One payment attempt is one Stripe charge, whatever the buyer does meanwhile.
pub fn charge_idempotency_key(attempt_id: &str) -> String {
    format!("charge-{attempt_id}")
}

/// One payment attempt is one PaymentIntent.
pub fn intent_idempotency_key(attempt_id: &str) -> String {
    format!("intent-{attempt_id}")
}

/// One charge (or PaymentIntent) is refunded at most once.
pub fn refund_idempotency_key(charge_id: &str) -> String {
    format!("refund-{charge_id}")
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
    fn idempotency_keys_name_the_attempt_or_the_charge_and_fit_stripe_limits() {
        let attempt = "64b7f0c2a1b2c3d4e5f60718";
        assert_eq!(
            charge_idempotency_key(attempt),
            "charge-64b7f0c2a1b2c3d4e5f60718"
        );
        assert_ne!(
            charge_idempotency_key(attempt),
            charge_idempotency_key("64b7f0c2a1b2c3d4e5f60719")
        );
        assert_eq!(refund_idempotency_key("ch_1"), "refund-ch_1");
        assert!(IdempotencyKey::new(charge_idempotency_key(attempt)).is_ok());
        assert!(IdempotencyKey::new(refund_idempotency_key("ch_3PgaxNB7WZ01zgkW0")).is_ok());
    }

    fn api_error(status: u16, type_: ApiErrorsType, message: Option<&str>) -> StripeError {
        let api = stripe::ApiErrors {
            advice_code: None,
            charge: None,
            code: None,
            decline_code: None,
            doc_url: None,
            message: message.map(str::to_owned),
            network_advice_code: None,
            network_decline_code: None,
            param: None,
            payment_intent: None,
            payment_method: None,
            payment_method_type: None,
            request_log_url: None,
            setup_intent: None,
            source: None,
            type_,
        };
        StripeError::Stripe(Box::new(api), status)
    }

    #[test]
    fn only_definite_answers_say_the_charge_did_not_happen() {
        let declined = api_error(
            402,
            ApiErrorsType::CardError,
            Some("Your card was declined."),
        );
        assert_eq!(
            classify(declined),
            StripeOutcome::Refused {
                customer: "Your card was declined.".into(),
                detail: "402 card_error: Your card was declined.".into()
            }
        );
        // Not a card error: Stripe's words stay in our logs.
        let no_such_token = api_error(
            400,
            ApiErrorsType::InvalidRequestError,
            Some("No such token: 'tok_bogus'; a similar object exists in live mode"),
        );
        assert!(matches!(
            classify(no_such_token),
            StripeOutcome::Refused { customer, detail }
                if customer == GENERIC_DECLINE && detail.contains("No such token")
        ));
        let limited = api_error(429, ApiErrorsType::InvalidRequestError, None);
        assert!(matches!(
            classify(limited),
            StripeOutcome::NotDone(Unprocessed::Unavailable(_))
        ));
        let key = api_error(401, ApiErrorsType::InvalidRequestError, None);
        assert!(matches!(
            classify(key),
            StripeOutcome::NotDone(Unprocessed::Misconfigured(_))
        ));
        for uncertain in [
            api_error(500, ApiErrorsType::ApiError, None),
            api_error(409, ApiErrorsType::IdempotencyError, None),
            StripeError::Timeout,
            StripeError::JSONDeserialize("eof".into()),
            StripeError::ClientError("connection closed before message completed".into()),
        ] {
            assert!(
                matches!(classify(uncertain), StripeOutcome::Uncertain(_)),
                "must stay uncertain"
            );
        }
        assert!(matches!(
            classify(StripeError::ClientError(
                "client error (Connect): tcp connect error".into()
            )),
            StripeOutcome::NotDone(Unprocessed::Unavailable(_))
        ));
    }
}
