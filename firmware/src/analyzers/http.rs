//! HTTP: the server's refusals of credentials (401 Unauthorized, 407 Proxy Authentication
//! Required), counted against the client. A client fetching pages gets 200s and 304s and counts
//! nothing here, however many it fetches. POSTs in a row to one path are counted beside them,
//! and every request (a segment from the client that begins with a method) as a web request of
//! the client and of the server, for HTTP floods; each request is read for attacks
//! ([`super::webattack`]) and for a scanning tool that names itself ([`super::scanner`]).

use super::{auth_failure, fnv, web_request, Service, Side, SourceWindow, Web, SOURCES};
use crate::hosts::WindowTable;
use crate::Instant;

/// The request methods a request line begins with (RFC 9110, and WebDAV's common ones).
const METHODS: [&[u8]; 9] = [
    b"GET ",
    b"POST ",
    b"HEAD ",
    b"PUT ",
    b"DELETE ",
    b"OPTIONS ",
    b"PATCH ",
    b"PROPFIND ",
    b"CONNECT ",
];

pub(crate) fn packet(
    sources: &mut WindowTable<SourceWindow, SOURCES>,
    web: &mut Web,
    side: &Side,
    payload: &[u8],
    now: Instant,
) {
    if side.from_client {
        if METHODS.iter().any(|m| payload.starts_with(m)) {
            web_request(web, side, now);
            let attack = super::webattack::classify(payload);
            if attack != super::webattack::WebAttack::None {
                if let Some(w) = sources.window_mut(side.conn.client, now) {
                    w.web_attacks += 1;
                    w.web_attack = attack;
                }
            }
            if super::scanner::from_scanner(payload) {
                if let Some(w) = sources.window_mut(side.conn.client, now) {
                    w.scanner_requests += 1;
                }
            }
        }
        if let Some(rest) = payload.strip_prefix(b"POST ") {
            let end = rest.iter().take(256).position(|&b| b == b' ' || b == b'?');
            let path = fnv(&rest[..end.unwrap_or(rest.len().min(256))]);
            if let Some(w) = sources.window_mut(side.conn.client, now) {
                if w.post_path == path {
                    w.posts_one_path += 1;
                } else {
                    (w.post_path, w.posts_one_path) = (path, 1);
                }
            }
        }
        return;
    }
    // "HTTP/1.1 401 ..." : the status code follows the version and one space.
    if let [b'H', b'T', b'T', b'P', b'/', _, b'.', _, b' ', b'4', b'0', d, b' ', ..] = payload {
        if matches!(d, b'1' | b'7') {
            auth_failure(sources, side.conn.client, side.conn.server, Service::Http, now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analyzers::{Analyzers, Conn, WINDOW};

    #[test]
    fn test_only_refusals_count() {
        let mut an = Analyzers::new();
        let conn = Conn {
            client: [10, 0, 0, 1].into(),
            server: [10, 0, 0, 2].into(),
            client_port: 40000,
            server_port: 80,
        };
        let t = Instant::from_secs(1);
        let server = Side { conn, from_client: false };
        for p in [
            &b"HTTP/1.1 200 OK\r\n"[..],
            b"HTTP/1.1 404 Not Found\r\n",
            b"HTTP/1.0 401 Unauthorized\r\n",
            b"HTTP/1.1 407 Proxy\r\n",
            b"HTTP/1.1 40",
        ] {
            packet(&mut an.sources, &mut an.web, &server, p, t);
        }
        packet(
            &mut an.sources,
            &mut an.web,
            &Side { conn, from_client: true },
            b"HTTP/1.1 401 x",
            t,
        );
        let f = an.sources().get(&conn.client).unwrap().features(t, WINDOW);
        assert_eq!(f.auth_failures, 2.0);
        // POSTs in a row to one path, whatever the query string.
        let client = Side { conn, from_client: true };
        for p in
            [&b"POST /login HTTP/1.1\r\n"[..], b"POST /login?x=1 HTTP/1.1", b"POST /login HTTP/1.1"]
        {
            packet(&mut an.sources, &mut an.web, &client, p, t);
        }
        let f = an.sources().get(&conn.client).unwrap().features(t, WINDOW);
        assert_eq!(f.posts_one_path, 3.0);
        packet(&mut an.sources, &mut an.web, &client, b"POST /other HTTP/1.1", t);
        let f = an.sources().get(&conn.client).unwrap().features(t, WINDOW);
        assert_eq!(f.posts_one_path, 1.0);
    }
}
