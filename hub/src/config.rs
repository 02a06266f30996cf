//! `hub.toml`: the broker the hub reads, the database it writes, and how long it keeps rows.
//!
//! Every field is documented in `hub.example.toml` (`tapwatch-hub config example`; a test keeps
//! it equal to the defaults). Unknown fields are refused; [`Config::load`] names every problem.

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The commented default configuration.
pub const EXAMPLE: &str = include_str!("../hub.example.toml");

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub broker: BrokerConfig,
    pub mqtt: MqttConfig,
    pub postgres: PostgresConfig,
    pub ingest: IngestConfig,
    pub retention: RetentionConfig,
    pub http: HttpConfig,
    pub fleet: FleetConfig,
}

/// `[fleet]`: the edges' configuration the hub sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct FleetConfig {
    /// The key the hub signs each configuration it sends with (Ed25519; the file holds its
    /// 32-byte seed in base64, made on first use, readable by the hub alone); edges given its
    /// public key (`tapwatch-hub fleet-key`, `sync.config_public_key`) take only what it signed.
    /// Empty: configurations go unsigned.
    pub signing_key_file: PathBuf,
    /// The address edges fetch models from: this hub's HTTP API as they reach it
    /// (`https://hub.example:8443`). Empty: `http(s)://` and the address `http.listen` bound
    /// (set it when that is not how edges reach the hub).
    pub model_url: String,
    /// The release key's public half (base64, `tapwatch-edge update keygen`): an update bundle
    /// uploaded must be signed by it, as the edges will check. Empty: the hub checks a bundle's
    /// format and hashes only, and the edges refuse one not signed.
    pub update_public_key: String,
}

impl FleetConfig {
    /// The signing key, made (and its file written, mode 0600) if the file does not exist yet.
    pub fn signing_key(&self) -> Result<Option<ed25519_dalek::SigningKey>, String> {
        use base64::Engine as _;
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        let path = &self.signing_key_file;
        if path.as_os_str().is_empty() {
            return Ok(None);
        }
        let at =
            |e: &dyn std::fmt::Display| format!("fleet.signing_key_file {}: {e}", path.display());
        match std::fs::read_to_string(path) {
            Ok(text) => edge_config::fleet::signing_key(&text).map(Some).map_err(|e| at(&e)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut seed = [0u8; 32];
                rand::RngCore::fill_bytes(&mut rand::rng(), &mut seed);
                let text = base64::engine::general_purpose::STANDARD.encode(seed);
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(path)
                    .map_err(|e| at(&e))?;
                writeln!(f, "{text}").and_then(|()| f.sync_all()).map_err(|e| at(&e))?;
                let key = ed25519_dalek::SigningKey::from_bytes(&seed);
                tracing::info!(
                    public_key = %edge_config::fleet::public_key_text(&key),
                    "fleet: a new signing key; give its public key to the edges (sync.config_public_key)"
                );
                Ok(Some(key))
            }
            Err(e) => Err(at(&e)),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Address of the API, `/metrics` and `/healthz` (port 0: any free port, logged at start).
    pub listen: std::net::SocketAddr,
    /// A browser session lasts this long after login, hours.
    pub session_hours: u32,
    /// Mark the session cookie Secure (set it when the hub is reached over HTTPS).
    pub cookie_secure: bool,
    /// Login attempts allowed per minute for one user name from one client address (five times
    /// as many from one address whatever the names); more get 429.
    pub login_per_minute: u32,
    /// Login attempts allowed per minute from everyone together (each costs a password hash).
    pub login_global_per_minute: u32,
    /// Reverse proxies whose `X-Forwarded-For` names the client (addresses or networks); from
    /// anyone else the header is ignored.
    pub trusted_proxies: Vec<cidr::IpCidr>,
    /// PostgreSQL connections the API uses at most.
    pub db_connections: usize,
    /// The dashboard's built files (hub/web/dist), served at `/`; empty: none.
    pub web_root: PathBuf,
    /// Serve HTTPS with this certificate chain and key (PEM), read again on SIGHUP; empty:
    /// plain HTTP (behind a TLS proxy).
    pub tls_cert_file: PathBuf,
    pub tls_key_file: PathBuf,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: std::net::SocketAddr::from(([127, 0, 0, 1], 8080)),
            session_hours: 12,
            cookie_secure: false,
            login_per_minute: 10,
            login_global_per_minute: 600,
            trusted_proxies: Vec::new(),
            db_connections: 8,
            web_root: PathBuf::from("/usr/share/tapwatch/web"),
            tls_cert_file: PathBuf::new(),
            tls_key_file: PathBuf::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BrokerConfig {
    /// Run an MQTT broker inside the hub (rumqttd): the single-machine setup. Its log is in
    /// memory; see crate::broker for what that means on a crash.
    pub embedded: bool,
    /// Where edges connect (MQTT 3.1.1).
    pub listen: std::net::SocketAddr,
    /// Where the hub's ingest connects (MQTT 5); `mqtt.broker` is set to it.
    pub listen_v5: std::net::SocketAddr,
    pub max_connections: usize,
    /// The broker's in-memory log per topic: segments of this many MiB, this many kept.
    pub segment_mb: usize,
    pub segments: usize,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            embedded: false,
            listen: std::net::SocketAddr::from(([127, 0, 0, 1], 1883)),
            listen_v5: std::net::SocketAddr::from(([127, 0, 0, 1], 1884)),
            max_connections: 10_000,
            segment_mb: 16,
            segments: 4,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MqttConfig {
    /// The broker, `host:port`.
    pub broker: String,
    /// This hub's MQTT client id: unique per hub process (the broker keeps its session).
    pub client_id: String,
    /// Broker user name; empty means none.
    pub username: String,
    /// File holding the broker password (its first line); empty means none.
    pub password_file: PathBuf,
    /// The password itself, set in memory (the embedded broker's credential for the ingest);
    /// wins over `password_file`. Never read from or written to a file.
    #[serde(skip)]
    pub password: Option<String>,
    /// The broker's dynamic-security admin (Mosquitto's plugin), for `tapwatch-hub device add`
    /// and `broker init` to give each device, and the hub, an identity and its authorisation;
    /// empty: they only register devices.
    pub admin_username: String,
    /// File holding that admin's password (its first line).
    pub admin_password_file: PathBuf,
    /// Connect to the broker over TLS, trusting `ca_file`; with `client_cert_file` and
    /// `client_key_file` (PEM), present that certificate.
    pub tls: bool,
    pub ca_file: PathBuf,
    pub client_cert_file: PathBuf,
    pub client_key_file: PathBuf,
    /// Empty (the default): one hub, on a plain subscription, which the broker keeps with the
    /// hub's session across its own restarts (Mosquitto persists it). A group name: hubs in
    /// one shared-subscription group (`$share/<group>/...`) share the edges' messages; Mosquitto
    /// 2.0 does not keep a shared subscription over its restart, so messages that reach it
    /// before the hubs subscribe again are lost to them.
    pub share_group: String,
    /// Put before `tapwatch/v1/...` in the topics read (as the edges' `sync.topic_prefix`).
    pub topic_prefix: String,
    pub keepalive_s: u32,
    /// How long the broker keeps this hub's session (and queues its messages) while it is away.
    pub session_expiry_s: u32,
    /// Messages the broker may send before the hub has acknowledged them.
    pub receive_maximum: u16,
}

impl MqttConfig {
    /// The topic filter the hub subscribes to: every device's streams.
    pub fn subscription(&self) -> String {
        let topics = format!("{}tapwatch/v1/#", self.topic_prefix);
        if self.share_group.is_empty() {
            topics
        } else {
            format!("$share/{}/{topics}", self.share_group)
        }
    }
}

impl Default for MqttConfig {
    fn default() -> Self {
        MqttConfig {
            broker: "127.0.0.1:1883".into(),
            client_id: "tapwatch-hub-1".into(),
            username: String::new(),
            password_file: PathBuf::new(),
            password: None,
            admin_username: String::new(),
            admin_password_file: PathBuf::new(),
            tls: false,
            ca_file: PathBuf::new(),
            client_cert_file: PathBuf::new(),
            client_key_file: PathBuf::new(),
            share_group: String::new(),
            topic_prefix: String::new(),
            keepalive_s: 30,
            session_expiry_s: 7 * 24 * 3600,
            receive_maximum: 1024,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PostgresConfig {
    /// libpq-style connection string (`host=... user=... dbname=...`) or a postgresql:// URL.
    pub url: String,
    /// CA certificate(s) (PEM) to trust for TLS to PostgreSQL; set, the hub speaks TLS where
    /// the server offers it, and `sslmode=require` in `url` makes it refuse a server that does
    /// not. Empty: plain connections.
    pub ca_file: PathBuf,
}

impl Default for PostgresConfig {
    fn default() -> Self {
        PostgresConfig {
            url: "host=127.0.0.1 user=postgres dbname=tapwatch".into(),
            ca_file: PathBuf::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IngestConfig {
    /// Messages committed in one transaction at most.
    pub batch_messages: usize,
    /// A batch is committed at most this long after its first message, milliseconds.
    pub batch_ms: u64,
    /// Take messages from devices the hub does not know, registering them; when false they are
    /// refused (reason unknown_device) until `tapwatch-hub device add`.
    pub auto_register_devices: bool,
    /// Evidence one anomaly episode may hold at the hub, MiB; parts beyond it are refused (dead
    /// letter, reason evidence_limit).
    pub evidence_max_mb: u64,
}

impl Default for IngestConfig {
    fn default() -> Self {
        IngestConfig {
            batch_messages: 512,
            batch_ms: 50,
            auto_register_devices: false,
            evidence_max_mb: 32,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetentionConfig {
    /// Day partitions older than this are dropped (and anomalies last seen before it).
    pub max_age_days: u32,
    /// The oldest day partitions are dropped while the tables are larger than this, MiB.
    pub max_size_mb: u64,
    /// How often retention runs, seconds.
    pub interval_s: u32,
    /// Dead letters kept at most, MiB (payloads and reasons): the oldest go first, counted. The
    /// ingest trims as it writes them, so a device sending refused messages cannot fill the disk
    /// between two retention runs.
    pub dead_letters_max_mb: u64,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        RetentionConfig {
            max_age_days: 30,
            max_size_mb: 10 * 1024,
            interval_s: 300,
            dead_letters_max_mb: 64,
        }
    }
}

/// The first line of a secret's file (`what` names the setting in an error).
pub fn read_first_line(path: &Path, what: &str) -> Result<String, String> {
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("{what} {}: {e}", path.display()))?;
    Ok(text.lines().next().unwrap_or_default().to_string())
}

impl MqttConfig {
    /// The client options for `client_id` at the broker: its address, the credentials (`login`,
    /// else the in-memory password, else `username` and `password_file`) and TLS.
    pub fn options(
        &self,
        client_id: &str,
        login: Option<(&str, String)>,
    ) -> Result<rumqttc::v5::MqttOptions, String> {
        let (host, port) = self.broker_addr()?;
        let mut o = rumqttc::v5::MqttOptions::new(client_id, host, port);
        match (login, &self.password) {
            (Some((user, password)), _) => {
                o.set_credentials(user, password);
            }
            (None, Some(password)) => {
                o.set_credentials(self.username.clone(), password.clone());
            }
            (None, None)
                if !self.username.is_empty() || !self.password_file.as_os_str().is_empty() =>
            {
                let password = if self.password_file.as_os_str().is_empty() {
                    String::new()
                } else {
                    read_first_line(&self.password_file, "mqtt.password_file")?
                };
                o.set_credentials(self.username.clone(), password);
            }
            (None, None) => {}
        }
        if self.tls {
            let read = |p: &Path, what: &str| {
                std::fs::read(p).map_err(|e| format!("mqtt.{what} {}: {e}", p.display()))
            };
            let ca = read(&self.ca_file, "ca_file")?;
            let client_auth = if self.client_cert_file.as_os_str().is_empty() {
                None
            } else {
                Some((
                    read(&self.client_cert_file, "client_cert_file")?,
                    read(&self.client_key_file, "client_key_file")?,
                ))
            };
            // One process-wide crypto provider for rustls (ring); a second install is harmless.
            let _ = rustls::crypto::ring::default_provider().install_default();
            o.set_transport(rumqttc::Transport::tls(ca, client_auth, None));
        }
        Ok(o)
    }

    pub fn broker_addr(&self) -> Result<(String, u16), String> {
        firmware::proto::split_host_port(&self.broker)
            .map(|(h, p)| (h.to_string(), p))
            .ok_or_else(|| format!("mqtt.broker {:?}: must be host:port", self.broker))
    }
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    pub fn parse(text: &str) -> Result<Config, String> {
        let c: Config = toml::from_str(text).map_err(|e| e.to_string().trim_end().to_string())?;
        let p = c.check();
        if p.is_empty() {
            Ok(c)
        } else {
            Err(p.join("; "))
        }
    }

    pub fn check(&self) -> Vec<String> {
        let mut p = Vec::new();
        let b = &self.broker;
        if b.embedded && b.listen == b.listen_v5 {
            p.push("broker.listen and broker.listen_v5 must differ".into());
        }
        if b.segment_mb == 0 || b.segments == 0 || b.max_connections == 0 {
            p.push(
                "broker.segment_mb, broker.segments and broker.max_connections: at least 1".into(),
            );
        }
        let k = &self.fleet.update_public_key;
        if !k.is_empty()
            && edge_config::update::read(&[][..], Some(k), None, None)
                .is_err_and(|e| e.to_string().contains("update.public_key"))
        {
            p.push("fleet.update_public_key: not 32 bytes of base64 (tapwatch-edge update keygen prints it)".into());
        }
        let m = &self.mqtt;
        if let Err(e) = m.broker_addr() {
            p.push(e);
        }
        if m.client_id.is_empty() {
            p.push("mqtt.client_id: must not be empty".into());
        }
        if m.share_group.contains(['/', '+', '#']) {
            p.push(format!("mqtt.share_group {:?}: one topic level, no + or #", m.share_group));
        }
        if !m.topic_prefix.is_empty()
            && (m.topic_prefix.contains(['+', '#']) || !m.topic_prefix.ends_with('/'))
        {
            p.push(format!(
                "mqtt.topic_prefix {:?}: must end with / and hold no + or #",
                m.topic_prefix
            ));
        }
        if m.keepalive_s < 5 {
            p.push("mqtt.keepalive_s: must be at least 5".into());
        }
        if m.receive_maximum == 0 {
            p.push("mqtt.receive_maximum: must be at least 1".into());
        }
        if self.ingest.batch_messages == 0 {
            p.push("ingest.batch_messages: must be at least 1".into());
        }
        if self.retention.max_age_days == 0 {
            p.push("retention.max_age_days: must be at least 1".into());
        }
        let h = &self.http;
        if h.session_hours == 0 || h.session_hours > 24 * 90 {
            p.push("http.session_hours: 1 to 2160".into());
        }
        if h.login_global_per_minute < h.login_per_minute {
            p.push("http.login_global_per_minute: must be at least http.login_per_minute".into());
        }
        if h.login_per_minute == 0 {
            p.push("http.login_per_minute: must be at least 1".into());
        }
        if h.db_connections == 0 {
            p.push("http.db_connections: must be at least 1".into());
        }
        if self.retention.interval_s == 0 {
            p.push("retention.interval_s: must be at least 1".into());
        }
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_example_is_the_defaults() {
        assert_eq!(Config::parse(EXAMPLE).unwrap(), Config::default());
        let written: toml::Table = toml::from_str(EXAMPLE).unwrap();
        let full: toml::Table =
            toml::from_str(&toml::to_string(&Config::default()).unwrap()).unwrap();
        for (section, v) in &full {
            let Some(t) = v.as_table() else { continue };
            for key in t.keys() {
                assert!(
                    written.get(section).and_then(|s| s.get(key)).is_some(),
                    "hub.example.toml must write out {section}.{key}"
                );
            }
        }
    }

    #[test]
    fn test_problems_are_named() {
        let e = Config::parse("[mqtt]\nbroker = \"nowhere\"\nshare_group = \"a/b\"\n").unwrap_err();
        assert!(e.contains("mqtt.broker"), "{e}");
        assert!(e.contains("mqtt.share_group"), "{e}");
        let e = Config::parse("[ingest]\nbatch = 3\n").unwrap_err();
        assert!(e.contains("unknown field `batch`"), "{e}");
    }
}
