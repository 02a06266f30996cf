//! One packet at a time through dissection, the flow table and the host windows.
//!
//! The engine is synchronous and pure: the caller hands it bytes and a timestamp, it hands back
//! finished flows with their feature vectors through a callback. Expiry runs on packet time
//! (at most once per `sweep_interval`), and [`Engine::tick`] lets a live caller advance time when
//! no packet comes.

use crate::analyzers::Analyzers;
use crate::features::{self, FeatureVector};
use crate::flow::{FlowConfig, FlowCounters, FlowMap, FlowRecord, FlowShards, FlowTable};
use crate::hosts::{HostConfig, HostCounters, HostFeatures, HostTable};
use crate::victims::{VictimTable, VICTIMS};
use crate::wire::{dissect, DissectError, LinkType, PacketMeta, L3, L4};
use crate::{Duration, Instant};
use core::net::IpAddr;

/// Engine settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineConfig {
    pub flow: FlowConfig,
    pub hosts: HostConfig,
    /// How often (in packet time) timed-out flows and hosts are swept.
    pub sweep_interval: Duration,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            flow: FlowConfig::default(),
            hosts: HostConfig::default(),
            sweep_interval: Duration::from_secs(1),
        }
    }
}

/// A flow that ended, with what its features are computed from.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FinishedFlow {
    pub record: FlowRecord,
    /// The initiator's window features when the flow ended.
    pub host: HostFeatures,
    /// The record ended an initiator's attempt that got no answer or was refused.
    pub failed: bool,
}

impl FinishedFlow {
    /// The feature vector (computed on demand: a consumer that only counts flows does not pay
    /// for it).
    pub fn features(&self) -> FeatureVector {
        features::compute(&self.record, &self.host)
    }
}

/// Packet counters, for statistics and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EngineCounters {
    pub packets: u64,
    /// Frame bytes on the wire.
    pub bytes: u64,
    pub ipv4: u64,
    pub ipv6: u64,
    pub tcp: u64,
    pub udp: u64,
    pub icmp: u64,
    pub other_ip: u64,
    pub arp: u64,
    /// Frames with an EtherType we do not track (LLDP, STP, ...).
    pub other_l3: u64,
    /// Packets cut short by the capture's snap length (still accounted).
    pub truncated: u64,
    pub fragments: u64,
    /// Dissection errors by kind, in the order of [`DissectError::ALL`].
    pub errors: [u64; DissectError::ALL.len()],
}

impl EngineCounters {
    pub fn errors_total(&self) -> u64 {
        self.errors.iter().sum()
    }
}

/// Dissection, flows and hosts: shards of `F` flows kept in `M`, and `H` hosts at most (`F` and
/// `H` powers of two, at most 65,536 each).
#[derive(Debug)]
pub struct Engine<const F: usize, const H: usize, M: FlowShards<F> = [FlowMap<F>; 1]> {
    flows: FlowTable<F, M>,
    hosts: HostTable<H>,
    victims: VictimTable<VICTIMS>,
    analyzers: Analyzers,
    config: EngineConfig,
    counters: EngineCounters,
    last_sweep: Option<Instant>,
}

impl<const F: usize, const H: usize, M: FlowShards<F>> Default for Engine<F, H, M> {
    fn default() -> Self {
        Self::new(EngineConfig::default())
    }
}

fn is_group(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => a.is_multicast() || a.is_broadcast() || a.octets()[3] == 255,
        IpAddr::V6(a) => a.is_multicast(),
    }
}

impl<const F: usize, const H: usize, M: FlowShards<F>> Engine<F, H, M> {
    pub fn new(config: EngineConfig) -> Self {
        Engine {
            flows: FlowTable::new(config.flow),
            hosts: HostTable::new(config.hosts),
            victims: VictimTable::with_window(config.hosts.window),
            analyzers: Analyzers::new(),
            config,
            counters: EngineCounters::default(),
            last_sweep: None,
        }
    }

    pub fn counters(&self) -> &EngineCounters {
        &self.counters
    }
    pub fn flow_counters(&self) -> &FlowCounters {
        self.flows.counters()
    }
    pub fn host_counters(&self) -> &HostCounters {
        self.hosts.counters()
    }
    pub fn flows(&self) -> &FlowTable<F, M> {
        &self.flows
    }
    pub fn hosts(&self) -> &HostTable<H> {
        &self.hosts
    }
    /// What each destination received (the victim-side windows).
    pub fn victims(&self) -> &VictimTable<VICTIMS> {
        &self.victims
    }
    /// The protocol analyzers' facts (authentication, DNS, TLS, ARP, DHCP, SMB).
    pub fn analyzers(&self) -> &Analyzers {
        &self.analyzers
    }

    /// Dissect and account one captured frame. Errors are counted before they are returned.
    pub fn process(
        &mut self,
        link: LinkType,
        ts: Instant,
        wire_len: u32,
        bytes: &[u8],
        out: &mut impl FnMut(&FinishedFlow),
    ) -> Result<PacketMeta, DissectError> {
        self.counters.packets += 1;
        self.counters.bytes += u64::from(wire_len.max(bytes.len() as u32));
        match dissect(link, ts, wire_len, bytes) {
            Ok(meta) => {
                self.ingest_with(&meta, meta.payload(bytes), out);
                Ok(meta)
            }
            Err(e) => {
                self.counters.errors[e.index()] += 1;
                Err(e)
            }
        }
    }

    /// Account one dissected packet (without its payload: the analyzers that read payloads see
    /// nothing of it).
    pub fn ingest(&mut self, meta: &PacketMeta, out: &mut impl FnMut(&FinishedFlow)) {
        self.ingest_with(meta, &[], out);
    }

    /// Account one dissected packet with its transport payload ([`PacketMeta::payload`]).
    pub fn ingest_with(
        &mut self,
        meta: &PacketMeta,
        payload: &[u8],
        out: &mut impl FnMut(&FinishedFlow),
    ) {
        let now = meta.ts;
        self.tick(now, out);
        if meta.truncated {
            self.counters.truncated += 1;
        }
        match meta.l3 {
            L3::Ip(ip) => {
                let c = &mut self.counters;
                match ip.src {
                    IpAddr::V4(_) => c.ipv4 += 1,
                    IpAddr::V6(_) => c.ipv6 += 1,
                }
                match ip.l4 {
                    L4::Tcp(_) => c.tcp += 1,
                    L4::Udp(_) => c.udp += 1,
                    L4::Icmpv4 { .. } | L4::Icmpv6 { .. } => c.icmp += 1,
                    L4::None => c.other_ip += 1,
                }
                if ip.fragment() {
                    c.fragments += 1;
                }
                if let Some(w) = self.hosts.window_mut(ip.src, now) {
                    w.packets += 1;
                    w.bytes += u64::from(meta.wire_len);
                    w.crafted |= ip.l4.crafted();
                    w.protocols[usize::from(ip.protocol >> 6)] |= 1 << (ip.protocol & 63);
                    match ip.l4 {
                        L4::Tcp(t) if t.flags.syn() && !t.flags.ack() => {
                            w.syns += 1;
                            w.syn_src_ports.insert(u64::from(t.src_port));
                        }
                        L4::Icmpv4 { icmp_type: 8, .. } | L4::Icmpv6 { icmp_type: 128, .. } => {
                            w.icmp_echo += 1
                        }
                        L4::Udp(_) => w.udp += 1,
                        _ => {}
                    }
                }
                if !is_group(ip.dst) {
                    let tcp = match ip.l4 {
                        L4::Tcp(t) => Some((t.flags.syn(), t.flags.ack())),
                        _ => None,
                    };
                    let udp = match ip.l4 {
                        L4::Udp(u) => Some((u.src_port, u.dst_port)),
                        _ => None,
                    };
                    let udp_tail = ip.fragment_tail() && ip.protocol == 17;
                    self.victims.note(ip.src, ip.dst, now, meta.wire_len, tcp, udp, udp_tail);
                    let unreachable = matches!(
                        ip.l4,
                        L4::Icmpv4 { icmp_type: 3, code: 2, .. }
                            | L4::Icmpv6 { icmp_type: 4, code: 1, .. }
                    );
                    if unreachable {
                        self.victims.note_protocol_unreachable(ip.dst, now);
                    }
                }
                match ip.l4 {
                    L4::Tcp(t) if t.flags.syn() && t.flags.ack() => {
                        if let Some(w) = self.hosts.window_mut(ip.dst, now) {
                            w.syn_acks += 1;
                        }
                    }
                    L4::Udp(u) => {
                        if let Some(d) = u.dhcp.filter(|d| d.op == 1) {
                            self.hosts.note_dhcp(ip.src, now, d.client_mac);
                        }
                    }
                    _ => {}
                }
                let (hosts, an) = (&mut self.hosts, &mut self.analyzers);
                let ingested =
                    self.flows.ingest(meta, &ip, &mut |rec| Self::finish(hosts, an, rec, now, out));
                let from_initiator = matches!(ingested.direction, crate::flow::Direction::Forward);
                self.analyzers.ip(&ip, payload, from_initiator, now);
                if ingested.new_flow {
                    let (sport, dport) = ip.l4.ports();
                    let (initiator, responder, port) = match ingested.direction {
                        crate::flow::Direction::Forward => (ip.src, ip.dst, dport),
                        crate::flow::Direction::Backward => (ip.dst, ip.src, sport),
                    };
                    let port = matches!(ip.l4, L4::Tcp(_) | L4::Udp(_)).then_some(port);
                    self.hosts.note_flow(initiator, now, responder, port);
                }
            }
            L3::Arp(a) => {
                self.counters.arp += 1;
                self.analyzers.arp(meta, &a, now);
                if let Some(w) = self.hosts.window_mut(IpAddr::V4(a.sender_ip), now) {
                    w.arp += 1;
                    match a.operation {
                        1 => {
                            w.arp_requests += 1;
                            w.arp_targets.insert(u64::from(u32::from(a.target_ip)));
                        }
                        2 => w.arp_replies += 1,
                        _ => {}
                    }
                }
            }
            L3::Other(_) => self.counters.other_l3 += 1,
        }
    }

    /// Advance time without a packet: sweep timed-out flows and hosts if a sweep is due.
    pub fn tick(&mut self, now: Instant, out: &mut impl FnMut(&FinishedFlow)) {
        let due = self.last_sweep.is_none_or(|l| now - l >= self.config.sweep_interval);
        if !due {
            return;
        }
        if self.last_sweep.is_some() {
            let (hosts, an) = (&mut self.hosts, &mut self.analyzers);
            self.flows.expire(now, &mut |rec| Self::finish(hosts, an, rec, now, out));
            self.hosts.expire(now);
            self.victims.expire(now);
            self.analyzers.expire(now);
        }
        self.last_sweep = Some(now);
    }

    /// End every flow (end of input or shutdown).
    pub fn flush(&mut self, out: &mut impl FnMut(&FinishedFlow)) {
        let (hosts, an) = (&mut self.hosts, &mut self.analyzers);
        let now = self.last_sweep.unwrap_or(Instant::from_micros(0));
        let now =
            self.flows.iter().map(|(_, f)| f.last()).fold(now, |a, b| if b > a { b } else { a });
        self.flows.flush(&mut |rec| Self::finish(hosts, an, rec, now, out));
    }

    /// End every flow and forget every host, keeping the counters: the next packets come from an
    /// unrelated input (the next capture file).
    pub fn reset(&mut self, out: &mut impl FnMut(&FinishedFlow)) {
        self.flush(out);
        self.hosts.clear();
        self.victims.clear();
        self.analyzers.clear();
        self.last_sweep = None;
    }

    fn finish(
        hosts: &mut HostTable<H>,
        analyzers: &mut Analyzers,
        record: FlowRecord,
        now: Instant,
        out: &mut impl FnMut(&FinishedFlow),
    ) {
        let f = &record.flow;
        let failed = if f.protocol == 6 {
            let tcp = f.tcp();
            (tcp.syn && !tcp.syn_ack) || (tcp.rst && !tcp.established)
        } else {
            f.bwd.packets == 0 && !is_group(record.dst())
        };
        if failed {
            if let Some(w) = hosts.window_mut(record.src(), now) {
                w.failed += 1;
            }
            let ports =
                matches!(f.protocol, 6 | 17).then(|| (record.src_port(), record.dst_port()));
            analyzers.failed_flow(record.src(), record.dst(), ports, now);
        }
        let host = hosts.features(&record.src(), now);
        out(&FinishedFlow { record, host, failed });
    }
}
