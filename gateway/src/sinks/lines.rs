//! `file` and `stdout` sinks: one CloudEvent JSON per line. A file batch counts as delivered
//! once written, flushed and synced to disk.
//!
//! - A failed write is truncated back to where the batch began: no half line stays, and the
//!   retry writes the whole batch again.
//! - Before each batch the open file is checked against its path: if the file was moved or
//!   deleted (log rotation, a folder removed), it is opened again at the path, so events are
//!   never "delivered" into a file nobody can see. A folder that is gone fails the batch (it
//!   stays buffered and is retried) with an error naming the path.

use std::{
    fs::{File, OpenOptions},
    io::Write,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use super::{Deliver, Outcome, SinkError};
use crate::store::StoredEvent;

#[derive(Debug)]
enum Target {
    File(Arc<Mutex<OpenFile>>),
    Stdout,
}

/// The file a sink appends to, and the path it must still be at.
#[derive(Debug)]
struct OpenFile {
    path: PathBuf,
    file: Option<File>,
}

fn open_append(path: &Path) -> std::io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

/// Whether `file` is still the file at `path`.
#[cfg(unix)]
fn still_at(file: &File, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (file.metadata(), std::fs::metadata(path)) {
        (Ok(open), Ok(named)) => open.dev() == named.dev() && open.ino() == named.ino(),
        _ => false,
    }
}

#[cfg(not(unix))]
fn still_at(_file: &File, path: &Path) -> bool {
    path.exists()
}

impl OpenFile {
    /// The file to append to: the one open if it is still at the path, else the path opened
    /// again.
    fn current(&mut self) -> std::io::Result<&mut File> {
        let file = match self.file.take() {
            Some(file) if still_at(&file, &self.path) => file,
            stale => {
                if stale.is_some() {
                    tracing::warn!(path = %self.path.display(), "The sink's file was moved or deleted; opening it again at its path.");
                }
                open_append(&self.path).map_err(|e| {
                    std::io::Error::new(
                        e.kind(),
                        format!("cannot open `{}`: {e}", self.path.display()),
                    )
                })?
            }
        };
        Ok(self.file.insert(file))
    }
}

/// What appending needs of a file; a test double records and fails on purpose.
pub(crate) trait Append {
    /// Current length.
    fn len(&self) -> std::io::Result<u64>;
    /// Writes all of `bytes` (not yet durable).
    fn write_all(&mut self, bytes: &[u8]) -> std::io::Result<()>;
    /// Flushes and syncs what was written to the disk.
    fn sync(&mut self) -> std::io::Result<()>;
    /// Cuts the file back to `len`.
    fn truncate(&mut self, len: u64) -> std::io::Result<()>;
}

impl Append for File {
    fn len(&self) -> std::io::Result<u64> {
        Ok(self.metadata()?.len())
    }

    fn write_all(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        Write::write_all(self, bytes)
    }

    fn sync(&mut self) -> std::io::Result<()> {
        self.flush().and_then(|()| self.sync_data())
    }

    fn truncate(&mut self, len: u64) -> std::io::Result<()> {
        self.set_len(len)
    }
}

/// Appends `bytes` whole, durably, or not at all: `Ok` only after the sync; a failed write or
/// sync is cut back to where it began.
pub(crate) fn append_whole(file: &mut impl Append, bytes: &[u8]) -> std::io::Result<()> {
    let before = file.len()?;
    let written = file.write_all(bytes).and_then(|()| file.sync());
    if written.is_err() {
        // No half line may stay behind: the retry writes the whole batch again.
        if let Err(error) = file.truncate(before) {
            tracing::error!(%error, "Could not cut a failed write back; the file may end in a partial line.");
        }
    }
    written
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
        let file = open_append(path).map_err(|source| SinkError::File {
            sink: sink.to_owned(),
            path: path.display().to_string(),
            source,
        })?;
        Ok(LinesSink {
            target: Target::File(Arc::new(Mutex::new(OpenFile {
                path: path.to_owned(),
                file: Some(file),
            }))),
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
    fn target(&self) -> String {
        match &self.target {
            Target::File(open) => open
                .lock()
                .map_or_else(|_| "file".to_owned(), |f| f.path.display().to_string()),
            Target::Stdout => "stdout".to_owned(),
        }
    }

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
                    let mut open = file
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    append_whole(open.current()?, &bytes)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(from: i64, n: i64) -> Vec<StoredEvent> {
        (from..from + n)
            .map(|seq| StoredEvent {
                seq,
                id: format!("id-{seq}"),
                event_type: "production.count".into(),
                payload: format!("{{\"id\":\"id-{seq}\"}}"),
            })
            .collect()
    }

    fn whole_lines(path: &Path) -> Vec<String> {
        let text = std::fs::read_to_string(path).unwrap();
        assert!(
            text.is_empty() || text.ends_with('\n'),
            "no partial line: {text:?}"
        );
        text.lines().map(str::to_owned).collect()
    }

    #[tokio::test]
    async fn a_folder_that_disappears_fails_the_batch_until_it_is_back() {
        let dir = tempfile::tempdir().unwrap();
        let folder = dir.path().join("out");
        std::fs::create_dir(&folder).unwrap();
        let path = folder.join("events.jsonl");
        let mut sink = LinesSink::file("qms", &path).unwrap();
        assert_eq!(sink.deliver(&batch(1, 2)).await, Outcome::Delivered);
        std::fs::remove_dir_all(&folder).unwrap();
        // Before: written into the deleted file and reported delivered.
        let Outcome::Retry { reason, .. } = sink.deliver(&batch(3, 2)).await else {
            panic!("nothing can be delivered into a folder that is gone");
        };
        assert!(reason.contains("events.jsonl"), "{reason}");
        std::fs::create_dir(&folder).unwrap();
        assert_eq!(sink.deliver(&batch(3, 2)).await, Outcome::Delivered);
        assert_eq!(
            whole_lines(&path),
            vec![r#"{"id":"id-3"}"#, r#"{"id":"id-4"}"#]
        );
    }

    #[tokio::test]
    async fn a_rotated_file_is_opened_again_at_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        let mut sink = LinesSink::file("qms", &path).unwrap();
        assert_eq!(sink.deliver(&batch(1, 1)).await, Outcome::Delivered);
        let rotated = dir.path().join("events.jsonl.1");
        std::fs::rename(&path, &rotated).unwrap();
        assert_eq!(sink.deliver(&batch(2, 1)).await, Outcome::Delivered);
        assert_eq!(whole_lines(&rotated), vec![r#"{"id":"id-1"}"#]);
        assert_eq!(
            whole_lines(&path),
            vec![r#"{"id":"id-2"}"#],
            "the new batch is where the path says"
        );
    }

    /// A real file that fails a write after `room` more bytes, as a full disk does, or fails
    /// its sync; it records what was called.
    struct FillsUp {
        file: File,
        room: usize,
        sync_fails: bool,
        calls: Vec<&'static str>,
    }

    impl Append for FillsUp {
        fn len(&self) -> std::io::Result<u64> {
            Append::len(&self.file)
        }

        fn write_all(&mut self, bytes: &[u8]) -> std::io::Result<()> {
            self.calls.push("write");
            if bytes.len() > self.room {
                Write::write_all(&mut self.file, &bytes[..self.room])?;
                self.room = 0;
                return Err(std::io::Error::new(
                    std::io::ErrorKind::StorageFull,
                    "No space left on device",
                ));
            }
            self.room -= bytes.len();
            Write::write_all(&mut self.file, bytes)
        }

        fn sync(&mut self) -> std::io::Result<()> {
            self.calls.push("sync");
            if self.sync_fails {
                return Err(std::io::Error::other("EIO on fsync"));
            }
            self.file.sync()
        }

        fn truncate(&mut self, len: u64) -> std::io::Result<()> {
            self.calls.push("truncate");
            self.file.truncate(len)
        }
    }

    #[test]
    fn a_write_that_fails_halfway_is_cut_back_to_whole_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        let mut file = FillsUp {
            file: open_append(&path).unwrap(),
            room: 20,
            sync_fails: false,
            calls: vec![],
        };
        append_whole(&mut file, &lines(&batch(1, 1))).unwrap();
        assert_eq!(
            file.calls,
            ["write", "sync"],
            "delivered only after the sync"
        );
        let error = append_whole(&mut file, &lines(&batch(2, 3))).unwrap_err();
        assert_eq!(error.kind(), std::io::ErrorKind::StorageFull);
        assert_eq!(
            whole_lines(&path),
            vec![r#"{"id":"id-1"}"#],
            "the partial batch was cut back"
        );
        file.room = 1000;
        append_whole(&mut file, &lines(&batch(2, 3))).unwrap();
        assert_eq!(whole_lines(&path).len(), 4);
    }

    #[test]
    fn a_failed_sync_is_no_delivery_and_the_batch_is_cut_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        let mut file = FillsUp {
            file: open_append(&path).unwrap(),
            room: 1000,
            sync_fails: true,
            calls: vec![],
        };
        assert!(append_whole(&mut file, &lines(&batch(1, 2))).is_err());
        assert_eq!(file.calls, ["write", "sync", "truncate"]);
        assert_eq!(
            whole_lines(&path),
            Vec::<String>::new(),
            "written but not durable: cut back"
        );
    }
}
