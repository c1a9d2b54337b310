//! The webhook source: an HTTPS endpoint where a system that can only push (an MES, a SCADA)
//! posts JSON. Each post is checked (an API key, or an HMAC-SHA256 of the body), read into the
//! source's tags by JSON Pointer like an MQTT JSON message, and answered only once its samples
//! are in the pipeline.
//!
//! Answers: 200 with `{"accepted": n, "bad": [...]}` (a value that does not convert is a Bad
//! sample, named); 400 with the reason for a body that is not JSON or holds none of the tags;
//! 401 for a missing or wrong key or signature (logged, at most one warning per 10 s); 404 for
//! another path; 405 for a method other than POST or PUT; 413 past `max_body`; 503 with
//! `Retry-After` while the pipeline cannot take the samples. Nothing reaches the rules
//! unauthenticated: the body is not parsed before the check.
//!
//! Bounds: at most [`MAX_CONNECTIONS`] connections at once (more wait in the kernel's
//! backlog), [`IO_TIMEOUT`] for the TLS handshake, the headers and the body each.

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use firmware_config::{WebhookAuth, WebhookSourceConfig};
use hmac::{Hmac, Mac};
use http_body_util::{BodyExt, Full, Limited};
use hyper::{Method, Request, Response, StatusCode, body::Bytes, header, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::json;
use tokio::{
    net::TcpListener,
    sync::{Semaphore, mpsc},
};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::{
    backoff::Backoff,
    model::{SampleBatch, TagId},
    mqtt::payload::json_tag_sample,
};

/// Connections served at once.
pub const MAX_CONNECTIONS: usize = 64;

/// Deadline for a TLS handshake, a request's headers, and its body.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a post waits for the pipeline to take its samples before it is answered 503.
const PIPELINE_WAIT: Duration = Duration::from_secs(5);

/// At most one warning of each kind of refusal per this long (the rest are counted in the
/// next, which a timer writes even when no further refusal comes).
const WARN_EVERY: Duration = Duration::from_secs(10);

/// Connections one address may hold at once: one sender cannot take every slot.
pub const MAX_PER_PEER: usize = 8;

/// The longest a connection lives (one request: no keep-alive), whatever its peer does: a
/// client that stops reading the answer frees its slot after this.
pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(30);

/// Most characters of a Bad sample's reason in an answer.
const MAX_REASON: usize = 200;

/// A webhook source, ready to run.
pub struct WebhookSource {
    config: WebhookSourceConfig,
    tls: Option<Arc<rustls::ServerConfig>>,
    secret: Vec<u8>,
    ids: Vec<TagId>,
}

impl std::fmt::Debug for WebhookSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookSource")
            .field("name", &self.config.name)
            .field("listen", &self.config.listen)
            .field("tls", &self.tls.is_some())
            .finish_non_exhaustive()
    }
}

/// What the handler of each request shares.
struct Shared {
    config: WebhookSourceConfig,
    secret: Vec<u8>,
    ids: Vec<TagId>,
    source: Arc<str>,
    out: mpsc::Sender<SampleBatch>,
    /// Per kind of refusal (`401`, `tls`, ...): refusals not yet warned about, the last
    /// reason, and when the last warning went.
    refused: Mutex<std::collections::BTreeMap<&'static str, Refusals>>,
    /// Connections open per peer address.
    peers: Mutex<std::collections::HashMap<std::net::IpAddr, usize>>,
}

/// Refusals of one kind since the last warning.
#[derive(Default)]
struct Refusals {
    count: u64,
    last: String,
    warned: Option<Instant>,
}

/// Compares in time independent of the inputs, their lengths included: the SHA-256 of each,
/// folded.
fn same(a: &[u8], b: &[u8]) -> bool {
    use sha2::Digest;
    let (a, b) = (sha2::Sha256::digest(a), sha2::Sha256::digest(b));
    a.iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

/// Hex digits to bytes; `None` unless it is an even number of hex digits.
fn unhex(text: &str) -> Option<Vec<u8>> {
    let digits = text.as_bytes();
    if !digits.len().is_multiple_of(2) {
        return None;
    }
    digits
        .chunks(2)
        .map(|pair| {
            let hi = (pair[0] as char).to_digit(16)?;
            let lo = (pair[1] as char).to_digit(16)?;
            u8::try_from(hi * 16 + lo).ok()
        })
        .collect()
}

/// The lowercase hex HMAC-SHA256 of `body` under `secret`, as a sender writes it.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    // HMAC takes a key of any length.
    let Ok(mut mac) = Hmac::<sha2::Sha256>::new_from_slice(secret) else {
        return String::new();
    };
    mac.update(body);
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn answer(status: StatusCode, body: serde_json::Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::from(body.to_string()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    response
}

fn refusal(status: StatusCode, why: &str) -> Response<Full<Bytes>> {
    answer(status, json!({ "error": why }))
}

impl Shared {
    /// With an API key: whether the headers carry it (checked before the body is read).
    fn key_given(&self, headers: &header::HeaderMap) -> Result<(), &'static str> {
        match &self.config.auth {
            WebhookAuth::ApiKey { header, .. } => {
                let given = headers.get(header.as_str()).ok_or("no API key header")?;
                if same(given.as_bytes(), &self.secret) {
                    Ok(())
                } else {
                    Err("wrong API key")
                }
            }
            WebhookAuth::Hmac { .. } => Ok(()),
        }
    }

    /// With an HMAC: whether the headers carry the body's signature.
    fn signed(&self, headers: &header::HeaderMap, body: &[u8]) -> Result<(), &'static str> {
        match &self.config.auth {
            WebhookAuth::ApiKey { .. } => Ok(()),
            WebhookAuth::Hmac { header, prefix, .. } => {
                let given = headers
                    .get(header.as_str())
                    .ok_or("no signature header")?
                    .to_str()
                    .map_err(|_| "the signature header is not text")?
                    .trim();
                let hex = given
                    .get(..prefix.len())
                    .filter(|p| p.eq_ignore_ascii_case(prefix))
                    .and_then(|_| given.get(prefix.len()..))
                    .ok_or("the signature lacks its prefix")?;
                let digest = unhex(hex).ok_or("the signature is not hex")?;
                let mut mac = Hmac::<sha2::Sha256>::new_from_slice(&self.secret)
                    .map_err(|_| "no usable secret")?;
                mac.update(body);
                mac.verify_slice(&digest).map_err(|_| "wrong signature")
            }
        }
    }

    /// Logs a refusal of kind `kind`: the first at once, then at most one line per
    /// [`WARN_EVERY`] with the count ([`Shared::flush`] writes what a quiet spell left).
    fn warn_refused(&self, kind: &'static str, peer: SocketAddr, why: &str) {
        let Ok(mut refused) = self.refused.lock() else {
            return;
        };
        let entry = refused.entry(kind).or_default();
        entry.count = entry.count.saturating_add(1);
        entry.last = format!("{peer}: {why}");
        if entry.warned.is_some_and(|at| at.elapsed() < WARN_EVERY) {
            return;
        }
        let count = std::mem::take(&mut entry.count);
        entry.warned = Some(Instant::now());
        drop(refused);
        tracing::warn!(source = %self.source, %peer, refused = kind, why, count, "Refused webhook posts (`count` since the last such line); the sender must fix what `why` says.");
    }

    /// Writes the refusals counted since their kind's last warning, once it is due.
    fn flush(&self) {
        let Ok(mut refused) = self.refused.lock() else {
            return;
        };
        for (kind, entry) in refused.iter_mut() {
            if entry.count > 0 && entry.warned.is_none_or(|at| at.elapsed() >= WARN_EVERY) {
                let count = std::mem::take(&mut entry.count);
                entry.warned = Some(Instant::now());
                tracing::warn!(source = %self.source, refused = *kind, last = %entry.last, count, "Refused webhook posts (`count` since the last such line); the sender must fix what `last` says.");
            }
        }
    }

    async fn handle<B>(&self, peer: SocketAddr, request: Request<B>) -> Response<Full<Bytes>>
    where
        B: hyper::body::Body<Data = Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let refuse = |status: StatusCode, why: &str| {
            let kind = match status.as_u16() {
                401 => "401 unauthenticated",
                400 => "400 bad body",
                413 => "413 too large",
                503 => "503 pipeline full",
                _ => "other",
            };
            self.warn_refused(kind, peer, why);
            refusal(status, why)
        };
        if request.uri().path() != self.config.path {
            return refuse(StatusCode::NOT_FOUND, "no webhook at this path");
        }
        if !matches!(*request.method(), Method::POST | Method::PUT) {
            let mut response = refuse(StatusCode::METHOD_NOT_ALLOWED, "POST the JSON document");
            response
                .headers_mut()
                .insert(header::ALLOW, header::HeaderValue::from_static("POST, PUT"));
            return response;
        }
        let max = self.config.max_body;
        let declared = request
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > max as u64) {
            return refuse(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!("the body is larger than max_body ({max} bytes)"),
            );
        }
        // An API key is checked before a byte of the body is read.
        if let Err(why) = self.key_given(request.headers()) {
            return refuse(StatusCode::UNAUTHORIZED, why);
        }
        let (parts, body) = request.into_parts();
        let body = match tokio::time::timeout(IO_TIMEOUT, Limited::new(body, max).collect()).await {
            Ok(Ok(collected)) => collected.to_bytes(),
            Ok(Err(error))
                if error
                    .downcast_ref::<http_body_util::LengthLimitError>()
                    .is_some() =>
            {
                return refuse(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    &format!("the body is larger than max_body ({max} bytes)"),
                );
            }
            Ok(Err(_)) => return refuse(StatusCode::BAD_REQUEST, "the body could not be read"),
            Err(_) => return refuse(StatusCode::REQUEST_TIMEOUT, "the body came too slowly"),
        };
        // A signature is checked before anything in the body is looked at.
        if let Err(why) = self.signed(&parts.headers, &body) {
            return refuse(StatusCode::UNAUTHORIZED, why);
        }
        let doc: serde_json::Value = match serde_json::from_slice(&body) {
            Ok(doc) => doc,
            Err(e) => {
                return refuse(
                    StatusCode::BAD_REQUEST,
                    &format!(
                        "malformed JSON at line {}, column {}: {e}",
                        e.line(),
                        e.column()
                    ),
                );
            }
        };
        let now = SystemTime::now();
        let mut samples = Vec::new();
        let mut bad = Vec::new();
        let mut missing = Vec::new();
        for (tag, id) in self.config.tags.iter().zip(&self.ids) {
            // A tag the post does not carry is not in this batch (a sender may post some tags
            // at a time), but it is named in the answer and the log: a renamed member must
            // not leave a tag stale unseen.
            if doc.pointer(&tag.value).is_none() {
                missing.push(tag.name.as_str());
                continue;
            }
            let sample = json_tag_sample(
                &doc,
                (&tag.value, tag.timestamp.as_deref(), tag.quality.as_deref()),
                tag.data_type,
                id,
                now,
            );
            if let crate::model::Quality::Bad(why) = &sample.quality {
                let why: String = why.chars().take(MAX_REASON).collect();
                bad.push(json!({ "tag": tag.name, "why": why }));
            }
            samples.push(sample);
        }
        if samples.is_empty() {
            let expected: Vec<&str> = self.config.tags.iter().map(|t| t.value.as_str()).collect();
            return refuse(
                StatusCode::BAD_REQUEST,
                &format!(
                    "the body holds none of this source's tags (expected {})",
                    expected.join(", ")
                ),
            );
        }
        if !missing.is_empty() {
            self.warn_refused(
                "tags missing",
                peer,
                &format!(
                    "a post without tag(s) {} (they keep their last value)",
                    missing.join(", ")
                ),
            );
        }
        let accepted = samples.len();
        let batch = SampleBatch {
            source: self.source.clone(),
            samples,
        };
        match tokio::time::timeout(PIPELINE_WAIT, self.out.send(batch)).await {
            Ok(Ok(())) => answer(
                StatusCode::OK,
                json!({ "accepted": accepted, "bad": bad, "missing": missing }),
            ),
            Ok(Err(_)) => {
                let mut response =
                    refusal(StatusCode::SERVICE_UNAVAILABLE, "the gateway is stopping");
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, header::HeaderValue::from_static("10"));
                response
            }
            Err(_) => {
                let mut response = refuse(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the gateway's buffer is behind; post again",
                );
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
                response
            }
        }
    }
}

impl WebhookSource {
    /// A source for `config`, serving TLS with `tls` (`None`: plain http, which the config
    /// allows only with `insecure = true`), checking posts with `secret` (the API key or the
    /// HMAC secret).
    pub fn new(
        config: WebhookSourceConfig,
        tls: Option<Arc<rustls::ServerConfig>>,
        secret: String,
    ) -> Self {
        let ids = config
            .tags
            .iter()
            .map(|t| TagId::from(format!("{}.{}", config.name, t.name)))
            .collect();
        WebhookSource {
            config,
            tls,
            secret: secret.into_bytes(),
            ids,
        }
    }

    /// Binds `listen`, retrying with backoff (logged) while the address is taken.
    async fn bind(&self, cancel: &CancellationToken) -> Option<TcpListener> {
        let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
        loop {
            match TcpListener::bind(self.config.listen).await {
                Ok(listener) => return Some(listener),
                Err(error) => {
                    let delay = backoff.next_delay();
                    let fix = match error.kind() {
                        std::io::ErrorKind::AddrInUse => {
                            "another program (or another source) listens on this port: choose another `listen`"
                        }
                        std::io::ErrorKind::PermissionDenied => {
                            "ports below 1024 need root or CAP_NET_BIND_SERVICE: use a port of 1024 or above"
                        }
                        std::io::ErrorKind::AddrNotAvailable => {
                            "the address is not one of this machine's: use 0.0.0.0 or an address of its interfaces"
                        }
                        _ => "check `listen`",
                    };
                    tracing::error!(source = %self.config.name, listen = %self.config.listen, %error, fix, retry_in = ?delay, "Cannot listen for webhook posts; retrying.");
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        () = cancel.cancelled() => return None,
                    }
                }
            }
        }
    }

    /// Serves posts until `cancel` fires, sending one [`SampleBatch`] per accepted post.
    ///
    /// # Cancel safety
    /// Returns promptly on cancellation (every connection, handshakes included, watches
    /// it); a post being answered then gets no answer, and its sender posts it again.
    pub async fn run(self, out: mpsc::Sender<SampleBatch>, cancel: CancellationToken) {
        let Some(listener) = self.bind(&cancel).await else {
            return;
        };
        if self.tls.is_none() {
            tracing::warn!(source = %self.config.name, listen = %self.config.listen, "Taking webhook posts over plain http (insecure = true): keys and bodies travel in clear.");
        }
        tracing::info!(source = %self.config.name, listen = %self.config.listen, path = %self.config.path, tls = self.tls.is_some(), "Taking webhook posts.");
        let acceptor = self.tls.clone().map(TlsAcceptor::from);
        let shared = Arc::new(Shared {
            source: Arc::from(self.config.name.as_str()),
            config: self.config,
            secret: self.secret,
            ids: self.ids,
            out,
            refused: Mutex::default(),
            peers: Mutex::default(),
        });
        let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        let connections = tokio_util::task::TaskTracker::new();
        let mut flush = tokio::time::interval(WARN_EVERY);
        flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let permit = tokio::select! {
                () = cancel.cancelled() => break,
                _ = flush.tick() => {
                    shared.flush();
                    continue;
                }
                permit = Arc::clone(&slots).acquire_owned() => permit,
            };
            // The semaphore is never closed.
            let Ok(permit) = permit else { break };
            let accepted = tokio::select! {
                () = cancel.cancelled() => break,
                accepted = listener.accept() => accepted,
            };
            let (stream, peer) = match accepted {
                Ok(a) => a,
                Err(error) => {
                    // Out of file descriptors, most likely: wait a little, quietly after
                    // the first.
                    shared.warn_refused(
                        "accept failed",
                        SocketAddr::from(([0, 0, 0, 0], 0)),
                        &error.to_string(),
                    );
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_millis(100)) => {}
                        () = cancel.cancelled() => break,
                    }
                    continue;
                }
            };
            let Some(seat) = Seat::take(&shared, peer) else {
                shared.warn_refused(
                    "too many connections",
                    peer,
                    &format!("more than {MAX_PER_PEER} connections at once from one address"),
                );
                continue;
            };
            let (shared, acceptor, cancel) =
                (Arc::clone(&shared), acceptor.clone(), cancel.clone());
            connections.spawn(async move {
                let _held = (permit, seat);
                let served = serve(&shared, acceptor, stream, peer);
                tokio::select! {
                    result = tokio::time::timeout(CONNECTION_LIFETIME, served) => {
                        if result.is_err() {
                            tracing::debug!(source = %shared.source, %peer, "A webhook connection outlived its time and was closed.");
                        }
                    }
                    () = cancel.cancelled() => {}
                }
            });
        }
        connections.close();
        connections.wait().await;
    }
}

/// One connection's place among its peer's: given back when dropped.
struct Seat {
    shared: Arc<Shared>,
    ip: std::net::IpAddr,
}

impl Seat {
    /// A place for a connection from `peer`, unless it holds [`MAX_PER_PEER`] already.
    fn take(shared: &Arc<Shared>, peer: SocketAddr) -> Option<Seat> {
        let mut peers = shared.peers.lock().ok()?;
        let held = peers.entry(peer.ip()).or_insert(0);
        if *held >= MAX_PER_PEER {
            return None;
        }
        *held += 1;
        Some(Seat {
            shared: Arc::clone(shared),
            ip: peer.ip(),
        })
    }
}

impl Drop for Seat {
    fn drop(&mut self) {
        if let Ok(mut peers) = self.shared.peers.lock()
            && let Some(held) = peers.get_mut(&self.ip)
        {
            *held = held.saturating_sub(1);
            if *held == 0 {
                peers.remove(&self.ip);
            }
        }
    }
}

/// Serves one connection: the TLS handshake (when there is TLS), then one request (no
/// keep-alive: a connection is a request, so none holds its slot idle).
async fn serve(
    shared: &Arc<Shared>,
    acceptor: Option<TlsAcceptor>,
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
) {
    let service = {
        let shared = Arc::clone(shared);
        service_fn(move |request| {
            let shared = Arc::clone(&shared);
            async move { Ok::<_, Infallible>(shared.handle(peer, request).await) }
        })
    };
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(IO_TIMEOUT)
        .keep_alive(false)
        .max_buf_size(64 << 10);
    match acceptor {
        Some(acceptor) => {
            let tls = match tokio::time::timeout(IO_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(error)) => {
                    // A sender that does not trust the certificate, or speaks plain http.
                    shared.warn_refused("tls handshake", peer, &error.to_string());
                    return;
                }
                Err(_) => return,
            };
            let _ = http.serve_connection(TokioIo::new(tls), service).await;
        }
        None => {
            let _ = http.serve_connection(TokioIo::new(stream), service).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_and_constant_time_comparison() {
        assert_eq!(unhex("00ff10"), Some(vec![0, 255, 16]));
        assert_eq!(unhex("0G"), None);
        assert_eq!(unhex("abc"), None);
        assert_eq!(unhex("é"), None, "two bytes, not hex");
        assert!(same(b"key", b"key"));
        assert!(!same(b"key", b"kez"));
        assert!(!same(b"key", b"keys"));
        // RFC 4231 test case 2.
        assert_eq!(
            signature(b"Jefe", b"what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    fn shared(max_body: usize) -> (Arc<Shared>, mpsc::Receiver<SampleBatch>) {
        let (out, rx) = mpsc::channel(4);
        let config = WebhookSourceConfig {
            name: "mes".into(),
            listen: "127.0.0.1:1".parse().unwrap(),
            path: "/".into(),
            tls: None,
            auth: WebhookAuth::ApiKey {
                header: "X-API-Key".into(),
                key: firmware_config::Secret::Env("K".into()),
            },
            max_body,
            tags: ["a", "b"]
                .map(|n| firmware_config::WebhookTagConfig {
                    name: n.into(),
                    value: format!("/{n}"),
                    timestamp: None,
                    quality: None,
                    data_type: None,
                })
                .to_vec(),
        };
        let ids = vec![TagId::from("mes.a"), TagId::from("mes.b")];
        let shared = Shared {
            source: Arc::from("mes"),
            config,
            secret: b"0123456789abcdef".to_vec(),
            ids,
            out,
            refused: Mutex::default(),
            peers: Mutex::default(),
        };
        (Arc::new(shared), rx)
    }

    fn post(key: &str, body: &'static str) -> Request<Full<Bytes>> {
        // No Content-Length: the body's size is found by reading it.
        Request::post("/")
            .header("X-API-Key", key)
            .body(Full::from(body))
            .unwrap()
    }

    async fn answer_of(response: Response<Full<Bytes>>) -> (u16, serde_json::Value) {
        let status = response.status().as_u16();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, serde_json::from_slice(&body).unwrap())
    }

    #[tokio::test]
    async fn an_undeclared_body_past_max_body_is_413_and_missing_tags_are_named() {
        let (shared, mut rx) = shared(32);
        let peer: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let long = r#"{"a": 1, "pad": "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}"#;
        let (status, _) =
            answer_of(shared.handle(peer, post("0123456789abcdef", long)).await).await;
        assert_eq!(status, 413);
        let (status, _) = answer_of(
            shared
                .handle(peer, post("wrong-key-456789", r#"{"a": 1}"#))
                .await,
        )
        .await;
        assert_eq!(status, 401);
        assert!(rx.try_recv().is_err(), "nothing passed");
        let (status, answer) = answer_of(
            shared
                .handle(peer, post("0123456789abcdef", r#"{"a": 1}"#))
                .await,
        )
        .await;
        assert_eq!(status, 200);
        assert_eq!(answer["missing"], serde_json::json!(["b"]), "{answer}");
        assert_eq!(rx.recv().await.unwrap().samples.len(), 1);
        // Refusals are counted per kind; the flush writes what waits once it is due.
        let refused = shared.refused.lock().unwrap();
        assert!(refused.contains_key("413 too large"));
        assert!(refused.contains_key("401 unauthenticated"));
    }
}
