// The ncdetect page: upload or record audio, show verdicts and per-window timelines. No libraries and
// nothing from other hosts: the server's content security policy allows only its own files.
"use strict";

const FILES_PER_REQUEST = 8;
const MAX_RETRIES = 5;
const SVG_NS = "http://www.w3.org/2000/svg";

const state = { results: [], model: null, recorder: null, chunks: [], recordings: 0 };
const $ = (id) => document.getElementById(id);

function setStatus(text, isError = false) {
  const el = $("status");
  el.textContent = text;
  el.classList.toggle("error", isError);
}

function headers() {
  const key = $("api-key").value.trim();
  return key ? { "X-API-Key": key } : {};
}

function needKey(message) {
  $("key-box").hidden = false;
  $("api-key").focus();
  setStatus(message, true);
}

async function loadModel() {
  try {
    const response = await fetch("/v1/model", { headers: headers() });
    if (response.status === 401) {
      $("model").textContent = "Model details need the API key.";
      needKey("This server needs an API key: enter it, then add files.");
      return;
    }
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    const m = await response.json();
    state.model = m;
    const eer = m.dev_eer === null || m.dev_eer === undefined ? "" : `, dev EER ${m.dev_eer.toFixed(2)}%`;
    $("model").textContent =
      `Model ${m.name}: ${m.architecture} (${(m.parameters / 1e6).toFixed(2)} M parameters, ${m.format}), ` +
      `${m.frontend.name} front-end, ${m.window_s.toFixed(2)} s windows every ${m.hop_s.toFixed(2)} s, ` +
      `threshold ${fmt(m.threshold, 3)}${eer}.`;
    describeCalibration(m.calibration || { calibrated: false });
  } catch (err) {
    $("model").textContent = `Could not read the model details (${err.message}).`;
  }
}

// What the probability column means. A calibrated run maps scores to log-likelihood ratios fitted on a dev
// set; a probability then needs a prior, which the page states. An uncalibrated run has no probability.
function describeCalibration(c) {
  const el = $("calibration");
  el.classList.toggle("uncalibrated", !c.calibrated);
  if (!c.calibrated) {
    $("probability-head").textContent = "P(bonafide)";
    el.textContent = "Uncalibrated model: its scores rank clips but are not probabilities, so none is shown. " +
      "The verdict is bonafide when the score is above the threshold. Calibrate the run (ncdetect " +
      "calibrate) to get probabilities.";
    return;
  }
  $("probability-head").textContent = `P(bonafide) at P(spoof) ${c.prior_spoof}`;
  let text = `Calibrated on ${c.dev}. P(bonafide) assumes that a clip is spoofed with prior probability ` +
    `${c.prior_spoof} before listening.`;
  if (c.probability_threshold !== null) {
    text += ` The verdict is bonafide when P(bonafide) > ${fmt(c.probability_threshold, 3)}, the least ` +
      `costly decision when accepting a spoof costs ${c.cost_fa} and rejecting a bonafide clip ` +
      `${c.cost_miss}.`;
  }
  el.textContent = text;
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function postFiles(files) {
  for (let attempt = 0; ; attempt++) {
    const form = new FormData();
    for (const f of files) form.append("files", f, f.name);
    const response = await fetch("/v1/detect", { method: "POST", body: form, headers: headers() });
    if (response.status === 503 && attempt < MAX_RETRIES) {
      const wait = Number(response.headers.get("Retry-After") || "1");
      setStatus(`The server is busy; trying again in ${wait} s…`);
      await sleep(wait * 1000);
      continue;
    }
    let body = null;
    try { body = await response.json(); } catch (_) { body = null; }
    if (response.ok || (response.status === 422 && Array.isArray(body))) return { body };
    const detail = body && typeof body.detail === "string" ? body.detail : `HTTP ${response.status}`;
    return { status: response.status, detail };
  }
}

async function upload(fileList) {
  const files = Array.from(fileList);
  if (!files.length) return;
  let done = 0;
  let failed = 0;
  for (let i = 0; i < files.length; i += FILES_PER_REQUEST) {
    const part = files.slice(i, i + FILES_PER_REQUEST);
    setStatus(`Scoring ${files.length} file(s): ${done} done…`);
    let outcome;
    try {
      outcome = await postFiles(part);
    } catch (err) {
      outcome = { status: 0, detail: `the server cannot be reached (${err.message})` };
    }
    if (outcome.status === 401) {
      needKey("Wrong or missing API key: enter it, then add the files again.");
      return;
    }
    const entries = outcome.body || part.map((f) => ({ path: f.name, error: outcome.detail }));
    for (const entry of entries) {
      failed += "error" in entry;
      addResult(entry);
    }
    done += part.length;
  }
  const ok = done - failed;
  setStatus(`Scored ${ok} file(s)` + (failed ? `; ${failed} could not be read (see the table).` : "."),
            failed > 0);
}

function fmt(x, digits) {
  return typeof x === "number" && Number.isFinite(x) ? x.toFixed(digits) : "";
}

function cell(row, text, cls) {
  const td = document.createElement("td");
  td.textContent = text;
  if (cls) td.className = cls;
  row.appendChild(td);
  return td;
}

function addResult(r) {
  state.results.push(r);
  const row = document.createElement("tr");
  cell(row, r.path, "file");
  if ("error" in r) {
    const td = cell(row, `error: ${r.error}`, "error");
    td.colSpan = 4;
  } else {
    const verdict = cell(row, r.label, `verdict ${r.label}`);
    verdict.setAttribute("data-label", r.label);
    if (r.probability === null || r.probability === undefined) cell(row, "uncalibrated", "num na");
    else cell(row, fmt(r.probability, 3), "num");
    cell(row, fmt(r.score, 3), "num");
    cell(row, fmt(r.duration_s, 2), "num");
    $("timelines").appendChild(timeline(r, state.results.length));
  }
  $("results").tBodies[0].appendChild(row);
  for (const id of ["download-csv", "download-json", "clear"]) $(id).disabled = false;
}

function svg(tag, attrs, parent) {
  const el = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
  if (parent) parent.appendChild(el);
  return el;
}

// The round step (1, 2 or 5 times a power of ten) nearest above ``raw``: ticks at 0, 0.5, 1, ... seconds.
function niceStep(raw) {
  const power = 10 ** Math.floor(Math.log10(raw));
  return [1, 2, 5, 10].map((m) => m * power).find((s) => s >= raw);
}

// One file's window scores over time, with the threshold line: where in a long file the fake part is.
function timeline(r, index) {
  // Drawn at the width it is shown at, so that its text keeps its size on a phone.
  const W = Math.max(280, Math.min(900, $("timelines").clientWidth - 24)), H = 180;
  const left = 44, right = 10, top = 12, bottom = 38;
  const windowS = state.model ? state.model.window_s : 0;
  const points = r.windows.map((w) => ({
    t: Math.min(w.start_s + windowS / 2, Math.max(r.duration_s, w.start_s)),
    s: w.score,
  }));
  const end = Math.max(r.duration_s, ...points.map((p) => p.t), 1e-3);
  // Scaled to the data (the axis says how far): small moves of a confident model stay visible.
  const span = Math.max(0.1, ...points.map((p) => Math.abs(p.s - r.threshold))) * 1.2;
  const lo = r.threshold - span, hi = r.threshold + span;
  const x = (t) => left + (t / end) * (W - left - right);
  const y = (s) => top + ((hi - s) / (hi - lo)) * (H - top - bottom);

  const figure = document.createElement("figure");
  const caption = document.createElement("figcaption");
  const worst = points.reduce((a, b) => (b.s < a.s ? b : a), points[0]);
  caption.textContent = `${index}. ${r.path}: ${r.label} (score ${fmt(r.score, 3)}), ${points.length} window(s)`;
  caption.id = `timeline-caption-${index}`;
  figure.appendChild(caption);

  const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, class: "timeline", role: "img",
                            "aria-labelledby": caption.id, "data-windows": points.length });
  const desc = svg("desc", {}, root);
  desc.textContent = `Window scores from 0 to ${fmt(end, 2)} s; the lowest, ${fmt(worst.s, 3)}, ` +
    `at ${fmt(worst.t, 2)} s; threshold ${r.threshold}.`;
  svg("rect", { x: left, y: top, width: W - left - right, height: y(r.threshold) - top,
                fill: "#1a7f37", "fill-opacity": 0.06 }, root);
  svg("rect", { x: left, y: y(r.threshold), width: W - left - right, height: H - bottom - y(r.threshold),
                fill: "#c62828", "fill-opacity": 0.06 }, root);
  svg("line", { x1: left, x2: W - right, y1: H - bottom, y2: H - bottom, stroke: "#57606a" }, root);
  svg("line", { x1: left, x2: left, y1: top, y2: H - bottom, stroke: "#57606a" }, root);
  for (const s of [hi, r.threshold, lo]) {
    svg("text", { x: left - 4, y: y(s) + 4, "text-anchor": "end" }, root).textContent = s.toFixed(span < 1 ? 2 : 1);
  }
  const step = niceStep(end / Math.max(2, Math.floor(W / 90)));
  for (let t = 0; t <= end + 1e-9; t += step) {
    const label = step < 1 ? t.toFixed(1) : t.toFixed(0);
    svg("text", { x: x(t), y: H - bottom + 14, "text-anchor": "middle" }, root).textContent = label;
  }
  svg("text", { x: (left + W - right) / 2, y: H - 4, "text-anchor": "middle" }, root).textContent = "time (s)";
  svg("line", { x1: left, x2: W - right, y1: y(r.threshold), y2: y(r.threshold), stroke: "#1b1f24",
                "stroke-dasharray": "5 4", class: "threshold" }, root);
  svg("text", { x: W - right - 2, y: y(r.threshold) - 4, "text-anchor": "end" }, root).textContent =
    "threshold";
  if (points.length === 1) {
    const p = points[0];
    svg("line", { x1: x(0), x2: x(end), y1: y(p.s), y2: y(p.s), stroke: "#0b57d0", "stroke-width": 2 }, root);
  } else {
    svg("polyline", { points: points.map((p) => `${x(p.t)},${y(p.s)}`).join(" "), fill: "none",
                      stroke: "#0b57d0", "stroke-width": 2 }, root);
  }
  for (const p of points) {
    svg("circle", { cx: x(p.t), cy: y(p.s), r: 3.5, class: "window",
                    fill: p.s > r.threshold ? "#1a7f37" : "#c62828" }, root);
  }
  figure.appendChild(root);
  return figure;
}

function download(name, type, text) {
  const url = URL.createObjectURL(new Blob([text], { type }));
  const a = document.createElement("a");
  a.href = url;
  a.download = name;
  document.body.appendChild(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 1000);
}

function csvField(value) {
  let text = value === undefined || value === null ? "" : String(value);
  // A file name such as "=HYPERLINK(...)" must stay text when the CSV is opened in a spreadsheet.
  if (typeof value === "string" && /^[=+\-@\t\r]/.test(text)) text = `'${text}`;
  return /[",\n\r]/.test(text) ? `"${text.replace(/"/g, '""')}"` : text;
}

function toCsv(results) {
  const cols = ["path", "label", "probability", "score", "threshold", "duration_s", "windows", "calibrated",
                "llr", "prior_spoof", "error"];
  const lines = [cols.join(",")];
  for (const r of results) {
    const row = { ...r, windows: Array.isArray(r.windows) ? r.windows.length : "" };
    lines.push(cols.map((c) => csvField(row[c])).join(","));
  }
  return lines.join("\r\n") + "\r\n";
}

// --- recording: MediaRecorder, then decoded by the browser and uploaded as a 16-bit WAV file, a format
// every libsndfile reads (browsers record WebM or Ogg, which not every server build can decode).

function encodeWav(buffer) {
  const n = buffer.length, rate = buffer.sampleRate, channels = buffer.numberOfChannels;
  const mono = new Float32Array(n);
  for (let c = 0; c < channels; c++) {
    const data = buffer.getChannelData(c);
    for (let i = 0; i < n; i++) mono[i] += data[i] / channels;
  }
  const view = new DataView(new ArrayBuffer(44 + 2 * n));
  const text = (offset, s) => { for (let i = 0; i < s.length; i++) view.setUint8(offset + i, s.charCodeAt(i)); };
  text(0, "RIFF"); view.setUint32(4, 36 + 2 * n, true); text(8, "WAVE");
  text(12, "fmt "); view.setUint32(16, 16, true); view.setUint16(20, 1, true); view.setUint16(22, 1, true);
  view.setUint32(24, rate, true); view.setUint32(28, 2 * rate, true); view.setUint16(32, 2, true);
  view.setUint16(34, 16, true); text(36, "data"); view.setUint32(40, 2 * n, true);
  for (let i = 0; i < n; i++) {
    const v = Math.max(-1, Math.min(1, mono[i]));
    view.setInt16(44 + 2 * i, v < 0 ? v * 0x8000 : v * 0x7fff, true);
  }
  return new Blob([view], { type: "audio/wav" });
}

async function startRecording() {
  if (!navigator.mediaDevices || !window.MediaRecorder) {
    setStatus("This browser cannot record audio here (recording needs HTTPS or localhost).", true);
    return;
  }
  let stream;
  try {
    stream = await navigator.mediaDevices.getUserMedia({ audio: true });
  } catch (err) {
    setStatus(`No microphone: ${err.message}`, true);
    return;
  }
  state.chunks = [];
  const recorder = new MediaRecorder(stream);
  recorder.ondataavailable = (e) => { if (e.data.size) state.chunks.push(e.data); };
  recorder.onstop = async () => {
    stream.getTracks().forEach((t) => t.stop());
    try {
      const blob = new Blob(state.chunks, { type: recorder.mimeType });
      const context = new AudioContext();
      const decoded = await context.decodeAudioData(await blob.arrayBuffer());
      context.close();
      state.recordings += 1;
      const name = `recording-${state.recordings}.wav`;
      await upload([new File([encodeWav(decoded)], name, { type: "audio/wav" })]);
    } catch (err) {
      setStatus(`The recording could not be decoded: ${err.message}`, true);
    }
  };
  recorder.start();
  state.recorder = recorder;
  $("record").setAttribute("aria-pressed", "true");
  $("record").textContent = "Stop recording";
  setStatus("Recording… press the button again to stop and score it.");
}

function stopRecording() {
  if (state.recorder && state.recorder.state !== "inactive") state.recorder.stop();
  state.recorder = null;
  $("record").setAttribute("aria-pressed", "false");
  $("record").textContent = "Record";
}

function init() {
  const drop = $("drop");
  for (const type of ["dragenter", "dragover"]) {
    drop.addEventListener(type, (e) => { e.preventDefault(); drop.classList.add("over"); });
  }
  for (const type of ["dragleave", "drop"]) {
    drop.addEventListener(type, (e) => { e.preventDefault(); drop.classList.remove("over"); });
  }
  drop.addEventListener("drop", (e) => upload(e.dataTransfer.files));
  // Files dropped outside the zone would make the browser leave the page to open them.
  window.addEventListener("dragover", (e) => e.preventDefault());
  window.addEventListener("drop", (e) => e.preventDefault());
  $("file-input").addEventListener("change", async (e) => {
    const files = Array.from(e.target.files);
    e.target.value = "";
    await upload(files);
  });
  $("record").addEventListener("click", () => (state.recorder ? stopRecording() : startRecording()));
  $("download-csv").addEventListener("click", () => download("ncdetect-results.csv", "text/csv", toCsv(state.results)));
  $("download-json").addEventListener("click", () =>
    download("ncdetect-results.json", "application/json", JSON.stringify(state.results, null, 2) + "\n"));
  $("clear").addEventListener("click", () => {
    state.results = [];
    $("results").tBodies[0].replaceChildren();
    $("timelines").replaceChildren();
    for (const id of ["download-csv", "download-json", "clear"]) $(id).disabled = true;
    setStatus("");
  });
  $("api-key").addEventListener("change", loadModel);
  loadModel();
}

document.addEventListener("DOMContentLoaded", init);
