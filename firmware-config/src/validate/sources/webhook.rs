//! `kind = "webhook"`: an HTTPS endpoint where a system that can only push (an MES, a SCADA)
//! posts JSON; each post is read into tags like an MQTT JSON message.

use crate::validate::*;

/// Default cap on a post's body.
const DEFAULT_MAX_BODY: u64 = 64 << 10;

impl Checker {
    pub(crate) fn webhook(&mut self, raw: &RawSource) -> Option<WebhookSourceConfig> {
        let source = raw.name.get_ref().clone();
        let listen = match &raw.listen {
            None => {
                self.error(
                    format!("webhook source `{source}` has no listen address"),
                    span(&raw.name),
                    "this source",
                )
                .hint("add listen = \"0.0.0.0:8443\" (the address and port to take posts on)");
                None
            }
            Some(l) => match l.get_ref().parse::<std::net::SocketAddr>() {
                Ok(addr) if addr.port() != 0 => {
                    if self.listens.insert(addr.port(), span(l)).is_some() {
                        self.error(
                            format!("two webhook sources listen on port {}", addr.port()),
                            span(l),
                            "second use",
                        )
                        .hint("one port takes one source's posts: give each source its own port (or one source more tags)");
                    }
                    Some(addr)
                }
                Ok(_) => {
                    self.error(
                        "listen names port 0",
                        span(l),
                        "expected a port in 1..=65535",
                    );
                    None
                }
                Err(_) => {
                    self.error(
                        format!("listen = \"{}\" is not an address and port", l.get_ref()),
                        span(l),
                        "expected ip:port",
                    )
                    .hint("e.g. \"0.0.0.0:8443\" (every interface) or \"192.168.10.5:8443\"; a host name is not taken");
                    None
                }
            },
        };
        let path = match &raw.path {
            None => "/".to_owned(),
            Some(p) => {
                let text = p.get_ref();
                // Compared with the request's path as sent: only characters a client sends
                // as they are.
                let plain = text
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"/-._~!$&'()*+,;=:@".contains(&b));
                if !text.starts_with('/') || !plain {
                    self.error(
                        format!("path = \"{text}\" is not a plain URL path"),
                        span(p),
                        "expected /letters-digits/-._~",
                    )
                    .hint("e.g. \"/mes/counts\": ASCII letters, digits and - . _ ~ / only (no query, spaces, % or non-ASCII)");
                }
                text.clone()
            }
        };
        let insecure = raw.insecure.as_ref().is_some_and(|i| *i.get_ref());
        let tls = match (&raw.certificate, &raw.key) {
            (Some(c), Some(_)) if insecure => {
                self.error(
                    "insecure = true with a certificate",
                    span(c),
                    "TLS or not?",
                )
                .hint("remove insecure to serve https with this certificate, or remove certificate and key for plain http");
                None
            }
            (Some(c), Some(k)) => Some((PathBuf::from(c.get_ref()), PathBuf::from(k.get_ref()))),
            (Some(c), None) => {
                self.error("`certificate` needs `key`", span(c), "no key")
                    .hint("add key = \"/etc/causeway/webhook.key.pem\"");
                None
            }
            (None, Some(k)) => {
                self.error("`key` needs `certificate`", span(k), "no certificate");
                None
            }
            (None, None) => {
                if insecure {
                    self.warning(
                        format!("webhook source `{source}` takes posts over plain http"),
                        span(&raw.name),
                        "insecure = true",
                    )
                    .hint("keys and bodies travel in clear: only on a network you trust, and prefer an HMAC signature to an API key there");
                }
                if !insecure {
                    self.error(
                        format!("webhook source `{source}` would take posts unencrypted"),
                        span(&raw.name),
                        "no certificate",
                    )
                    .hint("add certificate = \"/etc/causeway/webhook.pem\" and key = \"/etc/causeway/webhook.key.pem\"; only on a network you trust, insecure = true allows plain http");
                }
                None
            }
        };
        let auth = match &raw.auth {
            None => {
                self.error(
                    format!("webhook source `{source}` has no auth"),
                    span(&raw.name),
                    "anyone could post",
                )
                .hint("add auth = { hmac_header = \"X-Signature-256\", hmac_secret_file = \"/etc/causeway/webhook.secret\", hmac_prefix = \"sha256=\" } or { api_key_header = \"X-API-Key\", api_key_file = \"...\" }");
                None
            }
            Some(a) => self.webhook_auth(a),
        };
        let max_body = self.size(
            raw.max_body.as_ref(),
            DEFAULT_MAX_BODY,
            16..=(1 << 20),
            "max_body",
        );
        if raw.tags.is_empty() {
            self.warning(
                format!("source `{source}` has no tags"),
                span(&raw.name),
                "reads nothing",
            )
            .hint("add tags = [ { name = \"parts\", value = \"/counts/total\", type = \"u32\" } ]");
        }
        let mut names = HashMap::new();
        let mut tags = Vec::new();
        for tag in &raw.tags {
            self.unique("tag", &tag.name, &mut names);
            self.foreign("tag", "webhook", &tag.kind_fields(), TAG_FIELDS);
            let key = format!("{source}.{}", tag.name.get_ref());
            match self.webhook_tag(tag) {
                Some(built) => {
                    self.tags.insert(key, TagFacts::opcua(built.data_type));
                    tags.push(built);
                }
                None => {
                    self.broken_tags.insert(key);
                }
            }
        }
        Some(WebhookSourceConfig {
            name: source,
            listen: listen?,
            path,
            tls: if insecure && raw.certificate.is_none() {
                None
            } else {
                Some(tls?)
            },
            auth: auth?,
            max_body: usize::try_from(max_body).unwrap_or(usize::MAX),
            tags,
        })
    }

    fn webhook_auth(&mut self, raw: &Spanned<RawWebhookAuth>) -> Option<WebhookAuth> {
        let auth = raw.get_ref();
        for (field, value, fix) in [
            ("api_key", &auth.api_key, "api_key_file or api_key_env"),
            (
                "hmac_secret",
                &auth.hmac_secret,
                "hmac_secret_file or hmac_secret_env",
            ),
        ] {
            if let Some(v) = value {
                self.error(
                    format!("`{field}` is written inline in the config file"),
                    span(v),
                    "secret in the config file",
                )
                .hint(format!(
                    "put it in a file or an environment variable: {fix}"
                ));
                return None;
            }
        }
        let header = |this: &mut Self, h: &Spanned<String>| {
            let name = h.get_ref();
            if !is_header_name(name) {
                this.error(
                    format!("`{name}` is not a header name"),
                    span(h),
                    "letters, digits and -",
                );
            }
            name.clone()
        };
        match (&auth.api_key_header, &auth.hmac_header) {
            (Some(_), Some(h)) => {
                self.error(
                    "both an API key and an HMAC signature are set",
                    span(h),
                    "one or the other",
                )
                .hint("an HMAC signature also proves the body was not changed: prefer it when the sender can sign");
                None
            }
            (Some(h), None) => {
                if let Some(p) = &auth.hmac_prefix {
                    self.error(
                        "`hmac_prefix` is for an HMAC signature",
                        span(p),
                        "not used",
                    );
                }
                let header = header(self, h);
                let key = self.named_secret(
                    auth.api_key_env.as_ref(),
                    auth.api_key_file.as_ref(),
                    "api_key",
                    span(h),
                )?;
                Some(WebhookAuth::ApiKey { header, key })
            }
            (None, Some(h)) => {
                let header = header(self, h);
                let secret = self.named_secret(
                    auth.hmac_secret_env.as_ref(),
                    auth.hmac_secret_file.as_ref(),
                    "hmac_secret",
                    span(h),
                )?;
                Some(WebhookAuth::Hmac {
                    header,
                    secret,
                    prefix: auth
                        .hmac_prefix
                        .as_ref()
                        .map(|p| p.get_ref().clone())
                        .unwrap_or_default(),
                })
            }
            (None, None) => {
                self.error(
                    "auth names neither api_key_header nor hmac_header",
                    span(raw),
                    "how is a post checked?",
                )
                .hint("add hmac_header = \"X-Signature-256\" with hmac_secret_file, or api_key_header = \"X-API-Key\" with api_key_file");
                None
            }
        }
    }

    /// A secret from `<field>_env` or `<field>_file` (exactly one).
    fn named_secret(
        &mut self,
        env: Option<&Spanned<String>>,
        file: Option<&Spanned<String>>,
        field: &str,
        at: Range<usize>,
    ) -> Option<Secret> {
        match (env, file) {
            (None, None) => {
                self.error(
                    format!("no `{field}_file` or `{field}_env`"),
                    at,
                    "where is it?",
                )
                .hint(format!(
                    "add {field}_file = \"/etc/causeway/webhook.secret\" (or {field}_env)"
                ));
                None
            }
            _ => self.secret_pair(env, file, field),
        }
    }

    fn webhook_tag(&mut self, raw: &RawTag) -> Option<WebhookTagConfig> {
        let value = self.json_pointer("value", &raw.value).unwrap_or_default();
        let timestamp = self.json_pointer("timestamp", &raw.timestamp);
        let quality = self.json_pointer("quality", &raw.quality);
        let data_type = match &raw.data_type {
            None => None,
            Some(t) => Some(self.value_type(t)?),
        };
        Some(WebhookTagConfig {
            name: raw.name.get_ref().clone(),
            value,
            timestamp,
            quality,
            data_type,
        })
    }
}
