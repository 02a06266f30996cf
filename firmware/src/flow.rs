//! The bounded, bidirectional flow table.
//!
//! A flow is keyed by the canonical 5-tuple plus the outer VLAN: the lower (address, port) end
//! first, so both directions of a conversation land on one entry. The entry remembers which end
//! started it (the initiator): that end is `src` in every record and "forward" in every feature.
//!
//! Flows end on an idle timeout (per protocol), an active timeout (long flows are cut into
//! records), TCP termination (both FINs, or a RST, after a short linger that absorbs the last
//! ACKs), a new SYN on a closed tuple, eviction when the table is full, or a flush at the end of
//! input. Every ending is counted by reason in [`FlowCounters`]; no flow disappears unrecorded.
//!
//! Capacity is fixed at compile time (`heapless`), so memory is known before the first packet.

use crate::wire::{IpInfo, PacketMeta, TcpFlags, L4};
use crate::{Duration, Gaps, Instant, Sizes};
use core::hash::{Hash, Hasher};
use core::net::IpAddr;
use heapless::index_map::IndexMap;

/// Timeouts of the flow table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowConfig {
    /// A TCP flow with no packet for this long ends (Zeek's default: 5 minutes).
    pub tcp_idle_timeout: Duration,
    /// Any other flow with no packet for this long ends.
    pub idle_timeout: Duration,
    /// A flow older than this is recorded and continues in a new record. At most
    /// [`MAX_ACTIVE_TIMEOUT`]: a flow table holds a longer one to that.
    pub active_timeout: Duration,
    /// How long a TCP flow closed by FIN or RST waits for its last packets before it is recorded.
    pub closed_linger: Duration,
    /// Flows held at once, rounded up to whole shards; 0 for what the table's storage holds by
    /// default. Read when the table is made: storage whose shard count is fixed (an array, on
    /// a microcontroller) ignores it.
    pub max_flows: usize,
}

/// The longest active timeout a flow table takes: a flow's times are kept in 32-bit
/// microseconds from its start (71 minutes), which saves 24 bytes a flow.
pub const MAX_ACTIVE_TIMEOUT: Duration = Duration::from_secs(3600);

impl Default for FlowConfig {
    fn default() -> Self {
        FlowConfig {
            tcp_idle_timeout: Duration::from_secs(300),
            idle_timeout: Duration::from_secs(60),
            active_timeout: Duration::from_secs(300),
            closed_linger: Duration::from_secs(2),
            max_flows: 0,
        }
    }
}

/// The tables' hash map: heapless's open-addressing map with rustc's Fx hash, which takes whole
/// words (FNV, heapless's default, takes one byte at a time and was a fifth of the per-packet cost).
///
/// Neither is keyed: a sender who knows the function can aim flows at one probe chain. The
/// chains are bounded by the table's capacity, so that costs time, never memory or correctness.
pub type Map<K, V, const N: usize> = IndexMap<K, V, hash32::BuildHasherDefault<WordHasher>, N>;

/// rustc's Fx hash, with the 32-bit finish heapless asks for.
#[derive(Default, Clone)]
pub struct WordHasher(rustc_hash::FxHasher);

impl core::fmt::Debug for WordHasher {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("WordHasher")
    }
}

impl Hasher for WordHasher {
    fn write(&mut self, bytes: &[u8]) {
        self.0.write(bytes)
    }
    fn write_u64(&mut self, i: u64) {
        self.0.write_u64(i)
    }
    fn write_u128(&mut self, i: u128) {
        self.0.write_u128(i)
    }
    fn finish(&self) -> u64 {
        // heapless keeps the low 16 bits. Fx's last multiply carries a bit of its input only
        // upward, and its finish rotates the product's bits 38.. down, so the top ten bits of
        // the last word written reached none of those 16, and the six below them only their
        // top: keys that differ there (IPv6 fragment ids whose low half is 0; connections of
        // one client and server, by client port) all wanted one slot, and every lookup walked
        // the table (1,157 instructions a lookup in the fragment table). MurmurHash3's 64-bit
        // finaliser makes every bit of the state reach the low ones.
        let mut h = self.0.finish();
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        h ^ (h >> 33)
    }
}

impl hash32::Hasher for WordHasher {
    fn finish32(&self) -> u32 {
        let h = self.0.finish();
        (h >> 32) as u32 ^ h as u32
    }
}

/// An address as one 128-bit word for hashing (v4 mapped into the low bits).
pub(crate) fn ip_word(ip: &IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u128::from(a.to_bits()),
        IpAddr::V6(a) => a.to_bits() ^ (1 << 127),
    }
}

/// The canonical key: lower endpoint first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowKey {
    pub lo: IpAddr,
    pub hi: IpAddr,
    pub lo_port: u16,
    pub hi_port: u16,
    pub protocol: u8,
    pub vlan: u16,
}

impl Hash for FlowKey {
    fn hash<H: Hasher>(&self, h: &mut H) {
        h.write_u128(ip_word(&self.lo));
        h.write_u128(ip_word(&self.hi));
        h.write_u64(
            u64::from(self.lo_port) << 48
                | u64::from(self.hi_port) << 32
                | u64::from(self.protocol) << 16
                | u64::from(self.vlan),
        );
    }
}

impl FlowKey {
    pub fn new(src: IpAddr, sport: u16, dst: IpAddr, dport: u16, protocol: u8, vlan: u16) -> Self {
        if (src, sport) <= (dst, dport) {
            FlowKey { lo: src, hi: dst, lo_port: sport, hi_port: dport, protocol, vlan }
        } else {
            FlowKey { lo: dst, hi: src, lo_port: dport, hi_port: sport, protocol, vlan }
        }
    }
}

/// Why a flow record was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case"))]
pub enum EndReason {
    IdleTimeout,
    ActiveTimeout,
    /// Both sides sent FIN.
    Fin,
    /// A RST was seen.
    Rst,
    /// A new SYN arrived on a closed tuple.
    Reused,
    /// The table was full and this flow was the least recently seen.
    Evicted,
    /// End of input (capture file done, daemon stopping).
    Flush,
}

impl EndReason {
    pub const ALL: [EndReason; 7] = [
        EndReason::IdleTimeout,
        EndReason::ActiveTimeout,
        EndReason::Fin,
        EndReason::Rst,
        EndReason::Reused,
        EndReason::Evicted,
        EndReason::Flush,
    ];
    /// The reason [`name`](Self::name) gives, back.
    pub fn from_name(name: &str) -> Option<EndReason> {
        EndReason::ALL.into_iter().find(|r| r.name() == name)
    }
    pub const fn name(self) -> &'static str {
        match self {
            EndReason::IdleTimeout => "idle_timeout",
            EndReason::ActiveTimeout => "active_timeout",
            EndReason::Fin => "fin",
            EndReason::Rst => "rst",
            EndReason::Reused => "reused",
            EndReason::Evicted => "evicted",
            EndReason::Flush => "flush",
        }
    }
}

/// Per-direction accumulators.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct DirStats {
    pub packets: u32,
    /// Frame bytes on the wire (what tshark's conversation table counts).
    pub wire_bytes: u64,
    /// Upper-layer payload size per packet (`packets` of them).
    pub payload: Sizes,
    /// Inter-arrival times in this direction, microseconds (one fewer than `packets`).
    pub iat: Gaps,
    /// Time of the last packet this way, microseconds after the flow's start (a packet stamped
    /// before the start counts as at the start).
    pub last: u32,
    /// Transport header bytes (saturating).
    pub header_bytes: u32,
    pub psh: u32,
    pub urg: u32,
    /// Advertised window of the first TCP segment in this direction.
    pub init_window: Option<u16>,
    /// Packets with at least one byte of payload.
    pub data_packets: u32,
    /// Smallest transport header seen.
    pub min_header: u16,
}

impl DirStats {
    /// How many inter-arrival times `iat` holds.
    pub fn gaps(&self) -> u32 {
        self.packets.saturating_sub(1)
    }

    /// Account a packet at `at` microseconds after the flow's start.
    fn add(&mut self, at: u32, wire_len: u32, ip: &IpInfo) {
        if self.packets > 0 {
            self.iat.push(u64::from(at.saturating_sub(self.last)), self.packets);
        }
        self.last = at;
        let payload = ip.l4.payload_len();
        let header = ip.l4.header_len();
        self.packets = self.packets.saturating_add(1);
        self.wire_bytes += u64::from(wire_len);
        self.payload.push(u64::from(payload), self.packets);
        self.header_bytes = self.header_bytes.saturating_add(header);
        if payload > 0 {
            self.data_packets += 1;
        }
        if self.packets == 1 || (header as u16) < self.min_header {
            self.min_header = header as u16;
        }
        if let L4::Tcp(t) = ip.l4 {
            if t.flags.has(TcpFlags::PSH) {
                self.psh += 1;
            }
            if t.flags.has(TcpFlags::URG) {
                self.urg += 1;
            }
            if self.init_window.is_none() {
                self.init_window = Some(t.window);
            }
        }
    }
}

/// TCP handshake and teardown as seen from the tap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TcpState {
    pub syn: bool,
    pub syn_ack: bool,
    /// The initiator acknowledged the SYN-ACK: the three-way handshake completed.
    pub established: bool,
    pub fin_fwd: bool,
    pub fin_bwd: bool,
    pub rst: bool,
    /// MSS and window scale from the initiator's SYN.
    pub mss: Option<u16>,
    pub window_scale: Option<u8>,
}

impl TcpState {
    pub fn closed(&self) -> bool {
        self.rst || (self.fin_fwd && self.fin_bwd)
    }
}

/// DNS facts aggregated over a flow's packets.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct DnsStats {
    pub queries: u32,
    pub responses: u32,
    pub nxdomain: u32,
    /// TXT, NULL, ANY and other types that carry data rather than addresses.
    pub data_qtypes: u32,
    /// Sum and longest of the first question's name length over queries that had one.
    pub qname_len_sum: u32,
    pub qname_len_max: u16,
    pub qnames: u32,
    pub longest_label: u8,
    pub max_entropy_millibits: u16,
}

/// What a TCP flow keeps beyond its directions: handshake and teardown, and flag counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TcpStats {
    pub state: TcpState,
    /// Counts of the flags of [`TcpStats::COUNTED`], both directions. PSH and URG are counted
    /// by direction already ([`DirStats`]); [`Flow::flag_counts`] gives all eight.
    pub flag_counts: [u32; 6],
}

impl TcpStats {
    /// The flags `flag_counts` counts, in its order: FIN, SYN, RST, ACK, ECE, CWR.
    pub const COUNTED: [u8; 6] =
        [TcpFlags::FIN, TcpFlags::SYN, TcpFlags::RST, TcpFlags::ACK, TcpFlags::ECE, TcpFlags::CWR];
}

/// What a flow keeps of its transport protocol, chosen by the key's protocol: a flow carries the
/// largest of these rather than all of them (about 36 bytes a flow less, 3.4 MiB at 100,000).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Transport {
    Tcp(TcpStats),
    /// UDP: what its DNS messages said (all zero when it had none).
    Udp(DnsStats),
    /// ICMP or ICMPv6: type and code of the first message read.
    Icmp(Option<(u8, u8)>),
    Other,
}

impl Transport {
    fn of(protocol: u8) -> Transport {
        match protocol {
            6 => Transport::Tcp(TcpStats::default()),
            17 => Transport::Udp(DnsStats::default()),
            1 | 58 => Transport::Icmp(None),
            _ => Transport::Other,
        }
    }
}

/// How many leading packets' sizes are kept.
pub const FIRST_PACKETS: usize = 8;

/// One flow's state: everything the features need. The endpoints live in its [`FlowKey`] (not
/// repeated here: a flow is about 40 bytes smaller, 4 MB at 100,000 flows); `lo_is_src` says
/// which end of the key is the initiator.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Flow {
    /// The initiator is the key's lower endpoint.
    pub lo_is_src: bool,
    pub protocol: u8,
    pub start: Instant,
    pub fwd: DirStats,
    pub bwd: DirStats,
    /// Inter-arrival times over both directions, microseconds (one fewer than the packets): a
    /// packet stamped before the latest one seen adds a gap of 0, so they add up to the time
    /// from the first packet to the latest ([`Flow::last`]).
    pub iat: Gaps,
    pub transport: Transport,
    /// Upper-layer payload sizes of the first packets, negative for the responder's.
    /// (Clamped to +-32767: a larger payload, from segmentation offload, reads as 32767.)
    pub first_sizes: [i16; FIRST_PACKETS],
    pub fragments: u32,
    pub truncated: u32,
}

/// Whether a packet went from the initiator (forward) or to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Forward,
    Backward,
}

impl FlowKey {
    /// The initiator's endpoint, for a flow whose `lo_is_src` is as given.
    pub fn src(&self, lo_is_src: bool) -> (IpAddr, u16) {
        if lo_is_src {
            (self.lo, self.lo_port)
        } else {
            (self.hi, self.hi_port)
        }
    }
    /// The responder's endpoint.
    pub fn dst(&self, lo_is_src: bool) -> (IpAddr, u16) {
        self.src(!lo_is_src)
    }
}

impl Flow {
    fn new(meta: &PacketMeta, ip: &IpInfo, key: &FlowKey) -> Flow {
        let (mut sport, mut dport) = ip.l4.ports();
        let (mut src, mut dst) = (ip.src, ip.dst);
        // The initiator is whoever sent the first packet, except when that packet is plainly a
        // reply: a SYN-ACK, or (picked up mid-stream) a segment from a well-known port to an
        // ephemeral one.
        let reply = match ip.l4 {
            L4::Tcp(t) if t.flags.syn() => t.flags.ack(),
            L4::Tcp(_) | L4::Udp(_) => sport < 1024 && dport >= 1024,
            _ => false,
        };
        if reply {
            core::mem::swap(&mut src, &mut dst);
            core::mem::swap(&mut sport, &mut dport);
        }
        let _ = (dst, dport);
        Flow {
            lo_is_src: (src, sport) == (key.lo, key.lo_port),
            protocol: ip.protocol,
            start: meta.ts,
            fwd: DirStats::default(),
            bwd: DirStats::default(),
            iat: Gaps::new(),
            transport: Transport::of(ip.protocol),
            first_sizes: [0; FIRST_PACKETS],
            fragments: 0,
            truncated: 0,
        }
    }

    /// Direction of a packet of this flow: forward when it goes from the initiator's endpoint to
    /// the responder's. Both ends are compared, so a conversation of a host with itself (loopback)
    /// is told apart by its ports.
    pub fn direction(&self, key: &FlowKey, ip: &IpInfo) -> Direction {
        // The packet is of this key, so its source endpoint is one of the key's two: comparing
        // it with the initiator's is enough (a host talking to itself differs by port).
        let (sport, _) = ip.l4.ports();
        if (ip.src, sport) == key.src(self.lo_is_src) {
            Direction::Forward
        } else {
            Direction::Backward
        }
    }

    pub fn packets(&self) -> u32 {
        self.fwd.packets.saturating_add(self.bwd.packets)
    }

    /// Time of the latest packet.
    pub fn last(&self) -> Instant {
        Instant::from_micros(self.start.total_micros().saturating_add(self.iat.sum() as i64))
    }

    /// How many inter-arrival times `iat` holds.
    pub fn gaps(&self) -> u32 {
        self.packets().saturating_sub(1)
    }

    /// The TCP handshake and teardown seen (all false for a flow of another protocol).
    pub fn tcp(&self) -> TcpState {
        match self.transport {
            Transport::Tcp(t) => t.state,
            _ => TcpState::default(),
        }
    }

    /// TCP flag counts, both directions, in the order of the flags' bits: FIN, SYN, RST, PSH,
    /// ACK, URG, ECE, CWR (zero for other protocols).
    pub fn flag_counts(&self) -> [u32; 8] {
        match self.transport {
            Transport::Tcp(t) => {
                let [fin, syn, rst, ack, ece, cwr] = t.flag_counts;
                let psh = self.fwd.psh.saturating_add(self.bwd.psh);
                let urg = self.fwd.urg.saturating_add(self.bwd.urg);
                [fin, syn, rst, psh, ack, urg, ece, cwr]
            }
            _ => [0; 8],
        }
    }

    /// What the flow's DNS messages said (zero for a flow that is not UDP).
    pub fn dns(&self) -> DnsStats {
        match self.transport {
            Transport::Udp(d) => d,
            _ => DnsStats::default(),
        }
    }

    /// Type and code of the first ICMP message, for an ICMP flow that had one.
    pub fn icmp(&self) -> Option<(u8, u8)> {
        match self.transport {
            Transport::Icmp(first) => first,
            _ => None,
        }
    }

    /// A TCP flow that both sides closed with FIN, or either reset.
    pub fn closed(&self) -> bool {
        matches!(self.transport, Transport::Tcp(t) if t.state.closed())
    }

    fn add(&mut self, meta: &PacketMeta, ip: &IpInfo, key: &FlowKey) -> Direction {
        let dir = self.direction(key, ip);
        let n = self.packets();
        // Microseconds after the start: the flow table ends a flow before it is
        // MAX_ACTIVE_TIMEOUT old, so this fits (a packet stamped before the start counts as at it).
        let at = (meta.ts.total_micros().saturating_sub(self.start.total_micros()))
            .clamp(0, i64::from(u32::MAX));
        if n > 0 {
            // The gap from the latest packet, which `iat`'s sum is the time to.
            self.iat.push((at as u64).saturating_sub(self.iat.sum() as u64), n);
        }
        let payload = ip.l4.payload_len() as i32;
        if (n as usize) < FIRST_PACKETS {
            let size = payload.min(i32::from(i16::MAX)) as i16;
            self.first_sizes[n as usize] = if dir == Direction::Forward { size } else { -size };
        }
        match dir {
            Direction::Forward => self.fwd.add(at as u32, meta.wire_len, ip),
            Direction::Backward => self.bwd.add(at as u32, meta.wire_len, ip),
        }
        if ip.fragment() {
            self.fragments += 1;
        }
        if meta.truncated {
            self.truncated += 1;
        }
        match (ip.l4, &mut self.transport) {
            (L4::Tcp(t), Transport::Tcp(stats)) => {
                for (c, flag) in stats.flag_counts.iter_mut().zip(TcpStats::COUNTED) {
                    if t.flags.has(flag) {
                        *c += 1;
                    }
                }
                let s = &mut stats.state;
                match dir {
                    Direction::Forward => {
                        if t.flags.syn() && !t.flags.ack() {
                            s.syn = true;
                            s.mss = s.mss.or(t.mss);
                            s.window_scale = s.window_scale.or(t.window_scale);
                        } else if s.syn_ack && t.flags.ack() && !t.flags.rst() {
                            s.established = true;
                        }
                        s.fin_fwd |= t.flags.fin();
                    }
                    Direction::Backward => {
                        if t.flags.syn() && t.flags.ack() {
                            s.syn_ack = true;
                        }
                        s.fin_bwd |= t.flags.fin();
                    }
                }
                s.rst |= t.flags.rst();
            }
            (L4::Udp(u), Transport::Udp(s)) => {
                if let Some(d) = u.dns {
                    if d.response {
                        s.responses += 1;
                        if d.rcode == 3 {
                            s.nxdomain += 1;
                        }
                    } else {
                        s.queries += 1;
                        if d.qname_len > 0 {
                            s.qname_len_sum =
                                s.qname_len_sum.saturating_add(u32::from(d.qname_len));
                            s.qname_len_max = s.qname_len_max.max(d.qname_len);
                            s.qnames += 1;
                        }
                        // TXT, NULL, ANY, and anything above the address types.
                        if matches!(d.qtype, 10 | 16 | 255) {
                            s.data_qtypes += 1;
                        }
                        s.longest_label = s.longest_label.max(d.longest_label);
                        s.max_entropy_millibits = s.max_entropy_millibits.max(d.entropy_millibits);
                    }
                }
            }
            (
                L4::Icmpv4 { icmp_type, code, .. } | L4::Icmpv6 { icmp_type, code, .. },
                Transport::Icmp(first @ None),
            ) => *first = Some((icmp_type, code)),
            // A packet whose transport header was not read (a later fragment, a short capture)
            // counts in the directions only.
            _ => {}
        }
        dir
    }
}

/// A finished flow.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FlowRecord {
    pub key: FlowKey,
    pub flow: Flow,
    pub reason: EndReason,
}

impl FlowRecord {
    /// The initiator's address.
    pub fn src(&self) -> IpAddr {
        self.key.src(self.flow.lo_is_src).0
    }
    pub fn src_port(&self) -> u16 {
        self.key.src(self.flow.lo_is_src).1
    }
    /// The responder's address.
    pub fn dst(&self) -> IpAddr {
        self.key.dst(self.flow.lo_is_src).0
    }
    pub fn dst_port(&self) -> u16 {
        self.key.dst(self.flow.lo_is_src).1
    }
    pub fn vlan(&self) -> u16 {
        self.key.vlan
    }
}

/// Counters of the flow table, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FlowCounters {
    pub created: u64,
    /// Flows ended, by [`EndReason`] in the order of [`EndReason::ALL`].
    pub ended: [u64; 7],
    /// Packets that updated an existing flow.
    pub updates: u64,
}

impl FlowCounters {
    pub fn ended_total(&self) -> u64 {
        self.ended.iter().sum()
    }
    pub fn evicted(&self) -> u64 {
        self.ended[EndReason::Evicted as usize]
    }
}

/// What [`FlowTable::ingest`] did with a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ingested {
    pub direction: Direction,
    /// The packet opened a new flow.
    pub new_flow: bool,
}

/// One shard of a flow table: up to `N` flows (a power of two, at most 65,536: heapless's limit).
pub type FlowMap<const N: usize> = Map<FlowKey, Flow, N>;

/// Where a flow table keeps its shards.
///
/// An array (`[FlowMap<N>; S]`) keeps them inline, with no heap: the MCU build. With `std`,
/// [`HeapShards`] keeps each shard in its own allocation: a table of tens of MiB then never
/// passes through the stack on its way to the heap, so only the pages flows use are ever touched.
pub trait FlowShards<const N: usize> {
    /// The storage of `shards` shards, or of its default count for 0 (fixed-size storage has
    /// one count and ignores it).
    fn create(shards: usize) -> Self;
    fn count(&self) -> usize;
    fn shard(&self, i: usize) -> &FlowMap<N>;
    fn shard_mut(&mut self, i: usize) -> &mut FlowMap<N>;
}

impl<const N: usize, const S: usize> FlowShards<N> for [FlowMap<N>; S] {
    fn create(_shards: usize) -> Self {
        const { assert!(S >= 1, "a flow table needs at least one shard") };
        [const { Map::new() }; S]
    }
    fn count(&self) -> usize {
        S
    }
    fn shard(&self, i: usize) -> &FlowMap<N> {
        &self[i]
    }
    fn shard_mut(&mut self, i: usize) -> &mut FlowMap<N> {
        &mut self[i]
    }
}

/// Shards each in its own heap allocation, as many as configured ([`FlowConfig::max_flows`]),
/// `S` by default.
#[cfg(feature = "std")]
#[derive(Debug)]
pub struct HeapShards<const N: usize, const S: usize>(std::vec::Vec<std::boxed::Box<FlowMap<N>>>);

#[cfg(feature = "std")]
impl<const N: usize, const S: usize> FlowShards<N> for HeapShards<N, S> {
    fn create(shards: usize) -> Self {
        const { assert!(S >= 1, "a flow table needs at least one shard") };
        let n = if shards == 0 { S } else { shards };
        HeapShards((0..n).map(|_| std::boxed::Box::new(Map::new())).collect())
    }
    fn count(&self) -> usize {
        self.0.len()
    }
    fn shard(&self, i: usize) -> &FlowMap<N> {
        &self.0[i]
    }
    fn shard_mut(&mut self, i: usize) -> &mut FlowMap<N> {
        &mut self.0[i]
    }
}

/// The table itself: shards of `N` flows each, kept in `M`. A flow's shard is chosen by a hash of
/// its key, so the shards fill evenly.
#[derive(Debug)]
pub struct FlowTable<const N: usize, M: FlowShards<N> = [FlowMap<N>; 1]> {
    maps: M,
    config: FlowConfig,
    counters: FlowCounters,
    /// Latest timestamp seen; time never goes back for expiry, whatever the packets say.
    now: Instant,
    /// No flow can time out before this (Unix microseconds): sweeps before it are skipped.
    next_deadline: i64,
    /// Where the last packet's flow sits (key, shard, index): runs of packets of one flow skip
    /// the hash lookup.
    last_hit: Option<(FlowKey, usize, usize)>,
}

impl<const N: usize, M: FlowShards<N>> Default for FlowTable<N, M> {
    fn default() -> Self {
        Self::new(FlowConfig::default())
    }
}

impl<const N: usize, M: FlowShards<N>> FlowTable<N, M> {
    pub fn new(config: FlowConfig) -> Self {
        FlowTable {
            maps: M::create(config.max_flows.div_ceil(Self::HIGH_WATER)),
            config: Self::held(config),
            counters: FlowCounters::default(),
            now: Instant::from_micros(0),
            next_deadline: i64::MAX,
            last_hit: None,
        }
    }

    fn shard(&self, key: &FlowKey) -> usize {
        let n = self.maps.count();
        if n == 1 {
            return 0;
        }
        let mut h = rustc_hash::FxHasher::default();
        key.hash(&mut h);
        // The high bits: the map itself uses the low ones.
        ((h.finish() >> 40) as usize) % n
    }

    pub fn config(&self) -> &FlowConfig {
        &self.config
    }
    pub fn set_config(&mut self, config: FlowConfig) {
        self.config = Self::held(config);
    }
    /// `config` with its active timeout held to [`MAX_ACTIVE_TIMEOUT`].
    fn held(config: FlowConfig) -> FlowConfig {
        FlowConfig { active_timeout: config.active_timeout.min(MAX_ACTIVE_TIMEOUT), ..config }
    }
    pub fn counters(&self) -> &FlowCounters {
        &self.counters
    }
    /// Flows in progress.
    pub fn len(&self) -> usize {
        (0..self.maps.count()).map(|i| self.maps.shard(i).len()).sum()
    }
    pub fn is_empty(&self) -> bool {
        (0..self.maps.count()).all(|i| self.maps.shard(i).is_empty())
    }
    /// Flows a shard holds at most: 7/8 of its slots. The map's index has one slot per entry,
    /// and a hash table probes further the fuller it is (a lookup that misses, the most common
    /// kind when flows are new, walks to the end of its run): at 7/8 a miss is a few probes, near
    /// full it is tens, and every removal shifts as many.
    pub const HIGH_WATER: usize = if N >= 8 { N - N / 8 } else { N };

    pub fn capacity(&self) -> usize {
        Self::HIGH_WATER * self.maps.count()
    }
    /// Flows in progress with their keys, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&FlowKey, &Flow)> {
        (0..self.maps.count()).flat_map(|i| self.maps.shard(i).iter())
    }

    fn end(
        &mut self,
        key: FlowKey,
        flow: Flow,
        reason: EndReason,
        out: &mut impl FnMut(FlowRecord),
    ) {
        self.counters.ended[reason as usize] += 1;
        out(FlowRecord { key, flow, reason });
    }

    /// Why a flow that has seen no packet since `flow.last()` should end at `now`, if it should.
    fn expiry(config: &FlowConfig, flow: &Flow, now: Instant) -> Option<EndReason> {
        let idle = now - flow.last();
        if flow.closed() && idle >= config.closed_linger {
            return Some(if flow.tcp().rst { EndReason::Rst } else { EndReason::Fin });
        }
        let limit = if flow.protocol == 6 { config.tcp_idle_timeout } else { config.idle_timeout };
        if idle >= limit {
            return Some(EndReason::IdleTimeout);
        }
        if now - flow.start >= config.active_timeout {
            return Some(EndReason::ActiveTimeout);
        }
        None
    }

    /// When `flow` times out if no packet comes (Unix microseconds).
    fn deadline(config: &FlowConfig, flow: &Flow) -> i64 {
        let last = flow.last().total_micros();
        if flow.closed() {
            return last + config.closed_linger.total_micros() as i64;
        }
        let limit = if flow.protocol == 6 { config.tcp_idle_timeout } else { config.idle_timeout };
        (last + limit.total_micros() as i64)
            .min(flow.start.total_micros() + config.active_timeout.total_micros() as i64)
    }

    /// Index of `key`'s flow in shard `s`, if it has one.
    fn find(&mut self, key: &FlowKey, s: usize) -> Option<usize> {
        if let Some((k, ks, i)) = self.last_hit {
            if k == *key
                && ks == s
                && self.maps.shard(s).get_index(i).is_some_and(|(at, _)| at == key)
            {
                return Some(i);
            }
        }
        let i = self.maps.shard(s).get_index_of(key)?;
        self.last_hit = Some((*key, s, i));
        Some(i)
    }

    /// Account one IP packet. Flows it ends or evicts are passed to `out`.
    pub fn ingest(
        &mut self,
        meta: &PacketMeta,
        ip: &IpInfo,
        out: &mut impl FnMut(FlowRecord),
    ) -> Ingested {
        if meta.ts > self.now {
            self.now = meta.ts;
        }
        let (sport, dport) = ip.l4.ports();
        let key = FlowKey::new(ip.src, sport, ip.dst, dport, ip.protocol, meta.vlan);
        let config = self.config;
        let s = self.shard(&key);
        if let Some(i) = self.find(&key, s) {
            if let Some((_, flow)) = self.maps.shard_mut(s).get_index_mut(i) {
                let fresh_syn = matches!(ip.l4, L4::Tcp(t) if t.flags.syn() && !t.flags.ack());
                let ended = if flow.closed() && fresh_syn {
                    Some(EndReason::Reused)
                } else {
                    Self::expiry(&config, flow, meta.ts)
                };
                let (direction, old) = match ended {
                    None => (flow.add(meta, ip, &key), None),
                    Some(reason) => {
                        let old = *flow;
                        *flow = Flow::new(meta, ip, &key);
                        (flow.add(meta, ip, &key), Some((old, reason)))
                    }
                };
                self.next_deadline = self.next_deadline.min(Self::deadline(&config, flow));
                return match old {
                    None => {
                        self.counters.updates += 1;
                        Ingested { direction, new_flow: false }
                    }
                    Some((old, reason)) => {
                        self.counters.created += 1;
                        self.end(key, old, reason, out);
                        Ingested { direction, new_flow: true }
                    }
                };
            }
        }
        if self.maps.shard(s).len() >= Self::HIGH_WATER {
            self.make_room(s, out);
        }
        let mut flow = Flow::new(meta, ip, &key);
        let direction = flow.add(meta, ip, &key);
        self.counters.created += 1;
        self.next_deadline = self.next_deadline.min(Self::deadline(&config, &flow));
        match self.maps.shard_mut(s).insert(key, flow) {
            Ok(_) => self.last_hit = Some((key, s, self.maps.shard(s).len() - 1)),
            // make_room always frees at least one slot; should it ever not, the flow is still
            // recorded rather than lost.
            Err((key, flow)) => self.end(key, flow, EndReason::Evicted, out),
        }
        Ingested { direction, new_flow: true }
    }

    /// End every flow that has timed out by `now`.
    pub fn expire(&mut self, now: Instant, out: &mut impl FnMut(FlowRecord)) {
        if now > self.now {
            self.now = now;
        }
        if now.total_micros() < self.next_deadline {
            return;
        }
        let config = self.config;
        let mut next = i64::MAX;
        for s in 0..self.maps.count() {
            self.remove_where(
                s,
                usize::MAX,
                |flow| {
                    let why = Self::expiry(&config, flow, now);
                    if why.is_none() {
                        next = next.min(Self::deadline(&config, flow));
                    }
                    why
                },
                out,
            );
        }
        self.next_deadline = next;
    }

    /// End every flow (end of input).
    pub fn flush(&mut self, out: &mut impl FnMut(FlowRecord)) {
        for s in 0..self.maps.count() {
            let n = self.maps.shard(s).len();
            if n < Self::FLUSH_CLEARS {
                self.remove_where(s, usize::MAX, |_| Some(EndReason::Flush), out);
                continue;
            }
            // Many flows: each ended as `remove_where` would (last to first), then the shard
            // emptied at once, rather than each taken out of the index (a probe and a shift:
            // with well-spread keys, 300 instructions a flow at the end of a 500,000-flow input).
            for i in (0..n).rev() {
                let Some((key, flow)) = self.maps.shard(s).get_index(i) else { continue };
                let (key, flow) = (*key, *flow);
                self.end(key, flow, EndReason::Flush, out);
            }
            self.maps.shard_mut(s).clear();
        }
    }

    /// Flows in a shard from which [`flush`](Self::flush) empties it at once: emptying writes
    /// every slot of its index (N of them), taking flows out one by one costs a probe each.
    const FLUSH_CLEARS: usize = if N >= 64 { N / 64 } else { 1 };

    /// One pass over the flows, last to first, ending those `reason` names, at most `limit`.
    ///
    /// heapless's `retain` rebuilds the whole index on every call, even when it keeps everything;
    /// walking backwards with `swap_remove` touches only what it removes: the entry moved into a
    /// freed slot comes from behind and has already been looked at.
    fn remove_where(
        &mut self,
        shard: usize,
        limit: usize,
        mut reason: impl FnMut(&Flow) -> Option<EndReason>,
        out: &mut impl FnMut(FlowRecord),
    ) -> usize {
        let mut removed = 0;
        let mut i = self.maps.shard(shard).len();
        while i > 0 && removed < limit {
            i -= 1;
            let Some((key, flow)) = self.maps.shard(shard).get_index(i) else { continue };
            let Some(why) = reason(flow) else { continue };
            let key = *key;
            if let Some(flow) = self.maps.shard_mut(shard).swap_remove(&key) {
                removed += 1;
                self.end(key, flow, why, out);
            }
        }
        removed
    }

    /// Shard `s` is full: expire what has timed out; if nothing has, evict the least recently
    /// seen flows of the shard (those in the oldest eighth of its time span), at most an eighth
    /// of it, in one pass, so a flood costs one scan per N/8 new flows, not one per packet.
    fn make_room(&mut self, s: usize, out: &mut impl FnMut(FlowRecord)) {
        let now = self.now;
        self.expire(now, out);
        if self.maps.shard(s).len() < Self::HIGH_WATER {
            return;
        }
        let oldest =
            self.maps.shard(s).values().map(|f| f.last().total_micros()).min().unwrap_or(0);
        let cutoff = oldest + (now.total_micros() - oldest) / 8;
        self.remove_where(
            s,
            (N / 8).max(1),
            |flow| (flow.last().total_micros() <= cutoff).then_some(EndReason::Evicted),
            out,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{Ipv6Ext, TcpInfo, UdpInfo, L3};
    use std::vec::Vec;

    fn tcp(ts: i64, src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16, flags: u8) -> PacketMeta {
        let l4 = L4::Tcp(TcpInfo {
            src_port: sport,
            dst_port: dport,
            flags: TcpFlags(flags),
            window: 1000,
            header_len: 20,
            payload_len: 10,
            mss: None,
            window_scale: None,
            urgent: 0,
            short_ao: false,
        });
        meta(ts, src, dst, 6, l4)
    }

    fn udp(ts: i64, src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16) -> PacketMeta {
        let l4 = L4::Udp(UdpInfo {
            src_port: sport,
            dst_port: dport,
            payload_len: 4,
            dns: None,
            dhcp: None,
        });
        meta(ts, src, dst, 17, l4)
    }

    fn meta(ts: i64, src: [u8; 4], dst: [u8; 4], protocol: u8, l4: L4) -> PacketMeta {
        PacketMeta {
            ts: Instant::from_millis(ts),
            wire_len: 64,
            truncated: false,
            vlan: 0,
            vlan_depth: 0,
            src_mac: None,
            payload_at: 0,
            l3: L3::Ip(IpInfo {
                src: src.into(),
                dst: dst.into(),
                ip_len: 50,
                ttl: 64,
                protocol,
                ipv4_options_len: 0,
                frag: None,
                ipv6_ext: Ipv6Ext::default(),
                l4,
            }),
        }
    }

    /// The one flow in progress, as a record.
    fn only<const N: usize>(t: &FlowTable<N>) -> FlowRecord {
        let (key, flow) = t.iter().next().unwrap();
        FlowRecord { key: *key, flow: *flow, reason: EndReason::Flush }
    }

    fn feed<const N: usize>(
        t: &mut FlowTable<N>,
        m: PacketMeta,
        out: &mut Vec<FlowRecord>,
    ) -> Ingested {
        let L3::Ip(ip) = m.l3 else { unreachable!() };
        t.ingest(&m, &ip, &mut |r| out.push(r))
    }

    const A: [u8; 4] = [10, 0, 0, 1];
    const B: [u8; 4] = [10, 0, 0, 2];
    const SYN: u8 = TcpFlags::SYN;
    const SYNACK: u8 = TcpFlags::SYN | TcpFlags::ACK;
    const ACK: u8 = TcpFlags::ACK;
    const FINACK: u8 = TcpFlags::FIN | TcpFlags::ACK;

    #[test]
    fn test_both_directions_one_flow_initiator_first() {
        let mut t = FlowTable::<16>::default();
        let mut out = Vec::new();
        // The server's address sorts lower, so the canonical key puts it first; the record still
        // names the client as source.
        let i = feed(&mut t, tcp(0, B, 40000, A, 22, SYN), &mut out);
        assert_eq!(i, Ingested { direction: Direction::Forward, new_flow: true });
        let i = feed(&mut t, tcp(1, A, 22, B, 40000, SYNACK), &mut out);
        assert_eq!(i, Ingested { direction: Direction::Backward, new_flow: false });
        feed(&mut t, tcp(2, B, 40000, A, 22, ACK), &mut out);
        assert_eq!(t.len(), 1);
        let r = only(&t);
        assert_eq!((r.src(), r.src_port(), r.dst(), r.dst_port()), (B.into(), 40000, A.into(), 22));
        assert_eq!((r.flow.fwd.packets, r.flow.bwd.packets), (2, 1));
        assert!(r.flow.tcp().established);
    }

    #[test]
    fn test_loopback_directions_by_port() {
        let mut t = FlowTable::<16>::default();
        let mut out = Vec::new();
        const LO: [u8; 4] = [127, 0, 0, 1];
        feed(&mut t, tcp(0, LO, 54820, LO, 4222, SYN), &mut out);
        let i = feed(&mut t, tcp(1, LO, 4222, LO, 54820, SYNACK), &mut out);
        assert_eq!(i.direction, Direction::Backward);
        let r = only(&t);
        assert_eq!((r.flow.fwd.packets, r.flow.bwd.packets, r.src_port()), (1, 1, 54820));
    }

    #[test]
    fn test_synack_first_names_the_client() {
        let mut t = FlowTable::<16>::default();
        let mut out = Vec::new();
        feed(&mut t, tcp(0, A, 80, B, 50000, SYNACK), &mut out);
        let r = only(&t);
        assert_eq!((r.src(), r.src_port(), r.dst_port()), (B.into(), 50000, 80));
    }

    #[test]
    fn test_fin_closes_after_linger_and_trailing_ack_joins() {
        let mut t = FlowTable::<16>::default();
        let mut out = Vec::new();
        for m in [
            tcp(0, A, 40000, B, 80, SYN),
            tcp(1, B, 80, A, 40000, SYNACK),
            tcp(2, A, 40000, B, 80, ACK),
            tcp(3, A, 40000, B, 80, FINACK),
            tcp(4, B, 80, A, 40000, FINACK),
            tcp(5, A, 40000, B, 80, ACK),
        ] {
            feed(&mut t, m, &mut out);
        }
        assert!(out.is_empty());
        t.expire(Instant::from_millis(1000), &mut |r| out.push(r));
        assert!(out.is_empty(), "still lingering");
        t.expire(Instant::from_millis(2005), &mut |r| out.push(r));
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].reason, EndReason::Fin);
        assert_eq!(out[0].flow.packets(), 6);
        assert_eq!(t.counters().ended[EndReason::Fin as usize], 1);
    }

    #[test]
    fn test_rst_then_new_syn_reuses_tuple() {
        let mut t = FlowTable::<16>::default();
        let mut out = Vec::new();
        feed(&mut t, tcp(0, A, 40000, B, 80, SYN), &mut out);
        feed(&mut t, tcp(1, B, 80, A, 40000, TcpFlags::RST | ACK), &mut out);
        let i = feed(&mut t, tcp(100, A, 40000, B, 80, SYN), &mut out);
        assert!(i.new_flow);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].reason, EndReason::Reused);
        assert_eq!(out[0].flow.packets(), 2);
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn test_idle_and_active_timeouts() {
        let cfg = FlowConfig {
            idle_timeout: Duration::from_secs(10),
            active_timeout: Duration::from_secs(30),
            ..FlowConfig::default()
        };
        let mut t = FlowTable::<16>::new(cfg);
        let mut out = Vec::new();
        feed(&mut t, udp(0, A, 5000, B, 53), &mut out);
        // A packet after the idle timeout starts a new flow and records the old one.
        let i = feed(&mut t, udp(11_000, A, 5000, B, 53), &mut out);
        assert!(i.new_flow);
        assert_eq!(out.pop().map(|r| r.reason), Some(EndReason::IdleTimeout));
        // Steady traffic past the active timeout is cut into records.
        for s in 12..45 {
            feed(&mut t, udp(s * 1000, A, 5000, B, 53), &mut out);
        }
        assert_eq!(out.pop().map(|r| r.reason), Some(EndReason::ActiveTimeout));
        t.flush(&mut |r| out.push(r));
        assert_eq!(out.pop().map(|r| r.reason), Some(EndReason::Flush));
        assert!(t.is_empty());
        let c = t.counters();
        assert_eq!(c.created, c.ended_total());
    }

    #[test]
    fn test_a_flush_ends_every_flow_last_to_first_by_either_path_and_leaves_the_table_usable() {
        // 3 flows: under FLUSH_CLEARS, taken out one by one; 100: the shard emptied at once.
        assert_eq!(FlowTable::<256>::FLUSH_CLEARS, 4);
        for n in [3u16, 100] {
            let (mut a, mut b) = (FlowTable::<256>::default(), FlowTable::<256>::default());
            let mut out = Vec::new();
            for p in 0..n {
                feed(&mut a, udp(i64::from(p), A, 1000 + p, B, 53), &mut out);
                feed(&mut b, udp(i64::from(p), A, 1000 + p, B, 53), &mut out);
            }
            let (mut flushed, mut removed) = (Vec::new(), Vec::new());
            a.flush(&mut |r| flushed.push(r));
            for s in 0..b.maps.count() {
                let all = |_: &Flow| Some(EndReason::Flush);
                b.remove_where(s, usize::MAX, all, &mut |r| removed.push(r));
            }
            assert_eq!(flushed.len(), usize::from(n));
            assert_eq!(flushed, removed, "the order and the records of one by one");
            assert!(a.is_empty());
            assert_eq!(a.counters().ended_total(), u64::from(n));
            // Usable afterwards: a flow goes in, and its next packet finds it.
            assert!(feed(&mut a, udp(1000, A, 1000, B, 53), &mut out).new_flow);
            assert!(!feed(&mut a, udp(1001, A, 1000, B, 53), &mut out).new_flow);
            assert_eq!(a.len(), 1);
        }
    }

    #[test]
    fn test_full_table_evicts_and_counts() {
        let mut t = FlowTable::<8>::default();
        let mut out = Vec::new();
        // A shard of 8 slots holds 7 flows (its high-water mark).
        assert_eq!((FlowTable::<8>::HIGH_WATER, t.capacity()), (7, 7));
        for p in 0..7u16 {
            feed(&mut t, udp(i64::from(p), A, 1000 + p, B, 53), &mut out);
        }
        assert_eq!(t.len(), 7);
        assert!(out.is_empty());
        feed(&mut t, udp(100, A, 2000, B, 53), &mut out);
        assert_eq!(t.len(), 7);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].reason, EndReason::Evicted);
        assert_eq!(out[0].src_port(), 1006, "one of the least recently seen");
        assert_eq!(t.counters().evicted(), 1);
        // Nothing lost: every flow created is either in the table or recorded.
        assert_eq!(t.counters().created, t.len() as u64 + t.counters().ended_total());
    }

    /// The flow slot is most of the daemon's memory (a million flows at 232 bytes are 221 MiB,
    /// 284 bytes a slot with its key and index): growing it should be a decision.
    #[test]
    fn test_flow_slot_stays_small() {
        assert!(core::mem::size_of::<Flow>() <= 232, "{}", core::mem::size_of::<Flow>());
        let slot = core::mem::size_of::<FlowMap<1024>>() / 1024;
        assert!(slot <= 284, "{slot}");
    }

    /// Times are kept from the flow's start in 32 bits: a table holds the active timeout to
    /// what they can count, and a packet stamped before the start counts as at it.
    #[test]
    fn test_a_flows_times_fit_its_32_bits() {
        let config = FlowConfig {
            active_timeout: Duration::from_secs(100_000),
            idle_timeout: Duration::from_secs(100_000),
            ..Default::default()
        };
        let mut t = FlowTable::<16>::new(config);
        assert_eq!(t.config().active_timeout, MAX_ACTIVE_TIMEOUT);
        t.set_config(config);
        assert_eq!(t.config().active_timeout, MAX_ACTIVE_TIMEOUT);
        let mut out = Vec::new();
        // 10 s, then 4 s earlier than the start, then 3,599 s: one flow, and its last packet
        // is 3,599 s after its first.
        feed(&mut t, udp(10_000, A, 1, B, 2), &mut out);
        feed(&mut t, udp(6_000, B, 2, A, 1), &mut out);
        feed(&mut t, udp(3_609_000, A, 1, B, 2), &mut out);
        assert!(out.is_empty());
        let r = only(&t);
        assert_eq!(r.flow.packets(), 3);
        assert_eq!(r.flow.last() - r.flow.start, Duration::from_secs(3_599));
        assert_eq!(r.flow.iat.max(), 3_599e6);
        assert_eq!((r.flow.bwd.last, r.flow.fwd.last), (0, 3_599_000_000));
        assert_eq!(r.flow.fwd.iat.sum(), 3_599e6);
        // One more second and it is an hour old: a new record.
        feed(&mut t, udp(3_610_000, A, 1, B, 2), &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].reason, EndReason::ActiveTimeout);
    }

    #[test]
    fn test_vlan_separates_flows() {
        let mut t = FlowTable::<16>::default();
        let mut out = Vec::new();
        let mut m = udp(0, A, 1, B, 2);
        feed(&mut t, m, &mut out);
        m.vlan = 7;
        feed(&mut t, m, &mut out);
        assert_eq!(t.len(), 2);
    }
}
