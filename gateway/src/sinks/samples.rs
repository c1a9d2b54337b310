//! One realistic event of each type the rules make, for `causeway check --render`: an
//! integrator sees the exact request a template makes before going live. Each matches its
//! schema in `docs/schemas` (tested in `tests/schemas.rs`).

use std::time::{Duration, SystemTime};

use serde_json::json;

use crate::event::{CloudEvent, rfc3339};

/// A sample of each event type that has one, stamped around `now` (a clock not yet set
/// near 1970 gives times at `now` itself rather than before the epoch).
pub fn sample_events(gateway_id: &str, now: SystemTime) -> Vec<CloudEvent> {
    let at = |back: u64| rfc3339(now.checked_sub(Duration::from_secs(back)).unwrap_or(now));
    vec![
        CloudEvent::new(
            gateway_id,
            "press1",
            "production.count",
            "press1",
            now,
            json!({
                "machine": "press1",
                "line": "line-2",
                "order": "4711-0042",
                "total": 120,
                "good": 117,
                "reject": 3,
                "interval_start": at(60),
                "interval_end": at(0),
                "anomaly": null,
            }),
        ),
        CloudEvent::new(
            gateway_id,
            "press1",
            "production.state",
            "press1",
            now,
            json!({
                "machine": "press1",
                "line": "line-2",
                "state": "down",
                "state_code": 2,
                "previous_state": "running",
                "previous_state_code": 1,
                "previous_state_since": at(5_400),
                "previous_duration_s": 5_400.0,
                "reason_code": 17,
            }),
        ),
        CloudEvent::new(
            gateway_id,
            "press1",
            "quality.measurement",
            "press1/force",
            now,
            json!({
                "characteristic": "force",
                "machine": "press1",
                "value": 47.25,
                "unit": "kN",
                "lsl": 40.0,
                "nominal": 47.5,
                "usl": 55.0,
                "verdict": "pass",
                "reason": null,
            }),
        ),
        CloudEvent::new(
            gateway_id,
            "press1",
            "telemetry.sample",
            "press1",
            now,
            json!({
                "machine": "press1",
                "samples": [
                    { "tag": "press.temperature", "value": 61.5, "quality": "good", "ts": at(1) },
                    { "tag": "press.pressure", "value": null, "quality": "bad", "reason": "read timed out", "ts": at(0) },
                ],
            }),
        ),
        CloudEvent::new(
            gateway_id,
            "gateway",
            "gateway.buffer_reset",
            "buffer",
            now,
            json!({
                "buffer": "/var/lib/causeway/buffer.db",
                "moved_to": "/var/lib/causeway/buffer.db.corrupt-20261128T080000Z",
                "reason": "database disk image is malformed",
            }),
        ),
    ]
}
