//! Edge to hub: the outbox of the store, sent over MQTT (rumqttc, QoS 1).
//!
//! The store writer queues a message in the `outbox` table in the same transaction as the rows
//! it describes ([`crate::store::Store::enable_outbox`]), with the next seq of its stream. This
//! module sends the outbox in id order, at most `sync.inflight` messages without the broker's
//! PUBACK (which paces the sending) and at most `sync.unconfirmed_max` without the hub's
//! confirmation. A message leaves the outbox only when the hub says it has committed it: the
//! hub publishes, retained on `tapwatch/v1/{device}/ack` ([`firmware::proto::AckMsg`]), per
//! stream the highest seq it has committed with nothing missing below it, and the edge deletes
//! through that seq. A PUBACK alone proves only that a broker held the message for a while: a
//! Mosquitto that restarts forgets a shared subscription, drops what arrives before the hub
//! subscribes again, and has already acknowledged it (issue 20). A message the hub has not
//! confirmed `sync.resend_after_s` after its PUBACK is sent again (the wait doubling per try),
//! and one the hub names as missing (it has later ones) is sent again at once. On any
//! connection error everything unconfirmed is sent again after reconnecting (with backoff): the
//! hub drops a message it already has by (device, stream, seq), so the link may double a
//! message but never lose one. A restart resumes from what the outbox still holds. With
//! `sync.confirm = "broker"` the PUBACK releases a message, as for a consumer that publishes
//! no acks.
//!
//! The retained `status` topic says `online` after each connect; the last will, set before each
//! connect, says `offline`. Their seq is the wall-clock millisecond of the connect (the will's one
//! more), so the hub can order them across reconnects, and never below the highest will seq an
//! earlier run kept in `sync_will`: after the clock steps back, a restarted edge still shows
//! online.
//!
//! The hub's configuration for this device comes, retained, on `tapwatch/v1/{device}/config`
//! ([`firmware::proto::ConfigMsg`]); with a [`Fleet`] link the newest one is handed to the
//! daemon, which checks and applies it and answers on the `config/applied` stream (through the
//! outbox, as everything else). Each status message names the revision and hash in force.
//!
//! Mapping a PUBACK to its message: rumqttc reports `Outgoing::Publish(pkid)` for each publish
//! request in the order the requests were made, and the session is clean, so nothing else is
//! published by the event loop on our behalf; a FIFO of the requests made gives each pkid its
//! outbox id.

use crate::config::{Confirm, SyncConfig};
use crate::store::{stream_index, write_transaction, StoreError};
use firmware::flow::EndReason;
use firmware::proto::{
    self, AckMsg, DeviceState, FlowBatch, FlowMsg, StatusMsg, Stream, FLOW_BATCH_MAX,
    SCHEMA_VERSION,
};
use rumqttc::{AsyncClient, Event, LastWill, MqttOptions, Outgoing, Packet, QoS, Transport};
use rusqlite::{params, Connection, OptionalExtension};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Counters of the link, for `/metrics`.
#[derive(Debug, Default)]
pub struct SyncCounters {
    /// Messages handed to the broker, by stream (order of [`Stream::ALL`]); a message sent
    /// again after a reconnect counts again.
    pub published: [AtomicU64; Stream::COUNT],
    /// Messages the broker acknowledged, by stream.
    pub acked: [AtomicU64; Stream::COUNT],
    /// Messages the hub confirmed committed (and the outbox released), by stream.
    pub confirmed: [AtomicU64; Stream::COUNT],
    /// Messages sent again because the hub had not confirmed them in time or named them
    /// missing, by stream.
    pub resent: [AtomicU64; Stream::COUNT],
    /// Messages acknowledged by the broker, waiting for the hub's confirmation.
    pub unconfirmed: AtomicU64,
    /// Seqs the hub counted lost (it never had them, the outbox no longer held them), by
    /// stream, as its last ack said.
    pub hub_lost: [AtomicU64; Stream::COUNT],
    /// Acks refused: not JSON of the contract, another device's, or confirming seqs this
    /// outbox never gave out (a hub that knew an earlier database of this device).
    pub acks_refused: AtomicU64,
    /// Flow records in acknowledged flow batches.
    pub flows_acked: AtomicU64,
    /// Flow records a batch named but store retention had deleted before they were sent.
    pub flows_lost_retention: AtomicU64,
    /// Flow records sent without their features: stored by a daemon of another feature set
    /// (before an upgrade), or as a blob that reads as no vector; the batch's feature set would
    /// mislabel them.
    pub flow_features_withheld: AtomicU64,
    /// 1 while connected.
    pub connected: AtomicU64,
    /// Connections made, and lost.
    pub connects: AtomicU64,
    pub disconnects: AtomicU64,
    /// Unix microseconds of the last acknowledgement by the broker, and confirmation by the hub.
    pub last_ack_us: AtomicU64,
    pub last_confirm_us: AtomicU64,
    /// The store's counters: the outbox depth the writer raises, the sender lowers.
    pub store: Arc<crate::store::StoreCounters>,
}

/// A message read from the outbox, ready to send.
#[derive(Debug)]
struct Outgoing1 {
    id: i64,
    stream: Stream,
    seq: u64,
    payload: Vec<u8>,
    flows: u64,
}

fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

/// Anomaly messages that may be on their way beyond the window (`sync.inflight`) and the
/// unconfirmed bound, so that an alert does not wait for a flood's flow batches to be acked.
const URGENT_RESERVE: usize = 16;

/// Which messages of the outbox a read takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lane {
    Any,
    /// Everything but the anomalies.
    Bulk,
    /// The anomalies alone.
    Anomalies,
}

/// id, stream, seq, created_us, payload, first_row, last_row.
type OutboxRow = (i64, String, i64, i64, Option<Vec<u8>>, Option<i64>, Option<i64>);

/// The sending side's view of the store's outbox (its own connection; WAL lets it read while
/// the writer writes).
#[derive(Debug)]
pub struct OutboxReader {
    conn: Connection,
    device: String,
    counters: Arc<SyncCounters>,
}

impl OutboxReader {
    pub fn open(path: &Path, device: &str, counters: Arc<SyncCounters>) -> Result<Self, String> {
        let conn = Connection::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
        conn.busy_timeout(Duration::from_secs(10)).map_err(|e| e.to_string())?;
        // The writer creates the tables (migrations); wait for them if it has not yet (the
        // newest, sync_will, is there once all are).
        for _ in 0..100 {
            let n: i64 = conn
                .query_row(
                    "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'sync_will'",
                    [],
                    |r| r.get(0),
                )
                .map_err(|e| e.to_string())?;
            if n == 1 {
                return Ok(OutboxReader { conn, device: device.to_string(), counters });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(format!("{}: the store has no outbox table", path.display()))
    }

    /// The highest status seq a last will of this device may carry at the broker (0: none).
    fn will_floor(&self) -> Result<u64, StoreError> {
        let seq: Option<i64> = self
            .conn
            .query_row("SELECT seq FROM sync_will WHERE id = 0", [], |r| r.get(0))
            .optional()?;
        Ok(seq.unwrap_or(0).max(0) as u64)
    }

    /// A last will with status seq `seq` is (or is about to be) at the broker.
    fn keep_will(&self, seq: u64) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT INTO sync_will (id, seq) VALUES (0, ?1)
             ON CONFLICT (id) DO UPDATE SET seq = max(seq, excluded.seq)",
            [seq as i64],
        )?;
        Ok(())
    }

    /// Messages in the outbox.
    pub fn depth(&self) -> Result<u64, StoreError> {
        Ok(self.conn.query_row("SELECT count(*) FROM outbox", [], |r| r.get::<_, i64>(0))? as u64)
    }

    /// Up to `n` messages with ids above `after`, in id order, but anomalies (they go by
    /// [`Self::urgent`]). A flow batch whose rows store retention deleted entirely is released
    /// here (and its flows counted as lost).
    fn next(&mut self, after: i64, n: usize) -> Result<Vec<Outgoing1>, StoreError> {
        self.read(Lane::Bulk, after, i64::MAX, n, true)
    }

    /// Up to `n` anomaly messages with seqs above `after`, in seq order: an alert goes ahead
    /// of the flow batches a flood queued before it (the anomalies stream keeps its own order;
    /// its evidence, queued after it, still follows it).
    fn urgent(&mut self, after: u64, n: usize) -> Result<Vec<Outgoing1>, StoreError> {
        self.read(Lane::Anomalies, after as i64, i64::MAX, n, true)
    }

    /// The message `id` again, if the outbox still holds it.
    fn again(&mut self, id: i64) -> Result<Option<Outgoing1>, StoreError> {
        Ok(self.read(Lane::Any, id - 1, id, 1, false)?.pop())
    }

    /// Messages of `lane` with ids (for the anomalies, seqs) in `after+1..=until`, at most `n`;
    /// `first_time` counts the flows of a batch that retention deleted in part (once, not at
    /// each resend).
    fn read(
        &mut self,
        lane: Lane,
        after: i64,
        until: i64,
        n: usize,
        first_time: bool,
    ) -> Result<Vec<Outgoing1>, StoreError> {
        let rows: Vec<OutboxRow> = {
            // The anomalies by the (stream, seq) index; the rest by id, skipping them. (`+ 0`: see
            // `store`'s note on LIMIT.)
            let mut stmt = self.conn.prepare_cached(match lane {
                Lane::Any => {
                    "SELECT id, stream, seq, created_us, payload, first_row, last_row FROM outbox
                     WHERE id > ?1 AND id <= ?2 ORDER BY id LIMIT ?3 + 0"
                }
                Lane::Bulk => {
                    "SELECT id, stream, seq, created_us, payload, first_row, last_row FROM outbox
                     WHERE id > ?1 AND id <= ?2 AND stream <> 'anomalies' ORDER BY id LIMIT ?3 + 0"
                }
                Lane::Anomalies => {
                    "SELECT id, stream, seq, created_us, payload, first_row, last_row FROM outbox
                     WHERE stream = 'anomalies' AND seq > ?1 AND seq <= ?2 ORDER BY seq LIMIT ?3 + 0"
                }
            })?;
            let rows = stmt.query_map(params![after, until, n as i64], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?))
            })?;
            rows.collect::<Result<_, _>>()?
        };
        let mut out = Vec::with_capacity(rows.len());
        let mut gone = Vec::new();
        for (id, stream, seq, created, payload, first, last) in rows {
            let Some(stream) = Stream::from_name(&stream) else {
                gone.push(id);
                continue;
            };
            let seq = seq as u64;
            match (payload, first, last) {
                (Some(payload), _, _) => out.push(Outgoing1 { id, stream, seq, payload, flows: 0 }),
                (None, Some(first), Some(last)) => {
                    let (payload, flows, withheld) = self.flow_batch(seq, created, first, last)?;
                    let named = (last - first + 1).max(0) as u64;
                    if first_time || flows == 0 {
                        self.counters
                            .flows_lost_retention
                            .fetch_add(named - flows, Ordering::Relaxed);
                    }
                    if first_time {
                        self.counters.flow_features_withheld.fetch_add(withheld, Ordering::Relaxed);
                    }
                    if flows == 0 {
                        gone.push(id);
                    } else {
                        out.push(Outgoing1 { id, stream, seq, payload, flows });
                    }
                }
                _ => gone.push(id),
            }
        }
        if !gone.is_empty() {
            self.release(&gone)?;
        }
        Ok(out)
    }

    /// The `flows` message of rows `first..=last` of traffic_features, how many it holds, and
    /// how many of them go without their features (stored as another feature set's).
    fn flow_batch(
        &mut self,
        seq: u64,
        ts: i64,
        first: i64,
        last: i64,
    ) -> Result<(Vec<u8>, u64, u64), StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT start_us, end_us, src_ip, src_port, dst_ip, dst_port, protocol, vlan,
                    end_reason, features, feature_set
             FROM traffic_features WHERE id BETWEEN ?1 AND ?2 ORDER BY id",
        )?;
        let mut batch = Box::new(FlowBatch {
            schema: SCHEMA_VERSION,
            device: self.device.as_str().try_into().unwrap_or_default(),
            seq,
            ts,
            feature_set: firmware::features::FEATURE_SET_VERSION,
            flows: heapless::Vec::new(),
        });
        let mut withheld = 0;
        let mut rows = stmt.query(params![first, last])?;
        while let Some(r) = rows.next()? {
            let parse_ip = |s: String| s.parse().unwrap_or(std::net::IpAddr::from([0, 0, 0, 0]));
            let blob: Vec<u8> = r.get(9)?;
            let set: i64 = r.get(10)?;
            let mut features = heapless::Vec::new();
            // The batch says its vectors are of this daemon's feature set: one of another
            // set goes without (the flow itself is sent; counted).
            match crate::store::decode_features(&blob)
                .filter(|_| set == i64::from(firmware::features::FEATURE_SET_VERSION))
            {
                Some(v) => {
                    let _ = features.extend_from_slice(&v);
                }
                None => withheld += 1,
            }
            let reason: String = r.get(8)?;
            let flow = FlowMsg {
                start: r.get(0)?,
                end: r.get(1)?,
                src_ip: parse_ip(r.get(2)?),
                src_port: r.get(3)?,
                dst_ip: parse_ip(r.get(4)?),
                dst_port: r.get(5)?,
                protocol: r.get(6)?,
                vlan: r.get(7)?,
                end_reason: EndReason::from_name(&reason).unwrap_or(EndReason::Flush),
                features,
            };
            if batch.flows.len() == FLOW_BATCH_MAX || batch.flows.push(flow).is_err() {
                break;
            }
        }
        let n = batch.flows.len() as u64;
        Ok((serde_json::to_vec(&*batch).unwrap_or_default(), n, withheld))
    }

    /// The hub has committed seqs 1..=`upto` of `stream`: delete them. `None` (nothing
    /// deleted) if this outbox never gave out `upto`: the ack is from a hub that knew an
    /// earlier database of this device, and deleting on it would lose new messages.
    fn confirm(&mut self, stream: Stream, upto: u64) -> Result<Option<u64>, StoreError> {
        let last: Option<i64> = self
            .conn
            .query_row("SELECT last FROM sync_seq WHERE stream = ?1", [stream.name()], |r| r.get(0))
            .ok();
        if last.is_none_or(|l| (l as u64) < upto) {
            return Ok(None);
        }
        let n = self.conn.execute(
            "DELETE FROM outbox WHERE stream = ?1 AND seq <= ?2",
            params![stream.name(), upto as i64],
        )? as u64;
        let _ = self.counters.store.outbox_depth.fetch_update(
            Ordering::Relaxed,
            Ordering::Relaxed,
            |d| Some(d.saturating_sub(n)),
        );
        Ok(Some(n))
    }

    /// Delete acknowledged (or unsendable) messages.
    fn release(&mut self, ids: &[i64]) -> Result<(), StoreError> {
        let tx = write_transaction(&mut self.conn)?;
        let mut n = 0u64;
        {
            let mut stmt = tx.prepare_cached("DELETE FROM outbox WHERE id = ?1")?;
            for id in ids {
                n += stmt.execute([id])? as u64;
            }
        }
        tx.commit()?;
        let _ = self.counters.store.outbox_depth.fetch_update(
            Ordering::Relaxed,
            Ordering::Relaxed,
            |d| Some(d.saturating_sub(n)),
        );
        Ok(())
    }
}

/// The topic of a stream with the configured prefix.
fn topic(prefix: &str, device: &str, stream: Stream) -> String {
    let t = proto::topic(device, stream).map(|t| t.to_string()).unwrap_or_default();
    format!("{prefix}{t}")
}

/// The link to the daemon's fleet configuration: where the newest configuration the hub sent
/// goes (only the newest matters, so a watch channel), and the revision and hash in force
/// that status messages carry. The default is no fleet configuration (offline tools, tests).
#[derive(Debug, Default)]
pub struct Fleet {
    pub configs: Option<tokio::sync::watch::Sender<Option<Vec<u8>>>>,
    /// Commands the hub sent, in order (each is done once; a full queue drops and logs).
    pub commands: Option<tokio::sync::mpsc::Sender<Vec<u8>>>,
    pub applied: Option<tokio::sync::watch::Receiver<(u64, String)>>,
}

impl Fleet {
    fn applied(&self) -> (u64, String) {
        self.applied.as_ref().map(|a| a.borrow().clone()).unwrap_or_default()
    }
}

fn status(
    device: &str,
    state: DeviceState,
    seq: u64,
    started: Instant,
    applied: &(u64, String),
) -> Vec<u8> {
    let msg = StatusMsg {
        schema: SCHEMA_VERSION,
        device: device.try_into().unwrap_or_default(),
        seq,
        ts: now_us(),
        state,
        // The release: an update's version when running from a slot.
        version: crate::update::running_version().as_str().try_into().unwrap_or_default(),
        uptime_s: started.elapsed().as_secs(),
        config_revision: applied.0,
        config_hash: applied.1.as_str().try_into().unwrap_or_default(),
    };
    serde_json::to_vec(&msg).unwrap_or_default()
}

/// The connection options `sync` asks for.
pub fn mqtt_options(cfg: &SyncConfig, device: &str) -> Result<MqttOptions, String> {
    let (host, port) = cfg.broker_addr()?;
    let id = if cfg.client_id.is_empty() { device } else { &cfg.client_id };
    let mut o = MqttOptions::new(id, host, port);
    o.set_keep_alive(Duration::from_secs(cfg.keepalive_s.into()))
        .set_clean_session(true)
        // Twice our window (with the anomalies' reserve) of packet ids: with at most that many
        // unacknowledged, the next id is always free, so rumqttc never holds a publish back
        // for an id collision and its `Outgoing::Publish` events come in request order (the
        // pkid mapping relies on it).
        .set_inflight((cfg.inflight.saturating_add(URGENT_RESERVE as u16)).saturating_mul(2))
        .set_max_packet_size(1 << 20, 1 << 20)
        .set_request_channel_capacity(usize::from(cfg.inflight) + URGENT_RESERVE + 16);
    if !cfg.username.is_empty() || !cfg.password_file.as_os_str().is_empty() {
        let password = if cfg.password_file.as_os_str().is_empty() {
            String::new()
        } else {
            let text = std::fs::read_to_string(&cfg.password_file)
                .map_err(|e| format!("sync.password_file {}: {e}", cfg.password_file.display()))?;
            text.lines().next().unwrap_or_default().to_string()
        };
        o.set_credentials(cfg.username.clone(), password);
    }
    if cfg.tls {
        let read = |p: &Path, what: &str| {
            std::fs::read(p).map_err(|e| format!("sync.{what} {}: {e}", p.display()))
        };
        let ca = read(&cfg.ca_file, "ca_file")?;
        let client_auth = if cfg.client_cert_file.as_os_str().is_empty() {
            None
        } else {
            Some((
                read(&cfg.client_cert_file, "client_cert_file")?,
                read(&cfg.client_key_file, "client_key_file")?,
            ))
        };
        // One process-wide crypto provider for rustls (ring); a second install is harmless.
        let _ = rustls::crypto::ring::default_provider().install_default();
        o.set_transport(Transport::tls(ca, client_auth, None));
    }
    Ok(o)
}

/// How the link loop ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Until {
    /// When told to stop (the daemon).
    Stopped,
    /// When the outbox is empty and every message acknowledged (`tapwatch-edge sync --drain`).
    Drained,
}

/// What the event-loop task reports to the sending loop.
#[derive(Debug)]
enum LinkEvent {
    /// Connected; the online status goes out with this seq (the will of this connection says
    /// offline with seq + 1).
    Connected(u64),
    /// A publish request was given this packet id.
    Published(u16),
    Acked(u16),
    /// A message on a topic we subscribed to (the hub's `ack` or `config`): topic, payload.
    Message(String, Vec<u8>),
    Disconnected,
}

/// Drive the MQTT event loop on its own task: `poll` is never cancelled half-way (a select on
/// it with a timer could drop a packet being written), reconnects back off, and before each
/// reconnect the last will gets a seq later than the connection before.
fn spawn_event_loop(
    mut eventloop: rumqttc::EventLoop,
    cfg: &SyncConfig,
    will: impl Fn(u64) -> LastWill + Send + 'static,
    first_seq: u64,
    events: tokio::sync::mpsc::UnboundedSender<LinkEvent>,
) -> tokio::task::JoinHandle<()> {
    let (min, max) =
        (Duration::from_millis(cfg.reconnect_min_ms), Duration::from_millis(cfg.reconnect_max_ms));
    let broker = cfg.broker.clone();
    tokio::spawn(async move {
        let mut backoff = min;
        let mut status_seq = first_seq;
        let mut last_error_log: Option<Instant> = None;
        loop {
            let e = match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    backoff = min;
                    LinkEvent::Connected(status_seq)
                }
                Ok(Event::Outgoing(Outgoing::Publish(pkid))) => LinkEvent::Published(pkid),
                Ok(Event::Incoming(Packet::PubAck(ack))) => LinkEvent::Acked(ack.pkid),
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    LinkEvent::Message(p.topic.clone(), p.payload.to_vec())
                }
                Ok(_) => continue,
                Err(e) => {
                    if last_error_log.is_none_or(|t| t.elapsed() > Duration::from_secs(60)) {
                        tracing::warn!(%broker, "sync: no connection ({e}); retrying");
                        last_error_log = Some(Instant::now());
                    }
                    if events.send(LinkEvent::Disconnected).is_err() {
                        return;
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(max);
                    status_seq = ((now_us() / 1000) as u64).max(status_seq + 2);
                    eventloop.mqtt_options.set_last_will(will(status_seq + 1));
                    continue;
                }
            };
            if events.send(e).is_err() {
                return;
            }
        }
    })
}

/// A message on its way: sent, acknowledged by the broker, or waiting for the hub.
#[derive(Debug, Clone, Copy)]
struct Pending {
    id: i64,
    stream: Stream,
    seq: u64,
    flows: u64,
    /// Times sent before this one.
    tries: u32,
}

/// A message the broker acknowledged, until the hub confirms it.
#[derive(Debug, Clone, Copy)]
struct Unconfirmed {
    m: Pending,
    /// When its PUBACK came, and when it goes again unless confirmed.
    acked: Instant,
    due: Instant,
}

/// How long the hub may take to confirm a message sent `tries` times before: the deadline,
/// doubling per try, at most 16 times it.
fn resend_wait(cfg: &SyncConfig, tries: u32) -> Duration {
    Duration::from_secs(u64::from(cfg.resend_after_s)) * (1u32 << tries.min(4))
}

/// What the sending loop keeps of the link: requests made, those in flight, those waiting for
/// the hub, and what the hub has confirmed.
struct Window {
    /// Requests made and not yet given a pkid: the outbox message, or None for a status
    /// message.
    requested: VecDeque<Option<Pending>>,
    inflight: HashMap<u16, Pending>,
    /// Acknowledged by the broker since the last turn of the loop.
    acked: Vec<Pending>,
    /// By outbox id.
    unconfirmed: BTreeMap<i64, Unconfirmed>,
    /// Per stream, the highest seq the hub has confirmed (this run).
    confirmed: [u64; Stream::COUNT],
}

impl Window {
    fn busy(&self) -> usize {
        self.requested.len() + self.inflight.len()
    }

    /// The hub's ack: delete what it confirms, resend at once what it names missing.
    fn take_ack(
        &mut self,
        payload: &[u8],
        device: &str,
        outbox: &mut OutboxReader,
        counters: &SyncCounters,
    ) -> Result<(), String> {
        let refuse = |why: String| {
            counters.acks_refused.fetch_add(1, Ordering::Relaxed);
            tracing::warn!("sync: hub ack refused: {why}");
            Ok(())
        };
        let ack: AckMsg = match serde_json::from_slice(payload) {
            Ok(a) => a,
            Err(e) => return refuse(format!("not an ack message ({e})")),
        };
        if ack.device.as_str() != device {
            return refuse(format!("it is {:?}'s", ack.device.as_str()));
        }
        let now = Instant::now();
        for a in &ack.streams {
            let i = stream_index(a.stream);
            counters.hub_lost[i].store(a.lost, Ordering::Relaxed);
            if !a.stream.confirmed() {
                continue;
            }
            if a.upto > self.confirmed[i] {
                match outbox.confirm(a.stream, a.upto) {
                    Ok(Some(n)) => {
                        self.confirmed[i] = a.upto;
                        counters.confirmed[i].fetch_add(n, Ordering::Relaxed);
                        counters.last_confirm_us.store(now_us() as u64, Ordering::Relaxed);
                        self.unconfirmed.retain(|_, u| u.m.stream != a.stream || u.m.seq > a.upto);
                    }
                    Ok(None) => {
                        refuse(format!(
                            "it confirms {} seq {} that this outbox never gave out",
                            a.stream.name(),
                            a.upto
                        ))?;
                    }
                    Err(e) => return Err(format!("sync: cannot release confirmed messages: {e}")),
                }
            }
            // Missing at the hub while it has later ones: lost on the way (a broker that
            // restarted). Sent again now, unless just sent (the hub may not have it yet).
            for u in self.unconfirmed.values_mut() {
                let missing = a.missing.iter().any(|r| (r.first..=r.last).contains(&u.m.seq));
                if u.m.stream == a.stream && missing && u.acked.elapsed() >= Duration::from_secs(2)
                {
                    u.due = now;
                }
            }
        }
        counters.unconfirmed.store(self.unconfirmed.len() as u64, Ordering::Relaxed);
        Ok(())
    }
}

/// Send the outbox until `until`; `stop` ends the loop early (it then says `offline`).
pub async fn run(
    cfg: SyncConfig,
    device: String,
    db: std::path::PathBuf,
    counters: Arc<SyncCounters>,
    until: Until,
    mut stop: tokio::sync::watch::Receiver<bool>,
    fleet: Fleet,
) -> Result<(), String> {
    let started = Instant::now();
    let fleet = Arc::new(fleet);
    let mut outbox = OutboxReader::open(&db, &device, counters.clone())?;
    let mut options = mqtt_options(&cfg, &device)?;
    let status_topic = topic(&cfg.topic_prefix, &device, Stream::Status);
    let ack_topic = format!(
        "{}{}",
        cfg.topic_prefix,
        proto::ack_topic(&device).map(|t| t.to_string()).unwrap_or_default()
    );
    let config_topic = format!(
        "{}{}",
        cfg.topic_prefix,
        proto::config_topic(&device).map(|t| t.to_string()).unwrap_or_default()
    );
    let commands_topic = format!(
        "{}{}",
        cfg.topic_prefix,
        proto::commands_topic(&device).map(|t| t.to_string()).unwrap_or_default()
    );
    let by_hub = cfg.confirm == Confirm::Hub;
    let will = {
        let (t, d, f) = (status_topic.clone(), device.clone(), fleet.clone());
        move |seq: u64| {
            LastWill::new(
                &t,
                status(&d, DeviceState::Offline, seq, started, &f.applied()),
                QoS::AtLeastOnce,
                true,
            )
        }
    };
    // Above every will an earlier run left, whatever the clock did since; kept before the
    // first connection can leave this one's will at the broker.
    let floor = outbox.will_floor().unwrap_or_else(|e| {
        tracing::warn!("sync: cannot read the last status seq kept (the clock alone sets it): {e}");
        0
    });
    let first_seq = ((now_us() / 1000) as u64).max(floor + 1);
    if let Err(e) = outbox.keep_will(first_seq + 1) {
        tracing::warn!("sync: cannot keep the status seq: {e}");
    }
    options.set_last_will(will(first_seq + 1));
    let (client, eventloop) =
        AsyncClient::new(options, usize::from(cfg.inflight) + URGENT_RESERVE + 16);
    let (etx, mut events) = tokio::sync::mpsc::unbounded_channel();
    let link = spawn_event_loop(eventloop, &cfg, will, first_seq, etx);
    let window = usize::from(cfg.inflight);
    let unconfirmed_max = cfg.unconfirmed_max as usize;
    let mut w = Window {
        requested: VecDeque::new(),
        inflight: HashMap::new(),
        acked: Vec::new(),
        unconfirmed: BTreeMap::new(),
        confirmed: [0; Stream::COUNT],
    };
    // The highest outbox id handed to the client on this connection, and the highest anomaly
    // seq (anomalies go first, by their own lane).
    let mut cursor = 0i64;
    let mut urgent = 0u64;
    let mut connected: Option<u64> = None;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let offline = |seq: u64| status(&device, DeviceState::Offline, seq, started, &fleet.applied());
    let result = loop {
        if !w.acked.is_empty() {
            let now = Instant::now();
            let mut release = Vec::new();
            for m in w.acked.drain(..) {
                counters.acked[stream_index(m.stream)].fetch_add(1, Ordering::Relaxed);
                counters.flows_acked.fetch_add(m.flows, Ordering::Relaxed);
                if !by_hub {
                    release.push(m.id);
                } else if m.seq > w.confirmed[stream_index(m.stream)] {
                    let due = now + resend_wait(&cfg, m.tries);
                    w.unconfirmed.insert(m.id, Unconfirmed { m, acked: now, due });
                }
                // else: the hub confirmed it while it was on its way; its row is gone.
            }
            if let Err(e) = outbox.release(&release) {
                break Err(format!("sync: cannot release sent messages: {e}"));
            }
            counters.last_ack_us.store(now_us() as u64, Ordering::Relaxed);
            counters.unconfirmed.store(w.unconfirmed.len() as u64, Ordering::Relaxed);
        }
        if let Some(status_seq) = connected {
            // First what is due again, oldest first; then what was never sent.
            let now = Instant::now();
            let due: Vec<i64> = w
                .unconfirmed
                .iter()
                .filter(|(_, u)| u.due <= now)
                .map(|(id, _)| *id)
                .take(window.saturating_sub(w.busy()))
                .collect();
            for id in due {
                let Some(u) = w.unconfirmed.remove(&id) else { continue };
                match outbox.again(id) {
                    Ok(Some(m)) if m.id == id => {
                        let t = topic(&cfg.topic_prefix, &device, m.stream);
                        if client.try_publish(t, QoS::AtLeastOnce, false, m.payload).is_err() {
                            w.unconfirmed.insert(id, u);
                            break;
                        }
                        let i = stream_index(m.stream);
                        counters.published[i].fetch_add(1, Ordering::Relaxed);
                        counters.resent[i].fetch_add(1, Ordering::Relaxed);
                        w.requested.push_back(Some(Pending { tries: u.m.tries + 1, ..u.m }));
                    }
                    Ok(_) => {} // confirmed (or released) meanwhile
                    Err(e) => tracing::error!("sync: cannot read the outbox: {e}"),
                }
            }
            // Anomalies first, then the rest in the order it was queued. An anomaly may go
            // past a window and an unconfirmed bound that the flow batches of a flood fill, by
            // URGENT_RESERVE messages (the client has room for twice the window).
            for lane in [Lane::Anomalies, Lane::Bulk] {
                let reserve = if lane == Lane::Anomalies { URGENT_RESERVE } else { 0 };
                let busy = w.busy();
                let room = if by_hub {
                    (unconfirmed_max + reserve).saturating_sub(busy + w.unconfirmed.len())
                } else {
                    usize::MAX
                };
                if busy >= window + reserve || room == 0 {
                    continue;
                }
                let n = (window + reserve - busy).min(room);
                let msgs = match lane {
                    Lane::Anomalies => outbox.urgent(urgent, n),
                    _ => outbox.next(cursor, n),
                };
                match msgs {
                    Ok(msgs) => {
                        for m in msgs {
                            let t = topic(&cfg.topic_prefix, &device, m.stream);
                            if client.try_publish(t, QoS::AtLeastOnce, false, m.payload).is_err() {
                                break;
                            }
                            counters.published[stream_index(m.stream)]
                                .fetch_add(1, Ordering::Relaxed);
                            w.requested.push_back(Some(Pending {
                                id: m.id,
                                stream: m.stream,
                                seq: m.seq,
                                flows: m.flows,
                                tries: 0,
                            }));
                            match lane {
                                Lane::Anomalies => urgent = m.seq,
                                _ => cursor = m.id,
                            }
                        }
                    }
                    Err(e) => tracing::error!("sync: cannot read the outbox: {e}"),
                }
            }
            if until == Until::Drained
                && w.busy() == 0
                && w.unconfirmed.is_empty()
                && outbox.depth().map_err(|e| e.to_string())? == 0
            {
                if client
                    .try_publish(&status_topic, QoS::AtLeastOnce, true, offline(status_seq + 1))
                    .is_ok()
                {
                    w.requested.push_back(None);
                }
                break Ok(());
            }
        }
        tokio::select! {
            ev = events.recv() => match ev {
                Some(LinkEvent::Connected(seq)) => {
                    connected = Some(seq);
                    if let Err(e) = outbox.keep_will(seq + 1) {
                        tracing::warn!("sync: cannot keep the status seq: {e}");
                    }
                    counters.connected.store(1, Ordering::Relaxed);
                    counters.connects.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(broker = %cfg.broker, "sync: connected");
                    // The session is clean: subscribe again on each connection; the broker
                    // then sends the retained ack, the hub's latest word.
                    if by_hub && client.try_subscribe(&ack_topic, QoS::AtLeastOnce).is_err() {
                        tracing::error!("sync: cannot subscribe to {ack_topic}");
                    }
                    // And the hub's configuration, retained: the newest comes at once.
                    if fleet.configs.is_some()
                        && client.try_subscribe(&config_topic, QoS::AtLeastOnce).is_err()
                    {
                        tracing::error!("sync: cannot subscribe to {config_topic}");
                    }
                    if fleet.commands.is_some()
                        && client.try_subscribe(&commands_topic, QoS::AtLeastOnce).is_err()
                    {
                        tracing::error!("sync: cannot subscribe to {commands_topic}");
                    }
                    let online =
                        status(&device, DeviceState::Online, seq, started, &fleet.applied());
                    if client.try_publish(&status_topic, QoS::AtLeastOnce, true, online).is_ok() {
                        w.requested.push_back(None);
                    }
                }
                Some(LinkEvent::Published(pkid)) => {
                    if let Some(Some(m)) = w.requested.pop_front() {
                        w.inflight.insert(pkid, m);
                    }
                }
                Some(LinkEvent::Acked(pkid)) => {
                    if let Some(m) = w.inflight.remove(&pkid) {
                        w.acked.push(m);
                    }
                }
                Some(LinkEvent::Message(t, payload)) => {
                    if t == config_topic {
                        if let Some(configs) = &fleet.configs {
                            configs.send_replace(Some(payload));
                        }
                    } else if t == commands_topic {
                        if let Some(commands) = &fleet.commands {
                            if commands.try_send(payload).is_err() {
                                tracing::error!("sync: a command from the hub dropped (queue full)");
                            }
                        }
                    } else if by_hub && t == ack_topic {
                        if let Err(e) = w.take_ack(&payload, &device, &mut outbox, &counters) {
                            break Err(e);
                        }
                    }
                }
                Some(LinkEvent::Disconnected) => {
                    if connected.take().is_some() {
                        counters.disconnects.fetch_add(1, Ordering::Relaxed);
                    }
                    counters.connected.store(0, Ordering::Relaxed);
                    // The session is clean: whatever the hub has not confirmed goes again (a
                    // broker that restarted may have lost what it acknowledged).
                    w.requested.clear();
                    w.inflight.clear();
                    if by_hub {
                        w.unconfirmed.clear();
                        counters.unconfirmed.store(0, Ordering::Relaxed);
                    }
                    cursor = 0;
                    urgent = 0;
                }
                None => break Err("sync: the MQTT event loop ended".into()),
            },
            _ = tick.tick() => {}
            _ = stop.changed() => {
                if let Some(seq) = connected {
                    if client
                        .try_publish(&status_topic, QoS::AtLeastOnce, true, offline(seq + 1))
                        .is_ok()
                    {
                        w.requested.push_back(None);
                    }
                }
                break Ok(());
            }
        }
    };
    // Say goodbye: let the event loop send what was asked (the offline status) and the
    // acknowledgements still coming release their messages (with `confirm = "broker"`; the
    // hub's confirmations of the rest come, retained, on the next connection).
    if connected.is_some() {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        // The offline status is the last request; once it is out and every message before it
        // is acknowledged (or the deadline passes), disconnect.
        let mut status_out = w.requested.is_empty();
        while !(status_out && w.inflight.is_empty()) {
            let Ok(Some(ev)) = tokio::time::timeout_at(deadline, events.recv()).await else {
                break;
            };
            match ev {
                LinkEvent::Published(pkid) => match w.requested.pop_front() {
                    Some(Some(m)) => {
                        w.inflight.insert(pkid, m);
                    }
                    Some(None) | None => status_out = w.requested.is_empty(),
                },
                LinkEvent::Acked(pkid) => {
                    if let Some(m) = w.inflight.remove(&pkid) {
                        w.acked.push(m);
                    }
                }
                LinkEvent::Message(t, payload) => {
                    if by_hub && t == ack_topic {
                        let _ = w.take_ack(&payload, &device, &mut outbox, &counters);
                    }
                }
                LinkEvent::Disconnected | LinkEvent::Connected(_) => break,
            }
        }
        if !by_hub {
            let ids: Vec<i64> = w.acked.iter().map(|a| a.id).collect();
            let _ = outbox.release(&ids);
        }
        let _ = client.try_disconnect();
        let _ = tokio::time::timeout(Duration::from_millis(500), events.recv()).await;
    }
    link.abort();
    counters.connected.store(0, Ordering::Relaxed);
    counters.unconfirmed.store(0, Ordering::Relaxed);
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::StoreConfig;
    use crate::store::{Store, StoreCounters};
    use firmware::features::N_FEATURES;

    /// A store in `dir` with the outbox of device tap-1, and its path.
    fn store_with_outbox(dir: &std::path::Path) -> (Store, std::path::PathBuf) {
        let path = dir.join("edge.db");
        let cfg = StoreConfig { path: path.clone(), max_size_mb: 8, ..StoreConfig::default() };
        let mut store = Store::open(&cfg, Arc::new(StoreCounters::default())).unwrap();
        store.enable_outbox("tap-1", 1_000_000).unwrap();
        (store, path)
    }

    #[test]
    fn test_anomalies_go_ahead_of_what_was_queued_before_them() {
        let dir = tempfile::tempdir().unwrap();
        let (store, path) = store_with_outbox(dir.path());
        // A flood's statistics, then an anomaly, then its evidence.
        let queue = |stream: &str, seq: i64| {
            store
                .connection()
                .execute(
                    "INSERT INTO outbox (stream, seq, created_us, payload) VALUES (?1, ?2, 0, x'7b7d')",
                    params![stream, seq],
                )
                .unwrap();
        };
        for seq in 1..=100 {
            queue("stats", seq);
        }
        queue("anomalies", 1);
        queue("evidence", 1);
        queue("anomalies", 2);
        let mut outbox =
            OutboxReader::open(&path, "tap-1", Arc::new(SyncCounters::default())).unwrap();
        let urgent = outbox.urgent(0, 8).unwrap();
        let seqs: Vec<(Stream, u64)> = urgent.iter().map(|m| (m.stream, m.seq)).collect();
        assert_eq!(seqs, [(Stream::Anomalies, 1), (Stream::Anomalies, 2)]);
        assert!(outbox.urgent(2, 8).unwrap().is_empty());
        // The rest, in the order queued, without the anomalies.
        let bulk = outbox.next(0, 200).unwrap();
        assert_eq!(bulk.len(), 101);
        assert!(bulk.iter().all(|m| m.stream != Stream::Anomalies));
        assert_eq!(bulk.last().map(|m| m.stream), Some(Stream::Evidence));
        // A resend finds an anomaly by its id.
        let again = outbox.again(urgent[0].id).unwrap().unwrap();
        assert_eq!((again.stream, again.seq), (Stream::Anomalies, 1));
    }

    /// A flow stored as another feature set's vector (an upgrade changed the set) or as a blob
    /// that reads as none is sent without its features, counted once; never as values the
    /// batch's feature set would mislabel.
    #[test]
    fn test_a_flow_of_another_feature_set_goes_without_its_features() {
        let dir = tempfile::tempdir().unwrap();
        let (store, path) = store_with_outbox(dir.path());
        let set = i64::from(firmware::features::FEATURE_SET_VERSION);
        let mut ours = Vec::new();
        let mut v = [0.0f32; N_FEATURES];
        v[3] = 7.5;
        crate::store::encode_features(&v, &mut ours);
        let plain: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        for (feature_set, blob) in [(set, ours), (set - 1, plain), (set, vec![1, 2, 3])] {
            store
                .connection()
                .execute(
                    "INSERT INTO traffic_features (start_us, end_us, src_ip, src_port, dst_ip,
                     dst_port, protocol, vlan, end_reason, packets, bytes, feature_set, features)
                     VALUES (1, 2, '10.0.0.1', 1000, '10.0.0.2', 80, 6, 0, 'fin', 3, 180, ?1, ?2)",
                    params![feature_set, blob],
                )
                .unwrap();
        }
        store
            .connection()
            .execute(
                "INSERT INTO outbox (stream, seq, created_us, first_row, last_row)
                 VALUES ('flows', 1, 0, 1, 3)",
                [],
            )
            .unwrap();
        let counters = Arc::new(SyncCounters::default());
        let mut outbox = OutboxReader::open(&path, "tap-1", counters.clone()).unwrap();
        let sent = outbox.next(0, 10).unwrap();
        assert_eq!(sent.len(), 1);
        let batch: serde_json::Value = serde_json::from_slice(&sent[0].payload).unwrap();
        let lens: Vec<usize> = batch["flows"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["features"].as_array().unwrap().len())
            .collect();
        assert_eq!(lens, [N_FEATURES, 0, 0]);
        assert_eq!(batch["flows"][0]["features"][3], 7.5);
        assert_eq!(counters.flow_features_withheld.load(Ordering::Relaxed), 2);
        // Sent again, it is not counted again.
        outbox.again(sent[0].id).unwrap().unwrap();
        assert_eq!(counters.flow_features_withheld.load(Ordering::Relaxed), 2);
    }
}
