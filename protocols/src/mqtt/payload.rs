//! Reading a tag from an MQTT message: JSON with pointers, or plain text.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use firmware_config::{MqttFormat, MqttTagConfig};
use serde_json::Value as Json;

use crate::{
    model::{Quality, Sample, TagId, Value},
    opcua::convert::fit,
};

/// A message parsed once for all the tags of its topic.
#[derive(Debug)]
pub enum Parsed {
    /// A JSON document.
    Json(Json),
    /// UTF-8 text.
    Text(String),
    /// Why it cannot be read (the same for every tag of the topic).
    Bad(String),
}

/// Parses `payload` as the topic's tags read it (`json`), within `max` bytes.
pub fn parse(payload: &[u8], json: bool, max: usize) -> Parsed {
    if payload.len() > max {
        return Parsed::Bad(format!(
            "a message of {} bytes is larger than max_payload ({max} bytes)",
            payload.len()
        ));
    }
    if json {
        match serde_json::from_slice(payload) {
            Ok(doc) => Parsed::Json(doc),
            Err(e) => Parsed::Bad(format!(
                "malformed JSON at line {}, column {}: {e}",
                e.line(),
                e.column()
            )),
        }
    } else {
        match std::str::from_utf8(payload) {
            Ok(text) => Parsed::Text(text.trim().to_owned()),
            Err(e) => Parsed::Bad(format!("the message is not UTF-8 text ({e})")),
        }
    }
}

/// The sample `tag` takes from a parsed message.
pub fn sample(tag: &MqttTagConfig, id: &TagId, parsed: &Parsed, now: SystemTime) -> Sample {
    let read = match (parsed, &tag.format) {
        (Parsed::Bad(why), _) => Err(why.clone()),
        (
            Parsed::Json(doc),
            MqttFormat::Json {
                value,
                timestamp,
                quality,
            },
        ) => json_sample(doc, value, timestamp.as_deref(), quality.as_deref()),
        (Parsed::Text(text), MqttFormat::Text) => Ok((text_value(text), None, Quality::Good)),
        _ => Err("the message does not have this tag's format".to_owned()),
    };
    finish(read, tag.data_type, id, now)
}

/// The sample a tag read from a JSON document by pointers takes (a webhook's post, an MQTT
/// JSON message): its value converted to `data_type`, its time and quality if pointed at.
pub fn json_tag_sample(
    doc: &Json,
    pointers: (&str, Option<&str>, Option<&str>),
    data_type: Option<firmware_config::UaType>,
    id: &TagId,
    now: SystemTime,
) -> Sample {
    let (value, timestamp, quality) = pointers;
    finish(
        json_sample(doc, value, timestamp, quality),
        data_type,
        id,
        now,
    )
}

/// A sample from what was read: Bad with the reason when it could not be, or did not fit.
fn finish(
    read: Result<Read, String>,
    data_type: Option<firmware_config::UaType>,
    id: &TagId,
    now: SystemTime,
) -> Sample {
    match read.and_then(|(v, t, q)| fit(v, data_type).map(|v| (v, t, q))) {
        Ok((value, source_time, quality)) => {
            let mut s = Sample::good(id.clone(), value, now);
            s.source_time = source_time;
            if let Quality::Bad(why) = quality {
                return Sample::bad(id.clone(), why, now);
            }
            s.quality = quality;
            s
        }
        Err(why) => Sample::bad(id.clone(), why, now),
    }
}

type Read = (Value, Option<SystemTime>, Quality);

fn json_sample(
    doc: &Json,
    value: &str,
    timestamp: Option<&str>,
    quality: Option<&str>,
) -> Result<Read, String> {
    let at = |p: &str| {
        doc.pointer(p)
            .ok_or_else(|| format!("the message has no `{p}`"))
    };
    let v = json_value(at(value)?).map_err(|why| format!("`{value}` is {why}"))?;
    let mut q = Quality::Good;
    let mut time = None;
    if let Some(p) = timestamp {
        match at(p).map(json_time) {
            Ok(Some(t)) => time = Some(t),
            Ok(None) | Err(_) => {
                q = Quality::Uncertain(format!("the time at `{p}` is missing or not understood"));
            }
        }
    }
    if let Some(p) = quality {
        let good = match at(p)? {
            Json::Bool(b) => *b,
            Json::String(s) => s.eq_ignore_ascii_case("good"),
            Json::Number(n) => n.as_u64() == Some(192),
            _ => false,
        };
        if !good {
            q = Quality::Bad(format!("the message says its quality is {}", at(p)?));
        }
    }
    Ok((v, time, q))
}

/// A JSON value as a tag value; objects and nulls are not values.
fn json_value(v: &Json) -> Result<Value, String> {
    Ok(match v {
        Json::Bool(b) => Value::Bool(*b),
        Json::Number(n) => match (n.as_u64(), n.as_i64(), n.as_f64()) {
            (Some(u), _, _) => Value::U64(u),
            (None, Some(i), _) => Value::I64(i),
            (None, None, Some(f)) => Value::F64(f),
            _ => return Err("a number out of range".to_owned()),
        },
        Json::String(s) => Value::Str(s.clone()),
        Json::Array(items) if items.len() <= crate::opcua::convert::MAX_ARRAY => Value::Array(
            items
                .iter()
                .map(json_value)
                .collect::<Result<_, _>>()
                .map_err(|why| format!("an array holding {why}"))?,
        ),
        Json::Array(items) => return Err(format!("an array of {} elements", items.len())),
        Json::Null => return Err("null".to_owned()),
        Json::Object(_) => return Err("an object; point `value` at one of its members".to_owned()),
    })
}

/// RFC 3339 text in UTC (`Z`), or Unix milliseconds; only 1970 ..= 2200, so a time in the
/// wrong unit (seconds, microseconds) is refused rather than believed.
fn json_time(v: &Json) -> Option<SystemTime> {
    let latest = UNIX_EPOCH + Duration::from_secs(7_258_118_400); // 2200-01-01
    let at = match v {
        Json::String(s) => humantime::parse_rfc3339(s).ok(),
        Json::Number(n) => n
            .as_u64()
            .filter(|ms| *ms >= 1_000_000_000_000) // 2001-09-09: earlier is seconds, not ms
            .and_then(|ms| UNIX_EPOCH.checked_add(Duration::from_millis(ms))),
        _ => None,
    }?;
    (at <= latest).then_some(at)
}

/// Plain text: a bool, an integer, a float, or else the text itself.
fn text_value(text: &str) -> Value {
    match text {
        "true" | "TRUE" | "True" => Value::Bool(true),
        "false" | "FALSE" | "False" => Value::Bool(false),
        _ => text
            .parse::<u64>()
            .map(Value::U64)
            .or_else(|_| text.parse::<i64>().map(Value::I64))
            .or_else(|_| {
                text.parse::<f64>()
                    .ok()
                    .filter(|f| f.is_finite())
                    .map(Value::F64)
                    .ok_or(())
            })
            .unwrap_or_else(|()| Value::Str(text.to_owned())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tag(format: MqttFormat) -> MqttTagConfig {
        MqttTagConfig {
            name: "t".into(),
            topic: "a/b".into(),
            format,
            data_type: None,
        }
    }

    fn json(value: &str, timestamp: Option<&str>, quality: Option<&str>) -> MqttTagConfig {
        tag(MqttFormat::Json {
            value: value.into(),
            timestamp: timestamp.map(Into::into),
            quality: quality.map(Into::into),
        })
    }

    fn read(tag: &MqttTagConfig, payload: &str) -> Sample {
        let parsed = parse(
            payload.as_bytes(),
            matches!(tag.format, MqttFormat::Json { .. }),
            1_000,
        );
        sample(tag, &TagId::from("s.t"), &parsed, SystemTime::now())
    }

    #[test]
    fn json_members_times_and_qualities_are_read_by_pointer() {
        let t = json("/m/temp", Some("/ts"), Some("/q"));
        let s = read(
            &t,
            r#"{"m":{"temp":21.5},"ts":"2026-11-28T10:00:00Z","q":"good"}"#,
        );
        assert_eq!(s.value, Some(Value::F64(21.5)));
        assert_eq!(s.quality, Quality::Good);
        assert_eq!(
            s.source_time,
            Some(UNIX_EPOCH + Duration::from_secs(1_795_860_000))
        );
        let s = read(&t, r#"{"m":{"temp":21},"ts":1795860000000,"q":192}"#);
        assert_eq!(s.value, Some(Value::U64(21)));
        assert_eq!(
            s.source_time,
            Some(UNIX_EPOCH + Duration::from_secs(1_795_860_000))
        );
        // Microseconds, seconds and a zone-less local time are refused, not believed: the
        // value stays, Uncertain.
        for ts in ["1795860000000000", "1795860000", "\"2026-11-28T10:00:00\""] {
            let s = read(&t, &format!(r#"{{"m":{{"temp":21}},"ts":{ts},"q":192}}"#));
            assert_eq!(s.source_time, None, "{ts}");
            assert!(matches!(s.quality, Quality::Uncertain(_)), "{ts}: {s:?}");
        }
        let bad = read(&t, r#"{"m":{"temp":21},"ts":1,"q":"bad"}"#);
        assert!(
            matches!(bad.quality, Quality::Bad(ref why) if why.contains("quality")),
            "{bad:?}"
        );
        let whole = read(&json("", None, None), "[1,-2,true]");
        assert_eq!(
            whole.value,
            Some(Value::Array(vec![
                Value::U64(1),
                Value::I64(-2),
                Value::Bool(true)
            ]))
        );
    }

    #[test]
    fn what_cannot_be_read_is_bad_with_the_reason() {
        let t = json("/temp", None, None);
        for (payload, expected) in [
            (r#"{"temp": 2"#, "malformed JSON at line 1"),
            (r#"{"pressure": 2}"#, "has no `/temp`"),
            (r#"{"temp": {"c": 2}}"#, "an object"),
            (r#"{"temp": null}"#, "null"),
        ] {
            let s = read(&t, payload);
            assert!(
                matches!(&s.quality, Quality::Bad(why) if why.contains(expected)),
                "{payload}: {s:?}"
            );
        }
        let big = parse(&[b' '; 2_000], true, 1_000);
        assert!(matches!(big, Parsed::Bad(ref why) if why.contains("larger than max_payload")));
        let mut typed = json("/n", None, None);
        typed.data_type = Some(firmware_config::UaType::U16);
        let s = read(&typed, r#"{"n": 70000}"#);
        assert!(
            matches!(&s.quality, Quality::Bad(why) if why.contains("u16")),
            "{s:?}"
        );
    }

    #[test]
    fn text_is_a_bool_a_number_or_text() {
        let t = tag(MqttFormat::Text);
        assert_eq!(read(&t, " 42\n").value, Some(Value::U64(42)));
        assert_eq!(read(&t, "-3").value, Some(Value::I64(-3)));
        assert_eq!(read(&t, "2.5").value, Some(Value::F64(2.5)));
        assert_eq!(read(&t, "true").value, Some(Value::Bool(true)));
        assert_eq!(
            read(&t, "PO-4711").value,
            Some(Value::Str("PO-4711".into()))
        );
        let parsed = parse(&[0xff, 0xfe], false, 1_000);
        let s = sample(&t, &TagId::from("s.t"), &parsed, SystemTime::now());
        assert!(matches!(&s.quality, Quality::Bad(why) if why.contains("UTF-8")));
    }
}
