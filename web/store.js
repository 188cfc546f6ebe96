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
    const failed = () => reject(tx.error || (result && result.error) || new Error(`IndexedDB ${mode} failed`));
    tx.oncomplete = () => resolve(result && "result" in result ? result.result : undefined);
    tx.onerror = failed;
    tx.onabort = failed;
  });
}

// WebKit refuses Blobs in IndexedDB in its ephemeral sessions (Safari's private browsing, WebDriver):
// "Error preparing Blob/File data to be stored in object store". Bytes are storable everywhere, so a record's
// Blobs are kept as {blobType, bytes} and become Blobs again when read (records stored as Blobs still read).
async function storable(record) {
  const out = { ...record };
  for (const [key, value] of Object.entries(record)) {
    if (value instanceof Blob) out[key] = { blobType: value.type, bytes: await value.arrayBuffer() };
  }
  return out;
}

function revived(record) {
  if (!record) return record;
  const out = { ...record };
  for (const [key, value] of Object.entries(record)) {
    if (value && value.bytes instanceof ArrayBuffer && "blobType" in value) {
      out[key] = new Blob([value.bytes], { type: value.blobType });
    }
  }
  return out;
}

export const getEntry = async (id) => revived(await run("readonly", (store) => store.get(id)));
export const allEntries = async () =>
  ((await run("readonly", (store) => store.getAll())) || []).map(revived)
    .sort((a, b) => b.createdAt.localeCompare(a.createdAt));

/** Merge `fields` into the record for `id` (creating it when new). */
export async function saveEntry(id, fields) {
  const current = (await getEntry(id)) || { id };
  const next = { ...current, ...fields };
  const record = await storable(next);
  await run("readwrite", (store) => store.put(record));
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
