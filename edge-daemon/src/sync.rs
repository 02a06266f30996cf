//! Edge to hub: the outbox of the store, sent over MQTT (rumqttc, QoS 1).
//!
//! The store writer queues a message in the `outbox` table in the same transaction as the rows
//! it describes ([`crate::store::Store::enable_outbox`]), with the next seq of its stream. This
//! module sends the outbox in id order, at most `sync.inflight` messages unacknowledged, and
//! deletes a message only when the broker's PUBACK for it arrives. On any connection error
//! everything unacknowledged is sent again after reconnecting (with backoff): the hub drops a
//! message it already has by (device, stream, seq), so the link may double a message but never
//! lose one. A restart resumes from what the outbox still holds.
//!
//! The retained `status` topic says `online` after each connect; the last will, set before each
//! connect, says `offline`. Their seq is the wall-clock millisecond of the connect (the will's one
//! more), so the hub can order them across reconnects.
//!
//! Mapping a PUBACK to its message: rumqttc reports `Outgoing::Publish(pkid)` for each publish
//! request in the order the requests were made, and the session is clean, so nothing else is
//! published by the event loop on our behalf; a FIFO of the requests made gives each pkid its
//! outbox id.

use crate::config::SyncConfig;
use crate::store::{stream_index, StoreError};
use firmware::features::N_FEATURES;
use firmware::flow::EndReason;
use firmware::proto::{
    self, DeviceState, FlowBatch, FlowMsg, StatusMsg, Stream, FLOW_BATCH_MAX, SCHEMA_VERSION,
};
use rumqttc::{AsyncClient, Event, LastWill, MqttOptions, Outgoing, Packet, QoS, Transport};
use rusqlite::{params, Connection};
use std::collections::{HashMap, VecDeque};
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
    /// Messages the broker acknowledged (and the outbox released), by stream.
    pub acked: [AtomicU64; Stream::COUNT],
    /// Flow records in acknowledged flow batches.
    pub flows_acked: AtomicU64,
    /// Flow records a batch named but store retention had deleted before they were sent.
    pub flows_lost_retention: AtomicU64,
    /// 1 while connected.
    pub connected: AtomicU64,
    /// Connections made, and lost.
    pub connects: AtomicU64,
    pub disconnects: AtomicU64,
    /// Unix microseconds of the last acknowledgement.
    pub last_ack_us: AtomicU64,
    /// The store's counters: the outbox depth the writer raises, the sender lowers.
    pub store: Arc<crate::store::StoreCounters>,
}

/// A message read from the outbox, ready to send.
#[derive(Debug)]
struct Outgoing1 {
    id: i64,
    stream: Stream,
    payload: Vec<u8>,
    flows: u64,
}

fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
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
        // The writer creates the tables (migrations); wait for them if it has not yet.
        for _ in 0..100 {
            let n: i64 = conn
                .query_row(
                    "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'outbox'",
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

    /// Messages in the outbox.
    pub fn depth(&self) -> Result<u64, StoreError> {
        Ok(self.conn.query_row("SELECT count(*) FROM outbox", [], |r| r.get::<_, i64>(0))? as u64)
    }

    /// Up to `n` messages with ids above `after`, in id order. A flow batch whose rows store
    /// retention deleted entirely is released here (and its flows counted as lost).
    fn next(&mut self, after: i64, n: usize) -> Result<Vec<Outgoing1>, StoreError> {
        let rows: Vec<OutboxRow> = {
            let mut stmt = self.conn.prepare_cached(
                "SELECT id, stream, seq, created_us, payload, first_row, last_row FROM outbox
                 WHERE id > ?1 ORDER BY id LIMIT ?2",
            )?;
            let rows = stmt.query_map(params![after, n as i64], |r| {
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
            match (payload, first, last) {
                (Some(payload), _, _) => out.push(Outgoing1 { id, stream, payload, flows: 0 }),
                (None, Some(first), Some(last)) => {
                    let (payload, flows) = self.flow_batch(seq as u64, created, first, last)?;
                    let named = (last - first + 1).max(0) as u64;
                    self.counters.flows_lost_retention.fetch_add(named - flows, Ordering::Relaxed);
                    if flows == 0 {
                        gone.push(id);
                    } else {
                        out.push(Outgoing1 { id, stream, payload, flows });
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

    /// The `flows` message of rows `first..=last` of traffic_features, and how many it holds.
    fn flow_batch(
        &mut self,
        seq: u64,
        ts: i64,
        first: i64,
        last: i64,
    ) -> Result<(Vec<u8>, u64), StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT start_us, end_us, src_ip, src_port, dst_ip, dst_port, protocol, vlan,
                    end_reason, features
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
        let mut rows = stmt.query(params![first, last])?;
        while let Some(r) = rows.next()? {
            let parse_ip = |s: String| s.parse().unwrap_or(std::net::IpAddr::from([0, 0, 0, 0]));
            let blob: Vec<u8> = r.get(9)?;
            let mut features = heapless::Vec::new();
            for c in blob.chunks_exact(4).take(N_FEATURES) {
                let _ = features.push(f32::from_le_bytes([c[0], c[1], c[2], c[3]]));
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
        Ok((serde_json::to_vec(&*batch).unwrap_or_default(), n))
    }

    /// Delete acknowledged (or unsendable) messages.
    fn release(&mut self, ids: &[i64]) -> Result<(), StoreError> {
        let tx = self.conn.transaction()?;
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

fn status(device: &str, state: DeviceState, seq: u64, started: Instant) -> Vec<u8> {
    let msg = StatusMsg {
        schema: SCHEMA_VERSION,
        device: device.try_into().unwrap_or_default(),
        seq,
        ts: now_us(),
        state,
        version: env!("CARGO_PKG_VERSION").try_into().unwrap_or_default(),
        uptime_s: started.elapsed().as_secs(),
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
        // Twice our window of packet ids: with at most `inflight` unacknowledged, the next id is
        // always free, so rumqttc never holds a publish back for an id collision and its
        // `Outgoing::Publish` events come in request order (the pkid mapping relies on it).
        .set_inflight(cfg.inflight.saturating_mul(2))
        .set_max_packet_size(1 << 20, 1 << 20)
        .set_request_channel_capacity(usize::from(cfg.inflight) + 16);
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

/// Send the outbox until `until`; `stop` ends the loop early (it then says `offline`).
pub async fn run(
    cfg: SyncConfig,
    device: String,
    db: std::path::PathBuf,
    counters: Arc<SyncCounters>,
    until: Until,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Result<(), String> {
    let started = Instant::now();
    let mut outbox = OutboxReader::open(&db, &device, counters.clone())?;
    let mut options = mqtt_options(&cfg, &device)?;
    let status_topic = topic(&cfg.topic_prefix, &device, Stream::Status);
    let will = {
        let (t, d) = (status_topic.clone(), device.clone());
        move |seq: u64| {
            LastWill::new(
                &t,
                status(&d, DeviceState::Offline, seq, started),
                QoS::AtLeastOnce,
                true,
            )
        }
    };
    let first_seq = (now_us() / 1000) as u64;
    options.set_last_will(will(first_seq + 1));
    let (client, eventloop) = AsyncClient::new(options, usize::from(cfg.inflight) + 16);
    let (etx, mut events) = tokio::sync::mpsc::unbounded_channel();
    let link = spawn_event_loop(eventloop, &cfg, will, first_seq, etx);
    let window = usize::from(cfg.inflight);
    // Requests made and not yet given a pkid: the outbox message, or None for a status message.
    let mut requested: VecDeque<Option<(i64, Stream, u64)>> = VecDeque::new();
    let mut inflight: HashMap<u16, (i64, Stream, u64)> = HashMap::new();
    let mut acked: Vec<(i64, Stream, u64)> = Vec::new();
    // The highest outbox id handed to the client on this connection.
    let mut cursor = 0i64;
    let mut connected: Option<u64> = None;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let offline = |seq: u64| status(&device, DeviceState::Offline, seq, started);
    let result = loop {
        if !acked.is_empty() {
            let ids: Vec<i64> = acked.iter().map(|a| a.0).collect();
            if let Err(e) = outbox.release(&ids) {
                break Err(format!("sync: cannot release sent messages: {e}"));
            }
            for (_, s, flows) in acked.drain(..) {
                counters.acked[stream_index(s)].fetch_add(1, Ordering::Relaxed);
                counters.flows_acked.fetch_add(flows, Ordering::Relaxed);
            }
            counters.last_ack_us.store(now_us() as u64, Ordering::Relaxed);
        }
        if let Some(status_seq) = connected {
            let busy = requested.len() + inflight.len();
            if busy < window {
                match outbox.next(cursor, window - busy) {
                    Ok(msgs) => {
                        for m in msgs {
                            let t = topic(&cfg.topic_prefix, &device, m.stream);
                            if client.try_publish(t, QoS::AtLeastOnce, false, m.payload).is_err() {
                                break;
                            }
                            counters.published[stream_index(m.stream)]
                                .fetch_add(1, Ordering::Relaxed);
                            requested.push_back(Some((m.id, m.stream, m.flows)));
                            cursor = m.id;
                        }
                    }
                    Err(e) => tracing::error!("sync: cannot read the outbox: {e}"),
                }
            }
            if until == Until::Drained
                && requested.is_empty()
                && inflight.is_empty()
                && outbox.depth().map_err(|e| e.to_string())? == 0
            {
                if client
                    .try_publish(&status_topic, QoS::AtLeastOnce, true, offline(status_seq + 1))
                    .is_ok()
                {
                    requested.push_back(None);
                }
                break Ok(());
            }
        }
        tokio::select! {
            ev = events.recv() => match ev {
                Some(LinkEvent::Connected(seq)) => {
                    connected = Some(seq);
                    counters.connected.store(1, Ordering::Relaxed);
                    counters.connects.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(broker = %cfg.broker, "sync: connected");
                    let online = status(&device, DeviceState::Online, seq, started);
                    if client.try_publish(&status_topic, QoS::AtLeastOnce, true, online).is_ok() {
                        requested.push_back(None);
                    }
                }
                Some(LinkEvent::Published(pkid)) => {
                    if let Some(Some(m)) = requested.pop_front() {
                        inflight.insert(pkid, m);
                    }
                }
                Some(LinkEvent::Acked(pkid)) => {
                    if let Some(m) = inflight.remove(&pkid) {
                        acked.push(m);
                    }
                }
                Some(LinkEvent::Disconnected) => {
                    if connected.take().is_some() {
                        counters.disconnects.fetch_add(1, Ordering::Relaxed);
                    }
                    counters.connected.store(0, Ordering::Relaxed);
                    // The session is clean: whatever was not acknowledged goes again.
                    requested.clear();
                    inflight.clear();
                    cursor = 0;
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
                        requested.push_back(None);
                    }
                }
                break Ok(());
            }
        }
    };
    // Say goodbye: let the event loop send what was asked (the offline status) and the
    // acknowledgements still coming release their messages.
    if connected.is_some() {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        // The offline status is the last request; once it is out and every message before it
        // is acknowledged (or the deadline passes), disconnect.
        let mut status_out = requested.is_empty();
        while !(status_out && inflight.is_empty()) {
            let Ok(Some(ev)) = tokio::time::timeout_at(deadline, events.recv()).await else {
                break;
            };
            match ev {
                LinkEvent::Published(pkid) => match requested.pop_front() {
                    Some(Some(m)) => {
                        inflight.insert(pkid, m);
                    }
                    Some(None) | None => status_out = requested.is_empty(),
                },
                LinkEvent::Acked(pkid) => {
                    if let Some(m) = inflight.remove(&pkid) {
                        acked.push(m);
                    }
                }
                LinkEvent::Disconnected | LinkEvent::Connected(_) => break,
            }
        }
        let ids: Vec<i64> = acked.iter().map(|a| a.0).collect();
        let _ = outbox.release(&ids);
        let _ = client.try_disconnect();
        let _ = tokio::time::timeout(Duration::from_millis(500), events.recv()).await;
    }
    link.abort();
    counters.connected.store(0, Ordering::Relaxed);
    result
}
