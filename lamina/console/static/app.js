// The Lamina console: plain ES module, no build step. Every datum comes from the JSON API
// (docs/console.md), which applies the gRPC API's rules; the pages only hide what the
// caller's key may not do, the server refuses it either way.
import uPlot from "/static/vendor/uplot/uPlot.esm.js";

const main = document.getElementById("main");
const state = { session: null, collections: [], timer: null, charts: [] };

// ------------------------------------------------------------------ helpers
function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

class ApiError extends Error {
  constructor(code, message, status) { super(message); this.code = code; this.status = status; }
}

async function api(method, path, body) {
  const headers = {};
  const key = sessionStorage.getItem("lamina-key");
  if (key) headers["Authorization"] = `Bearer ${key}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const res = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const data = await res.json().catch(() => ({ error: { code: "INTERNAL", message: `HTTP ${res.status}` } }));
  if (!res.ok) {
    const err = data.error || { code: "INTERNAL", message: `HTTP ${res.status}` };
    throw new ApiError(err.code, err.message, res.status);
  }
  return data;
}

const fmt = new Intl.NumberFormat("en-US");
function bytes(n) {
  if (n === null || n === undefined) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}
const json = (v) => JSON.stringify(v);
const errorBox = (id, err) => h("div", { class: "error", id, role: "alert" }, `${err.code}: ${err.message}`);

function parseJsonField(text, what) {
  if (!text.trim()) return undefined;
  try { return JSON.parse(text); } catch (e) { throw new ApiError("INVALID_ARGUMENT", `${what} is not valid JSON: ${e.message}`); }
}

// A point id typed in a box: digits are an integer id, "quoted" text a string id (so that
// the string "42" can be asked for), anything else a string id.
function parseId(text) {
  const t = text.trim();
  if (t.startsWith('"')) return parseJsonField(t, "point id");
  return /^(0|[1-9]\d*)$/.test(t) && Number.isSafeInteger(Number(t)) ? Number(t) : t;
}

function showId(id) {
  return typeof id === "string" && /^\d+$/.test(id) ? JSON.stringify(id) : String(id);
}

function stopLive() {
  if (state.timer) clearInterval(state.timer);
  state.timer = null;
  for (const c of state.charts) c.destroy();
  state.charts = [];
}

// ------------------------------------------------------------------ session and key
function keyForm(message) {
  const input = h("input", { id: "api-key", type: "password", size: 56, placeholder: "lam_…", autocomplete: "off" });
  const form = h("form", { id: "key-form", class: "card", onsubmit: (e) => {
    e.preventDefault();
    sessionStorage.setItem("lamina-key", input.value.trim());
    start();
  } },
    h("h1", {}, "API key"),
    h("p", { class: "muted" }, "This server requires an API key. What the console shows and allows follows the key's role, collections and tenants. The key is kept in this tab only."),
    message ? h("div", { class: "error", id: "key-error" }, message) : null,
    h("div", { class: "row" }, input, h("button", { id: "key-submit", type: "submit" }, "Use key")));
  main.replaceChildren(form);
}

async function start() {
  stopLive();
  try {
    state.session = await api("GET", "/api/session");
  } catch (err) {
    if (err.code === "UNAUTHENTICATED") {
      const had = sessionStorage.getItem("lamina-key");
      sessionStorage.removeItem("lamina-key");
      return keyForm(had ? err.message : null);
    }
    return main.replaceChildren(errorBox("session-error", err));
  }
  const key = state.session.key;
  const who = document.getElementById("whoami");
  who.replaceChildren(
    key ? `key ${key.name} · ${key.role}${key.collections ? " · " + key.collections.join(", ") : ""}${key.tenants ? " · tenants " + key.tenants.join(", ") : ""} ` : "no API keys (loopback only) ",
    key ? h("button", { class: "secondary", id: "sign-out", onclick: () => { sessionStorage.removeItem("lamina-key"); start(); } }, "Forget key") : null);
  route();
}

// ------------------------------------------------------------------ pages
async function loadCollections() {
  state.collections = (await api("GET", "/api/collections")).collections;
  return state.collections;
}

async function collectionPicker(page, current) {
  const cols = state.collections.length ? state.collections : await loadCollections();
  const select = h("select", { id: "collection-select", onchange: () => { location.hash = `#/${page}/${encodeURIComponent(select.value)}`; } },
    cols.map((c) => h("option", { value: c.name, selected: c.name === current }, c.name)));
  return { select, name: current || (cols[0] && cols[0].name) };
}

function describeConfig(c) {
  const q = c.quantization;
  return [
    h("span", { class: "tag" }, c.metric), h("span", { class: "tag" }, `dim ${c.dim}`),
    h("span", { class: "tag" }, c.index.type === "hnsw" ? `hnsw m=${c.index.m} ef=${c.index.ef}` : c.index.type),
    h("span", { class: "tag" }, q ? (q.type === "pq" ? `pq m=${q.m}` : `binary ${q.bits}b`) + ` ×${q.oversample}` : "full precision"),
    c.multi_tenant ? h("span", { class: "tag" }, "multi-tenant") : null,
    c.embedding ? h("span", { class: "tag" }, `embedding ${c.embedding.model || c.embedding}`) : null,
    c.shards > 1 || c.replicas > 1 ? h("span", { class: "tag" }, `${c.shards} shards × ${c.replicas}`) : null,
  ];
}

async function pageCollections() {
  const cols = await loadCollections();
  const allowed = state.session.allowed;
  const rows = cols.map((c) => {
    const s = c.status;
    const indexes = Object.entries(c.config.payload_index || {}).map(([f, t]) => `${f} (${t})`).join(", ") || "–";
    const canDelete = c.allowed.delete_collection;
    return h("tr", { "data-collection": c.name },
      h("td", {}, h("a", { href: `#/points/${encodeURIComponent(c.name)}` }, c.name)),
      h("td", {}, describeConfig(c.config)),
      h("td", {}, indexes),
      h("td", { class: "num" }, state.session.key && state.session.key.tenants ? "–" : fmt.format(c.count)),
      h("td", { class: "num" }, s.segments), h("td", { class: "num" }, bytes(s.index_bytes)),
      h("td", {}, s.optimizing ? "optimizing" : "idle", s.note ? h("div", { class: "muted" }, s.note) : null),
      h("td", {},
        h("a", { href: `#/search/${encodeURIComponent(c.name)}` }, "search"), " ",
        canDelete ? h("button", { class: "danger delete-collection", "data-name": c.name, onclick: () => deleteCollection(c.name) }, "Delete") : null));
  });
  main.replaceChildren(
    h("h1", {}, "Collections"),
    cols.length ? h("table", { id: "collections-table" },
      h("thead", {}, h("tr", {}, ["name", "settings", "payload indexes", "points", "segments", "index memory", "optimizer", ""].map((t) => h("th", {}, t)))),
      h("tbody", {}, rows)) : h("p", { class: "muted", id: "no-collections" }, "No collections yet."),
    allowed.create_collection ? createForm() : null);
}

async function deleteCollection(name) {
  if (!confirm(`Delete collection "${name}" and all its points? This cannot be undone.`)) return;
  try { await api("DELETE", `/api/collections/${encodeURIComponent(name)}`); } catch (err) { alert(`${err.code}: ${err.message}`); }
  pageCollections();
}

function createForm() {
  const name = h("input", { id: "new-name", placeholder: "name" });
  const dim = h("input", { id: "new-dim", type: "number", min: 1, value: 384 });
  const metric = h("select", { id: "new-metric" }, ["cosine", "dot", "l2"].map((m) => h("option", { value: m }, m)));
  const index = h("select", { id: "new-index" }, ["hnsw", "flat"].map((m) => h("option", { value: m }, m)));
  const quant = h("select", { id: "new-quant" }, [["", "none"], ["binary", "binary"], ["pq", "pq"]].map(([v, t]) => h("option", { value: v }, t)));
  const tenant = h("input", { id: "new-multi-tenant", type: "checkbox" });
  const out = h("div");
  const submit = async (e) => {
    e.preventDefault();
    const body = { name: name.value.trim(), dim: Number(dim.value), metric: metric.value, index: { type: index.value }, multi_tenant: tenant.checked };
    if (quant.value === "binary") body.quantization = { type: "binary" };
    if (quant.value === "pq") body.quantization = { type: "pq", m: 8 };
    try { await api("POST", "/api/collections", body); pageCollections(); } catch (err) { out.replaceChildren(errorBox("create-error", err)); }
  };
  return h("form", { class: "card", id: "create-form", onsubmit: submit },
    h("h2", {}, "Create a collection"),
    h("div", { class: "row" },
      h("label", {}, "name", name), h("label", {}, "dimension", dim), h("label", {}, "metric", metric),
      h("label", {}, "index", index), h("label", {}, "quantization", quant), h("label", {}, "multi-tenant", tenant),
      h("button", { id: "create-submit", type: "submit" }, "Create")), out);
}

function tenantInput(id, col) {
  const restricted = state.session.key && state.session.key.tenants;
  if (restricted) return h("select", { id }, restricted.map((t) => h("option", { value: t }, t)));
  return h("input", { id, placeholder: col && col.config.multi_tenant ? "required" : "–", size: 12 });
}

async function pagePoints(name) {
  const { select, name: current } = await collectionPicker("points", name);
  if (!current) return main.replaceChildren(h("p", { class: "muted" }, "No collections yet."));
  const col = state.collections.find((c) => c.name === current);
  const filter = h("textarea", { id: "filter", placeholder: '{"lang": "en", "year": {"$gte": 2020}}' });
  const tenant = tenantInput("points-tenant", col);
  const out = h("div", { id: "points-out" });
  const detail = h("div", { id: "point-detail" });
  let offsets = [null];
  const load = async (page) => {
    let body;
    try {
      body = { limit: 20, offset: offsets[page], filter: parseJsonField(filter.value, "filter"), tenant: tenant.value || undefined };
      const [res, count] = await Promise.all([
        api("POST", `/api/collections/${encodeURIComponent(current)}/scroll`, body),
        api("POST", `/api/collections/${encodeURIComponent(current)}/count`, { filter: body.filter, tenant: body.tenant }),
      ]);
      offsets[page + 1] = res.next_offset;
      out.replaceChildren(
        h("p", { class: "muted", id: "points-count" }, `${fmt.format(count.count)} points match`),
        h("table", { id: "points-table" },
          h("thead", {}, h("tr", {}, h("th", {}, "id"), h("th", {}, "payload"))),
          h("tbody", {}, res.points.map((p) => h("tr", { "data-id": json(p.id) },
            h("td", {}, h("a", { href: "#", class: "point-link", onclick: (e) => { e.preventDefault(); showPoint(current, p.id, body.tenant, detail); } }, json(p.id))),
            h("td", {}, h("pre", {}, json(p.payload))))))),
        h("div", { class: "row" },
          page > 0 ? h("button", { class: "secondary", id: "prev-page", onclick: () => load(page - 1) }, "← previous") : null,
          res.next_offset !== null ? h("button", { class: "secondary", id: "next-page", onclick: () => load(page + 1) }, "next →") : null));
    } catch (err) {
      out.replaceChildren(errorBox("filter-error", err));
    }
  };
  main.replaceChildren(
    h("h1", {}, "Points"),
    h("div", { class: "row" }, h("label", {}, "collection", select), h("label", {}, "tenant", tenant)),
    h("label", { class: "muted" }, "filter (Mongo-style JSON, as in the API)"), filter,
    h("div", { class: "row" }, h("button", { id: "apply-filter", onclick: () => { offsets = [null]; load(0); } }, "Apply")),
    out, detail);
  load(0);
}

async function showPoint(collection, id, tenant, where) {
  try {
    const res = await api("POST", `/api/collections/${encodeURIComponent(collection)}/points`, { ids: [id], tenant, with_vector: true });
    const p = res.points[0];
    if (!p) throw new ApiError("NOT_FOUND", `point ${json(id)} is gone`);
    const v = p.vector || [];
    where.replaceChildren(h("div", { class: "card", id: "point-card" },
      h("h2", {}, `Point ${json(p.id)}`),
      h("pre", {}, JSON.stringify(p.payload, null, 2)),
      h("p", { class: "muted" }, `vector (${v.length} dims): `, h("span", { class: "mono" }, v.slice(0, 16).map((x) => x.toFixed(4)).join(", ") + (v.length > 16 ? ", …" : ""))),
      h("a", { href: `#/search/${encodeURIComponent(collection)}?id=${encodeURIComponent(json(p.id))}` }, "more like this")));
  } catch (err) {
    where.replaceChildren(errorBox("point-error", err));
  }
}

async function pageSearch(name, query) {
  const { select, name: current } = await collectionPicker("search", name);
  if (!current) return main.replaceChildren(h("p", { class: "muted" }, "No collections yet."));
  const col = state.collections.find((c) => c.name === current);
  // Modes: by a point's id or by a pasted vector; a text mode joins them when the
  // collection has an embedding model (config.embedding): the server embeds the text.
  const modes = [["id", "point id (more like this)"], ["vector", "vector"]];
  if (col && col.config.embedding) modes.push(["text", "text"]);
  const mode = h("select", { id: "search-mode" }, modes.map(([v, t]) => h("option", { value: v }, t)));
  const preset = query.get("id");
  const idInput = h("input", { id: "search-id", size: 24, value: preset ? showId(JSON.parse(preset)) : "" });
  const vecInput = h("textarea", { id: "search-vector", placeholder: "[0.1, 0.2, …]" });
  const textInput = h("input", { id: "search-text", size: 48, placeholder: "a question or keywords" });
  const k = h("input", { id: "k", type: "number", min: 1, value: 10, size: 4 });
  const ef = h("input", { id: "ef", type: "number", min: 1, placeholder: "default", size: 6 });
  const over = h("input", { id: "oversample", type: "number", min: 1, step: "any", placeholder: "default", size: 6 });
  const exact = h("input", { id: "exact", type: "checkbox" });
  const filter = h("textarea", { id: "search-filter", placeholder: "filter (JSON), optional" });
  const tenant = tenantInput("search-tenant", col);
  const out = h("div", { id: "search-out" });
  const which = () => {
    idInput.parentElement.hidden = mode.value !== "id";
    vecInput.parentElement.hidden = mode.value !== "vector";
    textInput.parentElement.hidden = mode.value !== "text";
  };
  mode.addEventListener("change", which);
  const run = async () => {
    try {
      const body = { k: Number(k.value), filter: parseJsonField(filter.value, "filter"), tenant: tenant.value || undefined, explain: true, exact: exact.checked };
      if (ef.value) body.ef = Number(ef.value);
      if (over.value) body.oversample = Number(over.value);
      if (mode.value === "id") body.id = parseId(idInput.value);
      else if (mode.value === "text") body.text = textInput.value;
      else body.vector = parseJsonField(vecInput.value, "vector");
      const res = await api("POST", `/api/collections/${encodeURIComponent(current)}/search`, body);
      out.replaceChildren(
        h("h2", {}, `${res.hits.length} hits`),
        h("table", { id: "hits" },
          h("thead", {}, h("tr", {}, h("th", {}, "#"), h("th", {}, "id"), h("th", { class: "num" }, "score"), h("th", {}, "payload"))),
          h("tbody", {}, res.hits.map((hit, i) => h("tr", { "data-id": json(hit.id) },
            h("td", {}, i + 1), h("td", {}, json(hit.id)), h("td", { class: "num" }, hit.score.toFixed(4)), h("td", {}, h("pre", {}, json(hit.payload))))))),
        res.plan ? planTable(res.plan) : null);
    } catch (err) {
      out.replaceChildren(errorBox("search-error", err));
    }
  };
  main.replaceChildren(
    h("h1", {}, "Search playground"),
    h("div", { class: "row" }, h("label", {}, "collection", select), h("label", {}, "by", mode),
      h("label", {}, "point id", idInput), h("label", {}, "tenant", tenant)),
    h("label", {}, vecInput),
    h("label", {}, "text", textInput),
    h("div", { class: "row" }, h("label", {}, "k", k), h("label", {}, "ef", ef), h("label", {}, "oversample", over), h("label", {}, "exact", exact)),
    filter,
    h("div", { class: "row" }, h("button", { id: "run-search", onclick: run }, "Search")),
    out);
  which();
  if (preset) run();
}

function planTable(plan) {
  return h("div", { id: "plan" },
    h("h2", {}, `Query plan: ${plan.hits} hits in ${(plan.seconds * 1000).toFixed(2)} ms`),
    h("p", { class: "muted" }, `payload indexes used: ${plan.indexed_fields.join(", ") || "–"}; checked against payloads: ${plan.unindexed_fields.join(", ") || "–"}`),
    plan.segments.length ? null : h("p", { class: "muted" }, "No filter: every segment was searched through its index."),
    h("table", {},
      h("thead", {}, h("tr", {}, ["segment", "rows", "matches", "method", "reason", "ms"].map((t) => h("th", {}, t)))),
      h("tbody", {}, plan.segments.map((s) => h("tr", {},
        h("td", {}, s.segment), h("td", { class: "num" }, fmt.format(s.rows)), h("td", { class: "num" }, fmt.format(s.matches)),
        h("td", {}, s.method), h("td", {}, s.reason), h("td", { class: "num" }, (s.seconds * 1000).toFixed(2)))))));
}

async function pageTenants(name) {
  const { select, name: current } = await collectionPicker("tenants", name);
  if (!current) return main.replaceChildren(h("p", { class: "muted" }, "No collections yet."));
  const col = state.collections.find((c) => c.name === current);
  const body = h("div", { id: "tenants-out" });
  main.replaceChildren(h("h1", {}, "Tenants"), h("div", { class: "row" }, h("label", {}, "collection", select)), body);
  if (col && !col.config.multi_tenant) return body.replaceChildren(h("p", { class: "muted" }, `${current} is not multi-tenant.`));
  try {
    const res = await api("GET", `/api/collections/${encodeURIComponent(current)}/tenants`);
    body.replaceChildren(h("table", { id: "tenants-table" },
      h("thead", {}, h("tr", {}, h("th", {}, "tenant"), h("th", { class: "num" }, "points"), h("th", {}, "index"))),
      h("tbody", {}, res.tenants.map((t) => h("tr", {}, h("td", {}, t.name), h("td", { class: "num" }, fmt.format(t.points)),
        h("td", {}, t.indexed ? "own HNSW partition" : "searched exactly"))))));
  } catch (err) {
    body.replaceChildren(errorBox("tenants-error", err));
  }
}

async function pageSnapshots(name) {
  const { select, name: current } = await collectionPicker("snapshots", name);
  if (!current) return main.replaceChildren(h("p", { class: "muted" }, "No collections yet."));
  const col = state.collections.find((c) => c.name === current);
  const allowed = col ? col.allowed : {};
  const body = h("div", { id: "snapshots-out" });
  const refresh = async () => {
    try {
      const res = await api("GET", `/api/collections/${encodeURIComponent(current)}/snapshots`);
      body.replaceChildren(res.snapshots.length ? h("table", { id: "snapshots-table" },
        h("thead", {}, h("tr", {}, ["snapshot", "created", "points", "size", "path", ""].map((t) => h("th", {}, t)))),
        h("tbody", {}, res.snapshots.map((s) => h("tr", { "data-snapshot": s.name },
          h("td", {}, s.name), h("td", {}, new Date(s.created * 1000).toLocaleString()), h("td", { class: "num" }, fmt.format(s.points)),
          h("td", { class: "num" }, bytes(s.size_bytes)), h("td", { class: "mono" }, s.path),
          h("td", {}, allowed.delete_snapshot ? h("button", { class: "danger delete-snapshot", onclick: async () => {
            if (!confirm(`Delete snapshot ${s.name}?`)) return;
            try { await api("DELETE", `/api/collections/${encodeURIComponent(current)}/snapshots/${encodeURIComponent(s.name)}`); } catch (err) { alert(`${err.code}: ${err.message}`); }
            refresh();
          } }, "Delete") : null))))) : h("p", { class: "muted" }, "No snapshots."));
    } catch (err) {
      body.replaceChildren(errorBox("snapshots-error", err));
    }
  };
  main.replaceChildren(h("h1", {}, "Snapshots"),
    h("div", { class: "row" }, h("label", {}, "collection", select),
      allowed.create_snapshot ? h("button", { id: "create-snapshot", onclick: async () => {
        try { await api("POST", `/api/collections/${encodeURIComponent(current)}/snapshots`); } catch (err) { alert(`${err.code}: ${err.message}`); }
        refresh();
      } }, "Take a snapshot") : null),
    body);
  refresh();
}

async function pageMetrics() {
  const charts = [
    { id: "chart-qps", title: "Requests / s", series: [["qps", "requests/s", "#2f5fd0"], ["errors", "errors/s", "#b42318"]], scale: (v) => v },
    { id: "chart-latency", title: "Latency (ms)", series: [["p50", "p50", "#2f5fd0"], ["p99", "p99", "#d97706"]], scale: (v) => v === null ? null : v * 1000 },
    { id: "chart-memory", title: "Memory (MiB)", series: [["rss_bytes", "process RSS", "#047857"], ["index_bytes", "index tier", "#7c3aed"]], scale: (v) => v === null ? null : v / 1048576 },
    { id: "chart-points", title: "Points", series: [["points", "points", "#0e7490"]], scale: (v) => v },
  ];
  const grid = h("div", { class: "charts" });
  const status = h("p", { class: "muted", id: "metrics-status" }, "Sampled every 2 s from the server's own metrics.");
  main.replaceChildren(h("h1", {}, "Metrics"), status, grid);
  const width = Math.min(560, Math.max(360, (main.clientWidth - 24) / 2));
  for (const c of charts) {
    const box = h("div", { class: "card", id: c.id });
    grid.append(box);
    c.plot = new uPlot({
      title: c.title, width, height: 220,
      scales: { x: { time: true } },
      series: [{}, ...c.series.map(([, label, stroke]) => ({ label, stroke, width: 2, spanGaps: false }))],
      axes: [{}, { size: 60 }],
    }, [[], ...c.series.map(() => [])], box);
    state.charts.push(c.plot);
  }
  const tick = async () => {
    try {
      const m = await api("GET", "/api/metrics");
      for (const c of charts) c.plot.setData([m.time, ...c.series.map(([key]) => m[key].map(c.scale))]);
      const last = m.time.length - 1;
      status.textContent = last >= 0
        ? `Sampled every ${m.interval_seconds} s · last: ${m.qps[last].toFixed(1)} requests/s, p99 ${m.p99[last] === null ? "–" : (m.p99[last] * 1000).toFixed(1) + " ms"}`
        : "Waiting for the first samples…";
      main.dataset.samples = String(m.time.length);
    } catch (err) {
      status.replaceChildren(errorBox("metrics-error", err));
    }
  };
  await tick();
  state.timer = setInterval(tick, 2000);
}

// ------------------------------------------------------------------ routing
async function route() {
  stopLive();
  if (!state.session) return;
  const [path, qs] = (location.hash.slice(1) || "/collections").split("?");
  const [, page, arg] = path.split("/");
  const name = arg ? decodeURIComponent(arg) : undefined;
  for (const a of document.querySelectorAll("#nav a")) a.classList.toggle("active", a.dataset.page === page);
  const pages = { collections: pageCollections, points: pagePoints, search: pageSearch, tenants: pageTenants, snapshots: pageSnapshots, metrics: pageMetrics };
  try {
    await (pages[page] || pageCollections)(name, new URLSearchParams(qs || ""));
  } catch (err) {
    if (err.code === "UNAUTHENTICATED") return start();
    main.replaceChildren(errorBox("page-error", err));
  }
}

window.addEventListener("hashchange", route);
start();
