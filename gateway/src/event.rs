//! Events as CloudEvents 1.0 JSON. An event's `id` is a UUID assigned once, when the normalizer
//! creates it; the stored payload is the exact JSON every sink sends, on every retry and replay.

use std::time::SystemTime;

use serde::{Deserialize, Serialize, ser::SerializeStruct};

/// A CloudEvents 1.0 event in structured JSON mode.
#[derive(Debug, Clone, Deserialize)]
pub struct CloudEvent {
    /// Always "1.0".
    pub specversion: String,
    /// UUID v7, assigned once: time-ordered, so the buffer's and the receivers' id indexes
    /// grow at their end instead of at random pages (RFC 9562).
    pub id: String,
    /// `causeway://<gateway_id>/<machine>`.
    pub source: String,
    /// `production.count`, `production.state`, `quality.measurement`, ...
    #[serde(rename = "type")]
    pub event_type: String,
    /// RFC 3339, UTC, when the underlying reading was taken.
    pub time: String,
    /// The machine (production events) or characteristic (quality events).
    pub subject: String,
    /// Always "application/json".
    pub datacontenttype: String,
    /// The type's payload; see docs/schemas/. `Null` when [`CloudEvent::raw_data`] holds it.
    pub data: serde_json::Value,
    /// The payload as JSON text, written as it is (telemetry: a thousand samples as text
    /// weigh a tenth of the same as `Value`s); see [`CloudEvent::data_json`].
    #[serde(skip)]
    pub(crate) raw_data: Option<String>,
}

/// Equal when every field and the payload are, wherever the payload is held.
impl PartialEq for CloudEvent {
    fn eq(&self, other: &Self) -> bool {
        self.specversion == other.specversion
            && self.id == other.id
            && self.source == other.source
            && self.event_type == other.event_type
            && self.time == other.time
            && self.subject == other.subject
            && self.datacontenttype == other.datacontenttype
            && self.data_json() == other.data_json()
    }
}

impl Serialize for CloudEvent {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut e = s.serialize_struct("CloudEvent", 8)?;
        e.serialize_field("specversion", &self.specversion)?;
        e.serialize_field("id", &self.id)?;
        e.serialize_field("source", &self.source)?;
        e.serialize_field("type", &self.event_type)?;
        e.serialize_field("time", &self.time)?;
        e.serialize_field("subject", &self.subject)?;
        e.serialize_field("datacontenttype", &self.datacontenttype)?;
        match &self.raw_data {
            Some(raw) => {
                let raw: &serde_json::value::RawValue =
                    serde_json::from_str(raw).map_err(serde::ser::Error::custom)?;
                e.serialize_field("data", raw)?;
            }
            None => e.serialize_field("data", &self.data)?,
        }
        e.end()
    }
}

impl CloudEvent {
    /// A new event with a fresh id.
    pub fn new(
        gateway_id: &str,
        machine: &str,
        event_type: &str,
        subject: &str,
        at: SystemTime,
        data: serde_json::Value,
    ) -> Self {
        CloudEvent {
            specversion: "1.0".to_owned(),
            id: uuid::Uuid::now_v7().to_string(),
            source: format!("causeway://{gateway_id}/{machine}"),
            event_type: event_type.to_owned(),
            time: rfc3339(at),
            subject: subject.to_owned(),
            datacontenttype: "application/json".to_owned(),
            data,
            raw_data: None,
        }
    }

    /// The payload as a `Value`, wherever it is held.
    pub fn data_json(&self) -> serde_json::Value {
        match &self.raw_data {
            Some(raw) => serde_json::from_str(raw).unwrap_or(serde_json::Value::Null),
            None => self.data.clone(),
        }
    }
}

/// A tag value written as JSON: a float that is not finite is `null` (JSON has no NaN), arrays
/// element by element. Serialized straight into the text, with no `serde_json::Value` between.
pub(crate) struct ValueJson<'a>(pub &'a protocols::model::Value);

impl Serialize for ValueJson<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use protocols::model::Value;
        match self.0 {
            Value::Bool(b) => s.serialize_bool(*b),
            Value::I64(i) => s.serialize_i64(*i),
            Value::U64(u) => s.serialize_u64(*u),
            Value::F64(f) if f.is_finite() => s.serialize_f64(*f),
            Value::F64(_) => s.serialize_none(),
            Value::Str(t) => s.serialize_str(t),
            Value::Array(items) => s.collect_seq(items.iter().map(ValueJson)),
        }
    }
}

/// RFC 3339 UTC with milliseconds; a time past 9999-12-31 is written as its last millisecond.
pub fn rfc3339(at: SystemTime) -> String {
    protocols::model::rfc3339(at)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_held_as_text_is_written_as_json_and_reads_back_the_same() {
        let mut e = CloudEvent::new(
            "gw",
            "m",
            "telemetry.sample",
            "t",
            SystemTime::UNIX_EPOCH,
            serde_json::Value::Null,
        );
        e.raw_data = Some(r#"{"machine":"m","samples":[{"tag":"a","value":1.5}]}"#.to_owned());
        let text = serde_json::to_string(&e).unwrap();
        let back: CloudEvent = serde_json::from_str(&text).unwrap();
        assert_eq!(back.data, e.data_json());
        assert_eq!(back.data["samples"][0]["value"], 1.5);
        assert_eq!(back.event_type, "telemetry.sample");
        // Text that is not JSON is an error, never a broken payload.
        e.raw_data = Some("{\"machine\":".to_owned());
        assert!(serde_json::to_string(&e).is_err());
    }

    #[test]
    fn a_time_past_year_9999_is_written_not_panicked_on() {
        // A device's microseconds read as milliseconds land in year 58,000.
        let far = SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(1_795_860_000_000_000);
        assert_eq!(rfc3339(far), "9999-12-31T23:59:59.999Z");
        let now = SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(1_795_860_000_123);
        assert_eq!(rfc3339(now), "2026-11-28T10:00:00.123Z");
        // An OPC UA server's time in 1900 (humantime panics on times before 1970).
        let old = SystemTime::UNIX_EPOCH - std::time::Duration::from_secs(2_208_988_800);
        assert_eq!(rfc3339(old), "1970-01-01T00:00:00.000Z");
    }
}
