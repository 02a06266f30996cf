//! Edge messages off the wire: topic and payload in, a typed message or a counted rejection out.
//!
//! Everything from the network is untrusted. A payload is checked in this order, and the first
//! failure is the [`Reject`] reason: the topic is one of ours; the payload is no larger than
//! [`MAX_PAYLOAD`]; it is JSON; its `schema` is a version we know; it has the shape of its stream's
//! message; the `device` inside matches the topic's. Nothing is partially accepted.

use base64::Engine;
use firmware::proto::{
    parse_topic, AnalysisMsg, AnomalyMsg, EvidenceMsg, FlowBatch, Header, Message, MetricsMsg,
    StatsMsg, StatusMsg, Stream, EVIDENCE_PCAP_MAX, SCHEMA_VERSION,
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

/// Decode one message received on `topic`.
pub fn decode(topic: &str, payload: &[u8]) -> Result<Decoded, Reject> {
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
    };
    if let Ok(msg) = typed {
        let schema = msg.header().schema;
        if schema != SCHEMA_VERSION {
            return Err(Reject::SchemaVersion(schema.into()));
        }
        return accept(device, msg);
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
    };
    accept(device, msg)
}

/// The checks after the shape: the device inside is the topic's, times are sane.
fn accept(device: &str, msg: Decoded) -> Result<Decoded, Reject> {
    let inside = msg.header().device;
    if inside != device {
        return Err(Reject::DeviceMismatch { topic: device.into(), inside: inside.into() });
    }
    check_times(&msg)?;
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

/// Every time in the message is between 1970 and 2100.
fn check_times(msg: &Decoded) -> Result<(), Reject> {
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
        _ => {}
    }
    match times.into_iter().find(|(_, t)| !(0..MAX_TIME_US).contains(t)) {
        None => Ok(()),
        Some((field, t)) => Err(Reject::Shape {
            stream: msg.stream().name(),
            message: format!("{field} {t} is not a time between 1970 and 2100 (Unix microseconds)"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn status(device: &str) -> serde_json::Value {
        json!({"schema": 1, "device": device, "seq": 1, "ts": 5, "state": "online",
               "version": "0.1.0", "uptime_s": 3})
    }

    #[test]
    fn test_accepts_a_good_message() {
        let m = decode("tapwatch/v1/tap-1/status", status("tap-1").to_string().as_bytes()).unwrap();
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
                "shape",
            ),
        ];
        for (topic, payload, reason) in cases {
            let err = decode(topic, &payload).unwrap_err();
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
        match decode(topic, &evidence(&pcap(3), 3)).unwrap() {
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
            let err = decode(topic, &payload).unwrap_err();
            assert_eq!(err.reason(), "shape", "{err}");
            assert!(err.to_string().contains(why), "{err} / {why}");
        }
    }

    #[test]
    fn test_overlong_device_in_payload_is_shape_error() {
        let mut v = status("tap-1");
        v["device"] = json!("x".repeat(100));
        let err = decode("tapwatch/v1/tap-1/status", v.to_string().as_bytes()).unwrap_err();
        assert_eq!(err.reason(), "shape");
    }

    proptest::proptest! {
        /// Whatever arrives, decode answers (a message or a reason) and never panics.
        #[test]
        fn test_decode_never_panics(topic in "[a-z0-9/+#.-]{0,40}", payload in proptest::collection::vec(proptest::num::u8::ANY, 0..2048)) {
            let _ = decode(&topic, &payload);
            let _ = decode("tapwatch/v1/tap-1/flows", &payload);
        }

        /// A valid message with one byte changed is accepted or refused with a reason.
        #[test]
        fn test_mutated_messages_never_panic(at in 0usize..200, byte in proptest::num::u8::ANY) {
            let mut p = status("tap-1").to_string().into_bytes();
            let i = at % p.len();
            p[i] = byte;
            let _ = decode("tapwatch/v1/tap-1/status", &p);
        }
    }
}
