//! `kind = "mqtt"`: the broker URL, the topic template, the credentials, the timeouts.

use crate::validate::*;

/// What a topic template may name.
const TOPIC_FIELDS: [&str; 3] = ["gateway_id", "type", "machine"];

impl Checker {
    pub(crate) fn mqtt(&mut self, raw: &RawSink) -> Option<MqttSinkConfig> {
        let name = raw.name.get_ref();
        let Some(url) = &raw.url else {
            self.error(
                format!("mqtt sink `{name}` has no url"),
                span(&raw.name),
                "this sink",
            )
            .hint("add url = \"mqtts://broker.plant.local:8883\"");
            return None;
        };
        let insecure = raw.insecure.as_ref().is_some_and(|i| *i.get_ref());
        let target = self.mqtt_url(url, insecure, &raw.name);
        let topic = match &raw.topic {
            None => "causeway/{gateway_id}/{type}".to_owned(),
            Some(t) => {
                let text = t.get_ref();
                let mut rest = text.as_str();
                let mut ok = !text.is_empty() && !text.contains(['+', '#', '\0']);
                while let Some(open) = rest.find('{') {
                    let Some(close) = rest[open..].find('}') else {
                        ok = false;
                        break;
                    };
                    let field = &rest[open + 1..open + close];
                    if !TOPIC_FIELDS.contains(&field) {
                        self.error(
                            format!("`{{{field}}}` is not a topic field"),
                            span(t),
                            "unknown field",
                        )
                        .hint(format!("topic fields: {{{}}}", TOPIC_FIELDS.join("}, {")));
                    }
                    rest = &rest[open + close + 1..];
                }
                if !ok {
                    self.error(
                        format!("`{text}` cannot be a topic to publish to"),
                        span(t),
                        "no wildcards, no empty topic",
                    )
                    .hint(
                        "e.g. topic = \"plant/{gateway_id}/{type}\"; + and # are for subscribing",
                    );
                }
                text.clone()
            }
        };
        let client_id = raw.client_id.as_ref().map(|c| {
            let id = c.get_ref();
            if id.is_empty() || id.len() > 64 {
                self.error("`client_id` must be 1 to 64 characters", span(c), "length");
            }
            if self.client_ids.insert(id.clone(), span(c)).is_some() {
                self.error(format!("two mqtt sinks use client_id `{id}`"), span(c), "second use")
                    .hint("a broker keeps one session per client id: the two would take it from each other forever");
            }
            id.clone()
        });
        let credentials = self.mqtt_credentials(
            raw.username.as_ref(),
            raw.password_file.as_ref(),
            raw.password_env.as_ref(),
            &raw.name,
        );
        let timeout = self.duration(
            raw.timeout.as_ref(),
            Duration::from_secs(10),
            SECOND..=5 * MINUTE,
            "timeout",
        );
        let (retry_initial, retry_max) = self.retry_delays(raw);
        let identity = self.mqtt_identity(raw.client_certificate.as_ref(), raw.client_key.as_ref());
        let (host, port, tls) = target?;
        if let (Some(ca), false) = (&raw.ca_file, tls) {
            self.warning("`ca_file` is not used with mqtt://", span(ca), "no TLS")
                .hint("use an mqtts:// URL, or remove ca_file");
        }
        if identity.is_some() && !tls {
            let at = raw
                .client_certificate
                .as_ref()
                .map_or_else(|| span(&raw.name), span);
            self.error("a client certificate needs mqtts://", at, "no TLS")
                .hint("use an mqtts:// URL to present the certificate");
        }
        let v5 = match raw.mqtt_version.as_ref().map(|v| v.get_ref().as_str()) {
            None | Some("3.1.1") => false,
            Some("5") => true,
            Some(other) => {
                let at = raw
                    .mqtt_version
                    .as_ref()
                    .map_or_else(|| span(&raw.name), span);
                self.error(
                    format!("mqtt_version = \"{other}\" is not one Causeway speaks"),
                    at,
                    "expected \"3.1.1\" or \"5\"",
                )
                .hint("\"5\" if the broker supports it: the event id travels as a user property too, and a refused message is heard rather than dropped");
                false
            }
        };
        Some(MqttSinkConfig {
            host,
            port,
            tls,
            ca_file: raw.ca_file.as_ref().map(|c| PathBuf::from(c.get_ref())),
            identity,
            topic,
            client_id,
            credentials,
            timeout,
            retry_initial,
            retry_max,
            v5,
        })
    }
}

impl Checker {
    /// An MQTT broker URL: host, port and whether TLS; `mqtt://` only with `insecure`.
    pub(crate) fn mqtt_url(
        &mut self,
        url: &Spanned<String>,
        insecure: bool,
        owner: &Spanned<String>,
    ) -> Option<(String, u16, bool)> {
        let name = owner.get_ref();
        let raw_name = owner;
        let text = url.get_ref().trim();
        let shown = crate::mask_userinfo(text);
        let mut target = None;
        match url::Url::parse(text) {
            Err(error) => {
                self.error(
                    format!("`{shown}` is not a valid URL ({error})"),
                    span(url),
                    "expected mqtts://host[:port]",
                );
            }
            Ok(parsed) => {
                let tls = match parsed.scheme() {
                    "mqtts" | "ssl" => true,
                    "mqtt" | "tcp" if insecure => false,
                    "mqtt" | "tcp" => {
                        self.error(format!("sink `{name}` would publish events unencrypted"), span(url), "plain mqtt://")
                            .hint("use an mqtts:// URL; only on a network you trust, set insecure = true to allow mqtt://");
                        false
                    }
                    other => {
                        self.error(
                            format!("`{shown}` is not an MQTT URL (scheme `{other}`)"),
                            span(url),
                            "expected mqtts://host[:port]",
                        );
                        false
                    }
                };
                if parsed.password().is_some() || !parsed.username().is_empty() {
                    self.error(
                        "a user or password is written inline in the URL",
                        span(raw_name),
                        "secret in the config file",
                    )
                    .hint(
                        "remove it from the URL; use username with password_file or password_env",
                    );
                }
                match parsed.host_str().filter(|h| !h.is_empty()) {
                    None => {
                        self.error(
                            format!("`{shown}` has no host"),
                            span(url),
                            "expected mqtts://host[:port]",
                        );
                    }
                    Some(host) => {
                        let port = parsed.port().unwrap_or(if tls { 8883 } else { 1883 });
                        if port == 0 {
                            self.error(
                                format!("`{shown}` names port 0"),
                                span(url),
                                "expected a port in 1..=65535",
                            );
                        }
                        let host = host.trim_matches(['[', ']']).to_owned();
                        target = Some((host, port, tls));
                    }
                }
                if !matches!(parsed.path(), "" | "/") {
                    self.error(
                        format!("`{shown}` has a path"),
                        span(url),
                        "the topic goes in `topic`",
                    )
                    .hint("write url = \"mqtts://host:8883\" and topic = \"plant/{gateway_id}/{type}\"");
                }
            }
        }
        target
    }

    /// A user name with its password's file or variable.
    pub(crate) fn mqtt_credentials(
        &mut self,
        username: Option<&Spanned<String>>,
        password_file: Option<&Spanned<String>>,
        password_env: Option<&Spanned<String>>,
        owner: &Spanned<String>,
    ) -> Option<(String, Secret)> {
        let secret = self.secret(password_env, password_file);
        match (username, secret) {
            (Some(user), Some(secret)) => Some((user.get_ref().clone(), secret)),
            (Some(user), None) => {
                self.error(format!("user `{}` has no password", user.get_ref()), span(user), "password missing")
                    .hint("add password_file = \"/etc/causeway/mqtt.pw\" or password_env = \"MQTT_PASSWORD\"");
                None
            }
            (None, Some(_)) => {
                self.error(
                    "a password is given without `username`",
                    span(owner),
                    "whose password?",
                );
                None
            }
            (None, None) => None,
        }
    }

    /// A client certificate with its key.
    pub(crate) fn mqtt_identity(
        &mut self,
        certificate: Option<&Spanned<String>>,
        key: Option<&Spanned<String>>,
    ) -> Option<(PathBuf, PathBuf)> {
        match (certificate, key) {
            (Some(c), Some(k)) => Some((PathBuf::from(c.get_ref()), PathBuf::from(k.get_ref()))),
            (None, None) => None,
            (Some(c), None) => {
                self.error("`client_certificate` needs `client_key`", span(c), "no key")
                    .hint("add client_key = \"/etc/causeway/mqtt-client.key.pem\"");
                None
            }
            (None, Some(k)) => {
                self.error(
                    "`client_key` needs `client_certificate`",
                    span(k),
                    "no certificate",
                );
                None
            }
        }
    }

    /// A password from `password_env` or `password_file` (not both).
    pub(crate) fn secret(
        &mut self,
        password_env: Option<&Spanned<String>>,
        password_file: Option<&Spanned<String>>,
    ) -> Option<Secret> {
        self.secret_pair(password_env, password_file, "password")
    }
}
