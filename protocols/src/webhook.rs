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
use hyper::{
    Method, Request, Response, StatusCode,
    body::{Bytes, Incoming},
    header,
    service::service_fn,
};
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

/// At most one warning of refused posts per this long (the rest are counted in it).
const WARN_EVERY: Duration = Duration::from_secs(10);

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
    /// Refused posts not yet warned about, and when the last warning went.
    refused: Mutex<(u64, Option<Instant>)>,
}

/// Compares in time independent of where the inputs differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
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
    /// Whether the request proves who sent it: the API key, or the body's signature.
    fn authentic(&self, headers: &header::HeaderMap, body: &[u8]) -> Result<(), &'static str> {
        match &self.config.auth {
            WebhookAuth::ApiKey { header, .. } => {
                let given = headers.get(header.as_str()).ok_or("no API key header")?;
                if same(given.as_bytes(), &self.secret) {
                    Ok(())
                } else {
                    Err("wrong API key")
                }
            }
            WebhookAuth::Hmac { header, prefix, .. } => {
                let given = headers
                    .get(header.as_str())
                    .and_then(|v| v.to_str().ok())
                    .ok_or("no signature header")?
                    .trim();
                let hex = given
                    .strip_prefix(prefix.as_str())
                    .ok_or("the signature lacks its prefix")?;
                let digest = unhex(hex).ok_or("the signature is not hex")?;
                let mut mac = Hmac::<sha2::Sha256>::new_from_slice(&self.secret)
                    .map_err(|_| "no usable secret")?;
                mac.update(body);
                mac.verify_slice(&digest).map_err(|_| "wrong signature")
            }
        }
    }

    /// Logs a refused post: the first at once, then at most one line per [`WARN_EVERY`]
    /// with the count.
    fn warn_refused(&self, peer: SocketAddr, status: StatusCode, why: &str) {
        let Ok(mut refused) = self.refused.lock() else {
            return;
        };
        refused.0 = refused.0.saturating_add(1);
        if refused.1.is_some_and(|at| at.elapsed() < WARN_EVERY) {
            return;
        }
        let count = std::mem::take(&mut refused.0);
        refused.1 = Some(Instant::now());
        drop(refused);
        tracing::warn!(source = %self.source, %peer, status = status.as_u16(), why, refused_since_last_warning = count, "Refused a webhook post.");
    }

    async fn handle(&self, peer: SocketAddr, request: Request<Incoming>) -> Response<Full<Bytes>> {
        let refuse = |status: StatusCode, why: &str| {
            self.warn_refused(peer, status, why);
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
        let (parts, body) = request.into_parts();
        let body = match tokio::time::timeout(IO_TIMEOUT, Limited::new(body, max).collect()).await {
            Ok(Ok(collected)) => collected.to_bytes(),
            Ok(Err(error)) if error.is::<http_body_util::LengthLimitError>() => {
                return refuse(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    &format!("the body is larger than max_body ({max} bytes)"),
                );
            }
            Ok(Err(_)) => return refuse(StatusCode::BAD_REQUEST, "the body could not be read"),
            Err(_) => return refuse(StatusCode::REQUEST_TIMEOUT, "the body came too slowly"),
        };
        // Authenticated before anything in the body is looked at.
        if let Err(why) = self.authentic(&parts.headers, &body) {
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
        for (tag, id) in self.config.tags.iter().zip(&self.ids) {
            // A tag the post does not carry is not in this batch: a sender may post some
            // tags at a time.
            if doc.pointer(&tag.value).is_none() {
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
        let accepted = samples.len();
        let batch = SampleBatch {
            source: self.source.clone(),
            samples,
        };
        match tokio::time::timeout(PIPELINE_WAIT, self.out.send(batch)).await {
            Ok(Ok(())) => answer(StatusCode::OK, json!({ "accepted": accepted, "bad": bad })),
            Ok(Err(_)) => refusal(StatusCode::SERVICE_UNAVAILABLE, "the gateway is stopping"),
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
                    tracing::error!(source = %self.config.name, listen = %self.config.listen, %error, retry_in = ?delay, "Cannot listen for webhook posts: is the port taken, or the address not this machine's?");
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
    /// Returns promptly on cancellation; a post being answered then gets no answer, and its
    /// sender posts it again.
    pub async fn run(self, out: mpsc::Sender<SampleBatch>, cancel: CancellationToken) {
        let Some(listener) = self.bind(&cancel).await else {
            return;
        };
        tracing::info!(source = %self.config.name, listen = %self.config.listen, path = %self.config.path, tls = self.tls.is_some(), "Taking webhook posts.");
        let acceptor = self.tls.clone().map(TlsAcceptor::from);
        let shared = Arc::new(Shared {
            source: Arc::from(self.config.name.as_str()),
            config: self.config,
            secret: self.secret,
            ids: self.ids,
            out,
            refused: Mutex::new((0, None)),
        });
        let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        let connections = tokio_util::task::TaskTracker::new();
        loop {
            let permit = tokio::select! {
                () = cancel.cancelled() => break,
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
                    tracing::warn!(source = %shared.source, %error, "Could not accept a webhook connection.");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let (shared, acceptor, cancel) =
                (Arc::clone(&shared), acceptor.clone(), cancel.clone());
            connections.spawn(async move {
                let _permit = permit;
                let service = {
                    let shared = Arc::clone(&shared);
                    service_fn(move |request| {
                        let shared = Arc::clone(&shared);
                        async move { Ok::<_, Infallible>(shared.handle(peer, request).await) }
                    })
                };
                let mut http = hyper::server::conn::http1::Builder::new();
                http.timer(TokioTimer::new())
                    .header_read_timeout(IO_TIMEOUT)
                    .max_buf_size(64 << 10);
                match acceptor {
                    Some(acceptor) => {
                        let tls = match tokio::time::timeout(IO_TIMEOUT, acceptor.accept(stream))
                            .await
                        {
                            Ok(Ok(tls)) => tls,
                            Ok(Err(error)) => {
                                tracing::debug!(source = %shared.source, %peer, %error, "A webhook TLS handshake failed.");
                                return;
                            }
                            Err(_) => return,
                        };
                        let connection = http.serve_connection(TokioIo::new(tls), service);
                        tokio::select! {
                            _ = connection => {}
                            () = cancel.cancelled() => {}
                        }
                    }
                    None => {
                        let connection = http.serve_connection(TokioIo::new(stream), service);
                        tokio::select! {
                            _ = connection => {}
                            () = cancel.cancelled() => {}
                        }
                    }
                }
            });
        }
        connections.close();
        connections.wait().await;
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
        assert_eq!(unhex("é1"), None);
        assert!(same(b"key", b"key"));
        assert!(!same(b"key", b"kez"));
        assert!(!same(b"key", b"keys"));
        // RFC 4231 test case 2.
        assert_eq!(
            signature(b"Jefe", b"what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
