//! Sinks: the kind dispatch, routes, and what every kind shares. https has its own module.

mod https;
mod mqtt;

use crate::validate::*;

impl Checker {
    pub(crate) fn sink(
        &mut self,
        raw: &RawSink,
        names: &mut HashMap<String, Range<usize>>,
        produced: &HashSet<&'static str>,
    ) -> Option<SinkConfig> {
        self.unique("sink", &raw.name, names);
        let name = raw.name.get_ref().clone();
        let routes = self.routes(raw, produced);
        let batch_size = match &raw.batch_size {
            None => 100,
            Some(b) => usize::try_from(*b.get_ref())
                .ok()
                .filter(|b| (1..=10_000).contains(b))
                .unwrap_or_else(|| {
                    self.error(
                        format!("batch_size = {} is out of range", b.get_ref()),
                        span(b),
                        "expected 1..=10000",
                    );
                    1
                }),
        };
        let max_batch_bytes = self.size(
            raw.max_batch_bytes.as_ref(),
            DEFAULT_MAX_BATCH_BYTES,
            (4 << 10)..=(64 << 20),
            "max_batch_bytes",
        );
        let (breaker_failures, breaker_open, rate_limit) = self.protection(raw);
        let kind_name = raw.kind.get_ref().as_str();
        if SINK_FIELDS.iter().any(|(k, _)| *k == kind_name) {
            self.foreign("sink", kind_name, &raw.kind_fields(), SINK_FIELDS);
        }
        let kind = match kind_name {
            "https" => SinkKind::Https(self.https(raw)?),
            "mqtt" => SinkKind::Mqtt(self.mqtt(raw)?),
            "file" => {
                let Some(path) = &raw.path else {
                    self.error(
                        format!("file sink `{name}` has no path"),
                        span(&raw.name),
                        "this sink",
                    )
                    .hint("add path = \"/var/log/causeway/events.jsonl\"");
                    return None;
                };
                SinkKind::File {
                    path: PathBuf::from(path.get_ref()),
                }
            }
            "stdout" => SinkKind::Stdout,
            other => {
                let hint = match closest(other, ["https", "file", "stdout"]) {
                    Some(near) => {
                        format!("did you mean \"{near}\"? Sink kinds: https, mqtt, file, stdout")
                    }
                    None => "sink kinds: https, mqtt, file, stdout".to_owned(),
                };
                self.error(
                    format!("unknown sink kind `{other}`"),
                    span(&raw.kind),
                    "unknown kind",
                )
                .hint(hint);
                return None;
            }
        };
        // One request per event: a batch is one event.
        let batch_size = match &kind {
            SinkKind::Https(HttpsSinkConfig {
                body: Body::Template(t),
                ..
            }) if t.per_event => {
                if let Some(b) = &raw.batch_size
                    && *b.get_ref() != 1
                {
                    self.error(
                        format!("batch_size = {} with per = \"event\"", b.get_ref()),
                        span(b),
                        "one event per request",
                    )
                    .hint("remove batch_size: with per = \"event\" each request carries one event");
                }
                1
            }
            _ => batch_size,
        };
        // Gateway events (a buffer reset) concern every receiver of CloudEvents; a body
        // template is written for its own types, so a templated sink gets them only when its
        // routes say so.
        let mut routes = routes;
        let templated = matches!(
            &kind,
            SinkKind::Https(HttpsSinkConfig {
                body: Body::Template(_),
                ..
            })
        );
        if !templated
            && !routes.iter().any(|r| {
                EVENT_TYPES
                    .iter()
                    .any(|t| route_matches(SYSTEM_EVENT_TYPES, t) && route_matches(r, t))
            })
        {
            routes.push(SYSTEM_EVENT_TYPES.to_owned());
        }
        Some(SinkConfig {
            name,
            routes,
            batch_size,
            max_batch_bytes,
            breaker_failures,
            breaker_open,
            rate_limit,
            kind,
        })
    }

    /// The circuit breaker (`breaker_failures`, default 5, 1..=1000; `breaker_open`, default
    /// 30 s, 1 s ..= 1 h) and the rate limit (`rate_limit`, requests per second, 0.01..=1000).
    fn protection(&mut self, raw: &RawSink) -> (u32, Duration, Option<f64>) {
        let failures = match &raw.breaker_failures {
            None => 5,
            Some(n) => u32::try_from(*n.get_ref())
                .ok()
                .filter(|n| (1..=1000).contains(n))
                .unwrap_or_else(|| {
                    self.error(
                        format!("breaker_failures = {} is out of range", n.get_ref()),
                        span(n),
                        "expected 1..=1000",
                    )
                    .hint(
                        "failed deliveries in a row before the sink stops sending for breaker_open",
                    );
                    5
                }),
        };
        let open = self.duration(
            raw.breaker_open.as_ref(),
            Duration::from_secs(30),
            Duration::from_secs(1)..=Duration::from_secs(3600),
            "breaker_open",
        );
        let rate = match &raw.rate_limit {
            None => None,
            Some(r) if r.get_ref().is_finite() && (0.01..=1000.0).contains(r.get_ref()) => {
                Some(*r.get_ref())
            }
            Some(r) => {
                self.error(
                    format!("rate_limit = {} is out of range", r.get_ref()),
                    span(r),
                    "expected 0.01 ..= 1000 requests per second",
                )
                .hint("the most requests per second the receiver takes; leave it out for no limit");
                None
            }
        };
        (failures, open, rate)
    }

    pub(crate) fn routes(
        &mut self,
        raw: &RawSink,
        produced: &HashSet<&'static str>,
    ) -> Vec<String> {
        let Some(routes) = &raw.routes else {
            self.error(
                format!("sink `{}` has no routes", raw.name.get_ref()),
                span(&raw.name),
                "receives nothing",
            )
            .hint("add routes = [\"production.*\"] (or \"*\" for every event type)");
            return Vec::new();
        };
        if routes.get_ref().is_empty() {
            self.error(
                format!("sink `{}` has empty routes", raw.name.get_ref()),
                span(routes),
                "receives nothing",
            )
            .hint("add an event-type pattern such as \"production.*\" or \"quality.measurement\"");
        }
        let mut out = Vec::new();
        for route in routes.get_ref() {
            let pattern = route.get_ref();
            if !EVENT_TYPES.iter().any(|t| route_matches(pattern, t)) {
                let families = ["production.*", "quality.*", "telemetry.*"];
                // Gateway events reach every sink without a route: not offered as a choice.
                let routable: Vec<&str> = EVENT_TYPES
                    .iter()
                    .copied()
                    .filter(|t| !route_matches(SYSTEM_EVENT_TYPES, t))
                    .collect();
                let hint = match closest(pattern, routable.iter().copied().chain(families)) {
                    Some(near) => format!(
                        "did you mean \"{near}\"? Event types: {}",
                        routable.join(", ")
                    ),
                    None => format!("event types: {}", routable.join(", ")),
                };
                self.error(
                    format!("route `{pattern}` matches no event type"),
                    span(route),
                    "matches nothing",
                )
                .hint(hint);
            }
            out.push(pattern.clone());
        }
        let routed_and_made = produced
            .iter()
            .any(|t| out.iter().any(|r| route_matches(r, t)));
        if !out.is_empty() && !routed_and_made && !produced.is_empty() {
            let mut made: Vec<&str> = produced.iter().copied().collect();
            made.sort_unstable();
            self.warning(
                format!(
                    "no rule makes an event routed to sink `{}`",
                    raw.name.get_ref()
                ),
                span(routes),
                "nothing will arrive",
            )
            .hint(format!("the rules make {}", made.join(", ")));
        }
        out
    }
}
