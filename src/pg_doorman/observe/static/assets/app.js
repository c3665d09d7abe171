// The web console: polls the JSON API, keeps a history of samples in this tab, draws tiles, charts and tables.
// Everything from the API is put into the page as text (dom.js), never as HTML.

import { Api, ApiError, Unauthorized } from "./api.js";
import { LineChart, sparkline } from "./chart.js";
import { h, replaceChildren, setText } from "./dom.js";
import * as fmt from "./format.js";
import { History, poolKey } from "./series.js";

const POLL_MS = 2000;
const HISTORY_SAMPLES = 300; // 10 minutes at POLL_MS
const SPARK_SAMPLES = 60; // the last 2 minutes in sparklines
const FEED_EVENTS = 8;
const CLIENTS_LIMIT = 500;
const LOGS_LIMIT = 500;
const CONFIG_REFRESH_MS = 10000;

const api = new Api();
const history = new History(HISTORY_SAMPLES);
const $ = (id) => document.getElementById(id);

const state = {
  role: "anonymous",
  uiAnonymous: false,
  running: false,
  busy: false,
  again: false,
  timer: null,
  tab: "pools",
  scope: "",
  filter: "",
  overview: null,
  pools: [],
  events: [],
  configFetchedAt: 0,
  poolRows: new Map(),
  charts: [],
};

// ------------------------------------------------------------------ auth

async function authenticate() {
  let auth;
  try {
    auth = await api.get("/api/auth/config");
  } catch (error) {
    setStatus("error", error.message);
    state.timer = setTimeout(authenticate, POLL_MS * 2);
    return;
  }
  state.uiAnonymous = Boolean(auth.ui_anonymous);
  if (auth.role === "admin") {
    setRole("admin");
    start();
  } else if (auth.role === "rejected") {
    api.logout();
    setRole("anonymous");
    showLogin("The saved credentials were refused; sign in again.");
  } else if (state.uiAnonymous) {
    setRole("anonymous");
    start();
  } else {
    setRole("anonymous");
    showLogin("");
  }
}

function setRole(role) {
  state.role = role;
  document.body.dataset.role = role;
  setText("role", role === "admin" ? "admin" : "read-only");
  $("admin-actions").hidden = role !== "admin";
  $("logout-button").hidden = role !== "admin";
  $("login-button").hidden = role === "admin" || !state.uiAnonymous;
  if (role !== "admin" && state.tab === "logs") selectTab("pools");
}

function showLogin(message) {
  const dialog = $("login-dialog");
  setText("login-error", message || "");
  $("login-cancel").hidden = !state.uiAnonymous;
  if (!dialog.open) dialog.showModal();
  $("login-password").focus();
}

async function submitLogin(event) {
  event.preventDefault();
  const user = $("login-user").value;
  const password = $("login-password").value;
  const previous = api.authorization;
  api.login(user, password);
  let auth;
  try {
    auth = await api.get("/api/auth/config");
  } catch (error) {
    api.authorization = previous;
    setText("login-error", error.message);
    return;
  }
  if (auth.role !== "admin") {
    api.authorization = previous;
    setText("login-error", "Wrong user name or password.");
    return;
  }
  api.remember();
  $("login-password").value = "";
  $("login-dialog").close();
  state.uiAnonymous = Boolean(auth.ui_anonymous);
  setRole("admin");
  start();
}

function logout() {
  api.logout();
  stop();
  setRole("anonymous");
  if (state.uiAnonymous) start();
  else showLogin("");
}

// ------------------------------------------------------------------ polling

function start() {
  if (state.running) return;
  state.running = true;
  api.get("/api/version").then(
    (v) => setText("version", `v${v.version} · ${v.implementation}`),
    () => {}, // the next poll reports the problem
  );
  tick();
}

function stop() {
  state.running = false;
  clearTimeout(state.timer);
}

/** One poll; a tick asked for while one runs (a button, a tab switch) runs right after it, never beside it. */
async function tick() {
  clearTimeout(state.timer);
  if (!state.running) return;
  if (state.busy) {
    state.again = true;
    return;
  }
  state.busy = true;
  try {
    await poll();
  } finally {
    state.busy = false;
  }
  if (!state.running) return;
  const delay = state.again ? 0 : POLL_MS;
  state.again = false;
  state.timer = setTimeout(tick, delay);
}

async function poll() {
  try {
    const [overview, pools, events] = await Promise.all([
      api.get("/api/overview"),
      api.get("/api/pools"),
      api.get("/api/events?limit=200"),
    ]);
    state.overview = overview;
    state.pools = pools;
    state.events = events;
    history.add(pools, Date.now());
    renderHeader();
    renderTiles();
    renderScopeOptions();
    renderCharts();
    renderPools();
    renderFeed();
    await refreshTab();
    setStatus("live", `live · ${fmt.clock(Date.now() / 1000)}`);
  } catch (error) {
    if (error instanceof Unauthorized) {
      const hadCredentials = Boolean(api.authorization);
      stop();
      api.logout();
      setRole("anonymous");
      showLogin(hadCredentials ? error.message : "Sign in to see the pools.");
      return;
    }
    setStatus("error", error.message);
  }
}

async function refreshTab() {
  switch (state.tab) {
    case "clients":
      return renderClients(await api.get(`/api/clients?limit=${CLIENTS_LIMIT}`));
    case "servers":
      return renderServers(await api.get("/api/servers"));
    case "events":
      return renderEvents();
    case "logs":
      if (state.role !== "admin") return undefined;
      return renderLogs(await api.get(`/api/logs?limit=${LOGS_LIMIT}&level=${encodeURIComponent($("log-level").value)}`));
    case "config":
      if (Date.now() - state.configFetchedAt < CONFIG_REFRESH_MS) return undefined;
      state.configFetchedAt = Date.now();
      return renderConfig(await api.get("/api/config"));
    case "process": {
      const [process, connections, level] = await Promise.all([
        api.get("/api/process"),
        api.get("/api/connections"),
        api.get("/api/log_level"),
      ]);
      return renderProcess(process, connections, level);
    }
    default:
      return undefined;
  }
}

function setStatus(kind, text) {
  $("status").dataset.state = kind;
  setText("status-text", text);
}

// ------------------------------------------------------------------ admin actions

async function adminAction(path, label) {
  try {
    const result = await api.post(path);
    const detail = result.message || (result.pools ? result.pools.join(", ") : "");
    toast(`${label}: done${detail ? ` (${detail})` : ""}`, "ok");
    if (result.restart_required && result.restart_required.length) {
      toast(`Needs a restart to take effect: ${result.restart_required.join(", ")}`, "warn");
    }
  } catch (error) {
    if (error instanceof Unauthorized) {
      showLogin(error.message);
      return;
    }
    toast(`${label} failed: ${error.message}`, "error");
  }
  state.configFetchedAt = 0;
  tick();
}

function toast(text, kind) {
  const node = h("div", { class: `toast ${kind}`, role: kind === "error" ? "alert" : "status" }, text);
  $("toasts").appendChild(node);
  setTimeout(() => node.remove(), kind === "error" ? 12000 : 6000);
}

// ------------------------------------------------------------------ header and tiles

function renderHeader() {
  const o = state.overview;
  const facts = [
    ["pid", String(o.pid)],
    ["up", fmt.seconds(o.uptime_seconds)],
    ["memory", fmt.bytes(o.memory_bytes)],
  ];
  if (o.paused_pools > 0) facts.push(["paused", `${o.paused_pools} pool${o.paused_pools > 1 ? "s" : ""}`]);
  replaceChildren($("facts"), facts.map(([k, v]) => h("span", { class: "fact" }, h("span", { class: "muted" }, k), " ", v)));
}

const TILES = [
  { id: "clients", label: "Clients", measure: "clients_active", title: "Connected clients; the line: clients holding a server" },
  { id: "waiting", label: "Waiting", measure: "clients_waiting", title: "Clients waiting for a server connection" },
  { id: "servers", label: "Servers", measure: "servers_active", title: "Server connections; the line: active ones" },
  { id: "tps", label: "Transactions", measure: "tps", title: "Transactions per second, from the counters between two polls" },
  { id: "qps", label: "Queries", measure: "qps", title: "Queries per second, from the counters between two polls" },
  { id: "latency", label: "Query p99", measure: "q99", title: "Query latency over the last minute, of the slowest pool" },
  { id: "errors", label: "Errors", measure: "eps", title: "Errors from PostgreSQL sent to clients, per second" },
];

function tileValues(o, last) {
  const t = last ? last.total : {};
  return {
    clients: [fmt.compact(o.clients.total), `${o.clients.active} active · ${o.clients.idle} idle`],
    waiting: [fmt.compact(o.clients.waiting), `oldest ${fmt.micros(o.maxwait_us)}`],
    servers: [
      `${o.servers.active + o.servers.idle + o.servers.other}`,
      `${o.servers.active} active · ${o.servers.idle} idle of ${o.servers.pool_size}`,
    ],
    tps: [fmt.rate(t.tps), `15 s avg ${fmt.rate(o.rates.transactions)}`],
    qps: [fmt.rate(t.qps), `15 s avg ${fmt.rate(o.rates.queries)}`],
    latency: [fmt.micros(t.q99), `p50 ${fmt.micros(t.q50)}, last minute`],
    errors: [fmt.rate(t.eps), `${fmt.rate(o.rates.errors)} over 15 s`],
  };
}

function renderTiles() {
  const container = $("tiles");
  if (!container.firstChild) {
    for (const tile of TILES) {
      container.appendChild(
        h("div", { class: "tile", id: `tile-${tile.id}`, title: tile.title },
          h("div", { class: "tile-label" }, tile.label),
          h("div", { class: "tile-value" }),
          h("div", { class: "tile-sub muted" }),
          h("div", { class: "tile-spark" })),
      );
    }
  }
  const values = tileValues(state.overview, history.last());
  const samples = history.samples().slice(-SPARK_SAMPLES);
  for (const tile of TILES) {
    const node = $(`tile-${tile.id}`);
    const [value, sub] = values[tile.id];
    setText(node.querySelector(".tile-value"), value);
    setText(node.querySelector(".tile-sub"), sub);
    replaceChildren(node.querySelector(".tile-spark"), sparkline(samples.map((x) => x.total[tile.measure] ?? null), { width: 120, height: 24 }));
    node.classList.toggle("alert", (tile.id === "waiting" && state.overview.clients.waiting > 0) || (tile.id === "errors" && (history.last()?.total.eps ?? 0) > 0));
  }
}

// ------------------------------------------------------------------ charts

function setupCharts() {
  const container = $("charts");
  state.charts = [
    [new LineChart(container, {
      title: "Throughput",
      format: (v) => (v === null ? "–" : fmt.compact(v)),
      series: [{ key: "tps", label: "TPS" }, { key: "qps", label: "QPS" }],
    }), (sample, key) => pickScoped(sample, key)],
    [new LineChart(container, {
      title: "Latency (last minute, percentiles)",
      format: (v) => (v === null ? "–" : fmt.micros(v)),
      series: [{ key: "q50", label: "query p50" }, { key: "q99", label: "query p99" }, { key: "x99", label: "xact p99" }],
    }), (sample, key) => pickScoped(sample, key)],
    [new LineChart(container, {
      title: "Connections",
      step: true,
      format: (v) => (v === null ? "–" : fmt.compact(v)),
      series: [
        { key: "clients_active", label: "clients active" },
        { key: "clients_waiting", label: "waiting" },
        { key: "servers_active", label: "servers active" },
        { key: "servers_idle", label: "servers idle" },
      ],
    }), (sample, key) => pickScoped(sample, key)],
  ];
}

function pickScoped(sample, key) {
  const point = state.scope ? sample.pools.get(state.scope) : sample.total;
  if (!point) return null;
  const value = point[key];
  return value === undefined ? null : value;
}

function renderCharts() {
  const samples = history.samples();
  for (const [chart, pick] of state.charts) chart.update(samples, pick);
}

function renderScopeOptions() {
  const select = $("scope");
  const keys = state.pools.map(poolKey);
  const have = [...select.options].slice(1).map((o) => o.value);
  if (have.join("\n") === keys.join("\n")) return;
  replaceChildren(select, h("option", { value: "" }, "all pools"), keys.map((k) => h("option", { value: k }, k)));
  select.value = keys.includes(state.scope) ? state.scope : "";
  state.scope = select.value;
}

function setScope(key) {
  state.scope = key;
  $("scope").value = key;
  renderCharts();
  for (const [k, row] of state.poolRows) row.tr.classList.toggle("selected", k === key);
}

// ------------------------------------------------------------------ pools

const POOL_CELLS = ["name", "mode", "clients", "servers", "tps", "qps", "spark", "q50", "q99", "x99", "maxwait", "errors"];

function poolRow(key) {
  const cells = {};
  const tr = h("tr", { dataset: { pool: key } });
  for (const name of POOL_CELLS) {
    const numeric = !["name", "mode", "servers", "spark"].includes(name);
    cells[name] = h("td", { class: numeric ? `num c-${name}` : `c-${name}` });
    tr.appendChild(cells[name]);
  }
  const pauseButton = h("button", { type: "button", class: "small", "data-action": "pause" }, "Pause");
  const reconnectButton = h("button", { type: "button", class: "small ghost", "data-action": "reconnect", title: "Close the pool's server connections as they become idle" }, "Reconnect");
  pauseButton.addEventListener("click", () => {
    const action = pauseButton.dataset.action;
    adminAction(`/api/admin/${action}?pool=${encodeURIComponent(poolRef(key))}`, `${action} ${key}`);
  });
  reconnectButton.addEventListener("click", () =>
    adminAction(`/api/admin/reconnect?pool=${encodeURIComponent(poolRef(key))}`, `reconnect ${key}`));
  tr.appendChild(h("td", { class: "actions-col", "data-admin": true }, pauseButton, reconnectButton));
  const nameLink = h("button", { type: "button", class: "link pool-name", title: "Chart this pool" });
  nameLink.addEventListener("click", () => setScope(state.scope === key ? "" : key));
  cells.name.appendChild(nameLink);
  return { tr, cells, nameLink, pauseButton };
}

/** "user@database" for ?pool=, from the pool's own fields. */
function poolRef(key) {
  const pool = state.pools.find((p) => poolKey(p) === key);
  return pool ? `${pool.user}@${pool.database}` : key;
}

function serversBar(pool) {
  const size = Math.max(pool.pool_size, 1);
  const other = pool.servers_other + pool.servers_opening;
  const segment = (cls, n) => {
    const node = h("span", { class: `seg ${cls}` });
    node.style.width = `${Math.min((n / size) * 100, 100)}%`;
    return node;
  };
  return h("div", { class: "servers-cell" },
    h("div", { class: "bar", title: `${pool.servers_active} active, ${pool.servers_idle} idle, ${other} other of ${pool.pool_size}` },
      segment("active", pool.servers_active), segment("idle", pool.servers_idle), segment("other", other)),
    h("span", { class: "bar-text" }, `${pool.servers_active}/${pool.servers_idle}/${other} of ${pool.pool_size}`));
}

function renderPools() {
  const tbody = $("pools-table").tBodies[0];
  const last = history.last();
  const keys = new Set();
  const spark = history.samples().slice(-SPARK_SAMPLES);
  for (const pool of state.pools) {
    const key = poolKey(pool);
    keys.add(key);
    let row = state.poolRows.get(key);
    if (!row) {
      row = poolRow(key);
      state.poolRows.set(key, row);
    }
    tbody.appendChild(row.tr); // keeps API order; moving an existing node keeps its listeners
    const point = last.pools.get(key) || {};
    const c = row.cells;
    setText(row.nameLink, key);
    replaceChildren(c.mode, pool.pool_mode,
      pool.paused ? h("span", { class: "badge warn" }, "paused") : null,
      pool.retired ? h("span", { class: "badge" }, "retired") : null);
    setText(c.clients, `${pool.clients_active}/${pool.clients_idle}/${pool.clients_waiting}`);
    c.clients.classList.toggle("hot", pool.clients_waiting > 0);
    replaceChildren(c.servers, serversBar(pool));
    setText(c.tps, fmt.compact(point.tps));
    setText(c.qps, fmt.compact(point.qps));
    replaceChildren(c.spark, sparkline(spark.map((x) => x.pools.get(key)?.tps ?? null), { width: 110, height: 20 }));
    setText(c.q50, fmt.micros(point.q50));
    setText(c.q99, fmt.micros(point.q99));
    setText(c.x99, fmt.micros(point.x99));
    setText(c.maxwait, fmt.micros(pool.maxwait_us));
    setText(c.errors, fmt.compact(pool.errors));
    c.errors.classList.toggle("hot", (point.eps ?? 0) > 0);
    row.pauseButton.dataset.action = pool.paused ? "resume" : "pause";
    setText(row.pauseButton, pool.paused ? "Resume" : "Pause");
    row.tr.classList.toggle("selected", key === state.scope);
    row.tr.classList.toggle("paused", Boolean(pool.paused));
  }
  for (const [key, row] of state.poolRows) {
    if (!keys.has(key)) {
      row.tr.remove();
      state.poolRows.delete(key);
    }
  }
  $("panel-pools").querySelector(".empty").hidden = state.pools.length > 0;
  applyFilter();
}

// ------------------------------------------------------------------ other tabs

function cell(value, numeric = false, title = null) {
  return h("td", { class: numeric ? "num" : null, title }, value);
}

function renderClients(data) {
  const rows = data.clients.map((c) =>
    h("tr", { class: c.state === "waiting" ? "waiting" : null },
      cell(c.pid, true), cell(c.user), cell(c.database),
      cell(c.application_name, false, c.application_name),
      cell(c.peer), h("td", null, h("span", { class: `state st-${safeClass(c.state)}` }, c.state)),
      cell(fmt.seconds(c.age_seconds), true), cell(c.wait_seconds ? fmt.seconds(c.wait_seconds) : "", true),
      cell(fmt.compact(c.xact_count), true), cell(fmt.compact(c.query_count), true),
      cell(fmt.compact(c.error_count), true), cell(c.tls ? "yes" : "")));
  replaceChildren($("clients-table").tBodies[0], rows);
  setText("clients-note", data.total > data.clients.length
    ? `Showing ${data.clients.length} of ${data.total} clients.` : `${data.total} client${data.total === 1 ? "" : "s"}.`);
  applyFilter();
}

function renderServers(servers) {
  const rows = servers.map((v) =>
    h("tr", null,
      cell(v.pool), cell(v.pid, true), h("td", null, h("span", { class: `state st-${safeClass(v.state)}` }, v.state)),
      cell(v.transaction_status), cell(v.client_pid || "", true), cell(fmt.seconds(v.age_seconds), true),
      cell(v.idle_seconds ? fmt.seconds(v.idle_seconds) : "", true), cell(v.prepared_statements, true),
      cell(fmt.compact(v.xact_count), true), cell(fmt.compact(v.query_count), true),
      cell(v.application_name, false, v.application_name)));
  replaceChildren($("servers-table").tBodies[0], rows);
  applyFilter();
}

/** A class-name-safe form of an API word (kinds, states): letters, digits, dashes only. */
function safeClass(word) {
  return String(word).toLowerCase().replace(/[^a-z0-9-]/g, "-");
}

function eventItem(event) {
  return h("li", { class: `event kind-${safeClass(event.kind)}` },
    h("time", { datetime: new Date(event.timestamp * 1000).toISOString() }, fmt.clock(event.timestamp)),
    h("span", { class: "kind" }, event.kind),
    h("span", { class: "message", title: event.message }, event.message));
}

function renderFeed() {
  const newest = state.events.slice(-FEED_EVENTS).reverse();
  const feed = $("event-feed");
  const signature = newest.map((e) => e.seq).join(",");
  if (feed.dataset.signature === signature) return;
  feed.dataset.signature = signature;
  if (newest.length === 0) replaceChildren(feed, h("li", { class: "muted" }, "Nothing yet: reloads, pauses and refused configs show here."));
  else replaceChildren(feed, newest.map(eventItem));
}

function renderEvents() {
  const list = $("events-list");
  const all = state.events.slice().reverse();
  replaceChildren(list, all.length ? all.map(eventItem) : h("li", { class: "muted" }, "No events recorded in this process yet."));
  applyFilter();
}

function renderLogs(data) {
  const list = $("logs-list");
  if (!data.enabled) {
    replaceChildren(list, h("p", { class: "muted" }, "The log tap is off (web.log_tap_max_entries: 0)."));
    return;
  }
  replaceChildren(list, data.lines.map((line) =>
    h("div", { class: `log-line lv-${safeClass(line.level)}` },
      h("time", null, fmt.clock(line.at)), h("span", { class: "level" }, line.level),
      h("span", { class: "logger" }, line.logger), h("span", { class: "message" }, line.message))));
  applyFilter();
  if ($("log-follow").checked) list.scrollTop = list.scrollHeight;
}

function renderConfig(config) {
  setText("config-path", config.path ? `From ${config.path}` : "");
  replaceChildren($("config-warnings"), config.warnings.map((w) => h("li", null, w)));
  const rows = config.settings.map((entry) =>
    h("tr", { class: entry.restart_required ? "restart" : null },
      h("td", { class: "key" }, entry.key),
      h("td", { class: "value" }, fmt.settingValue(entry.value)),
      h("td", null, entry.restart_required
        ? h("span", { class: "badge warn", title: "A reload does not change this setting: restart pg_doorman" }, "restart")
        : h("span", { class: "muted" }, "reload"))));
  replaceChildren($("config-table").tBodies[0], rows);
  applyFilter();
}

function renderProcess(p, connections, level) {
  const facts = [
    ["PID", p.pid], ["Version", p.version], ["Implementation", p.implementation], ["Python", p.python],
    ["Started", fmt.clock(p.started_at)], ["Uptime", fmt.seconds(p.uptime_seconds)],
    ["Memory (RSS)", fmt.bytes(p.memory_bytes)], ["CPU user", fmt.seconds(p.cpu_user_seconds)],
    ["CPU system", fmt.seconds(p.cpu_system_seconds)], ["Open files", p.open_files],
    ["Config file", p.config_path || "–"], ["Log level", level.log_level],
    ["Connections accepted", fmt.compact(connections.total)], ["Refused", fmt.compact(connections.errors)],
    ["Cancel requests", fmt.compact(connections.cancel)], ["Shutting down", p.shutting_down ? "yes" : "no"],
  ];
  replaceChildren($("process-facts"), facts.map(([k, v]) => h("div", null, h("dt", null, k), h("dd", null, v))));
}

// ------------------------------------------------------------------ tabs and filter

function selectTab(tab) {
  state.tab = tab;
  for (const button of $("tabs").querySelectorAll("[data-tab]")) {
    button.setAttribute("aria-selected", String(button.dataset.tab === tab));
  }
  for (const panel of document.querySelectorAll("[data-panel]")) panel.hidden = panel.dataset.panel !== tab;
  state.configFetchedAt = 0;
  if (state.running) tick();
}

function applyFilter() {
  const needle = state.filter.toLowerCase();
  const panel = document.querySelector(`[data-panel="${state.tab}"]`);
  if (!panel) return;
  for (const row of panel.querySelectorAll("tbody tr, ol.events > li, .log-line")) {
    row.hidden = needle !== "" && !row.textContent.toLowerCase().includes(needle);
  }
}

// ------------------------------------------------------------------ wiring

function wire() {
  $("login-form").addEventListener("submit", submitLogin);
  $("login-cancel").addEventListener("click", () => $("login-dialog").close());
  $("login-dialog").addEventListener("cancel", (event) => {
    if (!state.uiAnonymous) event.preventDefault(); // nothing to see without signing in
  });
  $("login-button").addEventListener("click", () => showLogin(""));
  $("logout-button").addEventListener("click", logout);
  $("reload-button").addEventListener("click", () => adminAction("/api/admin/reload", "Reload"));
  $("feed-more").addEventListener("click", () => selectTab("events"));
  $("scope").addEventListener("change", (event) => setScope(event.target.value));
  $("filter").addEventListener("input", (event) => {
    state.filter = event.target.value;
    applyFilter();
  });
  $("log-level").addEventListener("change", () => tick());
  for (const button of $("tabs").querySelectorAll("[data-tab]")) {
    button.addEventListener("click", () => selectTab(button.dataset.tab));
  }
  let resizeTimer = null;
  window.addEventListener("resize", () => {
    clearTimeout(resizeTimer);
    resizeTimer = setTimeout(renderCharts, 100);
  });
  setText("interval", `${POLL_MS / 1000} s`);
}

wire();
setupCharts();
authenticate();
