//! Rules: the kind dispatch and what every kind shares. Each kind has its own module.

mod counter;
mod measurement;
mod state;
mod telemetry;

use crate::validate::*;

impl Checker {
    pub(crate) fn rule(
        &mut self,
        raw: &RawRule,
        names: &mut HashMap<String, Range<usize>>,
    ) -> Option<RuleConfig> {
        let kind = raw.kind.get_ref().as_str();
        if RULE_FIELDS.iter().any(|(k, _)| *k == kind) {
            self.foreign("rule", kind, &raw.kind_fields(), RULE_FIELDS);
        }
        let built = match kind {
            "counter" => self.counter(raw).map(RuleConfig::Counter),
            "state" => self.state(raw).map(RuleConfig::State),
            "measurement" => self.measurement(raw).map(RuleConfig::Measurement),
            "telemetry" => self.telemetry(raw).map(RuleConfig::Telemetry),
            other => {
                let kinds = ["counter", "state", "measurement", "telemetry"];
                let hint = match closest(other, kinds) {
                    Some(near) => format!(
                        "did you mean \"{near}\"? Rule kinds: counter, state, measurement, telemetry"
                    ),
                    None => "rule kinds: counter, state, measurement, telemetry".to_owned(),
                };
                self.error(
                    format!("unknown rule kind `{other}`"),
                    span(&raw.kind),
                    "unknown kind",
                )
                .hint(hint);
                return None;
            }
        }?;
        let at = raw.name.as_ref().map_or_else(|| span(&raw.kind), span);
        if let Some(name) = &raw.name
            && !is_name(name.get_ref())
        {
            self.error(
                format!("`{}` cannot be a rule name", name.get_ref()),
                span(name),
                "letters, digits, '-' and '_' only",
            );
        }
        if names.insert(built.name().to_owned(), at.clone()).is_some() {
            self.error(format!("two rules are named `{}`", built.name()), at, "second use")
                .hint("give one of them a distinct `name = \"...\"`: rule names key the rule's saved state");
        }
        Some(built)
    }

    /// The machine named, or the source of the rule's main tag.
    pub(super) fn machine(&mut self, raw: &RawRule, main_tag: &TagRef) -> String {
        match &raw.machine {
            Some(m) if is_name(m.get_ref()) => m.get_ref().clone(),
            Some(m) => {
                self.error(
                    format!("`{}` cannot be a machine name", m.get_ref()),
                    span(m),
                    "letters, digits, '-' and '_' only",
                )
                .hint("the machine becomes part of each event's source URI");
                String::new()
            }
            None => main_tag.0.split('.').next().unwrap_or_default().to_owned(),
        }
    }
}
