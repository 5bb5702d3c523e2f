// Lookalike's web page: plain JavaScript over the search API, no build step.
// State lives in one object; every change calls search(), which cancels the request before it.
"use strict";

const PAGE = 24;
const KEY_COOKIE = "lookalike_api_key";
const TAG_NAME = /^[a-z][a-z0-9_]{0,39}$/; // pipeline/document.py TAG_NAME
// Map colours: categorical, readable on light and dark backgrounds.
const PALETTE = ["#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7", "#9c755f"];
const OTHER = "#9aa2b3";

const $ = (id) => document.getElementById(id);
const state = {
  source: null, // {kind: "file", blob, url} | {kind: "asset", id, title, url}
  crop: null, // {x, y, w, h} in the query image's natural pixels
  text: "",
  labels: new Map(), // label name -> "all" | "none"
  tags: new Map(), // custom tag name -> "all" (must pass) | "none" (must not)
  knownTags: [], // GET /tags: trained and judged-only tags
  judgeTag: null, // the tag the thumbs on the cards judge, or null
  judgeCounts: new Map(), // tag -> judgements in the store
  judged: new Map(), // tag -> Map(asset id -> 0 | 1): the store's judgements, once loaded
  view: "results", // "results" | "map"
  map: null, // GET /map
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
    const error = new Error(typeof detail === "string" ? detail : JSON.stringify(detail));
    error.status = response.status;
    throw error;
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
  const pick = (chosen, mode) => [...chosen].filter(([, m]) => m === mode).map(([name]) => name);
  return {
    all: pick(state.labels, "all"),
    none: pick(state.labels, "none"),
    tags: pick(state.tags, "all"),
    tagsNone: pick(state.tags, "none"),
  };
}

async function buildRequest() {
  const { all, none, tags, tagsNone } = filters();
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
    for (const name of tags) form.append("tags", name);
    for (const name of tagsNone) form.append("tags_none", name);
    return { method: "POST", body: form };
  }
  const label = (name) => ({ name, min_confidence: state.minConfidence });
  const query = {
    ...common,
    labels: { all: all.map(label), none: none.map(label) },
    tags,
    tags_none: tagsNone,
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
  showView("results");
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
  node.querySelector(".tag-badges").replaceChildren(...tagBadges(doc.tags || {}));
  node.querySelector(".thumb").addEventListener("click", () => moreLikeThis(hit));
  for (const [selector, judge] of [[".yes", 1], [".no", 0]]) {
    node.querySelector(selector).addEventListener("click", () => judgeAsset(node, judge));
  }
  updateJudgeButtons(node);
  showRegion(node, hit.region);
  return node;
}

// The custom tags a hit passes, with the score in the title.
function tagBadges(tags) {
  return Object.entries(tags)
    .filter(([, tag]) => tag.passed)
    .sort(([a], [b]) => a.localeCompare(b))
    .map(([name, tag]) => {
      const badge = document.createElement("span");
      badge.className = state.tags.get(name) === "all" ? "tag-badge matched" : "tag-badge";
      badge.dataset.tag = name;
      badge.textContent = name;
      badge.title = `${name}: score ${tag.score.toFixed(3)} (version ${tag.version})`;
      return badge;
    });
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
        chip.addEventListener("click", () => toggleChip(chip, state.labels, name));
        return chip;
      }),
    );
    if (!labels.length) chips.textContent = "No labels yet: ingest some images.";
  } catch (error) {
    chips.textContent = error.message;
  }
}

// Label and tag chips: off -> must have -> must not -> off.
function toggleChip(chip, chosen, name) {
  const next = { undefined: "all", all: "none", none: undefined }[chosen.get(name)];
  if (next) chosen.set(name, next);
  else chosen.delete(name);
  chip.classList.toggle("all", next === "all");
  chip.classList.toggle("none", next === "none");
  chip.setAttribute("aria-pressed", next ? "true" : "false");
  search();
}

// -- custom tags ----------------------------------------------------------------------------------
// GET /tags lists trained tags (with a version) and tags judged but never trained. Trained ones
// are filter chips and map colourings; all of them can be judged.

async function loadTags() {
  try {
    const { tags } = await api("/tags");
    state.knownTags = tags;
  } catch (error) {
    setStatus(`Tags: ${error.message}`, true);
    return;
  }
  for (const tag of state.knownTags) state.judgeCounts.set(tag.name, tag.judgements);
  const trained = state.knownTags.filter((tag) => tag.version != null);
  $("tag-chips").replaceChildren(
    ...trained.map((tag) => {
      const chip = document.createElement("button");
      chip.type = "button";
      chip.className = "chip";
      chip.dataset.tag = tag.name;
      chip.setAttribute("aria-pressed", "false");
      chip.innerHTML = `<span></span> <small></small>`;
      chip.querySelector("span").textContent = tag.name;
      chip.querySelector("small").textContent = tag.passing ?? "";
      chip.title = tagSummary(tag);
      chip.addEventListener("click", () => toggleChip(chip, state.tags, tag.name));
      return chip;
    }),
  );
  $("tags-section").hidden = !trained.length;
  fillJudgeSelect();
  fillMapColours();
}

function tagSummary(tag) {
  const parts = [`${tag.name} v${tag.version}`];
  if (tag.auc != null) parts.push(`AUC ${tag.auc.toFixed(2)} ± ${(tag.auc_std ?? 0).toFixed(2)}`);
  if (tag.recall != null) parts.push(`recall ${Math.round(tag.recall * 100)} % at ≤ ${Math.round((tag.max_fpr ?? 0) * 100)} % false positives`);
  if (tag.passing != null) parts.push(`${tag.passing} passing`);
  if (tag.stale) parts.push("trained on another model: train it again");
  return parts.join(" · ");
}

function rocUrl(tag) {
  if (!tag || tag.version == null) return null;
  return tag.roc || `/tags/${encodeURIComponent(tag.name)}/roc.png`;
}

// -- judging --------------------------------------------------------------------------------------
// With a tag chosen, every card has a yes and a no button; each click records a judgement
// (POST /assets/{id}/judgements) that `lookalike tags train TAG` learns from.

function fillJudgeSelect() {
  const select = $("judge-tag");
  const names = new Set(state.knownTags.map((tag) => tag.name));
  if (state.judgeTag) names.add(state.judgeTag);
  const options = [...names].sort().map((name) => new Option(name, name));
  select.replaceChildren(new Option("off", ""), ...options);
  select.value = state.judgeTag || "";
}

function setJudgeTag(name) {
  state.judgeTag = name || null;
  fillJudgeSelect();
  updateAllJudgeButtons();
  showJudgeInfo();
  if (name && !state.judged.has(name)) loadJudgements(name);
}

function updateAllJudgeButtons() {
  for (const node of $("grid").children) updateJudgeButtons(node);
}

// What the store already holds for a tag (GET /judgements?tag=), to mark the thumbs with.
async function loadJudgements(tag) {
  const known = new Map();
  state.judged.set(tag, known);
  try {
    const { judgements } = await api(`/judgements?tag=${encodeURIComponent(tag)}`);
    // judgements made on this page meanwhile are newer: they stay
    for (const j of judgements) if (!known.has(j.asset_id)) known.set(j.asset_id, j.judge);
    state.judgeCounts.set(tag, Math.max(state.judgeCounts.get(tag) || 0, judgements.length));
  } catch (error) {
    state.judged.delete(tag); // asked again when the tag is chosen again
    setStatus(`Judgements of ${tag}: ${error.message}`, true);
    return;
  }
  if (tag === state.judgeTag) {
    updateAllJudgeButtons();
    showJudgeInfo();
  }
}

function startNewTag(event) {
  event.preventDefault();
  const input = $("judge-new");
  const name = input.value.trim();
  if (!name) return;
  if (!TAG_NAME.test(name)) {
    input.setAttribute("aria-invalid", "true");
    setStatus(
      `Tag name "${name}": use lower-case letters, digits and _, starting with a letter (at most 40 characters).`,
      true,
    );
    return;
  }
  input.removeAttribute("aria-invalid");
  input.value = "";
  setJudgeTag(name);
}

function showJudgeInfo() {
  const info = $("judge-info");
  const name = state.judgeTag;
  if (!name) {
    info.textContent = "Pick a tag, then answer yes or no on the results.";
    return;
  }
  const count = state.judgeCounts.get(name) || 0;
  const strong = document.createElement("strong");
  strong.className = "judge-count";
  strong.textContent = `${count} judgement${count === 1 ? "" : "s"} of ${name}`;
  const code = document.createElement("code");
  code.textContent = `lookalike tags train ${name}`;
  const parts = [strong, ". ", code, " learns from them (at least 10, both yes and no)."];
  const tag = state.knownTags.find((t) => t.name === name);
  const roc = rocUrl(tag);
  if (roc) {
    const link = document.createElement("a");
    link.href = roc;
    link.target = "_blank";
    link.textContent = "ROC curve";
    parts.push(` Trained: v${tag.version}, AUC ${tag.auc.toFixed(2)}, `, link, ".");
  }
  info.replaceChildren(...parts);
}

function updateJudgeButtons(node) {
  const name = state.judgeTag;
  const box = node.querySelector(".judge-buttons");
  box.hidden = !name;
  if (!name) return;
  const yes = box.querySelector(".yes");
  const no = box.querySelector(".no");
  yes.setAttribute("aria-label", `Yes, ${name}`);
  yes.title = `Yes: this is ${name}`;
  no.setAttribute("aria-label", `No, ${name}`);
  no.title = `No: this is not ${name}`;
  const judge = state.judged.get(name)?.get(node.dataset.id);
  yes.setAttribute("aria-pressed", judge === 1 ? "true" : "false");
  no.setAttribute("aria-pressed", judge === 0 ? "true" : "false");
}

async function judgeAsset(node, judge) {
  const tag = state.judgeTag;
  const id = node.dataset.id;
  if (!tag) return;
  const buttons = node.querySelectorAll(".judge-buttons button");
  buttons.forEach((b) => (b.disabled = true));
  try {
    const result = await api(`/assets/${encodeURIComponent(id)}/judgements`, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ tag, judge }),
    });
    if (!state.judged.has(tag)) state.judged.set(tag, new Map());
    state.judged.get(tag).set(id, judge);
    state.judgeCounts.set(tag, result.count);
    if (!state.knownTags.some((t) => t.name === tag)) {
      state.knownTags.push({ name: tag, version: null, judgements: result.count });
    }
    updateJudgeButtons(node);
    if (tag === state.judgeTag) showJudgeInfo();
  } catch (error) {
    setStatus(`Judging ${tag}: ${error.message}`, true);
  } finally {
    buttons.forEach((b) => (b.disabled = false));
  }
}

// -- the library map ------------------------------------------------------------------------------
// GET /map: every asset at its t-SNE position (0..1), drawn as small lazy thumbnails with a
// border coloured by the top label or by a tag. A click runs "more like this".

let saved = null; // the results view's heading and status while the map is shown

function showView(view) {
  if (view === state.view) return;
  state.view = view;
  const onMap = view === "map";
  $("results-view").hidden = onMap;
  $("map-view").hidden = !onMap;
  $("view-results").setAttribute("aria-pressed", String(!onMap));
  $("view-map").setAttribute("aria-pressed", String(onMap));
  if (onMap) {
    const status = $("status");
    saved = { heading: $("heading").textContent, status: status.textContent, error: status.classList.contains("error") };
    $("heading").textContent = "Library map";
    setStatus("");
  } else if (saved) {
    $("heading").textContent = saved.heading;
    setStatus(saved.status, saved.error);
    saved = null;
  }
}

async function openMap() {
  showView("map");
  const message = $("map-message");
  setStatus("Loading the map…");
  try {
    state.map = await api("/map");
  } catch (error) {
    state.map = null;
    $("map").replaceChildren();
    $("map-legend").replaceChildren();
    $("map-tools").hidden = true;
    if (error.status === 404) {
      message.replaceChildren(...withCode(error.message));
      message.hidden = false;
      setStatus("");
    } else {
      message.hidden = true;
      setStatus(error.message, true);
    }
    return;
  }
  if (state.view !== "map") return; // a search took over meanwhile
  message.hidden = true;
  $("map-tools").hidden = false;
  fillMapColours();
  drawMap();
  const when = new Date(state.map.computed_at).toLocaleString();
  setStatus(`${state.map.points.length} assets · ${state.map.model} · computed ${when}`);
}

// "run `lookalike map`" with the backticked part as code.
function withCode(text) {
  return text.split("`").map((part, n) => {
    if (n % 2 === 0) return document.createTextNode(part);
    const code = document.createElement("code");
    code.textContent = part;
    return code;
  });
}

function fillMapColours() {
  const select = $("map-colour");
  const current = select.value;
  const names = new Set(state.knownTags.filter((t) => t.version != null).map((t) => t.name));
  for (const point of state.map?.points || []) for (const name of point.tags) names.add(name);
  select.replaceChildren(
    new Option("top label", "label"),
    ...[...names].sort().map((name) => new Option(`tag: ${name}`, `tag:${name}`)),
  );
  select.value = [...select.options].some((o) => o.value === current) ? current : "label";
}

// point -> colour, and the legend's entries [colour, text, count].
function colouring(points, by) {
  if (by.startsWith("tag:")) {
    const name = by.slice(4);
    const passes = points.filter((p) => p.tags.includes(name)).length;
    return {
      colour: (p) => (p.tags.includes(name) ? "var(--good)" : OTHER),
      legend: [
        ["var(--good)", `passes ${name}`, passes],
        [OTHER, "does not", points.length - passes],
      ],
    };
  }
  const counts = new Map();
  for (const p of points) if (p.label) counts.set(p.label, (counts.get(p.label) || 0) + 1);
  const top = [...counts].sort((a, b) => b[1] - a[1] || a[0].localeCompare(b[0])).slice(0, PALETTE.length);
  const colours = new Map(top.map(([name], n) => [name, PALETTE[n]]));
  const rest = points.length - top.reduce((sum, [, count]) => sum + count, 0);
  return {
    colour: (p) => colours.get(p.label) || OTHER,
    legend: [...top.map(([name, count]) => [colours.get(name), name, count]), ...(rest ? [[OTHER, "other", rest]] : [])],
  };
}

function drawMap() {
  const map = state.map;
  if (!map) return;
  const { colour, legend } = colouring(map.points, $("map-colour").value);
  $("map").replaceChildren(
    ...map.points.map((p) => {
      const point = document.createElement("button");
      point.type = "button";
      point.className = "point";
      point.dataset.id = p.id;
      // inset by half a point, so that points at the edges stay inside
      point.style.left = `calc(${p.x} * (100% - var(--pt)) + var(--pt) / 2)`;
      point.style.top = `calc(${p.y} * (100% - var(--pt)) + var(--pt) / 2)`;
      point.style.setProperty("--c", colour(p));
      const about = [p.title, p.label, ...p.tags].filter(Boolean).join(" · ");
      point.title = about;
      point.setAttribute("aria-label", `More like ${p.title}`);
      const img = document.createElement("img");
      img.loading = "lazy";
      img.decoding = "async";
      img.alt = "";
      img.src = `/assets/${encodeURIComponent(p.id)}/thumbnail`;
      point.append(img);
      point.addEventListener("click", () => mapPointClicked(p.id));
      return point;
    }),
  );
  $("map-legend").replaceChildren(
    ...legend.map(([c, text, count]) => {
      const item = document.createElement("li");
      item.innerHTML = `<i></i><span></span> <small></small>`;
      item.querySelector("i").style.background = c;
      item.querySelector("span").textContent = text;
      item.querySelector("small").textContent = count;
      return item;
    }),
  );
}

async function mapPointClicked(id) {
  try {
    const doc = await api(`/assets/${encodeURIComponent(id)}`);
    moreLikeThis({ id: doc.id, document: doc });
  } catch (error) {
    setStatus(error.message, true);
  }
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
  $("judge-tag").addEventListener("change", (e) => setJudgeTag(e.target.value));
  $("judge-new-form").addEventListener("submit", startNewTag);
  $("judge-new").addEventListener("input", (e) => e.target.removeAttribute("aria-invalid"));
  $("view-map").addEventListener("click", openMap);
  $("view-results").addEventListener("click", () => showView("results"));
  $("map-colour").addEventListener("change", drawMap);
  $("map-zoom").addEventListener("input", (e) => $("map").style.setProperty("--zoom", e.target.value));
  setupCrop();

  loadChips();
  loadTags();
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
