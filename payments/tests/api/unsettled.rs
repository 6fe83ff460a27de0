//! The reconciler's work list (`unsettled_payments`): markers `<order id>:<version>` written before a
//! payment enters an unsettled state, dropped once it is settled at that version or later.

use std::time::Duration;

use common::store::MIGRATIONS_COLLECTION;
use mongodb::bson::oid::ObjectId;
use mongodb::bson::{Document, doc};
use payments::saga::ReconcileTiming;
use payments::store::{PaymentStatus, PaymentStore, UnsettledMarker};

use crate::helpers::spawn_app;

fn timing() -> ReconcileTiming {
    ReconcileTiming {
        horizon: Duration::ZERO,
        retry_after: Duration::ZERO,
        ..ReconcileTiming::for_stripe_timeout(Duration::from_secs(1))
    }
}

fn marker(order_id: ObjectId, version: i64, age: Duration) -> UnsettledMarker {
    let at = mongodb::bson::DateTime::now().timestamp_millis()
        - i64::try_from(age.as_millis()).expect("age");
    UnsettledMarker {
        id: format!("{}:{version}", order_id.to_hex()),
        order_id,
        version,
        at: mongodb::bson::DateTime::from_millis(at),
    }
}

#[tokio::test]
async fn a_paid_order_leaves_no_marker_after_a_pass_that_looks_up_only_by_id() {
    let app = spawn_app().await;
    let double = app.stripe_double().await;
    let (user, order) = app.order_of_new_buyer(1500).await;
    app.pay_ok(&user, &order.id).await;
    assert_eq!(
        app.payments
            .unsettled_markers()
            .await
            .expect("markers")
            .len(),
        1
    );
    common::store::query_log::clear(app.db.name());

    let pass = app.saga.reconcile_once(&timing()).await.expect("a pass");

    assert_eq!((pass.settled, pass.unresolved), (0, 0));
    assert!(
        app.payments
            .unsettled_markers()
            .await
            .expect("markers")
            .is_empty()
    );
    for query in common::store::query_log::queries_in(app.db.name()) {
        assert!(
            query.is_id_lookup() || query.collection == PaymentStore::UNSETTLED_COLLECTION,
            "{query:?}"
        );
    }
    assert_eq!(double.charges().len(), 1);
}

#[tokio::test]
async fn a_marker_of_a_later_version_survives_the_settlement_of_an_earlier_one() {
    let app = spawn_app().await;
    app.stripe_double().await;
    let (user, order) = app.order_of_new_buyer(1500).await;
    app.pay_ok(&user, &order.id).await;
    let payment = app.the_one_payment(&order.id).await;
    assert_eq!(payment.status, PaymentStatus::Succeeded);
    // A cancellation is about to move the paid payment to `refunding`: its marker is written, its
    // commit not yet. And a marker whose commit a crash cut off long ago.
    let unsettled = app
        .db
        .collection::<UnsettledMarker>(PaymentStore::UNSETTLED_COLLECTION);
    let in_flight = marker(payment.order_id, payment.version + 1, Duration::ZERO);
    unsettled.insert_one(&in_flight).await.expect("marker");
    let abandoned = marker(ObjectId::new(), 0, Duration::from_secs(3600));
    unsettled.insert_one(&abandoned).await.expect("marker");

    app.saga.reconcile_once(&timing()).await.expect("a pass");

    let left: Vec<String> = app
        .payments
        .unsettled_markers()
        .await
        .expect("markers")
        .into_iter()
        .map(|m| m.id)
        .collect();
    assert_eq!(left, vec![in_flight.id]);
}

#[tokio::test]
async fn a_payment_left_unknown_before_markers_existed_is_marked_once_and_reconciled() {
    let app = spawn_app().await;
    let double = app.stripe_double().await;
    let (user, order) = app.order_of_new_buyer(1500).await;
    app.pay_ok(&user, &order.id).await;
    // As the previous version left it: `unknown`, no marker, no migration done.
    app.payments
        .records()
        .update_one(
            doc! { "_id": ObjectId::parse_str(order.id.to_string()).expect("id") },
            doc! { "$set": { "status": "unknown", "source": "tok_visa" } },
        )
        .await
        .expect("unknown");
    app.db
        .collection::<Document>(PaymentStore::UNSETTLED_COLLECTION)
        .delete_many(doc! {})
        .await
        .expect("no markers");
    app.db
        .collection::<Document>(MIGRATIONS_COLLECTION)
        .delete_many(doc! {})
        .await
        .expect("no migrations");

    assert_eq!(
        app.payments.backfill_unsettled().await.expect("backfill"),
        1
    );
    assert_eq!(app.payments.backfill_unsettled().await.expect("again"), 0);
    let pass = app.saga.reconcile_once(&timing()).await.expect("a pass");

    assert_eq!((pass.settled, pass.unresolved), (1, 0), "{pass:?}");
    assert_eq!(
        app.the_one_payment(&order.id).await.status,
        PaymentStatus::Succeeded
    );
    assert_eq!(
        double.charges().len(),
        1,
        "the keyed repeat charged nothing twice"
    );
}
