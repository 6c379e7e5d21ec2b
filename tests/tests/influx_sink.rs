//! The InfluxDB sink against a real VictoriaMetrics (which takes InfluxDB's
//! `/api/v2/write` line protocol): what the collector stores is what
//! VictoriaMetrics holds, with the catalogue's tags, and readings taken while
//! it was down arrive once it is back.

use anyhow::{Context, Result};
use roomguard_e2e::*;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

const POINT: &str = "br-h2-1.h2";

/// The stored good samples of `POINT`: time → value.
fn stored(db: &Path) -> Result<BTreeMap<i64, f64>> {
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    let mut stmt = conn.prepare(
        "SELECT s.ts, s.value FROM samples s JOIN points p ON p.id = s.point_id
         WHERE p.point = ?1 AND s.value IS NOT NULL AND s.bad IS NULL",
    )?;
    let rows = stmt.query_map([POINT], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

#[tokio::test(flavor = "multi_thread")]
async fn stored_readings_reach_victoriametrics_with_their_tags_even_across_its_outage() -> Result<()>
{
    let dir = tempfile::tempdir()?;
    let Some(mut vm) = VictoriaMetrics::start(dir.path())? else {
        return Ok(());
    };
    let token = dir.path().join("influx-token");
    std::fs::write(&token, "test-token\n")?;
    let influx = format!(
        "[influx]\nurl = {:?}\norg = \"roomguard\"\nbucket = \"roomguard\"\ntoken = {{ file = {:?} }}\nflush_interval = \"200ms\"\n",
        vm.url(),
        token.display().to_string()
    );
    let (_sim, sim) = start_simulator(dir.path(), &[])?;
    let (_collector, http, mqtt) = start_collector_with(dir.path(), None, &influx)?;
    let _agent = start_agent(
        dir.path(),
        &demo_agent_config(&sim, &mqtt, &dir.path().join("agent-state"))?,
    )?;
    let client = http_client();
    let db = dir.path().join("store.db");
    let selector = format!("roomguard_value{{point=\"{POINT}\"}}");

    // Readings arrive, with the tags the catalogue knows.
    let series = eventually(
        Duration::from_secs(60),
        "hydrogen readings in VictoriaMetrics",
        || async {
            let s = vm.export(&client, &selector).await.ok()?;
            (s.first()?.1.len() >= 3).then_some(s)
        },
    )
    .await?;
    let labels = &series[0].0;
    assert_eq!(labels["site"], "demo-site", "{labels}");
    assert_eq!(labels["room"], "battery-room", "{labels}");
    assert_eq!(labels["quantity"], "h2_lfl", "{labels}");
    assert_eq!(labels["unit"], "%LFL", "{labels}");
    assert_eq!(labels["device"], "br-h2-1", "{labels}");

    // VictoriaMetrics goes away for a while; the collector keeps storing.
    vm.stop()?;
    let outage_from = stored(&db)?
        .keys()
        .last()
        .copied()
        .context("nothing stored")?;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let errors = metric(&client, &http, "roomguard_influx_errors_total").await;
    assert!(errors > 0, "the sink did not notice the outage");
    vm.restart()?;

    // Everything stored up to a moment after the outage is in VictoriaMetrics, value for value.
    let cutoff = stored(&db)?
        .keys()
        .last()
        .copied()
        .context("nothing stored")?;
    let (want, have) = eventually(
        Duration::from_secs(60),
        "VictoriaMetrics to catch up",
        || async {
            let want: BTreeMap<i64, f64> = stored(&db)
                .ok()?
                .into_iter()
                .filter(|(t, _)| *t <= cutoff)
                .collect();
            let s = vm.export(&client, &selector).await.ok()?;
            let have: BTreeMap<i64, f64> = s
                .first()?
                .1
                .iter()
                .copied()
                .filter(|(t, _)| *t <= cutoff)
                .collect();
            (want.keys().eq(have.keys())).then_some((want, have))
        },
    )
    .await?;
    for (t, v) in &want {
        assert!(
            (have[t] - v).abs() < 1e-9,
            "{t}: stored {v}, VictoriaMetrics {}",
            have[t]
        );
    }
    let during = want.keys().filter(|t| **t > outage_from).count();
    assert!(
        during > 0,
        "no readings were taken during the outage, so nothing was tested"
    );
    println!(
        "{} readings of {POINT} compared, {during} of them taken while VictoriaMetrics was down; sink errors retried: {}",
        want.len(),
        metric(&client, &http, "roomguard_influx_errors_total").await
    );
    assert_eq!(
        metric(&client, &http, "roomguard_influx_lines_dropped_total").await,
        0
    );
    Ok(())
}
