//! What happens to a packet after capture, live or offline: the engine (dissection, flows, host
//! windows, features), traffic statistics per interval, the evidence ring, and the rows for the
//! store. Synchronous and single-threaded: the live daemon runs it on its pipeline thread fed by
//! the capture threads; `analyze` runs it directly.

use crate::config::Config;
use crate::inference::{Detail, ModelStage, ModelWorker};
use crate::ring::{Ring, RingPacket};
use crate::store::{FlowRow, PacketRow, Row, StoreCounters};
use crate::EdgeEngine;
use crate::STORE_FLOW_CHUNK as FLOW_CHUNK;
use firmware::detect::{Episode, EpisodeEvent};
use firmware::engine::FinishedFlow;
use firmware::proto::{AnomalyKind, AnomalyMsg, HostCount, PortCount, StatsMsg};
use firmware::wire::{LinkType, PacketMeta, L3, L4};
use firmware::Instant;
use rustc_hash::FxHashMap as HashMap;
use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// Distinct ports or talkers one statistics interval tracks; beyond, packets still count in the
/// totals and the overflow is counted.
const STATS_KEYS_MAX: usize = 16_384;

/// How often (packet time) the window detectors and analyzers are judged: a trip is named at
/// most this late. A judgement walks the host, victim and analyzer tables (bounded).
pub const EVAL_US: i64 = firmware::detect::JUDGE_EVERY.total_micros() as i64;

/// How often (packet time) the flows waiting for the models run, if their batch has not
/// filled first: a batch costs about 26 us whatever its size, so batches are not run at every
/// judgement.
pub const MODEL_FLUSH_US: i64 = 1_000_000;

/// One captured packet handed to the pipeline.
#[derive(Debug, Clone, Copy)]
pub struct PacketIn<'a> {
    /// Index into the pipeline's interfaces.
    pub iface: usize,
    pub link: LinkType,
    /// libpcap data-link type, kept with evidence packets.
    pub dlt: i32,
    pub ts_us: i64,
    pub wire_len: u32,
    pub data: &'a [u8],
}

#[derive(Debug, Default, Clone, Copy)]
struct Count {
    packets: u64,
    bytes: u64,
}

/// Traffic of the current interval.
#[derive(Debug, Default)]
struct Interval {
    start_us: i64,
    packets: u64,
    bytes: u64,
    tcp: u64,
    udp: u64,
    icmp: u64,
    other: u64,
    flows_started: u64,
    flows_ended: u64,
    parse_errors: u64,
    ports: HashMap<(u8, u16), Count>,
    talkers: HashMap<IpAddr, Count>,
}

/// Counters of the pipeline beyond the engine's.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PipelineCounters {
    /// Anomaly episodes reported, and left out by a suppression rule.
    pub anomalies: u64,
    pub anomalies_suppressed: u64,
    /// A model's brute_force verdicts left out because the analyzers saw no failed login from
    /// that source (a client fetching pages makes many connections and fails none).
    pub brute_force_unconfirmed: u64,
    /// Packets that could not be attributed to a port or talker in an interval's top lists
    /// because the interval already tracked [`STATS_KEYS_MAX`] of them.
    pub stats_overflow: u64,
    /// Ring packets replaced in memory before they were written (the ring keeps the newest).
    pub ring_rotated: u64,
    pub stats_intervals: u64,
}

type StoreLink = Option<(crossbeam_channel::Sender<Row>, Arc<StoreCounters>)>;

/// A finished flow, ended at packet time `now_us`: its row to the store (in `chunk`, sent when
/// full) and its features to the models, computed once; a full batch leaves for the models at
/// once, so that the many flows one call ends (a timeout sweep, a full table's evictions, the
/// end of input) run in batches of the configured size, not as one batch of them all.
fn sink_flow(
    store: &StoreLink,
    blocking: bool,
    models: &mut Option<Box<ModelWorker>>,
    chunk: &mut Vec<FlowRow>,
    f: &FinishedFlow,
    now_us: i64,
) {
    let to_models = models.as_ref().is_some_and(|m| m.active());
    if store.is_none() && !to_models {
        return;
    }
    let row = FlowRow::from(f);
    if let Some(m) = models.as_mut() {
        if m.push(f, &row.features) {
            m.send(now_us);
        }
    }
    if store.is_some() {
        chunk.push(row);
        if chunk.len() >= FLOW_CHUNK {
            send_row(store, blocking, Row::Flows(std::mem::take(chunk)));
        }
    }
}

/// How long an anomaly or its evidence waits for room in a full store queue, live, before it is
/// dropped (counted): the writer empties a full queue in milliseconds unless the store is stuck,
/// and an alert is worth holding the pipeline that long (the capture queues take the packets).
const URGENT_WAIT: std::time::Duration = std::time::Duration::from_millis(500);

/// Hand a row to the store: wait for room (offline; live, an anomaly or its evidence for at most
/// [`URGENT_WAIT`]) or drop and count when the queue is full.
fn send_row(store: &StoreLink, blocking: bool, row: Row) {
    if let Some((tx, c)) = store {
        let rows = row.rows();
        let urgent = matches!(row, Row::Anomaly(_) | Row::Evidence { .. });
        let sent = if blocking {
            tx.send(row).is_ok()
        } else if urgent {
            tx.send_timeout(row, URGENT_WAIT).is_ok()
        } else {
            tx.try_send(row).is_ok()
        };
        if !sent {
            c.queue_drops.fetch_add(rows, Ordering::Relaxed);
        }
    }
}

/// The `n` largest entries by bytes, then packets.
fn top<K>(m: HashMap<K, Count>, n: usize) -> Vec<(K, Count)> {
    let mut v: Vec<_> = m.into_iter().collect();
    v.sort_by(|a, b| b.1.bytes.cmp(&a.1.bytes).then(b.1.packets.cmp(&a.1.packets)));
    v.truncate(n);
    v
}

/// The pipeline.
#[derive(Debug)]
pub struct Pipeline {
    engine: Box<EdgeEngine>,
    interval_us: i64,
    top_n: usize,
    stats: Option<Interval>,
    /// Per interface: packets since the last ring write, newest last.
    rings: Vec<Ring>,
    ring_cap: usize,
    /// Evidence packets given to the store per open episode (by id), and the most one keeps
    /// (`store.evidence_max_packets`).
    evidence_given: HashMap<u64, u64>,
    evidence_max: u64,
    /// When the ring was last written, by the wall clock: at most `ring_cap` packets per
    /// interface a second reach the store, whatever the packet rate (offline, packet time runs
    /// far faster than that).
    last_ring_write: std::time::Instant,
    /// Packets since the clock was last read (it is read every 256).
    since_clock: u32,
    store: Option<(crossbeam_channel::Sender<Row>, Arc<StoreCounters>)>,
    /// Offline, rows wait for the store rather than drop: there is no capture to protect.
    blocking: bool,
    counters: PipelineCounters,
    /// Parse errors per interface, by kind.
    iface_errors: Vec<[u64; firmware::wire::DissectError::ALL.len()]>,
    /// The window detectors (None when `detect.enabled` is false), when they next run (packet
    /// time, every [`EVAL_US`]), and what they report; when the models' batch is next run
    /// (every [`MODEL_FLUSH_US`], or when it is full).
    detector: Option<Box<firmware::detect::WindowDetector<EPISODES_MAX>>>,
    next_eval_us: i64,
    next_flush_us: i64,
    /// The host window, µs: an episode's evidence starts one window before it opened.
    window_us: i64,
    suppress: Vec<crate::config::SuppressRule>,
    /// Anomalies kept for the caller (`analyze --emit anomalies`): each episode once, as it ends.
    collect: Option<Vec<AnomalyMsg>>,
    /// The models (None when there are none), models loaded again to put in their slots, and
    /// what drove each open episode the models opened.
    models: Option<Box<ModelWorker>>,
    /// Finished flows not yet sent to the store.
    flow_rows: Vec<FlowRow>,
    reloads: Option<crossbeam_channel::Receiver<crate::inference::Swap>>,
    settings: Option<crossbeam_channel::Receiver<Settings>>,
    model_detail: HashMap<(IpAddr, AnomalyKind), Detail>,
}

/// Detection settings changed while running (a reload, or the hub's configuration): taken
/// between two judgements; open episodes and the windows' counts go on.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub thresholds: firmware::detect::Thresholds,
    pub quiet_s: u32,
    pub update_s: u32,
    pub suppress: Vec<crate::config::SuppressRule>,
    pub evidence_max_packets: u64,
}

impl Settings {
    pub fn of(config: &Config) -> Settings {
        Settings {
            thresholds: config.detect.thresholds,
            quiet_s: config.detect.quiet_s,
            update_s: config.detect.update_s,
            suppress: config.detect.suppress.clone(),
            evidence_max_packets: config.store.evidence_max_packets,
        }
    }
}

/// Anomaly episodes open at once.
pub const EPISODES_MAX: usize = 256;

/// What a model saw, on the anomaly of an episode it opened: its confidence, the flow's
/// destination, and the features that drove it.
fn apply_detail(msg: &mut AnomalyMsg, d: &Detail) {
    msg.confidence = d.confidence.clamp(0.0, 1.0);
    msg.detector = d.detector.try_into().unwrap_or_default();
    msg.dst_ip = Some(d.dst);
    msg.dst_port = (d.dst_port != 0).then_some(d.dst_port);
    msg.protocol = Some(d.protocol);
    msg.reasons.clear();
    for (feature, value, contribution) in &d.reasons {
        let _ = msg.reasons.push(firmware::proto::Reason {
            feature: (*feature).try_into().unwrap_or_default(),
            value: *value,
            contribution: *contribution,
        });
    }
}

impl Pipeline {
    pub fn new(
        config: &Config,
        interfaces: Vec<Arc<str>>,
        store: Option<(crossbeam_channel::Sender<Row>, Arc<StoreCounters>)>,
    ) -> Pipeline {
        let ring_cap =
            if store.is_some() { config.store.evidence_ring_packets as usize } else { 0 };
        Pipeline {
            engine: crate::new_engine(config.engine()),
            iface_errors: vec![[0; firmware::wire::DissectError::ALL.len()]; interfaces.len()],
            rings: interfaces.into_iter().map(|i| Ring::new(i, ring_cap)).collect(),
            interval_us: i64::from(config.stats.interval_s) * 1_000_000,
            top_n: config.stats.top_n,
            stats: None,
            ring_cap,
            evidence_given: HashMap::default(),
            evidence_max: config.store.evidence_max_packets,
            last_ring_write: std::time::Instant::now(),
            since_clock: 0,
            store,
            blocking: false,
            counters: PipelineCounters::default(),
            detector: config.detect.enabled.then(|| {
                let mut d =
                    Box::new(firmware::detect::WindowDetector::new(config.detect.thresholds));
                d.quiet = firmware::Duration::from_secs(config.detect.quiet_s.into());
                d.update_every = firmware::Duration::from_secs(config.detect.update_s.into());
                d
            }),
            next_eval_us: i64::MIN,
            next_flush_us: i64::MIN,
            window_us: i64::from(config.flows.host_window_s) * 1_000_000,
            suppress: config.detect.suppress.clone(),
            collect: None,
            models: None,
            flow_rows: Vec::new(),
            reloads: None,
            settings: None,
            model_detail: HashMap::default(),
        }
    }

    /// Run these models on every finished flow (with the window detectors: `detect.enabled`).
    ///
    /// Live, the models run on a thread of their own ([`ModelWorker`]), their analysis
    /// messages going from there to the store; offline ([`blocking`](Self::blocking), called
    /// first), on this one, with the same timing of their trips.
    pub fn with_models(mut self, stage: ModelStage) -> Self {
        // Kept even when empty: a model file that appears later is loaded into it.
        if self.detector.is_some() {
            let (store, blocking) = (self.store.clone(), self.blocking);
            let analysis = move |a| send_row(&store, blocking, Row::Analysis(Box::new(a)));
            let worker = if blocking {
                ModelWorker::shared(stage, analysis)
            } else {
                ModelWorker::spawn(stage, analysis)
            };
            match worker {
                Ok(w) => self.models = Some(Box::new(w)),
                Err(e) => tracing::error!("cannot start the model thread, models off: {e}"),
            }
        }
        self
    }

    /// Models loaded again arrive here; each replaces the one in its slot.
    pub fn with_reloads(mut self, rx: crossbeam_channel::Receiver<crate::inference::Swap>) -> Self {
        self.reloads = Some(rx);
        self
    }

    /// Detection settings changed while running arrive here.
    pub fn with_settings(mut self, rx: crossbeam_channel::Receiver<Settings>) -> Self {
        self.settings = Some(rx);
        self
    }

    /// Take the newest settings sent.
    fn take_settings(&mut self) {
        let Some(rx) = self.settings.as_ref() else { return };
        let Some(s) = rx.try_iter().last() else { return };
        if let Some(d) = self.detector.as_mut() {
            d.thresholds = s.thresholds;
            d.quiet = firmware::Duration::from_secs(s.quiet_s.into());
            d.update_every = firmware::Duration::from_secs(s.update_s.into());
        }
        self.suppress = s.suppress;
        self.evidence_max = s.evidence_max_packets;
        tracing::info!("detection settings applied");
    }

    /// The model stage's counters and the models in it (name, version).
    pub fn models(&self) -> Option<&ModelWorker> {
        self.models.as_deref()
    }

    /// The finished flows not yet in the store go (a chunk short of [`FLOW_CHUNK`]).
    fn send_flows(&mut self) {
        if !self.flow_rows.is_empty() {
            let rows = std::mem::take(&mut self.flow_rows);
            self.send(Row::Flows(rows));
        }
    }

    /// The flows waiting for the models leave for the model thread (packet time `now_us`).
    fn send_models(&mut self, now_us: i64) {
        if let Some(m) = self.models.as_mut() {
            m.send(now_us);
        }
    }

    /// Take the models' trips that are due at `now_us` (a flush interval after their batch
    /// left; live, also those ready sooner; with `all`, every batch sent): the sources they
    /// name go to the episodes.
    fn apply_models(&mut self, now_us: i64, all: bool) {
        let Some(m) = self.models.as_mut() else { return };
        let due = if all { i64::MAX } else { now_us.saturating_sub(MODEL_FLUSH_US) };
        let trips = m.take(due, !self.blocking);
        for (src, t, now_us, d) in trips {
            // Many attempts is not an attack; many failed ones is. The analyzers see failures
            // where the protocol shows them (FTP, HTTP, Kerberos, SMB), infer them for SSH from
            // the sizes of the server's encrypted answers, or see a login form posted again
            // and again.
            if t.kind == AnomalyKind::BruteForce {
                let at = Instant::from_micros(now_us);
                let failed = self.engine.analyzers().sources().get(&src).is_some_and(|w| {
                    let f = w.features(at, firmware::analyzers::WINDOW);
                    f.auth_failures >= 1.0 || f.posts_one_path >= 5.0
                });
                if !failed {
                    self.counters.brute_force_unconfirmed += 1;
                    continue;
                }
            }
            let key = (src, t.kind);
            match self.model_detail.get(&key) {
                Some(old) if old.score >= d.score => {}
                _ => {
                    self.model_detail.insert(key, d);
                }
            }
            let Some(det) = self.detector.as_mut() else { return };
            let mut events = Vec::new();
            det.observe(src, t, Instant::from_micros(now_us), &mut |e, ev| events.push((*e, ev)));
            for (e, ev) in events {
                self.report(&e, ev);
            }
        }
        // Details of trips that opened no episode (the episode table was full) are not kept.
        if self.model_detail.len() > 2 * EPISODES_MAX {
            if let Some(det) = self.detector.as_ref() {
                let open: Vec<(IpAddr, AnomalyKind)> =
                    det.open().map(|e| (e.src, e.kind)).collect();
                self.model_detail.retain(|k, _| open.contains(k));
            }
        }
    }

    /// Put models loaded again in their slots.
    fn take_reloads(&mut self) {
        let (Some(rx), Some(stage)) = (self.reloads.as_ref(), self.models.as_mut()) else {
            return;
        };
        while let Ok(s) = rx.try_recv() {
            match &s {
                crate::inference::Swap::Load(m) => {
                    tracing::info!(model = %m.name, version = %m.version, path = %m.path.display(), "model loaded")
                }
                crate::inference::Swap::Empty(kind) => {
                    tracing::info!(slot = kind.as_str(), "model slot emptied")
                }
            }
            stage.swap(s);
        }
    }

    /// Keep each anomaly episode, as it ends, for [`take_anomalies`](Self::take_anomalies).
    pub fn collect_anomalies(mut self) -> Self {
        self.collect = Some(Vec::new());
        self
    }

    /// The anomalies kept since the last call.
    pub fn take_anomalies(&mut self) -> Vec<AnomalyMsg> {
        self.collect.as_mut().map(std::mem::take).unwrap_or_default()
    }

    /// Run the window detectors if [`EVAL_US`] of packet time passed (or `force`), and the
    /// models' batch every [`MODEL_FLUSH_US`].
    fn detect(&mut self, now_us: i64, force: bool) {
        if !force && now_us < self.next_eval_us {
            return;
        }
        self.next_eval_us = now_us + EVAL_US;
        self.take_settings();
        self.send_flows();
        if force || now_us >= self.next_flush_us {
            self.next_flush_us = now_us + MODEL_FLUSH_US;
            self.take_reloads();
            self.send_models(now_us);
        }
        self.apply_models(now_us, force);
        let Some(d) = self.detector.as_mut() else { return };
        let mut events = Vec::new();
        let now = Instant::from_micros(now_us);
        d.judge(&self.engine, now, &mut |e, ev| events.push((*e, ev)));
        for (e, ev) in events {
            self.report(&e, ev);
        }
    }

    fn report(&mut self, e: &Episode, ev: EpisodeEvent) {
        let key = (e.src, e.kind);
        let detail = self
            .model_detail
            .get(&key)
            .filter(|_| e.counter == "classifier" || e.counter == "autoencoder");
        let port = detail.map(|d| d.dst_port);
        if self.suppress.iter().any(|r| r.covers(e.src, e.kind, port)) {
            if ev == EpisodeEvent::Closed {
                self.model_detail.remove(&key);
            }
            if ev == EpisodeEvent::Opened {
                self.counters.anomalies_suppressed += 1;
            }
            return;
        }
        if ev == EpisodeEvent::Opened {
            self.counters.anomalies += 1;
            tracing::info!(kind = ?e.kind, src = %e.src, counter = e.counter, value = e.peak, "anomaly");
        }
        let mut msg = e.message();
        if let Some(d) = detail {
            apply_detail(&mut msg, d);
        }
        if ev == EpisodeEvent::Closed {
            self.model_detail.remove(&key);
            if let Some(c) = self.collect.as_mut() {
                c.push(msg.clone());
            }
        }
        if self.store.is_some() {
            self.send(Row::Anomaly(Box::new(msg)));
            // Evidence: the packets to or from the source since the episode began, as far back
            // as the ring reaches: those still in memory go with the marking (the rest of the
            // ring waits for its next write, so an episode's updates do not write it whole).
            let since_us = e.first_seen.total_micros() - self.window_us;
            // At most what the episode may still keep: the store keeps every packet given it
            // while under budget, and more besides (ring packets it had already written), so
            // once this episode was given its budget the store's is spent too. The rest stay
            // ring packets (rotated as those are), counted as over budget here rather than
            // written and rotated out.
            let given = self.evidence_given.get(&e.id).copied().unwrap_or(0);
            let room = self.evidence_max.saturating_sub(given);
            let (packets, left) = self.take_evidence(e.src, since_us, room);
            if let Some((_, c)) = &self.store {
                c.evidence_over_budget.fetch_add(left, Ordering::Relaxed);
            }
            if ev == EpisodeEvent::Closed {
                self.evidence_given.remove(&e.id);
            } else {
                self.evidence_given.insert(e.id, given + packets.len() as u64);
            }
            if room > 0 {
                self.send(Row::Evidence { anomaly: e.id as i64, host: e.src, since_us, packets });
            }
        }
    }

    /// End the open episodes (end of input).
    fn close_episodes(&mut self) {
        let Some(d) = self.detector.as_mut() else { return };
        let mut events = Vec::new();
        d.close_all(&mut |e, ev| events.push((*e, ev)));
        for (e, ev) in events {
            self.report(&e, ev);
        }
        self.next_eval_us = i64::MIN;
        self.next_flush_us = i64::MIN;
    }

    /// Rows wait for room in the store's queue instead of being dropped (offline analysis).
    pub fn blocking(mut self) -> Self {
        self.blocking = true;
        self
    }

    pub fn engine(&self) -> &EdgeEngine {
        &self.engine
    }
    pub fn counters(&self) -> &PipelineCounters {
        &self.counters
    }
    /// Parse errors per interface, by kind (order of `DissectError::ALL`).
    pub fn iface_errors(&self) -> &[[u64; firmware::wire::DissectError::ALL.len()]] {
        &self.iface_errors
    }

    /// The counters `/metrics` shows.
    pub fn snapshot(&self) -> crate::metrics::PipelineSnapshot {
        crate::metrics::PipelineSnapshot {
            engine: *self.engine.counters(),
            flows: *self.engine.flow_counters(),
            hosts: *self.engine.host_counters(),
            victims: *self.engine.victims().counters(),
            analyzers: self.engine.analyzers().counters(),
            analyzer_windows_evicted: self.engine.analyzers().windows_evicted(),
            pipeline: self.counters,
            flows_active: self.engine.flows().len() as u64,
            flows_capacity: self.engine.flows().capacity() as u64,
            hosts_active: self.engine.hosts().len() as u64,
            victims_active: self.engine.victims().len() as u64,
            iface_errors: self.iface_errors.clone(),
            inference: self.models.as_ref().map(|m| m.counters()).unwrap_or_default(),
            models: self.models.as_ref().map(|m| m.loaded()).unwrap_or_default(),
            updated: Some(std::time::Instant::now()),
        }
    }

    fn send(&self, row: Row) {
        send_row(&self.store, self.blocking, row);
    }

    /// Account a batch of packets, in order.
    pub fn batch(&mut self, b: &crate::capture::Batch, out: &mut impl FnMut(&FinishedFlow)) {
        for (ts_us, wire_len, range) in &b.packets {
            let input = PacketIn {
                iface: b.iface,
                link: b.link,
                dlt: b.dlt,
                ts_us: *ts_us,
                wire_len: *wire_len,
                data: &b.bytes[range.clone()],
            };
            self.packet(input, out);
        }
    }

    /// Account one packet; finished flows go to `out` (and to the store).
    pub fn packet(&mut self, p: PacketIn<'_>, out: &mut impl FnMut(&FinishedFlow)) {
        self.roll_interval(p.ts_us);
        let ts = Instant::from_micros(p.ts_us);
        let mut ended = 0u64;
        let (store, blocking, models, chunk) =
            (&self.store, self.blocking, &mut self.models, &mut self.flow_rows);
        let mut sink = |f: &FinishedFlow| {
            ended += 1;
            sink_flow(store, blocking, models, chunk, f, p.ts_us);
            out(f)
        };
        let started_before = self.engine.flow_counters().created;
        let result = self.engine.process(p.link, ts, p.wire_len, p.data, &mut sink);
        let started = self.engine.flow_counters().created - started_before;
        self.detect(p.ts_us, false);
        if let Err(e) = &result {
            if let Some(row) = self.iface_errors.get_mut(p.iface) {
                row[e.index()] += 1;
            }
        }
        if self.store.is_none() {
            // Statistics intervals and the ring only feed the store.
            return;
        }
        let iv = self.stats.get_or_insert_with(Interval::default);
        iv.packets += 1;
        iv.bytes += u64::from(p.wire_len);
        iv.flows_started += started;
        iv.flows_ended += ended;
        let (src, dst) = match &result {
            Ok(meta) => {
                Self::count_packet(iv, meta, p.wire_len, &mut self.counters);
                match meta.l3 {
                    L3::Ip(ref ip) => (Some(ip.src), Some(ip.dst)),
                    _ => (None, None),
                }
            }
            Err(_) => {
                iv.parse_errors += 1;
                (None, None)
            }
        };
        if self.ring_cap > 0 {
            let rotated = self.rings[p.iface].push(RingPacket {
                ts_us: p.ts_us,
                link_type: p.dlt,
                wire_len: p.wire_len,
                src,
                dst,
                data: p.data,
            });
            self.counters.ring_rotated += u64::from(rotated);
            self.since_clock += 1;
            if self.since_clock >= 256 {
                self.since_clock = 0;
                if self.last_ring_write.elapsed() >= std::time::Duration::from_secs(1) {
                    self.write_rings();
                }
            }
        }
    }

    fn count_packet(iv: &mut Interval, meta: &PacketMeta, wire_len: u32, c: &mut PipelineCounters) {
        let L3::Ip(ref ip) = meta.l3 else {
            iv.other += 1;
            return;
        };
        match ip.l4 {
            L4::Tcp(_) => iv.tcp += 1,
            L4::Udp(_) => iv.udp += 1,
            L4::Icmpv4 { .. } | L4::Icmpv6 { .. } => iv.icmp += 1,
            L4::None => iv.other += 1,
        }
        let bytes = u64::from(wire_len);
        // The service port: the lower of the two for TCP and UDP (the well-known side, almost
        // always the responder's).
        if let L4::Tcp(_) | L4::Udp(_) = ip.l4 {
            let (s, d) = ip.l4.ports();
            let key = (ip.protocol, s.min(d));
            if iv.ports.len() < STATS_KEYS_MAX || iv.ports.contains_key(&key) {
                let e = iv.ports.entry(key).or_default();
                e.packets += 1;
                e.bytes += bytes;
            } else {
                c.stats_overflow += 1;
            }
        }
        if iv.talkers.len() < STATS_KEYS_MAX || iv.talkers.contains_key(&ip.src) {
            let e = iv.talkers.entry(ip.src).or_default();
            e.packets += 1;
            e.bytes += bytes;
        } else {
            c.stats_overflow += 1;
        }
    }

    /// Start a new statistics interval if `ts_us` is past the current one, storing the old one.
    fn roll_interval(&mut self, ts_us: i64) {
        let start = ts_us - ts_us.rem_euclid(self.interval_us);
        match &self.stats {
            Some(iv) if iv.start_us == start || ts_us < iv.start_us => {}
            Some(_) => {
                if let Some(old) = self.stats.take() {
                    self.store_interval(old);
                }
                self.stats = Some(Interval { start_us: start, ..Interval::default() });
            }
            None => self.stats = Some(Interval { start_us: start, ..Interval::default() }),
        }
    }

    fn store_interval(&mut self, iv: Interval) {
        self.counters.stats_intervals += 1;
        // (top_n is at most the contract's 10: config checks it.)
        let top_ports = top(iv.ports, self.top_n)
            .into_iter()
            .map(|((protocol, port), c)| PortCount {
                protocol,
                port,
                packets: c.packets,
                bytes: c.bytes,
            })
            .take(10)
            .collect();
        let top_talkers = top(iv.talkers, self.top_n)
            .into_iter()
            .map(|(ip, c)| HostCount { ip, packets: c.packets, bytes: c.bytes })
            .take(10)
            .collect();
        let row = StatsMsg {
            schema: firmware::proto::SCHEMA_VERSION,
            device: heapless::String::new(),
            seq: 0,
            ts: 0,
            interval_start: iv.start_us,
            interval_end: iv.start_us + self.interval_us,
            packets: iv.packets,
            bytes: iv.bytes,
            tcp_packets: iv.tcp,
            udp_packets: iv.udp,
            icmp_packets: iv.icmp,
            other_packets: iv.other,
            flows_started: iv.flows_started,
            flows_ended: iv.flows_ended,
            parse_errors: iv.parse_errors,
            top_ports,
            top_talkers,
        };
        self.send(Row::Stats(Box::new(row)));
        if let Some(m) = self.models.as_mut() {
            m.analyses(iv.start_us + self.interval_us);
        }
    }

    /// Take the ring packets in memory to or from `host` since `since_us`, oldest first, at
    /// most `max`; also how many more there were.
    fn take_evidence(&mut self, host: IpAddr, since_us: i64, max: u64) -> (Vec<PacketRow>, u64) {
        let mut out: Vec<PacketRow> = Vec::new();
        let mut left = 0;
        for r in &mut self.rings {
            let room = (max as usize).saturating_sub(out.len());
            let (taken, more) = r.take_host(host, since_us, room);
            out.extend(taken);
            left += more;
        }
        out.sort_by_key(|p| p.ts_us);
        (out, left)
    }

    fn write_rings(&mut self) {
        self.last_ring_write = std::time::Instant::now();
        // Each ring as one row of the queue (a ring of 10,000 packets sent a packet at a time
        // filled the 4,096-row queue at every write under load, and what came with it, an
        // anomaly too, was dropped).
        let rings: Vec<Vec<PacketRow>> = self.rings.iter_mut().map(Ring::drain).collect();
        for ring in rings.into_iter().filter(|r| !r.is_empty()) {
            self.send(Row::Packets(ring));
        }
    }

    /// Advance time with no packet (live capture on a quiet link): flows time out and the
    /// interval rolls.
    pub fn tick(&mut self, now_us: i64, out: &mut impl FnMut(&FinishedFlow)) {
        let (store, blocking, models, chunk) =
            (&self.store, self.blocking, &mut self.models, &mut self.flow_rows);
        let mut ended = 0;
        self.engine.tick(Instant::from_micros(now_us), &mut |f| {
            ended += 1;
            sink_flow(store, blocking, models, chunk, f, now_us);
            out(f)
        });
        if let Some(iv) = self.stats.as_mut() {
            iv.flows_ended += ended;
        }
        self.detect(now_us, false);
        self.roll_interval(now_us);
        if self.ring_cap > 0 && self.last_ring_write.elapsed() >= std::time::Duration::from_secs(1)
        {
            self.write_rings();
        }
    }

    /// End of input (end of a file, or shutdown): every flow, the last interval and the ring.
    pub fn finish(&mut self, out: &mut impl FnMut(&FinishedFlow)) {
        // The last second of the input is judged, then what is open ends with it.
        let last = self.engine.flows().iter().map(|(_, f)| f.last().total_micros()).max();
        let last = last.or((self.next_eval_us > i64::MIN).then(|| self.next_eval_us - EVAL_US));
        if let Some(last) = last {
            self.detect(last, true);
        }
        let (store, blocking, models, chunk) =
            (&self.store, self.blocking, &mut self.models, &mut self.flow_rows);
        let mut ended = 0;
        let now_us = last.unwrap_or_default();
        self.engine.reset(&mut |f| {
            ended += 1;
            sink_flow(store, blocking, models, chunk, f, now_us);
            out(f)
        });
        self.send_flows();
        // The flows that just ended are judged (waiting for the model thread), then every
        // episode ends.
        self.send_models(last.unwrap_or_default());
        self.apply_models(last.unwrap_or_default(), true);
        self.close_episodes();
        if let Some(mut iv) = self.stats.take() {
            iv.flows_ended += ended;
            self.store_interval(iv);
        }
        if self.ring_cap > 0 {
            self.write_rings();
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// An Ethernet frame of one UDP datagram from 10.64.0.`host` to 10.1.0.1:53.
    fn udp_frame(host: u8, sport: u16) -> Vec<u8> {
        let mut f = vec![2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 8, 0];
        f.extend([0x45, 0, 0, 46, 0, 1, 0, 0, 64, 17, 0, 0, 10, 64, 0, host, 10, 1, 0, 1]);
        f.extend(sport.to_be_bytes());
        f.extend([0, 53, 0, 26, 0, 0]);
        f.extend([0; 18]);
        f
    }

    #[test]
    fn test_the_flows_one_call_ends_run_in_batches_of_the_configured_size() {
        crate::on_pipeline_stack(flows_one_call_ends_run_in_batches);
    }

    fn flows_one_call_ends_run_in_batches() {
        let config = Config::parse("[device]\nid = \"t\"\n", "t.toml").unwrap();
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/shipped");
        let load = |f: &str, k| crate::model::Model::load(&dir.join(f), k).unwrap();
        let stage = ModelStage::new(
            Some(load("autoencoder.onnx", crate::model::ModelKind::Autoencoder)),
            Some(load("classifier.onnx", crate::model::ModelKind::Classifier)),
            8,
            3,
            10_000_000,
        );
        let mut p =
            Pipeline::new(&config, vec![Arc::from("eth0")], None).blocking().with_models(stage);
        // 100 flows, all open until the end of input ends them in one call.
        for i in 0..100u16 {
            let data = udp_frame((i % 50) as u8 + 1, 1024 + i);
            let input = PacketIn {
                iface: 0,
                link: LinkType::Ethernet,
                dlt: 1,
                ts_us: 1_700_000_000_000_000 + i64::from(i) * 50,
                wire_len: data.len() as u32,
                data: &data,
            };
            p.packet(input, &mut |_| {});
        }
        p.finish(&mut |_| {});
        let c = p.models().unwrap().counters();
        assert_eq!(c.rows, 100);
        assert_eq!(c.batches, 13, "twelve batches of 8 and one of 4, not one of 100");
    }

    #[test]
    fn test_a_full_queue_drops_bulk_rows_but_holds_evidence_until_the_writer_takes_room() {
        let (tx, rx) = crossbeam_channel::bounded::<Row>(1);
        let counters = Arc::new(StoreCounters::default());
        let store: StoreLink = Some((tx, counters.clone()));
        let packet = || PacketRow {
            ts_us: 1,
            interface: Arc::from("eth0"),
            link_type: 1,
            wire_len: 60,
            src: None,
            dst: None,
            data: vec![0; 60],
        };
        // A ring write of many packets takes one place in the queue.
        send_row(&store, false, Row::Packets(vec![packet(); 10]));
        assert_eq!(counters.queue_drops.load(Ordering::Relaxed), 0);
        // Full: a bulk row is dropped, its packets counted, at once.
        send_row(&store, false, Row::Packets(vec![packet(), packet()]));
        assert_eq!(counters.queue_drops.load(Ordering::Relaxed), 2);
        // Evidence waits while the writer (here, a thread 100 ms late) makes room.
        let writer = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(100));
            (rx.recv().unwrap(), rx.recv().unwrap())
        });
        let evidence = Row::Evidence {
            anomaly: 1,
            host: IpAddr::from([10, 0, 0, 1]),
            since_us: 0,
            packets: Vec::new(),
        };
        send_row(&store, false, evidence);
        let (_, second) = writer.join().unwrap();
        assert!(matches!(second, Row::Evidence { anomaly: 1, .. }));
        assert_eq!(counters.queue_drops.load(Ordering::Relaxed), 2, "the evidence was not dropped");
    }
}
