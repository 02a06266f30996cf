// Admin: suppression rules (analysts and admins change them), users and API tokens (admins).

import { api, Rule, Token, User } from "../api";
import type { Page } from "../main";
import { h, kindName, KINDS as ALL_KINDS, panel, toast, when } from "../ui";

const KINDS = ["", ...ALL_KINDS];

async function act(f: () => Promise<unknown>, done: string, then: () => void) {
  try {
    await f();
    toast(done);
    then();
  } catch (e) {
    toast((e as Error).message, "error");
  }
}

export function admin(p: Page) {
  const analyst = p.me.role !== "viewer";
  const isAdmin = p.me.role === "admin";
  const rules = h("div", {});
  const users = h("div", {});
  const tokens = h("div", {});
  p.main.replaceChildren(
    ...[
    h("header", {}, h("h2", {}, "Admin")),
    h("section", { class: "card wide" }, h("h3", {}, "Suppression rules"), rules, analyst && ruleForm(() => drawRules())),
    isAdmin && h("section", { class: "card wide" }, h("h3", {}, "Users"), users, userForm(() => drawUsers())),
    isAdmin && h("section", { class: "card wide" }, h("h3", {}, "API tokens"), tokens, tokenForm(() => drawTokens())),
    !isAdmin && h("p", { class: "muted" }, "Users and tokens are managed by admins."),
    ].filter((x): x is HTMLElement => x instanceof HTMLElement),
  );
  const drawRules = () =>
    panel(rules, () => api.get<Rule[]>("/suppressions"), (list) =>
      list.length === 0
        ? null
        : h("table", {},
            h("thead", {}, h("tr", {}, ["Device", "Kind", "Host", "Net", "Port", "Comment", "By", ""].map((c) => h("th", {}, c)))),
            h("tbody", {}, list.map((r) =>
              h("tr", {},
                [r.device, r.kind && kindName(r.kind), r.host, r.net, r.port, r.comment, `${r.created_by}, ${when(r.created_at)}`].map((v) => h("td", {}, v === null || v === "" ? "any" : String(v))),
                h("td", {}, analyst && h("button", { class: "link", onclick: () => act(() => api.del(`/suppressions/${r.id}`), "Rule removed.", drawRules) }, "Remove")),
              ))),
          ),
      "No suppression rules: every anomaly is shown.");
  const drawUsers = () =>
    panel(users, () => api.get<User[]>("/users"), (list) =>
      h("table", {},
        h("thead", {}, h("tr", {}, ["User", "Role", "State", "Since", ""].map((c) => h("th", {}, c)))),
        h("tbody", {}, list.map((u) => {
          const role = h("select", { "aria-label": `role of ${u.username}` }, ["viewer", "analyst", "admin"].map((r) => h("option", { value: r, selected: r === u.role }, r)));
          role.addEventListener("change", () => act(() => api.patch(`/users/${u.id}`, { role: role.value }), `${u.username} is now ${role.value}.`, drawUsers));
          return h("tr", {},
            h("td", {}, u.username), h("td", {}, role), h("td", {}, u.disabled ? "disabled" : "active"), h("td", {}, when(u.created_at)),
            h("td", {},
              h("button", { class: "link", onclick: () => act(() => api.patch(`/users/${u.id}`, { disabled: !u.disabled }), `${u.username} ${u.disabled ? "enabled" : "disabled"}.`, drawUsers) }, u.disabled ? "Enable" : "Disable"),
              " ",
              h("button", { class: "link", onclick: () => confirm(`Remove ${u.username}?`) && act(() => api.del(`/users/${u.id}`), `${u.username} removed.`, drawUsers) }, "Remove")));
        }))));
  const drawTokens = () =>
    panel(tokens, () => api.get<Token[]>("/tokens"), (list) =>
      list.length === 0
        ? null
        : h("table", {},
            h("thead", {}, h("tr", {}, ["Name", "Acts as", "Created", "Expires", "Last used", ""].map((c) => h("th", {}, c)))),
            h("tbody", {}, list.map((t) =>
              h("tr", {}, h("td", {}, t.name), h("td", {}, t.username), h("td", {}, when(t.created_at)), h("td", {}, t.expires_at ? when(t.expires_at) : "never"), h("td", {}, when(t.last_used)),
                h("td", {}, h("button", { class: "link", onclick: () => act(() => api.del(`/tokens/${t.id}`), `Token ${t.name} revoked.`, drawTokens) }, "Revoke")))))),
      "No API tokens.");
  drawRules();
  if (isAdmin) {
    drawUsers();
    drawTokens();
  }
}

function ruleForm(then: () => void): HTMLElement {
  const kind = h("select", { name: "kind", "aria-label": "kind" }, KINDS.map((k) => h("option", { value: k }, k ? kindName(k) : "any kind")));
  const field = (name: string, placeholder: string) => h("input", { name, placeholder, "aria-label": name, size: 14 });
  const device = field("device", "device");
  const host = field("host", "host");
  const net = field("net", "net (CIDR)");
  const port = field("port", "port");
  const comment = field("comment", "why");
  return h("form", {
    class: "filters",
    onsubmit: (e: Event) => {
      e.preventDefault();
      const body: Record<string, unknown> = { comment: comment.value };
      if (kind.value) body.kind = kind.value;
      if (device.value.trim()) body.device = device.value.trim();
      if (host.value.trim()) body.host = host.value.trim();
      if (net.value.trim()) body.net = net.value.trim();
      if (port.value.trim()) body.port = Number(port.value);
      act(() => api.post("/suppressions", body), "Rule added.", then);
    },
  }, kind, device, host, net, port, comment, h("button", { type: "submit" }, "Add rule"));
}

function userForm(then: () => void): HTMLElement {
  const name = h("input", { name: "username", placeholder: "user name", "aria-label": "new user name" });
  const pass = h("input", { name: "password", type: "password", placeholder: "password (10+)", "aria-label": "new user password" });
  const role = h("select", { name: "role", "aria-label": "new user role" }, ["viewer", "analyst", "admin"].map((r) => h("option", { value: r }, r)));
  return h("form", {
    class: "filters",
    onsubmit: (e: Event) => {
      e.preventDefault();
      act(() => api.post("/users", { username: name.value, password: pass.value, role: role.value }), `${name.value} added.`, then);
    },
  }, name, pass, role, h("button", { type: "submit" }, "Add user"));
}

function tokenForm(then: () => void): HTMLElement {
  const name = h("input", { name: "name", placeholder: "what it is for", "aria-label": "token name" });
  const user = h("input", { name: "username", placeholder: "acts as (default: you)", "aria-label": "token user" });
  const shown = h("p", { class: "secret", hidden: true });
  return h("div", {},
    h("form", {
      class: "filters",
      onsubmit: async (e: Event) => {
        e.preventDefault();
        try {
          const t = await api.post<{ secret: string }>("/tokens", { name: name.value, username: user.value.trim() || undefined });
          shown.replaceChildren("Copy it now, it is not shown again: ", h("code", {}, t.secret));
          shown.hidden = false;
          then();
        } catch (x) {
          toast((x as Error).message, "error");
        }
      },
    }, name, user, h("button", { type: "submit" }, "Make token")),
    shown);
}
