//! The whole path, register to API, across the real binaries: simulator →
//! agent → MQTT (a real Mosquitto, or the collector's embedded broker) →
//! collector → SQLite → `/api/v1/latest`.

use anyhow::{Context, Result};
use roomguard_e2e::*;
use serde_json::{json, Value};
use std::process::Command;
use std::time::Duration;

const PATIENCE: Duration = Duration::from_secs(60);

fn value(p: &Value) -> Option<f64> {
    if p["quality"] == "good" {
        p["value"].as_f64()
    } else {
        None
    }
}

on_both!(simulated_values_reach_the_api_through_mosquitto_and_thermal_runaway_shows_rising_h2);

async fn simulated_values_reach_the_api_through_mosquitto_and_thermal_runaway_shows_rising_h2(
    store: TestStore,
) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let Some(broker) = Mosquitto::start(dir.path())? else {
        return Ok(());
    };
    // Double speed keeps the drill short without changing its shape.
    let (_sim, sim) = start_simulator(dir.path(), &["--speed", "2"])?;
    let control = sim.control.clone();
    let (_collector, http, _) =
        start_collector_on(dir.path(), &store, "pipeline", Some(&broker.url()))?;
    let agent_conf = demo_agent_config(&sim, &broker.url(), &dir.path().join("agent-state"))?;
    let _agent = start_agent(dir.path(), &agent_conf)?;
    let client = http_client();

    // A value the simulator holds constant in normal operation: state of charge 100.0 %.
    let soc = eventually(
        PATIENCE,
        "BMS state of charge in /api/v1/latest",
        || async {
            latest_point(&client, &http, "br-bms-1.soc")
                .await
                .as_ref()
                .and_then(value)
        },
    )
    .await?;
    assert_eq!(soc, 100.0);

    // Noisy values: compare with what the simulator says it serves right now.
    let sim_values = get_json(&client, &format!("http://{control}/values"))
        .await
        .context("sim values")?;
    let inlet = eventually(PATIENCE, "inlet temperature", || async {
        latest_point(&client, &http, "mr-th-inlet.temperature")
            .await
            .as_ref()
            .and_then(value)
    })
    .await?;
    let served = sim_values["inlet_temp_c"]
        .as_f64()
        .context("inlet_temp_c")?;
    assert!(
        (inlet - served).abs() < 1.0,
        "API says {inlet} °C, simulator serves about {served} °C"
    );

    // Word order: the CDAB meter decodes to the same plausible voltage as the ABCD one.
    let cdab = eventually(PATIENCE, "CDAB meter voltage", || async {
        latest_point(&client, &http, "pd-meter-2.voltage_a")
            .await
            .as_ref()
            .and_then(value)
    })
    .await?;
    assert!(
        (200.0..240.0).contains(&cdab),
        "CDAB voltage decoded as {cdab}"
    );

    let h2_before = eventually(PATIENCE, "hydrogen reading", || async {
        latest_point(&client, &http, "br-h2-1.h2")
            .await
            .as_ref()
            .and_then(value)
    })
    .await?;
    assert!(h2_before < 10.0, "normal site has {h2_before} %LFL H2");

    let res = client
        .put(format!("http://{control}/scenario"))
        .json(&json!({ "scenario": "thermal_runaway" }))
        .send()
        .await?;
    assert!(
        res.status().is_success(),
        "switching scenario: {}",
        res.status()
    );

    // Watch H2 climb past the 10 % LFL warning stage, rising on the way.
    let mut seen: Vec<f64> = vec![h2_before];
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    while seen.last().is_some_and(|v| *v <= 10.0) {
        assert!(
            std::time::Instant::now() < deadline,
            "H2 never passed 10 %LFL: {seen:?}"
        );
        if let Some(v) = latest_point(&client, &http, "br-h2-1.h2")
            .await
            .as_ref()
            .and_then(value)
        {
            if seen.last() != Some(&v) {
                seen.push(v);
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let rises = seen.windows(2).filter(|w| w[1] > w[0]).count();
    assert!(rises >= 3, "H2 did not rise steadily: {seen:?}");

    // Mains failure: the meter sees no voltage and the UPS (over SNMP) goes on battery.
    let res = client
        .post(format!("http://{control}/scenario/mains_failure"))
        .send()
        .await?;
    assert!(res.status().is_success());
    eventually(PATIENCE, "UPS on battery over SNMP", || async {
        let p = latest_point(&client, &http, "ups-1.output_source").await?;
        (p["text"] == "on_battery" && p["value"] == 5.0).then_some(())
    })
    .await?;
    let volts = eventually(PATIENCE, "meter voltage to drop", || async {
        let v = latest_point(&client, &http, "pd-meter-1.voltage_a")
            .await
            .as_ref()
            .and_then(value)?;
        (v < 1.0).then_some(v)
    })
    .await?;
    assert_eq!(volts, 0.0);
    // The PDU's outlet table is walked with its index in the point ids.
    let name = latest_point(&client, &http, "pdu-1.outlet.8.name")
        .await
        .context("outlet 8")?;
    assert_eq!(name["text"], "rack A1 outlet 8");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_embedded_broker_carries_readings_with_nothing_else_installed() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (_sim, sim) = start_simulator(dir.path(), &[])?;
    let (_collector, http, mqtt) = start_collector(dir.path(), None)?;
    let agent_conf = demo_agent_config(&sim, &mqtt, &dir.path().join("agent-state"))?;
    let mut agent = start_agent(dir.path(), &agent_conf)?;
    let ready = agent.wait_ready(PATIENCE)?;
    let agent_http = format!("http://{}", ready["metrics"].as_str().context("metrics")?);
    let client = http_client();

    let closed = eventually(
        PATIENCE,
        "breaker state via the embedded broker",
        || async {
            latest_point(&client, &http, "pd-breaker-1.closed")
                .await
                .as_ref()
                .and_then(value)
        },
    )
    .await?;
    assert_eq!(closed, 1.0);
    let health = get_json(&client, &format!("{http}/healthz"))
        .await
        .context("healthz")?;
    assert_eq!(health["broker_connected"], true, "{health}");
    // The collector's confirmations come back through the embedded broker
    // too, so the agent's spool empties as it goes.
    eventually(
        PATIENCE,
        "confirmations via the embedded broker",
        || async {
            let confirmed = metric(&client, &agent_http, "roomguard_agent_confirmed_total").await;
            (confirmed >= 10).then_some(())
        },
    )
    .await?;
    Ok(())
}

fn batch(site: &str, agent: &str, point: &str, value: f64) -> Value {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    json!({
        "v": 1, "site": site, "agent": agent, "seq": 1, "device": "probe", "polled_at": now,
        "points": [{ "id": point, "room": "test-room", "quantity": "temperature", "unit": "°C" }],
        "readings": [{ "p": point, "v": value, "t": now }]
    })
}

async fn rejected(client: &reqwest::Client, http: &str, reason: &str) -> u64 {
    let Ok(res) = client.get(format!("{http}/metrics")).send().await else {
        return 0;
    };
    let text = res.text().await.unwrap_or_default();
    let key = format!("roomguard_messages_rejected_total{{reason=\"{reason}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&key))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_forged_and_unknown_version_messages_are_counted_and_ingest_goes_on() -> Result<()>
{
    bad_messages_are_counted_and_ingest_goes_on(TestStore::Sqlite).await
}

#[tokio::test(flavor = "multi_thread")]
async fn on_postgres_malformed_forged_and_unknown_version_messages_are_counted_and_ingest_goes_on(
) -> Result<()> {
    match TestStore::postgres()? {
        Some(store) => bad_messages_are_counted_and_ingest_goes_on(store).await,
        None => Ok(()),
    }
}

async fn bad_messages_are_counted_and_ingest_goes_on(store: TestStore) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let Some(broker) = Mosquitto::start(dir.path())? else {
        return Ok(());
    };
    let Some(mosquitto_pub) = external("mosquitto_pub", "mosquitto-clients") else {
        return Ok(());
    };
    let (mut collector, http, _) =
        start_collector_on(dir.path(), &store, "bad_messages", Some(&broker.url()))?;
    let client = http_client();
    eventually(PATIENCE, "collector connected to the broker", || async {
        let h = get_json(&client, &format!("{http}/healthz")).await?;
        (h["broker_connected"] == true).then_some(())
    })
    .await?;

    let publish_raw = |topic: &str, payload: &str| -> Result<()> {
        let status = Command::new(&mosquitto_pub)
            .args(broker.client_args())
            .args(["-q", "1", "-t", topic, "-m", payload])
            .status()?;
        anyhow::ensure!(status.success(), "mosquitto_pub failed: {status}");
        Ok(())
    };
    // Signed with the agent's key, as an agent (or a thief of its key) would:
    // these reach validation.
    let publish = |topic: &str, payload: &str| -> Result<()> {
        publish_raw(
            topic,
            &String::from_utf8(signed(topic, payload.as_bytes()))?,
        )
    };
    // Not signed, or signed with another agent's key: refused before validation.
    publish_raw(
        "roomguard/v1/site-a/edge-1/batch",
        &batch("site-a", "edge-1", "unsigned.t", 20.0).to_string(),
    )?;
    publish_raw(
        "roomguard/v1/site-a/edge-1/batch",
        &String::from_utf8(signed(
            "roomguard/v1/site-a/edge-2/batch",
            batch("site-a", "edge-1", "wrongkey.t", 20.0)
                .to_string()
                .as_bytes(),
        ))?,
    )?;
    // Garbage, a batch claiming to be another agent, a future version, a NaN-ish value.
    publish("roomguard/v1/site-a/edge-1/batch", "{not json")?;
    publish(
        "roomguard/v1/site-a/edge-1/batch",
        &batch("site-a", "edge-2", "forged.t", 99.0).to_string(),
    )?;
    publish(
        "roomguard/v2/site-a/edge-1/batch",
        &batch("site-a", "edge-1", "v2.t", 1.0).to_string(),
    )?;
    let mut no_value = batch("site-a", "edge-1", "novalue.t", 1.0);
    no_value["readings"][0]["v"] = Value::Null;
    publish("roomguard/v1/site-a/edge-1/batch", &no_value.to_string())?;
    // And then an honest batch, which must still be stored.
    publish(
        "roomguard/v1/site-a/edge-1/batch",
        &batch("site-a", "edge-1", "honest.t", 21.5).to_string(),
    )?;

    let honest = eventually(PATIENCE, "the honest batch after the bad ones", || async {
        latest_point(&client, &http, "honest.t")
            .await
            .as_ref()
            .and_then(value)
    })
    .await?;
    assert_eq!(honest, 21.5);
    for (reason, expected) in [
        ("malformed", 1),
        ("identity_mismatch", 1),
        ("unknown_version", 1),
        ("invalid", 1),
        ("unauthenticated", 2),
    ] {
        let n = eventually(
            PATIENCE,
            &format!("a {reason} rejection counted"),
            || async {
                let n = rejected(&client, &http, reason).await;
                (n >= expected).then_some(n)
            },
        )
        .await?;
        assert_eq!(n, expected, "{reason}");
    }
    for forged in ["forged.t", "v2.t", "novalue.t", "unsigned.t", "wrongkey.t"] {
        assert!(
            latest_point(&client, &http, forged).await.is_none(),
            "{forged} was stored"
        );
    }
    assert!(collector.is_running(), "the collector died on bad input");
    Ok(())
}

#[test]
fn a_bad_config_is_refused_before_start_with_every_problem_named_by_path() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let conf = dir.path().join("agent.toml");
    std::fs::write(
        &conf,
        r#"
site = "demo site"
agent = "edge-01"
[mqtt]
url = "http://nowhere"
[[modbus]]
id = "th"
room = "machine-room"
address = "localhost"
[[modbus.points]]
id = "th.t"
quantity = "temperature"
table = "coil"
address = 0
type = "int16"
"#,
    )?;
    for sub in ["validate", "run"] {
        let out = Command::new(workspace_bin("roomguard-agent"))
            .arg(sub)
            .arg(&conf)
            .output()?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{sub}: {stderr}");
        for path in [
            "site:",
            "mqtt.url:",
            "mqtt.key:",
            "modbus[0].address:",
            "modbus[0].points[0].type:",
        ] {
            assert!(
                stderr.contains(path),
                "{sub}: {path} not named in:\n{stderr}"
            );
        }
    }

    let conf = dir.path().join("collector.toml");
    std::fs::write(&conf, "[http]\nlisten = \"127.0.0.1:8080\"\nport = 9\n")?;
    let out = Command::new(workspace_bin("roomguard-collector"))
        .arg("run")
        .arg(&conf)
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("http") && stderr.contains("port"),
        "{stderr}"
    );
    Ok(())
}

#[test]
fn each_sample_config_passes_validate_and_run_refuses_it_until_its_secrets_are_set() -> Result<()> {
    let dir = tempfile::tempdir()?;
    for bin in ["roomguard-agent", "roomguard-collector"] {
        let out = Command::new(workspace_bin(bin))
            .arg("sample-config")
            .output()?;
        assert!(out.status.success(), "{bin} sample-config");
        let conf = dir.path().join(format!("{bin}.toml"));
        std::fs::write(&conf, &out.stdout)?;
        // Secrets come from environment variables the sample names; none
        // is set here (as on a workstation or in CI).
        let clean = |sub: &str| {
            let mut c = Command::new(workspace_bin(bin));
            c.arg(sub).arg(&conf).current_dir(dir.path());
            for (k, _) in std::env::vars() {
                if k.starts_with("ROOMGUARD_") {
                    c.env_remove(k);
                }
            }
            c.output()
        };
        let out = clean("validate")?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{bin} validate: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            stdout.contains(": ok, once these environment variables are set")
                && stdout.contains("is not set"),
            "{bin}: {stdout}"
        );
        let out = clean("run")?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{bin} run: {stderr}");
        assert!(stderr.contains("is not set"), "{bin} run: {stderr}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn an_agent_killed_without_goodbye_is_shown_offline_by_its_last_will() -> Result<()> {
    last_will_shows_a_dead_agent_offline(TestStore::Sqlite).await
}

#[tokio::test(flavor = "multi_thread")]
async fn on_postgres_an_agent_killed_without_goodbye_is_shown_offline_by_its_last_will(
) -> Result<()> {
    match TestStore::postgres()? {
        Some(store) => last_will_shows_a_dead_agent_offline(store).await,
        None => Ok(()),
    }
}

async fn last_will_shows_a_dead_agent_offline(store: TestStore) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let Some(broker) = Mosquitto::start(dir.path())? else {
        return Ok(());
    };
    let (_sim, sim) = start_simulator(dir.path(), &[])?;
    let (_collector, http, _) =
        start_collector_on(dir.path(), &store, "last_will", Some(&broker.url()))?;
    // A short keep-alive so the broker notices the dead agent within seconds.
    let agent_conf = demo_agent_config(&sim, &broker.url(), &dir.path().join("agent-state"))?
        .replace(
            "status_interval = \"5s\"",
            "status_interval = \"1s\"\nkeep_alive = \"2s\"",
        );
    let mut agent = start_agent(dir.path(), &agent_conf)?;
    let client = http_client();

    let agent_state = |want: &'static str| {
        let client = client.clone();
        let url = format!("{http}/api/v1/agents");
        move || {
            let client = client.clone();
            let url = url.clone();
            async move {
                let doc = get_json(&client, &url).await?;
                let a = doc["agents"]
                    .as_array()?
                    .iter()
                    .find(|a| a["agent"] == "edge-01")?
                    .clone();
                (a["state"] == want).then_some(a)
            }
        }
    };
    let online = eventually(PATIENCE, "agent online with device health", || {
        let check = agent_state("online");
        async move {
            let a = check().await?;
            let healthy = a["devices"]
                .as_array()?
                .iter()
                .any(|d| d["device"] == "br-h2-1" && d["last_success"].is_i64());
            healthy.then_some(a)
        }
    })
    .await?;
    // One health entry per device of the demo configuration.
    let configured = agent_conf
        .lines()
        .filter(|l| l.trim() == "[[modbus]]" || l.trim() == "[[snmp]]")
        .count();
    assert_eq!(
        online["devices"].as_array().map(Vec::len),
        Some(configured),
        "{online}"
    );

    agent.kill(); // SIGKILL: no goodbye, only the broker's last will can tell
    eventually(PATIENCE, "agent shown offline", agent_state("offline")).await?;
    Ok(())
}

/// GETs `path` and returns the status, content type and body.
async fn fetch(client: &reqwest::Client, http: &str, path: &str) -> Result<(u16, String, String)> {
    let resp = client.get(format!("{http}{path}")).send().await?;
    let status = resp.status().as_u16();
    let ctype = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    Ok((status, ctype, resp.text().await?))
}

#[tokio::test(flavor = "multi_thread")]
async fn history_catalogue_and_online_backup_work_against_a_running_collector() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (_sim, sim) = start_simulator(dir.path(), &[])?;
    let (_collector, http, mqtt) = start_collector(dir.path(), None)?;
    let agent_conf = demo_agent_config(&sim, &mqtt, &dir.path().join("agent-state"))?;
    let _agent = start_agent(dir.path(), &agent_conf)?;
    let client = http_client();
    // A few polls' worth of samples.
    eventually(PATIENCE, "several hydrogen samples", || async {
        let (_, _, body) = fetch(
            &client,
            &http,
            "/api/v1/history?point=br-h2-1.h2&from=now-5m&step=raw",
        )
        .await
        .ok()?;
        let doc: Value = serde_json::from_str(&body).ok()?;
        (doc["series"][0]["values"].as_array()?.len() >= 3).then_some(())
    })
    .await?;

    // The catalogue, filtered by room.
    let (code, _, body) = fetch(&client, &http, "/api/v1/points?room=battery-room").await?;
    assert_eq!(code, 200, "{body}");
    let doc: Value = serde_json::from_str(&body)?;
    let h2 = doc["points"]
        .as_array()
        .context("points")?
        .iter()
        .find(|p| p["point"] == "br-h2-1.h2")
        .context("br-h2-1.h2 in the battery room")?;
    assert_eq!(h2["unit"], "%LFL");
    assert!(doc["points"]
        .as_array()
        .unwrap()
        .iter()
        .all(|p| p["room"] == "battery-room"));

    // Two points, raw, in the default zone (Asia/Shanghai).
    let (code, _, body) = fetch(
        &client,
        &http,
        "/api/v1/history?point=br-h2-1.h2,br-th-1.temperature&from=now-5m&step=raw",
    )
    .await?;
    assert_eq!(code, 200, "{body}");
    let doc: Value = serde_json::from_str(&body)?;
    assert_eq!(doc["tier"], "raw");
    let series = doc["series"].as_array().context("series")?;
    assert_eq!(series.len(), 2);
    let t = series[1]["values"][0]["t"].as_str().context("t")?;
    assert!(t.ends_with("+08:00"), "{t}");
    assert_eq!(series[1]["unit"], "°C");

    // Buckets from the raw tier, another zone.
    let (code, _, body) = fetch(
        &client,
        &http,
        "/api/v1/history?point=br-h2-1.h2&from=now-5m&step=10s&tz=UTC",
    )
    .await?;
    assert_eq!(code, 200, "{body}");
    let doc: Value = serde_json::from_str(&body)?;
    let b = &doc["series"][0]["values"][0];
    assert!(b["n"].as_i64().unwrap_or(0) >= 1, "{b}");
    let (min, mean, max) = (
        b["min"].as_f64().unwrap(),
        b["mean"].as_f64().unwrap(),
        b["max"].as_f64().unwrap(),
    );
    assert!(min <= mean && mean <= max, "{b}");
    assert!(b["t"].as_str().unwrap().ends_with("+00:00"), "{b}");

    // Every point at once: the answer is sent in pieces as they are read,
    // and must still be one document with the series in the asked order.
    let (_, _, body) = fetch(&client, &http, "/api/v1/points").await?;
    let all: Vec<String> = serde_json::from_str::<Value>(&body)?["points"]
        .as_array()
        .context("points")?
        .iter()
        .filter_map(|p| p["point"].as_str().map(str::to_owned))
        .rev()
        .collect();
    assert!(
        all.len() > 50,
        "enough points for several pieces: {}",
        all.len()
    );
    let (code, _, body) = fetch(
        &client,
        &http,
        &format!(
            "/api/v1/history?point={}&from=now-5m&step=1m",
            all.join(",")
        ),
    )
    .await?;
    assert_eq!(code, 200, "{body}");
    let doc: Value = serde_json::from_str(&body)?;
    let got: Vec<&str> = doc["series"]
        .as_array()
        .context("series")?
        .iter()
        .filter_map(|s| s["point"].as_str())
        .collect();
    assert_eq!(got, all, "series in the asked order");

    // CSV, asked for either way.
    let (code, ctype, body) = fetch(
        &client,
        &http,
        "/api/v1/history?point=br-h2-1.h2&from=now-5m&step=10s&format=csv",
    )
    .await?;
    assert_eq!(code, 200);
    assert!(ctype.starts_with("text/csv"), "{ctype}");
    let mut lines = body.lines();
    assert_eq!(lines.next(), Some("site,point,time,n,min,max,mean,last"));
    assert!(
        lines
            .next()
            .is_some_and(|l| l.starts_with("demo-site,br-h2-1.h2,")),
        "{body}"
    );
    let csv = client
        .get(format!("{http}/api/v1/points"))
        .header("accept", "text/csv")
        .send()
        .await?;
    assert!(csv.text().await?.starts_with("site,point,agent,room,"));

    // Bad questions: a 4xx naming what is wrong.
    for (query, code, says) in [
        ("point=nope", 404, "nope"),
        ("point=br-h2-1.h2&from=now&to=now-1h", 400, "not before"),
        ("point=br-h2-1.h2&step=1ms", 400, "step"),
        (
            "point=br-h2-1.h2&from=now-400d&step=1s",
            400,
            "points per series",
        ),
        ("point=br-h2-1.h2&from=now-2d&step=raw", 400, "raw"),
        ("point=br-h2-1.h2&tz=Mars/Olympus", 400, "tz"),
        ("point=br-h2-1.h2&from=yesterday", 400, "from"),
        ("point=br-h2-1.h2&bogus=1", 400, "bogus"),
        ("", 400, "point"),
    ] {
        let (got, _, body) = fetch(&client, &http, &format!("/api/v1/history?{query}")).await?;
        assert_eq!(got, code, "{query}: {body}");
        assert!(body.contains(says), "{query}: {body}");
    }

    // An online backup while ingest goes on.
    let dest = dir.path().join("backup.db");
    let backup = || {
        Command::new(workspace_bin("roomguard-collector"))
            .arg("backup")
            .arg(dir.path().join("collector.toml"))
            .arg(&dest)
            .output()
    };
    let out = backup()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let copy =
        rusqlite::Connection::open_with_flags(&dest, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    let samples: i64 = copy.query_row("SELECT count(*) FROM samples", [], |r| r.get(0))?;
    assert!(samples > 0);
    let again = backup()?;
    assert!(
        !again.status.success(),
        "a backup must not overwrite a file"
    );
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));
    Ok(())
}

/// Issue 19: 300 KB messages ten a second made the embedded broker (rumqttd)
/// drop the collector's connection again and again ("out of order ack": a
/// refused message was acknowledged ahead of batches waiting for their
/// commit), and every reconnection brought the same messages back. On both
/// brokers: each oversized message is refused and counted once, the
/// connection stays up, health stays ok and the real agent's readings flow.
#[tokio::test(flavor = "multi_thread")]
async fn oversized_messages_are_refused_once_each_and_never_knock_the_collector_off_its_broker(
) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mosquitto = Mosquitto::start(dir.path())?;
    let brokers: Vec<Option<String>> = match &mosquitto {
        Some(m) => vec![None, Some(m.url())],
        None => vec![None],
    };
    for broker in brokers {
        let name = if broker.is_some() {
            "mosquitto"
        } else {
            "embedded"
        };
        let run = dir.path().join(name);
        std::fs::create_dir_all(&run)?;
        let (_sim, sim) = start_simulator(&run, &[])?;
        let (_collector, http, mqtt) = start_collector(&run, broker.as_deref())?;
        let agent_conf = demo_agent_config(&sim, &mqtt, &run.join("agent-state"))?;
        let _agent = start_agent(&run, &agent_conf)?;
        let client = http_client();
        eventually(PATIENCE, "readings flowing", || async {
            latest_point(&client, &http, "br-h2-1.h2").await.map(|_| ())
        })
        .await?;
        let connects = metric(&client, &http, "roomguard_broker_connects_total").await;

        let port: u16 = mqtt.rsplit(':').next().context("broker port")?.parse()?;
        let mut opts = rumqttc::MqttOptions::new(format!("big-{name}"), "127.0.0.1", port);
        opts.set_credentials(MQTT_USER, MQTT_PASSWORD);
        opts.set_max_packet_size(1 << 20, 1 << 20);
        let (big, mut eventloop) = rumqttc::AsyncClient::new(opts, 256);
        let driver = tokio::spawn(async move { while eventloop.poll().await.is_ok() {} });
        // A signed batch of 300 KB: past the 256 KiB limit, refused as too_large.
        let topic = "roomguard/v1/demo-site/edge-big/batch";
        const SENT: u64 = 100;
        let send = |seq: u64, unit: String| {
            let mut b = batch("demo-site", "edge-big", "b.t", 1.0);
            b["seq"] = json!(seq);
            b["points"][0]["unit"] = json!(unit);
            big.publish(
                topic,
                rumqttc::QoS::AtLeastOnce,
                false,
                signed(topic, b.to_string().as_bytes()),
            )
        };
        for round in 1..=SENT {
            // Good batches just ahead of it, still waiting for their commit
            // when the big one is refused: what made the order matter.
            for i in 0..20 {
                send(round * 100 + i, "°C".into()).await?;
            }
            send(round * 100 + 99, "x".repeat(300 * 1024)).await?;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let refused = eventually(PATIENCE, "every big message refused", || async {
            let n = rejected(&client, &http, "too_large").await;
            (n >= SENT).then_some(n)
        })
        .await?;
        // A moment for any repeat delivery to show.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let refused = refused.max(rejected(&client, &http, "too_large").await);
        driver.abort();
        assert_eq!(
            refused, SENT,
            "{name}: each refused once, not again after a reconnection"
        );
        assert_eq!(
            metric(&client, &http, "roomguard_broker_connects_total").await,
            connects,
            "{name}: the collector's connection to the broker was dropped"
        );
        let health = get_json(&client, &format!("{http}/healthz"))
            .await
            .context("healthz")?;
        assert_eq!(health["status"], "ok", "{name}: {health}");
        newer_reading(&client, &http, "br-h2-1.h2")
            .await
            .with_context(|| name.to_owned())?;
    }
    Ok(())
}
