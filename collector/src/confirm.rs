//! Confirmations to agents: after a transaction commits, each agent is told
//! which of its batches are stored, on `roomguard/v1/{site}/{agent}/ack`.
//! Agents keep every batch in their spool until then, so a broker that loses
//! messages it had acknowledged (a restart without persistence, an overflowing
//! queue) costs a resend, not a reading.
//!
//! Confirmations are gathered for a moment and sent as ranges, one message
//! per agent, so they cost a fraction of the batches they answer.

use roomguard_protocol::{AgentSecret, Confirm, Topic};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::Notify;

/// How long confirmations are gathered before they are sent.
const GATHER: Duration = Duration::from_millis(100);

type AgentId = (String, String);
/// Sequence numbers stored and refused, since the last send.
type Owed = (Vec<u64>, Vec<u64>);

#[derive(Default)]
pub struct Confirmations {
    pending: Mutex<HashMap<AgentId, Owed>>,
    wake: Notify,
}

impl Confirmations {
    fn with(&self, site: &str, agent: &str, f: impl FnOnce(&mut Owed)) {
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        // Look up before allocating a key: the common case is an agent already present.
        if let Some(v) = p.get_mut(&(site.to_owned(), agent.to_owned())) {
            f(v);
        } else {
            f(p.entry((site.to_owned(), agent.to_owned())).or_default());
        }
        drop(p);
        self.wake.notify_one();
    }

    /// A batch is committed (or was already stored).
    pub fn stored(&self, site: &str, agent: &str, seq: u64) {
        self.with(site, agent, |v| v.0.push(seq));
    }

    /// A batch will never be stored: it is invalid.
    pub fn refused(&self, site: &str, agent: &str, seq: u64) {
        self.with(site, agent, |v| v.1.push(seq));
    }

    fn take(&self) -> Vec<(AgentId, Confirm)> {
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        p.drain()
            .map(|(k, (stored, refused))| (k, Confirm::new(stored, refused)))
            .collect()
    }
}

/// Confirmations waiting for their connection's event loop.
const CONFIRM_QUEUE: usize = 4_096;

/// Sends gathered confirmations on a connection of their own (`opts`).
///
/// Not on the ingest connection: confirmations are QoS 1 publishes, and
/// while rumqttc's window of unacknowledged publishes is full it takes no
/// request from its queue, so the acknowledgements of ingested messages
/// queued behind them waited, overflowed the queue and were lost; the broker
/// then held those messages in its in-flight window for good and ingest
/// stalled (seen in bench-ingest past 250,000 readings/s). Here a slow
/// confirmation only delays other confirmations.
pub async fn run(
    confirmations: std::sync::Arc<Confirmations>,
    opts: MqttOptions,
    secret: std::sync::Arc<AgentSecret>,
    metrics: std::sync::Arc<crate::metrics::Metrics>,
) {
    let (client, mut eventloop) = AsyncClient::new(opts, CONFIRM_QUEUE);
    let _connection = AbortOnDrop(tokio::spawn(async move {
        let mut backoff = Duration::from_millis(250);
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    metrics.confirm_connected.set(1);
                    backoff = Duration::from_millis(250);
                }
                Ok(_) => {}
                Err(e) => {
                    // A broker refusing this connection (authentication, a
                    // client-id rule) shows here; agents then resend what
                    // they never see confirmed. A denied publish does not:
                    // MQTT 3.1.1 acknowledges it all the same.
                    metrics.confirm_connected.set(0);
                    tracing::warn!(error = %e, retry_in = ?backoff, "confirmation connection failed");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                }
            }
        }
    }));
    loop {
        confirmations.wake.notified().await;
        tokio::time::sleep(GATHER).await;
        for ((site, agent), c) in confirmations.take() {
            let topic = Topic::ack(&site, &agent);
            // Signed with the agent's key: the agent acts on nothing else
            // (docs/PROTOCOL.md#authentication).
            let payload = secret.key(&site, &agent).sign(&topic, &c.to_json());
            // Waits for room rather than dropping: while it waits, newer
            // confirmations gather and go out merged into ranges.
            if client
                .publish(topic, QoS::AtLeastOnce, false, payload)
                .await
                .is_err()
            {
                return; // the event loop is gone: shutting down
            }
        }
    }
}

/// Aborts a background task when its owner goes (ingest's confirmer, the
/// confirmer's own helpers).
pub(crate) struct AbortOnDrop(pub(crate) tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use roomguard_protocol::SeqRange;

    #[test]
    fn confirmations_are_gathered_per_agent_as_ranges() {
        let c = Confirmations::default();
        for s in [3, 1, 2] {
            c.stored("s", "a", s);
        }
        c.stored("s", "b", 9);
        c.refused("s", "a", 7);
        let mut out = c.take();
        out.sort_by(|x, y| x.0.cmp(&y.0));
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].1.stored, vec![SeqRange(1, 3)]);
        assert_eq!(out[0].1.refused, vec![SeqRange(7, 7)]);
        assert_eq!(out[1].1.stored, vec![SeqRange(9, 9)]);
        assert!(c.take().is_empty(), "taken once");
    }
}
