//! The edge-to-hub contract: versioned messages, one per MQTT stream.
//!
//! Topics are `tapwatch/v1/{device}/{stream}` ([`topic`]). Every payload is a JSON object that
//! starts with the same [`Header`]: `schema` (this contract's version, [`SCHEMA_VERSION`]),
//! `device`, `seq` (monotonic per device and stream; the hub deduplicates on the triple) and `ts`
//! (Unix microseconds at the edge). The types use `heapless` containers, so an MCU build encodes
//! them without a heap (`serde-json-core`); the daemon and the hub use `serde_json`.
//!
//! A JSON Schema of each message is generated from these types (`--features schema`) into
//! `firmware/schema/`; a test fails when the files are stale.

use crate::flow::EndReason;
use core::fmt::Write as _;
use core::net::IpAddr;
use heapless::{String, Vec};

/// Version of this contract, in every payload's `schema` field and the topic's `v1`.
pub const SCHEMA_VERSION: u16 = 1;
/// Longest device id.
pub const DEVICE_ID_MAX: usize = 64;
/// Flows per batch message.
pub const FLOW_BATCH_MAX: usize = 32;
/// Features per flow the contract can carry.
pub const FEATURES_MAX: usize = 128;
/// Bytes of pcap file in one evidence message at most (before base64: a message stays well
/// under the hub's 256 KiB payload limit).
pub const EVIDENCE_PCAP_MAX: usize = 128 * 1024;

/// A device id: `[A-Za-z0-9_.-]`, 1 to 64 characters (it is a topic level).
pub type DeviceId = String<DEVICE_ID_MAX>;
/// Short names (model, detector, interface, version).
pub type Name = String<32>;

/// The streams an edge publishes, the last level of the topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case"))]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub enum Stream {
    Anomalies,
    Flows,
    Stats,
    Metrics,
    Analyses,
    Status,
    Evidence,
    /// `config/applied`: what became of a configuration the hub sent ([`ConfigAppliedMsg`]).
    ConfigApplied,
    /// `commands/result`: what became of a command the hub sent ([`CommandResultMsg`]).
    CommandResult,
}

impl Stream {
    /// How many streams there are.
    pub const COUNT: usize = 9;
    pub const ALL: [Stream; Stream::COUNT] = [
        Stream::Anomalies,
        Stream::Flows,
        Stream::Stats,
        Stream::Metrics,
        Stream::Analyses,
        Stream::Status,
        Stream::Evidence,
        Stream::ConfigApplied,
        Stream::CommandResult,
    ];
    pub const fn name(self) -> &'static str {
        match self {
            Stream::Anomalies => "anomalies",
            Stream::Flows => "flows",
            Stream::Stats => "stats",
            Stream::Metrics => "metrics",
            Stream::Analyses => "analyses",
            Stream::Status => "status",
            Stream::Evidence => "evidence",
            Stream::ConfigApplied => "config/applied",
            Stream::CommandResult => "commands/result",
        }
    }
    pub fn from_name(name: &str) -> Option<Stream> {
        Stream::ALL.into_iter().find(|s| s.name() == name)
    }
    /// Whether the stream's seqs come from the edge's outbox: 1, 2, 3, ... with none skipped
    /// unless the edge lost them, so the hub can confirm them ([`AckMsg`]). `status` is not: its
    /// seq is the edge's wall-clock millisecond.
    pub const fn confirmed(self) -> bool {
        !matches!(self, Stream::Status)
    }
}

/// The last topic level the hub confirms an edge's streams on ([`AckMsg`], retained).
pub const ACK_TOPIC_LEAF: &str = "ack";

/// The topic the hub confirms a device's streams on; `None` if the device id is not valid.
pub fn ack_topic(device: &str) -> Option<String<128>> {
    if !valid_device_id(device) {
        return None;
    }
    let mut t = String::new();
    write!(t, "tapwatch/v1/{}/{}", device, ACK_TOPIC_LEAF).ok()?;
    Some(t)
}

/// Whether a string may be a device id (and so a topic level).
pub fn valid_device_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= DEVICE_ID_MAX
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

/// The topic a device publishes a stream on; `None` if the device id is not valid.
pub fn topic(device: &str, stream: Stream) -> Option<String<128>> {
    if !valid_device_id(device) {
        return None;
    }
    let mut t = String::new();
    write!(t, "tapwatch/v1/{}/{}", device, stream.name()).ok()?;
    Some(t)
}

/// The last topic level the hub sends a device its configuration on ([`ConfigMsg`], retained).
pub const CONFIG_TOPIC_LEAF: &str = "config";

/// The topic the hub sends a device its configuration on; `None` if the device id is not valid.
pub fn config_topic(device: &str) -> Option<String<128>> {
    if !valid_device_id(device) {
        return None;
    }
    let mut t = String::new();
    write!(t, "tapwatch/v1/{}/{}", device, CONFIG_TOPIC_LEAF).ok()?;
    Some(t)
}

/// The last topic level the hub sends a device commands on ([`CommandMsg`], not retained).
pub const COMMANDS_TOPIC_LEAF: &str = "commands";

/// The topic the hub sends a device commands on; `None` if the device id is not valid.
pub fn commands_topic(device: &str) -> Option<String<128>> {
    if !valid_device_id(device) {
        return None;
    }
    let mut t = String::new();
    write!(t, "tapwatch/v1/{}/{}", device, COMMANDS_TOPIC_LEAF).ok()?;
    Some(t)
}

/// Split a topic into device and stream; `None` if it is not one of ours.
pub fn parse_topic(topic: &str) -> Option<(&str, Stream)> {
    let rest = topic.strip_prefix("tapwatch/v1/")?;
    let (device, stream) = rest.split_once('/')?;
    if !valid_device_id(device) {
        return None;
    }
    Some((device, Stream::from_name(stream)?))
}

/// A broker address `host:port` (IPv6 in brackets) as host and port; `None` unless both are
/// there and the port is 1-65535.
pub fn split_host_port(addr: &str) -> Option<(&str, u16)> {
    let (host, port) = addr.rsplit_once(':')?;
    let port: u16 = port.parse().ok().filter(|p| *p != 0)?;
    let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    (!host.is_empty()).then_some((host, port))
}

/// The fields every message starts with (`schema`, `device`, `seq`, `ts`), as a view.
///
/// They are written out in each message rather than flattened from one struct: serde's `flatten`
/// needs a heap to deserialize, and the contract must build without one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header<'a> {
    pub schema: u16,
    pub device: &'a str,
    pub seq: u64,
    pub ts: i64,
}

/// A contract message: which stream it goes on, and its header.
pub trait Message {
    const STREAM: Stream;
    fn header(&self) -> Header<'_>;
    /// Stamp the header: this contract's version, the device (cut to 64 bytes), seq and ts.
    fn set_header(&mut self, device: &str, seq: u64, ts: i64);
}

/// Declares a contract message: its header fields first (the same in every message), then its
/// own, with the serde and schema derives, and its [`Message`] impl.
macro_rules! message {
    (
        $(#[$attr:meta])*
        pub struct $name:ident => $stream:ident {
            $($(#[$fattr:meta])* pub $field:ident: $ty:ty,)*
        }
    ) => {
        $(#[$attr])*
        #[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
        #[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
        pub struct $name {
            /// Contract version ([`SCHEMA_VERSION`]); the hub refuses versions it does not know.
            pub schema: u16,
            /// The publishing device; must match the topic's device level.
            #[cfg_attr(
                feature = "schema",
                schemars(
                    with = "std::string::String",
                    length(min = 1, max = 64),
                    regex(pattern = r"^[A-Za-z0-9_.-]+$")
                )
            )]
            pub device: DeviceId,
            /// Monotonic per device and stream, from 1.
            pub seq: u64,
            /// When the edge wrote the message, Unix microseconds.
            pub ts: i64,
            $($(#[$fattr])* pub $field: $ty,)*
        }

        impl Message for $name {
            const STREAM: Stream = Stream::$stream;
            fn header(&self) -> Header<'_> {
                Header { schema: self.schema, device: self.device.as_str(), seq: self.seq, ts: self.ts }
            }
            fn set_header(&mut self, device: &str, seq: u64, ts: i64) {
                self.schema = SCHEMA_VERSION;
                self.device.clear();
                let _ = self.device.push_str(device);
                self.seq = seq;
                self.ts = ts;
            }
        }
    };
}

/// One finished flow and its feature vector.
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct FlowMsg {
    /// The initiator.
    pub src_ip: IpAddr,
    pub src_port: u16,
    pub dst_ip: IpAddr,
    pub dst_port: u16,
    /// IP protocol number.
    pub protocol: u8,
    pub vlan: u16,
    /// First and last packet, Unix microseconds.
    pub start: i64,
    pub end: i64,
    pub end_reason: EndReason,
    /// Values in the order of models/features.json (version `feature_set` of the batch).
    #[cfg_attr(feature = "schema", schemars(with = "std::vec::Vec<f32>", length(max = 128)))]
    pub features: Vec<f32, FEATURES_MAX>,
}

impl FlowMsg {
    /// The message of a flow that ended, with its feature vector.
    pub fn of(f: &crate::engine::FinishedFlow) -> FlowMsg {
        let r = &f.record;
        let mut features = Vec::new();
        for v in f.features() {
            let _ = features.push(v);
        }
        FlowMsg {
            src_ip: r.src(),
            src_port: r.src_port(),
            dst_ip: r.dst(),
            dst_port: r.dst_port(),
            protocol: r.flow.protocol,
            vlan: r.vlan(),
            start: r.flow.start.total_micros(),
            end: r.flow.last().total_micros(),
            end_reason: r.reason,
            features,
        }
    }
}

message! {
    /// `flows` stream: finished flows in batches.
    #[derive(Debug, Clone, PartialEq)]
    pub struct FlowBatch => Flows {
        /// `version` of models/features.json the vectors follow.
        pub feature_set: u32,
        #[cfg_attr(feature = "schema", schemars(with = "std::vec::Vec<FlowMsg>", length(max = 32)))]
        pub flows: Vec<FlowMsg, FLOW_BATCH_MAX>,
    }
}

/// What kind of attack or anomaly was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case"))]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub enum AnomalyKind {
    PortScan,
    HostSweep,
    SynFlood,
    UdpFlood,
    IcmpFlood,
    Reflection,
    BruteForce,
    DnsTunnel,
    ArpSpoof,
    DhcpStarvation,
    /// Many accounts tried from one source, a few guesses each.
    PasswordSpray,
    /// A TLS heartbeat that reads the server's memory (CVE-2014-0160).
    Heartbleed,
    /// A service created on another host over SMB or DCE-RPC (PsExec, smbexec).
    LateralMovement,
    /// Probes crafted to tell a host's operating system from its answers (nmap -O, xprobe),
    /// to a few ports (to many, it is a scan).
    OsFingerprint,
    /// An attempt to exploit a known vulnerability, named by the counter that tripped: Zerologon
    /// (CVE-2020-1472), Netlogon authentications again and again until one gets through;
    /// URGENT/11 (VxWorks' IPnet), TCP segments with urgent data on a SYN or a malformed TCP-AO
    /// option.
    Exploit,
    /// Web requests (HTTP requests, TLS handshakes to 443) at a flood's rate, from one source
    /// or, named by its victim, from many.
    HttpFlood,
    /// Packets crafted so that the target and a monitor read them differently (an IDS
    /// evasion): IP fragments that overlap with other bytes, overrun the datagram or split the
    /// transport header, nested IPv6 fragment headers, header chains no stack sends; and IPv6
    /// options that carry a covert channel, a Packet Too Big below the minimum MTU.
    Evasion,
    /// A web request that carries an attack on the application: SQL injection, cross-site
    /// scripting, path traversal, a Log4Shell JNDI lookup.
    WebAttack,
    /// The autoencoder found the flow unlike benign traffic, and no named kind fits.
    AnomalousFlow,
}

/// How urgent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case"))]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub enum Severity {
    Low,
    Medium,
    High,
    Critical,
}

/// One thing that drove a detection: a feature and its value, or a window counter that tripped.
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Reason {
    #[cfg_attr(feature = "schema", schemars(with = "std::string::String", length(max = 32)))]
    pub feature: Name,
    pub value: f32,
    /// The feature's share of the score (autoencoder error) or the threshold it crossed.
    pub contribution: f32,
}

message! {
    /// `anomalies` stream: one anomaly episode (one source and kind while it lasts).
    #[derive(Debug, Clone, PartialEq)]
    pub struct AnomalyMsg => Anomalies {
        /// The edge's id of the episode; later messages with the same id update it.
        pub id: u64,
        pub kind: AnomalyKind,
        pub severity: Severity,
        /// 0 to 1.
        pub confidence: f32,
        pub score: f32,
        pub threshold: f32,
        #[cfg_attr(feature = "schema", schemars(with = "std::string::String", length(max = 32)))]
        pub detector: Name,
        pub src_ip: IpAddr,
        pub dst_ip: Option<IpAddr>,
        pub dst_port: Option<u16>,
        pub protocol: Option<u8>,
        /// Unix microseconds.
        pub first_seen: i64,
        pub last_seen: i64,
        /// Flows or packets the episode covers so far.
        pub count: u64,
        #[cfg_attr(feature = "schema", schemars(with = "std::vec::Vec<Reason>", length(max = 8)))]
        pub reasons: Vec<Reason, 8>,
    }
}

/// Packets and bytes of one port, or of one host.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct PortCount {
    pub protocol: u8,
    pub port: u16,
    pub packets: u64,
    pub bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct HostCount {
    pub ip: IpAddr,
    pub packets: u64,
    pub bytes: u64,
}

message! {
    /// `stats` stream: traffic over one interval.
    #[derive(Debug, Clone, PartialEq)]
    pub struct StatsMsg => Stats {
        /// Unix microseconds; the interval is [start, end).
        pub interval_start: i64,
        pub interval_end: i64,
        pub packets: u64,
        pub bytes: u64,
        pub tcp_packets: u64,
        pub udp_packets: u64,
        pub icmp_packets: u64,
        pub other_packets: u64,
        pub flows_started: u64,
        pub flows_ended: u64,
        pub parse_errors: u64,
        #[cfg_attr(feature = "schema", schemars(with = "std::vec::Vec<PortCount>", length(max = 10)))]
        pub top_ports: Vec<PortCount, 10>,
        #[cfg_attr(feature = "schema", schemars(with = "std::vec::Vec<HostCount>", length(max = 10)))]
        pub top_talkers: Vec<HostCount, 10>,
    }
}

/// Capture counters of one interface.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct CaptureCounters {
    #[cfg_attr(feature = "schema", schemars(with = "std::string::String", length(max = 32)))]
    pub interface: Name,
    pub packets: u64,
    pub bytes: u64,
    /// Dropped by the kernel (libpcap's ps_drop + ps_ifdrop).
    pub kernel_drops: u64,
    /// Dropped because the pipeline's queue was full.
    pub queue_drops: u64,
    pub parse_errors: u64,
}

/// The lowest seq of a stream an edge may still send ([`MetricsMsg::outbox`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct OutboxFloor {
    pub stream: Stream,
    pub floor: u64,
}

message! {
    /// `metrics` stream: the host and the pipeline.
    #[derive(Debug, Clone, PartialEq)]
    pub struct MetricsMsg => Metrics {
        /// 0 to 100, all cores.
        pub cpu_percent: f32,
        pub mem_used_bytes: u64,
        pub mem_total_bytes: u64,
        pub disk_used_bytes: u64,
        pub disk_total_bytes: u64,
        pub net_rx_bytes: u64,
        pub net_tx_bytes: u64,
        pub flows_active: u64,
        /// Records dropped by store retention or outbox limits since start.
        pub store_dropped: u64,
        /// Per stream, the lowest seq the edge's outbox still holds when this message was
        /// queued (the next seq if it holds none): the edge will never send a seq below it, so
        /// one the hub has not received is lost ([`AckMsg`]). Absent from older edges.
        #[cfg_attr(feature = "serde", serde(default))]
        #[cfg_attr(feature = "schema", schemars(with = "std::vec::Vec<OutboxFloor>", length(max = 8)))]
        pub outbox: Vec<OutboxFloor, 8>,
        #[cfg_attr(
            feature = "schema",
            schemars(with = "std::vec::Vec<CaptureCounters>", length(max = 8))
        )]
        pub capture: Vec<CaptureCounters, 8>,
    }
}

message! {
    /// `analyses` stream: one detection run over a batch of flows.
    #[derive(Debug, Clone, PartialEq)]
    pub struct AnalysisMsg => Analyses {
        #[cfg_attr(feature = "schema", schemars(with = "std::string::String", length(max = 32)))]
        pub model: Name,
        #[cfg_attr(feature = "schema", schemars(with = "std::string::String", length(max = 32)))]
        pub model_version: Name,
        pub rows: u32,
        pub score_min: f32,
        pub score_mean: f32,
        pub score_max: f32,
        pub threshold: f32,
        pub flagged: u32,
        pub latency_us: u64,
    }
}

/// Online or going away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case"))]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub enum DeviceState {
    Online,
    Offline,
}

message! {
    /// `status` stream (retained; the last will says `offline`).
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct StatusMsg => Status {
        pub state: DeviceState,
        #[cfg_attr(feature = "schema", schemars(with = "std::string::String", length(max = 32)))]
        pub version: Name,
        pub uptime_s: u64,
        /// The revision of the hub's configuration the edge runs (0: none from the hub).
        #[cfg_attr(feature = "serde", serde(default))]
        pub config_revision: u64,
        /// Its hash ([`ConfigMsg::hash`]); empty with revision 0.
        #[cfg_attr(feature = "serde", serde(default))]
        #[cfg_attr(feature = "schema", schemars(with = "std::string::String", length(max = 64)))]
        pub config_hash: ConfigHash,
    }
}

/// A configuration's hash: SHA-256, 64 lower-case hex digits.
pub type ConfigHash = String<64>;

/// What became of a configuration the hub sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case"))]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub enum ApplyResult {
    /// Checked and in force.
    Applied,
    /// Refused when checked (its error says why); the one before stays in force.
    Refused,
    /// Checked, but applying it failed (a filter the capture refused, ...); the one before
    /// stays in force.
    Failed,
}

/// The longest error text a [`ConfigAppliedMsg`] carries (cut at a character boundary).
pub const APPLY_ERROR_MAX: usize = 1024;

message! {
    /// `config/applied` stream: the edge's answer to a configuration the hub sent
    /// ([`ConfigMsg`]), as it checked and applied it.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct ConfigAppliedMsg => ConfigApplied {
        pub revision: u64,
        #[cfg_attr(feature = "schema", schemars(with = "std::string::String", length(max = 64)))]
        pub hash: ConfigHash,
        pub result: ApplyResult,
        /// Why it was refused or failed, each problem naming its field; notes when applied
        /// (parts that take effect after a restart); empty otherwise.
        #[cfg_attr(feature = "schema", schemars(with = "std::string::String", length(max = 1024)))]
        pub error: String<APPLY_ERROR_MAX>,
    }
}

/// What the hub may ask an edge to do at once ([`CommandMsg`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case"))]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub enum Command {
    /// Read `edge.toml` again and lay the hub's configuration over it (what SIGHUP does).
    Reload,
    /// Try the hub's configuration that failed to apply again now (the model the hub could not
    /// serve is there now), rather than at the next retry.
    RetryConfig,
}

message! {
    /// `commands/result` stream: the edge's answer to a command the hub sent ([`CommandMsg`]).
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct CommandResultMsg => CommandResult {
        /// The command's id, as the hub numbered it.
        pub id: u64,
        pub command: Command,
        /// `applied`: done; `refused`: not taken (its signature, its device, an old id);
        /// `failed`: taken, and it failed.
        pub result: ApplyResult,
        /// What it did, or why not.
        #[cfg_attr(feature = "schema", schemars(with = "std::string::String", length(max = 1024)))]
        pub detail: String<APPLY_ERROR_MAX>,
    }
}

/// `error` text cut to fit [`ConfigAppliedMsg::error`].
pub fn apply_error(text: &str) -> String<APPLY_ERROR_MAX> {
    let mut end = text.len().min(APPLY_ERROR_MAX);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let mut s = String::new();
    let _ = s.push_str(&text[..end]);
    s
}

/// `tapwatch/v1/{device}/config`, hub to edge, retained: the configuration the hub wants the
/// device to run, its global, group and device layers merged. Host-side only (the
/// configuration is a JSON object of the edge's configuration sections). `revision` grows with
/// each change for the device; `hash` is SHA-256 of `config` in canonical JSON (keys sorted, no
/// white space), which the edge checks before anything else.
#[cfg(feature = "std")]
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct ConfigMsg {
    /// Contract version ([`SCHEMA_VERSION`]).
    pub schema: u16,
    #[cfg_attr(
        feature = "schema",
        schemars(
            with = "std::string::String",
            length(min = 1, max = 64),
            regex(pattern = r"^[A-Za-z0-9_.-]+$")
        )
    )]
    pub device: DeviceId,
    /// When the hub wrote it, Unix microseconds.
    pub ts: i64,
    pub revision: u64,
    #[cfg_attr(feature = "schema", schemars(with = "std::string::String", length(max = 64)))]
    pub hash: ConfigHash,
    /// Sections of the edge's configuration: `capture` (by interface name, `*` for every
    /// interface: `rules`, `sample`), `detect`, `store`, `sync`, each holding only what the hub
    /// may set, and `models` (by slot, the SHA-256 of a model's file; `""` for none).
    pub config: serde_json::Map<std::string::String, serde_json::Value>,
    /// Where to fetch each model `config` names, with its signature.
    #[cfg_attr(feature = "serde", serde(default))]
    pub models: std::vec::Vec<ModelRef>,
    /// The update of the edge program `config` names (`update`), if any.
    #[cfg_attr(feature = "serde", serde(default, skip_serializing_if = "Option::is_none"))]
    pub update: Option<UpdateRef>,
    /// Ed25519 signature by the hub's key of `tapwatch-config-v1`, device, revision and hash
    /// (NUL between them), base64; empty when the hub has no key. An edge given the hub's
    /// public key takes only what it signed.
    #[cfg_attr(feature = "serde", serde(default))]
    pub signature: std::string::String,
}

/// `commands` (hub to edge, not retained): something for an edge to do at once. Host-side
/// only. `id` grows with each command the hub sends the device; an edge does each id once.
#[cfg(feature = "std")]
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct CommandMsg {
    /// Contract version ([`SCHEMA_VERSION`]).
    pub schema: u16,
    #[cfg_attr(
        feature = "schema",
        schemars(
            with = "std::string::String",
            length(min = 1, max = 64),
            regex(pattern = r"^[A-Za-z0-9_.-]+$")
        )
    )]
    pub device: DeviceId,
    /// When the hub sent it, Unix microseconds (an edge refuses one more than 10 minutes from
    /// its own clock: an old command replayed).
    pub ts: i64,
    pub id: u64,
    pub command: Command,
    /// Ed25519 signature by the hub's key of `tapwatch-command-v1`, device, id, command and
    /// ts (NUL between them), base64; empty when the hub has no key.
    #[cfg_attr(feature = "serde", serde(default))]
    pub signature: std::string::String,
}

/// A model a configuration names: where an edge fetches it and its fixture, and what it checks
/// of them before it runs the model.
#[cfg(feature = "std")]
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct ModelRef {
    /// The slot: `autoencoder` or `classifier`.
    pub kind: std::string::String,
    /// SHA-256 of the ONNX file, hex.
    #[cfg_attr(feature = "schema", schemars(length(min = 64, max = 64)))]
    pub sha256: std::string::String,
    /// SHA-256 of its fixture (JSON: rows and the outputs they must give), hex.
    #[cfg_attr(feature = "schema", schemars(length(min = 64, max = 64)))]
    pub fixture_sha256: std::string::String,
    /// Bytes of the ONNX file.
    pub size: u64,
    /// The model's name and version, from its metadata.
    pub name: std::string::String,
    pub version: std::string::String,
    /// HTTP(S) address of the file and of the fixture at the hub.
    #[cfg_attr(feature = "schema", schemars(length(max = 2048)))]
    pub url: std::string::String,
    #[cfg_attr(feature = "schema", schemars(length(max = 2048)))]
    pub fixture_url: std::string::String,
    /// Ed25519 signature by the hub's key of `tapwatch-model-v1`, kind, sha256,
    /// fixture_sha256, url and fixture_url (NUL between them), base64; empty when the hub has
    /// no key.
    #[cfg_attr(feature = "serde", serde(default))]
    pub signature: std::string::String,
}

/// An update of the edge program a configuration names: where an edge fetches the bundle.
/// The bundle carries its own signature, by the release key (`update.public_key`), which the
/// edge checks before it installs anything; the hub's `signature` covers the hash, version and
/// address, so that a message altered on the broker sends no edge elsewhere.
#[cfg(feature = "std")]
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct UpdateRef {
    /// SHA-256 of the bundle file, hex.
    #[cfg_attr(feature = "schema", schemars(length(min = 64, max = 64)))]
    pub sha256: std::string::String,
    /// The release's version, from its manifest.
    #[cfg_attr(feature = "schema", schemars(length(max = 32)))]
    pub version: std::string::String,
    /// Bytes of the bundle.
    pub size: u64,
    /// HTTP(S) address of the bundle at the hub.
    #[cfg_attr(feature = "schema", schemars(length(max = 2048)))]
    pub url: std::string::String,
    /// Ed25519 signature by the hub's key of `tapwatch-update-ref-v1`, sha256, version and url
    /// (NUL between them), base64; empty when the hub has no key.
    #[cfg_attr(feature = "serde", serde(default))]
    pub signature: std::string::String,
}

#[cfg(feature = "std")]
message! {
    /// `evidence` stream: packets an edge kept as evidence of an anomaly episode, as a pcap file.
    /// An episode's evidence may come in several parts (its packets as they were marked, split
    /// to fit [`EVIDENCE_PCAP_MAX`]); each part is a whole pcap file. Host-side only (it needs
    /// the heap).
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct EvidenceMsg => Evidence {
        /// The episode's id ([`AnomalyMsg::id`]).
        pub anomaly: u64,
        /// Packets in this part.
        pub packets: u32,
        /// The pcap file, base64 (standard alphabet, padded).
        #[cfg_attr(feature = "schema", schemars(length(max = 174764)))]
        pub pcap: std::string::String,
    }
}

/// Seqs `first..=last` of a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct SeqRange {
    pub first: u64,
    pub last: u64,
}

/// What the hub has committed of one of a device's streams.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct StreamAck {
    pub stream: Stream,
    /// Every seq from 1 to this one is committed in the hub's database (or was counted lost):
    /// the edge may delete them from its outbox.
    pub upto: u64,
    /// Seqs above `upto` the hub has not received although it has later ones, the lowest
    /// ranges first: the edge sends them again now rather than at its deadline.
    #[cfg_attr(feature = "schema", schemars(with = "std::vec::Vec<SeqRange>", length(max = 16)))]
    pub missing: Vec<SeqRange, 16>,
    /// Seqs the hub never received and the edge no longer held, counted once each.
    pub lost: u64,
}

/// `tapwatch/v1/{device}/ack`, hub to edge, retained: per stream, what the hub has committed.
/// The edge keeps a message in its outbox until an ack covers it; a broker's PUBACK only
/// paces the sending.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct AckMsg {
    /// Contract version ([`SCHEMA_VERSION`]).
    pub schema: u16,
    /// The device whose streams these are.
    #[cfg_attr(
        feature = "schema",
        schemars(
            with = "std::string::String",
            length(min = 1, max = 64),
            regex(pattern = r"^[A-Za-z0-9_.-]+$")
        )
    )]
    pub device: DeviceId,
    /// When the hub wrote it, Unix microseconds.
    pub ts: i64,
    #[cfg_attr(feature = "schema", schemars(with = "std::vec::Vec<StreamAck>", length(max = 8)))]
    pub streams: Vec<StreamAck, 8>,
}

/// The JSON Schema of each stream's message, by stream name, and of the hub's `ack`.
#[cfg(feature = "schema")]
pub fn json_schemas() -> std::vec::Vec<(&'static str, serde_json::Value)> {
    fn one<T: schemars::JsonSchema + Message>() -> (&'static str, serde_json::Value) {
        let mut schema = serde_json::to_value(schemars::schema_for!(T)).unwrap_or_default();
        schema["$id"] =
            format!("https://tapwatch.invalid/schema/v1/{}.json", T::STREAM.name()).into();
        (T::STREAM.name(), schema)
    }
    std::vec![
        one::<AnomalyMsg>(),
        one::<FlowBatch>(),
        one::<StatsMsg>(),
        one::<MetricsMsg>(),
        one::<AnalysisMsg>(),
        one::<StatusMsg>(),
        one::<EvidenceMsg>(),
        one::<ConfigAppliedMsg>(),
        one::<CommandResultMsg>(),
        (COMMANDS_TOPIC_LEAF, {
            let mut schema =
                serde_json::to_value(schemars::schema_for!(CommandMsg)).unwrap_or_default();
            schema["$id"] = "https://tapwatch.invalid/schema/v1/commands.json".into();
            schema
        }),
        (CONFIG_TOPIC_LEAF, {
            let mut schema =
                serde_json::to_value(schemars::schema_for!(ConfigMsg)).unwrap_or_default();
            schema["$id"] = "https://tapwatch.invalid/schema/v1/config.json".into();
            schema
        }),
        (ACK_TOPIC_LEAF, {
            let mut schema =
                serde_json::to_value(schemars::schema_for!(AckMsg)).unwrap_or_default();
            schema["$id"] = "https://tapwatch.invalid/schema/v1/ack.json".into();
            schema
        }),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_split_host_port() {
        assert_eq!(split_host_port("127.0.0.1:1883"), Some(("127.0.0.1", 1883)));
        assert_eq!(split_host_port("[::1]:8883"), Some(("::1", 8883)));
        assert_eq!(split_host_port("broker.lan:1"), Some(("broker.lan", 1)));
        for bad in ["nowhere", ":1883", "h:0", "h:70000", "h:x", ""] {
            assert_eq!(split_host_port(bad), None, "{bad}");
        }
    }

    /// The committed schemas in firmware/schema/ must be what the types generate. Run with
    /// `TAPWATCH_BLESS=1` to rewrite them after changing the contract.
    #[cfg(feature = "schema")]
    #[test]
    fn test_json_schema_is_current() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("schema");
        let bless = std::env::var_os("TAPWATCH_BLESS").is_some();
        for (name, schema) in json_schemas() {
            let path = dir.join(format!("{}.schema.json", name.replace('/', "_")));
            let text = serde_json::to_string_pretty(&schema).unwrap() + "\n";
            if bless {
                std::fs::create_dir_all(&dir).unwrap();
                std::fs::write(&path, &text).unwrap();
            }
            let committed = std::fs::read_to_string(&path).unwrap_or_default();
            assert!(
                committed == text,
                "{} is stale: run `TAPWATCH_BLESS=1 cargo test -p tapwatch-firmware --features schema` and commit it",
                path.display()
            );
        }
    }

    #[test]
    fn test_topics() {
        assert_eq!(topic("tap-01", Stream::Flows).unwrap().as_str(), "tapwatch/v1/tap-01/flows");
        assert!(topic("bad/id", Stream::Flows).is_none());
        assert!(topic("", Stream::Flows).is_none());
        assert!(topic("+", Stream::Flows).is_none());
        assert_eq!(
            parse_topic("tapwatch/v1/tap-01/anomalies"),
            Some(("tap-01", Stream::Anomalies))
        );
        assert_eq!(parse_topic("tapwatch/v1/tap-01/nope"), None);
        assert_eq!(parse_topic("tapwatch/v2/tap-01/flows"), None);
        assert_eq!(parse_topic("tapwatch/v1/a/b/flows"), None);
    }

    #[cfg(feature = "std")]
    #[test]
    fn test_roundtrip_json() {
        let mut reasons = Vec::new();
        reasons
            .push(Reason {
                feature: "host_dst_ports".try_into().unwrap(),
                value: 1000.0,
                contribution: 100.0,
            })
            .unwrap();
        let msg = AnomalyMsg {
            schema: SCHEMA_VERSION,
            device: "tap-01".try_into().unwrap(),
            seq: 7,
            ts: 1,
            id: 3,
            kind: AnomalyKind::PortScan,
            severity: Severity::High,
            confidence: 0.9,
            score: 1000.0,
            threshold: 100.0,
            detector: "window".try_into().unwrap(),
            src_ip: [10, 0, 0, 1].into(),
            dst_ip: None,
            dst_port: None,
            protocol: Some(6),
            first_seen: 1,
            last_seen: 2,
            count: 1000,
            reasons,
        };
        let json = serde_json::to_value(&msg).unwrap();
        assert_eq!(json["schema"], 1);
        assert_eq!(json["device"], "tap-01");
        assert_eq!(json["kind"], "port_scan");
        assert_eq!(json["src_ip"], "10.0.0.1");
        let back: AnomalyMsg = serde_json::from_value(json.clone()).unwrap();
        assert_eq!(back, msg);
        assert_eq!(back.header(), Header { schema: 1, device: "tap-01", seq: 7, ts: 1 });
        // A device id longer than the contract allows is refused, not truncated.
        let mut long = json;
        long["device"] = serde_json::Value::String("x".repeat(65));
        assert!(serde_json::from_value::<AnomalyMsg>(long).is_err());
    }
}
