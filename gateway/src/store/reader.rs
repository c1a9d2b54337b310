//! Read connections: each sink task has its own, so reads never wait for the writer (WAL).

use std::sync::{Arc, Mutex};

use rusqlite::Connection;

use super::StoreError;

/// An event as stored: its sequence number and the exact JSON to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEvent {
    /// Position in the outbox.
    pub seq: i64,
    /// The CloudEvent id.
    pub id: String,
    /// The CloudEvent type.
    pub event_type: String,
    /// The CloudEvent JSON.
    pub payload: String,
}

/// A batch for one sink and where its cursor goes once the batch is delivered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetched {
    /// Matching events, in order.
    pub events: Vec<StoredEvent>,
    /// Every event up to here was either in `events` or not routed to the sink.
    pub upto: i64,
}

/// The SQL condition selecting a sink's rows, and the route patterns to bind for it: rows for
/// every sink whose type matches one of `routes` (the config's, where `gateway.*` is added for
/// most sinks), and rows requeued for this sink alone. The sink's name binds at `?{sink_param}`, the
/// patterns from `?{first_route}` on.
pub(super) fn for_sink(
    routes: &[String],
    sink_param: usize,
    first_route: usize,
) -> (String, Vec<String>) {
    let routes = routes.to_vec();
    let globs = (0..routes.len())
        .map(|i| format!("type GLOB ?{}", i + first_route))
        .collect::<Vec<_>>()
        .join(" OR ");
    (
        format!("((sink IS NULL AND ({globs})) OR sink = ?{sink_param})"),
        routes,
    )
}

/// A read connection.
#[derive(Debug, Clone)]
pub struct Reader {
    conn: Arc<Mutex<Connection>>,
}

impl Reader {
    pub(super) fn new(conn: Connection) -> Result<Self, StoreError> {
        Ok(Reader {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    async fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, rusqlite::Error> + Send + 'static,
    ) -> Result<T, StoreError> {
        let conn = Arc::clone(&self.conn);
        tokio::task::spawn_blocking(move || {
            let mut guard = conn
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            f(&mut guard).map_err(StoreError::from)
        })
        .await
        .map_err(|_| StoreError::WriterGone)?
    }

    /// Where `sink`'s cursor stands.
    ///
    /// # Errors
    /// The read failed.
    pub async fn cursor(&self, sink: &str) -> Result<i64, StoreError> {
        let sink = sink.to_owned();
        self.with(move |conn| {
            conn.query_row(
                "SELECT COALESCE((SELECT acked_seq FROM cursors WHERE sink = ?1), 0)",
                [sink],
                |r| r.get(0),
            )
        })
        .await
    }

    /// Events `sink` dead-lettered in a row with none delivered since.
    ///
    /// # Errors
    /// The read failed.
    pub async fn refusals(&self, sink: &str) -> Result<u32, StoreError> {
        let sink = sink.to_owned();
        self.with(move |conn| {
            conn.query_row(
                "SELECT COALESCE((SELECT refusals FROM cursors WHERE sink = ?1), 0)",
                [sink],
                |r| r.get::<_, i64>(0),
            )
        })
        .await
        .map(|n| u32::try_from(n).unwrap_or(u32::MAX))
    }

    /// Up to `limit` events after `after` for `sink`: those whose type matches one of `routes`
    /// (`*` wildcards) or is a gateway event (`gateway.*`, for every sink), and those requeued
    /// for this sink alone.
    ///
    /// # Errors
    /// The read failed.
    pub async fn fetch(
        &self,
        sink: &str,
        after: i64,
        routes: &[String],
        limit: usize,
    ) -> Result<Fetched, StoreError> {
        self.fetch_bounded(sink, after, routes, limit, u64::MAX)
            .await
    }

    /// As [`Reader::fetch`], and no more payload bytes (each counted one more, as a sink's
    /// batch body does) than `max_bytes`, but always the first event however large: what a
    /// sink holds in memory is bounded by its `max_batch_bytes`, not by its events' sizes.
    ///
    /// # Errors
    /// The read failed.
    pub async fn fetch_bounded(
        &self,
        sink: &str,
        after: i64,
        routes: &[String],
        limit: usize,
        max_bytes: u64,
    ) -> Result<Fetched, StoreError> {
        let (condition, routes) = for_sink(routes, 3, 4);
        let sink = sink.to_owned();
        self.with(move |conn| {
            let tx = conn.transaction()?; // one snapshot for the rows and the high-water mark
            let sql = format!(
                "SELECT seq, id, type, payload FROM events WHERE seq > ?1 \
                 AND {condition} ORDER BY seq LIMIT ?2"
            );
            let mut params: Vec<Box<dyn rusqlite::ToSql>> =
                vec![Box::new(after), Box::new(limit as i64), Box::new(sink)];
            params.extend(
                routes
                    .into_iter()
                    .map(|r| Box::new(r) as Box<dyn rusqlite::ToSql>),
            );
            let (events, cut) = {
                let mut stmt = tx.prepare_cached(&sql)?;
                let mut rows = stmt.query_map(rusqlite::params_from_iter(params.iter()), |r| {
                    Ok(StoredEvent {
                        seq: r.get(0)?,
                        id: r.get(1)?,
                        event_type: r.get(2)?,
                        payload: r.get(3)?,
                    })
                })?;
                let (mut events, mut bytes, mut cut) = (Vec::new(), 0u64, false);
                for row in rows.by_ref() {
                    let event = row?;
                    let size = event.payload.len() as u64 + 1;
                    if !events.is_empty() && bytes.saturating_add(size) > max_bytes {
                        cut = true;
                        break;
                    }
                    bytes = bytes.saturating_add(size);
                    events.push(event);
                }
                (events, cut)
            };
            let upto = if cut || events.len() >= limit {
                events.last().map_or(after, |e| e.seq)
            } else {
                let high: i64 = tx
                    .prepare_cached("SELECT COALESCE(MAX(seq), 0) FROM events")?
                    .query_row([], |r| r.get(0))?;
                high.max(after)
            };
            tx.commit()?;
            Ok(Fetched { events, upto })
        })
        .await
    }

    /// Dead letters recorded for `sink`: (seq, id, reason).
    ///
    /// # Errors
    /// The read failed.
    pub async fn dead_letters(&self, sink: &str) -> Result<Vec<(i64, String, String)>, StoreError> {
        let sink = sink.to_owned();
        self.with(move |conn| {
            let mut stmt = conn
                .prepare("SELECT seq, id, reason FROM dead_letters WHERE sink = ?1 ORDER BY seq")?;
            let rows = stmt.query_map([sink], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
            rows.collect()
        })
        .await
    }

    /// Events still in the outbox.
    ///
    /// # Errors
    /// The read failed.
    pub async fn count(&self) -> Result<i64, StoreError> {
        self.with(|conn| conn.query_row("SELECT COUNT(*) FROM events", [], |r| r.get(0)))
            .await
    }
}
