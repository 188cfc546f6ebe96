// The result screen: every strength is downloaded before it is shown, so the slider swaps images instantly;
// press-and-hold (button or photo) shows the original; download and the system share sheet.

import { fetchFile } from "./api.js";

const $ = (id) => document.getElementById(id);

let current = null; // {edit, images: [{url, blob}], originalUrl, index}

/** Download every output of a succeeded edit; resolves [{url (displayable), blob (or null)}]. */
export async function loadOutputs(edit) {
  return Promise.all(
    edit.output.map(async (outputUrl) => {
      const blob = await fetchFile(outputUrl);
      if (blob) return { url: URL.createObjectURL(blob), blob };
      const img = new Image(); // storage without CORS: let the browser cache it by URL instead
      img.src = outputUrl;
      await img.decode().catch(() => undefined);
      return { url: outputUrl, blob: null };
    }),
  );
}

/** Free the object URLs of loaded outputs (they pin the image bytes in memory). */
export function releaseOutputs(images) {
  for (const image of images) if (image.blob) URL.revokeObjectURL(image.url);
}

export function defaultIndex(count) {
  return Math.min(count - 1, Math.floor(count / 2));
}

/** Show a loaded result. `originalUrl` may be null (a HEIC the browser can't show). */
export function showResult(edit, images, originalUrl) {
  current = { edit, images, originalUrl, index: defaultIndex(images.length) };
  $("result-title").textContent = `${edit.input.neutral} → ${edit.input.target}`;
  $("dev-note").hidden = !(edit.model && edit.model.dev_bundle);
  const slider = $("strength");
  slider.max = String(images.length - 1);
  slider.value = String(current.index);
  slider.disabled = images.length < 2;
  $("hold").disabled = !originalUrl;
  $("hold").title = originalUrl ? "" : "The original isn't stored on this device";
  $("share").hidden = !navigator.share;
  showIndex(current.index);
}

function showIndex(index) {
  current.index = index;
  const { images, edit } = current;
  const img = $("result-img");
  img.src = images[index].url;
  const alpha = edit.input.alphas[index];
  img.alt = `Edited photo: ${edit.input.target}, strength ${index + 1} of ${images.length}`;
  $("strength-value").textContent = `${index + 1} of ${images.length}`;
  $("strength").setAttribute("aria-valuetext", `${index + 1} of ${images.length} (alpha ${alpha})`);
  showOriginal(false);
}

function showOriginal(on) {
  if (!current) return;
  const showing = on && current.originalUrl;
  $("result-img").src = showing ? current.originalUrl : current.images[current.index].url;
  $("original-badge").hidden = !showing;
  $("hold").classList.toggle("holding", Boolean(showing));
  $("hold").setAttribute("aria-pressed", String(Boolean(showing)));
}

function fileName() {
  const { edit, index } = current;
  const slug = edit.input.target.toLowerCase().replace(/[^a-z0-9]+/g, "-").replace(/^-|-$/g, "").slice(0, 40);
  const blob = current.images[index].blob;
  const ext = blob && blob.type === "image/png" ? "png" : blob && blob.type === "image/webp" ? "webp" : "jpg";
  return `faceedit-${slug || "edit"}-${index + 1}.${ext}`;
}

function download() {
  const link = document.createElement("a");
  link.href = current.images[current.index].url;
  link.download = fileName();
  document.body.append(link);
  link.click();
  link.remove();
}

async function share() {
  const { blob, url } = current.images[current.index];
  const title = `Face Edit: ${current.edit.input.target}`;
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
