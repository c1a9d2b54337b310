//! OPC UA: sessions with the configured security (never a weaker one), subscriptions or chunked
//! Reads, a stall watchdog, the address-space browser, and a small in-process server (used by
//! the demo and the tests), all on async-opcua.

pub mod browse;
pub mod connect;
pub mod convert;
pub mod server;
mod source;

pub use connect::ConnectError;
pub use source::{MAX_PER_CALL, OpcUaSource};
