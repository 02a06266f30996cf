//! DNS: per source and registered domain, the distinct subdomains that carry data, and the
//! queries of the types tunnels use to bring data back (TXT, NULL).
//!
//! A tunnel (iodine, dnscat2, dns2tcp over UDP, the TXT command channels of malware) sends what
//! it carries as the names it asks for, under one domain it controls, each name new; or polls
//! that domain's TXT records for commands. A resolver's normal clients ask for a few names per
//! domain, short ones, again and again. A name "carries data" when a label is 20 characters or
//! more, or the whole name 52 or more (hostnames that long are rare; encodings fill labels to 63).
//! Reverse lookups are left out. Answers to a tracked pair add their bytes. NULL queries are
//! counted apart: the type is experimental (RFC 1035 keeps it out of zone files), no
//! application asks for it, and iodine, the tunnel that uses it, probes with a dozen of them
//! to distinct names in its first milliseconds.

use crate::hosts::{Sketch, WindowTable, Windows};
use crate::wire::{DnsInfo, IpInfo};
use crate::{Duration, Instant};
use core::net::IpAddr;

/// TXT and NULL queries count as a channel only over this many distinct names.
pub const TXT_NAMES: f32 = 5.0;

/// A label this long, or a name this long, carries data.
pub const ENCODED_LABEL: u8 = 20;
pub const ENCODED_NAME: u16 = 52;

const TXT: u16 = 16;
const NULL: u16 = 10;

#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct DomainWindow {
    pub start: Option<Instant>,
    pub queries: u32,
    /// Distinct names that carry data, and the queries for them.
    pub encoded_names: Sketch,
    pub encoded: u32,
    /// TXT and NULL queries, and the distinct names they asked for (an amplification asks one
    /// big answer again and again with its victim's address; a command channel asks many).
    pub txt: u32,
    pub txt_names: Sketch,
    /// Distinct names asked for with type NULL.
    pub null_names: Sketch,
    /// Bytes of the answers it got (DNS payload).
    pub answer_bytes: u32,
    /// Bytes of the names it asked for.
    pub name_bytes: u32,
}

crate::hosts::tumbling!(DomainWindow);

/// A (source, domain) pair's facts over the sliding window.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct DomainFeatures {
    pub queries: f32,
    pub encoded_names: f32,
    pub txt: f32,
    pub txt_names: f32,
    pub null_names: f32,
    pub answer_bytes: f32,
    pub name_bytes: f32,
}

impl Windows<DomainWindow> {
    pub fn features(&self, now: Instant, window: Duration) -> DomainFeatures {
        let (w, _) = self.slide(now, window);
        let (c, p) = (&self.cur, &self.prev);
        let s = |a: u32, b: u32| a as f32 + b as f32 * w;
        DomainFeatures {
            queries: s(c.queries, p.queries),
            encoded_names: c.encoded_names.union(&p.encoded_names).estimate(),
            txt: s(c.txt, p.txt),
            txt_names: c.txt_names.union(&p.txt_names).estimate(),
            null_names: c.null_names.union(&p.null_names).estimate(),
            answer_bytes: s(c.answer_bytes, p.answer_bytes),
            name_bytes: s(c.name_bytes, p.name_bytes),
        }
    }
}

pub(crate) fn packet<const N: usize>(
    t: &mut WindowTable<DomainWindow, N, (IpAddr, u32)>,
    ip: &IpInfo,
    d: &DnsInfo,
    payload_len: u16,
    now: Instant,
) {
    if d.reverse || d.questions == 0 || d.qname_len == 0 {
        return;
    }
    if d.response {
        if let Some(w) = t.tracked_mut((ip.dst, d.domain_hash), now) {
            w.answer_bytes = w.answer_bytes.saturating_add(u32::from(payload_len));
        }
        return;
    }
    let encoded = d.longest_label >= ENCODED_LABEL || d.qname_len >= ENCODED_NAME;
    let txt = matches!(d.qtype, TXT | NULL);
    // Only what could be a tunnel takes a slot: a plain lookup of a short name does not.
    let w = if encoded || txt {
        t.window_mut((ip.src, d.domain_hash), now)
    } else {
        t.tracked_mut((ip.src, d.domain_hash), now)
    };
    if let Some(w) = w {
        w.queries += 1;
        w.name_bytes = w.name_bytes.saturating_add(u32::from(d.qname_len));
        if encoded {
            w.encoded += 1;
            w.encoded_names.insert(u64::from(d.name_hash));
        }
        if txt {
            w.txt += 1;
            w.txt_names.insert(u64::from(d.name_hash));
        }
        if d.qtype == NULL {
            w.null_names.insert(u64::from(d.name_hash));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{Ipv6Ext, L4};
    use crate::Duration;

    fn query(qtype: u16, name_hash: u32, qname_len: u16) -> DnsInfo {
        DnsInfo {
            id: 1,
            response: false,
            opcode: 0,
            rcode: 0,
            questions: 1,
            answers: 0,
            qtype,
            qname_len,
            labels: 4,
            longest_label: 6,
            entropy_millibits: 3000,
            name_hash,
            domain_hash: 77,
            reverse: false,
        }
    }

    #[test]
    fn test_null_queries_to_distinct_names_are_counted_apart() {
        let mut t =
            WindowTable::<DomainWindow, 16, (IpAddr, u32)>::with_window(Duration::from_secs(60));
        let ip = IpInfo {
            src: [10, 0, 0, 66].into(),
            dst: [10, 0, 0, 53].into(),
            ip_len: 80,
            ttl: 64,
            protocol: 17,
            ipv4_options_len: 0,
            frag: None,
            ipv6_ext: Ipv6Ext::default(),
            l4: L4::None,
        };
        let now = Instant::from_secs(5);
        // iodine's first milliseconds: short names of its own (yrbm5w.t.lab.test), type NULL.
        for i in 0..6 {
            packet(&mut t, &ip, &query(NULL, 1000 + i, 17), 40, now);
        }
        // An A lookup under the same domain is no NULL name.
        packet(&mut t, &ip, &query(1, 5, 17), 40, now);
        let f = t.get(&(ip.src, 77)).unwrap().features(now, Duration::from_secs(60));
        assert!((5.5..6.5).contains(&f.null_names), "{f:?}");
        assert_eq!(f.encoded_names, 0.0);
    }
}
