//! Safety alarms end to end: the simulator's drills through a real agent,
//! Mosquitto and the collector's rule engine, to a webhook receiver and a
//! real Prometheus Alertmanager. Every notification must arrive exactly once.

use anyhow::{ensure, Context, Result};
use roomguard_e2e::*;
use serde_json::{json, Value};
use std::time::Duration;

const PATIENCE: Duration = Duration::from_secs(90);

struct Site {
    dir: tempfile::TempDir,
    broker: Mosquitto,
    _sim: Proc,
    control: String,
    collector: Proc,
    http: String,
    _agent: Proc,
    hook: Receiver,
    client: reqwest::Client,
    extra: String,
    /// The `[store]` body, made once (a PostgreSQL database is created then).
    store_toml: String,
}

/// A simulated site at `speed` with a collector whose alarms go to a webhook
/// receiver; `extra` is appended to the collector's `[alarms]` configuration.
async fn site(store: &TestStore, speed: &str, extra: &str) -> Result<Option<Site>> {
    let dir = tempfile::tempdir()?;
    let Some(broker) = Mosquitto::start(dir.path())? else {
        return Ok(None);
    };
    let hook = Receiver::start().await?;
    let (sim, addrs) = start_simulator(dir.path(), &["--speed", speed])?;
    let extra = format!(
        "[alarms]\n[[alarms.channels]]\nid = \"hook\"\nkind = \"webhook\"\nurl = {:?}\ntimeout = \"2s\"\n{extra}\n",
        hook.url
    );
    let store_toml = store.toml(dir.path(), "alarms")?;
    let (collector, http, _) =
        start_collector_stored(dir.path(), &store_toml, Some(&broker.url()), &extra)?;
    let agent_conf = demo_agent_config(&addrs, &broker.url(), &dir.path().join("agent-state"))?;
    let agent = start_agent(dir.path(), &agent_conf)?;
    let client = http_client();
    let s = Site {
        control: addrs.control.clone(),
        dir,
        broker,
        _sim: sim,
        collector,
        http,
        _agent: agent,
        hook,
        client,
        extra,
        store_toml,
    };
    // Data flows before a drill starts.
    eventually(PATIENCE, "first readings stored", || async {
        latest_point(&s.client, &s.http, "br-bms-1.soc").await
    })
    .await?;
    Ok(Some(s))
}

impl Site {
    async fn drill(&self, scenario: &str) -> Result<()> {
        drill(&self.client, &self.control, scenario).await
    }

    async fn alarms(&self, query: &str) -> Vec<Value> {
        get_json(
            &self.client,
            &format!("{}/api/v1/alarms?{query}", self.http),
        )
        .await
        .and_then(|v| v["alarms"].as_array().cloned())
        .unwrap_or_default()
    }

    /// Alarms of `rule` in any state.
    async fn of_rule(&self, rule: &str) -> Vec<Value> {
        self.alarms(&format!("state=all&rule={rule}")).await
    }

    /// Waits until the receiver holds a notification of `kind` for `rule`.
    async fn told(&self, rule: &str, kind: &str) -> Result<Vec<u64>> {
        eventually(
            PATIENCE,
            &format!("{kind} of {rule} at the receiver"),
            || async {
                let serials: Vec<u64> = self
                    .hook
                    .of_rule(rule)
                    .into_iter()
                    .filter(|(k, _)| k == kind)
                    .map(|(_, s)| s)
                    .collect();
                (!serials.is_empty()).then_some(serials)
            },
        )
        .await
    }

    async fn post(&self, path: &str, body: Value) -> Result<(u16, Value)> {
        let r = self
            .client
            .post(format!("{}{path}", self.http))
            .json(&body)
            .send()
            .await?;
        let status = r.status().as_u16();
        Ok((status, r.json().await.unwrap_or(Value::Null)))
    }

    fn restart_collector(&mut self) -> Result<()> {
        let (c, http, _) = start_collector_stored(
            self.dir.path(),
            &self.store_toml,
            Some(&self.broker.url()),
            &self.extra,
        )?;
        self.collector = c;
        self.http = http;
        Ok(())
    }

    fn no_duplicates(&self) -> Result<()> {
        let dups = self.hook.duplicates();
        ensure!(dups.is_empty(), "notifications received twice: {dups:?}");
        Ok(())
    }
}

on_both!(a_fire_drill_confirms_the_fire_and_every_transition_is_told_once_across_a_collector_crash);
on_both!(thermal_runaway_raises_the_explosion_alarms_in_order_and_level_1_reaches_robot_and_email);
on_both!(mains_failure_inhibits_what_it_explains_and_is_told_once);
on_both!(a_loose_neutral_raises_voltage_unbalance_from_the_agents_derived_point_alone);
on_both!(a_silenced_room_is_recorded_and_told_after_the_window_through_a_failing_receiver);
on_both!(a_declared_drill_marks_its_alarms_and_keeps_them_from_channels_that_take_no_drills);

fn serial(a: &Value) -> u64 {
    a["serial"].as_u64().unwrap_or(0)
}

async fn a_fire_drill_confirms_the_fire_and_every_transition_is_told_once_across_a_collector_crash(
    store: TestStore,
) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let Some(am) = Alertmanager::start(dir.path())? else {
        return Ok(());
    };
    // Fire alarms clear 2 s after the smoke is gone, to keep the test short.
    let extra = format!(
        "[[alarms.channels]]\nid = \"am\"\nkind = \"alertmanager\"\nurl = {:?}\n\
         [[alarms.overrides]]\nrule = \"fire.*\"\nclear_delay = \"2s\"\n",
        am.url
    );
    let Some(mut s) = site(&store, "4", &extra).await? else {
        return Ok(());
    };
    s.drill("smoke").await?;

    // First head: smoke; second head: two heads confirm; heat: smoke + heat
    // confirm. One fire, one incident: told at its first alarm and again
    // when two heads make it critical; the rest is recorded under it.
    let first = s.told("fire.smoke", "raise").await?;
    s.told("fire.confirmed_two_heads", "raise").await?;
    let by_heat = eventually(PATIENCE, "smoke and heat confirm the fire", || async {
        s.of_rule("fire.confirmed_smoke_heat")
            .await
            .into_iter()
            .next()
    })
    .await?;
    let smoke = s.of_rule("fire.smoke").await;
    assert_eq!(smoke.len(), 2, "one alarm per smoke head: {smoke:?}");
    assert!(smoke
        .iter()
        .all(|a| a["level"] == 2 && a["state"] == "active"));
    let confirmed = s.of_rule("fire.confirmed_two_heads").await;
    assert_eq!(confirmed.len(), 1, "{confirmed:?}");
    assert_eq!(confirmed[0]["level"], 1);
    assert_eq!(confirmed[0]["room"], "machine-room");
    let incident = json!(first[0]);
    for a in smoke.iter().chain(&confirmed).chain([&by_heat]) {
        assert_eq!(a["incident"], incident, "one incident: {a}");
    }
    assert_eq!(by_heat["notified"], false, "{by_heat}");
    let fire_raises: Vec<u64> = s
        .hook
        .received()
        .iter()
        .filter(|r| r.body["kind"] == "raise" && r.body["category"] == "fire")
        .filter_map(|r| r.body["serial"].as_u64())
        .collect();
    assert_eq!(
        fire_raises,
        [first[0], serial(&confirmed[0])],
        "the first alarm and the follow-up that made it critical"
    );

    // The collector dies mid-fire and comes back: nothing is raised again.
    // It dies once what it had to tell is told: a notification in flight at
    // the instant of a SIGKILL (the receiver's 2xx in, the outbox not yet
    // updated) is sent once more with the same key, as docs/ALARMS.md says;
    // that window is not what this test is about. (The demo site's heat
    // sensors keep raising alarms while the room heats, so it is not idle.)
    eventually(PATIENCE, "the outbox told", || async {
        let doc = get_json(
            &s.client,
            &format!("{}/api/v1/notifications?state=pending", s.http),
        )
        .await?;
        doc["notifications"].as_array()?.is_empty().then_some(())
    })
    .await?;
    let raises_before = s.hook.received().len();
    s.collector.kill();
    s.restart_collector()?;
    let stored = metric(&s.client, &s.http, "roomguard_readings_stored_total").await;
    eventually(PATIENCE, "readings after the restart", || async {
        (metric(&s.client, &s.http, "roomguard_readings_stored_total").await > stored + 200)
            .then_some(())
    })
    .await?;
    assert_eq!(
        s.of_rule("fire.smoke").await.len(),
        2,
        "no second smoke alarm"
    );
    assert_eq!(s.of_rule("fire.confirmed_two_heads").await.len(), 1);
    s.no_duplicates()?;

    // Alertmanager holds the confirmed fire as an active alert.
    let alert = eventually(PATIENCE, "confirmed fire in Alertmanager", || async {
        am.alerts(&s.client, "fire.confirmed_two_heads")
            .await
            .into_iter()
            .next()
    })
    .await?;
    assert_eq!(alert["labels"]["severity"], "critical");
    assert_eq!(alert["labels"]["serial"], serial(&confirmed[0]).to_string());

    // The on-call engineer acknowledges the confirmed fire, comments, assigns.
    let base = format!("/api/v1/alarms/{}", serial(&confirmed[0]));
    let (code, acked) = s
        .post(
            &format!("{base}/ack"),
            json!({"by": "oncall-1", "comment": "on my way"}),
        )
        .await?;
    assert_eq!(code, 200, "{acked}");
    assert_eq!(acked["state"], "acknowledged");
    // The logged-in identity acts (the test token's), not a name in the body.
    assert_eq!(acked["acknowledged_by"], "tests");
    let (code, again) = s
        .post(&format!("{base}/ack"), json!({"by": "oncall-2"}))
        .await?;
    assert_eq!(code, 409, "a second acknowledgement is refused: {again}");
    let (code, _) = s
        .post(
            &format!("{base}/comment"),
            json!({"by": "oncall-1", "text": "extinguisher used"}),
        )
        .await?;
    assert_eq!(code, 200);
    let (code, assigned) = s
        .post(
            &format!("{base}/assign"),
            json!({"by": "oncall-1", "to": "site-engineer"}),
        )
        .await?;
    assert_eq!(
        (code, &assigned["assignee"]),
        (200, &json!("site-engineer"))
    );
    s.told("fire.confirmed_two_heads", "ack").await?;
    let trail = get_json(&s.client, &format!("{}{base}", s.http))
        .await
        .context("alarm")?;
    let kinds: Vec<&str> = trail["events"]
        .as_array()
        .context("events")?
        .iter()
        .filter_map(|e| e["kind"].as_str())
        .collect();
    assert_eq!(kinds, ["raise", "incident", "ack", "comment", "assign"]);
    // One acknowledgement for the incident: the smoke heads are acknowledged with it.
    let head = get_json(&s.client, &format!("{}/api/v1/alarms/{}", s.http, first[0]))
        .await
        .context("first smoke alarm")?;
    assert_eq!(head["acknowledged_by"], "tests", "{head}");

    // The fire is out: every alarm raised is cleared, each told once.
    s.drill("normal").await?;
    s.told("fire.confirmed_two_heads", "clear").await?;
    eventually(PATIENCE, "every fire alarm cleared", || async {
        let open = s.alarms("state=active").await;
        (!open.iter().any(|a| a["category"] == "fire")).then_some(())
    })
    .await?;
    eventually(PATIENCE, "a clear told for every raise", || async {
        let got = s.hook.received();
        let raised: Vec<u64> = got
            .iter()
            .filter(|r| r.body["kind"] == "raise")
            .map(|r| r.body["serial"].as_u64().unwrap_or(0))
            .collect();
        raised
            .iter()
            .all(|sn| {
                got.iter()
                    .any(|r| r.body["kind"] == "clear" && r.body["serial"] == *sn)
            })
            .then_some(())
    })
    .await?;
    assert!(s.hook.received().len() > raises_before);
    s.no_duplicates()?;
    // Cleared and acknowledged with the incident: closed, nothing left open.
    let closed = s.alarms("state=all&rule=fire.confirmed_two_heads").await;
    assert_eq!(closed[0]["state"], "closed");
    assert!(s
        .alarms("state=all&rule=fire.smoke")
        .await
        .iter()
        .all(|a| a["state"] == "closed"));
    assert!(!s
        .alarms("state=open")
        .await
        .iter()
        .any(|a| a["category"] == "fire"));
    // Alertmanager learns the end of the alert. Its API leaves out alerts
    // that have ended; one never told of its end would stay active for its
    // resolve_timeout (5 min), far longer than this test waits.
    eventually(PATIENCE, "resolved in Alertmanager", || async {
        let alerts = am.alerts(&s.client, "fire.confirmed_two_heads").await;
        let ended = alerts.iter().all(|a| {
            a["endsAt"]
                .as_str()
                .and_then(|t| t.parse::<jiff::Timestamp>().ok())
                .is_some_and(|t| t <= jiff::Timestamp::now())
        });
        ended.then_some(())
    })
    .await?;
    Ok(())
}

async fn thermal_runaway_raises_the_explosion_alarms_in_order_and_level_1_reaches_robot_and_email(
    store: TestStore,
) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let Some(smtp) = SmtpReceiver::start(dir.path())? else {
        return Ok(());
    };
    let robot = Receiver::start().await?;
    let secret_file = dir.path().join("dingtalk-secret");
    std::fs::write(&secret_file, "SEC-test-secret\n")?;
    let extra = format!(
        "[[alarms.channels]]\nid = \"duty-group\"\nkind = \"dingtalk\"\nurl = {:?}\n\
         secret = {{ file = {:?} }}\nlevels = [1]\n\
         [[alarms.channels]]\nid = \"mail\"\nkind = \"email\"\nurl = \"smtp://127.0.0.1:{}\"\n\
         from = \"RoomGuard <roomguard@example.com>\"\nto = [\"oncall@example.com\"]\nlevels = [1]\n",
        robot.url,
        secret_file.display().to_string(),
        smtp.port
    );
    let Some(s) = site(&store, "4", &extra).await? else {
        return Ok(());
    };
    s.drill("thermal_runaway").await?;
    // One incident in the battery room: told at the first hydrogen alarm and
    // again when 25 % LFL makes it critical; the BMS's own alarms that
    // follow are recorded under it, not told again.
    s.told("explosion.h2_warning", "raise").await?;
    s.told("explosion.h2_alarm", "raise").await?;
    let incident = s.of_rule("explosion.h2_warning").await[0]["incident"].clone();
    for rule in ["explosion.bms_fault", "explosion.cell_overtemp"] {
        let a = eventually(PATIENCE, &format!("{rule} recorded"), || async {
            s.of_rule(rule).await.into_iter().next()
        })
        .await?;
        assert_eq!(a["incident"], incident, "{a}");
        assert_eq!(a["notified"], false, "{a}");
    }
    let raised = |rule: &'static str| {
        let s = &s;
        async move {
            let a = s.of_rule(rule).await;
            a.first()
                .and_then(|a| a["raised_at"].as_str())
                .and_then(|t| t.parse::<jiff::Timestamp>().ok())
                .with_context(|| format!("{rule} raised"))
        }
    };
    let warning = raised("explosion.h2_warning").await?;
    let alarm = raised("explosion.h2_alarm").await?;
    let bms = raised("explosion.bms_fault").await?;
    assert!(warning < alarm, "10 % LFL before 25 % LFL");
    assert!(alarm < bms, "hydrogen before the BMS over-temperature bit");
    let h2 = s.of_rule("explosion.h2_alarm").await;
    assert_eq!(h2[0]["level"], 1);
    assert_eq!(h2[0]["room"], "battery-room");
    assert!(h2[0]["value"].as_f64().is_some_and(|v| v > 25.0), "{h2:?}");
    s.no_duplicates()?;

    // The level-1 hydrogen alarm reaches the DingTalk robot, signed, in Chinese.
    let h2_serial = serial(&h2[0]);
    let message = eventually(PATIENCE, "hydrogen alarm at the robot", || async {
        robot
            .received()
            .into_iter()
            .find(|r| r.key == format!("{h2_serial}:raise"))
    })
    .await?;
    assert_eq!(message.body["msgtype"], "markdown");
    let title = message.body["markdown"]["title"].as_str().unwrap_or("");
    assert!(title.contains("一级告警"), "{title}");
    let query: std::collections::HashMap<&str, &str> = message
        .uri
        .split_once('?')
        .map(|(_, q)| q.split('&').filter_map(|kv| kv.split_once('=')).collect())
        .unwrap_or_default();
    let ts: i64 = query.get("timestamp").context("timestamp")?.parse()?;
    let sign = query
        .get("sign")
        .context("sign")?
        .replace("%2B", "+")
        .replace("%2F", "/")
        .replace("%3D", "=");
    assert_eq!(
        sign,
        roomguard_collector::alarm::notify::dingtalk::sign("SEC-test-secret", ts)
    );
    assert!(robot.received().iter().all(|r| r.body["markdown"]["title"]
        .as_str()
        .is_some_and(|t| t.contains("一级"))));

    // And an email through a real SMTP server, once.
    let id = format!("<{h2_serial}.raise.mail@roomguard>");
    eventually(PATIENCE, "hydrogen alarm email", || async {
        smtp.messages()
            .iter()
            .any(|m| m.contains(&id))
            .then_some(())
    })
    .await?;
    let mails = smtp.messages();
    assert_eq!(mails.iter().filter(|m| m.contains(&id)).count(), 1);
    let mail = mails.iter().find(|m| m.contains(&id)).context("mail")?;
    assert!(mail.contains("oncall@example.com"), "{mail}");
    Ok(())
}

async fn mains_failure_inhibits_what_it_explains_and_is_told_once(store: TestStore) -> Result<()> {
    // The downstream rules wait 10 s here instead of their level's 120 s
    // (mains failure itself waits 5 s).
    let extra = "[[alarms.overrides]]\nrule = \"electrical.ups_on_battery\"\ndelay = \"10s\"\n\
                 [[alarms.overrides]]\nrule = \"electrical.frequency_low\"\ndelay = \"10s\"\n";
    let Some(s) = site(&store, "1", extra).await? else {
        return Ok(());
    };
    s.drill("mains_failure").await?;
    s.told("electrical.mains_failure", "raise").await?;
    // Only the distribution room is on the grid: the machine room's rack PDU
    // is fed by the UPS. Wait for the downstream alarms (10 s) before
    // counting, so that a second mains-failure alarm would have shown.
    let ups = eventually(PATIENCE, "UPS on battery recorded", || async {
        s.of_rule("electrical.ups_on_battery")
            .await
            .into_iter()
            .next()
    })
    .await?;
    let mains = s.of_rule("electrical.mains_failure").await;
    assert_eq!(mains.len(), 1, "one mains-failure alarm: {mains:?}");
    assert_eq!(mains[0]["room"], "distribution-room");
    let told = s.hook.of_rule("electrical.mains_failure");
    assert_eq!(told, [("raise".to_owned(), serial(&mains[0]))]);
    assert_eq!(ups["inhibited"], true, "{ups}");
    assert_eq!(ups["notified"], false);
    let freq = eventually(PATIENCE, "low frequency recorded", || async {
        s.of_rule("electrical.frequency_low")
            .await
            .into_iter()
            .next()
    })
    .await?;
    assert_eq!(freq["inhibited"], true, "{freq}");

    s.drill("normal").await?;
    s.told("electrical.mains_failure", "clear").await?;
    eventually(PATIENCE, "UPS back on mains", || async {
        let a = s.of_rule("electrical.ups_on_battery").await;
        a.iter().all(|a| !a["cleared_at"].is_null()).then_some(())
    })
    .await?;
    // Explained and over: never told.
    assert!(s.hook.of_rule("electrical.ups_on_battery").is_empty());
    assert!(s.hook.of_rule("electrical.frequency_low").is_empty());
    s.no_duplicates()?;
    Ok(())
}

async fn a_loose_neutral_raises_voltage_unbalance_from_the_agents_derived_point_alone(
    store: TestStore,
) -> Result<()> {
    // 10 s instead of level 3's 180 s, and a quick clear.
    let extra = "[[alarms.overrides]]\nrule = \"electrical.voltage_unbalance\"\ndelay = \"10s\"\nclear_delay = \"2s\"\n";
    let Some(s) = site(&store, "1", extra).await? else {
        return Ok(());
    };
    // The derived points are there in normal running: the meter's unbalance
    // is small, and the inlet sensor's dew point is its own temperature and
    // humidity worked through the Magnus formula.
    // Described, too: a reading can reach the collector before its device's
    // description (a batch carrying it that was lost on the way is sent
    // again later) and is stored undescribed until then; seen once in CI.
    let unb = eventually(
        PATIENCE,
        "voltage unbalance stored and described",
        || async {
            latest_point(&s.client, &s.http, "pd-meter-1.voltage_unbalance")
                .await
                .filter(|p| p["quantity"] != "")
        },
    )
    .await?;
    assert_eq!(unb["quantity"], "voltage_unbalance", "{unb}");
    assert!(
        unb["value"]
            .as_f64()
            .is_some_and(|v| (0.0..2.0).contains(&v)),
        "{unb}"
    );
    let dew = eventually(PATIENCE, "dew point stored and described", || async {
        latest_point(&s.client, &s.http, "mr-th-inlet.dew_point")
            .await
            .filter(|p| p["quantity"] != "")
    })
    .await?;
    assert_eq!(
        (dew["quantity"].as_str(), dew["unit"].as_str()),
        (Some("dew_point"), Some("°C"))
    );
    let t = latest_point(&s.client, &s.http, "mr-th-inlet.temperature")
        .await
        .context("temperature")?;
    let rh = latest_point(&s.client, &s.http, "mr-th-inlet.humidity")
        .await
        .context("humidity")?;
    let (t, rh, dp) = (
        t["value"].as_f64().unwrap_or(f64::NAN),
        rh["value"].as_f64().unwrap_or(f64::NAN),
        dew["value"].as_f64().unwrap_or(f64::NAN),
    );
    // Within the sensor's noise of the same poll: 1 °C either way.
    let g = (rh / 100.0).ln() + 17.625 * t / (243.04 + t);
    let want = 243.04 * g / (17.625 - g);
    assert!(
        (dp - want).abs() < 1.0,
        "dew point {dp} from {t} °C and {rh} %: want {want}"
    );

    s.drill("phase_unbalance").await?;
    s.told("electrical.voltage_unbalance", "raise").await?;
    // Both meters and the Eaton UPS's input (an SNMP derived point) read
    // the same phases: one alarm each, in one incident told once.
    let alarms = eventually(PATIENCE, "every source's unbalance recorded", || async {
        let alarms = s.of_rule("electrical.voltage_unbalance").await;
        (alarms.len() == 3).then_some(alarms)
    })
    .await?;
    let lead = alarms.iter().map(serial).min().context("first")?;
    assert!(
        alarms.iter().all(|a| a["incident"] == json!(lead)),
        "{alarms:?}"
    );
    let told = s.hook.of_rule("electrical.voltage_unbalance");
    assert_eq!(told, [("raise".to_owned(), lead)]);
    for point in [
        "pd-meter-1.voltage_unbalance",
        "pd-meter-2.voltage_unbalance",
        "pd-ups-2.input_voltage_unbalance",
    ] {
        assert!(
            alarms.iter().any(|a| a["point"] == point),
            "{point}: {alarms:?}"
        );
    }
    // Each phase stayed inside 198–235.4 V: only the unbalance said it.
    assert!(s.of_rule("electrical.voltage_low").await.is_empty());
    assert!(s.of_rule("electrical.voltage_high").await.is_empty());

    s.drill("normal").await?;
    s.told("electrical.voltage_unbalance", "clear").await?;
    s.no_duplicates()?;
    Ok(())
}

async fn a_silenced_room_is_recorded_and_told_after_the_window_through_a_failing_receiver(
    store: TestStore,
) -> Result<()> {
    // A second channel nobody listens on: its notifications become dead letters.
    let extra = "[[alarms.channels]]\nid = \"nobody\"\nkind = \"webhook\"\n\
                 url = \"http://127.0.0.1:1/hook\"\nmax_attempts = 2\ntimeout = \"1s\"\n";
    let Some(s) = site(&store, "4", extra).await? else {
        return Ok(());
    };
    s.hook.set_failing(true);
    let (code, silence) = s
        .post(
            "/api/v1/silences",
            json!({"site": "demo-site", "room": "machine-room", "reason": "hot work: welding",
                   "owner": "site-engineer", "ends_at": "now+1h"}),
        )
        .await?;
    assert_eq!(code, 201, "{silence}");
    let (code, refused) = s
        .post(
            "/api/v1/silences",
            json!({"site": "demo-site", "reason": "x", "owner": "y", "ends_at": "now-1h"}),
        )
        .await?;
    assert_eq!(code, 400, "a window in the past is refused: {refused}");

    s.drill("smoke").await?;
    let smoke = eventually(PATIENCE, "smoke recorded while silenced", || async {
        let a = s.of_rule("fire.smoke").await;
        (!a.is_empty()).then_some(a)
    })
    .await?;
    assert_eq!(smoke[0]["silenced_by"], silence["id"]);
    assert_eq!(smoke[0]["notified"], false);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(s.hook.attempts(), 0, "nothing sent during the window");

    // The hot work is over while the smoke is still there: it is told now,
    // through a receiver that fails at first.
    let (code, ended) = s
        .post(
            &format!("/api/v1/silences/{}/end", silence["id"]),
            json!({"by": "site-engineer"}),
        )
        .await?;
    assert_eq!(code, 200, "{ended}");
    eventually(
        PATIENCE,
        "attempts against the failing receiver",
        || async { (s.hook.attempts() >= 2).then_some(()) },
    )
    .await?;
    s.hook.set_failing(false);
    let told = s.told("fire.smoke", "raise").await?;
    assert!(!told.is_empty());
    // What failed is delivered on a later attempt, after its backoff; other
    // notifications may have got through at their first.
    eventually(
        PATIENCE,
        "a notification delivered after failing",
        || async {
            let outbox = get_json(
                &s.client,
                &format!("{}/api/v1/notifications?state=sent", s.http),
            )
            .await?;
            outbox["notifications"]
                .as_array()?
                .iter()
                .any(|n| n["channel"] == "hook" && n["attempts"].as_i64() >= Some(2))
                .then_some(())
        },
    )
    .await?;
    s.no_duplicates()?;
    let dead = eventually(
        PATIENCE,
        "dead letters of the unreachable channel",
        || async {
            let v = get_json(
                &s.client,
                &format!("{}/api/v1/notifications?state=dead", s.http),
            )
            .await?;
            let rows = v["notifications"].as_array()?.clone();
            (!rows.is_empty()).then_some(rows)
        },
    )
    .await?;
    assert!(
        dead.iter()
            .all(|n| n["channel"] == "nobody" && n["attempts"] == 2),
        "{dead:?}"
    );
    assert!(dead[0]["last_error"]
        .as_str()
        .is_some_and(|e| !e.is_empty()));
    Ok(())
}

on_both!(an_unacknowledged_alarm_is_repeated_then_escalated_once_until_acknowledged);

/// The alarm record's timers through the store writer itself, on a clock
/// of the test's: an unacknowledged level-1 alarm is repeated every 15
/// minutes, escalated once after 30, and nothing more follows its
/// acknowledgement (an acknowledgement made through the API's path).
async fn an_unacknowledged_alarm_is_repeated_then_escalated_once_until_acknowledged(
    store: TestStore,
) -> Result<()> {
    use roomguard_collector::alarm::lifecycle::{Escalation, Route};
    use roomguard_collector::alarm::rules::RuleSet;
    use roomguard_collector::store::alarms::{self as record, Action, AlarmSetup};
    use roomguard_collector::store::backend::Writer;
    use roomguard_protocol::{Batch, PointMeta, Quality, Reading, PROTOCOL_VERSION};
    use std::sync::Arc;
    const T0: i64 = 1_800_000_000_000;
    const MIN: i64 = 60_000;
    let rules = Arc::new(
        RuleSet::from_texts(
            &[(
                "t.toml".into(),
                "pack = \"t\"\n[[rule]]\nid = \"t.smoke\"\nname = \"smoke\"\ncategory = \"fire\"\n\
                 level = 1\nlife_safety = true\nsource = \"test\"\n\
                 select = { quantity = [\"smoke\"] }\nwhen = { equals = 1 }\nclear_delay = \"0s\"\n"
                    .into(),
            )],
            Vec::new(),
        )
        .map_err(|e| anyhow::anyhow!("{e}"))?,
    );
    let route = |channel: &str, escalation_only| Route {
        channel: channel.into(),
        levels: vec![1, 2, 3, 4],
        escalation_only,
        lifecycle: true,
        drills: true,
    };
    let routes = vec![route("oncall", false), route("boss", true)];
    let setup = AlarmSetup {
        rules: rules.clone(),
        routes: routes.clone(),
        escalation: Escalation {
            levels: vec![1, 2],
            repeat_every_ms: 15 * MIN,
            escalate_after_ms: 30 * MIN,
        },
    };
    let dir = tempfile::tempdir()?;
    let (writer, reads, _) = store.open(dir.path(), "escalation")?;
    let smoke = Batch {
        v: PROTOCOL_VERSION,
        site: "s".into(),
        agent: "a".into(),
        seq: 1,
        device: "d".into(),
        polled_at: T0,
        backfill: false,
        points: vec![PointMeta {
            id: "d.smoke".into(),
            room: "mr".into(),
            quantity: "smoke".into(),
            unit: "".into(),
        }],
        readings: vec![Reading {
            point: "d.smoke".into(),
            value: Some(1.0),
            text: None,
            ts: T0,
            quality: Quality::Good,
        }],
    };
    // The writer blocks (on PostgreSQL it drives a runtime of its own), so
    // the whole play runs on a blocking thread; people's actions and the
    // outbox go through the API's path.
    let handle = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || -> Result<()> {
        let mut w = writer.with_alarms(setup, T0)?;
        let outbox = || -> Result<Vec<String>> {
            let rows = handle.block_on(reads.read(async |c| {
                c.rows("SELECT channel || ' ' || key FROM outbox ORDER BY id", &[])
                    .await
            }))?;
            Ok(rows.iter().map(|r| r.get(0)).collect::<Result<_, _>>()?)
        };
        // Enough maintenance calls at `now` for one sweep.
        let sweep = |w: &mut Writer, now: i64| -> Result<()> {
            for _ in 0..5 {
                w.maintain(now)?;
            }
            Ok(())
        };
        let act = |by: &'static str, comment: Option<&'static str>, at: i64| {
            let (rules, routes) = (rules.clone(), routes.clone());
            handle.block_on(reads.write(async move |c| {
                record::act(
                    c,
                    &rules,
                    &routes,
                    1,
                    by,
                    Action::Acknowledge { comment },
                    at,
                )
                .await
            }))
        };
        w.write_batches(&[smoke], T0)?;
        assert_eq!(outbox()?, ["oncall 1:raise"]);
        sweep(&mut w, T0 + 14 * MIN)?;
        assert_eq!(outbox()?.len(), 1, "not yet");
        sweep(&mut w, T0 + 16 * MIN)?;
        sweep(&mut w, T0 + 17 * MIN)?;
        assert_eq!(outbox()?, ["oncall 1:raise", "oncall 1:repeat1"]);
        sweep(&mut w, T0 + 31 * MIN)?;
        sweep(&mut w, T0 + 32 * MIN)?;
        assert_eq!(
            outbox()?,
            [
                "oncall 1:raise",
                "oncall 1:repeat1",
                "oncall 1:repeat2",
                "boss 1:escalate"
            ]
        );
        let (a, queued) = act("oncall-1", Some("on it"), T0 + 33 * MIN)?;
        assert_eq!((a.state, queued), ("acknowledged", 1));
        sweep(&mut w, T0 + 46 * MIN)?;
        assert_eq!(
            outbox()?.last().map(String::as_str),
            Some("oncall 1:ack"),
            "no repeats once acknowledged"
        );
        assert!(matches!(
            act("x", None, T0 + 47 * MIN),
            Err(record::RecordError::Conflict(_))
        ));
        Ok(())
    })
    .await??;
    Ok(())
}

async fn a_declared_drill_marks_its_alarms_and_keeps_them_from_channels_that_take_no_drills(
    store: TestStore,
) -> Result<()> {
    // A second channel, for real alarms only; the door alarm clears at once.
    let managers = Receiver::start().await?;
    let extra = format!(
        "[[alarms.channels]]\nid = \"managers\"\nkind = \"webhook\"\nurl = {:?}\ntimeout = \"2s\"\ndrills = false\n\
         [[alarms.overrides]]\nrule = \"environment.door_open\"\nclear_delay = \"0s\"\n",
        managers.url
    );
    let Some(s) = site(&store, "1", &extra).await? else {
        return Ok(());
    };
    const DOOR: &str = "environment.door_open";
    // Declared for the battery room without an end: it gets one.
    let (status, d) = s
        .post(
            "/api/v1/drills",
            json!({"site": "demo-site", "room": "battery-room", "scenario": "door_open"}),
        )
        .await?;
    ensure!(status == 201, "{status} {d}");
    let id = d["id"].as_i64().context("drill id")?;
    ensure!(d["ended_at"].is_string(), "{d}");
    s.drill("door_open").await?;
    let told = s.told(DOOR, "raise").await?;
    let alarms = s.of_rule(DOOR).await;
    assert_eq!(alarms.len(), 1, "{alarms:?}");
    assert_eq!(alarms[0]["drill"], json!(id), "{}", alarms[0]);
    let drill_serial = serial(&alarms[0]);
    assert_eq!(told, [drill_serial]);
    let body = s
        .hook
        .received()
        .into_iter()
        .find(|r| r.body["rule"] == DOOR)
        .context("the drill's raise")?
        .body;
    assert_eq!(body["drill"], json!(id), "{body}");

    // Over: the drill is ended early, and the door left open again is real.
    s.drill("normal").await?;
    s.told(DOOR, "clear").await?;
    let (status, ended) = s
        .post(&format!("/api/v1/drills/{id}/end"), json!({}))
        .await?;
    ensure!(status == 200, "{status} {ended}");
    let (status, missing) = s.post("/api/v1/drills/99999/end", json!({})).await?;
    ensure!(status == 404, "an unknown drill: {status} {missing}");
    s.drill("door_open").await?;
    let real = eventually(
        PATIENCE,
        "the real door alarm told to the managers",
        || async {
            managers
                .of_rule(DOOR)
                .into_iter()
                .find(|(k, _)| k == "raise")
                .map(|(_, serial)| serial)
        },
    )
    .await?;
    assert_ne!(real, drill_serial);
    // The managers' channel never heard of the drill.
    assert!(
        managers
            .of_rule(DOOR)
            .iter()
            .all(|(_, s)| *s != drill_serial),
        "{:?}",
        managers.of_rule(DOOR)
    );
    let real_alarm = s
        .of_rule(DOOR)
        .await
        .into_iter()
        .find(|a| serial(a) == real)
        .context("the real alarm")?;
    assert_eq!(real_alarm["drill"], Value::Null, "{real_alarm}");
    // Lists can keep them apart.
    let only_drills = s.alarms(&format!("state=all&rule={DOOR}&drill=true")).await;
    assert_eq!(
        only_drills.iter().map(serial).collect::<Vec<_>>(),
        [drill_serial]
    );
    let only_real = s
        .alarms(&format!("state=all&rule={DOOR}&drill=false"))
        .await;
    assert_eq!(only_real.iter().map(serial).collect::<Vec<_>>(), [real]);
    // The drill's record: one alarm, the first within seconds of its start.
    let list = get_json(&s.client, &format!("{}/api/v1/drills", s.http))
        .await
        .context("drills")?;
    let d = list["drills"]
        .as_array()
        .and_then(|l| l.iter().find(|d| d["id"] == json!(id)).cloned())
        .context("the drill in the list")?;
    assert_eq!(
        (&d["alarms"], &d["worst_level"]),
        (&json!(1), &json!(4)),
        "{d}"
    );
    ensure!(d["first_alarm_s"].as_i64().is_some(), "{d}");
    s.no_duplicates()?;
    Ok(())
}
