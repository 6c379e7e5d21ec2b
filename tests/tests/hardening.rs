//! Issue 19's failures that health must show: a collector whose store
//! cannot be written, an agent whose spool cannot be written, and a store
//! file damaged on disk. Disks are filled for real (a small tmpfs the test
//! mounts) and the file is damaged with real garbage.

use anyhow::{Context, Result};
use roomguard_e2e::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const PATIENCE: Duration = Duration::from_secs(60);

/// A small filesystem of its own (tmpfs), to fill up. Unmounted on drop.
struct SmallDisk {
    path: PathBuf,
}

impl SmallDisk {
    /// Mounts `megabytes` of tmpfs at `path`; `None` (loudly) where this
    /// user may not mount, outside CI.
    fn mount(path: &Path, megabytes: u32) -> Result<Option<SmallDisk>> {
        std::fs::create_dir_all(path)?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={megabytes}m"), "tmpfs"])
            .arg(path)
            .output()?;
        if !out.status.success() {
            let why = String::from_utf8_lossy(&out.stderr).into_owned();
            anyhow::ensure!(!in_ci(), "cannot mount a tmpfs to fill: {why}");
            eprintln!("SKIPPED: cannot mount a tmpfs to fill (needs root): {why}");
            return Ok(None);
        }
        Ok(Some(SmallDisk {
            path: path.to_owned(),
        }))
    }

    /// Writes a file until the disk is full.
    fn fill(&self) -> Result<()> {
        use std::io::Write;
        let mut f = std::fs::File::create(self.path.join("filler"))?;
        let block = vec![0x5a_u8; 64 * 1024];
        loop {
            match f.write_all(&block) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(28) => break, // ENOSPC
                Err(e) => return Err(e.into()),
            }
        }
        let _ = f.sync_all();
        Ok(())
    }

    fn free(&self) -> Result<()> {
        Ok(std::fs::remove_file(self.path.join("filler"))?)
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        // Lazy: processes still holding files there do not keep it mounted.
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

/// A collector (embedded broker) whose store is `store`; its config and
/// logs in `dir`.
fn start_collector_on(dir: &Path, store: &Path) -> Result<(Proc, String, String)> {
    let conf = write_collector_config(dir, store, None, "", "127.0.0.1:0")?;
    let mut collector = spawn_collector(dir, &conf)?;
    let (http, mqtt) = collector_urls(&collector.wait_ready(Duration::from_secs(20))?)?;
    Ok((collector, http, mqtt))
}

async fn healthz(client: &reqwest::Client, url: &str) -> Option<(u16, Value)> {
    let res = client.get(url).send().await.ok()?;
    let code = res.status().as_u16();
    let body = res.text().await.ok()?;
    Some((
        code,
        serde_json::from_str(&body).unwrap_or(Value::String(body)),
    ))
}

/// The store's disk fills up: writes fail (and are not acknowledged, so
/// nothing is lost), `/healthz` turns degraded with the reason within
/// seconds, the failure is a gauge to alert on; once there is room again,
/// health comes back and readings flow.
#[tokio::test(flavor = "multi_thread")]
async fn a_full_store_disk_turns_health_degraded_with_the_reason_and_back_when_freed() -> Result<()>
{
    let dir = tempfile::tempdir()?;
    let Some(disk) = SmallDisk::mount(&dir.path().join("disk"), 24)? else {
        return Ok(());
    };
    let (_sim, sim) = start_simulator(dir.path(), &[])?;
    // Only the store on the small disk: its logs and config stay beside it.
    let (_collector, http, mqtt) = start_collector_on(dir.path(), &disk.path.join("store.db"))?;
    let _agent = start_agent(
        dir.path(),
        &demo_agent_config(&sim, &mqtt, &dir.path().join("agent-state"))?,
    )?;
    let client = http_client();
    eventually(PATIENCE, "readings flowing", || async {
        latest_point(&client, &http, "br-h2-1.h2").await.map(|_| ())
    })
    .await?;
    let url = format!("{http}/healthz");
    let (code, h) = healthz(&client, &url).await.context("healthz")?;
    assert_eq!((code, h["status"].as_str()), (200, Some("ok")), "{h}");
    assert_eq!(h["integrity"]["status"], "ok", "checked at open: {h}");

    disk.fill()?;
    let h = eventually(PATIENCE, "health degraded by the full disk", || async {
        let (code, h) = healthz(&client, &url).await?;
        let failing = metric(&client, &http, "roomguard_store_failing_seconds").await;
        (code == 503 && failing >= 5).then_some(h)
    })
    .await?;
    let reasons = h["reasons"].to_string();
    assert!(
        reasons.contains("store writes failing"),
        "the reason names the store: {h}"
    );
    assert_eq!(metric(&client, &http, "roomguard_healthy").await, 0);

    disk.free()?;
    eventually(PATIENCE, "health back once there is room", || async {
        let (code, _) = healthz(&client, &url).await?;
        (code == 200).then_some(())
    })
    .await?;
    assert_eq!(
        metric(&client, &http, "roomguard_store_failing_seconds").await,
        0
    );
    newer_reading(&client, &http, "br-h2-1.h2").await?;
    Ok(())
}

/// The agent's spool disk fills up: its `/healthz` says so (503, with the
/// reason), the gauge counts the seconds, and its status tells the
/// collector; room again, and it is healthy again.
#[tokio::test(flavor = "multi_thread")]
async fn a_spool_that_cannot_be_written_makes_the_agent_unhealthy_visibly() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let Some(disk) = SmallDisk::mount(&dir.path().join("disk"), 2)? else {
        return Ok(());
    };
    let (_sim, sim) = start_simulator(dir.path(), &[])?;
    let (_collector, http, mqtt) = start_collector(dir.path(), None)?;
    let mut agent = start_agent(
        dir.path(),
        &demo_agent_config(&sim, &mqtt, &disk.path.join("agent-state"))?,
    )?;
    let ready = agent.wait_ready(Duration::from_secs(30))?;
    let agent_http = format!("http://{}", ready["metrics"].as_str().context("metrics")?);
    let client = http_client();
    eventually(PATIENCE, "readings flowing", || async {
        latest_point(&client, &http, "br-h2-1.h2").await.map(|_| ())
    })
    .await?;
    let url = format!("{agent_http}/healthz");
    assert_eq!(healthz(&client, &url).await.context("healthz")?.0, 200);

    disk.fill()?;
    let (_, body) = eventually(PATIENCE, "the agent unhealthy", || async {
        let (code, body) = healthz(&client, &url).await?;
        (code == 503).then_some((code, body))
    })
    .await?;
    assert!(body.to_string().contains("spool"), "{body}");
    assert!(
        metric(
            &client,
            &agent_http,
            "roomguard_agent_spool_failing_seconds"
        )
        .await
            >= 5
    );
    // The collector hears it too, on the agent's status topic.
    eventually(
        PATIENCE,
        "the spool's error in the agent's status",
        || async {
            let agents = get_json(&client, &format!("{http}/api/v1/agents")).await?;
            let text = agents.to_string();
            text.contains("write_error").then_some(())
        },
    )
    .await?;

    disk.free()?;
    eventually(PATIENCE, "the agent healthy again", || async {
        let (code, _) = healthz(&client, &url).await?;
        (code == 200).then_some(())
    })
    .await?;
    Ok(())
}

/// A store file with 64 KB of garbage in its middle is refused at start,
/// with what is wrong and how to recover, instead of starting healthy.
#[tokio::test(flavor = "multi_thread")]
async fn a_damaged_store_is_refused_at_start_with_the_recovery_steps() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("store.db");
    // A store of a few megabytes, made as the collector makes it.
    drop(roomguard_collector::store::sqlite::SqliteWriter::open(&db)?);
    {
        let conn = rusqlite::Connection::open(&db)?;
        conn.pragma_update(None, "journal_mode", "DELETE")?;
        let tx = conn.unchecked_transaction()?;
        tx.execute(
            "INSERT INTO points (site, point, agent, room, device, quantity, unit, first_seen, last_seen)
             VALUES ('s', 'p', 'a', 'r', 'd', 'temperature', '°C', 0, 0)",
            [],
        )?;
        let id = tx.last_insert_rowid();
        let mut ins = tx.prepare(
            "INSERT INTO rollup_1h (point_id, bucket, n, min, max, sum, last_ts, last) VALUES (?1, ?2, 1, 1, 1, 1, ?2, 1)",
        )?;
        for h in 0..60_000i64 {
            ins.execute(rusqlite::params![id, h * 3_600_000])?;
        }
        drop(ins);
        tx.commit()?;
    }
    // The same file unharmed starts (and says its check passed).
    let (mut collector, http, _) = start_collector(dir.path(), None)?;
    let client = http_client();
    let (_, h) = healthz(&client, &format!("{http}/healthz"))
        .await
        .context("healthz")?;
    assert_eq!(h["integrity"]["status"], "ok", "{h}");
    assert_eq!(
        metric(&client, &http, "roomguard_store_integrity_ok").await,
        1
    );
    collector.terminate(Duration::from_secs(15))?;

    let len = std::fs::metadata(&db)?.len();
    anyhow::ensure!(
        len > 1 << 20,
        "a store of {len} bytes is too small to damage its middle"
    );
    {
        use std::io::{Seek, SeekFrom, Write};
        let mut f = std::fs::OpenOptions::new().write(true).open(&db)?;
        f.seek(SeekFrom::Start(len / 2 / 4096 * 4096))?;
        let garbage: Vec<u8> = (0..64 * 1024u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        f.write_all(&garbage)?;
        f.sync_all()?;
    }
    let conf = dir.path().join("collector.toml");
    let out = Command::new(workspace_bin("roomguard-collector"))
        .arg("run")
        .arg(&conf)
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "a damaged store was opened:\n{stderr}"
    );
    assert!(stderr.contains("is damaged"), "{stderr}");
    assert!(
        stderr.contains(".recover"),
        "the way out is given: {stderr}"
    );
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("\"ready\""),
        "it said ready"
    );
    Ok(())
}

/// A request body over the API's limit is 413 Payload Too Large, not 400.
#[tokio::test(flavor = "multi_thread")]
async fn a_body_over_the_limit_is_413_not_400() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (_collector, http, _) = start_collector(dir.path(), None)?;
    let client = anonymous_client();
    let big = format!(
        "{{\"user\":\"admin\",\"password\":\"{}\"}}",
        "x".repeat(200 * 1024)
    );
    let res = client
        .post(format!("{http}/api/v1/login"))
        .header("content-type", "application/json")
        .body(big)
        .send()
        .await?;
    assert_eq!(res.status().as_u16(), 413, "{}", res.text().await?);
    // A body within the limit that is not what was asked is still a 4xx naming it.
    let res = client
        .post(format!("{http}/api/v1/login"))
        .header("content-type", "application/json")
        .body("{\"user\":1}")
        .send()
        .await?;
    let code = res.status().as_u16();
    assert!(code == 400 || code == 422, "{code}");
    Ok(())
}
