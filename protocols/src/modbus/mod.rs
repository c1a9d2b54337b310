//! Modbus TCP: read plan, decoding, the poller, and a small register server (used by the
//! simulator and the tests) built on tokio-modbus.

pub mod codec;
mod error;
pub mod plan;
mod poller;
pub mod server;

pub use error::{PollError, exception_name};
pub use plan::{ReadPlan, ReadRequest, ShownPlan};
pub use poller::ModbusSource;
