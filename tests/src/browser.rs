//! A real browser for the UI tests: Debian's headless Chromium driven by its
//! ChromeDriver over the W3C WebDriver protocol (JSON over HTTP, spoken here
//! with reqwest, which the tests already build).

use crate::{external, free_port, wait_port, Proc};
use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// The W3C element reference key.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

pub struct Browser {
    _driver: Proc,
    http: reqwest::Client,
    /// `http://127.0.0.1:<port>/session/<id>`
    session: String,
    /// Chromium's profile, removed after the session ends.
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts ChromeDriver and a headless Chromium window of `width`×`height`;
    /// `None` when they are not installed outside CI.
    pub async fn start(dir: &Path, width: u32, height: u32) -> Result<Option<Browser>> {
        Self::start_as(dir, (width, height), false).await
    }

    /// A phone: Chromium's mobile emulation with a viewport of exactly
    /// `width`×`height` CSS pixels (a desktop window cannot be made that
    /// narrow), touch and a device pixel ratio of 2.
    pub async fn start_phone(dir: &Path, width: u32, height: u32) -> Result<Option<Browser>> {
        Self::start_as(dir, (width, height), true).await
    }

    async fn start_as(
        dir: &Path,
        (width, height): (u32, u32),
        phone: bool,
    ) -> Result<Option<Browser>> {
        let Some(driver) = external("chromedriver", "chromium-driver") else {
            return Ok(None);
        };
        let Some(chromium) = external("chromium", "chromium") else {
            return Ok(None);
        };
        let mut last = anyhow!("chromedriver did not start");
        for attempt in 0..5 {
            let port = free_port();
            let mut cmd = Command::new(&driver);
            cmd.arg(format!("--port={port}"));
            let mut proc = Proc::spawn(&format!("chromedriver-{attempt}"), cmd, dir)?;
            if let Err(e) = wait_port(&mut proc, port, Duration::from_secs(20)) {
                last = e;
                continue;
            }
            return Self::open(proc, port, &chromium, (width, height), phone)
                .await
                .map(Some);
        }
        Err(last)
    }

    async fn open(
        driver: Proc,
        port: u16,
        chromium: &PathBuf,
        (width, height): (u32, u32),
        phone: bool,
    ) -> Result<Browser> {
        let profile = tempfile::tempdir()?;
        // The machine has no network beyond loopback: no background
        // connections, no updates, no sync.
        let args = [
            "--headless=new".to_owned(),
            "--no-sandbox".to_owned(),
            "--disable-gpu".to_owned(),
            "--disable-dev-shm-usage".to_owned(),
            "--disable-quic".to_owned(),
            "--no-first-run".to_owned(),
            "--disable-background-networking".to_owned(),
            "--disable-component-update".to_owned(),
            "--disable-sync".to_owned(),
            "--lang=en-US".to_owned(),
            format!("--window-size={width},{height}"),
            format!("--user-data-dir={}", profile.path().display()),
        ];
        let mut options = json!({
            "binary": chromium,
            "args": args,
            "prefs": { "intl.accept_languages": "en-US,en" },
        });
        if phone {
            options["mobileEmulation"] = json!({
                "deviceMetrics": { "width": width, "height": height, "pixelRatio": 2.0, "touch": true },
            });
        }
        let caps = json!({ "capabilities": { "alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": options,
        } } });
        crate::install_crypto();
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()?;
        let r: Value = http
            .post(format!("http://127.0.0.1:{port}/session"))
            .json(&caps)
            .send()
            .await?
            .json()
            .await?;
        let id = r["value"]["sessionId"]
            .as_str()
            .with_context(|| format!("no WebDriver session: {r}"))?;
        Ok(Browser {
            _driver: driver,
            http,
            session: format!("http://127.0.0.1:{port}/session/{id}"),
            _profile: profile,
        })
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value> {
        let url = format!("{}{path}", self.session);
        let mut req = self.http.request(method, &url);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r = req.send().await.with_context(|| url.clone())?;
        let status = r.status();
        let v: Value = r.json().await.with_context(|| url.clone())?;
        if !status.is_success() {
            bail!(
                "WebDriver {path}: {} {}",
                v["value"]["error"].as_str().unwrap_or("error"),
                v["value"]["message"].as_str().unwrap_or("")
            );
        }
        Ok(v["value"].clone())
    }

    async fn post(&self, path: &str, body: Value) -> Result<Value> {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }

    pub async fn goto(&self, url: &str) -> Result<()> {
        self.post("/url", json!({ "url": url })).await.map(drop)
    }

    /// Runs `script` (a function body; `arguments` holds `args`) in the page.
    pub async fn eval(&self, script: &str, args: Vec<Value>) -> Result<Value> {
        self.post("/execute/sync", json!({ "script": script, "args": args }))
            .await
    }

    /// The first element matching a CSS selector, waiting up to `timeout`.
    pub async fn find(&self, css: &str, timeout: Duration) -> Result<Element<'_>> {
        let deadline = Instant::now() + timeout;
        loop {
            match self
                .post("/element", json!({ "using": "css selector", "value": css }))
                .await
            {
                Ok(v) => {
                    let id = v[ELEMENT]
                        .as_str()
                        .with_context(|| format!("element id in {v}"))?
                        .to_owned();
                    return Ok(Element { b: self, id });
                }
                Err(e) if Instant::now() >= deadline => {
                    return Err(e.context(format!("no element {css:?} within {timeout:?}")))
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    /// Clicks the first element matching `css`, waiting for it.
    pub async fn click(&self, css: &str, timeout: Duration) -> Result<()> {
        self.find(css, timeout).await?.click().await
    }

    /// Types `text` into the first element matching `css`, waiting for it.
    pub async fn type_into(&self, css: &str, text: &str, timeout: Duration) -> Result<()> {
        self.find(css, timeout).await?.type_text(text).await
    }

    /// Waits until the page's `predicate` (a function body returning a value)
    /// gives something truthy, and returns it.
    pub async fn wait_for(&self, what: &str, timeout: Duration, predicate: &str) -> Result<Value> {
        let deadline = Instant::now() + timeout;
        let mut last = Value::Null;
        while Instant::now() < deadline {
            match self.eval(predicate, vec![]).await {
                Ok(v) if truthy(&v) => return Ok(v),
                Ok(v) => last = v,
                Err(e) => last = json!(e.to_string()),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!("{what}: not within {timeout:?} (last: {last})")
    }

    /// Prints the page to a PDF (A4, backgrounds on), as a person would
    /// with the browser's "Save as PDF".
    pub async fn print_pdf(&self, to: &Path) -> Result<()> {
        let v = self
            .post(
                "/print",
                json!({ "background": true, "page": { "width": 21.0, "height": 29.7 } }),
            )
            .await?;
        let pdf = roomguard_collector::base64::decode(v.as_str().context("PDF data")?)
            .map_err(|e| anyhow!("PDF: {e}"))?;
        std::fs::write(to, pdf).with_context(|| to.display().to_string())
    }

    /// Saves a PNG of the window.
    pub async fn screenshot(&self, to: &Path) -> Result<()> {
        let v = self.call(reqwest::Method::GET, "/screenshot", None).await?;
        let png = roomguard_collector::base64::decode(v.as_str().context("screenshot data")?)
            .map_err(|e| anyhow!("screenshot: {e}"))?;
        if let Some(dir) = to.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(to, png).with_context(|| to.display().to_string())
    }
}

impl Drop for Browser {
    /// Ends the session, which closes Chromium (killing only the driver
    /// would leave the browser running). Plain blocking HTTP: no runtime here.
    fn drop(&mut self) {
        use std::io::{Read, Write};
        let Some((host, path)) = self
            .session
            .strip_prefix("http://")
            .and_then(|s| s.split_once('/'))
        else {
            return;
        };
        let Ok(mut s) = std::net::TcpStream::connect(host) else {
            return;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
        let req = format!(
            "DELETE /{path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
        if s.write_all(req.as_bytes()).is_ok() {
            let _ = s.read_to_end(&mut Vec::new());
        }
    }
}

pub struct Element<'a> {
    b: &'a Browser,
    id: String,
}

impl Element<'_> {
    pub async fn click(&self) -> Result<()> {
        self.b
            .post(&format!("/element/{}/click", self.id), json!({}))
            .await
            .map(drop)
    }

    pub async fn type_text(&self, text: &str) -> Result<()> {
        self.b
            .post(
                &format!("/element/{}/value", self.id),
                json!({ "text": text }),
            )
            .await
            .map(drop)
    }

    pub async fn text(&self) -> Result<String> {
        let v = self
            .b
            .call(
                reqwest::Method::GET,
                &format!("/element/{}/text", self.id),
                None,
            )
            .await?;
        Ok(v.as_str().unwrap_or("").to_owned())
    }

    pub async fn attr(&self, name: &str) -> Result<Option<String>> {
        let v = self
            .b
            .call(
                reqwest::Method::GET,
                &format!("/element/{}/attribute/{name}", self.id),
                None,
            )
            .await?;
        Ok(v.as_str().map(str::to_owned))
    }
}

fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|x| x != 0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(_) => true,
    }
}
