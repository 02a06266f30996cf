//! FTP: the account a client names (`USER`), the password it tries (`PASS`, in the clear: its
//! hash with the account's is the credential guessed), and the server's verdict (530, "not
//! logged in"; 230, logged in).

use super::{
    auth_attempt, auth_failure, fnv, guess, login_accepted, Service, Side, SourceWindow, SOURCES,
};
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
            auth_attempt(sources, c.client, argument(payload), now);
        } else if payload.len() > 5 && payload[..5].eq_ignore_ascii_case(b"PASS ") {
            guess(sources, c.client, Service::Ftp, None, fnv(argument(payload)), now);
        }
    } else if payload.starts_with(b"530") {
        auth_failure(sources, c.client, c.server, Service::Ftp, now);
    } else if payload.starts_with(b"230") {
        login_accepted(sources, c.client, now);
    }
}

/// A command's argument: what follows its four letters and a space, to the line's end (at most
/// 64 bytes).
fn argument(line: &[u8]) -> &[u8] {
    let arg = &line[5..];
    let end = arg.iter().position(|&b| b == b'\r' || b == b'\n').unwrap_or(arg.len());
    &arg[..end.min(64)]
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

    /// Send `lines` from the client, then `reply` from the server.
    fn exchange(an: &mut Analyzers, conn: Conn, lines: &[&[u8]], reply: &[u8], t: Instant) {
        for l in lines {
            packet(&mut an.sources, &Side { conn, from_client: true }, l, t);
        }
        packet(&mut an.sources, &Side { conn, from_client: false }, reply, t);
    }

    #[test]
    fn test_passwords_sent_are_guesses_until_a_login_is_accepted() {
        let mut an = Analyzers::new();
        let conn = Conn::test(21);
        let t = Instant::from_secs(1);
        let guesses = |an: &Analyzers| {
            an.sources().get(&conn.client).unwrap().features(t, WINDOW).guesses.round()
        };
        // A guesser's passwords count as they are sent, before any answer: vsftpd waits a
        // second or more before its 530.
        exchange(&mut an, conn, &[b"USER admin\r\n"], b"331 Password required\r\n", t);
        for pass in [&b"PASS 123456\r\n"[..], b"PASS password\r\n", b"PASS qwerty\r\n"] {
            packet(&mut an.sources, &Side { conn, from_client: true }, pass, t);
        }
        assert_eq!(guesses(&an), 3.0);
        assert_eq!(
            an.sources().get(&conn.client).unwrap().features(t, WINDOW).guess_service,
            Service::Ftp
        );
        // The same password again is no new guess; another account with it is.
        exchange(&mut an, conn, &[b"PASS qwerty\r\n"], b"530 Login incorrect.\r\n", t);
        assert_eq!(guesses(&an), 3.0);
        exchange(&mut an, conn, &[b"USER root\r\n", b"PASS qwerty\r\n"], b"530 no\r\n", t);
        assert_eq!(guesses(&an), 4.0);

        // A client logging in again and again with its one password guesses nothing.
        let mut an = Analyzers::new();
        for _ in 0..20 {
            exchange(&mut an, conn, &[b"USER backup\r\n"], b"331 Password required\r\n", t);
            exchange(&mut an, conn, &[b"PASS s3cret\r\n"], b"230 Login successful.\r\n", t);
        }
        assert_eq!(guesses(&an), 0.0);
    }
}
