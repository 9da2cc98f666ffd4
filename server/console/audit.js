// The audit log (filters, paging back, the chain check) and the compliance report (CSV and JSON downloads).

import { api, deviceLink, field, h, query, section, table, time } from "./lib.js";

const PAGE = 100;

function chainText(v) {
  if (!v.broken) return `Chain intact: ${v.entries} entries checked, head ${v.head}.`;
  const b = v.broken;
  const detail = Object.entries(b).filter(([k]) => k !== "problem").map(([k, x]) => `${k} ${x}`).join(", ");
  return `Chain BROKEN (${b.problem}${detail ? `: ${detail}` : ""}) after ${v.entries} entries.`;
}

export async function renderAudit(main, params) {
  const names = ["subject", "device", "actor", "event"];
  const inputs = Object.fromEntries(names.map((n) => [n, h("input", { name: n, id: `audit-${n}`, value: params.get(n) || "" })]));
  const form = h(
    "form",
    { id: "audit-filters", class: "filters" },
    field("Subject (device:gw-1, rollout:3)", inputs.subject),
    field("Device", inputs.device),
    field("Actor (operator:alice)", inputs.actor),
    field("Event (rollout.paused)", inputs.event),
    h("button", { type: "submit", class: "primary" }, "Filter"),
  );
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    location.hash = `#/audit${query(Object.fromEntries(names.map((n) => [n, inputs[n].value.trim()])))}`;
  });
  const filters = Object.fromEntries(names.map((n) => [n, params.get(n) || ""]));
  const before = params.get("before") || "";
  const [entries, verify] = await Promise.all([api("GET", `/audit${query({ ...filters, before, limit: PAGE })}`), api("GET", "/audit/verify")]);
  const older = entries.length === PAGE ? `#/audit${query({ ...filters, before: entries[entries.length - 1].seq })}` : null;
  main.replaceChildren(
    h("h1", {}, "Audit log"),
    h("p", { id: "chain", class: verify.broken ? "error" : "notice" }, chainText(verify)),
    form,
    table(
      [
        { title: "#", cell: (e) => String(e.seq) },
        { title: "When", cell: (e) => time(e.at_ms) },
        { title: "Who", cell: (e) => e.actor },
        { title: "Event", cell: (e) => e.event },
        { title: "Subject", cell: (e) => (e.subject.startsWith("device:") ? deviceLink(e.subject.slice(7)) : e.subject.startsWith("rollout:") ? h("a", { href: `#/rollouts/${e.subject.slice(8)}` }, e.subject) : e.subject) },
        { title: "Detail", cell: (e) => h("code", { class: "detail" }, e.detail) },
      ],
      entries,
      { id: "audit", class: "list" },
    ),
    h("div", { class: "pager" }, before ? h("a", { href: `#/audit${query(filters)}` }, "Newest") : null, older ? h("a", { href: older, id: "older" }, "Older →") : null),
  );
}

export async function renderCompliance(main, params) {
  const min = params.get("min") || "";
  const input = h("input", { type: "number", id: "min-sv", min: 0, value: min, placeholder: "none" });
  const form = h("form", { class: "filters", id: "compliance-form" }, field("Minimum security version", input), h("button", { type: "submit", class: "primary" }, "Show"));
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    location.hash = `#/compliance${query({ min: input.value })}`;
  });
  const q = { min_security_version: min };
  const report = await api("GET", `/compliance${query(q)}`);
  const href = (format) => `/api/v1/compliance${query({ ...q, format })}`;
  main.replaceChildren(
    h("h1", {}, "Compliance report"),
    form,
    h(
      "p",
      { class: "buttons" },
      h("a", { class: "button", id: "download-csv", href: href("csv"), download: "compliance.csv" }, "Download CSV"),
      h("a", { class: "button", id: "download-json", href: href("json"), download: "compliance.json" }, "Download JSON"),
    ),
    h(
      "div",
      { class: "two" },
      section(
        "Devices per version",
        table([{ title: "Version", cell: (v) => v[0] }, { title: "Devices", cell: (v) => String(v[1]) }], Object.entries(report.versions), { id: "versions" }),
      ),
      section(
        `Below the minimum (${report.below_minimum.length})`,
        min ? h("ul", { class: "plain", id: "below" }, report.below_minimum.map((id) => h("li", {}, deviceLink(id)))) : h("p", { class: "muted" }, "Give a minimum security version."),
      ),
    ),
    section(
      `Devices (${report.devices.length})`,
      table(
        [
          { title: "Device", cell: (d) => deviceLink(d.controller_id) },
          { title: "Version", cell: (d) => d.version ?? "unknown" },
          { title: "Security version", cell: (d) => (d.security_version ?? "unknown").toString() },
          { title: "Last update", cell: (d) => time(d.last_update_ms) },
          { title: "Last failure", cell: (d) => (d.last_failure_ms ? [time(d.last_failure_ms), ": ", h("span", { class: "message" }, d.last_failure ?? "")] : "none") },
          { title: "Last seen", cell: (d) => time(d.last_seen_ms) },
        ],
        report.devices,
        { id: "compliance", class: "list" },
      ),
    ),
  );
}
