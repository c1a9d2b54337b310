//! `counter` rules: PLC part counters -> `production.count`.
//!
//! # Counter arithmetic
//! Readings are taken every poll, so the honest step between two readings is small: at most
//! `max_rate` parts per second of time between them, plus one second of slack
//! ([`allowance`]). A step is judged by that plausibility bound, not by arithmetic alone:
//! - a rise within the allowance is counted at once;
//! - anything else (any drop: a rollover, a reset, a PLC restart, a transient 0 read; or a rise
//!   beyond what the machine can make: a preset, a garbage read) is held as *suspect* and
//!   decided by the next good reading:
//!   - if both readings tell the same story (a rollover: the wrapped distance is within the
//!     allowance and the count goes on from there), it is counted as that distance;
//!   - if that reading continues plausibly from the last trusted one, the suspect reading was a
//!     glitch: nothing is counted for it (`anomaly: "transient"`);
//!   - if it continues plausibly from the suspect reading, the counter really moved: a drop is a
//!     reset, counting the suspect value as parts made since zero when that is itself plausible
//!     (`anomaly: "reset"`, else `"preset"`, counting none); a rise beyond the allowance is a
//!     preset, counting none (`anomaly: "jump"`);
//!   - otherwise the new reading becomes the suspect and the next one decides.
//!
//! The rule cannot tell a reset from a dip when the counter stood within two allowances of zero,
//! nor from a rollover when it stood within one allowance of the top of its range: there the
//! smaller count is taken (never an invented part) and the step marked `ambiguous`, or it is
//! read as the rollover it looks like. The property test states these bounds.
//!
//! Every such step is listed in the event's `data.anomaly`, and the interval ends at once (an
//! event is made even with no parts) so the decision is committed before anything else can
//! happen: a crash right after a reset cannot lose the parts counted up to it. An interval only
//! closes when every counter of the rule is decided, so counters that move together are
//! reported together. A bad or missing
//! sample changes nothing. After a restart the saved baseline carries its wall-clock time, so
//! the first reading is judged against the time the gateway was down; a baseline saved
//! without one (an older release) is judged by the half-range rule.
//!
//! # Good and reject
//! With `total` and `reject` (or `total` and `good`), a reject counted in a later interval than
//! its part would make `good = total - reject` negative there. The excess is carried forward
//! (saved with the baseline) and taken from later intervals, so every event has
//! `good + reject = total`, and over any run the sums agree exactly: the reported rejects plus
//! the carry still owed equal the rejects counted.
//!
//! # Durability
//! The baseline (the reading the last event counted up to) and the carry are saved with each
//! event, in the same transaction. After a restart the first reading is compared with the
//! saved baseline, so parts made while the gateway was down are counted once, neither lost nor
//! doubled.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use firmware_config::{CounterInput, CounterRuleConfig};
use serde_json::{Value as Json, json};

use super::{Latest, Output};
use crate::event::{CloudEvent, rfc3339};

/// The most steps one event lists in `data.anomaly` (the rest are logged): an event stays far
/// below a sink's 1 MiB request cap however glitchy a counter is.
const MAX_ANOMALIES: usize = 100;

/// How long past its end an interval may wait for a suspect reading to be decided before the
/// engineer is warned that the rule's counts are held back.
const MAX_UNSETTLED: Duration = Duration::from_secs(60);

/// The most parts a machine making at most `max_rate` parts per second can honestly add in
/// `elapsed`, with one second of slack for bursts and clock jitter.
pub fn allowance(max_rate: f64, elapsed: Duration) -> u64 {
    let parts = (max_rate * (elapsed.as_secs_f64() + 1.0)).ceil();
    // f64 -> u64 `as` saturates; the bound is only ever compared.
    parts as u64
}

/// Parts between readings `last` and `new` of a `bits`-wide counter if the step is plausible
/// (at most `allowed` parts, counting a rollover), else `None`.
pub fn plausible(last: u64, new: u64, bits: u32, allowed: u64) -> Option<u64> {
    if new >= last {
        let d = new - last;
        return (d <= allowed).then_some(d);
    }
    let range = 1u128 << bits;
    let wrapped = range - u128::from(last) + u128::from(new);
    (wrapped <= u128::from(allowed)).then_some(wrapped as u64)
}

/// Plausibility bounds between two readings.
#[derive(Debug, Clone, Copy)]
struct Bound {
    /// Most parts for a rise, or since a reset.
    rise: u64,
    /// Most parts for a rollover.
    wrap: u64,
}

impl Bound {
    fn both(n: u64) -> Self {
        Bound { rise: n, wrap: n }
    }

    /// [`plausible`] with a bound for rises and one for rollovers.
    fn judge(self, last: u64, new: u64, bits: u32) -> Option<u64> {
        if new >= last {
            plausible(last, new, bits, self.rise)
        } else {
            plausible(last, new, bits, self.wrap)
        }
    }
}

fn ms(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[derive(Debug)]
struct Track {
    key: &'static str,
    input: CounterInput,
    /// The latest trusted reading and when it was taken (`None`: time unknown).
    last: Option<u64>,
    last_at: Option<SystemTime>,
    /// A reading that is not a plausible step from `last`, waiting for the next to decide.
    suspect: Option<(u64, SystemTime)>,
    /// Parts counted since the last event.
    pending: u64,
    /// The reading the last saved state counted up to, and when it was taken.
    saved: Option<u64>,
    saved_at: Option<SystemTime>,
    /// What this interval's readings needed deciding.
    anomalies: Vec<Json>,
}

impl Track {
    fn new(key: &'static str, input: CounterInput, saved: Option<&Json>) -> Self {
        let reading = saved.and_then(|s| s.get(key)).and_then(Json::as_u64);
        let at = saved
            .and_then(|s| s.get(format!("{key}_at_ms")))
            .and_then(Json::as_u64)
            .map(|ms| UNIX_EPOCH + Duration::from_millis(ms));
        Track {
            key,
            input,
            last: reading,
            last_at: at,
            suspect: None,
            pending: 0,
            saved: reading,
            saved_at: at,
            anomalies: Vec::new(),
        }
    }

    /// The most parts plausibly made between `from` and `at`: for a rise (and for parts made
    /// since a reset), and for a rollover.
    fn allowed_since(&self, from: Option<SystemTime>, at: SystemTime, max_rate: f64) -> Bound {
        match from.map(|from| at.duration_since(from)) {
            Some(Ok(elapsed)) => Bound::both(allowance(max_rate, elapsed)),
            // No time known (a baseline from an older release), or a wall clock now behind the
            // saved one (a box without a real-time clock, before NTP): the downtime is unknown.
            // A rise of up to half the range is counted, as before (parts made while down);
            // a drop is a rollover only right at the top of the range, so a reset during the
            // downtime is not read as a wrap (which would invent parts).
            Some(Err(_)) | None => Bound {
                rise: if self.input.bits >= 64 {
                    u64::MAX / 2
                } else {
                    (1u64 << self.input.bits) / 2
                },
                wrap: allowance(max_rate, Duration::ZERO),
            },
        }
    }

    fn note(&mut self, kind: &str, from: u64, to: u64, counted: u64, rule: &str) {
        if self.anomalies.len() >= MAX_ANOMALIES {
            tracing::debug!(rule, tag = %self.input.tag, kind, from, to, counted, "Counter step needed deciding; the event lists {MAX_ANOMALIES} already, so only this log has it.");
            return;
        }
        tracing::warn!(rule, tag = %self.input.tag, kind, from, to, counted, "Counter step needed deciding; recorded in the event's data.anomaly.");
        self.anomalies.push(json!({
            "counter": self.key,
            "kind": kind,
            "from": from,
            "to": to,
            "counted": counted,
        }));
    }

    fn observe(&mut self, latest: &Latest, max_rate: f64, rule: &str) {
        let Some(sample) = latest.in_batch(&self.input.tag.0) else {
            return;
        };
        if !sample.quality.is_good() {
            return;
        }
        let Some(new) = sample.value.as_ref().and_then(|v| v.as_u64()) else {
            return;
        };
        let at = sample.gateway_time;
        let bits = self.input.bits;
        let mask = if bits >= 64 {
            u64::MAX
        } else {
            (1u64 << bits) - 1
        };
        let new = new & mask;
        let Some(last) = self.last else {
            self.last = Some(new);
            self.last_at = Some(at);
            return;
        };
        let from_last = self
            .allowed_since(self.last_at, at, max_rate)
            .judge(last, new, bits);
        let Some((suspect, suspect_at)) = self.suspect.take() else {
            match from_last {
                // A plausible rise is counted at once; any drop (a rollover too) waits for the
                // next reading, which tells a rollover or reset from a glitch.
                Some(parts) if new >= last => {
                    self.pending = self.pending.saturating_add(parts);
                    self.last = Some(new);
                    self.last_at = Some(at);
                }
                _ => self.suspect = Some((new, at)),
            }
            return;
        };
        // If the suspect reading was real: what the step to it counts, and what since.
        let since_suspect = allowance(max_rate, at.duration_since(suspect_at).unwrap_or_default());
        let real = plausible(suspect, new, bits, since_suspect).map(|after| {
            let allowed = self.allowed_since(self.last_at, suspect_at, max_rate);
            let (kind, step) = if suspect > last {
                (Some("jump"), 0)
            } else if let Some(wrapped) = allowed.judge(last, suspect, bits) {
                (None, wrapped)
            } else if suspect <= allowed.rise && last < allowed.wrap.saturating_mul(2) {
                // Near zero a reset and a step back (an operator's correction) look alike:
                // count the smaller, none, and say so.
                (Some("ambiguous"), 0)
            } else if suspect <= allowed.rise {
                (Some("reset"), suspect)
            } else {
                (Some("preset"), 0)
            };
            (kind, step.saturating_add(after))
        });
        let counted = match (from_last, real) {
            // A rollover: both readings tell the same story.
            (Some(direct), Some((None, via))) if direct == via => direct,
            (Some(direct), Some((_, via))) => {
                // Both a dip and a real step fit: count the smaller (never invent parts).
                let counted = direct.min(via);
                self.note("ambiguous", last, suspect, counted, rule);
                counted
            }
            (Some(direct), None) => {
                self.note("transient", last, suspect, 0, rule);
                direct
            }
            (None, Some((kind, via))) => {
                if let Some(kind) = kind {
                    let step = via
                        .saturating_sub(plausible(suspect, new, bits, since_suspect).unwrap_or(0));
                    self.note(kind, last, suspect, step, rule);
                }
                via
            }
            (None, None) => {
                self.suspect = Some((new, at));
                return;
            }
        };
        self.pending = self.pending.saturating_add(counted);
        self.last = Some(new);
        self.last_at = Some(at);
    }
}

/// A running counter rule.
#[derive(Debug)]
pub(super) struct CounterRule {
    config: CounterRuleConfig,
    tracks: [Option<Track>; 3], // total, good, reject
    /// Parts of the sub-count (reject, or good with `total`+`good`) counted but not yet
    /// reported because their interval had fewer total parts.
    carry: u64,
    interval_start: SystemTime,
    due: Instant,
    /// Whether the engineer was told that the counters have not settled past the grace.
    unsettled_warned: bool,
}

impl CounterRule {
    pub(super) fn new(
        config: CounterRuleConfig,
        saved: Option<&Json>,
        wall: SystemTime,
        now: Instant,
    ) -> Self {
        let tracks = [
            config.total.clone().map(|i| Track::new("total", i, saved)),
            config.good.clone().map(|i| Track::new("good", i, saved)),
            config
                .reject
                .clone()
                .map(|i| Track::new("reject", i, saved)),
        ];
        let carry = saved
            .and_then(|s| s.get("carry"))
            .and_then(Json::as_u64)
            .unwrap_or(0);
        let due = now + config.interval;
        CounterRule {
            config,
            tracks,
            carry,
            interval_start: wall,
            due,
            unsettled_warned: false,
        }
    }

    /// Whether no reading waits for its confirming one.
    pub(super) fn settled(&self) -> bool {
        self.tracks.iter().flatten().all(|t| t.suspect.is_none())
    }

    /// Whether a step needed deciding since the last event: the interval should end now.
    pub(super) fn urgent(&self) -> bool {
        self.tracks
            .iter()
            .flatten()
            .any(|t| !t.anomalies.is_empty())
    }

    pub(super) fn on_batch(&mut self, latest: &Latest, out: &mut Output) {
        let mut first_reading = false;
        for track in self.tracks.iter_mut().flatten() {
            track.observe(latest, self.config.max_rate, &self.config.name);
            if track.saved.is_none() && track.last.is_some() {
                // The very first reading is the baseline: save it at once, or parts made
                // before the first report would be lost by a crash.
                track.saved = track.last;
                track.saved_at = track.last_at;
                first_reading = true;
            }
        }
        if first_reading {
            out.state.push((self.config.name.clone(), self.snapshot()));
        }
    }

    /// The saved baselines (what every emitted event counted up to) and the carry.
    fn snapshot(&self) -> Json {
        let mut state = serde_json::Map::new();
        for t in self.tracks.iter().flatten() {
            state.insert(t.key.to_owned(), json!(t.saved));
            if let Some(at) = t.saved_at {
                state.insert(format!("{}_at_ms", t.key), json!(ms(at)));
            }
        }
        state.insert("carry".to_owned(), json!(self.carry));
        Json::Object(state)
    }

    /// Splits `total` parts into (sub-count reported, rest), paying the carry first.
    fn settle(&mut self, total: u64, sub: u64) -> (u64, u64) {
        let owed = sub.saturating_add(self.carry);
        let reported = owed.min(total);
        self.carry = owed - reported;
        (reported, total - reported)
    }

    /// Emits the interval's counts when it is due (or `force`d at shutdown). `wall` stamps the
    /// event; `now` schedules (a wall clock stepped backwards must not hold events back).
    pub(super) fn on_tick(
        &mut self,
        wall: SystemTime,
        now: Instant,
        latest: &Latest,
        gateway_id: &str,
        force: bool,
        out: &mut Output,
    ) {
        if now < self.due && !force {
            return;
        }
        // An interval closes with every counter decided: a step waiting for its confirming
        // reading would otherwise land in the next interval while the other counters' parts
        // land in this one (late good parts read as rejects). At shutdown it closes anyway; the
        // undecided step is judged again after the restart.
        if !force && !self.settled() {
            // Readings that keep jumping beyond what the machine can make (a 32-bit counter
            // read in the wrong word order steps by 65,536 a part) hold the rule's counts back
            // (not lost: they are reported once the readings settle, or at shutdown). Closing
            // the interval anyway would split good and reject without the undecided counter,
            // inventing rejects; so the engineer is told, once, what to check.
            if now >= self.due + MAX_UNSETTLED
                && !std::mem::replace(&mut self.unsettled_warned, true)
            {
                let tags: Vec<&str> = self
                    .tracks
                    .iter()
                    .flatten()
                    .filter(|t| t.suspect.is_some())
                    .map(|t| t.input.tag.0.as_str())
                    .collect();
                tracing::warn!(rule = %self.config.name, tags = ?tags, "A counter's readings have kept jumping more than max_rate allows for {MAX_UNSETTLED:?}; the rule's counts are held (not lost) until they settle. Check the tag's type and word order, and max_rate.");
            }
            return;
        }
        self.unsettled_warned = false;
        let [total, good, reject] = &self.tracks;
        let pending = |t: &Option<Track>| t.as_ref().map(|t| t.pending);
        let (dt, dg, dr) = (pending(total), pending(good), pending(reject));
        let anomalies: Vec<Json> = self
            .tracks
            .iter_mut()
            .flatten()
            .flat_map(|t| std::mem::take(&mut t.anomalies))
            .collect();
        let listed = anomalies.len().min(MAX_ANOMALIES);
        if listed < anomalies.len() {
            tracing::warn!(rule = %self.config.name, listed, more = anomalies.len() - listed, "More counter steps needed deciding than an event lists; the rest are in this log.");
        }
        let anomalies: Vec<Json> = anomalies.into_iter().take(MAX_ANOMALIES).collect();
        let carry_before = self.carry;
        let (total, good, reject) = match (dt, dg, dr) {
            (Some(t), None, Some(r)) => {
                let (r, g) = self.settle(t, r);
                (Some(t), Some(g), Some(r))
            }
            (Some(t), Some(g), None) => {
                let (g, r) = self.settle(t, g);
                (Some(t), Some(g), Some(r))
            }
            (None, Some(g), Some(r)) => (Some(g.saturating_add(r)), Some(g), Some(r)),
            (t, g, r) => (t, g, r),
        };
        let any = [total, good, reject].iter().flatten().any(|n| *n > 0);
        let changed = self.carry != carry_before
            || self
                .tracks
                .iter()
                .flatten()
                .any(|t| t.last != t.saved || t.pending > 0);
        if any || !anomalies.is_empty() {
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
                "interval_end": rfc3339(wall),
                "anomaly": if anomalies.is_empty() { Json::Null } else { Json::Array(anomalies) },
            });
            let m = &self.config.machine;
            out.events.push(CloudEvent::new(
                gateway_id,
                m,
                "production.count",
                m,
                wall,
                data,
            ));
        }
        if any || changed {
            for t in self.tracks.iter_mut().flatten() {
                t.pending = 0;
                t.saved = t.last;
                t.saved_at = t.last_at;
            }
            out.state.push((self.config.name.clone(), self.snapshot()));
        }
        self.interval_start = wall;
        self.due = now + self.config.interval.max(Duration::from_millis(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plausible_steps_are_increases_and_rollovers_within_the_allowance() {
        assert_eq!(allowance(100.0, Duration::from_millis(200)), 120);
        assert_eq!(plausible(10, 15, 16, 120), Some(5));
        assert_eq!(plausible(65_530, 4, 16, 120), Some(10), "a rollover");
        assert_eq!(
            plausible(40_000, 12, 16, 120),
            None,
            "a reset is no rollover"
        );
        assert_eq!(
            plausible(100, 60_000, 16, 120),
            None,
            "nor a jump an increase"
        );
        assert_eq!(plausible(u64::MAX - 1, 3, 64, 120), Some(5));
        assert_eq!(plausible(u32::MAX as u64, 0, 32, 120), Some(1));
        assert_eq!(
            plausible(1_000_000, 0, 32, 120),
            None,
            "a transient 0 is no rollover"
        );
        assert_eq!(allowance(f64::MAX, Duration::MAX), u64::MAX, "saturates");
    }
}
