//! Sinks: where events leave the gateway. Each sink runs as one task over its own cursor.
//!
//! A sink implements [`Deliver`]: given a batch, it answers [`Outcome::Delivered`] only on proof
//! (an HTTP 2xx, a flushed and synced file), [`Outcome::Retry`] when the fault is the
//! receiver's, the network's or the gateway's (the batch stays buffered and is sent again),
//! [`Outcome::TooLarge`] when the receiver refuses the request's size, or [`Outcome::Reject`]
//! when the receiver says the content itself is wrong.
//!
//! The runner ([`run_sink`]) owns the cursor, which moves only over events delivered or
//! dead-lettered. A batch is cut to `batch_size` events and `max_batch_bytes`; a TooLarge
//! halves it; a Reject of several events is split in halves until the refused event is alone,
//! so only that event goes to dead letters and the good ones are delivered (O(log n) extra
//! requests per poisoned event).
//!
//! Two guards keep a receiver-wide fault from emptying the buffer into dead letters: after
//! [`REFUSALS_BEFORE_HOLD`] events refused in a row with none delivered in between, the sink
//! holds the next refused event (retrying it with backoff, logged as an error) and dead-letters
//! at most one per `refusal_hold` until the receiver accepts something again (a proxy that
//! answers 400 to everything while the ERP restarts). A 413 for one event is retried unless the
//! event alone is larger than `max_batch_bytes`, which makes it the event's fault. The batch
//! size a 413 taught is kept for the sink's lifetime.

mod guard;
mod https;
mod lines;
mod mqtt;
pub mod samples;
pub mod template;

use std::{future::Future, path::Path, time::Duration};

use firmware_config::{SinkConfig, SinkKind};
use protocols::backoff::Backoff;
use tokio_util::sync::CancellationToken;

pub use https::{HttpsSink, Preview, preview};
pub use lines::LinesSink;
pub use mqtt::MqttSink;

use crate::store::{Reader, Store, StoredEvent};

/// What became of a delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The receiver has the batch.
    Delivered,
    /// Not delivered; try the same batch again (after `after`, if the receiver said).
    Retry {
        /// Why, for the log.
        reason: String,
        /// `Retry-After`, when given.
        after: Option<Duration>,
    },
    /// The content is refused for good (HTTP 400, 422): retrying the same events cannot help.
    Reject {
        /// The response, for the dead-letter record.
        reason: String,
    },
    /// The sink cannot express these events (its body template fails on one): nothing was
    /// sent. Handled as a [`Outcome::Reject`] (the event goes to dead letters alone), but it
    /// says nothing of the receiver's health.
    Unsendable {
        /// Why, for the dead-letter record.
        reason: String,
    },
    /// The request is too large for the receiver (HTTP 413): send fewer events at once.
    TooLarge {
        /// Why, for the log.
        reason: String,
    },
    /// The first `delivered` events of the batch are proven delivered (an MQTT PUBACK for each),
    /// the rest are not: the cursor moves over the prefix and the rest is retried.
    Partial {
        /// How many events, from the start of the batch (less than the batch).
        delivered: usize,
        /// Why the rest was not, for the log.
        reason: String,
    },
}

/// Delivers batches of stored events.
pub trait Deliver: Send {
    /// Delivers `batch` (in order). Must not return Delivered without proof.
    fn deliver(&mut self, batch: &[StoredEvent]) -> impl Future<Output = Outcome> + Send;

    /// Where requests go, for the audit trail: no secret (a URL without its query).
    fn target(&self) -> String {
        String::new()
    }

    /// The last delivery's answer, once: the receiver's status (`HTTP 202`) and an excerpt of
    /// what it said. `None` when there was no answer.
    fn take_answer(&mut self) -> Option<(String, String)> {
        None
    }
}

/// Why a sink could not be built.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// TLS setup failed.
    #[error("sink `{sink}`")]
    Tls {
        /// The sink.
        sink: String,
        /// The cause.
        #[source]
        source: crate::tls::TlsError,
    },
    /// The bearer token could not be read.
    #[error("sink `{sink}`: {why}")]
    Credential {
        /// The sink.
        sink: String,
        /// What to fix.
        why: String,
    },
    /// The body template could not be loaded.
    #[error("sink `{sink}`")]
    Template {
        /// The sink.
        sink: String,
        /// The cause.
        #[source]
        source: template::TemplateError,
    },
    /// The HTTP client could not be built.
    #[error("sink `{sink}`: HTTP client")]
    Client {
        /// The sink.
        sink: String,
        /// The cause.
        #[source]
        source: reqwest::Error,
    },
    /// The output file could not be opened.
    #[error("sink `{sink}`: cannot open `{path}`")]
    File {
        /// The sink.
        sink: String,
        /// The file.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// A built sink of any kind.
// One value per configured sink, built once and moved into its task: sizes do not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum AnySink {
    /// `https`
    Https(HttpsSink),
    /// `file` or `stdout`
    Lines(LinesSink),
    /// `mqtt`
    Mqtt(MqttSink),
}

impl AnySink {
    /// Builds the sink; relative paths are taken from `base`.
    ///
    /// # Errors
    /// TLS, credentials or the output file are not usable.
    pub fn build(config: &SinkConfig, gateway_id: &str, base: &Path) -> Result<Self, SinkError> {
        Ok(match &config.kind {
            SinkKind::Mqtt(mqtt) => {
                AnySink::Mqtt(MqttSink::new(&config.name, gateway_id, mqtt, base)?)
            }
            SinkKind::Https(https) => AnySink::Https(HttpsSink::new(&config.name, https, base)?),
            SinkKind::File { path } => {
                AnySink::Lines(LinesSink::file(&config.name, &base.join(path))?)
            }
            SinkKind::Stdout => AnySink::Lines(LinesSink::stdout()),
        })
    }
}

impl Deliver for AnySink {
    async fn deliver(&mut self, batch: &[StoredEvent]) -> Outcome {
        match self {
            AnySink::Https(s) => s.deliver(batch).await,
            AnySink::Lines(s) => s.deliver(batch).await,
            AnySink::Mqtt(s) => s.deliver(batch).await,
        }
    }

    fn target(&self) -> String {
        match self {
            AnySink::Https(s) => s.target(),
            AnySink::Lines(s) => s.target(),
            AnySink::Mqtt(s) => s.target(),
        }
    }

    fn take_answer(&mut self) -> Option<(String, String)> {
        match self {
            AnySink::Https(s) => s.take_answer(),
            AnySink::Lines(s) => s.take_answer(),
            AnySink::Mqtt(s) => s.take_answer(),
        }
    }
}

/// When a sink task stops.
#[derive(Debug, Clone)]
pub struct SinkStop {
    /// Fired when no more events will be appended: the sink stops once it has caught up.
    pub inputs_done: CancellationToken,
    /// Fired when the shutdown grace period ends: the sink stops at once; what it has not
    /// delivered stays buffered.
    pub abort: CancellationToken,
}

/// Events refused in a row, none delivered in between, before the sink suspects the receiver.
pub const REFUSALS_BEFORE_HOLD: u32 = 3;

/// Timing of a sink's retries.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// First delay.
    pub initial: Duration,
    /// Largest delay.
    pub max: Duration,
    /// While the receiver refuses everything: at most one dead letter per this long.
    pub refusal_hold: Duration,
}

impl RetryPolicy {
    /// `initial` .. `max`, and the default 5 minute refusal hold.
    pub fn new(initial: Duration, max: Duration) -> Self {
        RetryPolicy {
            initial,
            max,
            refusal_hold: Duration::from_secs(300),
        }
    }
}

/// Drains `sink`'s share of the store until stopped. Delivery is at least once, in order: the
/// same batch (same ids, same order) is retried until it is delivered or rejected.
pub async fn run_sink<D: Deliver>(
    name: String,
    config: SinkConfig,
    mut sink: D,
    store: Store,
    reader: Reader,
    retry: RetryPolicy,
    stop: SinkStop,
) {
    let mut appended = store.appended();
    let mut backoff = Backoff::new(retry.initial, retry.max);
    // Events refused in a row with none delivered in between (kept in the store, so a restart
    // does not reset it), and since when the sink holds.
    let mut refusals = match reader.refusals(&name).await {
        Ok(n) => n,
        Err(error) => {
            tracing::error!(sink = %name, error = %crate::error_chain(&error), "Cannot read the sink's refusal streak; the sink does not start.");
            return;
        }
    };
    // Since when the sink holds refused events (a receiver refusing everything).
    let mut refuse_hold: Option<tokio::time::Instant> = None;
    // The one event held for a 413, and since when.
    let mut size_hold: Option<(i64, tokio::time::Instant)> = None;
    // The most events per request a 413 taught; it doubles back after 10 deliveries in a row.
    let mut learned_cap = usize::MAX;
    let mut since_shrunk = 0u32;
    let mut breaker = guard::Breaker::new(config.breaker_failures, config.breaker_open);
    let mut pace = guard::Pace::new(config.rate_limit);
    // A breaker left open by the last run starts closed: this run has not failed yet.
    record_breaker(&store, &name, &breaker, "").await;
    let mut cursor = match reader.cursor(&name).await {
        Ok(c) => c,
        Err(error) => {
            tracing::error!(sink = %name, error = %crate::error_chain(&error), "Cannot read the sink's cursor; the sink does not start.");
            return;
        }
    };
    loop {
        if stop.abort.is_cancelled() {
            return;
        }
        // Read the store's high-water mark before fetching, so an append racing the fetch
        // still wakes us.
        appended.borrow_and_update();
        let fetched = match reader
            .fetch_bounded(
                &name,
                cursor,
                &config.routes,
                config.batch_size,
                config.max_batch_bytes,
            )
            .await
        {
            Ok(f) => f,
            Err(error) => {
                let delay = backoff.next_delay();
                tracing::error!(sink = %name, error = %crate::error_chain(&error), retry_in = ?delay, "Cannot read the buffer.");
                if sleep_or_abort(delay, &stop.abort).await {
                    return;
                }
                continue;
            }
        };
        if fetched.events.is_empty() {
            if fetched.upto > cursor && store.pass(&name, fetched.upto).await.is_ok() {
                cursor = fetched.upto;
            }
            if stop.inputs_done.is_cancelled() {
                tracing::debug!(sink = %name, "Sink caught up after the inputs stopped.");
                return;
            }
            tokio::select! {
                _ = appended.changed() => {}
                () = stop.inputs_done.cancelled() => {}
                () = stop.abort.cancelled() => return,
            }
            continue;
        }
        let mut rest: &[StoredEvent] = &fetched.events;
        let mut limit = rest.len().min(learned_cap);
        while !rest.is_empty() {
            let n = take(rest, limit, config.max_batch_bytes);
            let chunk = &rest[..n];
            // The last piece of the batch moves the cursor over unrouted events after it too.
            let upto = if n == rest.len() {
                fetched.upto
            } else {
                chunk[n - 1].seq
            };
            // An open breaker sends nothing until it half-opens; the rate limit spaces requests.
            let (wait, change) = breaker.before(tokio::time::Instant::now());
            if let Some(wait) = wait {
                // Shutting down too: the receiver may come back within the grace.
                if sleep_or_abort(wait, &stop.abort).await {
                    return;
                }
                continue;
            }
            if let Some(state) = change {
                tracing::info!(sink = %name, breaker = state.name(), "Circuit breaker half-open: the next request is a probe.");
                record_breaker(&store, &name, &breaker, "").await;
            }
            let wait = pace.wait(tokio::time::Instant::now());
            if !wait.is_zero() && sleep_or_abort(wait, &stop.abort).await {
                return;
            }
            pace.sent(tokio::time::Instant::now());
            let at_ms = crate::store::now_ms();
            let started = tokio::time::Instant::now();
            let outcome = tokio::select! {
                outcome = sink.deliver(chunk) => outcome,
                () = stop.abort.cancelled() => return,
            };
            // The audit trail: a delivery (whole or a prefix) is recorded with its ack,
            // anything else now.
            let mut attempt = Some(attempt(
                &name,
                &mut sink,
                chunk,
                &outcome,
                at_ms,
                started.elapsed(),
            ));
            let proves = match &outcome {
                Outcome::Delivered => true,
                Outcome::Partial { delivered, .. } => *delivered > 0,
                _ => false,
            };
            if !proves
                && let Some(attempt) = attempt.take()
                && let Err(error) = store.audit(attempt).await
            {
                tracing::warn!(sink = %name, error = %crate::error_chain(&error), "Could not record the delivery attempt in the audit trail.");
            }
            // Any answer but a failure closes the breaker; nothing sent says nothing.
            let answered = !matches!(
                outcome,
                Outcome::Retry { .. }
                    | Outcome::Partial { delivered: 0, .. }
                    | Outcome::Unsendable { .. }
            );
            if answered && let Some(state) = breaker.answered() {
                tracing::info!(sink = %name, breaker = state.name(), "Circuit breaker closed: the receiver answers again.");
                record_breaker(&store, &name, &breaker, "").await;
            }
            // A prefix proven delivered: the cursor moves over it, the rest is retried.
            let outcome = match outcome {
                Outcome::Partial { delivered, reason } if delivered > 0 && delivered < n => {
                    let upto = chunk[delivered - 1].seq;
                    if let Err(error) = ack_recorded(&store, &name, upto, attempt.take()).await {
                        tracing::error!(sink = %name, error = %crate::error_chain(&error), "Delivered, but the cursor did not move; the events will repeat.");
                    } else {
                        cursor = upto;
                        rest = &rest[delivered..];
                        refusals = 0;
                        refuse_hold = None;
                    }
                    // Acknowledgements prove the receiver healthy: the wait starts short.
                    backoff.reset();
                    let delay = backoff.next_delay();
                    tracing::warn!(sink = %name, %reason, delivered, events = n, retry_in = ?delay, "Part of a batch was delivered; the rest stays buffered.");
                    if sleep_or_abort(delay, &stop.abort).await {
                        return;
                    }
                    continue;
                }
                Outcome::Partial { delivered, reason } if delivered >= n => {
                    tracing::debug!(sink = %name, %reason, "A partial delivery covered the whole batch.");
                    Outcome::Delivered
                }
                Outcome::Partial { reason, .. } => Outcome::Retry {
                    reason,
                    after: None,
                },
                Outcome::Unsendable { reason } => Outcome::Reject { reason },
                other => other,
            };
            // The refusal for good of the one event in `chunk`, if it comes to that.
            let refused = match outcome {
                Outcome::Delivered => {
                    backoff.reset();
                    tracing::debug!(sink = %name, events = n, upto, "Delivered.");
                    if let Err(error) = ack_recorded(&store, &name, upto, attempt.take()).await {
                        // Delivered but not recorded: these events will be sent again, same ids.
                        tracing::error!(sink = %name, error = %crate::error_chain(&error), "Delivered, but the cursor did not move; the events will repeat.");
                        if sleep_or_abort(backoff.next_delay(), &stop.abort).await {
                            return;
                        }
                        break;
                    }
                    // The ack reset the stored streak too.
                    refusals = 0;
                    refuse_hold = None;
                    size_hold = None;
                    if learned_cap < usize::MAX {
                        since_shrunk += 1;
                        if since_shrunk >= 10 {
                            since_shrunk = 0;
                            learned_cap = learned_cap.saturating_mul(2);
                            if learned_cap >= config.batch_size {
                                learned_cap = usize::MAX;
                            }
                        }
                    }
                    cursor = upto;
                    rest = &rest[n..];
                    None
                }
                Outcome::Retry { reason, after } => {
                    // Honour Retry-After, within reason: never a busy loop, never more than 5 minutes.
                    let delay = after.map_or_else(
                        || backoff.next_delay(),
                        |a| a.clamp(Duration::from_millis(100), Duration::from_secs(300)),
                    );
                    let now = tokio::time::Instant::now();
                    if breaker.failed(now).is_some() {
                        tracing::error!(sink = %name, breaker = "open", failures = breaker.failures(), %reason, open_for = ?config.breaker_open, "Circuit breaker open: the receiver failed too often in a row; sending nothing for a while, then one probe. Events stay buffered.");
                        record_breaker(&store, &name, &breaker, &reason).await;
                    }
                    tracing::warn!(sink = %name, %reason, events = n, retry_in = ?delay.max(breaker.remaining(now)), "Delivery failed; events stay buffered.");
                    if sleep_or_abort(delay.max(breaker.remaining(now)), &stop.abort).await {
                        return;
                    }
                    None
                }
                Outcome::TooLarge { reason } if n > 1 => {
                    limit = n / 2;
                    learned_cap = limit;
                    since_shrunk = 0;
                    tracing::warn!(sink = %name, %reason, events = n, now = limit, "The receiver refused the request size; sending fewer events at once (lower max_batch_bytes or batch_size to avoid this).");
                    None
                }
                Outcome::TooLarge { reason } => {
                    // One event, refused for its size. Larger than the sink's own cap: the
                    // event's fault, dead-lettered. Otherwise the receiver's limit is at fault:
                    // held (retried, logged) for `refusal_hold`, then dead-lettered, so one event
                    // cannot stall the sink for good.
                    let bytes = chunk[0].payload.len();
                    let oversized = bytes as u64 > config.max_batch_bytes;
                    let since = match size_hold {
                        Some((seq, since)) if seq == chunk[0].seq => since,
                        _ => {
                            let now = tokio::time::Instant::now();
                            size_hold = Some((chunk[0].seq, now));
                            now
                        }
                    };
                    if !oversized && since.elapsed() < retry.refusal_hold {
                        let delay = backoff.next_delay();
                        tracing::error!(sink = %name, %reason, bytes, id = %chunk[0].id, retry_in = ?delay, "The receiver refuses even one event for its size; raise the receiver's request body limit. Events stay buffered.");
                        if sleep_or_abort(delay, &stop.abort).await {
                            return;
                        }
                        continue;
                    }
                    let reason = if oversized {
                        format!(
                            "{reason} (the event is {bytes} bytes, more than max_batch_bytes = {})",
                            config.max_batch_bytes
                        )
                    } else {
                        format!(
                            "{reason} (refused for its size of {bytes} bytes for {:?})",
                            retry.refusal_hold
                        )
                    };
                    Some(reason)
                }
                Outcome::Reject { reason } if n > 1 => {
                    limit = n / 2;
                    tracing::warn!(sink = %name, %reason, events = n, "The receiver refused a batch; splitting it to find the refused event.");
                    None
                }
                Outcome::Reject { reason } => {
                    if refusals >= REFUSALS_BEFORE_HOLD {
                        let since = *refuse_hold.get_or_insert_with(tokio::time::Instant::now);
                        if since.elapsed() < retry.refusal_hold {
                            let delay = backoff.next_delay();
                            tracing::error!(sink = %name, %reason, refused_in_a_row = refusals, retry_in = ?delay, "The receiver refuses every event and accepts none: holding them (not dead-lettering) until it accepts one. Check its URL, a proxy in front of it, and its logs.");
                            if sleep_or_abort(delay, &stop.abort).await {
                                return;
                            }
                            continue;
                        }
                    }
                    Some(reason)
                }
                // Turned into Delivered, Retry or Reject above.
                Outcome::Partial { .. } | Outcome::Unsendable { .. } => None,
            };
            if let Some(reason) = refused {
                match dead_letter(
                    &store,
                    &name,
                    chunk,
                    &reason,
                    upto,
                    &mut backoff,
                    &stop.abort,
                )
                .await
                {
                    Recorded::Yes => {}
                    Recorded::No => break,
                    Recorded::Aborted => return,
                }
                if refusals >= REFUSALS_BEFORE_HOLD {
                    // Held long enough: this one went, the next waits again.
                    refuse_hold = Some(tokio::time::Instant::now());
                }
                size_hold = None;
                refusals = refusals.saturating_add(1);
                cursor = upto;
                rest = &rest[1..];
                limit = rest.len().min(learned_cap);
            }
        }
    }
}

/// Moves the cursor to `upto`, recording `attempt` in the same transaction; if that fails (a
/// full disk refuses the audit row), the cursor moves without it: a delivery must never be
/// sent again for want of its record.
async fn ack_recorded(
    store: &Store,
    sink: &str,
    upto: i64,
    attempt: Option<crate::store::Attempt>,
) -> Result<(), crate::store::StoreError> {
    let Some(attempt) = attempt else {
        return store.ack(sink, upto).await;
    };
    match store.ack_attempt(sink, upto, attempt).await {
        Ok(()) => Ok(()),
        Err(error) => {
            tracing::warn!(sink, error = %crate::error_chain(&error), "Could not record the delivery in the audit trail; moving the cursor without it.");
            store.ack(sink, upto).await
        }
    }
}

/// Most characters of an answer or error kept in the audit trail.
const AUDIT_EXCERPT: usize = 500;

/// The audit record of one request of `chunk` (not empty) that ended in `outcome`.
fn attempt<D: Deliver>(
    name: &str,
    sink: &mut D,
    chunk: &[StoredEvent],
    outcome: &Outcome,
    at_ms: i64,
    took: Duration,
) -> crate::store::Attempt {
    let (label, reason, confirmed) = match outcome {
        Outcome::Delivered => ("delivered", "", chunk.len()),
        Outcome::Partial { delivered, .. } if *delivered >= chunk.len() => {
            ("delivered", "", chunk.len())
        }
        Outcome::Partial { delivered, reason } if *delivered > 0 => {
            ("partial", reason.as_str(), (*delivered).min(chunk.len()))
        }
        Outcome::Partial { reason, .. } | Outcome::Retry { reason, .. } => {
            ("retry", reason.as_str(), chunk.len())
        }
        Outcome::Reject { reason } => ("rejected", reason.as_str(), chunk.len()),
        Outcome::Unsendable { reason } => ("unsendable", reason.as_str(), chunk.len()),
        Outcome::TooLarge { reason } => ("too_large", reason.as_str(), chunk.len()),
    };
    let (status, said) = sink.take_answer().unwrap_or_default();
    let response = if reason.is_empty() {
        said
    } else {
        reason.to_owned()
    };
    let first = chunk.first();
    let last = chunk.get(confirmed.max(1) - 1).or(first);
    crate::store::Attempt {
        sink: name.to_owned(),
        at_ms,
        duration_ms: i64::try_from(took.as_millis()).unwrap_or(i64::MAX),
        first_seq: first.map_or(0, |e| e.seq),
        last_seq: last.map_or(0, |e| e.seq),
        first_id: first.map_or_else(String::new, |e| e.id.clone()),
        last_id: last.map_or_else(String::new, |e| e.id.clone()),
        events: confirmed,
        target: sink.target(),
        outcome: label,
        status,
        response: response
            .chars()
            .filter(|c| !c.is_control())
            .take(AUDIT_EXCERPT)
            .collect(),
    }
}

/// Stores `breaker`'s state for `causeway buffer stats`; a failure to is logged (the state
/// is also in the log).
async fn record_breaker(store: &Store, sink: &str, breaker: &guard::Breaker, reason: &str) {
    if let Err(error) = store
        .health(sink, breaker.state().name(), breaker.failures(), reason)
        .await
    {
        tracing::warn!(sink, error = %crate::error_chain(&error), "Could not record the circuit breaker's state.");
    }
}

/// Whether a dead letter was recorded.
enum Recorded {
    Yes,
    /// Not recorded (logged, backed off): fetch again.
    No,
    /// The sink was aborted while backing off.
    Aborted,
}

/// Records `chunk` (one event) as refused for good by `sink`, moving its cursor to `upto`.
async fn dead_letter(
    store: &Store,
    sink: &str,
    chunk: &[StoredEvent],
    reason: &str,
    upto: i64,
    backoff: &mut Backoff,
    abort: &CancellationToken,
) -> Recorded {
    let id = chunk.first().map_or("", |e| e.id.as_str());
    tracing::error!(sink, %reason, id, "The receiver refused this event for good; moved to dead letters (see `causeway buffer list`).");
    match store.dead_letter(sink, chunk, reason, upto).await {
        Ok(()) => Recorded::Yes,
        Err(error) => {
            tracing::error!(sink, error = %crate::error_chain(&error), "Could not record the dead letter; will retry.");
            if sleep_or_abort(backoff.next_delay(), abort).await {
                Recorded::Aborted
            } else {
                Recorded::No
            }
        }
    }
}

/// How many of `events` go in the next request: at most `limit` (at least one), and no more
/// payload bytes than `max_bytes` (but always one event, however large).
fn take(events: &[StoredEvent], limit: usize, max_bytes: u64) -> usize {
    let mut bytes = 0u64;
    let mut n = 0;
    for e in events.iter().take(limit.max(1)) {
        bytes = bytes.saturating_add(e.payload.len() as u64 + 1);
        if n > 0 && bytes > max_bytes {
            break;
        }
        n += 1;
    }
    n.max(1).min(events.len())
}

/// Sleeps; `true` if aborted first.
async fn sleep_or_abort(delay: Duration, abort: &CancellationToken) -> bool {
    tokio::select! {
        () = tokio::time::sleep(delay) => false,
        () = abort.cancelled() => true,
    }
}

/// The body every sink sends: a JSON array of the stored CloudEvents, as stored.
pub fn batch_body(batch: &[StoredEvent]) -> String {
    let mut body =
        String::with_capacity(batch.iter().map(|e| e.payload.len() + 1).sum::<usize>() + 2);
    body.push('[');
    for (i, e) in batch.iter().enumerate() {
        if i > 0 {
            body.push(',');
        }
        body.push_str(&e.payload);
    }
    body.push(']');
    body
}

#[cfg(test)]
mod tests {
    use std::{
        sync::{Arc, Mutex},
        time::SystemTime,
    };

    use super::*;
    use crate::{
        event::CloudEvent,
        store::{StoreOptions, WriterThread},
    };

    /// A receiver in a test: refuses (422) any request holding an event whose `data.n` is
    /// poisoned, refuses (413) requests of more than `max_events`, and records what it accepted
    /// and every request's size.
    #[derive(Debug, Clone)]
    struct Scripted {
        poisoned: Vec<u64>,
        max_events: usize,
        requests: Arc<Mutex<Vec<usize>>>,
        accepted: Arc<Mutex<Vec<String>>>,
        /// The next delivery confirms only this many events (an MQTT connection cut after
        /// some PUBACKs).
        partial: Arc<Mutex<Option<usize>>>,
        /// The next this many deliveries fail (a receiver down).
        down: Arc<Mutex<u32>>,
        /// When each delivery began, and the breaker state the store held then.
        calls: Arc<Mutex<Vec<(tokio::time::Instant, String)>>>,
        /// The buffer file, to read the stored breaker state at each call.
        db: Arc<Mutex<Option<std::path::PathBuf>>>,
    }

    impl Scripted {
        fn new(poisoned: &[u64], max_events: usize) -> Self {
            Scripted {
                poisoned: poisoned.to_vec(),
                max_events,
                requests: Arc::default(),
                accepted: Arc::default(),
                partial: Arc::default(),
                down: Arc::default(),
                calls: Arc::default(),
                db: Arc::default(),
            }
        }
    }

    /// The breaker state stored for `erp` in the buffer at `db`.
    fn stored_breaker(db: &Path) -> String {
        let conn = rusqlite::Connection::open(db).unwrap();
        conn.query_row(
            "SELECT breaker FROM sink_health WHERE sink = 'erp'",
            [],
            |r| r.get(0),
        )
        .unwrap_or_else(|_| "none".into())
    }

    impl Deliver for Scripted {
        async fn deliver(&mut self, batch: &[StoredEvent]) -> Outcome {
            // When the request went, before anything else takes time.
            let at = tokio::time::Instant::now();
            self.requests.lock().unwrap().push(batch.len());
            let db = self.db.lock().unwrap().clone();
            let stored = db.map_or_else(String::new, |db| stored_breaker(&db));
            self.calls.lock().unwrap().push((at, stored));
            {
                let mut down = self.down.lock().unwrap();
                if *down > 0 {
                    *down -= 1;
                    return Outcome::Retry {
                        reason: "HTTP 503: down".into(),
                        after: None,
                    };
                }
            }
            if batch.len() > self.max_events {
                return Outcome::TooLarge {
                    reason: "HTTP 413".into(),
                };
            }
            let n = |e: &StoredEvent| {
                serde_json::from_str::<CloudEvent>(&e.payload).unwrap().data["n"]
                    .as_u64()
                    .unwrap()
            };
            if batch.iter().any(|e| self.poisoned.contains(&n(e))) {
                return Outcome::Reject {
                    reason: "HTTP 422: bad".into(),
                };
            }
            if let Some(k) = self.partial.lock().unwrap().take() {
                self.accepted
                    .lock()
                    .unwrap()
                    .extend(batch[..k].iter().map(|e| e.id.clone()));
                return Outcome::Partial {
                    delivered: k,
                    reason: "connection lost".into(),
                };
            }
            self.accepted
                .lock()
                .unwrap()
                .extend(batch.iter().map(|e| e.id.clone()));
            Outcome::Delivered
        }
    }

    /// Events whose `data.n` runs over `range`.
    fn numbered(range: std::ops::Range<u64>) -> Vec<CloudEvent> {
        range
            .map(|n| {
                CloudEvent::new(
                    "gw",
                    "m",
                    "production.count",
                    "m",
                    SystemTime::now(),
                    serde_json::json!({ "n": n }),
                )
            })
            .collect()
    }

    fn sink_config(batch_size: usize, max_batch_bytes: u64) -> SinkConfig {
        SinkConfig {
            name: "erp".into(),
            routes: vec!["*".into()],
            batch_size,
            max_batch_bytes,
            // Out of the way of tests that are not about it.
            breaker_failures: 1000,
            breaker_open: Duration::from_secs(1),
            rate_limit: None,
            kind: SinkKind::Stdout,
        }
    }

    struct Drained {
        ids: Vec<String>,
        store: Store,
        reader: Reader,
        writer: WriterThread,
        _dir: tempfile::TempDir,
    }

    /// Appends `events` events (data.n = 0..), runs the sink until it has caught up.
    async fn drain(sink: Scripted, config: SinkConfig, events: u64) -> Drained {
        drain_for(sink, config, events, Duration::from_secs(3600), None).await
    }

    /// As [`drain`], with a refusal hold, and aborting the sink after `abort_after` if given.
    async fn drain_for(
        sink: Scripted,
        config: SinkConfig,
        events: u64,
        refusal_hold: Duration,
        abort_after: Option<Duration>,
    ) -> Drained {
        let dir = tempfile::tempdir().unwrap();
        let (store, writer) = Store::open(StoreOptions {
            gateway_id: "gw".into(),
            max_bytes: 64 << 20,
            ..StoreOptions::new(dir.path().join("b.db"), &["erp"])
        })
        .unwrap();
        *sink.db.lock().unwrap() = Some(dir.path().join("b.db"));
        let made: Vec<CloudEvent> = numbered(0..events);
        store.append(made.clone(), vec![]).await.unwrap();
        let stop = SinkStop {
            inputs_done: CancellationToken::new(),
            abort: CancellationToken::new(),
        };
        stop.inputs_done.cancel();
        let retry = RetryPolicy {
            initial: Duration::from_millis(1),
            max: Duration::from_millis(5),
            refusal_hold,
        };
        if let Some(after) = abort_after {
            let abort = stop.abort.clone();
            tokio::spawn(async move {
                tokio::time::sleep(after).await;
                abort.cancel();
            });
        }
        let reader = store.reader().unwrap();
        tokio::time::timeout(
            Duration::from_secs(30),
            run_sink(
                "erp".into(),
                config,
                sink,
                store.clone(),
                reader.clone(),
                retry,
                stop,
            ),
        )
        .await
        .expect("the sink drains");
        Drained {
            ids: made.into_iter().map(|e| e.id).collect(),
            store,
            reader,
            writer,
            _dir: dir,
        }
    }

    #[tokio::test]
    async fn a_refused_batch_is_split_so_only_the_poisoned_events_are_dead_lettered() {
        // Before: the whole batch of 100 went to dead letters.
        let sink = Scripted::new(&[37, 90], usize::MAX);
        let d = drain(sink.clone(), sink_config(100, 1 << 20), 100).await;
        let accepted = sink.accepted.lock().unwrap().clone();
        let expected: Vec<String> = d
            .ids
            .iter()
            .enumerate()
            .filter(|(n, _)| *n != 37 && *n != 90)
            .map(|(_, id)| id.clone())
            .collect();
        assert_eq!(accepted, expected, "the good ones, in order, once each");
        let dead = d.reader.dead_letters("erp").await.unwrap();
        assert_eq!(
            dead.iter().map(|(_, id, _)| id.clone()).collect::<Vec<_>>(),
            vec![d.ids[37].clone(), d.ids[90].clone()]
        );
        assert_eq!(d.reader.cursor("erp").await.unwrap(), 100);
        let requests = sink.requests.lock().unwrap().len();
        assert!(
            requests <= 2 * (2 * 7 + 2),
            "a binary search, not one request per event: {requests}"
        );
        drop((d.store, d.reader));
        d.writer.join();
    }

    #[tokio::test]
    async fn a_partial_delivery_moves_the_cursor_over_the_prefix_and_sends_only_the_rest() {
        let sink = Scripted::new(&[], usize::MAX);
        *sink.partial.lock().unwrap() = Some(30);
        let d = drain(sink.clone(), sink_config(100, 1 << 20), 100).await;
        assert_eq!(
            *sink.accepted.lock().unwrap(),
            d.ids,
            "every event once, in order: the confirmed 30 are not sent again"
        );
        assert_eq!(*sink.requests.lock().unwrap(), vec![100, 70]);
        assert!(d.reader.dead_letters("erp").await.unwrap().is_empty());
        assert_eq!(d.reader.cursor("erp").await.unwrap(), 100);
        drop((d.store, d.reader));
        d.writer.join();
    }

    #[tokio::test]
    async fn a_partial_delivery_of_nothing_is_a_retry_and_of_everything_a_delivery() {
        for (confirmed, requests) in [(0, vec![100, 100]), (100, vec![100])] {
            let sink = Scripted::new(&[], usize::MAX);
            *sink.partial.lock().unwrap() = Some(confirmed);
            let d = drain(sink.clone(), sink_config(100, 1 << 20), 100).await;
            assert_eq!(*sink.accepted.lock().unwrap(), d.ids, "{confirmed}");
            assert_eq!(*sink.requests.lock().unwrap(), requests, "{confirmed}");
            assert_eq!(d.reader.cursor("erp").await.unwrap(), 100);
            drop((d.store, d.reader));
            d.writer.join();
        }
    }

    #[tokio::test]
    async fn a_413_halves_the_batch_and_nothing_is_dead_lettered() {
        // Before: a 413 dead-lettered the whole batch.
        let sink = Scripted::new(&[], 30);
        let d = drain(sink.clone(), sink_config(100, 1 << 20), 100).await;
        assert_eq!(*sink.accepted.lock().unwrap(), d.ids);
        assert!(d.reader.dead_letters("erp").await.unwrap().is_empty());
        let requests = sink.requests.lock().unwrap().clone();
        assert_eq!(&requests[..3], &[100, 50, 25], "halved until it fits");
        assert!(requests[3..].iter().all(|n| *n <= 25), "{requests:?}");
        drop((d.store, d.reader));
        d.writer.join();
    }

    #[tokio::test]
    async fn a_batch_never_holds_more_than_max_batch_bytes() {
        let sink = Scripted::new(&[], usize::MAX);
        // Each stored event is about 230 bytes: 4 KiB holds 17 of them.
        let d = drain(sink.clone(), sink_config(100, 4096), 100).await;
        assert_eq!(*sink.accepted.lock().unwrap(), d.ids);
        let requests = sink.requests.lock().unwrap().clone();
        assert!(
            requests.iter().all(|n| (1..=20).contains(n)),
            "{requests:?}"
        );
        assert!(requests.len() >= 5, "{requests:?}");
        drop((d.store, d.reader));
        d.writer.join();
    }

    /// Waits (bounded) until `check` holds.
    async fn until(what: &str, mut check: impl AsyncFnMut() -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while !check().await {
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for: {what}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn the_breaker_opens_after_failures_in_a_row_sends_nothing_while_open_and_closes_on_a_probe()
     {
        // Before: a receiver that was down got a request every retry_max (5 ms here).
        let sink = Scripted::new(&[], usize::MAX);
        *sink.down.lock().unwrap() = 5;
        let mut config = sink_config(10, 1 << 20);
        config.breaker_failures = 3;
        config.breaker_open = Duration::from_millis(300);
        // Running (not shutting down): an open breaker waits, then probes.
        let d = drain_running(sink.clone(), config, 10).await;
        let calls = sink.calls.lock().unwrap().clone();
        // 3 failures open it; 2 failed probes; the third probe delivers the 10 events.
        assert_eq!(calls.len(), 6, "{calls:?}");
        for (i, pair) in calls.windows(2).enumerate() {
            let gap = pair[1].0 - pair[0].0;
            if i >= 2 {
                assert!(
                    gap >= Duration::from_millis(300),
                    "call {} came {gap:?} after the one before, while the breaker was open",
                    i + 2
                );
            }
        }
        let states: Vec<&str> = calls.iter().map(|(_, s)| s.as_str()).collect();
        assert_eq!(
            states,
            [
                "closed",
                "closed",
                "closed",
                "half-open",
                "half-open",
                "half-open"
            ],
            "each probe is made half-open, and the state is stored first"
        );
        assert_eq!(stored_breaker(&d._dir.path().join("b.db")), "closed");
        assert_eq!(*sink.accepted.lock().unwrap(), d.ids, "nothing lost");
        drop((d.store, d.reader));
        d.writer.join();
    }

    /// Appends `events` events and runs the sink, not shutting down, until it has delivered
    /// them all (or 30 s pass).
    async fn drain_running(sink: Scripted, config: SinkConfig, events: u64) -> Drained {
        let d = drain_for(
            sink.clone(),
            config.clone(),
            0,
            Duration::from_secs(3600),
            None,
        )
        .await;
        sink.calls.lock().unwrap().clear();
        sink.requests.lock().unwrap().clear();
        let made = numbered(0..events);
        d.store.append(made.clone(), vec![]).await.unwrap();
        let stop = SinkStop {
            inputs_done: CancellationToken::new(),
            abort: CancellationToken::new(),
        };
        let retry = RetryPolicy {
            initial: Duration::from_millis(1),
            max: Duration::from_millis(5),
            refusal_hold: Duration::from_secs(3600),
        };
        let task = tokio::spawn(run_sink(
            "erp".into(),
            config,
            sink.clone(),
            d.store.clone(),
            d.reader.clone(),
            retry,
            stop.clone(),
        ));
        until("every event delivered", async || {
            sink.accepted.lock().unwrap().len() >= made.len()
        })
        .await;
        stop.abort.cancel();
        task.await.unwrap();
        Drained {
            ids: made.into_iter().map(|e| e.id).collect(),
            ..d
        }
    }

    #[tokio::test]
    async fn an_audit_trail_that_cannot_be_written_never_holds_deliveries_back() {
        // Before: the audit row went in the ack's transaction and nothing else, so a failing
        // row (a full disk) kept the cursor still and the batch was sent again for ever.
        let d = drain_for(
            Scripted::new(&[], usize::MAX),
            sink_config(4, 1 << 20),
            0,
            Duration::from_secs(3600),
            None,
        )
        .await;
        {
            let conn = rusqlite::Connection::open(d._dir.path().join("b.db")).unwrap();
            conn.execute_batch("DROP TABLE audit; DROP TABLE event_ids;")
                .unwrap();
        }
        let made = numbered(0..10);
        d.store.append(made.clone(), vec![]).await.unwrap();
        let sink = Scripted::new(&[], usize::MAX);
        let stop = SinkStop {
            inputs_done: CancellationToken::new(),
            abort: CancellationToken::new(),
        };
        stop.inputs_done.cancel();
        let retry = RetryPolicy::new(Duration::from_millis(1), Duration::from_millis(5));
        tokio::time::timeout(
            Duration::from_secs(30),
            run_sink(
                "erp".into(),
                sink_config(4, 1 << 20),
                sink.clone(),
                d.store.clone(),
                d.reader.clone(),
                retry,
                stop,
            ),
        )
        .await
        .expect("the sink drains");
        let ids: Vec<String> = made.iter().map(|e| e.id.clone()).collect();
        assert_eq!(*sink.accepted.lock().unwrap(), ids, "each once, in order");
        assert_eq!(d.reader.count().await.unwrap(), 0, "delivered rows deleted");
        drop((d.store, d.reader));
        d.writer.join();
    }

    #[tokio::test]
    async fn the_rate_limit_spaces_requests() {
        let sink = Scripted::new(&[], usize::MAX);
        let mut config = sink_config(1, 1 << 20);
        config.rate_limit = Some(20.0);
        let d = drain(sink.clone(), config, 8).await;
        let calls = sink.calls.lock().unwrap().clone();
        assert_eq!(calls.len(), 8);
        // 50 ms from when the runner sent each; the sink's own stamps lag that a little (more
        // on a loaded machine), so each gap is judged loosely and the whole run exactly.
        for pair in calls.windows(2) {
            let gap = pair[1].0 - pair[0].0;
            assert!(gap >= Duration::from_millis(40), "{gap:?} between requests");
        }
        let whole = calls[7].0 - calls[0].0;
        assert!(
            whole >= Duration::from_millis(340),
            "{whole:?} for 8 requests"
        );
        assert_eq!(*sink.accepted.lock().unwrap(), d.ids);
        drop((d.store, d.reader));
        d.writer.join();
    }

    #[tokio::test]
    async fn a_receiver_that_refuses_everything_does_not_empty_the_buffer_into_dead_letters() {
        // A proxy answering 400 to every request: before, the whole backlog became dead
        // letters, and past max_dead_bytes, lost.
        let sink = Scripted::new(&(0..100).collect::<Vec<_>>(), usize::MAX);
        let d = drain_for(
            sink.clone(),
            sink_config(100, 1 << 20),
            0,
            Duration::ZERO,
            None,
        )
        .await;
        d.store.append(numbered(0..100), vec![]).await.unwrap();
        let run = |hold: Duration, sink: Scripted| {
            let stop = SinkStop {
                inputs_done: CancellationToken::new(),
                abort: CancellationToken::new(),
            };
            let retry = RetryPolicy {
                initial: Duration::from_millis(1),
                max: Duration::from_millis(5),
                refusal_hold: hold,
            };
            let task = tokio::spawn(run_sink(
                "erp".into(),
                sink_config(100, 1 << 20),
                sink,
                d.store.clone(),
                d.reader.clone(),
                retry,
                stop.clone(),
            ));
            (stop, task)
        };
        let dead = || async { d.reader.dead_letters("erp").await.unwrap().len() };
        let (stop, task) = run(Duration::from_secs(3600), sink.clone());
        until("three dead letters", async || dead().await >= 3).await;
        // Then it holds: many more refused requests, not one more dead letter.
        let requests = sink.requests.lock().unwrap().len();
        until("ten more refused requests", async || {
            sink.requests.lock().unwrap().len() >= requests + 10
        })
        .await;
        assert_eq!(dead().await, 3);
        assert_eq!(
            d.reader.cursor("erp").await.unwrap(),
            3,
            "the rest stay buffered"
        );
        stop.abort.cancel();
        task.await.unwrap();
        // A restart does not forget the streak: the next refused event is held too.
        let (stop, task) = run(Duration::from_secs(3600), sink.clone());
        let requests = sink.requests.lock().unwrap().len();
        until("ten more refused requests", async || {
            sink.requests.lock().unwrap().len() >= requests + 10
        })
        .await;
        assert_eq!(dead().await, 3);
        stop.abort.cancel();
        task.await.unwrap();
        // With a short hold, one goes per hold, no faster.
        let (stop, task) = run(Duration::from_millis(300), sink.clone());
        let started = tokio::time::Instant::now();
        until("a fourth dead letter", async || dead().await >= 4).await;
        assert!(
            started.elapsed() >= Duration::from_millis(300),
            "{:?}",
            started.elapsed()
        );
        stop.abort.cancel();
        task.await.unwrap();
        drop((d.store, d.reader));
        d.writer.join();
    }

    #[tokio::test]
    async fn a_413_for_an_event_larger_than_max_batch_bytes_dead_letters_it_alone() {
        let sink = Scripted::new(&[], 0); // refuses every request for its size
        let d = drain_for(
            sink.clone(),
            sink_config(100, 4096),
            1,
            Duration::from_secs(3600),
            Some(Duration::from_secs(2)),
        )
        .await;
        // The event is ~230 bytes, within max_batch_bytes: the receiver's limit is at fault,
        // it stays buffered.
        assert!(d.reader.dead_letters("erp").await.unwrap().is_empty());
        assert_eq!(d.reader.cursor("erp").await.unwrap(), 0);
        drop((d.store, d.reader));
        d.writer.join();

        let d = drain_for(
            sink.clone(),
            sink_config(100, 4096),
            0,
            Duration::from_secs(3600),
            None,
        )
        .await;
        let big = CloudEvent::new(
            "gw",
            "m",
            "production.count",
            "m",
            SystemTime::now(),
            serde_json::json!({ "n": 1000, "pad": "x".repeat(8000) }),
        );
        d.store.append(vec![big.clone()], vec![]).await.unwrap();
        let stop = SinkStop {
            inputs_done: CancellationToken::new(),
            abort: CancellationToken::new(),
        };
        stop.inputs_done.cancel();
        tokio::time::timeout(
            Duration::from_secs(10),
            run_sink(
                "erp".into(),
                sink_config(100, 4096),
                sink,
                d.store.clone(),
                d.reader.clone(),
                RetryPolicy::new(Duration::from_millis(1), Duration::from_millis(5)),
                stop,
            ),
        )
        .await
        .expect("drains");
        let dead = d.reader.dead_letters("erp").await.unwrap();
        assert_eq!(dead.len(), 1);
        assert_eq!(dead[0].1, big.id);
        assert!(
            dead[0].2.contains("more than max_batch_bytes"),
            "{}",
            dead[0].2
        );
        drop((d.store, d.reader));
        d.writer.join();
    }

    #[tokio::test]
    async fn a_413_held_event_within_the_cap_goes_to_dead_letters_after_the_hold_and_the_rest_flow()
    {
        // The receiver refuses requests of more than 0 events for their size... only while the
        // first event is in them: a scripted sink that 413s any batch holding n = 0.
        #[derive(Clone)]
        struct FirstTooLarge(Scripted);
        impl Deliver for FirstTooLarge {
            async fn deliver(&mut self, batch: &[StoredEvent]) -> Outcome {
                if batch.iter().any(|e| e.payload.contains("\"n\":0}")) {
                    self.0.requests.lock().unwrap().push(batch.len());
                    return Outcome::TooLarge {
                        reason: "HTTP 413".into(),
                    };
                }
                self.0.deliver(batch).await
            }
        }
        let inner = Scripted::new(&[], usize::MAX);
        let d = drain_for(
            inner.clone(),
            sink_config(100, 1 << 20),
            0,
            Duration::ZERO,
            None,
        )
        .await;
        let made: Vec<CloudEvent> = numbered(0..5);
        d.store.append(made.clone(), vec![]).await.unwrap();
        let stop = SinkStop {
            inputs_done: CancellationToken::new(),
            abort: CancellationToken::new(),
        };
        stop.inputs_done.cancel();
        let hold = Duration::from_millis(300);
        let started = tokio::time::Instant::now();
        tokio::time::timeout(
            Duration::from_secs(20),
            run_sink(
                "erp".into(),
                sink_config(100, 1 << 20),
                FirstTooLarge(inner.clone()),
                d.store.clone(),
                d.reader.clone(),
                RetryPolicy {
                    initial: Duration::from_millis(1),
                    max: Duration::from_millis(5),
                    refusal_hold: hold,
                },
                stop,
            ),
        )
        .await
        .expect("drains");
        assert!(
            started.elapsed() >= hold,
            "held first: {:?}",
            started.elapsed()
        );
        let dead = d.reader.dead_letters("erp").await.unwrap();
        assert_eq!(dead.len(), 1);
        assert_eq!(dead[0].1, made[0].id);
        assert!(dead[0].2.contains("refused for its size"), "{}", dead[0].2);
        assert_eq!(
            *inner.accepted.lock().unwrap(),
            made[1..].iter().map(|e| e.id.clone()).collect::<Vec<_>>(),
            "the others are delivered"
        );
        drop((d.store, d.reader));
        d.writer.join();
    }

    #[tokio::test]
    async fn the_batch_size_a_413_taught_grows_back_after_ten_deliveries() {
        let sink = Scripted::new(&[], 25);
        let d = drain_for(
            sink.clone(),
            sink_config(100, 1 << 20),
            400,
            Duration::from_secs(3600),
            None,
        )
        .await;
        assert_eq!(*sink.accepted.lock().unwrap(), d.ids);
        let requests = sink.requests.lock().unwrap().clone();
        // 100 -> 50 -> 25 (taught); after ten deliveries of 25, 50 is tried again (and halved).
        assert_eq!(&requests[..3], &[100, 50, 25], "{requests:?}");
        let again = 3 + requests[3..]
            .iter()
            .position(|n| *n == 50)
            .expect("tried again");
        assert!(again >= 12, "{requests:?}");
        assert!(requests[2..again].iter().all(|n| *n == 25), "{requests:?}");
        drop((d.store, d.reader));
        d.writer.join();
    }

    #[test]
    fn take_counts_whole_events_within_the_byte_cap_and_always_at_least_one() {
        let e = |n: usize| StoredEvent {
            seq: 1,
            id: "a".into(),
            event_type: "t".into(),
            payload: "x".repeat(n),
        };
        let events = vec![e(99), e(99), e(99)];
        assert_eq!(take(&events, 10, 200), 2);
        assert_eq!(take(&events, 1, 10_000), 1);
        assert_eq!(take(&[e(5000)], 10, 200), 1, "one large event goes alone");
        assert_eq!(take(&events, 0, 10_000), 1);
    }
}
