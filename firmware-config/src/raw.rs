//! The config file as written: flat, spanned structs that serde fills straight from TOML.
//!
//! Sections with a `kind` are flat structs rather than serde enums on purpose: toml's spans do not
//! survive serde's internally tagged enums, and spans are what make diagnostics point at the line.
//! Validation (`crate::validate`) turns these into the typed model in `crate::model`, checking
//! that each field belongs to its kind.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

use crate::units::{ByteSize, HumanDuration};

/// The whole `causeway.toml`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// Names this gateway in every event's `source` (`causeway://<gateway_id>/<machine>`).
    pub gateway_id: Spanned<String>,
    /// How long `causeway run` waits for sinks to drain after SIGTERM (default "10s").
    pub shutdown_grace: Option<Spanned<HumanDuration>>,
    /// The store-and-forward buffer.
    #[serde(default)]
    pub buffer: RawBuffer,
    /// PLCs and SCADA systems to read from.
    #[serde(default, rename = "source")]
    pub sources: Vec<RawSource>,
    /// How tag values become production and quality events.
    #[serde(default, rename = "rule")]
    pub rules: Vec<RawRule>,
    /// Where events go.
    #[serde(default, rename = "sink")]
    pub sinks: Vec<RawSink>,
}

/// `[buffer]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBuffer {
    /// SQLite file; relative paths are taken from the config file's folder.
    pub path: Option<Spanned<String>>,
    /// Upper bound on the live events in the buffer; the oldest are dropped past it (default "512MiB").
    pub max_bytes: Option<Spanned<ByteSize>>,
    /// Most writes committed in one transaction (default 512).
    pub max_batch: Option<Spanned<u32>>,
    /// Upper bound on dead letters, apart from `max_bytes`; the oldest are evicted (default "64MiB").
    pub max_dead_bytes: Option<Spanned<ByteSize>>,
    /// Undelivered events older than this are dropped, e.g. "30d" (default: no age limit).
    pub max_age: Option<Spanned<HumanDuration>>,
    /// When `max_bytes` is reached: "drop_oldest" (default), "drop_newest" or "block_sources".
    pub when_full: Option<Spanned<String>>,
    /// How long the record of each delivery attempt is kept (default "7d").
    pub audit_retention: Option<Spanned<HumanDuration>>,
    /// Bound on the audit trail's size (default "128MiB"); the oldest records go past it.
    pub max_audit_bytes: Option<Spanned<ByteSize>>,
}

/// `[[source]]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSource {
    /// Unique name; tags are referred to as `<source>.<tag>`.
    pub name: Spanned<String>,
    /// `modbus-tcp`.
    pub kind: Spanned<String>,
    /// `host:port` of the Modbus TCP server.
    pub address: Option<Spanned<String>>,
    /// Modbus unit (slave) id, 0..=255 (default 1).
    pub unit: Option<Spanned<i64>>,
    /// Poll interval (default "1s").
    pub poll: Option<Spanned<HumanDuration>>,
    /// Deadline for each request (default "1s").
    pub timeout: Option<Spanned<HumanDuration>>,
    /// Unused registers a coalesced read may read through to save a request (default 8).
    pub max_gap: Option<Spanned<i64>>,
    /// opcua: `opc.tcp://host:port[/path]` of the server.
    pub endpoint: Option<Spanned<String>>,
    /// opcua: None (default), Basic256Sha256, Aes128_Sha256_RsaOaep or Aes256_Sha256_RsaPss.
    pub security_policy: Option<Spanned<String>>,
    /// opcua: Sign or SignAndEncrypt (default with a policy other than None).
    pub security_mode: Option<Spanned<String>>,
    /// opcua: user name of a username/password identity.
    pub username: Option<Spanned<String>>,
    /// opcua: file holding the password (one trailing line break dropped).
    pub password_file: Option<Spanned<String>>,
    /// opcua: environment variable holding the password.
    pub password_env: Option<Spanned<String>>,
    /// Rejected: a password written inline. Parsed only so the error can point at it.
    pub password: Option<Spanned<String>>,
    /// opcua: X.509 user identity certificate (DER or PEM).
    pub user_certificate: Option<Spanned<String>>,
    /// opcua: private key (PEM) of `user_certificate`.
    pub user_key: Option<Spanned<String>>,
    /// opcua: the client's PKI folder, own/ trusted/ rejected/ (default `pki` beside the buffer).
    pub pki_dir: Option<Spanned<String>>,
    /// opcua: "subscribe" (default) or "poll" (chunked Reads every `poll`).
    pub mode: Option<Spanned<String>>,
    /// opcua: the subscription's publishing interval (default "1s").
    pub publishing_interval: Option<Spanned<HumanDuration>>,
    /// opcua: how often the server samples each node (default: the publishing interval).
    pub sampling_interval: Option<Spanned<HumanDuration>>,
    /// opcua: values the server queues per item between publishes (default 10).
    pub queue_size: Option<Spanned<i64>>,
    /// mqtt: `mqtts://host[:port]` of the broker.
    pub url: Option<Spanned<String>>,
    /// mqtt: allow a plain `mqtt://` URL.
    pub insecure: Option<Spanned<bool>>,
    /// mqtt: the client id (default `causeway-<gateway_id>-<source>`).
    pub client_id: Option<Spanned<String>>,
    /// mqtt: start a clean session at every connect (default true).
    pub clean_session: Option<Spanned<bool>>,
    /// mqtt: PEM CA certificates to trust besides the system's.
    pub ca_file: Option<Spanned<String>>,
    /// mqtt: PEM client certificate (chain) for mutual TLS.
    pub client_certificate: Option<Spanned<String>>,
    /// mqtt: PEM private key of `client_certificate`.
    pub client_key: Option<Spanned<String>>,
    /// mqtt: the largest payload read (default "64KiB"); larger ones make their tags Bad.
    pub max_payload: Option<Spanned<crate::units::ByteSize>>,
    /// webhook: the address and port to listen on, e.g. "0.0.0.0:8443".
    pub listen: Option<Spanned<String>>,
    /// webhook: the path posts go to (default "/").
    pub path: Option<Spanned<String>>,
    /// webhook: PEM server certificate (chain).
    pub certificate: Option<Spanned<String>>,
    /// webhook: PEM private key of `certificate`.
    pub key: Option<Spanned<String>>,
    /// webhook: how a post proves who sends it.
    pub auth: Option<Spanned<RawWebhookAuth>>,
    /// webhook: the largest body read (default "64KiB").
    pub max_body: Option<Spanned<crate::units::ByteSize>>,
    /// The tags to read.
    #[serde(default)]
    pub tags: Vec<RawTag>,
}

/// One entry of a source's `tags`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTag {
    /// Unique within the source.
    pub name: Spanned<String>,
    /// modbus-tcp: `<kind>:<address>`, kind one of coil, discrete, input, holding; address 0-based.
    pub register: Option<Spanned<String>>,
    /// opcua: the node id, `ns=2;s=Press.Force` (or `i=`, `g=`, `b=` identifiers).
    pub node: Option<Spanned<String>>,
    /// opcua: the server's deadband for this item, `0.5` (absolute) or `"2%"` (of its EURange).
    pub deadband: Option<Spanned<RawDeadband>>,
    /// bool, u16, i16, u32, i32, u64, i64, f32, f64 or string (default u16; bool for coils).
    /// opcua adds i8 and u8; without a type, an opcua tag takes the node's own.
    #[serde(rename = "type")]
    pub data_type: Option<Spanned<String>>,
    /// Byte and word order of multi-register values: ABCD (default), CDAB, BADC or DCBA.
    pub order: Option<Spanned<String>>,
    /// For `type = "bool"` on an input or holding register: the bit, 0 (LSB) ..= 15.
    pub bit: Option<Spanned<i64>>,
    /// For `type = "string"`: how many registers (two ASCII characters each).
    pub length: Option<Spanned<i64>>,
    /// Multiplies the raw value (after decoding).
    pub scale: Option<Spanned<f64>>,
    /// Added after scaling.
    pub offset: Option<Spanned<f64>>,
    /// mqtt: the topic whose messages carry the tag (no wildcards).
    pub topic: Option<Spanned<String>>,
    /// mqtt: `json` (default) or `text`.
    pub format: Option<Spanned<String>>,
    /// mqtt json: JSON Pointer to the value (default: the whole message).
    pub value: Option<Spanned<String>>,
    /// mqtt json: JSON Pointer to the time (RFC 3339 text, or Unix milliseconds).
    pub timestamp: Option<Spanned<String>>,
    /// mqtt json: JSON Pointer to a quality: true/"good"/192 are Good, anything else Bad.
    pub quality: Option<Spanned<String>>,
    /// mqtt sparkplug: the Sparkplug group id.
    pub group: Option<Spanned<String>>,
    /// mqtt sparkplug: the edge node id.
    pub edge_node: Option<Spanned<String>>,
    /// mqtt sparkplug: the device id (absent: a metric of the edge node itself).
    pub device: Option<Spanned<String>>,
    /// mqtt sparkplug: the metric's name, as in the birth certificate.
    pub metric: Option<Spanned<String>>,
}

/// `[[rule]]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRule {
    /// Optional unique name; defaults to `<kind>:<machine or characteristic>`.
    pub name: Option<Spanned<String>>,
    /// `counter`, `state` or `measurement`.
    pub kind: Spanned<String>,
    /// Machine the events describe.
    pub machine: Option<Spanned<String>>,
    /// Line the machine belongs to (context only).
    pub line: Option<Spanned<String>>,
    /// counter: tag holding the running total of parts.
    pub total: Option<Spanned<String>>,
    /// counter: tag holding the running count of good parts.
    pub good: Option<Spanned<String>>,
    /// counter: tag holding the running count of rejected parts.
    pub reject: Option<Spanned<String>>,
    /// counter: tag with the current order number, attached as context.
    pub order: Option<Spanned<String>>,
    /// counter: how often counts are reported (default "10s").
    pub interval: Option<Spanned<HumanDuration>>,
    /// counter: the most parts per second the machine can make (default 1000); larger steps
    /// between two readings are judged implausible.
    pub max_rate: Option<Spanned<f64>>,
    /// state/measurement: the tag to watch.
    pub tag: Option<Spanned<String>>,
    /// state: value -> state name, e.g. `{ 0 = "idle", 1 = "running", 2 = "down" }`.
    pub states: Option<Spanned<BTreeMap<String, Spanned<String>>>>,
    /// state: tag with the PLC's reason code.
    pub reason: Option<Spanned<String>>,
    /// measurement: the quality characteristic's name.
    pub characteristic: Option<Spanned<String>>,
    /// measurement: a bool tag; a sample is taken on its rising edge. Without it, on every change.
    pub trigger: Option<Spanned<String>>,
    /// measurement: lower specification limit.
    pub lsl: Option<Spanned<f64>>,
    /// measurement: target value.
    pub nominal: Option<Spanned<f64>>,
    /// measurement: upper specification limit.
    pub usl: Option<Spanned<f64>>,
    /// measurement: engineering unit, e.g. "kN".
    pub unit: Option<Spanned<String>>,
    /// measurement without a trigger, telemetry: the least change reported, `0.5` (absolute)
    /// or `"2%"`.
    pub deadband: Option<Spanned<RawDeadband>>,
    /// telemetry: the tags forwarded, `<source>.<tag>` or patterns with `*` (`press1.*`).
    pub tags: Option<Spanned<Vec<Spanned<String>>>>,
    /// telemetry: a tag is sent at most this often (default: on every change).
    pub min_interval: Option<Spanned<HumanDuration>>,
    /// telemetry: a tag is sent at least this often, changed or not.
    pub heartbeat: Option<Spanned<HumanDuration>>,
}

/// `[[sink]]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSink {
    /// Unique name; also the name of its cursor in the buffer.
    pub name: Spanned<String>,
    /// `https`, `file` or `stdout`.
    pub kind: Spanned<String>,
    /// Event-type patterns this sink receives, e.g. `["production.*", "quality.measurement"]`.
    pub routes: Option<Spanned<Vec<Spanned<String>>>>,
    /// Most events in one delivery (default 100).
    pub batch_size: Option<Spanned<i64>>,
    /// Most payload bytes in one delivery (default "1MiB").
    pub max_batch_bytes: Option<Spanned<ByteSize>>,
    /// Failed deliveries in a row that open the sink's circuit breaker (default 5).
    pub breaker_failures: Option<Spanned<i64>>,
    /// How long an open breaker sends nothing before one probe (default "30s").
    pub breaker_open: Option<Spanned<HumanDuration>>,
    /// Most requests per second to the receiver (default: no limit).
    pub rate_limit: Option<Spanned<f64>>,
    /// https: the endpoint events are POSTed to.
    pub url: Option<Spanned<String>>,
    /// https: allow a plain `http://` URL (logged as a warning at start).
    pub insecure: Option<Spanned<bool>>,
    /// https: per-request deadline (default "10s").
    pub timeout: Option<Spanned<HumanDuration>>,
    /// https: PEM file of CA certificates to trust in addition to the system's.
    pub ca_file: Option<Spanned<String>>,
    /// https: authentication.
    pub auth: Option<Spanned<RawAuth>>,
    /// https: the body: "cloudevents" (default) or "template".
    pub format: Option<Spanned<String>>,
    /// https: a minijinja template for the body, inline.
    pub template: Option<Spanned<String>>,
    /// https: a minijinja template for the body, in this file.
    pub template_file: Option<Spanned<String>>,
    /// https: one request per "batch" (default) or per "event".
    pub per: Option<Spanned<String>>,
    /// https: "POST" (default), "PUT" or "PATCH".
    pub method: Option<Spanned<String>>,
    /// https: the rendered body's media type (default "application/json").
    pub content_type: Option<Spanned<String>>,
    /// https: extra request headers, fixed text.
    pub headers: Option<Spanned<std::collections::BTreeMap<String, Spanned<String>>>>,
    /// https: first retry delay (default "500ms").
    pub retry_initial: Option<Spanned<HumanDuration>>,
    /// https: longest retry delay (default "30s").
    pub retry_max: Option<Spanned<HumanDuration>>,
    /// file: the JSON-lines file events are appended to.
    pub path: Option<Spanned<String>>,
    /// mqtt: the topic each event is published to, with `{gateway_id}`, `{type}`, `{machine}`.
    pub topic: Option<Spanned<String>>,
    /// mqtt: the client id (default `causeway-<gateway_id>-<sink>`).
    pub client_id: Option<Spanned<String>>,
    /// mqtt: "3.1.1" (default) or "5".
    pub mqtt_version: Option<Spanned<String>>,
    /// mqtt: user name, with `password_file` or `password_env`.
    pub username: Option<Spanned<String>>,
    /// mqtt: file holding the password.
    pub password_file: Option<Spanned<String>>,
    /// mqtt: environment variable holding the password.
    pub password_env: Option<Spanned<String>>,
    /// mqtt: PEM client certificate (chain) for mutual TLS.
    pub client_certificate: Option<Spanned<String>>,
    /// mqtt: PEM private key of `client_certificate`.
    pub client_key: Option<Spanned<String>>,
}

/// A deadband as written: a number (absolute) or a text such as `"2%"`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum RawDeadband {
    /// In the tag's unit.
    Absolute(f64),
    /// `"<n>%"`.
    Text(String),
}

/// `auth = { ... }` of a webhook source.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWebhookAuth {
    /// The header carrying the API key, e.g. `X-API-Key`.
    pub api_key_header: Option<Spanned<String>>,
    /// File holding the API key.
    pub api_key_file: Option<Spanned<String>>,
    /// Environment variable holding the API key.
    pub api_key_env: Option<Spanned<String>>,
    /// Rejected: an API key written inline.
    pub api_key: Option<Spanned<String>>,
    /// The header carrying the HMAC-SHA256 of the body, e.g. `X-Signature-256`.
    pub hmac_header: Option<Spanned<String>>,
    /// File holding the HMAC secret.
    pub hmac_secret_file: Option<Spanned<String>>,
    /// Environment variable holding the HMAC secret.
    pub hmac_secret_env: Option<Spanned<String>>,
    /// Rejected: an HMAC secret written inline.
    pub hmac_secret: Option<Spanned<String>>,
    /// Text before the hex signature in the header, e.g. "sha256=" (default none).
    pub hmac_prefix: Option<Spanned<String>>,
}

/// `auth = { ... }` of an https sink.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAuth {
    /// Name of an environment variable holding a bearer token.
    pub bearer_env: Option<Spanned<String>>,
    /// File holding a bearer token (surrounding whitespace is trimmed).
    pub bearer_file: Option<Spanned<String>>,
    /// Rejected: a token written inline. Accepted by the parser only so the error can point at it.
    pub bearer: Option<Spanned<String>>,
    /// Rejected, as `bearer`.
    pub token: Option<Spanned<String>>,
    /// Rejected, as `bearer`.
    pub password: Option<Spanned<String>>,
    /// Basic auth: the user name, with `password_env` or `password_file`.
    pub username: Option<Spanned<String>>,
    /// Basic auth: environment variable holding the password.
    pub password_env: Option<Spanned<String>>,
    /// Basic auth: file holding the password.
    pub password_file: Option<Spanned<String>>,
    /// API key: the header that carries it (e.g. `X-API-Key`), with `api_key_env` or
    /// `api_key_file`.
    pub api_key_header: Option<Spanned<String>>,
    /// API key: environment variable holding it.
    pub api_key_env: Option<Spanned<String>>,
    /// API key: file holding it.
    pub api_key_file: Option<Spanned<String>>,
    /// Rejected, as `bearer`.
    pub api_key: Option<Spanned<String>>,
    /// OAuth2 client credentials: the token endpoint, with `client_id` and
    /// `client_secret_env` or `client_secret_file`.
    pub token_url: Option<Spanned<String>>,
    /// OAuth2: the client id.
    pub client_id: Option<Spanned<String>>,
    /// OAuth2: environment variable holding the client secret.
    pub client_secret_env: Option<Spanned<String>>,
    /// OAuth2: file holding the client secret.
    pub client_secret_file: Option<Spanned<String>>,
    /// Rejected, as `bearer`.
    pub client_secret: Option<Spanned<String>>,
    /// OAuth2: the scope asked for (optional).
    pub scope: Option<Spanned<String>>,
    /// OAuth2: the audience asked for (optional; some providers want it).
    pub audience: Option<Spanned<String>>,
}

impl RawConfig {
    /// Where `text` holds a secret written inline: a source's `password`, an https sink's
    /// `auth.bearer`, `auth.token`, `auth.password` or `auth.api_key`, the password of a URL or
    /// endpoint.
    pub(crate) fn secret_spans(&self, text: &str) -> Vec<std::ops::Range<usize>> {
        let mut spans = Vec::new();
        let userinfo = |url: &Spanned<String>, spans: &mut Vec<std::ops::Range<usize>>| {
            let span = url.span();
            let Some(literal) = text.get(span.clone()) else {
                return;
            };
            // scheme://user:password@host: mask the password.
            if let Some(start) = literal.find("://").map(|i| i + 3) {
                let authority_end = literal[start..]
                    .find(['/', '"', '\''])
                    .map_or(literal.len(), |i| start + i);
                let authority = &literal[start..authority_end];
                if let Some(at) = authority.rfind('@')
                    && let Some(colon) = authority[..at].find(':')
                {
                    spans.push(span.start + start + colon + 1..span.start + start + at);
                }
            }
        };
        for source in &self.sources {
            spans.extend(source.password.as_ref().map(Spanned::span));
            if let Some(auth) = &source.auth {
                let auth = auth.get_ref();
                spans.extend(auth.api_key.as_ref().map(Spanned::span));
                spans.extend(auth.hmac_secret.as_ref().map(Spanned::span));
            }
            if let Some(endpoint) = &source.endpoint {
                userinfo(endpoint, &mut spans);
            }
        }
        for sink in &self.sinks {
            if let Some(auth) = &sink.auth {
                let auth = auth.get_ref();
                for secret in [
                    &auth.bearer,
                    &auth.token,
                    &auth.password,
                    &auth.api_key,
                    &auth.client_secret,
                ]
                .into_iter()
                .flatten()
                {
                    spans.push(secret.span());
                }
            }
            if let Some(url) = &sink.url {
                userinfo(url, &mut spans);
                // ?api_key=...: a query with a parameter named like a credential is masked
                // whole, from the `?` as written (escapes and all) to the closing quote.
                let span = url.span();
                if query_has_credential(url.get_ref())
                    && let Some(literal) = text.get(span.clone())
                    && literal.len() >= 2
                {
                    let from = literal.find('?').map_or(1, |q| q + 1);
                    spans.push(span.start + from..span.end - 1);
                }
            }
            if let Some(headers) = &sink.headers {
                for (name, value) in headers.get_ref() {
                    if credential_header(name) {
                        spans.push(value.span());
                    }
                }
            }
        }
        spans
    }
}

/// Whether a header's or a query parameter's name says it carries a credential (`X-API-Key`,
/// `X-Auth-Token`, `access_token`, `sig`, ...): its value belongs in `auth`, not in the config
/// file. Judged by the name's words (`-`, `_`, `.` apart) and endings, so `author`, `design`
/// or `keyword` are not.
pub(crate) fn credential_header(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    let words = [
        "key",
        "apikey",
        "token",
        "secret",
        "password",
        "passwd",
        "pwd",
        "auth",
        "authorization",
        "cookie",
        "session",
        "sig",
        "signature",
        "credential",
        "credentials",
    ];
    lower.split(['-', '_', '.']).any(|w| words.contains(&w))
        || ["apikey", "token", "secret", "password", "signature"]
            .iter()
            .any(|end| lower.ends_with(end))
}

/// Whether `url`'s query has a parameter named like a credential (names percent-decoded).
pub(crate) fn query_has_credential(url: &str) -> bool {
    let Some((_, query)) = url.split_once('?') else {
        return false;
    };
    let query = query.split('#').next().unwrap_or_default();
    url::form_urlencoded::parse(query.as_bytes()).any(|(name, _)| credential_header(&name))
}

/// `url` with its query replaced by `?***` when it carries a credential, for messages.
pub(crate) fn mask_query(url: &str) -> String {
    match url.split_once('?') {
        Some((base, _)) if query_has_credential(url) => format!("{base}?***"),
        _ => url.to_owned(),
    }
}

/// A kind-specific field of a raw section that is set, and where.
pub(crate) type SetField = (&'static str, std::ops::Range<usize>);

fn set<T>(name: &'static str, value: &Option<Spanned<T>>) -> Option<SetField> {
    value.as_ref().map(|v| (name, v.span()))
}

impl RawSource {
    /// Every kind-specific field that is set: listed once here, checked against each kind's
    /// table in `validate`.
    pub(crate) fn kind_fields(&self) -> Vec<SetField> {
        [
            set("address", &self.address),
            set("unit", &self.unit),
            set("poll", &self.poll),
            set("timeout", &self.timeout),
            set("max_gap", &self.max_gap),
            set("endpoint", &self.endpoint),
            set("security_policy", &self.security_policy),
            set("security_mode", &self.security_mode),
            set("username", &self.username),
            set("password_file", &self.password_file),
            set("password_env", &self.password_env),
            set("password", &self.password),
            set("user_certificate", &self.user_certificate),
            set("user_key", &self.user_key),
            set("pki_dir", &self.pki_dir),
            set("mode", &self.mode),
            set("publishing_interval", &self.publishing_interval),
            set("sampling_interval", &self.sampling_interval),
            set("queue_size", &self.queue_size),
            set("url", &self.url),
            set("insecure", &self.insecure),
            set("client_id", &self.client_id),
            set("clean_session", &self.clean_session),
            set("ca_file", &self.ca_file),
            set("client_certificate", &self.client_certificate),
            set("client_key", &self.client_key),
            set("max_payload", &self.max_payload),
            set("listen", &self.listen),
            set("path", &self.path),
            set("certificate", &self.certificate),
            set("key", &self.key),
            set("auth", &self.auth),
            set("max_body", &self.max_body),
            self.tags.first().map(|t| ("tags", t.name.span())),
        ]
        .into_iter()
        .flatten()
        .collect()
    }
}

impl RawTag {
    /// Every kind-specific field of the tag that is set (all but `name`).
    pub(crate) fn kind_fields(&self) -> Vec<SetField> {
        [
            set("register", &self.register),
            set("node", &self.node),
            set("type", &self.data_type),
            set("order", &self.order),
            set("bit", &self.bit),
            set("length", &self.length),
            set("scale", &self.scale),
            set("offset", &self.offset),
            set("deadband", &self.deadband),
            set("topic", &self.topic),
            set("format", &self.format),
            set("value", &self.value),
            set("timestamp", &self.timestamp),
            set("quality", &self.quality),
            set("group", &self.group),
            set("edge_node", &self.edge_node),
            set("device", &self.device),
            set("metric", &self.metric),
        ]
        .into_iter()
        .flatten()
        .collect()
    }
}

impl RawRule {
    /// Every kind-specific field that is set (all but `name`, `kind` and `machine`).
    pub(crate) fn kind_fields(&self) -> Vec<SetField> {
        [
            set("line", &self.line),
            set("total", &self.total),
            set("good", &self.good),
            set("reject", &self.reject),
            set("order", &self.order),
            set("interval", &self.interval),
            set("max_rate", &self.max_rate),
            set("tag", &self.tag),
            set("states", &self.states),
            set("reason", &self.reason),
            set("characteristic", &self.characteristic),
            set("trigger", &self.trigger),
            set("lsl", &self.lsl),
            set("nominal", &self.nominal),
            set("usl", &self.usl),
            set("unit", &self.unit),
            set("deadband", &self.deadband),
            set("tags", &self.tags),
            set("min_interval", &self.min_interval),
            set("heartbeat", &self.heartbeat),
        ]
        .into_iter()
        .flatten()
        .collect()
    }
}

impl RawSink {
    /// Every kind-specific field that is set (all but `name`, `kind`, `routes`, `batch_size`
    /// and `max_batch_bytes`).
    pub(crate) fn kind_fields(&self) -> Vec<SetField> {
        [
            set("url", &self.url),
            set("insecure", &self.insecure),
            set("timeout", &self.timeout),
            set("ca_file", &self.ca_file),
            set("auth", &self.auth),
            set("format", &self.format),
            set("template", &self.template),
            set("template_file", &self.template_file),
            set("per", &self.per),
            set("method", &self.method),
            set("content_type", &self.content_type),
            set("headers", &self.headers),
            set("retry_initial", &self.retry_initial),
            set("retry_max", &self.retry_max),
            set("path", &self.path),
            set("topic", &self.topic),
            set("mqtt_version", &self.mqtt_version),
            set("client_id", &self.client_id),
            set("username", &self.username),
            set("password_file", &self.password_file),
            set("password_env", &self.password_env),
            set("client_certificate", &self.client_certificate),
            set("client_key", &self.client_key),
        ]
        .into_iter()
        .flatten()
        .collect()
    }
}
