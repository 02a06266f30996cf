//! SMB (SMB1 and SMB2/3 over TCP 445 and 139) and DCE-RPC: authentication outcomes of session
//! set-ups, with the account NTLM names, the remote creation of a service (PsExec, smbexec,
//! Impacket and the like bind to svcctl and call CreateService), and the enumeration of the
//! endpoint mapper (rpcdump and its kin bind to it and call ept_lookup again and again; a
//! client resolves the one endpoint it wants with ept_map), and Zerologon (CVE-2020-1472: a
//! client binds to Netlogon and authenticates again and again, a zero credential each time, until
//! one in about 256 gets through; a machine sets up its secure channel with one).
//!
//! Messages are read where a segment starts with one (after the four-byte NetBIOS header), and
//! the SMB2 messages compounded behind it. DCE-RPC is read inside SMB2 WRITE and IOCTL (a named
//! pipe) and straight over TCP. A signed or encrypted (SMB3 transform) message shows nothing.

use super::{auth_attempt, auth_failure, find, Recent, Service, Side, SourceWindow, SOURCES};
use crate::hosts::WindowTable;
use crate::Instant;

/// Slots for connections with a bind to svcctl, the endpoint mapper or Netlogon (7/8 held).
pub const BINDS: usize = 64;

/// The interface a connection is bound to, of those the analyzer follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Iface {
    Svcctl,
    Epm,
    Netlogon,
}

/// svcctl's interface UUID (367abb81-9844-35f1-ad32-98f038001003) as DCE-RPC sends it.
pub const SVCCTL: [u8; 16] = [
    0x81, 0xbb, 0x7a, 0x36, 0x44, 0x98, 0xf1, 0x35, 0xad, 0x32, 0x98, 0xf0, 0x38, 0x00, 0x10, 0x03,
];
/// svcctl's CreateService calls: RCreateServiceW, RCreateServiceA, and their WOW64 forms.
pub const CREATE_SERVICE: [u16; 4] = [12, 24, 44, 45];
/// The endpoint mapper's interface UUID (e1af8308-5d1f-11c9-91a4-08002b14a0fa) as sent.
pub const EPM: [u8; 16] = [
    0x08, 0x83, 0xaf, 0xe1, 0x1f, 0x5d, 0xc9, 0x11, 0x91, 0xa4, 0x08, 0x00, 0x2b, 0x14, 0xa0, 0xfa,
];
/// ept_lookup: one page of the registered endpoints.
pub const EPT_LOOKUP: u16 = 2;
/// Netlogon's interface UUID (12345678-1234-abcd-ef00-01234567cffb) as sent.
pub const NETLOGON: [u8; 16] = [
    0x78, 0x56, 0x34, 0x12, 0x34, 0x12, 0xcd, 0xab, 0xef, 0x00, 0x01, 0x23, 0x45, 0x67, 0xcf, 0xfb,
];
/// Netlogon's authentications: NetrServerAuthenticate, 2 and 3.
pub const NETLOGON_AUTHENTICATE: [u16; 3] = [2, 15, 26];

/// NT status codes of a session set-up that mean a wrong guess: logon failure, no such user,
/// wrong password, account disabled, account locked out.
pub const LOGON_FAILURES: [u32; 5] =
    [0xC000_006D, 0xC000_0064, 0xC000_006A, 0xC000_0072, 0xC000_0234];

/// Connections bound to svcctl or the endpoint mapper (forgotten after 10 minutes).
pub type Binds = Recent<super::Conn, Iface, BINDS>;

fn le16(p: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(p.get(at..at + 2)?.try_into().ok()?))
}
fn le32(p: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(p.get(at..at + 4)?.try_into().ok()?))
}

/// A DCE-RPC connection-oriented PDU header: version 5.0.
pub fn is_dcerpc(p: &[u8]) -> bool {
    matches!(p, [5, 0, 0 | 11 | 14, ..]) && p.len() >= 24
}

pub(crate) fn packet(
    sources: &mut WindowTable<SourceWindow, SOURCES>,
    binds: &mut Binds,
    side: &Side,
    payload: &[u8],
    now: Instant,
) {
    // The NetBIOS session header: type 0 (session message) and a 17-bit length.
    let Some(rest) = payload.get(4..) else { return };
    if payload[0] != 0 {
        return;
    }
    match rest {
        [0xfe, b'S', b'M', b'B', ..] => smb2(sources, binds, side, rest, now),
        [0xff, b'S', b'M', b'B', ..] => smb1(sources, side, rest, now),
        _ => {}
    }
}

fn smb2(
    sources: &mut WindowTable<SourceWindow, SOURCES>,
    binds: &mut Binds,
    side: &Side,
    mut msg: &[u8],
    now: Instant,
) {
    let c = &side.conn;
    for _ in 0..4 {
        let (Some(status), Some(command), Some(flags), Some(next)) =
            (le32(msg, 8), le16(msg, 12), le32(msg, 16), le32(msg, 20))
        else {
            return;
        };
        let response = flags & 1 != 0;
        match (command, response) {
            // SESSION_SETUP
            (1, false) if side.from_client => ntlm_user(sources, side, msg, now),
            (1, true) if !side.from_client && LOGON_FAILURES.contains(&status) => {
                auth_failure(sources, c.client, c.server, Service::Smb, now)
            }
            // WRITE to a pipe: DataOffset and Length after the 64-byte header.
            (9, false) if side.from_client => {
                if let (Some(off), Some(len)) = (le16(msg, 66), le32(msg, 68)) {
                    let data = slice(msg, usize::from(off), len as usize);
                    dcerpc(sources, binds, side, data, now);
                }
            }
            // IOCTL (FSCTL_PIPE_TRANSCEIVE): InputOffset and InputCount.
            (11, false) if side.from_client => {
                if let (Some(off), Some(len)) = (le32(msg, 88), le32(msg, 92)) {
                    let data = slice(msg, off as usize, len as usize);
                    dcerpc(sources, binds, side, data, now);
                }
            }
            _ => {}
        }
        // A compounded request: the next header `next` bytes on.
        if next == 0 {
            return;
        }
        match msg.get(next as usize..) {
            Some(m) if m.starts_with(&[0xfe, b'S', b'M', b'B']) => msg = m,
            _ => return,
        }
    }
}

/// What is held of `len` bytes at `off`.
fn slice(p: &[u8], off: usize, len: usize) -> &[u8] {
    let start = off.min(p.len());
    &p[start..start.saturating_add(len).min(p.len())]
}

fn smb1(sources: &mut WindowTable<SourceWindow, SOURCES>, side: &Side, msg: &[u8], now: Instant) {
    let c = &side.conn;
    // Command at 4, NT status at 5, flags at 9 (0x80: a reply). 0x73: SESSION_SETUP_ANDX.
    let (Some(&command), Some(status), Some(&flags)) = (msg.get(4), le32(msg, 5), msg.get(9))
    else {
        return;
    };
    if command != 0x73 {
        return;
    }
    if flags & 0x80 == 0 {
        if side.from_client {
            ntlm_user(sources, side, msg, now);
        }
    } else if !side.from_client && LOGON_FAILURES.contains(&status) {
        auth_failure(sources, c.client, c.server, Service::Smb, now);
    }
}

/// The user an NTLM AUTHENTICATE message (type 3) names, as the pending account.
fn ntlm_user(
    sources: &mut WindowTable<SourceWindow, SOURCES>,
    side: &Side,
    msg: &[u8],
    now: Instant,
) {
    let head = &msg[..msg.len().min(2048)];
    let Some(at) = find(head, b"NTLMSSP\0") else { return };
    let ntlm = &msg[at..];
    if le32(ntlm, 8) != Some(3) {
        return;
    }
    if let (Some(len), Some(off)) = (le16(ntlm, 36), le32(ntlm, 40)) {
        let user = slice(ntlm, off as usize, usize::from(len).min(128));
        if !user.is_empty() {
            auth_attempt(sources, side.conn.client, user, now);
        }
    }
}

/// One DCE-RPC PDU from the client: a bind to svcctl, the endpoint mapper or Netlogon marks the
/// connection; a CreateService call on one bound to svcctl is a remote service created, an
/// ept_lookup on one bound to the endpoint mapper a page of its enumeration, a
/// NetrServerAuthenticate on one bound to Netlogon an authentication (the request header is in
/// the clear even when the stub is sealed).
pub(crate) fn dcerpc(
    sources: &mut WindowTable<SourceWindow, SOURCES>,
    binds: &mut Binds,
    side: &Side,
    pdu: &[u8],
    now: Instant,
) {
    if !side.from_client || !is_dcerpc(pdu) {
        return;
    }
    match pdu[2] {
        // bind, alter_context: the presentation contexts from byte 24.
        11 | 14 => {
            let n = usize::from(pdu.get(24).copied().unwrap_or(0)).min(8);
            let mut at = 28;
            for _ in 0..n {
                let Some(ctx) = pdu.get(at..at + 24) else { return };
                let iface = match &ctx[4..20] {
                    u if *u == SVCCTL => Some(Iface::Svcctl),
                    u if *u == EPM => Some(Iface::Epm),
                    u if *u == NETLOGON => Some(Iface::Netlogon),
                    _ => None,
                };
                if let Some(iface) = iface {
                    if let Some(v) = binds.entry(side.conn, iface, now) {
                        *v = iface;
                    }
                    return;
                }
                at += 24 + 20 * usize::from(ctx[2]);
            }
        }
        // request: opnum at 22.
        0 => {
            let opnum = le16(pdu, 22).unwrap_or(u16::MAX);
            match binds.get(&side.conn) {
                Some(Iface::Svcctl) if CREATE_SERVICE.contains(&opnum) => {
                    if let Some(w) = sources.window_mut(side.conn.client, now) {
                        w.services_created += 1;
                    }
                }
                Some(Iface::Epm) if opnum == EPT_LOOKUP => {
                    if let Some(w) = sources.window_mut(side.conn.client, now) {
                        w.endpoint_lookups += 1;
                    }
                }
                Some(Iface::Netlogon) if NETLOGON_AUTHENTICATE.contains(&opnum) => {
                    if let Some(w) = sources.window_mut(side.conn.client, now) {
                        w.netlogon_auths += 1;
                    }
                }
                _ => {}
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analyzers::{Analyzers, Conn, WINDOW};

    fn conn() -> Conn {
        Conn {
            client: [10, 0, 0, 5].into(),
            server: [10, 0, 0, 9].into(),
            client_port: 50000,
            server_port: 445,
        }
    }

    fn bind(uuid: [u8; 16]) -> [u8; 72] {
        let mut p = [0u8; 72];
        p[..4].copy_from_slice(&[5, 0, 11, 3]);
        p[24] = 1;
        p[30] = 1; // one transfer syntax
        p[32..48].copy_from_slice(&uuid);
        p
    }

    fn request(opnum: u16) -> [u8; 24] {
        let mut p = [0u8; 24];
        p[..4].copy_from_slice(&[5, 0, 0, 3]);
        p[22..24].copy_from_slice(&opnum.to_le_bytes());
        p
    }

    #[test]
    fn test_create_service_after_svcctl_bind() {
        let mut an = Analyzers::new();
        let side = Side { conn: conn(), from_client: true };
        let t = Instant::from_secs(1);
        // CreateService's opnum on a connection bound to another interface is something else.
        dcerpc(&mut an.sources, &mut an.rpc, &side, &bind([7; 16]), t);
        dcerpc(&mut an.sources, &mut an.rpc, &side, &request(12), t);
        let created = |an: &Analyzers| {
            an.sources().get(&conn().client).map_or(0.0, |w| w.features(t, WINDOW).services_created)
        };
        assert_eq!(created(&an), 0.0);
        dcerpc(&mut an.sources, &mut an.rpc, &side, &bind(SVCCTL), t);
        dcerpc(&mut an.sources, &mut an.rpc, &side, &request(15), t); // OpenSCManager
        dcerpc(&mut an.sources, &mut an.rpc, &side, &request(12), t);
        assert_eq!(created(&an), 1.0);
    }

    #[test]
    fn test_endpoint_mapper_lookups_count_on_a_connection_bound_to_it() {
        let mut an = Analyzers::new();
        let t = Instant::from_secs(1);
        let lookups = |an: &Analyzers| {
            an.sources().get(&conn().client).map_or(0.0, |w| w.features(t, WINDOW).endpoint_lookups)
        };
        let other = Side { conn: Conn { client_port: 50001, ..conn() }, from_client: true };
        dcerpc(&mut an.sources, &mut an.rpc, &other, &bind(SVCCTL), t);
        dcerpc(&mut an.sources, &mut an.rpc, &other, &request(EPT_LOOKUP), t);
        assert_eq!(lookups(&an), 0.0, "opnum 2 of svcctl is something else");
        let side = Side { conn: conn(), from_client: true };
        dcerpc(&mut an.sources, &mut an.rpc, &side, &bind(EPM), t);
        for _ in 0..5 {
            dcerpc(&mut an.sources, &mut an.rpc, &side, &request(EPT_LOOKUP), t);
        }
        dcerpc(&mut an.sources, &mut an.rpc, &side, &request(3), t); // ept_map
        assert_eq!(lookups(&an), 5.0);
    }

    #[test]
    fn test_netlogon_authentications_count_on_a_connection_bound_to_it() {
        let mut an = Analyzers::new();
        let t = Instant::from_secs(1);
        let auths = |an: &Analyzers| {
            an.sources().get(&conn().client).map_or(0.0, |w| w.features(t, WINDOW).netlogon_auths)
        };
        let side = Side { conn: conn(), from_client: true };
        dcerpc(&mut an.sources, &mut an.rpc, &side, &bind(EPM), t);
        dcerpc(&mut an.sources, &mut an.rpc, &side, &request(26), t);
        assert_eq!(auths(&an), 0.0, "opnum 26 of the endpoint mapper is something else");
        for port in 0..30 {
            // As the exploit does: a new connection, a bind, a challenge, an authentication.
            let side =
                Side { conn: Conn { client_port: 40000 + port, ..conn() }, from_client: true };
            dcerpc(&mut an.sources, &mut an.rpc, &side, &bind(NETLOGON), t);
            dcerpc(&mut an.sources, &mut an.rpc, &side, &request(4), t); // NetrServerReqChallenge
            dcerpc(&mut an.sources, &mut an.rpc, &side, &request(26), t);
        }
        assert_eq!(auths(&an), 30.0);
    }

    #[test]
    fn test_smb2_write_carries_the_pdu_and_logon_failures_count() {
        let mut an = Analyzers::new();
        let t = Instant::from_secs(1);
        // NetBIOS + SMB2 WRITE with the bind at offset 112 of the SMB2 header.
        let mut m = [0u8; 4 + 112 + 72];
        m[4..8].copy_from_slice(&[0xfe, b'S', b'M', b'B']);
        m[4 + 12] = 9;
        m[4 + 66..4 + 68].copy_from_slice(&112u16.to_le_bytes());
        m[4 + 68..4 + 72].copy_from_slice(&72u32.to_le_bytes());
        m[4 + 112..].copy_from_slice(&bind(SVCCTL));
        packet(&mut an.sources, &mut an.rpc, &Side { conn: conn(), from_client: true }, &m, t);
        assert!(an.rpc.get(&conn()).is_some());
        // A SESSION_SETUP response with STATUS_LOGON_FAILURE.
        let mut r = [0u8; 4 + 64];
        r[4..8].copy_from_slice(&[0xfe, b'S', b'M', b'B']);
        r[4 + 8..4 + 12].copy_from_slice(&0xC000_006Du32.to_le_bytes());
        r[4 + 12] = 1;
        r[4 + 16] = 1;
        packet(&mut an.sources, &mut an.rpc, &Side { conn: conn(), from_client: false }, &r, t);
        let f = an.sources().get(&conn().client).unwrap().features(t, WINDOW);
        assert_eq!(f.auth_failures, 1.0);
        // Every cut of either: no panic.
        for n in 0..m.len() {
            packet(
                &mut an.sources,
                &mut an.rpc,
                &Side { conn: conn(), from_client: true },
                &m[..n],
                t,
            );
        }
    }
}
