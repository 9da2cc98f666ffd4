// Rollouts: the list, the form (with a live count of the devices the filter matches) and a rollout's page with
// live progress (polled every 2 s), pause / resume / cancel / approve, and why it paused when it paused itself.

import { api, badge, can, field, fill, h, section, session, showError, table, time } from "./lib.js";
import { progress } from "./chart.js";

const POLL_MS = 2000;

export async function renderList(main) {
  const [list, artifacts] = await Promise.all([api("GET", "/rollouts"), api("GET", "/artifacts")]);
  const version = new Map(artifacts.map((a) => [a.id, a.version]));
  main.replaceChildren(
    h("h1", {}, "Rollouts"),
    can("operate") ? h("p", {}, h("a", { href: "#/rollouts/new", class: "button act primary", id: "new-rollout" }, "New rollout")) : null,
    table(
      [
        { title: "#", cell: (r) => String(r.id) },
        { title: "Name", cell: (r) => h("a", { href: `#/rollouts/${r.id}` }, r.name) },
        { title: "Version", cell: (r) => version.get(r.artifact_id) ?? `artifact ${r.artifact_id}` },
        { title: "State", cell: (r) => badge(r.state) },
        { title: "Groups", cell: (r) => r.groups.map((g) => `${g.name} ${g.finished}/${g.total}`).join(", ") },
        { title: "Created", cell: (r) => `${time(r.created_ms)} by ${r.created_by}` },
      ],
      [...list].sort((a, b) => b.id - a.id),
      { id: "rollouts", class: "list" },
    ),
  );
}

/** Parses "key=value" lines into an object. */
function pairs(text) {
  const out = {};
  for (const line of text.split("\n")) {
    const i = line.indexOf("=");
    if (i > 0) out[line.slice(0, i).trim()] = line.slice(i + 1).trim();
  }
  return out;
}

export async function renderForm(main) {
  if (!can("operate")) {
    main.replaceChildren(h("h1", {}, "New rollout"), h("p", { id: "not-allowed" }, `A ${session.role} may not create rollouts.`));
    return;
  }
  const artifacts = await api("GET", "/artifacts");
  const el = {
    name: h("input", { id: "r-name", required: true, placeholder: "gateway 2.4" }),
    artifact: h(
      "select",
      { id: "r-artifact" },
      [...artifacts].reverse().map((a) => h("option", { value: a.id }, `${a.version} — ${a.compatible.join(", ")} (#${a.id})`)),
    ),
    compatible: h("input", { id: "r-compatible", placeholder: "any type" }),
    tags: h("input", { id: "r-tags", placeholder: "production, eu" }),
    version: h("input", { id: "r-version", placeholder: "any version" }),
    attributes: h("textarea", { id: "r-attributes", rows: 2, placeholder: "site=berlin" }),
    kind: h("select", { id: "r-kind" }, ["forced", "soft", "download-only"].map((k) => h("option", { value: k }, k))),
    fast: h("input", { type: "checkbox", id: "r-fast" }),
    confirm: h("input", { type: "checkbox", id: "r-confirm" }),
    windowOn: h("input", { type: "checkbox", id: "r-window" }),
    windowStart: h("input", { type: "time", id: "r-window-start", value: "02:00" }),
    windowMinutes: h("input", { type: "number", id: "r-window-minutes", min: 1, max: 1440, value: 120 }),
    startAt: h("input", { type: "datetime-local", id: "r-start-at" }),
    dynamic: h("input", { type: "checkbox", id: "r-dynamic", checked: true }),
  };
  const count = h("span", { id: "match-count", class: "count-live" }, "…");
  const groups = h("tbody", { id: "groups" });
  const error = h("div", { id: "form-error" });
  function groupRow(g) {
    const tr = h(
      "tr",
      { class: "group-row" },
      h("td", {}, h("input", { class: "g-name", value: g.name, required: true })),
      h("td", {}, h("input", { class: "g-percent", type: "number", min: 1, max: 100, value: g.percent })),
      h("td", {}, h("input", { class: "g-success", type: "number", min: 0, max: 100, value: g.success })),
      h("td", {}, h("input", { class: "g-error", type: "number", min: 0, max: 100, value: g.error })),
      h("td", {}, h("input", { class: "g-approval", type: "checkbox", checked: g.approval })),
      h("td", {}, h("button", { type: "button", class: "small", onclick: () => tr.remove() }, "Remove")),
    );
    return tr;
  }
  groups.append(
    groupRow({ name: "canary", percent: 10, success: 100, error: 0, approval: false }),
    groupRow({ name: "rest", percent: 100, success: 100, error: 10, approval: true }),
  );
  function filter() {
    const f = {};
    if (el.compatible.value.trim()) f.compatible = el.compatible.value.trim();
    const tags = el.tags.value.split(",").map((t) => t.trim()).filter(Boolean);
    if (tags.length) f.tags = tags;
    if (el.version.value.trim()) f.version = el.version.value.trim();
    const attrs = pairs(el.attributes.value);
    if (Object.keys(attrs).length) f.attributes = attrs;
    return f;
  }
  let seq = 0;
  let timer = null;
  async function recount() {
    const mine = ++seq;
    try {
      const r = await api("POST", "/rollouts/preview", { filter: filter() });
      if (mine === seq) fill(count, `${r.matching} matching device${r.matching === 1 ? "" : "s"}`);
    } catch (e) {
      if (mine === seq) fill(count, `filter refused: ${e.message}`);
    }
  }
  for (const k of ["compatible", "tags", "version", "attributes"]) {
    el[k].addEventListener("input", () => {
      clearTimeout(timer);
      timer = setTimeout(recount, 250);
    });
  }
  recount();
  const form = h(
    "form",
    { id: "rollout-form" },
    section("What", field("Name", el.name), field("Artifact", el.artifact)),
    section(
      "Which devices",
      h("div", { class: "filters" }, field("Type", el.compatible), field("Tags (all of)", el.tags), field("Current version", el.version), field("Attributes (key=value per line)", el.attributes)),
      h("p", {}, count),
    ),
    section(
      "Groups, in order",
      h(
        "table",
        { class: "groups-form" },
        h("thead", {}, h("tr", {}, ["Name", "% of devices", "Success %", "Error % (pause above)", "Approval", ""].map((t) => h("th", {}, t)))),
        groups,
      ),
      h(
        "button",
        { type: "button", class: "small", id: "add-group", onclick: () => groups.append(groupRow({ name: `group ${groups.children.length + 1}`, percent: 100, success: 100, error: 0, approval: false })) },
        "Add group",
      ),
    ),
    section(
      "How",
      h(
        "div",
        { class: "filters" },
        field("Kind", el.kind),
        h("label", { class: "check" }, el.fast, " Fast release (devices poll every few seconds while it runs)"),
        h("label", { class: "check" }, el.confirm, " Ask each device's consent first"),
        h("label", { class: "check" }, el.dynamic, " Devices that match later join the last group"),
        field("Start at (UTC, empty: now)", el.startAt),
      ),
      h("div", { class: "filters" }, h("label", { class: "check" }, el.windowOn, " Maintenance window (UTC)"), field("Starts", el.windowStart), field("Minutes", el.windowMinutes)),
    ),
    error,
    h("button", { type: "submit", class: "act primary", id: "create-rollout" }, "Create rollout"),
  );
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const spec = {
      groups: [...groups.querySelectorAll("tr")].map((tr) => {
        const g = {
          name: tr.querySelector(".g-name").value.trim(),
          success_threshold: Number(tr.querySelector(".g-success").value || 100),
          error_threshold: Number(tr.querySelector(".g-error").value || 0),
          approval: tr.querySelector(".g-approval").checked,
        };
        const p = tr.querySelector(".g-percent").value;
        if (p) g.percent = Number(p);
        return g;
      }),
      kind: el.kind.value,
      speed: el.fast.checked ? "fast" : "standard",
      confirmation_required: el.confirm.checked,
      dynamic: el.dynamic.checked,
    };
    if (el.startAt.value) spec.start_at_ms = Date.parse(`${el.startAt.value}Z`);
    if (el.windowOn.checked) {
      const [hh, mm] = el.windowStart.value.split(":").map(Number);
      spec.window = { start_minute: hh * 60 + mm, duration_minutes: Number(el.windowMinutes.value) };
    }
    try {
      const r = await api("POST", "/rollouts", { name: el.name.value.trim(), artifact_id: Number(el.artifact.value), filter: filter(), spec });
      location.hash = `#/rollouts/${r.id}`;
    } catch (e) {
      showError(error, e);
    }
  });
  main.replaceChildren(h("h1", {}, "New rollout"), form);
  return () => clearTimeout(timer);
}

export async function renderRollout(main, _params, id) {
  const artifacts = await api("GET", "/artifacts");
  let stopped = false;
  let timer = null;
  const message = h("div", { id: "rollout-message" });
  const body = h("div", { id: "rollout" });
  async function act(path, payload) {
    try {
      await api("POST", `/rollouts/${id}/${path}`, payload);
      showError(message, null);
    } catch (e) {
      showError(message, e);
    }
    await refresh();
  }
  async function refresh() {
    clearTimeout(timer);
    let r;
    try {
      r = await api("GET", `/rollouts/${id}`);
    } catch (e) {
      if (!stopped) showError(message, e);
      return;
    }
    if (stopped) return;
    draw(r);
    if (r.state !== "finished" && r.state !== "cancelled") timer = setTimeout(refresh, POLL_MS);
  }
  function draw(r) {
    const a = artifacts.find((x) => x.id === r.artifact_id);
    const live = r.state !== "finished" && r.state !== "cancelled";
    const buttons = [];
    if (can("operate") && live) {
      if (r.state === "paused") buttons.push(h("button", { type: "button", class: "act", id: "resume", onclick: () => act("resume") }, "Resume"));
      else buttons.push(h("button", { type: "button", class: "act", id: "pause", onclick: () => act("pause") }, "Pause"));
      buttons.push(
        h(
          "button",
          {
            type: "button",
            class: "act danger",
            id: "cancel",
            onclick: () => window.confirm(`Cancel rollout #${r.id}? Open actions are cancelled.`) && act("cancel"),
          },
          "Cancel",
        ),
      );
    }
    const f = r.filter;
    const filterText = [
      f.compatible && `type ${f.compatible}`,
      f.tags.length && `tags ${f.tags.join(", ")}`,
      f.version && `version ${f.version}`,
      ...Object.entries(f.attributes).map(([k, v]) => `${k}=${v}`),
    ].filter(Boolean).join("; ") || "every device";
    fill(
      body,
      h("h1", {}, `Rollout #${r.id}: `, h("span", { id: "rollout-name" }, r.name), " ", h("span", { id: "rollout-state" }, badge(r.state))),
      r.reason ? h("p", { class: "reason", id: "reason" }, r.state === "paused" ? "Paused: " : "", r.reason) : null,
      h("div", { class: "buttons" }, buttons),
      section(
        "Groups",
        table(
          [
            { title: "#", cell: (g) => String(g.idx) },
            { title: "Group", cell: (g) => g.name },
            { title: "State", cell: (g) => badge(g.state) },
            { title: "Progress", cell: (g) => progress(g) },
            { title: "Devices", cell: (g) => `${g.finished} done, ${g.failed} failed, ${g.in_flight} in flight, ${g.waiting} waiting of ${g.total}` },
            { title: "Thresholds", cell: (g) => `success ${g.success_threshold} %, errors ≤ ${g.error_threshold} %` },
            {
              title: "Approval",
              cell: (g) => {
                if (!g.approval) return "not needed";
                if (g.approved_by) return `approved by ${g.approved_by}`;
                if (can("approve") && g.state === "waiting-approval" && r.created_by !== `operator:${session.name}`) {
                  return h("button", { type: "button", class: "act primary approve", "data-group": g.idx, onclick: () => act("approve", { group: g.idx }) }, `Approve ${g.name}`);
                }
                return g.state === "waiting-approval" ? "waiting for an approver (not the creator)" : "needed";
              },
            },
          ],
          r.groups,
          { id: "groups", class: "list" },
        ),
      ),
      section(
        "Details",
        h(
          "dl",
          { class: "kv" },
          [
            ["Artifact", a ? `${a.version} (#${a.id}, security version ${a.security_version})` : `#${r.artifact_id}`],
            ["Devices", filterText],
            ["Kind", r.spec.kind],
            ["Speed", r.spec.speed === "fast" ? "fast release" : "standard release"],
            ["Window", r.spec.window ? `${Math.floor(r.spec.window.start_minute / 60)}:${String(r.spec.window.start_minute % 60).padStart(2, "0")} UTC for ${r.spec.window.duration_minutes} min` : "any time"],
            ["Consent", r.spec.confirmation_required ? "asked first" : "not asked"],
            ["Created", `${time(r.created_ms)} by ${r.created_by}`],
            ["Last change", time(r.updated_ms)],
          ].map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]),
        ),
      ),
    );
  }
  main.replaceChildren(message, body);
  await refresh();
  return () => {
    stopped = true;
    clearTimeout(timer);
  };
}
