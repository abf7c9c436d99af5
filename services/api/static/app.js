// PyFilter web admin: reads the API, polls it every few seconds, writes with the token.
//
// Everything from the API (log lines, reasons: text an attacker may control)
// is put on the page as text nodes, never as HTML. The token lives in
// sessionStorage only: it is gone when the tab closes.
"use strict";

const POLL_MS = 5000;
const TOKEN_KEY = "pyfilter-token";
const SVG = "http://www.w3.org/2000/svg";
// `pages`: the cursors of the pages before the one shown (the API pages with cursors, 100 bans
// a page); `cursor`: the one shown ("" for the first), `next` the following one, if any.
const state = { search: {}, expanded: new Set(), token: sessionStorage.getItem(TOKEN_KEY),
                pages: [], cursor: "", next: null };

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (key === "class") node.className = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value);
  }
  for (const child of children) node.append(child ?? "");
  return node;
}

function svg(tag, attrs = {}, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, value);
  if (text !== undefined) node.textContent = text;
  return node;
}

const $ = (id) => document.getElementById(id);

// Text a client wrote (an account, a log line), with what would act instead of showing
// (controls, bidirectional marks and overrides that reorder what follows) written as
// escapes, as the pyfilter command writes it (services/common/shown.py).
const ACTING = /[\u0000-\u0008\u000b-\u001f\u007f-\u009f\u200e\u200f\u202a-\u202e\u2066-\u2069]/g;
const visible = (text) => String(text).replace(ACTING, (c) => {
  const code = c.codePointAt(0);
  return code < 0x100 ? `\\x${code.toString(16).padStart(2, "0")}` : `\\u${code.toString(16).padStart(4, "0")}`;
});
const when = (t, never = "–") => (t == null ? never : new Date(t * 1000).toLocaleString());
const country = (c) => c || "unknown";

async function api(method, path, body) {
  const headers = { Accept: "application/json" };
  if (state.token) headers.Authorization = `Bearer ${state.token}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(`/api/v1${path}`, {
    method, headers, body: body === undefined ? undefined : JSON.stringify(body),
  });
  let data = null;
  try { data = await response.json(); } catch (e) { data = { error: response.statusText }; }
  if (response.status === 401 && method !== "GET") logout("The token was refused; log in again.");
  return { ok: response.ok, status: response.status, data };
}

function say(text, bad = false) {
  const box = $("message");
  box.textContent = text;
  box.className = bad ? "message bad" : "message";
  box.hidden = false;
}

// Login ----------------------------------------------------------------------

function showLogin() {
  const inside = Boolean(state.token);
  document.body.classList.toggle("logged-in", inside);
  $("login-form").hidden = inside;
  $("logged-in").hidden = !inside;
}

async function login(event) {
  event.preventDefault();
  const token = $("token").value.trim();
  if (!token) return;
  const response = await fetch("/api/v1/auth", { headers: { Authorization: `Bearer ${token}` } });
  if (!response.ok) {
    $("login-error").textContent = "wrong token";
    return;
  }
  $("login-error").textContent = "";
  $("token").value = "";
  state.token = token;
  sessionStorage.setItem(TOKEN_KEY, token);
  showLogin();
  refresh();
}

function logout(reason) {
  state.token = null;
  sessionStorage.removeItem(TOKEN_KEY);
  showLogin();
  if (typeof reason === "string") say(reason, true);
  refresh();
}

// Charts ---------------------------------------------------------------------

function barChart(node, days) {
  node.replaceChildren();
  const width = node.clientWidth || 600, height = node.clientHeight || 220;
  const top = 18, bottom = 22, left = 4;
  const peak = Math.max(1, ...days.map((d) => d.count));
  const step = (width - left) / Math.max(1, days.length);
  node.setAttribute("viewBox", `0 0 ${width} ${height}`);
  node.append(svg("line", { class: "axis", x1: 0, x2: width, y1: height - bottom, y2: height - bottom }));
  days.forEach((d, i) => {
    const h = ((height - top - bottom) * d.count) / peak;
    const x = left + i * step + step * 0.15, w = step * 0.7, y = height - bottom - h;
    const bar = svg("rect", { class: "bar", x, y, width: w, height: Math.max(h, 0), "data-day": d.day });
    bar.append(svg("title", {}, `${d.day}: ${d.count}`));
    node.append(bar);
    node.append(svg("text", { class: "count", x: x + w / 2, y: y - 4, "text-anchor": "middle" }, d.count));
    node.append(svg("text", { x: x + w / 2, y: height - 6, "text-anchor": "middle" }, d.day.slice(5)));
  });
}

function hbarChart(node, items) {
  node.replaceChildren();
  const width = node.clientWidth || 400, height = node.clientHeight || 220;
  node.setAttribute("viewBox", `0 0 ${width} ${height}`);
  if (!items.length) {
    node.append(svg("text", { x: 8, y: 20 }, "no bans in the range"));
    return;
  }
  const label = 70, row = Math.min(28, height / items.length);
  const peak = Math.max(...items.map((c) => c.count));
  items.forEach((c, i) => {
    const y = i * row, w = ((width - label - 40) * c.count) / peak;
    node.append(svg("text", { x: 4, y: y + row * 0.65 }, c.name));
    const bar = svg("rect", { class: "bar", x: label, y: y + row * 0.15, width: w, height: row * 0.7,
                              "data-country": c.name });
    bar.append(svg("title", {}, `${c.name}: ${c.count}`));
    node.append(bar);
    node.append(svg("text", { class: "count", x: label + w + 4, y: y + row * 0.65 }, c.count));
  });
}

// Rendering ------------------------------------------------------------------

function renderStats(s) {
  $("total-bans").textContent = s.total_bans;
  $("range-days").textContent = s.days;
  $("range-bans").textContent = s.bans_in_range;
  $("active-bans").textContent = s.active_bans;
  const latest = s.latest_ban;
  $("latest-ban").textContent = latest
    ? `${latest.address} (${country(latest.country)}) – ${latest.rule} on ${latest.host}, ${when(latest.banned_at)}`
    : "none yet";
  barChart($("chart-days"), s.bans_per_day);
  hbarChart($("chart-countries"), s.top_countries);
  const p = s.pipeline;
  const enforcers = p.enforcers.map((e) => `${e.host}: ${e.lag ?? "?"} behind, ${e.pending} pending`);
  $("pipeline").textContent =
    `lines waiting: ${p.lines_length}; detectors: ${p.detect_pending} pending, ${p.detect_lag ?? "?"} not yet read; ` +
    `enforcers: ${enforcers.join("; ") || "none seen"}`;
}

function reporting(part) {
  if (part.reporting) return `reporting, up since ${when(part.started_at)}`;
  return part.last_report == null ? "never reported" : `NOT reporting since ${when(part.last_report)}`;
}

// What is protected (GET /status): per host, its rules, sources, firewall and problems.
function renderProtection(report) {
  const box = $("protection");
  box.className = "";
  box.replaceChildren();
  if (!report.hosts.length) box.append(el("p", { class: "bad" }, report.problems.join(" ")));
  for (const h of report.hosts) {
    const section = el("div", { class: "host", "data-host": h.host },
      el("h3", {}, h.host),
      el("p", { class: "muted" }, `collector ${reporting(h.collector)}; enforcer ${reporting(h.enforcer)}`));
    const rules = el("table", { class: "rules" }, el("thead", {}, el("tr", {},
      ...["Rule", "Sources", "Lines (1 h)", "Failures (1 h)", "Bans (1 h)", "Active bans"].map((t) => el("th", {}, t)))));
    const body = el("tbody");
    for (const r of h.rules) {
      body.append(el("tr", { "data-rule": r.rule, class: r.problem ? "bad" : "" },
        el("td", {}, r.rule), el("td", {}, r.sources.join(", ") || "none"), el("td", {}, String(r.lines_last_hour)),
        el("td", {}, String(r.failures_last_hour)), el("td", {}, String(r.bans_last_hour)),
        el("td", {}, String(r.bans_active))));
    }
    rules.append(body);
    section.append(rules);
    const sources = h.collector.sources.map((s) => `${s.name}: ${s.state}${s.followed ? "" : " (not read)"}` +
      (s.containers.length ? ` [${s.containers.join(", ")}]` : ""));
    if (sources.length) section.append(el("p", {}, `Sources: ${sources.join("; ")}`));
    const e = h.enforcer;
    if (e.backend) {
      const sets = e.sets.map((s) => `${s.name} ${s.elements}`).join(", ");
      section.append(el("p", {}, `Firewall: ${e.backend}` +
        (e.table ? `, table ${e.table} ${e.table_present ? "in place" : "MISSING"}` : "") +
        `, hooks: ${e.hooks.join(", ") || "none"}; Docker-published ports ${e.docker_covered ? "covered" : "NOT covered"}` +
        (sets ? `; elements: ${sets}` : "")));
    }
    const problems = el("ul", { class: "problems" });
    for (const p of h.problems) problems.append(el("li", { class: "bad" }, p));
    section.append(h.problems.length ? problems : el("p", { class: "muted" }, "No problems."));
    box.append(section);
  }
}

function details(b) {
  const facts = [
    ["why", b.reason], ["origin", b.origin], ["failures", b.failures],
    ["first failure", when(b.first_failure)], ["last failure", when(b.last_failure)],
    ["ban count", b.ban_count], ["duration", b.duration < 0 ? "permanent" : `${b.duration} s`],
    ["network", b.asn ? `AS${b.asn} ${b.as_org || ""}` : "unknown"],
  ];
  const dl = el("dl");
  for (const [k, v] of facts) dl.append(el("dt", {}, k), el("dd", {}, String(v)));
  const lines = b.lines.length ? el("pre", {}, b.lines.map(visible).join("\n")) : el("p", { class: "muted" }, "no log lines");
  const td = el("td", { colspan: 8 }, dl);
  if (b.window === "network") td.append(networkMembers(b)); else td.append(accountEvidence(b), lines);
  return el("tr", { class: "details" }, td);
}

// A network banned because its addresses were: the member bans that filled it
// (each opens that address's bans), and every ban in force inside it.
function networkMembers(b) {
  const list = el("ul", { class: "members" });
  for (const address of b.evidence) {
    list.append(el("li", {}, el("button", { type: "button", class: "link", "data-member": address,
                                            onclick: () => searchFor({ address }) }, address)));
  }
  const inside = el("button", { type: "button", "data-inside": b.address,
                                onclick: () => searchFor({ prefix: b.address }) }, "Bans in force inside it");
  return el("div", { class: "network" }, el("p", {}, `Banned as a network: ${b.evidence.length} member ban(s) `,
                                                  "filled it (their own bans stay when it is lifted)."), list, inside);
}

// A ban decided by a per-account window: the account attacked (the attacker's text: shown as
// text) and the addresses that failed on it together, the evidence.
function accountNote(b) {
  if (b.window !== "account") return "";
  return el("span", { class: "window-note", "data-window": "account" }, "per account: ", el("q", {}, visible(b.account ?? "")));
}

function accountEvidence(b) {
  if (b.window !== "account") return "";
  const list = el("ul", { class: "evidence" });
  for (const address of b.evidence) list.append(el("li", {}, address));
  return el("div", { class: "account-evidence" },
    el("p", {}, `${b.evidence.length} address(es) failed on account `, el("q", {}, visible(b.account ?? "")), " together:"),
    list);
}

function renderBans(list) {
  const body = $("bans").querySelector("tbody");
  body.replaceChildren();
  for (const b of list.bans) {
    const key = `${b.address}@${b.banned_at}`;
    const toggle = el("button", { type: "button", onclick: () => {
      state.expanded.has(key) ? state.expanded.delete(key) : state.expanded.add(key);
      renderBans(list);
    } }, state.expanded.has(key) ? "Hide" : "Details");
    const actions = el("td", { class: "actions" }, toggle);
    if (b.active) {
      actions.append(" ", el("button", { type: "button", class: "danger only-logged-in",
                                         "data-unban": b.address, onclick: () => unban(b.address) }, "Unban"));
    }
    body.append(el("tr", { class: b.active ? "active" : "inactive", "data-address": b.address },
      el("td", {}, b.address), el("td", {}, country(b.country)), el("td", {}, b.rule, accountNote(b)),
      el("td", {}, b.host), el("td", {}, when(b.banned_at)),
      el("td", {}, b.active ? when(b.expires_at, "permanent") : "lifted or expired"),
      el("td", {}, b.reason), actions));
    if (state.expanded.has(key)) body.append(details(b));
  }
  const page = state.pages.length + 1;
  const total = list.total == null ? "" : ` of ${list.total}`;
  $("bans-summary").textContent = `page ${page}: ${list.bans.length}${total} ban(s)`;
  state.next = list.next;
  $("bans-next").disabled = !list.next;
  $("bans-previous").disabled = !state.pages.length;
}

function renderWhitelist(entries) {
  const body = $("whitelist").querySelector("tbody");
  body.replaceChildren();
  for (const e of entries) {
    const remove = e.read_only ? el("span", { class: "muted" }, "config file")
      : el("button", { type: "button", class: "danger only-logged-in", onclick: () => unwhitelist(e.network) }, "Remove");
    body.append(el("tr", { "data-network": e.network }, el("td", {}, e.network), el("td", {}, e.source),
      el("td", {}, e.reason), el("td", { class: "actions" }, remove)));
  }
}

async function refresh(withBans = true) {
  const query = new URLSearchParams({ ...state.search, limit: "100" });
  if (state.cursor) query.set("cursor", state.cursor);
  try {
    const [stats, bans, whitelist, status] = await Promise.all([
      api("GET", "/stats"), withBans ? api("GET", `/bans?${query}`) : null, api("GET", "/whitelist"),
      api("GET", "/status"),
    ]);
    if (stats.ok) renderStats(stats.data);
    if (status.ok) renderProtection(status.data);
    if (bans && bans.ok) renderBans(bans.data); else if (bans) say(bans.data.error, true);
    if (whitelist.ok) renderWhitelist(whitelist.data.entries);
    $("updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
  } catch (e) {
    $("updated").textContent = "API unreachable, retrying…";
  }
}

// Actions --------------------------------------------------------------------

async function unban(address) {
  const r = await api("DELETE", `/bans/${encodeURIComponent(address)}`);
  if (r.ok) say(`${address} unbanned on every host.`); else say(r.data.error, true);
  refresh();
}

async function ban(event) {
  event.preventDefault();
  const form = event.target;
  const addresses = form.addresses.value.split(/[\s,]+/).filter(Boolean);
  if (!addresses.length) return say("Give at least one address.", true);
  const duration = /^-?\d+$/.test(form.duration.value.trim()) ? Number(form.duration.value) : form.duration.value;
  const r = await api("POST", "/bans", addresses.map((address) => ({ address, duration, reason: form.reason.value })));
  if (r.ok) {
    say(`Banned ${r.data.count} address(es): ${r.data.banned.join(", ")}.`);
    form.addresses.value = "";
  } else say(r.data.error, true);
  refresh();
}

async function whitelist(event) {
  event.preventDefault();
  const form = event.target;
  const r = await api("POST", "/whitelist", { network: form.network.value.trim(), reason: form.reason.value });
  if (r.ok) { say(r.data.message); form.network.value = ""; form.reason.value = ""; }
  else say(r.data.error, true);
  refresh();
}

async function unwhitelist(network) {
  const r = await api("DELETE", `/whitelist?network=${encodeURIComponent(network)}`);
  if (r.ok) say(`${network} removed from the whitelist.`); else say(r.data.error, true);
  refresh();
}

function search(event) {
  event.preventDefault();
  const form = $("search-form");
  state.search = {};
  for (const name of ["address", "prefix", "rule", "country"]) {
    const value = form[name].value.trim();
    if (value) state.search[name] = value;
  }
  if (form.all.checked) state.search.all = "1";
  firstPage();
}

function searchFor(values) {
  const form = $("search-form");
  form.reset();
  for (const [name, value] of Object.entries(values)) form[name].value = value;
  state.search = { ...values };
  firstPage();
}

function clearSearch() {
  $("search-form").reset();
  state.search = {};
  firstPage();
}

function firstPage() {
  state.pages = [];
  state.cursor = "";
  refresh();
}

function nextPage() {
  if (!state.next) return;
  state.pages.push(state.cursor);
  state.cursor = state.next;
  refresh();
}

function previousPage() {
  if (!state.pages.length) return;
  state.cursor = state.pages.pop();
  refresh();
}

document.addEventListener("DOMContentLoaded", () => {
  $("login-form").addEventListener("submit", login);
  $("logout").addEventListener("click", () => logout());
  $("search-form").addEventListener("submit", search);
  $("search-clear").addEventListener("click", clearSearch);
  $("bans-next").addEventListener("click", nextPage);
  $("bans-previous").addEventListener("click", previousPage);
  $("ban-form").addEventListener("submit", ban);
  $("whitelist-form").addEventListener("submit", whitelist);
  showLogin();
  refresh();
  // A search that includes history is not repeated on the timer (only on a new search,
  // a ban or an unban): it reads the history stream, up to 5,000 entries a page.
  setInterval(() => refresh(!state.search.all), POLL_MS);
});
