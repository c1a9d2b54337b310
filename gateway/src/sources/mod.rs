//! Sources: the one interface every protocol's source starts through. `topology` and the CLI
//! call only this module; adding a source kind adds a variant here (and its driver in
//! `protocols`), nothing else in the runtime.

use firmware_config::SourceConfig;
use protocols::{
    modbus::{ModbusSource, ReadPlan, ShownPlan},
    model::SampleBatch,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// A source of any kind, ready to run.
#[derive(Debug)]
pub enum Source {
    /// `kind = "modbus-tcp"`
    Modbus(ModbusSource),
}

impl Source {
    /// The source `config` describes.
    pub fn build(config: &SourceConfig) -> Self {
        match config {
            SourceConfig::ModbusTcp(modbus) => Source::Modbus(ModbusSource::new(modbus.clone())),
        }
    }

    /// Reads the device until `cancel` fires or `out` closes, sending one [`SampleBatch`] per
    /// poll or notification; a device that cannot be read gives Bad samples, never silence.
    ///
    /// # Cancel safety
    /// Returns promptly on cancellation; a batch being sent then is dropped (never accepted).
    pub async fn run(self, out: mpsc::Sender<SampleBatch>, cancel: CancellationToken) {
        match self {
            Source::Modbus(source) => source.run(out, cancel).await,
        }
    }
}

/// What `causeway check` reports of a source before anything runs.
#[derive(Debug)]
pub struct Planned {
    /// Tags the source reads.
    pub tags: usize,
    /// Requests (or subscriptions) one poll takes.
    pub reads: usize,
    /// The plan in detail, for `check --plan`.
    pub shown: String,
}

/// How `config` would be read.
pub fn plan(config: &SourceConfig) -> Planned {
    match config {
        SourceConfig::ModbusTcp(modbus) => {
            let plan = ReadPlan::new(&modbus.tags, modbus.max_gap);
            Planned {
                tags: modbus.tags.len(),
                reads: plan.requests.len(),
                shown: ShownPlan {
                    source: modbus,
                    plan: &plan,
                }
                .to_string(),
            }
        }
    }
}
