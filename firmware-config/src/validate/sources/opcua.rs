//! `kind = "opcua"`: endpoint, security, identity, reading mode and node-id tags.

use crate::validate::*;

impl Checker {
    pub(crate) fn opcua(&mut self, raw: &RawSource) -> Option<OpcUaConfig> {
        let source = raw.name.get_ref().clone();
        let endpoint = match &raw.endpoint {
            None => {
                self.error(
                    format!("opcua source `{source}` has no endpoint"),
                    span(&raw.name),
                    "this source",
                )
                .hint("add endpoint = \"opc.tcp://192.168.10.30:4840\"");
                String::new()
            }
            Some(e) => {
                self.ua_endpoint(e);
                e.get_ref().trim().to_owned()
            }
        };
        let (policy, mode) = self.ua_security(raw);
        let identity = self.ua_identity(raw);
        let pki_dir = raw.pki_dir.as_ref().map(|p| {
            if p.get_ref().trim().is_empty() {
                self.error("`pki_dir` is empty", span(p), "expected a folder")
                    .hint("leave it out for `pki` beside the buffer, or name a folder");
            }
            PathBuf::from(p.get_ref())
        });
        let timeout = self.duration(
            raw.timeout.as_ref(),
            10 * SECOND,
            Duration::from_millis(500)..=5 * MINUTE,
            "timeout",
        );
        let reading = self.ua_reading(raw);
        if raw.tags.is_empty() {
            self.warning(
                format!("source `{source}` has no tags"),
                span(&raw.name),
                "reads nothing",
            )
            .hint("add tags = [ { name = \"force\", node = \"ns=2;s=Press.Force\" } ] (`causeway opcua browse` lists them)");
        }
        let mut names = HashMap::new();
        let mut nodes: HashMap<UaNodeId, String> = HashMap::new();
        let mut tags = Vec::new();
        for tag in &raw.tags {
            self.unique("tag", &tag.name, &mut names);
            let key = format!("{source}.{}", tag.name.get_ref());
            match self.opcua_tag(tag, &reading) {
                Some(built) => {
                    if let Some(other) = nodes.get(&built.node) {
                        let at = tag.node.as_ref().map_or_else(|| span(&tag.name), span);
                        self.warning(
                            format!("tags `{other}` and `{}` read the same node", built.name),
                            at,
                            "read twice",
                        )
                        .hint("one tag per node is enough: rules may share a tag");
                    } else {
                        nodes.insert(built.node.clone(), built.name.clone());
                    }
                    self.tags.insert(key, TagFacts::opcua(built.data_type));
                    tags.push(built);
                }
                None => {
                    self.broken_tags.insert(key);
                }
            }
        }
        Some(OpcUaConfig {
            name: source,
            endpoint,
            policy,
            mode,
            identity,
            pki_dir,
            reading,
            timeout,
            tags,
        })
    }

    fn ua_endpoint(&mut self, e: &Spanned<String>) {
        let text = e.get_ref().trim();
        let shown = crate::mask_userinfo(text);
        let Some(rest) = text.strip_prefix("opc.tcp://") else {
            self.error(
                format!("`{shown}` is not an opc.tcp:// endpoint"),
                span(e),
                "expected opc.tcp://host:port",
            )
            .hint("OPC UA binary endpoints look like \"opc.tcp://192.168.10.30:4840\" (4840 is the usual port)");
            return;
        };
        let authority = rest.split('/').next().unwrap_or_default();
        if authority.contains('@') {
            self.error(
                "the endpoint holds a user name or password",
                span(e),
                "secret in the config file",
            )
            .hint(
                "remove it from the URL; use username = \"...\" with password_file or password_env",
            );
            return;
        }
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => (h, Some(p)),
            _ => (authority, None),
        };
        let port_ok = port.is_none_or(|p| p.parse::<u16>().is_ok_and(|p| p > 0));
        if host.is_empty() || !port_ok {
            self.error(
                format!("`{shown}` has no usable host and port"),
                span(e),
                "expected opc.tcp://host:port",
            )
            .hint("e.g. \"opc.tcp://192.168.10.30:4840\"; the port is 1..=65535");
        }
    }

    fn ua_security(&mut self, raw: &RawSource) -> (UaPolicy, UaMode) {
        let names: Vec<&str> = UaPolicy::ALL.iter().map(|(n, _)| *n).collect();
        let policy = match &raw.security_policy {
            None => UaPolicy::None,
            Some(p) => {
                let text = p.get_ref().trim();
                let found = UaPolicy::ALL.iter().find(|(n, _)| {
                    n.eq_ignore_ascii_case(text)
                        || n.replace('_', "")
                            .eq_ignore_ascii_case(&text.replace('_', ""))
                });
                match found {
                    Some((_, policy)) => *policy,
                    None => {
                        let hint = if matches!(text, "Basic128Rsa15" | "Basic256") {
                            format!(
                                "{text} is deprecated by the OPC Foundation and not offered; use Basic256Sha256 or a newer policy"
                            )
                        } else {
                            match closest(text, names.iter().copied()) {
                                Some(n) => {
                                    format!("did you mean \"{n}\"? Policies: {}", names.join(", "))
                                }
                                None => format!("policies: {}", names.join(", ")),
                            }
                        };
                        self.error(
                            format!("unknown security policy `{text}`"),
                            span(p),
                            "unknown policy",
                        )
                        .hint(hint);
                        UaPolicy::None
                    }
                }
            }
        };
        let mode = match (&raw.security_mode, policy) {
            (None, UaPolicy::None) => UaMode::None,
            (None, _) => UaMode::SignAndEncrypt,
            (Some(m), _) => {
                let text = m.get_ref().trim();
                let mode = match text.to_ascii_lowercase().as_str() {
                    "none" => Some(UaMode::None),
                    "sign" => Some(UaMode::Sign),
                    "signandencrypt" | "sign_and_encrypt" => Some(UaMode::SignAndEncrypt),
                    _ => None,
                };
                match (mode, policy) {
                    (None, _) => {
                        self.error(
                            format!("unknown security mode `{text}`"),
                            span(m),
                            "expected None, Sign or SignAndEncrypt",
                        );
                        UaMode::None
                    }
                    (Some(UaMode::None), UaPolicy::None) => UaMode::None,
                    (Some(UaMode::None), p) => {
                        self.error(
                            format!("security mode None cannot go with policy {}", p.name()),
                            span(m),
                            "nothing would be signed",
                        )
                        .hint("use security_mode = \"SignAndEncrypt\" (or \"Sign\"), or security_policy = \"None\" on a network you trust");
                        UaMode::None
                    }
                    (Some(_), UaPolicy::None) => {
                        self.error(
                            format!("security mode {text} needs a security policy"),
                            span(m),
                            "policy None signs nothing",
                        )
                        .hint("add security_policy = \"Basic256Sha256\" (or Aes128_Sha256_RsaOaep, Aes256_Sha256_RsaPss)");
                        UaMode::None
                    }
                    (Some(mode), _) => mode,
                }
            }
        };
        (policy, mode)
    }

    fn ua_identity(&mut self, raw: &RawSource) -> UaIdentity {
        if raw.password.is_some() {
            // Pointed at the source's name, not the value: the rendered diagnostic would print
            // the password into terminals and CI logs.
            self.error(
                format!("source `{}` has a password written inline (`password = ...`)", raw.name.get_ref()),
                span(&raw.name),
                "secret in the config file",
            )
                .hint("config files get copied, committed and mailed: put it in a file (password_file = \"/etc/causeway/ua.pw\") or an environment variable (password_env = \"UA_PASSWORD\")");
        }
        let secret = self.secret(raw.password_env.as_ref(), raw.password_file.as_ref());
        let cert = (&raw.user_certificate, &raw.user_key);
        if raw.username.is_some() && (cert.0.is_some() || cert.1.is_some()) {
            let at = cert
                .0
                .as_ref()
                .or(cert.1.as_ref())
                .map_or_else(|| span(&raw.name), span);
            self.error(
                "a user name and a user certificate are both given",
                at,
                "one identity per session",
            )
            .hint("keep username + password_file, or user_certificate + user_key");
            return UaIdentity::Anonymous;
        }
        match (&raw.username, secret, cert) {
            (None, None, (None, None)) => UaIdentity::Anonymous,
            (Some(user), Some(password), (None, None)) => UaIdentity::UserName {
                user: user.get_ref().clone(),
                password,
            },
            (Some(user), None, _) => {
                if raw.password.is_none() {
                    self.error(
                        format!("user `{}` has no password", user.get_ref()),
                        span(user),
                        "password missing",
                    )
                    .hint("add password_file = \"/etc/causeway/ua.pw\" or password_env = \"UA_PASSWORD\"");
                }
                UaIdentity::Anonymous
            }
            (None, Some(_), (None, None)) => {
                let at = raw
                    .password_env
                    .as_ref()
                    .or(raw.password_file.as_ref())
                    .map_or_else(|| span(&raw.name), span);
                self.error(
                    "a password is given without `username`",
                    at,
                    "whose password?",
                )
                .hint("add username = \"...\"");
                UaIdentity::Anonymous
            }
            (None, None, (Some(c), Some(k))) => UaIdentity::X509 {
                certificate: PathBuf::from(c.get_ref()),
                key: PathBuf::from(k.get_ref()),
            },
            (None, None, (Some(c), None)) => {
                self.error(
                    "`user_certificate` needs `user_key`",
                    span(c),
                    "no private key",
                )
                .hint("add user_key = \"/etc/causeway/user.key.pem\"");
                UaIdentity::Anonymous
            }
            (None, None, (None, Some(k))) => {
                self.error(
                    "`user_key` needs `user_certificate`",
                    span(k),
                    "no certificate",
                );
                UaIdentity::Anonymous
            }
            (_, Some(_), (c, k)) => {
                let at = c
                    .as_ref()
                    .or(k.as_ref())
                    .map_or_else(|| span(&raw.name), span);
                self.error(
                    "a password and a user certificate are both given",
                    at,
                    "one identity per session",
                )
                .hint("keep username + password_file, or user_certificate + user_key");
                UaIdentity::Anonymous
            }
        }
    }

    fn ua_reading(&mut self, raw: &RawSource) -> UaReading {
        let mode = raw.mode.as_ref().map(|m| (m.get_ref().trim(), span(m)));
        match mode {
            None | Some(("subscribe", _)) => {
                if let Some(p) = &raw.poll {
                    self.error(
                        "`poll` applies to mode = \"poll\"",
                        span(p),
                        "not used by subscriptions",
                    )
                    .hint("set publishing_interval (and sampling_interval) for subscriptions, or add mode = \"poll\"");
                }
                let publishing = self.duration(
                    raw.publishing_interval.as_ref(),
                    SECOND,
                    Duration::from_millis(10)..=HOUR,
                    "publishing_interval",
                );
                let sampling = self.duration(
                    raw.sampling_interval.as_ref(),
                    publishing,
                    Duration::from_millis(10)..=HOUR,
                    "sampling_interval",
                );
                let queue_size = match &raw.queue_size {
                    None => 10,
                    Some(q) => match u32::try_from(*q.get_ref()) {
                        Ok(n) if (1..=10_000).contains(&n) => n,
                        _ => {
                            self.error(
                                format!("queue_size = {} is out of range", q.get_ref()),
                                span(q),
                                "expected 1..=10000",
                            );
                            10
                        }
                    },
                };
                UaReading::Subscribe {
                    publishing,
                    sampling,
                    queue_size,
                }
            }
            Some(("poll", _)) => {
                for (field, set) in [
                    (
                        "publishing_interval",
                        raw.publishing_interval.as_ref().map(span),
                    ),
                    (
                        "sampling_interval",
                        raw.sampling_interval.as_ref().map(span),
                    ),
                    ("queue_size", raw.queue_size.as_ref().map(span)),
                ] {
                    if let Some(at) = set {
                        self.error(
                            format!("`{field}` applies to subscriptions"),
                            at,
                            "not used with mode = \"poll\"",
                        )
                        .hint("remove it, or drop mode = \"poll\" to subscribe");
                    }
                }
                UaReading::Poll {
                    interval: self.duration(
                        raw.poll.as_ref(),
                        SECOND,
                        Duration::from_millis(10)..=HOUR,
                        "poll",
                    ),
                }
            }
            Some((other, at)) => {
                self.error(
                    format!("unknown mode `{other}`"),
                    at,
                    "expected \"subscribe\" or \"poll\"",
                )
                .hint("subscribe (the default) lets the server report changes; poll reads every node every `poll`");
                UaReading::Poll { interval: SECOND }
            }
        }
    }

    fn opcua_tag(&mut self, raw: &RawTag, reading: &UaReading) -> Option<OpcUaTagConfig> {
        let name = raw.name.get_ref().clone();
        self.foreign("tag", "opcua", &raw.kind_fields(), TAG_FIELDS);
        let Some(node_text) = &raw.node else {
            self.error(
                format!("tag `{name}` has no node"),
                span(&raw.name),
                "which node?",
            )
            .hint("add node = \"ns=2;s=Press.Force\" (`causeway opcua browse <endpoint> --toml` prints them)");
            return None;
        };
        let Some(node) = UaNodeId::parse(node_text.get_ref()) else {
            self.error(
                format!("`{}` is not an OPC UA node id", node_text.get_ref()),
                span(node_text),
                "expected ns=<n>;<i|s|g|b>=<id>",
            )
            .hint("write it as the server shows it, e.g. \"ns=2;s=Press.Force\", \"ns=3;i=1001\", \"i=2258\" or \"ns=1;g=72962b91-fa75-4ae6-8d28-b404dc7daf63\"");
            return None;
        };
        let data_type = match &raw.data_type {
            None => None,
            Some(t) => Some(self.value_type(t)?),
        };
        let deadband = match &raw.deadband {
            None => None,
            Some(d) => {
                if matches!(reading, UaReading::Poll { .. }) {
                    self.error(
                        "`deadband` applies to subscriptions",
                        span(d),
                        "not used with mode = \"poll\"",
                    )
                    .hint("the server applies the deadband to monitored items; put it on the measurement rule instead");
                    return None;
                }
                if matches!(data_type, Some(UaType::Bool | UaType::String)) {
                    self.error(
                        "`deadband` applies to numeric tags",
                        span(d),
                        "not a number",
                    );
                    return None;
                }
                Some(self.deadband(d, &None)?)
            }
        };
        Some(OpcUaTagConfig {
            name,
            node,
            data_type,
            deadband,
        })
    }
}

impl Checker {
    /// A declared tag type of an opcua or mqtt tag.
    pub(crate) fn value_type(&mut self, t: &Spanned<String>) -> Option<UaType> {
        let text = t.get_ref().trim();
        if let Some((_, ty)) = UaType::ALL.iter().find(|(n, _)| *n == text) {
            return Some(*ty);
        }
        let all: Vec<&str> = UaType::ALL.iter().map(|(n, _)| *n).collect();
        let hint = closest(text, all.iter().copied()).map_or_else(
            || format!("types are {}", all.join(", ")),
            |n| format!("did you mean \"{n}\"? Types are {}", all.join(", ")),
        );
        self.error(format!("unknown type `{text}`"), span(t), "unknown type")
            .hint(hint);
        None
    }
}
