// The device list (search, filters, server-side paging) and a device's page.

import { ago, api, badge, can, deviceLink, field, fill, h, query, section, showError, table, time } from "./lib.js";

const PAGE = 50;
const DAY_MS = 24 * 3600 * 1000;

export async function renderList(main, params) {
  const get = (k) => params.get(k) || "";
  const inputs = {
    q: h("input", { name: "q", id: "search", type: "search", value: get("q"), placeholder: "controller id contains…" }),
    tag: h("input", { name: "tag", value: get("tag") }),
    version: h("input", { name: "version", value: get("version") }),
    state: h(
      "select",
      { name: "state" },
      ["", "registered", "in-sync", "pending", "error"].map((s) => h("option", { value: s, selected: s === get("state") }, s || "any")),
    ),
    attr_key: h("input", { name: "attr_key", value: get("attr_key"), placeholder: "attribute" }),
    attr_value: h("input", { name: "attr_value", value: get("attr_value"), placeholder: "value" }),
  };
  const form = h(
    "form",
    { id: "device-filters", class: "filters" },
    field("Search", inputs.q),
    field("Tag", inputs.tag),
    field("Version", inputs.version),
    field("State", inputs.state),
    field("Attribute", inputs.attr_key),
    field("= value", inputs.attr_value),
    h("button", { type: "submit", class: "primary" }, "Search"),
  );
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const p = {};
    for (const [k, el] of Object.entries(inputs)) p[k] = el.value.trim();
    if (params.get("unseen")) p.unseen = "1";
    location.hash = `#/devices${query(p)}`;
  });
  const offset = Math.max(0, Number(get("offset")) || 0);
  const filters = {};
  for (const k of Object.keys(inputs)) filters[k] = get(k);
  if (get("unseen")) filters.unseen_since_ms = Date.now() - DAY_MS;
  const page = await api("GET", `/devices${query({ ...filters, offset, limit: PAGE })}`);
  const nav = (to) => {
    const p = Object.fromEntries(params.entries());
    p.offset = to;
    return `#/devices${query(p)}`;
  };
  main.replaceChildren(
    h("h1", {}, "Devices"),
    form,
    h(
      "p",
      { id: "device-count" },
      page.total === 0
        ? "No device matches."
        : `${offset + 1}–${offset + page.devices.length} of ${page.total} devices${get("unseen") ? " not seen for 24 h" : ""}`,
    ),
    table(
      [
        { title: "Device", cell: (d) => deviceLink(d.controller_id) },
        { title: "Type", cell: (d) => d.compatible ?? "" },
        { title: "Version", cell: (d) => d.reported_version ?? "unknown" },
        { title: "State", cell: (d) => badge(d.reported_state) },
        { title: "Tags", cell: (d) => d.tags.map((t) => h("span", { class: "tag" }, t)) },
        { title: "Last seen", cell: (d) => ago(d.last_seen_ms) },
      ],
      page.devices,
      { id: "devices", class: "list" },
    ),
    h(
      "div",
      { class: "pager" },
      offset > 0 ? h("a", { href: nav(Math.max(0, offset - PAGE)), id: "prev" }, "← Previous") : null,
      offset + page.devices.length < page.total ? h("a", { href: nav(offset + PAGE), id: "next" }, "Next →") : null,
    ),
  );
}

export async function renderDevice(main, _params, id) {
  const v = await api("GET", `/devices/${encodeURIComponent(id)}`);
  const d = v.device;
  const dr = v.desired_reported;
  const tokenBox = h("div", { id: "token-box" });
  const buttons = can("operate")
    ? h(
        "div",
        { class: "buttons" },
        h("button", { type: "button", class: "act", id: "rotate", onclick: () => tokenAction("POST") }, "Rotate token"),
        h("button", { type: "button", class: "act danger", id: "revoke", onclick: () => tokenAction("DELETE") }, "Revoke token"),
      )
    : null;
  async function tokenAction(method) {
    const what = method === "POST" ? "Issue a new token for" : "Revoke the token of";
    if (!window.confirm(`${what} ${d.controller_id}? Its current token stops working at once.`)) return;
    try {
      const r = await api(method, `/devices/${encodeURIComponent(d.controller_id)}/token`);
      fill(
        tokenBox,
        r.target_token
          ? h(
              "div",
              { class: "notice" },
              h("p", {}, "The new target token — shown only now, copy it to the device:"),
              h("code", { id: "new-token", class: "secret" }, r.target_token),
            )
          : h("p", { class: "notice", id: "revoked" }, "Token revoked: the device can no longer authenticate."),
      );
    } catch (e) {
      showError(tokenBox, e);
    }
  }
  const attrs = Object.entries(d.attributes);
  main.replaceChildren(
    h("h1", {}, "Device ", h("span", { id: "device-id" }, d.controller_id), " ", badge(d.reported_state)),
    h(
      "div",
      { class: "two" },
      section(
        "Identity",
        kv([
          ["Type", d.compatible ?? "unknown"],
          ["Tags", d.tags.length ? d.tags.map((t) => h("span", { class: "tag" }, t)) : "none"],
          ["Registered", time(d.created_ms)],
          ["Last seen", `${ago(d.last_seen_ms)} (${time(d.last_seen_ms)})`],
          ["Target token", d.has_token ? "issued" : "none (revoked)"],
        ]),
        buttons,
        tokenBox,
      ),
      section(
        "Desired vs reported",
        kv([
          ["Desired", dr.desired_version ?? "nothing in particular"],
          ["Because of", dr.desired_source ?? "–"],
          ["Reported", dr.reported_version ?? "unknown"],
          ["In flight", dr.in_flight ?? "nothing"],
          ["In sync", dr.in_sync ? "yes" : "no"],
        ], { id: "desired-reported" }),
      ),
    ),
    section(
      `Attributes (${attrs.length})`,
      attrs.length
        ? table([{ title: "Name", cell: (a) => a[0] }, { title: "Value", cell: (a) => h("span", { class: "attr-value" }, a[1]) }], attrs, { id: "attributes" })
        : h("p", { class: "muted" }, "The device has not sent any."),
      d.attributes_ms ? h("p", { class: "muted" }, `Sent ${ago(d.attributes_ms)}.`) : null,
    ),
    section(
      "Action history",
      v.actions.length ? h("div", { id: "actions" }, v.actions.map(action)) : h("p", { class: "muted" }, "No actions yet."),
    ),
    section(
      "Audit entries",
      table(
        [
          { title: "#", cell: (e) => String(e.seq) },
          { title: "When", cell: (e) => time(e.at_ms) },
          { title: "Who", cell: (e) => e.actor },
          { title: "Event", cell: (e) => e.event },
          { title: "Detail", cell: (e) => h("code", {}, e.detail) },
        ],
        v.audit,
        { id: "device-audit" },
      ),
      h("p", {}, h("a", { href: `#/audit?device=${encodeURIComponent(d.controller_id)}` }, "All of this device's audit entries")),
    ),
  );
}

function kv(pairs, attrs = {}) {
  return h("dl", { class: "kv", ...attrs }, pairs.map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]));
}

function action(a) {
  return h(
    "div",
    { class: "action", "data-action": a.id },
    h(
      "h3",
      {},
      `Action ${a.id}: ${a.version} (${a.kind}) `,
      badge(a.state),
      a.rollout_id ? [" in ", h("a", { href: `#/rollouts/${a.rollout_id}` }, `rollout #${a.rollout_id}`)] : null,
    ),
    h("p", { class: "muted" }, `created ${time(a.created_ms)}, last change ${time(a.updated_ms)}`),
    a.statuses.length
      ? h(
          "ol",
          { class: "statuses" },
          a.statuses.map((s) =>
            h(
              "li",
              {},
              h("span", { class: "muted" }, time(s.at_ms)),
              ` ${s.execution}/${s.finished}${s.code !== null && s.code !== undefined ? ` code ${s.code}` : ""}: `,
              h("span", { class: "message" }, s.details.join(" · ")),
            ),
          ),
        )
      : null,
  );
}
