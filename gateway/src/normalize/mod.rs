//! The normalizer: one task that turns [`SampleBatch`]es into events by the configured rules and
//! commits them, with the rule state they change, to the store.
//!
//! Rules see a whole poll at once: the latest value of every tag is updated from the batch first,
//! then each rule runs. Nothing is acknowledged upstream; the normalizer simply does not take the
//! next batch until the last commit succeeded, so a failing disk holds the sources back instead
//! of losing events (counters are cumulative, so no part is lost by reading later).

mod counter;
mod measurement;
mod state;
mod telemetry;

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

pub use counter::{allowance, plausible};
use firmware_config::{GatewayConfig, RuleConfig};
use protocols::{
    backoff::Backoff,
    model::{Quality, Sample, SampleBatch, Value},
};
use serde_json::Value as Json;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::{event::CloudEvent, store::Store};

/// How often interval rules (counters) are checked.
const TICK: Duration = Duration::from_millis(100);

/// The most batches that join one commit: those already waiting when one arrives are taken
/// with it (one write, one telemetry event, for what arrives together), up to this many.
const DRAIN_BATCHES: usize = 1_024;

/// The most events one commit gathers from waiting batches (a batch can make an event per
/// rule it feeds); past it the commit is written and the rest wait for the next.
const DRAIN_EVENTS: usize = 2_000;

/// The most sample bytes (estimated from tag, value and reason) one commit takes from waiting
/// batches: a commit stays small, well under any buffer's `max_bytes` (at least 1 MiB), and an
/// MQTT source's messages acknowledged before their commit stay few. 256 KiB: with 20 polls of
/// 500 tags landing together, 1 MiB held 59 MiB RSS, 256 KiB 46 MiB (before samples were held
/// as text), at the same CPU.
const DRAIN_BYTES: usize = 256 << 10;

/// Events and rule state to commit together.
#[derive(Debug, Default)]
pub struct Output {
    /// New events.
    pub events: Vec<CloudEvent>,
    /// (rule name, state) pairs.
    pub state: Vec<(String, Json)>,
    /// Telemetry rules' events in `events` that later samples may still join, by rule name.
    pub(crate) open: HashMap<String, telemetry::Open>,
}

impl Output {
    fn is_empty(&self) -> bool {
        self.events.is_empty() && self.state.is_empty()
    }
}

/// The latest sample of every tag, each stamped with the batch that brought it. As many
/// entries as tags: those configured, and at most `MAX_DERIVED` (10,000) per MQTT source
/// named from `+` topics; each value is bounded by its source (an MQTT payload by
/// `max_payload`, an OPC UA value by the client's message limit).
#[derive(Debug, Default)]
pub struct Latest {
    samples: HashMap<Arc<str>, (Sample, u64)>,
    /// The batch being applied.
    batch: u64,
}

impl Latest {
    /// The tag's latest sample, good or not.
    pub fn sample(&self, tag: &str) -> Option<&Sample> {
        self.samples.get(tag).map(|(s, _)| s)
    }

    /// The tag's latest good value.
    pub fn value(&self, tag: &str) -> Option<&Value> {
        self.sample(tag)
            .filter(|s| s.quality.is_good())
            .and_then(|s| s.value.as_ref())
    }

    /// The tag's sample in the batch being applied, if the batch has one: one hash lookup,
    /// whatever the batch's size. Sources send one sample per tag per batch; were a tag in a
    /// batch twice, the last sample wins, as for [`Latest::sample`].
    pub fn in_batch(&self, tag: &str) -> Option<&Sample> {
        self.samples
            .get(tag)
            .filter(|(_, batch)| *batch == self.batch)
            .map(|(s, _)| s)
    }
}

#[derive(Debug)]
enum Rule {
    Counter(Box<counter::CounterRule>),
    State(state::StateRule),
    Measurement(measurement::MeasurementRule),
    Telemetry(telemetry::TelemetryRule),
}

/// Counters of what the normalizer saw, for logs, tests and (later) metrics.
#[derive(Debug, Default)]
pub struct NormalizerStats {
    /// Batches taken from the sources.
    pub batches: std::sync::atomic::AtomicU64,
    /// Samples in them.
    pub samples: std::sync::atomic::AtomicU64,
    /// Samples of Bad quality (a device down, an exception, a value that did not decode).
    pub bad: std::sync::atomic::AtomicU64,
}

/// The rules engine.
#[derive(Debug)]
pub struct Normalizer {
    gateway_id: String,
    rules: Vec<Rule>,
    /// Tag -> the rules that read it (ascending): a batch runs only the rules it feeds.
    index: HashMap<Arc<str>, Vec<usize>>,
    /// Scratch: which rules the batch being applied feeds.
    fed: Vec<bool>,
    latest: Latest,
    stats: Arc<NormalizerStats>,
}

/// Every tag a rule reads.
fn rule_tags(rule: &RuleConfig) -> Vec<&str> {
    let mut tags: Vec<&str> = match rule {
        RuleConfig::Counter(c) => [&c.total, &c.good, &c.reject]
            .into_iter()
            .flatten()
            .map(|i| i.tag.0.as_str())
            .chain(c.order.iter().map(|o| o.0.as_str()))
            .collect(),
        RuleConfig::State(c) => std::iter::once(c.tag.0.as_str())
            .chain(c.reason.iter().map(|r| r.0.as_str()))
            .collect(),
        RuleConfig::Measurement(c) => std::iter::once(c.tag.0.as_str())
            .chain(c.trigger.iter().map(|t| t.0.as_str()))
            .collect(),
        // Patterns: a telemetry rule looks at every batch (one lookup per sample).
        RuleConfig::Telemetry(_) => Vec::new(),
    };
    tags.dedup();
    tags
}

impl Normalizer {
    /// Builds the rules, restoring their saved state.
    pub fn new(config: &GatewayConfig, saved: &[(String, Json)]) -> Self {
        // The last entry wins, as in the store's upsert.
        let saved_of = |name: &str| saved.iter().rev().find(|(n, _)| n == name).map(|(_, s)| s);
        let (wall, now) = (SystemTime::now(), Instant::now());
        let rules = config
            .rules
            .iter()
            .map(|rule| match rule {
                RuleConfig::Counter(c) => Rule::Counter(Box::new(counter::CounterRule::new(
                    c.clone(),
                    saved_of(&c.name),
                    wall,
                    now,
                ))),
                RuleConfig::State(c) => {
                    Rule::State(state::StateRule::new(c.clone(), saved_of(&c.name)))
                }
                RuleConfig::Measurement(c) => Rule::Measurement(measurement::MeasurementRule::new(
                    c.clone(),
                    saved_of(&c.name),
                )),
                RuleConfig::Telemetry(c) => {
                    Rule::Telemetry(telemetry::TelemetryRule::new(c.clone()))
                }
            })
            .collect();
        let mut index: HashMap<Arc<str>, Vec<usize>> = HashMap::new();
        for (i, rule) in config.rules.iter().enumerate() {
            for tag in rule_tags(rule) {
                let rules = index.entry(Arc::from(tag)).or_default();
                if rules.last() != Some(&i) {
                    rules.push(i);
                }
            }
        }
        Normalizer {
            gateway_id: config.gateway_id.clone(),
            fed: vec![false; config.rules.len()],
            rules,
            index,
            latest: Latest::default(),
            stats: Arc::default(),
        }
    }

    /// The counters, shared: they outlive the normalizer.
    pub fn stats(&self) -> Arc<NormalizerStats> {
        Arc::clone(&self.stats)
    }

    /// Applies one batch.
    pub fn on_batch(&mut self, batch: &SampleBatch, out: &mut Output) {
        use std::sync::atomic::Ordering::Relaxed;
        self.stats.batches.fetch_add(1, Relaxed);
        self.stats
            .samples
            .fetch_add(batch.samples.len() as u64, Relaxed);
        let bad = batch
            .samples
            .iter()
            .filter(|s| matches!(s.quality, Quality::Bad(_)))
            .count();
        self.stats.bad.fetch_add(bad as u64, Relaxed);
        self.latest.batch += 1;
        for sample in &batch.samples {
            let previous = self.latest.sample(&sample.tag).map(|s| s.quality.clone());
            match (&previous, &sample.quality) {
                (Some(Quality::Bad(_)), Quality::Good) => {
                    tracing::info!(tag = %sample.tag, "Tag reads good again.");
                }
                (Some(Quality::Good | Quality::Uncertain(_)) | None, Quality::Bad(why)) => {
                    tracing::warn!(tag = %sample.tag, reason = %why, "Tag quality is bad.");
                }
                _ => {}
            }
            self.latest
                .samples
                .insert(Arc::clone(&sample.tag), (sample.clone(), self.latest.batch));
            if let Some(rules) = self.index.get(&sample.tag) {
                for &i in rules {
                    self.fed[i] = true;
                }
            }
        }
        let now = Instant::now();
        for (i, rule) in self.rules.iter_mut().enumerate() {
            let fed = std::mem::take(&mut self.fed[i]);
            if let Rule::Telemetry(r) = rule {
                r.on_batch(batch, now, &self.gateway_id, out);
                continue;
            }
            if !fed {
                continue;
            }
            match rule {
                Rule::Counter(r) => {
                    r.on_batch(&self.latest, out);
                    if r.urgent() && r.settled() {
                        let wall = batch
                            .samples
                            .first()
                            .map_or_else(SystemTime::now, |s| s.gateway_time);
                        r.on_tick(
                            wall,
                            Instant::now(),
                            &self.latest,
                            &self.gateway_id,
                            true,
                            out,
                        );
                    }
                }
                Rule::State(r) => r.on_batch(&self.latest, &self.gateway_id, out),
                Rule::Measurement(r) => r.on_batch(batch, &self.latest, &self.gateway_id, out),
                Rule::Telemetry(_) => {}
            }
        }
    }

    /// Whether every counter rule has decided its last reading (none waits for confirmation).
    #[cfg(test)]
    fn settled(&self) -> bool {
        self.rules.iter().all(|r| match r {
            Rule::Counter(c) => c.settled(),
            _ => true,
        })
    }

    /// Emits interval events that are due by the monotonic `now`, stamped `wall`; with
    /// `force`, all pending counts (at shutdown).
    pub fn on_tick(&mut self, wall: SystemTime, now: Instant, force: bool, out: &mut Output) {
        for rule in &mut self.rules {
            match rule {
                Rule::Counter(r) => {
                    r.on_tick(wall, now, &self.latest, &self.gateway_id, force, out);
                }
                Rule::Telemetry(r) => r.on_tick(now, force, &self.latest, &self.gateway_id, out),
                Rule::State(_) | Rule::Measurement(_) => {}
            }
        }
    }

    /// Runs until `input` closes (the sources stopped), then flushes pending counts. Gives up
    /// retrying a failing commit only when `abort` fires.
    pub async fn run(
        mut self,
        mut input: mpsc::Receiver<SampleBatch>,
        store: Store,
        abort: CancellationToken,
    ) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let mut out = Output::default();
            tokio::select! {
                batch = input.recv() => match batch {
                    Some(batch) => {
                        self.on_batch(&batch, &mut out);
                        // Batches already waiting join this commit; nothing waits for more.
                        let (mut drained, mut bytes) = (1, batch_bytes(&batch));
                        while drained < DRAIN_BATCHES
                            && out.events.len() < DRAIN_EVENTS
                            && bytes < DRAIN_BYTES
                        {
                            let Ok(batch) = input.try_recv() else {
                                break;
                            };
                            bytes = bytes.saturating_add(batch_bytes(&batch));
                            self.on_batch(&batch, &mut out);
                            drained += 1;
                            // Other tasks on this worker run between long drains.
                            tokio::task::consume_budget().await;
                        }
                    }
                    None => break,
                },
                _ = tick.tick() => self.on_tick(SystemTime::now(), Instant::now(), false, &mut out),
            }
            if !out.is_empty() && !commit(&store, out, &abort).await {
                return;
            }
        }
        let mut out = Output::default();
        self.on_tick(SystemTime::now(), Instant::now(), true, &mut out);
        if !out.is_empty() {
            commit(&store, out, &abort).await;
        }
        tracing::debug!("Normalizer stopped: its input closed.");
    }
}

/// The bytes of a batch's samples, as a telemetry event sizes them.
fn batch_bytes(batch: &SampleBatch) -> usize {
    batch
        .samples
        .iter()
        .fold(0usize, |n, s| n.saturating_add(telemetry::estimate(s)))
}

/// Commits `out`, retrying with backoff until it is accepted or `abort` fires. `false` when it
/// gave up.
async fn commit(store: &Store, out: Output, abort: &CancellationToken) -> bool {
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
    loop {
        match store.append_all(&out.events, &out.state).await {
            Ok(()) => return true,
            Err(error) => {
                let delay = backoff.next_delay();
                tracing::error!(
                    error = %crate::error_chain(&error),
                    events = out.events.len(),
                    retry_in = ?delay,
                    "Cannot write events to the buffer (disk full or read-only?). Sources are held back until it works."
                );
                tokio::select! {
                    () = abort.cancelled() => {
                        tracing::error!(events = out.events.len(), "Shutdown deadline passed: these events were never accepted.");
                        return false;
                    }
                    () = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
