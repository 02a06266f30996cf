//! Any bytes, any link type: a result or a typed error, never a panic; and the engine's books
//! balance (every flow created is either in the table or recorded).

use firmware::engine::Engine;
use firmware::wire::{dissect, LinkType};
use firmware::{Duration, Instant};
use proptest::prelude::*;

const LINKS: [LinkType; 5] =
    [LinkType::Ethernet, LinkType::Raw, LinkType::LinuxSll, LinkType::LinuxSll2, LinkType::Null];

/// Bytes that look like the start of a real frame more often than pure noise would, so the
/// deeper parsers get exercised: a plausible Ethernet/IPv4/IPv6 prefix, then random bytes.
fn framey() -> impl Strategy<Value = Vec<u8>> {
    let prefix = prop_oneof![
        Just(vec![]),
        Just(vec![0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 0x08, 0x00, 0x45]),
        Just(vec![0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 0x86, 0xdd, 0x60]),
        Just(vec![0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 0x81, 0x00, 0, 7, 0x08, 0x00, 0x45]),
        Just(vec![0x45, 0, 0, 40]),
        Just(vec![0x60, 0, 0, 0]),
    ];
    (prefix, proptest::collection::vec(any::<u8>(), 0..200)).prop_map(|(mut p, r)| {
        p.extend(r);
        p
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn dissect_never_panics(bytes in framey(), link in 0usize..5, wire_extra in 0u32..2000) {
        let _ = dissect(LINKS[link], Instant::from_secs(1), bytes.len() as u32 + wire_extra, &bytes);
    }
}

/// The engine's tables are in the struct (nothing allocates), and a debug build makes it on the
/// stack: the cases run on a thread with room for it, as the daemon's pipeline thread has.
#[test]
fn engine_never_panics_and_balances() {
    std::thread::Builder::new()
        .stack_size(64 << 20)
        .spawn(|| {
            let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
                cases: 2000,
                ..ProptestConfig::default()
            });
            let packets = proptest::collection::vec((framey(), 0i64..5_000_000), 1..60);
            runner
                .run(&(packets, 0usize..5), |(packets, link)| engine_balances(&packets, link))
                .unwrap();
        })
        .unwrap()
        .join()
        .unwrap();
}

fn engine_balances(packets: &[(Vec<u8>, i64)], link: usize) -> Result<(), TestCaseError> {
    let mut engine: Engine<64, 16> = Engine::default();
    let mut recorded = 0u64;
    let mut t = Instant::from_secs(1_000);
    for (bytes, step) in packets {
        t += Duration::from_micros(*step as u64);
        let _ = engine.process(LINKS[link], t, bytes.len() as u32, bytes, &mut |f| {
            recorded += 1;
            let v = f.features();
            assert!(v.iter().all(|x| x.is_finite()), "{v:?}");
        });
    }
    let c = *engine.flow_counters();
    prop_assert_eq!(c.created, recorded + engine.flows().len() as u64);
    engine.flush(&mut |_| recorded += 1);
    prop_assert_eq!(c.created, recorded);
    let e = engine.counters();
    prop_assert_eq!(e.packets, packets.len() as u64);
    Ok(())
}
