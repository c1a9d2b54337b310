//! `kind = "state"`.

use crate::validate::*;

impl Checker {
    pub(crate) fn state(&mut self, raw: &RawRule) -> Option<StateRuleConfig> {
        let Some(tag_field) = &raw.tag else {
            self.error("a state rule needs `tag`", span(&raw.kind), "no tag")
                .hint("add tag = \"<source>.<tag>\" with the PLC's state code");
            return None;
        };
        let (tag, facts) = self.tag("tag", tag_field)?;
        if (facts.declared && !(facts.integer || facts.boolean)) || facts.scaled {
            self.error(
                format!("state tag `{tag}` is not an unscaled integer or bool"),
                span(tag_field),
                "state codes are integers",
            )
            .hint("declare it with type = \"u16\" (or another integer type) and no scale");
        }
        let mut states = BTreeMap::new();
        match &raw.states {
            None => {
                self.error(
                    "a state rule needs `states`",
                    span(&raw.kind),
                    "no state names",
                )
                .hint("add states = { 0 = \"idle\", 1 = \"running\", 2 = \"down\" }");
            }
            Some(map) => {
                for (key, value) in map.get_ref() {
                    match key.trim().parse::<i64>() {
                        Ok(code) => {
                            states.insert(code, value.get_ref().clone());
                        }
                        Err(_) => {
                            self.error(
                                format!("state code `{key}` is not an integer"),
                                span(map),
                                "keys are the PLC's values",
                            )
                            .hint("write states = { 0 = \"idle\", 1 = \"running\" }");
                        }
                    }
                    if value.get_ref().trim().is_empty() {
                        self.error("a state name is empty", span(value), "name this state");
                    }
                }
                if map.get_ref().is_empty() {
                    self.error("`states` is empty", span(map), "no state names");
                }
            }
        }
        let reason = match &raw.reason {
            Some(r) => Some(self.tag("reason", r)?.0),
            None => None,
        };
        let machine = self.machine(raw, &tag);
        let name = raw
            .name
            .as_ref()
            .map_or_else(|| format!("state-{machine}"), |n| n.get_ref().clone());
        Some(StateRuleConfig {
            name,
            machine,
            line: raw.line.as_ref().map(|l| l.get_ref().clone()),
            tag,
            states,
            reason,
        })
    }
}
