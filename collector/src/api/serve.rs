//! The HTTP server loop: hyper with a deadline on reading a request's
//! headers, which `axum::serve` does not set. Without it a client that sends
//! nothing, or its headers a byte at a time, holds a connection (and a file
//! descriptor) for as long as it likes; many such clients starve the real
//! ones. HTTP/1 only: hyper's HTTP/2 server and its version sniffing have no
//! such deadline, and nothing here needs HTTP/2 or upgrades (the event
//! stream is a plain response).

use axum::serve::Listener;
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use std::future::Future;
use std::time::Duration;

/// Longest a client may take to send a request's headers.
pub const HEADER_READ: Duration = Duration::from_secs(10);
/// Longest shutdown waits for requests in flight.
const DRAIN: Duration = Duration::from_secs(10);

/// Serves `app` on `listener` until `shutdown` completes, then lets requests
/// in flight finish (up to 10 s).
pub async fn serve<L>(mut listener: L, app: Router, shutdown: impl Future<Output = ()>)
where
    L: Listener,
{
    let mut builder = Builder::new(TokioExecutor::new()).http1_only();
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ);
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (io, _peer) = tokio::select! {
            c = listener.accept() => c,
            () = &mut shutdown => break,
        };
        let service = TowerToHyperService::new(app.clone());
        let conn = builder
            .serve_connection(TokioIo::new(io), service)
            .into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            // A client that vanished or was too slow: nothing to do.
            let _ = conn.await;
        });
    }
    if tokio::time::timeout(DRAIN, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("requests still running after {DRAIN:?}; stopping anyway");
    }
}
