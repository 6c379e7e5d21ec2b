//! The optional InfluxDB sink: every stored reading is also written, as line
//! protocol, to an InfluxDB v2 write API (`/api/v2/write`; VictoriaMetrics
//! takes the same), for teams that run Grafana.
//!
//! ```text
//! store writer ──try_send──► encoder task ──gzip chunks──► bounded queue ──► sender task ──POST──► InfluxDB
//!  (after commit; never waits)   (line protocol)          (drops oldest, counted)  (retries with backoff)
//! ```
//!
//! A slow or dead InfluxDB never slows ingest: the writer only offers what it
//! committed, and what cannot be queued is counted as dropped. While InfluxDB
//! is away the queue keeps up to `max_buffer_bytes` of compressed chunks and
//! sends them, oldest first, when it is back.
//!
//! Schema (one measurement, so a Grafana query needs no list of names):
//! `roomguard,site=…,agent=…,room=…,device=…,point=…,quantity=…,unit=… value=24.5,text="…" <time>`;
//! a bad reading is `bad=1i` instead of a value. Tags unknown for a point
//! (never described yet) are left out.

use crate::metrics::Metrics;
use influxdb_line_protocol::LineProtocolBuilder;
use roomguard_protocol::clock::jitter;
use roomguard_protocol::{Batch, Quality};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, VecDeque};
use std::io::Write as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, Notify};

pub const MEASUREMENT: &str = "roomguard";
/// Tags every line may carry (a test checks the Grafana dashboards use no others).
pub const TAGS: &[&str] = &[
    "site", "agent", "room", "device", "point", "quantity", "unit",
];
/// Fields a line may carry.
pub const FIELDS: &[&str] = &["value", "text", "bad"];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    S,
    Ms,
    Us,
    Ns,
}

impl Precision {
    fn scale_ms(self, ms: i64) -> i64 {
        match self {
            Precision::S => ms.div_euclid(1000),
            Precision::Ms => ms,
            Precision::Us => ms.saturating_mul(1_000),
            Precision::Ns => ms.saturating_mul(1_000_000),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Precision::S => "s",
            Precision::Ms => "ms",
            Precision::Us => "us",
            Precision::Ns => "ns",
        }
    }
}

/// What the catalogue knows of a point.
#[derive(Debug, Clone, Default)]
pub struct PointTags {
    pub room: String,
    pub quantity: String,
    pub unit: String,
}

/// Point tags by site, then point id: nested so that a reading's lookup
/// borrows its `&str`s instead of building a key per reading.
pub type Catalogue = HashMap<String, HashMap<String, PointTags>>;

/// Builds line protocol from committed batches. Pure but for its memory of
/// point descriptions.
#[derive(Default)]
pub struct Encoder {
    points: Catalogue,
}

impl Encoder {
    pub fn with_catalogue(points: Catalogue) -> Encoder {
        Encoder { points }
    }

    /// Appends one line per reading of `batches` to `out`; returns the count.
    pub fn encode(
        &mut self,
        batches: &[Batch],
        precision: Precision,
        out: Vec<u8>,
    ) -> (Vec<u8>, usize) {
        let mut lp = LineProtocolBuilder::new_with(out);
        let mut lines = 0;
        for b in batches {
            for m in &b.points {
                self.points.entry(b.site.clone()).or_default().insert(
                    m.id.to_string(),
                    PointTags {
                        room: m.room.to_string(),
                        quantity: m.quantity.to_string(),
                        unit: m.unit.to_string(),
                    },
                );
            }
            for r in &b.readings {
                let tags = self.points.get(&b.site).and_then(|p| p.get(&*r.point));
                let mut line = lp
                    .measurement(MEASUREMENT)
                    .tag("site", &b.site)
                    .tag("agent", &b.agent);
                // Empty tag values are not allowed in line protocol: leave them out.
                if let Some(t) = tags.filter(|t| !t.room.is_empty()) {
                    line = line.tag("room", &t.room);
                }
                line = line.tag("device", &b.device).tag("point", &r.point);
                if let Some(t) = tags {
                    if !t.quantity.is_empty() {
                        line = line.tag("quantity", &t.quantity);
                    }
                    if !t.unit.is_empty() {
                        line = line.tag("unit", &t.unit);
                    }
                }
                let ts = precision.scale_ms(r.ts);
                lp = match (&r.quality, r.value, &r.text) {
                    (Quality::Bad(_), _, _) => line.field("bad", 1i64).timestamp(ts).close_line(),
                    (Quality::Good, Some(v), Some(t)) => line
                        .field("value", v)
                        .field("text", t.as_str())
                        .timestamp(ts)
                        .close_line(),
                    (Quality::Good, Some(v), None) => {
                        line.field("value", v).timestamp(ts).close_line()
                    }
                    (Quality::Good, None, Some(t)) => {
                        line.field("text", t.as_str()).timestamp(ts).close_line()
                    }
                    (Quality::Good, None, None) => {
                        // decode_batch refuses these; one that slipped through is written as bad, not lost.
                        lp = line.field("bad", 1i64).timestamp(ts).close_line();
                        lines += 1;
                        continue;
                    }
                };
                lines += 1;
            }
        }
        (lp.build(), lines)
    }
}

/// A sealed, compressed piece of the backlog.
struct Chunk {
    gz: Vec<u8>,
    lines: usize,
}

#[derive(Default)]
struct Queue {
    chunks: VecDeque<Chunk>,
    bytes: usize,
}

/// The writer's handle: offers committed batches without ever waiting.
#[derive(Clone)]
pub struct SinkHandle {
    tx: mpsc::Sender<Vec<Batch>>,
    metrics: Arc<Metrics>,
}

impl SinkHandle {
    pub fn offer(&self, batches: Vec<Batch>) {
        if batches.is_empty() {
            return;
        }
        if let Err(e) = self.tx.try_send(batches) {
            let lost = match &e {
                mpsc::error::TrySendError::Full(b) | mpsc::error::TrySendError::Closed(b) => b,
            };
            let n: usize = lost.iter().map(|b| b.readings.len()).sum();
            self.metrics.sink_lines_dropped.add(n as u64);
        }
    }
}

/// Settings the sink runs with (from `[influx]`).
#[derive(Debug, Clone)]
pub struct SinkSettings {
    pub url: String,
    pub org: String,
    pub bucket: String,
    pub token: Option<String>,
    pub precision: Precision,
    pub batch_lines: usize,
    pub flush_interval: Duration,
    pub max_buffer_bytes: usize,
    pub timeout: Duration,
}

/// Starts the encoder and sender tasks on the current runtime.
pub fn spawn(
    settings: SinkSettings,
    catalogue: Catalogue,
    metrics: Arc<Metrics>,
) -> Result<SinkHandle, reqwest::Error> {
    let (tx, rx) = mpsc::channel(256);
    let queue = Arc::new(Mutex::new(Queue::default()));
    let ready = Arc::new(Notify::new());
    let client = reqwest::Client::builder()
        .timeout(settings.timeout)
        .build()?;
    tokio::spawn(encode_task(
        rx,
        Encoder::with_catalogue(catalogue),
        settings.clone(),
        queue.clone(),
        ready.clone(),
        metrics.clone(),
    ));
    tokio::spawn(send_task(client, settings, queue, ready, metrics.clone()));
    Ok(SinkHandle { tx, metrics })
}

fn lock(q: &Mutex<Queue>) -> std::sync::MutexGuard<'_, Queue> {
    q.lock().unwrap_or_else(|e| e.into_inner())
}

async fn encode_task(
    mut rx: mpsc::Receiver<Vec<Batch>>,
    mut encoder: Encoder,
    s: SinkSettings,
    queue: Arc<Mutex<Queue>>,
    ready: Arc<Notify>,
    metrics: Arc<Metrics>,
) {
    let mut buf: Vec<u8> = Vec::new();
    let mut lines = 0usize;
    let mut tick = tokio::time::interval(s.flush_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let flush = tokio::select! {
            got = rx.recv() => match got {
                Some(batches) => {
                    let (out, n) = encoder.encode(&batches, s.precision, std::mem::take(&mut buf));
                    buf = out;
                    lines += n;
                    lines >= s.batch_lines
                }
                None => true,
            },
            _ = tick.tick() => lines > 0,
        };
        if flush && lines > 0 {
            let gz = gzip(&buf);
            buf.clear();
            let mut q = lock(&queue);
            q.bytes += gz.len();
            q.chunks.push_back(Chunk { gz, lines });
            // The bound: the oldest go first, counted.
            while q.bytes > s.max_buffer_bytes && q.chunks.len() > 1 {
                if let Some(old) = q.chunks.pop_front() {
                    q.bytes -= old.gz.len();
                    metrics.sink_lines_dropped.add(old.lines as u64);
                    tracing::warn!(
                        lines = old.lines,
                        "InfluxDB backlog over influx.max_buffer_bytes: oldest lines dropped"
                    );
                }
            }
            metrics
                .sink_backlog_lines
                .set(q.chunks.iter().map(|c| c.lines as u64).sum());
            metrics.sink_backlog_bytes.set(q.bytes as u64);
            drop(q);
            lines = 0;
            ready.notify_one();
        }
        if rx.is_closed() && rx.is_empty() && lines == 0 {
            return;
        }
    }
}

/// `{url}/api/v2/write?org=…&bucket=…&precision=…`, escaped.
pub fn write_url(s: &SinkSettings) -> Result<reqwest::Url, String> {
    let base = format!("{}/api/v2/write", s.url.trim_end_matches('/'));
    reqwest::Url::parse_with_params(
        &base,
        [
            ("org", s.org.as_str()),
            ("bucket", s.bucket.as_str()),
            ("precision", s.precision.name()),
        ],
    )
    .map_err(|e| format!("{base:?}: {e}"))
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(
        Vec::with_capacity(bytes.len() / 6),
        flate2::Compression::fast(),
    );
    // Writing into a Vec cannot fail.
    let _ = enc.write_all(bytes);
    enc.finish().unwrap_or_default()
}

async fn send_task(
    client: reqwest::Client,
    s: SinkSettings,
    queue: Arc<Mutex<Queue>>,
    ready: Arc<Notify>,
    metrics: Arc<Metrics>,
) {
    let url = match write_url(&s) {
        Ok(u) => u,
        Err(e) => {
            tracing::error!(error = %e, "influx.url is not a URL; the sink is off");
            return;
        }
    };
    let mut backoff = Duration::from_millis(500);
    loop {
        let next = {
            let q = lock(&queue);
            q.chunks.front().map(|c| (c.gz.clone(), c.lines))
        };
        let Some((body, lines)) = next else {
            ready.notified().await;
            continue;
        };
        let mut req = client
            .post(url.clone())
            .header("Content-Encoding", "gzip")
            .header("Content-Type", "text/plain; charset=utf-8")
            .body(body);
        if let Some(token) = &s.token {
            req = req.header("Authorization", format!("Token {token}"));
        }
        let outcome = match req.send().await {
            Ok(resp) if resp.status().is_success() => Ok(()),
            Ok(resp) => {
                let status = resp.status();
                let text: String = resp
                    .text()
                    .await
                    .unwrap_or_default()
                    .chars()
                    .take(300)
                    .collect();
                // 4xx other than throttling and timeouts: the data itself is
                // refused and would be refused again.
                if status.is_client_error() && status.as_u16() != 429 && status.as_u16() != 408 {
                    tracing::error!(%status, body = %text, lines, "InfluxDB refused a chunk; dropped");
                    metrics.sink_lines_rejected.add(lines as u64);
                    Err(false)
                } else {
                    tracing::warn!(%status, body = %text, "InfluxDB write failed; will retry");
                    Err(true)
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?backoff, "InfluxDB unreachable; will retry");
                Err(true)
            }
        };
        match outcome {
            Err(true) => {
                metrics.sink_errors.inc();
                tokio::time::sleep(backoff + jitter(backoff / 2)).await;
                backoff = (backoff * 2).min(Duration::from_secs(30));
                continue;
            }
            Ok(()) => {
                metrics.sink_lines_sent.add(lines as u64);
                backoff = Duration::from_millis(500);
            }
            Err(false) => {}
        }
        let mut q = lock(&queue);
        if let Some(c) = q.chunks.pop_front() {
            q.bytes -= c.gz.len();
        }
        metrics
            .sink_backlog_lines
            .set(q.chunks.iter().map(|c| c.lines as u64).sum());
        metrics.sink_backlog_bytes.set(q.bytes as u64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use roomguard_protocol::{PointMeta, Reading, PROTOCOL_VERSION};

    fn batch() -> Batch {
        Batch {
            v: PROTOCOL_VERSION,
            site: "demo site".into(),
            agent: "edge-01".into(),
            seq: 1,
            device: "ups-1".into(),
            polled_at: 1_795_870_000_000,
            backfill: false,
            points: vec![PointMeta {
                id: "ups-1.source".into(),
                room: "machine-room".into(),
                quantity: "ups_output_source".into(),
                unit: "".into(),
            }],
            readings: vec![
                Reading {
                    point: "ups-1.source".into(),
                    value: Some(5.0),
                    text: Some("on battery, \"low\"".into()),
                    ts: 1_795_870_000_000,
                    quality: Quality::Good,
                },
                Reading {
                    point: "ups-1.load".into(),
                    value: None,
                    text: None,
                    ts: 1_795_870_000_000,
                    quality: Quality::Bad("timeout".into()),
                },
            ],
        }
    }

    #[test]
    fn readings_become_escaped_lines_with_the_tags_the_catalogue_knows() {
        let (out, n) = Encoder::default().encode(&[batch()], Precision::Ms, Vec::new());
        assert_eq!(n, 2);
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            r#"roomguard,site=demo\ site,agent=edge-01,room=machine-room,device=ups-1,point=ups-1.source,quantity=ups_output_source value=5,text="on battery, \"low\"" 1795870000000"#
        );
        // Never described: no room, quantity or unit tags; bad, not a value.
        assert_eq!(
            lines[1],
            r#"roomguard,site=demo\ site,agent=edge-01,device=ups-1,point=ups-1.load bad=1i 1795870000000"#
        );
    }

    #[test]
    fn precision_converts_milliseconds() {
        assert_eq!(Precision::S.scale_ms(1_500), 1);
        assert_eq!(Precision::Ns.scale_ms(2), 2_000_000);
    }
}
