//! The Tapwatch hub, as a library: `main.rs` only parses arguments and calls [`cli::main`].
//!
//! - [`contract`]: decoding and validating edge messages off the wire, with a reason for every
//!   rejection (the ingest path's first stage).
//! - [`cli`]: the command line.

pub mod cli;
pub mod contract;
