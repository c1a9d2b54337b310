//! Body templates for the `https` sink: the request body an ERP or a QMS expects, rendered
//! with minijinja from the events of a request.
//!
//! The template sees `events` (the request's CloudEvents, as JSON objects), `event` (the
//! first, which is the only one with `per = "event"`), `batch` (`size`, `first_id`,
//! `last_id`), `idempotency_key` and `sink`. An undefined name is an error, not an empty
//! string: a typo (`event.data.ordr`) must not send empty orders to an ERP. Filters besides
//! minijinja's own: `tojson` (any value as JSON), `xml` (text escaped for XML), `urlencode`
//! (text form-encoded); each refuses an undefined value.
//!
//! A rendered JSON or XML body (by `content_type`) is parsed before it is sent: a template
//! that writes a string without `tojson`, or text without `xml`, fails on the event that
//! breaks it, with the line and column, rather than on the receiver.

use std::path::Path;

use firmware_config::{BodyTemplate, TemplateSource};
use minijinja::{Environment, UndefinedBehavior, Value, context};

/// Most bytes of a template file.
const MAX_TEMPLATE: u64 = 1 << 20;

/// Most instructions one rendering may run: a loop over a whole batch of large events
/// stays far below it; a template that runs away stops with an error.
const FUEL: u64 = 10_000_000;

/// The name the template has in errors.
const NAME: &str = "template";

/// Why a template could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    /// The file cannot be read.
    #[error("cannot read template file `{path}`: {why}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        why: String,
    },
    /// The template does not parse.
    #[error("the template{file} does not parse: {why}")]
    Syntax {
        /// ` in <file>`, or empty for an inline template.
        file: String,
        /// What and where.
        why: String,
    },
}

/// What kind of text a body is, by its media type: what it is checked as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Json,
    Xml,
    Other,
}

fn kind_of(content_type: &str) -> Kind {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    if essence == "application/json" || essence.ends_with("+json") {
        Kind::Json
    } else if essence.ends_with("/xml") || essence.ends_with("+xml") {
        Kind::Xml
    } else {
        Kind::Other
    }
}

/// A loaded body template.
pub struct BodyRenderer {
    env: Environment<'static>,
    /// Where the template is, for errors: ` in <file>` or empty.
    file: String,
    per_event: bool,
    content_type: String,
}

impl std::fmt::Debug for BodyRenderer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BodyRenderer")
            .field("file", &self.file)
            .field("per_event", &self.per_event)
            .field("content_type", &self.content_type)
            .finish_non_exhaustive()
    }
}

/// Escapes text for XML element content and attribute values.
fn xml(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            // XML 1.0 cannot carry other control characters, even escaped.
            c if c.is_control() && !matches!(c, '\t' | '\n' | '\r') => {}
            c => out.push(c),
        }
    }
    out
}

/// A minijinja error as one line: what, where.
fn explain(error: &minijinja::Error, file: &str) -> String {
    let what = match error.detail() {
        Some(detail) => format!("{}: {detail}", error.kind()),
        None => error.kind().to_string(),
    };
    match error.line() {
        Some(line) => format!("{what} (line {line} of the template{file})"),
        None => format!("{what} (in the template{file})"),
    }
}

impl BodyRenderer {
    /// Reads (a file relative to `base`) and compiles the template.
    ///
    /// # Errors
    /// The file cannot be read, or the template does not parse.
    pub fn load(template: &BodyTemplate, base: &Path) -> Result<Self, TemplateError> {
        let (text, file) = match &template.source {
            TemplateSource::Inline(text) => (text.clone(), String::new()),
            TemplateSource::File(path) => {
                let full = base.join(path);
                let shown = full.display().to_string();
                let read = |why: String| TemplateError::Read {
                    path: shown.clone(),
                    why,
                };
                let meta = std::fs::metadata(&full).map_err(|e| read(e.to_string()))?;
                if !meta.is_file() {
                    return Err(read("not a regular file".to_owned()));
                }
                if meta.len() > MAX_TEMPLATE {
                    return Err(read(format!(
                        "{} bytes, more than the {MAX_TEMPLATE} a template may have",
                        meta.len()
                    )));
                }
                let text = std::fs::read_to_string(&full).map_err(|e| read(e.to_string()))?;
                (text, format!(" in {shown}"))
            }
        };
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        env.set_fuel(Some(FUEL));
        // The body is not HTML: nothing is escaped unless the template says so.
        env.set_auto_escape_callback(|_| minijinja::AutoEscape::None);
        // Undefined input is an error here too (minijinja's strict mode lets a filter take it).
        let defined = |value: &Value, filter: &str| {
            if value.is_undefined() {
                Err(minijinja::Error::new(
                    minijinja::ErrorKind::UndefinedError,
                    format!("`{filter}` of an undefined value (a name that is not in the event?)"),
                ))
            } else {
                Ok(())
            }
        };
        env.add_filter("xml", move |value: Value| {
            defined(&value, "xml")?;
            Ok(xml(&value.to_string()))
        });
        env.add_filter("tojson", move |value: Value| {
            defined(&value, "tojson")?;
            serde_json::to_string(&value).map_err(|e| {
                minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, e.to_string())
            })
        });
        env.add_filter("urlencode", move |value: Value| {
            defined(&value, "urlencode")?;
            Ok(
                url::form_urlencoded::byte_serialize(value.to_string().as_bytes())
                    .collect::<String>(),
            )
        });
        env.add_template_owned(NAME, text)
            .map_err(|e| TemplateError::Syntax {
                file: file.clone(),
                why: explain(&e, &file),
            })?;
        Ok(BodyRenderer {
            env,
            file,
            per_event: template.per_event,
            content_type: template.content_type.clone(),
        })
    }

    /// One request per event.
    pub fn per_event(&self) -> bool {
        self.per_event
    }

    /// The body's media type.
    pub fn content_type(&self) -> &str {
        &self.content_type
    }

    /// Renders the body for `events` (the CloudEvents of one request, not empty), and checks
    /// that a JSON or XML body parses.
    ///
    /// # Errors
    /// The template failed on these events (an undefined name, a filter on the wrong type),
    /// or rendered a body that is not the JSON or XML its content type says.
    pub fn render(
        &self,
        sink: &str,
        events: &[serde_json::Value],
        idempotency_key: &str,
    ) -> Result<String, String> {
        let id = |e: Option<&serde_json::Value>| {
            e.and_then(|e| e["id"].as_str())
                .unwrap_or_default()
                .to_owned()
        };
        let template = self
            .env
            .get_template(NAME)
            .map_err(|e| explain(&e, &self.file))?;
        let body = template
            .render(context! {
                events => Value::from_serialize(events),
                event => Value::from_serialize(events.first()),
                batch => context! {
                    size => events.len(),
                    first_id => id(events.first()),
                    last_id => id(events.last()),
                },
                idempotency_key => idempotency_key,
                sink => sink,
            })
            .map_err(|e| explain(&e, &self.file))?;
        match kind_of(&self.content_type) {
            Kind::Json => {
                if let Err(e) = serde_json::from_str::<serde::de::IgnoredAny>(&body) {
                    return Err(format!(
                        "the template rendered a body that is not JSON ({e}); write text with `|tojson`"
                    ));
                }
            }
            Kind::Xml => {
                if let Err(e) = roxmltree::Document::parse(&body) {
                    return Err(format!(
                        "the template rendered a body that is not well-formed XML ({e}); write text with `|xml`"
                    ));
                }
            }
            Kind::Other => {}
        }
        Ok(body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn renderer(text: &str, per_event: bool, content_type: &str) -> BodyRenderer {
        BodyRenderer::load(
            &BodyTemplate {
                source: TemplateSource::Inline(text.to_owned()),
                per_event,
                content_type: content_type.to_owned(),
            },
            Path::new("."),
        )
        .unwrap()
    }

    fn count(order: &str, good: u64) -> serde_json::Value {
        serde_json::json!({
            "id": format!("id-{order}"),
            "type": "production.count",
            "data": { "order": order, "good": good, "reject": 1 },
        })
    }

    #[test]
    fn json_and_xml_bodies_render_and_parse_back_with_hostile_text_escaped() {
        let hostile = "A\"1<2>&'\\\n";
        let json = renderer(
            r#"{"order": {{ event.data.order|tojson }}, "good": {{ event.data.good }}, "key": {{ idempotency_key|tojson }}}"#,
            true,
            "application/json",
        );
        let body = json.render("erp", &[count(hostile, 7)], "k1").unwrap();
        let back: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(back["order"], hostile);
        assert_eq!(back["good"], 7);
        assert_eq!(back["key"], "k1");
        let soap = renderer(
            "<Envelope>{% for e in events %}<Confirm order=\"{{ e.data.order|xml }}\">{{ e.data.good }}</Confirm>{% endfor %}</Envelope>",
            false,
            "text/xml; charset=utf-8",
        );
        let body = soap
            .render("erp", &[count(hostile, 7), count("B2", 3)], "k")
            .unwrap();
        let doc = roxmltree::Document::parse(&body).unwrap();
        let confirms: Vec<(String, String)> = doc
            .descendants()
            .filter(|n| n.has_tag_name("Confirm"))
            .map(|n| {
                (
                    n.attribute("order").unwrap().to_owned(),
                    n.text().unwrap().to_owned(),
                )
            })
            .collect();
        // XML normalises a newline in an attribute to a space.
        assert_eq!(
            confirms,
            [
                ("A\"1<2>&'\\ ".to_owned(), "7".to_owned()),
                ("B2".to_owned(), "3".to_owned())
            ]
        );
    }

    #[test]
    fn a_typo_an_unescaped_string_and_a_syntax_error_are_errors_naming_the_line() {
        let typo = renderer(
            "{\n\"order\": {{ event.data.ordr|tojson }}\n}",
            true,
            "application/json",
        );
        let error = typo.render("erp", &[count("A1", 1)], "k").unwrap_err();
        assert!(error.contains("undefined"), "{error}");
        assert!(error.contains("line 2"), "{error}");
        let raw = renderer(
            r#"{"order": "{{ event.data.order }}"}"#,
            true,
            "application/json",
        );
        let error = raw.render("erp", &[count("A\"1", 1)], "k").unwrap_err();
        assert!(
            error.contains("not JSON") && error.contains("tojson"),
            "{error}"
        );
        let xml_raw = renderer("<a>{{ event.data.order }}</a>", true, "application/xml");
        let error = xml_raw.render("erp", &[count("<&", 1)], "k").unwrap_err();
        assert!(error.contains("not well-formed XML"), "{error}");
        let broken = BodyRenderer::load(
            &BodyTemplate {
                source: TemplateSource::Inline("{\n{% for e in events %}\n".to_owned()),
                per_event: false,
                content_type: "application/json".to_owned(),
            },
            Path::new("."),
        )
        .unwrap_err();
        assert!(broken.to_string().contains("does not parse"), "{broken}");
        // A runaway loop stops: fuel.
        let runaway = renderer(
            "{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}",
            false,
            "text/plain",
        );
        assert!(runaway.render("erp", &[count("A", 1)], "k").is_err());
    }

    #[test]
    fn a_form_body_is_url_encoded_by_the_filter() {
        let form = renderer(
            "order={{ event.data.order|urlencode }}&good={{ event.data.good }}",
            true,
            "application/x-www-form-urlencoded",
        );
        let body = form.render("erp", &[count("A 1&2", 4)], "k").unwrap();
        let pairs: Vec<(String, String)> = url::form_urlencoded::parse(body.as_bytes())
            .into_owned()
            .collect();
        assert_eq!(
            pairs,
            [
                ("order".to_owned(), "A 1&2".to_owned()),
                ("good".to_owned(), "4".to_owned())
            ]
        );
    }

    #[test]
    fn a_missing_template_file_is_named() {
        let error = BodyRenderer::load(
            &BodyTemplate {
                source: TemplateSource::File("nope/erp.json.j2".into()),
                per_event: false,
                content_type: "application/json".to_owned(),
            },
            Path::new("/etc"),
        )
        .unwrap_err();
        assert!(
            error.to_string().contains("/etc/nope/erp.json.j2"),
            "{error}"
        );
    }
}
