//! SNMP traps and informs (issue 20) with net-snmp's own `snmptrap` and
//! `snmpinform` against a real agent process, a real `snmpd` (the UPS the
//! agent polls when a trap arrives) and a real collector.

use anyhow::{Context, Result};
use roomguard_e2e::*;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// Long enough for a loaded CI machine; a pass is usually a second or two.
const PATIENCE: Duration = Duration::from_secs(30);

/// A UPS on mains (upsOutputSource normal(3)), answering v2c and v3.
const SNMPD_CONF: &str = r#"
engineID     roomguard-trap-test
rocommunity  public 127.0.0.1
createUser   rgv3 SHA "authpass123" AES "privpass123"
rouser       rgv3 priv
override .1.3.6.1.2.1.33.1.4.1.0 integer 3
override .1.3.6.1.2.1.33.1.2.1.0 integer 2
"#;

/// snmptrap's arguments for a v3 authPriv trap from the user snmpd knows,
/// with `auth` as its password.
fn v3_trap<'a>(auth: &'a str, to: &'a str, oid: &'a str) -> Vec<&'a str> {
    vec![
        "-v",
        "3",
        "-e",
        "0x8000000001020304",
        "-u",
        "rgv3",
        "-l",
        "authPriv",
        "-a",
        "SHA",
        "-A",
        auth,
        "-x",
        "AES",
        "-X",
        "privpass123",
        to,
        "",
        oid,
    ]
}

/// Runs a net-snmp notification command with `args`; its exit status.
fn notify(program: &str, args: &[&str]) -> Result<bool> {
    let path = external(program, "snmp").context(program.to_owned())?;
    let out = Command::new(path)
        .env("MIBS", "")
        .env("MIBDIRS", "/nonexistent")
        .args(args)
        .output()?;
    if !out.status.success() {
        eprintln!(
            "{program} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out.status.success())
}

fn agent_config(dir: &Path, broker: &str, snmpd: &str) -> String {
    // Polled once an hour: any poll seen within seconds of a trap is the
    // trap's doing.
    format!(
        r#"site = "demo-site"
agent = "edge-01"
state_dir = {state:?}
[mqtt]
url = {broker:?}
{mqtt}
[metrics]
listen = "127.0.0.1:0"
[snmp_traps]
listen = "127.0.0.1:0"
[[snmp]]
id = "ups-1"
room = "distribution-room"
profile = "ups-mib"
address = "{snmpd}"
version = "v2c"
community = {{ value = "public" }}
interval = "1h"
[[snmp]]
id = "ups-2"
room = "distribution-room"
profile = "ups-mib"
address = "{snmpd}"
version = "v3"
interval = "1h"
[snmp.v3]
user = "rgv3"
auth_protocol = "sha"
auth_password = {{ value = "authpass123" }}
priv_protocol = "aes"
priv_password = {{ value = "privpass123" }}
"#,
        state = dir.join("state").display().to_string(),
        mqtt = agent_mqtt_toml("demo-site", "edge-01"),
    )
}

/// The raw history of `point` since the test began, as text.
async fn raw_history(client: &reqwest::Client, http: &str, point: &str) -> String {
    get_json(
        client,
        &format!("{http}/api/v1/history?point={point}&step=raw&from=now-1h"),
    )
    .await
    .map(|v| v.to_string())
    .unwrap_or_default()
}

/// Traps of every version make the agent act at once, not at the next poll
/// (an hour away): a v2c upsTrapOnBattery gives an on-battery reading at
/// once (the profile's `set`) and a poll right after (the UPS says it is on
/// mains); a v1 trap from the same SMIv2 MIB, a v3 authPriv trap and a v2c
/// inform (answered, or snmpinform fails) each make a poll too. Unknown
/// traps, wrong communities and strangers are counted by outcome and named
/// in the log, never acted on.
#[tokio::test(flavor = "multi_thread")]
async fn traps_of_every_version_poll_at_once_and_the_rest_are_counted() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let Some(snmpd) = start_snmpd_with(dir.path(), SNMPD_CONF)? else {
        return Ok(());
    };
    let (_collector, http, mqtt) = start_collector(dir.path(), None)?;
    let mut agent = start_agent(dir.path(), &agent_config(dir.path(), &mqtt, &snmpd.addr))?;
    let ready = agent.wait_ready(Duration::from_secs(30))?;
    let traps = ready["traps"].as_str().context("traps address")?.to_owned();
    let metrics = format!(
        "http://{}",
        ready["metrics"].as_str().context("metrics address")?
    );
    let client = http_client();
    let counted = |outcome: &'static str| {
        let (client, metrics) = (client.clone(), metrics.clone());
        async move {
            metric(
                &client,
                &metrics,
                &format!("roomguard_agent_snmp_traps_total{{outcome=\"{outcome}\"}}"),
            )
            .await
        }
    };
    let polls = |device: &'static str| {
        let (client, metrics) = (client.clone(), metrics.clone());
        async move {
            metric(
                &client,
                &metrics,
                &format!("roomguard_agent_polls_total{{device=\"{device}\"}}"),
            )
            .await
        }
    };
    let on_battery = "1.3.6.1.2.1.33.2.1";

    // v2c trap: the on-battery reading it stands for, then the poll.
    assert!(notify(
        "snmptrap",
        &["-v", "2c", "-c", "public", &traps, "", on_battery]
    )?);
    eventually(PATIENCE, "the trap's reading and the poll's", || async {
        let h = raw_history(&client, &http, "ups-1.output_source").await;
        (h.contains("on_battery") && h.contains("normal")).then_some(())
    })
    .await?;
    assert_eq!(counted("known").await, 1);
    let ups1 = polls("ups-1").await;

    // v1 trap from the SMIv2 MIB: enterprise upsTraps, specific 1.
    assert!(notify(
        "snmptrap",
        &[
            "-v",
            "1",
            "-c",
            "public",
            &traps,
            "1.3.6.1.2.1.33.2",
            "",
            "6",
            "1",
            ""
        ]
    )?);
    eventually(PATIENCE, "a poll for the v1 trap", || async {
        (polls("ups-1").await > ups1).then_some(())
    })
    .await?;

    // v2c inform: snmpinform exits 0 only when the agent answers it.
    let ups1 = polls("ups-1").await;
    assert!(
        notify(
            "snmpinform",
            &[
                "-v",
                "2c",
                "-c",
                "public",
                "-r",
                "1",
                "-t",
                "3",
                &traps,
                "",
                "1.3.6.1.2.1.33.2.3"
            ]
        )?,
        "the inform was not answered"
    );
    eventually(PATIENCE, "a poll for the inform", || async {
        (polls("ups-1").await > ups1).then_some(())
    })
    .await?;

    // v3 authPriv trap: only ups-2 (the v3 device) polls.
    let ups2 = polls("ups-2").await;
    assert!(notify(
        "snmptrap",
        &v3_trap("authpass123", &traps, on_battery)
    )?);
    eventually(PATIENCE, "a poll for the v3 trap", || async {
        (polls("ups-2").await > ups2).then_some(())
    })
    .await?;
    assert_eq!(counted("known").await, 4);

    // What is not acted on is counted and said.
    let known = counted("known").await;
    let before = polls("ups-1").await;
    assert!(notify(
        "snmptrap",
        &[
            "-v",
            "2c",
            "-c",
            "public",
            &traps,
            "",
            "1.3.6.1.4.1.99999.0.7"
        ]
    )?);
    assert!(notify(
        "snmptrap",
        &["-v", "2c", "-c", "wrong-community", &traps, "", on_battery]
    )?);
    assert!(notify(
        "snmptrap",
        &v3_trap("wrongpass123", &traps, on_battery)
    )?);
    eventually(PATIENCE, "unknown and refused traps counted", || async {
        (counted("unknown").await == 1 && counted("refused").await == 2).then_some(())
    })
    .await?;
    assert_eq!(
        counted("known").await,
        known,
        "nothing refused was acted on"
    );
    assert_eq!(polls("ups-1").await, before, "nothing refused made a poll");
    assert_eq!(
        polls("ups-2").await,
        ups2 + 1,
        "the wrong v3 password made no poll"
    );
    let log = std::fs::read_to_string(dir.path().join("agent.stderr.log"))?;
    assert!(
        log.contains("1.3.6.1.4.1.99999.0.7 from ups-1 is in no profile"),
        "{}",
        agent.log_tail()
    );
    assert!(log.contains("wrong community"), "{}", agent.log_tail());
    assert!(agent.is_running(), "{}", agent.log_tail());
    Ok(())
}
