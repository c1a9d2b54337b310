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

/// The error and its causes on one line.
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}
