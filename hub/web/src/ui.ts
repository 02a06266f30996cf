// Small DOM helpers, formatting, the time range every page shares, and toasts.

type Child = Node | string | number | null | undefined | false;

/** An element with attributes (on* are listeners) and children. */
export function h<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  attrs: Record<string, unknown> = {},
  ...children: (Child | Child[])[]
): HTMLElementTagNameMap[K] {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on") && typeof v === "function") {
      el.addEventListener(k.slice(2).toLowerCase(), v as EventListener);
    } else if (k === "class") {
      el.className = String(v);
    } else if (v === true) {
      el.setAttribute(k, "");
    } else {
      el.setAttribute(k, String(v));
    }
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : String(c));
  }
  return el;
}

export function bytes(n: number): string {
  const units = ["B", "KB", "MB", "GB", "TB", "PB"];
  let i = 0;
  let v = n;
  while (Math.abs(v) >= 1000 && i < units.length - 1) {
    v /= 1000;
    i++;
  }
  return `${v.toFixed(v >= 100 || i === 0 ? 0 : 1)} ${units[i]}`;
}

export function count(n: number): string {
  return new Intl.NumberFormat("en", { notation: n >= 10000 ? "compact" : "standard" }).format(n);
}

export function when(iso: string | null | undefined): string {
  if (!iso) return "–";
  const d = new Date(iso);
  return d.toLocaleString(undefined, { dateStyle: "short", timeStyle: "medium" });
}

export function ago(iso: string | null | undefined): string {
  if (!iso) return "never";
  const s = Math.round((Date.now() - new Date(iso).getTime()) / 1000);
  if (s < 60) return `${s} s ago`;
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  if (s < 86400) return `${Math.round(s / 3600)} h ago`;
  return `${Math.round(s / 86400)} d ago`;
}

export const PROTOCOLS: Record<number, string> = { 1: "ICMP", 6: "TCP", 17: "UDP", 58: "ICMPv6" };
export function proto(n: number | null | undefined): string {
  return n === null || n === undefined ? "–" : (PROTOCOLS[n] ?? String(n));
}

// Every kind the edges name (firmware::proto::AnomalyKind), in the contract's order.
export const KINDS = [
  "port_scan", "host_sweep", "syn_flood", "udp_flood", "icmp_flood", "reflection", "brute_force",
  "dns_tunnel", "arp_spoof", "dhcp_starvation", "password_spray", "heartbleed", "lateral_movement",
  "os_fingerprint", "exploit", "http_flood", "evasion", "web_attack",
  "anomalous_flow",
];

const KIND_NAMES: Record<string, string> = {
  arp_spoof: "ARP spoofing",
  dhcp_starvation: "DHCP starvation",
  dns_tunnel: "DNS tunnel",
  syn_flood: "SYN flood",
  udp_flood: "UDP flood",
  icmp_flood: "ICMP flood",
  os_fingerprint: "OS fingerprinting",
  http_flood: "HTTP flood",
};

export function kindName(k: string): string {
  return KIND_NAMES[k] ?? k.replace(/_/g, " ");
}

// What a window or analyzer counter means, with its value: "{v}" is the value.
const COUNTERS: Record<string, string> = {
  host_dst_ports: "{v} destination ports tried",
  host_ip_protocols: "{v} IP protocols tried",
  host_protocol_unreachables: "{v} ICMP protocol unreachables received (the answers of an IP protocol scan whose probes the tap did not see)",
  host_dst_hosts: "{v} hosts probed",
  host_arp_targets: "{v} addresses asked for by ARP",
  host_syn_rate: "{v} TCP SYNs a second",
  host_crafted_probes: "{v} kinds of crafted probe (TCP flag combinations or ICMP requests no system sends itself)",
  host_udp_rate: "{v} UDP packets a second",
  host_icmp_echo_rate: "{v} ICMP echo requests a second",
  host_dhcp_macs: "{v} DHCP client addresses",
  victim_syn_rate: "{v} TCP SYNs a second received from many sources",
  victim_reflected_tcp: "{v} SYN-ACKs a second for connections it never opened",
  auth_failures: "{v} failed logins",
  auth_failures_ftp: "{v} FTP logins refused (530)",
  auth_failures_http: "{v} HTTP requests refused (401/407)",
  auth_failures_kerberos: "{v} Kerberos pre-auth failures or unknown accounts",
  auth_failures_smb: "{v} SMB logons refused",
  auth_failures_ssh: "{v} SSH logins refused (inferred from the server's encrypted answers)",
  auth_guesses: "{v} distinct credentials tried, none accepted",
  auth_guesses_ftp: "{v} distinct FTP user and password pairs tried, none accepted",
  auth_guesses_http: "{v} distinct credentials posted to login forms or sent as HTTP Basic",
  auth_accounts: "failed logins for {v} accounts",
  auth_accounts_ftp: "failed FTP logins for {v} accounts",
  auth_accounts_http: "failed HTTP logins for {v} accounts",
  auth_accounts_kerberos: "Kerberos failures for {v} accounts",
  auth_accounts_smb: "failed SMB logons for {v} accounts",
  auth_accounts_ssh: "failed SSH logins for {v} accounts",
  tls_heartbleed: "{v} TLS heartbeats reading server memory, or sent before any data",
  smb_services_created: "{v} services created remotely (svcctl CreateService)",
  http_request_rate: "{v} web requests a second (HTTP requests, TLS handshakes to 443)",
  victim_http_request_rate: "{v} web requests a second received from many sources",
  rpc_netlogon_authentications: "{v} Netlogon authentications (Zerologon, CVE-2020-1472: a machine needs one)",
  rpc_endpoint_lookups: "{v} RPC endpoint-mapper lookups (an enumeration of its services, as rpcdump does)",
  arp_binding_changes: "{v} IP-to-MAC bindings taken from another MAC",
  arp_mac_addresses: "one MAC claiming {v} addresses, with replies nobody asked for",
  arp_unasked_replies: "{v} ARP replies nobody asked for, from its MAC",
  dns_encoded_names: "{v} distinct encoded names under one domain",
  dns_txt_queries: "{v} TXT/NULL queries to one domain",
  dns_null_names: "{v} distinct names asked with type NULL under one domain (no application asks for it; iodine does)",
  dhcp_client_requests: "{v} DHCP requests from one client address",
  ip_fragment_overlaps: "{v} datagrams with fragments overlapping in other bytes (the target and a monitor may each keep another version)",
  ip_fragments_oversized: "{v} datagrams fragmented past 65,535 bytes",
  ip_fragment_lengths: "{v} datagrams with a fragment not the last yet not a multiple of 8 bytes",
  ip_fragments_past_end: "{v} datagrams with fragments past the end their last fragment gave",
  ip_fragment_split_headers: "{v} first fragments without their whole transport header (tiny fragments)",
  ipv6_fragment_headers: "{v} packets with more than one IPv6 fragment header",
  ipv6_atomic_fragments: "{v} atomic IPv6 fragments with the identification of a datagram being reassembled",
  http_sql_injections: "{v} web requests carrying SQL injection",
  http_xss_attempts: "{v} web requests carrying script (cross-site scripting)",
  http_path_traversals: "{v} web requests reaching out of the web root (../../, system files)",
  http_log4shell_lookups: "{v} web requests carrying a JNDI lookup (Log4Shell, CVE-2021-44228)",
  ipv6_header_chains: "{v} packets with an IPv6 extension header chain longer than any stack sends",
  ipv6_covert_options: "{v} IPv6 packets carrying data in options no stack sends (a covert channel)",
  ipv6_too_big_below_minimum: "{v} ICMPv6 Packet Too Big messages below the 1,280-byte minimum MTU (forged, to make a host fragment: RFC 8021)",
  http_scanner_requests: "{v} web requests from a scanning tool that names itself (Nmap Scripting Engine, Nikto, sqlmap, ...)",
  tcp_urgent11_segments: "{v} TCP segments exploiting VxWorks' IPnet stack (URGENT/11: urgent data on a SYN, a malformed TCP-AO option)",
};

// One sentence a person reads: "41 Kerberos pre-auth failures or unknown accounts from
// 10.0.0.5 in 60 s". Amplification counters name their service ("victim_amplified_ntp").
export function explain(a: { reasons: { feature: string; value: number }[]; src_ip: string; detector: string; first_seen: string; last_seen: string }): string | null {
  const r = a.reasons[0];
  if (!r || a.detector !== "window") return null;
  const v = Number.isInteger(r.value) || r.value >= 100 ? Math.round(r.value).toLocaleString() : r.value.toPrecision(3);
  const amp = /^victim_amplified_(.+)$/.exec(r.feature);
  const what = amp
    ? `${v} packets a second from ${amp[1].replace(/_/g, " ").toUpperCase()} servers it never asked`
    : COUNTERS[r.feature]?.replace("{v}", v);
  if (!what) return null;
  const secs = Math.max(1, Math.round((Date.parse(a.last_seen) - Date.parse(a.first_seen)) / 1000));
  const role = r.feature.startsWith("victim_") ? "to" : "from";
  return `${what} ${role} ${a.src_ip}, over ${secs} s.`;
}

// The time range every page shows: a preset (last N minutes) or fixed from/to.
export interface Range {
  preset: number | null; // minutes
  from: Date;
  to: Date;
}

const PRESETS: [string, number][] = [
  ["15 min", 15],
  ["1 h", 60],
  ["6 h", 360],
  ["24 h", 1440],
  ["7 d", 10080],
];

let range: Range = rangeOf(Number(localStorage.getItem("tapwatch.range") ?? 60) || 60);
const listeners: (() => void)[] = [];

function rangeOf(minutes: number): Range {
  const to = new Date();
  return { preset: minutes, from: new Date(to.getTime() - minutes * 60_000), to };
}

/** The current range; a preset is moved to now each time it is read. */
export function currentRange(): Range {
  if (range.preset !== null) range = rangeOf(range.preset);
  return range;
}

export function onRangeChange(f: () => void) {
  listeners.push(f);
}
export function clearRangeListeners() {
  listeners.length = 0;
}

function setRange(r: Range) {
  range = r;
  if (r.preset !== null) localStorage.setItem("tapwatch.range", String(r.preset));
  for (const f of listeners) f();
}

function localInput(d: Date): string {
  const off = d.getTimezoneOffset() * 60_000;
  return new Date(d.getTime() - off).toISOString().slice(0, 16);
}

/** The range picker: presets, and a custom from/to. */
export function rangePicker(): HTMLElement {
  const r = currentRange();
  const from = h("input", { type: "datetime-local", value: localInput(r.from), "aria-label": "from" });
  const to = h("input", { type: "datetime-local", value: localInput(r.to), "aria-label": "to" });
  const box = h(
    "div",
    { class: "range" },
    PRESETS.map(([label, m]) =>
      h(
        "button",
        {
          class: r.preset === m ? "on" : "",
          onclick: () => {
            setRange(rangeOf(m));
            box.replaceWith(rangePicker());
          },
        },
        label,
      ),
    ),
    from,
    to,
    h(
      "button",
      {
        onclick: () => {
          const f = new Date(from.value);
          const t = new Date(to.value);
          if (isNaN(f.getTime()) || isNaN(t.getTime()) || f >= t) {
            toast("The range needs a start before its end.", "error");
            return;
          }
          setRange({ preset: null, from: f, to: t });
          box.replaceWith(rangePicker());
        },
      },
      "Apply",
    ),
  );
  return box;
}

/** A message in the corner for a few seconds (errors stay until clicked). */
export function toast(text: string, kind: "info" | "error" | "alert" = "info", onclick?: () => void) {
  const box = document.getElementById("toasts");
  if (!box) return;
  const t = h("div", { class: `toast ${kind}`, role: kind === "error" ? "alert" : "status" }, text);
  t.addEventListener("click", () => {
    onclick?.();
    t.remove();
  });
  box.append(t);
  if (kind !== "error") setTimeout(() => t.remove(), 8000);
}

/** A panel that shows loading, then the content, an empty state, or the error. */
export async function panel<T>(
  el: HTMLElement,
  load: () => Promise<T>,
  draw: (v: T) => Node | Node[] | null,
  empty = "Nothing in this range.",
) {
  el.replaceChildren(h("p", { class: "loading" }, "Loading…"));
  try {
    const v = await load();
    const out = draw(v);
    if (out === null || (Array.isArray(out) && out.length === 0)) {
      el.replaceChildren(h("p", { class: "empty" }, empty));
    } else {
      el.replaceChildren(...(Array.isArray(out) ? out : [out]));
    }
  } catch (e) {
    el.replaceChildren(h("p", { class: "error", role: "alert" }, `Could not load: ${(e as Error).message}`));
  }
}

/**
 * A table filled a page at a time: `load(cursor)` gives rows and the next cursor (the API's
 * cursor pages). Returns the element (the table, then its "More" button) and `reload`, which
 * starts again from the first page.
 */
export function pagedTable<T>(
  head: string[],
  row: (x: T) => Node,
  load: (cursor: string | null) => Promise<{ rows: T[]; next: string | null }>,
  empty: string,
  cls = "",
): { el: HTMLElement; reload: () => Promise<void> } {
  const table = h("div", {});
  const more = h("button", { hidden: true }, "More");
  let cursor: string | null = null;
  let tbody: HTMLElement | null = null;
  const page = async (from: string | null) => {
    const p = await load(from);
    cursor = p.next;
    more.hidden = !cursor;
    return p.rows;
  };
  more.addEventListener("click", async () => {
    more.disabled = true;
    try {
      tbody?.append(...(await page(cursor)).map(row));
    } catch (e) {
      toast((e as Error).message, "error");
    } finally {
      more.disabled = false;
    }
  });
  const reload = () =>
    panel(
      table,
      () => page(null),
      (rows) => {
        if (rows.length === 0) return null;
        tbody = h("tbody", {}, rows.map(row));
        return h("table", { class: cls }, h("thead", {}, h("tr", {}, head.map((c) => h("th", {}, c)))), tbody);
      },
      empty,
    );
  return { el: h("div", {}, table, more), reload };
}
