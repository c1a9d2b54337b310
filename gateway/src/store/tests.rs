use std::time::SystemTime;

use serde_json::json;

use super::*;
use crate::event::CloudEvent;

fn options(sinks: &[&str]) -> StoreOptions {
    StoreOptions {
        max_bytes: 64 << 20,
        max_batch: 64,
        sinks: sinks.iter().map(|s| (*s).to_owned()).collect(),
    }
}

fn event(event_type: &str, n: u64) -> CloudEvent {
    CloudEvent::new(
        "gw",
        "press1",
        event_type,
        "press1",
        SystemTime::now(),
        json!({ "n": n }),
    )
}

fn routes(r: &[&str]) -> Vec<String> {
    r.iter().map(|s| (*s).to_owned()).collect()
}

#[tokio::test]
async fn appended_events_come_back_in_order_per_sink_with_their_ids() {
    let dir = tempfile::tempdir().unwrap();
    let (store, writer) = Store::open(&dir.path().join("b.db"), options(&["erp", "qms"])).unwrap();
    let events: Vec<CloudEvent> = (0..5)
        .map(|n| {
            event(
                if n % 2 == 0 {
                    "production.count"
                } else {
                    "quality.measurement"
                },
                n,
            )
        })
        .collect();
    store.append(events.clone(), vec![]).await.unwrap();
    let reader = store.reader().unwrap();
    let erp = reader
        .fetch(0, &routes(&["production.*"]), 10)
        .await
        .unwrap();
    assert_eq!(
        erp.events.iter().map(|e| e.id.clone()).collect::<Vec<_>>(),
        vec![
            events[0].id.clone(),
            events[2].id.clone(),
            events[4].id.clone()
        ]
    );
    assert_eq!(erp.upto, 5);
    let parsed: CloudEvent = serde_json::from_str(&erp.events[1].payload).unwrap();
    assert_eq!(
        parsed, events[2],
        "the stored payload is the event, byte for byte"
    );
    let limited = reader.fetch(0, &routes(&["*"]), 2).await.unwrap();
    assert_eq!(limited.events.len(), 2);
    assert_eq!(
        limited.upto, 2,
        "a full batch moves the cursor only to its last event"
    );
    drop((store, reader));
    writer.join();
}

#[tokio::test]
async fn cursors_are_independent_and_delivered_rows_are_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let (store, writer) = Store::open(&dir.path().join("b.db"), options(&["erp", "qms"])).unwrap();
    store
        .append(
            (0..4).map(|n| event("production.count", n)).collect(),
            vec![],
        )
        .await
        .unwrap();
    let reader = store.reader().unwrap();
    store.ack("erp", 4).await.unwrap();
    assert_eq!(reader.cursor("erp").await.unwrap(), 4);
    assert_eq!(
        reader.cursor("qms").await.unwrap(),
        0,
        "one sink's progress never moves another's"
    );
    assert_eq!(
        reader.count().await.unwrap(),
        4,
        "rows stay until every sink has them"
    );
    store.ack("qms", 2).await.unwrap();
    assert_eq!(reader.count().await.unwrap(), 2);
    store.ack("erp", 1).await.unwrap();
    assert_eq!(
        reader.cursor("erp").await.unwrap(),
        4,
        "a cursor never moves back"
    );
    drop((store, reader));
    writer.join();
}

#[tokio::test]
async fn sequence_numbers_are_never_reused_after_everything_was_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("b.db");
    let (store, writer) = Store::open(&path, options(&["erp"])).unwrap();
    store
        .append(
            vec![event("production.count", 1), event("production.count", 2)],
            vec![],
        )
        .await
        .unwrap();
    store.ack("erp", 2).await.unwrap();
    drop(store);
    writer.join();
    let (store, writer) = Store::open(&path, options(&["erp"])).unwrap();
    let reader = store.reader().unwrap();
    assert_eq!(reader.count().await.unwrap(), 0);
    store
        .append(vec![event("production.count", 3)], vec![])
        .await
        .unwrap();
    let fetched = reader.fetch(2, &routes(&["*"]), 10).await.unwrap();
    assert_eq!(fetched.events.len(), 1, "the new event is after the cursor");
    assert_eq!(fetched.events[0].seq, 3);
    drop((store, reader));
    writer.join();
}

#[tokio::test]
async fn events_and_rule_state_survive_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("b.db");
    let (store, writer) = Store::open(&path, options(&["erp"])).unwrap();
    let e = event("production.count", 7);
    store
        .append(
            vec![e.clone()],
            vec![("counter-press1".into(), json!({ "total": 42 }))],
        )
        .await
        .unwrap();
    drop(store);
    writer.join();
    let (store, writer) = Store::open(&path, options(&["erp"])).unwrap();
    assert_eq!(
        store.rule_state().unwrap(),
        vec![("counter-press1".to_owned(), json!({ "total": 42 }))]
    );
    let fetched = store
        .reader()
        .unwrap()
        .fetch(0, &routes(&["*"]), 10)
        .await
        .unwrap();
    assert_eq!(fetched.events[0].id, e.id);
    drop(store);
    writer.join();
}

#[tokio::test]
async fn a_failing_write_fails_alone_and_leaves_its_group_committed() {
    let dir = tempfile::tempdir().unwrap();
    let (store, writer) = Store::open(&dir.path().join("b.db"), options(&["erp"])).unwrap();
    let e = event("production.count", 1);
    store.append(vec![e.clone()], vec![]).await.unwrap();
    let duplicate = store.append(
        vec![event("production.count", 2), e.clone()],
        vec![("r".into(), json!(1))],
    );
    let fine = store.append(vec![event("production.count", 3)], vec![]);
    let (duplicate, fine) = tokio::join!(duplicate, fine);
    assert!(duplicate.is_err(), "an id is unique");
    fine.unwrap();
    let reader = store.reader().unwrap();
    assert_eq!(
        reader.count().await.unwrap(),
        2,
        "the failed append left nothing behind"
    );
    assert!(store.rule_state().unwrap().is_empty(), "nor its rule state");
    drop((store, reader));
    writer.join();
}

#[tokio::test]
async fn the_oldest_events_are_dropped_and_counted_past_max_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = options(&["erp"]);
    opts.max_bytes = 1 << 20;
    let (store, writer) = Store::open(&dir.path().join("b.db"), opts).unwrap();
    let big = "x".repeat(2000);
    for chunk in 0..10 {
        let events = (0..100)
            .map(|n| {
                CloudEvent::new(
                    "gw",
                    "m",
                    "telemetry.sample",
                    "m",
                    SystemTime::now(),
                    json!({ "n": chunk * 100 + n, "pad": big }),
                )
            })
            .collect();
        store.append(events, vec![]).await.unwrap();
    }
    let dropped = store
        .stats()
        .dropped
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(dropped > 0, "2 MB of events do not fit in 1 MiB");
    let reader = store.reader().unwrap();
    let left = reader.count().await.unwrap();
    assert_eq!(
        left as u64 + dropped,
        1000,
        "every event is either kept or counted as dropped"
    );
    let first = reader.fetch(0, &routes(&["*"]), 1).await.unwrap();
    assert_eq!(
        first.events[0].seq,
        dropped as i64 + 1,
        "the oldest went first"
    );
    drop((store, reader));
    writer.join();
}

#[tokio::test]
async fn dead_letters_keep_the_event_and_the_reason_and_move_the_cursor() {
    let dir = tempfile::tempdir().unwrap();
    let (store, writer) = Store::open(&dir.path().join("b.db"), options(&["erp"])).unwrap();
    store
        .append(vec![event("production.count", 1)], vec![])
        .await
        .unwrap();
    let reader = store.reader().unwrap();
    let batch = reader.fetch(0, &routes(&["*"]), 10).await.unwrap();
    store
        .dead_letter("erp", &batch.events, "HTTP 422: bad machine", batch.upto)
        .await
        .unwrap();
    assert_eq!(reader.cursor("erp").await.unwrap(), 1);
    let dead = reader.dead_letters("erp").await.unwrap();
    assert_eq!(
        dead,
        vec![(
            1,
            batch.events[0].id.clone(),
            "HTTP 422: bad machine".to_owned()
        )]
    );
    drop((store, reader));
    writer.join();
}

#[test]
fn durability_pragmas_are_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let conn = connect(&dir.path().join("b.db")).unwrap();
    let mode: String = conn
        .pragma_query_value(None, "journal_mode", |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    let sync: i64 = conn
        .pragma_query_value(None, "synchronous", |r| r.get(0))
        .unwrap();
    assert_eq!(sync, 2);
}

#[test]
fn a_buffer_from_a_newer_version_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("b.db");
    Connection::open(&path)
        .unwrap()
        .pragma_update(None, "user_version", 99)
        .unwrap();
    let error = Store::open(&path, options(&[])).unwrap_err();
    assert!(
        matches!(error, StoreError::TooNew { found: 99, .. }),
        "{error}"
    );
}
