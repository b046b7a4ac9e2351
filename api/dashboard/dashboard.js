// The edgelake dashboard: fetches /v1/dashboard with the key kept in sessionStorage and draws it.
// Charts are plain SVG built here; nothing is loaded from outside the server.
"use strict";

const KEY_ITEM = "edgelake.key";
const SVG_NS = "http://www.w3.org/2000/svg";
const DECISIONS = ["approve", "review", "decline"];

/** The key from `?key=` (stored, then removed from the address bar) or from this tab's session storage. */
function currentKey() {
  const params = new URLSearchParams(location.search);
  if (params.has("key")) {
    sessionStorage.setItem(KEY_ITEM, params.get("key"));
    params.delete("key");
    const rest = params.toString();
    history.replaceState(null, "", location.pathname + (rest ? "?" + rest : ""));
  }
  return sessionStorage.getItem(KEY_ITEM);
}

/** GET `path` with the key as a Bearer header; throws with the problem's detail on an error status. */
async function authorizedFetch(path, key) {
  const response = await fetch(path, { headers: { Authorization: "Bearer " + key } });
  if (!response.ok) {
    let detail = response.statusText;
    try { detail = (await response.json()).detail || detail; } catch (_) { /* not JSON */ }
    const error = new Error(`${response.status}: ${detail}`);
    error.status = response.status;
    throw error;
  }
  return response;
}

/** An element with attributes and children (strings become text). */
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, value);
  for (const child of children) node.append(child);
  return node;
}

/** An SVG element with attributes. */
function svg(tag, attrs = {}) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, value);
  return node;
}

/** A table of `rows` with `columns`: [heading, row => value, numeric?]. */
function table(columns, rows, className) {
  const head = el("tr", {}, ...columns.map(([heading]) => el("th", {}, heading)));
  const body = rows.map(row =>
    el("tr", {}, ...columns.map(([, value, numeric]) => el("td", numeric ? { class: "num" } : {}, String(value(row) ?? "—")))));
  return el("table", { class: className }, el("thead", {}, head), el("tbody", {}, ...body));
}

function formatTime(iso) {
  return iso ? new Date(iso).toISOString().replace("T", " ").slice(0, 19) + "Z" : null;
}

function formatAge(seconds) {
  if (seconds == null) return null;
  if (seconds < 120) return `${Math.round(seconds)} s ago`;
  if (seconds < 7200) return `${Math.round(seconds / 60)} min ago`;
  return `${(seconds / 3600).toFixed(1)} h ago`;
}

/** Bar chart of the score histogram: one rect.bar per bin, its height the bin's count. */
function histogramChart(bins) {
  const width = 360, height = 180, pad = 24, gap = 2;
  const max = Math.max(1, ...bins.map(bin => bin.count));
  const barWidth = (width - 2 * pad) / bins.length;
  const chart = svg("svg", { class: "chart histogram", width, height, viewBox: `0 0 ${width} ${height}`, role: "img" });
  chart.append(svg("line", { class: "axis", x1: pad, y1: height - pad, x2: width - pad, y2: height - pad }));
  bins.forEach((bin, i) => {
    const h = (height - 2 * pad) * bin.count / max;
    const bar = svg("rect", { class: "bar", x: pad + i * barWidth + gap / 2, y: height - pad - h, width: barWidth - gap, height: h, "data-count": bin.count });
    bar.append(Object.assign(svg("title"), { textContent: `${bin.low.toFixed(1)}–${bin.high.toFixed(1)}: ${bin.count}` }));
    chart.append(bar);
  });
  for (const x of [0, 0.5, 1]) {
    const label = svg("text", { x: pad + x * (width - 2 * pad), y: height - 8, "text-anchor": "middle" });
    label.textContent = String(x);
    chart.append(label);
  }
  const top = svg("text", { x: 2, y: pad - 6 });
  top.textContent = String(max);
  chart.append(top);
  return chart;
}

/** Stacked bars of decisions per time bucket: one g.bucket per bucket holding a rect per decision. */
function decisionsChart(buckets, unit) {
  const width = Math.max(360, buckets.length * 14 + 48), height = 180, pad = 24;
  const totals = buckets.map(b => DECISIONS.reduce((sum, d) => sum + b[d], 0));
  const max = Math.max(1, ...totals);
  const barWidth = (width - 2 * pad) / Math.max(1, buckets.length);
  const chart = svg("svg", { class: "chart decisions", width, height, viewBox: `0 0 ${width} ${height}`, role: "img" });
  chart.append(svg("line", { class: "axis", x1: pad, y1: height - pad, x2: width - pad, y2: height - pad }));
  buckets.forEach((bucket, i) => {
    const group = svg("g", { class: "bucket", "data-start": bucket.start, "data-total": totals[i] });
    let y = height - pad;
    for (const decision of DECISIONS) {
      const h = (height - 2 * pad) * bucket[decision] / max;
      y -= h;
      group.append(svg("rect", { class: decision, x: pad + i * barWidth + 1, y, width: Math.max(1, barWidth - 2), height: h }));
    }
    group.append(Object.assign(svg("title"), { textContent: `${formatTime(bucket.start)}: ${DECISIONS.map(d => `${bucket[d]} ${d}`).join(", ")}` }));
    chart.append(group);
  });
  if (buckets.length) {
    const first = svg("text", { x: pad, y: height - 8 });
    first.textContent = formatTime(buckets[0].start);
    const last = svg("text", { x: width - pad, y: height - 8, "text-anchor": "end" });
    last.textContent = buckets.length > 1 ? formatTime(buckets[buckets.length - 1].start) : "";
    chart.append(first, last);
  }
  const top = svg("text", { x: 2, y: pad - 6 });
  top.textContent = `${max} per ${unit}`;
  chart.append(top);
  return chart;
}

function legend() {
  return el("div", { class: "legend" }, ...DECISIONS.map(d => el("span", {}, el("i", { style: `background: var(--${d})` }), d)));
}

function renderTables(tables) {
  const written = tables.filter(t => t.written);
  const unwritten = tables.length - written.length;
  return [
    table([["table", t => t.name], ["layer", t => t.layer], ["rows", t => t.rows, true], ["version", t => t.version, true],
           ["last commit", t => formatTime(t.last_commit)]], written, "lake-tables"),
    el("p", { class: "muted" }, `${unwritten} more catalog tables have not been written yet.`),
  ];
}

function renderIngest(states) {
  if (!states.length) return [el("p", { class: "muted" }, "No silver table has been written yet.")];
  const offsets = s => Object.entries(s.offsets).map(([p, o]) => `p${p}: ${o}`).join(", ") || null;
  return [table([["table", s => s.table], ["topic", s => s.topic], ["pipeline", s => s.pipeline], ["committed offsets", offsets],
                 ["lag (records)", s => s.lag === null ? "broker unreachable" : s.lag.toLocaleString()],
                 ["last ingest commit", s => formatTime(s.last_ingest_commit)], ["age", s => formatAge(s.seconds_since_commit)]],
                states, "ingest")];
}

function renderScores(scores) {
  if (!scores) return [el("p", { class: "muted", id: "no-scores" }, "No scores yet.")];
  return [
    el("p", {}, `${scores.total} scores.`),
    el("div", { class: "charts" },
      el("figure", {}, histogramChart(scores.histogram), el("figcaption", {}, "Fraud-score distribution (10 bins over 0–1)")),
      el("figure", {}, decisionsChart(scores.decisions, scores.bucket), legend(), el("figcaption", {}, `Decisions per ${scores.bucket} of event time`))),
  ];
}

/** A small line of `values` from 0 to their maximum (at least twice `major`), with a dashed line at `major`. */
function sparkline(values, major) {
  const width = 160, height = 28, pad = 3, top = Math.max(2 * major, ...values);
  const x = i => pad + (width - 2 * pad) * (values.length > 1 ? i / (values.length - 1) : 1);
  const y = v => height - pad - (height - 2 * pad) * v / top;
  const chart = svg("svg", { class: "chart sparkline", width, height, viewBox: `0 0 ${width} ${height}`, role: "img", "data-points": values.length });
  chart.append(svg("line", { class: "major", x1: pad, y1: y(major), x2: width - pad, y2: y(major) }));
  chart.append(svg("polyline", { class: "psi", points: values.map((v, i) => `${x(i)},${y(v)}`).join(" ") }));
  const last = values.length - 1;
  chart.append(svg("circle", { class: "psi", cx: x(last), cy: y(values[last]), r: 2 }));
  chart.append(Object.assign(svg("title"), { textContent: values.map(v => v.toFixed(3)).join(", ") }));
  return chart;
}

/** One row per series (the score, the watched fields, then the inputs by PSI now) with its PSI now and over time. */
function renderDrift(drift) {
  if (!drift) return [el("p", { class: "muted", id: "no-drift" }, "This server process serves no production fraud model with training distributions.")];
  if (!drift.times.length) {
    return [el("p", { class: "muted", id: "no-drift" }, `The drift window holds ${drift.transactions} of the ${drift.min_transactions} scored transactions PSI needs.`)];
  }
  const now = series => series.psi[series.psi.length - 1];
  const order = { score: 0, field: 1, input: 2 };
  const rows = [...drift.series].sort((a, b) => order[a.kind] - order[b.kind] || (a.kind === "input" ? now(b) - now(a) : 0));
  const head = el("tr", {}, ...["series", "kind", "PSI now", `PSI from ${formatTime(drift.times[0])} to now`].map(heading => el("th", {}, heading)));
  const body = rows.map(series => {
    const band = now(series) >= drift.major ? "major" : now(series) >= drift.moderate ? "moderate" : "stable";
    return el("tr", { class: `drift-row ${band}`, "data-name": series.name, "data-kind": series.kind, "data-psi": now(series) },
      el("td", {}, series.name), el("td", {}, series.kind), el("td", { class: "num" }, now(series).toFixed(3)),
      el("td", {}, sparkline(series.psi, drift.major)));
  });
  return [
    el("p", {}, `PSI of the last ${drift.transactions} transactions scored by this server process (at most ${drift.window}) against ` +
      `the traffic fraud v${drift.version} was tested on: moderate from ${drift.moderate}, major from ${drift.major} (dashed).`),
    el("table", { class: "drift" }, el("thead", {}, head), el("tbody", {}, ...body)),
  ];
}

/** Each model's versions; plot PNGs are fetched with the key and shown as blob URLs. */
function renderModels(models, key) {
  if (!models.length) return { nodes: [el("p", { class: "muted" }, "No model published yet.")], loading: [] };
  const nodes = [], loading = [];
  for (const model of models) {
    nodes.push(el("h3", { class: "model-name" }, `${model.name} (production: ${model.production ? "v" + model.production : "none"})`));
    const metricNames = [...new Set(model.versions.flatMap(v => Object.keys(v.metrics)))].sort();
    nodes.push(table([["version", v => "v" + v.version], ["stage", v => v.stage], ["created", v => formatTime(v.created)],
                      ...metricNames.map(m => [m, v => v.metrics[m] == null ? null : Number(v.metrics[m]).toFixed(4), true])],
                     model.versions, "model-versions"));
    for (const version of model.versions.filter(v => v.plots.length)) {
      const plots = el("div", { class: "plots" }, el("span", { class: "muted" }, `v${version.version} plots: `));
      for (const file of version.plots) {
        const img = el("img", { alt: `${model.name} v${version.version} ${file}`, "data-file": file });
        plots.append(img);
        const path = `/v1/models/${encodeURIComponent(model.name)}/${version.version}/artifacts/${file.split("/").map(encodeURIComponent).join("/")}`;
        loading.push(authorizedFetch(path, key).then(r => r.blob()).then(blob => { img.src = URL.createObjectURL(blob); })
          .catch(error => { img.alt += ` (not loaded: ${error.message})`; }));
      }
      nodes.push(plots);
    }
  }
  return { nodes, loading };
}

function renderDevices(devices) {
  if (!devices.length) return [el("p", { class: "muted" }, "No device has enrolled yet.")];
  const models = d => Object.entries(d.last_heartbeat?.models ?? {}).map(([name, v]) => `${name} v${v}`).join(", ") || null;
  return [table([["device", d => d.name], ["id", d => d.id], ["models", models], ["last heartbeat", d => formatTime(d.last_heartbeat?.time)],
                 ["enrolled", d => formatTime(d.enrolled)]], devices, "devices")];
}

function fill(id, nodes) {
  document.getElementById(id).replaceChildren(...nodes);
}

/** Fetch the dashboard's data and draw every section; body[data-state] is "ready" once the plots are in. */
async function load(key) {
  const status = document.getElementById("status");
  status.textContent = "loading…";
  status.className = "muted";
  document.body.dataset.state = "loading";
  try {
    const data = await (await authorizedFetch("/v1/dashboard", key)).json();
    fill("tables", renderTables(data.tables));
    fill("ingest", renderIngest(data.ingest));
    fill("scores", renderScores(data.scores));
    fill("drift", renderDrift(data.drift));
    const models = renderModels(data.models, key);
    fill("models", models.nodes);
    fill("devices", renderDevices(data.devices));
    document.getElementById("board").hidden = false;
    document.getElementById("login").hidden = true;
    for (const id of ["refresh", "forget"]) document.getElementById(id).hidden = false;
    status.textContent = `as of ${formatTime(data.generated)}`;
    await Promise.all(models.loading);
    document.body.dataset.state = "ready";
  } catch (error) {
    status.textContent = error.message;
    status.className = "error";
    document.body.dataset.state = "error";
    if (error.status === 401 || error.status === 403) showLogin();
  }
}

function showLogin() {
  document.getElementById("login").hidden = false;
  document.getElementById("board").hidden = true;
}

function start() {
  const key = currentKey();
  document.getElementById("login").addEventListener("submit", event => {
    event.preventDefault();
    sessionStorage.setItem(KEY_ITEM, document.getElementById("key").value.trim());
    load(sessionStorage.getItem(KEY_ITEM));
  });
  document.getElementById("refresh").addEventListener("click", () => load(sessionStorage.getItem(KEY_ITEM)));
  document.getElementById("forget").addEventListener("click", () => { sessionStorage.removeItem(KEY_ITEM); location.reload(); });
  if (key) load(key); else showLogin();
}

start();
