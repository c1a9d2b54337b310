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

/// Event types every sink receives whatever its routes: what the gateway says about itself
/// (a buffer that was found corrupt and started afresh) concerns every receiver.
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
}

impl SourceConfig {
    /// The source's unique name.
    pub fn name(&self) -> &str {
        match self {
            SourceConfig::ModbusTcp(m) => &m.name,
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
}

impl RuleConfig {
    /// Unique rule name (also the key of its durable state).
    pub fn name(&self) -> &str {
        match self {
            RuleConfig::Counter(r) => &r.name,
            RuleConfig::State(r) => &r.name,
            RuleConfig::Measurement(r) => &r.name,
        }
    }

    /// The event type the rule produces.
    pub fn event_type(&self) -> &'static str {
        match self {
            RuleConfig::Counter(_) => "production.count",
            RuleConfig::State(_) => "production.state",
            RuleConfig::Measurement(_) => "quality.measurement",
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
    /// Patterns (`production.*`, `quality.measurement`, `*`), each matching a known type.
    pub routes: Vec<String>,
    /// Most events per delivery (>= 1).
    pub batch_size: usize,
    /// Most payload bytes per delivery; a single larger event is sent alone.
    pub max_batch_bytes: u64,
    /// What kind of sink.
    pub kind: SinkKind,
}

impl SinkConfig {
    /// Whether `event_type` is routed to this sink.
    pub fn accepts(&self, event_type: &str) -> bool {
        route_matches(SYSTEM_EVENT_TYPES, event_type)
            || self
                .routes
                .iter()
                .any(|route| route_matches(route, event_type))
    }
}

/// Whether a route pattern (`*` matches any run of characters) matches an event type.
pub fn route_matches(pattern: &str, event_type: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == event_type,
        Some((head, tail)) => {
            event_type.len() >= head.len()
                && event_type.starts_with(head)
                && route_matches_rest(tail, &event_type[head.len()..])
        }
    }
}

fn route_matches_rest(pattern: &str, text: &str) -> bool {
    if pattern.is_empty() {
        return true;
    }
    (0..=text.len()).any(|i| text.is_char_boundary(i) && route_matches(pattern, &text[i..]))
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
    /// First retry delay.
    pub retry_initial: Duration,
    /// Cap on retry delay (>= `retry_initial`).
    pub retry_max: Duration,
}

/// Where an https sink's credentials come from: never the config file itself.
#[derive(Debug, Clone)]
pub enum HttpAuth {
    /// Bearer token from this environment variable, read at start.
    BearerEnv(String),
    /// Bearer token from this file, read at start.
    BearerFile(PathBuf),
}
