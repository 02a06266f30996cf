//! Edge messages off the wire: topic and payload in, a typed message or a counted rejection out.
//!
//! Everything from the network is untrusted. A payload is checked in this order, and the first
//! failure is the [`Reject`] reason: the topic is one of ours; the payload is no larger than
//! [`MAX_PAYLOAD`]; it is JSON; its `schema` is a version we know; it has the shape of its stream's
//! message; the `device` inside matches the topic's; every time, count and float is in its range
//! ([`Reject::Range`] names the field). Nothing is partially accepted.
//!
//! The ranges matter as much as the shape: PostgreSQL's `bigint` holds what a `u64` holds only
//! up to 2^63-1 (a cast would store 2^64-1 as -1 and poison every sum), a time in the future
//! makes a day partition that age retention never reaches, and a confidence of 1e39 is stored as
//! Infinity.

use base64::Engine;
use firmware::proto::{
    parse_topic, AnalysisMsg, AnomalyMsg, CommandResultMsg, ConfigAppliedMsg, EvidenceMsg,
    FlowBatch, Header, Message, MetricsMsg, StatsMsg, StatusMsg, Stream, EVIDENCE_PCAP_MAX,
    SCHEMA_VERSION,
};

/// Largest payload accepted. A full flow batch (32 flows of 128 features) is about 60 KiB.
pub const MAX_PAYLOAD: usize = 256 * 1024;

/// A decoded message.
#[derive(Debug, Clone, PartialEq)]
pub enum Decoded {
    Anomaly(AnomalyMsg),
    /// Boxed: a batch is ~18 KiB inline (heapless), the others well under 1 KiB.
    Flows(Box<FlowBatch>),
    Stats(StatsMsg),
    Metrics(MetricsMsg),
    Analysis(AnalysisMsg),
    Status(StatusMsg),
    /// With the pcap file decoded from base64 (and checked whole).
    Evidence(Box<EvidenceMsg>, Vec<u8>),
    ConfigApplied(Box<ConfigAppliedMsg>),
    CommandResult(Box<CommandResultMsg>),
}

impl Decoded {
    pub fn header(&self) -> Header<'_> {
        match self {
            Decoded::Anomaly(m) => m.header(),
            Decoded::Flows(m) => m.header(),
            Decoded::Stats(m) => m.header(),
            Decoded::Metrics(m) => m.header(),
            Decoded::Analysis(m) => m.header(),
            Decoded::Status(m) => m.header(),
            Decoded::Evidence(m, _) => m.header(),
            Decoded::ConfigApplied(m) => m.header(),
            Decoded::CommandResult(m) => m.header(),
        }
    }
    pub fn stream(&self) -> Stream {
        match self {
            Decoded::Anomaly(_) => AnomalyMsg::STREAM,
            Decoded::Flows(_) => FlowBatch::STREAM,
            Decoded::Stats(_) => StatsMsg::STREAM,
            Decoded::Metrics(_) => MetricsMsg::STREAM,
            Decoded::Analysis(_) => AnalysisMsg::STREAM,
            Decoded::Status(_) => StatusMsg::STREAM,
            Decoded::Evidence(..) => EvidenceMsg::STREAM,
            Decoded::ConfigApplied(_) => ConfigAppliedMsg::STREAM,
            Decoded::CommandResult(_) => CommandResultMsg::STREAM,
        }
    }
}

/// Why a message was refused; each is counted by [`Reject::reason`] and the message kept in the
/// dead-letter table by the ingest.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Reject {
    #[error("topic {0:?} is not tapwatch/v1/<device>/<stream>")]
    Topic(String),
    #[error("payload of {0} bytes is over the {MAX_PAYLOAD}-byte limit")]
    Oversize(usize),
    #[error("payload is not JSON: {0}")]
    Malformed(String),
    #[error("schema version {0} is not one this hub reads (it reads {SCHEMA_VERSION})")]
    SchemaVersion(u64),
    #[error("payload does not have the shape of a {stream} message: {message}")]
    Shape { stream: &'static str, message: String },
    #[error("device {inside:?} in the payload does not match {topic:?} in the topic")]
    DeviceMismatch { topic: String, inside: String },
    #[error("{stream} message: {field} {message}")]
    Range { stream: &'static str, field: &'static str, message: String },
}

impl Reject {
    /// A stable label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Reject::Topic(_) => "topic",
            Reject::Oversize(_) => "oversize",
            Reject::Malformed(_) => "malformed_json",
            Reject::SchemaVersion(_) => "schema_version",
            Reject::Shape { .. } => "shape",
            Reject::DeviceMismatch { .. } => "device_mismatch",
            Reject::Range { .. } => "range",
        }
    }
}

fn shape<T: serde::de::DeserializeOwned>(
    stream: Stream,
    v: serde_json::Value,
) -> Result<T, Reject> {
    serde_json::from_value(v)
        .map_err(|e| Reject::Shape { stream: stream.name(), message: e.to_string() })
}

/// Decode one message received on `topic`, at `now_us` (Unix microseconds, the hub's clock: no
/// time in the message may be more than [`MAX_AHEAD_US`] after it).
pub fn decode(topic: &str, payload: &[u8], now_us: i64) -> Result<Decoded, Reject> {
    let (device, stream) = parse_topic(topic).ok_or_else(|| Reject::Topic(topic.into()))?;
    if payload.len() > MAX_PAYLOAD {
        return Err(Reject::Oversize(payload.len()));
    }
    // The common case in one pass: the payload parses straight into its message type. Only a
    // payload that does not is parsed again, generically, to say exactly what is wrong.
    let typed = match stream {
        Stream::Anomalies => serde_json::from_slice(payload).map(Decoded::Anomaly),
        Stream::Flows => serde_json::from_slice(payload).map(Decoded::Flows),
        Stream::Stats => serde_json::from_slice(payload).map(Decoded::Stats),
        Stream::Metrics => serde_json::from_slice(payload).map(Decoded::Metrics),
        Stream::Analyses => serde_json::from_slice(payload).map(Decoded::Analysis),
        Stream::Status => serde_json::from_slice(payload).map(Decoded::Status),
        Stream::Evidence => {
            serde_json::from_slice(payload).map(|m| Decoded::Evidence(Box::new(m), Vec::new()))
        }
        Stream::ConfigApplied => serde_json::from_slice(payload).map(Decoded::ConfigApplied),
        Stream::CommandResult => serde_json::from_slice(payload).map(Decoded::CommandResult),
    };
    if let Ok(msg) = typed {
        let schema = msg.header().schema;
        if schema != SCHEMA_VERSION {
            return Err(Reject::SchemaVersion(schema.into()));
        }
        return accept(device, msg, now_us);
    }
    let v: serde_json::Value =
        serde_json::from_slice(payload).map_err(|e| Reject::Malformed(e.to_string()))?;
    match v.get("schema").and_then(|s| s.as_u64()) {
        Some(s) if s == u64::from(SCHEMA_VERSION) => {}
        Some(s) => return Err(Reject::SchemaVersion(s)),
        None => {
            return Err(Reject::Shape {
                stream: stream.name(),
                message: "missing or non-integer field `schema`".into(),
            })
        }
    }
    let msg = match stream {
        Stream::Anomalies => Decoded::Anomaly(shape(stream, v)?),
        Stream::Flows => Decoded::Flows(shape(stream, v)?),
        Stream::Stats => Decoded::Stats(shape(stream, v)?),
        Stream::Metrics => Decoded::Metrics(shape(stream, v)?),
        Stream::Analyses => Decoded::Analysis(shape(stream, v)?),
        Stream::Status => Decoded::Status(shape(stream, v)?),
        Stream::Evidence => Decoded::Evidence(Box::new(shape(stream, v)?), Vec::new()),
        Stream::ConfigApplied => Decoded::ConfigApplied(shape(stream, v)?),
        Stream::CommandResult => Decoded::CommandResult(shape(stream, v)?),
    };
    accept(device, msg, now_us)
}

/// A configuration hash as the contract has it: 64 lower-case hex digits, or empty (none).
fn is_hash(h: &str) -> bool {
    h.is_empty()
        || (h.len() == 64 && h.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
}

/// The checks after the shape: the device inside is the topic's, times, counts and floats are
/// in range.
fn accept(device: &str, msg: Decoded, now_us: i64) -> Result<Decoded, Reject> {
    let inside = msg.header().device;
    if inside != device {
        return Err(Reject::DeviceMismatch { topic: device.into(), inside: inside.into() });
    }
    check_times(&msg, now_us)?;
    check_numbers(&msg)?;
    match msg {
        Decoded::Evidence(m, _) => {
            let pcap = check_evidence(&m)?;
            Ok(Decoded::Evidence(m, pcap))
        }
        msg => Ok(msg),
    }
}

/// An evidence part's pcap: base64 of a whole pcap file of at most [`EVIDENCE_PCAP_MAX`] bytes
/// holding `packets` packets.
fn check_evidence(m: &EvidenceMsg) -> Result<Vec<u8>, Reject> {
    let bad = |message: String| Reject::Shape { stream: "evidence", message };
    let pcap = base64::engine::general_purpose::STANDARD
        .decode(&m.pcap)
        .map_err(|e| bad(format!("pcap: not base64: {e}")))?;
    if pcap.len() > EVIDENCE_PCAP_MAX {
        return Err(bad(format!("pcap: {} bytes, over {EVIDENCE_PCAP_MAX}", pcap.len())));
    }
    let mut reader = pcap_file::pcap::PcapReader::new(&pcap[..])
        .map_err(|e| bad(format!("pcap: not a pcap file: {e}")))?;
    let mut n = 0u32;
    while let Some(p) = reader.next_packet() {
        p.map_err(|e| bad(format!("pcap: packet {n}: {e}")))?;
        n += 1;
    }
    if n != m.packets || n == 0 {
        return Err(bad(format!("pcap: {n} packets, the message says {}", m.packets)));
    }
    Ok(pcap)
}

/// Latest time accepted: 2100-01-01, Unix microseconds. Earlier than 1970 is refused too: such
/// a time is a broken clock or a forged message, and PostgreSQL's partitions would not hold it.
pub const MAX_TIME_US: i64 = 4_102_444_800_000_000;

/// How far ahead of the hub's clock a time may be: a day (an edge's clock may be off; more is a
/// broken clock or a forged message, and would make day partitions that age retention never
/// drops).
pub const MAX_AHEAD_US: i64 = 86_400_000_000;

/// Largest count PostgreSQL's `bigint` holds, and so the largest any counter may be.
pub const MAX_COUNT: u64 = i64::MAX as u64;

/// Every time in the message is between 1970 and a day after `now_us` (and before 2100). A
/// status message's seq is the wall-clock millisecond of its connection, so it is held to the
/// same bound (a seq of 2^63-1 would pin a device's state for good).
fn check_times(msg: &Decoded, now_us: i64) -> Result<(), Reject> {
    let latest = now_us.saturating_add(MAX_AHEAD_US).min(MAX_TIME_US);
    let mut times = vec![("ts", msg.header().ts)];
    match msg {
        Decoded::Flows(b) => {
            for f in &b.flows {
                times.push(("flows[].start", f.start));
                times.push(("flows[].end", f.end));
            }
        }
        Decoded::Stats(s) => {
            times.push(("interval_start", s.interval_start));
            times.push(("interval_end", s.interval_end));
        }
        Decoded::Anomaly(a) => {
            times.push(("first_seen", a.first_seen));
            times.push(("last_seen", a.last_seen));
        }
        Decoded::Status(s) => {
            let ms = i64::try_from(s.seq).unwrap_or(i64::MAX);
            times.push(("seq", ms.saturating_mul(1000)));
        }
        _ => {}
    }
    match times.into_iter().find(|(_, t)| !(0..=latest).contains(t)) {
        None => Ok(()),
        Some((field, t)) => Err(Reject::Range {
            stream: msg.stream().name(),
            field,
            message: format!(
                "{t} is not a time between 1970 and a day from now (Unix microseconds)"
            ),
        }),
    }
}

/// Every count fits PostgreSQL's `bigint` (or `integer` where it is stored so), and every float
/// is finite and within its meaning (a confidence is 0 to 1, CPU 0 to 100 percent).
fn check_numbers(msg: &Decoded) -> Result<(), Reject> {
    let stream = msg.stream().name();
    let mut counts: Vec<(&'static str, u64, u64)> = vec![("seq", msg.header().seq, MAX_COUNT)];
    let mut floats: Vec<(&'static str, f32, f32, f32)> = Vec::new();
    let any = (f32::MIN, f32::MAX);
    let int = u64::from(i32::MAX as u32);
    match msg {
        Decoded::Flows(b) => {
            counts.push(("feature_set", b.feature_set.into(), int));
            for f in &b.flows {
                floats.extend(f.features.iter().map(|v| ("flows[].features[]", *v, any.0, any.1)));
            }
        }
        Decoded::Stats(s) => {
            counts.extend([
                ("packets", s.packets, MAX_COUNT),
                ("bytes", s.bytes, MAX_COUNT),
                ("tcp_packets", s.tcp_packets, MAX_COUNT),
                ("udp_packets", s.udp_packets, MAX_COUNT),
                ("icmp_packets", s.icmp_packets, MAX_COUNT),
                ("other_packets", s.other_packets, MAX_COUNT),
                ("flows_started", s.flows_started, MAX_COUNT),
                ("flows_ended", s.flows_ended, MAX_COUNT),
                ("parse_errors", s.parse_errors, MAX_COUNT),
            ]);
            for p in &s.top_ports {
                counts.push(("top_ports[].packets", p.packets, MAX_COUNT));
                counts.push(("top_ports[].bytes", p.bytes, MAX_COUNT));
            }
            for h in &s.top_talkers {
                counts.push(("top_talkers[].packets", h.packets, MAX_COUNT));
                counts.push(("top_talkers[].bytes", h.bytes, MAX_COUNT));
            }
        }
        Decoded::Metrics(m) => {
            floats.push(("cpu_percent", m.cpu_percent, 0.0, 100.0));
            counts.extend([
                ("mem_used_bytes", m.mem_used_bytes, MAX_COUNT),
                ("mem_total_bytes", m.mem_total_bytes, MAX_COUNT),
                ("disk_used_bytes", m.disk_used_bytes, MAX_COUNT),
                ("disk_total_bytes", m.disk_total_bytes, MAX_COUNT),
                ("net_rx_bytes", m.net_rx_bytes, MAX_COUNT),
                ("net_tx_bytes", m.net_tx_bytes, MAX_COUNT),
                ("flows_active", m.flows_active, MAX_COUNT),
                ("store_dropped", m.store_dropped, MAX_COUNT),
            ]);
            for c in &m.capture {
                counts.extend([
                    ("capture[].packets", c.packets, MAX_COUNT),
                    ("capture[].bytes", c.bytes, MAX_COUNT),
                    ("capture[].kernel_drops", c.kernel_drops, MAX_COUNT),
                    ("capture[].queue_drops", c.queue_drops, MAX_COUNT),
                    ("capture[].parse_errors", c.parse_errors, MAX_COUNT),
                ]);
            }
        }
        Decoded::Analysis(a) => {
            counts.extend([
                ("rows", a.rows.into(), int),
                ("flagged", a.flagged.into(), a.rows.into()),
                ("latency_us", a.latency_us, MAX_COUNT),
            ]);
            floats.extend([
                ("score_min", a.score_min, any.0, any.1),
                ("score_mean", a.score_mean, any.0, any.1),
                ("score_max", a.score_max, any.0, any.1),
                ("threshold", a.threshold, any.0, any.1),
            ]);
        }
        Decoded::Anomaly(a) => {
            counts.extend([("id", a.id, MAX_COUNT), ("count", a.count, MAX_COUNT)]);
            floats.extend([
                ("confidence", a.confidence, 0.0, 1.0),
                ("score", a.score, any.0, any.1),
                ("threshold", a.threshold, any.0, any.1),
            ]);
            for r in &a.reasons {
                floats.push(("reasons[].value", r.value, any.0, any.1));
                floats.push(("reasons[].contribution", r.contribution, any.0, any.1));
            }
        }
        Decoded::Status(s) => {
            counts.extend([
                ("uptime_s", s.uptime_s, MAX_COUNT),
                ("config_revision", s.config_revision, MAX_COUNT),
            ]);
            if !is_hash(&s.config_hash) {
                return Err(Reject::Range {
                    stream,
                    field: "config_hash",
                    message: "not a SHA-256 in hex".into(),
                });
            }
        }
        Decoded::Evidence(e, _) => counts.push(("anomaly", e.anomaly, MAX_COUNT)),
        Decoded::ConfigApplied(m) => {
            counts.push(("revision", m.revision, MAX_COUNT));
            if !is_hash(&m.hash) {
                return Err(Reject::Range {
                    stream,
                    field: "hash",
                    message: "not a SHA-256 in hex".into(),
                });
            }
        }
        Decoded::CommandResult(m) => counts.push(("id", m.id, MAX_COUNT)),
    }
    if let Some((field, v, max)) = counts.into_iter().find(|(_, v, max)| v > max) {
        return Err(Reject::Range { stream, field, message: format!("{v} is over {max}") });
    }
    // A NaN fails both comparisons, and so the range.
    if let Some((field, v, lo, hi)) =
        floats.into_iter().find(|(_, v, lo, hi)| !(v >= lo && v <= hi))
    {
        return Err(Reject::Range {
            stream,
            field,
            message: format!("{v} is not a finite number from {lo} to {hi}"),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The hub's clock in these tests (2027-01-15).
    const NOW: i64 = 1_800_000_000_000_000;

    fn status(device: &str) -> serde_json::Value {
        json!({"schema": 1, "device": device, "seq": 1, "ts": 5, "state": "online",
               "version": "0.1.0", "uptime_s": 3})
    }

    #[test]
    fn test_accepts_a_good_message() {
        let m = decode("tapwatch/v1/tap-1/status", status("tap-1").to_string().as_bytes(), NOW)
            .unwrap();
        assert_eq!(m.stream(), Stream::Status);
        assert_eq!(m.header(), Header { schema: 1, device: "tap-1", seq: 1, ts: 5 });
    }

    #[test]
    fn test_every_rejection_has_its_reason() {
        let ok = status("tap-1").to_string();
        let cases: Vec<(&str, Vec<u8>, &str)> = vec![
            ("tapwatch/v1/tap-1/nope", ok.clone().into_bytes(), "topic"),
            ("tapwatch/v1/tap+1/status", ok.clone().into_bytes(), "topic"),
            ("tapwatch/v1/tap-1/status", vec![b' '; MAX_PAYLOAD + 1], "oversize"),
            ("tapwatch/v1/tap-1/status", b"{\"schema\": 1,".to_vec(), "malformed_json"),
            ("tapwatch/v1/tap-1/status", b"\xff\xfe".to_vec(), "malformed_json"),
            (
                "tapwatch/v1/tap-1/status",
                json!({"schema": 2}).to_string().into_bytes(),
                "schema_version",
            ),
            (
                "tapwatch/v1/tap-1/status",
                json!({"device": "tap-1"}).to_string().into_bytes(),
                "shape",
            ),
            ("tapwatch/v1/tap-1/flows", ok.clone().into_bytes(), "shape"),
            ("tapwatch/v1/tap-2/status", ok.clone().into_bytes(), "device_mismatch"),
            (
                "tapwatch/v1/tap-1/status",
                {
                    let mut v = status("tap-1");
                    v["ts"] = json!(-5);
                    v.to_string().into_bytes()
                },
                "range",
            ),
        ];
        for (topic, payload, reason) in cases {
            let err = decode(topic, &payload, NOW).unwrap_err();
            assert_eq!(err.reason(), reason, "{topic}: {err}");
        }
    }

    /// A pcap file of `n` small packets.
    fn pcap(n: usize) -> Vec<u8> {
        let header = pcap_file::pcap::PcapHeader::default();
        let mut w = pcap_file::pcap::PcapWriter::with_header(Vec::new(), header).unwrap();
        for i in 0..n {
            let p = pcap_file::pcap::PcapPacket::new(
                std::time::Duration::from_micros(i as u64),
                60,
                &[0u8; 60],
            );
            w.write_packet(&p).unwrap();
        }
        w.into_writer()
    }

    fn evidence(pcap: &[u8], packets: u32) -> Vec<u8> {
        let b64 = base64::engine::general_purpose::STANDARD.encode(pcap);
        json!({"schema": 1, "device": "tap-1", "seq": 1, "ts": 5, "anomaly": 9,
               "packets": packets, "pcap": b64})
        .to_string()
        .into_bytes()
    }

    #[test]
    fn test_evidence_is_a_whole_pcap_file() {
        let topic = "tapwatch/v1/tap-1/evidence";
        match decode(topic, &evidence(&pcap(3), 3), NOW).unwrap() {
            Decoded::Evidence(m, bytes) => {
                assert_eq!((m.anomaly, m.packets), (9, 3));
                assert_eq!(bytes, pcap(3));
            }
            other => panic!("{other:?}"),
        }
        let whole = pcap(3);
        let bad: Vec<(Vec<u8>, &str)> = vec![
            (evidence(&whole, 2), "3 packets, the message says 2"),
            (evidence(&whole[..whole.len() - 10], 3), "packet 2"),
            (evidence(b"not a pcap file at all, no", 1), "not a pcap file"),
            (evidence(&pcap(0), 0), "0 packets"),
            (
                json!({"schema": 1, "device": "tap-1", "seq": 1, "ts": 5, "anomaly": 9,
                       "packets": 1, "pcap": "!!!"})
                .to_string()
                .into_bytes(),
                "not base64",
            ),
        ];
        for (payload, why) in bad {
            let err = decode(topic, &payload, NOW).unwrap_err();
            assert_eq!(err.reason(), "shape", "{err}");
            assert!(err.to_string().contains(why), "{err} / {why}");
        }
    }

    /// A valid message of each stream but evidence, at `NOW`.
    fn valid(stream: &str) -> serde_json::Value {
        let mut v = json!({"schema": 1, "device": "tap-1", "seq": 1, "ts": NOW});
        let body = match stream {
            "anomalies" => json!({"id": 1, "kind": "port_scan", "severity": "high",
                "confidence": 0.5, "score": 3.0, "threshold": 1.0, "detector": "window",
                "src_ip": "10.0.0.1", "dst_ip": null, "dst_port": null, "protocol": 6,
                "first_seen": NOW - 5, "last_seen": NOW, "count": 3,
                "reasons": [{"feature": "x", "value": 1.0, "contribution": 0.5}]}),
            "stats" => json!({"interval_start": NOW - 10, "interval_end": NOW, "packets": 5,
                "bytes": 500, "tcp_packets": 5, "udp_packets": 0, "icmp_packets": 0,
                "other_packets": 0, "flows_started": 1, "flows_ended": 1, "parse_errors": 0,
                "top_ports": [{"protocol": 6, "port": 80, "packets": 5, "bytes": 500}],
                "top_talkers": [{"ip": "10.0.0.1", "packets": 5, "bytes": 500}]}),
            "metrics" => json!({"cpu_percent": 12.5, "mem_used_bytes": 1, "mem_total_bytes": 2,
                "disk_used_bytes": 1, "disk_total_bytes": 2, "net_rx_bytes": 1, "net_tx_bytes": 1,
                "flows_active": 1, "store_dropped": 0,
                "capture": [{"interface": "eth0", "packets": 1, "bytes": 1, "kernel_drops": 0,
                             "queue_drops": 0, "parse_errors": 0}]}),
            "analyses" => json!({"model": "m", "model_version": "1", "rows": 4, "score_min": 0.0,
                "score_mean": 0.5, "score_max": 1.0, "threshold": 0.9, "flagged": 1,
                "latency_us": 10}),
            "status" => json!({"state": "online", "version": "1", "uptime_s": 3}),
            "flows" => json!({"feature_set": 1, "flows": [{"src_ip": "10.0.0.1", "src_port": 1,
                "dst_ip": "10.0.0.2", "dst_port": 2, "protocol": 6, "vlan": 0, "start": NOW - 5,
                "end": NOW, "end_reason": "fin", "features": [1.0, 2.0]}]}),
            _ => unreachable!(),
        };
        v.as_object_mut().unwrap().extend(body.as_object().unwrap().clone());
        v
    }

    /// Every count fits PostgreSQL's bigint, every float is finite and in its range, and no
    /// time is more than a day ahead: each refused with reason `range`, naming the field.
    #[test]
    fn test_every_number_and_time_is_in_range() {
        let max = u64::MAX;
        let day = MAX_AHEAD_US;
        let cases: Vec<(&str, &str, serde_json::Value, &str)> = vec![
            ("stats", "/packets", json!(max), "packets"),
            ("stats", "/bytes", json!(1u64 << 63), "bytes"),
            ("stats", "/top_ports/0/bytes", json!(max), "top_ports[].bytes"),
            ("stats", "/top_talkers/0/packets", json!(max), "top_talkers[].packets"),
            ("stats", "/interval_start", json!(NOW + 2 * day), "interval_start"),
            ("metrics", "/net_rx_bytes", json!(max), "net_rx_bytes"),
            ("metrics", "/capture/0/kernel_drops", json!(max), "capture[].kernel_drops"),
            ("metrics", "/cpu_percent", json!(-5.0), "cpu_percent"),
            ("metrics", "/cpu_percent", json!(100.5), "cpu_percent"),
            ("metrics", "/ts", json!(NOW + 2 * day), "ts"),
            ("anomalies", "/confidence", json!(1e39), "confidence"),
            ("anomalies", "/confidence", json!(-5.0), "confidence"),
            ("anomalies", "/score", json!(1e39), "score"),
            ("anomalies", "/reasons/0/value", json!(-1e39), "reasons[].value"),
            ("anomalies", "/count", json!(max), "count"),
            ("anomalies", "/id", json!(max), "id"),
            ("anomalies", "/seq", json!(max), "seq"),
            ("anomalies", "/last_seen", json!(MAX_TIME_US - 1), "last_seen"),
            ("analyses", "/rows", json!(u32::MAX), "rows"),
            ("analyses", "/flagged", json!(5), "flagged"),
            ("analyses", "/score_max", json!(1e39), "score_max"),
            ("analyses", "/latency_us", json!(max), "latency_us"),
            ("status", "/seq", json!(i64::MAX), "seq"),
            ("status", "/uptime_s", json!(max), "uptime_s"),
            ("flows", "/feature_set", json!(u32::MAX), "feature_set"),
            ("flows", "/flows/0/features/1", json!(1e39), "flows[].features[]"),
            ("flows", "/flows/0/end", json!(NOW + 2 * day), "flows[].end"),
        ];
        for (stream, at, value, field) in cases {
            let topic = format!("tapwatch/v1/tap-1/{stream}");
            let ok = valid(stream);
            decode(&topic, ok.to_string().as_bytes(), NOW).unwrap();
            let mut v = ok.clone();
            *v.pointer_mut(at).unwrap() = value.clone();
            let err = decode(&topic, v.to_string().as_bytes(), NOW).unwrap_err();
            assert_eq!(err.reason(), "range", "{stream} {at}={value}: {err}");
            match &err {
                Reject::Range { field: f, .. } => assert_eq!(*f, field, "{err}"),
                other => panic!("{other:?}"),
            }
        }
        // The edges of the ranges are taken.
        for (stream, at, value) in [
            ("stats", "/packets", json!(i64::MAX)),
            ("metrics", "/cpu_percent", json!(100.0)),
            ("anomalies", "/confidence", json!(1.0)),
            ("anomalies", "/last_seen", json!(NOW + day)),
            ("status", "/seq", json!((NOW + day) / 1000)),
        ] {
            let mut v = valid(stream);
            *v.pointer_mut(at).unwrap() = value;
            let topic = format!("tapwatch/v1/tap-1/{stream}");
            decode(&topic, v.to_string().as_bytes(), NOW).unwrap();
        }
    }

    #[test]
    fn test_overlong_device_in_payload_is_shape_error() {
        let mut v = status("tap-1");
        v["device"] = json!("x".repeat(100));
        let err = decode("tapwatch/v1/tap-1/status", v.to_string().as_bytes(), NOW).unwrap_err();
        assert_eq!(err.reason(), "shape");
    }

    proptest::proptest! {
        /// Whatever arrives, decode answers (a message or a reason) and never panics.
        #[test]
        fn test_decode_never_panics(topic in "[a-z0-9/+#.-]{0,40}", payload in proptest::collection::vec(proptest::num::u8::ANY, 0..2048)) {
            let _ = decode(&topic, &payload, NOW);
            let _ = decode("tapwatch/v1/tap-1/flows", &payload, NOW);
        }

        /// A valid message with one byte changed is accepted or refused with a reason.
        #[test]
        fn test_mutated_messages_never_panic(at in 0usize..200, byte in proptest::num::u8::ANY) {
            let mut p = status("tap-1").to_string().into_bytes();
            let i = at % p.len();
            p[i] = byte;
            let _ = decode("tapwatch/v1/tap-1/status", &p, NOW);
        }
    }
}
