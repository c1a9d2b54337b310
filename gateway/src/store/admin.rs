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

/// A time in ms since the epoch, as RFC 3339.
fn time_of(ms: i64) -> String {
    crate::event::rfc3339(
        std::time::UNIX_EPOCH + std::time::Duration::from_millis(u64::try_from(ms).unwrap_or(0)),
    )
}

/// The audit columns, in the order [`attempt_json`] reads them.
const ATTEMPT_COLUMNS: &str = "sink, at, duration_ms, first_seq, last_seq, first_id, last_id, \
                               events, target, outcome, status, response";

/// An audit row as shown by `causeway audit`.
fn attempt_json(r: &rusqlite::Row<'_>) -> rusqlite::Result<serde_json::Value> {
    Ok(json!({
        "sink": r.get::<_, String>(0)?,
        "at": time_of(r.get(1)?),
        "duration_ms": r.get::<_, i64>(2)?,
        "seq": [r.get::<_, i64>(3)?, r.get::<_, i64>(4)?],
        "first_id": r.get::<_, String>(5)?,
        "last_id": r.get::<_, String>(6)?,
        "events": r.get::<_, i64>(7)?,
        "target": r.get::<_, String>(8)?,
        "outcome": r.get::<_, String>(9)?,
        "status": r.get::<_, String>(10)?,
        "response": r.get::<_, String>(11)?,
    }))
}

/// Delivery attempts, oldest first: of one sink or all, since `since_ms` (ms since the epoch),
/// the latest `limit`.
///
/// # Errors
/// A read failed.
pub fn audit(
    conn: &Connection,
    sink: Option<&str>,
    since_ms: Option<i64>,
    limit: usize,
) -> Result<Vec<serde_json::Value>, StoreError> {
    let sql = format!(
        "SELECT * FROM (SELECT {ATTEMPT_COLUMNS}, rowid FROM audit \
         WHERE (?1 IS NULL OR sink = ?1) AND at >= ?2 ORDER BY at DESC, rowid DESC LIMIT ?3) \
         ORDER BY at, rowid"
    );
    let mut stmt = conn.prepare(&sql)?;
    let rows = stmt.query_map(
        params![
            sink,
            since_ms.unwrap_or(i64::MIN),
            i64::try_from(limit).unwrap_or(i64::MAX)
        ],
        attempt_json,
    )?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// What became of event `id` at each sink in `sinks` that it was routed to: `delivered`
/// (when, by which request), `dead_letter` (why), or `pending` (the attempts so far), with
/// every attempt that carried it.
///
/// # Errors
/// A read failed.
pub fn audit_event(
    conn: &Connection,
    id: &str,
    sinks: &[firmware_config::SinkConfig],
) -> Result<serde_json::Value, StoreError> {
    // Where the event is, or was: its buffer rows (a requeued row is for one sink), then
    // the ids kept for rows that left the buffer.
    let mut occurrences: Vec<(i64, String, Option<String>, bool)> = Vec::new();
    for (sql, place) in [
        ("SELECT seq, type, sink FROM events WHERE id = ?1", true),
        ("SELECT seq, type, sink FROM event_ids WHERE id = ?1", false),
    ] {
        let mut stmt = conn.prepare(sql)?;
        let rows = stmt.query_map([id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        for row in rows {
            let (seq, t, s) = row?;
            if !occurrences.iter().any(|(q, ..)| *q == seq) {
                occurrences.push((seq, t, s, place));
            }
        }
    }
    let mut dead = Vec::new();
    {
        let mut stmt = conn
            .prepare("SELECT sink, seq, type, reason, failed_at FROM dead_letters WHERE id = ?1")?;
        let rows = stmt.query_map([id], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, i64>(4)?,
            ))
        })?;
        for row in rows {
            dead.push(row?);
        }
    }
    let event_type = occurrences
        .first()
        .map(|(_, t, ..)| t.clone())
        .or_else(|| dead.first().map(|d| d.2.clone()));
    let Some(event_type) = event_type else {
        return Ok(json!({
            "id": id,
            "found": false,
            "why": "not in the buffer, its dead letters or the audit trail's ids: never stored \
                    here, dropped by a buffer limit (see `causeway buffer stats`), or delivered \
                    longer ago than [buffer] audit_retention",
        }));
    };
    let mut per_sink = Vec::new();
    let mut attempts_of = conn.prepare(&format!(
        "SELECT {ATTEMPT_COLUMNS} FROM audit WHERE sink = ?1 AND first_seq <= ?2 AND last_seq >= ?2 \
         ORDER BY at, rowid"
    ))?;
    for sink in sinks {
        let mut attempts = Vec::new();
        let mut routed = false;
        for (seq, _, only, _) in &occurrences {
            let for_this = match only {
                Some(one) => one == &sink.name,
                None => sink.accepts(&event_type),
            };
            if !for_this {
                continue;
            }
            routed = true;
            let rows = attempts_of.query_map(params![sink.name, seq], attempt_json)?;
            for row in rows {
                attempts.push(row?);
            }
        }
        let dead_here: Vec<_> = dead.iter().filter(|d| d.0 == sink.name).collect();
        if !routed && dead_here.is_empty() {
            continue;
        }
        let delivered = attempts
            .iter()
            .find(|a| matches!(a["outcome"].as_str(), Some("delivered" | "partial")));
        let mut entry = json!({ "sink": sink.name });
        if let Some(d) = dead_here.last() {
            entry["status"] = json!("dead_letter");
            entry["reason"] = json!(d.3);
            entry["at"] = json!(time_of(d.4));
        } else if let Some(a) = delivered {
            entry["status"] = json!("delivered");
            entry["at"] = a["at"].clone();
            entry["answer"] = a["status"].clone();
        } else {
            let cursor: i64 = conn.query_row(
                "SELECT COALESCE((SELECT acked_seq FROM cursors WHERE sink = ?1), 0)",
                [&sink.name],
                |r| r.get(0),
            )?;
            // A copy the cursor has not passed (a requeued one, for one) is still to come.
            let waiting = occurrences.iter().any(|(seq, _, only, _)| {
                *seq > cursor
                    && match only {
                        Some(one) => one == &sink.name,
                        None => sink.accepts(&event_type),
                    }
            });
            entry["status"] = json!(if waiting {
                "pending"
            } else {
                // Passed with no attempt on record: delivered before the record was kept
                // (or after it expired), or dead-lettered and since purged or evicted.
                "passed_no_record"
            });
        }
        entry["attempts"] = serde_json::Value::Array(attempts);
        per_sink.push(entry);
    }
    Ok(json!({
        "id": id,
        "found": true,
        "type": event_type,
        "in_buffer": occurrences.iter().any(|o| o.3),
        "sinks": per_sink,
    }))
}
