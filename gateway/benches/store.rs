//! Store benchmarks (issue 6): events accepted per second with FULL durability through group
//! commit, and the drain of a backlog to the local HTTPS receiver.
//!
//! `cargo bench -p gateway --bench store` (`CAUSEWAY_BENCH_EVENTS` sets the backlog, default
//! 200000). Peak RSS: run the built binary under `/usr/bin/time -v`.

use std::time::{Duration, Instant, SystemTime};

use firmware_config::{HttpsSinkConfig, SinkConfig, SinkKind, WhenFull};
use gateway::{
    event::CloudEvent,
    receiver::Receiver,
    sinks::{HttpsSink, RetryPolicy, SinkStop, run_sink},
    store::{Store, StoreOptions},
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

fn main() {
    let n: usize = std::env::var("CAUSEWAY_BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let dir = tempfile::tempdir().unwrap();
        let (store, writer) = Store::open(StoreOptions {
            path: dir.path().join("bench.db"),
            gateway_id: "bench".into(),
            max_bytes: 4 << 30,
            max_dead_bytes: 64 << 20,
            max_age: None,
            when_full: WhenFull::DropOldest,
            max_batch: 512,
            sinks: vec!["erp".into()],
        })
        .unwrap();
        // Accept: 64 appenders, 10 events per append, as a normalizer with many rules would.
        let started = Instant::now();
        let appenders = 64;
        let per = n / appenders / 10;
        let mut handles = Vec::new();
        for a in 0..appenders {
            let store = store.clone();
            handles.push(tokio::spawn(async move {
                for i in 0..per {
                    let events = (0..10)
                        .map(|k| {
                            CloudEvent::new(
                                "bench",
                                "press1",
                                "production.count",
                                "press1",
                                SystemTime::now(),
                                serde_json::json!({ "machine": "press1", "total": a * per + i * 10 + k, "good": 1, "reject": 0 }),
                            )
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
            "accept (FULL sync, group commit): {accepted} events in {secs:.2} s = {:.0} events/s",
            accepted as f64 / secs
        );

        // Drain the backlog to the local HTTPS receiver.
        let tasks = TaskTracker::new();
        let cancel = CancellationToken::new();
        let receiver = Receiver::start(&tasks, cancel.clone()).await.unwrap();
        std::fs::write(dir.path().join("ca.pem"), receiver.ca_pem()).unwrap();
        let https = HttpsSinkConfig {
            url: receiver.url(),
            insecure: false,
            timeout: Duration::from_secs(30),
            ca_file: Some("ca.pem".into()),
            auth: None,
            retry_initial: Duration::from_millis(50),
            retry_max: Duration::from_secs(1),
        };
        let sink = HttpsSink::new("erp", &https, dir.path()).unwrap();
        let config = SinkConfig {
            name: "erp".into(),
            routes: vec!["*".into()],
            batch_size: 1000,
            max_batch_bytes: 1 << 20,
            kind: SinkKind::Https(https),
        };
        let stop = SinkStop {
            inputs_done: CancellationToken::new(),
            abort: CancellationToken::new(),
        };
        stop.inputs_done.cancel();
        let reader = store.reader().unwrap();
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
        let arrived = receiver.unique();
        println!(
            "drain to local HTTPS receiver: {arrived} events in {secs:.2} s = {:.0} events/s",
            arrived as f64 / secs
        );
        assert_eq!(arrived, accepted, "every accepted event arrived");
        cancel.cancel();
        tasks.close();
        tasks.wait().await;
        drop(store);
        writer.join();
    });
}
