//! The Tapwatch hub, as a library: `main.rs` only parses arguments and calls [`cli::main`].
//!
//! - [`contract`]: decoding and validating edge messages off the wire, with a reason for every
//!   rejection (the ingest path's first stage).
//! - [`ingest`]: MQTT to PostgreSQL, idempotent, acknowledging only what is committed.
//! - [`broker`]: the embedded MQTT broker (rumqttd) for a single machine.
//! - [`db`]: connecting, migrations, day partitions, retention.
//! - [`api`]: the API under `/api/v1`: statistics, flows, anomalies, users and roles, live push.
//! - [`http`]: the HTTP server: `/metrics`, `/healthz` and the API.
//! - [`config`]: the configuration file, hub.toml.
//! - [`fleet`]: the edges' configuration: layers, revisions, desired against applied.
//! - [`cli`]: the command line.

pub mod api;
pub mod broker;
pub mod cli;
pub mod config;
pub mod contract;
pub mod db;
pub mod fleet;
pub mod http;
pub mod ingest;
pub mod models;
pub mod provision;
pub mod updates;
