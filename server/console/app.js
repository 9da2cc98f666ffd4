// The console's shell: sign-in, navigation and the hash router (#/devices/gw-1). Each page module exports
// render(main, params) and may return a function to call when the page is left (to stop its polling).

import { api, fill, h, session, showError } from "./lib.js";
import * as overview from "./overview.js";
import * as devices from "./devices.js";
import * as artifacts from "./artifacts.js";
import * as rollouts from "./rollouts.js";
import * as audit from "./audit.js";

const main = document.getElementById("main");
const nav = document.getElementById("nav");
const who = document.getElementById("who");
const signOut = document.getElementById("sign-out");
let leave = null;

/** Routes: [pattern, page render]; the first match wins. */
const routes = [
  [/^\/$/, overview.render],
  [/^\/devices$/, devices.renderList],
  [/^\/devices\/(.+)$/, devices.renderDevice],
  [/^\/artifacts$/, artifacts.render],
  [/^\/rollouts$/, rollouts.renderList],
  [/^\/rollouts\/new$/, rollouts.renderForm],
  [/^\/rollouts\/(\d+)$/, rollouts.renderRollout],
  [/^\/audit$/, audit.renderAudit],
  [/^\/compliance$/, audit.renderCompliance],
];

async function route() {
  if (leave) {
    leave();
    leave = null;
  }
  const hash = location.hash.replace(/^#/, "") || "/";
  const [path, qs] = hash.split("?");
  const params = new URLSearchParams(qs || "");
  for (const a of nav.querySelectorAll("a")) {
    const target = a.getAttribute("href").slice(1);
    a.classList.toggle("current", target === "/" ? path === "/" : path.startsWith(target));
  }
  for (const [re, render] of routes) {
    const m = path.match(re);
    if (!m) continue;
    fill(main, h("p", { class: "muted" }, "Loading…"));
    try {
      const done = await render(main, params, ...m.slice(1).map(decodeURIComponent));
      if (typeof done === "function") leave = done;
    } catch (e) {
      if (e.status === 401) return;
      fill(main);
      showError(main, e);
    }
    return;
  }
  fill(main, h("h1", {}, "Not found"), h("p", {}, h("a", { href: "#/" }, "Back to the overview")));
}

function showSignIn(message) {
  if (leave) {
    leave();
    leave = null;
  }
  session.name = session.role = null;
  nav.hidden = true;
  signOut.hidden = true;
  fill(who);
  const input = h("input", { id: "token", type: "password", autocomplete: "off", placeholder: "otk_…", required: true });
  const error = h("div", { id: "sign-in-error" });
  const form = h(
    "form",
    { id: "sign-in", class: "card narrow" },
    h("h1", {}, "Sign in"),
    h("p", {}, "Paste an API token (", h("code", {}, "otter-server token"), " or an admin makes one)."),
    h("label", { class: "field" }, h("span", {}, "API token"), input),
    h("button", { type: "submit", class: "primary" }, "Sign in"),
    error,
  );
  if (message) showError(error, new Error(message));
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    try {
      await api("POST", "/session", { token: input.value.trim() });
      input.value = "";
      await start();
    } catch (e) {
      showError(error, e.status === 401 ? new Error("That token is unknown or revoked.") : e);
    }
  });
  fill(main, form);
  input.focus();
}

async function start() {
  let me;
  try {
    me = await api("GET", "/whoami");
  } catch (e) {
    if (e.status === 401) return showSignIn();
    throw e;
  }
  session.name = me.name;
  session.role = me.role;
  document.body.dataset.role = me.role;
  nav.hidden = false;
  signOut.hidden = false;
  fill(who, h("span", { id: "who-name" }, me.name), " · ", h("span", { id: "who-role", class: "role" }, me.role));
  await route();
}

signOut.addEventListener("click", async () => {
  try {
    await api("DELETE", "/session");
  } finally {
    showSignIn();
  }
});
window.addEventListener("hashchange", () => {
  if (session.role) route();
});
window.addEventListener("otter-signed-out", () => showSignIn("Your session ended (signed out or token revoked)."));
start().catch((e) => showError(main, e));
