//! Collector cluster (issue 22): three collectors on one PostgreSQL share
//! the sites through fenced leases, behind a real Mosquitto, with a
//! webhook receiver and many small sites with two real agents each, played
//! by one simulator process (`roomguard-sim fleet`). A node killed with
//! SIGKILL mid-drill loses nothing and repeats nothing: every agent's
//! numbered batches are stored exactly once, each site's alarms are the
//! drill's (no doubled raise, no lost clear), each notification key
//! reaches the receiver once, and lease epochs never go back. A fourth
//! node joining takes its share; a dashboard on any node shows every
//! site live.

use anyhow::{ensure, Context, Result};
use roomguard_e2e::fleet::Fleet;
use roomguard_e2e::ledger::{self, Ledger, PgAgentStored};
use roomguard_e2e::*;
use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::{Duration, Instant};

const PATIENCE: Duration = Duration::from_secs(120);
/// Short, so the test is quick; production defaults are 10 s and 2 s.
const LEASE_S: u64 = 4;
const RENEW_S: u64 = 1;
const PARTITIONS: u32 = 16;
const DB: &str = "cluster";
/// Sites the fleet plays in the node-kill test, two agents each.
const SITES: usize = 10;

/// One collector node: its directory, process and HTTP base URL.
struct Node {
    id: String,
    proc: Proc,
    http: String,
}

fn start_node(root: &Path, id: &str, store: &str, broker: &str, hook: &str) -> Result<Node> {
    let dir = root.join(id);
    std::fs::create_dir_all(&dir)?;
    let conf = cluster_node_toml(id, PARTITIONS, LEASE_S, RENEW_S, hook, "2s");
    let (proc, http, _) = start_collector_stored(&dir, store, Some(broker), &conf)?;
    Ok(Node {
        id: id.to_owned(),
        proc,
        http,
    })
}

/// One simulated site: its simulator, its agent and the agent's ledger.
struct Site {
    id: String,
    _sim: Proc,
    control: String,
    agent: Proc,
    agent_http: String,
    ledger: Ledger,
}

fn start_site(root: &Path, id: &str, broker: &str) -> Result<Site> {
    let dir = root.join(id);
    std::fs::create_dir_all(&dir)?;
    let (sim, addrs) = start_simulator(&dir, &[])?;
    let conf = small_site_agent_toml(id, &addrs, broker, &dir.join("state"));
    let mut ledger = Ledger::default();
    let (agent, ready) = ledger::start_run(&dir, &conf, &mut ledger)?;
    Ok(Site {
        id: id.to_owned(),
        agent_http: ledger::agent_metrics_url(&ready)?,
        _sim: sim,
        control: addrs.control,
        agent,
        ledger,
    })
}

/// `/api/v1/cluster` as `node` answers it.
async fn cluster(client: &reqwest::Client, node: &Node) -> Option<Value> {
    get_json(client, &format!("{}/api/v1/cluster", node.http)).await
}

/// Site partitions each live node holds, by node id.
fn holdings(c: &Value) -> HashMap<String, Vec<i64>> {
    let mut m: HashMap<String, Vec<i64>> = HashMap::new();
    for p in c["partitions"].as_array().into_iter().flatten() {
        if p["kind"] == "sites" && p["held"] == true {
            if let Some(owner) = p["owner"].as_str() {
                m.entry(owner.to_owned())
                    .or_default()
                    .push(p["partition"].as_i64().unwrap_or(-1));
            }
        }
    }
    m
}

/// Every epoch seen per partition, to check none ever goes back.
#[derive(Default)]
struct Epochs(HashMap<i64, Vec<i64>>);

impl Epochs {
    fn note(&mut self, c: &Value) {
        for p in c["partitions"].as_array().into_iter().flatten() {
            let (Some(part), Some(epoch)) = (p["partition"].as_i64(), p["epoch"].as_i64()) else {
                continue;
            };
            self.0.entry(part).or_default().push(epoch);
        }
    }

    fn check(&self) -> Result<()> {
        for (part, seen) in &self.0 {
            ensure!(
                seen.windows(2).all(|w| w[0] <= w[1]),
                "partition {part}: epoch went back: {seen:?}"
            );
        }
        Ok(())
    }
}

/// Waits until every site partition is held by one of `nodes` and each of
/// them holds its share; returns the status seen.
async fn balanced(
    client: &reqwest::Client,
    ask: &Node,
    nodes: &[&str],
    epochs: &mut Epochs,
) -> Result<Value> {
    let share = (PARTITIONS as usize).div_ceil(nodes.len());
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(c) = cluster(client, ask).await {
            epochs.note(&c);
            let h = holdings(&c);
            let total: usize = h.values().map(Vec::len).sum();
            let only_these = h.keys().all(|n| nodes.contains(&n.as_str()));
            let each = nodes
                .iter()
                .all(|n| h.get(*n).is_some_and(|p| !p.is_empty() && p.len() <= share));
            if total == PARTITIONS as usize && only_these && each {
                return Ok(c);
            }
            ensure!(
                Instant::now() < deadline,
                "partitions not balanced over {nodes:?}: {h:?}"
            );
        } else {
            ensure!(
                Instant::now() < deadline,
                "no cluster status from {}",
                ask.id
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A browser logged in as admin on `http`, showing the cluster view with
/// `node` live in it; `None` when Chromium is not installed outside CI.
async fn watch_cluster(
    root: &Path,
    http: &str,
    node: &str,
) -> Result<Option<roomguard_e2e::browser::Browser>> {
    let Some(b) = roomguard_e2e::browser::Browser::start(root, 1200, 900).await? else {
        return Ok(None);
    };
    b.goto(&format!("{http}/")).await?;
    b.type_into("#login-user", "admin", PATIENCE).await?;
    b.type_into("#login-password", "admin-test-password", PATIENCE)
        .await?;
    b.click("#login-submit", PATIENCE).await?;
    // The nav link appears for an admin of a cluster.
    b.click("#nav-cluster:not([hidden])", PATIENCE).await?;
    b.wait_for(
        "the node shown live",
        PATIENCE,
        &format!(
            "const n = document.querySelector('[data-node={node:?}]'); return n && n.dataset.live === 'true';"
        ),
    )
    .await?;
    Ok(Some(b))
}

/// An alarm in the shared database: serial, rule, site, point, cleared.
type AlarmRow = (u64, String, String, String, bool);

/// The serials of the alarms told to someone (an incident's first alarm and
/// its follow-ups; the rest are recorded under their incident).
fn told(pg: &Postgres) -> Result<Vec<u64>> {
    let text = pg.psql(
        DB,
        "SELECT serial FROM alarms WHERE notified ORDER BY serial",
    )?;
    text.lines()
        .filter(|l| !l.is_empty())
        .map(|l| Ok(l.trim().parse()?))
        .collect()
}

fn alarms(pg: &Postgres) -> Result<Vec<AlarmRow>> {
    let text = pg.psql(
        DB,
        "SELECT serial || '|' || rule || '|' || site || '|' || coalesce(point, '') || '|' || (cleared_at IS NOT NULL)
         FROM alarms ORDER BY serial",
    )?;
    text.lines()
        .filter(|l| !l.is_empty())
        .map(|l| {
            let f: Vec<&str> = l.split('|').collect();
            ensure!(f.len() == 5, "alarm row {l:?}");
            Ok((
                f[0].parse()?,
                f[1].into(),
                f[2].into(),
                f[3].into(),
                f[4] == "true",
            ))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_killed_mid_drill_loses_no_batch_repeats_no_alarm_and_its_sites_move() -> Result<()>
{
    let Some(pg) = Postgres::start()? else {
        return Ok(());
    };
    let tmp = tempfile::tempdir()?;
    let root = tmp.path().to_owned();
    if std::env::var_os("ROOMGUARD_KEEP_TEST_DIR").is_some() {
        println!("test directory kept: {}", root.display());
        std::mem::forget(tmp);
    }
    let result = node_killed_mid_drill(&pg, &root).await;
    if result.is_err() && std::env::var_os("ROOMGUARD_KEEP_TEST_DIR").is_some() {
        println!(
            "failed: {result:?}; PostgreSQL kept on port {} for 20 minutes",
            pg.port
        );
        tokio::time::sleep(Duration::from_secs(1200)).await;
    }
    result
}

async fn node_killed_mid_drill(pg: &Postgres, root: &Path) -> Result<()> {
    let root = root.to_owned();
    let Some(broker) = Mosquitto::start(&root)? else {
        return Ok(());
    };
    pg.psql("postgres", &format!("CREATE DATABASE {DB}"))?;
    let store = pg_store_toml(&root, pg, DB, Postgres::PASSWORD)?;
    let hook = Receiver::start().await?;
    let client = http_client();
    let mut epochs = Epochs::default();

    let mut nodes = Vec::new();
    for id in ["n1", "n2", "n3"] {
        nodes.push(start_node(&root, id, &store, &broker.url(), &hook.url)?);
    }
    // Many small sites, each with two agents, in one simulator process.
    let mut fleet = Fleet::start(&root.join("fleet"), &broker.url(), SITES, 2)?;
    let sites = fleet.sites.clone();
    // Data from every agent, stored by whichever node holds its site.
    for a in &fleet.agents {
        eventually(
            PATIENCE,
            &format!("readings of {}/{}", a.site, a.agent),
            || async {
                let n = pg
                    .psql(
                        DB,
                        &format!(
                            "SELECT count(*) FROM batches WHERE site = '{}' AND agent = '{}'",
                            a.site, a.agent
                        ),
                    )
                    .ok()?;
                (n.parse::<u64>().ok()? > 3).then_some(())
            },
        )
        .await?;
    }
    balanced(&client, &nodes[0], &["n1", "n2", "n3"], &mut epochs).await?;

    // Fire drills on three sites; their first smoke heads are told (one
    // incident per site: the first head, then the follow-up when the second
    // head confirms the fire).
    let drilled_first = &sites[..3];
    for s in drilled_first {
        drill(&client, &fleet.site_control(s), "smoke").await?;
    }
    let raised_at = |site: &str| {
        hook.received()
            .iter()
            .filter(|r| {
                r.body["site"] == site && r.body["category"] == "fire" && r.body["kind"] == "raise"
            })
            .count()
    };
    for s in drilled_first {
        eventually(PATIENCE, &format!("smoke raise of {s}"), || async {
            (raised_at(s) >= 1).then_some(())
        })
        .await?;
    }

    // Kill the node holding most partitions, mid-drill.
    let c = cluster(&client, &nodes[0])
        .await
        .context("cluster status")?;
    epochs.note(&c);
    let h = holdings(&c);
    let victim = h
        .iter()
        .max_by_key(|(_, p)| p.len())
        .map(|(n, _)| n.clone())
        .context("somebody holds partitions")?;
    let vi = nodes
        .iter()
        .position(|n| n.id == victim)
        .context("victim")?;
    let its = h[&victim].clone();
    // An admin watches the cluster view on another node.
    let watcher = nodes
        .iter()
        .find(|n| n.id != victim)
        .context("a survivor")?;
    let browser = watch_cluster(&root, &watcher.http, &victim).await?;
    println!("killing {victim}, holder of partitions {its:?}");
    nodes[vi].proc.kill();
    let killed = Instant::now();
    // More drills while its sites have no holder.
    let drilled_then = &sites[3..5];
    for s in drilled_then {
        drill(&client, &fleet.site_control(s), "smoke").await?;
    }
    let survivors: Vec<&str> = ["n1", "n2", "n3"]
        .into_iter()
        .filter(|n| *n != victim)
        .collect();
    let ask = nodes
        .iter()
        .find(|n| n.id != victim)
        .context("a survivor")?;
    balanced(&client, ask, &survivors, &mut epochs).await?;
    let moved = killed.elapsed();
    if let Some(b) = &browser {
        // The page shows it: the node not seen, none of its partitions left.
        b.wait_for(
            "the killed node shown gone and its partitions moved",
            PATIENCE,
            &format!(
                "const n = document.querySelector('[data-node={victim:?}]'); \
                 return n && n.dataset.live === 'false' && \
                 ![...document.querySelectorAll('[data-owner]')].some((e) => e.dataset.owner === {victim:?});"
            ),
        )
        .await?;
        let shots =
            std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("artifacts/screenshots");
        std::fs::create_dir_all(&shots)?;
        b.screenshot(&shots.join("cluster-after-kill.png")).await?;
    }
    // How late each takeover came after the dead node's lease ran out, by
    // the database's clock.
    let late = pg.psql(
        DB,
        &format!(
            "SELECT coalesce(max(extract(epoch FROM taken_at) * 1000), 0)::BIGINT FROM cluster_leases WHERE part = ANY('{{{}}}')",
            its.iter().map(|p| p.to_string()).collect::<Vec<_>>().join(",")
        ),
    )?;
    println!(
        "takeover: {victim}'s {} partitions held by {survivors:?} {:.1} s after the kill \
         (lease {LEASE_S} s, renewal every {RENEW_S} s; last taken at {late} ms)",
        its.len(),
        moved.as_secs_f64()
    );
    ensure!(
        moved <= Duration::from_secs(LEASE_S + RENEW_S + 10),
        "takeover took {moved:?}, beyond a lease and a renewal (with room for a loaded machine)"
    );
    for s in sites[..5].iter() {
        eventually(
            PATIENCE,
            &format!("the fire of {s} told, and told again when confirmed"),
            || async { (raised_at(s) >= 2).then_some(()) },
        )
        .await?;
    }

    // The node comes back under its name and gets its share again.
    let back = start_node(&root, &victim, &store, &broker.url(), &hook.url)?;
    nodes[vi] = back;
    balanced(&client, &nodes[0], &["n1", "n2", "n3"], &mut epochs).await?;

    // A fourth node joins mid-run and takes its share from the others.
    nodes.push(start_node(&root, "n4", &store, &broker.url(), &hook.url)?);
    balanced(&client, &nodes[0], &["n1", "n2", "n3", "n4"], &mut epochs).await?;

    // The drills end; every alarm clears.
    for s in &sites[..5] {
        drill(&client, &fleet.site_control(s), "normal").await?;
    }
    eventually(PATIENCE, "every alarm cleared", || async {
        let a = alarms(pg).ok()?;
        (!a.is_empty() && a.iter().all(|x| x.4)).then_some(())
    })
    .await
    .with_context(|| {
        format!(
            "alarms: {:?}\nleases: {}",
            alarms(pg),
            pg.psql(DB, "SELECT string_agg(part || '=' || coalesce(owner, '-') || '@' || epoch, ' ' ORDER BY part) FROM cluster_leases")
                .unwrap_or_default()
        )
    })?;
    // Every clear told too.
    eventually(
        PATIENCE,
        "every told alarm's clear at the receiver",
        || async {
            let a = told(pg).ok()?;
            let got = hook.received();
            a.iter()
                .all(|x| {
                    got.iter()
                        .any(|r| r.body["serial"].as_u64() == Some(*x) && r.body["kind"] == "clear")
                })
                .then_some(())
        },
    )
    .await?;

    // The agents drain their spools and stop; the ledger of each is checked.
    fleet.drain_and_stop(&client).await?;
    for a in &fleet.agents {
        let name = format!("{}/{}", a.site, a.agent);
        let stored = PgAgentStored(pg, DB, &a.site, &a.agent);
        ledger::account(&name, &stored, &a.ledger, 0..=0, 0).await?;
    }

    // Each drilled site: the drill's alarms, each raised once and cleared;
    // the others: none.
    let all = alarms(pg)?;
    for s in &sites {
        let mine: Vec<_> = all.iter().filter(|a| a.2 == *s).collect();
        let mut by_cause: HashMap<(String, String), u32> = HashMap::new();
        for a in &mine {
            *by_cause.entry((a.1.clone(), a.3.clone())).or_default() += 1;
        }
        println!("{s}: {by_cause:?}");
        ensure!(
            by_cause.values().all(|n| *n == 1),
            "{s}: an alarm raised twice: {by_cause:?}"
        );
        let drilled = sites[..5].contains(s);
        if drilled {
            for head in ["mr-smoke-1.smoke", "mr-smoke-2.smoke"] {
                ensure!(
                    mine.iter()
                        .any(|a| a.1 == "fire.smoke" && a.3.ends_with(head)),
                    "{s}: no smoke alarm of {head}: {mine:?}"
                );
            }
        } else {
            ensure!(mine.is_empty(), "{s}: alarms without a drill: {mine:?}");
        }
    }
    // Each alarm's events: one raise, one clear.
    let events = pg.psql(
        DB,
        "SELECT serial || ' ' || count(*) FILTER (WHERE kind = 'raise') || ' ' || count(*) FILTER (WHERE kind = 'clear')
         FROM alarm_events GROUP BY serial",
    )?;
    for l in events.lines().filter(|l| !l.is_empty()) {
        let f: Vec<&str> = l.split(' ').collect();
        ensure!(
            f[1] == "1" && f[2] == "1",
            "alarm {}: {} raises, {} clears",
            f[0],
            f[1],
            f[2]
        );
    }
    // Each notification key once; a repeat can only be a delivery whose
    // 2xx the killed node never recorded (docs/SCALING.md).
    let dups = hook.duplicates();
    println!(
        "notifications received {}, keys repeated {} {dups:?}",
        hook.received().len(),
        dups.len()
    );
    ensure!(
        dups.len() <= 1,
        "notification keys repeated beyond the one delivery a SIGKILL can cut off before its record: {dups:?}"
    );
    epochs.check()?;
    // The nodes say what happened on /metrics.
    let mut takeovers = 0;
    for n in &nodes {
        takeovers += metric(&client, &n.http, "roomguard_cluster_takeovers_total").await;
    }
    ensure!(
        takeovers >= its.len() as u64,
        "takeovers counted {takeovers}, expected at least {}",
        its.len()
    );
    Ok(())
}

/// Sends `signal` (STOP, CONT) to a process.
fn signal(proc: &Proc, signal: &str) -> Result<()> {
    let status = std::process::Command::new("kill")
        .args([&format!("-{signal}"), &proc.pid().to_string()])
        .status()?;
    ensure!(status.success(), "kill -{signal} {}", proc.pid());
    Ok(())
}

/// Checks each site's agent ledger, alarms (each raised and cleared once)
/// and the receiver (each key once).
async fn accounted(
    pg: &Postgres,
    client: &reqwest::Client,
    sites: &mut [Site],
    hook: &Receiver,
) -> Result<()> {
    for s in sites.iter_mut() {
        ledger::drained(client, &s.agent_http)
            .await
            .with_context(|| s.agent.log_tail())?;
        let out = s.agent.terminate(Duration::from_secs(20))?;
        s.ledger.stopped(&out)?;
    }
    for s in sites.iter() {
        let stored = PgAgentStored(pg, DB, &s.id, "edge-1");
        ledger::account(&s.id, &stored, &s.ledger, 0..=0, 0).await?;
    }
    let all = alarms(pg)?;
    let mut by_cause: HashMap<(String, String, String), u32> = HashMap::new();
    for a in &all {
        *by_cause
            .entry((a.2.clone(), a.1.clone(), a.3.clone()))
            .or_default() += 1;
        ensure!(a.4, "alarm {} not cleared", a.0);
    }
    ensure!(
        by_cause.values().all(|n| *n == 1),
        "an alarm raised twice: {by_cause:?}"
    );
    let dups = hook.duplicates();
    ensure!(dups.is_empty(), "notification keys repeated: {dups:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_frozen_node_is_fenced_off_and_rejoins_a_postgres_restart_stalls_nothing_lost_and_a_stop_hands_over(
) -> Result<()> {
    let Some(mut pg) = Postgres::start()? else {
        return Ok(());
    };
    let tmp = tempfile::tempdir()?;
    let root = tmp.path().to_owned();
    let Some(broker) = Mosquitto::start(&root)? else {
        return Ok(());
    };
    pg.psql("postgres", &format!("CREATE DATABASE {DB}"))?;
    let store = pg_store_toml(&root, &pg, DB, Postgres::PASSWORD)?;
    let hook = Receiver::start().await?;
    let client = http_client();
    let mut epochs = Epochs::default();
    let mut nodes = Vec::new();
    for id in ["n1", "n2"] {
        nodes.push(start_node(&root, id, &store, &broker.url(), &hook.url)?);
    }
    let mut sites = Vec::new();
    for i in 1..=3 {
        sites.push(start_site(&root, &format!("site-{i}"), &broker.url())?);
    }
    balanced(&client, &nodes[1], &["n1", "n2"], &mut epochs).await?;

    // A dashboard on either node shows every site's readings, whichever
    // node holds the site (live push through PostgreSQL).
    let logs = [
        EventLog::open(&client, &nodes[0].http).await?,
        EventLog::open(&client, &nodes[1].http).await?,
    ];
    for (log, node) in logs.iter().zip(&nodes) {
        let r = eventually(
            PATIENCE,
            &format!("every site live on {}", node.id),
            || async {
                let shown: HashSet<String> = log
                    .seen()
                    .iter()
                    .filter(|(event, _)| event == "readings")
                    .filter_map(|(_, data)| serde_json::from_str::<Value>(data).ok())
                    .flat_map(|doc| {
                        doc["points"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .filter_map(|p| p["site"].as_str().map(str::to_owned))
                            .collect::<Vec<_>>()
                    })
                    .collect();
                sites.iter().all(|s| shown.contains(&s.id)).then_some(())
            },
        )
        .await;
        if r.is_err() {
            // What each node says of the push, to tell a silent one.
            for n in &nodes {
                let page = client
                    .get(format!("{}/metrics", n.http))
                    .send()
                    .await?
                    .text()
                    .await?;
                let push: Vec<&str> = page
                    .lines()
                    .filter(|l| {
                        l.starts_with("roomguard_cluster_push")
                            || l.starts_with("roomguard_cluster_sites_held")
                    })
                    .collect();
                println!("{}: {push:?}\n{}", n.id, n.proc.log_tail());
            }
        }
        r.with_context(|| {
            let seen: Vec<String> = log
                .seen()
                .iter()
                .map(|(e, d)| format!("{e} {}", &d[..d.len().min(100)]))
                .collect();
            format!("events seen on {}: {seen:?}", node.id)
        })?;
    }
    drop(logs);

    // n1 freezes past its lease: n2 takes everything.
    signal(&nodes[0].proc, "STOP")?;
    balanced(&client, &nodes[1], &["n2"], &mut epochs).await?;
    for s in &sites {
        drill(&client, &s.control, "smoke").await?;
    }
    let raised = |site: &str| {
        hook.received()
            .iter()
            .filter(|r| r.body["site"] == site && r.body["kind"] == "raise")
            .count()
    };
    for s in &sites {
        eventually(PATIENCE, &format!("raises of {}", s.id), || async {
            // The fire's incident: its first alarm and the follow-up.
            (raised(&s.id) >= 2).then_some(())
        })
        .await?;
    }
    // It wakes up believing it holds its partitions: what it had in hand is
    // refused, it finds its leases gone, and it rejoins.
    signal(&nodes[0].proc, "CONT")?;
    balanced(&client, &nodes[1], &["n1", "n2"], &mut epochs).await?;
    let fenced = metric(&client, &nodes[0].http, "roomguard_cluster_fenced_total").await;
    let lost = metric(
        &client,
        &nodes[0].http,
        "roomguard_cluster_leases_lost_total",
    )
    .await;
    let not_ours = metric(
        &client,
        &nodes[0].http,
        "roomguard_cluster_batches_not_ours_total",
    )
    .await;
    println!("after SIGCONT n1: transactions fenced off {fenced}, leases found lost {lost}, batches not its own {not_ours}");
    ensure!(
        fenced + lost > 0,
        "the frozen node never noticed its leases were gone"
    );

    // PostgreSQL restarts under load: the nodes stall and go on; open
    // dashboards are told to refetch what the push missed meanwhile.
    let logs = [
        EventLog::open(&client, &nodes[0].http).await?,
        EventLog::open(&client, &nodes[1].http).await?,
    ];
    pg.restart()?;
    for n in &nodes {
        eventually(PATIENCE, &format!("{} healthy again", n.id), || async {
            let h = get_json(&client, &format!("{}/healthz", n.http)).await?;
            (h["status"] == "ok").then_some(())
        })
        .await?;
    }
    balanced(&client, &nodes[1], &["n1", "n2"], &mut epochs).await?;
    for (log, node) in logs.iter().zip(&nodes) {
        eventually(PATIENCE, &format!("resync on {}", node.id), || async {
            log.seen().iter().any(|(e, _)| e == "resync").then_some(())
        })
        .await?;
    }

    // The drills end; every alarm clears.
    for s in &sites {
        drill(&client, &s.control, "normal").await?;
    }
    eventually(
        PATIENCE,
        "every alarm cleared, every told one's clear told",
        || async {
            let a = alarms(&pg).ok()?;
            let told = told(&pg).ok()?;
            let got = hook.received();
            (!a.is_empty()
                && a.iter().all(|x| x.4)
                && told.iter().all(|x| {
                    got.iter()
                        .any(|r| r.body["serial"].as_u64() == Some(*x) && r.body["kind"] == "clear")
                }))
            .then_some(())
        },
    )
    .await?;

    // An acknowledgement made on n1 (a bare POST: the body is optional)
    // reaches a dashboard on n2 (the alarms are quiet by now, so nothing
    // else nudges it).
    let before = logs[1].seen().iter().filter(|(e, _)| e == "alarms").count();
    let serial = alarms(&pg)?.first().context("an alarm")?.0;
    let r = client
        .post(format!("{}/api/v1/alarms/{serial}/ack", nodes[0].http))
        .send()
        .await?;
    ensure!(r.status().is_success(), "ack: {}", r.status());
    eventually(PATIENCE, "the acknowledgement shown on n2", || async {
        (logs[1].seen().iter().filter(|(e, _)| e == "alarms").count() > before).then_some(())
    })
    .await?;
    drop(logs);

    // A second process started by mistake under n2's id is refused and
    // says so on /healthz; the cluster goes on as it was.
    let mut twin = start_node(&root.join("twin"), "n2", &store, &broker.url(), &hook.url)?;
    eventually(PATIENCE, "the twin refused", || async {
        let r = client
            .get(format!("{}/healthz", twin.http))
            .send()
            .await
            .ok()?;
        let status = r.status();
        let body: Value = r.json().await.ok()?;
        (status == 503 && body["reasons"].to_string().contains("already used")).then_some(())
    })
    .await?;
    ensure!(
        metric(&client, &twin.http, "roomguard_cluster_partitions_held").await == 0,
        "the twin holds partitions"
    );
    balanced(&client, &nodes[0], &["n1", "n2"], &mut epochs).await?;
    twin.proc.terminate(Duration::from_secs(30))?;

    // n2 stops cleanly: n1 takes its leases as free ones, not by expiry.
    let takeovers = metric(&client, &nodes[0].http, "roomguard_cluster_takeovers_total").await;
    let taken = metric(
        &client,
        &nodes[0].http,
        "roomguard_cluster_leases_taken_total",
    )
    .await;
    nodes[1].proc.terminate(Duration::from_secs(30))?;
    balanced(&client, &nodes[0], &["n1"], &mut epochs).await?;
    ensure!(
        metric(&client, &nodes[0].http, "roomguard_cluster_takeovers_total").await == takeovers,
        "n2's leases were taken by expiry, not handed over"
    );
    ensure!(
        metric(
            &client,
            &nodes[0].http,
            "roomguard_cluster_leases_taken_total"
        )
        .await
            > taken
    );
    // Batches published to n2's subscriptions after it stopped reading are
    // the agents' to send again once n1 confirms later ones: old enough
    // now for the drain below to wait for them.
    tokio::time::sleep(Duration::from_secs(5)).await;

    accounted(&pg, &client, &mut sites, &hook).await?;
    epochs.check()?;
    Ok(())
}
