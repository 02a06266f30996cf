//! The feature vector of a finished flow, in the order of `models/features.json`.
//!
//! Names, units, order and the index constants are generated from that file (see `build.rs`);
//! this module only computes the values. Every value is finite: divisions by a zero duration or a
//! zero count give 0, and "absent" is -1 where the file says so.

use crate::flow::{FlowRecord, FIRST_PACKETS};
use crate::hosts::HostFeatures;
use crate::{Int, Moments};

include!(concat!(env!("OUT_DIR"), "/features_gen.rs"));

/// One flow's features.
pub type FeatureVector = [f32; N_FEATURES];

/// Index of a feature by name.
pub fn index_of(name: &str) -> Option<usize> {
    NAMES.iter().position(|n| *n == name)
}

fn per_sec(x: f64, micros: f64) -> f32 {
    if micros > 0.0 {
        (x * 1e6 / micros) as f32
    } else {
        0.0
    }
}

fn ratio(a: f64, b: f64) -> f32 {
    if b > 0.0 {
        (a / b) as f32
    } else {
        0.0
    }
}

/// Maximum, minimum, mean and standard deviation of `n` samples into the four features named.
fn put_stats<T: Int, S: Int>(
    v: &mut FeatureVector,
    s: &Moments<T, S>,
    n: u32,
    [max, min, mean, std]: [usize; 4],
) {
    v[max] = s.max() as f32;
    v[min] = s.min() as f32;
    v[mean] = s.mean(n) as f32;
    v[std] = s.std(n) as f32;
}

/// Compute the features of a finished flow, with `host` the initiator's window features.
pub fn compute(record: &FlowRecord, host: &HostFeatures) -> FeatureVector {
    let flow = &record.flow;
    use idx::*;
    // Start from NaN so that a feature the file lists but this function forgets shows up as NaN
    // (and fails `test_every_feature_is_computed`) instead of a silent 0.
    let mut v = [f32::NAN; N_FEATURES];
    let (f, b) = (&flow.fwd, &flow.bwd);
    let duration = (flow.last() - flow.start).total_micros() as f64;
    let fwd_payload = f.payload.sum();
    let bwd_payload = b.payload.sum();
    let packets = f64::from(flow.packets());

    v[PROTOCOL] = f32::from(flow.protocol);
    v[DST_PORT] = f32::from(record.dst_port());
    v[FLOW_DURATION] = duration as f32;
    v[TOT_FWD_PKTS] = f.packets as f32;
    v[TOT_BWD_PKTS] = b.packets as f32;
    v[TOTLEN_FWD_PKTS] = fwd_payload as f32;
    v[TOTLEN_BWD_PKTS] = bwd_payload as f32;
    let fwd_len = [FWD_PKT_LEN_MAX, FWD_PKT_LEN_MIN, FWD_PKT_LEN_MEAN, FWD_PKT_LEN_STD];
    put_stats(&mut v, &f.payload, f.packets, fwd_len);
    let bwd_len = [BWD_PKT_LEN_MAX, BWD_PKT_LEN_MIN, BWD_PKT_LEN_MEAN, BWD_PKT_LEN_STD];
    put_stats(&mut v, &b.payload, b.packets, bwd_len);
    v[FLOW_BYTS_S] = per_sec(fwd_payload + bwd_payload, duration);
    v[FLOW_PKTS_S] = per_sec(packets, duration);
    let flow_iat = [FLOW_IAT_MAX, FLOW_IAT_MIN, FLOW_IAT_MEAN, FLOW_IAT_STD];
    put_stats(&mut v, &flow.iat, flow.gaps(), flow_iat);
    v[FWD_IAT_TOT] = f.iat.sum() as f32;
    put_stats(&mut v, &f.iat, f.gaps(), [FWD_IAT_MAX, FWD_IAT_MIN, FWD_IAT_MEAN, FWD_IAT_STD]);
    v[BWD_IAT_TOT] = b.iat.sum() as f32;
    put_stats(&mut v, &b.iat, b.gaps(), [BWD_IAT_MAX, BWD_IAT_MIN, BWD_IAT_MEAN, BWD_IAT_STD]);
    v[FWD_PSH_FLAGS] = f.psh as f32;
    v[BWD_PSH_FLAGS] = b.psh as f32;
    v[FWD_URG_FLAGS] = f.urg as f32;
    v[BWD_URG_FLAGS] = b.urg as f32;
    v[FWD_HEADER_LEN] = f.header_bytes as f32;
    v[BWD_HEADER_LEN] = b.header_bytes as f32;
    v[FWD_PKTS_S] = per_sec(f64::from(f.packets), duration);
    v[BWD_PKTS_S] = per_sec(f64::from(b.packets), duration);

    let all = f.payload.merged(&b.payload, f.packets, b.packets);
    let n = flow.packets();
    put_stats(&mut v, &all, n, [PKT_LEN_MAX, PKT_LEN_MIN, PKT_LEN_MEAN, PKT_LEN_STD]);
    v[PKT_LEN_VAR] = all.variance(n) as f32;

    let flag_idx = [
        FIN_FLAG_CNT,
        SYN_FLAG_CNT,
        RST_FLAG_CNT,
        PSH_FLAG_CNT,
        ACK_FLAG_CNT,
        URG_FLAG_CNT,
        ECE_FLAG_CNT,
        CWR_FLAG_CNT,
    ];
    for (&at, count) in flag_idx.iter().zip(flow.flag_counts()) {
        v[at] = count as f32;
    }
    v[DOWN_UP_RATIO] = ratio(f64::from(b.packets), f64::from(f.packets));
    v[PKT_SIZE_AVG] = ratio(fwd_payload + bwd_payload, packets);
    v[FWD_SEG_SIZE_AVG] = ratio(fwd_payload, f64::from(f.packets));
    v[BWD_SEG_SIZE_AVG] = ratio(bwd_payload, f64::from(b.packets));
    v[INIT_FWD_WIN_BYTS] = f.init_window.map_or(-1.0, f32::from);
    v[INIT_BWD_WIN_BYTS] = b.init_window.map_or(-1.0, f32::from);
    v[FWD_ACT_DATA_PKTS] = f.data_packets as f32;
    v[FWD_SEG_SIZE_MIN] = f32::from(f.min_header);
    v[FWD_WIRE_BYTES] = f.wire_bytes as f32;
    v[BWD_WIRE_BYTES] = b.wire_bytes as f32;

    let t = flow.tcp();
    let tcp = flow.protocol == 6;
    v[TCP_HANDSHAKE] = f32::from(u8::from(t.established));
    v[TCP_SYN_UNANSWERED] = f32::from(u8::from(tcp && t.syn && !t.syn_ack));
    v[TCP_REFUSED] = f32::from(u8::from(t.rst && !t.established));
    v[TCP_MSS] = t.mss.map_or(0.0, f32::from);
    v[TCP_WSCALE] = t.window_scale.map_or(-1.0, f32::from);
    let icmp = flow.icmp();
    v[ICMP_TYPE] = icmp.map_or(-1.0, |(t, _)| f32::from(t));
    v[ICMP_CODE] = icmp.map_or(-1.0, |(_, c)| f32::from(c));

    let d = flow.dns();
    v[DNS_QUERIES] = d.queries as f32;
    v[DNS_RESPONSES] = d.responses as f32;
    v[DNS_NXDOMAIN] = d.nxdomain as f32;
    v[DNS_DATA_QTYPES] = d.data_qtypes as f32;
    v[DNS_QNAME_LEN_MEAN] = ratio(f64::from(d.qname_len_sum), f64::from(d.qnames));
    v[DNS_QNAME_LEN_MAX] = f32::from(d.qname_len_max);
    v[DNS_LABEL_MAX] = f32::from(d.longest_label);
    v[DNS_QNAME_ENTROPY_MAX] = f32::from(d.max_entropy_millibits) / 1000.0;
    v[FRAG_PKTS] = flow.fragments as f32;

    let first = [
        FIRST_PKT_LEN_1,
        FIRST_PKT_LEN_2,
        FIRST_PKT_LEN_3,
        FIRST_PKT_LEN_4,
        FIRST_PKT_LEN_5,
        FIRST_PKT_LEN_6,
        FIRST_PKT_LEN_7,
        FIRST_PKT_LEN_8,
    ];
    for (i, &at) in first.iter().enumerate().take(FIRST_PACKETS) {
        v[at] = flow.first_sizes[i] as f32;
    }

    v[HOST_DST_PORTS] = host.dst_ports;
    v[HOST_DST_HOSTS] = host.dst_hosts;
    v[HOST_FLOWS] = host.flows;
    v[HOST_FAILED_CONNS] = host.failed;
    v[HOST_SYN_SYNACK_RATIO] = host.syn_synack_ratio;
    v[HOST_PKT_RATE] = host.pkt_rate;
    v[HOST_ICMP_ECHO_RATE] = host.icmp_echo_rate;
    v[HOST_ARP_RATE] = host.arp_rate;
    v[HOST_ARP_REPLY_RATIO] = host.arp_reply_ratio;
    v[HOST_DHCP_RATE] = host.dhcp_rate;
    v[HOST_DHCP_MACS] = host.dhcp_macs;
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::{FlowConfig, FlowRecord, FlowTable};
    use crate::wire::{dissect, LinkType, L3};
    use crate::Instant;

    #[test]
    fn test_names_match_features_json() {
        let json: serde_json::Value =
            serde_json::from_str(include_str!("../../models/features.json")).unwrap();
        let file: Vec<(&str, &str)> = json["features"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| (f["name"].as_str().unwrap(), f["unit"].as_str().unwrap()))
            .collect();
        let code: Vec<(&str, &str)> = NAMES.iter().copied().zip(UNITS.iter().copied()).collect();
        assert_eq!(code, file);
        const { assert!(N_FEATURES >= 40) };
        assert_eq!(index_of("flow_duration"), Some(idx::FLOW_DURATION));
    }

    #[test]
    fn test_every_feature_is_computed() {
        use crate::wire::testdata::SYN_ETH;
        let mut table = FlowTable::<16>::new(FlowConfig::default());
        let mut ended: Option<FlowRecord> = None;
        // SYN, then the same bytes turned into a SYN-ACK from the server 1 ms later.
        let t0 = Instant::from_secs(1_000);
        let syn = dissect(LinkType::Ethernet, t0, 74, &SYN_ETH).unwrap();
        let mut synack_bytes = SYN_ETH;
        synack_bytes[26..30].copy_from_slice(&[192, 168, 1, 20]);
        synack_bytes[30..34].copy_from_slice(&[192, 168, 1, 10]);
        synack_bytes[34..36].copy_from_slice(&80u16.to_be_bytes());
        synack_bytes[36..38].copy_from_slice(&40000u16.to_be_bytes());
        synack_bytes[47] = 0x12;
        let t1 = t0 + crate::Duration::from_millis(1);
        let synack = dissect(LinkType::Ethernet, t1, 74, &synack_bytes).unwrap();
        for m in [syn, synack] {
            let L3::Ip(ip) = m.l3 else { panic!() };
            table.ingest(&m, &ip, &mut |r| ended = Some(r));
        }
        assert!(ended.is_none());
        table.flush(&mut |r| ended = Some(r));
        let rec = ended.unwrap();
        let v = compute(&rec, &HostFeatures::default());
        for (name, x) in NAMES.iter().zip(v.iter()) {
            assert!(x.is_finite(), "feature {name} is in models/features.json but not computed");
        }
        assert_eq!(v[idx::PROTOCOL], 6.0);
        assert_eq!(v[idx::DST_PORT], 80.0);
        assert_eq!(v[idx::FLOW_DURATION], 1000.0);
        assert_eq!(v[idx::TOT_FWD_PKTS], 1.0);
        assert_eq!(v[idx::TOT_BWD_PKTS], 1.0);
        assert_eq!(v[idx::SYN_FLAG_CNT], 2.0);
        assert_eq!(v[idx::ACK_FLAG_CNT], 1.0);
        assert_eq!(v[idx::FWD_HEADER_LEN], 40.0);
        assert_eq!(v[idx::FWD_WIRE_BYTES], 74.0);
        assert_eq!(v[idx::INIT_FWD_WIN_BYTS], 64240.0);
        assert_eq!(v[idx::TCP_MSS], 1460.0);
        assert_eq!(v[idx::TCP_WSCALE], 7.0);
        assert_eq!(v[idx::TCP_HANDSHAKE], 0.0);
        assert_eq!(v[idx::TCP_SYN_UNANSWERED], 0.0);
        assert_eq!(v[idx::FLOW_PKTS_S], 2000.0);
        assert_eq!(v[idx::ICMP_TYPE], -1.0);
        assert_eq!(v[idx::DOWN_UP_RATIO], 1.0);
    }
}
