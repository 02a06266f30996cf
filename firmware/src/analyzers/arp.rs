//! ARP: an IP-to-MAC binding table, as arpwatch keeps one.
//!
//! Every ARP packet's sender fields say "this address is at this MAC". A binding that moves to
//! another MAC while the old one is still in use is the mark of spoofing (or of a failover, which
//! is rare and worth a look). One MAC that claims several addresses is either a host with a
//! second address (common, and harmless) or one answering for others, which is what a man in
//! the middle does to the gateway: the difference is the reply nobody asked for (arpspoof and
//! ettercap send them again and again; a host with two addresses answers the requests it gets),
//! so such replies are counted too. All of it is counted against the host behind the claiming
//! MAC: the address it claimed first that nobody else holds, else the last it claimed. Probes
//! (sender 0.0.0.0) claim nothing.

use super::{Recent, SourceWindow, SOURCES};
use crate::hosts::WindowTable;
use crate::wire::{ArpInfo, PacketMeta};
use crate::{Duration, Instant};
use core::net::{IpAddr, Ipv4Addr};

/// Slots for bindings (IPv4 address to MAC; 7/8 of them held, `Recent::HIGH_WATER`), least
/// recently seen evicted first.
pub const BINDINGS: usize = 512;
/// A binding not seen again for this long is forgotten: a new MAC after it is a new host.
pub const BINDING_AGE: Duration = Duration::from_secs(600);
/// Slots for requests remembered (who asked for which address; 7/8 held), to tell an answer
/// from a reply nobody asked for; a host answers within milliseconds.
pub const ASKED: usize = 256;
pub const ASKED_AGE: Duration = Duration::from_secs(3);

/// An address's binding: the MAC, and whether that MAC's last claim of
/// it was a reply nobody asked for (a host that then answers for its own address takes it
/// back: that is the victim restoring it, not a second spoofer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Binding {
    pub mac: [u8; 6],
    pub unasked: bool,
}

/// The binding table, by IPv4 address.
#[derive(Debug)]
pub struct Bindings {
    by_ip: Recent<IpAddr, Binding, BINDINGS>,
    /// Open requests: (the asker's address, the address asked for).
    asked: Recent<(IpAddr, u32), (), ASKED>,
}

impl Default for Bindings {
    fn default() -> Self {
        Bindings { by_ip: Recent::new(BINDING_AGE), asked: Recent::new(ASKED_AGE) }
    }
}

impl Bindings {
    pub fn evicted(&self) -> u64 {
        self.by_ip.evicted() + self.asked.evicted()
    }
    pub fn expire(&mut self, now: Instant) {
        self.by_ip.expire(now);
        self.asked.expire(now);
    }
    pub fn clear(&mut self) {
        self.by_ip.clear();
        self.asked.clear();
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
    // A reply answers a request if its target asked for its sender's address a moment ago; an
    // announcement (sender and target the same address) is a host's own business.
    let asked = (IpAddr::V4(a.target_ip), a.sender_ip.to_bits());
    let unasked = match a.operation {
        1 => {
            let _ = table.asked.entry((claimed, a.target_ip.to_bits()), (), now);
            false
        }
        2 if a.sender_ip != a.target_ip => match table.asked.get(&asked) {
            Some(()) => {
                table.asked.remove(&asked);
                false
            }
            None => true,
        },
        _ => false,
    };
    let changed = match table.by_ip.get_mut(&claimed, now) {
        Some(b) if b.mac != mac => {
            // Taken back by a host answering for itself from one that claimed it unasked.
            let restored = b.unasked && !unasked;
            b.mac = mac;
            b.unasked = unasked;
            !restored
        }
        Some(b) => {
            b.unasked = unasked;
            false
        }
        None => {
            let _ = table.by_ip.entry(claimed, Binding { mac, unasked }, now);
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
        if unasked {
            w.arp_unasked += 1;
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
        assert_eq!(f.arp_unasked, 1.0);
        // The gateway itself changed nothing.
        let gw: IpAddr = [10, 0, 0, 1].into();
        assert!(an.sources().get(&gw).is_none_or(|w| w.features(t(4), WINDOW).arp_changes == 0.0));
    }

    #[test]
    fn test_a_host_with_two_addresses_answers_what_it_is_asked() {
        let mut an = Analyzers::new();
        // .10 and .11 on one MAC 3; .20 asks for each, and the host answers, then asks itself.
        for (op, mac, ip, target, s) in [
            (1, 2, [10, 0, 0, 20], [10, 0, 0, 10], 1),
            (2, 3, [10, 0, 0, 10], [10, 0, 0, 20], 1),
            (1, 2, [10, 0, 0, 20], [10, 0, 0, 11], 2),
            (2, 3, [10, 0, 0, 11], [10, 0, 0, 20], 2),
            (1, 3, [10, 0, 0, 11], [10, 0, 0, 20], 3),
            (2, 2, [10, 0, 0, 20], [10, 0, 0, 11], 3),
        ] {
            let (m, a) = arp(op, mac, ip, target);
            an.arp(&m, &a, Instant::from_secs(s));
        }
        for host in [[10, 0, 0, 10], [10, 0, 0, 11], [10, 0, 0, 20]] {
            let Some(w) = an.sources().get(&host.into()) else { continue };
            let f = w.features(Instant::from_secs(4), WINDOW);
            assert_eq!((f.arp_changes, f.arp_unasked), (0.0, 0.0), "{host:?}");
        }
        // The same reply again, with nobody asking, is one nobody asked for.
        let (m, a) = arp(2, 3, [10, 0, 0, 10], [10, 0, 0, 20]);
        an.arp(&m, &a, Instant::from_secs(4));
        let unasked: f32 = [[10, 0, 0, 10], [10, 0, 0, 11]]
            .iter()
            .filter_map(|h| an.sources().get(&(*h).into()))
            .map(|w| w.features(Instant::from_secs(5), WINDOW).arp_unasked)
            .sum();
        assert_eq!(unasked, 1.0);
    }

    #[test]
    fn test_the_victim_taking_its_address_back_is_not_a_spoofer() {
        let mut an = Analyzers::new();
        // MAC 6 (.66) claims .10 unasked before .10's own MAC 1 is seen; then .20 asks for .10
        // and MAC 1 answers: the binding changes back, and that is .10's, not a spoofing.
        for (op, mac, ip, target, s) in [
            (1, 6, [10, 0, 0, 66], [10, 0, 0, 20], 1),
            (2, 6, [10, 0, 0, 10], [10, 0, 0, 20], 1),
            (1, 2, [10, 0, 0, 20], [10, 0, 0, 10], 2),
            (2, 1, [10, 0, 0, 10], [10, 0, 0, 20], 2),
        ] {
            let (m, a) = arp(op, mac, ip, target);
            an.arp(&m, &a, Instant::from_secs(s));
        }
        let f = |ip: [u8; 4]| {
            an.sources().get(&ip.into()).map(|w| w.features(Instant::from_secs(3), WINDOW))
        };
        assert!(f([10, 0, 0, 10]).is_none_or(|f| f.arp_changes == 0.0), "{:?}", f([10, 0, 0, 10]));
        let attacker = f([10, 0, 0, 66]).unwrap();
        assert_eq!(attacker.arp_unasked, 1.0);
        assert!(attacker.arp_claims >= 1.9);
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
