//! Packet dissection: from captured bytes to a small, `Copy` [`PacketMeta`].
//!
//! smoltcp's `wire` types do the parsing. The contract is theirs: every view is built with
//! `new_checked` (or after our own explicit length check), so no accessor can panic, and any byte
//! string gives either a `PacketMeta` or a typed [`DissectError`] that the caller counts.
//!
//! Captures are often cut short by a snap length. A packet whose headers are whole but whose payload
//! was cut is still dissected and marked [`PacketMeta::truncated`]; lengths then come from the
//! headers (what was on the wire), not from what was captured.

mod app;
mod ip;
mod link;
mod transport;

pub use app::{DhcpInfo, DnsInfo};
pub use link::LinkType;
pub use transport::{TcpFlags, TcpInfo, UdpInfo};

use core::net::{IpAddr, Ipv4Addr};
use smoltcp::time::Instant;

/// What one captured packet is, as far as the flow table, the host windows and the detectors need.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PacketMeta {
    /// Capture timestamp, passed in by the caller.
    pub ts: Instant,
    /// Length of the frame on the wire (the capture header's original length).
    pub wire_len: u32,
    /// Whether the capture holds fewer bytes than the headers say were sent.
    pub truncated: bool,
    /// Outermost 802.1Q VLAN id, 0 when untagged.
    pub vlan: u16,
    /// Number of VLAN tags (2 for QinQ).
    pub vlan_depth: u8,
    /// Source MAC address, when the link layer has one.
    pub src_mac: Option<[u8; 6]>,
    /// Where the transport payload (above TCP, UDP or ICMP) starts in the captured bytes, 0
    /// when there is none: the protocol analyzers read it through [`PacketMeta::payload`].
    pub payload_at: u16,
    pub l3: L3,
}

impl PacketMeta {
    /// The transport payload as captured (`bytes` are the frame this was dissected from): cut
    /// by the snap length, never past what the IP and transport headers say was sent (so an
    /// Ethernet frame's padding is not payload).
    pub fn payload<'a>(&self, bytes: &'a [u8]) -> &'a [u8] {
        let L3::Ip(ip) = &self.l3 else { return &[] };
        let at = usize::from(self.payload_at);
        if at == 0 || at > bytes.len() {
            return &[];
        }
        let len = (ip.l4.payload_len() as usize).min(bytes.len() - at);
        &bytes[at..at + len]
    }
}

/// The network layer of a packet.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum L3 {
    Ip(IpInfo),
    Arp(ArpInfo),
    /// Any other EtherType (LLDP, STP, IPX, ...): counted, not tracked as flows.
    Other(u16),
}

/// ARP over Ethernet and IPv4, the only kind that matters on a tap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArpInfo {
    /// 1 request, 2 reply (other values kept as sent).
    pub operation: u16,
    pub sender_mac: [u8; 6],
    pub sender_ip: Ipv4Addr,
    pub target_mac: [u8; 6],
    pub target_ip: Ipv4Addr,
}

/// IPv6 extension headers seen in front of the upper layer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Ipv6Ext {
    pub hop_by_hop: bool,
    pub destination_options: bool,
    /// Routing header type, if one was present (type 0 is deprecated and abused).
    pub routing_type: Option<u8>,
    pub fragment: bool,
    /// A hop-by-hop or destination-options header carries an option no stack sends: a type
    /// no registry names, padding with data in it (RFC 8200 says zeros) or longer than the
    /// 7 bytes alignment needs (RFC 8504 lets a host drop that). What a covert channel in
    /// the options is made of (THC-IPv6's covert_send6).
    pub covert_options: bool,
    /// Number of extension headers walked.
    pub count: u8,
    /// The chain went on past [`MAX_IPV6_EXT`] headers and was not walked further (what
    /// follows is not read): no stack sends that, and a monitor that gives up there sees no
    /// transport header (RFC 7112).
    pub overflow: bool,
}

/// IPv6 extension headers walked before the chain is called hostile and left unread.
pub const MAX_IPV6_EXT: u8 = 8;

/// Where one fragment sits in its datagram: IPv4's identification, flags and offset, or the
/// IPv6 fragment header's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frag {
    /// The datagram's identification (16 bits in IPv4, 32 in IPv6).
    pub id: u32,
    /// Where this fragment's data goes in the datagram, in bytes.
    pub offset: u32,
    /// Bytes of fragment data the headers say follow (after the fragment header in IPv6).
    pub len: u32,
    /// More fragments follow (MF).
    pub more: bool,
    /// IPv6 fragment headers in this one packet (RFC 8200 allows one; 1 in IPv4).
    pub headers: u8,
    /// A first fragment (offset 0) that does not hold its whole transport header, or IPv6
    /// header chain: the rest is in a later fragment (RFC 1858's tiny fragment, RFC 7112).
    pub split_header: bool,
    /// FNV-1a of the fragment data as captured: the same range sent twice with other bytes is
    /// an overlap, a copy of it (a mirror port that sees a packet twice) is not.
    pub digest: u32,
}

impl Frag {
    /// A fragment header that fragments nothing: offset 0 and no more to come.
    pub const fn atomic(&self) -> bool {
        self.offset == 0 && !self.more
    }
}

/// The IP layer of a packet, v4 or v6.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct IpInfo {
    pub src: IpAddr,
    pub dst: IpAddr,
    /// Bytes of the IP packet as the header states (IPv4 total length, IPv6 40 + payload length).
    pub ip_len: u32,
    /// TTL or hop limit.
    pub ttl: u8,
    /// The upper-layer protocol number (after IPv6 extension headers).
    pub protocol: u8,
    /// IPv4 header options length in bytes.
    pub ipv4_options_len: u8,
    /// Part of a fragmented datagram (first or later), or an IPv6 atomic fragment.
    pub frag: Option<Frag>,
    pub ipv6_ext: Ipv6Ext,
    pub l4: L4,
}

impl IpInfo {
    /// Part of a fragmented datagram (first or later), or an IPv6 atomic fragment.
    pub const fn fragment(&self) -> bool {
        self.frag.is_some()
    }
    /// A later fragment: it carries no upper-layer header.
    pub fn fragment_tail(&self) -> bool {
        self.frag.is_some_and(|f| f.offset != 0)
    }
}

/// The transport layer, when there is one to read.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum L4 {
    Tcp(TcpInfo),
    Udp(UdpInfo),
    /// ICMPv4 type and code; `ident` is the echo identifier for echo request and reply.
    Icmpv4 {
        icmp_type: u8,
        code: u8,
        ident: Option<u16>,
        payload_len: u16,
    },
    /// ICMPv6 type and code; `ident` as for ICMPv4; `mtu` the MTU a Packet Too Big gives.
    Icmpv6 {
        icmp_type: u8,
        code: u8,
        ident: Option<u16>,
        mtu: Option<u32>,
        payload_len: u16,
    },
    /// A later fragment, or a protocol without ports (GRE, ESP, SCTP, ...).
    None,
}

impl L4 {
    /// A probe no TCP/IP stack sends in its own work, made to see how a host answers (nmap's
    /// OS detection, xprobe, the stealth scans), as one bit per kind: TCP with no flags (1),
    /// with SYN and FIN (2) or SYN and RST (4), FIN, PSH and URG without ACK (8); an ICMP echo
    /// (16) or timestamp (32) request with a code other than 0; an ICMP information (64) or
    /// address-mask (128) request (obsolete since RFC 6918). 0 for anything else.
    pub fn crafted(&self) -> u8 {
        match *self {
            L4::Tcp(t) => {
                let f = t.flags.0 & 0x3f;
                if f == 0 {
                    1
                } else if t.flags.syn() && t.flags.fin() {
                    2
                } else if t.flags.syn() && t.flags.rst() {
                    4
                } else if f & 0x39 == 0x29 {
                    8
                } else {
                    0
                }
            }
            L4::Icmpv4 { icmp_type: 8, code, .. } | L4::Icmpv6 { icmp_type: 128, code, .. }
                if code != 0 =>
            {
                16
            }
            L4::Icmpv4 { icmp_type: 13, code, .. } if code != 0 => 32,
            L4::Icmpv4 { icmp_type: 15, .. } => 64,
            L4::Icmpv4 { icmp_type: 17, .. } => 128,
            _ => 0,
        }
    }

    /// Ports that key a flow: real ports for TCP and UDP, the echo identifier for ICMP echo.
    pub fn ports(&self) -> (u16, u16) {
        match *self {
            L4::Tcp(t) => (t.src_port, t.dst_port),
            L4::Udp(u) => (u.src_port, u.dst_port),
            L4::Icmpv4 { ident: Some(id), .. } | L4::Icmpv6 { ident: Some(id), .. } => (id, id),
            _ => (0, 0),
        }
    }

    /// Upper-layer payload bytes (after the TCP, UDP or ICMP header).
    pub fn payload_len(&self) -> u32 {
        match *self {
            L4::Tcp(t) => u32::from(t.payload_len),
            L4::Udp(u) => u32::from(u.payload_len),
            L4::Icmpv4 { payload_len, .. } | L4::Icmpv6 { payload_len, .. } => {
                u32::from(payload_len)
            }
            L4::None => 0,
        }
    }

    /// Transport header bytes (CICFlowMeter's "header length").
    pub fn header_len(&self) -> u32 {
        match *self {
            L4::Tcp(t) => u32::from(t.header_len),
            L4::Udp(_) => 8,
            L4::Icmpv4 { .. } | L4::Icmpv6 { .. } => 8,
            L4::None => 0,
        }
    }
}

/// Why a packet could not be dissected. Small and `Copy`: the caller counts it by kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DissectError {
    /// The capture's link type is not one we read.
    UnsupportedLinkType,
    /// Shorter than its link-layer header (Ethernet, VLAN tag, SLL, SLL2, BSD null).
    LinkTruncated,
    /// An ARP packet that is cut or not Ethernet/IPv4.
    ArpMalformed,
    /// IPv4 header cut short, or header length or total length impossible.
    Ipv4Malformed,
    /// IPv6 header cut short, or an extension header chain that is cut or too long.
    Ipv6Malformed,
    /// A version nibble that says neither 4 nor 6 where IP was announced.
    IpVersion,
    /// TCP header cut short or with an impossible data offset.
    TcpMalformed,
    /// UDP header cut short or with an impossible length.
    UdpMalformed,
    /// ICMP header cut short.
    IcmpMalformed,
}

impl DissectError {
    /// Every kind, in a fixed order: counters are indexed by [`DissectError::index`].
    pub const ALL: [DissectError; 9] = [
        DissectError::UnsupportedLinkType,
        DissectError::LinkTruncated,
        DissectError::ArpMalformed,
        DissectError::Ipv4Malformed,
        DissectError::Ipv6Malformed,
        DissectError::IpVersion,
        DissectError::TcpMalformed,
        DissectError::UdpMalformed,
        DissectError::IcmpMalformed,
    ];

    /// A stable snake_case name, used in metrics labels and JSON.
    pub const fn name(self) -> &'static str {
        match self {
            DissectError::UnsupportedLinkType => "unsupported_link_type",
            DissectError::LinkTruncated => "link_truncated",
            DissectError::ArpMalformed => "arp_malformed",
            DissectError::Ipv4Malformed => "ipv4_malformed",
            DissectError::Ipv6Malformed => "ipv6_malformed",
            DissectError::IpVersion => "ip_version",
            DissectError::TcpMalformed => "tcp_malformed",
            DissectError::UdpMalformed => "udp_malformed",
            DissectError::IcmpMalformed => "icmp_malformed",
        }
    }

    pub const fn index(self) -> usize {
        self as usize
    }
}

impl core::fmt::Display for DissectError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.name())
    }
}

impl core::error::Error for DissectError {}

/// Dissect one captured frame.
///
/// `wire_len` is the frame's length on the wire (libpcap's `len`); `bytes` is what was captured.
pub fn dissect(
    link: LinkType,
    ts: Instant,
    wire_len: u32,
    bytes: &[u8],
) -> Result<PacketMeta, DissectError> {
    let frame = link::parse(link, bytes)?;
    let mut meta = PacketMeta {
        ts,
        wire_len: wire_len.max(bytes.len() as u32),
        truncated: (bytes.len() as u32) < wire_len,
        vlan: frame.vlan,
        vlan_depth: frame.vlan_depth,
        src_mac: frame.src_mac,
        payload_at: 0,
        l3: L3::Other(frame.ethertype),
    };
    match frame.ethertype {
        link::ETHERTYPE_IPV4 | link::ETHERTYPE_IPV6 => {
            let version = if frame.ethertype == link::ETHERTYPE_IPV4 { 4 } else { 6 };
            let (info, cut, l4_at) = ip::parse(frame.payload, version)?;
            meta.truncated |= cut;
            if l4_at > 0 {
                // The link header's length: the frame's payload is the tail of `bytes`.
                let at = bytes.len() - frame.payload.len() + l4_at;
                meta.payload_at = u16::try_from(at).unwrap_or(0);
            }
            meta.l3 = L3::Ip(info);
        }
        link::ETHERTYPE_ARP => meta.l3 = L3::Arp(link::parse_arp(frame.payload)?),
        _ => {}
    }
    Ok(meta)
}

#[cfg(test)]
pub(crate) mod testdata;

#[cfg(test)]
mod tests {
    use super::testdata::*;
    use super::*;

    fn ts() -> Instant {
        Instant::from_secs(1_700_000_000)
    }

    #[test]
    fn test_parse_ethernet_ipv4_tcp_syn() {
        let m = dissect(LinkType::Ethernet, ts(), SYN_ETH.len() as u32, &SYN_ETH).unwrap();
        assert!(!m.truncated);
        assert_eq!(m.vlan, 0);
        let L3::Ip(ip) = m.l3 else { panic!("not IP: {m:?}") };
        assert_eq!(ip.src, IpAddr::V4(Ipv4Addr::new(192, 168, 1, 10)));
        assert_eq!(ip.dst, IpAddr::V4(Ipv4Addr::new(192, 168, 1, 20)));
        assert_eq!(ip.ip_len, 60);
        assert_eq!(ip.protocol, 6);
        let L4::Tcp(t) = ip.l4 else { panic!("not TCP") };
        assert_eq!((t.src_port, t.dst_port), (40000, 80));
        assert!(t.flags.syn() && !t.flags.ack());
        assert_eq!(t.mss, Some(1460));
        assert_eq!(t.window_scale, Some(7));
        assert_eq!(t.window, 64240);
        assert_eq!(t.header_len, 40);
        assert_eq!(t.payload_len, 0);
    }

    #[test]
    fn test_parse_qinq() {
        let m = dissect(LinkType::Ethernet, ts(), QINQ_UDP.len() as u32, &QINQ_UDP).unwrap();
        assert_eq!(m.vlan, 100);
        assert_eq!(m.vlan_depth, 2);
        let L3::Ip(ip) = m.l3 else { panic!() };
        let L4::Udp(u) = ip.l4 else { panic!() };
        assert_eq!((u.src_port, u.dst_port, u.payload_len), (5000, 6000, 4));
    }

    #[test]
    fn test_parse_truncated_by_snaplen() {
        // The same SYN with a 1460-byte payload claimed, captured to 74 bytes.
        let mut bytes = SYN_ETH;
        bytes[16..18].copy_from_slice(&1500u16.to_be_bytes());
        let m = dissect(LinkType::Ethernet, ts(), 1514, &bytes).unwrap();
        assert!(m.truncated);
        assert_eq!(m.wire_len, 1514);
        let L3::Ip(ip) = m.l3 else { panic!() };
        assert_eq!(ip.ip_len, 1500);
        let L4::Tcp(t) = ip.l4 else { panic!() };
        assert_eq!(t.payload_len, 1500 - 20 - 40);
    }

    #[test]
    fn test_impossible_len() {
        for n in 0..SYN_ETH.len() {
            // Every prefix gives a typed error or a truncated packet, never a panic.
            if let Ok(m) = dissect(LinkType::Ethernet, ts(), SYN_ETH.len() as u32, &SYN_ETH[..n]) {
                assert!(m.truncated || matches!(m.l3, L3::Other(_)), "prefix {n}: {m:?}");
            }
        }
        assert_eq!(
            dissect(LinkType::Ethernet, ts(), 10, &SYN_ETH[..10]),
            Err(DissectError::LinkTruncated)
        );
        assert_eq!(
            dissect(LinkType::Ethernet, ts(), 30, &SYN_ETH[..30]),
            Err(DissectError::Ipv4Malformed)
        );
        assert_eq!(
            dissect(LinkType::Ethernet, ts(), 40, &SYN_ETH[..40]),
            Err(DissectError::TcpMalformed)
        );
    }

    #[test]
    fn test_parse_ipv6_extension_chain() {
        let m = dissect(LinkType::Raw, ts(), IPV6_HBH_FRAG_UDP.len() as u32, &IPV6_HBH_FRAG_UDP)
            .unwrap();
        let L3::Ip(ip) = m.l3 else { panic!() };
        assert!(ip.ipv6_ext.hop_by_hop);
        assert!(ip.ipv6_ext.fragment);
        assert!(ip.fragment() && !ip.fragment_tail());
        assert_eq!(ip.ipv6_ext.count, 2);
        assert_eq!(ip.protocol, 17);
        let L4::Udp(u) = ip.l4 else { panic!("{ip:?}") };
        assert_eq!((u.src_port, u.dst_port), (1234, 53));
    }

    #[test]
    fn test_parse_arp() {
        let m = dissect(LinkType::Ethernet, ts(), ARP_REPLY.len() as u32, &ARP_REPLY).unwrap();
        let L3::Arp(a) = m.l3 else { panic!() };
        assert_eq!(a.operation, 2);
        assert_eq!(a.sender_ip, Ipv4Addr::new(10, 0, 0, 1));
        assert_eq!(a.sender_mac, [0x02, 0, 0, 0, 0, 1]);
        assert_eq!(a.target_ip, Ipv4Addr::new(10, 0, 0, 2));
    }

    #[test]
    fn test_parse_sll_and_sll2() {
        for (lt, bytes) in
            [(LinkType::LinuxSll, &SLL_ICMP[..]), (LinkType::LinuxSll2, &SLL2_ICMP[..])]
        {
            let m = dissect(lt, ts(), bytes.len() as u32, bytes).unwrap();
            let L3::Ip(ip) = m.l3 else { panic!("{lt:?}") };
            assert_eq!(
                ip.l4,
                L4::Icmpv4 { icmp_type: 8, code: 0, ident: Some(0x1234), payload_len: 4 },
                "{lt:?}"
            );
            assert_eq!(m.src_mac, Some([0x02, 0, 0, 0, 0, 9]));
        }
    }

    #[test]
    fn test_unknown_ethertype_is_not_an_error() {
        let mut f = SYN_ETH;
        f[12..14].copy_from_slice(&0x88ccu16.to_be_bytes()); // LLDP
        let m = dissect(LinkType::Ethernet, ts(), f.len() as u32, &f).unwrap();
        assert_eq!(m.l3, L3::Other(0x88cc));
    }

    #[test]
    fn test_ip_version_mismatch() {
        let mut f = SYN_ETH;
        f[14] = 0x65;
        assert_eq!(
            dissect(LinkType::Ethernet, ts(), f.len() as u32, &f),
            Err(DissectError::IpVersion)
        );
    }

    #[test]
    fn test_error_names_are_unique_and_indexed() {
        for (i, e) in DissectError::ALL.iter().enumerate() {
            assert_eq!(e.index(), i);
            assert_eq!(DissectError::ALL.iter().filter(|o| o.name() == e.name()).count(), 1);
        }
    }
}
