//! `causeway mqtt sub`: what arrives on a broker's topics, decoded, for an engineer checking a
//! broker before writing the config.

use std::{collections::HashMap, io::Write, sync::Arc, time::Duration};

use anyhow::{Context, Result, bail};
use protocols::mqtt::sparkplug::{self, Kind, Topic};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, TlsConfiguration, Transport};
use serde_json::json;

/// How payloads are shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shown {
    /// JSON, printed compactly (a malformed message says why).
    Json,
    /// Text, control characters escaped.
    Text,
    /// Sparkplug B, decoded to one line of JSON; metrics sent by alias are named from the
    /// births seen in this session.
    Sparkplug,
}

/// Where to listen and how to show what arrives.
#[derive(Debug, Clone)]
pub struct SubArgs {
    /// Broker host.
    pub host: String,
    /// Broker port.
    pub port: u16,
    /// TLS configuration (`None`: plain MQTT).
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// User and password.
    pub credentials: Option<(String, String)>,
    /// Topic filters (wildcards allowed).
    pub topics: Vec<String>,
    /// How payloads are decoded.
    pub format: Shown,
    /// Stop after this many messages.
    pub count: Option<usize>,
    /// Stop after this long.
    pub duration: Option<Duration>,
    /// Larger payloads are shown by size only.
    pub max_payload: usize,
}

/// Subscribes and prints each message as `topic  payload` on one line.
pub async fn run(args: &SubArgs, out: &mut dyn Write) -> Result<()> {
    let id = format!("causeway-sub-{}", std::process::id());
    let mut options = MqttOptions::new(id, &args.host, args.port);
    options
        .set_keep_alive(Duration::from_secs(30))
        .set_clean_session(true)
        .set_max_packet_size(args.max_payload.saturating_add(65_536), 65_536);
    if let Some((user, password)) = &args.credentials {
        options.set_credentials(user, password);
    }
    if let Some(tls) = &args.tls {
        options.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
            tls.clone(),
        )));
    }
    let (client, mut eventloop) = AsyncClient::new(options, 16);
    let deadline = args.duration.map(|d| tokio::time::Instant::now() + d);
    let mut seen = 0usize;
    let mut births = Births::default();
    loop {
        let next = eventloop.poll();
        let event = match deadline {
            Some(at) => match tokio::time::timeout_at(at, next).await {
                Ok(e) => e,
                Err(_) => return Ok(()),
            },
            None => next.await,
        };
        match event.with_context(|| format!("connecting to {}:{}", args.host, args.port))? {
            Event::Incoming(Packet::ConnAck(_)) => {
                let filters = args
                    .topics
                    .iter()
                    .map(|t| rumqttc::SubscribeFilter::new(t.clone(), QoS::AtLeastOnce));
                client.subscribe_many(filters).await?;
            }
            Event::Incoming(Packet::SubAck(ack))
                if ack
                    .return_codes
                    .iter()
                    .any(|c| matches!(c, rumqttc::SubscribeReasonCode::Failure)) =>
            {
                bail!(
                    "the broker refused a subscription; check the user's ACL and the topic filters"
                );
            }
            Event::Incoming(Packet::Publish(p)) => {
                let shown =
                    if args.format == Shown::Sparkplug && p.payload.len() <= args.max_payload {
                        births.show(&p.topic, &p.payload)
                    } else {
                        show(&p.payload, args.format == Shown::Json, args.max_payload)
                    };
                writeln!(out, "{}  {shown}", p.topic)?;
                out.flush()?;
                seen += 1;
                if args.count.is_some_and(|n| seen >= n) {
                    let _ = client.disconnect().await;
                    return Ok(());
                }
            }
            _ => {}
        }
    }
}

/// A payload on one line: compact JSON, or text with control characters escaped.
pub fn show(payload: &[u8], json: bool, max: usize) -> String {
    if payload.len() > max {
        return format!("<{} bytes, more than --max-payload>", payload.len());
    }
    if json {
        return match serde_json::from_slice::<serde_json::Value>(payload) {
            Ok(v) => v.to_string(),
            Err(e) => format!(
                "<malformed JSON at line {}, column {}: {e}> {}",
                e.line(),
                e.column(),
                text(payload)
            ),
        };
    }
    text(payload)
}

fn text(payload: &[u8]) -> String {
    let s = String::from_utf8_lossy(payload);
    let shown: String = s.chars().take(1_000).flat_map(char::escape_debug).collect();
    if s.chars().count() > 1_000 {
        format!("{shown}…")
    } else {
        shown
    }
}

/// What the births seen so far declared: (group, edge node) -> alias -> (name, data type).
#[derive(Debug, Default)]
pub struct Births {
    aliases: HashMap<(String, String), HashMap<u64, (String, u32)>>,
    /// Aliases remembered, in all (at most [`MAX_ALIASES`]).
    count: usize,
}

/// Aliases remembered in all; past it, what was learnt is forgotten and learnt again from the
/// next births.
const MAX_ALIASES: usize = 100_000;
/// Edge nodes remembered; past it, likewise.
const MAX_NODES: usize = 10_000;

impl Births {
    /// A Sparkplug B payload on one line of JSON: `seq`, `timestamp` and each metric's name
    /// (from the birth when sent by alias), alias, type and value (or why it has none).
    pub fn show(&mut self, topic: &str, payload: &[u8]) -> String {
        let payload = match sparkplug::decode(payload) {
            Ok(p) => p,
            Err(why) => return format!("<{why}> {}", text(payload)),
        };
        let parsed = Topic::parse(topic);
        let Births {
            aliases: all,
            count,
        } = self;
        let known = parsed.map(|t| {
            let key = (t.group.to_owned(), t.edge_node.to_owned());
            if t.kind == Kind::NBirth
                && let Some(old) = all.remove(&key)
            {
                *count = count.saturating_sub(old.len());
            }
            if *count >= MAX_ALIASES || all.len() >= MAX_NODES {
                all.clear();
                *count = 0;
            }
            // Only a birth makes an entry: data from a node never seen born adds nothing.
            let birth = matches!(t.kind, Kind::NBirth | Kind::DBirth);
            let map = if birth {
                Some(all.entry(key).or_default())
            } else {
                all.get_mut(&key)
            };
            (map, t.kind)
        });
        let (mut aliases, kind) = match known {
            Some((a, k)) => (a, Some(k)),
            None => (None, None),
        };
        let birth = matches!(kind, Some(Kind::NBirth | Kind::DBirth));
        let metrics: Vec<serde_json::Value> = payload
            .metrics
            .iter()
            .map(|m| {
                let declared = m
                    .alias
                    .and_then(|a| aliases.as_ref().and_then(|map| map.get(&a)).cloned());
                if birth
                    && let (Some(alias), Some(name), Some(map)) =
                        (m.alias, &m.name, aliases.as_mut())
                    && *count < MAX_ALIASES
                    && map
                        .insert(alias, (name.clone(), m.datatype.unwrap_or(0)))
                        .is_none()
                {
                    *count += 1;
                }
                let name = m
                    .name
                    .clone()
                    .or_else(|| declared.as_ref().map(|d| d.0.clone()));
                let code = m.datatype.or(declared.map(|d| d.1)).unwrap_or(0);
                let mut shown = serde_json::Map::new();
                if let Some(name) = name {
                    shown.insert("name".into(), json!(name));
                }
                if let Some(alias) = m.alias {
                    shown.insert("alias".into(), json!(alias));
                }
                shown.insert("type".into(), json!(sparkplug::type_name(code)));
                match sparkplug::value(m, code) {
                    // Serializing a value into a `serde_json::Value` cannot fail (no map keys).
                    Ok(v) => shown.insert(
                        "value".into(),
                        serde_json::to_value(crate::event::ValueJson(&v))
                            .unwrap_or(serde_json::Value::Null),
                    ),
                    Err(why) => shown.insert("error".into(), json!(why)),
                };
                if m.is_historical == Some(true) {
                    shown.insert("historical".into(), json!(true));
                }
                serde_json::Value::Object(shown)
            })
            .collect();
        let mut line = serde_json::Map::new();
        if let Some(seq) = payload.seq {
            line.insert("seq".into(), json!(seq));
        }
        if let Some(ms) = payload.timestamp {
            line.insert("timestamp".into(), json!(ms));
        }
        line.insert("metrics".into(), json!(metrics));
        serde_json::Value::Object(line).to_string()
    }
}

#[cfg(test)]
mod tests {
    use prost::Message as _;
    use protocols::mqtt::sparkplug::{Metric, MetricValue, Payload};

    use super::*;

    fn bytes(seq: u64, metrics: Vec<Metric>) -> Vec<u8> {
        Payload {
            timestamp: Some(1_800_000_000_000),
            metrics,
            seq: Some(seq),
            ..Payload::default()
        }
        .encode_to_vec()
    }

    #[test]
    fn sparkplug_metrics_by_alias_are_named_from_the_birth() {
        let mut births = Births::default();
        let birth = bytes(
            0,
            vec![Metric {
                name: Some("Press/Force".into()),
                alias: Some(7),
                datatype: Some(3),
                value: Some(MetricValue::Int(0xFFFF_FFFE)),
                ..Metric::default()
            }],
        );
        let line = births.show("spBv1.0/G/NBIRTH/N", &birth);
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(
            v,
            json!({"seq": 0, "timestamp": 1_800_000_000_000u64, "metrics": [
                {"name": "Press/Force", "alias": 7, "type": "Int32", "value": -2}
            ]})
        );
        let data = bytes(
            1,
            vec![
                Metric {
                    alias: Some(7),
                    value: Some(MetricValue::Int(5)),
                    ..Metric::default()
                },
                Metric {
                    alias: Some(8),
                    value: Some(MetricValue::Int(1)),
                    ..Metric::default()
                },
            ],
        );
        let line = births.show("spBv1.0/G/NDATA/N", &data);
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["metrics"][0]["name"], "Press/Force");
        assert_eq!(v["metrics"][0]["value"], 5);
        assert_eq!(
            v["metrics"][1].get("name"),
            None,
            "alias 8 was never declared"
        );
        // Another node's alias 7 is not this one's.
        let line = births.show("spBv1.0/G/NDATA/Other", &data);
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["metrics"][0].get("name"), None);
        assert!(
            births
                .show("spBv1.0/G/NDATA/N", &[0x12, 0xFF])
                .starts_with("<malformed Sparkplug B payload")
        );
    }
}
