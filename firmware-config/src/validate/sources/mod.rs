//! Sources: the kind dispatch. Each kind has its own module.

mod modbus;
mod mqtt;
mod opcua;
mod webhook;

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
            "opcua" => {
                self.foreign("source", "opcua", &raw.kind_fields(), SOURCE_FIELDS);
                self.opcua(raw).map(SourceConfig::OpcUa)
            }
            "mqtt" => {
                self.foreign("source", "mqtt", &raw.kind_fields(), SOURCE_FIELDS);
                self.mqtt_source(raw).map(SourceConfig::Mqtt)
            }
            "webhook" => {
                self.foreign("source", "webhook", &raw.kind_fields(), SOURCE_FIELDS);
                self.webhook(raw).map(SourceConfig::Webhook)
            }
            other => {
                let kinds: Vec<&str> = SOURCE_FIELDS.iter().map(|(k, _)| *k).collect();
                let hint = match closest(other, kinds.iter().copied()) {
                    Some(near) => {
                        format!(
                            "did you mean \"{near}\"? Supported source kinds: {}",
                            kinds.join(", ")
                        )
                    }
                    None => format!("supported source kinds: {}", kinds.join(", ")),
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
