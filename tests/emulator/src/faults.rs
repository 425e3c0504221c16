//! Fault injection: queued failures served instead of the normal answer.

use std::collections::VecDeque;
use std::time::Duration;

/// A failure served by a resource endpoint (Salesforce data / Graph API) instead of the
/// normal answer. The body has the emulated provider's error shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResourceFault {
    /// 401 with the provider's "invalid/expired token" body (the token itself is untouched).
    Unauthorized,
    /// 429, with `Retry-After: <secs>` when given.
    TooManyRequests {
        /// Value of the `Retry-After` header, in seconds.
        retry_after_secs: Option<u64>,
    },
    /// 503, with `Retry-After: <secs>` when given.
    ServiceUnavailable {
        /// Value of the `Retry-After` header, in seconds.
        retry_after_secs: Option<u64>,
    },
    /// 500.
    InternalServerError,
}

/// A failure served by a token endpoint instead of the normal answer. Injected faults never
/// touch token state (an injected `InvalidGrant` does not consume the refresh token), except
/// [`TokenFault::DropResponseAfterRotation`], which processes the grant first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenFault {
    /// 400 `{"error":"invalid_grant"}`.
    InvalidGrant,
    /// 429 `{"error":"temporarily_unavailable"}`, with `Retry-After` when given.
    TooManyRequests {
        /// Value of the `Retry-After` header, in seconds.
        retry_after_secs: Option<u64>,
    },
    /// 503 `{"error":"temporarily_unavailable"}`, with `Retry-After` when given.
    ServiceUnavailable {
        /// Value of the `Retry-After` header, in seconds.
        retry_after_secs: Option<u64>,
    },
    /// 500 `{"error":"server_error"}`.
    InternalServerError,
    /// Waits this long, then serves the request normally (a slow provider).
    Latency(Duration),
    /// Serves the request normally (a refresh token is rotated), then holds the answer back
    /// this long before sending it: a client whose deadline is shorter never sees the
    /// rotation, like a response lost after the provider processed it.
    Stall(Duration),
    /// The grant is processed as usual (under strict rotation the presented refresh token is
    /// spent and a new one issued), then the connection is reset before the answer's body is
    /// sent: the client cannot tell whether its grant was processed, and a strict provider
    /// treats the retry with the same refresh token as reuse.
    DropResponseAfterRotation,
}

/// FIFO queues of pending faults; each request pops at most one.
#[derive(Debug, Default)]
pub(crate) struct FaultQueues {
    pub(crate) resource: VecDeque<ResourceFault>,
    pub(crate) token: VecDeque<TokenFault>,
    /// Added to every token request (after any queued fault), until changed.
    pub(crate) token_latency: Duration,
}
