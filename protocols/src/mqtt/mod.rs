//! MQTT: a source reading tags from the messages of their topics (JSON with pointers, or plain
//! text) on rumqttc.

pub mod payload;
mod source;
pub mod sparkplug;

pub use source::MqttSource;
