//! A small OPC UA server on async-opcua, for the demo and the tests: a folder of variables
//! under Objects, named `ns=<n>;s=<name>`, written by the caller.
//!
//! It offers the endpoints asked for (None, or any policy with Sign and SignAndEncrypt),
//! anonymous and user-name logins, and publishes its OperationLimits, so tests can exercise
//! security, chunking and restarts against a real server.

use std::{net::SocketAddr, path::PathBuf, sync::Arc};

use opcua::{
    crypto::SecurityPolicy,
    server::{
        ANONYMOUS_USER_TOKEN_ID, ServerBuilder, ServerHandle, ServerUserToken,
        address_space::Variable,
        diagnostics::NamespaceMetadata,
        node_manager::memory::{SimpleNodeManager, simple_node_manager},
    },
    types::{DataValue, MessageSecurityMode, NodeId, Variant},
};
use tokio::net::TcpListener;

/// The namespace of the server's variables.
pub const NAMESPACE: &str = "urn:causeway:sim";

/// What the server offers.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// own/, private/, trusted/ and rejected/ of the server.
    pub pki_dir: PathBuf,
    /// Security endpoints besides None.
    pub policies: Vec<SecurityPolicy>,
    /// Whether the None endpoint is offered.
    pub insecure: bool,
    /// Whether anonymous logins are accepted.
    pub anonymous: bool,
    /// User names and passwords accepted.
    pub users: Vec<(String, String)>,
    /// User certificates (DER) accepted as X.509 identities, by user name.
    pub x509_users: Vec<(String, PathBuf)>,
    /// Client certificates are trusted without being placed in trusted/.
    pub trust_clients: bool,
    /// OperationLimits: MaxNodesPerRead (0: the server's default).
    pub max_nodes_per_read: usize,
    /// OperationLimits: MaxMonitoredItemsPerCall (0: the server's default).
    pub max_monitored_items_per_call: usize,
    /// Monitored items per subscription (0: the server's default, 1,000).
    pub max_items_per_subscription: usize,
    /// Subscriptions per session (0: the server's default, 10).
    pub max_subscriptions: usize,
    /// Variables: name and initial value.
    pub variables: Vec<(String, Variant)>,
}

impl ServerOptions {
    /// Anonymous, None only, no variables.
    pub fn new(pki_dir: impl Into<PathBuf>) -> Self {
        ServerOptions {
            pki_dir: pki_dir.into(),
            policies: Vec::new(),
            insecure: true,
            anonymous: true,
            users: Vec::new(),
            x509_users: Vec::new(),
            trust_clients: true,
            max_nodes_per_read: 0,
            max_monitored_items_per_call: 0,
            max_items_per_subscription: 0,
            max_subscriptions: 0,
            variables: Vec::new(),
        }
    }

    /// Adds a variable.
    #[must_use]
    pub fn variable(mut self, name: impl Into<String>, initial: impl Into<Variant>) -> Self {
        self.variables.push((name.into(), initial.into()));
        self
    }
}

/// A running server.
pub struct UaServer {
    handle: ServerHandle,
    manager: Arc<SimpleNodeManager>,
    namespace: u16,
    addr: SocketAddr,
    pki_dir: PathBuf,
}

impl std::fmt::Debug for UaServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UaServer")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl UaServer {
    /// Starts serving `options` on `listener`.
    pub fn start(options: &ServerOptions, listener: TcpListener) -> Result<Self, String> {
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        let mut tokens: Vec<String> = Vec::new();
        if options.anonymous {
            tokens.push(ANONYMOUS_USER_TOKEN_ID.to_owned());
        }
        let mut builder = ServerBuilder::new()
            .application_name("Causeway simulator")
            .application_uri("urn:causeway:simulator")
            .product_uri("urn:causeway:simulator")
            .create_sample_keypair(true)
            .pki_dir(&options.pki_dir)
            .host(addr.ip().to_string())
            .port(addr.port())
            .discovery_urls(vec![format!("opc.tcp://{addr}/")])
            .trust_client_certs(options.trust_clients)
            .diagnostics_enabled(false)
            .with_node_manager(simple_node_manager(
                NamespaceMetadata {
                    namespace_uri: NAMESPACE.to_owned(),
                    ..Default::default()
                },
                "causeway",
            ));
        for (i, (user, pass)) in options.users.iter().enumerate() {
            let id = format!("user{i}");
            builder = builder.add_user_token(
                &id,
                ServerUserToken::user_pass(user.as_str(), pass.as_str()),
            );
            tokens.push(id);
        }
        for (i, (user, cert)) in options.x509_users.iter().enumerate() {
            let id = format!("x509user{i}");
            builder = builder.add_user_token(&id, ServerUserToken::x509(user.as_str(), cert));
            tokens.push(id);
        }
        let ids: Vec<&str> = tokens.iter().map(String::as_str).collect();
        if options.insecure {
            builder = builder.add_endpoint(
                "none",
                (
                    "/",
                    SecurityPolicy::None,
                    MessageSecurityMode::None,
                    &ids[..],
                ),
            );
        }
        for policy in &options.policies {
            for mode in [
                MessageSecurityMode::Sign,
                MessageSecurityMode::SignAndEncrypt,
            ] {
                builder = builder.add_endpoint(
                    format!("{}-{mode:?}", policy.to_str()),
                    ("/", *policy, mode, &ids[..]),
                );
            }
        }
        let limits = builder.limits_mut();
        if options.max_nodes_per_read > 0 {
            limits.operational.max_nodes_per_read = options.max_nodes_per_read;
        }
        if options.max_monitored_items_per_call > 0 {
            limits.operational.max_monitored_items_per_call = options.max_monitored_items_per_call;
        }
        if options.max_items_per_subscription > 0 {
            limits.subscriptions.max_monitored_items_per_sub = options.max_items_per_subscription;
        }
        if options.max_subscriptions > 0 {
            limits.subscriptions.max_subscriptions_per_session = options.max_subscriptions;
        }
        // Tests send bursts of thousands of changes: let the server queue them.
        limits.subscriptions.max_queued_notifications = 0;
        let (server, handle) = builder.build()?;
        let manager = handle
            .node_managers()
            .get_of_type::<SimpleNodeManager>()
            .ok_or("the simulator's node manager is missing")?;
        let namespace = handle
            .get_namespace_index(NAMESPACE)
            .ok_or("the simulator's namespace is missing")?;
        {
            let folder = NodeId::new(namespace, "Causeway");
            let mut space = manager.address_space().write();
            space.add_folder(
                &folder,
                "Causeway",
                "Causeway",
                &NodeId::objects_folder_id(),
            );
            let variables = options
                .variables
                .iter()
                .map(|(name, value)| {
                    let id = NodeId::new(namespace, name.as_str());
                    // A variable's data type is inferred from its value, which must have one.
                    let value = match value {
                        Variant::Empty => Variant::Int32(0),
                        v => v.clone(),
                    };
                    Variable::new(&id, name.as_str(), name.as_str(), value)
                })
                .collect();
            let _ = space.add_variables(variables, &folder);
        }
        tokio::spawn(async move {
            if let Err(e) = server.run_with(listener).await {
                tracing::warn!(error = %e, "The OPC UA simulator stopped.");
            }
        });
        Ok(UaServer {
            handle,
            manager,
            namespace,
            addr,
            pki_dir: options.pki_dir.clone(),
        })
    }

    /// `opc.tcp://127.0.0.1:<port>/`
    pub fn endpoint(&self) -> String {
        format!("opc.tcp://{}/", self.addr)
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The text node id of variable `name`.
    pub fn node(&self, name: &str) -> String {
        format!("ns={};s={name}", self.namespace)
    }

    /// The server's own certificate (DER), for a client's trusted/.
    pub fn certificate(&self) -> PathBuf {
        self.pki_dir.join("own").join("cert.der")
    }

    /// Writes `value` (Good, stamped now) to variable `name`, notifying subscribers.
    pub fn set(&self, name: &str, value: impl Into<Variant>) {
        self.set_value(name, DataValue::new_now(value.into()));
    }

    /// Writes a whole data value (status and timestamps included).
    pub fn set_value(&self, name: &str, value: DataValue) {
        let id = NodeId::new(self.namespace, name);
        if let Err(e) = self
            .manager
            .set_value(self.handle.subscriptions(), &id, None, value)
        {
            tracing::warn!(node = %id, error = %e, "The simulator could not set a value.");
        }
    }

    /// Writes many variables at once (one lock), each Good and stamped now.
    pub fn set_many(&self, values: impl IntoIterator<Item = (String, Variant)>) {
        let values: Vec<(NodeId, DataValue)> = values
            .into_iter()
            .map(|(name, v)| (NodeId::new(self.namespace, name), DataValue::new_now(v)))
            .collect();
        let refs = values.iter().map(|(id, dv)| (id, None, dv.clone()));
        if let Err(e) = self.manager.set_values(self.handle.subscriptions(), refs) {
            tracing::warn!(error = %e, "The simulator could not set its values.");
        }
    }

    /// Stops the server; its sessions end.
    pub fn stop(&self) {
        self.handle.cancel();
    }
}

impl Drop for UaServer {
    fn drop(&mut self) {
        self.handle.cancel();
    }
}
