//! What an edge does with a configuration message from the hub (or from anyone who can publish
//! on its `config` topic), and what the hub does with a layer an operator saves: any bytes as
//! the message, its document laid over an edge's configuration, merged with another layer,
//! hashed and checked; a result or the problems, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;
use tapwatch_edge::config::{fleet, Config};

fn edge() -> &'static Config {
    static C: OnceLock<Config> = OnceLock::new();
    C.get_or_init(|| {
        Config::parse(
            "[device]\nid = \"tap-1\"\n[[interface]]\nname = \"eth1\"\n[[interface]]\nname = \"eth2\"\n",
            "edge.toml",
        )
        .expect("a valid configuration")
    })
}

fuzz_target!(|data: &[u8]| {
    if let Ok(msg) = serde_json::from_slice::<firmware::proto::ConfigMsg>(data) {
        let doc = serde_json::Value::Object(msg.config);
        let _ = fleet::hash(&doc);
        if let Ok((config, _)) = fleet::apply(edge(), &doc) {
            // What applies has the edge's own identity, whatever the document said.
            assert_eq!(config.device.id, "tap-1");
            assert_eq!(config.sync, edge().sync);
            assert_eq!(config.store.path, edge().store.path);
        }
    }
    if let Ok(doc) = serde_json::from_slice::<serde_json::Value>(data) {
        let _ = fleet::check(&doc);
        let merged = fleet::merge([&doc, &doc]);
        let _ = fleet::shape(&merged);
    }
});
