//! `kind = "mqtt"` (a source): the broker, the session, the credentials, and tags read from
//! the messages of one topic each (JSON with pointers, or plain text).

use crate::{topic, validate::*};

/// Default cap on a message's size.
const DEFAULT_MAX_PAYLOAD: u64 = 64 << 10;

impl Checker {
    pub(crate) fn mqtt_source(&mut self, raw: &RawSource) -> Option<MqttSourceConfig> {
        let source = raw.name.get_ref().clone();
        let Some(url) = &raw.url else {
            self.error(
                format!("mqtt source `{source}` has no url"),
                span(&raw.name),
                "this source",
            )
            .hint("add url = \"mqtts://broker.plant.local:8883\"");
            return None;
        };
        let insecure = raw.insecure.as_ref().is_some_and(|i| *i.get_ref());
        let target = self.mqtt_url(url, insecure, &raw.name);
        if raw.password.is_some() {
            self.error(
                format!("source `{source}` has a password written inline (`password = ...`)"),
                span(&raw.name),
                "secret in the config file",
            )
            .hint("put it in a file (password_file = \"/etc/causeway/mqtt.pw\") or an environment variable (password_env = \"MQTT_PASSWORD\")");
        }
        let credentials = self.mqtt_credentials(
            raw.username.as_ref(),
            raw.password_file.as_ref(),
            raw.password_env.as_ref(),
            &raw.name,
        );
        let identity = self.mqtt_identity(raw.client_certificate.as_ref(), raw.client_key.as_ref());
        let client_id = raw.client_id.as_ref().map(|c| {
            let id = c.get_ref();
            if id.is_empty() || id.len() > 64 {
                self.error("`client_id` must be 1 to 64 characters", span(c), "length");
            }
            if self.client_ids.insert(id.clone(), span(c)).is_some() {
                self.error(format!("two mqtt clients use client_id `{id}`"), span(c), "second use")
                    .hint("a broker keeps one session per client id: the two would take it from each other forever");
            }
            id.clone()
        });
        let max_payload = self.size(
            raw.max_payload.as_ref(),
            DEFAULT_MAX_PAYLOAD,
            16..=(1 << 20),
            "max_payload",
        );
        if raw.tags.is_empty() {
            self.warning(
                format!("source `{source}` has no tags"),
                span(&raw.name),
                "reads nothing",
            )
            .hint("add tags = [ { name = \"temp\", topic = \"plant/line3/press1/telemetry\", value = \"/temp\" } ]");
        }
        let mut names = HashMap::new();
        let mut formats: HashMap<String, (bool, Range<usize>)> = HashMap::new();
        let mut tags = Vec::new();
        for tag in &raw.tags {
            let wildcard = tag
                .topic
                .as_ref()
                .is_some_and(|t| t.get_ref().contains(['+', '#']));
            if wildcard {
                // The name is a template ({n} for topic levels), checked with the topic.
                if names
                    .insert(tag.name.get_ref().clone(), span(&tag.name))
                    .is_some()
                {
                    self.error(
                        format!("two tags are named `{}`", tag.name.get_ref()),
                        span(&tag.name),
                        "second use",
                    )
                    .hint("tag names must be unique; rename one of them");
                }
            } else {
                self.unique("tag", &tag.name, &mut names);
            }
            let key = format!("{source}.{}", tag.name.get_ref());
            match self.mqtt_tag(tag) {
                Some(built) => {
                    let json = matches!(built.format, MqttFormat::Json { .. });
                    let at = tag.topic.as_ref().map_or_else(|| span(&tag.name), span);
                    match formats.get(&built.topic) {
                        Some((other, _)) if *other != json => {
                            self.error(
                                format!("tags on topic `{}` read it in two formats", built.topic),
                                at,
                                "json and text",
                            )
                            .hint("a topic's messages have one format: give every tag on it the same `format`");
                        }
                        Some(_) => {}
                        None => {
                            formats.insert(built.topic.clone(), (json, at));
                        }
                    }
                    let facts = TagFacts::opcua(built.data_type);
                    if wildcard {
                        if let Some(parts) = topic::name_parts(&built.name) {
                            self.templates.push((source.clone(), parts, Some(facts)));
                        }
                    } else {
                        self.tags.insert(key, facts);
                    }
                    tags.push(built);
                }
                None => {
                    match topic::name_parts(tag.name.get_ref()) {
                        Some(parts) if wildcard || tag.name.get_ref().contains('{') => {
                            self.templates.push((source.clone(), parts, None));
                        }
                        _ => {}
                    }
                    self.broken_tags.insert(key);
                }
            }
        }
        // A template that could make a declared tag's name: that name stays the declared tag's
        // (the template's is not read), which is worth knowing before it happens.
        for raw_tag in &raw.tags {
            let Some(parts) = raw_tag
                .topic
                .as_ref()
                .filter(|t| t.get_ref().contains('+'))
                .and_then(|_| topic::name_parts(raw_tag.name.get_ref()))
            else {
                continue;
            };
            // Sparkplug tags included: their topics hold `+`, their names are declared.
            for other in tags.iter().filter(|t| {
                matches!(t.format, MqttFormat::Sparkplug { .. }) || !t.topic.contains('+')
            }) {
                if !topic::could_make(&parts, &other.name) {
                    continue;
                }
                self.warning(
                    format!(
                        "tag `{}` could name a topic's tag `{}`, the name of a declared tag",
                        raw_tag.name.get_ref(),
                        other.name
                    ),
                    span(&raw_tag.name),
                    "one name, two tags",
                )
                .hint("the declared tag keeps the name and the template's is not read; change the template's fixed text so they cannot meet");
            }
        }
        let (host, port, tls) = target?;
        if identity.is_some() && !tls {
            let at = raw
                .client_certificate
                .as_ref()
                .map_or_else(|| span(&raw.name), span);
            self.error("a client certificate needs mqtts://", at, "no TLS");
        }
        Some(MqttSourceConfig {
            name: source,
            host,
            port,
            tls,
            ca_file: raw.ca_file.as_ref().map(|c| PathBuf::from(c.get_ref())),
            identity,
            client_id,
            clean_session: raw.clean_session.as_ref().is_none_or(|c| *c.get_ref()),
            credentials,
            max_payload: usize::try_from(max_payload).unwrap_or(usize::MAX),
            tags,
        })
    }

    fn mqtt_tag(&mut self, raw: &RawTag) -> Option<MqttTagConfig> {
        let name = raw.name.get_ref().clone();
        self.foreign("tag", "mqtt", &raw.kind_fields(), TAG_FIELDS);
        let format = raw.format.as_ref().map(|f| f.get_ref().as_str());
        if format == Some("sparkplug") {
            return self.sparkplug_tag(raw);
        }
        for (field, v) in [
            ("group", &raw.group),
            ("edge_node", &raw.edge_node),
            ("device", &raw.device),
            ("metric", &raw.metric),
        ] {
            if let Some(v) = v {
                self.error(
                    format!("`{field}` applies to format = \"sparkplug\""),
                    span(v),
                    "not used here",
                )
                .hint("a Sparkplug B metric is read with format = \"sparkplug\", group, edge_node, (device) and metric");
            }
        }
        let Some(topic) = &raw.topic else {
            self.error(
                format!("tag `{name}` has no topic"),
                span(&raw.name),
                "which topic?",
            )
            .hint("add topic = \"plant/line3/press1/telemetry\"");
            return None;
        };
        let text = topic.get_ref();
        if text.contains('#') {
            self.error(
                format!("`{text}`: a tag cannot read a `#` filter"),
                span(topic),
                "any depth",
            )
            .hint("`#` matches topics of any depth, which no one tag name can tell apart: write a `+` for each level, and name the tag from them, e.g. topic = \"plant/+/+/temp\", name = \"{2}_{3}_temp\"");
            return None;
        }
        if text.is_empty()
            || text.contains('\0')
            || text.len() > 4_096
            || text.split('/').any(|l| l.contains('+') && l != "+")
        {
            self.error(
                format!("`{text}` is not a topic a tag can be read from"),
                span(topic),
                "not empty, at most 4,096 bytes; `+` only as a whole level",
            )
            .hint("give each tag the topic its value is published on, with `+` for a level that varies (plant/+/temp)");
            return None;
        }
        if text.contains('+') && !self.template_name(raw, text) {
            return None;
        }
        let json = match format {
            None | Some("json") => true,
            Some("text") => false,
            Some(other) => {
                let at = raw.format.as_ref().map_or_else(|| span(&raw.name), span);
                self.error(
                    format!("unknown format `{other}`"),
                    at,
                    "expected json, text or sparkplug",
                )
                .hint("json reads a member by its JSON Pointer (`value`); text reads the whole payload; sparkplug reads a Sparkplug B metric");
                return None;
            }
        };
        let format = if json {
            MqttFormat::Json {
                value: self.json_pointer("value", &raw.value).unwrap_or_default(),
                timestamp: self.json_pointer("timestamp", &raw.timestamp),
                quality: self.json_pointer("quality", &raw.quality),
            }
        } else {
            for (field, v) in [
                ("value", &raw.value),
                ("timestamp", &raw.timestamp),
                ("quality", &raw.quality),
            ] {
                if let Some(v) = v {
                    self.error(
                        format!("`{field}` applies to format = \"json\""),
                        span(v),
                        "not used with text",
                    );
                }
            }
            MqttFormat::Text
        };
        let data_type = match &raw.data_type {
            None => None,
            Some(t) => Some(self.value_type(t)?),
        };
        Some(MqttTagConfig {
            name,
            topic: text.clone(),
            format,
            data_type,
        })
    }

    /// A JSON Pointer (RFC 6901) as `field` gives it: empty (the whole document) or `/...`.
    pub(crate) fn json_pointer(
        &mut self,
        field: &str,
        value: &Option<Spanned<String>>,
    ) -> Option<String> {
        let v = value.as_ref()?;
        let text = v.get_ref();
        if !text.is_empty() && !text.starts_with('/') {
            self.error(
                format!("`{field}` = \"{text}\" is not a JSON Pointer"),
                span(v),
                "expected /member/...",
            )
            .hint(format!(
                "write it as \"/{text}\" (RFC 6901: members separated by /)"
            ));
        }
        Some(text.clone())
    }

    /// Checks the name of a tag on a filter with `+`: each `+` level named by `{n}` (else
    /// messages of different topics would feed one tag), every `{n}` a `+` level.
    fn template_name(&mut self, raw: &RawTag, filter: &str) -> bool {
        let name = raw.name.get_ref();
        let levels: Vec<&str> = filter.split('/').collect();
        let wild: Vec<usize> = (1..=levels.len())
            .filter(|n| levels[n - 1] == "+")
            .collect();
        let example = wild
            .iter()
            .map(|n| format!("{{{n}}}"))
            .collect::<Vec<_>>()
            .join("_");
        let Some(parts) = topic::name_parts(name) else {
            self.error(
                format!("tag name `{name}` has a brace that is not a topic level like {{2}}"),
                span(&raw.name),
                "{n}: the topic's n-th level, from 1",
            );
            return false;
        };
        let mut ok = true;
        for part in &parts {
            match part {
                topic::NamePart::Text(t) if !t.chars().all(topic::name_char) => {
                    self.error(
                        format!("`{name}` cannot be a tag name"),
                        span(&raw.name),
                        "letters, digits, '-', '_' and {n} only",
                    );
                    ok = false;
                }
                topic::NamePart::Level(n) if !wild.contains(n) => {
                    self.error(
                        format!("{{{n}}} in tag name `{name}` is not a `+` level of `{filter}`"),
                        span(&raw.name),
                        "only a `+` level varies",
                    )
                    .hint(format!(
                        "the `+` levels of this topic are {}",
                        wild.iter()
                            .map(|n| format!("{{{n}}}"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ));
                    ok = false;
                }
                _ => {}
            }
        }
        let named: Vec<usize> = parts
            .iter()
            .filter_map(|p| match p {
                topic::NamePart::Level(n) => Some(*n),
                topic::NamePart::Text(_) => None,
            })
            .collect();
        if let Some(n) = wild.iter().find(|n| !named.contains(n)) {
            self.error(
                format!("tag `{name}` reads `{filter}` but its name does not take level {{{n}}}"),
                span(&raw.name),
                "different topics would feed one tag",
            )
            .hint(format!(
                "name the tag from every `+` level, e.g. name = \"{example}_{}\"",
                levels.last().unwrap_or(&"value").replace('+', "value")
            ));
            ok = false;
        }
        ok
    }

    /// A tag reading a Sparkplug B metric: `group`, `edge_node`, optional `device`, `metric`.
    fn sparkplug_tag(&mut self, raw: &RawTag) -> Option<MqttTagConfig> {
        let name = raw.name.get_ref();
        for (field, v) in [
            ("topic", &raw.topic),
            ("value", &raw.value),
            ("timestamp", &raw.timestamp),
            ("quality", &raw.quality),
        ] {
            if let Some(v) = v {
                self.error(
                    format!("`{field}` does not apply to format = \"sparkplug\""),
                    span(v),
                    "not used with sparkplug",
                )
                .hint("the topic follows from group, edge_node and device; the value, time and quality from the metric");
            }
        }
        let id = |this: &mut Self, field: &str, v: &Option<Spanned<String>>, required: bool| {
            let Some(v) = v else {
                if required {
                    this.error(
                        format!("sparkplug tag `{name}` has no `{field}`"),
                        span(&raw.name),
                        "which metric?",
                    )
                    .hint("a Sparkplug B metric is named by group, edge_node, (device,) and metric, e.g. group = \"Plant1\", edge_node = \"Line3\", device = \"Press1\", metric = \"Force\"");
                }
                return None;
            };
            let text = v.get_ref();
            if text.is_empty() || text.len() > 256 || text.contains(['/', '+', '#', '\0']) {
                this.error(
                    format!("`{field}` = \"{text}\" is not a Sparkplug id"),
                    span(v),
                    "1 to 256 characters, no / + #",
                )
                .hint("copy it from the topic the edge node publishes on: spBv1.0/<group>/NDATA/<edge_node>[/<device>]");
                return None;
            }
            Some(text.clone())
        };
        let group = id(self, "group", &raw.group, true);
        let edge_node = id(self, "edge_node", &raw.edge_node, true);
        let device = id(self, "device", &raw.device, false);
        if raw.device.is_some() && device.is_none() {
            return None;
        }
        let metric = match &raw.metric {
            Some(m) if m.get_ref().is_empty() || m.get_ref().len() > 1_024 => {
                self.error("`metric` must be 1 to 1,024 characters", span(m), "length");
                None
            }
            Some(m) => Some(m.get_ref().clone()),
            None => {
                self.error(
                    format!("sparkplug tag `{name}` has no `metric`"),
                    span(&raw.name),
                    "which metric?",
                )
                .hint("add metric = \"Force\", as the birth certificate names it (folders with /, e.g. \"Press/Force\")");
                None
            }
        };
        let data_type = match &raw.data_type {
            None => None,
            Some(t) => Some(self.value_type(t)?),
        };
        let (group, edge_node, metric) = (group?, edge_node?, metric?);
        let topic = match &device {
            Some(d) => format!("spBv1.0/{group}/+/{edge_node}/{d}"),
            None => format!("spBv1.0/{group}/+/{edge_node}"),
        };
        Some(MqttTagConfig {
            name: name.clone(),
            topic,
            format: MqttFormat::Sparkplug {
                group,
                edge_node,
                device,
                metric,
            },
            data_type,
        })
    }
}
