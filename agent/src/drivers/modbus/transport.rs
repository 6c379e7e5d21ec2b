//! Opening a bus: Modbus TCP, RTU on a serial port, or RTU frames over TCP.
//! Every open is bounded by a timeout, and a serial port's buffers are
//! cleared so a late reply to a request made before a reconnect is never
//! read as the answer to the next one.

use super::config::{BusConfig, Parity, Transport};
use super::ModbusError;
use std::time::Duration;
use tokio::net::{lookup_host, TcpStream};
use tokio::time::timeout;
use tokio_modbus::client::Context;
use tokio_serial::SerialPort;

async fn tcp(addr: &str, to: Duration) -> Result<TcpStream, ModbusError> {
    // Devices are nearly always given by IP; resolving those would cost a
    // thread from the blocking pool per connect.
    let resolved = match addr.parse::<std::net::SocketAddr>() {
        Ok(a) => a,
        Err(_) => timeout(to, lookup_host(addr))
            .await
            .map_err(|_| ModbusError::Timeout(to))?
            .map_err(|_| ModbusError::Resolve(addr.to_owned()))?
            .next()
            .ok_or_else(|| ModbusError::Resolve(addr.to_owned()))?,
    };
    let stream = timeout(to, TcpStream::connect(resolved))
        .await
        .map_err(|_| ModbusError::Timeout(to))?
        .map_err(|source| ModbusError::Connect {
            addr: addr.to_owned(),
            source,
        })?;
    // Small frames, each awaited: Nagle would only add latency.
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// Opens the bus; the caller sets the unit id per request.
pub async fn open(bus: &BusConfig, to: Duration) -> Result<Context, ModbusError> {
    let address = bus.address.as_deref().unwrap_or_default();
    match bus.transport {
        Transport::Tcp => Ok(tokio_modbus::client::tcp::attach(tcp(address, to).await?)),
        Transport::RtuOverTcp => Ok(tokio_modbus::client::rtu::attach(tcp(address, to).await?)),
        Transport::Rtu => {
            let path = bus.serial_port.as_deref().unwrap_or_default();
            let parity = match bus.parity {
                Parity::None => tokio_serial::Parity::None,
                Parity::Even => tokio_serial::Parity::Even,
                Parity::Odd => tokio_serial::Parity::Odd,
            };
            let data_bits = match bus.data_bits {
                5 => tokio_serial::DataBits::Five,
                6 => tokio_serial::DataBits::Six,
                7 => tokio_serial::DataBits::Seven,
                _ => tokio_serial::DataBits::Eight,
            };
            let stop_bits = if bus.stop_bits == 2 {
                tokio_serial::StopBits::Two
            } else {
                tokio_serial::StopBits::One
            };
            let builder = tokio_serial::new(path, bus.baud_rate)
                .parity(parity)
                .data_bits(data_bits)
                .stop_bits(stop_bits)
                .flow_control(tokio_serial::FlowControl::None);
            let port =
                tokio_serial::SerialStream::open(&builder).map_err(|e| ModbusError::Connect {
                    addr: path.to_owned(),
                    source: std::io::Error::other(e.to_string()),
                })?;
            // Drop whatever a device sent while nobody was listening.
            let _ = port.clear(tokio_serial::ClearBuffer::All);
            Ok(tokio_modbus::client::rtu::attach(port))
        }
    }
}
