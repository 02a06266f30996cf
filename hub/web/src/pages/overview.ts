// Overview: traffic over time, protocol and port mix, top talkers, the anomaly timeline and
// device health, for the chosen range; refreshed as the hub pushes statistics and anomalies.

import { api, qs, Anomaly, Device, Stats } from "../api";
import { chart, palette, timeAxis } from "../charts";
import type { Page } from "../main";
import { bytes, count, currentRange, h, kindName, onRangeChange, panel, proto, rangePicker, ago } from "../ui";

const SEVERITY_SIZE: Record<string, number> = { low: 8, medium: 12, high: 16, critical: 20 };

export function overview(p: Page) {
  const traffic = h("div", { class: "chart", id: "chart-traffic" });
  const protocols = h("div", { class: "chart small", id: "chart-protocols" });
  const ports = h("div", { class: "chart small", id: "chart-ports" });
  const talkers = h("div", { class: "chart small", id: "chart-talkers" });
  const timeline = h("div", { class: "chart", id: "chart-timeline" });
  const devices = h("div", { id: "device-health" });
  const totals = h("div", { class: "totals" });
  const box = (title: string, el: HTMLElement, cls = "card") => h("section", { class: cls }, h("h3", {}, title), el);
  p.main.replaceChildren(
    h("header", {}, h("h2", {}, "Overview"), rangePicker()),
    totals,
    box("Traffic", traffic, "card wide"),
    h("div", { class: "row" }, box("Protocols", protocols), box("Top ports", ports), box("Top talkers", talkers)),
    box("Anomalies", timeline, "card wide"),
    box("Devices", devices, "card wide"),
  );

  // One-minute buckets up to a day (1,440 points); longer ranges let the hub choose.
  const loadStats = () => {
    const r = currentRange();
    const day = r.to.getTime() - r.from.getTime() <= 86_400_000;
    return api.get<Stats>(
      `/stats${qs({ from: r.from.toISOString(), to: r.to.toISOString(), bucket: day ? 60 : undefined })}`,
    );
  };
  const drawStats = () =>
    panel(
      traffic,
      loadStats,
      (s) => {
        const t = s.totals;
        totals.replaceChildren(
          h("div", {}, h("b", {}, bytes(t.bytes)), " bytes"),
          h("div", {}, h("b", {}, count(t.packets)), " packets"),
          h("div", {}, h("b", {}, count(t.flows_ended)), " flows"),
        );
        if (s.series.length === 0) {
          for (const el of [protocols, ports, talkers]) el.replaceChildren(h("p", { class: "empty" }, "No traffic in this range."));
          return null;
        }
        const per = s.bucket;
        const graph = h("div", { class: "chart-canvas" });
        queueMicrotask(() =>
          chart(
            graph,
            {
              ...timeAxis(currentRange()),
              color: palette,
              legend: { top: 0 },
              yAxis: [
                { type: "value", name: "bits/s", axisLabel: { formatter: (v: number) => bytes(v).replace("B", "b") } },
                { type: "value", name: "packets/s" },
              ],
              series: [
                { name: "bits/s", type: "line", showSymbol: false, areaStyle: { opacity: 0.15 },
                  data: s.series.map((x) => [x.bucket, (x.bytes * 8) / per]) },
                { name: "packets/s", type: "line", showSymbol: false, yAxisIndex: 1,
                  data: s.series.map((x) => [x.bucket, x.packets / per]) },
              ],
            },
            s.series.length,
          ),
        );
        const mix = [
          ["TCP", t.tcp_packets],
          ["UDP", t.udp_packets],
          ["ICMP", t.icmp_packets],
          ["Other", t.other_packets],
        ].filter(([, v]) => Number(v) > 0);
        chartIn(protocols, {
          color: palette,
          tooltip: { trigger: "item" },
          series: [{ type: "pie", radius: ["40%", "70%"], data: mix.map(([name, value]) => ({ name, value })) }],
        }, mix.length);
        chartIn(ports, bars(s.top_ports.map((x) => [`${x.port}/${proto(x.protocol)}`, x.bytes])), s.top_ports.length);
        chartIn(talkers, bars(s.top_talkers.map((x) => [x.ip, x.bytes])), s.top_talkers.length);
        return graph;
      },
      "No traffic in this range.",
    );

  const drawTimeline = () =>
    panel(
      timeline,
      () => {
        const r = currentRange();
        return api.get<{ anomalies: Anomaly[] }>(
          `/anomalies${qs({ from: r.from.toISOString(), to: r.to.toISOString(), limit: 500 })}`,
        );
      },
      ({ anomalies }) => {
        if (anomalies.length === 0) return null;
        const kinds = [...new Set(anomalies.map((a) => a.kind))].sort();
        const graph = h("div", { class: "chart-canvas" });
        queueMicrotask(() => {
          const c = chart(
            graph,
            {
              ...timeAxis(currentRange()),
              tooltip: {
                trigger: "item",
                formatter: (x: { data: [string, string, number, Anomaly] }) => {
                  const a = x.data[3];
                  return `${kindName(a.kind)} from ${a.src_ip}<br>${a.severity}, ${a.count} events, ${a.state}`;
                },
              },
              grid: { left: 110, right: 20, top: 10, bottom: 50 },
              yAxis: { type: "category", data: kinds.map(kindName) },
              series: [
                {
                  type: "scatter",
                  data: anomalies.map((a) => [a.first_seen, kindName(a.kind), SEVERITY_SIZE[a.severity] ?? 10, a]),
                  symbolSize: (v: [string, string, number]) => v[2],
                  itemStyle: { color: "#d9453d", opacity: 0.75 },
                },
              ],
            },
            anomalies.length,
          );
          c.on("click", (e) => {
            const a = (e.data as [string, string, number, Anomaly])[3];
            location.hash = `#/anomalies/${a.id}`;
          });
        });
        return graph;
      },
      "No anomalies in this range.",
    );

  const drawDevices = () =>
    panel(
      devices,
      () => api.get<Device[]>("/devices"),
      (list) =>
        list.length === 0
          ? null
          : h(
              "table",
              {},
              h("thead", {}, h("tr", {}, ["Device", "Health", "Last heard", "CPU", "Memory", "Kernel drops", "Queue drops"].map((c) => h("th", {}, c)))),
              h(
                "tbody",
                {},
                list.map((d) => {
                  const m = d.metrics;
                  const drops = (k: "kernel_drops" | "queue_drops") => (m ? m.capture.reduce((s, c) => s + c[k], 0) : 0);
                  return h(
                    "tr",
                    {},
                    h("td", {}, h("a", { href: `#/devices/${d.id}` }, d.id)),
                    h("td", {}, h("span", { class: `health ${d.health}` }, d.health)),
                    h("td", {}, ago(d.last_seen)),
                    h("td", {}, m ? `${m.cpu_percent.toFixed(0)} %` : "–"),
                    h("td", {}, m ? `${bytes(m.mem_used_bytes)} of ${bytes(m.mem_total_bytes)}` : "–"),
                    h("td", { class: drops("kernel_drops") > 0 ? "warn" : "" }, count(drops("kernel_drops"))),
                    h("td", { class: drops("queue_drops") > 0 ? "warn" : "" }, count(drops("queue_drops"))),
                  );
                }),
              ),
            ),
      "No device has reported yet.",
    );

  const all = () => {
    drawStats();
    drawTimeline();
    drawDevices();
  };
  all();
  onRangeChange(all);
  // Live: a new anomaly or device change redraws its panel; statistics at most every 10 s.
  let last = 0;
  p.live.subscribe((e) => {
    if (currentRange().preset === null) return;
    if (e.type === "anomaly") drawTimeline();
    if (e.type === "device") drawDevices();
    if (e.type === "stats" && Date.now() - last > 10_000) {
      last = Date.now();
      drawStats();
    }
  });
}

function bars(rows: [string, number][]) {
  const top = rows.slice(0, 10).reverse();
  return {
    color: palette,
    tooltip: { trigger: "axis", valueFormatter: (v: number) => bytes(v) },
    grid: { left: 120, right: 20, top: 10, bottom: 20 },
    xAxis: { type: "value", splitNumber: 3, axisLabel: { formatter: (v: number) => bytes(v) } },
    yAxis: { type: "category", data: top.map((r) => r[0]) },
    series: [{ type: "bar", data: top.map((r) => r[1]) }],
  };
}

function chartIn(el: HTMLElement, option: Record<string, unknown>, points: number) {
  if (points === 0) {
    el.replaceChildren(h("p", { class: "empty" }, "Nothing in this range."));
    return;
  }
  const c = h("div", { class: "chart-canvas" });
  el.replaceChildren(c);
  chart(c, option, points);
}
