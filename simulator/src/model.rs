//! The physics of the demo site, free of I/O: given a drill scenario and the
//! seconds since it started, what every sensor in the three rooms reads.
//!
//! Values follow a plausible baseline plus small noise; scenarios bend the
//! curves the way the real incidents do (a room without cooling warms by about
//! a degree a minute; a cell in thermal runaway heats ever faster and vents H₂).

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// A drill scenario, switchable at run time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scenario {
    /// Everything within limits.
    Normal,
    /// Machine-room air conditioning has failed: temperatures climb.
    AcFailure,
    /// One battery cell heats ever faster and the room fills with hydrogen.
    ThermalRunaway,
    /// Grid supply lost: voltages and frequency fall to zero, batteries discharge,
    /// cooling stops.
    MainsFailure,
    /// A fire in the machine room: first smoke head, then heat, then the second head.
    Smoke,
    /// A loose neutral in the distribution room: the phase voltages drift
    /// apart (to about 228 / 220 / 208 V) while each stays inside the supply
    /// range, so only the unbalance shows it.
    PhaseUnbalance,
    /// Combustible gas leaks into the distribution room: past 10 % LEL in
    /// about 20 s and 25 % in about 50 s, levelling at 40 %.
    GasLeak,
    /// Carbon monoxide builds up in the battery room (smouldering cable
    /// insulation) to about 80 ppm.
    CoRise,
    /// An earth leakage on a distribution-room circuit: residual current
    /// rises from a few mA to about 45 mA.
    EarthLeakage,
    /// The battery string's insulation to earth fails (a wet, leaking
    /// battery tray): resistance falls to about 30 kΩ and the IMD alarms.
    InsulationFault,
    /// The battery-room door is left open.
    DoorOpen,
    /// The battery-room exhaust fan stops: its fault contact closes.
    VentilationFailure,
    /// The ATS's source A fails and it transfers the load to source B: no
    /// redundancy left.
    AtsTransfer,
    /// A UPS battery test: the UPSes run on battery with mains present.
    BatteryTest,
}

impl Scenario {
    pub const ALL: [Scenario; 14] = [
        Scenario::Normal,
        Scenario::AcFailure,
        Scenario::ThermalRunaway,
        Scenario::MainsFailure,
        Scenario::Smoke,
        Scenario::PhaseUnbalance,
        Scenario::GasLeak,
        Scenario::CoRise,
        Scenario::EarthLeakage,
        Scenario::InsulationFault,
        Scenario::DoorOpen,
        Scenario::VentilationFailure,
        Scenario::AtsTransfer,
        Scenario::BatteryTest,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Scenario::Normal => "normal",
            Scenario::AcFailure => "ac_failure",
            Scenario::ThermalRunaway => "thermal_runaway",
            Scenario::MainsFailure => "mains_failure",
            Scenario::Smoke => "smoke",
            Scenario::PhaseUnbalance => "phase_unbalance",
            Scenario::GasLeak => "gas_leak",
            Scenario::CoRise => "co_rise",
            Scenario::EarthLeakage => "earth_leakage",
            Scenario::InsulationFault => "insulation_fault",
            Scenario::DoorOpen => "door_open",
            Scenario::VentilationFailure => "ventilation_failure",
            Scenario::AtsTransfer => "ats_transfer",
            Scenario::BatteryTest => "battery_test",
        }
    }
}

impl fmt::Display for Scenario {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Scenario {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let wanted = s.trim().replace('-', "_").to_ascii_lowercase();
        Scenario::ALL
            .into_iter()
            .find(|sc| sc.name() == wanted)
            .ok_or_else(|| {
                let names: Vec<_> = Scenario::ALL.iter().map(|s| s.name()).collect();
                format!(
                    "unknown scenario {s:?}; expected one of {}",
                    names.join(", ")
                )
            })
    }
}

/// Number of cells whose temperature the BMS reports.
pub const CELLS: usize = 8;
/// The cell that goes into thermal runaway.
pub const RUNAWAY_CELL: usize = 2;

/// Everything the site's sensors read at one instant, in engineering units.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SiteValues {
    // machine room
    pub inlet_temp_c: f64,
    pub inlet_rh: f64,
    pub hot_aisle_temp_c: f64,
    pub hot_aisle_rh: f64,
    pub smoke_1: bool,
    pub smoke_2: bool,
    pub water_leak: bool,
    // power-distribution room
    pub phase_v: [f64; 3],
    pub phase_a: [f64; 3],
    pub frequency_hz: f64,
    pub active_power_kw: f64,
    /// Energy meter register; accumulated by the simulator, not by `sample`.
    pub import_kwh: f64,
    pub breaker_closed: bool,
    pub spd_failed: bool,
    // battery room
    pub battery_room_temp_c: f64,
    pub battery_room_rh: f64,
    pub h2_lfl: f64,
    pub pack_voltage_v: f64,
    /// Positive while discharging.
    pub pack_current_a: f64,
    pub soc_pct: f64,
    pub cell_temp_c: [f64; CELLS],
    /// BMS fault bits: 0 over-temperature, 1 cell over-voltage, 2 low voltage.
    pub bms_faults: u16,
    pub co_ppm: f64,
    /// Insulation resistance of the battery string to earth, and the
    /// monitor's alarm state.
    pub insulation_ohm: f64,
    pub insulation_alarm: bool,
    /// Door contact (closed while the door is shut) and exhaust-fan fault contact.
    pub door_shut: bool,
    pub fan_fault: bool,
    // more of the distribution room
    pub gas_lel: f64,
    pub residual_ma: f64,
    /// ATS: each source healthy, and the one feeding the load (1 = A, 2 = B).
    pub ats_source_ok: [bool; 2],
    pub ats_selected: u8,
    /// The UPSes run on battery with mains present (a battery test).
    pub ups_battery_test: bool,
    // more of the machine room
    /// The precision air conditioner's common alarm output.
    pub pac_alarm: bool,
}

/// A small deterministic noise source (SplitMix64), so a seeded run is repeatable.
#[derive(Debug, Clone)]
pub struct Noise(u64);

impl Noise {
    pub fn new(seed: u64) -> Self {
        Noise(seed)
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [-amplitude, amplitude].
    pub fn jitter(&mut self, amplitude: f64) -> f64 {
        let unit = (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        (unit * 2.0 - 1.0) * amplitude
    }
}

/// The site's readings `t` seconds into `scenario`, with `noise` added.
pub fn sample(scenario: Scenario, t: f64, noise: &mut Noise) -> SiteValues {
    let t = t.max(0.0);
    let mut v = baseline(noise);
    let battery_air = (v.battery_room_temp_c, v.battery_room_rh);
    match scenario {
        Scenario::Normal => {}
        Scenario::AcFailure => {
            // The unit that failed says so first.
            v.pac_alarm = true;
            warm_machine_room(&mut v, t);
        }
        Scenario::GasLeak => v.gas_lel = (v.gas_lel + 0.5 * t).min(40.0),
        Scenario::CoRise => v.co_ppm = (v.co_ppm + 1.5 * t).min(80.0),
        Scenario::EarthLeakage => v.residual_ma = (v.residual_ma + 2.0 * t).min(45.0),
        Scenario::InsulationFault => {
            v.insulation_ohm = (v.insulation_ohm / (1.0 + t)).max(30_000.0);
            v.insulation_alarm = v.insulation_ohm < 100_000.0;
        }
        Scenario::DoorOpen => v.door_shut = false,
        Scenario::VentilationFailure => v.fan_fault = true,
        Scenario::AtsTransfer => {
            v.ats_source_ok[0] = false;
            v.ats_selected = 2;
        }
        Scenario::BatteryTest => v.ups_battery_test = true,
        Scenario::ThermalRunaway => {
            // Cell heating accelerates; H₂ vents once the cell passes ~35 °C and
            // climbs past the 10 % and 25 % LFL stages within the first minute.
            let cell = &mut v.cell_temp_c[RUNAWAY_CELL];
            *cell += 0.15 * t + 0.004 * t * t;
            let cell = *cell;
            v.h2_lfl = (v.h2_lfl + 0.35 * t + 0.006 * t * t).min(100.0);
            v.battery_room_temp_c += 0.01 * t;
            if cell > 60.0 {
                v.bms_faults |= 1;
            }
        }
        Scenario::MainsFailure => {
            v.phase_v = [0.0; 3];
            v.phase_a = [0.0; 3];
            v.frequency_hz = 0.0;
            v.active_power_kw = 0.0;
            // The plant runs on batteries: about 60 A out, voltage sagging from float.
            v.pack_current_a = 60.0 + noise.jitter(0.5);
            v.soc_pct = (100.0 - t / 36.0).max(0.0);
            v.pack_voltage_v = (50.5 - t / 600.0).max(43.0);
            if v.pack_voltage_v < 46.1 {
                v.bms_faults |= 1 << 2;
            }
            // The ATS's source A is the grid; B (the generator feed) carries on.
            v.ats_source_ok[0] = false;
            v.ats_selected = 2;
            warm_machine_room(&mut v, t);
        }
        Scenario::Smoke => {
            v.smoke_1 = true;
            v.smoke_2 = t >= 20.0;
            // Heat near the fire rises quickly (well beyond the 8 °C/min of a
            // rate-of-rise detector) and passes the 57 °C fixed-heat point.
            v.hot_aisle_temp_c += 0.3 * t;
            v.inlet_temp_c += 0.05 * t;
        }
        Scenario::PhaseUnbalance => {
            // Reaches its full spread in 30 s.
            let k = (t / 30.0).min(1.0);
            v.phase_v[0] += 7.5 * k;
            v.phase_v[2] -= 11.8 * k;
        }
    }
    // The hot aisle breathes the cold aisle's air, heated by the servers: the
    // same water, so the same dew point and a lower relative humidity.
    v.hot_aisle_rh =
        rh_keeping_dew_point(v.inlet_temp_c, v.inlet_rh, v.hot_aisle_temp_c) + noise.jitter(0.5);
    // A battery room warming in a drill holds the same water too.
    v.battery_room_rh = rh_keeping_dew_point(battery_air.0, battery_air.1, v.battery_room_temp_c);
    v.co_ppm = (v.co_ppm + noise.jitter(0.5)).max(0.0);
    v.gas_lel = (v.gas_lel + noise.jitter(0.2)).max(0.0);
    v.residual_ma = (v.residual_ma + noise.jitter(0.5)).max(0.0);
    v.insulation_ohm += noise.jitter(2e4);
    v
}

fn warm_machine_room(v: &mut SiteValues, t: f64) {
    // Without cooling the room warms about 1 °C a minute towards 45 °C.
    let rise = (t / 60.0).min(22.0);
    // The air holds the same water as it warms: its dew point stays, its
    // relative humidity falls.
    v.inlet_rh = rh_keeping_dew_point(v.inlet_temp_c, v.inlet_rh, v.inlet_temp_c + rise);
    v.inlet_temp_c += rise;
    v.hot_aisle_temp_c += rise;
}

/// Relative humidity at `to_c` of air at `from_c` and `rh` % (Magnus).
fn rh_keeping_dew_point(from_c: f64, rh: f64, to_c: f64) -> f64 {
    const A: f64 = 17.625;
    const B: f64 = 243.04;
    rh * (A * from_c / (B + from_c) - A * to_c / (B + to_c)).exp()
}

fn baseline(n: &mut Noise) -> SiteValues {
    let phase_v = [
        220.5 + n.jitter(0.8),
        221.2 + n.jitter(0.8),
        219.8 + n.jitter(0.8),
    ];
    let phase_a = [
        42.0 + n.jitter(1.0),
        40.5 + n.jitter(1.0),
        41.3 + n.jitter(1.0),
    ];
    let active_power_kw = phase_v
        .iter()
        .zip(phase_a.iter())
        .map(|(v, a)| v * a * 0.95 / 1000.0)
        .sum();
    let mut cell_temp_c = [0.0; CELLS];
    for c in cell_temp_c.iter_mut() {
        *c = 25.0 + n.jitter(0.3);
    }
    SiteValues {
        inlet_temp_c: 23.0 + n.jitter(0.2),
        inlet_rh: 45.0 + n.jitter(1.0),
        hot_aisle_temp_c: 34.0 + n.jitter(0.3),
        // Set by `sample` from the inlet air.
        hot_aisle_rh: 0.0,
        smoke_1: false,
        smoke_2: false,
        water_leak: false,
        phase_v,
        phase_a,
        frequency_hz: 50.0 + n.jitter(0.03),
        active_power_kw,
        import_kwh: 0.0,
        breaker_closed: true,
        spd_failed: false,
        battery_room_temp_c: 24.5 + n.jitter(0.2),
        battery_room_rh: 45.0 + n.jitter(1.0),
        h2_lfl: (0.3 + n.jitter(0.2)).max(0.0),
        pack_voltage_v: 53.5 + n.jitter(0.05),
        pack_current_a: -1.5 + n.jitter(0.2),
        soc_pct: 100.0,
        cell_temp_c,
        bms_faults: 0,
        // Their noise is added last in `sample`, so the older devices keep
        // the values a seed gave them before these existed.
        co_ppm: 1.5,
        insulation_ohm: 1.2e6,
        insulation_alarm: false,
        door_shut: true,
        fan_fault: false,
        gas_lel: 0.3,
        residual_ma: 6.0,
        ats_source_ok: [true, true],
        ats_selected: 1,
        ups_battery_test: false,
        pac_alarm: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normal_site_is_within_limits() {
        let mut n = Noise::new(1);
        for i in 0..200 {
            let v = sample(Scenario::Normal, i as f64, &mut n);
            assert!((18.0..=27.0).contains(&v.inlet_temp_c));
            assert!(v.phase_v.iter().all(|x| (198.0..=235.4).contains(x)));
            assert!((49.8..=50.2).contains(&v.frequency_hz));
            assert!(v.h2_lfl < 10.0);
            assert!(!v.smoke_1 && !v.water_leak);
            assert!(v.co_ppm < 50.0 && v.gas_lel < 10.0 && v.residual_ma < 30.0);
            assert!(!v.insulation_alarm && v.door_shut && !v.fan_fault && !v.pac_alarm);
            assert_eq!((v.ats_source_ok, v.ats_selected), ([true, true], 1));
        }
    }

    /// Dew point by the Magnus formula, as the agent works it out.
    fn dew_point(t: f64, rh: f64) -> f64 {
        let g = (rh / 100.0).ln() + 17.625 * t / (243.04 + t);
        243.04 * g / (17.625 - g)
    }

    #[test]
    fn the_machine_rooms_dew_point_stays_inside_its_limits_while_the_air_warms() {
        let mut n = Noise::new(3);
        for (scenario, t) in [
            (Scenario::Normal, 0.0),
            (Scenario::AcFailure, 1800.0),
            (Scenario::ThermalRunaway, 300.0),
        ] {
            for i in 0..100 {
                let v = sample(scenario, t + i as f64, &mut n);
                let battery = dew_point(v.battery_room_temp_c, v.battery_room_rh);
                assert!(
                    (7.0..=13.5).contains(&battery),
                    "{scenario}: battery room {battery}"
                );
                let inlet = dew_point(v.inlet_temp_c, v.inlet_rh);
                let hot = dew_point(v.hot_aisle_temp_c, v.hot_aisle_rh);
                // GB 50174 5.5–15 °C, with room to spare for the 1 °C hysteresis.
                assert!((7.0..=13.5).contains(&inlet), "{scenario}: inlet {inlet}");
                assert!(
                    (inlet - hot).abs() < 1.0,
                    "{scenario}: hot aisle {hot}, inlet {inlet}"
                );
            }
        }
    }

    #[test]
    fn thermal_runaway_passes_both_hydrogen_stages_within_a_minute() {
        let mut n = Noise::new(2);
        let h2 = |t, n: &mut Noise| sample(Scenario::ThermalRunaway, t, n).h2_lfl;
        assert!(h2(5.0, &mut n) < h2(20.0, &mut n));
        assert!(h2(30.0, &mut n) > 10.0);
        assert!(h2(60.0, &mut n) > 25.0);
        let v = sample(Scenario::ThermalRunaway, 120.0, &mut n);
        assert!(v.cell_temp_c[RUNAWAY_CELL] > 60.0);
        assert_eq!(v.bms_faults & 1, 1);
    }

    #[test]
    fn mains_failure_drops_voltage_and_discharges_the_battery() {
        let v = sample(Scenario::MainsFailure, 10.0, &mut Noise::new(3));
        assert_eq!(v.phase_v, [0.0; 3]);
        assert!(v.pack_current_a > 0.0);
    }

    #[test]
    fn smoke_confirms_with_second_head_and_heat() {
        let mut n = Noise::new(4);
        let early = sample(Scenario::Smoke, 1.0, &mut n);
        assert!(early.smoke_1 && !early.smoke_2);
        let late = sample(Scenario::Smoke, 120.0, &mut n);
        assert!(late.smoke_2 && late.hot_aisle_temp_c > 57.0);
    }

    #[test]
    fn the_device_drills_pass_their_limits_and_touch_nothing_else() {
        let mut n = Noise::new(5);
        let at = |s, t, n: &mut Noise| sample(s, t, n);
        assert!(at(Scenario::GasLeak, 25.0, &mut n).gas_lel > 10.0);
        assert!(at(Scenario::GasLeak, 60.0, &mut n).gas_lel > 25.0);
        assert!(at(Scenario::CoRise, 60.0, &mut n).co_ppm > 50.0);
        assert!(at(Scenario::EarthLeakage, 30.0, &mut n).residual_ma > 30.0);
        let imd = at(Scenario::InsulationFault, 60.0, &mut n);
        assert!(imd.insulation_alarm && imd.insulation_ohm < 100_000.0);
        assert!(!at(Scenario::DoorOpen, 1.0, &mut n).door_shut);
        assert!(at(Scenario::VentilationFailure, 1.0, &mut n).fan_fault);
        let ats = at(Scenario::AtsTransfer, 1.0, &mut n);
        assert_eq!((ats.ats_source_ok, ats.ats_selected), ([false, true], 2));
        let test = at(Scenario::BatteryTest, 1.0, &mut n);
        assert!(test.ups_battery_test && test.phase_v.iter().all(|v| *v > 200.0));
        // A gas leak is only gas: the battery room's hydrogen stays put.
        assert!(at(Scenario::GasLeak, 60.0, &mut n).h2_lfl < 10.0);
    }

    #[test]
    fn scenario_names_parse_in_either_spelling() {
        assert_eq!("thermal-runaway".parse(), Ok(Scenario::ThermalRunaway));
        assert_eq!("AC_FAILURE".parse(), Ok(Scenario::AcFailure));
        assert!("flood"
            .parse::<Scenario>()
            .unwrap_err()
            .contains("expected one of"));
    }
}
