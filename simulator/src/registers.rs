//! The demo site's Modbus register map: which unit id is which device, and how
//! each value is encoded, in the ways real devices of each kind encode them.
//!
//! `configs/demo/agent.toml` reads exactly this map; docs/SIMULATOR.md lists it.

use crate::model::{SiteValues, CELLS};
use std::collections::HashMap;

/// Unit ids of the simulated devices behind the one Modbus TCP gateway.
pub mod unit {
    /// Machine room, cold-aisle inlet temperature/humidity (XY-MD02 style:
    /// input register 1 int16 ×10 °C, 2 uint16 ×10 %RH).
    pub const MR_TH_INLET: u8 = 1;
    /// Machine room, hot-aisle temperature/humidity.
    pub const MR_TH_HOT: u8 = 2;
    /// Machine room smoke detectors (discrete input 0 = alarm; input register 0 status word).
    pub const MR_SMOKE_1: u8 = 3;
    pub const MR_SMOKE_2: u8 = 5;
    /// Machine room water-leak rope (discrete input 0).
    pub const MR_LEAK: u8 = 4;
    /// Distribution room three-phase meter, Eastron SDM630 layout (input
    /// registers, float32 ABCD: high word first).
    pub const PD_METER_ABCD: u8 = 10;
    /// The same meter model with CDAB word order (low word first), as many meters ship.
    pub const PD_METER_CDAB: u8 = 11;
    /// Distribution room main breaker and surge protector status (discrete inputs).
    pub const PD_BREAKER: u8 = 12;
    /// Battery room hydrogen detector, % LFL ×10 in input register 0.
    pub const BR_H2: u8 = 20;
    /// Battery management system (holding registers).
    pub const BR_BMS: u8 = 21;
    /// Battery room ambient temperature/humidity.
    pub const BR_TH: u8 = 22;
    /// Machine room, a second cold-aisle T/H transmitter of the common
    /// Chinese RS-485 kind (Renke RS-WS-N01): holding registers only (FC03;
    /// FC04 is refused), 0 humidity ×10, 1 temperature ×10 int16.
    pub const MR_TH_INLET_FC03: u8 = 6;
    /// Distribution room combustible-gas detector (Evikon E2648-LEL map):
    /// holding 0x00FF status (bit 0 sensor absent), 0x0103 gas, % LEL.
    pub const PD_GAS: u8 = 13;
    /// Distribution room residual-current relay (Acrel ASJ10L-LD1A map):
    /// holding 0 residual current mA, 0x1B alarm bits (0 warning, 1 alarm, 2 CT open).
    pub const PD_RCM: u8 = 14;
    /// Battery room CO transmitter (Greystone CMD5B4 map): holding 0 status,
    /// 1 CO ppm, 2 temperature ×10, 7 fault.
    pub const BR_CO: u8 = 23;
    /// Battery room DC insulation monitor (Bender isoBAT425 map): holding
    /// 1000–1001 resistance Ω float32 (high word first), 1002 alarm type
    /// (high byte) and unit/validity (low byte), 1003 channel description.
    pub const BR_IMD: u8 = 24;
    /// Battery room 8-channel DI module (Eletechsup R4PIN08 map, FC02):
    /// DI1 door contact (closed = shut), DI2 exhaust-fan fault contact.
    pub const BR_DI: u8 = 25;
}

/// The four Modbus data tables of one device.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Tables {
    pub coils: Vec<bool>,
    pub discrete_inputs: Vec<bool>,
    pub input_registers: Vec<u16>,
    pub holding_registers: Vec<u16>,
}

/// Every simulated device by unit id.
pub type Site = HashMap<u8, Tables>;

fn x10_i16(v: f64) -> u16 {
    ((v * 10.0).round().clamp(i16::MIN as f64, i16::MAX as f64) as i16) as u16
}

fn x10_u16(v: f64) -> u16 {
    (v * 10.0).round().clamp(0.0, u16::MAX as f64) as u16
}

/// float32 as two registers, high word first (ABCD).
fn f32_abcd(v: f64) -> [u16; 2] {
    let b = (v as f32).to_bits();
    [(b >> 16) as u16, b as u16]
}

/// float32 as two registers, low word first (CDAB).
fn f32_cdab(v: f64) -> [u16; 2] {
    let [hi, lo] = f32_abcd(v);
    [lo, hi]
}

fn th_sensor(temp: f64, rh: f64) -> Tables {
    Tables {
        input_registers: vec![0, x10_i16(temp), x10_u16(rh)],
        ..Tables::default()
    }
}

fn smoke_head(alarm: bool) -> Tables {
    Tables {
        discrete_inputs: vec![alarm],
        // Status word: bit 0 alarm, bit 1 fault, bit 2 dirty chamber.
        input_registers: vec![u16::from(alarm)],
        ..Tables::default()
    }
}

/// Meter layout (SDM630 input registers, float32, 2 registers each): 0 V1,
/// 2 V2, 4 V3, 6 I1, 8 I2, 10 I3, 52 total system power (W), 70 frequency,
/// 72 total import energy (kWh). Registers not listed read 0.
fn meter(v: &SiteValues, enc: fn(f64) -> [u16; 2]) -> Tables {
    let mut regs = vec![0u16; 74];
    let mut put = |addr: usize, x: f64| regs[addr..addr + 2].copy_from_slice(&enc(x));
    for (i, x) in v.phase_v.iter().chain(v.phase_a.iter()).enumerate() {
        put(i * 2, *x);
    }
    put(52, v.active_power_kw * 1000.0);
    put(70, v.frequency_hz);
    put(72, v.import_kwh);
    Tables {
        input_registers: regs,
        ..Tables::default()
    }
}

/// BMS layout (holding registers): 0 pack voltage ×10, 1 pack current ×10
/// (int16, + = discharge), 2 SOC ×10, 3 fault bits, 4..9 reserved (0),
/// 10..17 cell temperatures ×10 int16.
fn bms(v: &SiteValues) -> Tables {
    let mut regs = vec![0u16; 10 + CELLS];
    regs[0] = x10_u16(v.pack_voltage_v);
    regs[1] = x10_i16(v.pack_current_a);
    regs[2] = x10_u16(v.soc_pct);
    regs[3] = v.bms_faults;
    for (i, t) in v.cell_temp_c.iter().enumerate() {
        regs[10 + i] = x10_i16(*t);
    }
    Tables {
        holding_registers: regs,
        ..Tables::default()
    }
}

/// The Renke-style transmitter: holding registers only, humidity first.
fn th_fc03(temp: f64, rh: f64) -> Tables {
    Tables {
        holding_registers: vec![x10_u16(rh), x10_i16(temp)],
        ..Tables::default()
    }
}

fn gas_detector(lel: f64) -> Tables {
    let mut regs = vec![0u16; 0x104];
    regs[0x0101] = (lel * 40.0).round().clamp(0.0, 4095.0) as u16; // raw ADC
    regs[0x0103] = lel.round().clamp(0.0, 100.0) as u16;
    Tables {
        holding_registers: regs,
        ..Tables::default()
    }
}

fn residual_current_relay(ma: f64) -> Tables {
    let mut regs = vec![0u16; 0x1F];
    regs[0] = ma.round().clamp(0.0, 30_000.0) as u16;
    regs[0x08] = 30; // rated operating current, mA
    regs[0x09] = 20; // pre-warning, mA
    regs[0x1B] = u16::from(ma >= 20.0) | (u16::from(ma >= 30.0) << 1);
    Tables {
        holding_registers: regs,
        ..Tables::default()
    }
}

fn co_transmitter(ppm: f64, temp: f64) -> Tables {
    let mut regs = vec![0u16; 8];
    regs[0] = u16::from(ppm >= 50.0);
    regs[1] = ppm.round().clamp(0.0, 500.0) as u16;
    regs[2] = x10_u16(temp);
    Tables {
        holding_registers: regs,
        ..Tables::default()
    }
}

fn insulation_monitor(ohm: f64, alarm: bool) -> Tables {
    let mut regs = vec![0u16; 1004];
    regs[1000..1002].copy_from_slice(&f32_abcd(ohm));
    // High byte: alarm type 0b101 alarm, 0 none; low byte: unit Ω (0b00010), valid.
    regs[1002] = (if alarm { 0b101 } else { 0 } << 8) | 0b00010;
    regs[1003] = if alarm { 71 } else { 0 }; // 71: insulation fault
    Tables {
        holding_registers: regs,
        ..Tables::default()
    }
}

/// Encodes the site's values into every device's tables.
pub fn encode(v: &SiteValues) -> Site {
    let mut site = Site::new();
    site.insert(unit::MR_TH_INLET, th_sensor(v.inlet_temp_c, v.inlet_rh));
    site.insert(
        unit::MR_TH_HOT,
        th_sensor(v.hot_aisle_temp_c, v.hot_aisle_rh),
    );
    site.insert(unit::MR_SMOKE_1, smoke_head(v.smoke_1));
    site.insert(unit::MR_SMOKE_2, smoke_head(v.smoke_2));
    site.insert(
        unit::MR_LEAK,
        Tables {
            discrete_inputs: vec![v.water_leak],
            ..Tables::default()
        },
    );
    site.insert(unit::PD_METER_ABCD, meter(v, f32_abcd));
    site.insert(unit::PD_METER_CDAB, meter(v, f32_cdab));
    site.insert(
        unit::PD_BREAKER,
        Tables {
            discrete_inputs: vec![v.breaker_closed, v.spd_failed],
            ..Tables::default()
        },
    );
    site.insert(
        unit::BR_H2,
        Tables {
            input_registers: vec![x10_u16(v.h2_lfl), 0],
            ..Tables::default()
        },
    );
    site.insert(unit::BR_BMS, bms(v));
    site.insert(
        unit::BR_TH,
        th_sensor(v.battery_room_temp_c, v.battery_room_rh),
    );
    site.insert(
        unit::MR_TH_INLET_FC03,
        th_fc03(v.inlet_temp_c + 0.3, v.inlet_rh - 1.0),
    );
    site.insert(unit::PD_GAS, gas_detector(v.gas_lel));
    site.insert(unit::PD_RCM, residual_current_relay(v.residual_ma));
    site.insert(unit::BR_CO, co_transmitter(v.co_ppm, v.battery_room_temp_c));
    site.insert(
        unit::BR_IMD,
        insulation_monitor(v.insulation_ohm, v.insulation_alarm),
    );
    let mut di = vec![false; 8];
    di[0] = v.door_shut;
    di[1] = v.fan_fault;
    site.insert(
        unit::BR_DI,
        Tables {
            discrete_inputs: di,
            ..Tables::default()
        },
    );
    site
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{sample, Noise, Scenario};

    #[test]
    fn negative_temperatures_are_twos_complement() {
        assert_eq!(x10_i16(-12.3), (-123i16) as u16);
    }

    #[test]
    fn cdab_swaps_the_words_of_abcd() {
        let [a, b] = f32_abcd(230.1);
        assert_eq!(f32_cdab(230.1), [b, a]);
        assert_eq!(
            f32::from_bits((u32::from(a) << 16) | u32::from(b)),
            230.1f32
        );
    }

    #[test]
    fn every_device_has_its_registers() {
        let site = encode(&sample(Scenario::Normal, 0.0, &mut Noise::new(1)));
        assert_eq!(site[&unit::PD_METER_ABCD].input_registers.len(), 74);
        assert_eq!(site[&unit::BR_BMS].holding_registers.len(), 18);
        assert_eq!(site.len(), 17);
        // The FC03-only transmitter has no input registers to read.
        assert!(site[&unit::MR_TH_INLET_FC03].input_registers.is_empty());
    }
}
