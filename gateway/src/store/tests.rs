use std::{path::Path, sync::atomic::Ordering, time::SystemTime};

use serde_json::json;

use super::*;
use crate::event::CloudEvent;

fn options(path: &Path, sinks: &[&str]) -> StoreOptions {
    StoreOptions {
        gateway_id: "gw".to_owned(),
        max_bytes: 64 << 20,
        max_batch: 64,
        ..StoreOptions::new(path.to_owned(), sinks)
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
async fn a_sinks_fetch_holds_no_more_than_its_byte_cap_and_always_one_event() {
    let dir = tempfile::tempdir().unwrap();
    let (store, writer) = Store::open(options(&dir.path().join("b.db"), &["erp"])).unwrap();
    // Ten events of about 10 KiB each, then one of about 100 KiB.
    let mut events: Vec<CloudEvent> = (0..10)
        .map(|n| {
            let mut e = event("telemetry.sample", n);
            e.data = json!({ "pad": "x".repeat(10_000) });
            e
        })
        .collect();
    let mut big = event("telemetry.sample", 10);
    big.data = json!({ "pad": "y".repeat(100_000) });
    events.push(big);
    store.append(events, vec![]).await.unwrap();
    let reader = store.reader().unwrap();
    let all = routes(&["*"]);
    let size = reader.fetch("erp", 0, &all, 1).await.unwrap().events[0]
        .payload
        .len() as u64
        + 1;
    // Room for three and a half: three, and the cursor may move only past the third.
    let part = reader
        .fetch_bounded("erp", 0, &all, 1_000, size * 7 / 2)
        .await
        .unwrap();
    assert_eq!(part.events.len(), 3);
    assert_eq!(
        part.upto, part.events[2].seq,
        "the rest is fetched next time"
    );
    // An event larger than the cap alone still comes, alone.
    let alone = reader
        .fetch_bounded("erp", 10, &all, 1_000, size)
        .await
        .unwrap();
    assert_eq!(alone.events.len(), 1);
    assert!(alone.events[0].payload.len() > 100_000);
    assert_eq!(alone.upto, 11);
    drop((store, reader));
    writer.join();
}

#[tokio::test]
async fn appended_events_come_back_in_order_per_sink_with_their_ids() {
    let dir = tempfile::tempdir().unwrap();
    let (store, writer) = Store::open(options(&dir.path().join("b.db"), &["erp", "qms"])).unwrap();
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
        .fetch("erp", 0, &routes(&["production.*"]), 10)
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
    let limited = reader.fetch("erp", 0, &routes(&["*"]), 2).await.unwrap();
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
    let (store, writer) = Store::open(options(&dir.path().join("b.db"), &["erp", "qms"])).unwrap();
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
    let (store, writer) = Store::open(options(&path, &["erp"])).unwrap();
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
    let (store, writer) = Store::open(options(&path, &["erp"])).unwrap();
    let reader = store.reader().unwrap();
    assert_eq!(reader.count().await.unwrap(), 0);
    store
        .append(vec![event("production.count", 3)], vec![])
        .await
        .unwrap();
    let fetched = reader.fetch("erp", 2, &routes(&["*"]), 10).await.unwrap();
    assert_eq!(fetched.events.len(), 1, "the new event is after the cursor");
    assert_eq!(fetched.events[0].seq, 3);
    drop((store, reader));
    writer.join();
}

#[tokio::test]
async fn events_and_rule_state_survive_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("b.db");
    let (store, writer) = Store::open(options(&path, &["erp"])).unwrap();
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
    let (store, writer) = Store::open(options(&path, &["erp"])).unwrap();
    assert_eq!(
        store.rule_state().unwrap(),
        vec![("counter-press1".to_owned(), json!({ "total": 42 }))]
    );
    let fetched = store
        .reader()
        .unwrap()
        .fetch("erp", 0, &routes(&["*"]), 10)
        .await
        .unwrap();
    assert_eq!(fetched.events[0].id, e.id);
    drop(store);
    writer.join();
}

#[tokio::test]
async fn a_failing_write_fails_alone_and_leaves_its_group_committed() {
    let dir = tempfile::tempdir().unwrap();
    let (store, writer) = Store::open(options(&dir.path().join("b.db"), &["erp"])).unwrap();
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
    let mut opts = options(&dir.path().join("b.db"), &["erp"]);
    opts.max_bytes = 1 << 20;
    let (store, writer) = Store::open(opts).unwrap();
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
    let first = reader.fetch("erp", 0, &routes(&["*"]), 1).await.unwrap();
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
    let (store, writer) = Store::open(options(&dir.path().join("b.db"), &["erp"])).unwrap();
    store
        .append(vec![event("production.count", 1)], vec![])
        .await
        .unwrap();
    let reader = store.reader().unwrap();
    let batch = reader.fetch("erp", 0, &routes(&["*"]), 10).await.unwrap();
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
    let error = Store::open(options(&path, &[])).unwrap_err();
    assert!(
        matches!(error, StoreError::TooNew { found: 99, .. }),
        "{error}"
    );
}

/// `n` events of `event_type` whose payloads are exactly `bytes` long each.
fn sized(event_type: &str, n: usize, bytes: usize) -> Vec<CloudEvent> {
    (0..n)
        .map(|_| {
            let mut e = CloudEvent::new(
                "gw",
                "m",
                event_type,
                "m",
                SystemTime::now(),
                json!({ "pad": "" }),
            );
            let base = serde_json::to_string(&e).unwrap().len();
            e.data = json!({ "pad": "x".repeat(bytes - base) });
            assert_eq!(serde_json::to_string(&e).unwrap().len(), bytes);
            e
        })
        .collect()
}

/// Everything after the `erp` cursor, up to 1000 events.
async fn undelivered(reader: &Reader) -> Fetched {
    let cursor = reader.cursor("erp").await.unwrap();
    reader
        .fetch("erp", cursor, &routes(&["*"]), 1000)
        .await
        .unwrap()
}

fn drops(store: &Store) -> Vec<(String, &'static str, u64)> {
    store.stats().drops()
}

#[tokio::test]
async fn drops_remove_exactly_as_many_whole_events_as_needed_and_never_from_the_committing_group() {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = options(&dir.path().join("b.db"), &["erp"]);
    opts.max_bytes = 1 << 20;
    let (store, writer) = Store::open(opts).unwrap();
    // One group alone larger than the limit, into an empty buffer: nothing older to evict, and
    // the group's own events are never dropped by it (before: deleted right after commit).
    let first = sized("production.count", 600, 2000);
    store.append(first.clone(), vec![]).await.unwrap();
    let reader = store.reader().unwrap();
    assert_eq!(reader.count().await.unwrap(), 600);
    assert_eq!(store.stats().dropped.load(Ordering::Relaxed), 0);
    // 1,200,000 stored + 10 x 2000 new; 1 MiB = 1,048,576: 171,424 bytes must go, which is
    // exactly 86 whole events of 2000 bytes (before: at least 100 at a time).
    store
        .append(sized("production.count", 10, 2000), vec![])
        .await
        .unwrap();
    assert_eq!(store.stats().dropped.load(Ordering::Relaxed), 86);
    assert_eq!(reader.count().await.unwrap(), 600 - 86 + 10);
    let head = reader.fetch("erp", 0, &routes(&["*"]), 1).await.unwrap();
    assert_eq!(head.events[0].id, first[86].id, "the oldest went first");
    assert_eq!(
        drops(&store),
        vec![("production.count".to_owned(), "drop_oldest", 86)]
    );
    drop((store, reader));
    writer.join();
}

#[tokio::test]
async fn dead_letters_do_not_count_against_max_bytes_and_have_their_own_cap() {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = options(&dir.path().join("b.db"), &["erp"]);
    opts.max_bytes = 1 << 20;
    opts.max_dead_bytes = 100_000;
    let (store, writer) = Store::open(opts).unwrap();
    let reader = store.reader().unwrap();
    // 900 KB of events, all refused by the receiver.
    for _ in 0..9 {
        store
            .append(sized("quality.measurement", 50, 2000), vec![])
            .await
            .unwrap();
        let batch = undelivered(&reader).await;
        store
            .dead_letter("erp", &batch.events, "HTTP 422", batch.upto)
            .await
            .unwrap();
    }
    // The dead letters hold the newest 100,000 bytes: 50 events; the other 400 were evicted,
    // oldest first, and counted.
    let dead = reader.dead_letters("erp").await.unwrap();
    assert_eq!(dead.len(), 50);
    assert_eq!(dead[0].0, 401, "the oldest dead letters went first");
    assert_eq!(store.stats().dead_evicted.load(Ordering::Relaxed), 400);
    // New events are not dropped for the dead letters' sake (before: every new event was
    // deleted right after its commit once dead letters outgrew max_bytes).
    store
        .append(sized("quality.measurement", 100, 2000), vec![])
        .await
        .unwrap();
    assert_eq!(reader.count().await.unwrap(), 100);
    assert_eq!(store.stats().dropped.load(Ordering::Relaxed), 0);
    assert_eq!(
        drops(&store),
        vec![("quality.measurement".to_owned(), "dead_letter_evicted", 400)]
    );
    drop((store, reader));
    writer.join();
}

#[tokio::test]
async fn a_full_buffer_evicts_telemetry_first_and_quality_last() {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = options(&dir.path().join("b.db"), &["erp"]);
    opts.max_bytes = 1 << 20;
    let (store, writer) = Store::open(opts).unwrap();
    store
        .append(sized("quality.measurement", 100, 2000), vec![])
        .await
        .unwrap();
    store
        .append(sized("production.count", 200, 2000), vec![])
        .await
        .unwrap();
    store
        .append(sized("telemetry.sample", 100, 2000), vec![])
        .await
        .unwrap();
    store
        .append(sized("production.state", 100, 2000), vec![])
        .await
        .unwrap();
    // 1,000,000 stored; 200,000 more needs 151,424: all 100 telemetry (200,000) would be more
    // than needed, so 76 of them go, then nothing else.
    store
        .append(sized("quality.measurement", 100, 2000), vec![])
        .await
        .unwrap();
    assert_eq!(
        drops(&store),
        vec![("telemetry.sample".to_owned(), "buffer_full", 76)]
    );
    // Next: 24 telemetry left (48,000), then production (oldest first) before any quality.
    store
        .append(sized("quality.measurement", 100, 2000), vec![])
        .await
        .unwrap();
    let dropped = drops(&store);
    assert_eq!(
        dropped,
        vec![
            ("production.count".to_owned(), "drop_oldest", 76),
            ("telemetry.sample".to_owned(), "buffer_full", 100),
        ]
    );
    let reader = store.reader().unwrap();
    let all = reader
        .fetch("erp", 0, &routes(&["*"]), 10_000)
        .await
        .unwrap();
    let quality = all
        .events
        .iter()
        .filter(|e| e.event_type == "quality.measurement")
        .count();
    assert_eq!(quality, 300, "no quality event was evicted");
    drop((store, reader));
    writer.join();
}

#[tokio::test]
async fn drop_newest_refuses_the_new_events_and_block_sources_refuses_the_append() {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = options(&dir.path().join("newest.db"), &["erp"]);
    opts.max_bytes = 1 << 20;
    opts.when_full = WhenFull::DropNewest;
    let (store, writer) = Store::open(opts).unwrap();
    let kept = sized("production.count", 500, 2000);
    store.append(kept.clone(), vec![]).await.unwrap();
    store
        .append(
            sized("production.count", 100, 2000),
            vec![("r".into(), json!({"total": 7}))],
        )
        .await
        .unwrap();
    // 1,000,000 + 200,000 > 1,048,576: 76 of the new ones are refused.
    assert_eq!(
        drops(&store),
        vec![("production.count".to_owned(), "drop_newest", 76)]
    );
    let reader = store.reader().unwrap();
    assert_eq!(reader.count().await.unwrap(), 524);
    let head = reader.fetch("erp", 0, &routes(&["*"]), 1).await.unwrap();
    assert_eq!(head.events[0].id, kept[0].id, "what was stored stays");
    assert_eq!(
        store.rule_state().unwrap(),
        vec![("r".to_owned(), json!({"total": 7}))]
    );
    drop((store, reader));
    writer.join();

    let mut opts = options(&dir.path().join("block.db"), &["erp"]);
    opts.max_bytes = 1 << 20;
    opts.when_full = WhenFull::BlockSources;
    let (store, writer) = Store::open(opts).unwrap();
    store
        .append(sized("production.count", 500, 2000), vec![])
        .await
        .unwrap();
    let refused = store
        .append(sized("production.count", 100, 2000), vec![])
        .await;
    let error = refused.unwrap_err();
    assert!(matches!(error, StoreError::Full { .. }), "{error}");
    assert!(error.to_string().contains("block_sources"), "{error}");
    let reader = store.reader().unwrap();
    assert_eq!(
        reader.count().await.unwrap(),
        500,
        "nothing dropped, nothing added"
    );
    // The receiver takes 200: room again.
    let batch = reader.fetch("erp", 0, &routes(&["*"]), 200).await.unwrap();
    store.ack("erp", batch.upto).await.unwrap();
    store
        .append(sized("production.count", 100, 2000), vec![])
        .await
        .unwrap();
    assert_eq!(reader.count().await.unwrap(), 400);
    assert!(drops(&store).is_empty());
    drop((store, reader));
    writer.join();
}

#[tokio::test]
async fn events_older_than_max_age_are_dropped_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("b.db");
    let (store, writer) = Store::open(options(&path, &["erp"])).unwrap();
    store
        .append(sized("production.count", 3, 500), vec![])
        .await
        .unwrap();
    drop(store);
    writer.join();
    std::thread::sleep(std::time::Duration::from_millis(20));
    let mut opts = options(&path, &["erp"]);
    opts.max_age = Some(std::time::Duration::from_millis(10));
    let (store, writer) = Store::open(opts).unwrap();
    // The writer checks at start; wait for it through a write.
    store.ack("erp", 0).await.unwrap();
    let reader = store.reader().unwrap();
    assert_eq!(reader.count().await.unwrap(), 0);
    assert_eq!(
        drops(&store),
        vec![("production.count".to_owned(), "max_age", 3)]
    );
    drop((store, reader));
    writer.join();
}

#[tokio::test]
async fn a_corrupt_or_truncated_buffer_is_moved_aside_and_the_receivers_are_told() {
    for damage in ["garbage", "truncated"] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("buffer.db");
        if damage == "garbage" {
            std::fs::write(&path, vec![0x5a; 8192]).unwrap();
        } else {
            let (store, writer) = Store::open(options(&path, &["erp"])).unwrap();
            store
                .append(sized("production.count", 400, 2000), vec![])
                .await
                .unwrap();
            drop(store);
            writer.join();
            let len = std::fs::metadata(&path).unwrap().len();
            let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
            file.set_len(len / 2).unwrap();
        }
        // Before: "file is not a database" and exit 1, a crash loop under systemd.
        let (store, writer) = Store::open(options(&path, &["erp"])).unwrap();
        let aside: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.starts_with("buffer.db.corrupt-"))
            .collect();
        assert_eq!(aside.len(), 1, "{damage}: {aside:?}");
        let reader = store.reader().unwrap();
        // Routed to every sink, whatever its routes (the config check adds `gateway.*`).
        let fetched = reader
            .fetch("erp", 0, &routes(&["quality.*", "gateway.*"]), 10)
            .await
            .unwrap();
        assert_eq!(fetched.events.len(), 1, "{damage}");
        let event: CloudEvent = serde_json::from_str(&fetched.events[0].payload).unwrap();
        assert_eq!(event.event_type, "gateway.buffer_reset");
        assert_eq!(event.source, "causeway://gw/gateway");
        assert!(
            event.data["moved_to"]
                .as_str()
                .unwrap()
                .ends_with(&aside[0]),
            "{event:?}"
        );
        store
            .append(sized("production.count", 1, 500), vec![])
            .await
            .unwrap();
        assert_eq!(
            reader.count().await.unwrap(),
            2,
            "{damage}: the fresh buffer works"
        );
        drop((store, reader));
        writer.join();
    }
}

#[cfg(unix)]
#[tokio::test]
async fn the_buffer_and_its_wal_files_are_private_to_the_gateway_user() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("b.db");
    let (store, writer) = Store::open(options(&path, &["erp"])).unwrap();
    store
        .append(sized("production.count", 1, 500), vec![])
        .await
        .unwrap();
    for file in ["b.db", "b.db-wal", "b.db-shm"] {
        let mode = std::fs::metadata(dir.path().join(file))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{file}: {mode:o}");
    }
    drop(store);
    writer.join();
    // An existing buffer readable by others is reported (and logged at start), not changed.
    let shared = dir.path().join("shared.db");
    std::fs::write(&shared, b"").unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o644)).unwrap();
    assert_eq!(secure_file(&shared).unwrap(), Some(0o644));
    assert_eq!(secure_file(&path).unwrap(), None, "ours is private");
}

#[tokio::test]
async fn a_full_disk_refuses_the_write_names_the_file_loses_nothing_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("b.db");
    let (store, writer) = Store::open(options(&path, &["erp"])).unwrap();
    let accepted = sized("production.count", 10, 1000);
    store.append(accepted.clone(), vec![]).await.unwrap();
    let reader = store.reader().unwrap();
    let pages: i64 = {
        let conn = connect(&path).unwrap();
        conn.pragma_query_value(None, "page_count", |r| r.get(0))
            .unwrap()
    };
    store.limit_pages(pages as u64).await.unwrap();
    let error = store
        .append(sized("production.count", 200, 4000), vec![])
        .await
        .unwrap_err();
    let text = crate::error_chain(&error);
    assert!(text.contains("is full") && text.contains("b.db"), "{text}");
    assert_eq!(
        reader.count().await.unwrap(),
        10,
        "what was accepted is intact"
    );
    // Space returns: the same write goes through.
    store.limit_pages(1 << 30).await.unwrap();
    store
        .append(sized("production.count", 200, 4000), vec![])
        .await
        .unwrap();
    let all = reader.fetch("erp", 0, &routes(&["*"]), 1000).await.unwrap();
    assert_eq!(all.events.len(), 210);
    assert_eq!(
        all.events[..10]
            .iter()
            .map(|e| e.id.clone())
            .collect::<Vec<_>>(),
        accepted.iter().map(|e| e.id.clone()).collect::<Vec<_>>()
    );
    drop((store, reader));
    writer.join();
}

#[tokio::test]
async fn the_upgrade_keeps_the_sequence_so_no_cursor_skips_a_new_event() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("b.db");
    {
        // A buffer as the first release left it: five events, all delivered and deleted.
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(MIGRATIONS[0]).unwrap();
        conn.pragma_update(None, "user_version", 1).unwrap();
        for n in 0..5 {
            conn.execute(
                "INSERT INTO events (id, type, payload, created_at) VALUES (?1, 'production.count', '{}', 0)",
                [format!("e{n}")],
            )
            .unwrap();
        }
        conn.execute("DELETE FROM events", []).unwrap();
        conn.execute(
            "INSERT INTO cursors (sink, acked_seq) VALUES ('erp', 5)",
            [],
        )
        .unwrap();
    }
    let (store, writer) = Store::open(options(&path, &["erp"])).unwrap();
    store
        .append(sized("production.count", 1, 500), vec![])
        .await
        .unwrap();
    let reader = store.reader().unwrap();
    let fetched = reader.fetch("erp", 5, &routes(&["*"]), 10).await.unwrap();
    assert_eq!(fetched.events.len(), 1);
    assert_eq!(fetched.events[0].seq, 6);
    drop((store, reader));
    writer.join();
}

#[tokio::test]
async fn the_file_stops_growing_under_a_steady_load_that_is_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("b.db");
    let (store, writer) = Store::open(options(&path, &["erp"])).unwrap();
    let reader = store.reader().unwrap();
    let mut sizes = Vec::new();
    for round in 0..60 {
        store
            .append(sized("production.count", 50, 2000), vec![])
            .await
            .unwrap();
        let batch = undelivered(&reader).await;
        store.ack("erp", batch.upto).await.unwrap();
        if round % 10 == 9 {
            let conn = connect(&path).unwrap();
            let pages: i64 = conn
                .pragma_query_value(None, "page_count", |r| r.get(0))
                .unwrap();
            // The audit trail's ids of delivered events grow for their retention, by design.
            let audit: i64 = conn
                .query_row(
                    "SELECT COUNT(*) FROM dbstat WHERE name IN ('event_ids', 'event_ids_by_id', 'event_ids_by_age', 'audit', 'audit_by_sink', 'audit_by_age', 'audit_by_seq')",
                    [],
                    |r| r.get(0),
                )
                .unwrap();
            sizes.push(pages - audit);
        }
    }
    // Deleted rows' pages are reused: after the first rounds the file does not grow (the
    // audit ids, which do grow, share the freed pages: a page either way).
    let settled = &sizes[1..];
    let (low, high) = (settled.iter().min().unwrap(), settled.iter().max().unwrap());
    assert!(high - low <= 2, "{sizes:?}");
    assert!(sizes[5] <= sizes[1] + 1, "{sizes:?}");
    assert_eq!(reader.count().await.unwrap(), 0);
    drop((store, reader));
    writer.join();
}

#[tokio::test]
async fn events_stamped_by_a_clock_not_yet_set_are_not_expired() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("b.db");
    let (store, writer) = Store::open(options(&path, &["erp"])).unwrap();
    store
        .append(sized("production.count", 3, 500), vec![])
        .await
        .unwrap();
    drop(store);
    writer.join();
    // As a box without a real-time clock stamps them before NTP: 1970.
    Connection::open(&path)
        .unwrap()
        .execute("UPDATE events SET created_at = 5000", [])
        .unwrap();
    let mut opts = options(&path, &["erp"]);
    opts.max_age = Some(std::time::Duration::from_secs(3600));
    let (store, writer) = Store::open(opts).unwrap();
    store.ack("erp", 0).await.unwrap();
    let reader = store.reader().unwrap();
    assert_eq!(
        reader.count().await.unwrap(),
        3,
        "their age is unknown: kept"
    );
    assert!(drops(&store).is_empty());
    drop((store, reader));
    writer.join();
}

#[tokio::test]
async fn the_writer_resyncs_its_books_when_the_buffer_cli_changed_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("b.db");
    let mut opts = options(&path, &["erp"]);
    opts.max_dead_bytes = 100_000;
    let (store, writer) = Store::open(opts).unwrap();
    let reader = store.reader().unwrap();
    let refuse_all = |n: usize| {
        let (store, reader) = (store.clone(), reader.clone());
        async move {
            store
                .append(sized("quality.measurement", n, 2000), vec![])
                .await
                .unwrap();
            let batch = undelivered(&reader).await;
            store
                .dead_letter("erp", &batch.events, "HTTP 422", batch.upto)
                .await
                .unwrap();
        }
    };
    refuse_all(50).await; // the dead letters are at their cap
    // While the gateway runs, an operator looks, then purges them from another connection.
    let mut admin = admin::open_existing(&path).unwrap();
    let stats = admin::stats(&admin, &[("erp".to_owned(), vec!["*".to_owned()])]).unwrap();
    assert_eq!(
        stats["dead_letters"], 50,
        "read-only commands work while it runs"
    );
    assert_eq!(admin::purge(&admin, None).unwrap(), 50);
    // Before: the writer still counted 100,000 dead bytes and evicted each new dead letter on
    // arrival.
    refuse_all(10).await;
    assert_eq!(reader.dead_letters("erp").await.unwrap().len(), 10);
    assert_eq!(store.stats().dead_evicted.load(Ordering::Relaxed), 0);
    // A requeue from the CLI: the requeued rows count toward max_bytes and wake the sinks.
    let mut woken = store.appended();
    woken.borrow_and_update();
    assert_eq!(admin::requeue(&mut admin, Some("erp"), None).unwrap(), 10);
    store.ack("erp", 0).await.unwrap(); // any write lets the writer look
    assert!(woken.has_changed().unwrap(), "the sinks are told");
    let cursor = reader.cursor("erp").await.unwrap();
    let again = reader
        .fetch("erp", cursor, &routes(&["quality.*"]), 100)
        .await
        .unwrap();
    assert_eq!(again.events.len(), 10);
    drop((store, reader, admin));
    writer.join();
}

#[tokio::test]
async fn the_audit_trail_keeps_attempts_for_its_retention_only() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("b.db");
    let (store, writer) = Store::open(StoreOptions {
        audit_retention: std::time::Duration::from_secs(3600),
        ..options(&path, &["erp"])
    })
    .unwrap();
    let attempt = |age_ms: i64| Attempt {
        sink: "erp".into(),
        at_ms: now_ms() - age_ms,
        duration_ms: 1,
        first_seq: 1,
        last_seq: 1,
        first_id: "a".into(),
        last_id: "a".into(),
        events: 1,
        target: String::new(),
        outcome: "delivered",
        status: String::new(),
        response: String::new(),
    };
    // The first write prunes (nothing pruned yet this run): the 2 h old attempt goes.
    store.audit(attempt(2 * 3_600_000)).await.unwrap();
    store.audit(attempt(60_000)).await.unwrap();
    let conn = admin::open_existing(&path).unwrap();
    let kept = admin::audit(&conn, None, None, 100).unwrap();
    assert_eq!(kept.len(), 1, "{kept:?}");
    drop(store);
    writer.join();
}

#[tokio::test]
async fn the_audit_trail_has_a_size_bound_too() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("b.db");
    let attempt = |n: i64| Attempt {
        sink: "erp".into(),
        at_ms: now_ms(),
        duration_ms: 1,
        first_seq: n,
        last_seq: n,
        first_id: format!("id-{n}"),
        last_id: format!("id-{n}"),
        events: 1,
        target: String::new(),
        outcome: "delivered",
        status: String::new(),
        response: String::new(),
    };
    // 1 MiB: half of it for attempts, at 300 bytes each: 1,747.
    let bounded = || StoreOptions {
        max_audit_bytes: 1 << 20,
        ..options(&path, &["erp"])
    };
    {
        let (store, writer) = Store::open(bounded()).unwrap();
        for n in 0..2_000 {
            store.audit(attempt(n)).await.unwrap();
        }
        drop(store);
        writer.join();
    }
    // The next run's first write prunes.
    let (store, writer) = Store::open(bounded()).unwrap();
    store.audit(attempt(2_000)).await.unwrap();
    let conn = admin::open_existing(&path).unwrap();
    let kept = admin::audit(&conn, None, None, 10_000).unwrap();
    // Pruned after the write that came with it: the newest 1,747.
    assert_eq!(kept.len(), 1_747);
    assert_eq!(kept.last().unwrap()["first_id"], "id-2000");
    assert_eq!(kept[0]["first_id"], "id-254", "the oldest went");
    drop(store);
    writer.join();
}

#[tokio::test]
async fn audit_id_tells_a_requeued_event_pending_from_one_passed_without_a_record() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("b.db");
    let (store, writer) = Store::open(options(&path, &["erp"])).unwrap();
    let made = vec![event("production.count", 1), event("production.count", 2)];
    store.append(made.clone(), vec![]).await.unwrap();
    let reader = store.reader().unwrap();
    let batch = reader.fetch("erp", 0, &routes(&["*"]), 10).await.unwrap();
    for e in &batch.events {
        store
            .dead_letter("erp", std::slice::from_ref(e), "HTTP 422: no", e.seq)
            .await
            .unwrap();
    }
    let sinks = [firmware_config::SinkConfig {
        name: "erp".into(),
        routes: routes(&["*"]),
        batch_size: 10,
        max_batch_bytes: 1 << 20,
        breaker_failures: 5,
        breaker_open: std::time::Duration::from_secs(30),
        rate_limit: None,
        kind: firmware_config::SinkKind::Stdout,
    }];
    let mut conn = admin::open_existing(&path).unwrap();
    let status = |conn: &rusqlite::Connection, id: &str| {
        admin::audit_event(conn, id, &sinks).unwrap()["sinks"][0]["status"].clone()
    };
    assert_eq!(status(&conn, &made[0].id), "dead_letter");
    admin::requeue(&mut conn, Some("erp"), Some(&made[0].id)).unwrap();
    admin::purge(&conn, Some("erp")).unwrap();
    // Before: both "delivered_no_record", though neither was ever delivered.
    assert_eq!(status(&conn, &made[0].id), "pending", "requeued, to come");
    assert_eq!(
        status(&conn, &made[1].id),
        "passed_no_record",
        "dead-lettered and purged"
    );
    drop((store, reader));
    writer.join();
}
