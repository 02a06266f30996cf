//! Link layers: Ethernet II with 802.1Q/QinQ tags, Linux cooked capture (SLL, SLL2), raw IP and the
//! BSD loopback header. Ethernet goes through smoltcp's `EthernetFrame`; smoltcp has no VLAN, SLL
//! or loopback types, so those short fixed headers are read here, each after an explicit length
//! check.

use super::{ArpInfo, DissectError};
use core::net::Ipv4Addr;
use smoltcp::wire::{ArpHardware, ArpOperation, ArpPacket, EthernetFrame};

pub(crate) const ETHERTYPE_IPV4: u16 = 0x0800;
pub(crate) const ETHERTYPE_ARP: u16 = 0x0806;
pub(crate) const ETHERTYPE_IPV6: u16 = 0x86dd;
const ETHERTYPE_VLAN: u16 = 0x8100;
const ETHERTYPE_QINQ: u16 = 0x88a8;
const ETHERTYPE_QINQ_OLD: u16 = 0x9100;
const ETHERTYPE_PPPOE_SESSION: u16 = 0x8864;
const PPP_IPV4: u16 = 0x0021;
const PPP_IPV6: u16 = 0x0057;
/// More tags than this and we stop: no real network stacks deeper.
const MAX_VLAN_TAGS: u8 = 4;

/// The link types Tapwatch reads, by their libpcap `DLT_`/`LINKTYPE_` numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case"))]
pub enum LinkType {
    /// DLT_EN10MB.
    Ethernet,
    /// DLT_RAW / LINKTYPE_RAW / LINKTYPE_IPV4 / LINKTYPE_IPV6: the frame is an IP packet.
    Raw,
    /// DLT_LINUX_SLL: Linux cooked capture v1 ("any" interface).
    LinuxSll,
    /// DLT_LINUX_SLL2: Linux cooked capture v2.
    LinuxSll2,
    /// DLT_NULL (host byte order) and DLT_LOOP (network byte order) BSD loopback.
    Null,
}

impl LinkType {
    /// Map a libpcap data-link number; `None` for a link type we do not read.
    pub const fn from_dlt(dlt: i32) -> Option<LinkType> {
        match dlt {
            1 => Some(LinkType::Ethernet),
            12 | 14 | 101 | 228 | 229 => Some(LinkType::Raw),
            113 => Some(LinkType::LinuxSll),
            276 => Some(LinkType::LinuxSll2),
            0 | 108 => Some(LinkType::Null),
            _ => None,
        }
    }
}

/// What the link layer says about a frame.
pub(crate) struct Frame<'a> {
    pub ethertype: u16,
    pub vlan: u16,
    pub vlan_depth: u8,
    pub src_mac: Option<[u8; 6]>,
    pub payload: &'a [u8],
}

pub(crate) fn parse(link: LinkType, bytes: &[u8]) -> Result<Frame<'_>, DissectError> {
    match link {
        LinkType::Ethernet => ethernet(bytes),
        LinkType::Raw => raw(bytes),
        LinkType::LinuxSll => sll(bytes),
        LinkType::LinuxSll2 => sll2(bytes),
        LinkType::Null => null(bytes),
    }
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn mac(b: &[u8]) -> [u8; 6] {
    let mut m = [0u8; 6];
    m.copy_from_slice(&b[..6]);
    m
}

fn ethernet(bytes: &[u8]) -> Result<Frame<'_>, DissectError> {
    let eth = EthernetFrame::new_checked(bytes).map_err(|_| DissectError::LinkTruncated)?;
    let mut ethertype: u16 = eth.ethertype().into();
    let mut payload = &bytes[smoltcp::wire::ETHERNET_HEADER_LEN..];
    let mut vlan = 0;
    let mut depth = 0;
    while matches!(ethertype, ETHERTYPE_VLAN | ETHERTYPE_QINQ | ETHERTYPE_QINQ_OLD)
        && depth < MAX_VLAN_TAGS
    {
        if payload.len() < 4 {
            return Err(DissectError::LinkTruncated);
        }
        if depth == 0 {
            vlan = be16(payload, 0) & 0x0fff;
        }
        ethertype = be16(payload, 2);
        payload = &payload[4..];
        depth += 1;
    }
    if ethertype == ETHERTYPE_PPPOE_SESSION {
        // PPPoE session (ISP access links): version/type, code, session id, length, then the PPP
        // protocol. IP inside is tracked like any IP; other PPP protocols stay "other".
        if payload.len() < 8 {
            return Err(DissectError::LinkTruncated);
        }
        match be16(payload, 6) {
            PPP_IPV4 => ethertype = ETHERTYPE_IPV4,
            PPP_IPV6 => ethertype = ETHERTYPE_IPV6,
            _ => {}
        }
        if ethertype != ETHERTYPE_PPPOE_SESSION {
            payload = &payload[8..];
        }
    }
    Ok(Frame { ethertype, vlan, vlan_depth: depth, src_mac: Some(eth.src_addr().0), payload })
}

fn raw(bytes: &[u8]) -> Result<Frame<'_>, DissectError> {
    let first = *bytes.first().ok_or(DissectError::LinkTruncated)?;
    let ethertype = match first >> 4 {
        4 => ETHERTYPE_IPV4,
        6 => ETHERTYPE_IPV6,
        _ => return Err(DissectError::IpVersion),
    };
    Ok(Frame { ethertype, vlan: 0, vlan_depth: 0, src_mac: None, payload: bytes })
}

/// Linux cooked v1: packet type (2), ARPHRD (2), address length (2), address (8), protocol (2).
fn sll(bytes: &[u8]) -> Result<Frame<'_>, DissectError> {
    const LEN: usize = 16;
    if bytes.len() < LEN {
        return Err(DissectError::LinkTruncated);
    }
    let src_mac = (be16(bytes, 4) == 6).then(|| mac(&bytes[6..]));
    Ok(Frame {
        ethertype: be16(bytes, 14),
        vlan: 0,
        vlan_depth: 0,
        src_mac,
        payload: &bytes[LEN..],
    })
}

/// Linux cooked v2: protocol (2), reserved (2), ifindex (4), ARPHRD (2), packet type (1),
/// address length (1), address (8).
fn sll2(bytes: &[u8]) -> Result<Frame<'_>, DissectError> {
    const LEN: usize = 20;
    if bytes.len() < LEN {
        return Err(DissectError::LinkTruncated);
    }
    let src_mac = (bytes[11] == 6).then(|| mac(&bytes[12..]));
    Ok(Frame { ethertype: be16(bytes, 0), vlan: 0, vlan_depth: 0, src_mac, payload: &bytes[LEN..] })
}

/// BSD loopback: a 4-byte address family, in the capturing host's byte order (DLT_NULL) or in
/// network order (DLT_LOOP). Both orders are tried: AF_INET is 2 everywhere, AF_INET6 is 10, 24,
/// 28 or 30 depending on the system.
fn null(bytes: &[u8]) -> Result<Frame<'_>, DissectError> {
    if bytes.len() < 4 {
        return Err(DissectError::LinkTruncated);
    }
    let le = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    let be = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    let family = if le < 256 { le } else { be };
    let ethertype = match family {
        2 => ETHERTYPE_IPV4,
        10 | 24 | 28 | 30 => ETHERTYPE_IPV6,
        other => other as u16,
    };
    Ok(Frame { ethertype, vlan: 0, vlan_depth: 0, src_mac: None, payload: &bytes[4..] })
}

pub(crate) fn parse_arp(bytes: &[u8]) -> Result<ArpInfo, DissectError> {
    let arp = ArpPacket::new_checked(bytes).map_err(|_| DissectError::ArpMalformed)?;
    if arp.hardware_type() != ArpHardware::Ethernet
        || arp.hardware_len() != 6
        || arp.protocol_len() != 4
        || u16::from(arp.protocol_type()) != ETHERTYPE_IPV4
    {
        return Err(DissectError::ArpMalformed);
    }
    let ip = |b: &[u8]| Ipv4Addr::new(b[0], b[1], b[2], b[3]);
    Ok(ArpInfo {
        operation: match arp.operation() {
            ArpOperation::Request => 1,
            ArpOperation::Reply => 2,
            ArpOperation::Unknown(op) => op,
        },
        sender_mac: mac(arp.source_hardware_addr()),
        sender_ip: ip(arp.source_protocol_addr()),
        target_mac: mac(arp.target_hardware_addr()),
        target_ip: ip(arp.target_protocol_addr()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_from_dlt() {
        assert_eq!(LinkType::from_dlt(1), Some(LinkType::Ethernet));
        assert_eq!(LinkType::from_dlt(101), Some(LinkType::Raw));
        assert_eq!(LinkType::from_dlt(276), Some(LinkType::LinuxSll2));
        assert_eq!(LinkType::from_dlt(127), None); // radiotap
    }

    #[test]
    fn test_null_both_byte_orders() {
        let le = [2u8, 0, 0, 0, 0x45];
        let be = [0u8, 0, 0, 30, 0x60];
        assert_eq!(null(&le).map(|f| f.ethertype).ok(), Some(ETHERTYPE_IPV4));
        assert_eq!(null(&be).map(|f| f.ethertype).ok(), Some(ETHERTYPE_IPV6));
        assert!(null(&[2, 0]).is_err());
    }

    #[test]
    fn test_vlan_tag_cut() {
        let mut f = [0u8; 16];
        f[12..14].copy_from_slice(&ETHERTYPE_VLAN.to_be_bytes());
        assert!(matches!(ethernet(&f), Err(DissectError::LinkTruncated)));
    }

    #[test]
    fn test_pppoe_session_over_qinq() {
        let mut f = [0u8; 14 + 8 + 8 + 20];
        f[12..14].copy_from_slice(&ETHERTYPE_VLAN.to_be_bytes());
        f[14..16].copy_from_slice(&421u16.to_be_bytes());
        f[16..18].copy_from_slice(&ETHERTYPE_VLAN.to_be_bytes());
        f[18..20].copy_from_slice(&785u16.to_be_bytes());
        f[20..22].copy_from_slice(&ETHERTYPE_PPPOE_SESSION.to_be_bytes());
        f[22] = 0x11; // version 1, type 1
        f[28..30].copy_from_slice(&PPP_IPV4.to_be_bytes());
        f[30] = 0x45;
        let frame = ethernet(&f).unwrap();
        assert_eq!((frame.ethertype, frame.vlan, frame.vlan_depth), (ETHERTYPE_IPV4, 421, 2));
        assert_eq!(frame.payload.first(), Some(&0x45));
        // LCP inside PPPoE is not IP.
        f[28..30].copy_from_slice(&0xc021u16.to_be_bytes());
        assert_eq!(ethernet(&f).unwrap().ethertype, ETHERTYPE_PPPOE_SESSION);
        assert!(matches!(ethernet(&f[..25]), Err(DissectError::LinkTruncated)));
    }

    #[test]
    fn test_arp_wrong_hardware() {
        let mut a = [0u8; 28];
        a[0..2].copy_from_slice(&6u16.to_be_bytes()); // IEEE 802
        a[2..4].copy_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
        a[4] = 6;
        a[5] = 4;
        assert_eq!(parse_arp(&a), Err(DissectError::ArpMalformed));
        assert_eq!(parse_arp(&a[..7]), Err(DissectError::ArpMalformed));
    }
}
