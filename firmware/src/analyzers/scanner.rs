//! Scanning tools by what their web requests say of themselves, as Suricata's `ET SCAN` rules
//! read them: a User-Agent that names a scanner (the Nmap Scripting Engine's, Nikto's,
//! sqlmap's, ...), or the path nmap's `http-*` scripts ask for to learn how a server answers a
//! page that is not there (`/nmaplowercheck<time>`). A person's browser sends neither; a tool
//! run with its defaults sends both in its first requests, long before it has covered enough
//! ports or hosts for the windows to call it a scan (nmap `-p 80 -sV` touches one port). A
//! scanner told to lie about itself is left to the windows.

use super::find;

/// Names in a User-Agent (lower-cased) that only scanning tools send.
const TOOLS: [&[u8]; 22] = [
    b"nmap scripting engine",
    b"nikto",
    b"sqlmap",
    b"masscan",
    b"zgrab",
    b"nuclei",
    b"wpscan",
    b"gobuster",
    b"dirbuster",
    b"feroxbuster",
    b"fuzz faster u fool",
    b"wfuzz",
    b"acunetix",
    b"netsparker",
    b"nessus",
    b"openvas",
    b"w3af",
    b"zmeu",
    b"morfeus",
    b"havij",
    b"arachni",
    b"skipfish",
];

/// The longest User-Agent read.
const AGENT_MAX: usize = 256;

/// Whether a web request (the client's first segment of it) comes from a scanning tool.
pub fn from_scanner(request: &[u8]) -> bool {
    let (target, headers) = super::request_target(request);
    if target.starts_with(b"/nmaplowercheck") {
        return true;
    }
    let Some(agent) = header(headers, b"user-agent:") else { return false };
    let mut lower = [0u8; AGENT_MAX];
    let n = agent.len().min(AGENT_MAX);
    for (d, s) in lower.iter_mut().zip(&agent[..n]) {
        *d = s.to_ascii_lowercase();
    }
    TOOLS.iter().any(|t| find(&lower[..n], t).is_some())
}

/// The value of the header `name` (lower-case, with its colon) in `headers`, which begin at a
/// line's CRLF.
fn header<'a>(headers: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    let mut rest = headers;
    while let Some(at) = find(rest, b"\r\n") {
        rest = &rest[at + 2..];
        let end = find(rest, b"\r\n").unwrap_or(rest.len());
        let line = &rest[..end];
        if line.is_empty() {
            return None;
        }
        if line.len() >= name.len() && line[..name.len()].eq_ignore_ascii_case(name) {
            return Some(line[name.len()..].trim_ascii());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_scanners_by_agent_and_nmaps_probe_path_browsers_not() {
        // nmap -sV's http-* scripts (ESnet's capture of nmap 7.80).
        assert!(from_scanner(
            b"GET /evox/about HTTP/1.1\r\nConnection: close\r\nUser-Agent: Mozilla/5.0 \
              (compatible; Nmap Scripting Engine; https://nmap.org/book/nse.html)\r\n\r\n"
        ));
        assert!(from_scanner(b"GET /nmaplowercheck1596347385 HTTP/1.1\r\nHost: a\r\n\r\n"));
        assert!(from_scanner(b"GET / HTTP/1.1\r\nuser-agent:sqlmap/1.7#stable\r\n\r\n"));
        assert!(from_scanner(b"HEAD / HTTP/1.0\r\nUSER-AGENT: Mozilla/5.00 (Nikto/2.1.6)\r\n"));
        // A browser, curl, and a page that names a tool in its path or another header.
        assert!(!from_scanner(
            b"GET / HTTP/1.1\r\nHost: a\r\nUser-Agent: Mozilla/5.0 (X11; Linux x86_64; \
              rv:128.0) Gecko/20100101 Firefox/128.0\r\n\r\n"
        ));
        assert!(!from_scanner(b"GET / HTTP/1.1\r\nUser-Agent: curl/8.5.0\r\n\r\n"));
        assert!(!from_scanner(b"GET /docs/nikto.html HTTP/1.1\r\nReferer: /sqlmap\r\n\r\n"));
        assert!(!from_scanner(b"GET / HTTP/1.1\r\n\r\nUser-Agent: nikto\r\n"));
        assert!(!from_scanner(b""));
    }
}
