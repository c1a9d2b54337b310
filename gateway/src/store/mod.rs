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
//! - Rows every configured sink has passed are deleted. `max_bytes` bounds the payload bytes of
//!   the rows left; when a group would pass it, room is made inside that group's transaction,
//!   from rows committed by *earlier* groups only, whole events, exactly as many as needed:
//!   `telemetry.*` first, then by `when_full` (`drop_oldest`: production, then orders, quality
//!   and gateway events; `drop_newest`: the incoming events are refused; `block_sources`: the
//!   append fails with [`StoreError::Full`] and the normalizer holds the sources back).
//!   Undelivered rows older than `max_age` are dropped. Dead letters have their own bound,
//!   `max_dead_bytes`, evicted oldest first. Every drop is counted by type and reason, in
//!   memory ([`StoreStats`]) and in the `drops` table, and logged at most every 10 s.
//! - Rule state (counter baselines, current machine state) is committed in the same transaction
//!   as the events computed from it, so a crash neither loses nor repeats parts.
//!
//! - The file and its `-wal`/`-shm` are created 0600 (SQLite gives the WAL files the database
//!   file's mode); an existing buffer readable by others is warned about at start.
//! - At start `PRAGMA quick_check` runs; a corrupt or truncated file is moved aside to
//!   `<path>.corrupt-<unix ms>` (with its `-wal`/`-shm`), a fresh buffer is started, and a
//!   `gateway.buffer_reset` event, routed to every sink, tells the receivers data may be missing.
//!
//! # Format
//! `PRAGMA user_version` tracks the schema (see `MIGRATIONS`); a newer file is refused.

pub mod admin;
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
pub use writer::now_ms;

/// One delivery attempt, as the audit trail keeps it (`causeway audit`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    /// The sink.
    pub sink: String,
    /// When the request began, ms since the epoch.
    pub at_ms: i64,
    /// How long it took.
    pub duration_ms: i64,
    /// The request's first and last events: buffer sequence numbers and ids.
    pub first_seq: i64,
    /// See `first_seq`.
    pub last_seq: i64,
    /// See `first_seq`.
    pub first_id: String,
    /// See `first_seq`.
    pub last_id: String,
    /// How many events the request held (for `partial`: how many were confirmed).
    pub events: usize,
    /// Where it went: a URL without its query, a broker and topic, a file.
    pub target: String,
    /// `delivered`, `partial`, `retry`, `rejected` or `too_large`.
    pub outcome: &'static str,
    /// The receiver's status (`HTTP 202`), or empty when there was no answer.
    pub status: String,
    /// An excerpt of the answer or of the error (at most 500 characters).
    pub response: String,
}

use firmware_config::WhenFull;

use crate::event::CloudEvent;

/// Schema migrations, applied in order; `user_version` is how many have run.
const MIGRATIONS: &[&str] = &[
    include_str!("migrations/001_outbox.sql"),
    include_str!("migrations/002_limits.sql"),
    include_str!("migrations/003_refusals.sql"),
    include_str!("migrations/004_delivery.sql"),
];

/// Why the buffer failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite refused an operation.
    #[error("buffer database error")]
    Sqlite(#[from] rusqlite::Error),
    /// The file system holding the buffer is full.
    #[error(
        "the disk holding buffer `{path}` is full: free space there (or move [buffer] path); sources are held back until then, nothing accepted is lost"
    )]
    DiskFull {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: rusqlite::Error,
    },
    /// `when_full = "block_sources"` and the buffer holds `max_bytes` of undelivered events.
    #[error(
        "buffer `{path}` holds max_bytes = {max_bytes} bytes of undelivered events (when_full = \"block_sources\"): sources are held back until the sinks deliver"
    )]
    Full {
        /// The file.
        path: PathBuf,
        /// The limit.
        max_bytes: u64,
    },
    /// Creating or moving the file failed.
    #[error("cannot create `{path}` (does its folder exist, writable by this user?)")]
    Create {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
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

impl StoreError {
    /// Wraps an SQLite error, naming a full disk as such.
    pub(crate) fn from_sqlite(path: &Path, source: rusqlite::Error) -> Self {
        if source.sqlite_error_code() == Some(rusqlite::ErrorCode::DiskFull) {
            StoreError::DiskFull {
                path: path.to_owned(),
                source,
            }
        } else {
            StoreError::Sqlite(source)
        }
    }
}

/// Sizing of the buffer.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// The file (also named in errors).
    pub path: PathBuf,
    /// Names this gateway in the `gateway.buffer_reset` event.
    pub gateway_id: String,
    /// Payload bytes of stored events allowed.
    pub max_bytes: u64,
    /// Payload bytes of dead letters allowed.
    pub max_dead_bytes: u64,
    /// Undelivered events older than this are dropped.
    pub max_age: Option<std::time::Duration>,
    /// What happens past `max_bytes`.
    pub when_full: WhenFull,
    /// Most writes per transaction.
    pub max_batch: usize,
    /// Every configured sink: their cursors decide what may be deleted.
    pub sinks: Vec<String>,
    /// How long each delivery attempt is kept in the audit trail.
    pub audit_retention: std::time::Duration,
    /// Bound on the audit trail's size.
    pub max_audit_bytes: u64,
}

impl StoreOptions {
    /// A buffer at `path` for `sinks`, with the config file's defaults (512 MiB, 64 MiB of dead
    /// letters, no age limit, `drop_oldest`, 512 writes per commit) and gateway id `gateway`.
    pub fn new(path: PathBuf, sinks: &[&str]) -> Self {
        StoreOptions {
            path,
            gateway_id: "gateway".to_owned(),
            max_bytes: 512 << 20,
            max_dead_bytes: 64 << 20,
            max_age: None,
            when_full: WhenFull::DropOldest,
            max_batch: 512,
            sinks: sinks.iter().map(|s| (*s).to_owned()).collect(),
            audit_retention: std::time::Duration::from_secs(7 * 86_400),
            max_audit_bytes: 128 << 20,
        }
    }

    /// The options for `config`'s buffer at `path`.
    pub fn from_config(config: &firmware_config::GatewayConfig, path: PathBuf) -> Self {
        StoreOptions {
            path,
            gateway_id: config.gateway_id.clone(),
            max_bytes: config.buffer.max_bytes,
            max_dead_bytes: config.buffer.max_dead_bytes,
            max_age: config.buffer.max_age,
            when_full: config.buffer.when_full,
            max_batch: config.buffer.max_batch,
            sinks: config.sinks.iter().map(|s| s.name.clone()).collect(),
            audit_retention: config.buffer.audit_retention,
            max_audit_bytes: config.buffer.max_audit_bytes,
        }
    }
}

/// Counters of what the store did, for logs and the demo summary.
#[derive(Debug, Default)]
pub struct StoreStats {
    /// Events committed.
    pub appended: AtomicU64,
    /// Undelivered events dropped by a limit (`max_bytes`, `max_age`).
    pub dropped: AtomicU64,
    /// Events moved to dead letters.
    pub dead_lettered: AtomicU64,
    /// Dead letters evicted past `max_dead_bytes`.
    pub dead_evicted: AtomicU64,
    /// Drops by (event type, reason), since start.
    drops: std::sync::Mutex<std::collections::BTreeMap<(String, &'static str), u64>>,
}

impl StoreStats {
    fn add_drop(&self, event_type: &str, reason: &'static str, n: u64) {
        let mut drops = self
            .drops
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *drops.entry((event_type.to_owned(), reason)).or_default() += n;
    }

    /// Drops since start: (event type, reason, count).
    pub fn drops(&self) -> Vec<(String, &'static str, u64)> {
        self.drops
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .map(|((t, r), n)| (t.clone(), *r, *n))
            .collect()
    }
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
    configure(conn, path)
}

fn configure(conn: Connection, path: &Path) -> Result<Connection, StoreError> {
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    // Only on a new, empty file (on an existing one the pragma writes page 1, a commit every
    // reader would make): freed pages can then be given back after a backlog drains (see
    // `Writer::reclaim`).
    let pages: i64 = conn.pragma_query_value(None, "page_count", |row| row.get(0))?;
    if pages == 0 {
        conn.pragma_update(None, "auto_vacuum", "INCREMENTAL")?;
    }
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    // Bounds the WAL file left after a checkpoint.
    conn.pragma_update(None, "journal_size_limit", 64i64 << 20)?;
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

/// Creates the buffer file 0600 when it does not exist (SQLite gives `-wal` and `-shm` the
/// same mode). Returns the mode of an existing file that other users may read, to warn about.
fn secure_file(path: &Path) -> Result<Option<u32>, StoreError> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    match options.open(path) {
        Ok(_) => Ok(None),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            #[cfg(unix)]
            if let Ok(meta) = std::fs::metadata(path) {
                use std::os::unix::fs::PermissionsExt;
                let mode = meta.permissions().mode() & 0o777;
                if mode & 0o077 != 0 {
                    return Ok(Some(mode));
                }
            }
            Ok(None)
        }
        Err(source) => Err(StoreError::Create {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Why a buffer file was judged corrupt, or `None` when it is sound. Errors that say nothing
/// about the file's content (permissions, a lock) are returned as errors, never as corruption.
fn corruption(path: &Path) -> Result<Option<String>, StoreError> {
    let corrupt_code = |e: &rusqlite::Error| {
        matches!(
            e.sqlite_error_code(),
            Some(rusqlite::ErrorCode::NotADatabase | rusqlite::ErrorCode::DatabaseCorrupt)
        )
    };
    let conn = match Connection::open(path) {
        Ok(conn) => conn,
        Err(e) if corrupt_code(&e) => return Ok(Some(e.to_string())),
        Err(source) => {
            return Err(StoreError::Open {
                path: path.to_owned(),
                source,
            });
        }
    };
    let _ = conn.busy_timeout(std::time::Duration::from_secs(5));
    let verdict: Result<Vec<String>, rusqlite::Error> = (|| {
        let mut stmt = conn.prepare("PRAGMA quick_check")?;
        let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
        rows.collect()
    })();
    match verdict {
        Ok(lines) if lines.first().is_some_and(|l| l == "ok") => Ok(None),
        Ok(lines) => Ok(Some(
            lines.into_iter().take(3).collect::<Vec<_>>().join("; "),
        )),
        Err(e) if corrupt_code(&e) => Ok(Some(e.to_string())),
        Err(source) => Err(StoreError::Open {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Requeued events for a sink no longer configured would never be delivered nor deleted: they
/// go back to that sink's dead letters, where `causeway buffer` shows them.
fn orphans_back_to_dead_letters(conn: &mut Connection, sinks: &[String]) -> Result<(), StoreError> {
    let tx = conn.transaction()?;
    let orphans: Vec<(i64, String)> = {
        let mut stmt = tx.prepare("SELECT seq, sink FROM events WHERE sink IS NOT NULL")?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        rows.collect::<Result<Vec<_>, _>>()?
            .into_iter()
            .filter(|(_, sink)| !sinks.contains(sink))
            .collect()
    };
    for (seq, sink) in &orphans {
        tx.execute(
            "INSERT OR REPLACE INTO dead_letters (sink, seq, id, type, payload, reason, failed_at, size) \
             SELECT sink, seq, id, type, payload, 'requeued for a sink that is no longer configured', ?2, size \
             FROM events WHERE seq = ?1",
            rusqlite::params![seq, writer::now_ms()],
        )?;
        tx.execute("DELETE FROM events WHERE seq = ?1", [seq])?;
        tracing::warn!(sink = %sink, seq, "A requeued event's sink is no longer configured; it is back in dead letters.");
    }
    tx.commit()?;
    Ok(())
}

/// Moves a corrupt buffer (and its `-wal`, `-shm`) aside; returns where it went.
fn move_aside(path: &Path) -> Result<PathBuf, StoreError> {
    let stamp = writer::now_ms();
    let with = |suffix: &str| {
        let mut name = path.as_os_str().to_owned();
        name.push(suffix);
        PathBuf::from(name)
    };
    let aside = with(&format!(".corrupt-{stamp}"));
    std::fs::rename(path, &aside).map_err(|source| StoreError::Create {
        path: aside.clone(),
        source,
    })?;
    for suffix in ["-wal", "-shm"] {
        let from = with(suffix);
        if from.exists() {
            let mut to = aside.as_os_str().to_owned();
            to.push(suffix);
            std::fs::rename(&from, PathBuf::from(to)).map_err(|source| StoreError::Create {
                path: from.clone(),
                source,
            })?;
        }
    }
    Ok(aside)
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
    /// Opens (creating if needed) the buffer at `options.path` and starts its writer thread. A
    /// corrupt file is moved aside and a fresh one started (see the module docs).
    ///
    /// # Errors
    /// The file cannot be created or opened, is from a newer version, or refuses WAL/FULL sync.
    pub fn open(options: StoreOptions) -> Result<(Store, WriterThread), StoreError> {
        let path = options.path.clone();
        let path = path.as_path();
        let mut reset = None;
        if path.exists()
            && let Some(why) = corruption(path)?
        {
            let aside = move_aside(path)?;
            tracing::error!(
                buffer = %path.display(),
                moved_to = %aside.display(),
                reason = %why,
                "THE BUFFER FILE IS CORRUPT. It was moved aside and a fresh buffer started; events it held and did not deliver may be missing. Receivers get a gateway.buffer_reset event."
            );
            reset = Some((aside, why));
        }
        if let Some(mode) = secure_file(path)? {
            tracing::warn!(
                buffer = %path.display(),
                mode = format!("{mode:o}"),
                "The buffer holds the plant's production and quality data and is readable by other users; run: chmod 600 {0} {0}-wal {0}-shm",
                path.display()
            );
        }
        let mut conn = connect(path)?;
        migrate(&mut conn, path)?;
        if let Some((aside, why)) = reset {
            let event = CloudEvent::new(
                &options.gateway_id,
                "gateway",
                "gateway.buffer_reset",
                "buffer",
                std::time::SystemTime::now(),
                serde_json::json!({
                    "buffer": path.display().to_string(),
                    "moved_to": aside.display().to_string(),
                    "reason": why,
                }),
            );
            let payload = serde_json::to_string(&event)?;
            conn.execute(
                "INSERT INTO events (id, type, payload, created_at, size, lane) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                rusqlite::params![event.id, event.event_type, payload, writer::now_ms(), payload.len() as i64, writer::lane(&event.event_type)],
            )?;
        }
        for sink in &options.sinks {
            conn.execute(
                "INSERT OR IGNORE INTO cursors (sink, acked_seq) VALUES (?1, 0)",
                [sink],
            )?;
        }
        orphans_back_to_dead_letters(&mut conn, &options.sinks)?;
        let last: i64 =
            conn.query_row("SELECT COALESCE(MAX(seq), 0) FROM events", [], |r| r.get(0))?;
        // Writes waiting for the writer thread: one group commit's worth (`max_batch`, from
        // config; each writer awaits its own result, so no more wait than write at once).
        let (ops, rx) = mpsc::channel(options.max_batch.max(16));
        let (appended_tx, appended) = watch::channel(last);
        let stats = Arc::new(StoreStats::default());
        // The writer's page cache: random event ids land all over the id index; 8 MiB keeps
        // its hot pages in memory for a backlog of millions (SQLite's default is 2 MiB).
        conn.pragma_update(None, "cache_size", -8192i64)?;
        let writer = writer::Writer::new(conn, options, appended_tx, Arc::clone(&stats))?;
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
        self.append_all(&events, &state).await
    }

    /// As [`Store::append`], borrowing: a caller that retries keeps its events without copying
    /// them for each attempt.
    ///
    /// # Errors
    /// As [`Store::append`].
    pub async fn append_all(
        &self,
        events: &[CloudEvent],
        state: &[(String, serde_json::Value)],
    ) -> Result<(), StoreError> {
        // An event that cannot be written as JSON (a gateway bug) is left out, loudly: retrying
        // it would hold every source back for ever.
        let rows = events
            .iter()
            .filter_map(|e| match serde_json::to_string(e) {
                Ok(payload) => Some(writer::Row {
                    id: e.id.clone(),
                    event_type: e.event_type.clone(),
                    payload,
                    lane: writer::lane(&e.event_type),
                }),
                Err(error) => {
                    tracing::error!(id = %e.id, event_type = %e.event_type, %error, "An event could not be written as JSON and is left out (a gateway bug: please report it).");
                    None
                }
            })
            .collect::<Vec<_>>();
        let state = state
            .iter()
            .map(|(k, v)| (k.clone(), v.to_string()))
            .collect();
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
            delivered: true,
            audit: None,
            done,
        })
        .await
    }

    /// As [`Store::ack`], recording the `attempt` that delivered, in the same transaction.
    ///
    /// # Errors
    /// The cursor did not move and nothing was recorded.
    pub async fn ack_attempt(
        &self,
        sink: &str,
        upto: i64,
        attempt: Attempt,
    ) -> Result<(), StoreError> {
        self.submit(|done| WriteOp::Ack {
            sink: sink.to_owned(),
            upto,
            delivered: true,
            audit: Some(Box::new(attempt)),
            done,
        })
        .await
    }

    /// Records a delivery attempt in the audit trail.
    ///
    /// # Errors
    /// Nothing was recorded.
    pub async fn audit(&self, attempt: Attempt) -> Result<(), StoreError> {
        self.submit(|done| WriteOp::Audit {
            attempt: Box::new(attempt),
            done,
        })
        .await
    }

    /// Moves `sink`'s cursor to `upto` over events not routed to it (nothing was delivered).
    ///
    /// # Errors
    /// The cursor did not move.
    pub async fn pass(&self, sink: &str, upto: i64) -> Result<(), StoreError> {
        self.submit(|done| WriteOp::Ack {
            sink: sink.to_owned(),
            upto,
            delivered: false,
            audit: None,
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

    /// Records `sink`'s circuit breaker as `breaker` (closed, open, half-open) after
    /// `failures` failed deliveries in a row, the last for `reason`.
    ///
    /// # Errors
    /// Nothing was recorded.
    pub async fn health(
        &self,
        sink: &str,
        breaker: &'static str,
        failures: u32,
        reason: &str,
    ) -> Result<(), StoreError> {
        self.submit(|done| WriteOp::Health {
            sink: sink.to_owned(),
            breaker,
            failures,
            reason: reason.to_owned(),
            done,
        })
        .await
    }

    /// Fault injection for tests: caps the file at `pages` pages, as a full disk would (SQLite
    /// then fails writes with "database or disk is full").
    ///
    /// # Errors
    /// The writer is gone.
    #[doc(hidden)]
    pub async fn limit_pages(&self, pages: u64) -> Result<(), StoreError> {
        self.submit(|done| WriteOp::PageLimit { pages, done }).await
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
