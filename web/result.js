// The result screen: each strength is downloaded as soon as the server lists it, so the slider swaps images
// instantly; the first finished strength shows while the others are still rendering (they fill in, and the
// slider marks the ones not there yet). Before the first strength is done, its preview (the server's 256²
// render pasted into the photo, the photo's aspect ratio) stands in its place, marked as a preview, and the
// full-size photo replaces it in the same box. Likeness under the slider; press-and-hold (button or photo)
// shows the original; download and the system share sheet.

import { fetchFile } from "./api.js";
import { describeChanges } from "./changes.js";
import { showMadeWith } from "./inversion.js";

const $ = (id) => document.getElementById(id);

// {edit, images: [{url, blob, preview?} | null per strength], originalUrl, index, running, lastUrl, displayed}
let current = null;

/** A strength that is done (not missing, not only previewed). */
const isDone = (image) => Boolean(image) && !image.preview;

/** Download one output; resolves {url (displayable), blob (or null)}. */
export async function loadOutput(outputUrl) {
  const blob = await fetchFile(outputUrl);
  if (blob) return { url: URL.createObjectURL(blob), blob };
  const img = new Image(); // storage without CORS: let the browser cache it by URL instead
  img.src = outputUrl;
  await img.decode().catch(() => undefined);
  return { url: outputUrl, blob: null };
}

/** Download every finished output of an edit; resolves [{url, blob} | null (not rendered) per strength]. */
export async function loadOutputs(edit) {
  return Promise.all((edit.output || []).map((outputUrl) => (outputUrl ? loadOutput(outputUrl) : null)));
}

/** Free the object URLs of loaded outputs (they pin the image bytes in memory). */
export function releaseOutputs(images) {
  for (const image of images) if (image && image.blob) URL.revokeObjectURL(image.url);
}

/** The changes an edit asked for, in the list form (older edits and the simple form have one). */
export function changesOf(edit) {
  const input = edit.input || {};
  if (Array.isArray(input.changes) && input.changes.length) return input.changes;
  return [{ neutral: input.neutral, target: input.target, weight: 1 }];
}

/** "a face → a smiling face + a face with blue hair (0.5×)" */
export function titleOf(edit) {
  const changes = changesOf(edit);
  return `${changes[0].neutral} → ${describeChanges(changes)}`;
}

export function defaultIndex(count) {
  return Math.min(count - 1, Math.floor(count / 2));
}

/** Where the slider starts: the middle strength, or the first one that has arrived when it hasn't. */
function startIndex(images) {
  const middle = defaultIndex(images.length);
  if (images[middle]) return middle;
  const first = images.findIndex(Boolean);
  return first < 0 ? middle : first;
}

/**
 * Show a result, finished or still arriving (`images` has null for strengths not rendered yet).
 * `originalUrl` may be null (a HEIC the browser can't show). `running`: more strengths are coming.
 */
export function showResult(edit, images, originalUrl, running = false) {
  current = { edit, images, originalUrl, index: startIndex(images), running };
  unpinFigure();
  showHeader(edit);
  const slider = $("strength");
  slider.max = String(images.length - 1);
  slider.value = String(current.index);
  slider.disabled = images.length < 2;
  $("hold").disabled = !originalUrl;
  $("hold").title = originalUrl ? "" : "The original isn't stored on this device";
  $("share").hidden = !navigator.share;
  showIndex(current.index);
  showArrival();
}

/** More strengths of the edit on screen arrived (or it ended: `running` false). Other edits are ignored. */
export function updateResult(edit, images, running) {
  if (!current || current.edit.id !== edit.id) return;
  pinFigure();
  Object.assign(current, { edit, images, running });
  showHeader(edit);
  const image = images[current.index];
  const holding = $("hold").classList.contains("holding");
  // what arrived for the strength on screen (it, or its preview) replaces what is shown, in the same box
  if (image && image.url !== current.displayed && !holding) showIndex(current.index);
  else showLikeness();
  showArrival();
}

/**
 * The photo keeps the height it was first seen at while strengths arrive: the lines around it change (likeness
 * under the slider, the count of strengths), and the photo takes the height they leave, so without this it would
 * shrink or grow as the full size replaced its preview or the last strength landed. A new result or a resized
 * window lets it take the free height again.
 */
function pinFigure() {
  const figure = $("result-figure");
  if (figure.style.height || !figure.offsetHeight) return;
  const height = figure.getBoundingClientRect().height; // read before `flex: none` lays it out anew
  figure.style.flex = "none";
  figure.style.height = `${height}px`;
}

function unpinFigure() {
  const figure = $("result-figure");
  figure.style.flex = "";
  figure.style.height = "";
}

window.addEventListener("resize", unpinFigure);

/** Title and the development-models note (`model` is filled in when the edit completes). */
function showHeader(edit) {
  $("result-title").textContent = titleOf(edit);
  $("dev-note").hidden = !(edit.model && edit.model.dev_bundle);
  showMadeWith(edit);
}

/** The edit id on the result screen (null when none). */
export const shownEditId = () => (current ? current.edit.id : null);

/** Ticks under the slider (filled: arrived) and the "N more on the way" line. */
function showArrival() {
  const { images, running, edit } = current;
  const ticks = $("strength-ticks");
  ticks.replaceChildren(...images.map((image, i) => {
    const tick = document.createElement("span");
    tick.className = isDone(image) ? "tick done" : image ? "tick preview" : "tick pending";
    if (i === current.index) tick.classList.add("at");
    return tick;
  }));
  const done = images.filter(isDone).length;
  const missing = images.length - done;
  const arriving = $("arriving");
  // Once the line was on screen it stays, saying all arrived: hiding it would move the photo up under the eyes
  // of whoever watches the last strength (or the full size replacing its preview) land.
  if (missing) current.arrivalShown = true;
  arriving.hidden = missing === 0 && !current.arrivalShown;
  arriving.dataset.state = running ? "running" : missing ? "stopped" : "complete";
  $("stop").hidden = !running;
  $("stop").disabled = false;
  if (!missing) {
    $("arriving-text").textContent = `All ${images.length} ${images.length === 1 ? "strength" : "strengths"} ready.`;
  } else if (running) {
    $("arriving-text").textContent = `${missing} more ${missing === 1 ? "strength" : "strengths"} on the way…`;
  } else if (missing) {
    const why = edit.status === "canceled" ? "Stopped" : "Not rendered";
    $("arriving-text").textContent = `${why}: ${done} of ${images.length} strengths.`;
  }
}

/** "Looks like you: 83 %" for the strength on screen (the least alike face when several were changed). */
function showLikeness() {
  const { edit, index } = current;
  const value = Array.isArray(edit.likeness) ? edit.likeness[index] : null;
  const line = $("likeness");
  line.hidden = typeof value !== "number";
  if (line.hidden) return;
  const faces = edit.input && edit.input.faces;
  const several = faces === "all" || (Array.isArray(faces) && faces.length > 1);
  const percent = Math.round(Math.max(0, value) * 100);
  $("likeness-text").textContent = `${several ? "Looks like them" : "Looks like you"}: ${percent} %`;
  $("likeness-meter").value = Math.max(0, value);
}

function showIndex(index) {
  current.index = index;
  const { images, edit } = current;
  const img = $("result-img");
  const ready = isDone(images[index]);
  const preview = Boolean(images[index]) && !ready;
  if (images[index]) current.lastUrl = images[index].url;
  const alpha = edit.input.alphas[index];
  const what = describeChanges(changesOf(edit));
  img.alt = ready ? `Edited photo: ${what}, strength ${index + 1} of ${images.length}`
    : preview ? `Preview of the edited photo: ${what}, strength ${index + 1} of ${images.length}; full size coming`
      : `Strength ${index + 1} of ${images.length} is still being rendered`;
  $("strength-value").textContent = `${index + 1} of ${images.length}`;
  $("strength").setAttribute("aria-valuetext", `${index + 1} of ${images.length} (alpha ${alpha})`
                             + (ready ? "" : preview ? ", a preview" : ", not ready yet"));
  $("result-figure").classList.toggle("pending", !ready && !preview);
  $("result-figure").classList.toggle("previewing", preview);
  $("pending-badge").hidden = ready;
  $("pending-badge").textContent = preview ? "Preview · full size coming" : "Still rendering…";
  $("download").disabled = !ready;
  $("share").disabled = !ready;
  showOriginal(false);
  showLikeness();
  for (const [i, tick] of [...$("strength-ticks").children].entries()) tick.classList.toggle("at", i === index);
}

/** The picture for the strength on screen; one not rendered yet keeps the last picture shown, dimmed. */
function shownUrl() {
  const image = current.images[current.index];
  return image ? image.url : current.lastUrl || current.originalUrl || "";
}

function showOriginal(on) {
  if (!current) return;
  const showing = on && current.originalUrl;
  const src = showing ? current.originalUrl : shownUrl();
  if (src) $("result-img").src = src;
  else $("result-img").removeAttribute("src");
  current.displayed = showing ? null : src;
  $("original-badge").hidden = !showing;
  $("hold").classList.toggle("holding", Boolean(showing));
  $("hold").setAttribute("aria-pressed", String(Boolean(showing)));
}

function fileName() {
  const { edit, index } = current;
  const words = changesOf(edit).map((change) => change.target).join(" and ").toLowerCase();
  const slug = words.replace(/[^a-z0-9]+/g, "-").replace(/^-|-$/g, "").slice(0, 40);
  const blob = current.images[index].blob;
  const ext = blob && blob.type === "image/png" ? "png" : blob && blob.type === "image/webp" ? "webp" : "jpg";
  return `faceedit-${slug || "edit"}-${index + 1}.${ext}`;
}

function download() {
  if (!isDone(current.images[current.index])) return;
  const link = document.createElement("a");
  link.href = current.images[current.index].url;
  link.download = fileName();
  document.body.append(link);
  link.click();
  link.remove();
}

async function share() {
  if (!isDone(current.images[current.index])) return;
  const { blob, url } = current.images[current.index];
  const title = `Face Edit: ${describeChanges(changesOf(current.edit))}`;
  try {
    const file = blob ? new File([blob], fileName(), { type: blob.type }) : null;
    if (file && navigator.canShare && navigator.canShare({ files: [file] })) {
      await navigator.share({ files: [file], title });
    } else {
      await navigator.share({ title, url: new URL(url, location.href).href });
    }
  } catch (err) {
    if (err.name !== "AbortError") download(); // no share target: saving is the next best thing
  }
}

/** Wire the controls once at start-up. */
export function initResult() {
  $("strength").addEventListener("input", (event) => showIndex(Number(event.target.value)));
  const hold = (on) => (event) => {
    if (event.type === "pointerdown") event.preventDefault();
    showOriginal(on);
  };
  for (const target of [$("hold"), $("result-figure")]) {
    target.addEventListener("pointerdown", hold(true));
    for (const type of ["pointerup", "pointerleave", "pointercancel"]) target.addEventListener(type, hold(false));
    target.addEventListener("contextmenu", (event) => event.preventDefault()); // long-press menu on phones
  }
  // Keyboard and screen readers: Space/Enter held on the button.
  $("hold").addEventListener("keydown", (event) => {
    if (event.key === " " || event.key === "Enter") {
      event.preventDefault();
      showOriginal(true);
    }
  });
  $("hold").addEventListener("keyup", () => showOriginal(false));
  $("hold").addEventListener("blur", () => showOriginal(false));
  $("download").addEventListener("click", download);
  $("share").addEventListener("click", share);
}
