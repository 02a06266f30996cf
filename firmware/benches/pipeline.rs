//! Dissection, flow ingest and the protocol analyzers on real packets.
//!
//! Packets come from the captures in tests/data (or the file named by `TAPWATCH_BENCH_PCAP`, e.g.
//! bench-out/merged.pcap from bench/offline.sh), loaded into memory once; the set is repeated with
//! shifted timestamps up to about 100k packets so each iteration is long enough to time.
//!
//! Run: `cargo bench -p tapwatch-firmware --bench pipeline` (`-- analyzers` for the analyzers'
//! per-packet cost alone)

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use firmware::analyzers::Analyzers;
use firmware::engine::{Engine, EngineConfig};
use firmware::wire::{dissect, LinkType, PacketMeta, L3};
use firmware::{Duration, Instant};
use std::hint::black_box;
use std::path::PathBuf;

struct Pkt {
    link: LinkType,
    ts: Instant,
    len: u32,
    data: Vec<u8>,
}

/// Packets back to back in one buffer, as libpcap hands them over from its read buffer: the
/// memory is read in order, so the bench measures the parsers rather than cache misses of
/// scattered allocations.
struct Arena {
    bytes: Vec<u8>,
    pkts: Vec<(LinkType, Instant, u32, std::ops::Range<usize>)>,
}

impl Arena {
    fn new(pkts: Vec<Pkt>) -> Arena {
        let mut a = Arena { bytes: Vec::new(), pkts: Vec::with_capacity(pkts.len()) };
        for p in pkts {
            let start = a.bytes.len();
            a.bytes.extend_from_slice(&p.data);
            a.pkts.push((p.link, p.ts, p.len, start..a.bytes.len()));
        }
        a
    }
    fn iter(&self) -> impl Iterator<Item = (LinkType, Instant, u32, &[u8])> {
        self.pkts.iter().map(|(l, t, n, r)| (*l, *t, *n, &self.bytes[r.clone()]))
    }
}

/// The captures in `dirs` (under tests/data), or the one `TAPWATCH_BENCH_PCAP` names.
fn load(dirs: &[&str]) -> Vec<Pkt> {
    let files: Vec<PathBuf> = match std::env::var_os("TAPWATCH_BENCH_PCAP") {
        Some(p) => vec![p.into()],
        None => {
            let mut v = Vec::new();
            for d in dirs {
                let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/data").join(d);
                let mut in_dir: Vec<PathBuf> = std::fs::read_dir(&dir)
                    .expect("tests/data")
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.extension().is_some_and(|e| e == "pcap" || e == "pcapng"))
                    .collect();
                in_dir.sort();
                v.extend(in_dir);
            }
            v
        }
    };
    let mut once = Vec::new();
    for f in files {
        let mut cap = pcap::Capture::from_file(&f).expect("capture opens");
        let Some(link) = LinkType::from_dlt(cap.get_datalink().0) else { continue };
        while let Ok(p) = cap.next_packet() {
            // time_t is 32 bits wide on some targets.
            #[allow(clippy::useless_conversion)]
            let ts = i64::from(p.header.ts.tv_sec) * 1_000_000 + i64::from(p.header.ts.tv_usec);
            once.push(Pkt {
                link,
                ts: Instant::from_micros(ts),
                len: p.header.len,
                data: p.data.to_vec(),
            });
        }
    }
    let mut all = Vec::new();
    let mut round = 0i64;
    while all.len() < 100_000 && !once.is_empty() {
        // Each copy ten days later: no flow spans two copies.
        let shift = Duration::from_secs(864_000 * round as u64);
        all.extend(once.iter().map(|p| Pkt {
            link: p.link,
            ts: p.ts + shift,
            len: p.len,
            data: p.data.clone(),
        }));
        round += 1;
    }
    all
}

/// A boxed engine built on a thread with room for it on the stack.
fn engine<const F: usize, const H: usize>() -> Box<Engine<F, H>> {
    std::thread::Builder::new()
        .stack_size(8 * std::mem::size_of::<Engine<F, H>>() + (16 << 20))
        .spawn(|| Box::new(Engine::new(EngineConfig::default())))
        .expect("thread")
        .join()
        .expect("engine built")
}

fn benches(c: &mut Criterion) {
    let pkts = Arena::new(load(&[""]));
    let mut g = c.benchmark_group("pipeline");
    g.throughput(Throughput::Elements(pkts.pkts.len() as u64));
    g.bench_function("dissect", |b| {
        b.iter(|| {
            for (link, ts, len, data) in pkts.iter() {
                let _ = black_box(dissect(link, ts, len, black_box(data)));
            }
        })
    });
    let mut e = engine::<{ 1 << 16 }, { 1 << 14 }>();
    g.bench_function("engine_process", |b| {
        b.iter(|| {
            let mut n = 0u64;
            for (link, ts, len, data) in pkts.iter() {
                let _ = e.process(link, ts, len, data, &mut |f| n += f.features()[0] as u64);
            }
            e.reset(&mut |_| n += 1);
            black_box(n)
        })
    });
    g.finish();

    // The protocol analyzers alone, per packet, on the public attack captures (where they
    // find something) and the others; each packet dissected once, outside the timing.
    let attacks = Arena::new(load(&["", "attacks"]));
    let metas: Vec<(PacketMeta, &[u8])> = attacks
        .iter()
        .filter_map(|(link, ts, len, data)| dissect(link, ts, len, data).ok().map(|m| (m, data)))
        .collect();
    let mut an = Box::new(Analyzers::new());
    let mut g = c.benchmark_group("analyzers");
    g.throughput(Throughput::Elements(metas.len() as u64));
    g.bench_function("every_analyzer", |b| {
        b.iter(|| {
            for (m, data) in &metas {
                match &m.l3 {
                    L3::Ip(ip) => an.ip(ip, m.payload(data), true, m.ts),
                    L3::Arp(a) => an.arp(m, a, m.ts),
                    L3::Other(_) => {}
                }
            }
            an.clear();
        })
    });
    g.finish();
}

criterion_group!(pipeline, benches);
criterion_main!(pipeline);
