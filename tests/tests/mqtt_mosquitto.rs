//! The MQTT sink against Mosquitto (Debian's package, installed by `.ci/run`), started per test
//! on a free 127.0.0.1 port with a generated config: a TLS listener with a generated CA that
//! requires client certificates, a client without one refused, and the broker stopped and
//! restarted mid-stream with every event still delivered, by id. Built with `--features
//! external-peers`.
#![cfg(feature = "external-peers")]

use std::{
    collections::HashSet,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use firmware_config::{MqttSinkConfig, SinkConfig, SinkKind};
use gateway::{
    event::CloudEvent,
    sinks::{MqttSink, RetryPolicy, SinkStop, run_sink},
    store::{Store, StoreOptions},
};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, TlsConfiguration, Transport};
use tokio_util::sync::CancellationToken;

const LIMIT: Duration = Duration::from_secs(60);

struct Pki {
    ca: PathBuf,
    server: (PathBuf, PathBuf),
    client: (PathBuf, PathBuf),
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate, as PEM files in `dir`.
fn pki(dir: &Path) -> Pki {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "Causeway test CA");
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_key = KeyPair::generate().unwrap();
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let write = |name: &str, text: String| {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    let leaf = |names: Vec<String>, cn: &str, file: &str| {
        let mut params = CertificateParams::new(names).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &issuer).unwrap();
        (
            write(&format!("{file}.pem"), cert.pem()),
            write(&format!("{file}.key"), key.serialize_pem()),
        )
    };
    Pki {
        ca: write("ca.pem", ca_cert.pem()),
        server: leaf(
            vec!["127.0.0.1".into(), "localhost".into()],
            "mosquitto",
            "server",
        ),
        client: leaf(Vec::new(), "causeway-sink", "client"),
    }
}

/// Mosquitto on `port` with a TLS listener requiring client certificates; stopped on drop.
/// `user root`: started as root (as in CI), Mosquitto would otherwise switch to the
/// `mosquitto` user, who cannot write its persistence file into this private temporary
/// folder, and the sessions would silently not survive a restart (it only logs that).
struct Mosquitto {
    child: Child,
}

impl Mosquitto {
    fn start(dir: &Path, pki: &Pki, port: u16) -> Self {
        let conf = dir.join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\nrequire_certificate true\ncafile {}\ncertfile {}\nkeyfile {}\npersistence true\npersistence_location {}/\nautosave_interval 1\nmax_queued_messages 1000000\nmax_inflight_messages 100\nuser root\n",
                pki.ca.display(),
                pki.server.0.display(),
                pki.server.1.display(),
                dir.display()
            ),
        )
        .unwrap();
        let child = Command::new(
            std::env::var("CAUSEWAY_MOSQUITTO").unwrap_or_else(|_| "mosquitto".into()),
        )
        .arg("-c")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("mosquitto runs (.ci/run installs Debian's package)");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "mosquitto listens on {port}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Mosquitto { child }
    }

    /// SIGTERM, and wait: Mosquitto saves its persistent sessions on the way out.
    fn stop(mut self) {
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn tls(pki: &Pki, with_client: bool) -> Arc<rustls::ClientConfig> {
    let config = if with_client {
        gateway::tls::client_config_with_identity(Some(&pki.ca), &pki.client.0, &pki.client.1)
    } else {
        gateway::tls::client_config(Some(&pki.ca))
    };
    Arc::new(config.unwrap())
}

fn subscriber_options(pki: &Pki, port: u16) -> MqttOptions {
    let mut options = MqttOptions::new("test-subscriber", "127.0.0.1", port);
    options
        .set_clean_session(false)
        .set_max_packet_size(1 << 20, 1 << 20)
        .set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(tls(
            pki, true,
        ))));
    options
}

/// Makes the persistent session of a subscriber to `causeway/#`, then leaves: the broker
/// queues for it whatever arrives until it comes back.
async fn subscribe_and_leave(pki: &Pki, port: u16) {
    let (client, mut eventloop) = AsyncClient::new(subscriber_options(pki, port), 10);
    let subscribed = async {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    client
                        .subscribe("causeway/#", QoS::AtLeastOnce)
                        .await
                        .unwrap();
                }
                Ok(Event::Incoming(Packet::SubAck(_))) => break,
                Ok(_) => {}
                Err(error) => panic!("the subscriber connects: {error}"),
            }
        }
        client.disconnect().await.unwrap();
        while let Ok(event) = eventloop.poll().await {
            if matches!(event, Event::Outgoing(rumqttc::Outgoing::Disconnect)) {
                break;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), subscribed)
        .await
        .expect("the subscriber subscribes within 10 s");
}

/// The subscriber back on its persistent session: the ids it receives.
fn subscriber(pki: &Pki, port: u16) -> Arc<Mutex<Vec<String>>> {
    let (client, mut eventloop) = AsyncClient::new(subscriber_options(pki, port), 100);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    tokio::spawn(async move {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    let _ = client.subscribe("causeway/#", QoS::AtLeastOnce).await;
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let v: serde_json::Value = serde_json::from_slice(&p.payload).unwrap();
                    s.lock().unwrap().push(v["id"].as_str().unwrap().to_owned());
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    });
    seen
}

async fn store_with(dir: &Path, n: usize) -> (Store, Vec<String>) {
    std::fs::create_dir_all(dir).unwrap();
    let (store, writer) =
        Store::open(StoreOptions::new(dir.join("buffer.db"), &["broker"])).unwrap();
    std::mem::forget(writer);
    let events: Vec<CloudEvent> = (0..n)
        .map(|i| {
            CloudEvent::new(
                "line3",
                "press1",
                "production.count",
                "press1",
                SystemTime::now(),
                serde_json::json!({ "machine": "press1", "total": i }),
            )
        })
        .collect();
    let ids = events.iter().map(|e| e.id.clone()).collect();
    store.append(events, vec![]).await.unwrap();
    (store, ids)
}

fn sink(pki: &Pki, port: u16, with_client: bool) -> (SinkConfig, MqttSinkConfig) {
    let mqtt = MqttSinkConfig {
        host: "127.0.0.1".into(),
        port,
        tls: true,
        ca_file: Some(pki.ca.clone()),
        identity: with_client.then(|| pki.client.clone()),
        topic: "causeway/{gateway_id}/{type}".into(),
        client_id: None,
        credentials: None,
        timeout: Duration::from_secs(5),
        retry_initial: Duration::from_millis(100),
        retry_max: Duration::from_millis(500),
        v5: false,
    };
    let config = SinkConfig {
        name: "broker".into(),
        routes: vec!["*".into()],
        batch_size: 50,
        max_batch_bytes: 1 << 20,
        breaker_failures: 5,
        breaker_open: Duration::from_secs(1),
        rate_limit: None,
        kind: SinkKind::Mqtt(mqtt.clone()),
    };
    (config, mqtt)
}

fn spawn_sink(
    store: &Store,
    config: SinkConfig,
    mqtt: &MqttSinkConfig,
    dir: &Path,
    stop: SinkStop,
) -> tokio::task::JoinHandle<()> {
    let sink = MqttSink::new("broker", "line3", mqtt, dir).unwrap();
    tokio::spawn(run_sink(
        "broker".into(),
        config,
        sink,
        store.clone(),
        store.reader().unwrap(),
        RetryPolicy::new(Duration::from_millis(100), Duration::from_millis(500)),
        stop,
    ))
}

/// Waits until every id has arrived; returns how many messages arrived in all.
async fn until_all(seen: &Mutex<Vec<String>>, order: &[String]) -> usize {
    let deadline = tokio::time::Instant::now() + LIMIT;
    loop {
        let got: HashSet<String> = seen.lock().unwrap().iter().cloned().collect();
        let missing: Vec<usize> = (0..order.len())
            .filter(|i| !got.contains(&order[*i]))
            .collect();
        if missing.is_empty() {
            return seen.lock().unwrap().len();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} of {} events arrived; missing positions {:?}",
            order.len() - missing.len(),
            order.len(),
            &missing[..missing.len().min(20)]
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_is_required_and_a_broker_restart_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let pki = pki(dir.path());
    let port = free_port();
    let broker = Mosquitto::start(dir.path(), &pki, port);
    // The subscriber is away while the sink publishes and the broker restarts, so everything
    // the broker acknowledged waits in its persistent queue, saved on the way down, and what
    // arrives in the end is exactly what the sink counted as delivered, with nothing in flight
    // to the subscriber at the restart.
    subscribe_and_leave(&pki, port).await;

    // Without a client certificate the broker refuses the connection: nothing is delivered,
    // nothing is dead-lettered, the cursor stays.
    let (store, refused_ids) = store_with(&dir.path().join("refused"), 20).await;
    let (config, mqtt) = sink(&pki, port, false);
    let stop = SinkStop {
        inputs_done: CancellationToken::new(),
        abort: CancellationToken::new(),
    };
    let task = spawn_sink(&store, config, &mqtt, dir.path(), stop.clone());
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.abort.cancel();
    task.await.unwrap();
    let reader = store.reader().unwrap();
    assert_eq!(reader.cursor("broker").await.unwrap(), 0);
    assert!(reader.dead_letters("broker").await.unwrap().is_empty());

    // With one, every event arrives; midway the broker is stopped and started again.
    let (store, ids) = store_with(dir.path(), 20_000).await;
    let (config, mqtt) = sink(&pki, port, true);
    let stop = SinkStop {
        inputs_done: CancellationToken::new(),
        abort: CancellationToken::new(),
    };
    stop.inputs_done.cancel();
    let task = spawn_sink(&store, config, &mqtt, dir.path(), stop.clone());
    let reader = store.reader().unwrap();
    let deadline = tokio::time::Instant::now() + LIMIT;
    while reader.cursor("broker").await.unwrap() < 300 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the first events are acknowledged"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    broker.stop();
    let at_stop = reader.cursor("broker").await.unwrap();
    assert!(
        (1..ids.len() as i64).contains(&at_stop),
        "the broker stopped mid-stream (cursor {at_stop})"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let _broker = Mosquitto::start(dir.path(), &pki, port);
    tokio::time::timeout(LIMIT, task)
        .await
        .expect("the sink catches up")
        .unwrap();
    assert!(reader.dead_letters("broker").await.unwrap().is_empty());
    // Every event the sink counted as delivered is in the broker's queue for the subscriber.
    let seen = subscriber(&pki, port);
    let received = until_all(&seen, &ids).await;
    let got: HashSet<String> = seen.lock().unwrap().iter().cloned().collect();
    assert!(
        refused_ids.iter().all(|id| !got.contains(id)),
        "nothing of the sink without a client certificate reached the broker"
    );
    assert!(
        received < ids.len() + 100,
        "repeats only of unacknowledged ones: {received}"
    );
}

/// The MQTT source over mutual TLS reads its tags. (Mosquitto 2.0.11 grants an MQTT 3.1.1
/// subscription its ACL denies and then delivers nothing, so a refused subscription is tested
/// against a broker that says so, in gateway/tests/mqtt_source.rs.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_source_reads_over_mutual_tls() {
    use gateway::sources::{Paths, Source};
    use protocols::model::{Quality, Value};

    let dir = tempfile::tempdir().unwrap();
    let pki = pki(dir.path());
    let port = free_port();
    let _broker = Mosquitto::start(dir.path(), &pki, port);
    let text = format!(
        r#"
gateway_id = "line3"

[[source]]
name = "uns"
kind = "mqtt"
url = "mqtts://127.0.0.1:{port}"
ca_file = "{}"
client_certificate = "{}"
client_key = "{}"
tags = [
  {{ name = "temp", topic = "plant/line3/temp", format = "text" }},
]

[[sink]]
name = "out"
kind = "stdout"
routes = ["*"]
"#,
        pki.ca.display(),
        pki.client.0.display(),
        pki.client.1.display()
    );
    let loaded =
        firmware_config::load("t.toml", &text).unwrap_or_else(|r| panic!("{}", r.render(false)));
    let buffer = dir.path().join("buffer.db");
    let paths = Paths {
        gateway_id: "line3",
        base: dir.path(),
        buffer: &buffer,
    };
    let (tx, mut rx) = tokio::sync::mpsc::channel(64);
    let cancel = CancellationToken::new();
    let task = tokio::spawn(Source::build(&loaded.sources[0], paths).run(tx, cancel.clone()));
    // A publisher with the client certificate.
    let mut options = MqttOptions::new("test-publisher", "127.0.0.1", port);
    options.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(tls(
        &pki, true,
    ))));
    let (client, mut eventloop) = AsyncClient::new(options, 100);
    tokio::spawn(async move { while eventloop.poll().await.is_ok() {} });
    let deadline = tokio::time::Instant::now() + LIMIT;
    let value = loop {
        client
            .publish("plant/line3/temp", QoS::AtLeastOnce, false, "21.5")
            .await
            .unwrap();
        if let Ok(Some(batch)) = tokio::time::timeout(Duration::from_millis(200), rx.recv()).await
            && let Some(s) = batch.samples.into_iter().find(|s| &*s.tag == "uns.temp")
        {
            assert_eq!(s.quality, Quality::Good, "{s:?}");
            break s.value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "a value over mutual TLS"
        );
    };
    assert_eq!(value, Some(Value::F64(21.5)));
    cancel.cancel();
    task.await.unwrap();
}
