//! Opening a session: the client and its PKI folder, the endpoint the config asks for (never a
//! weaker one), the user identity, and errors that say what to change.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, SystemTime},
};

use firmware_config::{OpcUaConfig, Secret, UaIdentity, UaMode, UaPolicy};
use futures_util::StreamExt;
use opcua::{
    client::{Client, ClientBuilder, IdentityToken, Session, SessionPollResult},
    crypto::{CertificateStore, SecurityPolicy, X509},
    types::{EndpointDescription, MessageSecurityMode, StatusCode, UserTokenType},
};
use tokio::{sync::mpsc, task::JoinHandle};

/// Application URI of Causeway's client certificate.
pub const APPLICATION_URI: &str = "urn:causeway:gateway";
/// Certificates expiring within this are warned about at every connect.
pub const EXPIRY_WARNING: Duration = Duration::from_secs(30 * 24 * 3600);

/// Why a session could not be opened. Each says what to change.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// No answer, or not an OPC UA server.
    #[error("cannot reach {endpoint}: {status}; check the host, the port and that the server runs")]
    Unreachable {
        /// As configured.
        endpoint: String,
        /// The transport's status.
        status: StatusCode,
    },
    /// The server offers no endpoint with the configured policy and mode.
    #[error(
        "the server does not offer security {wanted}; it offers {offered}. Set security_policy and security_mode to one of those (Causeway never falls back to a weaker one by itself)"
    )]
    PolicyNotOffered {
        /// `policy/mode` as configured.
        wanted: String,
        /// What the server lists.
        offered: String,
    },
    /// The endpoint does not take the configured kind of identity.
    #[error(
        "the server's {endpoint} endpoint does not accept {wanted} logins; it accepts {offered}"
    )]
    IdentityNotOffered {
        /// `policy/mode`.
        endpoint: String,
        /// anonymous, user name or certificate.
        wanted: &'static str,
        /// What it lists.
        offered: String,
    },
    /// The server's certificate is not in `trusted/`.
    #[error(
        "the server's certificate is not trusted; it was saved as {file}. If it is the right server, trust it: mv {file:?} {trusted:?}/ (then Causeway connects at its next retry)"
    )]
    Untrusted {
        /// The rejected copy.
        file: String,
        /// Where it goes to be trusted.
        trusted: String,
    },
    /// The server's certificate is there but unusable (expired, wrong host name).
    #[error("the server's certificate is refused: {status} ({detail})")]
    BadServerCertificate {
        /// Which check failed.
        status: StatusCode,
        /// What it means.
        detail: &'static str,
    },
    /// The server refused our certificate.
    #[error(
        "the server refused Causeway's certificate ({status}); trust {own} on the server (most servers put it in their own rejected folder)"
    )]
    ClientRejected {
        /// The server's status.
        status: StatusCode,
        /// Our certificate's file.
        own: String,
    },
    /// The user or password is wrong.
    #[error("the server refused the login ({status}); check {what}")]
    AccessDenied {
        /// The server's status.
        status: StatusCode,
        /// The user and where the password comes from.
        what: String,
    },
    /// The password or user certificate could not be read.
    #[error("cannot read the {what}: {why}")]
    Credentials {
        /// password_file, password_env or the certificate.
        what: String,
        /// The cause.
        why: String,
    },
    /// Any other refusal.
    #[error("the server refused the session: {status} ({detail})")]
    Refused {
        /// The server's status.
        status: StatusCode,
        /// What it means.
        detail: &'static str,
    },
    /// No answer within the timeout.
    #[error("no answer from {endpoint} within {timeout:?}")]
    Timeout {
        /// As configured.
        endpoint: String,
        /// The source's timeout.
        timeout: Duration,
    },
}

impl ConnectError {
    /// Errors that another attempt cannot fix without a change by someone: logged at error.
    pub fn needs_a_person(&self) -> bool {
        !matches!(
            self,
            ConnectError::Unreachable { .. } | ConnectError::Timeout { .. }
        )
    }
}

/// What the session's event loop reports.
#[derive(Debug)]
pub enum Event {
    /// The session is up.
    Up,
    /// The connection is gone, with the reason.
    Down(StatusCode),
}

/// A task aborted when its handle is dropped (a detached session driver would keep its socket
/// and its server-side session).
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// An open session and the task that drives it.
pub struct Live {
    /// The session.
    pub session: Arc<Session>,
    /// What the event loop reports.
    pub events: mpsc::Receiver<Event>,
    _driver: AbortOnDrop,
}

impl std::fmt::Debug for Live {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Live").finish_non_exhaustive()
    }
}

impl Live {
    /// Closes the session, waiting at most a second for the server to acknowledge.
    pub async fn close(self) {
        let _ = tokio::time::timeout(Duration::from_secs(1), self.session.disconnect()).await;
    }
}

/// Builds sessions for one source.
pub struct Connector {
    config: Arc<OpcUaConfig>,
    pki_dir: PathBuf,
    client: Client,
    /// The server certificate an earlier attempt left in rejected/: later attempts are refused
    /// by the library without writing it again.
    rejected: Option<PathBuf>,
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connector")
            .field("source", &self.config.name)
            .field("pki_dir", &self.pki_dir)
            .finish_non_exhaustive()
    }
}

/// Most bytes of a message from the server, and the chunks and array elements in it: large
/// enough for a publish of 1,000 notifications or a browse of 100 nodes' references, bounded
/// for a small box.
pub const MAX_MESSAGE: usize = 16 << 20;
const MAX_CHUNKS: usize = 512;
const MAX_ARRAY_LENGTH: usize = 100_000;

/// The client for `pki_dir`: creates own/, private/ (0700), trusted/ and rejected/ and, the
/// first time, the application certificate and its key; fails when they cannot be read back.
pub fn client(pki_dir: &Path, timeout: Duration) -> Result<Client, String> {
    let private = pki_dir.join("private");
    std::fs::create_dir_all(&private)
        .map_err(|e| format!("cannot create {}: {e}", private.display()))?;
    restrict(&private, 0o700);
    let client = ClientBuilder::new()
        .application_name("Causeway")
        .application_uri(APPLICATION_URI)
        .product_uri("urn:causeway")
        .pki_dir(pki_dir)
        .create_sample_keypair(true)
        .trust_server_certs(false)
        .verify_server_certs(true)
        // Reconnects are Causeway's own: a lost session is rebuilt from scratch.
        .session_retry_limit(0)
        .recreate_subscriptions(false)
        .request_timeout(timeout)
        .keep_alive_interval(Duration::from_secs(5))
        .max_failed_keep_alive_count(3)
        .session_timeout(60_000)
        .max_message_size(MAX_MESSAGE)
        .max_chunk_count(MAX_CHUNKS)
        .max_array_length(MAX_ARRAY_LENGTH)
        .client()
        .map_err(|errors| errors.join("; "))?;
    let store = CertificateStore::new(pki_dir);
    let cert = store.read_own_cert();
    let key = store.read_own_pkey();
    match (cert, key) {
        (Ok(_), Ok(_)) => {}
        (Err(e), _) | (_, Err(e)) => {
            return Err(format!(
                "Causeway's own certificate or key in {} cannot be read or created ({e}); check that the folder is writable, or delete own/cert.der and private/private.pem to make new ones",
                pki_dir.display()
            ));
        }
    }
    restrict(&private.join("private.pem"), 0o600);
    Ok(client)
}

#[cfg(unix)]
fn restrict(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    if path.exists()
        && let Err(e) = std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
    {
        tracing::warn!(path = %path.display(), error = %e, "Cannot make the OPC UA private key readable by its owner only.");
    }
}

#[cfg(not(unix))]
fn restrict(_path: &Path, _mode: u32) {}

/// The async-opcua policy of a configured one.
pub fn policy(p: UaPolicy) -> SecurityPolicy {
    match p {
        UaPolicy::None => SecurityPolicy::None,
        UaPolicy::Basic256Sha256 => SecurityPolicy::Basic256Sha256,
        UaPolicy::Aes128Sha256RsaOaep => SecurityPolicy::Aes128Sha256RsaOaep,
        UaPolicy::Aes256Sha256RsaPss => SecurityPolicy::Aes256Sha256RsaPss,
    }
}

/// The async-opcua mode of a configured one.
pub fn mode(m: UaMode) -> MessageSecurityMode {
    match m {
        UaMode::None => MessageSecurityMode::None,
        UaMode::Sign => MessageSecurityMode::Sign,
        UaMode::SignAndEncrypt => MessageSecurityMode::SignAndEncrypt,
    }
}

fn show_mode(m: MessageSecurityMode) -> &'static str {
    match m {
        MessageSecurityMode::None => "None",
        MessageSecurityMode::Sign => "Sign",
        MessageSecurityMode::SignAndEncrypt => "SignAndEncrypt",
        _ => "Invalid",
    }
}

/// A policy by the name the config uses for it (the server's URI when it has none).
fn show_policy(uri: &str) -> String {
    let p = SecurityPolicy::from_uri(uri);
    UaPolicy::ALL
        .iter()
        .find(|(_, ours)| policy(*ours) == p)
        .map_or_else(
            || match p {
                SecurityPolicy::Unknown => uri.to_owned(),
                other => other.to_str().to_owned(),
            },
            |(name, _)| (*name).to_owned(),
        )
}

impl Connector {
    /// For `config`, keeping certificates in `pki_dir`.
    pub fn new(config: Arc<OpcUaConfig>, pki_dir: PathBuf) -> Result<Self, String> {
        let client = client(&pki_dir, config.timeout)?;
        Ok(Connector {
            config,
            pki_dir,
            client,
            rejected: None,
        })
    }

    /// The PKI folder.
    pub fn pki_dir(&self) -> &Path {
        &self.pki_dir
    }

    /// Opens a session and waits until it is activated.
    pub async fn connect(&mut self) -> Result<Live, ConnectError> {
        let limit = self.config.timeout.saturating_mul(3);
        let endpoint = self.config.endpoint.clone();
        match tokio::time::timeout(limit, self.open()).await {
            Ok(result) => result,
            Err(_) => Err(ConnectError::Timeout {
                endpoint,
                timeout: limit,
            }),
        }
    }

    async fn open(&mut self) -> Result<Live, ConnectError> {
        let started = SystemTime::now();
        let config = self.config.clone();
        self.warn_own_expiry();
        let identity = identity(&config)?;
        let endpoints = self
            .client
            .get_server_endpoints_from_url(config.endpoint.as_str())
            .await
            .map_err(|e| ConnectError::Unreachable {
                endpoint: config.endpoint.clone(),
                status: e.status(),
            })?;
        let mut chosen = choose(&endpoints, &config)?;
        check_identity(&chosen, &config.identity)?;
        let server_cert = X509::from_byte_string(&chosen.server_certificate).ok();
        let server_uri = chosen.server.application_uri.as_ref().to_owned();
        if let Some(cert) = &server_cert {
            warn_expiry(
                cert,
                &format!("the server's certificate ({})", config.endpoint),
            );
        }
        // Keep the host the config names: servers often advertise a name the gateway cannot
        // resolve.
        chosen.endpoint_url = config.endpoint.as_str().into();
        let (session, event_loop) = self
            .client
            .connect_to_endpoint_directly(chosen, identity)
            .map_err(|e| ConnectError::Refused {
                status: e.status(),
                detail: e.status().sub_code().description(),
            })?;
        // Session up/down events: a handful per reconnect, read as they come; 16 is room for
        // a burst of flapping without ever holding the session's event loop back for long.
        let (tx, mut events) = mpsc::channel(16);
        let driver = AbortOnDrop(tokio::spawn(async move {
            let stream = event_loop.enter();
            futures_util::pin_mut!(stream);
            while let Some(item) = stream.next().await {
                let event = match item {
                    Ok(SessionPollResult::Reconnected(_)) => Event::Up,
                    Ok(SessionPollResult::ConnectionLost(code)) => Event::Down(code),
                    Ok(SessionPollResult::ReconnectFailed(code)) => Event::Down(code),
                    Ok(SessionPollResult::Subscription(
                        opcua::client::SubscriptionActivity::FatalFailure(code),
                    )) => Event::Down(code),
                    Ok(_) => continue,
                    Err(code) => Event::Down(code),
                };
                let down = matches!(event, Event::Down(_));
                if tx.send(event).await.is_err() || down {
                    return;
                }
            }
            let _ = tx.send(Event::Down(StatusCode::BadConnectionClosed)).await;
        }));
        let status = match events.recv().await {
            Some(Event::Up) => {
                return Ok(Live {
                    session,
                    events,
                    _driver: driver,
                });
            }
            Some(Event::Down(status)) => status,
            None => StatusCode::BadConnectionClosed,
        };
        drop(driver);
        Err(self.explain(status, server_cert.as_ref(), &server_uri, started))
    }

    fn warn_own_expiry(&self) {
        let own = self.pki_dir.join("own").join("cert.der");
        if let Ok(cert) = CertificateStore::read_cert(&own) {
            warn_expiry(
                &cert,
                &format!("Causeway's own certificate ({})", own.display()),
            );
        }
    }

    /// The error a failed activation makes, with what to change. A certificate status may be
    /// about the server's certificate (checked here) or ours (refused by the server): the
    /// server's is checked locally to tell which.
    fn explain(
        &mut self,
        status: StatusCode,
        server_cert: Option<&X509>,
        server_uri: &str,
        started: SystemTime,
    ) -> ConnectError {
        let detail = status.sub_code().description();
        let own = self
            .pki_dir
            .join("own")
            .join("cert.der")
            .display()
            .to_string();
        let host = self
            .config
            .endpoint
            .strip_prefix("opc.tcp://")
            .and_then(|rest| rest.split(['/', ':']).next())
            .unwrap_or_default()
            .trim_matches(['[', ']']);
        // Whether the server's certificate fails the check `status` names.
        let theirs = server_cert.is_some_and(|c| match status {
            StatusCode::BadCertificateTimeInvalid | StatusCode::BadCertificateIssuerTimeInvalid => {
                c.is_time_valid(&opcua::types::DateTime::now().as_chrono())
                    .is_err()
            }
            StatusCode::BadCertificateHostNameInvalid => c.is_hostname_valid(host).is_err(),
            StatusCode::BadCertificateUriInvalid => c.is_application_uri_valid(server_uri).is_err(),
            _ => true,
        });
        match status {
            StatusCode::BadCertificateUntrusted | StatusCode::BadSecurityChecksFailed => {
                let found = self
                    .newly_rejected(server_cert, started)
                    .or_else(|| self.rejected.clone().filter(|p| p.exists()));
                self.rejected.clone_from(&found);
                match found {
                    Some(file) => ConnectError::Untrusted {
                        file: file.display().to_string(),
                        trusted: self.pki_dir.join("trusted").display().to_string(),
                    },
                    None => ConnectError::ClientRejected { status, own },
                }
            }
            StatusCode::BadCertificateHostNameInvalid
            | StatusCode::BadCertificateUriInvalid
            | StatusCode::BadCertificateTimeInvalid
            | StatusCode::BadCertificateIssuerTimeInvalid
            | StatusCode::BadCertificateRevoked
            | StatusCode::BadCertificateInvalid
            | StatusCode::BadCertificateUseNotAllowed
            | StatusCode::BadCertificatePolicyCheckFailed => {
                if theirs {
                    ConnectError::BadServerCertificate { status, detail }
                } else {
                    ConnectError::ClientRejected { status, own }
                }
            }
            StatusCode::BadUserAccessDenied
            | StatusCode::BadIdentityTokenRejected
            | StatusCode::BadIdentityTokenInvalid
            | StatusCode::BadUserSignatureInvalid => ConnectError::AccessDenied {
                status,
                what: match &self.config.identity {
                    UaIdentity::Anonymous => {
                        "that the server allows anonymous sessions, or set username and password_file".to_owned()
                    }
                    UaIdentity::UserName { user, password } => format!(
                        "user `{user}` and the password in {}",
                        match password {
                            Secret::Env(name) => format!("${name}"),
                            Secret::File(path) => path.display().to_string(),
                        }
                    ),
                    UaIdentity::X509 { certificate, .. } => format!(
                        "that the server trusts the user certificate {}",
                        certificate.display()
                    ),
                },
            },
            StatusCode::BadTimeout
            | StatusCode::BadNotConnected
            | StatusCode::BadConnectionClosed
            | StatusCode::BadCommunicationError
            | StatusCode::BadTcpInternalError
            | StatusCode::BadConnectionRejected => ConnectError::Unreachable {
                endpoint: self.config.endpoint.clone(),
                status,
            },
            _ => ConnectError::Refused { status, detail },
        }
    }

    /// The server certificate this attempt put in rejected/: the one GetEndpoints announced,
    /// else (a renewed or chained certificate in CreateSession) the newest file written since
    /// `started`.
    fn newly_rejected(&self, announced: Option<&X509>, started: SystemTime) -> Option<PathBuf> {
        if let Some(path) = announced.map(|c| self.rejected(c)).filter(|p| p.exists()) {
            return Some(path);
        }
        std::fs::read_dir(self.pki_dir.join("rejected"))
            .ok()?
            .flatten()
            .filter_map(|e| {
                let modified = e.metadata().ok()?.modified().ok()?;
                (modified >= started).then(|| (modified, e.path()))
            })
            .max()
            .map(|(_, path)| path)
    }

    fn rejected(&self, cert: &X509) -> PathBuf {
        self.pki_dir
            .join("rejected")
            .join(CertificateStore::cert_file_name(cert))
    }
}

/// The identity token of `config`, reading the password or user certificate now (so a changed file
/// is picked up at the next connect).
pub fn identity(config: &OpcUaConfig) -> Result<IdentityToken, ConnectError> {
    match &config.identity {
        UaIdentity::Anonymous => Ok(IdentityToken::Anonymous),
        UaIdentity::UserName { user, password } => {
            let secret = crate::secret::read_env(password, Path::new("")).map_err(|why| {
                ConnectError::Credentials {
                    what: format!("password of user `{user}`"),
                    why,
                }
            })?;
            Ok(IdentityToken::new_user_name(user.clone(), secret))
        }
        UaIdentity::X509 { certificate, key } => IdentityToken::new_x509_path(certificate, key)
            .map_err(|e| ConnectError::Credentials {
                what: format!(
                    "user certificate {} or its key {}",
                    certificate.display(),
                    key.display()
                ),
                why: e.to_string(),
            }),
    }
}

/// The server's endpoint with exactly the configured policy and mode.
fn choose(
    endpoints: &[EndpointDescription],
    config: &OpcUaConfig,
) -> Result<EndpointDescription, ConnectError> {
    let want_policy = policy(config.policy);
    let want_mode = mode(config.mode);
    let matching: Vec<&EndpointDescription> = endpoints
        .iter()
        .filter(|e| {
            e.security_mode == want_mode
                && SecurityPolicy::from_uri(e.security_policy_uri.as_ref()) == want_policy
        })
        .collect();
    // Prefer the endpoint on the configured path; servers list one set per path.
    let path = |url: &str| {
        url.strip_prefix("opc.tcp://")
            .and_then(|rest| rest.split_once('/'))
            .map_or(String::new(), |(_, p)| p.trim_end_matches('/').to_owned())
    };
    let wanted_path = path(&config.endpoint);
    let best = matching
        .iter()
        .find(|e| path(e.endpoint_url.as_ref()) == wanted_path)
        .or(matching.first());
    match best {
        Some(e) => Ok((*e).clone()),
        None => {
            let mut offered: Vec<String> = endpoints
                .iter()
                .map(|e| {
                    format!(
                        "{}/{}",
                        show_policy(e.security_policy_uri.as_ref()),
                        show_mode(e.security_mode)
                    )
                })
                .collect();
            offered.sort();
            offered.dedup();
            Err(ConnectError::PolicyNotOffered {
                wanted: format!("{}/{}", config.policy.name(), show_mode(want_mode)),
                offered: if offered.is_empty() {
                    "no endpoints at all".to_owned()
                } else {
                    offered.join(", ")
                },
            })
        }
    }
}

fn check_identity(
    endpoint: &EndpointDescription,
    configured: &UaIdentity,
) -> Result<(), ConnectError> {
    let (wanted, kind) = match configured {
        UaIdentity::Anonymous => ("anonymous", UserTokenType::Anonymous),
        UaIdentity::UserName { .. } => ("user name", UserTokenType::UserName),
        UaIdentity::X509 { .. } => ("certificate", UserTokenType::Certificate),
    };
    let policies = endpoint.user_identity_tokens.as_deref().unwrap_or_default();
    if policies.iter().any(|p| p.token_type == kind) {
        if kind == UserTokenType::UserName
            && endpoint.security_mode == MessageSecurityMode::None
            && policies.iter().any(|p| {
                p.token_type == kind
                    && SecurityPolicy::from_uri(p.security_policy_uri.as_ref())
                        == SecurityPolicy::None
            })
        {
            tracing::warn!(endpoint = %endpoint.endpoint_url, "The server takes passwords unencrypted on this endpoint: anyone on the network can read it. Use security_policy = \"Basic256Sha256\".");
        }
        return Ok(());
    }
    let mut offered: Vec<&str> = policies
        .iter()
        .map(|p| match p.token_type {
            UserTokenType::Anonymous => "anonymous",
            UserTokenType::UserName => "user name",
            UserTokenType::Certificate => "certificate",
            UserTokenType::IssuedToken => "issued token",
        })
        .collect();
    offered.sort_unstable();
    offered.dedup();
    Err(ConnectError::IdentityNotOffered {
        endpoint: format!(
            "{}/{}",
            show_policy(endpoint.security_policy_uri.as_ref()),
            show_mode(endpoint.security_mode)
        ),
        wanted,
        offered: if offered.is_empty() {
            "none".to_owned()
        } else {
            offered.join(", ")
        },
    })
}

/// How soon a certificate expires, as it is logged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expiry {
    /// Already expired: logged as an error.
    Expired(String),
    /// Within [`EXPIRY_WARNING`]: logged as a warning.
    Soon(String),
}

/// Whether `cert`, called `what`, has expired or expires within [`EXPIRY_WARNING`] of `now`.
pub fn expiry(cert: &X509, what: &str, now: SystemTime) -> Option<Expiry> {
    let not_after = cert.not_after().ok()?;
    let left = u64::try_from(not_after.timestamp()).ok()?;
    let now = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    if left <= now {
        Some(Expiry::Expired(format!(
            "{what} expired on {not_after}; renew it (for Causeway's own: delete own/cert.der and private/private.pem, restart, and trust the new one on the server)"
        )))
    } else if Duration::from_secs(left - now) <= EXPIRY_WARNING {
        Some(Expiry::Soon(format!(
            "{what} expires on {not_after}, in {} days; renew it before then",
            (left - now) / 86_400
        )))
    } else {
        None
    }
}

/// Logs [`expiry`]: a warning 30 days ahead, an error once expired.
pub fn warn_expiry(cert: &X509, what: &str) {
    match expiry(cert, what, SystemTime::now()) {
        Some(Expiry::Expired(text)) => tracing::error!("{text}"),
        Some(Expiry::Soon(text)) => tracing::warn!("{text}"),
        None => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(days: u32) -> X509 {
        let mut data = opcua::crypto::X509Data::sample_cert();
        data.certificate_duration_days = days;
        X509::cert_and_pkey(&data).expect("a certificate").0
    }

    #[test]
    fn expiry_is_warned_thirty_days_ahead_and_an_error_after() {
        let now = SystemTime::now();
        let day = Duration::from_secs(86_400);
        assert_eq!(expiry(&cert(365), "ours", now), None);
        let Some(Expiry::Soon(text)) = expiry(&cert(20), "ours", now) else {
            panic!("a warning for a certificate with 20 days left")
        };
        assert!(
            text.contains("ours expires on")
                && (text.contains("in 19 days") || text.contains("in 20 days")),
            "{text}"
        );
        assert_eq!(expiry(&cert(365), "ours", now + 300 * day), None);
        assert!(matches!(
            expiry(&cert(365), "ours", now + 340 * day),
            Some(Expiry::Soon(_))
        ));
        let Some(Expiry::Expired(text)) = expiry(&cert(365), "ours", now + 366 * day) else {
            panic!("an error for an expired certificate")
        };
        assert!(text.contains("delete own/cert.der"), "{text}");
    }
}
