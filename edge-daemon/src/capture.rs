//! Live capture: one thread per interface reads libpcap and hands packets on in batches.
//!
//! Capture never waits on anything downstream: the queue to the pipeline is bounded in packets
//! (`queue_packets`, counted in `queued`), and a batch that would overflow it is dropped and
//! counted (`queue_drops`). Batches are as large as what libpcap had ready, so the bound is on
//! packets, not on batches. The capture handle is non-blocking and waits for packets with `poll(2)` on
//! its descriptor, so an idle interface does not hang the thread and control messages (a new
//! filter, stop) are seen within 100 ms. Kernel drops come from libpcap's statistics.

use crate::config::InterfaceConfig;
use firmware::wire::LinkType;
use rustix::event::{poll, PollFd, PollFlags, Timespec};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Packets per batch at most.
pub const BATCH_PACKETS: usize = 256;

/// Packets read back to back, their bytes in one buffer.
#[derive(Debug)]
pub struct Batch {
    pub iface: usize,
    pub link: LinkType,
    pub dlt: i32,
    /// (timestamp µs, wire length, range in `bytes`).
    pub packets: Vec<(i64, u32, std::ops::Range<usize>)>,
    pub bytes: Vec<u8>,
}

impl Batch {
    pub fn new(iface: usize, link: LinkType, dlt: i32) -> Batch {
        // Small to start: in immediate mode most batches hold a packet or two.
        Batch::with_capacity(iface, link, dlt, 8, 2048)
    }

    /// A batch with room for `packets` packets of `bytes` bytes in all, allocated once.
    pub fn with_capacity(
        iface: usize,
        link: LinkType,
        dlt: i32,
        packets: usize,
        bytes: usize,
    ) -> Batch {
        Batch {
            iface,
            link,
            dlt,
            packets: Vec::with_capacity(packets),
            bytes: Vec::with_capacity(bytes),
        }
    }

    /// This batch emptied for packets of `iface`, its room kept.
    pub fn reused(mut self, iface: usize, link: LinkType, dlt: i32) -> Batch {
        self.packets.clear();
        self.bytes.clear();
        Batch { iface, link, dlt, ..self }
    }
}

/// Counters of one interface, written by its capture thread.
#[derive(Debug, Default)]
pub struct InterfaceCounters {
    pub name: String,
    /// Packets captured (after the filter, before sampling).
    pub packets: AtomicU64,
    pub bytes: AtomicU64,
    /// Packets left out by 1-in-N sampling (a choice, not a loss).
    pub sampled_out: AtomicU64,
    /// Keep one packet in this many (`sample`; set again by a reload or the hub).
    pub sample: AtomicU64,
    /// Dropped by the kernel: no room in the capture buffer (libpcap ps_drop).
    pub kernel_drops: AtomicU64,
    /// Dropped by the interface or its driver (libpcap ps_ifdrop).
    pub interface_drops: AtomicU64,
    /// Dropped because the queue to the pipeline was full.
    pub queue_drops: AtomicU64,
    /// Packets in the queue to the pipeline now (the pipeline takes them off as it goes).
    pub queued: AtomicU64,
    /// Read errors from libpcap.
    pub read_errors: AtomicU64,
    /// 1 while the capture runs.
    pub up: AtomicU64,
    /// Turns of the capture thread's loop (at least ten a second, capturing or waiting for the
    /// interface to come back): the service manager's watchdog is fed only while it moves.
    pub turns: AtomicU64,
    /// The BPF filter in force ("" for none).
    pub filter: Mutex<String>,
}

/// Messages to a capture thread.
#[derive(Debug)]
pub enum Control {
    /// Replace the BPF filter (`None` captures everything).
    SetFilter(Option<String>, std::sync::mpsc::Sender<Result<(), String>>),
    Stop,
}

/// A running capture thread.
#[derive(Debug)]
pub struct CaptureThread {
    pub control: std::sync::mpsc::Sender<Control>,
    pub handle: std::thread::JoinHandle<()>,
    pub counters: Arc<InterfaceCounters>,
}

#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("interface {name}: cannot open for capture: {message}")]
    Open { name: String, message: String },
    #[error("interface {name}: link type {dlt} is not supported")]
    LinkType { name: String, dlt: i32 },
    #[error("interface {name}: filter {filter:?} rejected: {message}")]
    Filter { name: String, filter: String, message: String },
}

/// Open a live capture as `config` says, with `filter`.
fn open(
    config: &InterfaceConfig,
    filter: Option<&str>,
) -> Result<(pcap::Capture<pcap::Active>, LinkType, i32), CaptureError> {
    let name = config.name.clone();
    let open_err =
        |e: pcap::Error| CaptureError::Open { name: name.clone(), message: e.to_string() };
    let mut cap = pcap::Capture::from_device(name.as_str())
        .map_err(open_err)?
        .promisc(config.promiscuous)
        .snaplen(config.snaplen as i32)
        .buffer_size((config.buffer_mb as i32).saturating_mul(1 << 20))
        .immediate_mode(config.immediate)
        .timeout(100)
        .open()
        .map_err(open_err)?
        .setnonblock()
        .map_err(open_err)?;
    let dlt = cap.get_datalink().0;
    let link = LinkType::from_dlt(dlt).ok_or(CaptureError::LinkType { name: name.clone(), dlt })?;
    if let Some(f) = filter {
        cap.filter(f, true).map_err(|e| CaptureError::Filter {
            name: name.clone(),
            filter: f.into(),
            message: e.to_string(),
        })?;
    }
    Ok((cap, link, dlt))
}

/// Open `config.name` and start its capture thread, sending batches to `tx`.
pub fn start(
    iface: usize,
    config: &InterfaceConfig,
    filter: Option<String>,
    tx: crossbeam_channel::Sender<Batch>,
) -> Result<CaptureThread, CaptureError> {
    let (cap, link, dlt) = open(config, filter.as_deref())?;
    let counters = Arc::new(InterfaceCounters {
        name: config.name.clone(),
        up: AtomicU64::new(1),
        sample: AtomicU64::new(u64::from(config.sample.max(1))),
        ..InterfaceCounters::default()
    });
    if let Ok(mut f) = counters.filter.lock() {
        *f = filter.unwrap_or_default();
    }
    let (control, rx) = std::sync::mpsc::channel();
    let c = counters.clone();
    let cfg = config.clone();
    let handle = std::thread::Builder::new()
        .name(format!("capture-{}", config.name))
        .spawn(move || {
            let mut current = Some((cap, link, dlt));
            loop {
                let reopen = match current.take() {
                    Some((cap, link, dlt)) => run(iface, cap, link, dlt, &cfg, &tx, &rx, &c),
                    None => true,
                };
                if !reopen {
                    break;
                }
                // The interface went away. Try again every two seconds until it is back or
                // we are told to stop.
                let mut last_try = std::time::Instant::now();
                loop {
                    c.turns.fetch_add(1, Ordering::Relaxed);
                    match rx.recv_timeout(Duration::from_millis(100)) {
                        Ok(Control::Stop)
                        | Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                            return;
                        }
                        Ok(Control::SetFilter(f, reply)) => {
                            if let Ok(mut cur) = c.filter.lock() {
                                *cur = f.unwrap_or_default();
                            }
                            let _ = reply.send(Ok(()));
                        }
                        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                    }
                    if last_try.elapsed() < Duration::from_secs(2) {
                        continue;
                    }
                    last_try = std::time::Instant::now();
                    let filter = c.filter.lock().map(|f| f.clone()).unwrap_or_default();
                    let filter = (!filter.is_empty()).then_some(filter);
                    if let Ok(opened) = open(&cfg, filter.as_deref()) {
                        tracing::info!(
                            "capture {}: the interface is back; capturing again",
                            c.name
                        );
                        current = Some(opened);
                        break;
                    }
                }
            }
        })
        .map_err(|e| CaptureError::Open { name: config.name.clone(), message: e.to_string() })?;
    Ok(CaptureThread { control, handle, counters })
}

/// Capture until told to stop (returns false) or the interface fails (returns true: reopen).
#[allow(clippy::too_many_arguments)]
fn run(
    iface: usize,
    mut cap: pcap::Capture<pcap::Active>,
    link: LinkType,
    dlt: i32,
    config: &InterfaceConfig,
    tx: &crossbeam_channel::Sender<Batch>,
    control: &std::sync::mpsc::Receiver<Control>,
    c: &InterfaceCounters,
) -> bool {
    c.up.store(1, Ordering::Relaxed);
    let mut failed = false;
    // libpcap's drop counts start at zero with each handle; ours run on across reopens.
    let (base_kernel, base_iface) =
        (c.kernel_drops.load(Ordering::Relaxed), c.interface_drops.load(Ordering::Relaxed));
    let mut batch = Batch::new(iface, link, dlt);
    let mut seen = 0u64;
    let mut last_stats = Instant::now();
    let limit = config.queue_packets as u64;
    let offer = |batch: Batch, tx: &crossbeam_channel::Sender<Batch>| {
        let n = batch.packets.len() as u64;
        if c.queued.load(Ordering::Relaxed) + n > limit {
            c.queue_drops.fetch_add(n, Ordering::Relaxed);
            return true;
        }
        c.queued.fetch_add(n, Ordering::Relaxed);
        match tx.try_send(batch) {
            Ok(()) => true,
            Err(crossbeam_channel::TrySendError::Full(_)) => {
                c.queued.fetch_sub(n, Ordering::Relaxed);
                c.queue_drops.fetch_add(n, Ordering::Relaxed);
                true
            }
            Err(crossbeam_channel::TrySendError::Disconnected(_)) => false,
        }
    };
    'outer: loop {
        c.turns.fetch_add(1, Ordering::Relaxed);
        match control.try_recv() {
            Ok(Control::Stop) | Err(std::sync::mpsc::TryRecvError::Disconnected) => break,
            Ok(Control::SetFilter(f, reply)) => {
                let r = match &f {
                    Some(text) => cap.filter(text, true).map_err(|e| e.to_string()),
                    None => cap.filter("", true).map_err(|e| e.to_string()),
                };
                if r.is_ok() {
                    if let Ok(mut cur) = c.filter.lock() {
                        *cur = f.unwrap_or_default();
                    }
                }
                let _ = reply.send(r);
            }
            Err(std::sync::mpsc::TryRecvError::Empty) => {}
        }
        let sample = c.sample.load(Ordering::Relaxed).max(1);
        // Read what is there.
        loop {
            match cap.next_packet() {
                Ok(p) => {
                    c.packets.fetch_add(1, Ordering::Relaxed);
                    c.bytes.fetch_add(u64::from(p.header.len), Ordering::Relaxed);
                    seen += 1;
                    if sample > 1 && !seen.is_multiple_of(sample) {
                        c.sampled_out.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    let start = batch.bytes.len();
                    batch.bytes.extend_from_slice(p.data);
                    let ts = crate::offline::timeval_micros(p.header.ts);
                    batch.packets.push((ts, p.header.len, start..batch.bytes.len()));
                    if batch.packets.len() >= BATCH_PACKETS {
                        let full = std::mem::replace(&mut batch, Batch::new(iface, link, dlt));
                        if !offer(full, tx) {
                            break 'outer;
                        }
                    }
                }
                Err(pcap::Error::TimeoutExpired) => break,
                Err(pcap::Error::NoMorePackets) => break 'outer,
                Err(e) => {
                    // The handle is dead (the interface went away, or the socket failed).
                    c.read_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(
                        "capture {}: {e}; reopening when the interface is back",
                        c.name
                    );
                    failed = true;
                    break 'outer;
                }
            }
        }
        // Nothing more for now: hand on what we have, then wait for the descriptor.
        if !batch.packets.is_empty() {
            let part = std::mem::replace(&mut batch, Batch::new(iface, link, dlt));
            if !offer(part, tx) {
                break;
            }
        }
        if last_stats.elapsed() >= Duration::from_millis(500) {
            if let Ok(s) = cap.stats() {
                c.kernel_drops.store(base_kernel + u64::from(s.dropped), Ordering::Relaxed);
                c.interface_drops.store(base_iface + u64::from(s.if_dropped), Ordering::Relaxed);
            }
            last_stats = Instant::now();
        }
        let fd = cap.as_fd();
        let mut fds = [PollFd::new(&fd, PollFlags::IN)];
        let _ = poll(&mut fds, Some(&Timespec { tv_sec: 0, tv_nsec: 100_000_000 }));
        if fds[0].revents().intersects(PollFlags::ERR | PollFlags::HUP | PollFlags::NVAL) {
            // The next read says what happened; do not spin on a descriptor in error meanwhile.
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    if let Ok(s) = cap.stats() {
        c.kernel_drops.store(base_kernel + u64::from(s.dropped), Ordering::Relaxed);
        c.interface_drops.store(base_iface + u64::from(s.if_dropped), Ordering::Relaxed);
    }
    c.up.store(0, Ordering::Relaxed);
    failed
}
