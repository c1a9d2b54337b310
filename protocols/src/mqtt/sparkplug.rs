//! Sparkplug B (Eclipse Sparkplug 3.0) read as a host application reads it.
//!
//! Edge nodes publish on `spBv1.0/<group>/<type>/<edge node>[/<device>]`: a birth certificate
//! (NBIRTH, DBIRTH) names every metric with its data type and, optionally, a numeric alias;
//! data messages (NDATA, DDATA) then carry metrics by alias; a death certificate (NDEATH, often
//! the broker's will for the node; DDEATH) says the values are no longer current. Every message
//! of a node but NDEATH carries `seq`, 0 to 255, one more than the last.
//!
//! [`Host`] keeps, per configured edge node, what its last birth declared, and turns messages
//! into values for the configured tags. It never guesses: data from a node or device whose
//! birth it has not seen, a metric by an alias no birth declared, and a `seq` gap (messages
//! lost) are answered by a rebirth request (NCMD `Node Control/Rebirth`; to one node at least
//! [`REBIRTH_EVERY`] apart, the interval doubling up to [`REBIRTH_MAX`], repeated while
//! unanswered); history (`is_historical`) is not taken for current values; a death makes that node's (or device's) tags Bad, unless its
//! `bdSeq` shows it is the will of an older session.

use std::{
    collections::{HashMap, HashSet},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use prost::Message as _;

use crate::model::Value;

/// At most one rebirth request per edge node in this long.
pub const REBIRTH_EVERY: Duration = Duration::from_secs(5);
/// A configured device whose DBIRTH has not followed its node's NBIRTH within this long has
/// its tags made Bad.
pub const DBIRTH_GRACE: Duration = Duration::from_secs(10);
/// A birth that stayed this long without a fault resets the rebirth backoff.
pub const HEALTHY: Duration = Duration::from_secs(60);
/// Unanswered, rebirth requests are repeated at most this far apart.
pub const REBIRTH_MAX: Duration = Duration::from_secs(300);
/// The metric an NCMD sets to ask for a rebirth.
pub const REBIRTH_METRIC: &str = "Node Control/Rebirth";
/// The metric NBIRTH and NDEATH carry to pair a death with its birth.
const BD_SEQ: &str = "bdSeq";

/// `org.eclipse.tahu.protobuf.Payload`, the fields a host reads. Metadata, properties,
/// datasets and templates are skipped by the decoder (their data type names them).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Payload {
    /// Milliseconds since the Unix epoch.
    #[prost(uint64, optional, tag = "1")]
    pub timestamp: Option<u64>,
    /// The metrics.
    #[prost(message, repeated, tag = "2")]
    pub metrics: Vec<Metric>,
    /// 0 ..= 255, one more than the node's last message.
    #[prost(uint64, optional, tag = "3")]
    pub seq: Option<u64>,
    /// Optional.
    #[prost(string, optional, tag = "4")]
    pub uuid: Option<String>,
    /// Optional.
    #[prost(bytes = "vec", optional, tag = "5")]
    pub body: Option<Vec<u8>>,
}

/// `Payload.Metric`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Metric {
    /// In births always; in data messages optional when an alias is given.
    #[prost(string, optional, tag = "1")]
    pub name: Option<String>,
    /// A number standing for the name, declared in the birth.
    #[prost(uint64, optional, tag = "2")]
    pub alias: Option<u64>,
    /// Milliseconds since the Unix epoch.
    #[prost(uint64, optional, tag = "3")]
    pub timestamp: Option<u64>,
    /// See [`type_name`]; in data messages optional (the birth's).
    #[prost(uint32, optional, tag = "4")]
    pub datatype: Option<u32>,
    /// A value from the edge node's store-and-forward history.
    #[prost(bool, optional, tag = "5")]
    pub is_historical: Option<bool>,
    /// Not to be stored.
    #[prost(bool, optional, tag = "6")]
    pub is_transient: Option<bool>,
    /// No value.
    #[prost(bool, optional, tag = "7")]
    pub is_null: Option<bool>,
    /// The value.
    #[prost(oneof = "MetricValue", tags = "10, 11, 12, 13, 14, 15, 16")]
    pub value: Option<MetricValue>,
}

/// `Payload.Metric.value`, the scalar members.
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum MetricValue {
    /// Int8/16/32 (two's complement), UInt8/16/32.
    #[prost(uint32, tag = "10")]
    Int(u32),
    /// Int64 (two's complement), UInt32/64, DateTime.
    #[prost(uint64, tag = "11")]
    Long(u64),
    /// Float.
    #[prost(float, tag = "12")]
    Float(f32),
    /// Double.
    #[prost(double, tag = "13")]
    Double(f64),
    /// Boolean.
    #[prost(bool, tag = "14")]
    Boolean(bool),
    /// String, Text, UUID.
    #[prost(string, tag = "15")]
    String(String),
    /// Bytes, File, arrays.
    #[prost(bytes = "vec", tag = "16")]
    Bytes(Vec<u8>),
}

/// The Sparkplug name of data type `code`.
pub fn type_name(code: u32) -> &'static str {
    const NAMES: [&str; 35] = [
        "Unknown",
        "Int8",
        "Int16",
        "Int32",
        "Int64",
        "UInt8",
        "UInt16",
        "UInt32",
        "UInt64",
        "Float",
        "Double",
        "Boolean",
        "String",
        "DateTime",
        "Text",
        "UUID",
        "DataSet",
        "Bytes",
        "File",
        "Template",
        "PropertySet",
        "PropertySetList",
        "Int8Array",
        "Int16Array",
        "Int32Array",
        "Int64Array",
        "UInt8Array",
        "UInt16Array",
        "UInt32Array",
        "UInt64Array",
        "FloatArray",
        "DoubleArray",
        "BooleanArray",
        "StringArray",
        "DateTimeArray",
    ];
    usize::try_from(code)
        .ok()
        .and_then(|i| NAMES.get(i))
        .copied()
        .unwrap_or("an unknown data type")
}

/// The kind of a Sparkplug message, from its topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Node birth.
    NBirth,
    /// Node death.
    NDeath,
    /// Node data.
    NData,
    /// Node command.
    NCmd,
    /// Device birth.
    DBirth,
    /// Device death.
    DDeath,
    /// Device data.
    DData,
    /// Device command.
    DCmd,
}

/// A Sparkplug B topic, taken apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Topic<'a> {
    /// The group id.
    pub group: &'a str,
    /// The message type.
    pub kind: Kind,
    /// The edge node id.
    pub edge_node: &'a str,
    /// The device id (device messages only).
    pub device: Option<&'a str>,
}

impl<'a> Topic<'a> {
    /// `spBv1.0/<group>/<type>/<edge node>[/<device>]`; `None` for anything else (`STATE`
    /// included).
    pub fn parse(topic: &'a str) -> Option<Self> {
        let mut parts = topic.split('/');
        if parts.next()? != "spBv1.0" {
            return None;
        }
        let group = parts.next()?;
        let kind = match parts.next()? {
            "NBIRTH" => Kind::NBirth,
            "NDEATH" => Kind::NDeath,
            "NDATA" => Kind::NData,
            "NCMD" => Kind::NCmd,
            "DBIRTH" => Kind::DBirth,
            "DDEATH" => Kind::DDeath,
            "DDATA" => Kind::DData,
            "DCMD" => Kind::DCmd,
            _ => return None,
        };
        let edge_node = parts.next()?;
        let device = parts.next();
        let is_device = matches!(kind, Kind::DBirth | Kind::DDeath | Kind::DData | Kind::DCmd);
        if parts.next().is_some() || device.is_some() != is_device {
            return None;
        }
        Some(Topic {
            group,
            kind,
            edge_node,
            device,
        })
    }
}

/// Decodes a payload (its size is bounded by the caller).
pub fn decode(bytes: &[u8]) -> Result<Payload, String> {
    Payload::decode(bytes).map_err(|e| format!("malformed Sparkplug B payload: {e}"))
}

/// The NCMD payload asking an edge node to publish its births again.
pub fn rebirth_request(now: SystemTime) -> Vec<u8> {
    let ms = millis(now);
    Payload {
        timestamp: Some(ms),
        metrics: vec![Metric {
            name: Some(REBIRTH_METRIC.to_owned()),
            timestamp: Some(ms),
            datatype: Some(11),
            value: Some(MetricValue::Boolean(true)),
            ..Metric::default()
        }],
        ..Payload::default()
    }
    .encode_to_vec()
}

fn millis(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A metric's time: only 1970 ..= 2200, as for JSON.
fn metric_time(ms: Option<u64>) -> Option<SystemTime> {
    let ms = ms?;
    let at = UNIX_EPOCH.checked_add(Duration::from_millis(ms))?;
    (at <= UNIX_EPOCH + Duration::from_secs(7_258_118_400)).then_some(at)
}

/// The value a metric of data type `code` carries.
pub fn value(metric: &Metric, code: u32) -> Result<Value, String> {
    if metric.is_null == Some(true) {
        return Err("the edge node reports no value (is_null)".to_owned());
    }
    let Some(v) = &metric.value else {
        return Err(format!(
            "a {} value, which Causeway does not read as a tag",
            type_name(code)
        ));
    };
    let int = |width: u32, signed: bool| -> Result<Value, String> {
        let raw = match v {
            MetricValue::Int(i) => u64::from(*i),
            MetricValue::Long(l) => *l,
            _ => return Err(format!("a {} carried in the wrong field", type_name(code))),
        };
        Ok(if signed {
            // Two's complement in the low `width` bits, whatever the encoder put above them.
            let shift = 64 - width;
            #[allow(clippy::cast_possible_wrap)]
            let signed = ((raw << shift) as i64) >> shift;
            Value::I64(signed)
        } else if width < 64 && raw >> width != 0 {
            return Err(format!("{raw} does not fit a {}", type_name(code)));
        } else {
            Value::U64(raw)
        })
    };
    match (code, v) {
        (1, _) => int(8, true),
        (2, _) => int(16, true),
        (3, _) => int(32, true),
        (4, _) => int(64, true),
        (5, _) => int(8, false),
        (6, _) => int(16, false),
        (7, _) => int(32, false),
        (8, _) => int(64, false),
        (9, MetricValue::Float(f)) => Ok(Value::F64(f64::from(*f))),
        (10, MetricValue::Double(d)) => Ok(Value::F64(*d)),
        (11, MetricValue::Boolean(b)) => Ok(Value::Bool(*b)),
        (12 | 14 | 15, MetricValue::String(s)) => Ok(Value::Str(s.clone())),
        (13, MetricValue::Long(ms)) => metric_time(Some(*ms))
            .map(|t| Value::Str(crate::model::rfc3339(t)))
            .ok_or_else(|| format!("a DateTime of {ms} ms is out of range")),
        // No (or an unknown) type declared: what the value itself is.
        (0, MetricValue::Int(i)) => Ok(Value::U64(u64::from(*i))),
        (0, MetricValue::Long(l)) => Ok(Value::U64(*l)),
        (0, MetricValue::Float(f)) => Ok(Value::F64(f64::from(*f))),
        (0, MetricValue::Double(d)) => Ok(Value::F64(*d)),
        (0, MetricValue::Boolean(b)) => Ok(Value::Bool(*b)),
        (0, MetricValue::String(s)) => Ok(Value::Str(s.clone())),
        (1..=15, _) => Err(format!("a {} carried in the wrong field", type_name(code))),
        _ => Err(format!(
            "a {} value, which Causeway does not read as a tag",
            type_name(code)
        )),
    }
}

/// A tag's value and its time, or why it is Bad.
pub type Read = Result<(Value, Option<SystemTime>), String>;

/// Which configured tags a metric feeds, by index.
type Wanted = HashMap<(Option<String>, String), Vec<usize>>;

/// One configured edge node: its tags, and what its last birth declared.
#[derive(Debug, Default)]
struct Node {
    /// (device, metric) -> tags.
    wanted: Wanted,
    /// Whether an NBIRTH has been seen since the last death or reconnect.
    born: bool,
    /// The devices born since.
    devices: HashSet<String>,
    /// The last `seq` seen.
    seq: Option<u8>,
    /// The `bdSeq` of the last NBIRTH.
    bd_seq: Option<u64>,
    /// alias -> (device, metric, data type), from the births.
    aliases: HashMap<u64, (Option<String>, String, u32)>,
    /// (device, metric) -> data type, from the births.
    types: HashMap<(Option<String>, String), u32>,
    /// When a rebirth was last asked for.
    asked: Option<Instant>,
    /// Whether a birth is awaited (asked for, not yet come).
    waiting: bool,
    /// The least time before the next request (doubles with each, up to [`REBIRTH_MAX`]; back
    /// to [`REBIRTH_EVERY`] after that long without one).
    every: Duration,
    /// The devices that have tags.
    configured: HashSet<String>,
    /// When the last NBIRTH came, until every configured device's DBIRTH has followed it or
    /// their tags have been made Bad for its absence.
    born_at: Option<Instant>,
    /// When the last NBIRTH came.
    last_birth: Option<Instant>,
    /// A digest of the last message's payload (a repeat is told from a gap by it).
    last_digest: Option<u64>,
    /// Whether a fault (a reason to ask) came since the last NBIRTH.
    faulted: bool,
}

/// What one message means for the tags.
#[derive(Debug, Default)]
pub struct Effect {
    /// (tag index, value and its time, or why it is Bad), in message order; a tag may repeat.
    pub samples: Vec<(usize, Read)>,
    /// Publish this (topic, payload) to ask for a rebirth.
    pub rebirth: Option<(String, Vec<u8>)>,
    /// Worth a warning (rate-limited by the caller).
    pub warning: Option<String>,
}

/// What is due now and then, without a message: rebirth requests repeated, and the tags of
/// devices whose DBIRTH never came made Bad.
#[derive(Debug, Default)]
pub struct Due {
    /// (topic, payload) to publish.
    pub requests: Vec<(String, Vec<u8>)>,
    /// (tag index, why it is Bad).
    pub samples: Vec<(usize, Read)>,
}

/// The host application's view of the configured edge nodes.
#[derive(Debug, Default)]
pub struct Host {
    nodes: HashMap<(String, String), Node>,
}

impl Host {
    /// A host for `tags`: (index, group, edge node, device, metric).
    pub fn new<'a>(
        tags: impl IntoIterator<Item = (usize, &'a str, &'a str, Option<&'a str>, &'a str)>,
    ) -> Self {
        let mut nodes: HashMap<(String, String), Node> = HashMap::new();
        for (i, group, node, device, metric) in tags {
            nodes
                .entry((group.to_owned(), node.to_owned()))
                .or_default()
                .wanted
                .entry((device.map(str::to_owned), metric.to_owned()))
                .or_default()
                .push(i);
        }
        for node in nodes.values_mut() {
            node.every = REBIRTH_EVERY;
            node.configured = node.wanted.keys().filter_map(|(d, _)| d.clone()).collect();
        }
        Host { nodes }
    }

    /// Whether no tag reads Sparkplug.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The filters to subscribe to: every message of each configured edge node and its devices.
    pub fn filters(&self) -> Vec<String> {
        let mut filters: Vec<String> = self
            .nodes
            .keys()
            .flat_map(|(g, n)| [format!("spBv1.0/{g}/+/{n}"), format!("spBv1.0/{g}/+/{n}/+")])
            .collect();
        filters.sort();
        filters
    }

    /// Forgets every birth (the connection was lost: messages may have been missed) and
    /// returns a rebirth request for each node, to be published once subscribed again (for a
    /// node asked too recently, [`Host::due`] sends it when its interval has passed).
    pub fn reconnected(&mut self, now: Instant, wall: SystemTime) -> Vec<(String, Vec<u8>)> {
        let mut requests = Vec::new();
        for ((group, node), state) in &mut self.nodes {
            state.born = false;
            state.born_at = None;
            state.devices.clear();
            state.seq = None;
            state.waiting = true;
            if state.may_ask(now) {
                requests.push((ncmd_topic(group, node), rebirth_request(wall)));
            }
        }
        requests.sort();
        requests
    }

    /// Rebirth requests repeated for the nodes whose birth is still awaited, each interval
    /// twice the last, from [`REBIRTH_EVERY`] up to [`REBIRTH_MAX`] (a node that ignores them,
    /// or is gone without a death certificate, is not flooded); and the tags of configured
    /// devices whose DBIRTH has not followed their node's NBIRTH within [`DBIRTH_GRACE`], Bad.
    /// Called now and then.
    pub fn due(&mut self, now: Instant, wall: SystemTime) -> Due {
        let mut due = Due::default();
        for ((group, node), state) in &mut self.nodes {
            if state.waiting && state.may_ask(now) {
                due.requests
                    .push((ncmd_topic(group, node), rebirth_request(wall)));
            }
            if state.born
                && let Some(at) = state.born_at
                && now.duration_since(at) >= DBIRTH_GRACE
            {
                state.born_at = None;
                let mut absent: Vec<&String> = state
                    .configured
                    .iter()
                    .filter(|d| !state.devices.contains(*d))
                    .collect();
                absent.sort();
                for d in absent {
                    let why = format!(
                        "no DBIRTH from device {group}/{node}/{d} since its edge node's birth (is it still connected to the edge node?)"
                    );
                    due.samples.extend(state.tags_of(Some(d), &why));
                }
            }
        }
        due.requests.sort();
        due
    }

    /// The effect of a message on `topic` (`None`: not a configured node's message): `payload`
    /// is its bytes, or why they cannot be read (larger than the cap, say).
    pub fn read(
        &mut self,
        topic: &str,
        payload: Result<&[u8], String>,
        now: Instant,
        wall: SystemTime,
    ) -> Option<Effect> {
        let t = Topic::parse(topic)?;
        let node = self
            .nodes
            .get_mut(&(t.group.to_owned(), t.edge_node.to_owned()))?;
        if matches!(t.kind, Kind::NCmd | Kind::DCmd) {
            return None;
        }
        let mut effect = Effect::default();
        let device = t.device.map(str::to_owned);
        let device = device.as_ref();
        // A device without tags is read only for the node's sequence.
        let unconfigured = t.device.is_some_and(|d| !node.configured.contains(d));
        let digest = payload.as_ref().ok().map(|bytes| {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            bytes.hash(&mut h);
            h.finish()
        });
        let payload = match payload.and_then(decode) {
            Ok(p) => p,
            // Its `seq` is lost with it: the next message of the node shows the gap.
            Err(_) if unconfigured => return Some(effect),
            Err(why) => {
                // A message lost, a birth perhaps: as after a sequence gap, the node's aliases
                // are no longer trusted, and its tags are Bad until the rebirth asked for.
                node.born = false;
                node.devices.clear();
                effect.samples = node.all(&format!("{why}; waiting for a rebirth"));
                effect.warning = Some(why);
                effect.rebirth = node.ask(t, now, wall);
                return Some(effect);
            }
        };
        // The sequence: every message but NDEATH; an NBIRTH starts it. A gap means messages
        // were lost, a birth among them perhaps, so the aliases are no longer trusted: the node
        // waits for the rebirth it is asked for.
        if t.kind != Kind::NDeath {
            let seq = payload.seq.and_then(|s| u8::try_from(s).ok());
            let repeat = node.last_digest.is_some() && node.last_digest == digest;
            node.last_digest = digest;
            match (t.kind, node.seq, seq) {
                (Kind::NBirth, _, s) => node.seq = s,
                // The very same message again (a broker delivering it once per matching
                // subscription): read once. The same seq with other content is a gap (255
                // messages lost, or a restart whose death and birth were both missed).
                (_, Some(last), Some(s)) if s == last && repeat && node.born => {
                    return Some(effect);
                }
                (_, Some(last), Some(s)) if s != last.wrapping_add(1) && node.born => {
                    // Whatever the message (a device's without tags too): the node's tags are
                    // Bad and a rebirth is asked for, the message itself not read.
                    effect.warning = Some(format!(
                        "sequence gap from edge node {}/{}: {s} after {last} (messages were lost); asking for a rebirth",
                        t.group, t.edge_node
                    ));
                    node.born = false;
                    node.devices.clear();
                    node.seq = Some(s);
                    let whole = Topic { device: None, ..t };
                    node.unborn(whole, now, wall, &mut effect);
                    return Some(effect);
                }
                (_, _, s) => node.seq = s.or(node.seq),
            }
        }
        match t.kind {
            Kind::NBirth => {
                // The answer to any request (the next still waits its interval: a fault that
                // returns with every birth must not make a storm of them).
                node.born = true;
                node.last_birth = Some(now);
                node.faulted = false;
                node.born_at = (!node.configured.is_empty()).then_some(now);
                node.waiting = false;
                node.devices.clear();
                node.aliases.clear();
                node.types.clear();
                node.bd_seq = payload
                    .metrics
                    .iter()
                    .find(|m| m.name.as_deref() == Some(BD_SEQ))
                    .and_then(|m| match m.value {
                        Some(MetricValue::Long(v)) => Some(v),
                        Some(MetricValue::Int(v)) => Some(u64::from(v)),
                        _ => None,
                    });
                node.birth(None, &payload, &mut effect);
            }
            Kind::DBirth | Kind::DData | Kind::DDeath if unconfigured => {}
            Kind::DBirth => {
                let d = t.device.unwrap_or_default();
                if node.born {
                    node.aliases
                        .retain(|_, (dev, _, _)| dev.as_deref() != Some(d));
                    node.types.retain(|(dev, _), _| dev.as_deref() != Some(d));
                    node.devices.insert(d.to_owned());
                    node.birth(device.cloned(), &payload, &mut effect);
                } else {
                    node.unborn(t, now, wall, &mut effect);
                }
            }
            Kind::NData | Kind::DData => {
                let known = node.born && t.device.is_none_or(|d| node.devices.contains(d));
                if known {
                    if let Err(why) = node.data(device, &payload, &mut effect) {
                        // An alias no birth declared: the births known are not the node's.
                        node.born = false;
                        node.devices.clear();
                        effect.samples.clear();
                        effect.warning = Some(why);
                        node.unborn(t, now, wall, &mut effect);
                    }
                } else {
                    node.unborn(t, now, wall, &mut effect);
                }
            }
            Kind::NDeath => {
                let bd_seq = payload
                    .metrics
                    .iter()
                    .find(|m| m.name.as_deref() == Some(BD_SEQ))
                    .and_then(|m| match m.value {
                        Some(MetricValue::Long(v)) => Some(v),
                        Some(MetricValue::Int(v)) => Some(u64::from(v)),
                        _ => None,
                    });
                if let (Some(death), Some(birth)) = (bd_seq, node.bd_seq)
                    && death != birth
                {
                    // The will of a session older than the current birth: the node lives.
                    return Some(effect);
                }
                node.born = false;
                node.born_at = None;
                node.devices.clear();
                node.aliases.clear();
                node.types.clear();
                node.seq = None;
                // Gone: its next NBIRTH comes when it is back, unasked.
                node.waiting = false;
                let why = format!("edge node {}/{} is offline (NDEATH)", t.group, t.edge_node);
                effect.samples = node.all(&why);
            }
            Kind::DDeath => {
                let d = t.device.unwrap_or_default();
                node.devices.remove(d);
                node.aliases
                    .retain(|_, (dev, _, _)| dev.as_deref() != Some(d));
                node.types.retain(|(dev, _), _| dev.as_deref() != Some(d));
                let why = format!("device {}/{}/{d} is offline (DDEATH)", t.group, t.edge_node);
                effect.samples = node.tags_of(Some(d), &why);
            }
            Kind::NCmd | Kind::DCmd => {}
        }
        Some(effect)
    }
}

fn ncmd_topic(group: &str, node: &str) -> String {
    format!("spBv1.0/{group}/NCMD/{node}")
}

impl Node {
    /// Every tag of `device` (or of the node itself) Bad for `why`.
    fn tags_of(&self, device: Option<&str>, why: &str) -> Vec<(usize, Read)> {
        let mut tags: Vec<usize> = self
            .wanted
            .iter()
            .filter(|((d, _), _)| d.as_deref() == device)
            .flat_map(|(_, t)| t.iter().copied())
            .collect();
        tags.sort_unstable();
        tags.into_iter().map(|i| (i, Err(why.to_owned()))).collect()
    }

    /// A message from a node or device whose birth is not known: not read (its aliases may
    /// mean anything), its tags Bad until the rebirth asked for arrives.
    fn unborn(&mut self, t: Topic<'_>, now: Instant, wall: SystemTime, effect: &mut Effect) {
        let (whose, tags) = match t.device {
            Some(d) if self.born => (format!("device {}/{}/{d}", t.group, t.edge_node), Some(d)),
            _ => (format!("edge node {}/{}", t.group, t.edge_node), None),
        };
        let why = format!("waiting for a birth certificate from {whose} (a rebirth was asked for)");
        effect.samples = match tags {
            Some(d) => self.tags_of(Some(d), &why),
            None => self.all(&why),
        };
        if effect.warning.is_none() {
            effect.warning = Some(why);
        }
        effect.rebirth = self.ask(t, now, wall);
    }

    /// Every tag of the node and its devices Bad for `why`.
    fn all(&self, why: &str) -> Vec<(usize, Read)> {
        let mut tags: Vec<usize> = self.wanted.values().flatten().copied().collect();
        tags.sort_unstable();
        tags.into_iter().map(|i| (i, Err(why.to_owned()))).collect()
    }

    /// A rebirth request, unless the last went out less than its interval ago ([`Host::due`]
    /// sends it once the interval has passed).
    fn ask(&mut self, t: Topic<'_>, now: Instant, wall: SystemTime) -> Option<(String, Vec<u8>)> {
        self.waiting = true;
        self.may_ask(now)
            .then(|| (ncmd_topic(t.group, t.edge_node), rebirth_request(wall)))
    }

    /// Whether a request may go out now; if so, it is counted as sent. The least time to the
    /// next: [`REBIRTH_EVERY`] after the first, or after a birth that stayed healthy for
    /// [`HEALTHY`]; twice the last (up to [`REBIRTH_MAX`]) while requests go unanswered or
    /// faults follow their births at once, so neither a deaf node nor a fault that returns
    /// with every birth makes a storm.
    fn may_ask(&mut self, now: Instant) -> bool {
        let answered = self
            .last_birth
            .is_some_and(|b| self.asked.is_none_or(|a| b >= a));
        let healthy = answered
            && !self.faulted
            && self
                .last_birth
                .is_some_and(|b| now.saturating_duration_since(b) >= HEALTHY);
        self.faulted = true;
        if healthy {
            self.every = REBIRTH_EVERY;
        }
        if let Some(at) = self.asked
            && now.saturating_duration_since(at) < self.every
        {
            return false;
        }
        if self.asked.is_some() && !healthy {
            self.every = (self.every * 2).min(REBIRTH_MAX);
        }
        self.asked = Some(now);
        true
    }

    /// A birth of the node (`device` `None`) or of a device: aliases and types learnt, values
    /// read, and the configured metrics it does not declare made Bad, by name.
    fn birth(&mut self, device: Option<String>, payload: &Payload, effect: &mut Effect) {
        let mut declared = HashSet::new();
        for metric in &payload.metrics {
            let Some(name) = &metric.name else { continue };
            let code = metric.datatype.unwrap_or(0);
            if let Some(alias) = metric.alias {
                self.aliases
                    .insert(alias, (device.clone(), name.clone(), code));
            }
            let key = (device.clone(), name.clone());
            self.types.insert(key.clone(), code);
            declared.insert(name.as_str());
            // History declares the metric; its old value is not the current one.
            if metric.is_historical == Some(true) {
                continue;
            }
            if let Some(tags) = self.wanted.get(&key) {
                let read = value(metric, code)
                    .map(|v| (v, metric_time(metric.timestamp.or(payload.timestamp))));
                effect
                    .samples
                    .extend(tags.iter().map(|&i| (i, read.clone())));
            }
        }
        let mut missing: Vec<(&String, &Vec<usize>)> = self
            .wanted
            .iter()
            .filter(|((d, m), _)| *d == device && !declared.contains(m.as_str()))
            .map(|((_, m), t)| (m, t))
            .collect();
        missing.sort();
        for (metric, tags) in &missing {
            let why = format!(
                "the birth certificate does not declare a metric `{metric}` (check the tag's `metric` against `causeway mqtt sub --format sparkplug`)"
            );
            effect
                .samples
                .extend(tags.iter().map(|&i| (i, Err(why.clone()))));
        }
        if let Some((metric, _)) = missing.first() {
            effect.warning = Some(format!(
                "the birth certificate does not declare the configured metric `{metric}`{}",
                if missing.len() > 1 {
                    format!(" (and {} more)", missing.len() - 1)
                } else {
                    String::new()
                }
            ));
        }
    }

    /// A data message: metrics by alias or name, in order. An alias no birth declared is an
    /// error (nothing of the message is read). A metric that is history (`is_historical`, an
    /// edge node's store and forward) is not read: its old value would pass for the current
    /// one. A metric the birth did not declare is read only with its own data type.
    fn data(
        &mut self,
        device: Option<&String>,
        payload: &Payload,
        effect: &mut Effect,
    ) -> Result<(), String> {
        let mut history = 0usize;
        for metric in &payload.metrics {
            let (key, code) = match (metric.alias, &metric.name) {
                (Some(alias), _) => match self.aliases.get(&alias) {
                    Some((d, name, code)) if d.as_ref() == device => {
                        ((d.clone(), name.clone()), Some(*code))
                    }
                    _ => {
                        return Err(format!(
                            "a metric by alias {alias}, which no birth declared; asking for a rebirth"
                        ));
                    }
                },
                (None, Some(name)) => {
                    let key = (device.cloned(), name.clone());
                    let code = self.types.get(&key).copied();
                    (key, code)
                }
                (None, None) => continue,
            };
            let Some(tags) = self.wanted.get(&key) else {
                continue;
            };
            if metric.is_historical == Some(true) {
                history += 1;
                continue;
            }
            let read = match metric.datatype.or(code) {
                Some(code) => value(metric, code)
                    .map(|v| (v, metric_time(metric.timestamp.or(payload.timestamp)))),
                None => Err(format!(
                    "metric `{}` is not declared in the birth certificate and gives no data type",
                    key.1
                )),
            };
            effect
                .samples
                .extend(tags.iter().map(|&i| (i, read.clone())));
        }
        if history > 0 {
            effect.warning = Some(format!(
                "{history} historical (store-and-forward) value(s) of configured metrics not read: Causeway reads current values"
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
