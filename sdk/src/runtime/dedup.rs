//! In-process deduplication of redelivered messages by `messageId` (reference §4.4,
//! sailor-nodejs 2.7.7 `lib/messagesDB.js`).
//!
//! When a connection dies, the broker redelivers every unacknowledged message — including ones
//! this process is still working on, or finished but could not acknowledge because the channel
//! was already gone. Running them again would emit their data twice. [`Deduplicator`] keys
//! deliveries by their `messageId` header:
//!
//! * a copy arriving while the original is **in flight** is parked; when the original
//!   finishes, its outcome is applied to *every* copy (Node settles only the newest, which
//!   leaves an older copy on a still-open channel unsettled);
//! * a **redelivered** copy (`redelivered` flag set) of a message that was processed but whose
//!   settlement failed because its channel had died is settled at once with the remembered
//!   outcome, without processing.
//!
//! Only redelivered copies use remembered outcomes: a rebound republishes the original
//! message *with its `messageId`* as a fresh publish, and that copy must run again.
//! Like Node's, this works within one process only; copies delivered to another replica of
//! the step are not seen.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tracing::{debug, warn};

use crate::runtime::amqp::{Delivery, Outcome, SettleError};

/// What to do with a delivery.
// Short-lived and moved once per message; boxing the ticket would only add an allocation.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Admission {
    /// Process it, then call [`Deduplicator::finish`] with the ticket.
    Process(Ticket),
    /// A copy of a message in flight; it will be settled when that one finishes.
    Duplicate,
    /// A redelivered copy of a message already processed; it was settled with the
    /// remembered outcome (the result of that settlement is included).
    AlreadyProcessed(Outcome, Result<(), SettleError>),
}

/// A delivery admitted for processing.
#[derive(Debug)]
pub struct Ticket {
    message_id: Option<String>,
    delivery: Delivery,
}

impl Ticket {
    /// The delivery to process.
    pub fn delivery(&self) -> &Delivery {
        &self.delivery
    }

    /// Its `messageId`, if it has one (without one it is never deduplicated).
    pub fn message_id(&self) -> Option<&str> {
        self.message_id.as_deref()
    }
}

struct Remembered {
    outcome: Outcome,
    at: Instant,
}

#[derive(Default)]
struct State {
    in_flight: HashMap<String, Vec<Delivery>>,
    remembered: HashMap<String, Remembered>,
    order: VecDeque<String>,
}

/// Tracks in-flight and unsettled messages by `messageId`.
pub struct Deduplicator {
    state: Mutex<State>,
    capacity: usize,
    ttl: Duration,
}

impl std::fmt::Debug for Deduplicator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.lock();
        f.debug_struct("Deduplicator")
            .field("in_flight", &state.in_flight.len())
            .field("remembered", &state.remembered.len())
            .finish()
    }
}

impl Default for Deduplicator {
    fn default() -> Self {
        Self::new(10_000, Duration::from_secs(3600))
    }
}

impl Deduplicator {
    /// Remembers at most `capacity` unsettled outcomes, each for at most `ttl`.
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
                delivery,
            });
        };
        let remembered = {
            let mut state = self.lock();
            if let Some(copies) = state.in_flight.get_mut(&id) {
                warn!(message_id = %id, "duplicate delivery of a message in flight; it will be settled with the original");
                copies.push(delivery);
                return Admission::Duplicate;
            }
            let remembered = if delivery.redelivered {
                state
                    .remembered
                    .remove(&id)
                    .filter(|r| r.at.elapsed() <= self.ttl)
            } else {
                None
            };
            if remembered.is_none() {
                state.in_flight.insert(id.clone(), Vec::new());
            }
            remembered
        };
        match remembered {
            Some(r) => {
                warn!(message_id = %id, outcome = ?r.outcome, "redelivered message was already processed; settling without processing");
                let result = delivery.settle(r.outcome).await;
                if let Err(e) = &result {
                    // Its channel died too: keep the outcome for the next redelivery.
                    debug!(message_id = %id, error = %e, "settling the redelivered copy failed");
                    if matches!(e, SettleError::ChannelClosed) {
                        self.remember(id, r.outcome);
                    }
                }
                Admission::AlreadyProcessed(r.outcome, result)
            }
            None => Admission::Process(Ticket {
                message_id: Some(id),
                delivery,
            }),
        }
    }

    /// Settles the processed delivery and every copy that arrived meanwhile. Returns `Ok` if
    /// at least one of them reached the broker; otherwise the outcome is remembered for the
    /// redelivery and the original's error is returned.
    pub async fn finish(&self, ticket: Ticket, outcome: Outcome) -> Result<(), SettleError> {
        let copies = match &ticket.message_id {
            Some(id) => self.lock().in_flight.remove(id).unwrap_or_default(),
            None => Vec::new(),
        };
        let first = ticket.delivery.settle(outcome).await;
        let mut any_ok = first.is_ok();
        let mut channel_closed = matches!(first, Err(SettleError::ChannelClosed));
        for copy in &copies {
            match copy.settle(outcome).await {
                Ok(()) => any_ok = true,
                Err(SettleError::ChannelClosed) => channel_closed = true,
                Err(e) => debug!(error = %e, "settling a duplicate copy failed"),
            }
        }
        if any_ok {
            return Ok(());
        }
        if channel_closed && let Some(id) = ticket.message_id {
            self.remember(id, outcome);
        }
        first
    }

    /// Number of messages in flight.
    pub fn in_flight(&self) -> usize {
        self.lock().in_flight.len()
    }

    fn remember(&self, id: String, outcome: Outcome) {
        let mut state = self.lock();
        let now = Instant::now();
        while let Some(oldest) = state.order.front().cloned() {
            let expired = state
                .remembered
                .get(&oldest)
                .is_none_or(|r| now.duration_since(r.at) > self.ttl);
            if expired || state.remembered.len() >= self.capacity {
                state.order.pop_front();
                state.remembered.remove(&oldest);
            } else {
                break;
            }
        }
        state.order.push_back(id.clone());
        state.remembered.insert(id, Remembered { outcome, at: now });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::amqp::test_support::delivery;
    use std::sync::{Arc, Mutex as StdMutex};

    type Log = Arc<StdMutex<Vec<(u64, Outcome)>>>;

    fn log() -> Log {
        Arc::default()
    }

    fn entries(log: &Log) -> Vec<(u64, Outcome)> {
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
        dedup.finish(t, Outcome::Ack).await.unwrap();
        assert_eq!(dedup.in_flight(), 0);
        assert_eq!(entries(&l), vec![(1, Outcome::Ack)]);
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
        dedup.finish(t, Outcome::Reject).await.unwrap();
        assert_eq!(entries(&l), vec![(7, Outcome::Reject)]);
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
            dedup.finish(t, Outcome::Ack).await,
            Err(SettleError::ChannelClosed)
        );
        match dedup.admit(delivery(3, Some("a"), true, &l, false)).await {
            Admission::AlreadyProcessed(Outcome::Ack, Ok(())) => {}
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(entries(&l), vec![(3, Outcome::Ack)]);
        // The memory is one-shot: a later copy is processed again.
        assert!(matches!(
            dedup.admit(delivery(4, Some("a"), true, &l, false)).await,
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
        let _ = dedup.finish(t, Outcome::Ack).await;
        assert!(matches!(
            dedup.admit(delivery(2, Some("a"), false, &l, false)).await,
            Admission::Process(_)
        ));
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
        dedup.finish(a, Outcome::Ack).await.unwrap();
        dedup.finish(b, Outcome::Reject).await.unwrap();
        assert_eq!(entries(&l), vec![(1, Outcome::Ack), (2, Outcome::Reject)]);
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
            let _ = dedup.finish(t, Outcome::Ack).await;
        }
        // "a" was evicted, "b" and "c" are remembered.
        assert!(matches!(
            dedup.admit(delivery(10, Some("a"), true, &l, false)).await,
            Admission::Process(_)
        ));
        assert!(matches!(
            dedup.admit(delivery(11, Some("c"), true, &l, false)).await,
            Admission::AlreadyProcessed(Outcome::Ack, Ok(()))
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
        let _ = dedup.finish(t, Outcome::Ack).await;
        std::thread::sleep(Duration::from_millis(2));
        assert!(matches!(
            dedup.admit(delivery(2, Some("a"), true, &l, false)).await,
            Admission::Process(_)
        ));
    }
}
