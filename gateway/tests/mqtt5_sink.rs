//! The MQTT sink speaking MQTT 5, against a broker written here (rumqttc's own packet codec,
//! a PUBACK reason chosen by topic): the event id as a user property, a message the broker
//! refuses for itself dead-lettered alone, and one it refuses for its own reasons (not
//! authorized) held, never dead-lettered, never passed over.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use bytes::BytesMut;
use firmware_config::{MqttSinkConfig, SinkConfig, SinkKind};
use gateway::{
    event::CloudEvent,
    sinks::{MqttSink, RetryPolicy, SinkStop, run_sink},
    store::{Store, StoreOptions},
};
use rumqttc::v5::mqttbytes::v5::{ConnAck, ConnectReturnCode, Packet, PubAck, PubAckReason};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
};
use tokio_util::sync::CancellationToken;

const LIMIT: Duration = Duration::from_secs(30);

/// What the broker received: (topic, event id from the user property, content type).
type Received = Arc<Mutex<Vec<(String, Option<String>, Option<String>)>>>;

/// An MQTT 5 broker that acknowledges every PUBLISH with the reason `judge` gives its topic.
async fn broker(judge: fn(&str) -> PubAckReason) -> (u16, Received) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let received: Received = Arc::default();
    let r = received.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            let r = r.clone();
            tokio::spawn(async move {
                let mut buffer = BytesMut::new();
                loop {
                    let packet = loop {
                        match Packet::read(&mut buffer, None) {
                            Ok(p) => break p,
                            Err(rumqttc::v5::mqttbytes::Error::InsufficientBytes(_)) => {
                                if socket.read_buf(&mut buffer).await.unwrap_or(0) == 0 {
                                    return;
                                }
                            }
                            Err(_) => return,
                        }
                    };
                    let reply = match packet {
                        Packet::Connect(..) => Some(Packet::ConnAck(ConnAck {
                            session_present: false,
                            code: ConnectReturnCode::Success,
                            properties: None,
                        })),
                        Packet::Publish(p) => {
                            let topic = String::from_utf8_lossy(&p.topic).into_owned();
                            let props = p.properties.unwrap_or_default();
                            let id = props
                                .user_properties
                                .iter()
                                .find(|(k, _)| k == "id")
                                .map(|(_, v)| v.clone());
                            let reason = judge(&topic);
                            r.lock().unwrap().push((topic, id, props.content_type));
                            let mut ack = PubAck::new(p.pkid, None);
                            ack.reason = reason;
                            Some(Packet::PubAck(ack))
                        }
                        Packet::PingReq(_) => {
                            Some(Packet::PingResp(rumqttc::v5::mqttbytes::v5::PingResp))
                        }
                        _ => None,
                    };
                    if let Some(reply) = reply {
                        let mut out = BytesMut::new();
                        reply.write(&mut out, None).unwrap();
                        if socket.write_all(&out).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    (port, received)
}

/// A store with one event per machine named in `machines`, in order; their ids.
async fn store_with(dir: &std::path::Path, machines: &[&str]) -> (Store, Vec<String>) {
    let (store, writer) =
        Store::open(StoreOptions::new(dir.join("buffer.db"), &["broker"])).unwrap();
    std::mem::forget(writer);
    let events: Vec<CloudEvent> = machines
        .iter()
        .enumerate()
        .map(|(i, m)| {
            CloudEvent::new(
                "line3",
                m,
                "production.count",
                m,
                SystemTime::now(),
                serde_json::json!({ "machine": m, "total": i }),
            )
        })
        .collect();
    let ids = events.iter().map(|e| e.id.clone()).collect();
    store.append(events, vec![]).await.unwrap();
    (store, ids)
}

fn sink(port: u16) -> (SinkConfig, MqttSinkConfig) {
    let mqtt = MqttSinkConfig {
        host: "127.0.0.1".into(),
        port,
        tls: false,
        ca_file: None,
        identity: None,
        topic: "causeway/{machine}/{type}".into(),
        client_id: None,
        credentials: None,
        timeout: Duration::from_secs(5),
        retry_initial: Duration::from_millis(50),
        retry_max: Duration::from_millis(200),
        v5: true,
    };
    let config = SinkConfig {
        name: "broker".into(),
        routes: vec!["*".into()],
        batch_size: 50,
        max_batch_bytes: 1 << 20,
        breaker_failures: 5,
        breaker_open: Duration::from_secs(1),
        rate_limit: None,
        kind: SinkKind::Mqtt(mqtt.clone()),
    };
    (config, mqtt)
}

fn spawn(
    store: &Store,
    dir: &std::path::Path,
    port: u16,
    stop: SinkStop,
) -> tokio::task::JoinHandle<()> {
    let (config, mqtt) = sink(port);
    let sink = MqttSink::new("broker", "line3", &mqtt, dir).unwrap();
    tokio::spawn(run_sink(
        "broker".into(),
        config,
        sink,
        store.clone(),
        store.reader().unwrap(),
        RetryPolicy::new(Duration::from_millis(50), Duration::from_millis(200)),
        stop,
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_refused_for_its_topic_is_dead_lettered_alone_and_ids_travel_as_properties() {
    let dir = tempfile::tempdir().unwrap();
    let (port, received) = broker(|topic| {
        if topic.contains("bad") {
            PubAckReason::TopicNameInvalid
        } else {
            PubAckReason::Success
        }
    })
    .await;
    let machines = ["press1", "press2", "press3", "bad", "press5", "press6"];
    let (store, ids) = store_with(dir.path(), &machines).await;
    let stop = SinkStop {
        inputs_done: CancellationToken::new(),
        abort: CancellationToken::new(),
    };
    stop.inputs_done.cancel();
    tokio::time::timeout(LIMIT, spawn(&store, dir.path(), port, stop))
        .await
        .expect("the sink catches up")
        .unwrap();
    let reader = store.reader().unwrap();
    assert_eq!(
        reader.cursor("broker").await.unwrap(),
        machines.len() as i64
    );
    let dead = reader.dead_letters("broker").await.unwrap();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].1, ids[3]);
    assert!(dead[0].2.contains("topic as invalid"), "{}", dead[0].2);
    // Every other event reached the broker, its id as a user property, typed as CloudEvents.
    let got = received.lock().unwrap().clone();
    for (i, id) in ids.iter().enumerate().filter(|(i, _)| *i != 3) {
        let (topic, prop, content_type) = got
            .iter()
            .find(|(_, p, _)| p.as_deref() == Some(id))
            .unwrap_or_else(|| panic!("event {i} published with its id as a user property"));
        assert_eq!(topic, &format!("causeway/{}/production.count", machines[i]));
        assert_eq!(prop.as_deref(), Some(id.as_str()));
        assert_eq!(
            content_type.as_deref(),
            Some("application/cloudevents+json")
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_the_broker_is_not_authorized_to_take_holds_the_sink() {
    let dir = tempfile::tempdir().unwrap();
    let (port, received) = broker(|topic| {
        if topic.contains("press2") {
            PubAckReason::NotAuthorized
        } else {
            PubAckReason::Success
        }
    })
    .await;
    let (store, _) = store_with(dir.path(), &["press1", "press1", "press2", "press1"]).await;
    let stop = SinkStop {
        inputs_done: CancellationToken::new(),
        abort: CancellationToken::new(),
    };
    let task = spawn(&store, dir.path(), port, stop.clone());
    let reader = store.reader().unwrap();
    // The two before it are delivered; the refused one is tried again and again, not passed.
    let deadline = tokio::time::Instant::now() + LIMIT;
    while received
        .lock()
        .unwrap()
        .iter()
        .filter(|(t, _, _)| t.contains("press2"))
        .count()
        < 3
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the refused event is retried"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(reader.cursor("broker").await.unwrap(), 2);
    assert!(reader.dead_letters("broker").await.unwrap().is_empty());
    stop.abort.cancel();
    task.await.unwrap();
}
