// Group photos: the faces the server found in the picked photo, drawn as tappable boxes over the preview
// (or as buttons when the browser can't show the photo, e.g. HEIC), and which of them to change.
// Detection runs on the server after the upload (image `faces`, `faces_status`); this waits for it briefly.

import { ApiError, getImage } from "./api.js";

const $ = (id) => document.getElementById(id);
// A cold or busy worker can take a while (loading its models first): keep asking, less often after a while.
// Submitting never waits for this: until the faces are known the edit goes with the server's default.
const GIVE_UP_MS = 120_000;

const pollMs = (elapsed) => (elapsed < 10_000 ? 1000 : 3000); // GET /v1/images/{id} answers at once
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, Math.max(0, ms)));

const GROW = 0.2;

let state = { image: null, faces: [], chosen: new Set(), onChange: () => {} };
let token = 0; // a newer photo makes older lookups stale
let observer = null;

/** The `faces` field for POST /v1/edits: undefined (server default: the largest) unless several were found. */
export function facesParam() {
  const { faces, chosen } = state;
  if (faces.length < 2) return undefined;
  if (chosen.size === faces.length) return "all";
  return [...chosen].sort((a, b) => a - b);
}

/** Several faces found and none chosen: nothing to edit yet. */
export const noneChosen = () => state.faces.length > 1 && state.chosen.size === 0;

/** How many faces the edit will change (for the result's wording). */
export const chosenCount = () => (state.faces.length > 1 ? state.chosen.size : 1);

/** A line where the faces will show (the upload's progress before they are looked for). */
export function showStatus(text) {
  if (state.faces.length > 1) return;
  $("faces").hidden = !text;
  $("faces-hint").textContent = text;
}

/** Forget the faces (no photo, or a new one). */
export function clearFaces() {
  token += 1;
  state = { ...state, image: null, faces: [], chosen: new Set() };
  render("");
}

/**
 * Look up the faces of an uploaded image and show them. `onChange()` runs whenever the choice changes.
 * Resolves once detection is done, failed, or taking too long (then the edit uses the largest face).
 */
export async function findFaces(image, onChange) {
  const mine = ++token;
  state = { image, faces: [], chosen: new Set(), onChange };
  const started = Date.now();
  let current = image;
  let asked = 0;
  render("Looking for faces…");
  while (current.faces_status === "pending" && Date.now() - started < GIVE_UP_MS) {
    await sleep(pollMs(Date.now() - started) - (Date.now() - asked)); // no wait at the first ask
    asked = Date.now();
    try {
      current = await getImage(current.id);
    } catch (err) {
      if (!(err instanceof ApiError)) throw err;
      break; // deleted, offline, rate limited: the edit itself will say what is wrong
    }
    if (mine !== token) return;
  }
  if (mine !== token) return;
  const faces = current.faces_status === "done" && Array.isArray(current.faces) ? current.faces : [];
  state = { image: current, faces, chosen: new Set(faces.length ? [faces[0].index] : []), onChange };
  render(hintText());
  onChange();
}

function hintText() {
  const { faces, image } = state;
  if (!image || image.faces_status === "pending") return "";
  if (faces.length < 2) return "";
  return `${faces.length} faces found. Tap the ones to change.`;
}

function toggle(index) {
  if (state.chosen.has(index)) state.chosen.delete(index);
  else state.chosen.add(index);
  update();
}

function everyone() {
  const all = state.chosen.size === state.faces.length;
  state.chosen = new Set(all ? [state.faces[0].index] : state.faces.map((face) => face.index));
  update();
}

function update() {
  for (const button of document.querySelectorAll(".face-box")) {
    button.setAttribute("aria-pressed", String(state.chosen.has(Number(button.dataset.index))));
  }
  const all = state.faces.length > 1 && state.chosen.size === state.faces.length;
  $("faces-all").setAttribute("aria-pressed", String(all));
  $("faces-hint").textContent = noneChosen() ? "Tap at least one face to change." : hintText();
  state.onChange();
}

/** Draw the boxes (over the preview when there is one, as a row of buttons otherwise) and the controls. */
function render(hint) {
  const overlay = $("face-layer");
  const list = $("face-list");
  overlay.replaceChildren();
  list.replaceChildren();
  const { faces, image } = state;
  const several = faces.length > 1;
  $("faces").hidden = !hint && !several;
  $("faces-all").hidden = !several;
  $("faces-hint").textContent = hint;
  $("faces").setAttribute("aria-busy", String(Boolean(image) && image.faces_status === "pending"));
  if (!several) return;
  const onPhoto = !$("photo-img").hidden;
  for (const face of faces) {
    const button = document.createElement("button");
    button.type = "button";
    button.className = onPhoto ? "face-box" : "face-box chip";
    button.dataset.index = String(face.index);
    button.setAttribute("aria-label", `Face ${face.index + 1}`);
    button.setAttribute("aria-pressed", String(state.chosen.has(face.index)));
    button.addEventListener("click", () => toggle(face.index));
    if (onPhoto) {
      const [left, top, right, bottom] = grown(face.box, image);
      Object.assign(button.style, {
        left: `${(100 * left) / image.width}%`,
        top: `${(100 * top) / image.height}%`,
        width: `${(100 * (right - left)) / image.width}%`,
        height: `${(100 * (bottom - top)) / image.height}%`,
      });
      const tag = document.createElement("span");
      tag.className = "face-tag";
      tag.textContent = String(face.index + 1);
      tag.setAttribute("aria-hidden", "true");
      button.append(tag);
      overlay.append(button);
    } else {
      button.textContent = `Face ${face.index + 1}`;
      list.append(button);
    }
  }
  placeLayer();
}

/** A detector's box hugs the inner face: drawn a fifth bigger each way it frames the head and is easier to tap. */
function grown([left, top, right, bottom], { width, height }) {
  const dx = (right - left) * GROW;
  const dy = (bottom - top) * GROW;
  return [Math.max(0, left - dx), Math.max(0, top - dy), Math.min(width, right + dx), Math.min(height, bottom + dy)];
}

/** Lay the box layer exactly over the picture inside the preview (object-fit: contain leaves bars). */
function placeLayer() {
  const img = $("photo-img");
  const layer = $("face-layer");
  if (!img.naturalWidth) return;
  const scale = Math.min(img.clientWidth / img.naturalWidth, img.clientHeight / img.naturalHeight);
  const width = img.naturalWidth * scale;
  const height = img.naturalHeight * scale;
  Object.assign(layer.style, {
    left: `${img.offsetLeft + (img.clientWidth - width) / 2}px`,
    top: `${img.offsetTop + (img.clientHeight - height) / 2}px`,
    width: `${width}px`,
    height: `${height}px`,
  });
}

/** Wire the controls once at start-up. */
export function initFaces() {
  $("faces-all").addEventListener("click", everyone);
  $("photo-img").addEventListener("load", placeLayer);
  observer = new ResizeObserver(placeLayer);
  observer.observe($("photo-img"));
}
