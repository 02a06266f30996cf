//! HTTP: the server's refusals of credentials (401 Unauthorized, 407 Proxy Authentication
//! Required), counted against the client. A client fetching pages gets 200s and 304s and counts
//! nothing here, however many it fetches. POSTs in a row to one path are counted beside them,
//! and every request (a segment from the client that begins with a method) as a web request of
//! the client and of the server, for HTTP floods; each request is read for attacks
//! ([`super::webattack`]) and for a scanning tool that names itself ([`super::scanner`]).
//!
//! A request that carries a credential (a login form's account and password fields, url-encoded
//! or JSON, or an HTTP Basic header) is a login attempt: its credential, hashed, is a guess of
//! the client's ([`super::guess`]). Servers answer a failed form login as they please (200 with
//! the form again, a redirect, an error), so the outcome is not read; many distinct credentials
//! from one client is guessing whatever the answers were.

use super::{
    auth_failure, find, find_ci, fnv, guess, web_request, Service, Side, SourceWindow, Web, SOURCES,
};
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
            if let Some((account, secret)) = credential(payload) {
                guess(sources, side.conn.client, Service::Http, Some(account), secret, now);
            }
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

/// The most of a request's head and of its body read for a credential.
const HEAD_MAX: usize = 8192;
const BODY_MAX: usize = 2048;

/// Whether a form field's name is a password's: `password`, `pass`, `passwd`, `pwd`, `pw`,
/// `j_password`, `user[password]`, ...
fn is_secret_field(name: &[u8]) -> bool {
    let n = name.len().min(64);
    let name = &name[..n];
    find_ci(name, b"pass").is_some()
        || ends_with_ci(name, b"pwd")
        || name.eq_ignore_ascii_case(b"pw")
}

/// Whether a form field's name is an account's: `user`, `username`, `login`, `log`
/// (WordPress), `email`, `j_username`, ...
fn is_account_field(name: &[u8]) -> bool {
    let n = name.len().min(64);
    let name = &name[..n];
    find_ci(name, b"user").is_some()
        || find_ci(name, b"login").is_some()
        || find_ci(name, b"mail").is_some()
        || name.eq_ignore_ascii_case(b"log")
}

fn ends_with_ci(hay: &[u8], suffix: &[u8]) -> bool {
    hay.len() >= suffix.len() && hay[hay.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
}

/// The credential `request` (a segment that begins with the request line) carries, as hashes
/// of its account and its secret: an `Authorization: Basic` header's value (the account is in
/// it), or a body's password field with its account field if any (`a=1&user=x&pass=y`, or a
/// flat JSON object `{"username": "x", "password": "y"}`).
fn credential(request: &[u8]) -> Option<(u32, u32)> {
    let head_end = find(&request[..request.len().min(HEAD_MAX)], b"\r\n\r\n");
    let head = &request[..head_end.unwrap_or(request.len().min(HEAD_MAX))];
    for line in head.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.len() > 21 && line[..21].eq_ignore_ascii_case(b"authorization: basic ") {
            let value = line[21..].trim_ascii();
            if !value.is_empty() {
                return Some((0, fnv(value)));
            }
        }
    }
    let body = &request[head_end? + 4..];
    let body = &body[..body.len().min(BODY_MAX)];
    let (mut account, mut secret) = (0, None);
    let mut field = |name: &[u8], value: &[u8]| {
        if is_secret_field(name) {
            secret.get_or_insert(fnv(value));
        } else if account == 0 && is_account_field(name) {
            account = fnv(value);
        }
    };
    if body.first() == Some(&b'{') {
        json_strings(body, &mut field);
    } else {
        for pair in body.split(|&b| b == b'&') {
            let eq = pair.iter().position(|&b| b == b'=').unwrap_or(pair.len());
            field(&pair[..eq], pair.get(eq + 1..).unwrap_or_default());
        }
    }
    secret.map(|s| (account, s))
}

/// Each `"name": "value"` pair of a JSON object with a string value, at any depth (escapes
/// are kept as they are: a value's hash needs only to be the same for the same value).
fn json_strings(body: &[u8], field: &mut impl FnMut(&[u8], &[u8])) {
    let mut name: Option<&[u8]> = None;
    let mut i = 0;
    while i < body.len() {
        if body[i] != b'"' {
            // Anything but blanks and the colon between a name and its value ends the pair.
            if !matches!(body[i], b':' | b' ' | b'\t' | b'\r' | b'\n') {
                name = None;
            }
            i += 1;
            continue;
        }
        let start = i + 1;
        let mut j = start;
        while j < body.len() && body[j] != b'"' {
            j += if body[j] == b'\\' { 2 } else { 1 };
        }
        if j >= body.len() {
            return; // cut off inside a string: not a value
        }
        let s = &body[start..j];
        i = j + 1;
        let next = body.get(i..).unwrap_or_default().iter().find(|b| !b.is_ascii_whitespace());
        if next == Some(&b':') {
            name = Some(s);
        } else if let Some(n) = name.take() {
            field(n, s);
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

    #[test]
    fn test_credentials_are_read_from_forms_json_and_basic() {
        let form =
            b"POST /login HTTP/1.0\r\nHost: x\r\nContent-Length: 22\r\n\r\nuser=admin&pass=guess3";
        let (account, secret) = credential(form).unwrap();
        assert_eq!((account, secret), (fnv(b"admin"), fnv(b"guess3")));
        // WordPress's fields, the password first.
        let wp = b"POST /wp-login.php HTTP/1.1\r\n\r\npwd=hunter2&log=admin&wp-submit=Log+In";
        assert_eq!(credential(wp), Some((fnv(b"admin"), fnv(b"hunter2"))));
        let json = b"POST /api/login HTTP/1.1\r\n\r\n{\"username\": \"root\", \"remember\": true, \"password\":\"a\\\"b\"}";
        assert_eq!(credential(json), Some((fnv(b"root"), fnv(b"a\\\"b"))));
        let nested = b"POST /s HTTP/1.1\r\n\r\n{\"user\":{\"email\":\"a@b\",\"password\":\"x\"}}";
        assert_eq!(credential(nested), Some((fnv(b"a@b"), fnv(b"x"))));
        let basic = b"GET / HTTP/1.1\r\nHost: x\r\nauthorization: Basic YWRtaW46YWRtaW4=\r\n\r\n";
        assert_eq!(credential(basic), Some((0, fnv(b"YWRtaW46YWRtaW4="))));
        // No password field, a number for one, a body cut before its headers end: none.
        for none in [
            &b"POST /search HTTP/1.1\r\n\r\nq=password&user=x"[..],
            b"POST /api HTTP/1.1\r\n\r\n{\"pin\": 1234, \"user\": \"x\"}",
            b"POST /login HTTP/1.1\r\nHost: x\r\n",
            b"GET / HTTP/1.1\r\nAuthorization: Bearer abc\r\n\r\n",
            b"POST / HTTP/1.1\r\n\r\n{\"password",
            b"POST / HTTP/1.1\r\n\r\n{\"password\":\"",
        ] {
            assert_eq!(credential(none), None, "{}", core::str::from_utf8(none).unwrap());
        }
    }

    #[test]
    fn test_a_form_posted_with_distinct_credentials_is_guessing() {
        let mut an = Analyzers::new();
        let conn = Conn::test(80);
        let t = Instant::from_secs(1);
        let client = Side { conn, from_client: true };
        let mut body = heapless::String::<128>::new();
        for i in 0..12 {
            body.clear();
            core::fmt::write(
                &mut body,
                format_args!("POST /login HTTP/1.1\r\n\r\ncsrf={i}&user=admin&pass=guess{}", i % 6),
            )
            .unwrap();
            packet(&mut an.sources, &mut an.web, &client, body.as_bytes(), t);
        }
        let f = an.sources().get(&conn.client).unwrap().features(t, WINDOW);
        // Six passwords, however many times each (the CSRF token changes, the credential not).
        assert_eq!(f.guesses.round(), 6.0);
        assert_eq!(f.guess_service, Service::Http);
    }
}
