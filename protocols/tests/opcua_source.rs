//! The OPC UA source against a real async-opcua server in-process, on 127.0.0.1: values and
//! qualities, chunking at 5,000 nodes, an unknown node, security and its errors, a server
//! restart, and a server that stays connected but stops publishing.

use std::{
    net::SocketAddr,
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use firmware_config::{
    OpcUaConfig, OpcUaTagConfig, Secret, UaIdentity, UaMode, UaNodeId, UaPolicy, UaReading, UaType,
};
use protocols::{
    model::{Quality, Sample, SampleBatch, Value},
    opcua::{
        OpcUaSource,
        server::{ServerOptions, UaServer},
    },
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::mpsc,
};
use tokio_util::sync::CancellationToken;

const LIMIT: Duration = Duration::from_secs(30);

async fn listener() -> TcpListener {
    TcpListener::bind("127.0.0.1:0").await.expect("bind")
}

/// Binds `addr` again after a server on it stopped (its listener closes asynchronously).
async fn rebind(addr: SocketAddr) -> TcpListener {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match TcpListener::bind(addr).await {
            Ok(l) => return l,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("cannot bind {addr} again: {e}"),
        }
    }
}

fn config(endpoint: String, server: &UaServer, tags: &[(&str, Option<UaType>)]) -> OpcUaConfig {
    OpcUaConfig {
        name: "ua".into(),
        endpoint,
        policy: UaPolicy::None,
        mode: UaMode::None,
        identity: UaIdentity::Anonymous,
        pki_dir: None,
        reading: UaReading::Subscribe {
            publishing: Duration::from_millis(100),
            sampling: Duration::from_millis(50),
            queue_size: 10,
        },
        timeout: Duration::from_secs(2),
        tags: tags
            .iter()
            .map(|(name, data_type)| OpcUaTagConfig {
                name: (*name).into(),
                node: UaNodeId::parse(&server.node(name)).expect("a node id"),
                data_type: *data_type,
                deadband: None,
            })
            .collect(),
    }
}

struct Running {
    rx: mpsc::Receiver<SampleBatch>,
    backlog: std::collections::VecDeque<Sample>,
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

fn run(config: OpcUaConfig, pki: &Path) -> Running {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let (tx, rx) = mpsc::channel(64);
    let cancel = CancellationToken::new();
    let source = OpcUaSource::new(config, pki.to_path_buf())
        .with_reconnect(Duration::from_millis(100), Duration::from_millis(500));
    let task = tokio::spawn(source.run(tx, cancel.clone()));
    Running {
        rx,
        backlog: Default::default(),
        cancel,
        task,
    }
}

impl Running {
    /// The first sample, in arrival order, that `done` accepts, within [`LIMIT`]. It and the
    /// earlier samples of its tag are consumed; other tags' samples stay for the next call, so
    /// each tag is followed in order whatever the order of tags in a batch.
    async fn until(&mut self, mut done: impl FnMut(&Sample) -> bool) -> Sample {
        let deadline = tokio::time::Instant::now() + LIMIT;
        let mut checked = 0;
        loop {
            if let Some(at) = self.backlog.iter().skip(checked).position(&mut done) {
                let at = checked + at;
                let found = self.backlog[at].clone();
                let mut k = 0;
                self.backlog.retain(|s| {
                    k += 1;
                    k > at + 1 || s.tag != found.tag
                });
                return found;
            }
            checked = self.backlog.len();
            let batch = tokio::time::timeout_at(deadline, self.rx.recv())
                .await
                .expect("the awaited sample within the limit")
                .expect("the source runs");
            if std::env::var_os("SHOW_SAMPLES").is_some() {
                eprintln!("{:?}", &batch.samples[..batch.samples.len().min(6)]);
            }
            self.backlog.extend(batch.samples);
        }
    }

    async fn stop(self) {
        self.cancel.cancel();
        tokio::time::timeout(Duration::from_secs(5), self.task)
            .await
            .expect("the source stops promptly on cancel")
            .expect("no panic");
    }
}

fn is(tag: &str, value: Value) -> impl FnMut(&Sample) -> bool {
    move |s| &*s.tag == tag && s.value.as_ref() == Some(&value) && s.quality.is_good()
}

fn bad_with(tag: &'static str, text: &'static str) -> impl FnMut(&Sample) -> bool {
    move |s| &*s.tag == tag && matches!(&s.quality, Quality::Bad(why) if why.contains(text))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribed_values_arrive_with_types_and_source_times() {
    let dir = tempfile::tempdir().unwrap();
    let server = UaServer::start(
        &ServerOptions::new(dir.path().join("server"))
            .variable("Parts", 41u32)
            .variable("Force", 47.5f64)
            .variable("Order", "PO-4711")
            .variable("Done", false)
            .variable("Wrong", 3.5f64),
        listener().await,
    )
    .unwrap();
    let cfg = config(
        server.endpoint(),
        &server,
        &[
            ("Parts", Some(UaType::U32)),
            ("Force", None),
            ("Order", Some(UaType::String)),
            ("Done", Some(UaType::Bool)),
            ("Wrong", Some(UaType::U32)),
        ],
    );
    let mut source = run(cfg, &dir.path().join("pki"));
    let first = source.until(is("ua.Parts", Value::U64(41))).await;
    assert!(
        first.source_time.is_some(),
        "the server's SourceTimestamp is kept"
    );
    source.until(is("ua.Force", Value::F64(47.5))).await;
    source
        .until(is("ua.Order", Value::Str("PO-4711".into())))
        .await;
    server.set("Parts", 42u32);
    server.set("Done", true);
    source.until(is("ua.Parts", Value::U64(42))).await;
    source.until(is("ua.Done", Value::Bool(true))).await;
    // A value that does not fit the declared type makes the tag Bad, naming both.
    let bad = source.until(bad_with("ua.Wrong", "not a u32")).await;
    assert_eq!(bad.value, None);
    let Quality::Bad(why) = bad.quality else {
        unreachable!()
    };
    assert!(why.contains("3.5"), "{why}");
    source.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_node_makes_that_tag_bad_and_the_rest_flow() {
    let dir = tempfile::tempdir().unwrap();
    let server = UaServer::start(
        &ServerOptions::new(dir.path().join("server")).variable("Real", 7i32),
        listener().await,
    )
    .unwrap();
    let mut cfg = config(
        server.endpoint(),
        &server,
        &[("Real", None), ("Ghost", None)],
    );
    cfg.tags[1].node = UaNodeId::parse("ns=2;s=DoesNotExist").unwrap();
    let mut source = run(cfg.clone(), &dir.path().join("pki"));
    let ghost = source.until(bad_with("ua.Ghost", "BadNodeIdUnknown")).await;
    let Quality::Bad(why) = ghost.quality else {
        unreachable!()
    };
    assert!(
        why.contains("ns=2;s=DoesNotExist") && why.contains("causeway opcua browse"),
        "{why}"
    );
    source.until(is("ua.Real", Value::I64(7))).await;
    server.set("Real", 8i32);
    source.until(is("ua.Real", Value::I64(8))).await;
    source.stop().await;

    // The same in poll mode.
    cfg.reading = UaReading::Poll {
        interval: Duration::from_millis(100),
    };
    let mut source = run(cfg, &dir.path().join("pki"));
    source.until(bad_with("ua.Ghost", "BadNodeIdUnknown")).await;
    source.until(is("ua.Real", Value::I64(8))).await;
    source.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_thousand_nodes_are_chunked_under_the_servers_limits() {
    const N: usize = 5_000;
    let dir = tempfile::tempdir().unwrap();
    let mut options = ServerOptions::new(dir.path().join("server"));
    options.max_nodes_per_read = 700;
    options.max_monitored_items_per_call = 700;
    for i in 0..N {
        options = options.variable(format!("N{i}"), i as u32);
    }
    let server = UaServer::start(&options, listener().await).unwrap();
    let names: Vec<String> = (0..N).map(|i| format!("N{i}")).collect();
    let tags: Vec<(&str, Option<UaType>)> = names.iter().map(|n| (n.as_str(), None)).collect();
    for reading in [
        UaReading::Subscribe {
            publishing: Duration::from_millis(100),
            sampling: Duration::from_millis(100),
            queue_size: 1,
        },
        UaReading::Poll {
            interval: Duration::from_millis(200),
        },
    ] {
        let mut cfg = config(server.endpoint(), &server, &tags);
        cfg.reading = reading;
        let mut source = run(cfg, &dir.path().join("pki"));
        let mut good = vec![false; N];
        let count = AtomicUsize::new(0);
        source
            .until(|s| {
                assert!(s.quality.is_good(), "{s:?}");
                let i: usize = s.tag.trim_start_matches("ua.N").parse().unwrap();
                assert_eq!(s.value, Some(Value::U64(i as u64)));
                if !good[i] {
                    good[i] = true;
                    count.fetch_add(1, Ordering::Relaxed);
                }
                count.load(Ordering::Relaxed) == N
            })
            .await;
        source.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_server_is_found_again_and_the_gap_is_bad() {
    let dir = tempfile::tempdir().unwrap();
    let options = ServerOptions::new(dir.path().join("server")).variable("Parts", 1u32);
    let server = UaServer::start(&options, listener().await).unwrap();
    let addr = server.addr();
    let cfg = config(server.endpoint(), &server, &[("Parts", None)]);
    let mut source = run(cfg, &dir.path().join("pki"));
    source.until(is("ua.Parts", Value::U64(1))).await;

    server.stop();
    drop(server);
    source
        .until(|s| &*s.tag == "ua.Parts" && !s.quality.is_good())
        .await;

    let options = options.variable("Parts", 2u32);
    let again = UaServer::start(&options, rebind(addr).await).unwrap();
    again.set("Parts", 2u32);
    source.until(is("ua.Parts", Value::U64(2))).await;
    again.set("Parts", 3u32);
    source.until(is("ua.Parts", Value::U64(3))).await;
    source.stop().await;
}

/// Forwards TCP both ways until frozen; then holds every connection it had open, silent, as
/// a hung server would. Connections made after the freeze are forwarded.
struct Proxy {
    addr: SocketAddr,
    frozen: Arc<AtomicUsize>,
    accepted: Arc<AtomicUsize>,
}

impl Proxy {
    async fn start(upstream: SocketAddr) -> Self {
        let listener = listener().await;
        let addr = listener.local_addr().unwrap();
        let frozen = Arc::new(AtomicUsize::new(0));
        let accepted = Arc::new(AtomicUsize::new(0));
        let (f, a) = (frozen.clone(), accepted.clone());
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let generation = a.fetch_add(1, Ordering::SeqCst) + 1;
                let Ok(server) = TcpStream::connect(upstream).await else {
                    continue;
                };
                let f = f.clone();
                tokio::spawn(async move {
                    let (mut cr, mut cw) = client.into_split();
                    let (mut sr, mut sw) = server.into_split();
                    let f2 = f.clone();
                    let up =
                        tokio::spawn(async move { pump(&mut cr, &mut sw, &f2, generation).await });
                    pump(&mut sr, &mut cw, &f, generation).await;
                    up.abort();
                });
            }
        });
        Proxy {
            addr,
            frozen,
            accepted,
        }
    }

    fn freeze(&self) {
        self.frozen
            .store(self.accepted.load(Ordering::SeqCst), Ordering::SeqCst);
    }
}

async fn pump(
    from: &mut (impl AsyncReadExt + Unpin),
    to: &mut (impl AsyncWriteExt + Unpin),
    frozen: &AtomicUsize,
    generation: usize,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let Ok(n) = from.read(&mut buf).await else {
            return;
        };
        if n == 0 {
            return;
        }
        while generation <= frozen.load(Ordering::SeqCst) {
            // Hung: keep the socket open and say nothing, for as long as the test runs.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_stops_publishing_is_noticed_and_the_session_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    let server = UaServer::start(
        &ServerOptions::new(dir.path().join("server")).variable("Parts", 1u32),
        listener().await,
    )
    .unwrap();
    let proxy = Proxy::start(server.addr()).await;
    let cfg = config(
        format!("opc.tcp://{}/", proxy.addr),
        &server,
        &[("Parts", None)],
    );
    let mut source = run(cfg, &dir.path().join("pki"));
    source.until(is("ua.Parts", Value::U64(1))).await;

    proxy.freeze();
    let started = Instant::now();
    server.set("Parts", 2u32);
    // The watchdog marks the tag stale...
    let stale = source
        .until(|s| &*s.tag == "ua.Parts" && !s.quality.is_good())
        .await;
    let Quality::Bad(why) = stale.quality else {
        unreachable!()
    };
    // The watchdog's own finding, not the library's keep-alive or a closed socket.
    assert!(
        why.contains("stale") && why.contains("no data and no keep-alive"),
        "{why}"
    );
    // ...and a new session (new connections through the proxy: GetEndpoints and the session,
    // after the two of the first session) brings the value back.
    source.until(is("ua.Parts", Value::U64(2))).await;
    assert!(
        proxy.accepted.load(Ordering::SeqCst) >= 4,
        "a new session was made"
    );
    assert!(started.elapsed() < LIMIT);
    source.stop().await;
}

fn secure(mut cfg: OpcUaConfig, policy: UaPolicy, password_file: &Path) -> OpcUaConfig {
    cfg.policy = policy;
    cfg.mode = UaMode::SignAndEncrypt;
    cfg.identity = UaIdentity::UserName {
        user: "operator".into(),
        password: Secret::File(password_file.to_path_buf()),
    };
    cfg
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_and_encrypt_with_a_user_and_every_error_says_what_to_change() {
    let dir = tempfile::tempdir().unwrap();
    let mut options = ServerOptions::new(dir.path().join("server")).variable("Force", 12.5f64);
    options.insecure = false;
    options.anonymous = false;
    options.policies = vec![
        opcua::crypto::SecurityPolicy::Basic256Sha256,
        opcua::crypto::SecurityPolicy::Aes256Sha256RsaPss,
    ];
    options.users = vec![("operator".into(), "s3cret".into())];
    let server = UaServer::start(&options, listener().await).unwrap();
    let pki = dir.path().join("pki");
    let password = dir.path().join("ua.pw");
    std::fs::write(&password, "s3cret\n").unwrap();
    let base = config(server.endpoint(), &server, &[("Force", None)]);

    // Unknown server certificate: rejected, with the file and the command that trusts it.
    let mut source = run(
        secure(base.clone(), UaPolicy::Basic256Sha256, &password),
        &pki,
    );
    let s = source.until(bad_with("ua.Force", "not trusted")).await;
    source.stop().await;
    let Quality::Bad(why) = s.quality else {
        unreachable!()
    };
    let rejected = std::fs::read_dir(pki.join("rejected"))
        .unwrap()
        .next()
        .expect("a rejected certificate")
        .unwrap()
        .path();
    assert!(
        why.contains(&rejected.display().to_string()) && why.contains("mv "),
        "{why}"
    );

    // Trusting it as the message says lets the session open.
    std::fs::rename(
        &rejected,
        pki.join("trusted").join(rejected.file_name().unwrap()),
    )
    .unwrap();
    let mut source = run(
        secure(base.clone(), UaPolicy::Basic256Sha256, &password),
        &pki,
    );
    source.until(is("ua.Force", Value::F64(12.5))).await;
    server.set("Force", 13.0f64);
    source.until(is("ua.Force", Value::F64(13.0))).await;
    source.stop().await;

    // A second policy works too.
    let mut source = run(
        secure(base.clone(), UaPolicy::Aes256Sha256RsaPss, &password),
        &pki,
    );
    source.until(is("ua.Force", Value::F64(13.0))).await;
    source.stop().await;

    // A policy the server does not offer: no fallback, and the offered ones are listed.
    let mut source = run(
        secure(base.clone(), UaPolicy::Aes128Sha256RsaOaep, &password),
        &pki,
    );
    let s = source.until(bad_with("ua.Force", "does not offer")).await;
    let Quality::Bad(why) = s.quality else {
        unreachable!()
    };
    assert!(
        why.contains("Basic256Sha256/SignAndEncrypt") && why.contains("Aes256_Sha256_RsaPss/Sign"),
        "{why}"
    );
    source.stop().await;

    // A wrong password names the user and where the password came from.
    let wrong = dir.path().join("wrong.pw");
    std::fs::write(&wrong, "guess").unwrap();
    let mut source = run(secure(base.clone(), UaPolicy::Basic256Sha256, &wrong), &pki);
    let s = source
        .until(bad_with("ua.Force", "refused the login"))
        .await;
    let Quality::Bad(why) = s.quality else {
        unreachable!()
    };
    assert!(
        why.contains("operator") && why.contains("wrong.pw"),
        "{why}"
    );
    source.stop().await;

    // Anonymous where the server wants a user.
    let mut anonymous = secure(base.clone(), UaPolicy::Basic256Sha256, &password);
    anonymous.identity = UaIdentity::Anonymous;
    let mut source = run(anonymous, &pki);
    source
        .until(bad_with("ua.Force", "does not accept anonymous logins"))
        .await;
    source.stop().await;

    // Nothing listening.
    let mut gone = base;
    gone.endpoint = "opc.tcp://127.0.0.1:1/".into();
    let mut source = run(gone, &pki);
    source
        .until(bad_with("ua.Force", "cannot reach opc.tcp://127.0.0.1:1/"))
        .await;
    source.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pulse_shorter_than_the_publishing_interval_is_seen_whole() {
    let dir = tempfile::tempdir().unwrap();
    let server = UaServer::start(
        &ServerOptions::new(dir.path().join("server"))
            .variable("Force", 1.0f64)
            .variable("Done", false),
        listener().await,
    )
    .unwrap();
    let mut cfg = config(
        server.endpoint(),
        &server,
        &[("Force", None), ("Done", None)],
    );
    cfg.reading = UaReading::Subscribe {
        publishing: Duration::from_millis(500),
        sampling: Duration::from_millis(10),
        queue_size: 10,
    };
    let (tx, mut rx) = mpsc::channel(64);
    let cancel = CancellationToken::new();
    let task = tokio::spawn(OpcUaSource::new(cfg, dir.path().join("pki")).run(tx, cancel.clone()));
    // Initial values first.
    let first = tokio::time::timeout(LIMIT, rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.samples.len(), 2, "{first:?}");
    // Force, then a pulse of Done, all within one publishing interval, stamped 1 ms apart as a
    // PLC would stamp them. The publish lists them item by item (Done's queue, then Force).
    let base = opcua::types::DateTime::now().ticks();
    // DateTime ticks are 100 ns.
    let at = |ms: i64| opcua::types::DateTime::from(base + ms * 10_000);
    for (name, value, ms) in [
        ("Force", opcua::types::Variant::from(2.0f64), 1),
        ("Done", true.into(), 2),
        ("Done", false.into(), 3),
    ] {
        server.set_value(
            name,
            opcua::types::DataValue {
                value: Some(value),
                status: Some(opcua::types::StatusCode::Good),
                source_timestamp: Some(at(ms)),
                server_timestamp: Some(at(ms)),
                ..Default::default()
            },
        );
    }
    let mut batches: Vec<SampleBatch> = Vec::new();
    while batches.iter().map(|b| b.samples.len()).sum::<usize>() < 3 {
        batches.push(
            tokio::time::timeout(LIMIT, rx.recv())
                .await
                .unwrap()
                .unwrap(),
        );
    }
    let shown: Vec<Vec<String>> = batches
        .iter()
        .map(|b| {
            b.samples
                .iter()
                .map(|s| format!("{}={}", s.tag, s.value.as_ref().unwrap()))
                .collect()
        })
        .collect();
    // One publish, two snapshots in time order: the force with the rising edge, then the
    // falling edge.
    assert_eq!(
        shown,
        vec![vec!["ua.Force=2", "ua.Done=true"], vec!["ua.Done=false"]]
    );
    cancel.cancel();
    task.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_five_thousand_changes_and_a_long_array_arrive() {
    const N: usize = 5_000;
    let dir = tempfile::tempdir().unwrap();
    let mut options = ServerOptions::new(dir.path().join("server"));
    for i in 0..N {
        options = options.variable(format!("N{i}"), 0u32);
    }
    let long: Vec<f64> = (0..2_000).map(f64::from).collect();
    options = options.variable("Long", long);
    let server = UaServer::start(&options, listener().await).unwrap();
    let mut names: Vec<String> = (0..N).map(|i| format!("N{i}")).collect();
    names.push("Long".into());
    let tags: Vec<(&str, Option<UaType>)> = names.iter().map(|n| (n.as_str(), None)).collect();
    let mut source = run(
        config(server.endpoint(), &server, &tags),
        &dir.path().join("pki"),
    );
    let array = source.until(|s| &*s.tag == "ua.Long").await;
    let Some(Value::Array(values)) = array.value else {
        panic!("{array:?}")
    };
    assert_eq!(values.len(), 2_000);
    assert_eq!(values[1_999], Value::F64(1_999.0));
    let last = format!("ua.N{}", N - 1);
    source
        .until(|s| *s.tag == *last && s.quality.is_good())
        .await;
    // Every node changes at once: more than one publish's worth of notifications.
    for i in 0..N {
        server.set(&format!("N{i}"), 7u32);
    }
    let mut changed = std::collections::HashSet::new();
    source
        .until(|s| {
            assert!(s.quality.is_good(), "{s:?}");
            if s.value == Some(Value::U64(7)) {
                changed.insert(s.tag.clone());
            }
            changed.len() == N
        })
        .await;
    source.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn items_beyond_the_servers_subscription_limits_are_bad_and_the_rest_stay_up() {
    let dir = tempfile::tempdir().unwrap();
    let mut options = ServerOptions::new(dir.path().join("server"));
    options.max_items_per_subscription = 100;
    options.max_subscriptions = 2;
    for i in 0..250u32 {
        options = options.variable(format!("N{i}"), i);
    }
    let server = UaServer::start(&options, listener().await).unwrap();
    let names: Vec<String> = (0..250).map(|i| format!("N{i}")).collect();
    let tags: Vec<(&str, Option<UaType>)> = names.iter().map(|n| (n.as_str(), None)).collect();
    let mut source = run(
        config(server.endpoint(), &server, &tags),
        &dir.path().join("pki"),
    );
    let mut good = std::collections::HashSet::new();
    let mut refused = std::collections::HashSet::new();
    source
        .until(|s| {
            match &s.quality {
                Quality::Good => {
                    good.insert(s.tag.clone());
                }
                Quality::Bad(why) => {
                    assert!(why.contains("BadTooManySubscriptions"), "{why}");
                    refused.insert(s.tag.clone());
                }
                Quality::Uncertain(_) => {}
            }
            good.len() + refused.len() == 250
        })
        .await;
    assert_eq!((good.len(), refused.len()), (200, 50));
    // The session stays up (no watchdog firing on a subscription that was never made): the
    // good tags keep updating and nothing turns stale, also after several stall periods.
    let not_stale = |s: &Sample| {
        assert!(
            !matches!(&s.quality, Quality::Bad(why) if why.contains("stale")),
            "{s:?}"
        );
    };
    server.set("N0", 1_000u32);
    source
        .until(|s| {
            not_stale(s);
            &*s.tag == "ua.N0" && s.value == Some(Value::U64(1_000))
        })
        .await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    server.set("N199", 2_000u32);
    source
        .until(|s| {
            not_stale(s);
            &*s.tag == "ua.N199" && s.value == Some(Value::U64(2_000))
        })
        .await;
    source.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_x509_user_logs_in_and_a_deadband_is_applied_by_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let (user_cert, user_key) = (dir.path().join("user.der"), dir.path().join("user.pem"));
    let mut data = opcua::crypto::X509Data::sample_cert();
    data.common_name = "line3-gateway".into();
    opcua::crypto::CertificateStore::create_certificate_and_key(&data, true, &user_cert, &user_key)
        .unwrap();
    let mut options = ServerOptions::new(dir.path().join("server")).variable("Force", 10.0f64);
    options.insecure = false;
    options.anonymous = false;
    options.policies = vec![opcua::crypto::SecurityPolicy::Basic256Sha256];
    options.x509_users = vec![("line3".into(), user_cert.clone())];
    let server = UaServer::start(&options, listener().await).unwrap();
    let pki = dir.path().join("pki");
    // Trusted ahead of time: a copy in trusted/ under the name the store gives it.
    let der = std::fs::read(server.certificate()).unwrap();
    let name = opcua::crypto::CertificateStore::cert_file_name(
        &opcua::crypto::X509::from_der(&der).unwrap(),
    );
    std::fs::create_dir_all(pki.join("trusted")).unwrap();
    std::fs::write(pki.join("trusted").join(name), der).unwrap();

    let mut cfg = config(server.endpoint(), &server, &[("Force", None)]);
    cfg.policy = UaPolicy::Basic256Sha256;
    cfg.mode = UaMode::Sign;
    cfg.identity = UaIdentity::X509 {
        certificate: user_cert,
        key: user_key,
    };
    cfg.tags[0].deadband = Some(firmware_config::Deadband::Absolute(5.0));
    let mut source = run(cfg, &pki);
    source.until(is("ua.Force", Value::F64(10.0))).await;
    // Within the deadband: not reported. Beyond it: reported.
    server.set("Force", 12.0f64);
    server.set("Force", 14.0f64);
    server.set("Force", 20.0f64);
    let next = source.until(|s| &*s.tag == "ua.Force").await;
    assert_eq!(next.value, Some(Value::F64(20.0)), "{next:?}");
    source.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipeline_that_stops_taking_loses_no_value_within_the_bound() {
    const N: usize = 5_000;
    const ROUNDS: u32 = 20;
    let dir = tempfile::tempdir().unwrap();
    let mut options = ServerOptions::new(dir.path().join("server"));
    for i in 0..N {
        options = options.variable(format!("N{i}"), 0u32);
    }
    let server = UaServer::start(&options, listener().await).unwrap();
    let names: Vec<String> = (0..N).map(|i| format!("N{i}")).collect();
    let tags: Vec<(&str, Option<UaType>)> = names.iter().map(|n| (n.as_str(), None)).collect();
    // A channel of one batch: the pipeline is "full" as soon as nobody reads.
    let (tx, rx) = mpsc::channel(1);
    let cancel = CancellationToken::new();
    let task = tokio::spawn(
        OpcUaSource::new(
            config(server.endpoint(), &server, &tags),
            dir.path().join("pki"),
        )
        .run(tx, cancel.clone()),
    );
    let mut source = Running {
        rx,
        backlog: Default::default(),
        cancel,
        task,
    };
    let last = format!("ua.N{}", N - 1);
    source.until(|s| *s.tag == *last).await;
    // Nobody reads while 100,000 changes are made: they wait in the source (under its bound of
    // 131,072 samples), acknowledged to the server. The changes come slower than the server
    // publishes (1,000 per publish every 100 ms), so its item queues never overflow and any
    // skipped value would be the source's loss.
    for round in 1..=ROUNDS {
        server.set_many(names.iter().map(|n| (n.clone(), round.into())));
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Then it drains: every value of every tag arrives, in order.
    let mut next: std::collections::HashMap<String, u64> = Default::default();
    let mut complete = 0;
    source
        .until(|s| {
            assert!(s.quality.is_good(), "{s:?}");
            let Some(Value::U64(v)) = s.value else {
                return false;
            };
            let expected = next.entry(s.tag.to_string()).or_insert(1);
            if v == 0 {
                return false;
            }
            assert_eq!(v, *expected, "{} skipped a value", s.tag);
            *expected += 1;
            if v == u64::from(ROUNDS) {
                complete += 1;
            }
            complete == N
        })
        .await;
    // And the subscription goes on.
    server.set_many(names.iter().map(|n| (n.clone(), 1_000u32.into())));
    let mut again = std::collections::HashSet::new();
    source
        .until(|s| {
            if s.value == Some(Value::U64(1_000)) {
                again.insert(s.tag.clone());
            }
            again.len() == N
        })
        .await;
    source.stop().await;
}
