//! MQTT over TLS with client certificates and per-client ACLs: a real
//! Mosquitto configured by the test (certificates made with openssl), the
//! collector and agents connecting with their own certificates. An agent may
//! publish only under its own site and agent topic.

use anyhow::{ensure, Context, Result};
use roomguard_e2e::*;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

fn security(dir: &Path, name: &str) -> String {
    let p = |f: &str| format!("{:?}", dir.join(f).display().to_string());
    format!(
        "[mqtt.security]\nca_file = {}\nclient_cert = {}\nclient_key = {}\n",
        p("ca.pem"),
        p(&format!("{name}.pem")),
        p(&format!("{name}.key"))
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn agents_publish_over_tls_only_under_their_own_topic() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    let Some(mosquitto) = external("mosquitto", "mosquitto") else {
        return Ok(());
    };
    if external("openssl", "openssl").is_none() {
        return Ok(());
    }
    test_certificates(d, &["collector", "edge-01"])?;
    std::fs::write(
        d.join("acl"),
        "user collector\ntopic readwrite roomguard/#\n\n\
         user edge-01\ntopic write roomguard/v1/demo-site/edge-01/batch\n\
         topic write roomguard/v1/demo-site/edge-01/status\ntopic read roomguard/v1/demo-site/edge-01/ack\n",
    )?;
    let port = free_port();
    std::fs::write(
        d.join("mosquitto.conf"),
        format!(
            "listener {port} 127.0.0.1\ncafile {ca}\ncertfile {d}/server.pem\nkeyfile {d}/server.key\n\
             require_certificate true\nuse_identity_as_username true\nallow_anonymous false\n\
             acl_file {d}/acl\npersistence false\n\
             # Started as root, Mosquitto would become user mosquitto and lose\n\
             # access to the test's private directory; as anyone else this is ignored.\n\
             user root\n",
            ca = d.join("ca.pem").display(),
            d = d.display()
        ),
    )?;
    let mut cmd = Command::new(mosquitto);
    cmd.arg("-c").arg(d.join("mosquitto.conf"));
    let mut broker = Proc::spawn("mosquitto-tls", cmd, d)?;
    wait_port(&mut broker, port, Duration::from_secs(20))?;
    let url = format!("mqtts://localhost:{port}");

    let (_collector, http, _) = start_collector_with(d, Some(&url), &security(d, "collector"))?;
    let (_sim, sim) = start_simulator(d, &[])?;

    // The real agent, with its certificate.
    let conf = demo_agent_config(&sim, &url, &d.join("state-1"))?;
    let honest = start_agent_named(d, "agent-edge-01", &conf, &security(d, "edge-01"))?;
    // An impostor holding edge-01's certificate but claiming to be edge-02.
    let forged = conf.replace("agent = \"edge-01\"", "agent = \"edge-02\"");
    ensure!(forged != conf, "the demo configuration names agent edge-01");
    let forged = forged.replace(
        &d.join("state-1").display().to_string(),
        &d.join("state-2").display().to_string(),
    );
    let mut impostor = start_agent_named(d, "agent-impostor", &forged, &security(d, "edge-01"))?;

    let client = http_client();
    let soc = eventually(Duration::from_secs(60), "readings over TLS", || async {
        latest_point(&client, &http, "br-bms-1.soc").await
    })
    .await?;
    assert_eq!(soc["agent"], "edge-01");
    // Give the impostor the same time to try, then look: nothing of edge-02.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let points = get_json(&client, &format!("{http}/api/v1/latest"))
        .await
        .context("latest")?;
    let agents: std::collections::BTreeSet<String> = points["points"]
        .as_array()
        .context("points")?
        .iter()
        .filter_map(|p| p["agent"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(agents.into_iter().collect::<Vec<_>>(), ["edge-01"]);
    // It was there trying all along, not stopped by something else.
    assert!(impostor.is_running(), "{}", impostor.log_tail());
    drop((honest, impostor));

    // Without a client certificate the broker does not let one in.
    let out =
        Command::new(external("mosquitto_pub", "mosquitto-clients").context("mosquitto_pub")?)
            .args(["-h", "localhost", "-p", &port.to_string(), "--cafile"])
            .arg(d.join("ca.pem"))
            .args([
                "-t",
                "roomguard/v1/demo-site/edge-01/batch",
                "-m",
                "{}",
                "-q",
                "1",
            ])
            .output()?;
    assert!(
        !out.status.success(),
        "a client without a certificate was let in"
    );
    Ok(())
}

/// An agent with its own log name and extra configuration appended.
fn start_agent_named(dir: &Path, name: &str, config: &str, extra: &str) -> Result<Proc> {
    let conf = dir.join(format!("{name}.toml"));
    // The demo's own login gives way to the one in `extra`.
    let config = match config.split_once("\n[mqtt.security]\n") {
        Some((head, rest)) => format!("{head}{}", rest.find("\n[").map_or("", |i| &rest[i..])),
        None => config.to_owned(),
    };
    // [mqtt.security] goes after [mqtt]'s keys, before the next table.
    let (head, tail) = config
        .split_once("\n[metrics]")
        .context("demo config has [metrics]")?;
    std::fs::write(&conf, format!("{head}\n{extra}\n[metrics]{tail}"))?;
    let mut cmd = Command::new(workspace_bin("roomguard-agent"));
    cmd.arg("run").arg(&conf);
    Proc::spawn(name, cmd, dir)
}

/// The embedded broker over TLS: agents on other machines connect with
/// `mqtts://`, a client certificate signed by the site's CA and their own
/// user name and password; without a certificate, with a wrong password, or
/// in plain text without a login, nobody gets in.
#[tokio::test(flavor = "multi_thread")]
async fn the_embedded_broker_takes_agents_over_tls_with_certificates_and_passwords() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    if external("openssl", "openssl").is_none() {
        return Ok(());
    }
    let Some(publish) = external("mosquitto_pub", "mosquitto-clients") else {
        return Ok(());
    };
    test_certificates(d, &["edge-01"])?;
    std::fs::write(d.join("edge-01.password"), "correct-horse-battery\n")?;
    let p = |f: &str| format!("{:?}", d.join(f).display().to_string());
    let extra = format!(
        "[mqtt.embedded_tls]\nlisten = \"127.0.0.1:0\"\ncert_file = {}\nkey_file = {}\nclient_ca_file = {}\n\
         [[mqtt.embedded_users]]\nname = \"edge-01\"\npassword = {{ file = {} }}\n",
        p("server.pem"),
        p("server.key"),
        p("ca.pem"),
        p("edge-01.password")
    );
    let (_collector, ready) = start_collector_ready(d, None, &extra, "127.0.0.1:0")?;
    let http = format!("http://{}", ready["http"].as_str().context("http")?);
    let tls_port = ready["mqtts"]
        .as_str()
        .and_then(|a| a.rsplit(':').next())
        .context("mqtts address in the ready line")?
        .to_owned();

    let (_sim, sim) = start_simulator(d, &[])?;
    let url = format!("mqtts://localhost:{tls_port}");
    let agent_conf = demo_agent_config(&sim, &url, &d.join("state"))?;
    let login = format!(
        "{}username = \"edge-01\"\npassword = {{ file = {} }}\n",
        security(d, "edge-01"),
        p("edge-01.password")
    );
    let _agent = start_agent_named(d, "agent-mqtts", &agent_conf, &login)?;
    let client = http_client();
    let soc = eventually(
        Duration::from_secs(60),
        "readings over the embedded broker's TLS",
        || async { latest_point(&client, &http, "br-bms-1.soc").await },
    )
    .await?;
    assert_eq!(soc["agent"], "edge-01");

    let try_publish = |args: Vec<String>| -> Result<bool> {
        let out = Command::new(&publish)
            .args(&args)
            .args([
                "-t",
                "roomguard/v1/demo-site/edge-01/status",
                "-m",
                "{}",
                "-q",
                "1",
            ])
            .output()?;
        Ok(out.status.success())
    };
    let tls = |extra: &[&str]| -> Vec<String> {
        let mut a: Vec<String> = ["-h", "localhost", "-p", &tls_port, "--cafile"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        a.push(d.join("ca.pem").display().to_string());
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    let cert = d.join("edge-01.pem").display().to_string();
    let key = d.join("edge-01.key").display().to_string();
    assert!(
        try_publish(tls(&[
            "--cert",
            &cert,
            "--key",
            &key,
            "-u",
            "edge-01",
            "-P",
            "correct-horse-battery"
        ]))?,
        "the right certificate and password are let in"
    );
    assert!(
        !try_publish(tls(&["-u", "edge-01", "-P", "correct-horse-battery"]))?,
        "a client without a certificate was let in"
    );
    assert!(
        !try_publish(tls(&[
            "--cert",
            &cert,
            "--key",
            &key,
            "-u",
            "edge-01",
            "-P",
            "wrong-password"
        ]))?,
        "a wrong password was let in"
    );
    let plain_port = ready["mqtt"]
        .as_str()
        .and_then(|a| a.rsplit(':').next())
        .context("mqtt address")?
        .to_owned();
    assert!(
        !try_publish(vec![
            "-h".into(),
            "127.0.0.1".into(),
            "-p".into(),
            plain_port
        ])?,
        "an anonymous plain-text client was let in"
    );
    Ok(())
}
