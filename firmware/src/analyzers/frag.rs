//! IP fragments: the reassembly ambiguities an evasion is made of (Ptacek and Newsham's, and
//! the IPv6 ones RFC 5722, 7112 and 8200 forbid), in the spirit of Zeek's fragment weirds and
//! Suricata's defrag events. The monitor does not reassemble: per datagram (source,
//! destination, protocol and identification) it keeps the byte ranges it has seen and the
//! end the last fragment gave, and tells the source's window the first time a datagram has a
//! fragment that
//!
//! - overlaps one already seen with other bytes: the target and a monitor may each keep
//!   another version (a copy of one, as a mirror port makes when it sees a packet twice, is
//!   not an overlap);
//! - would put the datagram past 65,535 bytes;
//! - is not the last, yet holds nothing or a length that is not a multiple of 8;
//! - lies past the end the last fragment gave, or is a second last one with another end;
//! - is the first, without its whole transport header or IPv6 header chain (RFC 1858's tiny
//!   fragment, RFC 7112);
//! - carries more than one IPv6 fragment header;
//! - is an atomic fragment (offset 0, nothing more) with the identification of a datagram
//!   being reassembled: a stack takes it alone (RFC 6946), a monitor may merge it.
//!
//! Three things of IPv6's own are said the same way, per packet: a header chain longer than
//! any stack sends ([`crate::wire::MAX_IPV6_EXT`]), which hides the transport header from
//! whoever stops walking; options no stack sends ([`crate::wire::Ipv6Ext::covert_options`]),
//! where a covert channel hides data; and a Packet Too Big below IPv6's minimum MTU of 1280,
//! which a host must not obey (RFC 8200) and older ones answer by fragmenting all they send to
//! that peer (RFC 8021's atomic fragments): forged, to open the way to a fragment attack.
//!
//! The table is bounded ([`DATAGRAMS`]); when full, the datagram touched longest ago goes
//! (counted). A datagram in more than [`RANGES`] separate pieces at once has the rest unchecked.

use super::{Recent, SourceWindow, SOURCES};
use crate::hosts::{TableKey, WindowTable};
use crate::wire::{Frag, IpInfo, L4};
use crate::{Duration, Instant};
use core::net::IpAddr;

/// Slots for datagrams being seen in fragments at once (7/8 held, `Recent::HIGH_WATER`).
pub const DATAGRAMS: usize = 64;
/// Separate pieces of one datagram kept (fragments that touch are one piece).
pub const RANGES: usize = 8;
/// The last fragments of a datagram kept, to tell a copy of one from an overlap.
const RECENT: usize = 4;
/// How long a datagram is waited for (RFC 8200's reassembly timeout).
pub const REASSEMBLY_TIME: Duration = Duration::from_secs(60);

/// What was wrong with a datagram's fragments (the first thing found), or with one IPv6
/// packet's headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(u8)]
pub enum FragAnomaly {
    #[default]
    None = 0,
    Overlap,
    Oversized,
    BadLength,
    PastEnd,
    SplitHeader,
    NestedHeaders,
    AtomicInReassembly,
    LongChain,
    CovertOptions,
    TooBigBelowMinimum,
}

impl FragAnomaly {
    /// The counter an alert names.
    pub const fn counter(self) -> &'static str {
        match self {
            FragAnomaly::None => "ip_fragment_anomalies",
            FragAnomaly::Overlap => "ip_fragment_overlaps",
            FragAnomaly::Oversized => "ip_fragments_oversized",
            FragAnomaly::BadLength => "ip_fragment_lengths",
            FragAnomaly::PastEnd => "ip_fragments_past_end",
            FragAnomaly::SplitHeader => "ip_fragment_split_headers",
            FragAnomaly::NestedHeaders => "ipv6_fragment_headers",
            FragAnomaly::AtomicInReassembly => "ipv6_atomic_fragments",
            FragAnomaly::LongChain => "ipv6_header_chains",
            FragAnomaly::CovertOptions => "ipv6_covert_options",
            FragAnomaly::TooBigBelowMinimum => "ipv6_too_big_below_minimum",
        }
    }
}

/// A datagram as its fragments name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DatagramKey {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub id: u32,
    pub protocol: u8,
}

impl TableKey for DatagramKey {
    fn word(&self) -> u128 {
        let tail = (u128::from(self.id) << 8) | u128::from(self.protocol);
        self.src.word() ^ self.dst.word().rotate_left(61) ^ (tail << 88)
    }
}

/// What is known of one datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Datagram {
    /// Byte ranges seen, `[start, end)`, merged when they touch; `pieces` of them in use.
    ranges: [(u32, u32); RANGES],
    pieces: u8,
    /// The last fragments seen (start, end, digest): `kept` of them, the next goes at `next`.
    recent: [(u32, u32, u32); RECENT],
    kept: u8,
    next: u8,
    /// Where the datagram ends, once its last fragment came.
    end: Option<u32>,
    /// An anomaly was told already: one per datagram.
    told: bool,
}

impl Datagram {
    fn covered(&self) -> &[(u32, u32)] {
        &self.ranges[..usize::from(self.pieces)]
    }

    /// Add `[start, end)`, merging what it touches; false when there was no room for it.
    fn cover(&mut self, start: u32, end: u32) -> bool {
        let (mut lo, mut hi) = (start, end);
        let mut kept = 0;
        for i in 0..usize::from(self.pieces) {
            let (a, b) = self.ranges[i];
            if a <= hi && lo <= b {
                lo = lo.min(a);
                hi = hi.max(b);
            } else {
                self.ranges[kept] = (a, b);
                kept += 1;
            }
        }
        if kept == RANGES {
            self.pieces = kept as u8;
            return false;
        }
        self.ranges[kept] = (lo, hi);
        self.pieces = kept as u8 + 1;
        true
    }

    /// What `f` (already checked alone) says of this datagram, and remember it.
    fn add(&mut self, f: &Frag) -> FragAnomaly {
        let (start, end) = (f.offset, f.offset.saturating_add(f.len));
        let piece = (start, end, f.digest);
        if self.recent[..usize::from(self.kept)].contains(&piece) {
            return FragAnomaly::None;
        }
        let mut found = FragAnomaly::None;
        if let Some(e) = self.end {
            if end > e || (!f.more && end != e) {
                found = FragAnomaly::PastEnd;
            }
        } else if !f.more && self.covered().iter().any(|&(_, b)| b > end) {
            found = FragAnomaly::PastEnd;
        }
        if start < end && self.covered().iter().any(|&(a, b)| start < b && a < end) {
            found = FragAnomaly::Overlap;
        }
        if !f.more && self.end.is_none() {
            self.end = Some(end);
        }
        if start < end {
            let _ = self.cover(start, end);
        }
        self.recent[usize::from(self.next)] = piece;
        self.next = (self.next + 1) % RECENT as u8;
        self.kept = (self.kept + 1).min(RECENT as u8);
        found
    }
}

/// The datagrams being seen in fragments.
pub type Datagrams = Recent<DatagramKey, Datagram, DATAGRAMS>;

/// What one fragment says alone, before its datagram is looked at.
fn alone(f: &Frag) -> FragAnomaly {
    if f.headers > 1 {
        FragAnomaly::NestedHeaders
    } else if f.split_header {
        FragAnomaly::SplitHeader
    } else if f.offset.saturating_add(f.len) > 65_535 {
        FragAnomaly::Oversized
    } else if f.more && (f.len == 0 || !f.len.is_multiple_of(8)) {
        FragAnomaly::BadLength
    } else {
        FragAnomaly::None
    }
}

/// IPv6's minimum link MTU (RFC 8200).
pub const IPV6_MIN_MTU: u32 = 1280;

/// Whether `ip` says something [`packet`] reads: a fragment, or one of IPv6's own.
pub(crate) fn concerns(ip: &IpInfo) -> bool {
    ip.frag.is_some() || ip.ipv6_ext.overflow || ip.ipv6_ext.covert_options || too_big_below(ip)
}

/// An ICMPv6 Packet Too Big that gives an MTU below IPv6's minimum.
fn too_big_below(ip: &IpInfo) -> bool {
    matches!(ip.l4, L4::Icmpv6 { icmp_type: 2, mtu: Some(m), .. } if m < IPV6_MIN_MTU)
}

/// One IP packet that is a fragment, or has an IPv6 header chain left unread, options no
/// stack sends, or is a Packet Too Big below the minimum MTU.
pub(crate) fn packet(
    sources: &mut WindowTable<SourceWindow, SOURCES>,
    table: &mut Datagrams,
    ip: &IpInfo,
    now: Instant,
) {
    let found = match ip.frag {
        _ if ip.ipv6_ext.overflow => FragAnomaly::LongChain,
        _ if ip.ipv6_ext.covert_options => FragAnomaly::CovertOptions,
        _ if too_big_below(ip) => FragAnomaly::TooBigBelowMinimum,
        None => return,
        Some(f) => {
            let key = DatagramKey { src: ip.src, dst: ip.dst, id: f.id, protocol: ip.protocol };
            let first = alone(&f);
            if f.atomic() {
                // Not part of any reassembly (RFC 6946), unless a monitor makes it one.
                match table.get_mut(&key, now) {
                    Some(d) if !d.told => {
                        d.told = true;
                        if first == FragAnomaly::None {
                            FragAnomaly::AtomicInReassembly
                        } else {
                            first
                        }
                    }
                    Some(_) => FragAnomaly::None,
                    None => first,
                }
            } else {
                let Some(d) = table.entry(key, Datagram::default(), now) else { return };
                let then = d.add(&f);
                let found = if first == FragAnomaly::None { then } else { first };
                if d.told {
                    FragAnomaly::None
                } else {
                    d.told = found != FragAnomaly::None;
                    found
                }
            }
        }
    };
    if found == FragAnomaly::None {
        return;
    }
    if let Some(w) = sources.window_mut(ip.src, now) {
        w.frag_anomalies += 1;
        w.frag_anomaly = found;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analyzers::{Analyzers, WINDOW};
    use crate::wire::Ipv6Ext;
    use core::net::Ipv6Addr;

    fn src() -> IpAddr {
        IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 2))
    }

    fn ip(offset: u32, len: u32, more: bool, digest: u32) -> IpInfo {
        IpInfo {
            src: src(),
            dst: IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 1)),
            ip_len: 48 + len,
            ttl: 64,
            protocol: 58,
            ipv4_options_len: 0,
            frag: Some(Frag { id: 7, offset, len, more, headers: 1, split_header: false, digest }),
            ipv6_ext: Ipv6Ext { fragment: true, count: 1, ..Ipv6Ext::default() },
            l4: L4::None,
        }
    }

    /// Play `packets` and give the source's anomalies and the last one's counter.
    fn play(packets: &[IpInfo]) -> (f32, &'static str) {
        let mut an = Analyzers::new();
        let t = Instant::from_secs(100);
        for p in packets {
            an.ip(p, &[], true, t);
        }
        let w = an.sources().get(&src()).map(|w| w.features(t, WINDOW));
        w.map_or((0.0, ""), |f| (f.frag_anomalies, f.frag_anomaly.counter()))
    }

    #[test]
    fn test_in_order_and_out_of_order_fragments_are_no_anomaly() {
        assert_eq!(
            play(&[ip(0, 1232, true, 1), ip(1232, 1232, true, 2), ip(2464, 100, false, 3)]).0,
            0.0
        );
        assert_eq!(
            play(&[ip(2464, 100, false, 3), ip(0, 1232, true, 1), ip(1232, 1232, true, 2)]).0,
            0.0
        );
    }

    #[test]
    fn test_a_copy_is_no_overlap_other_bytes_in_the_same_range_are() {
        // A mirror port that sees each packet twice.
        let copy = [
            ip(0, 408, true, 1),
            ip(0, 408, true, 1),
            ip(408, 408, false, 2),
            ip(408, 408, false, 2),
        ];
        assert_eq!(play(&copy).0, 0.0);
        // fragmentation6's test 1: the middle fragment twice with other bytes.
        let twice = [
            ip(0, 408, true, 1),
            ip(408, 400, true, 2),
            ip(408, 400, true, 9),
            ip(808, 8, false, 3),
        ];
        assert_eq!(play(&twice), (1.0, "ip_fragment_overlaps"));
    }

    #[test]
    fn test_a_fragment_reaching_into_another_overlaps_once_per_datagram() {
        let p =
            [ip(0, 408, true, 1), ip(408, 408, true, 2), ip(680, 528, false, 3), ip(8, 8, true, 4)];
        assert_eq!(play(&p), (1.0, "ip_fragment_overlaps"));
    }

    #[test]
    fn test_each_alone_anomaly() {
        assert_eq!(
            play(&[ip(0, 1232, true, 1), ip(64_768, 1232, true, 2)]).1,
            "ip_fragments_oversized"
        );
        assert_eq!(play(&[ip(0, 175, true, 1)]).1, "ip_fragment_lengths");
        assert_eq!(play(&[ip(0, 0, true, 1)]).1, "ip_fragment_lengths");
        assert_eq!(
            play(&[ip(0, 408, true, 1), ip(800, 8, false, 2), ip(808, 8, true, 3)]).1,
            "ip_fragments_past_end"
        );
        let mut split = ip(0, 8, true, 1);
        split.frag.as_mut().unwrap().split_header = true;
        assert_eq!(play(&[split]).1, "ip_fragment_split_headers");
        let mut nested = ip(0, 1216, false, 1);
        nested.frag.as_mut().unwrap().headers = 2;
        assert_eq!(play(&[nested]).1, "ipv6_fragment_headers");
        let mut long = ip(0, 8, false, 1);
        long.frag = None;
        long.ipv6_ext.overflow = true;
        assert_eq!(play(&[long]).1, "ipv6_header_chains");
        let mut covert = ip(0, 8, false, 1);
        covert.frag = None;
        covert.ipv6_ext.covert_options = true;
        assert_eq!(play(&[covert]), (1.0, "ipv6_covert_options"));
    }

    #[test]
    fn test_a_packet_too_big_below_the_minimum_mtu_is_an_anomaly_at_or_above_it_none() {
        let too_big = |mtu| {
            let mut p = ip(0, 8, false, 1);
            p.frag = None;
            p.l4 =
                L4::Icmpv6 { icmp_type: 2, code: 0, ident: None, mtu: Some(mtu), payload_len: 0 };
            play(&[p])
        };
        assert_eq!(too_big(1200), (1.0, "ipv6_too_big_below_minimum"));
        assert_eq!(too_big(1280).0, 0.0);
        assert_eq!(too_big(1500).0, 0.0);
    }

    #[test]
    fn test_an_atomic_fragment_alone_is_no_anomaly_within_a_reassembly_it_is() {
        assert_eq!(play(&[ip(0, 1216, false, 1)]).0, 0.0);
        assert_eq!(
            play(&[ip(0, 408, true, 1), ip(0, 8, false, 2)]),
            (1.0, "ipv6_atomic_fragments")
        );
    }

    #[test]
    fn test_a_datagram_in_more_pieces_than_kept_is_checked_no_further_and_no_panic() {
        let p: heapless::Vec<IpInfo, 32> = (0..32).map(|i| ip(i * 16, 8, true, i)).collect();
        assert_eq!(play(&p).0, 0.0);
    }
}
