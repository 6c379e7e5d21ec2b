//! The Modbus TCP side of the simulator: one listener acting as a gateway, with
//! every simulated device behind it by unit id, as a serial device server with
//! an RS-485 bus of sensors looks to a poller.

use crate::registers::{Site, Tables};
use std::future::{ready, Ready};
use std::sync::{Arc, RwLock};
use tokio::net::TcpListener;
use tokio_modbus::prelude::{ExceptionCode, Request, Response, SlaveRequest};
use tokio_modbus::server::tcp::{accept_tcp_connection, Server};

/// Protocol limits on one read (Modbus application protocol v1.1b3, 6.1–6.4).
const MAX_READ_REGISTERS: u16 = 125;
const MAX_READ_BITS: u16 = 2000;

/// Answers reads from the current register tables.
#[derive(Clone)]
pub struct SiteService {
    site: Arc<RwLock<Site>>,
    /// On a serial line an absent unit is silent; a TCP gateway answers 0x0B.
    gateway: bool,
}

impl SiteService {
    /// A TCP gateway in front of the devices.
    pub fn gateway(site: Arc<RwLock<Site>>) -> Self {
        SiteService {
            site,
            gateway: true,
        }
    }

    /// Devices on a serial line.
    pub fn serial_line(site: Arc<RwLock<Site>>) -> Self {
        SiteService {
            site,
            gateway: false,
        }
    }

    fn answer(&self, req: &SlaveRequest<'_>) -> Result<Option<Response>, ExceptionCode> {
        let site = self
            .site
            .read()
            .unwrap_or_else(|poison| poison.into_inner());
        let Some(tables) = site.get(&req.slave) else {
            // A gateway whose target does not exist answers with exception 0x0B.
            return if self.gateway {
                Err(ExceptionCode::GatewayTargetDevice)
            } else {
                Ok(None)
            };
        };
        read(tables, req).map(Some)
    }
}

fn read(tables: &Tables, req: &SlaveRequest<'_>) -> Result<Response, ExceptionCode> {
    match req.request {
        Request::ReadCoils(addr, qty) => bits(&tables.coils, addr, qty).map(Response::ReadCoils),
        Request::ReadDiscreteInputs(addr, qty) => {
            bits(&tables.discrete_inputs, addr, qty).map(Response::ReadDiscreteInputs)
        }
        Request::ReadInputRegisters(addr, qty) => {
            words(&tables.input_registers, addr, qty).map(Response::ReadInputRegisters)
        }
        Request::ReadHoldingRegisters(addr, qty) => {
            words(&tables.holding_registers, addr, qty).map(Response::ReadHoldingRegisters)
        }
        _ => Err(ExceptionCode::IllegalFunction),
    }
}

fn slice<T: Clone>(table: &[T], addr: u16, qty: u16, max: u16) -> Result<Vec<T>, ExceptionCode> {
    if qty == 0 || qty > max {
        return Err(ExceptionCode::IllegalDataValue);
    }
    let start = usize::from(addr);
    let end = start + usize::from(qty);
    table
        .get(start..end)
        .map(<[T]>::to_vec)
        .ok_or(ExceptionCode::IllegalDataAddress)
}

fn bits(table: &[bool], addr: u16, qty: u16) -> Result<Vec<bool>, ExceptionCode> {
    slice(table, addr, qty, MAX_READ_BITS)
}

fn words(table: &[u16], addr: u16, qty: u16) -> Result<Vec<u16>, ExceptionCode> {
    slice(table, addr, qty, MAX_READ_REGISTERS)
}

impl tokio_modbus::server::Service for SiteService {
    type Request = SlaveRequest<'static>;
    type Response = Option<Response>;
    type Exception = ExceptionCode;
    type Future = Ready<Result<Option<Response>, ExceptionCode>>;

    fn call(&self, req: Self::Request) -> Self::Future {
        ready(self.answer(&req))
    }
}

/// Serves Modbus RTU on a serial port (a pseudo-terminal in tests) until
/// the task is dropped.
pub async fn serve_rtu(path: &str, baud: u32, service: SiteService) -> std::io::Result<()> {
    let server = tokio_modbus::server::rtu::Server::new_from_path(path, baud)?;
    server.serve_forever(service).await
}

/// Serves Modbus TCP on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, service: SiteService) -> std::io::Result<()> {
    let server = Server::new(listener);
    let on_connected = |stream, addr| {
        let service = service.clone();
        async move { accept_tcp_connection(stream, addr, move |_| Ok(Some(service.clone()))) }
    };
    let on_process_error = |err| tracing::debug!(error = %err, "modbus connection ended");
    server.serve(&on_connected, on_process_error).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_past_the_end_are_illegal_addresses() {
        assert_eq!(
            words(&[1, 2, 3], 2, 2),
            Err(ExceptionCode::IllegalDataAddress)
        );
        assert_eq!(words(&[1, 2, 3], 1, 2), Ok(vec![2, 3]));
    }

    #[test]
    fn zero_and_oversized_quantities_are_illegal_values() {
        assert_eq!(words(&[0; 200], 0, 0), Err(ExceptionCode::IllegalDataValue));
        assert_eq!(
            words(&[0; 200], 0, 126),
            Err(ExceptionCode::IllegalDataValue)
        );
        assert_eq!(
            bits(&[false; 3000], 0, 2001),
            Err(ExceptionCode::IllegalDataValue)
        );
    }
}
