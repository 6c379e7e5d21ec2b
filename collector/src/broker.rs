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
pub fn start(listen: SocketAddr, max_payload: usize) -> Result<SocketAddr, BrokerError> {
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
        connection_timeout_ms: 60_000,
        max_payload_size: max_payload,
        max_inflight_count: 100,
        auth: None,
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
            max_segment_size: 16 * 1024 * 1024,
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
