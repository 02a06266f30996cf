// Fleet: each device's configuration, desired against applied (in sync, pending, failed,
// offline), and the layers an operator edits (global, a group's, a device's) with their history,
// a diff between revisions, and rollback; the models and the updates of the edge program uploaded
// for the edges, and their upload.

import { api, ApiError, DeviceCommand, DeviceSync, FleetDevice, FleetLayer, FleetRevision, Group, ModelInfo, UpdateInfo } from "../api";
import type { Page } from "../main";
import { ago, h, panel, toast } from "../ui";

const SYNC_TEXT: Record<string, string> = {
  in_sync: "in sync",
  pending: "pending",
  failed: "failed",
  offline: "offline",
};

function badge(sync: string): HTMLElement {
  return h("span", { class: `sync ${sync}`, "data-sync": sync }, SYNC_TEXT[sync] ?? sync);
}

function short(hash: string): string {
  return hash ? hash.slice(0, 12) : "none";
}

export function fleetList(p: Page) {
  const box = h("div", { id: "fleet" });
  const admin = p.me.role === "admin";
  // A device's group: a choice for admins, a link for the others.
  const groupCell = (d: DeviceSync, groups: Group[]) => {
    if (!admin) return d.group ? h("a", { href: `#/fleet/groups/${d.group}` }, d.group) : "none";
    const select = h(
      "select",
      {
        "aria-label": `group of ${d.device}`,
        onchange: async () => {
          try {
            await api.put(`/fleet/devices/${encodeURIComponent(d.device)}/group`, { group: select.value || null });
            toast(`${d.device} is in ${select.value ? `group ${select.value}` : "no group"}`);
          } catch (e) {
            toast((e as Error).message, "error");
          }
          draw();
        },
      },
      h("option", { value: "" }, "none"),
      groups.map((g) => h("option", { value: g.name, selected: g.name === d.group }, g.name)),
    );
    return select;
  };
  const newGroup = () => {
    const name = h("input", { "aria-label": "new group", placeholder: "new group name", pattern: "[A-Za-z0-9_.-]{1,64}" });
    const add = h(
      "button",
      {
        onclick: async () => {
          try {
            await api.post("/fleet/groups", { name: name.value });
            toast(`Group ${name.value} added`);
            draw();
          } catch (e) {
            toast((e as Error).message, "error");
          }
        },
      },
      "Add group",
    );
    return h("div", { class: "row" }, name, add);
  };
  const draw = () =>
    panel(
      box,
      () => Promise.all([api.get<DeviceSync[]>("/fleet"), api.get<Group[]>("/fleet/groups")]),
      ([list, groups]) => {
        const out = list.filter((d) => d.sync !== "in_sync").length;
        const layers = h(
          "p",
          {},
          "Layers: ",
          h("a", { href: "#/fleet/global/-" }, "global"),
          ...groups.flatMap((g) => [", ", h("a", { href: `#/fleet/groups/${g.name}` }, `group ${g.name}`)]),
        );
        return [
          layers,
          ...(admin ? [newGroup()] : []),
          list.length === 0
            ? h("p", { class: "empty" }, "No device has reported yet.")
            : h(
                "div",
                {},
                h("p", { class: out ? "warn" : "" }, out ? `${out} of ${list.length} devices are not in sync.` : list.length === 1 ? "The device is in sync." : `All ${list.length} devices are in sync.`),
                h(
                  "table",
                  { "data-testid": "fleet" },
                  h("thead", {}, h("tr", {}, ["Device", "Group", "State", "Configuration", "Desired", "Applied", "Error"].map((c) => h("th", {}, c)))),
                  h(
                    "tbody",
                    {},
                    list.map((d) =>
                      h(
                        "tr",
                        { "data-device": d.device },
                        h("td", {}, h("a", { href: `#/fleet/devices/${d.device}` }, d.device)),
                        h("td", {}, groupCell(d, groups)),
                        h("td", {}, d.state),
                        h("td", {}, badge(d.sync)),
                        h("td", { title: d.desired_hash }, `${d.desired_revision} (${short(d.desired_hash)})`),
                        h("td", { title: d.applied_hash }, `${d.applied_revision} (${short(d.applied_hash)}), ${ago(d.applied_at)}`),
                        h("td", { class: d.error ? "warn" : "" }, d.error),
                      ),
                    ),
                  ),
                ),
              ),
        ];
      },
    );
  const models = h("div", { id: "models" });
  const updates = h("div", { id: "updates" });
  p.main.replaceChildren(
    h("header", {}, h("h2", {}, "Fleet configuration")),
    box,
    h("h3", {}, "Models"),
    models,
    h("h3", {}, "Updates of the edge program"),
    updates,
  );
  draw();
  drawModels(models, admin);
  drawUpdates(updates, admin);
  p.live.subscribe((e) => {
    if (e.type === "device" || e.type === "config") draw();
  });
}

/** Lines of `a` and `b` (pretty JSON) marked as removed, added or the same. */
function diff(a: unknown, b: unknown): HTMLElement {
  const x = JSON.stringify(a ?? {}, null, 2).split("\n");
  const y = JSON.stringify(b ?? {}, null, 2).split("\n");
  // Longest common subsequence, line by line (documents are small).
  const n = x.length;
  const m = y.length;
  const l: number[][] = Array.from({ length: n + 1 }, () => new Array<number>(m + 1).fill(0));
  for (let i = n - 1; i >= 0; i--) for (let j = m - 1; j >= 0; j--) l[i][j] = x[i] === y[j] ? l[i + 1][j + 1] + 1 : Math.max(l[i + 1][j], l[i][j + 1]);
  const out: HTMLElement[] = [];
  let i = 0;
  let j = 0;
  while (i < n || j < m) {
    if (i < n && j < m && x[i] === y[j]) {
      out.push(h("div", {}, `  ${x[i]}`));
      i++;
      j++;
    } else if (j < m && (i === n || l[i][j + 1] >= l[i + 1][j])) {
      out.push(h("div", { class: "added" }, `+ ${y[j++]}`));
    } else {
      out.push(h("div", { class: "removed" }, `- ${x[i++]}`));
    }
  }
  return h("pre", { class: "diff", "data-testid": "diff" }, out);
}

export function fleetLayer(p: Page, kind: string, target: string) {
  const path = kind === "global" ? "/fleet/config/global" : `/fleet/config/${kind}/${encodeURIComponent(target)}`;
  const title = kind === "global" ? "Global configuration" : `${kind === "groups" ? "Group" : "Device"} ${target}`;
  const canEdit = p.me.role === "admin" || p.me.role === "analyst";
  // Read-only until the layer is loaded (what is typed before would be overwritten).
  const editor = h("textarea", { class: "json", rows: 16, spellcheck: false, "aria-label": "document", readonly: true });
  const comment = h("input", { "aria-label": "comment", placeholder: "Why (kept in the history)" });
  const err = h("p", { class: "error", role: "alert", hidden: true });
  const save = h("button", { hidden: !canEdit }, "Save");
  const state = h("div", {});
  const history = h("div", {});
  let current: FleetRevision | null = null;
  const commands = h("div", {});
  const send = async (command: string) => {
    try {
      const c = await api.post<DeviceCommand>(`/fleet/devices/${encodeURIComponent(target)}/commands`, { command });
      toast(`Command ${c.id} (${c.command}) sent to ${target}`);
      drawCommands();
    } catch (e) {
      toast((e as Error).message, "error");
    }
  };
  const drawCommands = () => {
    if (kind !== "devices") return;
    panel(
      commands,
      () => api.get<DeviceCommand[]>(`/fleet/devices/${encodeURIComponent(target)}/commands?limit=10`),
      (list) => [
        h("h3", {}, "Commands"),
        ...(p.me.role === "admin"
          ? [
              h(
                "div",
                { class: "row" },
                h("button", { onclick: () => send("reload") }, "Reload its edge.toml"),
                h("button", { onclick: () => send("retry_config") }, "Retry the hub's configuration"),
              ),
            ]
          : []),
        list.length === 0
          ? h("p", { class: "empty" }, "No command sent yet.")
          : h(
              "table",
              { "data-testid": "commands" },
              h("thead", {}, h("tr", {}, ["Id", "Command", "By", "Sent", "Result", "Detail"].map((c) => h("th", {}, c)))),
              h(
                "tbody",
                {},
                list.map((c) =>
                  h(
                    "tr",
                    { "data-command": String(c.id) },
                    h("td", {}, String(c.id)),
                    h("td", {}, c.command),
                    h("td", {}, c.author),
                    h("td", {}, c.published_at ? ago(c.published_at) : "not yet"),
                    h("td", { "data-result": c.result ?? "" }, c.result ?? "waiting"),
                    h("td", { class: c.result && c.result !== "applied" ? "warn" : "" }, c.detail),
                  ),
                ),
              ),
            ),
      ],
    );
  };
  const drawState = () => {
    if (kind !== "devices") return;
    panel(state, () => api.get<FleetDevice>(`/fleet/devices/${encodeURIComponent(target)}`), (d) =>
      h(
        "div",
        {},
        h("p", {}, "Configuration: ", badge(d.sync), ` desired revision ${d.desired_revision} (${short(d.desired_hash)}), applied ${d.applied_revision} (${short(d.applied_hash)})`, d.error ? h("span", { class: "warn" }, `: ${d.error}`) : ""),
        h("h3", {}, "What the hub wants it to run (its layers merged)"),
        h("pre", { class: "json" }, JSON.stringify(d.desired, null, 2)),
      ),
    );
  };
  const drawHistory = () =>
    panel(
      history,
      () => api.get<FleetRevision[]>(`/fleet/history/${kind}/${encodeURIComponent(target)}`),
      (revs) => {
        const shown = h("div", {});
        return [
          h(
            "table",
            { "data-testid": "history" },
            h("thead", {}, h("tr", {}, ["Revision", "When", "Author", "Comment", "Hash", ""].map((c) => h("th", {}, c)))),
            h(
              "tbody",
              {},
              revs.map((r, i) =>
                h(
                  "tr",
                  {},
                  h("td", {}, String(r.revision)),
                  h("td", {}, ago(r.created_at)),
                  h("td", {}, r.author),
                  h("td", {}, r.comment),
                  h("td", { title: r.hash }, short(r.hash)),
                  h(
                    "td",
                    {},
                    h("button", { onclick: () => shown.replaceChildren(h("h3", {}, `Revision ${r.revision} against the one before`), diff(revs[i + 1]?.document, r.document)) }, "Diff"),
                    p.me.role === "admin" && i > 0
                      ? h(
                          "button",
                          {
                            onclick: async () => {
                              try {
                                await api.post(`/fleet/revisions/${r.id}/rollback`);
                                toast(`Rolled back to revision ${r.revision}`);
                                load();
                              } catch (e) {
                                toast((e as Error).message, "error");
                              }
                            },
                          },
                          "Roll back",
                        )
                      : "",
                  ),
                ),
              ),
            ),
          ),
          shown,
        ];
      },
      "No revision yet: the layer is empty.",
    );
  const load = async () => {
    try {
      const layer = await api.get<FleetLayer>(path);
      current = layer.current;
      editor.value = JSON.stringify(current?.document ?? {}, null, 2);
      editor.readOnly = !canEdit;
    } catch (e) {
      err.textContent = (e as Error).message;
      err.hidden = false;
    }
    drawHistory();
    drawState();
  };
  save.addEventListener("click", async () => {
    err.hidden = true;
    let document: unknown;
    try {
      document = JSON.parse(editor.value);
    } catch (e) {
      err.textContent = `Not JSON: ${(e as Error).message}`;
      err.hidden = false;
      return;
    }
    save.disabled = true;
    try {
      const r = await api.put<FleetRevision>(path, { document, comment: comment.value });
      toast(`Saved revision ${r.revision}`);
      comment.value = "";
      await load();
    } catch (e) {
      err.textContent = e instanceof ApiError ? `Refused: ${e.message}` : (e as Error).message;
      err.hidden = false;
    } finally {
      save.disabled = false;
    }
  });
  p.main.replaceChildren(
    h("header", {}, h("h2", {}, title), h("a", { href: "#/fleet" }, "All devices")),
    state,
    commands,
    h("section", { class: "card" }, h("h3", {}, "This layer"), editor, h("div", { class: "row" }, comment, save), err),
    h("h3", {}, "History"),
    history,
  );
  load();
  drawCommands();
  p.live.subscribe((e) => {
    if (e.type === "device" || e.type === "config") drawState();
    if (e.type === "command") drawCommands();
  });
}

/** The models uploaded for the edges, and (admins) the upload of another. A layer names a model
 * by its hash: `{"models": {"classifier": "<sha256>"}}`. */
function drawModels(box: HTMLElement, admin: boolean) {
  const upload = () => {
    const model = h("input", { type: "file", accept: ".onnx", "aria-label": "model file" }) as HTMLInputElement;
    const fixture = h("input", { type: "file", accept: ".json", "aria-label": "fixture file" }) as HTMLInputElement;
    const comment = h("input", { "aria-label": "model comment", placeholder: "Why (kept with the model)" }) as HTMLInputElement;
    const button = h(
      "button",
      {
        onclick: async () => {
          const [m, f] = [model.files?.[0], fixture.files?.[0]];
          if (!m || !f) {
            toast("Choose the model's ONNX file and its fixture (models/train.py writes fixtures/<model>.json)", "error");
            return;
          }
          const form = new FormData();
          form.append("model", m);
          form.append("fixture", f);
          form.append("comment", comment.value);
          button.disabled = true;
          try {
            const info = await api.post<ModelInfo>("/models", form);
            toast(`Checked and kept: ${info.kind} ${info.name} ${info.version} (${info.sha256.slice(0, 12)})`);
            drawModels(box, admin);
          } catch (e) {
            toast(`Refused: ${(e as Error).message}`, "error");
          } finally {
            button.disabled = false;
          }
        },
      },
      "Upload",
    ) as HTMLButtonElement;
    return h(
      "div",
      { class: "row" },
      h("label", {}, "Model (ONNX) ", model),
      h("label", {}, "Fixture (JSON) ", fixture),
      comment,
      button,
    );
  };
  panel(
    box,
    () => api.get<ModelInfo[]>("/models"),
    (list) => [
      h(
        "p",
        {},
        "A layer names a model by its hash, as ",
        h("code", {}, '{"models": {"classifier": "<sha256>"}}'),
        ": set it on a group first, then on the global layer. Edges fetch it, check the hub's signature, the hash and its fixture rows, then swap it in.",
      ),
      ...(admin ? [upload()] : []),
      list.length === 0
        ? h("p", { class: "empty" }, "No model uploaded yet.")
        : h(
            "table",
            { "data-testid": "models" },
            h("thead", {}, h("tr", {}, ["Slot", "Name", "Version", "SHA-256", "Size", "Fixture rows", "Uploaded", "Comment"].map((c) => h("th", {}, c)))),
            h(
              "tbody",
              {},
              list.map((m) =>
                h(
                  "tr",
                  { "data-sha256": m.sha256 },
                  h("td", {}, m.kind),
                  h("td", {}, m.name),
                  h("td", {}, m.version),
                  h("td", {}, h("code", { class: "hash" }, m.sha256)),
                  h("td", {}, `${(m.size / 1024).toFixed(1)} KiB`),
                  h("td", {}, String(m.fixture_rows)),
                  h("td", {}, `${m.author}, ${ago(m.created_at)}`),
                  h("td", {}, m.comment),
                ),
              ),
            ),
          ),
    ],
  );
}

/** The update bundles uploaded for the edges, and (admins) the upload of another. A layer names
 * one by its hash: `{"update": "<sha256>"}`. */
function drawUpdates(box: HTMLElement, admin: boolean) {
  const upload = () => {
    const bundle = h("input", { type: "file", accept: ".twu", "aria-label": "update bundle" }) as HTMLInputElement;
    const comment = h("input", { "aria-label": "update comment", placeholder: "Why (kept with the update)" }) as HTMLInputElement;
    const button = h(
      "button",
      {
        onclick: async () => {
          const b = bundle.files?.[0];
          if (!b) {
            toast("Choose a bundle (tapwatch-edge update pack makes one)", "error");
            return;
          }
          const form = new FormData();
          form.append("bundle", b);
          form.append("comment", comment.value);
          button.disabled = true;
          try {
            const info = await api.post<UpdateInfo>("/updates", form);
            toast(`Checked and kept: ${info.version} for ${info.arch} (${info.sha256.slice(0, 12)})`);
            drawUpdates(box, admin);
          } catch (e) {
            toast(`Refused: ${(e as Error).message}`, "error");
          } finally {
            button.disabled = false;
          }
        },
      },
      "Upload",
    ) as HTMLButtonElement;
    return h("div", { class: "row" }, h("label", {}, "Bundle ", bundle), comment, button);
  };
  panel(
    box,
    () => api.get<UpdateInfo[]>("/updates"),
    (list) => [
      h(
        "p",
        {},
        "A layer names an update by its hash, as ",
        h("code", {}, '{"update": "<sha256>"}'),
        ": set it on a group first. Edges fetch it, check the release key's signature and install it on trial; one not healthy in time is rolled back, and the device's answer above says why.",
      ),
      ...(admin ? [upload()] : []),
      list.length === 0
        ? h("p", { class: "empty" }, "No update uploaded yet.")
        : h(
            "table",
            { "data-testid": "updates" },
            h("thead", {}, h("tr", {}, ["Version", "Architecture", "SHA-256", "Size", "Files", "Uploaded", "Comment"].map((c) => h("th", {}, c)))),
            h(
              "tbody",
              {},
              list.map((u) =>
                h(
                  "tr",
                  { "data-sha256": u.sha256 },
                  h("td", {}, u.version),
                  h("td", {}, u.arch),
                  h("td", {}, h("code", { class: "hash" }, u.sha256)),
                  h("td", {}, u.size < 1048576 ? `${(u.size / 1024).toFixed(1)} KiB` : `${(u.size / 1048576).toFixed(1)} MiB`),
                  h("td", {}, u.manifest.files.map((f) => f.name).join(", ")),
                  h("td", {}, `${u.author}, ${ago(u.created_at)}`),
                  h("td", {}, u.comment),
                ),
              ),
            ),
          ),
    ],
  );
}
