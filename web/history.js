// The history screen: this device's edits (IndexedDB) merged with the server's list for this key, so a
// cleared browser storage (iOS evicts it after weeks unused) still finds the edits again.

import { ApiError, deleteImage, listEdits } from "./api.js";
import { describeError } from "./messages.js";
import { allEntries, removeImage, saveEntry } from "./store.js";

const $ = (id) => document.getElementById(id);
const DELETED = "faceedit.deletedImages"; // image ids deleted here: hide them even if a list still has them

const STATUS_TEXT = {
  starting: "Waiting in line",
  processing: "Editing…",
  succeeded: "Done",
  canceled: "Canceled",
};

function deletedImages() {
  try {
    return new Set(JSON.parse(localStorage.getItem(DELETED) || "[]"));
  } catch {
    return new Set();
  }
}

function rememberDeleted(imageId) {
  const ids = [...deletedImages(), imageId].slice(-200);
  localStorage.setItem(DELETED, JSON.stringify(ids));
}

function fromServer(edit) {
  return {
    id: edit.id,
    imageId: edit.input.image,
    neutral: edit.input.neutral,
    target: edit.input.target,
    alphas: edit.input.alphas,
    status: edit.status,
    errorCode: edit.error ? edit.error.code : null,
    createdAt: edit.created_at,
  };
}

/** Local entries, updated with (and completed by) the server's list; server trouble leaves the local view. */
async function entries() {
  const local = await allEntries();
  let server = [];
  try {
    server = (await listEdits(100)).results || [];
  } catch (err) {
    if (!(err instanceof ApiError)) throw err;
  }
  const byId = new Map(local.map((entry) => [entry.id, entry]));
  for (const edit of server) {
    const known = byId.get(edit.id);
    const fresh = fromServer(edit);
    if (!known) byId.set(edit.id, fresh);
    else if (known.status !== fresh.status) byId.set(edit.id, await saveEntry(edit.id, { status: fresh.status,
                                                                                          errorCode: fresh.errorCode }));
  }
  const hidden = deletedImages();
  return [...byId.values()]
    .filter((entry) => !hidden.has(entry.imageId))
    .sort((a, b) => String(b.createdAt).localeCompare(String(a.createdAt)));
}

function metaText(entry) {
  const when = new Date(entry.createdAt);
  const date = Number.isNaN(when.getTime()) ? "" : when.toLocaleString(undefined, { dateStyle: "medium",
                                                                                    timeStyle: "short" });
  const status = entry.status === "failed" ? describeError({ code: entry.errorCode }).title
                                           : STATUS_TEXT[entry.status] || entry.status;
  return [status, date].filter(Boolean).join(" · ");
}

let thumbUrls = [];

/** Render the list. `open(entry)` shows one edit; deleting asks first, then removes photo and results. */
export async function renderHistory(open) {
  const list = $("history-list");
  const items = await entries();
  for (const url of thumbUrls) URL.revokeObjectURL(url);
  thumbUrls = [];
  list.replaceChildren();
  $("history-alert").hidden = true;
  $("history-empty").hidden = items.length > 0;
  for (const entry of items) {
    const item = $("history-item").content.firstElementChild.cloneNode(true);
    item.dataset.editId = entry.id;
    item.querySelector(".history-target").textContent = entry.target;
    item.querySelector(".history-meta").textContent = metaText(entry);
    const thumb = item.querySelector(".thumb");
    const picture = entry.thumb || entry.original;
    if (picture) {
      thumb.src = URL.createObjectURL(picture);
      thumbUrls.push(thumb.src);
      thumb.hidden = false;
      item.querySelector(".thumb-empty").remove();
    }
    const openButton = item.querySelector(".history-open");
    openButton.setAttribute("aria-label", `Open edit: ${entry.target}, ${metaText(entry)}`);
    openButton.addEventListener("click", () => open(entry));
    const del = item.querySelector(".history-delete");
    del.setAttribute("aria-label", `Delete photo and results: ${entry.target}`);
    del.addEventListener("click", () => confirmDelete(entry, () => renderHistory(open)));
    list.append(item);
  }
}

function confirmDelete(entry, done) {
  const dialog = $("confirm-delete");
  dialog.returnValue = "";
  dialog.addEventListener(
    "close",
    async () => {
      if (dialog.returnValue !== "delete") return;
      try {
        await deleteImage(entry.imageId);
      } catch (err) {
        if (!(err instanceof ApiError) || err.code !== "not_found") {
          const { title, text } = describeError(err);
          const alert = $("history-alert");
          alert.querySelector(".alert-title").textContent = title;
          alert.querySelector(".alert-text").textContent = text;
          alert.hidden = false;
          return;
        }
      }
      rememberDeleted(entry.imageId);
      await removeImage(entry.imageId);
      await done();
    },
    { once: true },
  );
  dialog.showModal();
}
