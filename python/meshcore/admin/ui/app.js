// The meshcore dashboard. It reads /ui/events (a snapshot of cumulative counts each second),
// keeps the last five minutes of snapshots and derives every rate and percentile from the
// differences between them. Names from the config are only ever set as text, never as HTML.
"use strict";

const HISTORY_SECONDS = 300; // what the charts show
const WINDOW_SECONDS = 10; // what the tables' numbers are computed over
const ring = []; // snapshots, oldest first

// --- numbers -------------------------------------------------------------------------------

// meshcore.histogram.quantile: Prometheus' histogram_quantile over per-bucket counts, the last
// bucket past the last bound; null without any count.
function quantile(q, bounds, counts) {
  let total = 0;
  for (const n of counts) total += n;
  if (total === 0) return null;
  const rank = q * total;
  let cumulative = 0;
  for (let i = 0; i < counts.length; i++) {
    const n = counts[i];
    if (n && cumulative + n >= rank) {
      if (i >= bounds.length) return bounds[bounds.length - 1];
      const lower = i === 0 ? 0 : bounds[i - 1];
      return lower + (bounds[i] - lower) * (rank - cumulative) / n;
    }
    cumulative += n;
  }
  return bounds[bounds.length - 1];
}

const ZERO = { responses: 0, failures: 0, cross_zone: 0, buckets: [] };

// The golden numbers of one route or service between two snapshots; null when its counters went
// back (the proxy restarted) or no time passed.
function golden(before, after, kind, name) {
  const b = before.stats[kind][name] || ZERO;
  const a = after.stats[kind][name];
  const seconds = after.time - before.time;
  if (!a || seconds <= 0) return null;
  const responses = a.responses - b.responses;
  if (responses < 0 || a.failures < b.failures) return null;
  const buckets = a.buckets.map((n, i) => n - (b.buckets[i] || 0));
  const bounds = after.stats.buckets_ms;
  return {
    rps: responses / seconds,
    success: responses ? 1 - (a.failures - b.failures) / responses : null,
    p50: quantile(0.5, bounds, buckets),
    p95: quantile(0.95, bounds, buckets),
    p99: quantile(0.99, bounds, buckets),
    crossZone: responses ? (a.cross_zone - b.cross_zone) / responses : null,
  };
}

// The snapshot to measure the tables' numbers from: the oldest within the window.
function windowStart() {
  const newest = ring[ring.length - 1];
  for (const s of ring) if (s !== newest && s.time >= newest.time - WINDOW_SECONDS - 0.5) return s;
  return null;
}

// One point per second: [Date, value] for each pair of neighbouring snapshots.
function series(kind, name, field) {
  const points = [];
  for (let i = 1; i < ring.length; i++) {
    const g = golden(ring[i - 1], ring[i], kind, name);
    let value = g === null ? null : g[field];
    if (value !== null && (field === "success" || field === "crossZone")) value *= 100;
    points.push([new Date(ring[i].time * 1000), value]);
  }
  return points;
}

// --- formatting ----------------------------------------------------------------------------

const fmt = {
  rate: (v) => (v === null || v === undefined ? "–" : v < 10 ? v.toFixed(2) : v.toFixed(1)),
  percent: (v) => (v === null || v === undefined ? "–" : (v * 100).toFixed(v < 0.999 ? 1 : 2) + " %"),
  ms: (v) => (v === null || v === undefined ? "–" : (v < 10 ? v.toFixed(2) : v.toFixed(0)) + " ms"),
  count: (v) => (v === null || v === undefined ? "–" : String(v)),
  when: (v) => {
    if (v === null || v === undefined) return "–";
    const d = typeof v === "number" ? new Date(v * 1000) : new Date(v);
    return isNaN(d) ? String(v) : d.toLocaleString();
  },
  duration: (seconds) => {
    const s = Math.abs(Math.round(seconds));
    const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60);
    const text = h ? `${h} h ${m} min` : m ? `${m} min ${s % 60} s` : `${s} s`;
    return seconds < 0 ? `expired ${text} ago` : `in ${text}`;
  },
};

// --- DOM helpers ---------------------------------------------------------------------------

function el(tag, props, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props || {})) {
    if (value === null || value === undefined) continue;
    if (key === "class") node.className = value;
    else if (key.startsWith("data-")) node.dataset[key.slice(5)] = value;
    else node[key] = value;
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

const badge = (state, text) => el("span", { class: "badge", "data-state": state }, text || state);

function facts(dl, pairs) {
  dl.replaceChildren(...pairs.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v)]));
}

// --- charts (dygraphs) ---------------------------------------------------------------------

// dygraphs' legend writes style attributes, which the page's CSP refuses (and reports as errors);
// the charts go without it and the page draws its own legend.
Dygraph.PLUGINS = Dygraph.PLUGINS.filter((plugin) => plugin !== Dygraph.Plugins.Legend);

const SPARK = {
  rps: { color: "#2b6cb0", range: null },
  success: { color: "#2f855a", range: [0, 100] },
  p99: { color: "#b7791f", range: null },
};

function sparkline(div, field) {
  return new Dygraph(div, [[new Date(), null]], {
    labels: ["time", field],
    width: 140,
    height: 30,
    colors: [SPARK[field].color],
    strokeWidth: 1.5,
    fillGraph: true,
    includeZero: true,
    valueRange: SPARK[field].range,
    axes: {
      x: { drawAxis: false, drawGrid: false },
      y: { drawAxis: false, drawGrid: false },
    },
    legend: "never",
    showLabelsOnHighlight: false,
    highlightCircleSize: 0,
    interactionModel: {},
    rightGap: 0,
    xAxisHeight: 0,
  });
}

// --- golden tables -------------------------------------------------------------------------

const rows = { routes: new Map(), services: new Map() };

function goldenRow(kind, name) {
  let row = rows[kind].get(name);
  if (row) return row;
  const cells = {};
  for (const f of ["rps", "success", "p50", "p95", "p99", "crossZone"]) cells[f] = el("td", { class: "num" });
  const sparkDivs = {};
  for (const f of ["rps", "success", "p99"]) sparkDivs[f] = el("div", { class: "spark-chart", "data-metric": f });
  const tr = el(
    "tr",
    { "data-name": name },
    el("td", {}, name),
    ...Object.values(cells),
    ...Object.values(sparkDivs).map((d) => el("td", { class: "spark" }, d)),
  );
  row = { tr, cells, sparkDivs, charts: {} };
  rows[kind].set(name, row);
  const tbody = document.querySelector(`#${kind} tbody`);
  // Rows in name order.
  const after = [...tbody.children].find((r) => r.dataset.name > name);
  tbody.insertBefore(tr, after || null);
  return row;
}

function renderGolden(kind, newest) {
  const start = windowStart();
  const names = Object.keys(newest.stats[kind]);
  document.querySelector(`#${kind} .empty`).hidden = names.length > 0;
  for (const [name, row] of rows[kind]) {
    if (!names.includes(name)) {
      row.tr.remove();
      rows[kind].delete(name);
    }
  }
  for (const name of names) {
    const row = goldenRow(kind, name);
    const g = start ? golden(start, newest, kind, name) : null;
    row.cells.rps.textContent = fmt.rate(g && g.rps);
    row.cells.success.textContent = fmt.percent(g && g.success);
    row.cells.success.classList.toggle("bad", !!g && g.success !== null && g.success < 0.99);
    row.cells.p50.textContent = fmt.ms(g && g.p50);
    row.cells.p95.textContent = fmt.ms(g && g.p95);
    row.cells.p99.textContent = fmt.ms(g && g.p99);
    row.cells.crossZone.textContent = fmt.percent(g && g.crossZone);
    row.tr.dataset.rps = g ? g.rps.toFixed(3) : "0";
    for (const field of ["rps", "success", "p99"]) {
      const points = series(kind, name, field);
      if (points.length === 0) continue;
      const div = row.sparkDivs[field];
      if (!row.charts[field]) row.charts[field] = sparkline(div, field);
      row.charts[field].updateOptions({ file: points });
      div.dataset.points = String(points.filter((p) => p[1] !== null).length);
    }
  }
}

// --- balancer ------------------------------------------------------------------------------

function endpointRows(endpoints) {
  const sorted = [...endpoints].sort(
    (a, b) => a.tier - b.tier || String(a.zone).localeCompare(String(b.zone)) || a.addr.localeCompare(b.addr),
  );
  const out = [];
  let group = null;
  for (const e of sorted) {
    const key = `tier ${e.tier} · zone ${e.zone || "none"}`;
    if (key !== group) {
      group = key;
      out.push(el("tr", { class: "group" }, el("td", { colSpan: 8 }, key)));
    }
    out.push(
      el(
        "tr",
        { class: "endpoint", "data-addr": e.addr, "data-state": e.state },
        el("td", {}, e.addr),
        el("td", {}, e.cluster || "–"),
        el("td", {}, badge(e.state)),
        el("td", { class: "num" }, fmt.ms(e.ewma_ms)),
        el("td", { class: "num" }, fmt.count(e.pending)),
        el("td", { class: "num" }, fmt.count(e.requests)),
        el("td", { class: "num" }, fmt.count(e.failures)),
        el("td", { class: "num" }, fmt.count(e.trips)),
      ),
    );
  }
  return out;
}

function renderBalancer(newest) {
  const cards = newest.endpoints.services.map((s) => {
    const tiers = s.active_tiers === null || s.active_tiers === undefined ? null : s.active_tiers;
    const heading = el(
      "h3",
      {},
      s.name,
      s.panic ? badge("panic", "panic: all endpoints in use") : null,
      el(
        "span",
        { class: "facts" },
        `${s.balancer}` +
          (tiers === null ? "" : ` · active tiers ${Array.isArray(tiers) ? tiers.join(", ") : tiers}`) +
          (s.load === null || s.load === undefined ? "" : ` · load ${Number(s.load).toFixed(2)}`),
      ),
    );
    const table = el(
      "table",
      { class: "endpoints" },
      el(
        "thead",
        {},
        el(
          "tr",
          {},
          ...["endpoint", "cluster", "state", "EWMA", "pending", "requests", "failures", "trips"].map((h) =>
            el("th", {}, h),
          ),
        ),
      ),
      el("tbody", {}, ...endpointRows(s.endpoints)),
    );
    return el("div", { class: "service-card", "data-service": s.name }, heading, table);
  });
  document.getElementById("balancer-services").replaceChildren(
    ...(cards.length ? cards : [el("p", { class: "muted" }, "No service.")]),
  );
}

let crossZone = { chart: null, names: "" };

function renderCrossZone(newest) {
  const names = Object.keys(newest.stats.services).sort();
  const div = document.getElementById("cross-zone-chart");
  if (names.length === 0 || ring.length < 2) return;
  const perService = names.map((n) => series("services", n, "crossZone"));
  const points = perService[0].map((p, i) => [p[0], ...perService.map((s) => s[i][1])]);
  const key = names.join("\n");
  if (!crossZone.chart || crossZone.names !== key) {
    if (crossZone.chart) crossZone.chart.destroy();
    crossZone.chart = new Dygraph(div, points, {
      labels: ["time", ...names],
      height: 180,
      valueRange: [0, 100],
      ylabel: "% of responses",
      legend: "never",
      showLabelsOnHighlight: false,
      interactionModel: {},
      connectSeparatedPoints: false,
      axes: { x: { axisLabelWidth: 80 }, y: { valueFormatter: (v) => v.toFixed(1) + " %" } },
    });
    crossZone.names = key;
    const colors = crossZone.chart.getColors();
    document.getElementById("cross-zone-legend").replaceChildren(
      ...names.map((n, i) => {
        const swatch = el("span", { class: "swatch" });
        swatch.style.backgroundColor = colors[i];
        return el("span", {}, swatch, n);
      }),
    );
  } else {
    crossZone.chart.updateOptions({ file: points });
  }
  div.dataset.points = String(points.length);
}

// --- identity, authorization, config -------------------------------------------------------

function renderIdentity(newest) {
  const dl = document.getElementById("identity-facts");
  const id = newest.identity;
  if (!id) {
    facts(dl, [["identity", "none: this proxy has no workload certificate (no mTLS listener or service)"]]);
    return;
  }
  const left = id.expires_at - newest.time;
  const expiry = el("span", { class: left < 3600 ? "bad" : "" }, fmt.duration(left));
  facts(dl, [
    ["SPIFFE ID", id.spiffe_id || "– (the certificate has no SPIFFE URI)"],
    ["certificate expires", fmt.when(id.expires_at)],
    ["time to expiry", expiry],
  ]);
}

function renderAuthorization(newest) {
  const start = windowStart();
  const key = (d) => `${d.listener}\n${d.rule}\n${d.decision}`;
  const before = new Map((start ? start.stats.authorization : []).map((d) => [key(d), d.count]));
  const seconds = start ? newest.time - start.time : 0;
  const decisions = newest.stats.authorization;
  document.querySelector("#authorization .empty").hidden = decisions.length > 0;
  document.querySelector("#authorization tbody").replaceChildren(
    ...decisions.map((d) => {
      const delta = start && seconds > 0 ? (d.count - (before.get(key(d)) || 0)) / seconds : null;
      return el(
        "tr",
        { "data-decision": d.decision },
        el("td", {}, d.listener),
        el("td", {}, d.rule),
        el("td", {}, badge(d.decision)),
        el("td", { class: "num" }, fmt.count(d.count)),
        el("td", { class: "num" }, fmt.rate(delta !== null && delta >= 0 ? delta : null)),
      );
    }),
  );
}

let historyOf = null; // the config version whose history is shown

function renderConfig(newest) {
  const dl = document.getElementById("config-facts");
  const c = newest.config;
  const history = document.getElementById("config-history");
  if (!c) {
    facts(dl, [["config", "static config: no lifecycle manages it (the proxy was not started by `meshcore run`)"]]);
    history.hidden = true;
    return;
  }
  const last = c.last_reload || {};
  facts(dl, [
    ["version", fmt.count(c.version)],
    ["applied", fmt.when(c.applied_at)],
    ["source", [c.source, c.who].filter(Boolean).join(" by ") || "–"],
    ["file", c.file ? `${c.file.path}${c.file.matches === false ? " (differs from the running version)" : ""}` : "–"],
    ["last reload", last.result ? `${last.result}${last.error ? ": " + last.error : ""} (${fmt.when(last.at)})` : "–"],
  ]);
  if (historyOf !== c.version) {
    historyOf = c.version;
    fetch("/config/history", { headers: { accept: "application/json" } })
      .then((r) => (r.ok ? r.json() : null))
      .then((doc) => doc && renderHistory(doc))
      .catch(() => {
        historyOf = null; // try again with the next snapshot
      });
  }
}

function renderHistory(doc) {
  const table = document.getElementById("config-history");
  table.hidden = false;
  table.querySelector("tbody").replaceChildren(
    ...doc.versions.map((v) =>
      el(
        "tr",
        { "data-version": v.version },
        el("td", {}, String(v.version), v.current ? " " : null, v.current ? badge("active", "running") : null),
        el("td", {}, fmt.when(v.applied_at)),
        el("td", {}, v.source || "–"),
        el("td", {}, v.who || "–"),
        el("td", {}, v.format || "–"),
        el(
          "td",
          {},
          [v.rollback_of ? `rollback of ${v.rollback_of}` : "", v.bad ? `marked bad: ${v.bad}` : ""]
            .filter(Boolean)
            .join("; "),
        ),
      ),
    ),
  );
}

// --- the feed ------------------------------------------------------------------------------

function receive(snapshot) {
  const last = ring[ring.length - 1];
  if (last && snapshot.time < last.time) ring.length = 0; // the clock went back: start over
  ring.push(snapshot);
  while (ring.length > 2 && ring[0].time < snapshot.time - HISTORY_SECONDS) ring.shift();
  renderGolden("routes", snapshot);
  renderGolden("services", snapshot);
  renderBalancer(snapshot);
  renderCrossZone(snapshot);
  renderIdentity(snapshot);
  renderAuthorization(snapshot);
  renderConfig(snapshot);
  const state = snapshot.running ? "live" : "stopped";
  const connection = document.getElementById("connection");
  connection.dataset.state = state;
  connection.textContent = snapshot.running ? "live" : "proxy stopped";
  document.getElementById("updated").textContent = `updated ${new Date(snapshot.time * 1000).toLocaleTimeString()}`;
}

function connect() {
  const events = new EventSource("/ui/events");
  events.addEventListener("snapshot", (e) => receive(JSON.parse(e.data)));
  events.onerror = () => {
    const connection = document.getElementById("connection");
    connection.dataset.state = "disconnected";
    connection.textContent = "disconnected, retrying";
  };
}

document.addEventListener("DOMContentLoaded", connect);
