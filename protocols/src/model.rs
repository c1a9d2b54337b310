//! The data every driver emits, whatever the protocol.

use std::{fmt, sync::Arc, time::SystemTime};

/// `<source>.<tag>`, as rules name it.
pub type TagId = Arc<str>;

/// A decoded tag value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// Coils, discrete inputs, register bits.
    Bool(bool),
    /// Signed integers.
    I64(i64),
    /// Unsigned integers.
    U64(u64),
    /// Floats and scaled values.
    F64(f64),
    /// Strings.
    Str(String),
    /// Arrays (OPC UA array values), shown as JSON.
    Array(Vec<Value>),
}

impl Value {
    /// As a float, when numeric (bools are 0 and 1).
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Bool(b) => Some(f64::from(u8::from(*b))),
            Value::I64(v) => Some(*v as f64),
            Value::U64(v) => Some(*v as f64),
            Value::F64(v) => Some(*v),
            Value::Str(_) | Value::Array(_) => None,
        }
    }

    /// As an integer code, when integral (bools are 0 and 1).
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Value::Bool(b) => Some(i64::from(*b)),
            Value::I64(v) => Some(*v),
            Value::U64(v) => i64::try_from(*v).ok(),
            Value::F64(_) | Value::Str(_) | Value::Array(_) => None,
        }
    }

    /// As an unsigned counter reading.
    pub fn as_u64(&self) -> Option<u64> {
        match self {
            Value::U64(v) => Some(*v),
            Value::I64(v) => u64::try_from(*v).ok(),
            Value::Bool(b) => Some(u64::from(*b)),
            Value::F64(_) | Value::Str(_) | Value::Array(_) => None,
        }
    }

    /// As a bool: bools as they are, numbers non-zero.
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Value::Bool(b) => Some(*b),
            Value::I64(v) => Some(*v != 0),
            Value::U64(v) => Some(*v != 0),
            Value::F64(v) => Some(*v != 0.0),
            Value::Str(_) | Value::Array(_) => None,
        }
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Bool(v) => write!(f, "{v}"),
            Value::I64(v) => write!(f, "{v}"),
            Value::U64(v) => write!(f, "{v}"),
            Value::F64(v) => write!(f, "{v}"),
            Value::Str(v) => write!(f, "{v:?}"),
            Value::Array(items) => {
                write!(f, "[")?;
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        write!(f, ",")?;
                    }
                    match item {
                        Value::F64(x) if !x.is_finite() => write!(f, "null")?,
                        Value::Str(text) => json_string(f, text)?,
                        other => write!(f, "{other}")?,
                    }
                }
                write!(f, "]")
            }
        }
    }
}

/// RFC 3339 UTC with milliseconds; a time past 9999-12-31, which RFC 3339 cannot write, is
/// written as that year's last millisecond (formatting it would fail, and `to_string` panic),
/// and one before 1970 (an OPC UA server's, say) as 1970's first (humantime panics on it).
pub fn rfc3339(at: SystemTime) -> String {
    use std::fmt::Write as _;
    let last = SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(253_402_300_799_999);
    let mut out = String::new();
    let at = at.clamp(SystemTime::UNIX_EPOCH, last);
    if write!(out, "{}", humantime::format_rfc3339_millis(at)).is_err() {
        out = "9999-12-31T23:59:59.999Z".to_owned();
    }
    out
}

/// `text` as a JSON string literal.
fn json_string(f: &mut fmt::Formatter<'_>, text: &str) -> fmt::Result {
    write!(f, "\"")?;
    for c in text.chars() {
        match c {
            '"' => write!(f, "\\\"")?,
            '\\' => write!(f, "\\\\")?,
            c if u32::from(c) < 0x20 => write!(f, "\\u{:04x}", u32::from(c))?,
            c => write!(f, "{c}")?,
        }
    }
    write!(f, "\"")
}

/// How far a sample can be trusted. The text says why, for logs and operators.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Quality {
    /// Read and decoded as configured.
    Good,
    /// Read, but the device or driver flags doubt.
    Uncertain(String),
    /// Not read: timeout, exception, lost connection. The sample carries no value.
    Bad(String),
}

impl Quality {
    /// Whether the value can be used.
    pub fn is_good(&self) -> bool {
        matches!(self, Quality::Good)
    }
}

/// One tag's reading.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Which tag.
    pub tag: TagId,
    /// `None` exactly when the quality is Bad.
    pub value: Option<Value>,
    /// Good, Uncertain or Bad with the reason.
    pub quality: Quality,
    /// When the device says it measured, if it says.
    pub source_time: Option<SystemTime>,
    /// When the gateway read it.
    pub gateway_time: SystemTime,
}

impl Sample {
    /// A good reading.
    pub fn good(tag: TagId, value: Value, at: SystemTime) -> Self {
        Sample {
            tag,
            value: Some(value),
            quality: Quality::Good,
            source_time: None,
            gateway_time: at,
        }
    }

    /// A failed reading, with the reason.
    pub fn bad(tag: TagId, why: impl Into<String>, at: SystemTime) -> Self {
        Sample {
            tag,
            value: None,
            quality: Quality::Bad(why.into()),
            source_time: None,
            gateway_time: at,
        }
    }
}

/// The samples of one poll cycle (or one subscription notification) of one source. Rules see a
/// whole batch at once, so a trigger and the value it samples, read together, are seen together.
#[derive(Debug, Clone)]
pub struct SampleBatch {
    /// The source's name.
    pub source: Arc<str>,
    /// The samples, in the order the source's tags are declared.
    pub samples: Vec<Sample>,
}
