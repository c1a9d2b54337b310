//! `kind = "measurement"`.

use crate::validate::*;

impl Checker {
    pub(crate) fn measurement(&mut self, raw: &RawRule) -> Option<MeasurementRuleConfig> {
        let Some(characteristic) = &raw.characteristic else {
            self.error(
                "a measurement rule needs `characteristic`",
                span(&raw.kind),
                "unnamed characteristic",
            )
            .hint("add characteristic = \"press-force\", the name the QMS knows it by");
            return None;
        };
        let Some(tag_field) = &raw.tag else {
            self.error("a measurement rule needs `tag`", span(&raw.kind), "no tag")
                .hint("add tag = \"<source>.<tag>\" with the measured value");
            return None;
        };
        let (tag, facts) = self.tag("tag", tag_field)?;
        if facts.boolean || facts.text {
            self.error(
                format!("measurement tag `{tag}` is not numeric"),
                span(tag_field),
                "expected a number",
            );
        }
        let trigger = match &raw.trigger {
            Some(t) => {
                let (trigger, facts) = self.tag("trigger", t)?;
                if facts.declared && !facts.boolean {
                    self.error(format!("trigger tag `{trigger}` is not a bool"), span(t), "sampled on a rising edge")
                        .hint("point trigger at a coil, a discrete input or one bit of a register (type = \"bool\", bit = N)");
                }
                Some(trigger)
            }
            None => None,
        };
        let get = |v: &Option<Spanned<f64>>| v.as_ref().map(|s| *s.get_ref());
        let (lsl, nominal, usl) = (get(&raw.lsl), get(&raw.nominal), get(&raw.usl));
        if lsl.is_none() && usl.is_none() {
            self.error(
                "a measurement rule needs `lsl`, `usl` or both",
                span(characteristic),
                "no specification limits",
            )
            .hint("add lsl = <lower limit> and/or usl = <upper limit>");
        }
        for v in [&raw.lsl, &raw.nominal, &raw.usl].into_iter().flatten() {
            if !v.get_ref().is_finite() {
                self.error("a limit must be a finite number", span(v), "not finite");
            }
        }
        if let (Some(l), Some(u), Some(usl_field)) = (lsl, usl, &raw.usl)
            && l >= u
        {
            self.error(
                format!("usl {u} is not above lsl {l}"),
                span(usl_field),
                "limits are reversed or equal",
            );
        }
        if let (Some(n), Some(field)) = (nominal, &raw.nominal)
            && (lsl.is_some_and(|l| n < l) || usl.is_some_and(|u| n > u))
        {
            self.error(
                format!("nominal {n} lies outside the specification limits"),
                span(field),
                "outside lsl..usl",
            );
        }
        let deadband = raw
            .deadband
            .as_ref()
            .and_then(|d| self.deadband(d, &raw.trigger));
        let machine = self.machine(raw, &tag);
        let name = raw.name.as_ref().map_or_else(
            || format!("measurement-{}", characteristic.get_ref()),
            |n| n.get_ref().clone(),
        );
        Some(MeasurementRuleConfig {
            name,
            characteristic: characteristic.get_ref().clone(),
            machine,
            tag,
            trigger,
            lsl,
            nominal,
            usl,
            unit: raw.unit.as_ref().map(|u| u.get_ref().clone()),
            deadband,
        })
    }

    pub(crate) fn deadband(
        &mut self,
        raw: &Spanned<RawDeadband>,
        trigger: &Option<Spanned<String>>,
    ) -> Option<Deadband> {
        if let Some(t) = trigger {
            self.error("`deadband` does not apply with a `trigger`", span(raw), "not used")
                .hint(format!(
                    "a triggered measurement reports every part (trigger = \"{}\"); remove the deadband",
                    t.get_ref()
                ));
            return None;
        }
        let parsed = match raw.get_ref() {
            RawDeadband::Absolute(d) => Some(Deadband::Absolute(*d)),
            RawDeadband::Text(text) => text
                .trim()
                .strip_suffix('%')
                .and_then(|n| n.trim().parse::<f64>().ok())
                .map(Deadband::Percent),
        };
        match parsed {
            Some(Deadband::Absolute(d)) if d.is_finite() && d > 0.0 => Some(Deadband::Absolute(d)),
            Some(Deadband::Percent(p)) if p.is_finite() && p > 0.0 && p <= 100.0 => {
                Some(Deadband::Percent(p))
            }
            _ => {
                self.error("this deadband is not usable", span(raw), "expected a number > 0 or \"<n>%\"")
                    .hint("write deadband = 0.5 (in the tag's unit) or deadband = \"2%\" (of the last reported value, 0 < n <= 100)");
                None
            }
        }
    }
}
