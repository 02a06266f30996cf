//! SSH: refused logins, seen through the encryption by the sizes of the server's packets, as
//! Zeek's SSH analyzer infers authentication outcomes.
//!
//! Until a side's NEWKEYS its binary packets are in the clear, and the analyzer reads their
//! message codes to learn when the key exchange is done. After it, the server answers each
//! authentication request of the client: SERVICE_ACCEPT, then a USERAUTH_FAILURE for every try
//! refused, messages short enough to be padded to one size, so a run of segments of one size.
//! A login that succeeds is followed by what a session does (USERAUTH_SUCCESS, a shorter
//! message; OpenSSH's host-key announcement; channel open, data, exit status), segments of many
//! sizes. When the connection closes (FIN or RST from either side), a session that showed a run
//! of three or more segments of one size and at most [`PRELUDE`] of any other size was a session
//! of refused logins: the run less two (SERVICE_ACCEPT and the "none" method a client asks
//! first) is counted as failures against the client. A guesser (hydra, medusa, a script) opens
//! one such session after another; a person who mistypes a password makes one.

use super::{auth_failure, Recent, Service, Side, SourceWindow, SOURCES};
use crate::hosts::WindowTable;
use crate::Instant;

/// Slots for the SSH connections followed at once (7/8 held, `Recent::HIGH_WATER`).
pub const CONNECTIONS: usize = 128;

/// Server segments of other sizes a session of refused logins may show besides its run: the
/// server's EXT_INFO (RFC 8308), a SERVICE_ACCEPT padded to another size, and a DISCONNECT
/// ("too many authentication failures").
pub const PRELUDE: u16 = 3;

/// Server segments after the key exchange beyond which a session is a session, whatever sizes.
const MAX_SEGMENTS: u16 = 64;

const NEWKEYS: u8 = 21;

/// What one connection has shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Conn {
    pub client_newkeys: bool,
    pub server_newkeys: bool,
    /// Server segments with a payload after its NEWKEYS.
    pub segments: u16,
    /// The size of the last of them, how many in a row had it, and the longest such run.
    pub size: u16,
    pub run: u16,
    pub longest: u16,
}

impl Conn {
    /// Refused tries this session showed, if it was a session of refused logins.
    pub fn refused(&self) -> u16 {
        let kex = self.client_newkeys && self.server_newkeys;
        if !kex || self.longest < 3 || self.segments - self.longest > PRELUDE {
            return 0;
        }
        self.longest - 2
    }

    fn server_segment(&mut self, len: u16) {
        if self.segments >= MAX_SEGMENTS {
            // Long past any login: make it look like the session it is.
            self.longest = 0;
            return;
        }
        self.segments += 1;
        if len == self.size {
            self.run += 1;
        } else {
            (self.size, self.run) = (len, 1);
        }
        self.longest = self.longest.max(self.run);
    }
}

/// SSH connections whose banner was seen, by client and server (forgotten after 10 minutes).
pub type Connections = Recent<super::Conn, Conn, CONNECTIONS>;

/// Whether the clear binary packets that start this segment hold a NEWKEYS: each is a length
/// (4 bytes), a padding length (1) and the message code.
fn has_newkeys(p: &[u8]) -> bool {
    let mut at = 0usize;
    for _ in 0..8 {
        let (Some(len), Some(&code)) = (p.get(at..at + 4), p.get(at + 5)) else {
            return false;
        };
        let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
        if !(5..=35_000).contains(&len) {
            return false;
        }
        if code == NEWKEYS {
            return true;
        }
        at += 4 + len;
    }
    false
}

/// One TCP segment of a connection to an SSH port: `payload` (maybe empty) and whether it
/// carries FIN or RST.
pub(crate) fn packet(
    sources: &mut WindowTable<SourceWindow, SOURCES>,
    conns: &mut Connections,
    side: &Side,
    payload: &[u8],
    closing: bool,
    now: Instant,
) {
    let c = if payload.starts_with(b"SSH-") {
        conns.entry(side.conn, Conn::default(), now)
    } else {
        conns.get_mut(&side.conn, now)
    };
    let Some(c) = c else { return };
    if !payload.is_empty() && !payload.starts_with(b"SSH-") {
        let newkeys = if side.from_client { c.client_newkeys } else { c.server_newkeys };
        if !newkeys {
            if has_newkeys(payload) {
                if side.from_client {
                    c.client_newkeys = true;
                } else {
                    c.server_newkeys = true;
                }
            }
        } else if !side.from_client {
            c.server_segment(u16::try_from(payload.len()).unwrap_or(u16::MAX));
        }
    }
    if closing {
        let refused = c.refused();
        conns.remove(&side.conn);
        for _ in 0..refused {
            auth_failure(sources, side.conn.client, side.conn.server, Service::Ssh, now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analyzers::{Analyzers, Conn as Key, WINDOW};

    fn key() -> Key {
        Key {
            client: [192, 168, 56, 1].into(),
            server: [192, 168, 56, 103].into(),
            client_port: 55470,
            server_port: 22,
        }
    }

    /// A clear binary packet with `code` (the rest zero), of `len` bytes after its length.
    fn clear(code: u8, len: usize) -> heapless::Vec<u8, 64> {
        let mut p = heapless::Vec::new();
        p.extend_from_slice(&(len as u32).to_be_bytes()).unwrap();
        p.push(4).unwrap();
        p.push(code).unwrap();
        p.resize(4 + len, 0).unwrap();
        p
    }

    /// A session: banners, key exchange (the server's KEXDH_REPLY and NEWKEYS in one segment),
    /// then the server's segments after it, of the sizes given, then the client's FIN.
    fn session(an: &mut Analyzers, key: Key, server_sizes: &[usize], t: Instant) {
        let cli = Side { conn: key, from_client: true };
        let srv = Side { conn: key, from_client: false };
        let mut go = |side: &Side, p: &[u8], closing: bool| {
            packet(&mut an.sources, &mut an.ssh, side, p, closing, t)
        };
        go(&srv, b"SSH-2.0-OpenSSH_6.7p1 Debian-3\r\n", false);
        go(&cli, b"SSH-2.0-OpenSSH_6.2\r\n", false);
        go(&cli, &clear(20, 40), false); // KEXINIT
        go(&srv, &clear(20, 40), false);
        go(&cli, &clear(30, 40), false); // KEXDH_INIT
        let mut reply = heapless::Vec::<u8, 128>::new();
        reply.extend_from_slice(&clear(31, 40)).unwrap();
        reply.extend_from_slice(&clear(NEWKEYS, 12)).unwrap();
        go(&srv, &reply, false);
        go(&cli, &clear(NEWKEYS, 12), false);
        for &n in server_sizes {
            go(&cli, &[0x5a; 80], false); // an encrypted request
            go(&srv, &[0xa5; 1024][..n], false);
        }
        go(&cli, &[], true);
    }

    fn failures(an: &Analyzers) -> f32 {
        let t = Instant::from_secs(1);
        an.sources().get(&key().client).map_or(0.0, |w| w.features(t, WINDOW).auth_failures)
    }

    #[test]
    fn test_a_session_of_refused_logins_counts_its_tries() {
        let mut an = Analyzers::new();
        let t = Instant::from_secs(1);
        // SERVICE_ACCEPT, FAILURE for "none", three passwords refused: all 56 bytes.
        session(&mut an, key(), &[56; 5], t);
        assert_eq!(failures(&an), 3.0);
        assert_eq!(an.sources().get(&key().client).unwrap().cur.auth_service, Service::Ssh);
        assert!(an.ssh.is_empty(), "closed connections are forgotten");
        // With EXT_INFO first and a DISCONNECT last, as a modern server sends.
        session(&mut an, Key { client_port: 55471, ..key() }, &[120, 56, 56, 56, 56, 88], t);
        assert_eq!(failures(&an), 5.0);
    }

    #[test]
    fn test_sessions_that_log_in_count_nothing() {
        let mut an = Analyzers::new();
        let t = Instant::from_secs(1);
        // One refused try, then success and a command: many sizes after the run.
        let login = [56, 56, 56, 40, 600, 72, 56, 88, 104, 56, 72];
        session(&mut an, key(), &login, t);
        // Key login, straight in: never a run of three.
        session(&mut an, Key { client_port: 55472, ..key() }, &[56, 56, 40, 600, 72, 88], t);
        // A client that asks "none" and gives up: no guess.
        session(&mut an, Key { client_port: 55473, ..key() }, &[56, 56], t);
        // No key exchange at all (a banner grabber): nothing to count.
        let k = Key { client_port: 55474, ..key() };
        packet(
            &mut an.sources,
            &mut an.ssh,
            &Side { conn: k, from_client: false },
            b"SSH-2.0-x\r\n",
            false,
            t,
        );
        for _ in 0..5 {
            packet(
                &mut an.sources,
                &mut an.ssh,
                &Side { conn: k, from_client: false },
                &[7; 56],
                false,
                t,
            );
        }
        packet(&mut an.sources, &mut an.ssh, &Side { conn: k, from_client: true }, &[], true, t);
        // A long session of equal-sized segments (an idle keep-alive) is a session.
        session(&mut an, Key { client_port: 55475, ..key() }, &[56; 100], t);
        assert_eq!(failures(&an), 0.0);
    }

    #[test]
    fn test_newkeys_is_found_behind_other_packets_and_garbage_is_not() {
        let mut two = heapless::Vec::<u8, 128>::new();
        two.extend_from_slice(&clear(31, 40)).unwrap();
        two.extend_from_slice(&clear(NEWKEYS, 12)).unwrap();
        assert!(has_newkeys(&two));
        assert!(!has_newkeys(&clear(20, 40)));
        for n in 0..two.len() {
            let _ = has_newkeys(&two[n..]);
            let _ = has_newkeys(&two[..n]);
        }
        assert!(!has_newkeys(&[0xff; 64]));
    }
}
