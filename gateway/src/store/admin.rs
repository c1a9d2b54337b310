//! `causeway buffer`: what is in a buffer file, and what to do with its dead letters. Works on
//! the file while the gateway runs: reads take a WAL snapshot; requeue and purge are one short
//! transaction each (the running writer waits for it, `busy_timeout`).
//!
//! A requeued dead letter is stored again as a new row for its sink alone (same id, same
//! payload), so the other sinks, which have it already, do not see it twice.

use std::path::Path;

use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use serde_json::json;

use super::{StoreError, configure, writer::now_ms};

/// Opens an existing buffer, never creating one.
///
/// # Errors
/// The file does not exist or cannot be opened.
pub fn open_existing(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
            | OpenFlags::SQLITE_OPEN_URI,
    )
    .map_err(|source| StoreError::Open {
        path: path.to_owned(),
        source,
    })?;
    configure(conn, path)
}

/// Depth and bytes per sink, oldest undelivered age, dead letters and drops, as JSON.
///
/// # Errors
/// A read failed.
pub fn stats(
    conn: &Connection,
    sinks: &[(String, Vec<String>)],
) -> Result<serde_json::Value, StoreError> {
    let now = now_ms();
    let mut per_sink = Vec::new();
    for (sink, routes) in sinks {
        let cursor: i64 = conn.query_row(
            "SELECT COALESCE((SELECT acked_seq FROM cursors WHERE sink = ?1), 0)",
            [sink],
            |r| r.get(0),
        )?;
        let (condition, routes) = super::reader::for_sink(routes, 2, 3);
        let sql = format!(
            "SELECT COUNT(*), COALESCE(SUM(size), 0), MIN(created_at) FROM events WHERE seq > ?1 \
             AND {condition}"
        );
        let mut values: Vec<Box<dyn rusqlite::ToSql>> =
            vec![Box::new(cursor), Box::new(sink.clone())];
        values.extend(
            routes
                .into_iter()
                .map(|r| Box::new(r) as Box<dyn rusqlite::ToSql>),
        );
        let (depth, bytes, oldest): (i64, i64, Option<i64>) =
            conn.query_row(&sql, rusqlite::params_from_iter(values.iter()), |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })?;
        let dead: i64 = conn.query_row(
            "SELECT COUNT(*) FROM dead_letters WHERE sink = ?1",
            [sink],
            |r| r.get(0),
        )?;
        // The breaker as the sink last recorded it (closed when it never ran).
        let breaker = conn
            .query_row(
                "SELECT breaker, since, failures, reason FROM sink_health WHERE sink = ?1",
                [sink],
                |r| {
                    Ok(json!({
                        "state": r.get::<_, String>(0)?,
                        "since_s": (now - r.get::<_, i64>(1)?).max(0) as f64 / 1000.0,
                        "failures_in_a_row": r.get::<_, i64>(2)?,
                        "last_failure": r.get::<_, String>(3)?,
                    }))
                },
            )
            .optional()?
            .unwrap_or_else(|| json!({ "state": "closed", "failures_in_a_row": 0 }));
        per_sink.push(json!({
            "sink": sink,
            "cursor": cursor,
            "undelivered": depth,
            "undelivered_bytes": bytes,
            "oldest_undelivered_age_s": oldest.map(|o| (now - o).max(0) as f64 / 1000.0),
            "dead_letters": dead,
            "breaker": breaker,
        }));
    }
    let (events, bytes): (i64, i64) = conn.query_row(
        "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM events",
        [],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    let (dead, dead_bytes): (i64, i64) = conn.query_row(
        "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM dead_letters",
        [],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    let mut drops = Vec::new();
    {
        let mut stmt =
            conn.prepare("SELECT type, reason, count FROM drops ORDER BY type, reason")?;
        let rows = stmt.query_map([], |r| Ok(json!({ "type": r.get::<_, String>(0)?, "reason": r.get::<_, String>(1)?, "count": r.get::<_, i64>(2)? })))?;
        for row in rows {
            drops.push(row?);
        }
    }
    Ok(json!({
        "events": events,
        "event_bytes": bytes,
        "dead_letters": dead,
        "dead_letter_bytes": dead_bytes,
        "sinks": per_sink,
        "drops": drops,
    }))
}

/// A dead letter as listed and exported.
fn dead_json(r: &rusqlite::Row<'_>, with_payload: bool) -> rusqlite::Result<serde_json::Value> {
    let mut v = json!({
        "sink": r.get::<_, String>(0)?,
        "seq": r.get::<_, i64>(1)?,
        "id": r.get::<_, String>(2)?,
        "type": r.get::<_, String>(3)?,
        "reason": r.get::<_, String>(4)?,
        "failed_at": crate::event::rfc3339(std::time::UNIX_EPOCH + std::time::Duration::from_millis(u64::try_from(r.get::<_, i64>(5)?).unwrap_or(0))),
    });
    if with_payload {
        let payload: String = r.get(6)?;
        v["event"] = serde_json::from_str(&payload).unwrap_or(serde_json::Value::String(payload));
    }
    Ok(v)
}

/// Dead letters, oldest first, optionally of one sink, with or without the event itself.
///
/// # Errors
/// A read failed.
pub fn dead_letters(
    conn: &Connection,
    sink: Option<&str>,
    with_payload: bool,
) -> Result<Vec<serde_json::Value>, StoreError> {
    let mut stmt = conn.prepare(
        "SELECT sink, seq, id, type, reason, failed_at, payload FROM dead_letters \
         WHERE ?1 IS NULL OR sink = ?1 ORDER BY failed_at, rowid",
    )?;
    let rows = stmt.query_map([sink], |r| dead_json(r, with_payload))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Moves dead letters (all, of one sink, or one id) back to be delivered to their sink alone.
/// Returns how many.
///
/// # Errors
/// Nothing was moved.
pub fn requeue(
    conn: &mut Connection,
    sink: Option<&str>,
    id: Option<&str>,
) -> Result<usize, StoreError> {
    let tx = conn.transaction()?;
    let now = now_ms();
    let moved = tx.execute(
        "INSERT INTO events (id, type, payload, created_at, size, lane, sink) \
         SELECT id, type, payload, ?1, size, 2, sink FROM dead_letters \
         WHERE (?2 IS NULL OR sink = ?2) AND (?3 IS NULL OR id = ?3) ORDER BY failed_at, rowid",
        params![now, sink, id],
    )?;
    tx.execute(
        "DELETE FROM dead_letters WHERE (?1 IS NULL OR sink = ?1) AND (?2 IS NULL OR id = ?2)",
        params![sink, id],
    )?;
    tx.commit()?;
    Ok(moved)
}

/// Deletes dead letters (all, or of one sink). Returns how many.
///
/// # Errors
/// Nothing was deleted.
pub fn purge(conn: &Connection, sink: Option<&str>) -> Result<usize, StoreError> {
    Ok(conn.execute(
        "DELETE FROM dead_letters WHERE ?1 IS NULL OR sink = ?1",
        [sink],
    )?)
}
