//! The MQTT source against rumqttd in-process: JSON members by pointer, text, declared types,
//! malformed, truncated and oversized messages (Bad for their tags, never a stalled source), and
//! MQTT values feeding a counter rule through the whole pipeline.

use std::time::Duration;

use firmware_config::SourceConfig;
use gateway::sources::{Paths, Source};
use protocols::model::{Quality, Sample, Value};
use rumqttc::{AsyncClient, MqttOptions, QoS};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

#[path = "support/broker.rs"]
mod support_broker;
use support_broker::broker;

const LIMIT: Duration = Duration::from_secs(30);

fn config(port: u16, extra: &str) -> String {
    format!(
        r#"
gateway_id = "line3"

[[source]]
name = "uns"
kind = "mqtt"
url = "mqtt://127.0.0.1:{port}"
insecure = true
max_payload = "1KiB"
tags = [
  {{ name = "temp",  topic = "plant/line3/press1/telemetry", value = "/m/temp", timestamp = "/ts" }},
  {{ name = "state", topic = "plant/line3/press1/telemetry", value = "/state", type = "u16" }},
  {{ name = "parts", topic = "plant/line3/press1/parts", format = "text", type = "u32" }},
]
{extra}
[[sink]]
name = "out"
kind = "file"
path = "events.jsonl"
routes = ["*"]
"#
    )
}

async fn publisher(port: u16) -> AsyncClient {
    let (client, mut eventloop) =
        AsyncClient::new(MqttOptions::new("test-publisher", "127.0.0.1", port), 100);
    tokio::spawn(async move { while eventloop.poll().await.is_ok() {} });
    client
}

/// Samples until `done` accepts one, within [`LIMIT`].
async fn until(
    rx: &mut mpsc::Receiver<protocols::model::SampleBatch>,
    mut done: impl FnMut(&Sample) -> bool,
) -> Sample {
    tokio::time::timeout(LIMIT, async {
        loop {
            let batch = rx.recv().await.expect("the source runs");
            if let Some(s) = batch.samples.into_iter().find(|s| done(s)) {
                return s;
            }
        }
    })
    .await
    .expect("the awaited sample within the limit")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tags_are_read_from_json_and_text_and_bad_messages_only_make_their_tags_bad() {
    let dir = tempfile::tempdir().unwrap();
    let addr = broker();
    let loaded = firmware_config::load("t.toml", &config(addr.port(), "")).unwrap();
    let buffer = dir.path().join("buffer.db");
    let paths = Paths {
        gateway_id: "line3",
        base: dir.path(),
        buffer: &buffer,
    };
    let SourceConfig::Mqtt(_) = &loaded.sources[0] else {
        panic!("an mqtt source")
    };
    let (tx, mut rx) = mpsc::channel(64);
    let cancel = CancellationToken::new();
    let task = tokio::spawn(Source::build(&loaded.sources[0], paths).run(tx, cancel.clone()));
    let client = publisher(addr.port()).await;
    // Until the source has subscribed, messages may be missed: publish until one arrives.
    let deadline = tokio::time::Instant::now() + LIMIT;
    let first = loop {
        client
            .publish("plant/line3/press1/parts", QoS::AtLeastOnce, false, "41")
            .await
            .unwrap();
        if let Ok(Some(batch)) = tokio::time::timeout(Duration::from_millis(200), rx.recv()).await
            && let Some(s) = batch.samples.into_iter().find(|s| &*s.tag == "uns.parts")
        {
            break s;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the source subscribes"
        );
    };
    assert_eq!(first.value, Some(Value::U64(41)));
    let telemetry = r#"{"m":{"temp":21.5},"ts":"2026-11-28T10:00:00Z","state":2}"#;
    client
        .publish(
            "plant/line3/press1/telemetry",
            QoS::AtLeastOnce,
            false,
            telemetry,
        )
        .await
        .unwrap();
    let temp = until(&mut rx, |s| &*s.tag == "uns.temp").await;
    assert_eq!(temp.value, Some(Value::F64(21.5)));
    assert!(temp.source_time.is_some());
    // A malformed message: both tags of its topic Bad, naming the fault.
    client
        .publish(
            "plant/line3/press1/telemetry",
            QoS::AtLeastOnce,
            false,
            r#"{"m":{"temp":2"#,
        )
        .await
        .unwrap();
    let bad = until(&mut rx, |s| &*s.tag == "uns.state").await;
    assert!(
        matches!(&bad.quality, Quality::Bad(why) if why.contains("malformed JSON")),
        "{bad:?}"
    );
    // An oversized one (max_payload 1 KiB).
    let big = format!(r#"{{"m":{{"temp":1}},"pad":"{}"}}"#, "x".repeat(2_000));
    client
        .publish("plant/line3/press1/telemetry", QoS::AtLeastOnce, false, big)
        .await
        .unwrap();
    let bad = until(&mut rx, |s| &*s.tag == "uns.temp").await;
    assert!(
        matches!(&bad.quality, Quality::Bad(why) if why.contains("larger than max_payload")),
        "{bad:?}"
    );
    // A value that does not fit its declared type.
    client
        .publish("plant/line3/press1/parts", QoS::AtLeastOnce, false, "-1")
        .await
        .unwrap();
    let bad = until(&mut rx, |s| &*s.tag == "uns.parts").await;
    assert!(
        matches!(&bad.quality, Quality::Bad(why) if why.contains("u32")),
        "{bad:?}"
    );
    // And the source goes on.
    client
        .publish("plant/line3/press1/parts", QoS::AtLeastOnce, false, "42")
        .await
        .unwrap();
    let good = until(&mut rx, |s| &*s.tag == "uns.parts").await;
    assert_eq!(good.value, Some(Value::U64(42)));
    // More messages than the broker keeps in flight (rumqttd: 100) all arrive: each is
    // acknowledged once read, or the broker would stop sending.
    for n in 1_000..1_500u32 {
        client
            .publish(
                "plant/line3/press1/parts",
                QoS::AtLeastOnce,
                false,
                n.to_string(),
            )
            .await
            .unwrap();
    }
    let mut seen = std::collections::HashSet::new();
    until(&mut rx, |s| {
        if &*s.tag == "uns.parts"
            && let Some(Value::U64(n)) = s.value
        {
            seen.insert(n);
        }
        seen.len() == 500
    })
    .await;
    cancel.cancel();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_values_feed_a_counter_rule_through_the_pipeline() {
    let dir = tempfile::tempdir().unwrap();
    let addr = broker();
    let rule = "[[rule]]\nkind = \"counter\"\nmachine = \"press1\"\ntotal = \"uns.parts\"\ninterval = \"1s\"\n";
    let loaded = firmware_config::load("t.toml", &config(addr.port(), rule)).unwrap();
    let running = gateway::topology::start(&loaded, dir.path()).unwrap();
    let client = publisher(addr.port()).await;
    let events = dir.path().join("events.jsonl");
    let deadline = tokio::time::Instant::now() + LIMIT;
    let mut n = 100u32;
    let total = loop {
        client
            .publish(
                "plant/line3/press1/parts",
                QoS::AtLeastOnce,
                false,
                n.to_string(),
            )
            .await
            .unwrap();
        n += 5;
        tokio::time::sleep(Duration::from_millis(100)).await;
        let text = std::fs::read_to_string(&events).unwrap_or_default();
        let counted: u64 = text
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|e| e["type"] == "production.count")
            .filter_map(|e| e["data"]["total"].as_u64())
            .sum();
        if counted >= 20 {
            break counted;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "production.count events from MQTT values"
        );
    };
    assert_eq!(total % 5, 0, "parts counted in steps of 5: {total}");
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wildcard_tag_is_named_from_each_topics_levels() {
    let dir = tempfile::tempdir().unwrap();
    let addr = broker();
    let text = format!(
        r#"
gateway_id = "line3"

[[source]]
name = "uns"
kind = "mqtt"
url = "mqtt://127.0.0.1:{}"
insecure = true
tags = [
  {{ name = "{{2}}_{{3}}_temp", topic = "plant/+/+/telemetry", value = "/temp" }},
  {{ name = "line3_press1_temp", topic = "plant/line3/press1/telemetry", value = "/temp" }},
  {{ name = "{{2}}_{{3}}_parts", topic = "plant/+/+/parts", format = "text" }},
  {{ name = "{{2}}_{{3}}_v", topic = "plant/+/+/v", format = "text" }},
]

[[sink]]
name = "out"
kind = "file"
path = "events.jsonl"
routes = ["*"]
"#,
        addr.port()
    );
    let loaded =
        firmware_config::load("t.toml", &text).unwrap_or_else(|r| panic!("{}", r.render(false)));
    let buffer = dir.path().join("buffer.db");
    let paths = Paths {
        gateway_id: "line3",
        base: dir.path(),
        buffer: &buffer,
    };
    let (tx, mut rx) = mpsc::channel(64);
    let cancel = CancellationToken::new();
    let task = tokio::spawn(Source::build(&loaded.sources[0], paths).run(tx, cancel.clone()));
    let client = publisher(addr.port()).await;
    let deadline = tokio::time::Instant::now() + LIMIT;
    // Until subscribed, messages may be missed: publish until one arrives.
    let first = loop {
        client
            .publish(
                "plant/line3/press2/telemetry",
                QoS::AtLeastOnce,
                false,
                r#"{"temp":20.5}"#,
            )
            .await
            .unwrap();
        if let Ok(Some(batch)) = tokio::time::timeout(Duration::from_millis(200), rx.recv()).await {
            break batch;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the source subscribes"
        );
    };
    let tags: Vec<&str> = first.samples.iter().map(|s| &*s.tag).collect();
    assert_eq!(tags, ["uns.line3_press2_temp"]);
    assert_eq!(first.samples[0].value, Some(Value::F64(20.5)));
    // A topic the exact tag and the filter both name the same: read once.
    client
        .publish(
            "plant/line3/press1/telemetry",
            QoS::AtLeastOnce,
            false,
            r#"{"temp":21.5}"#,
        )
        .await
        .unwrap();
    let batch = tokio::time::timeout(LIMIT, rx.recv())
        .await
        .unwrap()
        .unwrap();
    let tags: Vec<&str> = batch.samples.iter().map(|s| &*s.tag).collect();
    assert_eq!(tags, ["uns.line3_press1_temp"]);
    // A level that cannot be part of a tag name: nothing read from it (a warning says why),
    // the next message is.
    client
        .publish("plant/line 3/press1/parts", QoS::AtLeastOnce, false, "7")
        .await
        .unwrap();
    client
        .publish("plant/line4/press9/parts", QoS::AtLeastOnce, false, "8")
        .await
        .unwrap();
    let batch = tokio::time::timeout(LIMIT, rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&*batch.samples[0].tag, "uns.line4_press9_parts");
    assert_eq!(batch.samples[0].value, Some(Value::U64(8)));
    // Two topics making one name: the first keeps it, the second is not read.
    for (topic, v) in [
        ("plant/a_b/c/v", "1"),
        ("plant/a/b_c/v", "2"),
        ("plant/q/r/v", "3"),
    ] {
        client
            .publish(topic, QoS::AtLeastOnce, false, v)
            .await
            .unwrap();
    }
    let first = until(&mut rx, |s| &*s.tag == "uns.a_b_c_v").await;
    assert_eq!(first.value, Some(Value::U64(1)));
    let last = tokio::time::timeout(LIMIT, async {
        loop {
            let batch = rx.recv().await.unwrap();
            assert!(
                batch.samples.iter().all(|s| s.value != Some(Value::U64(2))),
                "a second topic fed `a_b_c_v`: {batch:?}"
            );
            if batch.samples.iter().any(|s| &*s.tag == "uns.q_r_v") {
                return batch;
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(last.samples[0].value, Some(Value::U64(3)));
    cancel.cancel();
    task.await.unwrap();
}

/// An MQTT 3.1.1 broker written with rumqttc's codec that refuses every subscription whose
/// filter contains `denied` or ends with `Line3/+`; the filter counts of the SUBSCRIBE packets it received.
async fn refusing_broker() -> (u16, std::sync::Arc<std::sync::Mutex<Vec<usize>>>) {
    use bytes::BytesMut;
    use rumqttc::mqttbytes::v4::{ConnAck, ConnectReturnCode, Packet, SubAck, SubscribeReasonCode};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let packets = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let p = packets.clone();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let p = p.clone();
            tokio::spawn(async move {
                let mut buffer = BytesMut::new();
                loop {
                    let packet = match Packet::read(&mut buffer, 1 << 20) {
                        Ok(packet) => packet,
                        Err(rumqttc::mqttbytes::Error::InsufficientBytes(_)) => {
                            if socket.read_buf(&mut buffer).await.unwrap_or(0) == 0 {
                                return;
                            }
                            continue;
                        }
                        Err(_) => return,
                    };
                    let reply = match packet {
                        Packet::Connect(_) => Packet::ConnAck(ConnAck {
                            session_present: false,
                            code: ConnectReturnCode::Success,
                        }),
                        Packet::Subscribe(s) => {
                            p.lock().unwrap().push(s.filters.len());
                            Packet::SubAck(SubAck {
                                pkid: s.pkid,
                                return_codes: s
                                    .filters
                                    .iter()
                                    .map(|f| {
                                        if f.path.contains("denied") || f.path.ends_with("Line3/+")
                                        {
                                            SubscribeReasonCode::Failure
                                        } else {
                                            SubscribeReasonCode::Success(QoS::AtLeastOnce)
                                        }
                                    })
                                    .collect(),
                            })
                        }
                        Packet::PingReq => Packet::PingResp,
                        _ => continue,
                    };
                    let mut out = BytesMut::new();
                    reply.write(&mut out, 1 << 20).unwrap();
                    if socket.write_all(&out).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (port, packets)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_subscription_makes_its_tags_bad_naming_the_topic() {
    let dir = tempfile::tempdir().unwrap();
    let (port, packets) = refusing_broker().await;
    // 150 topics and a Sparkplug node's two filters: two SUBSCRIBE packets; the refused ones
    // are in the second (the node's devices' filter refused, its own granted).
    let mut tags: Vec<String> = (0..149)
        .map(|i| {
            format!("  {{ name = \"t{i:03}\", topic = \"plant/t{i:03}\", format = \"text\" }},")
        })
        .collect();
    tags.push("  { name = \"secret\", topic = \"plant/zz/denied\", format = \"text\" },".into());
    tags.push("  { name = \"spn\", format = \"sparkplug\", group = \"G\", edge_node = \"Line3\", metric = \"m\" },".into());
    tags.push("  { name = \"spd\", format = \"sparkplug\", group = \"G\", edge_node = \"Line3\", device = \"D\", metric = \"m\" },".into());
    let text = format!(
        "gateway_id = \"line3\"\n[[source]]\nname = \"uns\"\nkind = \"mqtt\"\nurl = \"mqtt://127.0.0.1:{port}\"\ninsecure = true\ntags = [\n{}\n]\n[[sink]]\nname = \"out\"\nkind = \"stdout\"\nroutes = [\"*\"]\n",
        tags.join("\n")
    );
    let loaded =
        firmware_config::load("t.toml", &text).unwrap_or_else(|r| panic!("{}", r.render(false)));
    let buffer = dir.path().join("buffer.db");
    let paths = Paths {
        gateway_id: "line3",
        base: dir.path(),
        buffer: &buffer,
    };
    let (tx, mut rx) = mpsc::channel(64);
    let cancel = CancellationToken::new();
    let task = tokio::spawn(Source::build(&loaded.sources[0], paths).run(tx, cancel.clone()));
    // Bad: the refused topics' tags, each naming its topic; nothing else.
    let mut bad = std::collections::BTreeMap::new();
    while bad.len() < 2 {
        let batch = tokio::time::timeout(LIMIT, rx.recv())
            .await
            .unwrap()
            .unwrap();
        for s in batch.samples {
            let Quality::Bad(why) = &s.quality else {
                continue;
            };
            bad.insert(s.tag.to_string(), why.clone());
        }
    }
    assert_eq!(
        bad.keys().collect::<Vec<_>>(),
        ["uns.secret", "uns.spd"],
        "only the refused topics' tags: {bad:?}"
    );
    assert!(
        bad["uns.secret"].contains("refused the subscription to `plant/zz/denied`")
            && bad["uns.secret"].contains("ACL"),
        "{bad:?}"
    );
    assert!(bad["uns.spd"].contains("`spBv1.0/G/+/Line3/+`"), "{bad:?}");
    // No more Bad come (the node's own tag is not among them).
    while let Ok(Some(batch)) = tokio::time::timeout(Duration::from_millis(300), rx.recv()).await {
        assert!(
            batch.samples.iter().all(|s| &*s.tag != "uns.spn"),
            "{batch:?}"
        );
    }
    assert_eq!(*packets.lock().unwrap(), vec![100, 52]);
    cancel.cancel();
    task.await.unwrap();
}
