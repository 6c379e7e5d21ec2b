//! The lease rounds against PostgreSQL, on a connection of their own, and
//! the check every write transaction makes before it commits.
//!
//! A round: say this node is alive; renew what it holds (expiry = the
//! database's `now()` + lease); register the sites seen since the last
//! round; read every lease and the live nodes; give up and take what
//! `plan.rs` says. Taking a lease bumps its epoch, and may only happen when
//! it is free or expired.
//!
//! Fencing: a write transaction locks its partitions' lease rows `FOR
//! SHARE` just before it commits and checks owner and epoch. A takeover's
//! `UPDATE` waits for that lock, so either the old owner's transaction
//! commits first (and the new owner, loading the state afterwards, sees
//! it) or the old owner finds the new epoch and rolls back: at no instant
//! do two nodes write one site. The lock is held only from the check to the
//! commit, and writer sessions end a transaction left idle longer than a
//! lease (`idle_in_transaction_session_timeout`), so a node frozen in that
//! moment delays a takeover by at most a lease.

use super::plan::{self, Lease};
use super::{Cluster, Held, MAINTENANCE};
use crate::store::postgres::{connect_to, PgError, Target};
use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_postgres::Client;

/// Locks the lease rows of `parts` and checks this node still holds each
/// at the epoch in `held`; the partitions it lost otherwise.
pub async fn check(
    tx: &tokio_postgres::Transaction<'_>,
    node: &str,
    held: &Held,
    parts: &[i32],
) -> Result<(), PgError> {
    let mut parts = parts.to_vec();
    parts.sort_unstable();
    parts.dedup();
    // In partition order, as the renewal locks them: no deadlock.
    let rows = tx
        .query(
            "SELECT part, owner, epoch FROM cluster_leases WHERE part = ANY($1)
             ORDER BY part FOR SHARE",
            &[&parts],
        )
        .await?;
    let now: HashMap<i32, (Option<String>, i64)> = rows
        .iter()
        .map(|r| (r.get(0), (r.get(1), r.get(2))))
        .collect();
    let lost: Vec<i32> = parts
        .iter()
        .copied()
        .filter(|p| match (now.get(p), held.parts.get(p)) {
            (Some((Some(owner), epoch)), Some(mine)) => owner != node || epoch != mine,
            _ => true,
        })
        .collect();
    if lost.is_empty() {
        Ok(())
    } else {
        Err(PgError::Fenced(lost))
    }
}

/// Makes the lease rows and checks this node's partition count is the
/// cluster's; at the process's first connection, gives up whatever an
/// earlier run of this node left held (its state in memory is gone, so it
/// takes them again under a new epoch). A reconnection keeps what it holds.
async fn setup(c: &Client, cluster: &Cluster, first: bool) -> Result<(), PgError> {
    let parts = cluster.partitions as i32;
    c.execute(
        "INSERT INTO cluster_settings (partitions) VALUES ($1) ON CONFLICT DO NOTHING",
        &[&parts],
    )
    .await?;
    let have: i32 = c
        .query_one("SELECT partitions FROM cluster_settings", &[])
        .await?
        .get(0);
    if have != parts {
        return Err(PgError::Refused(format!(
            "cluster.partitions: this node says {parts}, the cluster's database says {have}; \
             every node must say the same (changing it means stopping every node first, then \
             `DELETE FROM cluster_settings; DELETE FROM cluster_leases; DELETE FROM cluster_sites`)"
        )));
    }
    c.execute(
        "INSERT INTO cluster_leases (part) SELECT generate_series($1::INTEGER, $2::INTEGER - 1)
         ON CONFLICT DO NOTHING",
        &[&MAINTENANCE, &parts],
    )
    .await?;
    if first {
        namesake(c, cluster).await?;
        c.execute(
            "UPDATE cluster_leases SET owner = NULL, expires_at = now() WHERE owner = $1",
            &[&cluster.node],
        )
        .await?;
    }
    // Sites stored before the cluster existed (or before this node knew them).
    for r in c
        .query(
            "SELECT DISTINCT site FROM points WHERE site NOT IN (SELECT site FROM cluster_sites)",
            &[],
        )
        .await?
    {
        cluster.saw(r.get(0));
    }
    Ok(())
}

/// Refuses to start under a node id a live process already uses: the two
/// would count as one node, and this one's start would free the other's
/// leases. A row seen within a lease may be a run that just crashed (a
/// quick restart): its heartbeat has stopped, which waiting two renewals
/// shows.
async fn namesake(c: &Client, cluster: &Cluster) -> Result<(), PgError> {
    let me = &cluster.node;
    let lease_s = cluster.lease.as_secs_f64();
    let Some((before, _)) = heartbeat_of(c, me, lease_s).await? else {
        return Ok(());
    };
    tokio::time::sleep(cluster.renew_every * 2 + std::time::Duration::from_millis(500)).await;
    match heartbeat_of(c, me, lease_s).await? {
        Some((after, http)) if after != before => Err(PgError::Refused(format!(
            "cluster.node_id: {me:?} is already used by a live collector (at {http}); \
             give every node its own id (this one holds nothing until that one stops)"
        ))),
        _ => Ok(()),
    }
}

/// When `node` was last seen (as text, compared for change only) and its
/// address, if it was seen within a lease and is not leaving.
async fn heartbeat_of(
    c: &Client,
    node: &str,
    lease_s: f64,
) -> Result<Option<(String, String)>, PgError> {
    Ok(c.query_opt(
        "SELECT seen_at::TEXT, http FROM cluster_nodes
             WHERE node = $1 AND NOT leaving AND seen_at > now() - make_interval(secs => $2)",
        &[&node, &lease_s],
    )
    .await?
    .map(|r| (r.get(0), r.get(1))))
}

/// One round; returns whether what is held changed.
async fn round(c: &Client, cluster: &Cluster, first: bool) -> Result<bool, PgError> {
    let me = &cluster.node;
    let lease_s = cluster.lease.as_secs_f64();
    let leaving = cluster.leaving.load(Relaxed);
    let started: i64 = c
        .query_one(
            "INSERT INTO cluster_nodes (node, http, started_at, seen_at, leaving)
             VALUES ($1, $2, now(), now(), $3)
             ON CONFLICT (node) DO UPDATE SET http = excluded.http, seen_at = now(),
                 leaving = excluded.leaving,
                 started_at = CASE WHEN $4 THEN now() ELSE cluster_nodes.started_at END
             RETURNING (extract(epoch FROM started_at) * 1000000)::BIGINT",
            &[me, &cluster.http(), &leaving, &first],
        )
        .await?
        .get(0);
    {
        // Another process started under this id since this one's first
        // round (both started at once, past the check in `setup`).
        let mut mine = cluster.started_us.lock().unwrap_or_else(|e| e.into_inner());
        match *mine {
            Some(m) if !first && m != started => {
                return Err(PgError::Refused(format!(
                    "cluster.node_id: another collector started under {me:?}; \
                     give every node its own id (this one holds nothing)"
                )));
            }
            _ => *mine = Some(started),
        }
    }
    // Renewed in partition order (as writers lock them); only what this
    // process took, at the epoch it took it (rows under its name at
    // another epoch are another process's with the same node_id).
    let before = cluster.held();
    let mine: Vec<i32> = before.parts.keys().copied().collect();
    let renewed = c
        .query(
            "UPDATE cluster_leases SET expires_at = now() + make_interval(secs => $2), renewed_at = now()
             WHERE part IN (SELECT part FROM cluster_leases WHERE owner = $1 AND part = ANY($3)
                            ORDER BY part FOR UPDATE)
             RETURNING part, epoch",
            &[me, &lease_s, &mine],
        )
        .await?;
    let mut held: HashMap<i32, i64> = renewed
        .iter()
        .map(|r| (r.get::<_, i32>(0), r.get::<_, i64>(1)))
        .filter(|(p, e)| before.parts.get(p) == Some(e))
        .collect();
    let lost = before
        .parts
        .iter()
        .filter(|(p, e)| held.get(p) != Some(e))
        .count();
    if lost > 0 {
        cluster.counts.lost.fetch_add(lost as u64, Relaxed);
        tracing::warn!(lost, "leases found taken by another node at renewal");
    }
    let discovered = cluster.take_discovered();
    if !discovered.is_empty() {
        let parts: Vec<i32> = discovered.iter().map(|s| cluster.part_of(s)).collect();
        let registered = c
            .execute(
                "INSERT INTO cluster_sites (site, part) SELECT * FROM unnest($1::TEXT[], $2::INTEGER[])
                 ON CONFLICT DO NOTHING",
                &[&discovered, &parts],
            )
            .await;
        if let Err(e) = registered {
            cluster.rediscover(discovered);
            return Err(e.into());
        }
    }
    let leases: Vec<Lease> = c
        .query(
            "SELECT part, owner, expires_at <= now() FROM cluster_leases ORDER BY part",
            &[],
        )
        .await?
        .iter()
        .map(|r| Lease {
            part: r.get(0),
            owner: r.get(1),
            expired: r.get(2),
        })
        .collect();
    let live: Vec<String> = c
        .query(
            "SELECT node FROM cluster_nodes
             WHERE seen_at > now() - make_interval(secs => $1) AND NOT leaving ORDER BY node",
            &[&lease_s],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let plan = plan::plan(me, &live, &leases, leaving);
    for part in &plan.release {
        let released = c
            .execute(
                "UPDATE cluster_leases SET owner = NULL, expires_at = now() WHERE part = $1 AND owner = $2",
                &[part, me],
            )
            .await;
        match released {
            Ok(_) => {
                held.remove(part);
                cluster.counts.released.fetch_add(1, Relaxed);
            }
            // Our own writer is committing on it: given up next round.
            Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::LOCK_NOT_AVAILABLE) => {}
            Err(e) => {
                cluster.set_held(held);
                return Err(e.into());
            }
        }
    }
    for part in &plan.take {
        // Bounded by lock_timeout: a writer frozen between its check and
        // its commit holds the row; this partition waits for a later round.
        let taken = c
            .query_opt(
                "UPDATE cluster_leases l SET owner = $2, epoch = l.epoch + 1,
                     expires_at = now() + make_interval(secs => $3), taken_at = now(), renewed_at = now()
                 FROM (SELECT part, owner FROM cluster_leases WHERE part = $1 FOR UPDATE) old
                 WHERE l.part = old.part AND (l.owner IS NULL OR l.expires_at <= now())
                 RETURNING l.epoch, old.owner",
                &[part, me, &lease_s],
            )
            .await;
        match taken {
            Ok(Some(r)) => {
                let from: Option<String> = r.get(1);
                held.insert(*part, r.get(0));
                match from {
                    Some(from) if from != *me => {
                        cluster.counts.takeovers.fetch_add(1, Relaxed);
                        tracing::info!(part, %from, "lease taken over from a node that stopped renewing it");
                    }
                    _ => {
                        cluster.counts.taken.fetch_add(1, Relaxed);
                    }
                }
            }
            Ok(None) => {} // another node was quicker
            Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::LOCK_NOT_AVAILABLE) => {
                tracing::debug!(part, "lease row locked by a writer; tried again next round");
            }
            Err(e) => {
                cluster.set_held(held);
                return Err(e.into());
            }
        }
    }
    let changed = cluster.set_held(held);
    // The sites of what is held, for ingest's subscriptions.
    let held = cluster.held();
    let sites: BTreeSet<String> = c
        .query("SELECT site, part FROM cluster_sites", &[])
        .await?
        .iter()
        .filter(|r| held.holds(r.get(1)))
        .map(|r| r.get(0))
        .collect();
    cluster.set_sites(sites);
    Ok(changed)
}

/// Runs lease rounds until the node leaves; then gives everything up.
pub async fn run(cluster: Arc<Cluster>, target: Target, done: tokio::sync::oneshot::Sender<()>) {
    let mut client: Option<Client> = None;
    let mut first = true;
    let mut renewed_at = Instant::now();
    let mut wait = Duration::from_millis(500);
    loop {
        let leaving = cluster.leaving.load(Relaxed);
        if client.as_ref().is_none_or(Client::is_closed) {
            client = None;
            match connect(&target, &cluster, first).await {
                Ok(c) => {
                    client = Some(c);
                    wait = Duration::from_millis(500);
                }
                Err(e) => {
                    cluster.counts.round_failures.fetch_add(1, Relaxed);
                    tracing::error!(error = %e, "cluster: cannot reach PostgreSQL for the leases");
                    refused(&cluster, &e);
                }
            }
        }
        if let Some(c) = &client {
            // Leases renewed in a round count from its start, and a round
            // that hangs (a lost server) ends within a lease.
            let started = Instant::now();
            let result = match tokio::time::timeout(cluster.lease, round(c, &cluster, first)).await
            {
                Ok(r) => r,
                Err(_) => {
                    client = None;
                    Err(PgError::Cluster(
                        "cluster: a lease round took longer than a lease; connecting again".into(),
                    ))
                }
            };
            match result {
                Ok(changed) => {
                    first = false;
                    renewed_at = started;
                    cluster.set_refused(None);
                    if changed {
                        let held = cluster.held();
                        tracing::info!(
                            partitions = held.parts.keys().filter(|p| **p >= 0).count(),
                            maintenance = held.holds(MAINTENANCE),
                            "cluster: leases held changed"
                        );
                    }
                    if leaving {
                        let _ = done.send(());
                        return;
                    }
                }
                Err(e) => {
                    cluster.counts.round_failures.fetch_add(1, Relaxed);
                    tracing::error!(error = %e, "cluster: lease round failed");
                    refused(&cluster, &e);
                }
            }
        }
        // Unrenewed for a lease: others may hold them now. Writes would be
        // refused by the check anyway; this stops trying.
        if renewed_at.elapsed() >= cluster.lease && cluster.set_held(HashMap::new()) {
            tracing::warn!("cluster: leases not renewed within a lease; holding nothing until PostgreSQL answers");
        }
        if leaving && client.is_none() {
            let _ = done.send(());
            return;
        }
        let pause = if client.is_some() {
            cluster.renew_every
        } else {
            wait = (wait * 2).min(cluster.renew_every);
            wait
        };
        tokio::time::sleep(pause).await;
    }
}

/// A refusal: hold nothing, and say why on `/healthz`.
fn refused(cluster: &Cluster, e: &PgError) {
    if let PgError::Refused(why) = e {
        cluster.set_held(HashMap::new());
        cluster.set_refused(Some(why.clone()));
    }
}

async fn connect(target: &Target, cluster: &Cluster, first: bool) -> Result<Client, PgError> {
    let c = connect_to(target).await?;
    // A take never waits long for a frozen writer's row lock.
    c.batch_execute("SET lock_timeout = '1s'").await?;
    setup(&c, cluster, first).await?;
    Ok(c)
}

/// What `/api/v1/cluster` shows.
pub async fn status(c: &Client, lease: Duration) -> Result<serde_json::Value, PgError> {
    use serde_json::json;
    let lease_s = lease.as_secs_f64();
    let nodes: Vec<serde_json::Value> = c
        .query(
            "SELECT n.node, n.http, (extract(epoch FROM n.started_at) * 1000)::BIGINT,
                    (extract(epoch FROM now() - n.seen_at) * 1000)::BIGINT,
                    n.seen_at > now() - make_interval(secs => $1) AND NOT n.leaving, n.leaving,
                    (SELECT count(*) FROM cluster_leases l WHERE l.owner = n.node AND l.part >= 0
                        AND l.expires_at > now()),
                    EXISTS (SELECT 1 FROM cluster_leases l WHERE l.owner = n.node AND l.part = -1
                        AND l.expires_at > now())
             FROM cluster_nodes n ORDER BY n.node",
            &[&lease_s],
        )
        .await?
        .iter()
        .map(|r| {
            json!({
                "node": r.get::<_, String>(0),
                "http": r.get::<_, String>(1),
                "started_at": r.get::<_, i64>(2),
                "seen_ms_ago": r.get::<_, i64>(3),
                "live": r.get::<_, bool>(4),
                "leaving": r.get::<_, bool>(5),
                "partitions": r.get::<_, i64>(6),
                "maintenance": r.get::<_, bool>(7),
            })
        })
        .collect();
    let sites: HashMap<i32, Vec<String>> = c
        .query("SELECT site, part FROM cluster_sites ORDER BY site", &[])
        .await?
        .iter()
        .fold(HashMap::new(), |mut m, r| {
            m.entry(r.get(1)).or_default().push(r.get(0));
            m
        });
    let partitions: Vec<serde_json::Value> = c
        .query(
            "SELECT part, owner, epoch, expires_at > now(),
                    (extract(epoch FROM expires_at - now()) * 1000)::BIGINT,
                    (extract(epoch FROM now() - taken_at) * 1000)::BIGINT
             FROM cluster_leases ORDER BY part",
            &[],
        )
        .await?
        .iter()
        .map(|r| {
            let part: i32 = r.get(0);
            json!({
                "partition": part,
                "kind": if part == MAINTENANCE { "maintenance" } else { "sites" },
                "owner": r.get::<_, Option<String>>(1),
                "epoch": r.get::<_, i64>(2),
                "held": r.get::<_, bool>(3),
                "expires_in_ms": r.get::<_, Option<i64>>(4),
                "held_for_ms": r.get::<_, Option<i64>>(5),
                "sites": sites.get(&part).cloned().unwrap_or_default(),
            })
        })
        .collect();
    Ok(json!({ "nodes": nodes, "partitions": partitions }))
}
