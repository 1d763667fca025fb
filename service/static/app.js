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

function currentModel() { return state.models.find((m) => m.name === $("model").value); }

async function loadModels() {
  state.models = await api("/v1/models");
  $("model").innerHTML = state.models.map((m) => `<option value="${m.name}">${m.name} (${m.version})</option>`).join("");
  renderCard();
}

function show(view) {
  $("inspect-view").hidden = view !== "inspect";
  $("model-view").hidden = view !== "model";
  if (view === "model") renderCard();
}

function renderCard() {
  const m = currentModel();
  if (!m) { $("card").innerHTML = "<tr><td>No model loaded</td></tr>"; return; }
  const rows = [["Name", m.name], ["Version", m.version], ["Backbone", `${m.backbone} stages ${m.stages.join(", ")}`],
    ["Input", `${m.preprocess.mode} ${m.preprocess.size} px`], ["SAE", `${m.sae.n_latents} atoms, k = ${m.sae.k}`],
    ["Threshold", m.threshold.toFixed(4)], ["False-alarm target (alpha)", m.alpha],
    ["Calibration images", m.calibration_size], ["Created", m.provenance.created || "-"],
    ["Training images", m.provenance.n_fit_images ?? "-"], ["Code", m.provenance.code_version || "-"]];
  $("card").innerHTML = rows.map(([k, v]) => `<tr><td>${k}</td><td>${v}</td></tr>`).join("");
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
  } catch (e) {
    $("result").hidden = false;
    $("verdict").className = "verdict anomalous"; $("verdict").textContent = "error";
    $("score-text").textContent = e.message; $("pvalue").textContent = "";
    return;
  }
  const url = URL.createObjectURL(file);
  render(res, url);
  state.recent.unshift({ url, verdict: res.verdict, score: res.score, name: file.name });
  state.recent = state.recent.slice(0, 12);
  $("recent").innerHTML = state.recent.map((r) =>
    `<figure><img class="${r.verdict}" src="${r.url}" alt="${r.name}"><figcaption>${r.verdict} ${r.score.toFixed(3)}</figcaption></figure>`).join("");
}

function render(res, url) {
  $("result").hidden = false;
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
  $("boxes").innerHTML = res.regions.map((r) => {
    const l = (100 * r.x) / res.image_width, t = (100 * r.y) / res.image_height;
    const w = (100 * r.width) / res.image_width, h = (100 * r.height) / res.image_height;
    return `<div class="box" style="left:${l}%;top:${t}%;width:${w}%;height:${h}%" title="peak ${r.peak.toFixed(3)}"></div>`;
  }).join("");
  const ex = res.explanation;
  $("explanation").innerHTML = !ex ? "" : ex.regions.map((r, i) => `
    <div class="region">
      <b>Region ${i + 1}</b> at (${r.x}, ${r.y}) ${r.width}x${r.height}: ${(100 * r.error_share).toFixed(0)}% of the error.
      <b>${r.kind === "novel" ? "Looks like nothing in good products" : "Looks like a different part of good products"}</b>
      (novelty ${r.novelty.toFixed(2)}, misplacement ${r.misplacement.toFixed(2)})
      <div>Unusual features here:</div>
      <div>${r.unusual.map((u) => `<span class="latent">#${u.latent} ${u.never_seen ? "never seen on good parts" : `fires ${(100 * u.region_rate).toFixed(0)}% here vs ${(100 * u.good_rate).toFixed(2)}% on good parts`}
        <span class="crops">${u.atlas.map((a) => `<img src="data:image/png;base64,${a}" alt="atlas">`).join("")}</span></span>`).join("")}</div>
      <div>What good products show at this place:</div>
      <div>${r.expected.map((e) => `<span class="latent">#${e.latent} (${(100 * e.rate_here).toFixed(0)}%)
        <span class="crops">${e.atlas.map((a) => `<img src="data:image/png;base64,${a}" alt="expected atlas">`).join("")}</span></span>`).join("")}</div>
    </div>`).join("");
}

$("opacity").addEventListener("input", () => { $("overlay").style.opacity = $("opacity").value / 100; });
$("file").addEventListener("change", (e) => e.target.files[0] && inspect(e.target.files[0]));
$("model").addEventListener("change", renderCard);
const drop = $("drop");
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => { e.preventDefault(); drop.classList.remove("over"); if (e.dataTransfer.files[0]) inspect(e.dataTransfer.files[0]); });
window.addEventListener("hashchange", () => show(location.hash === "#model" ? "model" : "inspect"));
loadModels().then(() => show(location.hash === "#model" ? "model" : "inspect"));
