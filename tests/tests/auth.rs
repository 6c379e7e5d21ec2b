//! Authentication and roles on the collector's API, against the real binary.

use anyhow::{Context, Result};
use roomguard_e2e::*;
use serde_json::{json, Value};
use std::process::Command;
use std::time::Duration;

async fn status(r: reqwest::RequestBuilder) -> Result<(u16, Value, reqwest::header::HeaderMap)> {
    let r = r.send().await?;
    let code = r.status().as_u16();
    let headers = r.headers().clone();
    Ok((code, r.json().await.unwrap_or(Value::Null), headers))
}

on_both!(the_api_needs_a_login_and_each_role_may_do_only_its_part);

async fn the_api_needs_a_login_and_each_role_may_do_only_its_part(store: TestStore) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (_collector, http, _) = start_collector_on(dir.path(), &store, "auth", None)?;
    let anon = anonymous_client();

    // Health and metrics stay open; data does not.
    let (code, _, headers) = status(anon.get(format!("{http}/healthz"))).await?;
    assert!(code == 200 || code == 503);
    assert_eq!(headers["x-frame-options"], "DENY");
    assert_eq!(headers["x-content-type-options"], "nosniff");
    let (code, body, headers) = status(anon.get(format!("{http}/api/v1/latest"))).await?;
    assert_eq!(code, 401, "{body}");
    assert_eq!(headers["www-authenticate"], "Bearer");
    assert!(body["error"].as_str().is_some_and(|e| e.contains("log in")));
    let (code, _, _) = status(
        anon.get(format!("{http}/api/v1/alarms"))
            .bearer_auth("wrong"),
    )
    .await?;
    assert_eq!(code, 401);

    // The admin (password from the configuration) logs in; the session works
    // for reads, and writes need its CSRF token too.
    let (code, _, _) = status(
        anon.post(format!("{http}/api/v1/login"))
            .json(&json!({"user": "admin", "password": "wrong-password"})),
    )
    .await?;
    assert_eq!(code, 401);
    let (code, login, headers) = status(
        anon.post(format!("{http}/api/v1/login"))
            .json(&json!({"user": "admin", "password": "admin-test-password"})),
    )
    .await?;
    assert_eq!(code, 200, "{login}");
    let set_cookie = headers["set-cookie"].to_str()?.to_owned();
    assert!(set_cookie.contains("HttpOnly") && set_cookie.contains("SameSite=Strict"));
    let cookie = set_cookie.split(';').next().context("cookie")?.to_owned();
    let csrf = login["csrf"].as_str().context("csrf")?.to_owned();
    let (code, me, _) = status(
        anon.get(format!("{http}/api/v1/me"))
            .header("cookie", &cookie),
    )
    .await?;
    assert_eq!(
        (code, &me["user"], &me["role"]),
        (200, &json!("admin"), &json!("admin"))
    );
    let new_user =
        |name: &str, role: &str| json!({"name": name, "role": role, "password": "night-shift-pw"});
    let (code, _, _) = status(
        anon.post(format!("{http}/api/v1/users"))
            .header("cookie", &cookie)
            .json(&new_user("viewer-1", "viewer")),
    )
    .await?;
    assert_eq!(code, 403, "a cookie without the CSRF token cannot write");
    for (name, role) in [("viewer-1", "viewer"), ("oncall-1", "responder")] {
        let (code, body, _) = status(
            anon.post(format!("{http}/api/v1/users"))
                .header("cookie", &cookie)
                .header("x-csrf-token", &csrf)
                .json(&new_user(name, role)),
        )
        .await?;
        assert_eq!(code, 201, "{body}");
    }

    // A viewer reads but may not silence a room; a responder may.
    let session = |user: &'static str| {
        let anon = anon.clone();
        let http = http.clone();
        async move {
            let r = anon
                .post(format!("{http}/api/v1/login"))
                .json(&json!({"user": user, "password": "night-shift-pw"}))
                .send()
                .await?;
            let cookie = r.headers()["set-cookie"]
                .to_str()?
                .split(';')
                .next()
                .context("cookie")?
                .to_owned();
            let csrf = r.json::<Value>().await?["csrf"]
                .as_str()
                .context("csrf")?
                .to_owned();
            anyhow::Ok((cookie, csrf))
        }
    };
    let silence = json!({"site": "s", "reason": "hot work", "owner": "eng", "ends_at": "now+1h"});
    let (vc, vcsrf) = session("viewer-1").await?;
    let (code, _, _) = status(
        anon.get(format!("{http}/api/v1/alarms"))
            .header("cookie", &vc),
    )
    .await?;
    assert_eq!(code, 200);
    let (code, body, _) = status(
        anon.post(format!("{http}/api/v1/silences"))
            .header("cookie", &vc)
            .header("x-csrf-token", &vcsrf)
            .json(&silence),
    )
    .await?;
    assert_eq!(code, 403, "{body}");
    assert!(body["error"].as_str().is_some_and(|e| e.contains("viewer")));
    let (code, _, _) = status(
        anon.get(format!("{http}/api/v1/users"))
            .header("cookie", &vc),
    )
    .await?;
    assert_eq!(code, 403, "users are for admins");
    let (rc, rcsrf) = session("oncall-1").await?;
    let (code, body, _) = status(
        anon.post(format!("{http}/api/v1/silences"))
            .header("cookie", &rc)
            .header("x-csrf-token", &rcsrf)
            .json(&silence),
    )
    .await?;
    assert_eq!(code, 201, "{body}");

    // Every write is in the audit log with its user.
    let log = store.audit(dir.path(), "auth")?;
    for line in [
        "admin user.create",
        "oncall-1 silence.create",
        "viewer-1 login",
    ] {
        assert!(log.iter().any(|l| l == line), "{line} missing from {log:?}");
    }

    // A machine token made by an admin: a viewer's rights, until revoked.
    let admin = http_client();
    let made: Value = admin
        .post(format!("{http}/api/v1/tokens"))
        .json(&json!({"name": "report-script", "role": "viewer"}))
        .send()
        .await?
        .json()
        .await?;
    let token = made["token"]
        .as_str()
        .context("token shown once")?
        .to_owned();
    let (code, _, _) = status(
        anon.get(format!("{http}/api/v1/alarms"))
            .bearer_auth(&token),
    )
    .await?;
    assert_eq!(code, 200);
    let (code, _, _) = status(
        anon.post(format!("{http}/api/v1/silences"))
            .bearer_auth(&token)
            .json(&silence),
    )
    .await?;
    assert_eq!(code, 403);
    let listed = get_json(&admin, &format!("{http}/api/v1/tokens"))
        .await
        .context("tokens")?;
    assert!(
        !listed.to_string().contains(&token),
        "the token itself is never shown again"
    );
    let r = admin
        .post(format!("{http}/api/v1/tokens/report-script/revoke"))
        .send()
        .await?;
    assert_eq!(r.status().as_u16(), 200);
    let (code, _, _) = status(
        anon.get(format!("{http}/api/v1/alarms"))
            .bearer_auth(&token),
    )
    .await?;
    assert_eq!(code, 401, "a revoked token is refused");

    // Logging out ends the session.
    let (code, _, _) = status(
        anon.post(format!("{http}/api/v1/logout"))
            .header("cookie", &vc)
            .header("x-csrf-token", &vcsrf),
    )
    .await?;
    assert_eq!(code, 200);
    let (code, _, _) = status(
        anon.get(format!("{http}/api/v1/alarms"))
            .header("cookie", &vc),
    )
    .await?;
    assert_eq!(code, 401);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_first_start_without_a_password_prints_a_one_time_admin_password_once() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let conf = dir.path().join("c.toml");
    std::fs::write(
        &conf,
        format!(
            "[http]\nlisten = \"127.0.0.1:0\"\n[mqtt]\nembedded_listen = \"127.0.0.1:0\"\n{}[store]\npath = {:?}\n{}",
            embedded_users_toml(),
            dir.path().join("s.db").display().to_string(),
            agents_toml()
        ),
    )?;
    let start = || -> Result<(Proc, Option<String>, String)> {
        let mut cmd = Command::new(workspace_bin("roomguard-collector"));
        cmd.arg("run").arg(&conf);
        let mut p = Proc::spawn("collector", cmd, dir.path())?;
        let mut password = None;
        let http;
        loop {
            let line = p.wait_line("\"event\"", Duration::from_secs(20))?;
            let v: Value = serde_json::from_str(&line)?;
            if v["event"] == "admin_created" {
                password = v["password"].as_str().map(str::to_owned);
            }
            if v["event"] == "ready" {
                http = format!("http://{}", v["http"].as_str().context("http")?);
                break;
            }
        }
        Ok((p, password, http))
    };
    // A start that fails on a busy HTTP port makes no admin and prints no
    // password (it would be shown for nothing, and the next start would
    // have none to show).
    let busy = std::net::TcpListener::bind("127.0.0.1:0")?;
    let busy_conf = dir.path().join("busy.toml");
    std::fs::write(
        &busy_conf,
        std::fs::read_to_string(&conf)?.replacen(
            "listen = \"127.0.0.1:0\"",
            &format!("listen = \"{}\"", busy.local_addr()?),
            1,
        ),
    )?;
    let out = Command::new(workspace_bin("roomguard-collector"))
        .arg("run")
        .arg(&busy_conf)
        .output()?;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("http.listen"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!stdout.contains("admin_created"), "{stdout}");
    drop(busy);

    let (mut first, password, http) = start()?;
    let password = password.context("no one-time password printed")?;
    assert!(password.len() >= 16);
    let anon = anonymous_client();
    let r = anon
        .post(format!("{http}/api/v1/login"))
        .json(&json!({"user": "admin", "password": password}))
        .send()
        .await?;
    assert_eq!(r.status().as_u16(), 200);
    first.terminate(Duration::from_secs(10))?;
    let (_second, again, _) = start()?;
    assert!(again.is_none(), "printed only at the first start");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_api_is_served_over_https_with_secure_cookies_when_configured() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    if external("openssl", "openssl").is_none() {
        return Ok(());
    }
    let out = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=localhost",
        ])
        .args(["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
        .args(["-addext", "basicConstraints=critical,CA:FALSE"])
        .args(["-keyout", "key.pem", "-out", "cert.pem"])
        .current_dir(d)
        .output()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let extra = format!(
        "[http.tls]\ncert_file = {:?}\nkey_file = {:?}\n",
        d.join("cert.pem").display().to_string(),
        d.join("key.pem").display().to_string()
    );
    let (_collector, http, _) = start_collector_with(d, None, &extra)?;
    let https = http
        .replace("http://", "https://")
        .replace("127.0.0.1", "localhost");
    let _ = http_client(); // installs the crypto provider
    let ca = reqwest::Certificate::from_pem(&std::fs::read(d.join("cert.pem"))?)?;
    let client = reqwest::Client::builder()
        .add_root_certificate(ca)
        .build()?;
    let r = client
        .post(format!("{https}/api/v1/login"))
        .json(&json!({"user": "admin", "password": "admin-test-password"}))
        .send()
        .await?;
    assert_eq!(r.status().as_u16(), 200);
    let cookie = r.headers()["set-cookie"].to_str()?.to_owned();
    assert!(cookie.contains("; Secure"), "{cookie}");
    // Plain HTTP on the same port gets no answer from the API.
    let plain = anonymous_client()
        .get(format!("{http}/healthz"))
        .send()
        .await;
    assert!(plain.map_or(true, |r| !r.status().is_success()));
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_name_guessed_at_ten_times_is_locked_even_for_the_right_password() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (_collector, http, _) = start_collector(dir.path(), None)?;
    let anon = anonymous_client();
    let mut guesses = tokio::task::JoinSet::new();
    for i in 0..10 {
        let r = anon
            .post(format!("{http}/api/v1/login"))
            .json(&json!({"user": "admin", "password": format!("guess-{i}")}));
        guesses.spawn(status(r));
    }
    while let Some(r) = guesses.join_next().await {
        assert_eq!(r??.0, 401);
    }
    let (code, body, _) = status(
        anon.post(format!("{http}/api/v1/login"))
            .json(&json!({"user": "admin", "password": "admin-test-password"})),
    )
    .await?;
    assert_eq!(code, 429, "{body}");
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|e| e.contains("too many failed logins")),
        "{body}"
    );
    // Machines with tokens are not affected.
    let (code, _, _) = status(http_client().get(format!("{http}/api/v1/me"))).await?;
    assert_eq!(code, 200);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_sends_its_headers_too_slowly_is_cut_off() -> Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir()?;
    let (_collector, http, _) = start_collector(dir.path(), None)?;
    let addr = http.trim_start_matches("http://").to_owned();
    // A client that connects and says nothing is cut off too.
    let mut silent = tokio::net::TcpStream::connect(&addr).await?;
    let mut slow = tokio::net::TcpStream::connect(&addr).await?;
    // Half a request, then nothing: the headers never end.
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await?;
    let started = std::time::Instant::now();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(30), slow.read_to_end(&mut buf)).await;
    let waited = started.elapsed();
    assert!(read.is_ok(), "the connection was still open after 30 s");
    assert!(
        waited >= Duration::from_secs(5),
        "cut off after {waited:?}, before the header deadline"
    );
    let mut none = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(30), silent.read_to_end(&mut none)).await;
    assert!(
        closed.is_ok(),
        "a silent connection was still open after 30 s"
    );
    // Everyone else is served meanwhile and after.
    let (code, _, _) = status(anonymous_client().get(format!("{http}/healthz"))).await?;
    assert!(code == 200 || code == 503);
    Ok(())
}
