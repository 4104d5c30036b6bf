// tokengate's web page: plain JavaScript over the management API
// (/rest/extender/1.0/tokenTools), with the session cookie the login sets.
// No framework, no build step, nothing loaded from elsewhere; the Content
// Security Policy allows no inline script. Every value from the server is
// put into the page as text, never as HTML.
"use strict";

const API = "/rest/extender/1.0/tokenTools";
const UI = "/tokengate/ui";
const PAGE_SIZE = 50;

const state = {
  session: null, // {user, admin, csrf, forwardAs, maxDaysUntilExpiry, features}
  tokensStart: 0,
  auditStart: 0,
  // The token table's order: a column of GET /get's orderBy.
  sort: { by: "created", ascending: false },
  // Tokens ticked for "Revoke selected": id → {label, user} (kept across
  // pages and filters; the confirmation lists them all).
  selected: new Map(),
  // What the confirmation listed: only these are revoked.
  pendingRevoke: [],
  // The latest listing asked for: an older answer arriving later is dropped.
  tokensTicket: 0,
  auditTicket: 0,
  pendingDelete: null,
  editing: null,
};

const $ = (id) => document.getElementById(id);

function el(tag, attributes, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes || {})) {
    if (name === "class") node.className = value;
    else node.setAttribute(name, value);
  }
  for (const child of children) {
    if (child !== null && child !== undefined) node.append(child);
  }
  return node;
}

// ---- Talking to the gateway ---------------------------------------------

class ApiError extends Error {
  constructor(status, body) {
    super((body && body.message) || `the gateway answered ${status}`);
    this.status = status;
    this.body = body || {};
  }
}

/// One call; `password` adds Basic credentials for what needs the password again.
async function call(method, path, { body, password } = {}) {
  const headers = { Accept: "application/json" };
  if (state.session) headers["X-Tokengate-Csrf"] = state.session.csrf;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (password !== undefined) {
    const bytes = new TextEncoder().encode(`${state.session.user}:${password}`);
    headers.Authorization = "Basic " + btoa(String.fromCharCode(...bytes));
  }
  const response = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    credentials: "same-origin",
    cache: "no-store",
  });
  let json = null;
  try {
    json = await response.json();
  } catch (_) {
    json = null;
  }
  if (response.status === 401 && password === undefined && path !== `${UI}/login`) {
    showLogin("Your session has ended: log in again.");
    throw new ApiError(401, json);
  }
  if (!response.ok) throw new ApiError(response.status, json);
  return json;
}

// ---- Login and session ----------------------------------------------------

function showLogin(message) {
  state.session = null;
  // Nothing of the last user's view carries over to the next.
  state.selected.clear();
  Object.assign(state, { tokensStart: 0, auditStart: 0, sort: { by: "created", ascending: false } });
  for (const id of ["filter-user", "filter-label", "audit-user", "audit-token"]) $(id).value = "";
  $("filter-state").value = "all";
  $("audit-outcome").value = "all";
  $("app-view").hidden = true;
  $("who").hidden = true;
  $("login-view").hidden = false;
  $("login-error").textContent = message || "";
  $("login-password").value = "";
  $("login-username").focus();
}

function showApp(session) {
  state.session = session;
  $("login-view").hidden = true;
  $("app-view").hidden = false;
  $("who").hidden = false;
  $("user-name").textContent = session.admin ? `${session.user} (admin)` : session.user;
  // An element shows only when every condition it names holds.
  for (const node of document.querySelectorAll("[data-admin], [data-pat-mode], [data-header-mode], [data-feature]")) {
    const shown =
      (!node.hasAttribute("data-admin") || session.admin) &&
      (!node.hasAttribute("data-pat-mode") || session.forwardAs === "pat") &&
      (!node.hasAttribute("data-header-mode") || session.forwardAs !== "pat") &&
      (!node.hasAttribute("data-feature") || Boolean(session.features[node.getAttribute("data-feature")]));
    node.hidden = !shown;
  }
  offerExpiries(session.maxDaysUntilExpiry);
  $("nav-tokens").textContent = session.admin ? "Tokens" : "My tokens";
  $("tokens-title").textContent = session.admin ? "Tokens" : "My tokens";
  route();
}

async function login(event) {
  event.preventDefault();
  const username = $("login-username").value.trim();
  const password = $("login-password").value;
  if (!username || !password) {
    $("login-error").textContent = "Enter your username and password.";
    return;
  }
  try {
    const session = await call("POST", `${UI}/login`, { body: { username, password } });
    $("login-password").value = "";
    showApp(session);
  } catch (error) {
    $("login-error").textContent =
      error.status === 401 ? "Confluence did not accept this username and password." : error.message;
    $("login-password").select();
  }
}

async function logout() {
  forgetCreated();
  try {
    await call("POST", `${UI}/logout`, { body: {} });
  } catch (_) {
    // The session is gone either way.
  }
  location.hash = "";
  showLogin("You are logged out.");
}

// ---- Views ------------------------------------------------------------------

const VIEWS = ["tokens", "create", "audit", "settings"];

function route() {
  if (!state.session) return;
  let view = location.hash.replace("#", "") || "tokens";
  if (!VIEWS.includes(view) || (view === "settings" && !state.session.admin)) view = "tokens";
  for (const name of VIEWS) {
    $(`view-${name}`).hidden = name !== view;
    const link = $(`nav-${name}`);
    if (name === view) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  if (view !== "create") forgetCreated();
  if (view === "tokens") loadTokens();
  if (view === "audit") loadAudit();
  if (view === "settings") loadSettings();
}

function formatTime(ms) {
  return ms === null || ms === undefined ? "never" : new Date(ms).toLocaleString();
}

/// A day, short (a table cell): "7 Dec 2026" in the reader's order.
function formatDay(ms) {
  return new Date(ms).toLocaleDateString(undefined, { year: "numeric", month: "short", day: "numeric" });
}

function plural(n, one, many = `${one}s`) {
  return `${n} ${n === 1 ? one : many}`;
}

/// The badges of a token's state: unbound, expired, expires soon.
function badges(token) {
  const shown = [];
  if (token.user === null) shown.push(el("span", { class: "badge unbound" }, "unbound"));
  if (token.expired) shown.push(el("span", { class: "badge expired" }, "expired"));
  else if (token.expiringSoon) shown.push(el("span", { class: "badge soon" }, "expires soon"));
  return shown;
}

function detail(list, term, ...values) {
  list.append(el("dt", {}, term), el("dd", {}, ...values));
}

/// One token as a table row, and the row of its details below it (hidden
/// until "Details" opens it).
function tokenRows(token) {
  const labelId = `label-${token.id}`;
  const pick = el("input", { type: "checkbox", "aria-label": `Select ${token.label}` });
  pick.checked = state.selected.has(token.id);
  pick.addEventListener("change", () => {
    if (pick.checked) state.selected.set(token.id, { label: token.label, user: token.user });
    else state.selected.delete(token.id);
    showSelection();
  });
  const expires =
    token.validUntil === null ? "never" : el("time", { title: formatTime(token.validUntil) }, formatDay(token.validUntil));
  const lastUsed =
    token.lastUsed === null ? "never" : el("time", { title: formatTime(token.lastUsed) }, formatDay(token.lastUsed));
  const spaces = token.spaces.length ? token.spaces.join(", ") : "all";

  const detailsId = `details-${token.id}`;
  const open = el("button", { type: "button", "aria-expanded": "false", "aria-controls": detailsId, "aria-describedby": labelId }, "Details");
  const actions = el("div", { class: "actions" }, open);
  if (state.session.features.update) {
    const edit = el("button", { type: "button", "aria-describedby": labelId }, "Edit");
    edit.addEventListener("click", () => openEdit(token));
    actions.append(edit);
  }
  if (state.session.features.rotate) {
    const rotate = el("button", { type: "button", "aria-describedby": labelId }, "Rotate");
    rotate.addEventListener("click", () => askRotate(token));
    actions.append(rotate);
  }
  const remove = el("button", { type: "button", class: "danger", "aria-describedby": labelId }, "Delete");
  remove.addEventListener("click", () => askDelete(token));
  actions.append(remove);

  const row = el(
    "tr",
    {},
    el("td", { class: "pick" }, pick),
    el("th", { scope: "row", class: "label" }, el("span", { id: labelId, title: token.label }, token.label), ...badges(token)),
    el("td", {}, token.user === null ? "any user" : token.user),
    el("td", { class: "spaces", title: spaces }, spaces),
    el("td", {}, expires),
    el("td", {}, lastUsed),
    el("td", { class: "number" }, String(token.calls30Days ?? 0)),
    el("td", {}, actions),
  );
  const cell = el("td", { colspan: "8" });
  const details = el("tr", { id: detailsId, class: "details", hidden: "" }, cell);
  open.addEventListener("click", () => {
    const opening = details.hidden;
    details.hidden = !opening;
    open.setAttribute("aria-expanded", String(opening));
    if (opening) showDetails(token, cell);
  });
  return [row, details];
}

/// What the table does not show, and the token's calls per day.
async function showDetails(token, cell) {
  const list = el("dl", {});
  detail(list, "Rules", token.rules.length ? el("pre", { class: "rules" }, token.rules.join("\n")) : "none: everything in scope");
  detail(list, "IP addresses", token.ip || "any");
  if (state.session.features.rateLimit) detail(list, "Rate limit", token.rateLimit || "none");
  if (state.session.features.reportOnly) detail(list, "Mode", token.enforce ? "enforced" : "report-only");
  detail(list, "Forwarded as", token.forwardAs === "pat" ? "personal access token" : "identity header");
  detail(list, "Created", formatTime(token.dateCreated));
  detail(list, "Expires", formatTime(token.validUntil));
  const usage = token.counter
    ? `${plural(token.counter, "call")} in all, last ${formatTime(token.lastUsed)}${token.lastIp ? ` from ${token.lastIp}` : ""}`
    : "not used yet";
  detail(list, "Usage", usage);
  detail(list, "Id", el("code", {}, token.id));
  const chart = el("div", { class: "chart-box" }, el("p", { class: "status" }, "Loading calls per day…"));
  cell.replaceChildren(el("div", { class: "details-grid" }, list, chart));
  try {
    const usage = await call("GET", `${API}/usage?${new URLSearchParams({ id: token.id, days: 30 })}`);
    chart.replaceChildren(callsChart(token, usage.days));
  } catch (error) {
    chart.replaceChildren(el("p", { class: "status error" }, error.message));
  }
}

/// The SVG namespace, from the page's own <svg> template (the HTML parser
/// puts it there), so no URL is written here. The script is deferred: the
/// page is parsed when this runs.
const SVG_NAMESPACE = document.getElementById("svg-template").content.firstElementChild.namespaceURI;

/// An SVG element.
function svg(tag, attributes, ...children) {
  const node = document.createElementNS(SVG_NAMESPACE, tag);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, String(value));
  node.append(...children);
  return node;
}

/// "Calls per day": a bar a day (forwarded calls, refusals stacked on
/// top), drawn as inline SVG; every number is also in a table for screen
/// readers, and the totals in words for everyone.
function callsChart(token, days) {
  const titleId = `chart-title-${token.id}`;
  const summaryId = `chart-summary-${token.id}`;
  const width = 600;
  const height = 150;
  const top = 14;
  const bottom = 20;
  const most = Math.max(1, ...days.map((d) => d.calls + d.refused));
  const step = width / days.length;
  const scale = (n) => (n / most) * (height - top - bottom);
  const bars = days.map((day, i) => {
    const x = i * step + 1;
    const callsHeight = scale(day.calls);
    const refusedHeight = scale(day.refused);
    const base = height - bottom;
    return svg(
      "g",
      {},
      svg("title", {}, `${day.date}: ${plural(day.calls, "call")}, ${day.refused} refused`),
      svg("rect", { class: "calls", x, y: base - callsHeight, width: step - 2, height: callsHeight }),
      svg("rect", { class: "refused", x, y: base - callsHeight - refusedHeight, width: step - 2, height: refusedHeight }),
    );
  });
  const picture = svg(
    "svg",
    { viewBox: `0 0 ${width} ${height}`, role: "img", "aria-labelledby": titleId, "aria-describedby": summaryId, class: "chart" },
    svg("line", { class: "axis", x1: 0, y1: height - bottom, x2: width, y2: height - bottom }),
    ...bars,
    svg("text", { class: "tick", x: 0, y: 10 }, `${most}`),
    svg("text", { class: "tick", x: 0, y: height - 4 }, days[0].date),
    svg("text", { class: "tick end", x: width, y: height - 4 }, days[days.length - 1].date),
  );
  const calls = days.reduce((sum, d) => sum + d.calls, 0);
  const refused = days.reduce((sum, d) => sum + d.refused, 0);
  const busiest = days.reduce((best, d) => (d.calls + d.refused > best.calls + best.refused ? d : best), days[0]);
  const summary =
    calls + refused === 0
      ? `No calls in the last ${days.length} days (UTC).`
      : `Last ${days.length} days (UTC): ${plural(calls, "call")}, ${refused} refused; busiest ${busiest.date} with ${busiest.calls + busiest.refused}.`;
  // In a hidden box: a table is never as small as the 1 px asked of it.
  const numbers = el(
    "table",
    { class: "chart-numbers" },
    el("caption", {}, `Calls per day of ${token.label}`),
    el("thead", {}, el("tr", {}, el("th", { scope: "col" }, "Date"), el("th", { scope: "col" }, "Calls"), el("th", { scope: "col" }, "Refused"))),
    el(
      "tbody",
      {},
      ...days.map((d) => el("tr", {}, el("th", { scope: "row" }, d.date), el("td", {}, String(d.calls)), el("td", {}, String(d.refused)))),
    ),
  );
  const legend = el(
    "p",
    { class: "legend", "aria-hidden": "true" },
    el("span", { class: "key calls" }),
    " forwarded ",
    el("span", { class: "key refused" }),
    " refused",
  );
  return el("figure", { class: "chart-figure" }, el("figcaption", { id: titleId }, "Calls per day"), picture, legend, el("p", { id: summaryId, class: "hint" }, summary), el("div", { class: "visually-hidden" }, numbers));
}

/// Whether any filter narrows the list (an empty list then says so, rather
/// than "no tokens yet").
function filtering() {
  return Boolean($("filter-user").value.trim() || $("filter-label").value.trim() || $("filter-state").value !== "all");
}

async function loadTokens() {
  const { by, ascending } = state.sort;
  const query = new URLSearchParams({ startAt: state.tokensStart, maxResults: PAGE_SIZE, orderBy: `${ascending ? "" : "-"}${by}` });
  if (state.session.admin && $("filter-user").value.trim()) query.set("userName", $("filter-user").value.trim());
  if ($("filter-label").value.trim()) query.set("label", $("filter-label").value.trim());
  if ($("filter-state").value !== "all") query.set("state", $("filter-state").value);
  $("delete-user").hidden = !(state.session.admin && $("filter-user").value.trim());
  for (const header of document.querySelectorAll("#token-table th[data-sort]")) {
    const sorted = header.dataset.sort === by;
    if (sorted) header.setAttribute("aria-sort", ascending ? "ascending" : "descending");
    else header.removeAttribute("aria-sort");
  }
  $("tokens-status").textContent = "Loading…";
  const ticket = ++state.tokensTicket;
  try {
    const page = await call("GET", `${API}/get?${query}`);
    if (ticket !== state.tokensTicket) return;
    if (page.tokens.length === 0 && state.tokensStart > 0) {
      // The last page emptied (its tokens deleted): show the one before.
      state.tokensStart = Math.max(0, (Math.max(1, page.pages) - 1) * PAGE_SIZE);
      return loadTokens();
    }
    const empty = page.total === 0 && !filtering();
    $("tokens-empty").hidden = !empty;
    $("tokens-main").hidden = empty;
    $("token-rows").replaceChildren(...page.tokens.flatMap(tokenRows));
    $("tokens-status").textContent = page.total === 0 ? "No tokens match these filters." : plural(page.total, "token");
    pager("tokens", page);
    showSelection();
  } catch (error) {
    if (ticket === state.tokensTicket) $("tokens-status").textContent = error.message;
  }
}

/// A column header sorts by its column; again, the other way round.
function sortBy(column) {
  const { by, ascending } = state.sort;
  // Most recent and busiest first; names, spaces and expiry from the top.
  const first = !["lastUsed", "calls"].includes(column);
  state.sort = { by: column, ascending: by === column ? !ascending : first };
  state.tokensStart = 0;
  loadTokens();
}

function showSelection() {
  const count = state.selected.size;
  $("revoke-selected").disabled = count === 0;
  $("selected-count").textContent = count ? `${plural(count, "token")} selected` : "";
}

function askRevoke() {
  state.pendingRevoke = [...state.selected];
  const count = state.pendingRevoke.length;
  const elsewhere = state.pendingRevoke.filter(([id]) => !document.getElementById(`label-${id}`)).length;
  $("revoke-title").textContent = `Revoke ${plural(count, "token")}?`;
  $("revoke-text").textContent =
    "Scripts using them stop working at once. This cannot be undone." +
    (elsewhere ? ` ${elsewhere === 1 ? "One of them is" : `${elsewhere} of them are`} not on this page.` : "");
  $("revoke-list").replaceChildren(
    ...state.pendingRevoke.map(([, token]) => el("li", {}, `${token.label} (${token.user === null ? "any user" : token.user})`)),
  );
  $("revoke-password").value = "";
  $("confirm-revoke").showModal();
  $("revoke-cancel").focus();
}

/// Revokes what the confirmation listed, one by one, saying how far it is.
async function revokeSelected(event) {
  event.preventDefault();
  const password = $("revoke-password").value;
  $("confirm-revoke").close();
  const pending = state.pendingRevoke;
  state.pendingRevoke = [];
  // With forward_as = "pat" and the password, each token's personal access
  // token is revoked in Confluence too, as a single delete does.
  const options = state.session.forwardAs === "pat" && password ? { password } : {};
  const button = $("revoke-selected");
  button.disabled = true;
  const failed = [];
  let revoked = 0;
  let patsKept = 0;
  let refusedPassword = false;
  for (const [id, token] of pending) {
    $("tokens-status").textContent = `Revoking ${revoked + failed.length + 1} of ${pending.length}…`;
    try {
      const answer = await call("DELETE", `${API}/delete?id=${encodeURIComponent(id)}`, options);
      revoked += 1;
      if (answer.upstreamRevoked === false) patsKept += 1;
      state.selected.delete(id);
    } catch (error) {
      if (error.status === 404) {
        // Deleted meanwhile: gone, as asked.
        revoked += 1;
        state.selected.delete(id);
      } else if (error.status === 401 && options.password) {
        // The same wrong password for every call would only lock this address out.
        refusedPassword = true;
        break;
      } else {
        failed.push(`“${token.label}”: ${error.message}`);
      }
    }
  }
  await loadTokens();
  let message = `Revoked ${plural(revoked, "token")}.`;
  if (patsKept === 1) message += " 1 personal access token stays in Confluence until it expires.";
  if (patsKept > 1) message += ` ${patsKept} personal access tokens stay in Confluence until they expire.`;
  if (refusedPassword) message += " Confluence did not accept the password: the others are still selected.";
  if (failed.length) message += ` Not revoked: ${failed.join("; ")}`;
  $("tokens-status").textContent = message;
  const table = document.querySelector("#tokens-main .table-wrap");
  if ($("tokens-main").hidden) $("create-first").focus();
  else table.focus();
}

function pager(name, page) {
  const pages = Math.max(1, page.pages);
  const current = Math.floor(page.startAt / page.maxResults) + 1;
  const [prev, next] = [$(`${name}-prev`), $(`${name}-next`)];
  const focused = document.activeElement;
  $(`${name}-page`).textContent = `Page ${Math.min(current, pages)} of ${pages}`;
  prev.disabled = page.startAt === 0;
  next.disabled = page.startAt + page.maxResults >= page.total;
  // A button pressed to the first or last page is disabled: the focus moves
  // to the other rather than off the page.
  if (focused === prev && prev.disabled && !next.disabled) next.focus();
  if (focused === next && next.disabled && !prev.disabled) prev.focus();
}

function askDelete(token) {
  state.pendingDelete = token;
  $("confirm-text").textContent =
    `Delete token “${token.label}”? Scripts using it stop working at once. This cannot be undone.`;
  $("confirm-password").value = "";
  $("confirm-delete").showModal();
  $("confirm-cancel").focus();
}

async function confirmDelete(event) {
  event.preventDefault();
  const token = state.pendingDelete;
  const password = $("confirm-password").value;
  $("confirm-delete").close();
  if (!token) return;
  try {
    const options = state.session.forwardAs === "pat" && password ? { password } : {};
    const answer = await call("DELETE", `${API}/delete?id=${encodeURIComponent(token.id)}`, options);
    state.selected.delete(token.id);
    let message = `Deleted “${token.label}”.`;
    if (answer.upstreamRevoked === true) message += " Its personal access token was revoked in Confluence.";
    if (answer.upstreamRevoked === false) message += " Its personal access token stays in Confluence until it expires.";
    await loadTokens();
    $("tokens-status").textContent = message;
  } catch (error) {
    $("tokens-status").textContent = error.message;
  }
  state.pendingDelete = null;
}

function askRotate(token) {
  state.pendingRotate = token;
  $("rotate-text").textContent =
    `Give “${token.label}” a new value? Its rules, usage and expiry stay; the old value works for the grace period below.`;
  $("rotate-grace").value = "24";
  $("rotate-password").value = "";
  $("rotate-error").textContent = "";
  $("rotate-token").showModal();
  $("rotate-grace").focus();
}

async function confirmRotate(event) {
  event.preventDefault();
  const token = state.pendingRotate;
  const password = $("rotate-password").value;
  if (!password) {
    $("rotate-error").textContent = "Enter your Confluence password: a new value grants access.";
    $("rotate-password").focus();
    return;
  }
  const body = { id: token.id, graceHours: Number($("rotate-grace").value.trim() || "24") };
  try {
    const rotated = await call("POST", `${API}/rotate`, { body, password });
    $("rotate-token").close();
    state.pendingRotate = null;
    // The new value is shown once, where a new token's is.
    location.hash = "create";
    route();
    showCreated(rotated);
    $("created-title").textContent = `New value of “${rotated.label}”`;
  } catch (failure) {
    $("rotate-error").textContent = failure.message;
    if (failure.body.field === "graceHours") $("rotate-grace").focus();
  }
}

async function deleteUserTokens() {
  const user = $("filter-user").value.trim();
  if (!user || !window.confirm(`Delete every token of ${user}?`)) return;
  try {
    const answer = await call("DELETE", `${API}/delete`, { body: { userName: user } });
    for (const [id, token] of state.selected) {
      if (token.user !== null && token.user.toLowerCase() === user.toLowerCase()) state.selected.delete(id);
    }
    await loadTokens();
    $("tokens-status").textContent = `Deleted ${answer.deleted} tokens of ${user}.`;
  } catch (error) {
    $("tokens-status").textContent = error.message;
  }
}

// ---- Edit -----------------------------------------------------------------------

function openEdit(token) {
  state.editing = token;
  $("edit-title").textContent = `Edit “${token.label}”`;
  $("edit-label").value = token.label;
  $("edit-rules").value = token.rules.join("\n");
  $("edit-ip").value = token.ip;
  $("edit-rate").value = token.rateLimit || "";
  $("edit-spaces").value = (token.spaces || []).join(",");
  $("edit-report-only").checked = token.enforce === false;
  $("edit-password").value = "";
  for (const id of ["edit-rules-check", "edit-suggest-status", "edit-error"]) $(id).textContent = "";
  $("edit-token").showModal();
  $("edit-label").focus();
}

/// Proposes rules from the token's audited calls (GET /suggest) for review.
async function suggestRules() {
  const status = $("edit-suggest-status");
  status.textContent = "Reading its calls…";
  try {
    const answer = await call("GET", `${API}/suggest?tokenId=${encodeURIComponent(state.editing.id)}`);
    $("edit-rules").value = answer.limitTo;
    status.textContent =
      `Proposed from ${answer.observed} call${answer.observed === 1 ? "" : "s"} of the last ${answer.days} days ` +
      `(${answer.note}). Review them, then Save.`;
    await checkRules("edit-rules", "edit-rules-check");
  } catch (error) {
    status.textContent = error.message;
  }
}

async function saveEdit(event) {
  event.preventDefault();
  const token = state.editing;
  const error = $("edit-error");
  error.textContent = "";
  const password = $("edit-password").value;
  if (!password) {
    error.textContent = "Enter your Confluence password: changing restrictions needs it again.";
    $("edit-password").focus();
    return;
  }
  if (!(await checkRules("edit-rules", "edit-rules-check"))) {
    error.textContent = "Fix the rules first.";
    $("edit-rules").focus();
    return;
  }
  const body = {
    id: token.id,
    label: $("edit-label").value.trim(),
    limitTo: $("edit-rules").value,
    ip: $("edit-ip").value.trim(),
  };
  if (state.session.features.rateLimit) body.rateLimit = $("edit-rate").value.trim() || null;
  if (state.session.features.reportOnly) body.enforce = !$("edit-report-only").checked;
  if (state.session.features.spaces) body.spaces = $("edit-spaces").value.trim() || null;
  try {
    const updated = await call("POST", `${API}/update`, { body, password });
    $("edit-token").close();
    state.editing = null;
    await loadTokens();
    $("tokens-status").textContent = `Saved “${updated.label}”: it takes effect at once.`;
  } catch (failure) {
    error.textContent = failure.message;
    const field = {
      label: "edit-label",
      limitTo: "edit-rules",
      ip: "edit-ip",
      rateLimit: "edit-rate",
      spaces: "edit-spaces",
    }[failure.body.field];
    if (field) $(field).focus();
  }
}

// ---- Create -------------------------------------------------------------------

let rulesTimer = null;

function checkRulesSoon(fieldId, statusId) {
  clearTimeout(rulesTimer);
  rulesTimer = setTimeout(() => checkRules(fieldId, statusId), 250);
}

/// Checks the rules as they are typed: the same parser as the gateway, through POST /check.
async function checkRules(fieldId = "create-rules", statusId = "rules-check") {
  const field = $(fieldId);
  const status = $(statusId);
  const limitTo = field.value;
  if (!limitTo.trim()) {
    status.textContent = "No rules: the token may call everything in its scope.";
    status.className = "status";
    field.removeAttribute("aria-invalid");
    return true;
  }
  try {
    await call("POST", `${API}/check`, { body: { limitTo, method: "GET", url: "/" } });
    const count = limitTo.split(/\n/).filter((line) => line.trim()).length;
    status.textContent = `${count} rule${count === 1 ? "" : "s"}, all valid.`;
    status.className = "status ok";
    field.removeAttribute("aria-invalid");
    return true;
  } catch (error) {
    const where = error.body.line ? `Line ${error.body.line}, column ${error.body.column}: ` : "";
    status.textContent = where + error.message.replace(/^line \d+, column \d+: /, "");
    status.className = "status error";
    field.setAttribute("aria-invalid", "true");
    return false;
  }
}

async function tryRequest() {
  const result = $("try-result");
  const url = $("try-url").value.trim();
  if (!url) {
    result.textContent = "Enter a URL to try, e.g. /rest/api/space?spaceKey=DOCS";
    return;
  }
  const body = { limitTo: $("create-rules").value, method: $("try-method").value, url };
  if ($("try-body").value.trim()) body.body = $("try-body").value;
  // The spaces typed in count too, as they will at the gateway.
  if (state.session.features.spaces && $("create-spaces").value.trim()) body.spaces = $("create-spaces").value.trim();
  try {
    const answer = await call("POST", `${API}/check`, { body });
    const verdict = el("strong", { class: answer.allowed ? "allow" : "deny" }, answer.allowed ? "ALLOW" : "DENY");
    const lines = el("ul", {}, ...answer.explanation.map((line) => el("li", {}, line)));
    result.replaceChildren(verdict, lines);
  } catch (error) {
    result.textContent = error.message;
  }
}

/// The create form's fields by the API's names: the field that shows an
/// error about it, and the words a person knows it by.
const CREATE_FIELDS = {
  label: ["create-label", "Label"],
  userName: ["create-user", "For user"],
  daysUntilExpiry: ["create-days", "Expires in days"],
  limitTo: ["create-rules", "Rules"],
  ip: ["create-ip", "IP addresses"],
  rateLimit: ["create-rate", "Rate limit"],
  spaces: ["create-spaces", "Spaces"],
  upstreamToken: ["create-password", "Confluence password"],
};

/// A message of the API in plain words: its field names as the form names them.
function plainWords(message) {
  let plain = message.replace(/`([^`]*)`/g, "“$1”");
  for (const [name, [, words]] of Object.entries(CREATE_FIELDS)) {
    plain = plain.replace(new RegExp(`\\b${name}\\b`, "g"), `“${words}”`);
  }
  return plain.charAt(0).toUpperCase() + plain.slice(1);
}

function clearFieldErrors(form) {
  for (const error of form.querySelectorAll(".field-error")) {
    error.hidden = true;
    error.textContent = "";
  }
  for (const field of form.querySelectorAll("[aria-invalid]")) field.removeAttribute("aria-invalid");
  $("create-error").textContent = "";
}

/// Shows each error under its field and moves the focus to the first
/// (in the form's order).
function showFieldErrors(errors) {
  const order = [...$("create-form").querySelectorAll("input, select, textarea")];
  errors.sort((a, b) => order.indexOf($(a[0])) - order.indexOf($(b[0])));
  for (const [fieldId, message] of errors) {
    $(fieldId).setAttribute("aria-invalid", "true");
    const shown = $(`${fieldId}-error`);
    shown.textContent = message;
    shown.hidden = false;
  }
  $("create-error").textContent = errors.length === 1 ? "Check the field marked above." : `Check the ${errors.length} fields marked above.`;
  $(errors[0][0]).focus();
}

/// The expiry presets this gateway allows: 7, 30, 90 (chosen), 365 days,
/// and never, within max_days_until_expiry.
function offerExpiries(most) {
  const select = $("create-days");
  const days = [7, 30, 90, 365].filter((d) => most === null || d <= most);
  if (most !== null && !days.includes(most)) days.push(most);
  const options = days.map((d) => el("option", { value: String(d) }, d === most ? `${d} days (the most allowed)` : `${d} days`));
  if (most === null) options.push(el("option", { value: "never" }, "never"));
  select.replaceChildren(...options);
  select.value = days.includes(90) ? "90" : String(days[days.length - 1]);
}

async function createToken(event) {
  event.preventDefault();
  const form = $("create-form");
  clearFieldErrors(form);
  const label = $("create-label").value.trim();
  const password = $("create-password").value;
  const user = state.session.admin ? $("create-user").value.trim() : "";
  const unbound = state.session.admin && state.session.forwardAs !== "pat" && $("create-unbound").checked;
  const errors = [];
  if (!label) errors.push(["create-label", "Give the token a label, so that you know it again in the list."]);
  if (unbound && user) {
    errors.push(["create-user", "Leave this empty for a token any user may use, or untick “Any user may use this token”."]);
  }
  if (!password) errors.push(["create-password", "Enter your Confluence password: creating a token needs it again."]);
  if (!(await checkRules())) errors.push(["create-rules", "Fix the rule shown above first."]);
  if (errors.length) {
    showFieldErrors(errors);
    return;
  }
  const body = { label };
  if ($("create-days").value !== "never") body.daysUntilExpiry = Number($("create-days").value);
  if ($("create-rules").value.trim()) body.limitTo = $("create-rules").value;
  if ($("create-ip").value.trim()) body.ip = $("create-ip").value.trim();
  if (state.session.features.rateLimit && $("create-rate").value.trim()) body.rateLimit = $("create-rate").value.trim();
  if (state.session.features.reportOnly && $("create-report-only").checked) body.enforce = false;
  if (state.session.features.spaces && $("create-spaces").value.trim()) body.spaces = $("create-spaces").value.trim();
  if (state.session.admin && !unbound) body.userName = user || state.session.user;
  try {
    const created = await call("POST", `${API}/set`, { body, password });
    form.reset();
    offerExpiries(state.session.maxDaysUntilExpiry);
    $("create-user").disabled = false;
    $("rules-check").textContent = "";
    showCreated(created);
  } catch (failure) {
    if (failure.status === 401) {
      showFieldErrors([["create-password", "Confluence did not accept this password: enter the one you log in to Confluence with."]]);
      return;
    }
    const [fieldId] = CREATE_FIELDS[failure.body.field] || [];
    if (fieldId && $(fieldId).offsetParent !== null) {
      showFieldErrors([[fieldId, plainWords(failure.message)]]);
    } else {
      $("create-error").textContent = plainWords(failure.message);
    }
  }
}

function showCreated(created) {
  $("created-title").textContent = "Your new token";
  const origin = location.origin;
  const user = created.user || state.session.user;
  const value = created.token;
  $("new-token").value = value;
  $("copy-status").textContent = "";
  $("snippet-curl").textContent = `curl -u '${user}:${value}' ${origin}/rest/api/space`;
  $("snippet-fetch").textContent =
    `const response = await fetch("${origin}/rest/api/space", {\n` +
    `  headers: { Authorization: "Basic " + btoa("${user}:${value}") },\n});\n` +
    `console.log(await response.json());`;
  $("snippet-requests").textContent =
    `import requests\n\n` +
    `response = requests.get("${origin}/rest/api/space", auth=("${user}", "${value}"))\n` +
    `print(response.json())`;
  $("snippet-atlassian").textContent =
    `from atlassian import Confluence\n\n` +
    `confluence = Confluence(url="${origin}", username="${user}", password="${value}")\n` +
    `print(confluence.get_all_spaces())`;
  $("created").hidden = false;
  $("created").scrollIntoView({ block: "start" });
  $("new-token").focus();
  $("new-token").select();
}

/// The value is shown once: leaving the view forgets it.
function forgetCreated() {
  $("created").hidden = true;
  $("new-token").value = "";
  for (const id of ["snippet-curl", "snippet-fetch", "snippet-requests", "snippet-atlassian"]) $(id).textContent = "";
}

async function copyToken() {
  const value = $("new-token").value;
  try {
    await navigator.clipboard.writeText(value);
    $("copy-status").textContent = "Copied.";
  } catch (_) {
    $("new-token").select();
    $("copy-status").textContent = "Selected: press Ctrl+C (or ⌘C) to copy.";
  }
}

// ---- Audit log ------------------------------------------------------------------

/// Why a request was refused, in words, by its reason code (SPEC §10).
const REFUSALS = {
  rule_mismatch: () => "no rule allows it",
  // A refusal's entry names the space; a report-only entry's detail is the message.
  space_not_allowed: (e) => (e.decision === "deny" && e.detail ? `space ${e.detail} is not allowed` : "a space it may not touch"),
  space_read_only: (e) =>
    e.decision === "deny" && e.detail ? `space ${e.detail} may only be read` : "a change in a space it may only read",
  space_unknown: () => "its space cannot be told",
  bad_cql: () => "a search that cannot be kept to its spaces",
  out_of_scope: () => "outside the token's scope",
  ip_not_allowed: () => "from an IP address not allowed",
  invalid_token: () => "not a valid token",
  token_expired: () => "the token has expired",
  user_mismatch: () => "another user's name",
  unbound_bearer: () => "an unbound token without a user name",
  scheme_not_allowed: () => "the token sent in a way not allowed",
  bad_credentials: () => "malformed credentials",
  rate_limited: () => "over its rate limit",
  too_many_failures: () => "too many failed attempts from this address",
  upstream_credential_rejected: () => "Confluence refused its personal access token",
  upstream_identity_ignored: () => "Confluence answered as another user",
  upstream_unavailable: () => "Confluence could not be reached",
  upstream_timeout: () => "Confluence did not answer in time",
  body_too_large: () => "a body too large to check",
  ambiguous_json: () => "a JSON body with a repeated key",
  bad_path: () => "a path that cannot be read safely",
  bad_request: () => "a malformed request",
  internal_error: () => "an error in the gateway",
};

/// What was done, for a change to tokens or settings.
const ACTIONS = {
  create: "created",
  update: "changed",
  rotate: "rotated",
  delete: "deleted",
  delete_user: "all of a user's tokens deleted",
  settings: "settings changed",
  login: "logged in",
  logout: "logged out",
  refused_cross_site: "refused: a call from another site",
};

function outcome(entry) {
  if (entry.kind !== "request") return ACTIONS[entry.decision] || entry.decision.replaceAll("_", " ");
  if (entry.decision === "allow") return "allowed";
  if (entry.decision === "report") {
    const would = REFUSALS[entry.reason];
    return would ? `allowed, report only: ${would(entry)}` : "allowed, report only";
  }
  const why = REFUSALS[entry.reason];
  return `refused: ${why ? why(entry) : (entry.reason || "").replaceAll("_", " ")}`;
}

async function loadAudit() {
  const query = new URLSearchParams({ startAt: state.auditStart, maxResults: PAGE_SIZE });
  if (state.session.admin && $("audit-user").value.trim()) query.set("userName", $("audit-user").value.trim());
  if ($("audit-token").value.trim()) query.set("tokenId", $("audit-token").value.trim());
  if ($("audit-outcome").value !== "all") query.set("outcome", $("audit-outcome").value);
  $("audit-status").textContent = "Loading…";
  const ticket = ++state.auditTicket;
  try {
    const page = await call("GET", `${API}/audit?${query}`);
    if (ticket !== state.auditTicket) return;
    const rows = page.entries.map((entry) => {
      const request = entry.method ? `${entry.method} ${entry.path || ""}` : entry.detail || "";
      const token = entry.tokenLabel || entry.tokenId || "–";
      const said = outcome(entry);
      return el(
        "tr",
        {},
        el("td", {}, el("time", { title: new Date(entry.time).toISOString() }, formatTime(entry.time))),
        el("td", {}, entry.user || "–"),
        el("td", { class: "cut", title: entry.tokenId ? `${token}, id ${entry.tokenId}` : "" }, token),
        el("td", { class: "cut mono", title: request }, request),
        el("td", { class: said.startsWith("refused") ? "deny" : "" }, said),
      );
    });
    $("audit-table").tBodies[0].replaceChildren(...rows);
    const filtered = query.has("userName") || query.has("tokenId") || query.has("outcome");
    const none = filtered
      ? "No entries match these filters."
      : "No entries yet: every request made with a token, and every change to a token, appears here.";
    $("audit-status").textContent = page.total === 0 ? none : plural(page.total, "entry", "entries");
    pager("audit", page);
  } catch (error) {
    if (ticket === state.auditTicket) $("audit-status").textContent = error.message;
  }
}

// ---- Settings ---------------------------------------------------------------------

async function loadSettings() {
  try {
    const answer = await call("GET", `${API}/settings`);
    $("setting-usage").checked = answer.settings.usageDetails;
    $("setting-audit").checked = answer.settings.auditLog;
  } catch (error) {
    $("settings-status").textContent = error.message;
  }
}

async function saveSettings(event) {
  event.preventDefault();
  const password = $("settings-password").value;
  if (!password) {
    $("settings-status").textContent = "Enter your Confluence password: changing settings needs it again.";
    $("settings-password").focus();
    return;
  }
  const body = { usageDetails: $("setting-usage").checked, auditLog: $("setting-audit").checked };
  try {
    await call("POST", `${API}/set`, { body, password });
    $("settings-password").value = "";
    $("settings-status").textContent = "Saved.";
  } catch (error) {
    $("settings-status").textContent = error.message;
  }
}

// ---- Wiring ---------------------------------------------------------------------

function debounce(action, ms) {
  let timer = null;
  return () => {
    clearTimeout(timer);
    timer = setTimeout(action, ms);
  };
}

async function start() {
  $("login-form").addEventListener("submit", login);
  $("logout").addEventListener("click", logout);
  window.addEventListener("hashchange", route);
  $("create-form").addEventListener("submit", createToken);
  // A field's error goes once the field is changed.
  $("create-form").addEventListener("input", (event) => {
    const field = event.target;
    if (field.getAttribute("aria-invalid") !== "true" || !field.id) return;
    field.removeAttribute("aria-invalid");
    const error = $(`${field.id}-error`);
    if (error) error.hidden = true;
  });
  $("create-rules").addEventListener("input", () => checkRulesSoon("create-rules", "rules-check"));
  $("edit-rules").addEventListener("input", () => checkRulesSoon("edit-rules", "edit-rules-check"));
  $("edit-form").addEventListener("submit", saveEdit);
  $("edit-cancel").addEventListener("click", () => $("edit-token").close());
  $("edit-suggest").addEventListener("click", suggestRules);
  $("edit-password").addEventListener("input", () => {
    $("edit-error").textContent = "";
  });
  $("try").addEventListener("click", tryRequest);
  $("copy").addEventListener("click", copyToken);
  $("confirm-form").addEventListener("submit", confirmDelete);
  $("confirm-cancel").addEventListener("click", () => $("confirm-delete").close());
  $("rotate-form").addEventListener("submit", confirmRotate);
  $("rotate-cancel").addEventListener("click", () => $("rotate-token").close());
  $("delete-user").addEventListener("click", deleteUserTokens);
  $("revoke-selected").addEventListener("click", askRevoke);
  $("revoke-form").addEventListener("submit", revokeSelected);
  $("revoke-cancel").addEventListener("click", () => $("confirm-revoke").close());
  $("create-first").addEventListener("click", () => {
    location.hash = "create";
    route();
    $("create-label").focus();
  });
  for (const header of document.querySelectorAll("#token-table th[data-sort]")) {
    header.querySelector("button").addEventListener("click", () => sortBy(header.dataset.sort));
  }
  $("filter-state").addEventListener("change", () => {
    state.tokensStart = 0;
    loadTokens();
  });
  $("audit-outcome").addEventListener("change", () => {
    state.auditStart = 0;
    loadAudit();
  });
  // An unbound token has no user: ticking the box empties "For user".
  $("create-unbound").addEventListener("change", () => {
    if ($("create-unbound").checked) $("create-user").value = "";
    $("create-user").disabled = $("create-unbound").checked;
  });
  $("settings-form").addEventListener("submit", saveSettings);
  const reloadTokens = debounce(() => {
    state.tokensStart = 0;
    loadTokens();
  }, 300);
  // "change" too: a field emptied by other means than typing.
  for (const filter of ["filter-user", "filter-label"]) {
    $(filter).addEventListener("input", reloadTokens);
    $(filter).addEventListener("change", reloadTokens);
  }
  const reloadAudit = debounce(() => {
    state.auditStart = 0;
    loadAudit();
  }, 300);
  for (const filter of ["audit-user", "audit-token"]) {
    $(filter).addEventListener("input", reloadAudit);
    $(filter).addEventListener("change", reloadAudit);
  }
  $("tokens-prev").addEventListener("click", () => {
    state.tokensStart = Math.max(0, state.tokensStart - PAGE_SIZE);
    loadTokens();
  });
  $("tokens-next").addEventListener("click", () => {
    state.tokensStart += PAGE_SIZE;
    loadTokens();
  });
  $("audit-prev").addEventListener("click", () => {
    state.auditStart = Math.max(0, state.auditStart - PAGE_SIZE);
    loadAudit();
  });
  $("audit-next").addEventListener("click", () => {
    state.auditStart += PAGE_SIZE;
    loadAudit();
  });
  try {
    const response = await fetch(`${UI}/session`, { credentials: "same-origin", cache: "no-store" });
    if (response.ok) showApp(await response.json());
    else showLogin();
  } catch (_) {
    showLogin("The gateway cannot be reached.");
  }
}

document.addEventListener("DOMContentLoaded", start);
