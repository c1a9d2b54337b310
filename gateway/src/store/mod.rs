//! The store-and-forward buffer: an SQLite outbox in WAL mode.
//!
//! # Invariants
//! - One writer thread owns the only write connection. Writes queue on a bounded channel and are
//!   committed in groups: the writer takes every write waiting (up to `max_batch`) into one
//!   transaction, each in its own savepoint, so one failing write fails alone.
//! - An event is *accepted* when the transaction holding it commits (`synchronous = FULL`, read
//!   back at open). [`Store::append`] returns only then.
//! - `events.seq` is `AUTOINCREMENT`: a sequence number is never reused, even after every row
//!   was deleted, so a sink's cursor (`cursors.acked_seq`) can never skip a new event.
//! - A sink sees events with `seq > acked_seq` matching its routes, in `seq` order; its cursor
//!   moves only after delivery is proven (or the batch is dead-lettered, with its response).
//! - Rows every configured sink has passed are deleted. Past `max_bytes` the oldest rows are
//!   dropped (`drop_oldest`), each drop counted and logged.
//! - Rule state (counter baselines, current machine state) is committed in the same transaction
//!   as the events computed from it, so a crash neither loses nor repeats parts.
//!
//! # Format
//! `PRAGMA user_version` tracks the schema (see `MIGRATIONS`); a newer file is refused.

mod reader;
mod writer;

use std::{
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    thread::JoinHandle,
};

use rusqlite::Connection;
use tokio::sync::{mpsc, oneshot, watch};

pub use reader::{Fetched, Reader, StoredEvent};
use writer::WriteOp;

use crate::event::CloudEvent;

/// Schema migrations, applied in order; `user_version` is how many have run.
const MIGRATIONS: &[&str] = &[include_str!("migrations/001_outbox.sql")];

/// Why the buffer failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite refused an operation.
    #[error("buffer database error")]
    Sqlite(#[from] rusqlite::Error),
    /// Opening the file failed.
    #[error("cannot open buffer `{path}` (does its folder exist, writable by this user?)")]
    Open {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: rusqlite::Error,
    },
    /// WAL mode or FULL sync could not be enabled: durability would be a lie.
    #[error("buffer `{path}`: PRAGMA {pragma} is `{actual}`, needed `{wanted}`")]
    Pragma {
        /// The file.
        path: PathBuf,
        /// Which pragma.
        pragma: &'static str,
        /// What it read back.
        actual: String,
        /// What was asked.
        wanted: &'static str,
    },
    /// The file was written by a newer Causeway.
    #[error(
        "buffer `{path}` has schema version {found}, newer than this build's {known}; upgrade causeway or move the file aside"
    )]
    TooNew {
        /// The file.
        path: PathBuf,
        /// Its `user_version`.
        found: i64,
        /// Ours.
        known: i64,
    },
    /// The writer thread could not be started.
    #[error("cannot start the buffer writer thread")]
    Thread(#[source] std::io::Error),
    /// The writer thread is gone (shutdown, or it panicked).
    #[error("the buffer writer has stopped")]
    WriterGone,
    /// A group commit failed; every write in it failed with it.
    #[error("buffer commit failed: {0}")]
    Batch(Arc<StoreError>),
    /// An event did not serialize.
    #[error("event did not serialize")]
    Json(#[from] serde_json::Error),
}

/// Sizing of the buffer.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// Live event bytes allowed before the oldest are dropped.
    pub max_bytes: u64,
    /// Most writes per transaction.
    pub max_batch: usize,
    /// Every configured sink: their cursors decide what may be deleted.
    pub sinks: Vec<String>,
}

/// Counters of what the store did, for logs and the demo summary.
#[derive(Debug, Default)]
pub struct StoreStats {
    /// Events committed.
    pub appended: AtomicU64,
    /// Events dropped by `drop_oldest`.
    pub dropped: AtomicU64,
    /// Events moved to dead letters.
    pub dead_lettered: AtomicU64,
}

/// A handle on the buffer. Clones share the one writer; the writer thread ends when the last
/// handle is dropped (see [`WriterThread::join`]).
#[derive(Debug, Clone)]
pub struct Store {
    ops: mpsc::Sender<WriteOp>,
    path: PathBuf,
    appended: watch::Receiver<i64>,
    stats: Arc<StoreStats>,
}

/// The writer thread; join it after every [`Store`] is dropped to be sure the last commit is on
/// disk.
#[derive(Debug)]
pub struct WriterThread(JoinHandle<()>);

impl WriterThread {
    /// Waits for the writer to finish its queue and close the database.
    pub fn join(self) {
        if self.0.join().is_err() {
            tracing::error!(
                "The buffer writer thread panicked; unacknowledged rows stay in the file."
            );
        }
    }
}

/// Opens a connection with the pragmas durability depends on, read back.
fn connect(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open(path).map_err(|source| StoreError::Open {
        path: path.to_owned(),
        source,
    })?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    // SQLite ignores pragmas it does not know: read back what durability depends on.
    let mode: String = conn.pragma_query_value(None, "journal_mode", |row| row.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::Pragma {
            path: path.to_owned(),
            pragma: "journal_mode",
            actual: mode,
            wanted: "wal",
        });
    }
    let sync: i64 = conn.pragma_query_value(None, "synchronous", |row| row.get(0))?;
    if sync != 2 {
        return Err(StoreError::Pragma {
            path: path.to_owned(),
            pragma: "synchronous",
            actual: sync.to_string(),
            wanted: "FULL (2)",
        });
    }
    Ok(conn)
}

fn migrate(conn: &mut Connection, path: &Path) -> Result<(), StoreError> {
    let version: i64 = conn.pragma_query_value(None, "user_version", |row| row.get(0))?;
    let known = MIGRATIONS.len() as i64;
    if version > known {
        return Err(StoreError::TooNew {
            path: path.to_owned(),
            found: version,
            known,
        });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", i as i64 + 1)?;
        tx.commit()?;
    }
    Ok(())
}

impl Store {
    /// Opens (creating if needed) the buffer at `path` and starts its writer thread.
    ///
    /// # Errors
    /// The file cannot be opened, is from a newer version, or refuses WAL/FULL sync.
    pub fn open(path: &Path, options: StoreOptions) -> Result<(Store, WriterThread), StoreError> {
        let mut conn = connect(path)?;
        migrate(&mut conn, path)?;
        for sink in &options.sinks {
            conn.execute(
                "INSERT OR IGNORE INTO cursors (sink, acked_seq) VALUES (?1, 0)",
                [sink],
            )?;
        }
        let last: i64 =
            conn.query_row("SELECT COALESCE(MAX(seq), 0) FROM events", [], |r| r.get(0))?;
        let (ops, rx) = mpsc::channel(options.max_batch.max(16));
        let (appended_tx, appended) = watch::channel(last);
        let stats = Arc::new(StoreStats::default());
        let writer = writer::Writer::new(conn, options, appended_tx, Arc::clone(&stats));
        let handle = std::thread::Builder::new()
            .name("buffer-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(StoreError::Thread)?;
        Ok((
            Store {
                ops,
                path: path.to_owned(),
                appended,
                stats,
            },
            WriterThread(handle),
        ))
    }

    /// A new read connection (one per sink task).
    ///
    /// # Errors
    /// The file cannot be opened.
    pub fn reader(&self) -> Result<Reader, StoreError> {
        Reader::new(connect(&self.path)?)
    }

    /// Counters of what the store did.
    pub fn stats(&self) -> &StoreStats {
        &self.stats
    }

    /// The counters, shared: they outlive the store handle (read them after shutdown).
    pub fn shared_stats(&self) -> Arc<StoreStats> {
        Arc::clone(&self.stats)
    }

    /// Watches the highest committed sequence number.
    pub fn appended(&self) -> watch::Receiver<i64> {
        self.appended.clone()
    }

    async fn submit(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<(), StoreError>>) -> WriteOp,
    ) -> Result<(), StoreError> {
        let (done, result) = oneshot::channel();
        self.ops
            .send(make(done))
            .await
            .map_err(|_| StoreError::WriterGone)?;
        result.await.map_err(|_| StoreError::WriterGone)?
    }

    /// Commits `events` and the rule `state` they were computed from, in one transaction.
    ///
    /// # Errors
    /// Nothing was committed.
    ///
    /// # Cancel safety
    /// Not cancel safe: if cancelled after sending, the write may still commit.
    pub async fn append(
        &self,
        events: Vec<CloudEvent>,
        state: Vec<(String, serde_json::Value)>,
    ) -> Result<(), StoreError> {
        let rows = events
            .iter()
            .map(|e| {
                Ok((
                    e.id.clone(),
                    e.event_type.clone(),
                    serde_json::to_string(e)?,
                ))
            })
            .collect::<Result<Vec<_>, serde_json::Error>>()?;
        let state = state.into_iter().map(|(k, v)| (k, v.to_string())).collect();
        self.submit(|done| WriteOp::Append { rows, state, done })
            .await
    }

    /// Moves `sink`'s cursor to `upto`: everything up to it was delivered.
    ///
    /// # Errors
    /// The cursor did not move; the events will be delivered again.
    pub async fn ack(&self, sink: &str, upto: i64) -> Result<(), StoreError> {
        self.submit(|done| WriteOp::Ack {
            sink: sink.to_owned(),
            upto,
            done,
        })
        .await
    }

    /// Records `events` as permanently rejected by `sink` (with `reason`), then moves the cursor
    /// to `upto`, in one transaction.
    ///
    /// # Errors
    /// Nothing was recorded and the cursor did not move.
    pub async fn dead_letter(
        &self,
        sink: &str,
        events: &[StoredEvent],
        reason: &str,
        upto: i64,
    ) -> Result<(), StoreError> {
        let seqs = events.iter().map(|e| e.seq).collect();
        self.submit(|done| WriteOp::DeadLetter {
            sink: sink.to_owned(),
            seqs,
            reason: reason.to_owned(),
            upto,
            done,
        })
        .await
    }

    /// Every rule's saved state.
    ///
    /// # Errors
    /// The read failed.
    pub fn rule_state(&self) -> Result<Vec<(String, serde_json::Value)>, StoreError> {
        let conn = connect(&self.path)?;
        let mut stmt = conn.prepare("SELECT rule, state FROM rule_state")?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
        let mut out = Vec::new();
        for row in rows {
            let (rule, state) = row?;
            out.push((rule, serde_json::from_str(&state)?));
        }
        Ok(out)
    }
}

/// Records that `n` events were committed.
fn count(counter: &AtomicU64, n: usize) {
    counter.fetch_add(n as u64, Ordering::Relaxed);
}

#[cfg(test)]
mod tests;
