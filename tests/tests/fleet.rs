//! The simulator playing a fleet (`roomguard-sim fleet`): several small
//! sites with two real agents each in one process, drills addressed to one
//! site at a time (scheduled from the command line, or over HTTP), against
//! a real collector.

use anyhow::{ensure, Context, Result};
use roomguard_e2e::fleet::Fleet;
use roomguard_e2e::*;
use serde_json::Value;
use std::time::Duration;

const PATIENCE: Duration = Duration::from_secs(90);

/// Open and cleared alarms of `site`, as `rule` strings.
async fn rules_of(client: &reqwest::Client, http: &str, site: &str) -> Option<Vec<String>> {
    let list = get_json(
        client,
        &format!("{http}/api/v1/alarms?site={site}&state=all"),
    )
    .await?;
    Some(
        list["alarms"]
            .as_array()?
            .iter()
            .filter(|a| a["site"] == site)
            .filter_map(|a| a["rule"].as_str().map(str::to_owned))
            .collect(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn drills_scheduled_or_sent_to_one_site_raise_its_alarms_and_no_others() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    // Fire alarms clear 2 s after the smoke goes (the test need not wait
    // the production delay).
    let (_collector, http, mqtt) = start_collector_with(
        tmp.path(),
        None,
        "[alarms]\n[[alarms.overrides]]\nrule = \"fire.*\"\nclear_delay = \"2s\"\n",
    )?;
    let client = http_client();
    let mut fleet = Fleet::start_with(
        &tmp.path().join("fleet"),
        &mqtt,
        4,
        2,
        &["--drill", "site-2@1s=smoke", "--drill", "site-2@25s=normal"],
    )?;
    ensure!(fleet.sites == ["site-1", "site-2", "site-3", "site-4"]);

    // Every agent of every site reports, under its own name.
    eventually(PATIENCE, "eight agents online", || async {
        let agents = get_json(&client, &format!("{http}/api/v1/agents")).await?;
        let online = agents["agents"]
            .as_array()?
            .iter()
            .filter(|a| a["state"] == "online")
            .count();
        (online == 8).then_some(())
    })
    .await?;

    // The scheduled drill: site-2's smoke heads, nobody else's.
    eventually(PATIENCE, "site-2's smoke alarm", || async {
        let rules = rules_of(&client, &http, "site-2").await?;
        rules.iter().any(|r| r == "fire.smoke").then_some(())
    })
    .await?;
    // A drill sent over HTTP to site-3 only: its mains fail (the second
    // agent's meter).
    drill(&client, &fleet.site_control("site-3"), "mains_failure").await?;
    let listed: Value = client
        .get(format!("http://{}/sites", fleet.control))
        .send()
        .await?
        .json()
        .await?;
    let scenario = |site: &str| {
        listed
            .as_array()
            .and_then(|l| l.iter().find(|s| s["site"] == site))
            .map(|s| s["scenario"].clone())
    };
    ensure!(
        scenario("site-3") == Some("mains_failure".into()),
        "{listed}"
    );
    ensure!(scenario("site-1") == Some("normal".into()), "{listed}");
    eventually(PATIENCE, "site-3's mains alarm", || async {
        let rules = rules_of(&client, &http, "site-3").await?;
        rules
            .iter()
            .any(|r| r.starts_with("electrical."))
            .then_some(())
    })
    .await?;
    // The scheduled end of site-2's drill clears its alarms.
    eventually(PATIENCE, "site-2's drill over", || async {
        let list = get_json(
            &client,
            &format!("{http}/api/v1/alarms?site=site-2&state=active"),
        )
        .await?;
        let open = list["alarms"]
            .as_array()?
            .iter()
            .filter(|a| a["site"] == "site-2")
            .count();
        (open == 0).then_some(())
    })
    .await?;
    for quiet in ["site-1", "site-4"] {
        let rules = rules_of(&client, &http, quiet)
            .await
            .context("alarms of a quiet site")?;
        ensure!(rules.is_empty(), "{quiet} raised {rules:?} without a drill");
    }
    // An unknown site is refused by name.
    let r = client
        .post(format!(
            "http://{}/sites/site-9/scenario/smoke",
            fleet.control
        ))
        .send()
        .await?;
    ensure!(r.status() == 404, "unknown site: {}", r.status());
    let why: Value = r.json().await?;
    ensure!(
        why["error"]
            .as_str()
            .is_some_and(|e| e.contains("no site \"site-9\"")),
        "{why}"
    );

    // Every agent drains its spool and stops cleanly, saying so.
    drill(&client, &fleet.site_control("site-3"), "normal").await?;
    fleet.drain_and_stop(&client).await?;
    // Written to files, the logs carry no terminal colour codes.
    for log in ["fleet/fleet.stderr.log", "collector.stderr.log"] {
        let text = std::fs::read_to_string(tmp.path().join(log))?;
        ensure!(!text.is_empty(), "{log} is empty");
        ensure!(!text.contains('\u{1b}'), "{log} has colour codes");
    }
    Ok(())
}
