//! Known answers for every Modbus type and order, from an encoder that is not ours.
//!
//! The expected registers were produced once with Python's `struct` module (CPython 3.11) and
//! are recorded here as literals. `ABCD` is `struct.pack('>' + fmt, v)` cut into big-endian
//! 16-bit words; `CDAB` is those words in reverse order; `BADC` is each of those words
//! byte-swapped; `DCBA` is `struct.pack('<' + fmt, v)` cut into big-endian words. For 64-bit
//! values, `CDAB` reverses all four words (little-endian word order), as documented in
//! docs/configuration.md. The command:
//!
//! ```text
//! python3 - <<'PY'
//! import struct
//! def words(b): return [b[i]<<8|b[i+1] for i in range(0,len(b),2)]
//! def layouts(fmt, v):
//!     be=struct.pack('>'+fmt, v); le=struct.pack('<'+fmt, v)
//!     abcd=words(be); badc=[((w&0xff)<<8)|(w>>8) for w in abcd]
//!     return {"Abcd":abcd,"Cdab":abcd[::-1],"Badc":badc,"Dcba":words(le)}
//! cases=[("U16","H",51234),("I16","h",-12345),("U32","I",0xDEADBEEF),("I32","i",-123456789),
//!        ("U64","Q",0x0123456789ABCDEF),("I64","q",-1234567890123456789),("F32","f",47.7),
//!        ("F64","d",-1234.5678)]
//! for t,fmt,v in cases:
//!     for o,w in layouts(fmt,v).items():
//!         print(f"(DataType::{t}, WordOrder::{o}, &[{', '.join('0x%04X'%x for x in w)}]),")
//! for s,n in [("PO-4711",4),("ABC",2),("XY  ",3),("Z",1)]:
//!     b=s.encode().ljust(2*n,b'\0'); w=words(b); sw=[((x&0xff)<<8)|(x>>8) for x in w]
//!     print(f'("{s}", {n}, &[{", ".join("0x%04X"%x for x in w)}], &[{", ".join("0x%04X"%x for x in sw)}]),')
//! PY
//! ```

use firmware_config::{DataType, ModbusTagConfig, RegisterKind, WordOrder};
use protocols::{
    modbus::codec::{decode_registers, encode_registers},
    model::Value,
};

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

#[rustfmt::skip]
const NUMBERS: &[(DataType, WordOrder, &[u16])] = &[
    (DataType::U16, WordOrder::Abcd, &[0xC822]),
    (DataType::U16, WordOrder::Cdab, &[0xC822]),
    (DataType::U16, WordOrder::Badc, &[0x22C8]),
    (DataType::U16, WordOrder::Dcba, &[0x22C8]),
    (DataType::I16, WordOrder::Abcd, &[0xCFC7]),
    (DataType::I16, WordOrder::Cdab, &[0xCFC7]),
    (DataType::I16, WordOrder::Badc, &[0xC7CF]),
    (DataType::I16, WordOrder::Dcba, &[0xC7CF]),
    (DataType::U32, WordOrder::Abcd, &[0xDEAD, 0xBEEF]),
    (DataType::U32, WordOrder::Cdab, &[0xBEEF, 0xDEAD]),
    (DataType::U32, WordOrder::Badc, &[0xADDE, 0xEFBE]),
    (DataType::U32, WordOrder::Dcba, &[0xEFBE, 0xADDE]),
    (DataType::I32, WordOrder::Abcd, &[0xF8A4, 0x32EB]),
    (DataType::I32, WordOrder::Cdab, &[0x32EB, 0xF8A4]),
    (DataType::I32, WordOrder::Badc, &[0xA4F8, 0xEB32]),
    (DataType::I32, WordOrder::Dcba, &[0xEB32, 0xA4F8]),
    (DataType::U64, WordOrder::Abcd, &[0x0123, 0x4567, 0x89AB, 0xCDEF]),
    (DataType::U64, WordOrder::Cdab, &[0xCDEF, 0x89AB, 0x4567, 0x0123]),
    (DataType::U64, WordOrder::Badc, &[0x2301, 0x6745, 0xAB89, 0xEFCD]),
    (DataType::U64, WordOrder::Dcba, &[0xEFCD, 0xAB89, 0x6745, 0x2301]),
    (DataType::I64, WordOrder::Abcd, &[0xEEDD, 0xEF0B, 0x8216, 0x7EEB]),
    (DataType::I64, WordOrder::Cdab, &[0x7EEB, 0x8216, 0xEF0B, 0xEEDD]),
    (DataType::I64, WordOrder::Badc, &[0xDDEE, 0x0BEF, 0x1682, 0xEB7E]),
    (DataType::I64, WordOrder::Dcba, &[0xEB7E, 0x1682, 0x0BEF, 0xDDEE]),
    (DataType::F32, WordOrder::Abcd, &[0x423E, 0xCCCD]),
    (DataType::F32, WordOrder::Cdab, &[0xCCCD, 0x423E]),
    (DataType::F32, WordOrder::Badc, &[0x3E42, 0xCDCC]),
    (DataType::F32, WordOrder::Dcba, &[0xCDCC, 0x3E42]),
    (DataType::F64, WordOrder::Abcd, &[0xC093, 0x4A45, 0x6D5C, 0xFAAD]),
    (DataType::F64, WordOrder::Cdab, &[0xFAAD, 0x6D5C, 0x4A45, 0xC093]),
    (DataType::F64, WordOrder::Badc, &[0x93C0, 0x454A, 0x5C6D, 0xADFA]),
    (DataType::F64, WordOrder::Dcba, &[0xADFA, 0x5C6D, 0x454A, 0x93C0]),
];

/// The value each type was encoded from.
fn expected(data_type: DataType) -> Value {
    match data_type {
        DataType::U16 => Value::U64(51234),
        DataType::I16 => Value::I64(-12345),
        DataType::U32 => Value::U64(0xDEAD_BEEF),
        DataType::I32 => Value::I64(-123_456_789),
        DataType::U64 => Value::U64(0x0123_4567_89AB_CDEF),
        DataType::I64 => Value::I64(-1_234_567_890_123_456_789),
        DataType::F32 => Value::F64(47.7),
        DataType::F64 => Value::F64(-1234.5678),
        other => panic!("no known answer for {other:?}"),
    }
}

#[test]
fn every_numeric_type_decodes_and_encodes_in_every_order_as_python_struct_lays_it_out() {
    for (data_type, order, words) in NUMBERS {
        let value = expected(*data_type);
        assert_eq!(
            decode_registers(&tag(*data_type, *order), words),
            Ok(value.clone()),
            "decode {data_type:?} {order:?}"
        );
        assert_eq!(
            encode_registers(*data_type, *order, &value),
            words.to_vec(),
            "encode {data_type:?} {order:?}"
        );
    }
    assert_eq!(NUMBERS.len(), 8 * 4, "eight types, four orders");
}

#[rustfmt::skip]
const STRINGS: &[(&str, u16, &[u16], &[u16])] = &[
    // (text, registers, ABCD words, byte-swapped words)
    ("PO-4711", 4, &[0x504F, 0x2D34, 0x3731, 0x3100], &[0x4F50, 0x342D, 0x3137, 0x0031]),
    ("ABC", 2, &[0x4142, 0x4300], &[0x4241, 0x0043]),
    ("XY  ", 3, &[0x5859, 0x2020, 0x0000], &[0x5958, 0x2020, 0x0000]),
    ("Z", 1, &[0x5A00], &[0x005A]),
];

#[test]
fn strings_with_odd_lengths_nul_padding_and_trailing_spaces_decode_in_both_byte_orders() {
    for (text, registers, abcd, swapped) in STRINGS {
        // Trailing spaces are trimmed, NUL padding ends the text.
        let want = Value::Str(text.trim_end().to_owned());
        let string = DataType::String(*registers);
        assert_eq!(
            decode_registers(&tag(string, WordOrder::Abcd), abcd),
            Ok(want.clone()),
            "{text:?}"
        );
        assert_eq!(
            decode_registers(&tag(string, WordOrder::Badc), swapped),
            Ok(want.clone()),
            "{text:?} swapped"
        );
        // Strings are per register: word order does not apply.
        assert_eq!(
            decode_registers(&tag(string, WordOrder::Cdab), abcd),
            Ok(want.clone()),
            "{text:?} CDAB"
        );
        assert_eq!(
            encode_registers(string, WordOrder::Abcd, &Value::Str((*text).to_owned())),
            abcd.to_vec()
        );
        assert_eq!(
            encode_registers(string, WordOrder::Badc, &Value::Str((*text).to_owned())),
            swapped.to_vec()
        );
    }
}

#[test]
fn bits_of_a_register_are_counted_from_the_least_significant_in_both_byte_orders() {
    // 0x0003 = struct.pack('>H', 3) = b'\x00\x03'; byte-swapped on the wire: 0x0300. Bits 0
    // and 1 are set; counted from the most significant end they would be 14 and 15.
    for (order, word) in [(WordOrder::Abcd, 0x0003u16), (WordOrder::Badc, 0x0300)] {
        let bit = |n| decode_registers(&tag(DataType::Bit(n), order), &[word]);
        assert_eq!(bit(0), Ok(Value::Bool(true)), "{order:?}");
        assert_eq!(bit(1), Ok(Value::Bool(true)), "{order:?}");
        for n in 2..16 {
            assert_eq!(bit(n), Ok(Value::Bool(false)), "{order:?} bit {n}");
        }
    }
}
