//! One task per bus: owns the connection, serializes requests with the
//! configured pauses (and the RTU silent interval), and schedules each
//! device's poll groups by their own intervals. A device that fails is
//! retried with exponential backoff, so a dead unit costs its bus little;
//! devices on other buses are never affected.

use super::config::BusConfig;
use super::plan::{self, ReadRequest};
use super::{decode, fail, read, transport, ModbusError};
use crate::config::{BusSpec, ModbusSpec, PollGroup};
use crate::drivers::{Backoff, DevicePoll, PollResult};
use roomguard_protocol::clock::{jitter, now_ms, random_u64};
use roomguard_protocol::Reading;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio::time::sleep_until;

struct DeviceState {
    /// Next due time per poll group.
    due: Vec<Instant>,
    failures: u32,
    /// While set, the device is not polled (backoff after failures).
    retry_at: Option<Instant>,
    /// Reads split since start because the device refused them whole.
    reads_split: u32,
}

/// Slots per interval that first polls are spread over.
const PHASES: u32 = 4;

/// A random start offset within `interval`, on one of [`PHASES`] slots.
/// Spread, so that hundreds of devices do not all fire at once; but on a few
/// shared instants, so that the agent wakes a few times per interval rather
/// than once per device (each wake-up costs a context switch).
fn phase(interval: Duration) -> Duration {
    (interval / PHASES) * (random_u64() % u64::from(PHASES)) as u32
}

pub struct BusRunner {
    spec: BusSpec,
    line: Line,
    states: Vec<DeviceState>,
    backoff: Backoff,
}

/// The open connection of a bus, kept apart from its (read-only) spec so a
/// poll can borrow both without copying the device's points.
struct Line {
    ctx: Option<transport::Opened>,
    /// When the last frame on the line ended, to keep the pause before the next.
    last_frame: Option<Instant>,
}

impl BusRunner {
    pub fn new(spec: BusSpec) -> BusRunner {
        let now = Instant::now();
        let states = spec
            .devices
            .iter()
            .map(|d| DeviceState {
                due: d.groups.iter().map(|g| now + phase(g.interval)).collect(),
                failures: 0,
                retry_at: None,
                reads_split: 0,
            })
            .collect();
        BusRunner {
            spec,
            line: Line {
                ctx: None,
                last_frame: None,
            },
            states,
            backoff: Backoff {
                base: Duration::from_secs(1),
                cap: Duration::from_secs(60),
            },
        }
    }

    /// The (device, group) to poll next and when.
    fn next_job(&self) -> Option<(usize, usize, Instant)> {
        let mut best: Option<(usize, usize, Instant)> = None;
        for (d, st) in self.states.iter().enumerate() {
            for (g, due) in st.due.iter().enumerate() {
                let at = st.retry_at.map_or(*due, |r| r.max(*due));
                if best.is_none_or(|(_, _, b)| at < b) {
                    best = Some((d, g, at));
                }
            }
        }
        best
    }

    pub async fn run(mut self, tx: mpsc::Sender<DevicePoll>) {
        while let Some((d, g, at)) = self.next_job() {
            sleep_until(at.into()).await;
            let interval = self.spec.devices[d].groups[g].interval;
            let started = Instant::now();
            // Late by a whole interval after it was due (a device in
            // backoff is due at its retry): the bus cannot keep up with its
            // schedule. Waiting out a backoff is not being late.
            let overrun = started.duration_since(at) > interval;
            let polled_at = now_ms();
            let dev = &self.spec.devices[d];
            let (mut result, requests, registers, learned) = self
                .line
                .poll_group(&self.spec.bus, dev, &dev.groups[g])
                .await;
            let latency = started.elapsed();
            // Reads the device refused whole are kept split from now on.
            let kept = &mut self.spec.devices[d].groups[g].requests;
            for (r, parts) in learned.into_iter().rev() {
                kept.splice(r..=r, parts);
                self.states[d].reads_split += 1;
            }

            let st = &mut self.states[d];
            let next = st.due[g] + interval;
            st.due[g] = if next < Instant::now() {
                Instant::now() + interval
            } else {
                next
            };
            if result.any_good() {
                st.failures = 0;
                st.retry_at = None;
            } else {
                st.failures += 1;
                let wait = self.backoff.delay(
                    st.failures,
                    jitter(Duration::from_millis(1000)).as_secs_f64(),
                );
                st.retry_at = Some(Instant::now() + wait.max(interval));
            }
            crate::derive::apply(&self.spec.devices[d].derived, &mut result.readings);
            let poll = DevicePoll {
                device: self.spec.devices[d].id.clone(),
                polled_at,
                latency,
                result,
                overrun,
                requests,
                registers,
                meta: self.spec.devices[d].meta.clone(),
                reads_split: self.states[d].reads_split,
            };
            if tx.send(poll).await.is_err() {
                return; // publisher gone: shutting down
            }
        }
    }
}

impl Line {
    async fn ensure_connected(&mut self, bus: &BusConfig, to: Duration) -> Result<(), ModbusError> {
        if self.ctx.is_none() {
            let opened = transport::open(bus, to).await?;
            if !bus.connect_pause.is_zero() {
                tokio::time::sleep(bus.connect_pause).await;
            }
            self.ctx = Some(opened);
            self.last_frame = Some(Instant::now());
        }
        Ok(())
    }

    /// Reads one poll group of one device. Also returns the requests it
    /// had to split (index in the group, the reads that replace it).
    async fn poll_group(
        &mut self,
        bus: &BusConfig,
        dev: &ModbusSpec,
        group: &PollGroup,
    ) -> (PollResult, u32, u32, Vec<(usize, Vec<ReadRequest>)>) {
        // The pause kept between frames on this bus.
        let gap = bus.request_pause.max(bus.frame_gap());
        let mut readings = Vec::with_capacity(dev.points.len());
        let mut first_error: Option<String> = None;
        let mut broken: Option<String> = None;
        let (mut requests, mut registers) = (0u32, 0u32);
        let mut learned = Vec::new();
        for (r, req) in group.requests.iter().enumerate() {
            let ts = now_ms();
            if let Some(why) = &broken {
                // The line is down: report the rest with the same cause rather
                // than wait out a timeout per request.
                fail(dev, req, ts, why, &mut readings);
                continue;
            }
            if let Err(e) = self.ensure_connected(bus, dev.timeout).await {
                let why = e.to_string();
                first_error.get_or_insert_with(|| why.clone());
                fail(dev, req, ts, &why, &mut readings);
                broken = Some(why);
                continue;
            }
            requests += 1;
            let Some(outcome) = self.exchange(dev, req, gap).await else {
                continue;
            };
            match outcome {
                Err(e) if e.refused_span() && req.points.len() > 1 => {
                    // One refused read must not make good points bad: ask
                    // for them one by one, now and from now on.
                    let parts = plan::split(&dev.points, req);
                    tracing::warn!(device = %dev.id, start = req.start, count = req.count, error = %e,
                        "the device refused a read of several points; reading them one by one from now on");
                    for part in &parts {
                        if let Some(why) = &broken {
                            fail(dev, part, now_ms(), why, &mut readings);
                            continue;
                        }
                        requests += 1;
                        let Some(outcome) = self.exchange(dev, part, gap).await else {
                            continue;
                        };
                        self.settle(
                            dev,
                            part,
                            outcome,
                            &mut readings,
                            &mut first_error,
                            &mut broken,
                            &mut registers,
                        );
                    }
                    learned.push((r, parts));
                }
                outcome => self.settle(
                    dev,
                    req,
                    outcome,
                    &mut readings,
                    &mut first_error,
                    &mut broken,
                    &mut registers,
                ),
            }
        }
        (
            PollResult {
                readings,
                error: first_error,
            },
            requests,
            registers,
            learned,
        )
    }

    /// One read on the open line, after the pause the bus keeps between
    /// frames; `None` when the line is not open.
    async fn exchange(
        &mut self,
        dev: &ModbusSpec,
        req: &ReadRequest,
        gap: Duration,
    ) -> Option<Result<super::Data, ModbusError>> {
        // No timer at all when the bus needs no pause (TCP without request_pause).
        if let Some(last) = self.last_frame.filter(|_| !gap.is_zero()) {
            sleep_until((last + gap).into()).await;
        }
        let open = self.ctx.as_mut()?;
        let outcome = read(&mut open.ctx, &open.received, dev.unit, req, dev.timeout).await;
        self.last_frame = Some(Instant::now());
        Some(outcome)
    }

    /// Readings from a read's outcome; a broken line is dropped.
    #[allow(clippy::too_many_arguments)]
    fn settle(
        &mut self,
        dev: &ModbusSpec,
        req: &ReadRequest,
        outcome: Result<super::Data, ModbusError>,
        readings: &mut Vec<Reading>,
        first_error: &mut Option<String>,
        broken: &mut Option<String>,
        registers: &mut u32,
    ) {
        let ts = now_ms();
        match outcome {
            Ok(data) => {
                *registers += u32::from(req.count);
                decode(dev, req, &data, ts, readings, first_error);
            }
            Err(e) => {
                let why = e.to_string();
                first_error.get_or_insert_with(|| why.clone());
                fail(dev, req, ts, &why, readings);
                if e.breaks_connection() {
                    self.ctx = None;
                    *broken = Some(why);
                }
            }
        }
    }
}
