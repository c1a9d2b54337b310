//! Raw telemetry end to end (issue 10): Modbus TCP devices of float32 tags (ABCD) polled by the
//! gateway, forwarded by one `telemetry` rule as `telemetry.sample` events through the store
//! to an HTTPS receiver. The devices and the receiver run in a second process (the load
//! generators), so the figures are the gateway's alone.
//!
//! Prints, all within the measured window: samples delivered per second, the gateway's CPU (%
//! of one core, and CPU seconds per 10,000 samples), its RSS (now and peak), and two latencies
//! (p50/p95/p99; the receiver is polled every 2 ms, so figures are up to 2 ms late): from a
//! value changing on a device to its event arriving at the receiver (the devices change every
//! 103 % of the poll period, so the wait for the next poll is spread over the whole period), and
//! from the poll that read it (the sample's time) to the receiver: the pipeline's own.
//!
//! `cargo bench -p gateway --bench telemetry` runs scenario `a`: 1 device, 500 tags, polled and
//! changed every 100 ms (5,000 samples/s). `CAUSEWAY_BENCH_SCENARIO=b`: 20 devices of 500 tags
//! at 1 s (10,000 samples/s); `idle`: 1 device, 1 tag at 1 s (the weight at rest).
//! `CAUSEWAY_BENCH_SECONDS` (default 30) measures longer.
//! `CAUSEWAY_BENCH_PATH=measurement` forwards the same values the way a user had to before
//! telemetry rules: a measurement rule per tag, on change (one event per sample).

use std::{
    collections::HashMap,
    io::{BufRead, BufReader, Write},
    process::{Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
    },
    time::{Duration, Instant, SystemTime},
};

use gateway::{demo::receiver::Receiver, topology};
use protocols::modbus::{
    codec::encode_registers,
    server::{Registers, serve},
};

#[path = "support/measure.rs"]
mod measure;
use measure::{cpu_time, status_kib};

/// (devices, tags per device, poll and change period).
fn scenario() -> (usize, usize, Duration) {
    match std::env::var("CAUSEWAY_BENCH_SCENARIO").as_deref() {
        Ok("b") => (20, 500, Duration::from_secs(1)),
        // Next to nothing: what the gateway weighs at rest.
        Ok("idle") => (1, 1, Duration::from_secs(1)),
        _ => (1, 500, Duration::from_millis(100)),
    }
}

/// The load generators: the devices, changing every tag to `k` each period (recording when),
/// and the receiver, timing each sample's arrival against the change it carries.
fn generators() {
    let (devices, tags, period) = scenario();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let tasks = tokio_util::task::TaskTracker::new();
        let cancel = tokio_util::sync::CancellationToken::new();
        let receiver = Receiver::start(&tasks, cancel.clone()).await.unwrap();
        let ca = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(ca.path(), receiver.ca_pem()).unwrap();
        let mut banks = Vec::new();
        let mut addresses = Vec::new();
        for _ in 0..devices {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            addresses.push(listener.local_addr().unwrap().to_string());
            let registers = Registers::default();
            banks.push(registers.clone());
            tokio::spawn(serve(listener, registers, cancel.clone()));
        }
        println!(
            "{} {} {}",
            receiver.url(),
            ca.path().display(),
            addresses.join(",")
        );
        // k -> when every tag took the value k. The changes come every 103 % of the poll
        // period, so their phase against the polls sweeps the whole period: the latency from a
        // change includes the wait for the next poll, as it would on a plant.
        let changed: Arc<Mutex<HashMap<u64, Instant>>> = Arc::default();
        let marked = Arc::new(AtomicBool::new(false));
        let changes = Arc::new(AtomicU64::new(0));
        let (c, m, n) = (changed.clone(), marked.clone(), changes.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period * 103 / 100);
            let mut k = 0u64;
            loop {
                tick.tick().await;
                k += 1;
                let words: Vec<u16> = (0..tags)
                    .flat_map(|_| {
                        encode_registers(
                            firmware_config::DataType::F32,
                            firmware_config::WordOrder::Abcd,
                            &protocols::model::Value::F64(k as f64),
                        )
                    })
                    .collect();
                for bank in &banks {
                    for (i, chunk) in words.chunks(100).enumerate() {
                        bank.set_words(
                            firmware_config::RegisterKind::Holding,
                            (i * 100) as u16,
                            chunk,
                        );
                    }
                }
                c.lock().unwrap().insert(k, Instant::now());
                if m.load(Relaxed) {
                    n.fetch_add((tags * banks.len()) as u64, Relaxed);
                }
            }
        });
        // The main process says `mark` when its measurement starts and `stop` when it ends:
        // only samples arriving in between are counted.
        let stop = Arc::new(AtomicBool::new(false));
        let (s, m) = (stop.clone(), marked.clone());
        std::thread::spawn(move || {
            let mut lines = std::io::stdin().lines();
            while let Some(Ok(line)) = lines.next() {
                match line.trim() {
                    "mark" => m.store(true, Relaxed),
                    _ => break,
                }
            }
            s.store(true, Relaxed);
        });
        let mut seen = 0usize;
        let (mut from_change, mut from_poll): (Vec<f64>, Vec<f64>) = (Vec::new(), Vec::new());
        let mut samples = 0u64;
        let mut window: Option<Instant> = None;
        while !stop.load(Relaxed) {
            tokio::time::sleep(Duration::from_millis(2)).await;
            let events = receiver.events_since(seen);
            let (now, wall) = (Instant::now(), SystemTime::now());
            seen += events.len();
            if !marked.load(Relaxed) {
                continue;
            }
            window.get_or_insert(now);
            let changed = changed.lock().unwrap();
            for event in events {
                // telemetry.sample: each sample's value and read time; quality.measurement:
                // the event's value and time.
                let values: Vec<(&serde_json::Value, &serde_json::Value)> =
                    match event["data"]["samples"].as_array() {
                        Some(list) => list.iter().map(|s| (&s["value"], &s["ts"])).collect(),
                        None => vec![(&event["data"]["value"], &event["time"])],
                    };
                for (value, ts) in values {
                    let Some(k) = value.as_f64() else {
                        continue;
                    };
                    samples += 1;
                    if let Some(at) = changed.get(&(k as u64)) {
                        from_change.push(now.duration_since(*at).as_secs_f64() * 1_000.0);
                    }
                    if let Some(read) = ts.as_str().and_then(|t| humantime::parse_rfc3339(t).ok())
                        && let Ok(d) = wall.duration_since(read)
                    {
                        from_poll.push(d.as_secs_f64() * 1_000.0);
                    }
                }
            }
        }
        let secs = window.map_or(f64::NAN, |w| w.elapsed().as_secs_f64());
        let pct = |v: &mut Vec<f64>, q: f64| {
            v.sort_by(f64::total_cmp);
            v.get(((v.len() as f64 - 1.0) * q).round() as usize)
                .copied()
                .unwrap_or(f64::NAN)
        };
        println!(
            "{samples} {} {secs:.3} {:.1} {:.1} {:.1} {:.1} {:.1} {:.1}",
            changes.load(Relaxed),
            pct(&mut from_change, 0.50),
            pct(&mut from_change, 0.95),
            pct(&mut from_change, 0.99),
            pct(&mut from_poll, 0.50),
            pct(&mut from_poll, 0.95),
            pct(&mut from_poll, 0.99),
        );
        cancel.cancel();
    });
}

fn main() {
    if std::env::var_os("CAUSEWAY_BENCH_ROLE").is_some() {
        generators();
        return;
    }
    let (devices, tags, period) = scenario();
    let seconds: u64 = std::env::var("CAUSEWAY_BENCH_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30);
    let mut child = Command::new(std::env::current_exe().unwrap())
        .env("CAUSEWAY_BENCH_ROLE", "generators")
        .stdout(Stdio::piped())
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    let mut parts = line.split_whitespace();
    let (url, ca, addresses) = (
        parts.next().unwrap().to_owned(),
        parts.next().unwrap().to_owned(),
        parts.next().unwrap().to_owned(),
    );
    let poll = humantime::format_duration(period).to_string();
    let sources: Vec<String> = addresses
        .split(',')
        .enumerate()
        .map(|(d, address)| {
            let list: Vec<String> = (0..tags)
                .map(|i| format!("  {{ name = \"t{i:03}\", register = \"holding:{}\", type = \"f32\" }},", i * 2))
                .collect();
            format!(
                "[[source]]\nname = \"d{d:02}\"\nkind = \"modbus-tcp\"\naddress = \"{address}\"\npoll = \"{poll}\"\ntags = [\n{}\n]\n",
                list.join("\n")
            )
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    // Before telemetry rules, the closest a user could get: a measurement rule per tag, on
    // change (`CAUSEWAY_BENCH_PATH=measurement`).
    let rules = if std::env::var("CAUSEWAY_BENCH_PATH").as_deref() == Ok("measurement") {
        (0..devices)
            .flat_map(|d| {
                (0..tags).map(move |i| {
                    format!("[[rule]]\nkind = \"measurement\"\ncharacteristic = \"d{d:02}-t{i:03}\"\nmachine = \"d{d:02}\"\ntag = \"d{d:02}.t{i:03}\"\nusl = 1e12\n")
                })
            })
            .collect::<Vec<_>>()
            .join("\n")
    } else {
        "[[rule]]\nkind = \"telemetry\"\ntags = [\"d*\"]\n".to_owned()
    };
    let config = format!(
        "gateway_id = \"bench\"\n[buffer]\npath = \"buffer.db\"\n\n{}\n{rules}\n[[sink]]\nname = \"historian\"\nkind = \"https\"\nurl = \"{url}\"\nca_file = \"{ca}\"\nroutes = [\"telemetry.*\", \"quality.*\"]\n",
        sources.join("\n")
    );
    let config = firmware_config::load("bench.toml", &config)
        .unwrap_or_else(|r| panic!("{}", r.render(false)));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let ((cpu, elapsed), (rss, peak)) = rt.block_on(async {
        let running = topology::start(&config, dir.path()).unwrap();
        let stats = running.normalizer_stats();
        // Warm up: connections made, a few polls through.
        let warm = Instant::now();
        while stats.samples.load(std::sync::atomic::Ordering::Relaxed) < (devices * tags * 5) as u64
        {
            assert!(
                warm.elapsed() < Duration::from_secs(60),
                "no data within 60 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        writeln!(stdin, "mark").unwrap();
        let (c0, t0) = (cpu_time(), Instant::now());
        tokio::time::sleep(Duration::from_secs(seconds)).await;
        let result = ((cpu_time() - c0).as_secs_f64(), t0.elapsed().as_secs_f64());
        writeln!(stdin, "stop").unwrap();
        let rss = (status_kib("VmRSS:"), status_kib("VmHWM:"));
        running.shutdown().await;
        (result, rss)
    });
    let mut summary = String::new();
    out.read_line(&mut summary).unwrap();
    let _ = child.wait();
    let f: Vec<f64> = summary
        .split_whitespace()
        .map(|v| v.parse().unwrap_or(f64::NAN))
        .collect();
    // All counted within the measured window: the receiver's samples and the devices' changes
    // between `mark` and `stop`.
    let (samples, offered, window) = (f[0], f[1], f[2]);
    let rate = samples / window;
    println!(
        "telemetry: {devices} device(s) x {tags} f32 tags polled every {poll}: {rate:.0} samples/s delivered ({samples:.0} in {window:.1} s; {offered:.0} changes made meanwhile)"
    );
    println!(
        "telemetry: gateway CPU {:.1} % of one core ({:.3} CPU s per 10,000 samples), RSS {rss} KiB (peak {peak} KiB)",
        100.0 * cpu / elapsed,
        cpu / (samples / 10_000.0) * (window / elapsed)
    );
    println!(
        "telemetry: latency change -> receiver p50 {:.1} ms, p95 {:.1} ms, p99 {:.1} ms; poll -> receiver p50 {:.1} ms, p95 {:.1} ms, p99 {:.1} ms",
        f[3], f[4], f[5], f[6], f[7], f[8]
    );
}
