// This device's history: one IndexedDB record per edit {id, imageId, neutral, target (all changes in one line),
// changes ([{neutral, target, weight}] or null for one plain change), alphas, status, createdAt, errorCode,
// original (Blob), thumb (Blob)}. IndexedDB, not localStorage, because it keeps Blobs.

const DB_NAME = "faceedit";
const STORE = "edits";

let dbPromise = null;

function open() {
  if (!dbPromise) {
    dbPromise = new Promise((resolve, reject) => {
      const req = indexedDB.open(DB_NAME, 1);
      req.onupgradeneeded = () => {
        const store = req.result.createObjectStore(STORE, { keyPath: "id" });
        store.createIndex("imageId", "imageId");
      };
      req.onsuccess = () => resolve(req.result);
      req.onerror = () => reject(req.error);
    });
  }
  return dbPromise;
}

async function run(mode, work) {
  const db = await open();
  return new Promise((resolve, reject) => {
    const tx = db.transaction(STORE, mode);
    const result = work(tx.objectStore(STORE));
    tx.oncomplete = () => resolve(result && "result" in result ? result.result : undefined);
    tx.onerror = () => reject(tx.error);
  });
}

export const getEntry = (id) => run("readonly", (store) => store.get(id));
export const allEntries = async () =>
  ((await run("readonly", (store) => store.getAll())) || []).sort((a, b) => b.createdAt.localeCompare(a.createdAt));

/** Merge `fields` into the record for `id` (creating it when new). */
export async function saveEntry(id, fields) {
  const current = (await getEntry(id)) || { id };
  const next = { ...current, ...fields };
  await run("readwrite", (store) => store.put(next));
  return next;
}

/** Forget every edit of one photo (after DELETE /v1/images/{id}). */
export async function removeImage(imageId) {
  const entries = await allEntries();
  await run("readwrite", (store) => {
    for (const entry of entries) if (entry.imageId === imageId) store.delete(entry.id);
  });
}

export const removeEntry = (id) => run("readwrite", (store) => store.delete(id));
