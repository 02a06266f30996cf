//! Per-destination counters over a sliding window: the attacks a source-side window cannot see
//! because their sources are many or spoofed, named by their victim.
//!
//! A SYN flood from spoofed sources is thousands of one-packet senders, none of which trips a
//! source's window; seen from the victim it is one host receiving SYNs from many sources, with
//! SYNs most of what it receives. An amplification is many reflectors each sending a little;
//! seen from the victim it is UDP arriving from a service port (DNS, NTP, SNMP, ...) far beyond
//! what it asked those services for. Windows work as in [`crate::hosts`]: two tumbling windows
//! read as a sliding one, distinct sources in a 512-bit sketch.

use crate::flow::Map;
use crate::hosts::{ip_bits, HostKey, Sketch};
use crate::{Duration, Instant};
use core::net::IpAddr;

/// Destinations tracked at most. Few hosts are attacked at once; a sweep's many targets are
/// evicted oldest first, counted.
pub const VICTIMS: usize = 1024;

/// UDP ports whose answers are larger than their questions (the services reflection and
/// amplification attacks use), with a name for the reason.
pub const AMPLIFIERS: [(u16, &str); 25] = [
    (7, "echo"),
    (17, "qotd"),
    (19, "chargen"),
    (53, "dns"),
    (69, "tftp"),
    (111, "portmap"),
    (123, "ntp"),
    (137, "netbios"),
    (161, "snmp"),
    (389, "cldap"),
    (500, "isakmp"),
    (520, "rip"),
    (1434, "mssql"),
    (1900, "ssdp"),
    (3283, "ard"),
    (3702, "ws-discovery"),
    (4500, "ipsec-nat-t"),
    (5351, "nat-pmp"),
    (5353, "mdns"),
    (5683, "coap"),
    (10001, "ubiquiti"),
    (11211, "memcached"),
    (27015, "steam"),
    (37810, "dvr"),
    (47808, "bacnet"),
];

/// The name of an amplifying service port.
pub fn amplifier(port: u16) -> Option<&'static str> {
    AMPLIFIERS.iter().find(|(p, _)| *p == port).map(|(_, n)| *n)
}

/// One tumbling window of what a host received.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct RxWindow {
    pub start: Option<Instant>,
    /// IP packets it received.
    pub packets: u32,
    /// TCP SYNs (without ACK) it received.
    pub syns: u32,
    /// TCP SYN-ACKs it received, and SYNs it sent (the connections it asked for): SYN-ACKs far
    /// beyond them are a TCP reflection, servers answering SYNs spoofed with its address.
    pub syn_acks: u32,
    pub syns_sent: u32,
    /// UDP packets it received from an amplifying service port, and the last such port.
    pub amplified: u32,
    pub service: u16,
    /// UDP packets it sent to an amplifying service port (the questions it asked).
    pub asked: u32,
    /// Distinct hosts that sent to it.
    pub sources: Sketch,
}

/// A destination's two windows.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct VictimWindow {
    pub cur: RxWindow,
    pub prev: RxWindow,
    pub last: Option<Instant>,
}

/// What a host received over the window.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct VictimFeatures {
    /// Distinct sources that sent to it.
    pub sources: f32,
    /// SYNs a second it received, and their share of the packets it received.
    pub syn_rate: f32,
    pub syn_share: f32,
    /// UDP packets a second from amplifying services, and how many times what it asked them.
    pub amplified_rate: f32,
    pub amplification: f32,
    /// The service of the latest such packet.
    pub service: u16,
    /// SYN-ACKs a second it received, and how many times the SYNs it sent.
    pub syn_ack_rate: f32,
    pub reflection: f32,
}

impl VictimWindow {
    fn roll(&mut self, now: Instant, window: Duration) {
        match self.cur.start {
            None => self.cur.start = Some(now),
            Some(start) if now - start >= window => {
                self.prev = if now - start < window * 2 { self.cur } else { RxWindow::default() };
                self.cur = RxWindow { start: Some(now), ..RxWindow::default() };
            }
            Some(_) => {}
        }
        if self.last.is_none_or(|l| now > l) {
            self.last = Some(now);
        }
    }

    /// Features at `now`.
    pub fn features(&self, now: Instant, window: Duration) -> VictimFeatures {
        let w = window.total_micros().max(1) as f32;
        let into = self.cur.start.map_or(0.0, |s| (now - s).total_micros() as f32);
        let weight = (1.0 - into / w).clamp(0.0, 1.0);
        let (c, p) = (&self.cur, &self.prev);
        let slide = |a: u32, b: u32| a as f32 + b as f32 * weight;
        let secs = w / 1e6;
        let syns = slide(c.syns, p.syns);
        let amplified = slide(c.amplified, p.amplified);
        VictimFeatures {
            sources: c.sources.union(&p.sources).estimate(),
            syn_rate: syns / secs,
            syn_share: syns / slide(c.packets, p.packets).max(1.0),
            amplified_rate: amplified / secs,
            amplification: amplified / (slide(c.asked, p.asked) + 1.0),
            service: if c.service != 0 { c.service } else { p.service },
            syn_ack_rate: slide(c.syn_acks, p.syn_acks) / secs,
            reflection: slide(c.syn_acks, p.syn_acks) / (slide(c.syns_sent, p.syns_sent) + 1.0),
        }
    }
}

/// Counters of the victim table, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct VictimCounters {
    pub created: u64,
    pub expired: u64,
    pub evicted: u64,
}

/// Up to `N` destinations (a power of two).
#[derive(Debug)]
pub struct VictimTable<const N: usize> {
    map: Map<HostKey, VictimWindow, N>,
    window: Duration,
    counters: VictimCounters,
    last_hit: Option<(HostKey, usize)>,
}

impl<const N: usize> VictimTable<N> {
    pub fn new(window: Duration) -> Self {
        VictimTable { map: Map::new(), window, counters: VictimCounters::default(), last_hit: None }
    }
    pub fn window(&self) -> Duration {
        self.window
    }
    pub fn counters(&self) -> &VictimCounters {
        &self.counters
    }
    pub fn len(&self) -> usize {
        self.map.len()
    }
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
    pub fn iter(&self) -> impl Iterator<Item = (&IpAddr, &VictimWindow)> {
        self.map.iter().map(|(k, v)| (&k.0, v))
    }
    pub fn clear(&mut self) {
        self.map.clear();
    }

    /// Features of `host` at `now`; zeros for a host not seen.
    pub fn features(&self, host: &IpAddr, now: Instant) -> VictimFeatures {
        self.map.get(&HostKey(*host)).map(|h| h.features(now, self.window)).unwrap_or_default()
    }

    /// The host's current window, made room for and rolled forward to `now`.
    pub fn window_mut(&mut self, host: IpAddr, now: Instant) -> Option<&mut RxWindow> {
        let key = HostKey(host);
        let found = match self.last_hit {
            Some((k, i)) if k == key && self.map.get_index(i).is_some_and(|(at, _)| *at == key) => {
                Some(i)
            }
            _ => self.map.get_index_of(&key),
        };
        let i = match found {
            Some(i) => i,
            None => {
                if self.map.is_full() {
                    self.make_room(now);
                }
                if self.map.insert(key, VictimWindow::default()).is_err() {
                    self.counters.evicted += 1;
                    return None;
                }
                self.counters.created += 1;
                self.map.len() - 1
            }
        };
        self.last_hit = Some((key, i));
        let window = self.window;
        let (_, h) = self.map.get_index_mut(i)?;
        h.roll(now, window);
        Some(&mut h.cur)
    }

    /// Count a packet from `src` to `dst`: `tcp` its SYN and ACK flags, `udp` its UDP
    /// ports; `udp_tail` for a later fragment of a UDP datagram (large answers come in
    /// fragments, only the first of which has the ports: the rest count as amplified too).
    pub fn note(
        &mut self,
        src: IpAddr,
        dst: IpAddr,
        now: Instant,
        tcp: Option<(bool, bool)>,
        udp: Option<(u16, u16)>,
        udp_tail: bool,
    ) {
        let syn = tcp == Some((true, false));
        // What a host asked for counts only once it is tracked (it received something): the
        // senders of a spoofed flood are never tracked, and a client's first question is.
        if syn || udp.is_some_and(|(_, d)| amplifier(d).is_some()) {
            if let Some(w) = self.tracked_mut(src, now) {
                if syn {
                    w.syns_sent += 1;
                } else {
                    w.asked += 1;
                }
            }
        }
        if let Some(w) = self.window_mut(dst, now) {
            w.packets += 1;
            w.sources.insert(ip_bits(src));
            match tcp {
                Some((true, false)) => w.syns += 1,
                Some((true, true)) => w.syn_acks += 1,
                _ => {}
            }
            if let Some((sport, _)) = udp.filter(|(s, _)| amplifier(*s).is_some()) {
                w.amplified += 1;
                w.service = sport;
            } else if udp_tail {
                w.amplified += 1;
            }
        }
    }

    /// The host's current window if it is tracked already, rolled forward to `now`.
    fn tracked_mut(&mut self, host: IpAddr, now: Instant) -> Option<&mut RxWindow> {
        let window = self.window;
        let h = self.map.get_mut(&HostKey(host))?;
        h.roll(now, window);
        Some(&mut h.cur)
    }

    /// Forget destinations with nothing in either window.
    pub fn expire(&mut self, now: Instant) {
        let limit = self.window * 2;
        let mut i = self.map.len();
        while i > 0 {
            i -= 1;
            let Some((key, h)) = self.map.get_index(i) else { continue };
            if h.last.is_none_or(|l| now - l >= limit) {
                let key = *key;
                if self.map.swap_remove(&key).is_some() {
                    self.counters.expired += 1;
                }
            }
        }
    }

    fn make_room(&mut self, now: Instant) {
        self.expire(now);
        if !self.map.is_full() {
            return;
        }
        // The least recently seen eighth goes (a victim under attack is seen all the time).
        let key = |h: &VictimWindow| h.last.map_or(0, |l| l.total_micros());
        let oldest = self.map.values().map(key).min().unwrap_or(0);
        let cutoff = oldest + (now.total_micros() - oldest) / 8;
        let mut removed = 0;
        let mut i = self.map.len();
        while i > 0 && removed < (N / 8).max(1) {
            i -= 1;
            let Some((k, h)) = self.map.get_index(i) else { continue };
            if key(h) <= cutoff {
                let k = *k;
                if self.map.swap_remove(&k).is_some() {
                    removed += 1;
                }
            }
        }
        self.counters.evicted += removed as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_spoofed_syns_are_many_sources_to_one_victim() {
        let mut t = VictimTable::<64>::new(Duration::from_secs(10));
        let victim: IpAddr = [10, 0, 0, 1].into();
        let now = Instant::from_secs(100);
        for i in 0..2000u32 {
            let src = IpAddr::from(i.wrapping_mul(2_654_435_761).to_be_bytes());
            t.note(src, victim, now, Some((true, false)), None, false);
        }
        let f = t.features(&victim, now);
        assert!(f.sources > 1000.0, "{f:?}");
        assert_eq!((f.syn_rate, f.syn_share), (200.0, 1.0));
        // The sources are not victims of anything: they are only counted as senders.
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn test_answers_beyond_the_questions_are_amplification() {
        let mut t = VictimTable::<64>::new(Duration::from_secs(10));
        let (victim, resolver): (IpAddr, IpAddr) = ([10, 0, 0, 1].into(), [10, 0, 0, 53].into());
        let now = Instant::from_secs(100);
        // A client's own lookups: one answer a question (the first question goes uncounted:
        // the client is tracked from its first answer on).
        for _ in 0..20 {
            t.note(victim, resolver, now, None, Some((40000, 53)), false);
            t.note(resolver, victim, now, None, Some((53, 40000)), false);
        }
        let f = t.features(&victim, now);
        assert!(f.amplification <= 1.0, "{f:?}");
        // 600 answers nobody asked for, from many resolvers.
        for i in 0..600u32 {
            let src = IpAddr::from((0x0a01_0000 + i % 50).to_be_bytes());
            t.note(src, victim, now, None, Some((53, 80)), false);
        }
        let f = t.features(&victim, now);
        assert!(f.amplification > 20.0 && f.amplified_rate >= 60.0, "{f:?}");
        assert_eq!(amplifier(f.service), Some("dns"));
        assert!(f.sources > 40.0);
    }
}
