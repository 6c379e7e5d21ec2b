//! Opening a bus: Modbus TCP, RTU on a serial port, or RTU frames over TCP.
//! Every open is bounded by a timeout, and a serial port's buffers are
//! cleared so a late reply to a request made before a reconnect is never
//! read as the answer to the next one.

use super::config::{BusConfig, Parity, Transport};
use super::ModbusError;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
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

/// A stream that counts the bytes it receives, so a request that timed out
/// can tell silence ("no reply") from bytes that never made a valid frame
/// (a garbled reply: wrong baud rate, two masters, a device sending noise);
/// tokio-modbus skips such bytes and waits on, so both end in its timeout.
#[derive(Debug)]
pub struct Counted<S> {
    inner: S,
    received: Arc<AtomicU64>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        self.received.fetch_add(n as u64, Relaxed);
        poll
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// An open bus, and the count of bytes received on it.
pub struct Opened {
    pub ctx: Context,
    pub received: Arc<AtomicU64>,
}

/// Opens the bus; the caller sets the unit id per request.
pub async fn open(bus: &BusConfig, to: Duration) -> Result<Opened, ModbusError> {
    let received = Arc::new(AtomicU64::new(0));
    let counted = |inner| Counted {
        inner,
        received: received.clone(),
    };
    let address = bus.address.as_deref().unwrap_or_default();
    let ctx = match bus.transport {
        Transport::Tcp => tokio_modbus::client::tcp::attach(counted(tcp(address, to).await?)),
        Transport::RtuOverTcp => {
            tokio_modbus::client::rtu::attach(counted(tcp(address, to).await?))
        }
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
            tokio_modbus::client::rtu::attach(Counted {
                inner: port,
                received: received.clone(),
            })
        }
    };
    Ok(Opened { ctx, received })
}
