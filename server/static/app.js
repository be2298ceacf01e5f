// The adamax-ps dashboard: polls the server's JSON API about once a second and
// draws what it holds. Plain JavaScript, no build step; uPlot draws the charts.
"use strict";

const POLL_MS = 1000;
const MAX_BACKOFF_MS = 10000;
const TOKEN_KEY = "adamax-ps-token";
const PALETTE = ["#2563eb", "#ea580c", "#16a34a", "#9333ea", "#dc2626", "#0891b2"];

const state = {
  token: sessionStorage.getItem(TOKEN_KEY),
  chosen: null, // the variable the norm charts and the top rows describe
  optimizer: null, // the optimizer whose slots (m, v) are shown
  optimizers: [],
  variables: [],
  tables: [], // hash-keyed tables, with their counts
  table: null, // the table its chart and top keys describe
  samples: [],
  ready: false,
  charts: {}, // element id -> {key, plot}
};

const $ = (selector) => document.querySelector(selector);

// Formatting ------------------------------------------------------------------------

function formatBytes(n) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) {
    n /= 1024;
    i += 1;
  }
  return i === 0 ? `${n} B` : `${Number(n.toPrecision(3))} ${units[i]}`;
}

function formatDuration(s) {
  s = Math.max(0, Math.floor(s));
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
  return `${Math.floor(s / 86400)} d ${Math.floor((s % 86400) / 3600)} h`;
}

// Norms and scores: four significant digits, exponents outside [1e-3, 1e5).
function formatNumber(x) {
  if (x == null || Number.isNaN(x)) return "–";
  if (x === 0) return "0";
  const a = Math.abs(x);
  return a >= 1e5 || a < 1e-3 ? x.toExponential(3) : x.toPrecision(4);
}

// Hyper-parameters arrive float32-rounded (0.0010000000474974513): show 0.001.
function formatParam(x) {
  return typeof x === "number" ? String(Number(x.toPrecision(6))) : String(x);
}

function formatRate(x) {
  return x >= 1000 ? formatCount(Math.round(x)) : String(Number(x.toPrecision(3)));
}

function formatCount(n) {
  return n.toLocaleString("en-US");
}

function formatShape(shape) {
  return shape.length ? shape.join(" × ") : "scalar";
}

// Axis ticks: as many decimals as the tick spacing needs, k/M/G for large values.
function axisValues(u, splits, axisIdx, space, incr) {
  const max = Math.max(...splits.map((v) => Math.abs(v ?? 0)));
  let unit = 1;
  let suffix = "";
  for (const [size, name, from] of [[1e9, "G", 1e9], [1e6, "M", 1e6], [1e3, "k", 1e4]]) {
    if (max >= from && incr >= size / 10) {
      unit = size;
      suffix = name;
      break;
    }
  }
  const step = incr / unit;
  if (!suffix && max > 0 && max < 1e-3) {
    // Tiny values: exponents, with the digits that tell two ticks apart.
    const digits = Math.max(1, Math.floor(Math.log10(max)) - Math.floor(Math.log10(step)));
    return splits.map((v) => (v == null ? "" : v === 0 ? "0" : v.toExponential(digits)));
  }
  let decimals = Math.max(0, -Math.floor(Math.log10(step) + 1e-9));
  if (Math.abs(step * 10 ** decimals - Math.round(step * 10 ** decimals)) > 1e-6) decimals += 1;
  return splits.map((v) => (v == null ? "" : v === 0 ? "0" : (v / unit).toFixed(decimals) + suffix));
}

// The API ---------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, name, message) {
    super(message);
    this.status = status;
    this.name = name;
  }
}

async function api(path) {
  const headers = { Accept: "application/json" };
  if (state.token) headers.Authorization = `Bearer ${state.token}`;
  const response = await fetch(path, { headers, cache: "no-store" });
  const body = await response.json().catch(() => null);
  if (!response.ok) {
    throw new ApiError(
      response.status,
      body?.error ?? "HTTPError",
      body?.message ?? `${response.status} ${response.statusText}`,
    );
  }
  return body;
}

// Polling ---------------------------------------------------------------------------
// One refresh at a time: the next starts a fixed delay after the previous one
// ends, so a slow server gets fewer requests instead of a growing queue.

let timer = null;
let inFlight = false;
let failures = 0;

async function loop() {
  timer = null;
  let delay = POLL_MS;
  if (!document.hidden) {
    inFlight = true;
    try {
      await refresh();
      failures = 0;
      showError(null);
      // A server restoring its checkpoint or warming its kernels is not ready.
      setStatus(state.ready ? "live" : "starting", `updated ${new Date().toLocaleTimeString()}`);
    } catch (error) {
      failures += 1;
      delay = Math.min(POLL_MS * 2 ** failures, MAX_BACKOFF_MS);
      handleError(error);
    } finally {
      inFlight = false;
    }
  }
  // Hidden tabs stop polling (the server stops sampling history when unwatched).
  if (!document.hidden && $("#token-form").hidden) timer = setTimeout(loop, delay);
}

function wake() {
  if (inFlight) return; // the running refresh schedules the next one
  clearTimeout(timer);
  loop();
}

function handleError(error) {
  if (error instanceof ApiError && error.status === 401) {
    $("#token-form").hidden = false;
    setStatus("locked", error.message);
    return;
  }
  if (error instanceof ApiError) {
    showError(`${error.name}: ${error.message}`);
    setStatus("error", error.message);
  } else {
    showError(`The server does not answer (${error.message}); retrying.`);
    setStatus("offline", String(error));
  }
}

function setStatus(name, detail) {
  const el = $("#status");
  el.dataset.state = name;
  el.textContent = name;
  el.title = detail;
}

function showError(message) {
  const el = $("#error");
  el.hidden = !message;
  el.textContent = message ?? "";
}

async function refresh() {
  const [server, optimizers, variables, tables, history] = await Promise.all([
    api("/api/v1/server"),
    api("/api/v1/optimizers"),
    api("/api/v1/variables?stats=true"),
    api("/api/v1/tables"),
    api("/api/v1/history"), // reading it keeps the server sampling
  ]);
  state.optimizers = optimizers;
  state.variables = variables;
  state.tables = tables;
  state.samples = history.samples;
  chooseDefaults();
  renderServer(server);
  renderOptimizers();
  renderVariables();
  renderTables();
  renderHistoryCharts();
  renderVariableCharts();
  renderTableChart();
  await Promise.all([refreshTop(), refreshTopKeys()]);
}

// Keep the reader's choices while they still exist; otherwise pick the first
// optimizer and the largest variable it has slots for.
function chooseDefaults() {
  const names = state.optimizers.map((o) => o.name);
  if (!names.includes(state.optimizer)) state.optimizer = names[0] ?? null;
  if (!state.variables.some((v) => v.name === state.chosen)) {
    const candidates = [...state.variables].sort((a, b) => b.bytes - a.bytes);
    const slotted = candidates.find((v) => hasSlots(v, state.optimizer));
    state.chosen = (slotted ?? candidates[0])?.name ?? null;
  }
  // The table holding the most rows, unless the reader chose one.
  if (!state.tables.some((t) => t.name === state.table)) {
    const largest = [...state.tables].sort((a, b) => b.size - a.size)[0];
    state.table = largest?.name ?? null;
  }
}

function hasSlots(variable, optimizer) {
  const slots = variable.slots.filter((s) => s.optimizer === optimizer).map((s) => s.slot);
  return slots.includes("m") && slots.includes("v");
}

function chosenVariable() {
  return state.variables.find((v) => v.name === state.chosen) ?? null;
}

// Header ----------------------------------------------------------------------------

function setText(el, text) {
  if (el.textContent !== text) el.textContent = text;
}

function renderServer(s) {
  setText($("#version"), `v${s.version}`);
  let place = `${s.server_index} of ${s.num_servers}`;
  if (s.replicas) place += ` · sync ${s.replicas_to_aggregate}/${s.replicas} replicas`;
  setText($("#server-index"), place);
  setText($("#shards"), String(s.shards));
  setText($("#resident"), formatBytes(s.resident_bytes));
  setText($("#state-bytes"), formatBytes(s.state_bytes));
  state.ready = s.ready;

  // One small bar per shard shows how evenly the state is spread.
  const bars = $("#shard-bars");
  const top = Math.max(1, ...s.shard_state_bytes);
  while (bars.children.length > s.shard_state_bytes.length) bars.lastChild.remove();
  s.shard_state_bytes.forEach((bytes, i) => {
    const bar = bars.children[i] ?? bars.appendChild(document.createElement("span"));
    bar.style.height = `${Math.max(2, (14 * bytes) / top)}px`;
    bar.title = `shard ${i}: ${formatBytes(bytes)}`;
  });

  const c = s.checkpoint;
  const el = $("#checkpoint-age");
  if (c.folder == null) {
    setText(el, "off");
    el.title = "no --checkpoint-dir";
  } else if (c.age_seconds == null) {
    setText(el, "none yet");
    el.title = c.folder;
  } else {
    setText(el, `${formatDuration(c.age_seconds)} ago`);
    el.title = `${c.last_path}: ${formatBytes(c.last_bytes)} written in ${c.last_seconds.toFixed(2)} s`;
  }
  setText($("#uptime"), formatDuration(s.uptime_seconds));
}

// Optimizers ------------------------------------------------------------------------

const KNOWN = new Set(["name", "learning_rate", "beta_1", "beta_2", "epsilon"]);

function describeRate(lr) {
  if (typeof lr === "number") return formatParam(lr);
  const args = Object.entries(lr.config ?? {})
    .filter(([k]) => k !== "name")
    .map(([k, v]) => `${k}=${formatParam(v)}`);
  return `${lr.class_name}(${args.join(", ")})`;
}

function describeOther(o) {
  const parts = Object.entries(o.config)
    .filter(([k, v]) => !KNOWN.has(k) && v != null && !(k === "decay" && v === 0))
    .map(([k, v]) => `${k}=${formatParam(v)}`);
  const extra = o.slot_names.filter((s) => s !== "m" && s !== "v");
  if (extra.length) parts.push(`slots: ${extra.join(", ")}`);
  return parts.join(", ") || "–";
}

// Rows are updated in place (keyed by name) so a click is never lost to a
// table rebuilt between mouse-down and mouse-up.
function syncRows(tbody, items, key, create) {
  const wanted = new Set(items.map(key));
  for (const row of [...tbody.rows]) if (!wanted.has(row.dataset.name)) row.remove();
  const existing = new Map([...tbody.rows].map((r) => [r.dataset.name, r]));
  items.forEach((item, i) => {
    let row = existing.get(key(item));
    if (!row) {
      row = create(item);
      row.dataset.name = key(item);
    }
    if (tbody.rows[i] !== row) tbody.insertBefore(row, tbody.rows[i] ?? null);
  });
  return new Map([...tbody.rows].map((r) => [r.dataset.name, r]));
}

function makeRow(classes) {
  const row = document.createElement("tr");
  for (const c of classes) {
    const cell = row.insertCell();
    cell.className = c;
  }
  return row;
}

const OPTIMIZER_CELLS = ["name mono", "lr", "beta1 num", "beta2 num", "epsilon num", "other", "iterations num", "push-rate num"];

function renderOptimizers() {
  const section = $("#optimizers");
  const rows = syncRows(section.querySelector("tbody"), state.optimizers, (o) => o.name, () => makeRow(OPTIMIZER_CELLS));
  section.querySelector(".empty").hidden = state.optimizers.length > 0;
  for (const o of state.optimizers) {
    const row = rows.get(o.name);
    const cell = (c) => row.querySelector(`.${c}`);
    row.dataset.optimizer = o.name;
    row.classList.toggle("chosen", o.name === state.optimizer);
    setText(cell("name"), o.name);
    setText(cell("lr"), describeRate(o.config.learning_rate));
    setText(cell("beta1"), formatParam(o.config.beta_1));
    setText(cell("beta2"), formatParam(o.config.beta_2));
    setText(cell("epsilon"), formatParam(o.config.epsilon));
    setText(cell("other"), describeOther(o));
    setText(cell("iterations"), formatCount(o.iterations));
    setText(cell("push-rate"), o.push_rate == null ? "–" : formatRate(o.push_rate));
    cell("iterations").title = `${formatCount(o.pushes)} pushes applied by this server`;
  }

  // The optimizer selector matters only when there is a choice.
  const select = $("#optimizer-select");
  const names = state.optimizers.map((o) => o.name);
  if ([...select.options].map((x) => x.value).join("\n") !== names.join("\n")) {
    select.replaceChildren(...names.map((n) => new Option(n, n)));
  }
  select.value = state.optimizer ?? "";
  $("#optimizer-choice").hidden = names.length < 2;
}

// Variables -------------------------------------------------------------------------

const VARIABLE_CELLS = ["name mono", "shape", "dtype", "bytes num", "norm-w num", "norm-m num", "norm-v num", "nonzero-w num", "nonzero-m num"];

function renderVariables() {
  const section = $("#variables");
  const rows = syncRows(section.querySelector("tbody"), state.variables, (v) => v.name, () => {
    const row = makeRow(VARIABLE_CELLS);
    const slice = document.createElement("div");
    slice.className = "slice muted";
    row.querySelector(".shape").append(document.createElement("span"), slice);
    return row;
  });
  section.querySelector(".empty").hidden = state.variables.length > 0;
  for (const v of state.variables) {
    const row = rows.get(v.name);
    const cell = (c) => row.querySelector(`.${c}`);
    const stats = v.stats ?? {};
    const m = stats[`${state.optimizer}/m`];
    const vv = stats[`${state.optimizer}/v`];
    row.classList.toggle("chosen", v.name === state.chosen);
    setText(cell("name"), v.name);
    setText(cell("shape").firstChild, formatShape(v.shape));
    // A variable split over servers holds a slice of its rows here.
    let slice = "";
    if (v.shape[0] !== v.global_shape[0]) {
      const last = v.row_offset + v.shape[0] - 1;
      slice = `rows ${formatCount(v.row_offset)}–${formatCount(last)} of ${formatCount(v.global_shape[0])}`;
    }
    setText(cell("shape").lastChild, slice);
    setText(cell("dtype"), v.dtype);
    setText(cell("bytes"), formatBytes(v.bytes));
    cell("bytes").title = `${formatCount(v.bytes)} bytes: the value and ${v.slots.length} slot(s)`;
    setText(cell("norm-w"), formatNumber(stats.w?.l2_norm));
    setText(cell("norm-m"), formatNumber(m?.l2_norm));
    setText(cell("norm-v"), formatNumber(vv?.l2_norm));
    setText(cell("nonzero-w"), stats.w ? formatCount(stats.w.nonzero_rows) : "–");
    setText(cell("nonzero-m"), m ? formatCount(m.nonzero_rows) : "–");
  }
}

// Charts ----------------------------------------------------------------------------

function chartOptions(el, labels, { yRange, format }) {
  const grid = { stroke: "#e5e7eb", width: 1 };
  const axis = { stroke: "#6b7280", grid, ticks: grid, font: "11px system-ui, sans-serif" };
  return {
    width: el.clientWidth,
    height: el.classList.contains("small") ? 120 : 150,
    // History samples carry Unix times in seconds: a time axis.
    scales: { x: { time: true }, y: yRange ? { range: yRange } : {} },
    series: [
      { label: "time", value: (u, t) => (t == null ? "–" : clock(t)) },
      ...labels.map((label, i) => ({
        label,
        stroke: PALETTE[i % PALETTE.length],
        width: 1.5,
        value: (u, v) => (v == null ? "–" : format(v)),
      })),
    ],
    axes: [
      // Whole seconds at least: samples are about a second apart.
      { ...axis, space: 70, incrs: TIME_STEPS, values: (u, splits) => splits.map(clock) },
      { ...axis, size: 52, space: 24, values: axisValues },
    ],
    cursor: { drag: { x: false, y: false } }, // zooming would be undone by the next poll
    // One series reads its latest value in the caption; several need a legend.
    legend: { show: labels.length > 1, live: true },
  };
}

const TIME_STEPS = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 21600, 86400];

function clock(t) {
  return new Date(t * 1000).toLocaleTimeString("en-GB");
}

// Draw `data` in the element; the chart is rebuilt only when its series change.
// `how`: {yRange, format}, format giving the values in legends and captions.
function plot(id, labels, data, how = {}) {
  how = { format: formatNumber, ...how };
  const el = document.getElementById(id);
  const key = labels.join("\n");
  let chart = state.charts[id];
  if (!chart || chart.key !== key) {
    chart?.plot.destroy();
    chart = state.charts[id] = { key, plot: new uPlot(chartOptions(el, labels, how), data, el) };
  } else {
    chart.plot.setData(data);
  }
  el.dataset.points = String(data[0].length);
  // The caption shows the latest value of a lone series.
  const latest = el.parentElement.querySelector(".latest");
  if (latest) {
    const value = labels.length === 1 ? lastValue(data[1]) : null;
    setText(latest, labels.length > 1 ? "" : value == null ? "no data" : how.format(value));
  }
}

function lastValue(values) {
  for (let i = values.length - 1; i >= 0; i -= 1) if (values[i] != null) return values[i];
  return null;
}

// Charts follow their container's width (heights are fixed, so this cannot loop).
const resizer = new ResizeObserver((entries) => {
  for (const entry of entries) {
    const chart = state.charts[entry.target.id];
    const width = Math.floor(entry.contentRect.width);
    if (chart && width > 0 && width !== chart.plot.width) {
      chart.plot.setSize({ width, height: chart.plot.height });
    }
  }
});
document.querySelectorAll(".chart").forEach((el) => resizer.observe(el));

const fromZero = (u, min, max) => [0, max > 0 ? max * 1.1 : 1];

function renderHistoryCharts() {
  const samples = state.samples;
  const times = samples.map((s) => s.time);
  const names = [...new Set(samples.flatMap((s) => Object.keys(s.optimizers)))].sort();
  const counter = (name, key) => samples.map((s) => s.optimizers[name]?.[key] ?? null);

  plot("chart-iterations", names, [times, ...names.map((n) => counter(n, "iterations"))], {
    format: (v) => formatCount(Math.round(v)),
  });

  // The rate between two samples; nothing across a gap or a counter reset.
  const rates = names.map((n) => {
    const pushes = counter(n, "pushes");
    return pushes.map((p, i) => {
      if (i === 0 || p == null || pushes[i - 1] == null || p < pushes[i - 1]) return null;
      const dt = times[i] - times[i - 1];
      return dt > 0 ? (p - pushes[i - 1]) / dt : null;
    });
  });
  plot("chart-push-rate", names, [times, ...rates], { yRange: fromZero, format: formatRate });
}

function renderVariableCharts() {
  const name = state.chosen;
  setText($("#chosen-name"), name ?? "–");
  const samples = state.samples;
  const times = samples.map((s) => s.time);
  const norms = (key) => samples.map((s) => s.variables[name]?.[key] ?? null);
  const o = state.optimizer;
  plot("chart-w", ["w"], [times, norms("w")]);
  plot("chart-m", [`${o}/m`], [times, norms(`${o}/m`)]);
  plot("chart-v", [`${o}/v`], [times, norms(`${o}/v`)]);
  plot("chart-update", [`${o}/update`], [times, norms(`${o}/update`)]);
}

// Top rows --------------------------------------------------------------------------

let topRequest = 0; // answers to superseded requests are dropped

async function refreshTop() {
  const request = ++topRequest;
  const variable = chosenVariable();
  setText($("#top-name"), variable?.name ?? "–");
  if (!variable || !state.optimizer) return renderTop(null, "Nothing to rank yet.");
  if (!hasSlots(variable, state.optimizer)) {
    return renderTop(null, `${state.optimizer} has not updated ${variable.name} yet: no m, v slots to rank.`);
  }
  const query = new URLSearchParams({ optimizer: state.optimizer, k: $("#top-k").value, by: $("#top-by").value });
  try {
    const answer = await api(`/api/v1/variables/${encodeURIComponent(variable.name)}/top?${query}`);
    if (request === topRequest) renderTop(answer, "");
  } catch (error) {
    if (!(error instanceof ApiError) || error.status === 401) throw error;
    if (request === topRequest) renderTop(null, `${error.name}: ${error.message}`);
  }
}

function renderTop(answer, message) {
  const body = $("#top-rows");
  setText($("#top-message"), message);
  if (!answer) {
    body.replaceChildren();
    delete body.dataset.variable;
    return;
  }
  const best = Math.max(...answer.rows.map((r) => r.score), 0);
  body.replaceChildren(
    ...answer.rows.map((r) => {
      const row = makeRow(["row num", "score", "values mono"]);
      row.dataset.row = String(r.row);
      row.cells[0].textContent = String(r.row);
      const bar = document.createElement("span");
      bar.className = "bar";
      bar.style.width = `${best > 0 ? (100 * r.score) / best : 0}%`;
      const value = document.createElement("span");
      value.textContent = formatNumber(r.score);
      row.cells[1].append(bar, value);
      row.cells[2].textContent = r.values == null ? "(row too long to show)" : previewValues(r.values);
      if (r.values) row.cells[2].title = `${r.values.length} values: ${r.values.map(formatNumber).join(", ")}`;
      return row;
    }),
  );
  // Lets a reader (or a test) tell which question the rows answer.
  body.dataset.variable = answer.variable;
  body.dataset.by = answer.by;
}

function previewValues(values) {
  return values.slice(0, 8).map(formatNumber).join(", ") + (values.length > 8 ? ", …" : "");
}

// Tables ----------------------------------------------------------------------------

const TABLE_CELLS = ["name mono", "dim num", "dtype", "size num", "capacity num", "bytes num", "per-row num", "admitted num", "evicted num", "filtered num"];

function describeTable(t) {
  const parts = [`initializer ${typeof t.initializer === "string" ? t.initializer : t.initializer.class_name}`];
  if (t.admission?.min_count) parts.push(`admitted after ${t.admission.min_count} pushes`);
  if (t.admission?.probability != null) parts.push(`admitted with probability ${formatParam(t.admission.probability)}`);
  if (t.eviction) {
    let evict = `eviction ${t.eviction.policy}`;
    if (t.eviction.ttl_steps != null) evict += `, after ${formatCount(t.eviction.ttl_steps)} steps without update`;
    parts.push(evict);
  }
  return parts.join("; ");
}

function renderTables() {
  const section = $("#tables");
  const rows = syncRows(section.querySelector("tbody"), state.tables, (t) => t.name, () => makeRow(TABLE_CELLS));
  section.querySelector(".empty").hidden = state.tables.length > 0;
  for (const t of state.tables) {
    const row = rows.get(t.name);
    const cell = (c) => row.querySelector(`.${c}`);
    row.classList.toggle("chosen", t.name === state.table);
    setText(cell("name"), t.name);
    cell("name").title = describeTable(t);
    setText(cell("dim"), formatCount(t.dim));
    setText(cell("dtype"), t.dtype);
    setText(cell("size"), formatCount(t.size));
    cell("size").title = `${formatCount(t.allocated)} rows allocated`;
    setText(cell("capacity"), t.capacity == null ? "unbounded" : formatCount(t.capacity));
    setText(cell("bytes"), formatBytes(t.bytes));
    cell("bytes").title = `${formatCount(t.bytes)} bytes: rows, slots, index and admission filter`;
    setText(cell("per-row"), t.size ? formatBytes(Math.round(t.bytes_per_row)) : "–");
    setText(cell("admitted"), formatCount(t.admitted));
    setText(cell("evicted"), formatCount(t.evicted));
    setText(cell("filtered"), formatCount(t.filtered));
  }
}

const TABLE_SERIES = ["size", "admitted", "evicted", "filtered"];

function renderTableChart() {
  const name = state.table;
  setText($("#table-chosen-name"), name ?? "–");
  const samples = state.samples;
  const times = samples.map((s) => s.time);
  const counts = (key) => samples.map((s) => s.tables?.[name]?.[key] ?? null);
  plot("chart-table", name ? TABLE_SERIES : [], [times, ...(name ? TABLE_SERIES.map(counts) : [])], {
    yRange: fromZero,
    format: (v) => formatCount(Math.round(v)),
  });
}

let topKeysRequest = 0; // answers to superseded requests are dropped

async function refreshTopKeys() {
  const request = ++topKeysRequest;
  const name = state.table;
  setText($("#top-keys-name"), name ?? "–");
  if (!name) return renderTopKeys(null, "No table yet.");
  try {
    const answer = await api(`/api/v1/tables/${encodeURIComponent(name)}?top_keys=10`);
    if (request !== topKeysRequest) return;
    renderTopKeys(answer, answer.top_keys.length ? "" : `No key of ${name} has a row yet.`);
  } catch (error) {
    if (!(error instanceof ApiError) || error.status === 401) throw error;
    if (request === topKeysRequest) renderTopKeys(null, `${error.name}: ${error.message}`);
  }
}

function renderTopKeys(answer, message) {
  const body = $("#top-keys-rows");
  setText($("#top-keys-message"), message);
  if (!answer) {
    body.replaceChildren();
    delete body.dataset.table;
    return;
  }
  const best = Math.max(...answer.top_keys.map((k) => k.updates), 0);
  body.replaceChildren(
    ...answer.top_keys.map((k) => {
      const row = makeRow(["key num mono", "score", "updated num"]);
      row.dataset.key = String(k.key);
      row.cells[0].textContent = String(k.key);
      const bar = document.createElement("span");
      bar.className = "bar";
      bar.style.width = `${best > 0 ? (100 * k.updates) / best : 0}%`;
      const value = document.createElement("span");
      value.textContent = formatCount(k.updates);
      row.cells[1].append(bar, value);
      row.cells[2].textContent = formatCount(k.updated);
      return row;
    }),
  );
  body.dataset.table = answer.name; // which table the keys are of
}

// Interaction -----------------------------------------------------------------------

function choose(variable) {
  state.chosen = variable;
  renderVariables();
  renderVariableCharts();
  refreshTop().catch(handleError);
}

$("#variables tbody").addEventListener("click", (event) => {
  const row = event.target.closest("tr[data-name]");
  if (row) choose(row.dataset.name);
});

$("#tables tbody").addEventListener("click", (event) => {
  const row = event.target.closest("tr[data-name]");
  if (!row) return;
  state.table = row.dataset.name;
  renderTables();
  renderTableChart();
  refreshTopKeys().catch(handleError);
});

$("#optimizers tbody").addEventListener("click", (event) => {
  const row = event.target.closest("tr[data-name]");
  if (row) {
    state.optimizer = row.dataset.name;
    renderOptimizers();
    choose(state.chosen);
  }
});

$("#optimizer-select").addEventListener("change", (event) => {
  state.optimizer = event.target.value;
  renderOptimizers();
  choose(state.chosen);
});

for (const id of ["#top-by", "#top-k"]) {
  $(id).addEventListener("change", () => refreshTop().catch(handleError));
}

$("#token-form").addEventListener("submit", (event) => {
  event.preventDefault();
  state.token = $("#token").value.trim() || null;
  if (state.token) sessionStorage.setItem(TOKEN_KEY, state.token);
  $("#token-form").hidden = true;
  wake();
});

document.addEventListener("visibilitychange", () => {
  if (!document.hidden && timer == null) wake();
});

loop();
