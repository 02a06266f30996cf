//! The evidence ring of one interface in memory: the newest packets since the ring was last
//! written to the store, at most `cap` of them.
//!
//! Every packet passes through it, so it allocates nothing per packet: the bytes of the packets
//! it holds are one contiguous run in a byte deque (in arrival order), and each packet's header
//! (time, link type, lengths, addresses) is a fixed-size slot. A packet pushed onto a full ring
//! pushes the oldest out (counted by the caller). Packets become [`PacketRow`]s, one allocation
//! each, only when they leave for the store: a write of the ring, or evidence of an anomaly.
//!
//! Memory: the byte deque keeps the capacity of the most bytes the ring has held at once (at
//! most `cap` packets of at most the snap length each; it grows by a quarter at a time), as the
//! per-packet buffers it replaces did at that moment.

use crate::store::PacketRow;
use std::collections::VecDeque;
use std::net::IpAddr;
use std::sync::Arc;

/// One packet's header; its bytes are the next `len` bytes of the ring's byte deque.
#[derive(Debug, Clone, Copy)]
struct Slot {
    ts_us: i64,
    link_type: i32,
    wire_len: u32,
    len: u32,
    src: Option<IpAddr>,
    dst: Option<IpAddr>,
    /// Taken out as evidence: its bytes stay in the deque until it is the oldest (moving the
    /// rest up on every marking copied the whole ring each time), and a drain skips it.
    taken: bool,
}

/// A packet as the ring is given it.
#[derive(Debug, Clone, Copy)]
pub struct RingPacket<'a> {
    pub ts_us: i64,
    pub link_type: i32,
    pub wire_len: u32,
    pub src: Option<IpAddr>,
    pub dst: Option<IpAddr>,
    pub data: &'a [u8],
}

/// The ring of one interface.
#[derive(Debug)]
pub struct Ring {
    interface: Arc<str>,
    cap: usize,
    slots: VecDeque<Slot>,
    bytes: VecDeque<u8>,
}

impl Ring {
    pub fn new(interface: Arc<str>, cap: usize) -> Ring {
        Ring { interface, cap, slots: VecDeque::new(), bytes: VecDeque::new() }
    }

    /// Packets held (those taken as evidence are not, though their slots wait to be the
    /// oldest and count against the size).
    pub fn len(&self) -> usize {
        self.slots.iter().filter(|s| !s.taken).count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Add a packet (nothing when the ring's size is 0); true when the oldest was pushed out
    /// to make room.
    pub fn push(&mut self, p: RingPacket<'_>) -> bool {
        if self.cap == 0 {
            return false;
        }
        let mut rotated = false;
        while self.slots.len() >= self.cap {
            if let Some(old) = self.slots.pop_front() {
                self.bytes.drain(..old.len as usize);
                // One taken as evidence is in the store already: not lost.
                rotated |= !old.taken;
            }
        }
        self.slots.push_back(Slot {
            ts_us: p.ts_us,
            link_type: p.link_type,
            wire_len: p.wire_len,
            len: p.data.len() as u32,
            src: p.src,
            dst: p.dst,
            taken: false,
        });
        if self.bytes.capacity() - self.bytes.len() < p.data.len() {
            // Grow by a quarter rather than double: the deque stays near the most bytes the
            // ring has held at once.
            self.bytes.reserve_exact(p.data.len().max(self.bytes.len() / 4));
        }
        self.bytes.extend(p.data);
        rotated
    }

    fn row(&self, s: &Slot, data: Vec<u8>) -> PacketRow {
        PacketRow {
            ts_us: s.ts_us,
            interface: self.interface.clone(),
            link_type: s.link_type,
            wire_len: s.wire_len,
            src: s.src,
            dst: s.dst,
            data,
        }
    }

    /// Every packet held, oldest first; the ring is left empty.
    pub fn drain(&mut self) -> Vec<PacketRow> {
        let mut at = 0usize;
        let out = self
            .slots
            .iter()
            .filter_map(|s| {
                let range = at..at + s.len as usize;
                at = range.end;
                (!s.taken).then(|| self.row(s, self.bytes.range(range).copied().collect()))
            })
            .collect();
        self.slots.clear();
        self.bytes.clear();
        out
    }

    /// Take out the packets to or from `host` at or after `since_us`, oldest first, at most
    /// `max` of them; the others stay, in order. Only the packets taken are copied. Also
    /// returns how many more there were (left, past `max`).
    pub fn take_host(&mut self, host: IpAddr, since_us: i64, max: usize) -> (Vec<PacketRow>, u64) {
        let mut out = Vec::new();
        let mut left = 0u64;
        let mut at = 0usize;
        for i in 0..self.slots.len() {
            let s = self.slots[i];
            let range = at..at + s.len as usize;
            at = range.end;
            if !s.taken && s.ts_us >= since_us && (s.src == Some(host) || s.dst == Some(host)) {
                if out.len() >= max {
                    left += 1;
                    continue;
                }
                out.push(self.row(&s, self.bytes.range(range).copied().collect()));
                self.slots[i].taken = true;
            }
        }
        (out, left)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(ts_us: i64, src: [u8; 4], data: &[u8]) -> RingPacket<'_> {
        RingPacket {
            ts_us,
            link_type: 1,
            wire_len: data.len() as u32 + 4,
            src: Some(IpAddr::from(src)),
            dst: Some(IpAddr::from([10, 0, 0, 99])),
            data,
        }
    }

    #[test]
    fn test_ring_keeps_the_newest_packets_with_their_bytes() {
        let mut r = Ring::new("eth0".into(), 3);
        let datas: Vec<Vec<u8>> = (0..5u8).map(|i| vec![i; 10 + usize::from(i)]).collect();
        let rotated: Vec<bool> = datas
            .iter()
            .enumerate()
            .map(|(i, d)| r.push(packet(i as i64, [10, 0, 0, 1], d)))
            .collect();
        assert_eq!(rotated, [false, false, false, true, true]);
        assert_eq!(r.len(), 3);
        let rows = r.drain();
        assert!(r.is_empty());
        assert_eq!(rows.iter().map(|p| p.ts_us).collect::<Vec<_>>(), [2, 3, 4]);
        for p in &rows {
            assert_eq!(p.data, datas[p.ts_us as usize]);
            assert_eq!(p.wire_len, p.data.len() as u32 + 4);
            assert_eq!(&*p.interface, "eth0");
        }
        // Empty after a drain, and usable again.
        assert!(!r.push(packet(9, [10, 0, 0, 1], b"again")));
        assert_eq!(r.drain()[0].data, b"again");
    }

    #[test]
    fn test_ring_of_size_zero_holds_nothing() {
        let mut r = Ring::new("eth0".into(), 0);
        assert!(!r.push(packet(1, [10, 0, 0, 1], b"x")));
        assert!(r.drain().is_empty());
    }

    #[test]
    fn test_take_host_takes_its_packets_and_keeps_the_rest_in_order() {
        let mut r = Ring::new("eth0".into(), 100);
        let a = [10, 0, 0, 1];
        let b = [10, 0, 0, 2];
        for i in 0..10u8 {
            let src = if i % 3 == 0 { a } else { b };
            r.push(packet(i64::from(i), src, &vec![i; usize::from(i) + 1]));
        }
        // From a, at or after time 3: 3, 6, 9 (0 is too old).
        let taken = r.take_host(IpAddr::from(a), 3, usize::MAX).0;
        assert_eq!(taken.iter().map(|p| p.ts_us).collect::<Vec<_>>(), [3, 6, 9]);
        for p in &taken {
            assert_eq!(p.data, vec![p.ts_us as u8; p.ts_us as usize + 1]);
        }
        // The destination matches too: every packet goes to 10.0.0.99.
        let rest = r.take_host(IpAddr::from([10, 0, 0, 99]), 5, usize::MAX).0;
        assert_eq!(rest.iter().map(|p| p.ts_us).collect::<Vec<_>>(), [5, 7, 8]);
        let left = r.drain();
        assert_eq!(left.iter().map(|p| p.ts_us).collect::<Vec<_>>(), [0, 1, 2, 4]);
        for p in &left {
            assert_eq!(p.data, vec![p.ts_us as u8; p.ts_us as usize + 1]);
        }
        // Nobody's packets: nothing taken, nothing changed.
        r.push(packet(20, b, b"z"));
        assert!(r.take_host(IpAddr::from([192, 0, 2, 1]), 0, usize::MAX).0.is_empty());
        assert_eq!(r.len(), 1);
    }

    #[test]
    fn test_a_packet_taken_as_evidence_is_not_lost_when_it_leaves_the_ring() {
        let mut r = Ring::new("eth0".into(), 2);
        let (a, b) = ([10, 0, 0, 1], [10, 0, 0, 2]);
        r.push(packet(1, a, b"a1"));
        assert_eq!(r.take_host(IpAddr::from(a), 0, usize::MAX).0.len(), 1);
        assert_eq!(r.len(), 0);
        assert!(!r.push(packet(2, b, b"b2")));
        assert!(!r.push(packet(3, b, b"b3")), "the slot pushed out was evidence already");
        assert!(r.push(packet(4, b, b"b4")), "b2 is lost to the ring");
        assert!(r.take_host(IpAddr::from(a), 0, usize::MAX).0.is_empty(), "taken once only");
        let left = r.drain();
        assert_eq!(left.iter().map(|p| p.ts_us).collect::<Vec<_>>(), [3, 4]);
        assert_eq!(left[1].data, b"b4");
    }
}
