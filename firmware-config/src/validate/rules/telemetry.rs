//! `kind = "telemetry"`: raw tag values forwarded as `telemetry.sample` events.

use crate::validate::*;

/// Most tag names and patterns in one rule.
const MAX_PATTERNS: usize = 1_000;
/// Most `*` in one pattern (each multiplies the matching work).
const MAX_STARS: usize = 4;

impl Checker {
    pub(crate) fn telemetry(&mut self, raw: &RawRule) -> Option<TelemetryRuleConfig> {
        let Some(list) = &raw.tags else {
            self.error("a telemetry rule needs `tags`", span(&raw.kind), "which tags?")
                .hint("add tags = [\"press1.*\"] (every tag of source press1) or a list of <source>.<tag>");
            return None;
        };
        if list.get_ref().is_empty() || list.get_ref().len() > MAX_PATTERNS {
            self.error(
                format!("`tags` must name 1 to {MAX_PATTERNS} tags or patterns"),
                span(list),
                "count",
            );
            return None;
        }
        let mut tags = Vec::new();
        for entry in list.get_ref() {
            let text = entry.get_ref();
            if !text.contains('*') {
                // A name: resolved as any rule's tag (declared, or made by a `+` template).
                if self.tag("tags", entry).is_some() {
                    tags.push(text.clone());
                }
                continue;
            }
            if text.matches('*').count() > MAX_STARS {
                self.error(
                    format!("`{text}` has more than {MAX_STARS} `*`"),
                    span(entry),
                    "too many wildcards",
                );
                continue;
            }
            // A pattern must match something now, or a tag its source may make at run time.
            let matches_declared = self.tags.keys().any(|k| route_matches(text, k));
            let matches_made = self.templates.iter().any(|(source, _, _)| {
                text.split_once('.')
                    .is_none_or(|(s, _)| s.contains('*') || s == source)
            });
            if !matches_declared && !matches_made {
                let known: Vec<String> = self.tags.keys().take(10).cloned().collect();
                self.error(
                    format!("`{text}` matches no tag"),
                    span(entry),
                    "nothing to forward",
                )
                .hint(format!(
                    "patterns match <source>.<tag> names, `*` any run of characters; tags include: {}",
                    known.join(", ")
                ));
                continue;
            }
            tags.push(text.clone());
        }
        let deadband = raw.deadband.as_ref().and_then(|d| self.deadband(d, &None));
        let min_interval = self.duration(
            raw.min_interval.as_ref(),
            Duration::ZERO,
            Duration::ZERO..=Duration::from_secs(3_600),
            "min_interval",
        );
        let heartbeat = raw.heartbeat.as_ref().map(|h| {
            self.duration(
                Some(h),
                Duration::from_secs(60),
                Duration::from_secs(1)..=Duration::from_secs(86_400),
                "heartbeat",
            )
        });
        if let (Some(beat), Some(field)) = (heartbeat, &raw.heartbeat)
            && beat < min_interval
        {
            self.error(
                "heartbeat is shorter than min_interval",
                span(field),
                "a tag cannot be sent more often than min_interval",
            );
        }
        let first = tags.first()?;
        let machine = match &raw.machine {
            Some(m) if is_name(m.get_ref()) => m.get_ref().clone(),
            Some(m) => {
                self.error(
                    format!("`{}` cannot be a machine name", m.get_ref()),
                    span(m),
                    "letters, digits, '-' and '_' only",
                );
                String::new()
            }
            // The first tag's source, as other rules take their main tag's.
            None => first
                .split('.')
                .next()
                .filter(|s| is_name(s))
                .unwrap_or("telemetry")
                .to_owned(),
        };
        let name = raw
            .name
            .as_ref()
            .map_or_else(|| format!("telemetry-{machine}"), |n| n.get_ref().clone());
        Some(TelemetryRuleConfig {
            name,
            machine,
            tags,
            deadband,
            min_interval,
            heartbeat,
        })
    }
}
