// The history screen: this device's edits (IndexedDB). Edits still running when the app was closed are
// asked for their status again; one the server no longer has is forgotten.

import { ApiError, deleteImage, getEdit } from "./api.js";
import { describeError } from "./messages.js";
import { allEntries, removeEntry, removeImage, saveEntry } from "./store.js";

const $ = (id) => document.getElementById(id);

const STATUS_TEXT = {
  starting: "Waiting in line",
  processing: "Editing…",
  succeeded: "Done",
  canceled: "Canceled",
};
const RUNNING = new Set(["starting", "processing"]);

async function refresh(entry) {
  try {
    const edit = await getEdit(entry.id);
    if (edit.status === entry.status) return entry;
    return saveEntry(entry.id, { status: edit.status, errorCode: edit.error ? edit.error.code : null });
  } catch (err) {
    if (!(err instanceof ApiError)) throw err;
    if (err.code !== "not_found" && err.code !== "edit_not_found") return entry; // offline: show what we know
    await removeEntry(entry.id);
    return null;
  }
}

async function entries() {
  const local = await allEntries();
  const fresh = await Promise.all(local.map((entry) => (RUNNING.has(entry.status) ? refresh(entry) : entry)));
  return fresh.filter(Boolean);
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
      await removeImage(entry.imageId);
      window.dispatchEvent(new CustomEvent("faceedit:image-deleted", { detail: entry.imageId }));
      await done();
    },
    { once: true },
  );
  dialog.showModal();
}
