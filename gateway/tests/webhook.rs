//! The webhook source against a real HTTPS client: signatures and keys good and bad, bodies
//! malformed, too large or holding none of the tags, and posts that feed the rules.

use std::{path::Path, time::Duration};

use gateway::sources::{Paths, Source};
use protocols::{model::SampleBatch, webhook::signature};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

const SECRET: &str = "0123456789abcdef-webhook-secret";

/// A CA (its PEM written to `ca.pem`) and a server certificate for 127.0.0.1 signed by it
/// (`server.pem`, `server.key`), in `dir`.
fn certificates(dir: &Path) {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "webhook test CA");
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
    let ca_key = KeyPair::generate().unwrap();
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&leaf_key, &issuer)
        .unwrap();
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    std::fs::write(dir.join("server.pem"), leaf.pem()).unwrap();
    std::fs::write(dir.join("server.key"), leaf_key.serialize_pem()).unwrap();
}

/// A port nobody listens on now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Hook {
    url: String,
    client: reqwest::Client,
    batches: mpsc::Receiver<SampleBatch>,
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

/// Starts a webhook source with `auth` (TOML) and TLS, reading `/counts/total` (u32) and
/// `/state` into tags `total` and `state`.
async fn start(auth: &str) -> Hook {
    let dir = tempfile::tempdir().unwrap();
    certificates(dir.path());
    std::fs::write(dir.path().join("hook.secret"), format!("{SECRET}\n")).unwrap();
    let port = free_port();
    let text = format!(
        r#"
gateway_id = "gw"
[[source]]
name = "mes"
kind = "webhook"
listen = "127.0.0.1:{port}"
path = "/mes/counts"
certificate = "server.pem"
key = "server.key"
max_body = "1KiB"
auth = {auth}
tags = [
  {{ name = "total", value = "/counts/total", type = "u32", timestamp = "/at" }},
  {{ name = "state", value = "/state", type = "u16" }},
]
[[rule]]
kind = "state"
tag = "mes.state"
states = {{ 0 = "idle", 1 = "running" }}
[[sink]]
name = "out"
kind = "stdout"
routes = ["*"]
"#
    );
    let config =
        firmware_config::load("t.toml", &text).unwrap_or_else(|r| panic!("{}", r.render(false)));
    let buffer = dir.path().join("b.db");
    let paths = Paths {
        gateway_id: "gw",
        base: dir.path(),
        buffer: &buffer,
    };
    gateway::sources::preflight(&config.sources[0], paths).unwrap();
    let source = Source::build(&config.sources[0], paths);
    let (tx, batches) = mpsc::channel(8);
    let cancel = CancellationToken::new();
    let task = tokio::spawn(source.run(tx, cancel.clone()));
    let tls = gateway::tls::client_config(Some(&dir.path().join("ca.pem"))).unwrap();
    let client = reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let url = format!("https://127.0.0.1:{port}/mes/counts");
    // Bounded: the source binds at once.
    let mut bound = false;
    for _ in 0..250 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            bound = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(bound, "the webhook source listens on {port}");
    Hook {
        url,
        client,
        batches,
        cancel,
        task,
        _dir: dir,
    }
}

impl Hook {
    async fn post(&self, body: &str, headers: &[(&str, String)]) -> (u16, serde_json::Value) {
        let mut request = self.client.post(&self.url).body(body.to_owned());
        for (k, v) in headers {
            request = request.header(*k, v);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or_default())
    }

    fn signed(body: &str) -> Vec<(&'static str, String)> {
        vec![(
            "X-Signature-256",
            format!("sha256={}", signature(SECRET.as_bytes(), body.as_bytes())),
        )]
    }

    /// Nothing reached the pipeline.
    fn nothing_passed(&mut self) {
        assert!(
            self.batches.try_recv().is_err(),
            "nothing reaches the rules"
        );
    }

    async fn stop(self) {
        self.cancel.cancel();
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("the source stops")
            .unwrap();
    }
}

const HMAC: &str = r#"{ hmac_header = "X-Signature-256", hmac_secret_file = "hook.secret", hmac_prefix = "sha256=" }"#;

#[tokio::test]
async fn signed_posts_feed_tags_and_bad_signatures_and_bodies_are_refused_with_the_reason() {
    let mut hook = start(HMAC).await;
    let body = r#"{"counts": {"total": 1234}, "state": 1, "at": "2026-11-28T08:00:00Z"}"#;
    let (status, answer) = hook.post(body, &Hook::signed(body)).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["accepted"], 2);
    let batch = hook.batches.recv().await.unwrap();
    assert_eq!(&*batch.source, "mes");
    let values: Vec<(String, String)> = batch
        .samples
        .iter()
        .map(|s| (s.tag.to_string(), format!("{:?}", s.value)))
        .collect();
    assert_eq!(values.len(), 2, "{values:?}");
    assert_eq!(values[0].0, "mes.total");
    assert!(values[0].1.contains("1234"), "{values:?}");
    assert_eq!(
        batch.samples[0].source_time,
        Some(humantime::parse_rfc3339("2026-11-28T08:00:00Z").unwrap())
    );
    assert_eq!(values[1].0, "mes.state");

    // A post of one tag carries that tag alone, and names the one it lacks.
    let body = r#"{"state": 0}"#;
    let (status, answer) = hook.post(body, &Hook::signed(body)).await;
    assert_eq!(status, 200);
    assert_eq!(answer["missing"], serde_json::json!(["total"]), "{answer}");
    let batch = hook.batches.recv().await.unwrap();
    assert_eq!(batch.samples.len(), 1);
    assert_eq!(&*batch.samples[0].tag, "mes.state");

    // Signed for another body, unsigned, signed with another secret, not hex: all 401.
    let other = r#"{"state": 1}"#;
    for headers in [
        Hook::signed(other),
        vec![],
        vec![(
            "X-Signature-256",
            format!(
                "sha256={}",
                signature(b"not the secret at all", other.as_bytes())
            ),
        )],
        vec![("X-Signature-256", "sha256=zz".to_owned())],
        vec![(
            "X-Signature-256",
            signature(SECRET.as_bytes(), body.as_bytes()),
        )],
    ] {
        let (status, answer) = hook.post(body, &headers).await;
        assert_eq!(status, 401, "{headers:?}: {answer}");
        assert!(answer["error"].is_string());
    }
    hook.nothing_passed();

    // A malformed body, properly signed: 400 with where.
    let broken = r#"{"state": }"#;
    let (status, answer) = hook.post(broken, &Hook::signed(broken)).await;
    assert_eq!(status, 400);
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .starts_with("malformed JSON at line 1, column 11"),
        "{answer}"
    );
    // None of the tags: 400 naming what was expected.
    let empty = r#"{"unrelated": true}"#;
    let (status, answer) = hook.post(empty, &Hook::signed(empty)).await;
    assert_eq!(status, 400);
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("/counts/total, /state"),
        "{answer}"
    );
    // Too large (1 KiB): 413, whether it says so up front or not.
    let big = format!(r#"{{"state": 1, "pad": "{}"}}"#, "x".repeat(2000));
    let (status, _) = hook.post(&big, &Hook::signed(&big)).await;
    assert_eq!(status, 413);
    hook.nothing_passed();

    // A value that does not fit its type is a Bad sample, named in the answer.
    let body = r#"{"counts": {"total": -5}, "state": 1}"#;
    let (status, answer) = hook.post(body, &Hook::signed(body)).await;
    assert_eq!(status, 200);
    assert_eq!(answer["bad"][0]["tag"], "total", "{answer}");
    let batch = hook.batches.recv().await.unwrap();
    assert!(matches!(
        batch.samples[0].quality,
        protocols::model::Quality::Bad(_)
    ));

    // Another path, another method.
    let wrong = hook
        .client
        .post(hook.url.replace("/mes/counts", "/other"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status().as_u16(), 404);
    let get = hook.client.get(&hook.url).send().await.unwrap();
    assert_eq!(get.status().as_u16(), 405);
    hook.nothing_passed();
    hook.stop().await;
}

#[tokio::test]
async fn an_api_key_is_checked_and_the_pipeline_full_is_a_503() {
    let mut hook = start(r#"{ api_key_header = "X-API-Key", api_key_file = "hook.secret" }"#).await;
    let body = r#"{"state": 1}"#;
    let (status, _) = hook.post(body, &[("X-API-Key", SECRET.to_owned())]).await;
    assert_eq!(status, 200);
    assert!(hook.batches.recv().await.is_some());
    for key in ["wrong-key-0123456789", ""] {
        let (status, _) = hook.post(body, &[("X-API-Key", key.to_owned())]).await;
        assert_eq!(status, 401, "{key:?}");
    }
    let (status, _) = hook.post(body, &[]).await;
    assert_eq!(status, 401);
    hook.nothing_passed();
    // The pipeline takes 8 batches and then nothing: the 9th post waits, then hears 503.
    for _ in 0..8 {
        let (status, _) = hook.post(body, &[("X-API-Key", SECRET.to_owned())]).await;
        assert_eq!(status, 200);
    }
    let full = hook
        .client
        .post(&hook.url)
        .header("X-API-Key", SECRET)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(full.status().as_u16(), 503);
    assert_eq!(
        full.headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap()),
        Some("1")
    );
    hook.stop().await;
}

#[tokio::test]
async fn one_address_holds_at_most_eight_connections_and_idle_ones_do_not_starve_it() {
    let mut hook = start(r#"{ api_key_header = "X-API-Key", api_key_file = "hook.secret" }"#).await;
    let port = hook
        .url
        .split(':')
        .nth(2)
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_owned();
    // Eight connections that never say anything (no TLS handshake).
    let mut idle = Vec::new();
    for _ in 0..protocols::webhook::MAX_PER_PEER {
        idle.push(
            tokio::net::TcpStream::connect(format!("127.0.0.1:{port}"))
                .await
                .unwrap(),
        );
    }
    let body = r#"{"state": 1}"#;
    let refused = hook
        .client
        .post(&hook.url)
        .header("X-API-Key", SECRET)
        .body(body)
        .send()
        .await;
    assert!(refused.is_err(), "a ninth connection is closed at once");
    drop(idle);
    // Their seats come back once they are gone (bounded wait).
    let mut answered = None;
    for _ in 0..100 {
        if let Ok(r) = hook
            .client
            .post(&hook.url)
            .header("X-API-Key", SECRET)
            .body(body)
            .send()
            .await
        {
            answered = Some(r.status().as_u16());
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(answered, Some(200));
    assert!(hook.batches.recv().await.is_some());
    hook.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn posts_feed_the_rules_and_reach_the_erp_and_an_unsigned_one_never_does() {
    let tasks = tokio_util::task::TaskTracker::new();
    let stop = CancellationToken::new();
    let erp = gateway::demo::receiver::Receiver::start(&tasks, stop.clone())
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    certificates(dir.path());
    std::fs::write(dir.path().join("erp-ca.pem"), erp.ca_pem()).unwrap();
    std::fs::write(dir.path().join("hook.secret"), SECRET).unwrap();
    let port = free_port();
    let text = format!(
        r#"
gateway_id = "gw"
shutdown_grace = "5s"
[buffer]
path = "buffer.db"
[[source]]
name = "mes"
kind = "webhook"
listen = "127.0.0.1:{port}"
certificate = "server.pem"
key = "server.key"
auth = {HMAC}
tags = [ {{ name = "state", value = "/state", type = "u16" }} ]
[[rule]]
kind = "state"
machine = "press1"
tag = "mes.state"
states = {{ 0 = "idle", 1 = "running", 2 = "down" }}
[[sink]]
name = "erp"
kind = "https"
url = "{url}"
ca_file = "erp-ca.pem"
routes = ["production.state"]
retry_initial = "50ms"
retry_max = "300ms"
"#,
        url = erp.url()
    );
    let config =
        firmware_config::load("t.toml", &text).unwrap_or_else(|r| panic!("{}", r.render(false)));
    let running = gateway::topology::start(&config, dir.path()).expect("starts");
    let tls = gateway::tls::client_config(Some(&dir.path().join("ca.pem"))).unwrap();
    let client = reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let url = format!("https://127.0.0.1:{port}/");
    let post = |body: &'static str, signed: bool| {
        let mut request = client.post(&url).body(body);
        if signed {
            request = request.header(
                "X-Signature-256",
                format!("sha256={}", signature(SECRET.as_bytes(), body.as_bytes())),
            );
        }
        async move {
            // Bounded: the source binds at start.
            for _ in 0..100 {
                if let Ok(response) = request.try_clone().unwrap().send().await {
                    return response.status().as_u16();
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            panic!("the webhook never answered");
        }
    };
    let states = || {
        erp.events_since(0)
            .iter()
            .filter(|e| e["type"] == "production.state")
            .map(|e| e["data"]["state"].as_str().unwrap().to_owned())
            .collect::<Vec<_>>()
    };
    assert_eq!(post(r#"{"state": 1}"#, true).await, 200);
    assert_eq!(post(r#"{"state": 0}"#, false).await, 401);
    assert_eq!(post(r#"{"state": 2}"#, true).await, 200);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while states().len() < 2 {
        assert!(tokio::time::Instant::now() < deadline, "{:?}", states());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(running.shutdown().await, gateway::topology::Drained::Fully);
    assert_eq!(
        states(),
        ["running", "down"],
        "the unsigned post's idle never reached the rules"
    );
    stop.cancel();
    tasks.close();
    tasks.wait().await;
}
