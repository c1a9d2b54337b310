//! Sinks: where events leave the gateway. Each sink runs as one task over its own cursor.
//!
//! A sink implements [`Deliver`]: given a batch, it answers [`Outcome::Delivered`] only on proof
//! (an HTTP 2xx, a flushed and synced file), [`Outcome::Retry`] when trying again may work
//! (connect errors, 408, 429, 5xx: the batch stays buffered), or [`Outcome::Reject`] when it never
//! will (other 4xx: the batch goes to dead letters, with the response). The runner
//! ([`run_sink`]) owns the cursor: it moves only after Delivered or a recorded Reject.

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
    /// Refused for good; retrying cannot help.
    Reject {
        /// The response, for the dead-letter record.
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
            .fetch(cursor, &config.routes, config.batch_size)
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
        loop {
            let outcome = tokio::select! {
                outcome = sink.deliver(&fetched.events) => outcome,
                () = stop.abort.cancelled() => return,
            };
            match outcome {
                Outcome::Delivered => {
                    backoff.reset();
                    tracing::debug!(sink = %name, events = fetched.events.len(), upto = fetched.upto, "Delivered.");
                    if let Err(error) = store.ack(&name, fetched.upto).await {
                        // Delivered but not recorded: the batch will be sent again, same ids.
                        tracing::error!(sink = %name, error = %crate::error_chain(&error), "Delivered, but the cursor did not move; the batch will repeat.");
                    } else {
                        cursor = fetched.upto;
                    }
                    break;
                }
                Outcome::Retry { reason, after } => {
                    // Honour Retry-After, within reason: never a busy loop, never more than 5 minutes.
                    let delay = after.map_or_else(
                        || backoff.next_delay(),
                        |a| a.clamp(Duration::from_millis(100), Duration::from_secs(300)),
                    );
                    tracing::warn!(sink = %name, %reason, events = fetched.events.len(), retry_in = ?delay, "Delivery failed; events stay buffered.");
                    if sleep_or_abort(delay, &stop.abort).await {
                        return;
                    }
                }
                Outcome::Reject { reason } => {
                    tracing::error!(sink = %name, %reason, events = fetched.events.len(), "Receiver refused the batch for good; moved to dead letters.");
                    match store
                        .dead_letter(&name, &fetched.events, &reason, fetched.upto)
                        .await
                    {
                        Ok(()) => {
                            cursor = fetched.upto;
                        }
                        Err(error) => {
                            tracing::error!(sink = %name, error = %crate::error_chain(&error), "Could not record dead letters; will retry the batch.");
                        }
                    }
                    break;
                }
            }
        }
    }
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
