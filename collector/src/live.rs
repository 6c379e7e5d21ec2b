//! Live push to open dashboards: the newest reading of every point that
//! changed, a few times a second, and nudges when alarms or agents changed.
//!
//! The store writer hands over what it committed; a flusher task turns what
//! gathered since the last flush into one serialized frame that every event
//! stream shares. So the cost of a reading is one map update however many
//! dashboards are open, and the cost of a dashboard is copying frames to its
//! socket. Nothing is gathered while no dashboard is open.

use roomguard_protocol::{Batch, Quality};
use serde::Serialize;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{broadcast, watch};

/// How often gathered readings go out: well inside the one second a
/// dashboard may lag ingest, without a frame per batch.
pub const FLUSH_EVERY: Duration = Duration::from_millis(250);

/// Frames a stream may fall behind before it is told to start over.
const BACKLOG: usize = 64;

/// What an event stream sends.
#[derive(Debug, Clone)]
pub enum Frame {
    /// `{"points":[…]}`, serialized once for every stream.
    Readings(Arc<str>),
    /// Something about alarms or silences changed.
    Alarms,
    /// An agent's status changed.
    Agents,
}

impl Frame {
    /// The SSE event name.
    pub fn event(&self) -> &'static str {
        match self {
            Frame::Readings(_) => "readings",
            Frame::Alarms => "alarms",
            Frame::Agents => "agents",
        }
    }

    pub fn data(&self) -> &str {
        match self {
            Frame::Readings(s) => s,
            Frame::Alarms | Frame::Agents => "{}",
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
}

impl Default for Live {
    fn default() -> Self {
        Live {
            gathered: Mutex::default(),
            sent: Mutex::default(),
            tx: broadcast::channel(BACKLOG).0,
            closed: watch::channel(false).0,
        }
    }
}

impl Live {
    /// Whether any event stream is open.
    pub fn watched(&self) -> bool {
        self.tx.receiver_count() > 0
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
        if !g.points.is_empty() {
            let frame = self.readings_frame(g.points);
            if let Some(f) = frame {
                let _ = self.tx.send(f);
            }
        }
        if g.alarms {
            let _ = self.tx.send(Frame::Alarms);
        }
        if g.agents {
            let _ = self.tx.send(Frame::Agents);
        }
    }

    fn readings_frame(&self, points: HashMap<String, HashMap<String, Update>>) -> Option<Frame> {
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
        if rows.is_empty() {
            return None;
        }
        let json = serde_json::json!({ "points": rows }).to_string();
        Some(Frame::Readings(json.into()))
    }

    /// A new event stream: frames from now on, and whether the collector is
    /// shutting down (open streams would otherwise hold the HTTP server up).
    pub fn subscribe(&self) -> (broadcast::Receiver<Frame>, watch::Receiver<bool>) {
        (self.tx.subscribe(), self.closed.subscribe())
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
