//! The kill -9 suite: `causeway run` as a child process, killed with SIGKILL at random moments
//! while a PLC counts parts and the receiver refuses some requests, restarted each time, then
//! stopped gracefully to drain. Every accepted event arrives (deduplicated by id), and the parts
//! delivered add up exactly to the counter's travel between the first and the last saved
//! baseline.

use std::{
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use firmware_config::{DataType, RegisterKind, WordOrder};
use gateway::demo::receiver::Receiver;
use protocols::{
    modbus::{codec::encode_registers, server::Registers},
    model::Value,
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

const KILLS: usize = 20;

fn set_total(registers: &Registers, total: u32) {
    registers.set_words(
        RegisterKind::Holding,
        0,
        &encode_registers(DataType::U32, WordOrder::Abcd, &Value::U64(total.into())),
    );
}

/// The counter baseline the gateway has committed, if any.
fn saved_baseline(buffer: &std::path::Path) -> Option<u64> {
    let conn =
        rusqlite::Connection::open_with_flags(buffer, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .ok()?;
    let state: String = conn
        .query_row(
            "SELECT state FROM rule_state WHERE rule = 'counter-press'",
            [],
            |r| r.get(0),
        )
        .ok()?;
    serde_json::from_str::<serde_json::Value>(&state).ok()?["total"].as_u64()
}

/// Waits (bounded) until the committed baseline is `total`.
async fn until_saved(buffer: &std::path::Path, total: u32) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while saved_baseline(buffer) != Some(u64::from(total)) {
        assert!(
            Instant::now() < deadline,
            "the gateway saved no baseline of {total}: {:?}",
            saved_baseline(buffer)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn start(config: &std::path::Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_causeway"))
        .args(["run", "-c"])
        .arg(config)
        .env("CAUSEWAY_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("causeway starts")
}

/// What a crash test runs against: a receiver (its CA in `dir/ca.pem`) and a PLC serving
/// `registers`, both stopped by `cancel`.
struct Peers {
    receiver: Receiver,
    registers: Registers,
    plc: std::net::SocketAddr,
    tasks: TaskTracker,
    cancel: CancellationToken,
}

async fn peers(dir: &std::path::Path) -> Peers {
    let tasks = TaskTracker::new();
    let cancel = CancellationToken::new();
    let receiver = Receiver::start(&tasks, cancel.clone()).await.unwrap();
    std::fs::write(dir.join("ca.pem"), receiver.ca_pem()).unwrap();
    let registers = Registers::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let plc = listener.local_addr().unwrap();
    tokio::spawn(protocols::modbus::server::serve(
        listener,
        registers.clone(),
        cancel.clone(),
    ));
    Peers {
        receiver,
        registers,
        plc,
        tasks,
        cancel,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_at_random_moments_loses_no_accepted_event_and_no_part() {
    let dir = tempfile::tempdir().unwrap();
    let Peers {
        receiver,
        registers,
        plc,
        tasks,
        cancel,
    } = peers(dir.path()).await;
    let start_total: u32 = u32::MAX - 1_500; // rolls over during the run
    let mut total = start_total;
    set_total(&registers, total);

    let config = dir.path().join("causeway.toml");
    std::fs::write(
        &config,
        format!(
            r#"
gateway_id = "crash"
shutdown_grace = "20s"
[buffer]
path = "buffer.db"
[[source]]
name = "press"
kind = "modbus-tcp"
address = "{plc}"
poll = "20ms"
timeout = "500ms"
tags = [ {{ name = "total", register = "holding:0", type = "u32" }} ]
[[rule]]
kind = "counter"
total = "press.total"
interval = "100ms"
max_rate = 2000.0
[[sink]]
name = "erp"
kind = "https"
url = "{url}"
ca_file = "ca.pem"
routes = ["*"]
batch_size = 7
retry_initial = "20ms"
retry_max = "200ms"
# The scripted refusals can come five in a row: a breaker open for its default 30 s would
# outlast the shutdown grace, and the last events would wait for the next start.
breaker_open = "1s"
"#,
            url = receiver.url()
        ),
    )
    .unwrap();

    let deadline = Instant::now() + Duration::from_secs(120);
    let buffer = dir.path().join("buffer.db");
    let mut child = start(&config);
    // The first run reads (and saves) the starting value before anything is made.
    until_saved(&buffer, total).await;
    let mut rng = fastrand::Rng::with_seed(6);
    for kill in 0..KILLS {
        assert!(
            Instant::now() < deadline,
            "the suite runs within its time bound"
        );
        // The machine makes parts while the gateway runs; the receiver refuses now and then.
        let run_for = Duration::from_millis(rng.u64(100..700));
        let until = Instant::now() + run_for;
        while Instant::now() < until {
            total = total.wrapping_add(rng.u32(0..20));
            set_total(&registers, total);
            if rng.u8(0..20) == 0 {
                receiver.script(&[503, 500]);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        child.kill().expect("SIGKILL");
        child.wait().unwrap();
        // Parts made while it is down are counted after the restart.
        if kill % 3 == 0 {
            total = total.wrapping_add(rng.u32(0..200));
            set_total(&registers, total);
        }
        child = start(&config);
    }
    // The last run makes the last parts; once it has read and saved the final value itself
    // (so its signal handler is long installed), it is stopped gracefully.
    total = total.wrapping_add(7);
    set_total(&registers, total);
    until_saved(&buffer, total).await;
    let term = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    let status = child.wait().unwrap();
    assert!(status.success(), "graceful stop: {status:?}");

    // Every event still in the buffer would be an accepted event not delivered.
    let buffer = rusqlite::Connection::open(dir.path().join("buffer.db")).unwrap();
    let left: i64 = buffer
        .query_row("SELECT COUNT(*) FROM events", [], |r| r.get(0))
        .unwrap();
    let dead: i64 = buffer
        .query_row("SELECT COUNT(*) FROM dead_letters", [], |r| r.get(0))
        .unwrap();
    let dropped: i64 = buffer
        .query_row("SELECT COALESCE(SUM(count), 0) FROM drops", [], |r| {
            r.get(0)
        })
        .unwrap();
    let state: String = buffer
        .query_row(
            "SELECT state FROM rule_state WHERE rule = 'counter-press'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    let last_baseline = serde_json::from_str::<serde_json::Value>(&state).unwrap()["total"]
        .as_u64()
        .unwrap();
    assert_eq!(
        (left, dead, dropped),
        (0, 0, 0),
        "all delivered, none refused or dropped"
    );
    assert_eq!(
        last_baseline,
        u64::from(total),
        "the last baseline is the final reading"
    );

    let events = receiver.events_since(0);
    let delivered: u64 = events
        .iter()
        .filter(|e| e["type"] == "production.count")
        .map(|e| e["data"]["total"].as_u64().unwrap())
        .sum();
    let travel = u64::from(total.wrapping_sub(start_total));
    let anomalies = events
        .iter()
        .filter(|e| !e["data"]["anomaly"].is_null())
        .count();
    eprintln!(
        "kill -9 suite: {KILLS} kills, {} events delivered (unique ids), {} duplicates seen, {} requests, parts delivered {delivered}, counter travel {travel}, anomalies {anomalies}",
        receiver.unique(),
        receiver.duplicates(),
        receiver.requests().len()
    );
    assert_eq!(
        delivered, travel,
        "every part once, through {KILLS} kills and a rollover"
    );
    assert_eq!(anomalies, 0, "a rollover and restarts are no anomaly");
    cancel.cancel();
    tasks.close();
    tasks.wait().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_between_delivery_and_the_cursor_update_redelivers_the_same_ids() {
    let dir = tempfile::tempdir().unwrap();
    let Peers {
        receiver,
        registers,
        plc,
        tasks,
        cancel,
    } = peers(dir.path()).await;
    registers.set_words(RegisterKind::Holding, 0, &[1]);
    let config = dir.path().join("causeway.toml");
    std::fs::write(
        &config,
        format!(
            r#"
gateway_id = "crash"
[buffer]
path = "buffer.db"
[[source]]
name = "press"
kind = "modbus-tcp"
address = "{plc}"
poll = "20ms"
tags = [ {{ name = "state", register = "holding:0", type = "u16" }} ]
[[rule]]
kind = "state"
tag = "press.state"
states = {{ 0 = "idle", 1 = "running", 2 = "down" }}
[[sink]]
name = "erp"
kind = "https"
url = "{url}"
ca_file = "ca.pem"
routes = ["*"]
timeout = "1m"
retry_initial = "20ms"
retry_max = "200ms"
# The scripted refusals can come five in a row: a breaker open for its default 30 s would
# outlast the shutdown grace, and the last events would wait for the next start.
breaker_open = "1s"
"#,
            url = receiver.url()
        ),
    )
    .unwrap();
    // The receiver takes the request and keeps its answer back: the gateway is killed after
    // the delivery and before its cursor moves.
    receiver.answer_after(Some(Duration::from_secs(60)));
    let mut child = start(&config);
    let deadline = Instant::now() + Duration::from_secs(30);
    while receiver.unique() == 0 {
        assert!(Instant::now() < deadline, "no delivery");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    child.kill().expect("SIGKILL");
    child.wait().unwrap();
    let first = receiver.requests()[0].clone();
    assert!(!first.ids.is_empty());

    receiver.answer_after(None);
    let mut child = start(&config);
    while receiver.duplicates() < first.ids.len() {
        assert!(Instant::now() < deadline, "no redelivery");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    child.kill().expect("SIGKILL");
    child.wait().unwrap();
    let again = receiver
        .requests()
        .into_iter()
        .skip(1)
        .find(|r| r.status == 200)
        .expect("a second delivery");
    assert_eq!(
        again.ids[..first.ids.len()],
        first.ids[..],
        "the same events, the same ids"
    );
    assert_eq!(
        again.idempotency_key, first.idempotency_key,
        "the same run of events, the same key"
    );
    cancel.cancel();
    tasks.close();
    tasks.wait().await;
}
