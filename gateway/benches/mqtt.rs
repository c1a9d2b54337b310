//! MQTT in (issue 9): JSON messages through a broker into the pipeline. A child process
//! publishes `CAUSEWAY_BENCH_RATE` messages a second (default 10,000) with QoS 1, spread over 100
//! topics, to a Mosquitto broker on 127.0.0.1 (a third process); the gateway, the real pipeline,
//! reads one tag per topic by JSON Pointer, with 10 measurement rules into the store and a file
//! sink. Prints the samples per second reaching the normalizer, and the gateway process's CPU and
//! RSS.
//!
//! `cargo bench -p gateway --bench mqtt` (needs `mosquitto` on the PATH or in /usr/sbin;
//! `CAUSEWAY_BENCH_SECONDS`, default 30).

use std::{
    process::{Command, Stdio},
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

use gateway::topology;

const TOPICS: usize = 100;

#[path = "support/measure.rs"]
mod measure;
use measure::{cpu_time, status_kib};

fn rate() -> u64 {
    std::env::var("CAUSEWAY_BENCH_RATE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000)
}

/// The publisher process: `rate` messages a second, QoS 1, round-robin over the topics.
fn publish(port: u16) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let mut options = rumqttc::MqttOptions::new("bench-publisher", "127.0.0.1", port);
        options.set_inflight(1_000);
        let (client, mut eventloop) = rumqttc::AsyncClient::new(options, 10_000);
        tokio::spawn(async move { while eventloop.poll().await.is_ok() {} });
        let per_tick = (rate() / 100).max(1);
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        let mut n = 0u64;
        loop {
            tick.tick().await;
            for _ in 0..per_tick {
                let topic = format!("plant/line3/m{}/telemetry", n % TOPICS as u64);
                let payload = format!(
                    r#"{{"ts":{},"metrics":{{"temp":{}.5,"n":{n}}}}}"#,
                    1_795_860_000_000u64 + n,
                    n % 90
                );
                if client
                    .publish(topic, rumqttc::QoS::AtLeastOnce, false, payload)
                    .await
                    .is_err()
                {
                    return;
                }
                n += 1;
            }
        }
    });
}

fn main() {
    if let Ok(port) = std::env::var("CAUSEWAY_BENCH_PUBLISH") {
        publish(port.parse().unwrap());
        return;
    }
    let seconds: u64 = std::env::var("CAUSEWAY_BENCH_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30);
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let conf = dir.path().join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!("listener {port} 127.0.0.1\nallow_anonymous true\nmax_inflight_messages 1000\nmax_queued_messages 100000\n"),
    )
    .unwrap();
    let mosquitto = if std::path::Path::new("/usr/sbin/mosquitto").exists() {
        "/usr/sbin/mosquitto"
    } else {
        "mosquitto"
    };
    let mut broker = Command::new(mosquitto)
        .arg("-c")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("mosquitto (apt-get install mosquitto)");
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        std::thread::sleep(Duration::from_millis(20));
    }
    let tags: Vec<String> = (0..TOPICS)
        .map(|i| {
            format!(
                "  {{ name = \"t{i}\", topic = \"plant/line3/m{i}/telemetry\", value = \"/metrics/temp\", timestamp = \"/ts\" }},"
            )
        })
        .collect();
    let rules: Vec<String> = (0..10)
        .map(|i| format!("[[rule]]\nkind = \"measurement\"\ncharacteristic = \"c{i}\"\nmachine = \"m{i}\"\ntag = \"uns.t{i}\"\nusl = 1e12\n"))
        .collect();
    let config = format!(
        "gateway_id = \"bench\"\n[buffer]\npath = \"buffer.db\"\n\n[[source]]\nname = \"uns\"\nkind = \"mqtt\"\nurl = \"mqtt://127.0.0.1:{port}\"\ninsecure = true\ntags = [\n{}\n]\n\n{}\n[[sink]]\nname = \"qms\"\nkind = \"file\"\npath = \"quality.jsonl\"\nroutes = [\"quality.*\"]\n",
        tags.join("\n"),
        rules.join("\n")
    );
    let config = firmware_config::load("bench.toml", &config)
        .unwrap_or_else(|r| panic!("{}", r.render(false)));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let running = topology::start(&config, dir.path()).unwrap();
        let stats = running.normalizer_stats();
        tokio::time::sleep(Duration::from_secs(1)).await;
        let mut publisher = Command::new(std::env::current_exe().unwrap())
            .env("CAUSEWAY_BENCH_PUBLISH", port.to_string())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        tokio::time::sleep(Duration::from_secs(3)).await;
        let (s0, b0, c0, t0) = (
            stats.samples.load(Ordering::Relaxed),
            stats.bad.load(Ordering::Relaxed),
            cpu_time(),
            Instant::now(),
        );
        tokio::time::sleep(Duration::from_secs(seconds)).await;
        let elapsed = t0.elapsed().as_secs_f64();
        let samples = stats.samples.load(Ordering::Relaxed) - s0;
        let bad = stats.bad.load(Ordering::Relaxed) - b0;
        let cpu = (cpu_time() - c0).as_secs_f64();
        println!(
            "mqtt: {} JSON messages/s published (QoS 1, {TOPICS} topics) for {seconds} s: {:.0} samples/s through the pipeline, {bad} Bad",
            rate(),
            samples as f64 / elapsed
        );
        println!(
            "mqtt: gateway CPU {:.1} % of one core, RSS {} KiB (peak {} KiB)",
            100.0 * cpu / elapsed,
            status_kib("VmRSS:"),
            status_kib("VmHWM:")
        );
        let _ = publisher.kill();
        let _ = publisher.wait();
        running.shutdown().await;
    });
    let _ = broker.kill();
    let _ = broker.wait();
}
