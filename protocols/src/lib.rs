//! Causeway's southbound side: protocol drivers (Modbus TCP, OPC UA, MQTT) that read PLCs and SCADA systems and emit
//! [`model::SampleBatch`]es into a bounded channel. Drivers know nothing of events, SQLite or
//! sinks.
//!
//! Every driver has the same shape: built from its validated config, then
//! `run(out, cancel)` owns the connection lifecycle (connect, poll, reconnect with capped,
//! jittered backoff) until `cancel` fires or the receiver is dropped.

pub mod backoff;
pub mod modbus;
pub mod model;
pub mod mqtt;
pub mod opcua;
pub mod secret;
pub mod webhook;

/// The error and its causes on one line, for logs and Bad-quality reasons.
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

/// Sends `batch` unless `cancel` fires first; `false`: stop (cancelled, or the receiver is gone).
/// A batch whose send is cancelled is dropped, never half-accepted.
pub(crate) async fn send(
    out: &tokio::sync::mpsc::Sender<model::SampleBatch>,
    batch: model::SampleBatch,
    cancel: &tokio_util::sync::CancellationToken,
) -> bool {
    tokio::select! {
        biased;
        () = cancel.cancelled() => false,
        sent = out.send(batch) => sent.is_ok(),
    }
}
