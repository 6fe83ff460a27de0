//! The Stripe requests of the page's checkout against stripe-mock (`STRIPE_MOCK_URL`, started by
//! `scripts/test.sh`), which checks every parameter against Stripe's OpenAPI description and
//! answers with Stripe's own fixtures: what payments sends is what Stripe accepts, and what
//! Stripe answers is read. (stripe-mock keeps no state: a PaymentIntent always comes back
//! `requires_payment_method`, which is a failed payment; the saga's paths are tested against the
//! ledger-keeping double.)

use std::time::Duration;

use common::testing::require_infra;
use payments::settings::StripeSettings;
use payments::stripe::{
    IntentOutcome, IntentRequest, IntentState, Refundable, StripeGateway, StripeOutcome,
};

fn gateway() -> StripeGateway {
    require_infra(&["STRIPE_MOCK_URL"]);
    let base = std::env::var("STRIPE_MOCK_URL").expect("STRIPE_MOCK_URL");
    StripeGateway::new(&StripeSettings {
        key: "sk_test_123".to_owned().into(),
        api_base: format!("{}/", base.trim_end_matches('/')),
        timeout: Duration::from_secs(5),
    })
    .expect("a Stripe client")
}

/// The intent's id, checking that Stripe answered with one.
fn intent_id(outcome: &IntentOutcome) -> String {
    match outcome {
        IntentOutcome::Intent { id, .. } => id.clone(),
        other => panic!("no intent: {other:?}"),
    }
}

#[tokio::test]
async fn stripe_mock_accepts_the_payment_intent_requests_and_its_answers_are_read() {
    let stripe = gateway();

    let created = stripe
        .create_intent(&IntentRequest {
            amount_cents: 2550,
            payment_method: "pm_card_visa",
            order_id: "64b7f0c2a1b2c3d4e5f60718".to_owned(),
            attempt_id: "64b7f0c2a1b2c3d4e5f60719",
        })
        .await;
    let id = intent_id(&created);
    assert!(id.starts_with("pi_"), "{created:?}");
    assert!(
        matches!(
            &created,
            IntentOutcome::Intent {
                state: IntentState::Failed { .. },
                ..
            }
        ),
        "stripe-mock's fixture asks for a payment method: {created:?}"
    );

    let retrieved = stripe.retrieve_intent(&id).await;
    assert_eq!(intent_id(&retrieved), id);
    let cancelled = stripe.cancel_intent(&id).await;
    intent_id(&cancelled);
    let refunded = stripe
        .refund(Refundable::PaymentIntent(&id), "64b7f0c2a1b2c3d4e5f60718")
        .await;
    assert!(
        matches!(&refunded, StripeOutcome::Done(refund) if refund.starts_with("re_")),
        "{refunded:?}"
    );
}
