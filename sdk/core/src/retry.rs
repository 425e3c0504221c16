//! Retrying: bounded exponential backoff with jitter, attempt and time budgets, and the
//! `Retry-After` header in both of its forms.
//!
//! Every place in Deckhand that waits before trying again — the token endpoint, the AMQP
//! publisher and consumer, the platform API client, rebound expirations, the connectors'
//! throttling — takes its delays from here, so a delay schedule is written once and tested
//! once.
//!
//! * [`Backoff`] — the delay schedule: `initial · factor^n`, optionally jittered, never above
//!   its cap. [`Backoff::fixed`] is the degenerate schedule of a fixed pause.
//! * [`Policy`] — a schedule plus its bounds: how many attempts, how long in all, and what to do
//!   when a server asks (`Retry-After`) for a longer pause than the cap.
//! * [`Attempts`] — one run of a policy: record a failure, get the pause before the next attempt
//!   or `None` when the policy says stop. For loops that need more than [`run`] offers.
//! * [`run`] — the whole loop for the common case: an operation that fails transiently or for
//!   good ([`Failure`]).
//! * [`retry_after`] — a `Retry-After` value (delay-seconds or HTTP-date) as a duration.
//! * [`ThrottleRetry`] — a policy as an HTTP client middleware: requests an API answers 429 or
//!   503 are sent again after the `Retry-After` it asks for, so connectors write no loop.
//!
//! Elapsed time is measured with [`tokio::time::Instant`] and pauses use
//! [`tokio::time::sleep`], so tests run with paused time, without real waits.
//!
//! This module is not a circuit breaker nor a rate limiter, and it does not decide *what* is
//! transient: each caller classifies its own failures.
//!
//! # Example
//! ```
//! use std::time::Duration;
//! use deckhand_core::retry::{self, Backoff, Failure, Policy};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let policy = Policy::new(
//!     Backoff::exponential(Duration::from_millis(1))
//!         .with_cap(Duration::from_millis(10))
//!         .with_jitter_percent(20),
//! )
//! .with_max_attempts(4);
//!
//! // Fails twice, transiently, then succeeds.
//! let answer = retry::run(&policy, |attempt| async move {
//!     if attempt < 3 {
//!         Err(Failure::transient("busy"))
//!     } else {
//!         Ok(attempt)
//!     }
//! })
//! .await;
//! assert_eq!(answer, Ok(3));
//!
//! // `Retry-After` in seconds or as an HTTP-date.
//! assert_eq!(retry::retry_after("120"), Some(Duration::from_secs(120)));
//! assert_eq!(retry::retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), Some(Duration::ZERO));
//! assert_eq!(retry::retry_after("soon"), None);
//! # }
//! ```

use std::future::Future;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use http::Extensions;
use rand::Rng;
use reqwest::header::RETRY_AFTER;
use reqwest::{Request, Response, StatusCode};
use reqwest_middleware::{Middleware, Next};
use tokio::time::Instant;

const NANOS_PER_SEC: u128 = 1_000_000_000;

/// A delay schedule: the pause after failure `n` (0-based) is `initial · factor^n`, scaled by a
/// random factor in `[1 − jitter, 1 + jitter)` when jitter is set, and never above the cap.
///
/// Arithmetic saturates: a schedule run far past its cap stays at the cap (or at
/// [`Duration::MAX`] when uncapped), it never panics nor wraps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    initial: Duration,
    factor: u32,
    cap: Duration,
    jitter_percent: u8,
}

impl Backoff {
    /// `initial`, doubled after each failure; no cap, no jitter.
    pub const fn exponential(initial: Duration) -> Self {
        Self {
            initial,
            factor: 2,
            cap: Duration::MAX,
            jitter_percent: 0,
        }
    }

    /// The same pause after every failure.
    pub const fn fixed(delay: Duration) -> Self {
        Self {
            initial: delay,
            factor: 1,
            cap: Duration::MAX,
            jitter_percent: 0,
        }
    }

    /// Multiplies the pause by `factor` after each failure (1 = fixed, 2 = doubling).
    pub const fn with_factor(mut self, factor: u32) -> Self {
        self.factor = factor;
        self
    }

    /// No pause longer than `cap`, jitter included.
    pub const fn with_cap(mut self, cap: Duration) -> Self {
        self.cap = cap;
        self
    }

    /// Scales each pause by a random factor in `[1 − p/100, 1 + p/100)`, so that many clients
    /// failing together do not retry together. `p` is held to 100.
    pub const fn with_jitter_percent(mut self, percent: u8) -> Self {
        self.jitter_percent = if percent > 100 { 100 } else { percent };
        self
    }

    /// The pause after the first failure, before jitter.
    pub const fn initial(&self) -> Duration {
        self.initial
    }

    /// The growth factor.
    pub const fn factor(&self) -> u32 {
        self.factor
    }

    /// The longest pause ([`Duration::MAX`] when uncapped).
    pub const fn cap(&self) -> Duration {
        self.cap
    }

    /// The jitter, in percent of the pause.
    pub const fn jitter_percent(&self) -> u8 {
        self.jitter_percent
    }

    /// The pause after failure `n` (0-based) without jitter: `min(initial · factor^n, cap)`.
    pub fn nominal(&self, n: u32) -> Duration {
        from_nanos(self.uncapped_nanos(n).min(self.cap.as_nanos()))
    }

    /// The pause after failure `n` (0-based), jitter included, at most the cap.
    pub fn delay(&self, n: u32) -> Duration {
        let uncapped = self.uncapped_nanos(n);
        let jittered = if self.jitter_percent == 0 {
            uncapped
        } else {
            let spread = f64::from(self.jitter_percent) / 100.0;
            let scale = rand::rng().random_range(1.0 - spread..1.0 + spread);
            // `as` saturates for floats: a product beyond u128 becomes u128::MAX.
            (uncapped as f64 * scale) as u128
        };
        from_nanos(jittered.min(self.cap.as_nanos()))
    }

    fn uncapped_nanos(&self, n: u32) -> u128 {
        let growth = u128::from(self.factor).checked_pow(n).unwrap_or(u128::MAX);
        self.initial.as_nanos().saturating_mul(growth)
    }
}

/// `nanos` as a duration; values beyond [`Duration::MAX`] become it.
fn from_nanos(nanos: u128) -> Duration {
    let secs = u64::try_from(nanos / NANOS_PER_SEC).unwrap_or(u64::MAX);
    // The remainder is below 10^9, which fits.
    Duration::new(secs, (nanos % NANOS_PER_SEC) as u32)
}

/// What a [`Policy`] does when a server's `Retry-After` asks for more than the backoff's cap.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LongRetryAfter {
    /// Waits the cap, then tries again.
    #[default]
    Cap,
    /// Stops at once: the caller has a better place to wait (e.g. the token manager pauses
    /// every caller of a credential until the time has passed).
    GiveUp,
}

/// A [`Backoff`] and its bounds.
///
/// ```
/// use std::time::Duration;
/// use deckhand_core::retry::{Backoff, Policy};
///
/// let policy = Policy::new(Backoff::fixed(Duration::from_millis(100))).with_max_attempts(3);
/// let mut attempts = policy.attempts();
/// assert_eq!(attempts.next_delay(None), Some(Duration::from_millis(100)));
/// assert_eq!(attempts.next_delay(Some(Duration::from_secs(2))), Some(Duration::from_secs(2)));
/// assert_eq!(attempts.next_delay(None), None); // three attempts made
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    /// The pauses between attempts.
    pub backoff: Backoff,
    /// Attempts in all, the first included; `None` for no limit. `Some(0)` counts as 1: an
    /// operation is always tried once.
    pub max_attempts: Option<u32>,
    /// No attempt starts later than this after the first; `None` for no limit.
    pub max_elapsed: Option<Duration>,
    /// A `Retry-After` beyond the cap: wait the cap, or give up.
    pub long_retry_after: LongRetryAfter,
}

impl Policy {
    /// Retries forever with `backoff`.
    pub const fn new(backoff: Backoff) -> Self {
        Self {
            backoff,
            max_attempts: None,
            max_elapsed: None,
            long_retry_after: LongRetryAfter::Cap,
        }
    }

    /// At most `attempts` attempts in all, the first included.
    pub const fn with_max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = Some(attempts);
        self
    }

    /// No attempt starts later than `elapsed` after the first.
    pub const fn with_max_elapsed(mut self, elapsed: Duration) -> Self {
        self.max_elapsed = Some(elapsed);
        self
    }

    /// What to do with a `Retry-After` beyond the cap.
    pub const fn with_long_retry_after(mut self, rule: LongRetryAfter) -> Self {
        self.long_retry_after = rule;
        self
    }

    /// Starts a run of this policy (and its clock).
    pub fn attempts(&self) -> Attempts {
        Attempts {
            policy: *self,
            failures: 0,
            started: Instant::now(),
        }
    }

    /// The pause after the `failures`-th failure (1-based) when `elapsed` has passed since the
    /// first attempt, `retry_after` being the server's wish if it expressed one; `None` when
    /// the policy says stop.
    pub fn pause(
        &self,
        failures: u32,
        elapsed: Duration,
        retry_after: Option<Duration>,
    ) -> Option<Duration> {
        if self.max_attempts.is_some_and(|max| failures >= max.max(1)) {
            return None;
        }
        let cap = self.backoff.cap;
        let pause = match retry_after {
            Some(wish) if wish > cap && self.long_retry_after == LongRetryAfter::GiveUp => {
                return None;
            }
            Some(wish) => wish.min(cap),
            None => self.backoff.delay(failures.saturating_sub(1)),
        };
        if self
            .max_elapsed
            .is_some_and(|max| elapsed.saturating_add(pause) > max)
        {
            return None;
        }
        Some(pause)
    }
}

/// One run of a [`Policy`]: counts failures and measures time since it started.
#[derive(Clone, Debug)]
pub struct Attempts {
    policy: Policy,
    failures: u32,
    started: Instant,
}

impl Attempts {
    /// Records a failed attempt and returns the pause before the next one, or `None` when the
    /// policy says stop. `retry_after` is the server's wish, if it expressed one; it replaces
    /// the backoff's delay (see [`Policy::long_retry_after`] for wishes beyond the cap).
    pub fn next_delay(&mut self, retry_after: Option<Duration>) -> Option<Duration> {
        self.failures = self.failures.saturating_add(1);
        self.policy
            .pause(self.failures, self.started.elapsed(), retry_after)
    }

    /// Records a failed attempt that is retried at once, outside the schedule (it still counts
    /// towards the attempts and makes later pauses longer).
    pub fn failed_without_pause(&mut self) {
        self.failures = self.failures.saturating_add(1);
    }

    /// Failures recorded since the start (or the last [`reset`](Self::reset)).
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// Starts over, e.g. after a success of a long-running loop.
    pub fn reset(&mut self) {
        self.failures = 0;
        self.started = Instant::now();
    }
}

/// Why an attempt of [`run`] failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure<E> {
    /// Worth another attempt; `retry_after` is the server's wish, if any.
    Transient {
        /// The failure, returned if no attempt is left.
        error: E,
        /// The server's `Retry-After`.
        retry_after: Option<Duration>,
    },
    /// Not worth another attempt.
    Permanent(E),
}

impl<E> Failure<E> {
    /// A transient failure without a server's wish.
    pub fn transient(error: E) -> Self {
        Self::Transient {
            error,
            retry_after: None,
        }
    }

    /// A failure for good.
    pub fn permanent(error: E) -> Self {
        Self::Permanent(error)
    }

    /// The failure itself.
    pub fn into_inner(self) -> E {
        match self {
            Self::Transient { error, .. } | Self::Permanent(error) => error,
        }
    }
}

/// Runs `op` until it succeeds, fails permanently, or `policy` says stop, pausing between
/// attempts; returns the last failure. `op` gets the attempt number (1-based).
pub async fn run<T, E, F, Fut>(policy: &Policy, mut op: F) -> Result<T, E>
where
    F: FnMut(u32) -> Fut,
    Fut: Future<Output = Result<T, Failure<E>>>,
{
    let mut attempts = policy.attempts();
    loop {
        match op(attempts.failures().saturating_add(1)).await {
            Ok(value) => return Ok(value),
            Err(Failure::Permanent(error)) => return Err(error),
            Err(Failure::Transient { error, retry_after }) => {
                match attempts.next_delay(retry_after) {
                    Some(pause) => tokio::time::sleep(pause).await,
                    None => return Err(error),
                }
            }
        }
    }
}

/// A `Retry-After` header value as the time to wait from now: delay-seconds (`120`) or an
/// HTTP-date (`Wed, 21 Oct 2015 07:28:00 GMT`; a date in the past means no wait). `None` for
/// anything else. Accepts `&str`, `&[u8]` or an `http::HeaderValue`.
pub fn retry_after(value: impl AsRef<[u8]>) -> Option<Duration> {
    retry_after_at(value.as_ref(), SystemTime::now())
}

/// [`retry_after`] with `now` given, for an HTTP-date.
pub fn retry_after_at(value: &[u8], now: SystemTime) -> Option<Duration> {
    let value = std::str::from_utf8(value).ok()?.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        // All digits: only overflow can fail, and a wish that long is as good as forever.
        return Some(Duration::from_secs(value.parse().unwrap_or(u64::MAX)));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or_default())
}

/// A [`Policy`] applied to the requests an HTTP API refuses for load: a `reqwest-middleware`
/// middleware that sends a request again when the answer is **429 Too Many Requests** or **503
/// Service Unavailable**, after the `Retry-After` the API asked for (capped by the policy's
/// backoff) or else the policy's next backoff delay. When the policy says stop, or the request
/// cannot be sent twice (a streaming body), the last answer is returned as it is, for the caller
/// to map to an error.
///
/// Put it before the authentication middleware in the chain, so that a retry after a long wait
/// gets a fresh token. A connector asks for it with `Connector::throttle_retry`.
///
/// ```
/// use std::time::Duration;
/// use deckhand_core::retry::{Backoff, Policy, ThrottleRetry};
///
/// // Up to three retries, 1 s, 2 s, 4 s apart, or as long as `Retry-After` asks (at most 30 s).
/// let throttle = ThrottleRetry::new(
///     Policy::new(Backoff::exponential(Duration::from_secs(1)).with_cap(Duration::from_secs(30)))
///         .with_max_attempts(4),
/// );
/// let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
///     .with(throttle)
///     .build();
/// # let _ = client;
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ThrottleRetry {
    policy: Policy,
}

impl ThrottleRetry {
    /// Retries throttled requests as `policy` says.
    pub const fn new(policy: Policy) -> Self {
        Self { policy }
    }

    /// The policy.
    pub const fn policy(&self) -> &Policy {
        &self.policy
    }
}

#[async_trait]
impl Middleware for ThrottleRetry {
    async fn handle(
        &self,
        mut req: Request,
        extensions: &mut Extensions,
        next: Next<'_>,
    ) -> reqwest_middleware::Result<Response> {
        let mut schedule = self.policy.attempts();
        loop {
            let again = req.try_clone();
            let response = next.clone().run(req, extensions).await?;
            let status = response.status();
            if status != StatusCode::TOO_MANY_REQUESTS && status != StatusCode::SERVICE_UNAVAILABLE
            {
                return Ok(response);
            }
            let asked = response.headers().get(RETRY_AFTER).and_then(retry_after);
            let (Some(again), Some(wait)) = (again, schedule.next_delay(asked)) else {
                return Ok(response);
            };
            tracing::warn!(
                status = status.as_u16(),
                method = %again.method(),
                path = again.url().path(),
                retry = schedule.failures(),
                wait_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
                "the API is throttling; waiting before retrying"
            );
            tokio::time::sleep(wait).await;
            req = again;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn exponential_grows_by_its_factor_up_to_the_cap() {
        let b = Backoff::exponential(100 * MS).with_cap(1000 * MS);
        assert_eq!(b.delay(0), 100 * MS);
        assert_eq!(b.delay(1), 200 * MS);
        assert_eq!(b.delay(3), 800 * MS);
        assert_eq!(b.delay(4), 1000 * MS);
        assert_eq!(b.delay(200), 1000 * MS);
        assert_eq!(b.delay(u32::MAX), 1000 * MS);
        let triple = Backoff::exponential(MS).with_factor(3);
        assert_eq!(triple.delay(2), 9 * MS);
    }

    #[test]
    fn fixed_never_grows() {
        let b = Backoff::fixed(100 * MS);
        for n in [0, 1, 7, u32::MAX] {
            assert_eq!(b.delay(n), 100 * MS);
        }
    }

    #[test]
    fn uncapped_saturates_instead_of_overflowing() {
        let b = Backoff::exponential(15 * Duration::from_secs(1));
        assert_eq!(b.delay(19).as_millis(), 7_864_320_000);
        assert_eq!(b.delay(100), Duration::MAX);
        assert_eq!(
            Backoff::exponential(Duration::ZERO).delay(100),
            Duration::ZERO
        );
        // Jitter on a saturated delay does not panic either.
        assert_eq!(
            Backoff::exponential(Duration::MAX)
                .with_jitter_percent(50)
                .delay(3),
            Duration::MAX
        );
    }

    #[test]
    fn jitter_stays_in_its_range_and_under_the_cap() {
        let b = Backoff::exponential(1000 * MS).with_jitter_percent(20);
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..500 {
            let d = b.delay(0);
            assert!(d >= 800 * MS && d < 1200 * MS, "{d:?}");
            seen.insert(d);
        }
        assert!(seen.len() > 10, "jitter should vary the delay: {seen:?}");
        let capped = b.with_cap(1100 * MS);
        for _ in 0..500 {
            assert!(capped.delay(0) <= 1100 * MS);
            assert!(capped.delay(5) <= 1100 * MS);
        }
        assert_eq!(b.nominal(1), 2000 * MS);
        assert_eq!(
            Backoff::fixed(MS).with_jitter_percent(250).jitter_percent(),
            100
        );
    }

    #[test]
    fn attempts_are_bounded() {
        let policy = Policy::new(Backoff::exponential(10 * MS)).with_max_attempts(3);
        let mut run = policy.attempts();
        assert_eq!(run.next_delay(None), Some(10 * MS));
        assert_eq!(run.next_delay(None), Some(20 * MS));
        assert_eq!(run.next_delay(None), None);
        assert_eq!(run.failures(), 3);
        run.reset();
        assert_eq!(run.next_delay(None), Some(10 * MS));
        // Zero attempts still means one.
        let once = Policy::new(Backoff::fixed(MS)).with_max_attempts(0);
        assert_eq!(once.attempts().next_delay(None), None);
        // Unlimited.
        let mut forever = Policy::new(Backoff::fixed(MS)).attempts();
        for _ in 0..1000 {
            assert_eq!(forever.next_delay(None), Some(MS));
        }
    }

    #[test]
    fn a_pause_without_a_wait_still_counts() {
        let policy = Policy::new(Backoff::exponential(10 * MS)).with_max_attempts(3);
        let mut run = policy.attempts();
        run.failed_without_pause();
        assert_eq!(run.next_delay(None), Some(20 * MS));
        assert_eq!(run.next_delay(None), None);
    }

    #[test]
    fn retry_after_replaces_the_backoff_and_is_capped_or_ends() {
        let backoff = Backoff::exponential(10 * MS).with_cap(Duration::from_secs(30));
        let capped = Policy::new(backoff);
        assert_eq!(
            capped.pause(1, Duration::ZERO, Some(Duration::from_secs(5))),
            Some(Duration::from_secs(5))
        );
        assert_eq!(
            capped.pause(1, Duration::ZERO, Some(Duration::from_secs(300))),
            Some(Duration::from_secs(30))
        );
        let strict = capped.with_long_retry_after(LongRetryAfter::GiveUp);
        assert_eq!(
            strict.pause(1, Duration::ZERO, Some(Duration::from_secs(30))),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            strict.pause(1, Duration::ZERO, Some(Duration::from_secs(31))),
            None
        );
    }

    #[tokio::test(start_paused = true)]
    async fn elapsed_time_is_bounded() {
        let policy = Policy::new(Backoff::fixed(Duration::from_secs(4)))
            .with_max_elapsed(Duration::from_secs(10));
        let mut run = policy.attempts();
        assert_eq!(run.next_delay(None), Some(Duration::from_secs(4)));
        tokio::time::advance(Duration::from_secs(4)).await;
        assert_eq!(run.next_delay(None), Some(Duration::from_secs(4)));
        tokio::time::advance(Duration::from_secs(4)).await;
        // 8 s passed: another 4 s pause would end after the 10 s budget.
        assert_eq!(run.next_delay(None), None);
    }

    #[tokio::test(start_paused = true)]
    async fn run_pauses_between_attempts_and_returns_the_last_failure() {
        let policy = Policy::new(Backoff::exponential(Duration::from_secs(1))).with_max_attempts(4);
        let start = Instant::now();
        let mut starts = Vec::new();
        let result: Result<(), &str> = run(&policy, |attempt| {
            starts.push((attempt, start.elapsed()));
            async move { Err(Failure::transient("busy")) }
        })
        .await;
        assert_eq!(result, Err("busy"));
        let secs = |s| Duration::from_secs(s);
        assert_eq!(
            starts,
            vec![(1, secs(0)), (2, secs(1)), (3, secs(3)), (4, secs(7))]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn run_honours_retry_after_and_stops_on_a_permanent_failure() {
        let policy = Policy::new(Backoff::fixed(Duration::from_secs(1)));
        let start = Instant::now();
        let result: Result<(), &str> = run(&policy, |attempt| async move {
            match attempt {
                1 => Err(Failure::Transient {
                    error: "throttled",
                    retry_after: Some(Duration::from_secs(7)),
                }),
                _ => Err(Failure::permanent("denied")),
            }
        })
        .await;
        assert_eq!(result, Err("denied"));
        assert_eq!(start.elapsed(), Duration::from_secs(7));

        let ok: Result<u32, &str> = run(&policy, |attempt| async move { Ok(attempt) }).await;
        assert_eq!(ok, Ok(1));
    }

    #[test]
    fn retry_after_in_seconds() {
        assert_eq!(retry_after("0"), Some(Duration::ZERO));
        assert_eq!(retry_after(" 120 "), Some(Duration::from_secs(120)));
        assert_eq!(retry_after(b"7"), Some(Duration::from_secs(7)));
        assert_eq!(
            retry_after("99999999999999999999999"),
            Some(Duration::from_secs(u64::MAX))
        );
    }

    #[test]
    fn retry_after_as_an_http_date() {
        let now = httpdate::parse_http_date("Wed, 21 Oct 2015 07:28:00 GMT").unwrap();
        assert_eq!(
            retry_after_at(b"Wed, 21 Oct 2015 07:30:00 GMT", now),
            Some(Duration::from_secs(120))
        );
        // The obsolete forms HTTP still allows.
        assert_eq!(
            retry_after_at(b"Wednesday, 21-Oct-15 07:29:00 GMT", now),
            Some(Duration::from_secs(60))
        );
        // A date in the past: no wait.
        assert_eq!(
            retry_after_at(b"Tue, 20 Oct 2015 07:28:00 GMT", now),
            Some(Duration::ZERO)
        );
        let future = SystemTime::now() + Duration::from_secs(3600);
        let wait = retry_after(httpdate::fmt_http_date(future)).unwrap();
        assert!(wait > Duration::from_secs(3590) && wait <= Duration::from_secs(3600));
    }

    #[test]
    fn retry_after_garbage_is_none() {
        for garbage in [
            "",
            " ",
            "-5",
            "1.5",
            "soon",
            "12s",
            "Wed, 32 Oct 2015 07:28:00 GMT",
            "\u{1F600}",
        ] {
            assert_eq!(retry_after(garbage), None, "{garbage:?}");
        }
        assert_eq!(retry_after([0xff, 0xfe]), None);
    }
}
