// Face Edit: screens, routing (#create, #progress, #edit/{id}, #history, #settings) and the edit flow.

import * as api from "./api.js";
import { renderHistory } from "./history.js";
import { EditJob, TERMINAL } from "./job.js";
import { describeError } from "./messages.js";
import { preparePhoto, thumbnail } from "./photo.js";
import { defaultIndex, initResult, loadOutputs, releaseOutputs, showResult } from "./result.js";
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
  job: null,
  loaded: null, // {edit, images, originalUrl} of the last result shown
  installPrompt: null,
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
  state.photo = photo;
  state.imageId = imageId;
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
}

function updateSubmit() {
  $("submit").disabled = !state.photo || !$("target").value.trim();
  for (const chip of document.querySelectorAll(".chip")) {
    chip.setAttribute("aria-pressed", String(chip.dataset.target === $("target").value.trim()));
  }
}

function onSubmit(event) {
  event.preventDefault();
  submitForm();
}

/** Start an edit from what the screen shows now (also "Try again" after an error). */
function submitForm() {
  const neutral = $("neutral").value.trim() || "a face";
  const target = $("target").value.trim();
  if (!state.photo || !target) return;
  if (neutral.toLowerCase() === target.toLowerCase()) {
    showAlert({ code: "empty_direction" });
    return;
  }
  hideAlert();
  startJob({ photo: state.photo, imageId: state.imageId, neutral, target, alphas: ALPHAS, beta: BETA });
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
  const job = new EditJob(request, {
    onUploaded: (image) => {
      if (state.photo === request.photo) state.imageId = image.id;
      request.imageId = image.id;
    },
    onCreated: (edit) =>
      saveEntry(edit.id, {
        imageId: edit.input.image, neutral: request.neutral, target: request.target, alphas: request.alphas,
        status: edit.status, createdAt: edit.created_at, original: request.photo ? request.photo.preview : null,
      }),
    onUpdate: (progress) => {
      if (!job.canceled) renderProgress(progress);
    },
  });
  state.job = job;
  $("progress-img").src = state.previewUrl || "";
  if (!state.previewUrl) $("progress-img").removeAttribute("src");
  $("progress-texts").textContent = `${request.neutral} → ${request.target}`;
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
    showAlert(error, watching());
  } finally {
    if (state.job === job) state.job = null;
  }
}

/** Is the person looking at the progress screen (so the outcome should replace it)? */
const watching = () => !$("screen-progress").hidden;

async function finish(job, edit) {
  // A cancel the worker hasn't acted on yet still reads "processing": the person asked to stop, so stop.
  const status = !TERMINAL.has(edit.status) && job.canceled ? "canceled" : edit.status;
  const entry = await saveEntry(edit.id, { status, errorCode: edit.error ? edit.error.code : null });
  if (status === "failed") return showAlert(edit.error || { code: "internal_error" }, watching());
  if (status === "canceled") return showAlert({ code: "canceled" }, watching());
  const images = await loadOutputs(edit);
  const shown = images[defaultIndex(images.length)].blob;
  const thumb = shown ? await thumbnail(shown) : null;
  if (thumb) await saveEntry(edit.id, { thumb });
  remember(edit, images, entry.original || null);
  if (!watching()) return;
  const target = `#edit/${edit.id}`;
  if (location.hash === target) route(); // opened from the history while running: no hashchange
  else location.hash = target;
}

/** Keep one loaded result (reopening it is instant); the previous one's memory is freed. */
function remember(edit, images, originalBlob) {
  forgetResult();
  state.loaded = { edit, images, originalUrl: originalBlob ? URL.createObjectURL(originalBlob) : null };
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
    showResult(state.loaded.edit, state.loaded.images, state.loaded.originalUrl);
    return;
  }
  if (state.job && state.job.editId === id) return show("progress");
  const entry = (await getEntry(id)) || null;
  const request = entry && { neutral: entry.neutral, target: entry.target, alphas: entry.alphas, beta: BETA,
                             imageId: entry.imageId, photo: null };
  if (entry) {
    const photo = entry.original ? { blob: entry.original, filename: "photo.jpg", preview: entry.original }
                                 : { blob: null, filename: null, preview: null };
    setPhoto(photo, entry.imageId);
    $("target").value = entry.target;
    $("neutral").value = entry.neutral;
    updateSubmit();
  }
  show("progress");
  renderProgress({ phase: "loading" });
  $("progress-texts").textContent = entry ? `${entry.neutral} → ${entry.target}` : "";
  try {
    const edit = await api.getEdit(id);
    if (edit.status === "succeeded") {
      const images = await loadOutputs(edit);
      remember(edit, images, entry ? entry.original : null);
      show("result");
      showResult(edit, images, state.loaded.originalUrl);
    } else if (!TERMINAL.has(edit.status)) {
      startJob(request || { neutral: edit.input.neutral, target: edit.input.target, alphas: edit.input.alphas,
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

/* ---------- settings and installing ---------- */

function renderSettings() {
  const source = api.keySource();
  $("api-key").value = source === "install" ? api.apiKey() : "";
  $("key-status").textContent = {
    install: "This install uses its own key.",
    dev: "Using the development key from this server (make run). No key needed.",
    none: "No key yet: paste the key you were given, or open your install link.",
  }[source];
  $("install").hidden = !state.installPrompt;
  $("server-info").textContent = `Server: ${new URL(location.href).origin}`;
}

function initSettings() {
  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    api.setApiKey($("api-key").value.trim());
    renderSettings();
    $("key-status").textContent = `Saved. ${$("key-status").textContent}`;
  });
  window.addEventListener("beforeinstallprompt", (event) => {
    event.preventDefault(); // show our own button instead of the browser's mini-infobar
    state.installPrompt = event;
    $("install").hidden = false;
  });
  $("install").addEventListener("click", async () => {
    if (!state.installPrompt) return;
    state.installPrompt.prompt();
    await state.installPrompt.userChoice;
    state.installPrompt = null;
    $("install").hidden = true;
  });
}

/** A link's key replaces the stored one only after the person says so (api.linkKey). */
function askAboutLinkKey() {
  const key = api.linkKey();
  const dialog = $("confirm-key");
  if (!key || dialog.open) return;
  $("confirm-key-prefix").textContent = key.length > 10 ? `${key.slice(0, 10)}…` : key;
  dialog.returnValue = "";
  dialog.addEventListener(
    "close",
    () => {
      api.settleLinkKey(dialog.returnValue === "replace");
      renderSettings();
    },
    { once: true },
  );
  dialog.showModal();
}

/* ---------- start ---------- */

async function main() {
  initResult();
  initSettings();
  $("file-camera").addEventListener("change", onFile);
  $("file-gallery").addEventListener("change", onFile);
  $("target").addEventListener("input", updateSubmit);
  $("edit-form").addEventListener("submit", onSubmit);
  $("cancel").addEventListener("click", cancel);
  $("again").addEventListener("click", () => {
    location.hash = "#create";
    show("create");
    $("target").select();
  });
  for (const chip of document.querySelectorAll(".chip")) {
    chip.addEventListener("click", () => {
      $("target").value = chip.dataset.target;
      updateSubmit();
    });
  }
  window.addEventListener("hashchange", route);
  window.addEventListener("faceedit:image-deleted", ({ detail: imageId }) => {
    if (state.imageId === imageId) setPhoto(null, null); // the server no longer has it
    if (state.loaded && state.loaded.edit.input.image === imageId) forgetResult();
  });
  await api.loadConfig();
  await route();
  askAboutLinkKey(); // a link the app was opened with
  document.body.dataset.ready = "true"; // tests wait for this
  if ("serviceWorker" in navigator) {
    navigator.serviceWorker.register("/sw.js").catch((err) => console.warn("service worker", err));
  }
}

main();
