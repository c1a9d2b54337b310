//! What protects a receiver from its gateway: a circuit breaker and a rate limit, per sink.
//!
//! The breaker counts failed deliveries in a row (an [`Outcome::Retry`](super::Outcome): the
//! receiver, the network or the credential failed; a refusal of content is an answer, not a
//! failure). After `breaker_failures` of them it opens: nothing is sent for `breaker_open`.
//! Then it half-opens: the next request is a probe. An answer closes it; a failure opens it
//! again for another `breaker_open`. Events wait in the buffer the whole time.
//!
//! The rate limit spaces requests at least `1 / rate_limit` apart (no bursts: a fragile ERP
//! sees an even pace).

use std::time::Duration;

use tokio::time::Instant;

/// The breaker's state, as logged and stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum State {
    /// Requests flow.
    Closed,
    /// Nothing is sent until `until`.
    Open {
        /// When it half-opens.
        until: Instant,
    },
    /// The next request is a probe.
    HalfOpen,
}

impl State {
    /// The name shown in logs and `causeway buffer stats`.
    pub(crate) fn name(self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::Open { .. } => "open",
            State::HalfOpen => "half-open",
        }
    }
}

/// A sink's circuit breaker.
#[derive(Debug)]
pub(crate) struct Breaker {
    threshold: u32,
    open_for: Duration,
    failures: u32,
    state: State,
}

impl Breaker {
    /// Opens after `threshold` failures in a row (at least 1), for `open_for`.
    pub(crate) fn new(threshold: u32, open_for: Duration) -> Self {
        Breaker {
            threshold: threshold.max(1),
            open_for,
            failures: 0,
            state: State::Closed,
        }
    }

    /// Failed deliveries in a row.
    pub(crate) fn failures(&self) -> u32 {
        self.failures
    }

    /// The state now.
    pub(crate) fn state(&self) -> State {
        self.state
    }

    /// Before a request: how long to wait while open (`Some`), or `None` to send now. An open
    /// breaker whose time is up half-opens here (returned as the change).
    pub(crate) fn before(&mut self, now: Instant) -> (Option<Duration>, Option<State>) {
        match self.state {
            State::Open { until } if now < until => (Some(until - now), None),
            State::Open { .. } => {
                self.state = State::HalfOpen;
                (None, Some(State::HalfOpen))
            }
            State::Closed | State::HalfOpen => (None, None),
        }
    }

    /// The receiver answered: closes the breaker. Returns the change, if any.
    pub(crate) fn answered(&mut self) -> Option<State> {
        self.failures = 0;
        if self.state == State::Closed {
            None
        } else {
            self.state = State::Closed;
            Some(State::Closed)
        }
    }

    /// A delivery failed at `now`: opens the breaker at the threshold, or again after a failed
    /// probe. Returns the change, if any.
    pub(crate) fn failed(&mut self, now: Instant) -> Option<State> {
        self.failures = self.failures.saturating_add(1);
        let open = match self.state {
            State::HalfOpen => true,
            State::Closed => self.failures >= self.threshold,
            // A request cannot fail while open: none is sent.
            State::Open { .. } => false,
        };
        if open {
            self.state = State::Open {
                until: now + self.open_for,
            };
            Some(self.state)
        } else {
            None
        }
    }

    /// How long until an open breaker half-opens (zero when it is not open).
    pub(crate) fn remaining(&self, now: Instant) -> Duration {
        match self.state {
            State::Open { until } => until.saturating_duration_since(now),
            State::Closed | State::HalfOpen => Duration::ZERO,
        }
    }
}

/// Spaces requests at least `1 / rate` seconds apart.
#[derive(Debug)]
pub(crate) struct Pace {
    gap: Option<Duration>,
    next: Option<Instant>,
}

impl Pace {
    /// `rate` requests per second at most; `None`: no limit. A rate the config check bounds
    /// (0.01 ..= 1000); anything else is taken as no limit rather than a panic.
    pub(crate) fn new(rate: Option<f64>) -> Self {
        let gap = rate
            .filter(|r| r.is_finite() && *r > 0.0)
            .and_then(|r| Duration::try_from_secs_f64(1.0 / r).ok());
        Pace { gap, next: None }
    }

    /// How long to wait at `now` before the next request may go (zero: go now).
    pub(crate) fn wait(&self, now: Instant) -> Duration {
        self.next
            .map_or(Duration::ZERO, |n| n.saturating_duration_since(now))
    }

    /// A request went at `now`: the next may go one gap later (measured from when this one
    /// really went, so a late start never shortens the gap that follows).
    pub(crate) fn sent(&mut self, now: Instant) {
        if let Some(gap) = self.gap {
            self.next = Some(now + gap);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_breaker_opens_at_the_threshold_half_opens_on_time_and_closes_on_an_answer() {
        let t0 = Instant::now();
        let mut b = Breaker::new(3, Duration::from_secs(30));
        assert_eq!(b.failed(t0), None);
        assert_eq!(b.failed(t0), None);
        assert_eq!(
            b.failed(t0),
            Some(State::Open {
                until: t0 + Duration::from_secs(30)
            })
        );
        assert_eq!(b.failures(), 3);
        let later = t0 + Duration::from_secs(10);
        assert_eq!(b.before(later), (Some(Duration::from_secs(20)), None));
        assert_eq!(b.remaining(later), Duration::from_secs(20));
        let due = t0 + Duration::from_secs(30);
        assert_eq!(b.before(due), (None, Some(State::HalfOpen)));
        // The probe fails: open again, for the whole period.
        assert_eq!(
            b.failed(due),
            Some(State::Open {
                until: due + Duration::from_secs(30)
            })
        );
        let due = due + Duration::from_secs(30);
        assert_eq!(b.before(due), (None, Some(State::HalfOpen)));
        assert_eq!(b.answered(), Some(State::Closed));
        assert_eq!(b.failures(), 0);
        assert_eq!(b.state(), State::Closed);
        // Closed again: the count starts over.
        assert_eq!(b.failed(due), None);
        assert_eq!(b.answered(), None);
        assert_eq!(b.failed(due), None);
        assert_eq!(b.failed(due), None);
        assert!(matches!(b.failed(due), Some(State::Open { .. })));
    }

    #[test]
    fn the_pace_spaces_requests_from_when_they_went_and_does_not_bank_idle_time() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut p = Pace::new(Some(4.0));
        assert_eq!(p.wait(t0), Duration::ZERO);
        p.sent(t0);
        assert_eq!(p.wait(t0), ms(250));
        assert_eq!(p.wait(t0 + ms(100)), ms(150));
        // It went 10 ms late: the next waits a whole gap from then.
        p.sent(t0 + ms(260));
        assert_eq!(p.wait(t0 + ms(260)), ms(250));
        // Idle for a minute: the next goes at once, the one after waits a gap (no burst).
        let t1 = t0 + Duration::from_secs(60);
        assert_eq!(p.wait(t1), Duration::ZERO);
        p.sent(t1);
        assert_eq!(p.wait(t1), ms(250));
        let mut free = Pace::new(None);
        free.sent(t0);
        assert_eq!(free.wait(t0), Duration::ZERO);
        let mut nan = Pace::new(Some(f64::NAN));
        nan.sent(t0);
        assert_eq!(nan.wait(t0), Duration::ZERO);
    }
}
