//! MQTT to PostgreSQL, exactly once in effect.
//!
//! The hub subscribes to `<prefix>tapwatch/v1/#` (or, for several hubs sharing the load, an
//! MQTT v5 shared subscription `$share/<group>/...`) with a persistent session and manual
//! acknowledgements. Messages are gathered into batches
//! (`ingest.batch_messages`, `ingest.batch_ms`); a batch is one transaction:
//!
//! 1. every message is decoded ([`crate::contract::decode`]); a refused one goes to
//!    `dead_letters` with its reason, counted;
//! 2. `(device, stream, seq)` of the accepted ones go into `ingest_log`; only those not there
//!    already (`ON CONFLICT DO NOTHING RETURNING`) have their rows written: flow batches by binary
//!    COPY, statistics with their 1-minute and 1-hour rollups, metrics, analyses, anomaly
//!    episodes (upserted by the edge's id), device status;
//! 3. commit, and only then the PUBACKs;
//! 4. per device heard from, the retained ack (`tapwatch/v1/{device}/ack`): each confirmed
//!    stream's `device_streams.acked_seq` (every seq up to it logged, or counted lost below the
//!    edge's outbox floor), the gaps above it, and what was lost. The edge deletes through it.
//!
//! A crash before the commit loses nothing (the broker sends the unacknowledged messages again);
//! a crash after it, before the PUBACKs, doubles nothing (the log refuses them). When the
//! database is away the batch is retried with backoff, unacknowledged. A batch the database
//! refuses for what is in it (not for being away) is split, and a message that fails on its own
//! is dead-lettered with the database's error, so one bad message cannot stall the stream.

use crate::config::Config;
use crate::contract::{decode, Decoded, Reject};
use crate::db::{self, day_of, time, Partitions};
use firmware::proto::{Header, Stream};
use futures_util::FutureExt as _;
use std::collections::{HashMap, HashSet};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::Client;

/// The largest MQTT packet the hub's client takes (told to the broker in CONNECT). Well above
/// the contract's [`crate::contract::MAX_PAYLOAD`]: a broker drops, silently, a message larger
/// than its subscriber's limit, so the hub takes what a broker may pass and refuses the oversize
/// ones itself, as counted dead letters. Brokers should cap publishes well below this
/// (Mosquitto's `message_size_limit`; the generated configuration does).
pub const MAX_PACKET: u32 = 16 << 20;

/// One message off the wire.
#[derive(Debug, Clone)]
pub struct Incoming {
    pub topic: String,
    pub payload: bytes::Bytes,
}

/// Reasons a message is refused, for counters (the contract's, plus the hub's own).
pub const REJECT_REASONS: [&str; 12] = [
    "topic",
    "oversize",
    "malformed_json",
    "schema_version",
    "shape",
    "device_mismatch",
    "range",
    "unknown_device",
    "database",
    "seq_conflict",
    "evidence_limit",
    "panic",
];

/// Counters for `/metrics` and tests.
#[derive(Debug, Default)]
pub struct IngestCounters {
    /// Messages whose rows were committed, by stream (order of [`Stream::ALL`]).
    pub accepted: [AtomicU64; Stream::COUNT],
    /// Messages already ingested (sent again), by stream.
    pub duplicates: [AtomicU64; Stream::COUNT],
    /// Messages refused, by reason (order of [`REJECT_REASONS`]).
    pub rejected: [AtomicU64; REJECT_REASONS.len()],
    /// Batches whose commit panicked (then taken one message at a time; one that panics alone
    /// is a dead letter with reason `panic`).
    pub panics: AtomicU64,
    /// Dead letters deleted (the oldest) to keep them under `retention.dead_letters_max_mb`.
    pub dead_letters_trimmed: AtomicU64,
    /// Flow records committed.
    pub flows: AtomicU64,
    /// Transactions committed, and failed.
    pub commits: AtomicU64,
    pub commit_errors: AtomicU64,
    /// Messages acknowledged to the broker.
    pub acked: AtomicU64,
    /// Acks published to the edges (`tapwatch/v1/{device}/ack`, retained).
    pub acks_published: AtomicU64,
    /// Desired configurations handed to the broker (`tapwatch/v1/{device}/config`, retained).
    pub configs_published: AtomicU64,
    /// Commands handed to the broker (`tapwatch/v1/{device}/commands`).
    pub commands_published: AtomicU64,
    /// Seqs missing (never received, later ones were) and lost, summed over the devices
    /// heard from since start.
    pub seqs_missing: AtomicU64,
    pub seqs_lost: AtomicU64,
    /// 1 while connected to the broker, and to PostgreSQL.
    pub mqtt_connected: AtomicU64,
    pub db_connected: AtomicU64,
}

fn stream_index(s: Stream) -> usize {
    Stream::ALL.iter().position(|x| *x == s).unwrap_or(0)
}

fn reason_index(r: &str) -> usize {
    REJECT_REASONS.iter().position(|x| *x == r).unwrap_or(0)
}

/// A refusal: the contract's reason or the hub's.
#[derive(Debug, Clone)]
struct Refusal {
    reason: &'static str,
    detail: String,
}

impl From<Reject> for Refusal {
    fn from(r: Reject) -> Self {
        Refusal { reason: r.reason(), detail: r.to_string() }
    }
}

/// Logs at most one line per reason a minute; the counters have every one.
#[derive(Debug, Default)]
struct RateLimitedLog {
    last: HashMap<&'static str, (Instant, u64)>,
}

impl RateLimitedLog {
    fn refused(&mut self, topic: &str, r: &Refusal) {
        let e = self.last.entry(r.reason).or_insert((Instant::now() - Duration::from_secs(120), 0));
        if e.0.elapsed() >= Duration::from_secs(60) {
            let more = e.1;
            tracing::warn!(
                reason = r.reason,
                topic,
                suppressed = more,
                "message refused: {} (kept in dead_letters)",
                r.detail
            );
            *e = (Instant::now(), 0);
        } else {
            e.1 += 1;
        }
    }
}

/// The database side of ingest: turns batches into committed rows.
#[derive(Debug)]
pub struct Ingestor {
    client: Client,
    hub: String,
    auto_register: bool,
    devices: HashSet<String>,
    /// Devices found unknown in the batch being committed.
    unknown: HashSet<String>,
    partitions: Partitions,
    counters: Arc<IngestCounters>,
    log: RateLimitedLog,
    /// Dead-letter bytes written since the last trim, and the cap.
    dead_bytes: u64,
    dead_letters_max: u64,
    /// Evidence bytes one episode may hold.
    evidence_max: u64,
    /// Devices with messages (new or again) since the last acks were made ([`Ingestor::acks`]).
    touched: HashSet<String>,
    /// The last ack published per device, and when.
    acks_sent: HashMap<String, (Vec<firmware::proto::StreamAck>, Instant)>,
    /// Missing and lost seqs per device, as last read (their sums are exported).
    gaps: HashMap<String, (u64, u64)>,
}

/// A (device, stream, seq), as `ingest_log` keys it.
type SeqKey = (String, String, i64);

/// A message taken or refused, as the transaction sees it. A refused message of a registered
/// device that says which seq of a confirmed stream it is keeps that seq in `ingest_log`: it
/// is accounted for (as a dead letter), so the hub confirms past it and the edge stops
/// sending it, rather than one bad message holding its stream's confirmations back for ever.
#[derive(Debug)]
enum Item<'a> {
    Ok(&'a Decoded),
    Refused(Refusal, Option<SeqKey>),
}

/// A message off the wire, decoded (CPU only, no database): what the batching stage hands to
/// the committing one, so decoding the next batch overlaps committing this one.
#[derive(Debug)]
pub struct Prepared {
    pub incoming: Incoming,
    decoded: Result<Box<Decoded>, Refusal>,
    /// For a refused message: the seq it says it is, if it names one of its topic's device.
    claimed: Option<SeqKey>,
}

impl Prepared {
    /// The (device, stream, seq) of a message of a stream the hub confirms, as decoded, or as
    /// a refused message claims it.
    fn key(&self) -> Option<SeqKey> {
        match &self.decoded {
            Ok(d) if d.stream().confirmed() => {
                let h = d.header();
                Some((h.device.to_string(), d.stream().name().to_string(), h.seq as i64))
            }
            Ok(_) => None,
            Err(_) => self.claimed.clone(),
        }
    }
}

/// The seq a refused message claims: its topic is a confirmed stream of a valid device id,
/// and its payload a JSON object whose `device` is that device and whose `seq` is a number.
fn claimed(topic: &str, payload: &[u8], reason: &str) -> Option<SeqKey> {
    if matches!(reason, "topic" | "oversize" | "device_mismatch") {
        return None;
    }
    let (device, stream) = firmware::proto::parse_topic(topic)?;
    if !stream.confirmed() {
        return None;
    }
    let v: serde_json::Value = serde_json::from_slice(payload).ok()?;
    let seq = v.get("seq")?.as_u64().filter(|s| (1..=i64::MAX as u64).contains(s))?;
    (v.get("device")?.as_str()? == device)
        .then(|| (device.to_string(), stream.name().to_string(), seq as i64))
}

/// The wall clock, Unix microseconds (what the contract's "not in the future" is checked against).
pub fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

/// Decode a message received on a topic under `prefix`.
pub fn prepare(prefix: &str, incoming: Incoming) -> Prepared {
    let mut claim = None;
    let decoded = match incoming.topic.strip_prefix(prefix) {
        None => Err(Reject::Topic(incoming.topic.clone()).into()),
        Some(topic) => {
            let now = now_us();
            match std::panic::catch_unwind(|| decode(topic, &incoming.payload, now)) {
                Ok(d) => d.map(Box::new).map_err(|r| {
                    let r = Refusal::from(r);
                    claim = claimed(topic, &incoming.payload, r.reason);
                    r
                }),
                Err(_) => Err(Refusal { reason: "panic", detail: "decoding panicked".into() }),
            }
        }
    };
    Prepared { incoming, decoded, claimed: claim }
}

/// Whether a topic under `prefix` is one the hub publishes to the edges (its own acks come
/// back to it through its subscription to every device's topics): not a message to ingest.
pub fn is_hub_to_edge(prefix: &str, topic: &str) -> bool {
    topic
        .strip_prefix(prefix)
        .and_then(|t| t.strip_prefix("tapwatch/v1/"))
        .and_then(|t| t.split_once('/'))
        .is_some_and(|(_, leaf)| crate::provision::HUB_TO_EDGE.contains(&leaf))
}

/// Whether a database error means the database is away or unwilling (retry the batch later)
/// rather than the data being bad (take it apart, dead-letter what fails alone).
pub fn is_transient(e: &tokio_postgres::Error) -> bool {
    e.is_closed() || e.code().is_none_or(|c| is_transient_code(c.code()))
}

/// A database error with what the server said (its SQLSTATE and message), not only "db error".
pub fn db_error_text(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(d) => format!("{} {}", d.code().code(), d.message()),
        None => e.to_string(),
    }
}

/// SQLSTATEs that say nothing about the rows: the connection (08), resources (53: disk full,
/// out of memory, too many connections), an operator's intervention (57: shutdown, cancel),
/// the system (58: I/O), a serialization failure or deadlock (40001, 40P01), a database
/// refusing writes (25006 read-only transaction, 42501 grants taken away) and locks not
/// available (55P03, 55006). A batch refused with one of these is kept whole and retried; with
/// anything else, it is the data.
pub fn is_transient_code(code: &str) -> bool {
    ["08", "53", "57", "58"].iter().any(|class| code.starts_with(class))
        || ["40001", "40P01", "25006", "42501", "55P03", "55006"].contains(&code)
}

impl Ingestor {
    pub fn new(client: Client, config: &Config, counters: Arc<IngestCounters>) -> Ingestor {
        Ingestor {
            client,
            hub: config.mqtt.client_id.clone(),
            auto_register: config.ingest.auto_register_devices,
            devices: HashSet::new(),
            unknown: HashSet::new(),
            partitions: Partitions::default(),
            counters,
            log: RateLimitedLog::default(),
            dead_bytes: 0,
            dead_letters_max: config.retention.dead_letters_max_mb.saturating_mul(1 << 20),
            evidence_max: config.ingest.evidence_max_mb.saturating_mul(1 << 20),
            touched: HashSet::new(),
            acks_sent: HashMap::new(),
            gaps: HashMap::new(),
        }
    }

    /// The acks to publish after a commit: for each device heard from since the last call,
    /// what `device_streams` now confirms, if it changed or was last published a while ago
    /// (an edge sending again what it has no confirmation for must hear it again: a broker
    /// without persistence forgets retained messages). `(device, payload)` pairs.
    pub async fn acks(&mut self) -> Result<Vec<(String, Vec<u8>)>, tokio_postgres::Error> {
        use firmware::proto::{AckMsg, SeqRange, StreamAck};
        if self.touched.is_empty() {
            return Ok(Vec::new());
        }
        let devices: Vec<String> = self.touched.iter().cloned().collect();
        let rows = self
            .client
            .query(
                "SELECT device, stream, acked_seq, missing, lost FROM device_streams
                 WHERE device = ANY($1) ORDER BY device, stream",
                &[&devices],
            )
            .await?;
        let mut by_device: HashMap<String, Vec<StreamAck>> = HashMap::new();
        for r in &rows {
            let (device, stream): (String, String) = (r.get(0), r.get(1));
            let Some(s) = Stream::from_name(&stream).filter(|s| s.confirmed()) else { continue };
            let (acked, missing, lost): (i64, i64, i64) = (r.get(2), r.get(3), r.get(4));
            let mut ranges = Vec::new();
            if missing > 0 {
                // The lowest gaps above what is confirmed.
                let gaps = self
                    .client
                    .query(
                        "SELECT prev + 1, seq - 1 FROM (
                           SELECT seq, lag(seq, 1, $3::bigint) OVER (ORDER BY seq) AS prev
                           FROM ingest_log WHERE device = $1 AND stream = $2 AND seq > $3) t
                         WHERE seq > prev + 1 ORDER BY seq LIMIT 16",
                        &[&device, &stream, &acked],
                    )
                    .await?;
                for g in gaps {
                    let (first, last): (i64, i64) = (g.get(0), g.get(1));
                    ranges.push(SeqRange { first: first as u64, last: last as u64 });
                }
            }
            let g = self.gaps.entry(device.clone()).or_default();
            if !by_device.contains_key(&device) {
                *g = (0, 0);
            }
            g.0 += missing.max(0) as u64;
            g.1 += lost.max(0) as u64;
            by_device.entry(device).or_default().push(StreamAck {
                stream: s,
                upto: acked.max(0) as u64,
                // At most 16, as the query took.
                missing: ranges.into_iter().take(16).collect(),
                lost: lost.max(0) as u64,
            });
        }
        self.touched.clear();
        let c = &self.counters;
        c.seqs_missing.store(self.gaps.values().map(|g| g.0).sum(), Ordering::Relaxed);
        c.seqs_lost.store(self.gaps.values().map(|g| g.1).sum(), Ordering::Relaxed);
        let mut out = Vec::new();
        for (device, streams) in by_device {
            let fresh = self.acks_sent.get(&device).is_some_and(|(last, at)| {
                *last == streams && at.elapsed() < Duration::from_secs(5)
            });
            if fresh {
                continue;
            }
            let msg = AckMsg {
                schema: firmware::proto::SCHEMA_VERSION,
                device: device.as_str().try_into().unwrap_or_default(),
                ts: now_us(),
                streams: streams.iter().cloned().collect(),
            };
            if let Ok(payload) = serde_json::to_vec(&msg) {
                out.push((device.clone(), payload));
                self.acks_sent.insert(device, (streams, Instant::now()));
            }
        }
        // Bounded: devices are few, but a hub that runs for years forgets the oldest.
        if self.acks_sent.len() > 100_000 {
            self.acks_sent.clear();
        }
        Ok(out)
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    pub fn partitions(&mut self) -> &mut Partitions {
        &mut self.partitions
    }

    /// Whether `device` may send; registers it under auto-registration.
    async fn known(&mut self, device: &str) -> Result<bool, tokio_postgres::Error> {
        if self.devices.contains(device) {
            return Ok(true);
        }
        if self.auto_register {
            db::add_device(&self.client, device).await?;
            self.devices.insert(device.to_string());
            tracing::info!(device, "device registered on its first message");
            return Ok(true);
        }
        // Devices added by `tapwatch-hub device add` while we run: ask the database, once per
        // device per batch (a flood of messages from an unknown device costs one query a batch).
        if !self.unknown.insert(device.to_string()) {
            return Ok(false);
        }
        let found =
            self.client.query_opt("SELECT 1 FROM devices WHERE id = $1", &[&device]).await?;
        if found.is_some() {
            self.unknown.remove(device);
            self.devices.insert(device.to_string());
        }
        Ok(found.is_some())
    }

    async fn classify<'a>(&mut self, m: &'a Prepared) -> Result<Item<'a>, tokio_postgres::Error> {
        match &m.decoded {
            Err(r) => {
                // Only a registered device's seqs are kept (auto-registration does not apply
                // to a message refused).
                let key = match m.key() {
                    Some(k) if self.devices.contains(&k.0) => Some(k),
                    Some(k) if !self.auto_register && self.known(&k.0).await? => Some(k),
                    _ => None,
                };
                Ok(Item::Refused(r.clone(), key))
            }
            Ok(d) => {
                let device = d.header().device;
                if self.known(device).await? {
                    Ok(Item::Ok(d))
                } else {
                    Ok(Item::Refused(
                        Refusal {
                            reason: "unknown_device",
                            detail: format!(
                                "device {device:?} is not registered (tapwatch-hub device add)"
                            ),
                        },
                        None,
                    ))
                }
            }
        }
    }

    /// Commit a batch. `Err` means nothing of it was committed and the database is away (or
    /// went away): retry the whole batch later. Otherwise every message is accounted for.
    pub async fn commit(&mut self, prepared: &[Prepared]) -> Result<(), tokio_postgres::Error> {
        let batch: Vec<&Incoming> = prepared.iter().map(|p| &p.incoming).collect();
        let batch = &batch[..];
        let mut items = Vec::with_capacity(prepared.len());
        self.unknown.clear();
        for m in prepared {
            items.push(self.classify(m).await?);
        }
        self.make_partitions(&items).await?;
        match self.write(batch, &items).await {
            Ok(()) => Ok(()),
            Err(e) if is_transient(&e) => Err(e),
            Err(e) => {
                // Something in the batch is refused by the database: one message at a time,
                // and a message that fails alone is dead-lettered.
                tracing::warn!("batch refused by the database ({e}); retrying message by message");
                for ((m, item), p) in batch.iter().zip(items).zip(prepared) {
                    let one = std::slice::from_ref(m);
                    match self.write(one, std::slice::from_ref(&item)).await {
                        Ok(()) => {}
                        Err(e) if is_transient(&e) => return Err(e),
                        Err(e) => {
                            let r = Refusal { reason: "database", detail: e.to_string() };
                            let key = p.key().filter(|k| self.devices.contains(&k.0));
                            self.write(one, &[Item::Refused(r, key)]).await?;
                        }
                    }
                }
                Ok(())
            }
        }
    }

    /// Keep `m` in `dead_letters` with `reason`, counted, and nothing else of it.
    pub async fn dead_letter(
        &mut self,
        m: &Prepared,
        reason: &'static str,
        detail: String,
    ) -> Result<(), tokio_postgres::Error> {
        let key = m.key().filter(|k| self.devices.contains(&k.0));
        self.write(&[&m.incoming], &[Item::Refused(Refusal { reason, detail }, key)]).await
    }

    async fn make_partitions(&mut self, items: &[Item<'_>]) -> Result<(), tokio_postgres::Error> {
        let mut need: HashSet<(&'static str, i32)> = HashSet::new();
        for item in items {
            let Item::Ok(d) = item else { continue };
            match d {
                Decoded::Flows(b) => {
                    for f in &b.flows {
                        need.insert(("traffic_features", day_of(f.end)));
                    }
                }
                Decoded::Stats(s) => {
                    need.insert(("traffic_stats", day_of(s.interval_start)));
                }
                Decoded::Metrics(m) => {
                    need.insert(("system_metrics", day_of(m.ts)));
                }
                Decoded::Analysis(a) => {
                    need.insert(("analyses", day_of(a.ts)));
                }
                _ => {}
            }
        }
        for (table, day) in need {
            self.partitions.ensure(&self.client, table, [day]).await?;
        }
        Ok(())
    }

    async fn write(
        &mut self,
        batch: &[&Incoming],
        items: &[Item<'_>],
    ) -> Result<(), tokio_postgres::Error> {
        let evidence_max = self.evidence_max;
        let tx = self.client.transaction().await?;
        let mut refused = Vec::new();
        let mut dead_bytes = 0u64;
        // The log rows of accepted messages (status is state, not a record: it is not logged).
        let (mut devs, mut streams, mut seqs, mut sent, mut digests) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for (m, item) in batch.iter().zip(items) {
            match item {
                Item::Refused(_, Some(k)) => {
                    devs.push(k.0.clone());
                    streams.push(k.1.clone());
                    seqs.push(k.2);
                    sent.push(time(now_us()));
                    digests.push(digest(&m.payload));
                }
                Item::Refused(r, None) => {
                    dead_bytes += insert_dead_letter(&tx, m, r).await?;
                    refused.push((m.topic.clone(), r.clone()));
                }
                Item::Ok(d) if d.stream() != Stream::Status => {
                    let h = d.header();
                    devs.push(h.device.to_string());
                    streams.push(d.stream().name().to_string());
                    seqs.push(h.seq as i64);
                    sent.push(time(h.ts));
                    digests.push(digest(&m.payload));
                }
                Item::Ok(_) => {}
            }
        }
        let mut fresh: HashSet<(String, String, i64)> = tx
            .query(
                "INSERT INTO ingest_log (device, stream, seq, hub, sent_at, digest)
                 SELECT d, s, q, $4, t, h
                 FROM unnest($1::text[], $2::text[], $3::bigint[], $5::timestamptz[], $6::bytea[])
                   AS u(d, s, q, t, h)
                 ON CONFLICT DO NOTHING RETURNING device, stream, seq",
                &[&devs, &streams, &seqs, &self.hub, &sent, &digests],
            )
            .await?
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect();
        let mut accepted = [0u64; Stream::COUNT];
        let mut duplicates = [0u64; Stream::COUNT];
        let mut flows = Vec::new();
        let mut anomalies: HashMap<(String, u64), &firmware::proto::AnomalyMsg> = HashMap::new();
        let mut seen_devices = HashSet::new();
        let mut taken: Vec<(String, String, i64)> = Vec::new();
        let mut conflicts: HashMap<(String, String), i64> = HashMap::new();
        let mut floors: Vec<SeqKey> = Vec::new();
        for (m, item) in batch.iter().zip(items) {
            // A refused message with its seq: a dead letter once, its resends duplicates.
            if let Item::Refused(r, Some(k)) = item {
                self.touched.insert(k.0.clone());
                if fresh.remove(k) {
                    dead_bytes += insert_dead_letter(&tx, m, r).await?;
                    refused.push((m.topic.clone(), r.clone()));
                    taken.push(k.clone());
                } else if let Some(s) = Stream::from_name(&k.1) {
                    duplicates[stream_index(s)] += 1;
                }
                continue;
            }
            let Item::Ok(d) = item else { continue };
            let h: Header<'_> = d.header();
            seen_devices.insert(h.device.to_string());
            self.touched.insert(h.device.to_string());
            let i = stream_index(d.stream());
            // A message the broker sent twice can be twice in one batch: the first takes the
            // log row, the second is a duplicate.
            let key = (h.device.to_string(), d.stream().name().to_string(), h.seq as i64);
            if d.stream() != Stream::Status && !fresh.remove(&key) {
                // Taken before: a resend if its content is the same, else a conflict (an edge
                // that started its seqs again, or another publisher), which must not vanish.
                let taken: Option<Vec<u8>> = tx
                    .query_one(
                        "SELECT digest FROM ingest_log WHERE device = $1 AND stream = $2 AND seq = $3",
                        &[&key.0, &key.1, &key.2],
                    )
                    .await?
                    .get(0);
                if taken.is_some_and(|t| t != digest(&m.payload)) {
                    let r = Refusal {
                        reason: "seq_conflict",
                        detail: format!(
                            "seq {} of {}'s {} stream was taken before with other content",
                            h.seq, h.device, key.1
                        ),
                    };
                    dead_bytes += insert_dead_letter(&tx, m, &r).await?;
                    refused.push((m.topic.clone(), r));
                    *conflicts.entry((key.0, key.1)).or_insert(0) += 1;
                } else {
                    duplicates[i] += 1;
                }
                continue;
            }
            if d.stream() != Stream::Status {
                taken.push(key);
            }
            accepted[i] += 1;
            match d {
                Decoded::Flows(b) => flows.push(&**b),
                Decoded::Stats(s) => insert_stats(&tx, s).await?,
                Decoded::Metrics(m) => {
                    for f in m.outbox.iter().filter(|f| f.stream.confirmed()) {
                        let floor = i64::try_from(f.floor).unwrap_or(i64::MAX);
                        floors.push((h.device.to_string(), f.stream.name().to_string(), floor));
                    }
                    tx.execute(
                        "INSERT INTO system_metrics (device, seq, ts, cpu_percent, mem_used_bytes,
                         mem_total_bytes, disk_used_bytes, disk_total_bytes, net_rx_bytes,
                         net_tx_bytes, flows_active, store_dropped, capture)
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
                        &[
                            &m.device.as_str(),
                            &(m.seq as i64),
                            &time(m.ts),
                            &m.cpu_percent,
                            &(m.mem_used_bytes as i64),
                            &(m.mem_total_bytes as i64),
                            &(m.disk_used_bytes as i64),
                            &(m.disk_total_bytes as i64),
                            &(m.net_rx_bytes as i64),
                            &(m.net_tx_bytes as i64),
                            &(m.flows_active as i64),
                            &(m.store_dropped as i64),
                            &serde_json::to_value(&m.capture).unwrap_or_default(),
                        ],
                    )
                    .await?;
                }
                Decoded::Analysis(a) => {
                    tx.execute(
                        "INSERT INTO analyses (device, seq, ts, model, model_version, rows,
                         score_min, score_mean, score_max, threshold, flagged, latency_us)
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
                        &[
                            &a.device.as_str(),
                            &(a.seq as i64),
                            &time(a.ts),
                            &a.model.as_str(),
                            &a.model_version.as_str(),
                            &(a.rows as i32),
                            &a.score_min,
                            &a.score_mean,
                            &a.score_max,
                            &a.threshold,
                            &(a.flagged as i32),
                            &(a.latency_us as i64),
                        ],
                    )
                    .await?;
                }
                Decoded::Anomaly(a) => {
                    // The latest message of an episode wins (one row per episode a statement).
                    let key = (a.device.to_string(), a.id);
                    if anomalies
                        .get(&key)
                        .is_none_or(|b: &&firmware::proto::AnomalyMsg| b.seq < a.seq)
                    {
                        anomalies.insert(key, a);
                    }
                }
                Decoded::Evidence(e, pcap) => {
                    if let Some(detail) = evidence_over(&tx, e, pcap.len(), evidence_max).await? {
                        let r = Refusal { reason: "evidence_limit", detail };
                        dead_bytes += insert_dead_letter(&tx, m, &r).await?;
                        refused.push((m.topic.clone(), r));
                        accepted[i] -= 1;
                        continue;
                    }
                    tx.execute(
                        "INSERT INTO anomaly_evidence (device, edge_id, seq, packets, pcap)
                         VALUES ($1, $2, $3, $4, $5)",
                        &[
                            &e.device.as_str(),
                            &(e.anomaly as i64),
                            &(e.seq as i64),
                            &(e.packets as i32),
                            pcap,
                        ],
                    )
                    .await?;
                }
                Decoded::ConfigApplied(m) => crate::fleet::record_applied(&tx, m).await?,
                Decoded::CommandResult(m) => crate::fleet::record_command(&tx, m).await?,
                Decoded::Status(s) => {
                    crate::fleet::record_status(&tx, s).await?;
                    let state = serde_json::to_value(s.state).unwrap_or_default();
                    tx.execute(
                        "UPDATE devices SET state = $2, state_seq = $3, version = $4, uptime_s = $5
                         WHERE id = $1 AND state_seq < $3",
                        &[
                            &s.device.as_str(),
                            &state.as_str().unwrap_or_default(),
                            &(s.seq as i64),
                            &s.version.as_str(),
                            &(s.uptime_s as i64),
                        ],
                    )
                    .await?;
                }
            }
        }
        update_sequences(&tx, &taken, &conflicts).await?;
        advance_acks(&tx, &taken, &floors).await?;
        let n_flows = copy_flows(&tx, &flows).await?;
        upsert_anomalies(&tx, anomalies.values().copied()).await?;
        let seen: Vec<String> = seen_devices.into_iter().collect();
        tx.execute("UPDATE devices SET last_seen = now() WHERE id = ANY($1)", &[&seen]).await?;
        tx.commit().await?;
        let c = &self.counters;
        for i in 0..Stream::COUNT {
            c.accepted[i].fetch_add(accepted[i], Ordering::Relaxed);
            c.duplicates[i].fetch_add(duplicates[i], Ordering::Relaxed);
        }
        c.flows.fetch_add(n_flows, Ordering::Relaxed);
        c.commits.fetch_add(1, Ordering::Relaxed);
        for (topic, r) in refused {
            c.rejected[reason_index(r.reason)].fetch_add(1, Ordering::Relaxed);
            self.log.refused(&topic, &r);
        }
        // Dead letters stay under their cap between retention runs: trimmed once a quarter of
        // the cap has been written since the last trim.
        self.dead_bytes += dead_bytes;
        if self.dead_bytes > self.dead_letters_max / 4 {
            self.dead_bytes = 0;
            let n = db::trim_dead_letters(&self.client, self.dead_letters_max).await?;
            c.dead_letters_trimmed.fetch_add(n, Ordering::Relaxed);
        }
        Ok(())
    }
}

/// The SHA-256 of a payload, as `ingest_log.digest` keeps it.
fn digest(payload: &[u8]) -> Vec<u8> {
    use sha2::Digest as _;
    sha2::Sha256::digest(payload).to_vec()
}

/// `device_streams` after a batch: `taken` are the (device, stream, seq) newly taken, in the
/// order they came; an arrival below the stream's highest seq so far is a regression.
async fn update_sequences(
    tx: &tokio_postgres::Transaction<'_>,
    taken: &[(String, String, i64)],
    conflicts: &HashMap<(String, String), i64>,
) -> Result<(), tokio_postgres::Error> {
    if taken.is_empty() && conflicts.is_empty() {
        return Ok(());
    }
    let keys: HashSet<(&str, &str)> = taken
        .iter()
        .map(|(d, s, _)| (d.as_str(), s.as_str()))
        .chain(conflicts.keys().map(|(d, s)| (d.as_str(), s.as_str())))
        .collect();
    let (devs, streams): (Vec<&str>, Vec<&str>) = keys.iter().copied().unzip();
    let mut last: HashMap<(String, String), i64> = tx
        .query(
            "SELECT t.device, t.stream, t.last_seq FROM device_streams t
             JOIN unnest($1::text[], $2::text[]) AS u(d, s) ON t.device = u.d AND t.stream = u.s",
            &[&devs, &streams],
        )
        .await?
        .iter()
        .map(|r| ((r.get(0), r.get(1)), r.get(2)))
        .collect();
    // (highest, received, regressions) per stream in this batch.
    let mut delta: HashMap<(&str, &str), (i64, i64, i64)> = HashMap::new();
    for (d, s, seq) in taken {
        let high = last.entry((d.clone(), s.clone())).or_insert(0);
        let e = delta.entry((d.as_str(), s.as_str())).or_insert((0, 0, 0));
        e.0 = e.0.max(*seq);
        e.1 += 1;
        if *seq < *high {
            e.2 += 1;
        }
        *high = (*high).max(*seq);
    }
    let (mut d_col, mut s_col) = (Vec::new(), Vec::new());
    let (mut high_col, mut received_col, mut regressions_col, mut conflicts_col) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (d, s) in keys {
        let (high, received, regressions) = delta.get(&(d, s)).copied().unwrap_or_default();
        d_col.push(d);
        s_col.push(s);
        high_col.push(high);
        received_col.push(received);
        regressions_col.push(regressions);
        conflicts_col.push(conflicts.get(&(d.to_string(), s.to_string())).copied().unwrap_or(0));
    }
    tx.execute(
        "INSERT INTO device_streams AS t (device, stream, last_seq, received, regressions, conflicts)
         SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[], $4::bigint[], $5::bigint[], $6::bigint[])
         ON CONFLICT (device, stream) DO UPDATE SET
           last_seq = greatest(t.last_seq, excluded.last_seq),
           received = t.received + excluded.received,
           regressions = t.regressions + excluded.regressions,
           conflicts = t.conflicts + excluded.conflicts",
        &[&d_col, &s_col, &high_col, &received_col, &regressions_col, &conflicts_col],
    )
    .await?;
    Ok(())
}

/// `device_streams.acked_seq`, `missing` and `lost` after a batch, for the confirmed streams in
/// it. `taken` are the (device, stream, seq) newly logged; `floors` the edges' outbox floors
/// from metrics messages: below a floor the edge will never send again, so a seq there the
/// hub never received is lost, counted once, and confirmed past.
async fn advance_acks(
    tx: &tokio_postgres::Transaction<'_>,
    taken: &[SeqKey],
    floors: &[SeqKey],
) -> Result<(), tokio_postgres::Error> {
    let confirmed = |s: &str| Stream::from_name(s).is_some_and(|s| s.confirmed());
    if !floors.is_empty() {
        // The highest floor per stream in the batch.
        let mut high: HashMap<(&str, &str), i64> = HashMap::new();
        for (d, s, f) in floors.iter().filter(|k| confirmed(&k.1)) {
            let e = high.entry((d.as_str(), s.as_str())).or_insert(*f);
            *e = (*e).max(*f);
        }
        let (mut d_col, mut s_col, mut f_col) = (Vec::new(), Vec::new(), Vec::new());
        for ((d, s), f) in high {
            d_col.push(d);
            s_col.push(s);
            f_col.push(f);
        }
        // A stream with nothing received yet may already have lost its first seqs.
        tx.execute(
            "INSERT INTO device_streams (device, stream)
             SELECT u.d, u.s FROM unnest($1::text[], $2::text[]) AS u(d, s)
             JOIN devices ON devices.id = u.d
             ON CONFLICT DO NOTHING",
            &[&d_col, &s_col],
        )
        .await?;
        let lost = tx
            .query(
                "UPDATE device_streams t SET
                   lost = t.lost + (u.f - 1 - t.acked_seq) - (
                     SELECT count(*) FROM ingest_log l WHERE l.device = t.device
                       AND l.stream = t.stream AND l.seq > t.acked_seq AND l.seq < u.f),
                   acked_seq = u.f - 1
                 FROM unnest($1::text[], $2::text[], $3::bigint[]) AS u(d, s, f)
                 WHERE t.device = u.d AND t.stream = u.s AND t.acked_seq < u.f - 1
                 RETURNING t.device, t.stream, t.acked_seq, t.lost",
                &[&d_col, &s_col, &f_col],
            )
            .await?;
        for r in lost {
            let (device, stream, upto, lost): (String, String, i64, i64) =
                (r.get(0), r.get(1), r.get(2), r.get(3));
            tracing::warn!(
                device,
                stream,
                upto,
                lost_total = lost,
                "seqs the edge no longer holds never came: counted lost, confirmed past"
            );
        }
    }
    let keys: HashSet<(&str, &str)> = taken
        .iter()
        .chain(floors)
        .filter(|k| confirmed(&k.1))
        .map(|(d, s, _)| (d.as_str(), s.as_str()))
        .collect();
    if keys.is_empty() {
        return Ok(());
    }
    let (d_col, s_col): (Vec<&str>, Vec<&str>) = keys.into_iter().unzip();
    // Confirmed: the run of logged seqs right above acked_seq (seq - row_number() is constant
    // along a run, and equals acked_seq on the one that starts right after it).
    tx.execute(
        "UPDATE device_streams t SET acked_seq = coalesce((
           SELECT max(x.seq) FROM (
             SELECT l.seq, l.seq - row_number() OVER (ORDER BY l.seq) AS g FROM ingest_log l
             WHERE l.device = t.device AND l.stream = t.stream AND l.seq > t.acked_seq) x
           WHERE x.g = t.acked_seq), t.acked_seq)
         FROM unnest($1::text[], $2::text[]) AS u(d, s)
         WHERE t.device = u.d AND t.stream = u.s",
        &[&d_col, &s_col],
    )
    .await?;
    tx.execute(
        "UPDATE device_streams t SET missing = greatest(t.last_seq - t.acked_seq - (
           SELECT count(*) FROM ingest_log l WHERE l.device = t.device AND l.stream = t.stream
             AND l.seq > t.acked_seq), 0)
         FROM unnest($1::text[], $2::text[]) AS u(d, s)
         WHERE t.device = u.d AND t.stream = u.s",
        &[&d_col, &s_col],
    )
    .await?;
    Ok(())
}

/// Why an evidence part of `bytes` may not be kept, if it may not: its episode would hold
/// more than `ingest.evidence_max_mb`, or (for an episode the hub does not know yet) the
/// device's evidence of unknown episodes would.
async fn evidence_over(
    tx: &tokio_postgres::Transaction<'_>,
    e: &firmware::proto::EvidenceMsg,
    bytes: usize,
    max: u64,
) -> Result<Option<String>, tokio_postgres::Error> {
    let edge_id = i64::try_from(e.anomaly).unwrap_or(i64::MAX);
    let row = tx
        .query_one(
            "SELECT
               coalesce(sum(octet_length(pcap)) FILTER (WHERE edge_id = $2), 0)::bigint,
               coalesce(sum(octet_length(pcap)) FILTER (WHERE NOT EXISTS (
                 SELECT 1 FROM anomalies a WHERE a.device = e.device AND a.edge_id = e.edge_id
               )), 0)::bigint,
               EXISTS (SELECT 1 FROM anomalies WHERE device = $1 AND edge_id = $2)
             FROM anomaly_evidence e WHERE device = $1",
            &[&e.device.as_str(), &edge_id],
        )
        .await?;
    let (episode, orphans, known): (i64, i64, bool) = (row.get(0), row.get(1), row.get(2));
    let with = |held: i64| held.max(0) as u64 + bytes as u64;
    Ok(if with(episode) > max {
        Some(format!(
            "episode {} would hold {} bytes of evidence, over ingest.evidence_max_mb ({max} bytes)",
            e.anomaly,
            with(episode)
        ))
    } else if !known && with(orphans) > max {
        Some(format!(
            "episode {} is not known and the device's evidence of unknown episodes would be {} bytes, over {max}",
            e.anomaly,
            with(orphans)
        ))
    } else {
        None
    })
}

/// Keep a refused message in `dead_letters`; the bytes it took. An oversize payload is kept cut
/// to the largest accepted (the detail says how large it was): what a dead letter holds is
/// bounded.
async fn insert_dead_letter(
    tx: &tokio_postgres::Transaction<'_>,
    m: &Incoming,
    r: &Refusal,
) -> Result<u64, tokio_postgres::Error> {
    let kept = &m.payload[..m.payload.len().min(crate::contract::MAX_PAYLOAD)];
    tx.execute(
        "INSERT INTO dead_letters (topic, reason, detail, payload) VALUES ($1, $2, $3, $4)",
        &[&m.topic, &r.reason, &r.detail, &kept],
    )
    .await?;
    Ok((kept.len() + r.detail.len()) as u64)
}

async fn insert_stats(
    tx: &tokio_postgres::Transaction<'_>,
    s: &firmware::proto::StatsMsg,
) -> Result<(), tokio_postgres::Error> {
    let n = |v: u64| v as i64;
    tx.execute(
        "INSERT INTO traffic_stats (device, seq, interval_start, interval_end, packets, bytes,
         tcp_packets, udp_packets, icmp_packets, other_packets, flows_started, flows_ended,
         parse_errors, top_ports, top_talkers)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)",
        &[
            &s.device.as_str(),
            &(s.seq as i64),
            &time(s.interval_start),
            &time(s.interval_end),
            &n(s.packets),
            &n(s.bytes),
            &n(s.tcp_packets),
            &n(s.udp_packets),
            &n(s.icmp_packets),
            &n(s.other_packets),
            &n(s.flows_started),
            &n(s.flows_ended),
            &n(s.parse_errors),
            &serde_json::to_value(&s.top_ports).unwrap_or_default(),
            &serde_json::to_value(&s.top_talkers).unwrap_or_default(),
        ],
    )
    .await?;
    // The rollups add the interval just stored (read back by its key: one list of values).
    for (table, unit) in [("traffic_stats_1m", "minute"), ("traffic_stats_1h", "hour")] {
        tx.execute(
            &format!(
                "INSERT INTO {table} AS t (device, bucket, packets, bytes, tcp_packets, udp_packets,
                 icmp_packets, other_packets, flows_started, flows_ended)
                 SELECT device, date_trunc('{unit}', interval_start), packets, bytes, tcp_packets,
                        udp_packets, icmp_packets, other_packets, flows_started, flows_ended
                 FROM traffic_stats WHERE device = $1 AND seq = $2 AND interval_start = $3
                 ON CONFLICT (device, bucket) DO UPDATE SET
                   packets = tapwatch_sat(t.packets::numeric + excluded.packets), bytes = tapwatch_sat(t.bytes::numeric + excluded.bytes),
                   tcp_packets = tapwatch_sat(t.tcp_packets::numeric + excluded.tcp_packets),
                   udp_packets = tapwatch_sat(t.udp_packets::numeric + excluded.udp_packets),
                   icmp_packets = tapwatch_sat(t.icmp_packets::numeric + excluded.icmp_packets),
                   other_packets = tapwatch_sat(t.other_packets::numeric + excluded.other_packets),
                   flows_started = tapwatch_sat(t.flows_started::numeric + excluded.flows_started),
                   flows_ended = tapwatch_sat(t.flows_ended::numeric + excluded.flows_ended)"
            ),
            &[&s.device.as_str(), &(s.seq as i64), &time(s.interval_start)],
        )
        .await?;
    }
    // Top ports and talkers by the hour (what the API's port mix and top talkers read).
    let mut what = Vec::new();
    let mut key = Vec::new();
    let mut packets = Vec::new();
    let mut bytes = Vec::new();
    for p in &s.top_ports {
        what.push("port");
        key.push(format!("{}/{}", p.protocol, p.port));
        packets.push(p.packets as i64);
        bytes.push(p.bytes as i64);
    }
    for h in &s.top_talkers {
        what.push("host");
        key.push(h.ip.to_string());
        packets.push(h.packets as i64);
        bytes.push(h.bytes as i64);
    }
    if !what.is_empty() {
        tx.execute(
            "INSERT INTO traffic_top_1h AS t (device, bucket, what, key, packets, bytes)
             SELECT $1, date_trunc('hour', $2::timestamptz), w, k, tapwatch_sat(sum(p)), tapwatch_sat(sum(b))
             FROM unnest($3::text[], $4::text[], $5::bigint[], $6::bigint[]) AS u(w, k, p, b)
             GROUP BY w, k
             ON CONFLICT (device, bucket, what, key) DO UPDATE SET
               packets = tapwatch_sat(t.packets::numeric + excluded.packets), bytes = tapwatch_sat(t.bytes::numeric + excluded.bytes)",
            &[&s.device.as_str(), &time(s.interval_start), &what, &key, &packets, &bytes],
        )
        .await?;
    }
    Ok(())
}

/// Anomaly episodes in one statement: new ones inserted, known ones updated when the message is
/// later than what is stored (state and notes set at the hub are kept).
async fn upsert_anomalies(
    tx: &tokio_postgres::Transaction<'_>,
    msgs: impl Iterator<Item = &firmware::proto::AnomalyMsg>,
) -> Result<(), tokio_postgres::Error> {
    let msgs: Vec<&firmware::proto::AnomalyMsg> = msgs.collect();
    if msgs.is_empty() {
        return Ok(());
    }
    let name = |v: serde_json::Value| v.as_str().unwrap_or_default().to_string();
    let col = |f: &dyn Fn(&firmware::proto::AnomalyMsg) -> i64| -> Vec<i64> {
        msgs.iter().map(|a| f(a)).collect()
    };
    let device: Vec<&str> = msgs.iter().map(|a| a.device.as_str()).collect();
    let edge_id = col(&|a| a.id as i64);
    let seq = col(&|a| a.seq as i64);
    let kind: Vec<String> = msgs.iter().map(|a| name(serde_json::json!(a.kind))).collect();
    let severity: Vec<String> = msgs.iter().map(|a| name(serde_json::json!(a.severity))).collect();
    let confidence: Vec<f32> = msgs.iter().map(|a| a.confidence).collect();
    let score: Vec<f32> = msgs.iter().map(|a| a.score).collect();
    let threshold: Vec<f32> = msgs.iter().map(|a| a.threshold).collect();
    let detector: Vec<&str> = msgs.iter().map(|a| a.detector.as_str()).collect();
    let src_ip: Vec<std::net::IpAddr> = msgs.iter().map(|a| a.src_ip).collect();
    let dst_ip: Vec<Option<std::net::IpAddr>> = msgs.iter().map(|a| a.dst_ip).collect();
    let dst_port: Vec<Option<i32>> = msgs.iter().map(|a| a.dst_port.map(i32::from)).collect();
    let protocol: Vec<Option<i16>> = msgs.iter().map(|a| a.protocol.map(i16::from)).collect();
    let first_seen: Vec<std::time::SystemTime> = msgs.iter().map(|a| time(a.first_seen)).collect();
    let last_seen: Vec<std::time::SystemTime> = msgs.iter().map(|a| time(a.last_seen)).collect();
    let count = col(&|a| a.count as i64);
    let reasons: Vec<serde_json::Value> =
        msgs.iter().map(|a| serde_json::to_value(&a.reasons).unwrap_or_default()).collect();
    tx.execute(
        "INSERT INTO anomalies (device, edge_id, seq, kind, severity, confidence, score, threshold,
         detector, src_ip, dst_ip, dst_port, protocol, first_seen, last_seen, count, reasons)
         SELECT * FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::text[], $5::text[],
           $6::real[], $7::real[], $8::real[], $9::text[], $10::inet[], $11::inet[], $12::int[],
           $13::smallint[], $14::timestamptz[], $15::timestamptz[], $16::bigint[], $17::jsonb[])
         ON CONFLICT (device, edge_id) DO UPDATE SET
           seq = excluded.seq, severity = excluded.severity, confidence = excluded.confidence,
           score = excluded.score, threshold = excluded.threshold, last_seen = excluded.last_seen,
           count = excluded.count, reasons = excluded.reasons
         WHERE anomalies.seq < excluded.seq",
        &[
            &device,
            &edge_id,
            &seq,
            &kind,
            &severity,
            &confidence,
            &score,
            &threshold,
            &detector,
            &src_ip,
            &dst_ip,
            &dst_port,
            &protocol,
            &first_seen,
            &last_seen,
            &count,
            &reasons,
        ],
    )
    .await?;
    Ok(())
}

/// Binary COPY of the flows of new batches.
async fn copy_flows(
    tx: &tokio_postgres::Transaction<'_>,
    batches: &[&firmware::proto::FlowBatch],
) -> Result<u64, tokio_postgres::Error> {
    if batches.iter().all(|b| b.flows.is_empty()) {
        return Ok(0);
    }
    let sink = tx
        .copy_in(
            "COPY traffic_features (device, batch_seq, idx, start_ts, end_ts, src_ip, src_port,
             dst_ip, dst_port, protocol, vlan, end_reason, feature_set, features)
             FROM STDIN (FORMAT binary)",
        )
        .await?;
    let types = [
        Type::TEXT,
        Type::INT8,
        Type::INT2,
        Type::TIMESTAMPTZ,
        Type::TIMESTAMPTZ,
        Type::INET,
        Type::INT4,
        Type::INET,
        Type::INT4,
        Type::INT2,
        Type::INT4,
        Type::TEXT,
        Type::INT4,
        Type::FLOAT4_ARRAY,
    ];
    let writer = BinaryCopyInWriter::new(sink, &types);
    let mut writer = std::pin::pin!(writer);
    for b in batches {
        for (i, f) in b.flows.iter().enumerate() {
            let features: &[f32] = &f.features;
            let row: [&(dyn ToSql + Sync); 14] = [
                &b.device.as_str(),
                &(b.seq as i64),
                &(i as i16),
                &time(f.start),
                &time(f.end),
                &f.src_ip,
                &i32::from(f.src_port),
                &f.dst_ip,
                &i32::from(f.dst_port),
                &i16::from(f.protocol),
                &i32::from(f.vlan),
                &f.end_reason.name(),
                &(b.feature_set as i32),
                &features,
            ];
            writer.as_mut().write(&row).await?;
        }
    }
    writer.finish().await
}

fn panic_text(panic: &(dyn std::any::Any + Send)) -> &str {
    panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("no message")
}

/// After a batch's commit panicked: each message committed alone on a fresh connection, and
/// one that panics alone kept as a dead letter (reason `panic`), so no message can stop the
/// stream. `Err` is the database away, as for [`Ingestor::commit`].
async fn one_by_one(
    config: &Config,
    tls: &db::PgTls,
    counters: &Arc<IngestCounters>,
    batch: &[Prepared],
) -> Result<Ingestor, tokio_postgres::Error> {
    let fresh = || async {
        db::connect_tls(&config.postgres.url, tls)
            .await
            .map(|c| Ingestor::new(c, config, counters.clone()))
    };
    let mut ing = fresh().await?;
    for p in batch {
        match AssertUnwindSafe(ing.commit(std::slice::from_ref(p))).catch_unwind().await {
            Ok(r) => r?,
            Err(panic) => {
                let detail = format!("committing it panicked: {}", panic_text(&*panic));
                tracing::error!(topic = %p.incoming.topic, "ingest: {detail}; kept as a dead letter");
                ing = fresh().await?;
                ing.dead_letter(p, "panic", detail).await?;
            }
        }
    }
    Ok(ing)
}

/// Run the ingest until `stop`: the MQTT loop, batching, commits, acknowledgements, and
/// retention. Reconnects to the broker and to PostgreSQL as needed.
/// Wait for a `config` or `command` event of the live feed (a device's desired configuration
/// changed, or a command was queued, at this hub or another), so that it goes to the broker now
/// rather than at the next turn; never, without a feed.
async fn config_changed(feed: &mut Option<tokio::sync::broadcast::Receiver<Arc<str>>>) {
    use tokio::sync::broadcast::error::RecvError;
    let Some(rx) = feed.as_mut() else { return std::future::pending().await };
    loop {
        match rx.recv().await {
            Ok(e) => {
                // PostgreSQL writes `{"type" : "config", ...}`.
                let event: serde_json::Value = serde_json::from_str(&e).unwrap_or_default();
                if event["type"] == "config" || event["type"] == "command" {
                    return;
                }
            }
            Err(RecvError::Lagged(_)) => return,
            Err(RecvError::Closed) => return std::future::pending().await,
        }
    }
}

/// Ingest until `stop`; `feed` (the live events) wakes it to send new desired configurations.
pub async fn run(
    config: Config,
    counters: Arc<IngestCounters>,
    mut stop: tokio::sync::watch::Receiver<bool>,
    mut feed: Option<tokio::sync::broadcast::Receiver<Arc<str>>>,
) -> Result<(), String> {
    use rumqttc::v5::mqttbytes::v5::{Filter, Packet};
    use rumqttc::v5::mqttbytes::QoS;
    use rumqttc::v5::{AsyncClient, Event};

    let pg_tls = db::PgTls::from_config(&config.postgres)?;
    let mut o = config.mqtt.options(&config.mqtt.client_id, None)?;
    o.set_keep_alive(Duration::from_secs(config.mqtt.keepalive_s.into()))
        .set_clean_start(false)
        .set_session_expiry_interval(Some(config.mqtt.session_expiry_s))
        .set_receive_maximum(Some(config.mqtt.receive_maximum))
        .set_max_packet_size(Some(MAX_PACKET))
        .set_manual_acks(true);
    let (client, mut eventloop) =
        AsyncClient::new(o, usize::from(config.mqtt.receive_maximum) + 64);
    let filter = config.mqtt.subscription();

    // The event loop runs on a task of its own (keep-alives go on while a batch commits) and
    // hands publishes over.
    // Unbounded, yet bounded in fact: the broker sends at most receive_maximum messages that are
    // not acknowledged. The event loop must never wait here: the acknowledgements the ingest
    // sends go through it (waiting would deadlock both).
    let (tx, mut rx) =
        tokio::sync::mpsc::unbounded_channel::<rumqttc::v5::mqttbytes::v5::Publish>();
    let loop_counters = counters.clone();
    let sub_client = client.clone();
    let mut loop_stop = stop.clone();
    let mqtt = tokio::spawn(async move {
        let mut backoff = Duration::from_millis(200);
        let mut last_log: Option<Instant> = None;
        loop {
            tokio::select! {
                ev = eventloop.poll() => match ev {
                    Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                        backoff = Duration::from_millis(200);
                        loop_counters.mqtt_connected.store(1, Ordering::Relaxed);
                        tracing::info!(session_present = ack.session_present, "mqtt: connected");
                        // Subscribing again with a present session is harmless.
                        let f = Filter::new(filter.clone(), QoS::AtLeastOnce);
                        if let Err(e) = sub_client.subscribe_many([f]).await {
                            tracing::error!("mqtt: cannot subscribe: {e}");
                        }
                    }
                    Ok(Event::Incoming(Packet::SubAck(ack))) => {
                        // Until the first subscription of this client id, the broker keeps
                        // nothing for it: edges that publish earlier are not heard.
                        tracing::info!(filter = %filter, codes = ?ack.return_codes, "mqtt: subscribed");
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        // Our own acks (and any hub-to-edge topic) come back through the
                        // subscription too: the batcher passes them by, and they are
                        // acknowledged with their batch, in the order they came (MQTT wants
                        // PUBACKs in the order of the PUBLISHes; a broker may drop a client
                        // that acknowledges out of order, as rumqttd does).
                        if tx.send(p).is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        loop_counters.mqtt_connected.store(0, Ordering::Relaxed);
                        if last_log.is_none_or(|t| t.elapsed() >= Duration::from_secs(60)) {
                            tracing::warn!("mqtt: no connection to the broker ({e}); retrying");
                            last_log = Some(Instant::now());
                        }
                        tokio::select! {
                            _ = tokio::time::sleep(backoff) => {}
                            _ = loop_stop.changed() => return,
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(10));
                    }
                },
                _ = loop_stop.changed() => return,
            }
        }
    });

    let mut ingestor: Option<Ingestor> = None;
    let mut db_backoff = Duration::from_millis(200);
    let batch_max = config.ingest.batch_messages;
    let batch_wait = Duration::from_millis(config.ingest.batch_ms);
    let mut last_retention: Option<Instant> = None;
    let mut last_refresh: Option<Instant> = None;
    let fleet_key = config.fleet.signing_key()?;
    let retention_every = Duration::from_secs(config.retention.interval_s.into());
    // The batching stage decodes messages as they arrive (CPU) while this task commits the
    // previous batch (PostgreSQL): on two cores the two overlap.
    type Batch = (Vec<rumqttc::v5::mqttbytes::v5::Publish>, Vec<Prepared>);
    let (btx, mut batches) = tokio::sync::mpsc::channel::<Batch>(1);
    let prefix = config.mqtt.topic_prefix.clone();
    let batcher = tokio::spawn(async move {
        loop {
            // A batch: the first message waits as long as it takes, the rest at most batch_ms.
            let mut batch = Vec::new();
            let mut prepared = Vec::new();
            let take = |p: &rumqttc::v5::mqttbytes::v5::Publish, prepared: &mut Vec<Prepared>| {
                let topic = String::from_utf8_lossy(&p.topic).into_owned();
                if is_hub_to_edge(&prefix, &topic) {
                    return; // acknowledged in its place, not ingested
                }
                prepared.push(prepare(&prefix, Incoming { topic, payload: p.payload.clone() }));
            };
            tokio::select! {
                m = rx.recv() => match m {
                    Some(p) => {
                        take(&p, &mut prepared);
                        batch.push(p);
                    }
                    None => return,
                },
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                () = config_changed(&mut feed) => {}
            }
            if !batch.is_empty() {
                let deadline = tokio::time::Instant::now() + batch_wait;
                while batch.len() < batch_max {
                    match tokio::time::timeout_at(deadline, rx.recv()).await {
                        Ok(Some(p)) => {
                            take(&p, &mut prepared);
                            batch.push(p);
                        }
                        Ok(None) | Err(_) => break,
                    }
                }
            }
            // An empty batch still goes: the committer runs retention on it.
            if btx.send((batch, prepared)).await.is_err() {
                return;
            }
        }
    });
    'outer: loop {
        let (batch, incoming) = tokio::select! {
            b = batches.recv() => match b {
                Some(b) => b,
                None => break,
            },
            _ = stop.changed() => break,
        };
        // Commit, retrying while the database is away; then acknowledge.
        loop {
            if ingestor.is_none() {
                match db::connect_tls(&config.postgres.url, &pg_tls).await {
                    Ok(c) => {
                        counters.db_connected.store(1, Ordering::Relaxed);
                        tracing::info!("postgres: connected");
                        // The backoff starts again on a commit, not here: a database that
                        // takes connections but refuses writes is not tried five times a second.
                        ingestor = Some(Ingestor::new(c, &config, counters.clone()));
                    }
                    Err(e) => {
                        tracing::warn!("postgres: cannot connect ({e}); retrying");
                        tokio::select! {
                            _ = tokio::time::sleep(db_backoff) => {}
                            _ = stop.changed() => break 'outer,
                        }
                        db_backoff = (db_backoff * 2).min(Duration::from_secs(10));
                        continue;
                    }
                }
            }
            let Some(ing) = ingestor.as_mut() else { continue };
            if incoming.is_empty() {
                break;
            }
            let committed = AssertUnwindSafe(ing.commit(&incoming)).catch_unwind().await;
            let committed = match committed {
                Ok(r) => r,
                Err(panic) => {
                    counters.panics.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(
                        "ingest: a batch's commit panicked ({}); taking it one message at a time",
                        panic_text(&*panic)
                    );
                    // The connection may be inside a transaction: start again on a new one.
                    ingestor = None;
                    one_by_one(&config, &pg_tls, &counters, &incoming).await.map(|ing| {
                        ingestor = Some(ing);
                    })
                }
            };
            match committed {
                Ok(()) => {
                    db_backoff = Duration::from_millis(200);
                    break;
                }
                Err(e) => {
                    counters.commit_errors.fetch_add(1, Ordering::Relaxed);
                    counters.db_connected.store(0, Ordering::Relaxed);
                    tracing::warn!(
                        "postgres: batch not committed ({}); retrying in {} ms",
                        db_error_text(&e),
                        db_backoff.as_millis()
                    );
                    ingestor = None;
                    tokio::select! {
                        _ = tokio::time::sleep(db_backoff) => {}
                        _ = stop.changed() => break 'outer,
                    }
                    db_backoff = (db_backoff * 2).min(Duration::from_secs(10));
                }
            }
        }
        for p in &batch {
            if client.ack(p).await.is_ok() {
                counters.acked.fetch_add(1, Ordering::Relaxed);
            }
        }
        // Then tell the edges what is committed: they delete it from their outboxes.
        if let Some(ing) = ingestor.as_mut() {
            match ing.acks().await {
                Ok(acks) => {
                    for (device, payload) in acks {
                        let Some(t) = firmware::proto::ack_topic(&device) else { continue };
                        let topic = format!("{}{t}", config.mqtt.topic_prefix);
                        if client.publish(topic, QoS::AtLeastOnce, true, payload).await.is_ok() {
                            counters.acks_published.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                Err(e) => tracing::warn!("postgres: cannot read what to confirm ({e}); next batch"),
            }
        }
        // The edges' configurations: merged again now and then (a device added, a group
        // changed), and each new desired revision handed to the broker, retained.
        if let Some(ing) = ingestor.as_mut() {
            if last_refresh.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
                last_refresh = Some(Instant::now());
                match crate::fleet::refresh(ing.client()).await {
                    Ok(p) if !p.is_empty() => tracing::warn!("fleet: {}", p.join("; ")),
                    Ok(_) => {}
                    Err(e) => tracing::warn!("fleet: cannot merge the configurations ({e})"),
                }
            }
            match crate::fleet::unpublished(
                ing.client(),
                fleet_key.as_ref(),
                &config.fleet.model_url,
            )
            .await
            {
                Ok(configs) => {
                    for (device, revision, payload) in configs {
                        let Some(t) = firmware::proto::config_topic(&device) else { continue };
                        let topic = format!("{}{t}", config.mqtt.topic_prefix);
                        if client.publish(topic, QoS::AtLeastOnce, true, payload).await.is_ok() {
                            counters.configs_published.fetch_add(1, Ordering::Relaxed);
                            if let Err(e) =
                                crate::fleet::published(ing.client(), &device, revision).await
                            {
                                tracing::warn!(
                                    "fleet: cannot mark {device}'s configuration sent ({e})"
                                );
                            }
                        }
                    }
                }
                Err(e) => tracing::warn!("fleet: cannot read the configurations to send ({e})"),
            }
            // Commands, not retained (a command is for now).
            match crate::fleet::unpublished_commands(ing.client(), fleet_key.as_ref()).await {
                Ok(commands) => {
                    for (id, device, payload) in commands {
                        let Some(t) = firmware::proto::commands_topic(&device) else { continue };
                        let topic = format!("{}{t}", config.mqtt.topic_prefix);
                        if client.publish(topic, QoS::AtLeastOnce, false, payload).await.is_ok() {
                            counters.commands_published.fetch_add(1, Ordering::Relaxed);
                            if let Err(e) = crate::fleet::command_published(ing.client(), id).await
                            {
                                tracing::warn!("fleet: cannot mark command {id} sent ({e})");
                            }
                        }
                    }
                }
                Err(e) => tracing::warn!("fleet: cannot read the commands to send ({e})"),
            }
            if let Err(e) = crate::fleet::expire_commands(ing.client()).await {
                tracing::warn!("fleet: cannot expire old commands ({e})");
            }
        }
        if let Some(ing) = ingestor.as_mut() {
            if last_retention.is_none_or(|t| t.elapsed() >= retention_every) {
                last_retention = Some(Instant::now());
                let r = &config.retention;
                match db::retention(ing.client(), r, std::time::SystemTime::now()).await {
                    Ok(done) => {
                        counters
                            .dead_letters_trimmed
                            .fetch_add(done.dead_letters_trimmed, Ordering::Relaxed);
                        if done != db::Retained::default() {
                            tracing::info!(?done, "retention");
                            ing.partitions().forget();
                        }
                    }
                    Err(e) => tracing::warn!("retention failed: {e}"),
                }
            }
        }
    }
    let _ = client.disconnect().await;
    batcher.abort();
    mqtt.abort();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_a_database_refusing_all_writes_is_away_not_bad_data() {
        for code in [
            "08006", "53100", "53300", "57P01", "58030", "40001", "40P01", "25006", "42501",
            "55P03", "55006",
        ] {
            assert!(is_transient_code(code), "{code} is the database, not the data");
        }
        for code in ["22P02", "23505", "23502", "42P01", "22001", "54000", "42804"] {
            assert!(!is_transient_code(code), "{code} is the data");
        }
    }

    #[test]
    fn test_the_hubs_own_topics_are_not_ingested() {
        assert!(is_hub_to_edge("p/", "p/tapwatch/v1/tap-1/ack"));
        assert!(is_hub_to_edge("", "tapwatch/v1/tap-1/config"));
        assert!(!is_hub_to_edge("p/", "p/tapwatch/v1/tap-1/flows"));
        assert!(!is_hub_to_edge("p/", "q/tapwatch/v1/tap-1/ack"));
        assert!(!is_hub_to_edge("", "tapwatch/v1/ack"));
    }

    #[test]
    fn test_a_refused_message_keeps_the_seq_it_names() {
        let t = "tapwatch/v1/tap-1/flows";
        let key = |s: &str| Some(("tap-1".to_string(), s.to_string(), 7));
        assert_eq!(claimed(t, br#"{"device":"tap-1","seq":7,"flows":"x"}"#, "shape"), key("flows"));
        // Not when it names another device, no seq, or a seq out of range; not for status
        // (its seq is a clock); not when the refusal is about the topic or the size.
        assert_eq!(claimed(t, br#"{"device":"tap-2","seq":7}"#, "shape"), None);
        assert_eq!(claimed(t, br#"{"device":"tap-1"}"#, "shape"), None);
        assert_eq!(claimed(t, br#"{"device":"tap-1","seq":0}"#, "shape"), None);
        assert_eq!(claimed(t, br#"{"device":"tap-1","seq":-1}"#, "shape"), None);
        assert_eq!(claimed(t, br#"{"device":"tap-1","seq":18446744073709551615}"#, "range"), None);
        assert_eq!(claimed(t, b"\xff{", "malformed_json"), None);
        assert_eq!(claimed(t, br#"{"device":"tap-1","seq":7}"#, "oversize"), None);
        assert_eq!(
            claimed("tapwatch/v1/tap-1/status", br#"{"device":"tap-1","seq":7}"#, "shape"),
            None
        );
        assert_eq!(
            claimed("tapwatch/v1/tap-1/nope", br#"{"device":"tap-1","seq":7}"#, "topic"),
            None
        );
    }
}
