//! Every event type the rules make validates against its published JSON Schema in docs/schemas/.

use std::{
    path::Path,
    time::{Duration, SystemTime},
};

use gateway::normalize::{Normalizer, Output};
use protocols::model::{Sample, SampleBatch, Value};

const CONFIG: &str = r#"
gateway_id = "plant1-line3"
[[source]]
name = "press1"
kind = "modbus-tcp"
address = "127.0.0.1:502"
tags = [
  { name = "total", register = "holding:0", type = "u32" },
  { name = "reject", register = "holding:2", type = "u16" },
  { name = "state", register = "holding:3" },
  { name = "reason", register = "holding:4" },
  { name = "force", register = "input:0", type = "f32" },
  { name = "done", register = "coil:0" },
  { name = "order", register = "holding:10", type = "string", length = 4 },
]
[[rule]]
kind = "counter"
total = "press1.total"
reject = "press1.reject"
order = "press1.order"
line = "line3"
interval = "1s"
[[rule]]
kind = "state"
tag = "press1.state"
reason = "press1.reason"
states = { 0 = "idle", 1 = "running" }
[[rule]]
kind = "measurement"
characteristic = "press-force"
tag = "press1.force"
trigger = "press1.done"
lsl = 40.0
usl = 55.0
unit = "kN"
[[rule]]
kind = "telemetry"
tags = ["press1.f*", "press1.state"]
deadband = 0.5
[[sink]]
name = "out"
kind = "stdout"
routes = ["*"]
"#;

fn batch(samples: Vec<Sample>) -> SampleBatch {
    SampleBatch {
        source: "press1".into(),
        samples,
    }
}

fn good(tag: &str, value: Value, at: SystemTime) -> Sample {
    Sample::good(format!("press1.{tag}").into(), value, at)
}

#[test]
fn events_of_every_type_match_their_published_schema() {
    let config = firmware_config::load("t.toml", CONFIG).unwrap();
    let mut n = Normalizer::new(&config, &[]);
    let mut out = Output::default();
    let t = SystemTime::now();
    let poll = |total: u64, state: u64, force: f64, done: bool| {
        vec![
            good("total", Value::U64(total), t),
            good("reject", Value::U64(total / 10), t),
            good("state", Value::U64(state), t),
            good("reason", Value::U64(3), t),
            good("force", Value::F64(force), t),
            good("done", Value::Bool(done), t),
            good("order", Value::Str("PO-1".into()), t),
        ]
    };
    n.on_batch(&batch(poll(10, 1, 47.0, false)), &mut out);
    n.on_batch(&batch(poll(25, 0, 47.0, true)), &mut out);
    n.on_batch(&batch(poll(26, 7, 61.0, false)), &mut out);
    let unread = vec![
        Sample::bad("press1.force".into(), "timeout", t),
        good("done", Value::Bool(true), t),
    ];
    n.on_batch(&batch(unread), &mut out);
    // A reset (26 -> 0 -> 2): the interval ends at once, with the step in data.anomaly.
    n.on_batch(&batch(vec![good("total", Value::U64(0), t)]), &mut out);
    n.on_batch(&batch(vec![good("total", Value::U64(2), t)]), &mut out);
    let later = t + Duration::from_secs(2);
    n.on_tick(
        later,
        std::time::Instant::now() + Duration::from_secs(2),
        false,
        &mut out,
    );

    let mut seen = std::collections::BTreeMap::new();
    for event in &out.events {
        assert_matches_schema(event);
        *seen.entry(event.event_type.clone()).or_insert(0) += 1;
    }
    assert_eq!(
        seen.get("production.count"),
        Some(&1),
        "the reset ended the interval at once"
    );
    let anomalies: Vec<_> = out
        .events
        .iter()
        .filter_map(|e| e.data_json()["anomaly"].as_array().cloned())
        .collect();
    assert_eq!(anomalies.len(), 1, "one event carries the decided step");
    assert_eq!(
        seen.get("production.state"),
        Some(&3),
        "running, idle, unknown"
    );
    assert_eq!(
        seen.get("quality.measurement"),
        Some(&2),
        "one measured, one unreadable"
    );
    // force and state first seen; state 1 -> 0 (force unchanged); state 0 -> 7 with force
    // 47 -> 61; force unreadable (with its reason); the reset batches carry neither. All in
    // one output (one commit): one event.
    assert_eq!(seen.get("telemetry.sample"), Some(&1));
    let samples: Vec<serde_json::Value> = out
        .events
        .iter()
        .filter(|e| e.event_type == "telemetry.sample")
        .flat_map(|e| e.data_json()["samples"].as_array().unwrap().clone())
        .collect();
    assert_eq!(samples.len(), 6, "{samples:#?}");
    assert_eq!(samples[5]["quality"], "bad");
    assert_eq!(samples[5]["reason"], "timeout");
    assert!(samples[5]["value"].is_null());
}

#[test]
fn the_schemas_reject_what_they_should() {
    let schemas = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/schemas");
    let schema: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(schemas.join("quality.measurement.json")).unwrap(),
    )
    .unwrap();
    let validator = jsonschema::validator_for(&schema).unwrap();
    let bad = serde_json::json!({
        "specversion": "1.0", "id": "not-a-uuid", "source": "causeway://g/m", "type": "quality.measurement",
        "time": "2026-01-01T00:00:00Z", "subject": "x", "datacontenttype": "application/json",
        "data": { "characteristic": "x", "machine": "m", "value": 1.0, "unit": null, "lsl": null,
                  "nominal": null, "usl": null, "verdict": "maybe", "reason": null }
    });
    assert_eq!(
        validator.iter_errors(&bad).count(),
        2,
        "a bad id and an unknown verdict"
    );
    let schema: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(schemas.join("telemetry.sample.json")).unwrap(),
    )
    .unwrap();
    let validator = jsonschema::validator_for(&schema).unwrap();
    let bad = serde_json::json!({
        "specversion": "1.0", "id": "0190a5f0-0000-7000-8000-000000000000", "source": "causeway://g/m",
        "type": "telemetry.sample", "time": "2026-01-01T00:00:00Z", "subject": "t",
        "datacontenttype": "application/json",
        "data": { "machine": "m", "samples": [
            { "tag": "press1.force", "value": 1.0, "quality": "bad", "ts": "2026-01-01T00:00:00Z" },
            { "tag": "force", "value": 1.0, "quality": "good", "ts": "2026-01-01T00:00:00Z" }
        ] }
    });
    assert_eq!(
        validator.iter_errors(&bad).count(),
        2,
        "a bad sample without its reason, a tag without its source"
    );
}

#[tokio::test]
async fn the_buffer_reset_event_matches_its_published_schema() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("b.db");
    std::fs::write(&path, b"not a database at all, just some bytes").unwrap();
    let (store, writer) = gateway::store::Store::open(gateway::store::StoreOptions {
        gateway_id: "plant1".into(),
        ..gateway::store::StoreOptions::new(path, &["erp"])
    })
    .unwrap();
    let reader = store.reader().unwrap();
    let fetched = reader
        .fetch(
            "erp",
            0,
            &["production.*".to_owned(), "gateway.*".to_owned()],
            10,
        )
        .await
        .unwrap();
    assert_eq!(fetched.events.len(), 1);
    let json: serde_json::Value = serde_json::from_str(&fetched.events[0].payload).unwrap();
    let schemas = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/schemas");
    let schema: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(schemas.join("gateway.buffer_reset.json")).unwrap(),
    )
    .unwrap();
    let validator = jsonschema::validator_for(&schema).unwrap();
    let errors: Vec<String> = validator
        .iter_errors(&json)
        .map(|e| e.to_string())
        .collect();
    assert!(errors.is_empty(), "{errors:#?}\n{json:#}");
    drop((store, reader));
    writer.join();
}

/// Panics with the errors unless `event` validates against its schema.
fn assert_matches_schema(event: &gateway::event::CloudEvent) {
    let schemas = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/schemas");
    let json = serde_json::to_value(event).unwrap();
    let path = schemas.join(format!("{}.json", event.event_type));
    let schema: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let validator = jsonschema::validator_for(&schema).unwrap();
    let errors: Vec<String> = validator
        .iter_errors(&json)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    assert!(
        errors.is_empty(),
        "{} does not match {}: {errors:#?}\n{json:#}",
        event.event_type,
        path.display()
    );
}

#[test]
fn the_sample_events_check_renders_with_match_their_schemas() {
    let samples = gateway::sinks::samples::sample_events("plant1-line3", SystemTime::now());
    for event in &samples {
        assert_matches_schema(event);
    }
    let types: Vec<&str> = samples.iter().map(|e| e.event_type.as_str()).collect();
    let schemas: Vec<String> =
        std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/schemas"))
            .unwrap()
            .map(|f| {
                f.unwrap()
                    .file_name()
                    .to_string_lossy()
                    .trim_end_matches(".json")
                    .to_owned()
            })
            .collect();
    for schema in &schemas {
        assert!(types.contains(&schema.as_str()), "no sample of {schema}");
    }
}
