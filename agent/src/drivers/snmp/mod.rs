//! SNMP driver (snmp2): v1, v2c and v3 (authNoPriv, authPriv). Scalars are
//! fetched many OIDs per GET; tables are walked with GETBULK (GETNEXT on v1)
//! and each row's index goes into the point id.
//!
//! snmp2 has no timeouts of its own and reads whatever datagram arrives next,
//! so every call runs under a timeout, and after a timeout or a reply to some
//! other request the session (its UDP socket) is replaced: a late reply then
//! lands on a closed port instead of being taken for the next answer. Each
//! device is polled by its own task, so a dead or slow agent delays no other.

pub mod config;
pub mod map;
pub mod trap;

use self::config::{
    parse_oid, AuthProtocol, PrivProtocol, SnmpPoint, SnmpTable, SnmpVersion, ValueKind,
};
use self::map::{map_value, CounterSample, Mapping, SnmpValue};
use crate::config::SnmpSpec;
use crate::drivers::{Backoff, DevicePoll, PollResult};
use roomguard_protocol::clock::{jitter, now_ms};
use roomguard_protocol::{PointMeta, Quality, Reading};
use snmp2::{AsyncSession, Oid, Value};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use thiserror::Error;
use tokio::sync::mpsc;
use tokio::time::timeout;

/// Most rows read from one table column: a guard against agents whose walk never ends.
const MAX_ROWS: usize = 1024;

#[derive(Debug, Error, Clone)]
pub enum SnmpError {
    #[error("no reply within {0:?} (agent down, wrong address, or wrong community)")]
    Timeout(Duration),
    #[error("cannot open a session to {0}: {1}")]
    Session(String, String),
    #[error("SNMPv3 authentication failed: wrong user, password or protocol ({0})")]
    Auth(String),
    #[error("agent answered {} at varbind {index}", error_status_name(*status))]
    Agent { status: u32, index: u32 },
    /// The request was refused at the address (ICMP port unreachable): the
    /// agent is down or listens elsewhere.
    #[error("no reply: nothing answers at the address (agent down, or wrong address or port)")]
    Unreachable,
    #[error("snmp: {0}")]
    Protocol(String),
}

/// SNMPv3 credentials, resolved from the configuration at start.
pub(crate) struct V3Credentials {
    user: Vec<u8>,
    auth_password: Vec<u8>,
    auth: snmp2::v3::AuthProtocol,
    cipher: Option<snmp2::v3::Cipher>,
    priv_password: Vec<u8>,
    context_name: String,
}

/// One SNMP device's poller: its session, credentials and counter history.
pub struct SnmpPoller {
    spec: SnmpSpec,
    address: String,
    community: Vec<u8>,
    v3: Option<V3Credentials>,
    session: Option<Box<AsyncSession>>,
    next_req_id: i32,
    counters: HashMap<String, CounterSample>,
    /// Requests sent in the current poll (for the agent's metrics).
    requests: u32,
    /// What the points of the current poll are (table rows come and go).
    meta: Vec<PointMeta>,
    /// Each table column's rows at its last successful walk: when the walk
    /// fails or comes back empty, each still gets a bad reading saying why,
    /// so a table (or a device with only tables) that vanishes is seen.
    known_rows: HashMap<(usize, usize), Vec<String>>,
    /// Tables whose `rows_oid` the agent does not have: not asked again.
    no_row_count: std::collections::HashSet<String>,
    /// Traps for this device, from the agent's trap listener.
    traps: Option<mpsc::Receiver<trap::TrapEvent>>,
}

/// `host:port` from a configured address, adding `port` when it has none
/// (`192.0.2.7`, `ups.local`, `[2001:db8::7]`, a bare IPv6 address).
pub(crate) fn with_default_port(addr: &str, port: u16) -> String {
    if addr.parse::<std::net::SocketAddr>().is_ok() {
        return addr.to_owned();
    }
    if addr.parse::<std::net::Ipv6Addr>().is_ok() {
        return format!("[{addr}]:{port}");
    }
    match addr.rsplit_once(':') {
        Some((host, p)) if !host.ends_with(']') || host.starts_with('[') => {
            if p.parse::<u16>().is_ok() {
                addr.to_owned()
            } else {
                format!("{addr}:{port}")
            }
        }
        _ => format!("{addr}:{port}"),
    }
}

/// SNMPv1 error-status noSuchName (RFC 1157).
const NO_SUCH_NAME: u32 = 2;

/// The standard SNMP error-status names (RFC 3416).
fn error_status_name(code: u32) -> String {
    const NAMES: [&str; 19] = [
        "noError",
        "tooBig",
        "noSuchName",
        "badValue",
        "readOnly",
        "genErr",
        "noAccess",
        "wrongType",
        "wrongLength",
        "wrongEncoding",
        "wrongValue",
        "noCreation",
        "inconsistentValue",
        "resourceUnavailable",
        "commitFailed",
        "undoFailed",
        "authorizationError",
        "notWritable",
        "inconsistentName",
    ];
    NAMES
        .get(code as usize)
        .map_or_else(|| format!("error-status {code}"), |n| (*n).to_owned())
}

fn owned(v: &Value<'_>) -> SnmpValue {
    match v {
        Value::Integer(i) => SnmpValue::Integer(*i),
        Value::Counter32(c) => SnmpValue::Counter32(*c),
        Value::Counter64(c) => SnmpValue::Counter64(*c),
        Value::Unsigned32(g) => SnmpValue::Gauge(*g),
        Value::Timeticks(t) => SnmpValue::TimeTicks(*t),
        Value::OctetString(b) => SnmpValue::OctetString(b.to_vec()),
        Value::NoSuchObject => SnmpValue::Missing("noSuchObject"),
        Value::NoSuchInstance => SnmpValue::Missing("noSuchInstance"),
        Value::EndOfMibView => SnmpValue::Missing("endOfMibView"),
        _ => SnmpValue::Missing("a value type RoomGuard does not read"),
    }
}

fn oid_vec(oid: &Oid<'_>) -> Option<Vec<u64>> {
    oid.iter().map(|it| it.collect())
}

fn classify(e: snmp2::Error) -> SnmpError {
    use snmp2::v3::AuthErrorKind as K;
    match e {
        // Credentials the agent rejects: retrying cannot help.
        snmp2::Error::AuthFailure(
            kind @ (K::NotAuthenticated
            | K::UsernameMismatch
            | K::SignatureMismatch
            | K::UnsupportedUSM),
        ) => SnmpError::Auth(format!("{kind:?}")),
        snmp2::Error::Receive => SnmpError::Unreachable,
        // Engine time, boots or id moved on (an agent reboot, a long idle gap
        // on a slow poll interval): a fresh session re-discovers them, so
        // these are retried like any other failure.
        other => SnmpError::Protocol(format!("{other:?}")),
    }
}

impl V3Credentials {
    pub(crate) fn from_config(v: &config::V3Config) -> V3Credentials {
        let auth = match v.auth_protocol {
            AuthProtocol::Md5 => snmp2::v3::AuthProtocol::Md5,
            AuthProtocol::Sha => snmp2::v3::AuthProtocol::Sha1,
        };
        let cipher = v.priv_protocol.map(|p| match p {
            PrivProtocol::Des => snmp2::v3::Cipher::Des,
            PrivProtocol::Aes => snmp2::v3::Cipher::Aes128,
        });
        // Secrets were checked at load; resolved once here, never logged.
        let secret =
            |s: &config::Secret| s.resolve().ok().flatten().unwrap_or_default().into_bytes();
        V3Credentials {
            user: v.user.clone().into_bytes(),
            auth_password: secret(&v.auth_password),
            auth,
            cipher,
            priv_password: secret(&v.priv_password),
            context_name: v.context_name.clone(),
        }
    }
}

/// The community of a v1/v2c device (checked at load).
pub(crate) fn community_of(d: &config::SnmpDevice) -> Vec<u8> {
    d.community
        .resolve()
        .ok()
        .flatten()
        .unwrap_or_default()
        .into_bytes()
}

impl SnmpPoller {
    /// Builds the poller; credentials were checked at config load.
    pub fn new(spec: SnmpSpec) -> SnmpPoller {
        let d = &spec.device;
        let address = with_default_port(&d.address, 161);
        let community = community_of(d);
        let v3 = d.v3.as_ref().map(V3Credentials::from_config);
        SnmpPoller {
            spec,
            address,
            community,
            v3,
            session: None,
            next_req_id: (now_ms() & 0x3fff_ffff) as i32,
            counters: HashMap::new(),
            requests: 0,
            meta: Vec::new(),
            known_rows: HashMap::new(),
            no_row_count: std::collections::HashSet::new(),
            traps: None,
        }
    }

    /// Takes the device's traps from the listener: each one polls at once.
    pub fn with_traps(mut self, rx: mpsc::Receiver<trap::TrapEvent>) -> SnmpPoller {
        self.traps = Some(rx);
        self
    }

    pub fn id(&self) -> &str {
        &self.spec.device.id
    }

    async fn open(&mut self) -> Result<Box<AsyncSession>, SnmpError> {
        let to = self.spec.device.timeout;
        let req_id = self.next_req_id;
        self.next_req_id = self.next_req_id.wrapping_add(10_000) & 0x3fff_ffff;
        let addr = self.address.clone();
        let session_err = |e: std::io::Error| SnmpError::Session(addr.clone(), e.to_string());
        let mut session = match (self.spec.device.version, &self.v3) {
            (SnmpVersion::V1, _) => AsyncSession::new_v1(addr.as_str(), &self.community, req_id)
                .await
                .map_err(session_err)?,
            (SnmpVersion::V2c, _) => AsyncSession::new_v2c(addr.as_str(), &self.community, req_id)
                .await
                .map_err(session_err)?,
            (SnmpVersion::V3, Some(v3)) => {
                let mut security = snmp2::v3::Security::new(&v3.user, &v3.auth_password)
                    .with_auth_protocol(v3.auth)
                    .with_context_name(&v3.context_name);
                security = match v3.cipher {
                    Some(c) => security.with_auth(snmp2::v3::Auth::AuthPriv {
                        cipher: c,
                        privacy_password: v3.priv_password.clone(),
                    }),
                    None => security.with_auth(snmp2::v3::Auth::AuthNoPriv),
                };
                AsyncSession::new_v3(addr.as_str(), req_id, security)
                    .await
                    .map_err(session_err)?
            }
            (SnmpVersion::V3, None) => {
                return Err(SnmpError::Session(addr, "no v3 credentials".into()))
            }
        };
        // v3: discover the agent's engine id, boots and time (one round trip).
        timeout(to, session.init())
            .await
            .map_err(|_| SnmpError::Timeout(to))?
            .map_err(classify)?;
        Ok(Box::new(session))
    }

    /// One request, with retries; the session is replaced after any failure
    /// so no stale datagram is read as a later answer.
    async fn request(&mut self, op: Op<'_>) -> Result<Vec<(Vec<u64>, SnmpValue)>, SnmpError> {
        let to = self.spec.device.timeout;
        let mut last = SnmpError::Timeout(to);
        for _attempt in 0..=self.spec.device.retries {
            let mut session = match self.session.take() {
                Some(s) => s,
                None => match self.open().await {
                    Ok(s) => s,
                    Err(e @ SnmpError::Auth(_)) => return Err(e),
                    Err(e) => {
                        last = e;
                        continue;
                    }
                },
            };
            self.requests += 1;
            let outcome = timeout(to, async {
                let pdu = match &op {
                    Op::Get(oids) => session.get_many(oids).await,
                    Op::Next(oid) => session.getnext(oid).await,
                    Op::Bulk(oid, reps) => session.getbulk(&[*oid], 0, *reps).await,
                }
                .map_err(classify)?;
                if pdu.error_status != 0 {
                    return Err(SnmpError::Agent {
                        status: pdu.error_status,
                        index: pdu.error_index,
                    });
                }
                Ok(pdu
                    .varbinds
                    .filter_map(|(oid, v)| oid_vec(&oid).map(|o| (o, owned(&v))))
                    .collect::<Vec<_>>())
            })
            .await;
            match outcome {
                Ok(Ok(vbs)) => {
                    self.session = Some(session);
                    return Ok(vbs);
                }
                // A proper answer that says no: the session is fine, retrying won't help.
                Ok(Err(e @ SnmpError::Agent { .. })) => {
                    self.session = Some(session);
                    return Err(e);
                }
                Ok(Err(e @ SnmpError::Auth(_))) => return Err(e),
                Ok(Err(e)) => last = e,
                Err(_) => last = SnmpError::Timeout(to),
            }
        }
        Err(last)
    }

    /// Polls every scalar and table once.
    pub async fn poll(&mut self) -> PollResult {
        self.requests = 0;
        self.meta.clear();
        let mut readings = Vec::new();
        let mut first_error: Option<String> = None;
        let points = Arc::clone(&self.spec.points);
        let chunk = self.spec.device.max_oids_per_request.max(1);
        for group in points.chunks(chunk) {
            let mut pending: Vec<&SnmpPoint> = group.iter().collect();
            while !pending.is_empty() {
                let oids: Vec<Oid<'static>> = pending
                    .iter()
                    .filter_map(|p| parse_oid(&p.oid).ok().and_then(|o| Oid::from(&o).ok()))
                    .collect();
                let refs: Vec<&Oid<'_>> = oids.iter().collect();
                let result = self.request(Op::Get(&refs)).await;
                let ts = now_ms();
                match result {
                    Ok(vbs) => {
                        for p in &pending {
                            let want = parse_oid(&p.oid).unwrap_or_default();
                            let value = vbs
                                .iter()
                                .find(|(o, _)| *o == want)
                                .map(|(_, v)| v.clone())
                                .unwrap_or(SnmpValue::Missing("not in the reply"));
                            let mapping = p.mapping();
                            let id = format!("{}.{}", self.spec.device.id, p.id);
                            readings.push(self.reading(
                                &id,
                                &p.quantity,
                                &p.unit,
                                &value,
                                &mapping,
                                ts,
                                &mut first_error,
                            ));
                        }
                        break;
                    }
                    // SNMPv1 refuses a whole GET for one missing object and
                    // names it: report that point and ask again without it.
                    Err(SnmpError::Agent {
                        status: NO_SUCH_NAME,
                        index,
                    }) if (1..=pending.len()).contains(&(index as usize)) => {
                        let p = pending.remove(index as usize - 1);
                        let id = format!("{}.{}", self.spec.device.id, p.id);
                        self.note(&id, &p.quantity, &p.unit);
                        readings.push(bad(&id, ts, "noSuchName: the agent has no such object"));
                    }
                    Err(e) => {
                        let why = e.to_string();
                        first_error.get_or_insert_with(|| why.clone());
                        for p in &pending {
                            let id = format!("{}.{}", self.spec.device.id, p.id);
                            self.note(&id, &p.quantity, &p.unit);
                            readings.push(bad(&id, ts, &why));
                        }
                        if matches!(
                            e,
                            SnmpError::Timeout(_)
                                | SnmpError::Unreachable
                                | SnmpError::Auth(_)
                                | SnmpError::Session(..)
                        ) {
                            // The agent is unreachable: do not wait out a
                            // timeout per table; its known rows say why.
                            for t in 0..self.spec.tables.len() {
                                for c in 0..self.spec.tables[t].columns.len() {
                                    self.rows_gone(t, c, &why, ts, &mut readings);
                                }
                            }
                            return PollResult {
                                readings,
                                error: first_error,
                            };
                        }
                        break;
                    }
                }
            }
        }
        let tables = Arc::clone(&self.spec.tables);
        for (t, table) in tables.iter().enumerate() {
            let limit = self.row_limit(table).await;
            for (c, col) in table.columns.iter().enumerate() {
                let walked = self.walk(&col.oid).await.map(|mut rows| {
                    if let Some(n) = limit {
                        rows.retain(|(index, _)| row_number(index) <= n);
                    }
                    rows
                });
                match walked {
                    Ok(rows) if rows.is_empty() => {
                        let why = format!("table {} has no rows now", table.id);
                        first_error.get_or_insert_with(|| why.clone());
                        self.rows_gone(t, c, &why, now_ms(), &mut readings);
                    }
                    Ok(rows) => {
                        let ts = now_ms();
                        self.known_rows
                            .insert((t, c), rows.iter().map(|(i, _)| i.clone()).collect());
                        for (index, value) in rows {
                            let id = format!(
                                "{}.{}.{}.{}",
                                self.spec.device.id, table.id, index, col.id
                            );
                            let mapping = col.mapping();
                            readings.push(self.reading(
                                &id,
                                &col.quantity,
                                &col.unit,
                                &value,
                                &mapping,
                                ts,
                                &mut first_error,
                            ));
                        }
                    }
                    Err(e) => {
                        let why = format!("walking {}.{}: {e}", table.id, col.id);
                        tracing::debug!(device = %self.spec.device.id, error = %why);
                        self.rows_gone(t, c, &why, now_ms(), &mut readings);
                        first_error.get_or_insert(why);
                    }
                }
            }
        }
        if !self.spec.derived.is_empty() {
            let before = readings.len();
            let derived: Vec<_> = self.spec.derived.iter().map(|(d, _)| d.clone()).collect();
            crate::derive::apply(&derived, &mut readings);
            for r in &readings[before..] {
                if let Some((_, m)) = self.spec.derived.iter().find(|(d, _)| d.label == r.point) {
                    let (id, quantity, unit) = (m.id.clone(), m.quantity.clone(), m.unit.clone());
                    self.note(&id, &quantity, &unit);
                }
            }
        }
        PollResult {
            readings,
            error: first_error,
        }
    }

    /// Walks one column; returns (row index as dotted text, value) in order.
    async fn walk(&mut self, column: &str) -> Result<Vec<(String, SnmpValue)>, SnmpError> {
        let base = parse_oid(column).map_err(SnmpError::Protocol)?;
        let mut rows = Vec::new();
        let mut cursor = base.clone();
        let bulk = self.spec.device.version != SnmpVersion::V1;
        while rows.len() < MAX_ROWS {
            let oid = Oid::from(&cursor).map_err(|e| SnmpError::Protocol(format!("{e:?}")))?;
            let vbs = if bulk {
                self.request(Op::Bulk(&oid, self.spec.device.max_repetitions))
                    .await?
            } else {
                match self.request(Op::Next(&oid)).await {
                    // v1 agents end a walk with noSuchName.
                    Err(SnmpError::Agent {
                        status: NO_SUCH_NAME,
                        ..
                    }) => return Ok(rows),
                    other => other?,
                }
            };
            if vbs.is_empty() {
                return Ok(rows);
            }
            for (oid, value) in vbs {
                if !oid.starts_with(&base)
                    || oid.len() == base.len()
                    || matches!(value, SnmpValue::Missing("endOfMibView"))
                {
                    return Ok(rows);
                }
                if oid <= cursor {
                    return Err(SnmpError::Protocol(
                        "agent returned OIDs out of order (walk would not end)".into(),
                    ));
                }
                let index = oid[base.len()..]
                    .iter()
                    .map(u64::to_string)
                    .collect::<Vec<_>>()
                    .join(".");
                rows.push((index, value));
                cursor = oid;
            }
        }
        Ok(rows)
    }

    #[allow(clippy::too_many_arguments)]
    fn reading(
        &mut self,
        id: &str,
        quantity: &str,
        unit: &str,
        value: &SnmpValue,
        mapping: &Mapping<'_>,
        ts: i64,
        first_error: &mut Option<String>,
    ) -> Reading {
        self.note(id, quantity, unit);
        let prev = self.counters.get(id).copied();
        match map_value(value, mapping, ts, prev) {
            Ok(m) => {
                if let Some(c) = m.counter {
                    self.counters.insert(id.to_owned(), c);
                }
                if m.value.is_none() && m.text.is_none() {
                    let why = if mapping.kind == ValueKind::CounterRate {
                        "rate: waiting for a second sample"
                    } else {
                        "no value"
                    };
                    return bad(id, ts, why);
                }
                Reading {
                    point: id.into(),
                    value: m.value,
                    text: m.text,
                    ts,
                    quality: Quality::Good,
                }
            }
            Err(why) => {
                first_error.get_or_insert_with(|| format!("{id}: {why}"));
                bad(id, ts, &why)
            }
        }
    }

    /// Records what a point is, for the batch's point descriptions.
    /// How many rows `table` really has: the device's `rows`, else the
    /// table's `rows_oid` read now; `None`: as many as the walk finds.
    async fn row_limit(&mut self, table: &SnmpTable) -> Option<u64> {
        if let Some(n) = self.spec.device.rows.get(&table.id) {
            return Some(u64::from(*n));
        }
        if self.no_row_count.contains(&table.id) {
            return None;
        }
        let oid = parse_oid(table.rows_oid.as_deref()?).ok()?;
        let oid = Oid::from(&oid).ok()?;
        // A failed request (a timeout) is asked again next poll; an answer
        // without a count is kept, so the poll costs no extra request.
        let vbs = self.request(Op::Get(&[&oid])).await.ok()?;
        match vbs.first().map(|(_, v)| v) {
            Some(SnmpValue::Integer(n)) if *n >= 0 => Some(*n as u64),
            Some(SnmpValue::Gauge(n) | SnmpValue::Counter32(n)) => Some(u64::from(*n)),
            _ => {
                self.no_row_count.insert(table.id.clone());
                None
            }
        }
    }

    /// Bad readings, saying `why`, for the rows column `c` of table `t` had
    /// at its last successful walk.
    fn rows_gone(&mut self, t: usize, c: usize, why: &str, ts: i64, out: &mut Vec<Reading>) {
        let Some(rows) = self.known_rows.get(&(t, c)).cloned() else {
            return;
        };
        let tables = Arc::clone(&self.spec.tables);
        let (table, col) = (&tables[t], &tables[t].columns[c]);
        for index in rows {
            let id = format!("{}.{}.{}.{}", self.spec.device.id, table.id, index, col.id);
            self.note(&id, &col.quantity, &col.unit);
            out.push(bad(&id, ts, why));
        }
    }

    fn note(&mut self, id: &str, quantity: &str, unit: &str) {
        self.meta.push(PointMeta {
            id: id.into(),
            room: self.spec.device.room.as_str().into(),
            quantity: quantity.into(),
            unit: unit.into(),
        });
    }

    /// Polls on the device's interval until the publisher goes away, backing
    /// off while the agent does not answer.
    pub async fn run(mut self, tx: mpsc::Sender<DevicePoll>) {
        let interval = self.spec.device.interval;
        let backoff = Backoff {
            base: interval,
            cap: Duration::from_secs(300).max(interval),
        };
        let mut due = Instant::now() + jitter(interval);
        let mut failures = 0u32;
        let mut last_started: Option<Instant> = None;
        loop {
            let mut from_trap = Vec::new();
            let by_trap = tokio::select! {
                () = tokio::time::sleep_until(due.into()) => false,
                Some(ev) = next_trap(&mut self.traps) => {
                    from_trap.extend(ev.readings);
                    true
                }
            };
            if by_trap {
                // A burst of traps (a UPS sends several as mains fails)
                // makes one poll, and never more than one a second.
                if let Some(calm) = last_started.map(|l| l + MIN_TRAP_POLL_GAP) {
                    tokio::time::sleep_until(calm.into()).await;
                }
                if let Some(rx) = &mut self.traps {
                    while let Ok(ev) = rx.try_recv() {
                        from_trap.extend(ev.readings);
                    }
                }
            }
            // The poll's readings must come after what the trap said: the
            // store keeps one reading per point and millisecond, and the
            // device's own answer is the newer word.
            if let Some(said) = from_trap.iter().map(|r| r.ts).max() {
                while now_ms() <= said {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
            let started = Instant::now();
            last_started = Some(started);
            let overrun = !by_trap && started.duration_since(due) > interval;
            let polled_at = now_ms();
            let mut result = self.poll().await;
            let latency = started.elapsed();
            let requests = self.requests;
            if !from_trap.is_empty() {
                // What the trap said comes first: it happened before the poll.
                from_trap.append(&mut result.readings);
                result.readings = from_trap;
            }
            if by_trap {
                // The regular schedule (and any backoff) carries on as it was.
            } else if result.any_good() || result.readings.is_empty() && result.error.is_none() {
                failures = 0;
                due += interval;
            } else {
                failures += 1;
                due = Instant::now()
                    + backoff
                        .delay(failures, jitter(Duration::from_millis(1000)).as_secs_f64())
                        .max(interval);
            }
            if due < Instant::now() {
                due = Instant::now() + interval;
            }
            let poll = DevicePoll {
                device: self.id().to_owned(),
                polled_at,
                latency,
                overrun,
                requests,
                registers: result.readings.len() as u32,
                result,
                meta: Arc::from(std::mem::take(&mut self.meta)),
                reads_split: 0,
            };
            if tx.send(poll).await.is_err() {
                return;
            }
        }
    }
}

/// Least time between two trap-driven polls of one device.
const MIN_TRAP_POLL_GAP: Duration = Duration::from_secs(1);

/// The next trap for this device; never, without a listener.
async fn next_trap(rx: &mut Option<mpsc::Receiver<trap::TrapEvent>>) -> Option<trap::TrapEvent> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// A row's number: the first part of its index (`2` of `2` or `2.1`).
fn row_number(index: &str) -> u64 {
    index
        .split('.')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(u64::MAX)
}

enum Op<'a> {
    Get(&'a [&'a Oid<'a>]),
    Next(&'a Oid<'a>),
    Bulk(&'a Oid<'a>, u32),
}

fn bad(id: &str, ts: i64, why: &str) -> Reading {
    Reading {
        point: id.into(),
        value: None,
        text: None,
        ts,
        quality: Quality::Bad(why.to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::with_default_port;

    #[test]
    fn addresses_without_a_port_get_161() {
        assert_eq!(with_default_port("192.0.2.7", 161), "192.0.2.7:161");
        assert_eq!(with_default_port("192.0.2.7:1161", 161), "192.0.2.7:1161");
        assert_eq!(with_default_port("ups.local", 161), "ups.local:161");
        assert_eq!(with_default_port("ups.local:2161", 161), "ups.local:2161");
        assert_eq!(with_default_port("2001:db8::7", 161), "[2001:db8::7]:161");
        assert_eq!(
            with_default_port("[2001:db8::7]:162", 161),
            "[2001:db8::7]:162"
        );
        assert_eq!(with_default_port("[2001:db8::7]", 161), "[2001:db8::7]:161");
    }
}
