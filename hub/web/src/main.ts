// The Tapwatch dashboard: a login, then hash-routed pages (overview, anomalies, devices, flows,
// fleet, admin) around a live feed of what the hub pushes over its WebSocket.

import "./style.css";
import { api, ApiError, Me, whenUnauthorized } from "./api";
import { disposeCharts } from "./charts";
import { h, clearRangeListeners, toast } from "./ui";
import { overview } from "./pages/overview";
import { anomalyList, anomalyDetail } from "./pages/anomalies";
import { deviceList, deviceDetail } from "./pages/devices";
import { flows } from "./pages/flows";
import { admin } from "./pages/admin";
import { fleetLayer, fleetList } from "./pages/fleet";
import { Live } from "./live";

const app = document.getElementById("app") as HTMLElement;
let me: Me | null = null;
let live: Live | null = null;

export interface Page {
  me: Me;
  live: Live;
  main: HTMLElement;
}

whenUnauthorized(() => {
  if (me) {
    me = null;
    live?.close();
    live = null;
    toast("Your session ended: log in again.", "error");
    loginPage();
  }
});

function loginPage() {
  disposeCharts();
  const user = h("input", { name: "username", autocomplete: "username", required: true, autofocus: true });
  const pass = h("input", { name: "password", type: "password", autocomplete: "current-password", required: true });
  const err = h("p", { class: "error", role: "alert", hidden: true });
  const button = h("button", { type: "submit" }, "Log in");
  const form = h(
    "form",
    {
      class: "login",
      onsubmit: async (e: Event) => {
        e.preventDefault();
        button.disabled = true;
        err.hidden = true;
        try {
          me = await api.login(user.value, pass.value);
          start();
        } catch (x) {
          err.textContent =
            x instanceof ApiError && x.status === 429
              ? "Too many attempts: wait a minute and try again."
              : (x as Error).message;
          err.hidden = false;
        } finally {
          button.disabled = false;
        }
      },
    },
    h("h1", {}, "Tapwatch"),
    h("label", {}, "User name", user),
    h("label", {}, "Password", pass),
    button,
    err,
  );
  app.replaceChildren(form);
}

const routes: [RegExp, (p: Page, m: RegExpMatchArray) => void | Promise<void>, string][] = [
  [/^#?\/?$/, (p) => overview(p), "Overview"],
  [/^#\/anomalies\/(\d+)$/, (p, m) => anomalyDetail(p, Number(m[1])), "Anomalies"],
  [/^#\/anomalies$/, (p) => anomalyList(p), "Anomalies"],
  [/^#\/devices\/([A-Za-z0-9_.-]+)$/, (p, m) => deviceDetail(p, m[1]), "Devices"],
  [/^#\/devices$/, (p) => deviceList(p), "Devices"],
  [/^#\/flows$/, (p) => flows(p), "Flows"],
  [/^#\/fleet\/(global|groups|devices)\/([A-Za-z0-9_.-]+)$/, (p, m) => fleetLayer(p, m[1], m[2]), "Fleet"],
  [/^#\/fleet$/, (p) => fleetList(p), "Fleet"],
  [/^#\/admin$/, (p) => admin(p), "Admin"],
];

const NAV: [string, string][] = [
  ["#/", "Overview"],
  ["#/anomalies", "Anomalies"],
  ["#/devices", "Devices"],
  ["#/flows", "Flows"],
  ["#/fleet", "Fleet"],
  ["#/admin", "Admin"],
];

function route() {
  if (!me || !live) return;
  disposeCharts();
  clearRangeListeners();
  live.clearSubscribers();
  const hash = location.hash || "#/";
  const found = routes.find(([re]) => re.test(hash));
  const main = h("main", { id: "main" });
  const title = found?.[2] ?? "";
  const nav = h(
    "nav",
    {},
    h("span", { class: "brand" }, "Tapwatch"),
    NAV.map(([href, label]) => h("a", { href, class: label === title ? "on" : "" }, label)),
    h("span", { class: "spacer" }),
    h("span", { class: "who" }, `${me.username} (${me.role})`),
    h(
      "button",
      {
        class: "link",
        onclick: async () => {
          try {
            await api.logout();
          } catch {
            // The session is gone either way.
          }
          me = null;
          live?.close();
          live = null;
          loginPage();
        },
      },
      "Log out",
    ),
  );
  app.replaceChildren(nav, h("div", { class: "body" }, main, live.panel));
  if (!found) {
    main.append(h("p", { class: "error" }, `No page ${hash}.`));
    return;
  }
  const m = hash.match(found[0]) as RegExpMatchArray;
  Promise.resolve(found[1]({ me, live, main }, m)).catch((e) =>
    main.append(h("p", { class: "error", role: "alert" }, (e as Error).message)),
  );
}

function start() {
  if (!me) return;
  live?.close();
  live = new Live();
  route();
}

window.addEventListener("hashchange", route);

(async () => {
  try {
    me = await api.me();
    start();
  } catch (e) {
    if (e instanceof ApiError && e.status === 401) loginPage();
    else app.replaceChildren(h("p", { class: "error", role: "alert" }, (e as Error).message));
  }
})();
