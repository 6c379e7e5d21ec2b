//! Ingest: subscribes to every agent's topics, validates each message, and
//! hands accepted batches to the store writer. A message that fails is
//! logged with its reason, counted, and dropped; nothing an agent sends can
//! stop ingest.

use crate::confirm::{self, Confirmations};
use crate::metrics::Metrics;
use crate::store::{now_ms, Ack, WriteCmd};
use roomguard_protocol::conf::BrokerUrl;
use roomguard_protocol::{decode_batch, Status, Topic, TopicError, TopicKind, MAX_PAYLOAD_BYTES};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, Publish, QoS};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// Readings accepted but not yet committed, at most. Ingest waits for room
/// (and so stops reading from the broker) beyond it: a bound on memory
/// whatever the batches' sizes, which the store queue's length alone is not.
pub const MAX_QUEUED_READINGS: usize = 400_000;

/// Requests (acknowledgements, subscriptions) waiting for the MQTT event loop.
const REQUEST_QUEUE: usize = 16_384;

/// Connects to `broker` and ingests until the store's queue closes.
pub async fn run(
    broker: BrokerUrl,
    security: roomguard_protocol::mqtt::Security,
    max_points_per_agent: usize,
    client_id: String,
    metrics: Arc<Metrics>,
    store: mpsc::Sender<WriteCmd>,
    confirmations: Arc<Confirmations>,
) {
    // Persistent sessions: QoS 1 messages published while we are away are
    // kept by the broker and delivered on reconnect, and rumqttc keeps our
    // own unacknowledged confirmations across a reconnect.
    let options = |client_id: String| {
        let mut opts = MqttOptions::new(client_id, broker.host.clone(), broker.port);
        opts.set_keep_alive(Duration::from_secs(15));
        opts.set_clean_session(false);
        security.apply(&broker, &mut opts).map(|()| opts)
    };
    // Checked when the configuration was loaded; a file that vanished since
    // is reported and the connection tried without it failing silently.
    let (mut opts, mut confirm_opts) = match (
        options(client_id.clone()),
        options(format!("{client_id}-confirm")),
    ) {
        (Ok(o), Ok(c)) => (o, c),
        (Err(e), _) | (_, Err(e)) => {
            tracing::error!(error = %e, "mqtt.security: cannot set up TLS or login; not connecting");
            return;
        }
    };
    // Confirmations list ranges; many gaps make a long one.
    confirm_opts.set_max_packet_size(64 * 1024, 64 * 1024);
    // Accept a little more than the limit so oversized payloads reach the
    // decoder and are counted with a reason instead of killing the connection.
    opts.set_max_packet_size(MAX_PAYLOAD_BYTES * 2, 64 * 1024);
    // Acknowledge each message only once its readings are committed: a
    // crash in between means the broker delivers it again (the store
    // ignores what it already has).
    opts.set_manual_acks(true);
    // Acknowledgements queued from the writer thread (and the subscriptions)
    // are all that use this queue: no more than the broker's in-flight window
    // (2,000 advised, the embedded broker's) wait in it, so it fills only
    // under a broker allowing more than it holds (see `Acker`).
    // Confirmations have their own connection (see `confirm::run`).
    let (client, mut eventloop) = AsyncClient::new(opts, REQUEST_QUEUE);
    let _confirmer = AbortOnDrop(tokio::spawn(confirm::run(
        confirmations.clone(),
        confirm_opts,
        metrics.clone(),
    )));
    let filters = Topic::collector_filters();
    let mut catalogue = Catalogue::new(max_points_per_agent);
    let budget = Arc::new(tokio::sync::Semaphore::new(MAX_QUEUED_READINGS));
    let acker = Arc::new(Acker::new(client.clone(), metrics.clone()));
    let mut backoff = Duration::from_millis(250);
    loop {
        acker.retry();
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                tracing::info!(
                    session_present = ack.session_present,
                    "collector connected to broker"
                );
                metrics.broker_connected.set(1);
                metrics.broker_connects.inc();
                backoff = Duration::from_millis(250);
                // Subscribe on every connection: a broker that lost our
                // session (restart without persistence) has lost it too.
                for filter in &filters {
                    if let Err(e) = client.try_subscribe(filter.clone(), QoS::AtLeastOnce) {
                        tracing::error!(error = %e, "cannot subscribe");
                    }
                }
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                if !handle(
                    &p,
                    &acker,
                    &metrics,
                    &store,
                    &confirmations,
                    &mut catalogue,
                    &budget,
                )
                .await
                {
                    return;
                }
            }
            Ok(_) => {}
            Err(e) => {
                metrics.broker_connected.set(0);
                tracing::warn!(error = %e, retry_in = ?backoff, "broker connection failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        }
    }
}

/// Sends acknowledgements, from the writer thread or the ingest task. One
/// that finds rumqttc's request queue full is kept and sent again by the
/// ingest loop (`retry`), never dropped: an unacknowledged message would sit
/// in the broker's in-flight window until the next reconnect, and a few
/// thousand of those stop the broker sending anything. The queue filled when
/// confirmations shared it (they now have their own connection); it can
/// still fill under a broker whose in-flight window exceeds the queue, as a
/// large commit acknowledges a window's worth at once and rumqttc takes one
/// request per poll between bulk reads of incoming messages.
pub struct Acker {
    client: AsyncClient,
    metrics: Arc<Metrics>,
    unsent: std::sync::Mutex<Vec<Publish>>,
    /// Length of `unsent`, read without the lock on every poll.
    waiting: AtomicUsize,
}

impl Acker {
    fn new(client: AsyncClient, metrics: Arc<Metrics>) -> Acker {
        Acker {
            client,
            metrics,
            unsent: std::sync::Mutex::new(Vec::new()),
            waiting: AtomicUsize::new(0),
        }
    }

    fn ack(&self, p: &Publish) {
        // Behind others already waiting: keep it with them.
        if self.waiting.load(Relaxed) > 0 || self.client.try_ack(p).is_err() {
            let mut unsent = self.unsent.lock().unwrap_or_else(|e| e.into_inner());
            if unsent.is_empty() {
                // Once per episode: it should not happen with the advised
                // broker window, so say so where an operator looks.
                tracing::warn!("MQTT request queue full; acknowledgements wait for room (roomguard_acks_deferred_total)");
            }
            unsent.push(p.clone());
            self.waiting.store(unsent.len(), Relaxed);
            self.metrics.acks_deferred.inc();
        }
    }

    /// Sends what waits, as far as the queue has room.
    fn retry(&self) {
        if self.waiting.load(Relaxed) == 0 {
            return;
        }
        let mut unsent = self.unsent.lock().unwrap_or_else(|e| e.into_inner());
        let sent = unsent
            .iter()
            .take_while(|p| self.client.try_ack(p).is_ok())
            .count();
        unsent.drain(..sent);
        self.waiting.store(unsent.len(), Relaxed);
    }
}

/// The acknowledgement of `p`, sent from wherever it is called.
fn ack_for(p: &Publish, acker: &Arc<Acker>) -> Ack {
    ack_holding(p, acker, None)
}

/// The acknowledgement of `p`, which gives back `permit` (room for its
/// readings in the writer's queue) when it runs or is dropped.
fn ack_holding(
    p: &Publish,
    acker: &Arc<Acker>,
    permit: Option<tokio::sync::OwnedSemaphorePermit>,
) -> Ack {
    let (p, acker) = (p.clone(), acker.clone());
    Box::new(move || {
        drop(permit);
        acker.ack(&p);
    })
}

/// Validates one message and queues it for storage. Returns false when the
/// store has shut down.
async fn handle(
    p: &Publish,
    acker: &Arc<Acker>,
    metrics: &Arc<Metrics>,
    store: &mpsc::Sender<WriteCmd>,
    confirmations: &Confirmations,
    catalogue: &mut Catalogue,
    budget: &Arc<tokio::sync::Semaphore>,
) -> bool {
    metrics.messages_received.inc();
    // Refused messages are acknowledged at once: they will never be stored,
    // and unacknowledged they would come back on every reconnect.
    let refuse = |reason: &str| {
        metrics.reject(reason);
        ack_for(p, acker)();
    };
    let topic = match Topic::parse(&p.topic) {
        Ok(t) => t,
        Err(e) => {
            let reason = match e {
                TopicError::UnknownVersion(_) => "unknown_version",
                _ => "bad_topic",
            };
            tracing::warn!(topic = %p.topic.chars().take(160).collect::<String>(), error = %e, "message rejected");
            refuse(reason);
            return true;
        }
    };
    let ack = || Some(ack_for(p, acker));
    let cmd = match topic.kind {
        TopicKind::Batch => match decode_batch(&topic, &p.payload, now_ms()) {
            Ok(batch) if !catalogue.admit(&batch) => {
                tracing::warn!(site = %topic.site, agent = %topic.agent, seq = batch.seq,
                    limit = catalogue.limit, "batch names more points than one agent may have; rejected");
                refuse("too_many_points");
                confirmations.refused(&topic.site, &topic.agent, batch.seq);
                return true;
            }
            Ok(batch) => {
                metrics.batches_accepted.inc();
                metrics.readings_accepted.add(batch.readings.len() as u64);
                // A batch holds at most MAX_READINGS_PER_BATCH, far below the budget.
                let n = batch.readings.len().min(MAX_QUEUED_READINGS) as u32;
                let Ok(permit) = budget.clone().acquire_many_owned(n).await else {
                    return false;
                };
                WriteCmd::Batch(batch, Some(ack_holding(p, acker, Some(permit))))
            }
            Err(e) => {
                tracing::warn!(site = %topic.site, agent = %topic.agent, reason = e.label(), error = %e, "batch rejected");
                refuse(e.label());
                // Tell the agent, so it stops sending it; only possible when
                // the payload names its sequence number.
                if let Some(seq) = seq_of(&p.payload) {
                    confirmations.refused(&topic.site, &topic.agent, seq);
                }
                return true;
            }
        },
        TopicKind::Ack => {
            // Our own confirmations, should a broker route them here.
            ack_for(p, acker)();
            return true;
        }
        TopicKind::Status => match Status::from_json(&p.payload) {
            Ok(s) if s.site == topic.site && s.agent == topic.agent => WriteCmd::Status(s, ack()),
            Ok(_) => {
                tracing::warn!(site = %topic.site, agent = %topic.agent, "status names another agent than its topic; rejected");
                refuse("identity_mismatch");
                return true;
            }
            Err(e) => {
                tracing::warn!(site = %topic.site, agent = %topic.agent, error = %e, "status rejected");
                refuse("bad_status");
                return true;
            }
        },
    };
    store.send(cmd).await.is_ok()
}

/// The points each agent has named, to bound the catalogue: a confused or
/// hostile agent inventing point ids cannot grow the store without end.
/// Counted since this start; points already known count again as they are seen.
pub struct Catalogue {
    limit: usize,
    points: HashMap<(String, String), HashSet<String>>,
}

impl Catalogue {
    pub fn new(limit: usize) -> Catalogue {
        Catalogue {
            limit,
            points: HashMap::new(),
        }
    }

    /// Whether `batch` fits; if so its points are remembered.
    pub fn admit(&mut self, batch: &roomguard_protocol::Batch) -> bool {
        let key = (batch.site.clone(), batch.agent.clone());
        // The common case, only known points, allocates nothing more.
        if self.points.get(&key).is_some_and(|seen| {
            batch.readings.iter().all(|r| seen.contains(&*r.point))
                && batch.points.iter().all(|m| seen.contains(&*m.id))
        }) {
            return true;
        }
        let seen = self.points.entry(key).or_default();
        let new: HashSet<&str> = batch
            .readings
            .iter()
            .map(|r| &*r.point)
            .chain(batch.points.iter().map(|m| &*m.id))
            .filter(|p| !seen.contains(*p))
            .collect();
        if seen.len() + new.len() > self.limit {
            return false;
        }
        seen.extend(new.into_iter().map(str::to_owned));
        true
    }
}

/// The sequence number of a batch that failed validation, if it has one.
fn seq_of(payload: &[u8]) -> Option<u64> {
    #[derive(serde::Deserialize)]
    struct SeqOnly {
        seq: u64,
    }
    serde_json::from_slice::<SeqOnly>(payload)
        .ok()
        .map(|s| s.seq)
}

/// Stops a helper task when ingest ends.
/// Aborts a background task when its owner goes.
pub(crate) struct AbortOnDrop(pub(crate) tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use roomguard_protocol::{Batch, Quality, Reading, PROTOCOL_VERSION};

    fn batch(agent: &str, points: &[&str]) -> Batch {
        Batch {
            v: PROTOCOL_VERSION,
            site: "s".into(),
            agent: agent.into(),
            seq: 1,
            device: "d".into(),
            polled_at: 1,
            backfill: false,
            points: Vec::new(),
            readings: points
                .iter()
                .map(|p| Reading {
                    point: (*p).into(),
                    value: Some(1.0),
                    text: None,
                    ts: 1,
                    quality: Quality::Good,
                })
                .collect(),
        }
    }

    #[test]
    fn an_agent_may_name_only_so_many_points_and_known_ones_always_pass() {
        let mut c = Catalogue::new(3);
        assert!(c.admit(&batch("a", &["p1", "p2"])));
        assert!(c.admit(&batch("a", &["p1", "p2", "p3"])));
        assert!(!c.admit(&batch("a", &["p1", "p4"])), "a fourth point");
        assert!(c.admit(&batch("a", &["p3", "p1"])), "known points go on");
        assert!(c.admit(&batch("b", &["p4", "p5", "p6"])), "per agent");
    }
}
