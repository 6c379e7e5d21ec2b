//! Modbus driver. Devices share buses; each bus is polled by one task
//! (`bus.rs`) that owns its connection and serializes requests. A failed read
//! never becomes a value: its points become readings of bad quality naming why.

pub mod bus;
pub mod codec;
pub mod config;
pub mod plan;
pub mod transport;

use self::config::Table;
use self::plan::ReadRequest;
use crate::config::ModbusSpec;
use roomguard_protocol::{Quality, Reading};
use std::time::Duration;
use thiserror::Error;
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
    #[error("garbled or incomplete reply: {bytes} bytes received within {within:?}, no complete valid frame (check the line's settings; a slow device may need a longer timeout)")]
    Garbled { bytes: u64, within: Duration },
    #[error("transport: {0}")]
    Transport(String),
    #[error("device exception {text}")]
    Device { code: u8, text: String },
}

impl ModbusError {
    /// The device refused the read's span or size (exception 02, illegal
    /// data address, or 03, illegal data value): one read per point may work.
    pub fn refused_span(&self) -> bool {
        matches!(self, ModbusError::Device { code: 2 | 3, .. })
    }

    /// Whether the connection can no longer be trusted: after a timeout,
    /// tokio-modbus could read the late reply as the answer to the next
    /// request, and after a garbled or mismatched frame the stream is out of
    /// step. Device exceptions are proper answers and keep the connection.
    pub fn breaks_connection(&self) -> bool {
        !matches!(self, ModbusError::Device { .. })
    }
}

/// The data one read returned.
pub enum Data {
    Bits(Vec<bool>),
    Words(Vec<u16>),
}

impl Data {
    /// Values in the reply (bit replies are padded to whole bytes).
    pub fn count(&self) -> usize {
        match self {
            Data::Bits(b) => b.len(),
            Data::Words(w) => w.len(),
        }
    }
}

fn exception_text(code: ExceptionCode) -> String {
    format!("{code:?} (0x{:02X})", u8::from(code))
}

/// Performs one planned read for `unit` under `to`; `received` counts the
/// bytes the bus has received (see `transport::Counted`).
pub async fn read(
    ctx: &mut Context,
    received: &std::sync::atomic::AtomicU64,
    unit: u8,
    req: &ReadRequest,
    to: Duration,
) -> Result<Data, ModbusError> {
    let before = received.load(std::sync::atomic::Ordering::Relaxed);
    ctx.set_slave(Slave(unit));
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
    let data = match outcome {
        Err(_) => {
            let bytes = received.load(std::sync::atomic::Ordering::Relaxed) - before;
            return Err(if bytes == 0 {
                ModbusError::Timeout(to)
            } else {
                ModbusError::Garbled { bytes, within: to }
            });
        }
        Ok(Err(e)) => return Err(ModbusError::Transport(e.to_string())),
        Ok(Ok(Err(code))) => {
            return Err(ModbusError::Device {
                code: u8::from(code),
                text: exception_text(code),
            })
        }
        Ok(Ok(Ok(data))) => data,
    };
    // Bit replies are padded to whole bytes; fewer than asked is a broken reply.
    if data.count() < usize::from(count) {
        return Err(ModbusError::Transport(format!(
            "reply held {} values, {count} were asked",
            data.count()
        )));
    }
    Ok(data)
}

/// Turns a read's data into readings for the request's points.
pub fn decode(
    spec: &ModbusSpec,
    req: &ReadRequest,
    data: &Data,
    ts: i64,
    out: &mut Vec<Reading>,
    first_error: &mut Option<String>,
) {
    for &i in &req.points {
        let p = &spec.points[i];
        let offset = usize::from(p.address - req.start);
        let value = match data {
            Data::Bits(bits) => bits
                .get(offset)
                .map(|b| codec::Decoded::Number(codec::decode_bit(p, *b)))
                .ok_or_else(|| format!("reply held {} bits, needed bit {offset}", bits.len())),
            Data::Words(words) => words
                .get(offset..)
                .ok_or_else(|| format!("reply held {} registers", words.len()))
                .and_then(|w| codec::decode(p, w).map_err(|e| e.to_string())),
        };
        out.push(match value {
            Ok(codec::Decoded::Number(v)) => reading(spec, i, ts, Some(v), None, Quality::Good),
            Ok(codec::Decoded::Text(t)) => reading(spec, i, ts, None, Some(t), Quality::Good),
            Err(msg) => {
                let msg = format!("decode: {msg}");
                first_error.get_or_insert_with(|| msg.clone());
                reading(spec, i, ts, None, None, Quality::Bad(msg))
            }
        });
    }
}

/// Readings of bad quality for every point of `req`.
pub fn fail(spec: &ModbusSpec, req: &ReadRequest, ts: i64, why: &str, out: &mut Vec<Reading>) {
    for &i in &req.points {
        out.push(reading(
            spec,
            i,
            ts,
            None,
            None,
            Quality::Bad(why.to_owned()),
        ));
    }
}

fn reading(
    spec: &ModbusSpec,
    i: usize,
    ts: i64,
    value: Option<f64>,
    text: Option<String>,
    quality: Quality,
) -> Reading {
    Reading {
        point: spec.labels[i].clone(),
        value,
        text,
        ts,
        quality,
    }
}
