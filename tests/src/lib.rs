//! Harness for RoomGuard's end-to-end tests: starts the built binaries and real
//! services (Mosquitto) as separate processes on ports the OS hands out, waits
//! for readiness by polling, never by fixed sleeps, and kills everything when a
//! test ends. A process's logs are printed when the test fails.

pub mod browser;
pub mod fleet;
pub mod ledger;

use anyhow::{anyhow, bail, ensure, Context, Result};
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Whether we run in CI, where a missing external program fails the test.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0")
}

/// Finds an external program. Outside CI a missing program skips the test
/// loudly (returns None); in CI it fails it.
pub fn external(program: &str, package: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
            .map(|dir| dir.join(program))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        let msg = format!(
            "`{program}` is not installed (Debian package {package}); the README's test command installs it"
        );
        assert!(!in_ci(), "{msg}");
        eprintln!("\n*** SKIPPING: {msg} ***\n");
    }
    found
}

/// Path of one of the workspace's binaries, built next to this test.
pub fn workspace_bin(name: &str) -> PathBuf {
    // target/<profile>/deps/<test-binary> or target/<profile>/<bench-binary>
    // → target/<profile>/<name>
    let exe = std::env::current_exe().expect("test executable path");
    let mut profile_dir = exe.parent().expect("executable has a directory").to_owned();
    if profile_dir.ends_with("deps") {
        profile_dir.pop();
    }
    let bin = profile_dir.join(name);
    assert!(
        bin.is_file(),
        "{} is missing: build the binaries first with `cargo build --workspace --bins` (scripts/test.sh does)",
        bin.display()
    );
    bin
}

/// A port that was free a moment ago, for programs that cannot report the
/// port they bound (Mosquitto). Callers retry if they lose the race.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("binding an ephemeral port on loopback")
}

/// A child process killed (and its logs shown, if the test failed) on drop.
pub struct Proc {
    pub name: String,
    child: Child,
    lines: mpsc::Receiver<String>,
    stderr_log: PathBuf,
}

impl Proc {
    /// Starts `cmd` with stdout captured line by line and stderr in a log file
    /// under `log_dir`.
    pub fn spawn(name: &str, mut cmd: Command, log_dir: &Path) -> Result<Proc> {
        let stderr_log = log_dir.join(format!("{name}.stderr.log"));
        let stderr = std::fs::File::create(&stderr_log)?;
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .with_context(|| format!("cannot start {name}: {cmd:?}"))?;
        let stdout = child.stdout.take().context("no stdout")?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(Proc {
            name: name.to_owned(),
            child,
            lines: rx,
            stderr_log,
        })
    }

    /// Waits for the `{"event":"ready",…}` line the RoomGuard binaries print.
    pub fn wait_ready(&mut self, timeout: Duration) -> Result<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "{} exited with {status} before it was ready:\n{}",
                    self.name,
                    self.log_tail()
                );
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!(
                    "{} not ready after {timeout:?}:\n{}",
                    self.name,
                    self.log_tail()
                );
            }
            match self
                .lines
                .recv_timeout(left.min(Duration::from_millis(200)))
            {
                Ok(line) => {
                    if let Ok(v) = serde_json::from_str::<Value>(&line) {
                        if v["event"] == "ready" {
                            return Ok(v);
                        }
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        }
    }

    /// Waits for a stdout line containing `needle` (for programs that do not
    /// print a ready line of ours).
    pub fn wait_line(&mut self, needle: &str, timeout: Duration) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("{} exited with {status}:\n{}", self.name, self.log_tail());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!(
                    "{} did not print {needle:?} within {timeout:?}:\n{}",
                    self.name,
                    self.log_tail()
                );
            }
            match self
                .lines
                .recv_timeout(left.min(Duration::from_millis(200)))
            {
                Ok(line) if line.contains(needle) => return Ok(line),
                Ok(_) | Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    std::thread::sleep(Duration::from_millis(50))
                }
            }
        }
    }

    /// The next line that is a JSON document, waiting until `deadline`.
    pub fn next_json(&mut self, deadline: Instant) -> Result<Value> {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!("{}: no more lines in time:\n{}", self.name, self.log_tail());
            }
            match self
                .lines
                .recv_timeout(left.min(Duration::from_millis(200)))
            {
                Ok(line) => {
                    if let Ok(v) = serde_json::from_str::<Value>(&line) {
                        return Ok(v);
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    bail!("{} exited:\n{}", self.name, self.log_tail())
                }
            }
        }
    }

    /// The last line printed so far (those before it are passed over), for
    /// programs that print running counters.
    pub fn last_line(&mut self) -> Option<String> {
        let mut last = None;
        while let Ok(line) = self.lines.try_recv() {
            last = Some(line);
        }
        last
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Sends SIGTERM, waits for the process to exit, and returns what it
    /// printed on stdout that nobody had read yet.
    pub fn terminate(&mut self, timeout: Duration) -> Result<Vec<String>> {
        let status = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()?;
        ensure!(status.success(), "kill -TERM {} failed", self.pid());
        self.wait_exit(timeout)?;
        let mut out = Vec::new();
        // The reader thread ends at EOF, which follows the exit.
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(2)) {
            out.push(line);
        }
        Ok(out)
    }

    /// Sends SIGKILL and reaps the process.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits for the process to exit by itself and returns its exit code.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<Option<i32>> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status.code());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        bail!("{} still running after {timeout:?}", self.name)
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.stderr_log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let from = lines.len().saturating_sub(40);
        lines[from..].join("\n")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!(
                "---- last log lines of {} ----\n{}\n----",
                self.name,
                self.log_tail()
            );
        }
    }
}

/// A real Mosquitto broker on a loopback port, without persistence unless
/// started with [`Mosquitto::start_persistent`].
pub struct Mosquitto {
    pub proc: Proc,
    pub port: u16,
    conf: PathBuf,
}

impl Mosquitto {
    /// Starts Mosquitto; `None` when it is not installed outside CI.
    pub fn start(dir: &Path) -> Result<Option<Mosquitto>> {
        Self::start_with(dir, false, "")
    }

    /// Starts Mosquitto bridged to `hub`: every `roomguard/#` message goes
    /// both ways, so the two act as one broker of two nodes (as a cluster's
    /// nodes do) until this one dies.
    pub fn start_bridged(dir: &Path, hub: &Mosquitto) -> Result<Option<Mosquitto>> {
        let bridge = format!(
            "connection hub\naddress 127.0.0.1:{}\ntopic roomguard/# both 1\ncleansession true\n",
            hub.port
        );
        Self::start_with(dir, false, &bridge)
    }

    /// Starts Mosquitto keeping sessions and queued messages on disk (in
    /// `dir`) across a graceful stop ([`Mosquitto::terminate`]).
    pub fn start_persistent(dir: &Path) -> Result<Option<Mosquitto>> {
        Self::start_with(dir, true, "")
    }

    fn start_with(dir: &Path, persistent: bool, extra: &str) -> Result<Option<Mosquitto>> {
        let persistence = if persistent {
            format!(
                "persistence true\npersistence_location {}/\n",
                dir.display()
            )
        } else {
            "persistence false\n".to_owned()
        };
        let Some(program) = external("mosquitto", "mosquitto") else {
            return Ok(None);
        };
        // The port is chosen before Mosquitto binds it; retry if another
        // process took it in between.
        let mut last_err = anyhow!("mosquitto did not start");
        for attempt in 0..5 {
            let port = free_port();
            let conf = dir.join(format!("mosquitto-{port}.conf"));
            std::fs::write(
                &conf,
                format!("listener {port} 127.0.0.1\nallow_anonymous true\n{persistence}max_queued_messages 100000\nmax_inflight_messages 2000\n{extra}"),
            )?;
            let mut cmd = Command::new(&program);
            cmd.arg("-c").arg(&conf);
            let mut proc = Proc::spawn(&format!("mosquitto-{attempt}"), cmd, dir)?;
            match wait_port(&mut proc, port, Duration::from_secs(10)) {
                Ok(()) => return Ok(Some(Mosquitto { proc, port, conf })),
                Err(e) => last_err = e,
            }
        }
        Err(last_err)
    }

    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    /// `-h` and `-p` for mosquitto_pub / mosquitto_sub against this broker.
    pub fn client_args(&self) -> [String; 4] {
        [
            "-h".into(),
            "127.0.0.1".into(),
            "-p".into(),
            self.port.to_string(),
        ]
    }

    /// Stops the broker (SIGKILL, so sessions and queued messages are lost).
    pub fn stop(&mut self) {
        self.proc.kill();
    }

    /// Stops the broker with SIGTERM, letting it save its state (when persistent).
    pub fn terminate(&mut self) -> Result<()> {
        self.proc.terminate(Duration::from_secs(10)).map(|_| ())
    }

    /// Starts the broker again on the same port.
    pub fn restart(&mut self, dir: &Path) -> Result<()> {
        let program = external("mosquitto", "mosquitto").context("mosquitto vanished")?;
        let mut cmd = Command::new(program);
        cmd.arg("-c").arg(&self.conf);
        self.proc = Proc::spawn("mosquitto-restarted", cmd, dir)?;
        wait_port(&mut self.proc, self.port, Duration::from_secs(10))
    }
}

/// Waits until `port` on 127.0.0.1 accepts connections (or `proc` exits).
pub fn wait_port(proc: &mut Proc, port: u16, timeout: Duration) -> Result<()> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if !proc.is_running() {
            bail!("{} exited:\n{}", proc.name, proc.log_tail());
        }
        if TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!("{} not listening on {port} after {timeout:?}", proc.name)
}

/// Polls `check` until it returns `Some`, or fails with `what` after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// GETs a JSON document; `None` on any failure (for use inside `eventually`).
pub async fn get_json(client: &reqwest::Client, url: &str) -> Option<Value> {
    let res = client
        .get(url)
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .ok()?;
    if !res.status().is_success() {
        return None;
    }
    res.json().await.ok()
}

/// Repository root (for the shipped configs).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_owned()
}

/// The simulator's addresses, from its ready line.
#[derive(Debug, Clone)]
pub struct SimAddrs {
    pub modbus: String,
    pub control: String,
    pub snmp_ups: String,
    pub snmp_pdu: String,
    /// The annex agents (Eaton UPS, Liebert PAC, Geist, APC probe, APC ATS),
    /// told apart by community.
    pub snmp_annex: String,
    pub bench: Vec<String>,
}

/// The demo agent config pointed at a simulator and a broker of this test,
/// with its metrics on a free port.
pub fn demo_agent_config(sim: &SimAddrs, broker_url: &str, state_dir: &Path) -> Result<String> {
    let text = std::fs::read_to_string(repo_root().join("configs/demo/agent.toml"))?;
    let text = text
        .replace("127.0.0.1:5020", &sim.modbus)
        .replace("127.0.0.1:1161", &sim.snmp_ups)
        .replace("127.0.0.1:1162", &sim.snmp_pdu)
        .replace("127.0.0.1:1164", &sim.snmp_annex)
        .replace("127.0.0.1:9102", "127.0.0.1:0")
        .replace("mqtt://127.0.0.1:11883", broker_url)
        .replace(
            "\"var/demo/agent\"",
            &format!("{:?}", state_dir.display().to_string()),
        );
    Ok(text)
}

/// The simulator with every listener on a free port.
pub fn start_simulator(dir: &Path, extra: &[&str]) -> Result<(Proc, SimAddrs)> {
    let mut cmd = Command::new(workspace_bin("roomguard-sim"));
    cmd.args([
        "--modbus",
        "127.0.0.1:0",
        "--control",
        "127.0.0.1:0",
        "--snmp-ups",
        "127.0.0.1:0",
        "--snmp-pdu",
        "127.0.0.1:0",
        "--snmp-annex",
        "127.0.0.1:0",
    ])
    .args(extra);
    let mut sim = Proc::spawn("simulator", cmd, dir)?;
    let ready = sim.wait_ready(Duration::from_secs(20))?;
    let field = |k: &str| -> Result<String> {
        Ok(ready[k]
            .as_str()
            .with_context(|| format!("{k} address"))?
            .to_owned())
    };
    let addrs = SimAddrs {
        modbus: field("modbus")?,
        control: field("control")?,
        snmp_ups: field("snmp_ups")?,
        snmp_pdu: field("snmp_pdu")?,
        snmp_annex: field("snmp_annex")?,
        bench: ready["bench"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default(),
    };
    Ok((sim, addrs))
}

/// A collector with its store in `dir`, using `broker_url` or, when `None`,
/// its embedded broker on a free port. Returns it with its HTTP base URL and
/// the broker URL it uses.
pub fn start_collector(dir: &Path, broker_url: Option<&str>) -> Result<(Proc, String, String)> {
    start_collector_with(dir, broker_url, "")
}

/// [`start_collector`] with more configuration (whole TOML tables) appended.
pub fn start_collector_with(
    dir: &Path,
    broker_url: Option<&str>,
    extra: &str,
) -> Result<(Proc, String, String)> {
    start_collector_at(dir, broker_url, extra, "127.0.0.1:0")
}

/// [`start_collector_with`] serving HTTP on `listen` (to restart a collector
/// where its clients expect it).
pub fn start_collector_at(
    dir: &Path,
    broker_url: Option<&str>,
    extra: &str,
    listen: &str,
) -> Result<(Proc, String, String)> {
    let (collector, ready) = start_collector_ready(dir, broker_url, extra, listen)?;
    let (http, mqtt) = collector_urls(&ready)?;
    Ok((collector, http, mqtt))
}

/// `roomguard-collector run <conf>`, its logs in `dir`; not waited for.
pub fn spawn_collector(dir: &Path, conf: &Path) -> Result<Proc> {
    let mut cmd = Command::new(workspace_bin("roomguard-collector"));
    cmd.arg("run").arg(conf);
    Proc::spawn("collector", cmd, dir)
}

/// The HTTP base URL and broker URL a collector's ready line gives.
pub fn collector_urls(ready: &Value) -> Result<(String, String)> {
    Ok((
        format!("http://{}", ready["http"].as_str().context("http address")?),
        format!("mqtt://{}", ready["mqtt"].as_str().context("mqtt address")?),
    ))
}

/// [`start_collector_at`], returning the collector's whole ready line.
pub fn start_collector_ready(
    dir: &Path,
    broker_url: Option<&str>,
    extra: &str,
    listen: &str,
) -> Result<(Proc, Value)> {
    let conf = write_collector_config(dir, &dir.join("store.db"), broker_url, extra, listen)?;
    let mut collector = spawn_collector(dir, &conf)?;
    let ready = collector.wait_ready(Duration::from_secs(20))?;
    Ok((collector, ready))
}

/// Writes `dir/collector.toml` for a test collector: HTTP on `listen`, the
/// store at `store`, `broker_url` or the embedded broker (with the test
/// login), the test users and agent secret, and `extra` tables.
pub fn write_collector_config(
    dir: &Path,
    store: &Path,
    broker_url: Option<&str>,
    extra: &str,
    listen: &str,
) -> Result<PathBuf> {
    let store = format!("path = {:?}\n", store.display().to_string());
    write_collector_config_with_store(dir, &store, broker_url, extra, listen)
}

/// [`write_collector_config`] with the `[store]` table's body given whole.
pub fn write_collector_config_with_store(
    dir: &Path,
    store_toml: &str,
    broker_url: Option<&str>,
    extra: &str,
    listen: &str,
) -> Result<PathBuf> {
    let mqtt = match broker_url {
        Some(url) => format!("url = {url:?}"),
        // A test that lists its own logins keeps them alone.
        None if extra.contains("embedded_users") => "embedded_listen = \"127.0.0.1:0\"".to_owned(),
        None => format!(
            "embedded_listen = \"127.0.0.1:0\"\n{}",
            embedded_users_toml()
        ),
    };
    let conf = dir.join("collector.toml");
    std::fs::write(
        &conf,
        format!(
            "[http]\nlisten = {listen:?}\n[mqtt]\n{mqtt}\n[store]\n{store_toml}{}{}{extra}\n",
            auth_toml(),
            agents_toml(),
        ),
    )?;
    Ok(conf)
}

/// `on_both!(behaviour)`: the test `behaviour::sqlite` and
/// `behaviour::postgres`, each calling `async fn behaviour(store:
/// TestStore) -> Result<()>` (on PostgreSQL: passes as skipped outside CI
/// when it is not installed, as every test of a missing tool does).
#[macro_export]
macro_rules! on_both {
    ($behaviour:ident) => {
        mod $behaviour {
            #[tokio::test(flavor = "multi_thread")]
            async fn sqlite() -> anyhow::Result<()> {
                super::$behaviour($crate::TestStore::Sqlite).await
            }

            #[tokio::test(flavor = "multi_thread")]
            async fn postgres() -> anyhow::Result<()> {
                match $crate::TestStore::postgres()? {
                    Some(store) => super::$behaviour(store).await,
                    None => Ok(()),
                }
            }
        }
    };
}

/// The store a behaviour test runs its collector on: the SQLite file in
/// the test's directory, or a fresh database on a PostgreSQL the test
/// started (the behaviours both backends keep run on both).
pub enum TestStore {
    Sqlite,
    Postgres(Postgres),
}

impl TestStore {
    /// What the collector in `dir` (database `db` on PostgreSQL) has
    /// stored, for the delivery ledger.
    pub fn stored<'a>(&'a self, dir: &Path, db: &'a str) -> Box<dyn ledger::Stored + 'a> {
        match self {
            TestStore::Sqlite => Box::new(dir.join("store.db")),
            TestStore::Postgres(pg) => Box::new(ledger::PgStored(pg, db)),
        }
    }

    /// The audit log of the collector in `dir` (database `db` on
    /// PostgreSQL), one "user action" line per entry, oldest first.
    pub fn audit(&self, dir: &Path, db: &str) -> Result<Vec<String>> {
        Ok(match self {
            TestStore::Sqlite => {
                let c = rusqlite::Connection::open(dir.join("store.db"))?;
                let mut st =
                    c.prepare("SELECT user || ' ' || action FROM audit_log ORDER BY id")?;
                let lines = st.query_map([], |r| r.get(0))?;
                lines.collect::<Result<_, _>>()?
            }
            // `user` is reserved in PostgreSQL: the column is `user_name`.
            TestStore::Postgres(pg) => pg
                .psql(
                    db,
                    "SELECT user_name || ' ' || action FROM audit_log ORDER BY id",
                )?
                .lines()
                .map(str::to_owned)
                .collect(),
        })
    }

    /// The store's writer and readers as the collector makes them (for a
    /// test that drives the store itself), and the `[store]` body for a
    /// collector on the same store afterwards; on PostgreSQL a new
    /// database `db`.
    pub fn open(
        &self,
        dir: &Path,
        db: &str,
    ) -> Result<(
        roomguard_collector::store::backend::Writer,
        roomguard_collector::store::backend::Reads,
        String,
    )> {
        use roomguard_collector::store::{backend, postgres, retention, sqlite};
        let toml = self.toml(dir, db)?;
        Ok(match self {
            TestStore::Sqlite => {
                let path = dir.join("store.db");
                (
                    backend::Writer::Sqlite(sqlite::SqliteWriter::open(&path)?),
                    backend::Reads::Sqlite(path),
                    toml,
                )
            }
            TestStore::Postgres(pg) => {
                let target = postgres::Target {
                    config: postgres::settings(&pg.url(db), Some(Postgres::PASSWORD))?,
                    tls: None,
                };
                (
                    backend::Writer::Postgres(backend::PgWriting::new(
                        target.clone(),
                        retention::Policy::default(),
                    )),
                    backend::Reads::Postgres(std::sync::Arc::new(backend::PgReads::new(target))),
                    toml,
                )
            }
        })
    }

    /// PostgreSQL, or `None` (the test passes as skipped) outside CI when it
    /// is not installed.
    pub fn postgres() -> Result<Option<TestStore>> {
        Ok(Postgres::start()?.map(TestStore::Postgres))
    }

    /// The `[store]` body for a collector in `dir`: on PostgreSQL a new
    /// database `db` and its password in a file.
    pub fn toml(&self, dir: &Path, db: &str) -> Result<String> {
        match self {
            TestStore::Sqlite => Ok(format!(
                "path = {:?}\n",
                dir.join("store.db").display().to_string()
            )),
            TestStore::Postgres(pg) => {
                pg.psql("postgres", &format!("CREATE DATABASE {db}"))?;
                pg_store_toml(dir, pg, db, Postgres::PASSWORD)
            }
        }
    }
}

/// The `[store]` body for database `db` on `pg` with `password` (in a file
/// in `dir`).
pub fn pg_store_toml(dir: &Path, pg: &Postgres, db: &str, password: &str) -> Result<String> {
    let file = dir.join("pg-password");
    std::fs::write(&file, password)?;
    Ok(format!(
        "backend = \"postgres\"\nurl = {:?}\npassword = {{ file = {:?} }}\n",
        pg.url(db),
        file.display().to_string()
    ))
}

/// Copies the SQLite store of the collector config `conf` into a new
/// database `db` on `pg` with `roomguard-collector migrate` (its password
/// in a file in `dir`).
pub fn migrate_to_postgres(dir: &Path, conf: &Path, pg: &Postgres, db: &str) -> Result<()> {
    pg.psql("postgres", &format!("CREATE DATABASE {db}"))?;
    let pw = dir.join("pg-password");
    std::fs::write(&pw, Postgres::PASSWORD)?;
    let out = Command::new(workspace_bin("roomguard-collector"))
        .arg("migrate")
        .arg(conf)
        .args(["--to", &pg.url(db), "--password-file"])
        .arg(&pw)
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "migrate: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// A collector in `dir` on `store` (a new database `db` on PostgreSQL),
/// using `broker_url` or its embedded broker, ready; with its HTTP base URL
/// and broker URL.
pub fn start_collector_on(
    dir: &Path,
    store: &TestStore,
    db: &str,
    broker_url: Option<&str>,
) -> Result<(Proc, String, String)> {
    start_collector_stored(dir, &store.toml(dir, db)?, broker_url, "")
}

/// A collector in `dir` with the `[store]` body `store_toml` (from
/// [`TestStore::toml`], made once per store), using `broker_url` or its
/// embedded broker and `extra` tables, ready; with its HTTP base URL and
/// broker URL.
pub fn start_collector_stored(
    dir: &Path,
    store_toml: &str,
    broker_url: Option<&str>,
    extra: &str,
) -> Result<(Proc, String, String)> {
    let conf =
        write_collector_config_with_store(dir, store_toml, broker_url, extra, "127.0.0.1:0")?;
    let mut collector = spawn_collector(dir, &conf)?;
    let (http, mqtt) = collector_urls(&collector.wait_ready(Duration::from_secs(30))?)?;
    Ok((collector, http, mqtt))
}

/// The tables a cluster node of the tests and benchmarks adds to its
/// configuration: `[cluster]` with node `id`, `partitions`, the lease and
/// its renewal in seconds, and alarms to the webhook `hook` with fire
/// alarms clearing `fire_clear` after the smoke is gone.
pub fn cluster_node_toml(
    id: &str,
    partitions: u32,
    lease_s: u64,
    renew_s: u64,
    hook: &str,
    fire_clear: &str,
) -> String {
    format!(
        "[cluster]\nenabled = true\nnode_id = {id:?}\npartitions = {partitions}\n\
         lease = \"{lease_s}s\"\nrenew_every = \"{renew_s}s\"\n\
         [alarms]\n[[alarms.channels]]\nid = \"hook\"\nkind = \"webhook\"\nurl = {hook:?}\ntimeout = \"2s\"\n\
         [[alarms.overrides]]\nrule = \"fire.*\"\nclear_delay = {fire_clear:?}\n"
    )
}

/// A small agent for site `site`: the simulator's machine-room inlet
/// sensor and both smoke heads, polled every second, publishing to `broker`.
pub fn small_site_agent_toml(site: &str, sim: &SimAddrs, broker: &str, state: &Path) -> String {
    let mut t = format!(
        "site = {site:?}\nagent = \"edge-1\"\nstate_dir = {:?}\n[mqtt]\nurl = {broker:?}\nstatus_interval = \"5s\"\n{}\
         [metrics]\nlisten = \"127.0.0.1:0\"\n\
         [[modbus_buses]]\nid = \"gw\"\ntransport = \"tcp\"\naddress = {:?}\ntimeout = \"1s\"\n",
        state.display().to_string(),
        agent_mqtt_toml(site, "edge-1"),
        sim.modbus,
    );
    for (id, unit, profile) in [
        ("mr-th-inlet", 1, "generic-th-sensor"),
        ("mr-smoke-1", 3, "smoke-detector"),
        ("mr-smoke-2", 5, "smoke-detector"),
    ] {
        t.push_str(&format!(
            "[[modbus]]\nid = {id:?}\nroom = \"machine-room\"\nbus = \"gw\"\nunit = {unit}\nprofile = {profile:?}\ninterval = \"1s\"\n"
        ));
    }
    t
}

/// An agent running `config_text`.
pub fn start_agent(dir: &Path, config_text: &str) -> Result<Proc> {
    let conf = dir.join("agent.toml");
    std::fs::write(&conf, config_text)?;
    let mut cmd = Command::new(workspace_bin("roomguard-agent"));
    cmd.arg("run").arg(&conf);
    Proc::spawn("agent", cmd, dir)
}

/// Waits until `point` has a newer reading than it has now: readings still
/// reach the store.
pub async fn newer_reading(client: &reqwest::Client, http: &str, point: &str) -> Result<()> {
    let before = latest_point(client, http, point)
        .await
        .with_context(|| format!("no reading of {point}"))?["ts"]
        .clone();
    eventually(
        Duration::from_secs(60),
        &format!("a newer reading of {point}"),
        || async {
            let now = latest_point(client, http, point).await?;
            (now["ts"] != before).then_some(())
        },
    )
    .await
}

/// The latest reading of `point` from the collector's API.
pub async fn latest_point(client: &reqwest::Client, http: &str, point: &str) -> Option<Value> {
    let doc = get_json(client, &format!("{http}/api/v1/latest")).await?;
    doc["points"]
        .as_array()?
        .iter()
        .find(|p| p["point"] == point)
        .cloned()
}

/// A sample from a Prometheus text page at `{base}/metrics`: the first line
/// named exactly `name` (so pass labels too, if any). 0 when absent or when
/// the page cannot be fetched: tests wait for it to grow.
pub async fn metric(client: &reqwest::Client, base: &str, name: &str) -> u64 {
    let Ok(resp) = client.get(format!("{base}/metrics")).send().await else {
        return 0;
    };
    let text = resp.text().await.unwrap_or_default();
    text.lines()
        .find_map(|l| {
            l.strip_prefix(name)?
                .strip_prefix(' ')?
                .trim()
                .parse::<f64>()
                .ok()
        })
        .unwrap_or(0.0) as u64
}

/// (user, system) CPU seconds of a process, from /proc/<pid>/stat.
pub fn cpu_seconds(pid: u32) -> Result<(f64, f64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may contain spaces) start at ")".
    let rest = stat.rsplit_once(')').context("stat format")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11).context("utime")?.parse()?;
    let stime: f64 = fields.get(12).context("stime")?.parse()?;
    let ticks = 100.0; // USER_HZ on Linux
    Ok((utime / ticks, stime / ticks))
}

/// CPU seconds (user + system) of a process and its children alive now
/// (PostgreSQL's backends under the postmaster).
pub fn tree_cpu_seconds(pid: u32) -> f64 {
    let mut total = cpu_seconds(pid).map_or(0.0, |(u, s)| u + s);
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(child) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) else {
            continue;
        };
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(pid) {
            total += cpu_seconds(child).map_or(0.0, |(u, s)| u + s);
        }
    }
    total
}

/// A benchmark's batch (site `bench`), signed: `readings` good readings of
/// points `{prefix}.p{i}`, all at `at`, values changing with `seq`.
pub fn bench_batch(
    agent: &str,
    device: &str,
    prefix: &str,
    readings: usize,
    seq: u64,
    at: i64,
) -> Vec<u8> {
    bench_batch_of("bench", agent, device, prefix, readings, seq, at)
}

/// [`bench_batch`] of site `site`.
pub fn bench_batch_of(
    site: &str,
    agent: &str,
    device: &str,
    prefix: &str,
    readings: usize,
    seq: u64,
    at: i64,
) -> Vec<u8> {
    use roomguard_protocol::{Batch, Label, Quality, Reading, Topic, PROTOCOL_VERSION};
    let json = Batch {
        v: PROTOCOL_VERSION,
        site: site.into(),
        agent: agent.into(),
        seq,
        device: device.into(),
        polled_at: at,
        backfill: false,
        points: Vec::new(),
        readings: (0..readings)
            .map(|i| Reading {
                point: Label::from(format!("{prefix}.p{i:03}").as_str()),
                value: Some(20.0 + ((seq as usize + i) % 97) as f64 / 10.0),
                text: None,
                ts: at,
                quality: Quality::Good,
            })
            .collect(),
    }
    .to_json();
    signed(&Topic::batch(site, agent), &json)
}

/// `--name value` from the command line, for the benchmark programs.
pub fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A real VictoriaMetrics (Debian's `victoria-metrics`) on a loopback port,
/// with its data in a directory of the test, so it can be stopped and
/// started again with what it had.
pub struct VictoriaMetrics {
    pub proc: Proc,
    pub port: u16,
    data: PathBuf,
    dir: PathBuf,
}

impl VictoriaMetrics {
    /// `None` when it is not installed outside CI.
    pub fn start(dir: &Path) -> Result<Option<VictoriaMetrics>> {
        if external("victoria-metrics", "victoria-metrics").is_none() {
            return Ok(None);
        }
        let mut vm = VictoriaMetrics {
            proc: Proc::spawn("vm-placeholder", Command::new("true"), dir)?,
            port: free_port(),
            data: dir.join("vm-data"),
            dir: dir.to_owned(),
        };
        vm.restart()?;
        Ok(Some(vm))
    }

    /// Starts it (again) on the same port and data.
    pub fn restart(&mut self) -> Result<()> {
        let program = external("victoria-metrics", "victoria-metrics")
            .context("victoria-metrics vanished")?;
        let mut cmd = Command::new(program);
        cmd.arg(format!("-httpListenAddr=127.0.0.1:{}", self.port))
            .arg(format!("-storageDataPath={}", self.data.display()))
            // Data is searchable at once, not after the default 30 s.
            .arg("-search.latencyOffset=0s")
            .arg("-loggerLevel=WARN");
        self.proc = Proc::spawn("victoria-metrics", cmd, &self.dir)?;
        wait_port(&mut self.proc, self.port, Duration::from_secs(20))
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Stops it with SIGTERM, so it flushes what it holds in memory (a
    /// SIGKILL loses its last second of writes, which is not the sink's doing).
    pub fn stop(&mut self) -> Result<()> {
        self.proc.terminate(Duration::from_secs(20)).map(|_| ())
    }

    /// Every series matching `selector` from its export API:
    /// (labels, [(timestamp ms, value)]).
    pub async fn export(
        &self,
        client: &reqwest::Client,
        selector: &str,
    ) -> Result<Vec<(Value, Vec<(i64, f64)>)>> {
        let url = reqwest::Url::parse_with_params(
            &format!("{}/api/v1/export", self.url()),
            [("match[]", selector)],
        )?;
        let text = client.get(url).send().await?.text().await?;
        let mut out = Vec::new();
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let v: Value =
                serde_json::from_str(line).with_context(|| format!("export line {line}"))?;
            let ts = v["timestamps"].as_array().cloned().unwrap_or_default();
            let vals = v["values"].as_array().cloned().unwrap_or_default();
            let points = ts
                .iter()
                .zip(vals.iter())
                .filter_map(|(t, x)| Some((t.as_i64()?, x.as_f64()?)))
                .collect();
            out.push((v["metric"].clone(), points));
        }
        Ok(out)
    }
}

/// An HTTP client for tests. The workspace builds reqwest with rustls and no
/// built-in crypto provider (the collector picks ring), so the provider is
/// installed here once before the first client is made.
pub fn http_client() -> reqwest::Client {
    install_crypto();
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        reqwest::header::HeaderValue::from_str(&format!("Bearer {TEST_TOKEN}"))
            .expect("a valid header"),
    );
    reqwest::Client::builder()
        .default_headers(headers)
        .build()
        .expect("an HTTP client")
}

/// A client without credentials, for tests of authentication itself.
pub fn anonymous_client() -> reqwest::Client {
    let _ = http_client();
    reqwest::Client::new()
}

/// The machine token test collectors accept, as an admin (`[[auth.tokens]]`).
pub const TEST_TOKEN: &str = "test-token-0123456789abcdef0123456789abcdef";

/// The `[auth]` table of test collectors: the test token, and a known
/// password for the first admin.
pub fn auth_toml() -> String {
    format!(
        "[auth]\ninitial_admin_password = {{ value = \"admin-test-password\" }}\n\
         tokens = [{{ name = \"tests\", role = \"admin\", token = {{ value = {TEST_TOKEN:?} }} }}]\n"
    )
}

/// The secret test collectors derive agent keys from: the demo's, so the
/// demo agent's config works against them as it is.
pub const AGENT_SECRET: &str = "demo-agent-secret-not-for-production-0123456789";
/// The embedded broker's login in test collectors: the demo agent's.
pub const MQTT_USER: &str = "edge-01";
pub const MQTT_PASSWORD: &str = "demo-edge-01-mqtt-password";

/// The `[agents]` table of test collectors.
pub fn agents_toml() -> String {
    format!("[agents]\nsecret = {{ value = {AGENT_SECRET:?} }}\n")
}

/// The `embedded_users` key (of `[mqtt]`) of test collectors.
pub fn embedded_users_toml() -> String {
    format!("embedded_users = [{{ name = {MQTT_USER:?}, password = {{ value = {MQTT_PASSWORD:?} }} }}]\n")
}

/// The key of agent `agent` of `site` under [`AGENT_SECRET`], as hex.
pub fn agent_key(site: &str, agent: &str) -> String {
    roomguard_protocol::AgentKey::derive_hex(AGENT_SECRET, site, agent)
        .expect("the test secret is long enough")
}

/// `[mqtt]` keys for a test agent `agent` of `site`: its key and the test
/// broker login (harmless on a Mosquitto that allows anonymous clients).
pub fn agent_mqtt_toml(site: &str, agent: &str) -> String {
    format!(
        "key = {{ value = {:?} }}\nsecurity = {{ username = {MQTT_USER:?}, password = {{ value = {MQTT_PASSWORD:?} }} }}\n",
        agent_key(site, agent)
    )
}

/// `payload` signed for `topic` with the key of the agent the topic names,
/// as a real agent would send it.
pub fn signed(topic: &str, payload: &[u8]) -> Vec<u8> {
    let parts: Vec<&str> = topic.split('/').collect();
    let (site, agent) = (
        parts.get(2).copied().unwrap_or(""),
        parts.get(3).copied().unwrap_or(""),
    );
    roomguard_protocol::AgentKey::derive(AGENT_SECRET, site, agent)
        .expect("the test secret is long enough")
        .sign(topic, payload)
}

/// Installs rustls's ring provider once, before any reqwest client is built.
pub fn install_crypto() {
    static PROVIDER: std::sync::Once = std::sync::Once::new();
    PROVIDER.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// One request a [`Receiver`] got.
#[derive(Debug, Clone)]
pub struct Received {
    /// The `Idempotency-Key` header.
    pub key: String,
    pub body: Value,
    /// When it arrived, ms since the epoch.
    pub at_ms: i64,
    /// Path and query it was sent to.
    pub uri: String,
}

/// Paces a benchmark's load: `per_second` messages spread over 20 ms
/// ticks, the fraction left over carried to the next tick.
pub struct Pacer {
    per_tick: f64,
    owed: f64,
    ticks: tokio::time::Interval,
}

impl Pacer {
    pub fn new(per_second: f64) -> Pacer {
        let tick = Duration::from_millis(20);
        Pacer {
            per_tick: per_second * tick.as_secs_f64(),
            owed: 0.0,
            ticks: tokio::time::interval(tick),
        }
    }

    /// Waits for the next tick; how many messages are due in it.
    pub async fn due(&mut self) -> usize {
        self.ticks.tick().await;
        self.owed += self.per_tick;
        let n = self.owed.floor();
        self.owed -= n;
        n as usize
    }
}

/// `connections` MQTT clients of a benchmark's load, `{prefix}-{n}`, with
/// the test broker login, room for large batches and 200 in flight each;
/// their event loops run (reconnecting) until the program ends.
pub async fn bench_publishers(
    port: u16,
    prefix: &str,
    connections: usize,
) -> Result<Vec<rumqttc::AsyncClient>> {
    let mut clients = Vec::new();
    for c in 0..connections {
        let mut opts = rumqttc::MqttOptions::new(format!("{prefix}-{c}"), "127.0.0.1", port);
        opts.set_keep_alive(Duration::from_secs(30));
        opts.set_credentials(MQTT_USER, MQTT_PASSWORD);
        opts.set_max_packet_size(1 << 20, 1 << 20);
        opts.set_inflight(200);
        let (client, mut eventloop) = rumqttc::AsyncClient::new(opts, 1_000);
        tokio::spawn(async move {
            loop {
                if eventloop.poll().await.is_err() {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        });
        clients.push(client);
    }
    Ok(clients)
}

/// Switches the simulator whose control port is `control` to drill
/// `scenario` (`normal` ends it).
pub async fn drill(client: &reqwest::Client, control: &str, scenario: &str) -> Result<()> {
    let r = client
        .post(format!("http://{control}/scenario/{scenario}"))
        .send()
        .await?;
    ensure!(
        r.status().is_success(),
        "scenario {scenario}: {}",
        r.status()
    );
    Ok(())
}

/// Reads a server-sent event stream (`/api/v1/events`) until it ends,
/// handing each event's name and data to `on_event`, and the bytes of each
/// chunk to `on_bytes`.
pub async fn read_events(
    mut response: reqwest::Response,
    mut on_bytes: impl FnMut(usize),
    mut on_event: impl FnMut(&str, &str) -> Result<()>,
) -> Result<()> {
    ensure!(
        response.status().is_success(),
        "events: {}",
        response.status()
    );
    let mut buf = String::new();
    while let Some(chunk) = response.chunk().await? {
        on_bytes(chunk.len());
        buf.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buf.find("\n\n") {
            let frame: String = buf.drain(..end + 2).collect();
            let event = frame.lines().find_map(|l| l.strip_prefix("event: "));
            let data = frame.lines().find_map(|l| l.strip_prefix("data: "));
            if let (Some(event), Some(data)) = (event, data) {
                on_event(event, data)?;
            }
        }
    }
    Ok(())
}

/// The events of one `/api/v1/events` stream, gathered in the background.
pub struct EventLog {
    events: std::sync::Arc<std::sync::Mutex<Vec<(String, String)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl EventLog {
    pub async fn open(client: &reqwest::Client, http: &str) -> Result<EventLog> {
        let r = client.get(format!("{http}/api/v1/events")).send().await?;
        let events = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = events.clone();
        let task = tokio::spawn(async move {
            let _ = read_events(
                r,
                |_| {},
                |event, data| {
                    log.lock()
                        .unwrap()
                        .push((event.to_owned(), data.to_owned()));
                    Ok(())
                },
            )
            .await;
        });
        Ok(EventLog { events, task })
    }

    /// The events seen so far: name and data.
    pub fn seen(&self) -> Vec<(String, String)> {
        self.events.lock().unwrap().clone()
    }
}

impl Drop for EventLog {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// From each alarm notification `keep` selects to its arrival: the
/// reading's own event time (`raised_at` of a raise, `cleared_at` of a
/// clear) to the receiver holding it, ms, sorted.
pub fn notification_latencies(received: &[Received], keep: impl Fn(&Received) -> bool) -> Vec<i64> {
    let mut ms: Vec<i64> = received
        .iter()
        .filter(|r| keep(r))
        .filter_map(|r| {
            let event = match r.body["kind"].as_str()? {
                "raise" => r.body["raised_at"].as_i64()?,
                "clear" => r.body["cleared_at"].as_i64()?,
                _ => return None,
            };
            Some(r.at_ms - event)
        })
        .collect();
    ms.sort_unstable();
    ms
}

/// An HTTP endpoint that records every JSON POST, the receiving end of the
/// collector's webhook channel. It can be told to fail (HTTP 503), to test
/// retries; a failed request is not recorded.
#[derive(Clone)]
pub struct Receiver {
    pub url: String,
    got: std::sync::Arc<std::sync::Mutex<Vec<Received>>>,
    failing: std::sync::Arc<std::sync::atomic::AtomicBool>,
    attempts: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl Receiver {
    pub async fn start() -> Result<Receiver> {
        use axum::http::{HeaderMap, StatusCode};
        use std::sync::atomic::Ordering;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let r = Receiver {
            url: format!("http://{addr}/hook"),
            got: Default::default(),
            failing: Default::default(),
            attempts: Default::default(),
        };
        let state = r.clone();
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(
                move |uri: axum::http::Uri, headers: HeaderMap, body: String| {
                    let state = state.clone();
                    async move {
                        state.attempts.fetch_add(1, Ordering::SeqCst);
                        if state.failing.load(Ordering::SeqCst) {
                            return StatusCode::SERVICE_UNAVAILABLE;
                        }
                        let key = headers
                            .get("idempotency-key")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("")
                            .to_owned();
                        let body = serde_json::from_str(&body).unwrap_or(Value::String(body));
                        let at_ms = jiff::Timestamp::now().as_millisecond();
                        state.got.lock().unwrap().push(Received {
                            key,
                            body,
                            at_ms,
                            uri: uri.to_string(),
                        });
                        StatusCode::OK
                    }
                },
            ),
        );
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(r)
    }

    pub fn set_failing(&self, failing: bool) {
        self.failing
            .store(failing, std::sync::atomic::Ordering::SeqCst);
    }

    /// Requests made, failed ones included.
    pub fn attempts(&self) -> u64 {
        self.attempts.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn received(&self) -> Vec<Received> {
        self.got.lock().unwrap().clone()
    }

    /// Notifications received for alarms of `rule`, as (kind, serial).
    pub fn of_rule(&self, rule: &str) -> Vec<(String, u64)> {
        self.received()
            .iter()
            .filter(|r| r.body["rule"] == rule)
            .map(|r| {
                (
                    r.body["kind"].as_str().unwrap_or("").to_owned(),
                    r.body["serial"].as_u64().unwrap_or(0),
                )
            })
            .collect()
    }

    /// Every idempotency key received more than once.
    pub fn duplicates(&self) -> Vec<String> {
        let mut keys: Vec<String> = self.received().into_iter().map(|r| r.key).collect();
        keys.sort();
        let mut dups: Vec<String> = keys
            .windows(2)
            .filter(|w| w[0] == w[1])
            .map(|w| w[0].clone())
            .collect();
        dups.dedup();
        dups
    }
}

/// A real Prometheus Alertmanager (Debian's `prometheus-alertmanager`) on a
/// loopback port, clustering off, routing everything to a receiver that
/// does nothing: the test reads alerts back from its API.
pub struct Alertmanager {
    pub proc: Proc,
    pub url: String,
}

impl Alertmanager {
    /// `None` when it is not installed outside CI.
    pub fn start(dir: &Path) -> Result<Option<Alertmanager>> {
        let Some(program) = external("prometheus-alertmanager", "prometheus-alertmanager") else {
            return Ok(None);
        };
        let conf = dir.join("alertmanager.yml");
        std::fs::write(
            &conf,
            "route:\n  receiver: 'null'\nreceivers:\n  - name: 'null'\n",
        )?;
        let port = free_port();
        let mut cmd = Command::new(program);
        cmd.arg(format!("--config.file={}", conf.display()))
            .arg(format!("--storage.path={}", dir.join("am-data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--cluster.listen-address=")
            .arg("--log.level=warn");
        let mut proc = Proc::spawn("alertmanager", cmd, dir)?;
        wait_port(&mut proc, port, Duration::from_secs(20))?;
        Ok(Some(Alertmanager {
            proc,
            url: format!("http://127.0.0.1:{port}"),
        }))
    }

    /// Alerts it holds whose `alertname` is `rule`, resolved ones included.
    pub async fn alerts(&self, client: &reqwest::Client, rule: &str) -> Vec<Value> {
        let Some(v) = get_json(client, &format!("{}/api/v2/alerts", self.url)).await else {
            return Vec::new();
        };
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter(|x| x["labels"]["alertname"] == rule)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// A real SMTP server (aiosmtpd from Debian's `python3-aiosmtpd`) on a
/// loopback port, delivering every message into a maildir.
pub struct SmtpReceiver {
    pub proc: Proc,
    pub port: u16,
    maildir: PathBuf,
}

impl SmtpReceiver {
    /// `None` when it is not installed outside CI.
    pub fn start(dir: &Path) -> Result<Option<SmtpReceiver>> {
        let Some(program) = external("aiosmtpd", "python3-aiosmtpd") else {
            return Ok(None);
        };
        let maildir = dir.join("maildir");
        let port = free_port();
        let mut cmd = Command::new(program);
        cmd.args(["-n", "-l"])
            .arg(format!("127.0.0.1:{port}"))
            .args(["-c", "aiosmtpd.handlers.Mailbox"])
            .arg(&maildir);
        let mut proc = Proc::spawn("smtpd", cmd, dir)?;
        wait_port(&mut proc, port, Duration::from_secs(20))?;
        Ok(Some(SmtpReceiver {
            proc,
            port,
            maildir,
        }))
    }

    /// Every message delivered so far, as raw text.
    pub fn messages(&self) -> Vec<String> {
        let mut out = Vec::new();
        for sub in ["new", "cur"] {
            if let Ok(entries) = std::fs::read_dir(self.maildir.join(sub)) {
                for e in entries.flatten() {
                    if let Ok(text) = std::fs::read_to_string(e.path()) {
                        out.push(text);
                    }
                }
            }
        }
        out
    }
}

/// A net-snmp `snmpd` on a loopback UDP port, stopped when dropped.
pub struct Snmpd {
    _proc: Proc,
    /// `127.0.0.1:port`.
    pub addr: String,
}

/// snmpd serving `conf_text` (its own config only, its persistent state in
/// `dir`); `None` outside CI when snmpd is not installed.
pub fn start_snmpd_with(dir: &Path, conf_text: &str) -> Result<Option<Snmpd>> {
    let Some(program) = external("snmpd", "snmpd") else {
        return Ok(None);
    };
    let conf = dir.join("snmpd.conf");
    std::fs::write(&conf, conf_text)?;
    let persist = dir.join("snmp-persist");
    std::fs::create_dir_all(&persist)?;
    // A UDP port the OS says is free now; retried if snmpd loses the race.
    let mut last = anyhow::anyhow!("snmpd did not start");
    for attempt in 0..5 {
        let port = std::net::UdpSocket::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let mut cmd = Command::new(&program);
        // -C: read only our file; the persistent dir keeps snmpd out of /var/lib/snmp.
        cmd.env("SNMP_PERSISTENT_DIR", &persist)
            .env("MIBS", "")
            .env("MIBDIRS", "/nonexistent")
            .args(["-f", "-Lo", "-C", "-c"])
            .arg(&conf)
            .arg("-p")
            .arg(dir.join(format!("snmpd-{attempt}.pid")))
            .arg(format!("udp:127.0.0.1:{port}"));
        let mut proc = Proc::spawn(&format!("snmpd-{attempt}"), cmd, dir)?;
        match proc.wait_line("NET-SNMP version", Duration::from_secs(10)) {
            Ok(_) => {
                return Ok(Some(Snmpd {
                    _proc: proc,
                    addr: format!("127.0.0.1:{port}"),
                }))
            }
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// A PostgreSQL cluster of the test's own: initdb in a temporary directory,
/// the server on an ephemeral loopback port with its socket in that
/// directory; the `postgres` role logs in over TCP with
/// [`Postgres::PASSWORD`] (SCRAM, as a production server asks) and over the
/// socket without (for `psql`). As root the
/// server runs as the `postgres` system user (PostgreSQL refuses root).
/// Stopped (SIGKILL, then its files removed) when dropped.
pub struct Postgres {
    server: Option<Proc>,
    bin: PathBuf,
    /// Holds the data directory and the socket.
    dir: tempfile::TempDir,
    owner: Option<(u32, u32)>,
    pub port: u16,
    /// `-c` settings beyond the test defaults.
    settings: Vec<String>,
}

impl Postgres {
    /// The `postgres` role's password over TCP.
    pub const PASSWORD: &'static str = "roomguard-test-postgres-password";

    /// Starts a fresh cluster; `None` outside CI when PostgreSQL is not
    /// installed (Debian package `postgresql`).
    pub fn start() -> Result<Option<Postgres>> {
        Postgres::start_with(&[])
    }

    /// [`Postgres::start`] with server settings (`name=value`) beyond the
    /// tests' small defaults; benchmarks size the server as production would.
    pub fn start_with(settings: &[&str]) -> Result<Option<Postgres>> {
        let Some(bin) = postgres_bin() else {
            let msg = "PostgreSQL is not installed (Debian package postgresql); the README's test command installs it";
            assert!(!in_ci(), "{msg}");
            eprintln!("\n*** SKIPPING: {msg} ***\n");
            return Ok(None);
        };
        // Under /tmp, not the test's own directory: the server's user must
        // be able to reach it.
        let dir = tempfile::Builder::new().prefix("roomguard-pg").tempdir()?;
        let owner = if is_root() {
            let ids = system_user("postgres")
                .context("running as root, and there is no `postgres` user to run PostgreSQL as")?;
            std::os::unix::fs::chown(dir.path(), Some(ids.0), Some(ids.1))?;
            Some(ids)
        } else {
            None
        };
        let pwfile = dir.path().join("pw");
        std::fs::write(&pwfile, Postgres::PASSWORD)?;
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(&pwfile, Some(uid), Some(gid))?;
        }
        let mut initdb = Command::new(bin.join("initdb"));
        initdb
            .args([
                "-U",
                "postgres",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
            ])
            .args(["-E", "UTF8", "--locale=C", "--no-sync"])
            .arg(format!("--pwfile={}", pwfile.display()))
            .arg("-D")
            .arg(dir.path().join("data"));
        as_owner(&mut initdb, owner);
        let out = initdb.output().context("initdb")?;
        ensure!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut pg = Postgres {
            server: None,
            bin,
            dir,
            owner,
            port: 0,
            settings: settings.iter().map(|s| s.to_string()).collect(),
        };
        pg.run()?;
        Ok(Some(pg))
    }

    /// Starts the server on a free port (again, after a kill: same data).
    fn run(&mut self) -> Result<()> {
        let mut last = anyhow!("PostgreSQL did not start");
        for attempt in 0..5 {
            let port = if self.port != 0 && attempt == 0 {
                self.port
            } else {
                free_port()
            };
            let mut cmd = Command::new(self.bin.join("postgres"));
            cmd.arg("-D")
                .arg(self.dir.path().join("data"))
                .args(["-p", &port.to_string(), "-c", "listen_addresses=127.0.0.1"])
                .arg("-c")
                .arg(format!(
                    "unix_socket_directories={}",
                    self.dir.path().display()
                ))
                // A test cluster: durability is not what is tested here
                // (crash tests kill the collector, or the server with its WAL).
                .args(["-c", "fsync=off", "-c", "full_page_writes=off"])
                .args(["-c", "max_connections=50", "-c", "shared_buffers=64MB"]);
            for s in &self.settings {
                cmd.arg("-c").arg(s);
            }
            as_owner(&mut cmd, self.owner);
            let mut proc = Proc::spawn("postgres", cmd, self.dir.path())?;
            match wait_port(&mut proc, port, Duration::from_secs(30)) {
                Ok(()) => {
                    self.port = port;
                    self.server = Some(proc);
                    return self.wait_ready();
                }
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// Waits until the server takes queries (it listens before recovery ends).
    fn wait_ready(&self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ok = Command::new(self.bin.join("pg_isready"))
                .arg("-h")
                .arg(self.dir.path())
                .args(["-p", &self.port.to_string(), "-U", "postgres", "-q"])
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                return Ok(());
            }
            ensure!(Instant::now() < deadline, "PostgreSQL did not become ready");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The server's (postmaster's) process id.
    pub fn pid(&self) -> Option<u32> {
        self.server.as_ref().map(Proc::pid)
    }

    /// A bare binary `COPY` of `rounds` rounds of `points` readings (one
    /// per point, ids known) into a new table `bare` of the samples' shape
    /// (partitioned, same primary key) in database `db`: readings/s. The
    /// ceiling the store's writer is measured against.
    pub async fn bare_copy_rate(&self, db: &str, points: usize, rounds: usize) -> Result<f64> {
        use futures_util::pin_mut;
        use roomguard_collector::store::postgres;
        use tokio_postgres::binary_copy::BinaryCopyInWriter;
        use tokio_postgres::types::Type;
        let cfg = postgres::settings(&self.url(db), Some(Postgres::PASSWORD))?;
        let c = postgres::connect(&cfg).await?;
        c.batch_execute(
            "CREATE TABLE bare (point_id BIGINT NOT NULL, ts BIGINT NOT NULL, value DOUBLE PRECISION,
               text TEXT, bad TEXT, PRIMARY KEY (point_id, ts)) PARTITION BY RANGE (ts);",
        )
        .await?;
        let t0 = roomguard_protocol::clock::now_ms() - rounds as i64 * 1_000;
        let (_, lo, _) = postgres::migrate::partition_for(t0);
        c.batch_execute(&format!(
            "CREATE TABLE bare_p PARTITION OF bare FOR VALUES FROM ({lo}) TO ({})",
            lo + 2 * 86_400_000
        ))
        .await?;
        let started = Instant::now();
        let mut copied = 0u64;
        for r in 1..=rounds {
            let ts = t0 + r as i64 * 1_000;
            let sink = c
                .copy_in("COPY bare (point_id, ts, value, text, bad) FROM STDIN (FORMAT binary)")
                .await?;
            let writer = BinaryCopyInWriter::new(
                sink,
                &[Type::INT8, Type::INT8, Type::FLOAT8, Type::TEXT, Type::TEXT],
            );
            pin_mut!(writer);
            let none: Option<&str> = None;
            for p in 0..points as i64 {
                let v = Some(20.0 + ((r as i64 + p) % 97) as f64 / 10.0);
                writer.as_mut().write(&[&p, &ts, &v, &none, &none]).await?;
            }
            copied += writer.finish().await?;
        }
        Ok(copied as f64 / started.elapsed().as_secs_f64())
    }

    /// `postgresql://postgres@127.0.0.1:{port}/{db}` (the password is [`Postgres::PASSWORD`]).
    pub fn url(&self, db: &str) -> String {
        format!("postgresql://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// Runs SQL through psql (to create databases and roles for a test).
    pub fn psql(&self, db: &str, sql: &str) -> Result<String> {
        let out = Command::new(self.bin.join("psql"))
            .arg("-h")
            .arg(self.dir.path())
            .args(["-p", &self.port.to_string(), "-U", "postgres", "-d", db])
            .args(["-v", "ON_ERROR_STOP=1", "-At", "-c", sql])
            .output()
            .context("psql")?;
        ensure!(
            out.status.success(),
            "psql {sql:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    /// Turns TLS on with this certificate and key (PEM) and restarts.
    pub fn enable_tls(&mut self, cert: &Path, key: &Path) -> Result<()> {
        let data = self.dir.path().join("data");
        for (from, to) in [(cert, "server.crt"), (key, "server.key")] {
            let dest = data.join(to);
            std::fs::copy(from, &dest)?;
            // The server refuses a key others can read.
            std::fs::set_permissions(&dest, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
            if let Some((uid, gid)) = self.owner {
                std::os::unix::fs::chown(&dest, Some(uid), Some(gid))?;
            }
        }
        let conf = data.join("postgresql.conf");
        let mut text = std::fs::read_to_string(&conf)?;
        text.push_str("\nssl = on\n");
        std::fs::write(&conf, text)?;
        self.restart()
    }

    /// SIGKILLs the server (its WAL recovers what was committed).
    pub fn kill(&mut self) {
        if let Some(mut p) = self.server.take() {
            p.kill();
        }
    }

    /// Starts it again on the same port and data.
    pub fn restart(&mut self) -> Result<()> {
        self.kill();
        // The killed postmaster's children notice and exit; its lock file
        // is stale once they have.
        std::thread::sleep(Duration::from_millis(500));
        self.run()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The newest installed PostgreSQL server's bin directory (Debian keeps
/// them under /usr/lib/postgresql/N/bin, not on PATH).
pub fn postgres_bin() -> Option<PathBuf> {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| {
            let e = e.ok()?;
            let v: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").is_file().then_some((v, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, b)| b)
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// (uid, gid) of a system user, from /etc/passwd.
fn system_user(name: &str) -> Option<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.first() == Some(&name) && f.len() > 3)
            .then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?)))?
    })
}

fn as_owner(cmd: &mut Command, owner: Option<(u32, u32)>) {
    use std::os::unix::process::CommandExt;
    if let Some((uid, gid)) = owner {
        cmd.uid(uid).gid(gid);
        // Its home, not root's, for anything that looks there.
        cmd.env("HOME", "/var/lib/postgresql");
    }
}

/// Runs openssl with `args` (split on spaces) in `dir`.
pub fn openssl(dir: &Path, args: &str) -> Result<()> {
    let args: Vec<&str> = args.split_whitespace().collect();
    let out = Command::new("openssl")
        .args(&args)
        .current_dir(dir)
        .output()?;
    ensure!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// A CA, a server certificate for localhost, and client certificates whose
/// common names are the MQTT user names. Extensions make them X.509 v3
/// certificates, which webpki requires.
pub fn test_certificates(dir: &Path, clients: &[&str]) -> Result<()> {
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName = DNS:localhost, IP:127.0.0.1\nextendedKeyUsage = serverAuth\n",
    )?;
    std::fs::write(dir.join("client.ext"), "extendedKeyUsage = clientAuth\n")?;
    let ca = "-x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=test-ca -keyout ca.key -out ca.pem";
    openssl(dir, &format!("req {ca}"))?;
    let mut names = vec![("server", "localhost", "server.ext")];
    names.extend(clients.iter().map(|c| (*c, *c, "client.ext")));
    for (name, cn, ext) in names {
        openssl(
            dir,
            &format!(
                "req -newkey rsa:2048 -nodes -subj /CN={cn} -keyout {name}.key -out {name}.csr"
            ),
        )?;
        openssl(
            dir,
            &format!(
                "x509 -req -in {name}.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 \
                 -extfile {ext} -out {name}.pem"
            ),
        )?;
    }
    Ok(())
}
