//! `state` rules: a PLC state code -> `production.state` on every change, with the previous
//! state and how long it lasted. The current state is saved with each event, so a restart in
//! the same state emits nothing and a change while down is reported against the right state.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use firmware_config::StateRuleConfig;
use serde_json::{Value as Json, json};

use super::{Latest, Output};
use crate::event::{CloudEvent, rfc3339};

#[derive(Debug, Clone)]
struct Current {
    code: i64,
    name: String,
    since: SystemTime,
}

/// A running state rule.
#[derive(Debug)]
pub(super) struct StateRule {
    config: StateRuleConfig,
    current: Option<Current>,
}

fn ms(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl StateRule {
    pub(super) fn new(config: StateRuleConfig, saved: Option<&Json>) -> Self {
        let current = saved.and_then(|s| {
            Some(Current {
                code: s.get("code")?.as_i64()?,
                name: s.get("name")?.as_str()?.to_owned(),
                since: UNIX_EPOCH + Duration::from_millis(s.get("since_ms")?.as_u64()?),
            })
        });
        StateRule { config, current }
    }

    fn name_of(&self, code: i64) -> String {
        self.config
            .states
            .get(&code)
            .cloned()
            .unwrap_or_else(|| "unknown".to_owned())
    }

    pub(super) fn on_batch(&mut self, latest: &Latest, gateway_id: &str, out: &mut Output) {
        let Some(sample) = latest.in_batch(&self.config.tag.0) else {
            return;
        };
        let Some(code) = sample.value.as_ref().and_then(|v| v.as_i64()) else {
            return;
        };
        if self.current.as_ref().is_some_and(|c| c.code == code) {
            return;
        }
        let at = sample.source_time.unwrap_or(sample.gateway_time);
        let name = self.name_of(code);
        if !self.config.states.contains_key(&code) {
            tracing::warn!(rule = %self.config.name, tag = %self.config.tag, code, "State code has no name in `states`; reported as \"unknown\".");
        }
        let reason = self
            .config
            .reason
            .as_ref()
            .and_then(|r| latest.value(&r.0))
            .and_then(|v| v.as_i64());
        let previous = self.current.as_ref();
        let duration =
            previous.map(|p| at.duration_since(p.since).unwrap_or_default().as_secs_f64());
        let data = json!({
            "machine": self.config.machine,
            "line": self.config.line,
            "state": name,
            "state_code": code,
            "previous_state": previous.map(|p| p.name.clone()),
            "previous_state_code": previous.map(|p| p.code),
            "previous_state_since": previous.map(|p| rfc3339(p.since)),
            "previous_duration_s": duration,
            "reason_code": reason,
        });
        let m = &self.config.machine;
        out.events.push(CloudEvent::new(
            gateway_id,
            m,
            "production.state",
            m,
            at,
            data,
        ));
        out.state.push((
            self.config.name.clone(),
            json!({ "code": code, "name": name, "since_ms": ms(at) }),
        ));
        self.current = Some(Current {
            code,
            name,
            since: at,
        });
    }
}
