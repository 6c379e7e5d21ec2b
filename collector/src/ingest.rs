//! Ingest: subscribes to every agent's topics, validates each message, and
//! hands accepted batches to the store writer. A message that fails is
//! logged with its reason, counted, and dropped; nothing an agent sends can
//! stop ingest.

use crate::confirm::{self, AbortOnDrop, Confirmations};
use crate::metrics::Metrics;
use crate::store::{Ack, WriteCmd};
use roomguard_protocol::clock::now_ms;
use roomguard_protocol::conf::BrokerUrl;
use roomguard_protocol::{
    decode_batch, AgentSecret, Status, Topic, TopicError, TopicKind, MAX_PAYLOAD_BYTES,
};
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

/// Where and as whom ingest connects, and what it admits.
pub struct Settings {
    pub broker: BrokerUrl,
    pub security: roomguard_protocol::mqtt::Security,
    pub client_id: String,
    pub max_points_per_agent: usize,
    /// `[agents] secret`: every agent's key is derived from it.
    pub secret: Arc<AgentSecret>,
    /// In a cluster: batches are subscribed to for the sites held only.
    pub cluster: Option<Arc<crate::cluster::Cluster>>,
}

/// Connects to the broker and ingests until the store's queue closes.
pub async fn run(
    settings: Settings,
    metrics: Arc<Metrics>,
    store: mpsc::Sender<WriteCmd>,
    confirmations: Arc<Confirmations>,
) {
    let Settings {
        broker,
        security,
        client_id,
        max_points_per_agent,
        secret,
        cluster,
    } = settings;
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
    if cluster.is_some() {
        // The first connection of a node starts a clean session: one left
        // by its previous run subscribes to sites it may no longer hold
        // (whatever that session still queued, the agents send again).
        opts.set_clean_session(true);
    }
    let (client, mut eventloop) = AsyncClient::new(opts, REQUEST_QUEUE);
    let _confirmer = AbortOnDrop(tokio::spawn(confirm::run(
        confirmations.clone(),
        confirm_opts,
        secret.clone(),
        metrics.clone(),
    )));
    let filters = match &cluster {
        // Every status (it names the sites there are); batches per site held.
        Some(_) => vec![format!("{}/+/+/+/status", roomguard_protocol::TOPIC_ROOT)],
        None => Topic::collector_filters().to_vec(),
    };
    // Per-site subscriptions are the router's alone; a new connection asks
    // it to make them again.
    let resubscribe = Arc::new(tokio::sync::Notify::new());
    let _router = cluster.as_ref().map(|c| {
        AbortOnDrop(tokio::spawn(route(
            client.clone(),
            c.sites(),
            resubscribe.clone(),
        )))
    });
    let mut handler = Handler {
        secret,
        metrics: metrics.clone(),
        store,
        confirmations,
        catalogue: Catalogue::new(max_points_per_agent),
        budget: Arc::new(tokio::sync::Semaphore::new(MAX_QUEUED_READINGS)),
        cluster: cluster.clone(),
    };
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
                acker.reset();
                eventloop.mqtt_options.set_clean_session(false);
                backoff = Duration::from_millis(250);
                // Subscribe on every connection: a broker that lost our
                // session (restart without persistence) has lost it too.
                for filter in &filters {
                    if let Err(e) = client.try_subscribe(filter.clone(), QoS::AtLeastOnce) {
                        tracing::error!(error = %e, "cannot subscribe");
                    }
                }
                resubscribe.notify_one();
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                let ticket = acker.receive(&p);
                if !handler.handle(&p, ticket).await {
                    return;
                }
            }
            Ok(_) => {}
            Err(e) => {
                metrics.broker_connected.set(0);
                // Acknowledgements settled before the next ConnAck would carry
                // packet ids of this connection.
                acker.reset();
                tracing::warn!(error = %e, retry_in = ?backoff, "broker connection failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        }
    }
}

/// The batches of one site, in every protocol version (an unknown one is
/// seen and refused rather than never noticed).
fn site_filter(site: &str) -> String {
    format!("{}/+/{site}/+/batch", roomguard_protocol::TOPIC_ROOT)
}

/// Follows the sites this node holds: subscribes to the batches of those
/// it gained and unsubscribes from those it lost (plain subscriptions, any
/// broker). A batch that still arrives for a site given up is not stored
/// or confirmed by this node; its agent sends it again to the holder.
async fn route(
    client: AsyncClient,
    mut sites: tokio::sync::watch::Receiver<std::collections::BTreeSet<String>>,
    resubscribe: Arc<tokio::sync::Notify>,
) {
    let mut subscribed = std::collections::BTreeSet::new();
    loop {
        let now = sites.borrow_and_update().clone();
        for gone in subscribed.difference(&now) {
            if let Err(e) = client.unsubscribe(site_filter(gone)).await {
                tracing::warn!(error = %e, site = %gone, "cannot unsubscribe");
            }
        }
        for new in now.difference(&subscribed) {
            if let Err(e) = client.subscribe(site_filter(new), QoS::AtLeastOnce).await {
                tracing::warn!(error = %e, site = %new, "cannot subscribe");
            }
        }
        if now != subscribed {
            tracing::info!(
                sites = now.len(),
                "subscribed to the batches of the sites held"
            );
        }
        subscribed = now;
        tokio::select! {
            changed = sites.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            () = resubscribe.notified() => {
                // A new connection (the broker may have lost the session):
                // everything held, again.
                for site in std::mem::take(&mut subscribed) {
                    if let Err(e) = client.subscribe(site_filter(&site), QoS::AtLeastOnce).await {
                        tracing::warn!(error = %e, %site, "cannot subscribe");
                    }
                    subscribed.insert(site);
                }
            }
        }
    }
}

/// Sends acknowledgements, from the writer thread or the ingest task, in the
/// order the messages arrived.
///
/// In order, because rumqttd takes an acknowledgement that is not for the
/// oldest message it has in flight as a protocol error and drops the
/// connection ("out of order ack"); then it delivers everything unacknowledged
/// again. Refused messages used to be acknowledged at once, ahead of the
/// batches waiting for their commit: one oversized message ten times a second
/// cost 45 reconnections in 20 s (Mosquitto accepts any order). Now each
/// message takes a place in line when it arrives ([`Acker::receive`]) and its
/// acknowledgement leaves once everything before it has left.
///
/// The store writer retries a failed write until it works, so an
/// acknowledgement is dropped unsent only when the collector stops. Such a
/// message gives up its place without one: the line does not wait for it,
/// and the broker delivers it again at the next connection (rumqttd, seeing
/// the next acknowledgement out of order, ends this one at once).
///
/// One that finds rumqttc's request queue full is kept and sent again by
/// the ingest loop (`retry`), never dropped: an unacknowledged message would
/// sit in the broker's in-flight window until the next reconnect, and a few
/// thousand of those stop the broker sending anything.
pub struct Acker {
    client: AsyncClient,
    metrics: Arc<Metrics>,
    line: std::sync::Mutex<Line>,
    /// Acknowledgements due but not yet taken by rumqttc, read without the
    /// lock on every poll.
    waiting: AtomicUsize,
}

/// Messages of the current connection in arrival order, and the
/// acknowledgements that are due (pure: [`Acker`] does the sending).
#[derive(Default)]
struct Line {
    /// Bumped at every connection: packet ids of an earlier one mean
    /// nothing to the broker now, so their acknowledgements are dropped.
    connection: u64,
    /// Place in line of `places[0]`.
    first: u64,
    /// Each message's packet id and whether it is settled (acknowledged or
    /// given up).
    places: std::collections::VecDeque<(u16, Settled)>,
    /// Acknowledgements due, in order, that rumqttc's queue had no room for.
    due: std::collections::VecDeque<u16>,
}

impl Line {
    fn reset(&mut self) {
        self.connection += 1;
        self.first = 0;
        self.places.clear();
        self.due.clear();
    }

    /// Takes a place for a message with packet id `pkid`; returns it.
    fn take_place(&mut self, pkid: u16) -> u64 {
        let place = self.first + self.places.len() as u64;
        self.places.push_back((pkid, Settled::No));
        place
    }

    /// Settles a place; what is settled at the head of the line moves to
    /// `due` (acknowledged) or leaves (given up). Returns how many became due.
    fn settle(&mut self, connection: u64, place: u64, how: Settled) -> usize {
        if connection != self.connection {
            return 0;
        }
        let due = self.due.len();
        let slot = place
            .checked_sub(self.first)
            .and_then(|i| self.places.get_mut(usize::try_from(i).ok()?));
        if let Some(slot) = slot {
            slot.1 = how;
        }
        while let Some(&(pkid, how)) = self.places.front() {
            if how == Settled::No {
                break;
            }
            self.places.pop_front();
            self.first += 1;
            if how == Settled::Ack {
                self.due.push_back(pkid);
            }
        }
        self.due.len() - due
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Settled {
    No,
    Ack,
    GiveUp,
}

/// A message's place in line; settled by [`Ticket::ack`], or given up when
/// dropped without it.
pub struct Ticket {
    acker: Arc<Acker>,
    connection: u64,
    place: u64,
    done: bool,
}

impl Ticket {
    fn ack(mut self) {
        self.done = true;
        self.acker.settle(self.connection, self.place, Settled::Ack);
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if !self.done {
            self.acker
                .settle(self.connection, self.place, Settled::GiveUp);
        }
    }
}

impl Acker {
    fn new(client: AsyncClient, metrics: Arc<Metrics>) -> Acker {
        Acker {
            client,
            metrics,
            line: std::sync::Mutex::new(Line::default()),
            waiting: AtomicUsize::new(0),
        }
    }

    fn line(&self) -> std::sync::MutexGuard<'_, Line> {
        self.line.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The connection ended or a new one began: what the old one owed is
    /// void (its packet ids mean nothing to the broker now).
    fn reset(&self) {
        self.line().reset();
        self.waiting.store(0, Relaxed);
    }

    /// `p` arrived: its place in line. A QoS 0 message needs no
    /// acknowledgement and takes no place.
    fn receive(self: &Arc<Self>, p: &Publish) -> Option<Ticket> {
        if p.qos == QoS::AtMostOnce {
            return None;
        }
        let mut line = self.line();
        let place = line.take_place(p.pkid);
        Some(Ticket {
            acker: self.clone(),
            connection: line.connection,
            place,
            done: false,
        })
    }

    fn settle(&self, connection: u64, place: u64, how: Settled) {
        let mut line = self.line();
        let fresh = line.settle(connection, place, how);
        self.send(&mut line, fresh);
    }

    /// Hands what is due to rumqttc, in order, as far as its queue has room.
    /// `fresh`: how many of the last in `due` are new since the last call.
    fn send(&self, line: &mut Line, fresh: usize) {
        let before = self.waiting.load(Relaxed);
        while let Some(&pkid) = line.due.front() {
            let mut p = Publish::new("", QoS::AtLeastOnce, Vec::new());
            p.pkid = pkid;
            if self.client.try_ack(&p).is_err() {
                break;
            }
            line.due.pop_front();
        }
        let left = line.due.len();
        // The new ones are the last in line: those still there had to wait.
        let deferred = left.min(fresh);
        if deferred > 0 {
            if before == 0 {
                // Once per episode: it should not happen with the advised
                // broker window, so say so where an operator looks.
                tracing::warn!("MQTT request queue full; acknowledgements wait for room (roomguard_acks_deferred_total)");
            }
            self.metrics.acks_deferred.add(deferred as u64);
        }
        self.waiting.store(left, Relaxed);
    }

    /// Sends what waits, as far as the queue has room.
    fn retry(&self) {
        if self.waiting.load(Relaxed) == 0 {
            return;
        }
        self.send(&mut self.line(), 0);
    }
}

/// The acknowledgement of a message, sent (in its turn) from wherever it is
/// called.
fn ack_for(ticket: Option<Ticket>) -> Ack {
    ack_holding(ticket, None)
}

/// The acknowledgement of a message, which gives back `permit` (room for
/// its readings in the writer's queue) when it runs or is dropped.
fn ack_holding(ticket: Option<Ticket>, permit: Option<tokio::sync::OwnedSemaphorePermit>) -> Ack {
    Box::new(move || {
        drop(permit);
        if let Some(t) = ticket {
            t.ack();
        }
    })
}

/// What a message is checked against and handed to.
struct Handler {
    secret: Arc<AgentSecret>,
    metrics: Arc<Metrics>,
    store: mpsc::Sender<WriteCmd>,
    confirmations: Arc<Confirmations>,
    catalogue: Catalogue,
    budget: Arc<tokio::sync::Semaphore>,
    cluster: Option<Arc<crate::cluster::Cluster>>,
}

impl Handler {
    /// Validates one message and queues it for storage. Returns false when the
    /// store has shut down.
    async fn handle(&mut self, p: &Publish, ticket: Option<Ticket>) -> bool {
        let Handler {
            secret,
            metrics,
            store,
            confirmations,
            catalogue,
            budget,
            cluster,
        } = self;
        metrics.messages_received.inc();
        // Refused messages are acknowledged (in their turn): they will never be
        // stored, and unacknowledged they would come back on every reconnect.
        let refuse = |reason: &str, ticket: Option<Ticket>| {
            metrics.reject(reason);
            ack_for(ticket)();
        };
        let topic = match Topic::parse(&p.topic) {
            Ok(t) => t,
            Err(e) => {
                let reason = match e {
                    TopicError::UnknownVersion(_) => "unknown_version",
                    _ => "bad_topic",
                };
                tracing::warn!(topic = %p.topic.chars().take(160).collect::<String>(), error = %e, "message rejected");
                refuse(reason, ticket);
                return true;
            }
        };
        // Before anything is read from it: a message not signed with the agent's
        // key is nobody's word. It is not even confirmed as refused, or anyone
        // could make an agent drop a batch by naming its sequence number.
        // (Confirmations are the collector's own; see below.)
        if topic.kind != TopicKind::Ack {
            if let Err(e) = secret
                .key(&topic.site, &topic.agent)
                .verify(&p.topic, &p.payload)
            {
                tracing::warn!(site = %topic.site, agent = %topic.agent, error = %e, "message rejected: not signed with the agent's key");
                refuse("unauthenticated", ticket);
                return true;
            }
        }
        // Signed by its agent: a site that exists (a forged one is not).
        if let Some(c) = cluster {
            c.saw(&topic.site);
        }
        let cmd = match topic.kind {
            TopicKind::Batch => match decode_batch(&topic, &p.payload, now_ms()) {
                Ok(batch) if !catalogue.admit(&batch) => {
                    tracing::warn!(site = %topic.site, agent = %topic.agent, seq = batch.seq,
                    limit = catalogue.limit, "batch names more points than one agent may have; rejected");
                    refuse("too_many_points", ticket);
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
                    WriteCmd::Batch(batch, Some(ack_holding(ticket, Some(permit))))
                }
                Err(e) => {
                    tracing::warn!(site = %topic.site, agent = %topic.agent, reason = e.label(), error = %e, "batch rejected");
                    refuse(e.label(), ticket);
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
                ack_for(ticket)();
                return true;
            }
            TopicKind::Status => match Status::from_json(&p.payload) {
                Ok(s) if s.site == topic.site && s.agent == topic.agent => {
                    WriteCmd::Status(s, Some(ack_for(ticket)))
                }
                Ok(_) => {
                    tracing::warn!(site = %topic.site, agent = %topic.agent, "status names another agent than its topic; rejected");
                    refuse("identity_mismatch", ticket);
                    return true;
                }
                Err(e) => {
                    tracing::warn!(site = %topic.site, agent = %topic.agent, error = %e, "status rejected");
                    refuse("bad_status", ticket);
                    return true;
                }
            },
        };
        store.send(cmd).await.is_ok()
    }
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

    fn line_with(pkids: &[u16]) -> (Line, Vec<u64>) {
        let mut line = Line::default();
        let places = pkids.iter().map(|&p| line.take_place(p)).collect();
        (line, places)
    }

    #[test]
    fn acknowledgements_leave_in_arrival_order_whatever_order_they_settle_in() {
        let (mut line, places) = line_with(&[7, 8, 9]);
        // The third (a refused message) settles first: nothing may leave yet.
        line.settle(0, places[2], Settled::Ack);
        assert!(line.due.is_empty());
        line.settle(0, places[0], Settled::Ack);
        assert_eq!(line.due, [7]);
        line.settle(0, places[1], Settled::Ack);
        assert_eq!(line.due, [7, 8, 9]);
        assert!(line.places.is_empty());
    }

    #[test]
    fn a_place_given_up_leaves_without_an_acknowledgement_and_stale_ones_are_ignored() {
        let (mut line, places) = line_with(&[1, 2, 3]);
        line.settle(0, places[1], Settled::Ack);
        line.settle(0, places[0], Settled::GiveUp);
        assert_eq!(line.due, [2]);
        // A new connection: what the old one owed means nothing now.
        line.reset();
        line.settle(0, places[2], Settled::Ack);
        assert_eq!(line.due.len(), 0);
        let p = line.take_place(5);
        assert_eq!(p, 0, "places count again from the start");
        // Out of range or already gone: ignored, never a panic.
        line.settle(1, 99, Settled::Ack);
        line.settle(1, p, Settled::Ack);
        line.settle(1, p, Settled::Ack);
        assert_eq!(line.due, [5]);
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
