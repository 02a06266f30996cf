#!/usr/bin/env python3
"""Write a pcap of N concurrent flows: one UDP packet each from a distinct source, all within a
few seconds, so a flow table must hold all N at once (none times out before the end).

Usage: bench/gen_flows.py N OUT.pcap [HOSTS]
  HOSTS  distinct source hosts the flows come from (default N: every flow from its own host,
         the worst case for the host table)
"""
import struct
import sys

n = int(sys.argv[1])
out = open(sys.argv[2], "wb")
hosts = int(sys.argv[3]) if len(sys.argv) > 3 else n
out.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
payload = b"\x00" * 18
for i in range(n):
    h = i % hosts
    src = bytes([10, 64 + (h >> 16) % 64, (h >> 8) & 255, h & 255])
    sport = 1024 + (i // hosts) % 60000
    dport = 53 + (i // hosts) // 60000
    udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0, 64, 17, 0, src, bytes([10, 1, 0, 1]))
    frame = b"\x02\x00\x00\x00\x00\x02\x02\x00\x00\x00\x00\x01\x08\x00" + ip + udp
    us = i * 50  # 20,000 new flows a second
    out.write(struct.pack("<IIII", 1_700_000_000 + us // 1_000_000, us % 1_000_000, len(frame), len(frame)))
    out.write(frame)
out.close()
