//! Decoding registers into values: data type, byte and word order, scale and offset.
//!
//! Letters name bytes from most significant (A): ABCD is big-endian across and within registers
//! (the Modbus default); CDAB swaps register order; BADC swaps the bytes in each register; DCBA
//! does both. Registers arrive from the wire as big-endian `u16`s.

use firmware_config::{DataType, ModbusTagConfig, WordOrder};
use heapless::Vec as FixedVec;

use crate::model::Value;

/// Bytes of the largest numeric type (4 registers).
const MAX_NUMERIC_BYTES: usize = 8;

/// Why registers could not become a value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Fewer registers than the type needs (a short response).
    #[error("expected {expected} registers, got {got}")]
    Short {
        /// Registers the type needs.
        expected: usize,
        /// Registers received.
        got: usize,
    },
    /// A float register pair holds NaN or infinity.
    #[error("the registers hold {0}, not a finite number")]
    NotFinite(&'static str),
}

/// Orders the bytes of `words` big-endian according to `order`.
fn ordered_bytes<const N: usize>(words: &[u16], order: WordOrder) -> FixedVec<u8, N> {
    let mut bytes = FixedVec::new();
    let mut push = |w: u16| {
        let [hi, lo] = w.to_be_bytes();
        let pair = if order.swaps_bytes() {
            [lo, hi]
        } else {
            [hi, lo]
        };
        // Callers size N for the words they pass.
        let _ = bytes.extend_from_slice(&pair);
    };
    if order.swaps_words() {
        words.iter().rev().copied().for_each(&mut push);
    } else {
        words.iter().copied().for_each(&mut push);
    }
    bytes
}

fn be_u64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b))
}

/// Decodes a register tag from exactly its registers (`words.len() >= width`).
///
/// # Errors
/// [`DecodeError`] on a short read or a non-finite float.
pub fn decode_registers(tag: &ModbusTagConfig, words: &[u16]) -> Result<Value, DecodeError> {
    let width = usize::from(tag.data_type.width());
    if words.len() < width {
        return Err(DecodeError::Short {
            expected: width,
            got: words.len(),
        });
    }
    let words = &words[..width];
    let raw = match tag.data_type {
        DataType::Bit(bit) => {
            let word = ordered_bytes::<2>(words, tag.order);
            return Ok(Value::Bool(
                (u16::from_be_bytes([word[0], word[1]]) >> bit) & 1 == 1,
            ));
        }
        DataType::Bool => return Ok(Value::Bool(words[0] != 0)),
        DataType::String(_) => {
            let bytes: Vec<u8> = words
                .iter()
                .flat_map(|w| {
                    let [hi, lo] = w.to_be_bytes();
                    if tag.order.swaps_bytes() {
                        [lo, hi]
                    } else {
                        [hi, lo]
                    }
                })
                .collect();
            let end = bytes.iter().position(|b| *b == 0).unwrap_or(bytes.len());
            let text = String::from_utf8_lossy(&bytes[..end]);
            return Ok(Value::Str(text.trim_end().to_owned()));
        }
        _ => {
            let bytes = ordered_bytes::<MAX_NUMERIC_BYTES>(words, tag.order);
            let bits = be_u64(&bytes);
            match tag.data_type {
                DataType::U16 | DataType::U32 | DataType::U64 => Value::U64(bits),
                DataType::I16 => Value::I64(i64::from(bits as u16 as i16)),
                DataType::I32 => Value::I64(i64::from(bits as u32 as i32)),
                DataType::I64 => Value::I64(bits as i64),
                // Through the shortest decimal form: 47.7f32 reads as 47.7, not 47.70000076293945.
                DataType::F32 => finite(shortest_f64(f32::from_bits(bits as u32)))?,
                DataType::F64 => finite(f64::from_bits(bits))?,
                DataType::Bool | DataType::Bit(_) | DataType::String(_) => {
                    unreachable!("handled above")
                }
            }
        }
    };
    Ok(scaled(tag, raw))
}

/// The f64 nearest to the shortest decimal that round-trips `v`.
fn shortest_f64(v: f32) -> f64 {
    v.to_string().parse().unwrap_or(f64::from(v))
}

fn finite(v: f64) -> Result<Value, DecodeError> {
    if v.is_nan() {
        Err(DecodeError::NotFinite("NaN"))
    } else if v.is_infinite() {
        Err(DecodeError::NotFinite("infinity"))
    } else {
        Ok(Value::F64(v))
    }
}

fn scaled(tag: &ModbusTagConfig, raw: Value) -> Value {
    if tag.scale.is_none() && tag.offset.is_none() {
        return raw;
    }
    let v = raw.as_f64().unwrap_or_default();
    Value::F64(v * tag.scale.unwrap_or(1.0) + tag.offset.unwrap_or(0.0))
}

/// Two big-endian bytes as the register a device with `order` would hold.
fn to_word(pair: [u8; 2], order: WordOrder) -> u16 {
    if order.swaps_bytes() {
        u16::from_le_bytes(pair)
    } else {
        u16::from_be_bytes(pair)
    }
}

/// Encodes a value the way [`decode_registers`] reads it: the simulator and tests use this to
/// serve what a PLC would.
pub fn encode_registers(data_type: DataType, order: WordOrder, value: &Value) -> Vec<u16> {
    let width = usize::from(data_type.width());
    let bits: u64 = match (data_type, value) {
        (DataType::F32, v) => u64::from((v.as_f64().unwrap_or_default() as f32).to_bits()),
        (DataType::F64, v) => v.as_f64().unwrap_or_default().to_bits(),
        (DataType::String(_), Value::Str(s)) => {
            let mut bytes = s.as_bytes().to_vec();
            bytes.resize(width * 2, 0);
            return bytes
                .chunks(2)
                .map(|c| to_word([c[0], c[1]], order))
                .collect();
        }
        (_, Value::I64(v)) => *v as u64,
        (_, v) => v.as_u64().unwrap_or_default(),
    };
    let be = bits.to_be_bytes();
    let bytes = &be[MAX_NUMERIC_BYTES - width * 2..];
    let mut words: Vec<u16> = bytes
        .chunks(2)
        .map(|c| to_word([c[0], c[1]], order))
        .collect();
    if order.swaps_words() {
        words.reverse();
    }
    words
}

#[cfg(test)]
mod tests {
    use firmware_config::RegisterKind;
    use proptest::prelude::*;

    use super::*;

    fn tag(data_type: DataType, order: WordOrder) -> ModbusTagConfig {
        ModbusTagConfig {
            name: "t".into(),
            kind: RegisterKind::Holding,
            address: 0,
            data_type,
            order,
            scale: None,
            offset: None,
        }
    }

    #[test]
    fn a_u32_decodes_in_all_four_orders() {
        // 0x11223344 as each order lays it out on the wire.
        let cases = [
            (WordOrder::Abcd, [0x1122, 0x3344]),
            (WordOrder::Cdab, [0x3344, 0x1122]),
            (WordOrder::Badc, [0x2211, 0x4433]),
            (WordOrder::Dcba, [0x4433, 0x2211]),
        ];
        for (order, words) in cases {
            assert_eq!(
                decode_registers(&tag(DataType::U32, order), &words),
                Ok(Value::U64(0x1122_3344)),
                "{order:?}"
            );
        }
    }

    #[test]
    fn floats_signed_values_and_scaling_decode() {
        let f = 123.5f32.to_bits();
        let words = [(f >> 16) as u16, f as u16];
        assert_eq!(
            decode_registers(&tag(DataType::F32, WordOrder::Abcd), &words),
            Ok(Value::F64(123.5))
        );
        assert_eq!(
            decode_registers(&tag(DataType::I16, WordOrder::Abcd), &[0xFFFE]),
            Ok(Value::I64(-2))
        );
        assert_eq!(
            decode_registers(&tag(DataType::I32, WordOrder::Abcd), &[0xFFFF, 0xFFFF]),
            Ok(Value::I64(-1))
        );
        let mut scaled_tag = tag(DataType::U16, WordOrder::Abcd);
        scaled_tag.scale = Some(0.1);
        scaled_tag.offset = Some(-5.0);
        let Ok(Value::F64(v)) = decode_registers(&scaled_tag, &[500]) else {
            panic!("scaled values are floats")
        };
        assert!((v - 45.0).abs() < 1e-9);
        let d = 2.25f64.to_bits();
        let words = [
            (d >> 48) as u16,
            (d >> 32) as u16,
            (d >> 16) as u16,
            d as u16,
        ];
        assert_eq!(
            decode_registers(&tag(DataType::F64, WordOrder::Abcd), &words),
            Ok(Value::F64(2.25))
        );
    }

    #[test]
    fn bits_strings_and_bad_floats_decode() {
        assert_eq!(
            decode_registers(&tag(DataType::Bit(3), WordOrder::Abcd), &[0b1000]),
            Ok(Value::Bool(true))
        );
        assert_eq!(
            decode_registers(&tag(DataType::Bit(2), WordOrder::Abcd), &[0b1000]),
            Ok(Value::Bool(false))
        );
        let words = [u16::from_be_bytes(*b"PO"), u16::from_be_bytes(*b"-7"), 0];
        assert_eq!(
            decode_registers(&tag(DataType::String(3), WordOrder::Abcd), &words),
            Ok(Value::Str("PO-7".into()))
        );
        let nan = f32::NAN.to_bits();
        assert_eq!(
            decode_registers(
                &tag(DataType::F32, WordOrder::Abcd),
                &[(nan >> 16) as u16, nan as u16]
            ),
            Err(DecodeError::NotFinite("NaN"))
        );
        assert_eq!(
            decode_registers(&tag(DataType::U64, WordOrder::Abcd), &[1, 2]),
            Err(DecodeError::Short {
                expected: 4,
                got: 2
            })
        );
    }

    fn orders() -> impl Strategy<Value = WordOrder> {
        prop_oneof![
            Just(WordOrder::Abcd),
            Just(WordOrder::Cdab),
            Just(WordOrder::Badc),
            Just(WordOrder::Dcba)
        ]
    }

    proptest! {
        #[test]
        fn encode_then_decode_is_identity_for_integers(v in any::<u64>(), order in orders()) {
            let words = encode_registers(DataType::U64, order, &Value::U64(v));
            prop_assert_eq!(decode_registers(&tag(DataType::U64, order), &words), Ok(Value::U64(v)));
            let small = v as u32;
            let words = encode_registers(DataType::U32, order, &Value::U64(u64::from(small)));
            prop_assert_eq!(decode_registers(&tag(DataType::U32, order), &words), Ok(Value::U64(u64::from(small))));
        }

        #[test]
        fn decoding_any_registers_never_panics(words in proptest::collection::vec(any::<u16>(), 0..6), order in orders()) {
            for t in [DataType::U16, DataType::I32, DataType::F32, DataType::F64, DataType::I64, DataType::String(3), DataType::Bit(15)] {
                let _ = decode_registers(&tag(t, order), &words);
            }
        }
    }
}
