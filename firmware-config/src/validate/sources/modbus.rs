//! `kind = "modbus-tcp"`: the source, its tags, and the overlap and type checks.

use crate::validate::*;

impl Checker {
    pub(crate) fn modbus_tcp(&mut self, raw: &RawSource) -> Option<ModbusTcpConfig> {
        let source = raw.name.get_ref().clone();
        let address = match &raw.address {
            None => {
                self.error(
                    format!("modbus-tcp source `{source}` has no address"),
                    span(&raw.name),
                    "this source",
                )
                .hint("add address = \"192.168.10.20:502\"");
                String::new()
            }
            Some(a) => {
                let text = a.get_ref();
                let valid = text.rsplit_once(':').is_some_and(|(host, port)| {
                    !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0)
                });
                if !valid {
                    self.error(
                        format!("`{text}` is not a host:port address"),
                        span(a),
                        "expected host:port",
                    )
                    .hint(
                        "Modbus TCP servers usually listen on port 502, e.g. \"192.168.10.20:502\"",
                    );
                }
                text.clone()
            }
        };
        let unit = match &raw.unit {
            None => 1,
            Some(u) => u8::try_from(*u.get_ref()).unwrap_or_else(|_| {
                self.error(format!("unit {} is out of range", u.get_ref()), span(u), "expected 0..=255")
                    .hint("the unit id is the Modbus slave address; TCP devices usually answer to 1 or 255");
                0
            }),
        };
        let poll = self.duration(
            raw.poll.as_ref(),
            SECOND,
            Duration::from_millis(10)..=HOUR,
            "poll",
        );
        let timeout = self.duration(
            raw.timeout.as_ref(),
            SECOND,
            Duration::from_millis(10)..=5 * MINUTE,
            "timeout",
        );
        let max_gap = match &raw.max_gap {
            None => 8,
            Some(g) => u16::try_from(*g.get_ref())
                .ok()
                .filter(|g| *g < MAX_READ_REGISTERS)
                .unwrap_or_else(|| {
                    self.error(
                        format!("max_gap = {} is out of range", g.get_ref()),
                        span(g),
                        "expected 0..=124",
                    );
                    0
                }),
        };
        if raw.tags.is_empty() {
            self.warning(
                format!("source `{source}` has no tags"),
                span(&raw.name),
                "reads nothing",
            )
            .hint(
                "add tags = [ { name = \"parts\", register = \"holding:100\", type = \"u32\" } ]",
            );
        }
        let mut names = HashMap::new();
        let mut tags = Vec::new();
        let mut placed: Vec<(ModbusTagConfig, Range<usize>)> = Vec::new();
        for tag in &raw.tags {
            self.unique("tag", &tag.name, &mut names);
            if let Some(built) = self.modbus_tag(tag) {
                for (other, _) in &placed {
                    if overlaps(other, &built) {
                        let end = u32::from(other.address) + u32::from(other.data_type.width()) - 1;
                        self.error(
                            format!("tag `{}` overlaps tag `{}`", built.name, other.name),
                            tag.register.as_ref().map_or_else(|| span(&tag.name), span),
                            format!("`{}` already uses {}:{}..={}", other.name, other.kind, other.address, end),
                        )
                        .hint("each register may belong to one tag (several tags may take different bits of one register)");
                    }
                }
                let facts = TagFacts::modbus(
                    built.data_type,
                    built.scale.is_some() || built.offset.is_some(),
                );
                self.tags.insert(format!("{source}.{}", built.name), facts);
                placed.push((
                    built.clone(),
                    tag.register.as_ref().map_or_else(|| span(&tag.name), span),
                ));
                tags.push(built);
            } else {
                self.broken_tags
                    .insert(format!("{source}.{}", tag.name.get_ref()));
            }
        }
        Some(ModbusTcpConfig {
            name: source,
            address,
            unit,
            poll,
            timeout,
            max_gap,
            tags,
        })
    }

    pub(crate) fn modbus_tag(&mut self, raw: &RawTag) -> Option<ModbusTagConfig> {
        let name = raw.name.get_ref().clone();
        self.foreign("tag", "modbus-tcp", &raw.kind_fields(), TAG_FIELDS);
        let Some(register) = &raw.register else {
            self.error(
                format!("tag `{name}` has no register"),
                span(&raw.name),
                "which register?",
            )
            .hint("add register = \"holding:100\" (kinds: coil, discrete, input, holding)");
            return None;
        };
        let Some((kind_text, address_text)) = register.get_ref().split_once(':') else {
            self.error(
                format!("`{}` is not a register", register.get_ref()),
                span(register),
                "expected <kind>:<address>",
            )
            .hint("write it like \"holding:100\"; kinds are coil, discrete, input and holding");
            return None;
        };
        let kind = match kind_text.trim() {
            "coil" => RegisterKind::Coil,
            "discrete" => RegisterKind::Discrete,
            "input" => RegisterKind::Input,
            "holding" => RegisterKind::Holding,
            other => {
                let hint = closest(other, ["coil", "discrete", "input", "holding"]).map_or_else(
                    || "kinds are coil, discrete, input and holding".to_owned(),
                    |n| format!("did you mean \"{n}:{address_text}\"?"),
                );
                self.error(
                    format!("unknown register kind `{other}`"),
                    span(register),
                    "unknown kind",
                )
                .hint(hint);
                return None;
            }
        };
        let Ok(address) = address_text.trim().parse::<u16>() else {
            self.error(
                format!("register address `{address_text}` is out of range"),
                span(register),
                "expected 0..=65535",
            )
            .hint(
                "addresses are 0-based as on the wire: register 40001 in PLC notation is holding:0",
            );
            return None;
        };
        let type_name = raw.data_type.as_ref().map(|t| t.get_ref().as_str());
        let type_span = raw.data_type.as_ref().map_or_else(|| span(register), span);
        let data_type = match (type_name, kind.is_bit()) {
            (None, true) | (Some("bool"), true) => DataType::Bool,
            (None, false) => DataType::U16,
            (Some("bool"), false) => match &raw.bit {
                Some(bit) => match u8::try_from(*bit.get_ref()).ok().filter(|b| *b < 16) {
                    Some(b) => DataType::Bit(b),
                    None => {
                        self.error(
                            format!("bit {} does not exist", bit.get_ref()),
                            span(bit),
                            "expected 0..=15",
                        );
                        return None;
                    }
                },
                None => {
                    self.error(format!("tag `{name}`: a {kind} register holds 16 bits"), type_span, "which bit?")
                        .hint("add bit = 0 (least significant) ..= 15, or read a coil/discrete input instead");
                    return None;
                }
            },
            (Some(other), true) => {
                self.error(
                    format!("tag `{name}`: a {kind} holds one bit, not a `{other}`"),
                    type_span,
                    "needs 16-bit registers",
                )
                .hint("use type = \"bool\", or register = \"holding:N\" / \"input:N\" for numbers");
                return None;
            }
            (Some(other), false) => match parse_numeric_type(other) {
                Some(t) => t,
                None if other == "string" => match &raw.length {
                    Some(l) => match u16::try_from(*l.get_ref())
                        .ok()
                        .filter(|n| (1..=MAX_READ_REGISTERS).contains(n))
                    {
                        Some(n) => DataType::String(n),
                        None => {
                            self.error(
                                format!("a string of {} registers cannot be read", l.get_ref()),
                                span(l),
                                "expected 1..=125",
                            );
                            return None;
                        }
                    },
                    None => {
                        self.error(
                            format!("tag `{name}`: a string needs its length"),
                            type_span,
                            "how many registers?",
                        )
                        .hint("add length = N, the number of registers (two characters each)");
                        return None;
                    }
                },
                None => {
                    let all = [
                        "bool", "u16", "i16", "u32", "i32", "u64", "i64", "f32", "f64", "string",
                    ];
                    let hint = closest(other, all).map_or_else(
                        || format!("types are {}", all.join(", ")),
                        |n| format!("did you mean \"{n}\"? Types are {}", all.join(", ")),
                    );
                    self.error(format!("unknown type `{other}`"), type_span, "unknown type")
                        .hint(hint);
                    return None;
                }
            },
        };
        if let (Some(bit), false) = (&raw.bit, matches!(data_type, DataType::Bit(_))) {
            self.error(
                "`bit` only applies to type = \"bool\" on an input or holding register",
                span(bit),
                "not used",
            );
        }
        if let (Some(length), false) = (&raw.length, matches!(data_type, DataType::String(_))) {
            self.error(
                "`length` only applies to type = \"string\"",
                span(length),
                "not used",
            );
        }
        let numeric = !data_type.is_bool() && !matches!(data_type, DataType::String(_));
        for (field, value) in [("scale", &raw.scale), ("offset", &raw.offset)] {
            if let Some(v) = value {
                if !numeric {
                    self.error(
                        format!("`{field}` only applies to numeric types"),
                        span(v),
                        "not a number",
                    );
                } else if !v.get_ref().is_finite() || (field == "scale" && *v.get_ref() == 0.0) {
                    self.error(
                        format!("{field} = {} is not usable", v.get_ref()),
                        span(v),
                        "expected a finite, non-zero number",
                    );
                }
            }
        }
        let order = match &raw.order {
            None => WordOrder::Abcd,
            Some(o) => match o.get_ref().to_ascii_uppercase().as_str() {
                "ABCD" => WordOrder::Abcd,
                "CDAB" => WordOrder::Cdab,
                "BADC" => WordOrder::Badc,
                "DCBA" => WordOrder::Dcba,
                other => {
                    self.error(format!("unknown order `{other}`"), span(o), "expected ABCD, CDAB, BADC or DCBA")
                        .hint("ABCD is big-endian (the Modbus default); CDAB swaps words, as many PLCs store 32-bit values");
                    WordOrder::Abcd
                }
            },
        };
        let width = data_type.width();
        if u32::from(address) + u32::from(width) > 65_536 {
            self.error(
                format!("tag `{name}` runs past the last register"),
                span(register),
                format!("{width} registers from {address} end beyond 65535"),
            );
            return None;
        }
        Some(ModbusTagConfig {
            name,
            kind,
            address,
            data_type,
            order,
            scale: raw.scale.as_ref().map(|s| *s.get_ref()),
            offset: raw.offset.as_ref().map(|s| *s.get_ref()),
        })
    }
}

fn parse_numeric_type(name: &str) -> Option<DataType> {
    Some(match name {
        "u16" => DataType::U16,
        "i16" => DataType::I16,
        "u32" => DataType::U32,
        "i32" => DataType::I32,
        "u64" => DataType::U64,
        "i64" => DataType::I64,
        "f32" => DataType::F32,
        "f64" => DataType::F64,
        _ => return None,
    })
}

fn overlaps(a: &ModbusTagConfig, b: &ModbusTagConfig) -> bool {
    if a.kind != b.kind {
        return false;
    }
    if let (DataType::Bit(x), DataType::Bit(y)) = (a.data_type, b.data_type) {
        return a.address == b.address && x == y;
    }
    let (a0, a1) = (
        u32::from(a.address),
        u32::from(a.address) + u32::from(a.data_type.width()),
    );
    let (b0, b1) = (
        u32::from(b.address),
        u32::from(b.address) + u32::from(b.data_type.width()),
    );
    a0 < b1 && b0 < a1
}
