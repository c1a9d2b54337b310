//! The single writer: group commit with a savepoint per write, and the buffer's limits.
//!
//! Limits are enforced inside the transaction that needs the room, on rows committed by earlier
//! groups only (`seq <= floor`): an event is never dropped by the group that commits it.

use std::{
    collections::BTreeMap,
    sync::Arc,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use firmware_config::WhenFull;
use rusqlite::{Connection, params};
use tokio::sync::{mpsc, oneshot, watch};

use super::{Attempt, StoreError, StoreOptions, StoreStats, count};

type Done = oneshot::Sender<Result<(), StoreError>>;

/// How often events older than `max_age` are looked for.
const AGE_CHECK: Duration = Duration::from_secs(10);
/// Bytes an audit attempt takes in the file, indexes included (measured: docs/delivery.md).
const AUDIT_ROW_BYTES: u64 = 300;
/// Bytes a delivered event's id takes in the file, indexes included.
const ID_ROW_BYTES: u64 = 120;
/// Drops are logged at most this often (a summary of everything dropped since).
const DROP_LOG_EVERY: Duration = Duration::from_secs(10);
/// 2026-01-01T00:00:00Z. A row stamped before this was stamped by a clock not yet set (a box
/// without a real-time clock, before NTP): its age is unknown, and it is restamped, never expired.
const CLOCK_SET_MS: i64 = 1_767_225_600_000;
/// A wall clock that ran this much faster than the monotonic one between two age checks was
/// stepped forward: stored stamps are shifted with it, so the step ages nothing.
const CLOCK_STEP: Duration = Duration::from_secs(60);

/// An event row to insert.
#[derive(Debug)]
pub(super) struct Row {
    pub(super) id: String,
    pub(super) event_type: String,
    pub(super) payload: String,
    pub(super) lane: i64,
}

/// A write waiting for the writer.
#[derive(Debug)]
pub(super) enum WriteOp {
    /// New events and rule state (rule, json), all or nothing.
    Append {
        rows: Vec<Row>,
        state: Vec<(String, String)>,
        done: Done,
    },
    /// A sink passed everything up to `upto`: delivered it (`delivered`), or found nothing
    /// routed to it there.
    Ack {
        sink: String,
        upto: i64,
        delivered: bool,
        /// The delivery attempt that proved it, for the audit trail.
        audit: Option<Box<Attempt>>,
        done: Done,
    },
    /// A delivery attempt, for the audit trail.
    Audit { attempt: Box<Attempt>, done: Done },
    /// A sink refused these events for good.
    DeadLetter {
        sink: String,
        seqs: Vec<i64>,
        reason: String,
        upto: i64,
        done: Done,
    },
    /// A sink's circuit breaker changed.
    Health {
        sink: String,
        breaker: &'static str,
        failures: u32,
        reason: String,
        done: Done,
    },
    /// Fault injection for tests: caps the file at `pages` pages (`PRAGMA max_page_count`), as
    /// a full disk would.
    PageLimit { pages: u64, done: Done },
}

impl WriteOp {
    fn into_done(self) -> Done {
        match self {
            WriteOp::Append { done, .. }
            | WriteOp::Ack { done, .. }
            | WriteOp::DeadLetter { done, .. }
            | WriteOp::Health { done, .. }
            | WriteOp::Audit { done, .. }
            | WriteOp::PageLimit { done, .. } => done,
        }
    }
}

/// Drops by (event type, reason).
type Drops = BTreeMap<(String, &'static str), u64>;

/// What one write did, applied to the writer's books only if its savepoint commits.
#[derive(Default)]
struct Effect {
    appended: usize,
    last_seq: Option<i64>,
    live_delta: i64,
    dead_delta: i64,
    dead_lettered: usize,
    acked: bool,
    drops: Drops,
}

/// The lane of an event type: the order in which a full buffer evicts.
pub(super) fn lane(event_type: &str) -> i64 {
    if event_type.starts_with("telemetry.") {
        0
    } else if event_type.starts_with("quality.")
        || event_type == "production.order"
        || event_type.starts_with("gateway.")
    {
        2
    } else {
        1
    }
}

pub(super) struct Writer {
    conn: Connection,
    options: StoreOptions,
    appended: watch::Sender<i64>,
    stats: Arc<StoreStats>,
    /// Payload bytes in `events`.
    live_bytes: u64,
    /// Payload bytes in `dead_letters`.
    dead_bytes: u64,
    /// The highest sequence number committed.
    last_seq: i64,
    /// When ages were last checked: by the monotonic clock, and by the wall clock in ms.
    last_age_check: Option<(Instant, i64)>,
    /// `PRAGMA data_version` as last seen: it changes when another connection (`causeway
    /// buffer requeue|purge`) commits, and then the books are summed again.
    data_version: i64,
    unlogged_drops: Drops,
    last_drop_log: Option<Instant>,
    /// When the audit trail was last pruned.
    last_audit_prune: Option<Instant>,
    /// When a failure to keep audit ids was last logged.
    last_audit_warning: Option<Instant>,
}

/// The wall clock in ms since the epoch (0 before it).
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn sum(conn: &Connection, sql: &str) -> Result<u64, rusqlite::Error> {
    let n: i64 = conn.query_row(sql, [], |r| r.get(0))?;
    Ok(u64::try_from(n).unwrap_or(0))
}

/// Payload bytes of events and of dead letters, and the highest sequence number, as stored.
fn books(conn: &Connection) -> Result<(u64, u64, i64), rusqlite::Error> {
    Ok((
        sum(conn, "SELECT COALESCE(SUM(size), 0) FROM events")?,
        sum(conn, "SELECT COALESCE(SUM(size), 0) FROM dead_letters")?,
        conn.query_row("SELECT COALESCE(MAX(seq), 0) FROM events", [], |r| r.get(0))?,
    ))
}

impl Writer {
    pub(super) fn new(
        conn: Connection,
        options: StoreOptions,
        appended: watch::Sender<i64>,
        stats: Arc<StoreStats>,
    ) -> Result<Self, rusqlite::Error> {
        let (live_bytes, dead_bytes, _) = books(&conn)?;
        let last_seq = *appended.borrow();
        let data_version = conn.pragma_query_value(None, "data_version", |r| r.get(0))?;
        Ok(Writer {
            data_version,
            conn,
            options,
            appended,
            stats,
            live_bytes,
            dead_bytes,
            last_seq,
            last_age_check: None,
            last_audit_prune: None,
            last_audit_warning: None,
            unlogged_drops: Drops::new(),
            last_drop_log: None,
        })
    }

    pub(super) fn run(mut self, mut ops: mpsc::Receiver<WriteOp>) {
        let mut batch = Vec::with_capacity(self.options.max_batch);
        self.expire();
        while let Some(first) = ops.blocking_recv() {
            batch.push(first);
            while batch.len() < self.options.max_batch {
                let Ok(op) = ops.try_recv() else { break };
                batch.push(op);
            }
            let outcome = self.apply(&batch);
            // Housekeeping first, so a caller who sees its ack sees its effects too.
            let acked = outcome.as_ref().is_ok_and(|(_, acked)| *acked);
            if acked && let Err(error) = self.delete_delivered() {
                tracing::warn!(error = %crate::error_chain(&error), "Could not delete delivered rows; will retry on the next ack.");
            }
            self.expire();
            self.prune_audit();
            self.log_drops(false);
            match outcome {
                Ok((outcomes, _)) => {
                    for (op, result) in batch.drain(..).zip(outcomes) {
                        let _ = op.into_done().send(result);
                    }
                }
                Err(error) => {
                    let error = Arc::new(error);
                    tracing::error!(error = %crate::error_chain(&*error), "Buffer commit failed; nothing in this group was accepted.");
                    for op in batch.drain(..) {
                        let _ = op
                            .into_done()
                            .send(Err(StoreError::Batch(Arc::clone(&error))));
                    }
                }
            }
        }
        self.log_drops(true);
    }

    fn sqlite(&self, error: rusqlite::Error) -> StoreError {
        StoreError::from_sqlite(&self.options.path, error)
    }

    /// Applies one group in one transaction: per-op results, and whether a cursor moved.
    /// `Err` if the transaction itself failed (nothing in the group happened).
    #[allow(clippy::type_complexity)]
    fn apply(
        &mut self,
        batch: &[WriteOp],
    ) -> Result<(Vec<Result<(), StoreError>>, bool), StoreError> {
        let mut floor = self.last_seq;
        let (mut live, mut dead) = (self.live_bytes, self.dead_bytes);
        let mut total = Effect::default();
        let mut outcomes = Vec::with_capacity(batch.len());
        let mut resynced = None;
        {
            let path = self.options.path.clone();
            let options = &self.options;
            let mut tx = self
                .conn
                .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                .map_err(|e| StoreError::from_sqlite(&path, e))?;
            // Another connection (`causeway buffer requeue|purge`) may have changed the file:
            // sum the books again, inside this transaction, so nothing can change them under it.
            let version: i64 = tx
                .pragma_query_value(None, "data_version", |r| r.get(0))
                .map_err(|e| StoreError::from_sqlite(&path, e))?;
            if version != self.data_version {
                let (l, d, last) = books(&tx).map_err(|e| StoreError::from_sqlite(&path, e))?;
                (live, dead) = (l, d);
                floor = floor.max(last);
                resynced = Some((version, last));
            }
            for op in batch {
                let mut sp = tx
                    .savepoint()
                    .map_err(|e| StoreError::from_sqlite(&path, e))?;
                let books = Books { live, dead, floor };
                match apply_one(&sp, op, options, books) {
                    Ok(effect) => {
                        sp.commit().map_err(|e| StoreError::from_sqlite(&path, e))?;
                        live = live.saturating_add_signed(effect.live_delta);
                        dead = dead.saturating_add_signed(effect.dead_delta);
                        total.appended += effect.appended;
                        total.dead_lettered += effect.dead_lettered;
                        total.acked |= effect.acked;
                        total.last_seq = effect.last_seq.or(total.last_seq);
                        for (key, n) in effect.drops {
                            *total.drops.entry(key).or_default() += n;
                        }
                        outcomes.push(Ok(()));
                    }
                    Err(error) => {
                        // Some errors (a full disk) make SQLite roll back the whole
                        // transaction itself: then the whole group failed, for this reason.
                        if sp.rollback().is_err() {
                            return Err(error);
                        }
                        outcomes.push(Err(error));
                    }
                }
            }
            tx.commit().map_err(|e| StoreError::from_sqlite(&path, e))?;
        }
        self.live_bytes = live;
        self.dead_bytes = dead;
        if let Some((version, last)) = resynced {
            self.data_version = version;
            if last > self.last_seq {
                self.last_seq = last;
                // Wake the sinks: requeued rows are theirs to deliver.
                self.appended.send_replace(last);
            }
        }
        count(&self.stats.appended, total.appended);
        count(&self.stats.dead_lettered, total.dead_lettered);
        if let Some(last) = total.last_seq {
            self.last_seq = last;
            self.appended.send_replace(last);
        }
        self.record_drops(total.drops);
        Ok((outcomes, total.acked))
    }

    /// Counts drops (already persisted in `drops` by their transaction) for stats and the log.
    fn record_drops(&mut self, drops: Drops) {
        for ((event_type, reason), n) in drops {
            let evicted_dead = reason == DEAD_EVICTED;
            count(
                if evicted_dead {
                    &self.stats.dead_evicted
                } else {
                    &self.stats.dropped
                },
                usize::try_from(n).unwrap_or(usize::MAX),
            );
            self.stats.add_drop(&event_type, reason, n);
            *self.unlogged_drops.entry((event_type, reason)).or_default() += n;
        }
    }

    /// Logs what was dropped since the last log line, at most every [`DROP_LOG_EVERY`].
    fn log_drops(&mut self, flush: bool) {
        if self.unlogged_drops.is_empty() {
            return;
        }
        let due = self
            .last_drop_log
            .is_none_or(|at| at.elapsed() >= DROP_LOG_EVERY);
        if !due && !flush {
            return;
        }
        let summary = self
            .unlogged_drops
            .iter()
            .map(|((t, reason), n)| format!("{n} {t} ({reason})"))
            .collect::<Vec<_>>()
            .join(", ");
        let total: u64 = self.unlogged_drops.values().sum();
        tracing::warn!(
            dropped = total,
            what = %summary,
            max_bytes = self.options.max_bytes,
            max_dead_bytes = self.options.max_dead_bytes,
            buffer = %self.options.path.display(),
            "Buffer limits dropped events (see `causeway buffer stats`); raise max_bytes/max_age, or bring the receivers back."
        );
        self.unlogged_drops.clear();
        self.last_drop_log = Some(Instant::now());
    }

    /// Deletes audit rows and event ids older than `audit_retention` (checked every
    /// [`AGE_CHECK`]; nothing while the clock is not set).
    fn prune_audit(&mut self) {
        if self
            .last_audit_prune
            .is_some_and(|at| at.elapsed() < AGE_CHECK)
        {
            return;
        }
        self.last_audit_prune = Some(Instant::now());
        let now = now_ms();
        if now < CLOCK_SET_MS {
            return;
        }
        let keep = i64::try_from(self.options.audit_retention.as_millis()).unwrap_or(i64::MAX);
        let cutoff = now.saturating_sub(keep);
        // The size bound, as rows: half of it for each table, at the bytes a row takes
        // (measured: docs/delivery.md).
        let half = self.options.max_audit_bytes / 2;
        let attempts = i64::try_from(half / AUDIT_ROW_BYTES).unwrap_or(i64::MAX);
        let ids = i64::try_from(half / ID_ROW_BYTES).unwrap_or(i64::MAX);
        let result = self
            .conn
            .execute("DELETE FROM audit WHERE at < ?1", [cutoff])
            .and_then(|_| {
                self.conn
                    .execute("DELETE FROM event_ids WHERE removed_at < ?1", [cutoff])
            })
            .and_then(|_| {
                self.conn.execute(
                    "DELETE FROM audit WHERE rowid <= (SELECT rowid FROM audit ORDER BY rowid DESC LIMIT 1 OFFSET ?1)",
                    [attempts],
                )
            })
            .and_then(|_| {
                self.conn.execute(
                    "DELETE FROM event_ids WHERE seq <= (SELECT seq FROM event_ids ORDER BY seq DESC LIMIT 1 OFFSET ?1)",
                    [ids],
                )
            });
        if let Err(error) = result {
            let error = self.sqlite(error);
            tracing::warn!(error = %crate::error_chain(&error), "Could not prune the audit trail; will retry.");
        }
    }

    /// Drops undelivered events older than `max_age` (checked every [`AGE_CHECK`]).
    fn expire(&mut self) {
        let Some(max_age) = self.options.max_age else {
            return;
        };
        let now = now_ms();
        let step = match self.last_age_check {
            Some((at, _)) if at.elapsed() < AGE_CHECK => return,
            Some((at, wall)) => {
                let mono = i64::try_from(at.elapsed().as_millis()).unwrap_or(i64::MAX);
                let skew = now.saturating_sub(wall).saturating_sub(mono);
                // (the step, and the latest stamp the old clock can have given)
                (skew > i64::try_from(CLOCK_STEP.as_millis()).unwrap_or(i64::MAX))
                    .then_some((skew, wall.saturating_add(mono)))
            }
            None => None,
        };
        self.last_age_check = Some((Instant::now(), now));
        if now < CLOCK_SET_MS {
            // The clock is not set: no age can be told, and no row is touched.
            return;
        }
        let cutoff = now.saturating_sub(i64::try_from(max_age.as_millis()).unwrap_or(i64::MAX));
        let result = (|| -> Result<(u64, Drops), rusqlite::Error> {
            let tx = self
                .conn
                .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let mut drops = Drops::new();
            let mut freed = 0u64;
            // Ages measured by a clock that was stepped, or not set, mean nothing. Rows stamped
            // by the clock before a forward step move with it (first), then rows stamped before
            // the clock was ever set are stamped now.
            if let Some((skew, boundary)) = step {
                tracing::warn!(
                    skew_ms = skew,
                    "The wall clock was stepped forward; buffered events keep their age."
                );
                tx.execute(
                    "UPDATE events SET created_at = created_at + ?1 WHERE created_at <= ?2",
                    params![skew, boundary],
                )?;
            }
            tx.execute(
                "UPDATE events SET created_at = ?1 WHERE created_at < ?2",
                params![now, CLOCK_SET_MS],
            )?;
            {
                let mut stmt = tx.prepare(
                    "SELECT type, COUNT(*), COALESCE(SUM(size), 0) FROM events WHERE created_at < ?1 GROUP BY type",
                )?;
                let rows = stmt.query_map([cutoff], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, i64>(1)?,
                        r.get::<_, i64>(2)?,
                    ))
                })?;
                for row in rows {
                    let (t, n, bytes) = row?;
                    freed += u64::try_from(bytes).unwrap_or(0);
                    drops.insert((t, "max_age"), u64::try_from(n).unwrap_or(0));
                }
            }
            if !drops.is_empty() {
                tx.execute("DELETE FROM events WHERE created_at < ?1", [cutoff])?;
                persist_drops(&tx, &drops)?;
            }
            tx.commit()?;
            Ok((freed, drops))
        })();
        match result {
            Ok((freed, drops)) => {
                self.live_bytes = self.live_bytes.saturating_sub(freed);
                self.record_drops(drops);
            }
            Err(error) => {
                let error = self.sqlite(error);
                tracing::warn!(error = %crate::error_chain(&error), "Could not drop events past max_age; will retry.");
            }
        }
    }

    fn delete_delivered(&mut self) -> Result<(), StoreError> {
        if self.options.sinks.is_empty() {
            return Ok(());
        }
        let mut lowest = i64::MAX;
        for sink in &self.options.sinks {
            let acked: i64 = self
                .conn
                .query_row(
                    "SELECT acked_seq FROM cursors WHERE sink = ?1",
                    [sink],
                    |r| r.get(0),
                )
                .unwrap_or(0);
            lowest = lowest.min(acked);
        }
        // One transaction for the deletes and the ids they leave for the audit trail (one
        // sync). Should the ids be refused (a full disk), the deletes go alone: they free
        // the space.
        let freed = match self.delete_rows(lowest, true) {
            Ok(freed) => freed,
            Err(error) => {
                if self
                    .last_audit_warning
                    .is_none_or(|at| at.elapsed() >= Duration::from_secs(60))
                {
                    self.last_audit_warning = Some(Instant::now());
                    let error = self.sqlite(error);
                    tracing::warn!(error = %crate::error_chain(&error), "Could not keep the ids of delivered events for the audit trail (`causeway audit --id` will not find them); deleting the rows without.");
                }
                self.delete_rows(lowest, false)
                    .map_err(|e| StoreError::from_sqlite(&self.options.path, e))?
            }
        };
        self.live_bytes = self.live_bytes.saturating_sub(freed);
        if freed > 0 {
            self.reclaim();
        }
        Ok(())
    }

    /// Deletes the rows every sink has passed (a range of the primary key for rows for every
    /// sink; `events_by_sink` for a requeued row, once its sink passed it), keeping their ids
    /// in `event_ids` when `remember`, in one transaction. Returns the payload bytes freed.
    fn delete_rows(&mut self, lowest: i64, remember: bool) -> Result<u64, rusqlite::Error> {
        let tx = self.conn.unchecked_transaction()?;
        let mut freed = 0u64;
        let mut gone: Vec<(i64, String, String, Option<String>)> = Vec::new();
        let mut delete =
            |sql: &str, params: &[&dyn rusqlite::ToSql]| -> Result<(), rusqlite::Error> {
                let mut stmt = tx.prepare_cached(sql)?;
                let rows = stmt.query_map(params, |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        (r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?),
                    ))
                })?;
                for row in rows {
                    let (size, ids) = row?;
                    freed += u64::try_from(size).unwrap_or(0);
                    if remember {
                        gone.push(ids);
                    }
                }
                Ok(())
            };
        delete(
            "DELETE FROM events WHERE seq <= ?1 AND sink IS NULL RETURNING size, seq, id, type, sink",
            &[&lowest],
        )?;
        for sink in &self.options.sinks {
            delete(
                "DELETE FROM events WHERE sink = ?1 AND seq <= COALESCE((SELECT acked_seq FROM cursors WHERE sink = ?1), 0) RETURNING size, seq, id, type, sink",
                &[sink],
            )?;
        }
        if !gone.is_empty() {
            let now = now_ms();
            let mut insert = tx.prepare_cached(
                "INSERT OR IGNORE INTO event_ids (seq, id, type, sink, removed_at) VALUES (?1, ?2, ?3, ?4, ?5)",
            )?;
            for (seq, id, event_type, sink) in &gone {
                insert.execute(params![seq, id, event_type, sink, now])?;
            }
        }
        tx.commit()?;
        Ok(freed)
    }

    /// Gives a large run of free pages back to the file system once a backlog has drained
    /// (new files use `auto_vacuum = INCREMENTAL`); small runs stay for reuse.
    fn reclaim(&mut self) {
        let pragma = |name: &str| -> i64 {
            self.conn
                .pragma_query_value(None, name, |r| r.get(0))
                .unwrap_or(0)
        };
        let (pages, free) = (pragma("page_count"), pragma("freelist_count"));
        if free > 1024 && free * 2 > pages {
            let _ = self
                .conn
                .execute_batch(&format!("PRAGMA incremental_vacuum({})", free / 2));
        }
    }
}

/// The writer's books as one write starts.
#[derive(Clone, Copy)]
struct Books {
    live: u64,
    dead: u64,
    floor: i64,
}

const DEAD_EVICTED: &str = "dead_letter_evicted";

fn persist_drops(conn: &Connection, drops: &Drops) -> Result<(), rusqlite::Error> {
    let mut stmt = conn.prepare_cached(
        "INSERT INTO drops (type, reason, count) VALUES (?1, ?2, ?3) \
         ON CONFLICT(type, reason) DO UPDATE SET count = count + excluded.count",
    )?;
    for ((t, reason), n) in drops {
        stmt.execute(params![t, reason, i64::try_from(*n).unwrap_or(i64::MAX)])?;
    }
    Ok(())
}

/// Deletes the oldest rows of `lanes` (in that order) committed before this group, whole events,
/// until `need` bytes are freed or none are left. Returns the bytes freed.
fn evict(
    conn: &Connection,
    need: u64,
    floor: i64,
    lanes: &[i64],
    reason: &'static str,
    drops: &mut Drops,
) -> Result<u64, rusqlite::Error> {
    let mut freed = 0u64;
    for &lane in lanes {
        if freed >= need {
            break;
        }
        let mut last = None;
        {
            let mut stmt = conn.prepare_cached(
                "SELECT seq, size, type FROM events WHERE lane = ?1 AND seq <= ?2 ORDER BY seq",
            )?;
            let mut rows = stmt.query(params![lane, floor])?;
            while let Some(row) = rows.next()? {
                let (seq, size, t): (i64, i64, String) = (row.get(0)?, row.get(1)?, row.get(2)?);
                freed += u64::try_from(size).unwrap_or(0);
                *drops.entry((t, reason)).or_default() += 1;
                last = Some(seq);
                if freed >= need {
                    break;
                }
            }
        }
        if let Some(last) = last {
            conn.execute(
                "DELETE FROM events WHERE lane = ?1 AND seq <= ?2",
                params![lane, last],
            )?;
        }
    }
    Ok(freed)
}

fn apply_one(
    tx: &Connection,
    op: &WriteOp,
    options: &StoreOptions,
    books: Books,
) -> Result<Effect, StoreError> {
    let sqlite = |e| StoreError::from_sqlite(&options.path, e);
    let mut effect = Effect::default();
    match op {
        WriteOp::Append { rows, state, .. } => {
            let size = |r: &Row| r.payload.len() as u64;
            let incoming: u64 = rows.iter().map(size).sum();
            let mut keep: Vec<&Row> = rows.iter().collect();
            let live = books.live;
            if live.saturating_add(incoming) > options.max_bytes {
                let need = live.saturating_add(incoming) - options.max_bytes;
                let telemetry = sum_lane(tx, 0, books.floor).map_err(sqlite)?;
                if options.when_full == WhenFull::BlockSources
                    && telemetry < need
                    && !rows.is_empty()
                {
                    return Err(StoreError::Full {
                        path: options.path.clone(),
                        max_bytes: options.max_bytes,
                    });
                }
                // Bytes deleted from the store.
                let mut evicted = evict(
                    tx,
                    need,
                    books.floor,
                    &[0],
                    "buffer_full",
                    &mut effect.drops,
                )
                .map_err(sqlite)?;
                if evicted < need {
                    match options.when_full {
                        // Reached with nothing new to store: never evict for it.
                        WhenFull::BlockSources => {}
                        WhenFull::DropOldest => {
                            evicted += evict(
                                tx,
                                need - evicted,
                                books.floor,
                                &[1, 2],
                                "drop_oldest",
                                &mut effect.drops,
                            )
                            .map_err(sqlite)?;
                        }
                        WhenFull::DropNewest => {
                            // Refuse incoming events, lowest lane first, newest first.
                            let mut order: Vec<usize> = (0..keep.len()).collect();
                            order.sort_by_key(|&i| (keep[i].lane, std::cmp::Reverse(i)));
                            let mut refused = vec![false; keep.len()];
                            let mut room = evicted;
                            for i in order {
                                if room >= need {
                                    break;
                                }
                                refused[i] = true;
                                room += size(keep[i]);
                                *effect
                                    .drops
                                    .entry((keep[i].event_type.clone(), "drop_newest"))
                                    .or_default() += 1;
                            }
                            let mut flags = refused.into_iter();
                            keep.retain(|_| !flags.next().unwrap_or(false));
                        }
                    }
                }
                effect.live_delta -= i64::try_from(evicted.min(live)).unwrap_or(i64::MAX);
            }
            let mut insert = tx
                .prepare_cached(
                    "INSERT INTO events (id, type, payload, created_at, size, lane) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                )
                .map_err(sqlite)?;
            let now = now_ms();
            for row in &keep {
                insert
                    .execute(params![
                        row.id,
                        row.event_type,
                        row.payload,
                        now,
                        row.payload.len() as i64,
                        row.lane
                    ])
                    .map_err(sqlite)?;
                effect.last_seq = Some(tx.last_insert_rowid());
                effect.live_delta += row.payload.len() as i64;
            }
            effect.appended = keep.len();
            let mut save = tx
                .prepare_cached(
                    "INSERT INTO rule_state (rule, state) VALUES (?1, ?2) ON CONFLICT(rule) DO UPDATE SET state = excluded.state",
                )
                .map_err(sqlite)?;
            for (rule, value) in state {
                save.execute(params![rule, value]).map_err(sqlite)?;
            }
        }
        WriteOp::Ack {
            sink,
            upto,
            delivered,
            audit,
            ..
        } => {
            if let Some(attempt) = audit {
                record(tx, attempt).map_err(sqlite)?;
            }
            ack(tx, sink, *upto).map_err(sqlite)?;
            if *delivered {
                tx.prepare_cached("UPDATE cursors SET refusals = 0 WHERE sink = ?1")
                    .and_then(|mut s| s.execute([sink]))
                    .map_err(sqlite)?;
            }
            effect.acked = true;
        }
        WriteOp::DeadLetter {
            sink,
            seqs,
            reason,
            upto,
            ..
        } => {
            let mut insert = tx
                .prepare_cached(
                    "INSERT OR REPLACE INTO dead_letters (sink, seq, id, type, payload, reason, failed_at, size) \
                     SELECT ?1, seq, id, type, payload, ?2, ?3, size FROM events WHERE seq = ?4 RETURNING size",
                )
                .map_err(sqlite)?;
            let now = now_ms();
            let mut added = 0u64;
            for seq in seqs {
                let mut rows = insert
                    .query(params![sink, reason, now, seq])
                    .map_err(sqlite)?;
                while let Some(row) = rows.next().map_err(sqlite)? {
                    added += u64::try_from(row.get::<_, i64>(0).map_err(sqlite)?).unwrap_or(0);
                    effect.dead_lettered += 1;
                }
            }
            let dead = books.dead.saturating_add(added);
            let mut evicted = 0u64;
            if dead > options.max_dead_bytes {
                evicted = evict_dead(tx, dead - options.max_dead_bytes, &mut effect.drops)
                    .map_err(sqlite)?;
            }
            effect.dead_delta = i64::try_from(added).unwrap_or(i64::MAX)
                - i64::try_from(evicted).unwrap_or(i64::MAX);
            ack(tx, sink, *upto).map_err(sqlite)?;
            tx.execute(
                "UPDATE cursors SET refusals = refusals + ?2 WHERE sink = ?1",
                params![sink, seqs.len() as i64],
            )
            .map_err(sqlite)?;
            effect.acked = true;
        }
        WriteOp::Health {
            sink,
            breaker,
            failures,
            reason,
            ..
        } => {
            tx.prepare_cached(
                "INSERT INTO sink_health (sink, breaker, since, failures, reason) VALUES (?1, ?2, ?3, ?4, ?5) \
                 ON CONFLICT(sink) DO UPDATE SET breaker = excluded.breaker, since = excluded.since, \
                 failures = excluded.failures, reason = excluded.reason",
            )
            .and_then(|mut s| s.execute(params![sink, breaker, now_ms(), failures, reason]))
            .map_err(sqlite)?;
        }
        WriteOp::Audit { attempt, .. } => {
            record(tx, attempt).map_err(sqlite)?;
        }
        WriteOp::PageLimit { pages, .. } => {
            tx.pragma_update(None, "max_page_count", *pages as i64)
                .map_err(sqlite)?;
        }
    }
    persist_drops(tx, &effect.drops).map_err(sqlite)?;
    Ok(effect)
}

fn sum_lane(conn: &Connection, lane: i64, floor: i64) -> Result<u64, rusqlite::Error> {
    let n: i64 = conn.query_row(
        "SELECT COALESCE(SUM(size), 0) FROM events WHERE lane = ?1 AND seq <= ?2",
        params![lane, floor],
        |r| r.get(0),
    )?;
    Ok(u64::try_from(n).unwrap_or(0))
}

/// Evicts the oldest dead letters, whole, until `need` bytes are freed.
fn evict_dead(conn: &Connection, need: u64, drops: &mut Drops) -> Result<u64, rusqlite::Error> {
    let mut freed = 0u64;
    let mut victims = Vec::new();
    {
        let mut stmt = conn.prepare_cached(
            "SELECT rowid, size, type FROM dead_letters ORDER BY failed_at, rowid",
        )?;
        let mut rows = stmt.query([])?;
        while let Some(row) = rows.next()? {
            let (rowid, size, t): (i64, i64, String) = (row.get(0)?, row.get(1)?, row.get(2)?);
            freed += u64::try_from(size).unwrap_or(0);
            victims.push(rowid);
            *drops.entry((t, DEAD_EVICTED)).or_default() += 1;
            if freed >= need {
                break;
            }
        }
    }
    let mut delete = conn.prepare_cached("DELETE FROM dead_letters WHERE rowid = ?1")?;
    for rowid in victims {
        delete.execute([rowid])?;
    }
    Ok(freed)
}

/// Writes a delivery attempt into the audit trail.
fn record(tx: &rusqlite::Connection, a: &Attempt) -> Result<(), rusqlite::Error> {
    tx.prepare_cached(
        "INSERT INTO audit (sink, at, duration_ms, first_seq, last_seq, first_id, last_id, events, \
         target, outcome, status, response) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
    )?
    .execute(params![
        a.sink,
        a.at_ms,
        a.duration_ms,
        a.first_seq,
        a.last_seq,
        a.first_id,
        a.last_id,
        i64::try_from(a.events).unwrap_or(i64::MAX),
        a.target,
        a.outcome,
        a.status,
        a.response
    ])?;
    Ok(())
}

fn ack(tx: &rusqlite::Connection, sink: &str, upto: i64) -> Result<(), rusqlite::Error> {
    // Cached: a sink acknowledges every request, ten and more times a second.
    tx.prepare_cached(
        "INSERT INTO cursors (sink, acked_seq) VALUES (?1, ?2) \
         ON CONFLICT(sink) DO UPDATE SET acked_seq = MAX(acked_seq, excluded.acked_seq)",
    )?
    .execute(params![sink, upto])?;
    Ok(())
}
