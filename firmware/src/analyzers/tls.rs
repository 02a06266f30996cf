//! TLS: record types and heartbeats (RFC 6520), for Heartbleed (CVE-2014-0160).
//!
//! Read as Zeek's heartbleed policy reads them: a heartbeat request in the clear whose claimed
//! payload is longer than its record (the exploit itself); a heartbeat from the client before any
//! application data (no real client needs one then: that is a scanner or an exploit, encrypted or
//! not); a heartbeat answer longer than the request (memory coming back). Records are read where
//! a segment starts with one, and the rest of the segment's records after it; a record that spans
//! segments is read by its header. Per connection a few bytes of state, in a bounded table.

use super::{web_request, Recent, Side, SourceWindow, Web, SOURCES};
use crate::hosts::WindowTable;
use crate::Instant;

/// Slots for the TLS connections followed at once (7/8 held, `Recent::HIGH_WATER`).
pub const CONNECTIONS: usize = 256;

const CHANGE_CIPHER_SPEC: u8 = 20;
const HANDSHAKE: u8 = 22;
const APPLICATION_DATA: u8 = 23;
const HEARTBEAT: u8 = 24;

/// What a connection has shown so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Conn {
    pub app_data: bool,
    /// The length of the client's last heartbeat record, waiting for its answer.
    pub request_len: Option<u16>,
    /// Already counted: one connection is one fact.
    pub flagged: bool,
}

/// TLS connections with a handshake seen, by client and server (forgotten after 10 minutes).
pub type Connections = Recent<super::Conn, Conn, CONNECTIONS>;

/// A TLS record header: type 20 to 24, version 3.x (SSL 3 to TLS 1.3's legacy 3.3).
pub fn is_record(p: &[u8]) -> bool {
    matches!(p, [20..=24, 3, 0..=4, _, _, ..])
}

/// The records that start in this segment: (type, record length, the body as captured).
fn records(p: &[u8]) -> impl Iterator<Item = (u8, u16, &[u8])> {
    let mut rest = p;
    core::iter::from_fn(move || {
        if !is_record(rest) {
            return None;
        }
        let len = u16::from_be_bytes([rest[3], rest[4]]);
        let body = &rest[5..];
        let whole = usize::from(len).min(body.len());
        let r = (rest[0], len, &body[..whole]);
        rest = &body[whole..];
        Some(r)
    })
    .take(16)
}

/// One segment of a connection; `web` for one to 443, whose ClientHellos are web requests.
pub(crate) fn packet(
    sources: &mut WindowTable<SourceWindow, SOURCES>,
    conns: &mut Connections,
    mut web: Option<&mut Web>,
    side: &Side,
    payload: &[u8],
    now: Instant,
) {
    for (kind, len, body) in records(payload) {
        let exploit = match kind {
            HANDSHAKE if side.from_client => {
                let _ = conns.entry(side.conn, Conn::default(), now);
                // A ClientHello (handshake type 1): a new session, or a resumed one.
                if let (Some(web), [1, ..]) = (web.as_deref_mut(), body) {
                    web_request(web, side, now);
                }
                false
            }
            APPLICATION_DATA | CHANGE_CIPHER_SPEC => {
                if kind == APPLICATION_DATA {
                    if let Some(c) = conns.get_mut(&side.conn, now) {
                        c.app_data = true;
                    }
                }
                false
            }
            HEARTBEAT => heartbeat(conns, side, len, body, now),
            _ => false,
        };
        if exploit {
            let first = match conns.get_mut(&side.conn, now) {
                Some(c) => !core::mem::replace(&mut c.flagged, true),
                None => true,
            };
            if first {
                if let Some(w) = sources.window_mut(side.conn.client, now) {
                    w.heartbleed += 1;
                }
            }
        }
    }
}

/// Whether this heartbeat record is an exploit, and what it leaves for its answer.
fn heartbeat(conns: &mut Connections, side: &Side, len: u16, body: &[u8], now: Instant) -> bool {
    // In the clear (before ChangeCipherSpec): type 1 request, claimed payload length, payload,
    // at least 16 bytes of padding. A claim beyond the record is the exploit.
    if let [1, hi, lo, ..] = body {
        let claimed = u32::from(u16::from_be_bytes([*hi, *lo]));
        if side.from_client && claimed + 3 + 16 > u32::from(len) {
            return true;
        }
    }
    let Some(c) = conns.get_mut(&side.conn, now) else {
        // No handshake seen (the capture began mid-connection): nothing to compare with.
        return false;
    };
    if side.from_client {
        c.request_len = Some(len);
        !c.app_data
    } else {
        // An answer longer than what was asked carries memory the client never sent.
        c.request_len.take().is_some_and(|asked| len > asked)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analyzers::{Analyzers, Conn as Key, WINDOW};
    use core::net::IpAddr;

    fn side(from_client: bool) -> Side {
        Side {
            conn: Key {
                client: [10, 0, 0, 1].into(),
                server: [10, 0, 0, 2].into(),
                client_port: 50000,
                server_port: 443,
            },
            from_client,
        }
    }

    fn hits(an: &Analyzers) -> f32 {
        let c: IpAddr = [10, 0, 0, 1].into();
        an.sources().get(&c).map_or(0.0, |w| w.features(Instant::from_secs(1), WINDOW).heartbleed)
    }

    fn feed(an: &mut Analyzers, from_client: bool, p: &[u8]) {
        packet(&mut an.sources, &mut an.tls, None, &side(from_client), p, Instant::from_secs(0));
    }

    #[test]
    fn test_heartbleed_in_the_clear() {
        let mut an = Analyzers::new();
        // Record of 3 bytes claiming 16,384 (the exploit's shape, as in Zeek's heartbleed.pcap).
        feed(&mut an, true, &[24, 3, 2, 0, 3, 1, 0x40, 0]);
        assert_eq!(hits(&an), 1.0);
    }

    #[test]
    fn test_honest_heartbeat_after_data_is_fine() {
        let mut an = Analyzers::new();
        feed(&mut an, true, &[22, 3, 3, 0, 4, 1, 0, 0, 0]);
        feed(&mut an, true, &[23, 3, 3, 0, 2, 0xaa, 0xbb]);
        // 1, length 2, 2 bytes, 16 bytes of padding: 21 bytes.
        let mut hb = [0u8; 26];
        hb[..8].copy_from_slice(&[24, 3, 3, 0, 21, 1, 0, 2]);
        feed(&mut an, true, &hb);
        let mut answer = hb;
        answer[5] = 2;
        feed(&mut an, false, &answer);
        assert_eq!(hits(&an), 0.0);
    }

    #[test]
    fn test_encrypted_heartbeat_before_data_and_a_longer_answer() {
        let mut an = Analyzers::new();
        feed(&mut an, true, &[22, 3, 3, 0, 4, 1, 0, 0, 0]);
        // Encrypted: the body is ciphertext (explicit nonce first), no data yet.
        feed(&mut an, true, &[24, 3, 3, 0, 32, 0, 0, 0, 0, 0, 0, 0, 1]);
        assert_eq!(hits(&an), 1.0);
        // Its answer, 16 KiB: the same connection is one fact.
        feed(&mut an, false, &[24, 3, 3, 0x40, 0x13, 0x55]);
        assert_eq!(hits(&an), 1.0);
    }

    #[test]
    fn test_records_are_bounded_and_never_read_past_the_payload() {
        let mut an = Analyzers::new();
        let mut p = [0u8; 200];
        for i in 0..40 {
            p[i * 5..i * 5 + 5].copy_from_slice(&[24, 3, 3, 0, 0]);
        }
        feed(&mut an, true, &p);
        assert!(hits(&an) <= 1.0);
        for n in 0..10 {
            feed(&mut an, true, &[24, 3, 3, 0xff, 0xff, 1, 0xff, 0xff, 0][..n]);
        }
    }
}
