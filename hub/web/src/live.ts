// The live feed: the hub's WebSocket (/api/v1/live), reconnecting with a backoff; new anomalies
// pop a toast and head the feed; pages subscribe to events (statistics ticks, device changes).

import { h, kindName, toast, when } from "./ui";

export interface LiveEvent {
  type: string;
  [k: string]: unknown;
}

export class Live {
  panel: HTMLElement;
  private list: HTMLElement;
  private status: HTMLElement;
  private ws: WebSocket | null = null;
  private closed = false;
  private backoff = 500;
  private subscribers = new Set<(e: LiveEvent) => void>();

  constructor() {
    this.list = h("ol", { class: "feed", "aria-label": "live anomalies" });
    this.status = h("span", { class: "status off" }, "connecting");
    this.panel = h(
      "aside",
      { class: "live" },
      h("h2", {}, "Live ", this.status),
      this.list,
      h("p", { class: "empty feed-empty" }, "New anomalies appear here as the hub receives them."),
    );
    this.connect();
  }

  subscribe(f: (e: LiveEvent) => void): () => void {
    this.subscribers.add(f);
    return () => this.subscribers.delete(f);
  }

  /** Forget the page's subscriptions (on leaving it). */
  clearSubscribers() {
    this.subscribers.clear();
  }

  close() {
    this.closed = true;
    this.ws?.close();
  }

  private connect() {
    if (this.closed) return;
    const proto = location.protocol === "https:" ? "wss" : "ws";
    const ws = new WebSocket(`${proto}://${location.host}/api/v1/live`);
    this.ws = ws;
    ws.onopen = () => {
      this.backoff = 500;
      this.status.textContent = "connected";
      this.status.className = "status on";
    };
    ws.onmessage = (m) => {
      let e: LiveEvent;
      try {
        e = JSON.parse(String(m.data));
      } catch {
        return;
      }
      this.handle(e);
    };
    ws.onclose = () => {
      this.status.textContent = "reconnecting";
      this.status.className = "status off";
      if (!this.closed) {
        setTimeout(() => this.connect(), this.backoff);
        this.backoff = Math.min(this.backoff * 2, 10_000);
      }
    };
  }

  private handle(e: LiveEvent) {
    if (e.type === "anomaly") {
      const id = Number(e.id);
      const text = `${kindName(String(e.kind))} from ${e.src_ip} on ${e.device} (${e.severity})`;
      toast(`New anomaly: ${text}`, "alert", () => (location.hash = `#/anomalies/${id}`));
      this.panel.querySelector(".feed-empty")?.remove();
      this.list.prepend(
        h(
          "li",
          { class: `sev-${e.severity}` },
          h("a", { href: `#/anomalies/${id}` }, text),
          h("time", {}, when(String(e.last_seen))),
        ),
      );
      while (this.list.children.length > 50) this.list.lastElementChild?.remove();
    } else if (e.type === "lagged" || e.type === "resync") {
      toast("The live feed missed events: the page was reloaded.", "info");
    }
    for (const f of this.subscribers) f(e);
  }
}
