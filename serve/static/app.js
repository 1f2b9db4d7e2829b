// The clipsearch page: search, like/dislike refinement, "more like this", paging, the
// status line and the watched ingest's progress. Plain JS over the JSON API, no build
// step. Text from the server (paths, errors) goes in with textContent only.
"use strict";

const K = 24;
const INGEST_POLL_MS = 2000;
const PROBE_MS = 2000;  // while thumbnails could not load: how soon to ask the server again (doubling, to 10 s)
const THUMBNAIL_TRIES = 5;
const UNREACHABLE = "Cannot reach the server; is clipsearch serve running?";
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
const $ = (id) => document.getElementById(id);

// What the grid shows: a text search (query) or the images like one image (similarId),
// refined by likes and dislikes; `offset` pages through it. All of it but similarPath (a
// label, kept in the history entry) is in the address, so that a reload, a shared link
// and Back show the same results. The query words stay through "more like this".
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
  let response;
  try {
    response = await fetch(path, { credentials: "same-origin", ...init });
  } catch {
    throw new ApiError(UNREACHABLE, 0);  // no answer at all: status 0
  }
  if (response.status === 401) {  // logged out: the server answers / with its login page
    location.reload();
    throw new ApiError("logged out");
  }
  let data = null;
  try { data = await response.json(); } catch { /* not JSON */ }
  if (!response.ok) throw new ApiError((data && data.error) || `${response.status} ${response.statusText}`, response.status);
  serverAnswered();
  return data;
}

// Why an image did not load, as the server says it for the same URL: {status, error},
// status 0 when nothing answered.
async function whyNot(url) {
  let response;
  try {
    response = await fetch(url, { credentials: "same-origin" });
  } catch {
    return { status: 0, error: UNREACHABLE };
  }
  if (response.ok) {
    if (response.body) response.body.cancel().catch(() => {});  // an original may be large
    return { status: response.status, error: "" };
  }
  let error = "";
  try { error = (await response.json()).error || ""; } catch { /* not JSON */ }
  return { status: response.status, error: error || `${response.status} ${response.statusText}` };
}

function showError(message) {
  $("error").textContent = visible(message);
  $("error").hidden = !message;
}

// Names are split on "/" only: a backslash is an ordinary character of a file name, and
// a name that is not UTF-8 comes from the server with its bytes as \xNN.
function fileName(path) {
  return path.split("/").filter(Boolean).pop() || path;
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

// -- the address --------------------------------------------------------------------

function address() {
  const params = new URLSearchParams();
  if (state.query) params.set("q", state.query);
  if (state.similarId) params.set("like", state.similarId);
  if (state.folder) params.set("in", state.folder);
  if (state.liked.size) params.set("liked", [...state.liked].join(","));
  if (state.disliked.size) params.set("disliked", [...state.disliked].join(","));
  if (state.offset) params.set("offset", state.offset);
  return params.toString();
}

// The search in the address bar: a new history entry for a new search, page or "more
// like this" (push), the same entry for a refinement of it.
function remember(push) {
  const search = address();
  const url = search ? `?${search}` : location.pathname;
  const entry = { similarPath: state.similarPath };
  if (push && search !== location.search.slice(1)) history.pushState(entry, "", url);
  else history.replaceState(entry, "", url);
}

// The state the address holds (on load, and on Back and Forward). An offset between pages
// is rounded down to its page, so that the page number and the ranks shown agree.
function restore() {
  const params = new URLSearchParams(location.search);
  const ids = (key) => (params.get(key) || "").split(",").filter((id) => UUID.test(id));
  const offset = Math.max(0, parseInt(params.get("offset"), 10) || 0);
  Object.assign(state, {
    query: params.get("q") || "", folder: params.get("in") || "", similarId: params.get("like") || null,
    similarPath: (history.state && history.state.similarPath) || "", offset: offset - (offset % K),
  });
  state.liked.clear();
  state.disliked.clear();
  ids("liked").forEach((id) => state.liked.add(id));
  ids("disliked").filter((id) => !state.liked.has(id)).forEach((id) => state.disliked.add(id));
  $("query").value = state.query;
  $("folder").value = state.folder;
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

// Asks for what `state` says and shows it; `after` runs once it is shown.
async function run(after) {
  const mine = ++generation;
  if (state.similarId && !UUID.test(state.similarId)) {
    showError(`The address asks for images like “${state.similarId.slice(0, 80)}”, which is not an image id: search with words instead.`);
    render(null);
    return;
  }
  if (!state.similarId && !state.query.trim()) {
    showError("");
    render(null);
    return;
  }
  $("results").setAttribute("aria-busy", "true");
  try {
    const data = await api(...request());
    if (mine !== generation) return;
    if (state.similarId && !state.similarPath) state.similarPath = await pathOf(state.similarId);
    if (mine !== generation) return;
    showError("");
    forgetGone(data.dropped || []);
    render(data);
    if (after) after();
  } catch (error) {
    if (mine !== generation || error.message === "logged out") return;
    if (error.status === 0) {  // no answer: what is shown stays, with the reason
      showError(error.message);
      return;
    }
    // More like this: the one image is the query, so a 404 is that image gone.
    const gone = state.similarId && error.status === 404;
    showError(gone ? "The image you asked for more like is no longer in the index (deleted, moved or renamed since it was shown): search again." : error.message);
    render(null);
  } finally {
    if (mine === generation) $("results").removeAttribute("aria-busy");
  }
}

// The path of the image "more like this" started from, when the address alone brought it.
async function pathOf(id) {
  try { return (await api(`/api/images/${encodeURIComponent(id)}`)).path || ""; } catch { return ""; }
}

// A new place in the history (a search, a page, more like this), then its results.
function navigate(after) {
  remember(true);
  run(after);
}

// The same place refined (likes and dislikes): the history entry is updated, not added.
function refine(after) {
  remember(false);
  run(after);
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
  unloaded.clear();
  $("results").replaceChildren(...hits.map(tile));
  const what = visible(state.similarId ? `images like ${state.similarPath ? fileName(state.similarPath) : "the chosen image"}` : `“${state.query}”`);
  if (!data) {
    $("summary").textContent = "";
    $("note").hidden = true;
  } else if (!hits.length) $("summary").textContent = state.offset ? `No more results for ${what}.` : `No results for ${what}.`;
  else $("summary").textContent = `Results ${hits[0].rank}–${hits[hits.length - 1].rank} for ${what} (${Math.round(data.took_ms)} ms)`;
  const refined = state.liked.size + state.disliked.size;
  $("refine").hidden = !data || !refined;
  $("refine-text").textContent = `Refined by ${state.liked.size} liked and ${state.disliked.size} disliked. `;
  $("pager").hidden = !data || (state.offset === 0 && hits.length < K);
  $("prev").disabled = state.offset === 0;
  $("next").disabled = hits.length < K;
  $("page").textContent = `Page ${Math.floor(state.offset / K) + 1}`;
  remember(false);
}

// Re-rendering the grid takes the focus with the control that had it: it goes to the same
// control of the same photo, or (that photo no longer shown, as a disliked one is not) to
// the photo now in its place, or to the results' heading. Unless it was moved meanwhile.
function refocus(selector, id, place) {
  if (document.activeElement && document.activeElement !== document.body) return;
  const tiles = [...$("results").children];
  const same = tiles.find((node) => node.dataset.id === id);
  const control = same ? same.querySelector(selector) : tiles.length && tiles[Math.min(place, tiles.length - 1)].querySelector(".open");
  (control || $("summary")).focus();
}

function focusHeading() {
  const focused = document.activeElement;
  if (!focused || focused === document.body || $("pager").contains(focused)) $("summary").focus({ preventScroll: true });
}

// The top of the results in view (after paging from the bottom of a page), below the
// header where it stays on screen.
function toResults() {
  const header = document.querySelector("header");
  const covered = getComputedStyle(header).position === "sticky" ? header.offsetHeight : 0;
  const top = $("summary-bar").getBoundingClientRect().top + window.scrollY - covered - 8;
  if (window.scrollY > top) window.scrollTo(0, Math.max(0, top));
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
  img.addEventListener("error", () => thumbnailFailed(node, img));
  img.addEventListener("load", () => {
    node.classList.remove("missing", "unloaded");
    node.querySelector(".problem").hidden = true;
    unloaded.delete(node);
  });
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
      const place = [...$("results").children].indexOf(node);
      refine(() => refocus(`.${cls}`, hit.id, place));
    });
  }
  return node;
}

// -- thumbnails that did not load ---------------------------------------------------

// A photo is "gone" only when the server says so (404, 410). Anything else (no answer, a
// session ended, a server error) is "could not load", and is tried again when the server
// answers again (a few times), and with the next search's new tiles.
const unloaded = new Set();
let probe = 0;
let probeDelay = PROBE_MS;

async function thumbnailFailed(node, img) {
  const { status, error } = await whyNot(img.getAttribute("src"));
  if (!node.isConnected || (img.complete && img.naturalWidth)) return;
  const problem = node.querySelector(".problem");
  const gone = status === 404 || status === 410;
  node.classList.toggle("missing", gone);
  node.classList.toggle("unloaded", !gone);
  problem.textContent = gone ? "file gone" : "could not load";
  problem.title = visible(error);
  problem.hidden = false;
  if (!gone && Number(node.dataset.tries || 0) < THUMBNAIL_TRIES) {
    unloaded.add(node);
    probeLater();
  }
}

function serverAnswered() {
  probeDelay = PROBE_MS;
  for (const node of unloaded) {
    unloaded.delete(node);
    node.dataset.tries = Number(node.dataset.tries || 0) + 1;
    const img = node.querySelector("img");
    img.src = img.getAttribute("src");  // setting it again loads it again
  }
}

// Asks the server for its status until it answers (api() then retries the thumbnails),
// or answers 401 (the session ended: api() reloads into the login form).
function probeLater() {
  if (probe) return;
  probe = setTimeout(async () => {
    probe = 0;
    if (!unloaded.size) return;
    if (!(await refreshStatus())) probeDelay = Math.min(probeDelay * 2, 10000);
    if (unloaded.size) probeLater();
  }, probeDelay);
}

function newSearch(query, folder) {
  Object.assign(state, { query, folder, similarId: null, similarPath: "", offset: 0 });
  state.liked.clear();
  state.disliked.clear();
  navigate();
}

function moreLike(hit) {
  Object.assign(state, { similarId: hit.id, similarPath: hit.path, offset: 0 });
  state.liked.clear();
  state.disliked.clear();
  navigate(focusHeading);
}

function page(step) {
  state.offset = Math.max(0, state.offset + step * K);
  navigate(() => { toResults(); focusHeading(); });
}

// -- the viewer ---------------------------------------------------------------------

function openViewer(hit) {
  shown = hit;
  const viewer = $("viewer");
  $("viewer-error").hidden = true;
  $("viewer-image").hidden = false;
  $("viewer-image").src = hit.file;
  $("viewer-image").alt = visible(fileName(hit.path));
  $("viewer-path").textContent = visible(hit.path);
  const size = hit.width && hit.height ? `${hit.width} × ${hit.height} · ` : "";
  $("viewer-facts").textContent = `${size}#${hit.rank} · score ${hit.score.toFixed(3)}`;
  $("viewer-original").href = hit.file;
  if (!viewer.open) viewer.showModal();
  $("more-like-this").focus();
}

// The original did not load: the server's reason (gone, changed since indexed, no answer)
// in the viewer, or, where the server sent it whole, the large thumbnail instead (a
// format this browser does not show).
async function viewerFailed() {
  const hit = shown;
  const img = $("viewer-image");
  const src = img.getAttribute("src");
  if (!hit || !$("viewer").open || !src) return;
  const { status, error } = await whyNot(src);
  if (shown !== hit || img.getAttribute("src") !== src || !$("viewer").open) return;
  if (status >= 200 && status < 300 && src === hit.file) {
    img.src = `${hit.thumbnail}?size=1024`;
    return;
  }
  img.hidden = true;
  $("viewer-error").textContent = status >= 200 && status < 300 ? "This browser cannot show this image."
    : status === 0 ? error : `This image cannot be shown: ${visible(error)}`;
  $("viewer-error").hidden = false;
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

async function logout() {
  try {
    await fetch("/api/logout", { method: "POST", credentials: "same-origin" });
  } catch {
    showError(UNREACHABLE);
    return;
  }
  location.reload();  // into the login form, the search kept in the address
}

// -- wiring -------------------------------------------------------------------------

document.addEventListener("DOMContentLoaded", () => {
  $("search-form").addEventListener("submit", (event) => {
    event.preventDefault();
    closeViewer();
    newSearch($("query").value, $("folder").value);
  });
  $("prev").addEventListener("click", () => page(-1));
  $("next").addEventListener("click", () => page(1));
  $("clear-refine").addEventListener("click", () => { state.liked.clear(); state.disliked.clear(); state.offset = 0; refine(); });
  $("more-like-this").addEventListener("click", () => { const hit = shown; closeViewer(); moreLike(hit); });
  $("viewer-close").addEventListener("click", closeViewer);
  $("viewer").addEventListener("click", (event) => { if (event.target === $("viewer")) closeViewer(); });  // the backdrop
  $("viewer-image").addEventListener("error", viewerFailed);
  $("viewer").addEventListener("close", () => {
    $("viewer-image").removeAttribute("src");
    const tileOf = shown && [...document.querySelectorAll(".hit")].find((node) => node.dataset.id === shown.id);
    if (tileOf) tileOf.querySelector(".open").focus();
  });
  $("logout").addEventListener("click", logout);
  window.addEventListener("popstate", () => {
    closeViewer();
    restore();
    run();
  });

  restore();
  refreshStatus();
  pollIngest();
  api("/api/session").then((session) => { $("logout").hidden = !session.token; }, () => {});
  run();
});
