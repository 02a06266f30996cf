//! `edge.toml`: the types and their checks are in the `edge_config` crate (the hub checks what it
//! sends with them); the commented default and its tests are here.

pub use edge_config::*;

/// The commented default configuration.
pub const EXAMPLE: &str = include_str!("../edge.example.toml");

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// The example is the defaults, and it documents every field the defaults have.
    #[test]
    fn test_example_is_current() {
        let example = Config::parse(EXAMPLE, "edge.example.toml").unwrap();
        let defaults = Config {
            device: DeviceConfig { id: "tap-01".into() },
            interfaces: vec![InterfaceConfig {
                name: "eth1".into(),
                snaplen: default_snaplen(),
                buffer_mb: default_buffer_mb(),
                promiscuous: true,
                immediate: false,
                queue_packets: default_queue_packets(),
                sample: 1,
                rules: vec![RuleConfig {
                    name: "not-management-ssh".into(),
                    action: Action::Exclude,
                    bpf: None,
                    host: None,
                    net: None,
                    port: Some(22),
                    protocol: Some(Protocol::Tcp),
                    direction: Direction::Any,
                }],
            }],
            flows: FlowsConfig::default(),
            store: StoreConfig::default(),
            stats: StatsConfig::default(),
            http: HttpConfig::default(),
            sync: SyncConfig::default(),
            detect: DetectConfig::default(),
            update: UpdateConfig::default(),
        };
        assert_eq!(example, defaults);
        // Every key the defaults serialize to is written out in the example, not left implicit.
        let written: toml::Table = toml::from_str(EXAMPLE).unwrap();
        let full: toml::Table = toml::from_str(&toml::to_string(&defaults).unwrap()).unwrap();
        fn keys(t: &toml::Table, at: &str, out: &mut Vec<String>) {
            for (k, v) in t {
                let path = format!("{at}{k}");
                match v {
                    toml::Value::Table(t) => keys(t, &format!("{path}."), out),
                    toml::Value::Array(a) => {
                        for x in a {
                            if let toml::Value::Table(t) = x {
                                keys(t, &format!("{path}[]."), out)
                            }
                        }
                    }
                    _ => out.push(path),
                }
            }
        }
        let (mut a, mut b) = (Vec::new(), Vec::new());
        keys(&written, "", &mut a);
        keys(&full, "", &mut b);
        a.sort();
        b.sort();
        assert_eq!(a, b, "edge.example.toml must write out every field");
    }

    #[test]
    fn test_unknown_field_is_named() {
        let err = Config::parse("[device]\nid = \"t\"\nnmae = 1\n", "x.toml").unwrap_err();
        let text = err.to_string();
        assert!(text.contains("unknown field `nmae`"), "{text}");
        assert!(text.contains("x.toml"), "{text}");
    }

    #[test]
    fn test_thresholds_that_never_or_always_trip_are_refused() {
        let toml = "[device]\nid = \"t\"\n[detect.thresholds]\nport_scan_ports = nan\n\
                    syn_flood_rate = -1.0\nhttp_flood_rate = inf\nbrute_force_failures = 0.0\n";
        let text = Config::parse(toml, "x.toml").unwrap_err().to_string();
        for name in ["port_scan_ports", "syn_flood_rate", "http_flood_rate"] {
            assert!(text.contains(&format!("detect.thresholds.{name}: must be")), "{text}");
        }
        assert!(!text.contains("brute_force_failures"), "{text}");
    }

    #[test]
    fn test_min_flows_per_kind_names_the_kind() {
        let base = "[device]\nid = \"t\"\n[detect.models]\n";
        let c = Config::parse(&format!("{base}min_flows_per_kind = {{ port_scan = 9 }}\n"), "x")
            .unwrap();
        assert_eq!(
            c.detect.models.min_flows_per_kind,
            BTreeMap::from([(firmware::proto::AnomalyKind::PortScan, 9)]),
            "a table given replaces the default one"
        );
        let err = Config::parse(&format!("{base}min_flows_per_kind = {{ brute = 4 }}\n"), "x.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown variant `brute`") && err.contains("brute_force"), "{err}");
        let err = Config::parse(&format!("{base}min_flows_per_kind = {{ dns_tunnel = 0 }}\n"), "x")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("detect.models.min_flows_per_kind.dns_tunnel: must be at least 1"),
            "{err}"
        );
    }

    #[test]
    fn test_every_problem_is_reported() {
        let text = r#"
            [device]
            id = "bad id"
            [[interface]]
            name = "eth0"
            snaplen = 10
            sample = 0
            [[interface.rule]]
            name = "both"
            bpf = "tcp"
            port = 22
            [[interface.rule]]
            name = "broken"
            bpf = "tcp prt 22"
            [[interface.rule]]
            name = "badnet"
            net = "10.0.0.0/40"
            [store]
            path = "/tmp/x.db"
            max_size_mb = 1
            max_age_hours = 1
            evidence_ring_packets = 1
            batch_rows = 0
            flush_interval_ms = 1
        "#;
        let err = Config::parse(text, "edge.toml").unwrap_err();
        let all = err.problems.join("\n");
        for needle in [
            "device.id \"bad id\"",
            "interface[0] (eth0).snaplen 10",
            "interface[0] (eth0).sample",
            "rule[0] (\"both\"): give either bpf or presets",
            "rule[1] (\"broken\"): BPF \"tcp prt 22\" does not compile",
            "rule[2] (\"badnet\"): net \"10.0.0.0/40\": prefix length must be 0 to 32",
            "store.max_size_mb 1",
            "store.batch_rows",
        ] {
            assert!(all.contains(needle), "missing {needle:?} in:\n{all}");
        }
        assert_eq!(err.problems.len(), 8, "{all}");
    }

    /// An hour is the longest active timeout (a flow's times are 32-bit microseconds); an hour
    /// is taken, a second more is refused by name.
    #[test]
    fn test_the_active_timeout_is_an_hour_at_most() {
        let at = |s: u32| format!("[device]\nid = \"e1\"\n[flows]\nactive_timeout_s = {s}\n");
        Config::parse(&at(3600), "edge.toml").unwrap();
        let err = Config::parse(&at(3601), "edge.toml").unwrap_err();
        assert_eq!(err.problems.len(), 1, "{:?}", err.problems);
        assert!(err.problems[0].contains("flows.active_timeout_s 3601: must be at most 3600"));
    }

    #[test]
    fn test_rules_compile_to_one_filter() {
        let rule = |name: &str, action, bpf: Option<&str>, port, dir| RuleConfig {
            name: name.into(),
            action,
            bpf: bpf.map(String::from),
            host: None,
            net: None,
            port,
            protocol: None,
            direction: dir,
        };
        assert_eq!(interface_filter(&[]).unwrap(), None);
        let rules = [
            rule("web", Action::Include, None, Some(80), Direction::Dst),
            rule("dns", Action::Include, Some("udp port 53"), None, Direction::Any),
            rule("ssh", Action::Exclude, None, Some(22), Direction::Any),
        ];
        let f = interface_filter(&rules).unwrap().unwrap();
        assert_eq!(f, "((dst port 80) or (udp port 53)) and not (port 22)");
        validate_bpf(&f).unwrap();
        let host = RuleConfig {
            host: Some("2001:db8::1".parse().unwrap()),
            protocol: Some(Protocol::Tcp),
            ..rule("h", Action::Include, None, None, Direction::Src)
        };
        assert_eq!(host.to_bpf().unwrap(), "tcp and src host 2001:db8::1");
        validate_bpf(&host.to_bpf().unwrap()).unwrap();
    }
}
