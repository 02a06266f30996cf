//! Signed A/B updates with the real program: a bundle of this build goes live and its slot
//! starts from then on; one signed by another key or altered is refused; one that crashes at
//! start, and one that runs but never reaches its broker, are rolled back with their reason and
//! the program before them keeps capturing; `kill -9` during an install or a trial leaves a
//! program that starts.
//!
//! Needs root (capture on `lo`) and Mosquitto at 127.0.0.1:1883 (each test its own topic
//! prefix). CI runs as root; elsewhere set TAPWATCH_SKIP_LIVE=1 to skip these tests. Also: a
//! second program on a store in use is refused.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_tapwatch-edge");

/// The program as /proc names it.
fn bin() -> PathBuf {
    std::fs::canonicalize(BIN).unwrap()
}

fn skip() -> bool {
    if std::env::var_os("TAPWATCH_SKIP_LIVE").is_some() {
        eprintln!("skipped: TAPWATCH_SKIP_LIVE is set");
        return true;
    }
    let root =
        Command::new("id").arg("-u").output().map(|o| o.stdout.starts_with(b"0")).unwrap_or(false);
    assert!(
        root,
        "update tests capture on lo and need root; set TAPWATCH_SKIP_LIVE=1 to skip them"
    );
    false
}

/// A tap of its own: a folder with its configuration, its store and the release key.
struct Tap {
    dir: tempfile::TempDir,
    config: PathBuf,
}

fn edge(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().unwrap()
}

fn ok(out: &Output) -> String {
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

impl Tap {
    fn new(tag: &str, deadline_s: u32) -> Tap {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("release.key");
        let public = ok(&edge(&["update", "keygen", "--out", key.to_str().unwrap()]));
        let config = dir.path().join("edge.toml");
        let id = format!("update-{tag}-{}", std::process::id());
        Tap::write_config(&config, dir.path(), &id, "127.0.0.1:1883", &public, deadline_s);
        Tap { dir, config }
    }

    fn write_config(
        path: &Path,
        dir: &Path,
        id: &str,
        broker: &str,
        public: &str,
        deadline_s: u32,
    ) {
        let text = format!(
            r#"[device]
id = "{id}"
[[interface]]
name = "lo"
[store]
path = "{store}"
[http]
listen = "127.0.0.1:0"
[sync]
enabled = true
broker = "{broker}"
topic_prefix = "test-{id}/"
reconnect_max_ms = 1000
[update]
public_key = "{public}"
health_deadline_s = {deadline_s}
max_bundle_mb = 4096
"#,
            store = dir.join("state/edge.db").display()
        );
        std::fs::create_dir_all(dir.join("state")).unwrap();
        std::fs::write(path, text).unwrap();
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn key(&self) -> String {
        self.path("release.key").display().to_string()
    }

    fn cfg(&self) -> &str {
        self.config.to_str().unwrap()
    }

    /// A bundle of `files` (the first is the program) signed with `key`.
    fn pack(&self, name: &str, key: &str, version: &str, files: &[&Path]) -> PathBuf {
        let out = self.path(name);
        let mut args = vec!["update", "pack", "--key", key, "--version", version, "--out"];
        let out_s = out.display().to_string();
        args.push(&out_s);
        let files: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
        args.extend(files.iter().map(String::as_str));
        ok(&edge(&args));
        out
    }

    fn install(&self, bundle: &Path) -> Output {
        edge(&["update", "install", "--config", self.cfg(), bundle.to_str().unwrap()])
    }

    fn status(&self) -> Value {
        serde_json::from_str(&ok(&edge(&["update", "status", "--config", self.cfg()]))).unwrap()
    }

    /// A shell script as a program: `config check` passes, `run` does `body`.
    fn script(&self, name: &str, body: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt as _;
        let p = self.path(name);
        std::fs::write(&p, format!("#!/bin/sh\nif [ \"$1\" = config ]; then exit 0; fi\n{body}\n"))
            .unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p
    }

    fn slot_program(&self, slot: &str) -> PathBuf {
        self.path(&format!("state/update/slot-{slot}/tapwatch-edge"))
    }
}

/// `tapwatch-edge run`, started as its service would start it (the packaged program launches).
struct Running {
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
}

impl Running {
    fn start(tap: &Tap) -> Running {
        let mut child = Command::new(BIN)
            .args(["run", "--config", tap.cfg()])
            .env("TAPWATCH_LOG", "info")
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let l = log.clone();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                l.lock().unwrap().push(line);
            }
        });
        Running { child, log }
    }

    fn wait_log(&self, what: &str, within: Duration) {
        let t = Instant::now();
        while t.elapsed() < within {
            if self.log.lock().unwrap().iter().any(|l| l.contains(what)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("no {what:?} in {within:?}; log:\n{}", self.log.lock().unwrap().join("\n"));
    }

    /// `/metrics` of the program listening (the newest "listening on" logged).
    fn metrics(&self) -> String {
        let base = self
            .log
            .lock()
            .unwrap()
            .iter()
            .rev()
            .find_map(|l| l.split("listening on ").nth(1).map(|b| b.trim().to_string()))
            .unwrap();
        let out = Command::new("curl").args(["-s", "-m", "5", &format!("{base}/metrics")]).output();
        String::from_utf8_lossy(&out.unwrap().stdout).into_owned()
    }

    /// How many times a line holding `what` was logged.
    fn count(&self, what: &str) -> usize {
        self.log.lock().unwrap().iter().filter(|l| l.contains(what)).count()
    }

    /// The programs of this process and its children.
    fn programs(&self) -> Vec<PathBuf> {
        let pid = self.child.id();
        let mut v = vec![std::fs::read_link(format!("/proc/{pid}/exe")).unwrap()];
        let kids =
            std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
        for k in kids.split_whitespace() {
            if let Ok(p) = std::fs::read_link(format!("/proc/{k}/exe")) {
                v.push(p);
            }
        }
        v
    }

    /// SIGTERM, and its exit status within 30 s.
    fn stop(mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(30) {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("did not stop within 30 s after SIGTERM");
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn wait_until(within: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while t.elapsed() < within {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("{what}: not within {within:?}");
}

#[test]
fn test_a_good_update_goes_live_and_kill_9_mid_install_leaves_it_running() {
    if skip() {
        return;
    }
    let tap = Tap::new("good", 60);
    let good = tap.pack("good.twu", &tap.key(), "9.0.0-good", &[Path::new(BIN)]);
    ok(&tap.install(&good));
    let s = tap.status();
    assert_eq!(s["active"], "factory");
    assert_eq!(s["trial"]["slot"], "a");
    assert_eq!(s["trial"]["version"], "9.0.0-good");

    // The next start runs it on trial as the launcher's child; healthy, its slot is kept.
    let run = Running::start(&tap);
    wait_until(Duration::from_secs(60), "update installed", || tap.status()["active"] == "a");
    let s = tap.status();
    assert_eq!(s["last"]["result"], "installed", "{s}");
    assert_eq!(s["active_version"], "9.0.0-good");
    assert!(s["trial"].is_null());
    assert!(run.programs().contains(&tap.slot_program("a")), "{:?}", run.programs());
    assert!(run.stop().success(), "the launcher passes SIGTERM on and exits as its child did");

    // From then on the slot's program runs in the service's own process (exec).
    let run = Running::start(&tap);
    run.wait_log("listening on", Duration::from_secs(30));
    assert_eq!(run.programs(), vec![tap.slot_program("a")]);
    drop(run);

    // Power lost during an install into slot b, at many moments: slot a stays active and
    // starts; the state always reads; an install that got as far as its trial left it whole.
    let again = tap.pack("again.twu", &tap.key(), "9.0.1", &[Path::new(BIN)]);
    for delay_ms in [50, 300, 1000, 2500, 5000] {
        let mut install = Command::new(BIN)
            .args(["update", "install", "--config", tap.cfg(), again.to_str().unwrap()])
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        let _ = install.kill();
        let _ = install.wait();
        let s = tap.status();
        assert_eq!(s["active"], "a", "after kill -9 at {delay_ms} ms: {s}");
        if !s["trial"].is_null() {
            assert_eq!(s["trial"]["version"], "9.0.1");
            assert_eq!(
                std::fs::read(tap.slot_program("b")).unwrap(),
                std::fs::read(BIN).unwrap(),
                "a trial names a whole slot"
            );
        }
    }
    if tap.status()["trial"].is_null() {
        let run = Running::start(&tap);
        run.wait_log("listening on", Duration::from_secs(30));
        assert_eq!(run.programs(), vec![tap.slot_program("a")]);
    }
    // And a whole install after those still works (what the kills left is cleared).
    ok(&tap.install(&again));
    assert!(!tap.path("state/update/slot-b.new").exists());
    assert_eq!(tap.status()["trial"]["slot"], "b");
}

#[test]
fn test_a_bundle_not_signed_by_the_release_key_or_altered_is_refused() {
    if skip() {
        return;
    }
    let tap = Tap::new("sig", 60);
    let program = tap.script("program", "exit 0");
    let other = tap.path("other.key");
    ok(&edge(&["update", "keygen", "--out", other.to_str().unwrap()]));
    let forged = tap.pack("forged.twu", other.to_str().unwrap(), "6.6.6", &[&program]);
    let out = tap.install(&forged);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not the release key's"));
    let s = tap.status();
    assert_eq!(s["last"]["result"], "refused");
    assert!(s["trial"].is_null());
    assert!(!tap.slot_program("a").exists(), "nothing of it is written");

    // Signed, then one byte of the program changed.
    let signed = tap.pack("signed.twu", &tap.key(), "6.6.7", &[&program]);
    let mut bytes = std::fs::read(&signed).unwrap();
    let at = bytes.windows(6).position(|w| w == b"exit 0").unwrap();
    bytes[at + 5] = b'1';
    std::fs::write(&signed, bytes).unwrap();
    let out = tap.install(&signed);
    assert!(String::from_utf8_lossy(&out.stderr).contains("SHA-256"), "{out:?}");
    assert!(tap.status()["trial"].is_null());

    // For another machine.
    let arch = tap.path("arch.twu");
    ok(&edge(&[
        "update",
        "pack",
        "--key",
        &tap.key(),
        "--version",
        "1",
        "--arch",
        "riscv64",
        "--out",
        arch.to_str().unwrap(),
        program.to_str().unwrap(),
    ]));
    let out = tap.install(&arch);
    assert!(String::from_utf8_lossy(&out.stderr).contains("built for riscv64"), "{out:?}");
}

#[test]
fn test_an_update_that_crashes_at_start_is_rolled_back_and_the_old_program_captures() {
    if skip() {
        return;
    }
    let tap = Tap::new("crash", 60);
    let program = tap.script("crashes", "echo 'cannot map the ring' >&2; exit 3");
    let b = tap.pack("crash.twu", &tap.key(), "7.0.0-crash", &[&program]);
    ok(&tap.install(&b));
    let run = Running::start(&tap);
    run.wait_log("update rolled back", Duration::from_secs(30));
    // The launcher goes on as the program that was active, and it captures.
    run.wait_log("listening on", Duration::from_secs(30));
    let s = tap.status();
    assert_eq!(s["active"], "factory");
    assert!(s["trial"].is_null());
    assert_eq!(s["last"]["result"], "rolled_back");
    assert_eq!(s["last"]["version"], "7.0.0-crash");
    let reason = s["last"]["reason"].as_str().unwrap();
    assert!(reason.contains("exit status: 3") && reason.contains("never reported"), "{reason}");
    assert_eq!(run.programs(), vec![bin()]);
    assert_eq!(run.count("capturing"), 1);
    // And says so to Prometheus.
    let m = run.metrics();
    assert!(m.contains("tapwatch_update_info{slot=\"factory\",release=\""), "{m}");
    assert!(
        m.contains("tapwatch_update_last{result=\"rolled_back\",version=\"7.0.0-crash\"}"),
        "{m}"
    );
}

#[test]
fn test_an_update_that_never_reaches_its_broker_is_rolled_back_at_its_deadline() {
    if skip() {
        return;
    }
    let tap = Tap::new("noconnect", 8);
    // The real program, started with a configuration whose broker nothing listens at: ready
    // and capturing, never connected.
    let never = tap.path("never.toml");
    let public = std::fs::read_to_string(&tap.config)
        .unwrap()
        .lines()
        .find_map(|l| {
            l.strip_prefix("public_key = \"").map(|k| k.trim_end_matches('"').to_string())
        })
        .unwrap();
    Tap::write_config(&never, &tap.path("never"), "update-never", "127.0.0.1:9", &public, 8);
    let wrapper = tap.script(
        "wrapper",
        &format!("exec \"$(dirname \"$0\")/real\" run --config {}", never.display()),
    );
    let real = tap.path("real");
    std::fs::copy(BIN, &real).unwrap();
    let b = tap.pack("never.twu", &tap.key(), "8.0.0-offline", &[&wrapper, &real]);
    ok(&tap.install(&b));
    let started = Instant::now();
    let run = Running::start(&tap);
    run.wait_log("update rolled back", Duration::from_secs(40));
    assert!(started.elapsed() >= Duration::from_secs(8), "not before its deadline");
    run.wait_log("listening on", Duration::from_secs(30));
    let s = tap.status();
    assert_eq!(s["active"], "factory");
    assert_eq!(s["last"]["result"], "rolled_back");
    let reason = s["last"]["reason"].as_str().unwrap();
    assert_eq!(
        reason, "not healthy within update.health_deadline_s (8 s): not connected to the broker",
        "{s}"
    );
    // The program before it is the one that runs (the trial's child is gone).
    wait_until(Duration::from_secs(15), "the trial's program stopped", || {
        run.programs() == vec![bin()]
    });
}

#[test]
fn test_a_trial_cut_short_by_kill_9_is_rolled_back_at_the_next_start() {
    if skip() {
        return;
    }
    let tap = Tap::new("cut", 600);
    let program = tap.script("sleeper", "exec sleep 600");
    let b = tap.pack("sleep.twu", &tap.key(), "5.0.0-cut", &[&program]);
    ok(&tap.install(&b));
    let mut run = Running::start(&tap);
    run.wait_log("on trial", Duration::from_secs(30));
    wait_until(Duration::from_secs(10), "the trial's program started", || {
        run.programs().len() == 2
    });
    let kids = run.programs();
    assert!(kids[1].ends_with("sleep"), "{kids:?}");
    // Power lost: launcher and child killed at once (systemd kills the whole service too).
    let pid = run.child.id().to_string();
    let child_pid = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap();
    let _ = Command::new("kill").args(["-KILL", &pid, child_pid.trim()]).status();
    let _ = run.child.wait();
    assert!(tap.status()["trial"]["started"].is_i64());

    let run = Running::start(&tap);
    run.wait_log("listening on", Duration::from_secs(30));
    let s = tap.status();
    assert_eq!(s["active"], "factory");
    assert_eq!(s["last"]["result"], "rolled_back");
    assert!(s["last"]["reason"].as_str().unwrap().contains("cut short"), "{s}");
    assert_eq!(run.programs(), vec![bin()]);
}

#[test]
fn test_a_kept_slot_that_no_longer_starts_falls_back_to_the_factory_program() {
    if skip() {
        return;
    }
    let tap = Tap::new("broken", 60);
    let program = tap.script("wrapper", &format!("exec {BIN} \"$@\""));
    let b = tap.pack("wrapper.twu", &tap.key(), "4.0.0", &[&program]);
    ok(&tap.install(&b));
    let run = Running::start(&tap);
    wait_until(Duration::from_secs(60), "update installed", || tap.status()["active"] == "a");
    run.stop();
    // Starts well: nothing counted against it.
    let run = Running::start(&tap);
    run.wait_log("capturing", Duration::from_secs(30));
    wait_until(Duration::from_secs(10), "its start counted good", || {
        tap.status()["failed_starts"] == 0
    });
    drop(run);
    // `config check` (the service's ExecStartPre) asks the kept slot's program.
    let reads = format!(
        "#!/bin/sh\nif [ \"$1\" = config ]; then echo \"slot $TAPWATCH_SLOT read it\"; exit 0; fi\nexec {BIN} \"$@\"\n"
    );
    std::fs::write(tap.slot_program("a"), reads).unwrap();
    assert_eq!(ok(&edge(&["config", "check", tap.cfg()])), "slot a read it");
    // Later its program breaks (a library gone, a disk fault): each start fails at once, and
    // `config check` falls back to the packaged program's word.
    let broken = "#!/bin/sh\necho 'libpcap.so.0.8: not found' >&2\nexit 127\n";
    std::fs::write(tap.slot_program("a"), broken).unwrap();
    let out = edge(&["config", "check", tap.cfg()]);
    assert!(ok(&out).ends_with(": ok"));
    assert!(String::from_utf8_lossy(&out.stderr).contains("libpcap.so.0.8: not found"));
    for n in 1..=3 {
        let mut run = Running::start(&tap);
        let status = run.child.wait().unwrap();
        assert_eq!(status.code(), Some(127), "start {n}");
        assert_eq!(tap.status()["failed_starts"], n);
    }
    // The next start runs the factory program, and says why.
    let run = Running::start(&tap);
    run.wait_log("listening on", Duration::from_secs(30));
    assert_eq!(run.programs(), vec![bin()]);
    let s = tap.status();
    assert_eq!(s["active"], "factory");
    assert_eq!(s["last"]["result"], "reset");
    assert_eq!(s["last"]["reason"], "slot a's program started 3 times in a row without capturing");
}

/// Two programs on one store would send its outbox twice: whatever launches them (a service
/// manager and a hand, a launcher and a program it failed to stop), the second is refused.
#[test]
fn test_a_second_daemon_on_the_same_store_is_refused_with_the_reason() {
    if skip() {
        return;
    }
    let tap = Tap::new("twice", 60);
    let first = Running::start(&tap);
    first.wait_log("listening on", Duration::from_secs(30));
    let second = edge(&["run", "--config", tap.cfg()]);
    assert_eq!(second.status.code(), Some(78));
    let said = String::from_utf8_lossy(&second.stderr);
    assert!(said.contains("is in use by another tapwatch-edge"), "{said}");
    let sync = edge(&["sync", "--config", tap.cfg()]);
    assert!(String::from_utf8_lossy(&sync.stderr).contains("is in use"), "{sync:?}");
    assert!(first.stop().success());
    // Once it stopped, the store is free again.
    let again = Running::start(&tap);
    again.wait_log("listening on", Duration::from_secs(30));
}
