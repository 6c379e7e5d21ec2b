//! The SNMP driver against a real net-snmp `snmpd` started on a loopback
//! port: v2c GET and table walk, v3 authPriv (SHA/AES), and the clear errors
//! wrong credentials must give.

use anyhow::{Context, Result};
use roomguard_agent::config::AgentConfig;
use roomguard_agent::drivers::snmp::SnmpPoller;
use roomguard_e2e::*;
use std::path::Path;

/// A UPS (RFC 1628 values) with a three-line output table.
const SNMPD_CONF: &str = r#"
engineID     roomguard-test
rocommunity  public 127.0.0.1
createUser   rgv3 SHA "authpass123" AES "privpass123"
rouser       rgv3 priv
override .1.3.6.1.2.1.33.1.4.1.0 integer 5
override .1.3.6.1.2.1.33.1.2.1.0 integer 3
override .1.3.6.1.2.1.33.1.2.3.0 integer 42
override .1.3.6.1.2.1.33.1.2.5.0 integer 512
override .1.3.6.1.2.1.33.1.4.2.0 integer 499
override .1.3.6.1.2.1.33.1.4.4.1.2.1 integer 220
override .1.3.6.1.2.1.33.1.4.4.1.2.2 integer 221
override .1.3.6.1.2.1.33.1.4.4.1.2.3 integer 222
"#;

fn start_snmpd(dir: &Path) -> Result<Option<Snmpd>> {
    start_snmpd_with(dir, SNMPD_CONF)
}

/// A UPS-MIB device `ups-1` at `addr`, with `settings` (version, credentials,
/// timeouts) as agent TOML lines.
fn ups(addr: &str, settings: &str) -> Result<SnmpPoller> {
    poller(&format!(
        "[[snmp]]\nid = \"ups-1\"\nroom = \"r\"\nprofile = \"ups-mib\"\naddress = \"{addr}\"\n{settings}\n"
    ))
}

/// v3 settings for the user snmpd knows, with `auth` as its auth password.
fn v3(auth: &str) -> String {
    format!(
        "version = \"v3\"\nretries = 0\n[snmp.v3]\nuser = \"rgv3\"\nauth_protocol = \"sha\"\nauth_password = {{ value = \"{auth}\" }}\npriv_protocol = \"aes\"\npriv_password = {{ value = \"privpass123\" }}"
    )
}

/// Issue 20: a table-only view of a device that stops answering published
/// nothing at all, not even bad readings, so nothing downstream saw it go.
/// The rows known from the last walk now each get a bad reading saying why.
#[tokio::test]
async fn table_rows_known_from_the_last_walk_turn_bad_when_the_agent_stops_answering() -> Result<()>
{
    let dir = tempfile::tempdir()?;
    let Some(snmpd) = start_snmpd(dir.path())? else {
        return Ok(());
    };
    let mut p = ups(
        &snmpd.addr,
        "version = \"v2c\"\ntimeout = \"300ms\"\nretries = 0\ncommunity = { value = \"public\" }",
    )?;
    let r = p.poll().await;
    assert_eq!(reading(&r, "ups-1.output.3.voltage").value, Some(222.0));
    drop(snmpd);
    let r = p.poll().await;
    for line in 1..=3 {
        let x = reading(&r, &format!("ups-1.output.{line}.voltage"));
        assert!(!x.quality.is_good() && x.value.is_none(), "{x:?}");
    }
    assert!(r.error.is_some());
    Ok(())
}

/// Issue 20: a single-phase UPS listing input lines 2 and 3 at 0 V raised a
/// level-1 mains failure in a healthy room. Rows beyond the MIB's own line
/// count (upsInputNumLines), or a device's `rows`, are ignored.
#[tokio::test]
async fn phantom_rows_beyond_the_line_count_are_ignored() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let phantom = "rocommunity public 127.0.0.1\n\
        override .1.3.6.1.2.1.33.1.3.2.0 integer 1\n\
        override .1.3.6.1.2.1.33.1.3.3.1.3.1 integer 221\n\
        override .1.3.6.1.2.1.33.1.3.3.1.3.2 integer 0\n\
        override .1.3.6.1.2.1.33.1.3.3.1.3.3 integer 0\n\
        override .1.3.6.1.2.1.33.1.4.4.1.2.1 integer 220\n\
        override .1.3.6.1.2.1.33.1.4.4.1.2.2 integer 0\n";
    let Some(snmpd) = start_snmpd_with(dir.path(), phantom)? else {
        return Ok(());
    };
    let v2c = "version = \"v2c\"\ncommunity = { value = \"public\" }";
    let has = |r: &roomguard_agent::drivers::PollResult, id: &str| {
        r.readings.iter().any(|x| &*x.point == id)
    };
    let mut p = ups(&snmpd.addr, v2c)?;
    let r = p.poll().await;
    assert_eq!(reading(&r, "ups-1.input.1.voltage").value, Some(221.0));
    assert!(!has(&r, "ups-1.input.2.voltage") && !has(&r, "ups-1.input.3.voltage"));
    // No upsOutputNumLines here: every output row, unless the device says.
    assert!(has(&r, "ups-1.output.2.voltage"));
    let mut one = ups(&snmpd.addr, &format!("{v2c}\nrows = {{ output = 1 }}"))?;
    let r = one.poll().await;
    assert!(has(&r, "ups-1.output.1.voltage") && !has(&r, "ups-1.output.2.voltage"));
    Ok(())
}

/// Issue 20: a dead agent (nothing listens at the port) was reported as
/// "snmp: Receive"; it is the documented "no reply".
#[tokio::test]
async fn a_dead_agent_is_reported_as_no_reply() -> Result<()> {
    let port = std::net::UdpSocket::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let mut p = ups(
        &format!("127.0.0.1:{port}"),
        "version = \"v2c\"\ntimeout = \"300ms\"\nretries = 0\ncommunity = { value = \"public\" }",
    )?;
    let r = p.poll().await;
    let err = r.error.clone().unwrap_or_default();
    assert!(err.starts_with("no reply"), "{err}");
    assert!(r.readings.iter().all(|x| !x.quality.is_good()));
    Ok(())
}

/// Issue 20: the SNMPv3 context name is sent as configured: snmpd serves
/// only the default context, so a named one it does not know reads nothing.
#[tokio::test]
async fn the_v3_context_name_is_sent_as_configured() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let Some(snmpd) = start_snmpd(dir.path())? else {
        return Ok(());
    };
    let mut default = ups(
        &snmpd.addr,
        &format!("{}\ncontext_name = \"\"", v3("authpass123")),
    )?;
    let r = default.poll().await;
    assert_eq!(
        reading(&r, "ups-1.output_source").text.as_deref(),
        Some("on_battery")
    );
    let mut other = ups(
        &snmpd.addr,
        &format!("{}\ncontext_name = \"no-such-instance\"", v3("authpass123"))
            .replace("retries = 0", "retries = 0\ntimeout = \"500ms\""),
    )?;
    let r = other.poll().await;
    assert!(r.readings.iter().all(|x| !x.quality.is_good()), "{r:?}");
    assert!(r.error.is_some());
    Ok(())
}

/// An SNMP poller for one device described in agent TOML.
fn poller(device_toml: &str) -> Result<SnmpPoller> {
    let text =
        format!("site = \"s\"\nagent = \"a\"\n[mqtt]\nurl = \"mqtt://127.0.0.1\"\n[spool]\nconfirm = \"broker\"\n{device_toml}");
    let agent =
        AgentConfig::parse(&text, Path::new("test.toml")).map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(SnmpPoller::new(
        agent.snmp.into_iter().next().context("one SNMP device")?,
    ))
}

fn reading<'a>(
    r: &'a roomguard_agent::drivers::PollResult,
    point: &str,
) -> &'a roomguard_protocol::Reading {
    r.readings
        .iter()
        .find(|x| &*x.point == point)
        .unwrap_or_else(|| panic!("no reading {point} in {:#?}", r.readings))
}

#[tokio::test]
async fn v2c_get_and_table_walk_read_a_ups() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let Some(snmpd) = start_snmpd(dir.path())? else {
        return Ok(());
    };
    let mut p = ups(
        &snmpd.addr,
        "version = \"v2c\"
community = { value = \"public\" }",
    )?;
    let r = p.poll().await;
    let source = reading(&r, "ups-1.output_source");
    assert_eq!(
        (source.value, source.text.as_deref()),
        (Some(5.0), Some("on_battery"))
    );
    assert_eq!(
        reading(&r, "ups-1.battery_status").text.as_deref(),
        Some("low")
    );
    assert_eq!(reading(&r, "ups-1.minutes_remaining").value, Some(42.0));
    assert_eq!(reading(&r, "ups-1.battery_voltage").value, Some(51.2));
    assert_eq!(reading(&r, "ups-1.output_frequency").value, Some(49.9));
    for (line, volts) in [(1, 220.0), (2, 221.0), (3, 222.0)] {
        assert_eq!(
            reading(&r, &format!("ups-1.output.{line}.voltage")).value,
            Some(volts)
        );
    }
    // An object this agent does not have is a bad reading that says so, not a value.
    let missing = reading(&r, "ups-1.battery_temperature");
    assert!(!missing.quality.is_good(), "{missing:?}");
    Ok(())
}

/// Issue 20: a card that answers -1 for what it does not know and sends its
/// output voltages in 0.1 V where the MIB says 1 V. The shipped profile
/// reads its -1s as "not available" (out of RFC 1628's ranges), never -1
/// minutes; the override a user reaches for, `"output.voltage" = { scale =
/// 0.1 }` on the profile's table column, makes the voltages right.
#[tokio::test]
async fn a_quirky_card_is_read_right_with_column_overrides_and_sentinels() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let quirky = "rocommunity public 127.0.0.1\n\
        override .1.3.6.1.2.1.33.1.4.1.0 integer 3\n\
        override .1.3.6.1.2.1.33.1.2.3.0 integer -1\n\
        override .1.3.6.1.2.1.33.1.2.4.0 integer -1\n\
        override .1.3.6.1.2.1.33.1.4.4.1.2.1 integer 2201\n";
    let Some(snmpd) = start_snmpd_with(dir.path(), quirky)? else {
        return Ok(());
    };
    let v2c = "version = \"v2c\"\ncommunity = { value = \"public\" }";
    let not_available = |r: &roomguard_agent::drivers::PollResult| {
        for id in ["ups-1.minutes_remaining", "ups-1.charge_remaining"] {
            let x = reading(r, id);
            assert_eq!(x.value, None, "{x:?}");
            match &x.quality {
                roomguard_protocol::Quality::Bad(why) => {
                    assert!(why.starts_with("not available"), "{why}")
                }
                q => panic!("{id} is {q:?}"),
            }
        }
    };
    let mut plain = ups(&snmpd.addr, v2c)?;
    let r = plain.poll().await;
    not_available(&r);
    assert_eq!(reading(&r, "ups-1.output.1.voltage").value, Some(2201.0));

    let mut fixed = ups(
        &snmpd.addr,
        &format!("{v2c}\n[snmp.overrides]\n\"output.voltage\" = {{ scale = 0.1 }}"),
    )?;
    let r = fixed.poll().await;
    not_available(&r);
    assert_eq!(reading(&r, "ups-1.output.1.voltage").value, Some(220.1));
    Ok(())
}

#[tokio::test]
async fn v3_auth_priv_with_sha_and_aes_reads_the_ups() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let Some(snmpd) = start_snmpd(dir.path())? else {
        return Ok(());
    };
    let mut p = ups(&snmpd.addr, &v3("authpass123"))?;
    let r = p.poll().await;
    assert_eq!(
        reading(&r, "ups-1.output_source").text.as_deref(),
        Some("on_battery")
    );
    assert_eq!(reading(&r, "ups-1.output.2.voltage").value, Some(221.0));
    Ok(())
}

#[tokio::test]
async fn wrong_credentials_give_a_clear_error_and_no_values() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let Some(snmpd) = start_snmpd(dir.path())? else {
        return Ok(());
    };
    let mut wrong_password = ups(&snmpd.addr, &v3("wrongpass99"))?;
    let r = wrong_password.poll().await;
    let err = r.error.clone().unwrap_or_default();
    assert!(err.contains("authentication failed"), "{err}");
    assert!(r.readings.iter().all(|x| !x.quality.is_good()));

    let mut wrong_community = ups(
        &snmpd.addr,
        "version = \"v2c\"
timeout = \"300ms\"
retries = 0
community = { value = \"guess\" }",
    )?;
    let r = wrong_community.poll().await;
    let err = r.error.clone().unwrap_or_default();
    assert!(
        err.contains("no reply within") && err.contains("wrong community"),
        "{err}"
    );
    assert!(r.readings.iter().all(|x| !x.quality.is_good()));
    Ok(())
}

#[tokio::test]
async fn v1_reads_what_the_agent_has_and_names_what_it_lacks() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let Some(snmpd) = start_snmpd(dir.path())? else {
        return Ok(());
    };
    let mut p = ups(
        &snmpd.addr,
        "version = \"v1\"
community = { value = \"public\" }",
    )?;
    let r = p.poll().await;
    // SNMPv1 refuses a whole GET when one object is missing; the poller asks
    // again without it, so the objects that exist are still read.
    assert_eq!(
        reading(&r, "ups-1.output_source").text.as_deref(),
        Some("on_battery")
    );
    assert_eq!(reading(&r, "ups-1.minutes_remaining").value, Some(42.0));
    let missing = reading(&r, "ups-1.battery_temperature");
    assert_eq!(
        missing.quality,
        roomguard_protocol::Quality::Bad("noSuchName: the agent has no such object".into())
    );
    // Tables are walked with GETNEXT on v1.
    assert_eq!(reading(&r, "ups-1.output.3.voltage").value, Some(222.0));
    Ok(())
}
