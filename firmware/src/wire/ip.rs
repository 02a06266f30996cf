//! IPv4 (options, fragments) and IPv6 (hop-by-hop, routing, fragment, destination-options and
//! authentication headers) through smoltcp's views.

use super::{transport, DissectError, Frag, IpInfo, Ipv6Ext, L4, MAX_IPV6_EXT};
use core::net::IpAddr;
use smoltcp::wire::{
    IpProtocol, Ipv4Packet, Ipv6ExtHeader, Ipv6FragmentHeader, Ipv6Option, Ipv6Packet,
    Ipv6RoutingHeader,
};

const IPPROTO_AH: u8 = 51;

/// FNV-1a over a fragment's data, for [`Frag::digest`].
fn digest(data: &[u8]) -> u32 {
    data.iter().fold(0x811c_9dc5, |h: u32, &b| (h ^ u32::from(b)).wrapping_mul(0x0100_0193))
}

/// Option types of hop-by-hop and destination-options headers that IANA's registry names
/// (besides Pad1 and PadN): jumbo payload, RPL, tunnel encapsulation limit, router alert,
/// Quick-Start, CALIPSO, SMF_DPD, home address, endpoint identification, ILNP nonce, line
/// identification, the deprecated 0x4D, MPL, IP_DFF, PDM, minimum path MTU, IOAM, AltMark,
/// and RFC 4727's experimental ones.
const KNOWN_OPTIONS: [u8; 28] = [
    0xc2, 0x23, 0x63, 0x04, 0x05, 0x26, 0x07, 0x08, 0xc9, 0x8a, 0x8b, 0x8c, 0x4d, 0x6d, 0xee, 0x0f,
    0x30, 0x11, 0x31, 0x12, 0x1e, 0x3e, 0x5e, 0x7e, 0x9e, 0xbe, 0xde, 0xfe,
];

/// Whether the options of a hop-by-hop or destination-options header (`opts`, after its two
/// fixed bytes) hold what no stack sends ([`Ipv6Ext::covert_options`]): an option no registry
/// names, PadN with data other than zeros, more than 7 bytes of padding in a row, or an
/// option that runs past the header.
fn covert_options(opts: &[u8]) -> bool {
    let mut rest = opts;
    let mut padding = 0;
    while let Some(&kind) = rest.first() {
        let len = if kind == 0 {
            1
        } else {
            let Ok(o) = Ipv6Option::new_checked(rest) else { return true };
            let data = o.data();
            if (kind == 1 && data.iter().any(|&b| b != 0))
                || (kind != 1 && !KNOWN_OPTIONS.contains(&kind))
            {
                return true;
            }
            2 + data.len()
        };
        padding = if kind <= 1 { padding + len } else { 0 };
        if padding > 7 {
            return true;
        }
        rest = &rest[len..];
    }
    false
}

/// The transport header of a first fragment (offset 0), which may hold only part of it: then,
/// unless the capture cut it (`cut`), there is none to read and `frag` says its header was
/// split (an atomic fragment's is nowhere: that is said the same way). A header that is all
/// here and wrong stays an error.
fn first_fragment_l4(
    protocol: u8,
    payload: &[u8],
    wire_len: usize,
    cut: bool,
    frag: &mut Frag,
) -> Result<L4, DissectError> {
    match transport::parse(protocol, payload, wire_len, true) {
        Err(_) if !cut && payload.len() < transport::min_header_len(protocol, payload) => {
            frag.split_header = true;
            Ok(L4::None)
        }
        r => r,
    }
}

/// Parse an IP packet; the flag says whether the capture cut it short, the offset where the
/// transport payload starts in `bytes` (0 when there is no transport header).
/// `version` is what the link layer announced (4 or 6); the header must agree.
pub(crate) fn parse(bytes: &[u8], version: u8) -> Result<(IpInfo, bool, usize), DissectError> {
    match (bytes.first().map(|b| b >> 4), version) {
        (Some(4), 4) => ipv4(bytes),
        (Some(6), 6) => ipv6(bytes),
        (Some(_), _) => Err(DissectError::IpVersion),
        (None, 4) => Err(DissectError::Ipv4Malformed),
        (None, _) => Err(DissectError::Ipv6Malformed),
    }
}

/// Where the transport payload starts: after the IP header (and extensions, `at`) and the
/// transport header; 0 when there is no transport header.
fn l4_at(l4: &L4, at: usize) -> usize {
    match l4 {
        L4::None => 0,
        _ => at + l4.header_len() as usize,
    }
}

fn ipv4(bytes: &[u8]) -> Result<(IpInfo, bool, usize), DissectError> {
    if bytes.len() < smoltcp::wire::IPV4_HEADER_LEN {
        return Err(DissectError::Ipv4Malformed);
    }
    // The full `new_checked` also demands the whole payload; a snap length may have cut it, so
    // check the header ourselves: every getter used below reads only the first 20 bytes.
    let pkt = Ipv4Packet::new_unchecked(bytes);
    let hl = usize::from(pkt.header_len());
    if hl < smoltcp::wire::IPV4_HEADER_LEN || hl > bytes.len() {
        return Err(DissectError::Ipv4Malformed);
    }
    let mut total = usize::from(pkt.total_len());
    if total == 0 && bytes.len() > hl {
        // Segmentation offload: the sending host's capture shows length 0. Take what was captured.
        total = bytes.len();
    }
    if total < hl {
        return Err(DissectError::Ipv4Malformed);
    }
    let cut = bytes.len() < total;
    let payload = &bytes[hl..total.min(bytes.len())];
    let offset = pkt.frag_offset();
    let mut frag = (pkt.more_frags() || offset != 0).then(|| Frag {
        id: u32::from(pkt.ident()),
        offset: u32::from(offset),
        len: (total - hl) as u32,
        more: pkt.more_frags(),
        headers: 1,
        split_header: false,
        digest: digest(payload),
    });
    let protocol: u8 = pkt.next_header().into();
    let l4 = match &mut frag {
        Some(f) if f.offset != 0 => L4::None,
        Some(f) => first_fragment_l4(protocol, payload, total - hl, cut, f)?,
        None => transport::parse(protocol, payload, total - hl, cut)?,
    };
    Ok((
        IpInfo {
            src: IpAddr::V4(pkt.src_addr()),
            dst: IpAddr::V4(pkt.dst_addr()),
            ip_len: total as u32,
            ttl: pkt.hop_limit(),
            protocol,
            ipv4_options_len: (hl - smoltcp::wire::IPV4_HEADER_LEN) as u8,
            frag,
            ipv6_ext: Ipv6Ext::default(),
            l4,
        },
        cut,
        l4_at(&l4, hl),
    ))
}

fn ipv6(bytes: &[u8]) -> Result<(IpInfo, bool, usize), DissectError> {
    if bytes.len() < smoltcp::wire::IPV6_HEADER_LEN {
        return Err(DissectError::Ipv6Malformed);
    }
    let pkt = Ipv6Packet::new_unchecked(bytes);
    let hl = smoltcp::wire::IPV6_HEADER_LEN;
    let mut total = hl + usize::from(pkt.payload_len());
    if pkt.payload_len() == 0 && pkt.next_header() != IpProtocol::Ipv6NoNxt && bytes.len() > hl {
        // A jumbogram or segmentation offload: the header does not say; take what was captured.
        total = bytes.len();
    }
    let cut = bytes.len() < total;
    // Bytes after the fixed header that the datagram really holds (for lengths), and the part we
    // have (for parsing).
    let mut remaining = total - hl;
    let mut payload = &bytes[hl..total.min(bytes.len())];
    let mut nh: u8 = pkt.next_header().into();
    let mut ext = Ipv6Ext::default();
    let mut frag: Option<Frag> = None;
    // Inside a first fragment (offset 0) that the capture holds whole, a header that does not
    // fit goes on in the next fragment: the chain is split, not malformed.
    let split = |frag: &mut Option<Frag>| match frag {
        Some(f) if f.offset == 0 && !cut => {
            f.split_header = true;
            true
        }
        _ => false,
    };

    loop {
        let (len, next) = match IpProtocol::from(nh) {
            IpProtocol::HopByHop | IpProtocol::Ipv6Opts | IpProtocol::Ipv6Route => {
                let h = match Ipv6ExtHeader::new_checked(payload) {
                    Ok(h) => h,
                    Err(_) if split(&mut frag) => break,
                    Err(_) => return Err(DissectError::Ipv6Malformed),
                };
                match IpProtocol::from(nh) {
                    IpProtocol::HopByHop => {
                        ext.hop_by_hop = true;
                        ext.covert_options |= covert_options(h.payload());
                    }
                    IpProtocol::Ipv6Opts => {
                        ext.destination_options = true;
                        ext.covert_options |= covert_options(h.payload());
                    }
                    _ => {
                        ext.routing_type = Some(
                            Ipv6RoutingHeader::new_checked(h.payload())
                                .map(|r| r.routing_type().into())
                                .unwrap_or_else(|_| h.payload().first().copied().unwrap_or(0)),
                        )
                    }
                }
                let len = 8 + 8 * usize::from(h.header_len());
                let next: u8 = h.next_header().into();
                (len, next)
            }
            IpProtocol::Ipv6Frag => {
                // Always 8 bytes; its length byte is reserved, so do not read a length from it.
                if payload.len() < 8 {
                    if split(&mut frag) {
                        break;
                    }
                    return Err(DissectError::Ipv6Malformed);
                }
                let f = Ipv6FragmentHeader::new_checked(&payload[2..8])
                    .map_err(|_| DissectError::Ipv6Malformed)?;
                ext.fragment = true;
                match &mut frag {
                    // A second fragment header: the first says where this packet goes.
                    Some(first) => first.headers = first.headers.saturating_add(1),
                    None => {
                        frag = Some(Frag {
                            id: f.ident(),
                            offset: u32::from(f.frag_offset()) * 8,
                            len: remaining.saturating_sub(8) as u32,
                            more: f.more_frags(),
                            headers: 1,
                            split_header: false,
                            digest: digest(&payload[8..]),
                        })
                    }
                }
                (8, payload[0])
            }
            _ if nh == IPPROTO_AH => {
                if payload.len() < 2 {
                    if split(&mut frag) {
                        break;
                    }
                    return Err(DissectError::Ipv6Malformed);
                }
                ((usize::from(payload[1]) + 2) * 4, payload[0])
            }
            _ => break,
        };
        if payload.len() < len {
            if split(&mut frag) {
                break;
            }
            return Err(DissectError::Ipv6Malformed);
        }
        if ext.count >= MAX_IPV6_EXT {
            // A chain no stack sends: leave the rest unread, and say so.
            ext.overflow = true;
            break;
        }
        ext.count += 1;
        payload = &payload[len..];
        remaining = remaining.saturating_sub(len);
        nh = next;
        if frag.is_some_and(|f| f.offset != 0) {
            break;
        }
    }

    let l4 = match &mut frag {
        _ if ext.overflow => L4::None,
        Some(f) if f.offset != 0 || f.split_header => L4::None,
        Some(f) => first_fragment_l4(nh, payload, remaining, cut, f)?,
        None => transport::parse(nh, payload, remaining, cut)?,
    };
    Ok((
        IpInfo {
            src: IpAddr::V6(pkt.src_addr()),
            dst: IpAddr::V6(pkt.dst_addr()),
            ip_len: total as u32,
            ttl: pkt.hop_limit(),
            protocol: nh,
            ipv4_options_len: 0,
            frag,
            ipv6_ext: ext,
            l4,
        },
        cut,
        // `payload` is a slice of `bytes`: its start is how far the extensions went.
        l4_at(&l4, payload.as_ptr() as usize - bytes.as_ptr() as usize),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_ipv4_header_len_impossible() {
        let mut p = [0u8; 40];
        p[0] = 0x44; // IHL 4 words: below the minimum
        p[2..4].copy_from_slice(&40u16.to_be_bytes());
        assert_eq!(parse(&p, 4).err(), Some(DissectError::Ipv4Malformed));
        p[0] = 0x4f; // 60 bytes of header in a 40-byte buffer
        assert_eq!(parse(&p, 4).err(), Some(DissectError::Ipv4Malformed));
    }

    #[test]
    fn test_ipv4_later_fragment_has_no_l4() {
        let mut p = [0u8; 28];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&28u16.to_be_bytes());
        p[6..8].copy_from_slice(&(185u16).to_be_bytes()); // offset 185*8, no MF
        p[9] = 6;
        let (ip, cut, _) = parse(&p, 4).unwrap();
        assert!(!cut);
        assert!(ip.fragment() && ip.fragment_tail());
        assert_eq!(ip.l4, L4::None);
    }

    #[test]
    fn test_ipv4_options_length() {
        let mut p = [0u8; 32];
        p[0] = 0x46; // 24-byte header: 4 bytes of options
        p[2..4].copy_from_slice(&32u16.to_be_bytes());
        p[9] = 17;
        p[24..26].copy_from_slice(&7u16.to_be_bytes());
        p[26..28].copy_from_slice(&9u16.to_be_bytes());
        p[28..30].copy_from_slice(&8u16.to_be_bytes());
        let (ip, _, _) = parse(&p, 4).unwrap();
        assert_eq!(ip.ipv4_options_len, 4);
        assert_eq!(ip.l4.ports(), (7, 9));
    }

    #[test]
    fn test_ipv6_extension_loop_is_bounded() {
        // Nine destination-options headers, each pointing to the next.
        let mut p = [0u8; 40 + 9 * 8];
        p[0] = 0x60;
        p[4..6].copy_from_slice(&(9u16 * 8).to_be_bytes());
        p[6] = 60;
        for i in 0..9 {
            p[40 + i * 8] = 60;
        }
        // Walked to the bound and no further: the packet is read, its chain said to overflow.
        let (ip, _, at) = parse(&p, 6).unwrap();
        assert!(ip.ipv6_ext.overflow);
        assert_eq!(ip.ipv6_ext.count, crate::wire::MAX_IPV6_EXT);
        assert_eq!((ip.l4, at), (L4::None, 0));
    }

    /// IPv6 2001:db8::2 -> ::1 with one fragment header (`offset` bytes, `more`) carrying
    /// `data`, next header `nh`.
    fn ipv6_fragment(nh: u8, offset: u16, more: bool, data: &[u8]) -> ([u8; 128], usize) {
        let mut p = [0u8; 128];
        let n = 48 + data.len();
        p[0] = 0x60;
        p[4..6].copy_from_slice(&((8 + data.len()) as u16).to_be_bytes());
        p[6] = 44;
        p[23] = 2;
        p[39] = 1;
        p[40] = nh;
        p[42..44].copy_from_slice(&(offset | u16::from(more)).to_be_bytes());
        p[44..48].copy_from_slice(&0xface_u32.to_be_bytes());
        p[48..n].copy_from_slice(data);
        (p, n)
    }

    #[test]
    fn test_ipv6_fragment_fields() {
        let (p, n) = ipv6_fragment(17, 1232, true, &[0xab; 16]);
        let (ip, _, _) = parse(&p[..n], 6).unwrap();
        let f = ip.frag.unwrap();
        assert_eq!((f.id, f.offset, f.len, f.more, f.headers), (0xface, 1232, 16, true, 1));
        assert!(ip.fragment_tail() && !f.split_header);
        let (q, _) = ipv6_fragment(17, 1232, true, &[0xac; 16]);
        assert_ne!(parse(&q[..n], 6).unwrap().0.frag.unwrap().digest, f.digest);
    }

    #[test]
    fn test_a_first_fragment_without_its_whole_tcp_header_is_split_not_malformed() {
        let (p, n) = ipv6_fragment(6, 0, true, &[0; 8]);
        let (ip, _, _) = parse(&p[..n], 6).unwrap();
        assert_eq!(ip.l4, L4::None);
        assert!(ip.frag.unwrap().split_header);
        // Cut by the capture instead: the header may be whole on the wire, so it is an error.
        let (mut q, _) = ipv6_fragment(6, 0, true, &[0; 8]);
        q[4..6].copy_from_slice(&(8u16 + 40).to_be_bytes());
        assert_eq!(parse(&q[..n], 6).err(), Some(DissectError::TcpMalformed));
        // A UDP header all here, and wrong (length 0): malformed, not split.
        let (z, n) = ipv6_fragment(17, 0, true, &[0; 16]);
        assert_eq!(parse(&z[..n], 6).err(), Some(DissectError::UdpMalformed));
    }

    #[test]
    fn test_nested_fragment_headers_are_counted() {
        // A fragment header whose data begins with another (fragmentation6's nesting).
        let inner = [58, 0, 0, 0, 0, 0, 0xbe, 0xef, 128, 0, 0, 0, 0, 1, 0, 1];
        let (p, n) = ipv6_fragment(44, 0, false, &inner);
        let (ip, _, _) = parse(&p[..n], 6).unwrap();
        assert_eq!(ip.frag.unwrap().headers, 2);
        assert!(matches!(ip.l4, L4::Icmpv6 { icmp_type: 128, .. }));
    }

    /// IPv6 ::2 -> ::1, one destination-options header holding `opts` (a multiple of 8 less
    /// 2 bytes), then an empty UDP datagram from port 1 to 2.
    fn with_destination_options(opts: &[u8]) -> IpInfo {
        let mut p = [0u8; 40 + 64 + 8];
        let ext = 2 + opts.len();
        assert_eq!(ext % 8, 0);
        p[0] = 0x60;
        p[4..6].copy_from_slice(&((ext + 8) as u16).to_be_bytes());
        p[6] = 60;
        p[23] = 2;
        p[39] = 1;
        p[40] = 17;
        p[41] = (ext / 8 - 1) as u8;
        p[42..40 + ext].copy_from_slice(opts);
        let u = 40 + ext;
        p[u..u + 2].copy_from_slice(&1u16.to_be_bytes());
        p[u + 2..u + 4].copy_from_slice(&2u16.to_be_bytes());
        p[u + 4..u + 6].copy_from_slice(&8u16.to_be_bytes());
        parse(&p[..u + 8], 6).unwrap().0
    }

    #[test]
    fn test_covert_destination_options() {
        let covert = |opts: &[u8]| with_destination_options(opts).ipv6_ext.covert_options;
        // What stacks send: a tunnel encapsulation limit and PadN of zeros; Pad1s; a home
        // address (2 + 16) with padding before it.
        assert!(!covert(&[0x04, 1, 4, 1, 1, 0]));
        assert!(!covert(&[0; 6]));
        let mut home = [0u8; 22];
        home[..4].copy_from_slice(&[1, 2, 0, 0]);
        home[4] = 0xc9;
        home[5] = 16;
        assert!(!covert(&home));
        // covert_send6's: data in options no registry names, and in padding.
        assert!(covert(&[0x10, 4, b'd', b'a', b't', b'a']));
        assert!(covert(&[0x01, 4, 0, b'x', 0, 0]));
        // Padding past what alignment needs; an option that runs past the header.
        assert!(covert(&[0x01, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]));
        assert!(covert(&[0x04, 1, 4, 0x05, 9, 0]));
        assert_eq!(with_destination_options(&[0x10, 4, 0, 0, 0, 0]).l4.ports(), (1, 2));
    }

    #[test]
    fn test_ipv6_routing_type0() {
        let mut p = [0u8; 40 + 24 + 8];
        p[0] = 0x60;
        p[4..6].copy_from_slice(&32u16.to_be_bytes());
        p[6] = 43; // routing
        p[40] = 17; // next: UDP
        p[41] = 2; // 24 bytes
        p[42] = 0; // type 0
        p[43] = 1; // segments left
        p[64..66].copy_from_slice(&1u16.to_be_bytes());
        p[66..68].copy_from_slice(&2u16.to_be_bytes());
        p[68..70].copy_from_slice(&8u16.to_be_bytes());
        let (ip, _, _) = parse(&p, 6).unwrap();
        assert_eq!(ip.ipv6_ext.routing_type, Some(0));
        assert_eq!(ip.l4.ports(), (1, 2));
    }
}
