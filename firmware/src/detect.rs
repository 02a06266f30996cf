//! Window detectors: what one flow cannot show (scans, sweeps, floods, ARP and DHCP abuse),
//! read from the per-host sliding windows ([`crate::hosts`]), and anomaly episodes.
//!
//! [`WindowDetector::evaluate`] looks at every host the table holds, once per call (the edge
//! calls it once a second of packet time), and compares the host's window counters with
//! [`Thresholds`]. A source that trips a detector opens an *episode* (one per source and kind);
//! while it keeps tripping the episode is updated (count of seconds it tripped, the peak of the
//! counter, last seen), and it closes `quiet` after the last trip. Events go out when an
//! episode opens, at most every `update_every` while it lasts, and when it closes: one alert per
//! source and kind while it lasts, not one per packet.

use crate::analyzers::dns::DomainFeatures;
use crate::analyzers::{Analyzers, Service, SourceFeatures};
use crate::hosts::{HostFeatures, HostTable};
use crate::proto::{AnomalyKind, AnomalyMsg};
use crate::victims::{VictimFeatures, VictimTable};
use crate::{Duration, Instant};
use core::net::IpAddr;

/// When each detector trips, over the host window (`flows.host_window_s`, 10 s by default).
#[derive(Debug, Clone, Copy, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(default, deny_unknown_fields))]
pub struct Thresholds {
    /// Distinct destination ports one source opened flows to (port scan).
    pub port_scan_ports: f32,
    /// Distinct IP protocols one source sent (an IP protocol scan, nmap -sO; named a port scan).
    pub protocol_scan_protocols: f32,
    /// Distinct destination hosts one source opened flows to (host sweep), when it sent at most
    /// `host_sweep_packets_per_host` packets per host on average (a probe each, not a session);
    /// or distinct addresses it asked for in ARP requests (a local sweep sends no IP at all).
    pub host_sweep_hosts: f32,
    pub host_sweep_packets_per_host: f32,
    /// TCP SYNs a second from one source to fewer than `port_scan_ports` ports (SYN flood; many
    /// ports is a scan), or to any number of ports from at least `syn_flood_src_ports` distinct
    /// source ports (a scanner sends from a few and matches the answers by them; a flood tool
    /// sends each SYN from a new one).
    pub syn_flood_rate: f32,
    pub syn_flood_src_ports: f32,
    /// ... when SYNs are at least this share of the packets it sends (a flood sends SYNs; a
    /// client that opens connections as fast, as an HTTP flood does, completes them and sends
    /// in them, four packets or more for each SYN).
    pub syn_flood_share: f32,
    /// Kinds of crafted probe ([`crate::wire::L4::crafted`]) from one source to fewer than
    /// `port_scan_ports` ports: OS fingerprinting tries several (nmap -O a NULL, a SYN+FIN+URG+PSH
    /// and a FIN+PSH+URG; xprobe odd ICMP requests); a stealth scan sends one kind.
    pub os_fingerprint_kinds: f32,
    /// UDP packets a second from one source.
    pub udp_flood_rate: f32,
    /// ICMP echo requests a second from one source.
    pub icmp_flood_rate: f32,
    /// ARP replies nobody on this tap asked for that one host's MAC sent in the ARP
    /// analyzer's window (gratuitous or unsolicited: spoofing).
    pub arp_spoof_replies: f32,
    /// Distinct client MACs in the DHCP requests of one source (starvation).
    pub dhcp_starvation_macs: f32,
    /// Seen from the victim: TCP SYNs a second one host received from at least
    /// `victim_sources` distinct sources, SYNs being at least `victim_syn_share` of what it
    /// received (a SYN flood from many or spoofed sources; a busy server receives mostly the
    /// rest of its connections).
    pub victim_syn_rate: f32,
    pub victim_sources: f32,
    pub victim_syn_share: f32,
    /// Seen from the victim: UDP packets a second one host received from amplifying services
    /// (DNS, NTP, SNMP, ...), from at least `amplification_reflectors` of them (or from fewer,
    /// at `amplification_reflectors` times the rate: the volume that many would send), and at
    /// least `amplification_ratio` times the bytes it asked them, in bytes (reflection and
    /// amplification).
    pub amplification_rate: f32,
    pub amplification_reflectors: f32,
    pub amplification_ratio: f32,
    /// The protocol analyzers' ([`crate::analyzers`]), over their window (60 s):
    /// failed logins from one source (FTP 530, HTTP 401, KRB-ERROR, SMB logon failure).
    pub brute_force_failures: f32,
    /// Distinct credentials one source sent in login attempts that no server accepted (FTP
    /// USER and PASS, a login form's fields, HTTP Basic): guesses, counted as they are sent.
    pub brute_force_guesses: f32,
    /// Distinct accounts among one source's failed logins, with at most
    /// `password_spray_per_account` failures each on average (many accounts, a few guesses).
    pub password_spray_accounts: f32,
    pub password_spray_per_account: f32,
    /// TLS heartbeats that read memory, or came before any data, from one client.
    pub heartbleed_heartbeats: f32,
    /// Services one source created on other hosts over SMB or DCE-RPC.
    pub lateral_movement_services: f32,
    /// Endpoint-mapper lookups (ept_lookup) from one source: an enumeration of a host's RPC
    /// services (rpcdump), named a port scan.
    pub rpc_scan_lookups: f32,
    /// Netlogon authentications (NetrServerAuthenticate) from one source: Zerologon tries
    /// about 256 on average; a machine sets up its secure channel with one.
    pub zerologon_authentications: f32,
    /// Datagrams from one source whose fragments a target and a monitor may reassemble
    /// differently (overlapping with other bytes, past 65,535 bytes, a split transport header,
    /// ...; [`crate::analyzers::frag`]): no stack sends one.
    pub evasion_fragments: f32,
    /// Web requests from one source that carry an attack (SQL injection, cross-site scripting,
    /// path traversal, Log4Shell; [`crate::analyzers::webattack`]).
    pub web_attack_requests: f32,
    /// TCP segments from one source that exploit a stack (URGENT/11: urgent data on a SYN, a
    /// TCP-AO option too short; [`crate::analyzers::tcp`]).
    pub urgent11_segments: f32,
    /// Web requests from one source by a scanning tool that names itself (the Nmap Scripting
    /// Engine's User-Agent, Nikto's, ...; [`crate::analyzers::scanner`]): a port scan.
    pub scanner_requests: f32,
    /// Web requests a second (HTTP requests to a web port, TLS ClientHellos to 443), over 10 s
    /// ([`crate::analyzers::FLOOD_WINDOW`]): from one source (an HTTP flood by one host, as HULK and GoldenEye
    /// make), and, from at least `victim_sources` sources, to one server (a botnet's).
    pub http_flood_source_rate: f32,
    pub http_flood_rate: f32,
    /// ARP bindings one host's MAC took from another, and addresses it claimed (these only when
    /// it also sent a reply nobody asked for: a host with a second address answers what it is
    /// asked).
    pub arp_spoof_changes: f32,
    pub arp_spoof_addresses: f32,
    /// Per source and registered domain: distinct names that carry data, TXT/NULL queries, and
    /// distinct names asked with type NULL (which no application asks for; iodine does).
    pub dns_tunnel_names: f32,
    pub dns_tunnel_txt: f32,
    pub dns_tunnel_null_names: f32,
    /// DHCP messages from one client hardware address.
    pub dhcp_flood_requests: f32,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            port_scan_ports: 50.0,
            protocol_scan_protocols: 16.0,
            host_sweep_hosts: 64.0,
            host_sweep_packets_per_host: 4.0,
            syn_flood_rate: 500.0,
            syn_flood_src_ports: 1_000.0,
            syn_flood_share: 0.3,
            os_fingerprint_kinds: 2.0,
            udp_flood_rate: 5_000.0,
            icmp_flood_rate: 200.0,
            arp_spoof_replies: 20.0,
            dhcp_starvation_macs: 20.0,
            victim_syn_rate: 100.0,
            victim_sources: 20.0,
            victim_syn_share: 0.5,
            amplification_rate: 50.0,
            amplification_reflectors: 5.0,
            amplification_ratio: 10.0,
            brute_force_failures: 10.0,
            brute_force_guesses: 10.0,
            password_spray_accounts: 8.0,
            password_spray_per_account: 3.0,
            heartbleed_heartbeats: 1.0,
            lateral_movement_services: 1.0,
            rpc_scan_lookups: 20.0,
            zerologon_authentications: 20.0,
            evasion_fragments: 1.0,
            web_attack_requests: 1.0,
            urgent11_segments: 1.0,
            scanner_requests: 1.0,
            http_flood_source_rate: 100.0,
            http_flood_rate: 500.0,
            arp_spoof_changes: 1.0,
            arp_spoof_addresses: 2.0,
            dns_tunnel_names: 20.0,
            dns_tunnel_txt: 40.0,
            dns_tunnel_null_names: 5.0,
            dhcp_flood_requests: 50.0,
        }
    }
}

/// A detector that tripped: the kind, the counter it read (its name, as in the reasons), its
/// value and the threshold.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Trip {
    pub kind: AnomalyKind,
    pub counter: &'static str,
    pub value: f32,
    pub threshold: f32,
    /// Named by its victim (the host the trip's window is of received the attack).
    pub by_victim: bool,
}

/// Flows to many hosts, each on a port of its own: a peer-to-peer client meeting its peers
/// (gnutella's, BitTorrent's), not a scan of anyone's ports nor a sweep for a service. The
/// ports are as many as half the hosts (a sweep tries a few ports over many hosts), and the
/// distinct (host, port) pairs exceed the hosts by less than half of them or half `scan_ports`
/// (a scan tries many ports of a host, each a pair more; a client tries some peers on a second
/// port: gnutella's 202 peers of one window took 279 pairs). A port scan of one of 100 peers
/// in a window is still named once it tries 50 ports more than that; a scanner that tries one
/// random port on each random host is not.
pub fn peer_shaped(ports: f32, hosts: f32, pairs: f32, scan_ports: f32) -> bool {
    ports >= 0.5 * hosts && pairs - hosts < (0.5 * scan_ports).max(0.5 * hosts)
}

impl Thresholds {
    /// SYNs at a flood's rate from a new source port each: a flood over however many ports,
    /// not a scan of them (one alert, the flood).
    pub fn flood_shaped(&self, f: &HostFeatures) -> bool {
        f.syn_rate * f.burst >= self.syn_flood_rate && f.syn_src_ports >= self.syn_flood_src_ports
    }

    /// Every detector a host's window trips, in a fixed order (`pairs`: the distinct (host, port)
    /// pairs it reached, [`crate::hosts::HostWindow::dst_pairs`]).
    pub fn trips(&self, f: &HostFeatures, pairs: f32, out: &mut impl FnMut(Trip)) {
        let mut trip = |kind, counter, value: f32, threshold: f32| {
            if value >= threshold {
                out(Trip { kind, counter, value, threshold, by_victim: false });
            }
        };
        let flood = self.flood_shaped(f);
        let peers = peer_shaped(f.dst_ports, f.dst_hosts, pairs, self.port_scan_ports);
        if !flood && !peers {
            trip(AnomalyKind::PortScan, "host_dst_ports", f.dst_ports, self.port_scan_ports);
        }
        let protocols = (f.protocols, self.protocol_scan_protocols);
        trip(AnomalyKind::PortScan, "host_ip_protocols", protocols.0, protocols.1);
        let probes =
            f.dst_hosts > 0.0 && f.packets / f.dst_hosts <= self.host_sweep_packets_per_host;
        if probes && !peers && f.dst_hosts >= self.host_sweep_hosts {
            trip(AnomalyKind::HostSweep, "host_dst_hosts", f.dst_hosts, self.host_sweep_hosts);
        } else {
            // A sweep of the local network by ARP alone (nmap -sn on a LAN): no IP flow at all.
            trip(AnomalyKind::HostSweep, "host_arp_targets", f.arp_targets, self.host_sweep_hosts);
        }
        // Floods and fingerprints touch few ports; over many ports they are the scan above.
        let few_ports = f.dst_ports < self.port_scan_ports;
        // SYNs most of what it sends: a flood sends SYNs (and its kernel's RSTs to the answers);
        // a client opening connections at that rate completes them and sends requests in them
        // (an HTTP flood, named by the web requests).
        let syn_share = f.syn_rate / f.pkt_rate.max(f32::MIN_POSITIVE);
        // Flood rates since the host began sending, when that is within the window: a flood
        // is named in its first seconds, not once it has filled the window.
        let rate = |r: f32| r * f.burst;
        if (few_ports || flood) && syn_share >= self.syn_flood_share {
            trip(AnomalyKind::SynFlood, "host_syn_rate", rate(f.syn_rate), self.syn_flood_rate);
        }
        if few_ports {
            let (kinds, at_least) = (f.crafted_kinds, self.os_fingerprint_kinds);
            trip(AnomalyKind::OsFingerprint, "host_crafted_probes", kinds, at_least);
        }
        trip(AnomalyKind::UdpFlood, "host_udp_rate", rate(f.udp_rate), self.udp_flood_rate);
        let icmp = rate(f.icmp_echo_rate);
        trip(AnomalyKind::IcmpFlood, "host_icmp_echo_rate", icmp, self.icmp_flood_rate);
        trip(AnomalyKind::DhcpStarvation, "host_dhcp_macs", f.dhcp_macs, self.dhcp_starvation_macs);
    }
}

impl Thresholds {
    /// Every detector a destination's received window trips: attacks from many or spoofed
    /// sources, named by their victim.
    pub fn victim_trips(&self, f: &VictimFeatures, out: &mut impl FnMut(Trip)) {
        // A trip, if its value reaches its threshold and the conditions beside it hold.
        let mut trip = |t: Trip, also: bool| {
            if also && t.value >= t.threshold {
                out(t);
            }
        };
        // Each named by the victim: the kind, the counter, its rate and threshold.
        let victim = |kind, counter, value, threshold| Trip {
            kind,
            counter,
            value,
            threshold,
            by_victim: true,
        };
        let many = |at_least: f32| f.sources >= at_least;
        // Rates since the host began receiving, when that is within the window.
        let rate = |r: f32| r * f.burst;
        trip(
            victim(
                AnomalyKind::SynFlood,
                "victim_syn_rate",
                rate(f.syn_rate),
                self.victim_syn_rate,
            ),
            many(self.victim_sources) && f.syn_share >= self.victim_syn_share,
        );
        // Many reflectors each over the rate, or fewer sending what that many would: one DNS
        // server answering 250 questions a second that the victim never asked.
        let reflectors = |r: f32| {
            let volume = self.amplification_rate * self.amplification_reflectors;
            many(self.amplification_reflectors) || r >= volume
        };
        let tcp = rate(f.syn_ack_rate);
        trip(
            victim(AnomalyKind::Reflection, "victim_reflected_tcp", tcp, self.amplification_rate),
            reflectors(tcp) && f.reflection >= self.amplification_ratio,
        );
        let udp = rate(f.amplified_rate);
        let service = crate::victims::amplifier(f.service).unwrap_or("victim_amplified_udp");
        trip(
            victim(AnomalyKind::Reflection, service, udp, self.amplification_rate),
            reflectors(udp) && f.amplification >= self.amplification_ratio,
        );
        // Answers that name the host that sent what they answer: protocol unreachables for
        // protocols it tried, as many as an IP protocol scan tries (nmap -sO), when its probes
        // are not seen (an asymmetric tap). Named by that host, as the probes would be.
        let scanner = Trip {
            kind: AnomalyKind::PortScan,
            counter: "host_protocol_unreachables",
            value: f.proto_unreachables,
            threshold: self.protocol_scan_protocols,
            by_victim: false,
        };
        trip(scanner, true);
    }
}

impl Thresholds {
    /// Every detector one source's analyzer facts trip.
    pub fn source_trips(&self, f: &SourceFeatures, out: &mut impl FnMut(Trip)) {
        let mut trip = |kind, counter, value: f32, threshold: f32| {
            if value >= threshold {
                out(Trip { kind, counter, value, threshold, by_victim: false });
            }
        };
        let spray = f.accounts >= self.password_spray_accounts
            && f.auth_failures <= f.accounts * self.password_spray_per_account;
        let (failures, accounts) = match f.auth_service {
            Service::Ftp => ("auth_failures_ftp", "auth_accounts_ftp"),
            Service::Http => ("auth_failures_http", "auth_accounts_http"),
            Service::Kerberos => ("auth_failures_kerberos", "auth_accounts_kerberos"),
            Service::Smb => ("auth_failures_smb", "auth_accounts_smb"),
            Service::Ssh => ("auth_failures_ssh", "auth_accounts_ssh"),
            Service::None => ("auth_failures", "auth_accounts"),
        };
        if spray {
            trip(AnomalyKind::PasswordSpray, accounts, f.accounts, self.password_spray_accounts);
        } else {
            trip(AnomalyKind::BruteForce, failures, f.auth_failures, self.brute_force_failures);
            let guesses = match f.guess_service {
                Service::Ftp => "auth_guesses_ftp",
                Service::Http => "auth_guesses_http",
                _ => "auth_guesses",
            };
            trip(AnomalyKind::BruteForce, guesses, f.guesses, self.brute_force_guesses);
        }
        trip(AnomalyKind::Heartbleed, "tls_heartbleed", f.heartbleed, self.heartbleed_heartbeats);
        trip(
            AnomalyKind::LateralMovement,
            "smb_services_created",
            f.services_created,
            self.lateral_movement_services,
        );
        trip(
            AnomalyKind::PortScan,
            "rpc_endpoint_lookups",
            f.endpoint_lookups,
            self.rpc_scan_lookups,
        );
        trip(
            AnomalyKind::Exploit,
            "rpc_netlogon_authentications",
            f.netlogon_auths,
            self.zerologon_authentications,
        );
        trip(
            AnomalyKind::Evasion,
            f.frag_anomaly.counter(),
            f.frag_anomalies,
            self.evasion_fragments,
        );
        trip(
            AnomalyKind::WebAttack,
            f.web_attack.counter(),
            f.web_attacks,
            self.web_attack_requests,
        );
        trip(AnomalyKind::Exploit, "tcp_urgent11_segments", f.tcp_exploits, self.urgent11_segments);
        trip(
            AnomalyKind::PortScan,
            "http_scanner_requests",
            f.scanner_requests,
            self.scanner_requests,
        );
        if f.arp_changes >= self.arp_spoof_changes {
            trip(
                AnomalyKind::ArpSpoof,
                "arp_binding_changes",
                f.arp_changes,
                self.arp_spoof_changes,
            );
        } else if f.arp_unasked >= 1.0 && f.arp_claims >= self.arp_spoof_addresses {
            trip(
                AnomalyKind::ArpSpoof,
                "arp_mac_addresses",
                f.arp_claims,
                self.arp_spoof_addresses,
            );
        } else {
            // Replies nobody asked for, as many as the per-address rule wants, from one host.
            trip(
                AnomalyKind::ArpSpoof,
                "arp_unasked_replies",
                f.arp_unasked,
                self.arp_spoof_replies,
            );
        }
    }

    /// Every detector one (source, domain) pair's DNS facts trip.
    pub fn domain_trips(&self, f: &DomainFeatures, out: &mut impl FnMut(Trip)) {
        let t = |counter, value: f32, threshold: f32| Trip {
            kind: AnomalyKind::DnsTunnel,
            counter,
            value,
            threshold,
            by_victim: false,
        };
        if f.encoded_names >= self.dns_tunnel_names {
            out(t("dns_encoded_names", f.encoded_names, self.dns_tunnel_names));
        } else if f.null_names >= self.dns_tunnel_null_names {
            out(t("dns_null_names", f.null_names, self.dns_tunnel_null_names));
        } else if f.txt >= self.dns_tunnel_txt && f.txt_names >= crate::analyzers::dns::TXT_NAMES {
            out(t("dns_txt_queries", f.txt, self.dns_tunnel_txt));
        }
    }
}

/// How often the window detectors are judged, in packet time: four times a second, so a flood
/// or a scan is named within a quarter of a second of crossing its threshold.
pub const JUDGE_EVERY: Duration = Duration::from_millis(250);

/// One anomaly episode: a source and a kind, while it lasts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Episode {
    /// Unique per episode: the millisecond it opened (packet time) times 1024, or one more than
    /// the last id when that is not more. Stable when a capture is analysed again.
    pub id: u64,
    /// The source, or for an attack named by its victim (`by_victim`), the victim.
    pub src: IpAddr,
    pub by_victim: bool,
    pub kind: AnomalyKind,
    pub first_seen: Instant,
    pub last_seen: Instant,
    /// Seconds it tripped in (a window's trips are judged four times a second; they count once
    /// a second), or for a model's trips, the flows judged so.
    pub count: u64,
    /// The counter that tripped, its highest value and the threshold.
    pub counter: &'static str,
    pub peak: f32,
    pub threshold: f32,
    /// When it was last reported, and when `count` last grew by a window's trip.
    reported: Instant,
    counted: Instant,
}

impl Episode {
    /// The contract's anomaly message of this episode, as a window detector saw it (the header
    /// fields are left for the uplink to stamp; a model's trip adds what it saw on top).
    pub fn message(&self) -> AnomalyMsg {
        let e = self;
        use crate::proto::{AnomalyKind as K, Reason, Severity};
        let ratio = if e.threshold > 0.0 { e.peak / e.threshold } else { 1.0 };
        let severity = match e.kind {
            K::SynFlood
            | K::UdpFlood
            | K::IcmpFlood
            | K::HttpFlood
            | K::ArpSpoof
            | K::DhcpStarvation => {
                if ratio >= 10.0 {
                    Severity::Critical
                } else {
                    Severity::High
                }
            }
            // One heartbeat or one service created is the attack itself, not a rate.
            K::Heartbleed | K::LateralMovement => Severity::High,
            // An exploit that works takes the domain.
            K::Exploit => Severity::Critical,
            // No stack sends one: whatever it hides, it is made to be missed.
            K::Evasion => Severity::High,
            // One request may be the one that works.
            K::WebAttack => Severity::High,
            _ if ratio >= 10.0 => Severity::High,
            _ => Severity::Medium,
        };
        let protocol = match e.kind {
            // A scan of IP protocols is of all of them.
            K::PortScan
                if matches!(e.counter, "host_ip_protocols" | "host_protocol_unreachables") =>
            {
                None
            }
            K::SynFlood
            | K::PortScan
            | K::Heartbleed
            | K::LateralMovement
            | K::Exploit
            | K::WebAttack
            | K::HttpFlood => Some(6),
            K::UdpFlood => Some(17),
            K::Reflection if e.by_victim => Some(17),
            K::IcmpFlood => Some(if e.src.is_ipv4() { 1 } else { 58 }),
            _ => None,
        };
        let mut reasons = heapless::Vec::new();
        let _ = reasons.push(Reason {
            feature: e.counter.try_into().unwrap_or_default(),
            value: e.peak,
            contribution: e.threshold,
        });
        AnomalyMsg {
            schema: crate::proto::SCHEMA_VERSION,
            device: heapless::String::new(),
            seq: 0,
            ts: 0,
            id: e.id,
            kind: e.kind,
            severity,
            // Just over the threshold is a fair guess; twice over or more is near certain.
            confidence: (0.5 + 0.5 * (ratio - 1.0)).clamp(0.5, 0.99),
            score: e.peak,
            threshold: e.threshold,
            detector: "window".try_into().unwrap_or_default(),
            src_ip: e.src,
            // An attack named by its victim (from many or spoofed sources): the victim is both.
            dst_ip: e.by_victim.then_some(e.src),
            dst_port: None,
            protocol,
            first_seen: e.first_seen.total_micros(),
            last_seen: e.last_seen.total_micros(),
            count: e.count,
            reasons,
        }
    }
}

/// What happened to an episode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EpisodeEvent {
    Opened,
    Updated,
    Closed,
}

/// Counters of the detector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DetectCounters {
    pub evaluations: u64,
    pub opened: u64,
    pub closed: u64,
    /// Trips that could not open an episode because the table was full.
    pub dropped: u64,
}

/// The window detectors with their open episodes (at most `E`).
#[derive(Debug)]
pub struct WindowDetector<const E: usize> {
    pub thresholds: Thresholds,
    /// An episode with no trip for this long closes.
    pub quiet: Duration,
    /// An open episode is reported again at most this often.
    pub update_every: Duration,
    episodes: heapless::Vec<Episode, E>,
    counters: DetectCounters,
    last_id: u64,
    /// Trips of a host found in the victim table (the answers it received name it), held until
    /// [`evaluate`](Self::evaluate) has read the host's own window: where its probes are seen
    /// too, they name the episode. A host past this many at once trips at the next second.
    answered: heapless::Vec<(IpAddr, Trip), 16>,
}

impl<const E: usize> WindowDetector<E> {
    pub fn new(thresholds: Thresholds) -> Self {
        WindowDetector {
            thresholds,
            quiet: Duration::from_secs(30),
            update_every: Duration::from_secs(10),
            episodes: heapless::Vec::new(),
            counters: DetectCounters::default(),
            last_id: 0,
            answered: heapless::Vec::new(),
        }
    }

    pub fn counters(&self) -> &DetectCounters {
        &self.counters
    }

    pub fn open(&self) -> impl Iterator<Item = &Episode> {
        self.episodes.iter()
    }

    /// Judge everything the engine keeps at `now`, in the order the detectors need: what each
    /// destination received, the protocol analyzers' facts, then each source's window (which
    /// also closes quiet episodes). A caller judges every [`JUDGE_EVERY`] of packet time.
    pub fn judge<const F: usize, const H: usize, M: crate::flow::FlowShards<F>>(
        &mut self,
        engine: &crate::engine::Engine<F, H, M>,
        now: Instant,
        out: &mut impl FnMut(&Episode, EpisodeEvent),
    ) {
        self.evaluate_victims(engine.victims(), now, out);
        self.evaluate_analyzers(engine.analyzers(), now, out);
        self.evaluate(engine.hosts(), now, out);
    }

    /// Read every host's window at `now`, open and update episodes, close quiet ones; each
    /// event goes to `out`.
    pub fn evaluate<const H: usize>(
        &mut self,
        hosts: &HostTable<H>,
        now: Instant,
        out: &mut impl FnMut(&Episode, EpisodeEvent),
    ) {
        self.counters.evaluations += 1;
        let window = hosts.config().window;
        for (ip, h) in hosts.iter() {
            // Only hosts seen within the window can trip.
            if h.last.is_none_or(|l| now - l > window) {
                continue;
            }
            let f = h.features(now, window);
            let mut trips: heapless::Vec<Trip, 8> = heapless::Vec::new();
            self.thresholds.trips(&f, h.dst_pairs(), &mut |t| {
                let _ = trips.push(t);
            });
            // The victim of a reflection seems to sweep its reflectors (their answers come back
            // as replies to connections it never made): its reflection episode says what it is.
            let reflected = self.reflection_victim(*ip);
            let named = |t: &Trip| reflected && t.kind == AnomalyKind::HostSweep;
            for t in trips.into_iter().filter(|t| !named(t)) {
                self.trip(*ip, t, now, out);
            }
        }
        for (ip, t) in core::mem::take(&mut self.answered) {
            self.trip(ip, t, now, out);
        }
        self.close_quiet(now, out);
    }

    /// Whether `ip` is the victim of a reflection episode in progress.
    fn reflection_victim(&self, ip: IpAddr) -> bool {
        self.episodes
            .iter()
            .any(|e| e.src == ip && e.by_victim && e.kind == AnomalyKind::Reflection)
    }

    /// Read every destination's received window at `now` (call beside
    /// [`evaluate`](Self::evaluate), before it: that one closes quiet episodes of both kinds).
    pub fn evaluate_victims<const V: usize>(
        &mut self,
        victims: &VictimTable<V>,
        now: Instant,
        out: &mut impl FnMut(&Episode, EpisodeEvent),
    ) {
        let window = victims.window();
        for (ip, v) in victims.iter() {
            if v.last.is_none_or(|l| now - l > window) {
                continue;
            }
            let f = v.features(now, window);
            let mut trips: heapless::Vec<Trip, 4> = heapless::Vec::new();
            self.thresholds.victim_trips(&f, &mut |t| {
                let _ = trips.push(t);
            });
            for t in trips {
                if t.by_victim {
                    self.trip(*ip, t, now, out);
                } else {
                    let _ = self.answered.push((*ip, t));
                }
            }
        }
    }

    /// Read the protocol analyzers' windows at `now` (call beside [`evaluate`](Self::evaluate),
    /// before it: that one closes quiet episodes): authentication failures, heartbeats, remote
    /// services, ARP bindings by source; DNS by source and domain; DHCP by client; slow scans.
    pub fn evaluate_analyzers(
        &mut self,
        a: &Analyzers,
        now: Instant,
        out: &mut impl FnMut(&Episode, EpisodeEvent),
    ) {
        let window = crate::analyzers::WINDOW;
        let live = |last: Option<Instant>| last.is_some_and(|l| now - l <= window);
        for (ip, w) in a.sources().iter() {
            if !live(w.last) {
                continue;
            }
            // Room for every trip source_trips can make at once (five).
            let mut trips: heapless::Vec<Trip, 8> = heapless::Vec::new();
            self.thresholds.source_trips(&w.features(now, window), &mut |t| {
                let _ = trips.push(t);
            });
            for t in trips {
                self.trip(*ip, t, now, out);
            }
        }
        for ((ip, _), w) in a.domains().iter() {
            // The queries of an amplification carry its victim's address: they are not its own.
            let reflected = self.reflection_victim(*ip);
            if !live(w.last) || reflected {
                continue;
            }
            let mut trip = None;
            self.thresholds.domain_trips(&w.features(now, window), &mut |t| trip = Some(t));
            if let Some(t) = trip {
                self.trip(*ip, t, now, out);
            }
        }
        // Slow scans: the failed flows of a minute (a fast scan trips the host window first,
        // and its episode is the same one). Failed flows from a thousand source ports in a
        // minute are no slow scan: a flood's refused SYNs (the host window names the flood,
        // and keeps naming it as it ends while this window still holds them).
        for (ip, w) in a.scans().iter() {
            let s = w.spread();
            let (ports, hosts) = (s.ports, s.hosts);
            if !live(w.last)
                || s.src_ports >= self.thresholds.syn_flood_src_ports
                || peer_shaped(ports, hosts, s.pairs, self.thresholds.port_scan_ports)
            {
                continue;
            }
            let th = &self.thresholds;
            let t = if ports >= th.port_scan_ports {
                Some((AnomalyKind::PortScan, "slow_dst_ports", ports, th.port_scan_ports))
            } else if hosts >= th.host_sweep_hosts {
                Some((AnomalyKind::HostSweep, "slow_dst_hosts", hosts, th.host_sweep_hosts))
            } else {
                None
            };
            if let Some((kind, counter, value, threshold)) = t {
                let t = Trip { kind, counter, value, threshold, by_victim: false };
                self.trip(*ip, t, now, out);
            }
        }
        // HTTP floods: from one source, or from many, named by their victim.
        let flood = crate::analyzers::FLOOD_WINDOW;
        let fresh = |last: Option<Instant>| last.is_some_and(|l| now - l <= flood);
        let th = &self.thresholds;
        let web = [
            (&a.web().clients, false, "http_request_rate", th.http_flood_source_rate, 0.0),
            (
                &a.web().servers,
                true,
                "victim_http_request_rate",
                th.http_flood_rate,
                th.victim_sources,
            ),
        ];
        for (table, by_victim, counter, threshold, sources_at_least) in web {
            for (ip, w) in table.iter() {
                let (rate, peers) = w.load(now, flood);
                if fresh(w.last) && rate >= threshold && peers >= sources_at_least {
                    let kind = AnomalyKind::HttpFlood;
                    let t = Trip { kind, counter, value: rate, threshold, by_victim };
                    self.trip(*ip, t, now, out);
                }
            }
        }
        for (_, w) in a.dhcp_clients().iter() {
            if !live(w.last) {
                continue;
            }
            let (n, src) = w.requests(now, window);
            if n >= self.thresholds.dhcp_flood_requests {
                let t = Trip {
                    kind: AnomalyKind::DhcpStarvation,
                    counter: "dhcp_client_requests",
                    value: n,
                    threshold: self.thresholds.dhcp_flood_requests,
                    by_victim: false,
                };
                let src = src.unwrap_or(IpAddr::V4(core::net::Ipv4Addr::UNSPECIFIED));
                self.trip(src, t, now, out);
            }
        }
    }

    /// A trip found outside the windows (a model's verdict on a source's flows): it opens or
    /// updates that source's episode of its kind like a window trip does. Quiet episodes close
    /// at the next [`evaluate`](Self::evaluate).
    pub fn observe(
        &mut self,
        src: IpAddr,
        t: Trip,
        now: Instant,
        out: &mut impl FnMut(&Episode, EpisodeEvent),
    ) {
        self.trip(src, t, now, out);
    }

    fn trip(
        &mut self,
        src: IpAddr,
        t: Trip,
        now: Instant,
        out: &mut impl FnMut(&Episode, EpisodeEvent),
    ) {
        let by_victim = t.by_victim;
        match self
            .episodes
            .iter_mut()
            .find(|e| e.src == src && e.kind == t.kind && e.by_victim == by_victim)
        {
            Some(e) => {
                if now > e.last_seen {
                    e.last_seen = now;
                }
                let model = t.counter == "classifier" || t.counter == "autoencoder";
                if model || now - e.counted >= Duration::from_secs(1) {
                    e.count += 1;
                    e.counted = now;
                }
                if t.value > e.peak {
                    e.peak = t.value;
                }
                if now - e.reported >= self.update_every {
                    e.reported = now;
                    out(e, EpisodeEvent::Updated);
                }
            }
            None => {
                // Ids count up from the millisecond of packet time it opened, times 1024.
                let id = ((now.total_millis().max(0) as u64) * 1024).max(self.last_id + 1);
                self.last_id = id;
                let e = Episode {
                    id,
                    src,
                    by_victim,
                    kind: t.kind,
                    first_seen: now,
                    last_seen: now,
                    count: 1,
                    counter: t.counter,
                    peak: t.value,
                    threshold: t.threshold,
                    reported: now,
                    counted: now,
                };
                if self.episodes.push(e).is_ok() {
                    self.counters.opened += 1;
                    out(&e, EpisodeEvent::Opened);
                } else {
                    self.counters.dropped += 1;
                }
            }
        }
    }

    /// Close episodes with no trip for `quiet` (all of them with `None`: end of input).
    fn close_quiet(&mut self, now: Instant, out: &mut impl FnMut(&Episode, EpisodeEvent)) {
        let quiet = self.quiet;
        let mut i = 0;
        while i < self.episodes.len() {
            if now - self.episodes[i].last_seen >= quiet {
                let e = self.episodes.swap_remove(i);
                self.counters.closed += 1;
                out(&e, EpisodeEvent::Closed);
            } else {
                i += 1;
            }
        }
    }

    /// Close every open episode (end of input, shutdown).
    pub fn close_all(&mut self, out: &mut impl FnMut(&Episode, EpisodeEvent)) {
        while let Some(e) = self.episodes.pop() {
            self.counters.closed += 1;
            out(&e, EpisodeEvent::Closed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{Engine, EngineConfig};
    use crate::flow::HeapShards;
    use crate::wire::{IpInfo, Ipv6Ext, PacketMeta, TcpFlags, TcpInfo, UdpInfo, L3, L4};
    use std::vec::Vec;

    type TestEngine = Engine<1024, 64, HeapShards<1024, 1>>;

    fn packet(ms: i64, src: [u8; 4], dst: [u8; 4], l4: L4) -> PacketMeta {
        let protocol = match l4 {
            L4::Udp(_) => 17,
            L4::Icmpv4 { .. } => 1,
            _ => 6,
        };
        PacketMeta {
            ts: Instant::from_millis(ms),
            wire_len: 60,
            truncated: false,
            vlan: 0,
            vlan_depth: 0,
            src_mac: None,
            payload_at: 0,
            l3: L3::Ip(IpInfo {
                src: src.into(),
                dst: dst.into(),
                ip_len: 40,
                ttl: 64,
                protocol,
                ipv4_options_len: 0,
                frag: None,
                ipv6_ext: Ipv6Ext::default(),
                l4,
            }),
        }
    }

    fn syn(port: u16) -> L4 {
        L4::Tcp(TcpInfo {
            src_port: 40000,
            dst_port: port,
            flags: TcpFlags(0x02),
            window: 1024,
            header_len: 20,
            payload_len: 0,
            mss: None,
            window_scale: None,
            urgent: 0,
            short_ao: false,
        })
    }

    /// Feed packets, evaluating once a second of packet time as the edge does; the events.
    fn run(packets: &[PacketMeta], until_ms: i64) -> Vec<(Episode, EpisodeEvent)> {
        // A debug build makes the engine on the stack before boxing it: room for that.
        let packets = packets.to_vec();
        std::thread::Builder::new()
            .stack_size(64 << 20)
            .spawn(move || run_here(&packets, until_ms))
            .and_then(|t| t.join().map_err(|_| std::io::Error::other("the test thread panicked")))
            .unwrap()
    }

    fn run_here(packets: &[PacketMeta], until_ms: i64) -> Vec<(Episode, EpisodeEvent)> {
        let mut engine = std::boxed::Box::new(TestEngine::new(EngineConfig::default()));
        let mut d: WindowDetector<16> = WindowDetector::new(Thresholds::default());
        let mut events = Vec::new();
        let mut next = 0i64;
        let mut eval = |engine: &TestEngine, d: &mut WindowDetector<16>, ms: i64| {
            let now = Instant::from_millis(ms);
            d.evaluate_victims(engine.victims(), now, &mut |e, ev| events.push((*e, ev)));
            d.evaluate_analyzers(engine.analyzers(), now, &mut |e, ev| events.push((*e, ev)));
            d.evaluate(engine.hosts(), now, &mut |e, ev| events.push((*e, ev)));
        };
        for p in packets {
            let ms = p.ts.total_millis();
            engine.ingest(p, &mut |_| {});
            if ms >= next {
                eval(&engine, &mut d, ms);
                next = ms + 1000;
            }
        }
        let mut ms = next;
        while ms <= until_ms {
            engine.tick(Instant::from_millis(ms), &mut |_| {});
            eval(&engine, &mut d, ms);
            ms += 1000;
        }
        events
    }

    #[test]
    fn test_count_is_seconds_a_window_tripped_in_and_flows_a_model_judged() {
        let mut d: WindowDetector<16> = WindowDetector::new(Thresholds::default());
        let src: IpAddr = [10, 0, 0, 1].into();
        let trip = |counter| Trip {
            kind: AnomalyKind::PortScan,
            counter,
            value: 60.0,
            threshold: 50.0,
            by_victim: false,
        };
        // A window trips at every judgement, four a second, for 3 s: 4 seconds counted (0 to 3).
        for ms in (0..=3000).step_by(250) {
            d.observe(src, trip("host_dst_ports"), Instant::from_millis(ms), &mut |_, _| {});
        }
        let count = |d: &WindowDetector<16>| d.open().next().unwrap().count;
        assert_eq!(count(&d), 4);
        // A model's trips are flows: each counts.
        for _ in 0..3 {
            d.observe(src, trip("classifier"), Instant::from_millis(3000), &mut |_, _| {});
        }
        assert_eq!(count(&d), 7);
    }

    #[test]
    fn test_port_scan_is_one_episode() {
        let scanner = [10, 0, 0, 9];
        let packets: Vec<PacketMeta> = (1..=300u16)
            .map(|p| packet(i64::from(p) * 10, scanner, [10, 0, 0, 1], syn(p)))
            .collect();
        let events = run(&packets, 60_000);
        let scans: Vec<_> =
            events.iter().filter(|(e, _)| e.kind == AnomalyKind::PortScan).collect();
        assert_eq!(scans.first().map(|s| s.1), Some(EpisodeEvent::Opened), "{events:?}");
        assert_eq!(scans.last().map(|s| s.1), Some(EpisodeEvent::Closed));
        assert!(scans.iter().all(|(e, _)| e.id == scans[0].0.id && e.src == IpAddr::from(scanner)));
        assert_eq!(scans.iter().filter(|s| s.1 == EpisodeEvent::Opened).count(), 1);
        let closed = scans.last().unwrap().0;
        assert!(closed.peak >= 250.0 && closed.peak <= 350.0, "ports estimated {}", closed.peak);
        assert_eq!(closed.counter, "host_dst_ports");
        // It ended 30 s after the last second it tripped in.
        assert!(closed.last_seen.total_millis() >= 3_000);
    }

    #[test]
    fn test_a_slow_scan_is_one_episode_and_a_slow_client_none() {
        // A probe a second to a new UDP port, never answered, for three minutes: the host
        // window never holds more than ten of them; a minute of failed flows holds 60.
        let scanner = [10, 0, 0, 9];
        let mut packets: Vec<PacketMeta> = (1..=180u16)
            .map(|p| packet(i64::from(p) * 1000, scanner, [10, 0, 0, 1], udp(40000, p)))
            .collect();
        // A client that fails to reach the same two servers every few seconds is no scanner.
        packets.extend((1..=60u16).map(|i| {
            let dst = [10, 0, 0, 2 + (i % 2) as u8];
            packet(i64::from(i) * 3000 + 500, [10, 0, 0, 7], dst, udp(40000 + i, 53))
        }));
        packets.sort_by_key(|p| p.ts.total_millis());
        let events = run(&packets, 400_000);
        let opened: Vec<_> = events.iter().filter(|e| e.1 == EpisodeEvent::Opened).collect();
        assert_eq!(opened.len(), 1, "{opened:?}");
        let e = opened[0].0;
        assert_eq!(
            (e.kind, e.src, e.counter),
            (AnomalyKind::PortScan, scanner.into(), "slow_dst_ports")
        );
    }

    /// A peer-to-peer client meets its peers: UDP from one port to 300 hosts in 30 s, each on a
    /// port of its own, hardly any answering (gnutella's, in ntop-nDPI's capture, was raised
    /// as a port scan, a host sweep and a slow scan). Nothing. The same client trying 100 ports
    /// on one of them is a scan; one port on 300 hosts, a sweep.
    #[test]
    fn test_a_peer_to_peer_client_is_no_scan_and_no_sweep() {
        let client = [10, 0, 0, 15];
        let peer = |i: u32| [172, 16, (i / 200) as u8, (i % 200) as u8 + 1];
        let peers: Vec<PacketMeta> = (0..300u32)
            .map(|i| packet(i64::from(i) * 100, client, peer(i), udp(28681, 1024 + i as u16 * 7)))
            .collect();
        let events = run(&peers, 120_000);
        assert!(events.is_empty(), "{events:?}");
        let scan: Vec<PacketMeta> = (0..100u16)
            .map(|p| packet(i64::from(p) * 100, client, peer(1), udp(28681, 2000 + p)))
            .collect();
        let kinds = |events: Vec<(Episode, EpisodeEvent)>| -> Vec<AnomalyKind> {
            events.iter().filter(|e| e.1 == EpisodeEvent::Opened).map(|e| e.0.kind).collect()
        };
        let mut both = [peers.clone(), scan].concat();
        both.sort_by_key(|p| p.ts.total_millis());
        // (Its peers are then no longer peer-shaped: they count as the sweep they look like.)
        assert_eq!(kinds(run(&both, 60_000)), [AnomalyKind::PortScan, AnomalyKind::HostSweep]);
        let sweep: Vec<PacketMeta> = (0..300u32)
            .map(|i| packet(i64::from(i) * 100, client, peer(i), udp(28681, 6346)))
            .collect();
        assert_eq!(kinds(run(&sweep, 60_000)), [AnomalyKind::HostSweep]);
    }

    fn tcp(src_port: u16, dst_port: u16, flags: u8) -> L4 {
        L4::Tcp(TcpInfo {
            src_port,
            dst_port,
            flags: TcpFlags(flags),
            window: 1024,
            header_len: 20,
            payload_len: 0,
            mss: None,
            window_scale: None,
            urgent: 0,
            short_ao: false,
        })
    }

    fn udp(src_port: u16, dst_port: u16) -> L4 {
        L4::Udp(UdpInfo { src_port, dst_port, payload_len: 400, dns: None, dhcp: None })
    }

    /// A spread-out address for `i` (many sources, as spoofing makes them).
    fn spoofed(i: u32) -> [u8; 4] {
        i.wrapping_mul(2_654_435_761).to_be_bytes()
    }

    /// The packets make exactly one episode: `kind`, named by `victim`, from `counter`.
    fn assert_one_by_victim(
        packets: &[PacketMeta],
        kind: AnomalyKind,
        victim: [u8; 4],
        counter: &str,
    ) {
        let events = run(packets, 60_000);
        let opened: Vec<_> = events.iter().filter(|e| e.1 == EpisodeEvent::Opened).collect();
        assert_eq!(opened.len(), 1, "{opened:?}");
        let e = opened[0].0;
        assert_eq!((e.kind, e.src, e.by_victim), (kind, IpAddr::from(victim), true));
        assert_eq!(e.counter, counter);
    }

    #[test]
    fn test_spoofed_syn_flood_is_one_episode_named_by_its_victim() {
        let victim = [10, 0, 0, 1];
        // 1,000 SYNs a second for 8 s, each from another (spoofed) source.
        let packets: Vec<PacketMeta> = (0..8_000u32)
            .map(|i| {
                packet(i64::from(i), spoofed(i), victim, tcp(1024 + (i % 5000) as u16, 80, 0x02))
            })
            .collect();
        assert_one_by_victim(&packets, AnomalyKind::SynFlood, victim, "victim_syn_rate");
    }

    #[test]
    fn test_one_source_flooding_many_ports_is_a_syn_flood_and_a_fast_scan_a_scan() {
        // As CIC-DDoS-2019's SYN flood (lucid-ddos): one source, 13,000 SYNs a second for
        // 0.7 s to random ports of one host, each from the next source port; and, as fast,
        // a SYN scanner sending every probe from one source port.
        let (flooder, scanner) = ([172, 16, 0, 5], [10, 0, 0, 9]);
        let mut packets: Vec<PacketMeta> = (0..9_000u32)
            .map(|i| {
                let port = (i.wrapping_mul(7919) % 60_000 + 1) as u16;
                let p = tcp(19_000 + (i % 40_000) as u16, port, 0x02);
                packet(i64::from(i) * 70 / 1000, flooder, [192, 168, 50, 4], p)
            })
            .collect();
        packets.extend((0..9_000u32).map(|i| {
            let port = (i % 60_000 + 1) as u16;
            packet(i64::from(i) * 70 / 1000 + 5_000, scanner, [10, 0, 0, 1], syn(port))
        }));
        packets.sort_by_key(|p| p.ts.total_millis());
        let events = run(&packets, 60_000);
        let opened: Vec<_> = events.iter().filter(|e| e.1 == EpisodeEvent::Opened).collect();
        let kinds: Vec<_> = opened.iter().map(|(e, _)| (e.kind, e.src)).collect();
        let (flood, scan) = (AnomalyKind::SynFlood, AnomalyKind::PortScan);
        assert_eq!(kinds, [(flood, flooder.into()), (scan, scanner.into())], "{opened:?}");
        assert_eq!(opened[0].0.counter, "host_syn_rate");
    }

    #[test]
    fn test_os_fingerprinting_probes_are_one_episode_and_a_stealth_scan_a_scan() {
        // nmap -O's TCP probes to an open and a closed port (chrissanders'
        // activeosfingerprinting): NULL, SYN|FIN|URG|PSH, FIN|PSH|URG, beside plain SYNs and
        // ACKs; xprobe's ICMP echo with code 123 and address-mask request from another source.
        let (nmap, xprobe, xmas) = ([172, 16, 16, 128], [192, 168, 1, 20], [10, 0, 0, 9]);
        let target = [172, 16, 16, 150];
        let mut packets = std::vec::Vec::new();
        for (i, flags) in [0x02u8, 0x00, 0x2b, 0x10, 0x29, 0x02, 0x10].iter().enumerate() {
            for port in [135u16, 41296] {
                packets.push(packet(i as i64 * 100, nmap, target, tcp(53000, port, *flags)));
            }
        }
        let icmp = |t, code| L4::Icmpv4 { icmp_type: t, code, ident: Some(1), payload_len: 8 };
        packets.push(packet(50, xprobe, [192, 168, 1, 25], icmp(8, 123)));
        packets.push(packet(60, xprobe, [192, 168, 1, 25], icmp(17, 0)));
        // An XMAS scan of 300 ports is a scan, not a fingerprint.
        packets.extend(
            (1..=300u16).map(|p| packet(2_000 + i64::from(p), xmas, target, tcp(40000, p, 0x29))),
        );
        // Plain pings and connections are nothing.
        packets.push(packet(70, [10, 0, 0, 7], target, icmp(8, 0)));
        packets.push(packet(80, [10, 0, 0, 7], target, tcp(40001, 80, 0x02)));
        packets.push(packet(90, [10, 0, 0, 7], target, tcp(40001, 80, 0x11)));
        packets.sort_by_key(|p| p.ts.total_millis());
        let events = run(&packets, 60_000);
        let opened: std::vec::Vec<_> = events
            .iter()
            .filter(|e| e.1 == EpisodeEvent::Opened)
            .map(|(e, _)| (e.kind, e.src))
            .collect();
        let (fp, scan) = (AnomalyKind::OsFingerprint, AnomalyKind::PortScan);
        assert_eq!(
            opened,
            [(fp, nmap.into()), (fp, xprobe.into()), (scan, xmas.into())],
            "{events:?}"
        );
    }

    #[test]
    fn test_an_ip_protocol_scan_is_a_port_scan_and_a_busy_host_is_not() {
        // nmap -sO: one IP packet of each protocol number; and a host that speaks TCP, UDP,
        // ICMP, GRE, ESP, IGMP and OSPF.
        let with_protocol = |mut p: PacketMeta, protocol: u8| {
            if let L3::Ip(ip) = &mut p.l3 {
                ip.protocol = protocol;
            }
            p
        };
        let (scanner, busy) = ([192, 168, 1, 10], [10, 0, 0, 7]);
        let mut packets: Vec<PacketMeta> = (0..=255u8)
            .map(|n| {
                with_protocol(packet(i64::from(n) * 4, scanner, [192, 168, 1, 25], L4::None), n)
            })
            .collect();
        for (i, n) in [6u8, 17, 1, 47, 50, 2, 89].iter().cycle().take(300).enumerate() {
            let l4 = match n {
                6 => tcp(40000, 443, 0x10),
                17 => udp(40000, 53),
                _ => L4::None,
            };
            packets.push(with_protocol(packet(i as i64 * 3, busy, [10, 0, 0, 1], l4), *n));
        }
        packets.sort_by_key(|p| p.ts.total_millis());
        let events = run(&packets, 60_000);
        let opened: Vec<_> = events.iter().filter(|e| e.1 == EpisodeEvent::Opened).collect();
        assert_eq!(opened.len(), 1, "{opened:?}");
        let e = opened[0].0;
        assert_eq!((e.kind, e.src), (AnomalyKind::PortScan, IpAddr::from(scanner)));
        assert_eq!(e.counter, "host_ip_protocols");
    }

    #[test]
    fn test_an_arp_sweep_is_a_host_sweep_and_a_busy_lan_is_not() {
        let arp = |ms: i64, sender: [u8; 4], target: [u8; 4]| PacketMeta {
            ts: Instant::from_millis(ms),
            wire_len: 60,
            truncated: false,
            vlan: 0,
            vlan_depth: 0,
            src_mac: None,
            payload_at: 0,
            l3: L3::Arp(crate::wire::ArpInfo {
                operation: 1,
                sender_mac: [2, 0, 0, 0, 0, sender[3]],
                sender_ip: sender.into(),
                target_mac: [0; 6],
                target_ip: target.into(),
            }),
        };
        // One host asks for all 254 addresses of its /24, twice; a router asks for 30 hosts
        // again and again, as a busy LAN's gateway does.
        let mut packets: Vec<PacketMeta> = (0..508i64)
            .map(|i| arp(i * 2, [10, 0, 0, 128], [10, 0, 0, (i % 254 + 1) as u8]))
            .collect();
        packets.extend(
            (0..600i64).map(|i| arp(i * 2 + 1, [10, 0, 0, 1], [10, 0, 0, (i % 30 + 2) as u8])),
        );
        packets.sort_by_key(|p| p.ts);
        let events = run(&packets, 60_000);
        let opened: Vec<_> = events.iter().filter(|e| e.1 == EpisodeEvent::Opened).collect();
        assert_eq!(opened.len(), 1, "{opened:?}");
        let e = opened[0].0;
        assert_eq!((e.kind, e.src), (AnomalyKind::HostSweep, IpAddr::from([10, 0, 0, 128])));
        assert_eq!(e.counter, "host_arp_targets");
    }

    #[test]
    fn test_http_floods_are_named_by_source_or_victim_and_a_browser_is_not() {
        use crate::analyzers::{web_request, Analyzers, Conn, Side};
        fn go() -> Vec<(Episode, EpisodeEvent)> {
            let mut an = std::boxed::Box::new(Analyzers::new());
            let mut d: WindowDetector<16> = WindowDetector::new(Thresholds::default());
            let (server, other) = ([10, 0, 0, 10], [10, 0, 0, 11]);
            let req = |an: &mut Analyzers, client: [u8; 4], server: [u8; 4], ms: i64| {
                let conn = Conn {
                    client: client.into(),
                    server: server.into(),
                    client_port: 40000,
                    server_port: 80,
                };
                let side = Side { conn, from_client: true };
                let now = Instant::from_millis(ms);
                web_request(&mut an.web, &side, now);
            };
            let mut events = Vec::new();
            for s in 0..60i64 {
                let base = s * 1000;
                // One host, 1,000 requests a second for 5 s (HULK's kind of flood).
                if s < 5 {
                    for i in 0..1000 {
                        req(&mut an, [10, 0, 0, 66], server, base + i);
                    }
                }
                // A browser loading pages of 150 resources every 15 s.
                if s % 15 == 0 {
                    for i in 0..150 {
                        req(&mut an, [10, 0, 0, 20], server, base + i * 10);
                    }
                }
                // From 10 s on, 2,000 bots, 1,000 requests a second in all, against another
                // server (while they flood, the source table holds only the last 256 of them).
                for i in (0..1000i64).filter(|_| s >= 10) {
                    let bot = spoofed(((s * 1000 + i) % 2000) as u32);
                    req(&mut an, bot, other, base + i);
                }
                let now = Instant::from_millis(base + 999);
                d.evaluate_analyzers(&an, now, &mut |e, ev| events.push((*e, ev)));
            }
            events
        }
        let events = std::thread::Builder::new()
            .stack_size(64 << 20)
            .spawn(go)
            .and_then(|t| t.join().map_err(|_| std::io::Error::other("the test thread panicked")))
            .unwrap();
        let opened: Vec<_> = events.iter().filter(|e| e.1 == EpisodeEvent::Opened).collect();
        let got: Vec<_> =
            opened.iter().map(|(e, _)| (e.kind, e.src, e.by_victim, e.counter)).collect();
        assert_eq!(
            got,
            [
                (AnomalyKind::HttpFlood, IpAddr::from([10, 0, 0, 66]), false, "http_request_rate"),
                (
                    AnomalyKind::HttpFlood,
                    IpAddr::from([10, 0, 0, 11]),
                    true,
                    "victim_http_request_rate"
                ),
            ],
            "{opened:?}"
        );
        // Rates over 10 s: 1,000 requests a second are past 100 a second within 1 s of the
        // start, and past 500 a second within 5 s.
        assert!(opened[0].0.first_seen.total_millis() < 2_000, "{:?}", opened[0].0);
        assert!(opened[1].0.first_seen.total_millis() < 16_000, "{:?}", opened[1].0);
    }

    #[test]
    fn test_a_busy_server_is_no_victim() {
        // 400 clients, each opening 5 connections: SYN, ACK and four data packets each, about
        // 250 SYNs a second at the server for 8 s; and the server's answers.
        let server = [10, 0, 0, 80];
        let mut packets = Vec::new();
        for c in 0..400u32 {
            let client = [10, 1, (c / 250) as u8, (c % 250) as u8];
            for k in 0..5u32 {
                let t = i64::from((c * 5 + k) * 4);
                let port = 20000 + (k as u16);
                packets.push(packet(t, client, server, tcp(port, 443, 0x02)));
                packets.push(packet(t, server, client, tcp(443, port, 0x12)));
                for d in 0..5 {
                    packets.push(packet(
                        t + 1,
                        client,
                        server,
                        tcp(port, 443, 0x10 | ((d % 2) * 0x08)),
                    ));
                }
            }
        }
        packets.sort_by_key(|p| p.ts);
        let events = run(&packets, 40_000);
        assert!(events.is_empty(), "{events:?}");
    }

    #[test]
    fn test_amplification_is_named_by_its_victim_and_service() {
        let victim = [10, 0, 0, 7];
        // 300 DNS answers a second for 8 s from 60 resolvers, to a host that asked nothing; and
        // a client whose own lookups are answered one for one.
        let mut packets: Vec<PacketMeta> = (0..2_400u32)
            .map(|i| {
                packet(i64::from(i) * 3 + 1, [192, 0, 2, (i % 60) as u8], victim, udp(53, 4444))
            })
            .collect();
        for i in 0..400i64 {
            let resolvers = [
                [9, 9, 9, 9],
                [1, 1, 1, 1],
                [8, 8, 8, 8],
                [8, 8, 4, 4],
                [4, 2, 2, 2],
                [9, 9, 9, 10],
            ];
            let r = resolvers[(i % 6) as usize];
            packets.push(packet(i * 20, [10, 0, 0, 5], r, udp(5353 + (i % 100) as u16, 53)));
            packets.push(packet(i * 20 + 1, r, [10, 0, 0, 5], udp(53, 5353 + (i % 100) as u16)));
        }
        packets.sort_by_key(|p| p.ts);
        assert_one_by_victim(&packets, AnomalyKind::Reflection, victim, "victim_amplified_dns");
        // One resolver answering 400 questions a second the victim never asked (the lab's
        // reflection: spoofed queries to one server); one answering 100 a second is not yet the
        // volume of five reflectors at the threshold.
        let one = |per_s: i64| -> Vec<PacketMeta> {
            (0..per_s * 6)
                .map(|i| packet(i * 1000 / per_s, [192, 0, 2, 53], victim, udp(53, 4444)))
                .collect()
        };
        assert_one_by_victim(&one(400), AnomalyKind::Reflection, victim, "victim_amplified_dns");
        let events = run(&one(100), 30_000);
        assert!(events.is_empty(), "{events:?}");
    }

    #[test]
    fn test_udp_flood_and_quiet_client() {
        let udp = |port| {
            L4::Udp(UdpInfo {
                src_port: 5000,
                dst_port: port,
                payload_len: 18,
                dns: None,
                dhcp: None,
            })
        };
        // 8,000 packets a second for 12 s from one source (rates are over the 10 s window); a
        // client querying DNS 20 times beside it.
        let mut packets: Vec<PacketMeta> =
            (0..96_000i64).map(|i| packet(i / 8, [10, 0, 0, 66], [10, 0, 0, 1], udp(9))).collect();
        packets.extend((0..20i64).map(|i| packet(i * 100, [10, 0, 0, 5], [10, 0, 0, 53], udp(53))));
        packets.sort_by_key(|p| p.ts);
        let events = run(&packets, 40_000);
        let opened: Vec<_> = events.iter().filter(|e| e.1 == EpisodeEvent::Opened).collect();
        assert_eq!(opened.len(), 1, "{opened:?}");
        assert_eq!(opened[0].0.kind, AnomalyKind::UdpFlood);
        assert_eq!(opened[0].0.src, IpAddr::from([10, 0, 0, 66]));
        // Its rate is read since its first packet, over 3 s at least: 24,000 in 3 s is 8,000
        // a second, past 5,000 by the evaluation at 2 s (over the whole window, 8.3 s).
        assert!(opened[0].0.first_seen.total_millis() <= 2_000, "{:?}", opened[0].0);
    }

    #[test]
    fn test_protocol_unreachables_name_the_protocol_scanner_whose_probes_were_not_seen() {
        // Only the answers: 252 protocol unreachables from the target to the scanner (lucaderi's
        // hs-sh-IPscan), and a router's port unreachable now and then to a client.
        let unreachable = |code| L4::Icmpv4 { icmp_type: 3, code, ident: None, payload_len: 28 };
        let mut packets: Vec<PacketMeta> = (0..252i64)
            .map(|i| packet(i * 4, [10, 0, 0, 9], [10, 0, 0, 66], unreachable(2)))
            .collect();
        packets.extend(
            (0..30i64).map(|i| packet(i * 40, [10, 0, 0, 1], [10, 0, 0, 5], unreachable(3))),
        );
        packets.sort_by_key(|p| p.ts);
        let events = run(&packets, 30_000);
        let opened: Vec<_> = events.iter().filter(|e| e.1 == EpisodeEvent::Opened).collect();
        assert_eq!(opened.len(), 1, "{opened:?}");
        let e = opened[0].0;
        assert_eq!(
            (e.kind, e.src, e.by_victim),
            (AnomalyKind::PortScan, IpAddr::from([10, 0, 0, 66]), false)
        );
        assert_eq!(e.counter, "host_protocol_unreachables");
    }

    #[test]
    fn test_a_short_burst_is_no_flood_and_a_new_flood_is_named_in_its_first_second() {
        let udp = L4::Udp(UdpInfo {
            src_port: 5000,
            dst_port: 9,
            payload_len: 18,
            dns: None,
            dhcp: None,
        });
        // 14,000 packets in 2 s (7,000 a second, then silence): under 5,000 a second over the
        // shortest span, 3 s.
        let burst: Vec<PacketMeta> =
            (0..14_000i64).map(|i| packet(i / 7, [10, 0, 0, 7], [10, 0, 0, 1], udp)).collect();
        let events = run(&burst, 30_000);
        assert!(events.is_empty(), "{events:?}");
        // 20,000 a second from a host never seen before: named at the first evaluation past
        // 15,000 packets (1 s in), where the window's rate would wait until 2.5 s.
        let flood: Vec<PacketMeta> = (0..60_000i64)
            .map(|i| packet(500 + i / 20, [10, 0, 0, 66], [10, 0, 0, 1], udp))
            .collect();
        let events = run(&flood, 30_000);
        let opened: Vec<_> = events.iter().filter(|e| e.1 == EpisodeEvent::Opened).collect();
        assert_eq!(opened.len(), 1, "{opened:?}");
        assert_eq!(opened[0].0.kind, AnomalyKind::UdpFlood);
        assert!(opened[0].0.first_seen.total_millis() <= 1_600, "{:?}", opened[0].0);
    }
}
