//! The MQTT source reading Sparkplug B against rumqttd in-process, from an edge node written
//! here from the protobuf definition (field by field, not through Causeway's own types): the
//! rebirth asked for on connecting, births with aliases, data by alias, a sequence gap answered
//! by a rebirth request, and the broker's will (NDEATH) making every tag Bad.

use std::time::Duration;

use gateway::sources::{Paths, Source};
use prost::encoding::{WireType, encode_key, encode_varint};
use protocols::model::{Quality, Sample, SampleBatch, Value};
use rumqttc::{AsyncClient, Event, LastWill, MqttOptions, Packet, QoS};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

#[path = "support/broker.rs"]
mod support_broker;
use support_broker::broker;

const LIMIT: Duration = Duration::from_secs(30);
const NCMD: &str = "spBv1.0/Plant1/NCMD/Line3";

fn config(port: u16) -> String {
    format!(
        r#"
gateway_id = "line3"

[[source]]
name = "uns"
kind = "mqtt"
url = "mqtt://127.0.0.1:{port}"
insecure = true
tags = [
  {{ name = "count", format = "sparkplug", group = "Plant1", edge_node = "Line3", metric = "Production/Count", type = "u32" }},
  {{ name = "temp",  format = "sparkplug", group = "Plant1", edge_node = "Line3", metric = "Temp" }},
  {{ name = "force", format = "sparkplug", group = "Plant1", edge_node = "Line3", device = "Press1", metric = "Force" }},
]

[[sink]]
name = "out"
kind = "file"
path = "events.jsonl"
routes = ["*"]
"#
    )
}

/// A metric's value, by the field the definition gives it.
enum V {
    /// `int_value` (10).
    Int(u32),
    /// `long_value` (11).
    Long(u64),
    /// `float_value` (12).
    Float(f32),
    /// `double_value` (13).
    Double(f64),
    /// `boolean_value` (14).
    Bool(bool),
}

fn len_delimited(field: u32, bytes: &[u8], out: &mut Vec<u8>) {
    encode_key(field, WireType::LengthDelimited, out);
    encode_varint(bytes.len() as u64, out);
    out.extend_from_slice(bytes);
}

/// `Payload.Metric`: name (1), alias (2), datatype (4), the value.
fn metric(name: Option<&str>, alias: u64, datatype: Option<u32>, value: V) -> Vec<u8> {
    let mut m = Vec::new();
    if let Some(name) = name {
        len_delimited(1, name.as_bytes(), &mut m);
    }
    encode_key(2, WireType::Varint, &mut m);
    encode_varint(alias, &mut m);
    if let Some(t) = datatype {
        encode_key(4, WireType::Varint, &mut m);
        encode_varint(u64::from(t), &mut m);
    }
    match value {
        V::Int(v) => {
            encode_key(10, WireType::Varint, &mut m);
            encode_varint(u64::from(v), &mut m);
        }
        V::Long(v) => {
            encode_key(11, WireType::Varint, &mut m);
            encode_varint(v, &mut m);
        }
        V::Float(v) => {
            encode_key(12, WireType::ThirtyTwoBit, &mut m);
            m.extend_from_slice(&v.to_le_bytes());
        }
        V::Double(v) => {
            encode_key(13, WireType::SixtyFourBit, &mut m);
            m.extend_from_slice(&v.to_le_bytes());
        }
        V::Bool(v) => {
            encode_key(14, WireType::Varint, &mut m);
            encode_varint(u64::from(v), &mut m);
        }
    }
    m
}

/// `Payload`: timestamp (1), metrics (2), seq (3).
fn payload(seq: Option<u64>, metrics: &[Vec<u8>]) -> Vec<u8> {
    let mut p = Vec::new();
    encode_key(1, WireType::Varint, &mut p);
    encode_varint(1_800_000_000_000, &mut p);
    for m in metrics {
        len_delimited(2, m, &mut p);
    }
    if let Some(seq) = seq {
        encode_key(3, WireType::Varint, &mut p);
        encode_varint(seq, &mut p);
    }
    p
}

/// Whether an NCMD payload sets `Node Control/Rebirth` to true (read field by field).
fn asks_rebirth(bytes: &[u8]) -> bool {
    let needle = b"Node Control/Rebirth";
    bytes.windows(needle.len()).any(|w| w == needle)
        // boolean_value (field 14, varint) = 1
        && bytes.windows(2).any(|w| w == [14 << 3, 1])
}

/// The edge node: a Sparkplug session with its death certificate as the will.
struct Edge {
    client: AsyncClient,
    commands: mpsc::UnboundedReceiver<Vec<u8>>,
    task: tokio::task::JoinHandle<()>,
}

impl Edge {
    async fn connect(port: u16) -> Self {
        let mut options = MqttOptions::new("edge-line3", "127.0.0.1", port);
        let death = payload(None, &[metric(Some("bdSeq"), 0, Some(8), V::Long(0))]);
        options.set_last_will(LastWill::new(
            "spBv1.0/Plant1/NDEATH/Line3",
            death,
            QoS::AtLeastOnce,
            false,
        ));
        let (client, mut eventloop) = AsyncClient::new(options, 100);
        let (tx, commands) = mpsc::unbounded_channel();
        let (subscribed_tx, subscribed) = tokio::sync::oneshot::channel();
        let sub = client.clone();
        let task = tokio::spawn(async move {
            let mut subscribed_tx = Some(subscribed_tx);
            while let Ok(event) = eventloop.poll().await {
                match event {
                    Event::Incoming(Packet::ConnAck(_)) => {
                        let _ = sub.subscribe(NCMD, QoS::AtMostOnce).await;
                    }
                    Event::Incoming(Packet::SubAck(_)) => {
                        if let Some(s) = subscribed_tx.take() {
                            let _ = s.send(());
                        }
                    }
                    Event::Incoming(Packet::Publish(p)) if p.topic == NCMD => {
                        let _ = tx.send(p.payload.to_vec());
                    }
                    _ => {}
                }
            }
        });
        tokio::time::timeout(LIMIT, subscribed)
            .await
            .expect("the edge node subscribes")
            .unwrap();
        Edge {
            client,
            commands,
            task,
        }
    }

    async fn publish(&self, kind: &str, device: Option<&str>, bytes: Vec<u8>) {
        let topic = match device {
            Some(d) => format!("spBv1.0/Plant1/{kind}/Line3/{d}"),
            None => format!("spBv1.0/Plant1/{kind}/Line3"),
        };
        self.client
            .publish(topic, QoS::AtMostOnce, false, bytes)
            .await
            .unwrap();
    }

    /// NBIRTH (seq 0, bdSeq 0) and DBIRTH (seq 1), `count` as the counter's value.
    async fn births(&self, count: u32) {
        let nbirth = payload(
            Some(0),
            &[
                metric(Some("bdSeq"), 0, Some(8), V::Long(0)),
                metric(Some("Production/Count"), 1, Some(7), V::Int(count)),
                metric(Some("Temp"), 2, Some(9), V::Float(21.5)),
                metric(Some("Node Control/Rebirth"), 3, Some(11), V::Bool(false)),
            ],
        );
        self.publish("NBIRTH", None, nbirth).await;
        let dbirth = payload(
            Some(1),
            &[metric(Some("Force"), 10, Some(10), V::Double(12.5))],
        );
        self.publish("DBIRTH", Some("Press1"), dbirth).await;
    }

    /// Waits for a rebirth request.
    async fn rebirth_asked(&mut self) {
        tokio::time::timeout(LIMIT, async {
            loop {
                let command = self.commands.recv().await.expect("the edge node runs");
                if asks_rebirth(&command) {
                    return;
                }
            }
        })
        .await
        .expect("a rebirth request within the limit");
    }
}

/// Samples until `done` accepts one, within [`LIMIT`].
async fn until(
    rx: &mut mpsc::Receiver<SampleBatch>,
    mut done: impl FnMut(&Sample) -> bool,
) -> Sample {
    tokio::time::timeout(LIMIT, async {
        loop {
            let batch = rx.recv().await.expect("the source runs");
            let mut tags: Vec<&str> = batch.samples.iter().map(|s| &*s.tag).collect();
            tags.sort_unstable();
            let n = tags.len();
            tags.dedup();
            assert_eq!(tags.len(), n, "a tag at most once per batch");
            if let Some(s) = batch.samples.into_iter().find(|s| done(s)) {
                return s;
            }
        }
    })
    .await
    .expect("the awaited sample within the limit")
}

fn is(tag: &str, value: Value) -> impl FnMut(&Sample) -> bool {
    let tag = tag.to_owned();
    move |s| *s.tag == *tag && s.value.as_ref() == Some(&value) && s.quality == Quality::Good
}

fn bad(tag: &str, reason: &str) -> impl FnMut(&Sample) -> bool {
    let (tag, reason) = (tag.to_owned(), reason.to_owned());
    move |s| *s.tag == *tag && matches!(&s.quality, Quality::Bad(why) if why.contains(&reason))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_node_is_read_through_births_data_a_gap_and_its_death() {
    let dir = tempfile::tempdir().unwrap();
    let addr = broker();
    let loaded = firmware_config::load("t.toml", &config(addr.port())).unwrap();
    let buffer = dir.path().join("buffer.db");
    let paths = Paths {
        gateway_id: "line3",
        base: dir.path(),
        buffer: &buffer,
    };
    let mut edge = Edge::connect(addr.port()).await;
    let (tx, mut rx) = mpsc::channel(64);
    let cancel = CancellationToken::new();
    let task = tokio::spawn(Source::build(&loaded.sources[0], paths).run(tx, cancel.clone()));

    // Connecting, the source asks for a rebirth; the births bring every value.
    edge.rebirth_asked().await;
    edge.births(10).await;
    until(&mut rx, is("uns.count", Value::U64(10))).await;
    until(&mut rx, is("uns.force", Value::F64(12.5))).await;

    // Data by alias only.
    edge.publish(
        "NDATA",
        None,
        payload(Some(2), &[metric(None, 1, None, V::Int(11))]),
    )
    .await;
    until(&mut rx, is("uns.count", Value::U64(11))).await;
    edge.publish(
        "DDATA",
        Some("Press1"),
        payload(Some(3), &[metric(None, 10, None, V::Double(13.0))]),
    )
    .await;
    until(&mut rx, is("uns.force", Value::F64(13.0))).await;

    // seq 4 and 5 lost: the value after the gap is not believed, a rebirth is asked for: at
    // once or, as one went out on connecting, once 5 s have passed since (the node's data
    // meanwhile read as waiting for the birth).
    while edge.commands.try_recv().is_ok() {}
    edge.publish(
        "NDATA",
        None,
        payload(Some(6), &[metric(None, 1, None, V::Int(99))]),
    )
    .await;
    let mut waiting = bad("uns.count", "waiting for a birth certificate");
    until(&mut rx, |s| {
        assert_ne!(
            s.value,
            Some(Value::U64(99)),
            "a value after a gap is believed"
        );
        waiting(s)
    })
    .await;
    let mut seq = 7;
    tokio::time::timeout(LIMIT, async {
        loop {
            edge.publish(
                "NDATA",
                None,
                payload(Some(seq), &[metric(None, 1, None, V::Int(100))]),
            )
            .await;
            seq += 1;
            if let Ok(Some(command)) =
                tokio::time::timeout(Duration::from_millis(250), edge.commands.recv()).await
                && asks_rebirth(&command)
            {
                return;
            }
        }
    })
    .await
    .expect("a rebirth request after the gap");
    while let Ok(batch) = rx.try_recv() {
        assert!(
            batch
                .samples
                .iter()
                .all(|s| s.value != Some(Value::U64(100))),
            "data before the rebirth is not read"
        );
    }
    edge.births(14).await;
    until(&mut rx, is("uns.count", Value::U64(14))).await;

    // The edge node's connection breaks: the broker publishes its will, the NDEATH.
    edge.task.abort();
    drop(edge);
    until(&mut rx, bad("uns.force", "offline (NDEATH)")).await;
    cancel.cancel();
    task.await.unwrap();
}
