//! `measurement` rules: a characteristic's value -> `quality.measurement` with a verdict
//! against the specification limits, sampled on the rising edge of a trigger tag (the value
//! read in the same poll as the edge) or, without a trigger, on every change.
//!
//! A triggered sample whose value could not be read is still reported, with `value: null`,
//! `verdict: "invalid"` and the reason: the QMS must learn that a part went unmeasured.
//!
//! Without a trigger, the last reported value is saved with the event (same transaction), so a
//! restart does not report the same value again under a new id; an optional `deadband`
//! (absolute, or percent of the last reported value) keeps analog noise from firing on every
//! poll.

use firmware_config::MeasurementRuleConfig;
use protocols::model::{Quality, SampleBatch};
use serde_json::{Value as Json, json};

use super::{Latest, Output};
use crate::event::CloudEvent;

/// A running measurement rule.
#[derive(Debug)]
pub(super) struct MeasurementRule {
    config: MeasurementRuleConfig,
    last_trigger: Option<bool>,
    last_value: Option<f64>,
}

impl MeasurementRule {
    pub(super) fn new(config: MeasurementRuleConfig, saved: Option<&Json>) -> Self {
        let last_value = saved
            .filter(|_| config.trigger.is_none())
            .and_then(|s| s.get("last"))
            .and_then(Json::as_f64);
        MeasurementRule {
            config,
            last_trigger: None,
            last_value,
        }
    }

    /// Whether an untriggered rule reports `value`.
    fn moved(&self, value: f64) -> bool {
        match (self.last_value, self.config.deadband) {
            (None, _) => true,
            (Some(last), Some(band)) => band.exceeded(last, value),
            (Some(last), None) => last != value,
        }
    }

    /// "pass" within the limits (inclusive), else "fail".
    pub(super) fn verdict(&self, value: f64) -> &'static str {
        let low = self.config.lsl.is_none_or(|l| value >= l);
        let high = self.config.usl.is_none_or(|u| value <= u);
        if low && high { "pass" } else { "fail" }
    }

    pub(super) fn on_batch(
        &mut self,
        batch: &SampleBatch,
        latest: &Latest,
        gateway_id: &str,
        out: &mut Output,
    ) {
        let fire = match &self.config.trigger {
            Some(trigger) => {
                let Some(now) = latest
                    .in_batch(&trigger.0)
                    .and_then(|s| s.value.as_ref())
                    .and_then(|v| v.as_bool())
                else {
                    return;
                };
                let edge = self.last_trigger == Some(false) && now;
                self.last_trigger = Some(now);
                edge
            }
            None => latest
                .in_batch(&self.config.tag.0)
                .and_then(|s| s.value.as_ref())
                .and_then(|v| v.as_f64())
                .is_some_and(|v| self.moved(v)),
        };
        if !fire {
            return;
        }
        let Some(sample) = latest.sample(&self.config.tag.0) else {
            // The trigger rose before the value was ever read.
            self.emit(
                None,
                Some("the value has not been read yet".to_owned()),
                batch,
                gateway_id,
                out,
            );
            return;
        };
        match (
            &sample.quality,
            sample.value.as_ref().and_then(|v| v.as_f64()),
        ) {
            (Quality::Good | Quality::Uncertain(_), Some(v)) => {
                self.last_value = Some(v);
                self.emit(Some(v), None, batch, gateway_id, out);
                if self.config.trigger.is_none() {
                    out.state
                        .push((self.config.name.clone(), json!({ "last": v })));
                }
            }
            (Quality::Bad(why) | Quality::Uncertain(why), _) => {
                self.emit(None, Some(why.clone()), batch, gateway_id, out)
            }
            (Quality::Good, None) => self.emit(
                None,
                Some("the value is not numeric".to_owned()),
                batch,
                gateway_id,
                out,
            ),
        }
    }

    fn emit(
        &self,
        value: Option<f64>,
        reason: Option<String>,
        batch: &SampleBatch,
        gateway_id: &str,
        out: &mut Output,
    ) {
        let c = &self.config;
        let at = batch
            .samples
            .first()
            .map_or_else(std::time::SystemTime::now, |s| {
                s.source_time.unwrap_or(s.gateway_time)
            });
        let verdict = value.map_or("invalid", |v| self.verdict(v));
        if verdict == "invalid" {
            tracing::warn!(rule = %c.name, tag = %c.tag, reason = reason.as_deref().unwrap_or_default(), "Measurement triggered but its value could not be read; reported as invalid.");
        }
        let data = json!({
            "characteristic": c.characteristic,
            "machine": c.machine,
            "value": value,
            "unit": c.unit,
            "lsl": c.lsl,
            "nominal": c.nominal,
            "usl": c.usl,
            "verdict": verdict,
            "reason": reason,
        });
        out.events.push(CloudEvent::new(
            gateway_id,
            &c.machine,
            "quality.measurement",
            &c.characteristic,
            at,
            data,
        ));
    }
}
