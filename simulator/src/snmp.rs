//! SNMP v1/v2c agents for the simulated UPS (RFC 1628 UPS-MIB) and metered
//! PDU (PowerNet-MIB rPDU2 outlet table), answering GET, GETNEXT and GETBULK
//! from a MIB rebuilt from the site's values on every tick. A request with
//! the wrong community gets no answer, as real agents behave.
//!
//! Requests are decoded with snmp2; replies are encoded here (snmp2 keeps
//! its encoder private), with the few BER rules an SNMP reply needs.

use crate::model::SiteValues;
use snmp2::{MessageType, Pdu};
use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::{Arc, RwLock};
use tokio::net::UdpSocket;

/// A value in the simulated MIB.
#[derive(Debug, Clone, PartialEq)]
pub enum MibValue {
    Integer(i64),
    Gauge(u32),
    TimeTicks(u32),
    Text(String),
}

/// OID (as numbers) → value, ordered for GETNEXT.
pub type Mib = BTreeMap<Vec<u32>, MibValue>;

fn oid(s: &str) -> Vec<u32> {
    s.split('.').filter_map(|p| p.parse().ok()).collect()
}

const UPS: &str = "1.3.6.1.2.1.33.1";

/// The UPS-MIB view of the site: mains failure puts the UPS on battery.
pub fn ups_mib(v: &SiteValues, on_battery_s: f64) -> Mib {
    // On the inverter's battery when the grid is gone, or in a battery test.
    let mains = v.phase_v.iter().any(|x| *x > 100.0) && !v.ups_battery_test;
    let charge = if mains {
        100.0
    } else {
        (100.0 - on_battery_s / 18.0).max(0.0)
    };
    let mut m = Mib::new();
    let mut put = |suffix: &str, val: MibValue| {
        m.insert(oid(&format!("{UPS}.{suffix}")), val);
    };
    put("1.1.0", MibValue::Text("RoomGuard Simulated UPS".into()));
    put("1.2.0", MibValue::Text("SIM-UPS 10kVA".into()));
    // upsBattery
    put(
        "2.1.0",
        MibValue::Integer(if charge < 25.0 { 3 } else { 2 }),
    );
    put(
        "2.2.0",
        MibValue::Integer(if mains { 0 } else { on_battery_s as i64 }),
    );
    put("2.3.0", MibValue::Integer((charge * 0.6).round() as i64));
    put("2.4.0", MibValue::Integer(charge.round() as i64));
    put(
        "2.5.0",
        MibValue::Integer((v.pack_voltage_v * 10.0).round() as i64),
    );
    put(
        "2.7.0",
        MibValue::Integer(v.battery_room_temp_c.round() as i64),
    );
    // upsInput: one line
    put("3.2.0", MibValue::Integer(1));
    put("3.3.1.1.1", MibValue::Integer(1));
    put(
        "3.3.1.2.1",
        MibValue::Integer((v.frequency_hz * 10.0).round() as i64),
    );
    put("3.3.1.3.1", MibValue::Integer(v.phase_v[0].round() as i64));
    // upsOutput
    put("4.1.0", MibValue::Integer(if mains { 3 } else { 5 }));
    put("4.2.0", MibValue::Integer(500));
    put("4.3.0", MibValue::Integer(1));
    put("4.4.1.1.1", MibValue::Integer(1));
    put("4.4.1.2.1", MibValue::Integer(i64::from(UPS_OUTPUT_V)));
    put("4.4.1.3.1", MibValue::Integer(152));
    put("4.4.1.5.1", MibValue::Integer(35));
    // upsAlarm
    put("6.1.0", MibValue::Gauge(u32::from(!mains)));
    m
}

const PDU_OUTLETS: &str = "1.3.6.1.4.1.318.1.1.26.9.4.3.1";
const PDU_PHASE: &str = "1.3.6.1.4.1.318.1.1.26.6.3.1";
/// Outlets of the simulated PDU.
pub const OUTLETS: u32 = 8;

/// The UPS inverter's output voltage, as `ups_mib` reports it.
const UPS_OUTPUT_V: u32 = 220;

/// The rPDU2 view: eight metered outlets and one phase. The rack PDU is fed
/// by the UPS, so a mains failure leaves its voltage and load unchanged: only
/// the distribution room sees the grid go (one mains-failure alarm per site).
pub fn pdu_mib(v: &SiteValues) -> Mib {
    let mains = v.phase_v.iter().any(|x| *x > 100.0);
    let mut m = Mib::new();
    for n in 1..=OUTLETS {
        let amps_x10 = 8 + n * 3;
        m.insert(
            oid(&format!("{PDU_OUTLETS}.1.{n}")),
            MibValue::Integer(i64::from(n)),
        );
        m.insert(
            oid(&format!("{PDU_OUTLETS}.3.{n}")),
            MibValue::Text(format!("rack A1 outlet {n}")),
        );
        m.insert(
            oid(&format!("{PDU_OUTLETS}.6.{n}")),
            MibValue::Gauge(amps_x10),
        );
        m.insert(
            oid(&format!("{PDU_OUTLETS}.7.{n}")),
            MibValue::Gauge(amps_x10 * 22),
        );
    }
    // The phase carries every outlet's current (tenths of an ampere).
    let total_x10: u32 = (1..=OUTLETS).map(|n| 8 + n * 3).sum();
    m.insert(
        oid(&format!("{PDU_PHASE}.5.1")),
        MibValue::Integer(i64::from(total_x10)),
    );
    m.insert(
        oid(&format!("{PDU_PHASE}.6.1")),
        // On mains the UPS passes the grid through; on battery its inverter
        // holds the output.
        MibValue::Gauge(if mains {
            v.phase_v[0].round() as u32
        } else {
            UPS_OUTPUT_V
        }),
    );
    m
}

/// The second UPS, an Eaton 9PX with a Network-M2 card speaking XUPS-MIB
/// (1.3.6.1.4.1.534.1): three input phases, one output, runtime in seconds.
pub fn eaton_mib(v: &SiteValues, on_battery_s: f64) -> Mib {
    const X: &str = "1.3.6.1.4.1.534.1";
    let mains = v.phase_v.iter().any(|x| *x > 100.0);
    let on_battery = !mains || v.ups_battery_test;
    let charge = if mains {
        100.0
    } else {
        (100.0 - on_battery_s / 24.0).max(0.0)
    };
    let mut m = Mib::new();
    let mut put = |suffix: &str, val: MibValue| {
        m.insert(oid(&format!("{X}.{suffix}")), val);
    };
    put("2.1.0", MibValue::Integer((charge * 36.0).round() as i64)); // xupsBatTimeRemaining, s
    put(
        "2.2.0",
        MibValue::Integer(v.pack_voltage_v.round() as i64 * 4),
    ); // xupsBatVoltage, V DC (a 192 V string)
    put("2.4.0", MibValue::Integer(charge.round() as i64)); // xupsBatCapacity, %
    put("2.5.0", MibValue::Integer(if on_battery { 2 } else { 3 })); // xupsBatteryAbmStatus
    put(
        "3.1.0",
        MibValue::Integer((v.frequency_hz * 10.0).round() as i64),
    );
    put("3.3.0", MibValue::Integer(3)); // xupsInputNumPhases
    for (i, volts) in v.phase_v.iter().enumerate() {
        put(
            &format!("3.4.1.1.{}", i + 1),
            MibValue::Integer(i as i64 + 1),
        );
        put(
            &format!("3.4.1.2.{}", i + 1),
            MibValue::Integer(volts.round() as i64),
        );
    }
    put("4.1.0", MibValue::Integer(38)); // xupsOutputLoad, %
    put("4.2.0", MibValue::Integer(500));
    put("4.3.0", MibValue::Integer(1));
    put("4.4.1.1.1", MibValue::Integer(1));
    put("4.4.1.2.1", MibValue::Integer(i64::from(UPS_OUTPUT_V)));
    put("4.5.0", MibValue::Integer(if on_battery { 5 } else { 3 })); // xupsOutputSource
    put(
        "6.1.0",
        MibValue::Integer(v.battery_room_temp_c.round() as i64),
    );
    put("7.1.0", MibValue::Gauge(u32::from(on_battery))); // xupsAlarms
    m
}

/// The machine room's precision air conditioner, a Liebert unit with an
/// IntelliSlot card (LIEBERT-GP-ENVIRONMENTAL-MIB, 1.3.6.1.4.1.476.1.42.3.4):
/// return and supply air rows in the temperature table, return humidity,
/// the system state and the common alarm output.
pub fn liebert_mib(v: &SiteValues) -> Mib {
    const E: &str = "1.3.6.1.4.1.476.1.42.3.4";
    let mut m = Mib::new();
    let mut put = |suffix: &str, val: MibValue| {
        m.insert(oid(&format!("{E}.{suffix}")), val);
    };
    // Rows 1 return air, 2 supply air (their Descr well-known OIDs are not
    // read: the rows' meaning is in the profile's documentation).
    put(
        "1.3.3.1.3.1",
        MibValue::Integer(v.hot_aisle_temp_c.round() as i64),
    );
    put(
        "1.3.3.1.3.2",
        MibValue::Integer((v.inlet_temp_c - 2.0).round() as i64),
    );
    put(
        "2.2.3.1.3.1",
        MibValue::Integer(v.hot_aisle_rh.round() as i64),
    );
    put("3.1.0", MibValue::Integer(1)); // lgpEnvStateSystem on(1)
    put("3.8.0", MibValue::Integer(if v.pac_alarm { 1 } else { 2 })); // GeneralAlarmOutput on(1)/off(2)
    m
}

/// A Geist Watchdog 100 at the machine room's cold aisle (GEIST-V4-MIB
/// internal sensor, 1.3.6.1.4.1.21239.5.1.2): tenths of °C (units set to
/// Celsius), %RH, dew point.
pub fn geist_mib(v: &SiteValues) -> Mib {
    const G: &str = "1.3.6.1.4.1.21239.5.1";
    let mut m = Mib::new();
    m.insert(oid(&format!("{G}.1.7.0")), MibValue::Integer(1)); // temperatureUnits: Celsius
    m.insert(
        oid(&format!("{G}.2.1.3.1")),
        MibValue::Text("Cold aisle A".into()),
    );
    m.insert(
        oid(&format!("{G}.2.1.5.1")),
        MibValue::Integer((v.inlet_temp_c * 10.0).round() as i64),
    );
    m.insert(
        oid(&format!("{G}.2.1.6.1")),
        MibValue::Integer(v.inlet_rh.round() as i64),
    );
    m
}

/// An APC AP9335TH probe on a network management card, reported in the
/// universal I/O sensor table (PowerNet-MIB uioSensorStatusTable,
/// 1.3.6.1.4.1.318.1.1.25.1.2, indexed by port and sensor): whole °C, %RH.
pub fn apc_env_mib(v: &SiteValues) -> Mib {
    const U: &str = "1.3.6.1.4.1.318.1.1.25.1.2.1";
    let mut m = Mib::new();
    m.insert(
        oid(&format!("{U}.3.1.1")),
        MibValue::Text("Rack A1 front".into()),
    );
    m.insert(
        oid(&format!("{U}.6.1.1")),
        MibValue::Integer((v.inlet_temp_c + 0.5).round() as i64),
    );
    m.insert(
        oid(&format!("{U}.7.1.1")),
        MibValue::Integer(v.inlet_rh.round() as i64),
    );
    m.insert(oid(&format!("{U}.10.1.1")), MibValue::Integer(2)); // commsOK
    m
}

/// An APC rack ATS (PowerNet-MIB atsStatusDeviceStatus, 1.3.6.1.4.1.318.1.1.8.5.1).
pub fn apc_ats_mib(v: &SiteValues) -> Mib {
    const A: &str = "1.3.6.1.4.1.318.1.1.8.5.1";
    let ok = |b: bool| MibValue::Integer(if b { 2 } else { 1 }); // fail(1), ok(2)
    let mut m = Mib::new();
    m.insert(
        oid(&format!("{A}.2.0")),
        MibValue::Integer(i64::from(v.ats_selected)),
    );
    m.insert(
        oid(&format!("{A}.3.0")),
        ok(v.ats_source_ok.iter().all(|s| *s)), // atsRedundancyLost(1), atsFullyRedundant(2)
    );
    m.insert(oid(&format!("{A}.12.0")), ok(v.ats_source_ok[0]));
    m.insert(oid(&format!("{A}.13.0")), ok(v.ats_source_ok[1]));
    m
}

/// What to answer for one varbind.
enum Answer {
    Value(Vec<u32>, MibValue),
    /// v2c exception (noSuchObject / endOfMibView) for this OID.
    NoSuchObject(Vec<u32>),
    EndOfMibView(Vec<u32>),
}

fn next_after(mib: &Mib, after: &[u32]) -> Option<(Vec<u32>, MibValue)> {
    mib.range::<[u32], _>((Bound::Excluded(after), Bound::Unbounded))
        .next()
        .map(|(k, v)| (k.clone(), v.clone()))
}

/// Answers one decoded request; `None` means "do not reply".
pub fn answer(mib: &Mib, request: &[u8], community: &[u8]) -> Option<Vec<u8>> {
    let pdu = Pdu::from_bytes(request).ok()?;
    if pdu.community != community {
        return None;
    }
    let version = pdu.version().ok()? as i64;
    let v1 = version == 0;
    let asked: Vec<Vec<u32>> = pdu
        .varbinds
        .clone()
        .filter_map(|(o, _)| o.iter().map(|it| it.map(|n| n as u32).collect()))
        .collect();
    let mut answers = Vec::new();
    let (mut error_status, mut error_index) = (0i64, 0i64);
    match pdu.message_type {
        MessageType::GetRequest => {
            for (i, o) in asked.iter().enumerate() {
                match mib.get(o) {
                    Some(v) => answers.push(Answer::Value(o.clone(), v.clone())),
                    None if v1 => {
                        (error_status, error_index) = (2, i as i64 + 1);
                        break;
                    }
                    None => answers.push(Answer::NoSuchObject(o.clone())),
                }
            }
        }
        MessageType::GetNextRequest => {
            for (i, o) in asked.iter().enumerate() {
                match next_after(mib, o) {
                    Some((k, v)) => answers.push(Answer::Value(k, v)),
                    None if v1 => {
                        (error_status, error_index) = (2, i as i64 + 1);
                        break;
                    }
                    None => answers.push(Answer::EndOfMibView(o.clone())),
                }
            }
        }
        MessageType::GetBulkRequest if !v1 => {
            // For a bulk request snmp2 reads non-repeaters and max-repetitions
            // into the error fields.
            let non_repeaters = (pdu.error_status as usize).min(asked.len());
            let max_reps = (pdu.error_index as usize).min(64);
            for o in &asked[..non_repeaters] {
                answers.push(
                    next_after(mib, o).map_or(Answer::EndOfMibView(o.clone()), |(k, v)| {
                        Answer::Value(k, v)
                    }),
                );
            }
            let mut cursors: Vec<Vec<u32>> = asked[non_repeaters..].to_vec();
            for _ in 0..max_reps {
                if cursors.is_empty() {
                    break;
                }
                for c in cursors.iter_mut() {
                    match next_after(mib, c) {
                        Some((k, v)) => {
                            *c = k.clone();
                            answers.push(Answer::Value(k, v));
                        }
                        None => answers.push(Answer::EndOfMibView(c.clone())),
                    }
                }
            }
        }
        _ => return None,
    }
    if error_status != 0 {
        // v1 error replies echo the request's varbinds.
        answers = asked
            .iter()
            .map(|o| Answer::NoSuchObject(o.clone()))
            .collect();
    }
    let varbinds: Vec<u8> = answers
        .iter()
        .flat_map(|a| {
            let (o, value) = match a {
                Answer::Value(o, v) => (o, encode_value(v)),
                // v1 error replies echo the request's varbinds with NULL values.
                Answer::NoSuchObject(o) if error_status != 0 => (o, ber::tlv(ber::NULL, &[])),
                Answer::NoSuchObject(o) => (o, ber::tlv(ber::NO_SUCH_OBJECT, &[])),
                Answer::EndOfMibView(o) => (o, ber::tlv(ber::END_OF_MIB_VIEW, &[])),
            };
            ber::tlv(ber::SEQUENCE, &[ber::oid(o), value].concat())
        })
        .collect();
    let pdu_body = [
        ber::int(ber::INTEGER, i64::from(pdu.req_id)),
        ber::int(ber::INTEGER, error_status),
        ber::int(ber::INTEGER, error_index),
        ber::tlv(ber::SEQUENCE, &varbinds),
    ]
    .concat();
    let message = [
        ber::int(ber::INTEGER, version),
        ber::tlv(ber::OCTET_STRING, community),
        ber::tlv(ber::RESPONSE, &pdu_body),
    ]
    .concat();
    Some(ber::tlv(ber::SEQUENCE, &message))
}

fn encode_value(v: &MibValue) -> Vec<u8> {
    match v {
        MibValue::Integer(i) => ber::int(ber::INTEGER, *i),
        MibValue::Gauge(g) => ber::int(ber::GAUGE32, i64::from(*g)),
        MibValue::TimeTicks(t) => ber::int(ber::TIMETICKS, i64::from(*t)),
        MibValue::Text(t) => ber::tlv(ber::OCTET_STRING, t.as_bytes()),
    }
}

/// The few BER encodings an SNMP reply needs (X.690, RFC 3416 types).
pub mod ber {
    pub const INTEGER: u8 = 0x02;
    pub const OCTET_STRING: u8 = 0x04;
    pub const NULL: u8 = 0x05;
    pub const OID: u8 = 0x06;
    pub const SEQUENCE: u8 = 0x30;
    pub const GAUGE32: u8 = 0x42;
    pub const TIMETICKS: u8 = 0x43;
    pub const NO_SUCH_OBJECT: u8 = 0x80;
    pub const END_OF_MIB_VIEW: u8 = 0x82;
    pub const GET: u8 = 0xA0;
    pub const GET_BULK: u8 = 0xA5;
    pub const RESPONSE: u8 = 0xA2;

    pub fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(content.len() + 6);
        out.push(tag);
        let n = content.len();
        if n < 0x80 {
            out.push(n as u8);
        } else {
            let bytes = n.to_be_bytes();
            let skip = bytes.iter().take_while(|b| **b == 0).count();
            out.push(0x80 | (bytes.len() - skip) as u8);
            out.extend_from_slice(&bytes[skip..]);
        }
        out.extend_from_slice(content);
        out
    }

    /// Minimal two's-complement integer (also used for the unsigned
    /// application types, which are non-negative and get a leading zero).
    pub fn int(tag: u8, v: i64) -> Vec<u8> {
        let bytes = v.to_be_bytes();
        let mut start = 0;
        while start < 7
            && ((bytes[start] == 0 && bytes[start + 1] & 0x80 == 0)
                || (bytes[start] == 0xFF && bytes[start + 1] & 0x80 != 0))
        {
            start += 1;
        }
        tlv(tag, &bytes[start..])
    }

    pub fn oid(arcs: &[u32]) -> Vec<u8> {
        let mut body = Vec::new();
        let mut push = |mut n: u32| {
            let mut chunk = vec![(n & 0x7F) as u8];
            n >>= 7;
            while n > 0 {
                chunk.push(0x80 | (n & 0x7F) as u8);
                n >>= 7;
            }
            chunk.reverse();
            body.extend(chunk);
        };
        match arcs {
            [a, b, rest @ ..] => {
                push(a * 40 + b);
                rest.iter().for_each(|n| push(*n));
            }
            [a] => push(a * 40),
            [] => {}
        }
        tlv(OID, &body)
    }
}

/// Serves several agents on one socket, told apart by community (as a
/// proxy agent does): each MIB answers only its own community.
pub async fn serve_by_community(
    socket: UdpSocket,
    mibs: Vec<(Vec<u8>, Arc<RwLock<Mib>>)>,
) -> std::io::Result<()> {
    let mut buf = vec![0u8; 65_535];
    loop {
        let (len, peer) = socket.recv_from(&mut buf).await?;
        let reply = mibs.iter().find_map(|(community, mib)| {
            let mib = mib.read().unwrap_or_else(|p| p.into_inner());
            answer(&mib, &buf[..len], community)
        });
        if let Some(reply) = reply {
            let _ = socket.send_to(&reply, peer).await;
        }
    }
}

/// Serves `mib` on `socket` until the task is dropped.
pub async fn serve(
    socket: UdpSocket,
    mib: Arc<RwLock<Mib>>,
    community: Vec<u8>,
) -> std::io::Result<()> {
    let mut buf = vec![0u8; 65_535];
    loop {
        let (len, peer) = socket.recv_from(&mut buf).await?;
        let reply = {
            let mib = mib.read().unwrap_or_else(|p| p.into_inner());
            answer(&mib, &buf[..len], &community)
        };
        if let Some(reply) = reply {
            let _ = socket.send_to(&reply, peer).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{sample, Noise, Scenario};
    use snmp2::{Oid, Value};

    fn request(kind: u8, community: &[u8], oids: &[&str], nr: i64, reps: i64) -> Vec<u8> {
        let vbs: Vec<u8> = oids
            .iter()
            .flat_map(|o| {
                ber::tlv(
                    ber::SEQUENCE,
                    &[ber::oid(&oid(o)), ber::tlv(ber::NULL, &[])].concat(),
                )
            })
            .collect();
        let body = [
            ber::int(ber::INTEGER, 42),
            ber::int(ber::INTEGER, nr),
            ber::int(ber::INTEGER, reps),
            ber::tlv(ber::SEQUENCE, &vbs),
        ]
        .concat();
        let msg = [
            ber::int(ber::INTEGER, 1),
            ber::tlv(ber::OCTET_STRING, community),
            ber::tlv(kind, &body),
        ]
        .concat();
        ber::tlv(ber::SEQUENCE, &msg)
    }

    fn values(reply: &[u8]) -> Vec<(String, String)> {
        let pdu = Pdu::from_bytes(reply).unwrap();
        assert_eq!(pdu.req_id, 42);
        pdu.varbinds
            .map(|(o, v): (Oid<'_>, Value<'_>)| (o.to_id_string(), format!("{v:?}")))
            .collect()
    }

    #[test]
    fn mains_failure_puts_the_ups_on_battery() {
        let v = sample(Scenario::MainsFailure, 30.0, &mut Noise::new(1));
        let mib = ups_mib(&v, 30.0);
        let req = request(
            ber::GET,
            b"public",
            &["1.3.6.1.2.1.33.1.4.1.0", "1.3.6.1.2.1.33.1.6.1.0"],
            0,
            0,
        );
        let got = values(&answer(&mib, &req, b"public").unwrap());
        assert_eq!(got[0].1, "INTEGER: 5");
        assert_eq!(got[1].1, "UNSIGNED32: 1");
    }

    #[test]
    fn the_rack_pdu_stays_on_the_ups_through_a_mains_failure() {
        let v = sample(Scenario::MainsFailure, 30.0, &mut Noise::new(1));
        let mib = pdu_mib(&v);
        let req = request(
            ber::GET,
            b"public",
            &[
                "1.3.6.1.4.1.318.1.1.26.6.3.1.6.1",
                "1.3.6.1.4.1.318.1.1.26.9.4.3.1.6.1",
            ],
            0,
            0,
        );
        let got = values(&answer(&mib, &req, b"public").unwrap());
        assert_eq!(got[0].1, "UNSIGNED32: 220", "{got:?}");
        assert_eq!(got[1].1, "UNSIGNED32: 11", "outlet 1 still draws 1.1 A");
    }

    #[test]
    fn wrong_community_gets_silence() {
        let mib = ups_mib(&sample(Scenario::Normal, 0.0, &mut Noise::new(1)), 0.0);
        let req = request(ber::GET, b"guess", &["1.3.6.1.2.1.33.1.4.1.0"], 0, 0);
        assert!(answer(&mib, &req, b"public").is_none());
    }

    #[test]
    fn bulk_walks_the_outlet_table_in_order() {
        let mib = pdu_mib(&sample(Scenario::Normal, 0.0, &mut Noise::new(1)));
        let req = request(
            ber::GET_BULK,
            b"public",
            &["1.3.6.1.4.1.318.1.1.26.9.4.3.1.6"],
            0,
            10,
        );
        let got = values(&answer(&mib, &req, b"public").unwrap());
        assert_eq!(got.len(), 10);
        assert_eq!(got[0].0, "1.3.6.1.4.1.318.1.1.26.9.4.3.1.6.1");
        assert_eq!(got[7].0, "1.3.6.1.4.1.318.1.1.26.9.4.3.1.6.8");
        assert_eq!(
            got[8].0, "1.3.6.1.4.1.318.1.1.26.9.4.3.1.7.1",
            "walk runs past the column"
        );
    }

    #[test]
    fn missing_objects_are_reported_not_dropped() {
        let mib = ups_mib(&sample(Scenario::Normal, 0.0, &mut Noise::new(1)), 0.0);
        let req = request(ber::GET, b"public", &["1.3.6.1.2.1.33.1.99.0"], 0, 0);
        let got = values(&answer(&mib, &req, b"public").unwrap());
        assert_eq!(got[0].1, "NO SUCH OBJECT");
    }
}

#[cfg(test)]
mod ber_tests {
    use super::ber;

    #[test]
    fn integers_are_minimal_twos_complement() {
        assert_eq!(ber::int(ber::INTEGER, 0), vec![2, 1, 0]);
        assert_eq!(ber::int(ber::INTEGER, 127), vec![2, 1, 127]);
        assert_eq!(ber::int(ber::INTEGER, 128), vec![2, 2, 0, 128]);
        assert_eq!(ber::int(ber::INTEGER, -1), vec![2, 1, 0xFF]);
        assert_eq!(ber::int(ber::INTEGER, -129), vec![2, 2, 0xFF, 0x7F]);
        assert_eq!(
            ber::int(ber::GAUGE32, 4_294_967_295),
            vec![0x42, 5, 0, 0xFF, 0xFF, 0xFF, 0xFF]
        );
    }

    #[test]
    fn oids_use_base_128_arcs() {
        assert_eq!(
            ber::oid(&[1, 3, 6, 1, 4, 1, 318]),
            vec![6, 7, 0x2B, 6, 1, 4, 1, 0x82, 0x3E]
        );
    }

    #[test]
    fn long_lengths_use_the_long_form() {
        let t = ber::tlv(ber::OCTET_STRING, &[0u8; 300]);
        assert_eq!(&t[..4], &[4, 0x82, 0x01, 0x2C]);
    }
}
