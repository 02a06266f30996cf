//! A stream of packets through the whole engine (dissection, flows, host windows, features):
//! no panic, finite features, and every flow created is accounted for.
//! Input: records of [link selector, time step, length, bytes...].
#![no_main]

use firmware::engine::Engine;
use firmware::wire::LinkType;
use firmware::{Duration, Instant};
use libfuzzer_sys::fuzz_target;

const LINKS: [LinkType; 5] =
    [LinkType::Ethernet, LinkType::Raw, LinkType::LinuxSll, LinkType::LinuxSll2, LinkType::Null];

fuzz_target!(|data: &[u8]| {
    let mut engine: Engine<32, 8> = Engine::default();
    let mut t = Instant::from_secs(1_000);
    let mut rest = data;
    let mut recorded = 0u64;
    let mut out = |f: &firmware::engine::FinishedFlow| {
        assert!(f.features().iter().all(|x| x.is_finite()));
        recorded += 1;
    };
    while let [sel, step, len, tail @ ..] = rest {
        let n = usize::from(*len).min(tail.len());
        let (pkt, next) = tail.split_at(n);
        t += Duration::from_millis(u64::from(*step) * 50);
        let _ = engine.process(LINKS[usize::from(*sel) % LINKS.len()], t, n as u32, pkt, &mut out);
        rest = next;
    }
    engine.flush(&mut out);
    assert_eq!(engine.flow_counters().created, recorded);
});
