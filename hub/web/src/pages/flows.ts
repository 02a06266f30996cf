// Flows explorer: the API's filters, newest first, a page at a time.

import { api, qs, Flow } from "../api";
import type { Page } from "../main";
import { bytes, count, currentRange, h, kindName, KINDS as ALL_KINDS, onRangeChange, pagedTable, proto, rangePicker, when } from "../ui";

const KINDS = ["", ...ALL_KINDS];

export function flows(p: Page) {
  const field = (name: string, placeholder: string, size = 14) => h("input", { name, placeholder, size, "aria-label": name });
  const device = field("device", "device", 10);
  const host = field("host", "host (address)");
  const net = field("net", "net (10.0.0.0/8)");
  const port = field("port", "port", 6);
  const protocol = h("select", { name: "protocol", "aria-label": "protocol" }, [["", "any protocol"], ["6", "TCP"], ["17", "UDP"], ["1", "ICMP"], ["58", "ICMPv6"]].map(([v, l]) => h("option", { value: v }, l)));
  const kind = h("select", { name: "kind", "aria-label": "kind" }, KINDS.map((k) => h("option", { value: k }, k ? kindName(k) : "any anomaly kind")));
  const row = (f: Flow) =>
    h("tr", {}, h("td", {}, when(f.end)), h("td", {}, f.device), h("td", {}, `${f.src_ip}:${f.src_port}`), h("td", {}, `${f.dst_ip}:${f.dst_port}`), h("td", {}, proto(f.protocol)), h("td", {}, count(f.packets)), h("td", {}, bytes(f.bytes)), h("td", {}, f.end_reason));
  const { el, reload } = pagedTable(
    ["End", "Device", "Source", "Destination", "Protocol", "Packets", "Bytes", "Ended by"],
    row,
    async (cursor) => {
      const r = currentRange();
      const page = await api.get<{ flows: Flow[]; next_cursor: string | null }>(
        `/flows${qs({ from: r.from.toISOString(), to: r.to.toISOString(), device: device.value.trim(), host: host.value.trim(), net: net.value.trim(), port: port.value.trim(), protocol: protocol.value, kind: kind.value, cursor, limit: 100 })}`,
      );
      return { rows: page.flows, next: page.next_cursor };
    },
    "No flows match.",
  );
  const form = h(
    "form",
    { class: "filters", onsubmit: (e: Event) => { e.preventDefault(); reload(); } },
    device, host, net, port, protocol, kind,
    h("button", { type: "submit" }, "Search"),
  );
  p.main.replaceChildren(h("header", {}, h("h2", {}, "Flows"), rangePicker()), form, el);
  reload();
  onRangeChange(reload);
}
