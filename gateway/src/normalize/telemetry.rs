//! `telemetry` rules: raw tag values forwarded as `telemetry.sample` events, the samples of one
//! source batch (or one tick) in one event, so 500 tags polled every 100 ms make 10 events a
//! second, not 5,000.
//!
//! A tag is sent when it is first seen, when its quality changes, and when its value changes
//! (a numeric one by at least the `deadband` from the last value sent); at most every
//! `min_interval` (a change inside it is sent, as the tag's latest value, when it ends) and at
//! least every `heartbeat`. Nothing is saved: after a restart every tag is sent once again.

use std::{collections::HashMap, sync::Arc, time::Instant};

use firmware_config::TelemetryRuleConfig;
use protocols::model::{Quality, Sample, SampleBatch, Value};
use serde_json::{Value as Json, json};

use super::{Latest, Output};
use crate::event::CloudEvent;

/// Most samples in one event (a larger batch makes several).
pub(super) const MAX_SAMPLES_PER_EVENT: usize = 1_000;
/// Most tags whose match is remembered, and most tags tracked, per rule: tags are bounded by the
/// configuration (and the 10,000 an MQTT source may name per source), this bounds the rest.
const MAX_TAGS: usize = 100_000;

/// What was last sent of one tag.
#[derive(Debug)]
struct Sent {
    value: Option<Value>,
    quality: u8,
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

    /// Whether `sample` differs enough from what was last sent.
    fn changed(&self, last: &Sent, sample: &Sample) -> bool {
        if last.quality != quality_rank(&sample.quality) {
            return true;
        }
        match (&last.value, &sample.value, self.config.deadband) {
            (Some(a), Some(b), Some(band)) => match (a.as_f64(), b.as_f64()) {
                (Some(a), Some(b)) => band.exceeded(a, b),
                _ => a != b,
            },
            (a, b, _) => a != b,
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
            let min = self.config.min_interval;
            if let Some(last) = self.sent.get_mut(&sample.tag)
                && now.saturating_duration_since(last.at) < min
            {
                last.pending = true;
            } else if self.remember(sample, now) {
                send.push(sample);
            }
        }
        self.emit(&send, gateway_id, out);
    }

    /// Records `sample` as sent; `false` if the rule tracks too many tags to take a new one.
    fn remember(&mut self, sample: &Sample, now: Instant) -> bool {
        if !self.sent.contains_key(&sample.tag) && self.sent.len() >= MAX_TAGS {
            tracing::warn!(rule = %self.config.name, tag = %sample.tag, "A telemetry rule tracks {MAX_TAGS} tags; more are not forwarded.");
            return false;
        }
        self.sent.insert(
            Arc::clone(&sample.tag),
            Sent {
                value: sample.value.clone(),
                quality: quality_rank(&sample.quality),
                at: now,
                pending: false,
            },
        );
        true
    }

    /// Sends what `min_interval` held back once it has passed, and what `heartbeat` is due for.
    pub(super) fn on_tick(
        &mut self,
        now: Instant,
        latest: &Latest,
        gateway_id: &str,
        out: &mut Output,
    ) {
        let (min, beat) = (self.config.min_interval, self.config.heartbeat);
        let mut due: Vec<Arc<str>> = self
            .sent
            .iter()
            .filter(|(_, s)| {
                let since = now.saturating_duration_since(s.at);
                (s.pending && since >= min) || beat.is_some_and(|b| since >= b)
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

    fn emit(&self, samples: &[&Sample], gateway_id: &str, out: &mut Output) {
        for chunk in samples.chunks(MAX_SAMPLES_PER_EVENT) {
            let Some(first) = chunk.first() else { continue };
            let at = first.source_time.unwrap_or(first.gateway_time);
            let data = json!({
                "machine": self.config.machine,
                "samples": chunk.iter().map(|s| sample_json(s)).collect::<Vec<_>>(),
            });
            out.events.push(CloudEvent::new(
                gateway_id,
                &self.config.machine,
                "telemetry.sample",
                &self.config.name,
                at,
                data,
            ));
        }
    }
}

/// `{tag, value, quality, ts}`, with `reason` unless Good.
fn sample_json(s: &Sample) -> Json {
    let (quality, reason) = match &s.quality {
        Quality::Good => ("good", None),
        Quality::Uncertain(why) => ("uncertain", Some(why.as_str())),
        Quality::Bad(why) => ("bad", Some(why.as_str())),
    };
    let mut v = json!({
        "tag": &*s.tag,
        "value": s.value.as_ref().map_or(Json::Null, value_json),
        "quality": quality,
        "ts": crate::event::rfc3339(s.source_time.unwrap_or(s.gateway_time)),
    });
    if let (Some(reason), Some(map)) = (reason, v.as_object_mut()) {
        map.insert("reason".into(), json!(reason));
    }
    v
}

fn value_json(v: &Value) -> Json {
    match v {
        Value::Bool(b) => json!(b),
        Value::I64(i) => json!(i),
        Value::U64(u) => json!(u),
        Value::F64(f) if f.is_finite() => json!(f),
        Value::F64(_) => Json::Null,
        Value::Str(s) => json!(s),
        Value::Array(items) => Json::Array(items.iter().map(value_json).collect()),
    }
}
