//! The models in the pipeline: finished flows wait in a batch, the batch runs through the
//! autoencoder and the classifier together, and each flow gets a verdict.
//!
//! A verdict names a kind when the classifier gives an attack class at least its
//! `min_confidence`; otherwise the flow is `anomalous_flow` when its reconstruction error is over
//! the autoencoder's threshold; otherwise it is benign. Verdicts are not alerts: a source becomes
//! a model trip (and so an episode, through [`firmware::detect::WindowDetector::observe`]) once
//! `min_flows` of its flows (or its kind's own count: brute force is many attempts) got the same
//! kind within any span of the host window (a sliding window: the last `min_flows` verdicts'
//! times, so a burst is counted whole wherever it falls). The source is the flow's initiator, except for reflection: there
//! it is the victim, the end that receives the larger answers, so that many reflectors make one
//! episode. Every verdict carries the features that drove it: the three with the largest share of
//! the autoencoder's error.

use crate::model::{Model, ModelError, ModelKind};
use firmware::detect::Trip;
use firmware::engine::FinishedFlow;
use firmware::features::FeatureVector;
use firmware::proto::{AnalysisMsg, AnomalyKind};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Mutex;

/// What drove one model verdict (the detail of an episode the models opened).
#[derive(Debug, Clone, PartialEq)]
pub struct Detail {
    pub detector: &'static str,
    pub confidence: f32,
    pub score: f32,
    pub threshold: f32,
    /// Feature, its raw value, its share of the reconstruction error (or |z| without an
    /// autoencoder).
    pub reasons: Vec<(&'static str, f32, f32)>,
    pub dst: IpAddr,
    pub dst_port: u16,
    pub protocol: u8,
}

/// A finished flow waiting for the models: its features and what a verdict on it needs.
#[derive(Debug, Clone)]
pub struct Pending {
    v: FeatureVector,
    src: IpAddr,
    dst: IpAddr,
    dst_port: u16,
    protocol: u8,
    /// The responder sent more than the initiator (which end a reflection's victim is).
    responder_heavier: bool,
    end_us: i64,
}

impl Pending {
    /// What the models need of a finished flow with its feature vector.
    pub fn of(f: &FinishedFlow, v: &FeatureVector) -> Pending {
        let r = &f.record;
        let (src, _) = r.key.src(r.flow.lo_is_src);
        let (dst, dst_port) = r.key.dst(r.flow.lo_is_src);
        Pending {
            v: *v,
            src,
            dst,
            dst_port,
            protocol: r.key.protocol,
            responder_heavier: r.flow.bwd.wire_bytes > r.flow.fwd.wire_bytes,
            end_us: r.flow.last().total_micros(),
        }
    }
}

/// When a source's last verdicts of one kind came (at most as many as the kind needs).
#[derive(Debug, Default)]
struct Hits {
    times: VecDeque<i64>,
}

impl Hits {
    /// Count a verdict at `t_us`; true when the newest `needed` verdicts fall within
    /// `window_us`. Flows end out of order (their timeouts differ), so the times are kept in
    /// order and the oldest is dropped.
    fn add(&mut self, t_us: i64, needed: u32, window_us: i64) -> bool {
        let needed = needed.max(1) as usize;
        let at = self.times.partition_point(|&t| t <= t_us);
        self.times.insert(at, t_us);
        while self.times.len() > needed {
            self.times.pop_front();
        }
        match (self.times.front(), self.times.back()) {
            (Some(lo), Some(hi)) => self.times.len() == needed && hi - lo <= window_us,
            _ => false,
        }
    }

    fn newest(&self) -> i64 {
        self.times.back().copied().unwrap_or(i64::MIN)
    }
}

/// Score statistics of one model over a statistics interval.
#[derive(Debug, Default, Clone)]
struct Acc {
    rows: u32,
    min: f32,
    sum: f64,
    max: f32,
    flagged: u32,
    latency_us: u64,
}

impl Acc {
    fn add(&mut self, score: f32, flagged: bool) {
        if self.rows == 0 || score < self.min {
            self.min = score;
        }
        if self.rows == 0 || score > self.max {
            self.max = score;
        }
        self.rows += 1;
        self.sum += f64::from(score);
        self.flagged += u32::from(flagged);
    }
}

/// Counters of the model stage.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct InferenceCounters {
    pub rows: u64,
    pub batches: u64,
    /// Flows with a verdict other than benign.
    pub flagged: u64,
    /// Classifier verdicts of a kind that does not fit the flow's transport (a UDP flood
    /// named on a TCP connection), left unnamed: a class the model never learnt lands on the
    /// nearest one it knows.
    pub misfits: u64,
    /// Batches a model failed on (their flows got no verdict from it).
    pub errors: u64,
    /// Nanoseconds spent in the models.
    pub nanos: u64,
}

/// The two model slots, a batch of flows waiting, and what the verdicts add up to.
#[derive(Debug)]
pub struct ModelStage {
    pub autoencoder: Option<Model>,
    pub classifier: Option<Model>,
    batch: usize,
    min_flows: u32,
    min_flows_per_kind: BTreeMap<AnomalyKind, u32>,
    window_us: i64,
    pending: Vec<Pending>,
    hits: HashMap<(IpAddr, AnomalyKind), Hits>,
    acc: [Acc; 2],
    counters: InferenceCounters,
    /// Reused buffers.
    input: Vec<f32>,
    rows: Vec<FeatureVector>,
}

impl ModelStage {
    pub fn new(
        autoencoder: Option<Model>,
        classifier: Option<Model>,
        batch: usize,
        min_flows: u32,
        window_us: i64,
    ) -> ModelStage {
        ModelStage {
            autoencoder,
            classifier,
            batch: batch.max(1),
            min_flows: min_flows.max(1),
            min_flows_per_kind: BTreeMap::new(),
            window_us,
            pending: Vec::with_capacity(batch),
            hits: HashMap::new(),
            acc: Default::default(),
            counters: InferenceCounters::default(),
            input: Vec::new(),
            rows: Vec::new(),
        }
    }

    /// The models in the slots: (slot, name, version).
    pub fn loaded(&self) -> Vec<(&'static str, String, String)> {
        [self.autoencoder.as_ref(), self.classifier.as_ref()]
            .into_iter()
            .flatten()
            .map(|m| (m.kind.as_str(), m.name.clone(), m.version.clone()))
            .collect()
    }

    pub fn active(&self) -> bool {
        self.autoencoder.is_some() || self.classifier.is_some()
    }

    pub fn counters(&self) -> &InferenceCounters {
        &self.counters
    }

    /// Put a model in its slot (a reload): the batch waiting runs on the new one.
    pub fn replace(&mut self, m: Model) {
        match m.kind {
            ModelKind::Autoencoder => self.autoencoder = Some(m),
            ModelKind::Classifier => self.classifier = Some(m),
        }
    }

    /// Take the model out of a slot: the batch waiting runs without it.
    pub fn empty(&mut self, kind: ModelKind) {
        match kind {
            ModelKind::Autoencoder => self.autoencoder = None,
            ModelKind::Classifier => self.classifier = None,
        }
    }

    /// A change of a slot.
    pub fn swap(&mut self, s: Swap) {
        match s {
            Swap::Load(m) => self.replace(*m),
            Swap::Empty(kind) => self.empty(kind),
        }
    }

    /// Queue a finished flow; true when the batch is full (call [`flush`](Self::flush)).
    pub fn push(&mut self, f: &FinishedFlow, v: &FeatureVector) -> bool {
        if !self.active() {
            return false;
        }
        self.pending.push(Pending::of(f, v));
        self.pending.len() >= self.batch
    }

    /// Do one job of a [`ModelWorker`], on whichever thread runs the stage: a batch gives its
    /// trips; analysis messages go to `analysis`.
    fn run_job(
        &mut self,
        job: Job,
        analysis: &mut impl FnMut(AnalysisMsg),
    ) -> Option<Vec<ModelTrip>> {
        match job {
            Job::Batch(rows) => self.run_batches(&[rows]).pop(),
            Job::Swap(s) => {
                self.swap(s);
                None
            }
            Job::Analyses(now_us) => {
                self.take_analyses(now_us).into_iter().for_each(analysis);
                None
            }
        }
    }

    /// Flows of one kind one source needs within the host window.
    pub fn set_min_flows(&mut self, kind: AnomalyKind, n: u32) {
        self.min_flows_per_kind.insert(kind, n.max(1));
    }

    /// Run the waiting flows through the models ([`judge`](Self::judge) says what is tripped).
    pub fn flush(&mut self, trip: &mut impl FnMut(IpAddr, Trip, i64, Detail)) {
        if self.pending.is_empty() {
            return;
        }
        let pending = std::mem::take(&mut self.pending);
        let scores = self.score(&[&pending]);
        self.judge(&pending, &scores, 0, trip);
        // The batch's buffer serves the next batch.
        let mut pending = pending;
        pending.clear();
        self.pending = pending;
    }

    /// Batches, in the order they left, run through the models together: the trips of each.
    /// What a batch gives is what it gives alone (a row's outputs are the same whatever rows
    /// run beside it, `run_batches_give_what_each_gives_alone`), at the cost of one run, not
    /// one a batch: a run's cost is mostly its own (the shipped models, criterion: 5 and 14 us
    /// for 1 and 13 rows of the autoencoder, 30 us for 64).
    fn run_batches(&mut self, batches: &[Vec<Pending>]) -> Vec<Vec<ModelTrip>> {
        let refs: Vec<&[Pending]> = batches.iter().map(Vec::as_slice).collect();
        let scores = self.score(&refs);
        let mut first = 0;
        let mut out = Vec::with_capacity(batches.len());
        for b in batches {
            let mut trips = Vec::new();
            self.judge(b, &scores, first, &mut |src, t, at, d| trips.push((src, t, at, d)));
            first += b.len();
            out.push(trips);
        }
        out
    }

    /// The models' outputs for the rows of `batches`, in order, in one run of each model.
    fn score(&mut self, batches: &[&[Pending]]) -> Scores {
        let n = batches.iter().map(|b| b.len()).sum();
        self.rows.clear();
        self.rows
            .extend(batches.iter().flat_map(|b| b.iter()).map(|p| crate::model::transform(&p.v)));
        // The autoencoder's input is kept: the per-feature errors are measured against it.
        let mut ae_in = Vec::new();
        let ae = self.autoencoder.as_ref().and_then(|m| {
            for t in &self.rows {
                m.normalise_transformed(t, &mut ae_in);
            }
            run(m, ae_in.clone(), n, &mut self.acc[0], &mut self.counters)
        });
        let clf = self.classifier.as_ref().and_then(|m| {
            self.input.clear();
            for t in &self.rows {
                m.normalise_transformed(t, &mut self.input);
            }
            run(m, std::mem::take(&mut self.input), n, &mut self.acc[1], &mut self.counters)
        });
        Scores { ae_in, ae, clf }
    }

    /// Judge one batch by its rows' outputs in `scores` (from row `first` on). A source whose
    /// last `min_flows` verdicts of one kind fall within the host window goes to `trip`
    /// (source, trip, packet time, detail), once per such flow.
    fn judge(
        &mut self,
        pending: &[Pending],
        scores: &Scores,
        first: usize,
        trip: &mut impl FnMut(IpAddr, Trip, i64, Detail),
    ) {
        self.counters.batches += 1;
        self.counters.rows += pending.len() as u64;
        let (ae_in, ae, clf) = (&scores.ae_in, scores.ae.as_ref(), scores.clf.as_ref());
        for (i, p) in pending.iter().enumerate() {
            let i = first + i;
            // The autoencoder's per-feature errors, score and reasons.
            // The three features with the largest error, and the total (reasons are made only
            // for a flow that gets a verdict).
            let mut ae_top: Option<([(usize, f32); 3], f32)> = None;
            let mut ae_verdict = None;
            if let (Some(m), Some(out)) = (self.autoencoder.as_ref(), ae) {
                let k = m.outputs;
                let (x, recon) = (&ae_in[i * k..(i + 1) * k], &out[i * k..(i + 1) * k]);
                let mut total = 0.0;
                let mut top = [(0usize, -1.0f32); 3];
                for (j, (a, b)) in x.iter().zip(recon).enumerate() {
                    let e = (a - b) * (a - b);
                    total += e;
                    if e > top[2].1 {
                        top[2] = (j, e);
                        top.sort_by(|a, b| b.1.total_cmp(&a.1));
                    }
                }
                let score = total / k as f32;
                let flagged = score > m.threshold;
                self.acc[0].add(score, flagged);
                if flagged {
                    ae_verdict = Some((score, m.threshold));
                }
                ae_top = Some((top, total));
            }
            let reasons = || -> Vec<(&'static str, f32, f32)> {
                match (self.autoencoder.as_ref(), ae_top) {
                    (Some(m), Some((top, total))) => top
                        .iter()
                        .map(|&(j, e)| {
                            let share = if total > 0.0 { e / total } else { 0.0 };
                            (m.features[j], p.v[m.feature_index(j)], share)
                        })
                        .collect(),
                    _ => self.classifier.as_ref().map(|m| top_z(m, &p.v)).unwrap_or_default(),
                }
            };
            // (kind, detector, confidence, score, threshold)
            let mut verdict: Option<(AnomalyKind, &'static str, f32, f32, f32)> = None;
            if let (Some(m), Some(out)) = (self.classifier.as_ref(), clf) {
                let probs = &out[i * m.outputs..(i + 1) * m.outputs];
                let (best, p_best) = probs
                    .iter()
                    .enumerate()
                    .max_by(|a, b| a.1.total_cmp(b.1))
                    .map_or((0, 0.0), |(j, v)| (j, *v));
                let benign_p =
                    m.class_kinds.iter().position(Option::is_none).map_or(0.0, |j| probs[j]);
                let named = m.class_kinds[best].filter(|_| p_best >= m.min_confidence);
                self.acc[1].add(1.0 - benign_p, named.is_some());
                match named {
                    Some(kind) if !fits(kind, p.protocol) => self.counters.misfits += 1,
                    Some(kind) => {
                        verdict = Some((kind, "classifier", p_best, p_best, m.min_confidence))
                    }
                    None => {}
                }
            }
            if verdict.is_none() {
                if let Some((score, threshold)) = ae_verdict {
                    let confidence = (0.5 + 0.5 * (score / threshold - 1.0)).clamp(0.5, 0.99);
                    verdict = Some((
                        AnomalyKind::AnomalousFlow,
                        "autoencoder",
                        confidence,
                        score,
                        threshold,
                    ));
                }
            }
            let Some((kind, detector, confidence, score, threshold)) = verdict else { continue };
            self.counters.flagged += 1;
            // Who to name: the initiator; for reflection, the victim, the end that receives the
            // larger answers (the reflectors are many; the flow's other end names one).
            let source = match kind {
                AnomalyKind::Reflection if !p.responder_heavier => p.dst,
                _ => p.src,
            };
            let needed = self.min_flows_per_kind.get(&kind).copied().unwrap_or(self.min_flows);
            if self.hits.entry((source, kind)).or_default().add(p.end_us, needed, self.window_us) {
                let by_victim = kind == AnomalyKind::Reflection;
                let t = Trip { kind, counter: detector, value: score, threshold, by_victim };
                let detail = Detail {
                    detector,
                    confidence,
                    score,
                    threshold,
                    reasons: reasons(),
                    dst: p.dst,
                    dst_port: p.dst_port,
                    protocol: p.protocol,
                };
                trip(source, t, p.end_us, detail);
            }
        }
        // Forget sources whose window has passed.
        if self.hits.len() > 4096 {
            let newest = pending.iter().map(|p| p.end_us).max().unwrap_or(0);
            let w = self.window_us;
            self.hits.retain(|_, h| newest - h.newest() <= w);
        }
    }

    /// One analysis message per model that scored rows since the last call (its header is
    /// stamped when queued; `ts` is `now_us`).
    pub fn take_analyses(&mut self, now_us: i64) -> Vec<AnalysisMsg> {
        let mut out = Vec::new();
        for (slot, m) in
            [self.autoencoder.as_ref(), self.classifier.as_ref()].into_iter().enumerate()
        {
            let acc = std::mem::take(&mut self.acc[slot]);
            let Some(m) = m else { continue };
            if acc.rows == 0 {
                continue;
            }
            out.push(AnalysisMsg {
                schema: firmware::proto::SCHEMA_VERSION,
                device: heapless::String::new(),
                seq: 0,
                ts: now_us,
                model: truncated(&m.name),
                model_version: truncated(&m.version),
                rows: acc.rows,
                score_min: acc.min,
                score_mean: (acc.sum / f64::from(acc.rows)) as f32,
                score_max: acc.max,
                threshold: if m.kind == ModelKind::Autoencoder {
                    m.threshold
                } else {
                    m.min_confidence
                },
                flagged: acc.flagged,
                latency_us: acc.latency_us,
            });
        }
        out
    }
}

/// The models' outputs for a run's rows, and the autoencoder's input (its errors are measured
/// against it): `None` for a model not loaded, or whose run failed (counted).
struct Scores {
    ae_in: Vec<f32>,
    ae: Option<Vec<f32>>,
    clf: Option<Vec<f32>>,
}

/// Whether a kind can be a flow of this IP protocol: the floods and reflection are of one
/// transport each; the other kinds are judged by what the flow carries.
fn fits(kind: AnomalyKind, protocol: u8) -> bool {
    match kind {
        AnomalyKind::SynFlood => protocol == 6,
        AnomalyKind::UdpFlood | AnomalyKind::Reflection => protocol == 17,
        AnomalyKind::IcmpFlood => matches!(protocol, 1 | 58),
        _ => true,
    }
}

fn truncated<const N: usize>(s: &str) -> heapless::String<N> {
    let mut out = heapless::String::new();
    for c in s.chars() {
        if out.push(c).is_err() {
            break;
        }
    }
    out
}

/// Without an autoencoder, the classifier's reasons: the three features furthest from the
/// training mean, in standard deviations.
fn top_z(m: &Model, v: &FeatureVector) -> Vec<(&'static str, f32, f32)> {
    let mut z = Vec::with_capacity(m.features.len());
    m.normalise(v, &mut z);
    let mut order: Vec<usize> = (0..z.len()).collect();
    order.sort_by(|a, b| z[*b].abs().total_cmp(&z[*a].abs()));
    order.iter().take(3).map(|&j| (m.features[j], v[m.feature_index(j)], z[j].abs())).collect()
}

fn run(
    m: &Model,
    input: Vec<f32>,
    rows: usize,
    acc: &mut Acc,
    c: &mut InferenceCounters,
) -> Option<Vec<f32>> {
    let t = std::time::Instant::now();
    let result = m.run_normalised(input, rows);
    let nanos = t.elapsed().as_nanos() as u64;
    c.nanos += nanos;
    acc.latency_us += nanos / 1000;
    match result {
        Ok(out) => Some(out),
        Err(e) => {
            c.errors += 1;
            log_error(&e);
            None
        }
    }
}

fn log_error(e: &ModelError) {
    use std::sync::atomic::{AtomicI64, Ordering};
    static LAST: AtomicI64 = AtomicI64::new(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    // At most once a minute: a model that fails fails on every batch.
    if now - LAST.swap(now, Ordering::Relaxed) >= 60 {
        tracing::error!(error = %e, "model inference failed");
    }
}

impl ModelStage {
    /// The stage a configuration asks for, with each model file it names loaded and checked;
    /// the files that were refused come back beside it (the caller decides: `analyze` stops,
    /// the daemon logs and captures on).
    pub fn from_config(config: &crate::config::Config) -> (ModelStage, Vec<ModelError>) {
        let m = &config.detect.models;
        let mut stage = ModelStage::new(
            None,
            None,
            m.batch as usize,
            m.min_flows,
            i64::from(config.flows.host_window_s) * 1_000_000,
        );
        for (kind, n) in &m.min_flows_per_kind {
            stage.set_min_flows(*kind, *n);
        }
        let mut refused = Vec::new();
        for (kind, path) in
            [(ModelKind::Autoencoder, &m.autoencoder), (ModelKind::Classifier, &m.classifier)]
        {
            if path.is_empty() {
                continue;
            }
            match Model::load(std::path::Path::new(path), kind) {
                Ok(model) => stage.replace(model),
                Err(e) => refused.push(e),
            }
        }
        (stage, refused)
    }
}

/// A change of a model slot while running: a model loaded again or sent by the hub, or a slot
/// emptied.
#[derive(Debug)]
pub enum Swap {
    Load(Box<Model>),
    Empty(ModelKind),
}

/// A model trip: the source, the trip, the packet time of the flow, what the model saw.
pub type ModelTrip = (IpAddr, Trip, i64, Detail);

/// What the pipeline asks of the model thread, in order.
#[derive(Debug)]
enum Job {
    Batch(Vec<Pending>),
    Swap(Swap),
    /// The analysis messages of the interval ending at this packet time.
    Analyses(i64),
}

/// The model stage beside the pipeline: a batch of finished flows leaves, the pipeline goes on
/// with the next packets, and the batch's trips come back in order. They are taken once due, a
/// flush interval of packet time after the batch left (the same whatever the machine's speed:
/// `analyze` gives the same anomalies every run), or live, as soon as they are ready.
#[derive(Debug)]
pub struct ModelWorker {
    /// The packet time each batch in flight left at, oldest first.
    in_flight: VecDeque<i64>,
    pending: Vec<Pending>,
    batch: usize,
    active: bool,
    loaded: Vec<(&'static str, String, String)>,
    runner: Runner,
}

/// Where the stage runs.
#[derive(Debug)]
enum Runner {
    /// On a thread of its own (live): jobs in, each batch's trips back; the analysis messages
    /// go from that thread to the store.
    Thread {
        jobs: Option<crossbeam_channel::Sender<Job>>,
        done: crossbeam_channel::Receiver<Vec<ModelTrip>>,
        counters: std::sync::Arc<std::sync::Mutex<InferenceCounters>>,
        thread: Option<std::thread::JoinHandle<()>>,
    },
    /// Offline: a helper thread runs the batches as they leave, and the pipeline, when a
    /// batch's trips are due and the helper has not run it, runs it itself rather than wait
    /// for the helper to be scheduled. Packet time runs far ahead of the clock there, so
    /// nearly every batch is due soon after it left: waiting on a thread (`Thread`) cost more
    /// than it saved on 2 cores (`analyze --models`, merged public captures: 0.36 s on the
    /// pipeline's thread alone, 0.48 s waiting on a thread).
    Shared {
        shared: std::sync::Arc<Shared>,
        /// Wakes the helper (a token: a full channel means it is awake already).
        wake: Option<crossbeam_channel::Sender<()>>,
        thread: Option<std::thread::JoinHandle<()>>,
        /// Batches whose trips were taken.
        taken: u64,
    },
}

/// The stage both the pipeline and the helper thread run (offline): whoever holds `stage`
/// runs the queued jobs, strictly in order, so the batches' verdicts and trips are what one
/// thread running them in order gives.
struct Shared {
    jobs: Mutex<Queue>,
    stage: Mutex<SharedStage>,
    /// Each batch's trips, in the order the batches left.
    done: Mutex<VecDeque<Vec<ModelTrip>>>,
}

/// Jobs not yet run, and the rows of their batches.
#[derive(Default)]
struct Queue {
    jobs: VecDeque<Job>,
    rows: usize,
}

/// Rows queued before the helper thread is woken: waking it for every small batch (live-like
/// traffic ends a dozen flows a second) cost more in hand-offs than running them here.
const WAKE_ROWS: usize = 64;

/// Rows of queued batches the shared stage runs through the models at once: a model's fixed
/// batch ([`crate::model::FIXED_BATCH`]), the size its cost a row is lowest at.
const RUN_ROWS: usize = crate::model::FIXED_BATCH;

struct SharedStage {
    stage: ModelStage,
    analysis: Box<dyn FnMut(AnalysisMsg) + Send>,
    /// Batches run.
    batches: u64,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared").finish_non_exhaustive()
    }
}

impl Runner {
    /// Queue a job for the shared stage, and wake its helper once [`WAKE_ROWS`] rows wait.
    fn queue(&self, job: Job) {
        if let Runner::Shared { shared, wake, .. } = self {
            let rows = {
                let mut q = lock(&shared.jobs);
                if let Job::Batch(rows) = &job {
                    q.rows += rows.len();
                }
                q.jobs.push_back(job);
                q.rows
            };
            if let (Some(w), true) = (wake, rows >= WAKE_ROWS) {
                let _ = w.try_send(());
            }
        }
    }
}

/// A lock, whether or not a thread panicked holding it (the edge aborts on a panic).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Shared {
    /// Run the queued jobs in order, until `until` batches have run in all (or every job).
    /// Batches queued one after another run through the models together, up to [`RUN_ROWS`]
    /// rows (or the first batch, if larger), each judged as it would be alone.
    fn run_queued(&self, st: &mut SharedStage, until: u64) {
        while st.batches < until {
            // The next batch with those queued right behind it, or the next other job.
            let next = {
                let mut q = lock(&self.jobs);
                match q.jobs.pop_front() {
                    None => return,
                    Some(Job::Batch(first)) => {
                        let mut rows = first.len();
                        let mut batches = vec![first];
                        while matches!(q.jobs.front(),
                            Some(Job::Batch(b)) if rows + b.len() <= RUN_ROWS)
                        {
                            if let Some(Job::Batch(b)) = q.jobs.pop_front() {
                                rows += b.len();
                                batches.push(b);
                            }
                        }
                        q.rows -= rows;
                        Ok(batches)
                    }
                    Some(job) => Err(job),
                }
            };
            match next {
                Ok(batches) => {
                    let trips = st.stage.run_batches(&batches);
                    st.batches += trips.len() as u64;
                    lock(&self.done).extend(trips);
                }
                // A swap or the analyses: no trips.
                Err(job) => {
                    st.stage.run_job(job, &mut st.analysis);
                }
            }
        }
    }
}

impl ModelWorker {
    fn new(stage: &ModelStage) -> impl FnOnce(Runner) -> ModelWorker {
        let (batch, active, loaded) = (stage.batch, stage.active(), stage.loaded());
        move |runner| ModelWorker {
            in_flight: VecDeque::new(),
            pending: Vec::with_capacity(batch),
            batch,
            active,
            loaded,
            runner,
        }
    }

    /// Run `stage` offline: on a helper thread as batches leave, and on the caller's thread
    /// when a batch is due before the helper ran it, with the same timing of trips as on a
    /// thread of its own (a batch's trips are taken a flush interval after it left); its
    /// analysis messages go to `analysis` (from either thread, in order).
    pub fn shared(
        stage: ModelStage,
        analysis: impl FnMut(AnalysisMsg) + Send + 'static,
    ) -> std::io::Result<ModelWorker> {
        let new = ModelWorker::new(&stage);
        let shared = std::sync::Arc::new(Shared {
            jobs: Mutex::new(Queue::default()),
            stage: Mutex::new(SharedStage { stage, analysis: Box::new(analysis), batches: 0 }),
            done: Mutex::new(VecDeque::new()),
        });
        let (wake, woken) = crossbeam_channel::bounded::<()>(1);
        let helper = shared.clone();
        let thread = std::thread::Builder::new().name("models".into()).spawn(move || {
            // Until the pipeline is done with the stage, then what is left in the queue.
            while woken.recv().is_ok() {
                helper.run_queued(&mut lock(&helper.stage), u64::MAX);
            }
            helper.run_queued(&mut lock(&helper.stage), u64::MAX);
        })?;
        Ok(new(Runner::Shared { shared, wake: Some(wake), thread: Some(thread), taken: 0 }))
    }

    /// Start the thread that runs `stage`; its analysis messages go to `analysis`.
    pub fn spawn(
        mut stage: ModelStage,
        mut analysis: impl FnMut(AnalysisMsg) + Send + 'static,
    ) -> std::io::Result<ModelWorker> {
        let new = ModelWorker::new(&stage);
        let (jobs, rx) = crossbeam_channel::unbounded::<Job>();
        let (done_tx, done) = crossbeam_channel::unbounded();
        let counters = std::sync::Arc::new(std::sync::Mutex::new(*stage.counters()));
        let shared = counters.clone();
        let thread = std::thread::Builder::new().name("models".into()).spawn(move || {
            for job in rx {
                let Some(trips) = stage.run_job(job, &mut analysis) else { continue };
                if let Ok(mut c) = shared.lock() {
                    *c = *stage.counters();
                }
                if done_tx.send(trips).is_err() {
                    return;
                }
            }
        })?;
        Ok(new(Runner::Thread { jobs: Some(jobs), done, counters, thread: Some(thread) }))
    }

    pub fn active(&self) -> bool {
        self.active
    }

    /// The models in the slots: (slot, name, version).
    pub fn loaded(&self) -> Vec<(&'static str, String, String)> {
        self.loaded.clone()
    }

    /// The counters as of the last batch the models ran.
    pub fn counters(&self) -> InferenceCounters {
        match &self.runner {
            Runner::Shared { shared, .. } => *lock(&shared.stage).stage.counters(),
            Runner::Thread { counters, .. } => counters.lock().map(|c| *c).unwrap_or_default(),
        }
    }

    /// Queue a finished flow; true when the batch is full (call [`send`](Self::send)).
    pub fn push(&mut self, f: &FinishedFlow, v: &FeatureVector) -> bool {
        if !self.active {
            return false;
        }
        self.pending.push(Pending::of(f, v));
        self.pending.len() >= self.batch
    }

    /// The batch waiting leaves for the models, at packet time `now_us`.
    pub fn send(&mut self, now_us: i64) {
        if self.pending.is_empty() {
            return;
        }
        let rows = std::mem::replace(&mut self.pending, Vec::with_capacity(self.batch));
        let sent = match &mut self.runner {
            Runner::Shared { .. } => {
                self.runner.queue(Job::Batch(rows));
                true
            }
            Runner::Thread { jobs, .. } => {
                jobs.as_ref().is_some_and(|j| j.send(Job::Batch(rows)).is_ok())
            }
        };
        if sent {
            self.in_flight.push_back(now_us);
        }
    }

    /// Put a model in its slot, or empty one: the batches already sent run on what they were
    /// sent to.
    pub fn swap(&mut self, s: Swap) {
        let kind = match &s {
            Swap::Load(m) => m.kind,
            Swap::Empty(kind) => *kind,
        };
        self.loaded.retain(|(slot, _, _)| *slot != kind.as_str());
        if let Swap::Load(m) = &s {
            self.loaded.push((m.kind.as_str(), m.name.clone(), m.version.clone()));
        }
        self.active = !self.loaded.is_empty();
        match &mut self.runner {
            Runner::Shared { .. } => self.runner.queue(Job::Swap(s)),
            Runner::Thread { jobs, .. } => {
                if let Some(j) = jobs {
                    let _ = j.send(Job::Swap(s));
                }
            }
        }
    }

    /// Put a model in its slot.
    pub fn replace(&mut self, m: Model) {
        self.swap(Swap::Load(Box::new(m)))
    }

    /// Ask for the analysis messages of the interval ending at `now_us` (they go to the store
    /// after the batches sent before).
    pub fn analyses(&mut self, now_us: i64) {
        match &mut self.runner {
            Runner::Shared { .. } => self.runner.queue(Job::Analyses(now_us)),
            Runner::Thread { jobs, .. } => {
                if let Some(j) = jobs {
                    let _ = j.send(Job::Analyses(now_us));
                }
            }
        }
    }

    /// The trips of the batches that left at or before `due_us` (waiting for them), and with
    /// `ready`, of those after that already run, in order.
    pub fn take(&mut self, due_us: i64, ready: bool) -> Vec<ModelTrip> {
        let mut out = Vec::new();
        while let Some(&left) = self.in_flight.front() {
            let trips = match &mut self.runner {
                Runner::Shared { shared, taken, .. } => {
                    let mut trips = lock(&shared.done).pop_front();
                    if trips.is_none() && left <= due_us {
                        // Due and not run yet: run it here (after the helper's batch in hand).
                        shared.run_queued(&mut lock(&shared.stage), *taken + 1);
                        trips = lock(&shared.done).pop_front();
                    }
                    match trips {
                        Some(t) if left <= due_us || ready => {
                            *taken += 1;
                            Some(t)
                        }
                        Some(t) => {
                            // Run, not due yet: kept for its time.
                            lock(&shared.done).push_front(t);
                            break;
                        }
                        None => break,
                    }
                }
                Runner::Thread { done, .. } if left <= due_us => done.recv().ok(),
                Runner::Thread { done, .. } if ready => match done.try_recv() {
                    Ok(t) => Some(t),
                    Err(_) => break,
                },
                Runner::Thread { .. } => break,
            };
            self.in_flight.pop_front();
            out.extend(trips.into_iter().flatten());
        }
        out
    }
}

impl Drop for ModelWorker {
    fn drop(&mut self) {
        // The thread ends when its queue closes, after the jobs in it (the last analyses).
        match &mut self.runner {
            Runner::Thread { jobs, thread, .. } => {
                *jobs = None;
                if let Some(t) = thread.take() {
                    let _ = t.join();
                }
            }
            Runner::Shared { wake, thread, .. } => {
                *wake = None;
                if let Some(t) = thread.take() {
                    let _ = t.join();
                }
            }
        }
    }
}

/// Model reloads, for `/metrics`.
#[derive(Debug, Default)]
pub struct ReloadCounters {
    pub loaded: std::sync::atomic::AtomicU64,
    pub refused: std::sync::atomic::AtomicU64,
}

/// The model files in force, by slot (autoencoder, classifier; empty: none): the hub's
/// configuration changes them while running.
pub type ModelPaths = std::sync::Arc<std::sync::Mutex<[String; 2]>>;

/// Watch the model files: a file whose size or modification time changed, and then stayed the
/// same for one more check (a copy finished), is loaded; a model that loads goes to `tx`, one
/// that does not is refused with an error in the log (and counted), and the running one stays.
/// A slot whose path changed (the hub's configuration, which loads its model itself) is watched
/// at its new path from then on. Returns when `stop` is dropped or sends.
pub fn watch(
    every: std::time::Duration,
    paths: ModelPaths,
    tx: crossbeam_channel::Sender<Swap>,
    stop: crossbeam_channel::Receiver<()>,
    counters: std::sync::Arc<ReloadCounters>,
) {
    use std::sync::atomic::Ordering;
    type Stamp = Option<(u64, std::time::SystemTime)>;
    let stamp = |p: &str| -> Stamp {
        if p.is_empty() {
            return None;
        }
        let m = std::fs::metadata(p).ok()?;
        Some((m.len(), m.modified().ok()?))
    };
    let kinds = [ModelKind::Autoencoder, ModelKind::Classifier];
    let current = || paths.lock().map(|p| p.clone()).unwrap_or_default();
    let mut watched = current();
    // (what is running, what the last check saw)
    let mut seen: Vec<(Stamp, Stamp)> = watched.iter().map(|p| (stamp(p), stamp(p))).collect();
    loop {
        match stop.recv_timeout(every) {
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
            _ => return,
        }
        let now_paths = current();
        for (i, kind) in kinds.iter().enumerate() {
            let path = &now_paths[i];
            if *path != watched[i] {
                watched[i] = path.clone();
                seen[i] = (stamp(path), stamp(path));
                continue;
            }
            let (running, last) = &mut seen[i];
            let now = stamp(path);
            let settled = now == *last;
            *last = now;
            if now.is_none() || now == *running || !settled {
                continue;
            }
            *running = now;
            match Model::load(std::path::Path::new(path), *kind) {
                Ok(m) => {
                    counters.loaded.fetch_add(1, Ordering::Relaxed);
                    if tx.send(Swap::Load(Box::new(m))).is_err() {
                        return;
                    }
                }
                Err(e) => {
                    counters.refused.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(error = %e, "model refused; the one running keeps running");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::{fits, Hits, ModelStage, ModelWorker, Pending};
    use crate::model::{Model, ModelKind};
    use firmware::proto::{AnalysisMsg, AnomalyKind};
    use std::sync::{Arc, Mutex};

    /// The shipped classifier fixture's rows as pending flows, each from a source of its own.
    fn fixture_rows() -> Vec<Pending> {
        #[derive(serde::Deserialize)]
        struct Fixture {
            features: Vec<String>,
            raw: Vec<Vec<f64>>,
        }
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/shipped");
        let text = std::fs::read_to_string(dir.join("fixtures/classifier.json")).unwrap();
        let f: Fixture = serde_json::from_str(&text).unwrap();
        let at = |name: &str| firmware::features::NAMES.iter().position(|n| *n == name);
        f.raw
            .iter()
            .enumerate()
            .map(|(i, row)| {
                let mut v = [0.0f32; firmware::features::N_FEATURES];
                for (name, x) in f.features.iter().zip(row) {
                    if let Some(j) = at(name) {
                        v[j] = *x as f32;
                    }
                }
                let protocol = at("protocol").map_or(6, |j| v[j] as u8);
                Pending {
                    v,
                    src: [10, 0, (i / 250) as u8, (i % 250) as u8 + 1].into(),
                    dst: [192, 168, 0, 1].into(),
                    dst_port: 80,
                    protocol,
                    responder_heavier: false,
                    end_us: i as i64,
                }
            })
            .collect()
    }

    fn stage() -> ModelStage {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/shipped");
        let ae = Model::load(&dir.join("autoencoder.onnx"), ModelKind::Autoencoder).unwrap();
        let clf = Model::load(&dir.join("classifier.onnx"), ModelKind::Classifier).unwrap();
        ModelStage::new(Some(ae), Some(clf), 64, 1, 10_000_000)
    }

    /// The stage on a thread of its own (live) or shared with a helper (offline), and the
    /// analysis messages it gives.
    fn worker(threaded: bool) -> (ModelWorker, Arc<Mutex<Vec<AnalysisMsg>>>) {
        let analyses: Arc<Mutex<Vec<AnalysisMsg>>> = Arc::default();
        let sink = analyses.clone();
        let analysis = move |a| sink.lock().unwrap().push(a);
        let w = if threaded {
            ModelWorker::spawn(stage(), analysis).unwrap()
        } else {
            ModelWorker::shared(stage(), analysis).unwrap()
        };
        (w, analyses)
    }

    #[test]
    fn the_model_thread_gives_what_the_shared_stage_gives_and_when() {
        let rows = fixture_rows();
        assert!(rows.len() >= 8, "the fixture has rows");
        let mut results = Vec::new();
        for threaded in [false, true] {
            let (mut w, analyses) = worker(threaded);
            assert!(w.active());
            w.pending = rows.clone();
            w.send(1_000_000);
            // Not due before a flush interval has passed (and, offline, not taken sooner).
            assert!(w.take(999_999, false).is_empty(), "threaded {threaded}");
            let trips: Vec<(std::net::IpAddr, AnomalyKind, i64)> =
                w.take(1_000_000, false).into_iter().map(|(s, t, at, _)| (s, t.kind, at)).collect();
            assert!(w.take(i64::MAX, true).is_empty(), "each batch's trips once");
            w.analyses(2_000_000);
            let c = w.counters();
            drop(w);
            let analyses = analyses.lock().unwrap().clone();
            assert_eq!(analyses.len(), 2, "one analysis per model");
            assert_eq!((c.rows, c.batches), (rows.len() as u64, 1));
            results.push((trips, analyses.iter().map(|a| (a.rows, a.flagged)).collect::<Vec<_>>()));
        }
        assert!(!results[0].0.is_empty(), "the fixture's attack rows trip");
        assert_eq!(results[0], results[1], "shared and on a thread alike");
    }

    #[test]
    fn the_shared_stage_gives_what_the_model_thread_gives_batch_by_batch() {
        // Many small batches, each taken as soon as it is due: offline, the pipeline runs a
        // due batch itself when the helper has not, and the trips must not depend on who ran it.
        let rows = fixture_rows();
        let mut results = Vec::new();
        for threaded in [false, true] {
            let (mut w, analyses) = worker(threaded);
            let mut trips = Vec::new();
            for (i, chunk) in rows.chunks(3).enumerate() {
                let now = (i as i64 + 1) * 1_000_000;
                w.pending = chunk.to_vec();
                w.send(now);
                for (s, t, at, _) in w.take(now - 1_000_000, false) {
                    trips.push((i, s, t.kind, at));
                }
                if i % 4 == 3 {
                    w.analyses(now);
                }
            }
            trips.extend(
                w.take(i64::MAX, false).into_iter().map(|(s, t, at, _)| (99, s, t.kind, at)),
            );
            w.analyses(i64::MAX);
            let c = w.counters();
            drop(w);
            let analyses = analyses.lock().unwrap().clone();
            assert_eq!(c.rows, rows.len() as u64);
            results.push((
                trips,
                analyses.iter().map(|a| (a.ts, a.rows, a.flagged)).collect::<Vec<_>>(),
            ));
        }
        assert!(!results[0].0.is_empty(), "the fixture's attack rows trip");
        assert_eq!(results[0], results[1], "shared and on a thread alike, batch by batch");
    }

    #[test]
    fn run_batches_give_what_each_gives_alone() {
        // Batches of 1 to 13 rows run together (as the shared stage runs those queued one
        // after another) and one at a time: the same trips, details and counts, bit for bit.
        let rows = fixture_rows();
        let mut batches = Vec::new();
        let mut rest = rows.as_slice();
        for n in [1, 13, 3, 7, 1, 2, 11].into_iter().cycle() {
            if rest.is_empty() {
                break;
            }
            let (b, r) = rest.split_at(n.min(rest.len()));
            batches.push(b.to_vec());
            rest = r;
        }
        assert!(batches.len() >= 3, "several batches");
        let (mut together, mut alone) = (stage(), stage());
        let all = together.run_batches(&batches);
        let each: Vec<_> =
            batches.iter().flat_map(|b| alone.run_batches(std::slice::from_ref(b))).collect();
        assert!(all.iter().any(|t| !t.is_empty()), "the fixture's attack rows trip");
        assert_eq!(all, each);
        let (a, b) = (together.counters(), alone.counters());
        assert_eq!((a.rows, a.batches, a.flagged), (b.rows, b.batches, b.flagged));
        assert_eq!(a.batches, batches.len() as u64, "each batch counted");
        let analyses = |s: &mut ModelStage| {
            s.take_analyses(1)
                .iter()
                .map(|m| {
                    (
                        m.rows,
                        m.flagged,
                        m.score_min.to_bits(),
                        m.score_max.to_bits(),
                        m.score_mean.to_bits(),
                    )
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(analyses(&mut together), analyses(&mut alone));
    }

    #[test]
    fn a_flood_verdict_fits_only_its_transport() {
        assert!(!fits(AnomalyKind::UdpFlood, 6), "a UDP flood on a TCP connection");
        assert!(!fits(AnomalyKind::SynFlood, 17));
        assert!(!fits(AnomalyKind::IcmpFlood, 6));
        assert!(!fits(AnomalyKind::Reflection, 1));
        assert!(fits(AnomalyKind::UdpFlood, 17) && fits(AnomalyKind::SynFlood, 6));
        assert!(fits(AnomalyKind::IcmpFlood, 1) && fits(AnomalyKind::IcmpFlood, 58));
        assert!(fits(AnomalyKind::PortScan, 17) && fits(AnomalyKind::PortScan, 6));
    }

    const S: i64 = 1_000_000;

    #[test]
    fn a_burst_counts_whole_wherever_it_falls() {
        // Three verdicts 9 s apart, then a burst of six 11 s after the first: a window that
        // started at the first verdict would have reset and missed the burst's start.
        let mut h = Hits::default();
        let mut tripped = Vec::new();
        for t in [0, 9 * S, 18 * S, 20 * S, 20 * S + 1, 20 * S + 2, 20 * S + 3, 20 * S + 4] {
            tripped.push(h.add(t, 6, 10 * S));
        }
        assert_eq!(tripped, [false, false, false, false, false, false, false, true]);
    }

    #[test]
    fn verdicts_spread_wider_than_the_window_never_trip() {
        let mut h = Hits::default();
        for i in 0..100 {
            assert!(!h.add(i * 4 * S, 3, 7 * S), "verdict {i}");
        }
        assert!(h.times.len() <= 3, "only the last few times are kept");
    }

    #[test]
    fn flows_that_end_out_of_order_are_measured_by_their_span() {
        let mut h = Hits::default();
        assert!(!h.add(10 * S, 3, 5 * S));
        assert!(!h.add(2 * S, 3, 5 * S));
        // 2 s to 10 s is wider than 5 s, whatever order they came in.
        assert!(!h.add(9 * S, 3, 5 * S));
        assert!(h.add(8 * S, 3, 5 * S), "10, 9 and 8 s fall within 5 s");
        let mut one = Hits::default();
        assert!(one.add(0, 1, 0), "a count of one trips on its first verdict");
    }
}
