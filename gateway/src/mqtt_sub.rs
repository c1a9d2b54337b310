//! `causeway mqtt sub`: what arrives on a broker's topics, decoded, for an engineer checking a
//! broker before writing the config.

use std::{io::Write, sync::Arc, time::Duration};

use anyhow::{Context, Result, bail};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, TlsConfiguration, Transport};

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
    /// Decode payloads as JSON (pretty-printed) rather than show them as text.
    pub json: bool,
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
                writeln!(
                    out,
                    "{}  {}",
                    p.topic,
                    show(&p.payload, args.json, args.max_payload)
                )?;
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
