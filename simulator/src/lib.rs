//! RoomGuard's simulated site: a machine room, a power-distribution room and a
//! battery room, served as real Modbus TCP devices, with drill scenarios that
//! can be switched while it runs. The demo, the drills and the end-to-end tests
//! all run against it.

pub mod control;
pub mod modbus;
pub mod model;
pub mod registers;

use model::{sample, Noise, Scenario, SiteValues};
use registers::Site;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

/// How often the sensors' values move.
pub const TICK: Duration = Duration::from_millis(200);

/// The running simulation: the scenario, and the register tables the Modbus
/// server answers from.
pub struct Simulator {
    state: Mutex<SimState>,
    site: Arc<RwLock<Site>>,
    /// Simulated seconds per real second, to run long drills quickly.
    speed: f64,
}

struct SimState {
    scenario: Scenario,
    since: Instant,
    noise: Noise,
    values: SiteValues,
}

impl Simulator {
    pub fn new(scenario: Scenario, seed: u64, speed: f64) -> Arc<Self> {
        let mut noise = Noise::new(seed);
        let values = sample(scenario, 0.0, &mut noise);
        let site = Arc::new(RwLock::new(registers::encode(&values)));
        Arc::new(Simulator {
            state: Mutex::new(SimState {
                scenario,
                since: Instant::now(),
                noise,
                values,
            }),
            site,
            speed,
        })
    }

    /// The register tables, for the Modbus server.
    pub fn site(&self) -> Arc<RwLock<Site>> {
        Arc::clone(&self.site)
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
        let values = {
            let mut st = self.lock();
            let t = st.since.elapsed().as_secs_f64() * self.speed;
            let scenario = st.scenario;
            st.values = sample(scenario, t, &mut st.noise);
            st.values.clone()
        };
        let tables = registers::encode(&values);
        *self.site.write().unwrap_or_else(|p| p.into_inner()) = tables;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SimState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}
