//! The running agent: one polling task per Modbus bus and per SNMP device,
//! one publisher that numbers each poll as a batch and spools it, the link
//! that sends the spool to the broker, one MQTT event loop, the retained
//! status, and (optionally) `/metrics`.
//!
//! ```text
//! bus task (Modbus) ──┐  bounded channel   ┌ publisher ─ seq ─ batch ─► link: spool ─► MQTT client ─► event loop ─► broker
//! bus task (Modbus) ──┼──────────────────► ┤                              ▲  (PUBACK, collector's confirmations) │
//! SNMP device task ───┘                    └ status (health, spool)       └──────────────────────────────────────┘
//! ```

use crate::config::Agent;
use crate::drivers::modbus::bus::BusRunner;
use crate::drivers::snmp::SnmpPoller;
use crate::drivers::DevicePoll;
use crate::link::{Link, LinkOptions, OutBatch, WINDOW};
use crate::metrics::AgentMetrics;
use crate::seq::Sequence;
use crate::spool::{OpenReport, Spool, SpoolError};
use roomguard_protocol::clock::{jitter, now_ms};
use roomguard_protocol::{
    batch::clean_text, AgentState, Batch, DeviceHealth, Quality, SpoolStatus, Status, Topic,
    PROTOCOL_VERSION,
};
use rumqttc::{AsyncClient, Event, EventLoop, LastWill, MqttOptions, Outgoing, Packet, QoS};
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use thiserror::Error;
use tokio::sync::{mpsc, Notify};
use tokio::time::MissedTickBehavior;

/// How long a stopping agent waits for its last batches to be confirmed.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Polls waiting for the publisher. When full, device tasks wait (their next
/// poll is delayed) rather than drop a reading.
const POLL_QUEUE: usize = 256;

#[derive(Debug, Error)]
pub enum AgentError {
    #[error("sequence file: {0}")]
    Sequence(#[from] std::io::Error),
    #[error("{0}")]
    Spool(#[from] SpoolError),
    #[error("mqtt.url: {0}")]
    Broker(String),
    #[error("metrics.listen: {0}")]
    Metrics(std::io::Error),
    #[error("snmp_traps.listen: {0}")]
    Traps(String),
}

/// The link is shared by the publisher, the MQTT event loop and the pacer;
/// each holds the lock only for quick, non-awaiting work.
type SharedLink = Arc<Mutex<Link>>;

fn lock(link: &SharedLink) -> MutexGuard<'_, Link> {
    // A panic while holding the lock would be a bug; the state is still
    // usable (at worst some batches are sent twice), so carry on.
    link.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs the agent until `shutdown` completes, then publishes "offline".
pub async fn run(agent: Agent, shutdown: impl Future<Output = ()>) -> Result<(), AgentError> {
    // Taken apart so that each bus's resolved points move into its task
    // rather than being copied (for a large site they are most of the heap).
    let Agent {
        config,
        buses,
        snmp,
        key,
        ..
    } = agent;
    let cfg = &config;
    std::fs::create_dir_all(&cfg.state_dir)?;
    let seq = Sequence::open(&cfg.state_dir.join("sequence"))?;
    let first_seq = seq.peek();
    let (spool, report) = Spool::open(&cfg.state_dir.join("spool"), cfg.spool.limits())?;
    log_recovery(&report);
    let brokers = cfg.brokers().map_err(AgentError::Broker)?;
    // One set of options per broker node, all else the same.
    let mut each = Vec::with_capacity(brokers.len());
    for broker in &brokers {
        let mut opts = MqttOptions::new(cfg.client_id(), broker.host.clone(), broker.port);
        cfg.mqtt
            .security
            .apply(broker, &mut opts)
            .map_err(AgentError::Broker)?;
        each.push(opts);
    }
    let status_topic = Topic::status(&cfg.site, &cfg.agent);
    let will = Status::offline(&cfg.site, &cfg.agent).to_json();
    let will = match &key {
        Some(k) => k.sign(&status_topic, &will),
        None => will,
    };
    for opts in &mut each {
        opts.set_keep_alive(cfg.mqtt.keep_alive);
        // A persistent session, so the broker keeps our confirmation
        // subscription (and what was sent to it) while we are away. What we
        // publish is resent from the spool, not from rumqttc's in-memory state.
        opts.set_clean_session(false);
        opts.set_inflight(WINDOW as u16);
        opts.set_max_packet_size(
            roomguard_protocol::MAX_PAYLOAD_BYTES + 1024,
            roomguard_protocol::MAX_PAYLOAD_BYTES + 1024,
        );
        opts.set_last_will(LastWill::new(
            status_topic.clone(),
            will.clone(),
            QoS::AtLeastOnce,
            true,
        ));
    }
    // Room for the whole window plus statuses and subscriptions.
    let (client, eventloop) = AsyncClient::new(each[0].clone(), WINDOW * 2 + 16);
    let link: SharedLink = Arc::new(Mutex::new(Link::new(
        spool,
        client.clone(),
        LinkOptions {
            batch_topic: Topic::batch(&cfg.site, &cfg.agent),
            status_topic: status_topic.clone(),
            ack_topic: Topic::ack(&cfg.site, &cfg.agent),
            confirm_by: cfg.spool.confirm,
            confirm_timeout: cfg.spool.confirm_timeout,
            replay_rate: cfg.spool.replay_rate,
            key,
            first_seq,
        },
    )));
    let connected = Arc::new(Notify::new());
    let pace = Arc::new(Notify::new());

    let device_ids: Vec<String> = buses
        .iter()
        .flat_map(|b| b.devices.iter().map(|d| d.id.clone()))
        .chain(snmp.iter().map(|s| s.device.id.clone()))
        .collect();
    let metrics = Arc::new(AgentMetrics::new(device_ids.iter().map(String::as_str)));
    let mut tasks = tokio::task::JoinSet::new();
    let metrics_addr = match &cfg.metrics {
        Some(m) => {
            let listener = tokio::net::TcpListener::bind(m.listen)
                .await
                .map_err(AgentError::Metrics)?;
            let addr = listener.local_addr().map_err(AgentError::Metrics)?;
            let app = crate::metrics::router(metrics.clone(), link.clone());
            tasks.spawn(async move {
                if let Err(e) = axum::serve(listener, app).await {
                    tracing::error!(error = %e, "metrics endpoint stopped");
                }
            });
            Some(addr)
        }
        None => None,
    };

    let (mut trap_rx, traps_addr) = match &cfg.snmp_traps {
        Some(t) => {
            let (listener, receivers) = trap_listener(t, &snmp, metrics.traps.clone()).await?;
            let addr = listener.socket.local_addr().ok();
            tracing::info!(listen = ?addr, devices = listener.targets.len(), "receiving SNMP traps");
            tasks.spawn(listener.run());
            (receivers, addr)
        }
        None => (HashMap::new(), None),
    };
    let (tx, rx) = mpsc::channel::<DevicePoll>(POLL_QUEUE);
    for bus in buses {
        for d in &bus.devices {
            let requests: Vec<usize> = d.groups.iter().map(|g| g.requests.len()).collect();
            tracing::info!(bus = %bus.bus.id, device = %d.id, points = d.points.len(), ?requests, "polling");
        }
        tasks.spawn(BusRunner::new(bus).run(tx.clone()));
    }
    for s in snmp {
        tracing::info!(device = %s.device.id, points = s.points.len(), tables = s.tables.len(), "polling (SNMP)");
        let traps = trap_rx.remove(&s.device.id);
        let poller = SnmpPoller::new(s);
        let poller = match traps {
            Some(rx) => poller.with_traps(rx),
            None => poller,
        };
        tasks.spawn(poller.run(tx.clone()));
    }
    drop(tx);
    // Scripts and tests wait for this line rather than sleeping. It also says
    // what the spool recovered, so a test can account for every batch.
    println!(
        "{}",
        serde_json::json!({
            "event": "ready",
            "site": cfg.site,
            "agent": cfg.agent,
            "metrics": metrics_addr,
            "traps": traps_addr,
            "first_seq": first_seq,
            "spool": {
                "pending": report.pending_batches,
                "last_seq": report.last_seq,
                "discarded_records": report.discarded_records,
                "discarded_bytes": report.discarded_bytes,
            },
        })
    );
    let connection = tokio::spawn(drive_connection(
        eventloop,
        each,
        link.clone(),
        connected.clone(),
        pace.clone(),
        metrics.clone(),
    ));
    let pacer = tokio::spawn(pacer(link.clone(), pace.clone()));
    let publisher = Publisher {
        link: link.clone(),
        pace,
        site: cfg.site.clone(),
        agent: cfg.agent.clone(),
        seq,
        health: device_ids
            .iter()
            .map(|d| (d.clone(), DeviceHealth::new(d)))
            .collect(),
        metrics,
        described: HashMap::new(),
    };
    tokio::select! {
        r = publisher.run(rx, connected, cfg.mqtt.status_interval) => r?,
        () = shutdown => tracing::info!("shutting down"),
    }
    tasks.abort_all();
    // Polling has stopped. While connected, give what is still owed a few
    // seconds to be confirmed, so a clean stop leaves an empty spool; what
    // is left is sent by the next start.
    let grace = Instant::now() + SHUTDOWN_GRACE;
    while Instant::now() < grace {
        let (connected, pending) = {
            let l = lock(&link);
            (l.is_connected(), l.spool().pending_batches())
        };
        if !connected || pending == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    pacer.abort();
    // Say goodbye explicitly so the status does not wait for the keep-alive
    // to expire; the last will covers the cases where we cannot.
    let goodbye = Status {
        at: Some(now_ms()),
        ..Status::offline(&cfg.site, &cfg.agent)
    };
    {
        let mut l = lock(&link);
        l.sync();
        l.publish_goodbye(goodbye.to_json());
    }
    // Let the event loop flush the goodbye, but never hang on a dead broker.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let _ = client.disconnect().await;
    let _ = tokio::time::timeout(Duration::from_secs(2), connection).await;
    let l = lock(&link);
    println!(
        "{}",
        serde_json::json!({
            "event": "stopped",
            "site": cfg.site,
            "agent": cfg.agent,
            "last_seq": l.spool().last_seq(),
            "pending": l.spool().pending_batches(),
        })
    );
    Ok(())
}

fn log_recovery(report: &OpenReport) {
    for d in &report.damage {
        tracing::warn!("spool: {d}");
    }
    if report.discarded_records > 0 {
        tracing::warn!(
            stretches = report.discarded_records,
            bytes = report.discarded_bytes,
            "spool: damaged records discarded at start (see above); the rest is kept"
        );
    }
    if report.pending_batches > 0 {
        tracing::info!(
            batches = report.pending_batches,
            segments = report.segments,
            "spool: unconfirmed batches from a previous run will be sent as backfill"
        );
    }
}

trait HealthExt {
    fn new(device: &str) -> Self;
    /// Takes a poll's outcome in; says what changed, for the log.
    fn record(&mut self, good: bool, error: Option<&String>) -> HealthChange;
}

/// What a poll changed in a device's health, worth a log line.
#[derive(Debug, PartialEq, Eq)]
enum HealthChange {
    None,
    /// No good reading at all (a new error, or the first of a run).
    Failed,
    /// Good readings, and some points failed (a new error).
    Partly,
    /// Answering again after failures.
    Recovered,
}

impl HealthExt for DeviceHealth {
    fn new(device: &str) -> Self {
        DeviceHealth {
            device: device.to_owned(),
            last_success: None,
            consecutive_failures: 0,
            last_error: None,
            last_latency_ms: None,
            cycle_overruns: 0,
            reads_split: 0,
        }
    }

    /// Only a poll without a single good reading is a failure: a device
    /// answering 14 points and missing one is up, its error kept to say
    /// which (it counted as failing, and its consecutive failures grew).
    fn record(&mut self, good: bool, error: Option<&String>) -> HealthChange {
        let changed = error.is_some_and(|e| self.last_error.as_ref() != Some(e));
        self.last_error = error.cloned();
        if good {
            let was_failing = std::mem::take(&mut self.consecutive_failures) > 0;
            if was_failing {
                HealthChange::Recovered
            } else if changed {
                HealthChange::Partly
            } else {
                HealthChange::None
            }
        } else {
            self.consecutive_failures += 1;
            if changed || self.consecutive_failures == 1 {
                HealthChange::Failed
            } else {
                HealthChange::None
            }
        }
    }
}

/// Binds the trap receiver and makes one channel per SNMP device (by id).
async fn trap_listener(
    t: &crate::drivers::snmp::config::TrapListen,
    snmp: &[crate::config::SnmpSpec],
    counters: Arc<crate::drivers::snmp::trap::TrapCounters>,
) -> Result<
    (
        crate::drivers::snmp::trap::TrapListener,
        HashMap<String, mpsc::Receiver<crate::drivers::snmp::trap::TrapEvent>>,
    ),
    AgentError,
> {
    use crate::drivers::snmp::{community_of, trap, V3Credentials};
    let socket = tokio::net::UdpSocket::bind(t.listen).await.map_err(|e| {
        let hint = if t.listen.port() < 1024 && e.kind() == std::io::ErrorKind::PermissionDenied {
            " (ports below 1024 need CAP_NET_BIND_SERVICE; or use a port above 1023 and point the devices at it)"
        } else {
            ""
        };
        AgentError::Traps(format!("cannot listen on {}: {e}{hint}", t.listen))
    })?;
    let mut targets = Vec::new();
    let mut receivers = HashMap::new();
    for s in snmp {
        let d = &s.device;
        let addr = crate::drivers::snmp::with_default_port(&d.address, 161);
        // Traps come from the device's own address; a name is looked up
        // once here (a device whose name does not resolve sends none we
        // could place, which the log says).
        let ips: Vec<std::net::IpAddr> = match tokio::net::lookup_host(addr.as_str()).await {
            Ok(found) => found.map(|a| a.ip()).collect(),
            Err(e) => {
                tracing::warn!(device = %d.id, address = %d.address, error = %e,
                    "cannot resolve the device's address; its traps will count as unknown_source");
                Vec::new()
            }
        };
        let (tx, rx) = mpsc::channel(16);
        receivers.insert(d.id.clone(), rx);
        targets.push(trap::TrapTarget {
            device: d.id.clone(),
            ips,
            community: community_of(d),
            v3: d.v3.as_ref().map(V3Credentials::from_config),
            traps: trap::by_oid(&s.traps),
            points: s.points.iter().map(|p| (p.id.clone(), p.clone())).collect(),
            tx,
        });
    }
    Ok((
        trap::TrapListener {
            socket,
            targets,
            counters,
        },
        receivers,
    ))
}

/// Keeps the MQTT connection up and tells the link what happened to each
/// publish: rumqttc reconnects on the next poll after an error, so this loop
/// only paces the retries (capped exponential backoff with jitter).
///
/// With several brokers (`mqtt.fallback_urls`), a failed connection moves
/// on to the next one in turn. A broker that does not have this agent's
/// session (separate brokers, not one cluster) says so at connection, and
/// the link sends what is unconfirmed again.
async fn drive_connection(
    mut eventloop: EventLoop,
    brokers: Vec<MqttOptions>,
    link: SharedLink,
    connected: Arc<Notify>,
    pace: Arc<Notify>,
    metrics: Arc<AgentMetrics>,
) {
    let mut backoff = Duration::from_millis(250);
    let max_backoff = Duration::from_secs(30);
    let mut current = 0;
    loop {
        let event = eventloop.poll().await;
        let wait = match event {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                let (host, port) = eventloop.mqtt_options.broker_address();
                tracing::info!(session_present = ack.session_present, broker = %format!("{host}:{port}"), "connected to broker");
                backoff = Duration::from_millis(250);
                metrics.broker_connected.store(1, Relaxed);
                lock(&link).on_connected(ack.session_present);
                connected.notify_one();
                lock(&link).pump()
            }
            Ok(Event::Outgoing(Outgoing::Publish(pkid))) => {
                lock(&link).on_publish_sent(pkid);
                None
            }
            Ok(Event::Outgoing(Outgoing::AwaitAck(pkid))) => {
                lock(&link).on_publish_held(pkid);
                None
            }
            Ok(Event::Incoming(Packet::PubAck(ack))) => {
                let mut l = lock(&link);
                l.on_puback(ack.pkid);
                l.pump()
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                let mut l = lock(&link);
                if l.on_confirm_message(&p.topic, &p.payload) {
                    l.pump()
                } else {
                    None
                }
            }
            Ok(Event::Outgoing(Outgoing::Disconnect)) => return,
            Ok(_) => None,
            Err(e) => {
                metrics.broker_connected.store(0, Relaxed);
                lock(&link).on_disconnected(&mut eventloop.pending);
                let (host, port) = eventloop.mqtt_options.broker_address();
                tracing::warn!(error = %e, broker = %format!("{host}:{port}"), retry_in = ?backoff, "broker connection failed");
                if brokers.len() > 1 {
                    current = (current + 1) % brokers.len();
                    eventloop.mqtt_options = brokers[current].clone();
                    let (host, port) = eventloop.mqtt_options.broker_address();
                    tracing::info!(broker = %format!("{host}:{port}"), "trying the next broker");
                }
                tokio::time::sleep(backoff + jitter(backoff / 2)).await;
                backoff = (backoff * 2).min(max_backoff);
                None
            }
        };
        if wait.is_some() {
            pace.notify_one();
        }
    }
}

/// Sends the rate-limited backlog: sleeps while there is none, wakes when
/// someone finds the backlog waiting on the rate limit.
async fn pacer(link: SharedLink, pace: Arc<Notify>) {
    loop {
        pace.notified().await;
        loop {
            let wait = lock(&link).pump();
            let Some(wait) = wait else { break };
            tokio::time::sleep(wait.max(Duration::from_millis(5))).await;
        }
    }
}

struct Publisher {
    link: SharedLink,
    pace: Arc<Notify>,
    site: String,
    agent: String,
    seq: Sequence,
    health: BTreeMap<String, DeviceHealth>,
    metrics: Arc<AgentMetrics>,
    /// When each device's point descriptions were last sent.
    described: HashMap<String, Instant>,
}

/// How often a device's point descriptions ride along with its batch. A
/// collector that starts afresh learns every room and unit within this.
const DESCRIBE_EVERY: Duration = Duration::from_secs(60);

/// Most polls spooled with one write.
const BURST: usize = 64;

impl Publisher {
    async fn run(
        mut self,
        mut rx: mpsc::Receiver<DevicePoll>,
        connected: Arc<Notify>,
        status_every: Duration,
    ) -> Result<(), AgentError> {
        let mut status_tick = tokio::time::interval(status_every);
        status_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut upkeep = tokio::time::interval(Duration::from_secs(1));
        upkeep.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut sync_tick = tokio::time::interval(lock(&self.link).sync_period());
        sync_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                poll = rx.recv() => {
                    let Some(poll) = poll else { return Ok(()) };
                    // Polls come in bursts (devices share a few phases per
                    // interval): take what has arrived and spool it with one
                    // write.
                    let mut out = Vec::with_capacity(rx.len() + 1);
                    let mut prepared = self.prepare(poll).map(|b| out.extend(b));
                    let mut taken = 1;
                    while prepared.is_ok() && taken < BURST {
                        let Ok(poll) = rx.try_recv() else { break };
                        taken += 1;
                        prepared = self.prepare(poll).map(|b| out.extend(b));
                    }
                    // What was prepared before a failure still goes out.
                    self.submit(out);
                    prepared?;
                }
                () = connected.notified() => {
                    // A new connection may be to a collector (or broker) that
                    // knows nothing yet: describe every device again.
                    self.described.clear();
                    self.publish_status();
                }
                _ = status_tick.tick() => self.publish_status(),
                _ = sync_tick.tick() => lock(&self.link).sync_check(),
                _ = upkeep.tick() => {
                    if lock(&self.link).maintain(now_ms()).is_some() {
                        self.pace.notify_one();
                    }
                }
            }
        }
    }

    /// Records a poll in the device's health and metrics, and makes its batch.
    fn prepare(&mut self, poll: DevicePoll) -> Result<Option<OutBatch>, AgentError> {
        // Every device has an entry from the start: no key to allocate per poll.
        if !self.health.contains_key(&poll.device) {
            self.health
                .insert(poll.device.clone(), DeviceHealth::new(&poll.device));
        }
        let Some(h) = self.health.get_mut(&poll.device) else {
            return Ok(None);
        };
        h.last_latency_ms = Some(poll.latency.as_millis() as u64);
        h.reads_split = poll.reads_split;
        let good = poll.result.any_good();
        if good {
            h.last_success = Some(poll.polled_at);
        }
        if poll.overrun {
            h.cycle_overruns += 1;
            tracing::warn!(device = %poll.device, "poll started a whole interval late: the bus cannot keep up");
        }
        if let Some(c) = self.metrics.devices.get(&poll.device) {
            c.polls.fetch_add(1, Relaxed);
            c.failed_polls.fetch_add(u64::from(!good), Relaxed);
            c.requests.fetch_add(u64::from(poll.requests), Relaxed);
            c.registers.fetch_add(u64::from(poll.registers), Relaxed);
            c.overruns.fetch_add(u64::from(poll.overrun), Relaxed);
            c.poll_micros
                .fetch_add(poll.latency.as_micros() as u64, Relaxed);
        }
        let err = poll.result.error.as_ref();
        match h.record(good, err) {
            HealthChange::Failed => {
                tracing::warn!(device = %poll.device, error = ?err, "poll failed")
            }
            HealthChange::Partly => {
                tracing::warn!(device = %poll.device, error = ?err, "some points of the device failed")
            }
            HealthChange::Recovered => {
                tracing::info!(device = %poll.device, "device answering again")
            }
            HealthChange::None => {}
        }
        if poll.result.readings.is_empty() {
            return Ok(None);
        }
        self.metrics.batches_published.fetch_add(1, Relaxed);
        self.metrics
            .readings_published
            .fetch_add(poll.result.readings.len() as u64, Relaxed);
        let describe = self
            .described
            .get(&poll.device)
            .is_none_or(|at| at.elapsed() >= DESCRIBE_EVERY);
        let points = if describe {
            self.described.insert(poll.device.clone(), Instant::now());
            poll.meta.to_vec()
        } else {
            Vec::new()
        };
        let readings = poll.result.readings.len() as u32;
        let mut polled = poll.result.readings;
        for r in &mut polled {
            if let Quality::Bad(why) = &mut r.quality {
                clean_text(why);
            }
            if let Some(x) = &mut r.text {
                clean_text(x);
            }
        }
        let batch = Batch {
            v: PROTOCOL_VERSION,
            site: self.site.clone(),
            agent: self.agent.clone(),
            seq: self.seq.take()?,
            points,
            device: poll.device,
            polled_at: poll.polled_at,
            backfill: false,
            readings: polled,
        };
        let payload = batch.to_json();
        Ok(Some(OutBatch {
            seq: batch.seq,
            polled_at: batch.polled_at,
            readings,
            payload,
        }))
    }

    /// Spools a burst of batches and sends them. Spooled before sent; never
    /// waits on the broker. A full disk is logged and polling goes on: the
    /// next batches may fit again.
    fn submit(&mut self, out: Vec<OutBatch>) {
        if out.is_empty() {
            return;
        }
        let done = lock(&self.link).submit_all(out);
        match &done.error {
            Some(e) => self.metrics.spool_failing.failed(e),
            None => self.metrics.spool_failing.succeeded(),
        }
        if let Some(e) = &done.error {
            if done.lost > 0 {
                tracing::error!(error = %e, batches = done.lost, "cannot write the spool; batches lost");
                self.metrics
                    .spool_write_errors
                    .fetch_add(done.lost as u64, Relaxed);
            } else {
                tracing::error!(error = %e, "cannot flush the spool to disk");
            }
        }
        if done.waiting.is_some() {
            self.pace.notify_one();
        }
    }

    fn publish_status(&self) {
        let mut link = lock(&self.link);
        let status = Status {
            v: PROTOCOL_VERSION,
            site: self.site.clone(),
            agent: self.agent.clone(),
            state: AgentState::Online,
            at: Some(now_ms()),
            software: Some(env!("CARGO_PKG_VERSION").to_owned()),
            devices: self.health.values().cloned().collect(),
            spool: Some(SpoolStatus {
                write_error: self.metrics.spool_failing.failing().map(|(_, why)| why),
                ..link.spool_status()
            }),
        };
        link.publish_status(status.to_json());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_device_with_good_readings_and_one_missing_object_is_not_failing() {
        let mut h = <DeviceHealth as HealthExt>::new("ups");
        let missing = "battery_temperature: noSuchObject".to_owned();
        assert_eq!(h.record(true, Some(&missing)), HealthChange::Partly);
        assert_eq!(h.record(true, Some(&missing)), HealthChange::None);
        assert_eq!(h.consecutive_failures, 0);
        assert_eq!(h.last_error.as_deref(), Some(missing.as_str()));
        let down = "no reply within 2s".to_owned();
        assert_eq!(h.record(false, Some(&down)), HealthChange::Failed);
        assert_eq!(h.record(false, Some(&down)), HealthChange::None);
        assert_eq!(h.consecutive_failures, 2);
        assert_eq!(h.record(true, None), HealthChange::Recovered);
        assert_eq!((h.consecutive_failures, h.last_error.as_deref()), (0, None));
    }
}
