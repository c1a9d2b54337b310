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

mod https;
mod lines;

use std::{future::Future, path::Path, time::Duration};

use firmware_config::{SinkConfig, SinkKind};
use protocols::backoff::Backoff;
use tokio_util::sync::CancellationToken;

pub use https::HttpsSink;
pub use lines::LinesSink;

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
    /// The request is too large for the receiver (HTTP 413): send fewer events at once.
    TooLarge {
        /// Why, for the log.
        reason: String,
    },
}

/// Delivers batches of stored events.
pub trait Deliver: Send {
    /// Delivers `batch` (in order). Must not return Delivered without proof.
    fn deliver(&mut self, batch: &[StoredEvent]) -> impl Future<Output = Outcome> + Send;
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
#[derive(Debug)]
pub enum AnySink {
    /// `https`
    Https(HttpsSink),
    /// `file` or `stdout`
    Lines(LinesSink),
}

impl AnySink {
    /// Builds the sink; relative paths are taken from `base`.
    ///
    /// # Errors
    /// TLS, credentials or the output file are not usable.
    pub fn build(config: &SinkConfig, base: &Path) -> Result<Self, SinkError> {
        Ok(match &config.kind {
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

/// Timing of a sink's retries.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// First delay.
    pub initial: Duration,
    /// Largest delay.
    pub max: Duration,
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
            .fetch(&name, cursor, &config.routes, config.batch_size)
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
            if fetched.upto > cursor && store.ack(&name, fetched.upto).await.is_ok() {
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
        let mut limit = rest.len();
        while !rest.is_empty() {
            let n = take(rest, limit, config.max_batch_bytes);
            let chunk = &rest[..n];
            // The last piece of the batch moves the cursor over unrouted events after it too.
            let upto = if n == rest.len() {
                fetched.upto
            } else {
                chunk[n - 1].seq
            };
            let outcome = tokio::select! {
                outcome = sink.deliver(chunk) => outcome,
                () = stop.abort.cancelled() => return,
            };
            match outcome {
                Outcome::Delivered => {
                    backoff.reset();
                    tracing::debug!(sink = %name, events = n, upto, "Delivered.");
                    if let Err(error) = store.ack(&name, upto).await {
                        // Delivered but not recorded: these events will be sent again, same ids.
                        tracing::error!(sink = %name, error = %crate::error_chain(&error), "Delivered, but the cursor did not move; the events will repeat.");
                        break;
                    }
                    cursor = upto;
                    rest = &rest[n..];
                }
                Outcome::Retry { reason, after } => {
                    // Honour Retry-After, within reason: never a busy loop, never more than 5 minutes.
                    let delay = after.map_or_else(
                        || backoff.next_delay(),
                        |a| a.clamp(Duration::from_millis(100), Duration::from_secs(300)),
                    );
                    tracing::warn!(sink = %name, %reason, events = n, retry_in = ?delay, "Delivery failed; events stay buffered.");
                    if sleep_or_abort(delay, &stop.abort).await {
                        return;
                    }
                }
                Outcome::TooLarge { reason } if n > 1 => {
                    limit = n / 2;
                    tracing::warn!(sink = %name, %reason, events = n, now = limit, "The receiver refused the request size; sending fewer events at once (lower max_batch_bytes or batch_size to avoid this).");
                }
                Outcome::TooLarge { reason } => {
                    let delay = backoff.next_delay();
                    tracing::error!(sink = %name, %reason, bytes = chunk[0].payload.len(), id = %chunk[0].id, retry_in = ?delay, "The receiver refuses even one event for its size; raise the receiver's request body limit. Events stay buffered.");
                    if sleep_or_abort(delay, &stop.abort).await {
                        return;
                    }
                }
                Outcome::Reject { reason } if n > 1 => {
                    limit = n / 2;
                    tracing::warn!(sink = %name, %reason, events = n, "The receiver refused a batch; splitting it to find the refused event.");
                }
                Outcome::Reject { reason } => {
                    tracing::error!(sink = %name, %reason, id = %chunk[0].id, "The receiver refused this event for good; moved to dead letters (see `causeway buffer list`).");
                    if let Err(error) = store.dead_letter(&name, chunk, &reason, upto).await {
                        tracing::error!(sink = %name, error = %crate::error_chain(&error), "Could not record the dead letter; will retry.");
                        break;
                    }
                    cursor = upto;
                    rest = &rest[1..];
                    limit = rest.len();
                }
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
