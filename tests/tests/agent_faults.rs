//! The agent against real serial lines and hostile devices: Modbus RTU through
//! a pseudo-terminal pair (socat), and peers that send garbage, short or
//! over-long frames, exceptions, wrong transaction ids, or nothing at all,
//! plus an SNMP agent that answers too late. The agent must keep polling the
//! healthy devices and name what is wrong with the others.

use anyhow::{Context, Result};
use roomguard_e2e::*;
use serde_json::Value;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};

const PATIENCE: Duration = Duration::from_secs(60);

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn agent_toml(broker: &str, state: &Path, devices: &str) -> String {
    format!(
        "site = \"demo-site\"\nagent = \"edge-01\"\nstate_dir = {:?}\n[mqtt]\nurl = {broker:?}\nstatus_interval = \"1s\"\n{}{devices}",
        state.display().to_string(),
        agent_mqtt_toml("demo-site", "edge-01")
    )
}

async fn device_health(client: &reqwest::Client, http: &str) -> Option<Vec<Value>> {
    let doc = get_json(client, &format!("{http}/api/v1/agents")).await?;
    let agent = doc["agents"]
        .as_array()?
        .iter()
        .find(|a| a["agent"] == "edge-01")?
        .clone();
    agent["devices"].as_array().cloned()
}

fn health_of<'a>(devices: &'a [Value], id: &str) -> Option<&'a Value> {
    devices.iter().find(|d| d["device"] == id)
}

#[tokio::test(flavor = "multi_thread")]
async fn rtu_devices_on_a_serial_line_and_behind_a_device_server_are_polled_and_a_dead_unit_does_not_stop_them(
) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let Some(socat) = external("socat", "socat") else {
        return Ok(());
    };
    let (a, b) = (dir.path().join("ttyA"), dir.path().join("ttyB"));
    let mut cmd = Command::new(socat);
    cmd.arg("-d")
        .arg("-d")
        .arg(format!("pty,raw,echo=0,link={}", a.display()))
        .arg(format!("pty,raw,echo=0,link={}", b.display()));
    let mut pty = Proc::spawn("socat", cmd, dir.path())?;
    eventually(Duration::from_secs(10), "socat's pty links", || async {
        (a.exists() && b.exists()).then_some(())
    })
    .await?;
    assert!(pty.is_running());

    // A transparent serial device server: TCP on one side, a serial line (pty) on the other.
    let c = dir.path().join("ttyC");
    let dtu_port = free_port();
    let mut cmd = Command::new(external("socat", "socat").context("socat")?);
    // socat opens its addresses in order: the pty first, so it exists before
    // anyone connects to the listening side.
    cmd.arg(format!("pty,raw,echo=0,link={}", c.display()))
        .arg(format!("TCP-LISTEN:{dtu_port},bind=127.0.0.1,reuseaddr"));
    let _dtu = Proc::spawn("socat-dtu", cmd, dir.path())?;
    eventually(
        Duration::from_secs(10),
        "the device server's pty",
        || async { c.exists().then_some(()) },
    )
    .await?;

    let (a_path, c_path) = (a.display().to_string(), c.display().to_string());
    let (_sim, _addrs) = start_simulator(dir.path(), &["--rtu", &a_path, "--rtu", &c_path])?;
    let (_collector, http, mqtt) = start_collector(dir.path(), None)?;
    let devices = format!(
        r#"
[[modbus_buses]]
id = "rs485-1"
transport = "rtu"
serial_port = {:?}
baud_rate = 19200
timeout = "300ms"
request_pause = "5ms"

[[modbus]]
id = "mr-th-inlet"
room = "machine-room"
bus = "rs485-1"
unit = 1
profile = "generic-th-sensor"
interval = "1s"

[[modbus]]
id = "br-h2-1"
room = "battery-room"
bus = "rs485-1"
unit = 20
profile = "h2-detector"

[[modbus_buses]]
id = "dtu-1"
transport = "rtu_over_tcp"
address = "127.0.0.1:{dtu_port}"
timeout = "500ms"

[[modbus]]
id = "pd-meter-1"
room = "distribution-room"
bus = "dtu-1"
unit = 10
profile = "three-phase-meter"
interval = "1s"

# Nobody answers as unit 99 on this line.
[[modbus]]
id = "ghost"
room = "battery-room"
bus = "rs485-1"
unit = 99
profile = "generic-th-sensor"
interval = "1s"
"#,
        b.display().to_string(),
    );
    let _agent = start_agent(
        dir.path(),
        &agent_toml(&mqtt, &dir.path().join("state"), &devices),
    )?;
    let client = http_client();

    let temp = eventually(PATIENCE, "a temperature over RTU", || async {
        let p = latest_point(&client, &http, "mr-th-inlet.temperature").await?;
        (p["quality"] == "good")
            .then(|| p["value"].as_f64())
            .flatten()
    })
    .await?;
    assert!((15.0..40.0).contains(&temp), "{temp}");
    let volts = eventually(PATIENCE, "a meter voltage over RTU over TCP", || async {
        let p = latest_point(&client, &http, "pd-meter-1.voltage_a").await?;
        (p["quality"] == "good")
            .then(|| p["value"].as_f64())
            .flatten()
    })
    .await?;
    assert!((200.0..240.0).contains(&volts), "{volts}");
    eventually(PATIENCE, "hydrogen over RTU", || async {
        let p = latest_point(&client, &http, "br-h2-1.h2").await?;
        (p["quality"] == "good").then_some(())
    })
    .await?;
    let ghost = eventually(PATIENCE, "the silent unit reported as failing", || async {
        let devices = device_health(&client, &http).await?;
        let g = health_of(&devices, "ghost")?.clone();
        (g["consecutive_failures"].as_u64()? >= 2).then_some(g)
    })
    .await?;
    assert!(
        ghost["last_error"]
            .as_str()
            .unwrap_or("")
            .contains("no reply within"),
        "{ghost}"
    );
    // The live units keep flowing while the ghost is retried with backoff.
    let since = now_ms();
    eventually(
        PATIENCE,
        "fresh readings after the ghost failed",
        || async {
            let devices = device_health(&client, &http).await?;
            let th = health_of(&devices, "mr-th-inlet")?;
            (th["last_success"].as_i64()? > since && th["consecutive_failures"] == 0).then_some(())
        },
    )
    .await?;
    Ok(())
}

/// How a hostile Modbus TCP peer misbehaves.
#[derive(Clone, Copy, Debug)]
enum Hostility {
    Garbage,
    ShortFrame,
    OverlongFrame,
    WrongTransaction,
    Exception,
    Silent,
    /// Answers reads of at most this many registers (value 215 each) and
    /// refuses larger ones with exception 03, as the SDM630 does past 80.
    RefusesOver(u16),
}

/// Serves one hostile Modbus TCP device; returns its address.
async fn hostile_device(kind: Hostility) -> Result<String> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?.to_string();
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut header = [0u8; 7];
                loop {
                    if sock.read_exact(&mut header).await.is_err() {
                        return;
                    }
                    let len =
                        usize::from(u16::from_be_bytes([header[4], header[5]])).saturating_sub(1);
                    let mut pdu = vec![0u8; len.min(260)];
                    if sock.read_exact(&mut pdu).await.is_err() {
                        return;
                    }
                    let (tid, unit, function) = (
                        [header[0], header[1]],
                        header[6],
                        pdu.first().copied().unwrap_or(0),
                    );
                    let reply: Vec<u8> = match kind {
                        Hostility::Garbage => b"\xde\xad\xbe\xef garbage \x00\xff".to_vec(),
                        Hostility::ShortFrame => vec![tid[0], tid[1], 0, 0],
                        Hostility::OverlongFrame => {
                            let mut r =
                                vec![tid[0], tid[1], 0, 0, 0xFF, 0xFF, unit, function, 0xFE];
                            r.extend(std::iter::repeat_n(0x55, 600));
                            r
                        }
                        Hostility::WrongTransaction => {
                            let t = u16::from_be_bytes(tid).wrapping_add(7).to_be_bytes();
                            vec![t[0], t[1], 0, 0, 0, 7, unit, function, 4, 0, 1, 0, 2]
                        }
                        Hostility::Exception => {
                            vec![tid[0], tid[1], 0, 0, 0, 3, unit, function | 0x80, 0x02]
                        }
                        Hostility::Silent => continue,
                        Hostility::RefusesOver(max) => {
                            let count = pdu
                                .get(3..5)
                                .map_or(0, |c| u16::from_be_bytes([c[0], c[1]]));
                            if count > max {
                                vec![tid[0], tid[1], 0, 0, 0, 3, unit, function | 0x80, 0x03]
                            } else {
                                let bytes = (count * 2) as u8;
                                let mut r =
                                    vec![tid[0], tid[1], 0, 0, 0, 3 + bytes, unit, function, bytes];
                                for _ in 0..count {
                                    r.extend_from_slice(&215u16.to_be_bytes());
                                }
                                r
                            }
                        }
                    };
                    if sock.write_all(&reply).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    Ok(addr)
}

/// An SNMP "agent" that relays to the real one but answers after `delay`.
async fn late_snmp_agent(upstream: String, delay: Duration) -> Result<String> {
    let front = UdpSocket::bind("127.0.0.1:0").await?;
    let addr = front.local_addr()?.to_string();
    let front = std::sync::Arc::new(front);
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65_535];
        loop {
            let Ok((n, peer)) = front.recv_from(&mut buf).await else {
                return;
            };
            let request = buf[..n].to_vec();
            let (front, upstream) = (front.clone(), upstream.clone());
            tokio::spawn(async move {
                let Ok(back) = UdpSocket::bind("127.0.0.1:0").await else {
                    return;
                };
                if back.send_to(&request, &upstream).await.is_err() {
                    return;
                }
                let mut reply = vec![0u8; 65_535];
                let Ok(Ok(m)) =
                    tokio::time::timeout(Duration::from_secs(5), back.recv(&mut reply)).await
                else {
                    return;
                };
                tokio::time::sleep(delay).await;
                let _ = front.send_to(&reply[..m], peer).await;
            });
        }
    });
    Ok(addr)
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_devices_are_reported_and_never_stop_the_healthy_ones() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (_sim, sim) = start_simulator(dir.path(), &[])?;
    let (_collector, http, mqtt) = start_collector(dir.path(), None)?;
    let kinds = [
        ("garbage", Hostility::Garbage),
        ("short", Hostility::ShortFrame),
        ("overlong", Hostility::OverlongFrame),
        ("wrong-tid", Hostility::WrongTransaction),
        ("exception", Hostility::Exception),
        ("silent", Hostility::Silent),
    ];
    let mut devices = format!(
        "[[modbus]]\nid = \"good\"\nroom = \"machine-room\"\naddress = {:?}\nunit = 1\nprofile = \"generic-th-sensor\"\ninterval = \"1s\"\n",
        sim.modbus
    );
    for (id, kind) in kinds {
        let addr = hostile_device(kind).await?;
        devices.push_str(&format!(
            "[[modbus]]\nid = \"{id}\"\nroom = \"machine-room\"\naddress = {addr:?}\nunit = 1\nprofile = \"generic-th-sensor\"\ninterval = \"1s\"\ntimeout = \"300ms\"\n"
        ));
    }
    let late = late_snmp_agent(sim.snmp_ups.clone(), Duration::from_millis(800)).await?;
    devices.push_str(&format!(
        "[[snmp]]\nid = \"late-ups\"\nroom = \"machine-room\"\nprofile = \"ups-mib\"\naddress = {late:?}\nversion = \"v2c\"\ncommunity = {{ value = \"public\" }}\ntimeout = \"300ms\"\nretries = 1\ninterval = \"1s\"\n"
    ));
    devices.push_str(&format!(
        "[[snmp]]\nid = \"ups-1\"\nroom = \"machine-room\"\nprofile = \"ups-mib\"\naddress = {:?}\nversion = \"v2c\"\ncommunity = {{ value = \"public\" }}\ninterval = \"1s\"\n",
        sim.snmp_ups
    ));
    let mut agent = start_agent(
        dir.path(),
        &agent_toml(&mqtt, &dir.path().join("state"), &devices),
    )?;
    let client = http_client();

    let health = eventually(
        PATIENCE,
        "every hostile device reported with its error",
        || async {
            let devices = device_health(&client, &http).await?;
            let failing = [
                "garbage",
                "short",
                "overlong",
                "wrong-tid",
                "exception",
                "silent",
                "late-ups",
            ];
            for id in failing {
                let h = health_of(&devices, id)?;
                if h["consecutive_failures"].as_u64()? < 1 || !h["last_error"].is_string() {
                    return None;
                }
            }
            Some(devices)
        },
    )
    .await?;
    let error_of = |id: &str| {
        health_of(&health, id)
            .and_then(|h| h["last_error"].as_str())
            .unwrap_or("")
            .to_owned()
    };
    assert!(
        error_of("exception").contains("IllegalDataAddress"),
        "{}",
        error_of("exception")
    );
    assert!(
        error_of("silent").contains("no reply within"),
        "{}",
        error_of("silent")
    );
    assert!(
        error_of("late-ups").contains("no reply within"),
        "{}",
        error_of("late-ups")
    );
    for id in ["garbage", "short", "overlong", "wrong-tid"] {
        let e = error_of(id);
        assert!(!e.is_empty(), "{id} has no error");
        // It did answer, with bytes that make no frame: not "no reply".
        assert!(!e.contains("no reply"), "{id}: {e}");
        eprintln!("{id}: {e}");
    }

    // Meanwhile the healthy devices keep being read, fresh and good.
    let since = now_ms();
    eventually(PATIENCE, "healthy devices still polled", || async {
        let devices = device_health(&client, &http).await?;
        let fresh = |id: &str| {
            health_of(&devices, id).is_some_and(|h| {
                h["last_success"].as_i64().is_some_and(|t| t > since)
                    && h["consecutive_failures"] == 0
            })
        };
        (fresh("good") && fresh("ups-1")).then_some(())
    })
    .await?;
    let t = latest_point(&client, &http, "good.temperature")
        .await
        .context("good.temperature")?;
    assert_eq!(t["quality"], "good");
    // Hostile points are stored as bad readings with the reason, never as values.
    let bad = latest_point(&client, &http, "exception.temperature")
        .await
        .context("exception.temperature")?;
    assert_eq!(bad["quality"], "bad");
    assert!(bad["value"].is_null());
    // Failing devices back off; waiting out a backoff is not a poll
    // started late, so no cycle overrun is counted for them.
    let health = eventually(
        PATIENCE,
        "the silent device well into its backoff",
        || async {
            let devices = device_health(&client, &http).await?;
            (health_of(&devices, "silent")?["consecutive_failures"].as_u64()? >= 3)
                .then_some(devices)
        },
    )
    .await?;
    for id in ["silent", "garbage", "exception", "late-ups"] {
        assert_eq!(
            health_of(&health, id).map(|h| h["cycle_overruns"].clone()),
            Some(serde_json::json!(0)),
            "{id}: backoff counted as overruns"
        );
    }
    assert!(agent.is_running(), "the agent died:\n{}", agent.log_tail());
    Ok(())
}

/// Issue 20: a device that refuses reads larger than it takes (exception
/// 03) made every point of the read bad, poll after poll. The agent splits
/// the refused read into one read per point, keeps that plan, and the
/// points are good; it says so once in its log and in its status.
#[tokio::test(flavor = "multi_thread")]
async fn a_device_that_refuses_a_large_read_is_read_point_by_point_and_its_points_are_good(
) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (_collector, http, mqtt) = start_collector(dir.path(), None)?;
    let addr = hostile_device(Hostility::RefusesOver(1)).await?;
    let devices = format!(
        "[[modbus]]\nid = \"picky\"\nroom = \"machine-room\"\naddress = {addr:?}\nunit = 1\nprofile = \"generic-th-sensor\"\ninterval = \"1s\"\n"
    );
    let agent = start_agent(
        dir.path(),
        &agent_toml(&mqtt, &dir.path().join("state"), &devices),
    )?;
    let client = http_client();
    let since = now_ms();
    eventually(
        PATIENCE,
        "the picky device's points good, twice in a row",
        || async {
            let devices = device_health(&client, &http).await?;
            let h = health_of(&devices, "picky")?;
            // The learned plan is in the status: one read split.
            (h["last_success"].as_i64()? > since + 2_000
                && h["consecutive_failures"] == 0
                && h["reads_split"] == 1)
                .then_some(())
        },
    )
    .await?;
    for point in ["picky.temperature", "picky.humidity"] {
        let p = latest_point(&client, &http, point).await.context("point")?;
        assert_eq!(
            (p["quality"].as_str(), p["value"].as_f64()),
            (Some("good"), Some(21.5)),
            "{p}"
        );
    }
    let log = std::fs::read_to_string(dir.path().join("agent.stderr.log"))?;
    assert_eq!(
        log.matches("reading them one by one").count(),
        1,
        "the plan is learned once and kept:\n{}",
        agent.log_tail()
    );
    Ok(())
}
