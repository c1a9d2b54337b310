//! `kind = "https"`: the URL, the credentials, the timeouts.

use crate::validate::*;

impl Checker {
    pub(crate) fn https(&mut self, raw: &RawSink) -> Option<HttpsSinkConfig> {
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
        let shown = crate::raw::mask_query(&crate::mask_userinfo(text));
        let insecure = raw.insecure.as_ref().is_some_and(|i| *i.get_ref());
        match url::Url::parse(text) {
            Err(error) => {
                self.error(
                    format!("`{shown}` is not a valid URL ({error})"),
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
                            format!("`{shown}` is not an http(s) URL (scheme `{other}`)"),
                            span(url),
                            "expected https://host/path",
                        );
                    }
                }
                let keys: Vec<String> = parsed
                    .query_pairs()
                    .map(|(k, _)| k.into_owned())
                    .filter(|k| crate::raw::credential_header(k))
                    .collect();
                if !keys.is_empty() {
                    self.warning(
                        format!("the url's query carries a credential (`{}`)", keys.join("`, `")),
                        span(url),
                        "secret in the URL",
                    )
                    .hint("Causeway's logs show the URL without its query, but the receiver's and every proxy's access logs keep it: if the receiver takes the key in a header, use auth = { api_key_header = \"X-API-Key\", api_key_file = \"/etc/causeway/erp.key\" }");
                }
                if parsed.password().is_some() {
                    self.error("a password is written inline in the URL", span(&raw.name), "secret in the config file")
                        .hint("remove it from the URL; use auth = { bearer_file = \"/etc/causeway/erp.token\" } or bearer_env");
                }
                if parsed.host_str().is_none_or(str::is_empty) {
                    self.error(
                        format!("`{shown}` has no host"),
                        span(url),
                        "expected https://host/path",
                    );
                }
                if parsed.port() == Some(0) {
                    self.error(
                        format!("`{shown}` names port 0"),
                        span(url),
                        "expected a port in 1..=65535",
                    );
                }
            }
        }
        let auth = raw
            .auth
            .as_ref()
            .and_then(|a| self.auth(a, &raw.name, insecure));
        let identity = self.mqtt_identity(raw.client_certificate.as_ref(), raw.client_key.as_ref());
        let timeout = self.duration(
            raw.timeout.as_ref(),
            Duration::from_secs(10),
            Duration::from_millis(100)..=5 * MINUTE,
            "timeout",
        );
        let (retry_initial, retry_max) = self.retry_delays(raw);
        let method = self.method(raw);
        let headers = self.headers(raw);
        let body = self.body(raw);
        Some(HttpsSinkConfig {
            url: text.to_owned(),
            insecure,
            timeout,
            ca_file: raw.ca_file.as_ref().map(|c| PathBuf::from(c.get_ref())),
            auth,
            identity,
            method,
            headers,
            body,
            retry_initial,
            retry_max,
        })
    }

    /// `method`: POST (default), PUT or PATCH, any case.
    fn method(&mut self, raw: &RawSink) -> String {
        let Some(m) = &raw.method else {
            return "POST".to_owned();
        };
        let upper = m.get_ref().trim().to_ascii_uppercase();
        if ["POST", "PUT", "PATCH"].contains(&upper.as_str()) {
            return upper;
        }
        self.error(
            format!("method `{}` cannot deliver events", m.get_ref()),
            span(m),
            "expected POST, PUT or PATCH",
        )
        .hint("events are sent in the request body: POST (default), PUT or PATCH");
        "POST".to_owned()
    }

    /// `headers`: fixed names and values; none the sink sets itself, none that holds a secret.
    fn headers(&mut self, raw: &RawSink) -> Vec<(String, String)> {
        let Some(headers) = &raw.headers else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for (name, value) in headers.get_ref() {
            let lower = name.to_ascii_lowercase();
            if !is_header_name(name) {
                self.error(
                    format!("`{name}` is not a header name"),
                    span(headers),
                    "in these headers",
                )
                .hint("a header name is letters, digits and - (e.g. \"X-Plant\")");
                continue;
            }
            let owned = match lower.as_str() {
                "content-type" => Some("set content_type instead"),
                "authorization" => Some("set auth instead: the secret then stays out of the file"),
                "idempotency-key" => Some("the sink sets it: the ids of the request's events"),
                "content-length" | "host" | "transfer-encoding" | "connection" => {
                    Some("the HTTP client sets it")
                }
                _ => None,
            };
            if let Some(fix) = owned {
                self.error(
                    format!("header `{name}` is set by the sink"),
                    span(value),
                    "not settable here",
                )
                .hint(fix);
                continue;
            }
            if crate::raw::credential_header(name) {
                self.error(
                    format!("header `{name}` looks like a credential written inline"),
                    span(value),
                    "secret in the config file",
                )
                .hint(format!(
                    "use auth = {{ api_key_header = \"{name}\", api_key_file = \"/etc/causeway/erp.key\" }} (or api_key_env)"
                ));
                continue;
            }
            let text = value.get_ref();
            if text.bytes().any(|b| b.is_ascii_control() && b != b'\t') || !text.is_ascii() {
                self.error(
                    format!("the value of header `{name}` holds characters a header cannot carry"),
                    span(value),
                    "control or non-ASCII characters",
                );
                continue;
            }
            out.push((name.clone(), text.clone()));
        }
        out
    }

    /// `format`, `template`/`template_file`, `per`, `content_type`.
    fn body(&mut self, raw: &RawSink) -> Body {
        let templated = raw.template.is_some() || raw.template_file.is_some();
        let format = raw.format.as_ref().map(|f| (f.get_ref().as_str(), span(f)));
        match format {
            None | Some(("template" | "cloudevents", _)) => {}
            Some((other, at)) => {
                let hint = match closest(other, ["cloudevents", "template"]) {
                    Some(near) => {
                        format!("did you mean \"{near}\"? Formats: cloudevents, template")
                    }
                    None => {
                        "formats: cloudevents (a JSON array of CloudEvents), template".to_owned()
                    }
                };
                self.error(format!("unknown format `{other}`"), at, "unknown format")
                    .hint(hint);
                return Body::CloudEvents;
            }
        }
        if let Some(("cloudevents", at)) = format.clone()
            && templated
        {
            self.error(
                "a template is set but format = \"cloudevents\"",
                at,
                "the body is the CloudEvents array",
            )
            .hint("remove the template, or set format = \"template\"");
            return Body::CloudEvents;
        }
        if !templated {
            if let Some(("template", at)) = format {
                self.error(
                    format!(
                        "sink `{}` has format = \"template\" but no template",
                        raw.name.get_ref()
                    ),
                    at,
                    "no template",
                )
                .hint(
                    "add template_file = \"templates/erp.json.j2\" (see docs/examples/templates)",
                );
            }
            for (field, value) in [
                ("per", raw.per.as_ref().map(span)),
                ("content_type", raw.content_type.as_ref().map(span)),
            ] {
                if let Some(at) = value {
                    self.error(
                        format!("{field} is only for a template body"),
                        at,
                        "the CloudEvents body is a batch of application/cloudevents-batch+json",
                    )
                    .hint("add a template, or remove this");
                }
            }
            return Body::CloudEvents;
        }
        let source = match (&raw.template, &raw.template_file) {
            (Some(inline), Some(file)) => {
                self.error(
                    "both template and template_file are set",
                    span(file),
                    "one or the other",
                )
                .hint("keep the one you mean");
                TemplateSource::Inline(inline.get_ref().clone())
            }
            (Some(inline), None) => TemplateSource::Inline(inline.get_ref().clone()),
            (None, Some(file)) => TemplateSource::File(PathBuf::from(file.get_ref())),
            (None, None) => return Body::CloudEvents,
        };
        let per_event = match &raw.per {
            None => false,
            Some(p) => match p.get_ref().as_str() {
                "batch" => false,
                "event" => true,
                other => {
                    self.error(
                        format!("per = \"{other}\" is neither batch nor event"),
                        span(p),
                        "expected \"batch\" or \"event\"",
                    )
                    .hint("\"event\": one request per event; \"batch\": one per batch (the template sees `events`)");
                    false
                }
            },
        };
        let content_type = match &raw.content_type {
            None => "application/json".to_owned(),
            Some(c) => {
                let text = c.get_ref().trim();
                let essence = text.split(';').next().unwrap_or_default().trim();
                let valid = essence
                    .split_once('/')
                    .is_some_and(|(t, s)| !t.is_empty() && !s.is_empty() && !s.contains('/'))
                    && text.is_ascii()
                    && !text.bytes().any(|b| b.is_ascii_control());
                if !valid {
                    self.error(
                        format!("content_type = \"{text}\" is not a media type"),
                        span(c),
                        "expected type/subtype",
                    )
                    .hint("e.g. \"application/json\", \"text/xml; charset=utf-8\", \"application/x-www-form-urlencoded\"");
                }
                text.to_owned()
            }
        };
        Body::Template(BodyTemplate {
            source,
            per_event,
            content_type,
        })
    }

    pub(crate) fn auth(
        &mut self,
        raw: &Spanned<RawAuth>,
        sink: &Spanned<String>,
        insecure: bool,
    ) -> Option<HttpAuth> {
        let auth = raw.get_ref();
        for (field, value) in [
            ("bearer", &auth.bearer),
            ("token", &auth.token),
            ("password", &auth.password),
            ("api_key", &auth.api_key),
            ("client_secret", &auth.client_secret),
        ] {
            if value.is_some() {
                // Pointed at the sink's name, not the value: the rendered diagnostic would
                // print the secret into terminals and CI logs.
                let hint = match field {
                    "password" => {
                        "config files get copied, committed and mailed: put the password in a file (password_file = \"/etc/causeway/erp.password\") or an environment variable (password_env = \"ERP_PASSWORD\")"
                    }
                    "api_key" => {
                        "config files get copied, committed and mailed: put the key in a file (api_key_file = \"/etc/causeway/erp.key\") or an environment variable (api_key_env = \"ERP_API_KEY\")"
                    }
                    "client_secret" => {
                        "config files get copied, committed and mailed: put the secret in a file (client_secret_file = \"/etc/causeway/erp.secret\") or an environment variable (client_secret_env = \"ERP_CLIENT_SECRET\")"
                    }
                    _ => {
                        "config files get copied, committed and mailed: put the token in a file (bearer_file = \"/etc/causeway/erp.token\") or an environment variable (bearer_env = \"ERP_TOKEN\")"
                    }
                };
                self.error(
                    format!(
                        "sink `{}` has a secret written inline in `auth.{field}`",
                        sink.get_ref()
                    ),
                    span(sink),
                    "secret in the config file",
                )
                .hint(hint);
            }
        }
        let bearer = self.secret_pair(
            auth.bearer_env.as_ref(),
            auth.bearer_file.as_ref(),
            "bearer",
        );
        let password = self.secret_pair(
            auth.password_env.as_ref(),
            auth.password_file.as_ref(),
            "password",
        );
        let key = self.secret_pair(
            auth.api_key_env.as_ref(),
            auth.api_key_file.as_ref(),
            "api_key",
        );
        let mut kinds: Vec<HttpAuth> = Vec::new();
        if let Some(secret) = bearer {
            kinds.push(match secret {
                Secret::Env(v) => HttpAuth::BearerEnv(v),
                Secret::File(f) => HttpAuth::BearerFile(f),
            });
        }
        match (&auth.username, password) {
            (Some(user), Some(password)) => {
                let name = user.get_ref();
                if name.is_empty() || name.contains(':') || name.chars().any(char::is_control) {
                    self.error(
                        "`auth.username` must be non-empty, without `:` or control characters",
                        span(user),
                        "not a basic-auth user name",
                    );
                } else {
                    kinds.push(HttpAuth::Basic {
                        username: name.clone(),
                        password,
                    });
                }
            }
            (Some(_), None) if auth.password_env.is_some() || auth.password_file.is_some() => {}
            (Some(user), None) => {
                self.error("`auth.username` needs its password", span(user), "no password")
                    .hint("add password_file = \"/etc/causeway/erp.password\" or password_env = \"ERP_PASSWORD\"");
            }
            (None, Some(_)) => {
                self.error(
                    "an `auth` password needs `username`",
                    span(raw),
                    "no user name",
                )
                .hint("add username = \"causeway\"");
            }
            (None, None) => {}
        }
        match (&auth.api_key_header, key) {
            (Some(header), Some(key)) => {
                let name = header.get_ref();
                if is_header_name(name) {
                    kinds.push(HttpAuth::ApiKey {
                        header: name.clone(),
                        key,
                    });
                } else {
                    self.error(
                        format!("`{name}` is not an HTTP header name"),
                        span(header),
                        "letters, digits and -_. only, e.g. X-API-Key",
                    );
                }
            }
            (Some(_), None) if auth.api_key_env.is_some() || auth.api_key_file.is_some() => {}
            (Some(header), None) => {
                self.error(
                    "`auth.api_key_header` needs the key",
                    span(header),
                    "no key",
                )
                .hint(
                    "add api_key_file = \"/etc/causeway/erp.key\" or api_key_env = \"ERP_API_KEY\"",
                );
            }
            (None, Some(_)) => {
                self.error(
                    "an `auth` API key needs `api_key_header`",
                    span(raw),
                    "no header",
                )
                .hint("add api_key_header = \"X-API-Key\" (the header the receiver reads)");
            }
            (None, None) => {}
        }
        let client_secret = self.secret_pair(
            auth.client_secret_env.as_ref(),
            auth.client_secret_file.as_ref(),
            "client_secret",
        );
        let secret_given = auth.client_secret_env.is_some() || auth.client_secret_file.is_some();
        match (&auth.token_url, &auth.client_id, client_secret) {
            (Some(url), Some(id), Some(secret)) => {
                let text = url.get_ref().trim();
                match url::Url::parse(text) {
                    Ok(u) if !u.username().is_empty() || u.password().is_some() => {
                        self.error(
                            "`auth.token_url` carries credentials",
                            span(raw),
                            "secret in the config file",
                        )
                        .hint("remove user:password@ from token_url; the client id and secret go in client_id and client_secret_file");
                    }
                    Ok(u) if u.scheme() == "https" || (u.scheme() == "http" && insecure) => {
                        if id.get_ref().is_empty() || id.get_ref().contains(':') {
                            self.error(
                                "`auth.client_id` must be non-empty, without `:`",
                                span(id),
                                "not a client id",
                            );
                        } else {
                            kinds.push(HttpAuth::OAuth2 {
                                token_url: text.to_owned(),
                                client_id: id.get_ref().clone(),
                                secret,
                                scope: auth.scope.as_ref().map(|s| s.get_ref().clone()),
                                audience: auth.audience.as_ref().map(|s| s.get_ref().clone()),
                            });
                        }
                    }
                    Ok(u) => {
                        self.error(
                            format!("the token endpoint's scheme `{}` is not https", u.scheme()),
                            span(url),
                            "expected https://login.example.com/oauth2/token",
                        )
                        .hint("the client secret travels to it: use https (http only with the sink's insecure = true)");
                    }
                    Err(error) => {
                        self.error(
                            format!("`auth.token_url` is not a valid URL ({error})"),
                            span(url),
                            "expected https://host/path",
                        );
                    }
                }
            }
            (None, None, None) if !secret_given => {}
            (Some(_), Some(_), None) if secret_given => {}
            _ => {
                self.error(
                    "OAuth2 client credentials need `token_url`, `client_id` and `client_secret_file` or `client_secret_env`",
                    span(raw),
                    "incomplete",
                )
                .hint("auth = { token_url = \"https://login.example.com/oauth2/token\", client_id = \"causeway\", client_secret_file = \"/etc/causeway/erp.secret\" }");
            }
        }
        if (auth.scope.is_some() || auth.audience.is_some()) && auth.token_url.is_none() {
            let at = auth
                .scope
                .as_ref()
                .or(auth.audience.as_ref())
                .map_or_else(|| span(raw), span);
            self.error(
                "`scope` and `audience` belong to OAuth2 (`token_url`)",
                at,
                "without token_url",
            );
        }
        if kinds.len() > 1 {
            self.error("`auth` names more than one kind of credential", span(raw), "choose one")
                .hint("one of: bearer_env/bearer_file; username with password_env/password_file; api_key_header with api_key_env/api_key_file; token_url, client_id and client_secret_env/client_secret_file");
            return None;
        }
        let chosen = kinds.pop();
        if chosen.is_none()
            && [&auth.bearer, &auth.token, &auth.password, &auth.api_key]
                .iter()
                .all(|v| v.is_none())
            && auth.username.is_none()
            && auth.api_key_header.is_none()
            && auth.token_url.is_none()
            && auth.client_id.is_none()
            && auth.client_secret.is_none()
        {
            self.error("`auth` names no credential", span(raw), "empty")
                .hint("use auth = { bearer_env = \"ERP_TOKEN\" }, { bearer_file = \"/path\" }, { username = \"u\", password_file = \"/path\" } or { api_key_header = \"X-API-Key\", api_key_env = \"ERP_KEY\" }");
        }
        chosen
    }

    /// A secret from `<what>_env` or `<what>_file` (not both).
    pub(crate) fn secret_pair(
        &mut self,
        env: Option<&Spanned<String>>,
        file: Option<&Spanned<String>>,
        what: &str,
    ) -> Option<Secret> {
        match (env, file) {
            (Some(env), None) => Some(Secret::Env(env.get_ref().clone())),
            (None, Some(file)) => Some(Secret::File(PathBuf::from(file.get_ref()))),
            (Some(_), Some(file)) => {
                self.error(
                    format!("`{what}_env` and `{what}_file` are both set"),
                    span(file),
                    "choose one",
                );
                None
            }
            (None, None) => None,
        }
    }
}

impl Checker {
    /// A sink's `retry_initial` (default 500 ms) and `retry_max` (default 30 s), 10 ms ..= 1 h,
    /// the cap not below the first delay.
    pub(crate) fn retry_delays(&mut self, raw: &RawSink) -> (Duration, Duration) {
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
        (retry_initial, retry_max)
    }
}
