#!/usr/bin/env python3
"""Compare the MCU example's messages with what `tapwatch-edge analyze` finds in the same captures.

Usage: compare.py MCU_OUTPUT EDGE_BINARY FEATURES_JSON EXPECTED NAME=PCAP...

EXPECTED is the anomalies the captures hold, `kind@source` separated by commas (empty for
none): the MCU must raise exactly these.

MCU_OUTPUT holds lines `topic payload` (the contract's flows and anomalies messages, captures in
the order given). For each capture, `analyze --emit flows,anomalies` (no models: the MCU runs the
window detectors and analyzers, not the models) must give the same flows (in any order: those that
end at once come in their table's order), with the same endpoints, times, end reason and feature values, and the same anomalies as the episodes'
last messages: kind, source, first and last seen, count, score. Exits 1 on any difference.
"""
import json
import math
import subprocess
import sys


def mcu_messages(path):
    """Every flow (in order) and every anomaly message in the MCU's output."""
    flows, anomalies = [], []
    with open(path) as f:
        for line in f:
            topic, _, payload = line.rstrip("\n").partition(" ")
            msg = json.loads(payload)
            if topic.endswith("/flows"):
                flows.extend(msg["flows"])
            elif topic.endswith("/anomalies"):
                anomalies.append(msg)
            else:
                raise SystemExit(f"unexpected topic {topic}")
    return flows, anomalies


def close(a, b):
    if a is None or b is None:
        return a is None and b is None
    if isinstance(a, float) and math.isnan(a):
        return isinstance(b, float) and math.isnan(b)
    return math.isclose(float(a), float(b), rel_tol=1e-6, abs_tol=1e-6)


def main():
    mcu_out, edge, features_json, expected = sys.argv[1:5]
    captures = [a.split("=", 1) for a in sys.argv[5:]]
    names = [f["name"] for f in json.load(open(features_json))["features"]]
    mcu_flows, mcu_anomalies = mcu_messages(mcu_out)
    # The last message of each episode is what it ended as.
    last = {}
    for a in mcu_anomalies:
        last[a["id"]] = a
    mcu_ends = sorted(last.values(), key=lambda a: (a["first_seen"], a["id"]))
    edge_flows, edge_anomalies = [], []
    for name, pcap in captures:
        out = subprocess.run(
            [edge, "analyze", "--emit", "flows,anomalies", pcap],
            check=True, capture_output=True, text=True,
        ).stdout
        for line in out.splitlines():
            r = json.loads(line)
            if r.get("record") == "flow":
                edge_flows.append(r)
            elif r.get("record") == "anomaly":
                edge_anomalies.append(r)
    problems = []
    if len(mcu_flows) != len(edge_flows):
        problems.append(f"flows: MCU {len(mcu_flows)}, Linux {len(edge_flows)}")
    # Flows that end together (at a sweep, at the end) come in the order of their table, whose
    # shards differ (one inline table here, the daemon's many): compare them by key.
    def key(f, start, proto):
        return (f["src_ip"], f["src_port"], f["dst_ip"], f["dst_port"], f[start], f["end_reason"])
    mcu_flows.sort(key=lambda f: key(f, "start", "protocol"))
    edge_flows.sort(key=lambda f: key(f, "start_us", "protocol"))
    for i, (m, e) in enumerate(zip(mcu_flows, edge_flows)):
        same = (
            m["src_ip"] == e["src_ip"] and m["src_port"] == e["src_port"]
            and m["dst_ip"] == e["dst_ip"] and m["dst_port"] == e["dst_port"]
            and m["start"] == e["start_us"] and m["end"] == e["end_us"]
            and m["end_reason"] == e["end_reason"] and m["vlan"] == e["vlan"]
        )
        if not same:
            problems.append(f"flow {i}: MCU {m} / Linux {e}")
            continue
        for n, v in zip(names, m["features"]):
            if not close(v, e["features"][n]):
                problems.append(f"flow {i}: feature {n}: MCU {v}, Linux {e['features'][n]}")
    edge_anomalies.sort(key=lambda a: (a["first_seen_us"], a["id"]))
    if len(mcu_ends) != len(edge_anomalies):
        problems.append(f"anomalies: MCU {len(mcu_ends)}, Linux {len(edge_anomalies)}")
    for m, e in zip(mcu_ends, edge_anomalies):
        same = (
            m["kind"] == e["kind"] and m["src_ip"] == e["src_ip"]
            and m["first_seen"] == e["first_seen_us"] and m["last_seen"] == e["last_seen_us"]
            and m["count"] == e["count"] and close(m["score"], e["score"])
        )
        if not same:
            problems.append(f"anomaly: MCU {m} / Linux {e}")
    raised = {f"{a['kind']}@{a['src_ip']}" for a in mcu_ends}
    wanted = {e for e in expected.split(",") if e}
    if raised != wanted:
        problems.append(f"the MCU raised {sorted(raised)}, the captures hold {sorted(wanted)}")
    for p in problems[:10]:
        print(p if len(p) < 400 else p[:400] + " ...", file=sys.stderr)
    print(
        f"MCU and Linux: {len(mcu_flows)} and {len(edge_flows)} flows, "
        f"{len(mcu_ends)} and {len(edge_anomalies)} anomalies "
        f"({', '.join(sorted(a['kind'] + ' from ' + a['src_ip'] for a in mcu_ends))}); "
        f"{len(problems)} differences"
    )
    sys.exit(1 if problems else 0)


main()
