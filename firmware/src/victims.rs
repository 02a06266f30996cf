//! Per-destination counters over a sliding window: the attacks a source-side window cannot see
//! because their sources are many or spoofed, named by their victim.
//!
//! A SYN flood from spoofed sources is thousands of one-packet senders, none of which trips a
//! source's window; seen from the victim it is one host receiving SYNs from many sources, with
//! SYNs most of what it receives. An amplification is many reflectors each sending a little;
//! seen from the victim it is UDP arriving from a service port (DNS, NTP, SNMP, ...) far beyond
//! what it asked those services for. Windows work as in [`crate::hosts`]: two tumbling windows
//! read as a sliding one, distinct sources in a 512-bit sketch.

use crate::hosts::{ip_bits, Sketch, WindowTable, Windows};
use crate::{Duration, Instant};
use core::net::IpAddr;

/// Destinations tracked at most (about 120 KiB). Few hosts are attacked at once, and one under
/// attack is seen all the time; the least recently seen are evicted first, counted. A flood's
/// spoofed senders are never tracked.
pub const VICTIMS: usize = 512;

/// UDP ports whose answers are larger than their questions (the services reflection and
/// amplification attacks use), sorted by port, each with the counter its trip names
/// ("victim_amplified_dns", ...).
pub const AMPLIFIERS: [(u16, &str); 25] = [
    (7, "victim_amplified_echo"),
    (17, "victim_amplified_qotd"),
    (19, "victim_amplified_chargen"),
    (53, "victim_amplified_dns"),
    (69, "victim_amplified_tftp"),
    (111, "victim_amplified_portmap"),
    (123, "victim_amplified_ntp"),
    (137, "victim_amplified_netbios"),
    (161, "victim_amplified_snmp"),
    (389, "victim_amplified_cldap"),
    (500, "victim_amplified_isakmp"),
    (520, "victim_amplified_rip"),
    (1434, "victim_amplified_mssql"),
    (1900, "victim_amplified_ssdp"),
    (3283, "victim_amplified_ard"),
    (3702, "victim_amplified_ws_discovery"),
    (4500, "victim_amplified_ipsec_nat_t"),
    (5351, "victim_amplified_nat_pmp"),
    (5353, "victim_amplified_mdns"),
    (5683, "victim_amplified_coap"),
    (10001, "victim_amplified_ubiquiti"),
    (11211, "victim_amplified_memcached"),
    (27015, "victim_amplified_steam"),
    (37810, "victim_amplified_dvr"),
    (47808, "victim_amplified_bacnet"),
];

/// The counter of an amplifying service port, `None` for another port (a binary search: this
/// runs for every UDP packet).
pub fn amplifier(port: u16) -> Option<&'static str> {
    AMPLIFIERS.binary_search_by_key(&port, |(p, _)| *p).ok().map(|i| AMPLIFIERS[i].1)
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
    /// UDP packets it received from an amplifying service port, their bytes, and the last
    /// such port.
    pub amplified: u32,
    pub amplified_bytes: u32,
    pub service: u16,
    /// Bytes of the UDP packets it sent to an amplifying service port (the questions it
    /// asked).
    pub asked_bytes: u32,
    /// Distinct hosts that sent to it.
    pub sources: Sketch,
    /// ICMP protocol unreachables it received (IPv4 type 3 code 2, ICMPv6 parameter problem
    /// code 1): the answers to the protocols it tried that a host does not speak.
    pub proto_unreachables: u32,
}

crate::hosts::tumbling!(RxWindow);

/// A destination's two windows.
pub type VictimWindow = Windows<RxWindow>;

/// What a host received over the window.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct VictimFeatures {
    /// Distinct sources that sent to it.
    pub sources: f32,
    /// SYNs a second it received, and their share of the packets it received.
    pub syn_rate: f32,
    pub syn_share: f32,
    /// UDP packets a second from amplifying services, and how many times the bytes it asked
    /// them the bytes of their answers are (with [`ASKED_SLACK`] beside what it asked).
    pub amplified_rate: f32,
    pub amplification: f32,
    /// The service of the latest such packet.
    pub service: u16,
    /// SYN-ACKs a second it received, and how many times the SYNs it sent.
    pub syn_ack_rate: f32,
    pub reflection: f32,
    /// ICMP protocol unreachables it received in the window: where only the answers of an
    /// IP protocol scan are seen (an asymmetric tap), they name the scanner.
    pub proto_unreachables: f32,
    /// The window's length over the seconds its counts span, 1 or more: the rates times this
    /// are the rates since the host began receiving ([`crate::hosts::Windows::span`]).
    pub burst: f32,
}

impl VictimWindow {
    /// Features at `now`.
    pub fn features(&self, now: Instant, window: Duration) -> VictimFeatures {
        let (weight, secs) = self.slide(now, window);
        let (c, p) = (&self.cur, &self.prev);
        let slide = |a: u32, b: u32| a as f32 + b as f32 * weight;
        let syns = slide(c.syns, p.syns);
        let amplified = slide(c.amplified, p.amplified);
        VictimFeatures {
            sources: c.sources.union(&p.sources).estimate(),
            syn_rate: syns / secs,
            syn_share: syns / slide(c.packets, p.packets).max(1.0),
            amplified_rate: amplified / secs,
            amplification: slide(c.amplified_bytes, p.amplified_bytes)
                / (slide(c.asked_bytes, p.asked_bytes) + ASKED_SLACK),
            service: if c.service != 0 { c.service } else { p.service },
            syn_ack_rate: slide(c.syn_acks, p.syn_acks) / secs,
            reflection: slide(c.syn_acks, p.syn_acks) / (slide(c.syns_sent, p.syns_sent) + 1.0),
            proto_unreachables: slide(c.proto_unreachables, p.proto_unreachables),
            burst: secs / self.span(now, window),
        }
    }
}

/// Bytes counted as asked beside what a host was seen asking: its first question goes
/// uncounted (it is tracked from its first answer on), and one large answer to it is no
/// amplification.
pub const ASKED_SLACK: f32 = 512.0;

/// Up to `N` destinations (a power of two), evicted oldest first when full (a victim under
/// attack is seen all the time), counted.
pub type VictimTable<const N: usize> = WindowTable<RxWindow, N>;

impl<const N: usize> VictimTable<N> {
    /// Features of `host` at `now`; zeros for a host not seen.
    pub fn features(&self, host: &IpAddr, now: Instant) -> VictimFeatures {
        self.get(host).map(|h| h.features(now, self.window())).unwrap_or_default()
    }

    /// Count an ICMP protocol unreachable sent to `dst` (the host that tried the protocol).
    pub fn note_protocol_unreachable(&mut self, dst: IpAddr, now: Instant) {
        if let Some(w) = self.window_mut(dst, now) {
            w.proto_unreachables += 1;
        }
    }

    /// Count a packet of `len` bytes from `src` to `dst`: `tcp` its SYN and ACK flags, `udp`
    /// its UDP ports; `udp_tail` for a later fragment of a UDP datagram (large answers come in
    /// fragments, only the first of which has the ports: the rest count as amplified too).
    /// Amplification is measured in bytes: where the tap sees the spoofed questions too (at
    /// the reflector's site), there is an answer for each question, many times its size.
    #[allow(clippy::too_many_arguments)]
    pub fn note(
        &mut self,
        src: IpAddr,
        dst: IpAddr,
        now: Instant,
        len: u32,
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
                    w.asked_bytes = w.asked_bytes.saturating_add(len);
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
                w.amplified_bytes = w.amplified_bytes.saturating_add(len);
                w.service = sport;
            } else if udp_tail {
                w.amplified += 1;
                w.amplified_bytes = w.amplified_bytes.saturating_add(len);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_spoofed_syns_are_many_sources_to_one_victim() {
        let mut t = VictimTable::<64>::with_window(Duration::from_secs(10));
        let victim: IpAddr = [10, 0, 0, 1].into();
        let now = Instant::from_secs(100);
        for i in 0..2000u32 {
            let src = IpAddr::from(i.wrapping_mul(2_654_435_761).to_be_bytes());
            t.note(src, victim, now, 60, Some((true, false)), None, false);
        }
        let f = t.features(&victim, now);
        assert!(f.sources > 1000.0, "{f:?}");
        assert_eq!((f.syn_rate, f.syn_share), (200.0, 1.0));
        // The sources are not victims of anything: they are only counted as senders.
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn test_answers_beyond_the_questions_are_amplification() {
        let mut t = VictimTable::<64>::with_window(Duration::from_secs(10));
        let (victim, resolver): (IpAddr, IpAddr) = ([10, 0, 0, 1].into(), [10, 0, 0, 53].into());
        let now = Instant::from_secs(100);
        // A client's own lookups: an answer of 300 bytes to each question of 80 (the first
        // question goes uncounted: the client is tracked from its first answer on).
        for _ in 0..20 {
            t.note(victim, resolver, now, 80, None, Some((40000, 53)), false);
            t.note(resolver, victim, now, 300, None, Some((53, 40000)), false);
        }
        let f = t.features(&victim, now);
        assert!(f.amplification <= 4.0, "{f:?}");
        // 600 answers of 1,200 bytes nobody asked for, from many resolvers.
        for i in 0..600u32 {
            let src = IpAddr::from((0x0a01_0000 + i % 50).to_be_bytes());
            t.note(src, victim, now, 1200, None, Some((53, 80)), false);
        }
        let f = t.features(&victim, now);
        assert!(f.amplification > 20.0 && f.amplified_rate >= 60.0, "{f:?}");
        assert_eq!(amplifier(f.service), Some("victim_amplified_dns"));
        assert!(f.sources > 40.0);
        // Where the spoofed questions are seen too (at the reflector's site): one answer of
        // 4,200 bytes (in three fragments) for each question of 90, from one resolver.
        let target: IpAddr = [10, 0, 0, 2].into();
        for _ in 0..100 {
            t.note(target, resolver, now, 90, None, Some((40000, 53)), false);
            t.note(resolver, target, now, 1500, None, Some((53, 40000)), false);
            t.note(resolver, target, now, 1500, None, None, true);
            t.note(resolver, target, now, 1200, None, None, true);
        }
        let f = t.features(&target, now);
        assert!(f.amplification > 10.0 && f.amplified_rate >= 30.0, "{f:?}");
    }
}

#[cfg(test)]
mod amplifier_tests {
    use super::*;

    #[test]
    fn test_amplifiers_are_sorted_and_found() {
        assert!(AMPLIFIERS.windows(2).all(|w| w[0].0 < w[1].0));
        for (port, counter) in AMPLIFIERS {
            assert_eq!(amplifier(port), Some(counter));
        }
        assert_eq!(amplifier(443), None);
    }
}
