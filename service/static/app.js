// SAE Inspect console: plain JS, everything served by the service itself.
"use strict";
const $ = (id) => document.getElementById(id);
const state = { models: [], recent: [] };

async function api(path, options) {
  const r = await fetch(path, options);
  const body = await r.json();
  if (!r.ok) throw new Error(body.detail || r.statusText);
  return body;
}

// Everything that comes from a request or a model (file names, model names, versions) becomes text
// nodes or attribute values set through the DOM, never HTML: no innerHTML with data anywhere.
function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (k === "style") Object.assign(node.style, v);
    else if (k === "text") node.textContent = v;
    else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c);  // strings become text nodes
  return node;
}

function currentModel() { return state.models.find((m) => m.name === $("model").value); }

async function loadModels() {
  state.models = await api("/v1/models");
  $("model").replaceChildren(...state.models.map((m) => el("option", { value: m.name }, `${m.name} (${m.version})`)));
  renderCard();
}

function show(view) {
  $("inspect-view").hidden = view !== "inspect";
  $("model-view").hidden = view !== "model";
  if (view === "model") renderCard();
}

function renderCard() {
  const m = currentModel();
  if (!m) { $("card").replaceChildren(el("tr", {}, el("td", {}, "No model loaded"))); return; }
  const canvas = m.provenance.canvas_choice;
  const chosen = canvas ? `, chosen from the images (median long side ${canvas.median_long_side} px)` : "";
  const rows = [["Name", m.name], ["Version", m.version], ["Backbone", `${m.backbone} stages ${m.stages.join(", ")}`],
    ["Input", `${m.preprocess.mode} ${m.preprocess.size} px${chosen}`], ["SAE", `${m.sae.n_latents} atoms, k = ${m.sae.k}`],
    ["Threshold", m.threshold.toFixed(4)], ["False-alarm rate (alpha, on average)", m.alpha],
    ["False-alarm rate, 90 % confidence", `at most ${m.false_alarm_rate_90.toFixed(4)}`],
    ["Calibration images", m.provenance.n_calibration_parts
      ? `${m.calibration_size}, from ${m.provenance.n_calibration_parts} parts` : m.calibration_size],
    ["Created", m.provenance.created || "-"],
    ["Training images", m.provenance.n_fit_images ?? "-"], ["Code", m.provenance.code_version || "-"]];
  rows.push(["Scoring", `${m.scoring.normalize}, image score ${m.scoring.image_score}`]);
  $("card").replaceChildren(...rows.map(([k, v]) => el("tr", {}, el("td", {}, k), el("td", {}, String(v)))));
  drawHistogram(m);
}

function drawHistogram(m) {
  const c = $("histogram"), g = c.getContext("2d"), s = m.calibration_scores;
  g.clearRect(0, 0, c.width, c.height);
  if (!s.length) return;
  const lo = Math.min(...s), hi = Math.max(...s, m.threshold) * 1.05, bins = 30, counts = new Array(bins).fill(0);
  s.forEach((v) => counts[Math.min(bins - 1, Math.floor(((v - lo) / (hi - lo)) * bins))]++);
  const top = Math.max(...counts), w = c.width / bins;
  g.fillStyle = "#3d6fd8";
  counts.forEach((n, i) => g.fillRect(i * w + 1, c.height - 20 - (n / top) * (c.height - 30), w - 2, (n / top) * (c.height - 30)));
  const x = ((m.threshold - lo) / (hi - lo)) * c.width;
  g.fillStyle = "#c0271b"; g.fillRect(x, 0, 2, c.height - 20);
  g.fillStyle = "#1d2330"; g.font = "12px sans-serif";
  g.fillText(lo.toFixed(3), 2, c.height - 4); g.fillText(hi.toFixed(3), c.width - 40, c.height - 4);
  g.fillText(`threshold ${m.threshold.toFixed(3)}`, Math.min(x + 4, c.width - 110), 12);
}

async function inspect(file) {
  const name = $("model").value;
  const form = new FormData();
  form.append("file", file);
  let res;
  try {
    res = await api(`/v1/models/${encodeURIComponent(name)}/inspect?heatmap=png&explain=true`, { method: "POST", body: form });
  } catch (e) {  // an error is not a verdict: clear the previous result and say what went wrong
    $("result").hidden = false;
    $("verdict").className = "verdict error"; $("verdict").textContent = "ERROR";
    $("score-text").textContent = `${file.name}: ${e.message}`; $("pvalue").textContent = "";
    $("photo").removeAttribute("src"); $("overlay").removeAttribute("src");
    $("boxes").replaceChildren(); $("explanation").replaceChildren();
    return;
  }
  const url = URL.createObjectURL(file);
  state.last = res;
  render(res, url);
  state.recent.unshift({ url, verdict: res.verdict, score: res.score, name: file.name });
  state.recent = state.recent.slice(0, 12);
  $("recent").replaceChildren(...state.recent.map((r) => el("figure", {},
    el("img", { class: r.verdict, src: r.url, alt: r.name, title: r.name }),
    el("figcaption", {}, `${r.verdict} ${r.score.toFixed(3)} ${r.name}`))));
}

function render(res, url) {
  $("result").hidden = false;
  $("fb-status").textContent = "";
  $("fb-good").disabled = $("fb-defect").disabled = false;
  $("verdict").className = `verdict ${res.verdict}`;
  $("verdict").textContent = res.verdict === "anomalous" ? "ANOMALOUS" : "GOOD";
  $("score-text").textContent = `score ${res.score.toFixed(4)} / threshold ${res.threshold.toFixed(4)}`;
  $("pvalue").textContent = `p = ${res.p_value.toFixed(4)}`;
  const full = Math.max(res.score, res.threshold) * 1.25;
  $("score-bar").style.width = `${(100 * res.score) / full}%`;
  $("threshold-mark").style.left = `${(100 * res.threshold) / full}%`;
  $("photo").src = url;
  $("overlay").src = `data:image/png;base64,${res.heatmap.data}`;
  $("overlay").style.opacity = $("opacity").value / 100;
  $("boxes").replaceChildren(...res.regions.map((r) => el("div", {
    class: "box", title: `peak ${r.peak.toFixed(3)}`,
    style: { left: `${(100 * r.x) / res.image_width}%`, top: `${(100 * r.y) / res.image_height}%`,
      width: `${(100 * r.width) / res.image_width}%`, height: `${(100 * r.height) / res.image_height}%` },
  })));
  const ex = res.explanation;
  const crops = (list, alt) => el("span", { class: "crops" },
    ...list.map((a) => el("img", { src: `data:image/png;base64,${a}`, alt })));
  $("explanation").replaceChildren(...(!ex || res.verdict !== "anomalous" ? [] : ex.regions.map((r, i) => el("div", { class: "region" },
    el("b", {}, `Region ${i + 1}`), ` at (${r.x}, ${r.y}) ${r.width}x${r.height}: ${(100 * r.error_share).toFixed(0)}% of the error. `,
    el("b", {}, r.kind === "novel" ? "Looks like nothing in good products" : "Looks like a different part of good products"),
    ` (novelty ${r.novelty.toFixed(2)}, misplacement ${r.misplacement.toFixed(2)})`,
    el("div", {}, "Unusual features here:"),
    el("div", {}, ...r.unusual.map((u) => el("span", { class: "latent" },
      `#${u.latent} ${u.never_seen ? "never seen on good parts"
        : `fires ${(100 * u.region_rate).toFixed(0)}% here vs ${(100 * u.good_rate).toFixed(2)}% on good parts`}`,
      crops(u.atlas, "atlas")))),
    el("div", {}, "What good products show at this place:"),
    el("div", {}, ...r.expected.map((e) => el("span", { class: "latent" },
      `#${e.latent} (${(100 * e.rate_here).toFixed(0)}%)`, crops(e.atlas, "expected atlas"))))))));
}

// Operator feedback: file the last inspected image as good (a false alarm) or as a confirmed defect.
async function sendFeedback(label) {
  const res = state.last;
  if (!res) return;
  try {
    const out = await api(`/v1/models/${encodeURIComponent(res.model)}/feedback`, {
      method: "POST", body: JSON.stringify({ image_id: res.image_id, label }),
      headers: { "content-type": "application/json", authorization: `Bearer ${$("operator-key").value}` } });
    $("fb-status").textContent = `filed as ${out.label}: ${out.file}`;
    $("fb-good").disabled = $("fb-defect").disabled = true;
  } catch (e) {
    $("fb-status").textContent = `not filed: ${e.message}`;
  }
}
$("fb-good").addEventListener("click", () => sendFeedback("good"));
$("fb-defect").addEventListener("click", () => sendFeedback("defect"));
$("opacity").addEventListener("input", () => { $("overlay").style.opacity = $("opacity").value / 100; });
$("file").addEventListener("change", (e) => e.target.files[0] && inspect(e.target.files[0]));
$("model").addEventListener("change", renderCard);
const drop = $("drop");
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => { e.preventDefault(); drop.classList.remove("over"); if (e.dataTransfer.files[0]) inspect(e.dataTransfer.files[0]); });
window.addEventListener("hashchange", () => show(location.hash === "#model" ? "model" : "inspect"));
loadModels().then(() => show(location.hash === "#model" ? "model" : "inspect"));
