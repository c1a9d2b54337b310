//! Wires a validated config into running tasks and takes them down in order.
//!
//! ```text
//! sources --SampleBatch--> normalizer --append--> store (writer thread) <--fetch/ack-- sinks
//! ```
//! Shutdown: cancel the sources; the normalizer sees its input close, flushes pending counts and
//! ends, which tells the sinks no more events will come; each sink stops once it has caught up.
//! If the grace period ends first, the sinks are aborted: what they had not delivered stays in the
//! buffer for the next start. The writer thread is joined last, after its final commit.

use std::{path::Path, sync::Arc, time::Duration};

use firmware_config::{GatewayConfig, SinkKind};
use tokio::sync::mpsc;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    normalize::{Normalizer, NormalizerStats},
    sinks::{AnySink, RetryPolicy, SinkError, SinkStop, run_sink},
    sources::Source,
    store::{Store, StoreError, StoreOptions, WriterThread},
};

/// Batches waiting between the sources and the normalizer. Past it a source waits (a poll
/// is late, an MQTT message unacknowledged), which is how a slow disk holds the plant side
/// back without losing anything; 64 batches (a batch is one poll or message, at most a
/// source's tags) ride out a commit's fsync at thousands of messages a second, and the
/// normalizer takes all that waits into one commit.
const SAMPLE_CHANNEL: usize = 64;

/// Why the pipeline could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The buffer.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A sink.
    #[error(transparent)]
    Sink(#[from] SinkError),
    /// A source's credentials.
    #[error("{0}")]
    Source(String),
}

/// How shutdown went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drained {
    /// Every sink caught up before the grace period ended.
    Fully,
    /// The grace period ended; undelivered events stay buffered.
    Deadline,
}

/// The running pipeline.
#[derive(Debug)]
pub struct Running {
    stop_sources: CancellationToken,
    abort: CancellationToken,
    tasks: TaskTracker,
    store: Store,
    writer: WriterThread,
    grace: Duration,
    normalizer: Arc<NormalizerStats>,
}

/// Starts every task for `config`; relative paths are taken from `base`.
///
/// # Errors
/// The buffer cannot be opened or a sink cannot be built (TLS, credentials, file).
pub fn start(config: &GatewayConfig, base: &Path) -> Result<Running, StartError> {
    let buffer_path = base.join(&config.buffer.path);
    let options = StoreOptions::from_config(config, buffer_path.clone());
    // Build every sink before anything runs: a bad credential fails the start, not a task.
    let sinks = config
        .sinks
        .iter()
        .map(|s| Ok((s.clone(), AnySink::build(s, &config.gateway_id, base)?)))
        .collect::<Result<Vec<_>, SinkError>>()?;
    for source in &config.sources {
        let paths = crate::sources::Paths {
            gateway_id: &config.gateway_id,
            base,
            buffer: &buffer_path,
        };
        crate::sources::preflight(source, paths).map_err(StartError::Source)?;
    }
    let (store, writer) = Store::open(options)?;
    let saved = store.rule_state()?;
    let readers = sinks
        .iter()
        .map(|_| store.reader())
        .collect::<Result<Vec<_>, _>>()?;

    let stop_sources = CancellationToken::new();
    let abort = CancellationToken::new();
    let inputs_done = CancellationToken::new();
    let tasks = TaskTracker::new();

    let (tx, rx) = mpsc::channel(SAMPLE_CHANNEL);
    for source in &config.sources {
        let paths = crate::sources::Paths {
            gateway_id: &config.gateway_id,
            base,
            buffer: &buffer_path,
        };
        tasks.spawn(Source::build(source, paths).run(tx.clone(), stop_sources.child_token()));
    }
    drop(tx);

    let normalizer = Normalizer::new(config, &saved);
    let normalizer_stats = normalizer.stats();
    let (n_store, n_abort, n_done) = (store.clone(), abort.clone(), inputs_done.clone());
    tasks.spawn(async move {
        normalizer.run(rx, n_store, n_abort).await;
        n_done.cancel();
    });

    for ((sink_config, sink), reader) in sinks.into_iter().zip(readers) {
        let retry = match &sink_config.kind {
            SinkKind::Https(h) => RetryPolicy::new(h.retry_initial, h.retry_max),
            SinkKind::Mqtt(m) => RetryPolicy::new(m.retry_initial, m.retry_max),
            SinkKind::File { .. } | SinkKind::Stdout => {
                RetryPolicy::new(Duration::from_millis(500), Duration::from_secs(30))
            }
        };
        let stop = SinkStop {
            inputs_done: inputs_done.clone(),
            abort: abort.clone(),
        };
        tasks.spawn(run_sink(
            sink_config.name.clone(),
            sink_config,
            sink,
            store.clone(),
            reader,
            retry,
            stop,
        ));
    }
    tasks.close();
    tracing::info!(
        gateway = %config.gateway_id,
        sources = config.sources.len(),
        rules = config.rules.len(),
        sinks = config.sinks.len(),
        buffer = %buffer_path.display(),
        "Pipeline started."
    );
    Ok(Running {
        stop_sources,
        abort,
        tasks,
        store,
        writer,
        grace: config.shutdown_grace,
        normalizer: normalizer_stats,
    })
}

impl Running {
    /// The buffer.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// What the normalizer saw (samples, Bad samples), shared: readable after shutdown.
    pub fn normalizer_stats(&self) -> Arc<NormalizerStats> {
        Arc::clone(&self.normalizer)
    }

    /// Stops the sources, lets the rest drain for up to the grace period, then stops everything.
    /// Returns once the last commit is on disk.
    pub async fn shutdown(self) -> Drained {
        self.stop_sources.cancel();
        let drained = if tokio::time::timeout(self.grace, self.tasks.wait())
            .await
            .is_ok()
        {
            Drained::Fully
        } else {
            tracing::warn!(grace = ?self.grace, "Drain deadline passed; undelivered events stay buffered for the next start.");
            self.abort.cancel();
            self.tasks.wait().await;
            Drained::Deadline
        };
        drop(self.store);
        let writer = self.writer;
        // Joining blocks until the writer's last commit; keep it off the async threads.
        let _ = tokio::task::spawn_blocking(move || writer.join()).await;
        drained
    }
}
