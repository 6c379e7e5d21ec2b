//! Modbus driver: polls one device with the planned reads, every call under a
//! timeout, and turns what comes back into readings. A failed read never
//! becomes a value: its points become readings of bad quality naming why.

pub mod codec;
pub mod config;
pub mod plan;

use self::config::{ModbusDevice, Table};
use self::plan::ReadRequest;
use crate::drivers::PollResult;
use roomguard_protocol::{Quality, Reading};
use std::time::Duration;
use thiserror::Error;
use tokio::net::{lookup_host, TcpStream};
use tokio::time::timeout;
use tokio_modbus::client::{Context, Reader};
use tokio_modbus::prelude::{ExceptionCode, SlaveContext};
use tokio_modbus::Slave;

#[derive(Debug, Error)]
pub enum ModbusError {
    #[error("cannot resolve {0}")]
    Resolve(String),
    #[error("connect to {addr} failed: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("no reply within {0:?}")]
    Timeout(Duration),
    #[error("transport: {0}")]
    Transport(String),
    #[error("device exception {0}")]
    Device(String),
}

impl ModbusError {
    /// Whether the connection can no longer be trusted (tokio-modbus can read a
    /// stale reply after a timeout, so the socket is replaced).
    fn breaks_connection(&self) -> bool {
        !matches!(self, ModbusError::Device(_))
    }
}

/// One Modbus device and its open connection, if any.
pub struct ModbusDriver {
    cfg: ModbusDevice,
    plan: Vec<ReadRequest>,
    ctx: Option<Context>,
}

enum Data {
    Bits(Vec<bool>),
    Words(Vec<u16>),
}

fn exception_text(code: ExceptionCode) -> String {
    format!("{code:?} (0x{:02X})", u8::from(code))
}

impl ModbusDriver {
    pub fn new(cfg: ModbusDevice) -> Self {
        let plan = plan::plan(&cfg.points, cfg.max_gap);
        ModbusDriver {
            cfg,
            plan,
            ctx: None,
        }
    }

    pub fn id(&self) -> &str {
        &self.cfg.id
    }

    /// Number of read requests one poll makes.
    pub fn requests_per_poll(&self) -> usize {
        self.plan.len()
    }

    /// Opens a connection. Takes no `&self`: the driver holds a `Context`,
    /// which is not `Sync`, and a borrow of it across an await would make the
    /// polling task un-sendable.
    async fn connect(addr: &str, unit: u8, to: Duration) -> Result<Context, ModbusError> {
        let addr = addr.to_owned();
        let resolved = timeout(to, lookup_host(addr.as_str()))
            .await
            .map_err(|_| ModbusError::Timeout(to))?
            .map_err(|_| ModbusError::Resolve(addr.clone()))?
            .next()
            .ok_or_else(|| ModbusError::Resolve(addr.clone()))?;
        let stream = timeout(to, TcpStream::connect(resolved))
            .await
            .map_err(|_| ModbusError::Timeout(to))?
            .map_err(|source| ModbusError::Connect {
                addr: addr.clone(),
                source,
            })?;
        // Small frames, each awaited: Nagle would only add latency.
        let _ = stream.set_nodelay(true);
        let mut ctx = tokio_modbus::client::tcp::attach(stream);
        ctx.set_slave(Slave(unit));
        Ok(ctx)
    }

    async fn read(&mut self, req: &ReadRequest) -> Result<Data, ModbusError> {
        if self.ctx.is_none() {
            let (addr, unit, to) = (self.cfg.address.clone(), self.cfg.unit, self.cfg.timeout);
            self.ctx = Some(Self::connect(&addr, unit, to).await?);
        }
        let Some(ctx) = self.ctx.as_mut() else {
            return Err(ModbusError::Transport("not connected".into()));
        };
        let to = self.cfg.timeout;
        let (start, count) = (req.start, req.count);
        let outcome = timeout(to, async {
            match req.table {
                Table::Coil => ctx
                    .read_coils(start, count)
                    .await
                    .map(|r| r.map(Data::Bits)),
                Table::DiscreteInput => ctx
                    .read_discrete_inputs(start, count)
                    .await
                    .map(|r| r.map(Data::Bits)),
                Table::Input => ctx
                    .read_input_registers(start, count)
                    .await
                    .map(|r| r.map(Data::Words)),
                Table::Holding => ctx
                    .read_holding_registers(start, count)
                    .await
                    .map(|r| r.map(Data::Words)),
            }
        })
        .await;
        let result = match outcome {
            Err(_) => Err(ModbusError::Timeout(to)),
            Ok(Err(e)) => Err(ModbusError::Transport(e.to_string())),
            Ok(Ok(Err(code))) => Err(ModbusError::Device(exception_text(code))),
            Ok(Ok(Ok(data))) => Ok(data),
        };
        if let Err(e) = &result {
            if e.breaks_connection() {
                self.ctx = None;
            }
        }
        result
    }

    /// Polls every point once.
    pub async fn poll(&mut self, now_ms: impl Fn() -> i64) -> PollResult {
        let mut readings = Vec::with_capacity(self.cfg.points.len());
        let mut first_error: Option<String> = None;
        let mut connection_failed: Option<String> = None;
        let plan = std::mem::take(&mut self.plan);
        for req in &plan {
            // Once the connection is down this cycle, do not wait out a timeout
            // per request: the rest of the device is reported with the same cause.
            let result = match &connection_failed {
                Some(msg) => Err(msg.clone()),
                None => self.read(req).await.map_err(|e| {
                    let msg = e.to_string();
                    if e.breaks_connection() {
                        connection_failed = Some(msg.clone());
                    }
                    msg
                }),
            };
            let ts = now_ms();
            match result {
                Ok(data) => self.decode(req, &data, ts, &mut readings, &mut first_error),
                Err(msg) => {
                    first_error.get_or_insert_with(|| msg.clone());
                    for &i in &req.points {
                        readings.push(self.reading(i, ts, None, Quality::Bad(msg.clone())));
                    }
                }
            }
        }
        self.plan = plan;
        PollResult {
            readings,
            error: first_error,
        }
    }

    fn decode(
        &self,
        req: &ReadRequest,
        data: &Data,
        ts: i64,
        out: &mut Vec<Reading>,
        first_error: &mut Option<String>,
    ) {
        for &i in &req.points {
            let p = &self.cfg.points[i];
            let offset = usize::from(p.address - req.start);
            let value = match data {
                Data::Bits(bits) => bits
                    .get(offset)
                    .map(|b| codec::decode_bit(p, *b))
                    .ok_or_else(|| format!("reply held {} bits, needed bit {offset}", bits.len())),
                Data::Words(words) => words
                    .get(offset..)
                    .ok_or_else(|| format!("reply held {} registers", words.len()))
                    .and_then(|w| codec::decode_registers(p, w).map_err(|e| e.to_string())),
            };
            let reading = match value {
                Ok(v) => self.reading(i, ts, Some(v), Quality::Good),
                Err(msg) => {
                    let msg = format!("decode: {msg}");
                    first_error.get_or_insert_with(|| msg.clone());
                    self.reading(i, ts, None, Quality::Bad(msg))
                }
            };
            out.push(reading);
        }
    }

    fn reading(&self, i: usize, ts: i64, value: Option<f64>, quality: Quality) -> Reading {
        let p = &self.cfg.points[i];
        Reading {
            point: p.id.clone(),
            room: p.room.clone().unwrap_or_else(|| self.cfg.room.clone()),
            device: self.cfg.id.clone(),
            quantity: p.quantity.clone(),
            unit: p.unit.clone(),
            value,
            ts,
            quality,
        }
    }
}
