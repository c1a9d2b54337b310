//! The whole pipeline, from a real Modbus TCP server to the real HTTPS receiver.
//!
//! Every wait is on a condition, bounded in time: a value set on the PLC is known to be read
//! once the PLC has served two more polls (`Plc::polled`), never after a fixed sleep.

use std::{sync::atomic::Ordering, time::Duration};

use causeway_tests::{Plc, Site, eventually, sum};
use gateway::{
    demo::receiver::SeenRequest,
    topology::{self, Drained},
};

const LIMIT: Duration = Duration::from_secs(20);

/// The `Idempotency-Key` a request must carry: its first and last event ids.
fn key_of(request: &SeenRequest) -> String {
    match request.ids.as_slice() {
        [] => String::new(),
        [one] => one.clone(),
        [first, .., last] => format!("{first}..{last}"),
    }
}

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
    // one out; then the machine goes down. Each change is read before the next.
    for i in 1..=10u32 {
        plc.set_counts(
            (u32::MAX - 2).wrapping_add(i),
            u16::from(i > 8) + u16::from(i > 9),
        );
        plc.polled().await;
    }
    for (force, done) in [(47.5, false), (47.5, true), (58.0, false), (58.0, true)] {
        plc.set_force(force, done);
        plc.polled().await;
    }
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
    assert_eq!(
        sum(&events, "production.count", "total"),
        10,
        "not one more"
    );
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
    // The body the receiver got is a JSON array of whole CloudEvents.
    for e in &events {
        assert_eq!(e["specversion"], "1.0");
        assert_eq!(e["source"], "causeway://it/press");
        assert_eq!(e["datacontenttype"], "application/json");
        assert!(e["time"].as_str().unwrap().ends_with('Z'), "{e}");
        assert!(e["data"].is_object(), "{e}");
        let id = uuid::Uuid::parse_str(e["id"].as_str().unwrap()).expect("a UUID");
        assert_eq!(id.get_version_num(), 7, "{e}");
    }
    let requests = receiver.requests();
    for r in &requests {
        assert_eq!(
            r.authorization.as_deref(),
            Some("Bearer t0ken"),
            "the token from the file"
        );
        assert_eq!(
            r.content_type.as_deref(),
            Some("application/cloudevents-batch+json")
        );
        assert_eq!(
            r.idempotency_key.as_deref(),
            Some(key_of(r).as_str()),
            "the key names the request's first and last event"
        );
    }
    site.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_outage_loses_nothing_and_a_retry_repeats_the_same_request() {
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
        total += 5;
        plc.set_counts(total, 0);
        plc.polled().await;
    }
    eventually(LIMIT, "the sink to meet the outage", || async {
        receiver.requests().iter().any(|r| r.status == 503)
    })
    .await;
    receiver.set_outage(false);
    let stats = running.store().shared_stats();
    let drained = running.shutdown().await;
    assert_eq!(drained, Drained::Fully);
    let accepted = stats.appended.load(Ordering::Relaxed);
    let events = receiver.events_since(0);
    assert_eq!(
        events.len() as u64,
        accepted,
        "every accepted event arrived"
    );
    // Counted before the receiver's dedupe: every event in an accepted request, once.
    let requests = receiver.requests();
    let arrived: usize = requests
        .iter()
        .filter(|r| r.status == 200)
        .map(|r| r.events)
        .sum();
    assert_eq!(arrived, events.len(), "no event was accepted twice");
    assert_eq!(receiver.duplicates(), 0);
    assert_eq!(
        events
            .iter()
            .filter(|e| e["type"] == "production.state")
            .count(),
        7,
        "the first state and six changes"
    );
    assert_eq!(sum(&events, "production.count", "total"), u64::from(total));
    // A request refused with 503 is sent again as it was: same events, same key.
    let refused = requests
        .iter()
        .find(|r| r.status == 503)
        .expect("a refused request");
    let retried = requests
        .iter()
        .find(|r| r.status == 200 && r.ids == refused.ids)
        .expect("the same events were accepted later");
    assert_eq!(retried.idempotency_key, refused.idempotency_key);
    assert_eq!(
        refused.idempotency_key.as_deref(),
        Some(key_of(refused).as_str())
    );
    site.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_erp_outage_never_holds_back_the_qms() {
    let plc = Plc::start().await;
    let site = Site::start().await;
    let qms = site.another_receiver("qms").await;
    plc.set_state(1);
    let erp = site.receiver.clone();
    // The ERP takes the first request and hangs on it (a minute's timeout): any coupling of the
    // two sinks would hold the QMS back for that minute.
    erp.answer_after(Some(Duration::from_secs(60)));
    let extra = format!(
        r#"timeout = "1m"
[[sink]]
name = "qms"
kind = "https"
url = "{}"
ca_file = "qms-ca.pem"
routes = ["production.state"]
retry_initial = "50ms"
retry_max = "300ms"
"#,
        qms.url()
    );
    let config = site.config(&plc.address, &extra);
    let running = topology::start(&config, site.dir.path()).expect("starts");
    eventually(LIMIT, "the ERP to hang on its first request", || async {
        erp.requests().len() == 1
    })
    .await;
    for state in [2u16, 1, 2] {
        plc.set_state(state);
        plc.polled().await;
    }
    eventually(LIMIT, "the QMS to get all four states", || async {
        qms.unique() == 4
    })
    .await;
    assert_eq!(
        erp.requests().len(),
        1,
        "the ERP is still hanging on its first request"
    );
    // The ERP's cursor has not moved: after a restart it gets everything, the same events.
    assert_eq!(running.shutdown().await, Drained::Deadline);
    erp.answer_after(None);
    let running = topology::start(&config, site.dir.path()).expect("restarts");
    eventually(LIMIT, "the ERP to catch up", || async {
        erp.events_since(0)
            .iter()
            .filter(|e| e["type"] == "production.state")
            .count()
            == 4
    })
    .await;
    assert_eq!(running.shutdown().await, Drained::Fully);
    let ids = |events: Vec<serde_json::Value>| -> Vec<String> {
        events
            .iter()
            .filter(|e| e["type"] == "production.state")
            .map(|e| e["id"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(
        ids(erp.events_since(0)),
        ids(qms.events_since(0)),
        "the same events, in the same order"
    );
    site.stop().await;
}

/// The breaker state `causeway buffer stats` shows for `sink`.
fn breaker_of(site: &Site, sink: &str) -> serde_json::Value {
    let conn = gateway::store::admin::open_existing(&site.buffer()).expect("the buffer opens");
    let stats = gateway::store::admin::stats(&conn, &[(sink.to_owned(), vec!["*".to_owned()])])
        .expect("stats");
    stats["sinks"][0]["breaker"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_qms_outage_opens_its_breaker_and_never_holds_back_the_erp() {
    let plc = Plc::start().await;
    let site = Site::start().await;
    let qms = site.another_receiver("qms").await;
    plc.set_state(1);
    let erp = site.receiver.clone();
    // The QMS is down (503) from the start; its breaker opens after two failures.
    qms.set_outage(true);
    let extra = format!(
        r#"[[sink]]
name = "qms"
kind = "https"
url = "{}"
ca_file = "qms-ca.pem"
routes = ["production.state"]
retry_initial = "50ms"
retry_max = "300ms"
breaker_failures = 2
breaker_open = "1s"
"#,
        qms.url()
    );
    let config = site.config(&plc.address, &extra);
    let running = topology::start(&config, site.dir.path()).expect("starts");
    eventually(LIMIT, "the QMS breaker to open", || async {
        breaker_of(&site, "qms")["state"] == "open"
    })
    .await;
    let open = breaker_of(&site, "qms");
    assert_eq!(open["failures_in_a_row"], 2, "{open}");
    assert!(
        open["last_failure"].as_str().unwrap().contains("HTTP 503"),
        "{open}"
    );
    // The ERP receives every state change while the QMS is down.
    for (changes, state) in [2u16, 1, 2].into_iter().enumerate() {
        plc.set_state(state);
        plc.polled().await;
        // The first state, and each change so far.
        eventually(LIMIT, "the ERP to get the change", || async {
            erp.events_since(0)
                .iter()
                .filter(|e| e["type"] == "production.state")
                .count()
                == changes + 2
        })
        .await;
    }
    assert_eq!(qms.unique(), 0, "the QMS took nothing");
    assert_eq!(breaker_of(&site, "erp")["state"], "closed");
    // While open, the QMS is asked at most once per breaker_open (plus the two that opened it).
    let asked = qms.requests().len();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let more = qms.requests().len() - asked;
    assert!(more <= 2, "{more} requests in 1.5 s to an open breaker");
    qms.set_outage(false);
    eventually(LIMIT, "the QMS to catch up", || async { qms.unique() == 4 }).await;
    eventually(LIMIT, "the QMS breaker to close", || async {
        breaker_of(&site, "qms")["state"] == "closed"
    })
    .await;
    assert_eq!(running.shutdown().await, Drained::Fully);
    let ids = |events: Vec<serde_json::Value>| -> Vec<String> {
        events
            .iter()
            .filter(|e| e["type"] == "production.state")
            .map(|e| e["id"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(
        ids(erp.events_since(0)),
        ids(qms.events_since(0)),
        "the same events, in the same order"
    );
    site.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_trail_answers_whether_the_erp_got_an_event_and_when() {
    use gateway::store::admin;
    let plc = Plc::start().await;
    let site = Site::start().await;
    let qms = site.another_receiver("qms").await;
    plc.set_state(1);
    let erp = site.receiver.clone();
    // The ERP's first answer is a 503: that attempt is on record too.
    erp.script(&[503]);
    let extra = r#"[[sink]]
name = "qms"
kind = "https"
url = "QMS"
ca_file = "qms-ca.pem"
routes = ["production.state"]
retry_initial = "50ms"
retry_max = "300ms"
"#
    .replace("QMS", &qms.url());
    let config = site.config(&plc.address, &extra);
    let running = topology::start(&config, site.dir.path()).expect("starts");
    eventually(LIMIT, "the first state at both", || async {
        qms.unique() >= 1
            && erp
                .events_since(0)
                .iter()
                .any(|e| e["type"] == "production.state")
    })
    .await;
    plc.set_counts(5, 0);
    eventually(LIMIT, "a count at the ERP", || async {
        erp.events_since(0)
            .iter()
            .any(|e| e["type"] == "production.count")
    })
    .await;
    assert_eq!(running.shutdown().await, Drained::Fully);
    let find = |t: &str| {
        erp.events_since(0)
            .iter()
            .find(|e| e["type"] == t)
            .map(|e| e["id"].as_str().unwrap().to_owned())
            .unwrap()
    };
    let (state, count) = (find("production.state"), find("production.count"));
    let conn = admin::open_existing(&site.buffer()).expect("the buffer opens");
    let answer = admin::audit_event(&conn, &state, &config.sinks).unwrap();
    assert_eq!(answer["found"], true, "{answer:#}");
    assert_eq!(answer["type"], "production.state");
    assert_eq!(
        answer["in_buffer"], false,
        "delivered everywhere, it left the buffer; the audit still knows it"
    );
    let sinks = answer["sinks"].as_array().unwrap();
    assert_eq!(sinks.len(), 2, "{answer:#}");
    let at = |name: &str| sinks.iter().find(|s| s["sink"] == name).unwrap().clone();
    let at_erp = at("erp");
    assert_eq!(at_erp["status"], "delivered", "{answer:#}");
    assert_eq!(at_erp["answer"], "HTTP 200");
    let attempts = at_erp["attempts"].as_array().unwrap();
    let outcomes: Vec<(&str, &str)> = attempts
        .iter()
        .map(|a| {
            (
                a["outcome"].as_str().unwrap(),
                a["status"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        outcomes,
        [("retry", "HTTP 503"), ("delivered", "HTTP 200")],
        "{answer:#}"
    );
    assert_eq!(attempts[1]["target"], erp.url());
    assert_eq!(
        attempts[1]["response"], "",
        "a delivery's answer body is not kept"
    );
    assert_eq!(at("qms")["status"], "delivered");
    // A count is not routed to the QMS: only the ERP is named.
    let answer = admin::audit_event(&conn, &count, &config.sinks).unwrap();
    let names: Vec<&str> = answer["sinks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["sink"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["erp"], "{answer:#}");
    assert_eq!(answer["sinks"][0]["status"], "delivered");
    let unknown = admin::audit_event(&conn, "no-such-id", &config.sinks).unwrap();
    assert_eq!(unknown["found"], false);
    // The list: every ERP attempt in order; the ERP's events all in delivered requests.
    let listed = admin::audit(&conn, Some("erp"), None, 1000).unwrap();
    assert_eq!(listed[0]["outcome"], "retry");
    let delivered: i64 = listed
        .iter()
        .filter(|a| a["outcome"] == "delivered")
        .map(|a| a["events"].as_i64().unwrap())
        .sum();
    assert_eq!(delivered as usize, erp.events_since(0).len());
    assert!(listed.iter().all(|a| a["sink"] == "erp"));
    let future = gateway::store::now_ms() + 60_000;
    assert!(
        admin::audit(&conn, None, Some(future), 1000)
            .unwrap()
            .is_empty()
    );
    assert_eq!(admin::audit(&conn, None, None, 1).unwrap().len(), 1);
    site.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_whose_certificate_is_not_trusted_is_refused_and_nothing_is_marked_delivered() {
    let plc = Plc::start().await;
    let site = Site::start().await;
    plc.set_state(1);
    // The same receiver, without its CA in `ca_file`: its certificate chains to nothing the
    // gateway trusts.
    let text = site.config(&plc.address, "");
    let mut config = text.config().clone();
    for sink in &mut config.sinks {
        if let firmware_config::SinkKind::Https(https) = &mut sink.kind {
            https.ca_file = None;
        }
    }
    config.shutdown_grace = Duration::from_millis(500);
    let running = topology::start(&config, site.dir.path()).expect("pipeline starts");
    let stats = running.store().shared_stats();
    let receiver = site.receiver.clone();
    eventually(LIMIT, "an event to be buffered", || async {
        stats.appended.load(Ordering::Relaxed) >= 1
    })
    .await;
    eventually(LIMIT, "two refused handshakes", || async {
        receiver.handshake_failures() >= 2
    })
    .await;
    assert_eq!(running.shutdown().await, Drained::Deadline);
    assert!(
        receiver.requests().is_empty(),
        "no request got past the handshake"
    );
    let (store, writer) = site.open_buffer();
    let reader = store.reader().unwrap();
    assert_eq!(
        reader.cursor("erp").await.unwrap(),
        0,
        "nothing marked delivered"
    );
    assert!(
        reader.count().await.unwrap() >= 1,
        "the events wait in the buffer"
    );
    drop((store, reader));
    writer.join();
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
        store.appended.load(Ordering::Relaxed) >= 1
    })
    .await;
    for (i, state) in [2u16, 1, 2].into_iter().enumerate() {
        plc.set_state(state);
        plc.set_counts(5 * (i as u32 + 1), 0);
        plc.polled().await;
    }
    // The receiver never came back: shutdown gives up after the grace period.
    let drained = running.shutdown().await;
    assert_eq!(drained, Drained::Deadline);
    let accepted = store.appended.load(Ordering::Relaxed);
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

    // Parts are made while the gateway is down.
    plc.set_counts(22, 0);
    site.receiver.set_outage(false);
    let running = topology::start(&config, site.dir.path()).expect("pipeline restarts");
    let receiver = site.receiver.clone();
    eventually(
        LIMIT,
        "the buffered events and the downtime's parts",
        || async {
            receiver.unique() > ids_before.len()
                && sum(&receiver.events_since(0), "production.count", "total") >= 22
        },
    )
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
    // The counter's baseline survived: 15 parts before, 7 while down, each counted once.
    assert_eq!(
        sum(&receiver.events_since(0), "production.count", "total"),
        22
    );
    site.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_restores_counter_and_state_rules_from_the_store() {
    let plc = Plc::start().await;
    let site = Site::start().await;
    plc.set_state(1);
    plc.set_counts(1000, 10);
    let config = site.config(&plc.address, "");
    let running = topology::start(&config, site.dir.path()).expect("starts");
    plc.polled().await;
    plc.set_counts(1010, 11);
    plc.polled().await;
    let receiver = site.receiver.clone();
    eventually(LIMIT, "10 parts and the first state", || async {
        let events = receiver.events_since(0);
        sum(&events, "production.count", "total") == 10
            && events.iter().any(|e| e["type"] == "production.state")
    })
    .await;
    assert_eq!(running.shutdown().await, Drained::Fully);
    let before = receiver.unique();
    // Two parts, one a reject, while the gateway is down.
    plc.set_counts(1012, 12);

    // A restart in the same state says nothing; the counter goes on from its saved baseline.
    let running = topology::start(&config, site.dir.path()).expect("restarts");
    plc.polled().await;
    let stats = running.normalizer_stats();
    eventually(LIMIT, "the normalizer to take two polls", || async {
        stats.batches.load(Ordering::Relaxed) >= 2
    })
    .await;
    plc.set_counts(1013, 12);
    plc.polled().await;
    plc.set_state(2);
    eventually(LIMIT, "the change and the parts", || async {
        let events = receiver.events_since(before);
        events.iter().any(|e| e["type"] == "production.state")
            && sum(&events, "production.count", "total") >= 3
    })
    .await;
    assert_eq!(running.shutdown().await, Drained::Fully);
    let after = receiver.events_since(before);
    let states: Vec<&serde_json::Value> = after
        .iter()
        .filter(|e| e["type"] == "production.state")
        .collect();
    assert_eq!(
        states.len(),
        1,
        "no event for the unchanged state: {states:?}"
    );
    assert_eq!(states[0]["data"]["state"], "down");
    assert_eq!(
        states[0]["data"]["previous_state"], "running",
        "the saved state is the previous one"
    );
    assert_eq!(
        sum(&after, "production.count", "total"),
        3,
        "two while down, one after"
    );
    assert_eq!(sum(&after, "production.count", "reject"), 1);
    site.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permanently_refused_event_goes_to_dead_letters_and_the_rest_flows() {
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
    assert_eq!(stats.dead_lettered.load(Ordering::Relaxed), 1);
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
    let stats = running.normalizer_stats();
    plc.polled().await;
    plc.set_counts(103, 0);
    plc.polled().await;
    let bad_before = stats.bad.load(Ordering::Relaxed);
    let connections_before = plc.registers.connections();
    plc.vanish();
    plc.set_counts(110, 1); // made while the gateway could not read
    eventually(LIMIT, "the outage to show as Bad samples", || async {
        stats.bad.load(Ordering::Relaxed) >= bad_before + 5
    })
    .await;
    let back = plc.come_back().await;
    back.set_counts(112, 1);
    back.polled().await;
    assert!(
        back.registers.connections() > connections_before,
        "the gateway reconnected by itself"
    );
    let receiver = site.receiver.clone();
    eventually(LIMIT, "12 parts counted", || async {
        sum(&receiver.events_since(0), "production.count", "total") >= 12
    })
    .await;
    // Shutdown flushes what is pending: after it, nothing more can come.
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalling_device_and_a_failing_request_neither_lose_nor_double_parts() {
    let plc = Plc::start().await;
    let site = Site::start().await;
    plc.set_counts(500, 0);
    // The coil table answers every read with an exception: the trigger is Bad all along, the
    // counters beside it are read.
    plc.registers.fail_kind(
        firmware_config::RegisterKind::Coil,
        Some(tokio_modbus::ExceptionCode::IllegalDataAddress),
    );
    // In front of the PLC, a link whose first connection accepts and then never answers.
    let front = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let front_addr = front.local_addr().unwrap().to_string();
    let backend = plc.address.clone();
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = std::sync::Arc::clone(&accepted);
    let proxy = tokio::spawn(async move {
        while let Ok((mut client, _)) = front.accept().await {
            let n = counted.fetch_add(1, Ordering::SeqCst);
            let backend = backend.clone();
            tokio::spawn(async move {
                if n == 0 {
                    let mut sink = Vec::new();
                    let _ = tokio::io::AsyncReadExt::read_to_end(&mut client, &mut sink).await;
                } else if let Ok(mut server) = tokio::net::TcpStream::connect(backend).await {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                }
            });
        }
    });
    let running = topology::start(&site.config(&front_addr, ""), site.dir.path()).expect("starts");
    let stats = running.normalizer_stats();
    eventually(
        LIMIT,
        "the stall to time out and the link to be rebuilt",
        || async { accepted.load(Ordering::SeqCst) >= 2 && plc.registers.reads() > 0 },
    )
    .await;
    plc.polled().await;
    plc.set_counts(507, 1);
    plc.polled().await;
    let receiver = site.receiver.clone();
    eventually(LIMIT, "7 parts counted", || async {
        sum(&receiver.events_since(0), "production.count", "total") >= 7
    })
    .await;
    assert_eq!(running.shutdown().await, Drained::Fully);
    let events = receiver.events_since(0);
    assert_eq!(sum(&events, "production.count", "total"), 7);
    assert_eq!(sum(&events, "production.count", "reject"), 1);
    assert!(
        stats.bad.load(Ordering::Relaxed) > 0,
        "the stall and the failing coil read showed as Bad samples"
    );
    assert!(
        events.iter().all(|e| e["type"] != "quality.measurement"),
        "no measurement without a readable trigger"
    );
    proxy.abort();
    site.stop().await;
}
