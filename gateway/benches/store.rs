//! Store benchmarks (issue 6), one command: events accepted per second with FULL durability
//! through group commit, then the drain of that backlog to the local HTTPS receiver, with the
//! process's peak RSS while draining.
//!
//! `cargo bench -p gateway --bench store` (`CAUSEWAY_BENCH_EVENTS`, default 1000000).

use std::time::{Duration, Instant, SystemTime};

use firmware_config::{HttpsSinkConfig, SinkConfig, SinkKind};
use gateway::{
    demo::receiver::Receiver,
    event::CloudEvent,
    sinks::{HttpsSink, RetryPolicy, SinkStop, run_sink},
    store::{Store, StoreOptions},
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

/// Peak resident set size of this process so far (`VmHWM`), in KiB.
fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|n| n.parse().ok()))
        })
        .unwrap_or(0)
}

/// Starts a new peak-RSS measurement (Linux: `echo 5 > /proc/self/clear_refs`).
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

fn main() {
    let n: usize = std::env::var("CAUSEWAY_BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let dir = tempfile::tempdir().unwrap();
        let (store, writer) = Store::open(StoreOptions {
            gateway_id: "bench".into(),
            max_bytes: 4 << 30,
            ..StoreOptions::new(dir.path().join("bench.db"), &["erp"])
        })
        .unwrap();
        // Accept: 64 appenders of 10 events each (as many rules committing at once). Events are
        // made from a template with a fresh id: the store's work (serialising, inserting,
        // committing with fsync) is what is measured.
        let appenders = 64;
        let per = n / appenders / 10;
        let template = CloudEvent::new(
            "bench",
            "press1",
            "production.count",
            "press1",
            SystemTime::now(),
            serde_json::json!({ "machine": "press1", "line": "line3", "order": "PO-4711", "total": 120, "good": 118, "reject": 2, "interval_start": "2026-11-28T10:00:00.000Z", "interval_end": "2026-11-28T10:00:10.000Z", "anomaly": null }),
        );
        let started = Instant::now();
        let mut handles = Vec::new();
        for _ in 0..appenders {
            let (store, template) = (store.clone(), template.clone());
            handles.push(tokio::spawn(async move {
                for _ in 0..per {
                    let events = (0..10)
                        .map(|_| {
                            let mut e = template.clone();
                            e.id = uuid::Uuid::now_v7().to_string();
                            e
                        })
                        .collect();
                    store.append(events, vec![]).await.unwrap();
                }
            }));
        }
        for h in handles {
            h.await.unwrap();
        }
        let accepted = appenders * per * 10;
        let secs = started.elapsed().as_secs_f64();
        println!(
            "accept (WAL, synchronous=FULL, group commit): {accepted} events in {secs:.2} s = {:.0} events/s",
            accepted as f64 / secs
        );

        // Drain the backlog to the local HTTPS receiver, counting only.
        let tasks = TaskTracker::new();
        let cancel = CancellationToken::new();
        let receiver = Receiver::start(&tasks, cancel.clone()).await.unwrap();
        receiver.set_count_only(true);
        std::fs::write(dir.path().join("ca.pem"), receiver.ca_pem()).unwrap();
        let https = HttpsSinkConfig {
            url: receiver.url(),
            insecure: false,
            timeout: Duration::from_secs(30),
            ca_file: Some("ca.pem".into()),
            auth: None,
            identity: None,
            method: "POST".into(),
            headers: Vec::new(),
            body: firmware_config::Body::CloudEvents,
            retry_initial: Duration::from_millis(50),
            retry_max: Duration::from_secs(1),
        };
        let sink = HttpsSink::new("erp", &https, dir.path()).unwrap();
        let config = SinkConfig {
            name: "erp".into(),
            routes: vec!["*".into()],
            batch_size: 1000,
            max_batch_bytes: 1 << 20,
            breaker_failures: 5,
            breaker_open: Duration::from_secs(30),
            rate_limit: None,
            kind: SinkKind::Https(https),
        };
        let stop = SinkStop {
            inputs_done: CancellationToken::new(),
            abort: CancellationToken::new(),
        };
        stop.inputs_done.cancel();
        let reader = store.reader().unwrap();
        let before = peak_rss_kib();
        reset_peak_rss();
        let started = Instant::now();
        run_sink(
            "erp".into(),
            config,
            sink,
            store.clone(),
            reader,
            RetryPolicy::new(Duration::from_millis(50), Duration::from_secs(1)),
            stop,
        )
        .await;
        let secs = started.elapsed().as_secs_f64();
        let arrived = receiver.counted();
        println!(
            "drain to local HTTPS receiver: {arrived} events in {secs:.2} s = {:.0} events/s",
            arrived as f64 / secs
        );
        println!(
            "peak RSS while draining: {} KiB (whole process, receiver included; {} KiB before)",
            peak_rss_kib(),
            before
        );
        // A request retried after a timeout counts twice at the receiver: at least, not equal;
        // and nothing is left undelivered in the buffer.
        assert!(arrived >= accepted, "every accepted event arrived");
        assert_eq!(store.reader().unwrap().count().await.unwrap(), 0, "nothing left undelivered");
        cancel.cancel();
        tasks.close();
        tasks.wait().await;
        drop(store);
        writer.join();
    });
}
