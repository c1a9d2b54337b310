//! The Causeway runtime: sources -> normalizer -> SQLite store -> sinks, plus the CLI pieces,
//! the simulated press line and the demo's HTTPS receiver.
//!
//! See `docs/architecture.md` for the flow and where each concern lives.

pub mod demo;
pub mod event;
pub mod normalize;
pub mod receiver;
pub mod simulate;
pub mod sinks;
pub mod store;
pub mod tls;
pub mod topology;

pub use protocols::error_chain;
