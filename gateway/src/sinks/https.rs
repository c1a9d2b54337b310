//! The `https` sink: batched POSTs of CloudEvents (`application/cloudevents-batch+json`).
//!
//! - `Idempotency-Key` is `<first id>..<last id>` of the request's events (or the id alone for
//!   one event): it names exactly the events in the body. A request that is retried in the same
//!   run carries the same events and the same key. After a restart, a 413 or a split, a request
//!   may hold a different run of events (a short batch refetched with more events), so it gets
//!   another key: a receiver may rely on the key only to recognise a repeat of the very same
//!   request; the event `id`s are the dedupe key (docs/durability.md).
//! - 2xx: delivered. 400 and 422: the content is refused (the runner splits the batch and
//!   dead-letters the refused event alone). 413: too large (the runner halves the batch).
//!   Everything else is the receiver's, the network's or the gateway's fault and is retried:
//!   connect errors, timeouts, 408, 429 and 5xx (`Retry-After` honoured); 401/403 (credentials),
//!   404/405/415 and other 4xx (a wrong URL, a proxy answering for a restarting ERP) and 3xx
//!   (redirects are not followed: a POST must not turn into a GET), each logged with the fix.
//! - At most [`MAX_BODY_KEPT`] bytes of a response body are read, whatever its status.

use std::{path::Path, time::Duration};

use firmware_config::{HttpAuth, HttpsSinkConfig, Secret};
use reqwest::{StatusCode, header};

use super::{Deliver, Outcome, SinkError, batch_body, template::BodyRenderer};
use crate::store::StoredEvent;

/// Most of a response body read, for the log and dead letters: a broken or hostile receiver
/// cannot stream into memory.
pub(crate) const MAX_BODY_KEPT: usize = 512;

/// POSTs batches to one URL.
pub struct HttpsSink {
    client: reqwest::Client,
    url: String,
    /// The URL without its query and user info: what logs and retry reasons show (a query
    /// may carry a key).
    shown: String,
    credential: Option<Credential>,
    /// The last response's status and excerpt, for the audit trail.
    answer: Option<(String, String)>,
    /// The sink's name.
    name: String,
    method: reqwest::Method,
    /// The configured extra headers.
    headers: header::HeaderMap,
    /// The body template; `None`: CloudEvents.
    template: Option<BodyRenderer>,
}

/// Shows the URL without its query and the credential without its secret.
impl std::fmt::Debug for HttpsSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpsSink")
            .field("url", &self.shown)
            .field("credential", &self.credential)
            .finish_non_exhaustive()
    }
}

/// How each request proves who sends it. `Debug` never shows the secret.
enum Credential {
    Bearer(String),
    Basic {
        username: String,
        password: String,
    },
    ApiKey {
        header: header::HeaderName,
        key: header::HeaderValue,
    },
    OAuth2(Box<OAuth>),
}

/// An OAuth2 client (client credentials grant, RFC 6749 section 4.4) and its cached token.
struct OAuth {
    token_url: String,
    /// `token_url` without query or user info, for logs.
    shown: String,
    client_id: String,
    secret: String,
    scope: Option<String>,
    audience: Option<String>,
    /// The token, and when to fetch the next one (shortly before it expires; never, when the
    /// endpoint gave no lifetime: then a 401 asks for a new one).
    token: Option<(String, Option<tokio::time::Instant>)>,
}

/// Most of a token endpoint's answer read (a token response is a few KiB at most).
const MAX_TOKEN_RESPONSE: usize = 64 << 10;

/// How long before its expiry a token is replaced: a tenth of its lifetime, at most a minute.
fn refresh_margin(lifetime: Duration) -> Duration {
    (lifetime / 10).min(Duration::from_secs(60))
}

/// When a token fetched at `now` for `seconds` (finite, not negative; at most a year is
/// believed) is replaced: before it expires by its [`refresh_margin`].
fn renew_at(now: tokio::time::Instant, seconds: f64) -> tokio::time::Instant {
    let lifetime =
        Duration::try_from_secs_f64(seconds.clamp(0.0, 365.0 * 24.0 * 3600.0)).unwrap_or_default();
    now + lifetime - refresh_margin(lifetime)
}

/// What kind of JSON error, in words.
fn json_problem(e: &serde_json::Error) -> &'static str {
    match e.classify() {
        serde_json::error::Category::Io => "unreadable",
        serde_json::error::Category::Syntax => "malformed JSON",
        serde_json::error::Category::Data => "a field missing or of the wrong type",
        serde_json::error::Category::Eof => "cut short",
    }
}

impl OAuth {
    /// The cached token, or a new one when none is cached, it is due, or `fresh` is asked.
    async fn token(&mut self, client: &reqwest::Client, fresh: bool) -> Result<String, String> {
        /// `expires_in` as a number or, as some providers send it, a numeric string.
        #[derive(serde::Deserialize)]
        #[serde(untagged)]
        enum Seconds {
            Number(f64),
            Text(String),
        }
        #[derive(serde::Deserialize)]
        struct Answer {
            access_token: String,
            token_type: Option<String>,
            expires_in: Option<Seconds>,
        }
        #[derive(serde::Deserialize)]
        struct Refusal {
            error: Option<String>,
            error_description: Option<String>,
        }
        if !fresh
            && let Some((token, due)) = &self.token
            && due.is_none_or(|d| tokio::time::Instant::now() < d)
        {
            return Ok(token.clone());
        }
        self.token = None;
        let form = {
            let mut form = url::form_urlencoded::Serializer::new(String::new());
            form.append_pair("grant_type", "client_credentials");
            if let Some(scope) = &self.scope {
                form.append_pair("scope", scope);
            }
            if let Some(audience) = &self.audience {
                form.append_pair("audience", audience);
            }
            form.finish()
        };
        let at = &self.shown;
        let response = client
            .post(&self.token_url)
            // RFC 6749 section 2.3.1: both form-encoded before basic auth.
            .basic_auth(
                url::form_urlencoded::byte_serialize(self.client_id.as_bytes()).collect::<String>(),
                Some(
                    url::form_urlencoded::byte_serialize(self.secret.as_bytes())
                        .collect::<String>(),
                ),
            )
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(header::ACCEPT, "application/json")
            .body(form)
            .send()
            .await
            .map_err(|e| {
                format!(
                    "token endpoint {at}: {}",
                    crate::error_chain(&e.without_url())
                )
            })?;
        let status = response.status();
        let body = read_capped(response, MAX_TOKEN_RESPONSE).await;
        if !status.is_success() {
            // Only the RFC 6749 error fields (`invalid_client`, `invalid_scope`), bounded: a
            // proxy's page might echo the request's Authorization header.
            let excerpt = serde_json::from_slice::<Refusal>(&body).map_or_else(
                |_| "no OAuth2 error in the answer".to_owned(),
                |r| {
                    let text = [r.error, r.error_description]
                        .into_iter()
                        .flatten()
                        .collect::<Vec<_>>()
                        .join(": ");
                    text.chars().filter(|c| !c.is_control()).take(200).collect()
                },
            );
            let fix = match status.as_u16() {
                400 | 401 | 403 => {
                    "check auth.client_id, the client secret, scope and audience with the identity provider"
                }
                404 | 405 => "check auth.token_url",
                _ => "the identity provider is failing; retried",
            };
            return Err(format!(
                "token endpoint {at} answered HTTP {status}: {excerpt} ({fix})"
            ));
        }
        // The body holds the token: never shown, even when it is malformed.
        let answer: Answer = serde_json::from_slice(&body).map_err(|e| {
            format!(
                "token endpoint {at} answered with no usable access_token ({} at line {} column {})",
                json_problem(&e),
                e.line(),
                e.column()
            )
        })?;
        if let Some(kind) = &answer.token_type
            && !kind.eq_ignore_ascii_case("bearer")
        {
            let kind: String = kind.chars().filter(|c| !c.is_control()).take(32).collect();
            return Err(format!(
                "token endpoint {at} issued a `{kind}` token; only bearer tokens are supported"
            ));
        }
        if answer.access_token.is_empty()
            || header::HeaderValue::from_str(&answer.access_token).is_err()
        {
            return Err(format!(
                "token endpoint {at} issued an empty or unprintable access_token"
            ));
        }
        // A lifetime that is not a number is treated as none given: the token is kept until a
        // 401 says otherwise.
        let seconds = match &answer.expires_in {
            Some(Seconds::Number(n)) if n.is_finite() && *n >= 0.0 => Some(*n),
            Some(Seconds::Text(t)) => t
                .trim()
                .parse::<f64>()
                .ok()
                .filter(|n| n.is_finite() && *n >= 0.0),
            _ => None,
        };
        let due = seconds.map(|s| renew_at(tokio::time::Instant::now(), s));
        tracing::debug!(token_url = %at, expires_in = ?seconds, "Fetched an OAuth2 access token.");
        self.token = Some((answer.access_token.clone(), due));
        Ok(answer.access_token)
    }
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credential::Bearer(_) => f.write_str("Bearer(<redacted>)"),
            Credential::Basic { username, .. } => write!(f, "Basic({username}, <redacted>)"),
            Credential::ApiKey { header, .. } => write!(f, "ApiKey({header}, <redacted>)"),
            Credential::OAuth2(o) => {
                write!(f, "OAuth2({}, {}, <redacted>)", o.shown, o.client_id)
            }
        }
    }
}

/// A redirect's `Location` as logs may show it: an absolute one as [`shown_url`], a relative
/// one without its query or fragment.
fn shown_location(location: &str) -> String {
    if location.contains("://") {
        shown_url(location)
    } else {
        location
            .split(['?', '#'])
            .next()
            .unwrap_or_default()
            .to_owned()
    }
}

/// `url` as logs may show it: scheme, host, port and path; no user info, query or fragment.
fn shown_url(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut u) => {
            let _ = u.set_username("");
            let _ = u.set_password(None);
            u.set_query(None);
            u.set_fragment(None);
            u.to_string()
        }
        Err(_) => "<the sink's url>".to_owned(),
    }
}

impl HttpsSink {
    /// Builds the client: rustls with the system roots plus `ca_file` (and the client
    /// certificate, for mutual TLS), the timeout, the credential.
    ///
    /// # Errors
    /// The CA file, the client certificate or the credential cannot be read.
    pub fn new(sink: &str, config: &HttpsSinkConfig, base: &Path) -> Result<Self, SinkError> {
        Self::with_env(sink, config, base, |name| std::env::var(name).ok())
    }

    /// As [`HttpsSink::new`], reading environment variables through `env` (tests pass their
    /// own: setting the process environment while other threads run is unsound).
    ///
    /// # Errors
    /// The CA file, the client certificate or the credential cannot be read.
    pub fn with_env(
        sink: &str,
        config: &HttpsSinkConfig,
        base: &Path,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, SinkError> {
        let tls =
            crate::tls::client_config_in(base, config.ca_file.as_deref(), config.identity.as_ref())
                .map_err(|source| SinkError::Tls {
                    sink: sink.to_owned(),
                    source,
                })?;
        let client = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .timeout(config.timeout)
            .connect_timeout(config.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("causeway/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|source| SinkError::Client {
                sink: sink.to_owned(),
                source,
            })?;
        let failed = |why: String| SinkError::Credential {
            sink: sink.to_owned(),
            why,
        };
        let read = |secret: &Secret, field: &str| -> Result<String, SinkError> {
            let from = match secret {
                Secret::Env(_) => "env",
                Secret::File(_) => "file",
            };
            let text = protocols::secret::read(secret, base, &env).map_err(|why| {
                failed(format!(
                    "{why} (auth.{field}_{from}; export or create it before starting causeway)"
                ))
            })?;
            let text = text.trim().to_owned();
            if text.is_empty() {
                return Err(failed(format!("the {field} is empty")));
            }
            Ok(text)
        };
        let credential = match &config.auth {
            None => None,
            Some(HttpAuth::BearerEnv(var)) => Some(Credential::Bearer(read(
                &Secret::Env(var.clone()),
                "bearer",
            )?)),
            Some(HttpAuth::BearerFile(path)) => Some(Credential::Bearer(read(
                &Secret::File(path.clone()),
                "bearer",
            )?)),
            Some(HttpAuth::Basic { username, password }) => Some(Credential::Basic {
                username: username.clone(),
                password: read(password, "password")?,
            }),
            Some(HttpAuth::ApiKey { header, key }) => {
                let name = header::HeaderName::from_bytes(header.as_bytes()).map_err(|_| {
                    failed(format!(
                        "`{header}` (auth.api_key_header) is not a header name"
                    ))
                })?;
                let mut value =
                    header::HeaderValue::from_str(&read(key, "api_key")?).map_err(|_| {
                        failed("the API key holds characters a header cannot carry".to_owned())
                    })?;
                value.set_sensitive(true);
                Some(Credential::ApiKey {
                    header: name,
                    key: value,
                })
            }
            Some(HttpAuth::OAuth2 {
                token_url,
                client_id,
                secret,
                scope,
                audience,
            }) => Some(Credential::OAuth2(Box::new(OAuth {
                token_url: token_url.clone(),
                shown: shown_url(token_url),
                client_id: client_id.clone(),
                secret: read(secret, "client_secret")?,
                scope: scope.clone(),
                audience: audience.clone(),
                token: None,
            }))),
        };
        let method = reqwest::Method::from_bytes(config.method.as_bytes())
            .map_err(|_| failed(format!("`{}` is not an HTTP method", config.method)))?;
        let mut headers = header::HeaderMap::new();
        for (name, value) in &config.headers {
            let name = header::HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| failed(format!("`{name}` (headers) is not a header name")))?;
            let value = header::HeaderValue::from_str(value)
                .map_err(|_| failed(format!("the value of header `{name}` cannot be sent")))?;
            headers.insert(name, value);
        }
        let template = match &config.body {
            firmware_config::Body::CloudEvents => None,
            firmware_config::Body::Template(t) => Some(BodyRenderer::load(t, base).map_err(
                |source| SinkError::Template {
                    sink: sink.to_owned(),
                    source,
                },
            )?),
        };
        let shown = shown_url(&config.url);
        if config.url.starts_with("http://") {
            tracing::warn!(sink, url = %shown, "Sending events over plain http:// (insecure = true).");
        }
        Ok(HttpsSink {
            client,
            url: config.url.clone(),
            shown,
            credential,
            answer: None,
            name: sink.to_owned(),
            method,
            headers,
            template,
        })
    }
}

/// The idempotency key of a batch.
pub(crate) fn idempotency_key(batch: &[StoredEvent]) -> String {
    match batch {
        [] => String::new(),
        [one] => one.id.clone(),
        [first, .., last] => format!("{}..{}", first.id, last.id),
    }
}

/// `Retry-After` as seconds or an HTTP date.
fn retry_after(headers: &header::HeaderMap) -> Option<Duration> {
    let value = headers.get(header::RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(
        at.duration_since(std::time::SystemTime::now())
            .unwrap_or_default(),
    )
}

/// Sorts a response into an outcome.
pub(crate) fn classify(status: StatusCode, headers: &header::HeaderMap, body: &str) -> Outcome {
    let reason = match problem(headers, body) {
        Some(problem) => format!("HTTP {status}: {problem}"),
        None => {
            let snippet: String = body.chars().take(MAX_BODY_KEPT).collect();
            format!("HTTP {status}: {snippet}")
        }
    };
    let retry = |fix: &str| {
        tracing::error!(%status, fix, "The receiver refused the request; events stay buffered and are retried.");
        Outcome::Retry {
            reason: reason.clone(),
            // A refused credential waits out the sink's backoff whatever the receiver says:
            // each attempt may fetch a new OAuth2 token.
            after: if matches!(status.as_u16(), 401 | 403) {
                None
            } else {
                retry_after(headers)
            },
        }
    };
    match status.as_u16() {
        200..=299 => Outcome::Delivered,
        400 | 422 => Outcome::Reject { reason },
        413 => Outcome::TooLarge { reason },
        408 | 429 | 500..=599 => Outcome::Retry {
            reason,
            after: retry_after(headers),
        },
        401 | 403 => {
            retry("check the sink's auth: the credential is wrong, expired or lacks permission")
        }
        404 => retry(
            "check the sink's url path; a proxy may also answer 404 while the receiver restarts",
        ),
        405 => retry("the url does not take POST: check the sink's url path"),
        415 => retry(
            "the receiver does not take this content type at this url: check the sink's url, its format and content_type",
        ),
        300..=399 => {
            // Without its query or user info: a redirect keeps the query, where a key may be.
            let to = headers
                .get(header::LOCATION)
                .and_then(|l| l.to_str().ok())
                .map_or_else(|| "?".to_owned(), shown_location);
            retry(&format!(
                "the receiver redirects to {to}: set the sink's url to the final address"
            ))
        }
        _ => retry("an unexpected refusal; the response says why"),
    }
}

/// Most of an RFC 9457 problem details body read (its fields are short; extensions may not be).
const MAX_PROBLEM: usize = 8 << 10;

/// Whether the response says it carries RFC 9457 problem details.
fn is_problem(headers: &header::HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| {
            t.split(';')
                .next()
                .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/problem+json"))
        })
}

/// RFC 9457 problem details, when the response has them: `title: detail (type ..., instance
/// ...)`, each field without control characters and at most 200 characters, so a log line and
/// a dead letter say what the receiver meant rather than a cut JSON text.
fn problem(headers: &header::HeaderMap, body: &str) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Problem {
        #[serde(rename = "type")]
        kind: Option<String>,
        title: Option<String>,
        detail: Option<String>,
        instance: Option<String>,
    }
    if !is_problem(headers) {
        return None;
    }
    let p: Problem = serde_json::from_str(body).ok()?;
    let clean = |s: Option<String>| -> Option<String> {
        s.map(|s| {
            s.chars()
                .filter(|c| !c.is_control())
                .take(200)
                .collect::<String>()
        })
        .filter(|s| !s.is_empty())
    };
    let (title, detail) = (clean(p.title), clean(p.detail));
    let mut text = match (title, detail) {
        (Some(t), Some(d)) => format!("{t}: {d}"),
        (Some(one), None) | (None, Some(one)) => one,
        (None, None) => "problem details without title or detail".to_owned(),
    };
    let context: Vec<String> = [("type", clean(p.kind)), ("instance", clean(p.instance))]
        .into_iter()
        .filter_map(|(k, v)| v.map(|v| format!("{k} {v}")))
        .collect();
    if !context.is_empty() {
        text = format!("{text} ({})", context.join(", "));
    }
    Some(text)
}

/// Reads at most [`MAX_BODY_KEPT`] bytes of `response`'s body (lossy UTF-8), or
/// [`MAX_PROBLEM`] of RFC 9457 problem details.
async fn excerpt(response: reqwest::Response) -> String {
    let max = if is_problem(response.headers()) {
        MAX_PROBLEM
    } else {
        MAX_BODY_KEPT
    };
    String::from_utf8_lossy(&read_capped(response, max).await).into_owned()
}

/// Reads at most `max` bytes of `response`'s body.
async fn read_capped(mut response: reqwest::Response, max: usize) -> Vec<u8> {
    let mut kept = Vec::with_capacity(max.min(4096));
    while kept.len() < max {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                let room = max - kept.len();
                kept.extend_from_slice(&chunk[..chunk.len().min(room)]);
            }
            Ok(None) | Err(_) => break,
        }
    }
    kept
}

impl Deliver for HttpsSink {
    fn target(&self) -> String {
        self.shown.clone()
    }

    fn take_answer(&mut self) -> Option<(String, String)> {
        self.answer.take()
    }

    async fn deliver(&mut self, batch: &[StoredEvent]) -> Outcome {
        self.answer = None;
        let Some(template) = self.template.take() else {
            return self
                .send(
                    batch_body(batch),
                    CLOUDEVENTS_BATCH,
                    &idempotency_key(batch),
                )
                .await;
        };
        let outcome = self.deliver_rendered(&template, batch).await;
        self.template = Some(template);
        outcome
    }
}

/// A request as `causeway check --render` shows it: what the sink would send, with the
/// credential named, never shown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Preview {
    /// `POST https://erp.example.com/api/confirmations` (the URL without its query).
    pub request_line: String,
    /// Headers, in order.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: String,
}

/// Where a credential comes from, in words.
fn credential_source(auth: &HttpAuth) -> (String, String) {
    let secret = |s: &Secret| match s {
        Secret::Env(var) => format!("environment variable {var}"),
        Secret::File(path) => format!("file {}", path.display()),
    };
    match auth {
        HttpAuth::BearerEnv(var) => (
            "Authorization".to_owned(),
            format!("Bearer <the token in environment variable {var}>"),
        ),
        HttpAuth::BearerFile(path) => (
            "Authorization".to_owned(),
            format!("Bearer <the token in file {}>", path.display()),
        ),
        HttpAuth::Basic { username, password } => (
            "Authorization".to_owned(),
            format!(
                "Basic <{username} and the password in {}>",
                secret(password)
            ),
        ),
        HttpAuth::ApiKey { header, key } => {
            (header.clone(), format!("<the key in {}>", secret(key)))
        }
        HttpAuth::OAuth2 { token_url, .. } => (
            "Authorization".to_owned(),
            format!("Bearer <a token from {}>", shown_url(token_url)),
        ),
    }
}

/// The requests `sink` would send for `events` (sample events: each of a type the sink's
/// routes take): one per event with `per = "event"`, else one for all. The body template is
/// loaded from `base`, and each body rendered and checked as `deliver` does.
///
/// # Errors
/// The template cannot be loaded, or fails on one of the events (the message names its
/// type), or the sink is not https.
pub fn preview(
    sink: &firmware_config::SinkConfig,
    events: &[crate::event::CloudEvent],
    base: &Path,
) -> Result<Vec<Preview>, String> {
    let firmware_config::SinkKind::Https(config) = &sink.kind else {
        return Err(format!(
            "sink `{}` is not an https sink: only https sinks have a request to render",
            sink.name
        ));
    };
    let routed: Vec<StoredEvent> = events
        .iter()
        .filter(|e| sink.accepts(&e.event_type))
        .enumerate()
        .filter_map(|(i, e)| {
            Some(StoredEvent {
                seq: i64::try_from(i).ok()? + 1,
                id: e.id.clone(),
                event_type: e.event_type.clone(),
                payload: serde_json::to_string(e).ok()?,
            })
        })
        .collect();
    if routed.is_empty() {
        return Err(format!(
            "sink `{}`: no sample event matches its routes",
            sink.name
        ));
    }
    let template = match &config.body {
        firmware_config::Body::CloudEvents => None,
        firmware_config::Body::Template(t) => {
            Some(BodyRenderer::load(t, base).map_err(|e| e.to_string())?)
        }
    };
    let groups: Vec<&[StoredEvent]> = match &template {
        Some(t) if t.per_event() => routed.chunks(1).collect(),
        _ => vec![&routed[..]],
    };
    let mut out = Vec::new();
    for group in groups {
        let key = idempotency_key(group);
        let (body, content_type) = match &template {
            None => (batch_body(group), CLOUDEVENTS_BATCH.to_owned()),
            Some(t) => {
                let values: Vec<serde_json::Value> = group
                    .iter()
                    .map(|e| serde_json::from_str(&e.payload).unwrap_or_default())
                    .collect();
                let body = t.render(&sink.name, &values, &key).map_err(|why| {
                    let types: Vec<&str> = group.iter().map(|e| e.event_type.as_str()).collect();
                    format!(
                        "sink `{}`, with a sample {}: {why}",
                        sink.name,
                        types.join(" and ")
                    )
                })?;
                (body, t.content_type().to_owned())
            }
        };
        let mut headers = vec![
            ("Content-Type".to_owned(), content_type),
            ("Idempotency-Key".to_owned(), key),
        ];
        headers.extend(config.headers.iter().cloned());
        if let Some(auth) = &config.auth {
            headers.push(credential_source(auth));
        }
        if config.identity.is_some() {
            headers.push((
                "(TLS)".to_owned(),
                "<the client certificate in client_certificate>".to_owned(),
            ));
        }
        out.push(Preview {
            request_line: format!("{} {}", config.method, shown_url(&config.url)),
            headers,
            body,
        });
    }
    Ok(out)
}

/// The CloudEvents body's media type.
const CLOUDEVENTS_BATCH: &str = "application/cloudevents-batch+json";

impl HttpsSink {
    /// Renders `batch` with `template` and sends it: one request for the batch, or, with
    /// `per = "event"` (where the config makes every batch one event), for its first event,
    /// the rest then being a partial delivery's remainder.
    async fn deliver_rendered(
        &mut self,
        template: &BodyRenderer,
        batch: &[StoredEvent],
    ) -> Outcome {
        let group = if template.per_event() {
            &batch[..batch.len().min(1)]
        } else {
            batch
        };
        let events: Vec<serde_json::Value> = group
            .iter()
            .map(|e| serde_json::from_str(&e.payload).unwrap_or(serde_json::Value::Null))
            .collect();
        let key = idempotency_key(group);
        let body = match template.render(&self.name, &events, &key) {
            Ok(body) => body,
            // The template cannot express these events: nothing is sent; they go to dead
            // letters alone (after the runner's split), to be requeued once it is fixed.
            Err(why) => {
                return Outcome::Unsendable {
                    reason: format!(
                        "the sink's template failed: {why}; fix the template, then `causeway buffer requeue --sink {}`",
                        self.name
                    ),
                };
            }
        };
        let content_type = template.content_type().to_owned();
        match self.send(body, &content_type, &key).await {
            Outcome::Delivered if group.len() < batch.len() => Outcome::Partial {
                delivered: group.len(),
                reason: "one event per request".to_owned(),
            },
            other => other,
        }
    }

    /// Sends one request with `body`; classifies the answer.
    async fn send(&mut self, body: String, content_type: &str, key: &str) -> Outcome {
        // With OAuth2, a 401 fetches a new token and sends once more.
        let mut fresh = false;
        loop {
            let mut request = self
                .client
                .request(self.method.clone(), &self.url)
                .headers(self.headers.clone())
                .header(header::CONTENT_TYPE, content_type)
                .header("Idempotency-Key", key)
                .body(body.clone());
            request = match &mut self.credential {
                None => request,
                Some(Credential::Bearer(token)) => request.bearer_auth(token),
                Some(Credential::Basic { username, password }) => {
                    request.basic_auth(username, Some(password))
                }
                Some(Credential::ApiKey { header, key }) => {
                    request.header(header.clone(), key.clone())
                }
                Some(Credential::OAuth2(oauth)) => match oauth.token(&self.client, fresh).await {
                    Ok(token) => request.bearer_auth(token),
                    Err(reason) => {
                        tracing::error!(%reason, "Cannot get an OAuth2 token; events stay buffered and are retried.");
                        return Outcome::Retry {
                            reason,
                            after: None,
                        };
                    }
                },
            };
            match request.send().await {
                Ok(response) => {
                    let status = response.status();
                    if status == StatusCode::UNAUTHORIZED
                        && !fresh
                        && matches!(self.credential, Some(Credential::OAuth2(_)))
                    {
                        tracing::info!(url = %self.shown, "The receiver refused the OAuth2 token (401); fetching a new one.");
                        fresh = true;
                        continue;
                    }
                    let headers = response.headers().clone();
                    let body = excerpt(response).await;
                    // For the audit trail: the status, and what a refusal said (a 2xx body is
                    // not kept: a receiver may echo the request, credentials included).
                    let said = if status.is_success() {
                        String::new()
                    } else {
                        body.clone()
                    };
                    self.answer = Some((format!("HTTP {}", status.as_u16()), said));
                    return classify(status, &headers, &body);
                }
                // Without the URL reqwest would print: its query may carry a key.
                Err(error) => {
                    return Outcome::Retry {
                        reason: format!(
                            "{}: {}",
                            self.shown,
                            crate::error_chain(&error.without_url())
                        ),
                        after: None,
                    };
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> header::HeaderMap {
        let mut map = header::HeaderMap::new();
        for (k, v) in pairs {
            map.insert(*k, v.parse().unwrap());
        }
        map
    }

    #[test]
    fn responses_sort_into_delivered_retry_and_reject() {
        let none = header::HeaderMap::new();
        assert_eq!(classify(StatusCode::OK, &none, ""), Outcome::Delivered);
        assert_eq!(
            classify(StatusCode::ACCEPTED, &none, ""),
            Outcome::Delivered
        );
        for code in [
            408, 429, 500, 502, 503, 401, 403, 301, 307, 404, 405, 415, 409,
        ] {
            let status = StatusCode::from_u16(code).unwrap();
            assert!(
                matches!(classify(status, &none, ""), Outcome::Retry { .. }),
                "{code} is retried"
            );
        }
        for code in [400, 422] {
            let status = StatusCode::from_u16(code).unwrap();
            assert!(
                matches!(classify(status, &none, "bad"), Outcome::Reject { reason } if reason.contains("bad")),
                "{code} is rejected"
            );
        }
        assert!(matches!(
            classify(StatusCode::PAYLOAD_TOO_LARGE, &none, ""),
            Outcome::TooLarge { .. }
        ));
    }

    #[test]
    fn retry_after_is_read_as_seconds_or_a_date() {
        let after = classify(
            StatusCode::SERVICE_UNAVAILABLE,
            &headers(&[("retry-after", "7")]),
            "",
        );
        assert_eq!(
            after,
            Outcome::Retry {
                reason: "HTTP 503 Service Unavailable: ".into(),
                after: Some(Duration::from_secs(7))
            }
        );
        let soon = httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(60));
        let Outcome::Retry { after: Some(d), .. } = classify(
            StatusCode::TOO_MANY_REQUESTS,
            &headers(&[("retry-after", &soon)]),
            "",
        ) else {
            panic!("a date is honoured");
        };
        assert!(
            d > Duration::from_secs(50) && d <= Duration::from_secs(60),
            "{d:?}"
        );
    }

    fn config(url: &str, auth: Option<HttpAuth>) -> HttpsSinkConfig {
        HttpsSinkConfig {
            url: url.to_owned(),
            insecure: url.starts_with("http://"),
            timeout: Duration::from_millis(300),
            ca_file: None,
            auth,
            identity: None,
            method: "POST".into(),
            headers: Vec::new(),
            body: firmware_config::Body::CloudEvents,
            retry_initial: Duration::from_millis(10),
            retry_max: Duration::from_millis(20),
        }
    }

    fn one() -> Vec<StoredEvent> {
        vec![StoredEvent {
            seq: 1,
            id: "a".into(),
            event_type: "production.count".into(),
            payload: "{}".into(),
        }]
    }

    #[test]
    fn credentials_come_from_the_environment_or_a_file_and_a_missing_one_is_named() {
        let base = tempfile::tempdir().unwrap();
        let missing = HttpsSink::new(
            "erp",
            &config(
                "https://127.0.0.1:1/",
                Some(HttpAuth::BearerEnv("CAUSEWAY_TEST_NO_SUCH_VAR".into())),
            ),
            base.path(),
        );
        let error = missing.unwrap_err().to_string();
        assert!(
            error.contains("`CAUSEWAY_TEST_NO_SUCH_VAR`") && error.contains("not set"),
            "{error}"
        );
        let sink = HttpsSink::with_env(
            "erp",
            &config(
                "https://127.0.0.1:1/",
                Some(HttpAuth::BearerEnv("CAUSEWAY_TEST_TOKEN".into())),
            ),
            base.path(),
            |name| (name == "CAUSEWAY_TEST_TOKEN").then(|| "from-env".to_owned()),
        )
        .unwrap();
        assert!(matches!(&sink.credential, Some(Credential::Bearer(t)) if t == "from-env"));
        std::fs::write(base.path().join("t"), "  from-file\n").unwrap();
        let sink = HttpsSink::new(
            "erp",
            &config(
                "https://127.0.0.1:1/",
                Some(HttpAuth::BearerFile("t".into())),
            ),
            base.path(),
        )
        .unwrap();
        assert!(
            matches!(&sink.credential, Some(Credential::Bearer(t)) if t == "from-file"),
            "read relative to the config folder, trimmed"
        );
        let error = HttpsSink::new(
            "erp",
            &config(
                "https://127.0.0.1:1/",
                Some(HttpAuth::BearerFile("nope".into())),
            ),
            base.path(),
        )
        .unwrap_err();
        assert!(
            error.to_string().contains("cannot read file")
                && error.to_string().contains("auth.bearer_file"),
            "{error}"
        );
    }

    #[tokio::test]
    async fn a_refused_connection_and_a_silent_server_are_retried() {
        let base = tempfile::tempdir().unwrap();
        // A port nobody listens on.
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let mut sink = HttpsSink::new(
            "erp",
            &config(&format!("https://{closed}/"), None),
            base.path(),
        )
        .unwrap();
        assert!(matches!(sink.deliver(&one()).await, Outcome::Retry { .. }));
        // A server that accepts and never answers: the timeout ends the attempt.
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = silent.local_addr().unwrap();
        let hold = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((stream, _)) = silent.accept().await {
                held.push(stream);
            }
        });
        let mut sink = HttpsSink::new(
            "erp",
            &config(&format!("https://{addr}/"), None),
            base.path(),
        )
        .unwrap();
        let started = std::time::Instant::now();
        let outcome = tokio::time::timeout(Duration::from_secs(10), sink.deliver(&one()))
            .await
            .expect("the request timeout fires");
        assert!(matches!(outcome, Outcome::Retry { .. }), "{outcome:?}");
        assert!(started.elapsed() < Duration::from_secs(5));
        hold.abort();
    }

    #[tokio::test]
    async fn a_receiver_that_streams_an_endless_body_is_read_no_further_than_the_excerpt() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        // Answers every request with `status` and a chunked body that never ends.
        async fn endless(status: &'static str) -> std::net::SocketAddr {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            tokio::spawn(async move {
                while let Ok((mut stream, _)) = listener.accept().await {
                    tokio::spawn(async move {
                        let mut request = [0u8; 4096];
                        let _ = stream.read(&mut request).await;
                        let head =
                            format!("HTTP/1.1 {status}\r\nTransfer-Encoding: chunked\r\n\r\n");
                        if stream.write_all(head.as_bytes()).await.is_err() {
                            return;
                        }
                        let chunk = format!("{:x}\r\n{}\r\n", 65536, "z".repeat(65536));
                        while stream.write_all(chunk.as_bytes()).await.is_ok() {}
                    });
                }
            });
            addr
        }
        let base = tempfile::tempdir().unwrap();
        for (status, delivered) in [("200 OK", true), ("422 Unprocessable Entity", false)] {
            let addr = endless(status).await;
            let mut config = config(&format!("http://{addr}/"), None);
            config.timeout = Duration::from_secs(5);
            let mut sink = HttpsSink::new("erp", &config, base.path()).unwrap();
            let started = std::time::Instant::now();
            let outcome = sink.deliver(&one()).await;
            // Before: the whole body was read, until the 5 s timeout (and into memory).
            assert!(
                started.elapsed() < Duration::from_secs(2),
                "{status}: {:?}",
                started.elapsed()
            );
            match outcome {
                Outcome::Delivered => assert!(delivered, "{status}"),
                Outcome::Reject { reason } => {
                    assert!(!delivered);
                    assert!(reason.len() <= MAX_BODY_KEPT + 64, "{}", reason.len());
                }
                other => panic!("{status}: {other:?}"),
            }
        }
    }

    #[test]
    fn the_idempotency_key_is_fixed_by_the_batch() {
        let e = |id: &str| StoredEvent {
            seq: 1,
            id: id.into(),
            event_type: "t".into(),
            payload: "{}".into(),
        };
        assert_eq!(idempotency_key(&[e("a")]), "a");
        assert_eq!(idempotency_key(&[e("a"), e("b"), e("c")]), "a..c");
    }

    /// A sink whose secrets come from `env`, sending to `url`.
    fn with_secrets(url: &str, auth: HttpAuth, ca: Option<&Path>) -> HttpsSink {
        let mut c = config(url, Some(auth));
        c.ca_file = ca.map(Path::to_path_buf);
        c.timeout = Duration::from_secs(5);
        HttpsSink::with_env("erp", &c, Path::new("/"), |name| match name {
            "TOKEN" => Some("t0k3n-s3cr3t".to_owned()),
            "PASSWORD" => Some("pa55-s3cr3t".to_owned()),
            "KEY" => Some("k3y-s3cr3t".to_owned()),
            _ => None,
        })
        .unwrap()
    }

    #[test]
    fn no_secret_shows_in_debug_or_in_a_retry_reason() {
        let kinds = [
            HttpAuth::BearerEnv("TOKEN".into()),
            HttpAuth::Basic {
                username: "causeway".into(),
                password: Secret::Env("PASSWORD".into()),
            },
            HttpAuth::ApiKey {
                header: "X-API-Key".into(),
                key: Secret::Env("KEY".into()),
            },
        ];
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        for auth in kinds {
            // A key in the URL's query too, and nobody listening on port 1.
            let mut sink = with_secrets("https://127.0.0.1:1/events?api_key=q-s3cr3t", auth, None);
            let shown = format!("{sink:?}");
            assert!(!shown.contains("s3cr3t"), "{shown}");
            let outcome = runtime.block_on(sink.deliver(&one()));
            let Outcome::Retry { reason, .. } = outcome else {
                panic!("a refused connection is retried: {outcome:?}");
            };
            assert!(!reason.contains("s3cr3t"), "{reason}");
            assert!(reason.contains("https://127.0.0.1:1/events"), "{reason}");
        }
    }

    #[tokio::test]
    async fn basic_and_api_key_credentials_reach_the_receiver_and_mutual_tls_is_required_by_it() {
        let tasks = tokio_util::task::TaskTracker::new();
        let cancel = tokio_util::sync::CancellationToken::new();
        let receiver = crate::demo::receiver::Receiver::start(&tasks, cancel.clone())
            .await
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, receiver.ca_pem()).unwrap();
        let mut basic = with_secrets(
            &receiver.url(),
            HttpAuth::Basic {
                username: "causeway".into(),
                password: Secret::Env("PASSWORD".into()),
            },
            Some(&ca),
        );
        assert!(matches!(basic.deliver(&one()).await, Outcome::Delivered));
        let mut keyed = with_secrets(
            &receiver.url(),
            HttpAuth::ApiKey {
                header: "X-API-Key".into(),
                key: Secret::Env("KEY".into()),
            },
            Some(&ca),
        );
        assert!(matches!(keyed.deliver(&one()).await, Outcome::Delivered));
        let seen = receiver.requests();
        // base64("causeway:pa55-s3cr3t"), RFC 7617.
        assert_eq!(
            seen[0].authorization.as_deref(),
            Some("Basic Y2F1c2V3YXk6cGE1NS1zM2NyM3Q=")
        );
        assert!(
            seen[1]
                .headers
                .contains(&("x-api-key".to_owned(), "k3y-s3cr3t".to_owned()))
        );
        assert_eq!(seen[1].authorization, None);

        // A receiver that requires a client certificate refuses a sink without one, and
        // takes the batch from a sink with one.
        let mutual = crate::demo::receiver::Receiver::start_mutual(&tasks, cancel.clone())
            .await
            .unwrap();
        let ca = dir.path().join("mutual-ca.pem");
        std::fs::write(&ca, mutual.ca_pem()).unwrap();
        let (cert, key) = mutual.client_identity().unwrap();
        std::fs::write(dir.path().join("client.pem"), cert).unwrap();
        std::fs::write(dir.path().join("client.key"), key).unwrap();
        let mut c = config(&mutual.url(), None);
        c.ca_file = Some(ca.clone());
        c.timeout = Duration::from_secs(5);
        let mut without = HttpsSink::new("qms", &c, dir.path()).unwrap();
        let outcome = without.deliver(&one()).await;
        assert!(matches!(outcome, Outcome::Retry { .. }), "{outcome:?}");
        assert!(
            mutual.requests().is_empty(),
            "nothing got through without a certificate"
        );
        c.identity = Some(("client.pem".into(), "client.key".into()));
        let mut with = HttpsSink::new("qms", &c, dir.path()).unwrap();
        assert!(matches!(with.deliver(&one()).await, Outcome::Delivered));
        assert_eq!(mutual.requests().len(), 1);
        cancel.cancel();
    }

    #[tokio::test]
    async fn oauth2_tokens_are_cached_refreshed_before_expiry_and_once_on_a_401() {
        let tasks = tokio_util::task::TaskTracker::new();
        let cancel = tokio_util::sync::CancellationToken::new();
        let receiver = crate::demo::receiver::Receiver::start(&tasks, cancel.clone())
            .await
            .unwrap();
        receiver.require_oauth("causeway", "cl13nt-s3cr3t", 3);
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), receiver.ca_pem()).unwrap();
        std::fs::write(dir.path().join("secret"), "cl13nt-s3cr3t\n").unwrap();
        let oauth = |secret: &str| {
            let mut c = config(
                &receiver.url(),
                Some(HttpAuth::OAuth2 {
                    token_url: receiver.token_url(),
                    client_id: "causeway".into(),
                    secret: Secret::File(secret.into()),
                    scope: Some("events:write".into()),
                    audience: None,
                }),
            );
            c.ca_file = Some("ca.pem".into());
            c.timeout = Duration::from_secs(5);
            HttpsSink::new("erp", &c, dir.path()).unwrap()
        };
        let mut sink = oauth("secret");
        assert!(!format!("{sink:?}").contains("s3cr3t"));
        // One token for several requests.
        for _ in 0..3 {
            assert!(matches!(sink.deliver(&one()).await, Outcome::Delivered));
        }
        assert_eq!(receiver.tokens_issued(), 1);
        // Revoked (or expired early): the 401 fetches a new token and the batch goes at once.
        receiver.revoke_token();
        assert!(matches!(sink.deliver(&one()).await, Outcome::Delivered));
        assert_eq!(receiver.tokens_issued(), 2);
        let statuses: Vec<u16> = receiver.requests().iter().map(|r| r.status).collect();
        assert_eq!(statuses, [200, 200, 200, 401, 200]);
        // A 3 s token is replaced 0.3 s before it expires, without a 401.
        tokio::time::sleep(Duration::from_millis(2_800)).await;
        assert!(matches!(sink.deliver(&one()).await, Outcome::Delivered));
        assert_eq!(receiver.tokens_issued(), 3);
        assert_eq!(receiver.requests().last().unwrap().status, 200);
        // The token endpoint down: retried, nothing sent without a token, the reason says where.
        receiver.revoke_token();
        receiver.set_token_endpoint_down(true);
        let sent = receiver.requests().len();
        let outcome = sink.deliver(&one()).await;
        let Outcome::Retry { reason, .. } = outcome else {
            panic!("{outcome:?}");
        };
        assert!(
            reason.contains("token endpoint") && reason.contains("503"),
            "{reason}"
        );
        assert_eq!(
            receiver.requests().len(),
            sent + 1,
            "only the 401 that asked for a token"
        );
        receiver.set_token_endpoint_down(false);
        assert!(matches!(sink.deliver(&one()).await, Outcome::Delivered));
        // A receiver that keeps answering 401: one new token, then the sink's backoff.
        let before = receiver.tokens_issued();
        receiver.script(&[401, 401]);
        let outcome = sink.deliver(&one()).await;
        assert!(
            matches!(outcome, Outcome::Retry { after: None, .. }),
            "{outcome:?}"
        );
        assert_eq!(receiver.tokens_issued(), before + 1);
        // A wrong secret: retried with the fix named, the secret never shown.
        std::fs::write(dir.path().join("wrong"), "not-the-s3cr3t").unwrap();
        let mut wrong = oauth("wrong");
        let outcome = wrong.deliver(&one()).await;
        let Outcome::Retry { reason, .. } = outcome else {
            panic!("{outcome:?}");
        };
        assert!(
            reason.contains("invalid_client") && reason.contains("client_id"),
            "{reason}"
        );
        assert!(!reason.contains("s3cr3t"), "{reason}");
        cancel.cancel();
    }

    #[test]
    fn a_redirect_is_named_without_its_query_or_user_info() {
        assert_eq!(
            shown_location("https://me:pw@erp.example.com:8443/api/events/?api_key=s3cr3t#x"),
            "https://erp.example.com:8443/api/events/"
        );
        assert_eq!(shown_location("/events/?api_key=s3cr3t"), "/events/");
    }

    #[tokio::test]
    async fn a_client_certificate_that_does_not_go_with_its_key_names_both_files() {
        let tasks = tokio_util::task::TaskTracker::new();
        let cancel = tokio_util::sync::CancellationToken::new();
        let mutual = crate::demo::receiver::Receiver::start_mutual(&tasks, cancel.clone())
            .await
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let (cert, _) = mutual.client_identity().unwrap();
        std::fs::write(dir.path().join("client.pem"), cert).unwrap();
        let other = rcgen::KeyPair::generate().unwrap().serialize_pem();
        std::fs::write(dir.path().join("other.key"), other).unwrap();
        let mut c = config(&mutual.url(), None);
        c.identity = Some(("client.pem".into(), "other.key".into()));
        let error = crate::error_chain(&HttpsSink::new("qms", &c, dir.path()).unwrap_err());
        assert!(
            error.contains("client.pem") && error.contains("other.key"),
            "{error}"
        );
        cancel.cancel();
    }

    #[test]
    fn rfc_9457_problem_details_say_what_the_receiver_meant() {
        let problem = headers(&[("content-type", "application/problem+json; charset=utf-8")]);
        let body = r#"{"type":"https://erp.example.com/probs/unknown-order","title":"Unknown order","status":422,"detail":"Order 4711\nis not open","instance":"/confirmations/9","extra":[1,2,3]}"#;
        let Outcome::Reject { reason } = classify(StatusCode::UNPROCESSABLE_ENTITY, &problem, body)
        else {
            panic!("422 is the event's fault");
        };
        assert_eq!(
            reason,
            "HTTP 422 Unprocessable Entity: Unknown order: Order 4711is not open (type https://erp.example.com/probs/unknown-order, instance /confirmations/9)"
        );
        // Long problem details are read whole (up to 8 KiB), not cut at 512 bytes.
        let long = format!(
            r#"{{"title":"Bad","detail":"d","padding":"{}"}}"#,
            "x".repeat(2_000)
        );
        let Outcome::Reject { reason } = classify(StatusCode::BAD_REQUEST, &problem, &long) else {
            panic!("400 is the event's fault");
        };
        assert_eq!(reason, "HTTP 400 Bad Request: Bad: d");
        // Not problem details, or not parseable: the excerpt as before.
        let plain = headers(&[("content-type", "text/plain")]);
        let Outcome::Reject { reason } = classify(StatusCode::BAD_REQUEST, &plain, body) else {
            panic!("400 is the event's fault");
        };
        assert!(
            reason.starts_with("HTTP 400 Bad Request: {\"type\""),
            "{reason}"
        );
        let Outcome::Retry { reason, .. } =
            classify(StatusCode::SERVICE_UNAVAILABLE, &problem, "{oops")
        else {
            panic!("503 is retried");
        };
        assert_eq!(reason, "HTTP 503 Service Unavailable: {oops");
    }

    /// Sample events as the buffer holds them, of the given types.
    fn stored_samples(types: &[&str]) -> Vec<StoredEvent> {
        crate::sinks::samples::sample_events("gw", std::time::SystemTime::now())
            .into_iter()
            .filter(|e| types.contains(&e.event_type.as_str()))
            .enumerate()
            .map(|(i, e)| StoredEvent {
                seq: i as i64 + 1,
                id: e.id.clone(),
                event_type: e.event_type.clone(),
                payload: serde_json::to_string(&e).unwrap(),
            })
            .collect()
    }

    #[tokio::test]
    async fn templated_bodies_reach_the_receiver_with_method_headers_and_content_type() {
        let tasks = tokio_util::task::TaskTracker::new();
        let cancel = tokio_util::sync::CancellationToken::new();
        let receiver = crate::demo::receiver::Receiver::start(&tasks, cancel.clone())
            .await
            .unwrap();
        receiver.take_any_body(true);
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), receiver.ca_pem()).unwrap();
        let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/examples");
        let sink = |file: &str, per_event: bool, content_type: &str, method: &str| {
            let mut c = config(&receiver.url(), None);
            c.ca_file = Some(dir.path().join("ca.pem"));
            c.method = method.into();
            c.headers = vec![("SOAPAction".into(), "urn:example:mes/Report".into())];
            c.body = firmware_config::Body::Template(firmware_config::BodyTemplate {
                source: firmware_config::TemplateSource::File(examples.join(file)),
                per_event,
                content_type: content_type.into(),
            });
            HttpsSink::new("erp", &c, dir.path()).unwrap()
        };
        // The REST ERP: one confirmation per event, PUT here.
        let counts = [
            stored_samples(&["production.count"]),
            stored_samples(&["production.count"]),
        ]
        .concat();
        let mut erp = sink(
            "templates/erp-confirmation.json.j2",
            true,
            "application/json",
            "PUT",
        );
        // A batch is one event with per = "event".
        for one in counts.chunks(1) {
            assert_eq!(erp.deliver(one).await, Outcome::Delivered);
        }
        // The SOAP MES: one envelope for the batch.
        let states = [
            stored_samples(&["production.state"]),
            stored_samples(&["production.state"]),
        ]
        .concat();
        let mut mes = sink(
            "templates/mes-states.soap.xml.j2",
            false,
            "text/xml; charset=utf-8",
            "POST",
        );
        assert_eq!(mes.deliver(&states).await, Outcome::Delivered);
        let seen = receiver.requests();
        assert_eq!(seen.len(), 3, "two confirmations, one envelope");
        assert_eq!(
            mes.take_answer(),
            Some(("HTTP 200".to_owned(), String::new())),
            "the audit keeps a delivery's status, not its body (a receiver may echo credentials)"
        );
        assert_eq!(mes.take_answer(), None, "taken once");
        for (request, event) in seen[..2].iter().zip(&counts) {
            assert_eq!(request.method, "PUT");
            assert_eq!(request.content_type.as_deref(), Some("application/json"));
            assert_eq!(request.idempotency_key.as_deref(), Some(event.id.as_str()));
            let body: serde_json::Value = serde_json::from_str(&request.body).unwrap();
            let data = &serde_json::from_str::<serde_json::Value>(&event.payload).unwrap()["data"];
            assert_eq!(body["confirmationId"], event.id.as_str());
            assert_eq!(body["order"], data["order"]);
            assert_eq!(body["quantityGood"], data["good"]);
            assert_eq!(body["quantityScrap"], data["reject"]);
        }
        let soap = &seen[2];
        assert_eq!(
            soap.content_type.as_deref(),
            Some("text/xml; charset=utf-8")
        );
        assert!(
            soap.headers
                .contains(&("soapaction".into(), "urn:example:mes/Report".into()))
        );
        let doc = roxmltree::Document::parse(&soap.body).unwrap();
        let ids: Vec<&str> = doc
            .descendants()
            .filter(|n| n.has_tag_name(("urn:example:mes", "State")))
            .map(|n| n.attribute("eventId").unwrap())
            .collect();
        assert_eq!(
            ids,
            states.iter().map(|e| e.id.as_str()).collect::<Vec<_>>()
        );
        // Per event, a batch of more (which the config never makes) sends its first event.
        let outcome = erp.deliver(&counts).await;
        assert!(
            matches!(&outcome, Outcome::Partial { delivered: 1, .. }),
            "{outcome:?}"
        );
        // An event the template cannot express is not sent: the runner dead-letters it
        // alone, and the receiver's health is not judged by it.
        let requests = receiver.requests().len();
        let mut broken = counts[..1].to_vec();
        broken[0].payload = r#"{"id":"x","type":"production.count","data":{}}"#.into();
        let outcome = erp.deliver(&broken).await;
        assert!(
            matches!(&outcome, Outcome::Unsendable { reason } if reason.contains("template failed") && reason.contains("requeue --sink erp")),
            "{outcome:?}"
        );
        assert_eq!(receiver.requests().len(), requests, "nothing was sent");
        cancel.cancel();
        tasks.close();
        tasks.wait().await;
    }

    proptest::proptest! {
        /// Whatever lifetime a token endpoint gives, the token is replaced before it expires
        /// (when it lives at all), never more than a tenth of its life or a minute early, and
        /// a lifetime past a year (or not a number) is taken as a year at most.
        #[test]
        fn a_token_is_renewed_before_it_expires_and_not_much_earlier(seconds in proptest::num::f64::ANY) {
            let now = tokio::time::Instant::now();
            let at = renew_at(now, seconds);
            let believed = if seconds.is_nan() { 0.0 } else { seconds.clamp(0.0, 365.0 * 24.0 * 3600.0) };
            let lifetime = Duration::try_from_secs_f64(believed).unwrap_or_default();
            proptest::prop_assert!(at >= now);
            proptest::prop_assert!(at <= now + lifetime);
            if lifetime > Duration::ZERO {
                let early = now + lifetime - at;
                proptest::prop_assert!(early <= Duration::from_secs(60));
                proptest::prop_assert!(early <= lifetime / 10 + Duration::from_nanos(1));
                if lifetime >= Duration::from_secs(10) {
                    proptest::prop_assert!(at < now + lifetime, "replaced before it expires");
                }
            }
        }
    }
}
