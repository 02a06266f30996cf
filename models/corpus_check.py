"""Capture-level detection figures on the public corpus.

    python3 models/corpus_check.py [--models DIR] [--repo REPOSITORY] [DATA_DIR] [TAPWATCH_EDGE]
    python3 models/corpus_check.py --write-tsv models/corpus.tsv [DATA_DIR]

DATA_DIR (default ../shared/data) holds folders of captures, each with a MANIFEST.md whose table
labels every file (ATTACK: ... / BENIGN: ...). For the kinds whose labels say them plainly (SYN
flood, amplification and SYN-ACK reflection, ARP host scan, Heartbleed, DNS tunnelling, ARP
spoofing, DHCP flood, brute force; lateral movement by a file name that says smbexec or psexec; the Zerologon exploit by one that begins with CVE-2020-1472 or zerologon, URGENT/11 by one that
begins with urgent11_cve_; fragment evasion by a folder named ipv6-malformed-fragments-N, and
IPv6 evasion by ipv6-covert-dstopts and ipv6-atomic-fragments-toobig; web attacks: SQL injection, web attack, web RCE, Log4Shell) it prints, per kind and repository,
captures named with the right kind out of captures, and for benign captures how many raised any
alert and how many of their flows an alert names (an end of the flow is the alert's source or
victim while the flow ran). Missed attack captures go to stderr. A first step to issue 15's labelled corpus.

With --repo, only that repository's captures (models/loro.py's held-out fold). With --models DIR the models run too (`analyze --models DIR`). Each alert is put down to its
detector: `classifier` or `autoencoder` (the record's `detector`), else by the counter that
tripped (its first reason): `windows` (host_* and victim_* counters), `analyzers` (the protocol
analyzers' and the slow-scan window's);
the last table says, per detector, the attack captures it names right, those only it names
right, and the benign captures it raises anything on.
"""
import re, os, sys, json, subprocess, collections
args = sys.argv[1:]
models = None
write_tsv = None
only_repo = None
while args[:1] in (['--write-tsv'], ['--models'], ['--repo']):
    if args[0] == '--write-tsv': write_tsv = args[1]
    elif args[0] == '--models': models = args[1]
    else: only_repo = args[1]
    args = args[2:]
root = args[0] if len(args) > 0 else '../shared/data'
edge = args[1] if len(args) > 1 else os.environ.get('TAPWATCH_EDGE', 'target/release/tapwatch-edge')
def detector(a):
    if a.get('detector') in ('classifier', 'autoencoder'): return a['detector']
    counter = (a.get('reasons') or [{}])[0].get('feature', '')
    return 'windows' if counter.startswith(('host_', 'victim_')) else 'analyzers'
DETECTORS = ['windows', 'analyzers', 'classifier', 'autoencoder']
by_detector = {d: [0, 0, 0] for d in DETECTORS}  # right, right alone, benign captures raised
# Captures whose MANIFEST label is wrong, with the evidence: (repository, path) -> kind.
RELABEL = {
    # A dnscat2 session (names under skullseclabs.org, dnscat2's own domain, carrying
    # "command (sirvimes)" in hex); nDPI's result file flags it "Susp DNS Traffic".
    ('ntop-nDPI', 'tests/cfgs/default/pcap/bad-dns-traffic.pcap'): 'dns_tunnel',
    # The trace of Zeek's SSH password-guessing test (protocols/ssh/detect-bruteforcing): 11
    # sessions in 70 s from one client to one server, every one refused.
    ('zeek-traces', 'testing/btest/Traces/ssh/sshguess.pcap'): 'brute_force',
    # Not an application sample: 1,252 fragments of one IPv4 datagram (id 0xa0, TCP), 16 bytes
    # each, every offset sent four times with other bytes (tshark: 313 offsets, 4 distinct
    # payloads each), the first too small for a TCP header. What fragment evasion is made of.
    ('ntop-nDPI', 'tests/cfgs/default/pcap/ip_fragmented_garbage.pcap'): 'evasion',
    # esnet's TCP control-flag captures ("BENIGN (protocol/app sample; verify)" in MANIFEST.md):
    # made with Scapy (the folder's README), one host sending a lone segment to port 80 of one
    # server from a new source port for each of 63 flag combinations (tshark: 63 ports, 63
    # combinations), NULL, SYN+FIN and FIN+PSH+URG among them; in the two-way one, 3,969
    # connections, every combination answered with every combination. No stack sends these:
    # they are the probes of nmap's NULL, FIN and Xmas scans and of its OS detection, which is
    # what an operator who sees them on a network is looking at, whoever made them.
    ('esnet-curated-pcaps', 'tcp/control/one_way_all_flags.pcap'): 'scan',
    ('esnet-curated-pcaps', 'tcp/control/two_way_all_flags.pcap'): 'scan',
    # "ATTACK: DoS" names no kind; these four are floods of kinds the edge names, by what they
    # hold (the other four are not: PPA's dosattack.pcap is 100 SYNs with random MAC and IP
    # addresses at both ends, a switch's MAC-table flood like macof's; kill_router6 is router
    # advertisements with a lifetime of 0; nDPI's dos_win98_smb_netbeui and markofu's Chilkat
    # IMAP ActiveX capture are exploits of one program each, which the edge has no signature of).
    # THC-IPv6's denial6 test 5: 35,690 ICMPv6 echo requests with extension headers in 5.3 s.
    ('suricata-verify', 'tests/ipv6-evasion/ipv6-dos-with-ext-headers-5/denial6-5.pcap'): 'icmp_flood',
    # denial6 test 6: 39,812 first fragments, never completed, of MLD reports behind a
    # router-alert hop-by-hop option (made for a router to process each) in 5.7 s.
    ('suricata-verify', 'tests/ipv6-evasion/ipv6-dos-with-ext-headers-6/denial6-6.pcap'): 'icmp_flood',
    # THC-IPv6's rsmurf6: 1,000 echo requests from the all-nodes address to it in 8 ms.
    ('suricata-verify', 'tests/ipv6-evasion/ipv6-rsmurf/rsmurf6.pcap'): 'icmp_flood',
    # Suricata's test of a SYN-flood rule: 200 SYNs, 1 ms apart, from one host to port 443 of
    # another, each from the next source port, none answered.
    ('suricata-verify', 'tests/firewall/tcp-session-syn-flood-drop-precedence/input.pcap'): 'syn_flood',
}
rows = []
for repo in sorted(os.listdir(root)):
    m = os.path.join(root, repo, 'MANIFEST.md')
    if not os.path.exists(m): continue
    for line in open(m):
        c = [x.strip() for x in line.split('|')]
        if len(c) < 7 or not re.search(r'\.(pcap|pcapng|cap)$', c[1]): continue
        rows.append((repo, c[1], c[6]))
def kind_of(label, path=''):
    l = label.lower()
    if not l.startswith('attack'): return 'benign' if l.startswith('benign') else None
    if 'heartbleed' in l: return 'heartbleed'
    if re.search(r'sql injection|web attack|web rce|log4shell', l): return 'web_attack'
    if 'dns tunneling' in l: return 'dns_tunnel'
    if 'arp spoofing' in l: return 'arp_spoof'
    if 'dhcp request flood' in l or 'starvation' in l: return 'dhcp_starvation'
    if 'brute force' in l: return 'brute_force'
    if re.search(r'smbexec|psexec', path, re.I): return 'lateral_movement'
    # Zerologon itself (not what an attacker does after it: "..._PostZeroLogon").
    if re.search(r'(^|/)(cve-2020-1472|zerologon)_', path, re.I): return 'exploit'
    # THC-IPv6's fragmentation6 tests as suricata-verify keeps them ("see file name").
    if re.search(r'(^|/)ipv6-malformed-fragments-', path): return 'evasion'
    # THC-IPv6's covert channel in destination options, and its Packet Too Big below the
    # minimum MTU (RFC 8021's atomic-fragment attack), from suricata-verify's ipv6-evasion.
    if re.search(r'(^|/)ipv6-(covert-dstopts|atomic-fragments-toobig)/', path): return 'evasion'
    # URGENT/11 (VxWorks' IPnet TCP), by its CVE in the file name.
    if re.search(r'(^|/)urgent11_cve_', path): return 'exploit'
    if 'icmp host scan' in l or 'sweep' in l: return 'scan'
    if 'scan' in l: return 'scan'
    if 'arp host scan' in l: return 'host_sweep'
    if 'syn-ack reflection' in l or 'amplification' in l: return 'reflection'
    if 'syn flood' in l or 'syn (optionally ack) flood' in l: return 'syn_flood'
    return None
def role(kind, repo):
    """Who the capture names: the victim for attacks from many or forged sources (StopDDoS's
    one-way captures of what reached a victim, reflections), else the attacker."""
    if kind == 'benign': return '-'
    return 'victim' if kind == 'reflection' or (kind == 'syn_flood' and repo.startswith('StopDDoS')) else 'attacker'
corpus = [(repo, path, RELABEL.get((repo, path)) or kind_of(label, path), label) for repo, path, label in rows]
corpus = [c for c in corpus if c[2] is not None and only_repo in (None, c[0])]
if write_tsv:
    with open(write_tsv, 'w') as f:
        f.write('# The labelled public corpus (models/CORPUS.md): made by `python3 models/corpus_check.py\n')
        f.write('# --write-tsv models/corpus.tsv ../shared/data` from each folder\'s MANIFEST.md labels and RELABEL.\n')
        f.write('# path (under the data folder)\tkind\trole\trepository\tlabel in MANIFEST.md (RELABEL may differ)\n')
        for repo, path, k, label in sorted(corpus, key=lambda c: (c[2] == 'benign', c[2], c[0], c[1])):
            f.write(f'{repo}/{path}\t{k}\t{role(k, repo)}\t{repo}\t{label}\n')
    n = collections.Counter('benign' if c[2] == 'benign' else 'attack' for c in corpus)
    print(f'{write_tsv}: {n["attack"]} attack and {n["benign"]} benign captures')
    sys.exit(0)
# A benign flow is flagged when an alert names one of its ends (as its source or its victim)
# while the flow ran: from a host window (10 s) before the episode's first sight to its last.
WINDOW_US = 10_000_000
def flagged(flow, alerts):
    ends = {flow['src_ip'], flow['dst_ip']}
    return any(ends & {a.get('src_ip'), a.get('dst_ip')} - {None}
               and flow['end_us'] >= a['first_seen_us'] - WINDOW_US
               and flow['start_us'] <= a['last_seen_us'] for a in alerts)
res = collections.defaultdict(lambda: [0, 0]); benign = [0, 0]; fa = []
benign_flows = [0, 0]  # flagged, all
for repo, path, k, label in corpus:
    f = os.path.join(root, repo, path)
    emit = 'flows,anomalies' if k == 'benign' else 'anomalies'
    cmd = [edge, 'analyze', '--emit', emit] + (['--models', models] if models else []) + [f]
    out = subprocess.run(cmd, capture_output=True, text=True).stdout
    alerts = [json.loads(l) for l in out.splitlines() if '"record":"anomaly"' in l]
    kinds = [a['kind'] for a in alerts]
    if k == 'benign':
        flows = [json.loads(l) for l in out.splitlines() if '"record":"flow"' in l]
        benign_flows[1] += len(flows)
        benign_flows[0] += sum(flagged(x, alerts) for x in flows) if alerts else 0
        benign[1] += 1
        if kinds: benign[0] += 1; fa.append((repo, path, sorted({(a['kind'], detector(a)) for a in alerts})))
        for d in {detector(a) for a in alerts}: by_detector[d][2] += 1
    else:
        r = res[(k, repo)]; r[1] += 1
        # A scan, sweep or fingerprinting ("scan or fingerprinting" in the labels) is named
        # right as port_scan, host_sweep or os_fingerprint.
        right_kinds = {'port_scan', 'host_sweep', 'os_fingerprint'} if k == 'scan' else {k}
        right = {detector(a) for a in alerts if a['kind'] in right_kinds}
        for d in right:
            by_detector[d][0] += 1
            if len(right) == 1: by_detector[d][1] += 1
        if right: r[0] += 1
        else: print('missed', k, repo, path, kinds, file=sys.stderr)
for (k, repo), (a, b) in sorted(res.items()): print(f'{k}\t{repo}\t{a}/{b}')
caught = sum(a for a, _ in res.values()); total = sum(b for _, b in res.values())
print(f'attack captures named with the right kind: {caught}/{total}')
print(f'benign captures with any alert: {benign[0]}/{benign[1]}' + (f' (models: {models})' if models else ' (no models)'))
for x in fa: print('  ', x)
share = 100 * benign_flows[0] / max(benign_flows[1], 1)
print(f'benign flows with an end an alert names: {benign_flows[0]}/{benign_flows[1]} ({share:.2f}%)')
print('detector\tright\tright alone\tbenign captures raised')
for d in DETECTORS: print(d, *by_detector[d], sep='\t')
