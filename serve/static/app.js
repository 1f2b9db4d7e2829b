// The clipsearch page: search, like/dislike refinement, "more like this", paging, the
// status line and the watched ingest's progress. Plain JS over the JSON API, no build
// step. Text from the server (paths, errors) goes in with textContent only.
"use strict";

const K = 24;
const INGEST_POLL_MS = 2000;
const $ = (id) => document.getElementById(id);

// What the grid shows: a text search (query) or the images like one image (similarId),
// refined by likes and dislikes; `offset` pages through it.
const state = { query: "", folder: "", similarId: null, similarPath: "", liked: new Set(), disliked: new Set(), offset: 0 };
let current = [];  // the hits on screen
let shown = null;  // the hit in the viewer
let generation = 0;  // answers to superseded requests are dropped

class ApiError extends Error {
  constructor(message, status) {
    super(message);
    this.status = status;
  }
}

async function api(path, body) {
  const init = body === undefined ? {} : { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) };
  const response = await fetch(path, { credentials: "same-origin", ...init });
  if (response.status === 401) {  // logged out: the server answers / with its login page
    location.reload();
    throw new ApiError("logged out");
  }
  let data = null;
  try { data = await response.json(); } catch { /* not JSON */ }
  if (!response.ok) throw new ApiError((data && data.error) || `${response.status} ${response.statusText}`, response.status);
  return data;
}

function showError(message) {
  $("error").textContent = visible(message);
  $("error").hidden = !message;
}

function fileName(path) {
  return path.split(/[\\/]/).filter(Boolean).pop() || path;
}

// Characters a name may hold that would hide or fake what it says: control characters
// (a newline shown as a space), bidirectional overrides and isolates ("rtl\u202egnp.jpg"
// displays as "rtlgpj.png"), invisible ones. Shown as escapes wherever the page shows a
// path or a name or a message that may quote one, as the CLI quotes such names.
// (Zero-width joiners are left alone: emoji and some scripts need them.)
const HIDDEN = /[\u0000-\u001f\u007f-\u009f\u061c\u200b\u200e\u200f\u2028-\u202e\u2060-\u2069\ufeff]/g;
const ESCAPES = { "\n": "\\n", "\r": "\\r", "\t": "\\t" };

function visible(text) {
  return String(text ?? "").replace(HIDDEN, (c) => ESCAPES[c] || `\\u${c.charCodeAt(0).toString(16).padStart(4, "0")}`);
}

// -- searching ----------------------------------------------------------------------

function request() {
  const refined = state.liked.size > 0 || state.disliked.size > 0;
  const folder = state.folder.trim() || null;
  if (state.similarId && !refined) {
    const params = new URLSearchParams({ k: K, offset: state.offset });
    if (folder) params.set("in", folder);
    return [`/api/images/${encodeURIComponent(state.similarId)}/similar?${params}`, undefined];
  }
  return ["/api/search", {
    query: state.similarId ? null : state.query, image_id: state.similarId, liked: [...state.liked],
    disliked: [...state.disliked], in: folder, k: K, offset: state.offset,
  }];
}

async function run() {
  if (!state.similarId && !state.query.trim()) {
    render(null);
    return;
  }
  const mine = ++generation;
  $("results").setAttribute("aria-busy", "true");
  try {
    const data = await api(...request());
    if (mine !== generation) return;
    showError("");
    forgetGone(data.dropped || []);
    render(data);
  } catch (error) {
    if (mine !== generation || error.message === "logged out") return;
    // More like this: the one image is the query, so a 404 is that image gone.
    const gone = state.similarId && error.status === 404;
    showError(gone ? "The image you asked for more like is no longer in the index (deleted, moved or renamed since it was shown): search again." : error.message);
    render(null);
  } finally {
    if (mine === generation) $("results").removeAttribute("aria-busy");
  }
}

// Liked or disliked images the server left out, no longer in the index: out of the
// refinement too, said in a note rather than as ids.
function forgetGone(dropped) {
  const count = (marks) => dropped.filter((id) => marks.delete(id)).length;
  const liked = count(state.liked);
  const disliked = count(state.disliked);
  const images = (n, what) => `${n} ${what} image${n === 1 ? "" : "s"}`;
  const which = [liked && images(liked, "liked"), disliked && images(disliked, "disliked")].filter(Boolean).join(" and ");
  $("note").textContent = which ? `Left out ${which}: no longer in the index (deleted, moved or renamed since shown).` : "";
  $("note").hidden = !which;
}

function render(data) {
  const hits = data ? data.hits : [];
  current = hits;
  const list = $("results");
  list.replaceChildren(...hits.map(tile));
  const what = state.similarId ? `images like ${state.similarPath ? visible(fileName(state.similarPath)) : "the chosen image"}` : `“${state.query}”`;
  if (!data) {
    $("summary").textContent = "";
    $("note").hidden = true;
  } else if (!hits.length) $("summary").textContent = state.offset ? `No more results for ${what}.` : `No results for ${what}.`;
  else $("summary").textContent = `Results ${hits[0].rank}–${hits[hits.length - 1].rank} for ${what} (${Math.round(data.took_ms)} ms)`;
  const refined = state.liked.size + state.disliked.size;
  $("refine").hidden = !refined;
  $("refine-text").textContent = `Refined by ${state.liked.size} liked and ${state.disliked.size} disliked. `;
  $("pager").hidden = !data || (state.offset === 0 && hits.length < K);
  $("prev").disabled = state.offset === 0;
  $("next").disabled = hits.length < K;
  $("page").textContent = `Page ${Math.floor(state.offset / K) + 1}`;
  remember();
}

function tile(hit) {
  const node = $("hit-template").content.firstElementChild.cloneNode(true);
  const name = visible(fileName(hit.path));
  node.dataset.id = hit.id;
  node.dataset.rank = hit.rank;
  node.dataset.score = hit.score;
  const img = node.querySelector("img");
  img.src = `${hit.thumbnail}?size=256`;
  img.alt = name;
  img.addEventListener("error", () => node.classList.add("missing"), { once: true });
  const open = node.querySelector(".open");
  open.setAttribute("aria-label", `Open ${name}`);
  open.addEventListener("click", () => openViewer(hit));
  node.querySelector(".rank").textContent = `#${hit.rank}`;
  node.querySelector(".score").textContent = hit.score.toFixed(3);
  const path = node.querySelector(".path");
  path.textContent = visible(hit.path);
  path.title = visible(hit.path);
  for (const [cls, mine, other, verb] of [["like", state.liked, state.disliked, "More"], ["dislike", state.disliked, state.liked, "Fewer"]]) {
    const button = node.querySelector(`.${cls}`);
    button.setAttribute("aria-pressed", String(mine.has(hit.id)));
    button.setAttribute("aria-label", `${verb} like ${name}`);
    button.title = cls === "like" ? "More like this one" : "Fewer like this one (hides it)";
    button.addEventListener("click", () => {
      if (mine.has(hit.id)) mine.delete(hit.id);
      else { mine.add(hit.id); other.delete(hit.id); }
      state.offset = 0;
      run();
    });
  }
  return node;
}

function newSearch(query, folder) {
  Object.assign(state, { query, folder, similarId: null, similarPath: "", offset: 0 });
  state.liked.clear();
  state.disliked.clear();
  run();
}

function moreLike(hit) {
  Object.assign(state, { similarId: hit.id, similarPath: hit.path, offset: 0 });
  state.liked.clear();
  state.disliked.clear();
  run();
}

// The search in the address bar, so that a reload (or a login) comes back to it.
function remember() {
  const params = new URLSearchParams();
  if (state.similarId) params.set("like", state.similarId);
  else if (state.query) params.set("q", state.query);
  if (state.folder) params.set("in", state.folder);
  if (state.offset) params.set("offset", state.offset);
  const search = params.toString();
  if (search !== location.search.slice(1)) history.replaceState(null, "", search ? `?${search}` : location.pathname);
}

// -- the viewer ---------------------------------------------------------------------

function openViewer(hit) {
  shown = hit;
  const viewer = $("viewer");
  $("viewer-image").src = hit.file;
  $("viewer-image").alt = visible(fileName(hit.path));
  $("viewer-path").textContent = visible(hit.path);
  const size = hit.width && hit.height ? `${hit.width} × ${hit.height} · ` : "";
  $("viewer-facts").textContent = `${size}#${hit.rank} · score ${hit.score.toFixed(3)}`;
  $("viewer-original").href = hit.file;
  if (!viewer.open) viewer.showModal();
  $("more-like-this").focus();
}

function closeViewer() {
  const viewer = $("viewer");
  if (viewer.open) viewer.close();
}

// -- status and ingest --------------------------------------------------------------

async function refreshStatus() {
  try {
    const facts = await api("/api/status");
    const model = facts.model && facts.model.name ? visible(fileName(facts.model.name)) : "no model recorded";
    const points = facts.exists ? `${facts.points ?? 0} images` : "no collection yet";
    const version = facts.server && facts.server.version ? ` · clipsearch ${facts.server.version}` : "";
    $("status").textContent = `collection ${visible(facts.collection)} · ${points} · model ${model}${version}`;
    $("status").title = `${facts.backend || ""} index at ${visible(facts.location)}`;
    return facts;
  } catch (error) {
    if (error.message !== "logged out") $("status").textContent = `status unavailable: ${visible(error.message)}`;
    return null;
  }
}

function duration(seconds) {
  if (seconds == null || !isFinite(seconds)) return "?";
  const s = Math.round(seconds);
  const hms = [Math.floor(s / 3600), Math.floor(s / 60) % 60, s % 60];
  return (hms[0] ? `${hms[0]}:` : "") + hms.slice(1).map((n) => String(n).padStart(2, "0")).join(":");
}

// What the counts cover: the walk of the folders in progress, or the last one and the
// changes heard since (found and unchanged are the walk's alone).
function scope(progress) {
  const walk = progress.walk;
  if (!walk || !(walk.running || progress.state === "watching")) return "";
  if (walk.running) return ` · walking the folders for ${duration(walk.seconds)}`;
  const since = Object.entries(progress.since_walk || {}).filter(([, count]) => count).map(([key, count]) => `${key} ${count}`);
  return ` · the last walk took ${duration(walk.seconds)}${since.length ? `; since: ${since.join(", ")}` : ""}`;
}

let lastEmbedded = -1;
async function pollIngest() {
  let progress;
  try { progress = await api("/api/ingest"); } catch { setTimeout(pollIngest, INGEST_POLL_MS * 3); return; }
  const box = $("ingest");
  if (!progress.watching) { box.hidden = true; return; }  // fixed for the server's life: stop polling
  box.hidden = false;
  box.dataset.state = progress.state;
  $("ingest-state").textContent = progress.state;
  const n = (key) => progress[key] ?? 0;
  const eta = progress.state === "embedding" ? `, ETA ${duration(progress.eta_seconds)}` : "";
  const reused = n("moved") + n("copied") ? `, moved ${n("moved")}, copied ${n("copied")}` : "";
  // While the walk goes on, "found" is what it has reached so far, not the total: the bar
  // is indeterminate and there is no ETA, rather than a bar near full at a third done.
  const walking = progress.state === "scanning";
  $("ingest-counts").textContent = `· found ${n("found")}${walking ? " so far" : ""}, embedded ${n("embedded")}${reused}, unchanged ${n("unchanged")}, ` +
    `skipped ${n("skipped")}, removed ${n("removed")}, pending ${n("pending")} · ${(progress.rate || 0).toFixed(1)} img/s${eta}${scope(progress)}`;
  const done = n("embedded") + n("moved") + n("copied") + n("unchanged") + n("skipped");
  $("ingest-progress").max = Math.max(1, n("found"));
  if (walking) $("ingest-progress").removeAttribute("value");
  else $("ingest-progress").value = Math.min(done, n("found"));
  $("ingest-errors").replaceChildren(...(progress.errors || []).map((e) => {
    const li = document.createElement("li");
    li.textContent = `${visible(e.path)}: ${visible(e.reason)}`;
    return li;
  }));
  const changed = n("embedded") + n("moved") + n("copied") + n("removed");
  if (changed !== lastEmbedded) { lastEmbedded = changed; refreshStatus(); }
  setTimeout(pollIngest, INGEST_POLL_MS);
}

// -- wiring -------------------------------------------------------------------------

document.addEventListener("DOMContentLoaded", () => {
  $("search-form").addEventListener("submit", (event) => {
    event.preventDefault();
    closeViewer();
    newSearch($("query").value, $("folder").value);
  });
  $("prev").addEventListener("click", () => { state.offset = Math.max(0, state.offset - K); run(); });
  $("next").addEventListener("click", () => { state.offset += K; run(); });
  $("clear-refine").addEventListener("click", () => { state.liked.clear(); state.disliked.clear(); state.offset = 0; run(); });
  $("more-like-this").addEventListener("click", () => { const hit = shown; closeViewer(); moreLike(hit); });
  $("viewer-close").addEventListener("click", closeViewer);
  $("viewer").addEventListener("click", (event) => { if (event.target === $("viewer")) closeViewer(); });  // the backdrop
  $("viewer").addEventListener("close", () => {
    $("viewer-image").removeAttribute("src");
    const tileOf = shown && [...document.querySelectorAll(".hit")].find((node) => node.dataset.id === shown.id);
    if (tileOf) tileOf.querySelector(".open").focus();
  });

  const params = new URLSearchParams(location.search);
  $("query").value = params.get("q") || "";
  $("folder").value = params.get("in") || "";
  Object.assign(state, { query: $("query").value, folder: $("folder").value, offset: Math.max(0, parseInt(params.get("offset"), 10) || 0) });
  if (params.get("like")) state.similarId = params.get("like");
  refreshStatus();
  pollIngest();
  run();
});
