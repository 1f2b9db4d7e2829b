// The clipsearch page: search, like/dislike refinement, "more like this", paging, the
// status line and the watched ingest's progress. Plain JS over the JSON API, no build
// step. Text from the server (paths, errors) goes in with textContent only.
"use strict";

const K = 24;
const INGEST_POLL_MS = 2000;
const PROBE_MS = 2000;  // while thumbnails could not load or a search got no answer: how soon to ask the server again (doubling, to 10 s)
const THUMBNAIL_TRIES = 5;
const ERRORS_LISTED = 100;  // GET /api/ingest lists the latest 100 files that could not be read
const CHANGED_RETRY_MS = 3000;  // a photo changed since it was indexed: a watching serve indexes it again within seconds
// The page's words are for whoever uses it (the family); the API's own errors, worded for
// developers, go in a tooltip where the page words them differently.
const UNREACHABLE = "The server is not answering; trying again…";
const UNREACHABLE_NOW = "The server is not answering; try again in a moment.";
const ABSOLUTE = /^(\/|[A-Za-z]:[\\/]|\\\\)/;  // a folder in full: /home/…, C:\…, \\server\…
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
const $ = (id) => document.getElementById(id);
// The photo filters (the API's after, before, camera and near), each with its box's label.
const FILTERS = { after: "Taken from", before: "Taken before", camera: "Camera", near: "Near" };
// A photo searched with is sent no larger than this on its long side (CLIP sees 224 px):
// a phone's 12 MB photo is sent as a few hundred KB, again for each page.
const PHOTO_SIDE = 1024;

// What the grid shows: a text search (query), the images like one indexed image
// (similarId) or like a photo from this device (photo: a File), refined by likes and
// dislikes, and by the photo filters; `offset` pages through it. All of it but
// similarPath (a label, kept in the history entry) and the photo itself is in the
// address, so that a reload, a shared link and Back show the same results. The photo
// is kept in this page's memory only (photos, by the key in its history entry): the
// address names it, and a reload asks for it again. The query words stay through
// "more like this".
const state = {
  query: "", folder: "", similarId: null, similarPath: "", photo: null, photoKey: null, photoName: "",
  liked: new Set(), disliked: new Set(), offset: 0, after: "", before: "", camera: "", near: "",
};
const photos = new Map();  // photoKey -> { file, sent, preview }: the photos searched with since the page loaded
// Keys unique to this load: a history entry from before a reload names a key no photo
// of this load has (and says so), never another photo's.
const LOAD = `${Date.now().toString(36)}${Math.random().toString(36).slice(2, 6)}`;
let photoChoice = 0;  // the latest photo chosen: one chosen while an earlier one is shrinking wins
let current = [];  // the hits on screen
let shown = null;  // the hit in the viewer
let generation = 0;  // answers to superseded requests are dropped
let navigations = 0;  // searches the user asked for (not a retry of one): a photo shrinking meanwhile gives way

class ApiError extends Error {
  constructor(message, status) {
    super(message);
    this.status = status;
  }
}

// body: nothing (GET), FormData (a photo, sent as multipart) or JSON.
async function api(path, body) {
  const init = body === undefined ? {} : body instanceof FormData ? { method: "POST", body }
    : { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) };
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

// `mild`: a hint about what was typed (an empty search), not something gone wrong.
function showError(message, mild = false) {
  $("error").textContent = visible(message);
  $("error").title = "";
  $("error").hidden = !message;
  $("error").classList.toggle("mild", mild);
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
  if (state.photoKey) params.set("photo", state.photoName || "photo");
  if (state.disliked.size) params.set("disliked", [...state.disliked].join(","));
  for (const name of Object.keys(FILTERS)) if (state[name]) params.set(name, state[name]);
  if (state.offset) params.set("offset", state.offset);
  return params.toString();
}

// The filters asked for, as the API takes them (names it leaves out: none given).
function filterValues() {
  return Object.fromEntries(Object.keys(FILTERS).filter((name) => state[name]).map((name) => [name, state[name]]));
}

// The filter boxes as typed, trimmed.
function typedFilters() {
  return Object.fromEntries(Object.keys(FILTERS).map((name) => [name, $(name).value.trim()]));
}

// The filters in the summary: "taken from 2023 · camera “canon”".
function filtersText() {
  const said = { after: (v) => `taken from ${v}`, before: (v) => `taken before ${v}`, camera: (v) => `camera “${v}”`,
    near: (v) => `near ${v} (lat,lon,km)` };
  return Object.entries(filterValues()).map(([name, value]) => said[name](value)).join(" · ");
}

// The boxes show the filters in force; the Filters disclosure is open and counts them
// while any is.
function showFilters() {
  for (const name of Object.keys(FILTERS)) {
    $(name).value = state[name];
    $(name).removeAttribute("aria-invalid");
  }
  const count = Object.keys(filterValues()).length;
  $("filters-summary").textContent = count ? `Filters (${count})` : "Filters";
  if (count) $("filters").open = true;
}

// The search in the address bar: a new history entry for a new search, page or "more
// like this" (push), the same entry for a refinement of it. The entry of a photo open in
// the viewer (viewing(), so that Back closes it) is kept while the viewer is open, and is
// taken over by a search started from it (more like this): Back from that search goes to
// the results the photo was opened from, not to the photo.
function remember(push) {
  const search = address();
  const url = search ? `?${search}` : location.pathname;
  const entry = { similarPath: state.similarPath, photoKey: state.photoKey };
  if ($("viewer").open && viewing()) entry.viewer = viewing();
  // A new photo under the same name (iPhones call them all image.jpg) is a new place too.
  const moved = search !== location.search.slice(1) || ((history.state && history.state.photoKey) || null) !== state.photoKey;
  if (push && moved && !viewing()) history.pushState(entry, "", url);
  else history.replaceState(entry, "", url);
}

function viewing() {
  return (history.state && history.state.viewer) || null;
}

// The state the address holds (on load, and on Back and Forward). An offset between pages
// is rounded down to its page, so that the page number and the ranks shown agree.
function restore() {
  const params = new URLSearchParams(location.search);
  const ids = (key) => (params.get(key) || "").split(",").filter((id) => UUID.test(id));
  const offset = Math.max(0, parseInt(params.get("offset"), 10) || 0);
  const photoKey = params.has("photo") ? (history.state && history.state.photoKey) || "gone" : null;
  Object.assign(state, {
    query: params.get("q") || "", folder: params.get("in") || "", similarId: params.get("like") || null,
    similarPath: (history.state && history.state.similarPath) || "", offset: offset - (offset % K),
    photoKey, photo: photoKey && photos.has(photoKey) ? photos.get(photoKey) : null, photoName: params.get("photo") || "",
  });
  for (const name of Object.keys(FILTERS)) state[name] = (params.get(name) || "").trim();
  state.liked.clear();
  state.disliked.clear();
  ids("liked").forEach((id) => state.liked.add(id));
  ids("disliked").filter((id) => !state.liked.has(id)).forEach((id) => state.disliked.add(id));
  $("query").value = state.query;
  $("folder").value = state.folder;
  showFilters();
}

// -- searching ----------------------------------------------------------------------

// One hit more than a page is asked for: whether there is a next page (an exactly full
// last page has none).
function request() {
  const refined = state.liked.size > 0 || state.disliked.size > 0;
  const folder = state.folder.trim() || null;
  if (state.photoKey) {
    const form = new FormData();
    form.append("file", state.photo.sent, state.photoName || "photo");
    const fields = { k: K + 1, offset: state.offset, ...filterValues() };
    if (folder) fields.in = folder;
    for (const [name, value] of Object.entries(fields)) form.append(name, value);
    return ["/api/search/image", form];
  }
  if (state.similarId && !refined) {
    const params = new URLSearchParams({ k: K + 1, offset: state.offset, ...filterValues() });
    if (folder) params.set("in", folder);
    return [`/api/images/${encodeURIComponent(state.similarId)}/similar?${params}`, undefined];
  }
  return ["/api/search", {
    query: state.similarId ? null : state.query, image_id: state.similarId, liked: [...state.liked],
    disliked: [...state.disliked], in: folder, k: K + 1, offset: state.offset, ...filterValues(),
  }];
}

// The API's word on a bad filter ("after= '2023-13' is not a date: ..."), as the page's
// boxes name it; the box is marked and the filters shown. Other errors: as they are.
function filterProblem(message) {
  const match = /^(after|before|camera|near)= (.*)$/s.exec(message);
  if (!match) return "";
  $(match[1]).setAttribute("aria-invalid", "true");
  $("filters").open = true;
  const named = match[2].replace(/^'(.*?)'/, "“$1”").replace(/\b(after|before|camera|near)= /g, (_, name) => `“${FILTERS[name]}” `);
  return `The “${FILTERS[match[1]]}” box: ${named}`;
}

// Why a photo could not be searched with, in words for people (the server's own in the
// error's tooltip).
function photoProblem(error) {
  if (error.status === 413) return "This photo is too large to search with.";
  const decoder = /no (.+?) decoder: `pip install ([\w-]+)`/.exec(error.message);
  if (error.status === 415 && decoder) return `The server cannot read ${decoder[1]} photos until ${decoder[2]} is installed there.`;
  if (error.status === 415) return "This file is not a photo the server can read.";
  if (error.status === 503) return "The server is busy with other photos; try again in a moment.";
  return "";
}

// Asks for what `state` says and shows it; `after` runs once it is shown.
async function run(after) {
  const mine = ++generation;
  retrySearch = false;
  if (state.similarId && !UUID.test(state.similarId)) {
    showError(`The address asks for images like “${state.similarId.slice(0, 80)}”, which is not an image id: search with words instead.`);
    render(null);
    return;
  }
  if (state.photoKey && !state.photo) {
    showError(`This search used a photo (${state.photoName}) that the page no longer holds: a reload forgets it. Choose it again with “Search with a photo”.`, true);
    render(null);
    return;
  }
  if (!state.photoKey && !state.similarId && !state.query.trim()) {
    showError("");
    render(null);
    return;
  }
  const problem = folderProblem(state.folder);
  if (problem) {
    showError(problem);
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
    data.more = data.hits.length > K;
    data.hits = data.hits.slice(0, K);
    const notes = [forgetGone(data.dropped || []), emptyFolder(data)].filter(Boolean);
    $("note").textContent = notes.join(" ");
    $("note").hidden = !notes.length;
    render(data);
    if (after) after();
  } catch (error) {
    if (mine !== generation || error.message === "logged out") return;
    if (error.status === 0) {  // no answer: what is shown stays, with the reason, until the server answers
      showError(error.message);
      retrySearch = true;
      probeLater();
      return;
    }
    // More like this: the one image is the query, so a 404 is that image gone.
    const gone = state.similarId && !state.photoKey && error.status === 404;
    const worded = (error.status === 400 && filterProblem(error.message)) || (state.photoKey && photoProblem(error));
    showError(gone ? "The image you asked for more like is no longer in the index (deleted, moved or renamed since it was shown): search again." : worded || error.message);
    $("error").title = worded ? visible(error.message) : "";
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
  navigations++;
  remember(true);
  run(after);
}

// The same place refined (likes and dislikes): the history entry is updated, not added.
function refine(after) {
  navigations++;
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
  return which ? `Left out ${which}: no longer in the index (deleted, moved or renamed since shown).` : "";
}

// The server's note on an empty answer (nothing indexed under the Folder box's folder:
// a typo, or a folder never added; a camera word no photo has), in words for people;
// the API's own in a tooltip.
function emptyFolder(data) {
  $("note").title = data.note ? visible(data.note) : "";
  if (!data.note) return "";
  const folder = state.folder.trim();
  if (!folder || !data.note.startsWith("in=")) {
    const note = visible(data.note).replace(/'([^']*)'/g, "“$1”");
    return `${note.charAt(0).toUpperCase()}${note.slice(1)}.`;
  }
  return `There are no photos under the folder “${visible(folder)}”. Check its spelling (capital letters count), or empty the Folder box to search everywhere.`;
}

// What is wrong with the Folder box's folder, in words for people, before the server is
// asked: it takes a folder as the computer that holds the photos names it, in full. A
// folder typed as its name alone is looked for in the paths on screen.
function folderProblem(typed) {
  const folder = typed.trim();
  if (!folder || ABSOLUTE.test(folder)) return "";
  const full = current.map((hit) => hit.path).filter((path) => ABSOLUTE.test(path));
  const part = folder.replace(/^~?\/+|\/+$/g, "");
  for (const path of part ? full : []) {
    const at = path.indexOf(`/${part}/`);
    if (at >= 0) return `Type the folder in full, starting with “/”. Did you mean “${path.slice(0, at + part.length + 1)}”?`;
  }
  const example = full.length ? ` For example: “${full[0].slice(0, full[0].lastIndexOf("/")) || "/"}”.` : "";
  const home = folder.startsWith("~") ? " “~” is not understood here." : "";
  return `Type the folder in full, starting with “/”, as on the computer that holds the photos.${home}${example}`;
}

function render(data) {
  const hits = data ? data.hits : [];
  current = hits;
  unloaded.clear();
  $("results").replaceChildren(...hits.map(tile));
  const like = state.photoKey ? `your photo ${state.photoName}` : state.similarPath ? fileName(state.similarPath) : "the chosen image";
  const filters = filtersText();
  const what = visible((state.photoKey || state.similarId ? `images like ${like}` : `“${state.query}”`) + (filters ? ` · ${filters}` : ""));
  const preview = state.photo && data ? state.photo.preview : "";
  if ($("photo-preview").getAttribute("src") !== preview) $("photo-preview").src = preview;
  $("photo-preview").hidden = !preview;
  if (!data) {
    $("summary").textContent = "";
    $("note").hidden = true;
  } else if (!hits.length) $("summary").textContent = state.offset ? `No more results for ${what}.` : `No results for ${what}.`;
  else $("summary").textContent = `Results ${hits[0].rank}–${hits[hits.length - 1].rank} for ${what} (${Math.round(data.took_ms)} ms)`;
  const refined = state.liked.size + state.disliked.size;
  $("refine").hidden = !data || !refined;
  $("refine-text").textContent = `Refined by ${state.liked.size} liked and ${state.disliked.size} disliked. `;
  $("pager").hidden = !data || (state.offset === 0 && !data.more);
  $("prev").disabled = state.offset === 0;
  $("next").disabled = !data || !data.more;
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
  caption(node.querySelector(".path"), visible(hit.path));
  // A photo from this device is no point of the index to refine around: no marks.
  node.querySelector(".marks").hidden = Boolean(state.photoKey);
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

// The caption: the file name on its first line, cut in the middle where it is too long
// (its ending and extension stay), and its folder below, cut at the start (the folders
// nearest the photo stay). Its text is the whole path, which is also its tooltip.
function caption(node, path) {
  const cut = path.lastIndexOf("/") + 1;
  const name = [...path.slice(cut)];  // characters, not UTF-16 halves: an emoji is not cut in two
  const dot = name.lastIndexOf(".");
  const end = name.length - Math.min(16, Math.max(8, dot > 0 ? name.length - dot + 4 : 0));
  node.querySelector(".folder bdi").textContent = path.slice(0, cut);
  node.querySelector(".name-start").textContent = name.slice(0, Math.max(0, end)).join("");
  node.querySelector(".name-end").textContent = name.slice(Math.max(0, end)).join("");
  node.title = path;
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

// The server answered: the thumbnails that could not load are asked again, and so is a
// search that got no answer (its error then goes).
let retrySearch = false;

function serverAnswered() {
  probeDelay = PROBE_MS;
  for (const node of unloaded) {
    unloaded.delete(node);
    node.dataset.tries = Number(node.dataset.tries || 0) + 1;
    const img = node.querySelector("img");
    img.src = img.getAttribute("src");  // setting it again loads it again
  }
  if (retrySearch) run();
}

// Asks the server for its status until it answers (api() then retries the thumbnails
// and the search), or answers 401 (the session ended: api() reloads into the login form).
function probeLater() {
  if (probe) return;
  const waiting = () => unloaded.size || retrySearch;
  probe = setTimeout(async () => {
    probe = 0;
    if (!waiting()) return;
    if (!(await refreshStatus())) probeDelay = Math.min(probeDelay * 2, 10000);
    if (waiting()) probeLater();
  }, probeDelay);
}

function newSearch(query, folder) {
  Object.assign(state, { query, folder, similarId: null, similarPath: "", photo: null, photoKey: null, photoName: "", offset: 0 }, typedFilters());
  state.liked.clear();
  state.disliked.clear();
  showFilters();
  navigate();
}

// The search on screen again, its likes and dislikes kept, with the Folder and filter
// boxes as typed.
function filterAgain(folder) {
  Object.assign(state, { folder, offset: 0 }, typedFilters());
  showFilters();
  navigate(focusHeading);
}

function moreLike(hit) {
  Object.assign(state, { similarId: hit.id, similarPath: hit.path, photo: null, photoKey: null, photoName: "", offset: 0 });
  state.liked.clear();
  state.disliked.clear();
  navigate(focusHeading);
}

// A photo from this device as the query (chosen or dropped on the page), with the
// Folder and filter boxes as typed. Sent as the browser can shrink it (PHOTO_SIDE), or
// as it is where the browser cannot read it (the server may).
async function searchWithPhoto(file) {
  if (!file) return;
  if (file.type && !file.type.startsWith("image/")) {
    showError(`“${visible(file.name)}” is not a photo: choose an image file.`);
    return;
  }
  const problem = folderProblem($("folder").value);
  if (problem) {
    showError(problem);
    return;
  }
  const mine = ++photoChoice;
  const before = navigations;
  const sent = await shrunk(file);
  if (mine !== photoChoice || navigations !== before) return;  // another photo or search came meanwhile
  const key = `${LOAD}-${mine}`;
  photos.set(key, { file, sent, preview: URL.createObjectURL(file) });
  closeViewer(true);
  Object.assign(state, { similarId: null, similarPath: "", photo: photos.get(key), photoKey: key, photoName: file.name || "photo",
    folder: $("folder").value, offset: 0 }, typedFilters());
  state.liked.clear();
  state.disliked.clear();
  showFilters();
  navigate(focusHeading);
}

async function shrunk(file) {
  try {
    const bitmap = await createImageBitmap(file);
    const scale = PHOTO_SIDE / Math.max(bitmap.width, bitmap.height);
    if (scale >= 1) { bitmap.close(); return file; }
    const canvas = new OffscreenCanvas(Math.round(bitmap.width * scale), Math.round(bitmap.height * scale));
    const context = canvas.getContext("2d");
    context.fillStyle = "#fff";  // transparency on white, as the server lays it (a JPEG has none)
    context.fillRect(0, 0, canvas.width, canvas.height);
    context.drawImage(bitmap, 0, 0, canvas.width, canvas.height);
    bitmap.close();
    return await canvas.convertToBlob({ type: "image/jpeg", quality: 0.92 });
  } catch {
    return file;  // a format this browser does not decode (HEIC on most): the server reads it
  }
}

function page(step) {
  state.offset = Math.max(0, state.offset + step * K);
  navigate(() => { toResults(); focusHeading(); });
}

// -- the viewer ---------------------------------------------------------------------

// Opening a photo adds a history entry (the photo's id in its state, the address the
// same), so that Back (a phone's above all) closes the photo rather than leave the
// results; Previous and Next (buttons, arrow keys, a swipe) step through the hits on
// screen in the same entry.
let viewerTries = 0;  // the original asked again once, after a 410 (changed since indexed)
let viewerRetry = 0;

function openViewer(hit) {
  shown = hit;
  viewerTries = 0;
  clearTimeout(viewerRetry);
  const viewer = $("viewer");
  $("viewer-error").hidden = true;
  $("viewer-image").hidden = false;
  $("viewer-image").src = hit.file;
  $("viewer-image").alt = visible(fileName(hit.path));
  $("viewer-path").textContent = visible(hit.path);
  const size = hit.width && hit.height ? `${hit.width} × ${hit.height} · ` : "";
  const taken = hit.taken ? `taken ${hit.taken.replace("T", " ").slice(0, 16)} · ` : "";
  const camera = hit.camera ? `${visible(hit.camera)} · ` : "";
  $("viewer-facts").textContent = `${size}${taken}${camera}#${hit.rank} · score ${hit.score.toFixed(3)}`;
  $("viewer-original").href = hit.file;
  $("viewer-download").href = hit.file;  // saved under the name the server gives it (Content-Disposition)
  const at = current.indexOf(hit);
  $("viewer-prev").disabled = at <= 0;
  $("viewer-next").disabled = at < 0 || at >= current.length - 1;
  const entry = { ...(history.state || {}), viewer: hit.id };
  if (viewing()) history.replaceState(entry, "");
  else history.pushState(entry, "");
  if (!viewer.open) {
    viewer.showModal();
    $("more-like-this").focus();
  }
}

function stepViewer(step) {
  const at = current.indexOf(shown);  // -1: the grid was drawn again meanwhile
  const hit = at >= 0 && current[at + step];
  if ($("viewer").open && hit) openViewer(hit);
}

// The original did not load: why, in words for people (the server's own reason in the
// tooltip); or, where the server sent it whole, the large thumbnail instead (a format
// this browser does not show). A photo changed since it was indexed is asked again once,
// a little later: a watching serve indexes it again meanwhile.
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
  const again = status === 410 && viewerTries++ === 0;
  $("viewer-error").textContent = viewerProblem(status, again);
  $("viewer-error").title = status && status !== 410 && status !== 404 ? "" : visible(error);
  $("viewer-error").hidden = false;
  if (again) {
    viewerRetry = setTimeout(() => {
      if (shown === hit && $("viewer").open) img.src = src;  // setting it again loads it again
    }, CHANGED_RETRY_MS);
  }
}

function viewerProblem(status, again) {
  if (status >= 200 && status < 300) return "This browser cannot show this photo. Download it to see it.";
  if (status === 0) return UNREACHABLE_NOW;
  if (status === 404) return "This photo was deleted, moved or renamed since these results were shown. Search again.";
  if (status === 410) {
    return again ? "This photo was just changed or moved; trying again in a moment…"
      : "This photo was changed, moved or deleted since these results were shown. Search again.";
  }
  return "This photo cannot be shown right now; try again in a moment.";
}

// keepHistory: the history already moved (Back), or a search started from the photo
// takes its entry over (remember()); else the photo's entry is taken back.
let keepHistory = false;

function closeViewer(keep = false) {
  const viewer = $("viewer");
  if (!viewer.open) return;
  keepHistory = keep;
  viewer.close();
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
  // Files that could not be read: one line, the list behind it (a library with a folder
  // of broken or unsupported files would push every search's results off the screen).
  const errors = progress.errors || [];
  $("ingest-problems").hidden = !errors.length;
  const many = errors.length >= ERRORS_LISTED ? `${ERRORS_LISTED} or more files` : `${errors.length} file${errors.length === 1 ? "" : "s"}`;
  $("ingest-problems-count").textContent = `${many} could not be read`;
  $("ingest-errors").replaceChildren(...errors.map((e) => {
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
    showError(UNREACHABLE_NOW);
    return;
  }
  location.reload();  // into the login form, the search kept in the address
}

// -- wiring -------------------------------------------------------------------------

document.addEventListener("DOMContentLoaded", () => {
  $("search-form").addEventListener("submit", (event) => {
    event.preventDefault();
    // Nothing to search for, or a folder the server cannot take: said at once, the results
    // and the address kept. Enter in the Folder or a filter box, or no words while images
    // like one are shown: the search shown (if it can run) again, its likes kept, with
    // those boxes as they are now. Else the words (Enter in their box, the Search button):
    // a new search, as from images like one back to the words.
    const words = $("query").value;
    const byImage = (state.photoKey && state.photo) || (state.similarId && UUID.test(state.similarId));
    const byWords = !state.photoKey && !state.similarId && Boolean(state.query.trim());
    const fromBox = ["folder", ...Object.keys(FILTERS)].includes(document.activeElement && document.activeElement.id);
    const again = (fromBox && (byImage || byWords)) || (byImage && !words.trim());
    const problem = !words.trim() && !again ? "Type what you are looking for, e.g. “a dog on a beach”."
      : folderProblem($("folder").value);
    if (problem) {
      showError(problem, !words.trim());
      return;
    }
    closeViewer(true);
    if (again) filterAgain($("folder").value);
    else newSearch(words, $("folder").value);
  });
  $("photo-button").addEventListener("click", () => $("photo-file").click());
  $("photo-file").addEventListener("change", () => {
    const file = $("photo-file").files[0];
    $("photo-file").value = "";  // the same photo chosen again is a change again
    searchWithPhoto(file);
  });
  $("clear-filters").addEventListener("click", () => {
    for (const name of Object.keys(FILTERS)) $(name).value = "";
    if (!Object.keys(filterValues()).length) return;
    Object.assign(state, typedFilters(), { offset: 0 });
    showFilters();
    navigate();
  });
  // A photo dropped anywhere on the page is searched with.
  const files = (event) => event.dataTransfer && [...event.dataTransfer.types].includes("Files");
  document.addEventListener("dragover", (event) => {
    if (!files(event)) return;
    event.preventDefault();
    document.body.classList.add("dropping");
  });
  document.addEventListener("dragleave", (event) => { if (!event.relatedTarget) document.body.classList.remove("dropping"); });
  document.addEventListener("drop", (event) => {
    document.body.classList.remove("dropping");
    if (!files(event)) return;
    event.preventDefault();
    // Several files dropped: the first image among them (the summary names it).
    const dropped = [...event.dataTransfer.files];
    searchWithPhoto(dropped.find((file) => file.type.startsWith("image/")) || dropped[0]);
  });
  $("prev").addEventListener("click", () => page(-1));
  $("next").addEventListener("click", () => page(1));
  $("clear-refine").addEventListener("click", () => { state.liked.clear(); state.disliked.clear(); state.offset = 0; refine(); });
  $("more-like-this").addEventListener("click", () => { const hit = shown; closeViewer(true); moreLike(hit); });
  $("viewer-close").addEventListener("click", () => closeViewer());
  $("viewer").addEventListener("click", (event) => { if (event.target === $("viewer")) closeViewer(); });  // the backdrop
  $("viewer-prev").addEventListener("click", () => stepViewer(-1));
  $("viewer-next").addEventListener("click", () => stepViewer(1));
  document.addEventListener("keydown", (event) => {  // the document's: a step can disable the focused button
    if (!$("viewer").open || event.altKey || event.ctrlKey || event.metaKey || event.target.matches("input, textarea")) return;
    if (event.key === "ArrowLeft" || event.key === "ArrowRight") {
      event.preventDefault();
      stepViewer(event.key === "ArrowLeft" ? -1 : 1);
    }
  });
  let touched = null;  // where a swipe began
  $("viewer").addEventListener("touchstart", (event) => { touched = event.touches.length === 1 ? event.touches[0] : null; }, { passive: true });
  $("viewer").addEventListener("touchend", (event) => {
    const end = event.changedTouches[0];
    if (!touched || !end) return;
    const dx = end.clientX - touched.clientX;
    if (Math.abs(dx) > 60 && Math.abs(dx) > 2 * Math.abs(end.clientY - touched.clientY)) stepViewer(dx < 0 ? 1 : -1);
    touched = null;
  });
  $("viewer-image").addEventListener("error", viewerFailed);
  $("viewer-image").addEventListener("load", () => { $("viewer-error").hidden = true; $("viewer-image").hidden = false; });
  $("viewer").addEventListener("close", () => {
    clearTimeout(viewerRetry);
    $("viewer-image").removeAttribute("src");
    const tileOf = shown && [...document.querySelectorAll(".hit")].find((node) => node.dataset.id === shown.id);
    if (tileOf) tileOf.querySelector(".open").focus();
    if (!keepHistory && viewing()) history.back();
    keepHistory = false;
  });
  $("logout").addEventListener("click", logout);
  window.addEventListener("popstate", () => {
    // The same results (Back from a photo, Forward to one): only the viewer changes.
    if (location.search.slice(1) === address() && ((history.state && history.state.photoKey) || null) === state.photoKey) {
      const hit = viewing() && current.find((each) => each.id === viewing());
      if (hit) openViewer(hit);
      else closeViewer(true);
      return;
    }
    closeViewer(true);
    restore();
    run();
  });

  restore();
  refreshStatus();
  pollIngest();
  api("/api/session").then((session) => { $("logout").hidden = !session.token; }, () => {});
  run();
});
