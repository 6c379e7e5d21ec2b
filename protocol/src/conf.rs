//! Configuration conventions shared by every RoomGuard binary: TOML files read
//! with the `config` crate, environment overrides, durations written as `"5s"`,
//! and errors that name the offending key by its path
//! (`devices[1].points[3].address: …`), all problems reported at once.

use serde::de::DeserializeOwned;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;
use thiserror::Error;

/// One thing wrong with a configuration, at a path such as `devices[0].unit`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub path: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Collects every problem of a configuration so they can be reported together.
#[derive(Debug, Default)]
pub struct Problems(Vec<Problem>);

impl Problems {
    /// Adds a problem; one already reported (a setting checked once per
    /// broker URL, say) is not repeated.
    pub fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        let problem = Problem {
            path: path.into(),
            message: message.into(),
        };
        if !self.0.contains(&problem) {
            self.0.push(problem);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn list(&self) -> &[Problem] {
        &self.0
    }

    /// `Ok(())` when nothing was found, else every problem.
    pub fn into_result(self, file: &Path) -> Result<(), ConfigError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid {
                file: file.to_owned(),
                problems: self.0,
            })
        }
    }
}

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("{file}: cannot read or parse: {message}")]
    Parse { file: PathBuf, message: String },
    #[error("{file}: {problem}")]
    Field { file: PathBuf, problem: Problem },
    #[error("{file}: {} problem(s):\n{}", problems.len(), list(problems))]
    Invalid {
        file: PathBuf,
        problems: Vec<Problem>,
    },
}

/// The message of a secret whose environment variable is not set, ending in the name.
const UNSET_ENV: &str = "environment variable ";

impl ConfigError {
    /// When the only problems are secrets' environment variables not set
    /// here: those problems. `validate` may run where the service's
    /// environment is not (a workstation, CI), so it reports them as what
    /// `run` will need rather than as errors; `run` refuses to start.
    pub fn only_unset_env(&self) -> Option<Vec<Problem>> {
        let all = self.problems();
        let unset =
            |p: &Problem| p.message.starts_with(UNSET_ENV) && p.message.ends_with(" is not set");
        (matches!(
            self,
            ConfigError::Invalid { .. } | ConfigError::Field { .. }
        ) && all.iter().all(unset))
        .then_some(all)
    }

    /// Every problem named, for callers that print or test them one by one.
    pub fn problems(&self) -> Vec<Problem> {
        match self {
            ConfigError::Parse { message, .. } => vec![Problem {
                path: String::new(),
                message: message.clone(),
            }],
            ConfigError::Field { problem, .. } => vec![problem.clone()],
            ConfigError::Invalid { problems, .. } => problems.clone(),
        }
    }
}

fn list(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(|p| format!("  - {p}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Reads a TOML file into `T`, with environment variables named
/// `{env_prefix}__SECTION__KEY` overriding keys (for secrets and containers).
///
/// A structural error (unknown key, wrong type) is reported with its path;
/// semantic checks are the caller's, collected in [`Problems`].
pub fn load<T: DeserializeOwned>(file: &Path, env_prefix: &str) -> Result<T, ConfigError> {
    let parse_err = |message: String| ConfigError::Parse {
        file: file.to_owned(),
        message,
    };
    if !file.is_file() {
        return Err(parse_err("no such file".into()));
    }
    let built = config::Config::builder()
        .add_source(config::File::from(file).format(config::FileFormat::Toml))
        .add_source(
            config::Environment::with_prefix(env_prefix)
                .prefix_separator("__")
                .separator("__")
                .try_parsing(true),
        )
        .build()
        .map_err(|e| parse_err(e.to_string()))?;
    from_config(built, file)
}

/// Parses TOML text, as [`load`] does a file (for `validate` on stdin and tests).
pub fn parse<T: DeserializeOwned>(text: &str, name: &Path) -> Result<T, ConfigError> {
    let built = config::Config::builder()
        .add_source(config::File::from_str(text, config::FileFormat::Toml))
        .build()
        .map_err(|e| ConfigError::Parse {
            file: name.to_owned(),
            message: e.to_string(),
        })?;
    from_config(built, name)
}

/// Deserializes `T`, naming every structural problem rather than the first.
///
/// serde stops at the first error, and the `config` crate keeps tables in a
/// hash map, so which error came first changed from run to run (`validate`
/// and `run` could name different ones). So: note the error, take the
/// offending key out of the file's tree, and try again, until it
/// deserializes or nothing more can be taken out; then every problem is
/// reported, sorted by path.
///
/// Limits: a key that must be there, once taken out, takes its table with
/// it, so a second problem in the same array of tables (`modbus[1]` after
/// one in `modbus[0]`) shows after the first is fixed. The later rounds read
/// the tree with serde_json, a little stricter than `config` (a number from
/// an environment variable for a text key): such a key may be named too,
/// but only beside a real problem.
fn from_config<T: DeserializeOwned>(built: config::Config, file: &Path) -> Result<T, ConfigError> {
    // `config`'s own reading decides (it is the lenient one: numbers from
    // environment variables into strings, and the like).
    let first = match serde_path_to_error::deserialize::<_, T>(built.clone()) {
        Ok(t) => return Ok(t),
        Err(e) => field_problem(e),
    };
    // The problems themselves are read from the file's tree, in its sorted
    // order, so they are the same, in the same words, at every run.
    let mut problems = Vec::new();
    if let Ok(mut tree) = built.try_deserialize::<serde_json::Value>() {
        let mut removed: Vec<String> = Vec::new();
        // Each round takes one key out; a bound all the same.
        for _ in 0..100 {
            let Err(e) = serde_path_to_error::deserialize::<_, T>(&tree) else {
                break;
            };
            let next = field_problem(e);
            // A key taken out here is now "missing": not a new problem.
            let ours = removed.iter().any(|r| {
                parent(r) == next.path.as_str() && names_missing(&next.message, last_key(r))
            });
            if !ours && !problems.contains(&next) {
                problems.push(next.clone());
            }
            if !take_out(&mut tree, &next.path) {
                break;
            }
            removed.push(next.path);
        }
    }
    if !problems.iter().any(|p| p.path == first.path) {
        problems.push(first);
    }
    problems.sort_by(|a, b| a.path.cmp(&b.path));
    if problems.len() == 1 {
        return Err(ConfigError::Field {
            file: file.to_owned(),
            problem: problems.remove(0),
        });
    }
    Err(ConfigError::Invalid {
        file: file.to_owned(),
        problems,
    })
}

fn field_problem<E: std::fmt::Display>(e: serde_path_to_error::Error<E>) -> Problem {
    let path = e.path().to_string();
    Problem {
        path: if path == "." { String::new() } else { path },
        message: e.into_inner().to_string(),
    }
}

/// Whether `message` says `key` is missing, in serde's words (missing field
/// `key`) or the config crate's (missing configuration field "a[0]key").
fn names_missing(message: &str, key: &str) -> bool {
    message.contains("missing")
        && (message.contains(&format!("`{key}`")) || message.contains(&format!("{key}\"")))
}

/// The table a path's last key is in: `a[0]` for `a[0].b`, `` for `b`.
fn parent(path: &str) -> &str {
    path.rsplit_once('.').map_or("", |(p, _)| p)
}

/// The last key of a path such as `modbus[0].points[1].type` (`type`).
fn last_key(path: &str) -> &str {
    let last = path.rsplit('.').next().unwrap_or(path);
    last.split('[').next().unwrap_or(last)
}

/// Removes the value at `path` (`a.b[2].c`) from `tree`: the key from its
/// table, or, for an array element, the whole array's key (taking one
/// element out would renumber the others and misname their problems).
/// False when there is nothing there to remove.
fn take_out(tree: &mut serde_json::Value, path: &str) -> bool {
    if path.is_empty() {
        return false;
    }
    let mut keys: Vec<&str> = path.split('.').collect();
    let last = keys.pop().unwrap_or_default();
    let mut node = tree;
    for key in keys {
        let (name, indices) = split_indices(key);
        let Some(mut next) = node.get_mut(name) else {
            return false;
        };
        for i in indices {
            match next.get_mut(i) {
                Some(n) => next = n,
                None => return false,
            }
        }
        node = next;
    }
    let (name, _) = split_indices(last);
    node.as_object_mut()
        .is_some_and(|table| table.remove(name).is_some())
}

/// `points[1][2]` → (`points`, [1, 2]).
fn split_indices(key: &str) -> (&str, Vec<usize>) {
    let mut parts = key.split('[');
    let name = parts.next().unwrap_or_default();
    let indices = parts
        .filter_map(|p| p.trim_end_matches(']').parse().ok())
        .collect();
    (name, indices)
}

/// Parses durations such as `250ms`, `5s`, `2m`, `1h`, `7d` (one unit only).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .ok_or_else(|| {
            format!("{s:?} has no unit; write e.g. \"500ms\", \"5s\", \"2m\", \"1h\"")
        })?;
    let (num, unit) = s.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} does not start with a number"))?;
    let secs = match unit.trim() {
        "ms" => n / 1000.0,
        "s" => n,
        "m" | "min" => n * 60.0,
        "h" => n * 3600.0,
        "d" => n * 86400.0,
        other => {
            return Err(format!(
                "unknown unit {other:?} in {s:?}; use ms, s, m, h or d"
            ))
        }
    };
    Duration::try_from_secs_f64(secs).map_err(|_| format!("{s:?} is out of range"))
}

/// Serde adapter: `#[serde(with = "roomguard_protocol::conf::duration")]`.
pub mod duration {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        super::parse_duration(&s).map_err(serde::de::Error::custom)
    }

    pub fn serialize<S: Serializer>(v: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{}ms", v.as_millis()))
    }
}

/// A secret given inline (discouraged: config files get copied and
/// committed), from an environment variable, or from a file.
#[derive(Debug, Clone, Default, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Secret {
    #[serde(default)]
    pub value: Option<String>,
    #[serde(default)]
    pub env: Option<String>,
    #[serde(default)]
    pub file: Option<PathBuf>,
}

impl Secret {
    /// The secret's value; `None` when none of the three is set.
    pub fn resolve(&self) -> Result<Option<String>, String> {
        match (&self.value, &self.env, &self.file) {
            (Some(v), None, None) => Ok(Some(v.clone())),
            (None, Some(var), None) => std::env::var(var)
                .map(Some)
                .map_err(|_| format!("{UNSET_ENV}{var} is not set")),
            (None, None, Some(path)) => std::fs::read_to_string(path)
                .map(|s| Some(s.trim_end_matches(['\r', '\n']).to_owned()))
                .map_err(|e| format!("cannot read {}: {e}", path.display())),
            (None, None, None) => Ok(None),
            _ => Err("give exactly one of value, env, file".into()),
        }
    }

    pub fn is_inline(&self) -> bool {
        self.value.is_some()
    }
}

/// What `validate` does with a configuration it refused: one valid but for
/// secrets whose environment variables are not set where it ran is listed
/// as needing them (and `validate` succeeds); anything else is printed and
/// the process exits with status 2.
pub fn refused_by_validate(file: &Path, e: &ConfigError) {
    let Some(unset) = e.only_unset_env() else {
        eprintln!("{e}");
        std::process::exit(2);
    };
    println!(
        "{}: ok, once these environment variables are set (`run` refuses to start without them, and checks their values then):",
        file.display()
    );
    for p in unset {
        println!("  - {}: {}", p.path, p.message);
    }
}

/// The warning for a secret written in a config file at `at` (config
/// files get copied, shared and committed).
pub fn inline_secret_warning(at: &str) -> String {
    format!(
        "{at}: a secret is written in the config file; prefer env = \"VAR\" or file = \"/path\""
    )
}

/// Serde adapter for optional durations: `#[serde(default, with = "roomguard_protocol::conf::option_duration")]`.
pub mod option_duration {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        match Option::<String>::deserialize(d)? {
            Some(s) => super::parse_duration(&s)
                .map(Some)
                .map_err(serde::de::Error::custom),
            None => Ok(None),
        }
    }

    pub fn serialize<S: Serializer>(v: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(d) => s.serialize_str(&format!("{}ms", d.as_millis())),
            None => s.serialize_none(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Top {
        devices: Vec<Dev>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Dev {
        id: String,
        #[serde(with = "duration")]
        interval: Duration,
        points: Vec<Pt>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Pt {
        address: u16,
    }

    #[test]
    fn durations_take_one_unit() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("1.5m"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert!(parse_duration("5").unwrap_err().contains("no unit"));
        assert!(parse_duration("5 parsecs")
            .unwrap_err()
            .contains("unknown unit"));
    }

    #[test]
    fn a_bad_value_is_named_by_its_path() {
        let toml = r#"
            [[devices]]
            id = "a"
            interval = "1s"
            points = [{ address = 1 }]
            [[devices]]
            id = "b"
            interval = "1s"
            points = [{ address = 1 }, { address = 2 }, { address = 3 }, { address = "forty" }]
        "#;
        let err = parse::<Top>(toml, Path::new("agent.toml")).unwrap_err();
        let p = &err.problems()[0];
        assert_eq!(p.path, "devices[1].points[3].address", "{err}");
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Tables {
        #[serde(default)]
        a: Option<Inner>,
        #[serde(default)]
        b: Option<Inner>,
        name: String,
        #[serde(default)]
        c: Option<u8>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Inner {
        n: u16,
    }

    #[test]
    fn every_structural_problem_is_named_in_the_same_order_every_time() {
        let toml = "name = \"x\"\nc = 999\n[a]\nn = \"forty\"\n[b]\nn = 1\ncolour = \"red\"\n";
        let first = parse::<Tables>(toml, Path::new("x.toml"))
            .unwrap_err()
            .problems();
        let paths: Vec<&str> = first.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(paths.len(), 3, "{first:?}");
        assert!(
            paths[0].starts_with('a') && paths[1].starts_with('b') && paths[2] == "c",
            "{first:?}"
        );
        assert!(first[1].message.contains("colour"), "{first:?}");
        // Not one spurious "missing field" for a key taken out to go on.
        assert!(
            !first.iter().any(|p| p.message.contains("missing")),
            "{first:?}"
        );
        for _ in 0..5 {
            assert_eq!(
                parse::<Tables>(toml, Path::new("x.toml"))
                    .unwrap_err()
                    .problems(),
                first
            );
        }
        // A required key really missing is still named.
        let err = parse::<Tables>("[a]\nn = 1\n", Path::new("x.toml")).unwrap_err();
        assert!(
            err.problems()[0].message.contains("missing field `name`"),
            "{err}"
        );
    }

    #[test]
    fn unknown_keys_are_refused_by_path() {
        let toml = r#"
            [[devices]]
            id = "a"
            interval = "1s"
            points = []
            colour = "red"
        "#;
        let err = parse::<Top>(toml, Path::new("x.toml")).unwrap_err();
        let p = &err.problems()[0];
        assert!(p.path.starts_with("devices[0]"), "{err}");
        assert!(p.message.contains("colour"), "{err}");
    }

    #[test]
    fn bad_duration_is_named_by_its_path() {
        let toml = r#"
            [[devices]]
            id = "a"
            interval = "soon"
            points = []
        "#;
        let err = parse::<Top>(toml, Path::new("x.toml")).unwrap_err();
        assert_eq!(err.problems()[0].path, "devices[0].interval", "{err}");
    }
}

/// A broker address from a URL: `mqtt://host:1883` (`tcp://` also accepted)
/// or, with TLS, `mqtts://host:8883` (`ssl://` also accepted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerUrl {
    pub host: String,
    pub port: u16,
    pub tls: bool,
}

impl std::str::FromStr for BrokerUrl {
    type Err = String;

    fn from_str(url: &str) -> Result<Self, Self::Err> {
        let (rest, tls) = if let Some(r) = url
            .strip_prefix("mqtt://")
            .or_else(|| url.strip_prefix("tcp://"))
        {
            (r, false)
        } else if let Some(r) = url
            .strip_prefix("mqtts://")
            .or_else(|| url.strip_prefix("ssl://"))
        {
            (r, true)
        } else {
            return Err(format!(
                "{url:?} is not an mqtt://host:port or mqtts://host:port URL"
            ));
        };
        let rest = rest.trim_end_matches('/');
        let (host, port) = match rest.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => {
                let port = p
                    .parse::<u16>()
                    .map_err(|_| format!("{url:?}: port {p:?} is not a number 1–65535"))?;
                (h, port)
            }
            _ => (rest, if tls { 8883 } else { 1883 }),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() || host.contains('/') {
            return Err(format!("{url:?} has no host"));
        }
        if port == 0 {
            return Err(format!("{url:?}: port 0 is not a broker port"));
        }
        Ok(BrokerUrl {
            host: host.to_owned(),
            port,
            tls,
        })
    }
}

#[cfg(test)]
mod url_tests {
    use super::BrokerUrl;

    #[test]
    fn broker_urls_default_to_port_1883() {
        let u: BrokerUrl = "mqtt://broker.local".parse().unwrap();
        assert_eq!((u.host.as_str(), u.port), ("broker.local", 1883));
        let u: BrokerUrl = "tcp://127.0.0.1:18830".parse().unwrap();
        assert_eq!((u.host.as_str(), u.port), ("127.0.0.1", 18830));
        let u: BrokerUrl = "mqtt://[::1]:1884".parse().unwrap();
        assert_eq!((u.host.as_str(), u.port), ("::1", 1884));
    }

    #[test]
    fn tls_urls_default_to_port_8883() {
        let u: BrokerUrl = "mqtts://broker.local".parse().unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.tls),
            ("broker.local", 8883, true)
        );
        let u: BrokerUrl = "ssl://10.0.0.1:8884".parse().unwrap();
        assert_eq!((u.port, u.tls), (8884, true));
        assert!(!"mqtt://x".parse::<BrokerUrl>().unwrap().tls);
    }

    #[test]
    fn other_schemes_and_bad_ports_are_refused() {
        assert!("http://x".parse::<BrokerUrl>().is_err());
        assert!("mqtts://x:99999".parse::<BrokerUrl>().is_err());
        assert!("mqtt://x:99999".parse::<BrokerUrl>().is_err());
        assert!("mqtt://:1883".parse::<BrokerUrl>().is_err());
    }
}
