//! `edge.toml`: what the daemon captures, how it keeps it, where it listens; and the part of it
//! the hub sets for a fleet ([`fleet`]).
//!
//! Every field is documented in the edge's `edge.example.toml` (printed by `tapwatch-edge config
//! example`; a test there keeps it equal to the defaults and complete). Unknown fields are
//! refused, and [`Config::load`] reports every problem it finds at once, each naming its field.
//! A crate of its own so that the hub checks a configuration it sends with the same code the edge
//! checks it with.

pub mod fleet;
pub mod update;

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

/// Flows one shard of the flow table holds (heapless maps hold at most 65,536).
pub const FLOWS_PER_SHARD: usize = 1 << 16;
/// Shards of the flow table when the configuration names no size.
pub const FLOW_SHARDS: usize = 2;
/// Flows one shard holds at most: 7/8 of its slots (57,344), where its hash index stays quick.
pub const FLOWS_HELD_PER_SHARD: usize = firmware::flow::FlowTable::<FLOWS_PER_SHARD>::HIGH_WATER;
/// Flows the edge tracks at once by default (`flows.max_flows`).
pub const DEFAULT_MAX_FLOWS: usize = FLOWS_HELD_PER_SHARD * FLOW_SHARDS;
/// The most `flows.max_flows` may be: 14.7 million flows, about 5 GiB.
pub const LIMIT_MAX_FLOWS: usize = FLOWS_HELD_PER_SHARD * 256;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub device: DeviceConfig,
    /// Interfaces to capture on; `[[interface]]` tables.
    #[serde(default, rename = "interface")]
    pub interfaces: Vec<InterfaceConfig>,
    #[serde(default)]
    pub flows: FlowsConfig,
    #[serde(default)]
    pub store: StoreConfig,
    #[serde(default)]
    pub stats: StatsConfig,
    #[serde(default)]
    pub http: HttpConfig,
    #[serde(default)]
    pub sync: SyncConfig,
    #[serde(default)]
    pub detect: DetectConfig,
    #[serde(default)]
    pub update: UpdateConfig,
}

/// `[update]`: signed updates of the edge's own program ([`update`]), from a file
/// (`tapwatch-edge update install`) into a standby slot, kept only once the new program reports
/// healthy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UpdateConfig {
    /// The release key's public half (base64; `tapwatch-edge update keygen` prints it). Empty:
    /// every update is refused.
    pub public_key: String,
    /// The new program must be ready, capturing on every interface and connected to the broker
    /// (when sync is on) within this many seconds of its start, or the slot before it comes back.
    pub health_deadline_s: u32,
    /// A bundle over this many MiB is refused.
    pub max_bundle_mb: u32,
}

impl Default for UpdateConfig {
    fn default() -> Self {
        UpdateConfig { public_key: String::new(), health_deadline_s: 120, max_bundle_mb: 256 }
    }
}

/// `[detect]`: the window detectors (scans, sweeps, floods, ARP and DHCP abuse) and anomaly
/// episodes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DetectConfig {
    pub enabled: bool,
    /// An episode with no trip for this long ends.
    pub quiet_s: u32,
    /// An open episode is reported again at most this often.
    pub update_s: u32,
    pub thresholds: firmware::detect::Thresholds,
    pub models: ModelsConfig,
    /// Anomalies not to report: `[[detect.suppress]]` with any of host, net (CIDR), port, kind.
    pub suppress: Vec<SuppressRule>,
}

/// `[detect.models]`: the ONNX models (made by `models/train.py`) run on every finished flow.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelsConfig {
    /// The autoencoder's file (anomaly score); empty: none.
    pub autoencoder: String,
    /// The classifier's file (attack kind); empty: none.
    pub classifier: String,
    /// Flows run through the models together.
    pub batch: u32,
    /// Verdicts of one kind for one source, within the host window, before it is an anomaly.
    pub min_flows: u32,
    /// Kinds that need another count than `min_flows` (brute force is many attempts: a
    /// person's few requests to one server look, one by one, like single attempts).
    pub min_flows_per_kind: BTreeMap<firmware::proto::AnomalyKind, u32>,
    /// How often the files are checked for a change, seconds (a changed file is loaded again;
    /// one that fails to load is refused and the model running keeps running).
    pub reload_check_s: u32,
}

impl Default for ModelsConfig {
    fn default() -> Self {
        ModelsConfig {
            autoencoder: String::new(),
            classifier: String::new(),
            batch: 64,
            min_flows: 3,
            min_flows_per_kind: BTreeMap::from([(firmware::proto::AnomalyKind::BruteForce, 6)]),
            reload_check_s: 2,
        }
    }
}

impl Default for DetectConfig {
    fn default() -> Self {
        DetectConfig {
            enabled: true,
            quiet_s: 30,
            update_s: 10,
            thresholds: firmware::detect::Thresholds::default(),
            models: ModelsConfig::default(),
            suppress: vec![SuppressRule {
                name: "monitoring-scanner".into(),
                host: None,
                net: Some("192.0.2.0/28".into()),
                port: None,
                kind: Some(firmware::proto::AnomalyKind::PortScan),
            }],
        }
    }
}

/// One suppression: an anomaly matching every field given is counted, not reported.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SuppressRule {
    pub name: String,
    /// The source address.
    pub host: Option<IpAddr>,
    /// The source network, CIDR.
    pub net: Option<String>,
    /// The destination port (of the flows a model judged; window anomalies have none).
    pub port: Option<u16>,
    pub kind: Option<firmware::proto::AnomalyKind>,
}

impl SuppressRule {
    /// Whether the rule covers an anomaly of `kind` from `src` to `port` (net must have been
    /// checked).
    pub fn covers(
        &self,
        src: IpAddr,
        kind: firmware::proto::AnomalyKind,
        port: Option<u16>,
    ) -> bool {
        self.host.is_none_or(|h| h == src)
            && self.port.is_none_or(|p| Some(p) == port)
            && self.kind.is_none_or(|k| k == kind)
            && self
                .net
                .as_deref()
                .is_none_or(|n| n.parse::<ipnet::IpNet>().is_ok_and(|n| n.contains(&src)))
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceConfig {
    /// This tap's id: 1-64 of `A-Z a-z 0-9 _ . -`; it is the device level of its MQTT topics.
    pub id: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InterfaceConfig {
    /// Interface name as the system knows it (`ip link`).
    pub name: String,
    /// Bytes captured of each packet.
    #[serde(default = "default_snaplen")]
    pub snaplen: u32,
    /// Kernel capture buffer, MiB.
    #[serde(default = "default_buffer_mb")]
    pub buffer_mb: u32,
    #[serde(default = "yes")]
    pub promiscuous: bool,
    /// Hand each packet over as it arrives rather than when a kernel buffer block fills or
    /// 100 ms pass. Off by default: at high rates a wake-up per packet costs more CPU than the
    /// pipeline (measured: 300k pps without drops off, kernel drops from 170k pps on).
    #[serde(default)]
    pub immediate: bool,
    /// Packets the queue from capture to the pipeline holds; when full, packets are dropped and
    /// counted (`tapwatch_queue_drops_total`), capture never waits.
    #[serde(default = "default_queue_packets")]
    pub queue_packets: usize,
    /// Keep one packet in N of those the rules let through (1 keeps all).
    #[serde(default = "one")]
    pub sample: u32,
    /// Capture rules, `[[interface.rule]]` tables.
    #[serde(default, rename = "rule")]
    pub rules: Vec<RuleConfig>,
}

/// Include or exclude.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    #[default]
    Include,
    Exclude,
}

/// Which side of a packet a preset matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    #[default]
    Any,
    Src,
    Dst,
}

/// Protocols a preset can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    Tcp,
    Udp,
    Icmp,
    Icmp6,
    Arp,
    Ip,
    Ip6,
}

/// One named capture rule: BPF text, or presets that compile to BPF.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    pub name: String,
    #[serde(default)]
    pub action: Action,
    /// A BPF expression (tcpdump syntax); not together with the presets below.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bpf: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<IpAddr>,
    /// A network in CIDR form, `10.0.0.0/8`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub net: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<Protocol>,
    /// Side `host`, `net` and `port` match on.
    #[serde(default)]
    pub direction: Direction,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FlowsConfig {
    pub tcp_idle_timeout_s: u32,
    pub idle_timeout_s: u32,
    /// At most an hour (`firmware::flow::MAX_ACTIVE_TIMEOUT`).
    pub active_timeout_s: u32,
    pub closed_linger_s: u32,
    /// Length of a host window (scan, sweep and flood counters).
    pub host_window_s: u32,
    /// Flows tracked at once (rounded up to whole shards of 65,536). A full table ends its
    /// oldest flow to make room (counted). Memory: about 0.3 KiB a flow (284 bytes of table),
    /// taken as flows come.
    /// Read at start; a reload keeps the table it has.
    pub max_flows: u64,
}

impl Default for FlowsConfig {
    fn default() -> Self {
        FlowsConfig {
            tcp_idle_timeout_s: 300,
            idle_timeout_s: 60,
            active_timeout_s: 300,
            closed_linger_s: 2,
            host_window_s: 10,
            max_flows: DEFAULT_MAX_FLOWS as u64,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// The SQLite database.
    pub path: PathBuf,
    /// Size the database is kept under, MiB; the oldest rows go first, each counted.
    pub max_size_mb: u64,
    /// Rows older than this go, each counted.
    pub max_age_hours: u64,
    /// Packets kept per interface in the rolling evidence ring.
    pub evidence_ring_packets: u64,
    /// Evidence packets kept per anomaly episode at most (the first ones); the rest of its
    /// packets stay ring packets, counted in tapwatch_store_evidence_over_budget_packets_total.
    pub evidence_max_packets: u64,
    /// Rows written per transaction at most.
    pub batch_rows: usize,
    /// A batch is written at least this often.
    pub flush_interval_ms: u64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            path: PathBuf::from("/var/lib/tapwatch/edge.db"),
            max_size_mb: 1024,
            max_age_hours: 168,
            evidence_ring_packets: 10_000,
            evidence_max_packets: 10_000,
            batch_rows: 2_000,
            flush_interval_ms: 1_000,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StatsConfig {
    /// Length of a traffic-statistics interval.
    pub interval_s: u32,
    /// Ports and talkers kept per interval.
    pub top_n: usize,
}

impl Default for StatsConfig {
    fn default() -> Self {
        StatsConfig { interval_s: 60, top_n: 10 }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Address of `/metrics`, `/healthz` and the local admin endpoints. Keep it on loopback or a
    /// management network: the admin endpoints change capture rules.
    pub listen: SocketAddr,
    /// File holding the token the admin endpoints (`/admin/...`) want as `Authorization:
    /// Bearer` (its first line, 16 characters at least); empty: the admin endpoints are off.
    pub admin_token_file: PathBuf,
    /// Host names the admin endpoints answer to (the `Host` header, without its port), beside
    /// `localhost`, `127.0.0.1`, `::1` and the listen address: a page that rebinds its own
    /// name to this address is refused.
    pub allowed_hosts: Vec<String>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 9187)),
            admin_token_file: PathBuf::new(),
            allowed_hosts: Vec::new(),
        }
    }
}

impl HttpConfig {
    /// The admin token from `admin_token_file`; `None` when the file is not set.
    pub fn admin_token(&self) -> Result<Option<String>, String> {
        if self.admin_token_file.as_os_str().is_empty() {
            return Ok(None);
        }
        let text = std::fs::read_to_string(&self.admin_token_file).map_err(|e| {
            format!("http.admin_token_file {}: {e}", self.admin_token_file.display())
        })?;
        let token = text.lines().next().unwrap_or_default().trim().to_string();
        if token.len() < 16 {
            return Err(format!(
                "http.admin_token_file {}: the token must be 16 characters or more",
                self.admin_token_file.display()
            ));
        }
        Ok(Some(token))
    }
}

/// `[sync]`: the MQTT link to the hub. What the daemon records is queued in the store's outbox
/// and a message leaves the outbox only when the hub has confirmed it committed (its retained
/// `ack` topic), or, with `confirm = "broker"`, when the broker has acknowledged it (QoS 1).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SyncConfig {
    /// Queue and send records to the hub.
    pub enabled: bool,
    /// The broker, `host:port`.
    pub broker: String,
    /// MQTT client id; empty means the device id.
    pub client_id: String,
    /// Broker user name; empty means none.
    pub username: String,
    /// File holding the broker password (its first line); empty means none.
    pub password_file: PathBuf,
    /// Connect with TLS, trusting the certificates in `ca_file` (PEM).
    pub tls: bool,
    pub ca_file: PathBuf,
    /// Client certificate and key (PEM) for brokers that want one; empty means none.
    pub client_cert_file: PathBuf,
    pub client_key_file: PathBuf,
    /// Put before `tapwatch/v1/...` in every topic (a test or a tenant of a shared broker).
    pub topic_prefix: String,
    /// MQTT keep-alive, seconds.
    pub keepalive_s: u32,
    /// Messages sent and not yet acknowledged, at most.
    pub inflight: u16,
    /// Who releases a message from the outbox: the hub, once it has committed it (`hub`), or
    /// the broker's PUBACK alone (`broker`, for a consumer other than the hub; a broker that
    /// restarts may then lose what it had acknowledged).
    pub confirm: Confirm,
    /// Messages the broker has acknowledged and the hub not yet confirmed, at most; the rest
    /// wait in the outbox (the edge's disk, not the broker, holds the backlog).
    pub unconfirmed_max: u32,
    /// A message the hub has not confirmed this many seconds after its PUBACK is sent again;
    /// the wait doubles with each try of it, up to 16 times.
    pub resend_after_s: u32,
    /// Messages the outbox keeps at most while the hub cannot be reached; past it the oldest
    /// are dropped, each counted in tapwatch_sync_dropped_total.
    pub outbox_max_messages: u64,
    /// How often the host and pipeline metrics are queued for the hub.
    pub metrics_interval_s: u32,
    /// Evidence sent to the hub per anomaly episode at most, MiB; the rest stays in the store
    /// (`export-pcap`) and is counted in tapwatch_sync_evidence_unsent_packets_total.
    pub evidence_max_mb: u32,
    /// Wait before reconnecting: from the first, doubling to the second, milliseconds.
    pub reconnect_min_ms: u64,
    pub reconnect_max_ms: u64,
    /// The hub's public key for its configurations (base64, `tapwatch-hub fleet-key`): only
    /// configurations it signed are taken. Empty: unsigned ones are taken too (where the broker
    /// lets only the hub publish them).
    pub config_public_key: String,
}

impl Default for SyncConfig {
    fn default() -> Self {
        SyncConfig {
            enabled: false,
            broker: "127.0.0.1:1883".into(),
            client_id: String::new(),
            username: String::new(),
            password_file: PathBuf::new(),
            tls: false,
            ca_file: PathBuf::new(),
            client_cert_file: PathBuf::new(),
            client_key_file: PathBuf::new(),
            topic_prefix: String::new(),
            keepalive_s: 30,
            inflight: 64,
            confirm: Confirm::Hub,
            unconfirmed_max: 2048,
            resend_after_s: 30,
            outbox_max_messages: 1_000_000,
            evidence_max_mb: 4,
            metrics_interval_s: 30,
            reconnect_min_ms: 500,
            reconnect_max_ms: 30_000,
            config_public_key: String::new(),
        }
    }
}

/// Who releases a message from the edge's outbox (`sync.confirm`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Confirm {
    Hub,
    Broker,
}

impl SyncConfig {
    /// Host and port of `broker`.
    pub fn broker_addr(&self) -> Result<(String, u16), String> {
        firmware::proto::split_host_port(&self.broker)
            .map(|(h, p)| (h.to_string(), p))
            .ok_or_else(|| format!("sync.broker {:?}: must be host:port", self.broker))
    }
}

pub fn default_snaplen() -> u32 {
    262_144
}
pub fn default_buffer_mb() -> u32 {
    64
}
pub fn default_queue_packets() -> usize {
    65_536
}
pub fn yes() -> bool {
    true
}
pub fn one() -> u32 {
    1
}

/// Problems found in a configuration, every one of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub source: String,
    pub problems: Vec<String>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: ", self.source)?;
        if self.problems.len() == 1 {
            return f.write_str(&self.problems[0]);
        }
        writeln!(f, "{} problems", self.problems.len())?;
        for p in &self.problems {
            writeln!(f, "  - {p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Settings for offline analysis: defaults, no interfaces, the store at `db` if given.
    pub fn offline(db: Option<&Path>) -> Config {
        Config {
            device: DeviceConfig { id: "offline".into() },
            interfaces: Vec::new(),
            flows: FlowsConfig::default(),
            store: StoreConfig {
                path: db.map(Path::to_path_buf).unwrap_or_else(|| StoreConfig::default().path),
                ..StoreConfig::default()
            },
            stats: StatsConfig::default(),
            http: HttpConfig::default(),
            sync: SyncConfig::default(),
            detect: DetectConfig::default(),
            update: UpdateConfig::default(),
        }
    }

    /// Read, parse and check a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let source = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            source: source.clone(),
            problems: vec![format!("cannot read: {e}")],
        })?;
        Self::parse(&text, &source)
    }

    /// Parse and check configuration text; `source` names it in errors.
    pub fn parse(text: &str, source: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError {
            source: source.into(),
            problems: vec![e.to_string().trim_end().replace('\n', "\n    ")],
        })?;
        let problems = config.check();
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError { source: source.into(), problems })
        }
    }

    /// Every problem with the values (the shape was checked by parsing).
    pub fn check(&self) -> Vec<String> {
        let mut p = Vec::new();
        if let Err(e) = self.http.admin_token() {
            p.push(e);
        }
        if !firmware::proto::valid_device_id(&self.device.id) {
            p.push(format!(
                "device.id {:?}: must be 1-64 characters of A-Z a-z 0-9 _ . -",
                self.device.id
            ));
        }
        let mut names = std::collections::HashSet::new();
        for (i, iface) in self.interfaces.iter().enumerate() {
            let at = format!("interface[{i}] ({})", iface.name);
            if iface.name.is_empty() {
                p.push(format!("interface[{i}].name: must not be empty"));
            }
            if !names.insert(iface.name.clone()) {
                p.push(format!("{at}: the interface is listed twice"));
            }
            if !(64..=262_144).contains(&iface.snaplen) {
                p.push(format!("{at}.snaplen {}: must be 64 to 262144", iface.snaplen));
            }
            if iface.buffer_mb == 0 || iface.buffer_mb > 4096 {
                p.push(format!("{at}.buffer_mb {}: must be 1 to 4096", iface.buffer_mb));
            }
            if iface.queue_packets < 1024 {
                p.push(format!(
                    "{at}.queue_packets {}: must be at least 1024",
                    iface.queue_packets
                ));
            }
            if iface.sample == 0 {
                p.push(format!("{at}.sample: must be at least 1 (1 keeps every packet)"));
            }
            let mut rule_names = std::collections::HashSet::new();
            for (j, rule) in iface.rules.iter().enumerate() {
                let at = format!("{at}.rule[{j}] ({:?})", rule.name);
                if rule.name.is_empty() {
                    p.push(format!("{at}.name: must not be empty"));
                }
                if !rule_names.insert(rule.name.clone()) {
                    p.push(format!("{at}: another rule of this interface has the same name"));
                }
                match rule.to_bpf() {
                    Ok(bpf) => {
                        if let Err(e) = validate_bpf(&bpf) {
                            p.push(format!("{at}: BPF {bpf:?} does not compile: {e}"));
                        }
                    }
                    Err(e) => p.push(format!("{at}: {e}")),
                }
            }
        }
        let f = &self.flows;
        for (name, v) in [
            ("flows.tcp_idle_timeout_s", f.tcp_idle_timeout_s),
            ("flows.idle_timeout_s", f.idle_timeout_s),
            ("flows.active_timeout_s", f.active_timeout_s),
            ("flows.host_window_s", f.host_window_s),
        ] {
            if v == 0 {
                p.push(format!("{name}: must be at least 1"));
            }
        }
        // A threshold of NaN never trips (the detector is silently off) and a negative one
        // always does; TOML accepts both ("nan", "-inf").
        if let Ok(serde_json::Value::Object(t)) = serde_json::to_value(self.detect.thresholds) {
            for (name, v) in t {
                if !v.as_f64().is_some_and(|x| x.is_finite() && x >= 0.0) {
                    p.push(format!(
                        "detect.thresholds.{name}: must be a finite number, 0 or more (is {v})"
                    ));
                }
            }
        }
        let most = firmware::flow::MAX_ACTIVE_TIMEOUT.secs();
        if u64::from(f.active_timeout_s) > most {
            p.push(format!(
                "flows.active_timeout_s {}: must be at most {most} (a flow's times are 32-bit \
                 microseconds from its start)",
                f.active_timeout_s
            ));
        }
        if f.max_flows == 0 || f.max_flows > LIMIT_MAX_FLOWS as u64 {
            p.push(format!(
                "flows.max_flows {}: must be between 1 and {}",
                f.max_flows, LIMIT_MAX_FLOWS
            ));
        }
        let s = &self.store;
        if s.max_size_mb < 8 {
            p.push(format!("store.max_size_mb {}: must be at least 8", s.max_size_mb));
        }
        if s.max_age_hours == 0 {
            p.push("store.max_age_hours: must be at least 1".into());
        }
        if s.batch_rows == 0 {
            p.push("store.batch_rows: must be at least 1".into());
        }
        if s.flush_interval_ms == 0 {
            p.push("store.flush_interval_ms: must be at least 1".into());
        }
        if self.stats.interval_s == 0 {
            p.push("stats.interval_s: must be at least 1".into());
        }
        if !(1..=10).contains(&self.stats.top_n) {
            p.push(format!("stats.top_n {}: must be 1 to 10", self.stats.top_n));
        }
        let y = &self.sync;
        if y.enabled {
            if let Err(e) = y.broker_addr() {
                p.push(e);
            }
            if y.tls && y.ca_file.as_os_str().is_empty() {
                p.push("sync.ca_file: needed when sync.tls is true".into());
            }
            if y.client_cert_file.as_os_str().is_empty() != y.client_key_file.as_os_str().is_empty()
            {
                p.push("sync.client_cert_file and sync.client_key_file go together".into());
            }
            if !y.topic_prefix.is_empty()
                && (y.topic_prefix.contains(['+', '#']) || !y.topic_prefix.ends_with('/'))
            {
                p.push(format!(
                    "sync.topic_prefix {:?}: must end with / and hold no + or #",
                    y.topic_prefix
                ));
            }
            if !y.client_id.is_empty() && !firmware::proto::valid_device_id(&y.client_id) {
                p.push(format!(
                    "sync.client_id {:?}: must be 1-64 characters of A-Z a-z 0-9 _ . -",
                    y.client_id
                ));
            }
        }
        if !y.config_public_key.is_empty()
            && fleet::verify(&y.config_public_key, "", 0, "", "")
                .is_err_and(|e| e.contains("public key"))
        {
            p.push(
                "sync.config_public_key: not 32 bytes of base64 (tapwatch-hub fleet-key prints it)"
                    .into(),
            );
        }
        let u = &self.update;
        if !u.public_key.is_empty()
            && fleet::verify(&u.public_key, "", 0, "", "").is_err_and(|e| e.contains("public key"))
        {
            p.push(
                "update.public_key: not 32 bytes of base64 (tapwatch-edge update keygen prints it)"
                    .into(),
            );
        }
        if !(5..=3600).contains(&u.health_deadline_s) {
            p.push(format!("update.health_deadline_s {}: must be 5 to 3600", u.health_deadline_s));
        }
        if !(1..=4096).contains(&u.max_bundle_mb) {
            p.push(format!("update.max_bundle_mb {}: must be 1 to 4096", u.max_bundle_mb));
        }
        if y.keepalive_s < 5 {
            p.push(format!("sync.keepalive_s {}: must be at least 5", y.keepalive_s));
        }
        if y.inflight == 0 || y.inflight > 1024 {
            p.push(format!("sync.inflight {}: must be 1 to 1024", y.inflight));
        }
        if !(16..=1_000_000).contains(&y.unconfirmed_max) {
            p.push(format!("sync.unconfirmed_max {}: must be 16 to 1000000", y.unconfirmed_max));
        }
        if !(1..=86_400).contains(&y.resend_after_s) {
            p.push(format!("sync.resend_after_s {}: must be 1 to 86400", y.resend_after_s));
        }
        if y.outbox_max_messages < 1000 {
            p.push(format!(
                "sync.outbox_max_messages {}: must be at least 1000",
                y.outbox_max_messages
            ));
        }
        let d = &self.detect;
        if d.quiet_s == 0 || d.update_s == 0 {
            p.push("detect.quiet_s and detect.update_s: at least 1".into());
        }
        for (i, r) in d.suppress.iter().enumerate() {
            let at = format!("detect.suppress[{i}] ({:?})", r.name);
            if let Some(n) = &r.net {
                if n.parse::<ipnet::IpNet>().is_err() {
                    p.push(format!("{at}.net {n:?}: not a network in CIDR form (10.0.0.0/8)"));
                }
            }
            if r.host.is_none() && r.net.is_none() && r.port.is_none() && r.kind.is_none() {
                p.push(format!("{at}: give at least one of host, net, port, kind"));
            }
        }
        let m = &d.models;
        if !(1..=4096).contains(&m.batch) {
            p.push(format!("detect.models.batch {}: must be 1 to 4096", m.batch));
        }
        if m.min_flows == 0 {
            p.push("detect.models.min_flows: must be at least 1".into());
        }
        for (kind, n) in &m.min_flows_per_kind {
            if *n == 0 {
                // The kind as the file spells it (snake_case).
                let name = serde_json::to_value(kind).unwrap_or_default();
                let name = name.as_str().unwrap_or_default();
                p.push(format!("detect.models.min_flows_per_kind.{name}: must be at least 1"));
            }
        }
        if m.reload_check_s == 0 {
            p.push("detect.models.reload_check_s: must be at least 1".into());
        }
        if y.metrics_interval_s == 0 {
            p.push("sync.metrics_interval_s: must be at least 1".into());
        }
        if y.reconnect_min_ms == 0 || y.reconnect_max_ms < y.reconnect_min_ms {
            p.push(
                "sync.reconnect_min_ms must be at least 1 and at most sync.reconnect_max_ms".into(),
            );
        }
        p
    }

    /// The engine settings these flow settings make.
    pub fn engine(&self) -> firmware::engine::EngineConfig {
        use firmware::Duration;
        let f = &self.flows;
        firmware::engine::EngineConfig {
            flow: firmware::flow::FlowConfig {
                tcp_idle_timeout: Duration::from_secs(f.tcp_idle_timeout_s.into()),
                idle_timeout: Duration::from_secs(f.idle_timeout_s.into()),
                active_timeout: Duration::from_secs(f.active_timeout_s.into()),
                closed_linger: Duration::from_secs(f.closed_linger_s.into()),
                max_flows: (f.max_flows as usize).clamp(1, LIMIT_MAX_FLOWS),
            },
            hosts: firmware::hosts::HostConfig {
                window: Duration::from_secs(f.host_window_s.into()),
            },
            sweep_interval: Duration::from_secs(1),
        }
    }
}

impl RuleConfig {
    /// The rule as one BPF expression.
    pub fn to_bpf(&self) -> Result<String, String> {
        let presets = self.host.is_some()
            || self.net.is_some()
            || self.port.is_some()
            || self.protocol.is_some();
        match (&self.bpf, presets) {
            (Some(_), true) => {
                return Err(
                    "give either bpf or presets (host, net, port, protocol), not both".into()
                )
            }
            (None, false) => {
                return Err("says nothing to match: give bpf, or host, net, port or protocol".into())
            }
            (Some(b), false) => {
                if b.trim().is_empty() {
                    return Err("bpf must not be empty".into());
                }
                return Ok(b.trim().to_string());
            }
            (None, true) => {}
        }
        let dir = match self.direction {
            Direction::Any => "",
            Direction::Src => "src ",
            Direction::Dst => "dst ",
        };
        let mut parts = Vec::new();
        if let Some(p) = self.protocol {
            parts.push(
                match p {
                    Protocol::Tcp => "tcp",
                    Protocol::Udp => "udp",
                    Protocol::Icmp => "icmp",
                    Protocol::Icmp6 => "icmp6",
                    Protocol::Arp => "arp",
                    Protocol::Ip => "ip",
                    Protocol::Ip6 => "ip6",
                }
                .to_string(),
            );
        }
        if let Some(h) = self.host {
            parts.push(format!("{dir}host {h}"));
        }
        if let Some(n) = &self.net {
            let (addr, len) = n
                .split_once('/')
                .ok_or_else(|| format!("net {n:?}: expected CIDR form, as 10.0.0.0/8"))?;
            let addr: IpAddr =
                addr.parse().map_err(|_| format!("net {n:?}: {addr:?} is not an address"))?;
            let max = if addr.is_ipv4() { 32 } else { 128 };
            match len.parse::<u8>() {
                Ok(l) if l <= max => parts.push(format!("{dir}net {addr}/{l}")),
                _ => return Err(format!("net {n:?}: prefix length must be 0 to {max}")),
            }
        }
        if let Some(port) = self.port {
            parts.push(format!("{dir}port {port}"));
        }
        Ok(parts.join(" and "))
    }
}

/// Compile a BPF expression for Ethernet to see that it is valid.
pub fn validate_bpf(bpf: &str) -> Result<(), String> {
    let cap = pcap::Capture::dead(pcap::Linktype::ETHERNET).map_err(|e| e.to_string())?;
    cap.compile(bpf, true).map(|_| ()).map_err(|e| e.to_string())
}

/// One interface's rules as one filter: the include rules OR'ed (everything when there are none),
/// then each exclude rule AND NOT'ed. `None` captures everything.
pub fn interface_filter(rules: &[RuleConfig]) -> Result<Option<String>, String> {
    let mut inc = Vec::new();
    let mut exc = Vec::new();
    for r in rules {
        let b = r.to_bpf().map_err(|e| format!("rule {:?}: {e}", r.name))?;
        match r.action {
            Action::Include => inc.push(format!("({b})")),
            Action::Exclude => exc.push(format!("not ({b})")),
        }
    }
    let mut parts = Vec::new();
    if !inc.is_empty() {
        parts.push(format!("({})", inc.join(" or ")));
    }
    parts.extend(exc);
    Ok(if parts.is_empty() { None } else { Some(parts.join(" and ")) })
}
