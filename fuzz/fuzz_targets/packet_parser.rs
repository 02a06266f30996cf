//! Dissection of any bytes under any link type: a result or a typed error, never a panic.
//! The first byte picks the link type; corpus/packet_parser holds real packets so prefixed.
#![no_main]

use firmware::wire::{dissect, LinkType};
use firmware::Instant;
use libfuzzer_sys::fuzz_target;

const LINKS: [LinkType; 5] =
    [LinkType::Ethernet, LinkType::Raw, LinkType::LinuxSll, LinkType::LinuxSll2, LinkType::Null];

fuzz_target!(|data: &[u8]| {
    let Some((&sel, bytes)) = data.split_first() else { return };
    let link = LINKS[usize::from(sel) % LINKS.len()];
    // The wire length is at least what was captured; sometimes more, as with a snap length.
    let wire = bytes.len() as u32 + u32::from(sel >> 4) * 100;
    let _ = dissect(link, Instant::from_secs(1), wire, bytes);
});
