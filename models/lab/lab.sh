#!/usr/bin/env bash
# Labelled traffic from real tools, between network namespaces made here: one capture per step,
# and labels.csv saying what made each (capture, label, the source a detector should name: the
# attacker's address; for ARP spoofing the address it claims; for DHCP starvation 0.0.0.0; for
# reflection the victim, whom the reflector's answers flood).
#
# Usage: sudo [LAB_ROUND=N] models/lab/lab.sh OUT_DIR [STEP...]
#   Benign steps: web ping dns ssh scp ftp bulk idle
#   Attack steps: scan_syn scan_connect scan_udp scan_fin scan_null scan_xmas sweep syn_flood
#   udp_flood icmp_flood reflection brute_ssh brute_ftp brute_http http_flood dns_tunnel
#   arp_spoof dhcp_starvation
#   Default: all of them. LAB_ROUND (1, 2, 3, ...; default 1) varies ports, rates, counts and
#   timing, so that several rounds give distinct captures of each kind (training splits by capture).
#
# Topology: a bridge twlab0 in the root namespace (the capture point, like a mirror port) with
# three namespaces on it: twl-srv 10.88.0.10 and .11 (HTTP on 8080, SSH on 22, FTP on 21, DNS on
# 53 with dnsmasq, an iodine DNS tunnel server on .11; router to 10.89.0.0/24, where no host
# answers), twl-cli 10.88.0.20 (benign client, and the reflection's victim), twl-atk 10.88.0.66
# (attacker). Traffic stays in these namespaces. Needs root, iproute2, tcpdump, nmap, hping3,
# hydra, openssh-server, vsftpd, dnsmasq, iodine, dig, curl, ping and python3 (scripts/setup.sh
# --lab installs them). Everything made is removed on exit; no user or system service is touched.
set -euo pipefail
out=${1:?usage: lab.sh OUT_DIR [STEP...]}
shift
steps=("$@")
[ ${#steps[@]} -gt 0 ] || steps=(web ping dns ssh scp ftp bulk idle
  scan_syn scan_connect scan_udp scan_fin scan_null scan_xmas sweep syn_flood udp_flood icmp_flood
  reflection brute_ssh brute_ftp brute_http http_flood dns_tunnel arp_spoof dhcp_starvation)
round=${LAB_ROUND:-1}
[[ $round =~ ^[1-9][0-9]*$ ]] || { echo "lab: LAB_ROUND must be a positive integer" >&2; exit 64; }
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$out"
out=$(cd "$out" && pwd)
srv=10.88.0.10 tun=10.88.0.11 cli=10.88.0.20 atk=10.88.0.66
work=

cleanup() {
  pkill -f "tcpdump -i twlab0" 2>/dev/null || true
  for ns in twl-srv twl-cli twl-atk; do
    ip netns pids "$ns" 2>/dev/null | xargs -r kill 2>/dev/null || true
  done
  sleep 0.2
  for ns in twl-srv twl-cli twl-atk; do
    ip netns pids "$ns" 2>/dev/null | xargs -r kill -9 2>/dev/null || true
    ip netns del "$ns" 2>/dev/null || true
  done
  ip link del twlab0 2>/dev/null || true
  [ -z "$work" ] || rm -rf "$work"
}
trap cleanup EXIT
cleanup
work=$(mktemp -d /tmp/twlab.XXXXXX)
cd "$work" # hydra leaves a restore file where it runs when it is stopped

source "$here/../../scripts/bridge-hosts.sh"
bridge_hosts twlab0 twl srv:$srv cli:$cli atk:$atk
ip netns exec twl-srv ip addr add "$tun/24" dev eth0
ip netns exec twl-srv sysctl -qw net.ipv4.ip_forward=1
ip netns exec twl-atk ip route add 10.89.0.0/24 via "$srv"
inside() { local ns=$1; shift; ip netns exec "twl-$ns" "$@"; }

# The server's services, each with its own configuration in $work.
mkdir -p "$work/www" "$work/ftp" /run/sshd /var/run/vsftpd/empty
cp "$here/lab.sh" "$work/www/lab.sh"
head -c $((4 << 20)) /dev/urandom > "$work/www/bulk.bin"
head -c $((1 << 20)) /dev/urandom > "$work/ftp/file.bin"
inside srv sh -c "cd '$work/www' && exec python3 -m http.server 8080 --bind $srv" > /dev/null 2>&1 &
inside srv sh -c "cd '$work/www' && exec python3 -m http.server 8081" > /dev/null 2>&1 &
ssh-keygen -q -t ed25519 -N '' -f "$work/hostkey"
ssh-keygen -q -t ed25519 -N '' -f "$work/clientkey"
cp "$work/clientkey.pub" "$work/authorized_keys"
printf '%s\n' "ListenAddress $srv" "HostKey $work/hostkey" "PermitRootLogin yes" \
  "AuthorizedKeysFile $work/authorized_keys" "PasswordAuthentication yes" \
  "KbdInteractiveAuthentication no" "UsePAM no" "StrictModes no" "MaxAuthTries 6" \
  "MaxStartups 100" "PidFile none" \
  "Subsystem sftp /usr/lib/openssh/sftp-server" > "$work/sshd_config"
inside srv /usr/sbin/sshd -D -e -f "$work/sshd_config" > /dev/null 2>&1 &
printf '%s\n' listen=YES "listen_address=$srv" background=NO anonymous_enable=YES \
  "anon_root=$work/ftp" no_anon_password=YES local_enable=YES write_enable=NO \
  seccomp_sandbox=NO delay_failed_login=1 secure_chroot_dir=/var/run/vsftpd/empty pasv_enable=YES \
  "pasv_address=$srv" > "$work/vsftpd.conf"
inside srv vsftpd "$work/vsftpd.conf" > /dev/null 2>&1 &
txt=$(python3 -c 'print(",".join(["x" * 250] * 6))')
inside srv dnsmasq -k --no-resolv --no-hosts --bind-interfaces --listen-address="$srv" \
  --edns-packet-max=4096 --address=/lab.test/$srv --txt-record="big.lab.test,$txt" \
  --pid-file= --user=root > /dev/null 2>&1 &
inside srv iodined -f -c -l "$tun" -P twlab 192.168.99.1 t.lab.test > /dev/null 2>&1 &
seq 1 400 | sed 's/^/guess/' > "$work/words"
printf '%s\n' admin root user test ftp > "$work/users"
# A DNS query for big.lab.test TXT with EDNS0 (4096-byte answers): the reflection's payload.
python3 -c '
import struct, sys
q = struct.pack("!HHHHHH", 0x7a7a, 0x0100, 1, 0, 0, 1)
q += b"".join(bytes([len(p)]) + p for p in (b"big", b"lab", b"test")) + b"\0" + struct.pack("!HH", 16, 1)
q += b"\0" + struct.pack("!HHIH", 41, 4096, 0, 0)
open(sys.argv[1], "wb").write(q)' "$work/query.bin"
qlen=$(stat -c %s "$work/query.bin")

# Neighbours learnt and services up before the first capture, so each step starts clean.
inside cli ping -c 1 -W 1 "$srv" > /dev/null
inside atk ping -c 1 -W 1 "$srv" > /dev/null
inside atk ping -c 1 -W 1 "$cli" > /dev/null
for _ in $(seq 50); do
  inside cli curl -s -o /dev/null "http://$srv:8080/" && (exec 3<> "/dev/tcp/$srv/22") 2> /dev/null \
    && break
  sleep 0.1
done
ssh_opts=(-i "$work/clientkey" -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o BatchMode=yes)

# LAB_HOOK, when set, is run as `LAB_HOOK before|after STEP LABEL SOURCE` around each step
# (bench/lab-live.sh starts and stops a live edge there), and steps.tsv gets each step's
# command's start (Unix seconds).
record() { # step label source command...
  local step=$1 label=$2 source=$3
  shift 3
  [ -z "${LAB_HOOK:-}" ] || "$LAB_HOOK" before "$step" "$label" "$source"
  tcpdump -i twlab0 -s 400 -U -w "$out/$step.pcap" 2> /dev/null &
  local dump=$!
  sleep 1
  printf '%s\t%s\t%s\t%s\n' "$step" "$label" "$source" "$(date +%s.%N)" >> "$out/steps.tsv"
  "$@" > /dev/null 2>&1 || true
  sleep 1
  kill -INT "$dump"
  wait "$dump" 2> /dev/null || true
  [ -z "${LAB_HOOK:-}" ] || "$LAB_HOOK" after "$step" "$label" "$source"
  printf '%s.pcap,%s,%s\n' "$step" "$label" "$source" >> "$out/labels.csv"
  echo "lab: $step ($label) $(du -h "$out/$step.pcap" | cut -f1)" >&2
}

# What varies between rounds: port ranges, rates, counts, sizes.
r=$round
ports="$((1 + (r - 1) * 50))-$((200 + (r - 1) * 150))"
case $((r % 3)) in 1) rate=--flood ;; 2) rate="-i u20" ;; *) rate="-i u100" ;; esac
hport=$((8080 - (r % 2) * 7000)) # 1080 or 8080
tunnel() { # iodine's client through the DNS tunnel, four sessions: a download, then pings
  local pid
  for session in 1 2 3 4; do
    # Not through `inside` (a function: `&` would fork a subshell, and killing that leaves
    # iodine polling its server with NULL queries through every later step): ip netns exec
    # execs iodine in this pid.
    ip netns exec twl-atk iodine -f -r -P twlab "$tun" t.lab.test > /dev/null 2>&1 &
    pid=$!
    for _ in $(seq 100); do inside atk ip link show dns0 > /dev/null 2>&1 && break; sleep 0.1; done
    sleep 0.5
    inside atk curl -s -m 8 -o /dev/null -r "0-$((r * session * 15000))" "http://192.168.99.1:8081/bulk.bin" || true
    inside atk ping -c $((2 + r + session)) -i 0.2 -s 300 192.168.99.1 || true
    kill "$pid"
    wait "$pid" 2> /dev/null || true
    sleep 0.5
  done
}

step() {
  case $1 in
    web) record web benign - inside cli sh -c "for i in \$(seq $((20 + 10 * r))); do curl -s -o /dev/null http://$srv:8080/lab.sh; sleep 0.05; done" ;;
    ping) record ping benign - inside cli ping -c $((10 + 5 * r)) -i 0.2 "$srv" ;;
    dns) record dns benign - inside cli sh -c "for i in \$(seq $((20 + 10 * r))); do dig +short +tries=1 @$srv host\$i.lab.test A; dig +short +tries=1 @$srv www\$i.lab.test AAAA; sleep 0.05; done" ;;
    ssh) record ssh benign - inside cli sh -c "for i in \$(seq $((3 + 2 * r))); do ssh ${ssh_opts[*]} root@$srv \"uname -a; ls -l /usr/bin | head -\$((i * 40)); sleep 0.\$i; cat /etc/os-release\"; sleep 0.2; done" ;;
    scp) record scp benign - inside cli scp "${ssh_opts[@]}" "root@$srv:$work/www/bulk.bin" "$work/copy.bin" ;;
    ftp) record ftp benign - inside cli sh -c "for i in \$(seq $((4 + 2 * r))); do curl -s -o /dev/null -r 0-\$((i * 100000)) ftp://$srv/file.bin; curl -s -o /dev/null ftp://$srv/; sleep 0.\$i; done" ;;
    bulk) record bulk benign - inside cli curl -s -o /dev/null --limit-rate "${r}M" "http://$srv:8080/bulk.bin" ;;
    idle) record idle benign - inside cli sh -c "ping -c 4 -i 1 $srv & dig +short @$srv ntp.lab.test; sleep 2; dig +short @$srv time.lab.test; wait" ;;
    scan_syn) record scan_syn port_scan "$atk" inside atk nmap -n -Pn -sS -p "$ports" --max-retries 0 -T4 "$srv" ;;
    scan_connect) record scan_connect port_scan "$atk" inside atk nmap -n -Pn -sT -p "$ports" --max-retries 0 -T4 "$srv" ;;
    scan_udp) record scan_udp port_scan "$atk" inside atk nmap -n -Pn -sU -p "$((1 + (r - 1) * 40))-$((120 + (r - 1) * 40))" --max-retries 0 -T5 "$srv" ;;
    scan_fin) record scan_fin port_scan "$atk" inside atk nmap -n -Pn -sF -p "$ports" --max-retries 0 -T4 "$srv" ;;
    scan_null) record scan_null port_scan "$atk" inside atk nmap -n -Pn -sN -p "$ports" --max-retries 0 -T4 "$srv" ;;
    scan_xmas) record scan_xmas port_scan "$atk" inside atk nmap -n -Pn -sX -p "$ports" --max-retries 0 -T4 "$srv" ;;
    sweep) record sweep host_sweep "$atk" inside atk nmap -n -sn -PE --send-ip --max-retries 0 -T5 "10.89.0.0/$((25 - r % 2))" ;;
    syn_flood) record syn_flood syn_flood "$atk" inside atk timeout 4 hping3 -q -S $rate -p "$hport" "$srv" ;;
    udp_flood) record udp_flood udp_flood "$atk" inside atk timeout 4 hping3 -q --udp $rate -p $((9 + r)) "$srv" ;;
    icmp_flood) record icmp_flood icmp_flood "$atk" inside atk timeout 4 hping3 -q --icmp $rate -d $((r * 50)) "$srv" ;;
    reflection) record reflection reflection "$cli" inside atk timeout 4 hping3 -q --udp -a "$cli" -s $((1024 + r * 1000)) -p 53 -E "$work/query.bin" -d "$qlen" -i "u$((r * 500))" "$srv" ;;
    # hydra 9.4 (with bookworm's libssh) does not reconnect once sshd closes a connection at
    # MaxAuthTries: a run is 1 + 16 connections of six tries, then it stalls. So the step runs
    # it in bursts, as an attacker working through a list does; one burst alone is a count that
    # a loaded machine can cut short.
    brute_ssh) record brute_ssh brute_force "$atk" inside atk sh -c "for k in \$(seq $((1 + r / 2))); do timeout 4 hydra -I -q -l root -P '$work/words' -t 16 ssh://$srv; done" ;;
    brute_ftp) record brute_ftp brute_force "$atk" inside atk timeout $((6 + 2 * r)) hydra -I -q -L "$work/users" -P "$work/words" -t 16 "ftp://$srv" ;;
    brute_http) record brute_http brute_force "$atk" inside atk timeout $((4 + 2 * r)) hydra -I -q -L "$work/users" -P "$work/words" -t $((2 + r)) -s 8080 "$srv" http-post-form "/login:user=^USER^&pass=^PASS^:F=Unsupported" ;;
    http_flood) record http_flood http_flood "$atk" inside atk python3 "$here/http_flood.py" "$srv" 8080 $((3 + r / 2)) ;;
    dns_tunnel) record dns_tunnel dns_tunnel "$atk" tunnel ;;
    arp_spoof) record arp_spoof arp_spoof "$atk" inside atk python3 "$here/arp_spoof.py" eth0 "$srv" "$cli" $((30 + 10 * r)) "$atk" ;;
    dhcp_starvation) record dhcp_starvation dhcp_starvation 0.0.0.0 inside atk python3 "$here/dhcp_starve.py" eth0 $((30 + 10 * r)) ;;
    *) echo "lab: no step $1" >&2; exit 64 ;;
  esac
}

: > "$out/labels.csv"
: > "$out/steps.tsv"
for s in "${steps[@]}"; do step "$s"; done
