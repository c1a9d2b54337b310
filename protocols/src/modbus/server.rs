//! A Modbus TCP server over a shared register map, on tokio-modbus. The demo's simulated press
//! line and the tests serve through it. It answers reads of unmapped registers with
//! `IllegalDataAddress`, like a real PLC, and can be told to fail on purpose.

use std::{
    collections::HashMap,
    future,
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use firmware_config::RegisterKind;
use tokio::net::TcpListener;
use tokio_modbus::{
    ExceptionCode, Request, Response,
    server::tcp::{Server, accept_tcp_connection},
};
use tokio_util::sync::CancellationToken;

/// The register map: what a PLC would hold. Cheap to clone; clones share the map.
#[derive(Debug, Clone, Default)]
pub struct Registers {
    inner: Arc<Mutex<Map>>,
}

#[derive(Debug, Default)]
struct Map {
    words: HashMap<(RegisterKind, u16), u16>,
    bits: HashMap<(RegisterKind, u16), bool>,
    fail_with: Option<ExceptionCode>,
    /// Fail only the requests for this table (and, if given, starting at this address).
    fail_kind: Option<(RegisterKind, Option<u16>, ExceptionCode)>,
    /// Requests answered (or refused) so far.
    reads: u64,
    /// Connections accepted so far.
    connections: u64,
}

impl Registers {
    fn map(&self) -> std::sync::MutexGuard<'_, Map> {
        // A panic while holding this lock can only come from a bug in this file; the map stays usable.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Sets consecutive input or holding registers from `address`.
    pub fn set_words(&self, kind: RegisterKind, address: u16, words: &[u16]) {
        let mut map = self.map();
        for (i, w) in words.iter().enumerate() {
            map.words.insert((kind, address + i as u16), *w);
        }
    }

    /// Sets a coil or discrete input.
    pub fn set_bit(&self, kind: RegisterKind, address: u16, value: bool) {
        self.map().bits.insert((kind, address), value);
    }

    /// Reads one register (0 if unmapped).
    pub fn word(&self, kind: RegisterKind, address: u16) -> u16 {
        self.map()
            .words
            .get(&(kind, address))
            .copied()
            .unwrap_or_default()
    }

    /// Makes every request fail with `code` until called with `None`.
    pub fn fail_with(&self, code: Option<ExceptionCode>) {
        self.map().fail_with = code;
    }

    /// Makes the requests for one table fail with `code` (`None`: stop failing them).
    pub fn fail_kind(&self, kind: RegisterKind, code: Option<ExceptionCode>) {
        self.map().fail_kind = code.map(|c| (kind, None, c));
    }

    /// Makes the requests for one table that start at `start` fail with `code` (`None`: stop).
    pub fn fail_request(&self, kind: RegisterKind, start: u16, code: Option<ExceptionCode>) {
        self.map().fail_kind = code.map(|c| (kind, Some(start), c));
    }

    /// Requests served so far: a test waits on this to know the device was polled after a
    /// change, instead of sleeping.
    pub fn reads(&self) -> u64 {
        self.map().reads
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.map().connections
    }

    fn answer(&self, request: Request<'static>) -> Result<Response, ExceptionCode> {
        let mut map = self.map();
        map.reads += 1;
        if let Some(code) = map.fail_with {
            return Err(code);
        }
        let (kind, first) = match &request {
            Request::ReadHoldingRegisters(a, _) => (Some(RegisterKind::Holding), *a),
            Request::ReadInputRegisters(a, _) => (Some(RegisterKind::Input), *a),
            Request::ReadCoils(a, _) => (Some(RegisterKind::Coil), *a),
            Request::ReadDiscreteInputs(a, _) => (Some(RegisterKind::Discrete), *a),
            _ => (None, 0),
        };
        if let Some((failing, at, code)) = map.fail_kind
            && kind == Some(failing)
            && at.is_none_or(|at| at == first)
        {
            return Err(code);
        }
        let words = |kind, start: u16, count: u16| -> Result<Vec<u16>, ExceptionCode> {
            (0..count)
                .map(|i| {
                    start
                        .checked_add(i)
                        .and_then(|a| map.words.get(&(kind, a)).copied())
                        .ok_or(ExceptionCode::IllegalDataAddress)
                })
                .collect()
        };
        let bits = |kind, start: u16, count: u16| -> Result<Vec<bool>, ExceptionCode> {
            (0..count)
                .map(|i| {
                    start
                        .checked_add(i)
                        .and_then(|a| map.bits.get(&(kind, a)).copied())
                        .ok_or(ExceptionCode::IllegalDataAddress)
                })
                .collect()
        };
        match request {
            Request::ReadHoldingRegisters(start, count) => {
                words(RegisterKind::Holding, start, count).map(Response::ReadHoldingRegisters)
            }
            Request::ReadInputRegisters(start, count) => {
                words(RegisterKind::Input, start, count).map(Response::ReadInputRegisters)
            }
            Request::ReadCoils(start, count) => {
                bits(RegisterKind::Coil, start, count).map(Response::ReadCoils)
            }
            Request::ReadDiscreteInputs(start, count) => {
                bits(RegisterKind::Discrete, start, count).map(Response::ReadDiscreteInputs)
            }
            _ => Err(ExceptionCode::IllegalFunction),
        }
    }
}

#[derive(Debug, Clone)]
struct Service {
    registers: Registers,
}

impl tokio_modbus::server::Service for Service {
    type Request = Request<'static>;
    type Response = Response;
    type Exception = ExceptionCode;
    type Future = future::Ready<Result<Response, ExceptionCode>>;

    fn call(&self, request: Self::Request) -> Self::Future {
        future::ready(self.registers.answer(request))
    }
}

/// Serves `registers` on `listener` until `cancel` fires. Every connection is closed then too.
///
/// # Errors
/// An accept failure on the listener.
pub async fn serve(
    listener: TcpListener,
    registers: Registers,
    cancel: CancellationToken,
) -> std::io::Result<()> {
    let server = Server::new(listener);
    let counted = registers.clone();
    let service = Arc::new(Service { registers });
    let new_service = move |_addr: SocketAddr| Ok(Some(Arc::clone(&service)));
    let on_connected = move |stream, addr| {
        counted.map().connections += 1;
        let new_service = new_service.clone();
        async move { accept_tcp_connection(stream, addr, new_service) }
    };
    let on_error = |error| tracing::debug!(%error, "Modbus server connection ended with an error.");
    server
        .serve_until(
            &on_connected,
            on_error,
            async move { cancel.cancelled().await },
        )
        .await
        .map(|_| ())
}
