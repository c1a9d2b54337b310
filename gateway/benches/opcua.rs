//! OPC UA through the pipeline (issue 8): 1,000 monitored items, each changing every 100 ms on
//! a server in another process, subscribed at 100 ms publishing and sampling, through the
//! normalizer (10 measurement rules) into the store and a file sink. Prints samples per second
//! reaching the normalizer, the gateway process's CPU (user + system, % of one core) and its RSS.
//!
//! `cargo bench -p gateway --bench opcua` (`CAUSEWAY_BENCH_ITEMS`, default 1000;
//! `CAUSEWAY_BENCH_SECONDS`, default 30; `CAUSEWAY_BENCH_SAMPLING` and `CAUSEWAY_BENCH_PUBLISHING`, default "100ms";
//! `CAUSEWAY_BENCH_CHANGE_MS`, how often the server changes every item, default 100).

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

use gateway::topology;
use protocols::opcua::server::{ServerOptions, UaServer};

fn items() -> usize {
    std::env::var("CAUSEWAY_BENCH_ITEMS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000)
}

#[path = "support/measure.rs"]
mod measure;
use measure::{cpu_time, status_kib};

/// The server process: `items` Int32 variables, every one changed every 100 ms.
fn serve() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let n = items();
        let mut options = ServerOptions::new(dir.path().join("pki"));
        for i in 0..n {
            options = options.variable(format!("V{i}"), 0i32);
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let server = UaServer::start(&options, listener).unwrap();
        println!("{} {}", server.endpoint(), server.node("V0"));
        let names: Vec<String> = (0..n).map(|i| format!("V{i}")).collect();
        let every: u64 = std::env::var("CAUSEWAY_BENCH_CHANGE_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(100);
        let mut tick = tokio::time::interval(Duration::from_millis(every));
        let mut k = 0i32;
        let started = Instant::now();
        let mut changes = 0u64;
        loop {
            tick.tick().await;
            k = k.wrapping_add(1);
            server.set_many(
                names
                    .iter()
                    .enumerate()
                    .map(|(i, name)| (name.clone(), k.wrapping_add(i as i32).into())),
            );
            changes += n as u64;
            if k % 50 == 0 {
                eprintln!(
                    "opcua server: {:.0} changes/s",
                    changes as f64 / started.elapsed().as_secs_f64()
                );
            }
        }
    });
}

fn main() {
    if std::env::var_os("CAUSEWAY_BENCH_ROLE").is_some() {
        serve();
        return;
    }
    let seconds: u64 = std::env::var("CAUSEWAY_BENCH_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30);
    let n = items();
    let sampling = std::env::var("CAUSEWAY_BENCH_SAMPLING").unwrap_or_else(|_| "100ms".into());
    let publishing = std::env::var("CAUSEWAY_BENCH_PUBLISHING").unwrap_or_else(|_| "100ms".into());
    let change_ms: u64 = std::env::var("CAUSEWAY_BENCH_CHANGE_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let mut child = Command::new(std::env::current_exe().unwrap())
        .env("CAUSEWAY_BENCH_ROLE", "server")
        .stdout(Stdio::piped())
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let (endpoint, first) = line.trim().split_once(' ').unwrap();
    let ns = first.split(';').next().unwrap().to_owned();

    let dir = tempfile::tempdir().unwrap();
    let tags: Vec<String> = (0..n)
        .map(|i| format!("  {{ name = \"v{i}\", node = \"{ns};s=V{i}\", type = \"i32\" }},"))
        .collect();
    let rules: Vec<String> = (0..10.min(n))
        .map(|i| {
            format!(
                "[[rule]]\nkind = \"measurement\"\ncharacteristic = \"c{i}\"\nmachine = \"m\"\ntag = \"ua.v{i}\"\nusl = 1e12\n"
            )
        })
        .collect();
    let config = format!(
        "gateway_id = \"bench\"\n[buffer]\npath = \"buffer.db\"\n\n[[source]]\nname = \"ua\"\nkind = \"opcua\"\nendpoint = \"{endpoint}\"\npublishing_interval = \"{publishing}\"\nsampling_interval = \"{sampling}\"\ntags = [\n{}\n]\n\n{}\n[[sink]]\nname = \"qms\"\nkind = \"file\"\npath = \"quality.jsonl\"\nroutes = [\"quality.*\"]\n",
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
        // Warm up: the session, the subscriptions, the initial values.
        let warm = Instant::now();
        while stats.samples.load(Ordering::Relaxed) < n as u64 * 5 {
            assert!(warm.elapsed() < Duration::from_secs(60), "no data within 60 s");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
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
            "opcua: {n} items changing every {change_ms} ms, sampled every {sampling}, published every {publishing}, for {seconds} s: {:.0} samples/s through the pipeline (the server changes {} values/s), {bad} Bad",
            samples as f64 / elapsed,
            n as u64 * 1_000 / change_ms.max(1)
        );
        println!(
            "opcua: gateway CPU {:.1} % of one core, RSS {} KiB (peak {} KiB)",
            100.0 * cpu / elapsed,
            status_kib("VmRSS:"),
            status_kib("VmHWM:")
        );
        running.shutdown().await;
    });
    let _ = child.kill();
    let _ = child.wait();
}
