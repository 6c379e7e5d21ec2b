//! The web UI in a real browser (Debian's headless Chromium through
//! ChromeDriver) against a running simulator, agent, Mosquitto and collector:
//! log in, watch a value change live, acknowledge an alarm from the console,
//! follow a collector restart without reloading, switch language.
//! Screenshots of each main view are kept in `tests/artifacts/screenshots/`.

use anyhow::{ensure, Context, Result};
use roomguard_e2e::browser::Browser;
use roomguard_e2e::*;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::time::Duration;

const PATIENCE: Duration = Duration::from_secs(60);

fn shots() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("artifacts/screenshots")
}

/// The text of the first element matching `css`, or "" (JavaScript).
fn text_of(css: &str) -> String {
    format!("const e = document.querySelector({css:?}); return e ? e.textContent.trim() : '';")
}

#[tokio::test(flavor = "multi_thread")]
async fn the_dashboard_shows_live_values_acknowledges_alarms_and_speaks_chinese() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let Some(broker) = Mosquitto::start(dir.path())? else {
        return Ok(());
    };
    let Some(browser) = Browser::start(dir.path(), 1400, 1000).await? else {
        return Ok(());
    };
    let (_sim, addrs) = start_simulator(dir.path(), &["--speed", "1"])?;
    // Notifications go to the collector's own inbox, as in the demo.
    // Rooms are named as people name them.
    let inbox = "[alarms]\n[[alarms.channels]]\nid = \"inbox\"\nkind = \"inbox\"\n\
                 [[names]]\nsite = \"demo-site\"\nroom = \"battery-room\"\nname = \"3F 电池室\"\nname_en = \"3F battery room\"\n";
    let (collector, http, _) = start_collector_with(dir.path(), Some(&broker.url()), inbox)?;
    let agent_conf = demo_agent_config(&addrs, &broker.url(), &dir.path().join("agent-state"))?;
    let _agent = start_agent(dir.path(), &agent_conf)?;
    let client = http_client();
    let h2 = "demo-site/br-h2-1.h2";
    let h2_value = format!("[data-point={h2:?}] .value");

    // Log in as a person would.
    browser.goto(&format!("{http}/")).await?;
    browser.type_into("#login-user", "admin", PATIENCE).await?;
    browser
        .type_into("#login-password", "admin-test-password", PATIENCE)
        .await?;
    browser.click("#login-submit", PATIENCE).await?;
    browser
        .wait_for(
            "logged in",
            PATIENCE,
            &format!("return {} === 'admin';", js_text("#whoami")),
        )
        .await?;

    // The overview: a tile per room, live values, the stream open.
    browser
        .find("[data-room=\"demo-site/battery-room\"]", PATIENCE)
        .await?;
    browser
        .wait_for("event stream open", PATIENCE, "const s = document.querySelector('#live-status'); return s && s.dataset.state === 'live';")
        .await?;
    let before = browser
        .wait_for("hydrogen value shown", PATIENCE, &text_of(&h2_value))
        .await?;
    let before = number(&before)?;
    ensure!(before < 5.0, "normal air: {before}");
    browser
        .wait_for(
            "the battery room by its name",
            PATIENCE,
            &format!(
                "return {} === '3F battery room' ? 'ok' : '';",
                js_text("[data-room=\"demo-site/battery-room\"] .tile-name")
            ),
        )
        .await?;
    // The figures of a power incident: the hottest cell and the batteries'
    // charge in the battery room, the UPS's runtime left and load.
    for (room, group, unit) in [
        ("battery-room", "cell", "°C"),
        ("battery-room", "soc", "%"),
        ("distribution-room", "runtime", "min"),
        ("distribution-room", "load", "%"),
    ] {
        browser
            .wait_for(
                &format!("{group} on the {room} tile"),
                PATIENCE,
                &format!(
                    "const r = document.querySelector('[data-room=\"demo-site/{room}\"] .kv-row[data-group=\"{group}\"] dd'); \
                     const t = r ? r.textContent : ''; return t.includes('{unit}') ? t : '';"
                ),
            )
            .await?;
    }
    browser.screenshot(&shots().join("overview.png")).await?;

    // The simulator starts off-gassing; the page follows without a reload.
    browser
        .eval("window.__sameDocument = true;", vec![])
        .await?;
    drill(&client, &addrs.control, "thermal_runaway").await?;
    let rising = browser
        .wait_for(
            "hydrogen rising on the page",
            PATIENCE,
            &format!(
                "const t = (document.querySelector({h2_value:?}) || {{}}).textContent || ''; \
                 const v = parseFloat(t); return v > 10 ? t : '';"
            ),
        )
        .await?;
    let api = latest_point(&client, &http, "br-h2-1.h2")
        .await
        .context("hydrogen in the API")?;
    ensure!(api["value"].as_f64().is_some_and(|v| v > 10.0), "{api}");
    ensure!(
        browser
            .eval("return window.__sameDocument === true;", vec![])
            .await?
            == json!(true),
        "the page reloaded"
    );
    eprintln!("hydrogen on the page: {rising}");

    // The level-1 hydrogen alarm colours the battery room's tile.
    browser
        .wait_for(
            "battery room tile at level 1",
            PATIENCE,
            "const t = document.querySelector('[data-room=\"demo-site/battery-room\"]'); return t && t.dataset.level === '1';",
        )
        .await?;
    browser
        .screenshot(&shots().join("overview-alarm.png"))
        .await?;

    // Acknowledge it from the console, with a comment.
    let alarm = eventually(PATIENCE, "hydrogen alarm in the API", || async {
        get_json(
            &client,
            &format!("{http}/api/v1/alarms?rule=explosion.h2_alarm"),
        )
        .await
        .and_then(|v| v["alarms"].as_array().and_then(|a| a.first().cloned()))
    })
    .await?;
    let serial = alarm["serial"].as_u64().context("serial")?;
    browser.click("a[data-nav=\"alarms\"]", PATIENCE).await?;
    // Beside the value at the raise, what the point reads now, live, and
    // which point it is.
    browser
        .wait_for(
            "the hydrogen reading now, in the alarm",
            PATIENCE,
            &format!(
                "const r = document.querySelector('[data-alarm=\"{serial}\"]'); \
                 const now = r && r.querySelector('.pv .value'); \
                 const point = r && r.querySelector('a[href=\"#/point/demo-site/br-h2-1.h2\"]'); \
                 return now && point && now.textContent.includes('%LFL') ? now.textContent : '';"
            ),
        )
        .await?;
    browser
        .click(
            &format!("[data-alarm=\"{serial}\"] [data-action=\"ack\"]"),
            PATIENCE,
        )
        .await?;
    browser
        .type_into("#ack-comment", "ventilation started, on my way", PATIENCE)
        .await?;
    browser
        .screenshot(&shots().join("alarm-ack-dialog.png"))
        .await?;
    browser.click("#ack-confirm", PATIENCE).await?;
    let acked = eventually(PATIENCE, "acknowledgement recorded", || async {
        get_json(&client, &format!("{http}/api/v1/alarms/{serial}"))
            .await
            .filter(|a| !a["acknowledged_at"].is_null())
    })
    .await?;
    assert_eq!(acked["acknowledged_by"], "admin", "{acked}");
    assert_eq!(acked["comment"], "ventilation started, on my way");
    // One fault, one incident: the 10 % warning before it is in the same
    // card and was acknowledged with it.
    let incident = acked["incident"].as_u64().context("incident")?;
    let warning = get_json(
        &client,
        &format!("{http}/api/v1/alarms?state=all&rule=explosion.h2_warning"),
    )
    .await
    .and_then(|v| v["alarms"].as_array().and_then(|a| a.first().cloned()))
    .context("hydrogen warning")?;
    assert_eq!(warning["incident"], json!(incident), "{warning}");
    assert_eq!(warning["acknowledged_by"], "admin", "{warning}");
    browser
        .find(
            &format!(
                "[data-incident=\"{incident}\"] [data-alarm=\"{}\"]",
                warning["serial"]
            ),
            PATIENCE,
        )
        .await?;
    browser
        .wait_for(
            "the console shows it acknowledged",
            PATIENCE,
            &format!(
                "const r = document.querySelector('[data-alarm=\"{serial}\"]'); \
                 return r && r.dataset.state === 'acknowledged';"
            ),
        )
        .await?;
    browser.screenshot(&shots().join("alarms.png")).await?;

    // The Notifications page shows what on-call staff were told: the
    // hydrogen incident's first message and its follow-up, as robot text.
    browser.click("a[data-nav=\"inbox\"]", PATIENCE).await?;
    let told = browser
        .wait_for(
            "the hydrogen alarm in the inbox",
            PATIENCE,
            "const m = [...document.querySelectorAll('.inbox-msg[data-kind=\"raise\"] .inbox-text')] \
               .map((e) => e.textContent).find((t) => t.includes('Hydrogen at 25')); return m || '';",
        )
        .await?;
    let told = told.as_str().unwrap_or("");
    ensure!(
        told.contains("[critical alarm]") && told.contains("battery-room"),
        "{told}"
    );
    browser.screenshot(&shots().join("inbox.png")).await?;
    // The link a notification carries opens that alarm with its trail.
    browser.goto(&format!("{http}/#alarm/{serial}")).await?;
    browser
        .wait_for(
            "the linked alarm and its trail",
            PATIENCE,
            &format!(
                "const f = document.querySelector('.alarm-focus:not([hidden])'); \
                 return f && f.querySelector('[data-alarm=\"{serial}\"]') && \
                   /acknowledged/.test(f.querySelector('.trail')?.textContent || '') ? 'ok' : '';"
            ),
        )
        .await?;
    browser
        .screenshot(&shots().join("alarm-linked.png"))
        .await?;

    // Room view and point history.
    browser
        .goto(&format!("{http}/#/room/demo-site/battery-room"))
        .await?;
    browser.find("#view-room", PATIENCE).await?;
    browser
        .wait_for(
            "room values",
            PATIENCE,
            &text_of(&format!("#view-room {h2_value}")),
        )
        .await?;
    browser.screenshot(&shots().join("room.png")).await?;
    browser
        .goto(&format!("{http}/#/point/demo-site/br-h2-1.h2"))
        .await?;
    browser
        .wait_for(
            "history chart drawn",
            PATIENCE,
            "return !!document.querySelector('#view-point canvas');",
        )
        .await?;
    browser.screenshot(&shots().join("point.png")).await?;

    // The collector restarts on the same address; the page reconnects by
    // itself and keeps updating.
    browser.click("a[data-nav=\"overview\"]", PATIENCE).await?;
    browser
        .wait_for("overview values", PATIENCE, &text_of(&h2_value))
        .await?;
    browser
        .eval("window.__sameDocument = true;", vec![])
        .await?;
    let listen = http.trim_start_matches("http://").to_owned();
    drop(collector);
    browser
        .wait_for(
            "stream lost",
            PATIENCE,
            "return document.querySelector('#live-status').dataset.state !== 'live';",
        )
        .await?;
    let (_collector, http2, _) =
        start_collector_at(dir.path(), Some(&broker.url()), inbox, &listen)?;
    assert_eq!(http2, http);
    browser
        .wait_for(
            "stream back",
            PATIENCE,
            "return document.querySelector('#live-status').dataset.state === 'live';",
        )
        .await?;
    drill(&client, &addrs.control, "normal").await?;
    browser
        .wait_for(
            "hydrogen falling after the restart",
            Duration::from_secs(120),
            &format!(
                "const t = (document.querySelector({h2_value:?}) || {{}}).textContent || ''; \
                 const v = parseFloat(t); return t && v < 5 ? t : '';"
            ),
        )
        .await?;
    ensure!(
        browser
            .eval("return window.__sameDocument === true;", vec![])
            .await?
            == json!(true),
        "the page reloaded"
    );

    // A drill declared from the console: its alarm carries the drill badge,
    // and ending it from the console ends it in the store.
    browser.goto(&format!("{http}/#/alarms")).await?;
    browser.click(".drill-new", PATIENCE).await?;
    browser
        .find("#drill-room option[value=\"battery-room\"]", PATIENCE)
        .await?;
    browser
        .eval(
            "const r = document.querySelector('#drill-room'); r.value = 'battery-room'; \
             r.dispatchEvent(new Event('change', { bubbles: true }));",
            vec![],
        )
        .await?;
    browser
        .type_into("#drill-scenario", "door_open", PATIENCE)
        .await?;
    browser
        .screenshot(&shots().join("drill-dialog.png"))
        .await?;
    browser.click("#drill-confirm", PATIENCE).await?;
    let declared = eventually(PATIENCE, "drill declared", || async {
        get_json(&client, &format!("{http}/api/v1/drills"))
            .await
            .and_then(|v| v["drills"].as_array().and_then(|a| a.first().cloned()))
    })
    .await?;
    assert_eq!(
        (&declared["room"], &declared["scenario"], &declared["by"]),
        (&json!("battery-room"), &json!("door_open"), &json!("admin")),
        "{declared}"
    );
    let drill_id = declared["id"].as_i64().context("drill id")?;
    browser
        .find(&format!("[data-drill=\"{drill_id}\"]"), PATIENCE)
        .await?;
    drill(&client, &addrs.control, "door_open").await?;
    let door = eventually(PATIENCE, "door alarm in the API", || async {
        get_json(
            &client,
            &format!("{http}/api/v1/alarms?rule=environment.door_open"),
        )
        .await
        .and_then(|v| v["alarms"].as_array().and_then(|a| a.first().cloned()))
    })
    .await?;
    assert_eq!(door["drill"], json!(drill_id), "{door}");
    browser
        .find(
            &format!("[data-alarm=\"{}\"] .badge-drill", door["serial"]),
            PATIENCE,
        )
        .await?;
    browser
        .screenshot(&shots().join("alarms-drill.png"))
        .await?;
    // Selected and acknowledged together from the console.
    browser
        .click(
            &format!(
                "[data-incident=\"{}\"] input.pick-incident",
                door["incident"]
            ),
            PATIENCE,
        )
        .await?;
    browser.click(".ack-selected", PATIENCE).await?;
    eventually(PATIENCE, "the selection acknowledged", || async {
        get_json(&client, &format!("{http}/api/v1/alarms/{}", door["serial"]))
            .await
            .filter(|a| a["acknowledged_by"] == "admin")
    })
    .await?;
    browser
        .click(
            &format!("[data-drill=\"{drill_id}\"] [data-action=\"end-drill\"]"),
            PATIENCE,
        )
        .await?;
    browser
        .wait_for(
            "the drill gone from the running list",
            PATIENCE,
            &format!("return !document.querySelector('[data-drill=\"{drill_id}\"]');"),
        )
        .await?;
    let ended = get_json(&client, &format!("{http}/api/v1/drills"))
        .await
        .and_then(|v| v["drills"].as_array().and_then(|a| a.first().cloned()))
        .context("the drill")?;
    let end = ended["ended_at"].as_str().context("ended_at")?;
    let end: jiff::Timestamp = end.parse()?;
    ensure!(
        end <= jiff::Timestamp::now(),
        "ended from the console: {ended}"
    );
    drill(&client, &addrs.control, "normal").await?;

    // An inspector's work: a walk-through signed by the logged-in user, and a
    // hazard opened from the register.
    browser.goto(&format!("{http}/#/patrols")).await?;
    browser.click("#patrol-new", PATIENCE).await?;
    browser
        .click(
            "[data-check=\"battery_ventilation\"] input[value=\"fail\"]",
            PATIENCE,
        )
        .await?;
    browser
        .click(
            "[data-check=\"extinguishers\"] input[value=\"pass\"]",
            PATIENCE,
        )
        .await?;
    browser
        .screenshot(&shots().join("patrol-walk-through.png"))
        .await?;
    browser.click("#patrol-submit", PATIENCE).await?;
    let walk = eventually(PATIENCE, "walk-through recorded", || async {
        get_json(&client, &format!("{http}/api/v1/patrols?kind=manual"))
            .await
            .and_then(|v| v["patrols"].as_array().and_then(|a| a.first().cloned()))
    })
    .await?;
    assert_eq!(walk["by"], "admin", "{walk}");
    assert_eq!(walk["summary"]["failed"], 1, "{walk}");
    assert_eq!(walk["summary"]["checked"], 2, "{walk}");
    // The page shows the signed record.
    browser
        .wait_for(
            "the signed record shown",
            PATIENCE,
            "const d = document.querySelector('#dlg-patrol'); return !!(d && d.open);",
        )
        .await?;
    browser
        .screenshot(&shots().join("patrol-record.png"))
        .await?;
    browser.goto(&format!("{http}/#/hazards")).await?;
    browser.click("#hazard-new", PATIENCE).await?;
    browser
        .type_into("#hazard-room", "battery-room", PATIENCE)
        .await?;
    browser
        .type_into("#hazard-description", "Exhaust fan 2 seized", PATIENCE)
        .await?;
    browser
        .eval(
            "const c = document.querySelector('#hazard-category'); c.value = 'explosion'; \
             c.dispatchEvent(new Event('change', { bubbles: true }));",
            vec![],
        )
        .await?;
    browser.click("#hazard-submit", PATIENCE).await?;
    browser.screenshot(&shots().join("hazard-new.png")).await?;
    let hz = eventually(PATIENCE, "hazard registered", || async {
        get_json(&client, &format!("{http}/api/v1/hazards"))
            .await
            .and_then(|v| {
                v["hazards"]
                    .as_array()
                    .and_then(|a| a.iter().find(|h| h["found_by"] == "admin").cloned())
            })
    })
    .await?;
    assert_eq!(hz["description"], "Exhaust fan 2 seized");
    assert_eq!(hz["status"], "open");
    browser
        .find(&format!("[data-hazard=\"{}\"]", hz["id"]), PATIENCE)
        .await?;
    browser.screenshot(&shots().join("hazards.png")).await?;
    browser.goto(&format!("{http}/#/reports")).await?;
    browser.find("#report-print", PATIENCE).await?;
    browser.screenshot(&shots().join("reports.png")).await?;
    browser.goto(&format!("{http}/#/")).await?;

    // 中文.
    switch_language(&browser).await?;
    browser
        .wait_for(
            "Chinese",
            PATIENCE,
            "return document.documentElement.lang === 'zh-CN';",
        )
        .await?;
    let nav = browser
        .wait_for(
            "Chinese navigation",
            PATIENCE,
            &format!(
                "const t = {}; return /告警/.test(t) ? t : '';",
                js_text("a[data-nav=\"alarms\"]")
            ),
        )
        .await?;
    eprintln!("alarm console link in Chinese: {nav}");
    browser
        .wait_for(
            "the battery room by its Chinese name",
            PATIENCE,
            &format!(
                "return {} === '3F 电池室' ? 'ok' : '';",
                js_text("[data-room=\"demo-site/battery-room\"] .tile-name")
            ),
        )
        .await?;
    browser.screenshot(&shots().join("overview-zh.png")).await?;
    Ok(())
}

/// JavaScript for the trimmed text of the first match of `css`.
fn js_text(css: &str) -> String {
    format!("((document.querySelector({css:?}) || {{}}).textContent || '').trim()")
}

fn number(v: &Value) -> Result<f64> {
    let t = v.as_str().context("text")?;
    t.trim()
        .split(|c: char| !(c.is_ascii_digit() || c == '.' || c == '-'))
        .find(|s| !s.is_empty())
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("no number in {t:?}"))
}

/// Clicks the language switch, or picks zh-CN when it is a select.
async fn switch_language(b: &Browser) -> Result<()> {
    let switch = b.find("#lang-switch", PATIENCE).await?;
    let is_select = b
        .eval(
            "return document.querySelector('#lang-switch').tagName === 'SELECT';",
            vec![],
        )
        .await?;
    if is_select == json!(true) {
        b.eval(
            "const s = document.querySelector('#lang-switch'); s.value = 'zh-CN'; \
             s.dispatchEvent(new Event('change', { bubbles: true }));",
            vec![],
        )
        .await?;
    } else {
        switch.click().await?;
    }
    Ok(())
}

/// JavaScript: "" when the page is no wider than the viewport and no table
/// scrolls sideways in its wrapper, else what sticks out: the widths and the
/// elements past the viewport's right edge, or the tables.
const OVERFLOW: &str = "const w = window.innerWidth; const sw = document.documentElement.scrollWidth; \
    const scrolled = [...document.querySelectorAll('.table-wrap')] \
      .filter((t) => t.getClientRects().length && t.scrollWidth > t.clientWidth + 1) \
      .map((t) => 'a table scrolls sideways: ' + t.scrollWidth + ' in ' + t.clientWidth + ' (' + (t.querySelector('th') || {}).textContent + ')'); \
    if (sw <= w) return scrolled.join(', '); \
    const wide = [...document.querySelectorAll('body *')] \
      .filter((e) => e.getBoundingClientRect().right > w + 0.5 && e.getClientRects().length) \
      .slice(-8) \
      .map((e) => e.tagName.toLowerCase() + (e.id ? '#' + e.id : '') + \
        (typeof e.className === 'string' && e.className ? '.' + e.className.trim().split(/\\s+/).join('.') : '') + \
        ' ' + Math.round(e.getBoundingClientRect().right)); \
    return sw + ' > ' + w + ': ' + wide.join(', ');";

#[tokio::test(flavor = "multi_thread")]
async fn every_view_fits_a_phone_360_px_wide_without_horizontal_scroll() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let Some(broker) = Mosquitto::start(dir.path())? else {
        return Ok(());
    };
    let Some(browser) = Browser::start_phone(dir.path(), 360, 780).await? else {
        return Ok(());
    };
    let (_sim, addrs) = start_simulator(dir.path(), &["--speed", "4"])?;
    let (_collector, http, _) = start_collector_with(dir.path(), Some(&broker.url()), "")?;
    let agent_conf = demo_agent_config(&addrs, &broker.url(), &dir.path().join("agent-state"))?;
    let _agent = start_agent(dir.path(), &agent_conf)?;
    let client = http_client();
    browser.goto(&format!("{http}/")).await?;
    let width = browser.eval("return window.innerWidth;", vec![]).await?;
    assert_eq!(width, json!(360), "the emulated phone's viewport");
    browser.type_into("#login-user", "admin", PATIENCE).await?;
    browser
        .type_into("#login-password", "admin-test-password", PATIENCE)
        .await?;
    browser.click("#login-submit", PATIENCE).await?;
    browser
        .find("[data-room=\"demo-site/battery-room\"]", PATIENCE)
        .await?;
    // Alarms to show: a hydrogen incident in the battery room, and a drill.
    drill(&client, &addrs.control, "thermal_runaway").await?;
    eventually(PATIENCE, "hydrogen alarm raised", || async {
        get_json(
            &client,
            &format!("{http}/api/v1/alarms?rule=explosion.h2_alarm"),
        )
        .await
        .and_then(|v| v["alarms"].as_array().and_then(|a| a.first().cloned()))
    })
    .await?;

    // Each view, once what it shows is there.
    let views = [
        (
            "overview",
            "#/",
            "[data-room=\"demo-site/battery-room\"] .value",
        ),
        ("room", "#/room/demo-site/battery-room", "#view-room .value"),
        (
            "point",
            "#/point/demo-site/br-h2-1.h2",
            "#view-point canvas",
        ),
        ("alarms", "#/alarms", "[data-incident] .alarm"),
        ("alarms-recent", "#/alarms/recent", "[data-incident] .alarm"),
        ("hazards", "#/hazards", "#hazard-new"),
        ("patrols", "#/patrols", "#patrol-new"),
        ("reports", "#/reports", "#report-print"),
    ];
    let mut failures = Vec::new();
    for lang in ["en", "zh-CN"] {
        if lang == "zh-CN" {
            switch_language(&browser).await?;
            browser
                .wait_for(
                    "Chinese",
                    PATIENCE,
                    "return document.documentElement.lang === 'zh-CN';",
                )
                .await?;
        }
        for (name, hash, ready) in views {
            browser.goto(&format!("{http}/{hash}")).await?;
            browser.find(ready, PATIENCE).await?;
            // Late layout (fonts, charts sized after first paint).
            tokio::time::sleep(Duration::from_millis(500)).await;
            browser
                .screenshot(&shots().join(format!("phone-{name}-{lang}.png")))
                .await?;
            let over = browser.eval(OVERFLOW, vec![]).await?;
            if over != json!("") {
                failures.push(format!("{name} ({lang}): {over}"));
            }
        }
        // A dialog, too: acknowledging from the console.
        browser.goto(&format!("{http}/#/alarms")).await?;
        browser
            .click("[data-incident] [data-action=\"ack\"]", PATIENCE)
            .await?;
        browser.find("#dlg-ack[open]", PATIENCE).await?;
        let over = browser.eval(OVERFLOW, vec![]).await?;
        if over != json!("") {
            failures.push(format!("ack dialog ({lang}): {over}"));
        }
        browser.click("#dlg-ack [data-close]", PATIENCE).await?;
    }
    // The header leaves the screen to the content: at most a sixth of it.
    browser.goto(&format!("{http}/#/")).await?;
    browser
        .find("[data-room=\"demo-site/battery-room\"]", PATIENCE)
        .await?;
    let header = browser
        .eval(
            "return document.querySelector('.topbar').getBoundingClientRect().height;",
            vec![],
        )
        .await?;
    let header = header.as_f64().context("header height")?;
    eprintln!("phone header: {header} px of 780");
    if header > 780.0 / 6.0 {
        failures.push(format!("the header takes {header} px of 780"));
    }
    ensure!(failures.is_empty(), "at 360 px:\n{}", failures.join("\n"));
    Ok(())
}

#[test]
fn every_quantity_of_the_shipped_profiles_has_a_name_in_both_languages() {
    let i18n = include_str!("../../collector/ui/i18n.js");
    let zh_at = i18n.find("\nconst zh = {").expect("the Chinese dictionary");
    let (en, zh) = i18n.split_at(zh_at);
    let mut missing = Vec::new();
    for (file, text) in roomguard_agent::profiles::Profiles::built_in() {
        for q in text
            .split("quantity = \"")
            .skip(1)
            .filter_map(|rest| rest.split('"').next())
        {
            for (lang, dict) in [("en", en), ("zh-CN", zh)] {
                if !dict.contains(&format!("\"q.{q}\":")) {
                    missing.push(format!("{lang}: q.{q} (used in {file})"));
                }
            }
        }
    }
    missing.sort();
    missing.dedup();
    assert!(
        missing.is_empty(),
        "quantities shown raw in the UI:\n{}",
        missing.join("\n")
    );
}
