//! `tapwatch-edge analyze` end to end on real captures (tests/data, see PROVENANCE.md): golden
//! output, a cross-check against tshark's conversation table, and the errors a broken input gets.

mod common;
use common::records;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/data")
}

fn captures() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(data_dir())
        .expect("tests/data exists")
        .map(|e| e.expect("readable dir entry").path())
        .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("pcap" | "pcapng")))
        .collect();
    v.sort();
    assert!(v.len() >= 7, "test captures missing from {}", data_dir().display());
    v
}

fn analyze(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tapwatch-edge"))
        .arg("analyze")
        .args(args)
        .output()
        .expect("tapwatch-edge runs")
}

/// Every capture's flows and stats, compared with tests/data/golden (rewritten with
/// TAPWATCH_BLESS=1). `seconds` and `packets_per_second` vary run to run and are left out.
#[test]
fn golden_flows_and_stats() {
    let bless = std::env::var_os("TAPWATCH_BLESS").is_some();
    let golden_dir = data_dir().join("golden");
    for cap in captures() {
        let out = analyze(&["--emit", "flows,stats", cap.to_str().expect("utf-8 path")]);
        assert!(
            out.status.success(),
            "{}: {}",
            cap.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        let mut text = String::new();
        for mut r in records(&out) {
            if let Some(o) = r.as_object_mut() {
                o.remove("seconds");
                o.remove("packets_per_second");
            }
            text.push_str(&serde_json::to_string(&r).expect("serializable"));
            text.push('\n');
        }
        let name = cap.file_name().and_then(|n| n.to_str()).expect("file name");
        let path = golden_dir.join(format!("{name}.jsonl"));
        if bless {
            std::fs::create_dir_all(&golden_dir).expect("golden dir");
            std::fs::write(&path, &text).expect("golden written");
        }
        let want = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            want == text,
            "{} differs from {}; if the change is intended, rerun with TAPWATCH_BLESS=1 and review the diff",
            cap.display(),
            path.display()
        );
    }
}

/// Packets and bytes per direction of one conversation.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
struct Conv {
    frames_ab: u64,
    bytes_ab: u64,
    frames_ba: u64,
    bytes_ba: u64,
    flows: u64,
}

type Endpoint = (String, u16);

fn split_endpoint(s: &str) -> Endpoint {
    let (ip, port) = s.rsplit_once(':').unwrap_or_else(|| panic!("endpoint {s}"));
    (ip.to_string(), port.parse().unwrap_or_else(|_| panic!("port in {s}")))
}

/// A tshark byte count: exact with "bytes", rounded with "kB" or "MB". Returns (value, tolerance).
fn tshark_bytes(n: &str, unit: &str) -> (u64, u64) {
    let v: f64 = n.replace(',', "").parse().unwrap_or_else(|_| panic!("number {n}"));
    match unit {
        "bytes" => (v as u64, 0),
        "kB" => ((v * 1e3) as u64, 1_000),
        "MB" => ((v * 1e6) as u64, 1_000_000),
        other => panic!("unit {other}"),
    }
}

/// Conversations by (protocol, A, B), with byte tolerances (A to B, B to A).
type Conversations = BTreeMap<(String, Endpoint, Endpoint), (Conv, (u64, u64))>;

/// `tshark -q -z conv,tcp -z conv,udp`: per conversation, frames and bytes each way. Column
/// "->" is A to B and "<-" is B to A, A being the address tshark lists first.
fn tshark_conversations(cap: &Path) -> Conversations {
    let out = Command::new("tshark")
        .args(["-n", "-q", "-z", "conv,tcp", "-z", "conv,udp", "-r"])
        .arg(cap)
        .output()
        .expect("tshark is installed (Debian package tshark; .ci/run installs it)");
    assert!(out.status.success(), "tshark failed on {}", cap.display());
    let text = String::from_utf8_lossy(&out.stdout);
    let mut proto = "";
    let mut convs = BTreeMap::new();
    for line in text.lines() {
        if line.starts_with("TCP Conversations") {
            proto = "tcp";
        } else if line.starts_with("UDP Conversations") {
            proto = "udp";
        }
        let t: Vec<&str> = line.split_whitespace().collect();
        if t.len() < 12 || t[1] != "<->" {
            continue;
        }
        let (ba, tol_ba) = tshark_bytes(t[4], t[5]);
        let (ab, tol_ab) = tshark_bytes(t[7], t[8]);
        let conv = Conv {
            frames_ba: t[3].parse().expect("frames"),
            bytes_ba: ba,
            frames_ab: t[6].parse().expect("frames"),
            bytes_ab: ab,
            flows: 0,
        };
        let key = (proto.to_string(), split_endpoint(t[0]), split_endpoint(t[2]));
        convs.insert(key, (conv, (tol_ab, tol_ba)));
    }
    convs
}

/// A flow record's initiator and responder.
fn endpoints(f: &Value) -> (Endpoint, Endpoint) {
    let end = |ip: &str, port: &str| {
        (f[ip].as_str().unwrap_or("").to_string(), f[port].as_u64().unwrap_or(0) as u16)
    };
    (end("src_ip", "src_port"), end("dst_ip", "dst_port"))
}

/// Our flows summed per conversation (A, B as tshark orders them).
fn our_conversation(flows: &[Value], proto: &str, a: &Endpoint, b: &Endpoint) -> Conv {
    let mut c = Conv::default();
    for f in flows {
        if f["protocol"] != proto {
            continue;
        }
        let (src, dst) = endpoints(f);
        let feat = &f["features"];
        let n = |k: &str| feat[k].as_f64().unwrap_or_else(|| panic!("feature {k}")) as u64;
        let (fwd, fwd_b, bwd, bwd_b) =
            (n("tot_fwd_pkts"), n("fwd_wire_bytes"), n("tot_bwd_pkts"), n("bwd_wire_bytes"));
        if (&src, &dst) == (a, b) {
            c.frames_ab += fwd;
            c.bytes_ab += fwd_b;
            c.frames_ba += bwd;
            c.bytes_ba += bwd_b;
        } else if (&src, &dst) == (b, a) {
            c.frames_ba += fwd;
            c.bytes_ba += fwd_b;
            c.frames_ab += bwd;
            c.bytes_ab += bwd_b;
        } else {
            continue;
        }
        c.flows += 1;
    }
    c
}

/// Every TCP and UDP conversation tshark sees, we see with the same frames and bytes each way.
///
/// Differences a reader should expect, and why none shows here:
/// - tshark keeps one conversation per address/port pair for the whole capture; we cut flows on
///   timeouts, FIN and RST (and a SYN that reuses a closed tuple). So our flows are summed per pair
///   before comparing.
/// - tshark's conversation ignores VLAN tags; we key flows by the outer VLAN too. Summing per pair
///   covers that as well.
/// - tshark reassembles IP fragments and counts only the frame that completes a datagram in the
///   UDP conversation; we count a first fragment in its UDP flow and later fragments in a flow with
///   ports 0. Captures with fragmented UDP would differ; ipv6_fragments.pcapng fragments ICMPv6,
///   which neither table counts as TCP or UDP.
/// - tshark prints large byte counts rounded (kB, MB); those are compared within the rounding.
#[test]
fn conversations_match_tshark() {
    let mut compared = 0;
    for cap in captures() {
        let out = analyze(&["--emit", "flows", cap.to_str().expect("utf-8 path")]);
        assert!(out.status.success());
        let flows = records(&out);
        let theirs = tshark_conversations(&cap);
        for ((proto, a, b), (conv, (tol_ab, tol_ba))) in &theirs {
            let ours = our_conversation(&flows, proto, a, b);
            let ctx = format!(
                "{}: {proto} {a:?} <-> {b:?}: tshark {conv:?}, ours {ours:?}",
                cap.display()
            );
            assert!(ours.flows > 0, "{ctx}: no flow");
            assert_eq!((ours.frames_ab, ours.frames_ba), (conv.frames_ab, conv.frames_ba), "{ctx}");
            assert!(ours.bytes_ab.abs_diff(conv.bytes_ab) <= *tol_ab, "{ctx}");
            assert!(ours.bytes_ba.abs_diff(conv.bytes_ba) <= *tol_ba, "{ctx}");
            compared += 1;
        }
        // And the other way: every TCP or UDP flow of ours is in tshark's table.
        for f in flows.iter().filter(|f| f["protocol"] == "tcp" || f["protocol"] == "udp") {
            let (src, dst) = endpoints(f);
            let proto = f["protocol"].as_str().unwrap_or("").to_string();
            assert!(
                theirs.contains_key(&(proto.clone(), src.clone(), dst.clone()))
                    || theirs.contains_key(&(proto, dst, src)),
                "{}: flow not in tshark's table: {f}",
                cap.display()
            );
        }
    }
    assert!(compared >= 15, "only {compared} conversations compared");
}

/// The offset of record `n` (0-based) of a classic pcap file, read independently of the code
/// under test: 24-byte file header, then 16-byte record headers with the captured length at 8..12.
fn pcap_record_offset(bytes: &[u8], n: usize) -> usize {
    let mut off = 24;
    for _ in 0..n {
        let caplen = u32::from_le_bytes(bytes[off + 8..off + 12].try_into().expect("4 bytes"));
        off += 16 + caplen as usize;
    }
    off
}

#[test]
fn truncated_pcap_names_file_and_offset_and_keeps_what_was_read() {
    let dir = tempfile::tempdir().expect("temp dir");
    let whole = std::fs::read(data_dir().join("rawip_bjnp.pcap")).expect("capture");
    let last = pcap_record_offset(&whole, 9);
    // Cut the last record in the middle of its data.
    let cut = dir.path().join("cut.pcap");
    std::fs::write(&cut, &whole[..last + 20]).expect("written");
    let out = analyze(&["--emit", "flows,stats", cut.to_str().expect("utf-8")]);
    assert_eq!(out.status.code(), Some(65));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(cut.to_str().expect("utf-8")), "{err}");
    assert!(err.contains(&format!("byte offset {last}")), "{err}");
    assert!(err.contains("after 9 packets read"), "{err}");
    let recs = records(&out);
    let stats = recs.last().expect("a stats record");
    assert_eq!(stats["record"], "stats");
    assert_eq!(stats["packets"], 9);
    assert_eq!(stats["files_failed"], 1);
    let flow_packets: u64 = recs
        .iter()
        .filter(|r| r["record"] == "flow")
        .map(|r| r["packets"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(flow_packets, 9, "the nine packets read are all in flows");
}

#[test]
fn truncated_pcapng_names_the_block_offset() {
    let dir = tempfile::tempdir().expect("temp dir");
    let whole = std::fs::read(data_dir().join("http_post.pcapng")).expect("capture");
    let cut = dir.path().join("cut.pcapng");
    std::fs::write(&cut, &whole[..whole.len() - 100]).expect("written");
    let out = analyze(&["--emit", "stats", cut.to_str().expect("utf-8")]);
    assert_eq!(out.status.code(), Some(65));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cut.pcapng: truncated or corrupt at byte offset "), "{err}");
    // The offset named is where a block starts, inside the file.
    let off: usize = err
        .split("byte offset ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no offset in {err}"));
    assert!(off < whole.len() - 100, "{off}");
    assert_eq!(&whole[off..off + 4], &6u32.to_le_bytes(), "an enhanced packet block starts there");
    let stats = &records(&out)[0];
    assert!(stats["packets"].as_u64().unwrap_or(0) >= 19, "{stats}");
}

#[test]
fn unreadable_inputs_get_clear_errors_and_other_files_still_run() {
    let dir = tempfile::tempdir().expect("temp dir");
    let text = dir.path().join("notes.txt");
    std::fs::write(&text, "not a capture\n").expect("written");
    // A pcap header with link type 127 (802.11 radiotap) and no packets.
    let radiotap = dir.path().join("radiotap.pcap");
    let mut h = Vec::new();
    for v in [0xa1b2_c3d4u32, 0x0004_0002, 0, 0, 65535, 127] {
        h.extend_from_slice(&v.to_le_bytes());
    }
    h.truncate(24);
    h[20..24].copy_from_slice(&127u32.to_le_bytes());
    std::fs::write(&radiotap, &h).expect("written");
    let good = data_dir().join("http_post.pcapng");
    let missing = dir.path().join("missing.pcap");
    let out = analyze(&[
        "--emit",
        "stats",
        missing.to_str().expect("utf-8"),
        text.to_str().expect("utf-8"),
        radiotap.to_str().expect("utf-8"),
        good.to_str().expect("utf-8"),
    ]);
    assert_eq!(out.status.code(), Some(65));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("missing.pcap: cannot open capture file"), "{err}");
    assert!(err.contains("notes.txt: cannot open capture file"), "{err}");
    assert!(
        err.contains("radiotap.pcap: link type 127 (IEEE802_11_RADIO) is not supported"),
        "{err}"
    );
    let stats = &records(&out)[0];
    assert_eq!(stats["files"], 4);
    assert_eq!(stats["files_failed"], 3);
    assert_eq!(stats["packets"], 21, "the good file is read whole");
}

#[test]
fn emit_anomalies_reports_the_scan_once() {
    let cap = data_dir().join("nmap_syn_scan.pcap");
    let out = analyze(&["--emit", "anomalies,stats", cap.to_str().expect("utf-8")]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let recs = records(&out);
    let anomalies: Vec<_> = recs.iter().filter(|r| r["record"] == "anomaly").collect();
    assert_eq!(anomalies.len(), 1, "one episode for one scan: {recs:?}");
    let a = anomalies[0];
    assert_eq!(a["kind"], "port_scan");
    assert_eq!(a["src_ip"], "10.99.0.1");
    assert_eq!(a["reasons"][0]["feature"], "host_dst_ports");
    // 150 ports scanned; the sketch estimates within a few percent.
    let score = a["score"].as_f64().expect("score");
    assert!((140.0..=165.0).contains(&score), "{score}");
    assert_eq!(a["threshold"], 50.0);
    assert_eq!(recs.last().expect("stats")["anomalies"], 1);
    // With a store, the scan's packets are its evidence, and export as a pcap libpcap reads.
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("edge.db");
    let out = analyze(&[
        "--emit",
        "stats",
        "--db",
        db.to_str().expect("utf-8"),
        cap.to_str().expect("utf-8"),
    ]);
    assert!(out.status.success());
    let id: i64 = rusqlite::Connection::open(&db)
        .expect("db")
        .query_row("SELECT id FROM anomalies WHERE kind = 'port_scan'", [], |r| r.get(0))
        .expect("the anomaly is stored");
    let pcap = dir.path().join("evidence.pcap");
    let export = Command::new(env!("CARGO_BIN_EXE_tapwatch-edge"))
        .args([
            "export-pcap",
            "--db",
            db.to_str().expect("utf-8"),
            "--anomaly",
            &id.to_string(),
            "-o",
        ])
        .arg(&pcap)
        .output()
        .expect("export-pcap");
    assert!(export.status.success(), "{}", String::from_utf8_lossy(&export.stderr));
    let mut capture = pcap::Capture::from_file(&pcap).expect("a pcap file");
    let mut n = 0;
    while capture.next_packet().is_ok() {
        n += 1;
    }
    // The 150 SYNs and the RSTs back, all to or from the scanner (not the ARP exchange).
    assert!((300..=310).contains(&n), "{n} evidence packets");
    // With a budget of 100 evidence packets an episode, the scan keeps its first 100; the rest
    // of its packets stay ring packets (none written twice, none lost).
    let budget = dir.path().join("budget.toml");
    let db2 = dir.path().join("budget.db");
    std::fs::write(
        &budget,
        format!("[device]\nid = \"t\"\n[store]\npath = {:?}\nevidence_max_packets = 100\n", db2),
    )
    .expect("config");
    let out = analyze(&[
        "--config",
        budget.to_str().expect("utf-8"),
        "--emit",
        "stats",
        "--db",
        db2.to_str().expect("utf-8"),
        cap.to_str().expect("utf-8"),
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let (evidence, ring, older): (i64, i64, i64) = rusqlite::Connection::open(&db2)
        .expect("db")
        .query_row(
            // Evidence: ring packets the store held, marked, and parts taken from memory.
            "SELECT count(anomaly_id) + (SELECT coalesce(sum(packets), 0) FROM evidence),
                    count(*) - count(anomaly_id),
                    (SELECT count(*) FROM packets WHERE anomaly_id IS NULL
                     AND (src = X'0a630001' OR dst = X'0a630001') AND ts_us <
                     max((SELECT coalesce(max(ts_us), 0) FROM packets WHERE anomaly_id IS NOT NULL),
                         (SELECT coalesce(max(last_us), 0) FROM evidence)))
             FROM packets",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .expect("packets");
    assert_eq!(evidence, 100);
    assert!(ring + evidence >= n as i64, "{ring} ring packets beside the evidence");
    assert_eq!(older, 0, "the evidence is the oldest of the scanner's packets");
    // Benign captures raise nothing.
    let cap = data_dir().join("http_post.pcapng");
    let out = analyze(&["--emit", "flows,anomalies,stats", cap.to_str().expect("utf-8")]);
    assert!(records(&out).iter().all(|r| r["record"] == "flow" || r["record"] == "stats"));
    let bad = analyze(&["--emit", "flows,alerts", cap.to_str().expect("utf-8")]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("invalid value 'alerts'"));
}

#[test]
fn bpf_filter_applies_and_a_bad_one_is_named() {
    let cap = data_dir().join("qinq_pppoe_dns.pcap");
    let out = analyze(&["--emit", "stats", "--filter", "vlan", cap.to_str().expect("utf-8")]);
    assert!(out.status.success());
    assert_eq!(records(&out)[0]["packets"], 2);
    let out = analyze(&["--filter", "port nonsense", cap.to_str().expect("utf-8")]);
    assert_eq!(out.status.code(), Some(65));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("invalid capture filter \"port nonsense\""), "{err}");
}

/// The one anomaly `analyze` raises on tests/data/attacks/`file`.
fn one_anomaly(file: &str) -> serde_json::Value {
    let cap = data_dir().join("attacks").join(file);
    let out = analyze(&["--emit", "anomalies", cap.to_str().expect("utf-8")]);
    assert!(out.status.success(), "{file}: {}", String::from_utf8_lossy(&out.stderr));
    let anomalies: Vec<_> =
        records(&out).into_iter().filter(|r| r["record"] == "anomaly").collect();
    assert_eq!(anomalies.len(), 1, "{file}: one attack, one anomaly: {anomalies:?}");
    anomalies[0].clone()
}

/// Attacks from many or spoofed sources, in public captures of real DDoS traffic
/// (tests/data/attacks, see PROVENANCE.md): each is one anomaly of its kind, named by its
/// victim, from the victim-side windows.
#[test]
fn victim_side_attacks_are_named_by_their_victim() {
    let cases = [
        ("pkt.TCP.DOMINATE.syn.ecn.cwr.pcapng", "syn_flood", "victim_syn_rate"),
        ("amp.TCP.reflection.SYNACK.pcap", "reflection", "victim_reflected_tcp"),
        ("amp.UDP.isakmp.pcap", "reflection", "victim_amplified_ipsec_nat_t"),
    ];
    for (file, kind, counter) in cases {
        let a = one_anomaly(file);
        assert_eq!(
            (a["kind"].as_str(), a["detector"].as_str()),
            (Some(kind), Some("window")),
            "{file}"
        );
        assert_eq!(a["src_ip"], "10.10.10.10", "{file}: named by its victim");
        assert_eq!(a["dst_ip"], "10.10.10.10", "{file}");
        assert_eq!(a["reasons"][0]["feature"], counter, "{file}");
    }
}

/// Scans, floods and fingerprinting that only the shape of what one source sends gives away, in
/// public captures (tests/data/attacks, see PROVENANCE.md): one anomaly each, from the source.
#[test]
fn one_source_attacks_are_named_by_their_shape() {
    let cases = [
        // 7,156 SYNs in 0.26 s (each captured twice) to 3,376 ports of one host, from 3,518
        // source ports, the next one for each SYN.
        ("cic-ddos-2019-synflood-first10000.pcap", "syn_flood", "172.16.0.5", "host_syn_rate"),
        // nmap -O: NULL, SYN+FIN+URG+PSH and FIN+PSH+URG probes to two ports.
        ("activeosfingerprinting.pcapng", "os_fingerprint", "172.16.16.128", "host_crafted_probes"),
        // nmap -sO: every IP protocol number to one host.
        ("nmap_ip_protocol_scan.pcap", "port_scan", "192.168.1.10", "host_ip_protocols"),
        // Scapy: a lone segment to port 80 for each of 63 flag combinations, NULL, SYN+FIN and
        // FIN+PSH+URG among them, each from a new source port.
        ("tcp_all_flags_one_way.pcap", "os_fingerprint", "10.0.0.10", "host_crafted_probes"),
        // THC-IPv6's rsmurf6: 1,000 echo requests from the all-nodes address to it in 8 ms.
        ("ipv6_rsmurf.pcap", "icmp_flood", "ff02::1", "host_icmp_echo_rate"),
    ];
    for (file, kind, src, counter) in cases {
        let a = one_anomaly(file);
        assert_eq!((a["kind"].as_str(), a["src_ip"].as_str()), (Some(kind), Some(src)), "{file}");
        assert_eq!(a["reasons"][0]["feature"], counter, "{file}");
    }
}

/// Benign public captures raise nothing: the protocol samples the other tests read, a client
/// whose connections to a web server are refused (which the shipped classifier calls a port
/// scan), a Skype and IRC session with many peers, and an interactive SSH session of four minutes
/// (tests/data and tests/data/benign, see
/// PROVENANCE.md).
#[test]
fn benign_captures_raise_nothing() {
    let dir = data_dir();
    let files = [
        "http_post.pcapng",
        "ipv6_fragments.pcapng",
        "dhcp_nolease_initialization.pcapng",
        "qinq_pppoe_dns.pcap",
        "null_nats.pcap",
        "rawip_bjnp.pcap",
        "benign/nowebaccess2.pcapng",
        "benign/skype_irc.cap",
        "benign/ssh_session.pcap",
    ];
    for file in files {
        let cap = dir.join(file);
        let out = analyze(&["--emit", "anomalies", cap.to_str().expect("utf-8")]);
        assert!(out.status.success(), "{file}: {}", String::from_utf8_lossy(&out.stderr));
        let anomalies: Vec<_> =
            records(&out).into_iter().filter(|r| r["record"] == "anomaly").collect();
        assert!(anomalies.is_empty(), "{file}: {anomalies:?}");
    }
}

/// A sweep of the local network by ARP alone (no IP packet at all), in a public capture: one
/// host_sweep from the host that asked.
#[test]
fn arp_sweep_is_a_host_sweep() {
    let a = one_anomaly("arp_sweep.pcap");
    assert_eq!(
        (a["kind"].as_str(), a["src_ip"].as_str()),
        (Some("host_sweep"), Some("10.0.0.128"))
    );
    assert_eq!(a["reasons"][0]["feature"], "host_arp_targets");
}

/// What only a protocol analyzer sees, in public captures made by others with real tools
/// (tests/data/attacks, see PROVENANCE.md): each is one anomaly of its kind from the attacker,
/// with the analyzer counter that tripped.
#[test]
fn protocol_analyzers_name_the_attack_and_its_source() {
    let cases = [
        ("heartbleed.pcap", "heartbleed", "173.203.79.216", "tls_heartbleed"),
        ("heartbleed-encrypted.pcap", "heartbleed", "54.221.166.250", "tls_heartbleed"),
        ("dhcp_flood.pcap", "dhcp_starvation", "128.2.5.243", "dhcp_client_requests"),
        ("arppoison.pcapng", "arp_spoof", "172.16.0.1", "arp_mac_addresses"),
        ("ftp-crack-first3000.pcap", "brute_force", "10.234.125.254", "auth_failures_ftp"),
        ("dns-tunnel-iodine.pcap", "dns_tunnel", "10.0.2.30", "dns_null_names"),
        ("dns_txt_commands.pcap", "dns_tunnel", "192.168.100.121", "dns_txt_queries"),
        ("smbexec.pcapng", "lateral_movement", "172.16.66.1", "smb_services_created"),
        ("sshguess.pcap", "brute_force", "192.168.56.1", "auth_failures_ssh"),
        ("zerologon_encrypted.pcapng", "exploit", "172.16.66.37", "rpc_netlogon_authentications"),
        ("ipv6_frag_overlap.pcap", "evasion", "2001:db8:1::2", "ip_fragment_overlaps"),
        ("ipv6_frag_length.pcap", "evasion", "2001:db8:1::2", "ip_fragment_lengths"),
        ("ipv6_frag_nested.pcap", "evasion", "2001:db8:1::2", "ipv6_fragment_headers"),
        ("ipv4_frag_garbage.pcap", "evasion", "10.0.0.2", "ip_fragment_split_headers"),
        (
            "ipv6_covert_dstopts.pcap",
            "evasion",
            "2001:db8:2:0:8e16:45ff:fee5:5ba2",
            "ipv6_covert_options",
        ),
        ("ipv6_too_big_1200.pcap", "evasion", "2001:db8:2::2", "ipv6_too_big_below_minimum"),
        ("urgent11.pcap", "exploit", "192.168.1.24", "tcp_urgent11_segments"),
        ("nmap_service_detection.pcap", "port_scan", "10.87.1.10", "http_scanner_requests"),
        ("http_xss.pcap", "web_attack", "192.168.3.109", "http_xss_attempts"),
        ("http_sql_injection.pcap", "web_attack", "192.168.3.109", "http_sql_injections"),
        ("http_path_traversal.pcapng", "web_attack", "10.2.2.101", "http_path_traversals"),
    ];
    for (file, kind, src, counter) in cases {
        let a = one_anomaly(file);
        assert_eq!(
            (a["kind"].as_str(), a["src_ip"].as_str(), a["detector"].as_str()),
            (Some(kind), Some(src), Some("window")),
            "{file}"
        );
        assert_eq!(a["reasons"][0]["feature"], counter, "{file}");
    }
}
