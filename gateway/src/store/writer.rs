//! The single writer: group commit with a savepoint per write.

use std::{
    sync::Arc,
    time::{SystemTime, UNIX_EPOCH},
};

use rusqlite::{Connection, params};
use tokio::sync::{mpsc, oneshot, watch};

use super::{StoreError, StoreOptions, StoreStats, count};

type Done = oneshot::Sender<Result<(), StoreError>>;

/// A write waiting for the writer.
#[derive(Debug)]
pub(super) enum WriteOp {
    /// New events (id, type, payload) and rule state (rule, json), all or nothing.
    Append {
        rows: Vec<(String, String, String)>,
        state: Vec<(String, String)>,
        done: Done,
    },
    /// A sink delivered everything up to `upto`.
    Ack { sink: String, upto: i64, done: Done },
    /// A sink refused these events for good.
    DeadLetter {
        sink: String,
        seqs: Vec<i64>,
        reason: String,
        upto: i64,
        done: Done,
    },
}

impl WriteOp {
    fn into_done(self) -> Done {
        match self {
            WriteOp::Append { done, .. }
            | WriteOp::Ack { done, .. }
            | WriteOp::DeadLetter { done, .. } => done,
        }
    }
}

/// What a committed group did.
struct Applied {
    /// One result per write, in order.
    outcomes: Vec<Result<(), rusqlite::Error>>,
    /// Events appended.
    appended: usize,
    /// Events moved to dead letters.
    dead_lettered: usize,
    /// Whether any cursor moved.
    acked: bool,
}

pub(super) struct Writer {
    conn: Connection,
    options: StoreOptions,
    appended: watch::Sender<i64>,
    stats: Arc<StoreStats>,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

impl Writer {
    pub(super) fn new(
        conn: Connection,
        options: StoreOptions,
        appended: watch::Sender<i64>,
        stats: Arc<StoreStats>,
    ) -> Self {
        Writer {
            conn,
            options,
            appended,
            stats,
        }
    }

    pub(super) fn run(mut self, mut ops: mpsc::Receiver<WriteOp>) {
        let mut batch = Vec::with_capacity(self.options.max_batch);
        while let Some(first) = ops.blocking_recv() {
            batch.push(first);
            while batch.len() < self.options.max_batch {
                let Ok(op) = ops.try_recv() else { break };
                batch.push(op);
            }
            let (outcome, appended_rows, acked) = match self.apply(&batch) {
                Ok(Applied {
                    outcomes,
                    appended,
                    dead_lettered,
                    acked,
                }) => {
                    count(&self.stats.dead_lettered, dead_lettered);
                    (Ok(outcomes), appended, acked)
                }
                Err(error) => (Err(Arc::new(error)), 0, false),
            };
            // Housekeeping first, so a caller who sees its ack sees its effects too.
            if appended_rows > 0 {
                count(&self.stats.appended, appended_rows);
                if let Ok(last) =
                    self.conn
                        .query_row("SELECT COALESCE(MAX(seq), 0) FROM events", [], |r| {
                            r.get::<_, i64>(0)
                        })
                {
                    self.appended.send_replace(last);
                }
                if let Err(error) = self.enforce_max_bytes() {
                    tracing::error!(error = %crate::error_chain(&error), "Could not enforce the buffer size limit.");
                }
            }
            if acked && let Err(error) = self.delete_delivered() {
                tracing::warn!(error = %crate::error_chain(&error), "Could not delete delivered rows; will retry on the next ack.");
            }
            match outcome {
                Ok(outcomes) => {
                    for (op, result) in batch.drain(..).zip(outcomes) {
                        let _ = op.into_done().send(result.map_err(StoreError::from));
                    }
                }
                Err(error) => {
                    tracing::error!(error = %crate::error_chain(&*error), "Buffer commit failed; nothing in this group was accepted.");
                    for op in batch.drain(..) {
                        let _ = op
                            .into_done()
                            .send(Err(StoreError::Batch(Arc::clone(&error))));
                    }
                }
            }
        }
    }

    /// Applies one group in one transaction. Per-op results for ops that failed alone; `Err` if
    /// the transaction itself failed.
    fn apply(&mut self, batch: &[WriteOp]) -> Result<Applied, StoreError> {
        let mut tx = self.conn.transaction()?;
        let mut outcomes = Vec::with_capacity(batch.len());
        let (mut appended, mut dead_lettered, mut acked) = (0, 0, false);
        for op in batch {
            let mut sp = tx.savepoint()?;
            match apply_one(&sp, op) {
                Ok(()) => {
                    sp.commit()?;
                    match op {
                        WriteOp::Append { rows, .. } => appended += rows.len(),
                        WriteOp::Ack { .. } => acked = true,
                        WriteOp::DeadLetter { seqs, .. } => {
                            dead_lettered += seqs.len();
                            acked = true;
                        }
                    }
                    outcomes.push(Ok(()));
                }
                Err(error) => {
                    sp.rollback()?;
                    outcomes.push(Err(error));
                }
            }
        }
        tx.commit()?;
        Ok(Applied {
            outcomes,
            appended,
            dead_lettered,
            acked,
        })
    }

    fn enforce_max_bytes(&mut self) -> Result<(), rusqlite::Error> {
        let used = |conn: &Connection| -> Result<u64, rusqlite::Error> {
            let pages: i64 = conn.pragma_query_value(None, "page_count", |r| r.get(0))?;
            let free: i64 = conn.pragma_query_value(None, "freelist_count", |r| r.get(0))?;
            let size: i64 = conn.pragma_query_value(None, "page_size", |r| r.get(0))?;
            Ok(((pages - free).max(0) * size) as u64)
        };
        let mut dropped = 0u64;
        while used(&self.conn)? > self.options.max_bytes {
            let rows: i64 = self
                .conn
                .query_row("SELECT COUNT(*) FROM events", [], |r| r.get(0))?;
            if rows == 0 {
                break;
            }
            let chunk = (rows / 100).max(100);
            let n = self.conn.execute(
                "DELETE FROM events WHERE seq IN (SELECT seq FROM events ORDER BY seq LIMIT ?1)",
                [chunk],
            )?;
            dropped += n as u64;
        }
        if dropped > 0 {
            self.stats
                .dropped
                .fetch_add(dropped, std::sync::atomic::Ordering::Relaxed);
            tracing::warn!(
                dropped,
                max_bytes = self.options.max_bytes,
                "Buffer full: dropped the oldest undelivered events (when_full = drop_oldest)."
            );
        }
        Ok(())
    }

    fn delete_delivered(&mut self) -> Result<(), rusqlite::Error> {
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
        self.conn
            .execute("DELETE FROM events WHERE seq <= ?1", [lowest])?;
        Ok(())
    }
}

fn apply_one(tx: &rusqlite::Connection, op: &WriteOp) -> Result<(), rusqlite::Error> {
    match op {
        WriteOp::Append { rows, state, .. } => {
            let mut insert = tx.prepare_cached(
                "INSERT INTO events (id, type, payload, created_at) VALUES (?1, ?2, ?3, ?4)",
            )?;
            let now = now_ms();
            for (id, event_type, payload) in rows {
                insert.execute(params![id, event_type, payload, now])?;
            }
            let mut save = tx.prepare_cached(
                "INSERT INTO rule_state (rule, state) VALUES (?1, ?2) ON CONFLICT(rule) DO UPDATE SET state = excluded.state",
            )?;
            for (rule, value) in state {
                save.execute(params![rule, value])?;
            }
        }
        WriteOp::Ack { sink, upto, .. } => ack(tx, sink, *upto)?,
        WriteOp::DeadLetter {
            sink,
            seqs,
            reason,
            upto,
            ..
        } => {
            let mut insert = tx.prepare_cached(
                "INSERT OR REPLACE INTO dead_letters (sink, seq, id, type, payload, reason, failed_at) \
                 SELECT ?1, seq, id, type, payload, ?2, ?3 FROM events WHERE seq = ?4",
            )?;
            let now = now_ms();
            for seq in seqs {
                insert.execute(params![sink, reason, now, seq])?;
            }
            ack(tx, sink, *upto)?;
        }
    }
    Ok(())
}

fn ack(tx: &rusqlite::Connection, sink: &str, upto: i64) -> Result<(), rusqlite::Error> {
    tx.execute(
        "INSERT INTO cursors (sink, acked_seq) VALUES (?1, ?2) \
         ON CONFLICT(sink) DO UPDATE SET acked_seq = MAX(acked_seq, excluded.acked_seq)",
        params![sink, upto],
    )?;
    Ok(())
}
