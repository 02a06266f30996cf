//! FTP: the account a client names (`USER`) and the server's verdict (530, "not logged in").

use super::{auth_attempt, auth_failure, Service, Side, SourceWindow, SOURCES};
use crate::hosts::WindowTable;
use crate::Instant;

pub(crate) fn packet(
    sources: &mut WindowTable<SourceWindow, SOURCES>,
    side: &Side,
    payload: &[u8],
    now: Instant,
) {
    let c = &side.conn;
    if side.from_client {
        if payload.len() > 5 && payload[..5].eq_ignore_ascii_case(b"USER ") {
            let name = &payload[5..];
            let end = name.iter().position(|&b| b == b'\r' || b == b'\n').unwrap_or(name.len());
            auth_attempt(sources, c.client, &name[..end.min(64)], now);
        }
    } else if payload.starts_with(b"530") {
        auth_failure(sources, c.client, c.server, Service::Ftp, now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analyzers::{Analyzers, Conn, WINDOW};

    #[test]
    fn test_530_counts_against_the_client_with_its_account() {
        let mut an = Analyzers::new();
        let conn = Conn {
            client: [10, 0, 0, 1].into(),
            server: [10, 0, 0, 2].into(),
            client_port: 40000,
            server_port: 21,
        };
        let t = Instant::from_secs(1);
        for user in ["admin", "root", "admin"] {
            let mut line = heapless::Vec::<u8, 32>::new();
            line.extend_from_slice(b"USER ").unwrap();
            line.extend_from_slice(user.as_bytes()).unwrap();
            line.extend_from_slice(b"\r\n").unwrap();
            packet(&mut an.sources, &Side { conn, from_client: true }, &line, t);
            packet(
                &mut an.sources,
                &Side { conn, from_client: false },
                b"331 Password required\r\n",
                t,
            );
            packet(
                &mut an.sources,
                &Side { conn, from_client: false },
                b"530 Login incorrect.\r\n",
                t,
            );
        }
        let f = an.sources().get(&conn.client).unwrap().features(t, WINDOW);
        assert_eq!(f.auth_failures, 3.0);
        assert!((1.9..2.1).contains(&f.accounts), "{}", f.accounts);
        assert_eq!(f.auth_service, Service::Ftp);
        assert!(an.sources().get(&conn.server).is_none());
    }
}
