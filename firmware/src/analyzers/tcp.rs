//! TCP segments crafted against a stack rather than sent by one: URGENT/11, the flaws in
//! VxWorks' IPnet stack (Armis, 2019; CVE-2019-12256 to 12265) that its exploits reach through
//! the urgent pointer. No stack sends urgent data on a SYN, nor a TCP-AO option shorter than
//! its least (RFC 5925: 4 bytes); CVE-2019-12260's exploit sends both, and one such segment is
//! evidence enough, as for Armis' published signatures. The source's window counts them.

use super::{SourceWindow, SOURCES};
use crate::hosts::WindowTable;
use crate::wire::TcpInfo;
use crate::Instant;
use core::net::IpAddr;

/// Whether `t` is what URGENT/11's exploits send.
pub fn urgent11(t: &TcpInfo) -> bool {
    t.flags.syn() && (t.urgent != 0 || t.short_ao)
}

/// One TCP segment from `src`.
pub(crate) fn segment(
    sources: &mut WindowTable<SourceWindow, SOURCES>,
    src: IpAddr,
    t: &TcpInfo,
    now: Instant,
) {
    if !urgent11(t) {
        return;
    }
    if let Some(w) = sources.window_mut(src, now) {
        w.tcp_exploits += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::TcpFlags;

    fn segment(flags: u8, urgent: u16, short_ao: bool) -> TcpInfo {
        TcpInfo {
            src_port: 31337,
            dst_port: 443,
            flags: TcpFlags(flags),
            window: 8192,
            header_len: 20,
            payload_len: 0,
            mss: None,
            window_scale: None,
            urgent,
            short_ao,
        }
    }

    #[test]
    fn test_urgent_data_on_a_syn_or_a_short_ao_is_urgent11_what_stacks_send_is_not() {
        // CVE-2019-12260's two segments: a SYN with a 3-byte TCP-AO option, then SYN, FIN
        // and URG with the urgent pointer at 10.
        assert!(urgent11(&segment(0x02, 0, true)));
        assert!(urgent11(&segment(0x23, 10, false)));
        // Urgent data in an established connection (telnet's interrupt), a plain SYN, and a
        // SYN with URG but no pointer (nmap's OS probes).
        assert!(!urgent11(&segment(0x38, 1, false)));
        assert!(!urgent11(&segment(0x02, 0, false)));
        assert!(!urgent11(&segment(0x2b, 0, false)));
    }
}
