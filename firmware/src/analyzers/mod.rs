//! Protocol analyzers: the facts of an attack that headers and counts cannot show, read from
//! the payload of one packet at a time, in the spirit of Zeek's analyzers and nDPI's flow risks.
//!
//! Each analyzer reads one protocol (one file each) and keeps bounded state; what it finds goes
//! into a window of its source (the attacker) in [`Analyzers::sources`], or of a source and the
//! domain it queries, or of a DHCP client, all read by [`crate::detect::WindowDetector::
//! evaluate_analyzers`] like the host windows. Every table is fixed in size; what does not fit is
//! evicted oldest first and counted ([`AnalyzerCounters`]). Nothing here allocates, and a payload
//! that is not what its port says yields no fact, never an error: the analyzers are fuzzed with
//! the engine.
//!
//! - [`arp`]: an IP-to-MAC binding table (arpwatch's): changed bindings, one MAC claiming many
//!   addresses.
//! - [`dhcp`]: requests by client hardware address (chaddr), not by Ethernet source.
//! - [`dns`]: per source and registered domain, distinct encoded subdomains and TXT/NULL queries.
//! - [`frag`]: IP fragments that overlap, overrun or split their headers (the reassembly
//!   ambiguities of an evasion), per datagram; IPv6 headers no stack sends.
//! - [`tcp`]: TCP segments crafted against a stack (URGENT/11).
//! - [`tls`]: heartbeat records, their claimed and real lengths, and when they come.
//! - [`ftp`], [`http`], [`kerberos`], [`smb`]: authentication outcomes (530, 401, KRB-ERROR,
//!   NT status of a session set-up) and, for SMB and DCE-RPC, remote service creation,
//!   endpoint-mapper enumeration and Netlogon authentications (Zerologon).
//! - [`scanner`]: web requests from a scanning tool that names itself (nmap's scripts, Nikto).
//! - [`webattack`]: SQL injection, cross-site scripting, path traversal and Log4Shell in the
//!   requests a web client sends.
//! - [`ssh`]: refused logins, inferred through the encryption from the sizes of the server's
//!   packets after the key exchange.

pub mod arp;
pub mod dhcp;
pub mod dns;
pub mod frag;
pub mod ftp;
pub mod http;
pub mod kerberos;
pub mod scanner;
pub mod smb;
pub mod ssh;
pub mod tcp;
pub mod tls;
pub mod webattack;

use crate::hosts::{Sketch, TableKey, WindowTable};
use crate::wire::{ArpInfo, IpInfo, PacketMeta, L4};
use crate::{Duration, Instant};
use core::net::IpAddr;

/// Sources with application facts tracked at once (about 90 KiB).
pub const SOURCES: usize = 256;
/// (source, registered domain) pairs tracked at once.
pub const DOMAINS: usize = 256;
/// DHCP clients (by hardware address) tracked at once.
pub const DHCP_CLIENTS: usize = 256;
/// Sources with failed flows tracked at once, for slow scans.
pub const SCANNERS: usize = 256;
/// Web clients and web servers with their requests tracked at once (each).
pub const SERVERS: usize = 256;
/// The web request window: as short as the host window, for floods are rates.
pub const FLOOD_WINDOW: Duration = Duration::from_secs(10);

/// The analyzers' window: long enough for a tunnel that sends a query a second, or a guesser
/// that tries a password every few seconds.
pub const WINDOW: Duration = Duration::from_secs(60);

/// Per-connection state (TLS, svcctl binds) untouched for this long is forgotten.
pub const CONNECTION_AGE: Duration = Duration::from_secs(600);

/// The services whose authentication outcomes are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(u8)]
pub enum Service {
    #[default]
    None = 0,
    Ftp,
    Http,
    Kerberos,
    Smb,
    Ssh,
}

impl Service {
    pub const fn name(self) -> &'static str {
        match self {
            Service::None => "none",
            Service::Ftp => "ftp",
            Service::Http => "http",
            Service::Kerberos => "kerberos",
            Service::Smb => "smb",
            Service::Ssh => "ssh",
        }
    }
}

/// What one source did, over one tumbling window of [`WINDOW`].
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct SourceWindow {
    pub start: Option<Instant>,
    /// Failed authentications it made (530, 401, pre-auth failed, logon failure), the service
    /// of the last one, distinct accounts they were for and distinct servers.
    pub auth_failures: u32,
    pub auth_service: Service,
    pub accounts: Sketch,
    pub auth_servers: Sketch,
    /// The account its last login attempt named (a hash), waiting for its outcome.
    pub pending_account: u32,
    /// Distinct credentials (account and secret, hashed) it sent in login attempts (FTP PASS,
    /// a login form's fields, an HTTP Basic header), the service of the last, and the logins
    /// servers accepted (FTP 230). Many credentials none of which was accepted is guessing,
    /// seen when the guesses are sent: a server that delays its refusals (vsftpd, OpenSSH)
    /// does not delay this.
    pub credentials: Sketch,
    pub guess_service: Service,
    pub logins: u32,
    /// HTTP POSTs in a row to one path (a hash of the last path): a login form tried again and
    /// again. Not a failure by itself (an API client posts to one path too); the evidence a
    /// model's brute_force verdict on HTTP needs.
    pub post_path: u32,
    pub posts_one_path: u32,
    /// Heartbeat records that read another host's memory (a claimed length beyond the record),
    /// or come before any application data, or are answered with more than was asked.
    pub heartbleed: u32,
    /// Remote services it created (svcctl CreateService after a bind to svcctl).
    pub services_created: u32,
    /// Pages of the endpoint mapper's registrations it asked for (ept_lookup).
    pub endpoint_lookups: u32,
    /// Netlogon authentications it made (NetrServerAuthenticate after a bind to Netlogon).
    pub netlogon_auths: u32,
    /// ARP: bindings it changed (an address another MAC held), addresses its MAC claimed,
    /// replies it sent that nobody asked for.
    pub arp_changes: u32,
    pub arp_claims: Sketch,
    pub arp_unasked: u32,
    /// Datagrams whose fragments it sent were ambiguous to reassemble ([`frag`]), and what was
    /// wrong with the last of them.
    pub frag_anomalies: u32,
    pub frag_anomaly: frag::FragAnomaly,
    /// Web requests it sent that carried an attack ([`webattack`]), and the last one's kind.
    pub web_attacks: u32,
    pub web_attack: webattack::WebAttack,
    /// TCP segments it sent that exploit a stack ([`tcp`]).
    pub tcp_exploits: u32,
    /// Web requests it sent as a scanning tool ([`scanner`]).
    pub scanner_requests: u32,
}

crate::hosts::tumbling!(SourceWindow);

/// A source's application facts over the sliding window.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct SourceFeatures {
    pub auth_failures: f32,
    pub auth_service: Service,
    pub accounts: f32,
    pub auth_servers: f32,
    /// Distinct credentials tried that no server accepted (credentials less logins accepted).
    pub guesses: f32,
    pub guess_service: Service,
    pub posts_one_path: f32,
    pub heartbleed: f32,
    pub services_created: f32,
    pub endpoint_lookups: f32,
    pub netlogon_auths: f32,
    pub arp_changes: f32,
    pub arp_claims: f32,
    pub arp_unasked: f32,
    pub frag_anomalies: f32,
    pub frag_anomaly: frag::FragAnomaly,
    pub web_attacks: f32,
    pub web_attack: webattack::WebAttack,
    pub tcp_exploits: f32,
    pub scanner_requests: f32,
}

/// What the current window says (the last of its kind), else what the previous one did.
fn latest<T: PartialEq + Default>(cur: T, prev: T) -> T {
    if cur == T::default() {
        prev
    } else {
        cur
    }
}

/// Count a previous window by how much of it still overlaps.
fn slid(cur: u32, prev: u32, weight: f32) -> f32 {
    cur as f32 + prev as f32 * weight
}

impl crate::hosts::Windows<SourceWindow> {
    pub fn features(&self, now: Instant, window: Duration) -> SourceFeatures {
        let (w, _) = self.slide(now, window);
        let (c, p) = (&self.cur, &self.prev);
        SourceFeatures {
            auth_failures: slid(c.auth_failures, p.auth_failures, w),
            auth_service: latest(c.auth_service, p.auth_service),
            accounts: c.accounts.union(&p.accounts).estimate(),
            auth_servers: c.auth_servers.union(&p.auth_servers).estimate(),
            guesses: (c.credentials.union(&p.credentials).estimate() - slid(c.logins, p.logins, w))
                .max(0.0),
            guess_service: latest(c.guess_service, p.guess_service),
            posts_one_path: slid(c.posts_one_path, p.posts_one_path, w),
            heartbleed: slid(c.heartbleed, p.heartbleed, w),
            services_created: slid(c.services_created, p.services_created, w),
            endpoint_lookups: slid(c.endpoint_lookups, p.endpoint_lookups, w),
            netlogon_auths: slid(c.netlogon_auths, p.netlogon_auths, w),
            arp_changes: slid(c.arp_changes, p.arp_changes, w),
            arp_claims: c.arp_claims.union(&p.arp_claims).estimate(),
            arp_unasked: slid(c.arp_unasked, p.arp_unasked, w),
            frag_anomalies: slid(c.frag_anomalies, p.frag_anomalies, w),
            frag_anomaly: latest(c.frag_anomaly, p.frag_anomaly),
            web_attacks: slid(c.web_attacks, p.web_attacks, w),
            web_attack: latest(c.web_attack, p.web_attack),
            tcp_exploits: slid(c.tcp_exploits, p.tcp_exploits, w),
            scanner_requests: slid(c.scanner_requests, p.scanner_requests, w),
        }
    }
}

/// The flows one source began that failed (no answer, or refused), over [`WINDOW`]: a scan too
/// slow for the host window (a probe a second under ICMP rate limits) still reaches 50 ports
/// or 64 hosts in a minute, and a client fails a handful of connections, not dozens.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct ScanWindow {
    pub start: Option<Instant>,
    pub failed: u32,
    pub ports: Sketch,
    pub hosts: Sketch,
    /// Distinct (host, port) pairs of the failed flows.
    pub pairs: Sketch,
    /// Distinct source ports of the failed flows.
    pub src_ports: Sketch,
}

crate::hosts::tumbling!(ScanWindow);

impl crate::hosts::Windows<ScanWindow> {
    /// Distinct destination ports, destination hosts, (host, port) pairs and source ports of
    /// the failed flows, over the sliding window.
    pub fn spread(&self) -> Spread {
        let (c, p) = (&self.cur, &self.prev);
        let n = |a: &Sketch, b: &Sketch| a.union(b).estimate();
        Spread {
            ports: n(&c.ports, &p.ports),
            hosts: n(&c.hosts, &p.hosts),
            pairs: n(&c.pairs, &p.pairs),
            src_ports: n(&c.src_ports, &p.src_ports),
        }
    }
}

/// What a [`ScanWindow`] read: distinct destination ports, hosts, (host, port) pairs and
/// source ports.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Spread {
    pub ports: f32,
    pub hosts: f32,
    pub pairs: f32,
    pub src_ports: f32,
}

/// The web requests one client made, or one server received, over [`FLOOD_WINDOW`]: an HTTP
/// flood from one host (HULK, GoldenEye) is named by its source; from many (a botnet's, a
/// booter's) by its victim, as a SYN flood is.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct WebWindow {
    pub start: Option<Instant>,
    /// Web requests (HTTP requests, TLS ClientHellos to 443).
    pub requests: u32,
    /// Distinct hosts at the other end.
    pub peers: Sketch,
}

crate::hosts::tumbling!(WebWindow);

impl crate::hosts::Windows<WebWindow> {
    /// Web requests a second (over the seconds the window's counts span, so that a flood reads
    /// its rate from its first second: [`crate::hosts::Windows::span`]), and the distinct hosts
    /// at the other end, over the sliding window.
    pub fn load(&self, now: Instant, window: Duration) -> (f32, f32) {
        let (w, _) = self.slide(now, window);
        let (c, p) = (&self.cur, &self.prev);
        let rate = slid(c.requests, p.requests, w) / self.span(now, window);
        (rate, c.peers.union(&p.peers).estimate())
    }
}

/// One web request from `side`'s client to its server.
pub(crate) fn web_request(web: &mut Web, side: &Side, now: Instant) {
    let (client, server) = (side.conn.client, side.conn.server);
    if let Some(w) = web.clients.window_mut(client, now) {
        w.requests += 1;
        w.peers.insert(crate::hosts::ip_bits(server));
    }
    if let Some(w) = web.servers.window_mut(server, now) {
        w.requests += 1;
        w.peers.insert(crate::hosts::ip_bits(client));
    }
}

/// The web request windows of clients and of servers.
#[derive(Debug)]
pub struct Web {
    pub clients: WindowTable<WebWindow, SERVERS>,
    pub servers: WindowTable<WebWindow, SERVERS>,
}

/// Counters of the analyzers, for metrics: entries evicted to make room, by table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AnalyzerCounters {
    pub tls_evicted: u64,
    pub rpc_evicted: u64,
    pub arp_evicted: u64,
    pub ssh_evicted: u64,
    pub frag_evicted: u64,
}

/// Every analyzer with its state.
#[derive(Debug)]
pub struct Analyzers {
    pub(crate) sources: WindowTable<SourceWindow, SOURCES>,
    domains: WindowTable<dns::DomainWindow, DOMAINS, (IpAddr, u32)>,
    dhcp: WindowTable<dhcp::ClientWindow, DHCP_CLIENTS, [u8; 6]>,
    scans: WindowTable<ScanWindow, SCANNERS>,
    pub(crate) web: Web,
    arp: arp::Bindings,
    tls: tls::Connections,
    rpc: smb::Binds,
    ssh: ssh::Connections,
    frags: frag::Datagrams,
}

impl Default for Analyzers {
    fn default() -> Self {
        Self::new()
    }
}

/// A TCP or UDP exchange as the analyzers key it: client and server address and port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conn {
    pub client: IpAddr,
    pub server: IpAddr,
    pub client_port: u16,
    pub server_port: u16,
}

#[cfg(test)]
impl Conn {
    /// The tests' exchange: 10.0.0.1 port 40000 to 10.0.0.2 on `server_port`.
    pub(crate) fn test(server_port: u16) -> Conn {
        Conn {
            client: [10, 0, 0, 1].into(),
            server: [10, 0, 0, 2].into(),
            client_port: 40000,
            server_port,
        }
    }
}

impl TableKey for Conn {
    fn word(&self) -> u128 {
        // The ports in the top 32 bits (a shift past 96 lost the client port's high bits).
        let ports = (u128::from(self.client_port) << 16) | u128::from(self.server_port);
        self.client.word() ^ self.server.word().rotate_left(61) ^ (ports << 96)
    }
}

/// Which side of its connection a packet came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Side {
    pub conn: Conn,
    /// Sent by the client (the flow's initiator).
    pub from_client: bool,
}

impl Side {
    /// The host that sent the packet and the one it went to.
    pub fn sender(&self) -> IpAddr {
        if self.from_client {
            self.conn.client
        } else {
            self.conn.server
        }
    }
}

/// A 32-bit FNV-1a hash (account names, domains): small, stable, no table.
pub(crate) fn fnv(bytes: &[u8]) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for &b in bytes {
        h = (h ^ u32::from(b.to_ascii_lowercase())).wrapping_mul(0x0100_0193);
    }
    h
}

/// The first place `needle` occurs in `hay` (none for an empty needle). memchr's substring
/// search: searched window by window (a comparison a byte), the web analyzers (User-Agents
/// against 22 tool names, attack patterns, headers by name) were 30% of the analyzers'
/// instructions on the merged public captures, and are 17% so (callgrind).
pub(crate) fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() {
        return None;
    }
    memchr::memmem::find(hay, needle)
}

/// The first place `needle` occurs in `hay`, ASCII case aside (none for an empty needle).
pub(crate) fn find_ci(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() {
        return None;
    }
    hay.windows(needle.len()).position(|w| w.eq_ignore_ascii_case(needle))
}

/// The request target of an HTTP request (`segment` begins with its request line), and what
/// follows the line (its headers, from the line's CRLF on).
pub(crate) fn request_target(segment: &[u8]) -> (&[u8], &[u8]) {
    let line_end = find(segment, b"\r\n").unwrap_or(segment.len());
    let line = &segment[..line_end];
    let start = line.iter().position(|&b| b == b' ').map_or(line.len(), |p| p + 1);
    let target = &line[start..];
    let target = &target[..target.iter().position(|&b| b == b' ').unwrap_or(target.len())];
    (target, &segment[line_end..])
}

impl Analyzers {
    pub fn new() -> Self {
        Analyzers {
            sources: WindowTable::with_window(WINDOW),
            domains: WindowTable::with_window(WINDOW),
            dhcp: WindowTable::with_window(WINDOW),
            scans: WindowTable::with_window(WINDOW),
            web: Web {
                clients: WindowTable::with_window(FLOOD_WINDOW),
                servers: WindowTable::with_window(FLOOD_WINDOW),
            },
            arp: arp::Bindings::default(),
            tls: Recent::new(CONNECTION_AGE),
            rpc: Recent::new(CONNECTION_AGE),
            ssh: Recent::new(CONNECTION_AGE),
            frags: Recent::new(frag::REASSEMBLY_TIME),
        }
    }

    pub fn sources(&self) -> &WindowTable<SourceWindow, SOURCES> {
        &self.sources
    }
    pub fn domains(&self) -> &WindowTable<dns::DomainWindow, DOMAINS, (IpAddr, u32)> {
        &self.domains
    }
    pub fn dhcp_clients(&self) -> &WindowTable<dhcp::ClientWindow, DHCP_CLIENTS, [u8; 6]> {
        &self.dhcp
    }
    pub fn scans(&self) -> &WindowTable<ScanWindow, SCANNERS> {
        &self.scans
    }
    pub fn web(&self) -> &Web {
        &self.web
    }
    /// A flow `src` began to `dst` (and its source and destination `ports`, for TCP and UDP)
    /// that failed.
    pub fn failed_flow(
        &mut self,
        src: IpAddr,
        dst: IpAddr,
        ports: Option<(u16, u16)>,
        now: Instant,
    ) {
        if let Some(w) = self.scans.window_mut(src, now) {
            w.failed += 1;
            if let Some((sport, dport)) = ports {
                w.ports.insert(u64::from(dport));
                w.pairs.insert(crate::hosts::pair_bits(dst, dport));
                w.src_ports.insert(u64::from(sport));
            }
            w.hosts.insert(crate::hosts::ip_bits(dst));
        }
    }
    pub fn counters(&self) -> AnalyzerCounters {
        AnalyzerCounters {
            tls_evicted: self.tls.evicted(),
            rpc_evicted: self.rpc.evicted(),
            arp_evicted: self.arp.evicted(),
            ssh_evicted: self.ssh.evicted(),
            frag_evicted: self.frags.evicted(),
        }
    }
    /// Evictions of the windowed tables (sources, domains, DHCP clients), summed.
    pub fn windows_evicted(&self) -> u64 {
        self.sources.counters().evicted
            + self.domains.counters().evicted
            + self.dhcp.counters().evicted
            + self.scans.counters().evicted
            + self.web.clients.counters().evicted
            + self.web.servers.counters().evicted
    }

    /// One IP packet: `payload` is its transport payload as captured, `from_initiator` whether
    /// its source began the flow it belongs to.
    pub fn ip(&mut self, ip: &IpInfo, payload: &[u8], from_initiator: bool, now: Instant) {
        let (sport, dport) = ip.l4.ports();
        let (client, server, client_port, server_port) = if from_initiator {
            (ip.src, ip.dst, sport, dport)
        } else {
            (ip.dst, ip.src, dport, sport)
        };
        let side = Side {
            conn: Conn { client, server, client_port, server_port },
            from_client: from_initiator,
        };
        if frag::concerns(ip) {
            frag::packet(&mut self.sources, &mut self.frags, ip, now);
        }
        if let L4::Tcp(t) = ip.l4 {
            tcp::segment(&mut self.sources, ip.src, &t, now);
        }
        match ip.l4 {
            L4::Udp(u) => {
                if let Some(d) = u.dns {
                    dns::packet(&mut self.domains, ip, &d, u.payload_len, now);
                }
                if let Some(d) = u.dhcp {
                    dhcp::packet(&mut self.dhcp, ip.src, &d, now);
                }
                if server_port == 88 {
                    kerberos::packet(&mut self.sources, &side, payload, false, now);
                }
            }
            L4::Tcp(t) if matches!(server_port, 22 | 2222) => {
                let closing = t.flags.fin() || t.flags.rst();
                ssh::packet(&mut self.sources, &mut self.ssh, &side, payload, closing, now)
            }
            L4::Tcp(_) if !payload.is_empty() => match server_port {
                21 => ftp::packet(&mut self.sources, &side, payload, now),
                88 => kerberos::packet(&mut self.sources, &side, payload, true, now),
                139 | 445 => smb::packet(&mut self.sources, &mut self.rpc, &side, payload, now),
                80 | 8000 | 8008 | 8080 | 8088 | 8888 => {
                    http::packet(&mut self.sources, &mut self.web, &side, payload, now)
                }
                _ => {
                    if tls::is_record(payload) {
                        let web = (server_port == 443).then_some(&mut self.web);
                        tls::packet(&mut self.sources, &mut self.tls, web, &side, payload, now);
                    } else if smb::is_dcerpc(payload) {
                        smb::dcerpc(&mut self.sources, &mut self.rpc, &side, payload, now);
                    }
                }
            },
            _ => {}
        }
    }

    /// One ARP packet (`meta` for its Ethernet source).
    pub fn arp(&mut self, meta: &PacketMeta, a: &ArpInfo, now: Instant) {
        arp::packet(&mut self.arp, &mut self.sources, meta, a, now);
    }

    /// Forget what has aged out.
    pub fn expire(&mut self, now: Instant) {
        self.sources.expire(now);
        self.domains.expire(now);
        self.dhcp.expire(now);
        self.scans.expire(now);
        self.web.clients.expire(now);
        self.web.servers.expire(now);
        self.tls.expire(now);
        self.rpc.expire(now);
        self.ssh.expire(now);
        self.frags.expire(now);
        self.arp.expire(now);
    }

    /// Forget everything (an unrelated input follows); counters stay.
    pub fn clear(&mut self) {
        self.sources.clear();
        self.domains.clear();
        self.dhcp.clear();
        self.scans.clear();
        self.web.clients.clear();
        self.web.servers.clear();
        self.tls.clear();
        self.rpc.clear();
        self.ssh.clear();
        self.frags.clear();
        self.arp.clear();
    }
}

/// A source's window, to record a fact in.
/// Record a failed authentication by `client` against `server`.
pub(crate) fn auth_failure(
    t: &mut WindowTable<SourceWindow, SOURCES>,
    client: IpAddr,
    server: IpAddr,
    service: Service,
    now: Instant,
) {
    failure(t, client, server, service, false, now)
}

/// As [`auth_failure`]; with `once_per_account`, a failure for an account already seen in the
/// window is not counted again (an unknown account asked for again and again is a client's
/// configuration, not a guess: a sprayer names a new account each time).
pub(crate) fn failure(
    t: &mut WindowTable<SourceWindow, SOURCES>,
    client: IpAddr,
    server: IpAddr,
    service: Service,
    once_per_account: bool,
    now: Instant,
) {
    if let Some(w) = t.window_mut(client, now) {
        let account = u64::from(w.pending_account);
        if once_per_account && w.accounts.contains(account) {
            return;
        }
        w.auth_failures += 1;
        w.auth_service = service;
        w.accounts.insert(account);
        w.auth_servers.insert(crate::hosts::ip_bits(server));
    }
}

/// Record a login attempt by `client` with the secret hashed as `secret`, for `account` (a
/// hash; `None`: the account its last attempt named), whatever its outcome.
pub(crate) fn guess(
    t: &mut WindowTable<SourceWindow, SOURCES>,
    client: IpAddr,
    service: Service,
    account: Option<u32>,
    secret: u32,
    now: Instant,
) {
    if let Some(w) = t.window_mut(client, now) {
        let account = account.unwrap_or(w.pending_account);
        w.credentials.insert(u64::from(account) << 32 | u64::from(secret));
        w.guess_service = service;
    }
}

/// Record a login of `client` a server accepted.
pub(crate) fn login_accepted(
    t: &mut WindowTable<SourceWindow, SOURCES>,
    client: IpAddr,
    now: Instant,
) {
    if let Some(w) = t.window_mut(client, now) {
        w.logins += 1;
    }
}

/// Record the account `client` is trying (its outcome comes later).
pub(crate) fn auth_attempt(
    t: &mut WindowTable<SourceWindow, SOURCES>,
    client: IpAddr,
    account: &[u8],
    now: Instant,
) {
    if let Some(w) = t.window_mut(client, now) {
        w.pending_account = fnv(account);
    }
}

/// A bounded map of small per-connection (or per-address) state, each entry with when it was
/// last touched: full ([`Self::HIGH_WATER`] of its `N` slots), it evicts its oldest entries
/// (counted); entries untouched for `max_age` go.
#[derive(Debug)]
pub struct Recent<K, V, const N: usize> {
    map: crate::flow::Map<crate::hosts::HostKey<K>, (V, Instant), N>,
    max_age: Duration,
    evicted: u64,
}

impl<K: TableKey, V: Copy, const N: usize> Recent<K, V, N> {
    /// Entries held at most: 7/8 of the slots, as the window tables hold
    /// ([`WindowTable::HIGH_WATER`]): a hash index filled to its last slot has runs as long as
    /// the table, walked by every miss and removal.
    pub const HIGH_WATER: usize = if N >= 8 { N - N / 8 } else { N };

    pub fn new(max_age: Duration) -> Self {
        Recent { map: crate::flow::Map::new(), max_age, evicted: 0 }
    }
    pub fn evicted(&self) -> u64 {
        self.evicted
    }
    pub fn len(&self) -> usize {
        self.map.len()
    }
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
    pub fn get(&self, k: &K) -> Option<&V> {
        self.map.get(&crate::hosts::HostKey(*k)).map(|(v, _)| v)
    }
    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.map.iter().map(|(k, (v, _))| (&k.0, v))
    }
    /// The entry of `k`, touched at `now`, if there is one.
    pub fn get_mut(&mut self, k: &K, now: Instant) -> Option<&mut V> {
        let (v, at) = self.map.get_mut(&crate::hosts::HostKey(*k))?;
        if now > *at {
            *at = now;
        }
        Some(v)
    }
    /// The entry of `k`, made with `v` if there is none (evicting the oldest if full).
    pub fn entry(&mut self, k: K, v: V, now: Instant) -> Option<&mut V> {
        let key = crate::hosts::HostKey(k);
        if !self.map.contains_key(&key) {
            if self.map.len() >= Self::HIGH_WATER {
                self.expire(now);
            }
            if self.map.len() >= Self::HIGH_WATER {
                self.evict(now);
            }
            self.map.insert(key, (v, now)).ok()?;
        }
        self.get_mut(&k, now)
    }
    /// Make room in a full table as the window tables do ([`crate::hosts::oldest_eighth`]).
    /// One at a time, a table kept full by a stream of new keys scanned all its entries twice
    /// (to expire, then for the oldest) at every new key: the merged public captures' 43,000
    /// fragments (40,000 of them IPv6's, behind hop-by-hop options; 41,000 datagrams evicted)
    /// made `Recent::entry` 14% of `analyze --emit stats` (`callgrind`: 2,168 million
    /// instructions in all, 2,092 million with this and [`Self::HIGH_WATER`]).
    fn evict(&mut self, now: Instant) {
        let at = |e: &(V, Instant)| e.1.total_micros();
        let Some(oldest) = self.map.values().map(at).min() else { return };
        let cutoff = crate::hosts::oldest_eighth(oldest, now);
        let mut left = (N / 8).max(1);
        let mut i = self.map.len();
        while i > 0 && left > 0 {
            i -= 1;
            let Some((k, e)) = self.map.get_index(i) else { continue };
            if at(e) <= cutoff {
                let k = *k;
                self.map.swap_remove(&k);
                self.evicted += 1;
                left -= 1;
            }
        }
    }

    pub fn remove(&mut self, k: &K) {
        self.map.swap_remove(&crate::hosts::HostKey(*k));
    }
    pub fn expire(&mut self, now: Instant) {
        // Last to first, as the host table does: a removal swaps the last entry in.
        let mut i = self.map.len();
        while i > 0 {
            i -= 1;
            let Some((k, (_, at))) = self.map.get_index(i) else { continue };
            if now - *at >= self.max_age {
                let k = *k;
                self.map.swap_remove(&k);
            }
        }
    }
    pub fn clear(&mut self) {
        self.map.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::{find, Recent};
    use crate::{Duration, Instant};
    use proptest::prelude::*;

    #[test]
    fn a_full_recent_table_evicts_its_oldest_entries_first_and_counts_them() {
        type T = Recent<core::net::IpAddr, u32, 64>;
        let mut t = T::new(Duration::from_secs(3600));
        let at = |s: u64| Instant::from_micros(s as i64 * 1_000_000);
        let ip = |k: u32| core::net::IpAddr::from(k.to_be_bytes());
        // Keys 0.. touched a second apart: each new key past the high water makes room.
        for k in 0..200u32 {
            assert!(t.entry(ip(k), k, at(u64::from(k))).is_some());
            assert!(t.len() <= T::HIGH_WATER, "{} held at key {k}", t.len());
        }
        assert_eq!(T::HIGH_WATER, 56);
        assert_eq!(t.evicted() + t.len() as u64, 200, "every key held or counted");
        // What is held is the newest keys, each with its value.
        let oldest_held = 200 - t.len() as u32;
        for k in 0..200u32 {
            assert_eq!(t.get(&ip(k)).copied(), (k >= oldest_held).then_some(k), "key {k}");
        }
        // A key touched again is not among the oldest any more (those go, up to an eighth of
        // the slots at once, from the oldest eighth of the time since the oldest).
        let survivor = oldest_held;
        assert!(t.get_mut(&ip(survivor), at(1000)).is_some());
        for k in 200..210u32 {
            t.entry(ip(k), k, at(1000 + u64::from(k)));
        }
        assert_eq!(t.get(&ip(survivor)), Some(&survivor));
        assert!((200..210u32).all(|k| t.get(&ip(k)) == Some(&k)), "the new keys are held");
        assert_eq!(t.evicted() + t.len() as u64, 210);
        // A key stamped before every entry (packets out of order) still finds room.
        assert_eq!(t.entry(ip(999), 999, at(0)).copied(), Some(999));
    }

    #[test]
    fn keys_that_differ_only_in_their_words_top_bits_want_different_slots() {
        use core::hash::BuildHasher;
        let b = hash32::BuildHasherDefault::<crate::flow::WordHasher>::default();
        // heapless keeps the hash's low 16 bits and a table of 64 slots its low six.
        let slots = |keys: &mut dyn Iterator<Item = u64>| {
            keys.map(|h| h as u16 & 63).collect::<std::collections::BTreeSet<_>>().len()
        };
        // One client's connections to one server, by client port (the port sits at the top of
        // the key's word).
        let conns = (0..64u16).map(|i| {
            let c = super::Conn {
                client: [10, 0, 0, 1].into(),
                server: [10, 0, 0, 2].into(),
                client_port: 40000 + i,
                server_port: 443,
            };
            b.hash_one(crate::hosts::HostKey(c))
        });
        assert!(slots(&mut conns.into_iter()) >= 32);
        // IPv6 fragments of one pair whose ids differ only in their high half.
        let frags = (0..64u32).map(|i| {
            let k = super::frag::DatagramKey {
                src: "2001:db8:1::2".parse().unwrap(),
                dst: "2001:db8:1::1".parse().unwrap(),
                id: i.wrapping_mul(0x0b0c) << 16,
                protocol: 58,
            };
            b.hash_one(crate::hosts::HostKey(k))
        });
        assert!(slots(&mut frags.into_iter()) >= 32);
    }

    proptest! {
        #[test]
        fn find_is_the_first_place_a_needle_occurs(
            // A small alphabet, so that needles occur, overlap and nearly occur.
            hay in proptest::collection::vec(b'a'..=b'c', 0..300),
            needle in proptest::collection::vec(b'a'..=b'c', 0..6),
        ) {
            let naive = if needle.is_empty() {
                None
            } else {
                hay.windows(needle.len()).position(|w| w == needle.as_slice())
            };
            prop_assert_eq!(find(&hay, &needle), naive);
        }
    }
}
