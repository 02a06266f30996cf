//! The configuration in force while the daemon runs: `edge.toml`, with the hub's fleet
//! configuration laid over it ([`edge_config::fleet`]).
//!
//! Two things change it: a reload (SIGHUP or `POST /admin/reload`: the file is read again and the
//! hub's configuration laid over it again) and a configuration from the hub ([`Runtime::take`],
//! the newest one the sync thread received). Either is checked as a file is at start-up and
//! then applied to the running parts without a restart: each interface's capture filter is
//! replaced in place and its sampling set (the flow table is not touched, so flows in progress
//! go on), the detection settings go to the pipeline and the retention to the store writer. A
//! configuration refused when checked, or one a capture refuses (every filter changed is put
//! back), leaves the one before in force; one that failed to apply (not one refused) is tried
//! again after the next reload that succeeds. The hub's configuration last applied is kept beside
//! the store (`fleet-config.json`) and laid over the file at the next start; each one the hub
//! sends is answered on the `config/applied` stream with its revision, hash and result.
//!
//! A configuration that names models ([`crate::hub_models`]) has them fetched, checked and run
//! on their fixture rows before anything is applied; they replace the running models only once
//! the rest of the configuration is applied (a slot whose path did not change keeps its model).
//! One that failed (a model the hub could not serve) is tried again every [`RETRY`].

use crate::capture::{Control, InterfaceCounters};
use crate::config::{interface_filter, Config};
use crate::http::ReloadReport;
use crate::inference::{ModelPaths, Swap};
use crate::metrics::Shared;
use crate::model::{Model, ModelKind};
use crate::pipeline::Settings;
use crate::store::Row;
use edge_config::fleet;
use firmware::proto::{
    ApplyResult, Command, CommandMsg, CommandResultMsg, ConfigAppliedMsg, ConfigMsg,
};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How often a configuration from the hub that failed to apply is tried again.
pub const RETRY: Duration = Duration::from_secs(30);

/// How far a command's time may be from the edge's clock.
pub const COMMAND_MAX_AGE: Duration = Duration::from_secs(600);

/// What a reload did, in a line.
fn reload_text(r: &ReloadReport) -> String {
    let mut parts: Vec<String> =
        r.applied.iter().map(|(i, f)| format!("{i}: filter {f:?}")).collect();
    parts.extend(r.notes.iter().cloned());
    if parts.is_empty() {
        "reloaded; nothing changed".into()
    } else {
        format!("reloaded: {}", parts.join("; "))
    }
}

/// Capture controls by interface name.
pub type Controls = Arc<Mutex<Vec<(String, std::sync::mpsc::Sender<Control>)>>>;

/// A configuration from the hub, as applied and kept.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Applied {
    pub revision: u64,
    pub hash: String,
    pub config: serde_json::Value,
}

/// Where the hub's configuration last applied is kept: beside the store's database.
pub fn state_path(config: &Config) -> PathBuf {
    config.store.path.with_file_name("fleet-config.json")
}

/// Where the id of the last command from the hub done is kept: beside the store's database.
pub fn commands_path(config: &Config) -> PathBuf {
    config.store.path.with_file_name("fleet-commands.json")
}

/// The id of the last command done, as kept (0: none, or the file does not read).
fn last_command(path: &Path) -> u64 {
    std::fs::read(path)
        .ok()
        .and_then(|t| serde_json::from_slice::<serde_json::Value>(&t).ok())
        .and_then(|v| v["last"].as_u64())
        .unwrap_or(0)
}

/// The hub's configuration kept by an earlier run, if there is one and it is whole.
pub fn kept(config: &Config) -> Option<Applied> {
    let path = state_path(config);
    let text = std::fs::read(&path).ok()?;
    match serde_json::from_slice::<Applied>(&text) {
        Ok(a) if fleet::hash(&a.config) == a.hash => Some(a),
        Ok(_) => {
            tracing::warn!(path = %path.display(), "the hub's configuration kept here does not match its hash; not used");
            None
        }
        Err(e) => {
            tracing::warn!(path = %path.display(), "the hub's configuration kept here does not read ({e}); not used");
            None
        }
    }
}

/// The revision and hash of the hub's configuration kept here ((0, "") if none).
pub fn kept_revision(config: &Config) -> (u64, String) {
    kept(config).map(|a| (a.revision, a.hash)).unwrap_or_default()
}

/// The configuration to start with: the file, and the hub's configuration kept by an earlier
/// run laid over it when it still applies (the file may have changed since).
pub fn startup(file: Config) -> (Config, Option<Applied>) {
    let Some(a) = kept(&file) else { return (file, None) };
    match fleet::apply(&file, &a.config) {
        Ok((config, _)) => {
            tracing::info!(revision = a.revision, "the hub's configuration kept here is in force");
            (config, Some(a))
        }
        Err(problems) => {
            tracing::warn!(
                revision = a.revision,
                "the hub's configuration kept here no longer applies over the file, not used: {}",
                problems.join("; ")
            );
            (file, None)
        }
    }
}

/// Write `a` to `path` whole or not at all (a new file renamed over the old).
fn keep(path: &Path, a: &Applied) -> Result<(), String> {
    let text = serde_json::to_vec_pretty(a).map_err(|e| e.to_string())?;
    crate::write_whole(path, &text)
}

#[derive(Debug)]
struct State {
    /// The configuration in force.
    running: Config,
    /// The hub's configuration in it.
    fleet: Option<Applied>,
    /// The last configuration the hub sent (revision, hash) and answered: the broker sends the
    /// retained one again on each connection, and it is answered once.
    answered: Option<(u64, String)>,
    /// The hub's configuration that failed to apply (not one refused when checked): tried
    /// again after the next reload that succeeds (the operator fixed the edge's own file), and
    /// every [`RETRY`]; with why it failed (the same failure is not answered again).
    failed: Option<(Vec<u8>, String)>,
    /// The last command from the hub done (ids only grow: an old one replayed is refused), kept
    /// beside the store across restarts ([`commands_path`]).
    last_command: u64,
}

/// The running parts a configuration is applied to.
#[derive(Debug)]
pub struct Parts {
    /// Each interface's capture.
    pub controls: Controls,
    pub shared: Arc<Shared>,
    /// Detection settings, to the pipeline.
    pub settings: crossbeam_channel::Sender<Settings>,
    /// Retention and the answers to the hub, to the store writer.
    pub store: crossbeam_channel::Sender<Row>,
    /// The hub's revision and hash in force, for the sync thread's status messages.
    pub applied: tokio::sync::watch::Sender<(u64, String)>,
    /// Models to the pipeline's model slots.
    pub models: crossbeam_channel::Sender<Swap>,
    /// The model files in force, which the model watcher follows.
    pub model_paths: ModelPaths,
    /// Set when an update from the hub is installed: the daemon stops and launches again.
    pub relaunch: tokio::sync::watch::Sender<bool>,
}

/// What applies changes to the running daemon.
#[derive(Debug)]
pub struct Runtime {
    path: PathBuf,
    state: Mutex<State>,
    parts: Parts,
}

impl Runtime {
    /// `running` is in force (`fleet` the hub's configuration in it), read from `path`.
    pub fn new(path: PathBuf, running: Config, fleet: Option<Applied>, parts: Parts) -> Runtime {
        let now = fleet.as_ref().map(|a| (a.revision, a.hash.clone())).unwrap_or_default();
        parts.shared.fleet_revision.store(now.0, Ordering::Relaxed);
        parts.applied.send_replace(now);
        let last_command = last_command(&commands_path(&running));
        Runtime {
            path,
            state: Mutex::new(State { running, fleet, answered: None, failed: None, last_command }),
            parts,
        }
    }

    /// Read the file again and lay the hub's configuration in force over it; apply the result.
    pub fn reload(&self) -> Result<ReloadReport, Vec<String>> {
        let refuse = |problems: Vec<String>| {
            self.parts.shared.reloads_failed.fetch_add(1, Ordering::Relaxed);
            tracing::error!(
                "reload refused, the configuration in force stays: {}",
                problems.join("; ")
            );
            problems
        };
        let mut state = self.state.lock().map_err(|_| vec!["internal: state poisoned".into()])?;
        let file = Config::load(&self.path).map_err(|e| refuse(e.problems))?;
        let (new, notes) = match &state.fleet {
            Some(a) => fleet::apply(&file, &a.config).map_err(|p| {
                refuse(
                    p.into_iter()
                        .map(|p| {
                            format!("with the hub's configuration revision {}: {p}", a.revision)
                        })
                        .collect(),
                )
            })?,
            None => (file, Vec::new()),
        };
        let mut report = self.put(&mut state, new, Vec::new()).map_err(refuse)?;
        report.notes.extend(notes);
        self.parts.shared.reloads.fetch_add(1, Ordering::Relaxed);
        tracing::info!(applied = ?report.applied, notes = ?report.notes, "configuration reloaded");
        if let Some((payload, _)) = state.failed.take() {
            state.answered = None;
            let (revision, hash, result) = self.take_locked(&mut state, &payload);
            if let Some((result, text)) = result {
                report.notes.push(format!("the hub's configuration revision {revision}: {text}"));
                if result == ApplyResult::Failed {
                    state.failed = Some((payload, text.clone()));
                }
                self.answer(revision, &hash, result, &text);
            }
        }
        Ok(report)
    }

    /// Try again the hub's configuration that failed to apply, if one did; answered only when
    /// the result is not the same failure again.
    pub fn retry(&self) {
        self.retry_inner(false)
    }

    /// As [`retry`](Self::retry), answered whatever the result (an operator asked).
    fn retry_now(&self) {
        self.retry_inner(true)
    }

    fn retry_inner(&self, always_answer: bool) {
        let Ok(mut state) = self.state.lock() else { return };
        let Some((payload, before)) = state.failed.take() else { return };
        state.answered = None;
        let (revision, hash, result) = self.take_locked(&mut state, &payload);
        let Some((result, text)) = result else { return };
        let same = result == ApplyResult::Failed && text == before;
        if result == ApplyResult::Failed {
            state.failed = Some((payload, text.clone()));
        }
        drop(state);
        if !same || always_answer {
            self.answer(revision, &hash, result, &text);
        }
    }

    /// A configuration message from the hub: check it, apply it, keep it, answer it.
    pub fn take(&self, payload: &[u8]) {
        let Ok(mut state) = self.state.lock() else { return };
        let (revision, hash, result) = self.take_locked(&mut state, payload);
        let Some((result, text)) = result else {
            return; // answered before
        };
        state.failed = (result == ApplyResult::Failed).then(|| (payload.to_vec(), text.clone()));
        drop(state);
        self.answer(revision, &hash, result, &text);
    }

    /// A command from the hub: checked (its device, the hub's signature, an id newer than the
    /// last done, a time within [`COMMAND_MAX_AGE`] of this clock), done, answered on
    /// `commands/result`.
    pub fn command(&self, payload: &[u8]) {
        let msg: CommandMsg = match serde_json::from_slice(payload) {
            Ok(m) => m,
            Err(e) => {
                tracing::error!("a command from the hub that does not read: {e}");
                return;
            }
        };
        let (result, detail) = match self.check_command(&msg) {
            Err(why) => (ApplyResult::Refused, why),
            Ok(()) => match msg.command {
                Command::Reload => match self.reload() {
                    Ok(r) => (ApplyResult::Applied, reload_text(&r)),
                    Err(problems) => (ApplyResult::Failed, problems.join("; ")),
                },
                Command::RetryConfig => {
                    let before = self.state.lock().map(|s| s.failed.is_some()).unwrap_or(false);
                    if before {
                        self.retry_now();
                        let after = self.state.lock().map(|s| s.failed.clone()).unwrap_or(None);
                        match after {
                            None => (
                                ApplyResult::Applied,
                                "the hub's configuration tried again: applied".into(),
                            ),
                            Some((_, why)) => (ApplyResult::Failed, why),
                        }
                    } else {
                        (
                            ApplyResult::Applied,
                            "no configuration from the hub is waiting to be tried again".into(),
                        )
                    }
                }
            },
        };
        if result == ApplyResult::Refused {
            self.parts.shared.fleet_refused.fetch_add(1, Ordering::Relaxed);
            tracing::error!(id = msg.id, command = ?msg.command, "a command from the hub refused: {detail}");
        } else {
            tracing::info!(id = msg.id, command = ?msg.command, ?result, "a command from the hub: {detail}");
        }
        let answer = CommandResultMsg {
            schema: 0,
            device: Default::default(),
            seq: 0,
            ts: 0,
            id: msg.id,
            command: msg.command,
            result,
            detail: firmware::proto::apply_error(&detail),
        };
        self.queue_answer(Row::CommandResult(Box::new(answer)), &format!("command {}", msg.id));
    }

    /// Queue an answer to the hub. It waits for room rather than drop (one message per change
    /// or command); one that still finds none is counted and logged.
    fn queue_answer(&self, row: Row, to: &str) {
        if self.parts.store.send_timeout(row, Duration::from_secs(5)).is_err() {
            self.parts.shared.store.queue_drops.fetch_add(1, Ordering::Relaxed);
            tracing::error!("the answer to {to} could not be queued");
        }
    }

    fn check_command(&self, msg: &CommandMsg) -> Result<(), String> {
        let mut state = self.state.lock().map_err(|_| "internal: state poisoned".to_string())?;
        if msg.device.as_str() != state.running.device.id {
            return Err(format!("it is for device {:?}", msg.device.as_str()));
        }
        let key = &state.running.sync.config_public_key;
        if !key.is_empty() {
            let name = serde_json::to_value(msg.command).unwrap_or_default();
            let name = name.as_str().unwrap_or_default().to_string();
            fleet::verify_command(key, &msg.device, msg.id, &name, msg.ts, &msg.signature)?;
        }
        let now = crate::daemon::now_us();
        // abs_diff: any i64 from the message, no overflow.
        let off = now.abs_diff(msg.ts);
        if u128::from(off) > COMMAND_MAX_AGE.as_micros() {
            return Err(format!(
                "it was sent {} s from this edge's clock (more than {} s: replayed, or a clock is wrong)",
                off / 1_000_000,
                COMMAND_MAX_AGE.as_secs()
            ));
        }
        if msg.id <= state.last_command {
            return Err(format!(
                "command {} was done already (the last was {})",
                msg.id, state.last_command
            ));
        }
        // Kept before it is done: a command is done at most once, whatever happens next.
        let path = commands_path(&state.running);
        crate::write_whole(&path, serde_json::json!({"last": msg.id}).to_string().as_bytes())
            .map_err(|e| format!("cannot keep its id ({e}); not done"))?;
        state.last_command = msg.id;
        Ok(())
    }

    /// Count, log and send the answer to a configuration from the hub.
    fn answer(&self, revision: u64, hash: &str, result: ApplyResult, text: &str) {
        match result {
            ApplyResult::Applied => {
                self.parts.shared.fleet_applied.fetch_add(1, Ordering::Relaxed);
                tracing::info!(revision, notes = %text, "the hub's configuration applied");
            }
            _ => {
                self.parts.shared.fleet_refused.fetch_add(1, Ordering::Relaxed);
                tracing::error!(
                    revision,
                    ?result,
                    "the hub's configuration not applied, the one before stays: {text}"
                );
            }
        }
        let msg = ConfigAppliedMsg {
            schema: 0,
            device: Default::default(),
            seq: 0,
            ts: 0,
            revision,
            hash: hash.try_into().unwrap_or_default(),
            result,
            error: firmware::proto::apply_error(text),
        };
        let to = format!("the hub's configuration revision {revision}");
        self.queue_answer(Row::ConfigApplied(Box::new(msg)), &to);
    }

    /// `None` as the result when this revision was answered already.
    #[allow(clippy::type_complexity)]
    fn take_locked(
        &self,
        state: &mut State,
        payload: &[u8],
    ) -> (u64, String, Option<(ApplyResult, String)>) {
        let refused = |r: u64, h: String, why: String| (r, h, Some((ApplyResult::Refused, why)));
        let msg: ConfigMsg = match serde_json::from_slice(payload) {
            Ok(m) => m,
            Err(e) => {
                return refused(0, String::new(), format!("not a configuration message: {e}"))
            }
        };
        let (revision, hash) = (msg.revision, msg.hash.to_string());
        if state.answered.as_ref() == Some(&(revision, hash.clone())) {
            return (revision, hash, None);
        }
        state.answered = Some((revision, hash.clone()));
        if msg.device.as_str() != state.running.device.id {
            return refused(revision, hash, format!("it is for device {:?}", msg.device.as_str()));
        }
        let doc = serde_json::Value::Object(msg.config);
        let actual = fleet::hash(&doc);
        if actual != hash {
            let why = format!("its hash is {actual}, not the {hash} it names");
            return refused(revision, hash, why);
        }
        let key = &state.running.sync.config_public_key;
        if !key.is_empty() {
            if let Err(why) = fleet::verify(key, &msg.device, revision, &hash, &msg.signature) {
                return refused(revision, hash, why);
            }
        }
        // The update it names, if any: what became of it after a restart is part of the answer.
        let update = match crate::update::from_hub(&state.running, &self.path, msg.update.as_ref())
        {
            Ok(u) => u,
            Err((result, why)) => return (revision, hash, Some((result, why))),
        };
        let update_note = match &update {
            crate::update::FromHub::Nothing => None,
            crate::update::FromHub::Running(n) | crate::update::FromHub::Relaunch(n) => {
                Some(n.clone())
            }
        };
        let relaunch = matches!(update, crate::update::FromHub::Relaunch(_));
        if state.fleet.as_ref().is_some_and(|a| a.revision == revision && a.hash == hash) {
            // In force already (kept from an earlier run): said so again, nothing to do.
            if relaunch {
                self.parts.relaunch.send_replace(true);
            }
            return (revision, hash, Some((ApplyResult::Applied, update_note.unwrap_or_default())));
        }
        let file = match Config::load(&self.path) {
            Ok(f) => f,
            Err(e) => {
                return (revision, hash, Some((ApplyResult::Failed, format!("edge.toml: {e}"))))
            }
        };
        let (new, mut notes) = match fleet::apply(&file, &doc) {
            Ok(r) => r,
            Err(problems) => return refused(revision, hash, problems.join("; ")),
        };
        let ca_file = state.running.sync.ca_file.clone();
        let staged = match crate::hub_models::stage(&state.running, &doc, &msg.models, &ca_file) {
            Ok(s) => s,
            Err((result, why)) => return (revision, hash, Some((result, why))),
        };
        match self.put(state, new, staged) {
            Ok(report) => notes.extend(report.notes),
            Err(problems) => {
                return (revision, hash, Some((ApplyResult::Failed, problems.join("; "))))
            }
        }
        let a = Applied { revision, hash: hash.clone(), config: doc };
        let path = state_path(&state.running);
        if let Err(e) = keep(&path, &a) {
            notes.push(format!("in force, but not kept for the next start: {e}"));
        }
        state.fleet = Some(a);
        self.parts.shared.fleet_revision.store(revision, Ordering::Relaxed);
        self.parts.applied.send_replace((revision, hash.clone()));
        notes.extend(update_note);
        if relaunch {
            // After the answer is queued: the daemon stops as on SIGTERM and launches again.
            self.parts.relaunch.send_replace(true);
        }
        (revision, hash, Some((ApplyResult::Applied, notes.join("; "))))
    }

    /// Apply a checked configuration to the running parts; on an error, what was changed is put
    /// back and the configuration before stays in force. `staged`: the hub's models, fetched
    /// and checked; a slot whose file changed to another is loaded here.
    fn put(
        &self,
        state: &mut State,
        new: Config,
        mut staged: Vec<crate::hub_models::Staged>,
    ) -> Result<ReloadReport, Vec<String>> {
        let (m, o) = (&new.detect.models, &state.running.detect.models);
        let mut swaps = Vec::new();
        let mut model_notes = Vec::new();
        for (kind, path, before) in [
            (ModelKind::Autoencoder, &m.autoencoder, &o.autoencoder),
            (ModelKind::Classifier, &m.classifier, &o.classifier),
        ] {
            if path == before {
                continue;
            }
            if path.is_empty() {
                model_notes.push(format!("{}: no model from now on", kind.as_str()));
                swaps.push(Swap::Empty(kind));
                continue;
            }
            let model = match staged.iter().position(|s| s.path.as_os_str() == path.as_str()) {
                Some(i) => staged.swap_remove(i).model,
                None => Model::load(Path::new(path), kind).map_err(|e| vec![e.to_string()])?,
            };
            model_notes.push(format!(
                "{}: {} {} ({})",
                kind.as_str(),
                model.name,
                model.version,
                Path::new(path).file_name().unwrap_or_default().to_string_lossy()
            ));
            swaps.push(Swap::Load(Box::new(model)));
        }
        let mut filters = Vec::new();
        for iface in &new.interfaces {
            match interface_filter(&iface.rules) {
                Ok(f) => filters.push((iface.name.clone(), f)),
                Err(e) => return Err(vec![format!("interface {}: {e}", iface.name)]),
            }
        }
        let old: Vec<(String, Option<String>)> = state
            .running
            .interfaces
            .iter()
            .map(|i| (i.name.clone(), interface_filter(&i.rules).ok().flatten()))
            .collect();
        let mut report = ReloadReport { applied: Vec::new(), notes: model_notes };
        let controls = self
            .parts
            .controls
            .lock()
            .map_err(|_| vec!["internal: controls poisoned".to_string()])?;
        let mut changed = Vec::new();
        for (name, filter) in filters {
            let Some((_, ctl)) = controls.iter().find(|(n, _)| *n == name) else {
                report
                    .notes
                    .push(format!("interface {name} is new: it is captured after a restart"));
                continue;
            };
            match set_filter(ctl, filter.clone()) {
                Ok(true) => {
                    changed.push((name.clone(), ctl.clone()));
                    report.applied.push((name, filter.unwrap_or_default()));
                }
                Ok(false) => {
                    report.notes.push(format!("interface {name}: no answer from its capture"))
                }
                Err(e) => {
                    // Put back what this one changed.
                    for (n, c) in &changed {
                        let before = old.iter().find(|(o, _)| o == n).and_then(|(_, f)| f.clone());
                        let _ = set_filter(c, before);
                    }
                    return Err(vec![format!("interface {name}: filter rejected: {e}")]);
                }
            }
        }
        for (name, _) in controls.iter() {
            if !new.interfaces.iter().any(|i| &i.name == name) {
                report.notes.push(format!(
                    "interface {name} is gone from the file: it stops after a restart"
                ));
            }
        }
        drop(controls);
        let ifaces: Vec<Arc<InterfaceCounters>> =
            self.parts.shared.interfaces.read().map(|v| v.clone()).unwrap_or_default();
        for iface in &new.interfaces {
            if let Some(c) = ifaces.iter().find(|c| c.name == iface.name) {
                c.sample.store(u64::from(iface.sample.max(1)), Ordering::Relaxed);
            }
        }
        self.parts
            .shared
            .metrics_interval_s
            .store(new.sync.metrics_interval_s.into(), Ordering::Relaxed);
        let settings = Settings::of(&new);
        if settings != Settings::of(&state.running) {
            let _ = self.parts.settings.send(settings);
        }
        let (s, o) = (&new.store, &state.running.store);
        if (s.max_size_mb, s.max_age_hours, s.evidence_max_packets)
            != (o.max_size_mb, o.max_age_hours, o.evidence_max_packets)
        {
            let limits = Row::Limits {
                max_size_mb: s.max_size_mb,
                max_age_hours: s.max_age_hours,
                evidence_max_packets: s.evidence_max_packets,
            };
            if self.parts.store.send_timeout(limits, Duration::from_secs(5)).is_err() {
                report.notes.push("the store's new limits could not be queued".into());
            }
        }
        let r = &state.running;
        let restart = |a: &Config| {
            let mut a = a.clone();
            // What is applied while running, or set only at start.
            for i in &mut a.interfaces {
                (i.rules, i.sample) = (Vec::new(), 1);
            }
            a.detect.thresholds = Default::default();
            a.detect.suppress = Vec::new();
            (a.detect.quiet_s, a.detect.update_s) = (0, 0);
            (a.store.max_size_mb, a.store.max_age_hours, a.store.evidence_max_packets) = (0, 0, 0);
            (a.detect.models.autoencoder, a.detect.models.classifier) = Default::default();
            a.sync.metrics_interval_s = 0;
            (a.interfaces, a.flows, a.store, a.stats, a.sync, a.detect)
        };
        if restart(&new) != restart(r) {
            report.notes.push(
                "other changes (interfaces, flows, store, statistics, sync, model settings) take effect after a restart"
                    .into(),
            );
        }
        for s in swaps {
            if self.parts.models.send_timeout(s, Duration::from_secs(5)).is_err() {
                report.notes.push("a model could not be handed to the pipeline".into());
            }
        }
        if let Ok(mut p) = self.parts.model_paths.lock() {
            *p = [new.detect.models.autoencoder.clone(), new.detect.models.classifier.clone()];
        }
        crate::hub_models::prune(&new);
        state.running = new;
        Ok(report)
    }
}

/// Replace a capture's filter: `Ok(false)` if its capture did not answer.
fn set_filter(
    ctl: &std::sync::mpsc::Sender<Control>,
    filter: Option<String>,
) -> Result<bool, String> {
    let (tx, rx) = std::sync::mpsc::channel();
    if ctl.send(Control::SetFilter(filter, tx)).is_err() {
        return Ok(false);
    }
    match rx.recv_timeout(Duration::from_secs(5)) {
        Ok(Ok(())) => Ok(true),
        Ok(Err(e)) => Err(e),
        Err(_) => Ok(false),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// A runtime over `edge.toml` in `dir` with no capture, and where its answers go.
    fn runtime(dir: &Path, key: &str) -> (Runtime, crossbeam_channel::Receiver<Row>) {
        let path = dir.join("edge.toml");
        std::fs::write(
            &path,
            format!(
                "[device]\nid = \"tap-1\"\n[store]\npath = \"{}\"\n[sync]\nconfig_public_key = \"{key}\"\n",
                dir.join("edge.db").display()
            ),
        )
        .unwrap();
        let config = Config::load(&path).unwrap();
        let store = Arc::new(crate::store::StoreCounters::default());
        let (tx, rx) = crossbeam_channel::unbounded();
        let parts = Parts {
            controls: Arc::default(),
            shared: Arc::new(Shared::new("tap-1".into(), store)),
            settings: crossbeam_channel::unbounded().0,
            store: tx,
            applied: tokio::sync::watch::channel((0, String::new())).0,
            models: crossbeam_channel::unbounded().0,
            model_paths: Arc::default(),
            relaunch: tokio::sync::watch::channel(false).0,
        };
        (Runtime::new(path, config, None, parts), rx)
    }

    fn answer(rx: &crossbeam_channel::Receiver<Row>) -> (u64, ApplyResult, String) {
        match rx.try_recv().unwrap() {
            Row::CommandResult(m) => (m.id, m.result, m.detail.to_string()),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn test_a_command_is_done_once_signed_fresh_and_for_this_edge() {
        let dir = tempfile::tempdir().unwrap();
        let key = fleet::signing_key("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=").unwrap();
        let (rt, rx) = runtime(dir.path(), &fleet::public_key_text(&key));
        let now = crate::daemon::now_us();
        let cmd = |device: &str, id: u64, ts: i64, signed: bool| {
            let signature = if signed {
                fleet::sign_command(&key, device, id, "reload", ts)
            } else {
                String::new()
            };
            serde_json::json!({"schema": 1, "device": device, "ts": ts, "id": id,
                               "command": "reload", "signature": signature})
            .to_string()
            .into_bytes()
        };
        rt.command(&cmd("tap-1", 1, now, false));
        let (_, r, why) = answer(&rx);
        assert_eq!(r, ApplyResult::Refused);
        assert!(why.contains("not signed"), "{why}");
        rt.command(&cmd("tap-2", 2, now, true));
        assert!(answer(&rx).2.contains("for device"));
        // Old, or any time at all (no overflow: a panic would stop the edge).
        for ts in [now - 3_600_000_000, i64::MIN, i64::MAX] {
            rt.command(&cmd("tap-1", 3, ts, true));
            assert!(answer(&rx).2.contains("from this edge's clock"));
        }
        rt.command(&cmd("tap-1", 4, now, true));
        let (id, r, what) = answer(&rx);
        assert_eq!((id, r), (4, ApplyResult::Applied), "{what}");
        assert!(what.starts_with("reloaded"), "{what}");
        assert_eq!(rt.parts.shared.reloads.load(Ordering::Relaxed), 1);
        // Replayed, or an older id: refused, not done again.
        for id in [4, 3] {
            rt.command(&cmd("tap-1", id, now, true));
            let (_, r, why) = answer(&rx);
            assert_eq!(r, ApplyResult::Refused);
            assert!(why.contains("done already"), "{why}");
        }
        assert_eq!(rt.parts.shared.reloads.load(Ordering::Relaxed), 1);
        // After a restart too (the last id is kept beside the store).
        drop(rt);
        let (rt, rx) = runtime(dir.path(), &fleet::public_key_text(&key));
        rt.command(&cmd("tap-1", 4, now, true));
        assert!(answer(&rx).2.contains("done already"));
        rt.command(&cmd("tap-1", 5, now, true));
        assert_eq!(answer(&rx).1, ApplyResult::Applied);
        // Not a command at all: logged, no answer (nothing to answer to).
        rt.command(b"{\"command\": \"format\"}");
        assert!(rx.try_recv().is_err());
    }
}
