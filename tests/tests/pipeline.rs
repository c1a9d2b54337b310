//! The whole pipeline, from a real Modbus TCP server to the real HTTPS receiver.

use std::{collections::HashSet, time::Duration};

use causeway_tests::{Plc, Site, eventually, sum};
use gateway::topology::{self, Drained};

const LIMIT: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parts_states_and_measurements_travel_from_the_plc_to_the_erp_over_https() {
    let plc = Plc::start().await;
    let site = Site::start().await;
    plc.set_counts(u32::MAX - 2, 0); // rolls over during the test
    plc.set_state(1);
    let running =
        topology::start(&site.config(&plc.address, ""), site.dir.path()).expect("pipeline starts");
    let receiver = site.receiver.clone();
    eventually(LIMIT, "the first state event", || async {
        receiver.unique() > 0
    })
    .await;

    // Ten parts, two of them rejects, across the u32 rollover; one measured part in tolerance,
    // one out; then the machine goes down.
    for i in 1..=10u32 {
        plc.set_counts(
            (u32::MAX - 2).wrapping_add(i),
            u16::from(i > 8) + u16::from(i > 9),
        );
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    plc.set_force(47.5, false);
    tokio::time::sleep(Duration::from_millis(80)).await;
    plc.set_force(47.5, true);
    tokio::time::sleep(Duration::from_millis(80)).await;
    plc.set_force(58.0, false);
    tokio::time::sleep(Duration::from_millis(80)).await;
    plc.set_force(58.0, true);
    tokio::time::sleep(Duration::from_millis(80)).await;
    plc.set_state(2);

    eventually(LIMIT, "10 parts, 2 measurements, 2 states", || async {
        let events = receiver.events_since(0);
        sum(&events, "production.count", "total") == 10
            && events
                .iter()
                .filter(|e| e["type"] == "quality.measurement")
                .count()
                == 2
            && events
                .iter()
                .filter(|e| e["type"] == "production.state")
                .count()
                == 2
    })
    .await;
    assert_eq!(running.shutdown().await, Drained::Fully);

    let events = receiver.events_since(0);
    assert_eq!(sum(&events, "production.count", "reject"), 2);
    assert_eq!(sum(&events, "production.count", "good"), 8);
    let verdicts: Vec<&str> = events
        .iter()
        .filter(|e| e["type"] == "quality.measurement")
        .map(|e| e["data"]["verdict"].as_str().unwrap())
        .collect();
    assert_eq!(verdicts, ["pass", "fail"]);
    let down = events
        .iter()
        .find(|e| e["type"] == "production.state" && e["data"]["state"] == "down")
        .unwrap();
    assert_eq!(down["data"]["previous_state"], "running");
    for e in &events {
        assert_eq!(e["specversion"], "1.0");
        assert_eq!(e["source"], "causeway://it/press");
        assert!(uuid_like(e["id"].as_str().unwrap()), "{e}");
    }
    let requests = receiver.requests();
    assert!(
        requests
            .iter()
            .all(|r| r.authorization.as_deref() == Some("Bearer t0ken")),
        "the token from the file is sent"
    );
    assert!(requests.iter().all(|r| r.idempotency_key.is_some()));
    site.stop().await;
}

fn uuid_like(id: &str) -> bool {
    id.len() == 36 && id.chars().filter(|c| *c == '-').count() == 4
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_outage_loses_nothing_and_repeats_only_known_ids() {
    let plc = Plc::start().await;
    let site = Site::start().await;
    plc.set_state(1);
    let running =
        topology::start(&site.config(&plc.address, ""), site.dir.path()).expect("pipeline starts");
    let receiver = site.receiver.clone();
    eventually(LIMIT, "the first event", || async { receiver.unique() > 0 }).await;
    receiver.set_outage(true);
    let mut total = 0u32;
    for state in [2u16, 1, 0, 1, 2, 1] {
        plc.set_state(state);
        for _ in 0..5 {
            total += 1;
            plc.set_counts(total, 0);
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
    let refused_before = receiver
        .requests()
        .iter()
        .filter(|r| r.status == 503)
        .count();
    assert!(refused_before > 0, "the sink kept trying during the outage");
    receiver.set_outage(false);
    let stats = running.store().shared_stats();
    let drained = running.shutdown().await;
    assert_eq!(drained, Drained::Fully);
    let accepted = stats.appended.load(std::sync::atomic::Ordering::Relaxed);
    let events = receiver.events_since(0);
    assert_eq!(
        events.len() as u64,
        accepted,
        "every accepted event arrived"
    );
    assert_eq!(
        events
            .iter()
            .filter(|e| e["type"] == "production.state")
            .count(),
        7
    );
    assert_eq!(sum(&events, "production.count", "total"), u64::from(total));
    let ids: HashSet<&str> = events.iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), events.len());
    site.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_buffered_before_a_restart_are_delivered_after_it_with_the_same_ids() {
    let plc = Plc::start().await;
    let site = Site::start().await;
    plc.set_state(1);
    site.receiver.set_outage(true);
    let config = site.config(&plc.address, "");
    let running = topology::start(&config, site.dir.path()).expect("pipeline starts");
    let store = running.store().shared_stats();
    // The first poll (state "running") also sets the counter's baseline at 0.
    eventually(LIMIT, "the first poll", || async {
        store.appended.load(std::sync::atomic::Ordering::Relaxed) >= 1
    })
    .await;
    for (i, state) in [2u16, 1, 2].into_iter().enumerate() {
        plc.set_state(state);
        plc.set_counts(5 * (i as u32 + 1), 0);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // The receiver never came back: shutdown gives up after the grace period.
    let drained = running.shutdown().await;
    assert_eq!(drained, Drained::Deadline);
    let accepted = store.appended.load(std::sync::atomic::Ordering::Relaxed);
    assert!(accepted >= 4, "states and counts were accepted: {accepted}");
    assert_eq!(site.receiver.unique(), 0);

    // What is in the file, before the second start.
    let (buffered, writer) = site.open_buffer();
    let fetched = buffered
        .reader()
        .unwrap()
        .fetch("erp", 0, &["*".to_owned()], 1000)
        .await
        .unwrap();
    let ids_before: Vec<String> = fetched.events.iter().map(|e| e.id.clone()).collect();
    assert_eq!(
        ids_before.len() as u64,
        accepted,
        "every accepted event is in the file"
    );
    drop(buffered);
    writer.join();

    site.receiver.set_outage(false);
    let running = topology::start(&config, site.dir.path()).expect("pipeline restarts");
    let receiver = site.receiver.clone();
    eventually(LIMIT, "the buffered events", || async {
        receiver.unique() >= ids_before.len()
    })
    .await;
    assert_eq!(running.shutdown().await, Drained::Fully);
    let received: Vec<String> = receiver
        .events_since(0)
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        received[..ids_before.len()],
        ids_before[..],
        "same ids, same order"
    );
    // The counter's baseline survived too: 15 parts in all, counted once.
    assert_eq!(
        sum(&receiver.events_since(0), "production.count", "total"),
        15
    );
    site.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permanently_refused_batch_goes_to_dead_letters_and_the_rest_flows() {
    let plc = Plc::start().await;
    let site = Site::start().await;
    plc.set_state(1);
    site.receiver.script(&[503, 422]);
    let config = site.config(&plc.address, "");
    let running = topology::start(&config, site.dir.path()).expect("pipeline starts");
    let receiver = site.receiver.clone();
    eventually(LIMIT, "the first two requests to be refused", || async {
        receiver.requests().len() >= 2
    })
    .await;
    plc.set_state(2);
    eventually(LIMIT, "the next event", || async { receiver.unique() >= 1 }).await;
    let stats = running.store().shared_stats();
    assert_eq!(running.shutdown().await, Drained::Fully);
    assert_eq!(
        stats
            .dead_lettered
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    let events = receiver.events_since(0);
    assert_eq!(
        events[0]["data"]["state"], "down",
        "the refused 'running' event did not block the next"
    );
    let statuses: Vec<u16> = receiver.requests().iter().map(|r| r.status).collect();
    assert_eq!(statuses[..2], [503, 422], "503 was retried, 422 was not");

    let (store, writer) = site.open_buffer();
    let dead = store.reader().unwrap().dead_letters("erp").await.unwrap();
    assert_eq!(dead.len(), 1);
    assert!(
        dead[0].2.contains("422"),
        "the response is kept: {}",
        dead[0].2
    );
    drop(store);
    writer.join();
    site.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plc_that_vanishes_and_returns_neither_loses_nor_doubles_parts() {
    let plc = Plc::start().await;
    let site = Site::start().await;
    plc.set_counts(100, 0);
    let running =
        topology::start(&site.config(&plc.address, ""), site.dir.path()).expect("pipeline starts");
    tokio::time::sleep(Duration::from_millis(200)).await;
    plc.set_counts(103, 0);
    tokio::time::sleep(Duration::from_millis(300)).await;
    plc.vanish();
    plc.set_counts(110, 1); // made while the gateway could not read
    tokio::time::sleep(Duration::from_millis(500)).await;
    let back = plc.come_back().await;
    back.set_counts(112, 1);
    let receiver = site.receiver.clone();
    eventually(LIMIT, "12 parts counted", || async {
        sum(&receiver.events_since(0), "production.count", "total") >= 12
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(running.shutdown().await, Drained::Fully);
    let events = receiver.events_since(0);
    assert_eq!(sum(&events, "production.count", "total"), 12);
    assert_eq!(sum(&events, "production.count", "reject"), 1);
    back.vanish();
    site.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_delivers_every_type_through_an_outage_and_loses_nothing() {
    let mut out = Vec::new();
    let summary = gateway::demo::run(Duration::from_secs(8), &mut out)
        .await
        .expect("demo runs");
    let text = String::from_utf8(out).unwrap();
    assert_eq!(summary.lost, 0, "{text}");
    assert!(summary.refused > 0, "the outage happened: {text}");
    for t in [
        "production.count",
        "production.state",
        "quality.measurement",
    ] {
        assert!(
            summary.by_type.get(t).copied().unwrap_or(0) > 0,
            "no {t}: {text}"
        );
    }
    let last = text.lines().last().unwrap();
    assert!(
        last.starts_with(&format!(
            "demo: delivered {} events (production.count=",
            summary.delivered
        )),
        "{last}"
    );
    assert!(last.ends_with(", lost 0"), "{last}");
    assert_eq!(
        text.lines()
            .filter(|l| l.starts_with("demo: delivered"))
            .count(),
        1,
        "exactly one summary line"
    );
}
