//! `kind = "counter"`.

use crate::validate::*;

impl Checker {
    pub(crate) fn counter_input(
        &mut self,
        field: &str,
        value: &Option<Spanned<String>>,
    ) -> Option<CounterInput> {
        let value = value.as_ref()?;
        let (tag, facts) = self.tag(field, value)?;
        match facts.counter_bits {
            Some(bits) if !facts.scaled => Some(CounterInput { tag, bits }),
            None if !facts.declared => {
                self.error(format!("counter tag `{tag}` has no declared type"), span(value), "width unknown")
                    .hint("add type = \"u16\", \"u32\" or \"u64\" to the tag, as the node's DataType: the width sets where the counter rolls over");
                None
            }
            Some(_) => {
                self.error(format!("counter tag `{tag}` is scaled"), span(value), "raw counts needed")
                    .hint("remove scale/offset from the tag: rollover is detected on the raw register value");
                None
            }
            None => {
                self.error(format!("counter tag `{tag}` is not an unsigned integer"), span(value), "expected u16, u32 or u64")
                    .hint("declare the tag with type = \"u16\", \"u32\" or \"u64\": the width sets where the counter rolls over");
                None
            }
        }
    }

    pub(crate) fn counter(&mut self, raw: &RawRule) -> Option<CounterRuleConfig> {
        let total = self.counter_input("total", &raw.total);
        let good = self.counter_input("good", &raw.good);
        let reject = self.counter_input("reject", &raw.reject);
        let given = [&raw.total, &raw.good, &raw.reject]
            .iter()
            .filter(|v| v.is_some())
            .count();
        if raw.total.is_none() && raw.good.is_none() {
            self.error(
                "a counter rule needs `total` or `good`",
                span(&raw.kind),
                "no counter tag",
            )
            .hint("add total = \"<source>.<tag>\" with the PLC's running part count");
            return None;
        }
        if given == 3 {
            self.error(
                "a counter rule takes two of `total`, `good` and `reject`",
                raw.reject.as_ref().map_or_else(|| span(&raw.kind), span),
                "one too many",
            )
            .hint("the third is computed from the other two");
        }
        let order = match &raw.order {
            Some(o) => Some(self.tag("order", o)?.0),
            None => None,
        };
        let interval = self.duration(
            raw.interval.as_ref(),
            Duration::from_secs(10),
            Duration::from_millis(100)..=DAY,
            "interval",
        );
        let max_rate = match &raw.max_rate {
            None => DEFAULT_MAX_RATE,
            Some(r) if r.get_ref().is_finite() && (0.001..=1_000_000.0).contains(r.get_ref()) => {
                *r.get_ref()
            }
            Some(r) => {
                self.error(
                    format!("max_rate = {} is out of range", r.get_ref()),
                    span(r),
                    "expected 0.001 ..= 1000000 parts per second",
                )
                .hint("the most parts per second the machine can make; a little above its fastest rate");
                DEFAULT_MAX_RATE
            }
        };
        let main = total.as_ref().or(good.as_ref())?.tag.clone();
        let machine = self.machine(raw, &main);
        let name = raw
            .name
            .as_ref()
            .map_or_else(|| format!("counter-{machine}"), |n| n.get_ref().clone());
        if (raw.total.is_some() && total.is_none())
            || (raw.good.is_some() && good.is_none())
            || (raw.reject.is_some() && reject.is_none())
        {
            return None;
        }
        Some(CounterRuleConfig {
            name,
            machine,
            line: raw.line.as_ref().map(|l| l.get_ref().clone()),
            total,
            good,
            reject,
            order,
            interval,
            max_rate,
        })
    }
}
