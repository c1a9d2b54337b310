//! Helpers for the integration tests: a real Modbus TCP server, the real HTTPS receiver, and a
//! config wiring them to the real pipeline. Everything binds 127.0.0.1 on ephemeral ports, and
//! every wait is bounded.

use std::{future::Future, path::PathBuf, time::Duration};

use firmware_config::{DataType, RegisterKind, ValidatedConfig, WordOrder};
use gateway::demo::receiver::Receiver;
use protocols::{
    modbus::{codec::encode_registers, server::Registers},
    model::Value,
};
use tokio::net::TcpListener;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

/// A PLC: a Modbus TCP server over a register map.
#[derive(Debug)]
pub struct Plc {
    /// `127.0.0.1:PORT`.
    pub address: String,
    /// What it serves.
    pub registers: Registers,
    /// Stops it (and closes its connections).
    pub cancel: CancellationToken,
}

impl Plc {
    /// Starts on an ephemeral port with a press's registers at zero.
    pub async fn start() -> Plc {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let address = listener.local_addr().expect("local addr").to_string();
        let registers = Registers::default();
        registers.set_words(RegisterKind::Holding, 0, &[0; 8]);
        registers.set_words(RegisterKind::Input, 0, &[0; 2]);
        registers.set_bit(RegisterKind::Coil, 0, false);
        Plc::serve(listener, address, registers).await
    }

    async fn serve(listener: TcpListener, address: String, registers: Registers) -> Plc {
        let cancel = CancellationToken::new();
        tokio::spawn(protocols::modbus::server::serve(
            listener,
            registers.clone(),
            cancel.clone(),
        ));
        Plc {
            address,
            registers,
            cancel,
        }
    }

    /// Stops serving; connections drop.
    pub fn vanish(&self) {
        self.cancel.cancel();
    }

    /// Serves the same registers on the same address again.
    pub async fn come_back(&self) -> Plc {
        // During the outage the gateway's reconnects (or another test) may hold the port for
        // a moment: bind again within a bound.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let listener = loop {
            match TcpListener::bind(&self.address).await {
                Ok(listener) => break listener,
                Err(error) => {
                    assert!(
                        tokio::time::Instant::now() < deadline,
                        "{} stayed taken: {error}",
                        self.address
                    );
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        };
        Plc::serve(listener, self.address.clone(), self.registers.clone()).await
    }

    /// Sets the parts counter (holding:0, u32) and the reject counter (holding:2, u16).
    pub fn set_counts(&self, total: u32, rejects: u16) {
        self.registers.set_words(
            RegisterKind::Holding,
            0,
            &encode_registers(DataType::U32, WordOrder::Abcd, &Value::U64(total.into())),
        );
        self.registers
            .set_words(RegisterKind::Holding, 2, &[rejects]);
    }

    /// Waits (bounded) until the gateway has polled the device twice since the call: whatever
    /// was set before it has been read. The site's config reads three requests per poll.
    pub async fn polled(&self) {
        let from = self.registers.reads();
        let registers = self.registers.clone();
        eventually(Duration::from_secs(20), "two polls of the device", || {
            let registers = registers.clone();
            async move { registers.reads() >= from + 6 }
        })
        .await;
    }

    /// Sets the state code (holding:3).
    pub fn set_state(&self, code: u16) {
        self.registers.set_words(RegisterKind::Holding, 3, &[code]);
    }

    /// Sets the force (input:0, f32) and the cycle-done coil (coil:0).
    pub fn set_force(&self, force: f64, done: bool) {
        self.registers.set_words(
            RegisterKind::Input,
            0,
            &encode_registers(DataType::F32, WordOrder::Abcd, &Value::F64(force)),
        );
        self.registers.set_bit(RegisterKind::Coil, 0, done);
    }
}

/// The receiver, its CA on disk, a temporary folder for the buffer and files.
#[derive(Debug)]
pub struct Site {
    /// Temporary folder (buffer, CA file, token file).
    pub dir: tempfile::TempDir,
    /// The ERP stand-in.
    pub receiver: Receiver,
    /// Stops the receiver.
    pub cancel: CancellationToken,
    tasks: TaskTracker,
}

impl Site {
    /// Starts a receiver and writes its CA and a bearer token into a fresh folder.
    pub async fn start() -> Site {
        let dir = tempfile::tempdir().expect("temp dir");
        let tasks = TaskTracker::new();
        let cancel = CancellationToken::new();
        let receiver = Receiver::start(&tasks, cancel.clone())
            .await
            .expect("receiver starts");
        std::fs::write(dir.path().join("ca.pem"), receiver.ca_pem()).expect("write CA");
        std::fs::write(dir.path().join("erp.token"), "t0ken\n").expect("write token");
        Site {
            dir,
            receiver,
            cancel,
            tasks,
        }
    }

    /// Starts another receiver (a QMS beside the ERP) and writes its CA to `<name>-ca.pem`.
    pub async fn another_receiver(&self, name: &str) -> Receiver {
        let receiver = Receiver::start(&self.tasks, self.cancel.clone())
            .await
            .expect("receiver starts");
        std::fs::write(
            self.dir.path().join(format!("{name}-ca.pem")),
            receiver.ca_pem(),
        )
        .expect("write CA");
        receiver
    }

    /// The buffer file.
    pub fn buffer(&self) -> PathBuf {
        self.dir.path().join("buffer.db")
    }

    /// A config reading `plc` and sending everything to the receiver; `extra` is appended.
    pub fn config(&self, plc: &str, extra: &str) -> ValidatedConfig {
        let text = format!(
            r#"
gateway_id = "it"
shutdown_grace = "5s"
[buffer]
path = "buffer.db"
[[source]]
name = "press"
kind = "modbus-tcp"
address = "{plc}"
poll = "20ms"
timeout = "500ms"
tags = [
  {{ name = "total", register = "holding:0", type = "u32" }},
  {{ name = "reject", register = "holding:2", type = "u16" }},
  {{ name = "state", register = "holding:3", type = "u16" }},
  {{ name = "force", register = "input:0", type = "f32" }},
  {{ name = "done", register = "coil:0" }},
]
[[rule]]
kind = "counter"
total = "press.total"
reject = "press.reject"
interval = "200ms"
[[rule]]
kind = "state"
tag = "press.state"
states = {{ 0 = "idle", 1 = "running", 2 = "down" }}
[[rule]]
kind = "measurement"
characteristic = "force"
tag = "press.force"
trigger = "press.done"
lsl = 40.0
usl = 55.0
[[sink]]
name = "erp"
kind = "https"
url = "{url}"
ca_file = "ca.pem"
auth = {{ bearer_file = "erp.token" }}
routes = ["*"]
retry_initial = "50ms"
retry_max = "300ms"
{extra}
"#,
            url = self.receiver.url()
        );
        firmware_config::load("it.toml", &text)
            .unwrap_or_else(|report| panic!("{}", report.render(false)))
    }

    /// Opens the buffer file directly, to look at what is in it between runs.
    pub fn open_buffer(&self) -> (gateway::store::Store, gateway::store::WriterThread) {
        let options = gateway::store::StoreOptions {
            gateway_id: "it".into(),
            max_bytes: 1 << 30,
            max_batch: 16,
            ..gateway::store::StoreOptions::new(self.buffer(), &["erp"])
        };
        gateway::store::Store::open(options).expect("the buffer opens")
    }

    /// Stops the receiver.
    pub async fn stop(self) {
        self.cancel.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }
}

/// Polls `check` every 20 ms until it holds; panics with `what` after `limit`.
pub async fn eventually<F, Fut>(limit: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < deadline {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out after {limit:?} waiting for: {what}");
}

/// Sum of a numeric field over received events of one type.
pub fn sum(events: &[serde_json::Value], event_type: &str, field: &str) -> u64 {
    events
        .iter()
        .filter(|e| e["type"] == event_type)
        .filter_map(|e| e["data"][field].as_u64())
        .sum()
}
