//! The validated, typed configuration the runtime works from. Obtained only through
//! [`crate::load`]; every invariant listed on a type here was checked there.

use std::{collections::BTreeMap, fmt, path::PathBuf, time::Duration};

/// Every event type Causeway knows, in the order they are documented.
pub const EVENT_TYPES: &[&str] = &[
    "production.count",
    "production.state",
    "production.order",
    "quality.measurement",
    "quality.reject",
    "telemetry.sample",
    "gateway.buffer_reset",
];

/// Event types every sink receives whatever its routes (but one with a body template, which
/// gets them only when its routes name them): what the gateway says about itself (a buffer
/// that was found corrupt and started afresh) concerns every receiver.
pub const SYSTEM_EVENT_TYPES: &str = "gateway.*";

/// The whole configuration.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// Non-empty, no `/` or whitespace.
    pub gateway_id: String,
    /// How long shutdown waits for sinks.
    pub shutdown_grace: Duration,
    /// The store-and-forward buffer.
    pub buffer: BufferConfig,
    /// Unique names.
    pub sources: Vec<SourceConfig>,
    /// Every tag they name exists with a fitting type.
    pub rules: Vec<RuleConfig>,
    /// Unique names, each routed at least one known event type.
    pub sinks: Vec<SinkConfig>,
}

/// `[buffer]`
#[derive(Debug, Clone)]
pub struct BufferConfig {
    /// As written; resolve relative paths against the config file's folder.
    pub path: PathBuf,
    /// Bound on undelivered event bytes (payloads), 1 MiB ..= 1 TiB.
    pub max_bytes: u64,
    /// Bound on dead-letter bytes, kept apart from `max_bytes`; the oldest are evicted past it.
    pub max_dead_bytes: u64,
    /// Undelivered events older than this are dropped (counted); `None`: kept until delivered
    /// or evicted by size.
    pub max_age: Option<Duration>,
    /// What happens when `max_bytes` is reached.
    pub when_full: WhenFull,
    /// Most writes per transaction (>= 1).
    pub max_batch: usize,
    /// How long the audit trail keeps each delivery attempt (1 h ..= 366 d).
    pub audit_retention: Duration,
    /// Bound on the audit trail's size; the oldest records go past it.
    pub max_audit_bytes: u64,
}

/// What the buffer does when it holds `max_bytes` of undelivered events. Whatever the policy,
/// `telemetry.*` events are evicted first, and orders and quality events last.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WhenFull {
    /// Evict the oldest stored events, lowest lane first (the default).
    #[default]
    DropOldest,
    /// Refuse the new events (counted) and keep what is stored.
    DropNewest,
    /// Accept nothing new: the sources are held back until the sinks make room. Counters lose
    /// nothing (they are cumulative); states and measurements in between are not seen.
    BlockSources,
}

impl WhenFull {
    /// As written in the config file.
    pub fn as_str(self) -> &'static str {
        match self {
            WhenFull::DropOldest => "drop_oldest",
            WhenFull::DropNewest => "drop_newest",
            WhenFull::BlockSources => "block_sources",
        }
    }
}

/// A PLC or SCADA connection.
/// Exhaustive on purpose: a new kind must be handled everywhere sources are matched.
#[derive(Debug, Clone)]
pub enum SourceConfig {
    /// `kind = "modbus-tcp"`
    ModbusTcp(ModbusTcpConfig),
    /// `kind = "opcua"`
    OpcUa(OpcUaConfig),
    /// `kind = "mqtt"`
    Mqtt(MqttSourceConfig),
    /// `kind = "webhook"`
    Webhook(WebhookSourceConfig),
}

/// `kind = "webhook"`: an HTTPS endpoint where a system posts JSON, read into tags.
#[derive(Debug, Clone, PartialEq)]
pub struct WebhookSourceConfig {
    /// Unique source name.
    pub name: String,
    /// Where to listen.
    pub listen: std::net::SocketAddr,
    /// The path posts go to (begins with `/`).
    pub path: String,
    /// The server certificate (chain) and key (PEM); `None` only with `insecure = true`.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// How a post proves who sends it.
    pub auth: WebhookAuth,
    /// Largest body read.
    pub max_body: usize,
    /// Non-empty, unique names.
    pub tags: Vec<WebhookTagConfig>,
}

/// How a webhook post proves who sends it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WebhookAuth {
    /// A shared key in a header.
    ApiKey {
        /// The header, e.g. `X-API-Key`.
        header: String,
        /// Where the key is.
        key: Secret,
    },
    /// HMAC-SHA256 of the body, hex, in a header.
    Hmac {
        /// The header, e.g. `X-Signature-256`.
        header: String,
        /// Where the secret is.
        secret: Secret,
        /// Text before the hex digest, e.g. `sha256=`.
        prefix: String,
    },
}

/// One tag of a webhook source: read from each post's JSON like an MQTT JSON tag.
#[derive(Debug, Clone, PartialEq)]
pub struct WebhookTagConfig {
    /// Unique within the source.
    pub name: String,
    /// JSON Pointer to the value (`""`: the whole body).
    pub value: String,
    /// JSON Pointer to the time, if given.
    pub timestamp: Option<String>,
    /// JSON Pointer to a quality, if given.
    pub quality: Option<String>,
    /// The declared type.
    pub data_type: Option<UaType>,
}

impl SourceConfig {
    /// The source's unique name.
    pub fn name(&self) -> &str {
        match self {
            SourceConfig::ModbusTcp(m) => &m.name,
            SourceConfig::OpcUa(u) => &u.name,
            SourceConfig::Mqtt(m) => &m.name,
            SourceConfig::Webhook(w) => &w.name,
        }
    }
}

/// `kind = "modbus-tcp"`
#[derive(Debug, Clone)]
pub struct ModbusTcpConfig {
    /// Unique source name.
    pub name: String,
    /// `host:port`.
    pub address: String,
    /// Unit (slave) id.
    pub unit: u8,
    /// Poll interval (> 0).
    pub poll: Duration,
    /// Per-request deadline (> 0).
    pub timeout: Duration,
    /// Registers a coalesced read may read through.
    pub max_gap: u16,
    /// Non-empty, unique names, no two overlapping.
    pub tags: Vec<ModbusTagConfig>,
}

/// `kind = "opcua"`
#[derive(Debug, Clone)]
pub struct OpcUaConfig {
    /// Unique source name.
    pub name: String,
    /// `opc.tcp://host:port[/path]`.
    pub endpoint: String,
    /// Security policy; never weakened at run time.
    pub policy: UaPolicy,
    /// Message security mode; `None` exactly when `policy` is `None`.
    pub mode: UaMode,
    /// Who the session is opened as.
    pub identity: UaIdentity,
    /// own/, trusted/, rejected/; `None`: `pki` beside the buffer file.
    pub pki_dir: Option<PathBuf>,
    /// Subscriptions or polled Reads.
    pub reading: UaReading,
    /// Deadline of each request (connect, read, create items).
    pub timeout: Duration,
    /// Non-empty, unique names.
    pub tags: Vec<OpcUaTagConfig>,
}

/// `kind = "mqtt"` (a source)
#[derive(Debug, Clone)]
pub struct MqttSourceConfig {
    /// Unique source name.
    pub name: String,
    /// Broker host.
    pub host: String,
    /// Broker port.
    pub port: u16,
    /// TLS (`mqtts://`).
    pub tls: bool,
    /// Extra CA certificates (PEM).
    pub ca_file: Option<PathBuf>,
    /// Client certificate and key (PEM).
    pub identity: Option<(PathBuf, PathBuf)>,
    /// Client id; `None`: `causeway-<gateway_id>-source-<source>`.
    pub client_id: Option<String>,
    /// Clean session at each connect.
    pub clean_session: bool,
    /// User name and where the password is.
    pub credentials: Option<(String, Secret)>,
    /// Largest payload read.
    pub max_payload: usize,
    /// Non-empty, unique names.
    pub tags: Vec<MqttTagConfig>,
}

/// One tag of an MQTT source.
#[derive(Debug, Clone, PartialEq)]
pub struct MqttTagConfig {
    /// Unique within the source.
    pub name: String,
    /// The topic (no wildcards); for Sparkplug B, the filter its node's or device's messages
    /// arrive on (`spBv1.0/<group>/+/<edge node>[/<device>]`).
    pub topic: String,
    /// How its messages are read.
    pub format: MqttFormat,
    /// The declared type: values that do not convert to it without loss are Bad.
    pub data_type: Option<UaType>,
}

/// How an MQTT message is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MqttFormat {
    /// JSON, with JSON Pointers (`""` is the whole message).
    Json {
        /// To the value.
        value: String,
        /// To the time, if given.
        timestamp: Option<String>,
        /// To a quality, if given.
        quality: Option<String>,
    },
    /// The whole payload as text: a number, true/false, or a string.
    Text,
    /// A metric of a Sparkplug B edge node or device, by name (aliases resolved from births).
    Sparkplug {
        /// The group id.
        group: String,
        /// The edge node id.
        edge_node: String,
        /// The device id; `None` for a metric of the edge node itself.
        device: Option<String>,
        /// The metric's name.
        metric: String,
    },
}

/// OPC UA security policies Causeway offers (the deprecated Basic128Rsa15 and Basic256 are not).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UaPolicy {
    /// No signing or encryption.
    None,
    /// `Basic256Sha256`
    Basic256Sha256,
    /// `Aes128_Sha256_RsaOaep`
    Aes128Sha256RsaOaep,
    /// `Aes256_Sha256_RsaPss`
    Aes256Sha256RsaPss,
}

impl UaPolicy {
    /// Every policy, by the name written in the config.
    pub const ALL: [(&'static str, UaPolicy); 4] = [
        ("None", UaPolicy::None),
        ("Basic256Sha256", UaPolicy::Basic256Sha256),
        ("Aes128_Sha256_RsaOaep", UaPolicy::Aes128Sha256RsaOaep),
        ("Aes256_Sha256_RsaPss", UaPolicy::Aes256Sha256RsaPss),
    ];

    /// The name as written in the config (and in the OPC UA specification's URI).
    pub fn name(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(_, p)| *p == self)
            .map_or("None", |(n, _)| n)
    }
}

/// OPC UA message security modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UaMode {
    /// With policy None only.
    None,
    /// Signed, not encrypted.
    Sign,
    /// Signed and encrypted.
    SignAndEncrypt,
}

/// The user identity of an OPC UA session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UaIdentity {
    /// No user.
    Anonymous,
    /// User name and a password read at each connect.
    UserName {
        /// The user.
        user: String,
        /// Where the password is.
        password: Secret,
    },
    /// An X.509 user certificate and its private key.
    X509 {
        /// DER or PEM certificate.
        certificate: PathBuf,
        /// PEM private key.
        key: PathBuf,
    },
}

/// A secret kept out of the config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Secret {
    /// In this environment variable.
    Env(String),
    /// In this file, surrounding whitespace trimmed.
    File(PathBuf),
}

/// How an OPC UA source reads its nodes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum UaReading {
    /// Monitored items in subscriptions: the server reports changes.
    Subscribe {
        /// How often the server sends a notification (or a keep-alive).
        publishing: Duration,
        /// How often the server samples each node.
        sampling: Duration,
        /// Values queued per item between publishes (>= 1).
        queue_size: u32,
    },
    /// Chunked Reads of every node, every `interval`.
    Poll {
        /// The poll interval.
        interval: Duration,
    },
}

/// One tag of an OPC UA source.
#[derive(Debug, Clone, PartialEq)]
pub struct OpcUaTagConfig {
    /// Unique within the source.
    pub name: String,
    /// The node, parsed.
    pub node: UaNodeId,
    /// The declared type: values that do not fit it are Bad. `None`: the node's own type.
    pub data_type: Option<UaType>,
    /// A server-side data-change deadband (subscriptions only).
    pub deadband: Option<Deadband>,
}

/// An OPC UA node id, `ns=<namespace>;<i|s|g|b>=<identifier>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UaNodeId {
    /// Namespace index (0 when `ns=` is omitted).
    pub namespace: u16,
    /// The identifier.
    pub identifier: UaIdentifier,
}

/// The four kinds of OPC UA node identifier.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum UaIdentifier {
    /// `i=1234`
    Numeric(u32),
    /// `s=Press.Force`
    String(String),
    /// `g=72962b91-fa75-4ae6-8d28-b404dc7daf63`, the 16 bytes in text order.
    Guid([u8; 16]),
    /// `b=<base64>`, decoded.
    Opaque(Vec<u8>),
}

impl UaNodeId {
    /// Parses the text form servers and tools print; `None` when it is not one.
    pub fn parse(text: &str) -> Option<Self> {
        let (namespace, rest) = match text.strip_prefix("ns=") {
            Some(rest) => {
                let (ns, rest) = rest.split_once(';')?;
                (ns.parse::<u16>().ok()?, rest)
            }
            None => (0, text),
        };
        let (kind, id) = rest.split_once('=')?;
        let identifier = match kind {
            "i" => UaIdentifier::Numeric(id.parse().ok()?),
            "s" if !id.is_empty() && id.len() <= 4096 => UaIdentifier::String(id.to_owned()),
            "g" => UaIdentifier::Guid(parse_guid(id)?),
            "b" => UaIdentifier::Opaque(
                base64_decode(id).filter(|b| !b.is_empty() && b.len() <= 4096)?,
            ),
            _ => return None,
        };
        Some(UaNodeId {
            namespace,
            identifier,
        })
    }
}

impl std::fmt::Display for UaNodeId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.namespace != 0 {
            write!(f, "ns={};", self.namespace)?;
        }
        match &self.identifier {
            UaIdentifier::Numeric(n) => write!(f, "i={n}"),
            UaIdentifier::String(s) => write!(f, "s={s}"),
            UaIdentifier::Guid(g) => {
                write!(f, "g=")?;
                for (i, b) in g.iter().enumerate() {
                    if matches!(i, 4 | 6 | 8 | 10) {
                        write!(f, "-")?;
                    }
                    write!(f, "{b:02x}")?;
                }
                Ok(())
            }
            UaIdentifier::Opaque(bytes) => write!(f, "b={}", base64_encode(bytes)),
        }
    }
}

fn parse_guid(text: &str) -> Option<[u8; 16]> {
    let groups: Vec<&str> = text.split('-').collect();
    if groups.iter().map(|g| g.len()).collect::<Vec<_>>() != [8, 4, 4, 4, 12] {
        return None;
    }
    let hex: String = groups.concat();
    let mut out = [0u8; 16];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

const BASE64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let text = text.trim_end_matches('=');
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in text.bytes() {
        let v = BASE64.iter().position(|&b| b == c)? as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

/// Standard base64 with padding (RFC 4648): OPC UA opaque node ids, and the basic
/// credentials the demo receiver expects.
pub fn base64_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(char::from(BASE64[(n >> (18 - 6 * i) & 63) as usize]));
        }
        for _ in chunk.len()..3 {
            out.push('=');
        }
    }
    out
}

/// The types an OPC UA tag may declare; a value must convert to it without loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UaType {
    /// Boolean
    Bool,
    /// SByte
    I8,
    /// Byte
    U8,
    /// Int16
    I16,
    /// UInt16
    U16,
    /// Int32
    I32,
    /// UInt32
    U32,
    /// Int64
    I64,
    /// UInt64
    U64,
    /// Float
    F32,
    /// Double
    F64,
    /// String
    String,
}

impl UaType {
    /// Every type by its config name.
    pub const ALL: [(&'static str, UaType); 12] = [
        ("bool", UaType::Bool),
        ("i8", UaType::I8),
        ("u8", UaType::U8),
        ("i16", UaType::I16),
        ("u16", UaType::U16),
        ("i32", UaType::I32),
        ("u32", UaType::U32),
        ("i64", UaType::I64),
        ("u64", UaType::U64),
        ("f32", UaType::F32),
        ("f64", UaType::F64),
        ("string", UaType::String),
    ];

    /// The config name.
    pub fn name(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(_, t)| *t == self)
            .map_or("?", |(n, _)| n)
    }

    /// Bit width of an unsigned counter type.
    pub fn counter_bits(self) -> Option<u32> {
        match self {
            UaType::U8 => Some(8),
            UaType::U16 => Some(16),
            UaType::U32 => Some(32),
            UaType::U64 => Some(64),
            _ => None,
        }
    }

    /// Integer-valued.
    pub fn is_integer(self) -> bool {
        !matches!(
            self,
            UaType::Bool | UaType::F32 | UaType::F64 | UaType::String
        )
    }
}

/// The four Modbus data tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RegisterKind {
    /// Read-write bits (function 1).
    Coil,
    /// Read-only bits (function 2).
    Discrete,
    /// Read-only 16-bit registers (function 4).
    Input,
    /// Read-write 16-bit registers (function 3).
    Holding,
}

impl RegisterKind {
    /// Bits (coil, discrete) rather than 16-bit words.
    pub fn is_bit(self) -> bool {
        matches!(self, RegisterKind::Coil | RegisterKind::Discrete)
    }

    /// As written in the config file.
    pub fn as_str(self) -> &'static str {
        match self {
            RegisterKind::Coil => "coil",
            RegisterKind::Discrete => "discrete",
            RegisterKind::Input => "input",
            RegisterKind::Holding => "holding",
        }
    }
}

impl fmt::Display for RegisterKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a tag's registers decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataType {
    /// A coil or discrete input.
    Bool,
    /// One bit (0 = least significant) of an input or holding register.
    Bit(u8),
    /// 1 register.
    U16,
    /// 1 register, two's complement.
    I16,
    /// 2 registers.
    U32,
    /// 2 registers.
    I32,
    /// 4 registers.
    U64,
    /// 4 registers.
    I64,
    /// 2 registers, IEEE 754.
    F32,
    /// 4 registers, IEEE 754.
    F64,
    /// N registers of ASCII, two characters each, NULs and trailing spaces trimmed.
    String(u16),
}

impl DataType {
    /// Registers (or bits, for `Bool`) the type occupies.
    pub fn width(self) -> u16 {
        match self {
            DataType::Bool | DataType::Bit(_) | DataType::U16 | DataType::I16 => 1,
            DataType::U32 | DataType::I32 | DataType::F32 => 2,
            DataType::U64 | DataType::I64 | DataType::F64 => 4,
            DataType::String(n) => n,
        }
    }

    /// Bit width of an unsigned counter type, `None` for others.
    pub fn counter_bits(self) -> Option<u32> {
        match self {
            DataType::U16 => Some(16),
            DataType::U32 => Some(32),
            DataType::U64 => Some(64),
            _ => None,
        }
    }

    /// Integer-valued (usable as a state code).
    pub fn is_integer(self) -> bool {
        matches!(
            self,
            DataType::U16
                | DataType::I16
                | DataType::U32
                | DataType::I32
                | DataType::U64
                | DataType::I64
        )
    }

    /// Yields a bool.
    pub fn is_bool(self) -> bool {
        matches!(self, DataType::Bool | DataType::Bit(_))
    }
}

/// Byte order within, and word order across, registers. Letters name bytes, most significant A.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WordOrder {
    /// Big-endian words, big-endian bytes (Modbus standard).
    #[default]
    Abcd,
    /// Little-endian words ("word swap"), big-endian bytes.
    Cdab,
    /// Big-endian words, bytes swapped in each word.
    Badc,
    /// Fully little-endian.
    Dcba,
}

impl WordOrder {
    /// Whether the register order is reversed.
    pub fn swaps_words(self) -> bool {
        matches!(self, WordOrder::Cdab | WordOrder::Dcba)
    }

    /// Whether the two bytes in each register are swapped.
    pub fn swaps_bytes(self) -> bool {
        matches!(self, WordOrder::Badc | WordOrder::Dcba)
    }
}

/// One Modbus tag.
#[derive(Debug, Clone)]
pub struct ModbusTagConfig {
    /// Unique within the source.
    pub name: String,
    /// Data table.
    pub kind: RegisterKind,
    /// First register or bit, 0-based; `address + width` fits in 65536.
    pub address: u16,
    /// Decoding; fits `kind`.
    pub data_type: DataType,
    /// Byte and word order.
    pub order: WordOrder,
    /// Multiplier (1.0 when absent); only on numeric types.
    pub scale: Option<f64>,
    /// Added after scaling; only on numeric types.
    pub offset: Option<f64>,
}

/// `<source>.<tag>`, checked to exist.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TagRef(pub String);

impl fmt::Display for TagRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A normalisation rule.
#[derive(Debug, Clone)]
pub enum RuleConfig {
    /// -> `production.count`
    Counter(CounterRuleConfig),
    /// -> `production.state`
    State(StateRuleConfig),
    /// -> `quality.measurement`
    Measurement(MeasurementRuleConfig),
    /// -> `telemetry.sample`
    Telemetry(TelemetryRuleConfig),
}

impl RuleConfig {
    /// Unique rule name (also the key of its durable state).
    pub fn name(&self) -> &str {
        match self {
            RuleConfig::Counter(r) => &r.name,
            RuleConfig::State(r) => &r.name,
            RuleConfig::Measurement(r) => &r.name,
            RuleConfig::Telemetry(r) => &r.name,
        }
    }

    /// The event type the rule produces.
    pub fn event_type(&self) -> &'static str {
        match self {
            RuleConfig::Counter(_) => "production.count",
            RuleConfig::State(_) => "production.state",
            RuleConfig::Measurement(_) => "quality.measurement",
            RuleConfig::Telemetry(_) => "telemetry.sample",
        }
    }
}

/// A PLC counter read as one unsigned register value that rolls over at `bits`.
#[derive(Debug, Clone)]
pub struct CounterInput {
    /// The tag.
    pub tag: TagRef,
    /// 16, 32 or 64.
    pub bits: u32,
}

/// `kind = "counter"`: at least one of `total`/`good`, optionally `reject`.
#[derive(Debug, Clone)]
pub struct CounterRuleConfig {
    /// Unique rule name.
    pub name: String,
    /// Machine.
    pub machine: String,
    /// Line context.
    pub line: Option<String>,
    /// Running total.
    pub total: Option<CounterInput>,
    /// Running good count.
    pub good: Option<CounterInput>,
    /// Running reject count.
    pub reject: Option<CounterInput>,
    /// Order-number tag (context).
    pub order: Option<TagRef>,
    /// Report interval (> 0).
    pub interval: Duration,
    /// The most parts per second the machine can make: a step between two readings larger than
    /// `max_rate` x (seconds between them + 1) is implausible (a reset, a glitch, a preset).
    pub max_rate: f64,
}

/// `kind = "state"`
#[derive(Debug, Clone)]
pub struct StateRuleConfig {
    /// Unique rule name.
    pub name: String,
    /// Machine.
    pub machine: String,
    /// Line context.
    pub line: Option<String>,
    /// Integer or bool tag.
    pub tag: TagRef,
    /// Value -> state name (bools map as 0/1).
    pub states: BTreeMap<i64, String>,
    /// Optional reason-code tag.
    pub reason: Option<TagRef>,
}

/// `kind = "measurement"`
#[derive(Debug, Clone)]
pub struct MeasurementRuleConfig {
    /// Unique rule name.
    pub name: String,
    /// Characteristic.
    pub characteristic: String,
    /// Machine.
    pub machine: String,
    /// Numeric tag.
    pub tag: TagRef,
    /// Bool tag; sample on its rising edge. `None`: sample on change.
    pub trigger: Option<TagRef>,
    /// At least one limit; `lsl < usl` when both.
    pub lsl: Option<f64>,
    /// Target.
    pub nominal: Option<f64>,
    /// Upper limit.
    pub usl: Option<f64>,
    /// Engineering unit.
    pub unit: Option<String>,
    /// Without a trigger: how far the value must move from the last reported one to report
    /// again. `None`: every change.
    pub deadband: Option<Deadband>,
}

/// `kind = "telemetry"`: raw tag values forwarded as `telemetry.sample` events, the samples of
/// the batches committed together in one event.
#[derive(Debug, Clone)]
pub struct TelemetryRuleConfig {
    /// Unique rule name.
    pub name: String,
    /// Machine (the events' source).
    pub machine: String,
    /// `<source>.<tag>` names and patterns (`*` any run of characters), each matching a tag.
    pub tags: Vec<String>,
    /// A numeric tag is sent again once it moved this far from the last sent value; `None`:
    /// on every change.
    pub deadband: Option<Deadband>,
    /// A tag is sent at most this often (zero: on every change).
    pub min_interval: Duration,
    /// A tag is sent at least this often, changed or not.
    pub heartbeat: Option<Duration>,
}

impl TelemetryRuleConfig {
    /// Whether this rule forwards `tag`.
    pub fn forwards(&self, tag: &str) -> bool {
        self.tags.iter().any(|p| route_matches(p, tag))
    }
}

/// A minimum change, absolute or relative to the last reported value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Deadband {
    /// In the tag's engineering unit (> 0).
    Absolute(f64),
    /// Percent of the last reported value's magnitude (> 0).
    Percent(f64),
}

impl Deadband {
    /// Whether `value` moved far enough from `last` to be reported.
    pub fn exceeded(self, last: f64, value: f64) -> bool {
        let moved = (value - last).abs();
        match self {
            Deadband::Absolute(d) => moved >= d,
            Deadband::Percent(p) => moved >= last.abs() * p / 100.0 && moved > 0.0,
        }
    }
}

/// Where events go.
#[derive(Debug, Clone)]
pub struct SinkConfig {
    /// Unique name, also its cursor's name.
    pub name: String,
    /// Patterns (`production.*`, `quality.measurement`, `*`), each matching a known type;
    /// `gateway.*` added for every sink but one with a body template.
    pub routes: Vec<String>,
    /// Most events per delivery (>= 1).
    pub batch_size: usize,
    /// Most payload bytes per delivery; a single larger event is sent alone.
    pub max_batch_bytes: u64,
    /// The circuit breaker: failed deliveries in a row that open it (>= 1).
    pub breaker_failures: u32,
    /// How long an open breaker sends nothing before it half-opens for one probe.
    pub breaker_open: Duration,
    /// Most requests per second (`None`: as fast as the receiver answers).
    pub rate_limit: Option<f64>,
    /// What kind of sink.
    pub kind: SinkKind,
}

impl SinkConfig {
    /// Whether `event_type` is routed to this sink.
    pub fn accepts(&self, event_type: &str) -> bool {
        self.routes
            .iter()
            .any(|route| route_matches(route, event_type))
    }
}

/// Whether a route pattern (`*` matches any run of characters) matches an event type (or a
/// telemetry pattern a tag name). Greedy with one backtrack point, so at most pattern length
/// times text length steps, whatever the number of `*`.
pub fn route_matches(pattern: &str, event_type: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), event_type.chars().collect());
    let (mut i, mut j) = (0usize, 0usize);
    // The last `*` seen in the pattern, and where in the text it began to match.
    let mut star: Option<(usize, usize)> = None;
    while j < t.len() {
        if i < p.len() && p[i] == '*' {
            star = Some((i, j));
            i += 1;
        } else if i < p.len() && p[i] == t[j] {
            i += 1;
            j += 1;
        } else if let Some((si, sj)) = star {
            // Let the last `*` take one more character, and try again after it.
            i = si + 1;
            j = sj + 1;
            star = Some((si, sj + 1));
        } else {
            return false;
        }
    }
    p[i..].iter().all(|c| *c == '*')
}

/// Kind-specific sink settings.
/// Exhaustive on purpose, like [`SourceConfig`].
#[derive(Debug, Clone)]
pub enum SinkKind {
    /// `kind = "https"`
    Https(HttpsSinkConfig),
    /// `kind = "file"`: JSON lines appended to `path`.
    File {
        /// As written; resolve relative to the config file's folder.
        path: PathBuf,
    },
    /// `kind = "stdout"`: JSON lines.
    Stdout,
    /// `kind = "mqtt"`: each event published with QoS 1.
    Mqtt(MqttSinkConfig),
}

/// `kind = "mqtt"`
#[derive(Debug, Clone)]
pub struct MqttSinkConfig {
    /// Broker host.
    pub host: String,
    /// Broker port (default 8883 for mqtts, 1883 for mqtt).
    pub port: u16,
    /// `mqtts://` (TLS) unless `insecure` allowed `mqtt://`.
    pub tls: bool,
    /// Extra CA certificates (PEM).
    pub ca_file: Option<PathBuf>,
    /// Client certificate and key (PEM) for mutual TLS.
    pub identity: Option<(PathBuf, PathBuf)>,
    /// Topic template: `{gateway_id}`, `{type}`, `{machine}`.
    pub topic: String,
    /// Client id; `None`: `causeway-<gateway_id>-<sink>`.
    pub client_id: Option<String>,
    /// User name and where the password is.
    pub credentials: Option<(String, Secret)>,
    /// Deadline for the broker's acknowledgements of one batch.
    pub timeout: Duration,
    /// First retry delay.
    pub retry_initial: Duration,
    /// Cap on retry delay.
    pub retry_max: Duration,
    /// MQTT 5 (`mqtt_version = "5"`) rather than 3.1.1: the event id also as a user property,
    /// and a broker's refusal of one message is heard (3.1.1 acknowledges and drops it).
    pub v5: bool,
}

/// `kind = "https"`
#[derive(Debug, Clone)]
pub struct HttpsSinkConfig {
    /// `https://` unless `insecure`.
    pub url: String,
    /// Plain http was explicitly allowed.
    pub insecure: bool,
    /// Per-request deadline.
    pub timeout: Duration,
    /// Extra CA certificates (PEM).
    pub ca_file: Option<PathBuf>,
    /// Authentication.
    pub auth: Option<HttpAuth>,
    /// Mutual TLS: a PEM client certificate (chain) and its PEM key.
    pub identity: Option<(PathBuf, PathBuf)>,
    /// `POST`, `PUT` or `PATCH`.
    pub method: String,
    /// Extra request headers (name, value), fixed text; none that the sink sets itself.
    pub headers: Vec<(String, String)>,
    /// What the body is.
    pub body: Body,
    /// First retry delay.
    pub retry_initial: Duration,
    /// Cap on retry delay (>= `retry_initial`).
    pub retry_max: Duration,
}

/// An https sink's request body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    /// A JSON array of the CloudEvents (`application/cloudevents-batch+json`).
    CloudEvents,
    /// A minijinja template rendered per batch or per event.
    Template(BodyTemplate),
}

/// A body template and how it is used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BodyTemplate {
    /// The template's text, or its file (relative to the config file's folder).
    pub source: TemplateSource,
    /// One request per event (the sink's `batch_size` is then 1) or per batch.
    pub per_event: bool,
    /// The rendered body's media type.
    pub content_type: String,
}

/// Where a body template is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TemplateSource {
    /// Written in the config file.
    Inline(String),
    /// In this file, read at start (and by `check`).
    File(PathBuf),
}

/// Where an https sink's credentials come from: never the config file itself.
#[derive(Debug, Clone)]
pub enum HttpAuth {
    /// Bearer token from this environment variable, read at start.
    BearerEnv(String),
    /// Bearer token from this file, read at start.
    BearerFile(PathBuf),
    /// HTTP basic auth (RFC 7617), the password read at start.
    Basic {
        /// The user name.
        username: String,
        /// Where the password is.
        password: Secret,
    },
    /// An API key in a header of the receiver's choosing, read at start.
    ApiKey {
        /// The header's name, e.g. `X-API-Key`.
        header: String,
        /// Where the key is.
        key: Secret,
    },
    /// OAuth2 client credentials (RFC 6749 section 4.4): a token from `token_url`, cached until
    /// shortly before it expires, fetched again once on a 401.
    OAuth2 {
        /// The token endpoint (https, or http where the sink allows `insecure`).
        token_url: String,
        /// The client id.
        client_id: String,
        /// Where the client secret is.
        secret: Secret,
        /// The scope asked for.
        scope: Option<String>,
        /// The audience asked for.
        audience: Option<String>,
    },
}
