//! The MQTT source: one client per source, subscribed with QoS 1 to each tag's topic.
//!
//! A message is parsed once (bounded by `max_payload`) and read by every tag of its topic into
//! one batch. What cannot be read makes those tags Bad with the reason, and a warning naming the
//! topic (at most one per topic and reason every 10 s, with a count); the source goes on.
//! Incoming publishes are acknowledged only once their batch is in the pipeline. A lost
//! connection marks every tag Bad and is rebuilt by the client after a capped, jittered backoff,
//! which resets on proof of health (a message read).

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use firmware_config::{MqttFormat, MqttSourceConfig};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, TlsConfiguration, Transport};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{payload, sparkplug};
use crate::{
    backoff::Backoff,
    model::{Sample, SampleBatch, TagId},
    send,
};

const RECONNECT_INITIAL: Duration = Duration::from_millis(500);
const RECONNECT_MAX: Duration = Duration::from_secs(30);
/// At most this many tags named from topics per source: each is remembered downstream, so a
/// filter matching ever more topics must not grow memory without end.
const MAX_DERIVED: usize = 10_000;
/// Filters per SUBSCRIBE packet.
const SUBSCRIBE_CHUNK: usize = 100;
/// Filter bytes per SUBSCRIBE packet (the client's packets are capped at 64 KiB).
const SUBSCRIBE_BYTES: usize = 32 << 10;
/// At most one warning per topic and reason in this long.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// Topics (with a reason) whose warnings are rate-limited; past it the limiter starts over
/// (a burst of warnings at worst), so its memory stays bounded however many topics misbehave.
const MAX_WARNED: usize = 1_000;

/// Room in the client's request queue besides the subscriptions: acknowledgements (those that
/// do not fit wait in the source's own queue, see `acks`) and Sparkplug rebirth requests.
const REQUEST_ROOM: usize = 64;

/// The characters of a topic that key its warnings (a topic may be 65,535 bytes).
const WARN_TOPIC_CHARS: usize = 256;

/// A `+` filter, with its tags (by index) and each one's name template.
type Filter = (String, Vec<(usize, Vec<firmware_config::topic::NamePart>)>);

/// A configured MQTT source, ready to run.
pub struct MqttSource {
    config: MqttSourceConfig,
    client_id: String,
    tls: Result<Option<Arc<rustls::ClientConfig>>, String>,
    password: Result<Option<String>, String>,
    ids: Vec<TagId>,
    by_topic: HashMap<String, (bool, Vec<usize>)>,
    /// `+` filters, with their tags and each tag's name template.
    filters: Vec<Filter>,
    /// The tag ids named from topics so far (at most [`MAX_DERIVED`]).
    /// (With the topic and the filter that made each: one name is never fed from two topics.)
    derived: HashMap<TagId, (String, String)>,
    sparkplug: sparkplug::Host,
    source: Arc<str>,
    reconnect: Backoff,
    /// (topic, reason kind) -> when last warned (none yet), and how many held back since.
    warned: HashMap<(String, String), (Option<Instant>, u64)>,
}

impl std::fmt::Debug for MqttSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MqttSource")
            .field("source", &self.config.name)
            .finish_non_exhaustive()
    }
}

impl MqttSource {
    /// The source `config` describes, connecting as `client_id`, with the TLS configuration and
    /// password read at start (an error is reported on every tag until restart).
    pub fn new(
        config: MqttSourceConfig,
        client_id: String,
        tls: Result<Option<Arc<rustls::ClientConfig>>, String>,
        password: Result<Option<String>, String>,
    ) -> Self {
        let ids = config
            .tags
            .iter()
            .map(|t| TagId::from(format!("{}.{}", config.name, t.name)))
            .collect();
        let mut by_topic: HashMap<String, (bool, Vec<usize>)> = HashMap::new();
        let sparkplug =
            sparkplug::Host::new(config.tags.iter().enumerate().filter_map(|(i, tag)| {
                match &tag.format {
                    MqttFormat::Sparkplug {
                        group,
                        edge_node,
                        device,
                        metric,
                    } => Some((
                        i,
                        group.as_str(),
                        edge_node.as_str(),
                        device.as_deref(),
                        metric.as_str(),
                    )),
                    _ => None,
                }
            }));
        let mut filters: Vec<Filter> = Vec::new();
        for (i, tag) in config.tags.iter().enumerate() {
            if matches!(tag.format, MqttFormat::Sparkplug { .. }) {
                continue;
            }
            if tag.topic.contains('+') {
                // The checker made sure the name is a template of this filter's levels.
                let parts = firmware_config::topic::name_parts(&tag.name).unwrap_or_default();
                match filters.iter_mut().find(|(f, _)| *f == tag.topic) {
                    Some((_, tags)) => tags.push((i, parts)),
                    None => filters.push((tag.topic.clone(), vec![(i, parts)])),
                }
                continue;
            }
            let json = matches!(tag.format, MqttFormat::Json { .. });
            by_topic
                .entry(tag.topic.clone())
                .or_insert((json, Vec::new()))
                .1
                .push(i);
        }
        let source = Arc::from(config.name.as_str());
        MqttSource {
            config,
            client_id,
            tls,
            password,
            ids,
            by_topic,
            filters,
            derived: Default::default(),
            sparkplug,
            source,
            reconnect: Backoff::new(RECONNECT_INITIAL, RECONNECT_MAX),
            warned: HashMap::new(),
        }
    }

    /// Overrides the reconnect backoff (tests use short delays).
    #[must_use]
    pub fn with_reconnect(mut self, initial: Duration, max: Duration) -> Self {
        self.reconnect = Backoff::new(initial, max);
        self
    }

    fn all_bad(&self, why: &str) -> SampleBatch {
        let now = SystemTime::now();
        SampleBatch {
            source: self.source.clone(),
            // A tag on a `+` filter stands for the tags named from topics so far.
            samples: self
                .ids
                .iter()
                .zip(&self.config.tags)
                .filter(|(_, tag)| {
                    matches!(tag.format, MqttFormat::Sparkplug { .. }) || !tag.topic.contains('+')
                })
                .map(|(id, _)| id)
                .chain(self.derived.keys())
                .map(|id| Sample::bad(id.clone(), why, now))
                .collect(),
        }
    }

    /// Reads the broker until `cancel` fires or `out` closes.
    ///
    /// # Cancel safety
    /// Returns promptly on cancellation; a batch being sent then is dropped (never accepted),
    /// and its messages were not acknowledged.
    pub async fn run(mut self, out: mpsc::Sender<SampleBatch>, cancel: CancellationToken) {
        let setup = match (&self.tls, &self.password) {
            (Err(why), _) | (_, Err(why)) => Some(why.clone()),
            _ => None,
        };
        if let Some(why) = setup {
            tracing::error!(source = %self.config.name, "{why}");
            let batch = self.all_bad(&why);
            let _ = send(&out, batch, &cancel).await;
            cancel.cancelled().await;
            return;
        }
        let mut options = MqttOptions::new(&self.client_id, &self.config.host, self.config.port);
        options
            .set_keep_alive(Duration::from_secs(30))
            .set_clean_session(self.config.clean_session)
            .set_manual_acks(true)
            .set_max_packet_size(self.config.max_payload.saturating_add(65_536 + 16), 65_536);
        if let (Some((user, _)), Ok(Some(password))) = (&self.config.credentials, &self.password) {
            options.set_credentials(user, password);
        }
        if let Ok(Some(tls)) = &self.tls {
            options.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
                tls.clone(),
            )));
        }
        // An exact topic a filter covers is not subscribed to again: a broker may deliver a
        // message once per matching subscription, and messages are routed by their topic.
        let mut topics: Vec<String> = self
            .by_topic
            .keys()
            .filter(|t| {
                !self
                    .filters
                    .iter()
                    .any(|(f, _)| firmware_config::topic::matches(f, t))
            })
            .cloned()
            .collect();
        topics.extend(self.filters.iter().map(|(f, _)| f.clone()));
        topics.extend(self.sparkplug.filters());
        topics.sort();
        // At most SUBSCRIBE_CHUNK filters and SUBSCRIBE_BYTES per packet (a broker caps a
        // packet's size); the request channel holds them all, with room for acknowledgements
        // and rebirth requests.
        let mut chunks: Vec<Vec<String>> = Vec::new();
        let mut bytes = 0usize;
        for topic in topics {
            let cost = topic.len() + 3;
            match chunks.last_mut() {
                Some(chunk) if chunk.len() < SUBSCRIBE_CHUNK && bytes + cost <= SUBSCRIBE_BYTES => {
                    bytes += cost;
                    chunk.push(topic);
                }
                _ => {
                    bytes = cost;
                    chunks.push(vec![topic]);
                }
            }
        }
        let (client, mut eventloop) = AsyncClient::new(options, REQUEST_ROOM + chunks.len());
        // Chunks queued, not yet written (their packet ids come with the write), and those
        // written, by packet id: a SUBACK's codes are read against its chunk's filters.
        let mut unsent: std::collections::VecDeque<usize> = Default::default();
        let mut by_pkid: HashMap<u16, std::collections::VecDeque<usize>> = HashMap::new();
        let mut down = false;
        // Acknowledgements not yet queued on the client (its request channel was full): a
        // missing PUBACK would fill the broker's inflight window and stall the source.
        let mut acks: std::collections::VecDeque<rumqttc::Publish> = Default::default();
        loop {
            while let Some(publish) = acks.front() {
                if client.try_ack(publish).is_err() {
                    break;
                }
                acks.pop_front();
            }
            let event = tokio::select! {
                biased;
                () = cancel.cancelled() => return,
                e = eventloop.poll() => e,
            };
            // Sparkplug: unanswered rebirth requests are repeated. Checked between events (at
            // least a ping every keep-alive), never by racing the event loop: its poll is not
            // to be cancelled mid-write.
            if matches!(&event, Ok(e) if !matches!(e, Event::Incoming(Packet::ConnAck(_))))
                && !self.sparkplug.is_empty()
            {
                let due = self.sparkplug.due(Instant::now(), SystemTime::now());
                for (topic, request) in due.requests {
                    tracing::info!(source = %self.config.name, %topic, "Asked a Sparkplug edge node for a rebirth again (the last request was not answered).");
                    let _ = client.try_publish(topic, QoS::AtMostOnce, false, request);
                }
                for batch in self.sparkplug_batches(due.samples) {
                    if !send(&out, batch, &cancel).await {
                        return;
                    }
                }
            }
            match event {
                Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                    tracing::info!(source = %self.config.name, broker = %format!("{}:{}", self.config.host, self.config.port), session_present = ack.session_present, "Connected to MQTT broker.");
                    unsent.clear();
                    by_pkid.clear();
                    // A SUBSCRIBE of the last connection, reported but never written or
                    // replayed from its session, would take a chunk's place in the pairing.
                    eventloop
                        .state
                        .events
                        .retain(|e| !matches!(e, Event::Outgoing(rumqttc::Outgoing::Subscribe(_))));
                    eventloop
                        .pending
                        .retain(|r| !matches!(r, rumqttc::Request::Subscribe(_)));
                    for (i, chunk) in chunks.iter().enumerate() {
                        let filters = chunk
                            .iter()
                            .map(|t| rumqttc::SubscribeFilter::new(t.clone(), QoS::AtLeastOnce));
                        match client.try_subscribe_many(filters) {
                            Ok(()) => unsent.push_back(i),
                            Err(e) => {
                                tracing::error!(source = %self.config.name, error = %e, "Cannot queue the subscriptions.");
                            }
                        }
                    }
                    // Sparkplug: whatever was missed while away, the births bring back (asked
                    // for after subscribing, so they are not missed in turn).
                    for (topic, request) in self
                        .sparkplug
                        .reconnected(Instant::now(), SystemTime::now())
                    {
                        let _ = client.try_publish(topic, QoS::AtMostOnce, false, request);
                    }
                }
                Ok(Event::Outgoing(rumqttc::Outgoing::Subscribe(pkid))) => {
                    if let Some(chunk) = unsent.pop_front() {
                        by_pkid.entry(pkid).or_default().push_back(chunk);
                    }
                }
                Ok(Event::Incoming(Packet::SubAck(ack))) => {
                    // Not proof of health on its own: a message that kills the connection
                    // arrives right after it. The backoff resets on a message read.
                    let Some(chunk) = by_pkid
                        .get_mut(&ack.pkid)
                        .and_then(std::collections::VecDeque::pop_front)
                        .and_then(|i| chunks.get(i))
                        .filter(|c| c.len() == ack.return_codes.len())
                    else {
                        continue;
                    };
                    let refused: Vec<&String> = chunk
                        .iter()
                        .zip(&ack.return_codes)
                        .filter(|(_, c)| matches!(c, rumqttc::SubscribeReasonCode::Failure))
                        .map(|(f, _)| f)
                        .collect();
                    for filter in refused {
                        let why = format!(
                            "the broker refused the subscription to `{filter}` (grant this user subscribe rights on it in the broker's ACL)"
                        );
                        tracing::error!(source = %self.config.name, "{why}");
                        if let Some(batch) = self.refused(filter, &why)
                            && !send(&out, batch, &cancel).await
                        {
                            return;
                        }
                    }
                }
                Ok(Event::Incoming(Packet::Publish(publish))) => {
                    self.reconnect.reset();
                    down = false;
                    let batch = self.read(&publish.topic, &publish.payload);
                    if let Some(batch) = batch
                        && !send(&out, batch, &cancel).await
                    {
                        return;
                    }
                    for batch in self.read_sparkplug(&client, &publish.topic, &publish.payload) {
                        if !send(&out, batch, &cancel).await {
                            return;
                        }
                    }
                    // Acknowledged only now that the batch is in the pipeline. QoS 0 needs no
                    // acknowledgement; the rest wait without their payload, so this queue holds
                    // at most the broker's inflight window of small headers.
                    if publish.qos != QoS::AtMostOnce {
                        let mut publish = publish;
                        publish.payload = Default::default();
                        acks.push_back(publish);
                    }
                }
                Ok(_) => {}
                Err(error) => {
                    acks.clear();
                    let delay = self.reconnect.next_delay();
                    let why = format!(
                        "MQTT connection to {}:{} lost, values are stale: {error}",
                        self.config.host, self.config.port
                    );
                    if !down {
                        tracing::warn!(source = %self.config.name, retry_in = ?delay, "{why}");
                        down = true;
                    }
                    let batch = self.all_bad(&why);
                    if !send(&out, batch, &cancel).await {
                        return;
                    }
                    tokio::select! {
                        () = cancel.cancelled() => return,
                        () = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }

    /// The tags a refused subscription to `filter` would have fed, Bad for `why` (a `+`
    /// filter's, as named from topics so far).
    fn refused(&self, filter: &str, why: &str) -> Option<SampleBatch> {
        let now = SystemTime::now();
        let mut ids: Vec<TagId> = Vec::new();
        for (i, tag) in self.config.tags.iter().enumerate() {
            let fed = match &tag.format {
                // The node's filter feeds its own metrics, the `/+` one its devices'.
                MqttFormat::Sparkplug {
                    group,
                    edge_node,
                    device,
                    ..
                } => match device {
                    None => filter == format!("spBv1.0/{group}/+/{edge_node}"),
                    Some(_) => filter == format!("spBv1.0/{group}/+/{edge_node}/+"),
                },
                _ if tag.topic.contains('+') => false,
                _ => firmware_config::topic::matches(filter, &tag.topic),
            };
            if fed && !ids.contains(&self.ids[i]) {
                ids.push(self.ids[i].clone());
            }
        }
        if self.filters.iter().any(|(f, _)| f == filter) {
            ids.extend(
                self.derived
                    .iter()
                    .filter(|(_, (_, made_by))| made_by == filter)
                    .map(|(id, _)| id.clone()),
            );
        }
        if ids.is_empty() {
            return None;
        }
        ids.sort();
        ids.dedup();
        Some(SampleBatch {
            source: self.source.clone(),
            samples: ids
                .into_iter()
                .map(|id| Sample::bad(id, why, now))
                .collect(),
        })
    }

    /// The tags a message on `topic` feeds, with their ids: those of its exact topic, then
    /// those of every `+` filter it matches, named from its levels. A name made twice is read
    /// once (the first). What cannot be read is a warning.
    fn targets(&mut self, topic: &str) -> Vec<(usize, TagId)> {
        let mut targets: Vec<(usize, TagId)> = Vec::new();
        if let Some((_, tags)) = self.by_topic.get(topic) {
            targets.extend(tags.iter().map(|&i| (i, self.ids[i].clone())));
        }
        let mut problems = Vec::new();
        for (filter, tags) in &self.filters {
            if !firmware_config::topic::matches(filter, topic) {
                continue;
            }
            for (i, parts) in tags {
                let name = match firmware_config::topic::expand(parts, topic) {
                    Ok(name) => name,
                    Err(why) => {
                        problems.push(format!(
                            "tag `{}` cannot be named from this topic: {why}",
                            self.config.tags[*i].name
                        ));
                        continue;
                    }
                };
                let id: TagId = TagId::from(format!("{}.{name}", self.config.name));
                if targets.iter().any(|(_, t)| *t == id) {
                    continue;
                }
                if self.ids.contains(&id) {
                    problems.push(format!(
                        "tag `{}` would name `{name}` from this topic, a tag declared for another topic; not read",
                        self.config.tags[*i].name
                    ));
                    continue;
                }
                match self.derived.get(&id) {
                    Some((first, _)) if first != topic => {
                        problems.push(format!(
                            "tag `{name}` is named from both `{first}` and this topic; only the first is read (make the template tell them apart)"
                        ));
                        continue;
                    }
                    Some(_) => {}
                    None if self.derived.len() >= MAX_DERIVED => {
                        problems.push(format!(
                            "more than {MAX_DERIVED} tags are named from topics; `{id}` is not read (narrow the `+` filters)"
                        ));
                        continue;
                    }
                    None => {
                        self.derived
                            .insert(id.clone(), (topic.to_owned(), filter.clone()));
                    }
                }
                targets.push((*i, id));
            }
        }
        for why in problems {
            self.warn(topic, &why);
        }
        targets
    }

    /// The batch a message on `topic` makes for its tags.
    fn read(&mut self, topic: &str, bytes: &[u8]) -> Option<SampleBatch> {
        let targets = self.targets(topic);
        if targets.is_empty() {
            return None;
        }
        // Parsed once per format its tags read it in.
        let (mut as_json, mut as_text) = (None, None);
        let max = self.config.max_payload;
        let now = SystemTime::now();
        let mut samples = Vec::with_capacity(targets.len());
        for (i, id) in &targets {
            let tag = &self.config.tags[*i];
            let json = matches!(tag.format, MqttFormat::Json { .. });
            let slot = if json { &mut as_json } else { &mut as_text };
            let parsed = slot.get_or_insert_with(|| payload::parse(bytes, json, max));
            samples.push(payload::sample(tag, id, parsed, now));
        }
        for parsed in [&as_json, &as_text].into_iter().flatten() {
            if let payload::Parsed::Bad(why) = parsed {
                self.warn(topic, why);
            }
        }
        if let Some(payload::Parsed::Json(_)) = as_json
            && let Some(bad) = samples.iter().find_map(|s| match &s.quality {
                crate::model::Quality::Bad(why) => Some(why.clone()),
                _ => None,
            })
        {
            self.warn(topic, &bad);
        }
        Some(SampleBatch {
            source: self.source.clone(),
            samples,
        })
    }

    /// The batches a Sparkplug B message makes (a tag at most once in each), with a rebirth
    /// asked for when the message calls for one.
    fn read_sparkplug(
        &mut self,
        client: &AsyncClient,
        topic: &str,
        bytes: &[u8],
    ) -> Vec<SampleBatch> {
        if self.sparkplug.is_empty() {
            return Vec::new();
        }
        let max = self.config.max_payload;
        let payload = if bytes.len() > max {
            Err(format!(
                "a message of {} bytes is larger than max_payload ({max} bytes)",
                bytes.len()
            ))
        } else {
            Ok(bytes)
        };
        let Some(effect) = self
            .sparkplug
            .read(topic, payload, Instant::now(), SystemTime::now())
        else {
            return Vec::new();
        };
        if let Some(why) = &effect.warning {
            self.warn(topic, why);
        }
        if let Some((ncmd, request)) = effect.rebirth {
            tracing::info!(source = %self.config.name, topic = %ncmd, "Asked a Sparkplug edge node for a rebirth.");
            if let Err(e) = client.try_publish(ncmd, QoS::AtMostOnce, false, request) {
                tracing::warn!(source = %self.config.name, error = %e, "Cannot queue a rebirth request.");
            }
        }
        self.sparkplug_batches(effect.samples)
    }

    /// Sparkplug reads as batches, a tag at most once in each.
    fn sparkplug_batches(&self, reads: Vec<(usize, sparkplug::Read)>) -> Vec<SampleBatch> {
        let now = SystemTime::now();
        let mut batches = Vec::new();
        let mut samples: Vec<Sample> = Vec::new();
        let mut in_batch = std::collections::HashSet::new();
        for (i, read) in reads {
            let (Some(tag), Some(id)) = (self.config.tags.get(i), self.ids.get(i)) else {
                continue;
            };
            if !in_batch.insert(i) {
                batches.push(std::mem::take(&mut samples));
                in_batch.clear();
                in_batch.insert(i);
            }
            let sample = match read
                .and_then(|(v, t)| crate::opcua::convert::fit(v, tag.data_type).map(|v| (v, t)))
            {
                Ok((value, source_time)) => {
                    let mut s = Sample::good(id.clone(), value, now);
                    s.source_time = source_time;
                    s
                }
                Err(why) => Sample::bad(id.clone(), why, now),
            };
            samples.push(sample);
        }
        if !samples.is_empty() {
            batches.push(samples);
        }
        batches
            .into_iter()
            .map(|samples| SampleBatch {
                source: self.source.clone(),
                samples,
            })
            .collect()
    }

    /// A warning for `topic`, at most once per reason every [`WARN_EVERY`], with how many
    /// were held back.
    fn warn(&mut self, topic: &str, why: &str) {
        // Keyed on the reason's kind (its text up to the first digit or colon), so a fault
        // whose details vary does not warn on every message; the detail logged is bounded.
        let kind: String = why
            .chars()
            .take_while(|c| !c.is_ascii_digit() && *c != ':')
            .take(60)
            .collect();
        let why: String = why.chars().take(200).collect();
        let why = why.as_str();
        let key = (topic.chars().take(WARN_TOPIC_CHARS).collect(), kind);
        let now = Instant::now();
        // (`now - WARN_EVERY` would panic within 10 s of boot: the monotonic clock starts there.)
        let entry = self.warned.entry(key).or_insert((None, 0));
        if entry
            .0
            .is_none_or(|at| now.duration_since(at) >= WARN_EVERY)
        {
            tracing::warn!(source = %self.config.name, %topic, reason = %why, held_back = entry.1, "An MQTT message could not be read; its tags are Bad.");
            *entry = (Some(now), 0);
        } else {
            entry.1 += 1;
        }
        if self.warned.len() > MAX_WARNED {
            self.warned.clear();
        }
    }
}
