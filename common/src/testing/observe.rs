//! Observers of the bus: what a service published, as a fresh consumer of the stream receives it.

use std::fmt::Debug;
use std::ops::{Deref, DerefMut};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::eventually::DEADLINE;
use super::unique_suffix;
use crate::bus::{EventBus, ListenerOptions, Outcome, listen};
use crate::events::Event;

/// Events of one subject, in the order a consumer gets them. Derefs to the channel for `recv`.
pub struct Observer<E> {
    rx: mpsc::UnboundedReceiver<E>,
    bus: EventBus,
}

/// Observes `E` with a queue group of its own (so two observers never split the events), one
/// event at a time so they arrive in stream order, until `shutdown`.
pub async fn observe<E: Event>(bus: &EventBus, shutdown: &CancellationToken) -> Observer<E> {
    let options = ListenerOptions {
        concurrency: 1,
        ..ListenerOptions::new(format!("test-observer-{}", unique_suffix()))
    };
    Observer::listen(bus, options, shutdown).await
}

impl<E: Event> Observer<E> {
    /// Observes `E` as a listener with exactly these options would get it (e.g. a service's
    /// queue group, to share its consumer).
    pub async fn listen(
        bus: &EventBus,
        options: ListenerOptions,
        shutdown: &CancellationToken,
    ) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        listen::<E, _, _>(bus, options, shutdown.clone(), move |event, _delivery| {
            let tx = tx.clone();
            async move {
                // The receiver is gone only when the test is over; nothing to do then.
                let _ = tx.send(event);
                Ok(Outcome::Ack)
            }
        })
        .await
        .expect("the observer subscribes");
        Self {
            rx,
            bus: bus.clone(),
        }
    }

    /// The next event, within [`DEADLINE`].
    pub async fn next(&mut self) -> E {
        tokio::time::timeout(DEADLINE, self.rx.recv())
            .await
            .expect("an event within the deadline")
            .expect("the observer is running")
    }

    /// Events up to and including the first one `is_marker` accepts. Publish the marker after the
    /// action under test: anything that action published arrives before it.
    pub async fn until(&mut self, is_marker: impl Fn(&E) -> bool) -> Vec<E> {
        let mut seen = Vec::new();
        loop {
            let event = self.next().await;
            let done = is_marker(&event);
            seen.push(event);
            if done {
                return seen;
            }
        }
    }

    /// Every event still to come before `sentinel`, which is published now: as the stream keeps
    /// order, this is everything published so far, without waiting for "nothing else arrives".
    pub async fn rest_before(&mut self, sentinel: E) -> Vec<E>
    where
        E: PartialEq + Debug,
    {
        self.bus
            .publish(&sentinel)
            .await
            .expect("publishing the sentinel");
        let mut seen = self.until(|event| *event == sentinel).await;
        seen.pop();
        seen
    }
}

impl<E> Deref for Observer<E> {
    type Target = mpsc::UnboundedReceiver<E>;
    fn deref(&self) -> &Self::Target {
        &self.rx
    }
}

impl<E> DerefMut for Observer<E> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.rx
    }
}

/// Everything that arrives within `quiet` of the previous message (or of the start).
pub async fn drain<E>(rx: &mut mpsc::UnboundedReceiver<E>, quiet: Duration) -> Vec<E> {
    let mut all = Vec::new();
    while let Ok(Some(event)) = tokio::time::timeout(quiet, rx.recv()).await {
        all.push(event);
    }
    all
}
