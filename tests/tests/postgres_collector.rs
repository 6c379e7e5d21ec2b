//! The collector running on PostgreSQL (`store.backend = "postgres"`), with a
//! real PostgreSQL, simulator and agent: readings stored and served from
//! PostgreSQL, users and sessions kept there; PostgreSQL killed mid-ingest
//! and restarted loses nothing and stores nothing twice (the ledger of the
//! delivery tests); PostgreSQL down at start is waited for with `/healthz`
//! saying why; a password PostgreSQL refuses stops the start naming the
//! setting.

use anyhow::{Context, Result};
use roomguard_e2e::ledger::{account, drained, Ledger, PgStored};
use roomguard_e2e::*;
use serde_json::Value;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// The `[store]` body for `db` on `pg`, with the password in a file.
fn store_toml(dir: &Path, pg: &Postgres, db: &str, password: &str) -> Result<String> {
    let file = dir.join("pg-password");
    std::fs::write(&file, password)?;
    Ok(format!(
        "backend = \"postgres\"\nurl = {:?}\npassword = {{ file = {:?} }}\n\
         [alarms]\nenabled = false\n[inspection]\nenabled = false\n",
        pg.url(db),
        file.display().to_string()
    ))
}

/// A collector on PostgreSQL with its embedded broker, not waited for.
fn spawn_collector(dir: &Path, store: &str) -> Result<Proc> {
    let conf = write_collector_config_with_store(dir, store, None, "", "127.0.0.1:0")?;
    let mut cmd = Command::new(workspace_bin("roomguard-collector"));
    cmd.arg("run").arg(&conf);
    Proc::spawn("collector", cmd, dir)
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
    let store = store_toml(dir.path(), &pg, "site", Postgres::PASSWORD)?;
    let mut collector = spawn_collector(dir.path(), &store)?;
    let ready = collector.wait_ready(Duration::from_secs(30))?;
    let http = format!("http://{}", ready["http"].as_str().context("http")?);
    let mqtt = format!("mqtt://{}", ready["mqtt"].as_str().context("mqtt")?);
    let conf = demo_agent_config(&sim, &mqtt, &dir.path().join("agent-state"))?;
    let mut ledger = Ledger::default();
    let mut agent = start_agent(dir.path(), &conf)?;
    let agent_ready = agent.wait_ready(Duration::from_secs(30))?;
    ledger.started(&agent_ready)?;
    let agent_http = format!(
        "http://{}",
        agent_ready["metrics"].as_str().context("agent metrics")?
    );
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
    let wrong = store_toml(dir.path(), &pg, "site", "not-the-password")?;
    let mut refused = spawn_collector(dir.path(), &wrong)?;
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
    let store = store_toml(dir.path(), &pg, "site", Postgres::PASSWORD)?;
    let mut collector = spawn_collector(dir.path(), &store)?;
    let ready = collector.wait_ready(Duration::from_secs(30))?;
    let http = format!("http://{}", ready["http"].as_str().context("http")?);
    let client = http_client();
    let (code, body) = eventually(Duration::from_secs(30), "health to say why", || async {
        let (code, body) = health(&client, &http).await.ok()?;
        (code == 503).then_some((code, body))
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
    let mqtt = format!("mqtt://{}", ready["mqtt"].as_str().context("mqtt")?);
    let conf = demo_agent_config(&sim, &mqtt, &dir.path().join("agent-state"))?;
    let _agent = start_agent(dir.path(), &conf)?;
    eventually(Duration::from_secs(60), "readings stored", || async {
        latest_point(&client, &http, "br-h2-1.h2").await
    })
    .await?;
    collector.terminate(Duration::from_secs(30))?;
    Ok(())
}
