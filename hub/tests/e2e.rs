//! Edge to hub end to end, against real servers: Mosquitto and PostgreSQL on this machine (and
//! private instances of them where a test stops one), the real `tapwatch-hub` binary, and the
//! edge's store, outbox and sync from the `tapwatch-edge` library.
//!
//! Each test has its own database, topic prefix and (where it restarts one) its own broker or
//! PostgreSQL. In each, PostgreSQL must end with exactly the records the edge produced.

#![allow(clippy::unwrap_used)] // test helpers: a failed step is a failed test

mod procs;
use procs::*;

use firmware::features::N_FEATURES;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tapwatch_edge::config::{StoreConfig, SyncConfig};
use tapwatch_edge::store::{spawn_writer, AgeClock, FlowRow, Row, Store, StoreCounters};
use tapwatch_edge::sync::{SyncCounters, Until};

/// A PostgreSQL 15 cluster of the test's own (initdb as the postgres user), to restart.
struct PrivatePg {
    dir: PathBuf,
    port: u16,
    /// More server options (`-c name=value ...`).
    opts: String,
}

impl PrivatePg {
    fn start(dir: &Path) -> PrivatePg {
        let pg = PrivatePg::init(dir);
        pg.ctl("start");
        pg
    }
    fn init(dir: &Path) -> PrivatePg {
        let dir = dir.join("pg");
        std::fs::create_dir_all(&dir).unwrap();
        assert!(Command::new("chown")
            .arg("-R")
            .arg("postgres:")
            .arg(&dir)
            .status()
            .unwrap()
            .success());
        let bin = pg_bin();
        let ok = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(bin.join("initdb"))
            .args(["-A", "trust", "-U", "postgres", "--no-sync", "-D"])
            .arg(dir.join("data"))
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(ok.success(), "initdb failed");
        PrivatePg { dir, port: free_port(), opts: String::new() }
    }
    fn ctl(&self, what: &str) {
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off {}",
            self.port,
            self.dir.display(),
            self.opts
        );
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"])
            .arg(pg_bin().join("pg_ctl"))
            .arg("-D")
            .arg(self.dir.join("data"));
        c.args(["-w", "-m", "fast", "-o", &opts, "-l"]).arg(self.dir.join("log")).arg(what);
        assert!(c.stdout(Stdio::null()).status().unwrap().success(), "pg_ctl {what}");
    }
    fn server(&self) -> String {
        format!("host=127.0.0.1 port={} user=postgres", self.port)
    }
}

impl Drop for PrivatePg {
    fn drop(&mut self) {
        let _ = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(pg_bin().join("pg_ctl"))
            .arg("-D")
            .arg(self.dir.join("data"))
            .args(["-m", "immediate", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

fn pg_bin() -> PathBuf {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL server binaries in /usr/lib/postgresql")
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|p| p.join("initdb").exists())
        .collect();
    versions.sort();
    versions.pop().expect("initdb")
}

/// The edge: its store with the outbox, and its sync loop (started and stopped at will).
struct Edge {
    device: String,
    db: PathBuf,
    writer: Option<tapwatch_edge::store::Writer>,
    sync_cfg: SyncConfig,
    sync: Option<(tokio::sync::watch::Sender<bool>, std::thread::JoinHandle<()>)>,
    sync_counters: Arc<SyncCounters>,
    produced_flows: u64,
    produced_stats: u64,
    produced_metrics: u64,
}

impl Edge {
    fn new(dir: &Path, broker_port: u16, prefix: &str) -> Edge {
        Edge::with_outbox_max(dir, broker_port, prefix, 1_000_000)
    }

    fn with_outbox_max(dir: &Path, broker_port: u16, prefix: &str, max: u64) -> Edge {
        let device = unique("tap").replace('_', "-");
        let db = dir.join(format!("{device}.db"));
        let cfg = StoreConfig {
            path: db.clone(),
            batch_rows: 500,
            flush_interval_ms: 50,
            ..StoreConfig::default()
        };
        let store_counters = Arc::new(StoreCounters::default());
        let mut store = Store::open(&cfg, store_counters.clone()).unwrap();
        store.enable_outbox(&device, max).unwrap();
        let writer = spawn_writer(store, 4096, AgeClock::Off);
        let sync_cfg = SyncConfig {
            enabled: true,
            broker: format!("127.0.0.1:{broker_port}"),
            topic_prefix: prefix.to_string(),
            reconnect_min_ms: 100,
            reconnect_max_ms: 1000,
            keepalive_s: 5,
            // What the hub has not confirmed 2 s after its PUBACK goes again (the default is 30).
            resend_after_s: 2,
            ..SyncConfig::default()
        };
        Edge {
            device,
            db,
            writer: Some(writer),
            sync_cfg,
            sync: None,
            sync_counters: Arc::new(SyncCounters {
                store: store_counters,
                ..SyncCounters::default()
            }),
            produced_flows: 0,
            produced_stats: 0,
            produced_metrics: 0,
        }
    }

    fn start_sync(&mut self) {
        assert!(self.sync.is_none());
        let (tx, rx) = tokio::sync::watch::channel(false);
        let (cfg, device, db, counters) = (
            self.sync_cfg.clone(),
            self.device.clone(),
            self.db.clone(),
            self.sync_counters.clone(),
        );
        let h = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(tapwatch_edge::sync::run(
                cfg,
                device,
                db,
                counters,
                Until::Stopped,
                rx,
                Default::default(),
            ))
            .unwrap();
        });
        self.sync = Some((tx, h));
    }

    fn stop_sync(&mut self) {
        if let Some((tx, h)) = self.sync.take() {
            let _ = tx.send(true);
            let _ = h.join();
        }
    }

    /// Queue `n` flows (each with a unique start time), a statistics interval per 100 flows,
    /// and one metrics message.
    fn produce(&mut self, n: u64) {
        let tx = &self.writer.as_ref().unwrap().tx;
        for _ in 0..n {
            let i = self.produced_flows;
            let start = 1_790_000_000_000_000 + (i as i64) * 1000;
            tx.send(Row::Flows(vec![FlowRow {
                start_us: start,
                end_us: start + 500,
                src_ip: [10, 0, (i >> 8) as u8, i as u8].into(),
                src_port: (i % 60000) as u16 + 1024,
                dst_ip: [192, 0, 2, 1].into(),
                dst_port: 443,
                protocol: 6,
                vlan: 0,
                end_reason: "fin",
                packets: 10,
                bytes: 1000,
                features: [i as f32; N_FEATURES],
            }]))
            .unwrap();
            self.produced_flows += 1;
            if self.produced_flows.is_multiple_of(100) {
                let s = self.produced_stats as i64;
                tx.send(Row::Stats(Box::new(firmware::proto::StatsMsg {
                    schema: 1,
                    device: heapless::String::new(),
                    seq: 0,
                    ts: 0,
                    interval_start: 1_790_000_000_000_000 + s * 10_000_000,
                    interval_end: 1_790_000_000_000_000 + (s + 1) * 10_000_000,
                    packets: 1000,
                    bytes: 100_000,
                    tcp_packets: 1000,
                    udp_packets: 0,
                    icmp_packets: 0,
                    other_packets: 0,
                    flows_started: 100,
                    flows_ended: 100,
                    parse_errors: 0,
                    top_ports: heapless::Vec::new(),
                    top_talkers: heapless::Vec::new(),
                })))
                .unwrap();
                self.produced_stats += 1;
            }
        }
        let shared = tapwatch_edge::metrics::Shared::new(
            self.device.clone(),
            Arc::new(StoreCounters::default()),
        );
        tx.send(Row::Metrics(Box::new(shared.message()))).unwrap();
        self.produced_metrics += 1;
    }

    /// Produce `n` flows over about `secs` seconds, in steps.
    fn produce_over(&mut self, n: u64, secs: f64) {
        let steps = 20;
        for _ in 0..steps {
            self.produce(n / steps);
            std::thread::sleep(Duration::from_secs_f64(secs / steps as f64));
        }
    }

    fn send(&self, row: Row) {
        self.writer.as_ref().unwrap().tx.send(row).unwrap();
    }

    /// Flows in the edge's own store (what it produced and kept).
    fn stored_flows(&self) -> i64 {
        let c = rusqlite::Connection::open(&self.db).unwrap();
        c.query_row("SELECT count(*) FROM traffic_features", [], |r| r.get(0)).unwrap()
    }

    /// The outbox's messages (stream and seq) in id order, and each stream's last seq given.
    fn outbox_rows(&self) -> String {
        let c = rusqlite::Connection::open(&self.db).unwrap();
        let mut stmt = c
            .prepare(
                "SELECT x FROM (SELECT 0 AS k, id, stream || ':' || seq AS x FROM outbox
                 UNION ALL SELECT 1, 0, 'last ' || stream || ':' || last FROM sync_seq)
                 ORDER BY k, id",
            )
            .unwrap();
        let rows = stmt.query_map([], |r| r.get::<_, String>(0)).unwrap();
        rows.map(Result::unwrap).collect::<Vec<_>>().join(" ")
    }

    fn outbox(&self) -> i64 {
        let c = rusqlite::Connection::open(&self.db).unwrap();
        c.query_row("SELECT count(*) FROM outbox", [], |r| r.get(0)).unwrap()
    }

    /// Wait for the writer to have written everything sent so far.
    fn settle(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let lost = || self.sync_counters.store.rows_lost.load(Ordering::Relaxed);
        while self.stored_flows() < self.produced_flows as i64 {
            assert!(Instant::now() < deadline, "the store writer fell behind ({} lost)", lost());
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(lost(), 0, "the store writer lost rows");
    }
}

impl Drop for Edge {
    fn drop(&mut self) {
        self.stop_sync();
        if let Some(w) = self.writer.take() {
            drop(w.tx);
            let _ = w.handle.join();
        }
    }
}

/// Wait until PostgreSQL holds every record the edge produced, then check there is no more.
fn assert_exactly(db: &Database, edge: &Edge, hubs: &[&Hub]) {
    edge.settle();
    let want = edge.produced_flows as i64;
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let have = db.count(&format!(
            "SELECT count(*) FROM traffic_features WHERE device = '{}'",
            edge.device
        ));
        if have == want && edge.outbox() == 0 {
            break;
        }
        if Instant::now() > deadline {
            for h in hubs {
                eprintln!("--- hub log\n{}", h.log());
            }
            panic!("postgres has {have} of {want} flows; outbox {}", edge.outbox());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    // Give a late duplicate the chance to (wrongly) land, then count everything exactly.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        edge.sync_counters.store.outbox_depth.load(Ordering::Relaxed),
        0,
        "the outbox gauge follows the acknowledgements"
    );
    let d = &edge.device;
    assert_eq!(
        db.count(&format!("SELECT count(*) FROM traffic_features WHERE device = '{d}'")),
        want
    );
    assert_eq!(
        db.count(&format!(
            "SELECT count(DISTINCT start_ts) FROM traffic_features WHERE device = '{d}'"
        )),
        want,
        "no flow twice"
    );
    assert_eq!(
        db.count(&format!("SELECT count(*) FROM traffic_stats WHERE device = '{d}'")),
        edge.produced_stats as i64
    );
    assert_eq!(
        db.count(&format!("SELECT count(*) FROM system_metrics WHERE device = '{d}'")),
        edge.produced_metrics as i64
    );
    // The rollups add up to the intervals: nothing counted twice there either.
    assert_eq!(
        db.count(&format!(
            "SELECT coalesce(sum(packets), 0) FROM traffic_stats_1m WHERE device = '{d}'"
        )),
        edge.produced_stats as i64 * 1000
    );
    assert_eq!(
        db.count(&format!(
            "SELECT coalesce(sum(packets), 0) FROM traffic_stats_1h WHERE device = '{d}'"
        )),
        edge.produced_stats as i64 * 1000
    );
    // Features arrive intact: flow i carries i in every feature.
    assert_eq!(
        db.count(&format!(
            "SELECT count(*) FROM traffic_features WHERE device = '{d}'
             AND array_length(features, 1) = {N_FEATURES}
             AND features[1] = features[{N_FEATURES}]"
        )),
        want
    );
}

/// The usual set-up: a broker of the test's own, a database, a hub subscribed, and an edge
/// sending. Fields drop in this order: the edge stops first, the folder goes last.
struct Lab {
    edge: Edge,
    hub: Hub,
    broker: Broker,
    db: Database,
    prefix: String,
    dir: tempfile::TempDir,
}

impl Lab {
    fn new() -> Lab {
        let dir = setup();
        let broker = Broker::start(dir.path());
        let db = Database::create(SHARED_PG);
        let prefix = format!("{}/", unique("t"));
        let hub = Hub::start(dir.path(), "hub", broker.port, &prefix, &db.url());
        let mut edge = Edge::new(dir.path(), broker.port, &prefix);
        edge.start_sync();
        Lab { edge, hub, broker, db, prefix, dir }
    }
}

fn setup() -> tempfile::TempDir {
    if let Ok(f) = std::env::var("TAPWATCH_TEST_LOG") {
        let _ = tracing_subscriber::fmt().with_env_filter(f).with_test_writer().try_init();
    }
    let _ = Command::new("pg_ctlcluster")
        .args(["--skip-systemctl-redirect", "15", "main", "start"])
        .status();
    tempfile::Builder::new().prefix("tapwatch-e2e").tempdir().unwrap()
}

#[test]
fn test_end_to_end_counts_and_dead_letters() {
    let Lab { mut edge, hub, broker, db, prefix, dir } = Lab::new();
    edge.produce(3000);
    assert_exactly(&db, &edge, &[&hub]);
    let d = edge.device.clone();
    assert_eq!(db.query(&format!("SELECT state FROM devices WHERE id = '{d}'")).trim(), "online");

    // Bad input on every count: refused, kept, counted by reason; nothing partial is stored.
    let publish = |topic: &str, payload: &[u8]| {
        let f = dir.path().join("payload");
        std::fs::write(&f, payload).unwrap();
        let ok = Command::new("mosquitto_pub")
            .args(["-h", "127.0.0.1", "-p", &broker.port.to_string(), "-q", "1", "-t"])
            .arg(format!("{prefix}{topic}"))
            .arg("-f")
            .arg(&f)
            .status()
            .unwrap();
        assert!(ok.success());
    };
    let stats = |device: &str, schema: u32| {
        format!(
            r#"{{"schema":{schema},"device":"{device}","seq":999999,"ts":1790000000000000,
            "interval_start":1790000000000000,"interval_end":1790000060000000,"packets":1,
            "bytes":1,"tcp_packets":1,"udp_packets":0,"icmp_packets":0,"other_packets":0,
            "flows_started":0,"flows_ended":0,"parse_errors":0,"top_ports":[],"top_talkers":[]}}"#
        )
    };
    publish(&format!("tapwatch/v1/{d}/stats"), b"{\"schema\": 1, \"device\":");
    publish(&format!("tapwatch/v1/{d}/stats"), stats(&d, 7).as_bytes());
    publish(&format!("tapwatch/v1/{d}/stats"), stats("someone-else", 1).as_bytes());
    // Over the 1 MiB the hub's client used to take: the broker dropped it unseen.
    publish(&format!("tapwatch/v1/{d}/flows"), &vec![b' '; 2 << 20]);
    publish(&format!("tapwatch/v1/{d}/flows"), stats(&d, 1).as_bytes());
    let deadline = Instant::now() + Duration::from_secs(20);
    while db.count("SELECT count(*) FROM dead_letters") < 5 {
        assert!(
            Instant::now() < deadline,
            "dead letters: {}",
            db.query("SELECT reason FROM dead_letters")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let reasons = db.query("SELECT reason FROM dead_letters ORDER BY reason");
    let reasons: Vec<&str> = reasons.lines().collect();
    assert_eq!(
        reasons,
        ["device_mismatch", "malformed_json", "oversize", "schema_version", "shape"]
    );
    assert_eq!(db.count("SELECT count(*) FROM traffic_stats WHERE seq = 999999"), 0);
    assert_eq!(
        db.count("SELECT max(octet_length(payload)) FROM dead_letters"),
        tapwatch_hub::contract::MAX_PAYLOAD as i64,
        "an oversize payload is kept cut to the largest accepted"
    );
    assert!(db
        .query("SELECT detail FROM dead_letters WHERE reason = 'oversize'")
        .contains("2097152"));
    let metrics = hub.get("/metrics");
    for reason in ["device_mismatch", "malformed_json", "oversize", "schema_version", "shape"] {
        assert!(
            metrics.contains(&format!("tapwatch_ingest_rejected_total{{reason=\"{reason}\"}} 1")),
            "{metrics}"
        );
    }
    assert!(hub.get("/healthz").starts_with("HTTP/1.0 200"));
    // Anomaly episodes from the edge's detector: an episode opened then updated is one row with
    // the update's count.
    let mut msg: firmware::proto::AnomalyMsg = serde_json::from_value(serde_json::json!({
        "schema": 1, "device": "", "seq": 0, "ts": 0, "id": 7, "kind": "port_scan",
        "severity": "medium", "confidence": 0.9, "score": 120.0, "threshold": 50.0,
        "detector": "window", "src_ip": "10.9.9.9", "dst_ip": null, "dst_port": null,
        "protocol": 6, "first_seen": 1_790_000_000_000_000i64,
        "last_seen": 1_790_000_000_000_000i64, "count": 1,
        "reasons": [{"feature": "host_dst_ports", "value": 120.0, "contribution": 50.0}]
    }))
    .unwrap();
    edge.send(Row::Anomaly(Box::new(msg.clone())));
    msg.count = 12;
    msg.last_seen += 11_000_000;
    edge.send(Row::Anomaly(Box::new(msg.clone())));
    let deadline = Instant::now() + Duration::from_secs(20);
    while db.count(&format!("SELECT count(*) FROM anomalies WHERE device = '{d}' AND count = 12"))
        != 1
    {
        assert!(Instant::now() < deadline, "{}", db.query("SELECT * FROM anomalies"));
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(db.count(&format!("SELECT count(*) FROM anomalies WHERE device = '{d}'")), 1);
    assert_eq!(
        db.query(&format!("SELECT kind FROM anomalies WHERE device = '{d}'")).trim(),
        "port_scan"
    );
    // Its evidence: the ring's packets to or from the source, three already stored (marked)
    // and two still in memory (sent with the marking), stored and sent as pcap parts.
    let iface: std::sync::Arc<str> = std::sync::Arc::from("eth9");
    let packet = |i: u8| tapwatch_edge::store::PacketRow {
        ts_us: 1_790_000_000_000_000 + i64::from(i),
        interface: iface.clone(),
        link_type: 1,
        wire_len: 1514,
        src: Some([10, 9, 9, 9].into()),
        dst: Some([10, 0, 0, i].into()),
        data: vec![i; 64],
    };
    for i in 0..3u8 {
        edge.send(Row::Packet(Box::new(packet(i))));
    }
    edge.send(Row::Evidence {
        anomaly: 7,
        host: [10, 9, 9, 9].into(),
        since_us: 1_790_000_000_000_000,
        packets: vec![packet(3), packet(4)],
    });
    let sql = format!(
        "SELECT coalesce(sum(packets), 0) FROM anomaly_evidence WHERE device = '{d}' AND edge_id = 7"
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while db.count(&sql) != 5 {
        assert!(Instant::now() < deadline, "evidence packets: {}", db.count(&sql));
        std::thread::sleep(Duration::from_millis(100));
    }
    let pcap = db.query(&format!(
        "SELECT encode(pcap, 'hex') FROM anomaly_evidence WHERE device = '{d}' AND edge_id = 7"
    ));
    let bytes: Vec<u8> = (0..pcap.trim().len() / 2)
        .map(|i| u8::from_str_radix(&pcap.trim()[2 * i..2 * i + 2], 16).unwrap())
        .collect();
    let mut r = pcap_file::pcap::PcapReader::new(&bytes[..]).unwrap();
    let first = r.next_packet().unwrap().unwrap();
    assert_eq!((first.orig_len, first.data.len()), (1514, 64));
    // The hub still ingests after all that.
    edge.produce(100);
    assert_exactly(&db, &edge, &[&hub]);
}

#[test]
fn test_unknown_device_is_refused_until_added() {
    let dir = setup();
    let broker = Broker::start(dir.path());
    let db = Database::create(SHARED_PG);
    let prefix = format!("{}/", unique("t"));
    let mut hub = Hub::configure(dir.path(), "hub", broker.port, &prefix, &db.url());
    // This hub refuses devices it does not know.
    let text = std::fs::read_to_string(&hub.config).unwrap();
    std::fs::write(
        &hub.config,
        text.replace("auto_register_devices = true", "auto_register_devices = false"),
    )
    .unwrap();
    hub.restart();
    let mut edge = Edge::new(dir.path(), broker.port, &prefix);
    edge.start_sync();
    edge.produce(64);
    edge.settle();
    let deadline = Instant::now() + Duration::from_secs(20);
    while db.count("SELECT count(*) FROM dead_letters WHERE reason = 'unknown_device'") < 2 {
        assert!(Instant::now() < deadline, "no dead letters: {}", hub.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(db.count("SELECT count(*) FROM traffic_features"), 0);
    // Refused, so not confirmed: the edge keeps every message and sends it again.
    assert!(edge.outbox() >= 2, "the edge must keep what the hub refused");
    let out = Command::new(env!("CARGO_BIN_EXE_tapwatch-hub"))
        .args(["device", "add", "--config"])
        .arg(&hub.config)
        .arg(&edge.device)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // Once added, what it produced before arrives too (the refused copies stay dead letters).
    edge.produce(64);
    assert_exactly(&db, &edge, &[&hub]);
}

#[test]
fn test_broker_restart_during_stream() {
    let Lab { mut edge, hub, mut broker, db, prefix: _, dir: _dir } = Lab::new();
    edge.produce_over(2000, 1.0);
    broker.stop();
    edge.produce_over(2000, 1.0);
    broker.restart();
    edge.produce_over(2000, 1.0);
    assert_exactly(&db, &edge, &[&hub]);
    assert!(edge.sync_counters.disconnects.load(Ordering::Relaxed) >= 1);
}

/// The broker restarts while the hub is away, and the edge is back first and sends its whole
/// backlog, which the broker acknowledges. With the hub's plain subscription the broker keeps
/// it with its session over the restart and queues the backlog for the hub; with a shared one
/// (Mosquitto 2.0 does not keep those over a restart) it drops the backlog unmatched, after its
/// PUBACK, and only the hub's end-to-end confirmation saves it: the edge still holds every
/// message and sends again what the hub has not confirmed.
fn broker_restart_with_the_edge_back_before_the_hub(share_group: &str) {
    let dir = setup();
    let mut broker = Broker::start(dir.path());
    let db = Database::create(SHARED_PG);
    let prefix = format!("{}/", unique("t"));
    let mut hub = Hub::configure(dir.path(), "hub", broker.port, &prefix, &db.url());
    let text = std::fs::read_to_string(&hub.config).unwrap();
    let text = text.replace("[mqtt]\n", &format!("[mqtt]\nshare_group = \"{share_group}\"\n"));
    std::fs::write(&hub.config, text).unwrap();
    hub.restart();
    let mut edge = Edge::new(dir.path(), broker.port, &prefix);
    edge.start_sync();
    edge.produce_over(1000, 0.5);
    hub.kill9();
    broker.stop();
    edge.produce_over(2000, 1.0);
    broker.restart();
    // The edge reconnects and the broker acknowledges the whole backlog; nothing confirms it.
    edge.settle();
    let deadline = Instant::now() + Duration::from_secs(30);
    while (edge.sync_counters.unconfirmed.load(Ordering::Relaxed) as i64) < edge.outbox() {
        assert!(Instant::now() < deadline, "the broker did not take the backlog");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(edge.outbox() > 0, "the outbox keeps what the hub has not confirmed");
    hub.restart();
    assert_exactly(&db, &edge, &[&hub]);
    let c = &edge.sync_counters;
    if !share_group.is_empty() {
        // The broker dropped the backlog: it came because the edge sent it again.
        assert!(c.resent.iter().map(|r| r.load(Ordering::Relaxed)).sum::<u64>() > 0);
    }
    assert_eq!(db.count("SELECT coalesce(sum(lost), 0) FROM device_streams"), 0);
}

#[test]
fn test_broker_restart_with_the_edge_back_before_the_hub() {
    broker_restart_with_the_edge_back_before_the_hub("");
}

#[test]
fn test_broker_restart_with_the_edge_back_before_hubs_sharing_a_subscription() {
    broker_restart_with_the_edge_back_before_the_hub("hubs");
}

#[test]
fn test_hub_killed_during_ingest() {
    let Lab { mut edge, mut hub, broker: _broker, db, prefix: _, dir: _dir } = Lab::new();
    edge.produce_over(3000, 1.0);
    hub.kill9();
    edge.produce_over(3000, 1.0);
    hub.restart();
    edge.produce_over(3000, 1.0);
    hub.kill9();
    hub.restart();
    assert_exactly(&db, &edge, &[&hub]);
}

#[test]
fn test_postgres_restart_during_ingest() {
    let dir = setup();
    let broker = Broker::start(dir.path());
    let pg = PrivatePg::start(dir.path());
    let db = Database::create(&pg.server());
    let prefix = format!("{}/", unique("t"));
    let hub = Hub::start(dir.path(), "hub", broker.port, &prefix, &db.url());
    let mut edge = Edge::new(dir.path(), broker.port, &prefix);
    edge.start_sync();
    edge.produce_over(2000, 1.0);
    pg.ctl("stop");
    edge.produce_over(2000, 1.0);
    pg.ctl("start");
    edge.produce_over(2000, 1.0);
    assert_exactly(&db, &edge, &[&hub]);
    assert!(hub.log().contains("retrying"), "the hub saw the database go");
}

/// An edge offline long enough for its outbox bound to drop the oldest messages: back online,
/// it sends the rest, and its outbox floor (in its metrics messages) tells the hub the dropped
/// seqs will never come. The hub counts each lost once, per stream, confirms past them, and
/// the outbox empties; nothing else is missing.
#[test]
fn test_seqs_the_edge_dropped_are_counted_lost_once() {
    let dir = setup();
    let broker = Broker::start(dir.path());
    let db = Database::create(SHARED_PG);
    let prefix = format!("{}/", unique("t"));
    let hub = Hub::start(dir.path(), "hub", broker.port, &prefix, &db.url());
    let mut edge = Edge::with_outbox_max(dir.path(), broker.port, &prefix, 40);
    edge.start_sync();
    edge.produce(320);
    assert_exactly(&db, &edge, &[&hub]);
    edge.stop_sync();
    // Offline: 100 flow batches, 32 stats, 1 metrics; the bound keeps 40 (at its next run,
    // within 10 s), the oldest dropped.
    edge.produce(3200);
    edge.settle();
    let deadline = Instant::now() + Duration::from_secs(30);
    while edge.outbox() > 40 {
        assert!(Instant::now() < deadline, "the outbox bound did not apply");
        std::thread::sleep(Duration::from_millis(200));
    }
    // A metrics message queued after the drop carries the outbox's new floor.
    edge.produce(0);
    edge.start_sync();
    let dropped: Vec<u64> =
        edge.sync_counters.store.outbox_dropped.iter().map(|d| d.load(Ordering::Relaxed)).collect();
    assert!(dropped.iter().sum::<u64>() >= 90, "{dropped:?}");
    let deadline = Instant::now() + Duration::from_secs(60);
    while edge.outbox() > 0 {
        assert!(
            Instant::now() < deadline,
            "outbox {} not confirmed ({} rows lost): {}\nedge outbox: {}",
            edge.outbox(),
            edge.sync_counters.store.rows_lost.load(Ordering::Relaxed),
            db.query("SELECT * FROM device_streams"),
            edge.outbox_rows()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let d = edge.device.clone();
    for (i, s) in firmware::proto::Stream::ALL.iter().enumerate() {
        if !s.confirmed() {
            continue;
        }
        let lost = db.count(&format!(
            "SELECT coalesce(sum(lost), 0) FROM device_streams WHERE device = '{d}' AND stream = '{}'",
            s.name()
        ));
        assert_eq!(lost, dropped[i] as i64, "{} lost", s.name());
    }
    assert_eq!(
        db.count(&format!(
            "SELECT coalesce(sum(missing), 0) FROM device_streams WHERE device = '{d}'"
        )),
        0
    );
    // Counted once: more messages (and floors) later add nothing.
    edge.produce(320);
    edge.settle();
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        db.count(&format!("SELECT sum(lost) FROM device_streams WHERE device = '{d}'")),
        dropped.iter().sum::<u64>() as i64
    );
    assert!(hub.get("/metrics").contains("tapwatch_ingest_seqs_lost"));
}

#[test]
fn test_edge_offline_and_back() {
    // (Every part is bound: a part left out of the pattern would be dropped, and stopped, here.)
    let Lab { mut edge, hub, broker: _broker, db, prefix: _, dir: _dir } = Lab::new();
    edge.produce_over(1000, 0.5);
    edge.stop_sync();
    // Offline: records pile up in the outbox.
    edge.produce_over(3000, 1.0);
    edge.settle();
    assert!(edge.outbox() >= 3000 / 32);
    let d = edge.device.clone();
    let deadline = Instant::now() + Duration::from_secs(10);
    while db.query(&format!("SELECT state FROM devices WHERE id = '{d}'")).trim() != "offline" {
        assert!(Instant::now() < deadline, "the device should show offline");
        std::thread::sleep(Duration::from_millis(100));
    }
    edge.start_sync();
    assert_exactly(&db, &edge, &[&hub]);
    assert_eq!(db.query(&format!("SELECT state FROM devices WHERE id = '{d}'")).trim(), "online");
}

#[test]
fn test_the_edge_shows_online_after_its_clock_stepped_back() {
    let Lab { mut edge, hub, broker: _broker, db, prefix: _, dir: _dir } = Lab::new();
    edge.produce(100);
    assert_exactly(&db, &edge, &[&hub]);
    edge.stop_sync();
    // What a run with the clock an hour ahead leaves: its last will (offline, seq an hour of
    // milliseconds ahead) taken by the hub, and that seq kept in the edge's database.
    let ahead =
        SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as i64 + 3_600_000;
    let d = edge.device.clone();
    db.query(&format!(
        "UPDATE devices SET state = 'offline', state_seq = {ahead} WHERE id = '{d}'"
    ));
    let c = rusqlite::Connection::open(&edge.db).unwrap();
    c.execute("INSERT OR REPLACE INTO sync_will (id, seq) VALUES (0, ?1)", [ahead]).unwrap();
    drop(c);
    // Back on the true clock, the edge comes back: the hub shows it online.
    edge.start_sync();
    let deadline = Instant::now() + Duration::from_secs(15);
    while db.query(&format!("SELECT state FROM devices WHERE id = '{d}'")).trim() != "online" {
        assert!(Instant::now() < deadline, "the device should show online again");
        std::thread::sleep(Duration::from_millis(100));
    }
    let seq = db.count(&format!("SELECT state_seq FROM devices WHERE id = '{d}'"));
    assert!(seq > ahead, "{seq} > {ahead}");
}

#[test]
fn test_two_hubs_share_the_load() {
    let dir = setup();
    let broker = Broker::start(dir.path());
    let db = Database::create(SHARED_PG);
    let prefix = format!("{}/", unique("t"));
    let shared = |name| {
        let mut h = Hub::configure(dir.path(), name, broker.port, &prefix, &db.url());
        let text = std::fs::read_to_string(&h.config).unwrap();
        let text = text.replace("[mqtt]\n", "[mqtt]\nshare_group = \"hubs\"\n");
        std::fs::write(&h.config, text).unwrap();
        h.restart();
        h
    };
    let (a, b) = (shared("hub-a"), shared("hub-b"));
    std::thread::sleep(Duration::from_millis(500));
    let mut edge = Edge::new(dir.path(), broker.port, &prefix);
    edge.start_sync();
    edge.produce_over(6400, 1.0);
    assert_exactly(&db, &edge, &[&a, &b]);
    let by_hub = db.query(&format!(
        "SELECT hub, count(*) FROM ingest_log WHERE stream = 'flows' AND device = '{}' GROUP BY hub",
        edge.device
    ));
    let counts: Vec<i64> =
        by_hub.lines().filter_map(|l| l.split('|').nth(1)?.parse().ok()).collect();
    assert_eq!(counts.len(), 2, "both hubs took messages: {by_hub}");
    assert!(counts.iter().all(|c| *c >= 10), "{by_hub}");
}

#[test]
fn test_embedded_broker() {
    let dir = setup();
    let db = Database::create(SHARED_PG);
    let prefix = format!("{}/", unique("t"));
    let (edges, hubs) = (free_port(), free_port());
    // The hub starts its own broker: edges connect to it, its ingest too.
    let mut hub = Hub::configure(dir.path(), "hub", 1, &prefix, &db.url());
    let text = std::fs::read_to_string(&hub.config).unwrap();
    std::fs::write(
        &hub.config,
        format!(
            "[broker]\nembedded = true\nlisten = \"127.0.0.1:{edges}\"\nlisten_v5 = \"127.0.0.1:{hubs}\"\n{text}"
        ),
    )
    .unwrap();
    // Every edge needs its device credential.
    let mut edge = Edge::new(dir.path(), edges, &prefix);
    let pw = dir.path().join("edge-password");
    let out = Command::new(env!("CARGO_BIN_EXE_tapwatch-hub"))
        .args(["device", "add", "--config"])
        .arg(&hub.config)
        .arg("--password-file")
        .arg(&pw)
        .arg(&edge.device)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    hub.restart();
    // Anonymous, then a wrong password: refused, nothing leaves the outbox.
    assert_refused(&mut edge);
    edge.sync_cfg.username = edge.device.clone();
    edge.sync_cfg.password_file = dir.path().join("wrong");
    std::fs::write(&edge.sync_cfg.password_file, "guess\n").unwrap();
    assert_refused(&mut edge);
    edge.sync_cfg.password_file = pw;
    edge.start_sync();
    edge.produce_over(3000, 1.0);
    assert_exactly(&db, &edge, &[&hub]);
    // Its ingest acknowledged in the order messages came, its own acks to the edges among
    // them: rumqttd drops a client that does not (and the hub would reconnect again and again).
    let log = hub.log();
    assert!(!log.contains("out of order ack"), "{log}");
    // A port taken is a clear error at start.
    let out = Command::new(env!("CARGO_BIN_EXE_tapwatch-hub"))
        .args(["run", "--config"])
        .arg(&hub.config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("broker.listen 127.0.0.1:{edges}")), "{err}");
}

/// The edge, sending with credentials the broker refuses: no connection, and what it produces
/// stays in its outbox.
fn assert_refused(edge: &mut Edge) {
    edge.start_sync();
    edge.produce(320);
    edge.settle();
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(edge.sync_counters.connects.load(Ordering::Relaxed), 0);
    assert!(edge.outbox() >= 10);
    edge.stop_sync();
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl").args(args).current_dir(dir).output().expect("openssl");
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A P-256 key `NAME.key` and certificate `NAME.crt` for `subject`, signed by the CA in `dir`
/// with the extensions in `ext` (a file in `dir`).
fn issue(dir: &Path, name: &str, subject: &str, ext: &str) {
    let (key, csr, crt) = (format!("{name}.key"), format!("{name}.csr"), format!("{name}.crt"));
    let ec = ["req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    openssl(dir, &[&ec[..], &["-keyout", &key, "-out", &csr, "-subj", subject]].concat());
    let sign = ["x509", "-req", "-in", &csr, "-CA", "ca.crt", "-CAkey", "ca.key"];
    let out = ["-CAcreateserial", "-out", &crt, "-days", "2", "-extfile", ext];
    openssl(dir, &[&sign[..], &out].concat());
}

/// A client certificate `NAME.crt` (and `NAME.key`) for CN=NAME, signed by `make_certs`'s CA.
fn make_client_cert(dir: &Path, name: &str) {
    std::fs::write(dir.join("client.ext"), "extendedKeyUsage=clientAuth\n").unwrap();
    issue(dir, name, &format!("/CN={name}"), "client.ext");
}

/// A certificate authority and a server certificate for 127.0.0.1 (openssl, P-256).
fn make_certs(dir: &Path) {
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    let ca = ["-keyout", "ca.key", "-out", "ca.crt", "-days", "2", "-subj", "/CN=tapwatch test CA"];
    openssl(dir, &[&["req", "-x509"][..], &ec, &ca].concat());
    std::fs::write(dir.join("san.ext"), "subjectAltName=IP:127.0.0.1\n").unwrap();
    issue(dir, "srv", "/CN=127.0.0.1", "san.ext");
}

#[test]
fn test_edge_over_tls() {
    let dir = setup();
    let certs = dir.path().join("certs");
    std::fs::create_dir_all(&certs).unwrap();
    make_certs(&certs);
    let other = dir.path().join("other");
    std::fs::create_dir_all(&other).unwrap();
    make_certs(&other);
    // Edges connect with TLS; the hub, beside the broker, on the plain listener.
    let tls_port = free_port();
    let broker = Broker::start_with(
        dir.path().join("mosquitto"),
        format!(
            "listener {tls_port} 127.0.0.1\ncafile {c}/ca.crt\ncertfile {c}/srv.crt\nkeyfile {c}/srv.key\n",
            c = certs.display()
        ),
    );
    wait_port(tls_port);
    let db = Database::create(SHARED_PG);
    let prefix = format!("{}/", unique("t"));
    let hub = Hub::start(dir.path(), "hub", broker.port, &prefix, &db.url());
    let mut edge = Edge::new(dir.path(), tls_port, &prefix);
    edge.sync_cfg.tls = true;
    // A CA that did not sign the broker's certificate: no connection, nothing leaves the outbox.
    edge.sync_cfg.ca_file = other.join("ca.crt");
    assert_refused(&mut edge);
    // The right CA: everything arrives.
    edge.sync_cfg.ca_file = certs.join("ca.crt");
    edge.start_sync();
    edge.produce(320);
    assert_exactly(&db, &edge, &[&hub]);
    assert!(edge.sync_counters.connects.load(Ordering::Relaxed) >= 1);
}

#[test]
fn test_broker_with_passwords() {
    let dir = setup();
    let pw = dir.path().join("passwords");
    for (i, (user, pass)) in
        [("tap-user", "tap-secret"), ("hub-user", "hub-secret")].iter().enumerate()
    {
        let mut c = Command::new("mosquitto_passwd");
        if i == 0 {
            c.arg("-c");
        }
        assert!(c.args(["-b"]).arg(&pw).args([user, pass]).status().unwrap().success());
    }
    let broker = Broker::start_with(
        dir.path().join("mosquitto"),
        format!("allow_anonymous false\npassword_file {}\n", pw.display()),
    );
    let db = Database::create(SHARED_PG);
    let prefix = format!("{}/", unique("t"));
    let mut hub = Hub::configure(dir.path(), "hub", broker.port, &prefix, &db.url());
    let hub_pw = dir.path().join("hub-password");
    std::fs::write(&hub_pw, "hub-secret\n").unwrap();
    let text = std::fs::read_to_string(&hub.config).unwrap();
    std::fs::write(
        &hub.config,
        text.replace(
            "[mqtt]\n",
            &format!("[mqtt]\nusername = \"hub-user\"\npassword_file = \"{}\"\n", hub_pw.display()),
        ),
    )
    .unwrap();
    hub.restart();
    let mut edge = Edge::new(dir.path(), broker.port, &prefix);
    let edge_pw = dir.path().join("edge-password");
    edge.sync_cfg.username = "tap-user".into();
    edge.sync_cfg.password_file = edge_pw.clone();
    // A wrong password: refused, nothing leaves the outbox.
    std::fs::write(&edge_pw, "guess\n").unwrap();
    assert_refused(&mut edge);
    std::fs::write(&edge_pw, "tap-secret\n").unwrap();
    edge.start_sync();
    assert_exactly(&db, &edge, &[&hub]);
}

/// Where Debian puts Mosquitto's dynamic-security plugin (the library directory of the arch).
fn dynsec_plugin() -> PathBuf {
    std::fs::read_dir("/usr/lib")
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.path().join("mosquitto_dynamic_security.so"))
        .find(|p| p.exists())
        .expect("mosquitto_dynamic_security.so (Debian package mosquitto)")
}

/// `mosquitto_pub` or `mosquitto_sub` (MQTT 5, debug output) as `user`; what it printed.
fn mosquitto_as(tool: &str, port: u16, user: &str, password: &str, args: &[&str]) -> String {
    let out = Command::new("timeout")
        .args(["3", tool, "-h", "127.0.0.1", "-p", &port.to_string(), "-V", "mqttv5", "-d"])
        .args(["-u", user, "-P", password, "-q", "1"])
        .args(args)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

/// Each device speaks only as itself at the broker: with only its own password, device A can
/// neither publish as B, nor read B's messages, nor join the hub's shared subscription (which
/// swallowed half of B's records); B's records all arrive, and nothing A tried is stored.
#[test]
fn test_devices_isolated_at_the_broker() {
    let dir = setup();
    let dynsec = dir.path().join("dynsec.json");
    let ok = Command::new("mosquitto_ctrl")
        .args(["dynsec", "init"])
        .arg(&dynsec)
        .args(["broker-admin", "admin-secret-0123"])
        .output()
        .unwrap();
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    let broker = Broker::start_with(
        dir.path().join("mosquitto"),
        format!(
            "allow_anonymous false\nplugin {}\nplugin_opt_config_file {}\n",
            dynsec_plugin().display(),
            dynsec.display()
        ),
    );
    let db = Database::create(SHARED_PG);
    let prefix = format!("{}/", unique("t"));
    let mut hub = Hub::configure(dir.path(), "hub", broker.port, &prefix, &db.url());
    let secret = |name: &str, value: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, format!("{value}\n")).unwrap();
        p
    };
    let (hub_pw, admin_pw) =
        (secret("hub-password", "hub-secret-0123"), secret("admin-password", "admin-secret-0123"));
    let text = std::fs::read_to_string(&hub.config).unwrap();
    std::fs::write(
        &hub.config,
        text.replace(
            "[mqtt]\n",
            &format!(
                "[mqtt]\nusername = \"hub-user\"\npassword_file = \"{}\"\n\
                 admin_username = \"broker-admin\"\nadmin_password_file = \"{}\"\n",
                hub_pw.display(),
                admin_pw.display()
            ),
        ),
    )
    .unwrap();
    let hub_cmd = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_tapwatch-hub"))
            .args(args)
            .arg("--config")
            .arg(&hub.config)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "{args:?}: {text}{}", String::from_utf8_lossy(&out.stderr));
        text
    };
    hub_cmd(&["broker", "init"]);
    let mut edge = Edge::new(dir.path(), broker.port, &prefix);
    let b = edge.device.clone();
    let b_pw = dir.path().join("b-password");
    hub_cmd(&["device", "add", &b, "--password-file", b_pw.to_str().unwrap()]);
    let said = hub_cmd(&["device", "add", "tap-a"]);
    let a_pw = said.split("password ").nth(1).unwrap().trim().to_string();
    hub.restart();

    edge.sync_cfg.username = b.clone();
    edge.sync_cfg.password_file = b_pw;
    edge.start_sync();
    edge.produce(320);
    assert_exactly(&db, &edge, &[&hub]);

    let port = broker.port;
    let pub_a = |topic: String, payload: &str| {
        let args = ["-i", "tap-a", "-t", &topic, "-m", payload];
        mosquitto_as("mosquitto_pub", port, "tap-a", &a_pw, &args)
    };
    let t = 1_790_000_000_000_000i64;
    // A publishes an anomaly as B, and pins B's status: refused at the broker (135).
    let forged = format!(
        r#"{{"schema":1,"device":"{b}","seq":1000000,"ts":{t},"id":77,"kind":"port_scan",
        "severity":"critical","confidence":1.0,"score":1.0,"threshold":1.0,"detector":"forged",
        "src_ip":"10.6.6.6","dst_ip":null,"dst_port":null,"protocol":6,"first_seen":{t},
        "last_seen":{t},"count":1,"reasons":[]}}"#
    );
    let out = pub_a(format!("{prefix}tapwatch/v1/{b}/anomalies"), &forged);
    assert!(out.contains("RC:135"), "publishing as B: {out}");
    let pin = format!(
        r#"{{"schema":1,"device":"{b}","seq":9223372036854775807,"ts":{t},"state":"offline",
        "version":"x","uptime_s":0}}"#
    );
    let out = pub_a(format!("{prefix}tapwatch/v1/{b}/status"), &pin);
    assert!(out.contains("RC:135"), "pinning B's status: {out}");
    // A reads B's messages, or joins the hub's shared subscription: refused at SUBSCRIBE.
    for filter in [
        format!("{prefix}tapwatch/v1/{b}/#"),
        format!("{prefix}tapwatch/v1/+/flows"),
        format!("{prefix}tapwatch/v1/+/+"),
        format!("$share/tapwatch-hub/{prefix}tapwatch/v1/+/+"),
        format!("$share/other/{prefix}tapwatch/v1/+/+"),
    ] {
        let args = ["-i", "tap-a", "-t", &filter, "-W", "1"];
        let out = mosquitto_as("mosquitto_sub", port, "tap-a", &a_pw, &args);
        assert!(out.contains("Subscribed (mid: 1): 135"), "subscribing {filter}: {out}");
    }
    // A wrong password gets no connection at all; nor does A under B's client id (which would
    // take B's session over and knock B offline).
    let own_topic = format!("{prefix}tapwatch/v1/tap-a/metrics");
    let args = ["-i", "tap-a", "-t", &own_topic, "-m", "x"];
    let out = mosquitto_as("mosquitto_pub", port, "tap-a", "guess", &args);
    assert!(!out.contains("PUBACK"), "{out}");
    let args = ["-i", &b, "-t", &own_topic, "-m", "x"];
    let out = mosquitto_as("mosquitto_pub", port, "tap-a", &a_pw, &args);
    assert!(!out.contains("PUBACK"), "{out}");
    // A may publish as itself.
    let own = format!(
        r#"{{"schema":1,"device":"tap-a","seq":1,"ts":{t},"state":"online","version":"1","uptime_s":1}}"#
    );
    let out = pub_a(format!("{prefix}tapwatch/v1/tap-a/status"), &own);
    assert!(out.contains("received PUBACK") && !out.contains("RC:135"), "{out}");

    // B goes on; everything B sent is there, nothing A forged is.
    edge.produce(320);
    assert_exactly(&db, &edge, &[&hub]);
    assert_eq!(db.count("SELECT count(*) FROM anomalies WHERE detector = 'forged'"), 0);
    assert_eq!(db.count("SELECT count(*) FROM dead_letters"), 0);
    assert_eq!(db.query(&format!("SELECT state FROM devices WHERE id = '{b}'")).trim(), "online");
    let deadline = Instant::now() + Duration::from_secs(10);
    while db.query("SELECT state FROM devices WHERE id = 'tap-a'").trim() != "online" {
        assert!(Instant::now() < deadline, "A's own status never arrived");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// TLS on the whole path: the edge to Mosquitto with a client certificate, Mosquitto to the hub
/// with the hub's client certificate, the hub to a PostgreSQL that takes only TLS, and the hub's
/// API over HTTPS; an edge without a certificate gets no connection, and everything the edge
/// sent arrives.
#[test]
fn test_tls_end_to_end() {
    let dir = setup();
    let certs = dir.path().join("certs");
    std::fs::create_dir_all(&certs).unwrap();
    make_certs(&certs);
    make_client_cert(&certs, "edge");
    make_client_cert(&certs, "hub");
    let c = |name: &str| certs.join(name);
    // Mosquitto: a TLS listener that wants a client certificate from our CA.
    let tls_port = free_port();
    let _broker = Broker::start_with(
        dir.path().join("mosquitto"),
        format!(
            "listener {tls_port} 127.0.0.1\ncafile {}\ncertfile {}\nkeyfile {}\n\
             require_certificate true\n",
            c("ca.crt").display(),
            c("srv.crt").display(),
            c("srv.key").display()
        ),
    );
    wait_port(tls_port);
    // PostgreSQL that refuses anything but TLS on TCP.
    let mut pg = PrivatePg::init(dir.path());
    for f in ["srv.crt", "srv.key"] {
        let to = pg.dir.join(f);
        std::fs::copy(c(f), &to).unwrap();
        assert!(Command::new("chown").arg("postgres:").arg(&to).status().unwrap().success());
        assert!(Command::new("chmod").arg("600").arg(&to).status().unwrap().success());
    }
    std::fs::write(
        pg.dir.join("data/pg_hba.conf"),
        "local all all trust\nhostssl all all 127.0.0.1/32 trust\n",
    )
    .unwrap();
    pg.opts = format!(
        "-c ssl=on -c ssl_cert_file={} -c ssl_key_file={}",
        pg.dir.join("srv.crt").display(),
        pg.dir.join("srv.key").display()
    );
    pg.ctl("start");
    let plain = Command::new("psql")
        .args([
            "-X",
            "-d",
            &format!("{} sslmode=disable dbname=postgres", pg.server()),
            "-c",
            "SELECT 1",
        ])
        .output()
        .unwrap();
    assert!(!plain.status.success(), "PostgreSQL took a plain connection");
    let db = Database::create(&format!("{} sslmode=require", pg.server()));

    let prefix = format!("{}/", unique("t"));
    let mut hub = Hub::configure(dir.path(), "hub", tls_port, &prefix, &db.url());
    let text = std::fs::read_to_string(&hub.config).unwrap();
    let text = text
        .replace(
            "[mqtt]\n",
            &format!(
                "[mqtt]\ntls = true\nca_file = \"{}\"\nclient_cert_file = \"{}\"\n\
                 client_key_file = \"{}\"\n",
                c("ca.crt").display(),
                c("hub.crt").display(),
                c("hub.key").display()
            ),
        )
        .replace("[postgres]\n", &format!("[postgres]\nca_file = \"{}\"\n", c("ca.crt").display()))
        .replace(
            "[http]\n",
            &format!(
                "[http]\ntls_cert_file = \"{}\"\ntls_key_file = \"{}\"\ncookie_secure = true\n",
                c("https.crt").display(),
                c("https.key").display()
            ),
        );
    std::fs::write(&hub.config, text).unwrap();
    std::fs::copy(c("srv.crt"), c("https.crt")).unwrap();
    std::fs::copy(c("srv.key"), c("https.key")).unwrap();
    hub.restart();

    let mut edge = Edge::new(dir.path(), tls_port, &prefix);
    edge.sync_cfg.tls = true;
    edge.sync_cfg.ca_file = c("ca.crt");
    // Without a client certificate: no connection.
    assert_refused(&mut edge);
    edge.sync_cfg.client_cert_file = c("edge.crt");
    edge.sync_cfg.client_key_file = c("edge.key");
    edge.start_sync();
    edge.produce(640);
    assert_exactly(&db, &edge, &[&hub]);

    // The API over HTTPS, with a certificate our CA signed; plain HTTP gets nothing there.
    let addr = hub.addr("https");
    let curl = |url: String| {
        let out = Command::new("curl")
            .args(["-s", "-m", "5", "--cacert"])
            .arg(c("ca.crt"))
            .arg(url)
            .output()
            .unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let (ok, body) = curl(format!("https://{addr}/healthz"));
    assert!(ok && body.contains(r#""mqtt":true"#) && body.contains(r#""postgres":true"#), "{body}");
    let (ok, _) = curl(format!("http://{addr}/healthz"));
    assert!(!ok, "plain HTTP answered on the HTTPS port");

    // A new certificate (of another CA) is taken on SIGHUP, without a restart.
    let next = dir.path().join("next");
    std::fs::create_dir_all(&next).unwrap();
    make_certs(&next);
    std::fs::copy(next.join("srv.crt"), c("https.crt")).unwrap();
    std::fs::copy(next.join("srv.key"), c("https.key")).unwrap();
    let pid = hub.child.as_ref().unwrap().id().to_string();
    assert!(Command::new("kill").args(["-HUP", &pid]).status().unwrap().success());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = Command::new("curl")
            .args(["-s", "-m", "5", "--cacert"])
            .arg(next.join("ca.crt"))
            .arg(format!("https://{addr}/healthz"))
            .output()
            .unwrap();
        if out.status.success() {
            break;
        }
        assert!(Instant::now() < deadline, "the new certificate was not taken: {}", hub.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!curl(format!("https://{addr}/healthz")).0, "the old certificate is still served");
}
