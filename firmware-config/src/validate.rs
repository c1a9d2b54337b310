//! Semantic checks: everything serde cannot know. Collects every problem rather than stopping
//! at the first, and builds the typed model only when there is no error.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    ops::{Range, RangeInclusive},
    path::PathBuf,
    time::Duration,
};

use toml::Spanned;

use crate::{
    diagnostic::{Problem, closest},
    model::*,
    raw::*,
    units::ByteSize,
};

const DEFAULT_BUFFER_PATH: &str = "causeway-buffer.db";

/// The kind-specific fields each source kind takes. A new kind adds a line; a new field is
/// listed once in `RawSource::kind_fields` and in the rows of the kinds that take it.
const SOURCE_FIELDS: &[(&str, &[&str])] = &[(
    "modbus-tcp",
    &["address", "unit", "poll", "timeout", "max_gap", "tags"],
)];
/// The kind-specific fields each rule kind takes.
const RULE_FIELDS: &[(&str, &[&str])] = &[
    (
        "counter",
        &[
            "line", "total", "good", "reject", "order", "interval", "max_rate",
        ],
    ),
    ("state", &["line", "tag", "states", "reason"]),
    (
        "measurement",
        &[
            "characteristic",
            "tag",
            "trigger",
            "lsl",
            "nominal",
            "usl",
            "unit",
            "deadband",
        ],
    ),
];
/// The kind-specific fields each sink kind takes.
const SINK_FIELDS: &[(&str, &[&str])] = &[
    (
        "https",
        &[
            "url",
            "insecure",
            "timeout",
            "ca_file",
            "auth",
            "retry_initial",
            "retry_max",
        ],
    ),
    ("file", &["path"]),
    ("stdout", &[]),
];
const DEFAULT_MAX_BYTES: u64 = 512 << 20;
const MIN_MAX_BYTES: u64 = 1 << 20;
/// Nobody needs more on an edge box, and every size stays far from u64 overflow.
const MAX_SIZE: u64 = 1 << 40;
const DEFAULT_MAX_DEAD_BYTES: u64 = 64 << 20;
const DEFAULT_MAX_BATCH_BYTES: u64 = 1 << 20;
const DEFAULT_MAX_RATE: f64 = 1000.0;
const SECOND: Duration = Duration::from_secs(1);
const MINUTE: Duration = Duration::from_secs(60);
const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(86_400);
/// Modbus limits for one read request.
pub const MAX_READ_REGISTERS: u16 = 125;
/// Modbus limit for one coil or discrete-input read.
pub const MAX_READ_BITS: u16 = 2000;

/// Facts about a declared tag that rules need.
#[derive(Debug, Clone, Copy)]
struct TagFacts {
    data_type: DataType,
    scaled: bool,
}

#[derive(Default)]
struct Checker {
    problems: Vec<Problem>,
    tags: BTreeMap<String, TagFacts>,
    /// Declared but invalid: already reported, so rules naming them stay quiet.
    broken_tags: HashSet<String>,
}

/// Adds a hint to a problem already pushed.
trait Hint {
    fn hint(self, help: impl Into<String>);
}

impl Hint for &mut Problem {
    fn hint(self, help: impl Into<String>) {
        self.help = Some(help.into());
    }
}

fn span<T>(value: &Spanned<T>) -> Range<usize> {
    value.span()
}

fn is_name(text: &str) -> bool {
    !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// Checks `raw` and builds the typed model. Returns every problem found; the model is `None`
/// when any of them is an error.
pub(crate) fn validate(raw: RawConfig) -> (Option<GatewayConfig>, Vec<Problem>) {
    let mut c = Checker::default();

    let gateway_id = raw.gateway_id.get_ref().clone();
    if gateway_id.is_empty()
        || !gateway_id
            .chars()
            .all(|ch| ch.is_ascii_alphanumeric() || "-_.".contains(ch))
    {
        c.error(
            format!("`{gateway_id}` cannot be a gateway id"),
            span(&raw.gateway_id),
            "letters, digits, '-', '_' and '.' only",
        )
        .hint("it becomes part of every event's source URI, e.g. gateway_id = \"plant1-line3\"");
    }
    let shutdown_grace = c.duration(
        raw.shutdown_grace.as_ref(),
        Duration::from_secs(10),
        Duration::ZERO..=HOUR,
        "shutdown_grace",
    );

    let buffer = c.buffer(&raw.buffer);
    let sources: Vec<SourceConfig> = {
        let mut names = HashMap::new();
        raw.sources
            .iter()
            .filter_map(|s| c.source(s, &mut names))
            .collect()
    };
    let rules: Vec<RuleConfig> = {
        let mut names = HashMap::new();
        raw.rules
            .iter()
            .filter_map(|r| c.rule(r, &mut names))
            .collect()
    };
    let produced: HashSet<&'static str> = rules.iter().map(RuleConfig::event_type).collect();
    let sinks: Vec<SinkConfig> = {
        let mut names = HashMap::new();
        raw.sinks
            .iter()
            .filter_map(|s| c.sink(s, &mut names, &produced))
            .collect()
    };

    if raw.sinks.is_empty() {
        c.warning(
            "no [[sink]] is configured",
            span(&raw.gateway_id),
            "events will only be buffered",
        )
        .hint("add a [[sink]] with kind = \"https\", \"file\" or \"stdout\"");
    }
    if raw.rules.is_empty() && !raw.sources.is_empty() {
        c.warning(
            "no [[rule]] is configured",
            span(&raw.gateway_id),
            "tags are read but no event is made",
        )
        .hint("add a [[rule]] of kind \"counter\", \"state\" or \"measurement\"");
    }

    let ok = c.problems.iter().all(|p| !p.is_error());
    let config = ok.then(|| GatewayConfig {
        gateway_id,
        shutdown_grace,
        buffer: buffer.expect("buffer is built whenever there is no error"),
        sources,
        rules,
        sinks,
    });
    (config, c.problems)
}

impl Checker {
    fn error(
        &mut self,
        message: impl Into<String>,
        span: Range<usize>,
        label: impl Into<String>,
    ) -> &mut Problem {
        self.problems.push(Problem::error(message, span, label));
        self.problems.last_mut().expect("just pushed")
    }

    fn warning(
        &mut self,
        message: impl Into<String>,
        span: Range<usize>,
        label: impl Into<String>,
    ) -> &mut Problem {
        self.problems.push(Problem::warning(message, span, label));
        self.problems.last_mut().expect("just pushed")
    }

    fn unique(
        &mut self,
        what: &str,
        name: &Spanned<String>,
        seen: &mut HashMap<String, Range<usize>>,
    ) {
        if !is_name(name.get_ref()) {
            self.error(
                format!("`{}` cannot be a {what} name", name.get_ref()),
                span(name),
                "letters, digits, '-' and '_' only",
            );
        }
        if seen.contains_key(name.get_ref()) {
            self.error(
                format!("two {what}s are named `{}`", name.get_ref()),
                span(name),
                "second use",
            )
            .hint(format!("{what} names must be unique; rename one of them"));
        } else {
            seen.insert(name.get_ref().clone(), span(name));
        }
    }

    /// Reports fields set that `kind` does not take, by the section's table of kinds.
    fn foreign(
        &mut self,
        section: &str,
        kind: &str,
        set: &[crate::raw::SetField],
        table: &[(&str, &[&str])],
    ) {
        let takes = table
            .iter()
            .find(|(k, _)| *k == kind)
            .map_or(&[][..], |(_, fields)| *fields);
        for (field, at) in set {
            if takes.contains(field) {
                continue;
            }
            let owners: Vec<&str> = table
                .iter()
                .filter(|(_, fields)| fields.contains(field))
                .map(|(k, _)| *k)
                .collect();
            self.error(
                format!("`{field}` does not apply to a {kind} {section}"),
                at.clone(),
                "not used by this kind",
            )
            .hint(format!(
                "`{field}` belongs to a {} {section}; remove it, or check the {section}'s `kind`",
                owners.join(" or ")
            ));
        }
    }

    fn buffer(&mut self, raw: &RawBuffer) -> Option<BufferConfig> {
        let path = raw.path.as_ref().map_or_else(
            || PathBuf::from(DEFAULT_BUFFER_PATH),
            |p| PathBuf::from(p.get_ref()),
        );
        let max_bytes = self.size(
            raw.max_bytes.as_ref(),
            DEFAULT_MAX_BYTES,
            MIN_MAX_BYTES..=MAX_SIZE,
            "max_bytes",
        );
        if raw
            .max_bytes
            .as_ref()
            .is_some_and(|m| m.get_ref().0 < MIN_MAX_BYTES)
            && let Some(problem) = self.problems.last_mut()
        {
            problem.help = Some(
                "the buffer must hold events through an ERP outage; size it in MiB or GiB".into(),
            );
        }
        let max_dead_bytes = self.size(
            raw.max_dead_bytes.as_ref(),
            DEFAULT_MAX_DEAD_BYTES,
            (64 << 10)..=MAX_SIZE,
            "max_dead_bytes",
        );
        let max_age = raw
            .max_age
            .as_ref()
            .map(|_| self.duration(raw.max_age.as_ref(), DAY, MINUTE..=3650 * DAY, "max_age"));
        let when_full = match &raw.when_full {
            None => WhenFull::DropOldest,
            Some(w) => {
                let all = [
                    WhenFull::DropOldest,
                    WhenFull::DropNewest,
                    WhenFull::BlockSources,
                ];
                match all.into_iter().find(|p| p.as_str() == w.get_ref()) {
                    Some(policy) => policy,
                    None => {
                        let names = all.map(WhenFull::as_str);
                        let hint = closest(w.get_ref(), names).map_or_else(
                            || format!("policies: {}", names.join(", ")),
                            |n| format!("did you mean \"{n}\"? Policies: {}", names.join(", ")),
                        );
                        self.error(
                            format!("unknown when_full policy `{}`", w.get_ref()),
                            span(w),
                            "unknown policy",
                        )
                        .hint(hint);
                        WhenFull::DropOldest
                    }
                }
            }
        };
        let max_batch = raw.max_batch.as_ref().map_or(512, |m| *m.get_ref());
        if let Some(m) = &raw.max_batch
            && !(1..=100_000).contains(&max_batch)
        {
            self.error(
                format!("max_batch = {max_batch} is out of range"),
                span(m),
                "expected 1..=100000",
            );
        }
        Some(BufferConfig {
            path,
            max_bytes,
            max_dead_bytes,
            max_age,
            when_full,
            max_batch: max_batch as usize,
        })
    }

    fn source(
        &mut self,
        raw: &RawSource,
        names: &mut HashMap<String, Range<usize>>,
    ) -> Option<SourceConfig> {
        self.unique("source", &raw.name, names);
        match raw.kind.get_ref().as_str() {
            "modbus-tcp" => {
                self.foreign("source", "modbus-tcp", &raw.kind_fields(), SOURCE_FIELDS);
                self.modbus_tcp(raw).map(SourceConfig::ModbusTcp)
            }
            other => {
                let hint = match closest(other, ["modbus-tcp"]) {
                    Some(near) => {
                        format!("did you mean \"{near}\"? Supported source kinds: modbus-tcp")
                    }
                    None => "supported source kinds: modbus-tcp".to_owned(),
                };
                self.error(
                    format!("unknown source kind `{other}`"),
                    span(&raw.kind),
                    "unknown kind",
                )
                .hint(hint);
                None
            }
        }
    }

    fn modbus_tcp(&mut self, raw: &RawSource) -> Option<ModbusTcpConfig> {
        let source = raw.name.get_ref().clone();
        let address = match &raw.address {
            None => {
                self.error(
                    format!("modbus-tcp source `{source}` has no address"),
                    span(&raw.name),
                    "this source",
                )
                .hint("add address = \"192.168.10.20:502\"");
                String::new()
            }
            Some(a) => {
                let text = a.get_ref();
                let valid = text.rsplit_once(':').is_some_and(|(host, port)| {
                    !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0)
                });
                if !valid {
                    self.error(
                        format!("`{text}` is not a host:port address"),
                        span(a),
                        "expected host:port",
                    )
                    .hint(
                        "Modbus TCP servers usually listen on port 502, e.g. \"192.168.10.20:502\"",
                    );
                }
                text.clone()
            }
        };
        let unit = match &raw.unit {
            None => 1,
            Some(u) => u8::try_from(*u.get_ref()).unwrap_or_else(|_| {
                self.error(format!("unit {} is out of range", u.get_ref()), span(u), "expected 0..=255")
                    .hint("the unit id is the Modbus slave address; TCP devices usually answer to 1 or 255");
                0
            }),
        };
        let poll = self.duration(
            raw.poll.as_ref(),
            SECOND,
            Duration::from_millis(10)..=HOUR,
            "poll",
        );
        let timeout = self.duration(
            raw.timeout.as_ref(),
            SECOND,
            Duration::from_millis(10)..=5 * MINUTE,
            "timeout",
        );
        let max_gap = match &raw.max_gap {
            None => 8,
            Some(g) => u16::try_from(*g.get_ref())
                .ok()
                .filter(|g| *g < MAX_READ_REGISTERS)
                .unwrap_or_else(|| {
                    self.error(
                        format!("max_gap = {} is out of range", g.get_ref()),
                        span(g),
                        "expected 0..=124",
                    );
                    0
                }),
        };
        if raw.tags.is_empty() {
            self.warning(
                format!("source `{source}` has no tags"),
                span(&raw.name),
                "reads nothing",
            )
            .hint(
                "add tags = [ { name = \"parts\", register = \"holding:100\", type = \"u32\" } ]",
            );
        }
        let mut names = HashMap::new();
        let mut tags = Vec::new();
        let mut placed: Vec<(ModbusTagConfig, Range<usize>)> = Vec::new();
        for tag in &raw.tags {
            self.unique("tag", &tag.name, &mut names);
            if let Some(built) = self.modbus_tag(tag) {
                for (other, _) in &placed {
                    if overlaps(other, &built) {
                        let end = u32::from(other.address) + u32::from(other.data_type.width()) - 1;
                        self.error(
                            format!("tag `{}` overlaps tag `{}`", built.name, other.name),
                            span(&tag.register),
                            format!("`{}` already uses {}:{}..={}", other.name, other.kind, other.address, end),
                        )
                        .hint("each register may belong to one tag (several tags may take different bits of one register)");
                    }
                }
                let facts = TagFacts {
                    data_type: built.data_type,
                    scaled: built.scale.is_some() || built.offset.is_some(),
                };
                self.tags.insert(format!("{source}.{}", built.name), facts);
                placed.push((built.clone(), span(&tag.register)));
                tags.push(built);
            } else {
                self.broken_tags
                    .insert(format!("{source}.{}", tag.name.get_ref()));
            }
        }
        Some(ModbusTcpConfig {
            name: source,
            address,
            unit,
            poll,
            timeout,
            max_gap,
            tags,
        })
    }

    /// A duration within `bounds`; `default` when absent (or wrong, after reporting it).
    fn duration(
        &mut self,
        value: Option<&Spanned<crate::units::HumanDuration>>,
        default: Duration,
        bounds: RangeInclusive<Duration>,
        field: &str,
    ) -> Duration {
        let Some(v) = value else { return default };
        let d = v.get_ref().0;
        let show = |d: Duration| humantime::format_duration(d).to_string();
        if d < *bounds.start() {
            self.error(
                format!("{field} = \"{}\" is too short", v.get_ref()),
                span(v),
                format!("at least {}", show(*bounds.start())),
            );
            default
        } else if d > *bounds.end() {
            self.error(
                format!("{field} = \"{}\" is too long", v.get_ref()),
                span(v),
                format!("at most {}", show(*bounds.end())),
            )
            .hint(format!(
                "{field} must lie between {} and {}",
                show(*bounds.start()),
                show(*bounds.end())
            ));
            default
        } else {
            d
        }
    }

    /// A byte size within `bounds`; `default` when absent (or wrong, after reporting it).
    fn size(
        &mut self,
        value: Option<&Spanned<ByteSize>>,
        default: u64,
        bounds: RangeInclusive<u64>,
        field: &str,
    ) -> u64 {
        let Some(v) = value else { return default };
        let n = v.get_ref().0;
        if bounds.contains(&n) {
            return n;
        }
        let (lo, hi) = (ByteSize(*bounds.start()), ByteSize(*bounds.end()));
        let message = if n < lo.0 {
            format!("{field} = {} is too small", v.get_ref())
        } else {
            format!("{field} = {} is too large", v.get_ref())
        };
        self.error(message, span(v), format!("expected {lo} ..= {hi}"));
        default
    }

    fn modbus_tag(&mut self, raw: &RawTag) -> Option<ModbusTagConfig> {
        let name = raw.name.get_ref().clone();
        let Some((kind_text, address_text)) = raw.register.get_ref().split_once(':') else {
            self.error(
                format!("`{}` is not a register", raw.register.get_ref()),
                span(&raw.register),
                "expected <kind>:<address>",
            )
            .hint("write it like \"holding:100\"; kinds are coil, discrete, input and holding");
            return None;
        };
        let kind = match kind_text.trim() {
            "coil" => RegisterKind::Coil,
            "discrete" => RegisterKind::Discrete,
            "input" => RegisterKind::Input,
            "holding" => RegisterKind::Holding,
            other => {
                let hint = closest(other, ["coil", "discrete", "input", "holding"]).map_or_else(
                    || "kinds are coil, discrete, input and holding".to_owned(),
                    |n| format!("did you mean \"{n}:{address_text}\"?"),
                );
                self.error(
                    format!("unknown register kind `{other}`"),
                    span(&raw.register),
                    "unknown kind",
                )
                .hint(hint);
                return None;
            }
        };
        let Ok(address) = address_text.trim().parse::<u16>() else {
            self.error(
                format!("register address `{address_text}` is out of range"),
                span(&raw.register),
                "expected 0..=65535",
            )
            .hint(
                "addresses are 0-based as on the wire: register 40001 in PLC notation is holding:0",
            );
            return None;
        };
        let type_name = raw.data_type.as_ref().map(|t| t.get_ref().as_str());
        let type_span = raw
            .data_type
            .as_ref()
            .map_or_else(|| span(&raw.register), span);
        let data_type = match (type_name, kind.is_bit()) {
            (None, true) | (Some("bool"), true) => DataType::Bool,
            (None, false) => DataType::U16,
            (Some("bool"), false) => match &raw.bit {
                Some(bit) => match u8::try_from(*bit.get_ref()).ok().filter(|b| *b < 16) {
                    Some(b) => DataType::Bit(b),
                    None => {
                        self.error(
                            format!("bit {} does not exist", bit.get_ref()),
                            span(bit),
                            "expected 0..=15",
                        );
                        return None;
                    }
                },
                None => {
                    self.error(format!("tag `{name}`: a {kind} register holds 16 bits"), type_span, "which bit?")
                        .hint("add bit = 0 (least significant) ..= 15, or read a coil/discrete input instead");
                    return None;
                }
            },
            (Some(other), true) => {
                self.error(
                    format!("tag `{name}`: a {kind} holds one bit, not a `{other}`"),
                    type_span,
                    "needs 16-bit registers",
                )
                .hint("use type = \"bool\", or register = \"holding:N\" / \"input:N\" for numbers");
                return None;
            }
            (Some(other), false) => match parse_numeric_type(other) {
                Some(t) => t,
                None if other == "string" => match &raw.length {
                    Some(l) => match u16::try_from(*l.get_ref())
                        .ok()
                        .filter(|n| (1..=MAX_READ_REGISTERS).contains(n))
                    {
                        Some(n) => DataType::String(n),
                        None => {
                            self.error(
                                format!("a string of {} registers cannot be read", l.get_ref()),
                                span(l),
                                "expected 1..=125",
                            );
                            return None;
                        }
                    },
                    None => {
                        self.error(
                            format!("tag `{name}`: a string needs its length"),
                            type_span,
                            "how many registers?",
                        )
                        .hint("add length = N, the number of registers (two characters each)");
                        return None;
                    }
                },
                None => {
                    let all = [
                        "bool", "u16", "i16", "u32", "i32", "u64", "i64", "f32", "f64", "string",
                    ];
                    let hint = closest(other, all).map_or_else(
                        || format!("types are {}", all.join(", ")),
                        |n| format!("did you mean \"{n}\"? Types are {}", all.join(", ")),
                    );
                    self.error(format!("unknown type `{other}`"), type_span, "unknown type")
                        .hint(hint);
                    return None;
                }
            },
        };
        if let (Some(bit), false) = (&raw.bit, matches!(data_type, DataType::Bit(_))) {
            self.error(
                "`bit` only applies to type = \"bool\" on an input or holding register",
                span(bit),
                "not used",
            );
        }
        if let (Some(length), false) = (&raw.length, matches!(data_type, DataType::String(_))) {
            self.error(
                "`length` only applies to type = \"string\"",
                span(length),
                "not used",
            );
        }
        let numeric = !data_type.is_bool() && !matches!(data_type, DataType::String(_));
        for (field, value) in [("scale", &raw.scale), ("offset", &raw.offset)] {
            if let Some(v) = value {
                if !numeric {
                    self.error(
                        format!("`{field}` only applies to numeric types"),
                        span(v),
                        "not a number",
                    );
                } else if !v.get_ref().is_finite() || (field == "scale" && *v.get_ref() == 0.0) {
                    self.error(
                        format!("{field} = {} is not usable", v.get_ref()),
                        span(v),
                        "expected a finite, non-zero number",
                    );
                }
            }
        }
        let order = match &raw.order {
            None => WordOrder::Abcd,
            Some(o) => match o.get_ref().to_ascii_uppercase().as_str() {
                "ABCD" => WordOrder::Abcd,
                "CDAB" => WordOrder::Cdab,
                "BADC" => WordOrder::Badc,
                "DCBA" => WordOrder::Dcba,
                other => {
                    self.error(format!("unknown order `{other}`"), span(o), "expected ABCD, CDAB, BADC or DCBA")
                        .hint("ABCD is big-endian (the Modbus default); CDAB swaps words, as many PLCs store 32-bit values");
                    WordOrder::Abcd
                }
            },
        };
        let width = data_type.width();
        if u32::from(address) + u32::from(width) > 65_536 {
            self.error(
                format!("tag `{name}` runs past the last register"),
                span(&raw.register),
                format!("{width} registers from {address} end beyond 65535"),
            );
            return None;
        }
        Some(ModbusTagConfig {
            name,
            kind,
            address,
            data_type,
            order,
            scale: raw.scale.as_ref().map(|s| *s.get_ref()),
            offset: raw.offset.as_ref().map(|s| *s.get_ref()),
        })
    }

    /// Resolves `<source>.<tag>`.
    fn tag(&mut self, field: &str, value: &Spanned<String>) -> Option<(TagRef, TagFacts)> {
        let text = value.get_ref();
        if let Some(facts) = self.tags.get(text) {
            return Some((TagRef(text.clone()), *facts));
        }
        if self.broken_tags.contains(text) {
            return None;
        }
        let known: Vec<String> = self.tags.keys().cloned().collect();
        let problem = if text.contains('.') {
            self.error(
                format!("`{field}` names unknown tag `{text}`"),
                span(value),
                "no such tag",
            )
        } else {
            self.error(
                format!("`{field}` must name a tag as <source>.<tag>"),
                span(value),
                "no source given",
            )
        };
        let help = match closest(text, known.iter().map(String::as_str)) {
            Some(near) => format!("did you mean \"{near}\"?"),
            None if known.is_empty() => "declare the tag in a [[source]]'s tags first".to_owned(),
            None => format!("known tags: {}", known.join(", ")),
        };
        problem.help = Some(help);
        None
    }

    fn rule(
        &mut self,
        raw: &RawRule,
        names: &mut HashMap<String, Range<usize>>,
    ) -> Option<RuleConfig> {
        let kind = raw.kind.get_ref().as_str();
        if RULE_FIELDS.iter().any(|(k, _)| *k == kind) {
            self.foreign("rule", kind, &raw.kind_fields(), RULE_FIELDS);
        }
        let built = match kind {
            "counter" => self.counter(raw).map(RuleConfig::Counter),
            "state" => self.state(raw).map(RuleConfig::State),
            "measurement" => self.measurement(raw).map(RuleConfig::Measurement),
            other => {
                let hint = match closest(other, ["counter", "state", "measurement"]) {
                    Some(near) => {
                        format!("did you mean \"{near}\"? Rule kinds: counter, state, measurement")
                    }
                    None => "rule kinds: counter, state, measurement".to_owned(),
                };
                self.error(
                    format!("unknown rule kind `{other}`"),
                    span(&raw.kind),
                    "unknown kind",
                )
                .hint(hint);
                return None;
            }
        }?;
        let at = raw.name.as_ref().map_or_else(|| span(&raw.kind), span);
        if let Some(name) = &raw.name
            && !is_name(name.get_ref())
        {
            self.error(
                format!("`{}` cannot be a rule name", name.get_ref()),
                span(name),
                "letters, digits, '-' and '_' only",
            );
        }
        if names.insert(built.name().to_owned(), at.clone()).is_some() {
            self.error(format!("two rules are named `{}`", built.name()), at, "second use")
                .hint("give one of them a distinct `name = \"...\"`: rule names key the rule's saved state");
        }
        Some(built)
    }

    /// The machine named, or the source of the rule's main tag.
    fn machine(&mut self, raw: &RawRule, main_tag: &TagRef) -> String {
        match &raw.machine {
            Some(m) if is_name(m.get_ref()) => m.get_ref().clone(),
            Some(m) => {
                self.error(
                    format!("`{}` cannot be a machine name", m.get_ref()),
                    span(m),
                    "letters, digits, '-' and '_' only",
                )
                .hint("the machine becomes part of each event's source URI");
                String::new()
            }
            None => main_tag.0.split('.').next().unwrap_or_default().to_owned(),
        }
    }

    fn counter_input(
        &mut self,
        field: &str,
        value: &Option<Spanned<String>>,
    ) -> Option<CounterInput> {
        let value = value.as_ref()?;
        let (tag, facts) = self.tag(field, value)?;
        match facts.data_type.counter_bits() {
            Some(bits) if !facts.scaled => Some(CounterInput { tag, bits }),
            Some(_) => {
                self.error(format!("counter tag `{tag}` is scaled"), span(value), "raw counts needed")
                    .hint("remove scale/offset from the tag: rollover is detected on the raw register value");
                None
            }
            None => {
                self.error(format!("counter tag `{tag}` is not an unsigned integer"), span(value), "expected u16, u32 or u64")
                    .hint("declare the tag with type = \"u16\", \"u32\" or \"u64\": the width sets where the counter rolls over");
                None
            }
        }
    }

    fn counter(&mut self, raw: &RawRule) -> Option<CounterRuleConfig> {
        let total = self.counter_input("total", &raw.total);
        let good = self.counter_input("good", &raw.good);
        let reject = self.counter_input("reject", &raw.reject);
        let given = [&raw.total, &raw.good, &raw.reject]
            .iter()
            .filter(|v| v.is_some())
            .count();
        if raw.total.is_none() && raw.good.is_none() {
            self.error(
                "a counter rule needs `total` or `good`",
                span(&raw.kind),
                "no counter tag",
            )
            .hint("add total = \"<source>.<tag>\" with the PLC's running part count");
            return None;
        }
        if given == 3 {
            self.error(
                "a counter rule takes two of `total`, `good` and `reject`",
                raw.reject.as_ref().map_or_else(|| span(&raw.kind), span),
                "one too many",
            )
            .hint("the third is computed from the other two");
        }
        let order = match &raw.order {
            Some(o) => Some(self.tag("order", o)?.0),
            None => None,
        };
        let interval = self.duration(
            raw.interval.as_ref(),
            Duration::from_secs(10),
            Duration::from_millis(100)..=DAY,
            "interval",
        );
        let max_rate = match &raw.max_rate {
            None => DEFAULT_MAX_RATE,
            Some(r) if r.get_ref().is_finite() && (0.001..=1_000_000.0).contains(r.get_ref()) => {
                *r.get_ref()
            }
            Some(r) => {
                self.error(
                    format!("max_rate = {} is out of range", r.get_ref()),
                    span(r),
                    "expected 0.001 ..= 1000000 parts per second",
                )
                .hint("the most parts per second the machine can make; a little above its fastest rate");
                DEFAULT_MAX_RATE
            }
        };
        let main = total.as_ref().or(good.as_ref())?.tag.clone();
        let machine = self.machine(raw, &main);
        let name = raw
            .name
            .as_ref()
            .map_or_else(|| format!("counter-{machine}"), |n| n.get_ref().clone());
        if (raw.total.is_some() && total.is_none())
            || (raw.good.is_some() && good.is_none())
            || (raw.reject.is_some() && reject.is_none())
        {
            return None;
        }
        Some(CounterRuleConfig {
            name,
            machine,
            line: raw.line.as_ref().map(|l| l.get_ref().clone()),
            total,
            good,
            reject,
            order,
            interval,
            max_rate,
        })
    }

    fn state(&mut self, raw: &RawRule) -> Option<StateRuleConfig> {
        let Some(tag_field) = &raw.tag else {
            self.error("a state rule needs `tag`", span(&raw.kind), "no tag")
                .hint("add tag = \"<source>.<tag>\" with the PLC's state code");
            return None;
        };
        let (tag, facts) = self.tag("tag", tag_field)?;
        if !(facts.data_type.is_integer() || facts.data_type.is_bool()) || facts.scaled {
            self.error(
                format!("state tag `{tag}` is not an unscaled integer or bool"),
                span(tag_field),
                "state codes are integers",
            )
            .hint("declare it with type = \"u16\" (or another integer type) and no scale");
        }
        let mut states = BTreeMap::new();
        match &raw.states {
            None => {
                self.error(
                    "a state rule needs `states`",
                    span(&raw.kind),
                    "no state names",
                )
                .hint("add states = { 0 = \"idle\", 1 = \"running\", 2 = \"down\" }");
            }
            Some(map) => {
                for (key, value) in map.get_ref() {
                    match key.trim().parse::<i64>() {
                        Ok(code) => {
                            states.insert(code, value.get_ref().clone());
                        }
                        Err(_) => {
                            self.error(
                                format!("state code `{key}` is not an integer"),
                                span(map),
                                "keys are the PLC's values",
                            )
                            .hint("write states = { 0 = \"idle\", 1 = \"running\" }");
                        }
                    }
                    if value.get_ref().trim().is_empty() {
                        self.error("a state name is empty", span(value), "name this state");
                    }
                }
                if map.get_ref().is_empty() {
                    self.error("`states` is empty", span(map), "no state names");
                }
            }
        }
        let reason = match &raw.reason {
            Some(r) => Some(self.tag("reason", r)?.0),
            None => None,
        };
        let machine = self.machine(raw, &tag);
        let name = raw
            .name
            .as_ref()
            .map_or_else(|| format!("state-{machine}"), |n| n.get_ref().clone());
        Some(StateRuleConfig {
            name,
            machine,
            line: raw.line.as_ref().map(|l| l.get_ref().clone()),
            tag,
            states,
            reason,
        })
    }

    fn measurement(&mut self, raw: &RawRule) -> Option<MeasurementRuleConfig> {
        let Some(characteristic) = &raw.characteristic else {
            self.error(
                "a measurement rule needs `characteristic`",
                span(&raw.kind),
                "unnamed characteristic",
            )
            .hint("add characteristic = \"press-force\", the name the QMS knows it by");
            return None;
        };
        let Some(tag_field) = &raw.tag else {
            self.error("a measurement rule needs `tag`", span(&raw.kind), "no tag")
                .hint("add tag = \"<source>.<tag>\" with the measured value");
            return None;
        };
        let (tag, facts) = self.tag("tag", tag_field)?;
        if facts.data_type.is_bool() || matches!(facts.data_type, DataType::String(_)) {
            self.error(
                format!("measurement tag `{tag}` is not numeric"),
                span(tag_field),
                "expected a number",
            );
        }
        let trigger = match &raw.trigger {
            Some(t) => {
                let (trigger, facts) = self.tag("trigger", t)?;
                if !facts.data_type.is_bool() {
                    self.error(format!("trigger tag `{trigger}` is not a bool"), span(t), "sampled on a rising edge")
                        .hint("point trigger at a coil, a discrete input or one bit of a register (type = \"bool\", bit = N)");
                }
                Some(trigger)
            }
            None => None,
        };
        let get = |v: &Option<Spanned<f64>>| v.as_ref().map(|s| *s.get_ref());
        let (lsl, nominal, usl) = (get(&raw.lsl), get(&raw.nominal), get(&raw.usl));
        if lsl.is_none() && usl.is_none() {
            self.error(
                "a measurement rule needs `lsl`, `usl` or both",
                span(characteristic),
                "no specification limits",
            )
            .hint("add lsl = <lower limit> and/or usl = <upper limit>");
        }
        for v in [&raw.lsl, &raw.nominal, &raw.usl].into_iter().flatten() {
            if !v.get_ref().is_finite() {
                self.error("a limit must be a finite number", span(v), "not finite");
            }
        }
        if let (Some(l), Some(u), Some(usl_field)) = (lsl, usl, &raw.usl)
            && l >= u
        {
            self.error(
                format!("usl {u} is not above lsl {l}"),
                span(usl_field),
                "limits are reversed or equal",
            );
        }
        if let (Some(n), Some(field)) = (nominal, &raw.nominal)
            && (lsl.is_some_and(|l| n < l) || usl.is_some_and(|u| n > u))
        {
            self.error(
                format!("nominal {n} lies outside the specification limits"),
                span(field),
                "outside lsl..usl",
            );
        }
        let deadband = raw
            .deadband
            .as_ref()
            .and_then(|d| self.deadband(d, &raw.trigger));
        let machine = self.machine(raw, &tag);
        let name = raw.name.as_ref().map_or_else(
            || format!("measurement-{}", characteristic.get_ref()),
            |n| n.get_ref().clone(),
        );
        Some(MeasurementRuleConfig {
            name,
            characteristic: characteristic.get_ref().clone(),
            machine,
            tag,
            trigger,
            lsl,
            nominal,
            usl,
            unit: raw.unit.as_ref().map(|u| u.get_ref().clone()),
            deadband,
        })
    }

    fn deadband(
        &mut self,
        raw: &Spanned<RawDeadband>,
        trigger: &Option<Spanned<String>>,
    ) -> Option<Deadband> {
        if let Some(t) = trigger {
            self.error("`deadband` does not apply with a `trigger`", span(raw), "not used")
                .hint(format!(
                    "a triggered measurement reports every part (trigger = \"{}\"); remove the deadband",
                    t.get_ref()
                ));
            return None;
        }
        let parsed = match raw.get_ref() {
            RawDeadband::Absolute(d) => Some(Deadband::Absolute(*d)),
            RawDeadband::Text(text) => text
                .trim()
                .strip_suffix('%')
                .and_then(|n| n.trim().parse::<f64>().ok())
                .map(Deadband::Percent),
        };
        match parsed {
            Some(Deadband::Absolute(d)) if d.is_finite() && d > 0.0 => Some(Deadband::Absolute(d)),
            Some(Deadband::Percent(p)) if p.is_finite() && p > 0.0 && p <= 100.0 => {
                Some(Deadband::Percent(p))
            }
            _ => {
                self.error("this deadband is not usable", span(raw), "expected a number > 0 or \"<n>%\"")
                    .hint("write deadband = 0.5 (in the tag's unit) or deadband = \"2%\" (of the last reported value, 0 < n <= 100)");
                None
            }
        }
    }

    fn sink(
        &mut self,
        raw: &RawSink,
        names: &mut HashMap<String, Range<usize>>,
        produced: &HashSet<&'static str>,
    ) -> Option<SinkConfig> {
        self.unique("sink", &raw.name, names);
        let name = raw.name.get_ref().clone();
        let routes = self.routes(raw, produced);
        let batch_size = match &raw.batch_size {
            None => 100,
            Some(b) => usize::try_from(*b.get_ref())
                .ok()
                .filter(|b| (1..=10_000).contains(b))
                .unwrap_or_else(|| {
                    self.error(
                        format!("batch_size = {} is out of range", b.get_ref()),
                        span(b),
                        "expected 1..=10000",
                    );
                    1
                }),
        };
        let max_batch_bytes = self.size(
            raw.max_batch_bytes.as_ref(),
            DEFAULT_MAX_BATCH_BYTES,
            (4 << 10)..=(64 << 20),
            "max_batch_bytes",
        );
        let kind_name = raw.kind.get_ref().as_str();
        if SINK_FIELDS.iter().any(|(k, _)| *k == kind_name) {
            self.foreign("sink", kind_name, &raw.kind_fields(), SINK_FIELDS);
        }
        let kind = match kind_name {
            "https" => SinkKind::Https(self.https(raw)?),
            "file" => {
                let Some(path) = &raw.path else {
                    self.error(
                        format!("file sink `{name}` has no path"),
                        span(&raw.name),
                        "this sink",
                    )
                    .hint("add path = \"/var/log/causeway/events.jsonl\"");
                    return None;
                };
                SinkKind::File {
                    path: PathBuf::from(path.get_ref()),
                }
            }
            "stdout" => SinkKind::Stdout,
            other => {
                let hint = match closest(other, ["https", "file", "stdout"]) {
                    Some(near) => {
                        format!("did you mean \"{near}\"? Sink kinds: https, file, stdout")
                    }
                    None => "sink kinds: https, file, stdout".to_owned(),
                };
                self.error(
                    format!("unknown sink kind `{other}`"),
                    span(&raw.kind),
                    "unknown kind",
                )
                .hint(hint);
                return None;
            }
        };
        Some(SinkConfig {
            name,
            routes,
            batch_size,
            max_batch_bytes,
            kind,
        })
    }

    fn routes(&mut self, raw: &RawSink, produced: &HashSet<&'static str>) -> Vec<String> {
        let Some(routes) = &raw.routes else {
            self.error(
                format!("sink `{}` has no routes", raw.name.get_ref()),
                span(&raw.name),
                "receives nothing",
            )
            .hint("add routes = [\"production.*\"] (or \"*\" for every event type)");
            return Vec::new();
        };
        if routes.get_ref().is_empty() {
            self.error(
                format!("sink `{}` has empty routes", raw.name.get_ref()),
                span(routes),
                "receives nothing",
            )
            .hint("add an event-type pattern such as \"production.*\" or \"quality.measurement\"");
        }
        let mut out = Vec::new();
        for route in routes.get_ref() {
            let pattern = route.get_ref();
            if !EVENT_TYPES.iter().any(|t| route_matches(pattern, t)) {
                let families = ["production.*", "quality.*", "telemetry.*"];
                // Gateway events reach every sink without a route: not offered as a choice.
                let routable: Vec<&str> = EVENT_TYPES
                    .iter()
                    .copied()
                    .filter(|t| !route_matches(SYSTEM_EVENT_TYPES, t))
                    .collect();
                let hint = match closest(pattern, routable.iter().copied().chain(families)) {
                    Some(near) => format!(
                        "did you mean \"{near}\"? Event types: {}",
                        routable.join(", ")
                    ),
                    None => format!("event types: {}", routable.join(", ")),
                };
                self.error(
                    format!("route `{pattern}` matches no event type"),
                    span(route),
                    "matches nothing",
                )
                .hint(hint);
            }
            out.push(pattern.clone());
        }
        let routed_and_made = produced
            .iter()
            .any(|t| out.iter().any(|r| route_matches(r, t)));
        if !out.is_empty() && !routed_and_made && !produced.is_empty() {
            let mut made: Vec<&str> = produced.iter().copied().collect();
            made.sort_unstable();
            self.warning(
                format!(
                    "no rule makes an event routed to sink `{}`",
                    raw.name.get_ref()
                ),
                span(routes),
                "nothing will arrive",
            )
            .hint(format!("the rules make {}", made.join(", ")));
        }
        out
    }

    fn https(&mut self, raw: &RawSink) -> Option<HttpsSinkConfig> {
        let name = raw.name.get_ref();
        let Some(url) = &raw.url else {
            self.error(
                format!("https sink `{name}` has no url"),
                span(&raw.name),
                "this sink",
            )
            .hint("add url = \"https://erp.example.com/api/events\"");
            return None;
        };
        let text = url.get_ref().trim();
        let insecure = raw.insecure.as_ref().is_some_and(|i| *i.get_ref());
        match url::Url::parse(text) {
            Err(error) => {
                self.error(
                    format!("`{text}` is not a valid URL ({error})"),
                    span(url),
                    "expected https://host[:port]/path",
                )
                .hint("a port lies in 1..=65535; write it like \"https://erp.example.com:8443/api/events\"");
            }
            Ok(parsed) => {
                match parsed.scheme() {
                    "https" => {}
                    "http" if insecure => {}
                    "http" => {
                        self.error(format!("sink `{name}` would send events unencrypted"), span(url), "plain http://")
                            .hint("use an https:// URL; only on a network you trust, set insecure = true to allow http://");
                    }
                    other => {
                        self.error(
                            format!("`{text}` is not an http(s) URL (scheme `{other}`)"),
                            span(url),
                            "expected https://host/path",
                        );
                    }
                }
                if parsed.password().is_some() {
                    self.error("a password is written inline in the URL", span(url), "secret in the config file")
                        .hint("remove it from the URL; use auth = { bearer_file = \"/etc/causeway/erp.token\" } or bearer_env");
                }
                if parsed.host_str().is_none_or(str::is_empty) {
                    self.error(
                        format!("`{text}` has no host"),
                        span(url),
                        "expected https://host/path",
                    );
                }
                if parsed.port() == Some(0) {
                    self.error(
                        format!("`{text}` names port 0"),
                        span(url),
                        "expected a port in 1..=65535",
                    );
                }
            }
        }
        let auth = raw.auth.as_ref().and_then(|a| self.auth(a));
        let timeout = self.duration(
            raw.timeout.as_ref(),
            Duration::from_secs(10),
            Duration::from_millis(100)..=5 * MINUTE,
            "timeout",
        );
        let retry_initial = self.duration(
            raw.retry_initial.as_ref(),
            Duration::from_millis(500),
            Duration::from_millis(10)..=HOUR,
            "retry_initial",
        );
        let retry_max = self.duration(
            raw.retry_max.as_ref(),
            Duration::from_secs(30),
            Duration::from_millis(10)..=HOUR,
            "retry_max",
        );
        if retry_max < retry_initial {
            let at = raw.retry_max.as_ref().map_or_else(|| span(&raw.name), span);
            self.error(
                "retry_max is shorter than retry_initial",
                at,
                "the cap is below the first delay",
            );
        }
        Some(HttpsSinkConfig {
            url: text.to_owned(),
            insecure,
            timeout,
            ca_file: raw.ca_file.as_ref().map(|c| PathBuf::from(c.get_ref())),
            auth,
            retry_initial,
            retry_max,
        })
    }

    fn auth(&mut self, raw: &Spanned<RawAuth>) -> Option<HttpAuth> {
        let auth = raw.get_ref();
        for (field, value) in [
            ("bearer", &auth.bearer),
            ("token", &auth.token),
            ("password", &auth.password),
        ] {
            if let Some(v) = value {
                self.error(format!("a secret is written inline in `{field}`"), span(v), "secret in the config file")
                    .hint("config files get copied, committed and mailed: put the token in a file (bearer_file = \"/etc/causeway/erp.token\") or an environment variable (bearer_env = \"ERP_TOKEN\")");
            }
        }
        match (&auth.bearer_env, &auth.bearer_file) {
            (Some(env), None) => Some(HttpAuth::BearerEnv(env.get_ref().clone())),
            (None, Some(file)) => Some(HttpAuth::BearerFile(PathBuf::from(file.get_ref()))),
            (Some(_), Some(file)) => {
                self.error(
                    "`bearer_env` and `bearer_file` are both set",
                    span(file),
                    "choose one",
                );
                None
            }
            (None, None) => {
                if auth.bearer.is_none() && auth.token.is_none() && auth.password.is_none() {
                    self.error("`auth` names no credential", span(raw), "empty")
                        .hint("use auth = { bearer_env = \"ERP_TOKEN\" } or auth = { bearer_file = \"/path\" }");
                }
                None
            }
        }
    }
}

fn parse_numeric_type(name: &str) -> Option<DataType> {
    Some(match name {
        "u16" => DataType::U16,
        "i16" => DataType::I16,
        "u32" => DataType::U32,
        "i32" => DataType::I32,
        "u64" => DataType::U64,
        "i64" => DataType::I64,
        "f32" => DataType::F32,
        "f64" => DataType::F64,
        _ => return None,
    })
}

fn overlaps(a: &ModbusTagConfig, b: &ModbusTagConfig) -> bool {
    if a.kind != b.kind {
        return false;
    }
    if let (DataType::Bit(x), DataType::Bit(y)) = (a.data_type, b.data_type) {
        return a.address == b.address && x == y;
    }
    let (a0, a1) = (
        u32::from(a.address),
        u32::from(a.address) + u32::from(a.data_type.width()),
    );
    let (b0, b1) = (
        u32::from(b.address),
        u32::from(b.address) + u32::from(b.data_type.width()),
    );
    a0 < b1 && b0 < a1
}
