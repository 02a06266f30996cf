//! The captures the example holds in flash: each packet's bytes into one file (`packets.bin` in
//! OUT_DIR, included as a byte array), and `captures.rs` with each capture's packets (time,
//! length on the wire, where its bytes are). Read with pcap-file, pcap or pcapng alike.
//! For the Cortex-M build, `memory.x` goes where cortex-m-rt's `link.x` looks for it.

use pcap_file::pcap::PcapReader;
use pcap_file::pcapng::blocks::interface_description::InterfaceDescriptionOption;
use pcap_file::pcapng::{Block, PcapNgReader};
use std::fmt::Write as _;
use std::fs::File;
use std::path::{Path, PathBuf};

/// (name, path from this crate, what it is).
const CAPTURES: &[(&str, &str)] = &[
    ("nmap_tcp_syn_scan", "../tests/data/attacks/nmap_tcp_syn_scan.pcap"),
    ("ssh_session", "../tests/data/benign/ssh_session.pcap"),
];

struct Packet {
    ts_us: i64,
    wire_len: u32,
    data: Vec<u8>,
}

fn read(path: &Path) -> (i32, Vec<Packet>) {
    let file = File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut out = Vec::new();
    if let Ok(mut r) = PcapReader::new(file) {
        let dlt = u32::from(r.header().datalink) as i32;
        while let Some(p) = r.next_packet() {
            let p = p.unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            out.push(Packet {
                ts_us: p.timestamp.as_micros() as i64,
                wire_len: p.orig_len,
                data: p.data.into_owned(),
            });
        }
        return (dlt, out);
    }
    let file = File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut r = PcapNgReader::new(file).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut dlt = None;
    // Each interface's time units a second (if_tsresol; microseconds unless it says).
    let mut units: Vec<u128> = Vec::new();
    while let Some(b) = r.next_block() {
        match b.unwrap_or_else(|e| panic!("{}: {e}", path.display())) {
            Block::InterfaceDescription(i) => {
                dlt = dlt.or(Some(u32::from(i.linktype) as i32));
                let resol = i.options.iter().find_map(|o| match o {
                    InterfaceDescriptionOption::IfTsResol(r) => Some(*r),
                    _ => None,
                });
                units.push(match resol {
                    Some(r) if r & 0x80 != 0 => 1u128 << (r & 0x7f),
                    Some(r) => 10u128.pow(u32::from(r)),
                    None => 1_000_000,
                });
            }
            Block::EnhancedPacket(p) => {
                // pcap-file 2.0 hands the block's raw timestamp over as nanoseconds, whatever
                // the interface's units: they are taken back here.
                let per_s = units.get(p.interface_id as usize).copied().unwrap_or(1_000_000);
                out.push(Packet {
                    ts_us: (p.timestamp.as_nanos() * 1_000_000 / per_s) as i64,
                    wire_len: p.original_len,
                    data: p.data.into_owned(),
                })
            }
            _ => {}
        }
    }
    (dlt.unwrap_or(1), out)
}

fn main() {
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("OUT_DIR"));
    std::fs::copy("memory.x", out.join("memory.x")).expect("memory.x");
    println!("cargo:rustc-link-search={}", out.display());
    println!("cargo:rerun-if-changed=memory.x");

    let mut bytes = Vec::new();
    let mut src = String::from("pub static CAPTURES: &[Capture] = &[\n");
    for (name, path) in CAPTURES {
        println!("cargo:rerun-if-changed={path}");
        let (dlt, packets) = read(Path::new(path));
        let _ = writeln!(src, "    Capture {{ name: {name:?}, dlt: {dlt}, packets: &[");
        for p in packets {
            let start = bytes.len();
            bytes.extend_from_slice(&p.data);
            let _ = writeln!(
                src,
                "        Packet {{ ts_us: {}, wire_len: {}, start: {start}, end: {} }},",
                p.ts_us,
                p.wire_len,
                bytes.len()
            );
        }
        src.push_str("    ] },\n");
    }
    src.push_str("];\n");
    let _ = writeln!(src, "pub static BYTES: &[u8; {}] = include_bytes!(concat!(env!(\"OUT_DIR\"), \"/packets.bin\"));", bytes.len());
    std::fs::write(out.join("packets.bin"), bytes).expect("packets.bin");
    std::fs::write(out.join("captures.rs"), src).expect("captures.rs");
}
