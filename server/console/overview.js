// The fleet overview: one call to GET /api/v1/overview.

import { ago, api, badge, deviceLink, h, section, table } from "./lib.js";
import { progress, stackedBars } from "./chart.js";

const STATES = ["in-sync", "pending", "error", "registered"];

export async function render(main) {
  const o = await api("GET", "/overview");
  const versions = new Map();
  const byState = {};
  for (const r of o.by_version_state) {
    const v = r.version ?? "unknown";
    if (!versions.has(v)) versions.set(v, {});
    versions.get(v)[r.state] = (versions.get(v)[r.state] || 0) + r.devices;
    byState[r.state] = (byState[r.state] || 0) + r.devices;
  }
  const states = [...STATES, ...Object.keys(byState).filter((s) => !STATES.includes(s))];
  const rows = [...versions.entries()].map(([label, parts]) => ({ label, parts }));
  main.replaceChildren(
    h("h1", {}, "Fleet overview"),
    h(
      "div",
      { class: "stats" },
      stat("devices", o.devices, "#/devices"),
      stat("versions", versions.size),
      stat("rollouts in progress", o.rollouts.length, "#/rollouts"),
      stat("in error", byState.error || 0, "#/devices?state=error"),
      stat("not seen for 24 h", o.unseen.total, "#/devices?unseen=1"),
      stat(`below security version ${o.min_security_version ?? "–"}`, o.below.total, "#/compliance"),
    ),
    section(
      "Devices by version and state",
      rows.length ? stackedBars(rows, states, { title: "devices by version and state" }) : h("p", {}, "No devices yet."),
      h("p", { class: "muted", id: "by-state" }, states.map((s) => `${s}: ${byState[s] || 0}`).join(" · ")),
    ),
    section(
      "Rollouts in progress",
      o.rollouts.length
        ? h("div", { id: "rollouts-in-progress" }, o.rollouts.map(rolloutCard))
        : h("p", { class: "muted" }, "None."),
    ),
    section(
      "Recent failures",
      o.failures.length
        ? table(
            [
              { title: "Device", cell: (f) => deviceLink(f.controller_id) },
              { title: "Version", cell: (f) => f.version },
              { title: "Rollout", cell: (f) => (f.rollout_id ? h("a", { href: `#/rollouts/${f.rollout_id}` }, `#${f.rollout_id}`) : "direct") },
              { title: "Message", cell: (f) => h("span", { class: "message" }, f.message ?? "") },
              { title: "When", cell: (f) => ago(f.at_ms, o.now_ms) },
            ],
            o.failures,
            { id: "failures" },
          )
        : h("p", { class: "muted" }, "No failed updates."),
    ),
    h(
      "div",
      { class: "two" },
      section(
        `Not seen for 24 h (${o.unseen.total})`,
        list(o.unseen.first.map((d) => h("li", {}, deviceLink(d.controller_id), " — ", ago(d.last_seen_ms, o.now_ms)))),
      ),
      section(
        `Below security version ${o.min_security_version ?? "–"} (${o.below.total})`,
        list(o.below.first.map((id) => h("li", {}, deviceLink(id)))),
      ),
    ),
  );
}

function stat(label, value, href) {
  const body = [h("span", { class: "value" }, String(value)), h("span", { class: "label" }, label)];
  return href ? h("a", { class: "stat", href }, body) : h("div", { class: "stat" }, body);
}

function list(items) {
  return items.length ? h("ul", { class: "plain" }, items) : h("p", { class: "muted" }, "None.");
}

function rolloutCard(r) {
  return h(
    "div",
    { class: "rollout-summary" },
    h("h3", {}, h("a", { href: `#/rollouts/${r.id}` }, `#${r.id} ${r.name}`), " ", badge(r.state)),
    r.reason ? h("p", { class: "reason" }, r.reason) : null,
    h(
      "div",
      { class: "groups" },
      r.groups.map((g) =>
        h(
          "div",
          { class: "group-line" },
          h("span", { class: "group-name" }, g.name),
          progress(g),
          h("span", { class: "muted" }, `${g.finished}/${g.total} done, ${g.failed} failed`),
        ),
      ),
    ),
  );
}
