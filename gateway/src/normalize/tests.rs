use std::time::{Duration, SystemTime};

use firmware_config::ValidatedConfig;
use proptest::prelude::*;
use protocols::model::{Sample, SampleBatch, Value};
use serde_json::Value as Json;

use super::*;

const CONFIG: &str = r#"
gateway_id = "gw"
[[source]]
name = "press"
kind = "modbus-tcp"
address = "127.0.0.1:502"
tags = [
  { name = "total", register = "holding:0", type = "u16" },
  { name = "reject", register = "holding:1", type = "u16" },
  { name = "state", register = "holding:2" },
  { name = "reason", register = "holding:3" },
  { name = "force", register = "holding:4", type = "f32" },
  { name = "done", register = "coil:0" },
]
[[rule]]
kind = "counter"
total = "press.total"
reject = "press.reject"
interval = "1s"
[[rule]]
kind = "state"
tag = "press.state"
reason = "press.reason"
states = { 0 = "idle", 1 = "running", 2 = "down" }
[[rule]]
kind = "measurement"
characteristic = "force"
tag = "press.force"
trigger = "press.done"
lsl = 40.0
usl = 55.0
[[sink]]
name = "out"
kind = "stdout"
routes = ["*"]
"#;

fn config() -> ValidatedConfig {
    firmware_config::load("t.toml", CONFIG).unwrap()
}

fn batch(at: SystemTime, values: &[(&str, Value)]) -> SampleBatch {
    SampleBatch {
        source: "press".into(),
        samples: values
            .iter()
            .map(|(t, v)| Sample::good(format!("press.{t}").into(), v.clone(), at))
            .collect(),
    }
}

fn data(out: &Output, event_type: &str) -> Vec<Json> {
    out.events
        .iter()
        .filter(|e| e.event_type == event_type)
        .map(|e| e.data.clone())
        .collect()
}

#[test]
fn counts_are_reported_per_interval_as_deltas() {
    let t0 = SystemTime::now();
    let mut n = Normalizer::new(&config(), &[]);
    let mut out = Output::default();
    n.on_batch(
        &batch(t0, &[("total", Value::U64(100)), ("reject", Value::U64(5))]),
        &mut out,
    );
    n.on_batch(
        &batch(t0, &[("total", Value::U64(110)), ("reject", Value::U64(7))]),
        &mut out,
    );
    n.on_tick(t0 + Duration::from_millis(500), false, &mut out);
    assert!(out.events.is_empty(), "not due yet");
    n.on_tick(t0 + Duration::from_secs(2), false, &mut out);
    let counts = data(&out, "production.count");
    assert_eq!(counts.len(), 1);
    assert_eq!(
        (
            counts[0]["total"].as_u64(),
            counts[0]["good"].as_u64(),
            counts[0]["reject"].as_u64()
        ),
        (Some(10), Some(8), Some(2))
    );
    assert_eq!(out.state.last().unwrap().1["total"], 110);
    let e = &out.events[0];
    assert_eq!(
        (
            e.source.as_str(),
            e.subject.as_str(),
            e.specversion.as_str()
        ),
        ("causeway://gw/press", "press", "1.0")
    );
}

#[test]
fn a_state_change_names_the_previous_state_and_its_duration() {
    // Saved state keeps milliseconds; a whole second keeps the arithmetic exact.
    let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let mut n = Normalizer::new(&config(), &[]);
    let mut out = Output::default();
    n.on_batch(
        &batch(t0, &[("state", Value::U64(1)), ("reason", Value::U64(0))]),
        &mut out,
    );
    n.on_batch(
        &batch(t0 + Duration::from_secs(1), &[("state", Value::U64(1))]),
        &mut out,
    );
    n.on_batch(
        &batch(
            t0 + Duration::from_secs(30),
            &[("state", Value::U64(2)), ("reason", Value::U64(17))],
        ),
        &mut out,
    );
    let states = data(&out, "production.state");
    assert_eq!(states.len(), 2, "one event per change, none for a repeat");
    assert_eq!(states[0]["state"], "running");
    assert_eq!(states[0]["previous_state"], Json::Null);
    assert_eq!(states[1]["state"], "down");
    assert_eq!(states[1]["previous_state"], "running");
    assert_eq!(states[1]["previous_duration_s"].as_f64(), Some(30.0));
    assert_eq!(
        states[1]["reason_code"], 17,
        "the reason read in the same poll"
    );

    // A restart in the same state says nothing; a change is reported against the saved state.
    let mut again = Normalizer::new(&config(), &out.state);
    let mut out = Output::default();
    again.on_batch(
        &batch(t0 + Duration::from_secs(40), &[("state", Value::U64(2))]),
        &mut out,
    );
    assert!(out.events.is_empty());
    again.on_batch(
        &batch(t0 + Duration::from_secs(50), &[("state", Value::U64(9))]),
        &mut out,
    );
    let states = data(&out, "production.state");
    assert_eq!(states[0]["state"], "unknown");
    assert_eq!(states[0]["state_code"], 9);
    assert_eq!(states[0]["previous_state"], "down");
    assert_eq!(states[0]["previous_duration_s"].as_f64(), Some(20.0));
}

#[test]
fn a_measurement_is_taken_on_the_rising_edge_with_the_value_of_the_same_poll() {
    let t0 = SystemTime::now();
    let mut n = Normalizer::new(&config(), &[]);
    let mut out = Output::default();
    n.on_batch(
        &batch(
            t0,
            &[("force", Value::F64(41.0)), ("done", Value::Bool(false))],
        ),
        &mut out,
    );
    n.on_batch(
        &batch(
            t0,
            &[("force", Value::F64(47.5)), ("done", Value::Bool(true))],
        ),
        &mut out,
    );
    n.on_batch(
        &batch(
            t0,
            &[("force", Value::F64(60.0)), ("done", Value::Bool(true))],
        ),
        &mut out,
    );
    n.on_batch(
        &batch(
            t0,
            &[("force", Value::F64(61.0)), ("done", Value::Bool(false))],
        ),
        &mut out,
    );
    n.on_batch(
        &batch(
            t0,
            &[("force", Value::F64(58.0)), ("done", Value::Bool(true))],
        ),
        &mut out,
    );
    let m = data(&out, "quality.measurement");
    assert_eq!(m.len(), 2, "two rising edges");
    assert_eq!(
        (m[0]["value"].as_f64(), m[0]["verdict"].as_str()),
        (Some(47.5), Some("pass"))
    );
    assert_eq!(
        (m[1]["value"].as_f64(), m[1]["verdict"].as_str()),
        (Some(58.0), Some("fail"))
    );
    assert_eq!(out.events[0].subject, "force");

    let bad = SampleBatch {
        source: "press".into(),
        samples: vec![Sample::good("press.done".into(), Value::Bool(false), t0)],
    };
    n.on_batch(&bad, &mut out);
    let bad = SampleBatch {
        source: "press".into(),
        samples: vec![
            Sample::bad("press.force".into(), "timeout", t0),
            Sample::good("press.done".into(), Value::Bool(true), t0),
        ],
    };
    n.on_batch(&bad, &mut out);
    let m = data(&out, "quality.measurement");
    assert_eq!(
        m[2]["verdict"], "invalid",
        "an unreadable measured part is reported, not dropped"
    );
    assert_eq!(m[2]["reason"], "timeout");
}

/// What happens between two polls of the counter rule.
#[derive(Debug, Clone)]
enum Op {
    /// The machine makes `n` parts, `r` of them rejects.
    Produce(u16, u16),
    /// The interval passes.
    Tick,
    /// The gateway restarts: only committed state survives.
    Restart,
    /// The gateway is down while the machine makes parts.
    DownWhile(u16, u16),
}

fn ops() -> impl Strategy<Value = Vec<Op>> {
    let op = prop_oneof![
        6 => (0..3000u16, 0..50u16).prop_map(|(n, r)| Op::Produce(n, r.min(n))),
        3 => Just(Op::Tick),
        1 => Just(Op::Restart),
        1 => (0..3000u16, 0..50u16).prop_map(|(n, r)| Op::DownWhile(n, r.min(n))),
    ];
    proptest::collection::vec(op, 1..80)
}

proptest! {
    /// Over any run with rollovers (u16 counters wrap every 65536 parts) and restarts, the
    /// delivered deltas add up to the parts really produced, once.
    #[test]
    fn delivered_counts_add_up_to_the_parts_produced(ops in ops(), start_total in any::<u16>(), start_reject in any::<u16>()) {
        let config = config();
        let mut t = SystemTime::now();
        let mut saved: Vec<(String, Json)> = Vec::new();
        let mut n = Normalizer::new(&config, &saved);
        let (mut total, mut reject) = (u64::from(start_total), u64::from(start_reject));
        let (mut produced, mut produced_rejects) = (0u64, 0u64);
        let (mut delivered, mut delivered_rejects) = (0u64, 0u64);
        let mut commit = |out: Output, saved: &mut Vec<(String, Json)>| {
            for e in &out.events {
                if e.event_type == "production.count" {
                    delivered += e.data["total"].as_u64().unwrap();
                    delivered_rejects += e.data["reject"].as_u64().unwrap();
                    prop_assert_eq!(e.data["total"].as_u64().unwrap(), e.data["good"].as_u64().unwrap() + e.data["reject"].as_u64().unwrap());
                }
            }
            for (k, v) in out.state {
                saved.retain(|(name, _)| *name != k);
                saved.push((k, v));
            }
            Ok(())
        };
        // The first reading only sets the baseline: parts before Causeway ever ran are not ours.
        let mut out = Output::default();
        n.on_batch(&batch(t, &[("total", Value::U64(total)), ("reject", Value::U64(reject))]), &mut out);
        commit(out, &mut saved)?;
        let mut since_saved = 0u64;
        for op in ops {
            let mut out = Output::default();
            if let Op::Produce(p, _) | Op::DownWhile(p, _) = op {
                // The arithmetic's one assumption: fewer than half the counter's range (32768
                // for u16) is made between two saved baselines. Saves happen every interval, so
                // a real line meets it when it makes fewer parts than that per interval.
                if since_saved + u64::from(p) >= 30_000 {
                    t += Duration::from_secs(2);
                    let mut tick = Output::default();
                    n.on_tick(t, false, &mut tick);
                    commit(tick, &mut saved)?;
                    since_saved = 0;
                }
                since_saved += u64::from(p);
            }
            match op {
                Op::Produce(p, r) | Op::DownWhile(p, r) => {
                    total = (total + u64::from(p)) % 65_536;
                    reject = (reject + u64::from(r)) % 65_536;
                    produced += u64::from(p);
                    produced_rejects += u64::from(r);
                    if matches!(op, Op::DownWhile(..)) {
                        n = Normalizer::new(&config, &saved);
                    }
                    n.on_batch(&batch(t, &[("total", Value::U64(total)), ("reject", Value::U64(reject))]), &mut out);
                }
                Op::Tick => {
                    t += Duration::from_secs(2);
                    n.on_tick(t, false, &mut out);
                    since_saved = 0;
                }
                Op::Restart => {
                    // Graceful: pending counts are flushed, then the process starts over.
                    n.on_tick(t, true, &mut out);
                    commit(std::mem::take(&mut out), &mut saved)?;
                    since_saved = 0;
                    n = Normalizer::new(&config, &saved);
                }
            }
            commit(out, &mut saved)?;
        }
        let mut out = Output::default();
        n.on_tick(t + Duration::from_secs(2), true, &mut out);
        commit(out, &mut saved)?;
        prop_assert_eq!(delivered, produced);
        prop_assert_eq!(delivered_rejects, produced_rejects);
    }
}
