//! The OPC UA source against an independent server: Python's asyncua (tests/peers), offering
//! only Basic256Sha256 SignAndEncrypt and user-name logins. Built with `--features
//! external-peers`; `.ci/run` installs asyncua in a venv and points CAUSEWAY_PYTHON at it.
#![cfg(feature = "external-peers")]

use std::{path::Path, process::Stdio, time::Duration};

use firmware_config::{
    OpcUaConfig, OpcUaTagConfig, Secret, UaIdentity, UaMode, UaNodeId, UaPolicy, UaReading, UaType,
};
use protocols::{
    model::{Quality, Sample, Value},
    opcua::OpcUaSource,
};
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
    sync::mpsc,
};
use tokio_util::sync::CancellationToken;

const LIMIT: Duration = Duration::from_secs(60);

struct Peer {
    _child: Child,
    endpoint: String,
    certificate: String,
    nodes: serde_json::Value,
}

async fn peer(dir: &Path) -> Peer {
    let python = std::env::var("CAUSEWAY_PYTHON").expect(
        "CAUSEWAY_PYTHON names a Python with asyncua installed (.ci/run sets it up in a venv)",
    );
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("peers/asyncua_server.py");
    let mut child = Command::new(python)
        .arg(script)
        .args(["--pki", &dir.join("peer").display().to_string()])
        .args(["--user", "plant", "--password", "line3-secret"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("the asyncua peer starts");
    let stdout = child.stdout.take().expect("piped stdout");
    let mut lines = BufReader::new(stdout).lines();
    let line = tokio::time::timeout(LIMIT, lines.next_line())
        .await
        .expect("the peer announces itself in time")
        .expect("its stdout")
        .expect("one JSON line");
    let announced: serde_json::Value = serde_json::from_str(&line).expect(&line);
    Peer {
        _child: child,
        endpoint: announced["endpoint"].as_str().unwrap().to_owned(),
        certificate: announced["certificate"].as_str().unwrap().to_owned(),
        nodes: announced["nodes"].clone(),
    }
}

fn config(peer: &Peer, password: &Path) -> OpcUaConfig {
    let tag = |name: &str, data_type| OpcUaTagConfig {
        name: name.into(),
        node: UaNodeId::parse(peer.nodes[name].as_str().unwrap()).unwrap(),
        data_type,
        deadband: None,
    };
    OpcUaConfig {
        name: "py".into(),
        endpoint: peer.endpoint.clone(),
        policy: UaPolicy::Basic256Sha256,
        mode: UaMode::SignAndEncrypt,
        identity: UaIdentity::UserName {
            user: "plant".into(),
            password: Secret::File(password.to_path_buf()),
        },
        pki_dir: None,
        reading: UaReading::Subscribe {
            publishing: Duration::from_millis(100),
            sampling: Duration::from_millis(100),
            queue_size: 10,
        },
        timeout: Duration::from_secs(5),
        tags: vec![
            tag("Parts", Some(UaType::U32)),
            tag("Force", None),
            tag("Order", Some(UaType::String)),
            tag("Flags", None),
        ],
    }
}

/// Runs the source until a sample satisfies `done`.
async fn until(config: OpcUaConfig, pki: &Path, mut done: impl FnMut(&Sample) -> bool) -> Sample {
    let (tx, mut rx) = mpsc::channel(64);
    let cancel = CancellationToken::new();
    let source = OpcUaSource::new(config, pki.to_path_buf())
        .with_reconnect(Duration::from_millis(200), Duration::from_secs(1));
    let task = tokio::spawn(source.run(tx, cancel.clone()));
    let found = tokio::time::timeout(LIMIT, async {
        loop {
            let batch = rx.recv().await.expect("the source runs");
            // `done` sees every sample of the batch (it may record them), in order.
            let mut hit = None;
            for s in batch.samples {
                if done(&s) && hit.is_none() {
                    hit = Some(s);
                }
            }
            if let Some(s) = hit {
                return s;
            }
        }
    })
    .await
    .expect("the awaited sample within the limit");
    cancel.cancel();
    task.await.unwrap();
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic256sha256_sign_and_encrypt_with_a_user_on_asyncua() {
    let dir = tempfile::tempdir().unwrap();
    let peer = peer(dir.path()).await;
    let pki = dir.path().join("pki");
    let password = dir.path().join("ua.pw");
    std::fs::write(&password, "line3-secret\n").unwrap();

    // Unknown server certificate: refused, saved in rejected/, and the message says how to
    // trust it.
    let s = until(
        config(&peer, &password),
        &pki,
        |s| matches!(&s.quality, Quality::Bad(why) if why.contains("not trusted")),
    )
    .await;
    let Quality::Bad(why) = s.quality else {
        unreachable!()
    };
    let rejected: Vec<_> = std::fs::read_dir(pki.join("rejected"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(rejected.len(), 1, "{rejected:?}");
    assert!(why.contains(&rejected[0].display().to_string()), "{why}");
    assert_eq!(
        std::fs::read(&rejected[0]).unwrap(),
        std::fs::read(&peer.certificate).unwrap(),
        "the rejected file is the peer's certificate"
    );

    // Trusted as the message says: values flow, typed as declared.
    std::fs::rename(
        &rejected[0],
        pki.join("trusted").join(rejected[0].file_name().unwrap()),
    )
    .unwrap();
    let mut seen = std::collections::HashMap::new();
    let mut first_parts = None;
    until(config(&peer, &password), &pki, |s| {
        assert!(!matches!(s.quality, Quality::Bad(_)), "{s:?}");
        seen.insert(s.tag.to_string(), s.value.clone());
        // The counter advances under the subscription: two increments past its first value.
        match (&*s.tag, &s.value) {
            ("py.Parts", Some(Value::U64(n))) => *first_parts.get_or_insert(*n) + 2 <= *n,
            _ => false,
        }
    })
    .await;
    assert_eq!(seen["py.Force"], Some(Value::F64(47.5)));
    assert_eq!(seen["py.Order"], Some(Value::Str("PO-4711".into())));
    let flags = seen["py.Flags"].clone().expect("the array");
    assert_eq!(flags.to_string(), "[true,false,true]");

    // A wrong password is named as such.
    let wrong = dir.path().join("wrong.pw");
    std::fs::write(&wrong, "guess").unwrap();
    let s = until(
        config(&peer, &wrong),
        &pki,
        |s| matches!(&s.quality, Quality::Bad(why) if why.contains("refused the login")),
    )
    .await;
    let Quality::Bad(why) = s.quality else {
        unreachable!()
    };
    assert!(why.contains("plant") && why.contains("wrong.pw"), "{why}");

    // The peer offers no None endpoint: asking for it fails and lists what it offers.
    let mut none = config(&peer, &password);
    none.policy = UaPolicy::None;
    none.mode = UaMode::None;
    let s = until(
        none,
        &pki,
        |s| matches!(&s.quality, Quality::Bad(why) if why.contains("does not offer")),
    )
    .await;
    let Quality::Bad(why) = s.quality else {
        unreachable!()
    };
    assert!(why.contains("Basic256Sha256/SignAndEncrypt"), "{why}");
}
