//! What the daemon tells an operator: `/metrics` in Prometheus text, from counters the capture,
//! pipeline and store threads keep, and the host's CPU, memory, disk and network.
//!
//! Each thread owns its counters (atomics, or a snapshot the pipeline publishes every second);
//! the collector reads them at scrape time, so a scrape never takes a lock a packet path holds.

use crate::capture::InterfaceCounters;
use crate::pipeline::PipelineCounters;
use crate::store::{StoreCounters, Table};
use crate::sync::SyncCounters;
use firmware::engine::EngineCounters;
use firmware::flow::{EndReason, FlowCounters};
use firmware::hosts::HostCounters;
use firmware::proto::{CaptureCounters, MetricsMsg, Stream, SCHEMA_VERSION};
use firmware::wire::DissectError;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

/// What the pipeline thread publishes.
#[derive(Debug, Clone, Default)]
pub struct PipelineSnapshot {
    pub engine: EngineCounters,
    pub flows: FlowCounters,
    pub hosts: HostCounters,
    /// The victim-side table (destinations and what they received).
    pub victims: HostCounters,
    /// The protocol analyzers' tables: entries evicted to make room.
    pub analyzers: firmware::analyzers::AnalyzerCounters,
    /// Evictions of the analyzers' windowed tables (sources, domains, DHCP clients, scanners).
    pub analyzer_windows_evicted: u64,
    pub pipeline: PipelineCounters,
    pub flows_active: u64,
    /// Flows the table holds at most (`flows.max_flows`, in whole shards).
    pub flows_capacity: u64,
    pub hosts_active: u64,
    pub victims_active: u64,
    /// Parse errors per interface, by kind (order of `DissectError::ALL`).
    pub iface_errors: Vec<[u64; DissectError::ALL.len()]>,
    /// The model stage: its counters, and the models in their slots (slot, name, version).
    pub inference: crate::inference::InferenceCounters,
    pub models: Vec<(&'static str, String, String)>,
    pub updated: Option<Instant>,
}

/// The host's resources.
#[derive(Debug, Clone, Default)]
pub struct HostSnapshot {
    /// 0 to 1, all cores.
    pub cpu: f64,
    pub mem_used: u64,
    pub mem_total: u64,
    /// (mount point, used, total) bytes.
    pub disks: Vec<(String, u64, u64)>,
    /// (device, received, transmitted) bytes since boot.
    pub nets: Vec<(String, u64, u64)>,
}

/// State shared by the daemon's threads and the HTTP server.
#[derive(Debug)]
pub struct Shared {
    pub device: String,
    pub started: Instant,
    pub interfaces: RwLock<Vec<Arc<InterfaceCounters>>>,
    pub pipeline: Mutex<PipelineSnapshot>,
    /// Turns of the pipeline thread's loop (at least ten a second): fed to the watchdog.
    pub pipeline_turns: AtomicU64,
    pub store: Arc<StoreCounters>,
    pub host: Mutex<HostSnapshot>,
    /// Reloads done, and refused (the old rules stay in force).
    pub reloads: AtomicU64,
    pub reloads_failed: AtomicU64,
    /// Configurations from the hub applied, refused or failed (the one before stayed), and
    /// the revision in force (0: none).
    pub fleet_applied: AtomicU64,
    pub fleet_refused: AtomicU64,
    pub fleet_revision: AtomicU64,
    /// The link to the hub.
    pub sync: Arc<SyncCounters>,
    /// Model files loaded again, and refused.
    pub model_reloads: Arc<crate::inference::ReloadCounters>,
    /// How often host and pipeline metrics go to the hub, seconds (`sync.metrics_interval_s`;
    /// the hub's configuration changes it while running; 0 until the daemon sets it).
    pub metrics_interval_s: AtomicU64,
    /// The update slots' folder (set by the daemon): their state is read for each scrape.
    pub update_root: std::sync::OnceLock<std::path::PathBuf>,
}

impl Shared {
    pub fn new(device: String, store: Arc<StoreCounters>) -> Shared {
        Shared {
            device,
            started: Instant::now(),
            interfaces: RwLock::new(Vec::new()),
            pipeline: Mutex::new(PipelineSnapshot::default()),
            pipeline_turns: AtomicU64::new(0),
            sync: Arc::new(SyncCounters { store: store.clone(), ..SyncCounters::default() }),
            store,
            host: Mutex::new(HostSnapshot::default()),
            reloads: AtomicU64::new(0),
            reloads_failed: AtomicU64::new(0),
            fleet_applied: AtomicU64::new(0),
            fleet_refused: AtomicU64::new(0),
            fleet_revision: AtomicU64::new(0),
            model_reloads: Arc::default(),
            metrics_interval_s: AtomicU64::new(0),
            update_root: std::sync::OnceLock::new(),
        }
    }

    /// The `metrics` message for the hub (header fields are set when it is queued).
    pub fn message(&self) -> MetricsMsg {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let h = self.host.lock().map(|h| h.clone()).unwrap_or_default();
        let p = self.pipeline.lock().map(|p| p.clone()).unwrap_or_default();
        let ifaces: Vec<Arc<InterfaceCounters>> =
            self.interfaces.read().map(|v| v.clone()).unwrap_or_default();
        // The disk of the root file system, or the largest.
        let disk = h
            .disks
            .iter()
            .find(|d| d.0 == "/")
            .or_else(|| h.disks.iter().max_by_key(|d| d.2))
            .cloned()
            .unwrap_or_default();
        let capture = ifaces
            .iter()
            .enumerate()
            .take(8)
            .map(|(i, c)| CaptureCounters {
                interface: c.name.as_str().try_into().unwrap_or_default(),
                packets: load(&c.packets),
                bytes: load(&c.bytes),
                kernel_drops: load(&c.kernel_drops) + load(&c.interface_drops),
                queue_drops: load(&c.queue_drops),
                parse_errors: p.iface_errors.get(i).map_or(0, |e| e.iter().sum()),
            })
            .collect();
        let st = &self.store;
        let store_dropped = st.evicted_total()
            + load(&st.queue_drops)
            + load(&st.rows_lost)
            + st.outbox_dropped.iter().map(load).sum::<u64>();
        MetricsMsg {
            schema: SCHEMA_VERSION,
            device: heapless::String::new(),
            seq: 0,
            ts: 0,
            cpu_percent: (h.cpu * 100.0) as f32,
            mem_used_bytes: h.mem_used,
            mem_total_bytes: h.mem_total,
            disk_used_bytes: disk.1,
            disk_total_bytes: disk.2,
            net_rx_bytes: h.nets.iter().map(|n| n.1).sum(),
            net_tx_bytes: h.nets.iter().map(|n| n.2).sum(),
            flows_active: p.flows_active,
            store_dropped,
            outbox: heapless::Vec::new(),
            capture,
        }
    }
}

/// Reads the host's resources with sysinfo.
#[derive(Debug)]
pub struct HostProbe {
    system: sysinfo::System,
    disks: sysinfo::Disks,
    nets: sysinfo::Networks,
}

impl Default for HostProbe {
    fn default() -> Self {
        Self::new()
    }
}

impl HostProbe {
    pub fn new() -> HostProbe {
        HostProbe {
            system: sysinfo::System::new(),
            disks: sysinfo::Disks::new_with_refreshed_list(),
            nets: sysinfo::Networks::new_with_refreshed_list(),
        }
    }

    /// A fresh reading (CPU usage is over the time since the previous call).
    pub fn read(&mut self) -> HostSnapshot {
        self.system.refresh_cpu_usage();
        self.system.refresh_memory();
        self.disks.refresh(true);
        self.nets.refresh(true);
        let mut disks: Vec<(String, u64, u64)> = self
            .disks
            .list()
            .iter()
            .map(|d| {
                let total = d.total_space();
                (
                    d.mount_point().display().to_string(),
                    total.saturating_sub(d.available_space()),
                    total,
                )
            })
            .collect();
        disks.sort();
        disks.dedup_by(|a, b| a.0 == b.0);
        let mut nets: Vec<(String, u64, u64)> = self
            .nets
            .list()
            .iter()
            .map(|(n, d)| (n.clone(), d.total_received(), d.total_transmitted()))
            .collect();
        nets.sort();
        HostSnapshot {
            cpu: f64::from(self.system.global_cpu_usage()) / 100.0,
            mem_used: self.system.used_memory(),
            mem_total: self.system.total_memory(),
            disks,
            nets,
        }
    }
}

/// Label pairs of one series.
type Labels<'a> = Vec<(&'a str, &'a str)>;

fn counter(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: &[(Labels<'_>, u64)],
) -> Result<(), std::fmt::Error> {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, v) in series {
        ConstCounter::new(*v).encode(m.encode_family(labels)?)?;
    }
    Ok(())
}

fn gauge(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: &[(Labels<'_>, f64)],
) -> Result<(), std::fmt::Error> {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, v) in series {
        ConstGauge::new(*v).encode(m.encode_family(labels)?)?;
    }
    Ok(())
}

/// One unlabelled series.
fn one<T>(v: T) -> [(Labels<'static>, T); 1] {
    [(Vec::new(), v)]
}

#[derive(Debug)]
struct Collector(Arc<Shared>);

impl prometheus_client::collector::Collector for Collector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = &self.0;
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let ifaces: Vec<Arc<InterfaceCounters>> =
            s.interfaces.read().map(|v| v.clone()).unwrap_or_default();
        let per_iface = |f: &dyn Fn(&InterfaceCounters) -> u64| -> Vec<(Labels<'_>, u64)> {
            ifaces.iter().map(|c| (vec![("interface", c.name.as_str())], f(c))).collect()
        };
        let enc = &mut enc;
        gauge(
            enc,
            "tapwatch_edge_up",
            "1 while the daemon runs",
            &[(vec![("device", s.device.as_str())], 1.0)],
        )?;
        gauge(
            enc,
            "tapwatch_edge_uptime_seconds",
            "Seconds since the daemon started",
            &one(s.started.elapsed().as_secs_f64()),
        )?;
        counter(
            enc,
            "tapwatch_capture_packets",
            "Packets captured (after the capture filter)",
            &per_iface(&|c| load(&c.packets)),
        )?;
        counter(
            enc,
            "tapwatch_capture_bytes",
            "Bytes on the wire of captured packets",
            &per_iface(&|c| load(&c.bytes)),
        )?;
        counter(
            enc,
            "tapwatch_capture_kernel_drops",
            "Packets the kernel dropped for lack of buffer (libpcap ps_drop)",
            &per_iface(&|c| load(&c.kernel_drops)),
        )?;
        counter(
            enc,
            "tapwatch_capture_interface_drops",
            "Packets the interface or driver dropped (libpcap ps_ifdrop)",
            &per_iface(&|c| load(&c.interface_drops)),
        )?;
        counter(
            enc,
            "tapwatch_queue_drops",
            "Packets dropped because the queue to the pipeline was full",
            &per_iface(&|c| load(&c.queue_drops)),
        )?;
        counter(
            enc,
            "tapwatch_capture_sampled_out",
            "Packets left out by 1-in-N sampling",
            &per_iface(&|c| load(&c.sampled_out)),
        )?;
        counter(
            enc,
            "tapwatch_capture_read_errors",
            "libpcap read errors",
            &per_iface(&|c| load(&c.read_errors)),
        )?;
        let depth: Vec<(Labels<'_>, f64)> =
            per_iface(&|c| load(&c.queued)).into_iter().map(|(l, v)| (l, v as f64)).collect();
        gauge(
            enc,
            "tapwatch_queue_depth_packets",
            "Packets waiting in the queue to the pipeline",
            &depth,
        )?;
        let up: Vec<(Labels<'_>, f64)> =
            per_iface(&|c| load(&c.up)).into_iter().map(|(l, v)| (l, v as f64)).collect();
        gauge(enc, "tapwatch_capture_up", "1 while the interface's capture runs", &up)?;

        let p = s.pipeline.lock().map(|p| p.clone()).unwrap_or_default();
        let mut errors = Vec::new();
        for (i, c) in ifaces.iter().enumerate() {
            let errs = p.iface_errors.get(i).copied().unwrap_or_default();
            for e in DissectError::ALL {
                errors.push((
                    vec![("interface", c.name.as_str()), ("kind", e.name())],
                    errs[e.index()],
                ));
            }
        }
        counter(
            enc,
            "tapwatch_parse_errors",
            "Packets that could not be dissected, by kind",
            &errors,
        )?;
        let e = &p.engine;
        let by_proto = [
            ("tcp", e.tcp),
            ("udp", e.udp),
            ("icmp", e.icmp),
            ("other_ip", e.other_ip),
            ("arp", e.arp),
            ("other", e.other_l3),
        ];
        let by_proto: Vec<(Labels<'_>, u64)> =
            by_proto.iter().map(|(k, v)| (vec![("protocol", *k)], *v)).collect();
        counter(
            enc,
            "tapwatch_pipeline_packets",
            "Packets through the pipeline, by protocol",
            &by_proto,
        )?;
        counter(
            enc,
            "tapwatch_pipeline_truncated_packets",
            "Packets cut short by the snap length (still accounted)",
            &one(e.truncated),
        )?;
        counter(enc, "tapwatch_pipeline_fragments", "IP fragments", &one(e.fragments))?;
        gauge(
            enc,
            "tapwatch_flows_active",
            "Flows in the flow table",
            &one(p.flows_active as f64),
        )?;
        gauge(
            enc,
            "tapwatch_flows_capacity",
            "Flows the flow table holds at most (flows.max_flows in whole shards)",
            &one(p.flows_capacity as f64),
        )?;
        counter(enc, "tapwatch_flows_created", "Flows started", &one(p.flows.created))?;
        let ended: Vec<(Labels<'_>, u64)> = EndReason::ALL
            .iter()
            .map(|r| (vec![("reason", r.name())], p.flows.ended[*r as usize]))
            .collect();
        counter(
            enc,
            "tapwatch_flows_ended",
            "Flows recorded, by why they ended (evicted: the table was full)",
            &ended,
        )?;
        gauge(
            enc,
            "tapwatch_hosts_active",
            "Hosts with window counters",
            &one(p.hosts_active as f64),
        )?;
        counter(
            enc,
            "tapwatch_hosts_evicted",
            "Hosts forgotten because the host table was full",
            &one(p.hosts.evicted),
        )?;
        gauge(
            enc,
            "tapwatch_victims_active",
            "Destinations with victim-side window counters (what they received)",
            &one(p.victims_active as f64),
        )?;
        counter(
            enc,
            "tapwatch_victims_evicted",
            "Destinations forgotten because the victim table was full",
            &one(p.victims.evicted),
        )?;
        let a = &p.analyzers;
        let evicted: Vec<(Labels<'_>, u64)> = [
            ("windows", p.analyzer_windows_evicted),
            ("tls", a.tls_evicted),
            ("rpc", a.rpc_evicted),
            ("arp", a.arp_evicted),
            ("ssh", a.ssh_evicted),
            ("frag", a.frag_evicted),
        ]
        .into_iter()
        .map(|(t, n)| (vec![("table", t)], n))
        .collect();
        counter(
            enc,
            "tapwatch_analyzer_evicted",
            "Protocol analyzer entries forgotten because their table was full, by table",
            &evicted,
        )?;
        counter(
            enc,
            "tapwatch_stats_overflow",
            "Packets left out of an interval's top ports or talkers (too many distinct keys)",
            &one(p.pipeline.stats_overflow),
        )?;
        counter(
            enc,
            "tapwatch_anomalies",
            "Anomaly episodes the window detectors opened and reported",
            &one(p.pipeline.anomalies),
        )?;
        counter(
            enc,
            "tapwatch_anomalies_suppressed",
            "Anomaly episodes a [[detect.suppress]] rule kept from being reported",
            &one(p.pipeline.anomalies_suppressed),
        )?;
        counter(
            enc,
            "tapwatch_brute_force_unconfirmed",
            "A model's brute_force verdicts left out: the analyzers saw no failed login from the source",
            &one(p.pipeline.brute_force_unconfirmed),
        )?;
        let inf = &p.inference;
        counter(enc, "tapwatch_model_rows", "Flows run through the models", &one(inf.rows))?;
        counter(
            enc,
            "tapwatch_model_batches",
            "Batches run through the models",
            &one(inf.batches),
        )?;
        counter(
            enc,
            "tapwatch_model_flagged",
            "Flows the models gave a verdict other than benign",
            &one(inf.flagged),
        )?;
        counter(
            enc,
            "tapwatch_model_misfits",
            "Classifier verdicts left unnamed: the kind does not fit the flow's transport (a UDP flood on a TCP connection)",
            &one(inf.misfits),
        )?;
        counter(
            enc,
            "tapwatch_model_errors",
            "Batches a model failed on (their flows got no verdict from it)",
            &one(inf.errors),
        )?;
        gauge(
            enc,
            "tapwatch_model_seconds",
            "Seconds spent in the models",
            &one(inf.nanos as f64 / 1e9),
        )?;
        let info: Vec<(Labels<'_>, f64)> = p
            .models
            .iter()
            .map(|(slot, name, version)| {
                (
                    vec![("slot", *slot), ("model", name.as_str()), ("version", version.as_str())],
                    1.0,
                )
            })
            .collect();
        gauge(enc, "tapwatch_model_info", "The models running, by slot", &info)?;
        let slot = std::env::var(crate::update::SLOT_ENV).unwrap_or_else(|_| "factory".into());
        let release = crate::update::running_version();
        gauge(
            enc,
            "tapwatch_update_info",
            "The program running: its slot (factory: the packaged one) and release",
            &[(vec![("slot", slot.as_str()), ("release", release.as_str())], 1.0)],
        )?;
        if let Some(state) =
            s.update_root.get().and_then(|r| crate::update::Slots::at(r).load().ok())
        {
            if let Some(o) = &state.last {
                let result = serde_json::to_value(o.result).unwrap_or_default();
                let result = result.as_str().unwrap_or_default().to_string();
                gauge(
                    enc,
                    "tapwatch_update_last",
                    "When the last update was installed, rolled back, refused or reset (Unix \
                     seconds; its reason: tapwatch-edge update status)",
                    &[(
                        vec![("result", result.as_str()), ("version", o.version.as_str())],
                        o.at as f64,
                    )],
                )?;
            }
            gauge(
                enc,
                "tapwatch_update_failed_starts",
                "Starts of the active slot in a row that never captured (3: back to the packaged program)",
                &one(f64::from(state.failed_starts)),
            )?;
        }
        counter(
            enc,
            "tapwatch_model_reloads",
            "Model files loaded again after they changed",
            &one(load(&s.model_reloads.loaded)),
        )?;
        counter(
            enc,
            "tapwatch_model_reloads_refused",
            "Changed model files refused (did not load or did not match); the old model kept running",
            &one(load(&s.model_reloads.refused)),
        )?;
        counter(
            enc,
            "tapwatch_ring_rotated",
            "Evidence-ring packets replaced in memory before they were written",
            &one(p.pipeline.ring_rotated),
        )?;
        gauge(
            enc,
            "tapwatch_pipeline_snapshot_age_seconds",
            "Seconds since the pipeline thread last reported",
            &one(p.updated.map_or(f64::INFINITY, |u| u.elapsed().as_secs_f64())),
        )?;

        let st = &s.store;
        let written: Vec<(Labels<'_>, u64)> = Table::ALL
            .iter()
            .map(|t| (vec![("table", t.name())], load(&st.written[*t as usize])))
            .collect();
        counter(enc, "tapwatch_store_rows_written", "Rows written to SQLite, by table", &written)?;
        let mut evicted = Vec::new();
        for t in Table::ALL {
            evicted.push((
                vec![("table", t.name()), ("reason", "age")],
                load(&st.evicted_age[t as usize]),
            ));
            evicted.push((
                vec![("table", t.name()), ("reason", "size")],
                load(&st.evicted_size[t as usize]),
            ));
        }
        counter(
            enc,
            "tapwatch_store_evictions",
            "Rows deleted by retention, by table and reason",
            &evicted,
        )?;
        counter(
            enc,
            "tapwatch_store_ring_rotated",
            "Ring packets deleted to keep the newest per interface",
            &one(load(&st.ring_rotated)),
        )?;
        counter(enc, "tapwatch_store_commits", "Transactions committed", &one(load(&st.commits)))?;
        counter(
            enc,
            "tapwatch_store_write_errors",
            "Batches that failed to write",
            &one(load(&st.write_errors)),
        )?;
        counter(
            enc,
            "tapwatch_store_write_retries",
            "Batches tried again because the database was busy or locked",
            &one(load(&st.write_retries)),
        )?;
        counter(
            enc,
            "tapwatch_store_rows_lost",
            "Rows lost with failed batches",
            &one(load(&st.rows_lost)),
        )?;
        counter(
            enc,
            "tapwatch_store_queue_drops",
            "Rows dropped because the store's queue was full",
            &one(load(&st.queue_drops)),
        )?;
        gauge(
            enc,
            "tapwatch_store_size_bytes",
            "Bytes of live pages in the database",
            &one(load(&st.size_bytes) as f64),
        )?;
        let per_stream = |a: &[AtomicU64; Stream::COUNT]| -> Vec<(Labels<'_>, u64)> {
            Stream::ALL.iter().zip(a).map(|(s, c)| (vec![("stream", s.name())], load(c))).collect()
        };
        counter(
            enc,
            "tapwatch_sync_queued",
            "Messages queued in the outbox for the hub, by stream",
            &per_stream(&st.outbox_queued),
        )?;
        counter(
            enc,
            "tapwatch_sync_dropped",
            "Queued messages dropped unsent because the outbox was full, by stream",
            &per_stream(&st.outbox_dropped),
        )?;
        counter(
            enc,
            "tapwatch_store_evidence_over_budget_packets",
            "Packets of an anomaly episode not kept as its evidence: it had store.evidence_max_packets",
            &one(load(&st.evidence_over_budget)),
        )?;
        counter(
            enc,
            "tapwatch_sync_evidence_unsent_packets",
            "Evidence packets kept in the store but not sent: their episode sent sync.evidence_max_mb",
            &one(load(&st.evidence_unsent)),
        )?;
        gauge(
            enc,
            "tapwatch_sync_outbox_messages",
            "Messages in the outbox: not yet sent, or not yet confirmed by the hub",
            &one(load(&st.outbox_depth) as f64),
        )?;
        let y = &s.sync;
        counter(
            enc,
            "tapwatch_sync_published",
            "Messages sent to the broker, by stream (a message sent again counts again)",
            &per_stream(&y.published),
        )?;
        counter(
            enc,
            "tapwatch_sync_acked",
            "Messages the broker acknowledged, by stream",
            &per_stream(&y.acked),
        )?;
        counter(
            enc,
            "tapwatch_sync_confirmed",
            "Messages the hub confirmed committed (released from the outbox), by stream",
            &per_stream(&y.confirmed),
        )?;
        counter(
            enc,
            "tapwatch_sync_resent",
            "Messages sent again: the hub had not confirmed them in time, or named them missing",
            &per_stream(&y.resent),
        )?;
        gauge(
            enc,
            "tapwatch_sync_unconfirmed_messages",
            "Messages the broker acknowledged and the hub has not confirmed yet",
            &one(load(&y.unconfirmed) as f64),
        )?;
        gauge(
            enc,
            "tapwatch_sync_hub_lost_messages",
            "Messages the hub never received and this outbox no longer held, by stream (the hub's count)",
            &per_stream(&y.hub_lost).into_iter().map(|(l, v)| (l, v as f64)).collect::<Vec<_>>(),
        )?;
        counter(
            enc,
            "tapwatch_sync_acks_refused",
            "Hub acks refused: malformed, another device's, or confirming seqs this outbox never gave out",
            &one(load(&y.acks_refused)),
        )?;
        counter(
            enc,
            "tapwatch_sync_flows_acked",
            "Flow records in acknowledged batches",
            &one(load(&y.flows_acked)),
        )?;
        counter(
            enc,
            "tapwatch_sync_flows_lost_retention",
            "Flow records deleted by store retention before they could be sent",
            &one(load(&y.flows_lost_retention)),
        )?;
        counter(
            enc,
            "tapwatch_sync_flow_features_withheld",
            "Flow records sent without their features: stored as another feature set's vectors",
            &one(load(&y.flow_features_withheld)),
        )?;
        gauge(
            enc,
            "tapwatch_sync_connected",
            "1 while connected to the broker",
            &one(load(&y.connected) as f64),
        )?;
        counter(
            enc,
            "tapwatch_sync_connects",
            "Connections made to the broker",
            &one(load(&y.connects)),
        )?;
        counter(
            enc,
            "tapwatch_sync_disconnects",
            "Connections to the broker lost",
            &one(load(&y.disconnects)),
        )?;
        counter(
            enc,
            "tapwatch_config_reloads",
            "Capture-rule reloads applied",
            &one(load(&s.reloads)),
        )?;
        counter(
            enc,
            "tapwatch_config_reloads_failed",
            "Reloads refused (the rules in force stayed)",
            &one(load(&s.reloads_failed)),
        )?;
        counter(
            enc,
            "tapwatch_fleet_config_applied",
            "Configurations from the hub applied",
            &one(load(&s.fleet_applied)),
        )?;
        counter(
            enc,
            "tapwatch_fleet_config_refused",
            "Configurations from the hub refused or failed (the one before stayed in force)",
            &one(load(&s.fleet_refused)),
        )?;
        gauge(
            enc,
            "tapwatch_fleet_config_revision",
            "Revision of the hub's configuration in force (0: none)",
            &one(load(&s.fleet_revision) as f64),
        )?;

        let h = s.host.lock().map(|h| h.clone()).unwrap_or_default();
        gauge(enc, "tapwatch_host_cpu_usage_ratio", "CPU busy, all cores, 0 to 1", &one(h.cpu))?;
        gauge(enc, "tapwatch_host_memory_used_bytes", "Memory in use", &one(h.mem_used as f64))?;
        gauge(
            enc,
            "tapwatch_host_memory_total_bytes",
            "Memory installed",
            &one(h.mem_total as f64),
        )?;
        let disk = |f: fn(&(String, u64, u64)) -> u64| -> Vec<(Labels<'_>, f64)> {
            h.disks.iter().map(|d| (vec![("mount", d.0.as_str())], f(d) as f64)).collect()
        };
        gauge(
            enc,
            "tapwatch_host_disk_used_bytes",
            "Disk space used, by mount point",
            &disk(|d| d.1),
        )?;
        gauge(enc, "tapwatch_host_disk_total_bytes", "Disk space, by mount point", &disk(|d| d.2))?;
        let net = |f: fn(&(String, u64, u64)) -> u64| -> Vec<(Labels<'_>, u64)> {
            h.nets.iter().map(|d| (vec![("device", d.0.as_str())], f(d))).collect()
        };
        counter(
            enc,
            "tapwatch_host_network_receive_bytes",
            "Bytes received, by network device",
            &net(|d| d.1),
        )?;
        counter(
            enc,
            "tapwatch_host_network_transmit_bytes",
            "Bytes sent, by network device",
            &net(|d| d.2),
        )?;
        Ok(())
    }
}

/// The registry `/metrics` encodes.
pub fn registry(shared: Arc<Shared>) -> Registry {
    let mut r = Registry::default();
    r.register_collector(Box::new(Collector(shared)));
    r
}

/// Prometheus text of the registry.
pub fn encode(registry: &Registry) -> String {
    let mut out = String::new();
    if prometheus_client::encoding::text::encode(&mut out, registry).is_err() {
        out.clear();
        out.push_str("# encoding failed\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_metrics_text_has_every_family() {
        let shared = Arc::new(Shared::new("tap-1".into(), Arc::new(StoreCounters::default())));
        let c = Arc::new(InterfaceCounters { name: "eth1".into(), ..Default::default() });
        c.packets.store(42, Ordering::Relaxed);
        c.queue_drops.store(3, Ordering::Relaxed);
        shared.interfaces.write().unwrap().push(c);
        {
            let mut p = shared.pipeline.lock().unwrap();
            p.iface_errors = vec![[0; DissectError::ALL.len()]];
            p.iface_errors[0][DissectError::TcpMalformed.index()] = 5;
            p.flows.ended[EndReason::Evicted as usize] = 7;
        }
        *shared.host.lock().unwrap() = HostProbe::new().read();
        let text = encode(&registry(shared));
        for needle in [
            "tapwatch_capture_packets_total{interface=\"eth1\"} 42",
            "tapwatch_queue_drops_total{interface=\"eth1\"} 3",
            "tapwatch_parse_errors_total{interface=\"eth1\",kind=\"tcp_malformed\"} 5",
            "tapwatch_flows_ended_total{reason=\"evicted\"} 7",
            "tapwatch_store_evictions_total{table=\"packets\",reason=\"size\"} 0",
            "tapwatch_host_memory_total_bytes",
            "tapwatch_host_network_receive_bytes_total{device=\"lo\"}",
            "tapwatch_edge_up{device=\"tap-1\"} 1",
        ] {
            assert!(text.contains(needle), "missing {needle} in\n{text}");
        }
    }
}
