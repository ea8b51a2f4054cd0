// hookrelay dashboard: plain JavaScript over the REST API (/v1). No framework, no network
// access beyond this origin. Everything the server returns is written with textContent.
"use strict";

const POLL_MS = 2500;
/** Rows per page of the log: `?limit=` in the page's own URL (1-1000), else 50. */
const PAGE_SIZE = (() => {
  const n = Number(new URLSearchParams(window.location.search).get("limit"));
  return Number.isInteger(n) && n >= 1 && n <= 1000 ? n : 50;
})();
const store = window.sessionStorage;
const $ = (id) => document.getElementById(id);

const state = {
  endpoints: new Map(), // id -> endpoint JSON
  endpointCursor: null,
  current: null, // endpoint id open in the detail panel
  editing: null, // endpoint id being edited, or null when creating
  logFilters: {},
  logNewest: null, // id of the newest row shown
  logCursor: null,
  logGeneration: 0, // bumped when the filters change, so late answers for old ones are dropped
  inspecting: null, // delivery id open in the inspector
  timers: [],
};

// --- the API ------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

function credentials() {
  return { token: store.getItem("hookrelay.token") || "", tenant: store.getItem("hookrelay.tenant") || "" };
}

/** Calls the API; resolves to the JSON body, rejects with an ApiError carrying the API's message. */
async function api(method, path, body, params) {
  const { token, tenant } = credentials();
  const query = new URLSearchParams();
  if (tenant) query.set("tenant_id", tenant);
  for (const [k, v] of Object.entries(params || {})) {
    if (v !== undefined && v !== null && v !== "") query.set(k, v);
  }
  const qs = query.toString();
  const init = { method, headers: { Authorization: "Bearer " + token } };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let resp;
  try {
    resp = await fetch(path + (qs ? "?" + qs : ""), init);
  } catch (e) {
    throw new ApiError(0, "network", "the server did not answer: " + e.message);
  }
  const text = await resp.text();
  let json = null;
  try { json = text ? JSON.parse(text) : null; } catch (_) { json = null; }
  if (!resp.ok) {
    const err = json && json.error ? json.error : {};
    throw new ApiError(resp.status, err.code || "http_" + resp.status, err.message || "HTTP " + resp.status);
  }
  return json;
}

function describe(e) {
  if (e instanceof ApiError) return e.message + " (" + e.status + " " + e.code + ")";
  return String(e && e.message ? e.message : e);
}

function say(id, text) { $(id).textContent = text || ""; }

// --- small DOM helpers -------------------------------------------------------------------

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null) continue;
    if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v);
  }
  for (const c of children) {
    if (c === null || c === undefined) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

function badge(text) { return el("span", { class: "badge " + text }, text); }

/** Fills a <dl>; unchanged content is left alone so live regions announce only news. */
function facts(dl, pairs) {
  const sig = JSON.stringify(pairs.map(([k, v]) => [k, v instanceof Node ? v.outerHTML : String(v)]));
  if (dl.dataset.sig === sig) return;
  dl.dataset.sig = sig;
  dl.replaceChildren();
  for (const [k, v] of pairs) {
    dl.append(el("dt", null, k), el("dd", null, v));
  }
}

function when(iso) {
  if (!iso) return "–";
  const d = new Date(iso);
  return isNaN(d) ? iso : d.toLocaleString();
}

/** A datetime-local value as RFC 3339 UTC, or "" when empty. */
function rfc3339(local) {
  if (!local) return "";
  const d = new Date(local);
  return isNaN(d) ? local : d.toISOString();
}

function ms(v) { return v === null || v === undefined ? "–" : v + " ms"; }

// --- connecting --------------------------------------------------------------------------

async function connect() {
  say("status", "Connecting…");
  try {
    await api("GET", "/v1/endpoints", undefined, { limit: 1 });
  } catch (e) {
    say("status", "Cannot use this key: " + describe(e));
    $("main").hidden = true;
    return;
  }
  const { tenant } = credentials();
  say("status", "Connected" + (tenant ? " as tenant " + tenant : "") + ".");
  $("main").hidden = false;
  await Promise.all([loadEndpoints(true), loadEventTypes(), loadPipeline(), loadLog(true)]);
  stopPolling();
  state.timers.push(setInterval(pollLog, POLL_MS));
  state.timers.push(setInterval(loadPipeline, POLL_MS * 2));
  state.timers.push(setInterval(() => {
    if (document.hidden) return;
    for (const id of state.endpoints.keys()) listStats(id);
    if (!$("endpoint-detail").hidden) loadEndpointStats();
  }, POLL_MS * 6));
  state.timers.push(setInterval(() => { if (state.inspecting) inspect(state.inspecting, false); }, POLL_MS));
}

function stopPolling() {
  for (const t of state.timers) clearInterval(t);
  state.timers = [];
}

// --- pipeline ----------------------------------------------------------------------------

async function loadPipeline() {
  try {
    const s = await api("GET", "/v1/stats", undefined, { window: "1h" });
    for (const node of document.querySelectorAll("[data-stage]")) {
      const n = s[node.dataset.stage];
      if (node.textContent !== String(n)) node.textContent = n;
    }
    say("pipeline-error", "");
  } catch (e) {
    say("pipeline-error", "Pipeline: " + describe(e));
  }
}

// --- endpoints ---------------------------------------------------------------------------

async function loadEndpoints(fresh) {
  if (fresh) { state.endpoints.clear(); state.endpointCursor = null; }
  try {
    const page = await api("GET", "/v1/endpoints", undefined, { limit: 100, cursor: state.endpointCursor });
    for (const ep of page.data) state.endpoints.set(ep.id, ep);
    state.endpointCursor = page.next_cursor;
    $("more-endpoints").hidden = !page.next_cursor;
  } catch (e) {
    say("status", "Endpoints: " + describe(e));
  }
  renderEndpoints();
}

function renderEndpoints() {
  const rows = $("endpoint-rows");
  rows.replaceChildren();
  if (state.endpoints.size === 0) {
    rows.append(el("tr", null, el("td", { colspan: 6 }, "No endpoints yet.")));
  }
  for (const ep of state.endpoints.values()) {
    rows.append(el("tr", { "data-endpoint": ep.id },
      el("td", null, el("code", null, ep.url)),
      el("td", null, ep.events.join(", ")),
      el("td", null, ep.enabled ? "yes" : "no"),
      el("td", { "data-health": ep.id }, "…"),
      el("td", { "data-rate": ep.id }, "…"),
      el("td", null,
        el("button", { type: "button", onclick: () => openEndpoint(ep.id), "aria-label": "Open endpoint " + ep.url }, "Open"),
        " ",
        el("button", { type: "button", onclick: () => showLogFor(ep.id), "aria-label": "Deliveries of " + ep.url }, "Deliveries"))));
  }
  for (const ep of state.endpoints.values()) listStats(ep.id);
  const select = $("f-endpoint");
  const chosen = select.value;
  select.replaceChildren(el("option", { value: "" }, "All endpoints"));
  for (const ep of state.endpoints.values()) {
    select.append(el("option", { value: ep.id }, ep.url + " (" + ep.id + ")"));
  }
  select.value = chosen;
}

/** Health and delivery rate (last 24 h) in the endpoint list. */
async function listStats(id) {
  const health = document.querySelector('[data-health="' + CSS.escape(id) + '"]');
  const rate = document.querySelector('[data-rate="' + CSS.escape(id) + '"]');
  try {
    const s = await api("GET", "/v1/endpoints/" + encodeURIComponent(id) + "/stats", undefined, { window: "24h" });
    if (health) health.replaceChildren(badge(s.health));
    if (rate) rate.textContent = s.delivery_rate === null ? "–" : (s.delivery_rate * 100).toFixed(1) + " %";
  } catch (e) {
    if (health) health.textContent = describe(e);
  }
}

function endpointLabel(id) {
  const ep = state.endpoints.get(id);
  return ep ? ep.url : id;
}

async function openEndpoint(id) {
  state.current = id;
  $("endpoint-form").hidden = true;
  const panel = $("endpoint-detail");
  panel.hidden = false;
  $("ep-secret-value").hidden = true;
  say("endpoint-detail-msg", "");
  try {
    const ep = await api("GET", "/v1/endpoints/" + encodeURIComponent(id));
    state.endpoints.set(id, ep);
    renderEndpointFacts(ep);
  } catch (e) {
    say("endpoint-detail-msg", describe(e));
  }
  await loadEndpointStats();
  panel.focus();
}

function renderEndpointFacts(ep) {
  $("endpoint-detail-h").textContent = "Endpoint " + ep.url;
  $("ep-toggle").textContent = ep.enabled ? "Disable" : "Enable";
  const headers = Object.entries(ep.headers || {}).map(([k, v]) => k + ": " + v).join("; ");
  facts($("endpoint-facts"), [
    ["Id", el("code", null, ep.id)],
    ["URL", el("code", null, ep.url)],
    ["Enabled", ep.enabled ? "yes" : "no"],
    ["Patterns", ep.events.join(", ")],
    ["Filter", ep.filter ? JSON.stringify(ep.filter) : "none"],
    ["Custom headers", headers || "none"],
    ["Rate limit", ep.rate_limit_per_sec ? ep.rate_limit_per_sec + " per second" : "none"],
    ["Max in flight", ep.max_in_flight ? String(ep.max_in_flight) : "default"],
    ["Signature", ep.signature ? ep.signature.scheme : "standard-hmac"],
    ["Public key", ep.public_key ? el("code", null, ep.public_key) : "– (shared secret)"],
    ["Description", ep.description || "–"],
  ]);
}

async function loadEndpointStats() {
  if (!state.current) return;
  const dl = $("endpoint-stats");
  try {
    const s = await api("GET", "/v1/endpoints/" + encodeURIComponent(state.current) + "/stats", undefined,
      { window: $("stats-window").value });
    const rate = s.delivery_rate === null ? "–" : (s.delivery_rate * 100).toFixed(1) + " %";
    const lat = s.latency_ms || {};
    const c = s.concurrency || {};
    const limit = typeof c.limit === "number" ? String(c.limit) : "none held";
    facts(dl, [
      ["Health", badge(s.health)],
      ["Delivery rate", rate],
      ["Delivered / failed / pending", s.delivered + " / " + s.failed + " / " + s.pending],
      ["Latency p50 / p95 / p99", [lat.p50, lat.p95, lat.p99].map(ms).join(" / ")],
      ["In flight / limit", (c.in_flight || 0) + " / " + limit],
    ]);
  } catch (e) {
    facts(dl, [["Stats", describe(e)]]);
  }
}

async function endpointAction(label, fn) {
  say("endpoint-detail-msg", label + "…");
  try {
    say("endpoint-detail-msg", await fn());
  } catch (e) {
    say("endpoint-detail-msg", label + " failed: " + describe(e));
  }
}

function epPath(suffix) { return "/v1/endpoints/" + encodeURIComponent(state.current) + (suffix || ""); }

async function toggleEndpoint() {
  const ep = state.endpoints.get(state.current);
  if (!ep) return;
  await endpointAction(ep.enabled ? "Disabling" : "Enabling", async () => {
    const updated = await api("PATCH", epPath(), { enabled: !ep.enabled });
    state.endpoints.set(updated.id, updated);
    renderEndpointFacts(updated);
    renderEndpoints();
    await loadEndpointStats();
    return updated.enabled ? "Enabled." : "Disabled: it receives nothing until enabled again.";
  });
}

function showSecret(secret) {
  const p = $("ep-secret-value");
  p.querySelector("code").textContent = secret;
  p.hidden = false;
}

async function revealSecret() {
  await endpointAction("Reading the secret", async () => {
    const r = await api("GET", epPath("/secret"));
    showSecret(r.secret || r.public_key);
    return r.secret ? "Secret shown below." : "Public key shown below; the private key is never shown.";
  });
}

async function rotateSecret() {
  if (!window.confirm("Rotate this endpoint's secret? The old one keeps signing for 24 hours.")) return;
  await endpointAction("Rotating", async () => {
    const r = await api("POST", epPath("/rotate-secret"), {});
    showSecret(r.secret || r.public_key);
    return "New secret shown below; the old one keeps signing for the grace period.";
  });
}

async function sendPing() {
  await endpointAction("Sending a test ping", async () => {
    const r = await api("POST", epPath("/test"), {});
    return "Test ping sent" + (r && r.event_id ? " (event " + r.event_id + ")" : "") + ".";
  });
}

async function recover(ev) {
  ev.preventDefault();
  const since = rfc3339($("recover-since").value);
  await endpointAction("Recovering", async () => {
    const r = await api("POST", epPath("/recover"), { since });
    return r.requeued + " failed deliveries requeued.";
  });
}

// --- the endpoint form -------------------------------------------------------------------

function openForm(ep) {
  state.editing = ep ? ep.id : null;
  $("endpoint-form-h").textContent = ep ? "Edit endpoint" : "New endpoint";
  $("ep-url").value = ep ? ep.url : "";
  $("ep-events").value = ep ? ep.events.join("\n") : "";
  $("ep-filter").value = ep && ep.filter ? JSON.stringify(ep.filter, null, 2) : "";
  $("ep-headers").value = ep ? Object.entries(ep.headers || {}).map(([k, v]) => k + ": " + v).join("\n") : "";
  $("ep-rate").value = ep && ep.rate_limit_per_sec ? ep.rate_limit_per_sec : "";
  $("ep-max-in-flight").value = ep && ep.max_in_flight ? ep.max_in_flight : "";
  $("ep-scheme").value = ep && ep.signature ? ep.signature.scheme : "standard-hmac";
  $("ep-description").value = ep ? ep.description : "";
  $("ep-enabled").checked = ep ? ep.enabled : true;
  say("endpoint-form-error", "");
  $("endpoint-detail").hidden = true;
  $("endpoint-form").hidden = false;
  $("ep-url").focus();
}

/** The form as the API's endpoint body; throws a readable Error on a bad field. */
function formBody() {
  const body = {
    url: $("ep-url").value.trim(),
    events: $("ep-events").value.split(/[\n,]/).map((s) => s.trim()).filter(Boolean),
    description: $("ep-description").value,
    enabled: $("ep-enabled").checked,
  };
  const filter = $("ep-filter").value.trim();
  if (filter) {
    try { body.filter = JSON.parse(filter); } catch (e) { throw new Error("Filter is not valid JSON: " + e.message); }
  } else {
    body.filter = null;
  }
  const headers = {};
  for (const line of $("ep-headers").value.split("\n")) {
    if (!line.trim()) continue;
    const i = line.indexOf(":");
    if (i < 1) throw new Error("Custom header \"" + line.trim() + "\" is not \"Name: value\"");
    headers[line.slice(0, i).trim()] = line.slice(i + 1).trim();
  }
  body.headers = headers;
  const rate = $("ep-rate").value.trim();
  body.rate_limit_per_sec = rate ? Number(rate) : null;
  const maxInFlight = $("ep-max-in-flight").value.trim();
  body.max_in_flight = maxInFlight ? Number(maxInFlight) : null;
  body.signature = { scheme: $("ep-scheme").value };
  return body;
}

async function saveEndpoint(ev) {
  ev.preventDefault();
  say("endpoint-form-error", "");
  let body;
  try { body = formBody(); } catch (e) { say("endpoint-form-error", e.message); return; }
  try {
    let ep;
    if (state.editing) {
      ep = await api("PATCH", "/v1/endpoints/" + encodeURIComponent(state.editing), body);
    } else {
      if (body.filter === null) delete body.filter;
      if (body.rate_limit_per_sec === null) delete body.rate_limit_per_sec;
      if (body.max_in_flight === null) delete body.max_in_flight;
      ep = await api("POST", "/v1/endpoints", body);
    }
    state.endpoints.set(ep.id, ep);
    renderEndpoints();
    $("endpoint-form").hidden = true;
    await openEndpoint(ep.id);
    if (ep.secret || (!state.editing && ep.public_key)) showSecret(ep.secret || ep.public_key);
    say("endpoint-detail-msg", state.editing ? "Saved." : "Created. Its signing secret is shown below.");
  } catch (e) {
    say("endpoint-form-error", describe(e));
  }
}

async function loadEventTypes() {
  const select = $("ep-types");
  try {
    const r = await api("GET", "/v1/event-types", undefined, { limit: 1000 });
    const list = Array.isArray(r) ? r : (r && r.data) || [];
    select.replaceChildren(el("option", { value: "" }, "(choose)"));
    for (const t of list) {
      const name = typeof t === "string" ? t : t.name || t.event_type || t.event;
      if (name) select.append(el("option", { value: name }, name + (t.count !== undefined ? " (" + t.count + " seen)" : "")));
    }
    $("ep-types-field").hidden = list.length === 0;
    say("ep-types-note", list.length === 0 ? "No event types declared or seen yet." : "");
  } catch (e) {
    $("ep-types-field").hidden = true;
    say("ep-types-note", "Known event types are not available here: " + describe(e) + ". Type patterns instead.");
  }
}

function addPickedType() {
  const v = $("ep-types").value;
  if (!v) return;
  const area = $("ep-events");
  const lines = area.value.split("\n").map((s) => s.trim()).filter(Boolean);
  if (!lines.includes(v)) lines.push(v);
  area.value = lines.join("\n");
}

// --- the delivery log --------------------------------------------------------------------

function readFilters() {
  return {
    endpoint_id: $("f-endpoint").value,
    event_type: $("f-type").value.trim(),
    status: $("f-status").value,
    since: rfc3339($("f-since").value),
    until: rfc3339($("f-until").value),
  };
}

function logRow(d, fresh) {
  return el("tr", { "data-delivery": d.id, class: fresh ? "fresh" : null },
    el("td", null, when(d.created_at)),
    el("td", null, d.event_type),
    el("td", null, el("code", null, d.event_id)),
    el("td", null, endpointLabel(d.endpoint_id)),
    el("td", null, badge(d.status)),
    el("td", null, d.attempt_count),
    el("td", null, d.last_response_code === null ? "–" : d.last_response_code),
    el("td", null, ms(d.last_duration_ms)),
    el("td", null, el("button", { type: "button", onclick: () => inspect(d.id, true), "aria-label": "Inspect delivery " + d.id }, "Inspect")));
}

async function loadLog(fresh) {
  const rows = $("log-rows");
  if (fresh) {
    state.logGeneration += 1;
    state.logFilters = readFilters();
    state.logCursor = null;
    state.logNewest = null;
    rows.replaceChildren();
  }
  const generation = state.logGeneration;
  try {
    const page = await api("GET", "/v1/deliveries", undefined, { ...state.logFilters, limit: PAGE_SIZE, cursor: state.logCursor });
    if (generation !== state.logGeneration) return;
    for (const d of page.data) rows.append(logRow(d, false));
    if (fresh && page.data.length) state.logNewest = page.data[0].id;
    state.logCursor = page.next_cursor;
    $("older").hidden = !page.next_cursor;
    say("log-error", "");
    if (fresh && !page.data.length) say("log-live", "No deliveries match yet; new ones appear here as they happen.");
  } catch (e) {
    say("log-error", "Delivery log: " + describe(e));
  }
}

/** Adds deliveries newer than the top row and refreshes rows whose status moved on. */
async function pollLog() {
  if (document.hidden) return;
  const generation = state.logGeneration;
  try {
    const page = await api("GET", "/v1/deliveries", undefined, { ...state.logFilters, limit: PAGE_SIZE });
    if (generation !== state.logGeneration) return;
    const rows = $("log-rows");
    const hadRows = state.logNewest !== null;
    const added = [];
    for (const d of page.data) {
      const existing = rows.querySelector('tr[data-delivery="' + CSS.escape(d.id) + '"]');
      if (existing) {
        existing.replaceWith(logRow(d, false));
      } else if (!state.logNewest || d.id > state.logNewest) {
        added.push(d);
      }
    }
    for (const d of added.reverse()) rows.prepend(logRow(d, true));
    if (page.data.length && (!state.logNewest || page.data[0].id > state.logNewest)) state.logNewest = page.data[0].id;
    if (added.length) say("log-live", added.length + (added.length === 1 ? " new delivery" : " new deliveries") + " at " + new Date().toLocaleTimeString() + ".");
    // A whole page of new rows may hide more between them and the rows already shown.
    if (hadRows && added.length === page.data.length && page.next_cursor) {
      say("log-live", "More new deliveries arrived than one page holds: press “Apply filters” to see them all.");
    } else if (!hadRows && added.length && page.next_cursor) {
      // The log was empty: these rows are its first page, and older ones follow them.
      state.logCursor = page.next_cursor;
      $("older").hidden = false;
    }
    say("log-error", "");
  } catch (e) {
    say("log-error", "Delivery log: " + describe(e));
  }
}

function showLogFor(id) {
  $("f-endpoint").value = id;
  loadLog(true);
  $("deliveries").scrollIntoView();
  $("f-endpoint").focus();
}

// --- the inspector -----------------------------------------------------------------------

async function inspect(id, focus) {
  state.inspecting = id;
  $("inspector-empty").hidden = true;
  $("inspector-body").hidden = false;
  if (focus) say("inspector-msg", "");
  try {
    const d = await api("GET", "/v1/deliveries/" + encodeURIComponent(id));
    renderDelivery(d);
  } catch (e) {
    say("inspector-msg", describe(e));
  }
  if (focus) {
    $("inspector").scrollIntoView();
    $("inspector").focus();
  }
}

function renderDelivery(d) {
  $("inspector-h").textContent = "Delivery " + d.id;
  facts($("delivery-facts"), [
    ["Status", badge(d.status)],
    ["Event", d.event_type + " · " + d.event_id],
    ["Endpoint", endpointLabel(d.endpoint_id) + " (" + d.endpoint_id + ")"],
    ["Attempts", String(d.attempt_count)],
    ["Next attempt", d.next_attempt_at ? when(d.next_attempt_at) : "–"],
    ["Created", when(d.created_at)],
  ]);
  const pretty = JSON.stringify(d.payload, null, 2);
  if ($("payload").textContent !== pretty) $("payload").textContent = pretty;
  const box = $("attempts");
  const shown = box.querySelectorAll(".attempt").length;
  if (shown === d.attempts.length && box.dataset.delivery === d.id) return;
  box.dataset.delivery = d.id;
  box.replaceChildren();
  if (!d.attempts.length) box.append(el("p", { class: "hint" }, "No attempt yet."));
  for (const a of d.attempts) box.append(attemptView(a));
}

function attemptView(a) {
  const ok = a.error === null && a.response_code !== null && a.response_code < 300;
  const headers = el("table", { class: "grid" },
    el("caption", { class: "sr-only" }, "Request headers of attempt " + a.attempt),
    el("thead", null, el("tr", null, el("th", { scope: "col" }, "Header"), el("th", { scope: "col" }, "Value"))));
  const body = el("tbody");
  for (const [k, v] of Object.entries(a.request_headers || {})) {
    body.append(el("tr", null, el("th", { scope: "row" }, k), el("td", null, el("code", null, String(v)))));
  }
  headers.append(body);
  return el("article", { class: "attempt", "data-attempt": a.attempt },
    el("h4", null, "Attempt " + a.attempt + " ", badge(ok ? "delivered" : "failed"), a.trigger === "manual" ? " (manual retry)" : ""),
    el("dl", { class: "facts" },
      el("dt", null, "Started"), el("dd", null, when(a.started_at)),
      el("dt", null, "Response code"), el("dd", null, a.response_code === null ? "none" : String(a.response_code)),
      el("dt", null, "Duration"), el("dd", null, ms(a.duration_ms)),
      el("dt", null, "Error"), el("dd", null, a.error || "none")),
    el("details", null, el("summary", null, "Request headers sent (signature included)"), headers),
    el("h5", null, "Response body"),
    el("pre", { class: "code", tabindex: "0" }, a.response_body || "(empty)"));
}

async function retry() {
  const id = state.inspecting;
  if (!id) return;
  say("inspector-msg", "Asking for a retry…");
  try {
    await api("POST", "/v1/deliveries/" + encodeURIComponent(id) + "/retry", {});
    say("inspector-msg", "Retry queued; the new attempt appears below when it is made.");
  } catch (e) {
    say("inspector-msg", "Retry failed: " + describe(e));
  }
}

async function copyPayload() {
  const text = $("payload").textContent;
  try {
    await navigator.clipboard.writeText(text);
    say("inspector-msg", "Payload copied.");
  } catch (_) {
    const range = document.createRange();
    range.selectNodeContents($("payload"));
    const sel = window.getSelection();
    sel.removeAllRanges();
    sel.addRange(range);
    say("inspector-msg", "Copying is not allowed here; the payload is selected: press Ctrl+C.");
  }
}

// --- wiring ------------------------------------------------------------------------------

function wire() {
  $("login").addEventListener("submit", (ev) => {
    ev.preventDefault();
    store.setItem("hookrelay.token", $("token").value.trim());
    store.setItem("hookrelay.tenant", $("tenant").value.trim());
    connect();
  });
  $("forget").addEventListener("click", () => {
    store.removeItem("hookrelay.token");
    store.removeItem("hookrelay.tenant");
    $("token").value = "";
    $("tenant").value = "";
    stopPolling();
    $("main").hidden = true;
    say("status", "Key forgotten.");
  });
  $("new-endpoint").addEventListener("click", () => openForm(null));
  $("more-endpoints").addEventListener("click", () => loadEndpoints(false));
  $("endpoint-form").addEventListener("submit", saveEndpoint);
  $("ep-cancel").addEventListener("click", () => { $("endpoint-form").hidden = true; });
  $("ep-add-type").addEventListener("click", addPickedType);
  $("stats-window").addEventListener("change", loadEndpointStats);
  $("ep-edit").addEventListener("click", () => openForm(state.endpoints.get(state.current)));
  $("ep-toggle").addEventListener("click", toggleEndpoint);
  $("ep-secret").addEventListener("click", revealSecret);
  $("ep-rotate").addEventListener("click", rotateSecret);
  $("ep-ping").addEventListener("click", sendPing);
  $("ep-log").addEventListener("click", () => showLogFor(state.current));
  $("recover-form").addEventListener("submit", recover);
  $("log-filters").addEventListener("submit", (ev) => { ev.preventDefault(); loadLog(true); });
  $("f-clear").addEventListener("click", () => { $("log-filters").reset(); loadLog(true); });
  $("older").addEventListener("click", () => loadLog(false));
  $("retry").addEventListener("click", retry);
  $("copy-payload").addEventListener("click", copyPayload);

  const { token, tenant } = credentials();
  $("tenant").value = tenant;
  if (token) {
    $("token").value = token;
    connect();
  }
}

document.addEventListener("DOMContentLoaded", wire);
