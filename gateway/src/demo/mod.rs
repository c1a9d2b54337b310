//! Demo and test equipment, apart from the runtime: the simulated press line
//! ([`simulate`]), the local HTTPS receiver standing in for an ERP or QMS ([`receiver`]), and
//! `causeway demo` itself (this module): the simulated line, the real pipeline with a temporary
//! buffer, and the receiver refusing requests for a few seconds midway. It prints each event the
//! receiver gets on one line, and ends with exactly one summary line.

use std::{collections::BTreeMap, fmt, io::Write, time::Duration};

use tokio::{net::TcpListener, time::Instant};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::topology;

pub mod receiver;
pub mod simulate;

use receiver::Receiver;

/// Why the demo could not run.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// Temporary files or sockets.
    #[error("demo setup: {0}")]
    Io(#[from] std::io::Error),
    /// The receiver.
    #[error(transparent)]
    Receiver(#[from] receiver::ReceiverError),
    /// The embedded config did not validate (a bug in this build).
    #[error("the demo's embedded config is invalid:\n{0}")]
    Config(String),
    /// The simulated OPC UA server.
    #[error("demo OPC UA server: {0}")]
    OpcUa(String),
    /// The pipeline did not start.
    #[error(transparent)]
    Start(#[from] topology::StartError),
}

/// What the demo delivered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DemoSummary {
    /// Unique events the receiver got.
    pub delivered: usize,
    /// Of those, per type.
    pub by_type: BTreeMap<String, usize>,
    /// Events the store accepted.
    pub accepted: u64,
    /// Accepted events the receiver never got.
    pub lost: u64,
    /// Repeated deliveries the receiver deduplicated by id.
    pub duplicates: usize,
    /// Requests the receiver refused during the outage.
    pub refused: usize,
}

impl fmt::Display for DemoSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = |t: &str| self.by_type.get(t).copied().unwrap_or(0);
        write!(
            f,
            "demo: delivered {} events (production.count={}, production.state={}, quality.measurement={}), lost {}",
            self.delivered,
            n("production.count"),
            n("production.state"),
            n("quality.measurement"),
            self.lost
        )
    }
}

/// One line for a received event.
pub fn describe(event: &serde_json::Value) -> String {
    let s = |v: &serde_json::Value| {
        v.as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| v.to_string())
    };
    let d = &event["data"];
    let time = event["time"]
        .as_str()
        .and_then(|t| t.get(11..23))
        .unwrap_or("")
        .to_owned();
    let kind = s(&event["type"]);
    let detail = match kind.as_str() {
        "production.count" => format!(
            "total={} good={} reject={} order={}",
            d["total"],
            d["good"],
            d["reject"],
            s(&d["order"])
        ),
        "production.state" => match d["previous_state"].as_str() {
            Some(prev) => format!(
                "{prev} -> {} after {:.1}s{}",
                s(&d["state"]),
                d["previous_duration_s"].as_f64().unwrap_or_default(),
                d["reason_code"]
                    .as_i64()
                    .filter(|r| *r != 0)
                    .map(|r| format!(" (reason {r})"))
                    .unwrap_or_default()
            ),
            None => format!("now {}", s(&d["state"])),
        },
        "quality.measurement" => format!(
            "{} {} {}",
            d["value"],
            s(&d["unit"]),
            s(&d["verdict"]).to_uppercase()
        ),
        _ => d.to_string(),
    };
    format!("{time} {kind:<20} {:<12} {detail}", s(&event["subject"]))
}

/// Runs the demo for `duration`, printing to `out`.
///
/// # Errors
/// Setup failed (sockets, temporary files, certificates).
pub async fn run(
    duration: Duration,
    out: &mut (dyn Write + Send),
) -> Result<DemoSummary, DemoError> {
    let dir = tempfile::tempdir()?;
    let tasks = TaskTracker::new();
    let cancel = CancellationToken::new();

    let plc = TcpListener::bind("127.0.0.1:0").await?;
    let plc_addr = plc.local_addr()?;
    let ua = simulate::spawn_opcua(
        TcpListener::bind("127.0.0.1:0").await?,
        &dir.path().join("simulator-pki"),
    )
    .map_err(DemoError::OpcUa)?;
    let ua_endpoint = ua.endpoint();
    let force_node = ua.node(simulate::FORCE_VARIABLE);
    let cycle_node = ua.node(simulate::CYCLE_VARIABLE);
    simulate::spawn(plc, Some(ua), &tasks, cancel.clone());
    let receiver = Receiver::start(&tasks, cancel.clone()).await?;
    let ca_file = dir.path().join("demo-ca.pem");
    std::fs::write(&ca_file, receiver.ca_pem())?;
    let buffer = dir.path().join("buffer.db");

    let text = simulate::demo_config(
        &plc_addr.to_string(),
        (&ua_endpoint, &force_node, &cycle_node),
        &receiver.url(),
        &ca_file.display().to_string(),
        &buffer.display().to_string(),
    );
    let config = firmware_config::load("demo.toml", &text)
        .map_err(|report| DemoError::Config(report.render(false)))?;
    let running = topology::start(&config, dir.path())?;
    writeln!(
        out,
        "demo: press line simulated on modbus-tcp {plc_addr} and opcua {ua_endpoint}; events go to {} (TLS, CA generated at start)",
        receiver.url()
    )?;
    writeln!(
        out,
        "demo: buffer {}; running for {}",
        buffer.display(),
        humantime::format_duration(duration)
    )?;

    let outage_at = duration.mul_f64(0.35);
    let outage_for = duration
        .mul_f64(0.2)
        .clamp(Duration::from_secs(2), Duration::from_secs(8))
        .min(duration.mul_f64(0.4));
    let started = Instant::now();
    let mut printed = 0;
    let mut outage = false;
    let print_new = |out: &mut (dyn Write + Send), printed: &mut usize| -> std::io::Result<()> {
        for event in receiver.events_since(*printed) {
            writeln!(out, "  {}", describe(&event))?;
            *printed += 1;
        }
        Ok(())
    };
    while started.elapsed() < duration {
        tokio::time::sleep(Duration::from_millis(100)).await;
        print_new(out, &mut printed)?;
        let elapsed = started.elapsed();
        let should_refuse = elapsed >= outage_at && elapsed < outage_at + outage_for;
        if should_refuse && !outage {
            receiver.set_outage(true);
            outage = true;
            writeln!(
                out,
                "demo: receiver refuses every request (503) for {}: events are buffered",
                humantime::format_duration(outage_for)
            )?;
        } else if outage && !should_refuse {
            receiver.set_outage(false);
            outage = false;
            let accepted = running
                .store()
                .stats()
                .appended
                .load(std::sync::atomic::Ordering::Relaxed);
            let waiting = accepted.saturating_sub(receiver.unique() as u64);
            writeln!(
                out,
                "demo: receiver accepts again; {waiting} buffered events are being delivered"
            )?;
        }
    }
    receiver.set_outage(false);
    writeln!(out, "demo: stopping: sources first, then the buffer drains")?;
    let stats = running.store().shared_stats();
    let drained = running.shutdown().await;
    print_new(out, &mut printed)?;
    let accepted = stats.appended.load(std::sync::atomic::Ordering::Relaxed);
    cancel.cancel();
    tasks.close();
    tasks.wait().await;

    let received = receiver.events_since(0);
    let mut by_type = BTreeMap::new();
    for event in &received {
        *by_type
            .entry(event["type"].as_str().unwrap_or("?").to_owned())
            .or_insert(0) += 1;
    }
    let refused = receiver
        .requests()
        .iter()
        .filter(|r| r.status == 503)
        .count();
    let summary = DemoSummary {
        delivered: received.len(),
        by_type,
        accepted,
        lost: accepted.saturating_sub(received.len() as u64),
        duplicates: receiver.duplicates(),
        refused,
    };
    if drained == topology::Drained::Deadline {
        writeln!(out, "demo: the buffer did not drain before the deadline")?;
    }
    writeln!(
        out,
        "demo: {} requests refused during the outage; {} repeated deliveries deduplicated by event id",
        summary.refused, summary.duplicates
    )?;
    writeln!(out, "{summary}")?;
    Ok(summary)
}
