//! The read plan: a source's tags coalesced into as few Modbus requests as the protocol allows.
//!
//! Per data table, tags sorted by address are merged into one request while the request stays
//! within the protocol limit (125 registers, 2000 bits) and the unused gap to the next tag is at
//! most `max_gap` registers (`max_gap * 16` bits for coils and discrete inputs). Reading through
//! a small gap costs a few bytes; another request costs a round trip.

use std::fmt;

use firmware_config::{
    MAX_READ_BITS, MAX_READ_REGISTERS, ModbusTagConfig, ModbusTcpConfig, RegisterKind,
};

/// One request of the plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadRequest {
    /// Data table (function code).
    pub kind: RegisterKind,
    /// First register or bit.
    pub start: u16,
    /// Registers or bits.
    pub count: u16,
    /// Indexes of the tags it serves, into the source's tag list.
    pub tags: Vec<usize>,
}

impl ReadRequest {
    /// The last register or bit read.
    pub fn last(&self) -> u16 {
        self.start + (self.count - 1)
    }
}

/// A source's requests, in the order they are sent each poll.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadPlan {
    /// The requests.
    pub requests: Vec<ReadRequest>,
}

impl ReadPlan {
    /// Coalesces `tags` into requests.
    pub fn new(tags: &[ModbusTagConfig], max_gap: u16) -> Self {
        let mut order: Vec<usize> = (0..tags.len()).collect();
        order.sort_by_key(|&i| (tags[i].kind, tags[i].address));
        let mut requests: Vec<ReadRequest> = Vec::new();
        for i in order {
            let tag = &tags[i];
            let start = u32::from(tag.address);
            let end = start + u32::from(tag.data_type.width()); // exclusive
            let (limit, gap) = if tag.kind.is_bit() {
                (u32::from(MAX_READ_BITS), u32::from(max_gap) * 16)
            } else {
                (u32::from(MAX_READ_REGISTERS), u32::from(max_gap))
            };
            if let Some(last) = requests.last_mut().filter(|r| r.kind == tag.kind) {
                let last_start = u32::from(last.start);
                let last_end = last_start + u32::from(last.count);
                let merged_end = last_end.max(end);
                if start <= last_end + gap && merged_end - last_start <= limit {
                    last.count = (merged_end - last_start) as u16;
                    last.tags.push(i);
                    continue;
                }
            }
            requests.push(ReadRequest {
                kind: tag.kind,
                start: tag.address,
                count: tag.data_type.width(),
                tags: vec![i],
            });
        }
        ReadPlan { requests }
    }
}

/// The plan of one source, printable for `causeway check --plan`.
#[derive(Debug)]
pub struct ShownPlan<'a> {
    /// The source.
    pub source: &'a ModbusTcpConfig,
    /// Its plan.
    pub plan: &'a ReadPlan,
}

impl fmt::Display for ShownPlan<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.source;
        writeln!(
            f,
            "{} (modbus-tcp {} unit {}, every {}): {} tags in {} requests",
            s.name,
            s.address,
            s.unit,
            humantime::format_duration(s.poll),
            s.tags.len(),
            self.plan.requests.len()
        )?;
        for r in &self.plan.requests {
            let unit = if r.kind.is_bit() { "bits" } else { "registers" };
            let names: Vec<&str> = r.tags.iter().map(|&i| s.tags[i].name.as_str()).collect();
            writeln!(
                f,
                "  {}:{}..={} ({} {unit}): {}",
                r.kind,
                r.start,
                r.last(),
                r.count,
                names.join(", ")
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use firmware_config::{DataType, WordOrder};

    use super::*;

    fn t(name: &str, kind: RegisterKind, address: u16, data_type: DataType) -> ModbusTagConfig {
        ModbusTagConfig {
            name: name.into(),
            kind,
            address,
            data_type,
            order: WordOrder::Abcd,
            scale: None,
            offset: None,
        }
    }

    #[test]
    fn near_tags_merge_and_far_tags_split() {
        use RegisterKind::*;
        let tags = vec![
            t("a", Holding, 100, DataType::U32),
            t("b", Holding, 102, DataType::U16),
            t("c", Holding, 110, DataType::U16), // gap of 7 from b's end
            t("d", Holding, 200, DataType::U16), // far
            t("e", Input, 0, DataType::F32),
            t("f", Coil, 5, DataType::Bool),
            t("g", Coil, 90, DataType::Bool), // 84 bits away, within 8*16
        ];
        let plan = ReadPlan::new(&tags, 8);
        let shape: Vec<(RegisterKind, u16, u16, Vec<usize>)> = plan
            .requests
            .iter()
            .map(|r| (r.kind, r.start, r.count, r.tags.clone()))
            .collect();
        assert_eq!(
            shape,
            vec![
                (Coil, 5, 86, vec![5, 6]),
                (Input, 0, 2, vec![4]),
                (Holding, 100, 11, vec![0, 1, 2]),
                (Holding, 200, 1, vec![3]),
            ]
        );
        let no_gap = ReadPlan::new(&tags[..3], 0);
        assert_eq!(
            no_gap.requests.len(),
            2,
            "a zero gap merges only adjacent tags"
        );
    }

    #[test]
    fn requests_never_exceed_the_protocol_limit() {
        let tags: Vec<ModbusTagConfig> = (0..100)
            .map(|i| {
                t(
                    &format!("t{i}"),
                    RegisterKind::Holding,
                    i * 4,
                    DataType::F64,
                )
            })
            .collect();
        let plan = ReadPlan::new(&tags, 8);
        assert!(plan.requests.iter().all(|r| r.count <= MAX_READ_REGISTERS));
        assert_eq!(
            plan.requests.iter().map(|r| r.tags.len()).sum::<usize>(),
            100
        );
        assert_eq!(
            plan.requests.len(),
            4,
            "400 registers need 4 reads of at most 125"
        );
    }

    #[test]
    fn bits_of_one_register_share_a_read() {
        let tags = vec![
            t("x", RegisterKind::Holding, 7, DataType::Bit(0)),
            t("y", RegisterKind::Holding, 7, DataType::Bit(5)),
        ];
        let plan = ReadPlan::new(&tags, 0);
        assert_eq!(
            plan.requests,
            vec![ReadRequest {
                kind: RegisterKind::Holding,
                start: 7,
                count: 1,
                tags: vec![0, 1]
            }]
        );
    }
}
