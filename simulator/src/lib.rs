//! RoomGuard's simulated site: a machine room, a power-distribution room and a
//! battery room, served as real Modbus TCP devices, with drill scenarios that
//! can be switched while it runs. The demo, the drills and the end-to-end tests
//! all run against it.

pub mod control;
pub mod fleet;
pub mod modbus;
pub mod model;
pub mod registers;
pub mod snmp;

use model::{sample, Noise, Scenario, SiteValues};
use registers::{Site, Tables};
use snmp::Mib;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

/// The SNMP agents served on the annex port, by community: an Eaton UPS,
/// a Liebert precision air conditioner, a Geist and an APC environment
/// probe, an APC ATS.
pub const ANNEX: [&str; 5] = ["eaton", "liebert", "geist", "apc-env", "apc-ats"];

fn annex_mibs(v: &SiteValues, on_battery_s: f64) -> [Mib; 5] {
    [
        snmp::eaton_mib(v, on_battery_s),
        snmp::liebert_mib(v),
        snmp::geist_mib(v),
        snmp::apc_env_mib(v),
        snmp::apc_ats_mib(v),
    ]
}

/// How often the sensors' values move.
pub const TICK: Duration = Duration::from_millis(200);

/// The running simulation: the scenario, and the register tables the Modbus
/// server answers from.
pub struct Simulator {
    state: Mutex<SimState>,
    site: Arc<RwLock<Site>>,
    ups: Arc<RwLock<Mib>>,
    pdu: Arc<RwLock<Mib>>,
    /// The agents served on one port by community (see [`ANNEX`]).
    annex: Vec<Arc<RwLock<Mib>>>,
    /// Simulated seconds per real second, to run long drills quickly.
    speed: f64,
}

struct SimState {
    scenario: Scenario,
    since: Instant,
    noise: Noise,
    values: SiteValues,
    /// Energy register of the meters, integrated from power at each tick.
    import_kwh: f64,
    last_tick: Instant,
}

impl Simulator {
    pub fn new(scenario: Scenario, seed: u64, speed: f64) -> Arc<Self> {
        let mut noise = Noise::new(seed);
        let mut values = sample(scenario, 0.0, &mut noise);
        let import_kwh = 125_000.0;
        values.import_kwh = import_kwh;
        Arc::new(Simulator {
            site: Arc::new(RwLock::new(registers::encode(&values))),
            ups: Arc::new(RwLock::new(snmp::ups_mib(&values, 0.0))),
            pdu: Arc::new(RwLock::new(snmp::pdu_mib(&values))),
            annex: annex_mibs(&values, 0.0)
                .into_iter()
                .map(|m| Arc::new(RwLock::new(m)))
                .collect(),
            state: Mutex::new(SimState {
                scenario,
                since: Instant::now(),
                noise,
                values,
                import_kwh,
                last_tick: Instant::now(),
            }),
            speed,
        })
    }

    /// The register tables, for the Modbus server.
    pub fn site(&self) -> Arc<RwLock<Site>> {
        Arc::clone(&self.site)
    }

    /// The UPS-MIB the simulated UPS answers from.
    pub fn ups_mib(&self) -> Arc<RwLock<Mib>> {
        Arc::clone(&self.ups)
    }

    /// The PowerNet-MIB the simulated PDU answers from.
    pub fn pdu_mib(&self) -> Arc<RwLock<Mib>> {
        Arc::clone(&self.pdu)
    }

    /// The annex agents' MIBs with their communities, for one SNMP server.
    pub fn annex_mibs(&self) -> Vec<(Vec<u8>, Arc<RwLock<Mib>>)> {
        ANNEX
            .iter()
            .zip(&self.annex)
            .map(|(c, m)| (c.as_bytes().to_vec(), Arc::clone(m)))
            .collect()
    }

    pub fn scenario(&self) -> (Scenario, Duration) {
        let st = self.lock();
        (st.scenario, st.since.elapsed())
    }

    pub fn set_scenario(&self, scenario: Scenario) {
        {
            let mut st = self.lock();
            st.scenario = scenario;
            st.since = Instant::now();
        }
        tracing::info!(%scenario, "scenario switched");
        self.tick();
    }

    pub fn values(&self) -> SiteValues {
        self.lock().values.clone()
    }

    /// Advances the sensors to now.
    pub fn tick(&self) {
        let (values, on_battery_s) = {
            let mut st = self.lock();
            let t = st.since.elapsed().as_secs_f64() * self.speed;
            let scenario = st.scenario;
            let mut v = sample(scenario, t, &mut st.noise);
            let hours = st.last_tick.elapsed().as_secs_f64() * self.speed / 3600.0;
            st.last_tick = Instant::now();
            st.import_kwh += v.active_power_kw * hours;
            v.import_kwh = st.import_kwh;
            st.values = v.clone();
            (
                v,
                if scenario == Scenario::MainsFailure {
                    t
                } else {
                    0.0
                },
            )
        };
        *self.site.write().unwrap_or_else(|p| p.into_inner()) = registers::encode(&values);
        *self.ups.write().unwrap_or_else(|p| p.into_inner()) = snmp::ups_mib(&values, on_battery_s);
        *self.pdu.write().unwrap_or_else(|p| p.into_inner()) = snmp::pdu_mib(&values);
        for (slot, mib) in self.annex.iter().zip(annex_mibs(&values, on_battery_s)) {
            *slot.write().unwrap_or_else(|p| p.into_inner()) = mib;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SimState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A benchmark device: `registers` holding registers whose values change on
/// every tick, as unit 1.
pub fn bench_site(registers: u16, tick: u64) -> Site {
    let regs = (0..registers)
        .map(|i| (tick as u16).wrapping_add(i))
        .collect();
    Site::from([(
        1,
        Tables {
            holding_registers: regs,
            ..Tables::default()
        },
    )])
}
