//! The MQTT sink: each event published with QoS 1 to its topic, delivered only on the broker's
//! PUBACK for that very packet.
//!
//! rumqttc's `publish()` only queues a request; its event loop (run in a task here) assigns the
//! packet id when it writes the PUBLISH and reports the PUBACK later. The sink pairs the two in
//! order, so a batch's outcome is exactly the prefix the broker acknowledged
//! ([`Outcome::Partial`]): the cursor moves over that prefix and the rest is sent again. Any
//! connection failure throws the client away whole (no hidden retransmission state) and the
//! next delivery connects afresh; a re-sent event keeps its id, for the receiver to dedupe.
//!
//! With `mqtt_version = "5"` the event id also travels as the user property `id` (content type
//! `application/cloudevents+json`), and a PUBACK can refuse: for the message's own fault
//! (invalid topic or payload format) that event alone is dead-lettered ([`Outcome::Reject`]
//! once it leads a batch); for the broker's (not authorized, quota) it is retried and logged,
//! the events before it delivered. MQTT 3.1.1 cannot refuse: a broker denying a topic by ACL
//! acknowledges and drops the message, so an ACL must be checked, or MQTT 5 used.

use std::{
    collections::{HashMap, VecDeque},
    path::Path,
    sync::Arc,
    time::Duration,
};

use firmware_config::MqttSinkConfig;
use rumqttc::{
    AsyncClient, Event, EventLoop, MqttOptions, Outgoing, Packet, QoS, TlsConfiguration, Transport,
};
use tokio::{sync::mpsc, task::JoinHandle};

use super::{Deliver, Outcome, SinkError};
use crate::store::StoredEvent;

/// The largest event payload published (1 MiB): a larger one is refused by size.
const MAX_PAYLOAD: usize = 1 << 20;

/// What the event loop task reports.
#[derive(Debug)]
enum Report {
    Connected,
    /// A PUBLISH was written with this packet id.
    Sent(u16),
    /// The broker acknowledged this packet id.
    Acked(u16),
    /// The broker (MQTT 5) refused this packet id: whose fault, and why.
    Refused(u16, Refusal),
    /// The connection failed.
    Down(String),
}

/// An MQTT 5 PUBACK with a failure reason.
#[derive(Debug, Clone)]
enum Refusal {
    /// The message itself (its topic or payload): that event alone is dead-lettered.
    Event(String),
    /// The broker's configuration or state (not authorized, quota): retried, logged.
    Broker(String),
}

/// A client of either protocol version.
enum Client {
    V4(AsyncClient),
    V5(rumqttc::v5::AsyncClient),
}

impl Client {
    /// Queues `event` for `topic` with QoS 1 (on MQTT 5 with its id as a user property and
    /// the CloudEvents content type).
    async fn publish(&self, topic: &str, event: &StoredEvent) -> Result<(), String> {
        let payload = event.payload.as_bytes().to_vec();
        match self {
            Client::V4(c) => c
                .publish(topic, QoS::AtLeastOnce, false, payload)
                .await
                .map_err(|e| e.to_string()),
            Client::V5(c) => {
                let properties = rumqttc::v5::mqttbytes::v5::PublishProperties {
                    content_type: Some("application/cloudevents+json".to_owned()),
                    user_properties: vec![("id".to_owned(), event.id.clone())],
                    ..Default::default()
                };
                c.publish_with_properties(
                    topic,
                    rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
                    false,
                    payload,
                    properties,
                )
                .await
                .map_err(|e| e.to_string())
            }
        }
    }
}

struct Connection {
    client: Client,
    capacity: usize,
    reports: mpsc::UnboundedReceiver<Report>,
    task: JoinHandle<()>,
    ready: bool,
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A built `kind = "mqtt"` sink.
pub struct MqttSink {
    name: String,
    config: MqttSinkConfig,
    tls: Option<Arc<rustls::ClientConfig>>,
    password: Option<String>,
    client_id: String,
    connection: Option<Connection>,
}

impl std::fmt::Debug for MqttSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MqttSink")
            .field("name", &self.name)
            .field(
                "broker",
                &format!("{}:{}", self.config.host, self.config.port),
            )
            .finish_non_exhaustive()
    }
}

impl MqttSink {
    /// The sink `config` describes; the CA file and the password are read now.
    ///
    /// # Errors
    /// The CA file or the password cannot be read.
    pub fn new(
        name: &str,
        gateway_id: &str,
        config: &MqttSinkConfig,
        base: &Path,
    ) -> Result<Self, SinkError> {
        let tls = if config.tls {
            let tls = crate::tls::client_config_in(
                base,
                config.ca_file.as_deref(),
                config.identity.as_ref(),
            )
            .map_err(|source| SinkError::Tls {
                sink: name.to_owned(),
                source,
            })?;
            Some(Arc::new(tls))
        } else {
            None
        };
        let password = match &config.credentials {
            None => None,
            Some((user, secret)) => {
                Some(protocols::secret::read_env(secret, base).map_err(|why| {
                    SinkError::Credential {
                        sink: name.to_owned(),
                        why: format!("the password of user `{user}`: {why}"),
                    }
                })?)
            }
        };
        Ok(MqttSink {
            name: name.to_owned(),
            client_id: config
                .client_id
                .clone()
                .unwrap_or_else(|| format!("causeway-{gateway_id}-{name}")),
            config: config.clone(),
            tls,
            password,
            connection: None,
        })
    }

    fn connect(&self, capacity: usize) -> Connection {
        if self.config.v5 {
            return self.connect_v5(capacity);
        }
        let mut options = MqttOptions::new(&self.client_id, &self.config.host, self.config.port);
        options
            .set_keep_alive(Duration::from_secs(30))
            .set_clean_session(true)
            .set_request_channel_capacity(capacity.max(10))
            .set_max_packet_size(1 << 20, MAX_PAYLOAD + u16::MAX as usize + 16);
        if let (Some((user, _)), Some(password)) = (&self.config.credentials, &self.password) {
            options.set_credentials(user, password);
        }
        if let Some(tls) = &self.tls {
            options.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
                tls.clone(),
            )));
        }
        let (client, eventloop) = AsyncClient::new(options, capacity.max(10));
        // Unbounded by type, bounded by use: at most two reports (Sent, then Acked or Refused)
        // per publish queued, and the request queue holds `capacity`, plus Connected and Down.
        // A bounded channel could stall the event loop, and with it the acknowledgements.
        let (tx, reports) = mpsc::unbounded_channel();
        let task = tokio::spawn(drive(eventloop, tx));
        Connection {
            client: Client::V4(client),
            capacity: capacity.max(10),
            reports,
            task,
            ready: false,
        }
    }

    fn connect_v5(&self, capacity: usize) -> Connection {
        let mut options =
            rumqttc::v5::MqttOptions::new(&self.client_id, &self.config.host, self.config.port);
        options
            .set_keep_alive(Duration::from_secs(30))
            .set_clean_start(true)
            .set_request_channel_capacity(capacity.max(10))
            .set_max_packet_size(u32::try_from(MAX_PAYLOAD + u16::MAX as usize + 16).ok());
        if let (Some((user, _)), Some(password)) = (&self.config.credentials, &self.password) {
            options.set_credentials(user, password);
        }
        if let Some(tls) = &self.tls {
            options.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
                tls.clone(),
            )));
        }
        let (client, eventloop) = rumqttc::v5::AsyncClient::new(options, capacity.max(10));
        // Bounded by use, as for MQTT 3.1.1 above.
        let (tx, reports) = mpsc::unbounded_channel();
        let task = tokio::spawn(drive_v5(eventloop, tx));
        Connection {
            client: Client::V5(client),
            capacity: capacity.max(10),
            reports,
            task,
            ready: false,
        }
    }

    /// The topic of `event`, from the template: `{gateway_id}` and `{machine}` from its
    /// `source` (`causeway://<gateway_id>/<machine>`), `{type}` from its type. Filled in one
    /// pass, so a value holding `{...}` is not expanded again.
    fn topic(&self, event: &StoredEvent) -> String {
        let parsed: serde_json::Value = serde_json::from_str(&event.payload).unwrap_or_default();
        let source = parsed["source"].as_str().unwrap_or_default();
        let rest = source.strip_prefix("causeway://").unwrap_or_default();
        let (gateway, machine) = rest.split_once('/').unwrap_or((rest, ""));
        let clean = |s: &str| -> String {
            s.chars()
                .map(|c| {
                    if matches!(c, '+' | '#' | '/' | '\0') {
                        '_'
                    } else {
                        c
                    }
                })
                .collect()
        };
        let mut out = String::with_capacity(self.config.topic.len() + 32);
        let mut rest = self.config.topic.as_str();
        while let Some(open) = rest.find('{') {
            out.push_str(&rest[..open]);
            let after = &rest[open..];
            let (value, len) = if after.starts_with("{gateway_id}") {
                (clean(gateway), "{gateway_id}".len())
            } else if after.starts_with("{machine}") {
                (clean(machine), "{machine}".len())
            } else if after.starts_with("{type}") {
                (clean(&event.event_type), "{type}".len())
            } else {
                ("{".to_owned(), 1)
            };
            out.push_str(&value);
            rest = &after[len..];
        }
        out.push_str(rest);
        out
    }
}

/// Runs the event loop until the connection fails, reporting what matters to the sink.
async fn drive(mut eventloop: EventLoop, tx: mpsc::UnboundedSender<Report>) {
    loop {
        let report = match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => Report::Connected,
            Ok(Event::Incoming(Packet::PubAck(ack))) => Report::Acked(ack.pkid),
            Ok(Event::Outgoing(Outgoing::Publish(pkid))) => Report::Sent(pkid),
            Ok(_) => continue,
            Err(error) => {
                let _ = tx.send(Report::Down(error.to_string()));
                return;
            }
        };
        if tx.send(report).is_err() {
            return;
        }
    }
}

/// [`drive`] for MQTT 5, where a PUBACK may refuse the message.
async fn drive_v5(mut eventloop: rumqttc::v5::EventLoop, tx: mpsc::UnboundedSender<Report>) {
    use rumqttc::v5::{
        Event as E,
        mqttbytes::v5::{Packet as P, PubAckReason as R},
    };
    loop {
        let report = match eventloop.poll().await {
            Ok(E::Incoming(P::ConnAck(_))) => Report::Connected,
            Ok(E::Incoming(P::PubAck(ack))) => match ack.reason {
                R::Success | R::NoMatchingSubscribers => Report::Acked(ack.pkid),
                R::TopicNameInvalid => Report::Refused(
                    ack.pkid,
                    Refusal::Event("the broker refused its topic as invalid".into()),
                ),
                R::PayloadFormatInvalid => Report::Refused(
                    ack.pkid,
                    Refusal::Event("the broker refused its payload format".into()),
                ),
                R::NotAuthorized => Report::Refused(
                    ack.pkid,
                    Refusal::Broker(
                        "the broker refused the publish: not authorized (grant this user publish rights on the sink's topics in the broker's ACL)".into(),
                    ),
                ),
                other => Report::Refused(
                    ack.pkid,
                    Refusal::Broker(format!("the broker refused the publish: {other:?}")),
                ),
            },
            Ok(E::Outgoing(Outgoing::Publish(pkid))) => Report::Sent(pkid),
            Ok(_) => continue,
            Err(error) => {
                let _ = tx.send(Report::Down(error.to_string()));
                return;
            }
        };
        if tx.send(report).is_err() {
            return;
        }
    }
}

impl Deliver for MqttSink {
    fn target(&self) -> String {
        let scheme = if self.config.tls { "mqtts" } else { "mqtt" };
        format!(
            "{scheme}://{}:{} {}",
            self.config.host, self.config.port, self.config.topic
        )
    }

    async fn deliver(&mut self, batch: &[StoredEvent]) -> Outcome {
        let outcome = self.publish(batch).await;
        if !matches!(outcome, Outcome::Delivered) {
            // Whatever state the client holds is thrown away: the next attempt starts clean.
            self.connection = None;
        }
        outcome
    }
}

impl MqttSink {
    async fn publish(&mut self, batch: &[StoredEvent]) -> Outcome {
        let timeout = self.config.timeout;
        let broker = format!("{}:{}", self.config.host, self.config.port);
        let topics: Vec<String> = batch.iter().map(|e| self.topic(e)).collect();
        // What no broker can take is the event's own fault: too large is isolated by the
        // runner's halving, a topic over MQTT's 65,535 bytes is refused.
        if let Some(big) = batch.iter().find(|e| e.payload.len() > MAX_PAYLOAD) {
            return Outcome::TooLarge {
                reason: format!(
                    "event {} is {} bytes, more than an MQTT publish of this sink carries ({MAX_PAYLOAD})",
                    big.id,
                    big.payload.len()
                ),
            };
        }
        if let Some(long) = topics.iter().position(|t| t.len() > u16::MAX as usize) {
            return if batch.len() == 1 {
                Outcome::Reject {
                    reason: format!(
                        "its topic is {} bytes, longer than MQTT allows",
                        topics[long].len()
                    ),
                }
            } else {
                Outcome::TooLarge {
                    reason: "a topic is longer than MQTT allows".into(),
                }
            };
        }
        // A connection that ended while idle, or whose request queue is smaller than this
        // batch, is replaced before anything is queued on it.
        if self
            .connection
            .as_ref()
            .is_some_and(|c| c.task.is_finished() || c.capacity < batch.len() + 10)
        {
            self.connection = None;
        }
        if self.connection.is_none() {
            self.connection = Some(self.connect(batch.len() + 10));
        }
        let Some(conn) = self.connection.as_mut() else {
            return retry("no connection".into());
        };
        // Wait for the CONNACK (the event loop connects when first polled).
        let deadline = tokio::time::Instant::now() + timeout;
        while !conn.ready {
            match tokio::time::timeout_at(deadline, conn.reports.recv()).await {
                Ok(Some(Report::Connected)) => conn.ready = true,
                Ok(Some(Report::Down(why))) => {
                    return retry(format!("cannot connect to the broker {broker}: {why}"));
                }
                Ok(Some(_)) => {}
                Ok(None) => return retry(format!("the connection to {broker} ended")),
                Err(_) => {
                    return retry(format!(
                        "the broker {broker} did not accept the connection within {timeout:?}"
                    ));
                }
            }
        }
        for (event, topic) in batch.iter().zip(&topics) {
            let sent = conn.client.publish(topic, event);
            if let Err(error) = tokio::time::timeout_at(deadline, sent)
                .await
                .map_err(|_| "the client's queue stayed full".to_owned())
                .and_then(|r| r)
            {
                return retry(format!("cannot queue a publish: {error}"));
            }
        }
        // Pair packet ids with events in order; a packet id may be reused within a batch once
        // acknowledged, so each id keeps a queue of the events sent under it.
        let mut next_sent = 0usize;
        let mut waiting: HashMap<u16, VecDeque<usize>> = HashMap::new();
        let mut acked = vec![false; batch.len()];
        let mut prefix = 0usize;
        // The first event the broker refused (MQTT 5), and why: the batch ends there.
        let mut refused: Option<(usize, Refusal)> = None;
        let deadline = tokio::time::Instant::now() + timeout;
        while prefix < refused.as_ref().map_or(batch.len(), |(i, _)| *i) {
            let report = match tokio::time::timeout_at(deadline, conn.reports.recv()).await {
                Ok(Some(r)) => r,
                Ok(None) => break,
                Err(_) => {
                    return partial(
                        prefix,
                        format!("the broker {broker} did not acknowledge within {timeout:?}"),
                    );
                }
            };
            match report {
                Report::Sent(pkid) => {
                    if next_sent < batch.len() {
                        waiting.entry(pkid).or_default().push_back(next_sent);
                        next_sent += 1;
                    }
                }
                Report::Acked(pkid) => {
                    if let Some(i) = waiting.get_mut(&pkid).and_then(VecDeque::pop_front) {
                        acked[i] = true;
                        while prefix < batch.len() && acked[prefix] {
                            prefix += 1;
                        }
                    }
                }
                Report::Refused(pkid, why) => {
                    if let Some(i) = waiting.get_mut(&pkid).and_then(VecDeque::pop_front)
                        && refused.as_ref().is_none_or(|(r, _)| i < *r)
                    {
                        refused = Some((i, why));
                    }
                }
                Report::Connected => {}
                Report::Down(why) => {
                    return partial(prefix, format!("the connection to {broker} failed: {why}"));
                }
            }
        }
        match refused {
            None if prefix == batch.len() => Outcome::Delivered,
            None => partial(prefix, format!("the connection to {broker} ended")),
            // Not every event before the refused one is acknowledged (the reports ended):
            // only the acknowledged prefix counts.
            Some((i, _)) if prefix < i => {
                partial(prefix, format!("the connection to {broker} ended"))
            }
            // Every event before it is delivered; it starts the next batch, where, first, it
            // is refused alone (a batch of several is split by the runner until it is).
            Some((0, Refusal::Event(why))) => Outcome::Reject {
                reason: format!("event {}: {why}", batch[0].id),
            },
            Some((i, Refusal::Event(why))) => Outcome::Partial {
                delivered: i,
                reason: format!("event {}: {why}", batch[i].id),
            },
            Some((i, Refusal::Broker(why))) => partial(i, format!("{broker}: {why}")),
        }
    }
}

fn retry(reason: String) -> Outcome {
    Outcome::Retry {
        reason,
        after: None,
    }
}

fn partial(delivered: usize, reason: String) -> Outcome {
    if delivered == 0 {
        retry(reason)
    } else {
        Outcome::Partial { delivered, reason }
    }
}
