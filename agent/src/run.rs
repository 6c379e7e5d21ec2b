//! The running agent: one polling task per device, one publisher that numbers
//! and sends each poll as a batch, one MQTT event loop, and the retained status.
//!
//! ```text
//! device task ──┐  bounded channel   ┌ publisher ─ seq ─ batch ─► MQTT client ─► event loop ─► broker
//! device task ──┼──────────────────► ┤
//! device task ──┘                    └ status (health of every device, retained)
//! ```

use crate::config::AgentConfig;
use crate::drivers::modbus::ModbusDriver;
use crate::drivers::PollResult;
use crate::seq::Sequence;
use roomguard_protocol::{AgentState, Batch, DeviceHealth, Status, Topic, PROTOCOL_VERSION};
use rumqttc::{AsyncClient, Event, EventLoop, LastWill, MqttOptions, Packet, QoS};
use std::collections::BTreeMap;
use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use thiserror::Error;
use tokio::sync::{mpsc, Notify};
use tokio::time::MissedTickBehavior;

/// Polls waiting for the publisher. When full, device tasks wait (their next
/// poll is delayed) rather than drop a reading.
const POLL_QUEUE: usize = 256;

#[derive(Debug, Error)]
pub enum AgentError {
    #[error("sequence file: {0}")]
    Sequence(#[from] std::io::Error),
    #[error("mqtt.url: {0}")]
    Broker(String),
}

/// Wall-clock time in ms since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A random duration in `[0, max)`, for spreading polls and reconnects.
pub fn jitter(max: Duration) -> Duration {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(now_ms() as u64);
    let r = h.finish();
    let nanos = max.as_nanos().max(1) as u64;
    Duration::from_nanos(r % nanos)
}

struct DevicePoll {
    device: String,
    polled_at: i64,
    latency: Duration,
    result: PollResult,
}

/// Runs the agent until `shutdown` completes, then publishes "offline".
pub async fn run(cfg: AgentConfig, shutdown: impl Future<Output = ()>) -> Result<(), AgentError> {
    std::fs::create_dir_all(&cfg.state_dir)?;
    let seq = Sequence::open(&cfg.state_dir.join("sequence"))?;
    let broker = cfg.broker().map_err(AgentError::Broker)?;

    let mut opts = MqttOptions::new(cfg.client_id(), broker.host, broker.port);
    opts.set_keep_alive(cfg.mqtt.keep_alive);
    // A persistent session: with a clean session, rumqttc drops in-flight QoS 1
    // publishes on reconnect.
    opts.set_clean_session(false);
    opts.set_max_packet_size(
        roomguard_protocol::MAX_PAYLOAD_BYTES + 1024,
        roomguard_protocol::MAX_PAYLOAD_BYTES + 1024,
    );
    let status_topic = Topic::status(&cfg.site, &cfg.agent);
    opts.set_last_will(LastWill::new(
        status_topic.clone(),
        Status::offline(&cfg.site, &cfg.agent).to_json(),
        QoS::AtLeastOnce,
        true,
    ));
    let (client, eventloop) = AsyncClient::new(opts, 64);
    let connected = Arc::new(Notify::new());

    let (tx, rx) = mpsc::channel::<DevicePoll>(POLL_QUEUE);
    let mut tasks = tokio::task::JoinSet::new();
    for dev in &cfg.modbus {
        let driver = ModbusDriver::new(dev.clone());
        tracing::info!(device = %dev.id, requests = driver.requests_per_poll(), points = dev.points.len(), "polling");
        tasks.spawn(poll_device(driver, dev.interval, tx.clone()));
    }
    drop(tx);
    let connection = tokio::spawn(drive_connection(eventloop, connected.clone()));
    let publisher = Publisher {
        client: client.clone(),
        site: cfg.site.clone(),
        agent: cfg.agent.clone(),
        batch_topic: Topic::batch(&cfg.site, &cfg.agent),
        status_topic,
        seq,
        health: cfg
            .modbus
            .iter()
            .map(|d| (d.id.clone(), DeviceHealth::new(&d.id)))
            .collect(),
    };
    tokio::select! {
        r = publisher.run(rx, connected, cfg.mqtt.status_interval) => r?,
        () = shutdown => tracing::info!("shutting down"),
    }
    tasks.abort_all();
    // Say goodbye explicitly so the status does not wait for the keep-alive
    // to expire; the last will covers the cases where we cannot.
    let goodbye = Status {
        at: Some(now_ms()),
        ..Status::offline(&cfg.site, &cfg.agent)
    };
    let topic = Topic::status(&cfg.site, &cfg.agent);
    let _ = client
        .publish(topic, QoS::AtLeastOnce, true, goodbye.to_json())
        .await;
    let _ = client.disconnect().await;
    // Let the event loop flush the goodbye, but never hang on a dead broker.
    let _ = tokio::time::timeout(Duration::from_secs(2), connection).await;
    Ok(())
}

trait HealthExt {
    fn new(device: &str) -> Self;
}

impl HealthExt for DeviceHealth {
    fn new(device: &str) -> Self {
        DeviceHealth {
            device: device.to_owned(),
            last_success: None,
            consecutive_failures: 0,
            last_error: None,
            last_latency_ms: None,
        }
    }
}

async fn poll_device(mut driver: ModbusDriver, interval: Duration, tx: mpsc::Sender<DevicePoll>) {
    // Spread devices over the interval so they do not all fire at once.
    tokio::time::sleep(jitter(interval)).await;
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let polled_at = now_ms();
        let started = Instant::now();
        let result = driver.poll(now_ms).await;
        let latency = started.elapsed();
        if latency > interval {
            tracing::warn!(
                device = driver.id(),
                ?latency,
                ?interval,
                "poll took longer than its interval"
            );
        }
        let poll = DevicePoll {
            device: driver.id().to_owned(),
            polled_at,
            latency,
            result,
        };
        if tx.send(poll).await.is_err() {
            return; // publisher gone: shutting down
        }
    }
}

/// Keeps the MQTT connection up: rumqttc reconnects on the next poll after an
/// error, so this loop only paces the retries (capped exponential backoff
/// with jitter) and announces each new connection.
async fn drive_connection(mut eventloop: EventLoop, connected: Arc<Notify>) {
    let mut backoff = Duration::from_millis(250);
    let max_backoff = Duration::from_secs(30);
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                tracing::info!(session_present = ack.session_present, "connected to broker");
                backoff = Duration::from_millis(250);
                connected.notify_one();
            }
            Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) => {
                return;
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?backoff, "broker connection failed");
                tokio::time::sleep(backoff + jitter(backoff / 2)).await;
                backoff = (backoff * 2).min(max_backoff);
            }
        }
    }
}

struct Publisher {
    client: AsyncClient,
    site: String,
    agent: String,
    batch_topic: String,
    status_topic: String,
    seq: Sequence,
    health: BTreeMap<String, DeviceHealth>,
}

impl Publisher {
    async fn run(
        mut self,
        mut rx: mpsc::Receiver<DevicePoll>,
        connected: Arc<Notify>,
        status_every: Duration,
    ) -> Result<(), AgentError> {
        let mut status_tick = tokio::time::interval(status_every);
        status_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                poll = rx.recv() => {
                    let Some(poll) = poll else { return Ok(()) };
                    self.publish_poll(poll).await?;
                }
                () = connected.notified() => self.publish_status().await,
                _ = status_tick.tick() => self.publish_status().await,
            }
        }
    }

    async fn publish_poll(&mut self, poll: DevicePoll) -> Result<(), AgentError> {
        let h = self
            .health
            .entry(poll.device.clone())
            .or_insert_with(|| DeviceHealth::new(&poll.device));
        h.last_latency_ms = Some(poll.latency.as_millis() as u64);
        if poll.result.any_good() {
            h.last_success = Some(poll.polled_at);
        }
        match &poll.result.error {
            Some(err) => {
                h.consecutive_failures += 1;
                if h.last_error.as_deref() != Some(err) {
                    tracing::warn!(device = %poll.device, error = %err, "poll failed");
                }
                h.last_error = Some(err.clone());
            }
            None => {
                if h.consecutive_failures > 0 {
                    tracing::info!(device = %poll.device, "device answering again");
                }
                h.consecutive_failures = 0;
                h.last_error = None;
            }
        }
        if poll.result.readings.is_empty() {
            return Ok(());
        }
        let batch = Batch {
            v: PROTOCOL_VERSION,
            site: self.site.clone(),
            agent: self.agent.clone(),
            seq: self.seq.next()?,
            device: poll.device,
            polled_at: poll.polled_at,
            backfill: false,
            readings: poll.result.readings,
        };
        // Waits while rumqttc's request queue is full (broker down): the
        // device tasks then wait on our channel in turn. Nothing is dropped here.
        if let Err(e) = self
            .client
            .publish(
                self.batch_topic.clone(),
                QoS::AtLeastOnce,
                false,
                batch.to_json(),
            )
            .await
        {
            tracing::error!(error = %e, "MQTT client closed; batch not sent");
        }
        Ok(())
    }

    async fn publish_status(&self) {
        let status = Status {
            v: PROTOCOL_VERSION,
            site: self.site.clone(),
            agent: self.agent.clone(),
            state: AgentState::Online,
            at: Some(now_ms()),
            software: Some(env!("CARGO_PKG_VERSION").to_owned()),
            devices: self.health.values().cloned().collect(),
        };
        // try_publish: a status is refreshed periodically, so when the queue
        // is full (broker down) skipping one is harmless and never blocks polls.
        if let Err(e) = self.client.try_publish(
            self.status_topic.clone(),
            QoS::AtLeastOnce,
            true,
            status.to_json(),
        ) {
            tracing::debug!(error = %e, "status not queued");
        }
    }
}
