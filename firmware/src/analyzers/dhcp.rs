//! DHCP: requests by client hardware address (chaddr, inside the message; a starving tool sets a
//! new one in every request from the same Ethernet source, a flooding one repeats its own).
//!
//! The host windows count distinct chaddrs a source asked for ([`crate::hosts`]); this counts,
//! per chaddr, the client messages it sent (DISCOVER, REQUEST, INFORM, ...) over the analyzers'
//! window: a client asks a few times an hour, not a hundred times a minute.

use crate::hosts::{WindowTable, Windows};
use crate::wire::DhcpInfo;
use crate::{Duration, Instant};
use core::net::IpAddr;

#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct ClientWindow {
    pub start: Option<Instant>,
    /// Client messages (BOOTREQUEST) it sent.
    pub requests: u32,
    /// The IP source of its first message in this window (what an episode is named by).
    pub source: Option<IpAddr>,
}

crate::hosts::tumbling!(ClientWindow);

impl Windows<ClientWindow> {
    /// Requests over the sliding window, and the address to name it by.
    pub fn requests(&self, now: Instant, window: Duration) -> (f32, Option<IpAddr>) {
        let (w, _) = self.slide(now, window);
        let n = self.cur.requests as f32 + self.prev.requests as f32 * w;
        (n, self.cur.source.or(self.prev.source))
    }
}

pub(crate) fn packet<const N: usize>(
    t: &mut WindowTable<ClientWindow, N, [u8; 6]>,
    src: IpAddr,
    d: &DhcpInfo,
    now: Instant,
) {
    if d.op != 1 || d.client_mac == [0; 6] {
        return;
    }
    if let Some(w) = t.window_mut(d.client_mac, now) {
        w.requests += 1;
        w.source.get_or_insert(src);
    }
}
