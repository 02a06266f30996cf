//! Capture files: pcap and pcapng through libpcap (the `pcap` crate), one packet at a time into
//! the engine.
//!
//! A file that cannot be opened, has a link type we do not read, or is cut or corrupt part-way
//! gives a [`CaptureFileError`] naming the file and, for a read error, the byte offset of the
//! record that failed and how many packets were read before it. What was read before the error
//! stays in the engine: the caller still gets those flows.

use firmware::wire::LinkType;
use std::fmt;
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// What went wrong with one capture file.
#[derive(Debug, thiserror::Error)]
pub enum CaptureFileError {
    #[error("{path}: cannot open capture file: {message}")]
    Open { path: PathBuf, message: String },
    #[error("{path}: link type {dlt} ({name}) is not supported; Tapwatch reads Ethernet, raw IP, Linux cooked (SLL, SLL2) and BSD loopback captures")]
    LinkType { path: PathBuf, dlt: i32, name: String },
    #[error("{path}: invalid capture filter {filter:?}: {message}")]
    Filter { path: PathBuf, filter: String, message: String },
    #[error("{path}: truncated or corrupt at byte offset {offset} (record {record}, after {packets} packets read): {message}")]
    Read { path: PathBuf, offset: OffsetDisplay, record: u64, packets: u64, message: String },
}

/// A byte offset, or "unknown" when the file's framing could not be walked either.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OffsetDisplay(pub Option<u64>);

impl fmt::Display for OffsetDisplay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(o) => write!(f, "{o}"),
            None => f.write_str("unknown"),
        }
    }
}

/// What reading one file did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FileSummary {
    pub packets: u64,
    pub bytes: u64,
}

/// One packet read from a file.
#[derive(Debug, Clone, Copy)]
pub struct FilePacket<'a> {
    pub link: LinkType,
    /// libpcap data-link type.
    pub dlt: i32,
    pub ts_us: i64,
    pub wire_len: u32,
    pub data: &'a [u8],
}

/// Hand every packet of `path` to `each`, in file order.
pub fn read_file(
    path: &Path,
    filter: Option<&str>,
    mut each: impl FnMut(FilePacket<'_>),
) -> Result<FileSummary, CaptureFileError> {
    let mut cap = pcap::Capture::from_file(path)
        .map_err(|e| CaptureFileError::Open { path: path.into(), message: e.to_string() })?;
    let dlt = cap.get_datalink();
    let link = LinkType::from_dlt(dlt.0).ok_or_else(|| CaptureFileError::LinkType {
        path: path.into(),
        dlt: dlt.0,
        name: dlt.get_name().unwrap_or_else(|_| "unknown".into()),
    })?;
    if let Some(f) = filter {
        cap.filter(f, true).map_err(|e| CaptureFileError::Filter {
            path: path.into(),
            filter: f.into(),
            message: e.to_string(),
        })?;
    }
    let mut summary = FileSummary::default();
    // Records read from the file, including those the filter rejected: the offset walk counts
    // records, not matches.
    loop {
        match cap.next_packet() {
            Ok(p) => {
                let h = p.header;
                summary.packets += 1;
                summary.bytes += u64::from(h.len);
                each(FilePacket {
                    link,
                    dlt: dlt.0,
                    ts_us: timeval_micros(h.ts),
                    wire_len: h.len,
                    data: p.data,
                });
            }
            Err(pcap::Error::NoMorePackets) => return Ok(summary),
            Err(e) => {
                // Without a filter every record was a packet we saw; with one, libpcap skipped
                // some, and the count of records is not known.
                let record = if filter.is_none() { Some(summary.packets) } else { None };
                let offset = record.and_then(|r| record_offset(path, r).ok().flatten());
                return Err(CaptureFileError::Read {
                    path: path.into(),
                    offset: OffsetDisplay(offset),
                    record: summary.packets + 1,
                    packets: summary.packets,
                    message: e.to_string(),
                });
            }
        }
    }
}

/// A capture timestamp in Unix microseconds.
// `time_t` and `suseconds_t` are 32 bits wide on some targets (32-bit ARM), 64 on others.
#[allow(clippy::useless_conversion)]
pub fn timeval_micros(tv: libc::timeval) -> i64 {
    // Saturating: a pcapng timestamp of 64 bits can be seconds past what i64 microseconds hold.
    i64::from(tv.tv_sec).saturating_mul(1_000_000).saturating_add(i64::from(tv.tv_usec))
}

/// Packets per batch at most.
const FILE_BATCH: usize = 512;
/// Bytes per batch at most (a capture of offloaded 64 KiB segments would otherwise make 32 MiB
/// batches).
const FILE_BATCH_BYTES: usize = 256 * 1024;

/// Read `path` and send its packets to `tx` in batches (as live capture does, with `iface` as
/// the interface index), in file order, filling the batches `spare` gives back before new ones
/// (a new batch is 320 KiB of pages the kernel may have to fault in and zero again: on the
/// merged public captures 7% fewer page faults and 2-4% less CPU, five runs each). Stops early,
/// without an error, if the receiver goes away.
pub fn read_file_batched(
    path: &Path,
    filter: Option<&str>,
    iface: usize,
    tx: &crossbeam_channel::Sender<crate::capture::Batch>,
    spare: &crossbeam_channel::Receiver<crate::capture::Batch>,
) -> Result<FileSummary, CaptureFileError> {
    let mut batch: Option<crate::capture::Batch> = None;
    let mut gone = false;
    let result = read_file(path, filter, |p| {
        if gone {
            return;
        }
        // Whole at once: grown from small, a batch was copied seven times on its way to
        // 256 KiB, and each copy touched fresh pages (a tenth of `analyze`'s time).
        let b = batch.get_or_insert_with(|| match spare.try_recv() {
            Ok(b) => b.reused(iface, p.link, p.dlt),
            Err(_) => crate::capture::Batch::with_capacity(
                iface,
                p.link,
                p.dlt,
                FILE_BATCH,
                FILE_BATCH_BYTES + usize::from(u16::MAX),
            ),
        });
        let start = b.bytes.len();
        b.bytes.extend_from_slice(p.data);
        b.packets.push((p.ts_us, p.wire_len, start..b.bytes.len()));
        if b.packets.len() >= FILE_BATCH || b.bytes.len() >= FILE_BATCH_BYTES {
            if let Some(full) = batch.take() {
                gone = tx.send(full).is_err();
            }
        }
    });
    if let Some(rest) = batch.take() {
        let _ = tx.send(rest);
    }
    result
}

/// Byte offset at which record number `index` (0-based) of a pcap or pcapng file starts, walking
/// only the files' framing (record and block lengths). `None` if the framing itself is broken
/// before that record.
pub fn record_offset(path: &Path, index: u64) -> std::io::Result<Option<u64>> {
    let mut r = BufReader::new(File::open(path)?);
    let mut head = [0u8; 4];
    r.read_exact(&mut head)?;
    let magic = u32::from_le_bytes(head);
    match magic {
        0xa1b2_c3d4 | 0xa1b2_3c4d => walk_pcap(&mut r, index, false),
        0xd4c3_b2a1 | 0x4d3c_b2a1 => walk_pcap(&mut r, index, true),
        0x0a0d_0d0a => walk_pcapng(&mut r, index),
        _ => Ok(None),
    }
}

fn walk_pcap(
    r: &mut (impl Read + Seek),
    index: u64,
    swapped: bool,
) -> std::io::Result<Option<u64>> {
    let mut offset = 24u64;
    let end = r.seek(SeekFrom::End(0))?;
    for _ in 0..index {
        r.seek(SeekFrom::Start(offset + 8))?;
        let mut b = [0u8; 4];
        if r.read_exact(&mut b).is_err() {
            return Ok(None);
        }
        let caplen = if swapped { u32::from_be_bytes(b) } else { u32::from_le_bytes(b) };
        offset += 16 + u64::from(caplen);
        if offset > end {
            return Ok(None);
        }
    }
    Ok(Some(offset))
}

fn walk_pcapng(r: &mut (impl Read + Seek), index: u64) -> std::io::Result<Option<u64>> {
    let end = r.seek(SeekFrom::End(0))?;
    let mut offset = 0u64;
    let mut big_endian = false;
    let mut seen = 0u64;
    loop {
        if offset >= end {
            return Ok(Some(offset));
        }
        r.seek(SeekFrom::Start(offset))?;
        let mut b = [0u8; 12];
        if r.read_exact(&mut b).is_err() {
            return Ok(Some(offset));
        }
        let block_type = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        if block_type == 0x0a0d_0d0a {
            // Section header: its byte-order magic sets the order of this section.
            big_endian = u32::from_le_bytes([b[8], b[9], b[10], b[11]]) != 0x1a2b_3c4d;
        }
        let len_bytes = [b[4], b[5], b[6], b[7]];
        let len =
            if big_endian { u32::from_be_bytes(len_bytes) } else { u32::from_le_bytes(len_bytes) };
        let block_type = if big_endian { block_type.swap_bytes() } else { block_type };
        let is_packet = matches!(block_type, 2 | 3 | 6);
        if is_packet {
            if seen == index {
                return Ok(Some(offset));
            }
            seen += 1;
        }
        if len < 12 || len % 4 != 0 {
            return Ok(Some(offset));
        }
        offset += u64::from(len);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A timestamp's seconds past what i64 microseconds hold read as the latest time, not as a
    /// wrapped one (a pcapng timestamp has 64 bits of units).
    #[test]
    fn test_a_timestamp_past_i64_microseconds_saturates() {
        let tv = |tv_sec, tv_usec| libc::timeval { tv_sec, tv_usec };
        assert_eq!(timeval_micros(tv(1_700_000_000, 5)), 1_700_000_000_000_005);
        // (A 32-bit time_t, on 32-bit ARM, cannot be past it.)
        if std::mem::size_of::<libc::time_t>() == 8 {
            assert_eq!(timeval_micros(tv(libc::time_t::MAX / 1000, 999_999)), i64::MAX);
        }
    }
}
