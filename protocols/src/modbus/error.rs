use std::time::Duration;

use firmware_config::RegisterKind;
use tokio_modbus::ExceptionCode;

/// Why a read failed. A device exception is a config or device problem and the link stays up;
/// timeouts and transport failures rebuild the connection.
#[derive(Debug, thiserror::Error)]
pub enum PollError {
    /// Could not open the TCP connection.
    #[error("cannot connect to `{address}`")]
    Connect {
        /// As configured.
        address: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// No answer before the deadline.
    #[error("no answer within {timeout:?} reading {kind}:{start}")]
    Timeout {
        /// The table read.
        kind: RegisterKind,
        /// First register.
        start: u16,
        /// The deadline.
        timeout: Duration,
    },
    /// Socket I/O or framing failed.
    #[error("transport failed reading {kind}:{start}")]
    Transport {
        /// The table read.
        kind: RegisterKind,
        /// First register.
        start: u16,
        /// The cause.
        #[source]
        source: tokio_modbus::Error,
    },
    /// The device answered a read with something else.
    #[error("device answered a read of {kind}:{start} with {response}")]
    Unexpected {
        /// The table read.
        kind: RegisterKind,
        /// First register.
        start: u16,
        /// What came back.
        response: String,
    },
    /// The device answered with an exception.
    #[error("device answered {kind}:{start}..={last} with exception 0x{code:02X} ({name})", code = u8::from(*code), name = exception_name(*code))]
    Exception {
        /// The table read.
        kind: RegisterKind,
        /// First register.
        start: u16,
        /// Last register.
        last: u16,
        /// The exception.
        code: ExceptionCode,
    },
}

impl PollError {
    /// Whether the connection must be rebuilt before the next read.
    pub fn needs_reconnect(&self) -> bool {
        !matches!(self, PollError::Exception { .. })
    }
}

/// A plant engineer's name for an exception code, with the usual cause.
pub fn exception_name(code: ExceptionCode) -> &'static str {
    match code {
        ExceptionCode::IllegalFunction => {
            "illegal function: the device does not support this register kind"
        }
        ExceptionCode::IllegalDataAddress => {
            "illegal data address: a register in this range does not exist on the device"
        }
        ExceptionCode::IllegalDataValue => "illegal data value",
        ExceptionCode::ServerDeviceFailure => "server device failure",
        ExceptionCode::Acknowledge => "acknowledge: the device is busy with a long operation",
        ExceptionCode::ServerDeviceBusy => "server device busy",
        ExceptionCode::MemoryParityError => "memory parity error",
        ExceptionCode::GatewayPathUnavailable => {
            "gateway path unavailable: the gateway cannot reach that unit"
        }
        ExceptionCode::GatewayTargetDevice => {
            "gateway target device failed to respond: check the unit id"
        }
        ExceptionCode::Custom(_) => "non-standard exception",
    }
}
