//! The OPC UA source: one task per source, owning its session.
//!
//! A session is opened with exactly the configured security, then the tags are read either by
//! monitored items in one subscription or by chunked Reads. Requests respect the server's
//! OperationLimits (MaxMonitoredItemsPerCall, MaxNodesPerRead), so thousands of nodes work. A node
//! the server refuses makes that tag Bad, never the source.
//!
//! Never stall: a watchdog expects a notification or a keep-alive at least every keep-alive
//! period. When neither comes for three periods, or the connection drops, the session is thrown
//! away and rebuilt from scratch after a capped, jittered backoff, every tag is reported Bad
//! (stale) meanwhile, and the gap is logged when data flows again. The backoff resets on proof of
//! health (the first notification or keep-alive, the first good Read), not on a connect.

use std::{
    collections::VecDeque,
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use firmware_config::{Deadband, OpcUaConfig, UaReading, UaType};
use opcua::{
    client::{MonitoredItemMap, OnSubscriptionNotificationCore, Session},
    types::{
        AttributeId, DataChangeFilter, DataChangeNotification, DataChangeTrigger, DataValue,
        DeadbandType, ExtensionObject, MonitoredItemCreateRequest, MonitoringMode,
        MonitoringParameters, NodeId, NotificationMessage, ReadValueId, StatusChangeNotification,
        StatusCode, TimestampsToReturn, VariableId,
    },
};
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

use super::{
    connect::{Connector, Event, Live},
    convert,
};
use crate::{
    backoff::Backoff,
    model::{Quality, Sample, SampleBatch, TagId},
    send,
};

/// Reconnect delays: from 500 ms up to 30 s.
const RECONNECT_INITIAL: Duration = Duration::from_millis(500);
const RECONNECT_MAX: Duration = Duration::from_secs(30);
/// Most nodes in one request, whatever the server allows: keeps every message well under
/// the default message size limits.
pub const MAX_PER_CALL: usize = 1_000;
/// Samples held for the pipeline beyond which a tag's newer sample replaces its older one.
const MAX_PENDING: usize = 131_072;
/// The longest keep-alive period believed from a server.
const MAX_PERIOD: Duration = Duration::from_secs(3_600);
/// Keep-alive silences tolerated before the session is declared stalled.
const STALL_PERIODS: u32 = 3;
/// Notifications per publish asked for: keeps each message well under the client's limits.
const MAX_NOTIFICATIONS: u32 = 1_000;
/// Most subscriptions one source opens (each holds what the server allows per subscription).
const MAX_SUBSCRIPTIONS: usize = 64;

/// A configured OPC UA source, ready to run.
#[derive(Debug)]
pub struct OpcUaSource {
    config: Arc<OpcUaConfig>,
    pki_dir: PathBuf,
    connector: Option<Connector>,
    ids: Vec<TagId>,
    nodes: Vec<NodeId>,
    types: Vec<Option<UaType>>,
    source: Arc<str>,
    reconnect: Backoff,
}

/// Why a session ended.
enum Ended {
    /// `cancel` fired or `out` closed: stop.
    Stop,
    /// Rebuild the session; the text says why.
    Failed(String),
}

impl OpcUaSource {
    /// The source `config` describes, keeping certificates in `pki_dir`.
    pub fn new(config: OpcUaConfig, pki_dir: PathBuf) -> Self {
        let ids = config
            .tags
            .iter()
            .map(|t| TagId::from(format!("{}.{}", config.name, t.name)))
            .collect();
        let nodes = config
            .tags
            .iter()
            .map(|t| convert::node_id(&t.node))
            .collect();
        let types = config.tags.iter().map(|t| t.data_type).collect();
        let source = Arc::from(config.name.as_str());
        OpcUaSource {
            config: Arc::new(config),
            pki_dir,
            connector: None,
            ids,
            nodes,
            types,
            source,
            reconnect: Backoff::new(RECONNECT_INITIAL, RECONNECT_MAX),
        }
    }

    /// Overrides the reconnect backoff (tests use short delays).
    #[must_use]
    pub fn with_reconnect(mut self, initial: Duration, max: Duration) -> Self {
        self.reconnect = Backoff::new(initial, max);
        self
    }

    /// Reads the server until `cancel` fires or `out` is closed.
    ///
    /// # Cancel safety
    /// Returns promptly on cancellation; a batch being sent then is dropped (never accepted).
    pub async fn run(mut self, out: mpsc::Sender<SampleBatch>, cancel: CancellationToken) {
        let name = self.config.name.clone();
        let mut down_since: Option<(Instant, String)> = None;
        let mut last_error = String::new();
        loop {
            if self.connector.is_none() {
                let config = self.config.clone();
                let pki = self.pki_dir.clone();
                match tokio::task::spawn_blocking(move || Connector::new(config, pki)).await {
                    Ok(Ok(c)) => self.connector = Some(c),
                    failed => {
                        let e = match failed {
                            Ok(Err(e)) => e,
                            Err(e) => e.to_string(),
                            Ok(Ok(_)) => String::new(),
                        };
                        let why = format!(
                            "cannot set up the OPC UA certificate folder {}: {e}",
                            self.pki_dir.display()
                        );
                        if !self.fail(&out, &cancel, &why, &mut last_error, true).await {
                            return;
                        }
                        continue;
                    }
                }
            }
            let Some(connector) = self.connector.as_mut() else {
                continue;
            };
            let connected = tokio::select! {
                biased;
                () = cancel.cancelled() => return,
                c = connector.connect() => c,
            };
            let live = match connected {
                Ok(live) => live,
                Err(error) => {
                    let person = error.needs_a_person();
                    if down_since.is_none() {
                        down_since = Some((Instant::now(), error.to_string()));
                    }
                    if !self
                        .fail(&out, &cancel, &error.to_string(), &mut last_error, person)
                        .await
                    {
                        return;
                    }
                    continue;
                }
            };
            tracing::info!(source = %name, endpoint = %self.config.endpoint, policy = self.config.policy.name(), "Connected to OPC UA server.");
            last_error.clear();
            let ended = match self.config.reading {
                UaReading::Subscribe { .. } => {
                    self.subscribe(live, &out, &cancel, &mut down_since).await
                }
                UaReading::Poll { interval } => {
                    self.poll(live, interval, &out, &cancel, &mut down_since)
                        .await
                }
            };
            match ended {
                Ended::Stop => return,
                Ended::Failed(why) => {
                    if down_since.is_none() {
                        down_since = Some((Instant::now(), why.clone()));
                    }
                    let why = format!("OPC UA session lost, values are stale: {why}");
                    if !self.fail(&out, &cancel, &why, &mut last_error, false).await {
                        return;
                    }
                }
            }
        }
    }

    /// Reports every tag Bad with `why`, logs it (once per distinct reason), and waits out the
    /// backoff. `false`: stop.
    async fn fail(
        &mut self,
        out: &mpsc::Sender<SampleBatch>,
        cancel: &CancellationToken,
        why: &str,
        last_error: &mut String,
        person: bool,
    ) -> bool {
        let delay = self.reconnect.next_delay();
        if *last_error != why {
            if person {
                tracing::error!(source = %self.config.name, endpoint = %self.config.endpoint, retry_in = ?delay, "{why}");
            } else {
                tracing::warn!(source = %self.config.name, endpoint = %self.config.endpoint, retry_in = ?delay, "{why}");
            }
            why.clone_into(last_error);
        }
        let now = SystemTime::now();
        let batch = self.batch(
            self.ids
                .iter()
                .map(|id| Sample::bad(id.clone(), why, now))
                .collect(),
        );
        if !send(out, batch, cancel).await {
            return false;
        }
        tokio::select! {
            () = cancel.cancelled() => false,
            () = tokio::time::sleep(delay) => true,
        }
    }

    fn batch(&self, samples: Vec<Sample>) -> SampleBatch {
        SampleBatch {
            source: self.source.clone(),
            samples,
        }
    }

    fn healthy(&mut self, down_since: &mut Option<(Instant, String)>) {
        self.reconnect.reset();
        if let Some((since, why)) = down_since.take() {
            tracing::warn!(source = %self.config.name, gap = ?since.elapsed(), cause = %why, "OPC UA data flows again after a gap.");
        }
    }

    /// The server's MaxNodesPerRead and MaxMonitoredItemsPerCall, capped at [`MAX_PER_CALL`]
    /// (0, absent or unreadable: the cap).
    async fn limits(&self, session: &Session) -> (usize, usize) {
        let limits = operation_limits(
            session,
            [
                (
                    VariableId::Server_ServerCapabilities_OperationLimits_MaxNodesPerRead,
                    MAX_PER_CALL,
                ),
                (
                    VariableId::Server_ServerCapabilities_OperationLimits_MaxMonitoredItemsPerCall,
                    MAX_PER_CALL,
                ),
            ],
        )
        .await;
        tracing::debug!(source = %self.config.name, max_nodes_per_read = limits[0], max_monitored_items_per_call = limits[1], "OPC UA operation limits.");
        (limits[0], limits[1])
    }

    async fn subscribe(
        &mut self,
        mut live: Live,
        out: &mpsc::Sender<SampleBatch>,
        cancel: &CancellationToken,
        down_since: &mut Option<(Instant, String)>,
    ) -> Ended {
        let ended = self.subscribed(&mut live, out, cancel, down_since).await;
        live.close().await;
        ended
    }

    /// Creates the subscriptions and their items, then passes notifications on until the
    /// session fails or stalls. A server's per-subscription item limit
    /// (BadTooManyMonitoredItems) opens another subscription for the rest.
    async fn subscribed(
        &mut self,
        live: &mut Live,
        out: &mpsc::Sender<SampleBatch>,
        cancel: &CancellationToken,
        down_since: &mut Option<(Instant, String)>,
    ) -> Ended {
        let UaReading::Subscribe {
            publishing,
            sampling,
            queue_size,
        } = self.config.reading
        else {
            return Ended::Failed("not a subscription source".into());
        };
        let (_, full_call) = tokio::select! {
            biased;
            () = cancel.cancelled() => return Ended::Stop,
            l = self.limits(&live.session) => l,
        };
        let mut per_call = full_call;
        let shared = Arc::new(Shared {
            pending: Mutex::new(Pending::new(self.ids.len())),
            notify: Notify::new(),
            last_seen: Mutex::new(Vec::new()),
            overflowed: std::sync::atomic::AtomicU64::new(0),
            alive: AtomicBool::new(false),
            status: Mutex::new(None),
            ids: self.ids.clone(),
            types: self.types.clone(),
            explain: self.explainer(),
        });
        // Keep-alives at least every second, so a stall is seen within seconds.
        let keep_alive = u32::try_from(
            Duration::from_secs(1)
                .as_millis()
                .div_ceil(publishing.as_millis().max(1)),
        )
        .unwrap_or(1)
        .clamp(1, 1_000);
        let now = SystemTime::now();
        let mut refused = Vec::new();
        let mut queue: VecDeque<usize> = (0..self.ids.len()).collect();
        let mut subscriptions: Vec<(u32, usize)> = Vec::new();
        let mut period = publishing.saturating_mul(keep_alive);
        while !queue.is_empty() {
            let full = subscriptions
                .last()
                .is_none_or(|(_, items)| *items == usize::MAX);
            if full {
                if subscriptions.len() >= MAX_SUBSCRIPTIONS {
                    let why = format!(
                        "the server takes no more items: {MAX_SUBSCRIPTIONS} subscriptions are full"
                    );
                    refused.extend(
                        queue
                            .drain(..)
                            .map(|i| Sample::bad(self.ids[i].clone(), why.clone(), now)),
                    );
                    break;
                }
                // The watchdog slot is added once the subscription exists: a refused one must
                // not look like a silent one.
                let slot = subscriptions.len();
                let created = tokio::select! {
                    biased;
                    () = cancel.cancelled() => return Ended::Stop,
                    c = live.session.create_subscription(
                        publishing,
                        keep_alive.saturating_mul(10),
                        keep_alive,
                        MAX_NOTIFICATIONS,
                        0,
                        true,
                        Callback { shared: shared.clone(), slot },
                    ) => c,
                };
                match created {
                    Ok(id) => {
                        if let Some(s) = live.session.subscription_state().lock().get(id) {
                            period = s
                                .publishing_interval()
                                .max(Duration::from_millis(1))
                                .saturating_mul(s.max_keep_alive_count().max(1))
                                .min(MAX_PERIOD);
                        }
                        shared
                            .last_seen
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .push(Instant::now());
                        subscriptions.push((id, 0));
                    }
                    Err(StatusCode::BadTooManySubscriptions) if !subscriptions.is_empty() => {
                        let why = format!(
                            "BadTooManySubscriptions: the server allows {} subscriptions per session and they are full; read fewer tags from it, or raise its limits",
                            subscriptions.len()
                        );
                        refused.extend(
                            queue
                                .drain(..)
                                .map(|i| Sample::bad(self.ids[i].clone(), why.clone(), now)),
                        );
                        break;
                    }
                    Err(status) => {
                        return Ended::Failed(format!(
                            "the server refused a subscription ({status})"
                        ));
                    }
                }
            }
            let Some((subscription, items)) = subscriptions.last_mut() else {
                break;
            };
            let chunk: Vec<usize> = queue.drain(..per_call.min(queue.len())).collect();
            let asked = chunk.len();
            let requests: Vec<MonitoredItemCreateRequest> = chunk
                .iter()
                .map(|&i| MonitoredItemCreateRequest {
                    item_to_monitor: read_value(self.nodes[i].clone()),
                    monitoring_mode: MonitoringMode::Reporting,
                    requested_parameters: MonitoringParameters {
                        client_handle: u32::try_from(i + 1).unwrap_or(u32::MAX),
                        sampling_interval: sampling.as_secs_f64() * 1_000.0,
                        filter: filter(self.config.tags[i].deadband),
                        queue_size,
                        discard_oldest: true,
                    },
                })
                .collect();
            let results = tokio::select! {
                biased;
                () = cancel.cancelled() => return Ended::Stop,
                r = live.session.create_monitored_items(*subscription, TimestampsToReturn::Both, requests) => r,
            };
            let mut again = Vec::new();
            match results {
                // More than the subscription has room for: ask for fewer at a time, down to
                // one; when one does not fit either, the subscription is full.
                Err(StatusCode::BadTooManyMonitoredItems) if asked > 1 => {
                    per_call = (asked / 2).max(1);
                    for i in chunk.into_iter().rev() {
                        queue.push_front(i);
                    }
                    continue;
                }
                Err(StatusCode::BadTooManyMonitoredItems) if *items > 0 => {
                    per_call = full_call;
                    again = chunk;
                }
                // Not even one item fits an empty subscription: the server takes no more
                // (a whole-server limit); the rest are refused at once, not one call each.
                Err(StatusCode::BadTooManyMonitoredItems) => {
                    for &i in chunk
                        .iter()
                        .chain(queue.drain(..).collect::<Vec<_>>().iter())
                    {
                        refused.push(Sample::bad(
                            self.ids[i].clone(),
                            (shared.explain)(i, StatusCode::BadTooManyMonitoredItems),
                            now,
                        ));
                    }
                }
                Err(status) => {
                    return Ended::Failed(format!("creating monitored items failed ({status})"));
                }
                Ok(results) => {
                    for (&i, result) in chunk.iter().zip(&results) {
                        let status = result.result.status_code;
                        if status == StatusCode::BadTooManyMonitoredItems && *items > 0 {
                            again.push(i);
                        } else if status.is_bad() {
                            refused.push(Sample::bad(
                                self.ids[i].clone(),
                                (shared.explain)(i, status),
                                now,
                            ));
                        } else {
                            *items += 1;
                        }
                    }
                    for &i in chunk.iter().skip(results.len()) {
                        refused.push(Sample::bad(
                            self.ids[i].clone(),
                            "the server did not answer for this item",
                            now,
                        ));
                    }
                }
            }
            if !again.is_empty() {
                tracing::info!(source = %self.config.name, items = *items, "The server's subscription is full; opening another for the remaining items.");
                *items = usize::MAX;
                for i in again.into_iter().rev() {
                    queue.push_front(i);
                }
            }
        }
        if !refused.is_empty() {
            tracing::warn!(source = %self.config.name, refused = refused.len(), first = %refused[0].tag, reason = ?refused[0].quality, "The server refused some monitored items; those tags are Bad.");
            if !send(out, self.batch(refused), cancel).await {
                return Ended::Stop;
            }
        }
        let stall_after = period
            .saturating_mul(STALL_PERIODS)
            .saturating_add(self.config.timeout);
        for seen in shared
            .last_seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter_mut()
        {
            *seen = Instant::now();
        }
        let mut watchdog = tokio::time::interval((period / 2).max(Duration::from_millis(50)));
        watchdog.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let ended = loop {
            tokio::select! {
                biased;
                () = cancel.cancelled() => break Ended::Stop,
                event = live.events.recv() => match event {
                    Some(Event::Up) => {}
                    Some(Event::Down(status)) => {
                        break Ended::Failed(format!("the connection was lost ({status})"));
                    }
                    None => break Ended::Failed("the session ended".into()),
                },
                () = shared.notify.notified() => {
                    if let Some(status) = shared.status.lock().unwrap_or_else(|p| p.into_inner()).take() {
                        break Ended::Failed(format!("the server ended the subscription ({status})"));
                    }
                    if shared.alive.swap(false, Ordering::Relaxed) {
                        self.healthy(down_since);
                    }
                    let overflowed = shared.overflowed.swap(0, Ordering::Relaxed);
                    if overflowed > 0 {
                        tracing::warn!(source = %self.config.name, values = overflowed, "The server's item queues overflowed: it dropped older values. Raise queue_size, or sample less often.");
                    }
                    let samples = shared.pending.lock().unwrap_or_else(|p| p.into_inner()).take();
                    // While the pipeline holds a batch, notifications wait in `pending` (bounded:
                    // see `Pending`). Pausing publishing instead was tried and dropped: the
                    // in-process server then lost what it had queued (docs/opcua.md).
                    let mut sent = true;
                    for samples in snapshots(samples) {
                        if !send(out, self.batch(samples), cancel).await {
                            sent = false;
                            break;
                        }
                    }
                    if !sent {
                        break Ended::Stop;
                    }
                }
                _ = watchdog.tick() => {
                    let silent = shared
                        .last_seen
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .iter()
                        .map(Instant::elapsed)
                        .max()
                        .unwrap_or_default();
                    if silent > stall_after {
                        break Ended::Failed(format!(
                            "no data and no keep-alive for {} (expected every {})",
                            humantime::format_duration(round(silent)),
                            humantime::format_duration(round(period))
                        ));
                    }
                }
            }
        };
        if let Ended::Failed(_) = ended {
            // What arrived before the failure was acknowledged to the server: pass it on.
            let samples = shared
                .pending
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take();
            for samples in snapshots(samples) {
                if !send(out, self.batch(samples), cancel).await {
                    return Ended::Stop;
                }
            }
        }
        ended
    }

    /// Explains a Bad status of tag `i`'s node, with what to do about it.
    fn explainer(&self) -> Arc<dyn Fn(usize, StatusCode) -> String + Send + Sync> {
        let nodes: Vec<String> = self
            .config
            .tags
            .iter()
            .map(|t| t.node.to_string())
            .collect();
        let endpoint = self.config.endpoint.clone();
        Arc::new(move |i, status| {
            let node = nodes.get(i).map_or("?", String::as_str);
            explain(node, &endpoint, status)
        })
    }

    fn refusal(&self, i: usize, status: StatusCode, now: SystemTime) -> Sample {
        let node = self.config.tags[i].node.to_string();
        Sample::bad(
            self.ids[i].clone(),
            explain(&node, &self.config.endpoint, status),
            now,
        )
    }

    async fn poll(
        &mut self,
        live: Live,
        interval: Duration,
        out: &mpsc::Sender<SampleBatch>,
        cancel: &CancellationToken,
        down_since: &mut Option<(Instant, String)>,
    ) -> Ended {
        let (per_read, _) = tokio::select! {
            biased;
            () = cancel.cancelled() => {
                live.close().await;
                return Ended::Stop;
            }
            l = self.limits(&live.session) => l,
        };
        let mut live = live;
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let ended = 'poll: loop {
            tokio::select! {
                biased;
                () = cancel.cancelled() => break Ended::Stop,
                event = live.events.recv() => {
                    if let Some(Event::Down(status)) = &event {
                        break Ended::Failed(format!("the connection was lost ({status})"));
                    }
                    if event.is_none() {
                        break Ended::Failed("the session ended".into());
                    }
                }
                _ = tick.tick() => {
                    let mut samples = Vec::with_capacity(self.ids.len());
                    let tags: Vec<usize> = (0..self.ids.len()).collect();
                    for chunk in tags.chunks(per_read) {
                        let read: Vec<ReadValueId> = chunk.iter().map(|&i| read_value(self.nodes[i].clone())).collect();
                        let values = tokio::select! {
                            biased;
                            () = cancel.cancelled() => break 'poll Ended::Stop,
                            r = live.session.read(&read, TimestampsToReturn::Both, 0.0) => r,
                        };
                        let values = match values {
                            Ok(v) => v,
                            Err(status) => break 'poll Ended::Failed(format!("a Read failed ({status})")),
                        };
                        let now = SystemTime::now();
                        for (k, &i) in chunk.iter().enumerate() {
                            let sample = match values.get(k) {
                                Some(dv) if dv.status.is_some_and(|s| s.is_bad()) => {
                                    self.refusal(i, dv.status.unwrap_or(StatusCode::Bad), now)
                                }
                                Some(dv) => convert::sample(&self.ids[i], self.types[i], dv.clone(), now),
                                None => Sample::bad(self.ids[i].clone(), "the server did not answer for this node", now),
                            };
                            samples.push(sample);
                        }
                    }
                    self.healthy(down_since);
                    if !send(out, self.batch(samples), cancel).await {
                        break Ended::Stop;
                    }
                }
            }
        };
        live.close().await;
        ended
    }
}

/// A Bad status of `node`, with what to do about it.
fn explain(node: &str, endpoint: &str, status: StatusCode) -> String {
    match status {
        StatusCode::BadNodeIdUnknown | StatusCode::BadNodeIdInvalid => format!(
            "{status}: the server has no node {node}; `causeway opcua browse {endpoint}` lists its nodes"
        ),
        StatusCode::BadAttributeIdInvalid => {
            format!("{status}: node {node} is not a variable (it has no value)")
        }
        StatusCode::BadFilterNotAllowed
        | StatusCode::BadDeadbandFilterInvalid
        | StatusCode::BadMonitoredItemFilterUnsupported => format!(
            "{status}: the server refuses this tag's deadband on node {node} (a percent deadband needs the node's EURange); remove `deadband`"
        ),
        StatusCode::BadUserAccessDenied | StatusCode::BadNotReadable => {
            format!("{status}: the server does not let this user read node {node}")
        }
        other => format!("{other} (node {node})"),
    }
}

/// The server's OperationLimits `ids`, each capped by its partner (0, absent or unreadable: the
/// cap).
pub(crate) async fn operation_limits<const N: usize>(
    session: &Session,
    ids: [(VariableId, usize); N],
) -> [usize; N] {
    let read: Vec<ReadValueId> = ids
        .iter()
        .map(|(id, _)| read_value(NodeId::from(id)))
        .collect();
    let values = session
        .read(&read, TimestampsToReturn::Neither, 0.0)
        .await
        .unwrap_or_default();
    std::array::from_fn(|i| {
        let cap = ids[i].1;
        values
            .get(i)
            .and_then(|v| v.value.as_ref())
            .and_then(|v| convert::value(v).ok())
            .and_then(|v| v.as_u64())
            .and_then(|n| usize::try_from(n).ok())
            .filter(|n| *n > 0)
            .map_or(cap, |n| n.min(cap))
    })
}

fn round(d: Duration) -> Duration {
    Duration::from_millis(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn read_value(node_id: NodeId) -> ReadValueId {
    ReadValueId {
        node_id,
        attribute_id: AttributeId::Value as u32,
        ..ReadValueId::default()
    }
}

fn filter(deadband: Option<Deadband>) -> ExtensionObject {
    let (deadband_type, deadband_value) = match deadband {
        None => return ExtensionObject::null(),
        Some(Deadband::Absolute(d)) => (DeadbandType::Absolute, d),
        Some(Deadband::Percent(p)) => (DeadbandType::Percent, p),
    };
    ExtensionObject::from_message(DataChangeFilter {
        trigger: DataChangeTrigger::StatusValue,
        deadband_type: deadband_type as u32,
        deadband_value,
    })
}

/// One publish's values in the order they were taken. A publish lists its values item by item,
/// not in time: a force written before a trigger may come after it. When every value carries a
/// SourceTimestamp they are sorted by it (stably: values stamped alike keep their order, and one
/// item's queue is already in time order); otherwise they are left as they came.
fn in_time_order(samples: &mut [(usize, Sample)]) {
    if samples.iter().all(|(_, s)| s.source_time.is_some()) {
        samples.sort_by_key(|(_, s)| s.source_time);
    }
}

/// `samples` in arrival order, cut into batches in which each tag appears at most once. A
/// subscription delivers every queued value of an item (a pulse shorter than the publishing
/// interval arrives as true then false); rules read a batch as one snapshot, where a tag's last
/// sample would hide the earlier ones.
fn snapshots(samples: Vec<Sample>) -> Vec<Vec<Sample>> {
    let mut out: Vec<Vec<Sample>> = Vec::new();
    let mut current: Vec<Sample> = Vec::new();
    let mut seen: std::collections::HashSet<TagId> = std::collections::HashSet::new();
    for sample in samples {
        if !seen.insert(sample.tag.clone()) {
            out.push(std::mem::take(&mut current));
            seen.clear();
            seen.insert(sample.tag.clone());
        }
        current.push(sample);
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

/// What the subscription callback (called synchronously by the session) hands the source task.
struct Shared {
    pending: Mutex<Pending>,
    notify: Notify,
    /// When each subscription last sent a notification or keep-alive.
    last_seen: Mutex<Vec<Instant>>,
    /// Values the server flagged Overflow (its queue for the item dropped older values).
    overflowed: std::sync::atomic::AtomicU64,
    /// A notification or keep-alive arrived since the task last looked.
    alive: AtomicBool,
    /// The server reported the subscription's end.
    status: Mutex<Option<StatusCode>>,
    ids: Vec<TagId>,
    types: Vec<Option<UaType>>,
    explain: Arc<dyn Fn(usize, StatusCode) -> String + Send + Sync>,
}

/// Samples waiting for the pipeline. Past [`MAX_PENDING`], a tag's newer sample replaces its
/// older one (counted), so a blocked pipeline costs memory bounded by the tag count.
struct Pending {
    samples: Vec<Sample>,
    at: Vec<Option<usize>>,
    superseded: u64,
}

impl Pending {
    fn new(tags: usize) -> Self {
        Pending {
            samples: Vec::new(),
            at: vec![None; tags],
            superseded: 0,
        }
    }

    fn push(&mut self, tag: usize, sample: Sample) {
        match self.at.get(tag).copied().flatten() {
            Some(pos) if self.samples.len() >= MAX_PENDING => {
                self.samples[pos] = sample;
                self.superseded += 1;
            }
            _ => {
                if let Some(at) = self.at.get_mut(tag) {
                    *at = Some(self.samples.len());
                }
                self.samples.push(sample);
            }
        }
    }

    fn take(&mut self) -> Vec<Sample> {
        if self.superseded > 0 {
            tracing::warn!(
                superseded = self.superseded,
                "The pipeline fell behind the OPC UA subscription; older values of some tags were replaced by newer ones."
            );
            self.superseded = 0;
        }
        self.at.iter_mut().for_each(|a| *a = None);
        std::mem::take(&mut self.samples)
    }
}

struct Callback {
    shared: Arc<Shared>,
    slot: usize,
}

impl OnSubscriptionNotificationCore for Callback {
    fn on_subscription_notification(
        &mut self,
        notification: NotificationMessage,
        _items: MonitoredItemMap<'_>,
    ) {
        let shared = &self.shared;
        if let Some(seen) = shared
            .last_seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_mut(self.slot)
        {
            *seen = Instant::now();
        }
        shared.alive.store(true, Ordering::Relaxed);
        let now = SystemTime::now();
        let mut arrived: Vec<(usize, Sample)> = Vec::new();
        for object in notification.notification_data.into_iter().flatten() {
            if let Some(change) = object.inner_as::<DataChangeNotification>() {
                for item in change.monitored_items.iter().flatten() {
                    let Some(i) = usize::try_from(item.client_handle)
                        .ok()
                        .and_then(|h| h.checked_sub(1))
                        .filter(|i| *i < shared.ids.len())
                    else {
                        continue;
                    };
                    if item.value.status.is_some_and(|s| s.overflow()) {
                        shared.overflowed.fetch_add(1, Ordering::Relaxed);
                    }
                    let dv: DataValue = item.value.clone();
                    let mut sample = convert::sample(&shared.ids[i], shared.types[i], dv, now);
                    if let Some(status) = item.value.status.filter(|s| s.is_bad()) {
                        sample.quality = Quality::Bad((shared.explain)(i, status));
                    }
                    arrived.push((i, sample));
                }
            } else if let Some(change) = object.inner_as::<StatusChangeNotification>()
                && change.status.is_bad()
            {
                *shared.status.lock().unwrap_or_else(|p| p.into_inner()) = Some(change.status);
            }
        }
        in_time_order(&mut arrived);
        if !arrived.is_empty() {
            let mut pending = shared.pending.lock().unwrap_or_else(|p| p.into_inner());
            for (i, sample) in arrived {
                pending.push(i, sample);
            }
        }
        shared.notify.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_publish_is_put_in_source_time_order_when_every_value_has_one() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        let s = |tag: &str, ms: Option<u64>| {
            let mut s = Sample::good(TagId::from(tag), crate::model::Value::Bool(true), t0);
            s.source_time = ms.map(|ms| t0 + Duration::from_millis(ms));
            s
        };
        // Item order: the trigger's queue (two values), then the force written first.
        let mut publish = vec![
            (1, s("done", Some(2))),
            (1, s("done", Some(3))),
            (0, s("force", Some(1))),
            (2, s("same", Some(3))),
        ];
        in_time_order(&mut publish);
        let order: Vec<&str> = publish.iter().map(|(_, s)| &*s.tag).collect();
        assert_eq!(order, ["force", "done", "done", "same"]);
        // One value without a timestamp: nothing to order by, arrival order kept.
        let mut mixed = vec![(1, s("done", Some(2))), (0, s("force", None))];
        in_time_order(&mut mixed);
        assert_eq!(&*mixed[0].1.tag, "done");
    }

    #[test]
    fn queued_values_of_one_tag_go_in_successive_batches_in_order() {
        let now = SystemTime::now();
        let s =
            |tag: &str, v: bool| Sample::good(TagId::from(tag), crate::model::Value::Bool(v), now);
        let batches = snapshots(vec![
            s("force", true),
            s("cycle", true),
            s("cycle", false),
            s("other", true),
            s("cycle", true),
        ]);
        let shown: Vec<Vec<(String, bool)>> = batches
            .iter()
            .map(|b| {
                b.iter()
                    .map(|s| {
                        (
                            s.tag.to_string(),
                            s.value == Some(crate::model::Value::Bool(true)),
                        )
                    })
                    .collect()
            })
            .collect();
        assert_eq!(
            shown,
            vec![
                vec![("force".into(), true), ("cycle".into(), true)],
                vec![("cycle".into(), false), ("other".into(), true)],
                vec![("cycle".into(), true)],
            ]
        );
        assert!(snapshots(Vec::new()).is_empty());
    }
}
