//! What the hub's ingest does first with every MQTT message: decode it against the contract.
//! Any topic and payload: a message or a reason, never a panic; an accepted message's device is
//! its topic's. Input: a topic length byte, the topic, then the payload.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tapwatch_hub::contract::decode;

fuzz_target!(|data: &[u8]| {
    let Some((&n, rest)) = data.split_first() else { return };
    let (topic, payload) = rest.split_at(usize::from(n).min(rest.len()));
    let topic = String::from_utf8_lossy(topic);
    if let Ok(m) = decode(&topic, payload) {
        let (device, _) = firmware::proto::parse_topic(&topic).expect("accepted on a valid topic");
        assert_eq!(m.header().device, device);
    }
    // The same payload on every stream's topic.
    for s in firmware::proto::Stream::ALL {
        let _ = decode(&format!("tapwatch/v1/tap-1/{}", s.name()), payload);
    }
});
