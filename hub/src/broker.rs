//! The embedded MQTT broker (rumqttd), for a single machine that runs no broker of its own.
//!
//! Two listeners: MQTT 3.1.1 for the edges (`broker.listen`) and MQTT 5 for the hub's ingest
//! (`broker.listen_v5`, which `mqtt.broker` then points at). rumqttd keeps its log in memory:
//! while the hub process runs, an ingest that reconnects resumes its persistent session, but a
//! crash of the process loses what the broker had acknowledged to the edges and the ingest had
//! not committed yet. Where that matters, run Mosquitto (with persistence and
//! `max_queued_messages 0`) and set `broker.embedded = false`.
//!
//! Everyone who connects is authenticated: an edge by its device credential (user name and
//! client id both its device id, the password made by `tapwatch-hub device add`, checked against
//! its SHA-256 in `devices.mqtt_secret_hash`), the hub's ingest by a password made for this
//! process. rumqttd 0.20 has no topic authorisation, so an edge with a valid credential could
//! still publish under another device's topics here: per-device isolation needs Mosquitto with
//! its dynamic-security plugin (crate::provision).

use crate::config::BrokerConfig;
use sha2::Digest as _;
use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// The user name of the hub's own ingest on the embedded broker's MQTT 5 listener.
pub const INGEST_USER: &str = "tapwatch-hub-ingest";

/// The device credentials the embedded broker accepts: device id -> SHA-256 of its password,
/// read from PostgreSQL at start and every few seconds after (a device added while the hub runs
/// may connect within that).
#[derive(Debug, Clone, Default)]
pub struct Credentials {
    devices: Arc<RwLock<HashMap<String, Vec<u8>>>>,
}

impl Credentials {
    /// Whether an edge may connect: its client id is its user name, a device with a password.
    pub fn check(&self, client_id: &str, user: &str, password: &str) -> bool {
        if client_id != user {
            return false;
        }
        let sent = sha2::Sha256::digest(password.as_bytes());
        self.devices.read().is_ok_and(|d| {
            d.get(user)
                .is_some_and(|h| bool::from(subtle::ConstantTimeEq::ct_eq(&h[..], &sent[..])))
        })
    }

    /// Read the credentials again; how many devices have one.
    pub async fn refresh(
        &self,
        db: &tokio_postgres::Client,
    ) -> Result<usize, tokio_postgres::Error> {
        let rows = db
            .query(
                "SELECT id, mqtt_secret_hash FROM devices WHERE mqtt_secret_hash IS NOT NULL",
                &[],
            )
            .await?;
        let map: HashMap<String, Vec<u8>> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
        let n = map.len();
        if let Ok(mut d) = self.devices.write() {
            *d = map;
        }
        Ok(n)
    }

    /// Keep them current from `url`, every two seconds, on the running runtime.
    pub fn watch(&self, url: String, tls: crate::db::PgTls) {
        let me = self.clone();
        tokio::spawn(async move {
            let mut db: Option<tokio_postgres::Client> = None;
            loop {
                if db.as_ref().is_none_or(|c| c.is_closed()) {
                    db = crate::db::connect_tls(&url, &tls).await.ok();
                }
                if let Some(c) = &db {
                    if let Err(e) = me.refresh(c).await {
                        tracing::warn!("embedded broker: cannot read device credentials: {e}");
                        db = None;
                    }
                }
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        });
    }
}

/// The rumqttd configuration for our two listeners.
fn rumqttd_config(cfg: &BrokerConfig) -> Result<rumqttd::Config, String> {
    let server = |name: &str, listen: SocketAddr| {
        format!(
            "name = \"{name}\"\nlisten = \"{listen}\"\nnext_connection_delay_ms = 1\n\
             [{name}.connections]\nconnection_timeout_ms = 60000\nmax_payload_size = 1048576\n\
             max_inflight_count = 1024\ndynamic_filters = true\n"
        )
    };
    let text = format!(
        "id = 0\n[router]\nmax_connections = {conns}\nmax_outgoing_packet_count = 1024\n\
         max_segment_size = {seg}\nmax_segment_count = {count}\n\
         [v4.edges]\n{v4}[v5.hubs]\n{v5}",
        conns = cfg.max_connections,
        seg = cfg.segment_mb * 1024 * 1024,
        count = cfg.segments,
        v4 = server("v4.edges", cfg.listen),
        v5 = server("v5.hubs", cfg.listen_v5),
    );
    toml::from_str(&text).map_err(|e| format!("internal: embedded broker configuration: {e}"))
}

/// The configuration with its authentication: edges by `credentials`, the ingest by
/// ([`INGEST_USER`], `ingest_password`).
fn with_auth(
    mut config: rumqttd::Config,
    credentials: Credentials,
    ingest_password: &str,
) -> rumqttd::Config {
    for server in config.v4.iter_mut().flat_map(|m| m.values_mut()) {
        let c = credentials.clone();
        server.set_auth_handler(move |client_id: String, user: String, password: String| {
            let ok = c.check(&client_id, &user, &password);
            async move { ok }
        });
    }
    for server in config.v5.iter_mut().flat_map(|m| m.values_mut()) {
        server.connections.auth =
            Some(HashMap::from([(INGEST_USER.to_string(), ingest_password.to_string())]));
    }
    config
}

/// Start the broker on threads of its own. Fails at once, naming the address, when a listener's
/// port is taken (another broker runs there).
pub fn start(
    cfg: &BrokerConfig,
    credentials: Credentials,
    ingest_password: &str,
) -> Result<(), String> {
    for (what, addr) in [("broker.listen", cfg.listen), ("broker.listen_v5", cfg.listen_v5)] {
        TcpListener::bind(addr).map_err(|e| {
            format!(
                "{what} {addr}: {e} (another broker there? use it with broker.embedded = false \
                 and mqtt.broker)"
            )
        })?;
    }
    let config = with_auth(rumqttd_config(cfg)?, credentials, ingest_password);
    let mut broker = rumqttd::Broker::new(config);
    std::thread::Builder::new()
        .name("broker".into())
        .spawn(move || {
            if let Err(e) = broker.start() {
                tracing::error!("embedded broker stopped: {e}");
            }
        })
        .map_err(|e| format!("cannot start the embedded broker: {e}"))?;
    // Ready when the hub's listener answers.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while std::net::TcpStream::connect(cfg.listen_v5).is_err() {
        if std::time::Instant::now() > deadline {
            return Err(format!("embedded broker: nothing listens on {}", cfg.listen_v5));
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    tracing::info!(edges = %cfg.listen, hub = %cfg.listen_v5, "embedded broker running");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_configuration_parses() {
        let c = rumqttd_config(&BrokerConfig::default()).unwrap();
        assert_eq!(c.v4.unwrap().values().next().unwrap().connections.max_payload_size, 1 << 20);
        assert!(c.v5.is_some());
    }

    #[test]
    fn test_edges_need_their_device_credential() {
        let creds = Credentials::default();
        let hash = sha2::Sha256::digest(b"right password").to_vec();
        creds.devices.write().unwrap().insert("tap-1".into(), hash);
        assert!(creds.check("tap-1", "tap-1", "right password"));
        assert!(!creds.check("tap-1", "tap-1", "wrong password"));
        assert!(!creds.check("tap-1", "tap-1", ""));
        assert!(!creds.check("tap-2", "tap-1", "right password"), "another client id");
        assert!(!creds.check("tap-2", "tap-2", "right password"), "another device");
        let c = with_auth(rumqttd_config(&BrokerConfig::default()).unwrap(), creds, "pw");
        let v5 = c.v5.unwrap();
        let auth = v5.values().next().unwrap().connections.auth.clone().unwrap();
        assert_eq!(auth.get(INGEST_USER).map(String::as_str), Some("pw"));
        assert!(c.v4.unwrap().values().all(|s| s.connections.external_auth.is_some()));
    }
}
