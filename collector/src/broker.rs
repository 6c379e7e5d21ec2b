//! The embedded MQTT broker (rumqttd), started when no external broker is
//! configured, so a demo or a small site needs nothing else installed.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum BrokerError {
    #[error("embedded broker cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("embedded broker did not start: {0}")]
    Start(String),
}

/// Starts the broker on `listen` in its own threads. Port 0 picks a free port; the address used is returned.
/// With `users` (name → password) it admits only them. `log_mib`: the
/// messages it keeps per subscription (`mqtt.embedded_log_mib`).
pub fn start(
    listen: SocketAddr,
    max_payload: usize,
    users: HashMap<String, String>,
    log_mib: u32,
) -> Result<SocketAddr, BrokerError> {
    // rumqttd binds inside its own thread and only logs a failure there, so
    // check the address first to turn "port in use" into a clear error.
    let addr = {
        let probe = TcpListener::bind(listen).map_err(|source| BrokerError::Bind {
            addr: listen,
            source,
        })?;
        probe.local_addr().map_err(|source| BrokerError::Bind {
            addr: listen,
            source,
        })?
    };

    let connections = rumqttd::ConnectionSettings {
        // A client that has not logged in within this is dropped: silent
        // sockets held open cost memory and a slot each.
        connection_timeout_ms: 10_000,
        max_payload_size: max_payload,
        // The collector acknowledges only once a transaction has committed,
        // so a transaction's worth of messages must fit in flight: with a
        // small window a backlog arrives a few messages per commit.
        max_inflight_count: 2000,
        auth: (!users.is_empty()).then_some(users),
        external_auth: None,
        dynamic_filters: true,
    };
    let server = rumqttd::ServerSettings {
        name: "v4-embedded".into(),
        listen: addr,
        tls: None,
        next_connection_delay_ms: 1,
        connections,
    };
    let config = rumqttd::Config {
        id: 0,
        router: rumqttd::RouterConfig {
            max_connections: 10_010,
            max_outgoing_packet_count: 200,
            // Each subscription's log of messages, in four segments: once
            // full, the oldest segment goes. It must hold what the collector
            // has not acknowledged yet (a backlog of a few seconds at the
            // rates in BENCHMARKS.md); a message pushed out before it was
            // delivered is sent again by its agent, which never saw it
            // confirmed. Held once filled: most of the broker's memory.
            max_segment_size: (log_mib as usize) << 18,
            max_segment_count: 4,
            custom_segment: None,
            initialized_filters: None,
            shared_subscriptions_strategy: Default::default(),
        },
        v4: Some(HashMap::from([("1".to_owned(), server)])),
        ..Default::default()
    };
    std::thread::Builder::new()
        .name("mqtt-broker".into())
        .spawn(move || {
            let mut broker = rumqttd::Broker::new(config);
            if let Err(e) = broker.start() {
                tracing::error!(error = %e, "embedded broker stopped");
            }
        })
        .map_err(|e| BrokerError::Start(e.to_string()))?;

    // Not probed here: an MQTT-less TCP probe makes rumqttd log an error, and
    // the collector's own client retries until the broker accepts it.
    tracing::info!(%addr, "embedded MQTT broker starting");
    Ok(addr)
}

/// TLS connections passed to the broker at once; more wait in the queue.
const MAX_TLS_CLIENTS: usize = 10_000;

/// MQTT over TLS in front of the embedded broker: each connection's TLS is
/// ended here (the HTTPS listener's handshake loop: rustls, client
/// certificates when configured, a 10 s handshake limit, each in its own
/// task) and its bytes are passed to the broker's plain listener on `plain`.
/// rumqttd's own TLS would build a second, older rustls and an X.509
/// parser; this reuses the ones the collector already has.
pub async fn serve_tls(mut listener: crate::api::tls::TlsListener, plain: SocketAddr) {
    use axum::serve::Listener as _;
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_TLS_CLIENTS));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let (mut tls, peer) = listener.accept().await;
        tokio::spawn(async move {
            let _permit = permit;
            let mut broker = match tokio::net::TcpStream::connect(plain).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(%peer, error = %e, "embedded broker unreachable for a TLS client");
                    return;
                }
            };
            let _ = broker.set_nodelay(true);
            // Either side closing ends both.
            let _ = tokio::io::copy_bidirectional(&mut tls, &mut broker).await;
        });
    }
}
