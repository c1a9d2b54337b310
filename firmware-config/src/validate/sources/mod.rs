//! Sources: the kind dispatch. Each kind has its own module.

mod modbus;

use crate::validate::*;

impl Checker {
    pub(crate) fn source(
        &mut self,
        raw: &RawSource,
        names: &mut HashMap<String, Range<usize>>,
    ) -> Option<SourceConfig> {
        self.unique("source", &raw.name, names);
        match raw.kind.get_ref().as_str() {
            "modbus-tcp" => {
                self.foreign("source", "modbus-tcp", &raw.kind_fields(), SOURCE_FIELDS);
                self.modbus_tcp(raw).map(SourceConfig::ModbusTcp)
            }
            other => {
                let hint = match closest(other, ["modbus-tcp"]) {
                    Some(near) => {
                        format!("did you mean \"{near}\"? Supported source kinds: modbus-tcp")
                    }
                    None => "supported source kinds: modbus-tcp".to_owned(),
                };
                self.error(
                    format!("unknown source kind `{other}`"),
                    span(&raw.kind),
                    "unknown kind",
                )
                .hint(hint);
                None
            }
        }
    }
}
