//! Raw telemetry end to end (issue 10): Modbus TCP devices of float32 tags (ABCD) polled by the
//! gateway (or an OPC UA server's variables, or MQTT topics), forwarded by one `telemetry` rule
//! as `telemetry.sample` events through the store to an HTTPS receiver. The devices and the receiver run in a second process (the load
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
//! at 1 s (10,000 samples/s); `idle`: 1 device, 1 tag at 1 s (the weight at rest); `rules`: a
//! press line of 10 presses (force, strokes, state) polled every 10 ms through measurement,
//! counter and state rules; `opcua`: an OPC UA server's 500 Double variables, sampled and
//! published every 100 ms; `mqtt`: 500 topics of JSON through an MQTT broker (rumqttd, in the
//! load generators' process), each published every 103 ms with QoS 1.
//! `CAUSEWAY_BENCH_SECONDS` (default 30) measures longer; from 120 s on, the RSS is printed
//! every minute.
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
use protocols::{
    modbus::{
        codec::encode_registers,
        server::{Registers, serve},
    },
    opcua::server::{ServerOptions, UaServer},
};
use rumqttc::QoS;

#[path = "../tests/support/broker.rs"]
mod support_broker;

#[path = "support/measure.rs"]
mod measure;
use measure::{cpu_time, status_kib};

/// Where the values come from.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Modbus TCP devices of f32 tags, forwarded by a telemetry rule.
    Modbus,
    /// A press line on one Modbus device: per press a force (f32), a stroke counter (u32) and a
    /// state (u16), through measurement, counter and state rules.
    Rules,
    /// An OPC UA server's Double variables, subscribed, forwarded by a telemetry rule.
    Opcua,
    /// JSON messages through an MQTT broker, one topic per tag, by a telemetry rule.
    Mqtt,
}

/// What is measured: the source kind, devices, tags per device (presses for `Rules`), and the
/// poll (or publishing) period, which is also how often the values change (x 1.03).
#[derive(Clone, Copy)]
struct Scenario {
    kind: Kind,
    devices: usize,
    tags: usize,
    period: Duration,
}

fn scenario() -> Scenario {
    let (kind, devices, tags, period) = match std::env::var("CAUSEWAY_BENCH_SCENARIO").as_deref() {
        Ok("b") => (Kind::Modbus, 20, 500, Duration::from_secs(1)),
        // Next to nothing: what the gateway weighs at rest.
        Ok("idle") => (Kind::Modbus, 1, 1, Duration::from_secs(1)),
        Ok("rules") => (Kind::Rules, 1, PRESSES, Duration::from_millis(10)),
        Ok("opcua") => (Kind::Opcua, 1, 500, Duration::from_millis(100)),
        Ok("mqtt") => (Kind::Mqtt, 1, 500, Duration::from_millis(100)),
        _ => (Kind::Modbus, 1, 500, Duration::from_millis(100)),
    };
    Scenario {
        kind,
        devices,
        tags,
        period,
    }
}

/// Presses on the line of the `rules` scenario.
const PRESSES: usize = 10;

/// Registers per press in the `rules` scenario: force (f32), strokes (u32), state (u16).
const PRESS_WORDS: usize = 5;

/// The words of one Modbus device after change `k`.
fn words(s: Scenario, k: u64) -> Vec<u16> {
    let encode = |t, v: f64| {
        encode_registers(
            t,
            firmware_config::WordOrder::Abcd,
            &protocols::model::Value::F64(v),
        )
    };
    match s.kind {
        Kind::Rules => (0..s.tags)
            .flat_map(|_| {
                let mut w = encode(firmware_config::DataType::F32, k as f64);
                w.extend(encode(firmware_config::DataType::U32, k as f64));
                // Running, with a stop every 100 strokes.
                w.extend(encode(
                    firmware_config::DataType::U16,
                    if k % 100 < 90 { 1.0 } else { 2.0 },
                ));
                w
            })
            .collect(),
        _ => (0..s.tags)
            .flat_map(|_| encode(firmware_config::DataType::F32, k as f64))
            .collect(),
    }
}

/// Sets every tag of the scenario's devices to change `k`.
enum Devices {
    Modbus(Vec<Registers>),
    Opcua(UaServer, Vec<String>),
    Mqtt(rumqttc::AsyncClient),
}

impl Devices {
    async fn change(&self, s: Scenario, k: u64) {
        match self {
            Devices::Modbus(banks) => {
                let words = words(s, k);
                for bank in banks {
                    for (i, chunk) in words.chunks(100).enumerate() {
                        bank.set_words(
                            firmware_config::RegisterKind::Holding,
                            (i * 100) as u16,
                            chunk,
                        );
                    }
                }
            }
            Devices::Opcua(server, names) => {
                server.set_many(names.iter().map(|n| (n.clone(), (k as f64).into())));
            }
            Devices::Mqtt(client) => {
                for i in 0..s.tags {
                    let payload = format!(r#"{{"value":{k}}}"#);
                    if client
                        .publish(format!("bench/t{i:03}"), QoS::AtLeastOnce, false, payload)
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            }
        }
    }
}

/// The load generators: the devices (Modbus servers, an OPC UA server, or an MQTT broker and
/// a publisher), changing every tag to `k` each period (recording when), and the receiver,
/// timing each sample's arrival against the change it carries.
fn generators() {
    let s = scenario();
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
        let pki = tempfile::tempdir().unwrap();
        // How the gateway reaches the devices: Modbus addresses, the OPC UA endpoint and
        // namespace, or the broker's address.
        let (devices, reach) = match s.kind {
            Kind::Modbus | Kind::Rules => {
                let mut banks = Vec::new();
                let mut addresses = Vec::new();
                for _ in 0..s.devices {
                    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                    addresses.push(listener.local_addr().unwrap().to_string());
                    let registers = Registers::default();
                    banks.push(registers.clone());
                    tokio::spawn(serve(listener, registers, cancel.clone()));
                }
                (Devices::Modbus(banks), addresses.join(","))
            }
            Kind::Opcua => {
                let names: Vec<String> = (0..s.tags).map(|i| format!("V{i:03}")).collect();
                let mut options = ServerOptions::new(pki.path());
                for name in &names {
                    options = options.variable(name.clone(), 0f64);
                }
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                let server = UaServer::start(&options, listener).unwrap();
                let ns = server.node("V000");
                let ns = ns.split(';').next().unwrap().to_owned();
                let reach = format!("{}|{ns}", server.endpoint());
                (Devices::Opcua(server, names), reach)
            }
            Kind::Mqtt => {
                let addr = support_broker::broker();
                let mut options =
                    rumqttc::MqttOptions::new("bench-publisher", "127.0.0.1", addr.port());
                options.set_inflight(1_000);
                let (client, mut eventloop) = rumqttc::AsyncClient::new(options, 10_000);
                tokio::spawn(async move { while eventloop.poll().await.is_ok() {} });
                (Devices::Mqtt(client), addr.to_string())
            }
        };
        println!("{} {} {reach}", receiver.url(), ca.path().display());
        // k -> when every tag took the value k. The changes come every 103 % of the poll
        // period, so their phase against the polls sweeps the whole period: the latency from a
        // change includes the wait for the next poll, as it would on a plant.
        let changed: Arc<Mutex<HashMap<u64, Instant>>> = Arc::default();
        let marked = Arc::new(AtomicBool::new(false));
        let changes = Arc::new(AtomicU64::new(0));
        let (c, m, n) = (changed.clone(), marked.clone(), changes.clone());
        // Values that reach the receiver per change: every tag, or a press's force.
        let per_change = (s.tags * s.devices) as u64;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(s.period * 103 / 100);
            let mut k = 0u64;
            loop {
                tick.tick().await;
                k += 1;
                // Noted before the change is made: an MQTT publisher takes a while to send
                // 500 messages, and that is part of the latency.
                c.lock().unwrap().insert(k, Instant::now());
                devices.change(s, k).await;
                if m.load(Relaxed) {
                    n.fetch_add(per_change, Relaxed);
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
        let (mut samples, mut events_in) = (0u64, 0u64);
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
            events_in += events.len() as u64;
            for event in events {
                // telemetry.sample: each sample's value and read time; quality.measurement:
                // the event's value and time (production.count and .state carry no value).
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
            "{samples} {} {secs:.3} {:.1} {:.1} {:.1} {:.1} {:.1} {:.1} {events_in}",
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
    let s = scenario();
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
    let (url, ca, reach) = (
        parts.next().unwrap().to_owned(),
        parts.next().unwrap().to_owned(),
        parts.next().unwrap().to_owned(),
    );
    let poll = humantime::format_duration(s.period).to_string();
    let sources: Vec<String> = match s.kind {
        Kind::Modbus | Kind::Rules => reach
            .split(',')
            .enumerate()
            .map(|(d, address)| {
                let list: Vec<String> = if s.kind == Kind::Rules {
                    (0..s.tags)
                        .map(|p| {
                            let at = p * PRESS_WORDS;
                            format!(
                                "  {{ name = \"force{p}\", register = \"holding:{at}\", type = \"f32\" }},\n  {{ name = \"strokes{p}\", register = \"holding:{}\", type = \"u32\" }},\n  {{ name = \"state{p}\", register = \"holding:{}\", type = \"u16\" }},",
                                at + 2,
                                at + 4
                            )
                        })
                        .collect()
                } else {
                    (0..s.tags)
                        .map(|i| format!("  {{ name = \"t{i:03}\", register = \"holding:{}\", type = \"f32\" }},", i * 2))
                        .collect()
                };
                format!(
                    "[[source]]\nname = \"d{d:02}\"\nkind = \"modbus-tcp\"\naddress = \"{address}\"\npoll = \"{poll}\"\ntags = [\n{}\n]\n",
                    list.join("\n")
                )
            })
            .collect(),
        Kind::Opcua => {
            let (endpoint, ns) = reach.split_once('|').unwrap();
            let list: Vec<String> = (0..s.tags)
                .map(|i| format!("  {{ name = \"t{i:03}\", node = \"{ns};s=V{i:03}\", type = \"f64\" }},"))
                .collect();
            vec![format!(
                "[[source]]\nname = \"d00\"\nkind = \"opcua\"\nendpoint = \"{endpoint}\"\npublishing_interval = \"{poll}\"\nsampling_interval = \"{poll}\"\ntags = [\n{}\n]\n",
                list.join("\n")
            )]
        }
        Kind::Mqtt => {
            let list: Vec<String> = (0..s.tags)
                .map(|i| format!("  {{ name = \"t{i:03}\", topic = \"bench/t{i:03}\", value = \"/value\" }},"))
                .collect();
            vec![format!(
                "[[source]]\nname = \"d00\"\nkind = \"mqtt\"\nurl = \"mqtt://{reach}\"\ninsecure = true\ntags = [\n{}\n]\n",
                list.join("\n")
            )]
        }
    };
    let dir = tempfile::tempdir().unwrap();
    let (devices, tags) = (s.devices, s.tags);
    let rules = if s.kind == Kind::Rules {
        // A press line: strokes counted (reported every second), states, and the force of
        // every stroke against its limits.
        (0..s.tags)
            .map(|p| {
                format!(
                    "[[rule]]\nkind = \"counter\"\ntotal = \"d00.strokes{p}\"\ninterval = \"1s\"\nmachine = \"press{p}\"\n\n[[rule]]\nkind = \"state\"\ntag = \"d00.state{p}\"\nstates = {{ 1 = \"running\", 2 = \"stopped\" }}\nmachine = \"press{p}\"\n\n[[rule]]\nname = \"force{p}\"\nkind = \"measurement\"\ncharacteristic = \"force\"\ntag = \"d00.force{p}\"\nusl = 1e12\nmachine = \"press{p}\"\n"
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    } else if std::env::var("CAUSEWAY_BENCH_PATH").as_deref() == Ok("measurement") {
        // Before telemetry rules, the closest a user could get: a measurement rule per tag, on
        // change.
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
        "gateway_id = \"bench\"\n[buffer]\npath = \"buffer.db\"\n\n{}\n{rules}\n[[sink]]\nname = \"historian\"\nkind = \"https\"\nurl = \"{url}\"\nca_file = \"{ca}\"\nroutes = [\"telemetry.*\", \"quality.*\", \"production.*\"]\n",
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
        // RSS every minute of a long run: memory must stay flat under a steady load.
        let mut minute = 0;
        while t0.elapsed() < Duration::from_secs(seconds) {
            let left = Duration::from_secs(seconds).saturating_sub(t0.elapsed());
            tokio::time::sleep(left.min(Duration::from_secs(60))).await;
            minute += 1;
            if seconds >= 120 {
                println!(
                    "telemetry: RSS after {minute} min: {} KiB",
                    status_kib("VmRSS:")
                );
            }
        }
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
    let (samples, offered, window, events) = (f[0], f[1], f[2], f[9]);
    let rate = samples / window;
    let what = match s.kind {
        Kind::Modbus => format!("{devices} Modbus device(s) x {tags} f32 tags polled every {poll}"),
        Kind::Rules => format!(
            "a press line of {tags} presses (force, strokes, state) on one Modbus device polled every {poll}, measurement, counter and state rules"
        ),
        Kind::Opcua => format!(
            "an OPC UA server's {tags} Double variables, sampled and published every {poll}"
        ),
        Kind::Mqtt => {
            format!("{tags} MQTT topics of JSON, QoS 1, each published every {poll} (x 1.03)")
        }
    };
    println!(
        "telemetry: {what}: {rate:.0} values/s delivered ({samples:.0} in {window:.1} s; {offered:.0} changes made meanwhile), {:.1} events/s",
        events / window
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
