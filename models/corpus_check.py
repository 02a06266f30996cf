"""Capture-level detection figures on the public corpus, windows only.

    python3 models/corpus_check.py [DATA_DIR] [TAPWATCH_EDGE]

DATA_DIR (default ../shared/data) holds folders of captures, each with a MANIFEST.md whose table
labels every file (ATTACK: ... / BENIGN: ...). For the kinds whose labels say them plainly (SYN
flood, amplification and SYN-ACK reflection, ARP host scan, Heartbleed, DNS tunnelling, ARP
spoofing, DHCP flood, brute force; lateral movement by a file name that says smbexec or psexec) it prints, per kind and repository,
captures named with the right kind out of captures, and for benign captures how many raised any
alert. Missed attack captures go to stderr. A first step to issue 15's labelled corpus.
"""
import re, os, sys, json, subprocess, collections
root = sys.argv[1] if len(sys.argv) > 1 else '../shared/data'
edge = sys.argv[2] if len(sys.argv) > 2 else os.environ.get('TAPWATCH_EDGE', 'target/release/tapwatch-edge')
# Captures whose MANIFEST label is wrong, with the evidence: (repository, path) -> kind.
RELABEL = {
    # A dnscat2 session (names under skullseclabs.org, dnscat2's own domain, carrying
    # "command (sirvimes)" in hex); nDPI's result file flags it "Susp DNS Traffic".
    ('ntop-nDPI', 'tests/cfgs/default/pcap/bad-dns-traffic.pcap'): 'dns_tunnel',
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
    if 'dns tunneling' in l: return 'dns_tunnel'
    if 'arp spoofing' in l: return 'arp_spoof'
    if 'dhcp request flood' in l or 'starvation' in l: return 'dhcp_starvation'
    if 'brute force' in l: return 'brute_force'
    if re.search(r'smbexec|psexec', path, re.I): return 'lateral_movement'
    if 'icmp host scan' in l or 'sweep' in l: return 'scan'
    if 'scan' in l: return 'scan'
    if 'arp host scan' in l: return 'host_sweep'
    if 'syn-ack reflection' in l or 'amplification' in l: return 'reflection'
    if 'syn flood' in l or 'syn (optionally ack) flood' in l: return 'syn_flood'
    return None
res = collections.defaultdict(lambda: [0, 0]); benign = [0, 0]; fa = []
for repo, path, label in rows:
    k = RELABEL.get((repo, path)) or kind_of(label, path)
    if k is None: continue
    f = os.path.join(root, repo, path)
    out = subprocess.run([edge, 'analyze', '--emit', 'anomalies', f], capture_output=True, text=True).stdout
    kinds = [json.loads(l)['kind'] for l in out.splitlines() if '"record":"anomaly"' in l]
    if k == 'benign':
        benign[1] += 1
        if kinds: benign[0] += 1; fa.append((repo, path, kinds))
    else:
        r = res[(k, repo)]; r[1] += 1
        # A scan or sweep of either shape is named right as port_scan or host_sweep.
        ok = k in kinds or (k == 'scan' and {'port_scan', 'host_sweep'} & set(kinds))
        if ok: r[0] += 1
        else: print('missed', k, repo, path, kinds, file=sys.stderr)
for (k, repo), (a, b) in sorted(res.items()): print(f'{k}\t{repo}\t{a}/{b}')
print(f'benign captures with any alert (window detectors): {benign[0]}/{benign[1]}')
for x in fa: print('  ', x)
