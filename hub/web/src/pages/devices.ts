// Devices: their health, and one device's CPU, memory, disk, network and drops over time.

import { api, qs, Device, MetricsPoint } from "../api";
import { chart, palette, timeAxis } from "../charts";
import type { Page } from "../main";
import { ago, bytes, count, currentRange, h, onRangeChange, panel, rangePicker } from "../ui";

export function deviceList(p: Page) {
  const box = h("div", { class: "cards" });
  const draw = () =>
    panel(
      box,
      () => api.get<Device[]>("/devices"),
      (list) =>
        list.length === 0
          ? null
          : list.map((d) => {
              const m = d.metrics;
              const sum = (k: "kernel_drops" | "queue_drops") => (m ? m.capture.reduce((s, c) => s + c[k], 0) : 0);
              return h(
                "a",
                { class: "card device", href: `#/devices/${d.id}` },
                h("h3", {}, d.id, " ", h("span", { class: `health ${d.health}` }, d.health)),
                h("p", {}, `version ${d.version ?? "?"}, heard ${ago(d.last_seen)}`),
                m && h("p", {}, `CPU ${m.cpu_percent.toFixed(0)} %, memory ${bytes(m.mem_used_bytes)} of ${bytes(m.mem_total_bytes)}, ${count(m.flows_active)} flows active`),
                m && h("p", { class: sum("kernel_drops") + sum("queue_drops") > 0 ? "warn" : "" }, `drops: kernel ${count(sum("kernel_drops"))}, queue ${count(sum("queue_drops"))}, store ${count(m.store_dropped)}`),
              );
            }),
      "No device has reported yet.",
    );
  p.main.replaceChildren(h("header", {}, h("h2", {}, "Devices")), box);
  draw();
  p.live.subscribe((e) => {
    if (e.type === "device") draw();
  });
}

export function deviceDetail(p: Page, id: string) {
  const summary = h("div", {});
  const charts = h("div", { class: "grid2" });
  p.main.replaceChildren(h("header", {}, h("h2", {}, id), rangePicker()), summary, charts);
  const draw = () => {
    panel(summary, () => api.get<Device>(`/devices/${encodeURIComponent(id)}`), (d) => {
      const m = d.metrics;
      const capture = h(
        "table",
        {},
        h("thead", {}, h("tr", {}, ["Interface", "Packets", "Kernel drops", "Queue drops", "Parse errors"].map((c) => h("th", {}, c)))),
        h(
          "tbody",
          {},
          (m?.capture ?? []).map((c) =>
            h("tr", {}, h("td", {}, c.interface), h("td", {}, count(c.packets)), h("td", { class: c.kernel_drops ? "warn" : "" }, count(c.kernel_drops)), h("td", { class: c.queue_drops ? "warn" : "" }, count(c.queue_drops)), h("td", {}, count(c.parse_errors))),
          ),
        ),
      );
      // What the hub took of each stream: how far it has confirmed to the edge, seqs missing
      // above that (asked for again), seqs lost (the edge no longer had them), late arrivals,
      // and conflicts (a seq taken before with other content: a reset edge, or a forgery).
      const streams = h(
        "table",
        { "data-testid": "streams" },
        h("thead", {}, h("tr", {}, ["Stream", "Last seq", "Received", "Confirmed to", "Missing", "Lost", "Out of order", "Conflicts"].map((c) => h("th", {}, c)))),
        h(
          "tbody",
          {},
          d.streams.map((s) =>
            h("tr", {}, h("td", {}, s.stream), h("td", {}, count(s.last_seq)), h("td", {}, count(s.received)), h("td", {}, count(s.confirmed_seq)), h("td", { class: s.missing ? "warn" : "" }, count(s.missing)), h("td", { class: s.lost ? "warn" : "" }, count(s.lost)), h("td", {}, count(s.regressions)), h("td", { class: s.conflicts ? "warn" : "" }, count(s.conflicts))),
          ),
        ),
      );
      return h("div", {}, capture, h("h3", {}, "Streams, as the hub took them"), streams);
    });
    panel(
      charts,
      () => {
        const r = currentRange();
        return api.get<MetricsPoint[]>(`/devices/${encodeURIComponent(id)}/metrics${qs({ from: r.from.toISOString(), to: r.to.toISOString() })}`);
      },
      (pts) => {
        if (pts.length === 0) return null;
        const series = (title: string, lines: [string, (x: MetricsPoint) => number][], fmt: (v: number) => string) => {
          const el = h("div", { class: "chart-canvas" });
          const card = h("section", { class: "card" }, h("h3", {}, title), h("div", { class: "chart small" }, el));
          queueMicrotask(() =>
            chart(
              el,
              {
                ...timeAxis(currentRange()),
                color: palette,
                legend: { top: 0 },
                yAxis: { type: "value", axisLabel: { formatter: fmt } },
                series: lines.map(([name, f]) => ({ name, type: "line", showSymbol: false, data: pts.map((x) => [x.bucket, f(x)]) })),
              },
              pts.length,
            ),
          );
          return card;
        };
        const pct = (v: number) => `${v.toFixed(0)} %`;
        return [
          series("CPU", [["cpu", (x) => x.cpu_percent]], pct),
          series("Memory", [["used", (x) => x.mem_used_bytes], ["total", (x) => x.mem_total_bytes]], bytes),
          series("Disk", [["used", (x) => x.disk_used_bytes], ["total", (x) => x.disk_total_bytes]], bytes),
          series("Network", [["rx bytes/s", (x) => x.net_rx_bps], ["tx bytes/s", (x) => x.net_tx_bps]], bytes),
          series("Drops since start", [["kernel", (x) => x.kernel_drops], ["queue", (x) => x.queue_drops], ["store", (x) => x.store_dropped]], (v) => count(v)),
        ];
      },
      "No metrics in this range.",
    );
  };
  draw();
  onRangeChange(draw);
}
