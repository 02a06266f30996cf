//! Processes the end-to-end tests run: a Mosquitto of the test's own, a database of its own on
//! a PostgreSQL server, and `tapwatch-hub run`.

#![allow(clippy::unwrap_used, dead_code)] // each test file uses some of these; a failed step is a failed test

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

pub static UNIQUE: AtomicU64 = AtomicU64::new(0);

pub fn unique(what: &str) -> String {
    format!("{what}_{}_{}", std::process::id(), UNIQUE.fetch_add(1, Ordering::Relaxed))
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

pub fn wait_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A Mosquitto of the test's own, with persistence (so queued messages survive a restart).
pub struct Broker {
    pub port: u16,
    pub dir: PathBuf,
    pub child: Option<Child>,
    /// More configuration (another listener, say).
    pub extra: String,
}

impl Broker {
    pub fn start(dir: &Path) -> Broker {
        let dir = dir.join("mosquitto");
        Broker::start_with(dir, String::new())
    }
    pub fn start_with(dir: PathBuf, extra: String) -> Broker {
        std::fs::create_dir_all(&dir).unwrap();
        let mut b = Broker { port: free_port(), dir, child: None, extra };
        b.restart();
        b
    }
    pub fn restart(&mut self) {
        assert!(self.child.is_none());
        let conf = self.dir.join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "listener {} 127.0.0.1\nallow_anonymous true\npersistence true\n\
                 persistence_location {}/\nautosave_interval 1\nmax_queued_messages 0\n\
                 max_inflight_messages 0\nuser root\n{}",
                self.port,
                self.dir.display(),
                self.extra
            ),
        )
        .unwrap();
        let log = std::fs::File::create(self.dir.join("log")).unwrap();
        self.child = Some(
            Command::new("mosquitto")
                .arg("-c")
                .arg(&conf)
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("mosquitto (Debian package mosquitto)"),
        );
        wait_port(self.port);
    }
    /// Stop it the way a service manager does (SIGTERM: it saves its state).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill").arg("-TERM").arg(c.id().to_string()).status();
            let _ = c.wait();
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A database of the test's own on a PostgreSQL server.
pub struct Database {
    pub admin_url: String,
    pub name: String,
}

impl Database {
    pub fn create(server: &str) -> Database {
        let name = unique("tapwatch_e2e");
        let admin_url = format!("{server} dbname=postgres");
        psql(&admin_url, &format!("CREATE DATABASE {name}"));
        Database { admin_url, name }
    }
    pub fn url(&self) -> String {
        self.admin_url.replace("dbname=postgres", &format!("dbname={}", self.name))
    }
    pub fn query(&self, sql: &str) -> String {
        psql(&self.url(), sql)
    }
    pub fn count(&self, sql: &str) -> i64 {
        self.query(sql).trim().parse().unwrap_or(-1)
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        let _ = Command::new("psql")
            .args(["-X", "-q", "-d", &self.admin_url, "-c"])
            .arg(format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name))
            .stderr(Stdio::null())
            .status();
    }
}

pub fn psql(url: &str, sql: &str) -> String {
    let out = Command::new("psql")
        .args(["-X", "-q", "-t", "-A", "-d", url, "-c", sql])
        .output()
        .expect("psql");
    assert!(out.status.success(), "psql {sql}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub const SHARED_PG: &str = "host=127.0.0.1 port=5432 user=postgres";

/// A `tapwatch-hub run` process.
pub struct Hub {
    pub config: PathBuf,
    pub log: PathBuf,
    pub child: Option<Child>,
}

impl Hub {
    pub fn start(dir: &Path, name: &str, broker_port: u16, prefix: &str, db_url: &str) -> Hub {
        let mut h = Hub::configure(dir, name, broker_port, prefix, db_url);
        h.restart();
        h
    }
    /// Write the hub's configuration without starting it.
    pub fn configure(dir: &Path, name: &str, broker_port: u16, prefix: &str, db_url: &str) -> Hub {
        let config = dir.join(format!("{name}.toml"));
        std::fs::write(
            &config,
            format!(
                "[mqtt]\nbroker = \"127.0.0.1:{broker_port}\"\nclient_id = \"{name}-{}\"\n\
                 topic_prefix = \"{prefix}\"\nkeepalive_s = 5\n\
                 [postgres]\nurl = \"{db_url}\"\n\
                 [ingest]\nauto_register_devices = true\n\
                 [retention]\nmax_age_days = 36500\n\
                 [http]\nlisten = \"127.0.0.1:0\"\n",
                unique("hub")
            ),
        )
        .unwrap();
        Hub { log: dir.join(format!("{name}.log")), config, child: None }
    }
    pub fn restart(&mut self) {
        assert!(self.child.is_none());
        let subscribed_before = self.log().matches("mqtt: subscribed").count();
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).unwrap();
        self.child = Some(
            Command::new(env!("CARGO_BIN_EXE_tapwatch-hub"))
                .args(["run", "--config"])
                .arg(&self.config)
                .env("TAPWATCH_LOG", "info")
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap(),
        );
        // The broker keeps messages for the hub's session only once it has subscribed.
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.log().matches("mqtt: subscribed").count() <= subscribed_before {
            assert!(Instant::now() < deadline, "the hub did not subscribe: {}", self.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap(); // SIGKILL
            let _ = c.wait();
        }
    }
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
    /// The address of the hub's HTTP (or HTTPS) endpoint, from its log.
    pub fn addr(&self, scheme: &str) -> String {
        self.log()
            .rsplit(&format!("listening on {scheme}://"))
            .next()
            .and_then(|s| s.split_whitespace().next())
            .expect("the hub logs its address")
            .to_string()
    }
    /// GET a path of the hub's HTTP endpoint.
    pub fn get(&self, path: &str) -> String {
        use std::io::{Read, Write};
        let addr = self.addr("http");
        let mut s = std::net::TcpStream::connect(&addr).unwrap();
        write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        self.kill9();
    }
}
