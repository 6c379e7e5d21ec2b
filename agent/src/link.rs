//! The agent's side of delivery: from the spool to the broker and back.
//!
//! Every batch is appended to the [`Spool`] first. While connected, fresh
//! batches go straight out ("live"); anything older — left from before a
//! disconnect, a restart, or not confirmed in time — is the backlog, sent
//! oldest first, marked as backfill, and rate-limited so it never delays live
//! readings. A batch is done when the collector confirms it stored it (or,
//! with `confirm = "broker"`, at the broker's PUBACK).
//!
//! rumqttc reports a PUBACK by packet id only. Packet ids are assigned by the
//! event loop in the order publishes leave its request channel, which is the
//! order we push them, so `order` pairs each `Outgoing::Publish(pkid)` event
//! with the batch it carries. After a connection error rumqttc keeps the
//! unacknowledged publishes to replay them; we drop those and let the spool
//! send them again, so there is exactly one source of truth for what is owed.

use crate::spool::{Cursor, NewRecord, Spool, SpoolError, State};
use roomguard_protocol::{batch::mark_backfill, AgentKey, Confirm, SpoolStatus};
use rumqttc::{AsyncClient, QoS, Request};
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

/// Publishes handed to rumqttc and not yet acknowledged by the broker. Matches
/// rumqttc's in-flight window, so its request channel never fills with ours.
pub const WINDOW: usize = 100;
/// A delivered batch still unconfirmed this long after the collector
/// confirmed one delivered later is taken as lost and sent again.
const OVERTAKEN_GRACE: Duration = Duration::from_secs(5);
/// Live batches waiting for a window slot; beyond this they are left to the
/// backlog (they are in the spool either way).
const LIVE_MAX: usize = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ConfirmBy {
    /// The collector's confirmation on the agent's `ack` topic: survives a
    /// broker that loses messages it acknowledged.
    Collector,
    /// The broker's PUBACK alone, for deployments without a RoomGuard collector.
    Broker,
}

/// A batch on its way: spooled first, then published.
pub type OutBatch = NewRecord<Vec<u8>>;

/// What [`Link::submit_all`] did.
pub struct Submitted {
    /// Time until the backlog may send again, if it waits on the rate limit.
    pub waiting: Option<Duration>,
    /// Batches lost because the spool could not be written.
    pub lost: usize,
    pub error: Option<SpoolError>,
}

pub struct LinkOptions {
    pub batch_topic: String,
    pub status_topic: String,
    pub ack_topic: String,
    pub confirm_by: ConfirmBy,
    pub confirm_timeout: Duration,
    /// Backlog batches per second.
    pub replay_rate: u32,
    /// Signs what is published and checks confirmations (`mqtt.key`).
    pub key: Option<AgentKey>,
    /// The first sequence number of this run: a confirmation may name
    /// batches below it (sent by an earlier run), never above what was sent.
    pub first_seq: u64,
}

pub struct Link {
    spool: Spool,
    client: AsyncClient,
    opts: LinkOptions,
    connected: bool,
    /// What each publish handed to rumqttc carries (`None`: a status), in
    /// the order they were handed over, until rumqttc gives it a packet id.
    order: VecDeque<Option<u64>>,
    inflight: HashMap<u16, Option<u64>>,
    /// A publish rumqttc holds back because its packet id is still in use.
    collided: Option<Option<u64>>,
    live: VecDeque<(u64, Vec<u8>)>,
    cursor: Option<Cursor>,
    tokens: f64,
    refilled: Instant,
    /// When the collector last confirmed anything.
    collector_seen: Option<Instant>,
    /// When an ignored confirmation was last logged.
    refusal_logged: Option<Instant>,
    /// The highest sequence number handed to the broker since the start (or
    /// the last of the previous run): a confirmation naming more is forged.
    highest_sent: u64,
    pub stats: LinkStats,
}

#[derive(Debug, Default, Clone, Copy)]
pub struct LinkStats {
    pub sent_live: u64,
    pub sent_backfill: u64,
    pub confirmed: u64,
    pub resent_unconfirmed: u64,
    /// Confirmations ignored: not signed with this agent's key.
    pub confirms_unauthenticated: u64,
    /// Confirmations ignored: naming batches this agent never sent.
    pub confirms_implausible: u64,
    /// Messages on the confirmation topic that are not confirmations.
    pub confirms_malformed: u64,
}

impl Link {
    pub fn new(spool: Spool, client: AsyncClient, opts: LinkOptions) -> Link {
        let highest_sent = spool
            .last_seq()
            .unwrap_or(0)
            .max(opts.first_seq.saturating_sub(1));
        Link {
            spool,
            client,
            opts,
            connected: false,
            order: VecDeque::new(),
            inflight: HashMap::new(),
            collided: None,
            live: VecDeque::new(),
            cursor: None,
            tokens: 0.0,
            refilled: Instant::now(),
            collector_seen: None,
            refusal_logged: None,
            highest_sent,
            stats: LinkStats::default(),
        }
    }

    pub fn is_connected(&self) -> bool {
        self.connected
    }

    pub fn spool(&self) -> &Spool {
        &self.spool
    }

    /// Spools a burst of batches (one `write` for all of them) and sends
    /// what the window allows. Says how many the disk refused, and the time
    /// until the backlog may send again if it is waiting on the rate limit.
    pub fn submit_all(&mut self, batches: Vec<OutBatch>) -> Submitted {
        let appended = self.spool.append_all(&batches);
        for (b, kept) in batches.into_iter().zip(&appended.kept) {
            if !kept {
                if appended.error.is_none() {
                    tracing::warn!(
                        seq = b.seq,
                        readings = b.readings,
                        "spool full (on_full = drop_newest): batch dropped"
                    );
                }
                continue;
            }
            if self.connected && self.live.len() < LIVE_MAX {
                self.spool.set_state(b.seq, State::Sending);
                self.live.push_back((b.seq, b.payload));
            }
        }
        Submitted {
            waiting: self.pump(),
            lost: appended.lost,
            error: appended.error,
        }
    }

    /// Hands as much to rumqttc as the window and the backlog rate allow.
    /// Returns how long until the backlog may continue, if it must wait.
    pub fn pump(&mut self) -> Option<Duration> {
        if !self.connected {
            return None;
        }
        let rate = f64::from(self.opts.replay_rate.max(1));
        let burst = (rate / 10.0).max(1.0);
        let now = Instant::now();
        self.tokens =
            (self.tokens + now.duration_since(self.refilled).as_secs_f64() * rate).min(burst);
        self.refilled = now;
        while self.order.len() + self.inflight.len() < WINDOW {
            if let Some((seq, payload)) = self.live.pop_front() {
                if self.spool.state(seq) != Some(State::Sending) {
                    continue; // dropped from the spool meanwhile
                }
                if !self.hand_over(Some(seq), payload) {
                    self.spool.set_state(seq, State::Unsent);
                    return None;
                }
                self.stats.sent_live += 1;
                continue;
            }
            let (cursor, found) = self.spool.next_unsent(self.cursor);
            self.cursor = Some(cursor);
            let seq = found?;
            if self.tokens < 1.0 {
                return Some(Duration::from_secs_f64((1.0 - self.tokens) / rate));
            }
            let payload = match self.spool.payload(seq) {
                Ok(Some(p)) => p,
                Ok(None) => {
                    tracing::warn!(seq, "spooled batch unreadable (damaged on disk); skipped");
                    self.spool.finish(seq, seq);
                    continue;
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot read the spool; backlog paused");
                    return Some(Duration::from_secs(5));
                }
            };
            self.spool.set_state(seq, State::Sending);
            if !self.hand_over(Some(seq), mark_backfill(&payload)) {
                self.spool.set_state(seq, State::Unsent);
                return None;
            }
            self.tokens -= 1.0;
            self.stats.sent_backfill += 1;
        }
        None
    }

    /// Queues one publish with rumqttc, recording what it carries: batch
    /// `seq` on the batch topic, or (`None`) the retained status.
    fn hand_over(&mut self, seq: Option<u64>, payload: Vec<u8>) -> bool {
        let (topic, retain) = match seq {
            Some(_) => (self.opts.batch_topic.as_str(), false),
            None => (self.opts.status_topic.as_str(), true),
        };
        // Signed as it leaves, not in the spool: a backlog batch is marked
        // as backfill first, and a key changed since still signs it.
        let payload = match &self.opts.key {
            Some(k) => k.sign(topic, &payload),
            None => payload,
        };
        match self
            .client
            .try_publish(topic, QoS::AtLeastOnce, retain, payload)
        {
            Ok(()) => {
                self.order.push_back(seq);
                if let Some(seq) = seq {
                    self.highest_sent = self.highest_sent.max(seq);
                }
                true
            }
            Err(e) => {
                tracing::debug!(error = %e, "MQTT request queue full; will retry");
                false
            }
        }
    }

    /// Publishes the retained status. Skipped while disconnected (a fresh
    /// one goes out on connecting; stale ones would only queue up) and,
    /// harmlessly, when the queue is full.
    pub fn publish_status(&mut self, payload: Vec<u8>) {
        if self.connected {
            self.hand_over(None, payload);
        }
    }

    /// Queues the goodbye status whether connected or not: if the connection
    /// comes back in the last moments, it goes out; if not, the will does.
    pub fn publish_goodbye(&mut self, payload: Vec<u8>) {
        self.hand_over(None, payload);
    }

    pub fn spool_status(&self) -> SpoolStatus {
        let c = self.spool.counters;
        SpoolStatus {
            pending_batches: self.spool.pending_batches(),
            pending_bytes: self.spool.pending_bytes(),
            oldest_ms: self.spool.oldest_pending(),
            dropped_batches: c.dropped_batches,
            dropped_readings: c.dropped_readings,
            dropped_unconfirmed: c.dropped_unconfirmed,
            discarded_records: c.discarded_records,
            discarded_bytes: c.discarded_bytes,
            refused_batches: c.refused_batches,
            write_error: None,
        }
    }

    pub fn on_connected(&mut self, session_present: bool) {
        self.connected = true;
        self.cursor = None;
        if !session_present {
            // The broker forgot our session, and with it, perhaps, batches
            // it had acknowledged but not yet passed on.
            let n = self.spool.resend(&[State::Delivered], None);
            if n > 0 {
                tracing::warn!(
                    batches = n,
                    "broker lost its session state: sending unconfirmed batches again"
                );
            }
        }
        if self.opts.confirm_by == ConfirmBy::Collector {
            // Every connection: a broker without our session has no subscription either.
            if let Err(e) = self
                .client
                .try_subscribe(self.opts.ack_topic.clone(), QoS::AtLeastOnce)
            {
                tracing::error!(error = %e, "cannot subscribe to confirmations");
            }
        }
    }

    /// rumqttc wrote a publish with packet id `pkid`.
    pub fn on_publish_sent(&mut self, pkid: u16) {
        let what = match self.collided.take() {
            Some(w) => w,
            None => match self.order.pop_front() {
                Some(w) => w,
                None => {
                    tracing::error!(pkid, "a publish went out that the agent did not queue");
                    return;
                }
            },
        };
        self.inflight.insert(pkid, what);
    }

    /// rumqttc holds a publish back until `pkid` is free again.
    pub fn on_publish_held(&mut self, _pkid: u16) {
        self.collided = self.order.pop_front();
    }

    pub fn on_puback(&mut self, pkid: u16) {
        if let Some(Some(seq)) = self.inflight.remove(&pkid) {
            match self.opts.confirm_by {
                ConfirmBy::Broker => {
                    self.spool.finish(seq, seq);
                    self.stats.confirmed += 1;
                }
                ConfirmBy::Collector => self.spool.set_state(seq, State::Delivered),
            }
        }
    }

    /// A message on the confirmation topic. Only one signed with this
    /// agent's key and naming batches it has sent is acted on: anyone who
    /// can publish on the broker could otherwise make the agent drop
    /// unstored batches. Says whether it was acted on.
    pub fn on_confirm_message(&mut self, topic: &str, payload: &[u8]) -> bool {
        if let Some(k) = &self.opts.key {
            if let Err(e) = k.verify(topic, payload) {
                self.stats.confirms_unauthenticated += 1;
                self.refused_confirm("unauthenticated", &e.to_string());
                return false;
            }
        }
        let c = match Confirm::from_json(payload) {
            Ok(c) => c,
            Err(e) => {
                self.stats.confirms_malformed += 1;
                self.refused_confirm("malformed", &e.to_string());
                return false;
            }
        };
        let sent = self.highest_sent;
        if let Some(r) = c.stored.iter().chain(&c.refused).find(|r| r.1 > sent) {
            self.stats.confirms_implausible += 1;
            self.refused_confirm(
                "implausible",
                &format!("names batch {} but the highest sent is {sent}", r.1),
            );
            return false;
        }
        self.on_confirm(&c);
        true
    }

    /// Logs an ignored confirmation, once a minute at most (a flood of
    /// forgeries must not flood the log too); the counters count them all.
    fn refused_confirm(&mut self, reason: &str, detail: &str) {
        if self
            .refusal_logged
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(60))
        {
            self.refusal_logged = Some(Instant::now());
            tracing::warn!(
                reason,
                detail,
                "ignoring a confirmation (roomguard_agent_confirmations_refused_total counts them all)"
            );
        }
    }

    fn on_confirm(&mut self, c: &Confirm) {
        self.collector_seen = Some(Instant::now());
        for r in &c.stored {
            self.stats.confirmed += self.spool.finish(r.0, r.1);
        }
        for r in &c.refused {
            let n = self.spool.finish(r.0, r.1);
            if n > 0 {
                tracing::warn!(
                    first = r.0,
                    last = r.1,
                    "the collector refused batches as invalid; dropped from the spool"
                );
            }
            self.spool.counters.refused_batches += n;
        }
    }

    /// The connection failed. rumqttc has moved what it had not finished into
    /// `pending`; the spool sends those again instead.
    pub fn on_disconnected(&mut self, pending: &mut VecDeque<Request>) {
        self.connected = false;
        // Requests still in rumqttc's channel never got a packet id: they are
        // the oldest entries of `order`.
        let unsent = pending
            .iter()
            .filter(|r| matches!(r, Request::Publish(p) if p.pkid == 0))
            .count();
        let mut owed: Vec<u64> = Vec::new();
        for _ in 0..unsent {
            if let Some(Some(seq)) = self.order.pop_front() {
                owed.push(seq);
            }
        }
        owed.extend(self.inflight.drain().filter_map(|(_, s)| s));
        owed.extend(self.collided.take().flatten());
        owed.extend(self.live.drain(..).map(|(s, _)| s));
        for seq in owed {
            if self.spool.state(seq) == Some(State::Sending) {
                self.spool.set_state(seq, State::Unsent);
            }
        }
        pending.clear();
    }

    /// Once a second: fsync interval, age bound, and batches delivered but
    /// never confirmed. Returns the backlog's wait, as [`Link::pump`].
    pub fn maintain(&mut self, now_ms: i64) -> Option<Duration> {
        if let Err(e) = self.spool.maintain(now_ms) {
            tracing::error!(error = %e, "spool upkeep failed");
        }
        if self.opts.confirm_by == ConfirmBy::Collector && self.connected {
            let n = self.spool.resend_overtaken(OVERTAKEN_GRACE);
            if n > 0 {
                tracing::warn!(batches = n, "the collector confirmed later batches but not these: lost on the way, sending them again");
                self.stats.resent_unconfirmed += n;
                self.cursor = None;
            }
        }
        if self.opts.confirm_by == ConfirmBy::Collector
            && self.connected
            // Only while the collector is answering: if it is down, sending
            // again would only fill the broker's queue for it.
            && self
                .collector_seen
                .is_some_and(|t| t.elapsed() < self.opts.confirm_timeout)
        {
            let n = self
                .spool
                .resend(&[State::Delivered], Some(self.opts.confirm_timeout));
            if n > 0 {
                tracing::warn!(batches = n, timeout = ?self.opts.confirm_timeout, "batches delivered but never confirmed; sending them again");
                self.stats.resent_unconfirmed += n;
                self.cursor = None;
            }
        }
        self.pump()
    }

    /// How often [`Link::sync_check`] is due.
    pub fn sync_period(&self) -> Duration {
        self.spool.check_period()
    }

    /// Writes confirmations and forces batches left waiting to disk.
    pub fn sync_check(&mut self) {
        if let Err(e) = self.spool.sync_check() {
            tracing::error!(error = %e, "cannot flush the spool");
        }
    }

    /// Flushes the spool to disk (at shutdown).
    pub fn sync(&mut self) {
        if let Err(e) = self.spool.sync() {
            tracing::error!(error = %e, "cannot flush the spool");
        }
    }
}
