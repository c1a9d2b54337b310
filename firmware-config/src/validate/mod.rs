//! Semantic checks: everything serde cannot know. Collects every problem rather than stopping
//! at the first, and builds the typed model only when there is no error.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    ops::{Range, RangeInclusive},
    path::PathBuf,
    time::Duration,
};

use toml::Spanned;

mod rules;
mod sinks;
mod sources;

use crate::{
    diagnostic::{Problem, closest},
    model::*,
    raw::*,
    units::ByteSize,
};

const DEFAULT_BUFFER_PATH: &str = "causeway-buffer.db";

/// The kind-specific fields each source kind takes. A new kind adds a line; a new field is
/// listed once in `RawSource::kind_fields` and in the rows of the kinds that take it.
const SOURCE_FIELDS: &[(&str, &[&str])] = &[
    (
        "modbus-tcp",
        &["address", "unit", "poll", "timeout", "max_gap", "tags"],
    ),
    (
        "opcua",
        &[
            "endpoint",
            "security_policy",
            "security_mode",
            "username",
            "password_file",
            "password_env",
            "password",
            "user_certificate",
            "user_key",
            "pki_dir",
            "mode",
            "publishing_interval",
            "sampling_interval",
            "queue_size",
            "poll",
            "timeout",
            "tags",
        ],
    ),
    (
        "mqtt",
        &[
            "url",
            "insecure",
            "client_id",
            "clean_session",
            "ca_file",
            "client_certificate",
            "client_key",
            "username",
            "password_file",
            "password_env",
            "password",
            "max_payload",
            "tags",
        ],
    ),
    (
        "webhook",
        &[
            "listen",
            "path",
            "insecure",
            "certificate",
            "key",
            "auth",
            "max_body",
            "tags",
        ],
    ),
];
/// The kind-specific fields each source kind's tags take.
const TAG_FIELDS: &[(&str, &[&str])] = &[
    (
        "modbus-tcp",
        &[
            "register", "type", "order", "bit", "length", "scale", "offset",
        ],
    ),
    ("opcua", &["node", "type", "deadband"]),
    (
        "mqtt",
        &[
            "topic",
            "format",
            "value",
            "timestamp",
            "quality",
            "type",
            "group",
            "edge_node",
            "device",
            "metric",
        ],
    ),
    ("webhook", &["value", "timestamp", "quality", "type"]),
];
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
    (
        "telemetry",
        &["tags", "deadband", "min_interval", "heartbeat"],
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
            "format",
            "template",
            "template_file",
            "per",
            "method",
            "content_type",
            "headers",
            "retry_initial",
            "retry_max",
            "client_certificate",
            "client_key",
        ],
    ),
    ("file", &["path"]),
    ("stdout", &[]),
    (
        "mqtt",
        &[
            "url",
            "insecure",
            "timeout",
            "ca_file",
            "retry_initial",
            "retry_max",
            "topic",
            "mqtt_version",
            "client_id",
            "username",
            "password_file",
            "password_env",
            "client_certificate",
            "client_key",
        ],
    ),
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
    /// Whether the type is known before run time (an opcua tag without `type` is not).
    declared: bool,
    /// Width of an unsigned counter type.
    counter_bits: Option<u32>,
    integer: bool,
    boolean: bool,
    text: bool,
    scaled: bool,
}

impl TagFacts {
    fn modbus(data_type: DataType, scaled: bool) -> Self {
        TagFacts {
            declared: true,
            counter_bits: data_type.counter_bits(),
            integer: data_type.is_integer(),
            boolean: data_type.is_bool(),
            text: matches!(data_type, DataType::String(_)),
            scaled,
        }
    }

    fn opcua(data_type: Option<UaType>) -> Self {
        TagFacts {
            declared: data_type.is_some(),
            counter_bits: data_type.and_then(UaType::counter_bits),
            integer: data_type.is_some_and(UaType::is_integer),
            boolean: data_type == Some(UaType::Bool),
            text: data_type == Some(UaType::String),
            scaled: false,
        }
    }
}

#[derive(Default)]
struct Checker {
    problems: Vec<Problem>,
    tags: BTreeMap<String, TagFacts>,
    /// Declared but invalid: already reported, so rules naming them stay quiet.
    broken_tags: HashSet<String>,
    /// MQTT tags on `+` filters: (source, name template, facts, or `None` if the tag is
    /// broken); `<source>.<name>` refers to one when the template can make the name.
    templates: Vec<(String, Vec<crate::topic::NamePart>, Option<TagFacts>)>,
    /// MQTT client ids given so far: two sinks with one id would take each other's session.
    client_ids: HashMap<String, Range<usize>>,
    /// Ports webhook sources listen on: two cannot share one.
    listens: HashMap<u16, Range<usize>>,
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

/// Whether `name` is an HTTP header name (RFC 9110 token).
fn is_header_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
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
        .hint("add a [[sink]] with kind = \"https\", \"mqtt\", \"file\" or \"stdout\"");
    }
    if raw.rules.is_empty() && !raw.sources.is_empty() {
        c.warning(
            "no [[rule]] is configured",
            span(&raw.gateway_id),
            "tags are read but no event is made",
        )
        .hint("add a [[rule]] of kind \"counter\", \"state\", \"measurement\" or \"telemetry\" (raw values)");
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
            .hint(match owners.first() {
                None => format!("remove `{field}`, or check the {section}'s `kind`"),
                Some(first) => {
                    let article = if first.starts_with(['a', 'e', 'i', 'o', 'u']) { "an" } else { "a" };
                    format!(
                        "`{field}` belongs to {article} {} {section}; remove it, or check the {section}'s `kind`",
                        owners.join(" or ")
                    )
                }
            });
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
        let audit_retention = self.duration(
            raw.audit_retention.as_ref(),
            7 * DAY,
            HOUR..=366 * DAY,
            "audit_retention",
        );
        let max_audit_bytes = self.size(
            raw.max_audit_bytes.as_ref(),
            128 << 20,
            (1 << 20)..=MAX_SIZE,
            "max_audit_bytes",
        );
        Some(BufferConfig {
            path,
            max_bytes,
            max_dead_bytes,
            max_age,
            when_full,
            max_batch: max_batch as usize,
            audit_retention,
            max_audit_bytes,
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

    /// Resolves `<source>.<tag>`.
    fn tag(&mut self, field: &str, value: &Spanned<String>) -> Option<(TagRef, TagFacts)> {
        let text = value.get_ref();
        if let Some(facts) = self.tags.get(text) {
            return Some((TagRef(text.clone()), *facts));
        }
        if self.broken_tags.contains(text) {
            return None;
        }
        if let Some((source, name)) = text.split_once('.')
            && let Some((_, _, facts)) = self
                .templates
                .iter()
                .find(|(s, parts, _)| s == source && crate::topic::could_make(parts, name))
        {
            // A broken template was reported already: the rule stays quiet.
            return facts.map(|f| (TagRef(text.clone()), f));
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
}
