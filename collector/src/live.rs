//! Live push to open dashboards: the newest reading of every point that
//! changed, a few times a second, and nudges when alarms or agents changed.
//!
//! The store writer hands over what it committed; a flusher task turns what
//! gathered since the last flush into one serialized frame that every event
//! stream shares. So the cost of a reading is one map update however many
//! dashboards are open, and the cost of a dashboard is copying frames to its
//! socket. Nothing is gathered while no dashboard is open.
//!
//! In a cluster a dashboard may be open on a node that holds none of the
//! sites it shows: frames also go to the other nodes (`cluster/push.rs`),
//! and are gathered while a dashboard is open anywhere.

use roomguard_protocol::{Batch, Quality};
use serde::Serialize;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use tokio::sync::{broadcast, mpsc, watch};

/// How often gathered readings go out: well inside the one second a
/// dashboard may lag ingest, without a frame per batch.
pub const FLUSH_EVERY: Duration = Duration::from_millis(250);

/// Frames a stream may fall behind before it is told to start over.
const BACKLOG: usize = 64;

/// A readings frame is cut before it grows past this, so that it fits one
/// PostgreSQL notification (under 8,000 bytes) on its way to other nodes.
pub const MAX_FRAME: usize = 7_000;

/// What an event stream sends.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    /// `{"points":[…]}`, serialized once for every stream.
    Readings(Arc<str>),
    /// Something about alarms or silences changed.
    Alarms,
    /// An agent's status changed.
    Agents,
    /// Frames may have been missed: refetch the snapshot.
    Resync,
}

impl Frame {
    /// The SSE event name.
    pub fn event(&self) -> &'static str {
        match self {
            Frame::Readings(_) => "readings",
            Frame::Alarms => "alarms",
            Frame::Agents => "agents",
            Frame::Resync => "resync",
        }
    }

    pub fn data(&self) -> &str {
        match self {
            Frame::Readings(s) => s,
            Frame::Alarms | Frame::Agents | Frame::Resync => "{}",
        }
    }
}

/// One point's newest reading as the stream shows it.
#[derive(Debug, Clone, Serialize)]
struct Update {
    #[serde(skip)]
    ts_ms: i64,
    ts: String,
    value: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    text: Option<String>,
    quality: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
}

#[derive(Default)]
struct Gathered {
    /// site → point → newest reading since the last flush.
    points: HashMap<String, HashMap<String, Update>>,
    alarms: bool,
    agents: bool,
}

pub struct Live {
    gathered: Mutex<Gathered>,
    /// Event time of what was last sent per point, so that a late reading
    /// never shows over a newer one.
    sent: Mutex<HashMap<String, HashMap<String, i64>>>,
    tx: broadcast::Sender<Frame>,
    closed: watch::Sender<bool>,
    /// Set in a cluster.
    peers: OnceLock<Peers>,
}

/// The other nodes of a cluster, as the flusher sees them.
struct Peers {
    /// Frames on their way to the other nodes.
    out: mpsc::Sender<Frame>,
    /// Until when a dashboard is open on some other node.
    watched_until: Mutex<Option<Instant>>,
    /// A frame could not be queued for the other nodes: their dashboards
    /// are told to refetch with the next one.
    behind: std::sync::atomic::AtomicBool,
}

impl Default for Live {
    fn default() -> Self {
        Live {
            gathered: Mutex::default(),
            sent: Mutex::default(),
            tx: broadcast::channel(BACKLOG).0,
            closed: watch::channel(false).0,
            peers: OnceLock::new(),
        }
    }
}

impl Live {
    /// Whether any event stream is open, here or (in a cluster) on another
    /// node.
    pub fn watched(&self) -> bool {
        self.local_streams() > 0 || self.peers_watching()
    }

    /// Event streams open on this node.
    pub fn local_streams(&self) -> usize {
        self.tx.receiver_count()
    }

    fn peers_watching(&self) -> bool {
        self.peers
            .get()
            .is_some_and(|p| lock(&p.watched_until).is_some_and(|until| Instant::now() < until))
    }

    /// In a cluster: frames made here go to `out` too, while another node
    /// has a dashboard open.
    pub fn share_with_peers(&self, out: mpsc::Sender<Frame>) {
        let _ = self.peers.set(Peers {
            out,
            watched_until: Mutex::new(None),
            behind: false.into(),
        });
    }

    /// Another node has a dashboard open; it says so again before `lasting`
    /// runs out.
    pub fn peer_watching(&self, lasting: Duration) {
        if let Some(p) = self.peers.get() {
            *lock(&p.watched_until) = Some(Instant::now() + lasting);
        }
    }

    /// A frame made by another node, for the streams open here.
    pub fn from_peer(&self, frame: Frame) {
        if self.local_streams() > 0 {
            let _ = self.tx.send(frame);
        }
    }

    /// Tells the streams open here to refetch (frames were missed).
    pub fn resync(&self) {
        let _ = self.tx.send(Frame::Resync);
    }

    /// Readings the store committed. Backfill is history, not news.
    pub fn stored(&self, batches: &[Batch]) {
        if !self.watched() {
            return;
        }
        // A reading dated ahead (an agent clock running fast) is ranked as
        // if taken now, so it cannot hold back the correct ones after it.
        let ahead = jiff::Timestamp::now().as_millisecond() + 5_000;
        let mut g = lock(&self.gathered);
        for b in batches.iter().filter(|b| !b.backfill) {
            let site = match g.points.get_mut(b.site.as_str()) {
                Some(s) => s,
                None => g.points.entry(b.site.clone()).or_default(),
            };
            for r in &b.readings {
                let rank = r.ts.min(ahead);
                if site.get(&*r.point).is_some_and(|u| u.ts_ms > rank) {
                    continue;
                }
                let (quality, reason) = match &r.quality {
                    Quality::Good => ("good", None),
                    Quality::Bad(why) => ("bad", Some(why.clone())),
                };
                let update = Update {
                    ts_ms: rank,
                    ts: rfc3339(r.ts),
                    value: r.value.filter(|v| v.is_finite()),
                    text: r.text.clone(),
                    quality,
                    reason,
                };
                match site.get_mut(&*r.point) {
                    Some(u) => *u = update,
                    None => {
                        site.insert(r.point.to_string(), update);
                    }
                }
            }
        }
    }

    pub fn alarms_changed(&self) {
        if self.watched() {
            lock(&self.gathered).alarms = true;
        }
    }

    pub fn agents_changed(&self) {
        if self.watched() {
            lock(&self.gathered).agents = true;
        }
    }

    /// Sends what gathered since the last call.
    pub fn flush(&self) {
        let g = std::mem::take(&mut *lock(&self.gathered));
        let mut frames = if g.points.is_empty() {
            Vec::new()
        } else {
            self.readings_frames(g.points)
        };
        if g.alarms {
            frames.push(Frame::Alarms);
        }
        if g.agents {
            frames.push(Frame::Agents);
        }
        for f in frames {
            self.send(f);
        }
    }

    fn send(&self, f: Frame) {
        // Every node hears its agents' status itself; only what this node
        // alone knows goes to the others.
        if !matches!(f, Frame::Agents) && self.peers_watching() {
            let p = self.peers.get().expect("peers watching");
            use std::sync::atomic::Ordering::Relaxed;
            if p.behind.load(Relaxed) && p.out.try_send(Frame::Resync).is_ok() {
                p.behind.store(false, Relaxed);
            }
            if p.out.try_send(f.clone()).is_err() {
                p.behind.store(true, Relaxed);
            }
        }
        if self.local_streams() > 0 {
            let _ = self.tx.send(f);
        }
    }

    /// The gathered readings, as frames of at most [`MAX_FRAME`] bytes
    /// (a lone reading larger than that goes alone).
    fn readings_frames(&self, points: HashMap<String, HashMap<String, Update>>) -> Vec<Frame> {
        #[derive(Serialize)]
        struct Row<'a> {
            site: &'a str,
            point: &'a str,
            #[serde(flatten)]
            update: &'a Update,
        }
        let mut sent = lock(&self.sent);
        let mut rows = Vec::new();
        for (site, by_point) in &points {
            let seen = match sent.get_mut(site.as_str()) {
                Some(s) => s,
                None => sent.entry(site.clone()).or_default(),
            };
            for (point, update) in by_point {
                match seen.get_mut(point.as_str()) {
                    Some(last) if *last > update.ts_ms => continue,
                    Some(last) => *last = update.ts_ms,
                    None => {
                        seen.insert(point.clone(), update.ts_ms);
                    }
                }
                rows.push(Row {
                    site,
                    point,
                    update,
                });
            }
        }
        const HEAD: &str = "{\"points\":[";
        const TAIL: &str = "]}";
        let mut frames = Vec::new();
        let mut json = String::from(HEAD);
        for row in rows {
            let Ok(row) = serde_json::to_string(&row) else {
                continue;
            };
            if json.len() > HEAD.len() && json.len() + row.len() + 1 + TAIL.len() > MAX_FRAME {
                json.push_str(TAIL);
                frames.push(Frame::Readings(
                    std::mem::replace(&mut json, HEAD.into()).into(),
                ));
            }
            if json.len() > HEAD.len() {
                json.push(',');
            }
            json.push_str(&row);
        }
        if json.len() > HEAD.len() {
            json.push_str(TAIL);
            frames.push(Frame::Readings(json.into()));
        }
        frames
    }

    /// A new event stream: frames from now on, and whether the collector is
    /// shutting down (open streams would otherwise hold the HTTP server up).
    pub fn subscribe(&self) -> (broadcast::Receiver<Frame>, watch::Receiver<bool>) {
        (self.tx.subscribe(), self.closed.subscribe())
    }

    /// Whether the collector is shutting down.
    pub fn closing(&self) -> watch::Receiver<bool> {
        self.closed.subscribe()
    }

    /// Ends every event stream.
    pub fn close(&self) {
        let _ = self.closed.send(true);
    }

    /// Flushes every [`FLUSH_EVERY`] until the collector stops.
    pub async fn run(self: Arc<Self>) {
        let mut tick = tokio::time::interval(FLUSH_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut closed = self.closed.subscribe();
        loop {
            tokio::select! {
                _ = tick.tick() => self.flush(),
                _ = closed.wait_for(|c| *c) => return,
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic elsewhere while holding it leaves plain data behind; carry on.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn rfc3339(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms)
        .map(|t| format!("{t:.3}"))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use roomguard_protocol::Reading;

    fn batch(point: &str, ts: i64, value: f64, backfill: bool) -> Batch {
        Batch {
            v: roomguard_protocol::PROTOCOL_VERSION,
            site: "s".into(),
            agent: "a".into(),
            seq: 1,
            device: "d".into(),
            polled_at: ts,
            backfill,
            points: vec![],
            readings: vec![Reading {
                point: point.into(),
                value: Some(value),
                text: None,
                ts,
                quality: Quality::Good,
            }],
        }
    }

    fn next_readings(rx: &mut broadcast::Receiver<Frame>) -> serde_json::Value {
        match rx.try_recv() {
            Ok(Frame::Readings(s)) => serde_json::from_str(&s).unwrap(),
            other => panic!("expected readings, got {other:?}"),
        }
    }

    #[test]
    fn nothing_is_gathered_while_nobody_watches() {
        let live = Live::default();
        live.stored(&[batch("p", 1_000, 1.0, false)]);
        let (mut rx, _) = live.subscribe();
        live.flush();
        assert!(rx.try_recv().is_err());
    }

    #[test]
    fn one_frame_carries_the_newest_reading_of_each_changed_point() {
        let live = Live::default();
        let (mut rx, _) = live.subscribe();
        live.stored(&[batch("p", 1_000, 1.0, false), batch("q", 1_000, 5.0, false)]);
        live.stored(&[batch("p", 2_000, 2.0, false)]);
        live.flush();
        let mut points = next_readings(&mut rx)["points"].as_array().unwrap().clone();
        points.sort_by_key(|p| p["point"].as_str().unwrap().to_owned());
        assert_eq!(points.len(), 2);
        assert_eq!(points[0]["point"], "p");
        assert_eq!(points[0]["value"], 2.0);
        assert_eq!(points[0]["ts"], "1970-01-01T00:00:02.000Z");
        assert_eq!(points[1]["value"], 5.0);
        live.flush();
        assert!(rx.try_recv().is_err(), "nothing new, nothing sent");
    }

    #[test]
    fn a_late_or_backfilled_reading_never_shows_over_a_newer_one() {
        let live = Live::default();
        let (mut rx, _) = live.subscribe();
        live.stored(&[batch("p", 2_000, 2.0, false)]);
        live.flush();
        next_readings(&mut rx);
        live.stored(&[batch("p", 1_000, 1.0, false), batch("p", 500, 9.0, true)]);
        live.flush();
        assert!(rx.try_recv().is_err());
    }

    #[test]
    fn a_reading_dated_in_the_future_does_not_freeze_the_point() {
        let live = Live::default();
        let (mut rx, _) = live.subscribe();
        let now = jiff::Timestamp::now().as_millisecond();
        live.stored(&[batch("p", now + 2 * 3_600_000, 1.0, false)]);
        live.flush();
        next_readings(&mut rx);
        live.stored(&[batch("p", now + 10_000, 2.0, false)]);
        live.flush();
        assert_eq!(next_readings(&mut rx)["points"][0]["value"], 2.0);
    }

    #[test]
    fn many_readings_go_out_in_frames_small_enough_for_a_notification() {
        let live = Live::default();
        let (mut rx, _) = live.subscribe();
        let batches: Vec<Batch> = (0..500)
            .map(|i| batch(&format!("point-{i}"), 1_000, f64::from(i), false))
            .collect();
        live.stored(&batches);
        live.flush();
        let mut seen = 0;
        let mut frames = 0;
        while let Ok(Frame::Readings(s)) = rx.try_recv() {
            assert!(s.len() <= MAX_FRAME, "{} bytes", s.len());
            let v: serde_json::Value = serde_json::from_str(&s).unwrap();
            seen += v["points"].as_array().unwrap().len();
            frames += 1;
        }
        assert_eq!(seen, 500);
        assert!(frames > 1);
    }

    #[test]
    fn frames_go_to_the_other_nodes_only_while_one_of_them_watches() {
        let live = Live::default();
        let (out, mut peers) = mpsc::channel(4);
        live.share_with_peers(out);
        live.stored(&[batch("p", 1_000, 1.0, false)]);
        live.flush();
        assert!(peers.try_recv().is_err(), "nobody watches anywhere");

        live.peer_watching(Duration::from_secs(60));
        live.stored(&[batch("p", 2_000, 2.0, false)]);
        live.alarms_changed();
        live.agents_changed();
        live.flush();
        assert!(matches!(peers.try_recv(), Ok(Frame::Readings(_))));
        assert!(matches!(peers.try_recv(), Ok(Frame::Alarms)));
        assert!(
            peers.try_recv().is_err(),
            "agents are heard by every node itself"
        );
    }

    #[test]
    fn peers_that_missed_frames_are_told_to_refetch() {
        let live = Live::default();
        let (out, mut peers) = mpsc::channel(1);
        live.share_with_peers(out);
        live.peer_watching(Duration::from_secs(60));
        live.alarms_changed();
        live.flush();
        live.alarms_changed();
        live.flush(); // the queue is full: this one is lost
        assert!(matches!(peers.try_recv(), Ok(Frame::Alarms)));
        live.alarms_changed();
        live.flush();
        assert!(matches!(peers.try_recv(), Ok(Frame::Resync)));
    }

    #[test]
    fn alarm_and_agent_nudges_are_sent_once_per_flush() {
        let live = Live::default();
        let (mut rx, _) = live.subscribe();
        live.alarms_changed();
        live.alarms_changed();
        live.agents_changed();
        live.flush();
        assert!(matches!(rx.try_recv(), Ok(Frame::Alarms)));
        assert!(matches!(rx.try_recv(), Ok(Frame::Agents)));
        assert!(rx.try_recv().is_err());
    }
}
