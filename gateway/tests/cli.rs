//! The `causeway` binary, run as a plant engineer would.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

fn causeway() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_causeway"));
    cmd.current_dir(env!("CARGO_MANIFEST_DIR"))
        .env_remove("CAUSEWAY_LOG")
        .env_remove("CAUSEWAY_CONFIG");
    cmd
}

fn examples() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/examples");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("docs/examples exists")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    files
}

#[test]
fn every_example_config_passes_check_with_a_one_line_summary() {
    let files = examples();
    assert!(files.len() >= 2, "{files:?}");
    for file in files {
        let out = causeway()
            .args(["check", "--deny-warnings", "-c"])
            .arg(&file)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{}: {stdout}{}",
            file.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(stdout.lines().count(), 1, "{stdout}");
        assert!(stdout.contains(": ok: 1 source ("), "{stdout}");
    }
}

#[test]
fn a_bad_config_gets_every_problem_rendered_with_location_and_hint_and_exit_78() {
    let out = causeway()
        .args(["check", "-c", "tests/snapshots/bad.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    let rendered = String::from_utf8(out.stderr).unwrap();
    let expected = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/snapshots/bad.txt"),
    )
    .unwrap();
    assert_eq!(
        rendered, expected,
        "the rendered diagnostics changed; review and update tests/snapshots/bad.txt"
    );
    assert!(rendered.contains("[tests/snapshots/bad.toml:15:9]"));
    assert!(rendered.contains("6 errors, 0 warnings"));
    assert!(!rendered.contains("s3cr3t"), "the inline token is masked");
}

#[test]
fn check_plan_shows_the_coalesced_reads() {
    let press = examples()
        .into_iter()
        .find(|p| p.ends_with("press-line.toml"))
        .unwrap();
    let out = causeway()
        .args(["check", "--plan", "-c"])
        .arg(press)
        .output()
        .unwrap();
    assert!(out.status.success());
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(stdout.contains("8 tags in 4 requests"), "{stdout}");
    assert!(
        stdout.contains("holding:100..=102 (3 registers): parts_total, parts_reject"),
        "{stdout}"
    );
}

#[test]
fn a_missing_config_file_is_named() {
    let out = causeway()
        .args(["check", "-c", "no/such.toml"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.contains("cannot read config `no/such.toml`"),
        "{stderr}"
    );
}

#[test]
fn run_reads_a_plc_until_sigterm_then_drains_and_exits_cleanly() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let tasks = tokio_util::task::TaskTracker::new();
    let cancel = tokio_util::sync::CancellationToken::new();
    let plc = runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        gateway::demo::simulate::spawn(listener, None, &tasks, cancel.clone());
        addr
    });
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("causeway.toml");
    let text = std::fs::read_to_string(
        examples()
            .into_iter()
            .find(|p| p.ends_with("minimal.toml"))
            .unwrap(),
    )
    .unwrap()
    .replace("127.0.0.1:5020", &plc.to_string())
    .replace("poll = \"500ms\"", "poll = \"50ms\"")
    .replace("interval = \"5s\"", "interval = \"300ms\"")
    .replace(
        "kind = \"stdout\"",
        "kind = \"file\"\npath = \"events.jsonl\"",
    );
    std::fs::write(&config, text).unwrap();
    let mut child = causeway()
        .args(["run", "--log-format", "json", "-c"])
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let events = dir.path().join("events.jsonl");
    let deadline = Instant::now() + Duration::from_secs(20);
    let count_lines = || {
        std::fs::read_to_string(&events)
            .map(|t| t.lines().count())
            .unwrap_or(0)
    };
    while count_lines() < 3 {
        assert!(
            Instant::now() < deadline,
            "no events in {}",
            events.display()
        );
        assert!(child.try_wait().unwrap().is_none(), "causeway exited early");
        std::thread::sleep(Duration::from_millis(50));
    }
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(20);
    let exit = loop {
        if let Some(exit) = child.try_wait().unwrap() {
            break exit;
        }
        assert!(
            Instant::now() < deadline,
            "causeway did not stop after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let stderr = std::io::read_to_string(child.stderr.take().unwrap()).unwrap();
    assert!(exit.success(), "{stderr}");
    assert!(
        stderr.contains("\"Shutting down: stopping sources, draining the buffer.\""),
        "json logs: {stderr}"
    );
    for line in std::fs::read_to_string(&events).unwrap().lines() {
        let event: serde_json::Value = serde_json::from_str(line).unwrap();
        assert!(
            event["type"].as_str().unwrap().starts_with("production."),
            "{line}"
        );
    }
    assert!(
        dir.path().join("minimal-buffer.db").exists(),
        "the buffer sits beside the config"
    );
    cancel.cancel();
    runtime.block_on(async {
        tasks.close();
        tasks.wait().await;
    });
}

#[test]
fn version_is_printed() {
    let out = causeway().arg("--version").output().unwrap();
    assert!(out.status.success());
    assert!(
        String::from_utf8(out.stdout)
            .unwrap()
            .starts_with("causeway ")
    );
}

#[test]
fn simulate_serves_the_press_line_over_modbus_tcp() {
    // An ephemeral port must be released for the child to bind it, and another process may
    // take it in between: try again on a fresh port if the child could not listen.
    let mut tries = 0;
    let (mut child, addr) = loop {
        tries += 1;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr = format!("127.0.0.1:{port}");
        let mut child = causeway()
            .args(["simulate", "--for", "20s", "--modbus", &addr])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // It prints one line once it listens, or exits with "cannot listen".
        let mut line = String::new();
        let listening = std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.as_mut().unwrap()),
            &mut line,
        )
        .is_ok_and(|n| n > 0);
        if listening {
            assert!(
                line.starts_with("simulate: press line on modbus-tcp"),
                "{line}"
            );
            break (child, addr);
        }
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("cannot listen"), "{stderr}");
        assert!(tries < 5, "no free port in 5 tries: {stderr}");
    };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let state = runtime.block_on(async {
        use tokio_modbus::prelude::*;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(mut ctx) = tcp::connect_slave(addr.parse().unwrap(), Slave(1)).await {
                let words =
                    tokio::time::timeout(Duration::from_secs(2), ctx.read_holding_registers(0, 18))
                        .await;
                break words
                    .expect("an answer")
                    .expect("no transport error")
                    .expect("no exception");
            }
            assert!(
                Instant::now() < deadline,
                "simulate never listened on {addr}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(state.len(), 18);
    assert!(state[3] <= 2, "a state code: {}", state[3]);
    assert_eq!(
        &state[10..12],
        &[u16::from_be_bytes(*b"PO"), u16::from_be_bytes(*b"-4")],
        "the order number"
    );
}

#[tokio::test]
async fn buffer_commands_show_requeue_and_purge_dead_letters() {
    use gateway::store::{Store, StoreOptions};
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("causeway.toml");
    std::fs::write(
        &config,
        r#"
gateway_id = "gw"
[buffer]
path = "buffer.db"
[[sink]]
name = "erp"
kind = "file"
path = "erp.jsonl"
routes = ["production.*"]
[[sink]]
name = "qms"
kind = "file"
path = "qms.jsonl"
routes = ["*"]
"#,
    )
    .unwrap();
    let options = StoreOptions {
        gateway_id: "gw".into(),
        ..StoreOptions::new(dir.path().join("buffer.db"), &["erp", "qms"])
    };
    let events: Vec<gateway::event::CloudEvent> = (0..3)
        .map(|n| {
            gateway::event::CloudEvent::new(
                "gw",
                "press1",
                "production.count",
                "press1",
                std::time::SystemTime::now(),
                serde_json::json!({ "n": n }),
            )
        })
        .collect();
    {
        let (store, writer) = Store::open(options.clone()).unwrap();
        store.append(events.clone(), vec![]).await.unwrap();
        let reader = store.reader().unwrap();
        let batch = reader
            .fetch("erp", 0, &["production.*".into()], 10)
            .await
            .unwrap();
        store
            .dead_letter("erp", &batch.events[..2], "HTTP 422: bad order", batch.upto)
            .await
            .unwrap();
        let qms = reader.fetch("qms", 0, &["*".into()], 10).await.unwrap();
        store.ack("qms", qms.upto).await.unwrap();
        drop((store, reader));
        writer.join();
    }
    let run = |args: &[&str]| {
        causeway()
            .arg("buffer")
            .args(args)
            .arg("-c")
            .arg(&config)
            .output()
            .unwrap()
    };
    let list = run(&["list"]);
    assert!(
        list.status.success(),
        "{}",
        String::from_utf8_lossy(&list.stderr)
    );
    let lines: Vec<serde_json::Value> = String::from_utf8(list.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["id"], events[0].id.as_str());
    assert_eq!(lines[0]["reason"], "HTTP 422: bad order");
    let stats: serde_json::Value = serde_json::from_slice(&run(&["stats"]).stdout).unwrap();
    assert_eq!(stats["dead_letters"], 2);
    assert_eq!(stats["sinks"][0]["sink"], "erp");
    assert_eq!(stats["sinks"][0]["dead_letters"], 2);
    let export = run(&["export", "--sink", "erp"]);
    assert!(export.status.success());
    let export = String::from_utf8(export.stdout).unwrap();
    assert_eq!(export.lines().count(), 2, "{export}");
    assert!(
        export.lines().all(|l| l.contains("\"event\":{")),
        "{export}"
    );

    let refused = run(&["purge"]);
    assert_eq!(refused.status.code(), Some(2), "purge needs --yes");
    let requeued = run(&["requeue", "--id", &events[1].id]);
    assert!(requeued.status.success());
    {
        let (store, writer) = Store::open(options.clone()).unwrap();
        let reader = store.reader().unwrap();
        let erp = reader
            .fetch(
                "erp",
                reader.cursor("erp").await.unwrap(),
                &["production.*".into()],
                10,
            )
            .await
            .unwrap();
        assert_eq!(erp.events.len(), 1, "the requeued event, for erp");
        assert_eq!(erp.events[0].id, events[1].id);
        let qms = reader
            .fetch(
                "qms",
                reader.cursor("qms").await.unwrap(),
                &["*".into()],
                10,
            )
            .await
            .unwrap();
        assert!(qms.events.is_empty(), "qms had it already: not sent twice");
        drop((store, reader));
        writer.join();
    }
    let purged = run(&["purge", "--yes"]);
    assert!(purged.status.success());
    let after = run(&["list"]);
    assert!(after.status.success());
    assert!(after.stdout.is_empty(), "the one left was purged");
}

#[tokio::test]
async fn audit_lists_attempts_and_answers_for_one_event() {
    use gateway::store::{Attempt, Store, StoreOptions};
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("causeway.toml");
    std::fs::write(
        &config,
        r#"
gateway_id = "gw"
[buffer]
path = "buffer.db"
[[sink]]
name = "erp"
kind = "file"
path = "erp.jsonl"
routes = ["production.*"]
[[sink]]
name = "qms"
kind = "file"
path = "qms.jsonl"
routes = ["quality.*"]
"#,
    )
    .unwrap();
    let events: Vec<gateway::event::CloudEvent> = (0..3)
        .map(|n| {
            gateway::event::CloudEvent::new(
                "gw",
                "press1",
                "production.count",
                "press1",
                std::time::SystemTime::now(),
                serde_json::json!({ "n": n }),
            )
        })
        .collect();
    {
        let (store, writer) = Store::open(StoreOptions {
            gateway_id: "gw".into(),
            ..StoreOptions::new(dir.path().join("buffer.db"), &["erp", "qms"])
        })
        .unwrap();
        store.append(events.clone(), vec![]).await.unwrap();
        let reader = store.reader().unwrap();
        let batch = reader
            .fetch("erp", 0, &["production.*".into()], 10)
            .await
            .unwrap();
        let attempt = |outcome: &'static str, status: &str| Attempt {
            sink: "erp".into(),
            at_ms: gateway::store::now_ms(),
            duration_ms: 12,
            first_seq: batch.events[0].seq,
            last_seq: batch.events[2].seq,
            first_id: batch.events[0].id.clone(),
            last_id: batch.events[2].id.clone(),
            events: 3,
            target: "erp.jsonl".into(),
            outcome,
            status: status.into(),
            response: String::new(),
        };
        store.audit(attempt("retry", "HTTP 503")).await.unwrap();
        store
            .ack_attempt("erp", batch.upto, attempt("delivered", "HTTP 200"))
            .await
            .unwrap();
        drop((store, reader));
        writer.join();
    }
    let run = |args: &[&str]| {
        causeway()
            .arg("audit")
            .args(args)
            .arg("-c")
            .arg(&config)
            .output()
            .unwrap()
    };
    let listed = run(&["--sink", "erp", "--since", "1h"]);
    assert!(
        listed.status.success(),
        "{}",
        String::from_utf8_lossy(&listed.stderr)
    );
    let lines: Vec<serde_json::Value> = String::from_utf8(listed.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["outcome"], "retry");
    assert_eq!(lines[1]["outcome"], "delivered");
    assert_eq!(lines[1]["first_id"], events[0].id.as_str());
    let one = run(&["--id", &events[1].id]);
    assert!(one.status.success());
    let answer: serde_json::Value = serde_json::from_slice(&one.stdout).unwrap();
    assert_eq!(answer["sinks"][0]["sink"], "erp");
    assert_eq!(answer["sinks"][0]["status"], "delivered");
    assert_eq!(answer["sinks"][0]["answer"], "HTTP 200");
    assert_eq!(
        answer["sinks"].as_array().unwrap().len(),
        1,
        "not routed to the QMS: {answer:#}"
    );
    let unknown = run(&["--id", "nope"]);
    assert_eq!(unknown.status.code(), Some(1));
    let later = run(&["--since", "2099-01-01T00:00:00Z"]);
    assert!(later.status.success());
    assert!(later.stdout.is_empty());
    let bad = run(&["--since", "yesterday-ish"]);
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("--since `yesterday-ish` is neither"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
    let typo = run(&["--sink", "epr"]);
    assert!(!typo.status.success());
    assert!(
        String::from_utf8_lossy(&typo.stderr).contains("no sink `epr`"),
        "{}",
        String::from_utf8_lossy(&typo.stderr)
    );
}

#[test]
fn check_render_shows_each_request_and_a_broken_template_fails_check() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/examples/northbound.toml");
    let render = |sink: &str| {
        let out = causeway()
            .args(["check", "--render", sink, "-c"])
            .arg(&example)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let erp = render("erp");
    let (head, body) = erp.split_once("\n\n").unwrap();
    let mut lines = head.lines();
    assert_eq!(
        lines.next(),
        Some("POST https://erp.example.com/api/v2/production-confirmations")
    );
    let headers: Vec<&str> = lines.collect();
    assert!(headers.contains(&"Content-Type: application/json"), "{erp}");
    assert!(headers.contains(&"X-Plant: plant1"), "{erp}");
    assert!(
        headers.contains(
            &"Authorization: Bearer <a token from https://login.example.com/oauth2/token>"
        ),
        "{erp}"
    );
    let confirmation: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(confirmation["order"], "4711-0042");
    assert_eq!(confirmation["quantityGood"], 117);
    assert_eq!(confirmation["quantityScrap"], 3);
    let mes = render("mes");
    let (_, envelope) = mes.split_once("\n\n").unwrap();
    let doc = roxmltree::Document::parse(envelope.trim_end()).unwrap();
    assert!(
        doc.descendants()
            .any(|n| n.has_tag_name(("urn:example:mes", "Name")) && n.text() == Some("down")),
        "{mes}"
    );
    assert!(
        mes.contains(
            "Authorization: Basic <causeway and the password in file /etc/causeway/mes.password>"
        ),
        "the credential is named, not read: {mes}"
    );

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("causeway.toml");
    let text = std::fs::read_to_string(&example).unwrap().replace(
        "template_file = \"templates/erp-confirmation.json.j2\"",
        "template = \"{\\\"order\\\": {{ event.data.ordr|tojson }}}\"",
    );
    std::fs::write(&config, text).unwrap();
    std::fs::create_dir(dir.path().join("templates")).unwrap();
    for t in ["qms-measurements.json.j2", "mes-states.soap.xml.j2"] {
        std::fs::copy(
            example.parent().unwrap().join("templates").join(t),
            dir.path().join("templates").join(t),
        )
        .unwrap();
    }
    let out = causeway()
        .args(["check", "-c"])
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("sink `erp`, with a sample production.count")
            && stderr.contains("undefined")
            && stderr.contains("line 1"),
        "{stderr}"
    );
    let out = causeway()
        .args(["check", "--render", "nope", "-c"])
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
}
