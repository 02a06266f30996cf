//! `tapwatch-edge run`: the live daemon.
//!
//! Threads: one capture thread per interface (reads libpcap, hands batches on, never waits), one
//! pipeline thread (engine, statistics, ring, rows for the store), one store writer, and a small
//! tokio runtime for HTTP, signals and host metrics. SIGHUP or `POST /admin/reload` re-reads the
//! configuration, and the hub's configuration comes over the link to the hub; either is applied
//! while running ([`crate::fleet`]): the flow table is not touched, so flows in progress
//! continue. SIGTERM or SIGINT stops capture, records every flow in
//! progress, writes the last rows and exits.

use crate::capture::{self, Batch, CaptureThread, Control};
use crate::config::{interface_filter, Config};
use crate::fleet::{Controls, Runtime};
use crate::http::AppState;
use crate::metrics::{HostProbe, Shared};
use crate::pipeline::Pipeline;
use crate::store::{spawn_writer, AgeClock, Store, StoreCounters};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub(crate) fn now_us() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as i64)
}

/// Why the daemon stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// SIGTERM or SIGINT.
    Asked,
    /// An update from the hub was installed: launch again to try it
    /// ([`crate::update::relaunch`]).
    Relaunch,
}

/// Run until SIGTERM or SIGINT, or until an update from the hub asks for a new launch.
pub fn run(path: PathBuf) -> Result<Stopped, String> {
    let file = Config::load(&path).map_err(|e| e.to_string())?;
    // With the hub's configuration an earlier run kept laid over it.
    let (config, kept) = crate::fleet::startup(file);
    if config.interfaces.is_empty() {
        return Err(format!("{}: no [[interface]] to capture on", path.display()));
    }
    let names: Vec<Arc<str>> =
        config.interfaces.iter().map(|i| Arc::from(i.name.as_str())).collect();
    let _claim = crate::store::claim(&config.store.path)?;
    let store_counters = Arc::new(StoreCounters::default());
    let mut store =
        Store::open(&config.store, store_counters.clone()).map_err(|e| e.to_string())?;
    if config.sync.enabled {
        store
            .enable_outbox(&config.device.id, config.sync.outbox_max_messages)
            .map_err(|e| e.to_string())?;
        store.set_evidence_limit(u64::from(config.sync.evidence_max_mb) << 20);
    }
    let writer = spawn_writer(store, crate::STORE_QUEUE_MESSAGES, AgeClock::Wall);
    let shared = Arc::new(Shared::new(config.device.id.clone(), store_counters.clone()));
    let _ = shared.update_root.set(crate::update::Slots::new(&config).root().to_path_buf());
    // The link to the hub: a thread of its own (it reads the outbox with blocking SQLite calls).
    // It hands the hub's configuration over (the newest) and names the one in force.
    let (sync_stop, sync_stop_rx) = tokio::sync::watch::channel(false);
    let (configs_tx, configs_rx) = tokio::sync::watch::channel::<Option<Vec<u8>>>(None);
    let (commands_tx, commands_rx) = tokio::sync::mpsc::channel::<Vec<u8>>(16);
    let (applied_tx, applied_rx) = tokio::sync::watch::channel((0u64, String::new()));
    let sync = if config.sync.enabled {
        let (cfg, device, db, counters) = (
            config.sync.clone(),
            config.device.id.clone(),
            config.store.path.clone(),
            shared.sync.clone(),
        );
        let fleet = crate::sync::Fleet {
            configs: Some(configs_tx),
            commands: Some(commands_tx),
            applied: Some(applied_rx),
        };
        let handle = std::thread::Builder::new()
            .name("sync".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    Ok(rt) => rt,
                    Err(e) => return tracing::error!("sync: cannot start: {e}"),
                };
                let until = crate::sync::Until::Stopped;
                if let Err(e) = rt.block_on(crate::sync::run(
                    cfg,
                    device,
                    db,
                    counters,
                    until,
                    sync_stop_rx,
                    fleet,
                )) {
                    tracing::error!("sync stopped: {e}");
                }
            })
            .map_err(|e| format!("cannot start the sync thread: {e}"))?;
        Some(handle)
    } else {
        None
    };

    // One channel for all interfaces; each interface bounds its own packets in it
    // (queue_packets), so the channel's own bound only needs room for every interface's batches.
    let total: usize = config.interfaces.iter().map(|i| i.queue_packets).sum();
    let (btx, brx) = crossbeam_channel::bounded::<Batch>(total.max(1024));
    let mut captures: Vec<CaptureThread> = Vec::new();
    let controls: Controls = Arc::new(Mutex::new(Vec::new()));
    for (i, iface) in config.interfaces.iter().enumerate() {
        let filter =
            interface_filter(&iface.rules).map_err(|e| format!("interface {}: {e}", iface.name))?;
        let started = capture::start(i, iface, filter, btx.clone());
        let c = match started {
            Ok(c) => c,
            Err(e) => {
                for c in &captures {
                    let _ = c.control.send(Control::Stop);
                }
                return Err(e.to_string());
            }
        };
        if let (Ok(mut v), Ok(mut ctl)) = (shared.interfaces.write(), controls.lock()) {
            v.push(c.counters.clone());
            ctl.push((iface.name.clone(), c.control.clone()));
        }
        tracing::info!(interface = %iface.name, "capturing");
        captures.push(c);
    }
    drop(btx);

    let queued: Vec<Arc<crate::capture::InterfaceCounters>> =
        captures.iter().map(|c| c.counters.clone()).collect();
    // The models: each named file is loaded now; one that does not load is an error in the log
    // and a missing tapwatch_model_info series, not a daemon that will not capture. A watcher
    // loads changed files and hands them to the pipeline.
    let models = &config.detect.models;
    let (stage, refused) = crate::inference::ModelStage::from_config(&config);
    for e in refused {
        tracing::error!(error = %e, "model not loaded");
    }
    for (slot, name, version) in stage.loaded() {
        tracing::info!(slot, model = %name, version = %version, "model loaded");
    }
    let (reload_tx, reload_rx) = crossbeam_channel::bounded(4);
    let (watch_stop, watch_stop_rx) = crossbeam_channel::bounded::<()>(1);
    let model_paths: crate::inference::ModelPaths =
        Arc::new(std::sync::Mutex::new([models.autoencoder.clone(), models.classifier.clone()]));
    let watcher = {
        let (paths, counters, tx) =
            (model_paths.clone(), shared.model_reloads.clone(), reload_tx.clone());
        let every = Duration::from_secs(models.reload_check_s.max(1).into());
        std::thread::Builder::new()
            .name("models".into())
            .spawn(move || crate::inference::watch(every, paths, tx, watch_stop_rx, counters))
            .map_err(|e| format!("cannot start the model watcher: {e}"))?
    };
    let (settings_tx, settings_rx) = crossbeam_channel::unbounded();
    let (relaunch_tx, relaunch_rx) = tokio::sync::watch::channel(false);
    let parts = crate::fleet::Parts {
        controls: controls.clone(),
        shared: shared.clone(),
        settings: settings_tx,
        store: writer.tx.clone(),
        applied: applied_tx,
        models: reload_tx,
        model_paths,
        relaunch: relaunch_tx,
    };
    let live = Arc::new(Runtime::new(path, config.clone(), kept, parts));
    let pipe_shared = shared.clone();
    let pipe_config = config.clone();
    let store_tx = writer.tx.clone();
    let pipeline = std::thread::Builder::new()
        .name("pipeline".into())
        .stack_size(crate::PIPELINE_STACK)
        .spawn(move || {
            let mut p = Pipeline::new(&pipe_config, names, Some((store_tx, store_counters)))
                .with_models(stage)
                .with_reloads(reload_rx)
                .with_settings(settings_rx);
            let mut last_report = Instant::now();
            let mut nothing = |_: &firmware::engine::FinishedFlow| {};
            loop {
                pipe_shared.pipeline_turns.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                match brx.recv_timeout(Duration::from_millis(100)) {
                    Ok(b) => {
                        p.batch(&b, &mut nothing);
                        if let Some(c) = queued.get(b.iface) {
                            c.queued.fetch_sub(
                                b.packets.len() as u64,
                                std::sync::atomic::Ordering::Relaxed,
                            );
                        }
                    }
                    Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                        p.tick(now_us(), &mut nothing)
                    }
                    Err(crossbeam_channel::RecvTimeoutError::Disconnected) => break,
                }
                if last_report.elapsed() >= Duration::from_secs(1) {
                    if let Ok(mut s) = pipe_shared.pipeline.lock() {
                        *s = p.snapshot();
                    }
                    last_report = Instant::now();
                }
            }
            p.finish(&mut nothing);
            if let Ok(mut s) = pipe_shared.pipeline.lock() {
                *s = p.snapshot();
            }
        })
        .map_err(|e| format!("cannot start the pipeline thread: {e}"))?;

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    let metrics_tx = config.sync.enabled.then(|| writer.tx.clone());
    let result = runtime.block_on(serve(
        config,
        shared.clone(),
        live,
        configs_rx,
        commands_rx,
        metrics_tx,
        relaunch_rx,
    ));

    // Shut down in order: capture, pipeline (records every flow), store.
    for c in &captures {
        let _ = c.control.send(Control::Stop);
    }
    for c in captures {
        let _ = c.handle.join();
    }
    let _ = pipeline.join();
    drop(watch_stop);
    let _ = watcher.join();
    drop(writer.tx);
    let _ = writer.handle.join();
    // Last: the link, after the writer queued its last messages (what is unsent stays in the
    // outbox for the next start).
    let _ = sync_stop.send(true);
    if let Some(h) = sync {
        let _ = h.join();
    }
    tracing::info!("stopped");
    result
}

async fn serve(
    config: Config,
    shared: Arc<Shared>,
    live: Arc<Runtime>,
    mut configs: tokio::sync::watch::Receiver<Option<Vec<u8>>>,
    mut commands: tokio::sync::mpsc::Receiver<Vec<u8>>,
    metrics_tx: Option<crossbeam_channel::Sender<crate::store::Row>>,
    mut relaunch: tokio::sync::watch::Receiver<bool>,
) -> Result<Stopped, String> {
    use tokio::signal::unix::{signal, SignalKind};
    // First: a SIGTERM from now on stops the daemon cleanly, even one sent the moment it
    // says it listens.
    let mut hup = signal(SignalKind::hangup()).map_err(|e| e.to_string())?;
    let mut term = signal(SignalKind::terminate()).map_err(|e| e.to_string())?;
    let mut int = signal(SignalKind::interrupt()).map_err(|e| e.to_string())?;
    let listener = tokio::net::TcpListener::bind(config.http.listen)
        .await
        .map_err(|e| format!("http.listen {}: {e}", config.http.listen))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    tracing::info!("listening on http://{addr}");
    let reload_fn = {
        let live = live.clone();
        Arc::new(move || {
            crate::supervise::reloading();
            let r = live.reload();
            crate::supervise::ready(match r {
                Ok(_) => "running; reloaded",
                Err(_) => "running; the last reload was refused, the rules before it stay",
            });
            r
        })
    };
    let state = AppState {
        shared: shared.clone(),
        registry: Arc::new(crate::metrics::registry(shared.clone())),
        reload: reload_fn.clone(),
        admin: Arc::new(crate::http::AdminGate::from_config(&config.http)?),
    };
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let server = tokio::spawn(async move {
        axum::serve(listener, crate::http::app(state))
            .with_graceful_shutdown(async move {
                let _ = stop_rx.changed().await;
            })
            .await
    });
    let host_shared = shared.clone();
    shared
        .metrics_interval_s
        .store(config.sync.metrics_interval_s.into(), std::sync::atomic::Ordering::Relaxed);
    let host = tokio::spawn(async move {
        let mut probe = HostProbe::new();
        let mut last_metrics = Instant::now();
        loop {
            // Read each turn: the hub's configuration may change it.
            let every = host_shared.metrics_interval_s.load(std::sync::atomic::Ordering::Relaxed);
            let metrics_every = Duration::from_secs(every.max(1));
            let snap = probe.read();
            if let Ok(mut h) = host_shared.host.lock() {
                *h = snap;
            }
            if let Some(tx) = &metrics_tx {
                if last_metrics.elapsed() >= metrics_every {
                    last_metrics = Instant::now();
                    let row = crate::store::Row::Metrics(Box::new(host_shared.message()));
                    if tx.try_send(row).is_err() {
                        host_shared
                            .store
                            .queue_drops
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                }
            }
            tokio::time::sleep(Duration::from_secs(5).min(metrics_every)).await;
        }
    });
    let interfaces = shared.interfaces.read().map_or(0, |i| i.len());
    crate::supervise::ready(&format!("running; capturing on {interfaces} interfaces"));
    let watchdog = tokio::spawn(crate::supervise::watchdog(shared.clone()));
    // On trial after an update: say whether it is healthy, for the launcher to keep it.
    let health = tokio::spawn(crate::update::report_health(config.clone(), shared.clone()));
    // A configuration from the hub that failed to apply (a model the hub did not serve) is
    // tried again this often.
    let mut stopped = Stopped::Asked;
    let mut retry = tokio::time::interval(crate::fleet::RETRY);
    retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = hup.recv() => {
                let f = reload_fn.clone();
                let _ = tokio::task::spawn_blocking(move || f()).await;
            }
            Ok(()) = configs.changed() => {
                let payload = configs.borrow_and_update().clone();
                if let Some(payload) = payload {
                    let r = live.clone();
                    let _ = tokio::task::spawn_blocking(move || r.take(&payload)).await;
                }
            }
            Some(payload) = commands.recv() => {
                let r = live.clone();
                let _ = tokio::task::spawn_blocking(move || r.command(&payload)).await;
            }
            _ = retry.tick() => {
                let r = live.clone();
                let _ = tokio::task::spawn_blocking(move || r.retry()).await;
            }
            Ok(()) = relaunch.changed() => {
                if *relaunch.borrow_and_update() {
                    tracing::info!("an update from the hub is installed: stopping to launch again");
                    stopped = Stopped::Relaunch;
                    break;
                }
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    tracing::info!("stopping");
    crate::supervise::stopping();
    let _ = stop_tx.send(true);
    host.abort();
    watchdog.abort();
    health.abort();
    let _ = server.await;
    Ok(stopped)
}
