//! SNMP traps and informs (v1, v2c, v3 traps; v1/v2c informs).
//!
//! A trap is a device telling the agent something now (UPS on battery,
//! battery low, input bad) rather than at its next poll. The listener finds
//! the device by the sender's address and its credentials, looks the
//! notification up in the device's profile and hands it to that device's
//! poller, which polls at once (so every value is fresh, not just the one
//! the trap names) and publishes any reading the profile says the trap sets.
//! A notification no profile knows is counted and logged, never dropped
//! unseen; one from an unknown address or with the wrong community or
//! credentials is refused, counted and logged.
//!
//! v3 informs are not answered: the receiver of an inform is the
//! authoritative engine and would need its own engine id and discovery
//! (RFC 3414); send v3 traps, or v2c informs, instead.

use super::config::{parse_oid, SnmpPoint, TrapDef};
use super::map::{map_value, SnmpValue};
use super::V3Credentials;
use roomguard_protocol::clock::now_ms;
use roomguard_protocol::{Quality, Reading};
use snmp2::{MessageType, Pdu, Value};
use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

/// snmpTrapOID.0: the second varbind of every v2c/v3 notification.
const SNMP_TRAP_OID: [u64; 11] = [1, 3, 6, 1, 6, 3, 1, 1, 4, 1, 0];
/// snmpTraps: v1 generic traps 0–5 become snmpTraps.(generic + 1) (RFC 3584).
const SNMP_TRAPS: [u64; 9] = [1, 3, 6, 1, 6, 3, 1, 1, 5];

/// A trap for one device's poller: poll now, and publish these readings.
#[derive(Debug, Clone)]
pub struct TrapEvent {
    /// Readings the profile says the trap sets (`set`), good, at arrival.
    pub readings: Vec<Reading>,
}

/// Traps by outcome, for the agent's metrics.
#[derive(Debug, Default)]
pub struct TrapCounters {
    /// Known to the device's profile: turned into a poll (and readings).
    pub known: AtomicU64,
    /// From a known device, authenticated, but no profile entry.
    pub unknown: AtomicU64,
    /// Wrong community, failed v3 authentication, or a v3 inform.
    pub refused: AtomicU64,
    /// From an address no SNMP device of this agent has.
    pub unknown_source: AtomicU64,
    /// Not a notification the agent can read.
    pub malformed: AtomicU64,
}

impl TrapCounters {
    pub fn by_outcome(&self) -> [(&'static str, u64); 5] {
        [
            ("known", self.known.load(Relaxed)),
            ("unknown", self.unknown.load(Relaxed)),
            ("refused", self.refused.load(Relaxed)),
            ("unknown_source", self.unknown_source.load(Relaxed)),
            ("malformed", self.malformed.load(Relaxed)),
        ]
    }
}

/// What the listener knows of one SNMP device.
pub(crate) struct TrapTarget {
    pub device: String,
    /// The addresses its traps come from (its polled address, resolved).
    pub ips: Vec<IpAddr>,
    pub community: Vec<u8>,
    pub v3: Option<V3Credentials>,
    /// The profile's and the device's trap definitions, by OID.
    pub traps: Vec<(Vec<u64>, TrapDef)>,
    /// The device's scalar points by id, for `set`.
    pub points: HashMap<String, SnmpPoint>,
    pub tx: mpsc::Sender<TrapEvent>,
}

/// The notification's identity and whether it wants an answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification {
    /// The OIDs it is known by, the RFC 3584 one first: a v1 trap from an
    /// SMIv2 MIB (UPS-MIB's upsTrapOnBattery, 1.3.6.1.2.1.33.2.1, sent as
    /// enterprise 1.3.6.1.2.1.33.2, specific 1) matches its profile entry
    /// either as enterprise.0.specific or as enterprise.specific.
    pub oids: Vec<Vec<u64>>,
    pub inform: bool,
}

/// The snmpTrapOID of a v2c/v3 notification's varbinds, or the OIDs of a
/// v1 trap (RFC 3584: enterprise.0.specific, or snmpTraps.(generic+1)).
pub fn notification_oids(pdu: &Pdu<'_>) -> Option<Vec<Vec<u64>>> {
    if let Some(v1) = &pdu.v1_trap_info {
        if (0..=5).contains(&v1.generic_trap) {
            let mut oid = SNMP_TRAPS.to_vec();
            oid.push(v1.generic_trap as u64 + 1);
            return Some(vec![oid]);
        }
        let enterprise: Vec<u64> = v1.enterprise.iter()?.collect();
        let specific = u64::try_from(v1.specific_trap).ok()?;
        let mut rfc = enterprise.clone();
        rfc.extend([0, specific]);
        let mut short = enterprise;
        short.push(specific);
        return Some(vec![rfc, short]);
    }
    for (name, value) in pdu.varbinds.clone() {
        let name: Vec<u64> = name.iter()?.collect();
        if name == SNMP_TRAP_OID {
            if let Value::ObjectIdentifier(oid) = value {
                return Some(vec![oid.iter()?.collect()]);
            }
            return None;
        }
    }
    None
}

/// The answer to a v2c inform: the same message with the PDU tag turned
/// from InformRequest into Response (RFC 3416 4.2.7: same request id and
/// varbinds, error-status 0). `None` when the bytes are not a v1/v2c
/// message this can answer.
pub fn inform_response(msg: &[u8]) -> Option<Vec<u8>> {
    // SEQUENCE { INTEGER version, OCTET STRING community, [6] PDU }
    let mut at = 0;
    let (tag, _, body) = tlv(msg, &mut at)?;
    if tag != 0x30 {
        return None;
    }
    let mut i = body;
    let (t, _, _) = tlv_skip(msg, &mut i)?; // version
    if t != 0x02 {
        return None;
    }
    let (t, _, _) = tlv_skip(msg, &mut i)?; // community
    if t != 0x04 {
        return None;
    }
    if *msg.get(i)? != 0xA6 {
        return None;
    }
    let mut out = msg.to_vec();
    out[i] = 0xA2;
    Some(out)
}

/// Reads a tag and length at `*at`; returns (tag, length, start of value)
/// and leaves `*at` at the value.
fn tlv(msg: &[u8], at: &mut usize) -> Option<(u8, usize, usize)> {
    let tag = *msg.get(*at)?;
    let first = *msg.get(*at + 1)?;
    let (len, head) = if first < 0x80 {
        (usize::from(first), 2)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 {
            return None;
        }
        let mut len = 0usize;
        for k in 0..n {
            len = (len << 8) | usize::from(*msg.get(*at + 2 + k)?);
        }
        (len, 2 + n)
    };
    let start = *at + head;
    if start.checked_add(len)? > msg.len() {
        return None;
    }
    *at = start;
    Some((tag, len, start))
}

/// Like [`tlv`], leaving `*at` after the value.
fn tlv_skip(msg: &[u8], at: &mut usize) -> Option<(u8, usize, usize)> {
    let r = tlv(msg, at)?;
    *at = r.2 + r.1;
    Some(r)
}

/// Readings a trap sets, by its definition and the point's mapping.
pub(crate) fn trap_readings(target: &TrapTarget, def: &TrapDef, ts: i64) -> Vec<Reading> {
    let Some(set) = &def.set else {
        return Vec::new();
    };
    let Some(pt) = target.points.get(&set.point) else {
        return Vec::new();
    };
    let raw = SnmpValue::Integer(set.value as i64);
    let mapped = map_value(&raw, &pt.mapping(), ts, None);
    let point = format!("{}.{}", target.device, set.point);
    vec![match mapped {
        Ok(v) => Reading {
            point: point.as_str().into(),
            value: v.value,
            text: v.text,
            ts,
            quality: Quality::Good,
        },
        Err(why) => Reading {
            point: point.as_str().into(),
            value: None,
            text: None,
            ts,
            quality: Quality::Bad(why),
        },
    }]
}

/// Listens for notifications until the agent stops.
pub(crate) struct TrapListener {
    pub(crate) socket: UdpSocket,
    pub(crate) targets: Vec<TrapTarget>,
    pub counters: Arc<TrapCounters>,
}

/// Largest datagram read (an SNMP message fits one UDP datagram).
const MAX_DATAGRAM: usize = 65_535;

impl TrapListener {
    pub async fn run(self) {
        let mut buf = vec![0u8; MAX_DATAGRAM];
        // Log each (sender, what went wrong) once; counters keep the rest.
        let mut said: HashSet<(IpAddr, String)> = HashSet::new();
        let mut v3_security: HashMap<usize, snmp2::v3::Security> = HashMap::new();
        loop {
            let (n, from) = match self.socket.recv_from(&mut buf).await {
                Ok(r) => r,
                Err(e) => {
                    // ICMP errors from earlier inform answers surface here.
                    tracing::debug!(error = %e, "trap socket");
                    continue;
                }
            };
            let msg = buf[..n].to_vec();
            self.handle(&msg, from, &mut said, &mut v3_security).await;
        }
    }

    async fn handle(
        &self,
        msg: &[u8],
        from: SocketAddr,
        said: &mut HashSet<(IpAddr, String)>,
        v3_security: &mut HashMap<usize, snmp2::v3::Security>,
    ) {
        let ip = canonical(from.ip());
        let candidates: Vec<usize> = (0..self.targets.len())
            .filter(|&i| self.targets[i].ips.contains(&ip))
            .collect();
        let mut say = |what: String| {
            if said.insert((ip, what.clone())) {
                tracing::warn!(from = %from, "{what}");
            }
        };
        if candidates.is_empty() {
            self.counters.unknown_source.fetch_add(1, Relaxed);
            say(
                "SNMP notification from an address no configured SNMP device has; ignored (counted as unknown_source)".into());
            return;
        }
        let is_v3 = msg_version(msg) == Some(3);
        // Which device sent it: the one whose credentials it carries.
        let mut found: Option<(usize, Notification)> = None;
        let mut parse_error: Option<String> = None;
        if is_v3 {
            for &i in &candidates {
                let Some(v3) = &self.targets[i].v3 else {
                    continue;
                };
                let security = v3_security.entry(i).or_insert_with(|| trap_security(v3));
                // snmp2 zeroes the v3 authentication parameters in the bytes
                // it checks: each attempt gets its own copy.
                let copy = msg.to_vec();
                match Pdu::from_bytes_with_security(&copy, Some(security)) {
                    Ok(pdu) => {
                        if pdu.message_type == MessageType::InformRequest {
                            parse_error = Some(
                                "SNMPv3 inform: not answered (send v3 traps or v2c informs)".into(),
                            );
                            break;
                        }
                        match notification(&pdu) {
                            Some(n) => found = Some((i, n)),
                            None => parse_error = Some("not a notification".into()),
                        }
                        break;
                    }
                    Err(snmp2::Error::AuthFailure(snmp2::v3::AuthErrorKind::EngineIdMismatch)) => {
                        // Another engine (the device was replaced or
                        // rebooted with a new id): learn it afresh once.
                        let mut fresh = trap_security(v3);
                        let again = msg.to_vec();
                        if let Ok(pdu) = Pdu::from_bytes_with_security(&again, Some(&mut fresh)) {
                            if let Some(n) = notification(&pdu) {
                                found = Some((i, n));
                                v3_security.insert(i, fresh);
                                break;
                            }
                        }
                        parse_error = Some("SNMPv3 authentication failed".into());
                    }
                    Err(e) => parse_error = Some(format!("SNMPv3: {e:?}")),
                }
            }
        } else {
            match Pdu::from_bytes(msg) {
                Ok(pdu) => match notification(&pdu) {
                    Some(n) => {
                        found = candidates
                            .iter()
                            .copied()
                            .find(|&i| {
                                self.targets[i].v3.is_none()
                                    && constant_eq(pdu.community, &self.targets[i].community)
                            })
                            .map(|i| (i, n));
                        if found.is_none() {
                            parse_error = Some("wrong community".into());
                        }
                    }
                    None => {
                        self.counters.malformed.fetch_add(1, Relaxed);
                        say("SNMP message that is not a notification; ignored".into());
                        return;
                    }
                },
                Err(e) => {
                    self.counters.malformed.fetch_add(1, Relaxed);
                    say(format!("unreadable SNMP notification ({e:?}); ignored"));
                    return;
                }
            }
        }
        let Some((first, n)) = found else {
            self.counters.refused.fetch_add(1, Relaxed);
            say(format!(
                "SNMP notification refused: {}",
                parse_error.unwrap_or_else(|| "no device there takes SNMPv3".into())
            ));
            return;
        };
        if n.inform {
            if let Some(answer) = inform_response(msg) {
                if let Err(e) = self.socket.send_to(&answer, from).await {
                    tracing::debug!(error = %e, "answering an inform");
                }
            }
        }
        // Several devices behind one address with one community (an agent
        // serving a UPS and a PDU): the one whose profile knows the trap.
        let same: Vec<usize> = if is_v3 {
            vec![first]
        } else {
            candidates
                .iter()
                .copied()
                .filter(|&i| self.targets[i].community == self.targets[first].community)
                .collect()
        };
        let ts = now_ms();
        let mut known = false;
        for &i in &same {
            let t = &self.targets[i];
            let Some((_, def)) = t.traps.iter().find(|(oid, _)| n.oids.contains(oid)) else {
                continue;
            };
            known = true;
            tracing::info!(device = %t.device, trap = %def.name, "SNMP trap: polling now");
            let event = TrapEvent {
                readings: trap_readings(t, def, ts),
            };
            // Full: a trap-driven poll is already due; it reads everything.
            let _ = t.tx.try_send(event);
        }
        if known {
            self.counters.known.fetch_add(1, Relaxed);
        } else {
            self.counters.unknown.fetch_add(1, Relaxed);
            let devices: Vec<&str> = same
                .iter()
                .map(|&i| self.targets[i].device.as_str())
                .collect();
            say(
                format!(
                    "SNMP trap {} from {} is in no profile; counted as unknown (add it to the profile's [[traps]] to act on it)",
                    dotted(&n.oids[0]),
                    devices.join(", ")
                ));
        }
    }
}

fn notification(pdu: &Pdu<'_>) -> Option<Notification> {
    let inform = match pdu.message_type {
        MessageType::Trap | MessageType::TrapV1 => false,
        MessageType::InformRequest => true,
        _ => return None,
    };
    Some(Notification {
        oids: notification_oids(pdu)?,
        inform,
    })
}

/// The SNMP version number of a message (0 = v1, 1 = v2c, 3 = v3).
fn msg_version(msg: &[u8]) -> Option<u8> {
    let mut at = 0;
    let (tag, _, _) = tlv(msg, &mut at)?;
    if tag != 0x30 {
        return None;
    }
    let (tag, len, start) = tlv(msg, &mut at)?;
    (tag == 0x02 && len == 1).then(|| msg[start])
}

/// A v3 security for receiving traps: the sender is the authoritative
/// engine, so its engine id is taken from the first authenticated message
/// (keys are localised to it). Boots start at 1 so a sender reporting 0
/// boots (net-snmp's snmptrap does) is not refused as unsynchronised.
fn trap_security(v3: &V3Credentials) -> snmp2::v3::Security {
    let mut s = snmp2::v3::Security::new(&v3.user, &v3.auth_password)
        .with_auth_protocol(v3.auth)
        .with_engine_boots_and_time(1, 0);
    if let Some(cipher) = v3.cipher {
        s = s.with_auth(snmp2::v3::Auth::AuthPriv {
            cipher,
            privacy_password: v3.priv_password.clone(),
        });
    }
    s
}

/// IPv4-mapped IPv6 addresses compare as IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

fn constant_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

pub fn dotted(oid: &[u64]) -> String {
    oid.iter().map(u64::to_string).collect::<Vec<_>>().join(".")
}

/// The trap definitions of a device, by parsed OID (checked at load).
pub fn by_oid(traps: &[TrapDef]) -> Vec<(Vec<u64>, TrapDef)> {
    traps
        .iter()
        .filter_map(|t| Some((parse_oid(&t.oid).ok()?, t.clone())))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A v2c InformRequest for upsTrapOnBattery, as net-snmp's snmpinform
    /// sends it (community "public", request id 0x1234, sysUpTime and
    /// snmpTrapOID varbinds).
    fn v2c_inform() -> Vec<u8> {
        let varbinds: Vec<u8> = [
            // sysUpTime.0 = TimeTicks 100
            vec![
                0x30, 0x0e, 0x06, 0x08, 0x2b, 6, 1, 2, 1, 1, 3, 0, 0x43, 0x02, 0x00, 0x64,
            ],
            // snmpTrapOID.0 = 1.3.6.1.2.1.33.2.1
            vec![
                0x30, 0x16, 0x06, 0x0a, 0x2b, 6, 1, 6, 3, 1, 1, 4, 1, 0, 0x06, 0x08, 0x2b, 6, 1, 2,
                1, 33, 2, 1,
            ],
        ]
        .concat();
        let mut vbs = vec![0x30, varbinds.len() as u8];
        vbs.extend(varbinds);
        let mut pdu = vec![0x02, 0x02, 0x12, 0x34, 0x02, 0x01, 0x00, 0x02, 0x01, 0x00];
        pdu.extend(vbs);
        let mut body = vec![0x02, 0x01, 0x01, 0x04, 0x06];
        body.extend(b"public");
        body.push(0xA6);
        body.push(pdu.len() as u8);
        body.extend(pdu);
        let mut msg = vec![0x30, body.len() as u8];
        msg.extend(body);
        msg
    }

    #[test]
    fn an_inform_is_answered_with_the_same_message_as_a_response() {
        let msg = v2c_inform();
        let answer = inform_response(&msg).unwrap();
        let pdu = Pdu::from_bytes(&answer).unwrap();
        assert_eq!(pdu.message_type, MessageType::Response);
        assert_eq!(pdu.req_id, 0x1234);
        assert_eq!(pdu.community, b"public");
        assert_eq!(answer.len(), msg.len());
    }

    #[test]
    fn a_v2c_notification_is_named_by_its_snmp_trap_oid() {
        let msg = v2c_inform();
        let pdu = Pdu::from_bytes(&msg).unwrap();
        let n = notification(&pdu).unwrap();
        assert!(n.inform);
        assert_eq!(n.oids, [vec![1, 3, 6, 1, 2, 1, 33, 2, 1]]);
        assert_eq!(msg_version(&msg), Some(1));
    }

    #[test]
    fn what_is_not_an_inform_gets_no_answer() {
        let mut msg = v2c_inform();
        let at = msg.iter().position(|&b| b == 0xA6).unwrap();
        msg[at] = 0xA7; // a v2 trap
        assert!(inform_response(&msg).is_none());
        assert!(inform_response(&[0x30, 0x82, 0xff]).is_none());
        assert!(inform_response(&[]).is_none());
    }
}
