//! In-process de-duplication of redelivered messages (reference §4.4; sailor-nodejs 2.7.7
//! `lib/messagesDB.js` does something similar, keyed by `messageId` alone).
//!
//! When a connection dies, the broker redelivers every message it has not seen settled —
//! including ones this process is still working on, and ones it finished whose ack was sent
//! but lost with the channel. Running them again would emit their data twice. But a
//! `messageId` alone does not identify a message: the official Node runtime gives every id-less
//! output of one input the *same* `messageId`, so distinct messages share ids. Dropping one of
//! them because its id was seen would lose data, which is worse than a duplicate.
//!
//! A second way to get a copy: the upstream publisher lost the broker's confirm of a publish
//! (its channel died) and published it again, and both attempts reached the queue. Deckhand
//! publishers give every attempt of one publish the same `publishId` header and mark retries
//! with `retry: n` ([`Incoming::is_republished`](crate::protocol::Incoming::is_republished)).
//!
//! [`Deduplicator`] therefore identifies a message by its `messageId`, its `publishId` (when it
//! has one) **and** a hash of its body (its *fingerprint*), and skips a delivery only when both
//! hold:
//!
//! * it may be a copy: the broker marked it **redelivered**, or it is a Deckhand publisher's
//!   **retry** (a fresh publish — e.g. a rebound, which republishes the input with its
//!   `messageId` under a new `publishId` — is always run), and
//! * this process is **running** a message with the same fingerprint (the copy is parked and
//!   settled with the original's outcome when it finishes), or **completed** one — processed
//!   it with every output confirmed by the broker — within the memory window (the copy is
//!   settled at once with the remembered outcome).
//!
//! Everything else is processed. Completed messages are remembered whether or not their ack
//! reached the broker, bounded in count ([`DEFAULT_CAPACITY`]) and age ([`DEFAULT_TTL`]) — about
//! 80 bytes each. A message whose outputs were *not* all confirmed is not remembered
//! ([`Deduplicator::finish_unconfirmed`]): running it again is the only way not to lose it.
//!
//! Like Node's, this works within one process: a redelivery to another replica of the step, or
//! a republished copy after this process restarted, is not recognised (at-least-once across
//! replicas and restarts).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tracing::{debug, info};

use crate::amqp::{Delivery, SettleError, Settlement};
use crate::protocol::Incoming;

/// Completed messages remembered by default.
pub const DEFAULT_CAPACITY: usize = 10_000;

/// How long a completed message is remembered by default. Redeliveries after a connection loss
/// arrive as soon as the consumer has re-subscribed, i.e. within seconds.
pub const DEFAULT_TTL: Duration = Duration::from_secs(15 * 60);

/// What to do with a delivery.
// Short-lived and moved once per message; boxing the ticket would only add an allocation.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Admission {
    /// Process it, then call [`Deduplicator::finish`] with the ticket.
    Process(Ticket),
    /// A redelivered copy of a message being processed; it will be settled when that one
    /// finishes.
    Duplicate,
    /// A redelivered copy of a message already completed; it was settled with the remembered
    /// outcome (the result of that settlement is included).
    AlreadyProcessed(Settlement, Result<(), SettleError>),
}

/// Identity of a message: SHA-256 of its `messageId`, `publishId` and body, truncated to 128
/// bits. Two publishes never share a `publishId`, so distinct publications of one content (a
/// component emitting the same message twice) are distinct messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Fingerprint(u128);

impl Fingerprint {
    fn of(message_id: &str, publish_id: Option<&str>, body: &[u8]) -> Self {
        let mut hasher = Sha256::new();
        hasher.update((message_id.len() as u64).to_le_bytes());
        hasher.update(message_id.as_bytes());
        let publish_id = publish_id.unwrap_or_default();
        hasher.update((publish_id.len() as u64).to_le_bytes());
        hasher.update(publish_id.as_bytes());
        hasher.update(body);
        let digest = hasher.finalize();
        let mut first = [0u8; 16];
        first.copy_from_slice(&digest[..16]);
        Self(u128::from_le_bytes(first))
    }
}

/// A delivery admitted for processing.
#[derive(Debug)]
pub struct Ticket {
    message_id: Option<String>,
    fingerprint: Option<Fingerprint>,
    delivery: Delivery,
}

impl Ticket {
    /// The delivery to process.
    pub fn delivery(&self) -> &Delivery {
        &self.delivery
    }

    /// Its `messageId`, if it has one (without one it is never de-duplicated).
    pub fn message_id(&self) -> Option<&str> {
        self.message_id.as_deref()
    }

    /// Moves the message (properties and body) out of the delivery, to process it without a
    /// copy; the ticket keeps what settling needs.
    pub fn take_incoming(&mut self) -> Incoming {
        std::mem::replace(
            &mut self.delivery.incoming,
            Incoming::new(lapin::BasicProperties::default(), Vec::new()),
        )
    }
}

#[derive(Default)]
struct Running {
    /// Deliveries of this fingerprint being processed (distinct fresh publishes of identical
    /// content each run).
    count: usize,
    /// Redelivered copies waiting for the outcome.
    parked: Vec<Delivery>,
}

#[derive(Default)]
struct State {
    running: HashMap<Fingerprint, Running>,
    completed: HashMap<Fingerprint, (Settlement, Instant)>,
    order: VecDeque<(Fingerprint, Instant)>,
}

/// Tracks running and recently completed messages by `messageId` and content.
pub struct Deduplicator {
    state: Mutex<State>,
    capacity: usize,
    ttl: Duration,
}

impl std::fmt::Debug for Deduplicator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.lock();
        f.debug_struct("Deduplicator")
            .field("running", &state.running.len())
            .field("completed", &state.completed.len())
            .finish()
    }
}

impl Default for Deduplicator {
    fn default() -> Self {
        Self::new(DEFAULT_CAPACITY, DEFAULT_TTL)
    }
}

impl Deduplicator {
    /// Remembers at most `capacity` completed messages, each for at most `ttl`.
    pub fn new(capacity: usize, ttl: Duration) -> Self {
        Self {
            state: Mutex::new(State::default()),
            capacity: capacity.max(1),
            ttl,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic elsewhere must not make every later message fail.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Decides whether `delivery` must be processed.
    pub async fn admit(&self, delivery: Delivery) -> Admission {
        let Some(id) = delivery.message_id() else {
            return Admission::Process(Ticket {
                message_id: None,
                fingerprint: None,
                delivery,
            });
        };
        let fingerprint = Fingerprint::of(
            &id,
            delivery.incoming.publish_id().as_deref(),
            &delivery.incoming.body,
        );
        let maybe_copy = delivery.redelivered || delivery.incoming.is_republished();
        let completed = {
            let mut state = self.lock();
            let completed = if maybe_copy {
                if let Some(running) = state.running.get_mut(&fingerprint) {
                    info!(message_id = %id, redelivered = delivery.redelivered, "copy of a message being processed; it will be settled with the original");
                    running.parked.push(delivery);
                    return Admission::Duplicate;
                }
                state
                    .completed
                    .get(&fingerprint)
                    .filter(|(_, at)| at.elapsed() <= self.ttl)
                    .map(|(outcome, _)| *outcome)
            } else {
                None
            };
            if completed.is_none() {
                state.running.entry(fingerprint).or_default().count += 1;
            }
            completed
        };
        match completed {
            Some(outcome) => {
                info!(message_id = %id, ?outcome, redelivered = delivery.redelivered, "copy of a message already processed; settling it without running it again");
                let result = delivery.settle(outcome).await;
                if let Err(e) = &result {
                    debug!(message_id = %id, error = %e, "settling the redelivered copy failed");
                }
                Admission::AlreadyProcessed(outcome, result)
            }
            None => Admission::Process(Ticket {
                message_id: Some(id),
                fingerprint: Some(fingerprint),
                delivery,
            }),
        }
    }

    /// Settles a delivery whose processing is complete — every output confirmed by the broker
    /// — and every redelivered copy that arrived meanwhile, and remembers it so that a later
    /// redelivery (after a lost ack) is settled without running again. Returns `Ok` if at
    /// least one of them reached the broker, else the original's error.
    pub async fn finish(&self, ticket: Ticket, outcome: Settlement) -> Result<(), SettleError> {
        self.settle(ticket, outcome, true).await
    }

    /// As [`finish`](Self::finish) for a delivery whose outputs were *not* all confirmed (a
    /// publish failed after its retries): it is not remembered, so a redelivery runs again.
    pub async fn finish_unconfirmed(
        &self,
        ticket: Ticket,
        outcome: Settlement,
    ) -> Result<(), SettleError> {
        self.settle(ticket, outcome, false).await
    }

    async fn settle(
        &self,
        ticket: Ticket,
        outcome: Settlement,
        confirmed: bool,
    ) -> Result<(), SettleError> {
        let copies = match ticket.fingerprint {
            Some(fingerprint) => {
                let mut state = self.lock();
                let copies = match state.running.get_mut(&fingerprint) {
                    Some(running) if running.count > 1 => {
                        running.count -= 1;
                        std::mem::take(&mut running.parked)
                    }
                    Some(_) => state
                        .running
                        .remove(&fingerprint)
                        .map(|r| r.parked)
                        .unwrap_or_default(),
                    None => Vec::new(),
                };
                if confirmed {
                    self.remember(&mut state, fingerprint, outcome);
                }
                copies
            }
            None => Vec::new(),
        };
        let first = ticket.delivery.settle(outcome).await;
        let mut any_ok = first.is_ok();
        for copy in &copies {
            match copy.settle(outcome).await {
                Ok(()) => any_ok = true,
                Err(e) => debug!(error = %e, "settling a redelivered copy failed"),
            }
        }
        if any_ok { Ok(()) } else { first }
    }

    /// Number of distinct messages being processed.
    pub fn in_flight(&self) -> usize {
        self.lock().running.len()
    }

    /// Number of completed messages remembered.
    pub fn remembered(&self) -> usize {
        self.lock().completed.len()
    }

    fn remember(&self, state: &mut State, fingerprint: Fingerprint, outcome: Settlement) {
        let now = Instant::now();
        while let Some(&(oldest, at)) = state.order.front() {
            let full =
                state.completed.len() >= self.capacity || state.order.len() >= 2 * self.capacity;
            if !full && now.duration_since(at) <= self.ttl {
                break;
            }
            state.order.pop_front();
            // Only if this queue entry is the latest for the fingerprint.
            if state.completed.get(&oldest).is_some_and(|(_, t)| *t == at) {
                state.completed.remove(&oldest);
            }
        }
        state.order.push_back((fingerprint, now));
        state.completed.insert(fingerprint, (outcome, now));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::amqp::test_support::{delivery, delivery_with_body, delivery_with_headers};
    use crate::protocol::{js_number, js_string};
    use lapin::types::FieldTable;
    use std::sync::{Arc, Mutex as StdMutex};

    /// A fresh (not redelivered) delivery as a Deckhand publisher sends it: attempt `retry` of
    /// the publish `publish_id`.
    fn published(tag: u64, body: &[u8], publish_id: &str, retry: u32, log: &Log) -> Delivery {
        let mut headers = FieldTable::default();
        headers.insert("messageId".into(), js_string("out-1"));
        headers.insert("publishId".into(), js_string(publish_id));
        if retry > 0 {
            headers.insert("retry".into(), js_number(i64::from(retry)));
        }
        delivery_with_headers(tag, headers, body, false, log, false)
    }

    type Log = Arc<StdMutex<Vec<(u64, Settlement)>>>;

    fn log() -> Log {
        Arc::default()
    }

    fn entries(log: &Log) -> Vec<(u64, Settlement)> {
        log.lock().unwrap().clone()
    }

    #[tokio::test]
    async fn unique_messages_are_processed_and_settled() {
        let dedup = Deduplicator::default();
        let l = log();
        let Admission::Process(t) = dedup.admit(delivery(1, Some("a"), false, &l, false)).await
        else {
            panic!("must process");
        };
        assert_eq!(t.message_id(), Some("a"));
        assert_eq!(dedup.in_flight(), 1);
        dedup.finish(t, Settlement::Ack).await.unwrap();
        assert_eq!(dedup.in_flight(), 0);
        assert_eq!(entries(&l), vec![(1, Settlement::Ack)]);
    }

    #[tokio::test]
    async fn copy_arriving_in_flight_is_settled_with_the_original() {
        let dedup = Deduplicator::default();
        let l = log();
        // The original's channel dies while it is processed.
        let Admission::Process(t) = dedup.admit(delivery(1, Some("a"), false, &l, true)).await
        else {
            panic!("must process");
        };
        // The broker redelivers it on the new channel.
        assert!(matches!(
            dedup.admit(delivery(7, Some("a"), true, &l, false)).await,
            Admission::Duplicate
        ));
        dedup.finish(t, Settlement::Reject).await.unwrap();
        assert_eq!(entries(&l), vec![(7, Settlement::Reject)]);
        assert_eq!(dedup.in_flight(), 0);
    }

    #[tokio::test]
    async fn redelivery_after_a_failed_ack_is_settled_without_processing() {
        let dedup = Deduplicator::default();
        let l = log();
        let Admission::Process(t) = dedup.admit(delivery(1, Some("a"), false, &l, true)).await
        else {
            panic!("must process");
        };
        assert_eq!(
            dedup.finish(t, Settlement::Ack).await,
            Err(SettleError::ChannelClosed)
        );
        match dedup.admit(delivery(3, Some("a"), true, &l, false)).await {
            Admission::AlreadyProcessed(Settlement::Ack, Ok(())) => {}
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(entries(&l), vec![(3, Settlement::Ack)]);
        // A later redelivery (its ack lost again) is recognised too.
        assert!(matches!(
            dedup.admit(delivery(4, Some("a"), true, &l, false)).await,
            Admission::AlreadyProcessed(Settlement::Ack, Ok(()))
        ));
        // A fresh publish with the same id and content (a rebound) runs.
        assert!(matches!(
            dedup.admit(delivery(5, Some("a"), false, &l, false)).await,
            Admission::Process(_)
        ));
    }

    #[tokio::test]
    async fn a_fresh_publish_with_the_same_id_is_processed() {
        // A rebound republishes the input with its messageId; it is not a redelivery.
        let dedup = Deduplicator::default();
        let l = log();
        let Admission::Process(t) = dedup.admit(delivery(1, Some("a"), false, &l, true)).await
        else {
            panic!("must process");
        };
        let _ = dedup.finish(t, Settlement::Ack).await;
        assert!(matches!(
            dedup.admit(delivery(2, Some("a"), false, &l, false)).await,
            Admission::Process(_)
        ));
    }

    /// Issue 13 (1): two distinct messages sharing a `messageId` (a Node step splitting one
    /// input gives every id-less output the same id) are both run.
    #[tokio::test]
    async fn distinct_messages_sharing_an_id_are_both_processed() {
        let dedup = Deduplicator::default();
        let l = log();
        let first = dedup
            .admit(delivery_with_body(1, Some("a"), b"one", false, &l, false))
            .await;
        let second = dedup
            .admit(delivery_with_body(2, Some("a"), b"two", false, &l, false))
            .await;
        let (Admission::Process(first), Admission::Process(second)) = (first, second) else {
            panic!("both distinct messages must be processed");
        };
        // Even a redelivered copy of a *different* content is run.
        let third = dedup
            .admit(delivery_with_body(3, Some("a"), b"three", true, &l, false))
            .await;
        let Admission::Process(third) = third else {
            panic!("a redelivery of unseen content must be processed");
        };
        dedup.finish(first, Settlement::Ack).await.unwrap();
        dedup.finish(second, Settlement::Ack).await.unwrap();
        dedup.finish(third, Settlement::Ack).await.unwrap();
        assert_eq!(
            entries(&l),
            vec![
                (1, Settlement::Ack),
                (2, Settlement::Ack),
                (3, Settlement::Ack)
            ]
        );
    }

    /// Issue 13 (2): the ack was sent, but lost with the channel; the broker redelivers the
    /// message after the reconnect. It must be acked without running again.
    #[tokio::test]
    async fn redelivery_after_a_lost_ack_is_settled_without_processing() {
        let dedup = Deduplicator::default();
        let l = log();
        let Admission::Process(t) = dedup.admit(delivery(1, Some("a"), false, &l, false)).await
        else {
            panic!("must process");
        };
        // From the client's side the ack went out fine.
        dedup.finish(t, Settlement::Ack).await.unwrap();
        match dedup.admit(delivery(2, Some("a"), true, &l, false)).await {
            Admission::AlreadyProcessed(Settlement::Ack, Ok(())) => {}
            other => panic!("the redelivered copy ran again: {other:?}"),
        }
        assert_eq!(
            entries(&l),
            vec![(1, Settlement::Ack), (2, Settlement::Ack)]
        );
    }

    /// Chaos finding: the upstream worker's write connection died after the broker took an
    /// output but before its confirm arrived; the retry put a second copy in the queue. The
    /// copy (same publishId, `retry: 1`) must not run again.
    #[tokio::test]
    async fn a_republished_copy_of_a_completed_message_is_settled_without_running() {
        let dedup = Deduplicator::default();
        let l = log();
        let Admission::Process(t) = dedup.admit(published(1, b"x", "p-1", 0, &l)).await else {
            panic!("the first attempt must be processed");
        };
        dedup.finish(t, Settlement::Ack).await.unwrap();
        match dedup.admit(published(2, b"x", "p-1", 1, &l)).await {
            Admission::AlreadyProcessed(Settlement::Ack, Ok(())) => {}
            other => panic!("the republished copy ran again: {other:?}"),
        }
        assert_eq!(
            entries(&l),
            vec![(1, Settlement::Ack), (2, Settlement::Ack)]
        );
    }

    #[tokio::test]
    async fn a_republished_copy_arriving_while_the_original_runs_waits_for_it() {
        let dedup = Deduplicator::default();
        let l = log();
        let Admission::Process(t) = dedup.admit(published(1, b"x", "p-1", 0, &l)).await else {
            panic!("must process");
        };
        assert!(matches!(
            dedup.admit(published(2, b"x", "p-1", 2, &l)).await,
            Admission::Duplicate
        ));
        dedup.finish(t, Settlement::Reject).await.unwrap();
        assert_eq!(
            entries(&l),
            vec![(1, Settlement::Reject), (2, Settlement::Reject)]
        );
    }

    /// Never a distinct message: a retry is skipped only as a copy of the same publish.
    #[tokio::test]
    async fn retries_of_other_publishes_are_processed() {
        let dedup = Deduplicator::default();
        let l = log();
        let Admission::Process(t) = dedup.admit(published(1, b"x", "p-1", 0, &l)).await else {
            panic!("must process");
        };
        dedup.finish(t, Settlement::Ack).await.unwrap();
        // The same content published again (a component emitting one message twice, or a
        // rebound): another publishId, so another message, even as a retry.
        let Admission::Process(again) = dedup.admit(published(2, b"x", "p-2", 1, &l)).await else {
            panic!("another publish of the same content must be processed");
        };
        dedup.finish(again, Settlement::Ack).await.unwrap();
        // A retry whose first attempt never arrived (nacked, or lost before the broker).
        let Admission::Process(first) = dedup.admit(published(3, b"y", "p-3", 1, &l)).await else {
            panic!("a retry of an unseen publish must be processed");
        };
        dedup.finish(first, Settlement::Ack).await.unwrap();
        // A retry from a publisher without publishId (e.g. Node's) is not taken for a copy.
        let mut headers = FieldTable::default();
        headers.insert("messageId".into(), js_string("out-1"));
        headers.insert("retry".into(), js_number(1));
        let Admission::Process(foreign) = dedup
            .admit(delivery_with_headers(4, headers, b"x", false, &l, false))
            .await
        else {
            panic!("a retry without publishId must be processed");
        };
        dedup.finish(foreign, Settlement::Ack).await.unwrap();
        assert_eq!(
            entries(&l),
            vec![
                (1, Settlement::Ack),
                (2, Settlement::Ack),
                (3, Settlement::Ack),
                (4, Settlement::Ack)
            ]
        );
    }

    #[tokio::test]
    async fn messages_without_id_are_never_deduplicated() {
        let dedup = Deduplicator::default();
        let l = log();
        let a = dedup.admit(delivery(1, None, false, &l, false)).await;
        let b = dedup.admit(delivery(2, None, true, &l, false)).await;
        let (Admission::Process(a), Admission::Process(b)) = (a, b) else {
            panic!("both must be processed");
        };
        assert_eq!(a.message_id(), None);
        dedup.finish(a, Settlement::Ack).await.unwrap();
        dedup.finish(b, Settlement::Reject).await.unwrap();
        assert_eq!(
            entries(&l),
            vec![(1, Settlement::Ack), (2, Settlement::Reject)]
        );
    }

    #[tokio::test]
    async fn remembered_outcomes_are_bounded() {
        let dedup = Deduplicator::new(2, Duration::from_secs(60));
        let l = log();
        for (tag, id) in [(1, "a"), (2, "b"), (3, "c")] {
            let Admission::Process(t) = dedup.admit(delivery(tag, Some(id), false, &l, true)).await
            else {
                panic!("must process");
            };
            let _ = dedup.finish(t, Settlement::Ack).await;
        }
        // "a" was evicted, "b" and "c" are remembered.
        assert!(matches!(
            dedup.admit(delivery(10, Some("a"), true, &l, false)).await,
            Admission::Process(_)
        ));
        assert!(matches!(
            dedup.admit(delivery(11, Some("c"), true, &l, false)).await,
            Admission::AlreadyProcessed(Settlement::Ack, Ok(()))
        ));
    }

    #[tokio::test]
    async fn remembered_outcomes_expire() {
        let dedup = Deduplicator::new(10, Duration::ZERO);
        let l = log();
        let Admission::Process(t) = dedup.admit(delivery(1, Some("a"), false, &l, true)).await
        else {
            panic!("must process");
        };
        let _ = dedup.finish(t, Settlement::Ack).await;
        std::thread::sleep(Duration::from_millis(2));
        assert!(matches!(
            dedup.admit(delivery(2, Some("a"), true, &l, false)).await,
            Admission::Process(_)
        ));
    }
}
