//! The embedded MQTT broker (rumqttd), for a single machine that runs no broker of its own.
//!
//! Two listeners: MQTT 3.1.1 for the edges (`broker.listen`) and MQTT 5 for the hub's ingest
//! (`broker.listen_v5`, which `mqtt.broker` then points at). rumqttd keeps its log in memory:
//! while the hub process runs, an ingest that reconnects resumes its persistent session, but a
//! crash of the process loses what the broker had acknowledged to the edges and the ingest had
//! not committed yet. Where that matters, run Mosquitto (with persistence and
//! `max_queued_messages 0`) and set `broker.embedded = false`.

use crate::config::BrokerConfig;
use std::net::{SocketAddr, TcpListener};

/// The rumqttd configuration for our two listeners.
fn rumqttd_config(cfg: &BrokerConfig) -> Result<rumqttd::Config, String> {
    let server = |name: &str, listen: SocketAddr| {
        format!(
            "name = \"{name}\"\nlisten = \"{listen}\"\nnext_connection_delay_ms = 1\n\
             [{name}.connections]\nconnection_timeout_ms = 60000\nmax_payload_size = 1048576\n\
             max_inflight_count = 1024\ndynamic_filters = true\n"
        )
    };
    let text = format!(
        "id = 0\n[router]\nmax_connections = {conns}\nmax_outgoing_packet_count = 1024\n\
         max_segment_size = {seg}\nmax_segment_count = {count}\n\
         [v4.edges]\n{v4}[v5.hubs]\n{v5}",
        conns = cfg.max_connections,
        seg = cfg.segment_mb * 1024 * 1024,
        count = cfg.segments,
        v4 = server("v4.edges", cfg.listen),
        v5 = server("v5.hubs", cfg.listen_v5),
    );
    toml::from_str(&text).map_err(|e| format!("internal: embedded broker configuration: {e}"))
}

/// Start the broker on threads of its own. Fails at once, naming the address, when a listener's
/// port is taken (another broker runs there).
pub fn start(cfg: &BrokerConfig) -> Result<(), String> {
    for (what, addr) in [("broker.listen", cfg.listen), ("broker.listen_v5", cfg.listen_v5)] {
        TcpListener::bind(addr).map_err(|e| {
            format!(
                "{what} {addr}: {e} (another broker there? use it with broker.embedded = false \
                 and mqtt.broker)"
            )
        })?;
    }
    let config = rumqttd_config(cfg)?;
    let mut broker = rumqttd::Broker::new(config);
    std::thread::Builder::new()
        .name("broker".into())
        .spawn(move || {
            if let Err(e) = broker.start() {
                tracing::error!("embedded broker stopped: {e}");
            }
        })
        .map_err(|e| format!("cannot start the embedded broker: {e}"))?;
    // Ready when the hub's listener answers.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while std::net::TcpStream::connect(cfg.listen_v5).is_err() {
        if std::time::Instant::now() > deadline {
            return Err(format!("embedded broker: nothing listens on {}", cfg.listen_v5));
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    tracing::info!(edges = %cfg.listen, hub = %cfg.listen_v5, "embedded broker running");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_configuration_parses() {
        let c = rumqttd_config(&BrokerConfig::default()).unwrap();
        assert_eq!(c.v4.unwrap().values().next().unwrap().connections.max_payload_size, 1 << 20);
        assert!(c.v5.is_some());
    }
}
