//! The Tapwatch core on a microcontroller: packets held in flash go through the same engine and
//! window detectors as the Linux daemon's, and what they find leaves as the contract's messages
//! through embedded-svc's [`Publish`] (the platform's MQTT client; here, semihosting).
//!
//! No heap, no clock: time is the packets' own. Built for the host too, where the same code
//! prints the same messages: `scripts/mcu.sh` compares the two, and both with
//! `tapwatch-edge analyze` over the same captures.

#![no_std]

use firmware::detect::{EpisodeEvent, WindowDetector, JUDGE_EVERY};
use firmware::engine::{Engine, EngineConfig, FinishedFlow};
use firmware::features::FEATURE_SET_VERSION;
use firmware::platform::{publish, Publish, UplinkError};
use firmware::proto::{FlowBatch, FlowMsg, Message, Stream, FLOW_BATCH_MAX};
use firmware::wire::LinkType;
use firmware::Instant;

/// One packet in flash: its capture time, length on the wire, and where its bytes are in
/// [`BYTES`].
#[derive(Debug, Clone, Copy)]
pub struct Packet {
    pub ts_us: i64,
    pub wire_len: u32,
    pub start: usize,
    pub end: usize,
}

/// A capture in flash: its name, libpcap link type and packets.
#[derive(Debug)]
pub struct Capture {
    pub name: &'static str,
    pub dlt: i32,
    pub packets: &'static [Packet],
}

include!(concat!(env!("OUT_DIR"), "/captures.rs"));

/// Flows per table (one shard, inline) and hosts: what a tap on an MCU's link tracks at once.
pub const FLOWS: usize = 2048;
pub const HOSTS: usize = 256;
/// Anomaly episodes open at once.
pub const EPISODES: usize = 16;

pub type McuEngine = Engine<FLOWS, HOSTS>;
pub type McuDetector = WindowDetector<EPISODES>;

/// Bytes of one encoded message at most: a batch of 32 flows with their feature vectors.
pub const MESSAGE_MAX: usize = 40 * 1024;

/// Where the messages go, with their sequence numbers per stream (from 1, as the contract
/// says) and the buffers to build them in (kept by the caller: in a static on the MCU).
#[derive(Debug)]
pub struct Uplink<'a, P: Publish> {
    pub client: P,
    pub device: &'a str,
    seq: [u64; Stream::ALL.len()],
    batch: &'a mut FlowBatch,
    buf: &'a mut [u8],
}

/// What one capture gave.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Summary {
    pub packets: u64,
    pub errors: u64,
    pub flows: u64,
    pub anomalies: u64,
    pub messages: u64,
}

impl<'a, P: Publish> Uplink<'a, P> {
    pub fn new(client: P, device: &'a str, batch: &'a mut FlowBatch, buf: &'a mut [u8]) -> Self {
        batch.flows.clear();
        Uplink { client, device, seq: [0; Stream::ALL.len()], batch, buf }
    }

    fn send<M: Message + serde::Serialize>(
        &mut self,
        msg: &mut M,
        ts: i64,
    ) -> Result<(), UplinkError<P::Error>> {
        let i = Stream::ALL.iter().position(|s| *s == M::STREAM).unwrap_or(0);
        self.seq[i] += 1;
        msg.set_header(self.device, self.seq[i], ts);
        publish(&mut self.client, self.device, M::STREAM, msg, self.buf)
    }

    /// Send the flows waiting in the batch, if any.
    fn flush_flows(&mut self, ts: i64) -> Result<u64, UplinkError<P::Error>> {
        if self.batch.flows.is_empty() {
            return Ok(0);
        }
        let mut batch = core::mem::replace(self.batch, empty_batch());
        batch.feature_set = FEATURE_SET_VERSION;
        let sent = self.send(&mut batch, ts);
        batch.flows.clear();
        *self.batch = batch;
        sent.map(|()| 1)
    }
}

/// Run one capture through `engine` and `detector` from a clean state, publishing each flow as
/// it ends (in batches of [`FLOW_BATCH_MAX`]) and each anomaly episode as it opens, updates
/// and closes. The detectors are judged every [`JUDGE_EVERY`] of packet time, as the daemon
/// judges them; at the end the last packet's time is judged, every flow ends and every episode
/// closes.
pub fn run<P: Publish>(
    capture: &Capture,
    engine: &mut McuEngine,
    detector: &mut McuDetector,
    up: &mut Uplink<'_, P>,
) -> Result<Summary, UplinkError<P::Error>> {
    let mut s = Summary::default();
    let Some(link) = LinkType::from_dlt(capture.dlt) else {
        return Ok(s);
    };
    let before = *engine.counters();
    let mut ended: heapless::Vec<FlowMsg, FLOW_BATCH_MAX> = heapless::Vec::new();
    let mut next_judge = i64::MIN;
    let mut last_us = 0;
    for p in capture.packets {
        let bytes = BYTES.get(p.start..p.end).unwrap_or_default();
        let _ = engine.process(
            link,
            Instant::from_micros(p.ts_us),
            p.wire_len,
            bytes,
            &mut |f: &FinishedFlow| {
                let _ = ended.push(FlowMsg::of(f));
            },
        );
        last_us = p.ts_us;
        s.messages += take_flows(up, &mut ended, &mut s.flows, p.ts_us)?;
        if p.ts_us >= next_judge {
            next_judge = p.ts_us + JUDGE_EVERY.total_micros() as i64;
            s.messages += judge(engine, detector, up, p.ts_us, false, &mut s.anomalies)?;
        }
    }
    // The end of the input: its last moment (the last flow's last packet, as the daemon takes
    // it) is judged, then every flow ends (their batch is sent) and every episode closes.
    let end = engine.flows().iter().map(|(_, f)| f.last().total_micros()).max().unwrap_or(last_us);
    s.messages += judge(engine, detector, up, end, false, &mut s.anomalies)?;
    let (mut rest, mut sent) = (0, 0);
    let mut failed = Ok(());
    engine.reset(&mut |f: &FinishedFlow| {
        if ended.push(FlowMsg::of(f)).is_err() {
            match take_flows(up, &mut ended, &mut rest, last_us) {
                Ok(n) => sent += n,
                Err(e) => failed = Err(e),
            }
            let _ = ended.push(FlowMsg::of(f));
        }
    });
    failed?;
    s.flows += rest;
    s.messages += sent;
    s.messages += take_flows(up, &mut ended, &mut s.flows, last_us)?;
    s.messages += up.flush_flows(last_us)?;
    s.messages += judge(engine, detector, up, last_us, true, &mut s.anomalies)?;
    let after = engine.counters();
    s.packets = after.packets - before.packets;
    s.errors = after.errors_total() - before.errors_total();
    Ok(s)
}

/// Move the flows that just ended into the batch, sending it each time it fills.
fn take_flows<P: Publish>(
    up: &mut Uplink<'_, P>,
    ended: &mut heapless::Vec<FlowMsg, FLOW_BATCH_MAX>,
    flows: &mut u64,
    ts: i64,
) -> Result<u64, UplinkError<P::Error>> {
    let mut sent = 0;
    for f in ended.drain(..) {
        *flows += 1;
        if let Err(f) = up.batch.flows.push(f) {
            sent += up.flush_flows(ts)?;
            let _ = up.batch.flows.push(f);
        }
    }
    if up.batch.flows.is_full() {
        sent += up.flush_flows(ts)?;
    }
    Ok(sent)
}

/// Judge the detectors at `now_us` (or close every episode, at the end), publishing the events.
fn judge<P: Publish>(
    engine: &McuEngine,
    detector: &mut McuDetector,
    up: &mut Uplink<'_, P>,
    now_us: i64,
    close: bool,
    anomalies: &mut u64,
) -> Result<u64, UplinkError<P::Error>> {
    // An episode has at most one event a judgement, and a trip opens at most one.
    let mut events: heapless::Vec<(firmware::detect::Episode, EpisodeEvent), { 2 * EPISODES }> =
        heapless::Vec::new();
    let mut push = |e: &firmware::detect::Episode, ev: EpisodeEvent| {
        let _ = events.push((*e, ev));
    };
    if close {
        detector.close_all(&mut push);
    } else {
        detector.judge(engine, Instant::from_micros(now_us), &mut push);
    }
    let mut sent = 0;
    for (e, ev) in events {
        if ev == EpisodeEvent::Opened {
            *anomalies += 1;
        }
        up.send(&mut e.message(), now_us)?;
        sent += 1;
    }
    Ok(sent)
}

/// A flow batch with no flows (its header is stamped when it is sent).
pub const fn empty_batch() -> FlowBatch {
    FlowBatch {
        schema: 0,
        device: heapless::String::new(),
        seq: 0,
        ts: 0,
        feature_set: FEATURE_SET_VERSION,
        flows: heapless::Vec::new(),
    }
}

/// A fresh engine's settings: the daemon's defaults.
pub fn engine_config() -> EngineConfig {
    EngineConfig::default()
}
