// samtriton annotate: click-to-segment on the session backend. Plain JS, no build step.
// The app keeps masks and low-resolution logits; the page sends prompts and ids only.
"use strict";

const $ = (id) => document.getElementById(id);
const COLORS = [[255, 99, 71], [65, 105, 225], [50, 205, 50], [238, 130, 238], [255, 215, 0],
                [0, 206, 209], [255, 140, 0], [147, 112, 219], [60, 179, 113], [220, 20, 60]];

const state = {
  images: [], index: 0, width: 0, height: 0,
  points: [], box: null, pred: null, candidate: 0, history: [],
  auto: null, objects: [], rtts: [], lastRtt: null, busy: false, drag: null,
};
window.annotator = state;  // for tests and the curious

function status(text) { $("status").textContent = text || ""; }

async function api(method, path, body) {
  const response = await fetch(path, {
    method, headers: body ? { "Content-Type": "application/json" } : {},
    body: body ? JSON.stringify(body) : undefined,
  });
  const data = await response.json().catch(() => ({ error: response.statusText }));
  if (!response.ok) throw new Error(data.error || response.statusText);
  return data;
}

// Row-major runs starting with 0s -> RGBA pixels of one colour.
function paintRuns(ctx, runs, color, alpha) {
  const image = ctx.createImageData(state.width, state.height);
  const px = image.data;
  let pos = 0, on = false;
  for (const run of runs) {
    if (on) {
      for (let i = pos; i < pos + run; i++) {
        const k = i * 4; px[k] = color[0]; px[k + 1] = color[1]; px[k + 2] = color[2]; px[k + 3] = alpha;
      }
    }
    pos += run; on = !on;
  }
  return image;
}

function layer(id) {
  const canvas = $(id);
  if (canvas.width !== state.width || canvas.height !== state.height) {
    canvas.width = state.width; canvas.height = state.height;
  }
  return canvas.getContext("2d");
}

function drawMask() {
  const ctx = layer("mask-layer");
  ctx.clearRect(0, 0, state.width, state.height);
  if (state.pred) {
    ctx.putImageData(paintRuns(ctx, state.pred.masks[state.candidate], [30, 144, 255], 150), 0, 0);
    $("candidate").textContent = `${state.candidate + 1}/${state.pred.masks.length} ` +
      `(${state.pred.scores[state.candidate].toFixed(3)})`;
  } else {
    $("candidate").textContent = "–";
  }
  drawPrompts();
}

function drawPrompts() {
  const ctx = layer("prompt-layer");
  ctx.clearRect(0, 0, state.width, state.height);
  const r = Math.max(4, state.width / 150);
  const box = state.drag && state.drag.moved ? state.drag.box : state.box;
  if (box) {
    ctx.strokeStyle = "#ffd700"; ctx.lineWidth = Math.max(2, r / 2);
    ctx.strokeRect(box[0], box[1], box[2] - box[0], box[3] - box[1]);
  }
  for (const p of state.points) {
    ctx.beginPath(); ctx.arc(p.x, p.y, r, 0, 2 * Math.PI);
    ctx.fillStyle = p.label ? "#32cd32" : "#ff3030"; ctx.fill();
    ctx.lineWidth = 1.5; ctx.strokeStyle = "#fff"; ctx.stroke();
  }
}

function drawObjects() {
  const ctx = layer("objects-layer");
  ctx.clearRect(0, 0, state.width, state.height);
  const list = $("objects");
  list.innerHTML = "";
  // Several masks on one canvas: paint each on its own ImageData, composite through a scratch canvas.
  const scratch = document.createElement("canvas");
  scratch.width = state.width; scratch.height = state.height;
  const sctx = scratch.getContext("2d");
  state.objects.forEach((obj, i) => {
    const color = COLORS[i % COLORS.length];
    sctx.putImageData(paintRuns(sctx, obj.runs, color, 120), 0, 0);
    ctx.drawImage(scratch, 0, 0);
    const li = document.createElement("li");
    li.dataset.id = obj.id;
    li.innerHTML = `<span class="swatch" style="background:rgb(${color})"></span>`;
    li.append(`${obj.label} (${obj.area} px) `);
    const del = document.createElement("button");
    del.textContent = "delete"; del.title = "delete this object";
    del.onclick = () => deleteObject(obj.id);
    li.append(del);
    list.append(li);
  });
  if (state.auto) {
    state.auto.masks.forEach((runs, i) => {
      if (state.auto.done[i]) return;
      sctx.putImageData(paintRuns(sctx, runs, COLORS[(i + 3) % COLORS.length], 110), 0, 0);
      ctx.drawImage(scratch, 0, 0);
    });
  }
}

async function loadImage(index) {
  state.index = (index + state.images.length) % state.images.length;
  const info = state.images[state.index];
  state.width = info.width; state.height = info.height;
  resetPrompts(); state.auto = null; $("auto-list").innerHTML = "";
  $("image-name").textContent = info.name;
  $("image-index").textContent = `${state.index + 1}/${state.images.length}`;
  await new Promise((resolve) => { $("photo").onload = resolve; $("photo").src = "/images/" + encodeURIComponent(info.name); });
  drawMask();
  await refreshObjects();
  // The server encodes the image now, not on the first click.
  api("POST", "/api/prepare", { image: info.name })
    .then((r) => { state.prepared = info.name; status(`image set in ${r.set_image_ms.toFixed(0)} ms`); })
    .catch((err) => status(err.message));
  location.hash = encodeURIComponent(info.name);
}

async function refreshObjects() {
  const data = await api("GET", "/api/objects?image=" + encodeURIComponent(state.images[state.index].name));
  state.objects = data.objects;
  drawObjects();
}

function resetPrompts() {
  state.points = []; state.box = null; state.pred = null; state.candidate = 0; state.history = [];
}

function snapshot() {
  return { points: state.points.slice(), box: state.box, pred: state.pred, candidate: state.candidate };
}

async function predict(start) {
  const body = {
    image: state.images[state.index].name, points: state.points, box: state.box,
    // Refinement: the previous mask's low-resolution logits go back in as mask_input.
    refine: state.pred ? { id: state.pred.id, index: state.candidate } : null,
  };
  state.busy = true;
  try {
    const result = await api("POST", "/api/predict", body);
    state.pred = result; state.candidate = result.best;
    drawMask();
    const rtt = performance.now() - start;
    state.lastRtt = { page_ms: rtt, server_ms: result.server_ms, predict_ms: result.predict_ms,
                      set_image_ms: result.set_image_ms };
    state.rtts.push(state.lastRtt);
    $("rtt").textContent = `click: ${rtt.toFixed(0)} ms (app ${result.server_ms.toFixed(0)} ms, ` +
      `SAM ${result.predict_ms.toFixed(0)} ms)` + (result.set_image_ms ? `, image set ${result.set_image_ms.toFixed(0)} ms` : "");
    status("");
  } catch (err) {
    status(err.message);
    const last = state.history.pop();
    if (last) Object.assign(state, last);
    drawMask();
  } finally {
    state.busy = false;
  }
}

function toImage(event) {
  const canvas = $("prompt-layer");
  const rect = canvas.getBoundingClientRect();
  const x = (event.clientX - rect.left) * state.width / rect.width;
  const y = (event.clientY - rect.top) * state.height / rect.height;
  return { x: Math.min(Math.max(x, 0), state.width), y: Math.min(Math.max(y, 0), state.height) };
}

function onDown(event) {
  if (event.button === 1) return;
  event.preventDefault();
  const p = toImage(event);
  state.drag = { start: p, button: event.button, shift: event.shiftKey, moved: false, box: null, t: performance.now() };
}

function onMove(event) {
  if (!state.drag) return;
  const p = toImage(event), s = state.drag.start;
  if (Math.abs(p.x - s.x) + Math.abs(p.y - s.y) > 6 * state.width / $("prompt-layer").getBoundingClientRect().width) {
    state.drag.moved = true;
    state.drag.box = [Math.min(s.x, p.x), Math.min(s.y, p.y), Math.max(s.x, p.x), Math.max(s.y, p.y)];
    drawPrompts();
  }
}

function onUp(event) {
  const drag = state.drag;
  state.drag = null;
  if (!drag || state.busy) return;
  event.preventDefault();
  const start = performance.now();
  state.history.push(snapshot());
  if (drag.moved && drag.button === 0) {
    state.box = drag.box.map((v) => Math.round(v * 10) / 10);
  } else {
    const label = drag.button === 2 || drag.shift ? 0 : 1;
    state.points = state.points.concat([{ x: Math.round(drag.start.x * 10) / 10, y: Math.round(drag.start.y * 10) / 10, label }]);
  }
  drawPrompts();
  predict(start);
}

function undo() {
  const last = state.history.pop();
  if (!last) return;
  Object.assign(state, last);
  drawMask();
}

function cycle() {
  if (!state.pred) return;
  state.candidate = (state.candidate + 1) % state.pred.masks.length;
  drawMask();
}

async function accept() {
  if (!state.pred) { status("nothing to accept: click the object first"); return; }
  try {
    await api("POST", "/api/objects", { image: state.images[state.index].name, label: $("label").value,
                                       mask: { id: state.pred.id, index: state.candidate } });
    resetPrompts(); drawMask();
    await refreshObjects();
    status("accepted");
  } catch (err) { status(err.message); }
}

async function deleteObject(id) {
  try {
    await api("DELETE", `/api/objects?image=${encodeURIComponent(state.images[state.index].name)}&id=${id}`);
    await refreshObjects();
  } catch (err) { status(err.message); }
}

async function automatic() {
  status("automatic mask generation…");
  try {
    const data = await api("POST", "/api/automatic", { image: state.images[state.index].name });
    state.auto = { id: data.id, masks: data.masks, scores: data.scores, done: data.masks.map(() => false) };
    renderAuto();
    status(`${data.masks.length} automatic masks in ${data.seconds} s`);
  } catch (err) { status(err.message); }
}

function renderAuto() {
  const box = $("auto-list");
  box.innerHTML = "";
  if (!state.auto) return;
  state.auto.masks.forEach((runs, i) => {
    if (state.auto.done[i]) return;
    const row = document.createElement("div");
    row.className = "auto-mask";
    row.dataset.index = i;
    const color = COLORS[(i + 3) % COLORS.length];
    row.innerHTML = `<span class="swatch" style="background:rgb(${color})"></span>#${i + 1} iou ${state.auto.scores[i].toFixed(2)} `;
    const ok = document.createElement("button"); ok.textContent = "accept"; ok.className = "accept-auto";
    ok.onclick = () => acceptAuto(i);
    const drop = document.createElement("button"); drop.textContent = "drop"; drop.className = "drop-auto";
    drop.onclick = () => { state.auto.done[i] = true; renderAuto(); drawObjects(); };
    row.append(ok, " ", drop);
    box.append(row);
  });
  drawObjects();
}

async function acceptAuto(i) {
  try {
    await api("POST", "/api/objects", { image: state.images[state.index].name, label: $("label").value,
                                       mask: { id: state.auto.id, index: i } });
    state.auto.done[i] = true;
    await refreshObjects(); renderAuto();
  } catch (err) { status(err.message); }
}

async function exportCoco() {
  try {
    const data = await api("POST", "/api/export");
    status(`exported ${data.annotations} objects to ${data.coco}`);
  } catch (err) { status(err.message); }
}

async function main() {
  const data = await api("GET", "/api/images");
  state.images = data.images;
  $("out").textContent = `model ${data.model}; objects are saved to ${data.out}`;
  const canvas = $("prompt-layer");
  canvas.addEventListener("mousedown", onDown);
  window.addEventListener("mousemove", onMove);
  window.addEventListener("mouseup", onUp);
  canvas.addEventListener("contextmenu", (e) => e.preventDefault());
  $("prev").onclick = () => loadImage(state.index - 1);
  $("next").onclick = () => loadImage(state.index + 1);
  $("undo").onclick = undo;
  $("clear").onclick = () => { resetPrompts(); drawMask(); };
  $("cycle").onclick = cycle;
  $("accept").onclick = accept;
  $("auto").onclick = automatic;
  $("export").onclick = exportCoco;
  document.addEventListener("keydown", (e) => {
    if (e.target.tagName === "INPUT") { if (e.key === "Enter") accept(); return; }
    if (e.key === "z") undo();
    else if (e.key === "Escape") { resetPrompts(); drawMask(); }
    else if (e.key === "c") cycle();
    else if (e.key === "Enter") accept();
    else if (e.key === "ArrowRight") loadImage(state.index + 1);
    else if (e.key === "ArrowLeft") loadImage(state.index - 1);
  });
  const wanted = decodeURIComponent(location.hash.slice(1));
  const start = Math.max(0, state.images.findIndex((i) => i.name === wanted));
  await loadImage(start);
  document.body.dataset.ready = "1";
}

main().catch((err) => status(err.message));
