//! The edge's SQLite store: what the original design keeps (Packet, TrafficFeature, Analysis,
//! Anomaly) plus traffic statistics.
//!
//! One connection, owned by one writer thread ([`spawn_writer`]); rows arrive over a bounded
//! channel and are written in batched transactions (never one fsync per flow). The database runs
//! in WAL mode with `synchronous = NORMAL`: a killed process loses no committed transaction.
//! Schema changes are versioned migrations (`migrations/*.sql`). Retention by age and by size
//! deletes the oldest rows first, and every deleted row is counted by table and reason.
//!
//! A flow's features (`traffic_features.features`) are stored as [`encode_features`] writes
//! them: a map of the values that are not zero, then those values (the migration's comment,
//! "little-endian f32, one per feature", is how the first databases stored them, and those
//! still read).
//!
//! Every `LIMIT ?N` of a cached statement (here and in `sync.rs`) is written `LIMIT ?N + 0`:
//! SQLite reads a bare parameter's value when it plans a LIMIT and marks the statement to be
//! compiled again whenever that parameter is bound, which rusqlite does at every execution (the
//! evidence marking compiled its two statements for every episode: a sixth of the store
//! thread's time in `analyze --models --db`). An expression is not read; the plan is the same.

use crate::config::StoreConfig;
use base64::Engine as _;
use firmware::engine::FinishedFlow;
use firmware::features::{FEATURE_SET_VERSION, N_FEATURES};
use firmware::proto::{MetricsMsg, StatsMsg, Stream, FLOW_BATCH_MAX};
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use rusqlite_migration::{Migrations, M};
use std::net::IpAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const MIGRATIONS: &[M<'static>] = &[
    M::up(include_str!("../migrations/001_initial.sql")),
    M::up(include_str!("../migrations/002_flows_by_rowid.sql")),
    M::up(include_str!("../migrations/003_outbox.sql")),
    M::up(include_str!("../migrations/004_evidence_by_host.sql")),
    M::up(include_str!("../migrations/005_sync_will.sql")),
    M::up(include_str!("../migrations/006_evidence_parts.sql")),
];

/// The tables, for counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    Packets,
    TrafficFeatures,
    Analyses,
    Anomalies,
    TrafficStats,
}

impl Table {
    pub const ALL: [Table; 5] = [
        Table::Packets,
        Table::TrafficFeatures,
        Table::Analyses,
        Table::Anomalies,
        Table::TrafficStats,
    ];
    pub const fn name(self) -> &'static str {
        match self {
            Table::Packets => "packets",
            Table::TrafficFeatures => "traffic_features",
            Table::Analyses => "analyses",
            Table::Anomalies => "anomalies",
            Table::TrafficStats => "traffic_stats",
        }
    }
    /// The column that orders the table's rows by time.
    const fn time_column(self) -> &'static str {
        match self {
            Table::Packets => "ts_us",
            Table::TrafficFeatures => "end_us",
            Table::Analyses => "ts_us",
            Table::Anomalies => "last_seen_us",
            Table::TrafficStats => "interval_start_us",
        }
    }
}

/// Counters shared with the metrics endpoint.
#[derive(Debug, Default)]
pub struct StoreCounters {
    /// Rows written, by table (order of [`Table::ALL`]).
    pub written: [AtomicU64; 5],
    /// Rows deleted because they were older than `max_age_hours`, by table.
    pub evicted_age: [AtomicU64; 5],
    /// Rows deleted to keep the database under `max_size_mb`, by table.
    pub evicted_size: [AtomicU64; 5],
    /// Ring packets replaced by newer ones (the ring keeps the last N per interface).
    pub ring_rotated: AtomicU64,
    /// Transactions committed.
    pub commits: AtomicU64,
    /// Batches that failed to write; their rows are lost and counted in `rows_lost`.
    pub write_errors: AtomicU64,
    pub rows_lost: AtomicU64,
    /// Batches tried a second time because the database was busy or locked.
    pub write_retries: AtomicU64,
    /// Rows dropped because the writer's queue was full.
    pub queue_drops: AtomicU64,
    /// Bytes the database's live pages take.
    pub size_bytes: AtomicU64,
    /// Messages queued for the hub, by stream (order of [`Stream::ALL`]).
    pub outbox_queued: [AtomicU64; Stream::COUNT],
    /// Queued messages dropped before the broker took them because the outbox was over
    /// `sync.outbox_max_messages`, by stream.
    pub outbox_dropped: [AtomicU64; Stream::COUNT],
    /// Messages in the outbox.
    pub outbox_depth: AtomicU64,
    /// Evidence packets not sent to the hub because their episode had sent
    /// `sync.evidence_max_mb` already (they stay in the store for `export-pcap`).
    pub evidence_unsent: AtomicU64,
    /// Packets of an episode not kept as its evidence because it had
    /// `store.evidence_max_packets` already (they stay ring packets, rotated as those are).
    pub evidence_over_budget: AtomicU64,
}

/// Index of a stream in [`Stream::ALL`], for per-stream counters.
pub fn stream_index(s: Stream) -> usize {
    Stream::ALL.iter().position(|x| *x == s).unwrap_or(0)
}

impl StoreCounters {
    pub fn evicted_total(&self) -> u64 {
        self.evicted_age
            .iter()
            .chain(self.evicted_size.iter())
            .map(|c| c.load(Ordering::Relaxed))
            .sum()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: cannot open the database: {source}")]
    Open { path: String, source: rusqlite::Error },
    #[error("{path}: cannot migrate the database schema: {source}")]
    Migrate { path: String, source: rusqlite_migration::Error },
    #[error("database error: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("anomaly {0} does not exist")]
    NoAnomaly(i64),
    #[error("anomaly {0} has no evidence packets")]
    NoEvidence(i64),
    #[error("cannot write the pcap file: {0}")]
    Pcap(String),
}

/// Whether an SQLite error is the database busy or locked (another connection holds the write
/// lock past the busy timeout): worth one more try.
fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
    )
}

/// Put an entry of a map back as it was (`None`: it was not there).
fn put_back(map: &mut std::collections::HashMap<i64, u64>, k: i64, v: Option<u64>) {
    match v {
        Some(v) => {
            map.insert(k, v);
        }
        None => {
            map.remove(&k);
        }
    }
}

/// A finished flow as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct FlowRow {
    pub start_us: i64,
    pub end_us: i64,
    pub src_ip: IpAddr,
    pub src_port: u16,
    pub dst_ip: IpAddr,
    pub dst_port: u16,
    pub protocol: u8,
    pub vlan: u16,
    pub end_reason: &'static str,
    pub packets: u32,
    pub bytes: u64,
    pub features: [f32; N_FEATURES],
}

impl From<&FinishedFlow> for FlowRow {
    fn from(f: &FinishedFlow) -> Self {
        let flow = &f.record.flow;
        FlowRow {
            start_us: flow.start.total_micros(),
            end_us: flow.last().total_micros(),
            src_ip: f.record.src(),
            src_port: f.record.src_port(),
            dst_ip: f.record.dst(),
            dst_port: f.record.dst_port(),
            protocol: flow.protocol,
            vlan: f.record.vlan(),
            end_reason: f.record.reason.name(),
            packets: flow.packets(),
            bytes: flow.fwd.wire_bytes + flow.bwd.wire_bytes,
            features: f.features(),
        }
    }
}

/// One captured packet kept in the ring (or as evidence).
#[derive(Debug, Clone, PartialEq)]
pub struct PacketRow {
    pub ts_us: i64,
    pub interface: Arc<str>,
    pub link_type: i32,
    pub wire_len: u32,
    pub src: Option<IpAddr>,
    pub dst: Option<IpAddr>,
    pub data: Vec<u8>,
}

/// What the writer is sent.
#[derive(Debug, Clone, PartialEq)]
pub enum Row {
    /// Finished flows, in a chunk (a row each woke the writer for each flow).
    Flows(Vec<FlowRow>),
    Packet(Box<PacketRow>),
    /// Ring packets written together (a write of the ring in memory, up to
    /// `evidence_ring_packets` of them): one place in the writer's queue, not one each, so a
    /// ring write never fills the queue that anomalies and flows wait in.
    Packets(Vec<PacketRow>),
    /// One statistics interval, as the contract's message (its header is stamped when queued).
    Stats(Box<StatsMsg>),
    /// An anomaly episode, new or updated (`id` is the episode's).
    Anomaly(Box<firmware::proto::AnomalyMsg>),
    /// Evidence of `anomaly`: `packets` (to or from `host`, taken from the ring in memory) are
    /// stored as its evidence, and the ring packets already stored to or from `host` since
    /// `since_us` are marked as it (evidence outlives the ring; retention takes it last).
    Evidence {
        anomaly: i64,
        host: IpAddr,
        since_us: i64,
        packets: Vec<PacketRow>,
    },
    /// Host and pipeline metrics for the hub (outbox only; `device` and `seq` are set when it
    /// is queued).
    Metrics(Box<MetricsMsg>),
    /// One model's detection runs over a statistics interval (`ts` is the interval's end).
    Analysis(Box<firmware::proto::AnalysisMsg>),
    /// Retention changed while running (a reload, or the hub's configuration): from this row
    /// on, the store keeps to these.
    Limits {
        max_size_mb: u64,
        max_age_hours: u64,
        evidence_max_packets: u64,
    },
    /// The answer to a configuration the hub sent (outbox only; `device` and `seq` are set
    /// when it is queued).
    ConfigApplied(Box<firmware::proto::ConfigAppliedMsg>),
    /// The answer to a command the hub sent (outbox only).
    CommandResult(Box<firmware::proto::CommandResultMsg>),
}

impl Row {
    /// The ring packets a `Packet` or `Packets` row carries (none for the others).
    pub fn ring_packets(&self) -> &[PacketRow] {
        match self {
            Row::Packet(p) => std::slice::from_ref(&**p),
            Row::Packets(ps) => ps,
            _ => &[],
        }
    }

    /// The flows a `Flows` row carries (none for the others).
    pub fn flows(&self) -> &[FlowRow] {
        match self {
            Row::Flows(fs) => fs,
            _ => &[],
        }
    }

    /// The rows this stands for (a marking carries the evidence packets it stores): what a
    /// full queue's drop of it loses.
    pub fn rows(&self) -> u64 {
        match self {
            Row::Evidence { packets, .. } => 1 + packets.len() as u64,
            Row::Packets(packets) => packets.len() as u64,
            Row::Flows(flows) => flows.len() as u64,
            _ => 1,
        }
    }
}

/// Queueing for the hub: which device the messages name, and the next seq of each stream.
#[derive(Debug)]
struct Outbox {
    device: String,
    max_messages: u64,
    last_seq: [u64; Stream::COUNT],
    /// Evidence bytes an episode may send at most, and what each has sent (since start).
    evidence_max_bytes: u64,
    evidence_sent: std::collections::HashMap<i64, u64>,
}

/// A message with its header stamped, as JSON.
fn stamped<M: firmware::proto::Message + Clone + serde::Serialize>(
    m: &M,
    device: &str,
    seq: u64,
    ts: i64,
) -> Option<Vec<u8>> {
    let mut m = m.clone();
    m.set_header(device, seq, ts);
    serde_json::to_vec(&m).ok()
}

/// Per stream, the lowest seq the outbox holds, or the next one if it holds none ([`MetricsMsg`]'s
/// `outbox`). Inside the writer's transaction: rows it queued are seen, and a stream with none
/// in the outbox queued none in it, so `sync_seq` is current for it.
fn outbox_floors(
    tx: &rusqlite::Transaction<'_>,
) -> Result<heapless::Vec<firmware::proto::OutboxFloor, 8>, StoreError> {
    let mut stmt = tx.prepare_cached(
        "SELECT q.stream, coalesce((SELECT min(o.seq) FROM outbox o WHERE o.stream = q.stream),
                                   q.last + 1)
         FROM sync_seq q ORDER BY q.stream",
    )?;
    let mut floors = heapless::Vec::new();
    let mut rows = stmt.query([])?;
    while let Some(r) = rows.next()? {
        let (name, floor): (String, i64) = (r.get(0)?, r.get(1)?);
        if let Some(stream) = Stream::from_name(&name) {
            let _ =
                floors.push(firmware::proto::OutboxFloor { stream, floor: floor.max(1) as u64 });
        }
    }
    Ok(floors)
}

/// Hold the ring of `interface` to `keep` packets, oldest out first; `known` is how many it
/// holds if known (else they are counted, walking the ring once). Returns what it holds after,
/// and how many were rotated out.
fn hold_ring(
    conn: &Connection,
    interface: &str,
    known: Option<u64>,
    keep: u64,
) -> Result<(u64, u64), StoreError> {
    let held = match known {
        Some(n) => n,
        None => conn
            .prepare_cached(
                "SELECT count(*) FROM packets WHERE interface = ?1 AND anomaly_id IS NULL",
            )?
            .query_row([interface], |r| r.get::<_, i64>(0))? as u64,
    };
    if held <= keep {
        return Ok((held, 0));
    }
    let n = conn
        .prepare_cached(
            "DELETE FROM packets WHERE id IN (SELECT id FROM packets
             WHERE interface = ?1 AND anomaly_id IS NULL ORDER BY id LIMIT ?2 + 0)",
        )?
        .execute(params![interface, (held - keep) as i64])? as u64;
    Ok((held - n, n))
}

/// A transaction that writes, holding the write lock from its start (IMMEDIATE), for every
/// connection to the store (the writer's and the sync task's). A deferred one that read first
/// (the outbox's floors, the evidence budget) and wrote after another connection's commit failed
/// at once with SQLITE_BUSY, past the busy timeout, and its batch was lost.
pub fn write_transaction(conn: &mut Connection) -> rusqlite::Result<rusqlite::Transaction<'_>> {
    conn.transaction_with_behavior(TransactionBehavior::Immediate)
}

fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

/// Bytes of the map of a feature vector's non-zero values ([`encode_features`]).
const FEATURE_MAP_BYTES: usize = N_FEATURES.div_ceil(8);

/// A flow's features as stored: a map of which values are not zero (bit `i % 8` of byte
/// `i / 8` for feature `i`), then those values, little-endian f32, in feature order. A flow has
/// a third of its features non-zero on public traffic (27 of 97 on the merged public
/// captures): 120 bytes, not 388, for what is most of the store's rows and writes. A vector
/// whose encoding would be exactly `4 * N_FEATURES` bytes long is stored plainly instead, as
/// the first databases stored every vector, so that the length tells the two apart.
pub fn encode_features(features: &[f32; N_FEATURES], out: &mut Vec<u8>) {
    out.clear();
    out.resize(FEATURE_MAP_BYTES, 0);
    for (i, v) in features.iter().enumerate() {
        // By bits: a -0.0 is kept as it is.
        if v.to_bits() != 0 {
            out[i / 8] |= 1 << (i % 8);
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
    if out.len() == 4 * N_FEATURES {
        out.clear();
        features.iter().for_each(|v| out.extend_from_slice(&v.to_le_bytes()));
    }
}

/// A stored feature vector ([`encode_features`], or the plain one), or `None` for a blob that
/// is neither (a vector of another feature set, or damage).
pub fn decode_features(blob: &[u8]) -> Option<[f32; N_FEATURES]> {
    let mut out = [0.0f32; N_FEATURES];
    if blob.len() == 4 * N_FEATURES {
        out.iter_mut().zip(plain_values(blob)).for_each(|(o, v)| *o = v);
        return Some(out);
    }
    let (map, values) = blob.split_at_checked(FEATURE_MAP_BYTES)?;
    let set = map.iter().map(|b| b.count_ones() as usize).sum::<usize>();
    // Bits past the last feature, or a count of values that is not the map's: not ours.
    let spare = (FEATURE_MAP_BYTES * 8 - N_FEATURES) as u32;
    if values.len() != 4 * set || map[FEATURE_MAP_BYTES - 1].leading_zeros() < spare {
        return None;
    }
    let mut values = plain_values(values);
    for (i, o) in out.iter_mut().enumerate() {
        if map[i / 8] & (1 << (i % 8)) != 0 {
            *o = values.next()?;
        }
    }
    Some(out)
}

/// Bytes read as little-endian f32s, in order: a vector stored plainly, the values after a
/// sparse one's map.
fn plain_values(blob: &[u8]) -> impl Iterator<Item = f32> + '_ {
    blob.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
}

fn ip_bytes(ip: &IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

/// An open store.
#[derive(Debug)]
pub struct Store {
    conn: Connection,
    config: StoreConfig,
    counters: Arc<StoreCounters>,
    outbox: Option<Outbox>,
    /// Evidence packets each episode has kept (since start), against `evidence_max_packets`.
    evidence_kept: std::collections::HashMap<i64, u64>,
    /// Ring packets stored per interface, where known: counted once, then kept by each write
    /// (added, marked as evidence, rotated out), so keeping the ring at its size costs what it
    /// deletes, not a walk over the ring. Forgotten when unsure (a failed transaction,
    /// retention) and counted again.
    ring_rows: std::collections::HashMap<Arc<str>, u64>,
}

/// Hold the store for this process alone (`<store>.lock`, flock): a second `run` or `sync` on
/// the same store would send the same outbox twice and number its messages twice. Held while
/// the returned file is open.
pub fn claim(path: &std::path::Path) -> Result<std::fs::File, String> {
    let lock = path.with_extension("lock");
    if let Some(dir) = lock.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    let f = std::fs::File::create(&lock).map_err(|e| format!("{}: {e}", lock.display()))?;
    match rustix::fs::flock(&f, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(f),
        Err(rustix::io::Errno::WOULDBLOCK) => Err(format!(
            "store.path {} is in use by another tapwatch-edge (run or sync: {} is held)",
            path.display(),
            lock.display()
        )),
        Err(e) => Err(format!("{}: {e}", lock.display())),
    }
}

impl Store {
    /// Open (creating if needed) and migrate the database.
    pub fn open(config: &StoreConfig, counters: Arc<StoreCounters>) -> Result<Store, StoreError> {
        let path = config.path.display().to_string();
        if let Some(dir) = config.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| StoreError::Open {
                path: path.clone(),
                source: rusqlite::Error::ToSqlConversionFailure(Box::new(e)),
            })?;
        }
        let mut conn = Connection::open(&config.path)
            .map_err(|source| StoreError::Open { path: path.clone(), source })?;
        // 16 KiB pages: a flow row is about 500 bytes, and at the default 4 KiB the WAL's
        // per-page work (checksums, frame headers, the checkpoint's copies) is a good part of
        // the writer's time (bench/offline.sh: analyze --db 1.55 s at 4 KiB, 1.33 s at 16 KiB).
        // Only a new database takes it; an existing one keeps its page size.
        conn.pragma_update(None, "page_size", 16384)
            .and_then(|_| conn.pragma_update(None, "journal_mode", "WAL"))
            .and_then(|_| conn.pragma_update(None, "synchronous", "NORMAL"))
            .and_then(|_| conn.busy_timeout(Duration::from_secs(5)))
            // Every statement the writer runs stays prepared (rusqlite keeps 16 by default; a
            // batch runs about as many, and one pushed out is parsed again).
            .map(|_| conn.set_prepared_statement_cache_capacity(64))
            .map_err(|source| StoreError::Open { path: path.clone(), source })?;
        Migrations::from_slice(MIGRATIONS)
            .to_latest(&mut conn)
            .map_err(|source| StoreError::Migrate { path, source })?;
        let store = Store {
            conn,
            config: config.clone(),
            counters,
            outbox: None,
            evidence_kept: std::collections::HashMap::new(),
            ring_rows: std::collections::HashMap::new(),
        };
        store.update_size()?;
        Ok(store)
    }

    /// From now on, queue a message for the hub for what is written: flows in batches of
    /// [`firmware::proto::FLOW_BATCH_MAX`], statistics, metrics. Seqs continue from the last one
    /// this database gave out.
    pub fn enable_outbox(&mut self, device: &str, max_messages: u64) -> Result<(), StoreError> {
        let mut last_seq = [0u64; Stream::COUNT];
        let mut stmt = self.conn.prepare("SELECT stream, last FROM sync_seq")?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
        for row in rows {
            let (name, last) = row?;
            if let Some(s) = Stream::from_name(&name) {
                last_seq[stream_index(s)] = last as u64;
            }
        }
        drop(stmt);
        self.outbox = Some(Outbox {
            device: device.to_string(),
            max_messages,
            last_seq,
            evidence_max_bytes: 4 << 20,
            evidence_sent: std::collections::HashMap::new(),
        });
        self.update_outbox_depth()?;
        Ok(())
    }

    fn update_outbox_depth(&self) -> Result<u64, StoreError> {
        let n: i64 = self.conn.query_row("SELECT count(*) FROM outbox", [], |r| r.get(0))?;
        self.counters.outbox_depth.store(n as u64, Ordering::Relaxed);
        Ok(n as u64)
    }

    /// Drop the oldest messages over `max_messages` (anomalies last), each counted.
    fn bound_outbox(&mut self) -> Result<(), StoreError> {
        let Some(max) = self.outbox.as_ref().map(|o| o.max_messages) else { return Ok(()) };
        let depth = self.update_outbox_depth()?;
        if depth <= max {
            return Ok(());
        }
        let tx = write_transaction(&mut self.conn)?;
        let mut dropped = Vec::new();
        {
            let mut stmt = tx.prepare(
                "DELETE FROM outbox WHERE id IN (SELECT id FROM outbox
                 ORDER BY stream = 'anomalies', id LIMIT ?1 + 0) RETURNING stream",
            )?;
            let rows = stmt.query_map([(depth - max) as i64], |r| r.get::<_, String>(0))?;
            for r in rows {
                dropped.push(r?);
            }
        }
        tx.commit()?;
        for name in dropped {
            if let Some(s) = Stream::from_name(&name) {
                self.counters.outbox_dropped[stream_index(s)].fetch_add(1, Ordering::Relaxed);
            }
        }
        tracing::warn!("sync: outbox over {max} messages; the oldest were dropped");
        self.update_outbox_depth()?;
        Ok(())
    }

    /// Evidence bytes one episode sends to the hub at most (default 4 MiB); the rest stays here.
    pub fn set_evidence_limit(&mut self, bytes: u64) {
        if let Some(o) = self.outbox.as_mut() {
            o.evidence_max_bytes = bytes;
        }
    }

    /// For a database made from capture files (`analyze --db`), which can be made again from
    /// them: no fsync at checkpoints. Commits still survive the process being killed (they are
    /// in the operating system's hands), not a power cut. The checkpoints' syncs held the
    /// writer, and so the pipeline behind its queue, for tens of milliseconds each (analyze
    /// --db on the bench capture: 1.35 s with them, 1.08 s without).
    pub fn without_sync(&self) -> Result<(), StoreError> {
        Ok(self.conn.pragma_update(None, "synchronous", "OFF")?)
    }

    pub fn connection(&self) -> &Connection {
        &self.conn
    }
    pub fn counters(&self) -> &Arc<StoreCounters> {
        &self.counters
    }

    /// Write rows in one transaction. A transaction that fails leaves the store as it was (the
    /// outbox's seqs and the evidence budgets too), and one that failed because the database
    /// was busy or locked past the busy timeout is tried once more before its rows are lost.
    pub fn write_batch(&mut self, rows: &[Row]) -> Result<(), StoreError> {
        match self.write_batch_once(rows) {
            Err(StoreError::Sql(e)) if is_busy(&e) => {
                tracing::warn!(
                    rows = rows.len(),
                    "store: database busy, the batch tried again: {e}"
                );
                self.counters.write_retries.fetch_add(1, Ordering::Relaxed);
                self.write_batch_once(rows)
            }
            r => r,
        }
    }

    fn write_batch_once(&mut self, rows: &[Row]) -> Result<(), StoreError> {
        // What a failed transaction must put back: the outbox's next seqs and the evidence
        // budgets of the episodes in this batch.
        let seqs = self.outbox.as_ref().map(|o| o.last_seq);
        let episodes: Vec<i64> = rows
            .iter()
            .filter_map(|r| match r {
                Row::Evidence { anomaly, .. } => Some(*anomaly),
                _ => None,
            })
            .collect();
        let kept: Vec<Option<u64>> =
            episodes.iter().map(|a| self.evidence_kept.get(a).copied()).collect();
        let sent: Vec<Option<u64>> = episodes
            .iter()
            .map(|a| self.outbox.as_ref().and_then(|o| o.evidence_sent.get(a).copied()))
            .collect();
        let r = self.write_batch_tx(rows);
        if r.is_err() {
            self.ring_rows.clear();
            for ((a, k), s) in episodes.iter().zip(kept).zip(sent) {
                put_back(&mut self.evidence_kept, *a, k);
                if let Some(o) = self.outbox.as_mut() {
                    put_back(&mut o.evidence_sent, *a, s);
                }
            }
            if let (Some(o), Some(seqs)) = (self.outbox.as_mut(), seqs) {
                o.last_seq = seqs;
            }
        }
        r
    }

    fn write_batch_tx(&mut self, rows: &[Row]) -> Result<(), StoreError> {
        let tx = write_transaction(&mut self.conn)?;
        let mut n = [0u64; 5];
        let mut queued = [0u64; Stream::COUNT];
        // What each episode may still send; taken out of the outbox for this transaction
        // (the queueing closure borrows the outbox) and put back after it.
        let mut evidence_sent =
            self.outbox.as_mut().map(|o| std::mem::take(&mut o.evidence_sent)).unwrap_or_default();
        let evidence_max = self.outbox.as_ref().map_or(0, |o| o.evidence_max_bytes);
        let mut evidence_unsent = 0u64;
        let mut over_budget = 0u64;
        // The rings' sizes after this transaction, and the ring packets it rotated out.
        let mut ring_rows: Vec<(Arc<str>, u64)> = Vec::new();
        let mut rotated = 0u64;
        // New limits a row of this batch set: in force after it commits.
        let mut limits = None;
        let body = (|| -> Result<(), StoreError> {
            let mut out = tx.prepare_cached(
                "INSERT INTO outbox (stream, seq, created_us, payload, first_row, last_row)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?;
            let created = now_us();
            let syncing = self.outbox.is_some();
            let outbox = &mut self.outbox;
            // Queue one message: the next seq of its stream.
            let mut queue = |stream: Stream,
                             payload: &dyn Fn(&str, u64) -> Option<Vec<u8>>,
                             rows: Option<(i64, i64)>|
             -> Result<(), StoreError> {
                let Some(o) = outbox.as_mut() else { return Ok(()) };
                let i = stream_index(stream);
                let seq = o.last_seq[i] + 1;
                let body = payload(&o.device, seq);
                out.execute(params![
                    stream.name(),
                    seq as i64,
                    created,
                    body,
                    rows.map(|r| r.0),
                    rows.map(|r| r.1)
                ])?;
                o.last_seq[i] = seq;
                queued[i] += 1;
                Ok(())
            };
            // The run of flow ids not yet in a batch message.
            let mut run: Option<(i64, i64)> = None;
            let no_payload = |_: &str, _: u64| None;
            let mut flow = tx.prepare_cached(
                "INSERT INTO traffic_features (start_us, end_us, src_ip, src_port, dst_ip, dst_port,
                 protocol, vlan, end_reason, packets, bytes, feature_set, features)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
            )?;
            let mut packet_stmt = tx.prepare_cached(
                "INSERT INTO packets (ts_us, interface, link_type, wire_len, src, dst, data,
                 anomaly_id)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )?;
            // A ring packet (no anomaly) or an anomaly's evidence.
            let mut packet = |p: &PacketRow, anomaly: Option<i64>| {
                packet_stmt.execute(params![
                    p.ts_us,
                    &*p.interface,
                    p.link_type,
                    p.wire_len,
                    p.src.as_ref().map(ip_bytes),
                    p.dst.as_ref().map(ip_bytes),
                    p.data,
                    anomaly,
                ])
            };
            let mut part = tx.prepare_cached(
                "INSERT INTO evidence (anomaly_id, first_us, last_us, packets, pcap)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )?;
            let mut stats = tx.prepare_cached(
                "INSERT INTO traffic_stats (interval_start_us, interval_end_us, packets, bytes,
                 tcp_packets, udp_packets, icmp_packets, other_packets, flows_started, flows_ended,
                 parse_errors, top_ports, top_talkers)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
            )?;
            let mut anomaly = tx.prepare_cached(
                "INSERT INTO anomalies (id, first_seen_us, last_seen_us, kind, severity, confidence,
                 score, threshold, detector, src_ip, dst_ip, dst_port, protocol, count, reasons)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)
                 ON CONFLICT (id) DO UPDATE SET last_seen_us = excluded.last_seen_us,
                   severity = excluded.severity, confidence = excluded.confidence,
                   score = excluded.score, count = excluded.count, reasons = excluded.reasons",
            )?;
            let mut analysis = tx.prepare_cached(
                "INSERT INTO analyses (ts_us, model, model_version, rows, score_min, score_mean,
                 score_max, threshold, flagged, latency_us)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            )?;
            // A host's ring packets by source, then by destination (each on its own partial
            // index: an OR of the two would walk the time index), oldest first, up to what the
            // episode may still keep (`+ 0`: see the module's note on LIMIT).
            let mut by_src = tx.prepare_cached(
                "UPDATE packets SET anomaly_id = ?1 WHERE id IN (SELECT id FROM packets
                 WHERE anomaly_id IS NULL AND src = ?3 AND ts_us >= ?2 ORDER BY ts_us
                 LIMIT ?4 + 0)
                 RETURNING ts_us, link_type, wire_len, data, interface",
            )?;
            let mut by_dst = tx.prepare_cached(
                "UPDATE packets SET anomaly_id = ?1 WHERE id IN (SELECT id FROM packets
                 WHERE anomaly_id IS NULL AND dst = ?3 AND ts_us >= ?2 ORDER BY ts_us
                 LIMIT ?4 + 0)
                 RETURNING ts_us, link_type, wire_len, data, interface",
            )?;
            let mut left_behind = tx.prepare_cached(
                "SELECT count(*) FROM packets WHERE anomaly_id IS NULL AND ts_us >= ?1
                 AND (src = ?2 OR dst = ?2)",
            )?;
            let mut keep_max = self.config.evidence_max_packets;
            // Ring packets this batch added (+) or marked as evidence (-), by interface.
            let mut ring_delta: Vec<(Arc<str>, i64)> = Vec::new();
            let mut ring_note =
                |iface: &str, d: i64| match ring_delta.iter_mut().find(|(i, _)| &**i == iface) {
                    Some((_, n)) => *n += d,
                    None => ring_delta.push((Arc::from(iface), d)),
                };
            let mut blob = Vec::with_capacity(N_FEATURES * 4);
            // Reused text buffers for the addresses: no allocation per row.
            let (mut src, mut dst) = (String::with_capacity(40), String::with_capacity(40));
            for row in rows {
                match row {
                    Row::Flows(_) => {
                        for f in row.flows() {
                            encode_features(&f.features, &mut blob);
                            use std::fmt::Write as _;
                            src.clear();
                            dst.clear();
                            let _ = write!(src, "{}", f.src_ip);
                            let _ = write!(dst, "{}", f.dst_ip);
                            flow.execute(params![
                                f.start_us,
                                f.end_us,
                                src.as_str(),
                                f.src_port,
                                dst.as_str(),
                                f.dst_port,
                                f.protocol,
                                f.vlan,
                                f.end_reason,
                                f.packets,
                                f.bytes as i64,
                                FEATURE_SET_VERSION,
                                blob,
                            ])?;
                            n[Table::TrafficFeatures as usize] += 1;
                            let id = tx.last_insert_rowid();
                            run = match run {
                                Some((first, _)) if id - first + 1 < FLOW_BATCH_MAX as i64 => {
                                    Some((first, id))
                                }
                                Some((first, _)) => {
                                    queue(Stream::Flows, &no_payload, Some((first, id)))?;
                                    None
                                }
                                None => Some((id, id)),
                            };
                        }
                    }
                    Row::Packet(_) | Row::Packets(_) => {
                        let ps = row.ring_packets();
                        for p in ps {
                            packet(p, None)?;
                            ring_note(&p.interface, 1);
                        }
                        n[Table::Packets as usize] += ps.len() as u64;
                    }
                    Row::Stats(s) => {
                        stats.execute(params![
                            s.interval_start,
                            s.interval_end,
                            s.packets as i64,
                            s.bytes as i64,
                            s.tcp_packets as i64,
                            s.udp_packets as i64,
                            s.icmp_packets as i64,
                            s.other_packets as i64,
                            s.flows_started as i64,
                            s.flows_ended as i64,
                            s.parse_errors as i64,
                            serde_json::to_string(&s.top_ports).unwrap_or_default(),
                            serde_json::to_string(&s.top_talkers).unwrap_or_default(),
                        ])?;
                        n[Table::TrafficStats as usize] += 1;
                        queue(Stream::Stats, &|d, seq| stamped(&**s, d, seq, created), None)?;
                    }
                    Row::Anomaly(a) => {
                        let name =
                            |v: serde_json::Value| v.as_str().unwrap_or_default().to_string();
                        anomaly.execute(params![
                            a.id as i64,
                            a.first_seen,
                            a.last_seen,
                            name(serde_json::json!(a.kind)),
                            name(serde_json::json!(a.severity)),
                            a.confidence,
                            a.score,
                            a.threshold,
                            a.detector.as_str(),
                            a.src_ip.to_string(),
                            a.dst_ip.map(|i| i.to_string()),
                            a.dst_port,
                            a.protocol,
                            a.count as i64,
                            serde_json::to_string(&a.reasons).unwrap_or_default(),
                        ])?;
                        n[Table::Anomalies as usize] += 1;
                        queue(Stream::Anomalies, &|d, seq| stamped(&**a, d, seq, created), None)?;
                    }
                    Row::Evidence { anomaly, host, since_us, packets } => {
                        let ip = ip_bytes(host);
                        let kept = self.evidence_kept.entry(*anomaly).or_insert(0);
                        let mut marked: Vec<EvidencePacket> = Vec::new();
                        for stmt in [&mut by_src, &mut by_dst] {
                            let left = keep_max.saturating_sub(*kept);
                            if left == 0 {
                                break;
                            }
                            let before = marked.len();
                            let mut rs = stmt.query(params![anomaly, since_us, ip, left as i64])?;
                            while let Some(r) = rs.next()? {
                                marked.push((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?));
                                ring_note(&r.get::<_, String>(4)?, -1);
                            }
                            *kept += (marked.len() - before) as u64;
                            if *kept >= keep_max {
                                // Full: what else of this host's is in the ring stays there.
                                let rest: i64 =
                                    left_behind.query_row(params![since_us, ip], |r| r.get(0))?;
                                over_budget += rest as u64;
                            }
                        }
                        // The packets from memory, up to the budget, as pcap parts; the rest
                        // stay ring packets (rotated as those are).
                        let mut taken: Vec<EvidencePacket> = Vec::new();
                        for p in packets {
                            n[Table::Packets as usize] += 1;
                            if *kept >= keep_max {
                                packet(p, None)?;
                                ring_note(&p.interface, 1);
                                over_budget += 1;
                                continue;
                            }
                            *kept += 1;
                            taken.push((p.ts_us, p.link_type, p.wire_len, p.data.clone()));
                        }
                        for (count, first, last, pcap) in evidence_parts(&taken) {
                            part.execute(params![anomaly, first, last, count, pcap])?;
                        }
                        if syncing {
                            marked.append(&mut taken);
                        } else {
                            marked.clear();
                        }
                        if syncing && !marked.is_empty() {
                            // The packets just marked go to the hub, in parts that fit a
                            // message: each a pcap file; up to the episode's budget.
                            marked.sort_by_key(|p| p.0);
                            let sent = evidence_sent.entry(*anomaly).or_insert(0);
                            let mut keep = 0;
                            for p in &marked {
                                if *sent + p.3.len() as u64 > evidence_max {
                                    break;
                                }
                                *sent += p.3.len() as u64;
                                keep += 1;
                            }
                            evidence_unsent += (marked.len() - keep) as u64;
                            marked.truncate(keep);
                            for (n, _, _, pcap) in evidence_parts(&marked) {
                                let msg = firmware::proto::EvidenceMsg {
                                    schema: 0,
                                    device: Default::default(),
                                    seq: 0,
                                    ts: 0,
                                    anomaly: *anomaly as u64,
                                    packets: n,
                                    pcap: base64::engine::general_purpose::STANDARD.encode(&pcap),
                                };
                                queue(
                                    Stream::Evidence,
                                    &|d, seq| stamped(&msg, d, seq, created),
                                    None,
                                )?;
                            }
                        }
                    }
                    Row::Metrics(m) => {
                        // What the outbox still holds, as of this transaction: the hub counts a
                        // seq below it that it never received as lost.
                        let mut m = (**m).clone();
                        if syncing {
                            m.outbox = outbox_floors(&tx)?;
                        }
                        queue(Stream::Metrics, &|d, seq| stamped(&m, d, seq, created), None)?;
                    }
                    Row::Limits { max_size_mb, max_age_hours, evidence_max_packets } => {
                        limits = Some((*max_size_mb, *max_age_hours, *evidence_max_packets));
                        keep_max = *evidence_max_packets;
                    }
                    Row::ConfigApplied(m) => {
                        queue(
                            Stream::ConfigApplied,
                            &|d, seq| stamped(&**m, d, seq, created),
                            None,
                        )?;
                    }
                    Row::CommandResult(m) => {
                        queue(
                            Stream::CommandResult,
                            &|d, seq| stamped(&**m, d, seq, created),
                            None,
                        )?;
                    }
                    Row::Analysis(a) => {
                        analysis.execute(params![
                            a.ts,
                            a.model.as_str(),
                            a.model_version.as_str(),
                            a.rows,
                            a.score_min,
                            a.score_mean,
                            a.score_max,
                            a.threshold,
                            a.flagged,
                            a.latency_us as i64,
                        ])?;
                        n[Table::Analyses as usize] += 1;
                        // Its time is its interval's end, not when it was queued.
                        queue(Stream::Analyses, &|d, seq| stamped(&**a, d, seq, a.ts), None)?;
                    }
                }
            }
            if let Some(r) = run {
                queue(Stream::Flows, &no_payload, Some(r))?;
            }
            // Each ring this batch changed is held to its size in the same transaction.
            for (iface, delta) in ring_delta {
                let known = self.ring_rows.get(&iface).map(|n| (*n as i64 + delta).max(0) as u64);
                let (held, n) = hold_ring(&tx, &iface, known, self.config.evidence_ring_packets)?;
                rotated += n;
                ring_rows.push((iface, held));
            }
            if let Some(o) = &self.outbox {
                let mut seq = tx.prepare_cached(
                    "INSERT INTO sync_seq (stream, last) VALUES (?1, ?2)
                     ON CONFLICT (stream) DO UPDATE SET last = excluded.last",
                )?;
                for (i, q) in queued.iter().enumerate() {
                    if *q > 0 {
                        seq.execute(params![Stream::ALL[i].name(), o.last_seq[i] as i64])?;
                    }
                }
            }
            Ok(())
        })();
        if let Err(e) = body {
            if let Some(o) = self.outbox.as_mut() {
                o.evidence_sent = evidence_sent;
            }
            return Err(e);
        }
        // Counted before the commit: the sender, which lowers the depth as acknowledgements come,
        // cannot see these rows before they are counted. (A failed commit leaves the gauge high
        // until the next recount, at most ten seconds.)
        self.counters.outbox_depth.fetch_add(queued.iter().sum(), Ordering::Relaxed);
        if let Err(e) = tx.commit() {
            self.counters.outbox_depth.fetch_sub(queued.iter().sum(), Ordering::Relaxed);
            if let Some(o) = self.outbox.as_mut() {
                o.evidence_sent = evidence_sent;
            }
            return Err(e.into());
        }
        if let Some((size, age, evidence)) = limits {
            self.config.max_size_mb = size;
            self.config.max_age_hours = age;
            self.config.evidence_max_packets = evidence;
        }
        self.ring_rows.extend(ring_rows);
        self.counters.ring_rotated.fetch_add(rotated, Ordering::Relaxed);
        self.counters.evidence_unsent.fetch_add(evidence_unsent, Ordering::Relaxed);
        self.counters.evidence_over_budget.fetch_add(over_budget, Ordering::Relaxed);
        if self.evidence_kept.len() > 100_000 {
            self.evidence_kept.clear();
        }
        if let Some(o) = self.outbox.as_mut() {
            // Bounded: episodes are few, but a long-running edge forgets the oldest budgets.
            if evidence_sent.len() > 100_000 {
                evidence_sent.clear();
            }
            o.evidence_sent = evidence_sent;
        }
        for (c, v) in self.counters.written.iter().zip(n) {
            c.fetch_add(v, Ordering::Relaxed);
        }
        for (i, q) in queued.iter().enumerate() {
            self.counters.outbox_queued[i].fetch_add(*q, Ordering::Relaxed);
        }
        self.counters.commits.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(
            "store: committed {} rows, flows_total={}",
            rows.len(),
            self.counters.written[Table::TrafficFeatures as usize].load(Ordering::Relaxed)
        );
        Ok(())
    }

    /// Rows in a table.
    pub fn count(&self, table: Table) -> Result<i64, StoreError> {
        Ok(self
            .conn
            .query_row(&format!("SELECT count(*) FROM {}", table.name()), [], |r| r.get(0))?)
    }

    /// Keep the newest `keep` ring packets of `interface`; the rest are rotated out (counted).
    pub fn trim_ring(&mut self, interface: &str, keep: u64) -> Result<u64, StoreError> {
        let known = self.ring_rows.get(interface).copied();
        let (held, n) = hold_ring(&self.conn, interface, known, keep)?;
        self.ring_rows.insert(Arc::from(interface), held);
        self.counters.ring_rotated.fetch_add(n, Ordering::Relaxed);
        Ok(n)
    }

    fn update_size(&self) -> Result<u64, StoreError> {
        let pages: i64 = self.conn.query_row("PRAGMA page_count", [], |r| r.get(0))?;
        let free: i64 = self.conn.query_row("PRAGMA freelist_count", [], |r| r.get(0))?;
        let size: i64 = self.conn.query_row("PRAGMA page_size", [], |r| r.get(0))?;
        let bytes = ((pages - free).max(0) * size) as u64;
        self.counters.size_bytes.store(bytes, Ordering::Relaxed);
        Ok(bytes)
    }

    /// Delete rows older than `max_age_hours` (relative to `now_us`), then the oldest rows until
    /// the live pages fit `max_size_mb`: ring packets first, then flows, statistics, analyses,
    /// and anomalies with their evidence last. Every deleted row is counted.
    pub fn enforce_retention(&mut self, now_us: i64) -> Result<(), StoreError> {
        let cutoff = now_us - (self.config.max_age_hours as i64) * 3_600_000_000;
        for t in Table::ALL {
            let sql = if t == Table::TrafficFeatures {
                // No index on end_us (migration 002): rows are in end order by id, so delete the
                // ids before the first row that is not old. That reads only what it deletes.
                "DELETE FROM traffic_features WHERE id < coalesce(
                     (SELECT id FROM traffic_features WHERE end_us >= ?1 ORDER BY id LIMIT 1),
                     (SELECT max(id) + 1 FROM traffic_features))"
                    .to_string()
            } else {
                format!("DELETE FROM {} WHERE {} < ?1", t.name(), t.time_column())
            };
            let n = self.conn.execute(&sql, [cutoff])? as u64;
            self.counters.evicted_age[t as usize].fetch_add(n, Ordering::Relaxed);
        }
        // Evidence parts whose last packet is old, counted in packets as the marked ring
        // packets beside them are.
        let mut gone =
            self.conn.prepare("DELETE FROM evidence WHERE last_us < ?1 RETURNING packets")?;
        let n: i64 = gone.query_map([cutoff], |r| r.get::<_, i64>(0))?.sum::<Result<i64, _>>()?;
        drop(gone);
        self.counters.evicted_age[Table::Packets as usize].fetch_add(n as u64, Ordering::Relaxed);
        self.drop_orphan_batches()?;
        // Retention deletes ring packets too: their number is counted again when next needed.
        self.ring_rows.clear();
        let limit = self.config.max_size_mb * 1024 * 1024;
        let order = [
            Table::Packets,
            Table::TrafficFeatures,
            Table::TrafficStats,
            Table::Analyses,
            Table::Anomalies,
        ];
        let mut i = 0;
        while self.update_size()? > limit && i < order.len() {
            let t = order[i];
            let extra = if t == Table::Packets { " AND anomaly_id IS NULL" } else { "" };
            let n = self.conn.execute(
                &format!(
                    "DELETE FROM {table} WHERE id IN (SELECT id FROM {table} WHERE 1{extra} ORDER BY {col} LIMIT 2000)",
                    table = t.name(),
                    col = if t == Table::TrafficFeatures { "id" } else { t.time_column() }
                ),
                [],
            )? as u64;
            self.counters.evicted_size[t as usize].fetch_add(n, Ordering::Relaxed);
            if n == 0 {
                i += 1;
            }
        }
        self.drop_orphan_batches()?;
        Ok(())
    }

    /// Flow batches in the outbox whose flows retention deleted entirely go too (counted as
    /// dropped): their row ids could otherwise be given to new flows.
    fn drop_orphan_batches(&mut self) -> Result<(), StoreError> {
        if self.outbox.is_none() {
            return Ok(());
        }
        let n = self.conn.execute(
            "DELETE FROM outbox WHERE stream = 'flows' AND last_row <
             coalesce((SELECT min(id) FROM traffic_features), 9223372036854775807)",
            [],
        )? as u64;
        if n > 0 {
            self.counters.outbox_dropped[stream_index(Stream::Flows)]
                .fetch_add(n, Ordering::Relaxed);
            tracing::warn!(
                "sync: {n} flow batches were deleted by retention before they were sent"
            );
        }
        Ok(())
    }

    /// The evidence packets of an anomaly (Unix µs, DLT, wire length, bytes), in time order:
    /// the ring packets marked for it and the parts it took from memory.
    pub fn evidence(&self, anomaly: i64) -> Result<Vec<EvidencePacket>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT ts_us, link_type, wire_len, data FROM packets WHERE anomaly_id = ?1 ORDER BY ts_us, id",
        )?;
        let mut rows: Vec<EvidencePacket> = stmt
            .query_map([anomaly], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
            .collect::<Result<_, _>>()?;
        let mut parts = self
            .conn
            .prepare_cached("SELECT pcap FROM evidence WHERE anomaly_id = ?1 ORDER BY id")?;
        let blobs: Vec<Vec<u8>> =
            parts.query_map([anomaly], |r| r.get(0))?.collect::<Result<_, _>>()?;
        rows.extend(read_parts(anomaly, blobs)?);
        rows.sort_by_key(|r| r.0);
        Ok(rows)
    }

    /// Write the evidence packets of an anomaly as a pcap file.
    pub fn export_pcap(&self, anomaly: i64, path: &Path) -> Result<u64, StoreError> {
        let exists: Option<i64> = self
            .conn
            .query_row("SELECT id FROM anomalies WHERE id = ?1", [anomaly], |r| r.get(0))
            .optional()?;
        if exists.is_none() {
            return Err(StoreError::NoAnomaly(anomaly));
        }
        let rows = self.evidence(anomaly)?;
        write_pcap(path, &rows).and_then(|n| {
            if n == 0 {
                Err(StoreError::NoEvidence(anomaly))
            } else {
                Ok(n)
            }
        })
    }
}

/// One evidence packet: Unix µs, libpcap DLT, length on the wire, the bytes captured.
pub type EvidencePacket = (i64, i32, u32, Vec<u8>);

/// One pcap part being written: its writer, link type, bytes, packets, first and last time.
type PartWriter = (pcap_file::pcap::PcapWriter<Vec<u8>>, i32, usize, u32, i64, i64);

/// Evidence packets (Unix µs, DLT, wire length, bytes; in time order) as pcap files of at most
/// `EVIDENCE_PCAP_MAX` bytes, each of one link type, with its packet count and its first and
/// last packet's time. A packet too large for any part (not possible with the capture's
/// snaplen) is left out.
pub fn evidence_parts(rows: &[EvidencePacket]) -> Vec<(u32, i64, i64, Vec<u8>)> {
    use pcap_file::pcap::{PcapHeader, PcapPacket, PcapWriter};
    const HEADER: usize = 24;
    const RECORD: usize = 16;
    let max = firmware::proto::EVIDENCE_PCAP_MAX;
    let mut parts = Vec::new();
    let mut current: Option<PartWriter> = None;
    for (ts, link, len, data) in rows {
        let size = RECORD + data.len();
        if HEADER + size > max {
            continue;
        }
        let full = current.as_ref().is_some_and(|c| c.1 != *link || c.2 + size > max);
        if full {
            if let Some((w, _, _, n, first, last)) = current.take() {
                parts.push((n, first, last, w.into_writer()));
            }
        }
        let (w, _, bytes, n, first, last) = match current.as_mut() {
            Some(c) => c,
            None => {
                let header = PcapHeader {
                    datalink: pcap_file::DataLink::from(*link as u32),
                    snaplen: 262_144,
                    ..PcapHeader::default()
                };
                let Ok(w) = PcapWriter::with_header(Vec::with_capacity(max), header) else {
                    continue;
                };
                current.insert((w, *link, HEADER, 0, *ts, *ts))
            }
        };
        let at = std::time::Duration::from_micros(ts.max(&0).unsigned_abs());
        if w.write_packet(&PcapPacket::new(at, *len, data)).is_ok() {
            *bytes += size;
            *n += 1;
            *first = (*first).min(*ts);
            *last = (*last).max(*ts);
        }
    }
    if let Some((w, _, _, n, first, last)) = current {
        if n > 0 {
            parts.push((n, first, last, w.into_writer()));
        }
    }
    parts
}

/// The packets of evidence parts' pcap files (Unix µs, DLT, wire length, bytes). A part that
/// does not read back (it cannot be, the store wrote it) is an error naming the anomaly.
fn read_parts(
    anomaly: i64,
    parts: impl IntoIterator<Item = Vec<u8>>,
) -> Result<Vec<EvidencePacket>, StoreError> {
    let mut out = Vec::new();
    for pcap in parts {
        let bad = |e: pcap_file::PcapError| {
            StoreError::Pcap(format!(
                "evidence of anomaly {anomaly}: a stored part is corrupt: {e}"
            ))
        };
        let mut r = pcap_file::pcap::PcapReader::new(std::io::Cursor::new(pcap)).map_err(bad)?;
        let link = u32::from(r.header().datalink) as i32;
        while let Some(p) = r.next_packet() {
            let p = p.map_err(bad)?;
            out.push((p.timestamp.as_micros() as i64, link, p.orig_len, p.data.into_owned()));
        }
    }
    Ok(out)
}

/// Write packets (Unix µs, DLT, wire length, bytes) as a pcap file; all must share a link type.
pub fn write_pcap(path: &Path, rows: &[EvidencePacket]) -> Result<u64, StoreError> {
    let Some(first) = rows.first() else { return Ok(0) };
    let cap = pcap::Capture::dead(pcap::Linktype(first.1))
        .map_err(|e| StoreError::Pcap(e.to_string()))?;
    let mut out =
        cap.savefile(path).map_err(|e| StoreError::Pcap(format!("{}: {e}", path.display())))?;
    let mut n = 0;
    for (ts, link, len, data) in rows {
        if *link != first.1 {
            return Err(StoreError::Pcap(format!(
                "packets of link types {} and {} cannot share one pcap file",
                first.1, link
            )));
        }
        let header = pcap::PacketHeader {
            ts: libc::timeval {
                tv_sec: (ts.div_euclid(1_000_000)) as _,
                tv_usec: (ts.rem_euclid(1_000_000)) as _,
            },
            caplen: data.len() as u32,
            len: (*len).max(data.len() as u32),
        };
        out.write(&pcap::Packet::new(&header, data));
        n += 1;
    }
    out.flush().map_err(|e| StoreError::Pcap(e.to_string()))?;
    Ok(n)
}

/// What "old" is measured against for age retention.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgeClock {
    /// The system clock: the live daemon.
    Wall,
    /// No age retention (size still applies): offline analysis of captures of any age.
    Off,
}

/// Handle of the writer thread.
#[derive(Debug)]
pub struct Writer {
    pub tx: crossbeam_channel::Sender<Row>,
    pub handle: std::thread::JoinHandle<()>,
}

/// Start the writer: rows from the returned sender are written in batches of `batch_rows`, at
/// least every `flush_interval_ms`, with retention every ten seconds; the ring of each interface
/// a batch wrote packets for is trimmed to `evidence_ring_packets`. It ends when every sender is
/// dropped, after a last flush. `queue` bounds the messages waiting (a row, or a chunk of
/// them); live senders use `try_send` and count a full queue.
/// How often the writer takes the rows that join an open batch ([`spawn_writer`]): an urgent
/// row (an anomaly) waits this long at most before its batch is written.
const POLL: Duration = Duration::from_millis(2);

pub fn spawn_writer(mut store: Store, queue: usize, age: AgeClock) -> Writer {
    let (tx, rx) = crossbeam_channel::bounded::<Row>(queue);
    let handle = std::thread::Builder::new()
        .name("store".into())
        .spawn(move || {
            let cfg = store.config.clone();
            let interval = Duration::from_millis(cfg.flush_interval_ms);
            let mut batch: Vec<Row> = Vec::with_capacity(cfg.batch_rows);
            // Rows the batch stands for (a chunk of flows is its flows).
            let mut held = 0usize;
            let mut last_flush = Instant::now();
            let mut last_retention = Instant::now();
            // An anomaly in the batch: it is written at once, not at the next interval (an
            // alert waits for nothing but the rows queued before it); so is the answer to the
            // hub's configuration (the operator waits for it).
            let mut urgent = false;
            // The last wait or poll took rows.
            let mut busy = false;
            loop {
                let timeout = interval.saturating_sub(last_flush.elapsed());
                // While a batch is open and rows keep coming, those that join it are taken
                // every POLL rather than as each comes: a receiver waiting on the queue is woken
                // by every send (a system call on the sender's side, a switch on ours), and a
                // busy pipeline sends thousands of rows a second. A poll that finds nothing
                // goes back to waiting.
                let polling = busy && !batch.is_empty();
                // A row into the batch: how many it holds now.
                let mut take = |row: Row| {
                    urgent |= matches!(
                        row,
                        Row::Anomaly(_) | Row::ConfigApplied(_) | Row::CommandResult(_)
                    );
                    held += row.flows().len().max(1);
                    batch.push(row);
                    held
                };
                let first = if polling {
                    std::thread::sleep(timeout.min(POLL));
                    rx.try_recv().map_err(|e| match e {
                        crossbeam_channel::TryRecvError::Empty => {
                            crossbeam_channel::RecvTimeoutError::Timeout
                        }
                        crossbeam_channel::TryRecvError::Disconnected => {
                            crossbeam_channel::RecvTimeoutError::Disconnected
                        }
                    })
                } else {
                    rx.recv_timeout(timeout)
                };
                let (more, closed) = match first {
                    Ok(row) => {
                        let mut n = take(row);
                        // What else is waiting, without a clock read per row.
                        while n < cfg.batch_rows {
                            match rx.try_recv() {
                                Ok(row) => n = take(row),
                                Err(_) => break,
                            }
                        }
                        (true, false)
                    }
                    Err(crossbeam_channel::RecvTimeoutError::Timeout) => (false, false),
                    Err(crossbeam_channel::RecvTimeoutError::Disconnected) => (false, true),
                };
                busy = more;
                if batch.is_empty() && !more {
                    // Idle: the next wait is a whole interval, not zero (which would spin).
                    last_flush = Instant::now();
                }
                let full = held >= cfg.batch_rows;
                // A wait on the queue that ended with nothing: the interval is over.
                let waited = !more && !polling;
                if (full || urgent || waited || closed || last_flush.elapsed() >= interval)
                    && !batch.is_empty()
                {
                    urgent = false;
                    if let Err(e) = store.write_batch(&batch) {
                        tracing::error!(rows = batch.len(), "store: batch lost: {e}");
                        store.counters.write_errors.fetch_add(1, Ordering::Relaxed);
                        store.counters.rows_lost.fetch_add(batch.len() as u64, Ordering::Relaxed);
                    }
                    batch.clear();
                    held = 0;
                    last_flush = Instant::now();
                }
                if closed || last_retention.elapsed() >= Duration::from_secs(10) {
                    let now = match age {
                        AgeClock::Wall => std::time::SystemTime::now()
                            .duration_since(std::time::UNIX_EPOCH)
                            .map_or(0, |d| d.as_micros() as i64),
                        AgeClock::Off => i64::MIN / 2,
                    };
                    if let Err(e) = store.enforce_retention(now) {
                        tracing::error!("store: retention failed: {e}");
                    }
                    if let Err(e) = store.bound_outbox() {
                        tracing::error!("store: outbox bound failed: {e}");
                    }
                    last_retention = Instant::now();
                }
                if closed {
                    break;
                }
            }
        })
        .expect("spawning the store thread");
    Writer { tx, handle }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(dir: &Path) -> StoreConfig {
        StoreConfig { path: dir.join("edge.db"), max_size_mb: 8, ..StoreConfig::default() }
    }

    /// A new store in `dir`, with its counters.
    fn open(dir: &Path) -> (Store, Arc<StoreCounters>) {
        let c = Arc::new(StoreCounters::default());
        (Store::open(&cfg(dir), c.clone()).unwrap(), c)
    }

    /// A packet of `len` bytes (each `ts_us as u8`) on interface `a`, from `src` to 10.0.0.9.
    fn packet_row(ts_us: i64, src: [u8; 4], len: u32) -> PacketRow {
        PacketRow {
            ts_us,
            interface: "a".into(),
            link_type: 1,
            wire_len: len,
            src: Some(src.into()),
            dst: Some([10, 0, 0, 9].into()),
            data: vec![ts_us as u8; len as usize],
        }
    }

    fn flow(end_us: i64) -> Row {
        Row::Flows(vec![flow_row(end_us)])
    }

    fn flow_row(end_us: i64) -> FlowRow {
        FlowRow {
            start_us: end_us - 10,
            end_us,
            src_ip: [10, 0, 0, 1].into(),
            src_port: 1234,
            dst_ip: [10, 0, 0, 2].into(),
            dst_port: 80,
            protocol: 6,
            vlan: 0,
            end_reason: "fin",
            packets: 3,
            bytes: 180,
            features: [1.5; N_FEATURES],
        }
    }

    /// The module's note on LIMIT, held: no statement binds a bare parameter as its limit.
    #[test]
    fn test_no_limit_is_a_bare_parameter() {
        let needle = concat!("LIMIT ", "?");
        for (name, src) in
            [("store.rs", include_str!("store.rs")), ("sync.rs", include_str!("sync.rs"))]
        {
            for (at, _) in src.match_indices(needle) {
                let rest = &src[at + needle.len()..];
                let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
                if digits > 0 {
                    assert!(rest[digits..].starts_with(" + 0"), "{name}: {}", &src[at..at + 16]);
                }
            }
        }
    }

    #[test]
    fn test_a_feature_vector_comes_back_as_it_went_in_sparse_or_plain() {
        let mut blob = Vec::new();
        let mut cases = vec![[0.0f32; N_FEATURES], [1.5; N_FEATURES]];
        // A third: every third value a signed zero, an infinity, a NaN or a tiny one (each
        // kept by its bits).
        let mut v = [0.0f32; N_FEATURES];
        for (i, x) in v.iter_mut().enumerate().step_by(3) {
            *x = [-0.0, 2.5, f32::INFINITY, f32::NAN, f32::MIN_POSITIVE][i % 5];
        }
        cases.push(v);
        // Every count of values set, from the first feature and from the last.
        for k in 0..=N_FEATURES {
            let mut a = [0.0f32; N_FEATURES];
            let mut b = [0.0f32; N_FEATURES];
            (0..k).for_each(|i| a[i] = i as f32 + 1.0);
            (0..k).for_each(|i| b[N_FEATURES - 1 - i] = -(i as f32) - 1.0);
            cases.extend([a, b]);
        }
        for c in &cases {
            encode_features(c, &mut blob);
            let back = decode_features(&blob).unwrap();
            let bits = |v: &[f32; N_FEATURES]| v.map(f32::to_bits);
            assert_eq!(bits(&back), bits(c), "{} bytes", blob.len());
            let set = c.iter().filter(|x| x.to_bits() != 0).count();
            assert!(blob.len() <= FEATURE_MAP_BYTES + 4 * set || blob.len() == 4 * N_FEATURES);
        }
        // A vector stored plainly (the first databases) still reads.
        let plain: Vec<u8> = (0..N_FEATURES).flat_map(|i| (i as f32).to_le_bytes()).collect();
        assert_eq!(decode_features(&plain).unwrap()[7], 7.0);
        // What is neither is refused, not read as something else: too short, values that do
        // not match the map, bits past the last feature.
        encode_features(&[1.5; N_FEATURES], &mut blob);
        assert_eq!(decode_features(&blob[..FEATURE_MAP_BYTES - 1]), None);
        let mut one = [0.0f32; N_FEATURES];
        one[3] = 4.0;
        encode_features(&one, &mut blob);
        assert_eq!(decode_features(&blob[..blob.len() - 1]), None);
        let mut extra = blob.clone();
        extra.extend_from_slice(&1.0f32.to_le_bytes());
        assert_eq!(decode_features(&extra), None);
        let mut spare = blob.clone();
        spare[FEATURE_MAP_BYTES - 1] |= 0x80;
        spare.extend_from_slice(&1.0f32.to_le_bytes());
        assert_eq!(decode_features(&spare), None);
        assert_eq!(decode_features(&[]), None);
    }

    #[test]
    fn test_migrates_writes_and_reopens() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, c) = open(dir.path());
        s.write_batch(&[flow(100), flow(200)]).unwrap();
        drop(s);
        let s = Store::open(&cfg(dir.path()), Arc::new(StoreCounters::default())).unwrap();
        assert_eq!(s.count(Table::TrafficFeatures).unwrap(), 2);
        let blob: Vec<u8> = s
            .connection()
            .query_row("SELECT features FROM traffic_features LIMIT 1", [], |r| r.get(0))
            .unwrap();
        assert_eq!(decode_features(&blob), Some([1.5; N_FEATURES]));
        assert_eq!(c.written[Table::TrafficFeatures as usize].load(Ordering::Relaxed), 2);
        let mode: String =
            s.connection().query_row("PRAGMA journal_mode", [], |r| r.get(0)).unwrap();
        assert_eq!(mode, "wal");
    }

    #[test]
    fn test_an_anomaly_is_written_at_once_not_at_the_next_interval() {
        let dir = tempfile::tempdir().unwrap();
        let config = StoreConfig { flush_interval_ms: 600_000, ..cfg(dir.path()) };
        let store = Store::open(&config, Arc::new(StoreCounters::default())).unwrap();
        let writer = spawn_writer(store, 64, AgeClock::Off);
        let count = |table: &str| -> i64 {
            let c = Connection::open(&config.path).unwrap();
            c.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0)).unwrap()
        };
        writer.tx.send(flow(100)).unwrap();
        let anomaly = firmware::proto::AnomalyMsg {
            schema: 0,
            device: Default::default(),
            seq: 0,
            ts: 0,
            id: 7,
            kind: firmware::proto::AnomalyKind::UdpFlood,
            severity: firmware::proto::Severity::High,
            confidence: 0.9,
            score: 9000.0,
            threshold: 5000.0,
            detector: "window".try_into().unwrap(),
            src_ip: [10, 0, 0, 66].into(),
            dst_ip: None,
            dst_port: None,
            protocol: Some(17),
            first_seen: 100,
            last_seen: 100,
            count: 1,
            reasons: Default::default(),
        };
        writer.tx.send(Row::Anomaly(Box::new(anomaly))).unwrap();
        // The interval is ten minutes: only the anomaly makes the batch go now, with the flow
        // queued before it.
        let deadline = Instant::now() + Duration::from_secs(20);
        while count("anomalies") == 0 {
            assert!(Instant::now() < deadline, "the anomaly waited for the interval");
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(count("traffic_features"), 1);
        drop(writer.tx);
        writer.handle.join().unwrap();
    }

    #[test]
    fn test_flows_keep_their_order_and_batches() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, c) = open(dir.path());
        s.enable_outbox("tap-1", 1_000_000).unwrap();
        // 70 and 40 flows around a packet row, each with its own address and features.
        let numbered = |i: i64| {
            let mut f = flow_row(i);
            f.src_ip = std::net::Ipv4Addr::from(0x0a00_0000 + i as u32).into();
            f.features[0] = i as f32;
            Row::Flows(vec![f])
        };
        let mut rows: Vec<Row> = (1..=70).map(numbered).collect();
        rows.push(Row::Packet(Box::new(PacketRow {
            ts_us: 0,
            interface: "a".into(),
            link_type: 1,
            wire_len: 60,
            src: None,
            dst: None,
            data: vec![0; 60],
        })));
        rows.extend((71..=110).map(numbered));
        s.write_batch(&rows).unwrap();
        let stored: Vec<(i64, i64, String, Vec<u8>)> = s
            .connection()
            .prepare("SELECT id, end_us, src_ip, features FROM traffic_features ORDER BY id")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(stored.len(), 110);
        for (n, (id, end_us, src, features)) in stored.iter().enumerate() {
            let i = n as i64 + 1;
            assert_eq!((*id, *end_us), (i, i), "row {n}");
            assert_eq!(*src, std::net::Ipv4Addr::from(0x0a00_0000 + i as u32).to_string());
            assert_eq!(decode_features(features).unwrap()[0], i as f32);
        }
        assert_eq!(c.written[Table::TrafficFeatures as usize].load(Ordering::Relaxed), 110);
        // The outbox's flow batches cover every id once, in order.
        let ranges: Vec<(i64, i64)> = s
            .connection()
            .prepare("SELECT first_row, last_row FROM outbox WHERE stream = 'flows' ORDER BY seq")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let mut next = 1;
        for (first, last) in ranges {
            assert_eq!(first, next);
            assert!(last - first < FLOW_BATCH_MAX as i64);
            next = last + 1;
        }
        assert_eq!(next, 111);
    }

    #[test]
    fn test_a_busy_database_is_tried_again_and_a_failed_batch_leaves_no_gap() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, c) = open(dir.path());
        s.enable_outbox("tap-1", 1_000_000).unwrap();
        s.connection().busy_timeout(Duration::from_millis(500)).unwrap();
        let other = rusqlite::Connection::open(dir.path().join("edge.db")).unwrap();
        let flow_seqs = |s: &Store| -> Vec<i64> {
            s.connection()
                .prepare("SELECT seq FROM outbox WHERE stream = 'flows' ORDER BY seq")
                .unwrap()
                .query_map([], |r| r.get(0))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap()
        };
        // The write lock held through both tries: the batch fails, and leaves nothing behind,
        // not even the seq it would have taken.
        other.execute_batch("BEGIN IMMEDIATE").unwrap();
        let e = s.write_batch(&[flow(100)]).unwrap_err();
        assert!(matches!(&e, StoreError::Sql(e) if is_busy(e)), "{e}");
        assert_eq!(c.write_retries.load(Ordering::Relaxed), 1);
        other.execute_batch("COMMIT").unwrap();
        s.write_batch(&[flow(200)]).unwrap();
        assert_eq!(flow_seqs(&s), [1]);
        assert_eq!(s.count(Table::TrafficFeatures).unwrap(), 1);
        // Held for one try only: the second gets through.
        other.execute_batch("BEGIN IMMEDIATE").unwrap();
        let release = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(700));
            other.execute_batch("COMMIT").unwrap();
        });
        s.write_batch(&[flow(300)]).unwrap();
        release.join().unwrap();
        assert_eq!(c.write_retries.load(Ordering::Relaxed), 2);
        assert_eq!(flow_seqs(&s), [1, 2]);
    }

    #[test]
    fn test_retention_by_age_counts() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, c) = open(dir.path());
        let hour = 3_600_000_000i64;
        let now = 1_000 * hour;
        s.write_batch(&[flow(now - 200 * hour), flow(now - 169 * hour), flow(now - hour)]).unwrap();
        s.enforce_retention(now).unwrap();
        assert_eq!(s.count(Table::TrafficFeatures).unwrap(), 1);
        assert_eq!(c.evicted_age[Table::TrafficFeatures as usize].load(Ordering::Relaxed), 2);
    }

    #[test]
    fn test_retention_by_size_evicts_oldest_first() {
        let dir = tempfile::tempdir().unwrap();
        // A ring larger than what is written: the size limit, not the ring, takes packets out.
        let config = StoreConfig { evidence_ring_packets: 100_000, ..cfg(dir.path()) };
        let c = Arc::new(StoreCounters::default());
        let mut s = Store::open(&config, c.clone()).unwrap();
        // ~12 MiB of ring packets into an 8 MiB store.
        for b in 0..12 {
            let rows: Vec<Row> = (0..1024)
                .map(|i| {
                    Row::Packet(Box::new(PacketRow {
                        ts_us: b * 10_000 + i,
                        interface: "eth1".into(),
                        link_type: 1,
                        wire_len: 1000,
                        src: None,
                        dst: None,
                        data: vec![0xab; 1000],
                    }))
                })
                .collect();
            s.write_batch(&rows).unwrap();
        }
        s.enforce_retention(200_000).unwrap();
        let size = c.size_bytes.load(Ordering::Relaxed);
        assert!(size <= 8 * 1024 * 1024, "{size}");
        let evicted = c.evicted_size[Table::Packets as usize].load(Ordering::Relaxed);
        assert!(evicted >= 3000, "{evicted}");
        assert_eq!(s.count(Table::Packets).unwrap() as u64 + evicted, 12 * 1024);
        let oldest: i64 =
            s.connection().query_row("SELECT min(ts_us) FROM packets", [], |r| r.get(0)).unwrap();
        assert!(oldest > 20_000, "the oldest went first: {oldest}");
    }

    #[test]
    fn test_ring_keeps_newest() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, c) = open(dir.path());
        let rows: Vec<Row> = (0..50)
            .map(|i| {
                Row::Packet(Box::new(PacketRow {
                    ts_us: i,
                    interface: if i % 2 == 0 { "a".into() } else { "b".into() },
                    link_type: 1,
                    wire_len: 60,
                    src: Some([10, 0, 0, 1].into()),
                    dst: None,
                    data: vec![0; 60],
                }))
            })
            .collect();
        s.write_batch(&rows).unwrap();
        assert_eq!(s.trim_ring("a", 10).unwrap(), 15);
        assert_eq!(s.count(Table::Packets).unwrap(), 35);
        let min_a: i64 = s
            .connection()
            .query_row("SELECT min(ts_us) FROM packets WHERE interface = 'a'", [], |r| r.get(0))
            .unwrap();
        assert_eq!(min_a, 30);
        assert_eq!(c.ring_rotated.load(Ordering::Relaxed), 15);
    }

    #[test]
    fn test_each_write_holds_the_ring_to_its_size_counting_what_evidence_took() {
        let dir = tempfile::tempdir().unwrap();
        let config = StoreConfig { evidence_ring_packets: 20, ..cfg(dir.path()) };
        let c = Arc::new(StoreCounters::default());
        let mut s = Store::open(&config, c.clone()).unwrap();
        let ring = |s: &Store| -> i64 {
            s.connection()
                .query_row(
                    "SELECT count(*) FROM packets WHERE interface = 'a' AND anomaly_id IS NULL",
                    [],
                    |r| r.get(0),
                )
                .unwrap()
        };
        let packet = |ts: i64, src: [u8; 4]| Row::Packet(Box::new(packet_row(ts, src, 60)));
        // 30 into a ring of 20: the oldest 10 go in the same write.
        let rows: Vec<Row> = (0..30)
            .map(|i| packet(i, if i < 25 { [10, 0, 0, 2] } else { [10, 0, 0, 1] }))
            .collect();
        s.write_batch(&rows).unwrap();
        assert_eq!((ring(&s), c.ring_rotated.load(Ordering::Relaxed)), (20, 10));
        // An episode takes 10.0.0.1's five out of the ring; ten more come: 25 held to 20.
        let mut rows = vec![Row::Evidence {
            anomaly: 3,
            host: [10, 0, 0, 1].into(),
            since_us: 0,
            packets: vec![],
        }];
        rows.extend((30..40).map(|i| packet(i, [10, 0, 0, 2])));
        s.write_batch(&rows).unwrap();
        assert_eq!((ring(&s), c.ring_rotated.load(Ordering::Relaxed)), (20, 15));
        assert_eq!(s.count(Table::Packets).unwrap(), 25, "the five taken stay as evidence");
        let oldest: i64 = s
            .connection()
            .query_row("SELECT min(ts_us) FROM packets WHERE anomaly_id IS NULL", [], |r| r.get(0))
            .unwrap();
        assert_eq!(oldest, 15, "the oldest went first");
        // Retention takes ring packets behind the count's back; the next write counts again.
        s.connection().execute("DELETE FROM packets WHERE ts_us < 20", []).unwrap();
        s.enforce_retention(0).unwrap();
        s.write_batch(&(40..46).map(|i| packet(i, [10, 0, 0, 2])).collect::<Vec<_>>()).unwrap();
        assert_eq!((ring(&s), c.ring_rotated.load(Ordering::Relaxed)), (20, 16));
    }

    #[test]
    fn test_evidence_goes_to_the_outbox_in_parts_up_to_its_budget() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, c) = open(dir.path());
        s.enable_outbox("tap-1", 1_000_000).unwrap();
        s.set_evidence_limit(250_000);
        // Five 60 kB packets from the source, one from elsewhere.
        let packet = |ts: i64, src: [u8; 4]| Row::Packet(Box::new(packet_row(ts, src, 60_000)));
        let mut rows: Vec<Row> = (1..=5).map(|i| packet(i, [10, 0, 0, 1])).collect();
        rows.push(packet(6, [10, 0, 0, 2]));
        rows.push(Row::Evidence {
            anomaly: 7,
            host: [10, 0, 0, 1].into(),
            since_us: 0,
            packets: vec![],
        });
        s.write_batch(&rows).unwrap();
        // Four fit the 250 kB budget, in two parts of two (a part is at most 128 KiB).
        let parts: Vec<(u64, u32, Vec<u8>)> = {
            let mut stmt = s
                .connection()
                .prepare("SELECT seq, payload FROM outbox WHERE stream = 'evidence' ORDER BY seq")
                .unwrap();
            stmt.query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?)))
                .unwrap()
                .map(|r| {
                    let (seq, payload) = r.unwrap();
                    let m: firmware::proto::EvidenceMsg = serde_json::from_slice(&payload).unwrap();
                    assert_eq!((m.anomaly, m.device.as_str()), (7, "tap-1"));
                    let pcap = base64::engine::general_purpose::STANDARD.decode(&m.pcap).unwrap();
                    assert!(pcap.len() <= firmware::proto::EVIDENCE_PCAP_MAX);
                    (seq as u64, m.packets, pcap)
                })
                .collect()
        };
        assert_eq!(parts.iter().map(|p| (p.0, p.1)).collect::<Vec<_>>(), [(1, 2), (2, 2)]);
        let mut r = pcap_file::pcap::PcapReader::new(&parts[1].2[..]).unwrap();
        let p = r.next_packet().unwrap().unwrap();
        assert_eq!((p.timestamp.as_micros(), p.orig_len, p.data[0]), (3, 60_000, 3));
        assert_eq!(c.evidence_unsent.load(Ordering::Relaxed), 1);
        // All five are the episode's evidence in the store, sent or not.
        let marked: i64 = s
            .connection()
            .query_row("SELECT count(*) FROM packets WHERE anomaly_id = 7", [], |r| r.get(0))
            .unwrap();
        assert_eq!(marked, 5);
        // A later marking finds the budget spent.
        s.write_batch(&[
            packet(8, [10, 0, 0, 1]),
            Row::Evidence { anomaly: 7, host: [10, 0, 0, 1].into(), since_us: 0, packets: vec![] },
        ])
        .unwrap();
        assert_eq!(c.evidence_unsent.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn test_evidence_from_memory_joins_the_stored_ring_packets() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, _) = open(dir.path());
        s.enable_outbox("tap-1", 1_000).unwrap();
        let packet = |ts: i64, src: [u8; 4]| packet_row(ts, src, 100);
        // In the stored ring: two of the source's (one before the episode) and another host's.
        s.write_batch(&[
            Row::Packet(Box::new(packet(1, [10, 0, 0, 1]))),
            Row::Packet(Box::new(packet(5, [10, 0, 0, 1]))),
            Row::Packet(Box::new(packet(6, [10, 0, 0, 2]))),
        ])
        .unwrap();
        s.write_batch(&[Row::Evidence {
            anomaly: 3,
            host: [10, 0, 0, 1].into(),
            since_us: 2,
            packets: vec![packet(7, [10, 0, 0, 1]), packet(8, [10, 0, 0, 1])],
        }])
        .unwrap();
        let marked: Vec<i64> = s.evidence(3).unwrap().iter().map(|p| p.0).collect();
        assert_eq!(marked, [5, 7, 8]);
        // The two from memory are one part, not two rows.
        let (parts, in_parts): (i64, i64) = s
            .connection()
            .query_row(
                "SELECT count(*), sum(packets) FROM evidence WHERE anomaly_id = 3",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert_eq!((parts, in_parts), (1, 2));
        let payload: Vec<u8> = s
            .connection()
            .query_row("SELECT payload FROM outbox WHERE stream = 'evidence'", [], |r| r.get(0))
            .unwrap();
        let m: firmware::proto::EvidenceMsg = serde_json::from_slice(&payload).unwrap();
        let pcap = base64::engine::general_purpose::STANDARD.decode(&m.pcap).unwrap();
        let mut r = pcap_file::pcap::PcapReader::new(&pcap[..]).unwrap();
        let mut times = Vec::new();
        while let Some(p) = r.next_packet() {
            times.push(p.unwrap().timestamp.as_micros());
        }
        assert_eq!((m.packets, times), (3, vec![5, 7, 8]), "one part, in time order");
    }

    #[test]
    fn test_evidence_is_kept_up_to_its_budget_and_the_rest_stays_in_the_ring() {
        let dir = tempfile::tempdir().unwrap();
        let c = Arc::new(StoreCounters::default());
        let config = StoreConfig { evidence_max_packets: 4, ..cfg(dir.path()) };
        let mut s = Store::open(&config, c.clone()).unwrap();
        let host = [10, 0, 0, 1];
        // Three of the host's stored as ring packets, from it and to it; then a marking with
        // three more from memory: four are its evidence, two stay ring packets.
        let mut to_host = packet_row(3, [10, 0, 0, 2], 100);
        to_host.dst = Some(host.into());
        s.write_batch(&[
            Row::Packet(Box::new(packet_row(1, host, 100))),
            Row::Packet(Box::new(packet_row(2, host, 100))),
            Row::Packet(Box::new(to_host)),
            Row::Packet(Box::new(packet_row(4, [10, 0, 0, 3], 100))),
        ])
        .unwrap();
        let memory = (5..8).map(|t| packet_row(t, host, 100)).collect();
        s.write_batch(&[Row::Evidence {
            anomaly: 9,
            host: host.into(),
            since_us: 0,
            packets: memory,
        }])
        .unwrap();
        let ts = |sql: &str| -> Vec<i64> {
            let mut q = s.connection().prepare(sql).unwrap();
            q.query_map([], |r| r.get(0)).unwrap().collect::<Result<_, _>>().unwrap()
        };
        assert_eq!(s.evidence(9).unwrap().iter().map(|p| p.0).collect::<Vec<_>>(), [1, 2, 3, 5]);
        assert_eq!(
            ts("SELECT ts_us FROM packets WHERE anomaly_id IS NULL ORDER BY ts_us"),
            [4, 6, 7]
        );
        assert_eq!(c.evidence_over_budget.load(Ordering::Relaxed), 2);
        // Full, a later marking takes nothing and counts what it leaves.
        let more = vec![packet_row(8, host, 100)];
        s.write_batch(&[Row::Evidence {
            anomaly: 9,
            host: host.into(),
            since_us: 0,
            packets: more,
        }])
        .unwrap();
        assert_eq!(c.evidence_over_budget.load(Ordering::Relaxed), 3);
        let in_parts: i64 = s
            .connection()
            .query_row("SELECT sum(packets) FROM evidence", [], |r| r.get(0))
            .unwrap();
        assert_eq!(s.count(Table::Packets).unwrap() + in_parts, 8, "nothing deleted");
        // Exported, the evidence is one pcap file in time order; age retention takes the
        // parts with the rest, counted in packets.
        let out = dir.path().join("nine.pcap");
        s.connection()
            .execute(
                "INSERT INTO anomalies (id, first_seen_us, last_seen_us, kind, severity,
                 confidence, score, threshold, detector, src_ip, count, reasons)
                 VALUES (9, 1, 8, 'port_scan', 'medium', 1, 1, 1, 'window', '10.0.0.1', 1, '[]')",
                [],
            )
            .unwrap();
        assert_eq!(s.export_pcap(9, &out).unwrap(), 4);
        let before = c.evicted_age[Table::Packets as usize].load(Ordering::Relaxed);
        s.enforce_retention(100 + s.config.max_age_hours as i64 * 3_600_000_000).unwrap();
        let parts: i64 =
            s.connection().query_row("SELECT count(*) FROM evidence", [], |r| r.get(0)).unwrap();
        assert_eq!(parts, 0);
        assert_eq!(c.evicted_age[Table::Packets as usize].load(Ordering::Relaxed) - before, 8);
    }

    #[test]
    fn test_evidence_marking_reads_the_hosts_packets_by_index() {
        let dir = tempfile::tempdir().unwrap();
        let (s, _) = open(dir.path());
        for (column, index) in [("src", "packets_ring_src"), ("dst", "packets_ring_dst")] {
            let plan: Vec<String> = s
                .connection()
                .prepare(&format!(
                    "EXPLAIN QUERY PLAN SELECT id FROM packets WHERE anomaly_id IS NULL
                     AND {column} = x'0a000001' AND ts_us >= 0 ORDER BY ts_us LIMIT 10"
                ))
                .unwrap()
                .query_map([], |r| r.get(3))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            assert!(plan.iter().any(|p| p.contains(index)), "{column}: {plan:?}");
            assert!(!plan.iter().any(|p| p.contains("TEMP B-TREE")), "{column}: {plan:?}");
        }
    }

    #[test]
    fn test_an_analysis_reaches_the_hub_with_its_own_time() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, _) = open(dir.path());
        s.enable_outbox("tap-1", 1_000).unwrap();
        let a = firmware::proto::AnalysisMsg {
            schema: 0,
            device: Default::default(),
            seq: 0,
            ts: 1_700_000_060_000_000,
            model: "classifier".try_into().unwrap(),
            model_version: "3".try_into().unwrap(),
            rows: 10,
            score_min: 0.0,
            score_mean: 0.1,
            score_max: 0.9,
            threshold: 0.5,
            flagged: 1,
            latency_us: 40,
        };
        s.write_batch(&[Row::Analysis(Box::new(a))]).unwrap();
        let payload: Vec<u8> = s
            .connection()
            .query_row("SELECT payload FROM outbox WHERE stream = 'analyses'", [], |r| r.get(0))
            .unwrap();
        let m: firmware::proto::AnalysisMsg = serde_json::from_slice(&payload).unwrap();
        assert_eq!((m.ts, m.seq, m.device.as_str()), (1_700_000_060_000_000, 1, "tap-1"));
    }

    #[test]
    fn test_export_pcap_opens_in_libpcap() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(&cfg(dir.path()), Arc::new(StoreCounters::default())).unwrap();
        let frame = crate::store::tests::ethernet_udp();
        s.write_batch(&[Row::Packet(Box::new(PacketRow {
            ts_us: 1_700_000_000_123_456,
            interface: "eth1".into(),
            link_type: 1,
            wire_len: frame.len() as u32,
            src: None,
            dst: None,
            data: frame.clone(),
        }))])
        .unwrap();
        s.connection()
            .execute_batch(
                "INSERT INTO anomalies (id, first_seen_us, last_seen_us, kind, severity, confidence,
                 score, threshold, detector, src_ip, count, reasons)
                 VALUES (7, 1, 2, 'port_scan', 'high', 0.9, 1, 1, 'window', '10.0.0.1', 1, '[]');
                 UPDATE packets SET anomaly_id = 7;",
            )
            .unwrap();
        let out = dir.path().join("a7.pcap");
        assert_eq!(s.export_pcap(7, &out).unwrap(), 1);
        let mut cap = pcap::Capture::from_file(&out).unwrap();
        let p = cap.next_packet().unwrap();
        assert_eq!(p.data, &frame[..]);
        assert_eq!(p.header.ts.tv_sec, 1_700_000_000);
        assert_eq!(p.header.ts.tv_usec, 123_456);
        assert!(matches!(s.export_pcap(8, &out), Err(StoreError::NoAnomaly(8))));
    }

    pub(crate) fn ethernet_udp() -> Vec<u8> {
        let mut f = vec![0u8; 14 + 20 + 8 + 4];
        f[12] = 0x08;
        f[14] = 0x45;
        f[16..18].copy_from_slice(&32u16.to_be_bytes());
        f[23] = 17;
        f[26..30].copy_from_slice(&[10, 0, 0, 1]);
        f[30..34].copy_from_slice(&[10, 0, 0, 2]);
        f[38..40].copy_from_slice(&12u16.to_be_bytes());
        f
    }
}
