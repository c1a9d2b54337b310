//! `counter` rules: PLC part counters -> `production.count`.
//!
//! # Counter arithmetic
//! A reading below the previous one is either a rollover (the register wrapped at 2^bits) or a
//! reset (someone zeroed the counter). It is read as a rollover when the wrapped distance
//! `2^bits - last + new` is at most half the range, otherwise as a reset, counting `new` parts
//! since the reset. This is exact under one assumption: fewer than half the counter's range
//! (32768 parts for a u16 counter) is made between two saved baselines, that is within one
//! report `interval`, and during a gateway outage. A u16 counter on a fast line with long
//! outages should be declared u32 on a PLC that has one. The property tests below state the
//! assumption precisely and check every run that meets it.
//!
//! # Durability
//! The baseline (the reading the last event counted up to) is saved with each event, in the
//! same transaction. After a restart the first reading is compared with the saved baseline, so
//! parts made while the gateway was down are counted once, neither lost nor doubled.

use std::time::{Duration, SystemTime};

use firmware_config::{CounterInput, CounterRuleConfig};
use protocols::model::SampleBatch;
use serde_json::{Value as Json, json};

use super::{Latest, Output, sample_in};
use crate::event::{CloudEvent, rfc3339};

/// What a new reading means relative to the last.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Counted up by this many.
    Increase(u64),
    /// Wrapped past the top of the register; this many parts.
    Rollover(u64),
    /// Zeroed, then counted this many.
    Reset(u64),
}

impl Step {
    /// Parts produced.
    pub fn parts(self) -> u64 {
        match self {
            Step::Increase(n) | Step::Rollover(n) | Step::Reset(n) => n,
        }
    }
}

/// Interprets reading `new` after `last` for a counter of `bits` (16, 32 or 64).
pub fn step(last: u64, new: u64, bits: u32) -> Step {
    if new >= last {
        return Step::Increase(new - last);
    }
    let range = 1u128 << bits;
    let wrapped = range - u128::from(last) + u128::from(new);
    if wrapped <= range / 2 {
        Step::Rollover(wrapped as u64)
    } else {
        Step::Reset(new)
    }
}

#[derive(Debug)]
struct Track {
    input: CounterInput,
    /// The latest reading.
    last: Option<u64>,
    /// Parts counted since the last event.
    pending: u64,
    /// The reading the last saved state counted up to.
    saved: Option<u64>,
}

impl Track {
    fn new(input: CounterInput, saved: Option<u64>) -> Self {
        Track {
            input,
            last: saved,
            pending: 0,
            saved,
        }
    }

    fn observe(&mut self, batch: &SampleBatch, rule: &str) {
        let Some(sample) = sample_in(batch, &self.input.tag.0) else {
            return;
        };
        let Some(new) = sample.value.as_ref().and_then(|v| v.as_u64()) else {
            return;
        };
        let mask = if self.input.bits >= 64 {
            u64::MAX
        } else {
            (1u64 << self.input.bits) - 1
        };
        let new = new & mask;
        if let Some(last) = self.last {
            let s = step(last, new, self.input.bits);
            if let Step::Reset(n) = s {
                tracing::info!(rule, tag = %self.input.tag, last, new, counted = n, "Counter reset detected.");
            }
            self.pending += s.parts();
        }
        self.last = Some(new);
    }
}

/// A running counter rule.
#[derive(Debug)]
pub(super) struct CounterRule {
    config: CounterRuleConfig,
    tracks: [Option<Track>; 3], // total, good, reject
    interval_start: SystemTime,
    due: SystemTime,
}

impl CounterRule {
    pub(super) fn new(config: CounterRuleConfig, saved: Option<&Json>, now: SystemTime) -> Self {
        let saved_of = |key: &str| saved.and_then(|s| s.get(key)).and_then(Json::as_u64);
        let tracks = [
            config
                .total
                .clone()
                .map(|i| Track::new(i, saved_of("total"))),
            config.good.clone().map(|i| Track::new(i, saved_of("good"))),
            config
                .reject
                .clone()
                .map(|i| Track::new(i, saved_of("reject"))),
        ];
        let due = now + config.interval;
        CounterRule {
            config,
            tracks,
            interval_start: now,
            due,
        }
    }

    pub(super) fn on_batch(&mut self, batch: &SampleBatch, out: &mut Output) {
        let mut first_reading = false;
        for track in self.tracks.iter_mut().flatten() {
            track.observe(batch, &self.config.name);
            if track.saved.is_none() && track.last.is_some() {
                // The very first reading is the baseline: save it at once, or parts made
                // before the first report would be lost by a crash.
                track.saved = track.last;
                first_reading = true;
            }
        }
        if first_reading {
            out.state.push((self.config.name.clone(), self.snapshot()));
        }
    }

    /// The saved baselines: what every emitted event counted up to.
    fn snapshot(&self) -> Json {
        let mut state = serde_json::Map::new();
        for (key, track) in ["total", "good", "reject"].iter().zip(&self.tracks) {
            if let Some(t) = track {
                state.insert((*key).to_owned(), json!(t.saved));
            }
        }
        Json::Object(state)
    }

    /// Emits the interval's counts when it is due (or `force`d at shutdown).
    pub(super) fn on_tick(
        &mut self,
        now: SystemTime,
        latest: &Latest,
        gateway_id: &str,
        force: bool,
        out: &mut Output,
    ) {
        if now < self.due && !force {
            return;
        }
        let [total, good, reject] = &self.tracks;
        let pending = |t: &Option<Track>| t.as_ref().map(|t| t.pending);
        let (dt, dg, dr) = (pending(total), pending(good), pending(reject));
        let any = [dt, dg, dr].iter().flatten().any(|n| *n > 0);
        let changed = self.tracks.iter().flatten().any(|t| t.last != t.saved);
        if any {
            let (total, good, reject) = match (dt, dg, dr) {
                (Some(t), None, Some(r)) => (Some(t), Some(t.saturating_sub(r)), Some(r)),
                (None, Some(g), Some(r)) => (Some(g + r), Some(g), Some(r)),
                (Some(t), Some(g), None) => (Some(t), Some(g), Some(t.saturating_sub(g))),
                (t, g, r) => (t, g, r),
            };
            let order = self
                .config
                .order
                .as_ref()
                .and_then(|o| latest.value(&o.0))
                .map(|v| match v {
                    protocols::model::Value::Str(s) => Json::String(s.clone()),
                    other => Json::String(other.to_string()),
                });
            let data = json!({
                "machine": self.config.machine,
                "line": self.config.line,
                "order": order,
                "total": total,
                "good": good,
                "reject": reject,
                "interval_start": rfc3339(self.interval_start),
                "interval_end": rfc3339(now),
            });
            let m = &self.config.machine;
            out.events.push(CloudEvent::new(
                gateway_id,
                m,
                "production.count",
                m,
                now,
                data,
            ));
        }
        if any || changed {
            for t in self.tracks.iter_mut().flatten() {
                t.pending = 0;
                t.saved = t.last;
            }
            out.state.push((self.config.name.clone(), self.snapshot()));
        }
        self.interval_start = now;
        self.due = now + self.config.interval.max(Duration::from_millis(1));
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn steps_read_increases_rollovers_and_resets() {
        assert_eq!(step(10, 15, 16), Step::Increase(5));
        assert_eq!(step(65_530, 4, 16), Step::Rollover(10));
        assert_eq!(step(20_000, 12, 16), Step::Reset(12));
        assert_eq!(
            step(40_000, 12, 16),
            Step::Rollover(25_548),
            "from the top half, a drop reads as a wrap"
        );
        assert_eq!(step(u64::MAX - 1, 3, 64), Step::Rollover(5));
        assert_eq!(step(u32::MAX as u64, 0, 32), Step::Rollover(1));
        assert_eq!(step(7, 7, 32), Step::Increase(0));
    }

    /// What happens on the machine between two readings.
    #[derive(Debug, Clone)]
    enum Between {
        /// Makes `n` parts; the register wraps as it will.
        Produce(u64),
        /// Zeroes the counter, then makes `n` parts.
        ResetThenProduce(u64),
    }

    fn runs(bits: u32) -> impl Strategy<Value = (u64, Vec<Between>)> {
        let range = 1u128 << bits;
        let half = (range / 2) as u64;
        let start = if bits == 64 {
            any::<u64>().boxed()
        } else {
            (0..(range as u64)).boxed()
        };
        let produce = (0..half).prop_map(Between::Produce);
        let produce_small = (0..1000u64).prop_map(Between::Produce);
        let reset = (0..1000u64).prop_map(Between::ResetThenProduce);
        (
            start,
            proptest::collection::vec(
                prop_oneof![4 => produce_small, 1 => produce, 1 => reset],
                1..60,
            ),
        )
    }

    fn check(bits: u32, start: u64, between: &[Between]) -> Result<(), TestCaseError> {
        let range = 1u128 << bits;
        let mut reading = start;
        let (mut produced, mut counted) = (0u128, 0u128);
        for b in between {
            let next = match *b {
                Between::Produce(n) => ((u128::from(reading) + u128::from(n)) % range) as u64,
                Between::ResetThenProduce(n) => {
                    // A reset is only told apart from a rollover when it does not look like one:
                    // the wrapped distance must exceed half the range and the new reading must be
                    // below the old (otherwise it looks like an increase).
                    let n = n % range.min(u128::from(u64::MAX)) as u64;
                    let wrapped = range - u128::from(reading) + u128::from(n);
                    if n >= reading || wrapped <= range / 2 {
                        continue;
                    }
                    n
                }
            };
            produced += u128::from(match *b {
                Between::Produce(n) => n,
                Between::ResetThenProduce(_) => next,
            });
            counted += u128::from(step(reading, next, bits).parts());
            reading = next;
        }
        prop_assert_eq!(counted, produced);
        Ok(())
    }

    proptest! {
        #[test]
        fn counted_parts_equal_produced_parts_for_16_bit_counters((start, between) in runs(16)) {
            check(16, start, &between)?;
        }

        #[test]
        fn counted_parts_equal_produced_parts_for_32_bit_counters((start, between) in runs(32)) {
            check(32, start, &between)?;
        }

        #[test]
        fn counted_parts_equal_produced_parts_for_64_bit_counters((start, between) in runs(64)) {
            check(64, start, &between)?;
        }
    }
}
