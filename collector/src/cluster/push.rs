//! Live push across the nodes of a cluster, through PostgreSQL
//! `LISTEN`/`NOTIFY`.
//!
//! A dashboard may be open on any node (behind a load balancer), but a
//! site's readings are stored, and its alarms raised, by the node holding
//! its partition. So each node sends the frames its flusher makes on one
//! channel, and every node passes the others' frames to its own event
//! streams. The database all nodes share already carries this; no broker
//! topic or node-to-node connection is needed.
//!
//! Frames travel only while a dashboard is open somewhere: a node with an
//! open stream says so every [`WATCH_EVERY`]. A notification is not
//! durable: a node whose listening connection dropped tells its streams to
//! refetch their snapshot once it is back.

use super::Cluster;
use crate::live::{Frame, Live};
use crate::store::postgres::{connect_listening, PgError, Target};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// The notification channel.
pub const CHANNEL: &str = "roomguard_live";
/// How often a node with an open stream says so.
pub const WATCH_EVERY: Duration = Duration::from_secs(2);
/// How long the others keep sending after the last word (a few missed
/// words do not stop the frames).
const WATCH_FOR: Duration = Duration::from_secs(6);
/// PostgreSQL refuses a payload of 8,000 bytes or more.
const MAX_PAYLOAD: usize = 7_999;

/// What one notification says.
#[derive(Debug, PartialEq)]
enum Note {
    /// A dashboard is open on the sender.
    Watching,
    Frame(Frame),
}

/// `node`, `event` and the frame's data on three lines; a node id never
/// holds a line break (validated at load).
fn payload(node: &str, event: &str, data: &str) -> String {
    format!("{node}\n{event}\n{data}")
}

/// Reads a notification; `None` for this node's own, and for kinds a newer
/// version may send.
fn parse(payload: &str, me: &str) -> Option<Note> {
    let (node, rest) = payload.split_once('\n')?;
    if node == me {
        return None;
    }
    let (event, data) = rest.split_once('\n')?;
    Some(match event {
        "watching" => Note::Watching,
        "readings" => Note::Frame(Frame::Readings(data.into())),
        "alarms" => Note::Frame(Frame::Alarms),
        "resync" => Note::Frame(Frame::Resync),
        _ => return None,
    })
}

/// Carries frames between this node and the others until the collector
/// stops; reconnects whenever PostgreSQL goes.
pub async fn run(
    live: Arc<Live>,
    cluster: Arc<Cluster>,
    target: Target,
    mut frames: mpsc::Receiver<Frame>,
) {
    let mut closing = live.closing();
    let mut wait = Duration::from_millis(500);
    let mut first = true;
    loop {
        let ended = match connect_listening(&target).await {
            Ok((client, notes)) => {
                if !first {
                    // Whatever the others sent meanwhile is lost.
                    live.resync();
                }
                first = false;
                wait = Duration::from_millis(500);
                tokio::select! {
                    r = session(&client, notes, &live, &cluster, &mut frames) => r,
                    _ = closing.wait_for(|c| *c) => return,
                }
            }
            Err(e) => Err(e),
        };
        match ended {
            Ok(()) => return,
            Err(e) => tracing::warn!(error = %e, "cluster: live push to other nodes interrupted"),
        }
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            _ = closing.wait_for(|c| *c) => return,
        }
        wait = (wait * 2).min(WATCH_EVERY);
    }
}

async fn session(
    client: &tokio_postgres::Client,
    mut notes: mpsc::Receiver<tokio_postgres::Notification>,
    live: &Live,
    cluster: &Cluster,
    frames: &mut mpsc::Receiver<Frame>,
) -> Result<(), PgError> {
    let me = cluster.node.as_str();
    client.batch_execute(&format!("LISTEN {CHANNEL}")).await?;
    let mut tick = tokio::time::interval(crate::live::FLUSH_EVERY);
    let mut said_watching: Option<Instant> = None;
    loop {
        tokio::select! {
            f = frames.recv() => {
                let Some(f) = f else { return Ok(()) };
                // Everything queued goes in one statement.
                let mut out = vec![payload(me, f.event(), f.data())];
                while let Ok(f) = frames.try_recv() {
                    out.push(payload(me, f.event(), f.data()));
                }
                send(client, cluster, out).await?;
            }
            n = notes.recv() => {
                let Some(n) = n else {
                    return Err(PgError::Cluster("cluster: the listening connection ended".into()));
                };
                cluster.counts.push_received.fetch_add(1, Relaxed);
                match parse(n.payload(), me) {
                    Some(Note::Watching) => live.peer_watching(WATCH_FOR),
                    Some(Note::Frame(f)) => live.from_peer(f),
                    None => {}
                }
            }
            _ = tick.tick() => {
                // At once when the first stream opens, then every few seconds.
                if live.local_streams() == 0 {
                    said_watching = None;
                } else if said_watching.is_none_or(|t| t.elapsed() >= WATCH_EVERY) {
                    send(client, cluster, vec![payload(me, "watching", "")]).await?;
                    said_watching = Some(Instant::now());
                }
            }
        }
    }
}

async fn send(
    client: &tokio_postgres::Client,
    cluster: &Cluster,
    mut payloads: Vec<String>,
) -> Result<(), PgError> {
    let before = payloads.len();
    // A lone reading too large for a notification (a long text value)
    // reaches this node's dashboards only.
    payloads.retain(|p| p.len() <= MAX_PAYLOAD);
    cluster
        .counts
        .push_dropped
        .fetch_add((before - payloads.len()) as u64, Relaxed);
    if payloads.is_empty() {
        return Ok(());
    }
    client
        .execute(
            "SELECT pg_notify($1, p) FROM unnest($2::text[]) AS p",
            &[&CHANNEL, &payloads],
        )
        .await?;
    cluster
        .counts
        .push_sent
        .fetch_add(payloads.len() as u64, Relaxed);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_notification_reads_back_as_the_frame_it_carried() {
        let data = r#"{"points":[{"site":"s","point":"p"}]}"#;
        assert_eq!(
            parse(&payload("n1", "readings", data), "n2"),
            Some(Note::Frame(Frame::Readings(data.into())))
        );
        assert_eq!(
            parse(&payload("n1", "alarms", "{}"), "n2"),
            Some(Note::Frame(Frame::Alarms))
        );
        assert_eq!(
            parse(&payload("n1", "watching", ""), "n2"),
            Some(Note::Watching)
        );
    }

    #[test]
    fn a_nodes_own_notifications_and_unknown_kinds_are_ignored() {
        assert_eq!(parse(&payload("n1", "alarms", "{}"), "n1"), None);
        assert_eq!(parse(&payload("n1", "something-new", "{}"), "n2"), None);
        assert_eq!(parse("garbage", "n2"), None);
    }

    #[test]
    fn a_full_readings_frame_fits_one_notification() {
        let longest_node_id = "n".repeat(64);
        let frame = "x".repeat(crate::live::MAX_FRAME);
        assert!(payload(&longest_node_id, "readings", &frame).len() <= MAX_PAYLOAD);
    }
}
