// The live page: picks an image (a sample, an upload, or a drawing on a canvas at the model's resolution), sends it
// to POST /v2/models/{name}/infer_stream and draws every JSON line (one per time step) as it arrives. "stop" aborts
// the fetch; closing the connection makes the server stop computing within one step.
"use strict";

const $ = (id) => document.getElementById(id);
const TOP_K = 5;
const LOG_ROWS = 12;
const API_KEY = "ecmt.apiKey"; // sessionStorage key of the API key the page was given (see api())

const state = {
  models: [],
  model: null,
  input: null,        // {kind: "image", bytes, label} or {kind: "drawing"}
  controller: null,   // AbortController of the running request
  run: null,          // what the running request has received
  frame: 0,
};

// For the browser test and the console: what the page holds (steps received, with their arrival times).
window.ecmtState = state;

init().catch((e) => fail(`the page could not start: ${e.message}`));

async function init() {
  const [models, samples] = await Promise.all([getJson("/ecmt/v1/models"), getJson("/page/samples.json")]);
  state.models = models.models || [];
  const select = $("model");
  for (const m of state.models) {
    const option = document.createElement("option");
    option.value = m.name;
    option.textContent = m.ready ? m.name : `${m.name} (not ready)`;
    select.append(option);
  }
  select.addEventListener("change", () => chooseModel(select.value));
  if (state.models.length) chooseModel(state.models.find((m) => m.ready)?.name ?? state.models[0].name);

  const gallery = $("samples");
  for (const s of samples) {
    const button = document.createElement("button");
    button.type = "button";
    button.dataset.sample = s.name;
    button.title = s.name;
    button.setAttribute("aria-pressed", "false");
    const img = document.createElement("img");
    img.src = s.url;
    img.alt = s.name;
    button.append(img);
    button.addEventListener("click", async () => {
      const bytes = new Uint8Array(await (await fetch(s.url)).arrayBuffer());
      await useImage(bytes, `sample ${s.name}`);
      for (const b of gallery.children) b.setAttribute("aria-pressed", String(b === button));
    });
    gallery.append(button);
  }

  $("upload").addEventListener("change", async (e) => {
    const file = e.target.files[0];
    if (!file) return;
    await useImage(new Uint8Array(await file.arrayBuffer()), `upload ${file.name}`);
    e.target.value = "";
  });
  $("clear").addEventListener("click", () => {
    const ctx = $("canvas").getContext("2d");
    ctx.fillStyle = "#000";
    ctx.fillRect(0, 0, ctx.canvas.width, ctx.canvas.height);
    useDrawing("drawing: draw in white on black");
  });
  setUpDrawing();
  $("classify").addEventListener("click", classify);
  $("stop").addEventListener("click", stop);
  setState("idle", "choose an image");
}

// Access control: with an access file on the server the API answers 401 without a key. The page then asks for one,
// keeps it for this tab only (sessionStorage, under API_KEY), and sends it as "Authorization: Bearer <key>".
async function api(url, init = {}) {
  for (;;) {
    const key = sessionStorage.getItem(API_KEY);
    const headers = { ...(init.headers ?? {}) };
    if (key) headers.Authorization = `Bearer ${key}`;
    const response = await fetch(url, { ...init, headers });
    if (response.status !== 401) return response;
    const reason = await errorOf(response);
    const entered = window.prompt(`This server needs an API key (${reason}). Key:`);
    if (!entered) throw new Error(reason);
    sessionStorage.setItem(API_KEY, entered.trim());
  }
}

async function getJson(url) {
  const response = await api(url);
  if (!response.ok) throw new Error(`${url}: ${await errorOf(response)}`);
  return response.json();
}

async function errorOf(response) {
  const text = await response.text();
  try { return JSON.parse(text).error ?? text; } catch { return text || `HTTP ${response.status}`; }
}

function chooseModel(name) {
  const m = state.models.find((x) => x.name === name);
  state.model = m;
  $("model").value = name;
  const canvas = $("canvas");
  canvas.width = canvas.height = m.imageSize;
  const ctx = canvas.getContext("2d");
  ctx.fillStyle = "#000";
  ctx.fillRect(0, 0, m.imageSize, m.imageSize);
  const steps = $("max-steps");
  steps.max = m.maxSteps;
  steps.value = Math.min(Math.max(16, m.defaultSteps), m.maxSteps);
  $("model-info").textContent = `${m.channels}×${m.imageSize}×${m.imageSize} in, ${m.classNames.length} classes, `
    + `default ${m.defaultSteps} / at most ${m.maxSteps} steps, ${m.backend}${m.ready ? "" : ", not ready"}`;
  // The recommended policy (chosen on held-out images at conversion) is offered when the model has one.
  const recommended = $("rule-recommended");
  recommended.disabled = !m.recommendedStop;
  if (recommended.disabled && recommended.checked) $("rule-none").checked = true;
  $("recommended").textContent = m.recommendedStop ? `(${describePolicy(m.recommendedStop)})` : "(none for this model)";
  state.input = null;
  $("source").textContent = "pick a sample, upload an image, or draw";
  updateButtons();
}

// A StopPolicy message as ecmt.v1's JSON form names its rules, e.g. "gate ≥ 0.87".
function describePolicy(p) {
  const rules = [];
  if (p.minConfidence) rules.push(`p ≥ ${p.minConfidence}`);
  if (p.stableSteps) rules.push(`stable ${p.stableSteps}`);
  if (p.minSteps) rules.push(`t ≥ ${p.minSteps}`);
  if (p.minMargin) rules.push(`margin ≥ ${p.minMargin}`);
  if (p.minGate) rules.push(`gate ≥ ${p.minGate}`);
  return rules.join(", ") || "none";
}

// An encoded image: shown on the canvas the way the server reads it (centre square, model size, grey for one
// channel) and sent as the file itself (BYTES input "image"), decoded by the server.
async function useImage(bytes, label) {
  const bitmap = await createImageBitmap(new Blob([bytes]));
  const canvas = $("canvas");
  const ctx = canvas.getContext("2d");
  const side = Math.min(bitmap.width, bitmap.height);
  ctx.fillStyle = "#000";
  ctx.fillRect(0, 0, canvas.width, canvas.height);
  ctx.imageSmoothingQuality = "high";
  ctx.drawImage(bitmap, (bitmap.width - side) / 2, (bitmap.height - side) / 2, side, side, 0, 0, canvas.width, canvas.height);
  if (state.model?.channels === 1) {
    const image = ctx.getImageData(0, 0, canvas.width, canvas.height);
    const px = image.data;
    for (let i = 0; i < px.length; i += 4) px[i] = px[i + 1] = px[i + 2] = Math.round(0.299 * px[i] + 0.587 * px[i + 1] + 0.114 * px[i + 2]);
    ctx.putImageData(image, 0, 0);
  }
  state.input = { kind: "image", bytes, label };
  $("source").textContent = `${label} (sent as the file; drawing on it sends the canvas)`;
  updateButtons();
}

function useDrawing(label) {
  state.input = { kind: "drawing" };
  $("source").textContent = label;
  for (const b of $("samples").children) b.setAttribute("aria-pressed", "false");
  updateButtons();
}

function setUpDrawing() {
  const canvas = $("canvas");
  let last = null;
  const at = (e) => {
    const r = canvas.getBoundingClientRect();
    return [(e.clientX - r.left) * canvas.width / r.width, (e.clientY - r.top) * canvas.height / r.height];
  };
  canvas.addEventListener("pointerdown", (e) => {
    canvas.setPointerCapture(e.pointerId);
    last = at(e);
    if (state.input?.kind !== "drawing") useDrawing("drawing (the canvas's pixels are sent)");
    line(last, last);
  });
  canvas.addEventListener("pointermove", (e) => {
    if (!last) return;
    const p = at(e);
    line(last, p);
    last = p;
  });
  canvas.addEventListener("pointerup", () => { last = null; });
  function line(a, b) {
    const ctx = canvas.getContext("2d");
    ctx.strokeStyle = "#fff";
    ctx.lineCap = "round";
    ctx.lineWidth = Number($("brush").value);
    ctx.beginPath();
    ctx.moveTo(a[0], a[1]);
    ctx.lineTo(b[0], b[1]);
    ctx.stroke();
  }
}

function updateButtons() {
  const running = state.controller !== null;
  $("classify").disabled = running || !state.input || !state.model?.ready;
  $("stop").disabled = !running;
}

function setState(name, text) {
  const el = $("state");
  el.dataset.state = name;
  el.textContent = text;
}

function fail(message) {
  const el = $("error");
  el.hidden = false;
  el.textContent = message;
  setState("error", "failed");
}

function requestBody() {
  const m = state.model;
  const parameters = { max_steps: Number($("max-steps").value) };
  const rule = document.querySelector('input[name="rule"]:checked').value;
  if (rule === "confidence") parameters.min_confidence = Number($("min-confidence").value);
  if (rule === "stable") parameters.stable_steps = Number($("stable-steps").value);
  if (rule === "recommended") parameters.recommended = true;
  let input;
  if (state.input.kind === "image") {
    input = { name: "image", datatype: "BYTES", shape: [1], data: [base64(state.input.bytes)] };
  } else {
    // The canvas as intensities (1, C, H, W) in [0, 1].
    const size = m.imageSize;
    const px = $("canvas").getContext("2d").getImageData(0, 0, size, size).data;
    const plane = size * size;
    const data = new Array(m.channels * plane);
    for (let p = 0; p < plane; p++) {
      if (m.channels === 1) data[p] = (0.299 * px[4 * p] + 0.587 * px[4 * p + 1] + 0.114 * px[4 * p + 2]) / 255;
      else for (let c = 0; c < 3; c++) data[c * plane + p] = px[4 * p + c] / 255;
    }
    input = { name: "pixels", datatype: "FP32", shape: [1, m.channels, size, size], data };
  }
  return {
    parameters,
    inputs: [input],
    outputs: [
      { name: "probabilities", parameters: { classification: Math.min(TOP_K, m.classNames.length) } },
      { name: "step" }, { name: "stop_reason" }, { name: "synaptic_operations" }, { name: "energy_ratio" },
    ],
  };
}

function base64(bytes) {
  let text = "";
  for (let i = 0; i < bytes.length; i += 0x8000) text += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
  return btoa(text);
}

async function classify() {
  $("error").hidden = true;
  const body = requestBody();
  const controller = new AbortController();
  state.controller = controller;
  state.run = { started: performance.now(), steps: [], last: null, maxSteps: body.parameters.max_steps, threshold: body.parameters.min_confidence };
  $("steps").replaceChildren();
  $("steps").dataset.received = "0";
  setState("running", "computing…");
  updateButtons();
  render();
  try {
    const response = await api(`/v2/models/${encodeURIComponent(state.model.name)}/infer_stream`, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
      signal: controller.signal,
    });
    if (!response.ok) throw new Error(await errorOf(response));
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let pending = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      pending += value;
      let newline;
      while ((newline = pending.indexOf("\n")) >= 0) {
        const line = pending.slice(0, newline);
        pending = pending.slice(newline + 1);
        if (line.trim()) receive(JSON.parse(line));
      }
    }
    const last = state.run.last;
    if (last) setState("done", `done after ${last.step} of ${state.run.maxSteps} steps: ${reasonText(last.stopReason)}`);
    else if (state.controller === controller) throw new Error("the stream ended without a step");
  } catch (e) {
    if (e.name === "AbortError") {
      const n = state.run.steps.length;
      setState("stopped", `stopped after ${n} step${n === 1 ? "" : "s"}: the server cancelled the computation`);
    } else {
      fail(e.message);
    }
  } finally {
    state.controller = null;
    updateButtons();
    render();
  }
}

function stop() {
  state.controller?.abort();
}

function receive(message) {
  if (message.error) throw new Error(message.error);
  const out = Object.fromEntries(message.outputs.map((o) => [o.name, o.data]));
  const top = out.probabilities.map((s) => {
    const [value, index, ...label] = s.split(":");
    return { p: Number(value), index: Number(index), name: label.join(":") };
  });
  const step = {
    step: out.step[0],
    top,
    stopReason: out.stop_reason[0],
    sops: out.synaptic_operations[0],
    energy: out.energy_ratio[0],
    arrived: performance.now() - state.run.started,
  };
  state.run.steps.push(step);
  state.run.last = step;
  $("steps").dataset.received = String(state.run.steps.length);
  setState("running", `step ${step.step} of ${state.run.maxSteps}…`);
  if (!state.frame) state.frame = requestAnimationFrame(render);
}

function reasonText(reason) {
  return { max_steps: "ran every step", confident: "confident enough", stable: "prediction stable" }[reason] ?? reason;
}

// Draws the latest step at most once per frame (a fast model can stream faster than the screen refreshes).
function render() {
  state.frame = 0;
  const run = state.run;
  const last = run?.last;
  $("step").textContent = last ? `after step ${last.step}` : "";
  const top = $("top");
  top.replaceChildren(...(last?.top ?? []).map((s) => {
    const li = document.createElement("li");
    const name = document.createElement("span");
    name.className = "name";
    name.textContent = s.name || `class ${s.index}`;
    const bar = document.createElement("span");
    bar.className = "bar";
    const fill = document.createElement("span");
    fill.style.width = `${(100 * s.p).toFixed(1)}%`;
    bar.append(fill);
    const value = document.createElement("span");
    value.className = "value";
    value.textContent = `${(100 * s.p).toFixed(1)} %`;
    li.append(name, bar, value);
    return li;
  }));
  $("confidence").textContent = last ? last.top[0].p.toFixed(3) : "–";
  $("energy").textContent = last ? last.energy.toFixed(2) : "–";
  $("sops").textContent = last ? Number(last.sops).toLocaleString("en") : "–";
  $("elapsed").textContent = last ? `${last.arrived.toFixed(0)} ms` : "–";

  const body = $("steps");
  const shown = (run?.steps ?? []).slice(-LOG_ROWS);
  body.replaceChildren(...shown.map((s) => {
    const tr = document.createElement("tr");
    for (const text of [s.step, s.top[0].name, s.top[0].p.toFixed(3), s.energy.toFixed(2), `${s.arrived.toFixed(0)} ms`]) {
      const td = document.createElement("td");
      td.textContent = String(text);
      tr.append(td);
    }
    return tr;
  }));
  drawChart(run);
}

function drawChart(run) {
  const canvas = $("chart");
  const ctx = canvas.getContext("2d");
  const w = canvas.width, h = canvas.height, pad = 24;
  ctx.clearRect(0, 0, w, h);
  ctx.font = "11px system-ui, sans-serif";
  ctx.fillStyle = "#6b7385";
  ctx.fillText("top-1 probability by step", pad, 13);
  ctx.strokeStyle = "#dde1ea";
  for (const y of [0, 0.5, 1]) {
    const py = h - pad - y * (h - 2 * pad);
    ctx.beginPath();
    ctx.moveTo(pad, py);
    ctx.lineTo(w - 8, py);
    ctx.stroke();
    ctx.fillText(String(y), 4, py + 4);
  }
  const steps = run?.steps ?? [];
  if (!steps.length) return;
  const n = Math.max(steps.length, Math.min(run.maxSteps, 64));
  const x = (i) => pad + (i + 0.5) * (w - pad - 8) / n;
  const y = (p) => h - pad - p * (h - 2 * pad);
  if (run.threshold) {
    ctx.strokeStyle = "#b3261e";
    ctx.setLineDash([4, 4]);
    ctx.beginPath();
    ctx.moveTo(pad, y(run.threshold));
    ctx.lineTo(w - 8, y(run.threshold));
    ctx.stroke();
    ctx.setLineDash([]);
  }
  ctx.strokeStyle = "#2f6fde";
  ctx.fillStyle = "#2f6fde";
  ctx.lineWidth = 2;
  ctx.beginPath();
  steps.forEach((s, i) => (i ? ctx.lineTo(x(i), y(s.top[0].p)) : ctx.moveTo(x(i), y(s.top[0].p))));
  ctx.stroke();
  ctx.lineWidth = 1;
  if (steps.length <= 64) for (const [i, s] of steps.entries()) ctx.fillRect(x(i) - 2, y(s.top[0].p) - 2, 4, 4);
  ctx.fillStyle = "#6b7385";
  ctx.fillText(`step ${steps[steps.length - 1].step}`, Math.min(x(steps.length - 1) - 20, w - 60), h - 6);
}
