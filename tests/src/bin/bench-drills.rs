//! Notifications per drill per channel (issue #23: one fault, one incident;
//! goal 1 raise + 1 clear). Runs every drill of the demo site, one after the
//! other, through the real binaries (simulator → agent → collector with its
//! embedded broker and the built-in rules at their default delays → two
//! webhook receivers), each declared as a drill first:
//!
//! - `oncall` takes every level and drills (the default);
//! - `managers` takes levels 1–2 and no drills (`drills = false`), so it must
//!   receive nothing at all here.
//!
//! For each drill: the scenario runs `--hold` seconds, then `normal` until
//! every alarm of the drill has cleared (at most `--settle` seconds), then
//! the drill is ended. Printed per drill: alarms recorded, incidents, and
//! the raises and clears each channel received.
//!
//!   cargo build --workspace --bins
//!   cd /tmp && /work/main/target/debug/bench-drills [--hold 200] [--settle 120] [--only smoke,gas_leak]

use anyhow::{ensure, Context, Result};
use roomguard_e2e::*;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

const SCENARIOS: [&str; 13] = [
    "ac_failure",
    "thermal_runaway",
    "mains_failure",
    "smoke",
    "phase_unbalance",
    "gas_leak",
    "co_rise",
    "earth_leakage",
    "insulation_fault",
    "door_open",
    "ventilation_failure",
    "ats_transfer",
    "battery_test",
];

/// The room the demo terminal declares each drill in (scripts/demo.sh).
fn room_of(scenario: &str) -> &'static str {
    match scenario {
        "ac_failure" | "smoke" => "machine-room",
        "thermal_runaway"
        | "co_rise"
        | "insulation_fault"
        | "door_open"
        | "ventilation_failure" => "battery-room",
        "mains_failure" => "",
        _ => "distribution-room",
    }
}

fn only() -> Option<Vec<String>> {
    let args: Vec<String> = std::env::args().collect();
    let i = args.iter().position(|a| a == "--only")?;
    Some(args.get(i + 1)?.split(',').map(str::to_owned).collect())
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<()> {
    let hold = Duration::from_secs(arg("--hold", 200));
    let settle = Duration::from_secs(arg("--settle", 120));
    let dir = tempfile::tempdir_in(std::env::current_dir()?)?;
    let oncall = Receiver::start().await?;
    let managers = Receiver::start().await?;
    let extra = format!(
        "[alarms]\n[[alarms.channels]]\nid = \"oncall\"\nkind = \"webhook\"\nurl = {:?}\n\
         [[alarms.channels]]\nid = \"managers\"\nkind = \"webhook\"\nurl = {:?}\nlevels = [1, 2]\ndrills = false\n",
        oncall.url, managers.url
    );
    let (_collector, http, mqtt) = start_collector_with(dir.path(), None, &extra)?;
    let (_sim, sim) = start_simulator(dir.path(), &[])?;
    let agent_conf = demo_agent_config(&sim, &mqtt, &dir.path().join("agent-state"))?;
    let _agent = start_agent(dir.path(), &agent_conf)?;
    let client = http_client();
    eventually(Duration::from_secs(60), "readings", || async {
        latest_point(&client, &http, "br-bms-1.soc").await
    })
    .await?;
    // Startup alarms (sensors settling) are not any drill's.
    tokio::time::sleep(Duration::from_secs(10)).await;

    let scenarios: Vec<String> = only().unwrap_or_else(|| SCENARIOS.map(str::to_owned).to_vec());
    println!(
        "{:<20} {:>6} {:>9} {:>14} {:>14} {:>9}  told (oncall)",
        "drill", "alarms", "incidents", "oncall raise", "oncall clear", "managers"
    );
    let mut worst_raises = 0;
    let mut managers_total = 0;
    for scenario in &scenarios {
        let r = client
            .post(format!("{http}/api/v1/drills"))
            .json(
                &json!({"site": "demo-site", "room": room_of(scenario), "scenario": scenario,
                          "ended_at": "now+2h", "note": "bench-drills"}),
            )
            .send()
            .await?;
        ensure!(
            r.status().as_u16() == 201,
            "declare {scenario}: {}",
            r.status()
        );
        let id = r.json::<Value>().await?["id"]
            .as_i64()
            .context("drill id")?;
        drill(&client, &sim.control, scenario).await?;
        tokio::time::sleep(hold).await;
        drill(&client, &sim.control, "normal").await?;
        let of_drill = || async {
            get_json(
                &client,
                &format!("{http}/api/v1/alarms?state=all&drill=true&limit=1000"),
            )
            .await
            .and_then(|v| v["alarms"].as_array().cloned())
            .unwrap_or_default()
            .into_iter()
            .filter(|a| a["drill"] == json!(id))
            .collect::<Vec<Value>>()
        };
        let start = Instant::now();
        while start.elapsed() < settle {
            if of_drill().await.iter().all(|a| !a["cleared_at"].is_null()) {
                break;
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        // The outbox delivers within moments; give it a few.
        tokio::time::sleep(Duration::from_secs(5)).await;
        let r = client
            .post(format!("{http}/api/v1/drills/{id}/end"))
            .send()
            .await?;
        ensure!(r.status().is_success(), "end drill {id}: {}", r.status());
        let alarms = of_drill().await;
        let still = alarms.iter().filter(|a| a["cleared_at"].is_null()).count();
        let incidents: BTreeSet<u64> = alarms
            .iter()
            .filter_map(|a| a["incident"].as_u64())
            .collect();
        let kinds = |rx: &Receiver, kind: &str| {
            rx.received()
                .iter()
                .filter(|r| r.body["drill"] == json!(id) && r.body["kind"] == kind)
                .count()
        };
        let told: Vec<String> = oncall
            .received()
            .iter()
            .filter(|r| r.body["drill"] == json!(id) && r.body["kind"] == "raise")
            .map(|r| {
                format!(
                    "{} L{}",
                    r.body["rule"].as_str().unwrap_or("?"),
                    r.body["level"]
                )
            })
            .collect();
        let managers_got = managers
            .received()
            .iter()
            .filter(|r| r.body["drill"] == json!(id))
            .count();
        worst_raises = worst_raises.max(kinds(&oncall, "raise"));
        managers_total += managers_got;
        println!(
            "{:<20} {:>6} {:>9} {:>14} {:>14} {:>9}  {}{}",
            scenario,
            alarms.len(),
            incidents.len(),
            kinds(&oncall, "raise"),
            kinds(&oncall, "clear"),
            managers_got,
            told.join(", "),
            if still > 0 {
                format!("  ({still} still active after --settle)")
            } else {
                String::new()
            }
        );
    }
    println!("managers (drills = false) received {managers_total} notifications of these drills");
    println!("most raises told for one drill: {worst_raises}");
    Ok(())
}
