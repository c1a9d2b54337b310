//! Sources: the one interface every protocol's source starts through. `topology` and the CLI
//! call only this module; adding a source kind adds a variant here (and its driver in
//! `protocols`), nothing else in the runtime.

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
};

use firmware_config::{OpcUaConfig, SourceConfig, UaIdentity, UaReading};
use protocols::{
    modbus::{ModbusSource, ReadPlan, ShownPlan},
    model::SampleBatch,
    mqtt::MqttSource,
    opcua::{MAX_PER_CALL, OpcUaSource},
    webhook::WebhookSource,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// A source of any kind, ready to run.
// One value per configured source, built once and moved into its task: the variants' sizes
// do not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Source {
    /// `kind = "modbus-tcp"`
    Modbus(ModbusSource),
    /// `kind = "opcua"`
    OpcUa(OpcUaSource),
    /// `kind = "mqtt"`
    Mqtt(MqttSource),
    /// `kind = "webhook"`
    Webhook(WebhookSource),
    /// A source that could not be set up (its TLS files or secret): it sends nothing and
    /// waits to be stopped. `preflight` refuses the start before it comes to this.
    Broken(String),
}

/// Where a source keeps its files: paths in the config are taken from `base`, and an OPC UA
/// source's PKI folder defaults to `pki` beside the buffer.
#[derive(Debug, Clone, Copy)]
pub struct Paths<'a> {
    /// The gateway's id (default MQTT client ids are made from it).
    pub gateway_id: &'a str,
    /// The config file's folder.
    pub base: &'a Path,
    /// The buffer file.
    pub buffer: &'a Path,
}

impl Paths<'_> {
    /// The PKI folder of `config`.
    pub fn pki_dir(&self, config: &OpcUaConfig) -> PathBuf {
        match &config.pki_dir {
            Some(dir) => self.base.join(dir),
            None => self
                .buffer
                .parent()
                .unwrap_or_else(|| Path::new("."))
                .join("pki"),
        }
    }
}

impl Source {
    /// The source `config` describes.
    pub fn build(config: &SourceConfig, paths: Paths<'_>) -> Self {
        match config {
            SourceConfig::ModbusTcp(modbus) => Source::Modbus(ModbusSource::new(modbus.clone())),
            SourceConfig::OpcUa(ua) => {
                let mut ua = ua.clone();
                resolve_identity(&mut ua, paths.base);
                let pki = paths.pki_dir(&ua);
                Source::OpcUa(OpcUaSource::new(ua, pki))
            }
            SourceConfig::Mqtt(mqtt) => {
                let client_id = mqtt.client_id.clone().unwrap_or_else(|| {
                    format!("causeway-{}-source-{}", paths.gateway_id, mqtt.name)
                });
                Source::Mqtt(MqttSource::new(
                    mqtt.clone(),
                    client_id,
                    mqtt_tls(mqtt, paths.base),
                    mqtt_password(mqtt, paths.base),
                ))
            }
            SourceConfig::Webhook(hook) => match webhook_setup(hook, paths.base) {
                Ok((tls, secret)) => Source::Webhook(WebhookSource::new(hook.clone(), tls, secret)),
                Err(why) => Source::Broken(format!("source `{}`: {why}", hook.name)),
            },
        }
    }

    /// Reads the device until `cancel` fires or `out` closes, sending one [`SampleBatch`] per
    /// poll or notification; a device that cannot be read gives Bad samples, never silence.
    ///
    /// # Cancel safety
    /// Returns promptly on cancellation; a batch being sent then is dropped (never accepted).
    pub async fn run(self, out: mpsc::Sender<SampleBatch>, cancel: CancellationToken) {
        match self {
            Source::Modbus(source) => source.run(out, cancel).await,
            Source::OpcUa(source) => source.run(out, cancel).await,
            Source::Mqtt(source) => source.run(out, cancel).await,
            Source::Webhook(source) => source.run(out, cancel).await,
            Source::Broken(why) => {
                tracing::error!("{why}; this source reads nothing");
                cancel.cancelled().await;
            }
        }
    }
}

/// What `causeway check` reports of a source before anything runs.
#[derive(Debug)]
pub struct Planned {
    /// Tags the source reads.
    pub tags: usize,
    /// Requests (or subscriptions) one poll takes.
    pub reads: usize,
    /// The plan in detail, for `check --plan`.
    pub shown: String,
}

/// Checks what `config` needs from this machine before anything runs: an OPC UA password or
/// user certificate that cannot be read fails the start, naming the file or variable, and an
/// OPC UA source's certificate is created (the first time, which takes a second or two).
pub fn preflight(config: &SourceConfig, paths: Paths<'_>) -> Result<(), String> {
    match config {
        SourceConfig::ModbusTcp(_) => Ok(()),
        SourceConfig::Webhook(hook) => webhook_setup(hook, paths.base)
            .map(drop)
            .map_err(|e| format!("source `{}`: {e}", hook.name)),
        SourceConfig::Mqtt(mqtt) => {
            mqtt_tls(mqtt, paths.base).map_err(|e| format!("source `{}`: {e}", mqtt.name))?;
            mqtt_password(mqtt, paths.base)
                .map(drop)
                .map_err(|e| format!("source `{}`: {e}", mqtt.name))
        }
        SourceConfig::OpcUa(ua) => {
            let mut ua = ua.clone();
            resolve_identity(&mut ua, paths.base);
            protocols::opcua::connect::identity(&ua)
                .map_err(|e| format!("source `{}`: {e}", ua.name))?;
            // The certificate is made here, once, before any source runs: sources sharing a
            // folder must not race to create it.
            protocols::opcua::connect::client(&paths.pki_dir(&ua), ua.timeout)
                .map(drop)
                .map_err(|e| format!("source `{}`: {e}", ua.name))
        }
    }
}

/// The TLS configuration of an MQTT source (`None` for `mqtt://`).
fn mqtt_tls(
    config: &firmware_config::MqttSourceConfig,
    base: &Path,
) -> Result<Option<std::sync::Arc<rustls::ClientConfig>>, String> {
    if !config.tls {
        return Ok(None);
    }
    crate::tls::client_config_in(base, config.ca_file.as_deref(), config.identity.as_ref())
        .map(|c| Some(std::sync::Arc::new(c)))
        .map_err(|e| crate::error_chain(&e))
}

/// A webhook source's TLS server configuration (`None` for plain http) and its API key or
/// HMAC secret, read now.
fn webhook_setup(
    config: &firmware_config::WebhookSourceConfig,
    base: &Path,
) -> Result<(Option<std::sync::Arc<rustls::ServerConfig>>, String), String> {
    let tls = match &config.tls {
        None => None,
        Some((certificate, key)) => Some(std::sync::Arc::new(
            crate::tls::server_config(&base.join(certificate), &base.join(key))
                .map_err(|e| crate::error_chain(&e))?,
        )),
    };
    let (secret, field) = match &config.auth {
        firmware_config::WebhookAuth::ApiKey { key, .. } => (key, "API key"),
        firmware_config::WebhookAuth::Hmac { secret, .. } => (secret, "HMAC secret"),
    };
    let text = protocols::secret::read_env(secret, base)
        .map_err(|why| format!("cannot read the {field}: {why}"))?;
    let text = text.trim().to_owned();
    if text.len() < 16 {
        return Err(format!(
            "the {field} is {} bytes (after trimming surrounding whitespace); use at least 16 (e.g. 32 random hex digits)",
            text.len()
        ));
    }
    Ok((tls, text))
}

/// The password of an MQTT source, read now.
fn mqtt_password(
    config: &firmware_config::MqttSourceConfig,
    base: &Path,
) -> Result<Option<String>, String> {
    let Some((user, secret)) = &config.credentials else {
        return Ok(None);
    };
    protocols::secret::read_env(secret, base)
        .map(Some)
        .map_err(|why| format!("cannot read the password of user `{user}`: {why}"))
}

/// Paths of the identity files, taken from `base`.
fn resolve_identity(ua: &mut OpcUaConfig, base: &Path) {
    match &mut ua.identity {
        UaIdentity::Anonymous => {}
        UaIdentity::UserName { password, .. } => {
            if let firmware_config::Secret::File(path) = password {
                *path = base.join(&*path);
            }
        }
        UaIdentity::X509 { certificate, key } => {
            *certificate = base.join(&*certificate);
            *key = base.join(&*key);
        }
    }
}

/// How `config` would be read.
pub fn plan(config: &SourceConfig, paths: Paths<'_>) -> Planned {
    match config {
        SourceConfig::Webhook(hook) => {
            let mut shown = String::new();
            let auth = match &hook.auth {
                firmware_config::WebhookAuth::ApiKey { header, .. } => {
                    format!("API key in {header}")
                }
                firmware_config::WebhookAuth::Hmac { header, .. } => {
                    format!("HMAC-SHA256 of the body in {header}")
                }
            };
            let _ = writeln!(
                shown,
                "source `{}` (webhook {}://{}{}): posts checked by {auth}, bodies up to {} bytes",
                hook.name,
                if hook.tls.is_some() { "https" } else { "http" },
                hook.listen,
                hook.path,
                hook.max_body
            );
            for tag in &hook.tags {
                let _ = writeln!(shown, "  {:<24} json {}", tag.name, tag.value);
            }
            Planned {
                tags: hook.tags.len(),
                reads: 1,
                shown,
            }
        }
        SourceConfig::Mqtt(mqtt) => {
            let mut shown = String::new();
            // Exact topics, and two filters per Sparkplug edge node (its messages, its devices').
            let topics: std::collections::BTreeSet<String> = mqtt
                .tags
                .iter()
                .flat_map(|t| match &t.format {
                    firmware_config::MqttFormat::Sparkplug {
                        group, edge_node, ..
                    } => vec![
                        format!("spBv1.0/{group}/+/{edge_node}"),
                        format!("spBv1.0/{group}/+/{edge_node}/+"),
                    ],
                    _ => vec![t.topic.clone()],
                })
                .collect();
            let _ = writeln!(
                shown,
                "source `{}` (mqtt {}:{}{}): {} topic(s) subscribed with QoS 1, messages up to {} bytes",
                mqtt.name,
                mqtt.host,
                mqtt.port,
                if mqtt.tls { ", TLS" } else { ", no TLS" },
                topics.len(),
                mqtt.max_payload
            );
            for tag in &mqtt.tags {
                let how = match &tag.format {
                    firmware_config::MqttFormat::Json { value, .. } => format!("json {value}"),
                    firmware_config::MqttFormat::Text => "text".to_owned(),
                    firmware_config::MqttFormat::Sparkplug { metric, .. } => {
                        format!("sparkplug metric `{metric}`")
                    }
                };
                let _ = writeln!(shown, "  {:<24} {} ({how})", tag.name, tag.topic);
            }
            Planned {
                tags: mqtt.tags.len(),
                reads: topics.len(),
                shown,
            }
        }
        SourceConfig::OpcUa(ua) => {
            let calls = ua.tags.len().div_ceil(MAX_PER_CALL);
            let mut shown = String::new();
            let identity = match &ua.identity {
                UaIdentity::Anonymous => "anonymous".to_owned(),
                UaIdentity::UserName { user, .. } => format!("user `{user}`"),
                UaIdentity::X509 { certificate, .. } => {
                    format!("certificate {}", certificate.display())
                }
            };
            let _ = writeln!(
                shown,
                "source `{}` (opcua {}): security {}/{:?}, {identity}, certificates in {}",
                ua.name,
                ua.endpoint,
                ua.policy.name(),
                ua.mode,
                paths.pki_dir(ua).display()
            );
            let _ = match ua.reading {
                UaReading::Subscribe {
                    publishing,
                    sampling,
                    queue_size,
                } => writeln!(
                    shown,
                    "  subscribe: publishing every {}, sampling every {}, queue {queue_size}; {calls} CreateMonitoredItems call(s) of at most {MAX_PER_CALL} (fewer if the server's OperationLimits say so)",
                    humantime::format_duration(publishing),
                    humantime::format_duration(sampling),
                ),
                UaReading::Poll { interval } => writeln!(
                    shown,
                    "  poll every {}: {calls} Read call(s) of at most {MAX_PER_CALL} nodes",
                    humantime::format_duration(interval),
                ),
            };
            for tag in &ua.tags {
                let _ = writeln!(
                    shown,
                    "  {:<24} {}{}",
                    tag.name,
                    tag.node,
                    tag.data_type
                        .map(|t| format!(" as {}", t.name()))
                        .unwrap_or_default()
                );
            }
            Planned {
                tags: ua.tags.len(),
                reads: calls,
                shown,
            }
        }
        SourceConfig::ModbusTcp(modbus) => {
            let plan = ReadPlan::new(&modbus.tags, modbus.max_gap);
            Planned {
                tags: modbus.tags.len(),
                reads: plan.requests.len(),
                shown: ShownPlan {
                    source: modbus,
                    plan: &plan,
                }
                .to_string(),
            }
        }
    }
}
