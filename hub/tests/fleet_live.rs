//! The fleet's configuration with real parts: two `tapwatch-edge run` daemons capturing live on
//! veth pairs into network namespaces made here, Mosquitto, PostgreSQL and `tapwatch-hub run`.
//! A rule saved at the hub reaches both captures within 5 s while a flow in progress goes on; a
//! broken BPF is refused at the hub; a configuration an edge cannot apply is reported as failed
//! and the one before keeps running (until the edge's own file is mended and the hub sends a
//! `reload` command), as does one put on the broker by someone else (the hub
//! signs what it sends, the edges take only what it signed); an edge that was offline during two changes applies the newest
//! when it comes back, and starts with what it had kept; a rollback reaches the captures.
//! A model uploaded at the hub rolls out to a group and then to every edge; one whose signature
//! is not the hub's, or whose file does not have its hash, is refused and reported while the
//! model running keeps running; a rollback empties the slot and brings the model back. The
//! metrics interval set at the hub is applied live.
//!
//! Needs root (namespaces, capture); TAPWATCH_SKIP_LIVE=1 skips it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod procs;
use procs::*;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tapwatch_hub::fleet::{self, Scope};

fn sh(cmd: &[&str]) {
    let out = Command::new(cmd[0]).args(&cmd[1..]).output().unwrap();
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A namespace at the end of a veth pair; the edge captures on the root namespace's end.
struct Link {
    ns: String,
    host_if: String,
    ns_ip: String,
}

impl Link {
    fn new(tag: u8) -> Link {
        let id = std::process::id() % 10_000;
        let (ns, host_if, ns_if) =
            (format!("twf{id}{tag}"), format!("twfh{id}{tag}"), format!("twfn{id}{tag}"));
        let net = 10 + u32::from(tag) + (id % 100) * 2;
        let (host_ip, ns_ip) = (format!("10.78.{net}.1/24"), format!("10.78.{net}.2"));
        let _ = Command::new("ip").args(["netns", "del", &ns]).output();
        sh(&["ip", "netns", "add", &ns]);
        let link = Link { ns: ns.clone(), host_if: host_if.clone(), ns_ip: ns_ip.clone() };
        sh(&["ip", "link", "add", &host_if, "type", "veth", "peer", "name", &ns_if]);
        sh(&["ip", "link", "set", &ns_if, "netns", &ns]);
        sh(&["ip", "addr", "add", &host_ip, "dev", &host_if]);
        sh(&["ip", "link", "set", &host_if, "up"]);
        let ns_addr = format!("{ns_ip}/24");
        sh(&["ip", "netns", "exec", &ns, "ip", "addr", "add", &ns_addr, "dev", &ns_if]);
        sh(&["ip", "netns", "exec", &ns, "ip", "link", "set", &ns_if, "up"]);
        link
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["link", "del", &self.host_if]).output();
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).output();
    }
}

const TOKEN: &str = "fleet-test-admin-token-0123456789";

/// A `tapwatch-edge run` daemon.
struct Edge {
    config: PathBuf,
    dir: PathBuf,
    child: Option<Child>,
    base: String,
}

fn edge_binary() -> PathBuf {
    // Built beside this test by `cargo test --workspace`; a binary older than the sources it is
    // built from would test old code.
    let exe = std::env::current_exe().unwrap();
    let bin = exe.parent().unwrap().parent().unwrap().join("tapwatch-edge");
    let built = std::fs::metadata(&bin).and_then(|m| m.modified()).ok();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let newest = ["edge-daemon/src", "edge-config/src", "firmware/src"]
        .iter()
        .flat_map(|d| walk(&root.join(d)))
        .max();
    assert!(
        built.is_some() && built >= newest,
        "{} is missing or older than its sources: cargo build -p tapwatch-edge",
        bin.display()
    );
    bin
}

/// The modification times of the files under `dir`.
fn walk(dir: &Path) -> Vec<std::time::SystemTime> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else if let Ok(t) = e.metadata().and_then(|m| m.modified()) {
            out.push(t);
        }
    }
    out
}

impl Edge {
    fn new(dir: &Path, id: &str, iface: &str, broker_port: u16, prefix: &str, key: &str) -> Edge {
        let dir = dir.join(id);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("admin.token"), format!("{TOKEN}\n")).unwrap();
        let config = dir.join("edge.toml");
        std::fs::write(
            &config,
            format!(
                "[device]\nid = \"{id}\"\n[[interface]]\nname = \"{iface}\"\n\
                 [store]\npath = \"{db}\"\nflush_interval_ms = 200\n\
                 [http]\nlisten = \"127.0.0.1:0\"\nadmin_token_file = \"{token}\"\n\
                 [sync]\nenabled = true\nbroker = \"127.0.0.1:{broker_port}\"\n\
                 topic_prefix = \"{prefix}\"\nkeepalive_s = 5\nreconnect_min_ms = 100\n\
                 reconnect_max_ms = 500\nconfig_public_key = \"{key}\"\n",
                db = dir.join("edge.db").display(),
                token = dir.join("admin.token").display(),
            ),
        )
        .unwrap();
        let mut e = Edge { config, dir, child: None, base: String::new() };
        e.start();
        e
    }

    fn start(&mut self) {
        use std::io::{BufRead, BufReader};
        let mut child = Command::new(edge_binary())
            .args(["run", "--config"])
            .arg(&self.config)
            .env("TAPWATCH_LOG", "info")
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        self.base = loop {
            let line = lines.next().expect("the edge exited before listening").unwrap();
            if let Some(rest) = line.split("listening on ").nth(1) {
                break rest.trim().to_string();
            }
        };
        let log = self.dir.join("log");
        std::thread::spawn(move || {
            use std::io::Write;
            let mut f = std::fs::File::create(log).unwrap();
            for l in lines.map_while(Result::ok) {
                let _ = writeln!(f, "{l}");
            }
        });
        self.child = Some(child);
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill").args(["-TERM", &c.id().to_string()]).status();
            let status = c.wait().unwrap();
            assert!(status.success(), "the edge exited with {status}");
        }
    }

    fn get(&self, path: &str) -> String {
        let auth = format!("Authorization: Bearer {TOKEN}");
        let out = Command::new("curl")
            .args(["-s", "-m", "5", "-H", &auth, &format!("{}{path}", self.base)])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn flows(&self, sql: &str) -> i64 {
        let db = rusqlite::Connection::open(self.dir.join("edge.db")).unwrap();
        db.query_row(sql, [], |r| r.get(0)).unwrap()
    }
}

impl Drop for Edge {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A child process killed when the test ends, passed or not.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_for(what: &str, within: Duration, mut f: impl FnMut() -> bool) -> Duration {
    let t0 = Instant::now();
    while !f() {
        assert!(t0.elapsed() < within, "timed out ({within:?}) waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
    t0.elapsed()
}

/// A UDP datagram from the root namespace (a new source port each time: a new flow).
fn udp(to: &str, port: u16) {
    sh(&["bash", "-c", &format!("echo probe > /dev/udp/{to}/{port}")]);
}

/// A hub that signs what it sends (its key in `dir/fleet.key`), and its public key.
fn signed_hub(dir: &Path, broker_port: u16, prefix: &str, db_url: &str) -> (Hub, String) {
    let mut hub = Hub::configure(dir, "hub", broker_port, prefix, db_url);
    let key_file = dir.join("fleet.key");
    let toml = std::fs::read_to_string(&hub.config).unwrap();
    let toml = format!("{toml}[fleet]\nsigning_key_file = \"{}\"\n", key_file.display());
    std::fs::write(&hub.config, toml).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tapwatch-hub"))
        .args(["fleet-key", "--config"])
        .arg(&hub.config)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let public = String::from_utf8(out.stdout).unwrap().trim().to_string();
    hub.restart();
    (hub, public)
}

#[test]
fn test_the_hubs_configuration_reaches_live_edges() {
    if std::env::var_os("TAPWATCH_SKIP_LIVE").is_some() {
        eprintln!("skipped: TAPWATCH_SKIP_LIVE is set");
        return;
    }
    let _ = Command::new("pg_ctlcluster")
        .args(["--skip-systemctl-redirect", "15", "main", "start"])
        .status();
    let dir = tempfile::Builder::new().prefix("tapwatch-fleet").tempdir().unwrap();
    let (a, b) = (Link::new(1), Link::new(2));
    let broker = Broker::start(dir.path());
    let db = Database::create(SHARED_PG);
    let prefix = format!("{}/", unique("f"));
    // The hub signs what it sends; the edges take only what it signed.
    let (hub, public) = signed_hub(dir.path(), broker.port, &prefix, &db.url());
    let mut ea = Edge::new(dir.path(), "edge-a", &a.host_if, broker.port, &prefix, &public);
    let mut eb = Edge::new(dir.path(), "edge-b", &b.host_if, broker.port, &prefix, &public);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let sql = rt.block_on(tapwatch_hub::db::connect(&db.url())).unwrap();
    let mut writer = rt.block_on(tapwatch_hub::db::connect(&db.url())).unwrap();
    let sync_of = |sql: &tokio_postgres::Client, device: &str| {
        let d = rt.block_on(fleet::fleet(sql, Some(device))).unwrap();
        d.into_iter().next().map(|d| (d.sync, d.desired_revision, d.applied_revision, d.error))
    };
    let in_sync = |sql: &tokio_postgres::Client, device: &str| {
        sync_of(sql, device).is_some_and(|s| s.0 == "in_sync")
    };
    // Both register by connecting; the hub sends each its (empty) configuration.
    wait_for("both edges in sync at the hub", Duration::from_secs(40), || {
        in_sync(&sql, "edge-a") && in_sync(&sql, "edge-b")
    });
    psql(&db.url(), "INSERT INTO device_groups (name) VALUES ('lab')");
    psql(&db.url(), "UPDATE devices SET group_name = 'lab'");
    let mut save = |scope: Scope, doc: serde_json::Value| {
        rt.block_on(async {
            let tx = writer.transaction().await.unwrap();
            let r = fleet::save(&tx, &scope, &doc, "test", "").await;
            if r.is_ok() {
                tx.commit().await.unwrap();
            }
            r.map(|r| r.revision)
        })
    };

    // A flow in progress (a ping every 0.2 s) and a first datagram to UDP 9999: captured.
    let mut ping = Running(
        Command::new("ping")
            .args(["-i", "0.2", &a.ns_ip])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    udp(&a.ns_ip, 9999);
    udp(&b.ns_ip, 9999);
    std::thread::sleep(Duration::from_secs(1));

    // A broken rule is refused at the hub, naming it; nothing is sent.
    let broken =
        serde_json::json!({"capture": {"*": {"rules": [{"name": "x", "bpf": "udp port lots"}]}}});
    match save(Scope::Group("lab".into()), broken) {
        Err(fleet::SaveError::Invalid(p)) => {
            assert!(p.iter().any(|p| p.contains("does not compile")), "{p:?}")
        }
        other => panic!("{other:?}"),
    }

    // The rule, for the group: in force on both captures within 5 s of saving.
    let rule = serde_json::json!({"capture": {"*": {"rules": [
        {"name": "no-9999", "action": "exclude", "port": 9999}]}}});
    let t0 = Instant::now();
    save(Scope::Group("lab".into()), rule).unwrap();
    for e in [&ea, &eb] {
        wait_for(
            "the rule on the capture",
            Duration::from_secs(5).saturating_sub(t0.elapsed()),
            || e.get("/admin/rules").contains("not (port 9999)"),
        );
    }
    let took = t0.elapsed();
    eprintln!("saved to in force on both edges: {took:?}");
    wait_for("both in sync", Duration::from_secs(5), || {
        in_sync(&sql, "edge-a") && in_sync(&sql, "edge-b")
    });
    // From now on UDP 9999 is not captured.
    for _ in 0..3 {
        udp(&a.ns_ip, 9999);
    }

    // A configuration put on the broker by someone else (it would set the broker, which the
    // edge keeps to itself anyway): not signed by the hub, refused, the refusal reported, the
    // rule stays in force.
    let (_, desired, applied, _) = sync_of(&sql, "edge-a").unwrap();
    let bad = serde_json::json!({"sync": {"broker": "198.51.100.1:1883"}});
    let forged = serde_json::json!({"schema": 1, "device": "edge-a", "ts": 1, "revision": desired,
        "hash": edge_config::fleet::hash(&bad), "config": bad});
    sh(&[
        "mosquitto_pub",
        "-p",
        &broker.port.to_string(),
        "-r",
        "-q",
        "1",
        "-t",
        &format!("{prefix}tapwatch/v1/edge-a/config"),
        "-m",
        &forged.to_string(),
    ]);
    wait_for("the refusal at the hub", Duration::from_secs(10), || {
        sync_of(&sql, "edge-a").is_some_and(|s| s.3.contains("not signed"))
    });
    // It still runs what the hub wants.
    assert_eq!(sync_of(&sql, "edge-a").unwrap().0, "in_sync");
    assert_eq!(sync_of(&sql, "edge-a").unwrap().2, applied);
    assert!(ea.get("/admin/rules").contains("not (port 9999)"));
    let metrics = ea.get("/metrics");
    assert!(
        metrics.contains("tapwatch_fleet_config_refused_total{} 1\n"),
        "{}",
        metrics.lines().filter(|l| l.contains("fleet")).collect::<Vec<_>>().join("\n")
    );

    // A configuration the edge cannot apply (its own file was broken meanwhile): reported as
    // failed, the one before keeps running; edge-b applies it.
    let file = std::fs::read_to_string(&ea.config).unwrap();
    std::fs::write(&ea.config, format!("{file}\n[nonsense\n")).unwrap();
    save(Scope::Global, serde_json::json!({"detect": {"quiet_s": 45}})).unwrap();
    wait_for("the failure at the hub", Duration::from_secs(10), || {
        sync_of(&sql, "edge-a").is_some_and(|s| s.0 == "failed" && s.3.contains("edge.toml"))
    });
    wait_for("edge-b in sync", Duration::from_secs(10), || in_sync(&sql, "edge-b"));
    assert!(ea.get("/admin/rules").contains("not (port 9999)"));
    // Its file mended and reloaded (a command from the hub: what SIGHUP does), it applies the
    // change it could not.
    std::fs::write(&ea.config, file).unwrap();
    let cmd = rt
        .block_on(fleet::command(&sql, "edge-a", firmware::proto::Command::Reload, "test"))
        .unwrap()
        .unwrap();
    wait_for("edge-a in sync after its reload", Duration::from_secs(5), || in_sync(&sql, "edge-a"));
    wait_for("the command answered", Duration::from_secs(5), || {
        let c = rt.block_on(fleet::commands(&sql, "edge-a", 1)).unwrap();
        c[0].id == cmd.id && c[0].result.as_deref() == Some("applied")
    });

    // edge-b goes offline; two changes; it takes the newest when it is back (and starts with
    // the rule it kept).
    eb.stop();
    save(Scope::Global, serde_json::json!({"detect": {"quiet_s": 40}})).unwrap();
    let last = serde_json::json!({"detect": {"quiet_s": 50}});
    save(Scope::Global, last).unwrap();
    wait_for("edge-a in sync again", Duration::from_secs(10), || in_sync(&sql, "edge-a"));
    eb.start();
    assert!(eb.get("/admin/rules").contains("not (port 9999)"), "the kept rule at start");
    wait_for("edge-b in sync with the newest", Duration::from_secs(20), || in_sync(&sql, "edge-b"));
    let kept: serde_json::Value =
        serde_json::from_slice(&std::fs::read(eb.dir.join("fleet-config.json")).unwrap()).unwrap();
    assert_eq!(kept["config"]["detect"]["quiet_s"], 50, "{kept}");
    // It applied the newest only: one answer since it came back, for the desired revision.
    let (state, desired_b, applied_b, _) = sync_of(&sql, "edge-b").unwrap();
    assert_eq!((state.as_str(), applied_b), ("in_sync", desired_b));
    let answers = psql(
        &db.url(),
        "SELECT count(*) FROM ingest_log WHERE device = 'edge-b' AND stream = 'config/applied'",
    );
    // The empty configuration, the rule, quiet_s 45, and the newest (none for the one in
    // between).
    assert_eq!(answers.trim(), "4", "edge-b's answers");

    // Rolling back: the group's rule removed, then its first revision's content saved again
    // (what the API's rollback does); both reach the captures.
    let first = rt
        .block_on(fleet::history(&sql, &Scope::Group("lab".into()), 10))
        .unwrap()
        .into_iter()
        .find(|r| r.revision == 1)
        .unwrap();
    save(Scope::Group("lab".into()), serde_json::json!({})).unwrap();
    for e in [&ea, &eb] {
        wait_for("the rule gone", Duration::from_secs(5), || {
            !e.get("/admin/rules").contains("9999")
        });
    }
    save(Scope::Group("lab".into()), first.document).unwrap();
    for e in [&ea, &eb] {
        wait_for("the rule back", Duration::from_secs(5), || {
            e.get("/admin/rules").contains("not (port 9999)")
        });
    }

    ping.0.kill().unwrap();
    let _ = ping.0.wait();
    ea.stop();
    eb.stop();
    // The ping's flow went on across the change: one flow, packets before and after.
    let icmp = ea.flows(&format!(
        "SELECT count(*) FROM traffic_features WHERE protocol = 1 AND dst_ip = '{}' AND packets >= 20",
        a.ns_ip
    ));
    assert_eq!(icmp, 1, "the flow in progress survived the change");
    // UDP 9999: the datagram before the rule, none after.
    for (e, link) in [(&ea, &a), (&eb, &b)] {
        let n = e.flows(&format!(
            "SELECT count(*) FROM traffic_features WHERE protocol = 17 AND dst_port = 9999 AND dst_ip = '{}'",
            link.ns_ip
        ));
        assert_eq!(n, 1, "UDP 9999 flows");
    }
    drop(hub);
}

/// The `tapwatch_model_info` lines of an edge's metrics.
fn models_of(e: &Edge) -> String {
    e.get("/metrics")
        .lines()
        .filter(|l| l.starts_with("tapwatch_model_info{"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn test_models_roll_out_from_the_hub_to_live_edges() {
    if std::env::var_os("TAPWATCH_SKIP_LIVE").is_some() {
        eprintln!("skipped: TAPWATCH_SKIP_LIVE is set");
        return;
    }
    let _ = Command::new("pg_ctlcluster")
        .args(["--skip-systemctl-redirect", "15", "main", "start"])
        .status();
    let dir = tempfile::Builder::new().prefix("tapwatch-fleet-models").tempdir().unwrap();
    let (a, b) = (Link::new(3), Link::new(4));
    let broker = Broker::start(dir.path());
    let db = Database::create(SHARED_PG);
    let prefix = format!("{}/", unique("m"));
    let (hub, public) = signed_hub(dir.path(), broker.port, &prefix, &db.url());
    let ea = Edge::new(dir.path(), "edge-a", &a.host_if, broker.port, &prefix, &public);
    let eb = Edge::new(dir.path(), "edge-b", &b.host_if, broker.port, &prefix, &public);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let sql = rt.block_on(tapwatch_hub::db::connect(&db.url())).unwrap();
    let mut writer = rt.block_on(tapwatch_hub::db::connect(&db.url())).unwrap();
    let sync_of = |device: &str| {
        let d = rt.block_on(fleet::fleet(&sql, Some(device))).unwrap();
        d.into_iter().next().map(|d| (d.sync, d.desired_revision, d.applied_revision, d.error))
    };
    let in_sync = |device: &str| sync_of(device).is_some_and(|s| s.0 == "in_sync");
    wait_for("both edges in sync at the hub", Duration::from_secs(40), || {
        in_sync("edge-a") && in_sync("edge-b")
    });
    // No model on either yet (their files name none).
    assert_eq!(models_of(&ea), "");
    psql(&db.url(), "INSERT INTO device_groups (name) VALUES ('canary')");
    psql(&db.url(), "UPDATE devices SET group_name = 'canary' WHERE id = 'edge-a'");
    let mut save = |scope: Scope, doc: serde_json::Value| {
        rt.block_on(async {
            let tx = writer.transaction().await.unwrap();
            let r = fleet::save(&tx, &scope, &doc, "test", "").await;
            if r.is_ok() {
                tx.commit().await.unwrap();
            }
            r.map(|r| r.id)
        })
    };

    // The shipped models, uploaded (checked as at the API: tests/models.rs covers the route).
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/shipped");
    let upload = |name: &str| {
        let onnx = std::fs::read(shipped.join(format!("{name}.onnx"))).unwrap();
        let fixture = std::fs::read(shipped.join(format!("fixtures/{name}.json"))).unwrap();
        let checked = tapwatch_hub::models::check(&onnx, &fixture).unwrap();
        rt.block_on(tapwatch_hub::models::save(&sql, &checked, &onnx, &fixture, "test", ""))
            .unwrap();
        checked.sha256
    };
    let clf = upload("classifier");
    let ae = upload("autoencoder");

    // To the canary group first: edge-a fetches, checks and runs it; edge-b has none.
    let t0 = Instant::now();
    let canary =
        save(Scope::Group("canary".into()), serde_json::json!({"models": {"classifier": clf}}))
            .unwrap();
    wait_for("edge-a running the classifier", Duration::from_secs(10), || {
        models_of(&ea).contains("slot=\"classifier\"")
    });
    eprintln!("saved to the model running on the canary: {:?}", t0.elapsed());
    wait_for("edge-a in sync", Duration::from_secs(10), || in_sync("edge-a"));
    assert!(in_sync("edge-b"));
    assert_eq!(models_of(&eb), "");
    assert!(ea.dir.join(format!("models/{clf}.onnx")).is_file());
    assert!(ea.dir.join(format!("models/{clf}.fixture.json")).is_file());
    // Then everywhere.
    save(Scope::Global, serde_json::json!({"models": {"classifier": clf}})).unwrap();
    wait_for("edge-b running the classifier", Duration::from_secs(10), || {
        models_of(&eb).contains("slot=\"classifier\"")
    });
    wait_for("both in sync", Duration::from_secs(10), || in_sync("edge-a") && in_sync("edge-b"));

    // How often metrics go to the hub, set for every edge (30 s by default): applied live.
    let metrics = |d: &str| {
        psql(&db.url(), &format!("SELECT count(*) FROM system_metrics WHERE device = '{d}'"))
            .trim()
            .parse::<i64>()
            .unwrap()
    };
    let doc = serde_json::json!({"models": {"classifier": clf}, "sync": {"metrics_interval_s": 1}});
    save(Scope::Global, doc).unwrap();
    wait_for("both in sync", Duration::from_secs(10), || in_sync("edge-a") && in_sync("edge-b"));
    let before = metrics("edge-b");
    wait_for("metrics every second", Duration::from_secs(15), || metrics("edge-b") >= before + 4);

    // A model whose signature is not the hub's: a configuration the hub signed (read from its
    // key, as a stolen or replayed message would be) naming the autoencoder with another key's
    // signature on it. Refused, reported; the classifier keeps running.
    let key_text = std::fs::read_to_string(dir.path().join("fleet.key")).unwrap();
    let key = edge_config::fleet::signing_key(&key_text).unwrap();
    let other =
        edge_config::fleet::signing_key("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=").unwrap();
    let (_, desired, _, _) = sync_of("edge-b").unwrap();
    let doc = serde_json::json!({"models": {"classifier": clf, "autoencoder": ae}});
    let hash = edge_config::fleet::hash(&doc);
    let fixture_sha =
        rt.block_on(tapwatch_hub::models::get(&sql, &ae)).unwrap().unwrap().fixture_sha256;
    let addr = hub.addr("http");
    let mut model = firmware::proto::ModelRef {
        kind: "autoencoder".into(),
        sha256: ae.clone(),
        fixture_sha256: fixture_sha,
        size: 1,
        name: "x".into(),
        version: "x".into(),
        url: format!("http://{addr}/api/v1/models/{ae}/file"),
        fixture_url: format!("http://{addr}/api/v1/models/{ae}/fixture"),
        signature: String::new(),
    };
    model.signature = edge_config::fleet::sign_model(&other, &model);
    let forged = serde_json::json!({"schema": 1, "device": "edge-b", "ts": 1, "revision": desired + 1000,
        "hash": hash, "config": doc,
        "signature": edge_config::fleet::sign(&key, "edge-b", (desired + 1000) as u64, &hash),
        "models": [model]});
    sh(&[
        "mosquitto_pub",
        "-p",
        &broker.port.to_string(),
        "-q",
        "1",
        "-t",
        &format!("{prefix}tapwatch/v1/edge-b/config"),
        "-m",
        &forged.to_string(),
    ]);
    wait_for("the bad signature reported", Duration::from_secs(10), || {
        sync_of("edge-b")
            .is_some_and(|s| s.3.contains("models.autoencoder") && s.3.contains("not the hub's"))
    });
    assert!(!models_of(&eb).contains("autoencoder"));
    assert!(models_of(&eb).contains("slot=\"classifier\""));
    assert!(!eb.dir.join(format!("models/{ae}.onnx")).exists(), "nothing kept of it");

    // A file that is not what its hash says (changed in the hub's database): refused by the
    // canary, reported; its classifier keeps running.
    psql(
        &db.url(),
        &format!("UPDATE models SET onnx = onnx || '\\x00'::bytea WHERE sha256 = '{ae}'"),
    );
    save(
        Scope::Group("canary".into()),
        serde_json::json!({"models": {"classifier": clf, "autoencoder": ae}}),
    )
    .unwrap();
    wait_for("the wrong hash reported", Duration::from_secs(10), || {
        sync_of("edge-a").is_some_and(|s| s.0 == "failed" && s.3.contains("SHA-256"))
    });
    assert!(models_of(&ea).contains("slot=\"classifier\""));
    assert!(!models_of(&ea).contains("autoencoder"));
    // Mended, the canary runs both.
    psql(
        &db.url(),
        &format!(
            "UPDATE models SET onnx = substring(onnx from 1 for size::int) WHERE sha256 = '{ae}'"
        ),
    );
    // (The same document again would be no new revision: the operator changes something.)
    let doc = serde_json::json!({"models": {"autoencoder": ae}, "detect": {"quiet_s": 31}});
    save(Scope::Group("canary".into()), doc).unwrap();
    wait_for("the canary running both", Duration::from_secs(10), || {
        let m = models_of(&ea);
        m.contains("slot=\"autoencoder\"") && m.contains("slot=\"classifier\"")
    });
    wait_for("edge-a in sync", Duration::from_secs(10), || in_sync("edge-a"));

    // Rolling back: the global layer to nothing (edge-b's slot empties, as its own file says)
    // and the group to its first revision (edge-a keeps the classifier, the autoencoder goes).
    let first = rt.block_on(fleet::revision(&sql, canary)).unwrap().unwrap().1;
    save(Scope::Global, serde_json::json!({})).unwrap();
    save(Scope::Group("canary".into()), first.document).unwrap();
    wait_for("edge-b without a model", Duration::from_secs(10), || models_of(&eb).is_empty());
    wait_for("edge-a with the classifier alone", Duration::from_secs(10), || {
        let m = models_of(&ea);
        !m.contains("autoencoder") && m.contains("slot=\"classifier\"")
    });
    wait_for("both in sync", Duration::from_secs(10), || in_sync("edge-a") && in_sync("edge-b"));
    drop((ea, eb, hub));
}

/// A shell script as an update's program, in `dir`.
fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt as _;
    let p = dir.join(name);
    std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    p
}

#[test]
fn test_an_update_from_the_hub_goes_live_and_a_bad_one_is_rolled_back_and_reported() {
    if std::env::var_os("TAPWATCH_SKIP_LIVE").is_some() {
        eprintln!("skipped: TAPWATCH_SKIP_LIVE is set");
        return;
    }
    let _ = Command::new("pg_ctlcluster")
        .args(["--skip-systemctl-redirect", "15", "main", "start"])
        .status();
    let dir = tempfile::Builder::new().prefix("tapwatch-fleet-update").tempdir().unwrap();
    let link = Link::new(5);
    let broker = Broker::start(dir.path());
    let db = Database::create(SHARED_PG);
    let prefix = format!("{}/", unique("u"));
    let (_hub, public) = signed_hub(dir.path(), broker.port, &prefix, &db.url());
    let mut edge = Edge::new(dir.path(), "edge-u", &link.host_if, broker.port, &prefix, &public);
    // The release key, which only the edge's configuration knows (the hub never holds it).
    let release = ed25519_dalek::SigningKey::from_bytes(&[42; 32]);
    edge.stop();
    let mut toml = std::fs::read_to_string(&edge.config).unwrap();
    toml.push_str(&format!(
        "[update]\npublic_key = \"{}\"\nhealth_deadline_s = 10\n",
        edge_config::fleet::public_key_text(&release)
    ));
    std::fs::write(&edge.config, toml).unwrap();
    edge.start();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let sql = rt.block_on(tapwatch_hub::db::connect(&db.url())).unwrap();
    let mut writer = rt.block_on(tapwatch_hub::db::connect(&db.url())).unwrap();
    let sync_of = |device: &str| {
        let d = rt.block_on(fleet::fleet(&sql, Some(device))).unwrap();
        d.into_iter().next().map(|d| (d.sync, d.desired_revision, d.applied_revision, d.error))
    };
    wait_for("the edge in sync", Duration::from_secs(40), || {
        sync_of("edge-u").is_some_and(|s| s.0 == "in_sync")
    });
    let mut save = |doc: serde_json::Value| {
        rt.block_on(async {
            let tx = writer.transaction().await.unwrap();
            let r = fleet::save(&tx, &Scope::Global, &doc, "test", "").await.unwrap();
            tx.commit().await.unwrap();
            r.id
        })
    };
    let state = || -> serde_json::Value {
        std::fs::read(edge.dir.join("update/state.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    };
    // A bundle signed with the release key, uploaded as at the API (tests/updates.rs covers
    // the route).
    let upload = |program: &Path, version: &str| {
        let mut bytes = Vec::new();
        edge_config::update::pack(
            &release,
            version,
            std::env::consts::ARCH,
            1,
            &[("tapwatch-edge".into(), program)],
            &mut bytes,
        )
        .unwrap();
        let checked = tapwatch_hub::updates::check(&bytes, None).unwrap();
        rt.block_on(tapwatch_hub::updates::save(&sql, &checked, &bytes, "test", "")).unwrap();
        checked.sha256
    };

    // A good update: a program that runs this build (so that it is ready, captures and
    // connects). Fetched, installed, launched on trial, kept.
    let good = script(dir.path(), "good", &format!("exec {} \"$@\"", edge_binary().display()));
    let good_sha = upload(&good, "9.1.0-hub");
    let t0 = Instant::now();
    save(serde_json::json!({"update": good_sha}));
    let log = || std::fs::read_to_string(edge.dir.join("log")).unwrap_or_default();
    let t1 = Instant::now();
    while state()["active_sha256"] != good_sha.as_str() {
        assert!(
            t1.elapsed() < Duration::from_secs(60),
            "the update not kept: {}\n{}",
            state(),
            log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!("saved to the update kept: {:?}", t0.elapsed());
    assert_eq!(state()["active"], "a");
    assert_eq!(state()["last"]["result"], "installed");
    // The edge says which release it runs.
    wait_for("the new release in the device's status", Duration::from_secs(30), || {
        psql(&db.url(), "SELECT version FROM devices WHERE id = 'edge-u'").trim() == "9.1.0-hub"
    });
    wait_for("the edge in sync", Duration::from_secs(30), || {
        sync_of("edge-u").is_some_and(|s| s.0 == "in_sync")
    });

    let failed_with = |what: &str| {
        sync_of("edge-u").map(|s| (s.0 == "failed", s.3)).filter(|(f, e)| *f && e.contains(what))
    };
    // One that does not even read the tap's configuration (`config check` fails): refused at
    // install, nothing changes, the reason is at the hub.
    let broken = script(dir.path(), "broken", "echo 'no such section' >&2; exit 2");
    let broken_sha = upload(&broken, "9.1.5-broken");
    save(serde_json::json!({"update": broken_sha}));
    wait_for("the refusal reported at the hub", Duration::from_secs(30), || {
        failed_with("refuses this configuration").is_some()
    });
    assert_eq!(state()["active_sha256"], good_sha.as_str());
    assert_eq!(state()["last"]["result"], "refused");

    // A bad one: reads the configuration, crashes at start. Installed into the other slot,
    // launched, rolled back to the good one, and the reason is at the hub.
    let bad = script(
        dir.path(),
        "bad",
        "if [ \"$1\" = config ]; then exit 0; fi\necho 'cannot start' >&2; exit 3",
    );
    let bad_sha = upload(&bad, "9.2.0-bad");
    save(serde_json::json!({"update": bad_sha}));
    let t1 = Instant::now();
    while !(state()["last"]["sha256"] == bad_sha.as_str()
        && state()["last"]["result"] == "rolled_back")
    {
        assert!(t1.elapsed() < Duration::from_secs(60), "not rolled back: {}\n{}", state(), log());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(state()["active_sha256"], good_sha.as_str());
    wait_for("the failure reported at the hub", Duration::from_secs(30), || {
        sync_of("edge-u").is_some_and(|s| s.0 == "failed" && s.3.contains("rolled back"))
    });
    let (_, _, _, error) = sync_of("edge-u").unwrap();
    assert!(error.contains("9.2.0-bad") && error.contains("exit status: 3"), "{error}");
    // The good one runs on: a SIGTERM stops it cleanly.
    edge.stop();
}
