//! Load for `bench/ingest.sh`: a fleet of edges publishing flow batches and anomaly episodes
//! through a real broker as fast as QoS 1 lets them, each message stamped with the time it was
//! made (its `ts`), so the hub's `ingest_log` gives throughput and lag.
//!
//! `cargo run --release -p tapwatch-hub --example ingest_load -- BROKER PREFIX DEVICES FLOWS ANOMALIES [RATE]`
//! (FLOWS and ANOMALIES per device; RATE, messages a second per device, paces the publishing for
//! a lag measurement; without it they go as fast as the broker takes them).

use firmware::flow::EndReason;
use firmware::proto::{
    AnomalyKind, AnomalyMsg, FlowBatch, FlowMsg, Severity, Stream, FLOW_BATCH_MAX, SCHEMA_VERSION,
};
use rumqttc::{AsyncClient, Event, MqttOptions, Outgoing, Packet, QoS};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

fn now_us() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as i64)
}

fn flow_batch(device: &str, seq: u64, first: u64, n: usize) -> Vec<u8> {
    let ts = now_us();
    let mut b = Box::new(FlowBatch {
        schema: SCHEMA_VERSION,
        device: device.try_into().unwrap_or_default(),
        seq,
        ts,
        feature_set: firmware::features::FEATURE_SET_VERSION,
        flows: heapless::Vec::new(),
    });
    for i in 0..n as u64 {
        let k = first + i;
        let _ = b.flows.push(FlowMsg {
            src_ip: [10, (k >> 16) as u8, (k >> 8) as u8, k as u8].into(),
            src_port: 1024 + (k % 60000) as u16,
            dst_ip: [192, 0, 2, 10].into(),
            dst_port: 443,
            protocol: 6,
            vlan: 0,
            start: ts - 2_000_000,
            end: ts - 1_000,
            end_reason: EndReason::Fin,
            features: (0..firmware::features::N_FEATURES)
                .map(|f| (k + f as u64) as f32 * 0.5)
                .collect(),
        });
    }
    serde_json::to_vec(&*b).unwrap_or_default()
}

fn anomaly(device: &str, seq: u64) -> Vec<u8> {
    let ts = now_us();
    let m = AnomalyMsg {
        schema: SCHEMA_VERSION,
        device: device.try_into().unwrap_or_default(),
        seq,
        ts,
        id: seq,
        kind: AnomalyKind::PortScan,
        severity: Severity::High,
        confidence: 0.97,
        score: 412.0,
        threshold: 100.0,
        detector: "window".try_into().unwrap_or_default(),
        src_ip: [10, 9, (seq >> 8) as u8, seq as u8].into(),
        dst_ip: Some([192, 0, 2, 10].into()),
        dst_port: None,
        protocol: Some(6),
        first_seen: ts - 10_000_000,
        last_seen: ts,
        count: 412,
        reasons: heapless::Vec::new(),
    };
    serde_json::to_vec(&m).unwrap_or_default()
}

async fn edge(
    broker: (String, u16),
    prefix: String,
    device: String,
    flows: u64,
    anomalies: u64,
    rate: Option<f64>,
) {
    let mut o = MqttOptions::new(device.clone(), broker.0, broker.1);
    o.set_keep_alive(Duration::from_secs(30))
        .set_inflight(512)
        .set_max_packet_size(1 << 20, 1 << 20)
        .set_request_channel_capacity(1024);
    let (client, mut eventloop) = AsyncClient::new(o, 1024);
    let total = flows.div_ceil(FLOW_BATCH_MAX as u64) + anomalies;
    let producer = {
        let (client, device, prefix) = (client.clone(), device.clone(), prefix.clone());
        tokio::spawn(async move {
            let topic = |s: Stream| format!("{prefix}tapwatch/v1/{device}/{}", s.name());
            let (mut seq, mut done, mut aseq) = (0u64, 0u64, 0u64);
            let mut tick = rate.map(|r| {
                let mut t = tokio::time::interval(Duration::from_secs_f64(1.0 / r));
                t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
                t
            });
            while done < flows || aseq < anomalies {
                if let Some(t) = tick.as_mut() {
                    t.tick().await;
                }
                if done < flows {
                    let n = (flows - done).min(FLOW_BATCH_MAX as u64) as usize;
                    seq += 1;
                    let p = flow_batch(&device, seq, done, n);
                    let _ = client.publish(topic(Stream::Flows), QoS::AtLeastOnce, false, p).await;
                    done += n as u64;
                }
                // Anomalies interleaved in proportion.
                let want = (anomalies * done).checked_div(flows).unwrap_or(anomalies);
                // (paced: one message a tick)
                let want =
                    if tick.is_some() && flows == 0 { (aseq + 1).min(anomalies) } else { want };
                while aseq < want.max(if done >= flows && tick.is_none() { anomalies } else { 0 }) {
                    aseq += 1;
                    let p = anomaly(&device, aseq);
                    let _ =
                        client.publish(topic(Stream::Anomalies), QoS::AtLeastOnce, false, p).await;
                }
            }
        })
    };
    let mut acked = 0u64;
    while acked < total {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::PubAck(_))) => acked += 1,
            Ok(Event::Outgoing(Outgoing::Publish(_))) | Ok(_) => {}
            Err(e) => {
                eprintln!("{device}: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    let _ = producer.await;
    let _ = client.disconnect().await;
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 6 && args.len() != 7 {
        eprintln!("usage: ingest_load BROKER PREFIX DEVICES FLOWS ANOMALIES [RATE]");
        std::process::exit(64);
    }
    let (host, port) = args[1].rsplit_once(':').expect("BROKER is host:port");
    let broker = (host.to_string(), port.parse::<u16>().expect("port"));
    let devices: u64 = args[3].parse().expect("DEVICES");
    let flows: u64 = args[4].parse().expect("FLOWS");
    let anomalies: u64 = args[5].parse().expect("ANOMALIES");
    let rate: Option<f64> = args.get(6).map(|r| r.parse().expect("RATE"));
    let started = Instant::now();
    let tasks: Vec<_> = (0..devices)
        .map(|d| {
            tokio::spawn(edge(
                broker.clone(),
                args[2].clone(),
                format!("bench-{d}"),
                flows,
                anomalies,
                rate,
            ))
        })
        .collect();
    for t in tasks {
        let _ = t.await;
    }
    eprintln!(
        "published {} flows and {} anomalies from {devices} edges in {:.2} s (broker acknowledged)",
        flows * devices,
        anomalies * devices,
        started.elapsed().as_secs_f64()
    );
}
