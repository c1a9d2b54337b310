//! A local HTTPS receiver standing in for an ERP/QMS: the demo's, and the tests'. It serves a
//! certificate issued at start by a CA generated at start (PEM available for the sink's
//! `ca_file`), records every CloudEvent it receives (deduplicating by id, counting repeats),
//! and can refuse requests on command to show the buffer at work.

use std::{
    collections::{HashSet, VecDeque},
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, StatusCode, body::Incoming, service::service_fn};
use hyper_util::rt::TokioIo;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::ServerConfig;
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

/// Why the receiver could not start.
#[derive(Debug, thiserror::Error)]
pub enum ReceiverError {
    /// Certificate generation failed.
    #[error("generating the receiver's certificate")]
    Cert(#[from] rcgen::Error),
    /// TLS setup failed.
    #[error("receiver TLS setup")]
    Tls(#[from] rustls::Error),
    /// Binding failed.
    #[error("binding the receiver")]
    Io(#[from] std::io::Error),
}

/// One request as the receiver saw it.
#[derive(Debug, Clone)]
pub struct SeenRequest {
    /// HTTP status answered.
    pub status: u16,
    /// `Idempotency-Key` header.
    pub idempotency_key: Option<String>,
    /// `Authorization` header.
    pub authorization: Option<String>,
    /// Events in the body (0 when it was not a JSON array).
    pub events: usize,
    /// `Content-Type` header.
    pub content_type: Option<String>,
    /// The ids of the events in the body, in order (also for refused requests).
    pub ids: Vec<String>,
    /// Every header, lower-case name and value (lossy), in order.
    pub headers: Vec<(String, String)>,
    /// The method.
    pub method: String,
    /// The body (lossy UTF-8), kept only while [`Receiver::take_any_body`] is set.
    pub body: String,
}

#[derive(Debug, Default)]
struct State {
    /// Every unique event, in arrival order.
    events: Vec<serde_json::Value>,
    ids: HashSet<String>,
    duplicates: usize,
    requests: Vec<SeenRequest>,
    /// Refuse with 503 while set.
    outage: bool,
    /// Statuses to answer the next requests with, before accepting.
    scripted: VecDeque<u16>,
    /// Count events only, keeping neither them nor their ids (benchmarks of large backlogs).
    count_only: bool,
    /// Events accepted in count-only mode.
    counted: usize,
    /// Accept any body (a rendered template), keeping it whole.
    any_body: bool,
    /// TLS handshakes that failed (a client that does not trust the certificate).
    handshake_failures: usize,
    /// Record the events, then wait this long before answering (a crash between delivery and
    /// the sender's cursor update).
    answer_after: Option<std::time::Duration>,
    /// An OAuth2 token endpoint at `/token`, and events only with its latest token.
    oauth: Option<OAuthServer>,
}

/// The receiver's OAuth2 side (client credentials).
#[derive(Debug, Default)]
struct OAuthServer {
    /// `Basic base64(client_id:secret)`, as a client must send it.
    expected: String,
    expires_in: u64,
    /// The token events must carry (the latest issued; older ones are refused).
    current: Option<String>,
    issued: usize,
    down: bool,
}

/// A running receiver. Stops when its cancel token fires.
#[derive(Debug, Clone)]
pub struct Receiver {
    addr: SocketAddr,
    ca_pem: String,
    /// With mutual TLS: a client certificate and key (PEM) the receiver accepts.
    client: Option<(String, String)>,
    state: Arc<Mutex<State>>,
}

/// The CA (PEM and DER), the receiver's chain and key, and a client certificate and key (PEM)
/// issued by the same CA.
type Certificates = (
    String,
    rustls_pki_types::CertificateDer<'static>,
    Vec<rustls_pki_types::CertificateDer<'static>>,
    PrivateKeyDer<'static>,
    (String, String),
);

fn certificates() -> Result<Certificates, rcgen::Error> {
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "Causeway demo CA");
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_key = KeyPair::generate()?;
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca_params, ca_key);
    let mut leaf_params =
        CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])?;
    leaf_params
        .distinguished_name
        .push(DnType::CommonName, "causeway demo receiver");
    let leaf_key = KeyPair::generate()?;
    let leaf = leaf_params.signed_by(&leaf_key, &issuer)?;
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));
    let mut client_params = CertificateParams::new(vec!["causeway".to_owned()])?;
    client_params
        .distinguished_name
        .push(DnType::CommonName, "causeway demo client");
    let client_key = KeyPair::generate()?;
    let client = client_params.signed_by(&client_key, &issuer)?;
    Ok((
        ca_cert.pem(),
        ca_cert.der().clone(),
        vec![leaf.der().clone()],
        key,
        (client.pem(), client_key.serialize_pem()),
    ))
}

impl Receiver {
    /// Starts on 127.0.0.1 with an ephemeral port.
    ///
    /// # Errors
    /// Certificate generation, TLS setup or binding failed.
    pub async fn start(
        tasks: &TaskTracker,
        cancel: CancellationToken,
    ) -> Result<Receiver, ReceiverError> {
        Self::start_with(tasks, cancel, false).await
    }

    /// As [`Receiver::start`], refusing every TLS handshake without a client certificate
    /// issued by its CA (mutual TLS); [`Receiver::client_identity`] is one.
    ///
    /// # Errors
    /// Certificate generation, TLS setup or binding failed.
    pub async fn start_mutual(
        tasks: &TaskTracker,
        cancel: CancellationToken,
    ) -> Result<Receiver, ReceiverError> {
        Self::start_with(tasks, cancel, true).await
    }

    async fn start_with(
        tasks: &TaskTracker,
        cancel: CancellationToken,
        mutual: bool,
    ) -> Result<Receiver, ReceiverError> {
        let (ca_pem, ca_der, chain, key, client) = certificates()?;
        let builder = ServerConfig::builder_with_provider(crate::tls::provider())
            .with_safe_default_protocol_versions()?;
        let config = if mutual {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(ca_der)?;
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                crate::tls::provider(),
            )
            .build()
            .map_err(|e| rustls::Error::General(e.to_string()))?;
            builder
                .with_client_cert_verifier(verifier)
                .with_single_cert(chain, key)?
        } else {
            builder.with_no_client_auth().with_single_cert(chain, key)?
        };
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let receiver = Receiver {
            addr,
            ca_pem,
            client: mutual.then_some(client),
            state: Arc::default(),
        };
        let state = Arc::clone(&receiver.state);
        let inner = tasks.clone();
        tasks.spawn(async move {
            loop {
                let accepted = tokio::select! {
                    () = cancel.cancelled() => break,
                    accepted = listener.accept() => accepted,
                };
                let Ok((stream, _)) = accepted else { continue };
                let (acceptor, state, cancel) =
                    (acceptor.clone(), Arc::clone(&state), cancel.clone());
                inner.spawn(async move {
                    let Ok(Ok(tls)) = tokio::time::timeout(
                        std::time::Duration::from_secs(10),
                        acceptor.accept(stream),
                    )
                    .await
                    else {
                        lock(&state).handshake_failures += 1;
                        return;
                    };
                    let service = service_fn(move |req| handle(req, Arc::clone(&state)));
                    let connection = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), service);
                    tokio::select! {
                        _ = connection => {}
                        () = cancel.cancelled() => {}
                    }
                });
            }
        });
        Ok(receiver)
    }

    /// `https://127.0.0.1:PORT/events`.
    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}/events", self.addr.port())
    }

    /// The CA certificate (PEM) that issued the receiver's certificate.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// Serves an OAuth2 token endpoint at [`Receiver::token_url`] for this client (client
    /// credentials, basic auth), issuing tokens that live `expires_in` seconds (`0`: no
    /// `expires_in` in the answer), and from now on takes events only with the latest token
    /// (401 otherwise).
    pub fn require_oauth(&self, client_id: &str, secret: &str, expires_in: u64) {
        self.state().oauth = Some(OAuthServer {
            expected: format!(
                "Basic {}",
                firmware_config::base64_encode(format!("{client_id}:{secret}").as_bytes())
            ),
            expires_in,
            ..OAuthServer::default()
        });
    }

    /// `https://127.0.0.1:PORT/token`.
    pub fn token_url(&self) -> String {
        format!("https://127.0.0.1:{}/token", self.addr.port())
    }

    /// Tokens issued so far.
    pub fn tokens_issued(&self) -> usize {
        self.state().oauth.as_ref().map_or(0, |o| o.issued)
    }

    /// Refuses the token events carry now (as an expiry or a revocation would).
    pub fn revoke_token(&self) {
        if let Some(o) = self.state().oauth.as_mut() {
            o.current = None;
        }
    }

    /// While `true`, the token endpoint answers 503.
    pub fn set_token_endpoint_down(&self, down: bool) {
        if let Some(o) = self.state().oauth.as_mut() {
            o.down = down;
        }
    }

    /// With mutual TLS, a client certificate and its key (PEM) that the receiver accepts.
    pub fn client_identity(&self) -> Option<(&str, &str)> {
        self.client.as_ref().map(|(c, k)| (c.as_str(), k.as_str()))
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// While `true`, every request is answered 503 with `Retry-After: 1`.
    pub fn set_outage(&self, outage: bool) {
        self.state().outage = outage;
    }

    /// Answers the next requests with these statuses, in order, before accepting again.
    pub fn script(&self, statuses: &[u16]) {
        self.state().scripted.extend(statuses);
    }

    /// While `true`, any body is accepted (200) and kept whole in [`SeenRequest::body`]: a
    /// receiver for rendered templates.
    pub fn take_any_body(&self, any: bool) {
        self.state().any_body = any;
    }

    /// Unique events received so far, from index `from`.
    pub fn events_since(&self, from: usize) -> Vec<serde_json::Value> {
        self.state()
            .events
            .get(from..)
            .map(<[_]>::to_vec)
            .unwrap_or_default()
    }

    /// TLS handshakes that failed so far.
    pub fn handshake_failures(&self) -> usize {
        self.state().handshake_failures
    }

    /// From now on, records each accepted request's events and then waits `delay` before
    /// answering (`None`: answers at once).
    pub fn answer_after(&self, delay: Option<std::time::Duration>) {
        self.state().answer_after = delay;
    }

    /// Counts accepted events without keeping them or their ids, so a benchmark of millions of
    /// events measures the gateway, not the receiver's memory. [`Receiver::counted`] tells how many.
    pub fn set_count_only(&self, count_only: bool) {
        self.state().count_only = count_only;
    }

    /// Events accepted while counting only.
    pub fn counted(&self) -> usize {
        self.state().counted
    }

    /// Count of unique events received.
    pub fn unique(&self) -> usize {
        self.state().events.len()
    }

    /// Events received again after they had been received once.
    pub fn duplicates(&self) -> usize {
        self.state().duplicates
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<SeenRequest> {
        self.state().requests.clone()
    }
}

fn lock(state: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    state
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

async fn handle(
    req: Request<Incoming>,
    state: Arc<Mutex<State>>,
) -> Result<Response<Full<hyper::body::Bytes>>, hyper::Error> {
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let (idempotency_key, authorization, content_type) = (
        header("idempotency-key"),
        header("authorization"),
        header("content-type"),
    );
    let status = |code: StatusCode, text: String| {
        let mut response = Response::new(Full::from(text));
        *response.status_mut() = code;
        response
    };
    if req.uri().path() == "/token" {
        let mut s = lock(&state);
        let Some(oauth) = s.oauth.as_mut() else {
            return Ok(status(StatusCode::NOT_FOUND, "no token endpoint".into()));
        };
        if oauth.down {
            return Ok(status(
                StatusCode::SERVICE_UNAVAILABLE,
                "down on purpose".into(),
            ));
        }
        if authorization.as_deref() != Some(oauth.expected.as_str()) {
            return Ok(status(
                StatusCode::UNAUTHORIZED,
                r#"{"error":"invalid_client"}"#.into(),
            ));
        }
        oauth.issued += 1;
        let token = format!("token-{}", oauth.issued);
        oauth.current = Some(token.clone());
        let answer = if oauth.expires_in == 0 {
            serde_json::json!({ "access_token": token, "token_type": "Bearer" })
        } else {
            serde_json::json!({ "access_token": token, "token_type": "Bearer", "expires_in": oauth.expires_in })
        };
        return Ok(Response::new(Full::from(answer.to_string())));
    }
    let refused_token = lock(&state)
        .oauth
        .as_ref()
        .is_some_and(|o| o.current.as_ref().map(|t| format!("Bearer {t}")) != authorization);
    let headers: Vec<(String, String)> = req
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let method = req.method().as_str().to_owned();
    let body = req.into_body().collect().await?.to_bytes();
    if lock(&state).count_only {
        return Ok(
            match serde_json::from_slice::<Vec<serde::de::IgnoredAny>>(&body) {
                Ok(events) => {
                    lock(&state).counted += events.len();
                    Response::new(Full::from("ok"))
                }
                Err(error) => {
                    let mut response =
                        Response::new(Full::from(format!("not a JSON array: {error}")));
                    *response.status_mut() = StatusCode::BAD_REQUEST;
                    response
                }
            },
        );
    }
    let parsed: Result<Vec<serde_json::Value>, _> = serde_json::from_slice(&body);
    let ids: Vec<String> = parsed
        .as_ref()
        .map(|events| {
            events
                .iter()
                .map(|e| {
                    e.get("id")
                        .and_then(|v| v.as_str())
                        .unwrap_or_default()
                        .to_owned()
                })
                .collect()
        })
        .unwrap_or_default();
    let any_body = lock(&state).any_body;
    let seen = |status, events| SeenRequest {
        status,
        idempotency_key: idempotency_key.clone(),
        authorization: authorization.clone(),
        events,
        content_type: content_type.clone(),
        ids: ids.clone(),
        headers: headers.clone(),
        method: method.clone(),
        body: if any_body {
            String::from_utf8_lossy(&body).into_owned()
        } else {
            String::new()
        },
    };
    if refused_token {
        lock(&state).requests.push(seen(401, ids.len()));
        return Ok(status(StatusCode::UNAUTHORIZED, "invalid_token".into()));
    }
    let refuse = {
        let mut s = lock(&state);
        if s.outage {
            Some(503)
        } else {
            s.scripted.pop_front()
        }
    };
    if let Some(status) = refuse.filter(|s| !(200..300).contains(s)) {
        lock(&state).requests.push(seen(status, ids.len()));
        let mut response = Response::new(Full::from(format!("refused on purpose ({status})")));
        *response.status_mut() =
            StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
        if status == 503 || status == 429 {
            response
                .headers_mut()
                .insert("retry-after", hyper::header::HeaderValue::from_static("1"));
        }
        return Ok(response);
    }
    if any_body {
        lock(&state).requests.push(seen(200, 0));
        return Ok(Response::new(Full::from(r#"{"accepted":true}"#)));
    }
    let events = match parsed {
        Ok(events) => events,
        Err(error) => {
            lock(&state).requests.push(seen(400, 0));
            let mut response = Response::new(Full::from(format!(
                "body is not a JSON array of events: {error}"
            )));
            *response.status_mut() = StatusCode::BAD_REQUEST;
            return Ok(response);
        }
    };
    let delay = {
        let mut s = lock(&state);
        s.requests.push(seen(200, events.len()));
        for event in events {
            let id = event
                .get("id")
                .and_then(|v| v.as_str())
                .unwrap_or_default()
                .to_owned();
            if s.ids.insert(id) {
                s.events.push(event);
            } else {
                s.duplicates += 1;
            }
        }
        s.answer_after
    };
    if let Some(delay) = delay {
        tokio::time::sleep(delay).await;
    }
    Ok(Response::new(Full::from("ok")))
}
