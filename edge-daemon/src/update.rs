//! Signed A/B updates of this program.
//!
//! Beside the store (`update/` next to `store.path`, under the service's `StateDirectory`) are
//! two slots, `slot-a/` and `slot-b/`, each a bundle's files (see [`edge_config::update`]), and
//! `state.json`: which program is active (`factory`, the packaged `/usr/bin/tapwatch-edge`,
//! or a slot), the update on trial if any, and the last outcome with its reason. The packaged
//! program is the launcher, playing the boot loader's part in an A/B scheme: it never changes
//! but by a package install, and it decides what runs.
//!
//! States of an update:
//! 1. **Installed** (`tapwatch-edge update install BUNDLE`): the signature is checked against
//!    `update.public_key` before a byte of it is written; its files go to `slot-X.new/` (X the
//!    slot not active), are hashed, synced, the new program must accept this configuration
//!    (`config check`), and only then is `slot-X.new` renamed to `slot-X` and the trial written
//!    to `state.json` (written whole: a temporary file, fsync, rename, fsync of the folder).
//!    Killed at any point before that rename, the active slot is untouched and still starts.
//! 2. **On trial** (the next `run`): the launcher marks the trial started, starts the new
//!    program as its child (`TAPWATCH_TRIAL` set), forwards SIGTERM, SIGINT and SIGHUP to it,
//!    and waits. The child writes `health.json` each second; once it is ready, captures on every
//!    interface and is connected to the broker (when sync is on), the launcher makes its slot
//!    the active one (**committed**) and from then on only waits for it to end.
//! 3. **Rolled back**: the child stopped before it was healthy, or was not healthy within
//!    `update.health_deadline_s` (it is stopped: SIGTERM, SIGKILL 10 s later). The trial is
//!    dropped, the reason kept, and the launcher goes on with the program that was active. A
//!    trial found started at launch (power lost, the launcher killed) is rolled back too: the
//!    new program never proved itself.
//! 4. **Active**: a committed slot is started by `exec` (same process, same systemd main PID).
//!    One whose program cannot be started, or that starts [`MAX_FAILED_STARTS`] times in a row
//!    without capturing (counted before each start, cleared by the program once it captures),
//!    falls back to the factory program, with the reason.
//!
//! `update reset` (the package's postinst) goes back to the factory program: a package the
//! operator installed wins over a slot.
//!
//! A slot's program is told its slot (`TAPWATCH_SLOT`), its release (`TAPWATCH_RELEASE`, the
//! bundle's version, which its status reports to the hub) and its launcher
//! (`TAPWATCH_LAUNCHER`, which it execs to launch again after installing an update from the
//! hub, [`relaunch`]).

use crate::config::Config;
use edge_config::update as bundle;
use serde::{Deserialize, Serialize};
use std::ffi::OsString;
use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

/// Set in a slot program's environment by its launcher: which slot it runs from.
pub const SLOT_ENV: &str = "TAPWATCH_SLOT";
/// Set in the environment of a program on trial: the file it reports its health to.
pub const TRIAL_ENV: &str = "TAPWATCH_TRIAL";
/// The launcher's path, for a slot program that asks to be launched again.
pub const LAUNCHER_ENV: &str = "TAPWATCH_LAUNCHER";
/// Set by the launcher in a slot program's environment: the release it runs (the bundle's
/// version), which the program reports to the hub.
pub const RELEASE_ENV: &str = "TAPWATCH_RELEASE";
/// A program's exit status that asks its launcher to launch again (an update was installed).
pub const RELAUNCH: u8 = 75;

/// A place a program runs from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Slot {
    /// The packaged program (the launcher itself).
    #[default]
    Factory,
    A,
    B,
}

impl Slot {
    pub fn name(self) -> &'static str {
        match self {
            Slot::Factory => "factory",
            Slot::A => "a",
            Slot::B => "b",
        }
    }

    /// The slot an update goes to while this one is active.
    pub fn standby(self) -> Slot {
        match self {
            Slot::A => Slot::B,
            Slot::Factory | Slot::B => Slot::A,
        }
    }
}

/// What became of an update.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Healthy within its deadline: its slot is active.
    Installed,
    /// Started, not healthy: the program before it is back.
    RolledBack,
    /// Not installed (signature, format, configuration): nothing changed.
    Refused,
    /// `update reset`: back to the factory program.
    Reset,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Trial {
    pub slot: Slot,
    pub version: String,
    /// The bundle's SHA-256.
    pub sha256: String,
    pub installed: i64,
    pub deadline_s: u32,
    /// When the launcher started it (Unix seconds); set before it starts, so a trial found
    /// started at launch was cut short.
    pub started: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    pub version: String,
    pub sha256: String,
    pub result: Verdict,
    pub reason: String,
    pub at: i64,
}

/// `state.json`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct State {
    pub active: Slot,
    /// The active slot's version ("" for the factory program: its own).
    pub active_version: String,
    pub active_sha256: String,
    pub trial: Option<Trial>,
    pub last: Option<Outcome>,
    /// Starts of the active slot in a row that never got as far as capturing: at
    /// [`MAX_FAILED_STARTS`] the launcher goes back to the factory program.
    pub failed_starts: u32,
}

/// Starts of a committed slot in a row that never capture, before the factory program is
/// started instead (a slot that worked on trial and broke later: a library it needs removed, a
/// disk fault).
pub const MAX_FAILED_STARTS: u32 = 3;

/// What the trial's program says of itself, each second (`health.json`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    pub pid: u32,
    pub ready: bool,
    pub capturing: bool,
    /// Connected to the broker, or sync is off.
    pub connected: bool,
}

impl Health {
    pub fn healthy(&self) -> bool {
        self.ready && self.capturing && self.connected
    }

    fn missing(&self) -> String {
        let mut v = Vec::new();
        if !self.ready {
            v.push("not ready");
        }
        if !self.capturing {
            v.push("not capturing on every interface");
        }
        if !self.connected {
            v.push("not connected to the broker");
        }
        v.join(", ")
    }
}

fn now() -> i64 {
    crate::daemon::now_us() / 1_000_000
}

/// The update folder of one configuration.
#[derive(Debug, Clone)]
pub struct Slots {
    root: PathBuf,
}

impl Slots {
    pub fn new(config: &Config) -> Slots {
        Slots { root: config.store.path.with_file_name("update") }
    }

    /// The slots in `root` (an update folder).
    pub fn at(root: &Path) -> Slots {
        Slots { root: root.to_path_buf() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn slot_dir(&self, slot: Slot) -> Option<PathBuf> {
        (slot != Slot::Factory).then(|| self.root.join(format!("slot-{}", slot.name())))
    }

    /// The program a slot runs; `None` for the factory program.
    pub fn program(&self, slot: Slot) -> Option<PathBuf> {
        self.slot_dir(slot).map(|d| d.join(bundle::BINARY))
    }

    fn state_path(&self) -> PathBuf {
        self.root.join("state.json")
    }

    pub fn health_path(&self) -> PathBuf {
        self.root.join("health.json")
    }

    /// The state; none kept is the factory program with nothing on trial. A file that does not
    /// read is an error (it is written whole, so only a hand or a disk fault breaks it).
    pub fn load(&self) -> Result<State, String> {
        match std::fs::read(self.state_path()) {
            Ok(b) => serde_json::from_slice(&b)
                .map_err(|e| format!("{}: {e}", self.state_path().display())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(State::default()),
            Err(e) => Err(format!("{}: {e}", self.state_path().display())),
        }
    }

    /// Write the state whole: a kill at any moment leaves the old one or the new one.
    pub fn save(&self, state: &State) -> Result<(), String> {
        let text = serde_json::to_vec_pretty(state).map_err(|e| e.to_string())?;
        crate::write_whole(&self.state_path(), &text)
    }

    /// One change at a time (an install and a launch, two installs).
    fn lock(&self) -> Result<File, String> {
        // Root writing here would leave files the service's user cannot replace or run.
        if let Some(parent) = self.root.parent().filter(|p| p.exists()) {
            use std::os::unix::fs::MetadataExt as _;
            let owner = std::fs::metadata(parent).map(|m| m.uid()).unwrap_or(0);
            if rustix::process::geteuid().is_root() && owner != 0 {
                return Err(format!(
                    "{} belongs to the service's user (uid {owner}): run this as that user \
                     (sudo -u tapwatch tapwatch-edge update ...)",
                    parent.display()
                ));
            }
        }
        create_dir(&self.root)?;
        let path = self.root.join("lock");
        let f = File::create(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        rustix::fs::flock(&f, rustix::fs::FlockOperation::LockExclusive)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(f)
    }

    /// Check a bundle and put it in the standby slot, on trial from the next start. A refusal
    /// is kept as the last outcome, with its reason, and changes nothing else.
    pub fn install(
        &self,
        file: &Path,
        config: &Config,
        config_path: &Path,
    ) -> Result<Trial, String> {
        let _lock = self.lock()?;
        let mut state = self.load()?;
        match self.stage(file, config, config_path, &state) {
            Ok(trial) => {
                state.trial = Some(trial.clone());
                self.save(&state)?;
                Ok(trial)
            }
            Err((version, sha256, reason)) => {
                state.last = Some(Outcome {
                    version,
                    sha256,
                    result: Verdict::Refused,
                    reason: reason.clone(),
                    at: now(),
                });
                let _ = self.save(&state);
                Err(reason)
            }
        }
    }

    fn stage(
        &self,
        file: &Path,
        config: &Config,
        config_path: &Path,
        state: &State,
    ) -> Result<Trial, (String, String, String)> {
        let refuse = |r: String| (String::new(), String::new(), r);
        let u = &config.update;
        if u.public_key.is_empty() {
            return Err(refuse("update.public_key is empty: this edge takes no update".into()));
        }
        if state.trial.as_ref().is_some_and(|t| t.started.is_some()) {
            return Err(refuse("an update is on trial; wait for its outcome".into()));
        }
        let mut input = File::open(file).map_err(|e| refuse(format!("{}: {e}", file.display())))?;
        let size = input.metadata().map(|m| m.len()).unwrap_or(0);
        let max = u64::from(u.max_bundle_mb) << 20;
        if size > max {
            return Err(refuse(format!(
                "the bundle is {} MiB, over update.max_bundle_mb ({})",
                size >> 20,
                u.max_bundle_mb
            )));
        }
        let slot = state.active.standby();
        let Some(dir) = self.slot_dir(slot) else {
            return Err(refuse("no standby slot".into()));
        };
        let new = dir.with_extension("new");
        remove_dir(&new).map_err(refuse)?;
        create_dir(&new).map_err(refuse)?;
        let result = (|| {
            let mut hashing =
                HashingReader { inner: (&mut input).take(max), hash: Default::default() };
            let mut sink = |f: &bundle::FileEntry, r: &mut dyn Read| -> io::Result<()> {
                use std::os::unix::fs::OpenOptionsExt as _;
                let path = new.join(&f.name);
                let mut out = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(f.mode)
                    .open(&path)?;
                io::copy(r, &mut out)?;
                out.sync_all()
            };
            let manifest = bundle::read(
                &mut hashing,
                Some(&u.public_key),
                Some(std::env::consts::ARCH),
                Some(&mut sink),
            )
            .map_err(|e| refuse(e.to_string()))?;
            // The rest of the file (tar's end blocks), so that the hash covers all of it.
            io::copy(&mut hashing, &mut io::sink()).map_err(|e| refuse(e.to_string()))?;
            let sha256 = hex(hashing.hash);
            let named = |r: String| (manifest.version.clone(), sha256.clone(), r);
            // The new program must read this configuration as it is.
            check_config(&new.join(bundle::BINARY), config_path).map_err(named)?;
            remove_dir(&dir).map_err(named)?;
            std::fs::rename(&new, &dir).map_err(|e| named(format!("{}: {e}", dir.display())))?;
            crate::sync_dir(&self.root).map_err(named)?;
            Ok(Trial {
                slot,
                version: manifest.version,
                sha256,
                installed: now(),
                deadline_s: u.health_deadline_s,
                started: None,
            })
        })();
        if result.is_err() {
            let _ = remove_dir(&new);
        }
        result
    }

    /// The active slot's program captures: its failed starts go back to 0.
    pub fn started_well(&self) -> Result<(), String> {
        let _lock = self.lock()?;
        let mut state = self.load()?;
        if state.failed_starts != 0 {
            state.failed_starts = 0;
            self.save(&state)?;
        }
        Ok(())
    }

    /// Back to the factory program; the slots stay until the next install.
    pub fn reset(&self, reason: &str) -> Result<State, String> {
        let _lock = self.lock()?;
        let mut state = self.load().unwrap_or_default();
        let (version, sha256) = (state.active_version.clone(), state.active_sha256.clone());
        state.active = Slot::Factory;
        state.active_version.clear();
        state.active_sha256.clear();
        state.failed_starts = 0;
        state.trial = None;
        state.last = Some(Outcome {
            version,
            sha256,
            result: Verdict::Reset,
            reason: reason.into(),
            at: now(),
        });
        self.save(&state)?;
        Ok(state)
    }
}

fn hex(hash: sha2::Sha256) -> String {
    use sha2::Digest as _;
    hash.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

struct HashingReader<R> {
    inner: R,
    hash: sha2::Sha256,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        use sha2::Digest as _;
        let n = self.inner.read(buf)?;
        self.hash.update(&buf[..n]);
        Ok(n)
    }
}

/// `PROGRAM config check CONFIG`, at most 30 s.
fn check_config(program: &Path, config: &Path) -> Result<(), String> {
    let mut child = std::process::Command::new(program)
        .args(["config", "check"])
        .arg(config)
        // It judges for itself, not the active slot's program.
        .env(SLOT_ENV, "new")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("the new program does not start: {e}"))?;
    let mut err = child.stderr.take();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        if let Some(e) = err.as_mut() {
            let _ = e.take(4096).read_to_string(&mut s);
        }
        s
    });
    let started = std::time::Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) if started.elapsed() < Duration::from_secs(30) => {
                std::thread::sleep(Duration::from_millis(20))
            }
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return Err("the new program's `config check` did not end within 30 s".into());
            }
        }
    };
    let stderr = reader.join().unwrap_or_default();
    if status.success() {
        Ok(())
    } else {
        Err(format!("the new program refuses this configuration ({status}): {}", stderr.trim()))
    }
}

fn create_dir(dir: &Path) -> Result<(), String> {
    use std::os::unix::fs::DirBuilderExt as _;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o750)
        .create(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))
}

fn remove_dir(dir: &Path) -> Result<(), String> {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(format!("{}: {e}", dir.display())),
        _ => Ok(()),
    }
}

/// What a configuration from the hub that names an update asks of this program.
#[derive(Debug, PartialEq, Eq)]
pub enum FromHub {
    /// It names none.
    Nothing,
    /// It names the program that runs (a note for the answer).
    Running(String),
    /// It is installed, on trial from the next start: launch again once the configuration is
    /// answered (a note for the answer).
    Relaunch(String),
}

/// The update a configuration from the hub names ([`firmware::proto::UpdateRef`]): the hub's
/// signature checked (with `sync.config_public_key`), then, unless it runs already, is on
/// trial, or was refused or rolled back before, fetched (bounded by `update.max_bundle_mb`),
/// its hash checked and installed as [`Slots::install`] does (the release key's signature
/// first). An update refused or rolled back fails the configuration with its reason, until the
/// hub names another.
pub fn from_hub(
    config: &Config,
    config_path: &Path,
    r: Option<&firmware::proto::UpdateRef>,
) -> Result<FromHub, (firmware::proto::ApplyResult, String)> {
    use firmware::proto::ApplyResult::{Failed, Refused};
    let Some(r) = r else { return Ok(FromHub::Nothing) };
    let v = &r.version;
    let key = &config.sync.config_public_key;
    if !key.is_empty() {
        edge_config::fleet::verify_update(key, r)
            .map_err(|e| (Refused, format!("update {v}: {e}")))?;
    }
    let slots = Slots::new(config);
    let state = slots.load().map_err(|e| (Failed, format!("update {v}: {e}")))?;
    if state.active_sha256 == r.sha256 {
        return Ok(FromHub::Running(format!("update {v} runs (slot {})", state.active.name())));
    }
    if let Some(t) = state.trial.as_ref().filter(|t| t.sha256 == r.sha256) {
        if t.started.is_some() {
            // This program is that trial (or its launcher is about to judge it).
            return Ok(FromHub::Running(format!("update {v} on trial (slot {})", t.slot.name())));
        }
        return Ok(FromHub::Relaunch(format!(
            "update {v} is in slot {}; starting again to try it",
            t.slot.name()
        )));
    }
    if let Some(o) = state.last.as_ref().filter(|o| o.sha256 == r.sha256) {
        let what = match o.result {
            Verdict::RolledBack => Some("rolled back"),
            Verdict::Refused => Some("refused"),
            Verdict::Installed | Verdict::Reset => None,
        };
        if let Some(what) = what {
            return Err((
                Failed,
                format!("update {v} {what}: {}; the program before it runs", o.reason),
            ));
        }
    }
    if let Some(t) = state.trial.as_ref().filter(|t| t.started.is_some()) {
        // Failed, not refused: tried again every 30 s, until that trial has its outcome.
        return Err((Failed, format!("update {v} waits: update {} is on trial", t.version)));
    }
    let max = u64::from(config.update.max_bundle_mb) << 20;
    let bytes = crate::hub_models::fetch(&r.url, max, Path::new(&config.sync.ca_file))
        .map_err(|e| (Failed, format!("update {v}: {e}")))?;
    let sha = edge_model::sha256_hex(&bytes);
    if sha != r.sha256 {
        return Err((
            Refused,
            format!("update {v}: the bundle fetched has SHA-256 {sha}, not {}", r.sha256),
        ));
    }
    create_dir(slots.root()).map_err(|e| (Failed, e))?;
    let incoming = slots.root().join("incoming.twu");
    crate::write_whole(&incoming, &bytes).map_err(|e| (Failed, format!("update {v}: {e}")))?;
    let result = slots.install(&incoming, config, config_path);
    let _ = std::fs::remove_file(&incoming);
    match result {
        Ok(t) => Ok(FromHub::Relaunch(format!(
            "update {v} installed in slot {}; starting again to try it",
            t.slot.name()
        ))),
        Err(e) => Err((Refused, format!("update {v} refused: {e}"))),
    }
}

/// `config check FILE` by the active slot's program, when one is kept: a configuration may use
/// what only the newer program reads, and the service checks before each start with the
/// packaged program. `None` when there is no slot program (or this is one); otherwise whether it
/// accepted the file, and what it said. Only `store.path` is read here, to find the slots.
pub fn check_with_active(file: &Path) -> Option<(bool, String)> {
    if std::env::var_os(SLOT_ENV).is_some() {
        return None;
    }
    let text = std::fs::read_to_string(file).ok()?;
    let table: toml::Table = toml::from_str(&text).ok()?;
    let store = table
        .get("store")
        .and_then(|s| s.get("path"))
        .and_then(|p| p.as_str())
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::config::StoreConfig::default().path);
    let slots = Slots { root: store.with_file_name("update") };
    let state = slots.load().ok()?;
    let program = slots.program(state.active)?;
    let out = std::process::Command::new(&program)
        .args(["config", "check"])
        .arg(file)
        .env(SLOT_ENV, state.active.name())
        .output();
    Some(match out {
        Ok(o) => (
            o.status.success(),
            format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
                .trim()
                .to_string(),
        ),
        Err(e) => (false, format!("{}: {e}", program.display())),
    })
}

/// What `run` does after the launcher.
#[derive(Debug)]
pub enum Launch {
    /// Run the daemon in this process.
    Continue,
    /// A child ran and ended; exit with its status.
    Exit(ExitCode),
}

/// Before `run`: pick the program that runs, try an update on trial, roll back a failed one.
/// Without an update folder (no update ever installed) this does nothing.
pub fn launch(config_path: &Path) -> Launch {
    if std::env::var_os(SLOT_ENV).is_some() {
        return Launch::Continue;
    }
    let Ok(config) = Config::load(config_path) else {
        // `run` says what is wrong with it.
        return Launch::Continue;
    };
    let slots = Slots::new(&config);
    if !slots.root.join("state.json").exists() {
        return Launch::Continue;
    }
    let lock = match slots.lock() {
        Ok(l) => l,
        Err(e) => {
            tracing::error!("update: {e}; running the factory program");
            return Launch::Continue;
        }
    };
    let mut state = match slots.load() {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("update: {e}; running the factory program");
            return Launch::Continue;
        }
    };
    if let Some(trial) = state.trial.clone() {
        if trial.started.is_some() {
            roll_back(
                &slots,
                &mut state,
                "its trial was cut short (power lost, or the launcher killed) before it reported healthy",
            );
        } else {
            let mut t = trial.clone();
            t.started = Some(now());
            state.trial = Some(t);
            if let Err(e) = slots.save(&state) {
                tracing::error!("update: {e}; the update stays on trial for the next start");
            } else {
                drop(lock);
                match supervise(&slots, &trial) {
                    Supervised::Exit(code) => return Launch::Exit(code),
                    Supervised::Relaunch => relaunch(),
                    Supervised::RolledBack => {}
                }
                return launch_active(&slots);
            }
        }
    }
    drop(lock);
    launch_active(&slots)
}

/// Start the active slot's program in this process (exec), or go on as the factory program.
fn launch_active(slots: &Slots) -> Launch {
    let Ok(lock) = slots.lock() else { return Launch::Continue };
    let Ok(mut state) = slots.load() else { return Launch::Continue };
    let Some(program) = slots.program(state.active) else { return Launch::Continue };
    if state.failed_starts >= MAX_FAILED_STARTS {
        let reason = format!(
            "slot {}'s program started {} times in a row without capturing",
            state.active.name(),
            state.failed_starts
        );
        tracing::error!("update: {reason}; running the factory program");
        drop(lock);
        let _ = slots.reset(&reason);
        return Launch::Continue;
    }
    // Counted before it starts; the program sets it back to 0 once it captures.
    state.failed_starts += 1;
    if let Err(e) = slots.save(&state) {
        tracing::error!("update: {e}");
    }
    drop(lock);
    tracing::info!(slot = state.active.name(), version = %state.active_version, "update: starting the active slot");
    let e = exec(&program, state.active, &state.active_version);
    let reason = format!("slot {}'s program cannot be started: {e}", state.active.name());
    tracing::error!("update: {reason}; running the factory program");
    let _ = slots.reset(&reason);
    Launch::Continue
}

fn args() -> Vec<OsString> {
    std::env::args_os().skip(1).collect()
}

fn launcher() -> OsString {
    std::env::var_os(LAUNCHER_ENV)
        .or_else(|| std::env::current_exe().ok().map(PathBuf::into_os_string))
        .unwrap_or_else(|| "/usr/bin/tapwatch-edge".into())
}

/// The release this program runs: its slot's bundle version, or the packaged program's own.
pub fn running_version() -> String {
    std::env::var(RELEASE_ENV)
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| env!("CARGO_PKG_VERSION").to_string())
}

/// Replace this process with `program` (returns only on failure).
fn exec(program: &Path, slot: Slot, release: &str) -> io::Error {
    use std::os::unix::process::CommandExt as _;
    std::process::Command::new(program)
        .args(args())
        .env(SLOT_ENV, slot.name())
        .env(RELEASE_ENV, release)
        .env(LAUNCHER_ENV, launcher())
        .env_remove(TRIAL_ENV)
        .exec()
}

/// Launch again from the launcher (an update was installed while running): this process is
/// replaced. A program on trial or started by a launcher that waits for it exits with
/// [`RELAUNCH`] instead, and its launcher launches again.
pub fn relaunch() -> ! {
    use std::os::unix::process::CommandExt as _;
    if std::env::var_os(TRIAL_ENV).is_some() {
        std::process::exit(i32::from(RELAUNCH));
    }
    let e = std::process::Command::new(launcher())
        .args(args())
        .env_remove(SLOT_ENV)
        .env_remove(RELEASE_ENV)
        .env_remove(TRIAL_ENV)
        .exec();
    tracing::error!("update: cannot launch again ({e}); exiting for the service manager to");
    std::process::exit(i32::from(RELAUNCH));
}

/// Record the trial as rolled back, then say so: whoever reads the log line and then the state
/// (an operator, `update status`) finds the outcome there.
fn roll_back(slots: &Slots, state: &mut State, reason: &str) {
    let Some(trial) = state.trial.take() else { return };
    let version = trial.version.clone();
    state.last = Some(Outcome {
        version: trial.version,
        sha256: trial.sha256,
        result: Verdict::RolledBack,
        reason: reason.into(),
        at: now(),
    });
    if let Err(e) = slots.save(state) {
        tracing::error!("update: {e}");
    }
    tracing::error!(%version, "update rolled back: {reason}");
}

fn commit(slots: &Slots, trial: &Trial) -> Result<(), String> {
    let _lock = slots.lock()?;
    let mut state = slots.load()?;
    state.active = trial.slot;
    state.active_version = trial.version.clone();
    state.active_sha256 = trial.sha256.clone();
    state.failed_starts = 0;
    state.trial = None;
    state.last = Some(Outcome {
        version: trial.version.clone(),
        sha256: trial.sha256.clone(),
        result: Verdict::Installed,
        reason: "ready, capturing and connected within its deadline".into(),
        at: now(),
    });
    slots.save(&state)
}

enum Supervised {
    Exit(ExitCode),
    Relaunch,
    RolledBack,
}

/// Run the trial's program as a child until it is healthy (commit) or not (roll back), and
/// then until it ends.
fn supervise(slots: &Slots, trial: &Trial) -> Supervised {
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            let mut s = slots.load().unwrap_or_default();
            roll_back(slots, &mut s, &format!("the launcher cannot start its runtime: {e}"));
            return Supervised::RolledBack;
        }
    };
    rt.block_on(supervise_async(slots, trial))
}

async fn supervise_async(slots: &Slots, trial: &Trial) -> Supervised {
    use rustix::process::Signal;
    use tokio::signal::unix::{signal, SignalKind};
    let fail = |reason: String| {
        let mut s = slots.load().unwrap_or_default();
        roll_back(slots, &mut s, &reason);
        Supervised::RolledBack
    };
    let _ = std::fs::remove_file(slots.health_path());
    let Some(program) = slots.program(trial.slot) else {
        return fail("the trial names no slot".into());
    };
    tracing::info!(version = %trial.version, slot = trial.slot.name(), deadline_s = trial.deadline_s, "update: on trial");
    let mut child = match tokio::process::Command::new(&program)
        .args(args())
        .env(SLOT_ENV, trial.slot.name())
        .env(TRIAL_ENV, slots.health_path())
        .env(RELEASE_ENV, &trial.version)
        .env(LAUNCHER_ENV, launcher())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => return fail(format!("it does not start: {e}")),
    };
    let pid = child.id().and_then(|p| rustix::process::Pid::from_raw(p as i32));
    let send = |sig: Signal| {
        if let Some(pid) = pid {
            let _ = rustix::process::kill_process(pid, sig);
        }
    };
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) else {
        send(Signal::KILL);
        return fail("the launcher cannot watch signals".into());
    };
    let deadline = tokio::time::sleep(Duration::from_secs(trial.deadline_s.into()));
    tokio::pin!(deadline);
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let (mut healthy, mut stopping) = (false, false);
    let health = || -> Health {
        std::fs::read(slots.health_path())
            .ok()
            .and_then(|b| serde_json::from_slice::<Health>(&b).ok())
            .filter(|h| Some(h.pid) == pid.map(|p| p.as_raw_nonzero().get() as u32))
            .unwrap_or_default()
    };
    loop {
        tokio::select! {
            status = child.wait() => {
                let code = status.as_ref().ok().and_then(|s| s.code());
                if healthy {
                    if code == Some(i32::from(RELAUNCH)) {
                        return Supervised::Relaunch;
                    }
                    return Supervised::Exit(ExitCode::from(code.unwrap_or(1).clamp(0, 255) as u8));
                }
                if stopping {
                    // Stopped on purpose before it proved itself: it stays on trial.
                    if let Ok(mut s) = slots.load() {
                        if let Some(t) = s.trial.as_mut() {
                            t.started = None;
                        }
                        let _ = slots.save(&s);
                    }
                    return Supervised::Exit(ExitCode::SUCCESS);
                }
                let how = match status {
                    Ok(s) => s.to_string(),
                    Err(e) => e.to_string(),
                };
                let h = health();
                let missing = if h.pid == 0 { "it never reported".to_string() } else { h.missing() };
                return fail(format!("it stopped ({how}) before it was healthy ({missing})"));
            }
            _ = term.recv() => { stopping = true; send(Signal::TERM) }
            _ = int.recv() => { stopping = true; send(Signal::INT) }
            _ = hup.recv() => send(Signal::HUP),
            _ = tick.tick(), if !healthy => {
                if health().healthy() {
                    match commit(slots, trial) {
                        Ok(()) => {
                            healthy = true;
                            tracing::info!(version = %trial.version, "update installed: healthy on trial, its slot is active");
                        }
                        Err(e) => tracing::error!("update: cannot keep the new slot yet: {e}"),
                    }
                }
            }
            _ = &mut deadline, if !healthy && !stopping => {
                let h = health();
                let missing = if h.pid == 0 { "it never reported".to_string() } else { h.missing() };
                send(Signal::TERM);
                if tokio::time::timeout(Duration::from_secs(10), child.wait()).await.is_err() {
                    send(Signal::KILL);
                    let _ = child.wait().await;
                }
                return fail(format!(
                    "not healthy within update.health_deadline_s ({} s): {missing}",
                    trial.deadline_s
                ));
            }
        }
    }
}

/// Every interface open and capturing.
fn capturing(shared: &crate::metrics::Shared) -> bool {
    use std::sync::atomic::Ordering;
    shared
        .interfaces
        .read()
        .is_ok_and(|v| !v.is_empty() && v.iter().all(|c| c.up.load(Ordering::Relaxed) == 1))
}

/// In a program on trial: say each second whether it is ready, captures on every interface
/// and is connected (when sync is on). Returns at once when not on trial.
pub async fn report_health(config: Config, shared: std::sync::Arc<crate::metrics::Shared>) {
    use std::sync::atomic::Ordering;
    let Some(path) = std::env::var_os(TRIAL_ENV).map(PathBuf::from) else {
        // A committed slot's program: once it captures, its failed starts are forgotten.
        if std::env::var_os(SLOT_ENV).is_some() {
            loop {
                let capturing = capturing(&shared);
                if capturing {
                    if let Err(e) = Slots::new(&config).started_well() {
                        tracing::warn!("update: {e}");
                    }
                    return;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
        return;
    };
    loop {
        let capturing = capturing(&shared);
        let h = Health {
            pid: std::process::id(),
            ready: true,
            capturing,
            connected: !config.sync.enabled || shared.sync.connected.load(Ordering::Relaxed) == 1,
        };
        if let Ok(text) = serde_json::to_vec(&h) {
            if let Err(e) = crate::write_whole(&path, &text) {
                tracing::warn!("update: cannot report health: {e}");
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// `update keygen`: a new release key (the seed, base64, in `out`, mode 0600); returns the
/// public half for `update.public_key`.
pub fn keygen(out: &Path) -> Result<String, String> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut seed = [0u8; 32];
    File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut seed))
        .map_err(|e| format!("/dev/urandom: {e}"))?;
    let key = ed25519_dalek::SigningKey::from_bytes(&seed);
    let text = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, seed);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(out)
        .map_err(|e| format!("{}: {e}", out.display()))?;
    writeln!(f, "{text}")
        .and_then(|()| f.sync_all())
        .map_err(|e| format!("{}: {e}", out.display()))?;
    Ok(edge_config::fleet::public_key_text(&key))
}

/// `update pack`: a bundle of `files` (the first is the program), signed with the key in
/// `key_file`.
pub fn pack(
    key_file: &Path,
    version: &str,
    arch: &str,
    files: &[PathBuf],
    out: &Path,
) -> Result<bundle::Manifest, String> {
    let text =
        std::fs::read_to_string(key_file).map_err(|e| format!("{}: {e}", key_file.display()))?;
    let key = edge_config::fleet::signing_key(&text)
        .map_err(|e| format!("{}: {e}", key_file.display()))?;
    let mut named = Vec::new();
    for (i, f) in files.iter().enumerate() {
        let name = if i == 0 {
            bundle::BINARY.to_string()
        } else {
            f.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
        };
        named.push((name, f.as_path()));
    }
    let tmp = out.with_extension("partial");
    let file = File::create(&tmp).map_err(|e| format!("{}: {e}", tmp.display()))?;
    let mut w = io::BufWriter::new(file);
    let manifest = bundle::pack(&key, version, arch, now(), &named, &mut w)?;
    w.into_inner()
        .map_err(|e| e.to_string())
        .and_then(|f| f.sync_all().map_err(|e| e.to_string()))?;
    std::fs::rename(&tmp, out).map_err(|e| format!("{}: {e}", out.display()))?;
    Ok(manifest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_the_standby_slot_is_never_the_active_one() {
        for s in [Slot::Factory, Slot::A, Slot::B] {
            assert_ne!(s.standby(), s);
            assert_ne!(s.standby(), Slot::Factory);
        }
    }

    #[test]
    fn test_state_is_written_whole_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::offline(Some(&dir.path().join("edge.db")));
        config.update.public_key = String::new();
        let slots = Slots::new(&config);
        assert_eq!(slots.load().unwrap(), State::default());
        create_dir(slots.root()).unwrap();
        let s = State {
            active: Slot::B,
            active_version: "1.2".into(),
            trial: Some(Trial {
                slot: Slot::A,
                version: "1.3".into(),
                sha256: "ab".into(),
                installed: 1,
                deadline_s: 5,
                started: None,
            }),
            ..Default::default()
        };
        slots.save(&s).unwrap();
        assert_eq!(slots.load().unwrap(), s);
        assert!(!slots.root().join("state.tmp").exists());
        std::fs::write(slots.root().join("state.json"), b"{not json").unwrap();
        assert!(slots.load().is_err());
    }

    #[test]
    fn test_health_names_what_is_missing() {
        let h = Health { pid: 1, ready: true, capturing: false, connected: false };
        assert!(!h.healthy());
        assert_eq!(h.missing(), "not capturing on every interface, not connected to the broker");
        assert!(Health { pid: 1, ready: true, capturing: true, connected: true }.healthy());
    }
}
