// Shared helpers of the console: building DOM nodes, calling the REST API, formatting, the signed-in caller.
//
// Text from the server (device ids, attributes, feedback messages) only ever becomes a Text node or an attribute
// value through h(); nothing here or in the pages parses strings as HTML markup.

/** The signed-in caller ({name, role}), set by app.js. */
export const session = { name: null, role: null };

/** Whether the caller's role may do `what`: "read", "operate", "approve" (the API's roles are sets). */
export function can(what) {
  const r = session.role;
  if (what === "read") return r !== null;
  if (r === "admin") return true;
  if (what === "operate") return r === "operator";
  if (what === "approve") return r === "approver";
  return false;
}

/**
 * An element: h("a", {href: "#/x", class: "c", onclick: f}, "text", child, [more]).
 * Strings and numbers become Text nodes; null, undefined and false are skipped.
 */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on") && typeof v === "function") el.addEventListener(k.slice(2), v);
    else if (k === "value") el.value = v;
    else if (k === "checked") el.checked = Boolean(v);
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children) {
    if (c === null || c === undefined || c === false) continue;
    if (Array.isArray(c)) append(el, c);
    else if (c instanceof Node) el.appendChild(c);
    else el.appendChild(document.createTextNode(String(c)));
  }
}

/** Replaces the children of `el`. */
export function fill(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

/** An error answer of the API. */
export class ApiError extends Error {
  constructor(status, code, message) {
    super(message || code || `HTTP ${status}`);
    this.status = status;
    this.code = code;
  }
}

/**
 * Calls the API: `api("GET", "/devices?q=x")`. JSON bodies are sent as JSON, a Blob/File as it is. The session
 * cookie goes along by itself; X-Otter-Console is the header the server requires of cookie-authenticated changes.
 */
export async function api(method, path, body, extraHeaders = {}) {
  const headers = { "X-Otter-Console": "1", Accept: "application/json", ...extraHeaders };
  let payload;
  if (body instanceof Blob) {
    payload = body;
    headers["Content-Type"] = "application/octet-stream";
  } else if (body !== undefined) {
    payload = JSON.stringify(body);
    headers["Content-Type"] = "application/json";
  }
  const r = await fetch(`/api/v1${path}`, { method, headers, body: payload, credentials: "same-origin" });
  const text = await r.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = text;
  }
  if (!r.ok) {
    if (r.status === 401 && session.role && path !== "/session") window.dispatchEvent(new Event("otter-signed-out"));
    throw new ApiError(r.status, data && data.error, (data && data.message) || String(text || r.statusText));
  }
  return data;
}

/** A query string from an object, leaving out empty values. */
export function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== null && v !== "") q.set(k, String(v));
  const s = q.toString();
  return s ? `?${s}` : "";
}

/** A time in ms as "2026-12-01 20:17:25 UTC". */
export function time(ms) {
  if (ms === null || ms === undefined) return "never";
  return new Date(ms).toISOString().replace("T", " ").replace(/\.\d+Z$/, " UTC");
}

/** How long ago: "5 s ago", "3 min ago", "2 h ago", "4 d ago". */
export function ago(ms, now = Date.now()) {
  if (ms === null || ms === undefined) return "never";
  const s = Math.max(0, Math.round((now - ms) / 1000));
  if (s < 60) return `${s} s ago`;
  if (s < 3600) return `${Math.floor(s / 60)} min ago`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ago`;
  return `${Math.floor(s / 86400)} d ago`;
}

/** A table: columns [{title, cell: row => node|string}], rows. */
export function table(columns, rows, attrs = {}) {
  return h(
    "table",
    attrs,
    h("thead", {}, h("tr", {}, columns.map((c) => h("th", {}, c.title)))),
    h("tbody", {}, rows.map((r) => h("tr", {}, columns.map((c) => h("td", c.attrs || {}, c.cell(r)))))),
  );
}

/** A state as a coloured badge. */
export function badge(state) {
  return h("span", { class: `badge s-${String(state).replace(/[^a-z-]/g, "")}` }, state);
}

/** A device's page link. */
export function deviceLink(id) {
  return h("a", { href: `#/devices/${encodeURIComponent(id)}` }, id);
}

/** A message line that shows an error (or clears). */
export function showError(el, e) {
  fill(el, e ? h("p", { class: "error", role: "alert" }, e.message || String(e)) : null);
}

/** A labelled field. */
export function field(label, input) {
  return h("label", { class: "field" }, h("span", {}, label), input);
}

/** A titled card. */
export function section(title, ...children) {
  return h("section", { class: "card" }, h("h2", {}, title), ...children);
}
