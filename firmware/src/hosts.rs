//! Per-source-host counters over a sliding window: what one flow cannot show (scans, sweeps,
//! floods, ARP and DHCP abuse).
//!
//! Each host keeps two tumbling windows, the current one and the one before. Counts are read as a
//! sliding window the usual way (the previous window weighted by how much of it still overlaps,
//! plus the current one); distinct destinations are counted with a 512-bit linear-counting sketch
//! per window, read over the union of both (so over the last one to two windows). A sketch has a
//! fixed size, so a scan of 60,000 ports costs the same memory as one of 6; it reads accurately
//! to a few hundred distinct values and saturates near 3,200.

use crate::flow::{ip_word, Map};
use crate::{Duration, Instant};
use core::hash::{Hash, Hasher};
use core::net::IpAddr;

/// Length of one window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostConfig {
    pub window: Duration,
}

impl Default for HostConfig {
    fn default() -> Self {
        HostConfig { window: Duration::from_secs(10) }
    }
}

/// A 512-bit linear-counting sketch of distinct values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Sketch([u64; 8]);

impl Sketch {
    const BITS: u32 = 512;

    pub fn insert(&mut self, value: u64) {
        let h = mix(value) % u64::from(Self::BITS);
        self.0[(h / 64) as usize] |= 1 << (h % 64);
    }

    /// Whether `value` may have been inserted (no false negatives; false positives as the
    /// sketch fills).
    pub fn contains(&self, value: u64) -> bool {
        let h = mix(value) % u64::from(Self::BITS);
        self.0[(h / 64) as usize] & (1 << (h % 64)) != 0
    }

    pub fn union(&self, other: &Sketch) -> Sketch {
        let mut s = *self;
        for (a, b) in s.0.iter_mut().zip(other.0.iter()) {
            *a |= *b;
        }
        s
    }

    /// Estimated number of distinct values: m ln(m / zeros), read from a table by the bits set.
    pub fn estimate(&self) -> f32 {
        let ones: u32 = self.0.iter().map(|w| w.count_ones()).sum();
        ESTIMATES[ones as usize]
    }
}

include!(concat!(env!("OUT_DIR"), "/sketch_gen.rs"));
const _: () = assert!(ESTIMATES.len() == Sketch::BITS as usize + 1);

/// A 64-bit finaliser (splitmix64's) that spreads small, similar values over the sketch.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

pub(crate) fn ip_bits(ip: IpAddr) -> u64 {
    let w = ip_word(&ip);
    (w as u64) ^ ((w >> 64) as u64).rotate_left(17)
}

/// A destination host and port as one word, for a sketch of distinct pairs.
pub(crate) fn pair_bits(ip: IpAddr, port: u16) -> u64 {
    ip_bits(ip) ^ u64::from(port).rotate_right(16)
}

/// What a [`WindowTable`] is keyed by: a host address, or a host and something of it (a domain
/// it queries), each folded into one word to hash.
pub trait TableKey: Copy + Eq {
    fn word(&self) -> u128;
}

impl TableKey for IpAddr {
    fn word(&self) -> u128 {
        ip_word(self)
    }
}

/// A host and a 32-bit hash of something it did (the registered domain of its DNS queries).
impl TableKey for (IpAddr, u32) {
    fn word(&self) -> u128 {
        ip_word(&self.0) ^ (u128::from(self.1) << 96).rotate_left(13)
    }
}

/// A hardware address (a DHCP client's).
impl TableKey for [u8; 6] {
    fn word(&self) -> u128 {
        let mut b = [0u8; 16];
        b[..6].copy_from_slice(self);
        u128::from_le_bytes(b)
    }
}

/// A key as the map holds it, hashed as one word.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct HostKey<K>(pub(crate) K);

impl<K: TableKey> Hash for HostKey<K> {
    fn hash<H: Hasher>(&self, h: &mut H) {
        h.write_u128(self.0.word());
    }
}

/// One tumbling window of a host's activity.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Window {
    pub start: Option<Instant>,
    pub packets: u32,
    pub bytes: u64,
    /// Flows this host initiated.
    pub flows: u32,
    /// TCP SYNs (without ACK) it sent.
    pub syns: u32,
    /// Distinct source ports of those SYNs: a SYN scanner sends from one or a few (it matches
    /// answers by them), a flood tool and every `connect()` from a new one each.
    pub syn_src_ports: Sketch,
    /// SYN-ACKs it received.
    pub syn_acks: u32,
    /// Flows it initiated that ended without a reply, or refused (RST before a handshake).
    pub failed: u32,
    pub icmp_echo: u32,
    /// UDP packets it sent.
    pub udp: u32,
    pub arp: u32,
    /// ARP replies it sent that nobody on this tap asked for in this window.
    pub arp_replies: u32,
    pub arp_requests: u32,
    pub dhcp: u32,
    pub dst_ports: Sketch,
    pub dst_hosts: Sketch,
    /// Distinct (host, port) pairs it reached ([`pair_bits`]): as many as its hosts when each
    /// host is reached on one port of its own (a peer-to-peer client meeting its peers).
    pub dst_pairs: Sketch,
    pub dhcp_macs: Sketch,
    /// Distinct addresses it asked for in ARP requests (a local sweep sends no IP at all).
    pub arp_targets: Sketch,
    /// The kinds of crafted probe it sent, one bit each ([`crate::wire::L4::crafted`]).
    pub crafted: u8,
    /// The IP protocols (or IPv6 next headers) it sent, one bit each: an IP protocol scan
    /// (nmap -sO) tries them all; a host uses a handful.
    pub protocols: [u64; 4],
}

/// What a table keeps a window of: a tumbling window's counters, which know when they started.
pub trait Tumbling: Copy + Default {
    fn start(&self) -> Option<Instant>;
    /// An empty window starting at `at`.
    fn starting(at: Instant) -> Self;
}

/// [`Tumbling`] for window structs whose `start` field is when they began and whose default
/// is empty.
macro_rules! tumbling {
    ($($window:ty),+) => {$(
        impl $crate::hosts::Tumbling for $window {
            fn start(&self) -> Option<$crate::Instant> {
                self.start
            }
            fn starting(at: $crate::Instant) -> Self {
                Self { start: Some(at), ..Self::default() }
            }
        }
    )+};
}
pub(crate) use tumbling;

tumbling!(Window);

/// The shortest span a flood detector's rate is taken over ([`Windows::span`]): a burst
/// shorter than this reads as its packets over 3 s. A browser loading a page of 150 resources
/// in a second and a half is a burst of 100 requests a second, not a flood of them; a flood at
/// four times its threshold is named within a second.
pub const MIN_SPAN: Duration = Duration::from_secs(3);

/// A host's two windows, the current one and the one before, and when it was last seen.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Windows<W> {
    pub cur: W,
    pub prev: W,
    pub last: Option<Instant>,
}

/// A source host's windows.
pub type HostWindow = Windows<Window>;

impl<W: Tumbling> Windows<W> {
    fn roll(&mut self, now: Instant, window: Duration) {
        match self.cur.start() {
            None => self.cur = W::starting(now),
            Some(start) if now - start >= window => {
                // A gap of two windows or more leaves nothing that overlaps.
                self.prev = if now - start < window * 2 { self.cur } else { W::default() };
                self.cur = W::starting(now);
            }
            Some(_) => {}
        }
        if self.last.is_none_or(|l| now > l) {
            self.last = Some(now);
        }
    }

    /// Seconds the counts at `now` span, for the rates a flood detector reads: the whole
    /// window once the previous one holds anything; before that, the time since the current one
    /// began (the host's first packet), at least [`MIN_SPAN`]. Over the whole window, a flood
    /// that began two seconds ago reads a fifth of its rate.
    pub fn span(&self, now: Instant, window: Duration) -> f32 {
        let w = window.total_micros().max(1) as f32 / 1e6;
        match (self.prev.start(), self.cur.start()) {
            (None, Some(start)) => {
                let since = (now - start).total_micros() as f32 / 1e6;
                since.clamp((MIN_SPAN.total_micros() as f32 / 1e6).min(w), w)
            }
            _ => w,
        }
    }

    /// The weight of the previous window in the sliding one at `now`, and the window's length in
    /// seconds.
    pub fn slide(&self, now: Instant, window: Duration) -> (f32, f32) {
        let w = window.total_micros().max(1) as f32;
        let into = self.cur.start().map_or(0.0, |s| (now - s).total_micros() as f32);
        ((1.0 - into / w).clamp(0.0, 1.0), w / 1e6)
    }
}

/// The window features of one host, in the units of `models/features.json`.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct HostFeatures {
    pub dst_ports: f32,
    pub dst_hosts: f32,
    pub flows: f32,
    pub failed: f32,
    pub syn_synack_ratio: f32,
    pub pkt_rate: f32,
    pub icmp_echo_rate: f32,
    pub arp_rate: f32,
    pub arp_reply_ratio: f32,
    pub dhcp_rate: f32,
    pub dhcp_macs: f32,
    /// For the window detectors ([`crate::detect`]): SYNs and UDP packets a second, ARP
    /// replies in the window.
    pub syn_rate: f32,
    pub udp_rate: f32,
    pub arp_replies: f32,
    /// Packets it sent in the window.
    pub packets: f32,
    /// Distinct addresses it asked for in ARP requests, for the window detectors.
    pub arp_targets: f32,
    /// Distinct source ports of its SYNs, for the window detectors.
    pub syn_src_ports: f32,
    /// Kinds of crafted probe it sent in the window.
    pub crafted_kinds: f32,
    /// Distinct IP protocols it sent in the window.
    pub protocols: f32,
    /// The window's length over the seconds its counts span ([`Windows::span`]), 1 or more:
    /// a rate times this is the rate since the host began sending, for the flood detectors
    /// (the models read the rates over the window).
    pub burst: f32,
}

impl HostWindow {
    /// Distinct (host, port) pairs it reached over the sliding window, for the window detectors
    /// (not a feature: it is read at a judgement, not for every flow that ends).
    pub fn dst_pairs(&self) -> f32 {
        self.cur.dst_pairs.union(&self.prev.dst_pairs).estimate()
    }

    /// Features at `now`.
    pub fn features(&self, now: Instant, window: Duration) -> HostFeatures {
        let (weight, secs) = self.slide(now, window);
        let (c, p) = (&self.cur, &self.prev);
        let slide = |a: u32, b: u32| a as f32 + b as f32 * weight;
        let syns = slide(c.syns, p.syns);
        let arp = slide(c.arp, p.arp);
        HostFeatures {
            dst_ports: c.dst_ports.union(&p.dst_ports).estimate(),
            dst_hosts: c.dst_hosts.union(&p.dst_hosts).estimate(),
            flows: slide(c.flows, p.flows),
            failed: slide(c.failed, p.failed),
            syn_synack_ratio: syns / (slide(c.syn_acks, p.syn_acks) + 1.0),
            pkt_rate: slide(c.packets, p.packets) / secs,
            icmp_echo_rate: slide(c.icmp_echo, p.icmp_echo) / secs,
            arp_rate: arp / secs,
            arp_reply_ratio: slide(c.arp_replies, p.arp_replies) / (arp + 1.0),
            dhcp_rate: slide(c.dhcp, p.dhcp) / secs,
            dhcp_macs: c.dhcp_macs.union(&p.dhcp_macs).estimate(),
            syn_rate: syns / secs,
            udp_rate: slide(c.udp, p.udp) / secs,
            arp_replies: slide(c.arp_replies, p.arp_replies),
            packets: slide(c.packets, p.packets),
            arp_targets: c.arp_targets.union(&p.arp_targets).estimate(),
            syn_src_ports: c.syn_src_ports.union(&p.syn_src_ports).estimate(),
            crafted_kinds: (c.crafted | p.crafted).count_ones() as f32,
            protocols: c
                .protocols
                .iter()
                .zip(p.protocols.iter())
                .map(|(a, b)| (a | b).count_ones())
                .sum::<u32>() as f32,
            burst: secs / self.span(now, window),
        }
    }
}

/// Counters of a window table, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HostCounters {
    pub created: u64,
    pub expired: u64,
    pub evicted: u64,
}

/// `N` slots (a power of two) for hosts, or other keys `K`, each with its [`Windows`] of `W`; it
/// holds up to [`Self::HIGH_WATER`] of them (7/8).
#[derive(Debug)]
pub struct WindowTable<W, const N: usize, K = IpAddr> {
    map: Map<HostKey<K>, Windows<W>, N>,
    window: Duration,
    counters: HostCounters,
    /// Where the last key looked up sits: runs of one host skip the hash lookup.
    last_hit: Option<(HostKey<K>, usize)>,
}

/// The source hosts' windows.
pub type HostTable<const N: usize> = WindowTable<Window, N>;

impl<const N: usize> Default for HostTable<N> {
    fn default() -> Self {
        Self::new(HostConfig::default())
    }
}

impl<const N: usize> HostTable<N> {
    pub fn new(config: HostConfig) -> Self {
        Self::with_window(config.window)
    }
    pub fn config(&self) -> HostConfig {
        HostConfig { window: self.window }
    }
    /// Features of `host` at `now`; zeros for a host not seen.
    pub fn features(&self, host: &IpAddr, now: Instant) -> HostFeatures {
        self.map.get(&HostKey(*host)).map(|h| h.features(now, self.window)).unwrap_or_default()
    }
}

impl<W: Tumbling, const N: usize, K: TableKey> WindowTable<W, N, K> {
    /// Keys held at most: 7/8 of the slots, as the flow table (`FlowTable::HIGH_WATER`): a
    /// hash index near full walks long runs on every miss and removal, and a flood from many
    /// sources is a miss a packet.
    pub const HIGH_WATER: usize = if N >= 8 { N - N / 8 } else { N };

    pub fn with_window(window: Duration) -> Self {
        WindowTable { map: Map::new(), window, counters: HostCounters::default(), last_hit: None }
    }
    pub fn window(&self) -> Duration {
        self.window
    }
    pub fn counters(&self) -> &HostCounters {
        &self.counters
    }
    pub fn len(&self) -> usize {
        self.map.len()
    }
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
    pub fn get(&self, host: &K) -> Option<&Windows<W>> {
        self.map.get(&HostKey(*host))
    }
    pub fn iter(&self) -> impl Iterator<Item = (&K, &Windows<W>)> {
        self.map.iter().map(|(k, v)| (&k.0, v))
    }

    /// Forget every host (a new, unrelated input follows); counters stay.
    pub fn clear(&mut self) {
        self.map.clear();
    }

    /// The host's current window, made room for and rolled forward to `now`. `None` only if the
    /// table cannot hold the host (capacity 0), counted as an eviction.
    pub fn window_mut(&mut self, host: K, now: Instant) -> Option<&mut W> {
        let key = HostKey(host);
        let window = self.window;
        let found = match self.last_hit {
            Some((k, i)) if k == key && self.map.get_index(i).is_some_and(|(at, _)| *at == key) => {
                Some(i)
            }
            _ => self.map.get_index_of(&key),
        };
        let i = match found {
            Some(i) => i,
            None => {
                if self.map.len() >= Self::HIGH_WATER {
                    self.make_room(now);
                }
                if self.map.insert(key, Windows::default()).is_err() {
                    self.counters.evicted += 1;
                    return None;
                }
                self.counters.created += 1;
                self.map.len() - 1
            }
        };
        self.last_hit = Some((key, i));
        let (_, h) = self.map.get_index_mut(i)?;
        h.roll(now, window);
        Some(&mut h.cur)
    }

    /// The host's current window if it is in the table already, rolled forward to `now`.
    pub fn tracked_mut(&mut self, host: K, now: Instant) -> Option<&mut W> {
        let window = self.window;
        let h = self.map.get_mut(&HostKey(host))?;
        h.roll(now, window);
        Some(&mut h.cur)
    }

    /// Forget hosts with nothing in either window.
    pub fn expire(&mut self, now: Instant) {
        let limit = self.window * 2;
        let n = self.remove_where(usize::MAX, |h| h.last.is_none_or(|l| now - l >= limit));
        self.counters.expired += n as u64;
    }

    /// One pass, last to first, removing at most `limit` hosts that `gone` picks (see
    /// `FlowTable::remove_where` for why not `retain`).
    fn remove_where(&mut self, limit: usize, mut gone: impl FnMut(&Windows<W>) -> bool) -> usize {
        let mut removed = 0;
        let mut i = self.map.len();
        while i > 0 && removed < limit {
            i -= 1;
            let Some((key, h)) = self.map.get_index(i) else { continue };
            if gone(h) {
                let key = *key;
                if self.map.swap_remove(&key).is_some() {
                    removed += 1;
                }
            }
        }
        removed
    }

    fn make_room(&mut self, now: Instant) {
        self.expire(now);
        if self.map.len() < Self::HIGH_WATER {
            return;
        }
        let key = |h: &Windows<W>| h.last.map_or(0, |l| l.total_micros());
        let oldest = self.map.values().map(key).min().unwrap_or(0);
        let cutoff = oldest_eighth(oldest, now);
        let n = self.remove_where((N / 8).max(1), |h| key(h) <= cutoff);
        self.counters.evicted += n as u64;
    }
}

/// How a full table makes room: its entries last touched by this time (µs), the oldest eighth
/// of the time from the oldest entry's (`oldest_us`) to `now`, go, up to an eighth of its
/// slots at once, so that the scans for them are made once per many new keys. A packet stamped
/// before the oldest entry still makes room: the oldest go.
pub(crate) fn oldest_eighth(oldest_us: i64, now: Instant) -> i64 {
    oldest_us + (now.total_micros() - oldest_us).max(0) / 8
}

impl<const N: usize> HostTable<N> {
    /// Record a port and host this host reached for the first time in a flow.
    /// A flow `host` initiated to `dst` (and `dst_port`, for TCP and UDP: ICMP identifiers and
    /// other protocols are not ports a scan walks).
    pub fn note_flow(&mut self, host: IpAddr, now: Instant, dst: IpAddr, dst_port: Option<u16>) {
        if let Some(w) = self.window_mut(host, now) {
            w.flows += 1;
            if let Some(p) = dst_port {
                w.dst_ports.insert(u64::from(p));
                w.dst_pairs.insert(pair_bits(dst, p));
            }
            w.dst_hosts.insert(ip_bits(dst));
        }
    }

    /// Record a DHCP client hardware address.
    pub fn note_dhcp(&mut self, host: IpAddr, now: Instant, mac: [u8; 6]) {
        if let Some(w) = self.window_mut(host, now) {
            w.dhcp += 1;
            let mut b = [0u8; 8];
            b[..6].copy_from_slice(&mac);
            w.dhcp_macs.insert(u64::from_le_bytes(b));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_the_sketchs_table_is_its_formula_for_every_count_of_bits_set() {
        let m = Sketch::BITS as f32;
        let mut s = Sketch::default();
        assert_eq!(s.estimate().to_bits(), 0.0f32.to_bits());
        for ones in 1..=Sketch::BITS {
            let i = ones - 1;
            s.0[(i / 64) as usize] |= 1 << (i % 64);
            let zeros = (Sketch::BITS - ones).max(1) as f32;
            let formula = m * libm::logf(m / zeros);
            assert_eq!(s.estimate().to_bits(), formula.to_bits(), "{ones} bits set");
        }
    }

    #[test]
    fn test_sketch_estimates() {
        let mut s = Sketch::default();
        assert_eq!(s.estimate(), 0.0);
        for p in 0..100u64 {
            s.insert(p);
            s.insert(p); // duplicates do not count
        }
        let e = s.estimate();
        assert!((90.0..110.0).contains(&e), "{e}");
        let mut big = Sketch::default();
        for p in 0..1000u64 {
            big.insert(p);
        }
        let e = big.estimate();
        assert!((850.0..1150.0).contains(&e), "{e}");
    }

    #[test]
    fn test_sliding_window() {
        let mut t = HostTable::<16>::default();
        let h: IpAddr = [10, 0, 0, 1].into();
        let t0 = Instant::from_secs(100);
        for i in 0..50u16 {
            t.note_flow(h, t0, [10, 0, 0, 2].into(), Some(i));
            if let Some(w) = t.window_mut(h, t0) {
                w.syns += 1;
            }
        }
        let f = t.features(&h, t0);
        assert_eq!(f.flows, 50.0);
        assert_eq!(f.syn_synack_ratio, 50.0);
        assert!((45.0..55.0).contains(&f.dst_ports));
        assert!(f.dst_hosts < 2.0);
        // Half-way through the next window the old one counts half.
        let t1 = t0 + Duration::from_secs(10);
        t.window_mut(h, t1);
        let f = t.features(&h, t1 + Duration::from_secs(5));
        assert_eq!(f.flows, 25.0);
        // Two windows later nothing is left, and the host expires.
        t.window_mut(h, t1 + Duration::from_secs(25));
        assert_eq!(t.features(&h, t1 + Duration::from_secs(25)).flows, 0.0);
        t.expire(t1 + Duration::from_secs(60));
        assert!(t.is_empty());
        assert_eq!(t.counters().expired, 1);
    }

    #[test]
    fn test_full_table_evicts_oldest() {
        // Eight slots hold seven hosts (the high-water mark).
        let mut t = HostTable::<8>::default();
        assert_eq!(HostTable::<8>::HIGH_WATER, 7);
        for i in 0..7u8 {
            t.window_mut([10, 0, 0, i].into(), Instant::from_secs(i64::from(i)));
        }
        assert_eq!(t.counters().evicted, 0);
        t.window_mut([10, 0, 1, 0].into(), Instant::from_secs(9));
        assert_eq!(t.len(), 7);
        assert_eq!(t.counters().evicted, 1);
        // One of the hosts in the oldest eighth of the time span (0 s and 1 s) made room.
        let gone = (0..7u8)
            .filter(|i| t.get(&[10, 0, 0, *i].into()).is_none())
            .collect::<std::vec::Vec<_>>();
        assert!(gone == [0] || gone == [1], "{gone:?}");
    }
}
