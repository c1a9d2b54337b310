//! From OPC UA's types to Causeway's: node ids, and data values to samples.
//!
//! A value is mapped, never guessed: the built-in scalar types become [`Value`]s, arrays of them
//! become [`Value::Array`], and anything else (an ExtensionObject, a vendor structure) makes the
//! sample Bad with the type named. A tag that declares a `type` only takes values that convert
//! to it without loss.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use firmware_config::{UaIdentifier, UaNodeId, UaType};
use opcua::types::{
    ByteString, DataValue, DateTime, Guid, Identifier, NodeId, StatusCode, UAString, Variant,
};

use crate::model::{Quality, Sample, TagId, Value};

/// Most elements of an array value taken; longer arrays make the sample Bad.
pub const MAX_ARRAY: usize = 10_000;

/// The async-opcua node id of a configured one.
pub fn node_id(id: &UaNodeId) -> NodeId {
    let identifier = match &id.identifier {
        UaIdentifier::Numeric(n) => Identifier::Numeric(*n),
        UaIdentifier::String(s) => Identifier::String(UAString::from(s.as_str())),
        UaIdentifier::Guid(g) => Identifier::Guid(Guid::from_bytes(*g)),
        UaIdentifier::Opaque(b) => Identifier::ByteString(ByteString::from(b.clone())),
    };
    NodeId {
        namespace: id.namespace,
        identifier,
    }
}

/// A node id as the config writes it (`ns=2;s=Name`); `None` for an identifier the config
/// cannot hold (an empty string or byte string).
pub fn config_node_id(id: &NodeId) -> Option<UaNodeId> {
    let identifier = match &id.identifier {
        Identifier::Numeric(n) => UaIdentifier::Numeric(*n),
        Identifier::String(s) => UaIdentifier::String(s.value().clone().filter(|s| !s.is_empty())?),
        Identifier::Guid(g) => UaIdentifier::Guid(*g.as_bytes()),
        Identifier::ByteString(b) => {
            UaIdentifier::Opaque(b.value.clone().filter(|b| !b.is_empty())?)
        }
    };
    Some(UaNodeId {
        namespace: id.namespace,
        identifier,
    })
}

/// Wall time of an OPC UA timestamp; `None` for a null one.
pub fn system_time(at: &DateTime) -> Option<SystemTime> {
    if at.is_null() {
        return None;
    }
    let chrono = at.as_chrono();
    let secs = chrono.timestamp();
    let nanos = Duration::from_nanos(u64::from(chrono.timestamp_subsec_nanos()));
    if secs >= 0 {
        UNIX_EPOCH.checked_add(Duration::from_secs(secs.unsigned_abs()) + nanos)
    } else {
        UNIX_EPOCH
            .checked_sub(Duration::from_secs(secs.unsigned_abs()))?
            .checked_add(nanos)
    }
}

/// The sample a data value makes for `tag`, declared as `declared`.
pub fn sample(tag: &TagId, declared: Option<UaType>, dv: DataValue, now: SystemTime) -> Sample {
    let status = dv.status.unwrap_or(StatusCode::Good);
    let source_time = dv.source_timestamp.as_ref().and_then(system_time);
    let mut sample = if status.is_bad() {
        Sample::bad(tag.clone(), status.to_string(), now)
    } else {
        let value = dv
            .value
            .as_ref()
            .map_or(Err("the server sent no value (Null)".to_owned()), |v| {
                value(v).and_then(|v| fit(v, declared))
            });
        match (value, status.is_uncertain()) {
            (Ok(v), false) => Sample::good(tag.clone(), v, now),
            (Ok(v), true) => Sample {
                tag: tag.clone(),
                value: Some(v),
                quality: Quality::Uncertain(status.to_string()),
                source_time: None,
                gateway_time: now,
            },
            (Err(why), _) => Sample::bad(tag.clone(), why, now),
        }
    };
    sample.source_time = source_time;
    sample
}

/// The value of a variant, or why it has none Causeway can use.
pub fn value(v: &Variant) -> Result<Value, String> {
    Ok(match v {
        Variant::Empty => return Err("the server sent no value (Null)".to_owned()),
        Variant::Boolean(b) => Value::Bool(*b),
        Variant::SByte(n) => Value::I64(i64::from(*n)),
        Variant::Int16(n) => Value::I64(i64::from(*n)),
        Variant::Int32(n) => Value::I64(i64::from(*n)),
        Variant::Int64(n) => Value::I64(*n),
        Variant::Byte(n) => Value::U64(u64::from(*n)),
        Variant::UInt16(n) => Value::U64(u64::from(*n)),
        Variant::UInt32(n) => Value::U64(u64::from(*n)),
        Variant::UInt64(n) => Value::U64(*n),
        Variant::Float(f) => Value::F64(f64::from(*f)),
        Variant::Double(f) => Value::F64(*f),
        Variant::String(s) => Value::Str(s.value().clone().unwrap_or_default()),
        Variant::LocalizedText(t) => Value::Str(t.text.value().clone().unwrap_or_default()),
        Variant::Guid(g) => Value::Str(g.to_string()),
        Variant::StatusCode(c) => Value::Str(c.to_string()),
        Variant::NodeId(id) => Value::Str(id.to_string()),
        Variant::QualifiedName(q) => Value::Str(q.name.value().clone().unwrap_or_default()),
        Variant::ByteString(b) => Value::Str(b.as_base64()),
        Variant::DateTime(d) => match system_time(d) {
            Some(t) => Value::Str(crate::model::rfc3339(t)),
            None => return Err("the server sent a null DateTime".to_owned()),
        },
        Variant::Array(array) => {
            if array.values.len() > MAX_ARRAY {
                return Err(format!(
                    "an array of {} elements is longer than {MAX_ARRAY}",
                    array.values.len()
                ));
            }
            let values = array
                .values
                .iter()
                .map(value)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|why| format!("an array element cannot be read: {why}"))?;
            Value::Array(values)
        }
        other => {
            let kind = match other.type_id() {
                opcua::types::VariantTypeId::Scalar(s) => format!("{s:?}"),
                opcua::types::VariantTypeId::Array(s, _) => format!("array of {s:?}"),
                opcua::types::VariantTypeId::Empty => "Null".to_owned(),
            };
            let detail = match other {
                Variant::ExtensionObject(o) if !o.is_null() => match o.type_name() {
                    Some(name) => format!(" ({name})"),
                    None => format!(" (encoding {})", o.binary_type_id()),
                },
                _ => String::new(),
            };
            return Err(format!(
                "values of type {kind}{detail} cannot be decoded; read a scalar member of it instead"
            ));
        }
    })
}

/// `v` as the declared type, when it converts without loss. A float stays an f64 whether `f32`
/// or `f64` is declared (nothing is narrowed).
pub fn fit(v: Value, declared: Option<UaType>) -> Result<Value, String> {
    let Some(ty) = declared else { return Ok(v) };
    let wrong = |v: &Value| {
        Err(format!(
            "the node sent {} which is not a {} (the tag's type)",
            describe(v),
            ty.name()
        ))
    };
    let range: Option<(i128, i128)> = match ty {
        UaType::I8 => Some((i8::MIN.into(), i8::MAX.into())),
        UaType::U8 => Some((0, u8::MAX.into())),
        UaType::I16 => Some((i16::MIN.into(), i16::MAX.into())),
        UaType::U16 => Some((0, u16::MAX.into())),
        UaType::I32 => Some((i32::MIN.into(), i32::MAX.into())),
        UaType::U32 => Some((0, u32::MAX.into())),
        UaType::I64 => Some((i64::MIN.into(), i64::MAX.into())),
        UaType::U64 => Some((0, u64::MAX.into())),
        _ => None,
    };
    match (ty, &v, range) {
        (UaType::Bool, Value::Bool(_), _) | (UaType::String, Value::Str(_), _) => Ok(v),
        (UaType::F32 | UaType::F64, Value::F64(_), _) => Ok(v),
        // Integers beyond 2^53 do not survive a float: refused rather than rounded.
        (UaType::F32 | UaType::F64, Value::I64(n), _) if n.unsigned_abs() <= 1 << 53 => {
            Ok(Value::F64(*n as f64))
        }
        (UaType::F32 | UaType::F64, Value::U64(n), _) if *n <= 1 << 53 => Ok(Value::F64(*n as f64)),
        (_, Value::I64(n), Some((lo, hi))) if (lo..=hi).contains(&i128::from(*n)) => {
            Ok(if ty.counter_bits().is_some() {
                Value::U64(n.unsigned_abs())
            } else {
                v
            })
        }
        (_, Value::U64(n), Some((lo, hi))) if (lo..=hi).contains(&i128::from(*n)) => {
            Ok(if ty.counter_bits().is_some() {
                v
            } else {
                Value::I64(i64::try_from(*n).unwrap_or(i64::MAX))
            })
        }
        _ => wrong(&v),
    }
}

fn describe(v: &Value) -> String {
    match v {
        Value::Bool(b) => format!("the Boolean {b}"),
        Value::I64(n) => format!("the signed integer {n}"),
        Value::U64(n) => format!("the unsigned integer {n}"),
        Value::F64(f) => format!("the floating-point number {f}"),
        Value::Str(s) => format!("the string {s:?}"),
        Value::Array(a) => format!("an array of {} elements", a.len()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opcua::types::{Array, ExtensionObject, VariantScalarTypeId};

    fn tag() -> TagId {
        TagId::from("ua.t")
    }

    fn dv(v: impl Into<Variant>, status: StatusCode) -> DataValue {
        DataValue {
            value: Some(v.into()),
            status: Some(status),
            source_timestamp: Some(DateTime::now()),
            ..DataValue::default()
        }
    }

    #[test]
    fn built_in_scalars_map_to_values() {
        let now = SystemTime::now();
        for (v, expected) in [
            (Variant::Boolean(true), Value::Bool(true)),
            (Variant::SByte(-3), Value::I64(-3)),
            (Variant::Byte(200), Value::U64(200)),
            (Variant::Int16(-300), Value::I64(-300)),
            (Variant::UInt16(60_000), Value::U64(60_000)),
            (Variant::Int32(-70_000), Value::I64(-70_000)),
            (Variant::UInt32(4_000_000_000), Value::U64(4_000_000_000)),
            (Variant::Int64(i64::MIN), Value::I64(i64::MIN)),
            (Variant::UInt64(u64::MAX), Value::U64(u64::MAX)),
            (Variant::Float(1.5), Value::F64(1.5)),
            (Variant::Double(-2.25), Value::F64(-2.25)),
            (Variant::from("PO-7"), Value::Str("PO-7".into())),
        ] {
            let s = sample(&tag(), None, dv(v.clone(), StatusCode::Good), now);
            assert_eq!(s.value, Some(expected), "{v:?}");
            assert_eq!(s.quality, Quality::Good);
            assert!(s.source_time.is_some());
        }
    }

    #[test]
    fn arrays_map_to_arrays_and_print_as_json() {
        let array = Array::new(
            VariantScalarTypeId::Int32,
            vec![Variant::Int32(1), Variant::Int32(-2)],
        )
        .expect("a valid array");
        let s = sample(
            &tag(),
            None,
            dv(Variant::Array(Box::new(array)), StatusCode::Good),
            SystemTime::now(),
        );
        let v = s.value.expect("a value");
        assert_eq!(v, Value::Array(vec![Value::I64(1), Value::I64(-2)]));
        assert_eq!(v.to_string(), "[1,-2]");
    }

    #[test]
    fn status_codes_keep_their_names() {
        let now = SystemTime::now();
        let bad = sample(&tag(), None, dv(1.0, StatusCode::BadNodeIdUnknown), now);
        assert_eq!(bad.value, None);
        assert_eq!(bad.quality, Quality::Bad("BadNodeIdUnknown".into()));
        let uncertain = sample(
            &tag(),
            None,
            dv(1.0, StatusCode::UncertainLastUsableValue),
            now,
        );
        assert_eq!(uncertain.value, Some(Value::F64(1.0)));
        assert_eq!(
            uncertain.quality,
            Quality::Uncertain("UncertainLastUsableValue".into())
        );
    }

    #[test]
    fn structures_are_bad_with_their_type_named() {
        let s = sample(
            &tag(),
            None,
            dv(
                Variant::ExtensionObject(ExtensionObject::null()),
                StatusCode::Good,
            ),
            SystemTime::now(),
        );
        let Quality::Bad(why) = s.quality else {
            panic!("{s:?}")
        };
        assert!(why.contains("ExtensionObject"), "{why}");
    }

    #[test]
    fn a_declared_type_takes_only_values_that_fit() {
        assert_eq!(fit(Value::I64(5), Some(UaType::U32)), Ok(Value::U64(5)));
        assert_eq!(fit(Value::U64(5), Some(UaType::I16)), Ok(Value::I64(5)));
        assert_eq!(fit(Value::U64(7), Some(UaType::F64)), Ok(Value::F64(7.0)));
        assert!(fit(Value::U64((1 << 53) + 1), Some(UaType::F64)).is_err());
        assert!(fit(Value::I64(-1), Some(UaType::U32)).is_err());
        assert!(fit(Value::U64(70_000), Some(UaType::U16)).is_err());
        let e = fit(Value::F64(3.5), Some(UaType::U32)).unwrap_err();
        assert!(e.contains("3.5") && e.contains("u32"), "{e}");
        assert!(fit(Value::Str("x".into()), Some(UaType::Bool)).is_err());
        assert_eq!(fit(Value::Bool(true), None), Ok(Value::Bool(true)));
    }

    #[test]
    fn node_ids_convert_both_ways() {
        for text in [
            "ns=2;s=Press.Force",
            "i=2258",
            "ns=3;g=72962b91-fa75-4ae6-8d28-b404dc7daf63",
            "ns=1;b=AAEC/w==",
        ] {
            let ours = UaNodeId::parse(text).expect(text);
            let theirs = node_id(&ours);
            assert_eq!(theirs.to_string().to_lowercase(), text.to_lowercase());
            assert_eq!(config_node_id(&theirs), Some(ours));
        }
    }
}
