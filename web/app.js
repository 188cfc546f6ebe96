// Face Edit: screens, routing (#create, #progress, #edit/{id}, #history, #settings) and the edit flow.

import * as api from "./api.js";
import { activeField, applyLimits, applyPreset, changeParams, currentChanges, describeChanges, initChanges,
         setChanges } from "./changes.js";
import { clearFaces, facesParam, findFaces, initFaces, noneChosen, showStatus } from "./faces.js";
import { renderHistory } from "./history.js";
import { applyInversionChoice, initInversion, inversionParam } from "./inversion.js";
import { EditJob, finishedCount, TERMINAL } from "./job.js";
import { describeError } from "./messages.js";
import { preparePhoto, thumbnail } from "./photo.js";
import { changesOf, defaultIndex, initResult, loadOutput, releaseOutputs, shownEditId, showResult,
         updateResult } from "./result.js";
import { askAboutLinkKey, initSettings, renderSettings } from "./settings.js";
import { getEntry, saveEntry } from "./store.js";

// One submit asks for all strengths at once, so the slider never waits for the server. StyleCLIP's global
// directions read well from α≈1 (subtle) to α≈7 (strong) at β=0.15 (the paper's demo uses α=4.1, β=0.15).
const ALPHAS = [1, 2.5, 4, 5.5, 7];
const BETA = 0.15;
const SCREENS = ["create", "progress", "result", "history", "settings"];

const $ = (id) => document.getElementById(id);
const state = {
  photo: null, // {blob, filename, preview, heic} from preparePhoto, or {blob: null} for a photo only the server has
  previewUrl: null,
  imageId: null, // the server's id for this photo once uploaded: "new text, same photo" skips the upload
  imageUsed: false, // an edit was made of imageId (else picking another photo deletes it from the server)
  upload: null, // the upload started when the photo was picked: {photo, promise, abort, listen, used}
  job: null,
  // {edit, images: [{url, blob} | null per strength], originalUrl, loading: Map(index → promise), running} of
  // the last result shown; filled while the edit runs, as strengths arrive
  loaded: null,
};

/* ---------- screens and routing ---------- */

function show(name) {
  for (const screen of SCREENS) $(`screen-${screen}`).hidden = screen !== name;
  for (const link of document.querySelectorAll("[data-nav]")) {
    if (link.dataset.nav === name) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  window.scrollTo(0, 0);
  document.body.dataset.screen = name;
}

async function route() {
  if (location.hash.startsWith("#key=")) {
    api.readKeyLink(); // a link followed while the app is open: same rule as at start
    askAboutLinkKey();
  }
  const [name, id] = location.hash.slice(1).split("/");
  if (name === "history") {
    show("history");
    await renderHistory((entry) => (location.hash = `#edit/${entry.id}`));
  } else if (name === "settings") {
    show("settings");
    renderSettings();
  } else if (name === "edit" && id) {
    await openEdit(decodeURIComponent(id));
  } else if (name === "progress" && state.job) {
    show("progress");
  } else {
    show("create");
  }
}

/* ---------- the photo and the form ---------- */

function setPhoto(photo, imageId) {
  if (state.previewUrl) URL.revokeObjectURL(state.previewUrl);
  if (state.upload && state.upload.photo !== photo && !state.upload.used) state.upload.abort();
  if (state.upload && state.upload.photo !== photo) state.upload = null;
  if (state.imageId && state.imageId !== imageId && !state.imageUsed) {
    api.deleteImage(state.imageId).catch(() => undefined); // uploaded only to find its faces: not kept
  }
  state.photo = photo;
  state.imageId = imageId;
  state.imageUsed = Boolean(imageId);
  clearFaces();
  state.previewUrl = photo && photo.preview ? URL.createObjectURL(photo.preview) : null;
  $("photo-empty").hidden = Boolean(photo);
  $("photo-preview").hidden = !photo;
  const img = $("photo-img");
  if (state.previewUrl) img.src = state.previewUrl;
  else img.removeAttribute("src");
  img.hidden = !state.previewUrl;
  $("photo-placeholder").hidden = Boolean(state.previewUrl) || !photo;
  $("photo-placeholder-text").textContent = photo && photo.heic
    ? "HEIC photo ready: the server converts it (no preview in this browser)"
    : "Photo ready (no preview for this file)";
  updateSubmit();
  if (imageId) {
    api.getImage(imageId).then((image) => state.imageId === imageId && findFaces(image, updateSubmit),
                                () => undefined);
  }
}

/**
 * Upload a picked photo at once, so that the server can find its faces while the person writes the text;
 * "Create edit" then awaits this upload instead of starting another. A failure is not shown here: the
 * submit uploads again and reports what went wrong.
 */
function beginUpload(photo) {
  const listeners = new Set();
  let fraction = 0;
  const handle = api.uploadImage(photo.blob, photo.filename, (value) => {
    fraction = value;
    if (state.photo === photo) showStatus(`Uploading photo… ${Math.round(value * 100)} %`);
    for (const listener of listeners) listener(value);
  });
  const upload = {
    photo, promise: handle.promise, abort: handle.abort, used: false,
    listen: (listener) => {
      listeners.add(listener);
      listener(fraction);
    },
  };
  state.upload = upload;
  showStatus("Uploading photo…");
  handle.promise.then(
    (image) => {
      if (state.upload === upload) state.upload = null;
      if (state.photo !== photo) {
        if (!upload.used) api.deleteImage(image.id).catch(() => undefined);
        return;
      }
      state.imageId = image.id;
      findFaces(image, updateSubmit);
    },
    () => {
      if (state.upload === upload) state.upload = null;
      if (state.photo === photo) clearFaces();
    },
  );
}

async function onFile(event) {
  const file = event.target.files[0];
  event.target.value = ""; // picking the same file again must fire `change` again
  if (!file) return;
  hideAlert();
  let photo;
  try {
    photo = await preparePhoto(file);
  } catch {
    photo = { blob: file, filename: file.name || "photo", preview: null, heic: false }; // the server decides
  }
  setPhoto(photo, null);
  if (photo.blob) beginUpload(photo);
}

function updateSubmit() {
  $("submit").disabled = !state.photo || !currentChanges("").length || noneChosen();
  const text = activeField().value.trim();
  for (const chip of document.querySelectorAll(".presets .chip")) {
    chip.setAttribute("aria-pressed", String(chip.dataset.target === text));
  }
}

function onSubmit(event) {
  event.preventDefault();
  submitForm();
}

/** Start an edit from what the screen shows now (also "Try again" after an error). */
function submitForm() {
  const neutral = $("neutral").value.trim() || "a face";
  const changes = currentChanges(neutral);
  if (!state.photo || !changes.length || noneChosen()) return;
  if (changes.some((change) => change.target.toLowerCase() === neutral.toLowerCase())) {
    showAlert({ code: "empty_direction" });
    return;
  }
  hideAlert();
  const upload = !state.imageId && state.upload && state.upload.photo === state.photo ? state.upload : null;
  if (upload) upload.used = true;
  const { target, changes: list } = changeParams(neutral); // one plain change: the simple form
  startJob({ photo: state.photo, imageId: state.imageId, upload, neutral, target, changes: list,
             description: describeChanges(changes), faces: facesParam(), alphas: ALPHAS, beta: BETA,
             inversion: inversionParam() });
}

/* ---------- alerts: what went wrong and what to do next ---------- */

/** Show what went wrong on the create screen; `navigate` = false leaves a person browsing elsewhere there. */
function showAlert(error, navigate = true) {
  const { title, text, action, actionLabel } = describeError(error);
  const alert = $("create-alert");
  alert.dataset.code = error.code;
  alert.querySelector(".alert-title").textContent = title;
  alert.querySelector(".alert-text").textContent = text;
  const actions = alert.querySelector(".alert-actions");
  actions.replaceChildren();
  if (action && !(action === "retry" && !state.photo)) {
    const button = document.createElement("button");
    button.type = "button";
    button.className = "secondary";
    button.textContent = actionLabel;
    button.addEventListener("click", () => runAction(action));
    actions.append(button);
  }
  alert.hidden = false;
  if (!navigate) return;
  if (location.hash !== "#create") location.hash = "#create";
  show("create");
}

function hideAlert() {
  $("create-alert").hidden = true;
}

function runAction(action) {
  hideAlert();
  if (action === "photo") $("file-gallery").click();
  else if (action === "text") $("target").select();
  else if (action === "settings") location.hash = "#settings";
  else if (action === "new") setPhoto(null, null);
  else if (action === "retry") submitForm();
  else if (action === "faces") {
    $("faces").scrollIntoView({ block: "center" });
    (document.querySelector(".face-box") || $("faces-all")).focus();
  }
}

/* ---------- running an edit ---------- */

function renderProgress({ phase, fraction = null, position = null }) {
  const bar = $("progress-bar");
  let title;
  let detail = "";
  if (phase === "upload") {
    title = "Uploading photo";
    detail = `${Math.round((fraction || 0) * 100)} %`;
  } else if (phase === "queued") {
    title = "Waiting in line";
    if (position == null) detail = "Sending your edit…"; // the server hasn't answered yet
    else detail = position > 0 ? `${position} ${position === 1 ? "edit" : "edits"} ahead of you` : "You're next";
    fraction = null;
  } else if (phase === "processing") {
    title = "Editing your photo";
    detail = fraction == null ? "Working…" : `${Math.round(fraction * 100)} %`;
  } else if (phase === "canceling") {
    title = "Canceling…";
  } else {
    title = "Loading…";
  }
  $("progress-title").textContent = title;
  $("progress-detail").textContent = detail;
  if (fraction == null) bar.removeAttribute("value"); // indeterminate
  else bar.value = fraction;
  document.body.dataset.phase = phase;
}

async function startJob(request, resumeId = null) {
  const original = request.original || (request.photo ? request.photo.preview : null);
  const job = new EditJob(request, {
    onUploaded: (image) => {
      if (state.photo === request.photo) state.imageId = image.id;
      request.imageId = image.id;
    },
    onCreated: (edit) => {
      if (state.imageId === edit.input.image) state.imageUsed = true;
      return saveEntry(edit.id, {
        imageId: edit.input.image, neutral: request.neutral, target: request.description || request.target,
        changes: request.changes || null, alphas: request.alphas, status: edit.status, createdAt: edit.created_at,
        original,
      });
    },
    onUpdate: (progress) => {
      if (!job.canceled) renderProgress(progress);
    },
    onOutputs: (edit) => receiveOutputs(edit, original),
    onPreview: (edit) => receivePreview(edit, original),
  });
  state.job = job;
  $("progress-img").src = state.previewUrl || "";
  if (!state.previewUrl) $("progress-img").removeAttribute("src");
  $("progress-texts").textContent = `${request.neutral} → ${request.description || request.target}`;
  $("cancel").disabled = false;
  renderProgress({ phase: resumeId ? "loading" : request.imageId ? "queued" : "upload", fraction: 0 });
  location.hash = "#progress";
  show("progress");
  try {
    const edit = resumeId ? await job.resume(resumeId) : await job.run();
    await finish(job, edit);
  } catch (err) {
    if (!(err instanceof api.ApiError)) console.error(err);
    const error = err instanceof api.ApiError ? err : { code: "internal_error", message: String(err) };
    showAlert(error, watching(job.editId));
  } finally {
    if (state.job === job) state.job = null;
  }
}

/** Is the person looking at this edit's progress or result (so its outcome should replace the screen)? */
const watching = (editId) => !$("screen-progress").hidden
  || (!$("screen-result").hidden && editId != null && shownEditId() === editId);

/** The result being filled for this edit (state.loaded), or null. */
const liveResult = (edit) => (state.loaded && state.loaded.edit.id === edit.id ? state.loaded : null);

/** Start downloading the strengths the edit lists and `result` lacks (or has only as a preview); resolves once
 *  all of them are in. A full-size strength replaces its preview. */
function loadInto(result, edit) {
  (edit.output || []).forEach((url, index) => {
    const had = result.images[index];
    if (!url || (had && !had.preview) || result.loading.has(index)) return;
    result.loading.set(index, loadOutput(url).then((image) => {
      result.loading.delete(index);
      if (state.loaded !== result) return releaseOutputs([image]); // forgotten meanwhile
      const replaced = result.images[index];
      result.images[index] = image;
      if (replaced && replaced.preview) releaseOutputs([replaced]);
      showArrived(result);
    }));
  });
  return Promise.all(result.loading.values());
}

/**
 * The running edit shows a preview of its first strength (the 256² render pasted into the photo, the photo's
 * aspect ratio): show it at once in that strength's place, marked as a preview, until the full size arrives.
 * A preview that can no longer be fetched (the full size replaced it meanwhile) is simply not shown.
 */
function receivePreview(edit, original) {
  const { index, url } = edit.preview;
  let result = liveResult(edit);
  if (!result) {
    if (!watching(edit.id)) return;
    result = remember(edit, edit.output ? edit.output.map(() => null) : edit.input.alphas.map(() => null), original);
  }
  if (result.images[index] || result.previewing) return; // the full size is in, or the preview is on its way
  result.edit = edit;
  result.running = true;
  result.previewing = loadOutput(url).then((image) => {
    if (state.loaded !== result || result.images[index]) return releaseOutputs([image]); // too late
    result.images[index] = { ...image, preview: true };
    showArrived(result);
  }).catch((err) => console.warn("loading the preview", err));
}

/**
 * The running edit lists finished strengths: show the first at once (the result screen replaces the
 * progress screen), and fill the slider as the others arrive.
 */
function receiveOutputs(edit, original) {
  let result = liveResult(edit);
  if (!result) {
    if (!watching(edit.id)) return; // the person went elsewhere: the finished edit is loaded at the end
    result = remember(edit, edit.output.map(() => null), original);
  }
  result.edit = edit;
  result.running = true;
  loadInto(result, edit).catch((err) => console.warn("loading a strength", err)); // the end retries
}

/** The strength to open the result on: the middle one once the server lists it (or its preview is in), else
 *  the first listed. */
function openingIndex(edit, images = []) {
  const output = edit.output || images.map(() => null);
  const middle = defaultIndex(output.length);
  if (output[middle] || images[middle]) return middle;
  const first = output.findIndex(Boolean);
  return first < 0 ? middle : first;
}

function showArrived(result) {
  if (!$("screen-result").hidden && shownEditId() === result.edit.id) {
    updateResult(result.edit, result.images, result.running);
  } else if (!$("screen-progress").hidden && state.job && state.job.editId === result.edit.id
             && result.images[openingIndex(result.edit, result.images)]) {
    // Downloads finish in any order: wait for the strength the result opens on, so it is the one shown.
    location.hash = `#edit/${result.edit.id}`; // route() → openEdit() shows state.loaded
  }
}

async function finish(job, edit) {
  // A cancel the worker hasn't acted on yet still reads "processing": the person asked to stop, so stop.
  const status = !TERMINAL.has(edit.status) && job.canceled ? "canceled" : edit.status;
  edit = { ...edit, status };
  const entry = await saveEntry(edit.id, { status, errorCode: edit.error ? edit.error.code : null });
  // Canceled between strengths keeps the finished ones: they are a result too.
  const kept = status === "succeeded" || (status === "canceled" && finishedCount(edit) > 0);
  if (!kept) {
    const shown = watching(edit.id);
    if (liveResult(edit)) forgetResult();
    return showAlert(status === "failed" ? edit.error || { code: "internal_error" } : { code: "canceled" }, shown);
  }
  const result = liveResult(edit) || remember(edit, edit.output.map(() => null), entry.original || null);
  result.edit = edit;
  result.running = false;
  await loadInto(result, edit);
  const { images } = result;
  const first = images[defaultIndex(images.length)] || images.find(Boolean);
  const thumb = first && first.blob ? await thumbnail(first.blob) : null;
  if (thumb) await saveEntry(edit.id, { thumb });
  if (!$("screen-result").hidden && shownEditId() === edit.id) return updateResult(edit, images, false);
  if (!watching(edit.id)) return;
  const target = `#edit/${edit.id}`;
  if (location.hash === target) route(); // opened from the history while running: no hashchange
  else location.hash = target;
}

/** Keep one loaded result (reopening it is instant); the previous one's memory is freed. */
function remember(edit, images, originalBlob) {
  forgetResult();
  state.loaded = { edit, images, originalUrl: originalBlob ? URL.createObjectURL(originalBlob) : null,
                   loading: new Map(), running: false };
  return state.loaded;
}

function forgetResult() {
  if (!state.loaded) return;
  releaseOutputs(state.loaded.images);
  if (state.loaded.originalUrl) URL.revokeObjectURL(state.loaded.originalUrl);
  state.loaded = null;
}

async function cancel() {
  if (!state.job) return;
  $("cancel").disabled = true;
  $("stop").disabled = true;
  $("arriving-text").textContent = "Stopping…";
  renderProgress({ phase: "canceling" });
  try {
    await state.job.cancel();
  } catch (err) {
    if (!(err instanceof api.ApiError)) throw err; // run() reports the outcome
  }
}

/** #edit/{id}: a finished edit shows its result, a running one its progress, a failed one its message. */
async function openEdit(id) {
  if (state.loaded && state.loaded.edit.id === id) {
    show("result");
    showResult(state.loaded.edit, state.loaded.images, state.loaded.originalUrl, state.loaded.running);
    return;
  }
  if (state.job && state.job.editId === id) return show("progress");
  const entry = (await getEntry(id)) || null;
  const request = entry && { neutral: entry.neutral, target: entry.target, alphas: entry.alphas, beta: BETA,
                             imageId: entry.imageId, photo: null, original: entry.original || null };
  if (entry) {
    const photo = entry.original ? { blob: entry.original, filename: "photo.jpg", preview: entry.original }
                                 : { blob: null, filename: null, preview: null };
    setPhoto(photo, entry.imageId);
    setChanges(entry.changes || [{ target: entry.target, weight: 1 }]);
    $("neutral").value = entry.neutral;
    updateSubmit();
  }
  show("progress");
  renderProgress({ phase: "loading" });
  $("progress-texts").textContent = entry ? `${entry.neutral} → ${entry.target}` : "";
  try {
    const edit = await api.getEdit(id);
    if (edit.status === "succeeded" || (edit.status === "canceled" && finishedCount(edit) > 0)) {
      const result = remember(edit, edit.output.map(() => null), entry ? entry.original : null);
      await loadInto(result, edit);
      show("result");
      showResult(edit, result.images, result.originalUrl);
    } else if (!TERMINAL.has(edit.status)) {
      startJob(request || { neutral: edit.input.neutral, target: edit.input.target, alphas: edit.input.alphas,
                            description: describeChanges(changesOf(edit)),
                            beta: edit.input.beta, imageId: edit.input.image, photo: null }, id);
    } else {
      await saveEntry(id, { status: edit.status, errorCode: edit.error ? edit.error.code : null });
      showAlert(edit.status === "canceled" ? { code: "canceled" } : edit.error || { code: "internal_error" });
    }
  } catch (err) {
    if (!(err instanceof api.ApiError)) throw err;
    showAlert(err);
  }
}

/* ---------- start ---------- */

async function main() {
  initResult();
  initFaces();
  initInversion();
  initChanges(updateSubmit);
  initSettings();
  $("file-camera").addEventListener("change", onFile);
  $("file-gallery").addEventListener("change", onFile);
  $("target").addEventListener("input", updateSubmit);
  $("edit-form").addEventListener("submit", onSubmit);
  $("cancel").addEventListener("click", cancel);
  $("stop").addEventListener("click", cancel);
  $("again").addEventListener("click", () => {
    location.hash = "#create";
    show("create");
    $("target").select();
  });
  for (const chip of document.querySelectorAll(".presets .chip")) {
    chip.addEventListener("click", () => applyPreset(chip.dataset.target));
  }
  window.addEventListener("hashchange", route);
  window.addEventListener("faceedit:image-deleted", ({ detail: imageId }) => {
    if (state.imageId === imageId) setPhoto(null, null); // the server no longer has it
    if (state.loaded && state.loaded.edit.input.image === imageId) forgetResult();
  });
  await api.loadConfig();
  applyLimits();
  applyInversionChoice();
  await route();
  askAboutLinkKey(); // a link the app was opened with
  document.body.dataset.ready = "true"; // tests wait for this
  if ("serviceWorker" in navigator) {
    navigator.serviceWorker.register("/sw.js").catch((err) => console.warn("service worker", err));
  }
}

main();
