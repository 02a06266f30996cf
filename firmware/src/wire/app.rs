//! The first bytes of DNS and DHCP: the header fields that detectors of tunnelling and starvation
//! need, through smoltcp's `DnsPacket` and `DhcpPacket`. A payload that is not what its port says
//! is not an error: the packet is still a UDP packet, it just has no DNS or DHCP facts.

use smoltcp::wire::{DhcpPacket, DnsFlags, DnsPacket, DnsQuestion};

/// DNS header facts and the shape of the first question's name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DnsInfo {
    pub id: u16,
    pub response: bool,
    pub opcode: u8,
    pub rcode: u8,
    pub questions: u16,
    pub answers: u16,
    /// Query type of the first question (16 = TXT, 10 = NULL are tunnellers' favourites).
    pub qtype: u16,
    /// Length of the first question's name in presentation form (labels and dots).
    pub qname_len: u16,
    pub labels: u8,
    pub longest_label: u8,
    /// Shannon entropy of the name's characters, in millibits per character.
    pub entropy_millibits: u16,
    /// Hashes (FNV-1a, case folded) of the whole name and of its registered domain: the last two
    /// labels, three under a two-letter country code with a short second level (`co.uk`), or the
    /// first label when the last is no top-level domain at all (`dnscat.<hex>`).
    pub name_hash: u32,
    pub domain_hash: u32,
    /// A reverse lookup (`in-addr.arpa`, `ip6.arpa`).
    pub reverse: bool,
}

/// Whether a label could be a top-level domain: letters only, 2 to 24 of them, or an IDN.
fn tld_like(label: &[u8]) -> bool {
    (2..=24).contains(&label.len()) && label.iter().all(u8::is_ascii_alphabetic)
        || label.len() > 4 && label[..4].eq_ignore_ascii_case(b"xn--")
}

/// FNV-1a over labels joined by dots, case folded.
fn hash_labels(labels: &[&[u8]]) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for (i, l) in labels.iter().enumerate() {
        if i > 0 {
            h = (h ^ u32::from(b'.')).wrapping_mul(0x0100_0193);
        }
        for &c in *l {
            h = (h ^ u32::from(c.to_ascii_lowercase())).wrapping_mul(0x0100_0193);
        }
    }
    h
}

/// The registered domain's labels (see [`DnsInfo::domain_hash`]).
fn registered<'a, 'b>(labels: &'b [&'a [u8]]) -> &'b [&'a [u8]] {
    let n = labels.len();
    match labels {
        [] | [_] => labels,
        [.., second, tld] if tld_like(tld) => {
            let three = tld.len() == 2 && second.len() <= 3 && n >= 3;
            &labels[n - if three { 3 } else { 2 }..]
        }
        _ => &labels[..1],
    }
}

/// DHCP facts for starvation and rogue-server detection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DhcpInfo {
    /// 1 BOOTREQUEST, 2 BOOTREPLY.
    pub op: u8,
    /// Option 53: 1 DISCOVER, 2 OFFER, 3 REQUEST, 5 ACK, ...
    pub message_type: Option<u8>,
    pub client_mac: [u8; 6],
}

pub(crate) fn dns(bytes: &[u8]) -> Option<DnsInfo> {
    let p = DnsPacket::new_checked(bytes).ok()?;
    let mut info = DnsInfo {
        id: p.transaction_id(),
        response: p.flags().contains(DnsFlags::RESPONSE),
        opcode: p.opcode().into(),
        rcode: p.rcode().into(),
        questions: p.question_count(),
        answers: p.answer_record_count(),
        qtype: 0,
        qname_len: 0,
        labels: 0,
        longest_label: 0,
        entropy_millibits: 0,
        name_hash: 0,
        domain_hash: 0,
        reverse: false,
    };
    if info.questions == 0 {
        return Some(info);
    }
    let name = match DnsQuestion::parse(p.payload()) {
        Ok((_, q)) => {
            info.qtype = q.type_.into();
            q.name
        }
        Err(_) => p.payload(),
    };
    let mut counts = [0u16; 256];
    let mut total = 0u32;
    // The labels, kept to walk them again for the entropy without a 256-entry pass.
    let mut labels: heapless::Vec<&[u8], 128> = heapless::Vec::new();
    for label in p.parse_name(name) {
        let Ok(label) = label else { break };
        info.labels = info.labels.saturating_add(1);
        info.longest_label = info.longest_label.max(label.len().min(255) as u8);
        for &c in label {
            counts[usize::from(c.to_ascii_lowercase())] += 1;
        }
        total += label.len() as u32;
        if labels.push(label).is_err() || total > 1024 {
            break; // Names are at most 255 bytes; pointers cannot loop, but stay bounded anyway.
        }
    }
    info.name_hash = hash_labels(&labels);
    info.domain_hash = hash_labels(registered(&labels));
    info.reverse = labels.last().is_some_and(|l| l.eq_ignore_ascii_case(b"arpa"));
    info.qname_len =
        (total + u32::from(info.labels.saturating_sub(1))).min(u32::from(u16::MAX)) as u16;
    if total > 0 {
        let n = total as f32;
        let mut h = 0f32;
        for label in &labels {
            for &c in *label {
                let slot = &mut counts[usize::from(c.to_ascii_lowercase())];
                if *slot > 0 {
                    let p = f32::from(*slot) / n;
                    h -= p * libm::log2f(p);
                    *slot = 0; // each distinct character once
                }
            }
        }
        info.entropy_millibits = (h * 1000.0) as u16;
    }
    Some(info)
}

pub(crate) fn dhcp(bytes: &[u8]) -> Option<DhcpInfo> {
    let p = DhcpPacket::new_checked(bytes).ok()?;
    if p.magic_number() != 0x6382_5363 {
        return None;
    }
    let message_type = p.options().find(|o| o.kind == 53).and_then(|o| o.data.first().copied());
    Some(DhcpInfo {
        op: u8::from(p.opcode()),
        message_type,
        client_mac: p.client_hardware_address().0,
    })
}

#[cfg(test)]
mod tests {
    use super::super::testdata::{DHCP_DISCOVER, DNS_TXT_QUERY};
    use super::*;

    #[test]
    fn test_parse_dns_query() {
        let d = dns(&DNS_TXT_QUERY).unwrap();
        assert_eq!(d.id, 0xbeef);
        assert!(!d.response);
        assert_eq!(d.questions, 1);
        assert_eq!(d.qtype, 16);
        // "aGVsbG8.t.example.com": labels 7+1+7+3, 3 dots
        assert_eq!(d.labels, 4);
        assert_eq!(d.qname_len, 21);
        assert_eq!(d.longest_label, 7);
        assert!(d.entropy_millibits > 2500, "{}", d.entropy_millibits);
    }

    #[test]
    fn test_registered_domain() {
        let l = |s: &'static str| -> heapless::Vec<&'static [u8], 8> {
            s.split('.').map(str::as_bytes).collect()
        };
        let r = |s| hash_labels(registered(&l(s)));
        assert_eq!(r("a.b.example.com"), hash_labels(&l("example.com")));
        assert_eq!(r("x.y.bbc.co.uk"), hash_labels(&l("bbc.co.uk")));
        assert_eq!(r("dnscat.00e301f5.96de9dfc"), hash_labels(&l("dnscat")));
        assert_eq!(r("A.Pirate.SEA"), r("b.pirate.sea"));
        assert_eq!(r("localhost"), hash_labels(&l("localhost")));
    }

    #[test]
    fn test_dns_short_is_none() {
        assert_eq!(dns(&DNS_TXT_QUERY[..11]), None);
        // Header only, question cut: header facts, no name.
        let d = dns(&DNS_TXT_QUERY[..14]).unwrap();
        assert_eq!(d.questions, 1);
        assert_eq!(d.qtype, 0);
    }

    #[test]
    fn test_parse_dhcp_discover() {
        let d = dhcp(&DHCP_DISCOVER).unwrap();
        assert_eq!(d.op, 1);
        assert_eq!(d.message_type, Some(1));
        assert_eq!(d.client_mac, [0x02, 0xde, 0xad, 0, 0, 1]);
        assert_eq!(dhcp(&DHCP_DISCOVER[..200]), None);
    }
}
