// The live page: no build step, no framework. Data comes from the API (same origin, the login cookie
// rides along): /api/events (events, per-camera stats), /api/live (pictures, only while this tab is
// visible: a hidden tab is not a watcher), /api/people.
"use strict";

const $ = (sel) => document.querySelector(sel);
const el = (tag, props = {}, ...children) => {
  const e = Object.assign(document.createElement(tag), props);
  e.append(...children);
  return e;
};
const cams = new Map(); // camera -> {card, canvas, faces, stats, img, head, history}
const HISTORY = 60; // seconds of fps / p95 drawn in each camera's small charts

async function api(path, options = {}) {
  const r = await fetch(path, options);
  const body = r.headers.get("content-type")?.includes("json") ? await r.json() : null;
  if (!r.ok) throw new Error((body && body.detail) || `${r.status} ${r.statusText}`);
  return body;
}

// ----- login ----------------------------------------------------------------------------------------
async function whoami() {
  try {
    const w = await api("/api/whoami");
    $("#login").hidden = w.token;
    $("#who").textContent = w.token ? "logged in" : "";
    return true;
  } catch (e) {
    $("#login").hidden = false; // reads need the token here
    $("#who").textContent = e.message;
    return false;
  }
}

$("#login").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  try {
    await api("/api/login", {
      method: "POST",
      headers: {"Content-Type": "application/json"},
      body: JSON.stringify({token: $("#token").value}),
    });
    $("#token").value = "";
    start();
  } catch (e) {
    $("#who").textContent = e.message;
  }
});

// ----- live pictures ------------------------------------------------------------------------------------
function camera(name) {
  if (cams.has(name)) return cams.get(name);
  $("#no-cameras")?.remove();
  const canvas = el("canvas", {className: "picture", width: 640, height: 360, title: "click a face to enroll it"});
  const c = {
    canvas,
    faces: el("div", {className: "faces"}),
    stats: el("div", {className: "stats muted"}),
    fpsChart: el("canvas", {width: 160, height: 36, title: "frames/s"}),
    latChart: el("canvas", {width: 160, height: 36, title: "p95 latency (ms)"}),
    img: null,
    head: null,
    history: [],
  };
  c.card = el("div", {className: "camera"}, el("h3", {textContent: name}), canvas, c.faces, c.stats,
    el("div", {className: "charts"}, c.fpsChart, c.latChart));
  canvas.addEventListener("click", (ev) => enrollFromPicture(c, ev));
  $("#cameras").append(c.card);
  $("#filter-camera").append(el("option", {value: name, textContent: name}));
  cams.set(name, c);
  return c;
}

function label(f) {
  const who = f.name || f.unknown || "unknown"; // a stranger seen before: their unknown-N id
  const extra = [f.distance != null ? f.distance.toFixed(2) : null, f.quality != null ? `q ${(+f.quality).toFixed(2)}` : null,
    f.track != null ? `#${f.track}` : null, f.liveness ? f.liveness.replace("_", " ") : null].filter(Boolean).join(" ");
  return `${who} ${extra}`;
}

function drawPicture(c) {
  const {img, head, canvas} = c;
  canvas.width = img.width;
  canvas.height = img.height;
  const g = canvas.getContext("2d");
  g.drawImage(img, 0, 0);
  const s = img.width / head.width; // boxes come in the original frame's pixels
  g.lineWidth = 2;
  g.font = "13px sans-serif";
  for (const f of head.faces) {
    const [x1, y1, x2, y2] = f.box.map((v) => v * s);
    g.strokeStyle = g.fillStyle = f.name ? "#4c4" : "#e55";
    g.strokeRect(x1, y1, x2 - x1, y2 - y1);
    g.fillText(label(f), x1, Math.max(12, y1 - 4));
  }
  c.faces.replaceChildren(...head.faces.map((f) =>
    el("span", {className: f.name ? "known" : "unknown", textContent: label(f)})));
}

function onFrame(ev) {
  const head = JSON.parse(ev.data);
  const c = camera(head.camera);
  const img = new Image();
  img.onload = () => { c.img = img; c.head = head; drawPicture(c); };
  img.src = `data:image/jpeg;base64,${head.jpeg}`;
}

let live = null;
function watch() {
  // Only a visible tab watches: the pipeline makes pictures only while someone does.
  if (document.visibilityState === "visible" && !live) {
    live = new EventSource("/api/live");
    live.addEventListener("frame", onFrame);
  } else if (document.visibilityState !== "visible" && live) {
    live.close();
    live = null;
  }
}
document.addEventListener("visibilitychange", watch);

// ----- stats and charts ----------------------------------------------------------------------------------
function chart(canvas, values, colour) {
  const g = canvas.getContext("2d");
  g.clearRect(0, 0, canvas.width, canvas.height);
  const top = Math.max(1, ...values.filter((v) => v != null));
  g.strokeStyle = colour;
  g.beginPath();
  values.forEach((v, i) => {
    const x = (i / (HISTORY - 1)) * canvas.width;
    const y = canvas.height - ((v || 0) / top) * (canvas.height - 4) - 2;
    i ? g.lineTo(x, y) : g.moveTo(x, y);
  });
  g.stroke();
  g.fillStyle = colour;
  g.fillText(top.toFixed(top < 10 ? 1 : 0), 2, 10);
}

function onStats(ev) {
  const s = JSON.parse(ev.data);
  for (const [name, st] of Object.entries(s.cameras)) {
    const c = camera(name);
    const ms = (p) => (p.p50 == null ? "–" : `${p.p50}/${p.p95}`);
    c.stats.replaceChildren(
      el("span", {className: st.up ? "" : "down", textContent: st.up ? "up" : "down"}),
      ` · ${st.fps} fps · ${st.dropped} dropped · ms p50/p95: detect ${ms(st.detect)}, embed ${ms(st.embed)}, ` +
      `match ${ms(st.match)}, total ${ms(st.total)}`);
    c.history.push([st.fps, st.total.p95]);
    if (c.history.length > HISTORY) c.history.shift();
    chart(c.fpsChart, c.history.map((h) => h[0]), "#6af");
    chart(c.latChart, c.history.map((h) => h[1]), "#fa6");
  }
  $("#status").textContent = `${Object.keys(s.cameras).length} camera(s) · ${s.watchers} watching`;
}

// ----- events ------------------------------------------------------------------------------------------------
function faceCrop(event) {
  // The event's face, cut from the camera's latest picture when that picture shows its track.
  const c = cams.get(event.camera);
  const canvas = el("canvas", {width: 32, height: 32});
  const f = c?.head?.faces.find((x) => x.track === event.track);
  if (c?.img && f) {
    const s = c.img.width / c.head.width;
    const [x1, y1, x2, y2] = f.box.map((v) => v * s);
    canvas.getContext("2d").drawImage(c.img, x1, y1, x2 - x1, y2 - y1, 0, 0, 32, 32);
  }
  return canvas;
}

function onEvent(ev) {
  const e = JSON.parse(ev.data);
  const when = new Date(1000 * (e.time || e.received || Date.now() / 1000));
  const li = el("li", {}, faceCrop(e), el("span", {className: "muted", textContent: when.toLocaleTimeString()}),
    el("span", {textContent: e.camera}), el("span", {textContent: e.type}),
    el("span", {className: e.name ? "known" : "", textContent: e.name || e.unknown || e.reason || e.error || ""}));
  li.dataset.camera = e.camera || "";
  li.dataset.name = e.name || "";
  filterOne(li);
  $("#events").prepend(li);
  while ($("#events").children.length > 200) $("#events").lastChild.remove();
  if (e.type === "track_confirmed") loadPeople();
}

function filterOne(li) {
  const cam = $("#filter-camera").value, name = $("#filter-name").value.trim().toLowerCase();
  li.hidden = (cam && li.dataset.camera !== cam) || (name && !li.dataset.name.toLowerCase().includes(name));
}
$("#filter-camera").addEventListener("change", () => document.querySelectorAll("#events li").forEach(filterOne));
$("#filter-name").addEventListener("input", () => document.querySelectorAll("#events li").forEach(filterOne));

// ----- people --------------------------------------------------------------------------------------------------
async function loadPeople() {
  let people;
  try {
    people = (await api("/api/people")).people;
  } catch (e) {
    $("#people").replaceChildren(el("li", {className: "error", textContent: e.message}));
    return;
  }
  $("#people").replaceChildren(...people.map((p) => {
    const enc = encodeURIComponent(p.name);
    const rename = el("button", {textContent: "rename"});
    const remove = el("button", {textContent: "remove"});
    rename.onclick = () => change(() => {
      const name = prompt(`New name for ${p.name}`, p.name);
      return name && api(`/api/people/${enc}`, {method: "PATCH", headers: {"Content-Type": "application/json"},
        body: JSON.stringify({name})});
    });
    remove.onclick = () => change(() => confirm(`Remove ${p.name} and ${p.samples} sample(s)?`) &&
      api(`/api/people/${enc}`, {method: "DELETE"}));
    return el("li", {className: "person"}, el("img", {src: `/api/people/${enc}/thumbnail`, alt: p.name}),
      el("span", {className: "name", textContent: p.name}),
      el("span", {className: "muted", textContent: `${p.samples} photo(s)`}), rename, remove);
  }));
}

async function change(action) {
  try {
    await action();
    $("#enroll-result").textContent = "";
  } catch (e) {
    $("#enroll-result").textContent = e.message;
    $("#enroll-result").className = "error";
  }
  loadPeople();
}

async function enroll(name, files) {
  const form = new FormData();
  form.append("name", name);
  for (const [blob, filename] of files) form.append("photos", blob, filename);
  const out = $("#enroll-result");
  out.className = "muted";
  out.textContent = "enrolling…";
  try {
    const r = await api("/api/people", {method: "POST", body: form});
    out.textContent = `${r.name}: ` + r.photos.map((p) => `${p.photo} ${p.status}${p.detail ? ` (${p.detail})` : ""}`).join(", ");
  } catch (e) {
    out.className = "error";
    out.textContent = e.message;
  }
  loadPeople();
}

$("#enroll").addEventListener("submit", (ev) => {
  ev.preventDefault();
  enroll($("#enroll-name").value.trim(), [...$("#enroll-photos").files].map((f) => [f, f.name]));
});

function enrollFromPicture(c, ev) {
  // Click a face in the live view: enroll it (a generous crop of the shown picture).
  if (!c.img) return;
  const r = c.canvas.getBoundingClientRect();
  const x = (ev.clientX - r.left) * (c.canvas.width / r.width), y = (ev.clientY - r.top) * (c.canvas.height / r.height);
  const s = c.img.width / c.head.width;
  const f = c.head.faces.find((f) => { const [x1, y1, x2, y2] = f.box.map((v) => v * s); return x >= x1 && x <= x2 && y >= y1 && y <= y2; });
  if (!f) return;
  const name = prompt("Enroll this face as:", f.name || "");
  if (!name) return;
  const [x1, y1, x2, y2] = f.box.map((v) => v * s);
  const m = (x2 - x1) * 0.6, cx = Math.max(0, x1 - m), cy = Math.max(0, y1 - m);
  const w = Math.min(c.img.width - cx, x2 - x1 + 2 * m), h = Math.min(c.img.height - cy, y2 - y1 + 2 * m);
  const crop = el("canvas", {width: w, height: h});
  crop.getContext("2d").drawImage(c.img, cx, cy, w, h, 0, 0, w, h);
  crop.toBlob((blob) => enroll(name, [[blob, `${c.head.camera}-${c.head.seq}.jpg`]]), "image/jpeg", 0.95);
}

// ----- start ---------------------------------------------------------------------------------------------------
let events = null;
async function start() {
  if (!(await whoami())) return;
  if (!events) {
    events = new EventSource("/api/events");
    events.addEventListener("event", onEvent);
    events.addEventListener("stats", onStats);
    events.onopen = () => { $("#status").textContent = "connected"; };
    events.onerror = () => { $("#status").textContent = "reconnecting…"; };
  }
  watch();
  loadPeople();
}
start();
