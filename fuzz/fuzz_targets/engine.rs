//! A stream of packets through the whole engine (dissection, flows, host windows, features) and
//! the window detectors: no panic, finite features, every flow created is accounted for, and
//! every episode opened is closed.
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
    // Low thresholds, so that fuzzed traffic opens episodes.
    let low = firmware::detect::Thresholds {
        port_scan_ports: 2.0,
        host_sweep_hosts: 2.0,
        host_sweep_packets_per_host: 1000.0,
        syn_flood_rate: 0.1,
        udp_flood_rate: 0.1,
        icmp_flood_rate: 0.1,
        arp_spoof_replies: 1.0,
        dhcp_starvation_macs: 1.0,
        brute_force_failures: 1.0,
        password_spray_accounts: 1.0,
        dns_tunnel_names: 1.0,
        dns_tunnel_txt: 1.0,
        dns_tunnel_null_names: 1.0,
        dhcp_flood_requests: 1.0,
        ..Default::default()
    };
    let mut detector: firmware::detect::WindowDetector<4> =
        firmware::detect::WindowDetector::new(low);
    let (mut opened, mut closed) = (0u64, 0u64);
    let mut next_eval = Instant::from_secs(0);
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
        if t >= next_eval {
            let mut count = |ev| match ev {
                firmware::detect::EpisodeEvent::Opened => opened += 1,
                firmware::detect::EpisodeEvent::Closed => closed += 1,
                firmware::detect::EpisodeEvent::Updated => {}
            };
            detector.evaluate_victims(engine.victims(), t, &mut |_, ev| count(ev));
            detector.evaluate_analyzers(engine.analyzers(), t, &mut |_, ev| count(ev));
            detector.evaluate(engine.hosts(), t, &mut |_, ev| count(ev));
            next_eval = t + Duration::from_secs(1);
        }
        rest = next;
    }
    detector.close_all(&mut |_, ev| {
        if ev == firmware::detect::EpisodeEvent::Closed {
            closed += 1;
        }
    });
    assert_eq!(opened, closed);
    assert_eq!(detector.counters().opened, opened);
    engine.flush(&mut out);
    assert_eq!(engine.flow_counters().created, recorded);
});
