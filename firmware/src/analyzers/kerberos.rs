//! Kerberos (port 88, UDP or TCP): the client principal an AS-REQ names, and the KDC's
//! KRB-ERROR codes that mean a wrong guess: pre-authentication failed (24, a wrong password),
//! client unknown (6, a wrong account), client revoked (18, locked out). Pre-authentication
//! required (25) is the normal first answer and is not a failure.
//!
//! A minimal DER reader walks the outer structures only; lengths are checked against what is
//! held at every step, so a cut or crafted message gives no fact, never a read past the end.

use super::{auth_attempt, failure, fnv, Service, Side, SourceWindow, SOURCES};
use crate::hosts::WindowTable;
use crate::Instant;

/// KRB-ERROR codes that are a failed guess.
pub const FAILURES: [u32; 3] = [6, 18, 24];

/// One DER element: (tag, contents, what follows). `None` if it does not fit.
fn tlv(p: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = p.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 3 || rest.len() < n {
            return None;
        }
        let len = rest[..n].iter().fold(0usize, |a, &b| (a << 8) | usize::from(b));
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

/// The context-tagged fields `[n]` of a SEQUENCE's contents, each with its n.
fn fields(mut p: &[u8]) -> impl Iterator<Item = (u8, &[u8])> {
    core::iter::from_fn(move || {
        let (tag, body, rest) = tlv(p)?;
        p = rest;
        Some((tag.wrapping_sub(0xa0), body))
    })
    .take(16)
}

fn integer(p: &[u8]) -> Option<u32> {
    match tlv(p)? {
        (0x02, v, _) if !v.is_empty() && v.len() <= 4 => {
            Some(v.iter().fold(0u32, |a, &b| (a << 8) | u32::from(b)))
        }
        _ => None,
    }
}

/// An application-tagged message's SEQUENCE contents: (application number, contents).
fn message(p: &[u8]) -> Option<(u8, &[u8])> {
    let (tag, body, _) = tlv(p)?;
    if tag & 0xe0 != 0x60 {
        return None;
    }
    match tlv(body)? {
        (0x30, seq, _) => Some((tag & 0x1f, seq)),
        _ => None,
    }
}

pub(crate) fn packet(
    sources: &mut WindowTable<SourceWindow, SOURCES>,
    side: &Side,
    payload: &[u8],
    tcp: bool,
    now: Instant,
) {
    // Over TCP each message has a four-byte length in front.
    let p = if tcp { payload.get(4..).unwrap_or(&[]) } else { payload };
    let Some((app, seq)) = message(p) else { return };
    let c = &side.conn;
    match app {
        // AS-REQ from the client: req-body [4] -> cname [1].
        10 if side.from_client => {
            let body = fields(seq).find(|(n, _)| *n == 4).map(|(_, b)| b);
            let cname = body.and_then(|b| match tlv(b) {
                Some((0x30, s, _)) => fields(s).find(|(n, _)| *n == 1).map(|(_, v)| v),
                _ => None,
            });
            if let Some(cname) = cname {
                auth_attempt(sources, c.client, cname, now);
            }
        }
        // KRB-ERROR from the KDC: error-code [6], cname [8] when it is given.
        30 if !side.from_client => {
            let mut code = None;
            let mut cname = None;
            for (n, v) in fields(seq) {
                match n {
                    6 => code = integer(v),
                    8 => cname = Some(v),
                    _ => {}
                }
            }
            if let Some(code) = code.filter(|e| FAILURES.contains(e)) {
                if let Some(name) = cname {
                    if let Some(w) = sources.window_mut(c.client, now) {
                        w.pending_account = fnv(name);
                    }
                }
                // An unknown account counts once: asked for again, it is a misconfigured client.
                failure(sources, c.client, c.server, Service::Kerberos, code == 6, now);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analyzers::{Analyzers, Conn, WINDOW};

    /// A KRB-ERROR with `code` for principal `user` (only the fields read here).
    fn krb_error(code: u8, user: &[u8]) -> heapless::Vec<u8, 128> {
        let mut name = heapless::Vec::<u8, 64>::new();
        // PrincipalName: [0] name-type 1, [1] SEQUENCE { GeneralString user }
        name.extend_from_slice(&[
            0x30,
            (user.len() + 11) as u8,
            0xa0,
            3,
            2,
            1,
            1,
            0xa1,
            (user.len() + 4) as u8,
            0x30,
            (user.len() + 2) as u8,
            0x1b,
            user.len() as u8,
        ])
        .unwrap();
        name.extend_from_slice(user).unwrap();
        let mut seq = heapless::Vec::<u8, 128>::new();
        seq.extend_from_slice(&[0xa0, 3, 2, 1, 5, 0xa1, 3, 2, 1, 30, 0xa6, 3, 2, 1, code]).unwrap();
        seq.extend_from_slice(&[0xa8, name.len() as u8]).unwrap();
        seq.extend_from_slice(&name).unwrap();
        let mut m = heapless::Vec::<u8, 128>::new();
        m.extend_from_slice(&[0x7e, (seq.len() + 2) as u8, 0x30, seq.len() as u8]).unwrap();
        m.extend_from_slice(&seq).unwrap();
        m
    }

    #[test]
    fn test_preauth_failures_by_account() {
        let mut an = Analyzers::new();
        let conn = Conn {
            client: [10, 0, 0, 5].into(),
            server: [10, 0, 0, 1].into(),
            client_port: 50000,
            server_port: 88,
        };
        let kdc = Side { conn, from_client: false };
        let t = Instant::from_secs(1);
        for user in [&b"alice"[..], b"bob", b"carol", b"dave"] {
            packet(&mut an.sources, &kdc, &krb_error(24, user), false, t);
        }
        // Pre-authentication required is the normal first answer.
        packet(&mut an.sources, &kdc, &krb_error(25, b"erin"), false, t);
        let f = an.sources().get(&conn.client).unwrap().features(t, WINDOW);
        assert_eq!(f.auth_failures, 4.0);
        assert!((3.8..4.2).contains(&f.accounts), "{}", f.accounts);
        // Every cut of the message: no panic, and no fact from a message that is not whole.
        let whole = krb_error(6, b"frank");
        for n in 0..whole.len() {
            packet(&mut an.sources, &kdc, &whole[..n], false, t);
        }
        let f = an.sources().get(&conn.client).unwrap().features(t, WINDOW);
        assert_eq!(f.auth_failures, 4.0);
        // An unknown account asked for again and again counts once; a wrong password each time.
        for _ in 0..5 {
            packet(&mut an.sources, &kdc, &krb_error(6, b"ghost"), false, t);
        }
        let f = an.sources().get(&conn.client).unwrap().features(t, WINDOW);
        assert_eq!(f.auth_failures, 5.0);
        for _ in 0..5 {
            packet(&mut an.sources, &kdc, &krb_error(24, b"alice"), false, t);
        }
        let f = an.sources().get(&conn.client).unwrap().features(t, WINDOW);
        assert_eq!(f.auth_failures, 10.0);
    }
}
