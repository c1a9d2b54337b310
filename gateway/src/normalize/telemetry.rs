//! `telemetry` rules: raw tag values forwarded as `telemetry.sample` events, the samples of the
//! batches committed together (one poll, or every batch waiting at once; or one tick) in one
//! event, so 500 tags polled every 100 ms make 10 events a second, not 5,000.
//!
//! A tag is sent when it is first seen, when its quality changes (Good, Uncertain, Bad: at
//! once, whatever `min_interval`; another reason of the same quality like a value change), and
//! when its value changes: a float by at least the `deadband` from the last value sent, bools,
//! integers and text exactly (a deadband meant for temperatures must not swallow a coil or a
//! state code), a float turning NaN or back always. Value changes go out at most every
//! `min_interval` (a change inside it is sent, as the tag's latest value, when it ends, and at
//! shutdown) and every tag at least every `heartbeat`. An event holds at most 1,000 samples and
//! about 256 KiB. Nothing is saved: after a restart every tag is sent once again.

use std::{collections::HashMap, sync::Arc, time::Instant};

use firmware_config::TelemetryRuleConfig;
use protocols::model::{Quality, Sample, SampleBatch, Value};
use serde_json::Value as Json;

use super::{Latest, Output};
use crate::event::{CloudEvent, ValueJson};

/// Most samples in one event (a larger batch makes several).
pub(super) const MAX_SAMPLES_PER_EVENT: usize = 1_000;
/// About the most bytes of samples in one event: well under any sink's per-event cap (an MQTT
/// publish of 1 MiB), so one long text or array cannot make the other samples' event too large.
const MAX_EVENT_BYTES: usize = 256 << 10;
/// Most tags whose match is remembered, and most tags tracked, per rule: tags are bounded by the
/// configuration (and the 10,000 an MQTT source may name per source), this bounds the rest.
const MAX_TAGS: usize = 100_000;

/// What was last sent of one tag.
#[derive(Debug)]
struct Sent {
    value: Option<Value>,
    quality: u8,
    reason: Option<String>,
    at: Instant,
    /// A change came inside `min_interval`: sent when it ends.
    pending: bool,
}

/// A running telemetry rule.
#[derive(Debug)]
pub(super) struct TelemetryRule {
    config: TelemetryRuleConfig,
    /// Tag -> whether this rule forwards it (its patterns matched once per tag).
    matched: HashMap<Arc<str>, bool>,
    sent: HashMap<Arc<str>, Sent>,
    /// Tags held back by `min_interval`.
    pending: usize,
    /// Whether the "too many tags" warning was given.
    full_warned: bool,
}

fn quality_rank(q: &Quality) -> u8 {
    match q {
        Quality::Good => 0,
        Quality::Uncertain(_) => 1,
        Quality::Bad(_) => 2,
    }
}

impl TelemetryRule {
    pub(super) fn new(config: TelemetryRuleConfig) -> Self {
        TelemetryRule {
            config,
            matched: HashMap::new(),
            sent: HashMap::new(),
            pending: 0,
            full_warned: false,
        }
    }

    fn forwards(&mut self, tag: &Arc<str>) -> bool {
        if let Some(m) = self.matched.get(tag) {
            return *m;
        }
        let m = self.config.forwards(tag);
        if self.matched.len() >= MAX_TAGS {
            self.matched.clear();
        }
        self.matched.insert(Arc::clone(tag), m);
        m
    }

    /// Whether `sample` differs enough from what was last sent: the deadband only between two
    /// finite floats; anything else exactly (NaN equal to NaN).
    fn changed(&self, last: &Sent, sample: &Sample) -> bool {
        if last.quality != quality_rank(&sample.quality)
            || last.reason.as_deref() != reason(&sample.quality)
        {
            return true;
        }
        match (&last.value, &sample.value) {
            (Some(Value::F64(a)), Some(Value::F64(b))) => match self.config.deadband {
                Some(band) if a.is_finite() && b.is_finite() => band.exceeded(*a, *b),
                _ => a.to_bits() != b.to_bits() && !(a.is_nan() && b.is_nan()),
            },
            (a, b) => a != b,
        }
    }

    pub(super) fn on_batch(
        &mut self,
        batch: &SampleBatch,
        now: Instant,
        gateway_id: &str,
        out: &mut Output,
    ) {
        let mut send: Vec<&Sample> = Vec::new();
        for sample in &batch.samples {
            if !self.forwards(&sample.tag) {
                continue;
            }
            let due = match self.sent.get(&sample.tag) {
                None => true,
                Some(last) => self.changed(last, sample),
            };
            if !due {
                continue;
            }
            // A change of quality goes out at once; a value's waits for `min_interval`.
            let min = self.config.min_interval;
            if let Some(last) = self.sent.get_mut(&sample.tag)
                && now.saturating_duration_since(last.at) < min
                && last.quality == quality_rank(&sample.quality)
            {
                if !last.pending {
                    last.pending = true;
                    self.pending += 1;
                }
            } else if self.remember(sample, now) {
                send.push(sample);
            }
        }
        self.emit(&send, gateway_id, out);
    }

    /// Records `sample` as sent; `false` if the rule tracks too many tags to take a new one.
    fn remember(&mut self, sample: &Sample, now: Instant) -> bool {
        if !self.sent.contains_key(&sample.tag) && self.sent.len() >= MAX_TAGS {
            if !std::mem::replace(&mut self.full_warned, true) {
                tracing::warn!(rule = %self.config.name, tag = %sample.tag, "A telemetry rule tracks {MAX_TAGS} tags; more are not forwarded.");
            }
            return false;
        }
        let previous = self.sent.insert(
            Arc::clone(&sample.tag),
            Sent {
                value: sample.value.clone(),
                quality: quality_rank(&sample.quality),
                reason: reason(&sample.quality).map(str::to_owned),
                at: now,
                pending: false,
            },
        );
        if previous.is_some_and(|p| p.pending) {
            self.pending = self.pending.saturating_sub(1);
        }
        true
    }

    /// Sends what `min_interval` held back once it has passed (all of it with `force`, at
    /// shutdown), and what `heartbeat` is due for.
    pub(super) fn on_tick(
        &mut self,
        now: Instant,
        force: bool,
        latest: &Latest,
        gateway_id: &str,
        out: &mut Output,
    ) {
        let (min, beat) = (self.config.min_interval, self.config.heartbeat);
        if self.pending == 0 && beat.is_none() {
            return;
        }
        let mut due: Vec<Arc<str>> = self
            .sent
            .iter()
            .filter(|(_, s)| {
                let since = now.saturating_duration_since(s.at);
                (s.pending && (force || since >= min)) || beat.is_some_and(|b| since >= b)
            })
            .map(|(tag, _)| Arc::clone(tag))
            .collect();
        if due.is_empty() {
            return;
        }
        due.sort();
        let mut send = Vec::with_capacity(due.len());
        for tag in &due {
            if let Some(sample) = latest.sample(tag) {
                self.remember(sample, now);
                send.push(sample);
            }
        }
        self.emit(&send, gateway_id, out);
    }

    /// Adds `samples` to this rule's open event in `out` while it has room (at most
    /// [`MAX_SAMPLES_PER_EVENT`] samples and about [`MAX_EVENT_BYTES`]), else to a new one: the
    /// batches committed together make one event, not one each. An event's time is its latest
    /// sample's. The samples are held as JSON text, not as `Value`s.
    fn emit(&self, samples: &[&Sample], gateway_id: &str, out: &mut Output) {
        for sample in samples {
            let Some(text) = sample_text(sample) else {
                tracing::error!(rule = %self.config.name, tag = %sample.tag, "A sample could not be written as JSON; it is not forwarded (a gateway bug: please report it).");
                continue;
            };
            let size = text.len() + 1;
            let time = sample.source_time.unwrap_or(sample.gateway_time);
            let open = out.open.get_mut(&self.config.name).filter(|o| {
                o.samples < MAX_SAMPLES_PER_EVENT && o.bytes.saturating_add(size) <= MAX_EVENT_BYTES
            });
            let joined = open.and_then(|o| {
                let event = out.events.get_mut(o.event)?;
                let raw = event.raw_data.as_mut().filter(|r| r.ends_with("]}"))?;
                // `...]}` -> `...,<sample>]}`
                raw.truncate(raw.len() - 2);
                raw.push(',');
                raw.push_str(&text);
                raw.push_str("]}");
                o.samples += 1;
                o.bytes += size;
                if time > o.at {
                    o.at = time;
                    event.time = crate::event::rfc3339(time);
                }
                Some(())
            });
            if joined.is_none() {
                let mut event = CloudEvent::new(
                    gateway_id,
                    &self.config.machine,
                    "telemetry.sample",
                    &self.config.name,
                    time,
                    Json::Null,
                );
                let machine = Json::String(self.config.machine.clone());
                event.raw_data = Some(format!(r#"{{"machine":{machine},"samples":[{text}]}}"#));
                out.events.push(event);
                out.open.insert(
                    self.config.name.clone(),
                    Open {
                        event: out.events.len() - 1,
                        samples: 1,
                        bytes: size,
                        at: time,
                    },
                );
            }
        }
    }
}

/// A telemetry event in an [`Output`] that is still taking samples.
#[derive(Debug)]
pub(crate) struct Open {
    /// Its index in `Output::events`.
    event: usize,
    samples: usize,
    bytes: usize,
    at: std::time::SystemTime,
}

/// The reason of a quality that is not Good.
fn reason(q: &Quality) -> Option<&str> {
    match q {
        Quality::Good => None,
        Quality::Uncertain(why) | Quality::Bad(why) => Some(why),
    }
}

/// About the bytes a sample takes in an event's JSON.
pub(super) fn estimate(s: &Sample) -> usize {
    fn value(v: &Value) -> usize {
        match v {
            Value::Str(t) => t.len() + 2,
            Value::Array(items) => items.iter().map(value).sum::<usize>() + items.len() + 2,
            _ => 24,
        }
    }
    80 + s.tag.len() + s.value.as_ref().map_or(4, value) + reason(&s.quality).map_or(0, str::len)
}

/// `{tag, value, quality, ts}`, with `reason` unless Good.
/// A sample as JSON text: `{"tag", "value", "quality", "ts", "reason"?}`.
fn sample_text(s: &Sample) -> Option<String> {
    let (quality, reason) = match &s.quality {
        Quality::Good => ("good", None),
        Quality::Uncertain(why) => ("uncertain", Some(why.as_str())),
        Quality::Bad(why) => ("bad", Some(why.as_str())),
    };
    let out = SampleOut {
        tag: &s.tag,
        value: s.value.as_ref().map(ValueJson),
        quality,
        ts: crate::event::rfc3339(s.source_time.unwrap_or(s.gateway_time)),
        reason,
    };
    // Serializing strings, numbers and options into a String does not fail; if it ever did,
    // the sample is left out rather than written as broken JSON.
    serde_json::to_string(&out)
        .ok()
        .filter(|t| t.starts_with('{'))
}

#[derive(serde::Serialize)]
struct SampleOut<'a> {
    tag: &'a str,
    value: Option<ValueJson<'a>>,
    quality: &'static str,
    ts: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'a str>,
}
