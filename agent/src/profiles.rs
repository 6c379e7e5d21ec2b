//! Device profiles: the point maps of real device families, written once in
//! `configs/profiles/*.toml` and instantiated per device with its address,
//! unit id, room and overrides. The shipped profiles are compiled in; a
//! `profiles_dir` adds more (or replaces a shipped one of the same name).

use crate::drivers::modbus::config::ModbusPoint;
use crate::drivers::snmp::config::{SnmpPoint, SnmpTable, TrapDef};
use roomguard_protocol::conf::{self, Problems};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;

/// The shipped profiles, by file name.
const BUILT_IN: &[(&str, &str)] = &[
    (
        "generic-th-sensor.toml",
        include_str!("../../configs/profiles/generic-th-sensor.toml"),
    ),
    (
        "smoke-detector.toml",
        include_str!("../../configs/profiles/smoke-detector.toml"),
    ),
    (
        "water-leak.toml",
        include_str!("../../configs/profiles/water-leak.toml"),
    ),
    (
        "h2-detector.toml",
        include_str!("../../configs/profiles/h2-detector.toml"),
    ),
    (
        "three-phase-meter.toml",
        include_str!("../../configs/profiles/three-phase-meter.toml"),
    ),
    (
        "breaker-monitor.toml",
        include_str!("../../configs/profiles/breaker-monitor.toml"),
    ),
    ("bms.toml", include_str!("../../configs/profiles/bms.toml")),
    (
        "ups-mib.toml",
        include_str!("../../configs/profiles/ups-mib.toml"),
    ),
    (
        "snmp-pdu.toml",
        include_str!("../../configs/profiles/snmp-pdu.toml"),
    ),
    (
        "rs485-th-fc03.toml",
        include_str!("../../configs/profiles/rs485-th-fc03.toml"),
    ),
    (
        "gas-detector-lel.toml",
        include_str!("../../configs/profiles/gas-detector-lel.toml"),
    ),
    (
        "co-detector.toml",
        include_str!("../../configs/profiles/co-detector.toml"),
    ),
    (
        "residual-current-relay.toml",
        include_str!("../../configs/profiles/residual-current-relay.toml"),
    ),
    (
        "insulation-monitor.toml",
        include_str!("../../configs/profiles/insulation-monitor.toml"),
    ),
    (
        "di-module.toml",
        include_str!("../../configs/profiles/di-module.toml"),
    ),
    (
        "eaton-xups.toml",
        include_str!("../../configs/profiles/eaton-xups.toml"),
    ),
    (
        "liebert-pac.toml",
        include_str!("../../configs/profiles/liebert-pac.toml"),
    ),
    (
        "geist-env.toml",
        include_str!("../../configs/profiles/geist-env.toml"),
    ),
    (
        "apc-env.toml",
        include_str!("../../configs/profiles/apc-env.toml"),
    ),
    (
        "apc-ats.toml",
        include_str!("../../configs/profiles/apc-ats.toml"),
    ),
];

/// A Modbus device family's point map.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModbusProfile {
    pub name: String,
    pub driver: String,
    pub description: String,
    /// The real device family (and document) the map follows.
    pub follows: String,
    pub points: Vec<ModbusPoint>,
    /// Points worked out from the others in each poll (unbalance, dew point).
    #[serde(default)]
    pub derived: Vec<crate::derive::DerivedDef>,
    /// Most registers the family takes in one read, when its map says
    /// (a device's own `max_read` wins).
    #[serde(default)]
    pub max_read: Option<u16>,
    /// The family refuses reads that span registers it does not implement
    /// (as a device's `contiguous_only`).
    #[serde(default)]
    pub contiguous_only: bool,
}

/// An SNMP device family's scalars and tables.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnmpProfile {
    pub name: String,
    pub driver: String,
    pub description: String,
    pub follows: String,
    #[serde(default)]
    pub points: Vec<SnmpPoint>,
    #[serde(default)]
    pub tables: Vec<SnmpTable>,
    /// Notifications the family sends and what they mean.
    #[serde(default)]
    pub traps: Vec<TrapDef>,
    /// Points worked out from the others in each poll (input voltage unbalance).
    #[serde(default)]
    pub derived: Vec<crate::derive::DerivedDef>,
}

#[derive(Debug, Clone)]
pub enum Profile {
    Modbus(ModbusProfile),
    Snmp(SnmpProfile),
}

impl Profile {
    pub fn name(&self) -> &str {
        match self {
            Profile::Modbus(p) => &p.name,
            Profile::Snmp(p) => &p.name,
        }
    }
}

/// Every profile known to this agent, by name.
#[derive(Debug, Clone, Default)]
pub struct Profiles(BTreeMap<String, Profile>);

#[derive(Deserialize)]
struct Head {
    driver: String,
}

impl Profiles {
    /// The shipped profiles, plus every `*.toml` in `dir`. Problems are
    /// recorded under `profiles/<file>: …`.
    pub fn load(dir: Option<&Path>, problems: &mut Problems) -> Profiles {
        let mut all = Profiles::default();
        for (file, text) in BUILT_IN {
            all.add(file, text, problems);
        }
        if let Some(dir) = dir {
            match std::fs::read_dir(dir) {
                Ok(entries) => {
                    let mut files: Vec<_> = entries
                        .filter_map(Result::ok)
                        .map(|e| e.path())
                        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
                        .collect();
                    files.sort();
                    for path in files {
                        match std::fs::read_to_string(&path) {
                            Ok(text) => all.add(&path.display().to_string(), &text, problems),
                            Err(e) => problems
                                .push(format!("profiles_dir: {}", path.display()), e.to_string()),
                        }
                    }
                }
                Err(e) => problems.push("profiles_dir", format!("{}: {e}", dir.display())),
            }
        }
        all
    }

    fn add(&mut self, file: &str, text: &str, problems: &mut Problems) {
        let name = Path::new(file);
        let parsed = conf::parse::<Head>(text, name).and_then(|h| match h.driver.as_str() {
            "modbus" => conf::parse::<ModbusProfile>(text, name).map(Profile::Modbus),
            "snmp" => conf::parse::<SnmpProfile>(text, name).map(Profile::Snmp),
            other => Err(conf::ConfigError::Field {
                file: name.to_owned(),
                problem: conf::Problem {
                    path: "driver".into(),
                    message: format!("{other:?} is not a driver; use \"modbus\" or \"snmp\""),
                },
            }),
        });
        match parsed {
            Ok(p) => {
                self.0.insert(p.name().to_owned(), p);
            }
            Err(e) => {
                for prob in e.problems() {
                    problems.push(format!("profile {file}: {}", prob.path), prob.message);
                }
            }
        }
    }

    pub fn get(&self, name: &str) -> Option<&Profile> {
        self.0.get(name)
    }

    pub fn names(&self) -> Vec<&str> {
        self.0.keys().map(String::as_str).collect()
    }

    /// The shipped profile files, for `roomguard-agent profiles`.
    pub fn built_in() -> &'static [(&'static str, &'static str)] {
        BUILT_IN
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_shipped_profile_parses_and_names_its_device_family() {
        let mut problems = Problems::default();
        let all = Profiles::load(None, &mut problems);
        assert!(problems.is_empty(), "{:?}", problems.list());
        assert_eq!(all.names().len(), BUILT_IN.len());
        for name in all.names() {
            let follows = match all.get(name).unwrap() {
                Profile::Modbus(p) => &p.follows,
                Profile::Snmp(p) => &p.follows,
            };
            assert!(follows.len() > 20, "{name} does not say what it follows");
        }
    }

    #[test]
    fn a_broken_profile_in_the_directory_is_named_with_its_file_and_path() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("bad.toml"),
            "name = \"bad\"\ndriver = \"modbus\"\ndescription = \"d\"\nfollows = \"f\"\n[[points]]\nid = \"x\"\nquantity = \"q\"\ntable = \"holding\"\naddress = \"zero\"\ntype = \"int16\"\n",
        )
        .unwrap();
        let mut problems = Problems::default();
        Profiles::load(Some(dir.path()), &mut problems);
        let p = &problems.list()[0];
        assert!(
            p.path.contains("bad.toml") && p.path.ends_with("points[0].address"),
            "{p}"
        );
    }
}
