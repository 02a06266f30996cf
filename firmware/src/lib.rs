//! Tapwatch's portable core.
//!
//! Everything here is pure: bytes and timestamps go in, packet metadata, flow records, feature
//! vectors and contract messages come out. There is no I/O and no clock; the caller passes time in
//! (`smoltcp::time::Instant`), so the same code runs in the Linux daemon, on a microcontroller and in
//! deterministic tests.
//!
//! - [`wire`]: dissection of link, network and transport headers (smoltcp's `wire` types).
//! - [`flow`]: the bounded bidirectional flow table.
//! - [`hosts`]: per-source-host sliding-window counters (scans, sweeps, floods, ARP and DHCP rates).
//! - [`analyzers`]: protocol analyzers (DNS, TLS, ARP, DHCP, FTP, HTTP, Kerberos, SMB and
//!   DCE-RPC): the facts of attacks a header cannot show, in bounded tables.
//! - [`features`]: the feature vector, in the order of `models/features.json`.
//! - [`engine`]: wires the three together for one packet at a time.
//! - [`proto`]: the versioned edge-to-hub messages.
//! - [`platform`]: what a platform provides (MQTT publish, OTA) for the core to use.
#![cfg_attr(not(any(test, feature = "std")), no_std)]
#![forbid(unsafe_code)]

pub mod analyzers;
pub mod detect;
pub mod engine;
pub mod features;
pub mod flow;
pub mod hosts;
#[cfg(feature = "serde")]
pub mod platform;
pub mod proto;
mod stats;
pub mod victims;
pub mod wire;

pub use smoltcp::time::{Duration, Instant};
pub use stats::{Gaps, Int, Moments, Sizes};
