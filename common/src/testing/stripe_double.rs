//! A Stripe double that behaves like Stripe where money is concerned, behind the real async-stripe
//! client: it keeps a ledger of the charges, PaymentIntents and refunds it made (an intent that
//! succeeds is a charge of the ledger, under the intent's id), answers a repeated
//! `Idempotency-Key` with the saved result instead of charging again, and can be told to be slow,
//! down, or to fail after charging. The ledger is what the money invariant is checked against
//! ([`super::invariants`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde_json::{Value, json};
use wiremock::matchers::{method, path, path_regex};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

/// The card token Stripe's test mode declines.
pub const DECLINED_TOKEN: &str = "tok_chargeDeclined";
pub const DECLINE_MESSAGE: &str = "Your card was declined.";
/// The PaymentMethods Stripe's test mode declines, and asks 3-D Secure for; any other succeeds.
pub const DECLINED_PAYMENT_METHOD: &str = "pm_card_chargeDeclined";
pub const THREE_D_SECURE_PAYMENT_METHOD: &str = "pm_card_threeDSecure2Required";
/// What Stripe says of a failed 3-D Secure.
pub const AUTHENTICATION_FAILED: &str = "We are unable to authenticate your payment method. Please choose a different payment method and try again.";

/// How the double answers new requests (a repeated idempotency key always gets its saved answer,
/// after the current delay).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behaviour {
    /// Charges and refunds, answering after `delay`.
    Normal { delay: Duration },
    /// Answers 503 with an HTML page and processes nothing (an outage in front of Stripe).
    Down,
    /// Processes the request, then answers 500 (Stripe failed after doing the work).
    FailsAfterProcessing,
}

/// One charge the double made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChargeRecord {
    pub id: String,
    pub idempotency_key: Option<String>,
    pub amount: i64,
    pub currency: String,
    pub source: String,
    /// From the charge's metadata.
    pub order_id: Option<String>,
    pub attempt_id: Option<String>,
    /// The refund of this charge, if any.
    pub refund_id: Option<String>,
}

/// One PaymentIntent the double made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IntentRecord {
    pub id: String,
    pub idempotency_key: Option<String>,
    pub amount: i64,
    pub payment_method: String,
    pub order_id: Option<String>,
    pub attempt_id: Option<String>,
    /// Stripe's status: `requires_action`, `succeeded`, `requires_payment_method`, `canceled`.
    pub status: String,
    /// Whether its last 3-D Secure failed.
    pub authentication_failed: bool,
}

/// One refund the double made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefundRecord {
    pub id: String,
    pub charge_id: String,
    pub idempotency_key: Option<String>,
}

#[derive(Debug)]
struct Saved {
    status: u16,
    body: Value,
}

#[derive(Debug)]
struct Ledger {
    behaviour: Behaviour,
    charges: Vec<ChargeRecord>,
    intents: Vec<IntentRecord>,
    refunds: Vec<RefundRecord>,
    /// Saved answers by idempotency key, as Stripe keeps them for 24 h.
    saved: HashMap<String, Saved>,
    requests: usize,
}

/// The double: a wiremock server and its ledger. Cheap to clone.
#[derive(Clone)]
pub struct StripeDouble {
    ledger: Arc<Mutex<Ledger>>,
}

impl StripeDouble {
    /// Mounts the double's routes (`POST /v1/charges`, `POST /v1/refunds`) on `server`.
    pub async fn mount(server: &MockServer) -> Self {
        let double = Self {
            ledger: Arc::new(Mutex::new(Ledger {
                behaviour: Behaviour::Normal {
                    delay: Duration::ZERO,
                },
                charges: Vec::new(),
                intents: Vec::new(),
                refunds: Vec::new(),
                saved: HashMap::new(),
                requests: 0,
            })),
        };
        for (route, kind) in [
            ("/v1/charges", Kind::Charge),
            ("/v1/refunds", Kind::Refund),
            ("/v1/payment_intents", Kind::CreateIntent),
        ] {
            Mock::given(method("POST"))
                .and(path(route))
                .respond_with(Responder {
                    double: double.clone(),
                    kind,
                })
                .mount(server)
                .await;
        }
        for (verb, route, kind) in [
            ("GET", r"^/v1/payment_intents/[^/]+$", Kind::RetrieveIntent),
            (
                "POST",
                r"^/v1/payment_intents/[^/]+/cancel$",
                Kind::CancelIntent,
            ),
        ] {
            Mock::given(method(verb))
                .and(path_regex(route))
                .respond_with(Responder {
                    double: double.clone(),
                    kind,
                })
                .mount(server)
                .await;
        }
        double
    }

    /// What the buyer's 3-D Secure does in Stripe.js: the intent succeeds (a charge of the
    /// ledger), or fails and waits for another payment method. `false` if no such intent waits.
    pub fn authenticate(&self, intent_id: &str, passes: bool) -> bool {
        let mut ledger = self.ledger();
        let Some(position) = ledger
            .intents
            .iter()
            .position(|i| i.id == intent_id && i.status == "requires_action")
        else {
            return false;
        };
        if passes {
            ledger.intent_succeeded(position);
        } else {
            let intent = &mut ledger.intents[position];
            intent.status = "requires_payment_method".to_owned();
            intent.authentication_failed = true;
        }
        true
    }

    pub fn intents(&self) -> Vec<IntentRecord> {
        self.ledger().intents.clone()
    }

    /// PaymentIntents of an order (by metadata).
    pub fn intents_of(&self, order_id: &str) -> Vec<IntentRecord> {
        self.intents()
            .into_iter()
            .filter(|i| i.order_id.as_deref() == Some(order_id))
            .collect()
    }

    fn ledger(&self) -> MutexGuard<'_, Ledger> {
        // A test that panicked while holding the lock has failed already; its ledger is still
        // readable for the report.
        self.ledger
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn set(&self, behaviour: Behaviour) {
        self.ledger().behaviour = behaviour;
    }

    pub fn charges(&self) -> Vec<ChargeRecord> {
        self.ledger().charges.clone()
    }

    pub fn refunds(&self) -> Vec<RefundRecord> {
        self.ledger().refunds.clone()
    }

    /// Every charge and refund request received (repeats included).
    pub fn requests(&self) -> usize {
        self.ledger().requests
    }

    /// Charges of an order (by metadata).
    pub fn charges_of(&self, order_id: &str) -> Vec<ChargeRecord> {
        self.charges()
            .into_iter()
            .filter(|c| c.order_id.as_deref() == Some(order_id))
            .collect()
    }
}

#[derive(Clone, Copy)]
enum Kind {
    Charge,
    Refund,
    CreateIntent,
    RetrieveIntent,
    CancelIntent,
}

struct Responder {
    double: StripeDouble,
    kind: Kind,
}

impl Respond for Responder {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let form = form(request);
        let key = request
            .headers
            .get("idempotency-key")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let mut ledger = self.double.ledger();
        ledger.requests += 1;
        let behaviour = ledger.behaviour;
        let delay = match behaviour {
            Behaviour::Normal { delay } => delay,
            _ => Duration::ZERO,
        };
        if behaviour == Behaviour::Down {
            return ResponseTemplate::new(503).set_body_string("<html>upstream unavailable</html>");
        }
        if let Some(saved) = key.as_ref().and_then(|k| ledger.saved.get(k)) {
            return answer(saved.status, saved.body.clone(), delay, behaviour);
        }
        let intent_id = request
            .url
            .path_segments()
            .and_then(|mut segments| segments.nth(2))
            .unwrap_or_default()
            .to_owned();
        let (status, body) = match self.kind {
            Kind::Charge => ledger.charge(&form, key.clone()),
            Kind::Refund => ledger.refund(&form, key.clone()),
            Kind::CreateIntent => ledger.create_intent(&form, key.clone()),
            Kind::RetrieveIntent => ledger.intent_answer(&intent_id),
            Kind::CancelIntent => ledger.cancel_intent(&intent_id),
        };
        if let Some(key) = key {
            ledger.saved.insert(
                key,
                Saved {
                    status,
                    body: body.clone(),
                },
            );
        }
        answer(status, body, delay, behaviour)
    }
}

fn answer(status: u16, body: Value, delay: Duration, behaviour: Behaviour) -> ResponseTemplate {
    if behaviour == Behaviour::FailsAfterProcessing {
        return ResponseTemplate::new(500).set_body_json(
            json!({"error": {"type": "api_error", "message": "An unknown error occurred"}}),
        );
    }
    ResponseTemplate::new(status)
        .set_body_json(body)
        .set_delay(delay)
}

impl Ledger {
    /// A charge: declined for [`DECLINED_TOKEN`], otherwise recorded.
    fn charge(&mut self, form: &HashMap<String, String>, key: Option<String>) -> (u16, Value) {
        let source = form.get("source").cloned().unwrap_or_default();
        if source == DECLINED_TOKEN {
            return (
                402,
                json!({"error": {"type": "card_error", "code": "card_declined",
                                 "decline_code": "generic_decline", "message": DECLINE_MESSAGE}}),
            );
        }
        let amount = form
            .get("amount")
            .and_then(|a| a.parse().ok())
            .unwrap_or_default();
        let id = format!("ch_double_{}", self.charges.len() + 1);
        self.charges.push(ChargeRecord {
            id: id.clone(),
            idempotency_key: key,
            amount,
            currency: form.get("currency").cloned().unwrap_or_default(),
            source: source.clone(),
            order_id: form.get("metadata[order_id]").cloned(),
            attempt_id: form.get("metadata[attempt_id]").cloned(),
            refund_id: None,
        });
        (200, super::stripe_charge_json(&id, amount, &source))
    }

    /// A PaymentIntent created and confirmed: declined for [`DECLINED_PAYMENT_METHOD`], waiting for
    /// 3-D Secure for [`THREE_D_SECURE_PAYMENT_METHOD`], otherwise paid.
    fn create_intent(
        &mut self,
        form: &HashMap<String, String>,
        key: Option<String>,
    ) -> (u16, Value) {
        let payment_method = form.get("payment_method").cloned().unwrap_or_default();
        if payment_method == DECLINED_PAYMENT_METHOD {
            return (
                402,
                json!({"error": {"type": "card_error", "code": "card_declined",
                                 "decline_code": "generic_decline", "message": DECLINE_MESSAGE}}),
            );
        }
        let id = format!("pi_double_{}", self.intents.len() + 1);
        self.intents.push(IntentRecord {
            id: id.clone(),
            idempotency_key: key,
            amount: form
                .get("amount")
                .and_then(|a| a.parse().ok())
                .unwrap_or_default(),
            payment_method: payment_method.clone(),
            order_id: form.get("metadata[order_id]").cloned(),
            attempt_id: form.get("metadata[attempt_id]").cloned(),
            status: "requires_action".to_owned(),
            authentication_failed: false,
        });
        if payment_method != THREE_D_SECURE_PAYMENT_METHOD {
            self.intent_succeeded(self.intents.len() - 1);
        }
        self.intent_answer(&id)
    }

    /// The intent at `position` is paid: a charge of the ledger under its id.
    fn intent_succeeded(&mut self, position: usize) {
        let intent = &mut self.intents[position];
        intent.status = "succeeded".to_owned();
        let charge = ChargeRecord {
            id: intent.id.clone(),
            idempotency_key: intent.idempotency_key.clone(),
            amount: intent.amount,
            currency: "eur".to_owned(),
            source: intent.payment_method.clone(),
            order_id: intent.order_id.clone(),
            attempt_id: intent.attempt_id.clone(),
            refund_id: None,
        };
        self.charges.push(charge);
    }

    /// An intent as it stands.
    fn intent_answer(&self, id: &str) -> (u16, Value) {
        let Some(intent) = self.intents.iter().find(|i| i.id == id) else {
            return (
                404,
                json!({"error": {"type": "invalid_request_error", "code": "resource_missing",
                                 "message": format!("No such payment_intent: '{id}'")}}),
            );
        };
        let mut metadata = serde_json::Map::new();
        for (name, value) in [
            ("order_id", &intent.order_id),
            ("attempt_id", &intent.attempt_id),
        ] {
            if let Some(value) = value {
                metadata.insert(name.to_owned(), json!(value));
            }
        }
        let mut body = super::stripe_intent_json(
            &intent.id,
            intent.amount,
            &intent.status,
            &intent.payment_method,
            Value::Object(metadata),
        );
        if intent.status == "requires_action" {
            body["next_action"] = json!({"type": "use_stripe_sdk",
                                         "use_stripe_sdk": {"type": "three_d_secure_redirect"}});
        }
        if intent.authentication_failed {
            body["last_payment_error"] = json!({"type": "card_error",
                "code": "payment_intent_authentication_failure", "message": AUTHENTICATION_FAILED});
        }
        (200, body)
    }

    /// Cancels an intent not paid yet; a paid one cannot be.
    fn cancel_intent(&mut self, id: &str) -> (u16, Value) {
        let Some(intent) = self.intents.iter_mut().find(|i| i.id == id) else {
            return self.intent_answer(id);
        };
        if intent.status == "succeeded" {
            return (
                400,
                json!({"error": {"type": "invalid_request_error", "code": "payment_intent_unexpected_state",
                                 "message": "You cannot cancel this PaymentIntent because it has a status of succeeded."}}),
            );
        }
        intent.status = "canceled".to_owned();
        self.intent_answer(id)
    }

    /// A refund of a whole charge (or paid PaymentIntent), which must exist and not be refunded yet.
    fn refund(&mut self, form: &HashMap<String, String>, key: Option<String>) -> (u16, Value) {
        let charge_id = form
            .get("charge")
            .or_else(|| form.get("payment_intent"))
            .cloned()
            .unwrap_or_default();
        let Some(position) = self.charges.iter().position(|c| c.id == charge_id) else {
            return (
                404,
                json!({"error": {"type": "invalid_request_error", "code": "resource_missing",
                                 "message": format!("No such charge: '{charge_id}'")}}),
            );
        };
        if self.charges[position].refund_id.is_some() {
            return (
                400,
                json!({"error": {"type": "invalid_request_error", "code": "charge_already_refunded",
                                 "message": format!("Charge {charge_id} has already been refunded.")}}),
            );
        }
        let id = format!("re_double_{}", self.refunds.len() + 1);
        let amount = self.charges[position].amount;
        self.charges[position].refund_id = Some(id.clone());
        self.refunds.push(RefundRecord {
            id: id.clone(),
            charge_id: charge_id.clone(),
            idempotency_key: key,
        });
        (200, refund_json(&id, &charge_id, amount))
    }
}

/// A refund object as Stripe returns it.
pub fn refund_json(id: &str, charge_id: &str, amount: i64) -> Value {
    json!({
        "id": id, "object": "refund", "amount": amount, "balance_transaction": null,
        "charge": charge_id, "created": chrono::Utc::now().timestamp(), "currency": "eur",
        "customer": null, "customer_account": null, "description": null,
        "destination_details": null, "failure_balance_transaction": null, "failure_reason": null,
        "instructions_email": null, "metadata": {}, "next_action": null, "payment_intent": null,
        "payment_method": null, "pending_reason": null, "presentment_details": null,
        "reason": null, "receipt_number": null, "source_transfer_reversal": null,
        "status": "succeeded", "transfer_reversal": null
    })
}

/// The `application/x-www-form-urlencoded` body of a request, decoded.
pub fn form(request: &Request) -> HashMap<String, String> {
    url::form_urlencoded::parse(&request.body)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}
