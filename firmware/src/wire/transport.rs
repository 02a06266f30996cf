//! TCP (flags, MSS and window-scale options), UDP, ICMPv4 and ICMPv6 through smoltcp's views.

use super::{app, DhcpInfo, DissectError, DnsInfo, L4};
use smoltcp::wire::{Icmpv4Packet, Icmpv6Packet, TcpOption, TcpPacket, UdpPacket};

const IPPROTO_ICMP: u8 = 1;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const IPPROTO_ICMPV6: u8 = 58;
/// TCP-AO's option kind (RFC 5925).
const TCP_AO: u8 = 29;

/// The eight TCP flag bits, in header order (FIN is bit 0).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TcpFlags(pub u8);

impl TcpFlags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const PSH: u8 = 0x08;
    pub const ACK: u8 = 0x10;
    pub const URG: u8 = 0x20;
    pub const ECE: u8 = 0x40;
    pub const CWR: u8 = 0x80;

    pub const fn has(self, bit: u8) -> bool {
        self.0 & bit != 0
    }
    pub const fn fin(self) -> bool {
        self.has(Self::FIN)
    }
    pub const fn syn(self) -> bool {
        self.has(Self::SYN)
    }
    pub const fn rst(self) -> bool {
        self.has(Self::RST)
    }
    pub const fn ack(self) -> bool {
        self.has(Self::ACK)
    }
}

/// The TCP header fields the flow table and the features use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpInfo {
    pub src_port: u16,
    pub dst_port: u16,
    pub flags: TcpFlags,
    /// Advertised receive window (unscaled).
    pub window: u16,
    /// Header length including options.
    pub header_len: u8,
    /// Segment payload bytes as sent (from the IP length, not from what was captured).
    pub payload_len: u16,
    pub mss: Option<u16>,
    pub window_scale: Option<u8>,
    /// The urgent pointer, when the URG flag is set (0 without it).
    pub urgent: u16,
    /// A SYN with a TCP-AO option (kind 29) shorter than the 4 bytes RFC 5925 makes its least:
    /// what URGENT/11's CVE-2019-12260 sends to VxWorks' IPnet, which no stack sends itself.
    pub short_ao: bool,
}

/// The UDP header fields, and what we read of DNS and DHCP above it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UdpInfo {
    pub src_port: u16,
    pub dst_port: u16,
    pub payload_len: u16,
    pub dns: Option<DnsInfo>,
    pub dhcp: Option<DhcpInfo>,
}

/// The bytes the transport header of `protocol` takes, as far as `bytes` tell (a TCP header's
/// options by its data offset, once that is there); 0 for a protocol without one we read.
pub(crate) fn min_header_len(protocol: u8, bytes: &[u8]) -> usize {
    match protocol {
        IPPROTO_TCP => bytes.get(12).map_or(20, |b| usize::from(b >> 4) * 4).max(20),
        IPPROTO_UDP | IPPROTO_ICMP | IPPROTO_ICMPV6 => 8,
        _ => 0,
    }
}

/// `bytes` is what we hold of the IP payload; `wire_len` what the IP header says it holds.
/// `partial` says the datagram is not whole here: a first fragment, or cut by the snap length.
/// Length fields may then point past what we hold, and that is not an error.
pub(crate) fn parse(
    protocol: u8,
    bytes: &[u8],
    wire_len: usize,
    partial: bool,
) -> Result<L4, DissectError> {
    let payload_len = wire_len.saturating_sub(8).min(usize::from(u16::MAX)) as u16;
    match protocol {
        IPPROTO_TCP => tcp(bytes, wire_len),
        IPPROTO_UDP => udp(bytes, wire_len, partial),
        IPPROTO_ICMP => {
            // (type, code, echo identifier) through smoltcp's checked view, or the bare header
            // of a partial datagram.
            let head = match Icmpv4Packet::new_checked(bytes) {
                Ok(p) => {
                    let t: u8 = p.msg_type().into();
                    (t, p.msg_code(), matches!(t, 0 | 8).then(|| p.echo_ident()))
                }
                Err(_) => icmp_head(bytes, partial)?,
            };
            let (icmp_type, code, ident) = head;
            Ok(L4::Icmpv4 { icmp_type, code, ident, payload_len })
        }
        IPPROTO_ICMPV6 => {
            let (head, mtu) = match Icmpv6Packet::new_checked(bytes) {
                Ok(p) => {
                    let t: u8 = p.msg_type().into();
                    let mtu = (t == 2).then(|| p.pkt_too_big_mtu());
                    ((t, p.msg_code(), matches!(t, 128 | 129).then(|| p.echo_ident())), mtu)
                }
                Err(_) => (icmp_head(bytes, partial)?, None),
            };
            let (icmp_type, code, ident) = head;
            Ok(L4::Icmpv6 { icmp_type, code, ident, mtu, payload_len })
        }
        _ => Ok(L4::None),
    }
}

/// Type and code of an ICMP message whose body smoltcp cannot check because the datagram is
/// partial here (a first fragment, or cut by the snap length): both sit in the first two bytes.
fn icmp_head(bytes: &[u8], partial: bool) -> Result<(u8, u8, Option<u16>), DissectError> {
    match bytes {
        [t, c, _, _, ..] if partial => Ok((*t, *c, None)),
        _ => Err(DissectError::IcmpMalformed),
    }
}

fn tcp(bytes: &[u8], wire_len: usize) -> Result<L4, DissectError> {
    let p = TcpPacket::new_checked(bytes).map_err(|_| DissectError::TcpMalformed)?;
    let header_len = p.header_len();
    // The eight flag bits are byte 13 of the header, FIN in bit 0: the same bits smoltcp's eight
    // getters read one by one (`new_checked` has made sure the byte is there).
    let flags = TcpFlags(bytes[13]);
    // MSS and window scale are only meaningful on a SYN; other segments' options (timestamps,
    // SACK) are not needed, so they are not parsed. Garbage in a SYN's options is what some
    // scanners send: the segment still counts.
    let opts =
        if flags.syn() { p.options_summary().unwrap_or_default() } else { Default::default() };
    let short_ao = flags.syn() && short_ao(p.options());
    Ok(L4::Tcp(TcpInfo {
        src_port: p.src_port(),
        dst_port: p.dst_port(),
        flags,
        window: p.window_len(),
        header_len,
        payload_len: wire_len.saturating_sub(usize::from(header_len)).min(usize::from(u16::MAX))
            as u16,
        mss: opts.max_segment_size,
        window_scale: opts.window_scale,
        urgent: if flags.has(TcpFlags::URG) { p.urgent_at() } else { 0 },
        short_ao,
    }))
}

/// Whether TCP `options` hold a TCP-AO option (kind 29) with a length below 4.
fn short_ao(mut options: &[u8]) -> bool {
    while let Ok((rest, option)) = TcpOption::parse(options) {
        match option {
            TcpOption::EndOfList => break,
            TcpOption::Unknown { kind: TCP_AO, data } if data.len() < 2 => return true,
            _ => {}
        }
        options = rest;
    }
    false
}

fn udp(bytes: &[u8], wire_len: usize, partial: bool) -> Result<L4, DissectError> {
    if bytes.len() < smoltcp::wire::UDP_HEADER_LEN {
        return Err(DissectError::UdpMalformed);
    }
    // `new_checked` also wants the whole datagram; a snap length may have cut it, so check the
    // fixed 8-byte header ourselves and the length field against what the IP header says.
    let p = UdpPacket::new_unchecked(bytes);
    let len = usize::from(p.len());
    // A first fragment's UDP length covers the whole datagram, beyond this fragment.
    if len < smoltcp::wire::UDP_HEADER_LEN || (len > wire_len && !partial) {
        return Err(DissectError::UdpMalformed);
    }
    let (src_port, dst_port) = (p.src_port(), p.dst_port());
    let body = &bytes[8..len.min(bytes.len())];
    let dns = (src_port == 53 || dst_port == 53).then(|| app::dns(body)).flatten();
    let dhcp = (matches!(src_port, 67 | 68) && matches!(dst_port, 67 | 68))
        .then(|| app::dhcp(body))
        .flatten();
    Ok(L4::Udp(UdpInfo { src_port, dst_port, payload_len: (len - 8) as u16, dns, dhcp }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_tcp_bad_data_offset() {
        let mut t = [0u8; 20];
        t[12] = 0x30; // 12-byte header: below the minimum
        assert_eq!(tcp(&t, 20), Err(DissectError::TcpMalformed));
        t[12] = 0xf0; // 60-byte header in 20 bytes
        assert_eq!(tcp(&t, 20), Err(DissectError::TcpMalformed));
    }

    #[test]
    fn test_tcp_flags_byte_matches_smoltcp() {
        for bits in 0..=255u8 {
            let mut t = [0u8; 20];
            t[12] = 0x50;
            t[13] = bits;
            let p = TcpPacket::new_checked(&t[..]).unwrap();
            let L4::Tcp(info) = tcp(&t, 20).unwrap() else { panic!() };
            let f = info.flags;
            assert_eq!(
                [
                    f.fin(),
                    f.syn(),
                    f.rst(),
                    f.has(TcpFlags::PSH),
                    f.ack(),
                    f.has(TcpFlags::URG),
                    f.has(TcpFlags::ECE),
                    f.has(TcpFlags::CWR)
                ],
                [p.fin(), p.syn(), p.rst(), p.psh(), p.ack(), p.urg(), p.ece(), p.cwr()]
            );
        }
    }

    #[test]
    fn test_tcp_garbage_options_still_parse() {
        let mut t = [0u8; 24];
        t[12] = 0x60;
        t[13] = TcpFlags::SYN;
        t[20] = 2; // MSS kind with an impossible length
        t[21] = 9;
        let L4::Tcp(info) = tcp(&t, 24).unwrap() else { panic!() };
        assert_eq!(info.mss, None);
        assert!(info.flags.syn());
    }

    #[test]
    fn test_udp_length_field() {
        let mut u = [0u8; 12];
        u[4..6].copy_from_slice(&4u16.to_be_bytes());
        assert_eq!(udp(&u, 12, false), Err(DissectError::UdpMalformed));
        u[4..6].copy_from_slice(&100u16.to_be_bytes());
        assert_eq!(udp(&u, 12, false), Err(DissectError::UdpMalformed));
        // Cut by the snap length but consistent with the IP header: fine.
        let L4::Udp(info) = udp(&u, 100, false).unwrap() else { panic!() };
        assert_eq!(info.payload_len, 92);
        // A first fragment: the UDP length covers fragments we do not have here.
        let L4::Udp(info) = udp(&u, 12, true).unwrap() else { panic!() };
        assert_eq!(info.payload_len, 92);
    }

    #[test]
    fn test_icmp_too_short() {
        // An MLD report cut by fragmentation: type and code still read.
        let mld = [131, 0, 0xb0, 0x0b, 0, 0];
        assert_eq!(parse(58, &mld, 6, false), Err(DissectError::IcmpMalformed));
        assert!(matches!(parse(58, &mld, 6, true), Ok(L4::Icmpv6 { icmp_type: 131, .. })));
        assert_eq!(parse(1, &[8, 0, 0], 3, false), Err(DissectError::IcmpMalformed));
        assert_eq!(parse(58, &[128, 0], 2, true), Err(DissectError::IcmpMalformed));
    }
}
