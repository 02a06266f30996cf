//! The JSON-lines records of `tapwatch-edge analyze`: one object per line, each with a `record`
//! field saying what it is (`flow`, `stats`).

use firmware::engine::{EngineCounters, FinishedFlow};
use firmware::features::{FeatureVector, NAMES};
use firmware::flow::{EndReason, FlowCounters};
use firmware::wire::DissectError;
use serde::ser::{SerializeMap, Serializer};
use serde::Serialize;
use std::net::IpAddr;

/// A protocol's usual lower-case name, or its number.
pub fn protocol_name(p: u8) -> std::borrow::Cow<'static, str> {
    match p {
        1 => "icmp".into(),
        2 => "igmp".into(),
        6 => "tcp".into(),
        17 => "udp".into(),
        47 => "gre".into(),
        50 => "esp".into(),
        51 => "ah".into(),
        58 => "icmpv6".into(),
        89 => "ospf".into(),
        103 => "pim".into(),
        112 => "vrrp".into(),
        132 => "sctp".into(),
        other => other.to_string().into(),
    }
}

/// Features as a JSON object, names from models/features.json, in vector order.
#[derive(Debug)]
struct Features(FeatureVector);

impl Serialize for Features {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(NAMES.len()))?;
        for (name, v) in NAMES.iter().zip(self.0.iter()) {
            m.serialize_entry(name, v)?;
        }
        m.end()
    }
}

/// One `flow` record.
#[derive(Debug, Serialize)]
pub struct FlowRecordOut {
    record: &'static str,
    src_ip: IpAddr,
    src_port: u16,
    dst_ip: IpAddr,
    dst_port: u16,
    protocol: std::borrow::Cow<'static, str>,
    vlan: u16,
    /// Unix microseconds of the first and last packet.
    start_us: i64,
    end_us: i64,
    end_reason: &'static str,
    packets: u32,
    bytes: u64,
    /// Left out by [`FlowLines`], which writes them itself.
    #[serde(skip_serializing_if = "Option::is_none")]
    features: Option<Features>,
}

impl FlowRecordOut {
    pub fn new(f: &FinishedFlow) -> Self {
        FlowRecordOut { features: Some(Features(f.features())), ..Self::head(f) }
    }

    /// The record without its features.
    fn head(f: &FinishedFlow) -> Self {
        let flow = &f.record.flow;
        FlowRecordOut {
            record: "flow",
            src_ip: f.record.src(),
            src_port: f.record.src_port(),
            dst_ip: f.record.dst(),
            dst_port: f.record.dst_port(),
            protocol: protocol_name(flow.protocol),
            vlan: f.record.vlan(),
            start_us: flow.start.total_micros(),
            end_us: flow.last().total_micros(),
            end_reason: f.record.reason.name(),
            packets: flow.packets(),
            bytes: flow.fwd.wire_bytes + flow.bwd.wire_bytes,
            features: None,
        }
    }
}

/// Writes `flow` records as [`FlowRecordOut`] serializes them, byte for byte, at less cost: the
/// 97 feature names are escaped once (serde_json escapes a key each time it writes it, byte by
/// byte: a third of the output thread's time) and the values written by serde_json's formatter.
struct FlowLines {
    /// `"name":` of each feature, a comma before all but the first.
    keys: Vec<Vec<u8>>,
}

impl FlowLines {
    fn new() -> Self {
        let keys = NAMES
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let mut k = if i == 0 { Vec::new() } else { vec![b','] };
                // A &str always serializes.
                serde_json::to_writer(&mut k, name).expect("a string serializes");
                k.push(b':');
                k
            })
            .collect();
        FlowLines { keys }
    }

    /// One record and its newline onto `buf`.
    fn write(&self, buf: &mut Vec<u8>, f: &FinishedFlow) -> std::io::Result<()> {
        serde_json::to_writer(&mut *buf, &FlowRecordOut::head(f))?;
        // The head's closing brace makes way for the features.
        let closed = buf.pop();
        debug_assert_eq!(closed, Some(b'}'));
        buf.extend_from_slice(b",\"features\":{");
        for (key, v) in self.keys.iter().zip(f.features().iter()) {
            buf.extend_from_slice(key);
            write_f32(buf, *v)?;
        }
        buf.extend_from_slice(b"}}\n");
        Ok(())
    }
}

/// A value as serde_json's serializer writes it: by its formatter, or null if not finite. Zero,
/// two features in three, is written without the formatter.
fn write_f32(buf: &mut Vec<u8>, v: f32) -> std::io::Result<()> {
    use serde_json::ser::{CompactFormatter, Formatter};
    if v == 0.0 {
        buf.extend_from_slice(if v.is_sign_negative() { b"-0.0" } else { b"0.0" });
        Ok(())
    } else if v.is_finite() {
        CompactFormatter.write_f32(buf, v)
    } else {
        CompactFormatter.write_null(buf)
    }
}

/// Counts by name, as a JSON object.
#[derive(Debug)]
struct Named<'a>(&'a [(&'static str, u64)]);

impl Serialize for Named<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in self.0 {
            m.serialize_entry(k, v)?;
        }
        m.end()
    }
}

/// Totals of a run, for the `stats` record and the summary line.
#[derive(Debug, Clone, Default)]
pub struct RunTotals {
    pub files: u64,
    pub files_failed: u64,
    /// Anomaly episodes found.
    pub anomalies: u64,
    pub engine: EngineCounters,
    pub flows: FlowCounters,
    pub seconds: f64,
}

impl RunTotals {
    pub fn packets_per_second(&self) -> f64 {
        if self.seconds > 0.0 {
            self.engine.packets as f64 / self.seconds
        } else {
            0.0
        }
    }

    fn errors(&self) -> Vec<(&'static str, u64)> {
        DissectError::ALL.iter().map(|e| (e.name(), self.engine.errors[e.index()])).collect()
    }

    fn ended(&self) -> Vec<(&'static str, u64)> {
        EndReason::ALL.iter().map(|r| (r.name(), self.flows.ended[*r as usize])).collect()
    }

    /// The `stats` record.
    pub fn to_json(&self) -> serde_json::Value {
        let e = &self.engine;
        serde_json::json!({
            "record": "stats",
            "files": self.files,
            "files_failed": self.files_failed,
            "packets": e.packets,
            "bytes": e.bytes,
            "ipv4": e.ipv4,
            "ipv6": e.ipv6,
            "tcp": e.tcp,
            "udp": e.udp,
            "icmp": e.icmp,
            "other_ip": e.other_ip,
            "arp": e.arp,
            "other_l3": e.other_l3,
            "truncated": e.truncated,
            "fragments": e.fragments,
            "parse_errors": e.errors_total(),
            "parse_errors_by_kind": serde_json::to_value(Named(&self.errors())).unwrap_or_default(),
            "flows": self.flows.created,
            "flows_ended": serde_json::to_value(Named(&self.ended())).unwrap_or_default(),
            "anomalies": self.anomalies,
            "seconds": self.seconds,
            "packets_per_second": self.packets_per_second(),
        })
    }

    /// One human line for stderr.
    pub fn summary(&self) -> String {
        let e = &self.engine;
        let errors: Vec<String> = self
            .errors()
            .into_iter()
            .filter(|(_, n)| *n > 0)
            .map(|(k, n)| format!("{k} {n}"))
            .collect();
        format!(
            "tapwatch-edge: {} file(s){}, {} packets, {} bytes, {} flows, {} anomalies, {} parse errors{}, {:.3} s ({:.2} Mpps)",
            self.files,
            if self.files_failed > 0 { format!(" ({} with errors)", self.files_failed) } else { String::new() },
            e.packets,
            e.bytes,
            self.flows.created,
            self.anomalies,
            e.errors_total(),
            if errors.is_empty() { String::new() } else { format!(" ({})", errors.join(", ")) },
            self.seconds,
            self.packets_per_second() / 1e6,
        )
    }
}

/// The `anomaly` record of `analyze`: one anomaly episode, as it ended.
#[derive(Debug, serde::Serialize)]
pub struct AnomalyRecordOut<'a> {
    pub record: &'static str,
    pub file: String,
    pub id: u64,
    pub kind: firmware::proto::AnomalyKind,
    pub severity: firmware::proto::Severity,
    pub confidence: f32,
    pub score: f32,
    pub threshold: f32,
    pub detector: &'a str,
    pub src_ip: std::net::IpAddr,
    /// The flow a model judged (window anomalies have none).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dst_ip: Option<std::net::IpAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dst_port: Option<u16>,
    pub protocol: Option<u8>,
    pub first_seen_us: i64,
    pub last_seen_us: i64,
    /// Seconds the window detector tripped in, or flows the models judged so.
    pub count: u64,
    pub reasons: &'a [firmware::proto::Reason],
}

impl<'a> AnomalyRecordOut<'a> {
    pub fn new(a: &'a firmware::proto::AnomalyMsg, file: &std::path::Path) -> Self {
        AnomalyRecordOut {
            record: "anomaly",
            file: file.display().to_string(),
            id: a.id,
            kind: a.kind,
            severity: a.severity,
            confidence: a.confidence,
            score: a.score,
            threshold: a.threshold,
            detector: a.detector.as_str(),
            src_ip: a.src_ip,
            dst_ip: a.dst_ip,
            dst_port: a.dst_port,
            protocol: a.protocol,
            first_seen_us: a.first_seen,
            last_seen_us: a.last_seen,
            count: a.count,
            reasons: &a.reasons,
        }
    }
}

/// What the output thread is handed, in order.
#[derive(Debug)]
enum Out {
    /// Flows to write as `flow` records.
    Flows(Vec<FinishedFlow>),
    /// A record already encoded, with its newline.
    Line(Vec<u8>),
}

/// Flows a chunk holds before it goes to the output thread.
const FLOW_CHUNK: usize = 256;

/// JSON lines to standard output, written on a thread of their own: encoding a flow's 97
/// features is a third of what `analyze --emit flows --models` costs, and the pipeline need not
/// wait for it. Records keep their order. A write that fails stops the thread; [`failed`]
/// says so, and [`finish`] gives the error.
///
/// [`failed`]: JsonLines::failed
/// [`finish`]: JsonLines::finish
#[derive(Debug)]
pub struct JsonLines {
    tx: Option<crossbeam_channel::Sender<Out>>,
    chunk: Vec<FinishedFlow>,
    failed: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<std::io::Result<()>>>,
}

impl JsonLines {
    pub fn spawn() -> std::io::Result<JsonLines> {
        use std::io::Write as _;
        let (tx, rx) = crossbeam_channel::bounded::<Out>(8);
        let failed = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = failed.clone();
        let thread = std::thread::Builder::new().name("output".into()).spawn(move || {
            let mut out = std::io::BufWriter::with_capacity(1 << 16, std::io::stdout().lock());
            let lines = FlowLines::new();
            let mut buf = Vec::with_capacity(1 << 20);
            let mut write = |m: Out| -> std::io::Result<()> {
                match m {
                    Out::Flows(flows) => {
                        buf.clear();
                        for f in &flows {
                            lines.write(&mut buf, f)?;
                        }
                        out.write_all(&buf)
                    }
                    Out::Line(line) => out.write_all(&line),
                }
            };
            for m in rx {
                if let Err(e) = write(m) {
                    flag.store(true, std::sync::atomic::Ordering::Relaxed);
                    return Err(e);
                }
            }
            out.flush()
        })?;
        Ok(JsonLines {
            tx: Some(tx),
            chunk: Vec::with_capacity(FLOW_CHUNK),
            failed,
            thread: Some(thread),
        })
    }

    /// Whether a write failed (the rest is not written).
    pub fn failed(&self) -> bool {
        self.failed.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn send(&mut self, m: Out) {
        if let Some(tx) = &self.tx {
            // A send fails only once the thread stopped on an error, which `finish` gives.
            let _ = tx.send(m);
        }
    }

    fn send_flows(&mut self) {
        if !self.chunk.is_empty() {
            let chunk = std::mem::replace(&mut self.chunk, Vec::with_capacity(FLOW_CHUNK));
            self.send(Out::Flows(chunk));
        }
    }

    /// A `flow` record.
    pub fn flow(&mut self, f: &FinishedFlow) {
        self.chunk.push(*f);
        if self.chunk.len() >= FLOW_CHUNK {
            self.send_flows();
        }
    }

    /// Any other record, after the flows before it.
    pub fn record<T: Serialize>(&mut self, r: &T) -> std::io::Result<()> {
        self.send_flows();
        let mut line = serde_json::to_vec(r)?;
        line.push(b'\n');
        self.send(Out::Line(line));
        Ok(())
    }

    /// Write what is left, flush, and give the first error.
    pub fn finish(mut self) -> std::io::Result<()> {
        self.send_flows();
        self.tx = None;
        match self.thread.take().map(std::thread::JoinHandle::join) {
            Some(Ok(r)) => r,
            Some(Err(_)) => Err(std::io::Error::other("the output thread panicked")),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::config::Config;
    use crate::pipeline::{PacketIn, Pipeline};
    use firmware::wire::LinkType;
    use std::sync::Arc;

    #[test]
    fn test_a_value_is_written_as_serde_json_writes_it() {
        let values = [
            0.0,
            -0.0,
            1.0,
            -1.5,
            0.1,
            1e-45,
            f32::MIN_POSITIVE,
            f32::MAX,
            f32::MIN,
            123_456_790.0,
            f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
        ];
        for v in values {
            let mut buf = Vec::new();
            write_f32(&mut buf, v).unwrap();
            assert_eq!(buf, serde_json::to_vec(&v).unwrap(), "{v}");
        }
    }

    #[test]
    fn test_flow_lines_are_byte_for_byte_what_serde_json_writes_of_the_record() {
        crate::on_pipeline_stack(flow_lines_are_serde_jsons);
    }

    fn flow_lines_are_serde_jsons() {
        let config = Config::parse("[device]\nid = \"t\"\n", "t.toml").unwrap();
        let mut p = Pipeline::new(&config, vec![Arc::from("eth0")], None);
        // A TCP handshake, data and close, answered; a UDP datagram each way; an IPv6 datagram.
        let eth = |ty: [u8; 2]| {
            let mut f = vec![2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1];
            f.extend(ty);
            f
        };
        let tcp = |fwd: bool, flags: u8, payload: usize| {
            let mut f = eth([8, 0]);
            let (a, b) =
                if fwd { ([10, 0, 0, 1], [10, 0, 0, 2]) } else { ([10, 0, 0, 2], [10, 0, 0, 1]) };
            let len = (40 + payload) as u16;
            f.extend([0x45, 0, (len >> 8) as u8, len as u8, 0, 1, 0x40, 0, 64, 6, 0, 0]);
            f.extend(a);
            f.extend(b);
            let (sp, dp) = if fwd { (40_000u16, 443u16) } else { (443, 40_000) };
            f.extend(sp.to_be_bytes());
            f.extend(dp.to_be_bytes());
            f.extend([0, 0, 0, 1, 0, 0, 0, 1, 0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
            f.extend(std::iter::repeat_n(0x41, payload));
            f
        };
        let udp = |fwd: bool| {
            let mut f = eth([8, 0]);
            let (a, b) =
                if fwd { ([10, 0, 0, 1], [8, 8, 8, 8]) } else { ([8, 8, 8, 8], [10, 0, 0, 1]) };
            f.extend([0x45, 0, 0, 36, 0, 2, 0, 0, 64, 17, 0, 0]);
            f.extend(a);
            f.extend(b);
            let (sp, dp) = if fwd { (5353u16, 53u16) } else { (53, 5353) };
            f.extend(sp.to_be_bytes());
            f.extend(dp.to_be_bytes());
            f.extend([0, 16, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8]);
            f
        };
        let mut v6 = eth([0x86, 0xdd]);
        v6.extend([0x60, 0, 0, 0, 0, 8, 17, 64]);
        v6.extend([0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        v6.extend([0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xfb]);
        v6.extend([0x14, 0xe9, 0x14, 0xe9, 0, 8, 0, 0]);
        let frames = [
            tcp(true, 0x02, 0),
            tcp(false, 0x12, 0),
            tcp(true, 0x10, 0),
            tcp(true, 0x18, 517),
            tcp(false, 0x18, 1200),
            tcp(true, 0x11, 0),
            tcp(false, 0x11, 0),
            udp(true),
            udp(false),
            v6,
        ];
        let mut flows = Vec::new();
        for (i, data) in frames.iter().enumerate() {
            let input = PacketIn {
                iface: 0,
                link: LinkType::Ethernet,
                dlt: 1,
                ts_us: 1_700_000_000_000_000 + i as i64 * 12_345,
                wire_len: data.len() as u32,
                data,
            };
            p.packet(input, &mut |f| flows.push(*f));
        }
        p.finish(&mut |f| flows.push(*f));
        assert_eq!(flows.len(), 3);
        let lines = FlowLines::new();
        for f in &flows {
            let mut fast = Vec::new();
            lines.write(&mut fast, f).unwrap();
            let mut expected = serde_json::to_vec(&FlowRecordOut::new(f)).unwrap();
            expected.push(b'\n');
            assert_eq!(String::from_utf8(fast).unwrap(), String::from_utf8(expected).unwrap());
        }
    }
}
