//! The Modbus TCP poller: one task per source, owning its connection.
//!
//! Each poll runs the read plan in order and sends one [`SampleBatch`]. A device exception marks
//! the tags of that request Bad (naming the exception) and the poll goes on; a timeout or a
//! transport failure marks the rest of the poll Bad and rebuilds the connection after a capped,
//! jittered backoff. While disconnected, every tag is reported Bad once per failed attempt, so
//! downstream sees the outage rather than silence.

use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, SystemTime},
};

use firmware_config::{ModbusTcpConfig, RegisterKind};
use tokio::{
    sync::mpsc,
    time::{MissedTickBehavior, timeout},
};
use tokio_modbus::{
    Request, Response, Slave,
    client::{Client, Context},
};
use tokio_util::sync::CancellationToken;

use super::{PollError, ReadPlan, ReadRequest, codec};
use crate::{
    backoff::Backoff,
    error_chain,
    model::{Sample, SampleBatch, TagId, Value},
    send,
};

/// Reconnect delays: from 200 ms up to 30 s.
const RECONNECT_INITIAL: Duration = Duration::from_millis(200);
const RECONNECT_MAX: Duration = Duration::from_secs(30);

/// A configured Modbus TCP source, ready to run.
#[derive(Debug)]
pub struct ModbusSource {
    config: ModbusTcpConfig,
    plan: ReadPlan,
    ids: Vec<TagId>,
    source: Arc<str>,
    reconnect: Backoff,
}

enum Words {
    Registers(Vec<u16>),
    Bits(Vec<bool>),
}

impl ModbusSource {
    /// Plans the reads for `config`.
    pub fn new(config: ModbusTcpConfig) -> Self {
        let plan = ReadPlan::new(&config.tags, config.max_gap);
        let ids = config
            .tags
            .iter()
            .map(|t| TagId::from(format!("{}.{}", config.name, t.name)))
            .collect();
        let source = Arc::from(config.name.as_str());
        ModbusSource {
            config,
            plan,
            ids,
            source,
            reconnect: Backoff::new(RECONNECT_INITIAL, RECONNECT_MAX),
        }
    }

    /// Overrides the reconnect backoff (tests use short delays).
    #[must_use]
    pub fn with_reconnect(mut self, initial: Duration, max: Duration) -> Self {
        self.reconnect = Backoff::new(initial, max);
        self
    }

    /// The read plan.
    pub fn plan(&self) -> &ReadPlan {
        &self.plan
    }

    /// Polls until `cancel` fires or `out` is closed.
    ///
    /// # Cancel safety
    /// Returns promptly on cancellation, at the latest after the request in flight times out;
    /// a batch that was being sent when cancelled is dropped (it was never accepted downstream).
    pub async fn run(mut self, out: mpsc::Sender<SampleBatch>, cancel: CancellationToken) {
        let name = self.config.name.clone();
        loop {
            let connected = tokio::select! {
                biased;
                () = cancel.cancelled() => return,
                c = self.connect() => c,
            };
            let mut ctx = match connected {
                Ok(ctx) => {
                    // The backoff resets on a good read, not here: a device that accepts the
                    // connection and then fails every request must not be hammered.
                    tracing::info!(source = %name, address = %self.config.address, "Connected to Modbus device.");
                    ctx
                }
                Err(error) => {
                    let delay = self.reconnect.next_delay();
                    tracing::warn!(source = %name, error = %error_chain(&error), retry_in = ?delay, "Modbus connect failed.");
                    let batch = self.all_bad(&error.to_string());
                    if !send(&out, batch, &cancel).await {
                        return;
                    }
                    tokio::select! {
                        () = cancel.cancelled() => return,
                        () = tokio::time::sleep(delay) => continue,
                    }
                }
            };
            let mut tick = tokio::time::interval(self.config.poll);
            tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
            let failure = loop {
                tokio::select! {
                    biased;
                    () = cancel.cancelled() => return,
                    _ = tick.tick() => {}
                }
                let (batch, failure, answered) = self.poll_once(&mut ctx).await;
                if answered {
                    self.reconnect.reset();
                }
                if !send(&out, batch, &cancel).await {
                    return;
                }
                if let Some(failure) = failure {
                    break failure;
                }
            };
            let delay = self.reconnect.next_delay();
            tracing::warn!(source = %name, error = %error_chain(&failure), retry_in = ?delay, "Modbus connection lost; reconnecting.");
            tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep(delay) => {}
            }
        }
    }

    async fn connect(&self) -> Result<Context, PollError> {
        let address = self.config.address.clone();
        let io = |source| PollError::Connect {
            address: address.clone(),
            source,
        };
        let attempt = async {
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host(&self.config.address)
                .await?
                .collect();
            let mut last = std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "the name resolved to no address",
            );
            for addr in addrs {
                match tokio_modbus::client::tcp::connect_slave(addr, Slave(self.config.unit)).await
                {
                    Ok(ctx) => return Ok(ctx),
                    Err(e) => last = e,
                }
            }
            Err(last)
        };
        match timeout(self.config.timeout, attempt).await {
            Ok(result) => result.map_err(io),
            Err(_) => Err(io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no answer within {:?}", self.config.timeout),
            ))),
        }
    }

    /// One pass over the plan. Returns the batch, the failure that ended the pass early if the
    /// connection must be rebuilt, and whether the device answered any request (a read, or an
    /// exception: proof the link works).
    async fn poll_once(&self, ctx: &mut Context) -> (SampleBatch, Option<PollError>, bool) {
        let mut samples: Vec<Option<Sample>> = vec![None; self.ids.len()];
        let mut failure = None;
        let mut answered = false;
        for request in &self.plan.requests {
            let now = SystemTime::now();
            if let Some(error) = &failure {
                self.mark_bad(
                    &mut samples,
                    request,
                    &format!("not read: {}", error_chain(error)),
                    now,
                );
                continue;
            }
            match self.read(ctx, request).await {
                Ok(words) => {
                    answered = true;
                    self.decode(&mut samples, request, &words, now);
                }
                Err(error) => {
                    let why = error_chain(&error);
                    tracing::debug!(source = %self.config.name, %why, "Modbus read failed.");
                    self.mark_bad(&mut samples, request, &why, now);
                    if error.needs_reconnect() {
                        failure = Some(error);
                    } else {
                        answered = true;
                    }
                }
            }
        }
        let samples = samples.into_iter().flatten().collect();
        (
            SampleBatch {
                source: Arc::clone(&self.source),
                samples,
            },
            failure,
            answered,
        )
    }

    async fn read(&self, ctx: &mut Context, r: &ReadRequest) -> Result<Words, PollError> {
        let (kind, start, count) = (r.kind, r.start, r.count);
        let deadline = self.config.timeout;
        let timed_out = || PollError::Timeout {
            kind,
            start,
            timeout: deadline,
        };
        let transport = |source| PollError::Transport {
            kind,
            start,
            source,
        };
        let exception = |code| PollError::Exception {
            kind,
            start,
            last: r.last(),
            code,
        };
        let request = match kind {
            RegisterKind::Coil => Request::ReadCoils(start, count),
            RegisterKind::Discrete => Request::ReadDiscreteInputs(start, count),
            RegisterKind::Input => Request::ReadInputRegisters(start, count),
            RegisterKind::Holding => Request::ReadHoldingRegisters(start, count),
        };
        let response = timeout(deadline, ctx.call(request))
            .await
            .map_err(|_| timed_out())?
            .map_err(transport)?
            .map_err(exception)?;
        match response {
            Response::ReadCoils(bits) | Response::ReadDiscreteInputs(bits) => Ok(Words::Bits(bits)),
            Response::ReadInputRegisters(words) | Response::ReadHoldingRegisters(words) => {
                Ok(Words::Registers(words))
            }
            // tokio-modbus already refuses a mismatched function code; never panic on a device.
            other => Err(PollError::Unexpected {
                kind,
                start,
                response: format!("{other:?}"),
            }),
        }
    }

    fn decode(
        &self,
        samples: &mut [Option<Sample>],
        request: &ReadRequest,
        words: &Words,
        now: SystemTime,
    ) {
        for &i in &request.tags {
            let tag = &self.config.tags[i];
            let offset = usize::from(tag.address - request.start);
            let id = Arc::clone(&self.ids[i]);
            samples[i] = Some(match words {
                Words::Bits(bits) => match bits.get(offset) {
                    Some(b) => Sample::good(id, Value::Bool(*b), now),
                    None => Sample::bad(
                        id,
                        format!(
                            "short response: {} bits for {} requested",
                            bits.len(),
                            request.count
                        ),
                        now,
                    ),
                },
                Words::Registers(regs) => {
                    match codec::decode_registers(tag, regs.get(offset..).unwrap_or_default()) {
                        Ok(value) => Sample::good(id, value, now),
                        Err(error) => {
                            Sample::bad(id, format!("{}:{}: {error}", tag.kind, tag.address), now)
                        }
                    }
                }
            });
        }
    }

    fn mark_bad(
        &self,
        samples: &mut [Option<Sample>],
        request: &ReadRequest,
        why: &str,
        now: SystemTime,
    ) {
        for &i in &request.tags {
            samples[i] = Some(Sample::bad(Arc::clone(&self.ids[i]), why, now));
        }
    }

    fn all_bad(&self, why: &str) -> SampleBatch {
        let now = SystemTime::now();
        let samples = self
            .ids
            .iter()
            .map(|id| Sample::bad(Arc::clone(id), why, now))
            .collect();
        SampleBatch {
            source: Arc::clone(&self.source),
            samples,
        }
    }
}
