//! Several collectors sharing the sites (docs/SCALING.md). PostgreSQL is
//! both the record and the coordinator: sites map to partitions, each
//! partition is held by one node through a fenced lease (owner, epoch,
//! expiry by the database's clock), and every write transaction for a site
//! checks its lease before it commits, so two nodes never write one site's
//! alarm state. The broker is only a pipe: each node subscribes to the
//! topics of the sites it holds, and the agents' spools resend whatever a
//! node did not confirm.
//!
//! `plan.rs` (pure) decides which leases to take and give up; `lease.rs`
//! runs the rounds against the database and holds the fencing check. This
//! file holds the configuration and [`Cluster`], what the rest of the
//! collector asks: which partitions are held, at which epochs.

pub mod lease;
pub mod plan;
pub mod push;

use roomguard_protocol::conf::{self, Problems};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

/// The lease of the work one node does for all (rollups, retention, the
/// alarm sweep, the inspection round): not a site partition.
pub const MAINTENANCE: i32 = -1;

/// `[cluster]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    pub enabled: bool,
    /// This node's name, unique in the cluster (letters, digits, `.`, `_`, `-`).
    pub node_id: String,
    /// Site partitions; every node of a cluster must say the same.
    pub partitions: u32,
    /// How long a lease lasts unrenewed: a dead node's sites move after this.
    #[serde(with = "conf::duration")]
    pub lease: Duration,
    /// How often leases are renewed and the partitions balanced.
    #[serde(with = "conf::duration")]
    pub renew_every: Duration,
    /// This node's address as people reach it, shown by `/api/v1/cluster`
    /// (default: `http.listen`).
    pub advertise: Option<String>,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            enabled: false,
            node_id: String::new(),
            partitions: 64,
            lease: Duration::from_secs(10),
            renew_every: Duration::from_secs(2),
            advertise: None,
        }
    }
}

impl ClusterConfig {
    pub fn check(&self, postgres: bool, p: &mut Problems) {
        if !self.enabled {
            return;
        }
        if !postgres {
            p.push(
                "cluster.enabled",
                "needs store.backend = \"postgres\": the nodes share the sites through leases kept in \
                 that database (docs/SCALING.md); a SQLite file belongs to one process",
            );
        }
        let id_ok = !self.node_id.is_empty()
            && self.node_id.len() <= 64
            && self
                .node_id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        if !id_ok {
            p.push(
                "cluster.node_id",
                format!(
                    "{:?}: give each node a name of 1–64 letters, digits, '.', '_' or '-', unique in the cluster",
                    self.node_id
                ),
            );
        }
        if !(1..=4096).contains(&self.partitions) {
            p.push("cluster.partitions", "must be 1 to 4096");
        }
        if self.lease < Duration::from_secs(2) || self.lease > Duration::from_secs(300) {
            p.push("cluster.lease", "must be 2s to 5m");
        }
        if self.renew_every < Duration::from_millis(200) || self.renew_every * 3 > self.lease {
            p.push(
                "cluster.renew_every",
                "must be at least 200ms and at most a third of cluster.lease, so one slow \
                 renewal does not lose the leases",
            );
        }
    }
}

/// The partition of `site`: FNV-1a of its id, so every node and every build
/// agrees without asking anyone.
pub fn partition_of(site: &str, partitions: u32) -> i32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in site.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    (h % partitions.max(1)) as i32
}

/// The leases this node holds, as of one round: partition → epoch.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Held {
    /// Bumped whenever the set or an epoch changes.
    pub version: u64,
    pub parts: HashMap<i32, i64>,
}

impl Held {
    pub fn holds(&self, part: i32) -> bool {
        self.parts.contains_key(&part)
    }
}

/// What this node holds, shared by the lease task (which changes it), the
/// store writer (which writes only for it and is fenced by its epochs) and
/// ingest (which follows the sites it implies).
pub struct Cluster {
    pub node: String,
    pub partitions: u32,
    pub lease: Duration,
    pub renew_every: Duration,
    /// This node's address as `/api/v1/cluster` shows it.
    http: Mutex<String>,
    advertised: bool,
    held: RwLock<Arc<Held>>,
    /// The sites of the partitions held: ingest subscribes to their batches.
    sites: tokio::sync::watch::Sender<BTreeSet<String>>,
    /// Sites known to be registered (or queued to be).
    known: Mutex<HashSet<String>>,
    discovered: Mutex<Vec<String>>,
    /// Stopping: the lease task gives everything up and takes nothing more.
    pub leaving: AtomicBool,
    pub counts: Counts,
    /// Why the cluster refuses this node (a partition count of its own, a
    /// node id a live process already uses), while it does: it holds
    /// nothing, and `/healthz` says so.
    refused: Mutex<Option<String>>,
    /// `started_at` of this process's row in `cluster_nodes` (µs): another
    /// process starting under the same id changes it.
    pub(crate) started_us: Mutex<Option<i64>>,
}

/// What `/metrics` says of the cluster.
#[derive(Default)]
pub struct Counts {
    /// Leases taken from a node whose lease had expired.
    pub takeovers: AtomicU64,
    /// Leases taken that were free (given up, or never held).
    pub taken: AtomicU64,
    /// Leases given up (balancing, leaving).
    pub released: AtomicU64,
    /// Leases found taken by another node at renewal.
    pub lost: AtomicU64,
    /// Write transactions refused by the lease check and rolled back.
    pub fenced: AtomicU64,
    /// Batches received for a site this node does not hold: not stored,
    /// not confirmed (the agent sends them again to the holder).
    pub not_ours: AtomicU64,
    /// Lease rounds that failed (PostgreSQL out of reach).
    pub round_failures: AtomicU64,
    /// Live-push notifications sent to the other nodes.
    pub push_sent: AtomicU64,
    /// Live-push notifications heard (this node's own included).
    pub push_received: AtomicU64,
    /// Frames too large for a notification, shown on this node only.
    pub push_dropped: AtomicU64,
}

impl Cluster {
    pub fn new(cfg: &ClusterConfig, http: String) -> Arc<Cluster> {
        Arc::new(Cluster {
            node: cfg.node_id.clone(),
            partitions: cfg.partitions,
            lease: cfg.lease,
            renew_every: cfg.renew_every,
            http: Mutex::new(cfg.advertise.clone().unwrap_or(http)),
            advertised: cfg.advertise.is_some(),
            held: RwLock::new(Arc::new(Held::default())),
            sites: tokio::sync::watch::Sender::new(BTreeSet::new()),
            known: Mutex::new(HashSet::new()),
            discovered: Mutex::new(Vec::new()),
            leaving: AtomicBool::new(false),
            counts: Counts::default(),
            refused: Mutex::new(None),
            started_us: Mutex::new(None),
        })
    }

    /// Why the cluster refuses this node, if it does.
    pub fn refused(&self) -> Option<String> {
        self.refused
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub(crate) fn set_refused(&self, why: Option<String>) {
        *self.refused.lock().unwrap_or_else(|e| e.into_inner()) = why;
    }

    /// The address HTTP was bound to (port 0 in the config becomes the
    /// port the system gave), unless `cluster.advertise` says otherwise.
    pub fn bound(&self, addr: std::net::SocketAddr) {
        if !self.advertised {
            *self.http.lock().unwrap_or_else(|e| e.into_inner()) = format!("http://{addr}");
        }
    }

    pub fn http(&self) -> String {
        self.http.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn part_of(&self, site: &str) -> i32 {
        partition_of(site, self.partitions)
    }

    /// The leases held now; cheap to take at every write.
    pub fn held(&self) -> Arc<Held> {
        self.held.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn version(&self) -> u64 {
        self.held().version
    }

    pub fn holds_maintenance(&self) -> bool {
        self.held().holds(MAINTENANCE)
    }

    /// Replaces what is held, when it differs.
    fn set_held(&self, parts: HashMap<i32, i64>) -> bool {
        let mut held = self.held.write().unwrap_or_else(|e| e.into_inner());
        if held.parts == parts {
            return false;
        }
        *held = Arc::new(Held {
            version: held.version + 1,
            parts,
        });
        true
    }

    /// The writer found these leases taken by another node (its
    /// transaction was refused): they are not held any more, unless a round
    /// has taken one again since, at a newer epoch than the writer's `seen`.
    pub fn lost(&self, parts: &[i32], seen: &Held) {
        self.counts.fenced.fetch_add(1, Relaxed);
        let mut now = self.held().parts.clone();
        for p in parts {
            if now.get(p) == seen.parts.get(p) {
                now.remove(p);
            }
        }
        if self.set_held(now) {
            tracing::warn!(partitions = ?parts, "leases taken by another node: their sites are left to it");
        }
    }

    /// A site seen on the wire; registered by the next lease round if new.
    pub fn saw(&self, site: &str) {
        let mut known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        if !known.contains(site) {
            known.insert(site.to_owned());
            self.discovered
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(site.to_owned());
        }
    }

    fn take_discovered(&self) -> Vec<String> {
        std::mem::take(&mut *self.discovered.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Sites whose registration failed: tried again next round.
    fn rediscover(&self, sites: Vec<String>) {
        self.discovered
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(sites);
    }

    /// Ingest's view of the sites to subscribe to.
    pub fn sites(&self) -> tokio::sync::watch::Receiver<BTreeSet<String>> {
        self.sites.subscribe()
    }

    /// The cluster's lines of `/metrics`.
    pub fn render_metrics(&self) -> String {
        use std::fmt::Write;
        let held = self.held();
        let mut out = String::new();
        let mut line = |name: &str, kind: &str, help: &str, v: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}"
            );
        };
        let c = &self.counts;
        line(
            "roomguard_cluster_partitions_held",
            "gauge",
            "Site partitions whose lease this node holds.",
            held.parts.keys().filter(|p| **p >= 0).count() as u64,
        );
        line(
            "roomguard_cluster_maintenance_held",
            "gauge",
            "1 when this node holds the maintenance lease (rollups, retention, sweep, inspection).",
            u64::from(held.holds(MAINTENANCE)),
        );
        line(
            "roomguard_cluster_sites_held",
            "gauge",
            "Sites of the partitions held (this node subscribes to their batches).",
            self.sites.borrow().len() as u64,
        );
        for (name, help, v) in [
            (
                "roomguard_cluster_takeovers_total",
                "Leases taken over from a node that stopped renewing them.",
                &c.takeovers,
            ),
            (
                "roomguard_cluster_leases_taken_total",
                "Free leases taken (given up by another node, or never held).",
                &c.taken,
            ),
            (
                "roomguard_cluster_leases_released_total",
                "Leases given up (balancing, leaving).",
                &c.released,
            ),
            (
                "roomguard_cluster_leases_lost_total",
                "Leases found taken by another node at renewal.",
                &c.lost,
            ),
            (
                "roomguard_cluster_fenced_total",
                "Write transactions refused by the lease check and rolled back.",
                &c.fenced,
            ),
            (
                "roomguard_cluster_batches_not_ours_total",
                "Batches of sites held by other nodes: neither stored nor confirmed here.",
                &c.not_ours,
            ),
            (
                "roomguard_cluster_round_failures_total",
                "Lease rounds that failed.",
                &c.round_failures,
            ),
            (
                "roomguard_cluster_push_sent_total",
                "Live-push notifications sent to the other nodes (dashboards open elsewhere).",
                &c.push_sent,
            ),
            (
                "roomguard_cluster_push_received_total",
                "Live-push notifications heard, this node's own included.",
                &c.push_received,
            ),
            (
                "roomguard_cluster_push_dropped_total",
                "Frames too large for a notification, shown on this node's dashboards only.",
                &c.push_dropped,
            ),
        ] {
            line(name, "counter", help, v.load(Relaxed));
        }
        out
    }

    fn set_sites(&self, sites: BTreeSet<String>) {
        self.sites.send_if_modified(|s| {
            if *s == sites {
                false
            } else {
                *s = sites;
                true
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_site_maps_to_the_same_partition_everywhere_and_sites_spread() {
        assert_eq!(partition_of("site-a", 64), partition_of("site-a", 64));
        let parts: HashSet<i32> = (0..200)
            .map(|i| partition_of(&format!("site-{i}"), 16))
            .collect();
        assert_eq!(parts.len(), 16, "200 sites cover all 16 partitions");
        assert!(parts.iter().all(|p| (0..16).contains(p)));
    }

    #[test]
    fn cluster_mode_is_refused_on_sqlite_and_with_a_lease_renewed_too_seldom() {
        let cfg = ClusterConfig {
            enabled: true,
            node_id: "a b".into(),
            renew_every: Duration::from_secs(5),
            ..Default::default()
        };
        let mut p = Problems::default();
        cfg.check(false, &mut p);
        let paths: Vec<&str> = p.list().iter().map(|p| p.path.as_str()).collect();
        assert_eq!(
            paths,
            ["cluster.enabled", "cluster.node_id", "cluster.renew_every"]
        );
    }
}
