//! The SQLite store through `tapwatch-edge analyze --db`: what is written matches what was read,
//! and a process killed with SIGKILL while writing leaves a database that opens with every
//! committed row.
// Helpers here are test code too: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

mod common;
use rusqlite::Connection;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/data").join(name)
}

fn edge() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tapwatch-edge"))
}

fn count(db: &Connection, table: &str) -> i64 {
    db.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0)).unwrap()
}

#[test]
fn database_matches_the_json_output() {
    let dir = tempfile::tempdir().unwrap();
    let db_path = dir.path().join("edge.db");
    let mut files: Vec<PathBuf> = std::fs::read_dir(data(""))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "pcap" || e == "pcapng"))
        .collect();
    files.sort();
    let out = edge()
        .args(["analyze", "--emit", "flows,stats", "--db"])
        .arg(&db_path)
        .args(&files)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let records = common::records(&out);
    let flows: Vec<&serde_json::Value> = records.iter().filter(|r| r["record"] == "flow").collect();
    let stats = records.iter().find(|r| r["record"] == "stats").unwrap();

    let db = Connection::open(&db_path).unwrap();
    assert_eq!(count(&db, "traffic_features") as usize, flows.len());
    // Every packet is in the evidence ring (far below its 10,000 per interface), or the
    // evidence of an anomaly (parts taken from the ring in memory).
    let in_parts: i64 =
        db.query_row("SELECT coalesce(sum(packets), 0) FROM evidence", [], |r| r.get(0)).unwrap();
    assert_eq!(count(&db, "packets") + in_parts, stats["packets"].as_i64().unwrap());
    // Statistics intervals add up to the totals.
    let (p, b, started, ended): (i64, i64, i64, i64) = db
        .query_row(
            "SELECT sum(packets), sum(bytes), sum(flows_started), sum(flows_ended) FROM traffic_stats",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )
        .unwrap();
    assert_eq!(p, stats["packets"].as_i64().unwrap());
    assert_eq!(b, stats["bytes"].as_i64().unwrap());
    assert_eq!(started, flows.len() as i64);
    assert_eq!(ended, flows.len() as i64);
    // Each flow row is the JSON record: endpoints, counts and the feature vector.
    let mut stmt = db
        .prepare("SELECT src_ip, src_port, dst_ip, dst_port, packets, bytes, features FROM traffic_features")
        .unwrap();
    type StoredFlow = (String, u16, String, u16, u32, u64, Vec<u8>);
    let rows: Vec<StoredFlow> = stmt
        .query_map([], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?))
        })
        .unwrap()
        .map(Result::unwrap)
        .collect();
    for f in &flows {
        let found = rows.iter().find(|r| {
            r.0 == f["src_ip"].as_str().unwrap()
                && u64::from(r.1) == f["src_port"].as_u64().unwrap()
                && r.2 == f["dst_ip"].as_str().unwrap()
                && u64::from(r.3) == f["dst_port"].as_u64().unwrap()
                && u64::from(r.4) == f["packets"].as_u64().unwrap()
        });
        let row = found.unwrap_or_else(|| panic!("flow not stored: {f}"));
        assert_eq!(row.5, f["bytes"].as_u64().unwrap());
        // flow_duration, the third feature.
        let dur = tapwatch_edge::store::decode_features(&row.6).unwrap()[2];
        assert_eq!(f64::from(dur), f["features"]["flow_duration"].as_f64().unwrap());
    }
}

/// A capture of `n` one-packet UDP flows, one every millisecond.
fn many_flows(path: &Path, n: u32) {
    let cap = pcap::Capture::dead(pcap::Linktype::ETHERNET).unwrap();
    let mut out = cap.savefile(path).unwrap();
    for i in 0..n {
        let mut f = vec![0u8; 14 + 20 + 8 + 16];
        f[12] = 0x08;
        f[14] = 0x45;
        f[16..18].copy_from_slice(&44u16.to_be_bytes());
        f[22] = 64;
        f[23] = 17;
        f[26..30].copy_from_slice(&[10, 9, (i >> 8) as u8, i as u8]);
        f[30..34].copy_from_slice(&[10, 1, 0, 1]);
        f[34..36].copy_from_slice(&(1024 + (i % 50_000) as u16).to_be_bytes());
        f[36..38].copy_from_slice(&53u16.to_be_bytes());
        f[38..40].copy_from_slice(&24u16.to_be_bytes());
        let ms = i64::from(i);
        let header = pcap::PacketHeader {
            ts: libc::timeval {
                tv_sec: (1_700_000_000 + ms / 1000) as _,
                tv_usec: ((ms % 1000) * 1000) as _,
            },
            caplen: f.len() as u32,
            len: f.len() as u32,
        };
        out.write(&pcap::Packet::new(&header, &f));
    }
    out.flush().unwrap();
}

#[test]
fn sigkill_while_writing_keeps_every_committed_row() {
    let dir = tempfile::tempdir().unwrap();
    let capture = dir.path().join("many.pcap");
    many_flows(&capture, 400_000);
    let db_path = dir.path().join("edge.db");
    let mut child = edge()
        .args(["analyze", "--emit", "stats", "--db"])
        .arg(&db_path)
        .arg(&capture)
        .env("TAPWATCH_LOG", "tapwatch_edge::store=debug")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let mut committed = 0u64;
    let mut killed = false;
    for line in stderr.lines() {
        let line = line.unwrap();
        if let Some(n) = line.split("flows_total=").nth(1) {
            committed = committed.max(n.trim().parse().unwrap());
        }
        if !killed && committed >= 20_000 {
            child.kill().unwrap(); // SIGKILL
            killed = true;
        }
    }
    let status = child.wait().unwrap();
    assert!(killed, "the run ended before enough was committed ({committed})");
    assert!(!status.success());
    let db = Connection::open(&db_path).unwrap();
    let check: String = db.query_row("PRAGMA integrity_check", [], |r| r.get(0)).unwrap();
    assert_eq!(check, "ok");
    let rows = count(&db, "traffic_features") as u64;
    assert!(rows >= committed, "{rows} rows, {committed} reported committed");
    assert!(rows < 400_000, "killed before the end");
}

#[test]
fn truncated_file_with_db_keeps_what_was_read() {
    let dir = tempfile::tempdir().unwrap();
    let whole = std::fs::read(data("rawip_bjnp.pcap")).unwrap();
    let cut = dir.path().join("cut.pcap");
    std::fs::write(&cut, &whole[..whole.len() - 10]).unwrap();
    let db_path = dir.path().join("edge.db");
    let out = edge()
        .args(["analyze", "--emit", "stats", "--db"])
        .arg(&db_path)
        .arg(&cut)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(65));
    let db = Connection::open(&db_path).unwrap();
    assert_eq!(count(&db, "packets"), 9);
    let flow_packets: i64 =
        db.query_row("SELECT sum(packets) FROM traffic_features", [], |r| r.get(0)).unwrap();
    assert_eq!(flow_packets, 9);
}
