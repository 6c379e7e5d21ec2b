//! How a RoomGuard process reaches its MQTT broker: plain or TLS (rustls on
//! the ring provider), a client certificate, a user name and password.
//! Shared by the agent and the collector, so both read `[mqtt.security]` the
//! same way.

use crate::conf::{BrokerUrl, Problems, Secret};
use rumqttc::{MqttOptions, TlsConfiguration, Transport};
use serde::{Deserialize, Serialize};
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// `[mqtt.security]`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Security {
    /// PEM file of the CA(s) that signed the broker's certificate; needed
    /// for `mqtts://`.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// This client's certificate chain and key (PEM), for brokers that ask
    /// for one (Mosquitto `require_certificate`).
    #[serde(default)]
    pub client_cert: Option<PathBuf>,
    #[serde(default)]
    pub client_key: Option<PathBuf>,
    #[serde(default)]
    pub username: Option<String>,
    /// `{ env = "…" }` or `{ file = "…" }`.
    #[serde(default)]
    pub password: Option<Secret>,
}

impl Security {
    /// Every problem, under `at` (e.g. `mqtt.security`).
    pub fn check(&self, url: &BrokerUrl, at: &str, p: &mut Problems) {
        if url.tls && self.ca_file.is_none() {
            p.push(
                format!("{at}.ca_file"),
                "mqtts:// needs the CA file that signed the broker's certificate",
            );
        }
        if !url.tls && (self.ca_file.is_some() || self.client_cert.is_some()) {
            p.push(at, "certificates are given but the URL is not mqtts://");
        }
        if self.client_cert.is_some() != self.client_key.is_some() {
            p.push(at, "client_cert and client_key go together");
        }
        if self.password.is_some() && self.username.is_none() {
            p.push(format!("{at}.password"), "a password needs a username");
        }
        if let Some(Err(e)) = self.password.as_ref().map(Secret::resolve) {
            p.push(format!("{at}.password"), e);
        }
        if url.tls {
            if let Err(e) = self.tls_config() {
                p.push(at, e);
            }
        }
    }

    /// Sets TLS and credentials on `opts`.
    pub fn apply(&self, url: &BrokerUrl, opts: &mut MqttOptions) -> Result<(), String> {
        if url.tls {
            let config = self.tls_config()?;
            opts.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
                Arc::new(config),
            )));
        }
        if let Some(user) = &self.username {
            let password = match &self.password {
                Some(s) => s.resolve()?.unwrap_or_default(),
                None => String::new(),
            };
            opts.set_credentials(user.clone(), password);
        }
        Ok(())
    }

    fn tls_config(&self) -> Result<rustls::ClientConfig, String> {
        let ca = self.ca_file.as_deref().ok_or("mqtts:// needs ca_file")?;
        let mut roots = rustls::RootCertStore::empty();
        for cert in certs(ca)? {
            roots
                .add(cert)
                .map_err(|e| format!("{}: {e}", ca.display()))?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots);
        match (&self.client_cert, &self.client_key) {
            (Some(cert), Some(key)) => {
                let chain = certs(cert)?;
                let key = rustls_pemfile::private_key(&mut BufReader::new(open(key)?))
                    .map_err(|e| format!("{}: {e}", key.display()))?
                    .ok_or_else(|| format!("{}: no private key in it", key.display()))?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| format!("client certificate: {e}"))
            }
            _ => Ok(builder.with_no_client_auth()),
        }
    }
}

fn open(path: &Path) -> Result<std::fs::File, String> {
    std::fs::File::open(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

fn certs(path: &Path) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, String> {
    let list = rustls_pemfile::certs(&mut BufReader::new(open(path)?))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if list.is_empty() {
        return Err(format!("{}: no PEM certificate in it", path.display()));
    }
    Ok(list)
}
