//! The collector running on PostgreSQL (`store.backend = "postgres"`), with a
//! real PostgreSQL, simulator and agent: readings stored and served from
//! PostgreSQL, users and sessions kept there; PostgreSQL killed mid-ingest
//! and restarted loses nothing and stores nothing twice (the ledger of the
//! delivery tests), and so does the collector killed mid-ingest; a SQLite
//! store moved over by `migrate`; PostgreSQL down at start is waited for with `/healthz`
//! saying why; a password PostgreSQL refuses stops the start naming the
//! setting.

use anyhow::{Context, Result};
use roomguard_e2e::ledger::{account, agent_metrics_url, drained, start_run, Ledger, PgStored};
use roomguard_e2e::*;
use serde_json::Value;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// A collector on `store` (a `[store]` body), on `broker` or its embedded
/// one; not waited for.
fn spawn_on(dir: &Path, store: &str, broker: Option<&str>) -> Result<Proc> {
    let conf = write_collector_config_with_store(dir, store, broker, "", "127.0.0.1:0")?;
    spawn_collector(dir, &conf)
}

async fn health(client: &reqwest::Client, http: &str) -> Result<(u16, Value)> {
    let resp = client.get(format!("{http}/healthz")).send().await?;
    Ok((resp.status().as_u16(), resp.json().await?))
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_killed_mid_ingest_and_restarted_every_batch_is_stored_once() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let Some(mut pg) = Postgres::start()? else {
        return Ok(());
    };
    pg.psql("postgres", "CREATE DATABASE site")?;
    let (_sim, sim) = start_simulator(dir.path(), &[])?;
    let store = pg_store_toml(dir.path(), &pg, "site", Postgres::PASSWORD)?;
    let mut collector = spawn_on(dir.path(), &store, None)?;
    let ready = collector.wait_ready(Duration::from_secs(30))?;
    let (http, mqtt) = collector_urls(&ready)?;
    let conf = demo_agent_config(&sim, &mqtt, &dir.path().join("agent-state"))?;
    let mut ledger = Ledger::default();
    let (mut agent, agent_ready) = start_run(dir.path(), &conf, &mut ledger)?;
    let agent_http = agent_metrics_url(&agent_ready)?;
    let client = http_client();

    // Served from PostgreSQL: the latest readings and a point's history.
    let latest = eventually(Duration::from_secs(60), "readings flowing", || async {
        latest_point(&client, &http, "br-h2-1.h2").await
    })
    .await?;
    assert_eq!(latest["quality"], "good", "{latest}");
    let history = eventually(Duration::from_secs(30), "a history", || async {
        let h = get_json(
            &client,
            &format!("{http}/api/v1/history?point=br-h2-1.h2&step=raw"),
        )
        .await?;
        (h["series"][0]["values"].as_array()?.len() >= 2).then_some(h)
    })
    .await?;
    assert_eq!(history["tier"], "raw", "{history}");
    let rows: i64 = pg
        .psql(
            "site",
            "SELECT count(*) FROM points WHERE point = 'br-h2-1.h2'",
        )?
        .parse()?;
    assert_eq!(rows, 1, "the point is in PostgreSQL's catalogue");

    // Users and sessions live in PostgreSQL: the first admin logs in.
    let anon = anonymous_client();
    let login = anon
        .post(format!("{http}/api/v1/login"))
        .json(&serde_json::json!({"user": "admin", "password": "admin-test-password"}))
        .send()
        .await?;
    assert_eq!(login.status(), 200, "{}", login.text().await?);
    assert_eq!(pg.psql("site", "SELECT count(*) FROM sessions")?, "1");
    assert_eq!(
        pg.psql(
            "site",
            "SELECT count(*) FROM audit_log WHERE action = 'login'"
        )?,
        "1"
    );

    // PostgreSQL killed mid-stream: health says why, nothing is acknowledged
    // meanwhile; restarted, everything waiting is stored.
    tokio::time::sleep(Duration::from_secs(2)).await;
    pg.kill();
    let down = eventually(Duration::from_secs(30), "health to say why", || async {
        let (code, body) = health(&client, &http).await.ok()?;
        (code == 503).then_some(body)
    })
    .await?;
    let why = down["reasons"].to_string();
    assert!(why.contains("PostgreSQL"), "{why}");
    println!("while PostgreSQL was down: {why}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    pg.restart()?;
    eventually(Duration::from_secs(60), "health again", || async {
        let (code, _) = health(&client, &http).await.ok()?;
        (code == 200).then_some(())
    })
    .await?;
    newer_reading(&client, &http, "br-h2-1.h2").await?;

    drained(&client, &agent_http).await?;
    ledger.stopped(&agent.terminate(Duration::from_secs(30))?)?;
    let stored = PgStored(&pg, "site");
    let out = account("PostgreSQL killed", &stored, &ledger, 0..=0, 0).await?;
    assert!(out.missing.is_empty());
    let dups: u64 = metric(&client, &http, "roomguard_batches_duplicate_total").await;
    println!("duplicate batches skipped by the register: {dups}");
    collector.terminate(Duration::from_secs(30))?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_down_at_start_is_waited_for_and_a_refused_password_stops_the_start() -> Result<()>
{
    let dir = tempfile::tempdir()?;
    let Some(mut pg) = Postgres::start()? else {
        return Ok(());
    };
    pg.psql("postgres", "CREATE DATABASE site")?;

    // A password PostgreSQL refuses: no waiting, one error naming the setting.
    let wrong = pg_store_toml(dir.path(), &pg, "site", "not-the-password")?;
    let mut refused = spawn_on(dir.path(), &wrong, None)?;
    let code = refused.wait_exit(Duration::from_secs(30))?;
    assert_ne!(code, Some(0));
    drop(refused);
    let said = std::fs::read_to_string(dir.path().join("collector.stderr.log"))?;
    assert!(
        said.contains("store.password: PostgreSQL refused user"),
        "{said}"
    );

    // Down at start: the collector serves, says why, and stores once it is up.
    pg.kill();
    let store = pg_store_toml(dir.path(), &pg, "site", Postgres::PASSWORD)?;
    let mut collector = spawn_on(dir.path(), &store, None)?;
    let ready = collector.wait_ready(Duration::from_secs(30))?;
    let (http, mqtt) = collector_urls(&ready)?;
    let client = http_client();
    // (In its first moments it may also be degraded for another reason: its
    // own broker connection comes up a few ms after it serves.)
    let (code, body) = eventually(Duration::from_secs(30), "health to say why", || async {
        let (code, body) = health(&client, &http).await.ok()?;
        let why = body["reasons"]
            .to_string()
            .contains("cannot reach PostgreSQL");
        (code == 503 && why).then_some((code, body))
    })
    .await?;
    assert_eq!(code, 503);
    assert!(
        body["reasons"]
            .to_string()
            .contains("cannot reach PostgreSQL"),
        "{body}"
    );
    let latest = client.get(format!("{http}/api/v1/latest")).send().await?;
    assert_eq!(latest.status(), 503, "reads say the store is unavailable");

    pg.restart()?;
    eventually(
        Duration::from_secs(60),
        "health once PostgreSQL is up",
        || async {
            let (code, _) = health(&client, &http).await.ok()?;
            (code == 200).then_some(())
        },
    )
    .await?;
    // The schema was applied when it came; the first admin is made then.
    eventually(Duration::from_secs(60), "the first admin", || async {
        (pg.psql("site", "SELECT count(*) FROM users").ok()? == "1").then_some(())
    })
    .await?;
    let (_sim, sim) = start_simulator(dir.path(), &[])?;
    let conf = demo_agent_config(&sim, &mqtt, &dir.path().join("agent-state"))?;
    let _agent = start_agent(dir.path(), &conf)?;
    eventually(Duration::from_secs(60), "readings stored", || async {
        latest_point(&client, &http, "br-h2-1.h2").await
    })
    .await?;
    collector.terminate(Duration::from_secs(30))?;

    // `backup` points to PostgreSQL's own tools instead of copying.
    let out = Command::new(workspace_bin("roomguard-collector"))
        .arg("backup")
        .arg(dir.path().join("collector.toml"))
        .arg(dir.path().join("copy.db"))
        .output()?;
    assert_eq!(out.status.code(), Some(2));
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("pg_dump") && said.contains("pg_basebackup"),
        "{said}"
    );
    assert!(!dir.path().join("copy.db").exists());
    Ok(())
}

/// Runs `roomguard-collector migrate` to its end; its `migrated` line.
fn migrate(dir: &Path, conf: &Path, url: &str, password: &Path, chunk: &str) -> Result<Value> {
    let out = Command::new(workspace_bin("roomguard-collector"))
        .arg("migrate")
        .arg(conf)
        .args(["--to", url, "--chunk-rows", chunk])
        .arg("--password-file")
        .arg(password)
        .current_dir(dir)
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "migrate failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .unwrap_or("")
        .to_owned();
    Ok(serde_json::from_str(&line)?)
}

/// Rows of `table` in the migrate line.
fn rows_of(line: &Value, table: &str, field: &str) -> i64 {
    line["tables"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|t| t["table"] == table)
        .and_then(|t| t[field].as_i64())
        .unwrap_or(-1)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_demo_store_moved_to_postgres_keeps_its_history_even_when_the_copy_is_interrupted(
) -> Result<()> {
    use roomguard_collector::store::history::{plan, PointFilter, Series};
    use roomguard_collector::store::postgres::{self, reader::PgReader};
    use roomguard_collector::store::retention::Policy;
    use roomguard_collector::store::sqlite::SqliteReader;
    let dir = tempfile::tempdir()?;
    let Some(pg) = Postgres::start()? else {
        return Ok(());
    };
    pg.psql("postgres", "CREATE DATABASE moved")?;
    // A store made by the demo's agent over some seconds, with its alarm
    // and inspection tables and the first admin.
    let (_sim, sim) = start_simulator(dir.path(), &[])?;
    let (mut collector, http, mqtt) = start_collector(dir.path(), None)?;
    let conf = demo_agent_config(&sim, &mqtt, &dir.path().join("agent-state"))?;
    let mut agent = start_agent(dir.path(), &conf)?;
    let client = http_client();
    eventually(Duration::from_secs(60), "readings flowing", || async {
        latest_point(&client, &http, "br-h2-1.h2").await
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(12)).await;
    agent.terminate(Duration::from_secs(30))?;
    collector.terminate(Duration::from_secs(30))?;
    let store = dir.path().join("store.db");
    let collector_conf = dir.path().join("collector.toml");
    let password = dir.path().join("pg-password");
    std::fs::write(&password, Postgres::PASSWORD)?;
    let url = pg.url("moved");

    // Interrupted: killed once it is into the samples.
    let log = dir.path().join("migrate.stderr.log");
    let mut first = Command::new(workspace_bin("roomguard-collector"))
        .arg("migrate")
        .arg(&collector_conf)
        .args(["--to", &url, "--chunk-rows", "1"])
        .arg("--password-file")
        .arg(&password)
        .stderr(std::fs::File::create(&log)?)
        .stdout(std::process::Stdio::null())
        .spawn()?;
    // Watched closely: with one row per transaction the copy of the samples
    // takes far longer than this loop needs to notice it began.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !std::fs::read_to_string(&log)?.contains("migrate: samples") {
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "the copy never reached the samples"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    first.kill()?;
    first.wait()?;
    let partial: i64 = pg.psql("moved", "SELECT count(*) FROM samples")?.parse()?;

    // Resumed: goes on from the last committed chunk, counts verified.
    let line = migrate(dir.path(), &collector_conf, &url, &password, "500")?;
    let total = rows_of(&line, "samples", "rows");
    let now_copied = rows_of(&line, "samples", "copied_now");
    println!("samples {total}: {partial} before the kill, {now_copied} after");
    assert!(
        partial > 0 && now_copied > 0,
        "killed in the middle of the samples, then resumed: {line}"
    );
    assert_eq!(partial + now_copied, total, "no sample copied twice");
    let sqlite = rusqlite::Connection::open(&store)?;
    for table in [
        "points",
        "samples",
        "batches",
        "rollup_1m",
        "agents",
        "users",
        "audit_log",
        "alarm_state",
    ] {
        let here: i64 =
            sqlite.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))?;
        let there: i64 = pg
            .psql("moved", &format!("SELECT count(*) FROM {table}"))?
            .parse()?;
        assert_eq!(here, there, "{table}");
        assert_eq!(
            rows_of(&line, table, "rows"),
            here,
            "{table} in the migrate line"
        );
    }
    assert!(total > 100, "a store worth moving: {total} samples");
    // Run again: nothing left to copy.
    let again = migrate(dir.path(), &collector_conf, &url, &password, "500")?;
    assert_eq!(rows_of(&again, "samples", "copied_now"), 0, "{again}");

    // The same histories from both.
    let sr = SqliteReader::open(&store)?;
    let cfg = postgres::settings(&url, Some(Postgres::PASSWORD))?;
    let pr = PgReader::new(postgres::connect(&cfg).await?);
    let points = sr.points(&PointFilter::default())?;
    assert_eq!(
        points.len(),
        pr.points(&PointFilter::default()).await?.len()
    );
    let now = roomguard_protocol::clock::now_ms();
    let policy = Policy::default();
    for p in points.iter().step_by(points.len() / 5 + 1) {
        for step in [Some(None), Some(Some(60_000))] {
            let plan = plan(now - 3_600_000, now, step, 1, now, &policy)
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            let here = sr.history(p.id, &plan)?;
            if let Series::Raw(v) = &here {
                assert!(!v.is_empty(), "{}: nothing to compare", p.point);
            }
            assert_eq!(here, pr.history(p.id, &plan).await?, "{} {step:?}", p.point);
        }
    }
    // The moved site's history is served by a collector on PostgreSQL.
    let moved = dir.path().join("on-pg");
    std::fs::create_dir_all(&moved)?;
    let store_conf = pg_store_toml(&moved, &pg, "moved", Postgres::PASSWORD)?;
    let mut on_pg = spawn_on(&moved, &store_conf, None)?;
    let ready = on_pg.wait_ready(Duration::from_secs(30))?;
    let (http, _) = collector_urls(&ready)?;
    let h = get_json(
        &client,
        &format!("{http}/api/v1/history?point=br-h2-1.h2&step=raw&from=now-1h"),
    )
    .await
    .context("history from the moved store")?;
    assert!(
        h["series"][0]["values"]
            .as_array()
            .is_some_and(|v| !v.is_empty()),
        "{h}"
    );
    on_pg.terminate(Duration::from_secs(30))?;
    Ok(())
}

/// [`spawn_on`] `broker`, ready; its HTTP base URL.
fn start_on(dir: &Path, store: &str, broker: &str) -> Result<(Proc, String)> {
    let mut collector = spawn_on(dir, store, Some(broker))?;
    let (http, _) = collector_urls(&collector.wait_ready(Duration::from_secs(30))?)?;
    Ok((collector, http))
}

#[tokio::test(flavor = "multi_thread")]
async fn the_collector_killed_mid_ingest_on_postgres_loses_and_repeats_nothing() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let Some(pg) = Postgres::start()? else {
        return Ok(());
    };
    let Some(broker) = Mosquitto::start(dir.path())? else {
        return Ok(());
    };
    pg.psql("postgres", "CREATE DATABASE site")?;
    let store = pg_store_toml(dir.path(), &pg, "site", Postgres::PASSWORD)?;
    let (_sim, sim) = start_simulator(dir.path(), &[])?;
    let (mut collector, http) = start_on(dir.path(), &store, &broker.url())?;
    let conf = demo_agent_config(&sim, &broker.url(), &dir.path().join("agent-state"))?;
    let mut ledger = Ledger::default();
    let (mut agent, agent_ready) = start_run(dir.path(), &conf, &mut ledger)?;
    let agent_http = agent_metrics_url(&agent_ready)?;
    let client = http_client();
    eventually(Duration::from_secs(60), "readings flowing", || async {
        latest_point(&client, &http, "br-h2-1.h2").await
    })
    .await?;
    // SIGKILL mid-stream: whatever it had received and not committed was
    // never acknowledged, so the broker hands it to the next start; whatever
    // it committed and did not confirm, the agent sends again and the batch
    // register skips.
    tokio::time::sleep(Duration::from_secs(2)).await;
    collector.kill();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (mut collector, http) = start_on(dir.path(), &store, &broker.url())?;
    newer_reading(&client, &http, "br-h2-1.h2").await?;
    drained(&client, &agent_http).await?;
    ledger.stopped(&agent.terminate(Duration::from_secs(30))?)?;
    let dups = metric(&client, &http, "roomguard_batches_duplicate_total").await;
    let out = account(
        "collector killed, PostgreSQL",
        &PgStored(&pg, "site"),
        &ledger,
        0..=0,
        dups,
    )
    .await?;
    assert!(out.missing.is_empty());
    collector.terminate(Duration::from_secs(30))?;
    Ok(())
}
