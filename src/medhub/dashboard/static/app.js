// medhub dashboard: a hash-routed page over the JSON API (no framework, no build step).
"use strict";

const view = document.getElementById("view");
const state = {overview: null, table: {offset: 0, limit: 25, sort: "case_id", desc: false, q: "", status: ""}};

function esc(text) {
  return String(text ?? "").replace(/[&<>"']/g, c => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;",
    "'": "&#39;"}[c]));
}
function fmt(value) {
  if (value === null || value === undefined) return "–";
  if (typeof value === "number") return Math.abs(value) >= 1000 ? value.toFixed(0) : Number(value.toPrecision(4));
  return esc(value);
}
async function api(path) {
  const response = await fetch(path);
  if (!response.ok) throw new Error((await response.json().catch(() => ({}))).detail || response.statusText);
  return response.json();
}
function setActive(name) {
  for (const link of document.querySelectorAll("header nav a")) link.classList.toggle("active", link.id === name);
}

// ------------------------------------------------------------------------------------------------ overview
async function showOverview() {
  setActive("nav-overview");
  const o = state.overview;
  const statuses = Object.entries(o.statuses).map(([k, v]) =>
    `<div class="card"><div class="muted">${esc(k)}</div><div class="n" id="count-${esc(k)}">${v}</div></div>`);
  const failures = Object.entries(o.failures_by_reason).map(([k, v]) => `<tr><td>${esc(k)}</td><td>${v}</td></tr>`);
  const versions = Object.entries(o.model_versions || {}).map(([k, v]) => `${esc(k)} (${v})`).join(", ");
  let html = `<h2>Overview: ${esc(o.kind)}</h2>
    <div class="cards"><div class="card"><div class="muted">cases</div><div class="n" id="count-total">${o.total}</div>
    </div>${statuses.join("")}</div>
    ${o.model?.id ? `<p>Model: <b>${esc(o.model.id)}</b> ${esc(o.model.version || "")} ${versions ? "— versions: " +
      versions : ""}</p>` : ""}<h3>Failures by reason</h3>
    ${failures.length ? `<table id="failures"><tr><th>reason</th><th>cases</th></tr>${failures.join("")}</table>` :
      `<p class="muted" id="failures">none</p>`}`;
  if (o.risk_categories) {
    const total = Math.max(1, ...Object.values(o.risk_categories));
    html += `<h3>Risk categories</h3><div class="bars" id="categories">${Object.entries(o.risk_categories).map(
      ([k, v]) => `<div class="bar"><span style="width:70px">${esc(k)}</span><span class="fill" style="width:${
        300 * v / total}px"></span>${v}</div>`).join("")}</div>`;
    const most = Math.max(1, ...o.agatston_histogram.map(b => b.count));
    html += `<h3>Agatston score</h3><svg id="histogram" width="420" height="170">${o.agatston_histogram.map((b, i) =>
      `<rect x="${10 + i * 68}" y="${140 - 120 * b.count / most}" width="56" height="${120 * b.count / most}"
       fill="#5b8def"></rect><text x="${38 + i * 68}" y="158" font-size="11" text-anchor="middle">${esc(b.bin)}</text>
       <text x="${38 + i * 68}" y="${134 - 120 * b.count / most}" font-size="11" text-anchor="middle">${b.count}</text>`
    ).join("")}</svg>`;
  }
  if (o.compare) {
    html += `<h3>Comparison</h3><p>Sources: ${(o.compare.sources || []).map(s => esc(s.name)).join(", ")}; reference:
      ${esc(o.compare.reference?.name || "none (pairwise)")}. <a href="#/compare">Open the compare view</a>.</p>`;
  }
  if (o.evaluation) html += leaderboardHtml(o.evaluation);
  if (o.survival) html += survivalHtml(o.survival);
  view.innerHTML = html;
}

function survivalHtml(s) {
  const num = (v, digits = 3) => v === null || v === undefined ? "–" : Number(v).toPrecision(digits);
  const c = s.concordance || {};
  const cox = (s.cox || []).map(r => `<tr><td>${esc(r.term)}</td><td>${num(r.hr)} <span class="muted">[${
    num(r.hr_low)}, ${num(r.hr_high)}]</span></td><td>${num(r.hr_per_sd)}</td><td>${num(r.p, 2)}</td></tr>`).join("");
  const logrank = s.logrank ? `Log-rank across groups: χ² ${num(s.logrank.chi2)}, df ${s.logrank.df}, p ${
    num(s.logrank.p, 2)}.` : "";
  return `<h3>Survival: ${esc(s.settings?.score)} (${s.n} subjects, ${s.events} events)</h3>
    <p id="c-index">Harrell's C-index ${num(c.c_index)} <span class="muted">[${num(c.c_index_low)}, ${
    num(c.c_index_high)}], ${c.resamples} bootstrap resamples</span>. ${logrank}</p>
    <table id="cox"><tr><th>term</th><th>HR per unit [95 % CI]</th><th>HR per SD</th><th>p</th></tr>${cox}</table>
    ${s.km_plot ? `<p><img id="km" src="${esc(s.km_plot)}" alt="Kaplan–Meier curves by group" style="max-width:640px">
    </p>` : ""}<p><a href="#/cases">Groups: size, events, median survival, HR against the first</a></p>`;
}

function leaderboardHtml(evaluation) {
  const rows = evaluation.leaderboard || [];
  if (!rows.length) return "";
  const metrics = Object.keys(rows[0]).filter(k => /^t\w+_\w+$/.test(k) && !k.endsWith("_rank") &&
    !k.endsWith("_ci_low") && !k.endsWith("_ci_high"));
  const ranks = Object.keys(rows[0]).filter(k => k.endsWith("_rank"));
  const cell = (row, k) => row[k] === null || row[k] === undefined ? "–" : row[k + "_ci_low"] !== undefined &&
    row[k + "_ci_low"] !== null ? `${row[k].toFixed(3)} <span class="muted">[${row[k + "_ci_low"].toFixed(3)}, ${
    row[k + "_ci_high"].toFixed(3)}]</span>` : esc(row[k]);
  return `<h3>Leaderboard (${esc(evaluation.task_set?.name || "")}; lower overall is better; 95 % bootstrap CIs,
    ${evaluation.n_resamples} resamples)</h3><table id="leaderboard"><tr><th>#</th><th>submission</th><th>overall</th>
    <th>tier</th>${ranks.map(k => `<th>${esc(k)}</th>`).join("")}${metrics.map(k => `<th>${esc(k)}</th>`).join("")}
    </tr>${rows.map(r => `<tr><td>${r.position}</td><td>${esc(r.submission)}</td><td>${r.overall.toFixed(2)}</td>
    <td>${r.tier ?? ""}</td>${ranks.map(k => `<td>${r[k].toFixed(2)}</td>`).join("")}${metrics.map(k =>
    `<td>${cell(r, k)}</td>`).join("")}</tr>`).join("")}</table><p><a href="#/cases">Per-case table</a></p>`;
}

// ------------------------------------------------------------------------------------------------ case table
function tableColumns(rows) {
  const base = [["case_id", "case"], ["status", "status"], ["reason_code", "reason"]];
  if (state.overview.risk_categories) base.push(["agatston", "Agatston"], ["risk_category", "category"]);
  const valueNames = new Set();
  for (const row of rows) for (const [k, v] of Object.entries(row.values || {})) if (typeof v === "number")
    valueNames.add(k);
  for (const name of [...valueNames].filter(n => n !== "agatston").slice(0, 4)) base.push(["value:" + name, name]);
  return base;
}
async function showCases() {
  setActive("nav-cases");
  const t = state.table;
  const params = new URLSearchParams({offset: t.offset, limit: t.limit, sort: t.sort, desc: t.desc, q: t.q,
    status: t.status});
  const page = await api("/api/cases?" + params);
  const columns = tableColumns(page.rows);
  const header = columns.map(([key, label]) => `<th data-sort="${esc(key)}" class="${key === t.sort ? "sorted" : ""}">
    ${esc(label)}${key === t.sort ? (t.desc ? " ▼" : " ▲") : ""}</th>`).join("");
  const body = page.rows.map(row => `<tr class="case-row" data-case="${esc(row.case_id)}">${columns.map(([key]) => {
    const value = key.startsWith("value:") ? (row.values || {})[key.slice(6)] : row[key];
    return `<td class="${key === "status" ? esc(value) : ""}">${fmt(value)}</td>`;
  }).join("")}</tr>`).join("");
  const last = Math.min(page.total, t.offset + page.rows.length);
  view.innerHTML = `<h2>Cases</h2><div class="toolbar">
    <input id="case-filter" placeholder="filter: case, patient, reason…" value="${esc(t.q)}" size="32">
    <select id="status-filter"><option value="">all</option><option value="ok">ok</option>
      <option value="failed">failed</option><option value="pending">pending</option></select>
    <button id="prev-page" ${t.offset === 0 ? "disabled" : ""}>‹ prev</button>
    <span id="page-info">${page.total ? t.offset + 1 : 0}–${last} of ${page.total}</span>
    <button id="next-page" ${last >= page.total ? "disabled" : ""}>next ›</button></div>
    <table id="case-table"><tr>${header}</tr>${body}</table>`;
  document.getElementById("status-filter").value = t.status;
  let timer = null;
  document.getElementById("case-filter").addEventListener("input", event => {
    clearTimeout(timer);
    timer = setTimeout(() => { t.q = event.target.value; t.offset = 0; showCases().then(() => {
      const box = document.getElementById("case-filter"); box.focus(); box.setSelectionRange(99, 99); }); }, 250);
  });
  document.getElementById("status-filter").addEventListener("change", e => { t.status = e.target.value;
    t.offset = 0; showCases(); });
  document.getElementById("prev-page").onclick = () => { t.offset = Math.max(0, t.offset - t.limit); showCases(); };
  document.getElementById("next-page").onclick = () => { t.offset += t.limit; showCases(); };
  for (const th of view.querySelectorAll("th[data-sort]")) th.onclick = () => {
    t.desc = th.dataset.sort === t.sort ? !t.desc : false; t.sort = th.dataset.sort; t.offset = 0; showCases(); };
  for (const tr of view.querySelectorAll("tr.case-row")) tr.onclick = () => {
    location.hash = "#/case/" + encodeURIComponent(tr.dataset.case); };
}

// ------------------------------------------------------------------------------------------------ case viewer
async function showCase(caseId) {
  setActive("nav-cases");
  const [detail, meta] = await Promise.all([api(`/api/cases/${encodeURIComponent(caseId)}`),
    api(`/api/cases/${encodeURIComponent(caseId)}/image`).catch(error => ({error: error.message}))]);
  const values = Object.entries(detail.values || {}).map(([k, v]) => `<tr><td>${esc(k)}</td><td>${fmt(v)}</td></tr>`);
  const downloads = (detail.downloads || []).map(d => `<a href="${esc(d.url)}" download>${esc(d.name)}</a>`);
  const source = meta.sources ? meta.sources[0] : null;
  const segments = meta.segments && source ? meta.segments[source] || [] : [];
  const toggles = segments.map(s => `<label><input type="checkbox" class="overlay-toggle" data-label="${s.label}"
    checked><span class="swatch" style="background:rgb(${(s.color || [200, 80, 80]).join(",")})"></span>${
    esc(s.name)}</label>`).join(" ");
  const windows = (meta.windows || []).map(w => `<button class="window-btn" data-window="${esc(w)}">${esc(w)}
    </button>`).join("");
  view.innerHTML = `<h2>Case <span id="case-title">${esc(detail.case_id)}</span>
    <span class="${esc(detail.status)}">${esc(detail.status)}</span></h2>
    ${detail.message ? `<p class="failed">${esc(detail.message)}</p>` : ""}
    <div class="viewer"><div>${meta.error ? `<p class="muted" id="no-image">${esc(meta.error)}</p>` : `
      <img id="slice-image" alt="axial slice" tabindex="0">
      <div class="toolbar"><input type="range" id="slice-slider" min="0" max="${meta.slices - 1}" style="width:380px">
      <span id="slice-label"></span></div>
      <div class="toolbar" id="windows">${windows}</div><div class="toolbar" id="overlays">${toggles}</div>
      ${meta.note ? `<p class="muted">${esc(meta.note)}</p>` : ""}
      <p class="muted">Scroll: mouse wheel, ↑/↓, PgUp/PgDn or the slider. Slice 0 is the most inferior.</p>`}</div>
      <div><div class="panel"><h3>Values</h3><table id="values">${values.join("")}</table>
      <p id="downloads">${downloads.join(" · ") || "<span class='muted'>no files</span>"}</p></div>
      <div class="panel"><h3>Model card</h3><pre id="card">${esc(JSON.stringify(detail.card, null, 1))}</pre></div>
      <div class="panel"><h3>Provenance</h3><pre id="provenance">${esc(JSON.stringify(detail.provenance, null, 1))}
      </pre></div></div></div>`;
  if (meta.error) return;
  const img = document.getElementById("slice-image"), slider = document.getElementById("slice-slider");
  const s = {index: Math.floor(meta.slices / 2), window: meta.default_window};
  const busiest = await findLabelledSlice(caseId, meta);
  if (busiest !== null) s.index = busiest;
  function draw() {
    const labels = [...document.querySelectorAll(".overlay-toggle")].filter(b => b.checked).map(b => b.dataset.label);
    img.src = `/api/cases/${encodeURIComponent(caseId)}/slice/${s.index}.png?window=${s.window}&labels=${
      labels.join(",")}${source ? "&source=" + encodeURIComponent(source) : ""}`;
    slider.value = s.index;
    document.getElementById("slice-label").textContent = `slice ${s.index} / ${meta.slices - 1}`;
    for (const b of document.querySelectorAll(".window-btn")) b.classList.toggle("active", b.dataset.window === s.window);
  }
  function step(delta) { s.index = Math.max(0, Math.min(meta.slices - 1, s.index + delta)); draw(); }
  slider.oninput = () => { s.index = Number(slider.value); draw(); };
  img.addEventListener("wheel", event => { event.preventDefault(); step(event.deltaY > 0 ? -1 : 1); },
    {passive: false});
  document.onkeydown = event => {
    if (!document.getElementById("slice-image")) return;
    const moves = {ArrowUp: 1, ArrowDown: -1, PageUp: 10, PageDown: -10};
    if (event.key in moves) { event.preventDefault(); step(moves[event.key]); }
  };
  for (const b of document.querySelectorAll(".window-btn")) b.onclick = () => { s.window = b.dataset.window; draw(); };
  for (const b of document.querySelectorAll(".overlay-toggle")) b.onchange = draw;
  draw();
  img.focus();
}
async function findLabelledSlice(caseId, meta) {
  // Start where there is something to see: the middle of the slices holding labels, if the API says.
  return meta.labelled_slices && meta.labelled_slices.length ?
    meta.labelled_slices[Math.floor(meta.labelled_slices.length / 2)] : null;
}

// ------------------------------------------------------------------------------------------------ compare
async function showCompare(caseId) {
  setActive("nav-compare");
  const data = await api("/api/compare");
  const rows = (data.summary || []).filter(r => ["dice", "hd95_mm", "nsd"].includes(r.metric)).map(r =>
    `<tr><td>${esc(r.source)}</td><td>${esc(r.reference)}</td><td>${esc(r.segment_name)}</td><td>${esc(r.metric)}
     </td><td>${fmt(r.n)}</td><td>${fmt(r.mean)}</td><td>${fmt(r.ci_low)} – ${fmt(r.ci_high)}</td></tr>`).join("");
  const page = await api("/api/cases?limit=500&status=ok");
  const ids = page.rows.map(r => r.case_id);
  caseId = caseId || ids[0];
  view.innerHTML = `<h2>Compare</h2><table id="compare-summary"><tr><th>source</th><th>reference</th>
    <th>segment</th><th>metric</th><th>n</th><th>mean</th><th>95 % CI</th></tr>${rows}</table>
    <div class="toolbar">case <select id="compare-case">${ids.map(id => `<option ${id === caseId ? "selected" : ""}>${
      esc(id)}</option>`).join("")}</select>
    <select id="left-source"></select> vs <select id="right-source"></select>
    <input type="range" id="compare-slider" style="width:300px"><span id="compare-label"></span></div>
    <div class="pair"><figure><img id="compare-left" alt="left source"><figcaption id="left-caption"></figcaption>
    </figure><figure><img id="compare-right" alt="right source"><figcaption id="right-caption"></figcaption></figure>
    </div>`;
  if (!caseId) return;
  document.getElementById("compare-case").onchange = e => { location.hash = "#/compare/" +
    encodeURIComponent(e.target.value); };
  const meta = await api(`/api/cases/${encodeURIComponent(caseId)}/image`);
  const left = document.getElementById("left-source"), right = document.getElementById("right-source");
  for (const select of [left, right]) select.innerHTML = meta.sources.map(s => `<option>${esc(s)}</option>`).join("");
  right.value = meta.sources[meta.sources.length - 1];
  const slider = document.getElementById("compare-slider");
  slider.min = 0; slider.max = meta.slices - 1;
  let index = meta.labelled_slices && meta.labelled_slices.length ?
    meta.labelled_slices[Math.floor(meta.labelled_slices.length / 2)] : Math.floor(meta.slices / 2);
  function draw() {
    for (const [img, select, caption] of [["compare-left", left, "left-caption"],
      ["compare-right", right, "right-caption"]]) {
      document.getElementById(img).src = `/api/cases/${encodeURIComponent(caseId)}/slice/${index}.png?window=${
        meta.default_window}&source=${encodeURIComponent(select.value)}&size=400`;
      document.getElementById(caption).textContent = select.value;
    }
    slider.value = index;
    document.getElementById("compare-label").textContent = `slice ${index} / ${meta.slices - 1}`;
  }
  slider.oninput = () => { index = Number(slider.value); draw(); };
  left.onchange = right.onchange = draw;
  draw();
}

// ------------------------------------------------------------------------------------------------ router
async function route() {
  try {
    if (!state.overview) {
      state.overview = await api("/api/overview");
      document.getElementById("folder-name").textContent = `${state.overview.kind}: ${state.overview.folder}`;
      document.getElementById("nav-compare").hidden = state.overview.kind !== "compare";
      document.getElementById("anonymized-badge").hidden = !state.overview.anonymized;
    }
    const hash = location.hash.replace(/^#/, "") || "/";
    const [, section, arg] = hash.split("/");
    if (section === "cases") await showCases();
    else if (section === "case") await showCase(decodeURIComponent(arg));
    else if (section === "compare") await showCompare(arg ? decodeURIComponent(arg) : null);
    else await showOverview();
  } catch (error) {
    view.innerHTML = `<p class="failed" id="error">${esc(error.message)}</p>`;
  }
}
window.addEventListener("hashchange", route);
route();
