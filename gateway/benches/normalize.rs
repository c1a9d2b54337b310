//! Normalizer benchmark (issue 8): batches of thousands of tags through hundreds of rules, the
//! cost of finding the rules a sample feeds. Then (issue 10) normalize and store together: the
//! same batches, every value changed each round, through one telemetry rule into the SQLite
//! buffer (FULL sync), on a single-threaded runtime.
//!
//! `cargo bench -p gateway --bench normalize`

use std::time::{Instant, SystemTime};

use gateway::{
    normalize::{Normalizer, Output},
    store::{Store, StoreOptions},
};
use protocols::model::{Sample, SampleBatch, Value};

fn main() {
    // 5,000 tags on 10 sources; one state rule per 10 tags (500 rules), the rest only read.
    let sources = 10;
    let per_source = 500;
    let mut text = String::from("gateway_id = \"bench\"\n");
    for s in 0..sources {
        text.push_str(&format!(
            "[[source]]\nname = \"s{s}\"\nkind = \"modbus-tcp\"\naddress = \"127.0.0.1:502\"\ntags = [\n"
        ));
        for t in 0..per_source {
            text.push_str(&format!(
                "  {{ name = \"t{t}\", register = \"holding:{t}\" }},\n"
            ));
        }
        text.push_str("]\n");
        for t in (0..per_source).step_by(10) {
            text.push_str(&format!(
                "[[rule]]\nname = \"r{s}-{t}\"\nkind = \"state\"\nmachine = \"m{s}\"\ntag = \"s{s}.t{t}\"\nstates = {{ 0 = \"idle\", 1 = \"running\" }}\n"
            ));
        }
    }
    text.push_str("[[sink]]\nname = \"out\"\nkind = \"stdout\"\nroutes = [\"*\"]\n");
    let config = firmware_config::load("bench.toml", &text).expect("the bench config is valid");
    let mut normalizer = Normalizer::new(&config, &[]);
    let batches: Vec<SampleBatch> = (0..sources)
        .map(|s| SampleBatch {
            source: format!("s{s}").into(),
            samples: (0..per_source)
                .map(|t| {
                    Sample::good(
                        format!("s{s}.t{t}").into(),
                        Value::U64(0),
                        SystemTime::now(),
                    )
                })
                .collect(),
        })
        .collect();
    let rounds = 200;
    let started = Instant::now();
    let mut events = 0;
    for _ in 0..rounds {
        for batch in &batches {
            let mut out = Output::default();
            normalizer.on_batch(batch, &mut out);
            events += out.events.len();
        }
    }
    let secs = started.elapsed().as_secs_f64();
    let samples = rounds * sources * per_source;
    println!(
        "normalize: {samples} samples ({} tags, {} rules) in {secs:.2} s = {:.0} samples/s ({events} events)",
        sources * per_source,
        config.rules.len(),
        samples as f64 / secs
    );
    normalize_and_store(&text, sources, per_source);
}

#[path = "support/measure.rs"]
mod measure;

/// The batches through a telemetry rule over every tag into the store, one round after another.
fn normalize_and_store(text: &str, sources: usize, per_source: usize) {
    // The sources alone (the state rules dropped), and one telemetry rule over every tag.
    let sources_only: String = text
        .split("[[source]]")
        .enumerate()
        .map(|(i, part)| {
            let part = part.split("[[rule]]").next().unwrap_or_default();
            if i == 0 {
                part.to_owned()
            } else {
                format!("[[source]]{part}")
            }
        })
        .collect();
    let text = format!(
        "{sources_only}[[rule]]\nkind = \"telemetry\"\ntags = [\"s*\"]\n[[sink]]\nname = \"out\"\nkind = \"stdout\"\nroutes = [\"*\"]\n"
    );
    let config = firmware_config::load("bench.toml", &text).expect("the bench config is valid");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let (store, writer) =
            Store::open(StoreOptions::new(dir.path().join("bench.db"), &["out"])).unwrap();
        let mut normalizer = Normalizer::new(&config, &[]);
        let rounds = 100;
        let (started, cpu) = (Instant::now(), measure::cpu_time());
        let mut events = 0;
        for round in 0..rounds {
            let mut out = Output::default();
            for s in 0..sources {
                let batch = SampleBatch {
                    source: format!("s{s}").into(),
                    samples: (0..per_source)
                        .map(|t| {
                            Sample::good(
                                format!("s{s}.t{t}").into(),
                                Value::U64(round),
                                SystemTime::now(),
                            )
                        })
                        .collect(),
                };
                normalizer.on_batch(&batch, &mut out);
            }
            events += out.events.len();
            store.append(out.events, out.state).await.unwrap();
        }
        let secs = started.elapsed().as_secs_f64();
        let cpu = (measure::cpu_time() - cpu).as_secs_f64();
        let samples = rounds as usize * sources * per_source;
        println!(
            "normalize+store: {samples} samples through a telemetry rule into the buffer (FULL sync) in {secs:.2} s = {:.0} samples/s ({events} events), CPU {:.2} s ({:.0} % of one core), peak RSS {} KiB",
            samples as f64 / secs,
            cpu,
            100.0 * cpu / secs,
            measure::status_kib("VmHWM:")
        );
        drop(store);
        drop(writer);
    });
}
