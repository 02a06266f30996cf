// Anomalies: a filtered list a page at a time, and one episode: why it was raised, its flows,
// its evidence as a pcap file, its state and notes.

import { api, qs, Anomaly, Flow, Note } from "../api";
import { chart, palette } from "../charts";
import type { Page } from "../main";
import { bytes, count, currentRange, explain, h, kindName, KINDS, onRangeChange, pagedTable, panel, proto, rangePicker, toast, when } from "../ui";

function select(name: string, options: string[], all: string): HTMLSelectElement {
  return h("select", { name, "aria-label": name }, h("option", { value: "" }, all), options.map((o) => h("option", { value: o }, kindName(o))));
}

export function anomalyList(p: Page) {
  const kind = select("kind", KINDS, "every kind");
  const severity = select("severity", ["low", "medium", "high", "critical"], "any severity");
  const state = select("state", ["new", "acknowledged", "resolved"], "any state");
  const device = h("input", { name: "device", placeholder: "device", size: 12 });
  const suppressed = h("input", { type: "checkbox", name: "include_suppressed" });

  const row = (a: Anomaly) =>
    h(
      "tr",
      { class: `sev-${a.severity}${a.suppressed ? " suppressed" : ""}` },
      h("td", {}, h("a", { href: `#/anomalies/${a.id}` }, kindName(a.kind))),
      h("td", {}, a.severity),
      h("td", {}, a.state),
      h("td", {}, a.device),
      h("td", {}, a.src_ip),
      h("td", {}, a.dst_ip ? `${a.dst_ip}${a.dst_port !== null ? `:${a.dst_port}` : ""}` : "–"),
      h("td", {}, count(a.count)),
      h("td", {}, when(a.first_seen)),
      h("td", {}, when(a.last_seen)),
    );

  const list = pagedTable(
    ["Kind", "Severity", "State", "Device", "Source", "Target", "Count", "First seen", "Last seen"],
    row,
    async (cursor) => {
      const r = currentRange();
      const q = qs({
        from: r.from.toISOString(),
        to: r.to.toISOString(),
        kind: kind.value,
        severity: severity.value,
        state: state.value,
        device: device.value.trim(),
        include_suppressed: suppressed.checked || undefined,
        cursor,
        limit: 50,
      });
      const page = await api.get<{ anomalies: Anomaly[]; next_cursor: string | null }>(`/anomalies${q}`);
      return { rows: page.anomalies, next: page.next_cursor };
    },
    "No anomalies match.",
    "anomalies",
  );
  const reload = list.reload;
  for (const el of [kind, severity, state, suppressed]) el.addEventListener("change", reload);
  device.addEventListener("change", reload);
  p.main.replaceChildren(
    h("header", {}, h("h2", {}, "Anomalies"), rangePicker()),
    h("div", { class: "filters" }, kind, severity, state, device, h("label", {}, suppressed, " suppressed too")),
    list.el,
  );
  reload();
  onRangeChange(reload);
  p.live.subscribe((e) => {
    if (e.type === "anomaly" && currentRange().preset !== null) reload();
  });
}

export async function anomalyDetail(p: Page, id: number) {
  const body = h("div", {});
  p.main.replaceChildren(h("header", {}, h("h2", {}, `Anomaly ${id}`), h("a", { href: "#/anomalies" }, "All anomalies")), body);
  const draw = async () =>
    panel(body, () => api.get<Anomaly & { notes: Note[] }>(`/anomalies/${id}`), (a) => detail(p, a, draw));
  await draw();
  p.live.subscribe((e) => {
    if (e.type === "anomaly_update" && Number(e.id) === id) draw();
  });
}

function detail(p: Page, a: Anomaly & { notes: Note[] }, redraw: () => void): Node[] {
  const analyst = p.me.role !== "viewer";
  const setState = async (state: string) => {
    try {
      await api.patch(`/anomalies/${a.id}`, { state });
      toast(`Anomaly ${a.id} is ${state}.`);
      redraw();
    } catch (e) {
      toast((e as Error).message, "error");
    }
  };
  const facts: [string, string][] = [
    ["Kind", kindName(a.kind)],
    ["What", explain(a) ?? "–"],
    ["Severity", a.severity],
    [
      "State",
      a.state === "resolved" && a.resolved_by
        ? `resolved by ${a.resolved_by}, ${when(a.resolved_at)}`
        : a.state === "acknowledged" && a.acknowledged_by
          ? `acknowledged by ${a.acknowledged_by}, ${when(a.acknowledged_at)}`
          : a.state,
    ],
    ["Device", a.device],
    ["Source", a.src_ip],
    ["Target", a.dst_ip ? `${a.dst_ip}${a.dst_port !== null ? `:${a.dst_port}` : ""} ${proto(a.protocol)}` : "–"],
    ["Detector", a.detector],
    ["Confidence", `${(a.confidence * 100).toFixed(0)} %`],
    ["Score", `${a.score.toPrecision(3)} (threshold ${a.threshold.toPrecision(3)})`],
    ["Events", count(a.count)],
    ["First seen", when(a.first_seen)],
    ["Last seen", when(a.last_seen)],
  ];
  const reasons = h("div", { class: "chart small", id: "chart-reasons" });
  if (a.reasons.length > 0) {
    const rows = [...a.reasons].reverse();
    const canvas = h("div", { class: "chart-canvas" });
    reasons.append(canvas);
    queueMicrotask(() =>
      chart(
        canvas,
        {
          color: palette,
          tooltip: { trigger: "axis" },
          grid: { left: 160, right: 30, top: 10, bottom: 20 },
          xAxis: { type: "value", name: "share" },
          yAxis: { type: "category", data: rows.map((r) => `${r.feature} = ${r.value.toPrecision(4)}`) },
          series: [{ type: "bar", data: rows.map((r) => r.contribution) }],
        },
        rows.length,
      ),
    );
  } else {
    reasons.replaceChildren(h("p", { class: "empty" }, "The detector gave no reasons."));
  }
  const flowsBox = h("div", {});
  panel(
    flowsBox,
    () => {
      const from = new Date(new Date(a.first_seen).getTime() - 60_000).toISOString();
      const to = new Date(new Date(a.last_seen).getTime() + 120_000).toISOString();
      return api.get<{ flows: Flow[] }>(`/flows${qs({ from, to, device: a.device, host: a.src_ip, limit: 50 })}`);
    },
    ({ flows }) =>
      flows.length === 0
        ? null
        : h(
            "table",
            {},
            h("thead", {}, h("tr", {}, ["End", "Source", "Destination", "Protocol", "Packets", "Bytes", "Ended by"].map((c) => h("th", {}, c)))),
            h(
              "tbody",
              {},
              flows.map((f) =>
                h(
                  "tr",
                  {},
                  h("td", {}, when(f.end)),
                  h("td", {}, `${f.src_ip}:${f.src_port}`),
                  h("td", {}, `${f.dst_ip}:${f.dst_port}`),
                  h("td", {}, proto(f.protocol)),
                  h("td", {}, count(f.packets)),
                  h("td", {}, bytes(f.bytes)),
                  h("td", {}, f.end_reason),
                ),
              ),
            ),
          ),
    "The hub holds no flows of this source in the episode's time.",
  );
  const note = h("textarea", { name: "note", rows: 3, placeholder: "Add a note", "aria-label": "note" });
  return [
    h(
      "div",
      { class: "actions" },
      analyst && a.state !== "acknowledged" && a.state !== "resolved" && h("button", { onclick: () => setState("acknowledged") }, "Acknowledge"),
      analyst && a.state !== "resolved" && h("button", { onclick: () => setState("resolved") }, "Resolve"),
      analyst && a.state !== "new" && h("button", { onclick: () => setState("new") }, "Reopen"),
      a.has_evidence
        ? h("a", { class: "button", href: `/api/v1/anomalies/${a.id}/evidence`, download: `anomaly-${a.id}.pcap` }, "Download evidence (pcap)")
        : h("span", { class: "muted" }, "No evidence received yet"),
      analyst &&
        h(
          "button",
          {
            class: "secondary",
            onclick: async () => {
              try {
                await api.post("/suppressions", { kind: a.kind, host: a.src_ip, comment: `from anomaly ${a.id}` });
                toast(`${kindName(a.kind)} from ${a.src_ip} is suppressed.`);
                redraw();
              } catch (e) {
                toast((e as Error).message, "error");
              }
            },
          },
          "Suppress this kind from this source",
        ),
    ),
    h("section", { class: "card" }, h("dl", { class: "facts" }, facts.flatMap(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]))),
    h("section", { class: "card" }, h("h3", {}, "Why: what drove it"), reasons),
    h("section", { class: "card wide" }, h("h3", {}, "Flows"), flowsBox),
    h(
      "section",
      { class: "card wide" },
      h("h3", {}, "Notes"),
      a.notes.length === 0
        ? h("p", { class: "empty" }, "No notes yet.")
        : h("ul", { class: "notes" }, a.notes.map((n) => h("li", {}, h("b", {}, n.author), " ", h("time", {}, when(n.ts)), h("p", {}, n.body)))),
      analyst &&
        h(
          "form",
          {
            onsubmit: async (e: Event) => {
              e.preventDefault();
              try {
                await api.post(`/anomalies/${a.id}/notes`, { body: note.value });
                redraw();
              } catch (x) {
                toast((x as Error).message, "error");
              }
            },
          },
          note,
          h("button", { type: "submit" }, "Add note"),
        ),
    ),
  ];
}
