//! What the hub's ingest does first with every MQTT message: decode it against the contract.
//! Any topic and payload: a message or a reason, never a panic; an accepted message's device is
//! its topic's, its seq fits PostgreSQL's bigint and its time is no later than a day after the
//! hub's clock. Input: a topic length byte, the topic, then the payload.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tapwatch_hub::contract::{decode, MAX_AHEAD_US, MAX_COUNT};

/// The hub's clock for every run (2027-01-15), so a run is reproducible.
const NOW: i64 = 1_800_000_000_000_000;

fuzz_target!(|data: &[u8]| {
    let Some((&n, rest)) = data.split_first() else { return };
    let (topic, payload) = rest.split_at(usize::from(n).min(rest.len()));
    let topic = String::from_utf8_lossy(topic);
    if let Ok(m) = decode(&topic, payload, NOW) {
        let (device, _) = firmware::proto::parse_topic(&topic).expect("accepted on a valid topic");
        let h = m.header();
        assert_eq!(h.device, device);
        assert!(h.seq <= MAX_COUNT && (0..=NOW + MAX_AHEAD_US).contains(&h.ts));
    }
    // The same payload on every stream's topic.
    for s in firmware::proto::Stream::ALL {
        let _ = decode(&format!("tapwatch/v1/tap-1/{}", s.name()), payload, NOW);
    }
});
