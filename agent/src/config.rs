//! The agent's configuration file: who it is, where its broker is, and which
//! devices it polls. Loaded and checked completely before anything starts;
//! every problem is reported by its path.

use crate::drivers::modbus::config::ModbusDevice;
use roomguard_protocol::conf::{self, BrokerUrl, ConfigError, Problems};
use roomguard_protocol::validate_id;
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Environment variables `ROOMGUARD_AGENT__MQTT__URL` and the like override keys.
pub const ENV_PREFIX: &str = "ROOMGUARD_AGENT";

/// A commented sample, printed by `roomguard-agent sample-config`.
pub const SAMPLE: &str = include_str!("../sample-config.toml");

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// Site id: the building or station this agent watches.
    pub site: String,
    /// Agent id, unique within the site.
    pub agent: String,
    /// Where the agent keeps its state (the batch sequence number).
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    pub mqtt: MqttConfig,
    /// Modbus devices (TCP, or RTU behind a TCP gateway by unit id).
    #[serde(default)]
    pub modbus: Vec<ModbusDevice>,
}

fn default_state_dir() -> PathBuf {
    PathBuf::from("var/agent")
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MqttConfig {
    /// Broker URL, `mqtt://host:port`.
    pub url: String,
    /// Client id; default `roomguard-agent-{site}-{agent}`. Fixed, so the
    /// broker can keep the agent's session across reconnects.
    #[serde(default)]
    pub client_id: Option<String>,
    #[serde(default = "default_keep_alive", with = "conf::duration")]
    pub keep_alive: Duration,
    /// How often the retained status is refreshed.
    #[serde(default = "default_status_interval", with = "conf::duration")]
    pub status_interval: Duration,
}

fn default_keep_alive() -> Duration {
    Duration::from_secs(15)
}
fn default_status_interval() -> Duration {
    Duration::from_secs(10)
}

impl AgentConfig {
    /// Reads and checks `file`; every problem is reported at once.
    pub fn load(file: &Path) -> Result<AgentConfig, ConfigError> {
        let cfg: AgentConfig = conf::load(file, ENV_PREFIX)?;
        cfg.check().into_result(file)?;
        Ok(cfg)
    }

    pub fn parse(text: &str, name: &Path) -> Result<AgentConfig, ConfigError> {
        let cfg: AgentConfig = conf::parse(text, name)?;
        cfg.check().into_result(name)?;
        Ok(cfg)
    }

    pub fn client_id(&self) -> String {
        self.mqtt
            .client_id
            .clone()
            .unwrap_or_else(|| format!("roomguard-agent-{}-{}", self.site, self.agent))
    }

    pub fn broker(&self) -> Result<BrokerUrl, String> {
        self.mqtt.url.parse()
    }

    fn check(&self) -> Problems {
        let mut p = Problems::default();
        if let Err(e) = validate_id(&self.site) {
            p.push("site", format!("{:?} {e}", self.site));
        }
        if let Err(e) = validate_id(&self.agent) {
            p.push("agent", format!("{:?} {e}", self.agent));
        }
        if let Err(e) = self.broker() {
            p.push("mqtt.url", e);
        }
        if self.mqtt.keep_alive < Duration::from_secs(1) {
            p.push("mqtt.keep_alive", "must be at least 1s");
        }
        if self.modbus.is_empty() {
            p.push(
                "modbus",
                "no devices configured; the agent would have nothing to poll",
            );
        }
        let mut device_ids = HashSet::new();
        let mut point_ids = HashSet::new();
        for (i, d) in self.modbus.iter().enumerate() {
            let path = format!("modbus[{i}]");
            if validate_id(&d.id).is_ok() && !device_ids.insert(d.id.clone()) {
                p.push(
                    format!("{path}.id"),
                    format!("{:?} is used by another device", d.id),
                );
            }
            d.check(&path, &mut p, &mut point_ids);
        }
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(text: &str) -> Vec<String> {
        match AgentConfig::parse(text, Path::new("agent.toml")) {
            Ok(_) => vec![],
            Err(e) => e.problems().iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn the_sample_config_is_valid() {
        assert_eq!(problems(SAMPLE), Vec::<String>::new());
    }

    #[test]
    fn the_demo_config_is_valid() {
        let demo = include_str!("../../configs/demo/agent.toml");
        assert_eq!(problems(demo), Vec::<String>::new());
    }

    #[test]
    fn every_semantic_problem_is_reported_at_once_by_path() {
        let text = r#"
            site = "site 1"
            agent = "edge-1"
            [mqtt]
            url = "http://broker"
            [[modbus]]
            id = "th-1"
            room = "machine-room"
            address = "127.0.0.1:502"
            [[modbus.points]]
            id = "t"
            quantity = "temperature"
            table = "input"
            address = 0
            type = "int16"
            [[modbus.points]]
            id = "t"
            quantity = "temperature"
            table = "coil"
            address = 1
            type = "float32"
            [[modbus.points]]
            id = "b"
            quantity = "smoke"
            table = "input"
            address = 65535
            type = "bit"
        "#;
        let got = problems(text);
        let paths: Vec<&str> = got.iter().map(|s| s.split(':').next().unwrap()).collect();
        assert_eq!(
            paths,
            vec![
                "site",
                "mqtt.url",
                "modbus[0].points[1].id",
                "modbus[0].points[1].type",
                "modbus[0].points[2].bit",
            ],
            "{got:#?}"
        );
    }

    #[test]
    fn a_mistyped_key_is_named_with_its_path() {
        let text = r#"
            site = "s"
            agent = "a"
            [mqtt]
            url = "mqtt://127.0.0.1"
            [[modbus]]
            id = "d"
            room = "r"
            address = "127.0.0.1:502"
            points = []
            [[modbus]]
            id = "e"
            room = "r"
            address = "127.0.0.1:502"
            [[modbus.points]]
            id = "x"
            quantity = "q"
            table = "input"
            address = -4
            type = "int16"
        "#;
        let got = problems(text);
        assert!(got[0].starts_with("modbus[1].points[0].address"), "{got:?}");
    }
}
