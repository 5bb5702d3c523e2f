// Lookalike's web page: plain JavaScript over the search API, no build step.
// State lives in one object; every change calls search(), which cancels the request before it.
"use strict";

const PAGE = 24;
const KEY_COOKIE = "lookalike_api_key";

const $ = (id) => document.getElementById(id);
const state = {
  source: null, // {kind: "file", blob, url} | {kind: "asset", id, title, url}
  crop: null, // {x, y, w, h} in the query image's natural pixels
  text: "",
  labels: new Map(), // label name -> "all" | "none"
  minConfidence: 50,
  vectorWeight: 0.5,
  regions: "off", // region search mode (API `regions`)
  offset: 0,
  apiKey: null,
};
let inflight = null;

// -- API ----------------------------------------------------------------------------------------

async function api(path, options = {}) {
  const headers = new Headers(options.headers || {});
  if (state.apiKey) headers.set("X-API-Key", state.apiKey);
  const response = await fetch(path, { ...options, headers });
  if (response.status === 401) {
    await askForKey();
    return api(path, options);
  }
  const body = await response.json().catch(() => ({}));
  if (!response.ok) {
    const detail = body.message || body.detail || response.statusText;
    throw new Error(typeof detail === "string" ? detail : JSON.stringify(detail));
  }
  return body;
}

function askForKey() {
  const dialog = $("key-dialog");
  return new Promise((resolve) => {
    dialog.addEventListener(
      "close",
      () => {
        state.apiKey = $("key").value;
        // The cookie lets <img> requests (which cannot send headers) carry the key too.
        document.cookie = `${KEY_COOKIE}=${encodeURIComponent(state.apiKey)}; path=/; SameSite=Strict`;
        resolve();
      },
      { once: true },
    );
    dialog.showModal();
  });
}

// -- searching ----------------------------------------------------------------------------------

function filters() {
  const pick = (mode) =>
    [...state.labels].filter(([, m]) => m === mode).map(([name]) => name);
  return { all: pick("all"), none: pick("none") };
}

async function buildRequest() {
  const { all, none } = filters();
  const common = {
    k: PAGE,
    offset: state.offset,
    text: state.text || null,
    vector_weight: state.vectorWeight,
    hybrid: state.text && state.source ? "linear" : "rrf",
  };
  const box = await queryBox();
  if (box) common.box = box;
  if (state.source && state.regions !== "off") common.regions = state.regions;
  if (state.source && state.source.kind === "file") {
    const form = new FormData();
    form.append("image", state.source.blob, "query.jpg");
    for (const [key, value] of Object.entries(common)) {
      if (value !== null) form.append(key, Array.isArray(value) ? value.join(",") : String(value));
    }
    for (const name of all) form.append("labels_all", `${name}:${state.minConfidence}`);
    for (const name of none) form.append("labels_none", `${name}:${state.minConfidence}`);
    return { method: "POST", body: form };
  }
  const label = (name) => ({ name, min_confidence: state.minConfidence });
  const query = {
    ...common,
    labels: { all: all.map(label), none: none.map(label) },
  };
  if (state.source) query.asset_id = state.source.id;
  return {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(query),
  };
}

async function search({ append = false } = {}) {
  if (!append) state.offset = 0;
  inflight?.abort();
  const controller = new AbortController();
  inflight = controller;
  setStatus("Searching…");
  document.body.classList.add("busy");
  try {
    const request = await buildRequest();
    const result = await api("/search", { ...request, signal: controller.signal });
    if (controller !== inflight) return;
    render(result, append);
  } catch (error) {
    if (error.name !== "AbortError") setStatus(error.message, true);
  } finally {
    if (controller === inflight) document.body.classList.remove("busy");
  }
}

// -- results ------------------------------------------------------------------------------------

function render(result, append) {
  const grid = $("grid");
  if (!append) grid.replaceChildren();
  const template = $("card-template");
  for (const hit of result.hits) grid.append(card(template, hit, result.query));
  const shown = grid.children.length;
  const total = result.total_candidates;
  const kind = {
    image: "Similar images",
    asset: "More like this",
    vector: "Similar images",
    text: "Text matches",
    filters: "Library",
  }[result.query];
  $("heading").textContent = kind;
  $("model").textContent = result.model;
  const count = total != null && result.query === "filters" ? `${shown} of ${total}` : `${shown}`;
  const summary = shown
    ? `${count} result${shown === 1 ? "" : "s"} · ${Math.round(result.took_ms)} ms`
    : "Nothing matches these filters.";
  setStatus(result.note ? `${summary} · ${result.note}` : summary);
  $("more").hidden = result.next_offset == null;
  state.offset = result.next_offset ?? state.offset;
}

function card(template, hit, kind) {
  const node = template.content.firstElementChild.cloneNode(true);
  const doc = hit.document;
  node.dataset.id = hit.id;
  node.dataset.uri = doc.uri;
  const img = node.querySelector("img");
  img.src = doc.thumbnail_url;
  img.alt = doc.title || fileName(doc.uri);
  node.querySelector(".title").textContent = doc.title || fileName(doc.uri);
  node.querySelector(".title").title = doc.uri;
  if (kind !== "filters") node.querySelector(".score").textContent = hit.score.toFixed(3);
  node.querySelector(".why").replaceChildren(...why(hit));
  const matched = new Set(hit.matched_labels.map((l) => l.name));
  const labels = node.querySelector(".labels");
  for (const lab of [...hit.matched_labels, ...specific(doc.labels).filter((l) => !matched.has(l.name))].slice(0, 4)) {
    const chip = document.createElement("span");
    chip.className = matched.has(lab.name) ? "tag matched" : "tag";
    if (matched.has(lab.name)) chip.title = "Matches your label filter";
    chip.textContent = `${lab.name} ${Math.round(lab.confidence)}%`;
    labels.append(chip);
  }
  node.querySelector(".thumb").addEventListener("click", () => moreLikeThis(hit));
  showRegion(node, hit.region);
  return node;
}

// Where a region hit matched: a box on the hit's thumbnail ("library": the query was found
// inside this image), or on the query image while the card is hovered ("query": this image
// was found inside the query).
function showRegion(node, region) {
  if (!region) return;
  if (region.side === "library") {
    const img = node.querySelector(".thumb img");
    const mark = node.querySelector(".thumb .match");
    const place = () => {
      // the thumbnail is letterboxed (object-fit: contain): place the box on the picture
      const thumb = img.parentElement;
      const scale = Math.min(thumb.clientWidth / img.naturalWidth, thumb.clientHeight / img.naturalHeight);
      const [w, h] = [img.naturalWidth * scale, img.naturalHeight * scale];
      const [ox, oy] = [(thumb.clientWidth - w) / 2, (thumb.clientHeight - h) / 2];
      const [x, y, bw, bh] = region.box;
      Object.assign(mark.style, {
        left: `${((ox + x * w) / thumb.clientWidth) * 100}%`,
        top: `${((oy + y * h) / thumb.clientHeight) * 100}%`,
        width: `${((bw * w) / thumb.clientWidth) * 100}%`,
        height: `${((bh * h) / thumb.clientHeight) * 100}%`,
      });
      mark.hidden = false;
    };
    if (img.complete && img.naturalWidth) place();
    else img.addEventListener("load", place, { once: true });
  } else {
    const show = (on) => {
      const mark = $("match");
      mark.hidden = !on;
      if (!on) return;
      const img = $("query-img");
      const [x, y, w, h] = region.box;
      Object.assign(mark.style, {
        left: `${img.offsetLeft + x * img.clientWidth}px`,
        top: `${img.offsetTop + y * img.clientHeight}px`,
        width: `${w * img.clientWidth}px`,
        height: `${h * img.clientHeight}px`,
      });
    };
    node.addEventListener("mouseenter", () => show(true));
    node.addEventListener("mouseleave", () => show(false));
  }
}

// Why it matched: the component scores, in words (matched labels are the green tags).
function why(hit) {
  const parts = [];
  if (hit.vector_score != null) parts.push(part("looks", hit.vector_score.toFixed(2), "Cosine similarity of the image embeddings"));
  if (hit.text_score != null) parts.push(part("text", hit.text_score.toFixed(1), "BM25 relevance of title, description and keywords"));
  if (hit.region) {
    const where = hit.region.side === "library" ? "in this image" : "in your image";
    parts.push(part("part", where, "A part of an image matched (the box shows which)"));
  }
  return parts;
}

function part(name, value, title) {
  const span = document.createElement("span");
  span.title = title;
  span.innerHTML = `${name} <b></b>`;
  span.querySelector("b").textContent = value;
  return span;
}

// The most specific labels (no other label names them as a parent): "Egyptian Cat" says more
// than "Animal" at 100 %.
function specific(labels) {
  const ancestors = new Set(labels.flatMap((l) => l.parents));
  return labels.filter((l) => !ancestors.has(l.name));
}

function fileName(uri) {
  return decodeURIComponent(uri.split("/").pop());
}

function setStatus(message, isError = false) {
  const status = $("status");
  status.textContent = message;
  status.classList.toggle("error", isError);
}

// -- the query image ----------------------------------------------------------------------------

function setFile(blob) {
  if (!blob || !blob.type.startsWith("image/")) {
    setStatus("That is not an image file.", true);
    return;
  }
  if (state.source?.kind === "file") URL.revokeObjectURL(state.source.url);
  state.source = { kind: "file", blob, url: URL.createObjectURL(blob) };
  showQuery(state.source.url, blob.name || "Pasted image");
  search();
}

function moreLikeThis(hit) {
  if (state.source?.kind === "file") URL.revokeObjectURL(state.source.url);
  const doc = hit.document;
  state.source = { kind: "asset", id: hit.id, title: doc.title || fileName(doc.uri), url: doc.image_url };
  showQuery(doc.image_url, state.source.title, doc.thumbnail_url);
  history.replaceState(null, "", `#asset=${encodeURIComponent(hit.id)}`);
  window.scrollTo({ top: 0, behavior: "smooth" });
  search();
}

function showQuery(url, caption, fallback) {
  const img = $("query-img");
  img.onerror = fallback ? () => { img.onerror = null; img.src = fallback; } : null;
  img.src = url;
  $("query").hidden = false;
  $("dropzone").hidden = true;
  $("query-caption").textContent = `${caption} · drag across it to search a region`;
  setCrop(null);
  updateWeightRow();
}

function clearQuery() {
  if (state.source?.kind === "file") URL.revokeObjectURL(state.source.url);
  state.source = null;
  setCrop(null);
  $("query").hidden = true;
  $("dropzone").hidden = false;
  history.replaceState(null, "", location.pathname);
  updateWeightRow();
  search();
}

// The drawn box as the API takes it: x, y, width, height in fractions of the image. The server
// cuts it out of the original file (an upload or the asset's), at full resolution.
async function queryBox() {
  if (!state.crop) return null;
  const img = $("query-img");
  await img.decode();
  const { x, y, w, h } = state.crop;
  const clamp = (v) => Math.min(1, Math.max(0, v));
  const bx = clamp(x / img.naturalWidth);
  const by = clamp(y / img.naturalHeight);
  return [bx, by, Math.min(w / img.naturalWidth, 1 - bx), Math.min(h / img.naturalHeight, 1 - by)]
    .map((v) => Math.round(v * 1e4) / 1e4);
}

// -- the crop box -------------------------------------------------------------------------------
// Drawn in displayed pixels, stored in the image's natural pixels: the crop is cut from the
// full-resolution image, whatever size it is shown at.

function setCrop(crop) {
  state.crop = crop;
  const box = $("crop");
  box.hidden = !crop;
  $("clear-crop").hidden = !crop;
  if (crop) placeBox(crop);
}

function placeBox(crop) {
  const img = $("query-img");
  const sx = img.clientWidth / img.naturalWidth;
  const sy = img.clientHeight / img.naturalHeight;
  Object.assign($("crop").style, {
    left: `${img.offsetLeft + crop.x * sx}px`,
    top: `${img.offsetTop + crop.y * sy}px`,
    width: `${crop.w * sx}px`,
    height: `${crop.h * sy}px`,
  });
}

function setupCrop() {
  const stage = $("stage");
  const img = $("query-img");
  let drag = null;

  const point = (event) => {
    const rect = img.getBoundingClientRect();
    const sx = img.naturalWidth / rect.width;
    const sy = img.naturalHeight / rect.height;
    return {
      x: Math.min(Math.max(event.clientX - rect.left, 0), rect.width) * sx,
      y: Math.min(Math.max(event.clientY - rect.top, 0), rect.height) * sy,
    };
  };

  stage.addEventListener("pointerdown", (event) => {
    if (!img.naturalWidth || event.button !== 0) return;
    event.preventDefault();
    stage.setPointerCapture(event.pointerId);
    const start = point(event);
    const c = state.crop;
    const inside = c && start.x > c.x && start.x < c.x + c.w && start.y > c.y && start.y < c.y + c.h;
    drag = inside ? { mode: "move", start, origin: { ...c } } : { mode: "draw", start };
  });

  stage.addEventListener("pointermove", (event) => {
    if (!drag) return;
    const p = point(event);
    if (drag.mode === "move") {
      const { origin } = drag;
      const x = Math.min(Math.max(origin.x + p.x - drag.start.x, 0), img.naturalWidth - origin.w);
      const y = Math.min(Math.max(origin.y + p.y - drag.start.y, 0), img.naturalHeight - origin.h);
      setCrop({ ...origin, x, y });
    } else {
      setCrop({
        x: Math.min(drag.start.x, p.x),
        y: Math.min(drag.start.y, p.y),
        w: Math.abs(p.x - drag.start.x),
        h: Math.abs(p.y - drag.start.y),
      });
    }
  });

  const finish = () => {
    if (!drag) return;
    drag = null;
    const c = state.crop;
    const minSide = 0.03 * Math.max(img.naturalWidth, img.naturalHeight);
    if (c && (c.w < minSide || c.h < minSide)) setCrop(null); // a click, not a region
    if (state.crop) {
      const r = state.crop;
      $("query-caption").textContent = `Region ${Math.round(r.w)} × ${Math.round(r.h)} px`;
    }
    search();
  };
  stage.addEventListener("pointerup", finish);
  stage.addEventListener("pointercancel", finish);
  window.addEventListener("resize", () => state.crop && placeBox(state.crop));
}

// -- labels -------------------------------------------------------------------------------------

async function loadChips() {
  const chips = $("chips");
  try {
    const { labels } = await api("/labels?min_confidence=50&limit=40");
    chips.replaceChildren(
      ...labels.map(({ name, count }) => {
        const chip = document.createElement("button");
        chip.type = "button";
        chip.className = "chip";
        chip.dataset.label = name;
        chip.innerHTML = `<span></span> <small></small>`;
        chip.querySelector("span").textContent = name;
        chip.querySelector("small").textContent = count;
        chip.addEventListener("click", () => toggleLabel(chip, name));
        return chip;
      }),
    );
    if (!labels.length) chips.textContent = "No labels yet: ingest some images.";
  } catch (error) {
    chips.textContent = error.message;
  }
}

function toggleLabel(chip, name) {
  const next = { undefined: "all", all: "none", none: undefined }[state.labels.get(name)];
  if (next) state.labels.set(name, next);
  else state.labels.delete(name);
  chip.classList.toggle("all", next === "all");
  chip.classList.toggle("none", next === "none");
  chip.setAttribute("aria-pressed", next ? "true" : "false");
  search();
}

function updateWeightRow() {
  $("weight-row").hidden = !(state.source && state.text);
  $("regions-row").hidden = !state.source;
}

// -- wiring -------------------------------------------------------------------------------------

function debounce(fn, ms) {
  let timer;
  return (...args) => {
    clearTimeout(timer);
    timer = setTimeout(() => fn(...args), ms);
  };
}

function setup() {
  const drop = $("dropzone");
  $("file").addEventListener("change", (e) => setFile(e.target.files[0]));
  drop.addEventListener("keydown", (e) => (e.key === "Enter" || e.key === " ") && $("file").click());
  for (const target of [drop, document.body]) {
    target.addEventListener("dragover", (e) => {
      e.preventDefault();
      drop.classList.add("over");
    });
    target.addEventListener("dragleave", () => drop.classList.remove("over"));
    target.addEventListener("drop", (e) => {
      e.preventDefault();
      drop.classList.remove("over");
      setFile(e.dataTransfer.files[0]);
    });
  }
  document.addEventListener("paste", (e) => {
    const item = [...e.clipboardData.items].find((i) => i.type.startsWith("image/"));
    if (item) setFile(item.getAsFile());
  });

  $("text-form").addEventListener("submit", (e) => {
    e.preventDefault();
    state.text = $("text").value.trim();
    updateWeightRow();
    search();
  });
  $("text").addEventListener(
    "input",
    debounce(() => {
      state.text = $("text").value.trim();
      updateWeightRow();
      search();
    }, 350),
  );
  const later = debounce(() => search(), 250);
  $("confidence").addEventListener("input", (e) => {
    state.minConfidence = Number(e.target.value);
    $("confidence-out").textContent = `${state.minConfidence} %`;
    if (state.labels.size) later();
  });
  $("weight").addEventListener("input", (e) => {
    state.vectorWeight = Number(e.target.value);
    $("weight-out").textContent = `${Math.round(state.vectorWeight * 100)} %`;
    later();
  });
  $("regions").addEventListener("change", (e) => {
    state.regions = e.target.value;
    search();
  });
  $("clear-crop").addEventListener("click", () => {
    setCrop(null);
    search();
  });
  $("clear-query").addEventListener("click", clearQuery);
  $("more").addEventListener("click", () => search({ append: true }));
  setupCrop();

  loadChips();
  const asset = new URLSearchParams(location.hash.slice(1)).get("asset");
  if (asset) {
    api(`/assets/${encodeURIComponent(asset)}`)
      .then((doc) => moreLikeThis({ id: doc.id, document: doc }))
      .catch(() => search());
  } else {
    search();
  }
}

setup();
