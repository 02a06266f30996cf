//! ARP: an IP-to-MAC binding table, as arpwatch keeps one.
//!
//! Every ARP packet's sender fields say "this address is at this MAC". A binding that moves to
//! another MAC while the old one is still in use is the mark of spoofing (or of a failover, which
//! is rare and worth a look); one MAC that claims several addresses is a host answering for
//! others, which is what a man in the middle does to the gateway. Both are counted against the
//! host behind the claiming MAC: the address it claimed first that nobody else holds, else the
//! last it claimed. Probes (sender 0.0.0.0) claim nothing.

use super::{Recent, SourceWindow, SOURCES};
use crate::hosts::WindowTable;
use crate::wire::{ArpInfo, PacketMeta};
use crate::{Duration, Instant};
use core::net::{IpAddr, Ipv4Addr};

/// Bindings kept (IPv4 address to MAC), least recently seen evicted first.
pub const BINDINGS: usize = 512;
/// A binding not seen again for this long is forgotten: a new MAC after it is a new host.
pub const BINDING_AGE: Duration = Duration::from_secs(600);

/// An address's binding: the MAC, and the MAC it had before (to tell a flip back).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Binding {
    pub mac: [u8; 6],
    pub changes: u16,
}

/// The binding table, by IPv4 address.
#[derive(Debug)]
pub struct Bindings {
    by_ip: Recent<IpAddr, Binding, BINDINGS>,
}

impl Default for Bindings {
    fn default() -> Self {
        Bindings { by_ip: Recent::new(BINDING_AGE) }
    }
}

impl Bindings {
    pub fn evicted(&self) -> u64 {
        self.by_ip.evicted()
    }
    pub fn expire(&mut self, now: Instant) {
        self.by_ip.expire(now);
    }
    pub fn clear(&mut self) {
        self.by_ip.clear();
    }
    /// The MAC an address is bound to.
    pub fn mac_of(&self, ip: Ipv4Addr) -> Option<[u8; 6]> {
        self.by_ip.get(&IpAddr::V4(ip)).map(|b| b.mac)
    }
    /// An address bound to `mac` other than `not`: the claiming host's own.
    fn own_address(&self, mac: [u8; 6], not: IpAddr) -> Option<IpAddr> {
        self.by_ip.iter().find(|(ip, b)| b.mac == mac && **ip != not).map(|(ip, _)| *ip)
    }
}

pub(crate) fn packet(
    table: &mut Bindings,
    sources: &mut WindowTable<SourceWindow, SOURCES>,
    meta: &PacketMeta,
    a: &ArpInfo,
    now: Instant,
) {
    if a.sender_ip.is_unspecified() || a.sender_mac == [0; 6] {
        return;
    }
    // A frame whose Ethernet source is not the MAC it claims is crafted (or proxied).
    let mac = a.sender_mac;
    let claimed = IpAddr::V4(a.sender_ip);
    let changed = match table.by_ip.get_mut(&claimed, now) {
        Some(b) if b.mac != mac => {
            b.mac = mac;
            b.changes = b.changes.saturating_add(1);
            true
        }
        Some(_) => false,
        None => {
            let _ = table.by_ip.entry(claimed, Binding { mac, changes: 0 }, now);
            false
        }
    };
    let forged = meta.src_mac.is_some_and(|m| m != mac);
    // Whom to count it against: the host behind the MAC. A claim in another /24 than its own
    // address is a host renumbered (DHCP moved it to another network), not one answering for
    // a neighbour.
    let host = table.own_address(mac, claimed).unwrap_or(claimed);
    let neighbour = match host {
        IpAddr::V4(h) => h.to_bits() >> 8 == a.sender_ip.to_bits() >> 8,
        IpAddr::V6(_) => false,
    };
    if let Some(w) = sources.window_mut(host, now) {
        if neighbour {
            w.arp_claims.insert(u64::from(a.sender_ip.to_bits()));
        }
        if changed || forged {
            w.arp_changes += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analyzers::{Analyzers, WINDOW};
    use crate::wire::L3;

    fn arp(op: u16, mac: u8, ip: [u8; 4], target: [u8; 4]) -> (PacketMeta, ArpInfo) {
        let a = ArpInfo {
            operation: op,
            sender_mac: [2, 0, 0, 0, 0, mac],
            sender_ip: ip.into(),
            target_mac: [0; 6],
            target_ip: target.into(),
        };
        let meta = PacketMeta {
            ts: Instant::from_secs(0),
            wire_len: 60,
            truncated: false,
            vlan: 0,
            vlan_depth: 0,
            src_mac: Some(a.sender_mac),
            payload_at: 0,
            l3: L3::Arp(a),
        };
        (meta, a)
    }

    #[test]
    fn test_a_mac_claiming_the_gateway_is_counted_against_its_own_address() {
        let mut an = Analyzers::new();
        let t = |s| Instant::from_secs(s);
        // The gateway .1 at MAC 1, the attacker .105 at MAC 5, then MAC 5 answers for .1.
        for (op, mac, ip, target, s) in [
            (1, 1, [10, 0, 0, 1], [10, 0, 0, 7], 1),
            (1, 5, [10, 0, 0, 105], [10, 0, 0, 7], 2),
            (2, 5, [10, 0, 0, 1], [10, 0, 0, 7], 3),
        ] {
            let (m, a) = arp(op, mac, ip, target);
            an.arp(&m, &a, t(s));
        }
        let attacker: IpAddr = [10, 0, 0, 105].into();
        let f = an.sources().get(&attacker).unwrap().features(t(4), WINDOW);
        assert_eq!(f.arp_changes, 1.0);
        assert!(f.arp_claims >= 1.9, "{}", f.arp_claims);
        // The gateway itself changed nothing.
        let gw: IpAddr = [10, 0, 0, 1].into();
        assert!(an.sources().get(&gw).is_none_or(|w| w.features(t(4), WINDOW).arp_changes == 0.0));
    }

    #[test]
    fn test_a_host_moved_to_another_network_claims_one_address() {
        let mut an = Analyzers::new();
        for (ip, s) in [([10, 10, 10, 51], 1), ([192, 168, 2, 3], 20)] {
            let (m, a) = arp(1, 7, ip, [ip[0], ip[1], ip[2], 1]);
            an.arp(&m, &a, Instant::from_secs(s));
        }
        let ip: IpAddr = [10, 10, 10, 51].into();
        let f = an.sources().get(&ip).unwrap().features(Instant::from_secs(21), WINDOW);
        assert!(f.arp_claims < 1.1, "{}", f.arp_claims);
        assert_eq!(f.arp_changes, 0.0);
    }

    #[test]
    fn test_a_host_that_asks_again_changes_nothing() {
        let mut an = Analyzers::new();
        for s in 0..50 {
            let (m, a) = arp(1, 9, [10, 0, 0, 9], [10, 0, 0, (s % 200) as u8]);
            an.arp(&m, &a, Instant::from_secs(s));
        }
        let f = an
            .sources()
            .get(&[10, 0, 0, 9].into())
            .unwrap()
            .features(Instant::from_secs(50), WINDOW);
        assert_eq!(f.arp_changes, 0.0);
        assert!(f.arp_claims < 1.1);
    }
}
