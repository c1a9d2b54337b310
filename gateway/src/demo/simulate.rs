//! The simulated press line: a PLC served over real Modbus TCP. The demo, `causeway simulate`
//! and the tests read it like any PLC.
//!
//! # Register map (unit 1, 0-based)
//! | register          | type            | meaning                                        |
//! |-------------------|-----------------|------------------------------------------------|
//! | holding:0..=1     | u32, ABCD       | parts total (starts near 2^32 to show rollover)|
//! | holding:2         | u16             | parts rejected                                 |
//! | holding:3         | u16             | state: 0 idle, 1 running, 2 down               |
//! | holding:4         | u16             | reason code while down                         |
//! | holding:5 bit 0   | bool            | cycle complete (high for half a cycle)         |
//! | holding:10..=17   | string, 16 chars| current order number                           |
//! | input:0..=1       | f32, ABCD       | press force in kN of the last part (spec 40-55)|
//!
//! With an OPC UA server ([`spawn_opcua`]), each stroke is also published over OPC UA: the
//! Double `ns=<n>;s=press1.force_kn`, then the Boolean `ns=<n>;s=press1.cycle_done` (true for
//! half a cycle), in that order, so a subscriber sees the force before the edge.

use std::{path::Path, sync::Arc, time::Duration};

use firmware_config::{DataType, RegisterKind, WordOrder};
use protocols::{
    modbus::{codec::encode_registers, server::Registers},
    model::Value,
    opcua::server::{ServerOptions, UaServer},
};
use tokio::net::TcpListener;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

/// One press stroke.
pub const CYCLE: Duration = Duration::from_millis(300);
/// The simulator's clock step.
const STEP: Duration = Duration::from_millis(50);
/// The state plan: (state, reason, how long).
const PLAN: &[(u16, u16, Duration)] = &[
    (1, 0, Duration::from_secs(5)),
    (0, 0, Duration::from_secs(1)),
    (1, 0, Duration::from_secs(4)),
    (2, 17, Duration::from_millis(1500)),
];
const ORDERS: &[&str] = &["PO-4711", "PO-4712", "PO-4713"];

/// The line's state.
#[derive(Debug)]
pub struct PressLine {
    registers: Registers,
    opcua: Option<Arc<UaServer>>,
    rng: fastrand::Rng,
    total: u32,
    rejects: u16,
    parts: u64,
    phase: usize,
    in_phase: Duration,
    in_cycle: Duration,
}

impl PressLine {
    /// A line at its start, registers filled.
    pub fn new(registers: Registers, opcua: Option<Arc<UaServer>>) -> Self {
        let line = PressLine {
            registers,
            opcua,
            rng: fastrand::Rng::with_seed(4711),
            total: u32::MAX - 40,
            rejects: 0,
            parts: 0,
            phase: 0,
            in_phase: Duration::ZERO,
            in_cycle: Duration::ZERO,
        };
        // Like a PLC's memory, the whole block exists, so reads may span unused registers.
        line.registers.set_words(RegisterKind::Holding, 0, &[0; 32]);
        line.registers.set_words(RegisterKind::Input, 0, &[0; 8]);
        line.write_counters();
        line.set(RegisterKind::Holding, 3, DataType::U16, &Value::U64(1));
        line.set(RegisterKind::Holding, 4, DataType::U16, &Value::U64(0));
        line.set(RegisterKind::Holding, 5, DataType::U16, &Value::U64(0));
        line.set(RegisterKind::Input, 0, DataType::F32, &Value::F64(47.5));
        line.set(
            RegisterKind::Holding,
            10,
            DataType::String(8),
            &Value::Str(ORDERS[0].into()),
        );
        line
    }

    fn set(&self, kind: RegisterKind, address: u16, data_type: DataType, value: &Value) {
        self.registers.set_words(
            kind,
            address,
            &encode_registers(data_type, WordOrder::Abcd, value),
        );
    }

    fn write_counters(&self) {
        self.set(
            RegisterKind::Holding,
            0,
            DataType::U32,
            &Value::U64(u64::from(self.total)),
        );
        self.set(
            RegisterKind::Holding,
            2,
            DataType::U16,
            &Value::U64(u64::from(self.rejects)),
        );
    }

    /// Parts made so far.
    pub fn parts(&self) -> u64 {
        self.parts
    }

    /// Advances the line by `dt`.
    pub fn step(&mut self, dt: Duration) {
        self.in_phase += dt;
        let (_, _, length) = PLAN[self.phase];
        if self.in_phase >= length {
            self.in_phase = Duration::ZERO;
            self.phase = (self.phase + 1) % PLAN.len();
            let (state, reason, _) = PLAN[self.phase];
            self.set(
                RegisterKind::Holding,
                3,
                DataType::U16,
                &Value::U64(u64::from(state)),
            );
            self.set(
                RegisterKind::Holding,
                4,
                DataType::U16,
                &Value::U64(u64::from(reason)),
            );
            if self.phase == 0 {
                let order = ORDERS[(self.parts as usize / 50) % ORDERS.len()];
                self.set(
                    RegisterKind::Holding,
                    10,
                    DataType::String(8),
                    &Value::Str(order.into()),
                );
            }
        }
        if PLAN[self.phase].0 != 1 {
            self.set(RegisterKind::Holding, 5, DataType::U16, &Value::U64(0));
            if let Some(ua) = &self.opcua {
                ua.set(CYCLE_VARIABLE, false);
            }
            return;
        }
        self.in_cycle += dt;
        if self.in_cycle >= CYCLE {
            self.in_cycle = Duration::ZERO;
            // One part: a force around 47.5 kN, one in eight out of the 40-55 kN tolerance.
            let out_of_spec = self.rng.u8(0..8) == 0;
            let force = if out_of_spec {
                if self.rng.bool() {
                    56.0 + self.rng.f64() * 4.0
                } else {
                    35.0 + self.rng.f64() * 4.0
                }
            } else {
                42.0 + self.rng.f64() * 11.0
            };
            self.total = self.total.wrapping_add(1);
            if out_of_spec {
                self.rejects = self.rejects.wrapping_add(1);
            }
            self.parts += 1;
            self.write_counters();
            let force = (force * 10.0).round() / 10.0;
            self.set(RegisterKind::Input, 0, DataType::F32, &Value::F64(force));
            if let Some(ua) = &self.opcua {
                ua.set(FORCE_VARIABLE, force);
                ua.set(CYCLE_VARIABLE, true);
            }
            self.set(RegisterKind::Holding, 5, DataType::U16, &Value::U64(1));
        } else if self.in_cycle >= CYCLE / 2 {
            self.set(RegisterKind::Holding, 5, DataType::U16, &Value::U64(0));
            if let Some(ua) = &self.opcua {
                ua.set(CYCLE_VARIABLE, false);
            }
        }
    }
}

/// The OPC UA variable holding the press force.
pub const FORCE_VARIABLE: &str = "press1.force_kn";
/// The OPC UA variable that is true for the first half of each stroke.
pub const CYCLE_VARIABLE: &str = "press1.cycle_done";

/// An OPC UA server for the line on `listener` (policy None, anonymous), its certificate in
/// `pki_dir`; pass it to [`spawn`].
///
/// # Errors
/// The server could not be built (its certificate folder).
pub fn spawn_opcua(listener: TcpListener, pki_dir: &Path) -> Result<Arc<UaServer>, String> {
    let options = ServerOptions::new(pki_dir)
        .variable(FORCE_VARIABLE, 47.5f64)
        .variable(CYCLE_VARIABLE, false);
    UaServer::start(&options, listener).map(Arc::new)
}

/// Serves the simulated line on `listener` (and the force over `opcua`) until `cancel` fires.
pub fn spawn(
    listener: TcpListener,
    opcua: Option<Arc<UaServer>>,
    tasks: &TaskTracker,
    cancel: CancellationToken,
) {
    let registers = Registers::default();
    let mut line = PressLine::new(registers.clone(), opcua.clone());
    let server_cancel = cancel.clone();
    tasks.spawn(async move {
        if let Err(error) =
            protocols::modbus::server::serve(listener, registers, server_cancel).await
        {
            tracing::error!(%error, "The simulated PLC's Modbus server failed.");
        }
    });
    tasks.spawn(async move {
        let mut tick = tokio::time::interval(STEP);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = cancel.cancelled() => break,
                _ = tick.tick() => line.step(STEP),
            }
        }
        if let Some(ua) = opcua {
            ua.stop();
        }
    });
}

/// A config for reading the simulated line at `address` (Modbus) and `opcua` (its endpoint,
/// force node and cycle node), sending to `url` trusting `ca_file`.
pub fn demo_config(
    address: &str,
    opcua: (&str, &str, &str),
    url: &str,
    ca_file: &str,
    buffer: &str,
) -> String {
    include_str!("demo.toml")
        .replace("{address}", address)
        .replace("{opcua}", opcua.0)
        .replace("{force_node}", opcua.1)
        .replace("{cycle_node}", opcua.2)
        .replace("{url}", url)
        .replace("{ca_file}", &ca_file.replace('\\', "\\\\"))
        .replace("{buffer}", &buffer.replace('\\', "\\\\"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_makes_parts_while_running_and_cycles_its_states() {
        let registers = Registers::default();
        let mut line = PressLine::new(registers.clone(), None);
        let mut states = std::collections::BTreeSet::new();
        for _ in 0..(12_000 / 50) {
            line.step(STEP);
            states.insert(registers.word(RegisterKind::Holding, 3));
        }
        assert_eq!(states.into_iter().collect::<Vec<_>>(), vec![0, 1, 2]);
        assert!(line.parts() > 20, "{} parts", line.parts());
        let total = (u32::from(registers.word(RegisterKind::Holding, 0)) << 16)
            | u32::from(registers.word(RegisterKind::Holding, 1));
        assert_eq!(
            total,
            (u32::MAX - 40).wrapping_add(line.parts() as u32),
            "the counter wrapped past 2^32"
        );
    }
}
