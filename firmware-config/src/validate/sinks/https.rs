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
        let shown = crate::mask_userinfo(text);
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
        let auth = raw.auth.as_ref().and_then(|a| self.auth(a, &raw.name));
        let timeout = self.duration(
            raw.timeout.as_ref(),
            Duration::from_secs(10),
            Duration::from_millis(100)..=5 * MINUTE,
            "timeout",
        );
        let (retry_initial, retry_max) = self.retry_delays(raw);
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

    pub(crate) fn auth(
        &mut self,
        raw: &Spanned<RawAuth>,
        sink: &Spanned<String>,
    ) -> Option<HttpAuth> {
        let auth = raw.get_ref();
        for (field, value) in [
            ("bearer", &auth.bearer),
            ("token", &auth.token),
            ("password", &auth.password),
        ] {
            if value.is_some() {
                // Pointed at the sink's name, not the value: the rendered diagnostic would
                // print the secret into terminals and CI logs.
                self.error(format!("sink `{}` has a secret written inline in `auth.{field}`", sink.get_ref()), span(sink), "secret in the config file")
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
