//! An update bundle as an edge takes it from a file or the hub: any bytes give a manifest whose
//! every file was there whole with its hash, or an error, never a panic (tar headers of any
//! kind, sizes past the end, a manifest of any JSON). Read without a key, so that inputs get
//! past the signature, and with one. Seeded with a bundle of two files
//! (`fuzz/corpus/update_bundle`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::io::Read;
use tapwatch_edge::config::update::{read, FileEntry};

fuzz_target!(|data: &[u8]| {
    let mut sink = |_: &FileEntry, r: &mut dyn Read| {
        let mut v = Vec::new();
        r.take(1 << 20).read_to_end(&mut v).map(|_| ())
    };
    let _ = read(data, None, Some("x86_64"), Some(&mut sink));
    let _ = read(data, Some("RK4julKNFm4wvMlDbbh42iIbM2iyWsVgbCi5YdE5yNg="), None, None);
});
