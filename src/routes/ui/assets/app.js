// tokengate's web page: plain JavaScript over the management API
// (/rest/extender/1.0/tokenTools), with the session cookie the login sets.
// No framework, no build step, nothing loaded from elsewhere; the Content
// Security Policy allows no inline script. Every value from the server is
// put into the page as text, never as HTML.
"use strict";

const API = "/rest/extender/1.0/tokenTools";
const UI = "/tokengate/ui";
const PAGE_SIZE = 20;

const state = {
  session: null, // {user, admin, csrf, forwardAs, features}
  tokensStart: 0,
  auditStart: 0,
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

function expiryBadge(token) {
  if (token.expired) return el("span", { class: "badge expired" }, "expired");
  if (token.expiringSoon) {
    return el("span", { class: "badge soon" }, "expires soon");
  }
  return null;
}

function detail(list, term, ...values) {
  list.append(el("dt", {}, term), el("dd", {}, ...values));
}

function tokenCard(token) {
  const list = el("dl", {});
  detail(list, "User", token.user === null ? "any (unbound)" : token.user);
  detail(list, "Created", formatTime(token.dateCreated));
  detail(list, "Expires", formatTime(token.validUntil), " ", expiryBadge(token));
  const rules = token.rules.length ? el("pre", { class: "rules" }, token.rules.join("\n")) : "none: everything in scope";
  detail(list, "Rules", rules);
  detail(list, "IP addresses", token.ip || "any");
  if ("rateLimit" in token) detail(list, "Rate limit", token.rateLimit || "none");
  if ("spaces" in token) detail(list, "Spaces", token.spaces.length ? token.spaces.join(", ") : "all");
  if ("enforce" in token) detail(list, "Mode", token.enforce ? "enforced" : "report-only");
  detail(list, "Forwarded as", token.forwardAs === "pat" ? "personal access token" : "identity header");
  const usage = token.counter
    ? `${token.counter} call${token.counter === 1 ? "" : "s"}, last ${formatTime(token.lastUsed)}${token.lastIp ? ` from ${token.lastIp}` : ""}`
    : "not used yet";
  detail(list, "Usage", usage);
  detail(list, "Id", el("code", {}, token.id));

  const actions = el("div", { class: "row actions" });
  if (state.session.features.update) {
    const edit = el("button", { type: "button", "aria-describedby": `label-${token.id}` }, "Edit");
    edit.addEventListener("click", () => openEdit(token));
    actions.append(edit);
  }
  if (state.session.features.rotate) {
    const rotate = el("button", { type: "button", "aria-describedby": `label-${token.id}` }, "Rotate");
    rotate.addEventListener("click", () => askRotate(token));
    actions.append(rotate);
  }
  const remove = el("button", { type: "button", class: "danger", "aria-describedby": `label-${token.id}` }, "Delete");
  remove.addEventListener("click", () => askDelete(token));
  actions.append(remove);
  return el(
    "article",
    { class: "card token", "aria-labelledby": `label-${token.id}` },
    el("h2", { id: `label-${token.id}` }, token.label),
    list,
    actions,
  );
}

async function loadTokens() {
  const query = new URLSearchParams({ startAt: state.tokensStart, maxResults: PAGE_SIZE });
  if (state.session.admin) {
    if ($("filter-user").value.trim()) query.set("userName", $("filter-user").value.trim());
    if ($("filter-label").value.trim()) query.set("label", $("filter-label").value.trim());
  }
  $("delete-user").hidden = !(state.session.admin && $("filter-user").value.trim());
  $("tokens-status").textContent = "Loading…";
  try {
    const page = await call("GET", `${API}/get?${query}`);
    const list = $("token-list");
    list.replaceChildren(...page.tokens.map(tokenCard));
    $("tokens-status").textContent = page.total === 0 ? "No tokens yet." : `${page.total} token${page.total === 1 ? "" : "s"}`;
    pager("tokens", page);
  } catch (error) {
    $("tokens-status").textContent = error.message;
  }
}

function pager(name, page) {
  const pages = Math.max(1, page.pages);
  const current = Math.floor(page.startAt / page.maxResults) + 1;
  $(`${name}-page`).textContent = `Page ${Math.min(current, pages)} of ${pages}`;
  $(`${name}-prev`).disabled = page.startAt === 0;
  $(`${name}-next`).disabled = page.startAt + page.maxResults >= page.total;
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

async function createToken(event) {
  event.preventDefault();
  const error = $("create-error");
  error.textContent = "";
  const label = $("create-label").value.trim();
  const password = $("create-password").value;
  if (!label) {
    error.textContent = "Give the token a label.";
    $("create-label").focus();
    return;
  }
  if (!password) {
    error.textContent = "Enter your Confluence password: creating a token needs it again.";
    $("create-password").focus();
    return;
  }
  if (!(await checkRules())) {
    error.textContent = "Fix the rules first.";
    $("create-rules").focus();
    return;
  }
  const body = { label };
  const days = $("create-days").value.trim();
  if (days) body.daysUntilExpiry = Number(days);
  if ($("create-rules").value.trim()) body.limitTo = $("create-rules").value;
  if ($("create-ip").value.trim()) body.ip = $("create-ip").value.trim();
  if (state.session.features.rateLimit && $("create-rate").value.trim()) body.rateLimit = $("create-rate").value.trim();
  if (state.session.features.reportOnly && $("create-report-only").checked) body.enforce = false;
  if (state.session.features.spaces && $("create-spaces").value.trim()) body.spaces = $("create-spaces").value.trim();
  if (state.session.admin) {
    const user = $("create-user").value.trim();
    if (user) body.userName = user;
    else if (!$("create-unbound").checked || state.session.forwardAs === "pat") body.userName = state.session.user;
  }
  try {
    const created = await call("POST", `${API}/set`, { body, password });
    $("create-form").reset();
    $("rules-check").textContent = "";
    showCreated(created);
  } catch (failure) {
    const where = failure.body.field ? ` (${failure.body.field})` : "";
    error.textContent = failure.message + where;
    const field = {
      label: "create-label",
      userName: "create-user",
      daysUntilExpiry: "create-days",
      limitTo: "create-rules",
      ip: "create-ip",
      rateLimit: "create-rate",
      spaces: "create-spaces",
    }[failure.body.field];
    if (field) $(field).focus();
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

async function loadAudit() {
  const query = new URLSearchParams({ startAt: state.auditStart, maxResults: PAGE_SIZE });
  if (state.session.admin && $("audit-user").value.trim()) query.set("userName", $("audit-user").value.trim());
  if ($("audit-token").value.trim()) query.set("tokenId", $("audit-token").value.trim());
  $("audit-status").textContent = "Loading…";
  try {
    const page = await call("GET", `${API}/audit?${query}`);
    const rows = page.entries.map((entry) => {
      const what = entry.kind === "request" ? `${entry.method} ${entry.path}` : `${entry.decision}${entry.detail ? `: ${entry.detail}` : ""}`;
      const outcome = entry.kind === "request" ? `${entry.status} ${entry.reason || entry.decision}` : "done";
      return el(
        "tr",
        {},
        el("td", {}, formatTime(entry.time)),
        el("td", {}, entry.user || "–"),
        el("td", {}, entry.tokenLabel || entry.tokenId || "–"),
        el("td", { class: "mono" }, what),
        el("td", {}, outcome),
      );
    });
    $("audit-table").tBodies[0].replaceChildren(...rows);
    $("audit-status").textContent = page.total === 0 ? "No entries." : `${page.total} entries`;
    pager("audit", page);
  } catch (error) {
    $("audit-status").textContent = error.message;
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
  $("settings-form").addEventListener("submit", saveSettings);
  const reloadTokens = debounce(() => {
    state.tokensStart = 0;
    loadTokens();
  }, 300);
  $("filter-user").addEventListener("input", reloadTokens);
  $("filter-label").addEventListener("input", reloadTokens);
  const reloadAudit = debounce(() => {
    state.auditStart = 0;
    loadAudit();
  }, 300);
  $("audit-user").addEventListener("input", reloadAudit);
  $("audit-token").addEventListener("input", reloadAudit);
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
