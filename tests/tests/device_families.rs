//! Drills for every device family shipped as a profile (issue 20): the
//! simulated site (with its gateway's Modbus devices and its annex SNMP
//! agents) through a real agent to the collector's built-in rules. The healthy
//! site raises nothing; each drill raises exactly its own rules on its own
//! devices, and they clear when the drill ends.
//!
//! Raise and clear delays are set to zero for every rule, so each drill takes
//! seconds, not the minutes the default delays would hold it.

use anyhow::{ensure, Result};
use roomguard_e2e::*;
use serde_json::Value;
use std::collections::BTreeSet;
use std::time::Duration;

const PATIENCE: Duration = Duration::from_secs(90);

/// Active alarms as (rule, device), devices empty for room-wide ones.
async fn active(client: &reqwest::Client, http: &str) -> Option<BTreeSet<(String, String)>> {
    let doc = get_json(client, &format!("{http}/api/v1/alarms?state=active")).await?;
    Some(
        doc["alarms"]
            .as_array()?
            .iter()
            .map(|a: &Value| {
                (
                    a["rule"].as_str().unwrap_or("").to_owned(),
                    a["device"].as_str().unwrap_or("").to_owned(),
                )
            })
            .collect(),
    )
}

fn set(items: &[(&str, &str)]) -> BTreeSet<(String, String)> {
    items
        .iter()
        .map(|(r, d)| ((*r).to_owned(), (*d).to_owned()))
        .collect()
}

on_both!(each_device_family_drill_raises_exactly_its_rules_and_clears);

async fn each_device_family_drill_raises_exactly_its_rules_and_clears(
    store: TestStore,
) -> Result<()> {
    let dir = tempfile::tempdir()?;
    // Six simulated seconds a second: the machine room warms 6 °C a minute in
    // the AC drill, under the 8.3 °C/min of a rate-of-rise heat detector.
    let (_sim, addrs) = start_simulator(dir.path(), &["--speed", "6"])?;
    let extra =
        "[alarms]\n[[alarms.overrides]]\nrule = \"*\"\ndelay = \"0s\"\nclear_delay = \"0s\"\n";
    let store_toml = store.toml(dir.path(), "families")?;
    let (_collector, http, mqtt) = start_collector_stored(dir.path(), &store_toml, None, extra)?;
    let agent_conf = demo_agent_config(&addrs, &mqtt, &dir.path().join("agent-state"))?;
    let mut agent = start_agent(dir.path(), &agent_conf)?;
    let client = http_client();
    // Every new family reads before the drills start.
    for point in [
        "mr-th-inlet-2.temperature",
        "pd-gas-1.gas",
        "pd-rcm-1.residual_current",
        "br-co-1.co",
        "br-imd-1.resistance",
        "br-di-1.door_open",
        "pd-ups-2.output_source",
        "pd-ats-1.redundancy",
        "mr-pac-1.common_alarm",
        "mr-env-inlet-1.internal.1.temperature",
        "mr-env-inlet-2.probe.1.1.temperature",
    ] {
        eventually(PATIENCE, &format!("a good reading of {point}"), || async {
            let p = latest_point(&client, &http, point).await?;
            (p["quality"] == "good").then_some(())
        })
        .await?;
    }
    // The Eaton UPS's three input phases give the derived unbalance (an
    // SNMP profile's derived point from table cells).
    let unbalance = latest_point(&client, &http, "pd-ups-2.input_voltage_unbalance")
        .await
        .ok_or_else(|| anyhow::anyhow!("no pd-ups-2.input_voltage_unbalance"))?;
    ensure!(
        unbalance["quality"] == "good" && unbalance["value"].as_f64().is_some_and(|v| v < 2.0),
        "{unbalance}"
    );
    // A healthy site raises nothing (a few seconds of data with zero delays).
    tokio::time::sleep(Duration::from_secs(5)).await;
    let quiet = active(&client, &http)
        .await
        .ok_or_else(|| anyhow::anyhow!("no alarm list from the API"))?;
    ensure!(quiet.is_empty(), "the healthy site raised {quiet:?}");

    let drills: [(&str, Vec<(&str, &str)>); 9] = [
        (
            "gas_leak",
            vec![
                ("explosion.gas_warning", "pd-gas-1"),
                ("explosion.gas_alarm", "pd-gas-1"),
            ],
        ),
        ("co_rise", vec![("explosion.co_high", "br-co-1")]),
        (
            "earth_leakage",
            vec![("electrical.residual_current", "pd-rcm-1")],
        ),
        (
            "insulation_fault",
            vec![("electrical.insulation_fault", "br-imd-1")],
        ),
        ("door_open", vec![("environment.door_open", "br-di-1")]),
        (
            "ventilation_failure",
            vec![("explosion.ventilation_failed", "br-di-1")],
        ),
        (
            "ats_transfer",
            vec![("electrical.ats_redundancy_lost", "pd-ats-1")],
        ),
        // Both UPSes (UPS-MIB and Eaton XUPS-MIB) on battery, each with its
        // alarm count up; mains is present, so no mains failure.
        (
            "battery_test",
            vec![
                ("electrical.ups_on_battery", "ups-1"),
                ("electrical.ups_on_battery", "pd-ups-2"),
                ("electrical.ups_alarm", "ups-1"),
                ("electrical.ups_alarm", "pd-ups-2"),
            ],
        ),
        // The precision AC's common alarm at once, then every cold-aisle
        // probe (the Modbus FC03 transmitter, Geist, APC, the original) as
        // the room warms past 27 °C.
        (
            "ac_failure",
            vec![
                ("environment.ac_fault", "mr-pac-1"),
                ("environment.inlet_temp_high", "mr-th-inlet"),
                ("environment.inlet_temp_high", "mr-th-inlet-2"),
                ("environment.inlet_temp_high", "mr-env-inlet-1"),
                ("environment.inlet_temp_high", "mr-env-inlet-2"),
            ],
        ),
    ];
    for (scenario, expected) in drills {
        let expected = set(&expected);
        drill(&client, &addrs.control, scenario).await?;
        let got = eventually(PATIENCE, &format!("{scenario}: {expected:?}"), || async {
            let now = active(&client, &http).await?;
            expected.is_subset(&now).then_some(now)
        })
        .await?;
        ensure!(
            got == expected,
            "{scenario} raised more than its rules: {:?}",
            got.difference(&expected).collect::<Vec<_>>()
        );
        let r = client
            .post(format!("http://{}/scenario/normal", addrs.control))
            .send()
            .await?;
        ensure!(r.status().is_success(), "normal: {}", r.status());
        eventually(PATIENCE, &format!("{scenario} cleared"), || async {
            active(&client, &http).await?.is_empty().then_some(())
        })
        .await?;
    }
    ensure!(agent.is_running(), "{}", agent.log_tail());
    Ok(())
}
