//! IPv4 (options, fragments) and IPv6 (hop-by-hop, routing, fragment, destination-options and
//! authentication headers) through smoltcp's views.

use super::{transport, DissectError, IpInfo, Ipv6Ext, L4};
use core::net::IpAddr;
use smoltcp::wire::{
    IpProtocol, Ipv4Packet, Ipv6ExtHeader, Ipv6FragmentHeader, Ipv6Packet, Ipv6RoutingHeader,
};

/// Extension headers walked before we call a chain hostile and stop.
const MAX_IPV6_EXT: u8 = 8;
const IPPROTO_AH: u8 = 51;

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
    let fragment = pkt.more_frags() || offset != 0;
    let fragment_tail = offset != 0;
    let protocol: u8 = pkt.next_header().into();
    let l4 = if fragment_tail {
        L4::None
    } else {
        transport::parse(protocol, payload, total - hl, fragment || cut)?
    };
    Ok((
        IpInfo {
            src: IpAddr::V4(pkt.src_addr()),
            dst: IpAddr::V4(pkt.dst_addr()),
            ip_len: total as u32,
            ttl: pkt.hop_limit(),
            protocol,
            ipv4_options_len: (hl - smoltcp::wire::IPV4_HEADER_LEN) as u8,
            fragment,
            fragment_tail,
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
    let mut fragment_tail = false;

    loop {
        let (len, next) = match IpProtocol::from(nh) {
            IpProtocol::HopByHop | IpProtocol::Ipv6Opts | IpProtocol::Ipv6Route => {
                let h =
                    Ipv6ExtHeader::new_checked(payload).map_err(|_| DissectError::Ipv6Malformed)?;
                match IpProtocol::from(nh) {
                    IpProtocol::HopByHop => ext.hop_by_hop = true,
                    IpProtocol::Ipv6Opts => ext.destination_options = true,
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
                    return Err(DissectError::Ipv6Malformed);
                }
                let f = Ipv6FragmentHeader::new_checked(&payload[2..8])
                    .map_err(|_| DissectError::Ipv6Malformed)?;
                ext.fragment = true;
                fragment_tail = f.frag_offset() != 0;
                (8, payload[0])
            }
            _ if nh == IPPROTO_AH => {
                if payload.len() < 2 {
                    return Err(DissectError::Ipv6Malformed);
                }
                ((usize::from(payload[1]) + 2) * 4, payload[0])
            }
            _ => break,
        };
        if payload.len() < len || ext.count >= MAX_IPV6_EXT {
            return Err(DissectError::Ipv6Malformed);
        }
        ext.count += 1;
        payload = &payload[len..];
        remaining = remaining.saturating_sub(len);
        nh = next;
        if fragment_tail {
            break;
        }
    }

    let l4 = if fragment_tail {
        L4::None
    } else {
        transport::parse(nh, payload, remaining, ext.fragment || cut)?
    };
    Ok((
        IpInfo {
            src: IpAddr::V6(pkt.src_addr()),
            dst: IpAddr::V6(pkt.dst_addr()),
            ip_len: total as u32,
            ttl: pkt.hop_limit(),
            protocol: nh,
            ipv4_options_len: 0,
            fragment: ext.fragment,
            fragment_tail,
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
        assert!(ip.fragment && ip.fragment_tail);
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
        assert_eq!(parse(&p, 6).err(), Some(DissectError::Ipv6Malformed));
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
