//! The Causeway runtime: sources -> normalizer -> SQLite store -> sinks, plus the CLI pieces.
//! Demo and test equipment (the simulated press line, the HTTPS receiver) live apart, in
//! [`demo`].
//!
//! See `docs/architecture.md` for the flow and where each concern lives.

pub mod browse;
pub mod demo;
pub mod event;
pub mod mqtt_sub;
pub mod normalize;
pub mod sinks;
pub mod sources;
pub mod store;
pub mod tls;
pub mod topology;

pub use protocols::error_chain;
