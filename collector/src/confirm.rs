//! Confirmations to agents: after a transaction commits, each agent is told
//! which of its batches are stored, on `roomguard/v1/{site}/{agent}/ack`.
//! Agents keep every batch in their spool until then, so a broker that loses
//! messages it had acknowledged (a restart without persistence, an overflowing
//! queue) costs a resend, not a reading.
//!
//! Confirmations are gathered for a moment and sent as ranges, one message
//! per agent, so they cost a fraction of the batches they answer.

use roomguard_protocol::{Confirm, Topic};
use rumqttc::{AsyncClient, QoS};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::Notify;

/// How long confirmations are gathered before they are sent.
const GATHER: Duration = Duration::from_millis(100);

type AgentKey = (String, String);
/// Sequence numbers stored and refused, since the last send.
type Owed = (Vec<u64>, Vec<u64>);

#[derive(Default)]
pub struct Confirmations {
    pending: Mutex<HashMap<AgentKey, Owed>>,
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

    fn take(&self) -> Vec<(AgentKey, Confirm)> {
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        p.drain()
            .map(|(k, (stored, refused))| (k, Confirm::new(stored, refused)))
            .collect()
    }
}

/// Sends gathered confirmations until the client goes away.
pub async fn run(confirmations: std::sync::Arc<Confirmations>, client: AsyncClient) {
    loop {
        confirmations.wake.notified().await;
        tokio::time::sleep(GATHER).await;
        for ((site, agent), c) in confirmations.take() {
            // QoS 1; if the queue is full the agent sends the batches again
            // after its confirmation timeout, which the store absorbs.
            if let Err(e) = client.try_publish(
                Topic::ack(&site, &agent),
                QoS::AtLeastOnce,
                false,
                c.to_json(),
            ) {
                tracing::warn!(%site, %agent, error = %e, "confirmation not sent; the agent will send those batches again");
            }
        }
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
