//! `file` and `stdout` sinks: one CloudEvent JSON per line. A file batch counts as delivered
//! once written, flushed and synced to disk.

use std::{
    fs::{File, OpenOptions},
    io::Write,
    path::Path,
    sync::{Arc, Mutex},
};

use super::{Deliver, Outcome, SinkError};
use crate::store::StoredEvent;

#[derive(Debug)]
enum Target {
    File(Arc<Mutex<File>>),
    Stdout,
}

/// JSON lines to a file or standard output.
#[derive(Debug)]
pub struct LinesSink {
    target: Target,
}

impl LinesSink {
    /// Appends to `path`, creating it.
    ///
    /// # Errors
    /// The file cannot be opened for appending.
    pub fn file(sink: &str, path: &Path) -> Result<Self, SinkError> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|source| SinkError::File {
                sink: sink.to_owned(),
                path: path.display().to_string(),
                source,
            })?;
        Ok(LinesSink {
            target: Target::File(Arc::new(Mutex::new(file))),
        })
    }

    /// Writes to standard output.
    pub fn stdout() -> Self {
        LinesSink {
            target: Target::Stdout,
        }
    }
}

fn lines(batch: &[StoredEvent]) -> Vec<u8> {
    let mut out = Vec::with_capacity(batch.iter().map(|e| e.payload.len() + 1).sum());
    for e in batch {
        out.extend_from_slice(e.payload.as_bytes());
        out.push(b'\n');
    }
    out
}

impl Deliver for LinesSink {
    async fn deliver(&mut self, batch: &[StoredEvent]) -> Outcome {
        let bytes = lines(batch);
        let result = match &self.target {
            Target::Stdout => {
                let mut out = std::io::stdout().lock();
                out.write_all(&bytes).and_then(|()| out.flush())
            }
            Target::File(file) => {
                let file = Arc::clone(file);
                tokio::task::spawn_blocking(move || {
                    let mut f = file
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    let before = f.metadata()?.len();
                    let written = f
                        .write_all(&bytes)
                        .and_then(|()| f.flush())
                        .and_then(|()| f.sync_data());
                    if written.is_err() {
                        // No half line may stay behind: the retry writes the whole batch again.
                        let _ = f.set_len(before);
                    }
                    written
                })
                .await
                .unwrap_or_else(|e| Err(std::io::Error::other(e)))
            }
        };
        match result {
            Ok(()) => Outcome::Delivered,
            // A full disk or a closed pipe may clear; keep the events buffered.
            Err(error) => Outcome::Retry {
                reason: format!("write failed: {error}"),
                after: None,
            },
        }
    }
}
