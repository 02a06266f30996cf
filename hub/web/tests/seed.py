#!/usr/bin/env python3
"""Edge messages for the dashboard's browser tests, as JSON lines for `mosquitto_pub -l`.

  seed.py seed DEVICE STREAM     the last two hours of one stream of DEVICE (status, stats,
                                 metrics, analyses, flows, anomalies, evidence)
  seed.py inject DEVICE STREAM N an anomaly (id N) now, and its evidence
  seed.py applied DEVICE REV HASH the device's answer to the hub's configuration REV: applied

The messages follow the contract (firmware/schema/*.schema.json); the hub's ingest checks them
as it would an edge's.
"""
import base64
import json
import os
import struct
import sys
import time

FEATURES = json.load(open(os.path.join(os.path.dirname(__file__), "../../../models/features.json")))
NAMES = [f["name"] for f in FEATURES["features"]]

NOW = int(time.time() * 1_000_000)
MIN = 60_000_000


def header(device, seq, ts):
    return {"schema": 1, "device": device, "seq": seq, "ts": ts}


def pcap(n):
    """A pcap file of n TCP SYN frames from 10.0.0.66 (Ethernet)."""
    out = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)
    for i in range(n):
        eth = b"\x02\x00\x00\x00\x00\x02" + b"\x02\x00\x00\x00\x00\x01" + b"\x08\x00"
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 40, i, 0, 64, 6, 0,
                         bytes([10, 0, 0, 66]), bytes([10, 0, 0, 10]))
        tcp = struct.pack("!HHIIBBHHH", 40000 + i, 20 + i, i, 0, 0x50, 0x02, 1024, 0, 0)
        frame = eth + ip + tcp
        t = NOW - (n - i) * 1000
        out += struct.pack("<IIII", t // 1_000_000, t % 1_000_000, len(frame), len(frame)) + frame
    return out


def anomaly(device, seq, ident, kind, severity, src, first, last):
    m = header(device, seq, last)
    m.update({"id": ident, "kind": kind, "severity": severity, "confidence": 0.97,
              "score": 812.0, "threshold": 50.0, "detector": "window.ports", "src_ip": src,
              "dst_ip": "10.0.0.10", "dst_port": None, "protocol": 6, "first_seen": first,
              "last_seen": last, "count": 812,
              "reasons": [{"feature": "host_dst_ports", "value": 812.0, "contribution": 0.8},
                          {"feature": "host_syn_ratio", "value": 0.99, "contribution": 0.2}]})
    return m


def evidence(device, seq, ident, n):
    m = header(device, seq, NOW)
    m.update({"anomaly": ident, "packets": n, "pcap": base64.b64encode(pcap(n)).decode()})
    return m


def seed(device, stream):
    out = []
    minutes = 120
    if stream == "status":
        m = header(device, 1, NOW)
        m.update({"state": "online", "version": "0.1.0", "uptime_s": 7200})
        out.append(m)
    for i in range(minutes):
        start = NOW - (minutes - i) * MIN
        seq = i + 1
        if stream == "stats":
            m = header(device, seq, start + MIN)
            wave = 1 + (i % 30) / 30
            m.update({"interval_start": start, "interval_end": start + MIN,
                      "packets": int(60000 * wave), "bytes": int(45_000_000 * wave),
                      "tcp_packets": int(42000 * wave), "udp_packets": int(15000 * wave),
                      "icmp_packets": 2500, "other_packets": 500, "flows_started": 900,
                      "flows_ended": 880, "parse_errors": 0,
                      "top_ports": [{"protocol": 6, "port": 443, "packets": 30000, "bytes": 30_000_000},
                                    {"protocol": 17, "port": 53, "packets": 9000, "bytes": 1_000_000},
                                    {"protocol": 6, "port": 22, "packets": 5000, "bytes": 4_000_000}],
                      "top_talkers": [{"ip": "10.0.0.10", "packets": 30000, "bytes": 25_000_000},
                                      {"ip": "10.0.0.11", "packets": 12000, "bytes": 9_000_000}]})
            out.append(m)
        elif stream == "metrics":
            m = header(device, seq, start + MIN)
            m.update({"cpu_percent": 20 + (i % 10), "mem_used_bytes": 300_000_000 + i * 1_000_000,
                      "mem_total_bytes": 2_000_000_000, "disk_used_bytes": 4_000_000_000,
                      "disk_total_bytes": 16_000_000_000, "net_rx_bytes": i * 45_000_000,
                      "net_tx_bytes": i * 1_000_000, "flows_active": 1200, "store_dropped": 0,
                      "capture": [{"interface": "eth1", "packets": i * 60000, "bytes": i * 45_000_000,
                                   "kernel_drops": 0, "queue_drops": 0, "parse_errors": 0}]})
            out.append(m)
        elif stream == "analyses" and i % 5 == 0:
            m = header(device, seq, start + MIN)
            m.update({"model": "autoencoder", "model_version": "3", "rows": 400, "score_min": 0.01,
                      "score_mean": 0.2, "score_max": 3.5, "threshold": 1.2, "flagged": 2,
                      "latency_us": 900})
            out.append(m)
    if stream == "flows":
        end = NOW - 5 * MIN
        flows = []
        for k in range(20):
            features = [0.0] * len(NAMES)
            for name, v in (("tot_fwd_pkts", 10.0), ("tot_bwd_pkts", 8.0),
                            ("totlen_fwd_pkts", 1500.0), ("totlen_bwd_pkts", 9000.0)):
                features[NAMES.index(name)] = v
            flows.append({"src_ip": "10.0.0.66" if k < 10 else "10.0.0.11", "src_port": 40000 + k,
                          "dst_ip": "10.0.0.10", "dst_port": 20 + k, "protocol": 6, "vlan": 0,
                          "start": end - 2_000_000 + k, "end": end + k, "end_reason": "rst",
                          "features": features})
        m = header(device, 1, NOW)
        m.update({"feature_set": FEATURES["version"], "flows": flows})
        out.append(m)
    if stream == "anomalies":
        out.append(anomaly(device, 1, 1, "port_scan", "high", "10.0.0.66", NOW - 6 * MIN, NOW - 5 * MIN))
        out.append(anomaly(device, 2, 2, "syn_flood", "critical", "10.0.0.77", NOW - 50 * MIN, NOW - 45 * MIN))
        out.append(anomaly(device, 3, 3, "brute_force", "medium", "10.0.0.88", NOW - 90 * MIN, NOW - 80 * MIN))
    if stream == "evidence":
        out.append(evidence(device, 1, 1, 12))
    for m in out:
        print(json.dumps(m))


def inject(device, stream, ident):
    if stream == "anomalies":
        print(json.dumps(anomaly(device, 100 + ident, ident, "host_sweep", "high", "10.0.0.99",
                                 NOW - 20_000_000, NOW)))
    else:
        print(json.dumps(evidence(device, 100 + ident, ident, 8)))


def applied(device, revision, hash_):
    m = header(device, 1, int(time.time() * 1_000_000))
    m.update({"revision": revision, "hash": hash_, "result": "applied", "error": ""})
    print(json.dumps(m))


if __name__ == "__main__":
    if sys.argv[1] == "seed":
        seed(sys.argv[2], sys.argv[3])
    elif sys.argv[1] == "applied":
        applied(sys.argv[2], int(sys.argv[3]), sys.argv[4])
    else:
        inject(sys.argv[2], sys.argv[3], int(sys.argv[4]))
